//! Test peers and harnesses shared by the agent's integration tests.
//!
//! Everything here speaks real protocols over real sockets on ephemeral ports: an HTTP/1.1
//! backend (hyper) that describes each request it gets, a WebSocket echo backend (tungstenite),
//! the gateway itself running in-process, plain HTTP/1.1 and h2c clients, and the agent binary
//! as a child process. Nothing here sleeps where it can wait for a signal instead.

// Each test file compiles this module on its own and uses only part of it.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use fleetgate_agent::Gateway;
use fleetgate_agent::config::AccessLog;
use fleetgate_agent::generation::ConfigSource;
use fleetgate_agent::server::ServerSettings;
use fleetgate_agent::upstream::Endpoint;
use fleetgate_shared::bundle::Format;
use fleetgate_shared::{Snapshot, parse_bundle};
use futures_util::{SinkExt, StreamExt};
use http::{HeaderMap, Method, Request, Response, StatusCode, header};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Frame, Incoming};
use hyper::client::conn::http2;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;

/// Bound on any one exchange: far above what a loaded machine needs, so that a hang fails the
/// test with a message instead of stalling the suite.
pub const STEP_TIMEOUT: Duration = Duration::from_secs(10);

/// Installs a test-captured log subscriber once per test binary; `RUST_LOG` overrides `info`.
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .with_target(false)
        .try_init();
}

/// Awaits `future` for at most [`STEP_TIMEOUT`], failing the test with `what` otherwise.
pub async fn within<T>(what: &str, future: impl Future<Output = T>) -> T {
    match tokio::time::timeout(STEP_TIMEOUT, future).await {
        Ok(value) => value,
        Err(_) => panic!("timed out after {STEP_TIMEOUT:?}: {what}"),
    }
}

