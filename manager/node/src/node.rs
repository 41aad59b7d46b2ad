//! What the binary's subcommands do: create a cluster (`init`), run a node (`serve`), add a
//! node to a running cluster (`join`) and remove one (`leave`).

use std::collections::BTreeMap;
use std::fs;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use fleetgate_manager_store::{ConfigReader, ManagerNode, NodeId, Store, TypeConfig};
use http::{HeaderMap, HeaderValue, Method, StatusCode};
use openraft::{Config, Raft, SnapshotPolicy};
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;

use crate::Error;
use crate::auth::{Role, new_token};
use crate::http_client::HttpClient;
use crate::network::NetworkFactory;
use crate::settings::{DataDir, NodeSettings, write_file};
use crate::tls::NodeTls;
use crate::transport::{GrpcTransport, RaftService};

/// Leader heartbeats. openraft 0.9 checks its timers on a tick of 1.5 × this, so a heartbeat
/// leaves the leader every 150 ms: several per election timeout even on a busy machine.
const HEARTBEAT_MS: u64 = 100;
/// Election timeouts. The failover goal is 2 s (p99) from the leader's death to the first
/// acknowledged write. In openraft 0.9 a follower that has seen a leader refuses votes for a
/// lease of `election_timeout_max` after the last heartbeat and stands only after lease +
/// its own election timeout (drawn once per process from min..max), checked on the 150 ms tick:
/// with 400–800 ms that is 1.2–1.6 s (+ one tick) of silence, so the first candidate stands at
/// most ~1.75 s after the last heartbeat. The same sum is the slack before a spurious
/// election: more than 1.2 s without a heartbeat, eight missed ticks. (The previous
/// 150 ms / 600–1200 ms gave 1.8–2.4 s + a tick: failover p99 ~2.5 s, see docs/benchmarks.md.)
const ELECTION_TIMEOUT_MIN_MS: u64 = 400;
const ELECTION_TIMEOUT_MAX_MS: u64 = 800;
/// Build a snapshot (and allow purging the log before it) every this many applied entries.
const SNAPSHOT_EVERY: u64 = 1000;
/// Snapshot bytes per InstallSnapshot RPC. The chunk travels as a JSON array of numbers (up to
/// 4 bytes per byte), so 1 MiB stays well under the gRPC message limit.
const SNAPSHOT_CHUNK_BYTES: u64 = 1024 * 1024;
/// How long `join` and `leave` keep retrying a cluster that has no leader or cannot be reached:
/// longer than an election, short enough for an operator to see a real failure.
const RETRY_FOR: Duration = Duration::from_secs(30);
const RETRY_PAUSE: Duration = Duration::from_millis(200);
/// How long `init` waits for the new single-node cluster to elect itself.
const INIT_TIMEOUT: Duration = Duration::from_secs(10);
/// The name of the bootstrap admin token.
pub const BOOTSTRAP_TOKEN_NAME: &str = "bootstrap-admin";

/// A running node's shared parts, used by the API handlers.
#[derive(Clone)]
pub struct NodeCtx {
    pub id: NodeId,
    pub addrs: ManagerNode,
    pub raft: Raft<TypeConfig>,
    pub reader: ConfigReader,
    pub tls: Arc<NodeTls>,
    pub http: HttpClient,
    /// Raft gRPC to the other managers, for commands handed to the leader.
    pub peers: GrpcTransport,
    /// The agents connected to this node's sync endpoint.
    pub fleet: Arc<crate::fleet::Fleet>,
    /// How long the agent certificates this node signs are valid.
    pub agent_cert_ttl: Duration,
}

impl std::fmt::Debug for NodeCtx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeCtx")
            .field("id", &self.id)
            .field("addrs", &self.addrs)
            .finish_non_exhaustive()
    }
}

/// Overrides [`SNAPSHOT_EVERY`] and keeps no log behind a snapshot: a knob for tests and
/// benchmarks that need followers to catch up by snapshot install, not for production.
pub const SNAPSHOT_EVERY_ENV: &str = "FLEETGATE_SNAPSHOT_EVERY";

