//! Keep-alive HTTP/1.1 connections to upstream endpoints, on hyper's connection API.
//!
//! hyper-util's pooled client serves every protocol, and pays for it on every request: a pool
//! key built from the URI, a checkout future racing a connect future, a `Pooled` wrapper and a
//! boxed response future. For HTTP/1.1 (the common upstream protocol) this pool does less. Each
//! authority has a stack of idle connections behind one short lock; a request takes the most
//! recently used one (warm in the kernel's and the upstream's caches) or opens a new one; the
//! connection goes back when the response body has ended, not when the response head arrived,
//! so a streaming response (SSE, a download) never holds up another request.
//!
//! A connection is never handed out twice at once and never reused after its response was cut
//! short: a body dropped before its end leaves the connection to hyper, which closes it. A
//! request that finds its pooled connection closed by the upstream before a byte was written
//! (the upstream's idle timeout racing our reuse) is sent on another connection: the request
//! was not seen by anyone, so this is safe for any method. When the request was already
//! written as the close arrived, only an idempotent request without a body is sent again, and
//! only when the connection had been idle long enough to be suspected ([`MAY_BE_STALE_AFTER`]).

use std::collections::{HashMap, VecDeque};
use std::pin::Pin;
use std::sync::{Arc, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::uri::Authority;
use http::{Request, Response, StatusCode, Uri};
use hyper::body::Incoming;
use hyper::body::{Body, Frame, SizeHint};
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use parking_lot::Mutex;
use tower::ServiceExt;

use super::clients::UpstreamBody;
use super::connector::{UpstreamConnector, UpstreamStream};
use crate::BoxError;

/// Idle connections kept per authority; more are closed as they come back. Far above what one
/// agent keeps busy towards one endpoint, it bounds the sockets a burst can leave open.
const MAX_IDLE_PER_AUTHORITY: usize = 512;

/// A pooled connection idle at least this long may be closing under the request that reuses it:
/// upstream servers close idle keep-alive connections after their own timeout, commonly 2 to
/// 75 s and rarely under a second. Requests on such a connection keep a copy to send again.
/// Below it the copy (a header map clone) is not worth its cost on every request.
const MAY_BE_STALE_AFTER: Duration = Duration::from_millis(500);

/// What is needed to send an idempotent, bodiless request again.
struct Replay {
    method: http::Method,
    uri: Uri,
    version: http::Version,
    headers: http::HeaderMap,
}

impl Replay {
    fn of(request: &Request<UpstreamBody>) -> Option<Replay> {
        let idempotent = matches!(
            *request.method(),
            http::Method::GET
                | http::Method::HEAD
                | http::Method::OPTIONS
                | http::Method::TRACE
                | http::Method::PUT
                | http::Method::DELETE
        );
        (idempotent && request.body().is_end_stream()).then(|| Replay {
            method: request.method().clone(),
            uri: request.uri().clone(),
            version: request.version(),
            headers: request.headers().clone(),
        })
    }

    fn into_request(self) -> Request<UpstreamBody> {
        let mut request = Request::new(crate::error::empty());
        *request.method_mut() = self.method;
        *request.uri_mut() = self.uri;
        *request.version_mut() = self.version;
        *request.headers_mut() = self.headers;
        request
    }
}

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
    idle: Mutex<HashMap<Authority, VecDeque<Idle>>>,
    /// Whether the task that closes expired idle connections runs.
    reaper: std::sync::Once,
}

