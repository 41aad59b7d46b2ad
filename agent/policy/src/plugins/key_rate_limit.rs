//! `key-rate-limit`: requests per key (a header, query parameter, cookie, the consumer or the
//! client IP), counted by GCRA or a sliding window, on each agent or in a shared Redis.
//!
//! **Limits.** The rate of a request is, first match wins: the consumer's own override for
//! this policy (`consumer.spec.rate_limits[policy]`, for whatever key the policy counts by),
//! the policy's override for this key value (`overrides`), the policy's `rate`.
//!
//! **State.** Local counters live in [`crate::PolicyState`] under the policy's name, keyed by
//! key value, so a new config version (an edited override, a changed rate) never resets the
//! counters of other keys. A key whose rate changed keeps its count: see
//! [`algorithm`] for how it is reinterpreted. Changing the algorithm starts each key afresh.
//! Idle keys (those with their whole quota back, which behave exactly like unseen keys) are
//! swept every few seconds; at most [`table::MAX_KEYS`] keys are tracked, and a new key
//! beyond that is counted with the others beyond it under one shared overflow key at the
//! policy's rate, so the limit still holds in aggregate and memory stays bounded (one warning
//! is logged).
//!
//! **Cluster-wide.** With `backend: {mode: redis}` the count is an atomic Lua script in Redis
//! ([`scripts`]), so the limit holds across any number of agents. Every call is bounded by the
//! backend's `timeout`; a circuit breaker ([`breaker`]) stops calling a Redis that failed
//! several times in a row, so a dead, slow or misconfigured (wrong password) Redis costs a
//! request at most the timeout, and nothing once the breaker is open. While Redis is
//! unavailable, `failure_mode` decides: `open` lets requests through, `closed` answers 503.
//!
//! **Answers.** Counted requests get `RateLimit-Limit`, `RateLimit-Remaining` and
//! `RateLimit-Reset` (seconds until the whole quota is back), per the IETF httpapi draft; with
//! several limits on one request the one closest to running out is shown. Limited requests get
//! 429 with `Retry-After` and a JSON body.

pub(crate) mod algorithm;
mod breaker;
mod redis;
mod scripts;
pub(crate) mod table;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use dashmap::DashMap;
use fleetgate_shared::model::{
    FailureMode, KeyRateLimit as Config, LimitBackend, LimitKey, Phase, Rate, RateAlgorithm,
};
use http::header::{HeaderName, RETRY_AFTER};
use http::{HeaderMap, HeaderValue, StatusCode};

use self::algorithm::{Decision, GcraState, Quota, WindowState, gcra, sliding_window};
use self::breaker::{Admit, Attempt, Breaker, Transition};
use self::table::{Expiring, MAX_KEYS, Table};
use crate::context::{ConsumerEntry, RequestCtx, Verdict, reject};
use crate::plugin::{Plugin, Step};
use crate::state::PolicyState;

/// The [`PolicyState`] kind of the local counters.
pub const KIND: &str = "key-rate-limit";
/// The [`PolicyState`] kind of the Redis client and breaker, which also outlive versions.
const REDIS_KIND: &str = "key-rate-limit/redis";

pub const LIMIT: HeaderName = HeaderName::from_static("ratelimit-limit");
pub const REMAINING: HeaderName = HeaderName::from_static("ratelimit-remaining");
pub const RESET: HeaderName = HeaderName::from_static("ratelimit-reset");

/// Key values longer than this are counted by their SHA-256: a client picking header values
/// cannot make one key cost more than a hash.
const MAX_KEY_BYTES: usize = 128;

/// The key requests without a key share (when `reject_missing_key` is off).
const MISSING_KEY: &str = "!missing";
/// The key new keys share once the table is at its cap.
const OVERFLOW_KEY: &str = "!overflow";

