//! Logs, metrics and the access log.
//!
//! Operational logs go to stderr through `tracing`. Access-log lines are JSON on stdout,
//! written by a dedicated thread fed through a bounded channel: a slow stdout consumer costs
//! dropped log lines (counted in metrics), never a stalled request.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::mpsc::{SyncSender, TrySendError};

use std::sync::Arc;

use serde::Serialize;

use crate::stats::{RouteStats, Stats};
use crate::upstream::Endpoint;

use crate::config::{AccessLog, LogFormat};

/// Access-log lines buffered between requests and the writer thread.
const ACCESS_LOG_QUEUE: usize = 16 * 1024;

/// Installs the tracing subscriber for operational logs (stderr). `RUST_LOG` overrides the
/// default `info` level.
pub fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

/// One request, as the access log and the request metrics see it. Built for every request,
/// so it holds shared handles (`Arc`s) rather than copies; the text fields that only the access
/// log needs are filled only when it is on.
#[derive(Debug)]
pub struct AccessRecord {
    pub ts_ms: u128,
    pub request_id: http::HeaderValue,
    pub client: SocketAddr,
    pub method: http::Method,
    /// Host and path: only when the access log is on.
    pub target: Option<(String, String)>,
    pub protocol: &'static str,
    /// The matched route's counters (which carry its name).
    pub route: Option<Arc<RouteStats>>,
    /// The authenticated consumer, when an auth policy identified one.
    pub consumer: Option<Arc<fleetgate_agent_policy::ConsumerEntry>>,
    /// The policy that answered the request itself (denied, limited, challenged).
    pub policy: Option<String>,
    pub upstream: Option<Arc<Endpoint>>,
    pub attempts: u32,
    pub status: u16,
    /// Until the response headers were ready.
    pub headers_ms: f64,
    /// Until the body ended (for WebSocket: until the 101 response was sent).
    pub total_ms: f64,
    pub bytes_out: u64,
    pub error: Option<&'static str>,
    pub stream_error: Option<String>,
}

/// The JSON line written for an [`AccessRecord`].
#[derive(Serialize)]
struct AccessLine<'a> {
    ts_ms: u128,
    request_id: &'a str,
    client: SocketAddr,
    method: &'a str,
    host: &'a str,
    path: &'a str,
    protocol: &'static str,
    route: Option<&'a str>,
    consumer: Option<&'a str>,
    policy: Option<&'a str>,
    upstream: Option<&'a str>,
    attempts: u32,
    status: u16,
    headers_ms: f64,
    total_ms: f64,
    bytes_out: u64,
    error: Option<&'static str>,
    stream_error: Option<&'a str>,
}

impl AccessRecord {
    /// Starts the record of a request. `detailed` keeps host and path for the access log.
    pub fn new(
        request_id: &http::HeaderValue,
        client: SocketAddr,
        method: &http::Method,
        host: &str,
        uri: &http::Uri,
        version: http::Version,
        detailed: bool,
    ) -> Self {
        Self {
            // Only the access log shows the wall-clock time (one clock read fewer per request
            // without it).
            ts_ms: if detailed {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis())
            } else {
                0
            },
            request_id: request_id.clone(),
            client,
            method: method.clone(),
            target: detailed.then(|| (host.to_owned(), uri.path().to_owned())),
            protocol: match version {
                http::Version::HTTP_2 => "HTTP/2",
                http::Version::HTTP_10 => "HTTP/1.0",
                _ => "HTTP/1.1",
            },
            route: None,
            consumer: None,
            policy: None,
            upstream: None,
            attempts: 0,
            status: 0,
            headers_ms: 0.0,
            total_ms: 0.0,
            bytes_out: 0,
            error: None,
            stream_error: None,
        }
    }

    fn to_line(&self) -> String {
        let (host, path) = self
            .target
            .as_ref()
            .map_or(("", ""), |(h, p)| (h.as_str(), p.as_str()));
        let line = AccessLine {
            ts_ms: self.ts_ms,
            request_id: self.request_id.to_str().unwrap_or_default(),
            client: self.client,
            method: self.method.as_str(),
            host,
            path,
            protocol: self.protocol,
            route: self.route.as_ref().map(|r| &*r.name),
            consumer: self.consumer.as_ref().map(|c| c.name.as_str()),
            policy: self.policy.as_deref(),
            upstream: self.upstream.as_ref().map(|e| e.address.as_str()),
            attempts: self.attempts,
            status: self.status,
            headers_ms: self.headers_ms,
            total_ms: self.total_ms,
            bytes_out: self.bytes_out,
            error: self.error,
            stream_error: self.stream_error.as_deref(),
        };
        let mut text = serde_json::to_string(&line).unwrap_or_default();
        text.push('\n');
        text
    }
}

