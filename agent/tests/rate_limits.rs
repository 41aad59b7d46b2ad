//! Rate limits and CC protection through running gateways.
//!
//! Cluster-wide limits run against a real `redis-server` (started here on an ephemeral port,
//! with a password, persistence off): two gateways share one limit exactly; a killed Redis is
//! answered per `failure_mode` within the timeout and the breaker then skips it; a restarted
//! one is used again. A "Redis" that accepts connections and never answers proves that a
//! request waits at most the timeout, and that once the breaker is open nothing waits. CC
//! protection bans, shows the ban on the admin API, lets it expire, and challenges first when
//! asked to.

#![allow(clippy::unwrap_used)]

mod support;

use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use http::{Method, StatusCode};
use support::{HttpClient, Reply, TestGateway, dead_address, start_gateway, within};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::net::TcpListener;
use tokio::process::{Child, Command};
use tracing::info;

const HOST: &str = "api.test";
const PASSWORD: &str = "limiter-secret";

/// What a request may take beyond the Redis timeout on a loaded two-core machine.
const SLACK: Duration = Duration::from_millis(750);

// ---------------------------------------------------------------------------------------------
// A real redis-server
// ---------------------------------------------------------------------------------------------

/// A `redis-server` child process on 127.0.0.1, with a password and no persistence. Killed
/// when dropped.
struct RedisServer {
    child: Child,
    port: u16,
}

impl RedisServer {
    async fn start() -> RedisServer {
        for _ in 0..5 {
            if let Some(server) = Self::start_on(dead_address().port()).await {
                return server;
            }
        }
        panic!("redis-server could not get a free port in 5 attempts");
    }

    /// Starts on `port` and waits for its "Ready to accept connections" line; `None` if the
    /// port was taken meanwhile.
    async fn start_on(port: u16) -> Option<RedisServer> {
        let mut child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .args(["--requirepass", PASSWORD])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot run redis-server ({e}); install it (.ci/run installs the Debian package redis-server)")
            });
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut log = String::new();
        let ready = within("redis-server to start", async {
            while let Some(line) = lines.next_line().await.unwrap() {
                log.push_str(&line);
                log.push('\n');
                if line.contains("Ready to accept connections") {
                    return true;
                }
            }
            false
        })
        .await;
        if ready {
            // Keep draining its output so that it never blocks on a full pipe.
            tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
            return Some(RedisServer { child, port });
        }
        assert!(
            log.contains("Address already in use"),
            "redis-server exited:\n{log}"
        );
        None
    }

    fn url(&self) -> String {
        format!("redis://:{PASSWORD}@127.0.0.1:{}", self.port)
    }

    /// Kills the process (no shutdown, like a crash) and waits until it is gone.
    async fn kill(&mut self) {
        self.child.kill().await.unwrap();
    }
}

/// A listener that accepts connections, reads whatever is sent, and never answers. Counts the
/// connections it accepted.
async fn silent_redis() -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                continue;
            };
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                while let Ok(n) = stream.read(&mut buf).await {
                    if n == 0 {
                        return;
                    }
                }
            });
        }
    });
    (format!("redis://127.0.0.1:{}", addr.port()), accepted)
}

// ---------------------------------------------------------------------------------------------
// Configs and requests
// ---------------------------------------------------------------------------------------------

/// A route answering 200 itself, guarded by `policy`.
fn route(name: &str, policy: &str) -> String {
    format!(
        r#"
kind: Route
name: {name}
spec:
  hosts: [{HOST}]
  matches: [{{path: {{prefix: /{name}}}}}]
  direct_response: {{status: 200, body: ok}}
  policies: [{policy}]
---
"#
    )
}

/// A Redis-backed key-rate-limit counting by the `x-tenant` header.
fn redis_limit(
    name: &str,
    requests: u64,
    algorithm: &str,
    url: &str,
    timeout: &str,
    mode: &str,
) -> String {
    format!(
        r#"
kind: Policy
name: {name}
spec:
  type: key-rate-limit
  config:
    key: {{header: x-tenant}}
    rate: {{requests: {requests}, per: 1h}}
    algorithm: {algorithm}
    backend: {{mode: redis, url: "{url}", timeout: {timeout}, failure_mode: {mode}}}
---
"#
    )
}

async fn get(client: &HttpClient, path: &str, tenant: &str) -> Reply {
    client
        .send(Method::GET, HOST, path, &[("x-tenant", tenant)], "")
        .await
}

/// The request and how long it took.
async fn timed(client: &HttpClient, path: &str) -> (Reply, Duration) {
    let start = Instant::now();
    let reply = get(client, path, "acme").await;
    (reply, start.elapsed())
}

