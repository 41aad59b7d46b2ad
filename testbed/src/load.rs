//! A load generator: HTTP/1.1 keep-alive clients at a bounded rate, and WebSocket clients that
//! hold connections open and check every echo.
//!
//! Scenarios use it to turn "the gateway keeps serving while X happens" into numbers: every
//! outcome is counted in exactly one class, and the counts are kept per 100 ms slot so a scenario
//! can ask, while the load runs, for the success ratio over the last ten seconds (after a heal,
//! say) rather than only for a total that averages the outage away.
//!
//! # Counting rules
//!
//! - An HTTP attempt is **sent** when its rate slot comes up, before connecting, so a refused
//!   connection is an attempt that failed. After [`LoadRun::finish`] or [`LoadRun::stop`] every
//!   attempt has exactly one outcome: `sent == succeeded + failed.total()`.
//! - **connect**: no TCP connection (refused, unreachable, or not within `connect_timeout`).
//!   **timeout**: connected, but the response (head and whole body) did not arrive within
//!   `timeout`. **status_5xx** / **status_4xx**: a response with such a status (unless
//!   `is_success` accepts it). **other**: anything else, notably a keep-alive connection that
//!   died under the request (a killed backend), and statuses that `is_success` rejects but
//!   that are neither 4xx nor 5xx.
//! - Latency is the time from sending the request to the end of the response body, for every
//!   request that got a response, whatever its status; connect failures and timeouts have none.
//!   Percentiles come from a log-bucketed histogram (at most 1/32 ≈ 3 % above the true value,
//!   never above the maximum, which is exact).
//! - A keep-alive connection the server closed while idle is replaced silently, as any client's
//!   pool does; only a request that was actually lost is a failure.
//! - A WebSocket connection is **dropped** when it ends without us asking: an error, end of
//!   stream or a close frame from the server. An echo that does not come within `timeout` is an
//!   **echo timeout**; the client then gives the connection up (not counted as dropped) and
//!   opens another, like an application's ping timeout. Each client keeps reconnecting after
//!   `reconnect_delay` until the run ends, so `opened` grows again once the server is back.

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{HeaderMap, Method, Request, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use parking_lot::Mutex;
use serde::Serialize;
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::{Instant, sleep, sleep_until, timeout, timeout_at};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;

/// Resolution of windowed snapshots.
const SLOT: Duration = Duration::from_millis(100);
/// Slots kept for windowed snapshots (ten minutes); totals are kept for the whole run.
const HISTORY_SLOTS: usize = 6000;

/// Why a load plan cannot run.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The HTTP request cannot be built from the settings (bad path, header or host).
    #[error("the HTTP request is invalid: {0}")]
    Request(#[from] http::Error),
    /// The rate is zero, negative or not a number.
    #[error("the rate must be a positive number of requests per second, not {0}")]
    Rate(f64),
    /// A client kind with no connections.
    #[error("{0} load needs at least one connection")]
    NoConnections(&'static str),
    /// A WebSocket interval of zero would flood the server.
    #[error("the WebSocket message interval must be positive")]
    Interval,
}

/// Whether a status counts as success by default: 2xx and 3xx.
pub fn default_success(status: StatusCode) -> bool {
    status.is_success() || status.is_redirection()
}

/// HTTP/1.1 keep-alive load: `connections` clients, each with one connection and one request
/// at a time, sharing a total rate.
#[derive(Clone, Debug)]
pub struct HttpLoad {
    /// Where to connect.
    pub addr: SocketAddr,
    /// The `Host` header; `addr` when `None`.
    pub host: Option<String>,
    pub method: Method,
    /// Path and query of every request.
    pub path: String,
    /// Extra request headers.
    pub headers: HeaderMap,
    pub body: Bytes,
    pub connections: usize,
    /// Total requests per second over all connections; `None` lets each connection send as
    /// fast as responses come back. The bound is strict: slots missed while clients are busy are
    /// not made up later in a burst.
    pub rate: Option<f64>,
    /// From sending a request to the end of its response body.
    pub timeout: Duration,
    pub connect_timeout: Duration,
    /// Pause after a failed connect, so a client facing a dead server does not spin when there
    /// is no rate bound (with one, the other clients still take the slots).
    pub reconnect_delay: Duration,
    /// Which statuses count as success (see [`default_success`]).
    pub is_success: fn(StatusCode) -> bool,
}

impl HttpLoad {
    /// `GET /` on `addr` with 8 connections, 100 requests/s, 2 s timeout, 1 s connect timeout.
    pub fn new(addr: SocketAddr) -> Self {
        Self {
            addr,
            host: None,
            method: Method::GET,
            path: "/".to_owned(),
            headers: HeaderMap::new(),
            body: Bytes::new(),
            connections: 8,
            rate: Some(100.0),
            timeout: Duration::from_secs(2),
            connect_timeout: Duration::from_secs(1),
            reconnect_delay: Duration::from_millis(20),
            is_success: default_success,
        }
    }

    fn request(&self) -> Result<Request<Full<Bytes>>, http::Error> {
        let host = self.host.clone().unwrap_or_else(|| self.addr.to_string());
        let mut builder = Request::builder()
            .method(self.method.clone())
            .uri(&self.path)
            .header(header::HOST, host);
        for (name, value) in &self.headers {
            builder = builder.header(name, value);
        }
        builder.body(Full::new(self.body.clone()))
    }
}

/// WebSocket load: `connections` clients held open, each sending a binary message every
/// `interval` and checking that the same bytes come back.
#[derive(Clone, Debug)]
pub struct WsLoad {
    /// Where to connect.
    pub addr: SocketAddr,
    /// The `Host` header; `addr` when `None`.
    pub host: Option<String>,
    pub path: String,
    pub connections: usize,
    pub interval: Duration,
    /// Bytes per message (at least 16: the client id and sequence number lead each message,
    /// so an echo of another message is caught too).
    pub message_size: usize,
    /// Bound on the handshake (including connecting) and on each echo.
    pub timeout: Duration,
    /// Pause before reconnecting after a failed or lost connection.
    pub reconnect_delay: Duration,
}

impl WsLoad {
    /// `/ws` on `addr` with 10 connections, a 64-byte message every 100 ms, 2 s timeout.
    pub fn new(addr: SocketAddr) -> Self {
        Self {
            addr,
            host: None,
            path: "/ws".to_owned(),
            connections: 10,
            interval: Duration::from_millis(100),
            message_size: 64,
            timeout: Duration::from_secs(2),
            reconnect_delay: Duration::from_millis(100),
        }
    }
}

/// What to run and for how long.
#[derive(Clone, Debug)]
pub struct LoadPlan {
    pub http: Option<HttpLoad>,
    pub websocket: Option<WsLoad>,
    pub duration: Duration,
}

/// Counts over some window (or the whole run), as a scenario asserts on them or writes them out
/// as JSON.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Report {
    /// The time the counts cover: from the start of the oldest 100 ms slot in the window (so
    /// between the window minus 100 ms and the window) or from the start of the run, to now.
    pub window_secs: f64,
    pub http: HttpReport,
    pub websocket: WsReport,
}

/// HTTP counts.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct HttpReport {
    /// Attempts started (see the module documentation).
    pub sent: u64,
    pub succeeded: u64,
    pub failed: Failures,
    /// `succeeded / (succeeded + failed)`; `None` when nothing completed in the window.
    pub success_ratio: Option<f64>,
    pub latency: LatencySummary,
}

