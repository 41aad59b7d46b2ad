//! JWT validation: HS / RS / PS / ES / EdDSA signatures with inline keys or a JWKS, then
//! `exp` / `nbf` against the request's clock with a skew, `iss`, `aud`, claims to headers and
//! the consumer mapping.

mod jwks;

use std::borrow::Cow;
use std::sync::Arc;

use arc_swap::ArcSwapOption;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use fleetgate_shared::model::{JwtAlgorithm, JwtAuth as Config, Phase};
use http::header::{self, HeaderName, HeaderValue};
use http::{Response, StatusCode};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Map, Value};

use self::jwks::JwksCache;
use super::credentials;
use crate::context::{ConsumerEntry, RequestCtx, Verdict, reject};
use crate::plugin::{Plugin, Step};
use crate::set::Consumers;
use crate::state::PolicyState;

/// Tokens longer than this are refused before any parsing: real ones are well under 4 KiB,
/// and the cap bounds the work an anonymous client can ask for.
const MAX_TOKEN_LEN: usize = 16 * 1024;

/// Every algorithm, with its JWS name.
const ALGORITHMS: [(&str, JwtAlgorithm, Algorithm); 12] = [
    ("HS256", JwtAlgorithm::HS256, Algorithm::HS256),
    ("HS384", JwtAlgorithm::HS384, Algorithm::HS384),
    ("HS512", JwtAlgorithm::HS512, Algorithm::HS512),
    ("RS256", JwtAlgorithm::RS256, Algorithm::RS256),
    ("RS384", JwtAlgorithm::RS384, Algorithm::RS384),
    ("RS512", JwtAlgorithm::RS512, Algorithm::RS512),
    ("PS256", JwtAlgorithm::PS256, Algorithm::PS256),
    ("PS384", JwtAlgorithm::PS384, Algorithm::PS384),
    ("PS512", JwtAlgorithm::PS512, Algorithm::PS512),
    ("ES256", JwtAlgorithm::ES256, Algorithm::ES256),
    ("ES384", JwtAlgorithm::ES384, Algorithm::ES384),
    ("EdDSA", JwtAlgorithm::EdDSA, Algorithm::EdDSA),
];

/// The algorithm a JWS `alg` names (case-sensitive, as RFC 7515 says). `none` names none.
fn algorithm_by_name(name: &str) -> Option<JwtAlgorithm> {
    ALGORITHMS
        .iter()
        .find(|(n, _, _)| *n == name)
        .map(|(_, a, _)| *a)
}

fn library_algorithm(algorithm: JwtAlgorithm) -> Algorithm {
    ALGORITHMS
        .iter()
        .find(|(_, a, _)| *a == algorithm)
        .map_or(Algorithm::HS256, |(_, _, l)| *l)
}

/// A verification key and the only algorithms it may verify. An inline key has exactly its
/// configured algorithm; a JWKS key its `alg`, or its type's family. The token's `alg` must
/// be both in the policy's list and in the key's: an RSA public key is never used as an HMAC
/// secret, which is what makes HS/RS key confusion impossible.
#[derive(Debug)]
struct VerifyKey {
    kid: Option<String>,
    algorithms: Vec<JwtAlgorithm>,
    key: DecodingKey,
}

impl VerifyKey {
    /// Whether this key may verify a token with `alg` and `kid`. A key without a kid
    /// matches any token of its algorithm; a token without a kid matches any key of it.
    fn fits(&self, alg: JwtAlgorithm, kid: Option<&str>) -> bool {
        self.algorithms.contains(&alg)
            && match (&self.kid, kid) {
                (Some(mine), Some(theirs)) => mine == theirs,
                _ => true,
            }
    }
}

/// The parts of a token header this plugin looks at.
struct TokenHeader {
    alg: String,
    kid: Option<String>,
}

