//! Manager nodes as real processes: `init`, `serve`, `join`, the admin API, mutual TLS between
//! managers, write forwarding, leader failover and optimistic concurrency.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeSet;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{
    Api, BIN, READY_TIMEOUT, SNAPSHOT_EVERY, ca_of, json, service, single_node, three_nodes,
};
use fleetgate_manager::tls::NodeTls;
use fleetgate_manager::transport::{GrpcTransport, RaftTransport, RpcKind, TransportError};
use http::{Method, StatusCode};

#[tokio::test]
async fn single_node_init_apply_get_history_rollback() {
    tracing::info!("--- init and serve one node");
    let tmp = tempfile::tempdir().unwrap();
    let (node, token, _) = single_node(tmp.path(), &[]).await;
    let api = Api::of(&node);
    let token = token.as_str();

    tracing::info!("--- apply a bundle");
    let bundle = format!("{}---\n{}", service("a"), service("b"));
    let reply = api
        .call(
            Method::POST,
            &node.api,
            "/api/v1/apply",
            Some(token),
            None,
            &bundle,
        )
        .await
        .unwrap();
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    assert_eq!(json(&reply)["revision"], 1);
    let rev1_checksum = json(&reply)["checksum"].clone();

    let (status, body) = api.get_json(&node.api, "/api/v1/services/a", token).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["name"], "a");
    let (_, body) = api.get_json(&node.api, "/api/v1/services", token).await;
    assert_eq!(body["items"].as_array().unwrap().len(), 2);

    tracing::info!("--- dry run: a diff, nothing committed");
    let reply = api
        .call(
            Method::POST,
            &node.api,
            "/api/v1/apply?dry_run=true",
            Some(token),
            None,
            &service("c"),
        )
        .await
        .unwrap();
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(json(&reply)["diff"]["upserts"][0]["name"], "c");
    let (status, _) = api.get_json(&node.api, "/api/v1/services/c", token).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    tracing::info!("--- delete, history with the author, rollback");
    let reply = api
        .call(
            Method::DELETE,
            &node.api,
            "/api/v1/services/b",
            Some(token),
            None,
            "",
        )
        .await
        .unwrap();
    assert_eq!(json(&reply)["revision"], 2);
    let (_, history) = api.get_json(&node.api, "/api/v1/revisions", token).await;
    assert_eq!(history["revision"], 2);
    assert_eq!(history["items"][0]["author"], "bootstrap-admin");
    let (status, rev) = api.get_json(&node.api, "/api/v1/revisions/1", token).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(rev["delta"]["upserts"].as_array().unwrap().len(), 2);

    let reply = api
        .call(
            Method::POST,
            &node.api,
            "/api/v1/rollback",
            Some(token),
            None,
            r#"{"to": 1}"#,
        )
        .await
        .unwrap();
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(json(&reply)["revision"], 3);
    assert_eq!(json(&reply)["checksum"], rev1_checksum);
    let (status, _) = api.get_json(&node.api, "/api/v1/services/b", token).await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn error_paths_400_401_403_404_409() {
    let tmp = tempfile::tempdir().unwrap();
    let (node, admin, extra) =
        single_node(tmp.path(), &[("alice", "viewer"), ("bob", "editor")]).await;
    let (viewer, editor) = (extra[0].as_str(), extra[1].as_str());
    let api = Api::of(&node);

    tracing::info!("--- 401: no token, unknown token");
    let reply = api
        .call(Method::GET, &node.api, "/api/v1/services", None, None, "")
        .await
        .unwrap();
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    let reply = api
        .call(
            Method::GET,
            &node.api,
            "/api/v1/services",
            Some("fgt_0000"),
            None,
            "",
        )
        .await
        .unwrap();
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);

    tracing::info!("--- 403: a viewer writes; an editor changes the cluster");
    let reply = api
        .call(
            Method::GET,
            &node.api,
            "/api/v1/services",
            Some(viewer),
            None,
            "",
        )
        .await
        .unwrap();
    assert_eq!(reply.status, StatusCode::OK);
    let reply = api
        .call(
            Method::PUT,
            &node.api,
            "/api/v1/services/a",
            Some(viewer),
            None,
            &service("a"),
        )
        .await
        .unwrap();
    assert_eq!(reply.status, StatusCode::FORBIDDEN);
    let reply = api
        .call(
            Method::POST,
            &node.api,
            "/api/v1/cluster/members",
            Some(editor),
            None,
            r#"{"node_id": 9, "raft_addr": "x:1", "api_addr": "x:2", "sync_addr": "x:3"}"#,
        )
        .await
        .unwrap();
    assert_eq!(reply.status, StatusCode::FORBIDDEN);

    tracing::info!("--- an editor writes, audited with its name");
    let reply = api
        .call(
            Method::PUT,
            &node.api,
            "/api/v1/services/a",
            Some(editor),
            None,
            &service("a"),
        )
        .await
        .unwrap();
    assert_eq!(reply.status, StatusCode::OK);
    let (_, history) = api.get_json(&node.api, "/api/v1/revisions", &admin).await;
    assert_eq!(history["items"][0]["author"], "bob");

    tracing::info!("--- 400: the resulting config is invalid, every problem listed");
    let route = "kind: Route\nname: r1\nspec:\n  hosts: [a.example.com]\n  forward:\n    backends:\n      - service: missing\n";
    let reply = api
        .call(
            Method::POST,
            &node.api,
            "/api/v1/apply",
            Some(editor),
            None,
            route,
        )
        .await
        .unwrap();
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    let problems = json(&reply);
    let problems = problems.as_array().unwrap();
    assert!(!problems.is_empty());
    assert_eq!(problems[0]["resource"], "route/r1");
    assert!(problems[0]["path"].is_string() && problems[0]["message"].is_string());
    let reply = api
        .call(
            Method::POST,
            &node.api,
            "/api/v1/apply",
            Some(editor),
            None,
            "kind: Nope\nname: x\n",
        )
        .await
        .unwrap();
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    let reply = api
        .call(
            Method::PUT,
            &node.api,
            "/api/v1/services/b",
            Some(editor),
            None,
            &service("a"),
        )
        .await
        .unwrap();
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);

    tracing::info!("--- 404");
    let (status, _) = api
        .get_json(&node.api, "/api/v1/services/nope", &admin)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = api
        .get_json(&node.api, "/api/v1/revisions/99", &admin)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let reply = api
        .call(
            Method::DELETE,
            &node.api,
            "/api/v1/services/nope",
            Some(editor),
            None,
            "",
        )
        .await
        .unwrap();
    assert_eq!(reply.status, StatusCode::NOT_FOUND);

    tracing::info!("--- tokens: listed without secrets, revoked → 401");
    let (status, listing) = api.get_json(&node.api, "/api/v1/tokens", &admin).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(listing["items"].as_array().unwrap().len(), 3);
    assert!(!listing.to_string().contains(viewer));
    let reply = api
        .call(
            Method::GET,
            &node.api,
            "/api/v1/tokens",
            Some(editor),
            None,
            "",
        )
        .await
        .unwrap();
    assert_eq!(reply.status, StatusCode::FORBIDDEN);
    let reply = api
        .call(
            Method::DELETE,
            &node.api,
            "/api/v1/tokens/alice",
            Some(&admin),
            None,
            "",
        )
        .await
        .unwrap();
    assert_eq!(reply.status, StatusCode::OK);
    let reply = api
        .call(
            Method::GET,
            &node.api,
            "/api/v1/services",
            Some(viewer),
            None,
            "",
        )
        .await
        .unwrap();
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);

    tracing::info!("--- 409: If-Match with a stale revision");
    let reply = api
        .call(
            Method::PUT,
            &node.api,
            "/api/v1/services/c",
            Some(editor),
            Some(0),
            &service("c"),
        )
        .await
        .unwrap();
    assert_eq!(reply.status, StatusCode::CONFLICT);
    assert_eq!(json(&reply)["current_revision"], 1);
    let reply = api
        .call(
            Method::PUT,
            &node.api,
            "/api/v1/services/c",
            Some(editor),
            Some(1),
            &service("c"),
        )
        .await
        .unwrap();
    assert_eq!(reply.status, StatusCode::OK);
}

