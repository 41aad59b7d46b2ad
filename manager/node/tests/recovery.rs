//! Manager nodes that crash and come back, as real processes on ephemeral loopback ports: a
//! follower that missed many writes catches up from the leader's log, a follower SIGKILLed again
//! and again under a write load ends with exactly its peers' content, and a linearizable read
//! through a follower never misses a write that was just acknowledged.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::{Api, Node, READY_TIMEOUT, json, three_nodes, three_nodes_with};
use fleetgate_manager::api::ClusterStatus;
use http::{Method, StatusCode};
use serde_json::Value;

/// Writes a follower misses in the log-replay story: far fewer than the production snapshot
/// interval (1000 entries), so the leader still holds every one of them in its log.
const MISSED_WRITES: u64 = 50;
/// SIGKILL rounds in the crash-under-load story.
const KILL_ROUNDS: usize = 3;
/// Writes acknowledged while the killed follower is down, per round.
const WRITES_WHILE_DOWN: usize = 15;
/// Writes and reads in the linearizable-read story.
const LINEARIZABLE_ROUNDS: u16 = 20;

/// Waits until every node in `nodes` answers with the same revision, checksum and applied Raft
/// index (the cluster is quiet and converged); returns their common status.
async fn wait_converged(api: &Api, nodes: &[&Node], token: &str) -> ClusterStatus {
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        let mut statuses = Vec::new();
        for node in nodes {
            statuses.push(api.status(&node.api, token).await);
        }
        let seen: Vec<_> = statuses
            .iter()
            .map(|s| {
                s.as_ref()
                    .map(|s| (s.revision, s.checksum.clone(), s.applied_index))
            })
            .collect();
        if seen.iter().all(|s| s.is_some() && *s == seen[0]) {
            return statuses.swap_remove(0).unwrap();
        }
        assert!(
            Instant::now() < deadline,
            "the nodes never converged: (revision, checksum, applied index) per node: {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Revision → the names of the resources its change set upserted, from `GET /api/v1/revisions`.
async fn history(api: &Api, node: &Node, token: &str) -> BTreeMap<u64, Vec<String>> {
    let (status, page) = api
        .get_json(&node.api, "/api/v1/revisions?limit=1000", token)
        .await;
    assert_eq!(status, StatusCode::OK);
    page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|item| {
            let names = item["delta"]["upserts"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| r["name"].as_str().unwrap().to_owned())
                .collect();
            (item["revision"].as_u64().unwrap(), names)
        })
        .collect()
}

/// Asserts that no process any of `nodes` started logged a panic.
fn assert_no_panic(nodes: &[Node]) {
    for node in nodes {
        let logs = node.all_logs();
        let panics: Vec<&str> = logs.lines().filter(|l| l.contains("panicked")).collect();
        assert!(panics.is_empty(), "node {} panicked: {panics:#?}", node.id);
    }
}

/// A follower is SIGKILLed, the cluster commits 50 more change sets without it, and it is
/// restarted with `serve`. Under the production snapshot policy (a snapshot every 1000 entries,
/// 1000 log entries kept behind it) nothing was snapshotted or purged, so the leader must bring
/// it up to date by replaying its log through AppendEntries: the restarted node must end with the
/// leader's revision, checksum, applied index and history, and must not have installed a
/// snapshot (its store logs `installed snapshot` at info when it does; compare
/// `cluster.rs::a_node_down_for_many_writes_catches_up_by_snapshot`, where the knob forces one).
#[tokio::test]
async fn a_node_restarted_after_missing_many_writes_catches_up_by_log_replay() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut nodes, token) = three_nodes_with(tmp.path(), None).await;
    let api = Api::of(&nodes[0]);
    let leader = api.leader(&nodes[0].api, &token).await;
    let writer = nodes.iter().position(|n| n.id == leader).unwrap();
    let down = nodes.iter().position(|n| n.id != leader).unwrap();
    let start = api.status(&nodes[writer].api, &token).await.unwrap();

    tracing::info!(
        "--- a follower is SIGKILLed; {MISSED_WRITES} change sets are committed without it"
    );
    nodes[down].kill();
    let deadline = Instant::now() + READY_TIMEOUT;
    let mut last = 0;
    for i in 0..MISSED_WRITES {
        last = api
            .put_service_retrying(&nodes[writer].api, &token, &format!("s-{i}"), deadline)
            .await
            .unwrap();
    }
    assert_eq!(last, start.revision + MISSED_WRITES);

    tracing::info!("--- it restarts and converges with the leader");
    let log = nodes[down].serve();
    let converged = wait_converged(&api, &[&nodes[writer], &nodes[down]], &token).await;
    assert_eq!(converged.revision, last);
    // The whole history agrees too (revision → what it changed), and holds every missed write.
    let on_leader = history(&api, &nodes[writer], &token).await;
    let on_restarted = history(&api, &nodes[down], &token).await;
    assert_eq!(on_restarted, on_leader);
    for i in 0..MISSED_WRITES {
        let revision = start.revision + i + 1;
        assert_eq!(on_restarted[&revision], vec![format!("s-{i}")]);
    }

    tracing::info!("--- by log replay: no snapshot was built or installed");
    let log = std::fs::read_to_string(log).unwrap();
    // The log is not silent (info lines reach it), so the absence below means something.
    assert!(log.contains("manager node started"), "{log}");
    assert!(
        !log.contains("installed snapshot"),
        "the restarted node caught up by snapshot install, not by log replay:\n{log}"
    );
    for node in &nodes {
        assert!(
            !node.all_logs().contains("built snapshot"),
            "node {} built a snapshot",
            node.id
        );
    }
    assert_no_panic(&nodes);
}

