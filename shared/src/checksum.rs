//! The content checksum, kept so that a change costs hashing of what it touched.
//!
//! Definition (version 2): every resource falls into one of [`BUCKETS`] buckets by a fixed hash
//! of its key ([`bucket_of`]). A bucket's hash is the SHA-256 of its resources' digests
//! ([`SharedResource::digest`]) in key order; the checksum is the SHA-256 of the
//! [`BUCKETS`] bucket hashes in bucket order (an empty bucket's hash is the SHA-256 of nothing).
//! Equal content gives equal buckets, so equal checksums, on every machine.
//!
//! Version 1 hashed every digest in key order: one SHA-256 over 32 bytes per resource, so a
//! one-route change to a 10,000-route config re-read 10,000 digests (about 0.3 ms, spent on every
//! manager and every agent for every revision). Version 2 rehashes the touched buckets (about 40
//! digests each at 10,000 resources) and the 8 KiB of bucket hashes.

use std::sync::Arc;

use sha2::{Digest, Sha256};

use crate::model::{Kind, ResourceKey};
use crate::snapshot::{Checksum, SharedResource};

/// How many buckets the resources are spread over. Part of the checksum's definition.
pub const BUCKETS: usize = 256;

/// The bucket of the resource with this kind and name: FNV-1a (64 bit) over the kind's name, a
/// zero byte and the resource's name, modulo [`BUCKETS`]. Part of the checksum's definition.
pub fn bucket_of(kind: Kind, name: &str) -> usize {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut hash = OFFSET;
    let bytes = kind.as_str().bytes().chain([0]).chain(name.bytes());
    for byte in bytes {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(PRIME);
    }
    (hash % BUCKETS as u64) as usize
}

/// One bucket: its resources in key order and their hash.
#[derive(Clone, Debug)]
struct Bucket {
    members: Arc<Vec<SharedResource>>,
    hash: [u8; 32],
}

impl Bucket {
    fn hashed(members: Vec<SharedResource>) -> Self {
        let mut hasher = Sha256::new();
        for member in &members {
            hasher.update(member.digest());
        }
        Self {
            members: Arc::new(members),
            hash: hasher.finalize().into(),
        }
    }
}

/// The buckets of one snapshot's content. Cloning copies [`BUCKETS`] pointers; a patch copies
/// the buckets it touches.
#[derive(Clone, Debug)]
pub(crate) struct ContentHash {
    buckets: Vec<Bucket>,
}

fn key_of(resource: &SharedResource) -> (Kind, &str) {
    (resource.kind(), resource.name.as_str())
}

