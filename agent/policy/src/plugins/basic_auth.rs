use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use aws_lc_rs::digest;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use fleetgate_shared::model::{BasicAuth as Config, Phase};
use fleetgate_shared::password;
use http::StatusCode;
use http::header::{self, HeaderValue};
use parking_lot::Mutex;
use tokio::sync::Semaphore;

use super::credentials;
use crate::context::{ConsumerEntry, RequestCtx, Verdict, reject};
use crate::plugin::{Plugin, Step};
use crate::set::Consumers;
use crate::state::PolicyState;

/// How long a verified (username, password) stays verified without another PBKDF2 run. The
/// cache key includes the stored hash, so a password change takes effect at once whatever
/// this is; it only bounds how long a removed entry's memory lingers.
const VERIFIED_TTL: Duration = Duration::from_secs(15 * 60);
/// Verified credentials kept per policy: far more than the users of an admin realm, small
/// enough (~80 bytes each) not to matter.
const CACHE_CAPACITY: usize = 16 * 1024;
const CACHE_SHARDS: usize = 16;

/// HTTP Basic authentication against the consumers' PBKDF2 hashes.
///
/// PBKDF2 at 600k iterations is ~100+ ms of CPU. It runs on tokio's blocking pool, at most
/// one per core per policy at a time (a flood of wrong passwords queues behind that instead
/// of occupying every blocking thread), and a successful verification is cached by
/// sha256(username, stored hash, password), so a returning caller costs one hash. Failures
/// are not cached: an attacker could otherwise fill the cache and evict real users. An unknown
/// username is checked against a dummy hash of the same cost, so response time does not tell
/// which usernames exist.
#[derive(Debug)]
pub struct BasicAuth {
    name: String,
    hide: bool,
    allow: Vec<String>,
    consumers: Arc<Consumers>,
    challenge: HeaderValue,
    cache: Arc<VerifiedCache>,
    dummy_hash: String,
}

impl BasicAuth {
    pub fn build(
        name: &str,
        config: &Config,
        consumers: &Arc<Consumers>,
        state: &PolicyState,
    ) -> Self {
        let realm = HeaderValue::from_str(&format!(
            "Basic realm=\"{}\", charset=\"UTF-8\"",
            config.realm
        ))
        .unwrap_or_else(|_| HeaderValue::from_static("Basic"));
        Self {
            name: name.to_owned(),
            hide: config.hide_credentials,
            allow: config.consumers.clone(),
            consumers: consumers.clone(),
            challenge: realm,
            cache: state.get_or_insert(name, "basic-auth-cache", VerifiedCache::new),
            dummy_hash: format!(
                "pbkdf2-sha256${}${}${}",
                password::DEFAULT_ITERATIONS,
                "5f".repeat(16),
                "00".repeat(32)
            ),
        }
    }

    fn unauthorized(&self, code: &str, message: &str) -> Verdict {
        Verdict::Respond(credentials::unauthorized(
            &self.name,
            code,
            message,
            &self.challenge,
        ))
    }

    async fn check(&self, ctx: &mut RequestCtx<'_>) -> Verdict {
        let Some(encoded) = basic_credentials(ctx) else {
            return self.unauthorized("missing_credentials", "HTTP Basic credentials are required");
        };
        let Some((username, password)) = decode(encoded) else {
            return self.unauthorized(
                "invalid_credentials",
                "the Basic credentials are not base64 of `username:password`",
            );
        };
        let user = self.consumers.by_basic_user.get(&username);
        let stored = user.map_or(self.dummy_hash.as_str(), |(hash, _)| hash.as_str());
        let key = cache_key(&username, stored, &password);
        let verified = self.cache.contains(&key) || {
            let Some(ok) = self.cache.verify(stored.to_owned(), password).await else {
                return Verdict::Respond(reject(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal_error",
                    "the password check did not complete",
                    &self.name,
                ));
            };
            ok && user.is_some()
        };
        let (true, Some((_, consumer))) = (verified, user) else {
            return self.unauthorized("invalid_credentials", "wrong username or password");
        };
        self.cache.insert(key);
        self.admit(ctx, consumer)
    }

    fn admit(&self, ctx: &mut RequestCtx<'_>, consumer: &Arc<ConsumerEntry>) -> Verdict {
        if !credentials::allowed(&self.allow, Some(consumer)) {
            return Verdict::Respond(credentials::forbidden(&self.name, Some(consumer)));
        }
        if self.hide {
            ctx.headers.remove(header::AUTHORIZATION);
        }
        ctx.consumer = Some(consumer.clone());
        Verdict::Continue
    }
}

