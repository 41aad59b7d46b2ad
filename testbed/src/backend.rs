//! A demo backend: JSON echo, WebSocket echo on `/ws`, a server-sent-events ticker on `/sse`.
//!
//! It runs as its own process under `up`, and in-process in tests through [`Backend`], which can
//! be stopped like a killed process: every connection (WebSocket ones included) is cut at once,
//! so a load test sees what clients of a crashed backend see.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::protocol::Role;

type Body = BoxBody<Bytes, Infallible>;

/// Serves until the process is stopped.
pub async fn run(listen: SocketAddr, name: String) -> std::io::Result<()> {
    let listener = TcpListener::bind(listen).await?;
    eprintln!("{name} listening on {listen}");
    // The sender lives as long as this future, which is the life of the process.
    let (_alive, stopped) = watch::channel(());
    serve(listener, Arc::new(name), stopped).await
}

/// A demo backend running in this process, for tests.
///
/// Dropping it (or [`Backend::stop`]) closes the listener and every open connection, the way a
/// killed process would; [`Backend::start`] on the same address brings it back.
#[derive(Debug)]
pub struct Backend {
    addr: SocketAddr,
    stop: watch::Sender<()>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Backend {
    /// Binds `listen` (port 0 picks a free port) and serves in a background task.
    pub async fn start(listen: SocketAddr, name: &str) -> std::io::Result<Self> {
        let listener = TcpListener::bind(listen).await?;
        let addr = listener.local_addr()?;
        let (stop, stopped) = watch::channel(());
        let task = tokio::spawn(serve(listener, Arc::new(name.to_owned()), stopped));
        Ok(Self { addr, stop, task })
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Closes the listener and all connections, and returns once they are closed, so the port can
    /// be bound again.
    pub async fn stop(self) {
        drop(self.stop);
        let _ = self.task.await;
    }
}

/// Accepts until `stopped` fires (its sender is dropped). Every connection and WebSocket task
/// watches the same signal, so stopping cuts them too instead of leaving orphan tasks serving.
async fn serve(
    listener: TcpListener,
    name: Arc<String>,
    stopped: watch::Receiver<()>,
) -> std::io::Result<()> {
    let mut connections = tokio::task::JoinSet::new();
    let mut accept_stop = stopped.clone();
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => accepted?.0,
            _ = accept_stop.changed() => break,
        };
        let name = name.clone();
        let stopped = stopped.clone();
        connections.spawn(async move {
            let mut conn_stop = stopped.clone();
            let service = service_fn(move |req| handle(name.clone(), stopped.clone(), req));
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            let connection = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
            tokio::select! {
                _ = connection => {}
                _ = conn_stop.changed() => {}
            }
        });
        // Reap finished connections so a long-running backend does not accumulate them.
        while connections.try_join_next().is_some() {}
    }
    drop(listener);
    connections.shutdown().await;
    Ok(())
}

async fn handle(
    name: Arc<String>,
    mut stopped: watch::Receiver<()>,
    mut req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    if req.uri().path() == "/ws" && req.headers().contains_key(header::UPGRADE) {
        let Some(key) = req.headers().get("sec-websocket-key").cloned() else {
            return Ok(text(StatusCode::BAD_REQUEST, "missing sec-websocket-key"));
        };
        let upgrade = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            let Ok(upgraded) = upgrade.await else { return };
            let mut ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
                TokioIo::new(upgraded),
                Role::Server,
                None,
            )
            .await;
            loop {
                let message = tokio::select! {
                    next = ws.next() => match next {
                        Some(Ok(message)) => message,
                        _ => break,
                    },
                    _ = stopped.changed() => return,
                };
                let reply = match message {
                    tokio_tungstenite::tungstenite::Message::Text(t) => {
                        tokio_tungstenite::tungstenite::Message::text(format!("{name}: {t}"))
                    }
                    tokio_tungstenite::tungstenite::Message::Binary(b) => {
                        tokio_tungstenite::tungstenite::Message::Binary(b)
                    }
                    tokio_tungstenite::tungstenite::Message::Close(_) => break,
                    _ => continue,
                };
                if ws.send(reply).await.is_err() {
                    break;
                }
            }
        });
        let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
        let mut response = Response::new(Full::new(Bytes::new()).boxed());
        *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        let headers = response.headers_mut();
        headers.insert(
            header::CONNECTION,
            http::HeaderValue::from_static("upgrade"),
        );
        headers.insert(header::UPGRADE, http::HeaderValue::from_static("websocket"));
        if let Ok(value) = http::HeaderValue::from_str(&accept) {
            headers.insert("sec-websocket-accept", value);
        }
        return Ok(response);
    }
    if req.uri().path() == "/sse" {
        let name = name.clone();
        let ticks = futures_util::stream::unfold(0u64, move |n| {
            let name = name.clone();
            async move {
                if n > 0 {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                let event = format!("data: {name} tick {n}\n\n");
                Some((Ok::<_, Infallible>(Frame::data(Bytes::from(event))), n + 1))
            }
        });
        let mut response = Response::new(BodyExt::boxed(StreamBody::new(ticks)));
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            http::HeaderValue::from_static("text/event-stream"),
        );
        return Ok(response);
    }
    let headers: serde_json::Map<String, serde_json::Value> = req
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_owned(),
                serde_json::Value::String(v.to_str().unwrap_or("<binary>").to_owned()),
            )
        })
        .collect();
    let body = serde_json::json!({
        "backend": name.as_str(),
        "method": req.method().as_str(),
        "path": req.uri().path_and_query().map_or("/", |p| p.as_str()),
        "headers": headers,
    });
    let mut response = Response::new(Full::new(Bytes::from(format!("{body}\n"))).boxed());
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    Ok(response)
}

fn text(status: StatusCode, message: &'static str) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::from_static(message.as_bytes())).boxed());
    *response.status_mut() = status;
    response
}
