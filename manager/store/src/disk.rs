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
//!
//! Why [`Disk::flush`] does more than sled's `flush`: on Linux, sled 0.34 makes its log durable
//! with `sync_file_range(WAIT_BEFORE | WRITE | WAIT_AFTER)`, which writes the dirty pages to the
//! device but neither flushes the device's volatile write cache nor syncs the file's metadata
//! (its size, when the log grew), and it writes values too large for its log (over ~128 KiB:
//! big configs, snapshots) to files under `blobs/` that it never syncs at all. Its background
//! thread does `fsync` the log file every 500 ms. That is enough for a process crash (the page
//! cache survives it) but not for a power loss. So after sled's flush, [`Disk::flush`] calls
//! `fdatasync` on sled's log file `db` and on every blob file it has not synced before (and
//! `fsync` on `blobs/` when one appeared): an acknowledged write is then on stable storage.
//!
//! Why [`Disk::open`] deletes `snap.*.generating` files first: sled 0.34 writes its own page-table
//! snapshot to `snap.<lsn>.generating` and renames it to `snap.<lsn>` once complete, but when it
//! opens it reads the name that sorts last among *all* `snap.*` files, the unfinished one
//! included. A process killed while sled writes that file leaves a database that refuses to open
//! ("Read corrupted data at file offset None"; sled issue 1527). An unfinished file was never
//! used: sled removes the previous snapshot only after the rename, and replays its log from that
//! one. Found by the SIGKILL crash test (`tests/crash.rs`) in CI.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::fs::File;
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

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
    #[error("syncing the store's files: {0}")]
    Sync(#[from] std::io::Error),
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
    files: Arc<SledFiles>,
}

/// Set to `1`, [`Disk::flush`] relies on sled's own flush alone (durable against a process crash,
/// not a power loss; see the module documentation): for measuring what the extra syncs cost,
/// not for production.
pub const SKIP_FDATASYNC_ENV: &str = "FLEETGATE_STORE_SKIP_FDATASYNC";

/// sled's files that its own flush does not make durable on Linux.
#[derive(Debug)]
struct SledFiles {
    /// sled's log and page file, `<dir>/db`.
    log: File,
    blobs: PathBuf,
    /// The blob files already synced (and still there at the last look).
    synced_blobs: Mutex<BTreeSet<OsString>>,
    skip: bool,
}

impl SledFiles {
    fn open(dir: &Path) -> std::io::Result<Self> {
        Ok(Self {
            log: File::open(dir.join("db"))?,
            blobs: dir.join("blobs"),
            synced_blobs: Mutex::new(BTreeSet::new()),
            skip: std::env::var(SKIP_FDATASYNC_ENV).is_ok_and(|v| v == "1"),
        })
    }

    /// `fdatasync` of the log file and of the blob files not synced yet, then of the blob
    /// directory if a blob file appeared.
    fn sync(&self) -> std::io::Result<()> {
        if self.skip {
            return Ok(());
        }
        self.log.sync_data()?;
        let mut synced = self
            .synced_blobs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut present = BTreeSet::new();
        let mut appeared = false;
        let entries = match std::fs::read_dir(&self.blobs) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        };
        for entry in entries {
            let entry = entry?;
            let name = entry.file_name();
            if !synced.contains(&name) {
                match File::open(entry.path()) {
                    Ok(file) => file.sync_data()?,
                    // sled removed it meanwhile (garbage collection): nothing to keep.
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(e),
                }
                appeared = true;
            }
            present.insert(name);
        }
        if appeared {
            File::open(&self.blobs)?.sync_all()?;
        }
        *synced = present;
        Ok(())
    }
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
        remove_unfinished_sled_snapshots(dir)?;
        let db = sled::Config::new().path(dir).open()?;
        let disk = Self {
            log: db.open_tree("log")?,
            raft: db.open_tree("raft")?,
            config: db.open_tree("config")?,
            snapshot: db.open_tree("snapshot")?,
            files: Arc::new(SledFiles::open(dir)?),
            db,
        };
        if let Some(purged) = disk.last_purged()? {
            disk.remove_log_up_to(purged.index)?;
        }
        Ok(disk)
    }

    /// Makes every write so far durable: sled's flush, then `fdatasync` of its files (see the
    /// module documentation for why sled's flush alone is not enough).
    pub async fn flush(&self) -> Result<(), DiskError> {
        self.db.flush_async().await?;
        let files = self.files.clone();
        tokio::task::spawn_blocking(move || files.sync())
            .await
            .map_err(std::io::Error::other)??;
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

/// Deletes the page-table snapshots sled was still writing when its process died (see the module
/// documentation).
fn remove_unfinished_sled_snapshots(dir: &Path) -> Result<(), DiskError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e.into()),
    };
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with("snap.") && name.ends_with(".generating") {
            tracing::info!(
                file = %entry.path().display(),
                "removing a storage snapshot the previous process did not finish writing \
                 (it stopped abruptly); the store recovers from its previous snapshot and log"
            );
            std::fs::remove_file(entry.path())?;
        }
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    #[test]
    fn flush_syncs_the_blob_files_sled_leaves_unsynced() {
        let runtime = runtime();
        let dir = tempfile::tempdir().unwrap();
        let disk = Disk::open(dir.path()).unwrap();
        // Over sled's inline limit (a quarter of its 512 KiB segments): stored as a blob file.
        disk.log
            .insert(index_key(1), vec![7u8; 300 * 1024])
            .unwrap();
        runtime.block_on(disk.flush()).unwrap();
        let blobs = std::fs::read_dir(dir.path().join("blobs")).unwrap().count();
        assert!(blobs > 0, "sled kept a 300 KiB value inline");
        let synced = disk.files.synced_blobs.lock().unwrap().len();
        assert!(disk.files.skip || synced == blobs, "{synced} of {blobs}");
    }

    /// The state a SIGKILL during sled's snapshot write leaves: a torn `.generating` snapshot
    /// newer than anything else sled has. The store must open with every write intact.
    #[test]
    fn a_torn_sled_snapshot_does_not_stop_the_store_from_opening() {
        let runtime = runtime();
        let dir = tempfile::tempdir().unwrap();
        {
            let disk = Disk::open(dir.path()).unwrap();
            for index in 1..=200 {
                disk.log.insert(index_key(index), vec![1u8; 64]).unwrap();
            }
            runtime.block_on(disk.flush()).unwrap();
        }
        let torn = dir.path().join("snap.FFFFFFFFFFFFFFF0.generating");
        std::fs::write(
            &torn,
            [0x28, 0xb5, 0x2f, 0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 9, 9],
        )
        .unwrap();
        // sled alone refuses this directory: that is the bug being worked around.
        let refused = sled::Config::new().path(dir.path()).open();
        assert!(
            refused.is_err(),
            "sled opened a directory with a torn snapshot"
        );
        drop(refused);

        let disk = Disk::open(dir.path()).unwrap();
        assert!(!torn.exists());
        assert_eq!(disk.log.len(), 200);
        assert_eq!(
            disk.log.get(index_key(200)).unwrap().unwrap(),
            vec![1u8; 64]
        );
    }
}
