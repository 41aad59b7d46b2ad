//! The agent's own HTTP/1.1 server, spoken to over raw sockets: pipelining, `Connection:
//! close`, small bodies read with their heads, the handover to hyper at the first request it
//! leaves to it (large and chunked bodies, HTTP/1.0, malformed and oversized heads), a client leaving mid-request, the drain, and the header
//! timeout on an idle keep-alive connection.

#![allow(clippy::unwrap_used)]

mod support;

use std::time::{Duration, Instant};

use support::{Backend, GatewayOptions, start_gateway, start_gateway_with};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tracing::info;

/// One response as it came over the wire.
#[derive(Debug)]
struct Raw {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Raw {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap()
    }
}

/// Reads one response off `stream` (bytes past it stay in `pending`). `head_request`: the
/// response has no body whatever its `Content-Length` says. `None` when the connection closed
/// before a response began.
async fn read_response(
    stream: &mut TcpStream,
    pending: &mut Vec<u8>,
    head_request: bool,
) -> Option<Raw> {
    loop {
        let mut fields = [httparse::EMPTY_HEADER; 64];
        let mut response = httparse::Response::new(&mut fields);
        if let httparse::Status::Complete(len) = response.parse(pending).unwrap() {
            let headers: Vec<(String, String)> = response
                .headers
                .iter()
                .map(|h| {
                    (
                        h.name.to_owned(),
                        String::from_utf8_lossy(h.value).into_owned(),
                    )
                })
                .collect();
            let status = response.code.unwrap();
            let length = headers
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
                .map(|(_, v)| v.parse::<usize>().unwrap());
            let body_len = if head_request {
                0
            } else {
                length.expect("a sized response")
            };
            while pending.len() < len + body_len {
                fill(stream, pending).await;
            }
            let body = pending[len..len + body_len].to_vec();
            pending.drain(..len + body_len);
            return Some(Raw {
                status,
                headers,
                body,
            });
        }
        if fill(stream, pending).await == 0 {
            assert!(pending.is_empty(), "the connection closed mid-response");
            return None;
        }
    }
}

async fn fill(stream: &mut TcpStream, pending: &mut Vec<u8>) -> usize {
    let mut buf = [0u8; 4096];
    let n = support::within("the gateway to send more", stream.read(&mut buf))
        .await
        .unwrap_or(0);
    pending.extend_from_slice(&buf[..n]);
    n
}

/// Waits for the gateway to close `stream`; returns how long that took.
async fn closed(stream: &mut TcpStream) -> Duration {
    let started = Instant::now();
    let mut rest = Vec::new();
    support::within(
        "the gateway to close the connection",
        stream.read_to_end(&mut rest),
    )
    .await
    .ok();
    assert!(
        rest.is_empty(),
        "unexpected bytes before the close: {:?}",
        String::from_utf8_lossy(&rest)
    );
    started.elapsed()
}

#[tokio::test]
async fn pipelined_requests_are_answered_in_order_and_connection_close_ends_the_connection() {
    support::init_tracing();
    let backend = Backend::start("echo").await;
    let gw = start_gateway(&support::everything_to(&backend)).await;
    let mut stream = TcpStream::connect(gw.http).await.unwrap();

    info!("--- three requests in one write: GET, HEAD, and a GET asking to close");
    stream
        .write_all(
            b"GET /one?x=1 HTTP/1.1\r\nHost: a.test\r\n\r\n\
              HEAD /two HTTP/1.1\r\nHost: a.test\r\n\r\n\
              GET /three HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n",
        )
        .await
        .unwrap();
    let mut pending = Vec::new();
    let one = read_response(&mut stream, &mut pending, false)
        .await
        .unwrap();
    let two = read_response(&mut stream, &mut pending, true)
        .await
        .unwrap();
    let three = read_response(&mut stream, &mut pending, false)
        .await
        .unwrap();

    info!("--- each answered in order; the HEAD has a length and no body; then the close");
    assert_eq!(one.status, 200);
    assert_eq!(one.json()["path"], "/one?x=1");
    assert!(one.header("date").is_some(), "responses carry a Date");
    assert_eq!(one.header("connection"), None, "the connection stays open");
    assert_eq!(two.status, 200);
    assert!(
        two.header("content-length")
            .unwrap()
            .parse::<u64>()
            .unwrap()
            > 0
    );
    assert_eq!(three.json()["path"], "/three");
    assert_eq!(three.header("connection"), Some("close"));
    assert!(pending.is_empty(), "no bytes past the third response");
    closed(&mut stream).await;
    assert_eq!(backend.requests(), 3);
}