fn raft_config() -> Result<Arc<Config>, Error> {
    let mut config = Config {
        cluster_name: "fleetgate".to_owned(),
        heartbeat_interval: HEARTBEAT_MS,
        election_timeout_min: ELECTION_TIMEOUT_MIN_MS,
        election_timeout_max: ELECTION_TIMEOUT_MAX_MS,
        snapshot_policy: SnapshotPolicy::LogsSinceLast(SNAPSHOT_EVERY),
        snapshot_max_chunk_size: SNAPSHOT_CHUNK_BYTES,
        ..Config::default()
    };
    if let Ok(value) = std::env::var(SNAPSHOT_EVERY_ENV) {
        let every: u64 = value
            .parse()
            .map_err(|_| Error::Usage(format!("{SNAPSHOT_EVERY_ENV}={value} is not a number")))?;
        config.snapshot_policy = SnapshotPolicy::LogsSinceLast(every);
        config.max_in_snapshot_log_to_keep = 0;
        config.purge_batch_size = 1;
    }
    Ok(Arc::new(
        config.validate().map_err(|e| Error::Raft(e.to_string()))?,
    ))
}

async fn open_raft(
    dir: &DataDir,
    settings: &NodeSettings,
    tls: &NodeTls,
) -> Result<(Raft<TypeConfig>, ConfigReader), Error> {
    let store = Store::open(&dir.store())?;
    let reader = store.reader();
    let network = NetworkFactory::new(GrpcTransport::new(tls));
    let raft = Raft::new(
        settings.node_id,
        raft_config()?,
        network,
        store.log,
        store.state_machine,
    )
    .await
    .map_err(|e| Error::Raft(e.to_string()))?;
    Ok((raft, reader))
}

/// What `init` produced.
#[derive(Debug)]
pub struct Initialized {
    /// The bootstrap admin token, shown once.
    pub admin_token: String,
}

/// Creates a new cluster of one node in `dir`: the data directory, the cluster CA and this
/// node's certificate, a Raft membership of this node alone, and the bootstrap admin token
/// (hashed in the replicated state, in clear in the 0600 file `admin.token`).
pub async fn init(dir: &DataDir, settings: &NodeSettings) -> Result<Initialized, Error> {
    if dir.settings().exists() {
        return Err(Error::Usage(format!(
            "{} already holds a node; refusing to initialize it again",
            dir.root().display()
        )));
    }
    fs::create_dir_all(dir.root()).map_err(|e| Error::io(dir.root(), e))?;
    let tls = NodeTls::bootstrap(settings.node_id, &crate::tls::hosts_of(&settings.addrs))?;
    tls.save(dir)?;
    let (admin_token, record) = new_token(
        BOOTSTRAP_TOKEN_NAME,
        Role::Admin,
        "init",
        crate::api::now_ms(),
    )?;
    write_file(
        &dir.admin_token(),
        format!("{admin_token}\n").as_bytes(),
        true,
    )?;

    let (raft, _reader) = open_raft(dir, settings, &tls).await?;
    let members = BTreeMap::from([(settings.node_id, settings.addrs.clone())]);
    raft.initialize(members)
        .await
        .map_err(|e| Error::Raft(e.to_string()))?;
    raft.wait(Some(INIT_TIMEOUT))
        .current_leader(settings.node_id, "init: elect self")
        .await
        .map_err(|e| Error::Raft(e.to_string()))?;
    let put = fleetgate_manager_store::Command::PutToken {
        author: "init".to_owned(),
        time_ms: record.created_ms,
        token: record,
    };
    raft.client_write(put)
        .await
        .map_err(|e| Error::Raft(e.to_string()))?;
    raft.shutdown()
        .await
        .map_err(|e| Error::Raft(e.to_string()))?;
    // Written last: a directory with `node.json` is a complete node.
    dir.save_settings(settings)?;
    Ok(Initialized { admin_token })
}

/// Overrides [`DEFAULT_AGENT_CERT_TTL`] (seconds): for tests of renewal, and for operators who
/// want shorter-lived agent certificates.
pub const AGENT_CERT_TTL_ENV: &str = "FLEETGATE_AGENT_CERT_TTL_SECS";
/// How long an agent certificate is valid. Agents renew at half of it; an agent cut off from
/// every manager for longer than this must enrol again (it keeps serving meanwhile).
pub const DEFAULT_AGENT_CERT_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

