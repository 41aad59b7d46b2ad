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
//! was not seen by anyone, so this is safe for any method.

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
        let mut reason = error.to_string();
        let mut cause = error.source();
        while let Some(e) = cause {
            let text = e.to_string();
            if !reason.ends_with(&text) {
                reason.push_str(": ");
                reason.push_str(&text);
            }
            cause = e.source();
        }
        reason
    }
}

impl std::fmt::Display for ClientError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.reason())
    }
}

impl std::error::Error for ClientError {}

/// The HTTP/1.1 connections of one client (one set of connector settings), by authority.
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
        loop {
            let (mut sender, reused) = match self.checkout(authority) {
                Some(sender) => (sender, true),
                // Boxed: connecting is rare, and its future (connector, TLS handshake, HTTP
                // handshake) would otherwise make every request's future kilobytes larger.
                None => (Box::pin(self.connect(authority)).await?, false),
            };
            match sender.try_send_request(request).await {
                Ok(response) => {
                    // After a protocol switch the connection belongs to the tunnel.
                    let give_back =
                        (response.status() != StatusCode::SWITCHING_PROTOCOLS).then(|| GiveBack {
                            pool: Arc::downgrade(&self.inner),
                            authority: authority.clone(),
                            sender,
                        });
                    return Ok(response.map(|body| PooledBody { body, give_back }));
                }
                Err(mut error) => match error.take_message() {
                    // Closed before the request was written: nobody saw it, so another
                    // connection may carry it. A fresh connection failing this way is an
                    // upstream that accepts and closes: report it.
                    Some(unsent) if reused => request = unsent,
                    _ => return Err(ClientError::Request(Box::new(error.into_error()))),
                },
            }
        }
    }

    /// The most recently used idle connection to `authority` that is still open.
    fn checkout(&self, authority: &Authority) -> Option<SendRequest<UpstreamBody>> {
        loop {
            let Idle { sender, since } = {
                let mut idle = self.inner.idle.lock();
                idle.get_mut(authority)?.pop_back()?
            };
            if sender.is_closed() || since.elapsed() >= self.inner.idle_timeout {
                continue;
            }
            if sender.is_ready() {
                return Some(sender);
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
