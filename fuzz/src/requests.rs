//! `request_policies`: what a client sends, through every request policy's chain.
//!
//! Clients are the least trusted input the agent has: every byte of a request line, its headers
//! and its body reaches the policies' own parsers (hmac-auth's `Authorization` parameters and
//! base64 tag, JWTs and their JSON, Basic credentials, API keys in headers and queries, cookies,
//! `X-Forwarded-For` chains, CORS preflights, User-Agent rules). One route per policy type runs
//! each of them on every input, as the proxy runs a chain (at once, then the rest on a runtime
//! for a plugin that waits), at a fixed clock so that seeds signed for it stay fresh.
//!
//! Besides "never panics", for whatever passes a chain:
//! - the client's `x-fleetgate-consumer` is gone (the gateway alone names consumers);
//! - key-auth, which hides credentials, left neither the key header nor the key parameter;
//! - a chain with an authentication policy identified a consumer.
//!
//! And every refusal answers 4xx or 5xx with a JSON body naming the policy's error, unless it
//! is a challenge page (bot-detect, cc-protection) or a CORS preflight's answer.
//!
//! State carries over from input to input, as it does from request to request: hmac-auth
//! remembers nonces (a seed's signature passes once, then reads as a replay), and cc-protection
//! and key-rate-limit count on the runtime's clock, so under a fuzzer's rate they soon challenge
//! or limit. An input that crashed is reproduced on its own, with fresh state: a crash that
//! needs the state its predecessors left does not reproduce alone.

use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::sync::OnceLock;
use std::time::{Duration, UNIX_EPOCH};

use bytes::Bytes;
use fleetgate_agent_policy::{BodyPrefix, CONSUMER_HEADER, PolicySet, PolicyState, RequestCtx};
use fleetgate_shared::Snapshot;
use fleetgate_shared::bundle::Format;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Uri};

/// The clock every input is judged at: seeds sign their dates and tokens for it.
pub const NOW: u64 = 1_800_000_000;
/// hmac-auth's key for consumer `acme` (key id `acme-hmac`).
pub const HMAC_SECRET: &str = "fuzz-hmac-secret-0123456789abcdef";
/// jwt-auth's HS256 key.
pub const JWT_SECRET: &str = "fuzz-jwt-hs256-secret-0123456789abcdef";
/// The host every request is sent to.
pub const HOST: &str = "fuzz.test";

/// The routes, each with one policy of the same name, and whether it authenticates.
const ROUTES: [(&str, bool); 10] = [
    ("hmac", true),
    ("jwt", true),
    ("key", true),
    ("basic", true),
    ("ipr", false),
    ("cors", false),
    ("bot", false),
    ("cc", false),
    ("rate", false),
    ("size", false),
];

const METHODS: [Method; 8] = [
    Method::GET,
    Method::POST,
    Method::PUT,
    Method::DELETE,
    Method::OPTIONS,
    Method::PATCH,
    Method::HEAD,
    Method::CONNECT,
];

struct Fixture {
    policies: PolicySet,
    runtime: tokio::runtime::Runtime,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let resources = fleetgate_shared::parse_bundle(&config(), Format::Yaml, "")
            .expect("the fuzz config parses");
        if let Err(errors) = fleetgate_shared::validate(&resources) {
            panic!("the fuzz config is invalid: {errors:?}");
        }
        let snapshot = Snapshot::new(1, resources).expect("names are unique");
        let policies = PolicySet::compile(&snapshot, &PolicyState::default())
            .expect("the fuzz policies compile");
        for (route, _) in ROUTES {
            // Each route runs its own policy and nothing else: an empty chain would pass
            // every input without a word.
            assert_eq!(
                policies.chain(HOST, route).names(),
                [route],
                "route {route}"
            );
        }
        Fixture {
            policies,
            runtime: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime"),
        }
    })
}

