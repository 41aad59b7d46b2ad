//! Which policies apply to a request, and in what order: global, then the request host's domain,
//! then the matched route; each policy once; ordered by phase (authn → authz → rate limit →
//! security), scope order kept within a phase. The rules are written down in docs/policies.md.

#![allow(clippy::unwrap_used)]

use fleetgate_agent_policy::{PolicySet, PolicyState};
use fleetgate_shared::Snapshot;
use fleetgate_shared::bundle::Format;

const CONFIG: &str = "
kind: Service
name: web
spec: { endpoints: [{ address: '127.0.0.1:9' }] }
---
kind: Domain
name: shop
spec: { hosts: [shop.example.com, '*.shop.example.com'], policies: [shop-cors] }
---
kind: Route
name: checkout
spec:
  hosts: [shop.example.com]
  policies: [checkout-size, api-keys]
  forward: { backends: [{ service: web }] }
---
kind: Route
name: other
spec:
  forward: { backends: [{ service: web }] }
---
kind: Consumer
name: acme
spec: { credentials: { keys: [acme-0123456789abcdef] } }
---
kind: Policy
name: everywhere-bots
spec: { type: bot-detect, config: { builtin_list: false, deny: ['evil'] }, scope: { global: true } }
---
kind: Policy
name: everywhere-ips
spec: { type: ip-restriction, config: { deny: [192.0.2.0/24] }, scope: { global: true } }
---
kind: Policy
name: shop-cors
spec: { type: cors, config: { allow_origins: ['https://shop.example.com'] } }
---
kind: Policy
name: shop-limit
spec: { type: key-rate-limit, config: { key: client_ip, rate: { requests: 100, per: 1s } }, scope: { domains: [shop] } }
---
kind: Policy
name: checkout-size
spec: { type: request-size-limit, config: { max_body_bytes: 1024 } }
---
kind: Policy
name: api-keys
spec: { type: key-auth, config: {}, scope: { routes: [checkout] } }
";

fn policies() -> PolicySet {
    let resources = fleetgate_shared::parse_bundle(CONFIG, Format::Yaml, "").unwrap();
    fleetgate_shared::validate(&resources).unwrap();
    PolicySet::compile(
        &Snapshot::new(1, resources).unwrap(),
        &PolicyState::default(),
    )
    .unwrap()
}

#[test]
fn global_domain_and_route_policies_run_once_each_in_phase_order() {
    let set = policies();
    // api-keys is listed by the route AND scoped to it: it runs once. Phases: authn (key-auth),
    // authz (ip-restriction, then cors: global before domain), rate limit, security (bot-detect,
    // then request-size-limit: global before route).
    assert_eq!(
        set.chain("shop.example.com", "checkout").names(),
        [
            "api-keys",
            "everywhere-ips",
            "shop-cors",
            "shop-limit",
            "everywhere-bots",
            "checkout-size"
        ]
    );
}

#[test]
fn domain_policies_follow_the_request_host_including_its_wildcard() {
    let set = policies();
    assert_eq!(
        set.chain("eu.shop.example.com", "other").names(),
        [
            "everywhere-ips",
            "shop-cors",
            "shop-limit",
            "everywhere-bots"
        ]
    );
    // A wildcard covers one label only, and other hosts get the global policies alone.
    assert_eq!(
        set.chain("a.eu.shop.example.com", "other").names(),
        ["everywhere-ips", "everywhere-bots"]
    );
    assert_eq!(
        set.chain("example.org", "other").names(),
        ["everywhere-ips", "everywhere-bots"]
    );
}

#[test]
fn a_config_without_policies_has_an_empty_chain_everywhere() {
    let resources = fleetgate_shared::parse_bundle(
        "kind: Route\nname: r\nspec: { direct_response: { status: 204 } }\n",
        Format::Yaml,
        "",
    )
    .unwrap();
    let set = PolicySet::compile(
        &Snapshot::new(1, resources).unwrap(),
        &PolicyState::default(),
    )
    .unwrap();
    assert!(set.is_empty());
    assert!(set.chain("any.host", "r").is_empty());
}