/// Failed HTTP attempts by class (see the module documentation).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Failures {
    pub connect: u64,
    pub timeout: u64,
    pub status_5xx: u64,
    pub status_4xx: u64,
    pub other: u64,
}

impl Failures {
    /// All failures.
    pub fn total(&self) -> u64 {
        self.connect + self.timeout + self.status_5xx + self.status_4xx + self.other
    }
}

/// Latency percentiles in milliseconds; `None` when nothing was measured.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct LatencySummary {
    pub count: u64,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub max_ms: Option<f64>,
}

/// WebSocket counts.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct WsReport {
    /// Handshakes completed.
    pub opened: u64,
    /// Connects or handshakes that failed or timed out.
    pub connect_failed: u64,
    /// Connections the server side ended (see the module documentation).
    pub dropped: u64,
    /// Connections open at the moment of the report, whatever the window.
    pub open_now: u64,
    pub messages_sent: u64,
    /// Echoes identical to the message sent.
    pub echoed: u64,
    /// Replies that differ from the message sent, or that nobody asked for.
    pub mismatched: u64,
    pub echo_timeouts: u64,
    pub echo_latency: LatencySummary,
}

/// A running load. Dropping it stops every client at once; [`LoadRun::finish`] and
/// [`LoadRun::stop`] let in-flight requests and echoes complete first, so the counts add up.
#[derive(Debug)]
pub struct LoadRun {
    stats: LoadStats,
    stop: Arc<watch::Sender<bool>>,
    tasks: JoinSet<()>,
    _timer: AbortOnDrop,
    deadline: Instant,
    /// How long ending waits for in-flight work before aborting it.
    drain: Duration,
}

