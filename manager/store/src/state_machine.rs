//! openraft's state machine (`RaftStateMachine`, `RaftSnapshotBuilder`) around the pure
//! [`ConfigState`], persisted on [`Disk`], and the read handle [`ConfigReader`].

use std::io::Cursor;
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use fleetgate_shared::{Checksum, Delta, Snapshot};
use openraft::storage::RaftStateMachine;
use openraft::{EntryPayload, OptionalSend, RaftSnapshotBuilder, StorageIOError};
use tokio::sync::watch;

use crate::agents::{AgentRecord, AgentRegistry};
use crate::disk::{AppliedMeta, Disk, DiskError, SnapshotMeta};
use crate::state::{ChangeSet, ConfigState, StateDoc};
use crate::types::{
    ApiToken, CommandResult, Entry, LogId, Reason, StorageError, StoredMembership, TypeConfig,
};

/// The applied state: the config plus what openraft needs to know about it.
#[derive(Debug)]
struct Applied {
    config: ConfigState,
    last_applied: Option<LogId>,
    last_membership: StoredMembership,
}

impl Applied {
    fn meta(&self) -> AppliedMeta {
        AppliedMeta {
            last_applied: self.last_applied,
            last_membership: self.last_membership.clone(),
            revision: self.config.revision(),
            tokens: self.config.tokens().clone(),
            agents: self.config.agents().clone(),
        }
    }
}

/// What the state machine, its snapshot builders and its readers share.
#[derive(Debug)]
struct Shared {
    applied: RwLock<Applied>,
    revision: watch::Sender<u64>,
    /// The index of the last applied log entry: changes with every apply, including those that
    /// change the agent registry but not the revision.
    applied_index: watch::Sender<u64>,
}

impl Shared {
    // A panic while holding the lock can only come from a bug in code that does not leave the
    // state half-changed (ConfigState::apply commits at its end), so a poisoned lock is used.
    fn read(&self) -> RwLockReadGuard<'_, Applied> {
        self.applied.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, Applied> {
        self.applied.write().unwrap_or_else(|e| e.into_inner())
    }
}

/// The config state machine of one node. openraft owns it; read through [`ConfigReader`].
#[derive(Debug)]
pub struct StateMachineStore {
    disk: Disk,
    shared: Arc<Shared>,
    history_limit: usize,
}

impl StateMachineStore {
    pub(crate) fn open(disk: Disk, history_limit: usize) -> Result<Self, DiskError> {
        let (meta, config) = disk.load_config(history_limit)?;
        let (revision, _) = watch::channel(config.revision());
        let (applied_index, _) = watch::channel(meta.last_applied.map_or(0, |l| l.index));
        let applied = Applied {
            config,
            last_applied: meta.last_applied,
            last_membership: meta.last_membership,
        };
        Ok(Self {
            disk,
            shared: Arc::new(Shared {
                applied: RwLock::new(applied),
                revision,
                applied_index,
            }),
            history_limit,
        })
    }

    /// A handle for reading the applied config, valid for as long as the process runs.
    pub fn reader(&self) -> ConfigReader {
        ConfigReader {
            shared: self.shared.clone(),
        }
    }
}

/// Read access to the applied config of one node: cheap to clone, never blocks on Raft.
///
/// Reads see the state applied on this node, which may trail the leader; linearizable reads are
/// the caller's business (openraft's `ensure_linearizable` before reading).
#[derive(Clone, Debug)]
pub struct ConfigReader {
    shared: Arc<Shared>,
}

impl ConfigReader {
    /// The current content at the current revision.
    pub fn snapshot(&self) -> Snapshot {
        self.shared.read().config.snapshot().clone()
    }

    /// The current revision and content checksum.
    pub fn revision(&self) -> (u64, Checksum) {
        let applied = self.shared.read();
        (applied.config.revision(), applied.config.checksum())
    }

    /// The minimal delta from `revision` to the current revision; `None` when `revision` is older
    /// than the kept history or newer than the current one.
    pub fn delta_since(&self, revision: u64) -> Option<Delta> {
        self.shared.read().config.delta_since(revision)
    }

    /// At most `limit` change sets, newest first.
    pub fn history(&self, limit: usize) -> Vec<ChangeSet> {
        self.shared.read().config.history(limit)
    }

    /// The change set that created `revision`, if kept.
    pub fn change_set(&self, revision: u64) -> Option<ChangeSet> {
        self.shared.read().config.change_set(revision).cloned()
    }

    /// The content at `revision`, if it is current or within the kept history.
    pub fn content_at(&self, revision: u64) -> Option<Snapshot> {
        self.shared.read().config.content_at(revision)
    }

    /// The oldest revision that `content_at` and `delta_since` can start from.
    pub fn oldest_revision(&self) -> u64 {
        self.shared.read().config.oldest_revision()
    }

    /// The API token whose secret hashes to `sha256` (lower-case hex), if any.
    pub fn token(&self, sha256: &str) -> Option<ApiToken> {
        self.shared
            .read()
            .config
            .tokens()
            .values()
            .find(|t| t.sha256 == sha256)
            .cloned()
    }

    /// The API tokens, by name.
    pub fn tokens(&self) -> Vec<ApiToken> {
        self.shared
            .read()
            .config
            .tokens()
            .values()
            .cloned()
            .collect()
    }

    /// The last log id applied to this state machine.
    pub fn last_applied(&self) -> Option<LogId> {
        self.shared.read().last_applied
    }

