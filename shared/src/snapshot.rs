//! Snapshots, deltas, content checksums and placement selection.
//!
//! A [`Snapshot`] is the whole config at one revision. A [`Delta`] carries what changed between
//! two revisions: the resources added or changed, and the keys removed, so its size follows the
//! change and not the config. [`diff`] and [`Snapshot::apply`] are exact inverses:
//! `a.apply(&diff(&a, &b)) == Ok(b)`.

use std::fmt;
use std::sync::{Arc, OnceLock};

use imbl::{OrdMap, OrdSet};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::checksum::ContentHash;
use crate::claims::RouteClaims;
use crate::model::{Kind, Labels, Resource, ResourceKey};

/// The config at one revision: at most one resource per key.
///
/// Resources are shared ([`SharedResource`]) between snapshots: applying a one-route delta to a
/// config of 10,000 routes, selecting it for an agent, or cloning it copies pointers, not
/// resources, and comparing two snapshots that share a resource is a pointer comparison. Each
/// resource's digest is computed once for its lifetime, and the content checksum of a snapshot
/// made by [`Snapshot::apply`] rehashes only the checksum buckets the delta touched
/// ([`crate::checksum`]), so a new revision costs hashing of what changed.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    /// The revision this content was committed at; 0 is the empty config before any commit.
    pub revision: u64,
    /// A persistent map: cloning a snapshot (to keep it as the base of the next change) is a
    /// pointer copy, a one-resource delta copies one path of tree nodes, and [`changes`]
    /// between related snapshots skips the nodes they share.
    resources: OrdMap<ResourceKey, SharedResource>,
    /// What is computed from the content on first use. Shared by every clone, so work done
    /// for one copy of a snapshot (the one an agent validated) serves the copy kept as the
    /// base of the next change. Content never changes after construction.
    derived: Arc<Derived>,
}

#[derive(Debug, Default)]
struct Derived {
    /// [`Snapshot::checksum`].
    checksum: OnceLock<Checksum>,
    /// The resources by checksum bucket ([`crate::checksum`]): built with the first checksum,
    /// then carried forward by [`Snapshot::apply`], which rehashes only the buckets a delta
    /// touches.
    content_hash: OnceLock<ContentHash>,
    /// The keys of the resources that have a placement, for [`Snapshot::select`]: built on
    /// first use, then carried forward by [`Snapshot::apply`].
    placed: OnceLock<OrdSet<ResourceKey>>,
    /// The routes by claim, for validating a change ([`crate::validate_change`]): built on
    /// first use, then carried forward by [`Snapshot::apply`], which patches what a delta
    /// touches.
    route_claims: OnceLock<RouteClaims>,
}

/// A resource as snapshots hold it: shared between every snapshot that contains it, with the
/// SHA-256 of its canonical JSON computed on first use.
#[derive(Clone, Debug)]
pub struct SharedResource(Arc<Stored>);

#[derive(Debug)]
struct Stored {
    resource: Resource,
    digest: OnceLock<[u8; 32]>,
}

impl SharedResource {
    fn new(resource: Resource) -> Self {
        Self(Arc::new(Stored {
            resource,
            digest: OnceLock::new(),
        }))
    }

    /// Whether `self` and `other` are the same shared resource (not only equal content): true
    /// for a resource a delta left untouched.
    pub fn same(&self, other: &SharedResource) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }

    /// The canonical encoding of the resource: compact JSON, struct fields in declaration
    /// order and every map ordered, so equal content gives equal bytes on every machine.
    pub fn canonical_json(&self) -> Vec<u8> {
        // Serializing plain data with string keys into a Vec cannot fail.
        serde_json::to_vec(&self.0.resource).unwrap_or_default()
    }

    /// The SHA-256 of [`Self::canonical_json`], computed once.
    pub fn digest(&self) -> &[u8; 32] {
        self.0
            .digest
            .get_or_init(|| Sha256::digest(self.canonical_json()).into())
    }
}

impl std::ops::Deref for SharedResource {
    type Target = Resource;

    fn deref(&self) -> &Resource {
        &self.0.resource
    }
}

impl PartialEq for SharedResource {
    fn eq(&self, other: &Self) -> bool {
        self.same(other) || self.0.resource == other.0.resource
    }
}

impl Eq for SharedResource {}

impl PartialEq for Snapshot {
    fn eq(&self, other: &Self) -> bool {
        self.revision == other.revision && self.resources == other.resources
    }
}

impl Eq for Snapshot {}

/// Two resources with the same kind and name in one snapshot.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0} is defined more than once")]
pub struct DuplicateResource(pub ResourceKey);