struct Idle {
    sender: SendRequest<UpstreamBody>,
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
                idle: Mutex::new(HashMap::new()),
                reaper: std::sync::Once::new(),
            }),
        }
    }

    /// Sends `request` (origin-form URI: path and query) to `authority` on a pooled or new
    /// connection.
    pub async fn send(
        &self,
        authority: &Authority,
        mut request: Request<UpstreamBody>,
    ) -> Result<Response<PooledBody>, ClientError> {
        // HTTP/1.1 requires Host (RFC 9112 3.2), and hyper's connection API does not add one.
        // The proxy sets the client's; health probes and a route that removes it get the
        // endpoint's.
        if !request.headers().contains_key(http::header::HOST)
            && let Ok(host) = http::HeaderValue::from_str(authority.as_str())
        {
            request.headers_mut().insert(http::header::HOST, host);
        }
        loop {
            let (mut sender, idle_for) = match self.checkout(authority) {
                Some((sender, idle_for)) => (sender, Some(idle_for)),
                // Boxed: connecting is rare, and its future (connector, TLS handshake, HTTP
                // handshake) would otherwise make every request's future kilobytes larger.
                None => (Box::pin(self.connect(authority)).await?, None),
            };
            // A connection that sat idle may be one the upstream is closing right now (its own
            // idle timeout); if the request can be sent again safely, keep what is needed to.
            let replay = idle_for
                .filter(|idle| *idle >= MAY_BE_STALE_AFTER)
                .and_then(|_| Replay::of(&request));
            match sender.try_send_request(request).await {
                Ok(response) => return Ok(self.pooled(authority, sender, response)),
                Err(mut error) => match (error.take_message(), replay) {
                    // Closed before the request was written: nobody saw it, so another
                    // connection may carry it. A fresh connection failing this way is an
                    // upstream that accepts and closes: report it.
                    (Some(unsent), _) if idle_for.is_some() => request = unsent,
                    // Written, but the connection failed before any response: on a
                    // connection that was idle, the upstream most likely closed it as the
                    // request went out. An idempotent request without a body is sent again,
                    // once, on a new connection (RFC 9110 9.2.2); nginx does the same for its
                    // cached upstream connections.
                    (None, Some(replay)) => {
                        let error = error.into_error();
                        tracing::debug!(upstream = %authority, "an idle upstream connection failed as it was reused ({error}); sending again on a new one");
                        let mut fresh = Box::pin(self.connect(authority)).await?;
                        let response = fresh
                            .send_request(replay.into_request())
                            .await
                            .map_err(|e| ClientError::Request(Box::new(e)))?;
                        return Ok(self.pooled(authority, fresh, response));
                    }
                    _ => return Err(ClientError::Request(Box::new(error.into_error()))),
                },
            }
        }
    }

    /// The response, with its body holding the connection until it ends. After a protocol
    /// switch the connection belongs to the tunnel and never returns.
    fn pooled(
        &self,
        authority: &Authority,
        sender: SendRequest<UpstreamBody>,
        response: Response<Incoming>,
    ) -> Response<PooledBody> {
        let give_back = (response.status() != StatusCode::SWITCHING_PROTOCOLS).then(|| GiveBack {
            pool: Arc::downgrade(&self.inner),
            authority: authority.clone(),
            sender,
        });
        response.map(|body| PooledBody { body, give_back })
    }

    /// The most recently used idle connection to `authority` that is still open, and how long
    /// it was idle.
    fn checkout(&self, authority: &Authority) -> Option<(SendRequest<UpstreamBody>, Duration)> {
        loop {
            let Idle { sender, since } = {
                let mut idle = self.inner.idle.lock();
                idle.get_mut(authority)?.pop_back()?
            };
            let idle_for = since.elapsed();
            if sender.is_closed() || idle_for >= self.inner.idle_timeout {
                continue;
            }
            if sender.is_ready() {
                return Some((sender, idle_for));
            }
            // Still busy: its response ended before its request body did (an upstream that
            // answered early). It comes back when done; this request looks further.
            Inner::give_back_when_ready(&self.inner, authority.clone(), sender);
        }
    }

    async fn connect(
        &self,
        authority: &Authority,
    ) -> Result<SendRequest<UpstreamBody>, ClientError> {
        // The connector dials the URI's authority and takes the TLS server name from its host.
        let uri = Uri::builder()
            .scheme("http")
            .authority(authority.clone())
            .path_and_query("/")
            .build()
            .map_err(|e| ClientError::Connect(Box::new(e)))?;
        let io: TokioIo<UpstreamStream> = self
            .inner
            .connector
            .clone()
            .oneshot(uri)
            .await
            .map_err(ClientError::Connect)?;
        let (sender, connection) = http1::Builder::new()
            .handshake(io)
            .await
            .map_err(|e| ClientError::Connect(Box::new(e)))?;
        let address = authority.clone();
        tokio::spawn(async move {
            if let Err(e) = connection.with_upgrades().await {
                tracing::debug!(upstream = %address, "upstream connection ended: {e}");
            }
        });
        self.start_reaper();
        Ok(sender)
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
    /// Returns a connection whose exchange has ended. hyper marks it ready for the next
    /// request once its connection task has seen that end, which may be a moment after the
    /// response body did; until then a task holds it.
    fn give_back(self: &Arc<Self>, authority: Authority, sender: SendRequest<UpstreamBody>) {
        if sender.is_ready() {
            self.keep(authority, sender);
        } else {
            Self::give_back_when_ready(self, authority, sender);
        }
    }

    fn give_back_when_ready(
        this: &Arc<Self>,
        authority: Authority,
        mut sender: SendRequest<UpstreamBody>,
    ) {
        if sender.is_closed() {
            return;
        }
        let pool = Arc::downgrade(this);
        tokio::spawn(async move {
            if sender.ready().await.is_ok()
                && let Some(pool) = pool.upgrade()
            {
                pool.keep(authority, sender);
            }
        });
    }

    fn keep(&self, authority: Authority, sender: SendRequest<UpstreamBody>) {
        if sender.is_closed() {
            return;
        }
        let mut idle = self.idle.lock();
        let list = idle.entry(authority).or_default();
        if list.len() >= MAX_IDLE_PER_AUTHORITY {
            list.pop_front();
        }
        list.push_back(Idle {
            sender,
            since: Instant::now(),
        });
    }

    /// Drops idle connections past the timeout or already closed (hyper closes the socket when
    /// the last sender goes), and authorities left without any.
    fn close_expired(&self) {
        let mut idle = self.idle.lock();
        for list in idle.values_mut() {
            list.retain(|i| !i.sender.is_closed() && i.since.elapsed() < self.idle_timeout);
        }
        idle.retain(|_, list| !list.is_empty());
    }
}

