//! Manager → agent sync with real processes: three managers (Raft), agents in manager mode
//! enrolled with join tokens, and the outages the agents must ride through.

#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::time::{Duration, Instant};

use fleetgate_testbed::harness::{Agent, Managers, eventually};
use http::{Method, StatusCode};
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_fleetgate-testbed");
/// Generous: two shared cores, debug builds, several processes starting at once.
const CONVERGE: Duration = Duration::from_secs(30);

/// A bundle whose `/` answers `version`, plus a route `/a` placed only on agents labelled
/// `cloud: a`.
fn bundle(version: &str) -> String {
    format!(
        r#"
kind: Route
name: hello
spec:
  matches: [{{ path: {{ prefix: / }} }}]
  direct_response: {{ status: 200, body: "{version}" }}
---
kind: Route
name: only-a
placement:
  match_labels: {{ cloud: a }}
spec:
  matches: [{{ path: {{ prefix: /a }} }}]
  direct_response: {{ status: 200, body: "A" }}
"#
    )
}

fn body(agent: &Agent, path: &str) -> Option<String> {
    agent.get(path).filter(|(s, _)| *s == 200).map(|(_, b)| b)
}

async fn serves(agent: &Agent, path: &str, expected: &str) {
    eventually(
        CONVERGE,
        &format!("{} to serve {path} = {expected}", agent.name),
        || (body(agent, path).as_deref() == Some(expected)).then_some(()),
    )
    .await
    .unwrap_or_else(|e| panic!("{e}; {}", log_tail(&agent.dir.with_extension("log"))));
}

fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    format!(
        "last log lines of {}:\n{}",
        path.display(),
        lines[lines.len().saturating_sub(15)..].join("\n")
    )
}

fn agent_row<'a>(view: &'a Value, id: &str) -> &'a Value {
    view["agents"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["id"] == id)
        .unwrap_or_else(|| panic!("agent {id} not in the fleet view: {view}"))
}