/// Why a delta could not be applied to a snapshot.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeltaError {
    #[error("delta starts at revision {delta_from}, but the snapshot is at revision {snapshot}")]
    BaseMismatch { snapshot: u64, delta_from: u64 },
    #[error("delta goes backwards, from revision {from} to {to}")]
    Backwards { from: u64, to: u64 },
    #[error("delta deletes {0}, which the snapshot does not have")]
    UnknownDelete(ResourceKey),
    #[error("delta both changes and deletes {0}")]
    Conflict(ResourceKey),
    #[error("delta changes {0} more than once")]
    Duplicate(ResourceKey),
}

impl Snapshot {
    /// A snapshot of `resources` at `revision`; fails on a duplicate key.
    pub fn new(
        revision: u64,
        resources: impl IntoIterator<Item = Resource>,
    ) -> Result<Self, DuplicateResource> {
        let mut map = OrdMap::new();
        for resource in resources {
            let key = resource.key();
            if map.contains_key(&key) {
                return Err(DuplicateResource(key));
            }
            map.insert(key, SharedResource::new(resource));
        }
        Ok(Self {
            revision,
            resources: map,
            derived: Arc::default(),
        })
    }

    /// The resources, in key order (kind, then name).
    pub fn resources(&self) -> impl ExactSizeIterator<Item = &Resource> {
        self.resources.values().map(|r| &**r)
    }

    /// The resources as shared handles, in key order: for callers that reuse work done for a
    /// resource an earlier snapshot shared ([`SharedResource::same`]).
    pub fn shared(&self) -> impl ExactSizeIterator<Item = &SharedResource> {
        self.resources.values()
    }

    /// The resource with `key`, if present.
    pub fn get(&self, key: &ResourceKey) -> Option<&Resource> {
        self.resources.get(key).map(|r| &**r)
    }

    /// The resources with their keys, in key order.
    pub fn entries(&self) -> impl ExactSizeIterator<Item = (&ResourceKey, &SharedResource)> {
        self.resources.iter()
    }

    /// The resources of one kind with their keys, in name order. Keys sort by kind first, so
    /// this visits only that kind's part of the map.
    pub fn of_kind(&self, kind: Kind) -> impl Iterator<Item = (&ResourceKey, &SharedResource)> {
        self.resources
            .range(ResourceKey::new(kind, "")..)
            .take_while(move |(key, _)| key.kind == kind)
    }

    /// The resource with `key`, with the snapshot's own copy of the key.
    pub(crate) fn get_entry(&self, key: &ResourceKey) -> Option<(&ResourceKey, &SharedResource)> {
        self.resources.get_key_value(key)
    }

    /// Whether the claims index exists yet (tests check that `apply` carries it).
    #[cfg(test)]
    pub(crate) fn has_route_claims(&self) -> bool {
        self.derived.route_claims.get().is_some()
    }

    /// Builds now what validating a change from this snapshot and checksumming the result
    /// need (the route claims index, the checksum buckets), so that the first change after a
    /// whole snapshot costs what later ones do; snapshots made from this one by
    /// [`Self::apply`] inherit both. Cheap when already built.
    pub fn prepare_for_changes(&self) {
        self.route_claims();
        self.checksum();
        self.placed();
    }

    /// The routes by claim, built on first use (see the field).
    pub(crate) fn route_claims(&self) -> &RouteClaims {
        self.derived
            .route_claims
            .get_or_init(|| RouteClaims::of(self.resources()))
    }

    /// Validates the content as one complete config (see [`crate::validate`]), without copying
    /// the resources.
    pub fn validate(&self) -> Result<(), Vec<crate::ValidationError>> {
        let refs: Vec<&Resource> = self.resources().collect();
        crate::validate::validate_refs(&refs)
    }

    /// The number of resources.
    pub fn len(&self) -> usize {
        self.resources.len()
    }

    /// Whether the snapshot has no resources.
    pub fn is_empty(&self) -> bool {
        self.resources.is_empty()
    }

    /// Consumes the snapshot, returning its resources in key order.
    pub fn into_resources(self) -> Vec<Resource> {
        self.resources
            .into_iter()
            .map(|(_, shared)| match Arc::try_unwrap(shared.0) {
                Ok(stored) => stored.resource,
                Err(shared) => shared.resource.clone(),
            })
            .collect()
    }