impl LoadRun {
    /// Validates the plan and starts its clients. Must be called inside a Tokio runtime.
    pub fn start(plan: LoadPlan) -> Result<Self, LoadError> {
        if let Some(http) = &plan.http {
            http.request()?;
            if http.connections == 0 {
                return Err(LoadError::NoConnections("HTTP"));
            }
            if let Some(rate) = http.rate
                && !(rate.is_finite() && rate > 0.0)
            {
                return Err(LoadError::Rate(rate));
            }
        }
        if let Some(ws) = &plan.websocket {
            if ws.connections == 0 {
                return Err(LoadError::NoConnections("WebSocket"));
            }
            if ws.interval.is_zero() {
                return Err(LoadError::Interval);
            }
        }
        let stats = LoadStats(Arc::new(Recorder::new()));
        let deadline = Instant::now() + plan.duration;
        let (stop, _) = watch::channel(false);
        let stop = Arc::new(stop);
        let mut tasks = JoinSet::new();
        let mut drain = Duration::from_secs(1);
        // Outside `tasks`: ending early must not wait for this timer.
        let timer = {
            let stop = stop.clone();
            AbortOnDrop(tokio::spawn(async move {
                sleep_until(deadline).await;
                stop.send_replace(true);
            }))
        };
        if let Some(http) = plan.http {
            drain = drain.max(http.timeout + http.connect_timeout + Duration::from_secs(1));
            let pacer = http.rate.map(|rate| Arc::new(Pacer::new(rate)));
            let http = Arc::new(http);
            for _ in 0..http.connections {
                tasks.spawn(http_client(
                    http.clone(),
                    pacer.clone(),
                    stats.0.clone(),
                    stop.subscribe(),
                ));
            }
        }
        if let Some(ws) = plan.websocket {
            drain = drain.max(ws.timeout * 2 + Duration::from_secs(1));
            let ws = Arc::new(ws);
            for id in 0..ws.connections {
                tasks.spawn(ws_client(
                    id as u64,
                    ws.clone(),
                    stats.0.clone(),
                    stop.subscribe(),
                ));
            }
        }
        Ok(Self {
            stats,
            stop,
            tasks,
            _timer: timer,
            deadline,
            drain,
        })
    }

    /// A handle to the live counts, for other tasks of a scenario.
    pub fn stats(&self) -> LoadStats {
        self.stats.clone()
    }

    /// Counts of the last `window`.
    pub fn snapshot(&self, window: Duration) -> Report {
        self.stats.snapshot(window)
    }

    /// Counts since the start.
    pub fn total(&self) -> Report {
        self.stats.total()
    }

    /// Waits until the plan's duration is over and in-flight work has completed; returns the
    /// totals.
    pub async fn finish(self) -> Report {
        sleep_until(self.deadline).await;
        self.end().await
    }

    /// Ends the run now (in-flight work still completes); returns the totals.
    pub async fn stop(self) -> Report {
        self.end().await
    }

    async fn end(mut self) -> Report {
        self.stop.send_replace(true);
        let tasks = &mut self.tasks;
        let drained = timeout(self.drain, async {
            while tasks.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            tracing::warn!("load: clients did not finish within {:?}", self.drain);
            self.tasks.shutdown().await;
        }
        self.stats.total()
    }
}

/// The live counts of a [`LoadRun`]; cheap to clone.
#[derive(Clone, Debug)]
pub struct LoadStats(Arc<Recorder>);

impl LoadStats {
    /// Counts of events in the last `window` (100 ms resolution, at most ten minutes back).
    pub fn snapshot(&self, window: Duration) -> Report {
        self.0.report(Some(window))
    }

    /// Counts since the start.
    pub fn total(&self) -> Report {
        self.0.report(None)
    }
}

/// Hands out request slots `1 / rate` apart to all clients (a GCRA with no burst): a slot is
/// never earlier than now, so time lost while every client was busy is not made up in a burst.
#[derive(Debug)]
struct Pacer {
    interval: Duration,
    next: Mutex<Instant>,
}

impl Pacer {
    fn new(rate: f64) -> Self {
        // At most a day apart, so a tiny rate cannot overflow the clock arithmetic.
        const DAY: Duration = Duration::from_secs(86_400);
        Self {
            interval: Duration::try_from_secs_f64(1.0 / rate)
                .unwrap_or(DAY)
                .min(DAY),
            next: Mutex::new(Instant::now()),
        }
    }

