//! Keep-alive HTTP/1.1 connections to upstream endpoints.
//!
//! Each authority has a stack of idle connections behind one short lock; a request takes the
//! most recently used one (warm in the kernel's and the upstream's caches) or opens a new one,
//! and runs the exchange on its own task ([`h1`]). The connection goes back when the response
//! body has ended, not when the response head arrived, so a streaming response (SSE, a
//! download) never holds up another request.
//!
//! A connection is never handed out twice at once and never reused after an exchange that
//! did not end cleanly: a body dropped before its end, a request body cut short by an early
//! answer, bytes past the response. A pooled connection the upstream has closed is seen as it
//! is taken and skipped. When the request was already written as the close arrived, only an
//! idempotent request without a body is sent again, and only when the connection had been
//! idle long enough to be suspected ([`MAY_BE_STALE_AFTER`]).

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::{Arc, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::uri::Authority;
use http::{Request, Response, StatusCode, Uri};
use hyper::body::Incoming;
use hyper::body::{Body, Frame, SizeHint};
use parking_lot::Mutex;
use rustc_hash::FxHashMap;
use tower::ServiceExt;

use super::clients::UpstreamBody;
use super::connector::UpstreamConnector;
use super::h1::{self, Conn, Failure, Upgraded};
use crate::BoxError;
use crate::headers::Added;

/// Idle connections kept per authority; more are closed as they come back. Far above what one
/// agent keeps busy towards one endpoint, it bounds the sockets a burst can leave open.
const MAX_IDLE_PER_AUTHORITY: usize = 512;

/// A pooled connection idle at least this long may be closing under the request that reuses it:
/// upstream servers close idle keep-alive connections after their own timeout, commonly 2 to
/// 75 s and rarely under a second. An idempotent bodiless request that loses such a connection
/// before any response is sent again. A connection reused sooner failing is the upstream's
/// failure to report.
const MAY_BE_STALE_AFTER: Duration = Duration::from_millis(500);

/// Why an upstream request failed.
#[derive(Debug)]
pub enum ClientError {
    /// No connection: refused, unreachable, connect timeout, TLS handshake failure. Nothing was
    /// sent.
    Connect(BoxError),
    /// The connection failed while sending the request or reading the response head.
    Request(BoxError),
}

impl ClientError {
    pub fn is_connect(&self) -> bool {
        matches!(self, ClientError::Connect(_))
    }

    /// The error and its causes, outermost first, joined by `: `.
    pub fn reason(&self) -> String {
        let (ClientError::Connect(error) | ClientError::Request(error)) = self;
        chain(error.as_ref()).collect::<Vec<_>>().join(": ")
    }
}

/// The messages of `error` and of each error below it, outermost first.
pub(super) fn chain<'a>(
    error: &'a (dyn std::error::Error + 'static),
) -> impl Iterator<Item = String> + 'a {
    std::iter::successors(Some(error), |e| e.source()).map(ToString::to_string)
}

impl std::fmt::Display for ClientError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.reason())
    }
}

impl std::error::Error for ClientError {}

/// The HTTP/1.1 connections of one client (one set of connector settings), by authority.
/// Cloning shares the pool.
#[derive(Clone)]
pub struct Http1Pool {
    inner: Arc<Inner>,
}

struct Inner {
    connector: UpstreamConnector,
    idle_timeout: Duration,
    /// Keyed by endpoint authorities from the config: a fast non-keyed hash is safe.
    idle: Mutex<FxHashMap<Authority, VecDeque<Idle>>>,
    /// Whether the task that closes expired idle connections runs.
    reaper: std::sync::Once,
}

struct Idle {
    conn: Conn,
    since: Instant,
}

impl std::fmt::Debug for Http1Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let idle: usize = self.inner.idle.lock().values().map(VecDeque::len).sum();
        f.debug_struct("Http1Pool")
            .field("idle", &idle)
            .field("idle_timeout", &self.inner.idle_timeout)
            .finish()
    }
}

impl Http1Pool {
    pub fn new(connector: UpstreamConnector, idle_timeout: Duration) -> Self {
        Self {
            inner: Arc::new(Inner {
                connector,
                idle_timeout,
                idle: Mutex::new(FxHashMap::default()),
                reaper: std::sync::Once::new(),
            }),
        }
    }

