//! Upstream behaviour seen from a client: how requests spread over endpoints, how dead or
//! failing endpoints leave (and rejoin) the rotation, what is retried, and what a client gets
//! when no endpoint can answer.

#![allow(clippy::unwrap_used)]

mod support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use http::{Method, StatusCode};
use support::{Backend, HttpClient, dead_address, eventually, start_gateway};
use tracing::info;

async fn spread(client: &HttpClient, host: &str, n: usize) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for _ in 0..n {
        let reply = client.get(host, "/").await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
        *counts.entry(reply.backend()).or_default() += 1;
    }
    counts
}

fn counts(pairs: &[(&str, usize)]) -> BTreeMap<String, usize> {
    pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
}

#[tokio::test]
async fn round_robin_spreads_evenly_over_three_backends() {
    support::init_tracing();
    let (a, b, c) = (
        Backend::start("a").await,
        Backend::start("b").await,
        Backend::start("c").await,
    );
    let config = format!(
        r#"
kind: Service
name: pool
spec:
  load_balancing: {{policy: round-robin}}
  endpoints: [{{address: "{}"}}, {{address: "{}"}}, {{address: "{}"}}]
---
kind: Route
name: all
spec:
  forward: {{backends: [{{service: pool}}]}}
"#,
        a.addr, b.addr, c.addr
    );
    let gw = start_gateway(&config).await;

    info!("--- 300 requests, one after another");
    let spread = spread(&gw.client(), "rr.test", 300).await;
    assert_eq!(spread, counts(&[("a", 100), ("b", 100), ("c", 100)]));
}

#[tokio::test]
async fn health_checks_take_a_stopped_backend_out_and_bring_it_back() {
    support::init_tracing();
    let a = Backend::start("a").await;
    let mut b = Backend::start("b").await;
    let c = Backend::start("c").await;
    let config = format!(
        r#"
kind: Service
name: pool
spec:
  endpoints: [{{address: "{}"}}, {{address: "{}"}}, {{address: "{}"}}]
  health_check:
    path: /health
    interval: 100ms
    timeout: 100ms
    healthy_threshold: 1
    unhealthy_threshold: 1
---
kind: Route
name: all
spec:
  forward: {{backends: [{{service: pool}}]}}
"#,
        a.addr, b.addr, c.addr
    );
    let gw = start_gateway(&config).await;
    let client = gw.client();

    info!("--- all three serve while healthy");
    b.wait_for_requests(1).await; // at least one probe reached it
    let before = spread(&client, "hc.test", 30).await;
    assert!(before.get("b").copied().unwrap_or(0) > 0, "{before:?}");

    info!("--- b stops; the next probe takes it out of rotation");
    let b_addr = b.addr;
    b.stop().await;
    eventually("b to fail its health check", || {
        !gw.in_rotation("pool", b_addr)
    })
    .await;

    info!("--- every request now succeeds on a and c");
    let during = spread(&client, "hc.test", 30).await;
    assert_eq!(during.values().sum::<usize>(), 30);
    assert!(!during.contains_key("b"), "{during:?}");

    info!("--- b comes back on the same port; the next probe returns it to rotation");
    let b = Backend::start_at("b", b_addr).await;
    eventually("b to pass its health check", || {
        gw.in_rotation("pool", b_addr)
    })
    .await;
    let after = spread(&client, "hc.test", 30).await;
    assert!(after.get("b").copied().unwrap_or(0) > 0, "{after:?}");
    assert!(
        b.requests() > 0,
        "the restarted backend got probes and traffic"
    );
}

#[tokio::test]
async fn outlier_detection_ejects_a_backend_answering_errors() {
    support::init_tracing();
    let good = Backend::start("good").await;
    let bad = Backend::start("bad").await;
    bad.force_status(Some(500));
    let config = format!(
        r#"
kind: Service
name: pool
spec:
  endpoints: [{{address: "{}"}}, {{address: "{}"}}]
  outlier_detection:
    consecutive_failures: 3
    base_ejection: 30s
---
kind: Route
name: all
spec:
  forward: {{backends: [{{service: pool}}]}}
"#,
        good.addr, bad.addr
    );
    let gw = start_gateway(&config).await;
    let client = gw.client();

    info!("--- round robin sends every other request to the failing backend");
    let mut errors = 0;
    for _ in 0..10 {
        let reply = client.get("od.test", "/").await;
        if reply.status == StatusCode::INTERNAL_SERVER_ERROR {
            assert_eq!(reply.backend(), "bad");
            errors += 1;
        }
    }
    assert_eq!(
        errors, 3,
        "ejected after exactly consecutive_failures errors"
    );
    assert!(!gw.in_rotation("pool", bad.addr));
    assert!(
        gw.endpoint("pool", bad.addr)
            .is_ejected(fleetgate_agent::upstream::now_ms())
    );

    info!("--- while ejected, every request reaches the good backend");
    let spread = spread(&client, "od.test", 20).await;
    assert_eq!(spread, counts(&[("good", 20)]));
    assert_eq!(bad.requests(), 3);

    info!("--- /config shows the ejection");
    let config = gw.admin("/config").await.json();
    let endpoints = config["services"]["pool"]["endpoints"].as_array().unwrap();
    let bad_entry = endpoints
        .iter()
        .find(|e| e["address"] == bad.addr.to_string())
        .unwrap();
    assert_eq!(bad_entry["ejected"], true, "{config}");
}