impl ContentHash {
    /// The buckets of `resources`, which come in key order (so each bucket fills in key order).
    pub(crate) fn of<'a>(resources: impl Iterator<Item = &'a SharedResource>) -> Self {
        let mut members: Vec<Vec<SharedResource>> = vec![Vec::new(); BUCKETS];
        for resource in resources {
            let (kind, name) = key_of(resource);
            members[bucket_of(kind, name)].push(resource.clone());
        }
        Self {
            buckets: members.into_iter().map(Bucket::hashed).collect(),
        }
    }

    /// These buckets after `upserts` (added or replacing a resource with the same key) and
    /// `deletes` (keys present before). Only the touched buckets are copied and rehashed.
    pub(crate) fn patched(&self, upserts: &[SharedResource], deletes: &[ResourceKey]) -> Self {
        let mut touched: Vec<Option<Vec<SharedResource>>> = vec![None; BUCKETS];
        for resource in upserts {
            let key = key_of(resource);
            let index = bucket_of(key.0, key.1);
            let members =
                touched[index].get_or_insert_with(|| self.buckets[index].members.as_ref().clone());
            match members.binary_search_by(|m| key_of(m).cmp(&key)) {
                Ok(at) => members[at] = resource.clone(),
                Err(at) => members.insert(at, resource.clone()),
            }
        }
        for key in deletes {
            let key = (key.kind, key.name.as_str());
            let index = bucket_of(key.0, key.1);
            let members =
                touched[index].get_or_insert_with(|| self.buckets[index].members.as_ref().clone());
            if let Ok(at) = members.binary_search_by(|m| key_of(m).cmp(&key)) {
                members.remove(at);
            }
        }
        let mut buckets = self.buckets.clone();
        for (index, members) in touched.into_iter().enumerate() {
            if let Some(members) = members {
                buckets[index] = Bucket::hashed(members);
            }
        }
        Self { buckets }
    }

    /// The checksum: the SHA-256 of the bucket hashes in bucket order.
    pub(crate) fn checksum(&self) -> Checksum {
        let mut hasher = Sha256::new();
        for bucket in &self.buckets {
            hasher.update(bucket.hash);
        }
        Checksum(hasher.finalize().into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_follow_the_written_definition() {
        // FNV-1a of "Route\0ping", worked by hand from the constants, modulo 256.
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        for byte in b"Route\0ping" {
            hash ^= u64::from(*byte);
            hash = hash.wrapping_mul(0x100_0000_01b3);
        }
        assert_eq!(bucket_of(Kind::Route, "ping"), (hash % 256) as usize);
        assert_ne!(
            bucket_of(Kind::Route, "ping"),
            bucket_of(Kind::Service, "ping"),
            "the kind is part of the bucket (for these two names it lands elsewhere)"
        );
    }

    #[test]
    fn keys_spread_over_the_buckets() {
        let mut counts = vec![0usize; BUCKETS];
        for i in 0..10_000 {
            counts[bucket_of(Kind::Route, &format!("route-{i}"))] += 1;
        }
        // 39 per bucket on average; FNV spreads sequential names well enough that no bucket
        // holds more than three times that or stays empty.
        assert!(counts.iter().all(|&c| c > 0 && c < 120), "{counts:?}");
    }

    #[test]
    fn buckets_patched_through_many_deltas_hash_like_buckets_built_afresh() {
        use crate::snapshot::{Delta, Snapshot};
        let route = |name: &str, body: u64| {
            let yaml = format!(
                "kind: Route\nname: {name}\nspec:\n  matches: [{{ path: {{ exact: /{name} }} }}]\n  direct_response: {{ status: 200, body: b{body} }}\n"
            );
            crate::parse_bundle(&yaml, crate::bundle::Format::Yaml, "")
                .expect("the test's route parses")
                .remove(0)
        };
        // Seeded, so the sequence is the same on every run.
        let mut rng = fastrand::Rng::with_seed(0x2545_f491_4f6c_dd1d);
        let mut next = move |n: u64| rng.u64(..n);
        // 1,200 names over 256 buckets: most buckets hold several routes, so inserts land
        // before, between and after others.
        let names: Vec<String> = (0..1200).map(|i| format!("r{i}")).collect();
        let initial = names.iter().step_by(2).map(|n| route(n, 0));
        let mut snapshot = Snapshot::new(1, initial).expect("unique names");
        snapshot.prepare_for_changes();
        for step in 0..300u64 {
            let mut delta = Delta {
                from: snapshot.revision,
                to: snapshot.revision + 1,
                upserts: Vec::new(),
                deletes: Vec::new(),
            };
            let mut used = std::collections::BTreeSet::new();
            for _ in 0..1 + next(4) {
                let name = &names[next(names.len() as u64) as usize];
                if !used.insert(name.clone()) {
                    continue;
                }
                let key = ResourceKey::new(Kind::Route, name);
                if snapshot.get(&key).is_some() && next(2) == 0 {
                    delta.deletes.push(key);
                } else {
                    delta.upserts.push(route(name, step));
                }
            }
            snapshot = snapshot.apply(&delta).expect("the delta fits");
            let fresh = Snapshot::new(snapshot.revision, snapshot.resources().cloned())
                .expect("unique names");
            assert_eq!(
                snapshot.checksum(),
                fresh.checksum(),
                "step {step}: the buckets patched by {delta:?} differ from a fresh build"
            );
        }
    }
}
