//! How much of a request's cost is the HTTP/1.1 server itself: two servers that answer every
//! request with the same 13-byte body and nothing else, on one current-thread runtime like the
//! agent's `--workers 1`.
//!
//! - `hyper`: hyper's HTTP/1.1 server with the agent's settings (header-read timeout, keep-alive)
//!   and a `service_fn` that returns the body.
//! - `raw`: a connection loop that parses each request head with httparse into an
//!   `http::HeaderMap` (what the proxy's routing and policies read) and writes the response
//!   itself: the floor a server codec of our own could reach with today's request types.
//!
//! ```sh
//! cargo run --release -p fleetgate-agent --example server_floor -- hyper 127.0.0.1:18990 &
//! cargo run --release -p fleetgate-agent --example server_floor -- raw 127.0.0.1:18991 &
//! wrk -t1 -c50 -d5s http://127.0.0.1:18990/ ; wrk -t1 -c50 -d5s http://127.0.0.1:18991/
//! ```
//!
//! Not a production server: no bodies, no pipelining limits, no timeouts in `raw`.

use std::convert::Infallible;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue};
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const BODY: &[u8] = b"hello world!\n";
const RESPONSE: &[u8] =
    b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 13\r\n\r\nhello world!\n";

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let (Some(mode), Some(addr)) = (args.next(), args.next()) else {
        return Err("usage: server_floor hyper|raw ADDR".into());
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let listener = TcpListener::bind(&addr).await?;
        eprintln!("{mode} server on {addr}");
        loop {
            let (stream, _) = listener.accept().await?;
            stream.set_nodelay(true)?;
            match mode.as_str() {
                "hyper" => {
                    tokio::spawn(serve_hyper(stream));
                }
                "raw" => {
                    tokio::spawn(serve_raw(stream));
                }
                other => return Err(format!("unknown mode {other}").into()),
            }
        }
    })
}

async fn serve_hyper(stream: TcpStream) {
    let service = service_fn(|_req| async {
        Ok::<_, Infallible>(hyper::Response::new(Full::new(Bytes::from_static(BODY))))
    });
    let _ = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(10))
        .keep_alive(true)
        .serve_connection(TokioIo::new(stream), service)
        .await;
}

async fn serve_raw(mut stream: TcpStream) {
    let mut buffer = BytesMut::with_capacity(8192);
    loop {
        // Parse every complete head in the buffer, then read more.
        loop {
            let mut fields = [httparse::EMPTY_HEADER; 64];
            let mut request = httparse::Request::new(&mut fields);
            let head_len = match request.parse(&buffer) {
                Ok(httparse::Status::Complete(len)) => len,
                Ok(httparse::Status::Partial) => break,
                Err(_) => return,
            };
            let mut headers = HeaderMap::with_capacity(request.headers.len());
            for field in request.headers.iter() {
                if let (Ok(name), Ok(value)) = (
                    HeaderName::from_bytes(field.name.as_bytes()),
                    HeaderValue::from_bytes(field.value),
                ) {
                    headers.append(name, value);
                }
            }
            std::hint::black_box(&headers);
            let _ = buffer.split_to(head_len);
            if stream.write_all(RESPONSE).await.is_err() {
                return;
            }
        }
        match stream.read_buf(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}
