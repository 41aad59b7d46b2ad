//! Routing through the proxy: which route takes a request, and what its action does, observed
//! from outside — by the body a direct response carries, or by which backend answered and what
//! that backend saw.

#![allow(clippy::unwrap_used)]

mod support;

use std::collections::BTreeMap;

use http::{Method, StatusCode};
use support::{Backend, start_gateway};
use tracing::info;

/// Routes answered by the gateway itself, each naming itself in its body.
const MATCHING: &str = r#"
kind: Route
name: host-exact
spec:
  hosts: [api.example.com]
  matches: [{path: {exact: /hosts}}]
  direct_response: {status: 200, body: host-exact}
---
kind: Route
name: host-wildcard
spec:
  hosts: ["*.example.com"]
  matches: [{path: {exact: /hosts}}]
  direct_response: {status: 200, body: host-wildcard}
---
kind: Route
name: host-any
spec:
  matches: [{path: {exact: /hosts}}]
  direct_response: {status: 200, body: host-any}
---
kind: Route
name: path-exact
spec:
  hosts: [paths.test]
  matches: [{path: {exact: /login}}]
  direct_response: {status: 200, body: path-exact}
---
kind: Route
name: path-prefix
spec:
  hosts: [paths.test]
  matches: [{path: {prefix: /api}}]
  direct_response: {status: 200, body: path-prefix}
---
kind: Route
name: path-regex
spec:
  hosts: [paths.test]
  matches: [{path: {regex: "/users/[0-9]+"}}]
  direct_response: {status: 200, body: path-regex}
---
kind: Route
name: method-post
spec:
  hosts: [match.test]
  matches: [{path: {exact: /m}, methods: [POST]}]
  direct_response: {status: 200, body: method-post}
---
kind: Route
name: method-any
spec:
  hosts: [match.test]
  matches: [{path: {exact: /m}}]
  direct_response: {status: 200, body: method-any}
---
kind: Route
name: header-staging
spec:
  hosts: [match.test]
  matches: [{path: {exact: /h}, headers: [{name: x-env, exact: staging}]}]
  direct_response: {status: 200, body: header-staging}
---
kind: Route
name: header-none
spec:
  hosts: [match.test]
  matches: [{path: {exact: /h}}]
  direct_response: {status: 200, body: header-none}
---
kind: Route
name: query-v2
spec:
  hosts: [match.test]
  matches: [{path: {exact: /q}, query: [{name: v, exact: "2"}]}]
  direct_response: {status: 200, body: query-v2}
---
kind: Route
name: query-none
spec:
  hosts: [match.test]
  matches: [{path: {exact: /q}}]
  direct_response: {status: 200, body: query-none}
---
kind: Route
name: prio-specific
spec:
  hosts: [prio.test]
  matches: [{path: {exact: /p}}]
  direct_response: {status: 200, body: prio-specific}
---
kind: Route
name: prio-broad-but-high
spec:
  hosts: [prio.test]
  priority: 10
  matches: [{path: {prefix: /p}}]
  direct_response: {status: 200, body: prio-broad-but-high}
---
kind: Route
name: prio-low
spec:
  hosts: [prio.test]
  priority: -5
  matches: [{path: {prefix: /other}}]
  direct_response: {status: 200, body: prio-low}
---
kind: Route
name: prio-lower
spec:
  hosts: [prio.test]
  priority: -6
  matches: [{path: {prefix: /other}}]
  direct_response: {status: 200, body: prio-lower}
"#;

async fn body_of(client: &support::HttpClient, method: Method, host: &str, path: &str) -> String {
    let reply = client.send(method, host, path, &[], "").await;
    if reply.status == StatusCode::NOT_FOUND {
        return "404".into();
    }
    assert_eq!(
        reply.status,
        StatusCode::OK,
        "{host}{path}: {}",
        reply.text()
    );
    reply.text()
}

#[tokio::test]
async fn hosts_match_exact_before_wildcard_before_any() {
    support::init_tracing();
    let gw = start_gateway(MATCHING).await;
    let client = gw.client();
    let get = |host: &'static str| body_of(&client, Method::GET, host, "/hosts");

    info!("--- an exact host beats its wildcard, which beats a route for any host");
    assert_eq!(get("api.example.com").await, "host-exact");
    assert_eq!(get("API.Example.com:8080").await, "host-exact");
    assert_eq!(get("www.example.com").await, "host-wildcard");

    info!("--- a wildcard covers exactly one label; everything else falls to the any-host route");
    assert_eq!(get("a.b.example.com").await, "host-any");
    assert_eq!(get("example.com").await, "host-any");
    assert_eq!(get("other.org").await, "host-any");
}

