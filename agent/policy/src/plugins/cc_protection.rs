//! `cc-protection`: a client (its IP, or the configured key) that sends more than `threshold`
//! requests per window is banned for `ban`: every request then gets 403 `banned` with
//! `Retry-After`. A ban clears the client's counters, so it starts afresh when the ban ends.
//!
//! With `challenge: true`, exceeding the threshold first gets a cookie challenge: a 503 page
//! that sets a signed cookie and reloads itself. The cookie is an HMAC-SHA256, under a random
//! secret of this agent, over the policy, the client's key and an expiry, so it cannot be
//! forged, moved to another client, or kept past [`CHALLENGE_TTL`]. A client presenting a
//! valid cookie is counted but neither challenged nor banned by this policy (cap verified
//! clients with a key-rate-limit). A client that ignores the challenge is answered with it
//! until it has been challenged more than `threshold` times within the window, then banned.
//! The cookie proves a client keeps cookies (what flood tools do not); it is not a proof of
//! JavaScript. Another agent has another secret, so a client moving between agents is
//! challenged once by each.
//!
//! Counters and bans live in [`crate::PolicyState`] (they survive config versions; a changed
//! threshold applies to the counts so far) and are listed by the admin API's `/bans` through
//! [`CcState::bans`]. Idle clients are swept; at most [`MAX_KEYS`] are tracked, and a client
//! beyond that is let through uncounted (one warning is logged): sharing one counter, as the
//! rate limit does, would let a flood ban every new client.

use std::sync::Arc;
use std::time::Duration;

use super::challenge::CookieSigner;
use bytes::Bytes;
use fleetgate_shared::model::{CcProtection as Config, LimitKey, Phase};
use http::header::{CACHE_CONTROL, CONTENT_TYPE, RETRY_AFTER, SET_COOKIE};
use http::{HeaderName, HeaderValue, Response, StatusCode};

use super::key_rate_limit::algorithm::{Quota, WindowState, sliding_window};
use super::key_rate_limit::table::{Expiring, MAX_KEYS, Table};
use super::key_rate_limit::{display_key, key_value, store_key};
use crate::context::{RequestCtx, Verdict, reject};
use crate::plugin::AnswersAtOnce;
use crate::state::PolicyState;

/// The [`PolicyState`] kind of [`CcState`].
pub const KIND: &str = "cc-protection";

/// The challenge cookie's name.
pub const COOKIE: &str = "fleetgate_cc";

/// How long a passed challenge holds. Long enough that a browsing person is challenged about
/// once a session; short enough that a harvested cookie is soon useless.
pub const CHALLENGE_TTL: Duration = Duration::from_secs(30 * 60);

const REFRESH: HeaderName = HeaderName::from_static("refresh");

const CHALLENGE_PAGE: &str = r#"<!doctype html>
<html><head><meta charset="utf-8"><meta http-equiv="refresh" content="1">
<title>Checking your browser</title></head>
<body><p>Checking your browser&hellip; this page reloads by itself.</p>
<noscript><p>If it does not, reload it.</p></noscript>
<script>location.replace(location.href)</script></body></html>
"#;

/// One client's counts and ban.
#[derive(Debug, Default)]
struct Client {
    requests: Option<WindowState>,
    challenges: Option<WindowState>,
    /// Nanoseconds (table clock) until which the client is banned; 0 when never.
    banned_until: u64,
}

impl Expiring for Client {
    fn idle(&self, now: u64) -> bool {
        self.banned_until <= now
            && self.requests.is_none_or(|s| s.idle(now))
            && self.challenges.is_none_or(|s| s.idle(now))
    }
}

/// A current ban, as the admin API shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ban {
    /// The banned key (a client IP unless the policy counts by another key).
    pub key: String,
    pub expires_in: Duration,
}

/// A policy's clients and bans, and the secret its challenge cookies are signed with.
#[derive(Debug)]
pub struct CcState {
    clients: Table<Client>,
    signer: CookieSigner,
}

impl CcState {
    fn new(signer: CookieSigner) -> Self {
        Self {
            clients: Table::new(MAX_KEYS, "a cc-protection policy"),
            signer,
        }
    }

    /// The bans in force now.
    pub fn bans(&self) -> Vec<Ban> {
        let now = self.clients.now();
        let mut bans = self.clients.collect(|key, client| {
            (client.banned_until > now).then(|| Ban {
                key: display_key(key),
                expires_in: Duration::from_nanos(client.banned_until - now),
            })
        });
        bans.sort_by(|a, b| a.key.cmp(&b.key));
        bans
    }
}

/// What one request gets.
enum Outcome {
    Pass,
    Challenge,
    Banned { left_ns: u64, new: bool },
}

/// A compiled `cc-protection` policy.
#[derive(Debug)]
pub struct CcProtection {
    name: String,
    key: LimitKey,
    threshold: Quota,
    ban_ns: u64,
    challenge: bool,
    state: Arc<CcState>,
}

