//! What the WAF engine tests share: the agent's rule text, both engines loaded from one text, a
//! request built from owned parts, and the part of an outcome both engines must agree on.

// Each test binary uses part of this module.
#![allow(dead_code)]

use fleetgate_agent_waf::{Engine, Outcome, Request, crs, native};

/// Sorted rule ids, and the intervention's status and rule.
pub type Summary = (Vec<u32>, Option<(u16, Option<u32>)>);

pub fn summary(outcome: &Outcome) -> Summary {
    let mut ids = outcome.rule_ids();
    ids.sort_unstable();
    let intervention = outcome.intervention.as_ref().map(|i| (i.status, i.rule.id));
    (ids, intervention)
}

/// The rule text the agent's waf policy loads at `paranoia`, with the default body limit.
pub fn crs_text(paranoia: u8) -> String {
    crs::Settings {
        paranoia,
        body_limit: 131_072,
        disabled: Vec::new(),
    }
    .rules_text()
}

/// libmodsecurity and the native engine, both loaded from `rules`.
pub fn engines(rules: &str) -> (Engine, native::Engine) {
    (
        Engine::load(rules).expect("libmodsecurity loads the rules"),
        native::Engine::load(rules).expect("the native engine loads the rules"),
    )
}

/// Header pairs as the engines take them.
pub fn header_refs(headers: &[(String, String)]) -> Vec<(&[u8], &[u8])> {
    headers
        .iter()
        .map(|(n, v)| (n.as_bytes(), v.as_bytes()))
        .collect()
}

/// A request from a fixed documentation-range client.
pub fn request<'a>(
    method: &'a str,
    uri: &'a str,
    http_version: &'a str,
    headers: &'a [(&'a [u8], &'a [u8])],
    body: &'a [u8],
) -> Request<'a> {
    Request {
        id: "test",
        client: ([192, 0, 2, 10], 40000).into(),
        server: ([0, 0, 0, 0], 0).into(),
        method,
        uri,
        http_version,
        headers,
        body,
    }
}