#[tokio::test]
async fn paths_match_exactly_by_prefix_on_segment_boundaries_and_by_anchored_regex() {
    support::init_tracing();
    let gw = start_gateway(MATCHING).await;
    let client = gw.client();
    let get = |path: &'static str| body_of(&client, Method::GET, "paths.test", path);

    info!("--- exact paths match only themselves");
    assert_eq!(get("/login").await, "path-exact");
    assert_eq!(get("/login?next=/home").await, "path-exact");
    assert_eq!(get("/login/x").await, "404");

    info!("--- prefixes match on segment boundaries");
    assert_eq!(get("/api").await, "path-prefix");
    assert_eq!(get("/api/").await, "path-prefix");
    assert_eq!(get("/api/v1/items").await, "path-prefix");
    assert_eq!(get("/apix").await, "404");

    info!("--- a regex must match the whole path");
    assert_eq!(get("/users/42").await, "path-regex");
    assert_eq!(get("/users/abc").await, "404");
    assert_eq!(get("/users/42/posts").await, "404");
}

#[tokio::test]
async fn methods_headers_and_query_narrow_a_match_and_priority_outranks_specificity() {
    support::init_tracing();
    let gw = start_gateway(MATCHING).await;
    let client = gw.client();

    info!("--- a method condition takes only that method");
    assert_eq!(
        body_of(&client, Method::POST, "match.test", "/m").await,
        "method-post"
    );
    assert_eq!(
        body_of(&client, Method::GET, "match.test", "/m").await,
        "method-any"
    );

    info!("--- a header condition takes only requests carrying that value");
    let reply = client
        .send(Method::GET, "match.test", "/h", &[("x-env", "staging")], "")
        .await;
    assert_eq!(reply.text(), "header-staging");
    let reply = client
        .send(Method::GET, "match.test", "/h", &[("x-env", "prod")], "")
        .await;
    assert_eq!(reply.text(), "header-none");
    assert_eq!(
        body_of(&client, Method::GET, "match.test", "/h").await,
        "header-none"
    );

    info!("--- a query condition takes only requests with that parameter value");
    assert_eq!(
        body_of(&client, Method::GET, "match.test", "/q?a=1&v=2").await,
        "query-v2"
    );
    assert_eq!(
        body_of(&client, Method::GET, "match.test", "/q?v=3").await,
        "query-none"
    );

    info!("--- a higher priority wins over a more specific path");
    assert_eq!(
        body_of(&client, Method::GET, "prio.test", "/p").await,
        "prio-broad-but-high"
    );
    assert_eq!(
        body_of(&client, Method::GET, "prio.test", "/p/deeper").await,
        "prio-broad-but-high"
    );
    info!("--- between two identical matches, the higher priority wins");
    assert_eq!(
        body_of(&client, Method::GET, "prio.test", "/other").await,
        "prio-low"
    );
}

#[tokio::test]
async fn an_unmatched_request_gets_a_json_404_with_a_request_id() {
    support::init_tracing();
    let gw = start_gateway(MATCHING).await;
    let client = gw.client();

    info!("--- no route for this host and path");
    let reply = client.get("nowhere.test", "/nothing/here").await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    assert_eq!(reply.header("content-type"), Some("application/json"));
    let body = reply.json();
    assert_eq!(body["error"], "no_route", "{body}");
    let id = reply.header("x-request-id").expect("x-request-id on a 404");
    assert!(!id.is_empty());
    assert_eq!(body["request_id"], id, "the body names the same request id");

    info!("--- the client's own request id is echoed back");
    let reply = client
        .send(
            Method::GET,
            "nowhere.test",
            "/",
            &[("x-request-id", "trace-me-42")],
            "",
        )
        .await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    assert_eq!(reply.header("x-request-id"), Some("trace-me-42"));
}

const ACTIONS: &str = r#"
kind: Route
name: redirect-everything
spec:
  hosts: [actions.test]
  matches: [{path: {exact: /old}}]
  redirect: {scheme: https, host: new.example.com, port: 8443, path: /new, status: 301}
---
kind: Route
name: redirect-path-only
spec:
  hosts: [actions.test]
  matches: [{path: {exact: /moved}}]
  redirect: {path: /here}
---
kind: Route
name: teapot
spec:
  hosts: [actions.test]
  matches: [{path: {exact: /tea}}]
  direct_response: {status: 418, body: short and stout, content_type: text/x-teapot}
  filters:
    response_headers:
      set: {x-route: teapot}
"#;

