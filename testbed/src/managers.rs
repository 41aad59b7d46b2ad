//! The manager cluster of `up`: `init` the first node, `join` the others, apply the demo bundle.
//!
//! Agents do not follow the managers yet (that is the sync protocol's issue): today the agent
//! serves the same bundle from its file, and the cluster shows the control plane working, with
//! the bundle as revision 1.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};
use bytes::Bytes;
use fleetgate_manager::http_client::HttpClient;
use http::{HeaderMap, HeaderValue, Method, header};

use crate::Fleet;

/// First ports of the managers' listeners; node `i` (from 0) uses `BASE + i`.
const RAFT_BASE: u16 = 7101;
const API_BASE: u16 = 8101;
const SYNC_BASE: u16 = 9101;

/// What `up` prints about the running cluster.
pub struct Cluster {
    apis: Vec<SocketAddr>,
    token: String,
    ca: PathBuf,
    revision: Option<u64>,
}

impl Cluster {
    pub fn print(&self) {
        let apis: Vec<String> = self.apis.iter().map(|a| format!("https://{a}")).collect();
        println!("  managers     {} (Raft over mutual TLS)", apis.join("  "));
        println!("  admin token  {}", self.token);
        println!(
            "  CLI          fleetgate --server {} --ca-cert {} --token $TOKEN cluster status",
            apis[0],
            self.ca.display()
        );
        if let Some(revision) = self.revision {
            println!(
                "               the bundle is revision {revision} there; agents follow managers once sync lands (issue 5)"
            );
        }
    }
}

fn addr(base: u16, i: u8) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], base + u16::from(i)))
}

