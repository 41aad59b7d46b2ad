//! The fleet builder and its demo bundle: the bundle validates, and a one-cloud fleet serves
//! every demo route as documented (subsets, rate limit, WebSocket, SSE, JWT); a cloud's
//! partition cuts exactly that cloud off the managers.

#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::time::Duration;

use fleetgate_testbed::fleet::{self, Fleet, FleetOptions};
use fleetgate_testbed::harness::http_get;
use futures_util::{SinkExt, StreamExt};

const BIN: &str = env!("CARGO_BIN_EXE_fleetgate-testbed");

#[test]
fn the_demo_bundle_validates_on_both_stages() {
    let blue = fleet::DEMO_BLUE.parse().unwrap();
    let green = fleet::DEMO_GREEN.parse().unwrap();
    for stage in ["blue", "green"] {
        let text = fleet::demo_bundle(blue, green, stage);
        let resources =
            fleetgate_shared::parse_bundle(&text, fleetgate_shared::bundle::Format::Yaml, "demo")
                .unwrap();
        fleetgate_shared::validate(&resources).unwrap();
        assert_eq!(
            text.matches(&format!("subset: {{stage: {stage}}}")).count(),
            4,
            "every forwarding route is on {stage}"
        );
    }
    // The shipped file is the same bundle.
    assert_eq!(fleet::demo_bundle(blue, green, "blue"), fleet::DEMO_BUNDLE);
}

fn get_with(addr: &str, path: &str, header: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: demo\r\n{header}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let status = response.split(' ').nth(1)?.parse().ok()?;
    Some((status, response.split_once("\r\n\r\n")?.1.to_owned()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_serves_the_demo_routes_and_partitions_one_cloud_at_a_time() {
    let root = tempfile::tempdir().unwrap();
    let mut fleet = Fleet::start(&FleetOptions::new(Path::new(BIN), root.path(), 2, 1))
        .await
        .unwrap();
    let a1 = fleet.clouds[0].agents[0].listen.clone();
    let a2 = fleet.clouds[1].agents[0].listen.clone();
    assert!(a1.starts_with("127.0.11.1:"), "{a1}");
    assert!(a2.starts_with("127.0.12.1:"), "{a2}");
    let a = a1.clone();
    let (web, private, private_ok, limited, sse) = tokio::task::spawn_blocking(move || {
        let web = http_get(&a, "/hello").unwrap();
        let private = http_get(&a, "/private").unwrap();
        let token = fleet::demo_token("tester", Duration::from_secs(60)).unwrap();
        let private_ok = get_with(&a, "/private", &format!("authorization: Bearer {token}"));
        let limited: Vec<u16> = (0..40)
            .map(|_| http_get(&a, "/api/x").map_or(0, |(s, _)| s))
            .collect();
        let sse = {
            use std::io::{Read, Write};
            let mut s = std::net::TcpStream::connect(&a).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            write!(s, "GET /sse HTTP/1.1\r\nHost: demo\r\n\r\n").unwrap();
            let mut buf = [0u8; 512];
            let n = s.read(&mut buf).unwrap();
            String::from_utf8_lossy(&buf[..n]).into_owned()
        };
        (web, private, private_ok, limited, sse)
    })
    .await
    .unwrap();
    assert_eq!(web.0, 200);
    assert!(web.1.contains("backend-blue"), "{}", web.1);
    assert_eq!(private.0, 401, "{}", private.1);
    let private_ok = private_ok.unwrap();
    assert_eq!(private_ok.0, 200, "{}", private_ok.1);
    assert!(
        private_ok.1.contains("\"x-user\":\"tester\""),
        "{}",
        private_ok.1
    );
    assert!(limited.contains(&429), "{limited:?}");
    assert!(
        limited.iter().all(|s| *s == 200 || *s == 429),
        "{limited:?}"
    );
    assert!(sse.contains("text/event-stream"), "{sse}");

    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{a1}/ws"))
        .await
        .unwrap();
    ws.send(tokio_tungstenite::tungstenite::Message::text("hi"))
        .await
        .unwrap();
    let echo = ws.next().await.unwrap().unwrap().into_text().unwrap();
    assert_eq!(echo.as_str(), "backend-blue: hi");

    // Cloud 1 cut off: cloud 2 gets the roll to green, cloud 1 stays on blue until healed.
    fleet.clouds[0].link.partition();
    let yaml = fleet::demo_bundle(fleet.blue.addr(), fleet.green.addr(), "green");
    fleet.apply(&yaml).await.unwrap();
    fleet
        .wait_converged(Duration::from_secs(30), true)
        .await
        .unwrap();
    let backend = |addr: String| async move {
        tokio::task::spawn_blocking(move || http_get(&addr, "/").unwrap().1)
            .await
            .unwrap()
    };
    assert!(backend(a2.clone()).await.contains("backend-green"));
    assert!(backend(a1.clone()).await.contains("backend-blue"));
    fleet.clouds[0].link.heal();
    fleet
        .wait_converged(Duration::from_secs(60), false)
        .await
        .unwrap();
    assert!(backend(a1.clone()).await.contains("backend-green"));
    // The WebSocket opened on blue is still there, on blue.
    ws.send(tokio_tungstenite::tungstenite::Message::text("still"))
        .await
        .unwrap();
    let echo = ws.next().await.unwrap().unwrap().into_text().unwrap();
    assert_eq!(echo.as_str(), "backend-blue: still");
    fleet.shutdown().await;
}