    async fn wait(&self) {
        let at = {
            let mut next = self.next.lock();
            let at = (*next).max(Instant::now());
            *next = at + self.interval;
            at
        };
        sleep_until(at).await;
    }
}

/// Aborts a connection's driver task when the client lets the connection go.
#[derive(Debug)]
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

struct HttpConnection {
    sender: SendRequest<Full<Bytes>>,
    _driver: AbortOnDrop,
}

#[derive(Clone, Copy, Debug)]
enum Failure {
    Connect,
    Timeout,
    Status5xx,
    Status4xx,
    Other,
}

#[derive(Clone, Copy, Debug)]
enum Event {
    HttpSent,
    HttpSucceeded(Duration),
    HttpFailed(Failure, Option<Duration>),
    WsOpened,
    WsConnectFailed,
    WsDropped,
    WsSent,
    WsEchoed(Duration),
    WsMismatched,
    WsEchoTimeout,
}

/// Resolves once the run is told to end (or its controller is gone). Returns nothing, so no
/// borrow of the channel is held across a later `.await`.
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|stopped| *stopped).await;
}

async fn http_client(
    load: Arc<HttpLoad>,
    pacer: Option<Arc<Pacer>>,
    recorder: Arc<Recorder>,
    mut stop: watch::Receiver<bool>,
) {
    let mut connection: Option<HttpConnection> = None;
    loop {
        if let Some(pacer) = &pacer {
            tokio::select! {
                () = pacer.wait() => {}
                () = stopped(&mut stop) => return,
            }
        }
        if *stop.borrow() {
            return;
        }
        recorder.record(Event::HttpSent);
        let outcome = http_attempt(&load, &mut connection).await;
        recorder.record(outcome);
        if matches!(outcome, Event::HttpFailed(Failure::Connect, _)) {
            tokio::select! {
                () = sleep(load.reconnect_delay) => {}
                () = stopped(&mut stop) => return,
            }
        }
    }
}

async fn http_connect(load: &HttpLoad) -> Result<HttpConnection, Failure> {
    let stream = match timeout(load.connect_timeout, TcpStream::connect(load.addr)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(_)) | Err(_) => return Err(Failure::Connect),
    };
    let _ = stream.set_nodelay(true);
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|_| Failure::Other)?;
    let driver = tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(HttpConnection {
        sender,
        _driver: AbortOnDrop(driver),
    })
}

/// One request on the client's connection (made first if there is none or the old one closed).
async fn http_attempt(load: &HttpLoad, slot: &mut Option<HttpConnection>) -> Event {
    if slot.as_ref().is_some_and(|c| c.sender.is_closed()) {
        *slot = None;
    }
    if slot.is_none() {
        match http_connect(load).await {
            Ok(connection) => *slot = Some(connection),
            Err(failure) => return Event::HttpFailed(failure, None),
        }
    }
    let Some(connection) = slot.as_mut() else {
        return Event::HttpFailed(Failure::Other, None);
    };
    let Ok(request) = load.request() else {
        // Checked when the run started; cannot fail now.
        return Event::HttpFailed(Failure::Other, None);
    };
    let sent_at = Instant::now();
    let exchange = async {
        connection.sender.ready().await?;
        let response = connection.sender.send_request(request).await?;
        let status = response.status();
        response.into_body().collect().await?;
        Ok::<_, hyper::Error>(status)
    };
    match timeout(load.timeout, exchange).await {
        Err(_) => {
            // The connection is mid-request; it cannot carry another one.
            *slot = None;
            Event::HttpFailed(Failure::Timeout, None)
        }
        Ok(Err(_)) => {
            *slot = None;
            Event::HttpFailed(Failure::Other, None)
        }
        Ok(Ok(status)) => {
            let latency = sent_at.elapsed();
            if (load.is_success)(status) {
                Event::HttpSucceeded(latency)
            } else if status.is_server_error() {
                Event::HttpFailed(Failure::Status5xx, Some(latency))
            } else if status.is_client_error() {
                Event::HttpFailed(Failure::Status4xx, Some(latency))
            } else {
                Event::HttpFailed(Failure::Other, Some(latency))
            }
        }
    }
}

/// How a WebSocket session ended.
enum SessionEnd {
    Stopped,
    Dropped,
    EchoTimeout,
}