fn agent_cert_ttl() -> Result<Duration, Error> {
    match std::env::var(AGENT_CERT_TTL_ENV) {
        Ok(value) => value
            .parse::<u64>()
            .ok()
            .filter(|secs| *secs >= 10)
            .map(Duration::from_secs)
            .ok_or_else(|| {
                Error::Usage(format!(
                    "{AGENT_CERT_TTL_ENV}={value} is not a number of seconds of at least 10"
                ))
            }),
        Err(_) => Ok(DEFAULT_AGENT_CERT_TTL),
    }
}

/// Commits `command` through Raft from any node: locally on the leader, else handed to the
/// leader over the Raft gRPC channel (mutual TLS). Retries while there is no leader or the
/// leader changes, for up to [`RETRY_FOR`].
pub async fn propose_command(
    ctx: &NodeCtx,
    command: fleetgate_manager_store::Command,
) -> Result<fleetgate_manager_store::CommandResult, Error> {
    use crate::transport::{Proposed, RaftTransport, RpcKind};
    use openraft::error::{ClientWriteError, RaftError};
    let deadline = tokio::time::Instant::now() + RETRY_FOR;
    loop {
        let failure = match ctx.raft.client_write(command.clone()).await {
            Ok(response) => return Ok(response.data),
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(forward))) => {
                match forward.leader_node {
                    Some(leader) => {
                        let payload = serde_json::to_vec(&command)
                            .map_err(|e| Error::Cluster(e.to_string()))?;
                        match ctx
                            .peers
                            .call(&leader.raft_addr, RpcKind::Propose, payload)
                            .await
                        {
                            Ok(reply) => match serde_json::from_slice::<Proposed>(&reply) {
                                Ok(Proposed::Done(result)) => return Ok(result),
                                Ok(Proposed::NotLeader) => "the leader changed".to_owned(),
                                Ok(Proposed::Failed(e)) => return Err(Error::Raft(e)),
                                Err(e) => return Err(Error::Cluster(e.to_string())),
                            },
                            Err(e) => e.to_string(),
                        }
                    }
                    None => "no leader is known".to_owned(),
                }
            }
            Err(e) => return Err(Error::Raft(e.to_string())),
        };
        if tokio::time::Instant::now() >= deadline {
            return Err(Error::Cluster(format!("cannot commit: {failure}")));
        }
        tokio::time::sleep(RETRY_PAUSE / 2).await;
    }
}

/// A node started by [`start`]: its context and the tasks serving it.
#[derive(Debug)]
pub struct Running {
    pub ctx: NodeCtx,
    raft_server: tokio::task::JoinHandle<Result<(), Error>>,
    api_server: tokio::task::JoinHandle<Result<(), Error>>,
    sync_endpoint: Option<quinn::Endpoint>,
}

