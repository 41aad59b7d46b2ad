//! Properties of snapshots and deltas: `apply(diff(a, b), a) == b`, checksums equal exactly when
//! contents are, placement selection, and delta bookkeeping errors.

#![allow(clippy::unwrap_used)] // helpers outside #[test] fns fail the test loudly, as they should

use std::collections::BTreeMap;

use fleetgate_shared::model::*;
use fleetgate_shared::{Delta, DeltaError, Resource, Snapshot, diff};
use proptest::prelude::*;

/// Small value spaces on purpose: collisions make "equal content" cases common.
fn name() -> impl Strategy<Value = String> {
    prop::sample::select(vec!["a", "b", "c", "d"]).prop_map(str::to_owned)
}

fn labels() -> impl Strategy<Value = Labels> {
    prop::collection::btree_map(
        prop::sample::select(vec!["cloud", "region"]),
        prop::sample::select(vec!["aws", "gcp"]),
        0..2,
    )
    .prop_map(|m| {
        m.into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect()
    })
}

fn service() -> impl Strategy<Value = Spec> {
    prop::collection::vec((1u16..4, 1u32..3), 1..3).prop_map(|eps| {
        let mut seen = BTreeMap::new();
        for (port, weight) in eps {
            seen.insert(port, weight);
        }
        Spec::Service(ServiceSpec {
            endpoints: seen
                .into_iter()
                .map(|(port, weight)| Endpoint {
                    address: format!("127.0.0.1:{port}"),
                    weight,
                    labels: Labels::new(),
                })
                .collect(),
            dns: None,
            protocol: UpstreamProtocol::Http1,
            tls: None,
            load_balancing: LoadBalancing::RoundRobin,
            health_check: None,
            outlier_detection: None,
            limits: ConnectionLimits::default(),
        })
    })
}

fn route() -> impl Strategy<Value = Spec> {
    (
        0i32..2,
        prop::option::of(prop::sample::select(vec!["/", "/api"])),
        200u16..202,
    )
        .prop_map(|(priority, prefix, status)| {
            Spec::Route(RouteSpec {
                hosts: Vec::new(),
                matches: prefix
                    .map(|p| {
                        vec![RouteMatch {
                            path: Some(PathMatch::Prefix(p.to_owned())),
                            ..RouteMatch::default()
                        }]
                    })
                    .unwrap_or_default(),
                priority,
                forward: None,
                redirect: None,
                direct_response: Some(DirectResponse {
                    status,
                    body: String::new(),
                    content_type: None,
                }),
                filters: Filters::default(),
                policies: Vec::new(),
            })
        })
}

fn resource() -> impl Strategy<Value = Resource> {
    let placement = prop::option::of(labels().prop_map(|match_labels| Placement {
        match_labels,
        match_expressions: Vec::new(),
    }));
    (name(), labels(), placement, prop_oneof![service(), route()]).prop_map(
        |(name, labels, placement, spec)| Resource {
            name,
            labels,
            placement,
            spec,
        },
    )
}

fn snapshot() -> impl Strategy<Value = Snapshot> {
    (0u64..5, prop::collection::vec(resource(), 0..6)).prop_map(|(revision, resources)| {
        let mut unique = BTreeMap::new();
        for r in resources {
            unique.insert(r.key(), r);
        }
        Snapshot::new(revision, unique.into_values()).unwrap()
    })
}

proptest! {
    #[test]
    fn applying_the_diff_of_a_and_b_to_a_gives_b(a in snapshot(), b in snapshot(), bump in 0u64..3) {
        let b = Snapshot::new(a.revision + bump, b.into_resources()).unwrap();
        let delta = diff(&a, &b);
        prop_assert_eq!(a.apply(&delta), Ok(b.clone()));
        // Proportional to the change: nothing unchanged is carried.
        for r in &delta.upserts {
            prop_assert_ne!(a.get(&r.key()), Some(r));
        }
    }

    #[test]
    fn a_checksum_carried_through_deltas_equals_one_computed_afresh(a in snapshot(), b in snapshot(), c in snapshot()) {
        // a's checksum builds the buckets that apply then patches, twice in a row.
        a.checksum();
        let b = Snapshot::new(a.revision + 1, b.into_resources()).unwrap();
        let c = Snapshot::new(a.revision + 2, c.into_resources()).unwrap();
        let patched_b = a.apply(&diff(&a, &b)).unwrap();
        prop_assert_eq!(patched_b.checksum(), b.checksum());
        let patched_c = patched_b.apply(&diff(&b, &c)).unwrap();
        prop_assert_eq!(patched_c.checksum(), c.checksum());
    }

    #[test]
    fn checksums_are_equal_exactly_when_contents_are(a in snapshot(), b in snapshot()) {
        let same_content = a.resources().eq(b.resources());
        prop_assert_eq!(a.checksum() == b.checksum(), same_content);
    }

    #[test]
    fn a_snapshot_survives_json_and_keeps_its_checksum(a in snapshot()) {
        let json = serde_json::to_string(&a).unwrap();
        let back: Snapshot = serde_json::from_str(&json).unwrap();
        prop_assert_eq!(back.checksum(), a.checksum());
        prop_assert_eq!(back, a);
    }

    #[test]
    fn a_selection_after_deltas_equals_one_made_afresh(a in snapshot(), b in snapshot(), c in snapshot(), agent in labels()) {
        // a's placed-resource index and checksum buckets are carried through two deltas.
        a.prepare_for_changes();
        let _ = a.select(&agent);
        let b = Snapshot::new(a.revision + 1, b.into_resources()).unwrap();
        let c = Snapshot::new(a.revision + 2, c.into_resources()).unwrap();
        let patched_b = a.apply(&diff(&a, &b)).unwrap();
        let patched_c = patched_b.apply(&diff(&b, &c)).unwrap();
        for (patched, fresh) in [(patched_b, b), (patched_c, c)] {
            let selected = patched.select(&agent);
            prop_assert_eq!(&selected, &fresh.select(&agent));
            let rebuilt = Snapshot::new(selected.revision, selected.resources().cloned()).unwrap();
            prop_assert_eq!(selected.checksum(), rebuilt.checksum());
        }
    }

    #[test]
    fn selection_keeps_exactly_the_resources_placed_on_the_agent(a in snapshot(), agent in labels()) {
        let selected = a.select(&agent);
        prop_assert_eq!(selected.revision, a.revision);
        for r in a.resources() {
            let wanted = r.placement.as_ref().is_none_or(|p| p.selects(&agent));
            prop_assert_eq!(selected.get(&r.key()).is_some(), wanted);
        }
    }
}