/// The value of `key` in the request, if present and not empty.
pub(crate) fn key_value(key: &LimitKey, ctx: &RequestCtx<'_>) -> Option<String> {
    let value = match key {
        LimitKey::Header(name) => ctx
            .headers
            .get(name.as_str())
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned()),
        LimitKey::Query(name) => ctx.query_param(name).map(str::to_owned),
        LimitKey::Cookie(name) => ctx.cookie(name).map(str::to_owned),
        LimitKey::Consumer => ctx.consumer.as_ref().map(|c| c.name.clone()),
        LimitKey::ClientIp => Some(ctx.peer_ip().to_string()),
    };
    value.filter(|v| !v.is_empty())
}

/// The name a key value is stored under: `=value`, `#sha256` for long values, or a `!` name
/// for the shared keys (no key value can collide with those).
pub(crate) fn store_key(value: Option<&str>) -> String {
    match value {
        None => MISSING_KEY.to_owned(),
        Some(v) if v.len() <= MAX_KEY_BYTES => format!("={v}"),
        Some(v) => {
            let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, v.as_bytes());
            format!("#{}", hex::encode(digest.as_ref()))
        }
    }
}

/// A stored key as an operator reads it.
pub(crate) fn display_key(stored: &str) -> String {
    match stored.split_at_checked(1) {
        Some(("=", value)) => value.to_owned(),
        Some(("#", hash)) => format!("sha256:{hash}"),
        _ => format!("({})", stored.trim_start_matches('!')),
    }
}

fn key_label(key: &LimitKey) -> String {
    match key {
        LimitKey::Header(name) => format!("`{name}` header"),
        LimitKey::Query(name) => format!("`{name}` query parameter"),
        LimitKey::Cookie(name) => format!("`{name}` cookie"),
        LimitKey::Consumer => "consumer".into(),
        LimitKey::ClientIp => "client address".into(),
    }
}

/// Whole seconds, rounded up (a client that waits them is never early).
fn seconds(ns: u64) -> u64 {
    ns.div_ceil(1_000_000_000)
}

// ---------------------------------------------------------------------------------------------
// Local counting
// ---------------------------------------------------------------------------------------------

/// One key's counter, in the state of the algorithm that last counted it.
#[derive(Debug, Clone, Copy)]
enum Counter {
    Fresh,
    Gcra(GcraState),
    Window(WindowState),
}

impl Expiring for Counter {
    fn idle(&self, now: u64) -> bool {
        match self {
            Counter::Fresh => true,
            Counter::Gcra(s) => s.idle(now),
            Counter::Window(s) => s.idle(now),
        }
    }
}

impl Counter {
    fn count(&mut self, now: u64, quota: Quota, algorithm: RateAlgorithm) -> Decision {
        match algorithm {
            RateAlgorithm::Gcra => {
                let old = match *self {
                    Counter::Gcra(s) => Some(s),
                    _ => None,
                };
                let (state, decision) = gcra(old, now, quota);
                *self = Counter::Gcra(state);
                decision
            }
            RateAlgorithm::SlidingWindow => {
                let old = match *self {
                    Counter::Window(s) => Some(s),
                    _ => None,
                };
                let (state, decision) = sliding_window(old, now, quota);
                *self = Counter::Window(state);
                decision
            }
        }
    }
}

/// A policy's local counters, kept across config versions.
#[derive(Debug)]
pub struct LocalCounters {
    keys: Table<Counter>,
    /// The shared counter of keys beyond the cap: its own table, so it always has room.
    overflow: Table<Counter>,
}

