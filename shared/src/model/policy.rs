use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::is_default;
use crate::Duration;

/// A named plugin instance: a typed configuration and the scope it applies to.
///
/// In documents: `spec: { type: key-rate-limit, config: {...}, scope: {...} }`. The `config`
/// is parsed according to `type`, so an unknown field inside it is reported with its path.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PolicySpec {
    #[serde(flatten)]
    pub config: PolicyConfig,
    #[serde(skip_serializing_if = "is_default")]
    pub scope: PolicyScope,
}

/// Where a policy applies besides the routes and domains that list it by name.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyScope {
    /// Apply to every route on every domain.
    #[serde(default, skip_serializing_if = "is_default")]
    pub global: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub domains: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<String>,
}

/// The phase a policy runs in. Phases run in this order for every request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Phase {
    /// Who is calling: jwt-auth, key-auth, basic-auth, hmac-auth.
    Authn,
    /// May they: ip-restriction, cors preflight answers.
    Authz,
    /// How often: key-rate-limit.
    RateLimit,
    /// Is it an attack: waf, bot-detect, cc-protection, request-size-limit.
    Security,
    /// Request and response shaping that runs last.
    Transform,
}

/// One typed configuration per plugin type.
///
/// Serialized as `type` + `config`; parsed by [`crate::bundle`], which decodes `config` by
/// `type` so that errors carry the path inside it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "type", content = "config", rename_all = "kebab-case")]
pub enum PolicyConfig {
    JwtAuth(JwtAuth),
    KeyAuth(KeyAuth),
    BasicAuth(BasicAuth),
    HmacAuth(HmacAuth),
    KeyRateLimit(KeyRateLimit),
    IpRestriction(IpRestriction),
    Cors(Cors),
    BotDetect(BotDetect),
    Waf(Waf),
    CcProtection(CcProtection),
    RequestSizeLimit(RequestSizeLimit),
}

impl PolicyConfig {
    /// Every `type` name accepted in documents.
    pub const TYPES: [&'static str; 11] = [
        "jwt-auth",
        "key-auth",
        "basic-auth",
        "hmac-auth",
        "key-rate-limit",
        "ip-restriction",
        "cors",
        "bot-detect",
        "waf",
        "cc-protection",
        "request-size-limit",
    ];

    /// The `type` name of this configuration.
    pub fn type_name(&self) -> &'static str {
        match self {
            PolicyConfig::JwtAuth(_) => "jwt-auth",
            PolicyConfig::KeyAuth(_) => "key-auth",
            PolicyConfig::BasicAuth(_) => "basic-auth",
            PolicyConfig::HmacAuth(_) => "hmac-auth",
            PolicyConfig::KeyRateLimit(_) => "key-rate-limit",
            PolicyConfig::IpRestriction(_) => "ip-restriction",
            PolicyConfig::Cors(_) => "cors",
            PolicyConfig::BotDetect(_) => "bot-detect",
            PolicyConfig::Waf(_) => "waf",
            PolicyConfig::CcProtection(_) => "cc-protection",
            PolicyConfig::RequestSizeLimit(_) => "request-size-limit",
        }
    }

    /// The phase this plugin runs in.
    pub fn phase(&self) -> Phase {
        match self {
            PolicyConfig::JwtAuth(_)
            | PolicyConfig::KeyAuth(_)
            | PolicyConfig::BasicAuth(_)
            | PolicyConfig::HmacAuth(_) => Phase::Authn,
            PolicyConfig::IpRestriction(_) | PolicyConfig::Cors(_) => Phase::Authz,
            PolicyConfig::KeyRateLimit(_) => Phase::RateLimit,
            PolicyConfig::BotDetect(_)
            | PolicyConfig::Waf(_)
            | PolicyConfig::CcProtection(_)
            | PolicyConfig::RequestSizeLimit(_) => Phase::Security,
        }
    }

    /// Consumers this policy names, each with the field path that names it.
    pub fn consumer_refs(&self) -> Vec<(String, &str)> {
        let allow_list = match self {
            PolicyConfig::JwtAuth(c) => c.consumers.as_slice(),
            PolicyConfig::KeyAuth(c) => c.consumers.as_slice(),
            PolicyConfig::BasicAuth(c) => c.consumers.as_slice(),
            PolicyConfig::HmacAuth(c) => c.consumers.as_slice(),
            _ => &[],
        };
        allow_list
            .iter()
            .enumerate()
            .map(|(i, name)| (format!("spec.config.consumers[{i}]"), name.as_str()))
            .collect()
    }
}

