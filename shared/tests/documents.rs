//! Per kind: a valid document passes, and each kind of mistake is reported naming the resource
//! and the field path, all at once.

#![allow(clippy::unwrap_used)] // helpers outside #[test] fns fail the test loudly, as they should

use fleetgate_shared::bundle::Format;
use fleetgate_shared::{Resource, parse_bundle, validate};

/// Parses and validates `yaml`, returning every problem as a display line.
fn problems(yaml: &str) -> Vec<String> {
    match parse_bundle(yaml, Format::Yaml, "") {
        Err(errors) => errors.iter().map(ToString::to_string).collect(),
        Ok(resources) => match validate(&resources) {
            Ok(()) => Vec::new(),
            Err(errors) => errors.iter().map(ToString::to_string).collect(),
        },
    }
}

fn assert_valid(yaml: &str) -> Vec<Resource> {
    let found = problems(yaml);
    assert!(
        found.is_empty(),
        "expected valid, got:\n{}",
        found.join("\n")
    );
    parse_bundle(yaml, Format::Yaml, "").unwrap()
}

/// Parse errors end with the document they came from: ` (in document 2)`.
fn assert_problem(yaml: &str, expected: &str) {
    let found = problems(yaml);
    assert!(
        found
            .iter()
            .any(|p| p == expected || p.starts_with(&format!("{expected} (in "))),
        "expected `{expected}` among:\n{}",
        found.join("\n")
    );
}

const WEB: &str = "
kind: Service
name: web
spec:
  endpoints:
    - { address: '127.0.0.1:9001', labels: { stage: blue } }
    - { address: '127.0.0.1:9002', labels: { stage: green }, weight: 3 }
";

fn with_web(doc: &str) -> String {
    format!("{WEB}\n---\n{doc}")
}

fn self_signed(names: &[&str]) -> (String, String) {
    let key = rcgen::KeyPair::generate().unwrap();
    let params =
        rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
            .unwrap();
    let cert = params.self_signed(&key).unwrap();
    (cert.pem(), key.serialize_pem())
}

fn indent(pem: &str) -> String {
    pem.lines().map(|l| format!("    {l}\n")).collect()
}

fn certificate_doc(name: &str, cert: &str, key: &str) -> String {
    format!(
        "kind: Certificate\nname: {name}\nspec:\n  cert_pem: |\n{}  key_pem: |\n{}",
        indent(cert),
        indent(key)
    )
}

// --- Service ---------------------------------------------------------------------------------

#[test]
fn service_with_static_endpoints_health_checks_and_outlier_detection_is_valid() {
    let resources = assert_valid(
        "
kind: Service
name: api
spec:
  endpoints: [{ address: 'backend.internal:8080' }, { address: '[::1]:8080', weight: 10 }]
  protocol: http2
  load_balancing: { policy: consistent-hash, hash_on: { header: x-user } }
  health_check: { path: /healthz, interval: 2s, timeout: 500ms }
  outlier_detection: { consecutive_failures: 5, base_ejection: 10s }
  limits: { connect_timeout: 1s }
",
    );
    assert_eq!(resources[0].key().to_string(), "service/api");
}

#[test]
fn service_problems_are_all_reported_with_paths() {
    let yaml = "
kind: Service
name: api
spec:
  endpoints: [{ address: 'no-port' }, { address: '127.0.0.1:80', weight: 20000 }, { address: '127.0.0.1:80' }]
  health_check: { path: healthz, interval: 1s, timeout: 5s }
  outlier_detection: { consecutive_failures: 0, base_ejection: 1m, max_ejection: 10s }
";
    let found = problems(yaml);
    for expected in [
        "service/api: spec.endpoints[0].address: `no-port` is not an address: expected host:port",
        "service/api: spec.endpoints[1].weight: 20000 is out of range; expected 1 to 10000",
        "service/api: spec.endpoints[2].address: `127.0.0.1:80` is listed more than once",
        "service/api: spec.health_check.path: `healthz` must start with `/`",
        "service/api: spec.health_check.timeout: 5s is longer than the interval 1s",
        "service/api: spec.outlier_detection.consecutive_failures: 0 is out of range; expected 1 to 1000",
        "service/api: spec.outlier_detection.max_ejection: 10s is shorter than base_ejection 1m",
    ] {
        assert!(
            found.iter().any(|p| p == expected),
            "missing `{expected}` in:\n{}",
            found.join("\n")
        );
    }
    assert_eq!(found.len(), 7, "{}", found.join("\n"));
}

