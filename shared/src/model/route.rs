use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{Labels, is_default};
use crate::Duration;

/// A route: which requests it takes (hosts + matches + priority) and what it does with them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteSpec {
    /// Hostnames this route serves (exact or `*.` wildcard); empty serves every host.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<String>,
    /// The route takes a request when any match holds; empty matches every request.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub matches: Vec<RouteMatch>,
    /// Higher wins among routes that both match (see docs/routing.md for the full order).
    #[serde(default, skip_serializing_if = "is_default")]
    pub priority: i32,
    /// Exactly one of `forward`, `redirect` and `direct_response`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forward: Option<Forward>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redirect: Option<Redirect>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub direct_response: Option<DirectResponse>,
    #[serde(default, skip_serializing_if = "is_default")]
    pub filters: Filters,
    /// Policies applied to this route, by name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub policies: Vec<String>,
}

/// The conditions of one match; all given conditions must hold.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteMatch {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathMatch>,
    /// Upper-case HTTP methods; empty matches any method.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<ValueMatch>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub query: Vec<ValueMatch>,
}

/// How the request path is matched.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum PathMatch {
    /// The whole path equals this.
    Exact(String),
    /// The path starts with this, on a segment boundary (`/api` matches `/api/x`, not `/apix`).
    Prefix(String),
    /// The whole path matches this regular expression (anchored).
    Regex(String),
}

/// A condition on a named header, query parameter or cookie.
///
/// At most one of `exact`, `prefix` and `regex`; none means "present with any value".
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ValueMatch {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exact: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    /// Anchored: the whole value must match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regex: Option<String>,
    /// Invert the condition: the request must not carry a matching value.
    #[serde(default, skip_serializing_if = "is_default")]
    pub invert: bool,
}

/// Forward to weighted backends.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Forward {
    pub backends: Vec<Backend>,
    /// Requests matching a canary rule go to its backends instead; the first matching rule wins.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub canary: Vec<CanaryRule>,
    #[serde(default, skip_serializing_if = "is_default")]
    pub timeouts: RouteTimeouts,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<Retries>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mirror: Option<Mirror>,
}

/// One weighted backend: a service, or a label subset of its endpoints.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Backend {
    pub service: String,
    /// Only endpoints carrying all of these labels (`stage: green`).
    #[serde(default, skip_serializing_if = "Labels::is_empty")]
    pub subset: Labels,
    /// Relative share among this route's backends, 0..=10000 (0 drains a backend).
    #[serde(
        default = "Backend::default_weight",
        skip_serializing_if = "Backend::is_default_weight"
    )]
    pub weight: u32,
}

impl Backend {
    pub const DEFAULT_WEIGHT: u32 = 100;
    pub const MAX_WEIGHT: u32 = 10_000;

    fn default_weight() -> u32 {
        Self::DEFAULT_WEIGHT
    }
    fn is_default_weight(w: &u32) -> bool {
        *w == Self::DEFAULT_WEIGHT
    }
}

/// Send requests that carry a header or cookie value to other backends.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CanaryRule {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<ValueMatch>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cookie: Option<ValueMatch>,
    pub backends: Vec<Backend>,
}

/// Per-route timeouts.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteTimeouts {
    /// From the request's arrival to the upstream's response headers, retries included.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<Duration>,
    /// Close a stream (including WebSocket and SSE) idle for this long in both directions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle: Option<Duration>,
}

/// Retry policy.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Retries {
    /// Further attempts after the first, 1..=10.
    pub attempts: u32,
    /// What is retried; empty means connect failures, resets, 502, 503 and 504.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub retry_on: Vec<RetryOn>,
    /// Retry non-idempotent methods too (POST, PATCH). Off by default: a retried POST may run twice.
    #[serde(default, skip_serializing_if = "is_default")]
    pub non_idempotent: bool,
    /// Retries may add at most this percentage to the route's request rate, 1..=100.
    #[serde(default = "Retries::default_budget")]
    pub budget_percent: u8,
}

impl Retries {
    /// 20%: retries absorb a failing endpoint without amplifying an overload into a storm.
    pub const DEFAULT_BUDGET_PERCENT: u8 = 20;

    fn default_budget() -> u8 {
        Self::DEFAULT_BUDGET_PERCENT
    }
}

/// A condition under which a request is retried.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RetryOn {
    ConnectFailure,
    Reset,
    #[serde(rename = "502")]
    Status502,
    #[serde(rename = "503")]
    Status503,
    #[serde(rename = "504")]
    Status504,
}

/// Copy a share of requests to another service, ignoring its responses.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Mirror {
    pub service: String,
    /// Share of requests mirrored, 1..=100.
    #[serde(default = "Mirror::default_percent")]
    pub percent: u8,
}

impl Mirror {
    fn default_percent() -> u8 {
        100
    }
}

/// Answer with a redirect. Unset parts keep the request's own.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Redirect {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheme: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// 301, 302, 303, 307 or 308; default 302.
    #[serde(default = "Redirect::default_status")]
    pub status: u16,
}

impl Redirect {
    fn default_status() -> u16 {
        302
    }
}

/// Answer directly, without an upstream.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DirectResponse {
    pub status: u16,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub body: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
}

/// Request and response rewriting.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Filters {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rewrite: Option<Rewrite>,
    #[serde(default, skip_serializing_if = "is_default")]
    pub request_headers: HeaderEdits,
    #[serde(default, skip_serializing_if = "is_default")]
    pub response_headers: HeaderEdits,
}

/// Path and host rewriting before forwarding.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rewrite {
    /// Replace the matched prefix (for `prefix` matches) with this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_prefix: Option<String>,
    /// Replace the whole path with this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Regex substitution on the path (`$1` refers to groups).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_regex: Option<RegexRewrite>,
    /// The Host header sent upstream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
}

/// A regular-expression substitution.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegexRewrite {
    pub pattern: String,
    pub substitution: String,
}

/// Header edits, applied in the order remove → set → add.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderEdits {
    /// Appended, keeping existing values.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub add: BTreeMap<String, String>,
    /// Replacing existing values.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub set: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remove: Vec<String>,
}

impl HeaderEdits {
    /// Whether there is nothing to edit.
    pub fn is_empty(&self) -> bool {
        self.add.is_empty() && self.set.is_empty() && self.remove.is_empty()
    }
}
