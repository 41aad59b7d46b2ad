//! A fleet of real processes on loopback (managers and agents of this binary's `manager` and
//! `agent` subcommands), with the few operations tests and scenarios need: start, kill
//! (SIGKILL), restart, call the admin API, create join tokens, apply bundles, and probe agents
//! over plain HTTP.
//!
//! Every process writes its log to a file in the fleet's directory, so a failing test can show
//! what happened.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use bytes::Bytes;
use fleetgate_manager::http_client::HttpClient;
use http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use serde_json::Value;

/// How long a cluster may take to elect a leader or add a node on a busy two-core machine.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// Ports handed out for listeners: below Linux's default ephemeral range (32768–60999), so
/// that the outgoing connections of a hundred processes cannot take a port between the moment
/// it is chosen and the moment its process binds it (which `bind(":0")` cannot promise). Each
/// process (each test binary run by nextest) draws from one of six slices chosen by its pid, so
/// that concurrent test processes rarely draw the same port; [`Agent::restart_if_exited`]
/// recovers from the collisions that remain.
const LISTEN_PORTS: std::ops::Range<u16> = 20_000..32_000;
const SLICES: u16 = 6;

fn port_slice() -> std::ops::Range<u16> {
    let width = (LISTEN_PORTS.end - LISTEN_PORTS.start) / SLICES;
    let slice = u16::try_from(std::process::id() % u32::from(SLICES)).unwrap_or(0);
    let start = LISTEN_PORTS.start + slice * width;
    start..start + width
}

/// A loopback port free at the time of the call, from this process's slice of
/// [`LISTEN_PORTS`], for which `bind` succeeds, and never handed out before by this process (a
/// hundred agents pick two hundred ports before any of them binds: random picks alone would
/// collide).
fn free_port(bind: impl Fn(u16) -> bool) -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
    for _ in 0..1000 {
        let port = fastrand::u16(port_slice());
        if !given.contains(&port) && bind(port) {
            given.push(port);
            return port;
        }
    }
    0
}

/// A loopback TCP address free at the time of the call.
pub fn free_tcp() -> String {
    let port = free_port(|p| TcpListener::bind(("127.0.0.1", p)).is_ok());
    format!("127.0.0.1:{port}")
}

/// A TCP address on loopback address `ip` (any of 127.0.0.0/8 binds on Linux), free at the time
/// of the call.
pub fn free_tcp_on(ip: std::net::Ipv4Addr) -> String {
    let port = free_port(|p| TcpListener::bind((ip, p)).is_ok());
    format!("{ip}:{port}")
}

/// A loopback UDP address free at the time of the call.
pub fn free_udp() -> String {
    let port = free_port(|p| UdpSocket::bind(("127.0.0.1", p)).is_ok());
    format!("127.0.0.1:{port}")
}

/// A child process killed (SIGKILL) when dropped.
#[derive(Debug)]
pub struct Proc {
    child: Option<Child>,
}