#[test]
fn service_needs_endpoints_or_dns_but_not_both() {
    assert_problem(
        "kind: Service\nname: s\nspec: {}\n",
        "service/s: spec.endpoints: a service needs endpoints or dns",
    );
    assert_problem(
        "kind: Service\nname: s\nspec:\n  endpoints: [{ address: '127.0.0.1:1' }]\n  dns: { name: backend.internal, port: 80 }\n",
        "service/s: spec.dns: a service has either static endpoints or dns, not both",
    );
}

// --- Route -----------------------------------------------------------------------------------

#[test]
fn route_with_matches_subsets_canary_retries_and_filters_is_valid() {
    assert_valid(&with_web(
        "
kind: Route
name: chat-ws
spec:
  hosts: [chat.example.com, '*.chat.example.com']
  matches:
    - path: { prefix: /ws }
      methods: [GET]
      headers: [{ name: upgrade, exact: websocket }]
    - path: { regex: '^/v[0-9]+/ws$' }
      query: [{ name: room }]
  priority: 10
  forward:
    backends: [{ service: web, subset: { stage: green }, weight: 100 }]
    canary: [{ header: { name: x-canary, exact: 'yes' }, backends: [{ service: web, subset: { stage: blue } }] }]
    timeouts: { request: 30s, idle: 1h }
    retries: { attempts: 2, retry_on: [connect-failure, '503'] }
    mirror: { service: web, percent: 5 }
  filters:
    rewrite: { host: chat.internal }
    request_headers: { set: { x-env: prod }, remove: [x-debug] }
",
    ));
}

#[test]
fn route_reference_regex_and_action_problems() {
    let found = problems(&with_web(
        "
kind: Route
name: broken
spec:
  hosts: [Bad.Example.com]
  matches: [{ path: { regex: '(unclosed' }, methods: [get] }]
  forward:
    backends: [{ service: nope }, { service: web, subset: { stage: red } }]
  redirect: { status: 200 }
  policies: [ghost]
",
    ));
    for expected in [
        "route/broken: spec.hosts[0]: `Bad.Example.com` must be lower case (hostnames are matched case-insensitively)",
        "route/broken: spec.matches[0].path.regex: invalid regex: unclosed group",
        "route/broken: spec.matches[0].methods[0]: `get` is not an upper-case HTTP method such as GET or POST",
        "route/broken: spec: a route needs exactly one of forward, redirect and direct_response",
        "route/broken: spec.forward.backends[0].service: refers to service/nope, which does not exist",
        "route/broken: spec.forward.backends[1].subset: selects no endpoint of service/web (stage=red)",
        "route/broken: spec.redirect.status: 200 is not a redirect status; use 301, 302, 303, 307 or 308",
        "route/broken: spec.policies[0]: refers to policy/ghost, which does not exist",
    ] {
        assert!(
            found.iter().any(|p| p == expected),
            "missing `{expected}` in:\n{}",
            found.join("\n")
        );
    }
}

#[test]
fn routes_with_the_same_host_match_and_priority_are_ambiguous() {
    let route = |name: &str, priority: i32| {
        format!(
            "kind: Route\nname: {name}\nspec:\n  hosts: [api.example.com]\n  priority: {priority}\n  matches: [{{ path: {{ prefix: /v1 }}, methods: [POST, GET] }}]\n  forward: {{ backends: [{{ service: web }}] }}\n"
        )
    };
    // Method order does not make two matches different.
    let swapped = route("b", 0).replace("[POST, GET]", "[GET, POST]");
    assert_problem(
        &format!("{WEB}---\n{}---\n{swapped}", route("a", 0)),
        "route/b: spec.matches[0]: ambiguous with route/a: same host `api.example.com`, same match and same priority 0; give one a different priority",
    );
    assert_valid(&format!(
        "{WEB}---\n{}---\n{}",
        route("a", 0),
        route("b", 1)
    ));
}