/// The token of the first `Authorization: Basic <token>` header.
fn basic_credentials<'c>(ctx: &'c RequestCtx<'_>) -> Option<&'c str> {
    ctx.headers
        .get_all(header::AUTHORIZATION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|v| {
            let (scheme, token) = v.trim().split_once(' ')?;
            credentials::same_ignoring_case(scheme.as_bytes(), b"Basic").then(|| token.trim())
        })
}

/// `base64(username:password)` → (username, password). The password may contain `:`.
fn decode(token: &str) -> Option<(String, String)> {
    let bytes = STANDARD.decode(token).ok()?;
    let text = String::from_utf8(bytes).ok()?;
    let (user, pass) = text.split_once(':')?;
    Some((user.to_owned(), pass.to_owned()))
}

/// sha256 over the length-prefixed username, stored hash and password: no two different
/// triples share a key, and the cache never holds a password.
fn cache_key(username: &str, stored: &str, password: &str) -> [u8; 32] {
    let mut ctx = digest::Context::new(&digest::SHA256);
    for part in [username, stored, password] {
        ctx.update(&(part.len() as u64).to_be_bytes());
        ctx.update(part.as_bytes());
    }
    let mut key = [0u8; 32];
    key.copy_from_slice(ctx.finish().as_ref());
    key
}

/// Successful verifications of one policy, kept across config versions (in [`PolicyState`]),
/// and the limit on concurrent PBKDF2 runs.
#[derive(Debug)]
pub struct VerifiedCache {
    shards: Vec<Mutex<HashMap<[u8; 32], Instant>>>,
    pbkdf2: Semaphore,
    /// PBKDF2 runs so far (tests and metrics).
    runs: AtomicU64,
}

impl VerifiedCache {
    fn new() -> Self {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        Self {
            shards: (0..CACHE_SHARDS)
                .map(|_| Mutex::new(HashMap::new()))
                .collect(),
            pbkdf2: Semaphore::new(cores),
            runs: AtomicU64::new(0),
        }
    }

    fn shard(&self, key: &[u8; 32]) -> &Mutex<HashMap<[u8; 32], Instant>> {
        &self.shards[usize::from(key[0]) % self.shards.len()]
    }

    fn contains(&self, key: &[u8; 32]) -> bool {
        self.shard(key)
            .lock()
            .get(key)
            .is_some_and(|expires| *expires > Instant::now())
    }

    fn insert(&self, key: [u8; 32]) {
        let now = Instant::now();
        let mut shard = self.shard(&key).lock();
        if shard.len() >= CACHE_CAPACITY / CACHE_SHARDS && !shard.contains_key(&key) {
            shard.retain(|_, expires| *expires > now);
            if shard.len() >= CACHE_CAPACITY / CACHE_SHARDS {
                // Only successes are cached, so a full shard means many real users: start
                // over rather than scan for the oldest on every insert.
                shard.clear();
            }
        }
        shard.insert(key, now + VERIFIED_TTL);
    }

    /// Runs PBKDF2 on the blocking pool, at most one per core at a time. `None` if the
    /// blocking task failed.
    async fn verify(&self, stored: String, password: String) -> Option<bool> {
        let _permit = self.pbkdf2.acquire().await.ok()?;
        self.runs.fetch_add(1, Ordering::Relaxed);
        tokio::task::spawn_blocking(move || password::verify(&stored, &password))
            .await
            .ok()
    }

    /// How many PBKDF2 verifications ran.
    #[cfg(test)]
    fn runs(&self) -> u64 {
        self.runs.load(Ordering::Relaxed)
    }
}

impl Plugin for BasicAuth {
    fn name(&self) -> &str {
        &self.name
    }

    fn phase(&self) -> Phase {
        Phase::Authn
    }