/// Why a request was refused.
#[derive(Debug)]
enum Refusal {
    /// 401 with a Bearer challenge.
    Unauthorized { code: &'static str, message: String },
    /// 403: a valid token of a consumer not on the allow-list (or of no consumer).
    Forbidden(Box<Response<Bytes>>),
    /// 503: no key set to verify with.
    Unavailable(String),
}

impl Refusal {
    fn unauthorized(code: &'static str, message: impl Into<String>) -> Self {
        Self::Unauthorized {
            code,
            message: message.into(),
        }
    }
}

/// A verified token's time window (`exp`, `nbf`), or the refusal that holds whatever the time
/// (no `exp`, a time claim that is not a number, a wrong issuer or audience).
type Validity = Result<(f64, Option<f64>), (&'static str, String)>;

/// What this policy makes of a token whose signature verified, worked out once per token:
/// only the time window is checked against each request.
#[derive(Debug)]
struct Verified {
    validity: Validity,
    consumer: Option<Arc<ConsumerEntry>>,
    /// Whether the consumer (or the absence of one) passes the policy's allow-list.
    allowed: bool,
    /// The claim headers to set, in `claims_to_headers` order.
    headers: Vec<(HeaderName, HeaderValue)>,
}

/// Which kind of key verified a token. Only inline keys' verdicts are remembered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum VerifiedBy {
    Inline,
    Jwks,
}

/// Validates JWTs; see the module docs.
#[derive(Debug)]
pub struct JwtAuth {
    name: String,
    algorithms: Vec<JwtAlgorithm>,
    inline: Vec<VerifyKey>,
    jwks: Option<Arc<JwksCache>>,
    issuers: Vec<String>,
    audiences: Vec<String>,
    skew_secs: f64,
    sources: credentials::Sources,
    claims_to_headers: Vec<(String, HeaderName)>,
    consumer_claim: Option<String>,
    allow: Vec<String>,
    consumers: Arc<Consumers>,
    challenge: HeaderValue,
    invalid_token_challenge: HeaderValue,
    /// Tokens whose signature an inline key already verified, with what they mean here. Lives
    /// as long as this plugin, which a new config version rebuilds when the policy or the
    /// consumers change (so a key or consumer change empties it); bounded by
    /// [`VERIFIED_CACHE`]. Hashed with foldhash (seeded per process): SipHash over a
    /// ~200-byte token cost more than the rest of a remembered token's check, and only
    /// verified tokens are ever inserted, so a client cannot fill it with colliding keys.
    verified: dashmap::DashMap<String, Arc<Verified>, foldhash::fast::RandomState>,
}

/// Verified tokens remembered per policy: a client sends the same token on every request until
/// it expires, and checking a signature costs more than the rest of the policy together. What
/// depends only on the token (issuer, audience, consumer, claim headers) is worked out with the
/// signature; the time window (`exp`, `nbf`) is checked against every request's clock.
const VERIFIED_CACHE: usize = 16 * 1024;

/// The state slot holding a policy's JWKS cache across config versions.
type JwksSlot = ArcSwapOption<JwksCache>;

impl JwtAuth {
    pub fn build(
        name: &str,
        config: &Config,
        consumers: &Arc<Consumers>,
        state: &PolicyState,
    ) -> Result<Self, String> {
        if config.algorithms.is_empty() {
            return Err("at least one algorithm is needed".into());
        }
        let symmetric = config.algorithms.iter().any(|a| a.is_symmetric());
        if symmetric && config.algorithms.iter().any(|a| !a.is_symmetric()) {
            return Err("HS and public-key algorithms cannot share a policy".into());
        }
        let inline = config
            .keys
            .iter()
            .enumerate()
            .map(|(i, key)| {
                inline_key(key).map_err(|e| format!("keys[{i}] ({:?}): {e}", key.algorithm))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let jwks = match &config.jwks {
            None => None,
            Some(jwks) => {
                let slot = state.get_or_insert(name, "jwks", JwksSlot::empty);
                let refresh = jwks.refresh.to_std();
                let cache = match slot.load_full() {
                    Some(cache) if cache.url == jwks.url => {
                        cache.set_refresh(refresh);
                        cache
                    }
                    _ => {
                        let cache = Arc::new(JwksCache::new(&jwks.url, refresh)?);
                        slot.store(Some(cache.clone()));
                        cache
                    }
                };
                cache.prefetch();
                Some(cache)
            }
        };
        if inline.is_empty() && jwks.is_none() {
            return Err("give inline keys or a jwks URL".into());
        }
        let claims_to_headers = config
            .claims_to_headers
            .iter()
            .map(|(claim, header)| {
                HeaderName::from_bytes(header.as_bytes())
                    .map(|h| (claim.clone(), h))
                    .map_err(|_| {
                        format!("claims_to_headers.{claim}: `{header}` is not a header name")
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            name: name.to_owned(),
            algorithms: config.algorithms.clone(),
            inline,
            jwks,
            issuers: config.issuers.clone(),
            audiences: config.audiences.clone(),
            skew_secs: config.clock_skew.to_std().as_secs_f64(),
            sources: credentials::Sources::new(&config.token_from),
            claims_to_headers,
            consumer_claim: config.consumer_claim.clone(),
            allow: config.consumers.clone(),
            verified: dashmap::DashMap::with_hasher(foldhash::fast::RandomState::default()),
            consumers: consumers.clone(),
            challenge: credentials::challenge("Bearer", name),
            invalid_token_challenge: HeaderValue::from_str(&format!(
                "Bearer realm=\"{name}\", error=\"invalid_token\""
            ))
            .unwrap_or_else(|_| HeaderValue::from_static("Bearer error=\"invalid_token\"")),
        })
    }

    /// Verifies a token not found in the cache and works out what it means for this policy.
    /// A token an inline key verified is remembered; one a JWKS key verified is not, since
    /// the key can leave the set at its next refresh.
    async fn verify_token(&self, token: &str) -> Result<Arc<Verified>, Refusal> {
        let head = parse_header(token)?;
        let Some(alg) = algorithm_by_name(&head.alg).filter(|a| self.algorithms.contains(a)) else {
            let shown: String = head.alg.chars().take(16).collect();
            return Err(Refusal::unauthorized(
                "algorithm_not_allowed",
                format!("alg `{shown}` is not accepted here"),
            ));
        };
        let (claims, by) = self.verify(token, alg, head.kid.as_deref()).await?;
        let verified = Arc::new(self.judge(&claims));
        if by == VerifiedBy::Inline {
            if self.verified.len() >= VERIFIED_CACHE {
                // Crude but bounded: start over rather than track recency on every hit.
                self.verified.clear();
            }
            self.verified.insert(token.to_owned(), verified.clone());
        }
        Ok(verified)
    }

    /// Everything this policy makes of a verified token's claims that does not depend on the
    /// request: whether `exp`, `nbf`, `iss` and `aud` are usable, the consumer, the allow-list
    /// decision and the claim headers.
    fn judge(&self, claims: &Map<String, Value>) -> Verified {
        let consumer = self.consumer_claim.as_ref().and_then(|claim| {
            let subject = match claims.get(claim)? {
                Value::String(s) => Cow::Borrowed(s.as_str()),
                Value::Number(n) => Cow::Owned(n.to_string()),
                _ => return None,
            };
            self.consumers.by_jwt_subject.get(subject.as_ref()).cloned()
        });
        let headers = self
            .claims_to_headers
            .iter()
            .filter_map(|(claim, header)| {
                let value = match claims.get(claim)? {
                    Value::String(s) => HeaderValue::from_str(s).ok()?,
                    Value::Number(n) => HeaderValue::from_str(&n.to_string()).ok()?,
                    Value::Bool(b) => HeaderValue::from_static(if *b { "true" } else { "false" }),
                    _ => return None,
                };
                Some((header.clone(), value))
            })
            .collect();
        Verified {
            validity: self.validity(claims),
            allowed: credentials::allowed(&self.allow, consumer.as_deref()),
            consumer,
            headers,
        }
    }

    /// Applies a verified token to the request: its time window against the request's clock,
    /// then the allow-list, then the claim headers and the consumer.
    fn admit(&self, verified: &Verified, ctx: &mut RequestCtx<'_>) -> Result<(), Refusal> {
        let (exp, nbf) = match &verified.validity {
            Ok(window) => *window,
            Err((code, message)) => return Err(Refusal::unauthorized(code, message.clone())),
        };
        let now = ctx.since_epoch().as_secs_f64();
        if now > exp + self.skew_secs {
            return Err(Refusal::unauthorized(
                "token_expired",
                "the token has expired",
            ));
        }
        if nbf.is_some_and(|nbf| now + self.skew_secs < nbf) {
            return Err(Refusal::unauthorized(
                "token_not_yet_valid",
                "the token is not valid yet",
            ));
        }
        if !verified.allowed {
            return Err(Refusal::Forbidden(Box::new(credentials::forbidden(
                &self.name,
                verified.consumer.as_deref(),
            ))));
        }
        for (header, value) in &verified.headers {
            ctx.headers.insert(header.clone(), value.clone());
        }
        if verified.consumer.is_some() {
            ctx.consumer = verified.consumer.clone();
        }
        Ok(())
    }

    /// The verdict on a request: on through the chain if it was admitted, else the answer
    /// to its refusal.
    fn answer(&self, admitted: Result<(), Refusal>) -> Verdict {
        let Err(refusal) = admitted else {
            return Verdict::Continue;
        };
        Verdict::Respond(match refusal {
            Refusal::Forbidden(response) => *response,
            Refusal::Unauthorized { code, message } => {
                let challenge = if code == "missing_token" {
                    &self.challenge
                } else {
                    // RFC 6750 §3: a bad token is named in the challenge.
                    &self.invalid_token_challenge
                };
                credentials::unauthorized(&self.name, code, &message, challenge)
            }
            Refusal::Unavailable(message) => {
                let mut response = reject(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "jwks_unavailable",
                    &message,
                    &self.name,
                );
                response.headers_mut().insert(
                    header::RETRY_AFTER,
                    HeaderValue::from(jwks::MIN_REFETCH.as_secs()),
                );
                response
            }
        })
    }

    /// Checks the signature with every key that fits the token's `alg` and `kid`; returns
    /// the claims of the first that verifies and which kind of key it was.
    async fn verify(
        &self,
        token: &str,
        alg: JwtAlgorithm,
        kid: Option<&str>,
    ) -> Result<(Map<String, Value>, VerifiedBy), Refusal> {
        let inline = self.inline.iter().filter(|k| k.fits(alg, kid));
        let mut tried = 0;
        for key in inline {
            tried += 1;
            if let Some(claims) = try_key(token, alg, key)? {
                return Ok((claims, VerifiedBy::Inline));
            }
        }
        if let Some(jwks) = &self.jwks {
            let Some(mut set) = jwks.current().await else {
                return Err(Refusal::Unavailable(
                    "the key set to verify tokens could not be loaded yet; retry later".into(),
                ));
            };
            if kid.is_some() && !set.keys.iter().any(|k| k.fits(alg, kid)) {
                // A key rotation the cached set has not seen yet.
                if let Some(fresh) = jwks.refetch().await {
                    set = fresh;
                }
            }
            for key in set.keys.iter().filter(|k| k.fits(alg, kid)) {
                tried += 1;
                if let Some(claims) = try_key(token, alg, key)? {
                    return Ok((claims, VerifiedBy::Jwks));
                }
            }
        }
        if tried == 0 {
            return Err(match kid {
                Some(kid) => Refusal::unauthorized(
                    "unknown_kid",
                    format!(
                        "no {alg:?} key with kid `{}`",
                        kid.chars().take(64).collect::<String>()
                    ),
                ),
                None => Refusal::unauthorized("unknown_kid", format!("no {alg:?} key")),
            });
        }
        Err(Refusal::unauthorized(
            "invalid_signature",
            "the token signature does not verify",
        ))
    }

    /// `exp` (required) and `nbf` as numbers, and `iss` and `aud` against the policy: the
    /// token's time window, or the refusal that holds whatever the time.
    fn validity(&self, claims: &Map<String, Value>) -> Validity {
        let time = |name: &str| -> Result<Option<f64>, (&'static str, String)> {
            match claims.get(name) {
                None => Ok(None),
                Some(value) => value
                    .as_f64()
                    .filter(|t| t.is_finite())
                    .map(Some)
                    .ok_or_else(|| ("invalid_claims", format!("`{name}` is not a number"))),
            }
        };
        let Some(exp) = time("exp")? else {
            return Err((
                "invalid_claims",
                "the token has no `exp`: tokens that never expire are not accepted".into(),
            ));
        };
        let nbf = time("nbf")?;
        if !self.issuers.is_empty() {
            let ok =
                matches!(claims.get("iss"), Some(Value::String(iss)) if self.issuers.contains(iss));
            if !ok {
                return Err((
                    "invalid_issuer",
                    "the token's issuer is not accepted".into(),
                ));
            }
        }
        if !self.audiences.is_empty() {
            let ok = match claims.get("aud") {
                Some(Value::String(aud)) => self.audiences.contains(aud),
                Some(Value::Array(list)) => list
                    .iter()
                    .filter_map(Value::as_str)
                    .any(|aud| self.audiences.iter().any(|a| a == aud)),
                _ => false,
            };
            if !ok {
                return Err((
                    "invalid_audience",
                    "the token is not meant for this audience".into(),
                ));
            }
        }
        Ok((exp, nbf))
    }
}

fn inline_key(key: &fleetgate_shared::model::JwtKey) -> Result<VerifyKey, String> {
    let decoding = match (key.algorithm, &key.secret, &key.public_key_pem) {
        (alg, Some(secret), None) if alg.is_symmetric() => {
            DecodingKey::from_secret(secret.as_bytes())
        }
        (alg, None, Some(pem)) if !alg.is_symmetric() => {
            let pem = pem.as_bytes();
            match alg {
                JwtAlgorithm::ES256 | JwtAlgorithm::ES384 => DecodingKey::from_ec_pem(pem),
                JwtAlgorithm::EdDSA => DecodingKey::from_ed_pem(pem),
                _ => DecodingKey::from_rsa_pem(pem),
            }
            .map_err(|e| format!("the public key PEM is not usable: {e}"))?
        }
        (alg, _, _) if alg.is_symmetric() => {
            return Err("an HS key needs `secret` and no `public_key_pem`".into());
        }
        _ => return Err("a public-key algorithm needs `public_key_pem` and no `secret`".into()),
    };
    Ok(VerifyKey {
        kid: key.kid.clone(),
        algorithms: vec![key.algorithm],
        key: decoding,
    })
}

/// The JOSE header: `alg` (any string, judged by the caller, so `none` gets a clear answer),
/// `kid`, and no `crit` (no extension is understood, so RFC 7515 says refuse).
fn parse_header(token: &str) -> Result<TokenHeader, Refusal> {
    let malformed =
        |what: &str| Refusal::unauthorized("invalid_token", format!("malformed token: {what}"));
    let mut parts = token.split('.');
    let (Some(head), Some(_), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(malformed("a JWS has three dot-separated parts"));
    };
    let bytes = URL_SAFE_NO_PAD
        .decode(head)
        .map_err(|_| malformed("the header is not base64url"))?;
    let Ok(Value::Object(header)) = serde_json::from_slice::<Value>(&bytes) else {
        return Err(malformed("the header is not a JSON object"));
    };
    if header.contains_key("crit") {
        return Err(Refusal::unauthorized(
            "invalid_token",
            "the token has critical header extensions this gateway does not understand",
        ));
    }
    let Some(Value::String(alg)) = header.get("alg") else {
        return Err(malformed("the header has no `alg`"));
    };
    let kid = match header.get("kid") {
        None => None,
        Some(Value::String(kid)) => Some(kid.clone()),
        Some(_) => return Err(malformed("`kid` is not a string")),
    };
    Ok(TokenHeader {
        alg: alg.clone(),
        kid,
    })
}

/// Verifies `token` with `key` for exactly `alg`. `Ok(None)`: the signature does not match
/// this key (try the next); `Err`: the token itself is malformed.
fn try_key(
    token: &str,
    alg: JwtAlgorithm,
    key: &VerifyKey,
) -> Result<Option<Map<String, Value>>, Refusal> {
    let mut validation = Validation::new(library_algorithm(alg));
    // The library reads the system clock; time claims are checked against the request's.
    validation.required_spec_claims.clear();
    validation.validate_exp = false;
    validation.validate_nbf = false;
    validation.validate_aud = false;
    validation.leeway = 0;
    match jsonwebtoken::decode::<Value>(token, &key.key, &validation) {
        Ok(data) => match data.claims {
            Value::Object(claims) => Ok(Some(claims)),
            _ => Err(Refusal::unauthorized(
                "invalid_token",
                "the token's claims are not a JSON object",
            )),
        },
        Err(e) => {
            use jsonwebtoken::errors::ErrorKind;
            match e.kind() {
                ErrorKind::InvalidSignature
                | ErrorKind::InvalidKeyFormat
                | ErrorKind::InvalidAlgorithm
                | ErrorKind::InvalidRsaKey(_)
                | ErrorKind::InvalidEcdsaKey
                | ErrorKind::InvalidEddsaKey
                | ErrorKind::UnsupportedAlgorithm => Ok(None),
                _ => Err(Refusal::unauthorized(
                    "invalid_token",
                    "the token is malformed",
                )),
            }
        }
    }
}

impl JwtAuth {
    /// The verdict when it is given without waiting: every refusal before verification, and
    /// a token verified before. `Err` carries a token to verify first.
    fn answer_now(&self, ctx: &mut RequestCtx<'_>) -> Result<Verdict, String> {
        // Claim headers are ours to set: whatever the client sent under those names goes,
        // even when the token lacks the claim.
        for (_, header) in &self.claims_to_headers {
            ctx.headers.remove(header);
        }
        let Some(token) = credentials::find(&self.sources, ctx) else {
            return Ok(self.answer(Err(Refusal::unauthorized(
                "missing_token",
                "a bearer token is required",
            ))));
        };
        if token.len() > MAX_TOKEN_LEN {
            return Ok(self.answer(Err(Refusal::unauthorized(
                "invalid_token",
                "the token is too long",
            ))));
        }
        // A token this policy verified before passed the header, algorithm and signature
        // checks then; the same bytes pass them again, so a hit is answered without waiting.
        let cached = self
            .verified
            .get::<str>(token.as_ref())
            .map(|hit| hit.clone());
        if let Some(verified) = cached {
            return Ok(self.answer(self.admit(&verified, ctx)));
        }
        Err(token.into_owned())
    }
}

impl Plugin for JwtAuth {
    fn name(&self) -> &str {
        &self.name
    }

    fn phase(&self) -> Phase {
        Phase::Authn
    }

    fn on_request<'a>(&'a self, ctx: &'a mut RequestCtx<'_>) -> Step<'a> {
        let token = match self.answer_now(ctx) {
            Ok(verdict) => return Step::Done(verdict),
            Err(token) => token,
        };
        Step::Wait(Box::pin(async move {
            let admitted = match self.verify_token(&token).await {
                Ok(verified) => self.admit(&verified, ctx),
                Err(refusal) => Err(refusal),
            };
            self.answer(admitted)
        }))
    }

    fn verdict_now(&self, ctx: &mut RequestCtx<'_>) -> Option<Verdict> {
        self.answer_now(ctx).ok()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::net::SocketAddr;
    use std::sync::OnceLock;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::{Duration, UNIX_EPOCH};

    use aws_lc_rs::encoding::AsDer;
    use aws_lc_rs::signature::{
        ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, Ed25519KeyPair, KeyPair,
    };
    use base64::engine::general_purpose::STANDARD;
    use fleetgate_shared::model::{Jwks, JwtKey};
    use http::{HeaderMap, Method};
    use jsonwebtoken::jwk::Jwk;
    use jsonwebtoken::{EncodingKey, Header};
    use serde_json::json;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;
    use crate::context::ConsumerEntry;
    use fleetgate_shared::model::TokenSource;

    const SECRET: &str = "a-test-hs256-secret-of-at-least-32-bytes";
    const NOW: u64 = 1_800_000_000;

    fn pem(tag: &str, der: &[u8]) -> String {
        let b64 = STANDARD.encode(der);
        let mut out = format!("-----BEGIN {tag}-----\n");
        for line in b64.as_bytes().chunks(64) {
            out.push_str(std::str::from_utf8(line).unwrap());
            out.push('\n');
        }
        out.push_str(&format!("-----END {tag}-----\n"));
        out
    }

    /// A private key (PKCS#8 PEM) and its public key (SPKI PEM).
    struct TestKey {
        private_pem: String,
        public_pem: String,
    }

    /// RSA generation takes a moment: one key per test binary.
    fn rsa() -> &'static TestKey {
        static KEY: OnceLock<TestKey> = OnceLock::new();
        KEY.get_or_init(|| {
            let pair = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).unwrap();
            TestKey {
                private_pem: pem("PRIVATE KEY", pair.as_der().unwrap().as_ref()),
                public_pem: pem("PUBLIC KEY", pair.public_key().as_der().unwrap().as_ref()),
            }
        })
    }

    fn ec() -> TestKey {
        let pair = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING).unwrap();
        TestKey {
            private_pem: pem("PRIVATE KEY", pair.to_pkcs8v1().unwrap().as_ref()),
            public_pem: pem("PUBLIC KEY", pair.public_key().as_der().unwrap().as_ref()),
        }
    }

