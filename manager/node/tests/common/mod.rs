//! Helpers shared by the process tests (`cluster.rs`, `recovery.rs`): manager nodes as real
//! processes on ephemeral loopback ports, and an admin API client that trusts the cluster CA.
//!
//! Each test binary uses a different subset of these helpers.
#![allow(dead_code)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use fleetgate_manager::api::ClusterStatus;
use fleetgate_manager::http_client::{HttpClient, Reply};
use fleetgate_manager::node::SNAPSHOT_EVERY_ENV;
use http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use serde_json::Value;

pub const BIN: &str = env!("CARGO_BIN_EXE_fleetgate-manager");
/// Small, so that a node that was down for a few dozen writes catches up by snapshot install
/// (the leader keeps no log behind a snapshot with this knob set).
pub const SNAPSHOT_EVERY: u64 = 20;
/// Generous: two shared cores, several clusters starting at once.
pub const READY_TIMEOUT: Duration = Duration::from_secs(20);
/// How many lines of each log of a node a failing test prints.
const LOG_TAIL_LINES: usize = 40;

pub fn free_addr() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().to_string()
}

/// One manager process and its addresses.
pub struct Node {
    pub id: u64,
    pub dir: PathBuf,
    pub raft: String,
    pub api: String,
    pub sync: String,
    /// `FLEETGATE_SNAPSHOT_EVERY` for the processes this node starts; `None`: the production
    /// default (the variable is removed from their environment).
    pub snapshot_every: Option<u64>,
    /// `RUST_LOG` for the processes this node starts (the binary's default: info, openraft's
    /// own lines from warn).
    pub log_filter: String,
    /// The stderr of every process this node started, one file per start, oldest first.
    pub logs: Vec<PathBuf>,
    pub child: Option<Child>,
}

impl Node {
    pub fn new(root: &Path, id: u64) -> Self {
        Self {
            id,
            dir: root.join(format!("node-{id}")),
            raft: free_addr(),
            api: free_addr(),
            sync: free_addr(),
            snapshot_every: Some(SNAPSHOT_EVERY),
            log_filter: "info,openraft=warn".to_owned(),
            logs: Vec::new(),
            child: None,
        }
    }

    pub fn node_args(&self) -> Vec<String> {
        [
            "--data-dir",
            self.dir.to_str().unwrap(),
            "--node-id",
            &self.id.to_string(),
            "--raft-addr",
            &self.raft,
            "--api-addr",
            &self.api,
            "--sync-addr",
            &self.sync,
        ]
        .iter()
        .map(ToString::to_string)
        .collect()
    }

    /// Starts `fleetgate-manager ARGS` with stderr in a new log file (next to the data
    /// directory: `join` creates the directory itself); returns the log's path.
    pub fn spawn(&mut self, args: &[String]) -> PathBuf {
        let log = self
            .dir
            .with_file_name(format!("node-{}.run-{}.log", self.id, self.logs.len()));
        let mut command = Command::new(BIN);
        command
            .args(args)
            .env("RUST_LOG", &self.log_filter)
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap());
        match self.snapshot_every {
            Some(every) => command.env(SNAPSHOT_EVERY_ENV, every.to_string()),
            None => command.env_remove(SNAPSHOT_EVERY_ENV),
        };
        self.child = Some(command.spawn().unwrap());
        self.logs.push(log.clone());
        log
    }

    /// `fleetgate-manager serve` on the node's data directory; returns the log's path.
    pub fn serve(&mut self) -> PathBuf {
        let args = vec![
            "serve".to_owned(),
            "--data-dir".to_owned(),
            self.dir.to_str().unwrap().to_owned(),
        ];
        self.spawn(&args)
    }

    /// SIGKILL.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }

    /// Every log this node's processes wrote so far, concatenated.
    pub fn all_logs(&self) -> String {
        self.logs
            .iter()
            .map(|log| std::fs::read_to_string(log).unwrap_or_default())
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// When set, every node log is copied into this directory when its node is dropped (the
/// test's temporary directory is deleted): for looking for elections across test runs.
pub const KEEP_LOGS_ENV: &str = "FLEETGATE_TEST_KEEP_LOGS";

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
        if let Some(keep) = std::env::var_os(KEEP_LOGS_ENV) {
            let keep = PathBuf::from(keep);
            let run = self
                .dir
                .parent()
                .and_then(Path::file_name)
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let test = std::thread::current()
                .name()
                .unwrap_or("test")
                .replace("::", "-");
            let _ = std::fs::create_dir_all(&keep);
            for log in &self.logs {
                if let Some(name) = log.file_name() {
                    let _ = std::fs::copy(
                        log,
                        keep.join(format!("{test}-{run}-{}", name.to_string_lossy())),
                    );
                }
            }
        }
        // A failing test says what the nodes said.
        if std::thread::panicking() {
            for log in &self.logs {
                let text = std::fs::read_to_string(log).unwrap_or_default();
                let lines: Vec<&str> = text.lines().collect();
                let tail = &lines[lines.len().saturating_sub(LOG_TAIL_LINES)..];
                eprintln!("--- {} (last {} lines)", log.display(), tail.len());
                for line in tail {
                    eprintln!("{line}");
                }
            }
        }
    }
}

