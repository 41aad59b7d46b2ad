//! `manager-bench`: commit latency, write throughput and leader failover time of a three-node
//! manager cluster on loopback, with real `fleetgate-manager` processes.
//!
//! ```sh
//! cargo build --release --workspace --bins
//! target/release/manager-bench            # finds target/release/fleetgate-manager next to itself
//! ```
//!
//! Phases (progress on stderr, results on stdout: a table, then one line of JSON):
//! 1. disk: `write` + `fdatasync` of 4 KiB appended to a file in the work directory, the floor
//!    of what a durable log append costs there (the store flushes sled before acknowledging).
//! 2. commit latency: N sequential writes, each one `POST /api/v1/apply` of a bundle changing one
//!    service and one route, sent to the leader over one kept-alive HTTPS connection; the time
//!    from sending to the 200 answer (committed by a quorum and applied on the leader). The same
//!    through a follower, which forwards to the leader.
//! 3. throughput: C writers (each its own service/route pair and connection) for D seconds.
//! 4. failover: T trials of SIGKILL the leader, then retry a write through a surviving node
//!    until one is acknowledged; the time from the kill to that 200. The killed node is
//!    restarted and the cluster waits for three healthy voters between trials.
//!
//! Goals (issue #4): commit p99 ≤ 20 ms, failover p99 ≤ 2 s.

use std::fs::{self, File, OpenOptions};
use std::io::Write as _;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow, bail};
use bytes::Bytes;
use clap::Parser;
use fleetgate_manager::api::ClusterStatus;
use fleetgate_manager::http_client::HttpClient;
use fleetgate_manager::tls::{NODE_SERVER_NAME, client_config};
use http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use http_body_util::{BodyExt as _, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use rustls_pki_types::ServerName;
use serde_json::json;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

const COMMIT_GOAL_P99_MS: f64 = 20.0;
const FAILOVER_GOAL_P99_MS: f64 = 2000.0;
/// How long starting, joining and recovering nodes may take before the bench gives up.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// One request attempt; a failover attempt that hangs this long is abandoned and retried.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// Pause between failover attempts that were refused (503, connection refused).
const RETRY_PAUSE: Duration = Duration::from_millis(10);

#[derive(Debug, Parser)]
#[command(about = "Commit latency, throughput and failover of a 3-node fleetgate-manager cluster")]
struct Args {
    /// The `fleetgate-manager` binary (default: next to this one).
    #[arg(long)]
    manager_bin: Option<PathBuf>,
    /// Where the nodes' data directories and logs go (default: a new directory in the system
    /// temp directory, removed at the end unless --keep).
    #[arg(long)]
    work_dir: Option<PathBuf>,
    /// Keep the work directory (data and node logs).
    #[arg(long)]
    keep: bool,
    /// Sequential writes for the commit latency.
    #[arg(long, default_value_t = 500)]
    writes: usize,
    /// Concurrent writers for the throughput phase.
    #[arg(long, default_value_t = 8)]
    writers: usize,
    /// Seconds of the throughput phase.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Failover trials.
    #[arg(long, default_value_t = 20)]
    trials: usize,
    /// fdatasync samples for the disk floor.
    #[arg(long, default_value_t = 200)]
    fsyncs: usize,
}

fn free_addr() -> anyhow::Result<String> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.to_string())
}

/// Latency samples and their summary.
#[derive(Debug, Clone, Copy)]
struct Summary {
    n: usize,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    mean_ms: f64,
}

fn summarize(samples: &[Duration]) -> Summary {
    let mut ms: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1000.0).collect();
    ms.sort_by(f64::total_cmp);
    // Nearest rank: the smallest sample with at least q of the samples at or below it.
    let rank = |q: f64| -> f64 {
        if ms.is_empty() {
            return f64::NAN;
        }
        let index = ((q * ms.len() as f64).ceil() as usize).clamp(1, ms.len()) - 1;
        ms[index]
    };
    Summary {
        n: ms.len(),
        p50_ms: rank(0.50),
        p99_ms: rank(0.99),
        max_ms: ms.last().copied().unwrap_or(f64::NAN),
        mean_ms: if ms.is_empty() {
            f64::NAN
        } else {
            ms.iter().sum::<f64>() / ms.len() as f64
        },
    }
}

