use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use std::sync::Arc;

use bytes::Bytes;
use fleetgate_shared::model::{ServiceSpec, UpstreamProtocol};
use http::uri::{Authority, Scheme};
use http::{Request, Response, Uri};
use http_body_util::combinators::BoxBody;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;

use super::connector::UpstreamConnector;
use super::pool::{ClientError, Http1Pool, PooledBody, chain};
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::BoxError;
use crate::headers::Added;

/// The body type sent upstream: the client's streamed body, or an empty one.
pub type UpstreamBody = BoxBody<Bytes, BoxError>;

/// A pooled HTTP client (plain or TLS) towards upstream endpoints: our own HTTP/1.1 pool, or
/// hyper-util's client for HTTP/2 (one multiplexed connection per endpoint).
#[derive(Clone, Debug)]
pub enum HttpClient {
    Http1(Http1Pool),
    Http2(Arc<Client<UpstreamConnector, UpstreamBody>>),
}

impl HttpClient {
    /// Sends `request`, whose URI is in origin form (path and query), to `authority`.
    pub async fn send(
        &self,
        authority: &Authority,
        request: Request<UpstreamBody>,
    ) -> Result<Response<PooledBody>, ClientError> {
        self.dispatch(authority, request, &Added::NONE, false).await
    }

    /// [`send`](Self::send) with the fields the proxy adds beside the request's own, for
    /// forwarding: an HTTP/1.1 response's fields come as [`crate::wire::RawFields`] in its
    /// extensions (its header map empty), to be written as they are or materialized.
    pub async fn send_with(
        &self,
        authority: &Authority,
        request: Request<UpstreamBody>,
        added: &Added<'_>,
    ) -> Result<Response<PooledBody>, ClientError> {
        self.dispatch(authority, request, added, true).await
    }

    async fn dispatch(
        &self,
        authority: &Authority,
        request: Request<UpstreamBody>,
        added: &Added<'_>,
        raw_fields: bool,
    ) -> Result<Response<PooledBody>, ClientError> {
        match self {
            HttpClient::Http1(pool) => pool.send(authority, request, added, raw_fields).await,
            HttpClient::Http2(client) => {
                let (mut parts, body) = request.into_parts();
                // hyper's HTTP/2 encoder reads the map alone. `:authority` stands for Host.
                for (name, value) in added.fields() {
                    if name != http::header::HOST {
                        parts.headers.insert(name.clone(), value.clone());
                    }
                }
                let mut uri = std::mem::take(&mut parts.uri).into_parts();
                uri.scheme = Some(Scheme::HTTP);
                uri.authority = Some(authority.clone());
                parts.uri = Uri::from_parts(uri).map_err(|e| ClientError::Request(Box::new(e)))?;
                match client.request(Request::from_parts(parts, body)).await {
                    Ok(response) => Ok(response.map(PooledBody::unpooled)),
                    // The client's own message is generic ("client error (Connect)"); its
                    // causes say what happened.
                    Err(e) if e.is_connect() => Err(ClientError::Connect(causes(&e).into())),
                    Err(e) => Err(ClientError::Request(causes(&e).into())),
                }
            }
        }
    }
}

/// What caused `error`, innermost last, or its own message when it has no cause.
fn causes(error: &(dyn std::error::Error + 'static)) -> String {
    let causes: Vec<String> = chain(error).skip(1).collect();
    if causes.is_empty() {
        error.to_string()
    } else {
        causes.join(": ")
    }
}

/// TCP connect timeout when a service does not set one.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Idle pooled connections are closed after this long when a service does not say: under
/// the 120 s idle timeout common in upstream servers, so the pool rarely reuses a socket the
/// server is about to close.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(90);

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct ClientKey {
    http2: bool,
    connect_timeout_ms: u64,
    idle_timeout_ms: u64,
    /// The service's TLS settings in canonical JSON; empty for plain TCP.
    tls: String,
}

/// Every upstream client the agent has built, keyed by their settings. Looked up only while
/// compiling a config generation, never on the request path.
#[derive(Default)]
pub struct UpstreamClients {
    clients: Mutex<HashMap<ClientKey, HttpClient>>,
}

impl std::fmt::Debug for UpstreamClients {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let count = self.clients.lock().map(|c| c.len()).unwrap_or(0);
        f.debug_struct("UpstreamClients")
            .field("clients", &count)
            .finish()
    }
}

impl UpstreamClients {
    /// The client for a service's protocol, TLS settings and limits, created on first use.
    /// Fails when the TLS settings cannot be loaded (the message says why).
    pub fn for_service(&self, spec: &ServiceSpec) -> Result<HttpClient, String> {
        let key = ClientKey {
            http2: spec.protocol == UpstreamProtocol::Http2,
            connect_timeout_ms: spec
                .limits
                .connect_timeout
                .map_or(DEFAULT_CONNECT_TIMEOUT.as_millis() as u64, |d| {
                    d.as_millis()
                }),
            idle_timeout_ms: spec
                .limits
                .idle_timeout
                .map_or(DEFAULT_IDLE_TIMEOUT.as_millis() as u64, |d| d.as_millis()),
            tls: spec
                .tls
                .as_ref()
                .map(|t| serde_json::to_string(t).unwrap_or_default())
                .unwrap_or_default(),
        };
        let mut clients = match self.clients.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        if let Some(client) = clients.get(&key) {
            return Ok(client.clone());
        }
        let client = build(&key, spec)?;
        clients.insert(key, client.clone());
        Ok(client)
    }
}

fn build(key: &ClientKey, spec: &ServiceSpec) -> Result<HttpClient, String> {
    let mut http = HttpConnector::new();
    http.set_connect_timeout(Some(Duration::from_millis(key.connect_timeout_ms)));
    http.set_nodelay(true);
    http.enforce_http(true);
    let connector = UpstreamConnector::new(http, spec.tls.as_ref(), spec.protocol)?;
    let idle_timeout = Duration::from_millis(key.idle_timeout_ms);
    if !key.http2 {
        return Ok(HttpClient::Http1(Http1Pool::new(connector, idle_timeout)));
    }
    Ok(HttpClient::Http2(Arc::new(
        Client::builder(TokioExecutor::new())
            .pool_idle_timeout(idle_timeout)
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .http2_only(true)
            .build(connector),
    )))
}