fn header_u64(reply: &Reply, name: &str) -> u64 {
    reply
        .header(name)
        .unwrap_or_else(|| panic!("no {name} header"))
        .parse()
        .unwrap()
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn two_agents_share_one_limit_in_redis() {
    support::init_tracing();
    let redis = RedisServer::start().await;
    let url = redis.url();
    let config = [
        route("gcra", "fleet-gcra"),
        route("window", "fleet-window"),
        redis_limit("fleet-gcra", 10, "gcra", &url, "1s", "closed"),
        redis_limit("fleet-window", 6, "sliding-window", &url, "1s", "closed"),
    ]
    .concat();
    let agents: Vec<TestGateway> = vec![start_gateway(&config).await, start_gateway(&config).await];
    let clients: Vec<HttpClient> = agents.iter().map(TestGateway::client).collect();

    info!("--- 30 requests for one tenant, alternating agents: exactly 10 pass (GCRA)");
    let mut remaining = Vec::new();
    let mut limited = 0;
    for i in 0..30 {
        let reply = get(&clients[i % 2], "/gcra", "acme").await;
        match reply.status {
            StatusCode::OK => {
                assert_eq!(header_u64(&reply, "ratelimit-limit"), 10);
                remaining.push(header_u64(&reply, "ratelimit-remaining"));
            }
            StatusCode::TOO_MANY_REQUESTS => {
                limited += 1;
                assert_eq!(reply.json()["error"], "rate_limited");
                // One request per 6 minutes comes back: Retry-After is about 360 s.
                let retry = header_u64(&reply, "retry-after");
                assert!((350..=360).contains(&retry), "Retry-After {retry}");
            }
            other => panic!("unexpected {other}: {}", reply.text()),
        }
    }
    assert_eq!(
        remaining,
        (0..10).rev().collect::<Vec<u64>>(),
        "one count across both agents"
    );
    assert_eq!(limited, 20);

    info!("--- another tenant has its own 10");
    let mut passed = 0;
    for i in 0..14 {
        passed +=
            usize::from(get(&clients[i % 2], "/gcra", "globex").await.status == StatusCode::OK);
    }
    assert_eq!(passed, 10);

    info!("--- the sliding window holds across agents too");
    let mut passed = 0;
    for i in 0..15 {
        passed +=
            usize::from(get(&clients[i % 2], "/window", "acme").await.status == StatusCode::OK);
    }
    assert_eq!(passed, 6);
}

#[tokio::test]
async fn a_stopped_redis_gets_the_failure_mode_within_the_timeout_and_is_used_again_when_back() {
    support::init_tracing();
    let mut redis = RedisServer::start().await;
    let url = redis.url();
    let timeout = Duration::from_millis(300);
    let wrong = url.replace(PASSWORD, "not-the-password");
    let config = [
        route("open", "limit-open"),
        route("closed", "limit-closed"),
        route("wrong", "limit-wrong-password"),
        redis_limit("limit-open", 100, "gcra", &url, "300ms", "open"),
        redis_limit("limit-closed", 100, "gcra", &url, "300ms", "closed"),
        redis_limit(
            "limit-wrong-password",
            100,
            "gcra",
            &wrong,
            "300ms",
            "closed",
        ),
    ]
    .concat();
    let gateway = start_gateway(&config).await;
    let client = gateway.client();

    info!("--- Redis up: both routes counted");
    for path in ["/open", "/closed"] {
        let reply = get(&client, path, "acme").await;
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(header_u64(&reply, "ratelimit-remaining"), 99);
    }

    info!("--- a wrong password is a failure like any other: closed → 503, never slow");
    for _ in 0..5 {
        let (reply, took) = timed(&client, "/wrong").await;
        assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(reply.json()["error"], "rate_limiter_unavailable");
        assert!(took < timeout + SLACK, "took {took:?}");
    }

    info!("--- Redis killed: open lets through, closed answers 503, each within the timeout");
    redis.kill().await;
    for round in 0..6 {
        let (reply, took) = timed(&client, "/open").await;
        assert_eq!(reply.status, StatusCode::OK, "round {round}");
        assert!(reply.header("ratelimit-remaining").is_none(), "not counted");
        assert!(took < timeout + SLACK, "open took {took:?}");
        let (reply, took) = timed(&client, "/closed").await;
        assert_eq!(
            reply.status,
            StatusCode::SERVICE_UNAVAILABLE,
            "round {round}"
        );
        assert_eq!(reply.json()["error"], "rate_limiter_unavailable");
        assert!(reply.header("retry-after").is_some());
        assert!(took < timeout + SLACK, "closed took {took:?}");
    }

    info!("--- Redis back on the same port: after the breaker's cool-down, counting resumes");
    let port = redis.port;
    let _redis = RedisServer::start_on(port)
        .await
        .expect("the old port is free again");
    let deadline = Instant::now() + support::STEP_TIMEOUT;
    loop {
        let reply = get(&client, "/closed", "acme").await;
        if reply.status == StatusCode::OK {
            // A fresh Redis: the count starts over.
            assert_eq!(header_u64(&reply, "ratelimit-remaining"), 99);
            break;
        }
        assert!(Instant::now() < deadline, "the breaker never closed again");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_silent_redis_costs_at_most_the_timeout_and_nothing_once_the_breaker_is_open() {
    support::init_tracing();
    let (url, accepted) = silent_redis().await;
    let timeout = Duration::from_millis(500);
    let config = [
        route("silent", "limit-silent"),
        redis_limit("limit-silent", 10, "gcra", &url, "500ms", "open"),
    ]
    .concat();
    let gateway = start_gateway(&config).await;
    let client = gateway.client();

    info!("--- the first requests each wait the timeout, no more");
    for _ in 0..3 {
        let (reply, took) = timed(&client, "/silent").await;
        assert_eq!(reply.status, StatusCode::OK, "failure_mode: open");
        info!("request with the breaker closed took {took:?}");
        assert!(
            took >= timeout,
            "took {took:?}: it should have waited for Redis"
        );
        assert!(took < timeout + SLACK, "took {took:?}");
    }
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        3,
        "one connection per timed-out call"
    );

    info!("--- the breaker is open: requests no longer call Redis or wait");
    for _ in 0..5 {
        let (reply, took) = timed(&client, "/silent").await;
        assert_eq!(reply.status, StatusCode::OK);
        info!("request with the breaker open took {took:?}");
        assert!(took < timeout, "took {took:?}: it waited for Redis");
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 3, "no new connection");
}

/// A route guarded by a cc-protection policy counting by `key`.
fn cc_config(key: &str, challenge: bool) -> String {
    format!(
        r#"{route}
kind: Policy
name: login-cc
spec:
  type: cc-protection
  config:
    key: {key}
    threshold: {{requests: 3, per: 10s}}
    ban: 1s
    challenge: {challenge}
"#,
        route = route("login", "login-cc")
    )
}

#[tokio::test]
async fn cc_protection_bans_shows_the_ban_and_lets_it_expire() {
    support::init_tracing();
    let gateway = start_gateway(&cc_config("client_ip", false)).await;
    let client = gateway.client();

    info!("--- 3 requests pass, the 4th bans the client");
    for _ in 0..3 {
        assert_eq!(get(&client, "/login", "-").await.status, StatusCode::OK);
    }
    let banned = get(&client, "/login", "-").await;
    assert_eq!(banned.status, StatusCode::FORBIDDEN);
    assert_eq!(banned.json()["error"], "banned");
    assert_eq!(banned.header("retry-after"), Some("1"));
    let banned_at = Instant::now();

    info!("--- the ban is on the admin API");
    let bans = gateway.admin("/bans").await.json();
    let list = bans["bans"].as_array().unwrap();
    assert_eq!(list.len(), 1, "{bans}");
    assert_eq!(list[0]["policy"], "login-cc");
    assert_eq!(list[0]["key"], "127.0.0.1");
    assert!(list[0]["expires_in_ms"].as_u64().unwrap() <= 1_000);

    info!("--- after the ban the client starts afresh");
    tokio::time::sleep(Duration::from_secs(1).saturating_sub(banned_at.elapsed())).await;
    assert_eq!(get(&client, "/login", "-").await.status, StatusCode::OK);
    let bans = gateway.admin("/bans").await.json();
    assert_eq!(bans["bans"].as_array().unwrap().len(), 0, "{bans}");
}

#[tokio::test]
async fn cc_protection_challenges_first_and_bans_clients_that_ignore_it() {
    support::init_tracing();
    let gateway = start_gateway(&cc_config("{header: x-tenant}", true)).await;
    let client = gateway.client();

    info!("--- over the threshold, a browser gets the challenge and passes with its cookie");
    for _ in 0..3 {
        assert_eq!(
            get(&client, "/login", "browser").await.status,
            StatusCode::OK
        );
    }
    let page = get(&client, "/login", "browser").await;
    assert_eq!(page.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(page.text().contains("location.replace"));
    assert_eq!(page.header("refresh"), Some("1"));
    let cookie = page
        .header("set-cookie")
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    for _ in 0..6 {
        let reply = client
            .send(
                Method::GET,
                HOST,
                "/login",
                &[("x-tenant", "browser"), ("cookie", &cookie)],
                "",
            )
            .await;
        assert_eq!(reply.status, StatusCode::OK);
    }

    info!("--- a script that ignores the challenge is banned");
    let statuses: Vec<u16> = {
        let mut all = Vec::new();
        for _ in 0..8 {
            all.push(get(&client, "/login", "script").await.status.as_u16());
        }
        all
    };
    assert_eq!(statuses, [200, 200, 200, 503, 503, 503, 403, 403]);
    let bans = gateway.admin("/bans").await.json();
    assert_eq!(bans["bans"][0]["key"], "script", "{bans}");
}