impl Proc {
    /// Starts `bin args...` with stderr appended to `log` and `env` set.
    pub fn spawn(
        bin: &Path,
        args: &[String],
        log: &Path,
        env: &[(&str, &str)],
    ) -> anyhow::Result<Self> {
        let log_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("cannot open {}", log.display()))?;
        let mut command = Command::new(bin);
        command
            .args(args)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file);
        for (key, value) in env {
            command.env(key, value);
        }
        let child = command
            .spawn()
            .with_context(|| format!("cannot start {}", bin.display()))?;
        Ok(Self { child: Some(child) })
    }

    /// SIGKILL, and wait for the process to be gone.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM (a graceful stop: agents drain, managers leave Raft cleanly), then SIGKILL if
    /// the process is still there after `grace`.
    pub fn terminate(&mut self, grace: Duration) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(child.id().to_string())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
            let deadline = Instant::now() + grace;
            while Instant::now() < deadline {
                if !matches!(child.try_wait(), Ok(None)) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// One manager node.
#[derive(Debug)]
pub struct Manager {
    pub id: u64,
    pub dir: PathBuf,
    pub raft: String,
    pub api: String,
    pub sync: String,
    proc: Option<Proc>,
}

impl Manager {
    fn node_args(&self) -> Vec<String> {
        [
            "--data-dir",
            &self.dir.display().to_string(),
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

    fn log(&self) -> PathBuf {
        self.dir.with_extension("log")
    }

    pub fn is_up(&self) -> bool {
        self.proc.is_some()
    }
}

/// A manager cluster of real processes.
pub struct Managers {
    bin: PathBuf,
    pub nodes: Vec<Manager>,
    pub token: String,
    pub ca_pem: String,
    http: HttpClient,
    env: Vec<(String, String)>,
}

impl std::fmt::Debug for Managers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Managers")
            .field("nodes", &self.nodes)
            .finish_non_exhaustive()
    }
}

impl Managers {
    /// Starts `count` managers under `root`: `init` and `serve` the first, `join` the others,
    /// and waits until every one is a voter. `env` is set on every manager process.
    pub async fn start(
        bin: &Path,
        root: &Path,
        count: u64,
        env: &[(&str, &str)],
    ) -> anyhow::Result<Self> {
        std::fs::create_dir_all(root)?;
        let mut nodes: Vec<Manager> = (1..=count)
            .map(|id| Manager {
                id,
                dir: root.join(format!("manager-{id}")),
                raft: free_tcp(),
                api: free_tcp(),
                sync: free_udp(),
                proc: None,
            })
            .collect();
        let first = &nodes[0];
        let mut args = vec!["manager".to_owned(), "init".to_owned()];
        args.extend(first.node_args());
        let out = Command::new(bin)
            .args(&args)
            .env("RUST_LOG", "warn")
            .output()
            .context("cannot run manager init")?;
        if !out.status.success() {
            bail!(
                "manager init failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let token = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        let ca_pem = std::fs::read_to_string(first.dir.join("tls/ca.pem"))?;
        let mut managers = Self {
            bin: bin.to_owned(),
            http: HttpClient::new(&ca_pem).map_err(|e| anyhow!("{e}"))?,
            nodes: Vec::new(),
            token,
            ca_pem,
            env: env
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        };
        let first = nodes.remove(0);
        managers.nodes.push(first);
        managers.serve(0)?;
        managers.wait_voters(&[1]).await?;
        for node in nodes {
            let mut args = vec!["manager".to_owned(), "join".to_owned()];
            args.extend(node.node_args());
            args.extend([
                "--cluster".to_owned(),
                managers.nodes[0].api.clone(),
                "--token".to_owned(),
                managers.token.clone(),
                "--ca-cert".to_owned(),
                managers.nodes[0]
                    .dir
                    .join("tls/ca.pem")
                    .display()
                    .to_string(),
            ]);
            let proc = managers.spawn(&args, &node.log())?;
            let id = node.id;
            managers.nodes.push(Manager {
                proc: Some(proc),
                ..node
            });
            let voters: Vec<u64> = (1..=id).collect();
            managers.wait_voters(&voters).await?;
        }
        Ok(managers)
    }

    /// Writes what [`Managers::resume`] needs (node addresses and the admin token) to
    /// `root/cluster.json`.
    pub fn save(&self, root: &Path) -> anyhow::Result<()> {
        let nodes: Vec<Value> = self
            .nodes
            .iter()
            .map(|n| {
                serde_json::json!({
                    "id": n.id, "dir": n.dir, "raft": n.raft, "api": n.api, "sync": n.sync,
                })
            })
            .collect();
        let doc = serde_json::json!({ "token": self.token, "nodes": nodes });
        let path = root.join("cluster.json");
        std::fs::write(&path, serde_json::to_vec_pretty(&doc)?)
            .with_context(|| format!("cannot write {}", path.display()))
    }

    /// Restarts (`serve`) the cluster saved by [`Managers::save`] under `root`; `None` when
    /// there is none. Waits for a leader.
    pub async fn resume(
        bin: &Path,
        root: &Path,
        env: &[(&str, &str)],
    ) -> anyhow::Result<Option<Self>> {
        let path = root.join("cluster.json");
        let Ok(text) = std::fs::read_to_string(&path) else {
            return Ok(None);
        };
        let doc: Value = serde_json::from_str(&text)
            .with_context(|| format!("{} is not JSON", path.display()))?;
        let field = |v: &Value, name: &str| -> anyhow::Result<String> {
            v[name]
                .as_str()
                .map(str::to_owned)
                .ok_or_else(|| anyhow!("{}: no {name}", path.display()))
        };
        let mut nodes = Vec::new();
        for node in doc["nodes"].as_array().into_iter().flatten() {
            nodes.push(Manager {
                id: node["id"]
                    .as_u64()
                    .ok_or_else(|| anyhow!("{}: node without id", path.display()))?,
                dir: PathBuf::from(field(node, "dir")?),
                raft: field(node, "raft")?,
                api: field(node, "api")?,
                sync: field(node, "sync")?,
                proc: None,
            });
        }
        if nodes.is_empty() {
            bail!("{}: no nodes", path.display());
        }
        let ca_pem = std::fs::read_to_string(nodes[0].dir.join("tls/ca.pem"))?;
        let mut managers = Self {
            bin: bin.to_owned(),
            http: HttpClient::new(&ca_pem).map_err(|e| anyhow!("{e}"))?,
            nodes,
            token: field(&doc, "token")?,
            ca_pem,
            env: env
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        };
        for index in 0..managers.nodes.len() {
            managers.serve(index)?;
        }
        managers.wait_leader().await?;
        Ok(Some(managers))
    }

    /// Stops every running node with SIGTERM (SIGKILL after `grace`).
    pub fn terminate_all(&mut self, grace: Duration) {
        for node in &mut self.nodes {
            if let Some(mut proc) = node.proc.take() {
                proc.terminate(grace);
            }
        }
    }

    /// The log file of node `index`.
    pub fn log_path(&self, index: usize) -> PathBuf {
        self.nodes[index].log()
    }

    fn spawn(&self, args: &[String], log: &Path) -> anyhow::Result<Proc> {
        let env: Vec<(&str, &str)> = self
            .env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        Proc::spawn(&self.bin, args, log, &env)
    }

    /// Starts node `index` (its data directory must exist).
    pub fn serve(&mut self, index: usize) -> anyhow::Result<()> {
        let node = &self.nodes[index];
        let args = vec![
            "manager".to_owned(),
            "serve".to_owned(),
            "--data-dir".to_owned(),
            node.dir.display().to_string(),
        ];
        let proc = self.spawn(&args, &node.log())?;
        self.nodes[index].proc = Some(proc);
        Ok(())
    }

    /// SIGKILLs node `index`.
    pub fn kill(&mut self, index: usize) {
        if let Some(mut proc) = self.nodes[index].proc.take() {
            proc.kill();
        }
    }

    /// The sync addresses of every node, comma-separated (the agents' `--manager`).
    pub fn sync_addrs(&self) -> String {
        self.nodes
            .iter()
            .map(|n| n.sync.as_str())
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Calls the admin API on the first running node that answers; returns status and JSON.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<(&str, &str)>,
    ) -> anyhow::Result<(StatusCode, Value)> {
        let mut last = anyhow!("no manager is running");
        for node in self.nodes.iter().filter(|n| n.is_up()) {
            match self.call_node(node, method.clone(), path, body).await {
                Ok(answer) => return Ok(answer),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// Calls the admin API of one node.
    pub async fn call_node(
        &self,
        node: &Manager,
        method: Method,
        path: &str,
        body: Option<(&str, &str)>,
    ) -> anyhow::Result<(StatusCode, Value)> {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_str(&format!("Bearer {}", self.token))?,
        );
        let body = match body {
            Some((content_type, text)) => {
                headers.insert(header::CONTENT_TYPE, HeaderValue::from_str(content_type)?);
                Bytes::from(text.to_owned())
            }
            None => Bytes::new(),
        };
        let url = format!("https://{}{path}", node.api);
        let reply = tokio::time::timeout(
            Duration::from_secs(10),
            self.http.call(method, &url, &headers, body),
        )
        .await
        .map_err(|_| anyhow!("{url}: no answer in 10 s"))?
        .map_err(|e| anyhow!("{url}: {e}"))?;
        let json = serde_json::from_slice(&reply.body).unwrap_or(Value::Null);
        Ok((reply.status, json))
    }

    /// Waits until the cluster (as any running node sees it) has a leader and exactly these
    /// voters.
    pub async fn wait_voters(&self, voters: &[u64]) -> anyhow::Result<Value> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Ok((StatusCode::OK, status)) =
                self.call(Method::GET, "/api/v1/cluster", None).await
            {
                let have: Vec<u64> = status["voters"]
                    .as_array()
                    .map(|v| v.iter().filter_map(Value::as_u64).collect())
                    .unwrap_or_default();
                if !status["leader"].is_null() && have == voters {
                    return Ok(status);
                }
            }
            if Instant::now() > deadline {
                bail!(
                    "the cluster did not reach voters {voters:?} with a leader in {READY_TIMEOUT:?}"
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The index of the current leader, as the first answering node sees it.
    pub async fn leader(&self) -> anyhow::Result<usize> {
        let status = self.wait_leader().await?;
        let id = status["leader"]
            .as_u64()
            .ok_or_else(|| anyhow!("no leader"))?;
        self.nodes
            .iter()
            .position(|n| n.id == id)
            .ok_or_else(|| anyhow!("leader {id} is not one of ours"))
    }

    /// Waits until some running node reports a leader that is running.
    pub async fn wait_leader(&self) -> anyhow::Result<Value> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Ok((StatusCode::OK, status)) =
                self.call(Method::GET, "/api/v1/cluster", None).await
                && let Some(id) = status["leader"].as_u64()
                && self.nodes.iter().any(|n| n.id == id && n.is_up())
            {
                return Ok(status);
            }
            if Instant::now() > deadline {
                bail!("no leader within {READY_TIMEOUT:?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Applies a YAML bundle; retries through leader changes; returns the new revision.
    pub async fn apply(&self, yaml: &str) -> anyhow::Result<u64> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let answer = self
                .call(
                    Method::POST,
                    "/api/v1/apply",
                    Some(("application/yaml", yaml)),
                )
                .await;
            match answer {
                Ok((StatusCode::OK, body)) => {
                    return body["revision"]
                        .as_u64()
                        .ok_or_else(|| anyhow!("apply answered without a revision: {body}"));
                }
                Ok((status, body)) if status != StatusCode::SERVICE_UNAVAILABLE => {
                    bail!("apply refused: {status} {body}")
                }
                _ if Instant::now() > deadline => bail!("apply kept failing: {answer:?}"),
                _ => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }

    /// A new agent join token for `max_uses` agents (0: any number).
    pub async fn join_token(&self, max_uses: u32) -> anyhow::Result<String> {
        let body = format!(r#"{{"ttl_secs": 3600, "max_uses": {max_uses}}}"#);
        let (status, answer) = self
            .call(
                Method::POST,
                "/api/v1/join-tokens",
                Some(("application/json", &body)),
            )
            .await?;
        if status != StatusCode::OK {
            bail!("join token refused: {status} {answer}");
        }
        answer["token"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| anyhow!("no token in {answer}"))
    }

    /// `GET /api/v1/agents` (optionally for the rollout of `revision`).
    pub async fn agents(&self, revision: Option<u64>) -> anyhow::Result<Value> {
        let path = match revision {
            Some(r) => format!("/api/v1/agents?revision={r}"),
            None => "/api/v1/agents".to_owned(),
        };
        let (status, body) = self.call(Method::GET, &path, None).await?;
        if status != StatusCode::OK {
            bail!("agents: {status} {body}");
        }
        Ok(body)
    }
}

/// One agent process in manager mode.
#[derive(Debug)]
pub struct Agent {
    bin: PathBuf,
    pub name: String,
    pub dir: PathBuf,
    pub listen: String,
    pub admin: String,
    pub labels: String,
    pub managers: String,
    pub join: Option<String>,
    pub env: Vec<(String, String)>,
    proc: Option<Proc>,
}

impl Agent {
    /// Describes (does not start) an agent named `name` under `root`.
    pub fn new(
        bin: &Path,
        root: &Path,
        name: &str,
        labels: &str,
        managers: &str,
        join: Option<&str>,
    ) -> Self {
        Self {
            bin: bin.to_owned(),
            name: name.to_owned(),
            dir: root.join(name),
            listen: free_tcp(),
            admin: free_tcp(),
            labels: labels.to_owned(),
            managers: managers.to_owned(),
            join: join.map(str::to_owned),
            env: Vec::new(),
            proc: None,
        }
    }

    pub fn start(&mut self) -> anyhow::Result<()> {
        let mut args: Vec<String> = [
            "agent",
            "--manager",
            &self.managers,
            "--data-dir",
            &self.dir.display().to_string(),
            "--name",
            &self.name,
            "--listen",
            &self.listen,
            "--admin",
            &self.admin,
            "--workers",
            "1",
            "--access-log",
            "off",
        ]
        .iter()
        .map(ToString::to_string)
        .collect();
        if !self.labels.is_empty() {
            args.extend(["--labels".to_owned(), self.labels.clone()]);
        }
        if let Some(join) = &self.join {
            args.extend(["--join".to_owned(), join.clone()]);
        }
        let env: Vec<(&str, &str)> = self
            .env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        std::fs::create_dir_all(&self.dir)?;
        self.proc = Some(Proc::spawn(
            &self.bin,
            &args,
            &self.dir.with_extension("log"),
            &env,
        )?);
        Ok(())
    }

    pub fn kill(&mut self) {
        if let Some(mut proc) = self.proc.take() {
            proc.kill();
        }
    }

    /// SIGTERM (the agent drains), SIGKILL after `grace`.
    pub fn terminate(&mut self, grace: Duration) {
        if let Some(mut proc) = self.proc.take() {
            proc.terminate(grace);
        }
    }

    pub fn is_up(&self) -> bool {
        self.proc.is_some()
    }

    /// If the process has exited (typically: another process took one of its ports between
    /// the choice and the bind), picks new ports on the same addresses and starts it again.
    /// Returns whether it restarted.
    pub fn restart_if_exited(&mut self) -> anyhow::Result<bool> {
        let exited = self.proc.as_mut().is_some_and(|p| !p.is_running());
        if !exited {
            return Ok(false);
        }
        self.proc = None;
        let ip = |addr: &str| {
            addr.parse::<SocketAddr>()
                .ok()
                .and_then(|a| match a.ip() {
                    std::net::IpAddr::V4(ip) => Some(ip),
                    std::net::IpAddr::V6(_) => None,
                })
                .unwrap_or(std::net::Ipv4Addr::LOCALHOST)
        };
        self.listen = free_tcp_on(ip(&self.listen));
        self.admin = free_tcp_on(ip(&self.admin));
        self.start()?;
        Ok(true)
    }

    /// `GET path` on the agent's HTTP listener: status and body, or `None` if the request
    /// failed at the connection level.
    pub fn get(&self, path: &str) -> Option<(u16, String)> {
        http_get(&self.listen, path)
    }

    /// The agent's `/config` (admin listener), if it answers.
    pub fn config(&self) -> Option<Value> {
        let (status, body) = http_get(&self.admin, "/config")?;
        (status == 200)
            .then(|| serde_json::from_str(&body).ok())
            .flatten()
    }

    /// The revision the agent serves, if it answers.
    pub fn revision(&self) -> Option<u64> {
        self.config()?["revision"].as_u64()
    }

    /// Its agent id, once enrolled.
    pub fn agent_id(&self) -> Option<String> {
        self.config()?["sync"]["agent_id"]
            .as_str()
            .map(str::to_owned)
    }
}

/// A bare HTTP/1.1 GET with `Connection: close`, so that nothing but the agent is measured.
pub fn http_get(addr: &str, path: &str) -> Option<(u16, String)> {
    let addr: SocketAddr = addr.parse().ok()?;
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: test.local\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let status = response.split(' ').nth(1)?.parse().ok()?;
    let body = response.split_once("\r\n\r\n").map(|(_, b)| b.to_owned())?;
    Some((status, body))
}

/// Polls `check` every 50 ms until it returns `Some`, or fails after `timeout` with `what`.
pub async fn eventually<T>(
    timeout: Duration,
    what: &str,
    mut check: impl FnMut() -> Option<T>,
) -> anyhow::Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check() {
            return Ok(value);
        }
        if Instant::now() > deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