impl Summary {
    fn json(&self) -> serde_json::Value {
        let round = |x: f64| (x * 1000.0).round() / 1000.0;
        json!({
            "n": self.n,
            "p50_ms": round(self.p50_ms),
            "p99_ms": round(self.p99_ms),
            "max_ms": round(self.max_ms),
            "mean_ms": round(self.mean_ms),
        })
    }

    fn row(&self, what: &str) -> String {
        format!(
            "{what:<44} {:>6} {:>10.2} {:>10.2} {:>10.2} {:>10.2}",
            self.n, self.p50_ms, self.p99_ms, self.max_ms, self.mean_ms
        )
    }
}

/// One manager process.
struct BenchNode {
    id: u64,
    dir: PathBuf,
    raft: String,
    api: String,
    sync: String,
    child: Option<Child>,
    starts: usize,
}

impl BenchNode {
    fn new(root: &Path, id: u64) -> anyhow::Result<Self> {
        Ok(Self {
            id,
            dir: root.join(format!("node-{id}")),
            raft: free_addr()?,
            api: free_addr()?,
            sync: free_addr()?,
            child: None,
            starts: 0,
        })
    }

    fn node_args(&self) -> Vec<String> {
        vec![
            "--data-dir".to_owned(),
            self.dir.display().to_string(),
            "--node-id".to_owned(),
            self.id.to_string(),
            "--raft-addr".to_owned(),
            self.raft.clone(),
            "--api-addr".to_owned(),
            self.api.clone(),
            "--sync-addr".to_owned(),
            self.sync.clone(),
        ]
    }

    fn log_path(&self, start: usize) -> PathBuf {
        self.dir
            .with_file_name(format!("node-{}.run-{start}.log", self.id))
    }

    /// Starts `bin ARGS` with stderr in a log file of this start.
    fn spawn(&mut self, bin: &Path, args: &[String]) -> anyhow::Result<()> {
        let log = File::create(self.log_path(self.starts))?;
        self.starts += 1;
        let child = Command::new(bin)
            .args(args)
            .env("NO_COLOR", "1")
            .env_remove("FLEETGATE_SNAPSHOT_EVERY")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        self.child = Some(child);
        Ok(())
    }

    fn serve(&mut self, bin: &Path) -> anyhow::Result<()> {
        let args = vec![
            "serve".to_owned(),
            "--data-dir".to_owned(),
            self.dir.display().to_string(),
        ];
        self.spawn(bin, &args)
    }

    /// SIGKILL.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Lines of this node's logs that report a panic.
    fn panics(&self) -> Vec<String> {
        (0..self.starts)
            .flat_map(|start| {
                fs::read_to_string(self.log_path(start))
                    .unwrap_or_default()
                    .lines()
                    .filter(|l| l.contains("panicked"))
                    .map(|l| format!("node {} run {start}: {l}", self.id))
                    .collect::<Vec<_>>()
            })
            .collect()
    }
}

impl Drop for BenchNode {
    fn drop(&mut self) {
        self.kill();
    }
}

/// An admin API connection that is kept alive between requests (the commit latency should not
/// include a TCP and TLS handshake per write); reconnects after any failure.
struct Conn {
    connector: TlsConnector,
    addr: String,
    token: String,
    sender: Option<SendRequest<Full<Bytes>>>,
}

impl Conn {
    fn new(ca_pem: &str, addr: &str, token: &str) -> anyhow::Result<Self> {
        Ok(Self {
            connector: TlsConnector::from(client_config(ca_pem)?),
            addr: addr.to_owned(),
            token: token.to_owned(),
            sender: None,
        })
    }

    async fn connect(&self) -> Result<SendRequest<Full<Bytes>>, String> {
        let tcp = TcpStream::connect(&self.addr)
            .await
            .map_err(|e| format!("connect {}: {e}", self.addr))?;
        let _ = tcp.set_nodelay(true);
        let name = ServerName::try_from(NODE_SERVER_NAME).map_err(|e| e.to_string())?;
        let tls = self
            .connector
            .connect(name, tcp)
            .await
            .map_err(|e| format!("TLS: {e}"))?;
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(connection);
        Ok(sender)
    }