/// Live counters and the access-log sink, shared by every connection.
#[derive(Debug)]
pub struct Telemetry {
    /// Request counters and latency by route.
    pub stats: Stats,
    access: Option<SyncSender<String>>,
    dropped_access_lines: AtomicU64,
    open_connections: AtomicI64,
    open_tunnels: AtomicI64,
}

impl Telemetry {
    pub fn new(access_log: AccessLog) -> Self {
        let access = match access_log {
            AccessLog::Off => None,
            AccessLog::Stdout => {
                let (tx, rx) = std::sync::mpsc::sync_channel::<String>(ACCESS_LOG_QUEUE);
                let spawned =
                    std::thread::Builder::new()
                        .name("access-log".into())
                        .spawn(move || {
                            use std::io::Write;
                            let stdout = std::io::stdout();
                            while let Ok(line) = rx.recv() {
                                let mut out = stdout.lock();
                                let _ = out.write_all(line.as_bytes());
                                // Write whatever else is queued before flushing once.
                                while let Ok(more) = rx.try_recv() {
                                    let _ = out.write_all(more.as_bytes());
                                }
                                let _ = out.flush();
                            }
                        });
                spawned.ok().map(|_| tx)
            }
        };
        Self {
            stats: Stats::default(),
            access,
            dropped_access_lines: AtomicU64::new(0),
            open_connections: AtomicI64::new(0),
            open_tunnels: AtomicI64::new(0),
        }
    }

    /// Whether access-log lines are written (and records need their text fields).
    pub fn access_enabled(&self) -> bool {
        self.access.is_some()
    }

    /// Records a finished request: metrics, and an access-log line when enabled.
    pub fn record(&self, record: AccessRecord) {
        let stats = record.route.as_ref().unwrap_or(&self.stats.unrouted);
        stats.record(record.status, (record.headers_ms * 1000.0) as u64);
        if let Some(tx) = &self.access
            && let Err(TrySendError::Full(_)) = tx.try_send(record.to_line())
        {
            self.dropped_access_lines.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Counts an accepted connection until the guard drops.
    pub fn connection_opened(&self) -> Gauge<'_> {
        self.open_connections.fetch_add(1, Ordering::Relaxed);
        Gauge(&self.open_connections)
    }

    /// Counts an upgraded (tunnelled) connection until the guard drops.
    pub fn tunnel_opened(&self) -> Gauge<'_> {
        self.open_tunnels.fetch_add(1, Ordering::Relaxed);
        Gauge(&self.open_tunnels)
    }

    pub fn open_connections(&self) -> i64 {
        self.open_connections.load(Ordering::Relaxed)
    }

    pub fn open_tunnels(&self) -> i64 {
        self.open_tunnels.load(Ordering::Relaxed)
    }

    /// Monotonic counters for the manager: requests by status class, open connections.
    pub fn counters(&self) -> std::collections::BTreeMap<String, u64> {
        let mut counters = self.stats.totals();
        counters.insert(
            "open_connections".to_owned(),
            u64::try_from(self.open_connections()).unwrap_or(0),
        );
        counters
    }

    pub fn dropped_access_lines(&self) -> u64 {
        self.dropped_access_lines.load(Ordering::Relaxed)
    }
}

/// Decrements its counter when dropped.
#[derive(Debug)]
pub struct Gauge<'a>(&'a AtomicI64);

impl Drop for Gauge<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}