    /// Sends `request` (origin-form URI: path and query) to `authority` on a pooled or new
    /// connection, with `added` written after the request's own fields (see [`Added`]). With
    /// `raw_fields`, the response's fields come as [`crate::wire::RawFields`] in its extensions.
    pub async fn send(
        &self,
        authority: &Authority,
        request: Request<UpstreamBody>,
        added: &Added<'_>,
        raw_fields: bool,
    ) -> Result<Response<PooledBody>, ClientError> {
        let (parts, mut body) = request.into_parts();
        let bodiless = body.is_end_stream();
        loop {
            let (conn, idle_for) = match self.checkout(authority) {
                Some((conn, idle_for)) => (conn, Some(idle_for)),
                // Boxed: connecting is rare, and its future (connector, TLS handshake) would
                // otherwise make every request's future larger.
                None => (Box::pin(self.connect(authority)).await?, None),
            };
            match conn
                .exchange(raw_fields, &parts, added, authority, body)
                .await
            {
                Ok(response) => return Ok(self.pooled(authority, response)),
                // The head could not be written on a pooled connection: nobody saw the
                // request, so another connection may carry it.
                Err(Failure::Unsent { body: unsent, .. }) if idle_for.is_some() => body = unsent,
                // Written, but the connection ended before any response: on a connection that
                // was idle, the upstream most likely closed it as the request went out. An
                // idempotent request without a body is sent again, once, on a new connection
                // (RFC 9110 9.2.2); nginx does the same for its cached upstream connections.
                Err(Failure::NoResponse(error))
                    if idle_for.is_some_and(|idle| idle >= MAY_BE_STALE_AFTER)
                        && bodiless
                        && super::is_idempotent(&parts.method) =>
                {
                    tracing::debug!(upstream = %authority, "an idle upstream connection failed as it was reused ({error}); sending again on a new one");
                    let fresh = Box::pin(self.connect(authority)).await?;
                    let response = fresh
                        .exchange(raw_fields, &parts, added, authority, crate::error::empty())
                        .await
                        .map_err(|f| ClientError::Request(f.into_error()))?;
                    return Ok(self.pooled(authority, response));
                }
                Err(failure) => return Err(ClientError::Request(failure.into_error())),
            }
        }
    }

    /// The response, with its body holding the connection until it ends. After a protocol
    /// switch the connection belongs to the tunnel and never returns.
    fn pooled(
        &self,
        authority: &Authority,
        response: Response<h1::ResponseBody>,
    ) -> Response<PooledBody> {
        let switching = response.status() == StatusCode::SWITCHING_PROTOCOLS;
        response.map(|body| {
            if switching {
                return PooledBody(Kind::Switched(body.into_upgraded()));
            }
            PooledBody(Kind::Http1 {
                body: Some(body),
                give_back: GiveBack {
                    pool: Arc::downgrade(&self.inner),
                    authority: authority.clone(),
                },
            })
        })
    }

    /// The most recently used idle connection to `authority` that is still open, and how long
    /// it was idle.
    fn checkout(&self, authority: &Authority) -> Option<(Conn, Duration)> {
        loop {
            let Idle { mut conn, since } = {
                let mut idle = self.inner.idle.lock();
                idle.get_mut(authority)?.pop_back()?
            };
            let idle_for = since.elapsed();
            if idle_for < self.inner.idle_timeout && conn.still_open() {
                return Some((conn, idle_for));
            }
        }
    }

    async fn connect(&self, authority: &Authority) -> Result<Conn, ClientError> {
        // The connector dials the URI's authority and takes the TLS server name from its host.
        let uri = Uri::builder()
            .scheme("http")
            .authority(authority.clone())
            .path_and_query("/")
            .build()
            .map_err(|e| ClientError::Connect(Box::new(e)))?;
        let io = self
            .inner
            .connector
            .clone()
            .oneshot(uri)
            .await
            .map_err(ClientError::Connect)?;
        self.start_reaper();
        Ok(Conn::new(io.into_inner()))
    }

    /// Starts, once, the task that closes connections idle past the timeout. It holds the pool
    /// weakly and ends with it.
    fn start_reaper(&self) {
        self.inner.reaper.call_once(|| {
            let pool = Arc::downgrade(&self.inner);
            let every = (self.inner.idle_timeout / 2).max(Duration::from_secs(1));
            tokio::spawn(async move {
                let mut ticker = tokio::time::interval(every);
                ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                ticker.tick().await;
                loop {
                    ticker.tick().await;
                    let Some(pool) = pool.upgrade() else { return };
                    pool.close_expired();
                }
            });
        });
    }
}

impl Inner {
    fn keep(&self, authority: Authority, conn: Conn) {
        let mut idle = self.idle.lock();
        let list = idle.entry(authority).or_default();
        if list.len() >= MAX_IDLE_PER_AUTHORITY {
            list.pop_front();
        }
        list.push_back(Idle {
            conn,
            since: Instant::now(),
        });
    }

    /// Closes idle connections past the timeout or closed by the upstream, and forgets
    /// authorities left without any.
    fn close_expired(&self) {
        let mut idle = self.idle.lock();
        for list in idle.values_mut() {
            list.retain_mut(|i| i.since.elapsed() < self.idle_timeout && i.conn.still_open());
        }
        idle.retain(|_, list| !list.is_empty());
    }
}