    async fn request_inner(
        &mut self,
        method: Method,
        path: &str,
        body: Bytes,
    ) -> Result<(StatusCode, Bytes), String> {
        let mut sender = match self.sender.take() {
            Some(sender) if !sender.is_closed() => sender,
            _ => self.connect().await?,
        };
        sender.ready().await.map_err(|e| e.to_string())?;
        let request = http::Request::builder()
            .method(method)
            .uri(path)
            .header(header::HOST, &self.addr)
            .header(header::AUTHORIZATION, format!("Bearer {}", self.token))
            .body(Full::new(body))
            .map_err(|e| e.to_string())?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| e.to_string())?;
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        self.sender = Some(sender);
        Ok((status, body))
    }

    /// One request, bounded by [`REQUEST_TIMEOUT`]; the connection is dropped on failure.
    async fn request(
        &mut self,
        method: Method,
        path: &str,
        body: Bytes,
    ) -> Result<(StatusCode, Bytes), String> {
        match tokio::time::timeout(REQUEST_TIMEOUT, self.request_inner(method, path, body)).await {
            Ok(Ok(answer)) => Ok(answer),
            Ok(Err(e)) => {
                self.sender = None;
                Err(e)
            }
            Err(_) => {
                self.sender = None;
                Err("timed out".to_owned())
            }
        }
    }

    /// Writes change `seq` of writer `writer`; returns the committed revision.
    async fn write(&mut self, writer: usize, seq: u64) -> Result<u64, String> {
        let (status, body) = self
            .request(Method::POST, "/api/v1/apply", change(writer, seq))
            .await?;
        if status != StatusCode::OK {
            return Err(format!("{status}: {}", String::from_utf8_lossy(&body)));
        }
        let answer: serde_json::Value = serde_json::from_slice(&body).map_err(|e| e.to_string())?;
        answer["revision"]
            .as_u64()
            .ok_or_else(|| format!("no revision in {answer}"))
    }
}

/// A bundle that changes one service and the one route that uses it: writer `writer`'s pair,
/// at its `seq`-th version (the endpoint port and a response header differ every time).
fn change(writer: usize, seq: u64) -> Bytes {
    let port = 1024 + seq % 60_000;
    Bytes::from(format!(
        "kind: Service\nname: bench-svc-{writer}\nspec:\n  endpoints:\n    - address: 10.1.0.{}:{port}\n\
         ---\n\
         kind: Route\nname: bench-route-{writer}\nspec:\n  matches:\n    - path: {{prefix: /bench-{writer}}}\n  \
         forward:\n    backends:\n      - service: bench-svc-{writer}\n  \
         filters:\n    response_headers:\n      set:\n        x-bench-seq: \"{seq}\"\n",
        writer % 250 + 1
    ))
}

/// The three processes, the admin token and the cluster CA.
struct Cluster {
    bin: PathBuf,
    nodes: Vec<BenchNode>,
    token: String,
    ca: String,
    http: HttpClient,
}

