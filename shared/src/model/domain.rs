use serde::{Deserialize, Serialize};

use super::is_default;

/// A set of hostnames served together: TLS, redirects and domain-wide policies.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DomainSpec {
    /// Exact hostnames (`api.example.com`) or one-level wildcards (`*.example.com`).
    pub hosts: Vec<String>,
    /// The Certificate served for these hosts; `None` serves them over plain HTTP only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate: Option<String>,
    /// The lowest TLS version accepted on these hosts.
    #[serde(default, skip_serializing_if = "is_default")]
    pub min_tls_version: TlsVersion,
    /// Answer plain-HTTP requests for these hosts with a permanent redirect to HTTPS.
    #[serde(default, skip_serializing_if = "is_default")]
    pub https_redirect: bool,
    /// Policies applied to every route served under these hosts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub policies: Vec<String>,
}

/// A TLS protocol version floor.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub enum TlsVersion {
    /// TLS 1.2 and 1.3: the default, since clients older than TLS 1.2 are no longer supported
    /// by any maintained browser.
    #[default]
    #[serde(rename = "1.2")]
    Tls12,
    #[serde(rename = "1.3")]
    Tls13,
}
