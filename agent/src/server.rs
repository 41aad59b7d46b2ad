//! Listeners: accept loops for plain HTTP and TLS, connection settings, graceful drain.
//!
//! An HTTP/1.1 connection (plain, or TLS without `h2` negotiated) starts on the agent's own
//! server ([`h1`]), which serves the common request and hands the connection to hyper at the
//! first request it leaves to it; an `h2` TLS connection goes to hyper at once.

mod h1;

use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::gateway::Gateway;
use crate::inbound::Inbound;
use crate::proxy::{self, ConnInfo};

/// A TLS handshake slower than this is abandoned: it bounds sockets held by clients that
/// connect and never finish the handshake.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Pause after an accept error (such as running out of file descriptors) before trying again,
/// so that the loop does not spin.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(50);

/// Connection settings shared by both listeners.
#[derive(Debug, Clone, Copy)]
pub struct ServerSettings {
    pub header_timeout: Duration,
    pub max_header_bytes: usize,
    pub drain_timeout: Duration,
}

fn builder(settings: ServerSettings) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(settings.header_timeout)
        .max_buf_size(settings.max_header_bytes.max(8192))
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(settings.max_header_bytes).unwrap_or(u32::MAX))
        .max_concurrent_streams(1024);
    builder
}

/// Accepts until `shutdown` flips, then lets open connections finish for up to the drain
/// timeout. `tls` selects TLS termination with certificates chosen by SNI.
pub async fn serve(
    listener: TcpListener,
    gateway: Arc<Gateway>,
    settings: ServerSettings,
    tls: bool,
    mut shutdown: watch::Receiver<bool>,
) {
    let builder = Arc::new(builder(settings));
    let graceful = GracefulShutdown::new();
    // Tells the connections on the agent's own server to stop taking requests; hyper's are
    // told by `graceful`, which also waits for both kinds (each holds a watcher).
    let drain = CancellationToken::new();
    let local = listener.local_addr().ok();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let _ = stream.set_nodelay(true);
                    let gateway = gateway.clone();
                    let accepted = Accepted {
                        conn: ConnInfo { peer, tls },
                        gateway: gateway.clone(),
                        builder: builder.clone(),
                        settings,
                        watcher: graceful.watcher(),
                        drain: drain.clone(),
                    };
                    tokio::spawn(async move {
                        let _open = gateway.telemetry.connection_opened();
                        if tls {
                            accepted.serve_tls(stream).await;
                        } else {
                            accepted.serve_http1(stream).await;
                        }
                    });
                }
                Err(e) => {
                    tracing::warn!(listener = ?local, "accept failed: {e}; retrying (check the open-file limit if this repeats)");
                    tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
                }
            },
            _ = shutdown.changed() => break,
        }
    }
    drop(listener);
    drain.cancel();
    let open = graceful.count();
    if open > 0 {
        tracing::info!(listener = ?local, open, "draining open connections for up to {:?}", settings.drain_timeout);
    }
    if tokio::time::timeout(settings.drain_timeout, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(listener = ?local, "drain deadline passed; closing the remaining connections");
    }
}

/// An accepted connection and what serving it needs.
struct Accepted {
    conn: ConnInfo,
    gateway: Arc<Gateway>,
    builder: Arc<auto::Builder<TokioExecutor>>,
    settings: ServerSettings,
    /// Held while the connection is open: the drain waits for every watcher to go.
    watcher: Watcher,
    /// Tells the agent's own server to stop taking requests.
    drain: CancellationToken,
}

impl Accepted {
    async fn serve_tls(self, stream: TcpStream) {
        let conn = self.conn;
        let handshake = async {
            let acceptor =
                tokio_rustls::LazyConfigAcceptor::new(rustls::server::Acceptor::default(), stream);
            let start = acceptor.await.map_err(|e| format!("client hello: {e}"))?;
            let sni = start.client_hello().server_name().map(str::to_owned);
            let config = self
                .gateway
                .current()
                .tls
                .config_for(sni.as_deref())
                .ok_or_else(|| format!("no certificate for server name {sni:?}"))?;
            start
                .into_stream(config)
                .await
                .map_err(|e| format!("handshake: {e}"))
        };
        let tls_stream = match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, handshake).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => {
                tracing::debug!(peer = %conn.peer, "TLS handshake failed: {e}");
                return;
            }
            Err(_) => {
                tracing::debug!(peer = %conn.peer, "TLS handshake timed out");
                return;
            }
        };
        if tls_stream.get_ref().1.alpn_protocol() == Some(b"h2") {
            self.serve_hyper(tls_stream).await;
        } else {
            self.serve_http1(tls_stream).await;
        }
    }

    /// Serves an HTTP/1.1 connection on the agent's own server until it ends, or until a request
    /// it leaves to hyper arrives; then hyper serves the rest (an h2c preface included).
    async fn serve_http1<S>(self, io: S)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let conn = self.conn;
        let ended = h1::serve(io, self.settings, &self.drain, |req| {
            proxy::handle(self.gateway.clone(), conn, req)
        })
        .await;
        if let h1::Ended::HandOff(io) = ended {
            self.serve_hyper(io).await;
        }
    }

    /// Serves a connection on hyper: HTTP/2, and HTTP/1.1 connections the agent's own server
    /// handed over.
    async fn serve_hyper<S>(self, io: S)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let Accepted {
            conn,
            gateway,
            builder,
            watcher,
            ..
        } = self;
        // Boxed: hyper spawns a task per HTTP/2 stream and moves the request's future into it,
        // and `handle`'s future is ~4 KB; a box makes that a pointer (+3 % h2 req/s over 8 paired
        // rounds).
        let service = service_fn(move |req: http::Request<hyper::body::Incoming>| {
            let answer = proxy::handle(gateway.clone(), conn, req.map(Inbound::Incoming));
            Box::pin(async move {
                let mut response = answer.await?;
                // hyper writes the header map alone.
                crate::wire::materialize(&mut response);
                Ok::<_, std::convert::Infallible>(response)
            })
        });
        let connection = builder
            .serve_connection_with_upgrades(TokioIo::new(io), service)
            .into_owned();
        if let Err(e) = watcher.watch(connection).await {
            tracing::debug!(peer = %conn.peer, "connection ended with an error: {e}");
        }
    }
}