#[test]
fn direct_response_and_redirect_routes_are_valid() {
    assert_valid(
        "kind: Route\nname: ping\nspec:\n  matches: [{ path: { exact: /ping } }]\n  direct_response: { status: 200, body: pong }\n---\n\
         kind: Route\nname: old\nspec:\n  matches: [{ path: { prefix: /old } }]\n  redirect: { path: /new, status: 308 }\n",
    );
}

// --- Domain and Certificate ------------------------------------------------------------------

#[test]
fn domain_with_a_matching_certificate_is_valid() {
    let (cert, key) = self_signed(&["*.example.com", "example.com"]);
    assert_valid(&format!(
        "{}\n---\nkind: Domain\nname: example\nspec:\n  hosts: [example.com, '*.example.com', api.example.com]\n  certificate: example-tls\n  min_tls_version: '1.3'\n  https_redirect: true\n",
        certificate_doc("example-tls", &cert, &key)
    ));
}

#[test]
fn domain_hosts_must_be_covered_by_its_certificate_and_claimed_once() {
    let (cert, key) = self_signed(&["api.example.com"]);
    let found = problems(&format!(
        "{}\n---\nkind: Domain\nname: a\nspec:\n  hosts: [api.example.com, www.example.com]\n  certificate: tls\n---\nkind: Domain\nname: b\nspec:\n  hosts: [api.example.com]\n  https_redirect: true\n",
        certificate_doc("tls", &cert, &key)
    ));
    for expected in [
        "domain/a: spec.hosts[1]: `www.example.com` is not covered by certificate/tls (names: api.example.com)",
        "domain/b: spec.https_redirect: redirecting to HTTPS needs a certificate for the domain",
        "domain/b: spec.hosts[0]: `api.example.com` is also claimed by domain/a",
    ] {
        assert!(
            found.iter().any(|p| p == expected),
            "missing `{expected}` in:\n{}",
            found.join("\n")
        );
    }
}

#[test]
fn certificate_whose_key_belongs_to_another_certificate_is_rejected() {
    let (cert, _) = self_signed(&["a.example.com"]);
    let (_, other_key) = self_signed(&["b.example.com"]);
    assert_problem(
        &certificate_doc("mismatch", &cert, &other_key),
        "certificate/mismatch: spec.key_pem: the private key does not match the first (leaf) certificate in cert_pem",
    );
    let found =
        problems("kind: Certificate\nname: junk\nspec: { cert_pem: 'hello', key_pem: 'world' }\n");
    assert!(
        found
            .iter()
            .any(|p| p == "certificate/junk: spec.cert_pem: no PEM `CERTIFICATE` block found"),
        "{found:?}"
    );
    assert!(
        found
            .iter()
            .any(|p| p.starts_with("certificate/junk: spec.key_pem: no usable PEM private key")),
        "{found:?}"
    );
}

#[test]
fn certificate_info_derives_names_and_expiry() {
    let (cert, key) = self_signed(&["api.example.com", "10.0.0.1"]);
    let spec = fleetgate_shared::model::CertificateSpec {
        cert_pem: cert,
        key_pem: key,
    };
    let info = fleetgate_shared::validate::certificate_info(&spec).unwrap();
    assert_eq!(
        info.names,
        vec!["api.example.com".to_owned(), "10.0.0.1".to_owned()]
    );
    assert!(info.not_after > info.not_before);
}

// --- Consumer and Policy ---------------------------------------------------------------------

const LIMIT: &str = "
kind: Policy
name: tenant-limit
spec:
  type: key-rate-limit
  config:
    key: consumer
    rate: { requests: 100, per: 1s }
    overrides: { big-tenant: { requests: 1000, per: 1s } }
    backend: { mode: redis, url: 'redis://127.0.0.1:6379', timeout: 50ms, failure_mode: closed }
";

#[test]
fn consumer_with_every_credential_and_a_live_override_is_valid() {
    assert_valid(&format!(
        "{LIMIT}\n---\nkind: Consumer\nname: acme\nspec:\n  credentials:\n    keys: [acme-0123456789abcdef]\n    jwt: {{ subject: acme }}\n    hmac: [{{ key_id: acme-1, secret: 0123456789abcdef0123456789abcdef }}]\n    basic: {{ username: acme, password_hash: 'pbkdf2-sha256$100000$00112233445566778899aabbccddeeff$0000000000000000000000000000000000000000000000000000000000000000' }}\n  rate_limits: {{ tenant-limit: {{ requests: 5000, per: 1m }} }}\n"
    ));
}