fn retry_config(dead: std::net::SocketAddr, live: &Backend) -> String {
    format!(
        r#"
kind: Service
name: flaky
spec:
  endpoints: [{{address: "{dead}"}}, {{address: "{live}"}}]
---
kind: Route
name: strict
spec:
  hosts: [strict.test]
  forward:
    backends: [{{service: flaky}}]
    retries: {{attempts: 2, budget_percent: 100}}
---
kind: Route
name: lenient
spec:
  hosts: [lenient.test]
  forward:
    backends: [{{service: flaky}}]
    retries: {{attempts: 2, non_idempotent: true, budget_percent: 100}}
---
kind: Route
name: budgeted
spec:
  hosts: [budgeted.test]
  forward:
    backends: [{{service: flaky}}]
    retries: {{attempts: 2}}
"#,
        live = live.addr
    )
}

#[tokio::test]
async fn idempotent_requests_are_retried_past_a_dead_endpoint() {
    support::init_tracing();
    let live = Backend::start("live").await;
    let gw = start_gateway(&retry_config(dead_address(), &live)).await;
    let client = gw.client();

    info!("--- first attempts hit a port nothing listens on; every GET succeeds on its retry");
    for i in 0..50 {
        let reply = client.get("strict.test", &format!("/get/{i}")).await;
        assert_eq!(
            reply.status,
            StatusCode::OK,
            "GET {i} failed: {}",
            reply.text()
        );
        assert_eq!(reply.backend(), "live");
    }
    assert_eq!(live.requests(), 50);

    info!("--- PUT and DELETE are idempotent too");
    for method in [Method::PUT, Method::DELETE, Method::PUT, Method::DELETE] {
        let reply = client
            .send(method.clone(), "strict.test", "/thing", &[], "x")
            .await;
        assert_eq!(reply.status, StatusCode::OK, "{method}: {}", reply.text());
    }
}

#[tokio::test]
async fn the_retry_budget_caps_retries_to_a_share_of_requests() {
    support::init_tracing();
    let live = Backend::start("live").await;
    let gw = start_gateway(&retry_config(dead_address(), &live)).await;
    let client = gw.client();

    // Each request's first attempt and its retry take two round-robin turns, so with one dead
    // endpoint of two, every first attempt lands on the dead one and needs a retry.
    info!(
        "--- the default budget (20% of requests, plus a floor of 10) absorbs the first failures"
    );
    let mut ok = 0;
    let mut failed = 0;
    for i in 0..50 {
        let reply = client.get("budgeted.test", &format!("/get/{i}")).await;
        match reply.status {
            StatusCode::OK => ok += 1,
            StatusCode::BAD_GATEWAY => failed += 1,
            other => panic!("unexpected {other}: {}", reply.text()),
        }
        if i < 10 {
            assert_eq!(reply.status, StatusCode::OK, "GET {i} is within the floor");
        }
    }
    info!(ok, failed, "--- outcome");

    info!("--- past it, failures reach the client instead of multiplying load");
    assert!(failed > 0, "retries were not capped: {ok} ok");
    assert_eq!(live.requests(), ok);
}

#[tokio::test]
async fn a_post_is_retried_only_when_the_route_allows_non_idempotent_retries() {
    support::init_tracing();
    let live = Backend::start("live").await;
    let gw = start_gateway(&retry_config(dead_address(), &live)).await;
    let client = gw.client();

    info!("--- POSTs on a route with default retries: those sent to the dead endpoint fail");
    let mut failed = 0;
    for i in 0..10 {
        let reply = client
            .send(
                Method::POST,
                "strict.test",
                "/orders",
                &[],
                &format!("order {i}"),
            )
            .await;
        match reply.status {
            StatusCode::OK => assert_eq!(reply.json()["body"], format!("order {i}")),
            StatusCode::BAD_GATEWAY => failed += 1,
            other => panic!("unexpected {other}: {}", reply.text()),
        }
    }
    assert_eq!(
        failed, 5,
        "round robin sends every other POST to the dead endpoint"
    );
    assert_eq!(live.requests(), 5);

    info!("--- POSTs on a route with non_idempotent retries all succeed, body intact");
    for i in 0..10 {
        let reply = client
            .send(
                Method::POST,
                "lenient.test",
                "/orders",
                &[],
                &format!("order {i}"),
            )
            .await;
        assert_eq!(reply.status, StatusCode::OK, "POST {i}: {}", reply.text());
        assert_eq!(reply.json()["body"], format!("order {i}"));
    }
    assert_eq!(live.requests(), 15);
}