    fn ed() -> TestKey {
        let pair = Ed25519KeyPair::generate().unwrap();
        TestKey {
            private_pem: pem("PRIVATE KEY", pair.to_pkcs8().unwrap().as_ref()),
            public_pem: pem("PUBLIC KEY", pair.public_key().as_der().unwrap().as_ref()),
        }
    }

    fn encoding_key(alg: Algorithm, key: Option<&TestKey>) -> EncodingKey {
        match (alg, key) {
            (Algorithm::HS256, None) => EncodingKey::from_secret(SECRET.as_bytes()),
            (Algorithm::ES256, Some(k)) => {
                EncodingKey::from_ec_pem(k.private_pem.as_bytes()).unwrap()
            }
            (Algorithm::EdDSA, Some(k)) => {
                EncodingKey::from_ed_pem(k.private_pem.as_bytes()).unwrap()
            }
            (_, Some(k)) => EncodingKey::from_rsa_pem(k.private_pem.as_bytes()).unwrap(),
            _ => unreachable!(),
        }
    }

    fn token(alg: Algorithm, kid: Option<&str>, key: &EncodingKey, claims: Value) -> String {
        let mut header = Header::new(alg);
        header.kid = kid.map(str::to_owned);
        jsonwebtoken::encode(&header, &claims, key).unwrap()
    }