/// Polls `condition` every 10 ms until it holds, failing the test with `what` after
/// [`STEP_TIMEOUT`]. Only for state that offers nothing to await, such as health-check results.
pub async fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + STEP_TIMEOUT;
    while !condition() {
        assert!(
            Instant::now() < deadline,
            "timed out after {STEP_TIMEOUT:?}: {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// An address nothing listens on: a port the kernel handed out and that was released at once.
pub fn dead_address() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap()
}

// ---------------------------------------------------------------------------------------------
// HTTP backend
// ---------------------------------------------------------------------------------------------

type BackendBody = BoxBody<Bytes, Infallible>;

struct BackendState {
    name: String,
    requests: watch::Sender<usize>,
    forced_status: AtomicU16,
    /// The last request's headers, as its answer describes them.
    last_headers: std::sync::Mutex<BTreeMap<String, String>>,
}

/// An HTTP/1.1 backend answering every request with JSON that describes it:
/// `{"backend", "method", "path" (with query), "version", "headers", "body"}`, plus an
/// `x-backend: NAME` response header.
///
/// Magic paths: `/status/NNN` answers NNN; `/slow/MS` waits MS milliseconds first; `/sse` is an
/// endless `text/event-stream` of `data: tick N` events every 50 ms.
///
/// Dropping or [`Backend::stop`]ping it closes the listener and every open connection, like a
/// crashed process.
pub struct Backend {
    pub name: String,
    pub addr: SocketAddr,
    state: Arc<BackendState>,
    task: Option<JoinHandle<()>>,
}

impl Backend {
    pub async fn start(name: &str) -> Backend {
        Self::start_at(name, "127.0.0.1:0".parse().unwrap()).await
    }

    /// Starts on a given address, such as the one of a backend stopped earlier.
    pub async fn start_at(name: &str, addr: SocketAddr) -> Backend {
        let listener = TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(BackendState {
            name: name.to_owned(),
            requests: watch::channel(0).0,
            forced_status: AtomicU16::new(0),
            last_headers: Default::default(),
        });
        let task = {
            let state = state.clone();
            tokio::spawn(async move {
                // Owned by the accept loop: aborting the loop drops the set, which aborts every
                // connection, so a stopped backend leaves no socket open.
                let mut connections = JoinSet::new();
                loop {
                    let Ok((stream, _)) = listener.accept().await else {
                        continue;
                    };
                    let _ = stream.set_nodelay(true);
                    let state = state.clone();
                    connections.spawn(async move {
                        let service = hyper::service::service_fn(move |req| {
                            let state = state.clone();
                            async move { Ok::<_, Infallible>(state.answer(req).await) }
                        });
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                    });
                    while connections.try_join_next().is_some() {}
                }
            })
        };
        Backend {
            name: name.to_owned(),
            addr,
            state,
            task: Some(task),
        }
    }

    /// Requests received so far.
    pub fn requests(&self) -> usize {
        *self.state.requests.borrow()
    }

    /// Waits until at least `n` requests have been received.
    pub async fn wait_for_requests(&self, n: usize) {
        let mut rx = self.state.requests.subscribe();
        within(&format!("{} to receive {n} request(s)", self.name), async {
            let _ = rx.wait_for(|count| *count >= n).await;
        })
        .await;
    }

    /// A header of the last request received (values of a repeated one joined by `, `): what
    /// a backend whose answers nobody reads (a mirror) was sent.
    pub fn last_request_header(&self, name: &str) -> Option<String> {
        self.state.last_headers.lock().unwrap().get(name).cloned()
    }

    /// Answers every request with `status` (whatever the path) until called with `None`.
    pub fn force_status(&self, status: Option<u16>) {
        self.state
            .forced_status
            .store(status.unwrap_or(0), Ordering::Relaxed);
    }

    /// Closes the listener and every connection, and waits until they are closed.
    pub async fn stop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = task.await;
        }
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

impl BackendState {
    async fn answer(&self, req: Request<Incoming>) -> Response<BackendBody> {
        let method = req.method().to_string();
        let version = format!("{:?}", req.version());
        let target = req
            .uri()
            .path_and_query()
            .map_or("/", |pq| pq.as_str())
            .to_owned();
        let mut headers = BTreeMap::<String, String>::new();
        for (name, value) in req.headers() {
            let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
            headers
                .entry(name.as_str().to_owned())
                .and_modify(|v| {
                    v.push_str(", ");
                    v.push_str(&value);
                })
                .or_insert(value);
        }
        // Recorded before the count moves, so a test that waits for the count reads them.
        *self.last_headers.lock().unwrap() = headers.clone();
        self.requests.send_modify(|n| *n += 1);
        let body = req
            .into_body()
            .collect()
            .await
            .map(|c| c.to_bytes())
            .unwrap_or_default();
        let path = target.split('?').next().unwrap_or_default();
        if path == "/sse" {
            return Response::builder()
                .header(header::CONTENT_TYPE, "text/event-stream")
                .header("x-backend", &self.name)
                .body(Ticks::new().boxed())
                .unwrap();
        }
        let mut status = StatusCode::OK;
        if let Some(code) = path.strip_prefix("/status/") {
            status = code
                .parse()
                .ok()
                .and_then(|c| StatusCode::from_u16(c).ok())
                .unwrap_or(StatusCode::BAD_REQUEST);
        }
        if let Some(ms) = path.strip_prefix("/slow/") {
            tokio::time::sleep(Duration::from_millis(ms.parse().unwrap_or(0))).await;
        }
        let forced = self.forced_status.load(Ordering::Relaxed);
        if forced != 0 {
            status = StatusCode::from_u16(forced).unwrap();
        }
        let json = serde_json::json!({
            "backend": self.name,
            "method": method,
            "path": target,
            "version": version,
            "headers": headers,
            "body": String::from_utf8_lossy(&body),
        });
        Response::builder()
            .status(status)
            .header(header::CONTENT_TYPE, "application/json")
            .header("x-backend", &self.name)
            .body(Full::new(Bytes::from(json.to_string())).boxed())
            .unwrap()
    }
}

/// The endless SSE body: `data: tick N\n\n` every 50 ms, N from 1.
struct Ticks {
    interval: tokio::time::Interval,
    sent: u64,
}

impl Ticks {
    fn new() -> Self {
        Self {
            interval: tokio::time::interval(Duration::from_millis(50)),
            sent: 0,
        }
    }
}

impl Body for Ticks {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = &mut *self;
        match this.interval.poll_tick(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(_) => {
                this.sent += 1;
                let event = format!("data: tick {}\n\n", this.sent);
                Poll::Ready(Some(Ok(Frame::data(Bytes::from(event)))))
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// WebSocket backend
// ---------------------------------------------------------------------------------------------

/// A WebSocket server echoing every text or binary message prefixed with `NAME: `.
pub struct WsBackend {
    pub name: String,
    pub addr: SocketAddr,
    task: JoinHandle<()>,
}

impl WsBackend {
    pub async fn start(name: &str) -> WsBackend {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let prefix = format!("{name}: ");
        let task = tokio::spawn(async move {
            let mut connections = JoinSet::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                // Echoes are small writes in quick succession: without this, Nagle's algorithm
                // and the peer's delayed ACK add 40 ms stalls.
                let _ = stream.set_nodelay(true);
                let prefix = prefix.clone();
                connections.spawn(async move {
                    let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else {
                        return;
                    };
                    // Close and ping frames are answered by tungstenite on the next read.
                    while let Some(Ok(message)) = ws.next().await {
                        let reply = match message {
                            Message::Text(text) => Message::text(format!("{prefix}{text}")),
                            Message::Binary(data) => {
                                let mut out = prefix.clone().into_bytes();
                                out.extend_from_slice(&data);
                                Message::binary(out)
                            }
                            _ => continue,
                        };
                        if ws.send(reply).await.is_err() {
                            return;
                        }
                    }
                });
                while connections.try_join_next().is_some() {}
            }
        });
        WsBackend {
            name: name.to_owned(),
            addr,
            task,
        }
    }
}

impl Drop for WsBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Opens a WebSocket through `addr` (the gateway) to `path`, with `host` as the Host header.
pub async fn ws_connect(
    addr: SocketAddr,
    host: &str,
    path: &str,
) -> Result<WebSocketStream<TcpStream>, tokio_tungstenite::tungstenite::Error> {
    let stream = TcpStream::connect(addr).await.unwrap();
    stream.set_nodelay(true).unwrap();
    let url = format!("ws://{host}{path}");
    within(
        "the WebSocket handshake",
        tokio_tungstenite::client_async(url, stream),
    )
    .await
    .map(|(ws, _)| ws)
}

// ---------------------------------------------------------------------------------------------
// The gateway, in-process
// ---------------------------------------------------------------------------------------------

/// A config with one service, `echo`, on `backend`, and one route sending everything to it.
pub fn everything_to(backend: &Backend) -> String {
    format!(
        "kind: Service\nname: echo\nspec: {{endpoints: [{{address: \"{}\"}}]}}\n---\n\
         kind: Route\nname: all\nspec:\n  forward: {{backends: [{{service: echo}}]}}\n",
        backend.addr
    )
}

/// How [`start_gateway_with`] sets up the listeners.
#[derive(Clone, Copy, Debug)]
pub struct GatewayOptions {
    /// Also start a TLS listener.
    pub tls: bool,
    pub header_timeout: Duration,
}

impl Default for GatewayOptions {
    fn default() -> Self {
        Self {
            tls: false,
            header_timeout: fleetgate_agent::config::DEFAULT_HEADER_TIMEOUT,
        }
    }
}

/// A gateway serving on ephemeral ports in this process: plain HTTP, optionally TLS, and admin.
/// Its listeners stop when it is dropped.
pub struct TestGateway {
    pub gateway: Arc<Gateway>,
    pub http: SocketAddr,
    pub https: Option<SocketAddr>,
    pub admin: SocketAddr,
    next_revision: AtomicU64,
    shutdown: watch::Sender<bool>,
}

pub async fn start_gateway(yaml: &str) -> TestGateway {
    start_gateway_with(yaml, GatewayOptions::default()).await
}

pub async fn start_gateway_with(yaml: &str, options: GatewayOptions) -> TestGateway {
    let plain = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let tls = match options.tls {
        true => Some(TcpListener::bind("127.0.0.1:0").await.unwrap()),
        false => None,
    };
    let (shutdown, stopped) = watch::channel(false);
    let gateway = TestGateway {
        gateway: Gateway::new(AccessLog::Off, None),
        http: plain.local_addr().unwrap(),
        https: tls.as_ref().map(|l| l.local_addr().unwrap()),
        admin: admin.local_addr().unwrap(),
        next_revision: AtomicU64::new(1),
        shutdown,
    };
    if let Err(errors) = gateway.apply(yaml) {
        panic!("the initial config was rejected: {errors:#?}");
    }
    let settings = ServerSettings {
        header_timeout: options.header_timeout,
        max_header_bytes: fleetgate_agent::config::DEFAULT_MAX_HEADER_BYTES,
        drain_timeout: Duration::from_secs(1),
    };
    let serve = |listener, tls| {
        fleetgate_agent::server::serve(
            listener,
            gateway.gateway.clone(),
            settings,
            tls,
            stopped.clone(),
        )
    };
    tokio::spawn(serve(plain, false));
    if let Some(listener) = tls {
        tokio::spawn(serve(listener, true));
    }
    tokio::spawn(fleetgate_agent::admin::serve(
        admin,
        gateway.gateway.clone(),
        stopped.clone(),
    ));
    gateway
}

impl TestGateway {
    /// Starts the listeners' graceful shutdown, as SIGTERM does: they stop accepting and drain.
    pub fn begin_shutdown(&self) {
        let _ = self.shutdown.send(true);
    }

    /// Parses `yaml` and applies it as the next revision, the way the file source does.
    /// Returns the revision now serving, or every problem (parse or validation) as text.
    pub fn apply(&self, yaml: &str) -> Result<u64, Vec<String>> {
        let revision = self.next_revision.fetch_add(1, Ordering::SeqCst);
        let resources = parse_bundle(yaml, Format::Yaml, "")
            .map_err(|errors| errors.iter().map(ToString::to_string).collect::<Vec<_>>())?;
        let snapshot = Snapshot::new(revision, resources).map_err(|e| vec![e.to_string()])?;
        self.gateway
            .apply(&snapshot, ConfigSource::File)
            .map(|generation| generation.revision)
            .map_err(|errors| errors.iter().map(ToString::to_string).collect())
    }

    /// The live state of one endpoint of a service in the serving generation.
    pub fn endpoint(&self, service: &str, addr: SocketAddr) -> Arc<Endpoint> {
        let generation = self.gateway.current();
        let service = generation
            .services
            .get(service)
            .unwrap_or_else(|| panic!("no service {service} in the running config"));
        let address = addr.to_string();
        service
            .endpoints
            .iter()
            .find(|e| e.address == address)
            .unwrap_or_else(|| panic!("no endpoint {address}"))
            .clone()
    }

    /// Whether an endpoint is in rotation: healthy and not ejected.
    pub fn in_rotation(&self, service: &str, addr: SocketAddr) -> bool {
        let endpoint = self.endpoint(service, addr);
        endpoint.is_healthy() && !endpoint.is_ejected(fleetgate_agent::upstream::now_ms())
    }

    /// A client for the plain HTTP listener.
    pub fn client(&self) -> HttpClient {
        HttpClient::new(self.http)
    }

    /// `GET` on the admin listener.
    pub async fn admin(&self, path: &str) -> Reply {
        HttpClient::new(self.admin).get("admin", path).await
    }
}

impl Drop for TestGateway {
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
    }
}

// ---------------------------------------------------------------------------------------------
// Clients
// ---------------------------------------------------------------------------------------------

/// A response, read to its end.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub version: http::Version,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    async fn read(response: Response<Incoming>) -> Reply {
        let (parts, body) = response.into_parts();
        let body = within("the response body", body.collect())
            .await
            .unwrap()
            .to_bytes();
        Reply {
            status: parts.status,
            version: parts.version,
            headers: parts.headers,
            body,
        }
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {}", self.text()))
    }

    /// Which test backend answered (`backend` in its JSON).
    pub fn backend(&self) -> String {
        match self.json().get("backend").and_then(|b| b.as_str()) {
            Some(name) => name.to_owned(),
            None => panic!("not a backend answer: {} {}", self.status, self.text()),
        }
    }

    /// A request header as the backend received it (lower-case name).
    pub fn seen_header(&self, name: &str) -> Option<String> {
        self.json()["headers"]
            .get(name)
            .and_then(|v| v.as_str())
            .map(str::to_owned)
    }

    /// A response header as the client received it.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// A pooled HTTP/1.1 client aimed at one address; the Host header is given per request.
#[derive(Clone)]
pub struct HttpClient {
    client: Client<HttpConnector, Full<Bytes>>,
    addr: SocketAddr,
}

impl HttpClient {
    pub fn new(addr: SocketAddr) -> Self {
        Self {
            client: Client::builder(TokioExecutor::new()).build_http(),
            addr,
        }
    }

    pub async fn get(&self, host: &str, path: &str) -> Reply {
        self.send(Method::GET, host, path, &[], "").await
    }

    pub async fn send(
        &self,
        method: Method,
        host: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> Reply {
        match self.try_send(method, host, path, headers, body).await {
            Ok(reply) => reply,
            Err(e) => panic!("request to {host}{path} failed: {e}"),
        }
    }

    /// Like [`HttpClient::send`], but a transport error is returned instead of failing the test.
    pub async fn try_send(
        &self,
        method: Method,
        host: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> Result<Reply, String> {
        let mut request = Request::builder()
            .method(method)
            .uri(format!("http://{}{path}", self.addr))
            .header(header::HOST, host);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let request = request
            .body(Full::new(Bytes::from(body.to_owned())))
            .unwrap();
        let response = within(
            &format!("a response to {host}{path}"),
            self.client.request(request),
        )
        .await
        .map_err(|e| format!("{e:?}"))?;
        Ok(Reply::read(response).await)
    }
}

/// A response read off a raw socket.
#[derive(Debug)]
pub struct Raw {
    pub status: u16,
    pub body: String,
}

impl Raw {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {} {}", self.status, self.body))
    }
}

/// Sends `head` (request line and headers, each ending in CRLF) and `body` exactly as written,
/// with `Content-Length` and `Connection: close`, and reads the whole response.
pub async fn raw(addr: SocketAddr, head: &str, body: &str) -> Raw {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let length = if body.is_empty() {
        String::new()
    } else {
        format!("Content-Length: {}\r\n", body.len())
    };
    let request = format!("{head}{length}Connection: close\r\n\r\n{body}");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut bytes = Vec::new();
    within("the raw response", stream.read_to_end(&mut bytes))
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&bytes).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {text:?}"));
    let chunked = head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked");
    Raw {
        status,
        body: if chunked {
            dechunk(body)
        } else {
            body.to_owned()
        },
    }
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let size = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if size == 0 {
            break;
        }
        out.push_str(&rest[..size]);
        body = &rest[size + 2..];
    }
    out
}