/// Runs `fleetgate-manager init` for `node`; returns the admin token it prints.
pub fn init(node: &Node) -> String {
    let mut args = vec!["init".to_owned()];
    args.extend(node.node_args());
    let out = Command::new(BIN).args(&args).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    let stored = std::fs::read_to_string(node.dir.join("admin.token")).unwrap();
    assert_eq!(stored.trim(), token);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(node.dir.join("admin.token"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    token
}

pub struct Api {
    http: HttpClient,
}

impl Api {
    /// A client that trusts `ca_pem` only.
    pub fn new(ca_pem: &str) -> Self {
        Self {
            http: HttpClient::new(ca_pem).unwrap(),
        }
    }

    /// A client that trusts the CA of `node`'s cluster.
    pub fn of(node: &Node) -> Self {
        Self::new(&ca_of(node))
    }

    pub async fn call(
        &self,
        method: Method,
        addr: &str,
        path: &str,
        token: Option<&str>,
        if_match: Option<u64>,
        body: &str,
    ) -> Result<Reply, String> {
        let mut headers = HeaderMap::new();
        if let Some(token) = token {
            headers.insert(
                header::AUTHORIZATION,
                HeaderValue::from_str(&format!("Bearer {token}")).unwrap(),
            );
        }
        if let Some(revision) = if_match {
            headers.insert(header::IF_MATCH, HeaderValue::from(revision));
        }
        let url = format!("https://{addr}{path}");
        tokio::time::timeout(
            Duration::from_secs(10),
            self.http
                .call(method, &url, &headers, Bytes::from(body.to_owned())),
        )
        .await
        .map_err(|_| "timed out".to_owned())?
    }

    pub async fn get_json(&self, addr: &str, path: &str, token: &str) -> (StatusCode, Value) {
        let reply = self
            .call(Method::GET, addr, path, Some(token), None, "")
            .await
            .unwrap();
        (reply.status, json(&reply))
    }

    pub async fn status(&self, addr: &str, token: &str) -> Option<ClusterStatus> {
        let reply = self
            .call(Method::GET, addr, "/api/v1/cluster", Some(token), None, "")
            .await
            .ok()?;
        (reply.status == StatusCode::OK).then(|| serde_json::from_slice(&reply.body).unwrap())
    }

    /// Waits until `addr` knows a leader, and returns its id.
    pub async fn leader(&self, addr: &str, token: &str) -> u64 {
        let status = self.wait_leader(addr, token, None).await;
        status
            .leader
            .unwrap_or_else(|| panic!("{addr} reported no leader"))
    }

    /// Waits until `addr` answers and knows a leader (other than `not`, if given).
    pub async fn wait_leader(&self, addr: &str, token: &str, not: Option<u64>) -> ClusterStatus {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(status) = self.status(addr, token).await
                && status.leader.is_some()
                && status.leader != not
            {
                return status;
            }
            assert!(Instant::now() < deadline, "no leader seen at {addr}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until `addr` has applied at least `revision`.
    pub async fn wait_revision(&self, addr: &str, token: &str, revision: u64) -> ClusterStatus {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(status) = self.status(addr, token).await
                && status.revision >= revision
            {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "{addr} never reached revision {revision}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// PUTs a service, retrying while the cluster has no (reachable) leader. Returns the
    /// committed revision, or `None` if no attempt was acknowledged before the deadline.
    pub async fn put_service_retrying(
        &self,
        addr: &str,
        token: &str,
        name: &str,
        deadline: Instant,
    ) -> Option<u64> {
        let body = service(name);
        while Instant::now() < deadline {
            let path = format!("/api/v1/services/{name}");
            match self
                .call(Method::PUT, addr, &path, Some(token), None, &body)
                .await
            {
                Ok(reply) if reply.status == StatusCode::OK => {
                    return json(&reply)["revision"].as_u64();
                }
                Ok(reply) => assert!(
                    reply.status == StatusCode::SERVICE_UNAVAILABLE,
                    "unexpected {}: {}",
                    reply.status,
                    String::from_utf8_lossy(&reply.body)
                ),
                Err(_) => {}
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        None
    }
}

/// The cluster CA certificate from `node`'s data directory.
pub fn ca_of(node: &Node) -> String {
    std::fs::read_to_string(node.dir.join("tls/ca.pem")).unwrap()
}

pub fn json(reply: &Reply) -> Value {
    serde_json::from_slice(&reply.body).unwrap_or(Value::Null)
}

pub fn service(name: &str) -> String {
    format!("kind: Service\nname: {name}\nspec:\n  endpoints:\n    - address: 10.0.0.1:8080\n")
}

/// One initialized, serving node.
pub async fn single_node(
    root: &Path,
    extra_tokens: &[(&str, &str)],
) -> (Node, String, Vec<String>) {
    let mut node = Node::new(root, 1);
    let token = init(&node);
    node.serve();
    let api = Api::of(&node);
    api.wait_leader(&node.api, &token, None).await;
    let mut extra = Vec::new();
    for (name, role) in extra_tokens {
        let body = format!(r#"{{"name": "{name}", "role": "{role}"}}"#);
        let reply = api
            .call(
                Method::POST,
                &node.api,
                "/api/v1/tokens",
                Some(&token),
                None,
                &body,
            )
            .await
            .unwrap();
        assert_eq!(reply.status, StatusCode::OK);
        extra.push(json(&reply)["token"].as_str().unwrap().to_owned());
    }
    (node, token, extra)
}

pub async fn three_nodes(root: &Path) -> (Vec<Node>, String) {
    three_nodes_with(root, Some(SNAPSHOT_EVERY)).await
}

/// [`three_nodes`] with `FLEETGATE_SNAPSHOT_EVERY` set to `snapshot_every` on every node (`None`:
/// unset, the production default).
pub async fn three_nodes_with(root: &Path, snapshot_every: Option<u64>) -> (Vec<Node>, String) {
    let mut first = Node::new(root, 1);
    first.snapshot_every = snapshot_every;
    let token = init(&first);
    let api = Api::of(&first);
    let ca_path = first.dir.join("tls/ca.pem").to_str().unwrap().to_owned();
    first.serve();
    api.wait_leader(&first.api, &token, None).await;
    let mut nodes = vec![first];
    for id in [2, 3] {
        let mut node = Node::new(root, id);
        node.snapshot_every = snapshot_every;
        let mut args = vec!["join".to_owned()];
        args.extend(node.node_args());
        args.extend(["--cluster".to_owned(), nodes[0].api.clone()]);
        args.extend(["--token".to_owned(), token.clone()]);
        args.extend(["--ca-cert".to_owned(), ca_path.clone()]);
        let log = node.spawn(&args);
        // Joined when `join` says so: its membership change has left the joint configuration.
        // (The leader lists the node as a voter from the joint configuration on, where the old
        // voters still form a quorum of their own: a test that killed one of them then would
        // stall every commit.)
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let said = std::fs::read_to_string(&log).unwrap_or_default();
            if said.contains("joined the cluster as a voter") {
                break;
            }
            assert!(Instant::now() < deadline, "node {id} never became a voter");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let status = api.status(&nodes[0].api, &token).await.unwrap();
        assert!(status.voters.contains(&id), "{status:?}");
        nodes.push(node);
    }
    (nodes, token)
}
