//! The agent as an operator runs it: a real `fleetgate-agent` process with a config file it
//! watches, an admin API, SIGTERM handling, and a data directory that outlives restarts.

#![allow(clippy::unwrap_used)]

mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use http::StatusCode;
use support::{AgentProcess, Backend, STEP_TIMEOUT};
use tracing::info;

/// Replaces the config file the way editors and config-management tools do: write a temporary
/// file next to it, then rename it over the old one, so the agent never reads half a file.
fn write_config(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

fn hello(body: &str) -> String {
    format!(
        "kind: Route\nname: hello\nspec:\n  matches: [{{path: {{exact: /hello}}}}]\n  direct_response: {{status: 200, body: {body}}}\n"
    )
}

/// GETs `/hello` until it answers `expected`; the file watcher gives no signal to await.
async fn wait_for_hello(agent: &AgentProcess, expected: &str) {
    let client = agent.client();
    let deadline = Instant::now() + STEP_TIMEOUT;
    loop {
        let reply = client.get("process.test", "/hello").await;
        if reply.status == StatusCode::OK && reply.text() == expected {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "/hello never answered {expected:?}; last: {} {}\n{}",
            reply.status,
            reply.text(),
            agent.logs()
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

#[tokio::test]
async fn the_agent_follows_its_config_file_and_reports_on_its_admin_api() {
    support::init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("gateway.yaml");
    write_config(&config, &hello("first"));

    info!("--- the agent starts on the config file");
    let agent = AgentProcess::start(&config, &[]).await;
    let client = agent.client();
    let reply = client.get("process.test", "/hello").await;
    assert_eq!(
        (reply.status, reply.text().as_str()),
        (StatusCode::OK, "first")
    );

    info!("--- /healthz and /readyz");
    let reply = agent.admin("/healthz").await;
    assert_eq!(reply.status, StatusCode::OK);
    let reply = agent.admin("/readyz").await;
    assert_eq!(reply.status, StatusCode::OK);

    info!("--- /config names the revision, its checksum and the source");
    let report = agent.admin("/config").await.json();
    assert_eq!(report["revision"], 1, "{report}");
    assert_eq!(report["source"], "file", "{report}");
    let checksum = report["checksum"].as_str().unwrap();
    assert!(
        checksum.len() >= 12 && checksum.chars().all(|c| c.is_ascii_hexdigit()),
        "{report}"
    );
    assert!(report["last_rejected"].is_null(), "{report}");

    info!("--- /metrics has request counts and the config info");
    let deadline = Instant::now() + STEP_TIMEOUT;
    let metrics = loop {
        // The request above is counted when its response body is finished, which can be a
        // moment after the client has read it.
        let metrics = agent.admin("/metrics").await.text();
        if metrics.contains("fleetgate_requests_total") || Instant::now() > deadline {
            break metrics;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    };
    assert!(metrics.contains("fleetgate_requests_total"), "{metrics}");
    assert!(
        metrics.contains("fleetgate_config_info{revision=\"1\""),
        "{metrics}"
    );

    info!("--- an edit of the file changes the answer");
    write_config(&config, &hello("second"));
    wait_for_hello(&agent, "second").await;
    let report = agent.admin("/config").await.json();
    assert_eq!(report["revision"], 2, "{report}");
    assert_ne!(report["checksum"], checksum, "{report}");

    info!("--- a file that does not parse is rejected; the running config keeps serving");
    write_config(&config, "kind: Route\nname: [unclosed\n");
    agent.wait_for_log("config rejected", 1).await;
    let reply = client.get("process.test", "/hello").await;
    assert_eq!(reply.text(), "second");

    info!("--- a file that parses but does not validate is rejected too, and /config says so");
    let rejections = agent.logs().matches("config rejected").count();
    write_config(
        &config,
        &format!(
            "{}---\nkind: Route\nname: orphan\nspec:\n  forward: {{backends: [{{service: missing}}]}}\n",
            hello("third")
        ),
    );
    agent.wait_for_log("config rejected", rejections + 1).await;
    let reply = client.get("process.test", "/hello").await;
    assert_eq!(reply.text(), "second");
    let report = agent.admin("/config").await.json();
    assert_eq!(report["revision"], 2, "{report}");
    let errors = report["last_rejected"]["errors"].as_array().unwrap();
    assert!(
        errors
            .iter()
            .any(|e| e.as_str().unwrap().contains("service/missing")),
        "{report}"
    );

    info!("--- fixing the file applies it");
    write_config(&config, &hello("fourth"));
    wait_for_hello(&agent, "fourth").await;
}

#[tokio::test]
async fn sigterm_lets_an_in_flight_request_finish_then_exits_cleanly() {
    support::init_tracing();
    let backend = Backend::start("slow").await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("gateway.yaml");
    write_config(
        &config,
        &format!(
            "kind: Service\nname: slow\nspec: {{endpoints: [{{address: \"{}\"}}]}}\n---\nkind: Route\nname: all\nspec:\n  forward: {{backends: [{{service: slow}}]}}\n",
            backend.addr
        ),
    );
    let mut agent = AgentProcess::start(&config, &[]).await;

    info!("--- a request that takes a second is in flight");
    let client = agent.client();
    let in_flight = tokio::spawn(async move { client.get("process.test", "/slow/1000").await });
    backend.wait_for_requests(1).await;

    info!("--- SIGTERM arrives while the backend is still working");
    let stopped_at = Instant::now();
    agent.sigterm();

    info!("--- the request still gets its answer");
    let reply = support::within("the in-flight request", in_flight)
        .await
        .unwrap();
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert_eq!(reply.json()["path"], "/slow/1000");

    info!("--- then the agent exits 0");
    let status = agent.wait_exit().await;
    assert!(status.success(), "exit status {status}:\n{}", agent.logs());
    assert!(
        stopped_at.elapsed() < Duration::from_secs(5),
        "the drain waited for more than the request"
    );
    assert!(agent.logs().contains("shutting down"), "{}", agent.logs());
}

#[tokio::test]
async fn a_restart_with_a_broken_config_file_serves_the_persisted_snapshot() {
    support::init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let data_arg = data.to_str().unwrap().to_owned();
    let config = dir.path().join("gateway.yaml");
    write_config(&config, &hello("persisted"));

    info!("--- a first run applies the file and persists it");
    let mut agent = AgentProcess::start(&config, &["--data-dir", &data_arg]).await;
    wait_for_hello(&agent, "persisted").await;
    assert!(data.join("snapshot.json").exists(), "nothing persisted");
    agent.sigterm();
    assert!(agent.wait_exit().await.success());

    info!(
        "--- the file is broken while the agent is down; a restart serves the persisted snapshot"
    );
    write_config(&config, "this is: [not a config\n");
    let agent = AgentProcess::start(&config, &["--data-dir", &data_arg]).await;
    wait_for_hello(&agent, "persisted").await;
    let report = agent.admin("/config").await.json();
    assert_eq!(report["source"], "disk", "{report}");
    assert!(
        agent.logs().contains("serving the persisted snapshot"),
        "{}",
        agent.logs()
    );

    info!("--- fixing the file replaces the persisted snapshot");
    write_config(&config, &hello("fixed"));
    wait_for_hello(&agent, "fixed").await;
    let report = agent.admin("/config").await.json();
    assert_eq!(report["source"], "file", "{report}");
    drop(agent);

    info!("--- with the file gone altogether, a restart serves the newest persisted snapshot");
    std::fs::remove_file(&config).unwrap();
    let agent = AgentProcess::start(&config, &["--data-dir", &data_arg]).await;
    wait_for_hello(&agent, "fixed").await;
    assert_eq!(agent.admin("/config").await.json()["source"], "disk");
}