async fn ws_client(
    id: u64,
    load: Arc<WsLoad>,
    recorder: Arc<Recorder>,
    mut stop: watch::Receiver<bool>,
) {
    let mut seq = 0u64;
    let mut rng = fastrand::Rng::new();
    loop {
        if *stop.borrow() {
            return;
        }
        let connected = tokio::select! {
            connected = timeout(load.timeout, ws_connect(&load)) => connected,
            () = stopped(&mut stop) => return,
        };
        match connected {
            Ok(Some(ws)) => {
                recorder.record(Event::WsOpened);
                recorder.ws_open.fetch_add(1, Ordering::Relaxed);
                let end = ws_session(ws, id, &mut seq, &mut rng, &load, &recorder, &mut stop).await;
                recorder.ws_open.fetch_sub(1, Ordering::Relaxed);
                match end {
                    SessionEnd::Stopped => return,
                    SessionEnd::Dropped => recorder.record(Event::WsDropped),
                    SessionEnd::EchoTimeout => recorder.record(Event::WsEchoTimeout),
                }
            }
            Ok(None) | Err(_) => recorder.record(Event::WsConnectFailed),
        }
        tokio::select! {
            () = sleep(load.reconnect_delay) => {}
            () = stopped(&mut stop) => return,
        }
    }
}

async fn ws_connect(load: &WsLoad) -> Option<WebSocketStream<TcpStream>> {
    let stream = TcpStream::connect(load.addr).await.ok()?;
    let _ = stream.set_nodelay(true);
    let host = load.host.clone().unwrap_or_else(|| load.addr.to_string());
    let url = format!("ws://{host}{}", load.path);
    let (ws, _) = tokio_tungstenite::client_async(url, stream).await.ok()?;
    Some(ws)
}

/// Sends a message every interval and waits for each echo before the next one. The wait for an
/// echo is not cut short by the end of the run, so every message sent gets an outcome.
async fn ws_session(
    mut ws: WebSocketStream<TcpStream>,
    id: u64,
    seq: &mut u64,
    rng: &mut fastrand::Rng,
    load: &WsLoad,
    recorder: &Recorder,
    stop: &mut watch::Receiver<bool>,
) -> SessionEnd {
    let mut tick = tokio::time::interval(load.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        // Between messages, still watch the connection: a server going away shows up now, not
        // at the next send.
        tokio::select! {
            _ = tick.tick() => {}
            () = stopped(stop) => {
                let _ = timeout(Duration::from_secs(1), ws.close(None)).await;
                return SessionEnd::Stopped;
            }
            message = ws.next() => match message {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return SessionEnd::Dropped,
                Some(Ok(Message::Binary(_) | Message::Text(_))) => {
                    recorder.record(Event::WsMismatched);
                    continue;
                }
                Some(Ok(_)) => continue,
            },
        }
        let mut payload = Vec::with_capacity(load.message_size.max(16));
        payload.extend_from_slice(&id.to_be_bytes());
        payload.extend_from_slice(&seq.to_be_bytes());
        *seq += 1;
        payload.resize_with(load.message_size.max(16), || rng.u8(..));
        let payload = Bytes::from(payload);
        let sent_at = Instant::now();
        if ws.send(Message::Binary(payload.clone())).await.is_err() {
            return SessionEnd::Dropped;
        }
        recorder.record(Event::WsSent);
        let deadline = sent_at + load.timeout;
        loop {
            match timeout_at(deadline, ws.next()).await {
                Err(_) => return SessionEnd::EchoTimeout,
                Ok(None | Some(Err(_)) | Some(Ok(Message::Close(_)))) => {
                    return SessionEnd::Dropped;
                }
                Ok(Some(Ok(Message::Binary(echo)))) => {
                    if echo == payload {
                        recorder.record(Event::WsEchoed(sent_at.elapsed()));
                    } else {
                        recorder.record(Event::WsMismatched);
                    }
                    break;
                }
                Ok(Some(Ok(Message::Text(_)))) => {
                    recorder.record(Event::WsMismatched);
                    break;
                }
                // Pings (answered by tungstenite), pongs, raw frames.
                Ok(Some(Ok(_))) => {}
            }
        }
    }
}

/// A latency histogram with logarithmic buckets: 32 per power of two of microseconds (exact
/// below 64 µs), so memory does not grow with the request count and percentiles are within
/// about 3 %. Sparse, because a run's latencies fill few buckets.
#[derive(Clone, Debug, Default, PartialEq)]
struct Histogram {
    buckets: BTreeMap<u16, u64>,
    count: u64,
    max_us: u64,
}