impl LocalCounters {
    fn new() -> Self {
        Self {
            keys: Table::new(MAX_KEYS, "a key-rate-limit policy"),
            overflow: Table::new(1, "a key-rate-limit overflow"),
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.keys.len()
    }

    fn count(&self, key: &str, quota: Quota, algorithm: RateAlgorithm) -> Decision {
        let now = self.keys.now();
        let count = |c: &mut Counter| c.count(now, quota, algorithm);
        self.keys
            .update(key, now, || Counter::Fresh, count)
            .or_else(|| {
                self.overflow
                    .update(OVERFLOW_KEY, now, || Counter::Fresh, count)
            })
            // Unreachable (the overflow table holds its one key); counting nothing is the
            // answer that cannot lock a client out.
            .unwrap_or(Decision {
                allowed: true,
                limit: quota.requests,
                remaining: quota.requests,
                reset_ns: 0,
                retry_after_ns: 0,
            })
    }
}

// ---------------------------------------------------------------------------------------------
// Cluster-wide counting
// ---------------------------------------------------------------------------------------------

/// A policy's Redis client and circuit breaker, kept across config versions (an edited
/// override does not reconnect or forget that Redis is down).
#[derive(Debug)]
struct RedisLimiter {
    policy: String,
    client: redis::Client,
    breaker: Breaker,
}

/// The limiter of a policy, by URL and timeout: a change of either builds a new one.
#[derive(Debug, Default)]
struct RedisLimiters {
    by_backend: DashMap<String, Arc<RedisLimiter>>,
}

/// Why Redis gave no decision, and when to try again.
struct Unavailable {
    retry_in: Duration,
}

impl RedisLimiter {
    async fn count(
        &self,
        key: &str,
        quota: Quota,
        algorithm: RateAlgorithm,
        failure_mode: FailureMode,
    ) -> Result<Decision, Unavailable> {
        let admitted = self.breaker.admit();
        if admitted == Admit::Skip {
            return Err(Unavailable {
                retry_in: self.breaker.retry_in(),
            });
        }
        let (script, tag) = match algorithm {
            RateAlgorithm::Gcra => (&*scripts::GCRA, "gcra"),
            RateAlgorithm::SlidingWindow => (&*scripts::SLIDING_WINDOW, "sw"),
        };
        let attempt = Attempt::new(&self.breaker, admitted);
        let redis_key = format!("fleetgate:rl:{}:{tag}:{key}", self.policy);
        let per_us = (quota.per_ns / 1_000).max(1);
        let result = self
            .client
            .eval(script, redis_key.as_bytes(), &[quota.requests, per_us])
            .await
            .and_then(|reply| decision(&reply, quota));
        match result {
            Ok(decision) => {
                if let Transition::Closed(outage) = attempt.success() {
                    tracing::info!(
                        policy = %self.policy,
                        redis = %self.client.target().display(),
                        "rate-limit Redis is reachable again after {:.1}s; cluster-wide limits are enforced again",
                        outage.as_secs_f64()
                    );
                }
                Ok(decision)
            }
            Err(error) => {
                let effect = match failure_mode {
                    FailureMode::Open => "let through uncounted (failure_mode: open)",
                    FailureMode::Closed => "answered 503 (failure_mode: closed)",
                };
                match attempt.failure() {
                    Transition::Opened => tracing::warn!(
                        policy = %self.policy,
                        redis = %self.client.target().display(),
                        "rate-limit Redis failed {} times in a row (last: {error}); requests skip it and are {effect}, and one request probes it every {}s. Check that Redis is up and reachable from this agent and that the URL's password and database are right",
                        breaker::FAILURES_TO_OPEN,
                        breaker::COOL_DOWN.as_secs()
                    ),
                    Transition::Reopened => tracing::debug!(
                        policy = %self.policy,
                        "rate-limit Redis probe failed ({error}); still skipping it"
                    ),
                    _ => tracing::debug!(
                        policy = %self.policy,
                        "rate-limit Redis call failed ({error}); request {effect}"
                    ),
                }
                Err(Unavailable {
                    retry_in: self.breaker.retry_in(),
                })
            }
        }
    }
}

/// The script's `{allowed, remaining, reset µs, retry µs}` as a decision.
fn decision(reply: &redis::Reply, quota: Quota) -> Result<Decision, redis::RedisError> {
    let redis::Reply::Array(Some(items)) = reply else {
        return Err(redis::RedisError::Protocol(format!(
            "the rate-limit script answered {reply:?}"
        )));
    };
    let ints: Vec<u64> = items
        .iter()
        .filter_map(|item| match item {
            redis::Reply::Integer(i) => Some(u64::try_from(*i).unwrap_or(0)),
            _ => None,
        })
        .collect();
    let [allowed, remaining, reset_us, retry_us] = ints[..] else {
        return Err(redis::RedisError::Protocol(format!(
            "the rate-limit script answered {reply:?}"
        )));
    };
    Ok(Decision {
        allowed: allowed == 1,
        limit: quota.requests,
        remaining: remaining.min(quota.requests),
        reset_ns: reset_us.saturating_mul(1_000),
        retry_after_ns: retry_us.saturating_mul(1_000),
    })
}

// ---------------------------------------------------------------------------------------------
// The plugin
// ---------------------------------------------------------------------------------------------

#[derive(Debug)]
enum Backend {
    Local(Arc<LocalCounters>),
    Redis {
        limiter: Arc<RedisLimiter>,
        failure_mode: FailureMode,
    },
}

/// A compiled `key-rate-limit` policy.
#[derive(Debug)]
pub struct KeyRateLimit {
    name: String,
    key: LimitKey,
    rate: Rate,
    algorithm: RateAlgorithm,
    overrides: HashMap<String, Rate>,
    reject_missing_key: bool,
    backend: Backend,
}

impl KeyRateLimit {
    /// Builds the policy, reusing the counters (or Redis client) `state` holds for `name`.
    pub fn build(name: &str, config: &Config, state: &PolicyState) -> Result<Self, String> {
        let backend = match &config.backend {
            LimitBackend::Local => {
                Backend::Local(state.get_or_insert(name, KIND, LocalCounters::new))
            }
            LimitBackend::Redis {
                url,
                timeout,
                failure_mode,
            } => {
                let target = redis::Target::parse(url).map_err(|e| format!("backend.url: {e}"))?;
                let limiters = state.get_or_insert(name, REDIS_KIND, RedisLimiters::default);
                let id = format!("{url} {timeout}");
                limiters.by_backend.retain(|k, _| *k == id);
                let limiter = limiters
                    .by_backend
                    .entry(id)
                    .or_insert_with(|| {
                        Arc::new(RedisLimiter {
                            policy: name.to_owned(),
                            client: redis::Client::new(target, timeout.to_std()),
                            breaker: Breaker::new(),
                        })
                    })
                    .clone();
                Backend::Redis {
                    limiter,
                    failure_mode: *failure_mode,
                }
            }
        };
        Ok(Self {
            name: name.to_owned(),
            key: config.key.clone(),
            rate: config.rate,
            algorithm: config.algorithm,
            overrides: config
                .overrides
                .iter()
                .map(|(k, v)| (k.clone(), *v))
                .collect(),
            reject_missing_key: config.reject_missing_key,
            backend,
        })
    }

