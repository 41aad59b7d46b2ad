//! What the policy benchmark and `examples/policy_cost.rs` share: the benchmark's config with
//! one policy on its route, the headers each variant's client sends (as `bench/plugins.sh`
//! sends them) and one request through a chain as the proxy runs it.

use std::net::SocketAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use fleetgate_agent_policy::plugins::hmac_auth::{self, Credentials};
use fleetgate_agent_policy::{BodyPrefix, Chain, PolicySet, PolicyState, RequestCtx};
use fleetgate_shared::Snapshot;
use fleetgate_shared::bundle::Format;
use fleetgate_shared::model::HmacAlgorithm;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Uri};

pub const SECRET: &str = "bench-secret-0123456789abcdef0123456789";
pub const HOST: &str = "127.0.0.1:18181";
const KEY: &str = "bench-key-0123456789abcdef";
pub const ROUTE: &str = "all";

/// The benchmark's config with `policy` (a Policy spec) on its route [`ROUTE`], or none.
pub fn chain_for(policy: Option<&str>) -> PolicySet {
    let mut yaml = format!(
        "kind: Service\nname: origin\nspec: {{ endpoints: [{{ address: '127.0.0.1:18180' }}] }}\n\
         ---\nkind: Consumer\nname: bench\nspec:\n  credentials:\n    keys: [{KEY}]\n    \
         jwt: {{ subject: bench }}\n    hmac: [{{ key_id: k-bench, secret: {SECRET} }}]\n\
         ---\nkind: Route\nname: {ROUTE}\nspec:\n"
    );
    if policy.is_some() {
        yaml.push_str("  policies: [p]\n");
    }
    yaml.push_str("  forward: { backends: [{ service: origin }] }\n");
    if let Some(policy) = policy {
        yaml.push_str(&format!("---\nkind: Policy\nname: p\nspec:\n  {policy}\n"));
    }
    let resources = fleetgate_shared::parse_bundle(&yaml, Format::Yaml, "")
        .expect("the benchmark's config parses");
    let snapshot = Snapshot::new(1, resources).expect("names are unique");
    PolicySet::compile(&snapshot, &PolicyState::default()).expect("the benchmark's policy compiles")
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("the clock is past 1970")
        .as_secs()
}

/// The headers each variant's client sends (Host included), as `bench/plugins.sh` sends them.
pub fn headers_for(variant: &str) -> HeaderMap {
    let mut headers = HeaderMap::new();
    put(&mut headers, "host", HOST);
    match variant {
        "key" => put(&mut headers, "x-api-key", KEY),
        "jwt" => {
            let now = now_secs();
            let claims = serde_json::json!({ "sub": "bench", "iat": now, "exp": now + 7200 });
            let token = jsonwebtoken::encode(
                &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
                &claims,
                &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
            )
            .expect("the token encodes");
            put(&mut headers, "authorization", &format!("Bearer {token}"));
        }
        "hmac" => return signed_headers(""),
        _ => {}
    }
    headers
}

/// The headers of a GET signed for hmac-auth with `nonce` (none when empty), as
/// `bench/plugins.sh`'s client signs it (host, date, body digest).
pub fn signed_headers(nonce: &str) -> HeaderMap {
    let mut headers = HeaderMap::new();
    put(&mut headers, "host", HOST);
    put(
        &mut headers,
        hmac_auth::DATE_HEADER,
        &now_secs().to_string(),
    );
    put(
        &mut headers,
        hmac_auth::CONTENT_SHA256_HEADER,
        &hmac_auth::body_digest(b""),
    );
    let credentials = Credentials {
        algorithm: HmacAlgorithm::HmacSha256,
        key_id: "k-bench",
        secret: SECRET.as_bytes(),
    };
    let signed = [
        "host",
        hmac_auth::DATE_HEADER,
        hmac_auth::CONTENT_SHA256_HEADER,
    ];
    let uri = Uri::from_static("/");
    let value = hmac_auth::sign(&credentials, nonce, &Method::GET, &uri, &headers, &signed)
        .expect("the request signs");
    put(&mut headers, "authorization", &value);
    headers
}

fn put(headers: &mut HeaderMap, name: &str, value: &str) {
    headers.append(
        HeaderName::from_bytes(name.as_bytes()).expect("a header name"),
        HeaderValue::from_str(value).expect("a header value"),
    );
}

/// One request through `chain` as the proxy runs it: a fresh context borrowing the request's
/// target and a copy of the client's headers, an empty body when the chain reads bodies, then
/// every plugin (the runtime entered only for one that waits). Returns whether the request
/// passed.
pub fn one_request(
    runtime: &tokio::runtime::Runtime,
    chain: &Chain,
    headers: &HeaderMap,
    peer: SocketAddr,
) -> bool {
    let mut uri = Uri::from_static("/");
    let mut headers = headers.clone();
    let mut ctx = RequestCtx::borrowing(Method::GET, &mut uri, &mut headers, peer, false);
    if chain.body_limit().is_some() {
        ctx.body = BodyPrefix::Complete(Bytes::new());
    }
    match chain.run_now(&mut ctx) {
        Ok(rejection) => rejection.is_none(),
        Err(unfinished) => runtime
            .block_on(chain.run_from(unfinished, &mut ctx))
            .is_none(),
    }
}

/// Each measured variant and its Policy spec.
pub const VARIANTS: [(&str, &str); 4] = [
    ("key", "type: key-auth\n  config: {}"),
    (
        "jwt",
        "type: jwt-auth\n  config: { algorithms: [HS256], keys: [{ algorithm: HS256, secret: bench-secret-0123456789abcdef0123456789 }], consumer_claim: sub }",
    ),
    (
        "hmac",
        "type: hmac-auth\n  config: { require_nonce: false }",
    ),
    ("waf", "type: waf\n  config: { paranoia_level: 1 }"),
];