/// A writer keeps committing services through one node while, three times, a follower (never
/// the writer's node, never the leader) is SIGKILLed in the middle of the stream, stays down
/// for a few more acknowledged writes, and is restarted. A SIGKILL can land anywhere: in a sled
/// flush, between a log append and its apply, halfway through an AppendEntries. At the end the
/// three nodes must report the same revision, checksum and applied index; every write that was
/// acknowledged with 200 must be readable on every node, and each node's history must name it
/// under the very revision the 200 answer reported.
#[tokio::test]
async fn sigkill_a_follower_during_writes_then_its_state_checksum_equals_its_peers() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut nodes, token) = three_nodes_with(tmp.path(), None).await;
    let api = Api::of(&nodes[0]);
    let ca = common::ca_of(&nodes[0]);
    let leader = api.leader(&nodes[0].api, &token).await;
    // The writer goes through a follower, so its writes are also forwarded to the leader.
    let writer_node = nodes.iter().position(|n| n.id != leader).unwrap();

    tracing::info!(
        "--- a writer starts committing services through node {}",
        nodes[writer_node].id
    );
    let acked_count = Arc::new(AtomicUsize::new(0));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let writer = {
        let (addr, token, count) = (
            nodes[writer_node].api.clone(),
            token.clone(),
            acked_count.clone(),
        );
        tokio::spawn(async move {
            let api = Api::new(&ca);
            let mut acked = Vec::new();
            for i in 0.. {
                if *stop_rx.borrow() {
                    break;
                }
                let name = format!("w-{i}");
                // Killing a follower never costs the quorum: every write must go through,
                // at worst after a retry.
                let deadline = Instant::now() + Duration::from_secs(15);
                let revision = api
                    .put_service_retrying(&addr, &token, &name, deadline)
                    .await
                    .unwrap_or_else(|| panic!("{name} was not acknowledged within 15 s"));
                acked.push((name, revision));
                count.store(acked.len(), Ordering::SeqCst);
            }
            acked
        })
    };
    let wait_for_acks = |at_least: usize| {
        let count = acked_count.clone();
        async move {
            let deadline = Instant::now() + READY_TIMEOUT;
            while count.load(Ordering::SeqCst) < at_least {
                assert!(
                    Instant::now() < deadline,
                    "the writer stalled before {at_least} acks"
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    };

    for round in 0..KILL_ROUNDS {
        // Some writes first, and a different offset each round, so that the kill lands at
        // varying points of a write.
        let before = acked_count.load(Ordering::SeqCst);
        wait_for_acks(before + 5).await;
        tokio::time::sleep(Duration::from_millis(37 * (round as u64 + 1))).await;
        let status = api.wait_leader(&nodes[writer_node].api, &token, None).await;
        let victim = (0..nodes.len())
            .find(|i| *i != writer_node && Some(nodes[*i].id) != status.leader)
            .unwrap();
        let at_kill = acked_count.load(Ordering::SeqCst);
        tracing::info!(
            round,
            victim = nodes[victim].id,
            at_kill,
            "--- SIGKILL a follower mid-stream"
        );
        nodes[victim].kill();
        wait_for_acks(at_kill + WRITES_WHILE_DOWN).await;

        tracing::info!(
            round,
            "--- restart it; it catches up while the writes go on"
        );
        nodes[victim].serve();
        let target = api
            .status(&nodes[writer_node].api, &token)
            .await
            .unwrap()
            .revision;
        api.wait_revision(&nodes[victim].api, &token, target).await;
    }

    tracing::info!("--- stop the writer; all three nodes converge");
    wait_for_acks(acked_count.load(Ordering::SeqCst) + 5).await;
    stop_tx.send(true).unwrap();
    let acked = writer.await.unwrap();
    let last = acked.iter().map(|(_, r)| *r).max().unwrap();
    let all: Vec<&Node> = nodes.iter().collect();
    let converged = wait_converged(&api, &all, &token).await;
    // Nothing but the writer wrote, and it stopped after its last answer.
    assert_eq!(converged.revision, last);
    tracing::info!(
        acked = acked.len(),
        revision = converged.revision,
        "--- every acknowledged write is on every node, under its revision"
    );
    for node in &nodes {
        let history = history(&api, node, &token).await;
        for (name, revision) in &acked {
            let (status, body) = api
                .get_json(&node.api, &format!("/api/v1/services/{name}"), &token)
                .await;
            assert_eq!(status, StatusCode::OK, "node {} lost {name}", node.id);
            assert_eq!(body["name"], name.as_str());
            assert_eq!(
                history.get(revision),
                Some(&vec![name.clone()]),
                "node {}: revision {revision} is not the write of {name}",
                node.id
            );
        }
    }
    assert_no_panic(&nodes);
}

/// The endpoint address of a service as a follower returns it.
fn endpoint_of(body: &Value) -> &str {
    body["spec"]["endpoints"][0]["address"]
        .as_str()
        .unwrap_or("")
}

/// Twenty times: a change to one service is acknowledged by the leader, and at once a
/// `?consistent=true` read of it through a follower must return the new value (and an ETag at
/// least the acknowledged revision). A local read through the other follower at the same moment
/// may still be stale; the test counts those, to show the option is what makes the difference.
#[tokio::test]
async fn linearizable_read_on_a_follower_sees_the_write_just_acknowledged() {
    let tmp = tempfile::tempdir().unwrap();
    let (nodes, token) = three_nodes(tmp.path()).await;
    let api = Api::of(&nodes[0]);
    let leader = api.leader(&nodes[0].api, &token).await;
    let leader_node = nodes.iter().find(|n| n.id == leader).unwrap();
    let followers: Vec<&Node> = nodes.iter().filter(|n| n.id != leader).collect();

    let mut stale_local_reads = 0;
    for i in 0..LINEARIZABLE_ROUNDS {
        let address = format!("10.0.0.1:{}", 9000 + i);
        let body =
            format!("kind: Service\nname: lin\nspec:\n  endpoints:\n    - address: {address}\n");
        let reply = api
            .call(
                Method::PUT,
                &leader_node.api,
                "/api/v1/services/lin",
                Some(&token),
                None,
                &body,
            )
            .await
            .unwrap();
        assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
        let revision = json(&reply)["revision"].as_u64().unwrap();

        let reply = api
            .call(
                Method::GET,
                &followers[0].api,
                "/api/v1/services/lin?consistent=true",
                Some(&token),
                None,
                "",
            )
            .await
            .unwrap();
        assert_eq!(reply.status, StatusCode::OK, "round {i}: {:?}", reply.body);
        assert_eq!(
            endpoint_of(&json(&reply)),
            address,
            "round {i}: a linearizable read missed revision {revision}"
        );
        let etag: u64 = reply.headers[http::header::ETAG]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!(etag >= revision, "round {i}: ETag {etag} < {revision}");

        let (_, local) = api
            .get_json(&followers[1].api, "/api/v1/services/lin", &token)
            .await;
        if endpoint_of(&local) != address {
            stale_local_reads += 1;
        }
    }
    tracing::info!(
        stale_local_reads,
        "--- local (non-linearizable) follower reads that were stale"
    );
    eprintln!(
        "{stale_local_reads} of {LINEARIZABLE_ROUNDS} local follower reads were stale; \
         no linearizable one was"
    );
    assert_no_panic(&nodes);
}
