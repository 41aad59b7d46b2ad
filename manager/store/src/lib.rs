//! The manager's storage foundation: the replicated config store's types, state machine and
//! disk.
//!
//! - [`types`]: the Raft type config ([`TypeConfig`]): node ids, [`ManagerNode`] addresses, the
//!   [`Command`]s a log entry carries and the [`CommandResult`] applying one gives.
//! - [`state`]: [`ConfigState`], the pure state machine: resources by key, one global revision per
//!   committed change set, a bounded history of change sets (who, when, what, and what it
//!   replaced) for deltas, diff, audit and rollback. No IO, no clock.
//! - [`LogStore`] and [`StateMachineStore`]: openraft 0.9's `storage-v2` traits on sled, behind
//!   the narrow `disk` module. Log appends and votes are flushed before they are acknowledged.
//! - [`ConfigReader`]: read access to the applied config for the API and the sync hubs.
//!
//! Open a node's store with [`Store::open`] and hand its two halves to `openraft::Raft::new`.

pub mod agents;
mod disk;
mod log_store;
pub mod state;
mod state_machine;
pub mod types;

use std::path::Path;

pub use agents::{AgentRecord, AgentRegistry, JoinToken};
pub use disk::{DiskError, SKIP_FDATASYNC_ENV};
pub use log_store::LogStore;
pub use state::{ChangeSet, ConfigState, DEFAULT_HISTORY_LIMIT};
pub use state_machine::{ConfigReader, SnapshotBuilder, StateMachineStore};
pub use types::{
    ApiToken, Command, CommandResult, ManagerNode, NodeId, Reason, TokenRole, TypeConfig,
};

/// One node's opened store: the Raft log and the config state machine, sharing one sled database.
#[derive(Debug)]
pub struct Store {
    pub log: LogStore,
    pub state_machine: StateMachineStore,
}

impl Store {
    /// Opens (or creates) the store in `dir`, keeping [`DEFAULT_HISTORY_LIMIT`] change sets.
    pub fn open(dir: &Path) -> Result<Self, DiskError> {
        Self::open_with_history_limit(dir, DEFAULT_HISTORY_LIMIT)
    }

    /// Opens (or creates) the store in `dir`, keeping at most `history_limit` change sets.
    /// Refuses a stored state whose history and content disagree.
    pub fn open_with_history_limit(dir: &Path, history_limit: usize) -> Result<Self, DiskError> {
        let disk = disk::Disk::open(dir)?;
        let state_machine = StateMachineStore::open(disk.clone(), history_limit)?;
        let reader = state_machine.reader();
        let (revision, checksum) = reader.revision();
        tracing::info!(
            dir = %dir.display(),
            revision,
            checksum = %checksum.short(),
            last_applied = ?reader.last_applied(),
            "opened store"
        );
        Ok(Self {
            log: LogStore::new(disk),
            state_machine,
        })
    }

    /// A read handle on the applied config.
    pub fn reader(&self) -> ConfigReader {
        self.state_machine.reader()
    }
}
