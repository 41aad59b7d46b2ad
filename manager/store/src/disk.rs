//! The narrow interface between the store and sled: the only file that names sled.
//!
//! One sled database per node holds four trees:
//!
//! | tree       | key                          | value                                      |
//! |------------|------------------------------|--------------------------------------------|
//! | `log`      | log index, 8 bytes big-endian | a Raft entry (JSON)                        |
//! | `raft`     | `vote`, `committed`, `purged` | a vote / log id (JSON)                     |
//! | `config`   | `meta`                       | last applied log id, membership, revision, API tokens |
//! |            | `r/<kind>/<name>`            | a resource (JSON, document form)           |
//! |            | `h/<revision, 8 bytes BE>`   | a change set (JSON)                        |
//! | `snapshot` | `meta`, `data`, `seq`        | the last built or installed Raft snapshot  |
//!
//! Every multi-key update of one tree is one sled batch, which sled recovers atomically. Writes
//! become durable at [`Disk::flush`], which syncs every tree (sled has one log for all trees);
//! sled's own background flush is not relied on. Swapping sled for another embedded store
//! (redb, fjall) means rewriting this file only.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::path::Path;

use fleetgate_shared::{Resource, ResourceKey, Snapshot};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::agents::AgentRegistry;
use crate::state::{ChangeSet, ConfigState, StateDoc, StateError};
use crate::types::{ApiToken, Entry, LogId, ManagerNode, NodeId, StoredMembership};

/// A storage failure: the disk, or data on it that does not decode or hang together.
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    #[error("storage engine: {0}")]
    Sled(#[from] sled::Error),
    #[error("stored {what} does not decode: {source}")]
    Decode {
        what: String,
        source: serde_json::Error,
    },
    #[error("{what} does not encode: {source}")]
    Encode {
        what: &'static str,
        source: serde_json::Error,
    },
    #[error("stored config state is inconsistent: {0}")]
    Inconsistent(#[from] StateError),
}

/// What the `config` tree records besides resources and history.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct AppliedMeta {
    pub last_applied: Option<LogId>,
    pub last_membership: StoredMembership,
    /// The revision of the stored content.
    pub revision: u64,
    /// The API tokens. Few and small, so they are rewritten with the metadata on every apply
    /// rather than given keys of their own. Defaulted for stores from before tokens.
    #[serde(default)]
    pub tokens: BTreeMap<String, ApiToken>,
    /// Join tokens and enrolled agents, stored the same way; defaulted for older stores.
    #[serde(default)]
    pub agents: AgentRegistry,
}

/// The stored Raft snapshot: openraft's metadata and our JSON bytes.
pub type SnapshotMeta = openraft::SnapshotMeta<NodeId, ManagerNode>;

/// One node's sled database, opened.
#[derive(Clone, Debug)]
pub struct Disk {
    db: sled::Db,
    log: sled::Tree,
    raft: sled::Tree,
    config: sled::Tree,
    snapshot: sled::Tree,
}

const VOTE: &[u8] = b"vote";
const COMMITTED: &[u8] = b"committed";
const PURGED: &[u8] = b"purged";
const META: &[u8] = b"meta";
const DATA: &[u8] = b"data";
const SEQ: &[u8] = b"seq";
const RESOURCE_PREFIX: &[u8] = b"r/";
const HISTORY_PREFIX: &[u8] = b"h/";

impl Disk {
    /// Opens (or creates) the database in `dir`, and finishes a log purge that a crash
    /// interrupted.
    pub fn open(dir: &Path) -> Result<Self, DiskError> {
        let db = sled::Config::new().path(dir).open()?;
        let disk = Self {
            log: db.open_tree("log")?,
            raft: db.open_tree("raft")?,
            config: db.open_tree("config")?,
            snapshot: db.open_tree("snapshot")?,
            db,
        };
        if let Some(purged) = disk.last_purged()? {
            disk.remove_log_up_to(purged.index)?;
        }
        Ok(disk)
    }

    /// Makes every write so far durable (fsync).
    pub async fn flush(&self) -> Result<(), DiskError> {
        self.db.flush_async().await?;
        Ok(())
    }

    // --- Raft log --------------------------------------------------------------------------