fn config() -> String {
    // The minimum the validator accepts: basic-auth hashes every well-formed guess.
    let iterations = NonZeroU32::new(10_000).expect("non-zero");
    let basic_hash = fleetgate_shared::password::hash("acme-pass", b"acme-salt", iterations);
    let mut yaml = format!(
        r#"kind: Service
name: web
spec: {{endpoints: [{{address: "127.0.0.1:9"}}]}}
---
kind: Consumer
name: acme
spec:
  credentials:
    keys: [acme-key-0001-abcdef]
    jwt: {{subject: org-acme}}
    hmac: [{{key_id: acme-hmac, secret: {HMAC_SECRET}}}]
    basic: {{username: acme, password_hash: "{basic_hash}"}}
  headers: {{x-tenant: acme}}
---
kind: Policy
name: hmac
spec:
  type: hmac-auth
  config:
    algorithms: [hmac-sha256, hmac-sha512]
    signed_headers: [host]
---
kind: Policy
name: jwt
spec:
  type: jwt-auth
  config:
    algorithms: [HS256]
    keys: [{{kid: k1, algorithm: HS256, secret: {JWT_SECRET}}}]
    issuers: [https://idp.fuzz.test]
    audiences: [api]
    token_from:
      - header: {{name: authorization, prefix: "Bearer "}}
      - cookie: {{name: session}}
      - query: {{name: token}}
    consumer_claim: sub
    claims_to_headers: {{tenant: x-claim-tenant}}
    consumers: [acme]
---
kind: Policy
name: key
spec:
  type: key-auth
  config:
    key_from:
      - header: {{name: x-api-key}}
      - query: {{name: api_key}}
    hide_credentials: true
---
kind: Policy
name: basic
spec:
  type: basic-auth
  config: {{realm: Fuzz}}
---
kind: Policy
name: ipr
spec:
  type: ip-restriction
  config:
    allow: [203.0.113.0/24, "2001:db8::/32"]
    deny: [203.0.113.66]
    client_ip: {{header: {{name: x-forwarded-for, trusted_hops: 1}}}}
---
kind: Policy
name: cors
spec:
  type: cors
  config:
    allow_origins: [https://app.fuzz.test]
    allow_methods: [GET, POST]
    allow_headers: [authorization, content-type]
    expose_headers: [x-request-id]
    allow_credentials: true
    max_age: 10m
---
kind: Policy
name: bot
spec:
  type: bot-detect
  config:
    allow: ["(?i)googlebot"]
    deny: ["(?i)python-requests|scrapy"]
    builtin_list: true
    header_signals: true
    action: challenge
---
kind: Policy
name: cc
spec:
  type: cc-protection
  config:
    key: client_ip
    threshold: {{requests: 1000, per: 1s}}
    ban: 1s
    challenge: true
---
kind: Policy
name: rate
spec:
  type: key-rate-limit
  config:
    key: {{header: x-user}}
    rate: {{requests: 1000, per: 1s}}
    algorithm: gcra
    overrides: {{bulk: {{requests: 5000, per: 1s}}}}
---
kind: Policy
name: size
spec:
  type: request-size-limit
  config: {{max_body_bytes: 64}}
"#
    );
    for (route, _) in ROUTES {
        yaml.push_str(&format!(
            "---\nkind: Route\nname: {route}\nspec:\n  hosts: [{HOST}]\n  \
             matches: [{{path: {{prefix: /{route}}}}}]\n  \
             forward: {{backends: [{{service: web}}]}}\n  policies: [{route}]\n"
        ));
    }
    yaml
}

/// A request read from fuzz bytes.
struct Input {
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
    peer: SocketAddr,
    tls: bool,
    /// Whether basic-auth's route runs too (its hash costs milliseconds per well-formed guess).
    basic: bool,
}

/// The first byte picks the method, TLS, the peer and whether basic-auth runs; then the
/// request target's line, `name: value` header lines up to an empty line, and the body. A
/// target or field the HTTP parser would refuse is left out (the proxy never sees it).
fn read(data: &[u8]) -> Option<Input> {
    let (&first, rest) = data.split_first()?;
    let (head, body) = match rest.windows(2).position(|w| w == b"\n\n") {
        Some(at) => (&rest[..at], &rest[at + 2..]),
        None => (rest, &[][..]),
    };
    let mut lines = head.split(|&b| b == b'\n');
    let target = lines.next().unwrap_or_default();
    let uri = Uri::try_from(target).unwrap_or_else(|_| Uri::from_static("/"));
    let mut headers = HeaderMap::new();
    for line in lines {
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(&line[..colon]),
            HeaderValue::from_bytes(line[colon + 1..].trim_ascii()),
        ) else {
            continue;
        };
        headers.append(name, value);
    }
    let peers = [
        "203.0.113.7:5000",
        "198.51.100.9:6000",
        "[2001:db8::7]:7000",
        "[::ffff:203.0.113.8]:8000",
    ];
    Some(Input {
        method: METHODS[usize::from(first & 7)].clone(),
        uri,
        headers,
        body: Bytes::copy_from_slice(body),
        peer: peers[usize::from((first >> 3) & 3)]
            .parse()
            .expect("a peer address"),
        tls: first & 0x20 != 0,
        basic: first & 0x40 != 0,
    })
}

/// The `request_policies` target: how each route's chain answered `data` (`None` when the
/// request passed, else the status of the chain's answer), asserting the properties above on
/// the way.
pub fn run(data: &[u8]) -> Vec<(&'static str, Option<http::StatusCode>)> {
    let Some(input) = read(data) else {
        return Vec::new();
    };
    let fixture = fixture();
    let mut outcomes = Vec::with_capacity(ROUTES.len());
    for (route, authenticates) in ROUTES {
        if route == "basic" && !input.basic {
            continue;
        }
        let chain = fixture.policies.chain(HOST, route);
        let mut uri = input.uri.clone();
        let mut headers = input.headers.clone();
        let mut ctx = RequestCtx::borrowing(
            input.method.clone(),
            &mut uri,
            &mut headers,
            input.peer,
            input.tls,
        );
        ctx.set_now(UNIX_EPOCH + Duration::from_secs(NOW));
        if let Some(limit) = chain.body_limit() {
            let limit = usize::try_from(limit).unwrap_or(usize::MAX);
            ctx.body = if input.body.len() <= limit {
                BodyPrefix::Complete(input.body.clone())
            } else {
                BodyPrefix::Partial(input.body.slice(..limit))
            };
        }
        // `Chain::run` goes as far as it can at once, then waits on the runtime.
        let rejection = fixture.runtime.block_on(chain.run(&mut ctx));
        outcomes.push((route, rejection.as_ref().map(|r| r.response.status())));
        match rejection {
            None => {
                assert!(
                    !ctx.headers.contains_key(CONSUMER_HEADER),
                    "{route}: a client's consumer header passed"
                );
                if authenticates {
                    assert!(ctx.consumer.is_some(), "{route}: passed without a consumer");
                }
                if route == "key" {
                    assert!(
                        !ctx.headers.contains_key("x-api-key"),
                        "the key went upstream"
                    );
                    let query = ctx.uri.query().unwrap_or_default();
                    assert!(
                        !query
                            .split('&')
                            .any(|pair| pair.split('=').next() == Some("api_key")),
                        "the key parameter went upstream: {query}"
                    );
                }
            }
            Some(rejection) => check_refusal(route, &rejection.response),
        }
    }
    outcomes
}

/// A refusal is an error status with a JSON body naming the error, unless it is a challenge
/// page or a CORS preflight's answer.
fn check_refusal(route: &str, response: &http::Response<Bytes>) {
    let status = response.status();
    if route == "cors" && status.is_success() {
        return;
    }
    assert!(
        status.is_client_error() || status.is_server_error(),
        "{route}: refused with {status}"
    );
    let json = response
        .headers()
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|t| t.as_bytes().starts_with(b"application/json"));
    if !json && matches!(route, "bot" | "cc") {
        return;
    }
    let body: serde_json::Value = serde_json::from_slice(response.body())
        .unwrap_or_else(|e| panic!("{route}: a {status} refusal's body is not JSON: {e}"));
    assert!(
        body["error"].as_str().is_some_and(|e| !e.is_empty()),
        "{route}: a refusal names no error: {body}"
    );
}