/// Starts the node stored in `dir`: Raft, the Raft gRPC server and the admin API.
pub async fn start(dir: &DataDir) -> Result<Running, Error> {
    let settings = dir.load_settings()?;
    let tls = NodeTls::load(dir)?;
    // Bind first, so that a taken port fails the start before Raft runs.
    let raft_listener = TcpListener::bind(&settings.addrs.raft_addr)
        .await
        .map_err(|e| Error::Serve(format!("bind {}: {e}", settings.addrs.raft_addr)))?;
    let api_listener = TcpListener::bind(&settings.addrs.api_addr)
        .await
        .map_err(|e| Error::Serve(format!("bind {}: {e}", settings.addrs.api_addr)))?;
    let sync_endpoint = if settings.addrs.sync_addr.is_empty() {
        None
    } else {
        Some(crate::sync::endpoint(&settings.addrs.sync_addr, &tls)?)
    };
    let (raft, reader) = open_raft(dir, &settings, &tls).await?;
    let ctx = NodeCtx {
        id: settings.node_id,
        addrs: settings.addrs.clone(),
        raft: raft.clone(),
        reader,
        http: HttpClient::new(&tls.ca_cert)?,
        peers: GrpcTransport::new(&tls),
        fleet: Arc::new(crate::fleet::Fleet::new(settings.node_id)),
        agent_cert_ttl: agent_cert_ttl()?,
        tls: Arc::new(tls),
    };
    let service = RaftService::new(raft);
    let server_tls = ctx.tls.clone();
    let raft_server = tokio::spawn(async move {
        service
            .serve(raft_listener, &server_tls, std::future::pending())
            .await
    });
    let app = crate::grpc_admin::admin_app(ctx.clone());
    let api_tls = crate::tls::api_server_config(&ctx.tls)?;
    let api_server =
        tokio::spawn(async move { crate::api::serve_tls(api_listener, app, api_tls).await });
    if let Some(endpoint) = &sync_endpoint {
        tokio::spawn(crate::sync::serve(endpoint.clone(), ctx.clone()));
    }
    tokio::spawn(log_leadership(ctx.raft.clone()));
    tracing::info!(
        node_id = settings.node_id,
        addrs = %settings.addrs,
        "manager node started"
    );
    Ok(Running {
        ctx,
        raft_server,
        api_server,
        sync_endpoint,
    })
}

/// Logs every change of term or leader this node sees (one line each, at info): elections,
/// spurious or not, are visible in a node's log without openraft's own debug output.
async fn log_leadership(raft: Raft<TypeConfig>) {
    let mut metrics = raft.metrics();
    let mut seen = (0, None);
    loop {
        let now = {
            let m = metrics.borrow_and_update();
            (m.current_term, m.current_leader)
        };
        if now != seen {
            tracing::info!(term = now.0, leader = ?now.1, "raft term or leader changed");
            seen = now;
        }
        if metrics.changed().await.is_err() {
            return;
        }
    }
}

impl Running {
    /// Runs until a server fails or the process is asked to stop (SIGINT, SIGTERM).
    pub async fn run(self) -> Result<(), Error> {
        let stop = async {
            #[cfg(unix)]
            {
                use tokio::signal::unix::{SignalKind, signal};
                match signal(SignalKind::terminate()) {
                    Ok(mut term) => {
                        tokio::select! {
                            _ = term.recv() => {}
                            _ = tokio::signal::ctrl_c() => {}
                        }
                    }
                    Err(_) => {
                        let _ = tokio::signal::ctrl_c().await;
                    }
                }
            }
            #[cfg(not(unix))]
            {
                let _ = tokio::signal::ctrl_c().await;
            }
        };
        let result = tokio::select! {
            r = self.raft_server => flatten(r),
            r = self.api_server => flatten(r),
            () = stop => Ok(()),
        };
        if let Some(endpoint) = &self.sync_endpoint {
            // Agents see the close at once and move to another manager.
            endpoint.close(0u32.into(), b"manager shutting down");
        }
        let _ = self.ctx.raft.shutdown().await;
        result
    }
}

fn flatten(r: Result<Result<(), Error>, tokio::task::JoinError>) -> Result<(), Error> {
    r.map_err(|e| Error::Serve(e.to_string()))?
        .and(Err(Error::Serve("a server stopped".to_owned())))
}

/// What a joining node receives from the cluster: its TLS material. (Tokens come with the
/// replicated state.)
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct JoinMaterial {
    pub tls: NodeTls,
}

/// The body of `POST /api/v1/cluster/certificates`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CertificateRequest {
    pub node_id: NodeId,
    /// Extra names for the certificate: the hosts of the node's addresses.
    #[serde(default)]
    pub hosts: Vec<String>,
}

/// The body of `POST /api/v1/cluster/members`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct MemberRequest {
    pub node_id: NodeId,
    #[serde(flatten)]
    pub addrs: ManagerNode,
}

fn auth_headers(token: &str) -> Result<HeaderMap, Error> {
    let mut headers = HeaderMap::new();
    let value = HeaderValue::from_str(&format!("Bearer {token}"))
        .map_err(|_| Error::Usage("the token is not a valid header value".to_owned()))?;
    headers.insert(http::header::AUTHORIZATION, value);
    headers.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Ok(headers)
}

