//! Authentication policies through a running gateway: jwt-auth, key-auth, basic-auth and
//! hmac-auth, each on its own route in front of a real backend.
//!
//! For each: no credential → 401 with a challenge, a bad one → 401, a consumer that is not on
//! the policy's allow-list → 403, the right one → 200 with the backend seeing
//! `x-fleetgate-consumer` (and the consumer's headers) but not the credential when the policy
//! hides it. Tokens, signatures and password hashes are made the way a client would.

#![allow(clippy::unwrap_used)]

mod support;

use std::num::NonZeroU32;
use std::time::{SystemTime, UNIX_EPOCH};

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use fleetgate_agent_policy::plugins::hmac_auth::{self, CONTENT_SHA256_HEADER, DATE_HEADER};
use fleetgate_shared::model::HmacAlgorithm;
use futures_util::{SinkExt, StreamExt};
use http::{HeaderMap, Method, StatusCode, Uri};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;
use support::{Backend, HttpClient, Reply, TestGateway, WsBackend, start_gateway};
use tokio_tungstenite::tungstenite::Message;
use tracing::info;

const HOST: &str = "api.test";
const HMAC_SECRET: &str = "acme-hmac-secret-0123456789abcdef";

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

/// An ES256 key pair: (PKCS#8 private PEM, SPKI public PEM).
fn ec_key() -> (String, String) {
    let pair = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING).unwrap();
    (
        pem("PRIVATE KEY", pair.to_pkcs8v1().unwrap().as_ref()),
        pem("PUBLIC KEY", pair.public_key().as_der().unwrap().as_ref()),
    )
}

fn indent(text: &str, spaces: usize) -> String {
    text.lines()
        .map(|l| format!("{}{l}\n", " ".repeat(spaces)))
        .collect()
}

fn config(backend: &Backend, public_pem: &str) -> String {
    let iterations = NonZeroU32::new(10_000).unwrap();
    let acme_hash = fleetgate_shared::password::hash("acme-pass", b"acme-salt", iterations);
    let globex_hash = fleetgate_shared::password::hash("globex-pass", b"globex-salt", iterations);
    format!(
        r#"
kind: Service
name: web
spec: {{endpoints: [{{address: "{backend}"}}]}}
---
kind: Consumer
name: acme
spec:
  credentials:
    keys: [acme-key-0001-abcdef]
    jwt: {{subject: org-acme}}
    hmac: [{{key_id: acme-hmac, secret: {HMAC_SECRET}}}]
    basic: {{username: acme, password_hash: "{acme_hash}"}}
  headers: {{x-tenant: acme}}
---
kind: Consumer
name: globex
spec:
  credentials:
    keys: [globex-key-0001-abcdef]
    jwt: {{subject: org-globex}}
    hmac: [{{key_id: globex-hmac, secret: {HMAC_SECRET}}}]
    basic: {{username: globex, password_hash: "{globex_hash}"}}
---
kind: Policy
name: jwt
spec:
  type: jwt-auth
  config:
    algorithms: [ES256]
    keys:
      - kid: ec-1
        algorithm: ES256
        public_key_pem: |
{pem}    issuers: [https://idp.test]
    audiences: [api]
    consumer_claim: sub
    claims_to_headers: {{tenant: x-claim-tenant}}
    consumers: [acme]
---
kind: Policy
name: keys
spec:
  type: key-auth
  config:
    key_from:
      - header: {{name: x-api-key}}
      - query: {{name: api_key}}
    consumers: [acme]
---
kind: Policy
name: basic
spec:
  type: basic-auth
  config:
    realm: Admin
    consumers: [acme]
---
kind: Policy
name: hmac
spec:
  type: hmac-auth
  config:
    signed_headers: [host]
    consumers: [acme]
---
kind: Route
name: jwt
spec:
  matches: [{{path: {{prefix: /jwt}}}}]
  forward: {{backends: [{{service: web}}]}}
  policies: [jwt]
---
kind: Route
name: key
spec:
  matches: [{{path: {{prefix: /key}}}}]
  forward: {{backends: [{{service: web}}]}}
  policies: [keys]
---
kind: Route
name: moved
spec:
  matches: [{{path: {{prefix: /moved}}}}]
  redirect: {{host: new.test, status: 301}}
  policies: [keys]
---
kind: Route
name: basic
spec:
  matches: [{{path: {{prefix: /basic}}}}]
  forward: {{backends: [{{service: web}}]}}
  policies: [basic]
---
kind: Route
name: hmac
spec:
  matches: [{{path: {{prefix: /hmac}}}}]
  forward: {{backends: [{{service: web}}]}}
  policies: [hmac]
"#,
        backend = backend.addr,
        pem = indent(public_pem, 10),
    )
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn jwt(private_pem: &str, sub: &str, exp: u64) -> String {
    let mut header = Header::new(Algorithm::ES256);
    header.kid = Some("ec-1".into());
    let claims = json!({
        "sub": sub, "iss": "https://idp.test", "aud": "api", "exp": exp, "tenant": "t-1"
    });
    let key = EncodingKey::from_ec_pem(private_pem.as_bytes()).unwrap();
    jsonwebtoken::encode(&header, &claims, &key).unwrap()
}

async fn get(client: &HttpClient, path: &str, headers: &[(&str, &str)]) -> Reply {
    client.send(Method::GET, HOST, path, headers, "").await
}

/// A POST to [`HOST`] signed for key `key_id` with `nonce`: its headers but Host, ready to send.
fn signed_post(key_id: &str, nonce: &str, path: &str, body: &str) -> Vec<(String, String)> {
    signed(Method::POST, HOST, key_id, nonce, path, body)
}

/// A request signed for key `key_id` with `nonce` over its host (`host` as the Host header,
/// which the signature covers unless `target` is absolute-form and names its own), date and
/// body digest: its headers but Host, ready to send.
fn signed(
    method: Method,
    host: &str,
    key_id: &str,
    nonce: &str,
    target: &str,
    body: &str,
) -> Vec<(String, String)> {
    let uri: Uri = target.parse().unwrap();
    let mut headers = HeaderMap::new();
    headers.insert("host", host.parse().unwrap());
    headers.insert(DATE_HEADER, now_secs().to_string().parse().unwrap());
    headers.insert(
        CONTENT_SHA256_HEADER,
        hmac_auth::body_digest(body.as_bytes()).parse().unwrap(),
    );
    let credentials = hmac_auth::Credentials {
        algorithm: HmacAlgorithm::HmacSha256,
        key_id,
        secret: HMAC_SECRET.as_bytes(),
    };
    let authorization = hmac_auth::sign(
        &credentials,
        nonce,
        &method,
        &uri,
        &headers,
        &["host", DATE_HEADER, CONTENT_SHA256_HEADER],
    )
    .unwrap();
    headers.remove("host");
    let mut out: Vec<(String, String)> = headers
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_str().unwrap().to_owned()))
        .collect();
    out.push(("authorization".into(), authorization));
    out
}