#[tokio::test]
async fn small_bodies_stay_on_the_connection_and_a_large_or_chunked_one_hands_it_to_hyper() {
    support::init_tracing();
    let backend = Backend::start("echo").await;
    let gw = start_gateway(&support::everything_to(&backend)).await;
    let mut stream = TcpStream::connect(gw.http).await.unwrap();
    let mut pending = Vec::new();

    info!("--- a GET, then a small POST whose body comes after a pause, on one connection");
    stream
        .write_all(b"GET /before HTTP/1.1\r\nHost: a.test\r\n\r\n")
        .await
        .unwrap();
    let before = read_response(&mut stream, &mut pending, false)
        .await
        .unwrap();
    assert_eq!(before.json()["path"], "/before");
    stream
        .write_all(b"POST /sized HTTP/1.1\r\nHost: a.test\r\nContent-Length: 11\r\n\r\nhello")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    stream.write_all(b" world").await.unwrap();
    let sized = read_response(&mut stream, &mut pending, false)
        .await
        .unwrap();
    assert_eq!(sized.json()["body"], "hello world");

    info!("--- a body larger than the agent buffers, then a chunked one, then a GET");
    let large = "x".repeat(20_000);
    stream
        .write_all(
            format!(
                "POST /large HTTP/1.1\r\nHost: a.test\r\nContent-Length: {}\r\n\r\n{large}",
                large.len()
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    let answer = read_response(&mut stream, &mut pending, false)
        .await
        .unwrap();
    assert_eq!(answer.json()["body"], large.as_str());
    stream
        .write_all(
            b"POST /chunked HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\n\r\n\
              3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
        )
        .await
        .unwrap();
    let chunked = read_response(&mut stream, &mut pending, false)
        .await
        .unwrap();
    assert_eq!(chunked.json()["body"], "abcde");
    stream
        .write_all(b"GET /after HTTP/1.1\r\nHost: a.test\r\n\r\n")
        .await
        .unwrap();
    let after = read_response(&mut stream, &mut pending, false)
        .await
        .unwrap();
    assert_eq!(after.json()["path"], "/after");
    assert_eq!(backend.requests(), 5);

    info!("--- an HTTP/1.0 request on a connection of its own is served and closed");
    let mut old = TcpStream::connect(gw.http).await.unwrap();
    old.write_all(b"GET /old HTTP/1.0\r\nHost: a.test\r\n\r\n")
        .await
        .unwrap();
    let mut pending = Vec::new();
    let answer = read_response(&mut old, &mut pending, false).await.unwrap();
    assert_eq!(answer.status, 200);
    assert_eq!(answer.json()["path"], "/old");
    closed(&mut old).await;
}

#[tokio::test]
async fn malformed_and_oversized_heads_get_400_and_431_even_after_a_good_request() {
    support::init_tracing();
    let backend = Backend::start("echo").await;
    let gw = start_gateway(&support::everything_to(&backend)).await;

    info!("--- a good request, then a head with a field line that has no colon");
    let mut stream = TcpStream::connect(gw.http).await.unwrap();
    stream
        .write_all(
            b"GET /ok HTTP/1.1\r\nHost: a.test\r\n\r\nGET /bad HTTP/1.1\r\nHost a.test\r\n\r\n",
        )
        .await
        .unwrap();
    let mut pending = Vec::new();
    let ok = read_response(&mut stream, &mut pending, false)
        .await
        .unwrap();
    assert_eq!(ok.status, 200);
    let mut rest = pending;
    support::within(
        "the gateway to answer and close",
        stream.read_to_end(&mut rest),
    )
    .await
    .unwrap();
    let text = String::from_utf8_lossy(&rest);
    assert!(text.starts_with("HTTP/1.1 400"), "got {text:?}");

    info!("--- a head larger than the limit");
    let mut stream = TcpStream::connect(gw.http).await.unwrap();
    let big = "a".repeat(fleetgate_agent::config::DEFAULT_MAX_HEADER_BYTES + 1024);
    let head = format!("GET / HTTP/1.1\r\nHost: a.test\r\nX-Big: {big}\r\n\r\n");
    // The gateway may answer and close before it has read everything.
    let _ = stream.write_all(head.as_bytes()).await;
    let mut answer = Vec::new();
    let _ = support::within("the gateway to answer", stream.read_to_end(&mut answer)).await;
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 431"), "got {text:?}");
    assert_eq!(
        backend.requests(),
        1,
        "neither bad request reached the backend"
    );
}

#[tokio::test]
async fn a_client_that_leaves_mid_request_cancels_the_upstream_exchange() {
    support::init_tracing();
    // An upstream that reads a request, never answers, and reports when its connection ends.
    let upstream = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream_addr = upstream.local_addr().unwrap();
    let (got_request, request_seen) = tokio::sync::oneshot::channel();
    let (got_close, close_seen) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let (mut socket, _) = upstream.accept().await.unwrap();
        let mut buf = vec![0u8; 4096];
        let _ = socket.read(&mut buf).await;
        let _ = got_request.send(());
        while socket.read(&mut buf).await.is_ok_and(|n| n > 0) {}
        let _ = got_close.send(Instant::now());
    });
    let yaml = format!(
        "kind: Service\nname: mute\nspec: {{endpoints: [{{address: '{upstream_addr}'}}]}}\n---\n\
         kind: Route\nname: all\nspec:\n  forward: {{backends: [{{service: mute}}]}}\n"
    );
    let gw = start_gateway(&yaml).await;

    info!("--- the client sends a GET and goes away before the answer");
    let mut stream = TcpStream::connect(gw.http).await.unwrap();
    stream
        .write_all(b"GET /wait HTTP/1.1\r\nHost: a.test\r\n\r\n")
        .await
        .unwrap();
    support::within("the upstream to get the request", request_seen)
        .await
        .unwrap();
    let left = Instant::now();
    drop(stream);

    info!("--- the upstream connection is closed soon after: the exchange was dropped");
    let ended = support::within("the upstream connection to be closed", close_seen)
        .await
        .unwrap();
    assert!(ended.duration_since(left) < Duration::from_secs(2));
}