    /// The rate for a key value and consumer (see the module documentation for the order).
    fn rate_for(&self, value: Option<&str>, consumer: Option<&ConsumerEntry>) -> Rate {
        consumer
            .and_then(|c| c.rate_limits.get(&self.name))
            .or_else(|| value.and_then(|v| self.overrides.get(v)))
            .copied()
            .unwrap_or(self.rate)
    }

    async fn check(&self, ctx: &mut RequestCtx<'_>) -> Verdict {
        let value = key_value(&self.key, ctx);
        if value.is_none() && self.reject_missing_key {
            return Verdict::Respond(reject(
                StatusCode::UNAUTHORIZED,
                "rate_limit_key_missing",
                &format!(
                    "this route is rate limited by {}, which the request does not carry",
                    key_label(&self.key)
                ),
                &self.name,
            ));
        }
        let rate = self.rate_for(value.as_deref(), ctx.consumer.as_deref());
        let quota = Quota::from_rate(&rate);
        let key = store_key(value.as_deref());
        let decision = match &self.backend {
            Backend::Local(counters) => counters.count(&key, quota, self.algorithm),
            Backend::Redis {
                limiter,
                failure_mode,
            } => match limiter
                .count(&key, quota, self.algorithm, *failure_mode)
                .await
            {
                Ok(decision) => decision,
                Err(unavailable) => return self.unavailable(*failure_mode, unavailable),
            },
        };
        set_headers(&mut ctx.response_headers, &decision);
        if decision.allowed {
            return Verdict::Continue;
        }
        let retry = seconds(decision.retry_after_ns).max(1);
        let mut response = reject(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            &format!(
                "more than {} requests per {} for this {}; retry in {retry}s",
                rate.requests,
                rate.per,
                key_label(&self.key)
            ),
            &self.name,
        );
        response
            .headers_mut()
            .insert(RETRY_AFTER, HeaderValue::from(retry));
        Verdict::Respond(response)
    }

