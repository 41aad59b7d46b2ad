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
    /// Standalone mode: a YAML/JSON bundle file or a directory of them. Watched: every change
    /// is validated and applied hot; an invalid change is logged and the running config stays.
    #[arg(
        long,
        value_name = "PATH",
        required_unless_present = "manager",
        conflicts_with = "manager"
    )]
    pub config: Option<PathBuf>,
    /// Manager mode: a manager's sync address (QUIC, `host:port`). Repeat it or separate with
    /// commas for several; a name that resolves to several addresses counts as several. The
    /// agent uses one at a time and moves to the next when it fails. Needs --data-dir.
    #[arg(
        long,
        value_name = "ADDR",
        value_delimiter = ',',
        requires = "data_dir"
    )]
    pub manager: Vec<String>,
    /// A join token (`fleetgate token create --agent`): needed the first time only, to enrol;
    /// the certificate it gets is kept in DATA_DIR/identity and renewed automatically.
    #[arg(
        long,
        value_name = "TOKEN",
        env = "FLEETGATE_JOIN_TOKEN",
        hide_env_values = true
    )]
    pub join: Option<String>,
    /// The agent's labels, `key=value,...` (cloud, region, zone, env): resources whose
    /// placement selects them are sent to this agent.
    #[arg(long, value_name = "K=V,...", value_delimiter = ',', value_parser = parse_label)]
    pub labels: Vec<(String, String)>,
    /// The agent's name in the fleet view; default: the host name.
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,
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

fn parse_label(text: &str) -> Result<(String, String), String> {
    let (key, value) = text
        .split_once('=')
        .ok_or_else(|| format!("`{text}` is not key=value"))?;
    let key = key.trim();
    if key.is_empty() {
        return Err(format!("`{text}` has an empty key"));
    }
    Ok((key.to_owned(), value.trim().to_owned()))
}

impl AgentConfig {
    /// The name shown in the fleet view: `--name`, else the host name.
    pub fn agent_name(&self) -> String {
        self.name.clone().unwrap_or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_owned())
                .ok()
                .filter(|h| !h.is_empty())
                .unwrap_or_else(|| "fleetgate-agent".to_owned())
        })
    }

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
