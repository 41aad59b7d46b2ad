//! openraft's storage conformance suite, run against our sled store: every test gets a fresh
//! store in its own temporary directory.

#![allow(clippy::unwrap_used)]

use fleetgate_manager_store::types::StorageError;
use fleetgate_manager_store::{LogStore, StateMachineStore, Store, TypeConfig};
use openraft::StorageIOError;
use openraft::testing::{StoreBuilder, Suite};
use tempfile::TempDir;

struct SledStoreBuilder;

impl StoreBuilder<TypeConfig, LogStore, StateMachineStore, TempDir> for SledStoreBuilder {
    async fn build(&self) -> Result<(TempDir, LogStore, StateMachineStore), StorageError> {
        let dir = tempfile::tempdir().map_err(|e| StorageIOError::write(&e))?;
        let store = Store::open(dir.path()).map_err(|e| StorageIOError::write(&e))?;
        // The guard (the directory) outlives the store halves: Suite drops it last.
        Ok((dir, store.log, store.state_machine))
    }
}

#[test]
fn the_sled_store_passes_openraft_s_storage_suite() {
    Suite::test_all(SledStoreBuilder).unwrap();
}