    fn on_request<'a>(&'a self, ctx: &'a mut RequestCtx<'_>) -> Step<'a> {
        Step::Wait(Box::pin(self.check(ctx)))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::num::NonZeroU32;

    use http::{HeaderMap, Method};

    use super::*;

    /// Few iterations keep the tests fast; the cost is encoded in the hash itself.
    fn consumers() -> Arc<Consumers> {
        let mut consumers = Consumers::default();
        let iterations = NonZeroU32::new(1_000).unwrap();
        for (name, user, pass) in [("ops", "ops", "s3cret:with:colons"), ("sup", "sup", "pw")] {
            let entry = Arc::new(ConsumerEntry::new(
                name.into(),
                &BTreeMap::new(),
                BTreeMap::new(),
            ));
            consumers.by_basic_user.insert(
                user.into(),
                (password::hash(pass, b"saltsalt", iterations), entry),
            );
        }
        Arc::new(consumers)
    }

    fn plugin(state: &PolicyState, allow: &[&str]) -> BasicAuth {
        let config = Config {
            realm: "Admin area".into(),
            hide_credentials: true,
            consumers: allow.iter().map(|s| s.to_string()).collect(),
        };
        BasicAuth::build("basic", &config, &consumers(), state)
    }

    fn ctx(authorization: Option<String>) -> RequestCtx<'static> {
        let mut headers = HeaderMap::new();
        if let Some(value) = authorization {
            headers.insert(header::AUTHORIZATION, value.parse().unwrap());
        }
        RequestCtx::new(
            Method::GET,
            "/admin".parse().unwrap(),
            headers,
            "127.0.0.1:9".parse().unwrap(),
            true,
        )
    }

    fn basic(user: &str, pass: &str) -> Option<String> {
        Some(format!(
            "Basic {}",
            STANDARD.encode(format!("{user}:{pass}"))
        ))
    }

    fn status(verdict: &Verdict) -> StatusCode {
        match verdict {
            Verdict::Continue => StatusCode::OK,
            Verdict::Respond(r) => r.status(),
        }
    }

    #[tokio::test]
    async fn the_right_password_passes_names_the_consumer_and_is_hidden() {
        let state = PolicyState::default();
        let p = plugin(&state, &[]);
        let mut c = ctx(basic("ops", "s3cret:with:colons"));
        assert_eq!(status(&p.on_request(&mut c).await), StatusCode::OK);
        assert_eq!(c.consumer.as_ref().unwrap().name, "ops");
        assert!(c.headers.get(header::AUTHORIZATION).is_none());
    }

    #[tokio::test]
    async fn wrong_missing_and_malformed_credentials_are_401_with_the_realm() {
        let state = PolicyState::default();
        let p = plugin(&state, &[]);
        for auth in [
            basic("ops", "wrong"),
            basic("nobody", "pw"),
            None,
            Some("Basic !!!notbase64".into()),
            Some(format!("Basic {}", STANDARD.encode("no-colon"))),
            Some("Bearer abc".into()),
        ] {
            let mut c = ctx(auth.clone());
            let Verdict::Respond(response) = p.on_request(&mut c).await else {
                panic!("{auth:?} passed");
            };
            assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "{auth:?}");
            assert_eq!(
                response.headers().get(header::WWW_AUTHENTICATE).unwrap(),
                "Basic realm=\"Admin area\", charset=\"UTF-8\""
            );
            assert!(c.consumer.is_none());
        }
    }

    #[tokio::test]
    async fn a_verified_password_is_cached_across_config_versions_and_failures_are_not() {
        let state = PolicyState::default();
        let p = plugin(&state, &[]);
        for _ in 0..3 {
            let mut c = ctx(basic("sup", "pw"));
            assert_eq!(status(&p.on_request(&mut c).await), StatusCode::OK);
        }
        assert_eq!(p.cache.runs(), 1, "one PBKDF2 run for three requests");
        // A new config version of the same policy shares the cache.
        let next = plugin(&state, &[]);
        let mut c = ctx(basic("sup", "pw"));
        assert_eq!(status(&next.on_request(&mut c).await), StatusCode::OK);
        assert_eq!(next.cache.runs(), 1);
        for _ in 0..2 {
            let mut c = ctx(basic("sup", "bad"));
            assert_eq!(
                status(&next.on_request(&mut c).await),
                StatusCode::UNAUTHORIZED
            );
        }
        assert_eq!(
            next.cache.runs(),
            3,
            "wrong passwords are checked every time"
        );
    }

    #[tokio::test]
    async fn a_consumer_off_the_allow_list_is_403() {
        let state = PolicyState::default();
        let p = plugin(&state, &["ops"]);
        let mut c = ctx(basic("sup", "pw"));
        assert_eq!(status(&p.on_request(&mut c).await), StatusCode::FORBIDDEN);
        assert!(c.consumer.is_none());
        assert!(
            c.headers.get(header::AUTHORIZATION).is_some(),
            "nothing is changed for a refused request"
        );
    }
}