const SUB_BITS: u32 = 5;
const SUB_BUCKETS: u64 = 1 << SUB_BITS;

impl Histogram {
    fn bucket(us: u64) -> u16 {
        if us < SUB_BUCKETS {
            return us as u16;
        }
        let exponent = 63 - us.leading_zeros();
        let shift = exponent - SUB_BITS;
        let sub = (us >> shift) - SUB_BUCKETS;
        ((u64::from(shift) + 1) * SUB_BUCKETS + sub) as u16
    }

    /// The largest value that falls in `bucket`.
    fn upper(bucket: u16) -> u64 {
        let bucket = u64::from(bucket);
        if bucket < 2 * SUB_BUCKETS {
            return bucket;
        }
        let shift = bucket / SUB_BUCKETS - 1;
        let sub = bucket % SUB_BUCKETS;
        ((SUB_BUCKETS + sub) << shift) + (1 << shift) - 1
    }

    fn record(&mut self, value: Duration) {
        let us = u64::try_from(value.as_micros()).unwrap_or(u64::MAX);
        *self.buckets.entry(Self::bucket(us)).or_default() += 1;
        self.count += 1;
        self.max_us = self.max_us.max(us);
    }

    fn merge(&mut self, other: &Histogram) {
        for (bucket, n) in &other.buckets {
            *self.buckets.entry(*bucket).or_default() += n;
        }
        self.count += other.count;
        self.max_us = self.max_us.max(other.max_us);
    }

    /// The smallest recorded bucket bound below which a fraction `q` of the values lie, capped
    /// at the exact maximum.
    fn quantile_us(&self, q: f64) -> Option<u64> {
        if self.count == 0 {
            return None;
        }
        let rank = ((q * self.count as f64).ceil() as u64).clamp(1, self.count);
        let mut seen = 0;
        for (bucket, n) in &self.buckets {
            seen += n;
            if seen >= rank {
                return Some(Self::upper(*bucket).min(self.max_us));
            }
        }
        Some(self.max_us)
    }

    fn summary(&self) -> LatencySummary {
        let ms = |us: u64| us as f64 / 1000.0;
        LatencySummary {
            count: self.count,
            p50_ms: self.quantile_us(0.5).map(ms),
            p99_ms: self.quantile_us(0.99).map(ms),
            max_ms: (self.count > 0).then(|| ms(self.max_us)),
        }
    }
}

#[derive(Clone, Debug, Default)]
struct Tally {
    http_sent: u64,
    http_succeeded: u64,
    failures: Failures,
    http_latency: Histogram,
    ws_opened: u64,
    ws_connect_failed: u64,
    ws_dropped: u64,
    ws_sent: u64,
    ws_echoed: u64,
    ws_mismatched: u64,
    ws_echo_timeouts: u64,
    ws_latency: Histogram,
}

impl Tally {
    fn apply(&mut self, event: Event) {
        match event {
            Event::HttpSent => self.http_sent += 1,
            Event::HttpSucceeded(latency) => {
                self.http_succeeded += 1;
                self.http_latency.record(latency);
            }
            Event::HttpFailed(failure, latency) => {
                let counter = match failure {
                    Failure::Connect => &mut self.failures.connect,
                    Failure::Timeout => &mut self.failures.timeout,
                    Failure::Status5xx => &mut self.failures.status_5xx,
                    Failure::Status4xx => &mut self.failures.status_4xx,
                    Failure::Other => &mut self.failures.other,
                };
                *counter += 1;
                if let Some(latency) = latency {
                    self.http_latency.record(latency);
                }
            }
            Event::WsOpened => self.ws_opened += 1,
            Event::WsConnectFailed => self.ws_connect_failed += 1,
            Event::WsDropped => self.ws_dropped += 1,
            Event::WsSent => self.ws_sent += 1,
            Event::WsEchoed(latency) => {
                self.ws_echoed += 1;
                self.ws_latency.record(latency);
            }
            Event::WsMismatched => self.ws_mismatched += 1,
            Event::WsEchoTimeout => self.ws_echo_timeouts += 1,
        }
    }