impl CcProtection {
    /// Builds the policy, reusing the clients, bans and secret `state` holds for `name`.
    pub fn build(name: &str, config: &Config, state: &PolicyState) -> Result<Self, String> {
        let signer = CookieSigner::generate()?;
        Ok(Self {
            name: name.to_owned(),
            key: config.key.clone(),
            threshold: Quota::from_rate(&config.threshold),
            ban_ns: config.ban.as_millis().saturating_mul(1_000_000),
            challenge: config.challenge,
            state: state.get_or_insert(name, KIND, || CcState::new(signer)),
        })
    }

    fn step(&self, client: &mut Client, now: u64, verified: bool) -> Outcome {
        if client.banned_until > now {
            return Outcome::Banned {
                left_ns: client.banned_until - now,
                new: false,
            };
        }
        let (requests, decision) = sliding_window(client.requests, now, self.threshold);
        client.requests = Some(requests);
        if decision.allowed || verified {
            return Outcome::Pass;
        }
        if self.challenge {
            let (challenges, decision) = sliding_window(client.challenges, now, self.threshold);
            client.challenges = Some(challenges);
            if decision.allowed {
                return Outcome::Challenge;
            }
        }
        *client = Client {
            banned_until: now.saturating_add(self.ban_ns),
            ..Client::default()
        };
        Outcome::Banned {
            left_ns: self.ban_ns,
            new: true,
        }
    }

    fn challenge_page(&self, ctx: &RequestCtx<'_>, key: &str) -> Response<Bytes> {
        let expiry = ctx.unix_secs() + CHALLENGE_TTL.as_secs();
        let value = self.state.signer.token(&self.name, key, expiry);
        let secure = if ctx.tls { "; Secure" } else { "" };
        let cookie = format!(
            "{COOKIE}={value}; Path=/; Max-Age={}; HttpOnly; SameSite=Lax{secure}",
            CHALLENGE_TTL.as_secs()
        );
        let mut response = Response::new(Bytes::from_static(CHALLENGE_PAGE.as_bytes()));
        *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
        let headers = response.headers_mut();
        headers.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("text/html; charset=utf-8"),
        );
        headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
        headers.insert(REFRESH, HeaderValue::from_static("1"));
        headers.insert(RETRY_AFTER, HeaderValue::from_static("1"));
        if let Ok(cookie) = HeaderValue::from_str(&cookie) {
            headers.insert(SET_COOKIE, cookie);
        }
        response
    }

    fn decide(&self, ctx: &RequestCtx<'_>) -> Verdict {
        let key = store_key(key_value(&self.key, ctx).as_deref());
        let verified = self.challenge
            && ctx.cookie(COOKIE).is_some_and(|cookie| {
                self.state
                    .signer
                    .verify(&self.name, &key, cookie, ctx.unix_secs())
            });
        let now = self.state.clients.now();
        let outcome = self
            .state
            .clients
            .update(&key, now, Client::default, |client| {
                self.step(client, now, verified)
            })
            .unwrap_or(Outcome::Pass);
        match outcome {
            Outcome::Pass => Verdict::Continue,
            Outcome::Challenge => Verdict::Respond(self.challenge_page(ctx, &key)),
            Outcome::Banned { left_ns, new } => {
                let retry = left_ns.div_ceil(1_000_000_000).max(1);
                if new {
                    tracing::info!(
                        policy = %self.name,
                        key = %display_key(&key),
                        "client banned for {retry}s: more than {} requests in {}ms{}",
                        self.threshold.requests,
                        self.threshold.per_ns / 1_000_000,
                        if self.challenge { " and the challenge ignored" } else { "" }
                    );
                }
                let mut response = reject(
                    StatusCode::FORBIDDEN,
                    "banned",
                    &format!("too many requests from this client; banned for {retry}s more"),
                    &self.name,
                );
                response
                    .headers_mut()
                    .insert(RETRY_AFTER, HeaderValue::from(retry));
                Verdict::Respond(response)
            }
        }
    }
}

impl AnswersAtOnce for CcProtection {
    fn name(&self) -> &str {
        &self.name
    }

    fn phase(&self) -> Phase {
        Phase::Security
    }

    fn verdict(&self, ctx: &mut RequestCtx<'_>) -> Verdict {
        self.decide(ctx)
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use fleetgate_shared::Duration as Span;
    use fleetgate_shared::model::Rate;
    use http::{HeaderMap, Method, Uri, header};

    use super::*;
    use crate::plugin::Plugin;

    fn plugin(state: &PolicyState, challenge: bool) -> CcProtection {
        let config = Config {
            key: LimitKey::ClientIp,
            threshold: Rate {
                requests: 3,
                per: Span::from_secs(10),
            },
            ban: Span::from_secs(5),
            challenge,
        };
        CcProtection::build("cc", &config, state).unwrap()
    }

    fn request(peer: &str, cookie: Option<&str>) -> RequestCtx<'static> {
        let mut headers = HeaderMap::new();
        if let Some(c) = cookie {
            headers.insert(header::COOKIE, c.parse().unwrap());
        }
        RequestCtx::new(
            Method::GET,
            Uri::from_static("/login"),
            headers,
            peer.parse::<SocketAddr>().unwrap(),
            false,
        )
    }