/// Where a credential is read from in a request. The first source present is used.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum TokenSource {
    /// A header, with an optional scheme prefix that is stripped (`Bearer `).
    Header {
        name: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        prefix: Option<String>,
    },
    Query {
        name: String,
    },
    Cookie {
        name: String,
    },
}

/// JWT validation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtAuth {
    /// Accepted algorithms. A token whose header names another is rejected, which is what stops
    /// `alg: none` and HS/RS key confusion.
    pub algorithms: Vec<JwtAlgorithm>,
    /// Inline verification keys.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub keys: Vec<JwtKey>,
    /// A JWKS document fetched over HTTPS and cached.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks: Option<Jwks>,
    /// Accepted `iss` values; empty accepts any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub issuers: Vec<String>,
    /// Accepted `aud` values; empty accepts any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub audiences: Vec<String>,
    /// Tolerance for `exp` and `nbf`; default 60 s, at most 10 minutes.
    #[serde(default = "JwtAuth::default_skew")]
    pub clock_skew: Duration,
    /// Where the token is read from; default `Authorization: Bearer`.
    #[serde(default = "JwtAuth::default_sources")]
    pub token_from: Vec<TokenSource>,
    /// Copy claims to request headers: claim name → header name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub claims_to_headers: BTreeMap<String, String>,
    /// The claim whose value names the Consumer (matched against consumers' `jwt.subject`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consumer_claim: Option<String>,
    /// When not empty, only these consumers are let through.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub consumers: Vec<String>,
}

impl JwtAuth {
    pub const DEFAULT_SKEW: Duration = Duration::from_secs(60);
    pub const MAX_SKEW: Duration = Duration::from_secs(600);

    fn default_skew() -> Duration {
        Self::DEFAULT_SKEW
    }
    fn default_sources() -> Vec<TokenSource> {
        vec![TokenSource::Header {
            name: "authorization".into(),
            prefix: Some("Bearer ".into()),
        }]
    }
}

/// A JWS algorithm.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum JwtAlgorithm {
    HS256,
    HS384,
    HS512,
    RS256,
    RS384,
    RS512,
    PS256,
    PS384,
    PS512,
    ES256,
    ES384,
    EdDSA,
}

impl JwtAlgorithm {
    /// Whether this is a shared-secret (HMAC) algorithm.
    pub fn is_symmetric(self) -> bool {
        matches!(
            self,
            JwtAlgorithm::HS256 | JwtAlgorithm::HS384 | JwtAlgorithm::HS512
        )
    }
}

/// An inline JWT verification key: a shared secret or a PEM public key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtKey {
    /// Matched against the token's `kid`; a key without one matches any token of its algorithm.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kid: Option<String>,
    pub algorithm: JwtAlgorithm,
    /// The HMAC secret, for HS algorithms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    /// SubjectPublicKeyInfo PEM, for RS, PS, ES and EdDSA.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_key_pem: Option<String>,
}

/// A remote JWKS.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Jwks {
    pub url: String,
    /// How long a fetched key set is used before it is fetched again; default 5 minutes.
    #[serde(default = "Jwks::default_refresh")]
    pub refresh: Duration,
}

impl Jwks {
    pub const DEFAULT_REFRESH: Duration = Duration::from_secs(300);

    fn default_refresh() -> Duration {
        Self::DEFAULT_REFRESH
    }
}