/// A connection on its way back to the pool once the response body ends.
struct GiveBack {
    pool: Weak<Inner>,
    authority: Authority,
    sender: SendRequest<UpstreamBody>,
}

/// An upstream response body from a pooled connection. The connection returns to the pool as
/// soon as the body has ended; a body dropped before its end takes the connection with it.
pub struct PooledBody {
    body: Incoming,
    give_back: Option<GiveBack>,
}

impl PooledBody {
    /// A body from a connection this pool does not manage (HTTP/2).
    pub fn unpooled(body: Incoming) -> Self {
        Self {
            body,
            give_back: None,
        }
    }

    fn release(&mut self) {
        if let Some(GiveBack {
            pool,
            authority,
            sender,
        }) = self.give_back.take()
            && let Some(pool) = pool.upgrade()
        {
            pool.give_back(authority, sender);
        }
    }
}

impl std::fmt::Debug for PooledBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PooledBody")
            .field("pooled", &self.give_back.is_some())
            .finish_non_exhaustive()
    }
}

impl Body for PooledBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.body).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => self.release(),
            Poll::Ready(Some(Ok(_))) if self.body.is_end_stream() => self.release(),
            Poll::Ready(Some(Err(_))) => self.give_back = None,
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl Drop for PooledBody {
    fn drop(&mut self) {
        // A sized body that was read to its end is not polled again: that is an end too.
        if self.body.is_end_stream() {
            self.release();
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::io::{Read, Write};
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
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            assert_eq!(socket.read(&mut byte).unwrap(), 1, "request head cut short");
            head.push(byte[0]);
        }
        String::from_utf8(head).unwrap().to_ascii_lowercase()
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

    /// Lets the connection task and any give-back task run until one connection is idle.
    async fn until_one_is_idle(pool: &Http1Pool) {
        for _ in 0..100 {
            if idle_count(pool) == 1 {
                return;
            }
            tokio::task::yield_now().await;
        }
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
        let response = pool.send(&authority, get()).await.unwrap();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body, "one");
        until_one_is_idle(&pool).await;
        tokio::time::sleep(idle).await;

        // The upstream closes; the agent's connection task does not run between this and the
        // checkout, so the pool still holds the connection as open when the request takes it.
        close_tx.send(()).unwrap();
        closed_rx.recv().unwrap();
        let outcome = match pool.send(&authority, second).await {
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
            pool.send(&authority, bare).await.unwrap().status(),
            StatusCode::NO_CONTENT
        );
        until_one_is_idle(&pool).await;
        assert_eq!(
            pool.send(&authority, get()).await.unwrap().status(),
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
        let error = pool().send(&authority, get()).await.unwrap_err();
        assert!(error.is_connect(), "{error}");
        assert!(error.reason().contains("refused"), "{error}");
    }
}