/// Sends `count` requests to each agent over `window`; returns how many failed.
async fn failures_over(agents: &[&Agent], window: Duration, expected: &str) -> usize {
    let started = Instant::now();
    let mut failed = 0;
    let mut sent = 0;
    while started.elapsed() < window {
        for agent in agents {
            sent += 1;
            if body(agent, "/").as_deref() != Some(expected) {
                failed += 1;
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(sent > 50, "only {sent} requests were sent");
    failed
}

/// The card's core promise, end to end: a commit reaches every agent (placement-filtered),
/// every manager dies and the agents serve every request, an agent restarted during the
/// outage serves its snapshot, the managers come back and the agents converge on the newest
/// revision, and a corrupt snapshot file falls back to the previous generation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commits_reach_agents_which_ride_out_a_total_manager_outage() {
    let root = tempfile::tempdir().unwrap();
    let bin = Path::new(BIN);
    let mut managers = Managers::start(bin, &root.path().join("managers"), 3, &[])
        .await
        .unwrap();
    let v1 = managers.apply(&bundle("v1")).await.unwrap();
    let token = managers.join_token(2).await.unwrap();
    let sync = managers.sync_addrs();
    let agents_dir = root.path().join("agents");
    let mut a = Agent::new(
        bin,
        &agents_dir,
        "edge-a",
        "cloud=a,region=eu",
        &sync,
        Some(&token),
    );
    let mut b = Agent::new(bin, &agents_dir, "edge-b", "cloud=b", &sync, Some(&token));
    a.start().unwrap();
    b.start().unwrap();

    // The commit before the agents existed reaches both; placement keeps /a off agent b.
    serves(&a, "/", "v1").await;
    serves(&a, "/a", "A").await;
    serves(&b, "/", "v1").await;
    // On b, `/a` falls through to the catch-all route: the placed route is not there.
    assert_eq!(body(&b, "/a").as_deref(), Some("v1"));
    let config = a.config().unwrap();
    assert_eq!(config["source"], "manager");
    assert_eq!(config["revision"], v1);
    assert_eq!(config["sync"]["state"], "connected");

    // A change is a delta: both agents apply it and the fleet view shows the rollout.
    let v2 = managers.apply(&bundle("v2")).await.unwrap();
    serves(&a, "/", "v2").await;
    serves(&b, "/", "v2").await;
    let (id_a, id_b) = (a.agent_id().unwrap(), b.agent_id().unwrap());
    let deadline = Instant::now() + CONVERGE;
    let view = loop {
        let view = managers.agents(Some(v2)).await.unwrap();
        if view["rollout"]["applied"] == 2 {
            break view;
        }
        assert!(
            Instant::now() < deadline,
            "rollout never reached 2 agents: {view}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(view["rollout"]["selected"], 2, "{view}");
    for id in [&id_a, &id_b] {
        let row = agent_row(&view, id);
        assert_eq!(row["live"]["applied_revision"], v2, "{row}");
        assert_eq!(row["live"]["connected"], true, "{row}");
    }
    assert_eq!(agent_row(&view, &id_a)["labels"]["cloud"], "a");

    // Every manager dies. The agents keep answering every request.
    for i in 0..3 {
        managers.kill(i);
    }
    let failed = failures_over(&[&a, &b], Duration::from_secs(4), "v2").await;
    assert_eq!(failed, 0, "requests failed while no manager was up");

    // An agent restarted while every manager is down serves its persisted snapshot.
    b.kill();
    b.start().unwrap();
    serves(&b, "/", "v2").await;
    let config = b.config().unwrap();
    assert_eq!(config["source"], "disk");
    assert_eq!(config["revision"], v2);
    assert_ne!(config["sync"]["state"], "connected");

    // The managers come back; a new commit reaches both agents, the restarted one included.
    for i in 0..3 {
        managers.serve(i).unwrap();
    }
    let v3 = managers.apply(&bundle("v3")).await.unwrap();
    serves(&a, "/", "v3").await;
    serves(&b, "/", "v3").await;
    assert_eq!(b.config().unwrap()["source"], "manager");
    assert!(v3 > v2);

    // A corrupt current snapshot: the previous generation (v2) serves, with no manager
    // reachable to hide the fallback (the agent is pointed at a dead address). v3 reached the
    // agent as a delta, so the current generation is the last line of its journal.
    b.kill();
    let journal = b.dir.join("snapshot.journal");
    let lines = std::fs::read_to_string(&journal).unwrap();
    let mut lines: Vec<&str> = lines.lines().collect();
    assert!(lines.len() >= 2, "v2 and v3 were not journaled: {lines:?}");
    let damaged = lines.pop().unwrap().replacen("\"v3\"", "\"v9\"", 1);
    std::fs::write(&journal, format!("{}\n{damaged}\n", lines.join("\n"))).unwrap();
    b.managers = "127.0.0.1:9".to_owned();
    b.start().unwrap();
    serves(&b, "/", "v2").await;
    assert_eq!(b.revision(), Some(v2));
}

/// An agent whose host cannot apply a revision (here: no OWASP CRS for a waf policy) NACKs it
/// and keeps serving the previous one, while the others apply it; the fleet view shows the
/// NACK and its problems. A revoked agent is refused and keeps serving what it had.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_revision_is_nacked_and_a_revoked_agent_is_refused() {
    let root = tempfile::tempdir().unwrap();
    let bin = Path::new(BIN);
    let managers = Managers::start(bin, &root.path().join("managers"), 1, &[])
        .await
        .unwrap();
    managers.apply(&bundle("v1")).await.unwrap();
    let token = managers.join_token(2).await.unwrap();
    let sync = managers.sync_addrs();
    let agents_dir = root.path().join("agents");
    let mut good = Agent::new(bin, &agents_dir, "good", "cloud=a", &sync, Some(&token));
    let mut crsless = Agent::new(bin, &agents_dir, "no-crs", "cloud=b", &sync, Some(&token));
    crsless.env.push((
        "FLEETGATE_CRS_RULES_DIR".to_owned(),
        "/nonexistent/crs".to_owned(),
    ));
    good.start().unwrap();
    crsless.start().unwrap();
    serves(&good, "/", "v1").await;
    serves(&crsless, "/", "v1").await;
    let v1 = crsless.revision().unwrap();

    // The join token was for two agents: a third is refused, and says why.
    let mut third = Agent::new(bin, &agents_dir, "third", "cloud=c", &sync, Some(&token));
    third.start().unwrap();
    let error = eventually(
        CONVERGE,
        "the third agent's enrolment to be refused",
        || {
            third.config()?["sync"]["last_error"]
                .as_str()
                .map(str::to_owned)
        },
    )
    .await
    .unwrap();
    assert!(error.contains("used as many times"), "{error}");
    assert_eq!(third.get("/").map(|(s, _)| s), Some(404));
    third.kill();

    // A waf policy on every agent: the agent without the CRS rejects the revision.
    let waf = format!(
        "{}---\nkind: Policy\nname: firewall\nspec:\n  type: waf\n  scope: {{ global: true }}\n  config: {{ mode: detect-only }}\n",
        bundle("v2")
    );
    let v2 = managers.apply(&waf).await.unwrap();
    serves(&good, "/", "v2").await;
    let deadline = Instant::now() + CONVERGE;
    let view = loop {
        let view = managers.agents(Some(v2)).await.unwrap();
        if view["rollout"]["failed"] == 1 && view["rollout"]["applied"] == 1 {
            break view;
        }
        assert!(
            Instant::now() < deadline,
            "no NACK in the fleet view: {view}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let id = crsless.agent_id().unwrap();
    let row = agent_row(&view, &id);
    let nack = &row["live"]["last_nack"];
    assert_eq!(nack["revision"], v2, "{row}");
    assert!(
        nack["errors"].to_string().contains("CRS"),
        "the NACK should say why: {nack}"
    );
    assert_eq!(row["live"]["applied_revision"], v1);
    // ...and it keeps serving the previous revision.
    assert_eq!(body(&crsless, "/").as_deref(), Some("v1"));
    assert_eq!(crsless.revision(), Some(v1));

    // Revoking an agent ends its session; it keeps serving, but gets no more revisions.
    let (status, _) = managers
        .call(Method::POST, &format!("/api/v1/agents/{id}/revoke"), None)
        .await
        .unwrap();
    assert_eq!(status, StatusCode::OK);
    let error = eventually(CONVERGE, "the revoked agent to be disconnected", || {
        let sync = crsless.config()?["sync"].clone();
        (sync["state"] != "connected").then(|| sync["last_error"].as_str().map(str::to_owned))?
    })
    .await
    .unwrap();
    assert!(error.contains("revoked"), "{error}");
    let v3 = managers.apply(&bundle("v3")).await.unwrap();
    serves(&good, "/", "v3").await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(body(&crsless, "/").as_deref(), Some("v1"));
    let view = managers.agents(Some(v3)).await.unwrap();
    assert!(!agent_row(&view, &id)["revoked_ms"].is_null());
    assert_eq!(
        view["rollout"]["selected"], 1,
        "a revoked agent is not rolled out to: {view}"
    );
}

/// Waits until the fleet view shows `count` connected agents serving `revision` or newer;
/// `None` after two minutes.
async fn rollout_reaches(managers: &Managers, revision: u64, count: u64) -> Option<Value> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Ok(view) = managers.agents(Some(revision)).await
            && view["rollout"]["applied"] == count
        {
            return Some(view);
        }
        if Instant::now() > deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// A hundred agents on a three-node cluster; the leader is killed and a change is committed
/// through the survivors: every agent converges on it, including those whose manager died.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_agents_converge_through_a_leader_change() {
    const AGENTS: u64 = 100;
    let root = tempfile::tempdir().unwrap();
    let bin = Path::new(BIN);
    let mut managers = Managers::start(bin, &root.path().join("managers"), 3, &[])
        .await
        .unwrap();
    let v1 = managers.apply(&bundle("v1")).await.unwrap();
    let token = managers.join_token(0).await.unwrap();
    let sync = managers.sync_addrs();
    let agents_dir = root.path().join("agents");
    let mut agents: Vec<Agent> = (0..AGENTS)
        .map(|i| {
            let labels = format!("cloud={}", ["a", "b", "c"][i as usize % 3]);
            Agent::new(
                bin,
                &agents_dir,
                &format!("edge-{i:03}"),
                &labels,
                &sync,
                Some(&token),
            )
        })
        .collect();
    for agent in &mut agents {
        agent.start().unwrap();
    }
    // A port taken by a concurrent test process between its choice and the bind ends that
    // agent at once: start those again on other ports.
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let mut restarted = 0;
        for agent in &mut agents {
            restarted += usize::from(agent.restart_if_exited().unwrap());
        }
        if restarted == 0 {
            break;
        }
    }
    if rollout_reaches(&managers, v1, AGENTS).await.is_none() {
        let stuck: Vec<String> = agents
            .iter()
            .filter(|a| a.revision() != Some(v1))
            .map(|a| log_tail(&a.dir.with_extension("log")))
            .collect();
        panic!("not every agent reached v1:\n{}", stuck.join("\n"));
    }

    let leader = managers.leader().await.unwrap();
    managers.kill(leader);
    let v2 = managers.apply(&bundle("v2")).await.unwrap();
    let view = rollout_reaches(&managers, v2, AGENTS)
        .await
        .expect("every agent converges on the change committed after the leader died");
    assert_eq!(view["rollout"]["selected"], AGENTS, "{}", view["rollout"]);
    // The fleet view is what the managers believe; each agent confirms it serves v2.
    for agent in &agents {
        assert_eq!(body(agent, "/").as_deref(), Some("v2"), "{}", agent.name);
    }
}

/// With short-lived certificates, an agent renews before expiry over its session, and after
/// the first certificate has expired it still connects (with the renewed one).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_renew_their_certificates_before_they_expire() {
    let root = tempfile::tempdir().unwrap();
    let bin = Path::new(BIN);
    let env = [("FLEETGATE_AGENT_CERT_TTL_SECS", "12")];
    let managers = Managers::start(bin, &root.path().join("managers"), 1, &env)
        .await
        .unwrap();
    managers.apply(&bundle("v1")).await.unwrap();
    let token = managers.join_token(1).await.unwrap();
    let mut agent = Agent::new(
        bin,
        &root.path().join("agents"),
        "edge",
        "cloud=a",
        &managers.sync_addrs(),
        Some(&token),
    );
    agent.start().unwrap();
    serves(&agent, "/", "v1").await;
    let first = agent.config().unwrap()["sync"]["cert_not_after_ms"]
        .as_u64()
        .unwrap();
    // Renewal happens at half the lifetime (about 6 s in).
    let renewed = eventually(Duration::from_secs(20), "a renewed certificate", || {
        let expiry = agent.config()?["sync"]["cert_not_after_ms"].as_u64()?;
        (expiry > first).then_some(expiry)
    })
    .await
    .unwrap();
    assert!(renewed >= first + 3_000, "{first} -> {renewed}");
    // Past the first certificate's expiry, a restarted agent (a new connection) is admitted
    // with the renewed certificate and receives new revisions.
    let now_ms = u64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis(),
    )
    .unwrap();
    tokio::time::sleep(Duration::from_millis(first.saturating_sub(now_ms) + 500)).await;
    agent.kill();
    agent.join = None;
    agent.start().unwrap();
    managers.apply(&bundle("v2")).await.unwrap();
    serves(&agent, "/", "v2").await;
    assert_eq!(agent.config().unwrap()["sync"]["state"], "connected");
}
