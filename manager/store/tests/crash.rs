//! SIGKILL crash cycles: `store-crash-helper` runs a one-node Raft on the sled store and writes
//! in a loop, printing each acknowledged write; the test kills it at a random moment (sometimes
//! during startup and log replay, mostly during writes), then checks, every cycle:
//!
//! - the store opens cleanly (in this process, and again in the next helper run);
//! - every write acknowledged in any cycle so far is still in the log with its content, or is
//!   covered by the applied state machine and the stored snapshot if the log was purged;
//! - after replay, the node's revision is at least the newest acknowledged one, and the change
//!   set recorded for that revision is the acknowledged write (not some other one).
//!
//! Set `FLEETGATE_CRASH_SEED` to replay a run's kill timings.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use fleetgate_manager_store::{Command as StoreCommand, Store};
use openraft::storage::{RaftLogStorage, RaftStateMachine};
use openraft::{EntryPayload, RaftLogReader};

const CYCLES: u64 = 30;
/// How long a helper may take to open, elect itself and replay; far above the ~0.5 s it needs.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
const SIGKILL: i32 = 9;

#[derive(Clone, Copy, Debug)]
struct Ack {
    index: u64,
    revision: u64,
    seq: u64,
}

#[derive(Default)]
struct Run {
    acks: Vec<Ack>,
    check: Option<(u64, Option<u64>)>,
    ready_revision: Option<u64>,
}

fn field(line: &str, name: &str) -> u64 {
    line.split_whitespace()
        .find_map(|word| word.strip_prefix(name)?.strip_prefix('='))
        .and_then(|value| value.parse().ok())
        .unwrap_or_else(|| panic!("no {name}= in {line:?}"))
}

fn parse(lines: &[String]) -> Run {
    let mut run = Run::default();
    for line in lines {
        if line.starts_with("ack ") {
            run.acks.push(Ack {
                index: field(line, "index"),
                revision: field(line, "revision"),
                seq: field(line, "seq"),
            });
        } else if line.starts_with("ready ") {
            run.ready_revision = Some(field(line, "revision"));
        } else if line.starts_with("check ") {
            let time = (!line.ends_with("missing")).then(|| field(line, "time_ms"));
            run.check = Some((field(line, "revision"), time));
        }
    }
    run
}

fn spawn_helper(dir: &Path, logs: &Path, cycle: u64, check: Option<u64>) -> Child {
    let mut command = Command::new(env!("CARGO_BIN_EXE_store-crash-helper"));
    command
        .arg(dir)
        .args(["--seq-base", &(cycle * 1_000_000).to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(File::create(logs.join(format!("helper-{cycle}.stderr"))).unwrap());
    if let Some(revision) = check {
        command.args(["--check-revision", &revision.to_string()]);
    }
    command.spawn().unwrap()
}

/// Opens the store in this process and checks that every acknowledged write is durable.
/// Returns how far the log was purged (snapshots taken over).
fn check_durable(dir: &Path, acks: &[Ack]) -> u64 {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let mut store = Store::open(dir).unwrap_or_else(|e| panic!("store does not reopen: {e}"));
        let state = store.log.get_log_state().await.unwrap();
        let purged = state.last_purged_log_id.map_or(0, |l| l.index);
        let log: BTreeMap<u64, _> = store
            .log
            .try_get_log_entries(purged + 1..)
            .await
            .unwrap()
            .into_iter()
            .map(|e| (e.log_id.index, e))
            .collect();
        let (applied, _) = store.state_machine.applied_state().await.unwrap();
        let snapshot = store.state_machine.get_current_snapshot().await.unwrap();
        let snapshot_index = snapshot
            .and_then(|s| s.meta.last_log_id)
            .map_or(0, |l| l.index);
        if purged > 0 {
            assert!(
                snapshot_index >= purged,
                "log purged to {purged} but the snapshot only covers {snapshot_index}"
            );
            assert!(
                applied.map_or(0, |l| l.index) >= purged,
                "log purged to {purged} but the state machine was applied to {applied:?}"
            );
        }
        for ack in acks {
            if ack.index <= purged {
                continue; // covered by the checks above
            }
            let entry = log
                .get(&ack.index)
                .unwrap_or_else(|| panic!("acknowledged {ack:?} is not in the log"));
            match &entry.payload {
                EntryPayload::Normal(StoreCommand::Apply { time_ms, .. }) => {
                    assert_eq!(
                        *time_ms, ack.seq,
                        "log entry {} is another write",
                        ack.index
                    );
                }
                other => panic!("acknowledged {ack:?} is {other:?} in the log"),
            }
        }
        purged
    })
}