/// API keys, matched against consumers' `keys`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyAuth {
    /// Where the key is read from; default the `x-api-key` header.
    #[serde(default = "KeyAuth::default_sources")]
    pub key_from: Vec<TokenSource>,
    /// Remove the key from the request before forwarding (default true).
    #[serde(default = "yes")]
    pub hide_credentials: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub consumers: Vec<String>,
}

impl KeyAuth {
    fn default_sources() -> Vec<TokenSource> {
        vec![TokenSource::Header {
            name: "x-api-key".into(),
            prefix: None,
        }]
    }
}

fn yes() -> bool {
    true
}

/// HTTP Basic authentication against consumers' hashed passwords.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BasicAuth {
    #[serde(default = "BasicAuth::default_realm")]
    pub realm: String,
    #[serde(default = "yes")]
    pub hide_credentials: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub consumers: Vec<String>,
}

impl BasicAuth {
    fn default_realm() -> String {
        "fleetgate".into()
    }
}

/// HMAC request signing with consumers' key pairs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HmacAuth {
    /// Accepted algorithms; default hmac-sha256.
    #[serde(default = "HmacAuth::default_algorithms")]
    pub algorithms: Vec<HmacAlgorithm>,
    /// Headers that must be part of the signature, besides the date header.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub signed_headers: Vec<String>,
    /// Requests whose date is further than this from the agent's clock are rejected; default 5 minutes.
    #[serde(default = "HmacAuth::default_skew")]
    pub clock_skew: Duration,
    /// Require a body digest in the signature.
    #[serde(default = "yes")]
    pub validate_body: bool,
    /// Require a nonce and reject one seen within the clock-skew window.
    #[serde(default = "yes")]
    pub require_nonce: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub consumers: Vec<String>,
}

impl HmacAuth {
    pub const DEFAULT_SKEW: Duration = Duration::from_secs(300);

    fn default_algorithms() -> Vec<HmacAlgorithm> {
        vec![HmacAlgorithm::HmacSha256]
    }
    fn default_skew() -> Duration {
        Self::DEFAULT_SKEW
    }
}

/// An HMAC digest.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum HmacAlgorithm {
    HmacSha256,
    HmacSha384,
    HmacSha512,
}

/// What a rate limit or CC rule counts requests by.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum LimitKey {
    Header(String),
    Query(String),
    Cookie(String),
    /// The authenticated consumer (needs an auth policy on the same route).
    Consumer,
    ClientIp,
}

/// `requests` per `per`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rate {
    pub requests: u64,
    pub per: Duration,
}

/// Rate limiting by a request key, locally or across the fleet.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyRateLimit {
    pub key: LimitKey,
    pub rate: Rate,
    #[serde(default, skip_serializing_if = "is_default")]
    pub algorithm: RateAlgorithm,
    /// Per key-value limits (`tenant-a` gets 1000/s); consumers carry their own overrides.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub overrides: BTreeMap<String, Rate>,
    /// Requests without the key: rejected with 401 when true, else counted under one shared key.
    #[serde(default, skip_serializing_if = "is_default")]
    pub reject_missing_key: bool,
    /// Count on each agent alone, or in a shared Redis.
    #[serde(default, skip_serializing_if = "is_default")]
    pub backend: LimitBackend,
}

/// The counting algorithm.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RateAlgorithm {
    /// Generic cell rate algorithm: smooth, one timestamp per key.
    #[default]
    Gcra,
    /// Two fixed windows weighted by overlap.
    SlidingWindow,
}

/// Where counters live.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "mode", rename_all = "kebab-case", deny_unknown_fields)]
pub enum LimitBackend {
    #[default]
    Local,
    /// One counter per key in Redis, shared by every agent.
    Redis {
        /// `redis://host:port/db`.
        url: String,
        /// Per-call timeout; a slower Redis is treated as down. Default 50 ms.
        #[serde(default = "LimitBackend::default_timeout")]
        timeout: Duration,
        /// What to do while Redis is down: allow (`open`) or reject (`closed`).
        #[serde(default, skip_serializing_if = "is_default")]
        failure_mode: FailureMode,
    },
}