impl Cluster {
    /// `init` + `serve` node 1, then `join` nodes 2 and 3 (learner → voter) one at a time.
    async fn start(bin: &Path, root: &Path) -> anyhow::Result<Self> {
        let mut first = BenchNode::new(root, 1)?;
        let mut args = vec!["init".to_owned()];
        args.extend(first.node_args());
        let out = Command::new(bin)
            .args(&args)
            .output()
            .with_context(|| format!("running {} init", bin.display()))?;
        if !out.status.success() {
            bail!("init failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        let token = String::from_utf8(out.stdout)?.trim().to_owned();
        let ca_path = first.dir.join("tls/ca.pem");
        let ca = fs::read_to_string(&ca_path)?;
        first.serve(bin)?;
        let mut cluster = Self {
            bin: bin.to_owned(),
            nodes: vec![first],
            token,
            ca: ca.clone(),
            http: HttpClient::new(&ca)?,
        };
        cluster.wait_voters(&[1]).await?;
        for id in [2, 3] {
            let mut node = BenchNode::new(root, id)?;
            let mut args = vec!["join".to_owned()];
            args.extend(node.node_args());
            args.extend(["--cluster".to_owned(), cluster.nodes[0].api.clone()]);
            args.extend(["--token".to_owned(), cluster.token.clone()]);
            args.extend(["--ca-cert".to_owned(), ca_path.display().to_string()]);
            node.spawn(bin, &args)?;
            cluster.nodes.push(node);
            let ids: Vec<u64> = cluster.nodes.iter().map(|n| n.id).collect();
            cluster.wait_voters(&ids).await?;
        }
        Ok(cluster)
    }

    async fn status(&self, index: usize) -> Option<ClusterStatus> {
        fetch_status(&self.http, &self.nodes[index].api, &self.token).await
    }

    /// Waits until every node in `ids` answers, all name the same leader, the voters are
    /// exactly `ids`, and all have applied the same revision. Returns the leader's index.
    async fn wait_voters(&self, ids: &[u64]) -> anyhow::Result<usize> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let mut statuses = Vec::new();
            for (index, node) in self.nodes.iter().enumerate() {
                if ids.contains(&node.id) {
                    statuses.push(self.status(index).await);
                }
            }
            let healthy = statuses.iter().all(|s| {
                s.as_ref().is_some_and(|s| {
                    s.leader.is_some()
                        && s.leader == statuses[0].as_ref().and_then(|f| f.leader)
                        && s.voters == ids
                        && Some(s.revision) == statuses[0].as_ref().map(|f| f.revision)
                })
            });
            if healthy && let Some(Some(first)) = statuses.first() {
                let leader = first.leader;
                if let Some(index) = self.nodes.iter().position(|n| Some(n.id) == leader) {
                    return Ok(index);
                }
            }
            let last: Vec<_> = statuses
                .iter()
                .map(|s| {
                    s.as_ref()
                        .map(|s| (s.node_id, s.leader, s.voters.clone(), s.revision))
                })
                .collect();
            if Instant::now() > deadline {
                bail!("the cluster never became healthy with voters {ids:?}: {last:?}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn conn(&self, index: usize) -> anyhow::Result<Conn> {
        Conn::new(&self.ca, &self.nodes[index].api, &self.token)
    }
}

/// `GET /api/v1/cluster` of the node at `addr` (a new connection each time).
async fn fetch_status(http: &HttpClient, addr: &str, token: &str) -> Option<ClusterStatus> {
    let mut headers = HeaderMap::new();
    headers.insert(
        header::AUTHORIZATION,
        HeaderValue::from_str(&format!("Bearer {token}")).ok()?,
    );
    let url = format!("https://{addr}/api/v1/cluster");
    let reply = tokio::time::timeout(
        REQUEST_TIMEOUT,
        http.call(Method::GET, &url, &headers, Bytes::new()),
    )
    .await
    .ok()?
    .ok()?;
    (reply.status == StatusCode::OK)
        .then(|| serde_json::from_slice(&reply.body).ok())
        .flatten()
}

/// `write` + `fdatasync` of 4 KiB appended to a file in `dir`, `n` times.
fn fsync_floor(dir: &Path, n: usize) -> anyhow::Result<Summary> {
    let path = dir.join("fsync-probe");
    let mut file = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(&path)?;
    let block = vec![0x5a_u8; 4096];
    let mut samples = Vec::with_capacity(n);
    for _ in 0..n {
        let start = Instant::now();
        file.write_all(&block)?;
        file.sync_data()?;
        samples.push(start.elapsed());
    }
    drop(file);
    fs::remove_file(&path)?;
    Ok(summarize(&samples))
}

/// `n` sequential writes through node `index`; returns their latencies.
async fn sequential(
    cluster: &Cluster,
    index: usize,
    writer: usize,
    n: usize,
) -> anyhow::Result<Vec<Duration>> {
    let mut conn = cluster.conn(index)?;
    // Warm-up: the connection, and the pair created once.
    for seq in 0..20 {
        conn.write(writer, seq).await.map_err(|e| anyhow!(e))?;
    }
    let mut samples = Vec::with_capacity(n);
    for i in 0..n {
        let start = Instant::now();
        conn.write(writer, 20 + i as u64)
            .await
            .map_err(|e| anyhow!("write {i} through node {}: {e}", cluster.nodes[index].id))?;
        samples.push(start.elapsed());
        if (i + 1) % 100 == 0 {
            eprintln!("  {} / {n}", i + 1);
        }
    }
    Ok(samples)
}

/// `writers` concurrent writers through node `index` for `seconds`; returns the latencies of
/// the acknowledged writes, the failures and the elapsed time.
async fn concurrent(
    cluster: &Cluster,
    index: usize,
    writers: usize,
    seconds: u64,
) -> anyhow::Result<(Vec<Duration>, usize, Duration)> {
    let start = Instant::now();
    let end = start + Duration::from_secs(seconds);
    let mut tasks = Vec::new();
    for w in 0..writers {
        let mut conn = cluster.conn(index)?;
        let writer = 100 + w;
        tasks.push(tokio::spawn(async move {
            let mut samples = Vec::new();
            let mut failures = 0;
            let mut seq = 0;
            while Instant::now() < end {
                let t = Instant::now();
                match conn.write(writer, seq).await {
                    Ok(_) => samples.push(t.elapsed()),
                    Err(_) => failures += 1,
                }
                seq += 1;
            }
            (samples, failures)
        }));
    }
    let progress = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(2));
        tick.tick().await;
        loop {
            tick.tick().await;
            eprintln!("  {:.0} s / {seconds} s", start.elapsed().as_secs_f64());
        }
    });
    let mut samples = Vec::new();
    let mut failures = 0;
    for task in tasks {
        let (s, f) = task.await?;
        samples.extend(s);
        failures += f;
    }
    progress.abort();
    Ok((samples, failures, start.elapsed()))
}