    fn merge(&mut self, other: &Tally) {
        self.http_sent += other.http_sent;
        self.http_succeeded += other.http_succeeded;
        self.failures.connect += other.failures.connect;
        self.failures.timeout += other.failures.timeout;
        self.failures.status_5xx += other.failures.status_5xx;
        self.failures.status_4xx += other.failures.status_4xx;
        self.failures.other += other.failures.other;
        self.http_latency.merge(&other.http_latency);
        self.ws_opened += other.ws_opened;
        self.ws_connect_failed += other.ws_connect_failed;
        self.ws_dropped += other.ws_dropped;
        self.ws_sent += other.ws_sent;
        self.ws_echoed += other.ws_echoed;
        self.ws_mismatched += other.ws_mismatched;
        self.ws_echo_timeouts += other.ws_echo_timeouts;
        self.ws_latency.merge(&other.ws_latency);
    }
}

/// All counts: one tally for the whole run and one per recent 100 ms slot.
#[derive(Debug)]
struct Recorder {
    start: Instant,
    inner: Mutex<RecorderInner>,
    ws_open: AtomicU64,
}

#[derive(Debug, Default)]
struct RecorderInner {
    total: Tally,
    /// `(slot index since start, tally)`, oldest first, at most [`HISTORY_SLOTS`].
    recent: VecDeque<(u64, Tally)>,
}

impl Recorder {
    fn new() -> Self {
        Self {
            start: Instant::now(),
            inner: Mutex::new(RecorderInner::default()),
            ws_open: AtomicU64::new(0),
        }
    }

    fn slot_now(&self) -> u64 {
        (self.start.elapsed().as_nanos() / SLOT.as_nanos()) as u64
    }

    fn record(&self, event: Event) {
        let mut inner = self.inner.lock();
        // Read the clock under the lock so slots are appended in order.
        let slot = self.slot_now();
        inner.total.apply(event);
        if inner.recent.back().is_none_or(|(s, _)| *s != slot) {
            inner.recent.push_back((slot, Tally::default()));
            if inner.recent.len() > HISTORY_SLOTS {
                inner.recent.pop_front();
            }
        }
        if let Some((_, tally)) = inner.recent.back_mut() {
            tally.apply(event);
        }
    }