#[test]
fn consumer_credentials_must_be_strong_unique_and_refer_to_rate_limit_policies() {
    let found = problems(
        "kind: Consumer\nname: a\nspec:\n  credentials: { keys: [short], basic: { username: a, password_hash: plain } }\n  rate_limits: { ghost: { requests: 1, per: 1s } }\n---\n\
         kind: Consumer\nname: b\nspec:\n  credentials: { keys: [short] }\n",
    );
    for expected in [
        "consumer/a: spec.credentials.keys[0]: API keys must be at least 16 characters long",
        "consumer/a: spec.credentials.basic.password_hash: expected pbkdf2-sha256$<iterations>$<salt hex>$<key hex> (make one with `fleetgate hash-password`)",
        "consumer/a: spec.rate_limits.ghost: refers to policy/ghost, which does not exist",
        "consumer/b: spec.credentials.keys[0]: this API key also belongs to consumer/a: it would identify two consumers",
    ] {
        assert!(
            found.iter().any(|p| p == expected),
            "missing `{expected}` in:\n{}",
            found.join("\n")
        );
    }
}

#[test]
fn consumer_rate_limit_overrides_need_a_policy_that_counts_by_consumer() {
    let found = problems(
        "kind: Policy\nname: tenant-limit\nspec:\n  type: key-rate-limit\n  config: { key: { header: x-tenant }, rate: { requests: 100, per: 1s } }\n---\n\
         kind: Policy\nname: ip-limit\nspec:\n  type: key-rate-limit\n  config: { key: client_ip, rate: { requests: 100, per: 1s } }\n---\n\
         kind: Policy\nname: per-consumer\nspec:\n  type: key-rate-limit\n  config: { key: consumer, rate: { requests: 100, per: 1s } }\n---\n\
         kind: Consumer\nname: acme\nspec:\n  rate_limits:\n    tenant-limit: { requests: 5, per: 1s }\n    ip-limit: { requests: 5, per: 1s }\n    per-consumer: { requests: 5, per: 1s }\n",
    );
    assert_eq!(
        found,
        [
            "consumer/acme: spec.rate_limits.ip-limit: policy/ip-limit counts by client IP, not by consumer; a consumer override would never apply",
            "consumer/acme: spec.rate_limits.tenant-limit: policy/tenant-limit counts by header x-tenant, not by consumer; a consumer override would never apply",
        ]
    );
}

#[test]
fn every_policy_type_parses_with_a_minimal_config() {
    let configs = [
        (
            "jwt-auth",
            "{ algorithms: [HS256], keys: [{ algorithm: HS256, secret: 0123456789abcdef0123456789abcdef }] }",
        ),
        ("key-auth", "{}"),
        ("basic-auth", "{}"),
        ("hmac-auth", "{}"),
        (
            "key-rate-limit",
            "{ key: client_ip, rate: { requests: 10, per: 1s } }",
        ),
        ("ip-restriction", "{ deny: [192.0.2.0/24] }"),
        ("cors", "{ allow_origins: ['https://app.example.com'] }"),
        ("bot-detect", "{ deny: ['(?i)curl'] }"),
        ("waf", "{ paranoia_level: 2 }"),
        (
            "cc-protection",
            "{ threshold: { requests: 100, per: 10s }, ban: 10m }",
        ),
        ("request-size-limit", "{ max_body_bytes: 1048576 }"),
    ];
    assert_eq!(
        configs.len(),
        fleetgate_shared::model::PolicyConfig::TYPES.len()
    );
    for (ty, config) in configs {
        let resources = assert_valid(&format!(
            "kind: Policy\nname: p\nspec:\n  type: {ty}\n  config: {config}\n"
        ));
        let fleetgate_shared::Spec::Policy(p) = &resources[0].spec else {
            panic!("not a policy")
        };
        assert_eq!(p.config.type_name(), ty);
    }
}