    async fn status(p: &CcProtection, peer: &str, cookie: Option<&str>) -> u16 {
        match p.on_request(&mut request(peer, cookie)).await {
            Verdict::Continue => 200,
            Verdict::Respond(r) => r.status().as_u16(),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn exceeding_the_threshold_bans_until_the_ban_expires() {
        let state = PolicyState::default();
        let p = plugin(&state, false);
        for _ in 0..3 {
            assert_eq!(status(&p, "192.0.2.1:1", None).await, 200);
        }
        assert_eq!(status(&p, "192.0.2.1:1", None).await, 403);
        assert_eq!(status(&p, "192.0.2.2:1", None).await, 200, "others pass");
        let bans = p.state.bans();
        assert_eq!(bans.len(), 1);
        assert_eq!(bans[0].key, "192.0.2.1");
        assert_eq!(bans[0].expires_in, Duration::from_secs(5));

        tokio::time::advance(Duration::from_millis(4_999)).await;
        let Verdict::Respond(r) = p.on_request(&mut request("192.0.2.1:1", None)).await else {
            panic!("still banned");
        };
        assert_eq!(r.headers()[RETRY_AFTER], "1");
        let body: serde_json::Value = serde_json::from_slice(r.body()).unwrap();
        assert_eq!(body["error"], "banned");
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(p.state.bans().is_empty());
        assert_eq!(
            status(&p, "192.0.2.1:1", None).await,
            200,
            "the ban cleared the counts"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_challenge_comes_first_and_a_valid_cookie_passes_it() {
        let state = PolicyState::default();
        let p = plugin(&state, true);
        for _ in 0..3 {
            assert_eq!(status(&p, "192.0.2.1:1", None).await, 200);
        }
        let Verdict::Respond(page) = p.on_request(&mut request("192.0.2.1:1", None)).await else {
            panic!("challenged");
        };
        assert_eq!(page.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(page.headers()[REFRESH], "1");
        let set_cookie = page.headers()[SET_COOKIE].to_str().unwrap();
        assert!(set_cookie.contains("HttpOnly"));
        let cookie = set_cookie.split(';').next().unwrap().to_owned();

        for _ in 0..10 {
            assert_eq!(status(&p, "192.0.2.1:1", Some(&cookie)).await, 200);
        }
        // The cookie is bound to the client: another address with it is challenged.
        for _ in 0..3 {
            status(&p, "192.0.2.9:1", None).await;
        }
        assert_eq!(status(&p, "192.0.2.9:1", Some(&cookie)).await, 503);
        // Forged or expired signatures do not pass either.
        let forged = format!("{COOKIE}=99999999999.{}", "00".repeat(32));
        assert_eq!(status(&p, "192.0.2.9:1", Some(&forged)).await, 503);
        let (value, _) = cookie.split_once('=').unwrap().1.split_once('.').unwrap();
        let expiry: u64 = value.parse().unwrap();
        assert!(
            !p.state
                .signer
                .verify("cc", "=192.0.2.1", &cookie[COOKIE.len() + 1..], expiry)
        );
        assert!(
            p.state
                .signer
                .verify("cc", "=192.0.2.1", &cookie[COOKIE.len() + 1..], expiry - 1)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_that_ignores_the_challenge_is_banned() {
        let state = PolicyState::default();
        let p = plugin(&state, true);
        let statuses: Vec<u16> = {
            let mut s = Vec::new();
            for _ in 0..8 {
                s.push(status(&p, "192.0.2.1:1", None).await);
            }
            s
        };
        assert_eq!(statuses, [200, 200, 200, 503, 503, 503, 403, 403]);
        assert_eq!(p.state.bans().len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn state_and_secret_survive_a_new_config_version() {
        let state = PolicyState::default();
        let v1 = plugin(&state, true);
        for _ in 0..3 {
            status(&v1, "192.0.2.1:1", None).await;
        }
        let Verdict::Respond(page) = v1.on_request(&mut request("192.0.2.1:1", None)).await else {
            panic!("challenged");
        };
        let cookie = page.headers()[SET_COOKIE]
            .to_str()
            .unwrap()
            .split(';')
            .next()
            .unwrap()
            .to_owned();
        let v2 = plugin(&state, true);
        assert_eq!(status(&v2, "192.0.2.1:1", None).await, 503, "counts kept");
        assert_eq!(
            status(&v2, "192.0.2.1:1", Some(&cookie)).await,
            200,
            "secret kept"
        );
    }
}
