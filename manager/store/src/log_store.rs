//! openraft's log storage (`RaftLogStorage`, `RaftLogReader`) on [`Disk`].
//!
//! Durability before acknowledgement: `append` tells openraft the entries are stored only after
//! they are flushed, and `save_vote` returns only after the vote is flushed.

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{OptionalSend, RaftLogReader, StorageIOError, Vote};

use crate::disk::{Disk, DiskError};
use crate::types::{Entry, LogId, NodeId, StorageError, TypeConfig};

/// The Raft log, vote and committed log id of one node. Cheap to clone; clones share the disk.
#[derive(Clone, Debug)]
pub struct LogStore {
    disk: Disk,
}

impl LogStore {
    pub(crate) fn new(disk: Disk) -> Self {
        Self { disk }
    }
}

fn read_logs(e: DiskError) -> StorageError {
    StorageIOError::read_logs(&e).into()
}

fn write_logs(e: DiskError) -> StorageError {
    StorageIOError::write_logs(&e).into()
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let start: Bound<u64> = range.start_bound().cloned();
        let end: Bound<u64> = range.end_bound().cloned();
        self.disk.log_entries(start, end).map_err(read_logs)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let last_purged_log_id = self.disk.last_purged().map_err(read_logs)?;
        let last_log_id = match self.disk.last_log_id().map_err(read_logs)? {
            Some(last) => Some(last),
            None => last_purged_log_id,
        };
        Ok(LogState {
            last_purged_log_id,
            last_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StorageError> {
        let write_vote = |e: DiskError| -> StorageError { StorageIOError::write_vote(&e).into() };
        self.disk.set_vote(vote).map_err(write_vote)?;
        self.disk.flush().await.map_err(write_vote)
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError> {
        self.disk
            .vote()
            .map_err(|e| StorageIOError::read_vote(&e).into())
    }

    // The committed log id is an optimisation (a restarted node re-applies up to it without
    // waiting for a leader), so it is written but not flushed: losing it loses nothing.
    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        self.disk
            .set_committed(committed.as_ref())
            .map_err(write_logs)
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        self.disk.committed().map_err(read_logs)
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<Entry> = entries.into_iter().collect();
        let written = match self.disk.append_log(&entries) {
            Ok(()) => self.disk.flush().await,
            Err(e) => Err(e),
        };
        match written {
            Ok(()) => {
                callback.log_io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                callback.log_io_completed(Err(std::io::Error::other(e.to_string())));
                Err(write_logs(e))
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        self.disk
            .truncate_log_from(log_id.index)
            .map_err(write_logs)?;
        self.disk.flush().await.map_err(write_logs)
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        // Purged entries are covered by a snapshot and by the applied state machine; make those
        // durable first, so a crash can never leave a hole between the state machine and the log.
        self.disk.flush().await.map_err(write_logs)?;
        self.disk.purge_log_up_to(&log_id).map_err(write_logs)?;
        self.disk.flush().await.map_err(write_logs)
    }
}