/// Where a connection goes back once the response body ends.
struct GiveBack {
    pool: Weak<Inner>,
    authority: Authority,
}

/// An upstream response body. From a pooled connection, the connection returns to the pool as
/// soon as the body has ended; a body dropped before its end closes the connection.
pub struct PooledBody(Kind);

enum Kind {
    Http1 {
        /// `None` once the connection went back.
        body: Option<h1::ResponseBody>,
        give_back: GiveBack,
    },
    /// A `101 Switching Protocols` response: no body, and the connection for the tunnel until
    /// it is taken.
    Switched(Option<Upgraded>),
    /// From hyper's HTTP/2 client, which manages its connections itself.
    Http2(Incoming),
}

impl PooledBody {
    /// A body from a connection this pool does not manage (HTTP/2).
    pub fn unpooled(body: Incoming) -> Self {
        Self(Kind::Http2(body))
    }

    /// After a `101 Switching Protocols`: the upstream connection, for the tunnel.
    pub fn take_upgraded(&mut self) -> Option<Upgraded> {
        match &mut self.0 {
            Kind::Switched(upgraded) => upgraded.take(),
            _ => None,
        }
    }

    /// Returns the connection to the pool if the body has ended cleanly.
    fn release(&mut self) {
        if let Kind::Http1 { body, give_back } = &mut self.0
            && body.as_ref().is_some_and(h1::ResponseBody::reusable)
            && let Some(body) = body.take()
            && let Some(pool) = give_back.pool.upgrade()
        {
            pool.keep(give_back.authority.clone(), body.into_conn());
        }
    }
}

impl std::fmt::Debug for PooledBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match &self.0 {
            Kind::Http1 { .. } => "http1",
            Kind::Switched(_) => "switched",
            Kind::Http2(_) => "http2",
        };
        f.debug_tuple("PooledBody").field(&kind).finish()
    }
}