#[tokio::test]
async fn concurrent_if_match_writers_exactly_one_wins() {
    let tmp = tempfile::tempdir().unwrap();
    let (node, token, _) = single_node(tmp.path(), &[]).await;
    let api = Api::of(&node);
    let ca = ca_of(&node);
    for round in 0..3u64 {
        tracing::info!(round, "--- eight writers race on revision {round}");
        let writers = (0..8).map(|i| {
            let (addr, token, ca) = (node.api.clone(), token.clone(), ca.clone());
            tokio::spawn(async move {
                let name = format!("race-{round}-{i}");
                Api::new(&ca)
                    .call(
                        Method::PUT,
                        &addr,
                        &format!("/api/v1/services/{name}"),
                        Some(&token),
                        Some(round),
                        &service(&name),
                    )
                    .await
                    .unwrap()
                    .status
            })
        });
        let mut statuses = Vec::new();
        for writer in writers.collect::<Vec<_>>() {
            statuses.push(writer.await.unwrap());
        }
        let wins = statuses.iter().filter(|s| **s == StatusCode::OK).count();
        let conflicts = statuses
            .iter()
            .filter(|s| **s == StatusCode::CONFLICT)
            .count();
        assert_eq!((wins, conflicts), (1, 7), "{statuses:?}");
        let status = api.status(&node.api, &token).await.unwrap();
        assert_eq!(status.revision, round + 1);
    }
}