#[tokio::test]
async fn redirects_and_direct_responses_are_answered_by_the_gateway() {
    support::init_tracing();
    let gw = start_gateway(ACTIONS).await;
    let client = gw.client();

    info!("--- a redirect replaces what it names and keeps the query");
    let reply = client.get("actions.test", "/old?x=1").await;
    assert_eq!(reply.status, StatusCode::MOVED_PERMANENTLY);
    assert_eq!(
        reply.header("location"),
        Some("https://new.example.com:8443/new?x=1")
    );

    info!("--- a redirect without scheme or host keeps the request's, with the default 302");
    let reply = client.get("actions.test", "/moved").await;
    assert_eq!(reply.status, StatusCode::FOUND);
    assert_eq!(reply.header("location"), Some("http://actions.test/here"));

    info!("--- a direct response carries its status, body, content type and header edits");
    let reply = client.get("actions.test", "/tea").await;
    assert_eq!(reply.status.as_u16(), 418);
    assert_eq!(reply.text(), "short and stout");
    assert_eq!(reply.header("content-type"), Some("text/x-teapot"));
    assert_eq!(reply.header("x-route"), Some("teapot"));
    assert!(reply.header("x-request-id").is_some());
}

fn forwarding_config(blue: &Backend, green: &Backend, stages: &[&Backend; 3]) -> String {
    r#"
kind: Service
name: blue
spec: {endpoints: [{address: "@BLUE@"}]}
---
kind: Service
name: green
spec: {endpoints: [{address: "@GREEN@"}]}
---
kind: Service
name: stages
spec:
  endpoints:
    - {address: "@S0@", labels: {stage: blue}}
    - {address: "@S1@", labels: {stage: green}}
    - {address: "@S2@", labels: {stage: green}}
---
kind: Route
name: rewrite
spec:
  hosts: [rewrite.test]
  matches: [{path: {prefix: /old-api}}]
  forward: {backends: [{service: blue}]}
  filters:
    rewrite: {path_prefix: /v2, host: internal.blue}
    request_headers:
      add: {x-added: gateway}
      set: {x-set-me: gateway, x-forwarded-proto: https}
      remove: [x-remove-me]
    response_headers:
      add: {x-extra: one}
      set: {x-served-by: fleetgate}
      remove: [x-backend]
---
kind: Route
name: canary
spec:
  hosts: [canary.test]
  forward:
    backends: [{service: blue}]
    canary:
      - header: {name: x-canary, exact: green}
        backends: [{service: green}]
---
kind: Route
name: weighted
spec:
  hosts: [weighted.test]
  forward:
    backends:
      - {service: blue, weight: 90}
      - {service: green, weight: 10}
---
kind: Route
name: subset
spec:
  hosts: [subset.test]
  forward:
    backends: [{service: stages, subset: {stage: green}}]
"#
    .replace("@BLUE@", &blue.addr.to_string())
    .replace("@GREEN@", &green.addr.to_string())
    .replace("@S0@", &stages[0].addr.to_string())
    .replace("@S1@", &stages[1].addr.to_string())
    .replace("@S2@", &stages[2].addr.to_string())
}

struct Fleet {
    blue: Backend,
    green: Backend,
    stages: [Backend; 3],
}

impl Fleet {
    async fn start() -> Fleet {
        Fleet {
            blue: Backend::start("blue").await,
            green: Backend::start("green").await,
            stages: [
                Backend::start("stage-blue").await,
                Backend::start("stage-green-1").await,
                Backend::start("stage-green-2").await,
            ],
        }
    }

    fn config(&self) -> String {
        let [s0, s1, s2] = &self.stages;
        forwarding_config(&self.blue, &self.green, &[s0, s1, s2])
    }
}

#[tokio::test]
async fn rewrites_and_header_edits_are_what_backend_and_client_see() {
    support::init_tracing();
    let fleet = Fleet::start().await;
    let gw = start_gateway(&fleet.config()).await;

    info!("--- a request through a route that rewrites path and host and edits headers");
    let reply = gw
        .client()
        .send(
            Method::GET,
            "rewrite.test",
            "/old-api/items/7?x=1",
            &[
                ("x-remove-me", "secret"),
                ("x-set-me", "client"),
                ("x-added", "client"),
            ],
            "",
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());

    info!("--- the backend saw the rewritten path (query kept) and host");
    assert_eq!(reply.backend(), "blue");
    let seen = reply.json();
    assert_eq!(seen["path"], "/v2/items/7?x=1");
    assert_eq!(reply.seen_header("host").as_deref(), Some("internal.blue"));

    info!("--- request header edits: removed, replaced, appended");
    assert_eq!(reply.seen_header("x-remove-me"), None);
    assert_eq!(reply.seen_header("x-set-me").as_deref(), Some("gateway"));
    assert_eq!(
        reply.seen_header("x-added").as_deref(),
        Some("client, gateway")
    );
    info!("--- edits apply to the fields the gateway adds too: one X-Forwarded-Proto, the route's");
    assert_eq!(
        reply.seen_header("x-forwarded-proto").as_deref(),
        Some("https")
    );
    assert_eq!(
        reply.seen_header("x-forwarded-host").as_deref(),
        Some("rewrite.test"),
        "X-Forwarded-Host is the host the client asked for, not the rewrite"
    );
    assert_eq!(
        reply.seen_header("x-request-id").as_deref(),
        reply.header("x-request-id")
    );

    info!("--- response header edits: the backend's header removed, others set and added");
    assert_eq!(reply.header("x-backend"), None);
    assert_eq!(reply.header("x-served-by"), Some("fleetgate"));
    assert_eq!(reply.header("x-extra"), Some("one"));

    info!("--- the rewrite replaces the prefix only on a segment boundary");
    let reply = gw.client().get("rewrite.test", "/old-api").await;
    assert_eq!(reply.json()["path"], "/v2");
}

