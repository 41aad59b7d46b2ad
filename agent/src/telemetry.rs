//! Logs, metrics and the access log.
//!
//! Operational logs go to stderr through `tracing`. Access-log lines are JSON on stdout,
//! written by a dedicated thread fed through a bounded channel: a slow stdout consumer costs
//! dropped log lines (counted in metrics), never a stalled request.

use std::net::SocketAddr;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::mpsc::{SyncSender, TrySendError};

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use serde::Serialize;

use crate::config::{AccessLog, LogFormat};

/// Access-log lines buffered between requests and the writer thread.
const ACCESS_LOG_QUEUE: usize = 16 * 1024;

/// Latency buckets in seconds: sub-millisecond proxying up to slow upstreams.
const LATENCY_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

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

/// The process-wide Prometheus recorder (the `metrics` facade has one global recorder).
pub fn prometheus() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let builder = PrometheusBuilder::new()
            .set_buckets(&LATENCY_BUCKETS)
            .unwrap_or_else(|_| PrometheusBuilder::new());
        let recorder = builder.build_recorder();
        let handle = recorder.handle();
        if metrics::set_global_recorder(recorder).is_err() {
            tracing::warn!(
                "a metrics recorder was already installed; /metrics may miss request metrics"
            );
        }
        handle
    })
}

/// One request, as the access log and the request metrics see it.
#[derive(Debug, Serialize)]
pub struct AccessRecord {
    pub ts_ms: u128,
    pub request_id: String,
    pub client: SocketAddr,
    pub method: String,
    pub host: String,
    pub path: String,
    pub protocol: &'static str,
    pub route: Option<String>,
    /// The authenticated consumer, when an auth policy identified one.
    pub consumer: Option<String>,
    /// The policy that answered the request itself (denied, limited, challenged).
    pub policy: Option<String>,
    pub upstream: Option<String>,
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

impl AccessRecord {
    pub fn new(
        request_id: &str,
        client: SocketAddr,
        method: &http::Method,
        host: &str,
        uri: &http::Uri,
        version: http::Version,
    ) -> Self {
        Self {
            ts_ms: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis()),
            request_id: request_id.to_owned(),
            client,
            method: method.as_str().to_owned(),
            host: host.to_owned(),
            path: uri.path().to_owned(),
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
}

/// Live counters and the access-log sink, shared by every connection.
#[derive(Debug)]
pub struct Telemetry {
    access: Option<SyncSender<String>>,
    dropped_access_lines: AtomicU64,
    open_connections: AtomicI64,
    open_tunnels: AtomicI64,
}

impl Telemetry {
    pub fn new(access_log: AccessLog) -> Self {
        let _ = prometheus();
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
            access,
            dropped_access_lines: AtomicU64::new(0),
            open_connections: AtomicI64::new(0),
            open_tunnels: AtomicI64::new(0),
        }
    }

    /// Records a finished request: metrics, and an access-log line when enabled.
    pub fn record(&self, record: AccessRecord) {
        let route = record.route.clone().unwrap_or_else(|| "none".to_owned());
        let status = record.status.to_string();
        metrics::counter!("fleetgate_requests_total", "route" => route.clone(), "status" => status)
            .increment(1);
        metrics::histogram!("fleetgate_request_duration_seconds", "route" => route)
            .record(record.headers_ms / 1000.0);
        if let Some(tx) = &self.access {
            let mut line = serde_json::to_string(&record).unwrap_or_default();
            line.push('\n');
            if let Err(TrySendError::Full(_)) = tx.try_send(line) {
                self.dropped_access_lines.fetch_add(1, Ordering::Relaxed);
            }
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