    /// Valid claims at NOW: expires in an hour, issued by `idp`, for `api`, subject `alice`.
    fn claims() -> Value {
        json!({
            "sub": "alice", "iss": "https://idp.example", "aud": "api",
            "exp": NOW + 3600, "nbf": NOW - 10, "tenant": "t-42", "admin": true, "level": 3
        })
    }

    fn consumers() -> Arc<Consumers> {
        let mut consumers = Consumers::default();
        for (name, subject) in [("alice-co", "alice"), ("bob-co", "bob")] {
            let entry = Arc::new(ConsumerEntry::new(
                name.into(),
                &BTreeMap::new(),
                BTreeMap::new(),
            ));
            consumers
                .by_jwt_subject
                .insert(subject.into(), entry.clone());
            consumers.by_name.insert(name.into(), entry);
        }
        Arc::new(consumers)
    }

    fn hs_config() -> Config {
        Config {
            algorithms: vec![JwtAlgorithm::HS256],
            keys: vec![JwtKey {
                kid: Some("hs-1".into()),
                algorithm: JwtAlgorithm::HS256,
                secret: Some(SECRET.into()),
                public_key_pem: None,
            }],
            jwks: None,
            issuers: vec!["https://idp.example".into()],
            audiences: vec!["api".into(), "other-api".into()],
            clock_skew: fleetgate_shared::Duration::from_secs(60),
            token_from: vec![
                TokenSource::Header {
                    name: "authorization".into(),
                    prefix: Some("Bearer ".into()),
                },
                TokenSource::Query {
                    name: "access_token".into(),
                },
                TokenSource::Cookie {
                    name: "session".into(),
                },
            ],
            claims_to_headers: BTreeMap::from([
                ("tenant".into(), "x-tenant".into()),
                ("admin".into(), "x-admin".into()),
                ("level".into(), "x-level".into()),
                ("missing".into(), "x-missing".into()),
            ]),
            consumer_claim: Some("sub".into()),
            consumers: vec![],
        }
    }

    fn public_key_config(alg: JwtAlgorithm, kid: &str, public_pem: &str) -> Config {
        Config {
            algorithms: vec![alg],
            keys: vec![JwtKey {
                kid: Some(kid.into()),
                algorithm: alg,
                secret: None,
                public_key_pem: Some(public_pem.into()),
            }],
            ..hs_config()
        }
    }