    /// Notified with the new revision after each apply that changed it (and after a snapshot
    /// install). For sync hubs that push deltas.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.shared.revision.subscribe()
    }

    /// Notified with the last applied log index after every apply: also after changes to the
    /// agent registry, which do not change the revision.
    pub fn subscribe_applied(&self) -> watch::Receiver<u64> {
        self.shared.applied_index.subscribe()
    }

    /// The join tokens and enrolled agents.
    pub fn agent_registry(&self) -> AgentRegistry {
        self.shared.read().config.agents().clone()
    }

    /// The agent `id` if it is enrolled and not revoked; the reason otherwise.
    pub fn active_agent(&self, id: &str) -> Result<AgentRecord, Reason> {
        self.shared.read().config.agents().active(id).cloned()
    }

    /// Whether a join token would admit one more agent now (see
    /// [`AgentRegistry::check_join_token`]).
    pub fn check_join_token(&self, id: &str, sha256: &str, time_ms: u64) -> Result<(), Reason> {
        self.shared
            .read()
            .config
            .agents()
            .check_join_token(id, sha256, time_ms)
    }
}

/// Builds a snapshot of the state machine as it is when `build_snapshot` runs.
#[derive(Debug)]
pub struct SnapshotBuilder {
    disk: Disk,
    shared: Arc<Shared>,
}

fn write_sm(e: DiskError) -> StorageError {
    StorageIOError::write_state_machine(&e).into()
}

fn read_snapshot(e: impl std::error::Error + 'static) -> StorageError {
    StorageIOError::read_snapshot(None, &e).into()
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<openraft::Snapshot<TypeConfig>, StorageError> {
        let (doc, last_applied, last_membership) = {
            let applied = self.shared.read();
            (
                applied.config.to_doc(),
                applied.last_applied,
                applied.last_membership.clone(),
            )
        };
        let write_snapshot =
            |e: DiskError| -> StorageError { StorageIOError::write_snapshot(None, &e).into() };
        let data = serde_json::to_vec(&doc).map_err(|source| {
            write_snapshot(DiskError::Encode {
                what: "snapshot",
                source,
            })
        })?;
        let seq = self.disk.next_snapshot_seq().map_err(write_snapshot)?;
        let snapshot_id = match &last_applied {
            Some(log_id) => format!("{}-{}-{seq}", log_id.leader_id.term, log_id.index),
            None => format!("none-{seq}"),
        };
        let meta = SnapshotMeta {
            last_log_id: last_applied,
            last_membership,
            snapshot_id,
        };
        self.disk
            .save_snapshot(&meta, &data)
            .map_err(write_snapshot)?;
        self.disk.flush().await.map_err(write_snapshot)?;
        tracing::info!(snapshot = %meta, bytes = data.len(), "built snapshot");
        Ok(openraft::Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        let applied = self.shared.read();
        Ok((applied.last_applied, applied.last_membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<CommandResult>, StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut results = Vec::new();
        let revision = {
            let mut applied = self.shared.write();
            let mut committed = Vec::new();
            for entry in entries {
                let result = match &entry.payload {
                    EntryPayload::Blank => applied.config.unchanged(),
                    EntryPayload::Normal(command) => {
                        let result = applied.config.apply(command);
                        if let CommandResult::Committed { .. } = result
                            && let Some(change) = applied.config.last_change()
                        {
                            committed.push(change.clone());
                        }
                        result
                    }
                    EntryPayload::Membership(membership) => {
                        applied.last_membership =
                            StoredMembership::new(Some(entry.log_id), membership.clone());
                        applied.config.unchanged()
                    }
                };
                if let CommandResult::Rejected(reason) = &result {
                    tracing::info!(log_id = %entry.log_id, %reason, "command rejected");
                }
                applied.last_applied = Some(entry.log_id);
                results.push(result);
            }
            // Not flushed: the log is durable and openraft re-applies committed entries after a
            // restart, so the stored state machine may trail, never lead or diverge.
            self.disk
                .save_applied(&applied.meta(), &committed, &applied.config)
                .map_err(write_sm)?;
            (
                applied.config.revision(),
                applied.last_applied.map_or(0, |l| l.index),
            )
        };
        let (revision, index) = revision;
        self.shared.applied_index.send_replace(index);
        self.shared.revision.send_if_modified(|current| {
            let changed = *current != revision;
            *current = revision;
            changed
        });
        Ok(results)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        SnapshotBuilder {
            disk: self.disk.clone(),
            shared: self.shared.clone(),
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        let data = snapshot.into_inner();
        let doc: StateDoc = serde_json::from_slice(&data).map_err(read_snapshot)?;
        let config = ConfigState::from_doc(doc, self.history_limit).map_err(read_snapshot)?;
        let applied = Applied {
            config,
            last_applied: meta.last_log_id,
            last_membership: meta.last_membership.clone(),
        };
        let install = |e: DiskError| -> StorageError {
            StorageIOError::write_snapshot(Some(meta.signature()), &e).into()
        };
        self.disk
            .replace_config(&applied.meta(), &applied.config.to_doc())
            .map_err(install)?;
        self.disk.save_snapshot(meta, &data).map_err(install)?;
        self.disk.flush().await.map_err(install)?;
        let revision = applied.config.revision();
        let index = applied.last_applied.map_or(0, |l| l.index);
        *self.shared.write() = applied;
        self.shared.revision.send_replace(revision);
        self.shared.applied_index.send_replace(index);
        tracing::info!(snapshot = %meta, revision, "installed snapshot");
        Ok(())
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<openraft::Snapshot<TypeConfig>>, StorageError> {
        let stored = self.disk.snapshot().map_err(read_snapshot)?;
        Ok(stored.map(|(meta, data)| openraft::Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        }))
    }
}
