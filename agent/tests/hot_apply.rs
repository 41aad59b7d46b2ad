//! Hot config: hundreds of config swaps while long-lived traffic flows through the gateway.
//!
//! The promise under test (see `agent/src/lib.rs`): a swap changes what new requests get, and
//! nothing else. Open WebSockets, SSE streams and HTTP/2 connections keep working, even when
//! the swap removes the very route and service they came through; an invalid config changes
//! nothing at all.

#![allow(clippy::unwrap_used)]

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use support::{Backend, WsBackend, start_gateway, within};
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::Message;
use tracing::info;

/// Config number `n` of a swap sequence. Every config has the `web` service and its `stable`
/// route. Even configs also have the `ws` service with its route and the `sse` and `toggle`
/// routes; odd configs have none of them. Each config adds a different number of filler
/// routes, so consecutive configs differ in several places at once.
fn config(n: usize, web: &Backend, ws: Option<&WsBackend>) -> String {
    let mut out = format!(
        r#"
kind: Service
name: web
spec: {{endpoints: [{{address: "{}"}}]}}
---
kind: Route
name: stable
spec:
  matches: [{{path: {{prefix: /stable}}}}]
  forward: {{backends: [{{service: web}}]}}
"#,
        web.addr
    );
    if n.is_multiple_of(2) {
        if let Some(ws) = ws {
            out.push_str(&format!(
                r#"---
kind: Service
name: ws
spec: {{endpoints: [{{address: "{}"}}]}}
---
kind: Route
name: ws
spec:
  matches: [{{path: {{prefix: /ws}}}}]
  forward: {{backends: [{{service: ws}}]}}
"#,
                ws.addr
            ));
        }
        out.push_str(
            r#"---
kind: Route
name: sse
spec:
  matches: [{path: {exact: /sse}}]
  forward: {backends: [{service: web}]}
---
kind: Route
name: toggle
spec:
  matches: [{path: {exact: /toggle}}]
  direct_response: {status: 200, body: toggle is here}
"#,
        );
    }
    for i in 0..n % 7 {
        out.push_str(&format!(
            "---\nkind: Route\nname: filler-{i}\nspec:\n  matches: [{{path: {{exact: /filler/{i}}}}}]\n  direct_response: {{status: 200, body: filler {i} of config {n}}}\n"
        ));
    }
    out
}