async fn post(client: &HttpClient, path: &str, headers: &[(String, String)], body: &str) -> Reply {
    let headers: Vec<(&str, &str)> = headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    client.send(Method::POST, HOST, path, &headers, body).await
}

fn error_code(reply: &Reply) -> String {
    reply.json()["error"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// A backend, and a gateway in front of it with every route and policy of [`config`] and the
/// resources of `extra` (YAML documents); with the private key of jwt-auth's public one.
async fn every_policy(extra: &str) -> (Backend, TestGateway, String) {
    support::init_tracing();
    let backend = Backend::start("web").await;
    let (private_pem, public_pem) = ec_key();
    let gateway = start_gateway(&format!("{}{extra}", config(&backend, &public_pem))).await;
    (backend, gateway, private_pem)
}

#[tokio::test]
async fn auth_policies_guard_their_routes_end_to_end() {
    let (_backend, gateway, private_pem) = every_policy("").await;
    let client = gateway.client();

    info!("--- jwt-auth");
    let reply = get(&client, "/jwt/me", &[]).await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        reply.header("www-authenticate"),
        Some("Bearer realm=\"jwt\"")
    );
    assert_eq!(reply.json()["policy"], "jwt");
    let token = jwt(&private_pem, "org-acme", now_secs() + 600);
    let bearer = format!("Bearer {token}");
    let reply = get(
        &client,
        "/jwt/me",
        &[
            ("authorization", &bearer),
            ("x-fleetgate-consumer", "spoofed"),
            ("x-claim-tenant", "spoofed"),
        ],
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert_eq!(
        reply.seen_header("x-fleetgate-consumer").as_deref(),
        Some("acme")
    );
    assert_eq!(reply.seen_header("x-tenant").as_deref(), Some("acme"));
    assert_eq!(reply.seen_header("x-claim-tenant").as_deref(), Some("t-1"));
    let expired = format!(
        "Bearer {}",
        jwt(&private_pem, "org-acme", now_secs() - 3600)
    );
    let reply = get(&client, "/jwt/me", &[("authorization", &expired)]).await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    assert_eq!(error_code(&reply), "token_expired");
    let globex = format!(
        "Bearer {}",
        jwt(&private_pem, "org-globex", now_secs() + 600)
    );
    let reply = get(&client, "/jwt/me", &[("authorization", &globex)]).await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN);
    let (other_private, _) = ec_key();
    let forged = format!(
        "Bearer {}",
        jwt(&other_private, "org-acme", now_secs() + 600)
    );
    let reply = get(&client, "/jwt/me", &[("authorization", &forged)]).await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    assert_eq!(error_code(&reply), "invalid_signature");

    info!("--- key-auth");
    let reply = get(&client, "/key/items", &[]).await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    assert!(reply.header("www-authenticate").is_some());
    let reply = get(&client, "/key/items", &[("x-api-key", "wrong")]).await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    let reply = get(
        &client,
        "/key/items",
        &[("x-api-key", "globex-key-0001-abcdef")],
    )
    .await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN);
    let reply = get(
        &client,
        "/key/items?a=1",
        &[("x-api-key", "acme-key-0001-abcdef")],
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(
        reply.seen_header("x-fleetgate-consumer").as_deref(),
        Some("acme")
    );
    assert_eq!(reply.seen_header("x-api-key"), None, "the key is hidden");
    assert_eq!(reply.json()["path"], "/key/items?a=1");
    let reply = get(
        &client,
        "/key/items?a=1&api_key=acme-key-0001-abcdef&b=2",
        &[],
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(
        reply.seen_header("x-fleetgate-consumer").as_deref(),
        Some("acme")
    );
    assert_eq!(
        reply.json()["path"],
        "/key/items?a=1&b=2",
        "the key is removed from the query"
    );
    // A redirect route behind the same policy sends the client to the path it asked for,
    // with the query the policy left: the key is not echoed back in the Location.
    let reply = get(
        &client,
        "/moved/items?a=1&api_key=acme-key-0001-abcdef&b=2",
        &[],
    )
    .await;
    assert_eq!(reply.status, StatusCode::MOVED_PERMANENTLY);
    assert_eq!(
        reply.header("location"),
        Some("http://new.test/moved/items?a=1&b=2")
    );

    info!("--- basic-auth");
    let basic =
        |user: &str, pass: &str| format!("Basic {}", STANDARD.encode(format!("{user}:{pass}")));
    let reply = get(&client, "/basic/panel", &[]).await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        reply.header("www-authenticate"),
        Some("Basic realm=\"Admin\", charset=\"UTF-8\"")
    );
    let reply = get(
        &client,
        "/basic/panel",
        &[("authorization", &basic("acme", "nope"))],
    )
    .await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    let reply = get(
        &client,
        "/basic/panel",
        &[("authorization", &basic("globex", "globex-pass"))],
    )
    .await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN);
    for _ in 0..2 {
        let reply = get(
            &client,
            "/basic/panel",
            &[("authorization", &basic("acme", "acme-pass"))],
        )
        .await;
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(
            reply.seen_header("x-fleetgate-consumer").as_deref(),
            Some("acme")
        );
        assert_eq!(
            reply.seen_header("authorization"),
            None,
            "the credentials are hidden"
        );
    }

    info!("--- hmac-auth");
    let body = r#"{"order":42}"#;
    let path = "/hmac/orders?b=2&a=1";
    let reply = client.send(Method::POST, HOST, path, &[], body).await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    assert!(
        reply
            .header("www-authenticate")
            .unwrap()
            .starts_with("FG-HMAC-SHA256")
    );
    let headers = signed_post("acme-hmac", "nonce-1", path, body);
    let reply = post(&client, path, &headers, body).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert_eq!(
        reply.seen_header("x-fleetgate-consumer").as_deref(),
        Some("acme")
    );
    assert_eq!(reply.json()["body"], body, "the body is forwarded whole");
    let reply = post(&client, path, &headers, body).await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    assert_eq!(error_code(&reply), "nonce_replayed");
    let headers = signed_post("acme-hmac", "nonce-2", path, body);
    let reply = post(&client, path, &headers, r#"{"order":43}"#).await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    assert_eq!(error_code(&reply), "body_digest_mismatch");
    let headers = signed_post("globex-hmac", "nonce-3", path, body);
    let reply = post(&client, path, &headers, body).await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN);
    let headers = signed_post("nobody-hmac", "nonce-4", path, body);
    let reply = post(&client, path, &headers, body).await;
    assert_eq!(error_code(&reply), "unknown_key_id");
}