#[test]
fn acknowledged_writes_survive_sigkill_and_the_store_reopens_cleanly() {
    let seed = std::env::var("FLEETGATE_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| fastrand::u64(..));
    eprintln!("crash test seed: FLEETGATE_CRASH_SEED={seed}");
    let mut rng = fastrand::Rng::with_seed(seed);
    let data = tempfile::tempdir().unwrap();
    let logs = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let mut acked: Vec<Ack> = Vec::new();
    let mut early_kills = 0;
    let mut purged = 0;

    for cycle in 1..=CYCLES {
        let newest = acked.last().copied();
        let mut child = spawn_helper(data.path(), logs.path(), cycle, newest.map(|a| a.revision));
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        let pump = thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });

        // One cycle in five dies while opening, electing or replaying; the rest mid-write.
        let mut lines = Vec::new();
        let early = rng.u32(0..5) == 0;
        if early {
            early_kills += 1;
            thread::sleep(Duration::from_millis(rng.u64(0..300)));
        } else {
            let deadline = Instant::now() + READY_TIMEOUT;
            loop {
                let left = deadline.saturating_duration_since(Instant::now());
                match rx.recv_timeout(left) {
                    Ok(line) => {
                        let ready = line.starts_with("ready ");
                        lines.push(line);
                        if ready {
                            break;
                        }
                    }
                    Err(_) => {
                        let _ = child.kill();
                        let stderr = std::fs::read_to_string(
                            logs.path().join(format!("helper-{cycle}.stderr")),
                        )
                        .unwrap_or_default();
                        panic!("cycle {cycle}: helper never got ready; stderr:\n{stderr}");
                    }
                }
            }
            thread::sleep(Duration::from_millis(rng.u64(20..400)));
        }
        // Child::kill sends SIGKILL on Unix: no destructor, no flush, no goodbye.
        child.kill().unwrap();
        let status = child.wait().unwrap();
        pump.join().unwrap();
        lines.extend(rx.try_iter());
        let stderr = std::fs::read_to_string(logs.path().join(format!("helper-{cycle}.stderr")))
            .unwrap_or_default();
        assert_eq!(
            status.signal(),
            Some(SIGKILL),
            "cycle {cycle}: the helper stopped by itself ({status}); stderr:\n{stderr}"
        );

        let run = parse(&lines);
        if let (Some(newest), Some(ready)) = (newest, run.ready_revision) {
            assert!(
                ready >= newest.revision,
                "cycle {cycle}: recovered revision {ready} < acknowledged {newest:?}"
            );
        }
        if let Some((revision, time_ms)) = run.check {
            let newest = newest.unwrap();
            assert_eq!(revision, newest.revision);
            assert_eq!(
                time_ms,
                Some(newest.seq),
                "cycle {cycle}: revision {revision} is not the acknowledged write {newest:?}"
            );
        }
        for ack in &run.acks {
            if let Some(previous) = acked.last() {
                assert!(
                    ack.revision > previous.revision && ack.index > previous.index,
                    "cycle {cycle}: {ack:?} does not follow {previous:?}"
                );
            }
            acked.push(*ack);
        }
        purged = check_durable(data.path(), &acked);
        eprintln!(
            "cycle {cycle}: {} acks, ready={:?}, early={early}",
            run.acks.len(),
            run.ready_revision
        );
    }

    let elapsed = started.elapsed();
    eprintln!(
        "{CYCLES} SIGKILL cycles ({early_kills} during startup) in {:.1} s: {} acknowledged \
         writes, all durable; newest {:?}; log purged up to {purged} (snapshots)",
        elapsed.as_secs_f64(),
        acked.len(),
        acked.last()
    );
    assert!(
        acked.len() as u64 > CYCLES,
        "too few writes were acknowledged to prove anything: {}",
        acked.len()
    );
}