#[tokio::test]
async fn a_canary_header_reaches_the_canary_backend() {
    support::init_tracing();
    let fleet = Fleet::start().await;
    let gw = start_gateway(&fleet.config()).await;
    let client = gw.client();

    info!("--- without the header every request reaches the main backend");
    for _ in 0..10 {
        assert_eq!(client.get("canary.test", "/").await.backend(), "blue");
    }

    info!("--- with the canary header every request reaches the canary backend");
    for _ in 0..10 {
        let reply = client
            .send(
                Method::GET,
                "canary.test",
                "/",
                &[("x-canary", "green")],
                "",
            )
            .await;
        assert_eq!(reply.backend(), "green");
    }

    info!("--- another value of the header is not the canary");
    let reply = client
        .send(Method::GET, "canary.test", "/", &[("x-canary", "blue")], "")
        .await;
    assert_eq!(reply.backend(), "blue");
}

#[tokio::test]
async fn weighted_backends_split_traffic_by_weight() {
    support::init_tracing();
    let fleet = Fleet::start().await;
    let gw = start_gateway(&fleet.config()).await;
    let client = gw.client();

    info!("--- 1000 requests over a 90/10 split");
    let mut counts = BTreeMap::<String, usize>::new();
    for _ in 0..1000 {
        *counts
            .entry(client.get("weighted.test", "/").await.backend())
            .or_default() += 1;
    }
    info!(?counts, "--- spread");
    let green = counts.get("green").copied().unwrap_or(0);
    let blue = counts.get("blue").copied().unwrap_or(0);
    assert_eq!(
        blue + green,
        1000,
        "only the route's backends answer: {counts:?}"
    );
    // 10% of 1000 has a standard deviation of about 9.5; ±50 is more than 5 of them.
    assert!(
        (50..=150).contains(&green),
        "green should get about 100 of 1000: {counts:?}"
    );
}

#[tokio::test]
async fn a_subset_reaches_only_its_labelled_endpoints() {
    support::init_tracing();
    let fleet = Fleet::start().await;
    let gw = start_gateway(&fleet.config()).await;
    let client = gw.client();

    info!("--- 40 requests to a route that selects stage=green");
    let mut counts = BTreeMap::<String, usize>::new();
    for _ in 0..40 {
        *counts
            .entry(client.get("subset.test", "/").await.backend())
            .or_default() += 1;
    }
    info!(?counts, "--- spread");
    assert_eq!(
        fleet.stages[0].requests(),
        0,
        "the blue endpoint got traffic"
    );
    assert_eq!(
        counts,
        BTreeMap::from([
            ("stage-green-1".to_owned(), 20),
            ("stage-green-2".to_owned(), 20)
        ]),
        "round robin over the green endpoints only"
    );
}

#[tokio::test]
async fn a_regex_rewrite_that_drops_the_leading_slash_still_reaches_the_backend() {
    support::init_tracing();
    let backend = Backend::start("a").await;
    let config = format!(
        r#"
kind: Service
name: s
spec: {{endpoints: [{{address: "{}"}}]}}
---
kind: Route
name: r
spec:
  forward: {{backends: [{{service: s}}]}}
  filters:
    rewrite: {{path_regex: {{pattern: "^/api/(.*)$", substitution: "$1"}}}}
"#,
        backend.addr
    );
    let gw = start_gateway(&config).await;
    info!("--- /api/items/7 becomes `items/7`; the request target gets its slash back");
    let reply = gw.client().get("any.test", "/api/items/7?x=1").await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert_eq!(reply.json()["path"], "/items/7?x=1");
}