/// A WebSocket on a route with a policy: the handshake passes through the chain like any
/// request (no key: 401, no tunnel), and once the key (sent in the query, as browsers must)
/// lets it through, the upgraded connection carries messages both ways.
#[tokio::test]
async fn a_websocket_passes_through_the_policy_chain_before_it_upgrades() {
    let echo = WsBackend::start("echo").await;
    // A chat route behind `config`'s key-auth policy, whose keys may come in the query.
    let (_backend, gateway, _) = every_policy(&format!(
        r#"---
kind: Service
name: chat
spec: {{endpoints: [{{address: "{}"}}]}}
---
kind: Route
name: chat
spec:
  matches: [{{path: {{prefix: /ws}}}}]
  forward: {{backends: [{{service: chat}}]}}
  policies: [keys]
"#,
        echo.addr
    ))
    .await;

    info!("--- without the key the handshake is answered 401");
    match support::ws_connect(gateway.http, HOST, "/ws").await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), StatusCode::UNAUTHORIZED)
        }
        other => panic!("a WebSocket without a key should get a 401, got {other:?}"),
    }
    assert_eq!(gateway.gateway.telemetry.open_tunnels(), 0);

    info!("--- with it the connection upgrades and echoes");
    let mut ws = support::ws_connect(gateway.http, HOST, "/ws?api_key=acme-key-0001-abcdef")
        .await
        .unwrap();
    for text in ["hello", "again"] {
        ws.send(Message::text(text)).await.unwrap();
        let reply = support::within("an echo", ws.next())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(reply, Message::text(format!("echo: {text}")));
    }
    support::eventually("the tunnel to be counted", || {
        gateway.gateway.telemetry.open_tunnels() == 1
    })
    .await;
}