    fn unavailable(&self, mode: FailureMode, unavailable: Unavailable) -> Verdict {
        match mode {
            FailureMode::Open => Verdict::Continue,
            FailureMode::Closed => {
                let mut response = reject(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "rate_limiter_unavailable",
                    "the shared rate-limit store is unavailable and this policy fails closed; retry shortly",
                    &self.name,
                );
                let retry = unavailable.retry_in.as_secs().max(1);
                response
                    .headers_mut()
                    .insert(RETRY_AFTER, HeaderValue::from(retry));
                Verdict::Respond(response)
            }
        }
    }
}

/// Sets the `RateLimit-*` headers, unless an earlier limit of the chain is closer to running
/// out.
fn set_headers(headers: &mut HeaderMap, decision: &Decision) {
    let earlier = headers
        .get(&REMAINING)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if earlier.is_some_and(|r| r < decision.remaining) {
        return;
    }
    headers.insert(LIMIT, HeaderValue::from(decision.limit));
    headers.insert(REMAINING, HeaderValue::from(decision.remaining));
    headers.insert(RESET, HeaderValue::from(seconds(decision.reset_ns)));
}

impl Plugin for KeyRateLimit {
    fn name(&self) -> &str {
        &self.name
    }

    fn phase(&self) -> Phase {
        Phase::RateLimit
    }

    fn on_request<'a>(&'a self, ctx: &'a mut RequestCtx<'_>) -> Step<'a> {
        Step::Wait(Box::pin(self.check(ctx)))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::net::SocketAddr;

    use fleetgate_shared::Duration as Span;
    use http::{HeaderMap, Method, Uri};

    use super::*;

    fn rate(requests: u64, per_ms: u64) -> Rate {
        Rate {
            requests,
            per: Span::from_millis(per_ms),
        }
    }

    fn config(key: LimitKey, rate: Rate) -> Config {
        Config {
            key,
            rate,
            algorithm: RateAlgorithm::Gcra,
            overrides: BTreeMap::new(),
            reject_missing_key: false,
            backend: LimitBackend::Local,
        }
    }