const CONNECTIONS: usize = 20;
const SWAPS: usize = 500;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websockets_survive_500_swaps_including_ones_that_remove_their_route() {
    support::init_tracing();
    let web = Backend::start("web").await;
    let echo = WsBackend::start("echo").await;
    let gw = start_gateway(&config(0, &web, Some(&echo))).await;

    info!("--- {CONNECTIONS} WebSocket connections through the gateway");
    let mut sockets = Vec::new();
    for _ in 0..CONNECTIONS {
        sockets.push(
            support::ws_connect(gw.http, "chat.test", "/ws")
                .await
                .unwrap(),
        );
    }
    // The gateway counts a tunnel once both upgrades complete, just after the client's.
    support::eventually("every tunnel to be counted", || {
        gw.gateway.telemetry.open_tunnels() == CONNECTIONS as i64
    })
    .await;

    info!("--- every connection exchanges messages without pause while configs swap");
    // progress[i]: messages connection i has had echoed so far.
    let (progress, watch_progress) = watch::channel(vec![0u64; CONNECTIONS]);
    let progress = Arc::new(progress);
    let stop = Arc::new(AtomicBool::new(false));
    let mut chatters = Vec::new();
    for (id, mut ws) in sockets.into_iter().enumerate() {
        let progress = progress.clone();
        let stop = stop.clone();
        chatters.push(tokio::spawn(async move {
            let mut seq = 0u64;
            while !stop.load(Ordering::Relaxed) {
                // Two in flight at once, so that the order of echoes is tested, not just given.
                let batch = [format!("c{id}-m{seq}"), format!("c{id}-m{}", seq + 1)];
                for text in &batch {
                    ws.send(Message::text(text.clone()))
                        .await
                        .map_err(|e| format!("connection {id}: send failed: {e}"))?;
                }
                for text in &batch {
                    let reply = within("an echo", ws.next())
                        .await
                        .ok_or_else(|| format!("connection {id}: closed after {seq} messages"))?
                        .map_err(|e| format!("connection {id}: {e} after {seq} messages"))?;
                    let expected = format!("echo: {text}");
                    if reply.to_text().ok() != Some(expected.as_str()) {
                        return Err(format!(
                            "connection {id}: expected {expected:?}, got {reply:?}"
                        ));
                    }
                }
                seq += 2;
                progress.send_modify(|p| p[id] = seq);
            }
            Ok::<_, String>((ws, seq))
        }));
    }

    let mut applied = 0;
    let mut removals = 0;
    let mut rx = watch_progress.clone();
    for n in 1..=SWAPS {
        let before = rx.borrow_and_update().clone();
        gw.apply(&config(n, &web, Some(&echo)))
            .unwrap_or_else(|e| panic!("swap {n} was rejected: {e:?}"));
        applied += 1;
        if !n.is_multiple_of(2) {
            removals += 1;
        }
        // Every connection must get at least one exchange done under each config.
        within(
            &format!("every connection to progress after swap {n}"),
            async {
                rx.wait_for(|now| now.iter().zip(&before).all(|(a, b)| a > b))
                    .await
                    .unwrap();
            },
        )
        .await;
    }
    info!(applied, removals, "--- swaps done");
    assert_eq!(gw.gateway.current().revision, SWAPS as u64 + 1);

    info!("--- one more swap removes the ws route and service");
    let before = rx.borrow_and_update().clone();
    gw.apply(&config(SWAPS + 1, &web, Some(&echo))).unwrap();
    assert!(!gw.gateway.current().services.contains_key("ws"));
    within("every connection to progress after the last swap", async {
        rx.wait_for(|now| now.iter().zip(&before).all(|(a, b)| a > b))
            .await
            .unwrap();
    })
    .await;

    info!("--- a new WebSocket is refused, since its route is gone");
    match support::ws_connect(gw.http, "chat.test", "/ws").await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), StatusCode::NOT_FOUND)
        }
        other => panic!("a new WebSocket should get a 404, got {other:?}"),
    }

    info!("--- the old connections are all still open, every message echoed in order");
    stop.store(true, Ordering::Relaxed);
    let mut total = 0;
    for (id, chatter) in chatters.into_iter().enumerate() {
        let (mut ws, sent) = chatter.await.unwrap().unwrap_or_else(|e| panic!("{e}"));
        assert!(
            sent >= SWAPS as u64,
            "connection {id} exchanged only {sent}"
        );
        total += sent;
        ws.send(Message::text("last")).await.unwrap();
        let reply = within("the last echo", ws.next()).await.unwrap().unwrap();
        assert_eq!(reply.to_text().unwrap(), "echo: last");
        ws.close(None).await.unwrap();
        // The close handshake completes: the peer answers our close frame, then the stream ends.
        while let Some(message) = within("the close handshake", ws.next()).await {
            match message {
                Ok(Message::Close(_)) => {}
                Ok(other) => panic!("connection {id}: unexpected {other:?} while closing"),
                Err(e) => panic!("connection {id}: {e} while closing"),
            }
        }
    }
    info!(total, "--- messages echoed across all connections");
    support::eventually("every tunnel to close", || {
        gw.gateway.telemetry.open_tunnels() == 0
    })
    .await;
}