/// Sends a JSON request with a bearer token; retries while the answer is 503 (no leader yet, or
/// a leader change while forwarding) or the node cannot be reached, until [`RETRY_FOR`] has
/// passed. Any other non-200 answer is an error at once.
async fn post_json<T: Serialize>(
    http: &HttpClient,
    method: Method,
    url: &str,
    token: &str,
    body: &T,
) -> Result<Bytes, Error> {
    let body = Bytes::from(serde_json::to_vec(body).map_err(|e| Error::Cluster(e.to_string()))?);
    let headers = auth_headers(token)?;
    let deadline = tokio::time::Instant::now() + RETRY_FOR;
    loop {
        let failure = match http.call(method.clone(), url, &headers, body.clone()).await {
            Ok(reply) if reply.status == StatusCode::OK => return Ok(reply.body),
            Ok(reply) if reply.status == StatusCode::SERVICE_UNAVAILABLE => format!(
                "{url}: {}: {}",
                reply.status,
                String::from_utf8_lossy(&reply.body)
            ),
            Ok(reply) => {
                return Err(Error::Cluster(format!(
                    "{url}: {}: {}",
                    reply.status,
                    String::from_utf8_lossy(&reply.body)
                )));
            }
            Err(e) => format!("{url}: {e}"),
        };
        if tokio::time::Instant::now() >= deadline {
            return Err(Error::Cluster(failure));
        }
        tracing::info!(%failure, "retrying");
        tokio::time::sleep(RETRY_PAUSE).await;
    }
}

/// Joins the cluster that `cluster_api` (any node's admin API address) belongs to: fetches TLS
/// material, starts this node, then asks the leader to add it as a learner and
/// promote it to voter. Returns the running node.
///
/// `ca_pem` is the cluster CA certificate (public; `tls/ca.pem` in any node's data directory):
/// the joining node trusts the cluster's admin API only if it presents a certificate of that CA,
/// so the token and the TLS material it receives cannot go to an impostor.
pub async fn join(
    dir: &DataDir,
    settings: &NodeSettings,
    cluster_api: &str,
    token: &str,
    ca_pem: &str,
) -> Result<Running, Error> {
    if dir.settings().exists() {
        return Err(Error::Usage(format!(
            "{} already holds a node; use `serve` to run it",
            dir.root().display()
        )));
    }
    fs::create_dir_all(dir.root()).map_err(|e| Error::io(dir.root(), e))?;
    let http = HttpClient::new(ca_pem)?;
    let body = post_json(
        &http,
        Method::POST,
        &format!("https://{cluster_api}/api/v1/cluster/certificates"),
        token,
        &CertificateRequest {
            node_id: settings.node_id,
            hosts: crate::tls::hosts_of(&settings.addrs),
        },
    )
    .await?;
    let material: JoinMaterial =
        serde_json::from_slice(&body).map_err(|e| Error::Cluster(e.to_string()))?;
    if material.tls.ca_cert.trim() != ca_pem.trim() {
        return Err(Error::Cluster(
            "the cluster sent a CA certificate other than the one given".to_owned(),
        ));
    }
    material.tls.save(dir)?;
    dir.save_settings(settings)?;
    let running = start(dir).await?;
    post_json(
        &http,
        Method::POST,
        &format!("https://{cluster_api}/api/v1/cluster/members"),
        token,
        &MemberRequest {
            node_id: settings.node_id,
            addrs: settings.addrs.clone(),
        },
    )
    .await?;
    tracing::info!(node_id = settings.node_id, "joined the cluster as a voter");
    Ok(running)
}

/// Asks the cluster (through this node's own admin API, which forwards to the leader) to remove
/// the node stored in `dir` from the membership.
pub async fn leave(dir: &DataDir, token: &str) -> Result<(), Error> {
    let settings = dir.load_settings()?;
    let url = format!(
        "https://{}/api/v1/cluster/members/{}",
        settings.addrs.api_addr, settings.node_id
    );
    let http = HttpClient::new(&NodeTls::load(dir)?.ca_cert)?;
    post_json(&http, Method::DELETE, &url, token, &()).await?;
    Ok(())
}
