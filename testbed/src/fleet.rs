//! A multi-cloud fleet on one machine: three managers, `N` emulated clouds of agents, and the
//! blue and green demo backends, with the demo bundle applied.
//!
//! Each cloud `k` (from 1) has its own loopback block, `127.0.(10+k).0/24`: its agents listen on
//! `127.0.(10+k).j` (j from 1), and it reaches the managers only through its own WAN link, one
//! [`UdpRelay`] per manager listening on `127.0.(10+k).254`, all driven by the cloud's
//! [`LinkControl`]. Partitioning cloud 2 therefore cuts exactly cloud 2's agents off the control
//! plane (QUIC is UDP), while clients keep reaching them directly, as in a real regional outage of
//! the control-plane path.
//!
//! Backends run in this process ([`Backend`]), agents and managers as processes of this binary
//! ([`crate::harness`]).

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, anyhow};

use crate::backend::Backend;
use crate::harness::{Agent, Managers, free_tcp_on, free_udp};
use crate::wan::{LinkControl, UdpRelay};

/// The demo bundle as shipped (`testbed/demo/bundle.yaml`), with the blue and green backends on
/// [`DEMO_BLUE`] and [`DEMO_GREEN`].
pub const DEMO_BUNDLE: &str = include_str!("../demo/bundle.yaml");
/// The blue backend's address in [`DEMO_BUNDLE`] (and under `up`).
pub const DEMO_BLUE: &str = "127.0.0.1:9001";
/// The green backend's address in [`DEMO_BUNDLE`] (and under `up`).
pub const DEMO_GREEN: &str = "127.0.0.1:9002";
/// The HS256 key of the bundle's `demo-jwt` policy.
pub const JWT_SECRET: &str = "fleetgate-demo-hs256-secret-not-for-production-0001";
pub const JWT_KID: &str = "demo-hs256";
pub const JWT_ISSUER: &str = "https://testbed.fleetgate.local";

/// The demo bundle with the backends at `blue` and `green`, every route on `stage`.
pub fn demo_bundle(blue: SocketAddr, green: SocketAddr, stage: &str) -> String {
    DEMO_BUNDLE
        .replace(DEMO_BLUE, &blue.to_string())
        .replace(DEMO_GREEN, &green.to_string())
        .replace(
            "subset: {stage: blue}",
            &format!("subset: {{stage: {stage}}}"),
        )
}

/// One change unrelated to the demo traffic: the `churn` route's body becomes `n`. Every `n`
/// gives a new revision.
pub fn churn_change(n: u64) -> String {
    format!(
        "kind: Route\nname: churn\nspec:\n  matches: [{{ path: {{ exact: /churn }} }}]\n  direct_response: {{ status: 200, body: \"change {n}\" }}\n"
    )
}

/// An HS256 token for the demo bundle's `/private` route, valid for `ttl`.
pub fn demo_token(subject: &str, ttl: Duration) -> anyhow::Result<String> {
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    let claims = serde_json::json!({
        "sub": subject,
        "iss": JWT_ISSUER,
        "iat": now,
        "exp": now + ttl.as_secs(),
    });
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    header.kid = Some(JWT_KID.to_owned());
    jsonwebtoken::encode(
        &header,
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(JWT_SECRET.as_bytes()),
    )
    .map_err(|e| anyhow!("cannot sign the demo token: {e}"))
}

/// The loopback address of agent `agent` (from 1) of cloud `cloud` (from 1).
pub fn agent_ip(cloud: usize, agent: usize) -> Ipv4Addr {
    Ipv4Addr::new(
        127,
        0,
        u8::try_from(10 + cloud).unwrap_or(u8::MAX),
        u8::try_from(agent).unwrap_or(u8::MAX),
    )
}

/// Where the cloud's relays listen.
pub fn relay_ip(cloud: usize) -> Ipv4Addr {
    agent_ip(cloud, 254)
}

