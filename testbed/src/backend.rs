//! A demo backend: JSON echo, WebSocket echo on `/ws`, a server-sent-events ticker on `/sse`.

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
use tokio_tungstenite::tungstenite::protocol::Role;

type Body = BoxBody<Bytes, Infallible>;

/// Serves until the process is stopped.
pub async fn run(listen: SocketAddr, name: String) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(listen).await?;
    let name = Arc::new(name);
    eprintln!("{name} listening on {listen}");
    loop {
        let (stream, _) = listener.accept().await?;
        let name = name.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| handle(name.clone(), req));
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection_with_upgrades(TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn handle(
    name: Arc<String>,
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
            while let Some(Ok(message)) = ws.next().await {
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