impl Body for PooledBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match &mut self.0 {
            Kind::Http1 { body: None, .. } | Kind::Switched(_) => Poll::Ready(None),
            Kind::Http1 {
                body: Some(body), ..
            } => {
                let polled = body.poll_frame(cx);
                if polled.is_ready() && body.is_end_stream() {
                    self.release();
                }
                polled
            }
            Kind::Http2(body) => Pin::new(body).poll_frame(cx).map_err(Into::into),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.0 {
            Kind::Http1 { body: None, .. } | Kind::Switched(_) => true,
            Kind::Http1 {
                body: Some(body), ..
            } => body.is_end_stream(),
            Kind::Http2(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.0 {
            Kind::Http1 { body: None, .. } | Kind::Switched(_) => SizeHint::with_exact(0),
            Kind::Http1 {
                body: Some(body), ..
            } => body.size_hint(),
            Kind::Http2(body) => body.size_hint(),
        }
    }
}

impl Drop for PooledBody {
    fn drop(&mut self) {
        // A sized body that was read to its end is not polled again: that is an end too.
        self.release();
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::io::Write;
    use std::net::TcpListener;
    use std::sync::mpsc;

    use fleetgate_shared::model::UpstreamProtocol;
    use http_body_util::BodyExt;
    use hyper_util::client::legacy::connect::HttpConnector;

    use super::*;

    fn pool() -> Http1Pool {
        let connector =
            UpstreamConnector::new(HttpConnector::new(), None, UpstreamProtocol::Http1).unwrap();
        Http1Pool::new(connector, Duration::from_secs(90))
    }

    fn get() -> Request<UpstreamBody> {
        Request::get("/")
            .header(http::header::HOST, "pool.test")
            .body(crate::error::empty())
            .unwrap()
    }

    /// Reads one request head from a blocking socket, lower-cased.
    fn read_head(socket: &mut std::net::TcpStream) -> String {
        super::super::h1::tests::read_head(socket).to_ascii_lowercase()
    }

    /// Reads one request head from a blocking socket and answers it.
    fn answer(socket: &mut std::net::TcpStream, body: &str) {
        read_head(socket);
        let response = format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        socket.write_all(response.as_bytes()).unwrap();
    }

    fn idle_count(pool: &Http1Pool) -> usize {
        pool.inner.idle.lock().values().map(VecDeque::len).sum()
    }

    /// The connection goes back as the response body ends, with no task in between.
    fn assert_one_is_idle(pool: &Http1Pool) {
        assert_eq!(idle_count(pool), 1, "the connection went back to the pool");
    }

    /// The race an upstream's idle timeout sets up: a connection idle for `idle`, closed by the
    /// upstream just as `second` takes it from the pool. Returns the second request's outcome
    /// and how many connections the upstream accepted.
    async fn upstream_closes_as_the_connection_is_reused(
        idle: Duration,
        second: Request<UpstreamBody>,
    ) -> (Result<Bytes, ClientError>, usize) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let authority: Authority = listener.local_addr().unwrap().to_string().parse().unwrap();
        let (close_tx, close_rx) = mpsc::channel::<()>();
        let (closed_tx, closed_rx) = mpsc::channel::<()>();
        let upstream = std::thread::spawn(move || {
            let (mut first, _) = listener.accept().unwrap();
            answer(&mut first, "one");
            close_rx.recv().unwrap();
            drop(first);
            closed_tx.send(()).unwrap();
            // A second connection, if the agent opens one, is answered.
            listener.set_nonblocking(true).unwrap();
            let deadline = Instant::now() + Duration::from_secs(2);
            while Instant::now() < deadline {
                if let Ok((mut second, _)) = listener.accept() {
                    second.set_nonblocking(false).unwrap();
                    answer(&mut second, "two");
                    return 2;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            1
        });

        let pool = pool();
        let response = pool
            .send(&authority, get(), &Added::NONE, false)
            .await
            .unwrap();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body, "one");
        assert_one_is_idle(&pool);
        tokio::time::sleep(idle).await;

        // The upstream closes; the runtime's reactor does not run between this and the
        // checkout, so the pool still holds the connection as open when the request takes it.
        close_tx.send(()).unwrap();
        closed_rx.recv().unwrap();
        let outcome = match pool.send(&authority, second, &Added::NONE, false).await {
            Ok(response) => Ok(response.into_body().collect().await.unwrap().to_bytes()),
            Err(e) => Err(e),
        };
        (outcome, upstream.join().unwrap())
    }

    #[tokio::test(flavor = "current_thread")]
    async fn an_idempotent_request_on_a_connection_closed_as_it_was_reused_is_sent_again() {
        let (outcome, accepted) =
            upstream_closes_as_the_connection_is_reused(Duration::from_millis(600), get()).await;
        assert_eq!(outcome.unwrap(), "two");
        assert_eq!(accepted, 2);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_request_with_a_body_is_never_sent_twice() {
        let post = Request::post("/orders")
            .header(http::header::HOST, "pool.test")
            .body(
                http_body_util::Full::new(Bytes::from_static(b"{}"))
                    .map_err(|never| match never {})
                    .boxed(),
            )
            .unwrap();
        let (outcome, accepted) =
            upstream_closes_as_the_connection_is_reused(Duration::from_millis(600), post).await;
        let error = outcome.unwrap_err();
        assert!(!error.is_connect(), "{error}");
        assert_eq!(
            accepted, 1,
            "the upstream may have seen the request: not repeated"
        );
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_connection_reused_at_once_is_not_suspected() {
        // Reused within a few milliseconds, a connection is not one an idle timeout closes:
        // no copy is kept, and a failure there is the upstream's to report.
        let (outcome, accepted) =
            upstream_closes_as_the_connection_is_reused(Duration::ZERO, get()).await;
        assert!(outcome.is_err());
        assert_eq!(accepted, 1);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_request_without_host_gets_the_endpoints_authority() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let authority: Authority = listener.local_addr().unwrap().to_string().parse().unwrap();
        let upstream = std::thread::spawn(move || {
            let (mut socket, _) = listener.accept().unwrap();
            let mut heads = Vec::new();
            for _ in 0..2 {
                heads.push(read_head(&mut socket));
                socket
                    .write_all(b"HTTP/1.1 204 No Content\r\n\r\n")
                    .unwrap();
            }
            heads
        });
        let pool = pool();
        let bare = Request::get("/healthz")
            .body(crate::error::empty())
            .unwrap();
        assert_eq!(
            pool.send(&authority, bare, &Added::NONE, false)
                .await
                .unwrap()
                .status(),
            StatusCode::NO_CONTENT
        );
        assert_one_is_idle(&pool);
        assert_eq!(
            pool.send(&authority, get(), &Added::NONE, false)
                .await
                .unwrap()
                .status(),
            StatusCode::NO_CONTENT
        );
        let heads = upstream.join().unwrap();
        assert!(
            heads[0].contains(&format!("\r\nhost: {authority}\r\n")),
            "{}",
            heads[0]
        );
        assert!(
            heads[1].contains("\r\nhost: pool.test\r\n"),
            "a given Host is kept: {}",
            heads[1]
        );
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_refused_connection_is_a_connect_error_with_its_cause() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let authority: Authority = listener.local_addr().unwrap().to_string().parse().unwrap();
        drop(listener);
        let error = pool()
            .send(&authority, get(), &Added::NONE, false)
            .await
            .unwrap_err();
        assert!(error.is_connect(), "{error}");
        assert!(error.reason().contains("refused"), "{error}");
    }
}