    /// The canonical encoding of the content (not the revision): each resource's
    /// [`SharedResource::canonical_json`], in key order, one per line.
    pub fn canonical_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for resource in self.resources.values() {
            out.extend_from_slice(&resource.canonical_json());
            out.push(b'\n');
        }
        out
    }

    /// The content checksum ([`crate::checksum`] has its definition), computed once. Equal
    /// content gives an equal checksum on every machine; the revision is not part of it.
    pub fn checksum(&self) -> Checksum {
        *self
            .derived
            .checksum
            .get_or_init(|| self.content_hash().checksum())
    }

    fn content_hash(&self) -> &ContentHash {
        self.derived
            .content_hash
            .get_or_init(|| ContentHash::of(self.resources.values()))
    }

    /// Applies `delta`, returning the snapshot at `delta.to`. The delta must start at this
    /// snapshot's revision, must not go backwards, and must not delete what is absent.
    pub fn apply(&self, delta: &Delta) -> Result<Snapshot, DeltaError> {
        if delta.from != self.revision {
            return Err(DeltaError::BaseMismatch {
                snapshot: self.revision,
                delta_from: delta.from,
            });
        }
        if delta.to < delta.from {
            return Err(DeltaError::Backwards {
                from: delta.from,
                to: delta.to,
            });
        }
        let mut next = self.resources.clone();
        // The claims index follows the delta when this snapshot has one; else the next builds
        // its own when first asked.
        let mut claims = self.derived.route_claims.get().cloned();
        let mut placed = self.derived.placed.get().cloned();
        let mut upserted = std::collections::BTreeSet::new();
        let mut shared = Vec::with_capacity(delta.upserts.len());
        for resource in &delta.upserts {
            let key = resource.key();
            if !upserted.insert(key.clone()) {
                return Err(DeltaError::Duplicate(key));
            }
            if let Some(placed) = &mut placed {
                if resource.placement.is_some() {
                    placed.insert(key.clone());
                } else {
                    placed.remove(&key);
                }
            }
            let new = SharedResource::new(resource.clone());
            let old = next.insert(key, new.clone());
            shared.push(new);
            if let Some(claims) = &mut claims {
                claims.replace(old.as_deref(), Some(resource));
            }
        }
        for key in &delta.deletes {
            if upserted.contains(key) {
                return Err(DeltaError::Conflict(key.clone()));
            }
            match next.remove(key) {
                None => return Err(DeltaError::UnknownDelete(key.clone())),
                Some(old) => {
                    if let Some(claims) = &mut claims {
                        claims.replace(Some(&old), None);
                    }
                    if let Some(placed) = &mut placed {
                        placed.remove(key);
                    }
                }
            }
        }
        // Unchanged content (a delta that only moves the revision) keeps its checksum; else
        // the checksum buckets follow the delta when this snapshot has them.
        let (checksum, content_hash) = if delta.is_empty() {
            (
                self.derived.checksum.clone(),
                self.derived.content_hash.clone(),
            )
        } else {
            let patched = self
                .derived
                .content_hash
                .get()
                .map(|hash| hash.patched(&shared, &delta.deletes));
            (
                OnceLock::new(),
                patched.map_or_else(OnceLock::new, OnceLock::from),
            )
        };
        Ok(Snapshot {
            revision: delta.to,
            resources: next,
            derived: Arc::new(Derived {
                checksum,
                content_hash,
                placed: placed.map_or_else(OnceLock::new, OnceLock::from),
                route_claims: claims.map_or_else(OnceLock::new, OnceLock::from),
            }),
        })
    }

    /// The next revision, with `resource` added or replacing the one with its key.
    pub fn with(&self, resource: Resource) -> Snapshot {
        let delta = Delta {
            from: self.revision,
            to: self.revision.saturating_add(1),
            upserts: vec![resource],
            deletes: Vec::new(),
        };
        // One upsert at this snapshot's own revision, forwards: nothing `apply` refuses.
        self.apply(&delta)
            .unwrap_or_else(|e| unreachable!("a one-upsert delta applies: {e}"))
    }

    /// The part of this snapshot placed on an agent with `agent_labels`: every resource without
    /// a placement, and every resource whose placement selects those labels. Visits only the
    /// resources that have a placement.
    pub fn select(&self, agent_labels: &Labels) -> Snapshot {
        let away: Vec<ResourceKey> = self
            .placed()
            .iter()
            .filter(|&key| {
                self.resources
                    .get(key)
                    .and_then(|r| r.placement.as_ref())
                    .is_some_and(|p| !p.selects(agent_labels))
            })
            .cloned()
            .collect();
        // The common case, nothing placed away from this agent: the same content, shared.
        if away.is_empty() {
            return self.clone();
        }
        let mut resources = self.resources.clone();
        for key in &away {
            resources.remove(key);
        }
        // The selection's checksum buckets follow from this snapshot's, minus what it left out.
        let content_hash = self
            .derived
            .content_hash
            .get()
            .map(|hash| hash.patched(&[], &away));
        Snapshot {
            revision: self.revision,
            resources,
            derived: Arc::new(Derived {
                content_hash: content_hash.map_or_else(OnceLock::new, OnceLock::from),
                ..Derived::default()
            }),
        }
    }

    /// The keys of the resources with a placement, built on first use (see the field).
    fn placed(&self) -> &OrdSet<ResourceKey> {
        self.derived.placed.get_or_init(|| {
            self.resources
                .iter()
                .filter(|(_, r)| r.placement.is_some())
                .map(|(key, _)| key.clone())
                .collect()
        })
    }
}