/// Starts `count` managers (reusing their data directories when `up` ran before), waits until
/// they form one cluster, and applies `bundle` to it.
pub async fn start(
    exe: &Path,
    state_dir: &Path,
    count: u8,
    bundle: &Path,
    fleet: &mut Fleet,
) -> anyhow::Result<Cluster> {
    let dir = |i: u8| state_dir.join("managers").join(format!("m{}", i + 1));
    let log = |name: &str| -> anyhow::Result<Stdio> {
        let path = state_dir.join("logs").join(format!("{name}.log"));
        Ok(std::fs::File::create(&path)
            .with_context(|| format!("cannot create {}", path.display()))?
            .into())
    };
    let fresh = !dir(0).join("node.json").exists()
        && !dir(0).join("settings.json").exists()
        && !dir(0).exists();
    let node_args = |i: u8| {
        vec![
            "--data-dir".to_owned(),
            dir(i).display().to_string(),
            "--node-id".to_owned(),
            (u64::from(i) + 1).to_string(),
            "--raft-addr".to_owned(),
            addr(RAFT_BASE, i).to_string(),
            "--api-addr".to_owned(),
            addr(API_BASE, i).to_string(),
            "--sync-addr".to_owned(),
            addr(SYNC_BASE, i).to_string(),
        ]
    };
    if fresh {
        eprintln!(
            "initializing manager 1 (a new cluster) in {}",
            dir(0).display()
        );
        std::fs::create_dir_all(state_dir.join("managers"))?;
        let init = Command::new(exe)
            .arg("manager")
            .arg("init")
            .args(node_args(0))
            .stdout(Stdio::null())
            .stderr(log("manager-1-init")?)
            .status()
            .context("cannot run manager init")?;
        if !init.success() {
            bail!(
                "manager init failed; see {}/logs/manager-1-init.log",
                state_dir.display()
            );
        }
    }
    let token = std::fs::read_to_string(dir(0).join("admin.token"))
        .with_context(|| format!("cannot read the admin token in {}", dir(0).display()))?
        .trim()
        .to_owned();
    let ca = dir(0).join("tls").join("ca.pem");
    let client = HttpClient::new(
        &std::fs::read_to_string(&ca).with_context(|| format!("cannot read {}", ca.display()))?,
    )
    .map_err(|e| anyhow::anyhow!("cluster CA: {e}"))?;
    let mut headers = HeaderMap::new();
    headers.insert(
        header::AUTHORIZATION,
        HeaderValue::from_str(&format!("Bearer {token}"))?,
    );

    eprintln!("starting manager 1 on {}", addr(API_BASE, 0));
    let first = Command::new(exe)
        .arg("manager")
        .arg("serve")
        .arg("--data-dir")
        .arg(dir(0))
        .stdout(Stdio::null())
        .stderr(log("manager-1")?)
        .spawn()?;
    fleet.0.push(("manager-1".into(), first));
    voters(&client, &headers, addr(API_BASE, 0), 1).await?;
    for i in 1..count {
        let name = format!("manager-{}", i + 1);
        let child = if dir(i).exists() {
            eprintln!("starting {name} on {}", addr(API_BASE, i));
            Command::new(exe)
                .arg("manager")
                .arg("serve")
                .arg("--data-dir")
                .arg(dir(i))
                .stdout(Stdio::null())
                .stderr(log(&name)?)
                .spawn()?
        } else {
            eprintln!("joining {name} on {}", addr(API_BASE, i));
            Command::new(exe)
                .arg("manager")
                .arg("join")
                .args(node_args(i))
                .arg("--cluster")
                .arg(addr(API_BASE, 0).to_string())
                .arg("--ca-cert")
                .arg(&ca)
                .env("FLEETGATE_TOKEN", &token)
                .stdout(Stdio::null())
                .stderr(log(&name)?)
                .spawn()?
        };
        fleet.0.push((name, child));
        // One membership change at a time: Raft refuses a second while one is in progress.
        voters(&client, &headers, addr(API_BASE, 0), usize::from(i) + 1).await?;
    }

    let text =
        std::fs::read(bundle).with_context(|| format!("cannot read {}", bundle.display()))?;
    let mut apply_headers = headers.clone();
    apply_headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/yaml"),
    );
    let url = format!("https://{}/api/v1/apply", addr(API_BASE, 0));
    let reply = client
        .call(Method::POST, &url, &apply_headers, Bytes::from(text))
        .await
        .map_err(|e| anyhow::anyhow!("apply to the managers: {e}"))?;
    let revision = if reply.status.is_success() {
        serde_json::from_slice::<serde_json::Value>(&reply.body)
            .ok()
            .and_then(|v| v.get("revision").and_then(serde_json::Value::as_u64))
    } else {
        eprintln!(
            "the managers refused the bundle ({}): {}",
            reply.status,
            String::from_utf8_lossy(&reply.body)
        );
        None
    };
    Ok(Cluster {
        apis: (0..count).map(|i| addr(API_BASE, i)).collect(),
        token,
        ca,
        revision,
    })
}

/// Waits (up to 60 s) until the cluster seen from `api` has at least `want` voters and a leader.
async fn voters(
    client: &HttpClient,
    headers: &HeaderMap,
    api: SocketAddr,
    want: usize,
) -> anyhow::Result<()> {
    let url = format!("https://{api}/api/v1/cluster");
    let mut last = String::from("no answer yet");
    for _ in 0..300 {
        match client.call(Method::GET, &url, headers, Bytes::new()).await {
            Ok(reply) if reply.status.is_success() => {
                let status: serde_json::Value =
                    serde_json::from_slice(&reply.body).unwrap_or_default();
                let have = status
                    .get("voters")
                    .and_then(serde_json::Value::as_array)
                    .map_or(0, Vec::len);
                let leader = status.get("leader").is_some_and(|l| !l.is_null());
                if have >= want && leader {
                    return Ok(());
                }
                last = format!("{have} voter(s), leader known: {leader}");
            }
            Ok(reply) => {
                last = format!("{} {}", reply.status, String::from_utf8_lossy(&reply.body))
            }
            Err(e) => last = e,
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    bail!(
        "the manager cluster did not reach {want} voter(s) within 60 s ({last}); see the manager logs"
    )
}