#[test]
fn policy_config_problems_name_the_config_field() {
    assert_problem(
        "kind: Policy\nname: p\nspec:\n  type: key-rate-limit\n  config: { key: client_ip, rate: { requests: 10, per: 1s }, burst: 5 }\n",
        "policy/p: spec.config.burst: unknown field `burst`, expected one of `key`, `rate`, `algorithm`, `overrides`, `reject_missing_key`, `backend`",
    );
    assert_problem(
        "kind: Policy\nname: p\nspec:\n  type: rate-limit\n",
        "policy/p: spec.type: unknown policy type `rate-limit`, expected one of jwt-auth, key-auth, basic-auth, hmac-auth, key-rate-limit, ip-restriction, cors, bot-detect, waf, cc-protection, request-size-limit",
    );
    assert_problem(
        "kind: Policy\nname: p\nspec:\n  type: ip-restriction\n  config: { allow: [10.0.0.0/33] }\n",
        "policy/p: spec.config.allow[0]: `10.0.0.0/33` is not an IP network (such as 10.0.0.0/8) or an IP address",
    );
    assert_problem(
        "kind: Policy\nname: p\nspec:\n  type: cors\n  config: { allow_origins: ['*'], allow_credentials: true }\n",
        "policy/p: spec.config.allow_origins[0]: `*` cannot be combined with allow_credentials (browsers refuse it); list the origins",
    );
    assert_problem(
        "kind: Policy\nname: p\nspec:\n  type: waf\n  config: { paranoia_level: 5 }\n",
        "policy/p: spec.config.paranoia_level: 5 is out of range; expected 1 to 4",
    );
}

#[test]
fn jwt_policies_refuse_key_confusion_and_weak_secrets() {
    let found = problems(
        "kind: Policy\nname: jwt\nspec:\n  type: jwt-auth\n  config:\n    algorithms: [HS256, RS256]\n    keys: [{ algorithm: HS256, secret: short }, { algorithm: RS256, secret: also-wrong }]\n    consumers: [nobody]\n",
    );
    for expected in [
        "policy/jwt: spec.config.algorithms: mixing HS (shared secret) and public-key algorithms in one policy invites key confusion; use two policies",
        "policy/jwt: spec.config.keys[0].secret: HS secrets must be at least 32 bytes long",
        "policy/jwt: spec.config.keys[1]: a public-key algorithm needs `public_key_pem` and no `secret`",
        "policy/jwt: spec.config.consumers[0]: refers to consumer/nobody, which does not exist",
    ] {
        assert!(
            found.iter().any(|p| p == expected),
            "missing `{expected}` in:\n{}",
            found.join("\n")
        );
    }
}

/// One public key per family a JWS algorithm can need, generated once for every test.
struct JwtKeys {
    rsa: String,
    p256: String,
    p384: String,
    ed25519: String,
}

fn jwt_keys() -> &'static JwtKeys {
    static KEYS: std::sync::OnceLock<JwtKeys> = std::sync::OnceLock::new();
    KEYS.get_or_init(|| {
        let public = |alg| rcgen::KeyPair::generate_for(alg).unwrap().public_key_pem();
        JwtKeys {
            rsa: public(&rcgen::PKCS_RSA_SHA256),
            p256: public(&rcgen::PKCS_ECDSA_P256_SHA256),
            p384: public(&rcgen::PKCS_ECDSA_P384_SHA384),
            ed25519: public(&rcgen::PKCS_ED25519),
        }
    })
}

/// A jwt-auth policy `jwt` with one inline key per `(algorithm, public key PEM)`.
fn jwt_policy(keys: &[(&str, &str)]) -> String {
    let algorithms: Vec<&str> = keys.iter().map(|(alg, _)| *alg).collect();
    let mut doc = format!(
        "kind: Policy\nname: jwt\nspec:\n  type: jwt-auth\n  config:\n    algorithms: [{}]\n    keys:\n",
        algorithms.join(", ")
    );
    for (alg, pem) in keys {
        doc.push_str(&format!(
            "      - algorithm: {alg}\n        public_key_pem: |\n"
        ));
        for line in pem.lines() {
            doc.push_str(&format!("          {line}\n"));
        }
    }
    doc
}

#[test]
fn jwt_public_keys_of_the_family_their_algorithm_needs_are_valid() {
    let k = jwt_keys();
    assert_valid(&jwt_policy(&[
        ("RS256", &k.rsa),
        ("PS512", &k.rsa),
        ("ES256", &k.p256),
        ("ES384", &k.p384),
        ("EdDSA", &k.ed25519),
    ]));
}