/// `data: tick N` numbers out of an SSE byte stream, as they complete.
fn ticks(buffer: &mut String) -> Vec<u64> {
    let mut out = Vec::new();
    while let Some(end) = buffer.find("\n\n") {
        let event: String = buffer.drain(..end + 2).collect();
        let n = event
            .trim()
            .strip_prefix("data: tick ")
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("not a tick event: {event:?}"));
        out.push(n);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_sse_stream_keeps_ticking_across_100_swaps() {
    support::init_tracing();
    let web = Backend::start("web").await;
    let gw = start_gateway(&config(0, &web, None)).await;

    info!("--- an SSE stream through the gateway");
    let stream = tokio::net::TcpStream::connect(gw.http).await.unwrap();
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(connection);
    let request = Request::get("/sse")
        .header("host", "events.test")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let response = within("the SSE response", sender.send_request(request))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.headers()["content-type"],
        "text/event-stream",
        "the backend's streaming response"
    );
    let (tick_tx, mut tick_rx) = watch::channel(Vec::<u64>::new());
    let reader = tokio::spawn(async move {
        let mut body = response.into_body();
        let mut buffer = String::new();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| format!("the stream broke: {e}"))?;
            if let Some(data) = frame.data_ref() {
                buffer.push_str(std::str::from_utf8(data).unwrap());
                let new = ticks(&mut buffer);
                if !new.is_empty() {
                    tick_tx.send_modify(|all| all.extend(new));
                }
            }
        }
        Err::<(), _>("the stream ended".to_owned())
    });

    info!("--- 100 swaps, alternately removing and restoring the stream's route");
    for n in 1..=100 {
        gw.apply(&config(n, &web, None)).unwrap();
        if n % 5 == 0 {
            // Let a tick through every five swaps, so the swaps are spread over the stream.
            let seen = tick_rx.borrow_and_update().len();
            within(&format!("a tick after swap {n}"), async {
                tick_rx.wait_for(|t| t.len() > seen).await.unwrap();
            })
            .await;
        }
    }

    info!("--- one more swap removes the stream's route");
    gw.apply(&config(101, &web, None)).unwrap();
    assert!(
        gw.gateway
            .current()
            .routes
            .routes()
            .all(|r| r.name != "sse")
    );

    info!("--- the stream is still open, and no tick was lost or reordered");
    let seen = tick_rx.borrow_and_update().len();
    within("one more tick", tick_rx.wait_for(|t| t.len() > seen))
        .await
        .unwrap();
    assert!(!reader.is_finished(), "{:?}", reader.await);
    let ticks = tick_rx.borrow().clone();
    assert!(ticks.len() >= 21, "{ticks:?}");
    let expected: Vec<u64> = (1..=ticks.len() as u64).collect();
    assert_eq!(ticks, expected);

    info!("--- a new SSE request gets the current config: its route is gone");
    let reply = gw.client().get("events.test", "/sse").await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    reader.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_connection_keeps_serving_streams_across_swaps() {
    support::init_tracing();
    let web = Backend::start("web").await;
    let gw = start_gateway(&config(0, &web, None)).await;

    info!("--- one h2c connection, four concurrent streams after each of 100 swaps");
    let sender = support::h2c_connect(gw.http).await;
    for n in 1..=100 {
        gw.apply(&config(n, &web, None)).unwrap();
        let streams = (0..4).map(|i| {
            let mut sender = sender.clone();
            let path = if i % 2 == 0 { "/stable/x" } else { "/toggle" };
            async move { (path, support::h2_get(&mut sender, "h2.test", path).await) }
        });
        for (path, reply) in futures_util::future::join_all(streams).await {
            assert_eq!(reply.version, http::Version::HTTP_2);
            match path {
                "/stable/x" => {
                    assert_eq!(reply.status, StatusCode::OK, "swap {n}: {}", reply.text());
                    assert_eq!(reply.backend(), "web");
                }
                _ if n % 2 == 0 => {
                    assert_eq!(reply.status, StatusCode::OK, "swap {n}: toggle is present");
                    assert_eq!(reply.text(), "toggle is here");
                }
                _ => assert_eq!(
                    reply.status,
                    StatusCode::NOT_FOUND,
                    "swap {n}: toggle is absent"
                ),
            }
        }
    }
    info!("--- every stream was served on the one connection, under the config of its time");
    assert_eq!(web.requests(), 200);
}

#[tokio::test]
async fn an_invalid_snapshot_is_rejected_and_the_running_config_keeps_serving() {
    support::init_tracing();
    let web = Backend::start("web").await;
    let gw = start_gateway(&config(0, &web, None)).await;
    let client = gw.client();
    let serving = gw.gateway.current().revision;

    info!("--- a config with two mistakes");
    let broken = format!(
        "{}---\nkind: Route\nname: broken\nspec:\n  matches: [{{path: {{regex: \"/(unclosed\"}}}}]\n  forward: {{backends: [{{service: nowhere}}]}}\n",
        config(1, &web, None)
    );
    let errors = gw.apply(&broken).unwrap_err();
    info!(?errors, "--- rejected");
    assert!(errors.len() >= 2, "every problem is reported: {errors:?}");
    assert!(
        errors
            .iter()
            .any(|e| e.contains("route/broken") && e.contains("service/nowhere")),
        "{errors:?}"
    );
    assert!(
        errors
            .iter()
            .any(|e| e.contains("spec.matches[0].path.regex")),
        "{errors:?}"
    );

    info!("--- traffic continues on the old config");
    assert_eq!(gw.gateway.current().revision, serving);
    assert_eq!(client.get("any.test", "/stable").await.backend(), "web");
    let toggle = client.get("any.test", "/toggle").await;
    assert_eq!(
        (toggle.status, toggle.text().as_str()),
        (StatusCode::OK, "toggle is here"),
        "the old config had the toggle route"
    );

    info!("--- /config shows the old revision and the rejection");
    let report = gw.admin("/config").await.json();
    assert_eq!(report["revision"], serving, "{report}");
    let rejected = &report["last_rejected"];
    assert_eq!(rejected["revision"], serving + 1, "{report}");
    assert!(
        rejected["errors"].as_array().unwrap().len() >= 2,
        "{report}"
    );

    info!("--- a valid config applies and clears the rejection");
    let revision = gw.apply(&config(1, &web, None)).unwrap();
    assert_eq!(
        client.get("any.test", "/toggle").await.status,
        StatusCode::NOT_FOUND
    );
    let report = gw.admin("/config").await.json();
    assert_eq!(report["revision"], revision);
    assert!(report["last_rejected"].is_null(), "{report}");
}
