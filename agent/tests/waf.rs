//! The WAF through a running gateway: libmodsecurity3 with the OWASP CRS (Debian's
//! `modsecurity-crs`) in front of a real backend.
//!
//! Attacks go over raw TCP so that nothing on the client side rewrites them (HTTP client
//! libraries normalise `../` and encode what they see fit). The story: at paranoia level 1 the
//! CRS blocks SQL injection, XSS (in a query and in a form body) and path traversal, naming the
//! rules; benign GETs and JSON writes pass untouched; detect-only lets the attack through;
//! a disabled rule no longer blocks; bodies are inspected up to the policy's limit and a body cut
//! there is not mistaken for a malformed one; concurrent requests each get their own verdict.

#![allow(clippy::unwrap_used)]

mod support;

use std::net::SocketAddr;

use http::{Method, StatusCode};
use support::{Backend, Raw, raw, start_gateway};
use tracing::info;

fn config(backend: &Backend) -> String {
    format!(
        r#"
kind: Service
name: web
spec: {{endpoints: [{{address: "{backend}"}}]}}
---
kind: Policy
name: crs
spec:
  type: waf
  config: {{mode: block, paranoia_level: 1}}
---
kind: Policy
name: crs-detect
spec:
  type: waf
  config: {{mode: detect-only, paranoia_level: 1}}
---
kind: Policy
name: crs-tuned
spec:
  type: waf
  config: {{mode: block, paranoia_level: 1, disabled_rules: [942100]}}
---
kind: Policy
name: crs-small-body
spec:
  type: waf
  config: {{mode: block, paranoia_level: 1, request_body_limit: 1024}}
---
kind: Route
name: block
spec:
  hosts: [waf.test]
  forward: {{backends: [{{service: web}}]}}
  policies: [crs]
---
kind: Route
name: detect
spec:
  hosts: [detect.test]
  forward: {{backends: [{{service: web}}]}}
  policies: [crs-detect]
---
kind: Route
name: tuned
spec:
  hosts: [tuned.test]
  forward: {{backends: [{{service: web}}]}}
  policies: [crs-tuned]
---
kind: Route
name: small
spec:
  hosts: [small.test]
  forward: {{backends: [{{service: web}}]}}
  policies: [crs-small-body]
"#,
        backend = backend.addr
    )
}

impl Raw {
    /// The rule ids a `waf_blocked` answer names.
    fn rules(&self) -> Vec<u64> {
        let json = self.json();
        assert_eq!(json["error"], "waf_blocked", "{}", self.body);
        json["rules"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r.as_u64().unwrap())
            .collect()
    }
}

/// `GET target` to `host` over a raw socket, with the headers a browser-ish client sends.
async fn raw_get(addr: SocketAddr, host: &str, target: &str) -> Raw {
    let head =
        format!("GET {target} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: waf-test\r\nAccept: */*\r\n");
    raw(addr, &head, "").await
}

async fn raw_form_post(addr: SocketAddr, host: &str, target: &str, body: &str) -> Raw {
    let head = format!(
        "POST {target} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: waf-test\r\nAccept: */*\r\n\
         Content-Type: application/x-www-form-urlencoded\r\n"
    );
    raw(addr, &head, body).await
}

const SQLI: &str = "/items?id=1'%20OR%20'1'='1";
const XSS_QUERY: &str = "/search?q=%3Cscript%3Ealert(1)%3C%2Fscript%3E";
const XSS_FORM: &str = "comment=%3Cscript%3Ealert(1)%3C%2Fscript%3E";
const TRAVERSAL: &str = "/../../etc/passwd";

#[tokio::test]
async fn crs_blocks_sql_injection_xss_and_path_traversal_sent_raw() {
    support::init_tracing();
    let backend = Backend::start("web").await;
    let gw = start_gateway(&config(&backend)).await;

    info!("--- SQL injection in the query");
    let sqli = raw_get(gw.http, "waf.test", SQLI).await;
    assert_eq!(sqli.status, 403, "{}", sqli.body);
    assert_eq!(sqli.json()["policy"], "crs");
    assert_eq!(
        sqli.rules(),
        vec![942100, 949110],
        "libinjection, then the anomaly score"
    );

    info!("--- XSS in the query, percent-encoded as browsers send it");
    let xss = raw_get(gw.http, "waf.test", XSS_QUERY).await;
    assert_eq!(xss.status, 403, "{}", xss.body);
    assert!(xss.rules().contains(&941100), "{}", xss.body);

    // Unencoded, `<` is not a legal request-target byte: the HTTP layer refuses it first.
    let bare = raw_get(gw.http, "waf.test", "/search?q=<script>alert(1)</script>").await;
    assert_eq!(bare.status, 400, "{}", bare.body);

    info!("--- XSS in a form body");
    let form = raw_form_post(gw.http, "waf.test", "/comments", XSS_FORM).await;
    assert_eq!(form.status, 403, "{}", form.body);
    assert!(form.rules().contains(&941100), "{}", form.body);

    info!("--- path traversal");
    let traversal = raw_get(gw.http, "waf.test", TRAVERSAL).await;
    assert_eq!(traversal.status, 403, "{}", traversal.body);
    assert!(traversal.rules().contains(&930110), "{}", traversal.body);

    assert_eq!(backend.requests(), 0, "no attack reached the backend");
}

