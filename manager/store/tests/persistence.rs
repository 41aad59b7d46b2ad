//! The state machine on disk: what is applied survives a reopen (content, revision, history,
//! membership), the history bound holds on disk too, and installing a snapshot replaces the
//! state machine whole.

#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use fleetgate_manager_store::types::Entry;
use fleetgate_manager_store::{Command, CommandResult, ManagerNode, Store};
use fleetgate_shared::bundle::parse_document;
use fleetgate_shared::{Kind, Resource, ResourceKey};
use openraft::storage::RaftStateMachine;
use openraft::{EntryPayload, Membership, RaftSnapshotBuilder};

fn service(name: &str, port: u16) -> Resource {
    parse_document(serde_json::json!({
        "kind": "Service",
        "name": name,
        "spec": { "endpoints": [{ "address": format!("127.0.0.1:{port}") }] },
    }))
    .unwrap()
}

fn put(upserts: Vec<Resource>, deletes: Vec<ResourceKey>, time_ms: u64) -> Command {
    Command::Apply {
        author: "ops".into(),
        time_ms,
        expected_revision: None,
        upserts,
        deletes,
    }
}

fn entry(index: u64, payload: EntryPayload<fleetgate_manager_store::TypeConfig>) -> Entry {
    Entry {
        log_id: openraft::testing::log_id(1, 1, index),
        payload,
    }
}

fn normal(index: u64, command: Command) -> Entry {
    entry(index, EntryPayload::Normal(command))
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

async fn apply(store: &mut Store, entries: Vec<Entry>) -> Vec<CommandResult> {
    store.state_machine.apply(entries).await.unwrap()
}

/// Opens the store, waiting out the previous handle's lock: sled frees its file lock from a
/// background thread a moment after the last handle is dropped, so a reopen in the same
/// process can briefly find it still held.
fn open(dir: &Path) -> Store {
    open_waiting(|| Store::open(dir))
}

fn open_waiting(open: impl Fn() -> Result<Store, fleetgate_manager_store::DiskError>) -> Store {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match open() {
            Ok(store) => return store,
            Err(e)
                if e.to_string().contains("could not acquire lock")
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            Err(e) => panic!("store does not open: {e}"),
        }
    }
}

#[test]
fn applied_state_survives_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    runtime().block_on(async {
        tracing::info!("--- apply a membership change and four commands, one rejected");
        let (revision, checksum, history) = {
            let mut store = open(dir.path());
            let membership = Membership::new(
                vec![BTreeSet::from([1])],
                BTreeMap::from([(1, ManagerNode::default())]),
            );
            let results = apply(
                &mut store,
                vec![
                    entry(1, EntryPayload::Membership(membership)),
                    normal(2, put(vec![service("a", 1), service("b", 1)], vec![], 10)),
                    normal(3, put(vec![service("c", 1)], vec![], 20)),
                    normal(
                        4,
                        put(vec![], vec![ResourceKey::new(Kind::Service, "zz")], 30),
                    ),
                    normal(
                        5,
                        put(
                            vec![service("a", 2)],
                            vec![ResourceKey::new(Kind::Service, "b")],
                            40,
                        ),
                    ),
                ],
            )
            .await;
            assert!(matches!(results[3], CommandResult::Rejected(_)));
            let reader = store.reader();
            let (revision, checksum) = reader.revision();
            assert_eq!(revision, 3);
            (revision, checksum, reader.history(10))
        };

        tracing::info!("--- reopen: same content, history and applied state");
        let mut store = open(dir.path());
        let reader = store.reader();
        assert_eq!(reader.revision(), (revision, checksum));
        assert_eq!(reader.history(10), history);
        assert_eq!(reader.last_applied().unwrap().index, 5);
        let (last_applied, membership) = store.state_machine.applied_state().await.unwrap();
        assert_eq!(last_applied.unwrap().index, 5);
        assert_eq!(membership.log_id().unwrap().index, 1);
        let keys: Vec<String> = reader
            .snapshot()
            .resources()
            .map(|r| r.key().to_string())
            .collect();
        assert_eq!(keys, ["service/a", "service/c"]);
        let delta = reader.delta_since(1).unwrap();
        assert_eq!(delta.deletes, vec![ResourceKey::new(Kind::Service, "b")]);

        tracing::info!("--- keep applying after the reopen");
        let results = apply(
            &mut store,
            vec![normal(6, put(vec![service("d", 1)], vec![], 50))],
        )
        .await;
        assert!(matches!(
            results[0],
            CommandResult::Committed { revision: 4, .. }
        ));
    });
}