/// A signed body longer than what the agent's server reads with the head (so it arrives as a
/// stream): hmac-auth reads all of it to check its digest, and the upstream still gets every
/// byte; the same body with one byte changed is refused.
#[tokio::test]
async fn a_streamed_signed_body_is_verified_and_forwarded_whole() {
    let (backend, gateway, _) = every_policy("").await;
    let client = gateway.client();
    let path = "/hmac/upload";
    // 200 KiB of varied text: far past one read, under hmac-auth's 1 MiB body limit.
    let body: String = (0..200 * 1024)
        .map(|i| char::from(b'a' + (i * 7 % 26) as u8))
        .collect();

    let headers = signed_post("acme-hmac", "nonce-big-1", path, &body);
    let reply = post(&client, path, &headers, &body).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert_eq!(
        reply.json()["body"].as_str().map(str::len),
        Some(body.len()),
        "the upstream got the whole body"
    );
    assert_eq!(reply.json()["body"], body.as_str());

    let mut tampered = body.clone().into_bytes();
    tampered[150 * 1024] = b'!';
    let tampered = String::from_utf8(tampered).unwrap();
    let headers = signed_post("acme-hmac", "nonce-big-2", path, &body);
    let reply = post(&client, path, &headers, &tampered).await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    assert_eq!(error_code(&reply), "body_digest_mismatch");
    assert_eq!(
        backend.requests(),
        1,
        "the tampered body never reached the upstream"
    );
}

/// A service balanced by a consistent hash on `x-fleetgate-consumer` keys on the consumer the
/// policy identified: every request of one consumer reaches one endpoint whatever value of
/// that header the client sends (the gateway replaces it), so a client cannot pick its
/// endpoint by naming another consumer.
#[tokio::test]
async fn a_consistent_hash_keys_on_the_consumer_a_policy_identified() {
    let ring: Vec<Backend> = futures_util::future::join_all(
        (0..4).map(|i| async move { Backend::start(&format!("ring-{i}")).await }),
    )
    .await;
    let endpoints = ring
        .iter()
        .map(|b| format!("{{address: \"{}\"}}", b.addr))
        .collect::<Vec<_>>()
        .join(", ");
    let (_backend, gateway, _) = every_policy(&format!(
        r#"---
kind: Service
name: ring
spec:
  endpoints: [{endpoints}]
  load_balancing: {{policy: consistent-hash, hash_on: {{header: x-fleetgate-consumer}}}}
---
kind: Policy
name: any-key
spec:
  type: key-auth
  config: {{}}
---
kind: Route
name: ring
spec:
  matches: [{{path: {{prefix: /ring}}}}]
  forward: {{backends: [{{service: ring}}]}}
  policies: [any-key]
---
kind: Route
name: open-ring
spec:
  matches: [{{path: {{prefix: /open}}}}]
  forward: {{backends: [{{service: ring}}]}}
"#
    ))
    .await;
    let client = gateway.client();
    for (key, consumer) in [
        ("acme-key-0001-abcdef", "acme"),
        ("globex-key-0001-abcdef", "globex"),
    ] {
        let mut reached = std::collections::BTreeSet::new();
        for spoofed in ["acme", "globex", "initech", "a", "b", "c", "d", "e"] {
            let reply = get(
                &client,
                "/ring",
                &[("x-api-key", key), ("x-fleetgate-consumer", spoofed)],
            )
            .await;
            assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
            assert_eq!(
                reply.seen_header("x-fleetgate-consumer").as_deref(),
                Some(consumer)
            );
            reached.insert(reply.backend());
        }
        assert_eq!(reached.len(), 1, "{consumer} reached {reached:?}");
    }
    // A route without policies identifies no one: the header goes upstream as sent, and the
    // hash keys on it.
    let mut reached = std::collections::BTreeSet::new();
    for _ in 0..8 {
        let reply = get(&client, "/open", &[("x-fleetgate-consumer", "edge-named")]).await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
        assert_eq!(
            reply.seen_header("x-fleetgate-consumer").as_deref(),
            Some("edge-named")
        );
        reached.insert(reply.backend());
    }
    assert_eq!(reached.len(), 1, "the open route reached {reached:?}");
}

