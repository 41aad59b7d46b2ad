//! `waf`: ModSecurity (libmodsecurity3, through `fleetgate-agent-waf`) with the OWASP Core Rule
//! Set as Debian installs it (`modsecurity-crs`).
//!
//! **Rule set.** Built by `fleetgate_agent_waf::crs::Settings::rules_text`: our engine settings (rule engine on, request bodies
//! inspected up to `request_body_limit` and cut there, JSON and XML body parsers by
//! Content-Type, a body that does not parse refused unless it was cut), CRS defaults an API
//! gateway needs (`PUT`, `PATCH`, `DELETE` allowed, unless the operator's crs-setup.conf says
//! otherwise), Debian's `crs-setup.conf`, the configured paranoia level (set after the setup
//! file, so the policy wins), the operator's exclusion files, every `REQUEST-*` rule file,
//! and `SecRuleRemoveById` for `disabled_rules`. Response rules are not loaded: the proxy streams
//! responses. Loading takes about 0.1 s of CPU; the result is cached in [`PolicyState`] by
//! (paranoia level, body limit, disabled rules) and reused by later config versions, and by
//! other policies, with the same settings. The CRS files are read at load: after a package
//! upgrade, changed settings or a restart pick the new rules up.
//!
//! **Modes.** Both modes run the same rule set with `SecRuleEngine On`; `detect-only` is
//! applied here, by not enforcing the intervention, rather than by ModSecurity's
//! `DetectionOnly`. So detect-only reports exactly what block mode would block (the
//! anomaly-score decision), one log line per such request, and one compiled rule set serves
//! both modes. Block mode answers with the rule set's status (403; 400 for an unparsable body)
//! and a `waf_blocked` JSON body naming the rule ids.
//!
//! **Two engines, one verdict.** Every rule set is loaded twice: into Fleetgate's native
//! evaluator (`fleetgate_agent_waf::native`, which gives libmodsecurity 3.0.9's verdicts, tested
//! differentially against it) and into libmodsecurity itself. The native engine answers; a
//! request it hands back (multipart or XML bodies, `@rbl`, `@geoLookup`, `drop`, `redirect`)
//! is evaluated by libmodsecurity. `FLEETGATE_WAF_ENGINE=libmodsecurity` sends every request to
//! libmodsecurity instead.
//!
//! **Off the runtime.** A native evaluation of a request with at most [`INLINE_BODY_LIMIT`]
//! bytes of body and [`INLINE_HEAD_LIMIT`] of target and headers runs on the worker thread that
//! carries it (tens of microseconds, less than a
//! hand-off to another thread costs). Everything else — larger bodies, requests for
//! libmodsecurity (hundreds of microseconds) — runs on tokio's blocking pool, at most one per
//! CPU at a time (more would only add switching), behind a process-wide semaphore with a
//! bounded queue of waiting requests ([`MAX_WAITING_PER_THREAD`] per permit). When the queue is
//! full the request is answered 503 `waf_overloaded` with `Retry-After: 1` in block mode (a WAF
//! that waves traffic through under load invites the flood that hides the attack), and let
//! through with a log line in detect-only mode (which must never cost traffic).
//!
//! **Limits of what it sees.** The HTTP version is inferred (a request target with a scheme
//! came over HTTP/2, else 1.1); the server address is not known to plugins and is given as
//! `0.0.0.0:0`; the client is the TCP peer.

use std::num::NonZero;
use std::path::Path;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock, Mutex, PoisonError};

use bytes::Bytes;
use fleetgate_agent_waf::{Engine, Outcome, Request, crs, native};
use fleetgate_shared::model::{Phase, Waf as Config, WafMode};
use http::header::{self, HeaderValue};
use http::{HeaderMap, Method, Response, StatusCode, Uri};
use tokio::sync::Semaphore;

use crate::context::{BodyPrefix, RequestCtx, Verdict, reject};
use crate::plugin::{Plugin, Step};
use crate::state::PolicyState;