#[tokio::test]
async fn benign_traffic_passes_untouched() {
    support::init_tracing();
    let backend = Backend::start("web").await;
    let gw = start_gateway(&config(&backend)).await;
    let client = gw.client();

    info!("--- GETs with a query, over a client library and raw");
    for path in [
        "/",
        "/items?id=42&page=2",
        "/users/7/orders?sort=-created&limit=20",
    ] {
        let reply = client.get("waf.test", path).await;
        assert_eq!(reply.status, StatusCode::OK, "{path}: {}", reply.text());
        assert_eq!(reply.json()["path"], path);
    }
    let plain = raw_get(gw.http, "waf.test", "/search?q=blue%20widgets").await;
    assert_eq!(plain.status, 200, "{}", plain.body);

    info!("--- JSON writes: POST, PUT, PATCH, DELETE");
    let json = r#"{"name":"widget","qty":3,"tags":["a","b"],"note":"it's fine"}"#;
    let ct = [("content-type", "application/json")];
    for method in [Method::POST, Method::PUT, Method::PATCH] {
        let reply = client
            .send(method.clone(), "waf.test", "/items/1", &ct, json)
            .await;
        assert_eq!(reply.status, StatusCode::OK, "{method}: {}", reply.text());
        assert_eq!(reply.json()["body"], json, "the body is forwarded whole");
    }
    let delete = client
        .send(Method::DELETE, "waf.test", "/items/1", &[], "")
        .await;
    assert_eq!(delete.status, StatusCode::OK, "{}", delete.text());

    info!("--- a form post");
    let form = raw_form_post(
        gw.http,
        "waf.test",
        "/comments",
        "comment=nice%20post&rating=5",
    )
    .await;
    assert_eq!(form.status, 200, "{}", form.body);
    assert_eq!(backend.requests(), 9);
}

#[tokio::test]
async fn detect_only_lets_the_attack_through() {
    support::init_tracing();
    let backend = Backend::start("web").await;
    let gw = start_gateway(&config(&backend)).await;

    info!("--- the same attacks that block on waf.test reach the backend on detect.test");
    let sqli = raw_get(gw.http, "detect.test", SQLI).await;
    assert_eq!(sqli.status, 200, "{}", sqli.body);
    assert_eq!(sqli.json()["path"], SQLI);
    let traversal = raw_get(gw.http, "detect.test", TRAVERSAL).await;
    assert_eq!(traversal.status, 200, "{}", traversal.body);
    assert_eq!(backend.requests(), 2);
}

#[tokio::test]
async fn a_disabled_rule_no_longer_blocks() {
    support::init_tracing();
    let backend = Backend::start("web").await;
    let gw = start_gateway(&config(&backend)).await;

    info!("--- 942100 is the only rule the SQL injection trips: with it off, it passes");
    let sqli = raw_get(gw.http, "tuned.test", SQLI).await;
    assert_eq!(sqli.status, 200, "{}", sqli.body);

    info!("--- other rules still block");
    let xss = raw_get(gw.http, "tuned.test", XSS_QUERY).await;
    assert_eq!(xss.status, 403, "{}", xss.body);
    assert!(!xss.rules().contains(&942100));
    assert_eq!(backend.requests(), 1);
}

#[tokio::test]
async fn bodies_are_inspected_up_to_the_limit_and_a_cut_body_is_not_malformed() {
    support::init_tracing();
    let backend = Backend::start("web").await;
    let gw = start_gateway(&config(&backend)).await;
    let client = gw.client();
    let ct = [("content-type", "application/json")];

    info!("--- a JSON body that does not parse is refused");
    let broken = client
        .send(Method::POST, "small.test", "/items", &ct, r#"{"name":"#)
        .await;
    assert_eq!(broken.status, StatusCode::BAD_REQUEST, "{}", broken.text());
    assert_eq!(broken.json()["rules"][0], 10003);

    info!("--- valid JSON longer than the 1 KiB limit passes, whole");
    let items: Vec<String> = (0..200)
        .map(|i| format!(r#"{{"id":{i},"name":"item {i}"}}"#))
        .collect();
    let long = format!("[{}]", items.join(","));
    assert!(long.len() > 4096);
    let reply = client
        .send(Method::POST, "small.test", "/items", &ct, &long)
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert_eq!(reply.json()["body"], long.as_str());

    info!("--- an attack inside the limit blocks; past it, it is not seen");
    let early = format!("{XSS_FORM}&pad={}", "a".repeat(2000));
    let blocked = raw_form_post(gw.http, "small.test", "/comments", &early).await;
    assert_eq!(blocked.status, 403, "{}", blocked.body);
    let late = format!("pad={}&{XSS_FORM}", "a".repeat(2000));
    let passed = raw_form_post(gw.http, "small.test", "/comments", &late).await;
    assert_eq!(passed.status, 200, "{}", passed.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_each_get_their_own_verdict() {
    support::init_tracing();
    let backend = Backend::start("web").await;
    let gw = start_gateway(&config(&backend)).await;

    info!("--- 200 requests at once, half of them attacks");
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..200 {
        let addr = gw.http;
        tasks.spawn(async move {
            let attack = i % 2 == 0;
            let target = if attack {
                SQLI.to_owned()
            } else {
                format!("/items?id={i}")
            };
            (attack, raw_get(addr, "waf.test", &target).await.status)
        });
    }
    while let Some(result) = tasks.join_next().await {
        let (attack, status) = result.unwrap();
        assert_eq!(status, if attack { 403 } else { 200 });
    }
    assert_eq!(backend.requests(), 100);
}