    fn report(&self, window: Option<Duration>) -> Report {
        let elapsed = self.start.elapsed();
        let (tally, covered) = {
            let inner = self.inner.lock();
            match window {
                None => (inner.total.clone(), elapsed),
                Some(window) => {
                    let slots = (window.as_nanos().div_ceil(SLOT.as_nanos()) as u64)
                        .clamp(1, HISTORY_SLOTS as u64);
                    let now_slot = (elapsed.as_nanos() / SLOT.as_nanos()) as u64;
                    let first = (now_slot + 1).saturating_sub(slots);
                    let mut tally = Tally::default();
                    for (_, slot) in inner.recent.iter().rev().take_while(|(s, _)| *s >= first) {
                        tally.merge(slot);
                    }
                    // From the start of the oldest slot included, so rates computed from the
                    // counts are right even though the newest slot is still filling.
                    let from = SLOT.saturating_mul(u32::try_from(first).unwrap_or(u32::MAX));
                    (tally, elapsed.saturating_sub(from))
                }
            }
        };
        let completed = tally.http_succeeded + tally.failures.total();
        Report {
            window_secs: covered.as_secs_f64(),
            http: HttpReport {
                sent: tally.http_sent,
                succeeded: tally.http_succeeded,
                success_ratio: (completed > 0)
                    .then(|| tally.http_succeeded as f64 / completed as f64),
                failed: tally.failures.clone(),
                latency: tally.http_latency.summary(),
            },
            websocket: WsReport {
                opened: tally.ws_opened,
                connect_failed: tally.ws_connect_failed,
                dropped: tally.ws_dropped,
                open_now: self.ws_open.load(Ordering::Relaxed),
                messages_sent: tally.ws_sent,
                echoed: tally.ws_echoed,
                mismatched: tally.ws_mismatched,
                echo_timeouts: tally.ws_echo_timeouts,
                echo_latency: tally.ws_latency.summary(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_is_exact_for_small_values_and_within_a_thirty_second_above() {
        for us in 0..64u64 {
            assert_eq!(Histogram::upper(Histogram::bucket(us)), us);
        }
        let mut us = 64u64;
        while us < 10_000_000_000 {
            let upper = Histogram::upper(Histogram::bucket(us));
            assert!(upper >= us, "{us} µs lands in a bucket ending at {upper}");
            assert!(
                (upper - us) as f64 <= us as f64 / 32.0,
                "{us} µs lands in a bucket ending at {upper}"
            );
            // The next value after a bucket's end starts the next bucket.
            assert_eq!(Histogram::bucket(upper + 1), Histogram::bucket(upper) + 1);
            us = us * 13 / 11 + 1;
        }
        assert!(Histogram::bucket(u64::MAX) > Histogram::bucket(u64::MAX / 2));
    }

    #[test]
    fn quantiles_follow_the_recorded_distribution() {
        let mut h = Histogram::default();
        assert_eq!(h.summary().p50_ms, None);
        for ms in 1..=100u64 {
            h.record(Duration::from_millis(ms));
        }
        let p50 = h.quantile_us(0.5).unwrap();
        let p99 = h.quantile_us(0.99).unwrap();
        assert!((50_000..=50_000 + 50_000 / 32).contains(&p50), "p50 {p50}");
        assert!((99_000..=100_000).contains(&p99), "p99 {p99}");
        assert_eq!(h.quantile_us(1.0), Some(100_000));
        assert_eq!(h.summary().max_ms, Some(100.0));
        assert_eq!(h.summary().count, 100);
    }

    #[test]
    fn merged_histograms_equal_one_fed_everything() {
        let mut a = Histogram::default();
        let mut b = Histogram::default();
        let mut both = Histogram::default();
        for i in 0..500u64 {
            let d = Duration::from_micros(i * i);
            let part = if i % 3 == 0 { &mut a } else { &mut b };
            part.record(d);
            both.record(d);
        }
        a.merge(&b);
        assert_eq!(a, both);
    }

    #[test]
    fn windows_count_only_recent_slots() {
        let recorder = Recorder::new();
        recorder.record(Event::HttpSent);
        recorder.record(Event::HttpFailed(Failure::Connect, None));
        std::thread::sleep(Duration::from_millis(350));
        recorder.record(Event::HttpSent);
        recorder.record(Event::HttpSucceeded(Duration::from_millis(3)));
        let recent = recorder.report(Some(Duration::from_millis(200)));
        assert_eq!(recent.http.sent, 1);
        assert_eq!(recent.http.succeeded, 1);
        assert_eq!(recent.http.failed.total(), 0);
        assert_eq!(recent.http.success_ratio, Some(1.0));
        assert!(
            recent.window_secs > 0.1 && recent.window_secs <= 0.2,
            "{}",
            recent.window_secs
        );
        let total = recorder.report(None);
        assert_eq!(total.http.sent, 2);
        assert_eq!(total.http.failed.connect, 1);
        assert_eq!(total.http.success_ratio, Some(0.5));
        assert_eq!(total.http.latency.count, 1);
    }

    #[tokio::test]
    async fn the_pacer_spaces_slots_and_does_not_catch_up() {
        let pacer = Pacer::new(100.0);
        let start = Instant::now();
        for _ in 0..20 {
            pacer.wait().await;
        }
        // 20 slots 10 ms apart, the first at once.
        assert!(start.elapsed() >= Duration::from_millis(190));
        tokio::time::sleep(Duration::from_millis(200)).await;
        let idle_end = Instant::now();
        for _ in 0..5 {
            pacer.wait().await;
        }
        assert!(
            idle_end.elapsed() >= Duration::from_millis(40),
            "missed slots were made up in a burst"
        );
    }

    #[test]
    fn invalid_plans_are_refused() {
        let addr: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let plan = |http: HttpLoad| LoadPlan {
            http: Some(http),
            websocket: None,
            duration: Duration::from_secs(1),
        };
        let mut bad_rate = HttpLoad::new(addr);
        bad_rate.rate = Some(0.0);
        assert!(matches!(
            LoadRun::start(plan(bad_rate)),
            Err(LoadError::Rate(_))
        ));
        let mut bad_path = HttpLoad::new(addr);
        bad_path.path = "not a path".to_owned();
        assert!(matches!(
            LoadRun::start(plan(bad_path)),
            Err(LoadError::Request(_))
        ));
        let mut none = HttpLoad::new(addr);
        none.connections = 0;
        assert!(matches!(
            LoadRun::start(plan(none)),
            Err(LoadError::NoConnections(_))
        ));
        let mut ws = WsLoad::new(addr);
        ws.interval = Duration::ZERO;
        let plan = LoadPlan {
            http: None,
            websocket: Some(ws),
            duration: Duration::from_secs(1),
        };
        assert!(matches!(LoadRun::start(plan), Err(LoadError::Interval)));
    }
}
