//! Command-line configuration of the agent process (not the gateway config, which is data).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};

/// How long a client may take to send its request headers before the connection is closed:
/// long enough for a slow mobile link, short enough that slowloris cannot hold sockets.
pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest request header block accepted (HTTP/1.1 buffer and HTTP/2 header list).
pub const DEFAULT_MAX_HEADER_BYTES: usize = 64 * 1024;
/// How long SIGTERM waits for in-flight requests and streams before closing them.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
/// How often the config path is checked for changes.
pub const DEFAULT_WATCH_INTERVAL: Duration = Duration::from_millis(500);

/// `fleetgate-agent`: the Fleetgate gateway.
#[derive(Parser, Debug, Clone)]
#[command(name = "fleetgate-agent", version, about)]
pub struct AgentConfig {
    /// Config bundle: a YAML/JSON file or a directory of them. Watched: every change is
    /// validated and applied hot; an invalid change is logged and the running config stays.
    #[arg(long, value_name = "PATH")]
    pub config: PathBuf,
    /// Plain HTTP listener (HTTP/1.1 and h2c).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// TLS listener (HTTP/1.1 and HTTP/2 by ALPN); certificates come from Domain resources,
    /// chosen by SNI.
    #[arg(long, value_name = "ADDR")]
    pub listen_tls: Option<SocketAddr>,
    /// Admin listener: /healthz, /readyz, /metrics, /config. Keep it off public interfaces.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:9901")]
    pub admin: SocketAddr,
    /// Where the last applied snapshot is kept, so that a restart serves it at once.
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Worker threads; default one per CPU.
    #[arg(long, value_name = "N")]
    pub workers: Option<usize>,
    /// Close connections whose request headers take longer than this (seconds).
    #[arg(long, value_name = "SECS", default_value_t = DEFAULT_HEADER_TIMEOUT.as_secs())]
    pub header_timeout: u64,
    /// Largest request header block in bytes.
    #[arg(long, value_name = "BYTES", default_value_t = DEFAULT_MAX_HEADER_BYTES)]
    pub max_header_bytes: usize,
    /// On SIGTERM, wait this long (seconds) for open requests and streams to finish.
    #[arg(long, value_name = "SECS", default_value_t = DEFAULT_DRAIN_TIMEOUT.as_secs())]
    pub drain_timeout: u64,
    /// How often the config path is checked for changes (milliseconds).
    #[arg(long, value_name = "MS", default_value_t = DEFAULT_WATCH_INTERVAL.as_millis() as u64)]
    pub watch_interval_ms: u64,
    /// Write one JSON access-log line per request to stdout.
    #[arg(long, value_enum, default_value_t = AccessLog::Stdout)]
    pub access_log: AccessLog,
    /// Log format for operational logs (stderr).
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

/// Where access-log lines go.
#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum AccessLog {
    Off,
    Stdout,
}

/// Operational log format.
#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

impl AgentConfig {
    pub fn header_timeout(&self) -> Duration {
        Duration::from_secs(self.header_timeout)
    }
    pub fn drain_timeout(&self) -> Duration {
        Duration::from_secs(self.drain_timeout)
    }
    pub fn watch_interval(&self) -> Duration {
        Duration::from_millis(self.watch_interval_ms.max(10))
    }
}