/// A mirrored copy of an identified request names the same consumer as the request the
/// primary answers, and neither carries the client's forged name nor its key: the copy, sent
/// after the request is answered, owns what the forwarded request borrowed.
#[tokio::test]
async fn a_mirrored_copy_names_the_consumer_the_policy_identified() {
    let shadow = Backend::start("shadow").await;
    let (backend, gateway, _) = every_policy(&format!(
        r#"---
kind: Service
name: shadow
spec: {{endpoints: [{{address: "{}"}}]}}
---
kind: Policy
name: mirror-key
spec:
  type: key-auth
  config: {{}}
---
kind: Route
name: mirrored
spec:
  matches: [{{path: {{prefix: /mirrored}}}}]
  forward:
    backends: [{{service: web}}]
    mirror: {{service: shadow, percent: 100}}
  policies: [mirror-key]
"#,
        shadow.addr
    ))
    .await;
    let client = gateway.client();
    for (i, (key, consumer)) in [
        ("acme-key-0001-abcdef", "acme"),
        ("globex-key-0001-abcdef", "globex"),
    ]
    .into_iter()
    .enumerate()
    {
        let reply = get(
            &client,
            "/mirrored",
            &[("x-api-key", key), ("x-fleetgate-consumer", "forged")],
        )
        .await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
        assert_eq!(reply.backend(), backend.name);
        assert_eq!(
            reply.seen_header("x-fleetgate-consumer").as_deref(),
            Some(consumer)
        );
        shadow.wait_for_requests(i + 1).await;
        assert_eq!(
            shadow
                .last_request_header("x-fleetgate-consumer")
                .as_deref(),
            Some(consumer),
            "the mirror's copy"
        );
        assert_eq!(shadow.last_request_header("x-api-key"), None);
    }
}

/// An absolute-form request line names the host the gateway routes on; its Host header is
/// ignored (RFC 9112 3.2.2). A signature over the Host header alone does not pass for a
/// request routed to the target's host, so a captured request cannot be replayed to another
/// host behind the same policy by rewriting its request line; one signed over the target's
/// host passes. Sent over a raw socket: HTTP clients write origin-form.
#[tokio::test]
async fn a_signed_host_is_the_one_the_request_line_routes_to() {
    let (_backend, gateway, _) = every_policy("").await;
    // The same request each time; the client signs `host` as it would go out with an
    // origin-form request line (the Host header), or with this absolute one.
    let send = async |signed_target: &str, nonce: &str| {
        let headers = signed(
            Method::GET,
            "signed.test",
            "acme-hmac",
            nonce,
            signed_target,
            "",
        );
        let mut head = "GET http://routed.test/hmac/x HTTP/1.1\r\nhost: signed.test\r\n".to_owned();
        for (name, value) in headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        support::raw(gateway.http, &head, "").await
    };

    info!("--- signed over the Host header, routed to the request line's host: refused");
    let answer = send("/hmac/x", "abs-1").await;
    assert_eq!(answer.status, 401, "{}", answer.body);
    assert_eq!(answer.json()["error"], "invalid_signature");

    info!("--- signed over the request line's host: passes");
    let answer = send("http://routed.test/hmac/x", "abs-2").await;
    assert_eq!(answer.status, 200, "{}", answer.body);
}
