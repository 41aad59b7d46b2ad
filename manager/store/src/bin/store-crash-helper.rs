//! Test helper for the SIGKILL crash test (`tests/crash.rs`); not a product binary.
//!
//! Opens the store in DIR, runs a one-node Raft on it (snapshots and log purges every few dozen
//! entries, so those paths are crossed too), and writes commands in a loop. Prints, one per line:
//!
//! - `check revision=R time_ms=T` (or `check revision=R missing`) for `--check-revision R`, once
//!   the node has replayed its log: what the change set that made revision R recorded;
//! - `ready revision=R index=I` once the node leads and has applied its whole log;
//! - `ack index=I revision=R seq=S` after each write is acknowledged (committed and applied).
//!
//! Usage: `store-crash-helper DIR --seq-base N [--check-revision R]`. It never stops by itself:
//! the test kills it.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use fleetgate_manager_store::types::NodeId;
use fleetgate_manager_store::{Command, CommandResult, ManagerNode, Store, TypeConfig};
use fleetgate_shared::bundle::parse_document;
use openraft::error::{InstallSnapshotError, RPCError, RaftError, Unreachable};
use openraft::network::RPCOption;
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{Config, Raft, RaftNetwork, RaftNetworkFactory, ServerState, SnapshotPolicy};

const NODE: NodeId = 1;
/// Every step that waits on Raft gives up after this; the test kills us long before.
const STEP_TIMEOUT: Duration = Duration::from_secs(20);

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> ExitCode {
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("store-crash-helper: {e}");
            ExitCode::from(2)
        }
    }
}

struct Args {
    dir: PathBuf,
    seq_base: u64,
    check_revision: Option<u64>,
}

fn parse_args() -> Result<Args, String> {
    let mut args = std::env::args().skip(1);
    let dir = args
        .next()
        .ok_or("usage: store-crash-helper DIR --seq-base N")?;
    let mut seq_base = None;
    let mut check_revision = None;
    while let Some(flag) = args.next() {
        let value = args.next().ok_or(format!("{flag} needs a value"))?;
        let number = value
            .parse::<u64>()
            .map_err(|e| format!("{flag} {value}: {e}"))?;
        match flag.as_str() {
            "--seq-base" => seq_base = Some(number),
            "--check-revision" => check_revision = Some(number),
            other => return Err(format!("unknown flag {other}")),
        }
    }
    Ok(Args {
        dir: dir.into(),
        seq_base: seq_base.ok_or("--seq-base is required")?,
        check_revision,
    })
}

async fn run() -> Result<(), String> {
    let args = parse_args()?;
    // The test opens the store in its own process between runs; sled frees that handle's file
    // lock from a background thread a moment after the handle is dropped, so wait it out.
    let deadline = std::time::Instant::now() + STEP_TIMEOUT;
    let store = loop {
        match Store::open(&args.dir) {
            Ok(store) => break store,
            Err(e)
                if e.to_string().contains("could not acquire lock")
                    && std::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => return Err(format!("open {}: {e}", args.dir.display())),
        }
    };
    let reader = store.reader();
    let config = Config {
        cluster_name: "crash-test".into(),
        heartbeat_interval: 50,
        election_timeout_min: 150,
        election_timeout_max: 300,
        snapshot_policy: SnapshotPolicy::LogsSinceLast(50),
        max_in_snapshot_log_to_keep: 10,
        purge_batch_size: 1,
        ..Config::default()
    }
    .validate()
    .map_err(|e| e.to_string())?;
    let raft = Raft::<TypeConfig>::new(
        NODE,
        Arc::new(config),
        NoNetwork,
        store.log,
        store.state_machine,
    )
    .await
    .map_err(|e| e.to_string())?;
    if !raft.is_initialized().await.map_err(|e| e.to_string())? {
        let members = BTreeMap::from([(NODE, ManagerNode::default())]);
        raft.initialize(members).await.map_err(|e| e.to_string())?;
    }
    let metrics = raft
        .wait(Some(STEP_TIMEOUT))
        .state(ServerState::Leader, "leader")
        .await
        .map_err(|e| e.to_string())?;
    raft.wait(Some(STEP_TIMEOUT))
        .applied_index_at_least(metrics.last_log_index, "replayed")
        .await
        .map_err(|e| e.to_string())?;

    if let Some(revision) = args.check_revision {
        match reader.change_set(revision) {
            Some(change) => println!("check revision={revision} time_ms={}", change.time_ms),
            None => println!("check revision={revision} missing"),
        }
    }
    let (revision, _) = reader.revision();
    let index = reader.last_applied().map_or(0, |l| l.index);
    println!("ready revision={revision} index={index}");

    for seq in args.seq_base.. {
        let response = raft
            .client_write(command(seq)?)
            .await
            .map_err(|e| e.to_string())?;
        match response.data {
            CommandResult::Committed { revision, .. } => {
                println!(
                    "ack index={} revision={revision} seq={seq}",
                    response.log_id.index
                );
            }
            other => return Err(format!("write {seq} was not committed: {other:?}")),
        }
    }
    Ok(())
}

/// Each write changes one of eight services, and its `time_ms` is its sequence number, so the
/// test can tell which write made a revision.
fn command(seq: u64) -> Result<Command, String> {
    let resource = parse_document(serde_json::json!({
        "kind": "Service",
        "name": format!("svc-{}", seq % 8),
        "labels": { "seq": seq.to_string() },
        "spec": { "endpoints": [{ "address": format!("127.0.0.1:{}", 1 + seq % 60_000) }] },
    }))
    .map_err(|e| e.to_string())?;
    Ok(Command::Apply {
        author: "crash-test".into(),
        time_ms: seq,
        expected_revision: None,
        upserts: vec![resource],
        deletes: Vec::new(),
    })
}

/// A one-node cluster never sends an RPC; if it ever did, the peer is unreachable.
struct NoNetwork;

struct NoPeer;

fn unreachable() -> Unreachable {
    Unreachable::new(&std::io::Error::other(
        "single-node test cluster has no peers",
    ))
}

impl RaftNetworkFactory<TypeConfig> for NoNetwork {
    type Network = NoPeer;

    async fn new_client(&mut self, _target: NodeId, _node: &ManagerNode) -> NoPeer {
        NoPeer
    }
}

impl RaftNetwork<TypeConfig> for NoPeer {
    async fn append_entries(
        &mut self,
        _rpc: AppendEntriesRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, ManagerNode, RaftError<NodeId>>>
    {
        Err(unreachable().into())
    }

    async fn install_snapshot(
        &mut self,
        _rpc: InstallSnapshotRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, ManagerNode, RaftError<NodeId, InstallSnapshotError>>,
    > {
        Err(unreachable().into())
    }

    async fn vote(
        &mut self,
        _rpc: VoteRequest<NodeId>,
        _option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, ManagerNode, RaftError<NodeId>>> {
        Err(unreachable().into())
    }
}