/// An HTTP/2 connection with prior knowledge (h2c) to `addr`.
pub async fn h2c_connect(addr: SocketAddr) -> http2::SendRequest<Full<Bytes>> {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (sender, connection) = within(
        "the h2c handshake",
        http2::handshake(TokioExecutor::new(), TokioIo::new(stream)),
    )
    .await
    .unwrap();
    tokio::spawn(connection);
    sender
}

/// `GET http://{authority}{path}` on an HTTP/2 connection.
pub async fn h2_get(
    sender: &mut http2::SendRequest<Full<Bytes>>,
    authority: &str,
    path: &str,
) -> Reply {
    let request = Request::get(format!("http://{authority}{path}"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    within("HTTP/2 connection readiness", sender.ready())
        .await
        .unwrap();
    let response = within(
        &format!("an HTTP/2 response to {authority}{path}"),
        sender.send_request(request),
    )
    .await
    .unwrap();
    Reply::read(response).await
}

// ---------------------------------------------------------------------------------------------
// The agent binary as a child process
// ---------------------------------------------------------------------------------------------

/// A running `fleetgate-agent` process on ephemeral ports. Killed when dropped; its stderr is
/// collected (and printed when the test fails).
pub struct AgentProcess {
    child: Child,
    pub http: SocketAddr,
    pub admin: SocketAddr,
    logs: Arc<Mutex<String>>,
}

/// How a started process ended up.
enum Start {
    Ready,
    PortTaken,
}

impl AgentProcess {
    /// Starts the agent on `config` with `extra` flags and waits until `/readyz` answers 200.
    /// Ports come from binding port 0 and releasing it, so another process can take one in
    /// between; then the agent exits saying so, and it is started again on new ports.
    pub async fn start(config: &Path, extra: &[&str]) -> AgentProcess {
        for _ in 0..5 {
            let (http, admin) = (dead_address(), dead_address());
            let mut child = Command::new(env!("CARGO_BIN_EXE_fleetgate-agent"))
                .arg("--config")
                .arg(config)
                .args(["--listen", &http.to_string()])
                .args(["--admin", &admin.to_string()])
                .args(["--access-log", "off", "--watch-interval-ms", "50"])
                .args(["--drain-timeout", "5"])
                .args(extra)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            let logs = Arc::new(Mutex::new(String::new()));
            let stderr = child.stderr.take().unwrap();
            {
                let logs = logs.clone();
                std::thread::spawn(move || {
                    use std::io::BufRead;
                    for line in std::io::BufReader::new(stderr).lines() {
                        let Ok(line) = line else { return };
                        let mut logs = logs.lock().unwrap();
                        logs.push_str(&line);
                        logs.push('\n');
                    }
                });
            }
            let mut agent = AgentProcess {
                child,
                http,
                admin,
                logs,
            };
            match agent.wait_ready().await {
                Start::Ready => return agent,
                Start::PortTaken => continue,
            }
        }
        panic!("the agent could not get free ports in 5 attempts");
    }

    async fn wait_ready(&mut self) -> Start {
        let admin = HttpClient::new(self.admin);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                // The stderr reader may still be copying the last lines.
                tokio::time::sleep(Duration::from_millis(100)).await;
                let logs = self.logs();
                if logs.contains("cannot listen") {
                    return Start::PortTaken;
                }
                panic!("the agent exited with {status} before it was ready:\n{logs}");
            }
            if let Ok(reply) = admin
                .try_send(Method::GET, "admin", "/readyz", &[], "")
                .await
                && reply.status == StatusCode::OK
            {
                return Start::Ready;
            }
            assert!(
                Instant::now() < deadline,
                "the agent was not ready within 20 s:\n{}",
                self.logs()
            );
            // A process has no readiness signal to await but its admin port: poll it.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// What the agent wrote to stderr so far.
    pub fn logs(&self) -> String {
        self.logs.lock().unwrap().clone()
    }

    /// Waits until stderr contains `needle` `count` times or more.
    pub async fn wait_for_log(&self, needle: &str, count: usize) {
        let deadline = Instant::now() + STEP_TIMEOUT;
        while self.logs().matches(needle).count() < count {
            assert!(
                Instant::now() < deadline,
                "the agent never logged {needle:?} {count} time(s):\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn client(&self) -> HttpClient {
        HttpClient::new(self.http)
    }

    pub async fn admin(&self, path: &str) -> Reply {
        HttpClient::new(self.admin).get("admin", path).await
    }

    /// Sends SIGTERM, as an orchestrator stopping the agent would.
    pub fn sigterm(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill -TERM failed: {status}");
    }

    /// Waits for the process to exit.
    pub async fn wait_exit(&mut self) -> ExitStatus {
        let deadline = Instant::now() + STEP_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "the agent did not exit within {STEP_TIMEOUT:?}:\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- agent stderr ---\n{}", self.logs());
        }
    }
}
