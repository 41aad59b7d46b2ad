//! A route's `timeouts.idle` ends streams that go quiet: a streamed response whose upstream
//! stops sending, and an upgraded connection with no traffic either way.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use fleetgate_agent::Gateway;
use fleetgate_agent::config::AccessLog;
use fleetgate_agent::generation::ConfigSource;
use fleetgate_agent::server::{ServerSettings, serve};
use fleetgate_shared::Snapshot;
use fleetgate_shared::bundle::Format;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A raw upstream that answers every request with `head` and then stays silent, holding the
/// connection open.
async fn silent_upstream(head: &'static str) -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (mut socket, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let _ = socket.read(&mut buf).await;
                socket.write_all(head.as_bytes()).await.unwrap();
                // Hold the socket without sending anything more.
                tokio::time::sleep(Duration::from_secs(60)).await;
            });
        }
    });
    addr
}

async fn gateway(upstream: std::net::SocketAddr, idle: &str) -> std::net::SocketAddr {
    let yaml = format!(
        "kind: Service\nname: quiet\nspec: {{ endpoints: [{{ address: '{upstream}' }}] }}\n---\n\
         kind: Route\nname: all\nspec:\n  forward:\n    backends: [{{ service: quiet }}]\n    timeouts: {{ idle: {idle} }}\n"
    );
    let gateway = Gateway::new(AccessLog::Off, None);
    let resources = fleetgate_shared::parse_bundle(&yaml, Format::Yaml, "").unwrap();
    gateway
        .apply(&Snapshot::new(1, resources).unwrap(), ConfigSource::File)
        .unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let settings = ServerSettings {
        header_timeout: Duration::from_secs(5),
        max_header_bytes: 65536,
        drain_timeout: Duration::from_secs(1),
    };
    tokio::spawn(async move {
        let _stop = stop;
        serve(listener, gateway, settings, false, stopped).await;
    });
    addr
}

/// Reads from `socket` until EOF or error; returns everything read and how long it took.
async fn read_until_closed(socket: &mut TcpStream) -> (String, Duration) {
    let started = std::time::Instant::now();
    let mut all = Vec::new();
    let mut buf = vec![0u8; 4096];
    loop {
        match tokio::time::timeout(Duration::from_secs(10), socket.read(&mut buf))
            .await
            .expect("the gateway must close the stream")
        {
            Ok(0) | Err(_) => break,
            Ok(n) => all.extend_from_slice(&buf[..n]),
        }
    }
    (
        String::from_utf8_lossy(&all).into_owned(),
        started.elapsed(),
    )
}

#[tokio::test]
async fn a_streamed_response_that_goes_quiet_is_ended_after_the_idle_timeout() {
    let upstream = silent_upstream("HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n7\r\ndata: 1\r\n").await;
    let addr = gateway(upstream, "300ms").await;
    let mut client = TcpStream::connect(addr).await.unwrap();
    client
        .write_all(b"GET /events HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let (seen, took) = read_until_closed(&mut client).await;
    assert!(seen.starts_with("HTTP/1.1 200 OK"), "{seen}");
    assert!(
        seen.contains("data: 1"),
        "the event sent before the silence arrives: {seen}"
    );
    assert!(
        !seen.ends_with("0\r\n\r\n"),
        "an idle cut is not a clean end of stream: {seen:?}"
    );
    assert!(
        took >= Duration::from_millis(300),
        "cut only after the idle timeout, took {took:?}"
    );
}

#[tokio::test]
async fn an_upgraded_connection_without_traffic_is_closed_after_the_idle_timeout() {
    let upstream = silent_upstream(
        "HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: echo\r\n\r\n",
    )
    .await;
    let addr = gateway(upstream, "300ms").await;
    let mut client = TcpStream::connect(addr).await.unwrap();
    client
        .write_all(
            b"GET /tunnel HTTP/1.1\r\nhost: x\r\nconnection: upgrade\r\nupgrade: echo\r\n\r\n",
        )
        .await
        .unwrap();
    let (seen, took) = read_until_closed(&mut client).await;
    assert!(seen.starts_with("HTTP/1.1 101"), "{seen}");
    assert!(
        took >= Duration::from_millis(300),
        "closed only after the idle timeout, took {took:?}"
    );
}