    fn plugin(config: &Config) -> JwtAuth {
        JwtAuth::build("jwt", config, &consumers(), &PolicyState::default()).unwrap()
    }

    fn ctx_with(headers: &[(&str, &str)], uri: &str, now: u64) -> RequestCtx<'static> {
        let mut map = HeaderMap::new();
        for (k, v) in headers {
            map.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        let mut ctx = RequestCtx::new(
            Method::GET,
            uri.parse().unwrap(),
            map,
            "127.0.0.1:7".parse().unwrap(),
            true,
        );
        ctx.set_now(UNIX_EPOCH + Duration::from_secs(now));
        ctx
    }

    fn bearer(token: &str) -> RequestCtx<'static> {
        ctx_with(&[("authorization", &format!("Bearer {token}"))], "/", NOW)
    }

    /// (status, error code) of a verdict; 200 and "" for Continue.
    fn outcome(verdict: Verdict) -> (StatusCode, String) {
        match verdict {
            Verdict::Continue => (StatusCode::OK, String::new()),
            Verdict::Respond(r) => {
                let body: Value = serde_json::from_slice(r.body()).unwrap();
                (r.status(), body["error"].as_str().unwrap().to_owned())
            }
        }
    }

    fn hs_token(claims: Value) -> String {
        token(
            Algorithm::HS256,
            Some("hs-1"),
            &encoding_key(Algorithm::HS256, None),
            claims,
        )
    }

    /// Runs a bearer token through the plugin on a throwaway runtime (proptest cases are sync).
    fn verdict_for(p: &JwtAuth, token: &str) -> (StatusCode, String) {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let mut c = ctx_with(&[("authorization", &format!("Bearer {token}"))], "/", NOW);
        runtime.block_on(async { outcome(p.on_request(&mut c).await) })
    }

    /// Everything a request's answer consists of: status, error code, the consumer named and
    /// the claim headers set.
    type Answer = (StatusCode, String, Option<String>, Vec<Option<String>>);

    /// Runs a bearer token through the plugin at `now` on a throwaway runtime.
    fn answer_at(p: &JwtAuth, token: &str, now: u64) -> Answer {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let mut c = ctx_with(&[("authorization", &format!("Bearer {token}"))], "/", now);
        let (status, code) = runtime.block_on(async { outcome(p.on_request(&mut c).await) });
        let headers = ["x-tenant", "x-admin", "x-level"]
            .iter()
            .map(|h| c.headers.get(*h).map(|v| v.to_str().unwrap().to_owned()))
            .collect();
        (status, code, c.consumer.map(|c| c.name.clone()), headers)
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]