/// How to build a fleet.
#[derive(Clone, Debug)]
pub struct FleetOptions {
    /// The `fleetgate-testbed` binary (agents and managers are its subcommands).
    pub bin: PathBuf,
    /// State: `managers/`, `agents/` (data directories and logs).
    pub root: PathBuf,
    pub clouds: usize,
    pub agents_per_cloud: usize,
    /// Fixed gateway and admin ports on every agent's own address (`up`), or free ports picked
    /// at random (scenarios, tests: several fleets may run at once).
    pub agent_ports: Option<(u16, u16)>,
    /// Fixed blue and green backend addresses, or free ports.
    pub backends: Option<(SocketAddr, SocketAddr)>,
    /// Environment of every manager and agent process.
    pub env: Vec<(String, String)>,
}

impl FleetOptions {
    pub fn new(bin: &Path, root: &Path, clouds: usize, agents_per_cloud: usize) -> Self {
        Self {
            bin: bin.to_owned(),
            root: root.to_owned(),
            clouds,
            agents_per_cloud,
            agent_ports: None,
            backends: None,
            env: Vec::new(),
        }
    }
}

/// One emulated cloud.
#[derive(Debug)]
pub struct Cloud {
    /// `cloud-1`, `cloud-2`, ...
    pub name: String,
    /// Its WAN link to the managers.
    pub link: LinkControl,
    /// One relay per manager, in manager order.
    pub relays: Vec<UdpRelay>,
    pub agents: Vec<Agent>,
}

/// A running fleet. Dropping it kills every process; [`Fleet::shutdown`] stops them gracefully.
#[derive(Debug)]
pub struct Fleet {
    pub managers: Managers,
    pub clouds: Vec<Cloud>,
    pub blue: Backend,
    pub green: Backend,
    /// The join token agents enrolled with (any number of uses).
    pub join_token: String,
    /// The newest revision this fleet's writes produced.
    pub revision: u64,
    /// Whether the managers' state was resumed from an earlier run.
    pub resumed: bool,
}

impl Fleet {
    /// Starts backends, managers (or resumes the cluster saved under `root/managers`), applies
    /// the demo bundle, starts the relays and agents, and waits until every agent serves it.
    pub async fn start(options: &FleetOptions) -> anyhow::Result<Self> {
        let env: Vec<(&str, &str)> = options
            .env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let any = SocketAddr::from(([127, 0, 0, 1], 0));
        let (blue_addr, green_addr) = options.backends.unwrap_or((any, any));
        let blue = Backend::start(blue_addr, "backend-blue")
            .await
            .with_context(|| format!("cannot start the blue backend on {blue_addr}"))?;
        let green = Backend::start(green_addr, "backend-green")
            .await
            .with_context(|| format!("cannot start the green backend on {green_addr}"))?;

        let manager_root = options.root.join("managers");
        let (managers, resumed) = match Managers::resume(&options.bin, &manager_root, &env).await? {
            Some(managers) => (managers, true),
            None => {
                // Agents enrolled with another cluster's CA would never connect again.
                let agents = options.root.join("agents");
                if agents.exists() {
                    std::fs::remove_dir_all(&agents)
                        .with_context(|| format!("cannot clear {}", agents.display()))?;
                }
                let managers = Managers::start(&options.bin, &manager_root, 3, &env).await?;
                managers.save(&manager_root)?;
                (managers, false)
            }
        };
        let revision = managers
            .apply(&demo_bundle(blue.addr(), green.addr(), "blue"))
            .await
            .context("the managers refused the demo bundle")?;
        let join_token = managers.join_token(0).await?;

        let mut clouds = Vec::new();
        for k in 1..=options.clouds {
            let link = LinkControl::new();
            let mut relays = Vec::new();
            for node in &managers.nodes {
                let target: SocketAddr = node.sync.parse()?;
                let port = free_udp()
                    .rsplit_once(':')
                    .and_then(|(_, p)| p.parse::<u16>().ok())
                    .unwrap_or(0);
                let relay =
                    UdpRelay::start(SocketAddr::from((relay_ip(k), port)), target, link.clone())
                        .await
                        .with_context(|| format!("cannot start cloud-{k}'s relay to {target}"))?;
                relays.push(relay);
            }
            let via: Vec<String> = relays.iter().map(|r| r.addr().to_string()).collect();
            let via = via.join(",");
            let mut agents = Vec::new();
            for j in 1..=options.agents_per_cloud {
                let name = format!("cloud-{k}-agent-{j}");
                let mut agent = Agent::new(
                    &options.bin,
                    &options.root.join("agents"),
                    &name,
                    &format!("cloud=cloud-{k}"),
                    &via,
                    Some(&join_token),
                );
                let ip = agent_ip(k, j);
                match options.agent_ports {
                    Some((listen, admin)) => {
                        agent.listen = format!("{ip}:{listen}");
                        agent.admin = format!("{ip}:{admin}");
                    }
                    None => {
                        agent.listen = free_tcp_on(ip);
                        agent.admin = free_tcp_on(ip);
                    }
                }
                agent.env.clone_from(&options.env);
                agent.start()?;
                agents.push(agent);
            }
            clouds.push(Cloud {
                name: format!("cloud-{k}"),
                link,
                relays,
                agents,
            });
        }
        let fleet = Self {
            managers,
            clouds,
            blue,
            green,
            join_token,
            revision,
            resumed,
        };
        fleet
            .wait_converged(Duration::from_secs(60), false)
            .await
            .context("the agents did not all serve the demo bundle")?;
        Ok(fleet)
    }

