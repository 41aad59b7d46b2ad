//! The shipped example configs in `examples/` stay valid, keep covering every kind, policy type
//! and routing feature, and the broken example keeps failing with exactly the errors its header
//! comment promises.

#![allow(clippy::unwrap_used, clippy::panic)] // helpers outside #[test] fns fail the test loudly

use std::collections::BTreeSet;

use fleetgate_shared::model::{
    HashOn, LimitBackend, LoadBalancing, PolicyConfig, SelectorOperator,
};
use fleetgate_shared::{Kind, Resource, Spec, load_paths, validate};

const STANDALONE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/standalone");
const FLEET: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/fleet");
const INVALID: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/invalid");

/// Loads an example directory, failing with every parse error.
fn load(path: &str) -> Vec<Resource> {
    match load_paths(&[path]) {
        Ok(resources) => resources,
        Err(fleetgate_shared::LoadError::Invalid(errors)) => panic!(
            "{path} does not parse:\n{}",
            errors
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("\n")
        ),
        Err(e) => panic!("{path}: {e}"),
    }
}

/// Loads and validates an example directory, failing with every validation error.
fn load_valid(path: &str) -> Vec<Resource> {
    let resources = load(path);
    if let Err(errors) = validate(&resources) {
        panic!(
            "{path} should be valid, but has {} problem(s):\n{}",
            errors.len(),
            errors
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
    resources
}

fn kinds(resources: &[Resource]) -> BTreeSet<Kind> {
    resources.iter().map(Resource::kind).collect()
}

fn policy_types(resources: &[Resource]) -> BTreeSet<&'static str> {
    resources
        .iter()
        .filter_map(|r| match &r.spec {
            Spec::Policy(p) => Some(p.config.type_name()),
            _ => None,
        })
        .collect()
}

fn policies(resources: &[Resource]) -> impl Iterator<Item = &PolicyConfig> {
    resources.iter().filter_map(|r| match &r.spec {
        Spec::Policy(p) => Some(&p.config),
        _ => None,
    })
}

fn services(resources: &[Resource]) -> impl Iterator<Item = &fleetgate_shared::model::ServiceSpec> {
    resources.iter().filter_map(|r| match &r.spec {
        Spec::Service(s) => Some(s),
        _ => None,
    })
}

fn routes(resources: &[Resource]) -> impl Iterator<Item = &fleetgate_shared::model::RouteSpec> {
    resources.iter().filter_map(|r| match &r.spec {
        Spec::Route(s) => Some(s),
        _ => None,
    })
}

#[test]
fn standalone_example_is_a_valid_laptop_bundle_with_blue_green_api_ws_and_healthz_routes() {
    let resources = load_valid(STANDALONE);
    let names: BTreeSet<String> = resources.iter().map(|r| r.key().to_string()).collect();
    for expected in [
        "service/echo",
        "policy/api-rate-limit",
        "route/catch-all",
        "route/api",
        "route/ws",
        "route/healthz",
    ] {
        assert!(
            names.contains(expected),
            "{expected} missing from {names:?}"
        );
    }
    let addresses: BTreeSet<&str> = services(&resources)
        .flat_map(|s| s.endpoints.iter().map(|e| e.address.as_str()))
        .collect();
    assert_eq!(
        addresses,
        BTreeSet::from(["127.0.0.1:9001", "127.0.0.1:9002"])
    );
    assert!(routes(&resources).any(|r| r.direct_response.is_some()));
    assert!(policy_types(&resources).contains("key-rate-limit"));
}

#[test]
fn fleet_example_is_valid_and_covers_every_kind_and_policy_type() {
    let fleet = load_valid(FLEET);
    let standalone = load_valid(STANDALONE);

    let all_kinds = BTreeSet::from(Kind::ALL);
    assert_eq!(
        kinds(&fleet),
        all_kinds,
        "the fleet example alone covers every kind"
    );

    let all_types = BTreeSet::from(PolicyConfig::TYPES);
    assert_eq!(
        policy_types(&fleet),
        all_types,
        "the fleet example alone covers every policy type"
    );

    let mut union = fleet.clone();
    union.extend(standalone);
    assert_eq!(kinds(&union), all_kinds);
    assert_eq!(policy_types(&union), all_types);
}

#[test]
fn fleet_example_placed_on_any_agent_is_itself_valid() {
    // What one agent receives must validate on that agent: no reference may dangle there.
    let fleet = fleetgate_shared::Snapshot::new(1, load_valid(FLEET)).unwrap();
    let agents: [&[(&str, &str)]; 5] = [
        &[],
        &[("cloud", "aws"), ("jurisdiction", "eu")],
        &[("cloud", "gcp"), ("tier", "internal")],
        &[("cloud", "azure"), ("tier", "internal")],
        &[
            ("cloud", "gcp"),
            ("jurisdiction", "eu"),
            ("tier", "internal"),
        ],
    ];
    let mut sizes = BTreeSet::new();
    for labels in agents {
        let labels = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let placed = fleet.select(&labels).into_resources();
        sizes.insert(placed.len());
        if let Err(errors) = validate(&placed) {
            panic!(
                "the fleet example placed on an agent labelled {labels:?} is invalid:\n{}",
                errors
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("\n")
            );
        }
    }
    assert!(
        sizes.len() > 1,
        "placement selects different parts: {sizes:?}"
    );
}

#[test]
fn fleet_example_showcases_shared_rate_limits_placement_and_every_routing_feature() {
    let fleet = load_valid(FLEET);

    let redis = policies(&fleet).any(|p| {
        matches!(p, PolicyConfig::KeyRateLimit(c) if matches!(&c.backend, LimitBackend::Redis { url, .. } if url == "redis://127.0.0.1:6379"))
    });
    assert!(redis, "a key-rate-limit counts in Redis");
    let jwt_algorithms: BTreeSet<bool> = policies(&fleet)
        .filter_map(|p| match p {
            PolicyConfig::JwtAuth(c) => c.algorithms.first().map(|a| a.is_symmetric()),
            _ => None,
        })
        .collect();
    assert_eq!(
        jwt_algorithms,
        BTreeSet::from([false, true]),
        "both HS and RS jwt-auth policies"
    );

    let placed: Vec<_> = fleet.iter().filter_map(|r| r.placement.as_ref()).collect();
    assert!(placed.iter().any(|p| !p.match_labels.is_empty()));
    assert!(
        placed
            .iter()
            .flat_map(|p| &p.match_expressions)
            .any(|e| e.operator == SelectorOperator::In)
    );

    let svcs: Vec<_> = services(&fleet).collect();
    assert!(svcs.iter().any(|s| s.health_check.is_some()));
    assert!(svcs.iter().any(|s| s.outlier_detection.is_some()));
    assert!(svcs.iter().any(|s| s.dns.is_some()));
    assert!(
        svcs.iter()
            .any(|s| s.tls.as_ref().is_some_and(|t| t.ca_pem.is_some()))
    );
    assert!(svcs.iter().any(|s| matches!(
        &s.load_balancing,
        LoadBalancing::ConsistentHash { hash_on: HashOn::Header(h) } if h == "x-user"
    )));
    for stage in ["blue", "green"] {
        assert!(
            svcs.iter().flat_map(|s| &s.endpoints).any(|e| e
                .labels
                .get("stage")
                .map(String::as_str)
                == Some(stage)),
            "endpoints labelled stage: {stage}"
        );
    }

    let rts: Vec<_> = routes(&fleet).collect();
    let forwards: Vec<_> = rts.iter().filter_map(|r| r.forward.as_ref()).collect();
    assert!(
        forwards
            .iter()
            .any(|f| f.backends.iter().any(|b| !b.subset.is_empty()))
    );
    assert!(forwards.iter().any(|f| !f.canary.is_empty()));
    assert!(forwards.iter().any(|f| f.retries.is_some()));
    assert!(forwards.iter().any(|f| f.mirror.is_some()));
    assert!(rts.iter().any(|r| r.redirect.is_some()));
    assert!(rts.iter().any(|r| r.direct_response.is_some()));
    assert!(rts.iter().any(|r| r.filters.rewrite.is_some()));
    assert!(
        rts.iter()
            .any(|r| r.filters.request_headers != Default::default())
    );
    assert!(
        rts.iter()
            .any(|r| r.filters.response_headers != Default::default())
    );
}

#[test]
fn invalid_example_parses_but_fails_validation_with_every_error_listed_in_its_header() {
    let resources = load(INVALID);
    let errors = validate(&resources).expect_err("examples/invalid must not validate");
    let lines: Vec<String> = errors.iter().map(ToString::to_string).collect();
    let found: Vec<(&str, &str)> = errors
        .iter()
        .map(|e| (e.resource.as_str(), e.path.as_str()))
        .collect();
    assert_eq!(
        found,
        [
            ("route/checkout", "spec.forward.backends[0].service"),
            ("route/user-profile", "spec.matches[0].path.regex"),
            ("route/catalog", "spec.forward.backends[1].weight"),
            ("consumer/storefront", "spec.credentials.keys[0]"),
            ("route/search-v2", "spec.matches[0]"),
        ],
        "got:\n{}",
        lines.join("\n")
    );
    for (line, expected) in lines.iter().zip([
        "refers to service/payments, which does not exist",
        "unclosed group",
        "20000 is out of range; expected 0 to 10000",
        "at least 16 characters",
        "ambiguous with route/search-v1",
    ]) {
        assert!(
            line.contains(expected),
            "`{line}` should mention `{expected}`"
        );
    }
}