#[test]
fn jwt_public_keys_of_another_family_are_rejected_naming_both() {
    let k = jwt_keys();
    let found = problems(&jwt_policy(&[
        ("RS256", &k.p256),
        ("PS384", &k.ed25519),
        ("ES256", &k.p384),
        ("ES384", &k.p256),
        ("EdDSA", &k.rsa),
    ]));
    assert_eq!(
        found,
        [
            "policy/jwt: spec.config.keys[0].public_key_pem: an RS256 key must be an RSA public key, found an EC P-256 key",
            "policy/jwt: spec.config.keys[1].public_key_pem: a PS384 key must be an RSA public key, found an Ed25519 key",
            "policy/jwt: spec.config.keys[2].public_key_pem: an ES256 key must be an EC P-256 public key, found an EC P-384 key",
            "policy/jwt: spec.config.keys[3].public_key_pem: an ES384 key must be an EC P-384 public key, found an EC P-256 key",
            "policy/jwt: spec.config.keys[4].public_key_pem: an EdDSA key must be an Ed25519 public key, found an RSA key",
        ]
    );
}

#[test]
fn policy_scope_must_name_existing_routes_and_domains() {
    assert_problem(
        "kind: Policy\nname: p\nspec:\n  type: request-size-limit\n  config: { max_body_bytes: 10 }\n  scope: { routes: [nope], domains: [none] }\n",
        "policy/p: spec.scope.routes[0]: refers to route/nope, which does not exist",
    );
}

// --- Envelope --------------------------------------------------------------------------------

#[test]
fn envelope_problems_name_the_document() {
    let found = problems(
        "kind: Gateway\nname: x\nspec: {}\n---\nname: y\nspec: {}\n---\nkind: Route\nname: Bad_Name\nspec: { direct_response: { status: 204 } }\n---\n- just\n- a list\n",
    );
    assert_eq!(
        found[0],
        "Gateway/x: kind: unknown kind `Gateway`, expected one of Certificate, Domain, Service, Consumer, Policy, Route (in document 1)"
    );
    assert_eq!(found[1], "document 2: missing field `kind`");
    assert_eq!(
        found[2],
        "document 4: expected a resource document (a mapping with kind, name and spec), found a list"
    );
    // Document 3 parses; its name is reported by validation once the parse errors are fixed.
    assert_eq!(found.len(), 3);
    assert_problem(
        "kind: Route\nname: Bad_Name\nspec: { direct_response: { status: 204 } }\n",
        "route/Bad_Name: name: `Bad_Name` is not a valid name: use lower-case letters, digits, `-` and `.`, starting and ending with a letter or digit",
    );
}

#[test]
fn duplicate_names_of_one_kind_are_rejected_but_two_kinds_may_share_a_name() {
    let doc = "kind: Route\nname: same\nspec: { direct_response: { status: 204 } }\n";
    assert_problem(
        &format!("{doc}---\n{doc}"),
        "route/same: name: duplicate: route/same is defined more than once",
    );
    assert_valid(&format!(
        "{doc}---\nkind: Service\nname: same\nspec: {{ endpoints: [{{ address: '127.0.0.1:1' }}] }}\n"
    ));
}

// --- Placement consistency -------------------------------------------------------------------

const EU: &str = "placement: { match_labels: { jurisdiction: eu } }";

/// Only the placement-consistency problems among everything `yaml` has.
fn placement_problems(yaml: &str) -> Vec<String> {
    problems(yaml)
        .into_iter()
        .filter(|p| p.contains("placed on fewer agents"))
        .collect()
}

#[test]
fn placed_resources_may_refer_to_unplaced_ones_and_to_ones_placed_the_same_way() {
    let (cert, key) = self_signed(&["api.eu.example.com"]);
    assert_valid(&format!(
        "{WEB}---
kind: Service
name: eu-api
# The same selection as `EU`, written as an expression.
placement: {{ match_expressions: [{{ key: jurisdiction, operator: In, values: [eu] }}] }}
spec: {{ endpoints: [{{ address: '10.0.0.1:80' }}] }}
---
{}
{EU}
---
kind: Domain
name: eu
{EU}
spec: {{ hosts: [api.eu.example.com], certificate: eu-tls }}
---
kind: Route
name: eu-api
{EU}
spec:
  hosts: [api.eu.example.com]
  forward: {{ backends: [{{ service: eu-api }}], mirror: {{ service: web }} }}
",
        certificate_doc("eu-tls", &cert, &key)
    ));
}