/// The [`PolicyState`] kind of [`WafRules`].
pub const KIND: &str = "waf";

/// Requests allowed to wait for an evaluation thread, per thread. At roughly 0.5 ms per
/// evaluation this bounds the added queueing delay to about 0.1 s before the WAF sheds load.
pub const MAX_WAITING_PER_THREAD: usize = 256;

/// What a compiled rule set depends on, normalised so that equal settings share one.
fn settings(config: &Config) -> crs::Settings {
    let mut disabled = config.disabled_rules.clone();
    disabled.sort_unstable();
    disabled.dedup();
    crs::Settings {
        paranoia: config.paranoia_level,
        body_limit: config.request_body_limit,
        disabled,
    }
}

/// One rule set in both engines: the native one answers, libmodsecurity takes the requests the
/// native engine hands back (multipart and XML bodies, `@rbl`, `@geoLookup`, `drop`,
/// `redirect`; see `fleetgate_agent_waf::native`).
#[derive(Debug)]
pub struct Rules {
    native: native::Engine,
    reference: Engine,
}

impl Rules {
    /// Evaluates `request` natively unless [`ENGINE_ENV`] says otherwise, the native engine
    /// already handed it back (`native_tried`), or hands it back now; then with libmodsecurity.
    fn evaluate(
        &self,
        request: &Request<'_>,
        native_tried: bool,
    ) -> Result<Outcome, fleetgate_agent_waf::EvaluateError> {
        if native_enabled()
            && !native_tried
            && let Ok(outcome) = self.native.evaluate(request)
        {
            return Ok(outcome);
        }
        self.reference.evaluate(request)
    }
}

/// Set to `libmodsecurity` to evaluate every request with libmodsecurity (for comparison, or if
/// the native engine is ever suspected of a wrong verdict). Read once.
pub const ENGINE_ENV: &str = "FLEETGATE_WAF_ENGINE";

fn native_enabled() -> bool {
    static NATIVE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *NATIVE.get_or_init(|| {
        std::env::var(ENGINE_ENV).map_or(true, |v| !v.eq_ignore_ascii_case("libmodsecurity"))
    })
}

fn load(key: &crs::Settings) -> Result<Rules, String> {
    for (path, what) in [(crs::SETUP, "file"), (crs::rules_dir(), "directory")] {
        if !Path::new(path).exists() {
            return Err(format!(
                "the OWASP CRS is not installed: no {what} {path} (Debian: apt-get install modsecurity-crs)"
            ));
        }
    }
    let started = std::time::Instant::now();
    let text = key.rules_text();
    let reference =
        Engine::load(&text).map_err(|e| format!("the WAF rule set did not load: {e}"))?;
    let native = native::Engine::load(&text)
        .map_err(|e| format!("the WAF rule set did not load into the native engine: {e}"))?;
    tracing::info!(
        paranoia_level = key.paranoia,
        request_body_limit = key.body_limit,
        disabled_rules = ?key.disabled,
        rules = reference.rule_count(),
        native = native_enabled(),
        "WAF rule set loaded in {} ms",
        started.elapsed().as_millis()
    );
    Ok(Rules { native, reference })
}

/// A policy's compiled rule set and the settings it was built for, kept across config versions.
#[derive(Debug, Default)]
pub struct WafRules {
    slot: Mutex<Option<(crs::Settings, Arc<Rules>)>>,
}

impl WafRules {
    fn get(&self, key: &crs::Settings) -> Option<Arc<Rules>> {
        let slot = self.slot.lock().unwrap_or_else(PoisonError::into_inner);
        slot.as_ref()
            .filter(|(k, _)| k == key)
            .map(|(_, e)| e.clone())
    }

    fn set(&self, key: crs::Settings, engine: Arc<Rules>) {
        *self.slot.lock().unwrap_or_else(PoisonError::into_inner) = Some((key, engine));
    }
}

