//! `validate_change` (validation of only what a change can have broken) must reach the same
//! verdict, with the same errors, as validating the changed config whole. The base is the
//! shipped fleet example (every kind, references in every direction, placements); the changes
//! are every single deletion, a renamed copy of every resource (colliding host claims,
//! credentials and route matches), a placement added to every resource, and random mixes of
//! those.

#![allow(clippy::unwrap_used, clippy::panic)]

use std::collections::BTreeSet;

use fleetgate_shared::{
    Delta, Placement, Resource, ResourceKey, Snapshot, ValidationError, load_paths, validate_change,
};

const FLEET: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/fleet");

fn base() -> Snapshot {
    let snapshot = Snapshot::new(1, load_paths(&[FLEET]).unwrap()).unwrap();
    snapshot.validate().unwrap();
    snapshot
}

/// One change to the base: what it upserts and what it deletes.
#[derive(Clone, Debug)]
enum Mutation {
    Delete(ResourceKey),
    Copy(Resource),
    Place(Resource),
}

impl Mutation {
    fn key(&self) -> ResourceKey {
        match self {
            Mutation::Delete(key) => key.clone(),
            Mutation::Copy(r) | Mutation::Place(r) => r.key(),
        }
    }
}

fn mutations(base: &Snapshot) -> Vec<Mutation> {
    let mut out = Vec::new();
    for resource in base.resources() {
        out.push(Mutation::Delete(resource.key()));
        let mut copy = resource.clone();
        copy.name = format!("copy-of-{}", resource.name);
        out.push(Mutation::Copy(copy));
        let mut placed = resource.clone();
        let mut placement = Placement::default();
        placement.match_labels.insert("cloud".into(), "aws".into());
        placed.placement = Some(placement);
        out.push(Mutation::Place(placed));
    }
    out
}

fn apply(base: &Snapshot, mutations: &[&Mutation]) -> Snapshot {
    let mut delta = Delta {
        from: base.revision,
        to: base.revision + 1,
        ..Delta::default()
    };
    for m in mutations {
        match m {
            Mutation::Delete(key) => delta.deletes.push(key.clone()),
            Mutation::Copy(r) | Mutation::Place(r) => delta.upserts.push(r.clone()),
        }
    }
    base.apply(&delta).unwrap()
}

fn error_set(result: Result<(), Vec<ValidationError>>) -> BTreeSet<String> {
    result
        .err()
        .unwrap_or_default()
        .iter()
        .map(ToString::to_string)
        .collect()
}

fn assert_same_verdict(base: &Snapshot, mutations: &[&Mutation]) -> bool {
    let next = apply(base, mutations);
    let whole = error_set(next.validate());
    let incremental = error_set(validate_change(base, &next));
    assert_eq!(
        incremental, whole,
        "after {mutations:?}: incremental validation disagrees with whole validation"
    );
    !whole.is_empty()
}

#[test]
fn every_single_change_gets_the_verdict_of_whole_validation() {
    let base = base();
    let all = mutations(&base);
    let mut rejected = 0;
    for mutation in &all {
        if assert_same_verdict(&base, &[mutation]) {
            rejected += 1;
        }
    }
    // The cases must exercise both verdicts, or the comparison proves little.
    assert!(
        rejected > 10,
        "only {rejected} of {} changes were rejected",
        all.len()
    );
    assert!(
        rejected < all.len() - 10,
        "{rejected} of {} changes were rejected",
        all.len()
    );
}

#[test]
fn mixed_changes_get_the_verdict_of_whole_validation() {
    let base = base();
    let all = mutations(&base);
    let seed = fastrand::u64(..);
    let mut rng = fastrand::Rng::with_seed(seed);
    for _ in 0..300 {
        let mut picked: Vec<&Mutation> = Vec::new();
        let mut keys = BTreeSet::new();
        for _ in 0..rng.usize(2..=4) {
            let m = &all[rng.usize(..all.len())];
            // A delta changes each key once.
            if keys.insert(m.key()) {
                picked.push(m);
            }
        }
        let next = apply(&base, &picked);
        assert_eq!(
            error_set(validate_change(&base, &next)),
            error_set(next.validate()),
            "seed {seed}, after {picked:?}"
        );
    }
}

#[test]
fn an_unchanged_config_is_valid_without_looking_at_it() {
    let base = base();
    let next = apply(&base, &[]);
    assert_eq!(validate_change(&base, &next), Ok(()));
}