#[test]
fn the_checksum_of_a_known_snapshot_is_stable_across_builds() {
    // Pinned so that a change to the canonical encoding (field order, renames) is noticed: it
    // would make every agent's persisted checksum disagree with the managers'.
    let yaml = "kind: Route\nname: ping\nspec:\n  matches: [{ path: { exact: /ping } }]\n  direct_response: { status: 200, body: pong }\n";
    let resources =
        fleetgate_shared::parse_bundle(yaml, fleetgate_shared::bundle::Format::Yaml, "").unwrap();
    let snapshot = Snapshot::new(7, resources).unwrap();
    assert_eq!(
        String::from_utf8(snapshot.canonical_bytes()).unwrap(),
        "{\"kind\":\"Route\",\"name\":\"ping\",\"spec\":{\"matches\":[{\"path\":{\"exact\":\"/ping\"}}],\"direct_response\":{\"status\":200,\"body\":\"pong\"}}}\n"
    );
    // The checksum (version 2, see fleetgate_shared::checksum): the SHA-256 of 256 bucket
    // hashes; each bucket hashes its resources' digests. Here one bucket holds the route and
    // the other 255 are empty.
    let line = snapshot.canonical_bytes();
    let digest = sha2::Sha256::digest(&line[..line.len() - 1]);
    let bucket = fleetgate_shared::checksum::bucket_of(fleetgate_shared::Kind::Route, "ping");
    let empty = sha2::Sha256::digest(b"");
    let mut buckets = Vec::new();
    for index in 0..fleetgate_shared::checksum::BUCKETS {
        let hash = if index == bucket {
            sha2::Sha256::digest(digest)
        } else {
            empty
        };
        buckets.extend_from_slice(&hash);
    }
    assert_eq!(snapshot.checksum().to_string(), sha256_hex(&buckets));
    assert_eq!(
        snapshot.checksum().to_string(),
        "ca2b97a69f0d0592b7772740389ecbdee5877d12fec2298642e237ecfc6f5a21"
    );
    assert_eq!(
        Snapshot::default().checksum().to_string(),
        sha256_hex(&empty.repeat(256))
    );
}

use sha2::Digest;

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(sha2::Sha256::digest(bytes))
}

#[test]
fn deltas_refuse_a_wrong_base_going_backwards_and_phantom_deletes() {
    let route = |n: &str| {
        fleetgate_shared::parse_bundle(
            &format!("kind: Route\nname: {n}\nspec: {{ direct_response: {{ status: 204 }} }}\n"),
            fleetgate_shared::bundle::Format::Yaml,
            "",
        )
        .unwrap()
        .remove(0)
    };
    let a = Snapshot::new(3, [route("a")]).unwrap();
    let wrong_base = Delta {
        from: 2,
        to: 4,
        ..Delta::default()
    };
    assert_eq!(
        a.apply(&wrong_base),
        Err(DeltaError::BaseMismatch {
            snapshot: 3,
            delta_from: 2
        })
    );
    let backwards = Delta {
        from: 3,
        to: 1,
        ..Delta::default()
    };
    assert_eq!(
        a.apply(&backwards),
        Err(DeltaError::Backwards { from: 3, to: 1 })
    );
    let phantom = Delta {
        from: 3,
        to: 4,
        deletes: vec![route("zzz").key()],
        upserts: vec![],
    };
    assert_eq!(
        a.apply(&phantom),
        Err(DeltaError::UnknownDelete(route("zzz").key()))
    );
    let conflict = Delta {
        from: 3,
        to: 4,
        deletes: vec![route("a").key()],
        upserts: vec![route("a")],
    };
    assert_eq!(
        a.apply(&conflict),
        Err(DeltaError::Conflict(route("a").key()))
    );
    assert!(Snapshot::new(1, [route("a"), route("a")]).is_err());
}