/// The rule set for `key`: this policy's from the last version, another policy's with the same
/// settings, or a fresh load.
fn engine_for(name: &str, key: crs::Settings, state: &PolicyState) -> Result<Arc<Rules>, String> {
    let mine = state.get_or_insert(name, KIND, WafRules::default);
    if let Some(engine) = mine.get(&key) {
        return Ok(engine);
    }
    let shared = state
        .all::<WafRules>(KIND)
        .into_iter()
        .find_map(|(_, rules)| rules.get(&key));
    let engine = match shared {
        Some(engine) => engine,
        None => Arc::new(load(&key)?),
    };
    mine.set(key, engine.clone());
    Ok(engine)
}

/// Why a request could not be evaluated.
enum Failure {
    Overloaded,
    Internal(String),
}

/// The process-wide gate in front of the blocking pool.
struct Pool {
    permits: Arc<Semaphore>,
    waiting: AtomicUsize,
    max_waiting: usize,
}

static POOL: LazyLock<Pool> = LazyLock::new(|| {
    let threads = std::thread::available_parallelism().map_or(2, NonZero::get);
    Pool {
        permits: Arc::new(Semaphore::new(threads)),
        waiting: AtomicUsize::new(0),
        max_waiting: threads.saturating_mul(MAX_WAITING_PER_THREAD),
    }
});

/// Counts a request as waiting until dropped, including when the request is abandoned.
struct Waiting<'a>(&'a AtomicUsize);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Pool {
    async fn evaluate(&self, engine: Arc<Rules>, input: Input) -> Result<Outcome, Failure> {
        if self.waiting.fetch_add(1, Ordering::Relaxed) >= self.max_waiting {
            self.waiting.fetch_sub(1, Ordering::Relaxed);
            return Err(Failure::Overloaded);
        }
        let waiting = Waiting(&self.waiting);
        let permit = self
            .permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| Failure::Internal("the WAF pool is closed".into()))?;
        drop(waiting);
        // An abandoned request's evaluation still finishes, holding its permit: the bound on
        // threads holds whatever clients do.
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            input.evaluate(&engine)
        })
        .await
        .map_err(|e| Failure::Internal(format!("the WAF evaluation failed: {e}")))?
        .map_err(|e| Failure::Internal(e.to_string()))
    }
}

/// Transaction ids for ModSecurity's `UNIQUE_ID`.
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// What the blocking thread needs of a request, owned.
struct Input {
    id: String,
    client: std::net::SocketAddr,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
    /// The native engine evaluated it already (on the worker thread) and handed it back.
    native_tried: bool,
}

impl Input {
    fn new(ctx: &RequestCtx<'_>, native_tried: bool) -> Self {
        Self {
            native_tried,
            id: next_id(),
            client: std::net::SocketAddr::new(ctx.peer_ip(), ctx.peer.port()),
            method: ctx.method.clone(),
            uri: ctx.uri.clone(),
            headers: ctx.headers.clone(),
            body: match &ctx.body {
                BodyPrefix::NotRead => Bytes::new(),
                BodyPrefix::Complete(b) | BodyPrefix::Partial(b) => b.clone(),
            },
        }
    }

    fn evaluate(&self, rules: &Rules) -> Result<Outcome, fleetgate_agent_waf::EvaluateError> {
        let headers = header_list(&self.headers, &self.uri);
        let request = request(
            &self.id,
            self.client,
            &self.method,
            &self.uri,
            &headers,
            &self.body,
        );
        rules.evaluate(&request, self.native_tried)
    }
}

fn next_id() -> String {
    format!("fg-{}", NEXT_ID.fetch_add(1, Ordering::Relaxed))
}