#[test]
fn a_reference_to_a_resource_placed_differently_is_reported_at_the_referring_field() {
    let (cert, key) = self_signed(&["api.eu.example.com"]);
    let yaml = format!(
        "kind: Service
name: eu-svc
{EU}
spec: {{ endpoints: [{{ address: '10.0.0.1:80' }}] }}
---
kind: Policy
name: eu-limit
{EU}
spec: {{ type: key-rate-limit, config: {{ key: consumer, rate: {{ requests: 1, per: 1s }} }} }}
---
kind: Consumer
name: eu-consumer
{EU}
spec: {{ credentials: {{ keys: [eu-consumer-0123456789] }} }}
---
kind: Route
name: eu-route
{EU}
spec: {{ hosts: [eu.example.com], direct_response: {{ status: 204 }} }}
---
kind: Domain
name: eu-domain
{EU}
spec: {{ hosts: [eu.example.com] }}
---
{}
{EU}
---
kind: Route
name: r
spec:
  forward:
    backends: [{{ service: eu-svc }}]
    canary: [{{ header: {{ name: x-canary }}, backends: [{{ service: eu-svc }}] }}]
    mirror: {{ service: eu-svc }}
  policies: [eu-limit]
---
kind: Route
name: on-aws
placement: {{ match_labels: {{ cloud: aws }} }}
spec: {{ hosts: [aws.example.com], forward: {{ backends: [{{ service: eu-svc }}] }} }}
---
kind: Domain
name: d
spec: {{ hosts: [api.eu.example.com], certificate: eu-tls, policies: [eu-limit] }}
---
kind: Policy
name: p
spec:
  type: key-auth
  config: {{ consumers: [eu-consumer] }}
  scope: {{ routes: [eu-route], domains: [eu-domain] }}
---
kind: Consumer
name: c
spec: {{ rate_limits: {{ eu-limit: {{ requests: 5, per: 1s }} }} }}
",
        certificate_doc("eu-tls", &cert, &key)
    );
    let refers = |to: &str| {
        format!(
            "refers to {to}, which may be placed on fewer agents (placement differs); place both the same way or remove {to}'s placement"
        )
    };
    assert_eq!(
        placement_problems(&yaml),
        [
            format!(
                "route/r: spec.forward.backends[0].service: {}",
                refers("service/eu-svc")
            ),
            format!(
                "route/r: spec.forward.canary[0].backends[0].service: {}",
                refers("service/eu-svc")
            ),
            format!(
                "route/r: spec.forward.mirror.service: {}",
                refers("service/eu-svc")
            ),
            format!("route/r: spec.policies[0]: {}", refers("policy/eu-limit")),
            // Placed, but on other agents: not the same placement either.
            format!(
                "route/on-aws: spec.forward.backends[0].service: {}",
                refers("service/eu-svc")
            ),
            format!(
                "domain/d: spec.certificate: {}",
                refers("certificate/eu-tls")
            ),
            format!("domain/d: spec.policies[0]: {}", refers("policy/eu-limit")),
            format!(
                "policy/p: spec.config.consumers[0]: {}",
                refers("consumer/eu-consumer")
            ),
            format!(
                "policy/p: spec.scope.domains[0]: {}",
                refers("domain/eu-domain")
            ),
            format!(
                "policy/p: spec.scope.routes[0]: {}",
                refers("route/eu-route")
            ),
            format!(
                "consumer/c: spec.rate_limits.eu-limit: {}",
                refers("policy/eu-limit")
            ),
        ]
    );
}

#[test]
fn placement_selectors_are_checked() {
    assert_problem(
        "kind: Route\nname: r\nplacement: { match_expressions: [{ key: cloud, operator: In }] }\nspec: { direct_response: { status: 204 } }\n",
        "route/r: placement.match_expressions[0].values: In and NotIn need at least one value",
    );
}