    /// Writes `entries` (not yet durable: see [`Disk::flush`]).
    pub fn append_log<'a>(
        &self,
        entries: impl IntoIterator<Item = &'a Entry>,
    ) -> Result<(), DiskError> {
        let mut batch = sled::Batch::default();
        for entry in entries {
            batch.insert(&index_key(entry.log_id.index), encode(entry, "log entry")?);
        }
        self.log.apply_batch(batch)?;
        Ok(())
    }

    /// The entries with indexes in `(start, end)`, in order.
    pub fn log_entries(&self, start: Bound<u64>, end: Bound<u64>) -> Result<Vec<Entry>, DiskError> {
        let range = (start.map(index_key), end.map(index_key));
        self.log
            .range(range)
            .map(|item| {
                let (_, value) = item?;
                decode(&value, "log entry")
            })
            .collect()
    }

    /// The newest entry's log id.
    pub fn last_log_id(&self) -> Result<Option<LogId>, DiskError> {
        match self.log.last()? {
            Some((_, value)) => Ok(Some(decode::<Entry>(&value, "log entry")?.log_id)),
            None => Ok(None),
        }
    }

    /// Removes the entries at `index` and after.
    pub fn truncate_log_from(&self, index: u64) -> Result<(), DiskError> {
        let mut batch = sled::Batch::default();
        for key in self.log.range(index_key(index)..).keys() {
            batch.remove(key?);
        }
        self.log.apply_batch(batch)?;
        Ok(())
    }

    /// Records `log_id` as purged, then removes the entries up to it. A crash in between leaves
    /// entries that [`Disk::open`] removes.
    pub fn purge_log_up_to(&self, log_id: &LogId) -> Result<(), DiskError> {
        self.raft.insert(PURGED, encode(log_id, "purged log id")?)?;
        self.remove_log_up_to(log_id.index)
    }

    fn remove_log_up_to(&self, index: u64) -> Result<(), DiskError> {
        let mut batch = sled::Batch::default();
        for key in self.log.range(..=index_key(index)).keys() {
            batch.remove(key?);
        }
        self.log.apply_batch(batch)?;
        Ok(())
    }

    pub fn last_purged(&self) -> Result<Option<LogId>, DiskError> {
        self.get(&self.raft, PURGED, "purged log id")
    }

    // --- vote and committed ----------------------------------------------------------------

    pub fn vote(&self) -> Result<Option<openraft::Vote<NodeId>>, DiskError> {
        self.get(&self.raft, VOTE, "vote")
    }

    /// Writes the vote (not yet durable: see [`Disk::flush`]).
    pub fn set_vote(&self, vote: &openraft::Vote<NodeId>) -> Result<(), DiskError> {
        self.raft.insert(VOTE, encode(vote, "vote")?)?;
        Ok(())
    }

    pub fn committed(&self) -> Result<Option<LogId>, DiskError> {
        self.get(&self.raft, COMMITTED, "committed log id")
    }

    pub fn set_committed(&self, committed: Option<&LogId>) -> Result<(), DiskError> {
        match committed {
            Some(log_id) => self
                .raft
                .insert(COMMITTED, encode(log_id, "committed log id")?)?,
            None => self.raft.remove(COMMITTED)?,
        };
        Ok(())
    }

    // --- the config state machine ----------------------------------------------------------

    /// Loads the applied state: its metadata and the config with its history.
    pub fn load_config(
        &self,
        history_limit: usize,
    ) -> Result<(AppliedMeta, ConfigState), DiskError> {
        let meta: AppliedMeta = self
            .get(&self.config, META, "config meta")?
            .unwrap_or_default();
        let resources = self
            .config
            .scan_prefix(RESOURCE_PREFIX)
            .values()
            .map(|value| decode::<Resource>(&value?, "resource"))
            .collect::<Result<Vec<_>, _>>()?;
        let history = self
            .config
            .scan_prefix(HISTORY_PREFIX)
            .values()
            .map(|value| decode::<ChangeSet>(&value?, "change set"))
            .collect::<Result<Vec<_>, _>>()?;
        let content = Snapshot::new(meta.revision, resources).map_err(|e| DiskError::Decode {
            what: "resources".into(),
            source: serde::de::Error::custom(e),
        })?;
        let tokens = meta.tokens.clone();
        let agents = meta.agents.clone();
        let state = ConfigState::from_doc(
            StateDoc {
                content,
                history,
                tokens,
                agents,
            },
            history_limit,
        )?;
        Ok((meta, state))
    }

    /// Records, in one atomic batch, the change sets committed since the last call (oldest
    /// first), the new metadata, and the eviction of change sets older than `state`'s history.
    pub fn save_applied(
        &self,
        meta: &AppliedMeta,
        changes: &[ChangeSet],
        state: &ConfigState,
    ) -> Result<(), DiskError> {
        let mut batch = sled::Batch::default();
        for change in changes {
            for resource in &change.delta.upserts {
                batch.insert(resource_key(&resource.key()), encode(resource, "resource")?);
            }
            for key in &change.delta.deletes {
                batch.remove(resource_key(key));
            }
            batch.insert(history_key(change.revision), encode(change, "change set")?);
        }
        if let Some(oldest_kept) = state.change_sets().next() {
            let evicted = self
                .config
                .range(history_key(0)..history_key(oldest_kept.revision))
                .keys();
            for key in evicted {
                batch.remove(key?);
            }
        }
        batch.insert(META, encode(meta, "config meta")?);
        self.config.apply_batch(batch)?;
        Ok(())
    }

    /// Replaces the whole config state machine, in one atomic batch.
    pub fn replace_config(&self, meta: &AppliedMeta, doc: &StateDoc) -> Result<(), DiskError> {
        let mut batch = sled::Batch::default();
        for key in self.config.iter().keys() {
            batch.remove(key?);
        }
        for resource in doc.content.resources() {
            batch.insert(resource_key(&resource.key()), encode(resource, "resource")?);
        }
        for change in &doc.history {
            batch.insert(history_key(change.revision), encode(change, "change set")?);
        }
        batch.insert(META, encode(meta, "config meta")?);
        self.config.apply_batch(batch)?;
        Ok(())
    }

    // --- Raft snapshots ---------------------------------------------------------------------

    /// The next snapshot sequence number; persisted so that ids stay unique across restarts.
    pub fn next_snapshot_seq(&self) -> Result<u64, DiskError> {
        let seq = self
            .get::<u64>(&self.snapshot, SEQ, "snapshot seq")?
            .unwrap_or(0)
            + 1;
        self.snapshot.insert(SEQ, encode(&seq, "snapshot seq")?)?;
        Ok(seq)
    }

    pub fn snapshot(&self) -> Result<Option<(SnapshotMeta, Vec<u8>)>, DiskError> {
        let meta = self.get::<SnapshotMeta>(&self.snapshot, META, "snapshot meta")?;
        let data = self.snapshot.get(DATA)?;
        Ok(match (meta, data) {
            (Some(meta), Some(data)) => Some((meta, data.to_vec())),
            _ => None,
        })
    }

    /// Stores a snapshot's metadata and data together, in one atomic batch.
    pub fn save_snapshot(&self, meta: &SnapshotMeta, data: &[u8]) -> Result<(), DiskError> {
        let mut batch = sled::Batch::default();
        batch.insert(META, encode(meta, "snapshot meta")?);
        batch.insert(DATA, data);
        self.snapshot.apply_batch(batch)?;
        Ok(())
    }

    fn get<T: DeserializeOwned>(
        &self,
        tree: &sled::Tree,
        key: &[u8],
        what: &str,
    ) -> Result<Option<T>, DiskError> {
        tree.get(key)?.map(|value| decode(&value, what)).transpose()
    }
}

fn index_key(index: u64) -> [u8; 8] {
    index.to_be_bytes()
}

fn history_key(revision: u64) -> Vec<u8> {
    [HISTORY_PREFIX, &revision.to_be_bytes()].concat()
}

/// `r/<kind slug>/<name>`: the slug has no `/`, so the key is unambiguous whatever the name.
fn resource_key(key: &ResourceKey) -> Vec<u8> {
    format!("r/{}/{}", key.kind.slug(), key.name).into_bytes()
}

fn encode<T: Serialize>(value: &T, what: &'static str) -> Result<Vec<u8>, DiskError> {
    serde_json::to_vec(value).map_err(|source| DiskError::Encode { what, source })
}

fn decode<T: DeserializeOwned>(bytes: &[u8], what: &str) -> Result<T, DiskError> {
    serde_json::from_slice(bytes).map_err(|source| DiskError::Decode {
        what: what.to_owned(),
        source,
    })
}