#[tokio::test]
async fn three_nodes_follower_writes_and_leader_failover() {
    let tmp = tempfile::tempdir().unwrap();
    tracing::info!("--- a cluster of three: init + two joins");
    let (mut nodes, token) = three_nodes(tmp.path()).await;
    let api = Api::of(&nodes[0]);
    let ca = ca_of(&nodes[0]);
    let status = api.wait_leader(&nodes[0].api, &token, None).await;
    assert_eq!(status.voters, vec![1, 2, 3]);
    let leader = status.leader.unwrap();

    tracing::info!("--- a write through a follower is readable on every node");
    let follower = nodes.iter().find(|n| n.id != leader).unwrap();
    let deadline = Instant::now() + READY_TIMEOUT;
    let revision = api
        .put_service_retrying(&follower.api, &token, "via-follower", deadline)
        .await
        .unwrap();
    tracing::info!("--- a linearizable read through a follower sees it at once");
    let (status, body) = api
        .get_json(
            &follower.api,
            "/api/v1/services/via-follower?consistent=true",
            &token,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["name"], "via-follower");
    for node in &nodes {
        api.wait_revision(&node.api, &token, revision).await;
        let (status, body) = api
            .get_json(&node.api, "/api/v1/services/via-follower", &token)
            .await;
        assert_eq!(status, StatusCode::OK, "node {}", node.id);
        assert_eq!(body["name"], "via-follower");
    }

    tracing::info!("--- SIGKILL the leader under a write load");
    let survivors: Vec<usize> = (0..nodes.len())
        .filter(|i| nodes[*i].id != leader)
        .collect();
    let writer_addr = nodes[survivors[0]].api.clone();
    let writer_token = token.clone();
    let (killed_tx, mut killed_rx) = tokio::sync::watch::channel(false);
    let writer = tokio::spawn(async move {
        let api = Api::new(&ca);
        let mut acked = Vec::new();
        let mut i = 0;
        // Keep writing until the kill happened and five writes were acknowledged after it.
        let mut after_kill = 0;
        while after_kill < 5 {
            let deadline = Instant::now() + Duration::from_secs(15);
            let name = format!("load-{i}");
            let killed = *killed_rx.borrow_and_update();
            if let Some(revision) = api
                .put_service_retrying(&writer_addr, &writer_token, &name, deadline)
                .await
            {
                acked.push((name, revision));
                if killed {
                    after_kill += 1;
                }
            } else {
                panic!("no write was acknowledged within 15 s of trying {name}");
            }
            i += 1;
        }
        acked
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let leader_index = nodes.iter().position(|n| n.id == leader).unwrap();
    nodes[leader_index].kill();
    killed_tx.send(true).unwrap();

    let new_status = api
        .wait_leader(&nodes[survivors[0]].api, &token, Some(leader))
        .await;
    assert_ne!(new_status.leader, Some(leader));
    let acked = writer.await.unwrap();
    assert!(acked.len() >= 5);
    tracing::info!(
        acked = acked.len(),
        "--- every acknowledged write is on every live node"
    );
    let last = acked.iter().map(|(_, r)| *r).max().unwrap();
    let names: BTreeSet<String> = acked.iter().map(|(n, _)| n.clone()).collect();
    let mut checksums = BTreeSet::new();
    for i in &survivors {
        let node = &nodes[*i];
        let status = api.wait_revision(&node.api, &token, last).await;
        let (_, listing) = api.get_json(&node.api, "/api/v1/services", &token).await;
        let present: BTreeSet<String> = listing["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["name"].as_str().unwrap().to_owned())
            .collect();
        assert!(names.is_subset(&present), "node {} misses writes", node.id);
        if status.revision == last {
            checksums.insert(status.checksum);
        }
    }
    assert!(
        checksums.len() <= 1,
        "live nodes disagree at revision {last}"
    );

    tracing::info!("--- a token created after the kill works on every live node");
    let reply = api
        .call(
            Method::POST,
            &nodes[survivors[1]].api,
            "/api/v1/tokens",
            Some(&token),
            None,
            r#"{"name": "late", "role": "viewer"}"#,
        )
        .await
        .unwrap();
    assert_eq!(reply.status, StatusCode::OK);
    let late = json(&reply)["token"].as_str().unwrap().to_owned();
    for i in &survivors {
        let deadline = Instant::now() + READY_TIMEOUT;
        while api.status(&nodes[*i].api, &late).await.is_none() {
            assert!(
                Instant::now() < deadline,
                "node {} never accepted the token",
                nodes[*i].id
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    tracing::info!("--- the killed leader restarts with `serve` and catches up");
    nodes[leader_index].serve();
    let survivor = api.status(&nodes[survivors[0]].api, &token).await.unwrap();
    let restarted = api
        .wait_revision(&nodes[leader_index].api, &token, survivor.revision)
        .await;
    assert_eq!(restarted.checksum, survivor.checksum);

    tracing::info!("--- `leave` removes a node from the membership");
    let leaving = &nodes[survivors[1]];
    let out = Command::new(BIN)
        .args(["leave", "--data-dir", leaving.dir.to_str().unwrap()])
        .args(["--token", &token])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let other = &nodes[survivors[0]];
    let status = api.wait_leader(&other.api, &token, None).await;
    assert!(!status.voters.contains(&leaving.id), "{:?}", status.voters);
    assert!(!status.members.contains_key(&leaving.id));
}

#[tokio::test]
async fn raft_port_requires_a_cluster_certificate() {
    let tmp = tempfile::tempdir().unwrap();
    let (node, _token, _) = single_node(tmp.path(), &[]).await;
    let cluster = NodeTls::load(&fleetgate_manager::settings::DataDir::new(&node.dir)).unwrap();

    tracing::info!("--- a certificate from another CA is refused");
    let stranger = NodeTls::bootstrap(7, &[]).unwrap();
    let result = GrpcTransport::new(&stranger)
        .call(&node.raft, RpcKind::Vote, b"{}".to_vec())
        .await;
    assert!(result.is_err(), "a foreign certificate was accepted");

    tracing::info!("--- a certificate the cluster CA issued gets to the Raft handler");
    let member = cluster.for_node(8, &[]).unwrap();
    let result = GrpcTransport::new(&member)
        .call(&node.raft, RpcKind::Vote, b"{}".to_vec())
        .await;
    match result {
        Err(TransportError::Failed { reason, .. }) => {
            assert!(reason.contains("bad Raft payload"), "{reason}");
        }
        other => panic!("expected the handler to refuse the payload, got {other:?}"),
    }
}

#[tokio::test]
async fn a_node_down_for_many_writes_catches_up_by_snapshot() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut nodes, token) = three_nodes(tmp.path()).await;
    let api = Api::of(&nodes[0]);
    let leader = api.leader(&nodes[0].api, &token).await;
    let down = nodes.iter().position(|n| n.id != leader).unwrap();
    let writer = nodes.iter().position(|n| n.id == leader).unwrap();

    tracing::info!("--- a follower is SIGKILLed; many writes (several snapshots) go on");
    nodes[down].kill();
    let deadline = Instant::now() + READY_TIMEOUT;
    let mut last = 0;
    for i in 0..(SNAPSHOT_EVERY * 3) {
        last = api
            .put_service_retrying(&nodes[writer].api, &token, &format!("s-{i}"), deadline)
            .await
            .unwrap();
    }

    tracing::info!("--- it restarts and reaches the same content");
    let log = nodes[down].serve();
    let leader_status = api.wait_revision(&nodes[writer].api, &token, last).await;
    let caught_up = api.wait_revision(&nodes[down].api, &token, last).await;
    assert_eq!(caught_up.checksum, leader_status.checksum);
    assert_eq!(caught_up.revision, leader_status.revision);
    let log = std::fs::read_to_string(log).unwrap();
    assert!(
        log.contains("installed snapshot"),
        "caught up without a snapshot:\n{log}"
    );
}

#[tokio::test]
async fn admin_api_is_https_with_the_cluster_ca_only() {
    let tmp = tempfile::tempdir().unwrap();
    let (node, token, _) = single_node(tmp.path(), &[]).await;

    tracing::info!("--- a client trusting another CA refuses the server");
    let stranger = NodeTls::bootstrap(7, &[]).unwrap();
    let result = Api::new(&stranger.ca_cert)
        .call(
            Method::GET,
            &node.api,
            "/api/v1/cluster",
            Some(&token),
            None,
            "",
        )
        .await;
    let error = result.err().unwrap();
    assert!(error.contains("TLS"), "{error}");

    tracing::info!("--- plain HTTP gets no answer");
    let mut tcp = tokio::net::TcpStream::connect(&node.api).await.unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    tcp.write_all(b"GET /api/v1/cluster HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut buf)).await;
    assert!(!buf.starts_with(b"HTTP/"), "plain HTTP was served");
}