    /// Every agent, with its cloud's index (from 0).
    pub fn agents(&self) -> impl Iterator<Item = (usize, &Agent)> {
        self.clouds
            .iter()
            .enumerate()
            .flat_map(|(k, c)| c.agents.iter().map(move |a| (k, a)))
    }

    /// Applies `yaml`, records the revision it made.
    pub async fn apply(&mut self, yaml: &str) -> anyhow::Result<u64> {
        let revision = self.managers.apply(yaml).await?;
        self.revision = self.revision.max(revision);
        Ok(revision)
    }

    /// Waits until every running agent (but those of partitioned clouds when
    /// `skip_partitioned`) serves [`Fleet::revision`] or newer; returns how long it took.
    pub async fn wait_converged(
        &self,
        timeout: Duration,
        skip_partitioned: bool,
    ) -> anyhow::Result<Duration> {
        let started = Instant::now();
        let target = self.revision;
        loop {
            let mut behind = Vec::new();
            for cloud in &self.clouds {
                if skip_partitioned && cloud.link.is_partitioned() {
                    continue;
                }
                for agent in cloud.agents.iter().filter(|a| a.is_up()) {
                    let revision = agent_revision(agent).await;
                    if revision.is_none_or(|r| r < target) {
                        behind.push(match revision {
                            Some(r) => format!("{} at {r}", agent.name),
                            None => format!(
                                "{} not answering on {} (log: {})",
                                agent.name,
                                agent.admin,
                                agent.dir.with_extension("log").display()
                            ),
                        });
                    }
                }
            }
            if behind.is_empty() {
                return Ok(started.elapsed());
            }
            if started.elapsed() > timeout {
                anyhow::bail!(
                    "not every agent reached revision {target} within {timeout:?}: {}",
                    behind.join(", ")
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Stops agents (SIGTERM: they drain), then managers, then relays and backends.
    pub async fn shutdown(mut self) {
        for cloud in &mut self.clouds {
            for agent in &mut cloud.agents {
                agent.terminate(Duration::from_secs(5));
            }
        }
        self.managers.terminate_all(Duration::from_secs(5));
        let Self {
            clouds,
            blue,
            green,
            ..
        } = self;
        drop(clouds);
        blue.stop().await;
        green.stop().await;
    }
}

/// The revision an agent serves, read off the runtime's worker threads (the harness's probe is
/// blocking).
pub async fn agent_revision(agent: &Agent) -> Option<u64> {
    let admin = agent.admin.clone();
    tokio::task::spawn_blocking(move || {
        let (status, body) = crate::harness::http_get(&admin, "/config")?;
        if status != 200 {
            return None;
        }
        serde_json::from_str::<serde_json::Value>(&body).ok()?["revision"].as_u64()
    })
    .await
    .ok()
    .flatten()
}