#[cfg(test)]
mod tests {
    use http::StatusCode;

    use super::*;

    /// Each committed seed gets the answer it was made for from the policy it was made for, so
    /// fuzzing starts from the accepting paths (a signature, a token that verifies) and not
    /// only from refusals.
    #[test]
    fn the_seeds_reach_what_they_were_made_for() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("seeds/request_policies");
        let expected: [(&str, &str, Option<StatusCode>); 20] = [
            ("hmac-sha256", "hmac", None),
            ("hmac-sha512", "hmac", None),
            ("jwt-header", "jwt", None),
            ("jwt-cookie", "jwt", None),
            ("jwt-query", "jwt", None),
            ("jwt-none", "jwt", Some(StatusCode::UNAUTHORIZED)),
            ("key-header", "key", None),
            ("key-query", "key", None),
            ("key-query-encoded", "key", None),
            ("basic", "basic", None),
            ("basic-wrong", "basic", Some(StatusCode::UNAUTHORIZED)),
            ("ipr-forwarded", "ipr", None),
            ("ipr-v6", "ipr", None),
            ("ipr-denied", "ipr", Some(StatusCode::FORBIDDEN)),
            ("cors-preflight", "cors", Some(StatusCode::NO_CONTENT)),
            ("cors-other-origin", "cors", None),
            ("bot-python", "bot", Some(StatusCode::SERVICE_UNAVAILABLE)),
            ("bot-browser", "bot", None),
            ("rate-bulk", "rate", None),
            ("size", "size", Some(StatusCode::PAYLOAD_TOO_LARGE)),
        ];
        for (seed, route, answer) in expected {
            let data = std::fs::read(dir.join(seed)).unwrap_or_else(|e| panic!("{seed}: {e}"));
            let outcomes = run(&data);
            let got = outcomes
                .iter()
                .find(|(r, _)| *r == route)
                .unwrap_or_else(|| panic!("{seed}: route {route} did not run"));
            assert_eq!(got.1, answer, "{seed} on {route}");
        }
        let seeds = std::fs::read_dir(&dir).map(Iterator::count).unwrap_or(0);
        assert_eq!(seeds, expected.len(), "every seed has its expectation");
    }
}