/// What one failover trial measured.
struct Failover {
    killed: u64,
    /// Kill → the first acknowledged write through a survivor.
    write: Duration,
    /// Kill → the survivor written through first names a new leader (polled every 20 ms).
    leader_known: Option<Duration>,
}

/// One failover trial: SIGKILL the leader, write through a survivor until acknowledged, then
/// restart the killed node (the next trial waits for three healthy voters first).
async fn failover_trial(cluster: &mut Cluster, trial: usize) -> anyhow::Result<Failover> {
    let ids: Vec<u64> = cluster.nodes.iter().map(|n| n.id).collect();
    let leader = cluster.wait_voters(&ids).await?;
    let survivors: Vec<usize> = (0..cluster.nodes.len()).filter(|i| *i != leader).collect();
    let through = survivors[trial % survivors.len()];
    let mut conn = cluster.conn(through)?;
    // Connected before the kill: the measured time is the cluster's, not a handshake.
    conn.request(Method::GET, "/api/v1/cluster", Bytes::new())
        .await
        .map_err(|e| anyhow!(e))?;
    let killed_id = cluster.nodes[leader].id;
    let poller = {
        let (http, addr, token) = (
            cluster.http.clone(),
            cluster.nodes[through].api.clone(),
            cluster.token.clone(),
        );
        move |start: Instant| async move {
            while start.elapsed() < READY_TIMEOUT {
                if let Some(status) = fetch_status(&http, &addr, &token).await
                    && status.leader.is_some_and(|l| l != killed_id)
                {
                    return Some(start.elapsed());
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            None
        }
    };
    let start = Instant::now();
    cluster.nodes[leader].kill();
    let leader_known = tokio::spawn(poller(start));
    let mut seq = 0;
    let elapsed = loop {
        seq += 1;
        if conn.write(1000 + trial, seq).await.is_ok() {
            break start.elapsed();
        }
        if start.elapsed() > READY_TIMEOUT {
            bail!("trial {trial}: no write acknowledged within {READY_TIMEOUT:?} of the kill");
        }
        tokio::time::sleep(RETRY_PAUSE).await;
    };
    let leader_known = leader_known.await?;
    let bin = cluster.bin.clone();
    cluster.nodes[leader].serve(&bin)?;
    Ok(Failover {
        killed: killed_id,
        write: elapsed,
        leader_known,
    })
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(run(args))
}

async fn run(args: Args) -> anyhow::Result<()> {
    let bin = match &args.manager_bin {
        Some(bin) => bin.clone(),
        None => std::env::current_exe()?
            .parent()
            .ok_or_else(|| anyhow!("no directory for the current executable"))?
            .join("fleetgate-manager"),
    };
    if !bin.exists() {
        bail!(
            "{} does not exist: build it (cargo build --release --workspace --bins) or pass --manager-bin",
            bin.display()
        );
    }
    let root = match &args.work_dir {
        Some(dir) => dir.clone(),
        None => std::env::temp_dir().join(format!("manager-bench-{}", std::process::id())),
    };
    fs::create_dir_all(&root)?;
    eprintln!("manager-bench: {} in {}", bin.display(), root.display());
    let result = phases(&args, &bin, &root).await;
    if args.keep || result.is_err() {
        eprintln!("kept {}", root.display());
    } else {
        let _ = fs::remove_dir_all(&root);
    }
    result
}

async fn phases(args: &Args, bin: &Path, root: &Path) -> anyhow::Result<()> {
    eprintln!(
        "[1/5] disk floor: {} × 4 KiB write + fdatasync",
        args.fsyncs
    );
    let fsync = fsync_floor(root, args.fsyncs)?;

    eprintln!("[2/5] starting a 3-node cluster (init, 2 × join)");
    let started = Instant::now();
    let mut cluster = Cluster::start(bin, root).await?;
    let leader = cluster.wait_voters(&[1, 2, 3]).await?;
    eprintln!(
        "  ready in {:.1} s; leader: node {}",
        started.elapsed().as_secs_f64(),
        cluster.nodes[leader].id
    );

    eprintln!(
        "[3/5] commit latency: {} sequential writes to the leader, then to a follower",
        args.writes
    );
    let direct = summarize(&sequential(&cluster, leader, 0, args.writes).await?);
    let follower = (leader + 1) % cluster.nodes.len();
    let forwarded = summarize(&sequential(&cluster, follower, 1, args.writes).await?);

    eprintln!(
        "[4/5] throughput: {} writers to the leader for {} s",
        args.writers, args.seconds
    );
    let (samples, failures, elapsed) =
        concurrent(&cluster, leader, args.writers, args.seconds).await?;
    let loaded = summarize(&samples);
    let per_second = samples.len() as f64 / elapsed.as_secs_f64();

    eprintln!(
        "[5/5] failover: {} trials of SIGKILL the leader",
        args.trials
    );
    let mut failovers = Vec::new();
    let mut elections = Vec::new();
    for trial in 0..args.trials {
        let result = failover_trial(&mut cluster, trial).await?;
        let ms = |d: Option<Duration>| d.map_or(f64::NAN, |d| d.as_secs_f64() * 1000.0);
        eprintln!(
            "  trial {:>2}: killed node {}, new leader seen after {:.0} ms, first write acknowledged after {:.0} ms",
            trial + 1,
            result.killed,
            ms(result.leader_known),
            ms(Some(result.write)),
        );
        failovers.push(result.write);
        elections.extend(result.leader_known);
    }
    cluster.wait_voters(&[1, 2, 3]).await?;
    let failover = summarize(&failovers);
    let election = summarize(&elections);
    let panics: Vec<String> = cluster.nodes.iter().flat_map(BenchNode::panics).collect();
    for node in &mut cluster.nodes {
        node.kill();
    }

    let commit_ok = direct.p99_ms <= COMMIT_GOAL_P99_MS;
    let failover_ok = failover.p99_ms <= FAILOVER_GOAL_P99_MS;
    let verdict = |ok: bool| if ok { "met" } else { "MISSED" };
    println!();
    println!(
        "{:<44} {:>6} {:>10} {:>10} {:>10} {:>10}",
        "measurement", "n", "p50 ms", "p99 ms", "max ms", "mean ms"
    );
    println!("{}", "-".repeat(95));
    println!("{}", fsync.row("disk: 4 KiB append + fdatasync"));
    println!("{}", direct.row("commit, sequential, to the leader"));
    println!("{}", forwarded.row("commit, sequential, via a follower"));
    println!(
        "{}",
        loaded.row(&format!("commit, {} concurrent writers", args.writers))
    );
    println!(
        "{}",
        election.row("failover: SIGKILL leader → new leader seen")
    );
    println!("{}", failover.row("failover: SIGKILL leader → write acked"));
    println!("{}", "-".repeat(95));
    println!(
        "throughput: {per_second:.0} writes/s ({} acknowledged, {failures} failed, {} writers, {:.1} s)",
        samples.len(),
        args.writers,
        elapsed.as_secs_f64()
    );
    println!(
        "goals: commit p99 ≤ {COMMIT_GOAL_P99_MS} ms: {} ({:.2} ms); failover p99 ≤ {FAILOVER_GOAL_P99_MS} ms: {} ({:.0} ms)",
        verdict(commit_ok),
        direct.p99_ms,
        verdict(failover_ok),
        failover.p99_ms
    );
    if !panics.is_empty() {
        println!("node panics:");
        for line in &panics {
            println!("  {line}");
        }
    }
    let summary = json!({
        "bench": "manager",
        "fsync": fsync.json(),
        "commit_leader": direct.json(),
        "commit_forwarded": forwarded.json(),
        "concurrent": {
            "writers": args.writers,
            "seconds": elapsed.as_secs_f64(),
            "acknowledged": samples.len(),
            "failed": failures,
            "writes_per_s": per_second.round(),
            "latency": loaded.json(),
        },
        "failover": failover.json(),
        "failover_leader_seen": election.json(),
        "goals": {"commit_p99_le_20ms": commit_ok, "failover_p99_le_2s": failover_ok},
        "node_panics": panics.len(),
    });
    println!("{summary}");
    Ok(())
}