        /// A token remembered from an earlier request gets, at any later time, exactly the
        /// answer a plugin that never saw it gives: the cache keeps what depends on the token
        /// and nothing that depends on the clock.
        #[test]
        fn a_remembered_token_is_answered_as_a_fresh_one_at_any_time(
            // Mostly usable claims, so that the clock decides most cases.
            exp in proptest::option::weighted(0.9, -7200i64..7200),
            exp_as_text in proptest::bool::weighted(0.1),
            nbf in proptest::option::of(-7200i64..7200),
            iss in proptest::sample::select(vec![
                "https://idp.example", "https://idp.example", "https://idp.example",
                "https://elsewhere", "",
            ]),
            aud in 0u8..6,
            sub in proptest::sample::select(vec!["alice", "bob", "carol", ""]),
            allow_only_alice in proptest::prelude::any::<bool>(),
            first_at in -7200i64..7200,
            later_at in -7200i64..7200,
        ) {
            let mut claims = json!({ "tenant": "t-7", "admin": false, "level": 2 });
            let at = |offset: i64| NOW.checked_add_signed(offset).unwrap();
            if let Some(exp) = exp {
                claims["exp"] = if exp_as_text { json!(at(exp).to_string()) } else { json!(at(exp)) };
            }
            if let Some(nbf) = nbf {
                claims["nbf"] = json!(at(nbf));
            }
            if !iss.is_empty() {
                claims["iss"] = json!(iss);
            }
            match aud {
                0 => {}
                1 => claims["aud"] = json!("nope"),
                2 | 3 => claims["aud"] = json!(["x", "other-api"]),
                _ => claims["aud"] = json!("api"),
            }
            if !sub.is_empty() {
                claims["sub"] = json!(sub);
            }
            let mut config = hs_config();
            if allow_only_alice {
                config.consumers = vec!["alice-co".into()];
            }
            let token = hs_token(claims);
            let remembering = plugin(&config);
            answer_at(&remembering, &token, at(first_at));
            proptest::prop_assert_eq!(remembering.verified.len(), 1, "a verified token is remembered");
            let remembered = answer_at(&remembering, &token, at(later_at));
            let fresh = answer_at(&plugin(&config), &token, at(later_at));
            proptest::prop_assert_eq!(remembered, fresh);
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(128))]

        /// Whatever a client puts after `Bearer`, the plugin answers 401 with a code, never
        /// a panic and never a pass.
        #[test]
        fn arbitrary_bearer_tokens_are_refused(token in "[ -~]{0,200}") {
            let (status, code) = verdict_for(&plugin(&hs_config()), &token);
            proptest::prop_assert_eq!(status, StatusCode::UNAUTHORIZED, "{}", code);
            proptest::prop_assert!(!code.is_empty());
        }

        /// Three base64url parts of arbitrary JSON-ish bytes: the shapes that reach the JSON
        /// and signature code.
        #[test]
        fn tokens_of_three_arbitrary_parts_are_refused(
            header in "[{}\":,a-z0-9 ]{0,60}",
            claims in "[{}\":,a-z0-9 ]{0,60}",
            signature in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..80),
        ) {
            let token = format!(
                "{}.{}.{}",
                URL_SAFE_NO_PAD.encode(header),
                URL_SAFE_NO_PAD.encode(claims),
                URL_SAFE_NO_PAD.encode(signature)
            );
            let (status, _) = verdict_for(&plugin(&hs_config()), &token);
            proptest::prop_assert_eq!(status, StatusCode::UNAUTHORIZED);
        }

        /// A JWKS document is fetched from a URL the operator names but served by someone
        /// else: any bytes give keys or an error.
        #[test]
        fn any_jwks_document_parses_or_is_refused(body in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..400)) {
            let _ = jwks::parse(&body);
        }

        #[test]
        fn jwks_shaped_documents_parse_or_are_refused(
            kty in "(RSA|EC|OKP|oct|x)",
            crv in "(P-256|P-384|Ed25519|x)",
            n in "[A-Za-z0-9_-]{0,40}",
            x in "[A-Za-z0-9_-]{0,40}",
        ) {
            let doc = serde_json::json!({"keys": [{"kty": kty, "crv": crv, "n": n, "e": "AQAB", "x": x, "y": x, "kid": "k", "alg": "RS256"}]});
            let _ = jwks::parse(doc.to_string().as_bytes());
        }
    }

    #[tokio::test]
    async fn a_valid_token_passes_maps_the_consumer_and_sets_claim_headers() {
        let p = plugin(&hs_config());
        let mut c = ctx_with(
            &[
                ("authorization", &format!("Bearer {}", hs_token(claims()))),
                ("x-tenant", "spoofed"),
                ("x-missing", "spoofed"),
            ],
            "/",
            NOW,
        );
        assert_eq!(outcome(p.on_request(&mut c).await).0, StatusCode::OK);
        assert_eq!(c.consumer.as_ref().unwrap().name, "alice-co");
        assert_eq!(c.headers.get("x-tenant").unwrap(), "t-42");
        assert_eq!(c.headers.get("x-admin").unwrap(), "true");
        assert_eq!(c.headers.get("x-level").unwrap(), "3");
        assert!(
            c.headers.get("x-missing").is_none(),
            "a client-sent claim header is removed even when the claim is absent"
        );
    }

    #[tokio::test]
    async fn a_verified_token_is_served_from_the_cache_but_its_claims_are_checked_every_time() {
        let p = plugin(&hs_config());
        let token = hs_token(claims());
        assert_eq!(
            outcome(p.on_request(&mut bearer(&token)).await).0,
            StatusCode::OK
        );
        assert_eq!(p.verified.len(), 1, "the signature check is remembered");
        let mut again = bearer(&token);
        let step = p.on_request(&mut again);
        let answered_at_once = matches!(step, Step::Done(Verdict::Continue));
        drop(step);
        assert!(
            answered_at_once,
            "a remembered token is admitted without waiting"
        );
        assert_eq!(
            again.consumer.as_ref().map(|c| c.name.as_str()),
            Some("alice-co"),
            "a remembered token still names its consumer"
        );
        assert_eq!(
            again.headers.get("x-tenant").unwrap(),
            "t-42",
            "and still sets its claim headers"
        );
        // The cached token expires like any other: exp is checked against each request's clock.
        let mut later = ctx_with(
            &[("authorization", &format!("Bearer {token}"))],
            "/",
            NOW + 7200,
        );
        assert_eq!(outcome(p.on_request(&mut later).await).1, "token_expired");
        // A forged token never reaches the cache.
        let forged = format!("{}x", &token[..token.len() - 1]);
        assert_ne!(
            outcome(p.on_request(&mut bearer(&forged)).await).0,
            StatusCode::OK
        );
        assert_eq!(p.verified.len(), 1);
    }

    #[tokio::test]
    async fn the_token_is_read_from_the_first_present_source() {
        let p = plugin(&hs_config());
        let t = hs_token(claims());
        let mut c = ctx_with(&[], &format!("/x?access_token={t}"), NOW);
        assert_eq!(outcome(p.on_request(&mut c).await).0, StatusCode::OK);
        let mut c = ctx_with(&[("cookie", &format!("a=b; session={t}"))], "/", NOW);
        assert_eq!(outcome(p.on_request(&mut c).await).0, StatusCode::OK);
        // The header comes first: a bad header token is not rescued by a good cookie.
        let mut c = ctx_with(
            &[
                ("authorization", "Bearer not.a.token"),
                ("cookie", &format!("session={t}")),
            ],
            "/",
            NOW,
        );
        assert_eq!(
            outcome(p.on_request(&mut c).await).0,
            StatusCode::UNAUTHORIZED
        );
    }

    #[tokio::test]
    async fn a_missing_token_is_401_with_a_bearer_challenge() {
        let p = plugin(&hs_config());
        let mut c = ctx_with(&[], "/", NOW);
        let Verdict::Respond(r) = p.on_request(&mut c).await else {
            panic!("passed without a token");
        };
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(
            r.headers().get(header::WWW_AUTHENTICATE).unwrap(),
            "Bearer realm=\"jwt\""
        );
        let mut c = bearer("a.b.c");
        let Verdict::Respond(r) = p.on_request(&mut c).await else {
            panic!("passed with garbage");
        };
        assert_eq!(
            r.headers().get(header::WWW_AUTHENTICATE).unwrap(),
            "Bearer realm=\"jwt\", error=\"invalid_token\""
        );
    }

    #[tokio::test]
    async fn expired_and_not_yet_valid_tokens_are_refused_with_skew_against_the_request_clock() {
        let p = plugin(&hs_config());
        let mut expired = claims();
        expired["exp"] = json!(NOW - 61);
        assert_eq!(
            outcome(p.on_request(&mut bearer(&hs_token(expired.clone()))).await),
            (StatusCode::UNAUTHORIZED, "token_expired".into())
        );
        // Within the 60 s skew it still passes; the request clock is what counts.
        let mut c = ctx_with(&[], "/", NOW - 2);
        c.headers.insert(
            header::AUTHORIZATION,
            format!("Bearer {}", hs_token(expired)).parse().unwrap(),
        );
        assert_eq!(outcome(p.on_request(&mut c).await).0, StatusCode::OK);

        let mut early = claims();
        early["nbf"] = json!(NOW + 61);
        assert_eq!(
            outcome(p.on_request(&mut bearer(&hs_token(early.clone()))).await),
            (StatusCode::UNAUTHORIZED, "token_not_yet_valid".into())
        );
        early["nbf"] = json!(NOW + 59);
        assert_eq!(
            outcome(p.on_request(&mut bearer(&hs_token(early))).await).0,
            StatusCode::OK
        );

        let mut forever = claims();
        forever.as_object_mut().unwrap().remove("exp");
        assert_eq!(
            outcome(p.on_request(&mut bearer(&hs_token(forever))).await).1,
            "invalid_claims"
        );
    }

    #[tokio::test]
    async fn wrong_issuer_and_audience_are_refused() {
        let p = plugin(&hs_config());
        let mut c = claims();
        c["iss"] = json!("https://evil.example");
        assert_eq!(
            outcome(p.on_request(&mut bearer(&hs_token(c))).await).1,
            "invalid_issuer"
        );
        let mut c = claims();
        c.as_object_mut().unwrap().remove("iss");
        assert_eq!(
            outcome(p.on_request(&mut bearer(&hs_token(c))).await).1,
            "invalid_issuer"
        );
        let mut c = claims();
        c["aud"] = json!("someone-else");
        assert_eq!(
            outcome(p.on_request(&mut bearer(&hs_token(c))).await).1,
            "invalid_audience"
        );
        let mut c = claims();
        c["aud"] = json!(["someone-else", "other-api"]);
        assert_eq!(
            outcome(p.on_request(&mut bearer(&hs_token(c))).await).0,
            StatusCode::OK
        );
    }

    #[tokio::test]
    async fn alg_none_and_unlisted_algorithms_are_refused() {
        let p = plugin(&hs_config());
        let head = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#);
        let body = URL_SAFE_NO_PAD.encode(claims().to_string());
        for unsigned in [format!("{head}.{body}."), format!("{head}.{body}.c2ln")] {
            assert_eq!(
                outcome(p.on_request(&mut bearer(&unsigned)).await),
                (StatusCode::UNAUTHORIZED, "algorithm_not_allowed".into())
            );
        }
        let hs384 = token(
            Algorithm::HS384,
            Some("hs-1"),
            &EncodingKey::from_secret(SECRET.as_bytes()),
            claims(),
        );
        assert_eq!(
            outcome(p.on_request(&mut bearer(&hs384)).await).1,
            "algorithm_not_allowed"
        );
    }

    #[tokio::test]
    async fn an_hs256_token_signed_with_the_rsa_public_key_is_refused() {
        // The classic confusion attack: the attacker knows the public key and uses its PEM
        // text as an HMAC secret, hoping the verifier feeds the same bytes to HMAC.
        let key = rsa();
        let p = plugin(&public_key_config(
            JwtAlgorithm::RS256,
            "rs-1",
            &key.public_pem,
        ));
        let forged = token(
            Algorithm::HS256,
            Some("rs-1"),
            &EncodingKey::from_secret(key.public_pem.as_bytes()),
            claims(),
        );
        assert_eq!(
            outcome(p.on_request(&mut bearer(&forged)).await),
            (StatusCode::UNAUTHORIZED, "algorithm_not_allowed".into())
        );
        // And the genuine RS256 token passes.
        let genuine = token(
            Algorithm::RS256,
            Some("rs-1"),
            &encoding_key(Algorithm::RS256, Some(key)),
            claims(),
        );
        assert_eq!(
            outcome(p.on_request(&mut bearer(&genuine)).await).0,
            StatusCode::OK
        );
        // Even if a key were reached with a foreign algorithm, it refuses to verify.
        let rsa_key = &p.inline[0];
        assert!(!rsa_key.fits(JwtAlgorithm::HS256, Some("rs-1")));
        assert!(
            try_key(&forged, JwtAlgorithm::HS256, rsa_key)
                .unwrap()
                .is_none()
        );
    }

    #[tokio::test]
    async fn an_unknown_kid_or_a_foreign_signature_is_refused() {
        let p = plugin(&hs_config());
        let other = token(
            Algorithm::HS256,
            Some("hs-2"),
            &EncodingKey::from_secret(SECRET.as_bytes()),
            claims(),
        );
        assert_eq!(
            outcome(p.on_request(&mut bearer(&other)).await),
            (StatusCode::UNAUTHORIZED, "unknown_kid".into())
        );
        let wrong = token(
            Algorithm::HS256,
            Some("hs-1"),
            &EncodingKey::from_secret(b"another-secret-of-at-least-32-bytes!!"),
            claims(),
        );
        assert_eq!(
            outcome(p.on_request(&mut bearer(&wrong)).await).1,
            "invalid_signature"
        );
        // A tampered payload under a valid signature.
        let good = hs_token(claims());
        let mut parts: Vec<&str> = good.split('.').collect();
        let mut evil = claims();
        evil["sub"] = json!("bob");
        let evil = URL_SAFE_NO_PAD.encode(evil.to_string());
        parts[1] = &evil;
        assert_eq!(
            outcome(p.on_request(&mut bearer(&parts.join("."))).await).1,
            "invalid_signature"
        );
    }

    #[tokio::test]
    async fn es256_ps256_and_eddsa_keys_verify_their_own_algorithm() {
        let ec = ec();
        let p = plugin(&public_key_config(
            JwtAlgorithm::ES256,
            "ec-1",
            &ec.public_pem,
        ));
        let t = token(
            Algorithm::ES256,
            Some("ec-1"),
            &encoding_key(Algorithm::ES256, Some(&ec)),
            claims(),
        );
        assert_eq!(
            outcome(p.on_request(&mut bearer(&t)).await).0,
            StatusCode::OK
        );

        let ed = ed();
        let p = plugin(&public_key_config(
            JwtAlgorithm::EdDSA,
            "ed-1",
            &ed.public_pem,
        ));
        let t = token(
            Algorithm::EdDSA,
            Some("ed-1"),
            &encoding_key(Algorithm::EdDSA, Some(&ed)),
            claims(),
        );
        assert_eq!(
            outcome(p.on_request(&mut bearer(&t)).await).0,
            StatusCode::OK
        );

        let rsa = rsa();
        let mut config = public_key_config(JwtAlgorithm::PS256, "ps-1", &rsa.public_pem);
        config.algorithms = vec![JwtAlgorithm::PS256, JwtAlgorithm::RS256];
        let p = plugin(&config);
        let ps = token(
            Algorithm::PS256,
            Some("ps-1"),
            &encoding_key(Algorithm::PS256, Some(rsa)),
            claims(),
        );
        assert_eq!(
            outcome(p.on_request(&mut bearer(&ps)).await).0,
            StatusCode::OK
        );
        // The key is configured for PS256 only: an RS256 token with it finds no key.
        let rs = token(
            Algorithm::RS256,
            Some("ps-1"),
            &encoding_key(Algorithm::RS256, Some(rsa)),
            claims(),
        );
        assert_eq!(
            outcome(p.on_request(&mut bearer(&rs)).await).1,
            "unknown_kid"
        );
    }

    #[tokio::test]
    async fn the_allow_list_admits_only_listed_consumers() {
        let mut config = hs_config();
        config.consumers = vec!["bob-co".into()];
        let p = plugin(&config);
        let mut c = bearer(&hs_token(claims()));
        assert_eq!(
            outcome(p.on_request(&mut c).await),
            (StatusCode::FORBIDDEN, "consumer_not_allowed".into())
        );
        assert!(c.consumer.is_none());
        let mut bob = claims();
        bob["sub"] = json!("bob");
        let mut c = bearer(&hs_token(bob));
        assert_eq!(outcome(p.on_request(&mut c).await).0, StatusCode::OK);
        assert_eq!(c.consumer.unwrap().name, "bob-co");
        // A valid token whose subject is no consumer is refused by an allow-list...
        let mut nobody = claims();
        nobody["sub"] = json!("carol");
        assert_eq!(
            outcome(p.on_request(&mut bearer(&hs_token(nobody.clone()))).await).0,
            StatusCode::FORBIDDEN
        );
        // ...and passes without a consumer when there is none.
        let p = plugin(&hs_config());
        let mut c = bearer(&hs_token(nobody));
        assert_eq!(outcome(p.on_request(&mut c).await).0, StatusCode::OK);
        assert!(c.consumer.is_none());
    }

    /// A JWKS endpoint on a real socket: serves whatever document it currently holds and
    /// counts fetches; `stop` closes it.
    struct JwksServer {
        addr: SocketAddr,
        doc: Arc<parking_lot::Mutex<String>>,
        fetches: Arc<AtomicUsize>,
        task: tokio::task::JoinHandle<()>,
    }

    impl JwksServer {
        async fn start(doc: Value) -> Self {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let doc = Arc::new(parking_lot::Mutex::new(doc.to_string()));
            let fetches = Arc::new(AtomicUsize::new(0));
            let task = {
                let (doc, fetches) = (doc.clone(), fetches.clone());
                tokio::spawn(async move {
                    loop {
                        let Ok((mut stream, _)) = listener.accept().await else {
                            continue;
                        };
                        let mut head = Vec::new();
                        let mut buf = [0u8; 1024];
                        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                            match stream.read(&mut buf).await {
                                Ok(0) | Err(_) => break,
                                Ok(n) => head.extend_from_slice(&buf[..n]),
                            }
                        }
                        fetches.fetch_add(1, Ordering::SeqCst);
                        let body = doc.lock().clone();
                        let response = format!(
                            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                            body.len()
                        );
                        let _ = stream.write_all(response.as_bytes()).await;
                        let _ = stream.shutdown().await;
                    }
                })
            };
            Self {
                addr,
                doc,
                fetches,
                task,
            }
        }

        fn serve(&self, doc: Value) {
            *self.doc.lock() = doc.to_string();
        }

        fn fetches(&self) -> usize {
            self.fetches.load(Ordering::SeqCst)
        }
    }

    impl Drop for JwksServer {
        fn drop(&mut self) {
            self.task.abort();
        }
    }

    fn jwk(key: &TestKey, alg: Algorithm, kid: &str) -> Value {
        let mut jwk = Jwk::from_encoding_key(&encoding_key(alg, Some(key)), alg).unwrap();
        jwk.common.key_id = Some(kid.into());
        serde_json::to_value(jwk).unwrap()
    }

    fn jwks_config(url: String, alg: JwtAlgorithm) -> Config {
        Config {
            algorithms: vec![alg],
            keys: vec![],
            jwks: Some(Jwks {
                url,
                refresh: fleetgate_shared::Duration::from_secs(300),
            }),
            ..hs_config()
        }
    }

    #[tokio::test]
    async fn a_jwks_key_rotation_is_picked_up_on_the_first_token_with_the_new_kid() {
        let (old, new) = (ec(), ec());
        let server =
            JwksServer::start(json!({"keys": [jwk(&old, Algorithm::ES256, "k-old")]})).await;
        let state = PolicyState::default();
        let config = jwks_config(
            format!("http://{}/jwks.json", server.addr),
            JwtAlgorithm::ES256,
        );
        let p = JwtAuth::build("jwt", &config, &consumers(), &state).unwrap();
        let sign = |key: &TestKey, kid: &str| {
            token(
                Algorithm::ES256,
                Some(kid),
                &encoding_key(Algorithm::ES256, Some(key)),
                claims(),
            )
        };

        // The first request waits for the first load.
        assert_eq!(
            outcome(p.on_request(&mut bearer(&sign(&old, "k-old"))).await).0,
            StatusCode::OK
        );
        assert_eq!(server.fetches(), 1);
        assert_eq!(
            outcome(p.on_request(&mut bearer(&sign(&old, "k-old"))).await).0,
            StatusCode::OK
        );
        assert_eq!(server.fetches(), 1, "a fresh set is served from the cache");
        assert_eq!(
            p.verified.len(),
            0,
            "a token a JWKS key verified is not remembered: the key can leave the set"
        );

        // The identity provider rotates: the new key is published, the old one withdrawn.
        server.serve(json!({"keys": [jwk(&new, Algorithm::ES256, "k-new")]}));
        // Within the refetch interval an unknown kid does not cause a fetch...
        assert_eq!(
            outcome(p.on_request(&mut bearer(&sign(&new, "k-new"))).await),
            (StatusCode::UNAUTHORIZED, "unknown_kid".into())
        );
        assert_eq!(server.fetches(), 1, "unknown kids are rate-limited");
        // ...after it, the first token with the new kid triggers one and passes.
        p.jwks.as_ref().unwrap().set_min_refetch(Duration::ZERO);
        assert_eq!(
            outcome(p.on_request(&mut bearer(&sign(&new, "k-new"))).await).0,
            StatusCode::OK
        );
        assert_eq!(server.fetches(), 2);
        // The withdrawn key no longer verifies.
        assert_eq!(
            outcome(p.on_request(&mut bearer(&sign(&old, "k-old"))).await).1,
            "unknown_kid"
        );

        // A new config version of the policy keeps the fetched set: no refetch.
        let fetches = server.fetches();
        let next = JwtAuth::build("jwt", &config, &consumers(), &state).unwrap();
        assert_eq!(
            outcome(next.on_request(&mut bearer(&sign(&new, "k-new"))).await).0,
            StatusCode::OK
        );
        assert_eq!(server.fetches(), fetches);
    }

    #[tokio::test]
    async fn a_stale_jwks_keeps_serving_while_its_endpoint_is_down() {
        let key = ec();
        let server = JwksServer::start(json!({"keys": [jwk(&key, Algorithm::ES256, "k1")]})).await;
        let mut config = jwks_config(
            format!("http://{}/jwks.json", server.addr),
            JwtAlgorithm::ES256,
        );
        config.jwks.as_mut().unwrap().refresh = fleetgate_shared::Duration::from_millis(0);
        let p = plugin(&config);
        p.jwks.as_ref().unwrap().set_min_refetch(Duration::ZERO);
        let t = token(
            Algorithm::ES256,
            Some("k1"),
            &encoding_key(Algorithm::ES256, Some(&key)),
            claims(),
        );
        assert_eq!(
            outcome(p.on_request(&mut bearer(&t)).await).0,
            StatusCode::OK
        );
        drop(server);
        // The set is stale at once (refresh 0): each request starts a background refetch that
        // fails, and the cached set keeps verifying.
        for _ in 0..3 {
            assert_eq!(
                outcome(p.on_request(&mut bearer(&t)).await).0,
                StatusCode::OK
            );
        }
    }

    #[tokio::test]
    async fn without_a_loaded_jwks_requests_fail_closed_with_503() {
        let dead = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let p = plugin(&jwks_config(
            format!("http://{dead}/jwks.json"),
            JwtAlgorithm::ES256,
        ));
        let key = ec();
        let t = token(
            Algorithm::ES256,
            Some("k1"),
            &encoding_key(Algorithm::ES256, Some(&key)),
            claims(),
        );
        let Verdict::Respond(r) = p.on_request(&mut bearer(&t)).await else {
            panic!("passed without keys");
        };
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(r.headers().get(header::RETRY_AFTER).unwrap(), "10");
        // A request without a token is still a 401, whatever the key set.
        assert_eq!(
            outcome(p.on_request(&mut ctx_with(&[], "/", NOW)).await).0,
            StatusCode::UNAUTHORIZED
        );
    }

    #[test]
    fn jwks_parsing_keeps_only_usable_signing_keys() {
        let ec = ec();
        let mut enc = jwk(&ec, Algorithm::ES256, "enc");
        enc["use"] = json!("enc");
        let mut mislabelled = jwk(&ec, Algorithm::ES256, "wrong-alg");
        mislabelled["alg"] = json!("RS256");
        let doc = json!({"keys": [
            jwk(&ec, Algorithm::ES256, "good"),
            enc,
            mislabelled,
            {"kty": "oct", "k": "c2VjcmV0", "kid": "oct"},
            {"kty": "weird", "kid": "weird"},
        ]});
        let keys = jwks::parse(doc.to_string().as_bytes()).unwrap();
        assert_eq!(keys.len(), 1);
        assert_eq!(keys[0].kid.as_deref(), Some("good"));
        assert_eq!(keys[0].algorithms, [JwtAlgorithm::ES256]);
        assert!(jwks::parse(br#"{"keys": []}"#).is_err());
        assert!(jwks::parse(b"<html>").is_err());
    }

    #[test]
    fn mixing_hs_and_public_key_algorithms_or_bad_pems_fail_the_build() {
        let mut config = hs_config();
        config.algorithms.push(JwtAlgorithm::RS256);
        assert!(JwtAuth::build("jwt", &config, &consumers(), &PolicyState::default()).is_err());
        let config = public_key_config(
            JwtAlgorithm::RS256,
            "k",
            "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n",
        );
        let err =
            JwtAuth::build("jwt", &config, &consumers(), &PolicyState::default()).unwrap_err();
        assert!(err.starts_with("keys[0] (RS256)"), "{err}");
    }
}