#[tokio::test]
async fn a_drain_finishes_the_request_in_flight_and_closes_idle_connections_at_once() {
    support::init_tracing();
    let backend = Backend::start("echo").await;
    let gw = start_gateway(&support::everything_to(&backend)).await;

    info!("--- one connection idle after a request, one with a slow request in flight");
    let mut idle = TcpStream::connect(gw.http).await.unwrap();
    idle.write_all(b"GET /first HTTP/1.1\r\nHost: a.test\r\n\r\n")
        .await
        .unwrap();
    let mut idle_pending = Vec::new();
    read_response(&mut idle, &mut idle_pending, false)
        .await
        .unwrap();
    let mut busy = TcpStream::connect(gw.http).await.unwrap();
    busy.write_all(b"GET /slow/400 HTTP/1.1\r\nHost: a.test\r\n\r\n")
        .await
        .unwrap();
    backend.wait_for_requests(2).await;

    info!("--- shutdown begins");
    gw.begin_shutdown();
    let idle_closed_after = closed(&mut idle).await;
    assert!(
        idle_closed_after < Duration::from_millis(300),
        "the idle connection was closed only after {idle_closed_after:?}"
    );
    let mut busy_pending = Vec::new();
    let answer = read_response(&mut busy, &mut busy_pending, false)
        .await
        .unwrap();
    assert_eq!(answer.status, 200, "the request in flight is answered");
    assert_eq!(answer.header("connection"), Some("close"));
    closed(&mut busy).await;
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_a_header_timeout_after_its_last_response() {
    support::init_tracing();
    let backend = Backend::start("echo").await;
    let gw = start_gateway_with(
        &support::everything_to(&backend),
        GatewayOptions {
            header_timeout: Duration::from_secs(1),
            ..Default::default()
        },
    )
    .await;
    let mut stream = TcpStream::connect(gw.http).await.unwrap();
    let mut pending = Vec::new();

    info!("--- requests 600 ms apart: each arrives within the timeout of the wait before it");
    for i in 0..3 {
        stream
            .write_all(format!("GET /{i} HTTP/1.1\r\nHost: a.test\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let answer = read_response(&mut stream, &mut pending, false)
            .await
            .unwrap();
        assert_eq!(answer.json()["path"], format!("/{i}"));
        if i < 2 {
            tokio::time::sleep(Duration::from_millis(600)).await;
        }
    }

    info!("--- then silence: the connection closes about a second after the last response");
    let after = closed(&mut stream).await;
    assert!(
        after >= Duration::from_millis(900),
        "closed after only {after:?}"
    );
    assert!(
        after < Duration::from_secs(3),
        "closed only after {after:?}"
    );
}