/// The request headers as ModSecurity reads them. HTTP/2 carries the host in `:authority`; the
/// CRS expects a Host header, so one is added from the target when absent.
fn header_list<'h>(headers: &'h HeaderMap, uri: &'h Uri) -> Vec<(&'h [u8], &'h [u8])> {
    let mut list: Vec<(&[u8], &[u8])> = Vec::with_capacity(headers.len() + 1);
    list.extend(
        headers
            .iter()
            .map(|(name, value)| (name.as_str().as_bytes(), value.as_bytes())),
    );
    if !headers.contains_key(header::HOST)
        && let Some(authority) = uri.authority()
    {
        list.push((b"host", authority.as_str().as_bytes()));
    }
    list
}

/// The request as the WAF engines take it. The HTTP version is inferred: a target with a scheme
/// came over HTTP/2.
fn request<'a>(
    id: &'a str,
    client: std::net::SocketAddr,
    method: &'a Method,
    uri: &'a Uri,
    headers: &'a [(&'a [u8], &'a [u8])],
    body: &'a [u8],
) -> Request<'a> {
    Request {
        id,
        client,
        server: std::net::SocketAddr::from(([0, 0, 0, 0], 0)),
        method: method.as_str(),
        uri: uri.path_and_query().map_or("/", |pq| pq.as_str()),
        http_version: if uri.scheme().is_some() { "2.0" } else { "1.1" },
        headers,
        body,
    }
}

/// Requests with at most this much body, and at most [`INLINE_HEAD_LIMIT`] bytes of target and
/// headers, are evaluated by the native engine on the worker thread that carries them: tens of
/// microseconds, less than handing them to the blocking pool costs. Larger ones (more to
/// inspect, longer inputs for the patterns) go to the pool.
pub const INLINE_BODY_LIMIT: usize = 4096;
/// See [`INLINE_BODY_LIMIT`].
pub const INLINE_HEAD_LIMIT: usize = 8192;

/// The bytes of target and headers the rules read.
fn head_size(ctx: &RequestCtx<'_>) -> usize {
    let headers: usize = ctx
        .headers
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len())
        .sum();
    ctx.uri.path_and_query().map_or(0, |pq| pq.as_str().len()) + headers
}

/// A compiled waf policy.
#[derive(Debug)]
pub struct Waf {
    name: String,
    mode: WafMode,
    body_limit: u64,
    engine: Arc<Rules>,
}

impl Waf {
    /// Reuses or loads the rule set for the policy's settings (see the module doc).
    pub fn build(name: &str, config: &Config, state: &PolicyState) -> Result<Self, String> {
        Ok(Self {
            name: name.to_owned(),
            mode: config.mode,
            body_limit: config.request_body_limit,
            engine: engine_for(name, settings(config), state)?,
        })
    }

    fn blocked(&self, status: u16, rules: &[u32]) -> Response<Bytes> {
        let list = rules
            .iter()
            .map(u32::to_string)
            .collect::<Vec<_>>()
            .join(", ");
        let message = if rules.is_empty() {
            "request blocked by the web application firewall".to_owned()
        } else {
            format!("request blocked by the web application firewall (rules {list})")
        };
        let body = serde_json::json!({
            "error": "waf_blocked",
            "message": message,
            "policy": self.name,
            "rules": rules,
        });
        let mut bytes = serde_json::to_vec(&body).unwrap_or_default();
        bytes.push(b'\n');
        let mut response = Response::new(Bytes::from(bytes));
        *response.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::FORBIDDEN);
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        response
    }

    fn verdict(&self, ctx: &RequestCtx<'_>, result: Result<Outcome, Failure>) -> Verdict {
        let enforce = self.mode == WafMode::Block;
        let path = ctx.uri.path();
        let client = ctx.peer.ip();
        let outcome = match result {
            Ok(outcome) => outcome,
            Err(failure) => {
                let (status, code, message) = match failure {
                    Failure::Overloaded => (
                        StatusCode::SERVICE_UNAVAILABLE,
                        "waf_overloaded",
                        "the web application firewall is overloaded; retry shortly".to_owned(),
                    ),
                    Failure::Internal(e) => (StatusCode::INTERNAL_SERVER_ERROR, "waf_error", e),
                };
                tracing::warn!(
                    policy = %self.name, %client, method = %ctx.method, path,
                    "WAF could not inspect the request ({message}); {}",
                    if enforce { "refused" } else { "let through (detect-only)" }
                );
                if !enforce {
                    return Verdict::Continue;
                }
                let mut response = reject(status, code, &message, &self.name);
                if status == StatusCode::SERVICE_UNAVAILABLE {
                    response
                        .headers_mut()
                        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
                }
                return Verdict::Respond(response);
            }
        };
        let Some(intervention) = &outcome.intervention else {
            return Verdict::Continue;
        };
        let rules = outcome.rule_ids();
        if enforce {
            tracing::info!(
                policy = %self.name, %client, method = %ctx.method, path, ?rules,
                "WAF blocked the request"
            );
            Verdict::Respond(self.blocked(intervention.status, &rules))
        } else {
            tracing::warn!(
                policy = %self.name, %client, method = %ctx.method, path, ?rules,
                "WAF would block the request (detect-only)"
            );
            Verdict::Continue
        }
    }
}