#[test]
fn the_history_bound_holds_on_disk() {
    let dir = tempfile::tempdir().unwrap();
    runtime().block_on(async {
        {
            let mut store = open_waiting(|| Store::open_with_history_limit(dir.path(), 3));
            let entries = (1..=10u16)
                .map(|i| {
                    normal(
                        u64::from(i),
                        put(vec![service("a", i)], vec![], u64::from(i)),
                    )
                })
                .collect();
            apply(&mut store, entries).await;
            assert_eq!(store.reader().oldest_revision(), 7);
        }
        let store = open_waiting(|| Store::open_with_history_limit(dir.path(), 3));
        let reader = store.reader();
        let revisions: Vec<u64> = reader.history(100).iter().map(|c| c.revision).collect();
        assert_eq!(revisions, [10, 9, 8]);
        assert_eq!(reader.oldest_revision(), 7);
        assert_eq!(
            reader
                .content_at(7)
                .unwrap()
                .get(&ResourceKey::new(Kind::Service, "a")),
            Some(&service("a", 7))
        );
    });
}

#[test]
fn installing_a_snapshot_replaces_the_state_machine_whole() {
    let leader_dir = tempfile::tempdir().unwrap();
    let follower_dir = tempfile::tempdir().unwrap();
    runtime().block_on(async {
        tracing::info!("--- the leader commits three revisions and builds a snapshot");
        let mut leader = open(leader_dir.path());
        apply(
            &mut leader,
            vec![
                normal(1, put(vec![service("a", 1)], vec![], 1)),
                normal(2, put(vec![service("b", 1)], vec![], 2)),
                normal(3, put(vec![service("a", 3)], vec![], 3)),
            ],
        )
        .await;
        let mut builder = leader.state_machine.get_snapshot_builder().await;
        let snapshot = builder.build_snapshot().await.unwrap();

        tracing::info!("--- the follower has diverging content of its own");
        {
            let mut follower = open(follower_dir.path());
            apply(
                &mut follower,
                vec![normal(
                    1,
                    put(vec![service("stale", 1), service("x", 1)], vec![], 9),
                )],
            )
            .await;
            let mut data = follower
                .state_machine
                .begin_receiving_snapshot()
                .await
                .unwrap();
            *data = *snapshot.snapshot.clone();
            follower
                .state_machine
                .install_snapshot(&snapshot.meta, data)
                .await
                .unwrap();
            let reader = follower.reader();
            assert_eq!(reader.revision(), leader.reader().revision());
            assert_eq!(reader.history(10), leader.reader().history(10));
        }

        tracing::info!("--- after a reopen, nothing of the old content is left");
        let mut follower = open(follower_dir.path());
        let reader = follower.reader();
        assert_eq!(reader.snapshot(), leader.reader().snapshot());
        assert_eq!(reader.revision(), leader.reader().revision());
        assert_eq!(reader.last_applied().unwrap().index, 3);
        let current = follower
            .state_machine
            .get_current_snapshot()
            .await
            .unwrap()
            .unwrap();
        assert_eq!(current.meta, snapshot.meta);
        assert_eq!(
            reader.content_at(1).unwrap().checksum(),
            leader.reader().content_at(1).unwrap().checksum()
        );
    });
}