#[tokio::test]
async fn with_every_endpoint_dead_the_client_gets_a_json_error_naming_the_service() {
    support::init_tracing();
    let (dead1, dead2) = (dead_address(), dead_address());
    let config = format!(
        r#"
kind: Service
name: gone
spec:
  endpoints: [{{address: "{dead1}"}}, {{address: "{dead2}"}}]
---
kind: Service
name: gone-checked
spec:
  endpoints: [{{address: "{dead1}"}}, {{address: "{dead2}"}}]
  health_check: {{path: /health, interval: 100ms, timeout: 100ms, unhealthy_threshold: 1}}
---
kind: Route
name: plain
spec:
  hosts: [plain.test]
  forward: {{backends: [{{service: gone}}]}}
---
kind: Route
name: checked
spec:
  hosts: [checked.test]
  forward: {{backends: [{{service: gone-checked}}]}}
"#
    );
    let gw = start_gateway(&config).await;
    let client = gw.client();

    info!("--- without health checks, the connect fails: 502");
    let reply = client.get("plain.test", "/").await;
    assert_eq!(reply.status, StatusCode::BAD_GATEWAY);
    let body = reply.json();
    info!(%body, "--- error body");
    assert_eq!(body["error"], "upstream_connect_failed");
    assert!(
        body["message"].as_str().unwrap().contains("`gone`"),
        "the message names the service: {body}"
    );
    assert_eq!(body["request_id"], reply.header("x-request-id").unwrap());

    info!("--- with health checks, both endpoints leave the rotation: 503");
    eventually("both endpoints to fail their health checks", || {
        !gw.in_rotation("gone-checked", dead1) && !gw.in_rotation("gone-checked", dead2)
    })
    .await;
    let reply = client.get("checked.test", "/").await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    let body = reply.json();
    info!(%body, "--- error body");
    assert_eq!(body["error"], "no_healthy_endpoint");
    assert!(
        body["message"].as_str().unwrap().contains("`gone-checked`"),
        "the message names the service: {body}"
    );
}

#[tokio::test]
async fn a_slow_upstream_gets_a_504_at_the_request_timeout() {
    support::init_tracing();
    let slow = Backend::start("slow").await;
    let config = format!(
        r#"
kind: Service
name: slow
spec: {{endpoints: [{{address: "{}"}}]}}
---
kind: Route
name: hurried
spec:
  forward:
    backends: [{{service: slow}}]
    timeouts: {{request: 200ms}}
"#,
        slow.addr
    );
    let gw = start_gateway(&config).await;

    info!("--- the backend takes 2 s; the route allows 200 ms");
    let started = Instant::now();
    let reply = gw.client().get("slow.test", "/slow/2000").await;
    let elapsed = started.elapsed();
    assert_eq!(
        reply.status,
        StatusCode::GATEWAY_TIMEOUT,
        "{}",
        reply.text()
    );
    assert_eq!(reply.json()["error"], "upstream_timeout");
    assert!(
        elapsed < Duration::from_millis(1500),
        "answered after {elapsed:?}, not at the timeout"
    );

    info!("--- a fast request on the same route is unaffected");
    let reply = gw.client().get("slow.test", "/slow/10").await;
    assert_eq!(reply.status, StatusCode::OK);
}

#[tokio::test]
async fn mirroring_copies_requests_to_another_service_and_ignores_its_answers() {
    support::init_tracing();
    let primary = Backend::start("primary").await;
    let shadow = Backend::start("shadow").await;
    shadow.force_status(Some(500));
    let gw = start_gateway(&format!(
        "kind: Service\nname: primary\nspec: {{ endpoints: [{{ address: '{}' }}] }}\n---\n\
         kind: Service\nname: shadow\nspec: {{ endpoints: [{{ address: '{}' }}] }}\n---\n\
         kind: Route\nname: mirrored\nspec:\n  forward:\n    backends: [{{ service: primary }}]\n    mirror: {{ service: shadow, percent: 100 }}\n",
        primary.addr, shadow.addr
    ))
    .await;
    let client = gw.client();

    info!("--- every request is answered by the primary, and a copy reaches the shadow");
    for i in 0..20 {
        let reply = client
            .send(
                Method::POST,
                "m.test",
                &format!("/orders/{i}"),
                &[],
                "{\"n\":1}",
            )
            .await;
        assert_eq!(
            reply.status,
            StatusCode::OK,
            "the shadow's 500 never reaches the client"
        );
        assert_eq!(reply.backend(), "primary");
    }
    assert_eq!(primary.requests(), 20);
    shadow.wait_for_requests(20).await;
}