/// What changed from revision `from` to revision `to`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delta {
    pub from: u64,
    pub to: u64,
    /// Resources added or changed, in key order.
    pub upserts: Vec<Resource>,
    /// Keys removed, in key order.
    pub deletes: Vec<ResourceKey>,
}

impl Delta {
    /// Whether the delta changes no resource.
    pub fn is_empty(&self) -> bool {
        self.upserts.is_empty() && self.deletes.is_empty()
    }
}

/// One difference between two snapshots, found by [`changes`].
#[derive(Clone, Copy, Debug)]
pub enum Change<'a> {
    /// In the second snapshot only.
    Added(&'a ResourceKey, &'a SharedResource),
    /// In both, with different content.
    Changed(&'a ResourceKey, &'a SharedResource),
    /// In the first snapshot only.
    Removed(&'a ResourceKey),
}

impl<'a> Change<'a> {
    /// The key of the resource that changed.
    pub fn key(&self) -> &'a ResourceKey {
        match self {
            Change::Added(key, _) | Change::Changed(key, _) | Change::Removed(key) => key,
        }
    }
}

/// What differs between `a` and `b`, in key order. Both are persistent maps: the walk skips the
/// tree nodes they share, so two snapshots one delta apart compare in time proportional to the
/// delta (times the tree depth), and resources they share cost a pointer comparison.
pub fn changes<'a>(a: &'a Snapshot, b: &'a Snapshot) -> Vec<Change<'a>> {
    a.resources
        .diff(&b.resources)
        .map(|item| match item {
            imbl::ordmap::DiffItem::Add(key, resource) => Change::Added(key, resource),
            imbl::ordmap::DiffItem::Update { new, .. } => Change::Changed(new.0, new.1),
            imbl::ordmap::DiffItem::Remove(key, _) => Change::Removed(key),
        })
        .collect()
}

/// The delta that turns `a` into `b`.
pub fn diff(a: &Snapshot, b: &Snapshot) -> Delta {
    let mut upserts = Vec::new();
    let mut deletes = Vec::new();
    for change in changes(a, b) {
        match change {
            Change::Added(_, resource) | Change::Changed(_, resource) => {
                upserts.push(Resource::clone(resource));
            }
            Change::Removed(key) => deletes.push(key.clone()),
        }
    }
    Delta {
        from: a.revision,
        to: b.revision,
        upserts,
        deletes,
    }
}

/// A SHA-256 content checksum, shown as lower-case hex.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Checksum(pub [u8; 32]);

impl Checksum {
    /// The first 12 hex digits, for log lines and summaries.
    pub fn short(&self) -> String {
        hex::encode(&self.0[..6])
    }
}

impl fmt::Display for Checksum {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for Checksum {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Checksum({self})")
    }
}

/// A string that is not a 64-digit hex checksum.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not a checksum: expected 64 hex digits")]
pub struct BadChecksum(pub String);

impl std::str::FromStr for Checksum {
    type Err = BadChecksum;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out).map_err(|_| BadChecksum(s.to_owned()))?;
        Ok(Checksum(out))
    }
}

impl Serialize for Checksum {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Checksum {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// The wire form of a snapshot: its revision and its resources as a list.
#[derive(Serialize, Deserialize)]
struct SnapshotDoc {
    revision: u64,
    resources: Vec<Resource>,
}

impl Serialize for Snapshot {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut s = serializer.serialize_struct("Snapshot", 2)?;
        s.serialize_field("revision", &self.revision)?;
        s.serialize_field("resources", &self.resources().collect::<Vec<_>>())?;
        s.end()
    }
}

impl<'de> Deserialize<'de> for Snapshot {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let doc = SnapshotDoc::deserialize(deserializer)?;
        Snapshot::new(doc.revision, doc.resources).map_err(serde::de::Error::custom)
    }
}
