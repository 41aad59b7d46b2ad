//! The agent's HTTP/1.1 upstream connections, seen from the upstream: keep-alive reuse, a
//! streaming response that does not hold up other requests, idle connections closed after the
//! service's `idle_timeout`, connections the upstream closed never used again, and an upstream
//! that answers while it still reads the request (full duplex).

#![allow(clippy::unwrap_used)]

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use http::StatusCode;
use support::{start_gateway, within};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, mpsc};
use tracing::info;

/// How a [`RawUpstream`] treats each connection after a response.
#[derive(Clone, Copy)]
enum AfterResponse {
    KeepOpen,
    /// Closes the socket without saying so in the response (what an upstream's idle timeout
    /// or a restart does to a kept-alive connection).
    Close,
}

/// An HTTP/1.1 upstream on a raw socket that counts the connections it accepts and reports
/// when one of them is closed by the agent. `GET /stream` answers with a chunked body whose
/// first chunk is sent at once and whose end waits for [`RawUpstream::end_streams`].
struct RawUpstream {
    addr: std::net::SocketAddr,
    accepted: Arc<AtomicUsize>,
    /// For each connection the agent closed: how long after its last response.
    closed: mpsc::UnboundedReceiver<Duration>,
    end_streams: Arc<Notify>,
}

impl RawUpstream {
    async fn start(after: AfterResponse) -> RawUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let (closed_tx, closed) = mpsc::unbounded_channel();
        let end_streams = Arc::new(Notify::new());
        let (count, end) = (accepted.clone(), end_streams.clone());
        tokio::spawn(async move {
            loop {
                let (socket, _) = listener.accept().await.unwrap();
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(serve(socket, after, closed_tx.clone(), end.clone()));
            }
        });
        RawUpstream {
            addr,
            accepted,
            closed,
            end_streams,
        }
    }

    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

async fn serve(
    mut socket: TcpStream,
    after: AfterResponse,
    closed: mpsc::UnboundedSender<Duration>,
    end_streams: Arc<Notify>,
) {
    let mut pending = Vec::new();
    let mut last_response = Instant::now();
    loop {
        let Some(head_end) = pending.windows(4).position(|w| w == b"\r\n\r\n") else {
            let mut buf = [0u8; 4096];
            match socket.read(&mut buf).await {
                Ok(0) | Err(_) => {
                    let _ = closed.send(last_response.elapsed());
                    return;
                }
                Ok(n) => pending.extend_from_slice(&buf[..n]),
            }
            continue;
        };
        let head = String::from_utf8_lossy(&pending[..head_end]).into_owned();
        pending.drain(..head_end + 4);
        if head.starts_with("GET /stream ") {
            let first = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\
                         Transfer-Encoding: chunked\r\n\r\n6\r\nhello\n\r\n";
            socket.write_all(first.as_bytes()).await.unwrap();
            end_streams.notified().await;
            socket.write_all(b"4\r\nbye\n\r\n0\r\n\r\n").await.unwrap();
        } else {
            socket
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                .await
                .unwrap();
        }
        last_response = Instant::now();
        if let AfterResponse::Close = after {
            return;
        }
    }
}

/// Reads from `stream` into `seen` until it holds `text`; fails if the stream ends first.
async fn read_until(stream: &mut TcpStream, seen: &mut Vec<u8>, text: &str) {
    within(&format!("`{text}` from the stream"), async {
        while !String::from_utf8_lossy(seen).contains(text) {
            let mut buf = [0u8; 1024];
            let n = stream.read(&mut buf).await.unwrap();
            assert!(n > 0, "the stream ended before `{text}`");
            seen.extend_from_slice(&buf[..n]);
        }
    })
    .await;
}

fn config(upstream: std::net::SocketAddr, idle_timeout: &str) -> String {
    format!(
        r#"
kind: Service
name: raw
spec:
  endpoints: [{{address: "{upstream}"}}]
  limits: {{idle_timeout: {idle_timeout}}}
---
kind: Route
name: all
spec:
  forward: {{backends: [{{service: raw}}]}}
"#
    )
}

#[tokio::test]
async fn sequential_requests_share_one_upstream_connection() {
    support::init_tracing();
    let upstream = RawUpstream::start(AfterResponse::KeepOpen).await;
    let gw = start_gateway(&config(upstream.addr, "90s")).await;
    let client = gw.client();
    info!("--- 50 requests one after another");
    for _ in 0..50 {
        let reply = client.get("pool.test", "/").await;
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.text(), "ok");
    }
    assert_eq!(
        upstream.accepted(),
        1,
        "every request reused the first connection"
    );
}

#[tokio::test]
async fn a_streaming_response_does_not_hold_up_other_requests() {
    support::init_tracing();
    let upstream = RawUpstream::start(AfterResponse::KeepOpen).await;
    let gw = start_gateway(&config(upstream.addr, "90s")).await;
    let addr = gw.http;

    info!("--- an event stream opens and stays open");
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(b"GET /stream HTTP/1.1\r\nHost: pool.test\r\n\r\n")
        .await
        .unwrap();
    let mut seen = Vec::new();
    read_until(&mut stream, &mut seen, "hello").await;

    info!("--- meanwhile other requests are answered, on a second connection");
    let client = gw.client();
    for _ in 0..5 {
        assert_eq!(client.get("pool.test", "/").await.status, StatusCode::OK);
    }
    assert_eq!(upstream.accepted(), 2);

    info!("--- the stream ends; both connections are idle and reused, none added");
    upstream.end_streams.notify_one();
    read_until(&mut stream, &mut seen, "bye").await;
    let (a, b) = tokio::join!(client.get("pool.test", "/"), client.get("pool.test", "/"));
    assert_eq!((a.status, b.status), (StatusCode::OK, StatusCode::OK));
    assert_eq!(upstream.accepted(), 2);
}