impl LimitBackend {
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_millis(50);

    fn default_timeout() -> Duration {
        Self::DEFAULT_TIMEOUT
    }
}

/// Behaviour when a dependency of a policy is unavailable.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FailureMode {
    /// Let requests through.
    #[default]
    Open,
    /// Reject requests.
    Closed,
}

/// Allow and deny lists of networks.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IpRestriction {
    /// When not empty, only these networks are allowed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow: Vec<String>,
    /// These networks are refused, even when also allowed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deny: Vec<String>,
    #[serde(default, skip_serializing_if = "is_default")]
    pub client_ip: ClientIpSource,
}

/// Where the client IP is taken from.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum ClientIpSource {
    /// The TCP peer.
    #[default]
    Peer,
    /// A header such as `x-forwarded-for`, counting `trusted_hops` proxies from the right.
    Header { name: String, trusted_hops: u8 },
}

/// Cross-origin resource sharing.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cors {
    /// Exact origins, or `*`.
    pub allow_origins: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow_methods: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow_headers: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub expose_headers: Vec<String>,
    #[serde(default, skip_serializing_if = "is_default")]
    pub allow_credentials: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_age: Option<Duration>,
}

/// What to do with a request a security rule flags.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Verdict {
    Allow,
    #[default]
    Deny,
    /// Answer with a cookie challenge that a browser passes and a simple script does not.
    Challenge,
}

/// Bot detection by User-Agent and header shape.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BotDetect {
    /// User-Agent regexes always allowed (checked first).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow: Vec<String>,
    /// User-Agent regexes flagged as bots.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deny: Vec<String>,
    /// Flag the built-in list of known crawlers and scripting clients.
    #[serde(default = "yes")]
    pub builtin_list: bool,
    /// Flag requests whose headers no browser sends that way (no User-Agent, no Accept).
    #[serde(default, skip_serializing_if = "is_default")]
    pub header_signals: bool,
    /// What happens to a flagged request.
    #[serde(default, skip_serializing_if = "is_default")]
    pub action: Verdict,
}

/// ModSecurity with the OWASP Core Rule Set.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Waf {
    #[serde(default, skip_serializing_if = "is_default")]
    pub mode: WafMode,
    /// CRS paranoia level, 1..=4; default 1.
    #[serde(default = "Waf::default_paranoia")]
    pub paranoia_level: u8,
    /// Inspect at most this many bytes of request body; default 128 KiB.
    #[serde(default = "Waf::default_body_limit")]
    pub request_body_limit: u64,
    /// CRS rule ids switched off for this scope (false positives).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub disabled_rules: Vec<u32>,
}

impl Waf {
    pub const DEFAULT_PARANOIA: u8 = 1;
    pub const DEFAULT_BODY_LIMIT: u64 = 128 * 1024;

    fn default_paranoia() -> u8 {
        Self::DEFAULT_PARANOIA
    }
    fn default_body_limit() -> u64 {
        Self::DEFAULT_BODY_LIMIT
    }
}

/// Whether the WAF blocks or only logs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum WafMode {
    #[default]
    Block,
    DetectOnly,
}

/// Challenge-collapsar protection: ban a client that sends too much, too fast.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CcProtection {
    /// What is counted; default the client IP.
    #[serde(default = "CcProtection::default_key")]
    pub key: LimitKey,
    /// Exceeding this rate bans the key.
    pub threshold: Rate,
    /// How long a ban lasts.
    pub ban: Duration,
    /// Answer with a cookie challenge first; ban only clients that fail it.
    #[serde(default, skip_serializing_if = "is_default")]
    pub challenge: bool,
}

impl CcProtection {
    fn default_key() -> LimitKey {
        LimitKey::ClientIp
    }
}

/// Limits on request size.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestSizeLimit {
    /// Bodies larger than this are refused with 413 (checked against Content-Length and while
    /// streaming).
    pub max_body_bytes: u64,
}