impl Plugin for Waf {
    fn name(&self) -> &str {
        &self.name
    }

    fn phase(&self) -> Phase {
        Phase::Security
    }

    /// One byte past the inspection limit: a longer body reaches ModSecurity longer than its
    /// `SecRequestBodyLimit`, which is how it knows the body was cut (INBOUND_DATA_ERROR) and
    /// does not refuse a truncated JSON document as malformed.
    fn body_limit(&self) -> Option<u64> {
        Some(self.body_limit.saturating_add(1))
    }

    fn on_request<'a>(&'a self, ctx: &'a mut RequestCtx<'_>) -> Step<'a> {
        let body: &[u8] = match &ctx.body {
            BodyPrefix::NotRead => &[],
            BodyPrefix::Complete(b) | BodyPrefix::Partial(b) => b,
        };
        let mut native_tried = false;
        if native_enabled()
            && body.len() <= INLINE_BODY_LIMIT
            && head_size(ctx) <= INLINE_HEAD_LIMIT
        {
            let id = next_id();
            let headers = header_list(&ctx.headers, &ctx.uri);
            let client = std::net::SocketAddr::new(ctx.peer_ip(), ctx.peer.port());
            let view = request(&id, client, &ctx.method, &ctx.uri, &headers, body);
            if let Ok(outcome) = self.engine.native.evaluate(&view) {
                drop(headers);
                return Step::Done(self.verdict(ctx, Ok(outcome)));
            }
            native_tried = true;
        }
        let input = Input::new(ctx, native_tried);
        let engine = self.engine.clone();
        Step::Wait(Box::pin(async move {
            let result = POOL.evaluate(engine, input).await;
            self.verdict(ctx, result)
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(paranoia: u8, disabled: &[u32]) -> Config {
        Config {
            mode: WafMode::Block,
            paranoia_level: paranoia,
            request_body_limit: 1024,
            disabled_rules: disabled.to_vec(),
        }
    }

    #[test]
    fn equal_settings_share_one_rule_set_across_versions_and_policies() {
        let state = PolicyState::default();
        let a = Waf::build("a", &config(1, &[2, 1]), &state).unwrap();
        let again = Waf::build("a", &config(1, &[1, 2]), &state).unwrap();
        assert!(
            Arc::ptr_eq(&a.engine, &again.engine),
            "same settings, next version"
        );
        let mut detect = config(1, &[1, 2]);
        detect.mode = WafMode::DetectOnly;
        let b = Waf::build("b", &detect, &state).unwrap();
        assert!(
            Arc::ptr_eq(&a.engine, &b.engine),
            "another policy, another mode"
        );
        let c = Waf::build("a", &config(2, &[1, 2]), &state).unwrap();
        assert!(!Arc::ptr_eq(&a.engine, &c.engine), "another paranoia level");
    }
}