    fn ctx(tenant: Option<&str>, peer: &str) -> RequestCtx<'static> {
        let mut headers = HeaderMap::new();
        if let Some(t) = tenant {
            headers.insert("x-tenant", t.parse().unwrap());
        }
        RequestCtx::new(
            Method::GET,
            Uri::from_static("/"),
            headers,
            peer.parse::<SocketAddr>().unwrap(),
            false,
        )
    }

    fn tenant_ctx(tenant: &str) -> RequestCtx<'static> {
        ctx(Some(tenant), "192.0.2.1:4000")
    }

    async fn allowed(plugin: &KeyRateLimit, mut ctx: RequestCtx<'_>) -> bool {
        matches!(plugin.on_request(&mut ctx).await, Verdict::Continue)
    }

    /// Sends `n` requests for `tenant` and counts the ones let through.
    async fn burst(plugin: &KeyRateLimit, tenant: &str, n: u32) -> u32 {
        let mut passed = 0;
        for _ in 0..n {
            passed += u32::from(allowed(plugin, tenant_ctx(tenant)).await);
        }
        passed
    }

    fn header(ctx: &RequestCtx<'_>, name: &HeaderName) -> u64 {
        ctx.response_headers[name]
            .to_str()
            .unwrap()
            .parse()
            .unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn a_burst_of_exactly_the_rate_then_refill_after_per_over_requests() {
        let state = PolicyState::default();
        let cfg = config(LimitKey::Header("x-tenant".into()), rate(5, 1_000));
        let plugin = KeyRateLimit::build("limit", &cfg, &state).unwrap();
        assert_eq!(burst(&plugin, "acme", 8).await, 5);
        assert_eq!(burst(&plugin, "globex", 8).await, 5, "keys count apart");
        tokio::time::advance(std::time::Duration::from_millis(199)).await;
        assert_eq!(burst(&plugin, "acme", 1).await, 0, "1 ms before the refill");
        tokio::time::advance(std::time::Duration::from_millis(1)).await;
        assert_eq!(burst(&plugin, "acme", 2).await, 1, "one request per 200 ms");
        tokio::time::advance(std::time::Duration::from_secs(1)).await;
        assert_eq!(
            burst(&plugin, "acme", 8).await,
            5,
            "the whole burst is back"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn headers_tell_limit_remaining_and_reset_and_429_tells_retry_after() {
        let state = PolicyState::default();
        let cfg = config(LimitKey::Header("x-tenant".into()), rate(3, 60_000));
        let plugin = KeyRateLimit::build("limit", &cfg, &state).unwrap();
        let mut first = tenant_ctx("acme");
        assert!(matches!(
            plugin.on_request(&mut first).await,
            Verdict::Continue
        ));
        assert_eq!(header(&first, &LIMIT), 3);
        assert_eq!(header(&first, &REMAINING), 2);
        assert_eq!(header(&first, &RESET), 20, "one 20 s interval used");
        burst(&plugin, "acme", 2).await;
        tokio::time::advance(std::time::Duration::from_millis(500)).await;
        let mut limited = tenant_ctx("acme");
        let Verdict::Respond(response) = plugin.on_request(&mut limited).await else {
            panic!("the fourth request is limited");
        };
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(response.headers()[RETRY_AFTER], "20", "19.5 s, rounded up");
        let body: serde_json::Value = serde_json::from_slice(response.body()).unwrap();
        assert_eq!(body["error"], "rate_limited");
        assert_eq!(body["policy"], "limit");
        assert_eq!(header(&limited, &REMAINING), 0);
        assert_eq!(
            header(&limited, &RESET),
            60,
            "59.5 s until the whole quota is back"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_sliding_window_weighs_the_previous_window_at_the_boundary() {
        let state = PolicyState::default();
        let mut cfg = config(LimitKey::Header("x-tenant".into()), rate(4, 1_000));
        cfg.algorithm = RateAlgorithm::SlidingWindow;
        let plugin = KeyRateLimit::build("limit", &cfg, &state).unwrap();
        // Windows are aligned to the counters' epoch, which is now.
        tokio::time::advance(std::time::Duration::from_millis(750)).await;
        assert_eq!(burst(&plugin, "acme", 6).await, 4);
        tokio::time::advance(std::time::Duration::from_millis(250)).await;
        assert_eq!(
            burst(&plugin, "acme", 1).await,
            0,
            "the previous window weighs 1"
        );
        tokio::time::advance(std::time::Duration::from_millis(500)).await;
        assert_eq!(burst(&plugin, "acme", 4).await, 2, "and half, half-way in");
    }

    #[tokio::test(start_paused = true)]
    async fn overrides_and_consumer_overrides_set_the_rate_consumers_first() {
        let state = PolicyState::default();
        let mut cfg = config(LimitKey::Header("x-tenant".into()), rate(2, 1_000));
        cfg.overrides.insert("big".into(), rate(6, 1_000));
        let plugin = KeyRateLimit::build("limit", &cfg, &state).unwrap();
        assert_eq!(burst(&plugin, "small", 10).await, 2);
        assert_eq!(burst(&plugin, "big", 10).await, 6);
        let consumer = Arc::new(ConsumerEntry::new(
            "initech".into(),
            &BTreeMap::new(),
            BTreeMap::from([("limit".to_owned(), rate(4, 1_000))]),
        ));
        let mut passed = 0;
        for _ in 0..10 {
            let mut c = tenant_ctx("big-consumer");
            c.consumer = Some(consumer.clone());
            passed += u32::from(allowed(&plugin, c).await);
        }
        assert_eq!(passed, 4, "the consumer's own override applies");
    }

    #[tokio::test(start_paused = true)]
    async fn the_consumer_key_and_a_missing_key() {
        let state = PolicyState::default();
        let mut cfg = config(LimitKey::Consumer, rate(1, 1_000));
        cfg.reject_missing_key = true;
        let plugin = KeyRateLimit::build("by-consumer", &cfg, &state).unwrap();
        let Verdict::Respond(response) = plugin.on_request(&mut tenant_ctx("x")).await else {
            panic!("no consumer: rejected");
        };
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        let consumer = Arc::new(ConsumerEntry::new(
            "initech".into(),
            &BTreeMap::new(),
            BTreeMap::new(),
        ));
        let mut c = tenant_ctx("x");
        c.consumer = Some(consumer.clone());
        assert!(allowed(&plugin, c).await);
        let mut c = tenant_ctx("y");
        c.consumer = Some(consumer);
        assert!(
            !allowed(&plugin, c).await,
            "counted by consumer, not header"
        );

        // Without reject_missing_key, keyless requests share one counter.
        let cfg = config(LimitKey::Header("x-tenant".into()), rate(2, 1_000));
        let plugin = KeyRateLimit::build("shared", &cfg, &state).unwrap();
        let mut passed = 0;
        for peer in ["192.0.2.1:1", "192.0.2.2:2", "192.0.2.3:3"] {
            passed += u32::from(allowed(&plugin, ctx(None, peer)).await);
        }
        assert_eq!(passed, 2);
    }

    #[tokio::test(start_paused = true)]
    async fn client_ip_keys_count_ipv4_mapped_addresses_as_ipv4() {
        let state = PolicyState::default();
        let cfg = config(LimitKey::ClientIp, rate(1, 1_000));
        let plugin = KeyRateLimit::build("by-ip", &cfg, &state).unwrap();
        assert!(allowed(&plugin, ctx(None, "192.0.2.7:1000")).await);
        assert!(!allowed(&plugin, ctx(None, "[::ffff:192.0.2.7]:2000")).await);
        assert!(allowed(&plugin, ctx(None, "192.0.2.8:1000")).await);
    }

    #[tokio::test(start_paused = true)]
    async fn a_live_override_change_keeps_every_counter() {
        let state = PolicyState::default();
        let mut cfg = config(LimitKey::Header("x-tenant".into()), rate(4, 60_000));
        cfg.overrides.insert("acme".into(), rate(4, 60_000));
        let v1 = KeyRateLimit::build("limit", &cfg, &state).unwrap();
        assert_eq!(burst(&v1, "acme", 3).await, 3);
        assert_eq!(burst(&v1, "globex", 3).await, 3);
        // Version 2 raises acme to 10 and adds an override for initech.
        cfg.overrides.insert("acme".into(), rate(10, 60_000));
        cfg.overrides.insert("initech".into(), rate(1, 60_000));
        let v2 = KeyRateLimit::build("limit", &cfg, &state).unwrap();
        assert_eq!(
            burst(&v2, "globex", 5).await,
            1,
            "globex's 3 requests still count"
        );
        assert_eq!(
            burst(&v2, "acme", 10).await,
            7,
            "acme's 3 count against its new 10"
        );
        assert_eq!(burst(&v2, "initech", 3).await, 1);
    }

    /// A config version with a consumer-keyed limit of 2/min and acme's own override.
    fn version(state: &PolicyState, acme_requests: u64) -> crate::PolicySet {
        let yaml = format!(
            r#"
kind: Policy
name: per-consumer
spec:
  type: key-rate-limit
  config: {{key: consumer, rate: {{requests: 2, per: 1m}}}}
  scope: {{global: true}}
---
kind: Consumer
name: acme
spec:
  rate_limits:
    per-consumer: {{requests: {acme_requests}, per: 1m}}
---
kind: Consumer
name: globex
spec: {{}}
"#
        );
        let resources =
            fleetgate_shared::parse_bundle(&yaml, fleetgate_shared::bundle::Format::Yaml, "")
                .unwrap();
        let snapshot = fleetgate_shared::Snapshot::new(1, resources).unwrap();
        crate::PolicySet::compile(&snapshot, state).unwrap()
    }

    async fn through_chain(set: &crate::PolicySet, consumer: &str, n: u32) -> u32 {
        let chain = set.chain("api.test", "r");
        let mut passed = 0;
        for _ in 0..n {
            let mut c = tenant_ctx("-");
            c.consumer = set.consumers().by_name.get(consumer).cloned();
            passed += u32::from(chain.run(&mut c).await.is_none());
        }
        passed
    }

    #[tokio::test(start_paused = true)]
    async fn recompiling_with_an_edited_consumer_override_keeps_every_counter() {
        let state = PolicyState::default();
        let v1 = version(&state, 3);
        assert_eq!(through_chain(&v1, "acme", 2).await, 2);
        assert_eq!(through_chain(&v1, "globex", 1).await, 1);
        let v2 = version(&state, 5);
        assert_eq!(
            through_chain(&v2, "globex", 5).await,
            1,
            "globex: 1 of 2 left"
        );
        assert_eq!(
            through_chain(&v2, "acme", 5).await,
            3,
            "acme: 2 made of its new 5"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn idle_keys_are_forgotten_and_keys_beyond_the_cap_share_one_counter() {
        let counters = LocalCounters {
            keys: Table::new(2, "test"),
            overflow: Table::new(1, "test"),
        };
        let quota = Quota::from_rate(&rate(1, 1_000));
        assert!(counters.count("=a", quota, RateAlgorithm::Gcra).allowed);
        assert!(counters.count("=b", quota, RateAlgorithm::Gcra).allowed);
        assert!(counters.count("=c", quota, RateAlgorithm::Gcra).allowed);
        assert!(
            !counters.count("=d", quota, RateAlgorithm::Gcra).allowed,
            "c and d share the overflow counter"
        );
        assert_eq!(counters.len(), 2);
        tokio::time::advance(std::time::Duration::from_secs(10)).await;
        assert!(counters.count("=e", quota, RateAlgorithm::Gcra).allowed);
        assert_eq!(
            counters.len(),
            1,
            "a and b had their quota back and were swept"
        );
    }

    #[test]
    fn stored_keys_are_bounded_and_cannot_collide_with_the_shared_ones() {
        assert_eq!(store_key(Some("acme")), "=acme");
        assert_eq!(store_key(None), MISSING_KEY);
        assert_eq!(store_key(Some("!missing")), "=!missing");
        let long = "x".repeat(1000);
        assert_eq!(store_key(Some(&long)).len(), 65);
        assert_eq!(display_key("=acme"), "acme");
        assert_eq!(display_key(MISSING_KEY), "(missing)");
    }

    #[test]
    fn script_replies_become_decisions() {
        use redis::Reply::{Array, Integer};
        let quota = Quota::from_rate(&rate(10, 1_000));
        let reply = Array(Some(vec![
            Integer(1),
            Integer(9),
            Integer(100_000),
            Integer(0),
        ]));
        let d = decision(&reply, quota).unwrap();
        assert!(d.allowed);
        assert_eq!((d.remaining, d.reset_ns), (9, 100_000_000));
        assert!(decision(&Array(Some(vec![Integer(1)])), quota).is_err());
        assert!(decision(&Integer(1), quota).is_err());
    }
}
