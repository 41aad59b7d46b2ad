//! Connection and header hygiene: what the proxy strips, what it adds, which protocols it
//! bridges, and how it treats a client that dribbles its request headers.

#![allow(clippy::unwrap_used)]

mod support;

use std::time::{Duration, Instant};

use http::{Method, StatusCode};
use support::{Backend, GatewayOptions, start_gateway, start_gateway_with};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tracing::info;

#[tokio::test]
async fn hop_by_hop_headers_never_reach_the_backend() {
    support::init_tracing();
    let backend = Backend::start("echo").await;
    let gw = start_gateway(&support::everything_to(&backend)).await;

    info!("--- a request carrying every kind of hop-by-hop header");
    let reply = gw
        .client()
        .send(
            Method::GET,
            "hygiene.test",
            "/",
            &[
                ("connection", "keep-alive, x-conn-secret"),
                ("x-conn-secret", "for this hop only"),
                ("keep-alive", "timeout=5"),
                ("te", "trailers"),
                ("proxy-authorization", "Basic dXNlcjpwYXNz"),
                ("proxy-connection", "keep-alive"),
                ("x-end-to-end", "kept"),
            ],
            "",
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK);

    info!("--- the backend saw none of them, and the end-to-end header");
    let seen = reply.json()["headers"].clone();
    for name in [
        "connection",
        "x-conn-secret",
        "keep-alive",
        "te",
        "proxy-authorization",
        "proxy-connection",
    ] {
        assert!(
            seen.get(name).is_none(),
            "{name} reached the backend: {seen}"
        );
    }
    assert_eq!(reply.seen_header("x-end-to-end").as_deref(), Some("kept"));
}

#[tokio::test]
async fn forwarding_headers_and_request_ids_are_added() {
    support::init_tracing();
    let backend = Backend::start("echo").await;
    let gw = start_gateway(&support::everything_to(&backend)).await;
    let client = gw.client();

    info!("--- a request that already passed one proxy");
    let reply = client
        .send(
            Method::GET,
            "Fwd.Test:8080",
            "/",
            &[("x-forwarded-for", "203.0.113.7")],
            "",
        )
        .await;
    assert_eq!(
        reply.seen_header("x-forwarded-for").as_deref(),
        Some("203.0.113.7, 127.0.0.1"),
        "the client address is appended"
    );
    assert_eq!(
        reply.seen_header("x-forwarded-proto").as_deref(),
        Some("http")
    );
    assert_eq!(
        reply.seen_header("x-forwarded-host").as_deref(),
        Some("Fwd.Test:8080"),
        "X-Forwarded-Host carries the Host header the client sent"
    );
    assert_eq!(
        reply.seen_header("host").as_deref(),
        Some("Fwd.Test:8080"),
        "the Host header itself is passed as sent"
    );

    info!("--- without a request id the gateway makes one, and both sides see the same");
    let id = reply.seen_header("x-request-id").expect("an x-request-id");
    assert_eq!(id.len(), 32, "a 128-bit hex id: {id}");
    assert!(id.chars().all(|c| c.is_ascii_hexdigit()), "{id}");
    assert_eq!(reply.header("x-request-id"), Some(id.as_str()));
    let other = client.get("fwd.test", "/").await;
    assert_ne!(
        other.seen_header("x-request-id").as_deref(),
        Some(id.as_str()),
        "every request gets its own id"
    );

    info!("--- the client's own request id is kept end to end");
    let reply = client
        .send(
            Method::GET,
            "fwd.test",
            "/",
            &[("x-request-id", "client-chosen-id")],
            "",
        )
        .await;
    assert_eq!(
        reply.seen_header("x-request-id").as_deref(),
        Some("client-chosen-id")
    );
    assert_eq!(reply.header("x-request-id"), Some("client-chosen-id"));
}

#[tokio::test]
async fn http2_clients_reach_http1_backends() {
    support::init_tracing();
    let backend = Backend::start("echo").await;
    let gw = start_gateway(&support::everything_to(&backend)).await;

    info!("--- an h2c connection with prior knowledge");
    let sender = support::h2c_connect(gw.http).await;

    info!("--- eight concurrent streams on it");
    let streams = (0..8).map(|i| {
        let mut sender = sender.clone();
        async move { support::h2_get(&mut sender, "h2.test", &format!("/stream/{i}?q={i}")).await }
    });
    let replies = futures_util::future::join_all(streams).await;
    for (i, reply) in replies.iter().enumerate() {
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
        assert_eq!(reply.version, http::Version::HTTP_2);
        let seen = reply.json();
        assert_eq!(seen["path"], format!("/stream/{i}?q={i}"));
        assert_eq!(seen["version"], "HTTP/1.1", "the backend speaks HTTP/1.1");
        assert_eq!(
            reply.seen_header("host").as_deref(),
            Some("h2.test"),
            "the :authority becomes the Host header"
        );
        assert_eq!(
            reply.seen_header("x-forwarded-host").as_deref(),
            Some("h2.test")
        );
    }
    assert_eq!(backend.requests(), 8);
}

#[tokio::test]
async fn a_client_sending_headers_slowly_is_cut_off_by_the_header_timeout() {
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

    info!("--- a client that sends its request one byte per second");
    let request = b"GET /slowloris HTTP/1.1\r\nHost: slow.test\r\nX-Padding: aaaaaaaa\r\n\r\n";
    let stream = tokio::net::TcpStream::connect(gw.http).await.unwrap();
    let (mut read, mut write) = stream.into_split();
    let started = Instant::now();
    let writer = tokio::spawn(async move {
        let mut sent = 0;
        for byte in request {
            if write.write_all(&[*byte]).await.is_err() {
                break;
            }
            sent += 1;
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        sent
    });

    info!("--- the gateway closes the connection soon after the 1 s header timeout");
    let mut answer = Vec::new();
    let closed = support::within(
        "the gateway to close the slow connection",
        read.read_to_end(&mut answer),
    )
    .await;
    let elapsed = started.elapsed();
    writer.abort();
    info!(?elapsed, ?closed, answer = %String::from_utf8_lossy(&answer), "--- connection closed");
    assert!(
        elapsed < Duration::from_secs(4),
        "closed only after {elapsed:?}, with {} bytes to send taking {} s",
        request.len(),
        request.len()
    );
    assert!(
        elapsed >= Duration::from_millis(900),
        "closed before the timeout: {elapsed:?}"
    );
    assert!(
        !String::from_utf8_lossy(&answer).contains("200 OK"),
        "the request must not have been served"
    );
    assert_eq!(backend.requests(), 0);
}
