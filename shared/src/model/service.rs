use serde::{Deserialize, Serialize};

use super::{Labels, is_default};
use crate::Duration;

/// An upstream: a set of endpoints and how to reach, balance and protect them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceSpec {
    /// Static endpoints. A service has static endpoints, or `dns`, not both.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub endpoints: Vec<Endpoint>,
    /// Endpoints discovered by resolving a name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns: Option<DnsDiscovery>,
    /// The HTTP version spoken to the endpoints.
    #[serde(default, skip_serializing_if = "is_default")]
    pub protocol: UpstreamProtocol,
    /// TLS towards the endpoints; `None` is plain TCP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<UpstreamTls>,
    #[serde(default, skip_serializing_if = "is_default")]
    pub load_balancing: LoadBalancing,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check: Option<HealthCheck>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outlier_detection: Option<OutlierDetection>,
    #[serde(default, skip_serializing_if = "is_default")]
    pub limits: ConnectionLimits,
}

/// One upstream endpoint.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Endpoint {
    /// `host:port`, where host is an IP address or a hostname (`[::1]:8080` for IPv6).
    pub address: String,
    /// Relative share of traffic, 1..=10000.
    #[serde(
        default = "Endpoint::default_weight",
        skip_serializing_if = "Endpoint::is_default_weight"
    )]
    pub weight: u32,
    /// Labels that route subsets select on (`stage: green`).
    #[serde(default, skip_serializing_if = "Labels::is_empty")]
    pub labels: Labels,
}

impl Endpoint {
    /// Weight of an endpoint that does not say: equal shares.
    pub const DEFAULT_WEIGHT: u32 = 1;
    /// Upper bound that keeps weighted selection arithmetic far from overflow.
    pub const MAX_WEIGHT: u32 = 10_000;

    fn default_weight() -> u32 {
        Self::DEFAULT_WEIGHT
    }

    fn is_default_weight(w: &u32) -> bool {
        *w == Self::DEFAULT_WEIGHT
    }
}

/// Endpoints from DNS: every address `name` resolves to, on `port`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DnsDiscovery {
    pub name: String,
    pub port: u16,
    /// How often to resolve again.
    #[serde(default = "DnsDiscovery::default_refresh")]
    pub refresh: Duration,
    /// Labels given to every discovered endpoint.
    #[serde(default, skip_serializing_if = "Labels::is_empty")]
    pub labels: Labels,
}

impl DnsDiscovery {
    /// Re-resolve every 30 s: short enough to follow a failover, long enough not to load DNS.
    pub const DEFAULT_REFRESH: Duration = Duration::from_secs(30);

    fn default_refresh() -> Duration {
        Self::DEFAULT_REFRESH
    }
}

/// The HTTP version spoken to upstream endpoints.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum UpstreamProtocol {
    #[default]
    Http1,
    /// HTTP/2: negotiated by ALPN over `tls`, or with prior knowledge (h2c) without it.
    Http2,
}

/// TLS towards upstream endpoints.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamTls {
    /// The name sent in SNI and checked against the endpoint's certificate; defaults to the
    /// endpoint's host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_name: Option<String>,
    /// PEM CA bundle that endpoint certificates must chain to; `None` uses the system roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_pem: Option<String>,
    /// Skip certificate verification. For test environments only.
    #[serde(default, skip_serializing_if = "is_default")]
    pub insecure_skip_verify: bool,
}

/// How requests are spread over a service's healthy endpoints.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "policy", rename_all = "kebab-case", deny_unknown_fields)]
pub enum LoadBalancing {
    /// Each endpoint in turn, ignoring weights.
    #[default]
    RoundRobin,
    /// Smooth weighted round robin by endpoint weight.
    Weighted,
    /// Power of two choices on in-flight requests.
    LeastRequest,
    /// A ring keyed by a request attribute: the same key reaches the same endpoint while the
    /// endpoint set is unchanged.
    ConsistentHash { hash_on: HashOn },
}

/// The request attribute a consistent hash is keyed on.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum HashOn {
    Header(String),
    Cookie(String),
    SourceIp,
}

/// Active health checking: periodic requests to every endpoint.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheck {
    /// Path requested with GET.
    pub path: String,
    #[serde(default = "HealthCheck::default_interval")]
    pub interval: Duration,
    #[serde(default = "HealthCheck::default_timeout")]
    pub timeout: Duration,
    /// Consecutive successes that mark an unhealthy endpoint healthy again.
    #[serde(default = "HealthCheck::default_threshold")]
    pub healthy_threshold: u32,
    /// Consecutive failures that mark an endpoint unhealthy.
    #[serde(default = "HealthCheck::default_threshold")]
    pub unhealthy_threshold: u32,
    /// Status codes counted as healthy; empty means 200..=399.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub expected_statuses: Vec<u16>,
}

impl HealthCheck {
    /// Probe every 5 s: notices a dead endpoint within two probes without loading it.
    pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(5);
    /// A probe slower than 2 s counts as a failure.
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);
    /// Two in a row, so that one lost probe does not flap an endpoint.
    pub const DEFAULT_THRESHOLD: u32 = 2;

    fn default_interval() -> Duration {
        Self::DEFAULT_INTERVAL
    }
    fn default_timeout() -> Duration {
        Self::DEFAULT_TIMEOUT
    }
    fn default_threshold() -> u32 {
        Self::DEFAULT_THRESHOLD
    }
}

/// Passive outlier detection (circuit breaking): eject an endpoint that keeps failing real
/// requests for a back-off period that grows with each ejection.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutlierDetection {
    /// Consecutive connect failures or 5xx responses that eject an endpoint.
    pub consecutive_failures: u32,
    /// First ejection period; each further ejection doubles it up to `max_ejection`.
    #[serde(default = "OutlierDetection::default_base")]
    pub base_ejection: Duration,
    #[serde(default = "OutlierDetection::default_max")]
    pub max_ejection: Duration,
    /// At most this share of endpoints is ejected at once, so that an outlier detector can
    /// never empty a service by itself.
    #[serde(default = "OutlierDetection::default_max_percent")]
    pub max_ejected_percent: u8,
}

impl OutlierDetection {
    pub const DEFAULT_BASE: Duration = Duration::from_secs(30);
    pub const DEFAULT_MAX: Duration = Duration::from_secs(300);
    pub const DEFAULT_MAX_PERCENT: u8 = 50;

    fn default_base() -> Duration {
        Self::DEFAULT_BASE
    }
    fn default_max() -> Duration {
        Self::DEFAULT_MAX
    }
    fn default_max_percent() -> u8 {
        Self::DEFAULT_MAX_PERCENT
    }
}

/// Connection limits and timeouts towards a service.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConnectionLimits {
    /// TCP (and TLS) connect timeout; default 5 s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connect_timeout: Option<Duration>,
    /// Idle pooled connections are closed after this long; default 90 s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_timeout: Option<Duration>,
    /// At most this many connections per endpoint; `None` is unlimited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections_per_endpoint: Option<u32>,
}