#[tokio::test]
async fn idle_upstream_connections_close_after_the_services_idle_timeout() {
    support::init_tracing();
    let mut upstream = RawUpstream::start(AfterResponse::KeepOpen).await;
    let gw = start_gateway(&config(upstream.addr, "1s")).await;
    assert_eq!(
        gw.client().get("pool.test", "/").await.status,
        StatusCode::OK
    );

    info!("--- nothing more is sent; the agent closes the idle connection");
    let idle_for = within(
        "the agent to close the idle connection",
        upstream.closed.recv(),
    )
    .await
    .unwrap();
    // Closed by the sweep that runs every max(idle_timeout / 2, 1 s) once the connection
    // has been idle for the timeout: between 1 and 2 s (plus scheduling).
    assert!(
        idle_for >= Duration::from_millis(900) && idle_for < Duration::from_millis(3000),
        "closed after {idle_for:?} idle"
    );
    info!("--- the next request opens a new connection");
    assert_eq!(
        gw.client().get("pool.test", "/").await.status,
        StatusCode::OK
    );
    assert_eq!(upstream.accepted(), 2);
}

#[tokio::test]
async fn connections_the_upstream_closed_are_not_reused() {
    support::init_tracing();
    let upstream = RawUpstream::start(AfterResponse::Close).await;
    let gw = start_gateway(&config(upstream.addr, "90s")).await;
    let client = gw.client();
    info!("--- every response is followed by the upstream closing the socket");
    for i in 0..20 {
        let reply = client.get("pool.test", "/").await;
        assert_eq!(
            reply.status,
            StatusCode::OK,
            "request {i}: {}",
            reply.text()
        );
        // Give the agent's connection task the moment it needs to see the close.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(upstream.accepted(), 20, "one connection per request");
}

async fn fill(socket: &mut TcpStream, pending: &mut Vec<u8>) {
    let mut buf = [0u8; 4096];
    let n = socket.read(&mut buf).await.unwrap();
    assert!(
        n > 0,
        "the agent closed the upstream connection mid-request"
    );
    pending.extend_from_slice(&buf[..n]);
}

/// An upstream that answers at once and then echoes each chunk of the request body as it
/// reads it, ending its response when the request ends.
async fn echo_while_reading(listener: TcpListener) {
    let (mut socket, _) = listener.accept().await.unwrap();
    let mut pending = Vec::new();
    while !pending.windows(4).any(|w| w == b"\r\n\r\n") {
        fill(&mut socket, &mut pending).await;
    }
    let head_end = pending.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    let head = String::from_utf8_lossy(&pending[..head_end]).to_ascii_lowercase();
    assert!(head.contains("transfer-encoding: chunked"), "{head}");
    pending.drain(..head_end);
    socket
        .write_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        .await
        .unwrap();
    loop {
        while !pending.windows(2).any(|w| w == b"\r\n") {
            fill(&mut socket, &mut pending).await;
        }
        let line_end = pending.windows(2).position(|w| w == b"\r\n").unwrap();
        let size_text = String::from_utf8_lossy(&pending[..line_end]).to_string();
        let size = usize::from_str_radix(size_text.trim(), 16).unwrap();
        pending.drain(..line_end + 2);
        while pending.len() < size + 2 {
            fill(&mut socket, &mut pending).await;
        }
        let chunk: Vec<u8> = pending.drain(..size + 2).collect();
        let mut echo = format!("{size:x}\r\n").into_bytes();
        echo.extend_from_slice(&chunk);
        socket.write_all(&echo).await.unwrap();
        if size == 0 {
            return;
        }
    }
}

#[tokio::test]
async fn an_upstream_that_answers_while_it_reads_talks_both_ways_through_the_agent() {
    support::init_tracing();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let upstream = tokio::spawn(echo_while_reading(listener));
    let gw = start_gateway(&config(addr, "90s")).await;

    info!("--- a chunked upload where each piece waits for the echo of the one before");
    let mut client = TcpStream::connect(gw.http).await.unwrap();
    client
        .write_all(b"POST /echo HTTP/1.1\r\nHost: pool.test\r\nTransfer-Encoding: chunked\r\n\r\n")
        .await
        .unwrap();
    let mut seen = Vec::new();
    for word in ["alpha", "bravo", "charlie"] {
        client
            .write_all(format!("{:x}\r\n{word}\r\n", word.len()).as_bytes())
            .await
            .unwrap();
        read_until(&mut client, &mut seen, word).await;
    }
    assert!(String::from_utf8_lossy(&seen).starts_with("HTTP/1.1 200 OK\r\n"));
    client.write_all(b"0\r\n\r\n").await.unwrap();
    read_until(&mut client, &mut seen, "\r\n0\r\n\r\n").await;
    within("the upstream's end", upstream).await.unwrap();
}
