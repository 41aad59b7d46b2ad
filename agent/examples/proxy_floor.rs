//! The floor of an HTTP/1.1 reverse proxy on the agent's runtime: what a proxied GET costs when
//! nothing but the two codecs runs, so that the agent's own cost can be read against it.
//!
//! One current-thread tokio runtime (the agent's `--workers 1`), a connection task per client,
//! a shared pool of keep-alive upstream connections. Each request head is parsed with httparse,
//! re-written upstream from the parsed spans (hop-by-hop `Connection` dropped,
//! `X-Forwarded-For` added), the response head parsed with httparse and copied back with its
//! `Content-Length` body.
//!
//! ```sh
//! cargo build --release -p fleetgate-agent --example proxy_floor
//! target/release/examples/proxy_floor 127.0.0.1:18995 127.0.0.1:18580 &
//! wrk -t1 -c50 -d5s http://127.0.0.1:18995/
//! ```
//!
//! Not a production proxy: requests with bodies, chunked responses, timeouts, routing and every
//! error path are left out on purpose (an error closes the client's connection).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

type Pool = Arc<Mutex<Vec<(TcpStream, BytesMut)>>>;
type Error = Box<dyn std::error::Error + Send + Sync>;

fn main() -> Result<(), Error> {
    let mut args = std::env::args().skip(1);
    let (Some(listen), Some(origin)) = (args.next(), args.next()) else {
        return Err("usage: proxy_floor LISTEN ORIGIN".into());
    };
    let origin: SocketAddr = origin.parse()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let listener = TcpListener::bind(&listen).await?;
        let pool: Pool = Arc::default();
        eprintln!("proxy floor on {listen} -> {origin}");
        loop {
            let (stream, peer) = listener.accept().await?;
            stream.set_nodelay(true)?;
            let pool = pool.clone();
            tokio::spawn(async move {
                let _ = serve(stream, peer, origin, pool).await;
            });
        }
    })
}

async fn serve(
    mut client: TcpStream,
    peer: SocketAddr,
    origin: SocketAddr,
    pool: Pool,
) -> Result<(), Error> {
    let mut inbuf = BytesMut::with_capacity(8192);
    let mut out = Vec::with_capacity(4096);
    loop {
        // Read one request head.
        let head_len = loop {
            let mut headers = [httparse::EMPTY_HEADER; 64];
            let mut req = httparse::Request::new(&mut headers);
            if let httparse::Status::Complete(n) = req.parse(&inbuf)? {
                out.clear();
                out.extend_from_slice(req.method.unwrap_or("GET").as_bytes());
                out.push(b' ');
                out.extend_from_slice(req.path.unwrap_or("/").as_bytes());
                out.extend_from_slice(b" HTTP/1.1\r\n");
                for h in req.headers.iter() {
                    if h.name.eq_ignore_ascii_case("connection") {
                        continue;
                    }
                    out.extend_from_slice(h.name.as_bytes());
                    out.extend_from_slice(b": ");
                    out.extend_from_slice(h.value);
                    out.extend_from_slice(b"\r\n");
                }
                out.extend_from_slice(b"x-forwarded-for: ");
                out.extend_from_slice(peer.ip().to_string().as_bytes());
                out.extend_from_slice(b"\r\n\r\n");
                break n;
            }
            if client.read_buf(&mut inbuf).await? == 0 {
                return Ok(());
            }
        };
        inbuf.advance(head_len);

        let pooled = pool.lock().expect("pool lock").pop();
        let (mut upstream, mut upbuf) = match pooled {
            Some(conn) => conn,
            None => {
                let stream = TcpStream::connect(origin).await?;
                stream.set_nodelay(true)?;
                (stream, BytesMut::with_capacity(8192))
            }
        };
        upstream.write_all(&out).await?;

        // Read the response head and its Content-Length body, then send both to the client.
        let (head_len, body_len) = loop {
            let mut headers = [httparse::EMPTY_HEADER; 64];
            let mut resp = httparse::Response::new(&mut headers);
            if let httparse::Status::Complete(n) = resp.parse(&upbuf)? {
                out.clear();
                out.extend_from_slice(b"HTTP/1.1 ");
                out.extend_from_slice(resp.code.unwrap_or(502).to_string().as_bytes());
                out.push(b' ');
                out.extend_from_slice(resp.reason.unwrap_or("").as_bytes());
                out.extend_from_slice(b"\r\n");
                let mut body_len = 0;
                for h in resp.headers.iter() {
                    if h.name.eq_ignore_ascii_case("connection") {
                        continue;
                    }
                    if h.name.eq_ignore_ascii_case("content-length") {
                        body_len = std::str::from_utf8(h.value)?.trim().parse::<usize>()?;
                    }
                    out.extend_from_slice(h.name.as_bytes());
                    out.extend_from_slice(b": ");
                    out.extend_from_slice(h.value);
                    out.extend_from_slice(b"\r\n");
                }
                out.extend_from_slice(b"\r\n");
                break (n, body_len);
            }
            if upstream.read_buf(&mut upbuf).await? == 0 {
                return Err("upstream closed".into());
            }
        };
        upbuf.advance(head_len);
        while upbuf.len() < body_len {
            if upstream.read_buf(&mut upbuf).await? == 0 {
                return Err("upstream closed mid-body".into());
            }
        }
        out.extend_from_slice(&upbuf[..body_len]);
        upbuf.advance(body_len);
        pool.lock().expect("pool lock").push((upstream, upbuf));
        client.write_all(&out).await?;
    }
}
