//! Scenarios: a fleet, a steady load, a list of steps (faults, config changes, waits) and
//! assertions on what the load and the agents saw. `fleetgate-testbed run FILE.yaml`.
//!
//! # Format
//!
//! ```yaml
//! name: manager-outage
//! description: every manager down for a minute; the agents serve every request
//! fleet: {clouds: 3, agents_per_cloud: 1}
//! load:
//!   http_rate: 150           # requests/s in total, spread evenly over the agents
//!   http_connections: 2      # keep-alive connections per agent
//!   path: /                  # HTTP path
//!   websockets: 0            # WebSocket connections in total, held open for the whole run
//!   ws_interval: 1s          # between a WebSocket client's echo messages
//! steps:
//!   - kill_manager: all
//!   - sleep: {full: 60s, short: 5s}
//!   - assert: {http_success: {window: {full: 58s, short: 4s}, min: 1.0}}
//! ```
//!
//! Any duration or count may be written `{full: X, short: Y}`: `--short` takes `Y`. Durations
//! are `250ms`, `5s`, `2m` (or a number of seconds). Clouds and agents are numbered from 1.
//!
//! Before the steps run, the fleet is up, every agent serves the demo bundle, and the load is
//! running with every WebSocket open. The steps:
//!
//! | step | what |
//! |---|---|
//! | `apply: demo` / `apply: {file: PATH}` / `apply: {inline: YAML}` | apply a bundle (a file's path is relative to the scenario; `127.0.0.1:9001` and `:9002` in it become the blue and green backends) |
//! | `change: {count: N}` | N unrelated changes, one revision each, one after the other |
//! | `roll: {to: green}` | every demo route's subset becomes `stage: green` (one revision) |
//! | `storm: {rate: R, duration: D}` or `storm: {rate: R, changes: N}` | unrelated changes at R/s in the background; `wait_storm` joins it |
//! | `wait_storm: {timeout: D}` | wait for the storm to end; its commits count as the current revision |
//! | `partition: {cloud: K}` / `heal: {cloud: K}` | cut / restore cloud K's link to the managers (`cloud: all` for every cloud) |
//! | `link: {cloud: K, latency: D, jitter: D, loss: P}` | set cloud K's link conditions |
//! | `kill_manager: N \| leader \| all` / `restart_manager: N \| all` | SIGKILL; `serve` again (`all`: every stopped one) |
//! | `kill_agent: {cloud: K, agent: J}` / `restart_agent: {cloud: K, agent: J}` | SIGKILL; start again (same address, same data) |
//! | `wait_converged: {timeout: D, skip_partitioned: true}` | every running agent serves the newest revision; records the convergence time |
//! | `wait_serving: {cloud: K, agent: J, timeout: D}` | the agent answers `/healthz` |
//! | `sleep: D` | |
//! | `assert: {...}` | see [`Assertion`] |
//!
//! Assertions (each holds or the run fails; every one runs and is reported):
//!
//! | assertion | holds when |
//! |---|---|
//! | `http_success: {window: D, min: R, cloud: K, agent: J}` | over the last D, succeeded / completed ≥ R (optionally one cloud / agent) |
//! | `websocket_dropped: {max: N}` | WebSocket connections broken since the load started (server-side drops plus echo timeouts) ≤ N |
//! | `websocket_open: {min: N}` | at least N WebSocket connections open now |
//! | `staleness: {max: N, min: N, cloud: K}` | newest revision − lowest revision a running agent serves, within bounds |
//! | `convergence: {max: D}` | the last `wait_converged` took at most D |
//! | `new_connections_to: {stage: green, per_agent: N}` | N new WebSocket and N new HTTP connections per running agent reach that stage |
//! | `storm: {max_failed: N, min_committed: N}` | the last storm's writes |

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{HeaderMap, HeaderValue, Method, header};
use serde::de::{DeserializeOwned, Error as _};
use serde::{Deserialize, Deserializer, Serialize};
use serde_yaml_ng::Value;
use tokio::task::JoinHandle;

use crate::fleet::{Fleet, FleetOptions, churn_change, demo_bundle};
use crate::load::{self, Failures, LoadRun, LoadStats};

// ------------------------------------------------------------------------------------ values

/// A duration written `250ms`, `5s`, `2m`, `1h`, or a number of seconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Dur(pub Duration);

/// Parses `250ms`, `5s`, `1.5s`, `2m`, `1h`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a duration (like 250ms, 5s, 2m)"))?;
    let seconds = match unit.trim() {
        "ms" => value / 1000.0,
        "s" | "" => value,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        other => {
            return Err(format!(
                "`{text}`: unknown unit `{other}` (use ms, s, m or h)"
            ));
        }
    };
    Duration::try_from_secs_f64(seconds).map_err(|e| format!("`{text}`: {e}"))
}

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        match Value::deserialize(deserializer)? {
            Value::String(text) => parse_duration(&text).map(Dur).map_err(D::Error::custom),
            Value::Number(n) => n
                .as_f64()
                .and_then(|s| Duration::try_from_secs_f64(s).ok())
                .map(Dur)
                .ok_or_else(|| D::Error::custom(format!("{n} is not a duration"))),
            other => Err(D::Error::custom(format!(
                "expected a duration like 5s or 250ms, got {}",
                describe(&other)
            ))),
        }
    }
}

fn describe(value: &Value) -> String {
    match value {
        Value::Null => "nothing".to_owned(),
        Value::Bool(b) => format!("`{b}`"),
        Value::Number(n) => format!("`{n}`"),
        Value::String(s) => format!("`{s}`"),
        Value::Sequence(_) => "a list".to_owned(),
        Value::Mapping(_) => "a mapping".to_owned(),
        Value::Tagged(t) => format!("a value tagged {}", t.tag),
    }
}

/// A value with a different setting under `--short`: `X` or `{full: X, short: Y}`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Scaled<T> {
    pub full: T,
    pub short: T,
}

impl<T: Copy> Scaled<T> {
    pub fn get(&self, short: bool) -> T {
        if short { self.short } else { self.full }
    }
    pub fn same(value: T) -> Self {
        Self {
            full: value,
            short: value,
        }
    }
}

impl<'de, T: DeserializeOwned + Copy> Deserialize<'de> for Scaled<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = Value::deserialize(deserializer)?;
        if let Value::Mapping(map) = &value
            && (map.contains_key("full") || map.contains_key("short"))
        {
            let part = |key: &str| -> Result<T, D::Error> {
                let v = map.get(key).ok_or_else(|| {
                    D::Error::custom(format!(
                        "`{{full: X, short: Y}}` needs both; `{key}` is missing"
                    ))
                })?;
                serde_yaml_ng::from_value(v.clone())
                    .map_err(|e| D::Error::custom(format!("{key}: {e}")))
            };
            if let Some(extra) = map
                .keys()
                .find(|k| !matches!(k.as_str(), Some("full" | "short")))
            {
                return Err(D::Error::custom(format!(
                    "unknown key {} next to full/short",
                    describe(extra)
                )));
            }
            return Ok(Self {
                full: part("full")?,
                short: part("short")?,
            });
        }
        serde_yaml_ng::from_value(value)
            .map(Self::same)
            .map_err(D::Error::custom)
    }
}

/// `all` or a number from 1.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Which {
    All,
    One(usize),
}

impl<'de> Deserialize<'de> for Which {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        match Value::deserialize(deserializer)? {
            Value::String(s) if s == "all" => Ok(Self::All),
            Value::Number(n) if n.as_u64().is_some_and(|n| n >= 1) => Ok(Self::One(
                usize::try_from(n.as_u64().unwrap_or(1)).unwrap_or(usize::MAX),
            )),
            other => Err(D::Error::custom(format!(
                "expected `all` or a number from 1, got {}",
                describe(&other)
            ))),
        }
    }
}

/// A manager: its number (from 1), `leader`, or `all`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ManagerSel {
    Leader,
    All,
    One(usize),
}

impl<'de> Deserialize<'de> for ManagerSel {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        match Value::deserialize(deserializer)? {
            Value::String(s) if s == "leader" => Ok(Self::Leader),
            Value::String(s) if s == "all" => Ok(Self::All),
            Value::Number(n) if n.as_u64().is_some_and(|n| (1..=3).contains(&n)) => Ok(Self::One(
                usize::try_from(n.as_u64().unwrap_or(1)).unwrap_or(1),
            )),
            other => Err(D::Error::custom(format!(
                "expected `leader`, `all` or a manager number 1-3, got {}",
                describe(&other)
            ))),
        }
    }
}

// ------------------------------------------------------------------------------------ format

fn default_clouds() -> Scaled<usize> {
    Scaled::same(3)
}
fn default_one() -> Scaled<usize> {
    Scaled::same(1)
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FleetSpec {
    #[serde(default = "default_clouds")]
    pub clouds: Scaled<usize>,
    #[serde(default = "default_one")]
    pub agents_per_cloud: Scaled<usize>,
}

impl Default for FleetSpec {
    fn default() -> Self {
        Self {
            clouds: default_clouds(),
            agents_per_cloud: default_one(),
        }
    }
}

fn default_rate() -> Scaled<f64> {
    Scaled::same(100.0)
}
fn default_connections() -> usize {
    2
}
fn default_path() -> String {
    "/".to_owned()
}
fn default_ws_interval() -> Dur {
    Dur(Duration::from_secs(1))
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoadSpec {
    /// Requests per second in total (0: no HTTP load).
    #[serde(default = "default_rate")]
    pub http_rate: Scaled<f64>,
    /// Keep-alive connections per agent.
    #[serde(default = "default_connections")]
    pub http_connections: usize,
    #[serde(default = "default_path")]
    pub path: String,
    /// WebSocket connections in total.
    #[serde(default)]
    pub websockets: Option<Scaled<usize>>,
    #[serde(default = "default_ws_interval")]
    pub ws_interval: Dur,
}

impl Default for LoadSpec {
    fn default() -> Self {
        Self {
            http_rate: default_rate(),
            http_connections: default_connections(),
            path: default_path(),
            websockets: None,
            ws_interval: default_ws_interval(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum ApplySpec {
    Demo,
    File(PathBuf),
    Inline(String),
}

fn default_count() -> Scaled<u64> {
    Scaled::same(1)
}
fn default_wait() -> Dur {
    Dur(Duration::from_secs(60))
}
fn default_true() -> bool {
    true
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CloudRef {
    pub cloud: Which,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentRef {
    pub cloud: usize,
    pub agent: usize,
}

/// One step (see the module documentation).
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Step {
    Apply(ApplySpec),
    Change {
        #[serde(default = "default_count")]
        count: Scaled<u64>,
    },
    Roll {
        to: String,
    },
    Storm {
        rate: Scaled<f64>,
        #[serde(default)]
        duration: Option<Scaled<Dur>>,
        #[serde(default)]
        changes: Option<Scaled<u64>>,
    },
    WaitStorm {
        #[serde(default = "default_wait")]
        timeout: Dur,
    },
    Partition(CloudRef),
    Heal(CloudRef),
    Link {
        cloud: Which,
        #[serde(default)]
        latency: Option<Dur>,
        #[serde(default)]
        jitter: Option<Dur>,
        #[serde(default)]
        loss: Option<f64>,
    },
    KillManager(ManagerSel),
    RestartManager(ManagerSel),
    KillAgent(AgentRef),
    RestartAgent(AgentRef),
    WaitConverged {
        #[serde(default = "default_wait")]
        timeout: Dur,
        #[serde(default = "default_true")]
        skip_partitioned: bool,
    },
    WaitServing {
        cloud: usize,
        agent: usize,
        #[serde(default = "default_wait")]
        timeout: Dur,
    },
    Sleep(Scaled<Dur>),
    Assert(Assertion),
}

fn default_per_agent() -> usize {
    3
}

/// A verdict (see the module documentation).
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Assertion {
    HttpSuccess {
        window: Scaled<Dur>,
        min: f64,
        #[serde(default)]
        cloud: Option<usize>,
        #[serde(default)]
        agent: Option<usize>,
    },
    WebsocketDropped {
        max: u64,
    },
    WebsocketOpen {
        min: Scaled<u64>,
    },
    Staleness {
        #[serde(default)]
        max: Option<u64>,
        #[serde(default)]
        min: Option<u64>,
        #[serde(default)]
        cloud: Option<usize>,
    },
    Convergence {
        max: Scaled<Dur>,
    },
    NewConnectionsTo {
        stage: String,
        #[serde(default = "default_per_agent")]
        per_agent: usize,
    },
    Storm {
        #[serde(default)]
        max_failed: Option<u64>,
        #[serde(default)]
        min_committed: Option<Scaled<u64>>,
    },
}

/// A parsed scenario file.
#[derive(Clone, Debug)]
pub struct Scenario {
    pub name: String,
    pub description: String,
    pub fleet: FleetSpec,
    pub load: LoadSpec,
    pub steps: Vec<Step>,
    /// Where relative paths start.
    pub dir: PathBuf,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawScenario {
    name: String,
    #[serde(default)]
    description: String,
    #[serde(default)]
    fleet: FleetSpec,
    #[serde(default)]
    load: LoadSpec,
    steps: Vec<Value>,
}

/// A step's name: the single key of its mapping (or the string itself).
fn step_name(value: &Value) -> String {
    match value {
        Value::Mapping(map) if map.len() == 1 => map
            .keys()
            .next()
            .and_then(Value::as_str)
            .unwrap_or("?")
            .to_owned(),
        Value::String(s) => s.clone(),
        _ => "?".to_owned(),
    }
}

impl Scenario {
    /// Parses a scenario; errors name the step (number from 1, and kind) and the field.
    pub fn parse(text: &str, dir: &Path) -> anyhow::Result<Self> {
        let deserializer = serde_yaml_ng::Deserializer::from_str(text);
        let raw: RawScenario = serde_path_to_error::deserialize(deserializer).map_err(|e| {
            let path = e.path().to_string();
            if path == "." {
                anyhow!("{}", e.inner())
            } else {
                anyhow!("field `{path}`: {}", e.inner())
            }
        })?;
        if raw.steps.is_empty() {
            bail!("field `steps`: a scenario needs at least one step");
        }
        let mut steps = Vec::new();
        for (index, value) in raw.steps.into_iter().enumerate() {
            let name = step_name(&value);
            // serde_yaml_ng takes enums only as `!tag`s; through JSON, the `{variant: value}`
            // form the scenarios use works (and errors keep their path).
            let json = serde_json::to_value(&value)
                .map_err(|e| anyhow!("step {} (`{name}`): {e}", index + 1))?;
            let step: Step = serde_path_to_error::deserialize(json).map_err(|e| {
                let path = e.path().to_string();
                let field = if path == "." || path == name {
                    String::new()
                } else {
                    format!(", field `{path}`")
                };
                anyhow!("step {} (`{name}`){field}: {}", index + 1, e.inner())
            })?;
            if let Step::Storm {
                duration, changes, ..
            } = &step
                && duration.is_some() == changes.is_some()
            {
                bail!(
                    "step {} (`storm`): give exactly one of `duration` and `changes`",
                    index + 1
                );
            }
            steps.push(step);
        }
        Ok(Self {
            name: raw.name,
            description: raw.description,
            fleet: raw.fleet,
            load: raw.load,
            steps,
            dir: dir.to_owned(),
        })
    }

    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let dir = path.parent().unwrap_or(Path::new("."));
        Self::parse(&text, dir).with_context(|| format!("{}", path.display()))
    }
}

/// A short description of a step for the summary.
fn describe_step(step: &Step, short: bool) -> String {
    let d = |d: Duration| format!("{:.1}s", d.as_secs_f64());
    let which = |w: &Which| match w {
        Which::All => "all clouds".to_owned(),
        Which::One(k) => format!("cloud-{k}"),
    };
    let manager = |m: &ManagerSel| match m {
        ManagerSel::Leader => "the leader".to_owned(),
        ManagerSel::All => "all managers".to_owned(),
        ManagerSel::One(n) => format!("manager {n}"),
    };
    match step {
        Step::Apply(ApplySpec::Demo) => "apply the demo bundle".to_owned(),
        Step::Apply(ApplySpec::File(p)) => format!("apply {}", p.display()),
        Step::Apply(ApplySpec::Inline(_)) => "apply an inline bundle".to_owned(),
        Step::Change { count } => format!("{} unrelated change(s)", count.get(short)),
        Step::Roll { to } => format!("roll every route to stage {to}"),
        Step::Storm {
            rate,
            duration,
            changes,
        } => match (duration, changes) {
            (Some(t), _) => format!(
                "config storm: {}/s for {} (background)",
                rate.get(short),
                d(t.get(short).0)
            ),
            (_, Some(n)) => format!(
                "config storm: {} changes at {}/s (background)",
                n.get(short),
                rate.get(short)
            ),
            _ => "config storm".to_owned(),
        },
        Step::WaitStorm { .. } => "wait for the storm to end".to_owned(),
        Step::Partition(c) => format!("partition {}", which(&c.cloud)),
        Step::Heal(c) => format!("heal {}", which(&c.cloud)),
        Step::Link {
            cloud,
            latency,
            jitter,
            loss,
        } => {
            let mut parts = Vec::new();
            if let Some(l) = latency {
                parts.push(format!("latency {:?}", l.0));
            }
            if let Some(j) = jitter {
                parts.push(format!("jitter ±{:?}", j.0));
            }
            if let Some(p) = loss {
                parts.push(format!("loss {:.1} %", p * 100.0));
            }
            format!("link of {}: {}", which(cloud), parts.join(", "))
        }
        Step::KillManager(m) => format!("kill {}", manager(m)),
        Step::RestartManager(m) => format!("restart {}", manager(m)),
        Step::KillAgent(a) => format!("kill cloud-{}-agent-{}", a.cloud, a.agent),
        Step::RestartAgent(a) => format!("restart cloud-{}-agent-{}", a.cloud, a.agent),
        Step::WaitConverged { .. } => "wait for convergence".to_owned(),
        Step::WaitServing { cloud, agent, .. } => {
            format!("wait until cloud-{cloud}-agent-{agent} serves")
        }
        Step::Sleep(t) => format!("sleep {}", d(t.get(short).0)),
        Step::Assert(a) => format!("assert {}", describe_assertion(a, short)),
    }
}

fn describe_assertion(a: &Assertion, short: bool) -> String {
    match a {
        Assertion::HttpSuccess {
            window,
            min,
            cloud,
            agent,
        } => format!(
            "HTTP success ≥ {min} over the last {:.1}s{}",
            window.get(short).0.as_secs_f64(),
            scope(*cloud, *agent)
        ),
        Assertion::WebsocketDropped { max } => format!("WebSocket connections broken ≤ {max}"),
        Assertion::WebsocketOpen { min } => format!("WebSockets open ≥ {}", min.get(short)),
        Assertion::Staleness { max, min, cloud } => format!(
            "staleness{}{}{}",
            min.map_or(String::new(), |m| format!(" ≥ {m}")),
            max.map_or(String::new(), |m| format!(" ≤ {m}")),
            scope(*cloud, None)
        ),
        Assertion::Convergence { max } => {
            format!("convergence ≤ {:.1}s", max.get(short).0.as_secs_f64())
        }
        Assertion::NewConnectionsTo { stage, per_agent } => {
            format!("{per_agent} new WebSocket and HTTP connections per agent reach {stage}")
        }
        Assertion::Storm {
            max_failed,
            min_committed,
        } => format!(
            "storm{}{}",
            max_failed.map_or(String::new(), |m| format!(" failed ≤ {m}")),
            min_committed.map_or(String::new(), |m| format!(" committed ≥ {}", m.get(short)))
        ),
    }
}

fn scope(cloud: Option<usize>, agent: Option<usize>) -> String {
    match (cloud, agent) {
        (Some(k), Some(j)) => format!(" on cloud-{k}-agent-{j}"),
        (Some(k), None) => format!(" in cloud-{k}"),
        (None, Some(j)) => format!(" on agent {j} of every cloud"),
        (None, None) => String::new(),
    }
}

// ------------------------------------------------------------------------------------ report

/// Load counts summed over agents.
#[derive(Clone, Debug, Default, Serialize)]
pub struct LoadSummary {
    pub window_secs: f64,
    pub http_sent: u64,
    pub http_succeeded: u64,
    pub http_failed: Failures,
    pub http_success_ratio: Option<f64>,
    /// The highest per-agent p99 and max latency (ms).
    pub http_p99_ms: Option<f64>,
    pub http_max_ms: Option<f64>,
    pub ws_opened: u64,
    pub ws_connect_failed: u64,
    pub ws_dropped: u64,
    pub ws_echo_timeouts: u64,
    pub ws_mismatched: u64,
    pub ws_open_now: u64,
    pub ws_echoed: u64,
}

fn merge(reports: &[load::Report]) -> LoadSummary {
    let mut s = LoadSummary::default();
    let max = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    };
    for r in reports {
        s.window_secs = s.window_secs.max(r.window_secs);
        s.http_sent += r.http.sent;
        s.http_succeeded += r.http.succeeded;
        let f = &r.http.failed;
        s.http_failed.connect += f.connect;
        s.http_failed.timeout += f.timeout;
        s.http_failed.status_5xx += f.status_5xx;
        s.http_failed.status_4xx += f.status_4xx;
        s.http_failed.other += f.other;
        s.http_p99_ms = max(s.http_p99_ms, r.http.latency.p99_ms);
        s.http_max_ms = max(s.http_max_ms, r.http.latency.max_ms);
        s.ws_opened += r.websocket.opened;
        s.ws_connect_failed += r.websocket.connect_failed;
        s.ws_dropped += r.websocket.dropped;
        s.ws_echo_timeouts += r.websocket.echo_timeouts;
        s.ws_mismatched += r.websocket.mismatched;
        s.ws_open_now += r.websocket.open_now;
        s.ws_echoed += r.websocket.echoed;
    }
    let done = s.http_succeeded + s.http_failed.total();
    #[allow(clippy::cast_precision_loss)]
    {
        s.http_success_ratio = (done > 0).then(|| s.http_succeeded as f64 / done as f64);
    }
    s
}

#[derive(Clone, Debug, Serialize)]
pub struct StepReport {
    pub index: usize,
    pub step: String,
    /// Seconds since the steps began.
    pub at_secs: f64,
    pub took_secs: f64,
    pub ok: bool,
    pub detail: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct RunReport {
    pub scenario: String,
    pub short: bool,
    pub passed: bool,
    pub clouds: usize,
    pub agents_per_cloud: usize,
    /// Fleet start, demo bundle served everywhere, load running.
    pub setup_secs: f64,
    pub steps_secs: f64,
    pub total_secs: f64,
    pub steps: Vec<StepReport>,
    pub assertions_passed: usize,
    pub assertions_failed: usize,
    /// The whole run's load, summed over agents.
    pub load: LoadSummary,
    pub final_revision: u64,
    /// Every storm's outcome, in order.
    pub storms: Vec<StormReport>,
    /// Every `wait_converged`, in seconds, in order.
    pub convergence_secs: Vec<f64>,
    pub error: Option<String>,
}

// ------------------------------------------------------------------------------------ storm

/// Writes to the managers from a background task: its own client with a pool of keep-alive
/// HTTPS connections (a TLS handshake per write would cost more CPU than the write on two
/// cores), trying each node in turn (killed ones fail fast), retrying `503` and connection
/// errors through leader changes, as an operator's CLI retry loop would.
#[derive(Clone)]
struct Writer {
    tls: tokio_rustls::TlsConnector,
    headers: HeaderMap,
    apis: Arc<Vec<String>>,
    next: Arc<AtomicU64>,
    idle: Arc<parking_lot::Mutex<Vec<(usize, Conn)>>>,
}

type Conn = hyper::client::conn::http1::SendRequest<http_body_util::Full<Bytes>>;

impl Writer {
    fn new(fleet: &Fleet) -> anyhow::Result<Self> {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_str(&format!("Bearer {}", fleet.managers.token))?,
        );
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/yaml"),
        );
        let tls = fleetgate_manager::tls::client_config(&fleet.managers.ca_pem)
            .map_err(|e| anyhow!("cluster CA: {e}"))?;
        Ok(Self {
            tls: tokio_rustls::TlsConnector::from(tls),
            headers,
            apis: Arc::new(fleet.managers.nodes.iter().map(|n| n.api.clone()).collect()),
            next: Arc::new(AtomicU64::new(0)),
            idle: Arc::new(parking_lot::Mutex::new(Vec::new())),
        })
    }

    async fn connect(&self, index: usize) -> Result<Conn, String> {
        let authority = &self.apis[index];
        let tcp = tokio::net::TcpStream::connect(authority)
            .await
            .map_err(|e| format!("connect {authority}: {e}"))?;
        let _ = tcp.set_nodelay(true);
        let name = tokio_rustls::rustls::pki_types::ServerName::try_from(
            fleetgate_manager::tls::NODE_SERVER_NAME,
        )
        .map_err(|e| e.to_string())?;
        let tls = self
            .tls
            .connect(name, tcp)
            .await
            .map_err(|e| format!("TLS with {authority}: {e}"))?;
        let (sender, connection) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
                .await
                .map_err(|e| e.to_string())?;
        tokio::spawn(connection);
        Ok(sender)
    }

    /// One POST on a pooled (or new) connection to node `index`.
    async fn post(&self, index: usize, body: Bytes) -> Result<(http::StatusCode, Bytes), String> {
        use http_body_util::BodyExt;
        let pooled = {
            let mut idle = self.idle.lock();
            idle.iter()
                .position(|(i, c)| *i == index && !c.is_closed())
                .map(|at| idle.swap_remove(at).1)
        };
        let mut conn = match pooled {
            Some(conn) => conn,
            None => self.connect(index).await?,
        };
        conn.ready().await.map_err(|e| e.to_string())?;
        let mut builder = http::Request::builder()
            .method(Method::POST)
            .uri("/api/v1/apply")
            .header(header::HOST, &self.apis[index]);
        for (name, value) in &self.headers {
            builder = builder.header(name, value);
        }
        let request = builder
            .body(http_body_util::Full::new(body))
            .map_err(|e| e.to_string())?;
        let response = conn
            .send_request(request)
            .await
            .map_err(|e| e.to_string())?;
        let (parts, body) = response.into_parts();
        let body = body.collect().await.map_err(|e| e.to_string())?.to_bytes();
        self.idle.lock().push((index, conn));
        Ok((parts.status, body))
    }

    /// Applies `yaml`; returns the revision. Gives up after `patience`.
    async fn apply(&self, yaml: &str, patience: Duration) -> Result<u64, String> {
        let deadline = Instant::now() + patience;
        let body = Bytes::from(yaml.to_owned());
        let mut last = String::new();
        let nodes = self.apis.len() as u64;
        loop {
            let start = self.next.load(Ordering::Relaxed);
            for i in 0..nodes {
                let index = usize::try_from((start + i) % nodes).unwrap_or(0);
                let url = &self.apis[index];
                match tokio::time::timeout(Duration::from_secs(5), self.post(index, body.clone()))
                    .await
                {
                    Ok(Ok((status, body))) if status.is_success() => {
                        self.next.store(index as u64, Ordering::Relaxed);
                        let json: serde_json::Value =
                            serde_json::from_slice(&body).unwrap_or_default();
                        return json["revision"]
                            .as_u64()
                            .ok_or_else(|| format!("no revision in {json}"));
                    }
                    Ok(Ok((status, body))) if status.as_u16() != 503 => {
                        return Err(format!("{status} {}", String::from_utf8_lossy(&body)));
                    }
                    Ok(Ok((status, _))) => last = format!("{url}: {status}"),
                    Ok(Err(e)) => last = format!("{url}: {e}"),
                    Err(_) => last = format!("{url}: no answer in 5 s"),
                }
            }
            if Instant::now() > deadline {
                return Err(format!("no manager took the write: {last}"));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// What a storm did.
#[derive(Clone, Debug, Default, Serialize)]
pub struct StormReport {
    pub attempted: u64,
    pub committed: u64,
    pub failed: u64,
    /// Ticks skipped because too many writes were in flight.
    pub skipped: u64,
    pub max_revision: u64,
    pub secs: f64,
    pub achieved_rate: f64,
    pub latency_p50_ms: Option<f64>,
    pub latency_p99_ms: Option<f64>,
    pub latency_max_ms: Option<f64>,
    pub first_errors: Vec<String>,
    /// The Raft term (as the first answering manager sees it) when the storm started and
    /// ended: a difference means leader elections during the storm.
    pub term_before: Option<u64>,
    pub term_after: Option<u64>,
}

static CHURN: AtomicU64 = AtomicU64::new(1);

/// The next unrelated change's number (each one differs from the last, so each makes a revision).
fn next_churn() -> u64 {
    CHURN.fetch_add(1, Ordering::Relaxed)
}

/// Writes in flight at most. The storm is open-loop (a write is started on every tick whatever
/// the earlier ones are doing, like independent operators), so a manager stall shows as latency
/// rather than as a lower offered rate; ticks are skipped only past this bound.
const STORM_IN_FLIGHT: usize = 256;

async fn storm(
    writer: Writer,
    rate: f64,
    duration: Option<Duration>,
    changes: Option<u64>,
) -> StormReport {
    let started = Instant::now();
    let rate = rate.max(0.001);
    let interval = Duration::from_secs_f64(1.0 / rate);
    // The writes this storm offers in all: one per tick of its duration, or its change count.
    #[allow(
        clippy::cast_precision_loss,
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss
    )]
    let total = match (duration, changes) {
        (Some(d), _) => ((d.as_secs_f64() * rate).ceil() as u64).max(1),
        (_, Some(n)) => n,
        _ => 0,
    };
    // The schedule is fixed from the start: by time t, 1 + t·rate writes are due. A wake-up that
    // comes late (a busy test process) starts every write it missed instead of skipping them, so
    // the offered count is exactly `total` and a slow machine cannot lower it.
    #[allow(
        clippy::cast_precision_loss,
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss
    )]
    let due = |elapsed: Duration| (1 + (elapsed.as_secs_f64() * rate) as u64).min(total);
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut tasks: tokio::task::JoinSet<(Result<u64, String>, Duration)> =
        tokio::task::JoinSet::new();
    let mut report = StormReport::default();
    let mut latencies = Vec::new();
    let mut record = |report: &mut StormReport, outcome: (Result<u64, String>, Duration)| {
        latencies.push(outcome.1);
        match outcome.0 {
            Ok(revision) => {
                report.committed += 1;
                report.max_revision = report.max_revision.max(revision);
            }
            Err(e) => {
                report.failed += 1;
                if report.first_errors.len() < 5 {
                    report.first_errors.push(e);
                }
            }
        }
    };
    while report.attempted + report.skipped < total {
        ticker.tick().await;
        while let Some(Ok(outcome)) = tasks.try_join_next() {
            record(&mut report, outcome);
        }
        while report.attempted + report.skipped < due(started.elapsed()) {
            if tasks.len() >= STORM_IN_FLIGHT {
                report.skipped += 1;
                continue;
            }
            report.attempted += 1;
            let writer = writer.clone();
            tasks.spawn(async move {
                let t = Instant::now();
                let outcome = writer
                    .apply(&churn_change(next_churn()), Duration::from_secs(30))
                    .await;
                (outcome, t.elapsed())
            });
        }
    }
    let sending = started.elapsed();
    while let Some(joined) = tasks.join_next().await {
        if let Ok(outcome) = joined {
            record(&mut report, outcome);
        }
    }
    report.secs = started.elapsed().as_secs_f64();
    #[allow(clippy::cast_precision_loss)]
    {
        report.achieved_rate = report.attempted as f64 / sending.as_secs_f64().max(0.001);
    }
    latencies.sort();
    let pick = |q: f64| {
        #[allow(
            clippy::cast_precision_loss,
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss
        )]
        let index = ((latencies.len() as f64 - 1.0) * q).round() as usize;
        latencies.get(index).map(|d| d.as_secs_f64() * 1000.0)
    };
    report.latency_p50_ms = pick(0.5);
    report.latency_p99_ms = pick(0.99);
    report.latency_max_ms = latencies.last().map(|d| d.as_secs_f64() * 1000.0);
    report
}

// ------------------------------------------------------------------------------------ runner

/// How to run a scenario.
#[derive(Clone, Debug)]
pub struct RunOptions {
    pub bin: PathBuf,
    /// State of this run (wiped first).
    pub root: PathBuf,
    pub short: bool,
}

struct Runner<'a> {
    scenario: &'a Scenario,
    short: bool,
    fleet: Fleet,
    /// Load per agent, by (cloud, agent) from 0.
    loads: BTreeMap<(usize, usize), LoadStats>,
    runs: Vec<LoadRun>,
    storm: Option<JoinHandle<StormReport>>,
    last_storm: Option<StormReport>,
    last_convergence: Option<Duration>,
    storms: Vec<StormReport>,
    convergences: Vec<f64>,
    storm_term: Option<u64>,
    writer: Writer,
}

/// Runs a scenario: prints one line per step, returns the report (with `passed`).
pub async fn run(scenario: &Scenario, options: &RunOptions) -> anyhow::Result<RunReport> {
    let started = Instant::now();
    let short = options.short;
    let clouds = scenario.fleet.clouds.get(short);
    let per_cloud = scenario.fleet.agents_per_cloud.get(short);
    if options.root.exists() {
        std::fs::remove_dir_all(&options.root)
            .with_context(|| format!("cannot clear {}", options.root.display()))?;
    }
    std::fs::create_dir_all(&options.root)?;
    println!(
        "scenario {}{}: {}",
        scenario.name,
        if short { " (short)" } else { "" },
        scenario.description.trim()
    );
    println!(
        "  starting 3 managers, {clouds} cloud(s) of {per_cloud} agent(s), blue and green backends (state in {})",
        options.root.display()
    );
    let fleet = Fleet::start(&FleetOptions::new(
        &options.bin,
        &options.root,
        clouds,
        per_cloud,
    ))
    .await?;
    let writer = Writer::new(&fleet)?;
    let mut runner = Runner {
        scenario,
        short,
        fleet,
        loads: BTreeMap::new(),
        runs: Vec::new(),
        storm: None,
        last_storm: None,
        last_convergence: None,
        storms: Vec::new(),
        convergences: Vec::new(),
        storm_term: None,
        writer,
    };
    runner.start_load().await?;
    let setup = started.elapsed();
    println!(
        "  fleet up and load running in {:.1}s (revision {})",
        setup.as_secs_f64(),
        runner.fleet.revision
    );

    let steps_started = Instant::now();
    let mut steps = Vec::new();
    let mut error = None;
    for (index, step) in scenario.steps.iter().enumerate() {
        let at = steps_started.elapsed();
        let description = describe_step(step, short);
        let t = Instant::now();
        let outcome = runner.step(step).await;
        let took = t.elapsed();
        let (ok, detail, fatal) = match outcome {
            Ok(Verdict::Done(detail)) => (true, detail, false),
            Ok(Verdict::Holds(detail)) => (true, detail, false),
            Ok(Verdict::Fails(detail)) => (false, detail, false),
            Err(e) => (false, format!("{e:#}"), true),
        };
        let is_assert = matches!(step, Step::Assert(_));
        let mark = match (ok, is_assert) {
            (true, true) => "PASS",
            (false, true) => "FAIL",
            (true, false) => "  ok",
            (false, false) => "ERR ",
        };
        println!(
            "  [{:6.1}s] {mark} {:>2}. {description}{}{}",
            at.as_secs_f64(),
            index + 1,
            if detail.is_empty() { "" } else { ": " },
            detail
        );
        steps.push(StepReport {
            index: index + 1,
            step: description,
            at_secs: at.as_secs_f64(),
            took_secs: took.as_secs_f64(),
            ok,
            detail: detail.clone(),
        });
        if fatal {
            error = Some(format!("step {}: {detail}", index + 1));
            break;
        }
    }
    let steps_secs = steps_started.elapsed().as_secs_f64();
    if let Some(storm) = runner.storm.take() {
        storm.abort();
    }
    let mut totals = Vec::new();
    for run in runner.runs.drain(..) {
        totals.push(run.stop().await);
    }
    let load = merge(&totals);
    let assertions: Vec<&StepReport> = steps
        .iter()
        .zip(&scenario.steps)
        .filter(|(_, s)| matches!(s, Step::Assert(_)))
        .map(|(r, _)| r)
        .collect();
    let failed = assertions.iter().filter(|r| !r.ok).count();
    let final_revision = runner.fleet.revision;
    runner.fleet.shutdown().await;
    let report = RunReport {
        scenario: scenario.name.clone(),
        short,
        passed: error.is_none() && failed == 0,
        clouds,
        agents_per_cloud: per_cloud,
        setup_secs: setup.as_secs_f64(),
        steps_secs,
        total_secs: started.elapsed().as_secs_f64(),
        assertions_passed: assertions.len() - failed,
        assertions_failed: failed,
        steps,
        load,
        final_revision,
        storms: std::mem::take(&mut runner.storms),
        convergence_secs: std::mem::take(&mut runner.convergences),
        error,
    };
    print_summary(&report);
    Ok(report)
}

fn print_summary(r: &RunReport) {
    let l = &r.load;
    println!(
        "  load: {} HTTP requests, {} ok, {} failed (connect {}, timeout {}, 5xx {}, 4xx {}, other {}), worst agent p99 {} ms",
        l.http_sent,
        l.http_succeeded,
        l.http_failed.total(),
        l.http_failed.connect,
        l.http_failed.timeout,
        l.http_failed.status_5xx,
        l.http_failed.status_4xx,
        l.http_failed.other,
        l.http_p99_ms.map_or("-".to_owned(), |v| format!("{v:.1}")),
    );
    if l.ws_opened > 0 {
        println!(
            "  websockets: {} opened, {} dropped, {} echo timeouts, {} mismatched, {} echoes",
            l.ws_opened, l.ws_dropped, l.ws_echo_timeouts, l.ws_mismatched, l.ws_echoed
        );
    }
    println!(
        "{} {}: {} assertion(s) passed, {} failed; setup {:.1}s, steps {:.1}s, total {:.1}s{}",
        if r.passed { "PASSED" } else { "FAILED" },
        r.scenario,
        r.assertions_passed,
        r.assertions_failed,
        r.setup_secs,
        r.steps_secs,
        r.total_secs,
        r.error
            .as_ref()
            .map_or(String::new(), |e| format!("; stopped at {e}")),
    );
}

enum Verdict {
    Done(String),
    Holds(String),
    Fails(String),
}

impl Runner<'_> {
    async fn start_load(&mut self) -> anyhow::Result<()> {
        let spec = &self.scenario.load;
        let agents: Vec<(usize, usize, SocketAddr)> = self
            .fleet
            .clouds
            .iter()
            .enumerate()
            .flat_map(|(k, c)| {
                c.agents
                    .iter()
                    .enumerate()
                    .filter_map(move |(j, a)| Some((k, j, a.listen.parse().ok()?)))
            })
            .collect();
        let n = agents.len().max(1);
        let rate = spec.http_rate.get(self.short);
        let websockets = spec.websockets.map_or(0, |w| w.get(self.short));
        for (i, (k, j, addr)) in agents.iter().enumerate() {
            let http = (rate > 0.0).then(|| {
                let mut http = load::HttpLoad::new(*addr);
                http.path.clone_from(&spec.path);
                http.connections = spec.http_connections;
                #[allow(clippy::cast_precision_loss)]
                {
                    http.rate = Some(rate / n as f64);
                }
                http.timeout = Duration::from_secs(5);
                http
            });
            let share = websockets / n + usize::from(i < websockets % n);
            let websocket = (share > 0).then(|| {
                let mut ws = load::WsLoad::new(*addr);
                ws.connections = share;
                ws.interval = spec.ws_interval.0;
                ws.timeout = Duration::from_secs(10);
                ws
            });
            if http.is_none() && websocket.is_none() {
                continue;
            }
            let run = LoadRun::start(load::LoadPlan {
                http,
                websocket,
                duration: Duration::from_secs(24 * 3600),
            })
            .map_err(|e| anyhow!("load on {addr}: {e}"))?;
            self.loads.insert((*k, *j), run.stats());
            self.runs.push(run);
        }
        if websockets > 0 {
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                let open = self.summary(Duration::from_secs(1), None, None).ws_open_now;
                if open >= websockets as u64 {
                    break;
                }
                if Instant::now() > deadline {
                    bail!("only {open} of {websockets} WebSocket connections opened within 60 s");
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        // One second of load before the steps, so that windows have something in them.
        tokio::time::sleep(Duration::from_secs(1)).await;
        Ok(())
    }

    fn summary(&self, window: Duration, cloud: Option<usize>, agent: Option<usize>) -> LoadSummary {
        let reports: Vec<load::Report> = self
            .loads
            .iter()
            .filter(|((k, j), _)| {
                cloud.is_none_or(|c| c == k + 1) && agent.is_none_or(|a| a == j + 1)
            })
            .map(|(_, stats)| stats.snapshot(window))
            .collect();
        merge(&reports)
    }

    /// The Raft term the first answering manager reports.
    async fn term(&self) -> Option<u64> {
        let (status, body) = self
            .fleet
            .managers
            .call(Method::GET, "/api/v1/cluster", None)
            .await
            .ok()?;
        status.is_success().then(|| body["term"].as_u64()).flatten()
    }

    fn totals(&self) -> LoadSummary {
        let reports: Vec<load::Report> = self.loads.values().map(LoadStats::total).collect();
        merge(&reports)
    }

    fn agent_mut(
        &mut self,
        cloud: usize,
        agent: usize,
    ) -> anyhow::Result<&mut crate::harness::Agent> {
        self.fleet
            .clouds
            .get_mut(cloud.wrapping_sub(1))
            .and_then(|c| c.agents.get_mut(agent.wrapping_sub(1)))
            .ok_or_else(|| anyhow!("there is no cloud-{cloud}-agent-{agent}"))
    }

    fn links(&self, which: Which) -> anyhow::Result<Vec<&crate::wan::LinkControl>> {
        match which {
            Which::All => Ok(self.fleet.clouds.iter().map(|c| &c.link).collect()),
            Which::One(k) => self
                .fleet
                .clouds
                .get(k - 1)
                .map(|c| vec![&c.link])
                .ok_or_else(|| anyhow!("there is no cloud-{k}")),
        }
    }

    async fn step(&mut self, step: &Step) -> anyhow::Result<Verdict> {
        let short = self.short;
        match step {
            Step::Apply(spec) => {
                let blue = self.fleet.blue.addr();
                let green = self.fleet.green.addr();
                let yaml = match spec {
                    ApplySpec::Demo => demo_bundle(blue, green, "blue"),
                    ApplySpec::File(path) => {
                        let path = self.scenario.dir.join(path);
                        std::fs::read_to_string(&path)
                            .with_context(|| format!("cannot read {}", path.display()))?
                            .replace(crate::fleet::DEMO_BLUE, &blue.to_string())
                            .replace(crate::fleet::DEMO_GREEN, &green.to_string())
                    }
                    ApplySpec::Inline(text) => text
                        .replace(crate::fleet::DEMO_BLUE, &blue.to_string())
                        .replace(crate::fleet::DEMO_GREEN, &green.to_string()),
                };
                let revision = self.fleet.apply(&yaml).await?;
                Ok(Verdict::Done(format!("revision {revision}")))
            }
            Step::Change { count } => {
                let mut last = 0;
                for _ in 0..count.get(short) {
                    last = self.fleet.apply(&churn_change(next_churn())).await?;
                }
                Ok(Verdict::Done(format!("now at revision {last}")))
            }
            Step::Roll { to } => {
                let yaml = demo_bundle(self.fleet.blue.addr(), self.fleet.green.addr(), to);
                let revision = self.fleet.apply(&yaml).await?;
                Ok(Verdict::Done(format!("revision {revision}")))
            }
            Step::Storm {
                rate,
                duration,
                changes,
            } => {
                if self.storm.is_some() {
                    bail!("a storm is already running (add wait_storm first)");
                }
                let writer = self.writer.clone();
                let rate = rate.get(short);
                let duration = duration.map(|d| d.get(short).0);
                let changes = changes.map(|c| c.get(short));
                self.storm_term = self.term().await;
                self.storm = Some(tokio::spawn(storm(writer, rate, duration, changes)));
                Ok(Verdict::Done(
                    self.storm_term
                        .map_or(String::new(), |t| format!("Raft term {t}")),
                ))
            }
            Step::WaitStorm { timeout } => {
                let Some(handle) = self.storm.take() else {
                    bail!("no storm is running");
                };
                let report = tokio::time::timeout(timeout.0, handle)
                    .await
                    .map_err(|_| anyhow!("the storm did not end within {:?}", timeout.0))?
                    .map_err(|e| anyhow!("the storm task failed: {e}"))?;
                let mut report = report;
                report.term_before = self.storm_term;
                report.term_after = self.term().await;
                self.fleet.revision = self.fleet.revision.max(report.max_revision);
                let detail = format!(
                    "{} writes in {:.1}s ({:.0}/s), {} committed, {} failed, {} skipped ({STORM_IN_FLIGHT} in flight), latency p50 {} ms p99 {} ms max {} ms; revision {}{}{}",
                    report.attempted,
                    report.secs,
                    report.achieved_rate,
                    report.committed,
                    report.failed,
                    report.skipped,
                    fmt_ms(report.latency_p50_ms),
                    fmt_ms(report.latency_p99_ms),
                    fmt_ms(report.latency_max_ms),
                    report.max_revision,
                    match (report.term_before, report.term_after) {
                        (Some(a), Some(b)) if a != b => format!("; Raft term {a} -> {b}"),
                        (Some(a), Some(_)) => format!("; Raft term {a} throughout"),
                        _ => String::new(),
                    },
                    if report.first_errors.is_empty() {
                        String::new()
                    } else {
                        format!("; errors: {}", report.first_errors.join(" | "))
                    }
                );
                self.storms.push(report.clone());
                self.last_storm = Some(report);
                Ok(Verdict::Done(detail))
            }
            Step::Partition(c) => {
                for link in self.links(c.cloud)? {
                    link.partition();
                }
                Ok(Verdict::Done(String::new()))
            }
            Step::Heal(c) => {
                for link in self.links(c.cloud)? {
                    link.heal();
                }
                Ok(Verdict::Done(String::new()))
            }
            Step::Link {
                cloud,
                latency,
                jitter,
                loss,
            } => {
                for link in self.links(*cloud)? {
                    if let Some(l) = latency {
                        link.set_latency(l.0);
                    }
                    if let Some(j) = jitter {
                        link.set_jitter(j.0);
                    }
                    if let Some(p) = loss {
                        link.set_loss(*p);
                    }
                }
                Ok(Verdict::Done(String::new()))
            }
            Step::KillManager(which) => {
                let targets: Vec<usize> = match which {
                    ManagerSel::Leader => vec![self.fleet.managers.leader().await?],
                    ManagerSel::All => (0..self.fleet.managers.nodes.len()).collect(),
                    ManagerSel::One(n) => vec![n - 1],
                };
                for &i in &targets {
                    self.fleet.managers.kill(i);
                }
                let names: Vec<String> = targets
                    .iter()
                    .map(|i| format!("manager {}", i + 1))
                    .collect();
                Ok(Verdict::Done(format!("killed {}", names.join(", "))))
            }
            Step::RestartManager(which) => {
                let targets: Vec<usize> = match which {
                    ManagerSel::Leader => bail!("restart_manager takes a number or `all`"),
                    ManagerSel::All => (0..self.fleet.managers.nodes.len())
                        .filter(|&i| !self.fleet.managers.nodes[i].is_up())
                        .collect(),
                    ManagerSel::One(n) => vec![n - 1],
                };
                for &i in &targets {
                    if self.fleet.managers.nodes[i].is_up() {
                        bail!("manager {} is running", i + 1);
                    }
                    self.fleet.managers.serve(i)?;
                }
                let t = Instant::now();
                self.fleet.managers.wait_leader().await?;
                Ok(Verdict::Done(format!(
                    "restarted {} manager(s); leader after {:.1}s",
                    targets.len(),
                    t.elapsed().as_secs_f64()
                )))
            }
            Step::KillAgent(a) => {
                self.agent_mut(a.cloud, a.agent)?.kill();
                Ok(Verdict::Done(String::new()))
            }
            Step::RestartAgent(a) => {
                let agent = self.agent_mut(a.cloud, a.agent)?;
                if agent.is_up() {
                    bail!("{} is running", agent.name);
                }
                agent.start()?;
                Ok(Verdict::Done(String::new()))
            }
            Step::WaitConverged {
                timeout,
                skip_partitioned,
            } => {
                let took = self
                    .fleet
                    .wait_converged(timeout.0, *skip_partitioned)
                    .await?;
                self.last_convergence = Some(took);
                self.convergences.push(took.as_secs_f64());
                let skipped: Vec<&str> = self
                    .fleet
                    .clouds
                    .iter()
                    .filter(|c| *skip_partitioned && c.link.is_partitioned())
                    .map(|c| c.name.as_str())
                    .collect();
                Ok(Verdict::Done(format!(
                    "revision {} everywhere{} in {:.2}s",
                    self.fleet.revision,
                    if skipped.is_empty() {
                        String::new()
                    } else {
                        format!(" but {} (partitioned)", skipped.join(", "))
                    },
                    took.as_secs_f64()
                )))
            }
            Step::WaitServing {
                cloud,
                agent,
                timeout,
            } => {
                let listen = self.agent_mut(*cloud, *agent)?.listen.clone();
                let t = Instant::now();
                loop {
                    let addr = listen.clone();
                    let ok = tokio::task::spawn_blocking(move || {
                        crate::harness::http_get(&addr, "/healthz").is_some_and(|(s, _)| s == 200)
                    })
                    .await
                    .unwrap_or(false);
                    if ok {
                        break;
                    }
                    if t.elapsed() > timeout.0 {
                        bail!(
                            "cloud-{cloud}-agent-{agent} did not serve within {:?}",
                            timeout.0
                        );
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Ok(Verdict::Done(format!(
                    "after {:.2}s",
                    t.elapsed().as_secs_f64()
                )))
            }
            Step::Sleep(d) => {
                tokio::time::sleep(d.get(short).0).await;
                Ok(Verdict::Done(String::new()))
            }
            Step::Assert(assertion) => self.check(assertion).await,
        }
    }

    async fn check(&mut self, assertion: &Assertion) -> anyhow::Result<Verdict> {
        let short = self.short;
        let verdict = |holds: bool, detail: String| {
            if holds {
                Verdict::Holds(detail)
            } else {
                Verdict::Fails(detail)
            }
        };
        match assertion {
            Assertion::HttpSuccess {
                window,
                min,
                cloud,
                agent,
            } => {
                let s = self.summary(window.get(short).0, *cloud, *agent);
                let Some(ratio) = s.http_success_ratio else {
                    return Ok(Verdict::Fails(
                        "no request completed in the window".to_owned(),
                    ));
                };
                Ok(verdict(
                    ratio >= *min,
                    format!(
                        "{:.4} ({} ok, {} failed: connect {}, timeout {}, 5xx {}, 4xx {}, other {}; over {:.1}s; worst p99 {} ms)",
                        ratio,
                        s.http_succeeded,
                        s.http_failed.total(),
                        s.http_failed.connect,
                        s.http_failed.timeout,
                        s.http_failed.status_5xx,
                        s.http_failed.status_4xx,
                        s.http_failed.other,
                        s.window_secs,
                        fmt_ms(s.http_p99_ms),
                    ),
                ))
            }
            Assertion::WebsocketDropped { max } => {
                let s = self.totals();
                let broken = s.ws_dropped + s.ws_echo_timeouts;
                Ok(verdict(
                    broken <= *max && s.ws_mismatched == 0,
                    format!(
                        "{broken} broken ({} dropped, {} echo timeouts), {} mismatched echoes, {} open, {} echoes",
                        s.ws_dropped,
                        s.ws_echo_timeouts,
                        s.ws_mismatched,
                        s.ws_open_now,
                        s.ws_echoed
                    ),
                ))
            }
            Assertion::WebsocketOpen { min } => {
                let s = self.summary(Duration::from_secs(1), None, None);
                let min = min.get(short);
                Ok(verdict(
                    s.ws_open_now >= min,
                    format!("{} open", s.ws_open_now),
                ))
            }
            Assertion::Staleness { max, min, cloud } => {
                let current = self.fleet.revision;
                let mut lowest: Option<(u64, String)> = None;
                for (k, c) in self.fleet.clouds.iter().enumerate() {
                    if cloud.is_some_and(|want| want != k + 1) {
                        continue;
                    }
                    for a in c.agents.iter().filter(|a| a.is_up()) {
                        let r = crate::fleet::agent_revision(a).await.unwrap_or(0);
                        if lowest.as_ref().is_none_or(|(l, _)| r < *l) {
                            lowest = Some((r, a.name.clone()));
                        }
                    }
                }
                let Some((lowest, name)) = lowest else {
                    return Ok(Verdict::Fails("no running agent to ask".to_owned()));
                };
                let staleness = current.saturating_sub(lowest);
                Ok(verdict(
                    max.is_none_or(|m| staleness <= m) && min.is_none_or(|m| staleness >= m),
                    format!("{staleness} (newest revision {current}, {name} serves {lowest})"),
                ))
            }
            Assertion::Convergence { max } => {
                let Some(took) = self.last_convergence else {
                    bail!("no wait_converged step ran before this assertion");
                };
                Ok(verdict(
                    took <= max.get(short).0,
                    format!("{:.2}s", took.as_secs_f64()),
                ))
            }
            Assertion::NewConnectionsTo { stage, per_agent } => {
                let want = format!("backend-{stage}");
                let mut seen: BTreeMap<String, usize> = BTreeMap::new();
                let mut total = 0;
                let agents: Vec<String> = self
                    .fleet
                    .agents()
                    .filter(|(_, a)| a.is_up())
                    .map(|(_, a)| a.listen.clone())
                    .collect();
                for listen in agents {
                    for _ in 0..*per_agent {
                        total += 2;
                        let ws = ws_backend(&listen)
                            .await
                            .unwrap_or_else(|e| format!("error: {e}"));
                        *seen.entry(format!("ws {ws}")).or_default() += 1;
                        let addr = listen.clone();
                        let http = tokio::task::spawn_blocking(move || {
                            crate::harness::http_get(&addr, "/")
                        })
                        .await
                        .ok()
                        .flatten()
                        .and_then(|(_, body)| {
                            serde_json::from_str::<serde_json::Value>(&body).ok()?["backend"]
                                .as_str()
                                .map(str::to_owned)
                        })
                        .unwrap_or_else(|| "no answer".to_owned());
                        *seen.entry(format!("http {http}")).or_default() += 1;
                    }
                }
                let good = seen.get(&format!("ws {want}")).copied().unwrap_or(0)
                    + seen.get(&format!("http {want}")).copied().unwrap_or(0);
                let detail: Vec<String> = seen.iter().map(|(k, v)| format!("{k}: {v}")).collect();
                Ok(verdict(
                    good == total && total > 0,
                    format!("{good}/{total} reached {want} ({})", detail.join(", ")),
                ))
            }
            Assertion::Storm {
                max_failed,
                min_committed,
            } => {
                let Some(report) = &self.last_storm else {
                    bail!("no storm ended before this assertion (add wait_storm)");
                };
                let min_committed = min_committed.map(|m| m.get(short));
                Ok(verdict(
                    max_failed.is_none_or(|m| report.failed <= m)
                        && min_committed.is_none_or(|m| report.committed >= m),
                    format!(
                        "{} committed, {} failed, {} skipped",
                        report.committed, report.failed, report.skipped
                    ),
                ))
            }
        }
    }
}

fn fmt_ms(v: Option<f64>) -> String {
    v.map_or("-".to_owned(), |v| format!("{v:.0}"))
}

/// Opens a new WebSocket to `/ws` on `listen`, sends a text message, and returns the name of
/// the backend that echoed it.
async fn ws_backend(listen: &str) -> anyhow::Result<String> {
    use tokio_tungstenite::tungstenite::Message;
    let url = format!("ws://{listen}/ws");
    let (mut ws, _) = tokio::time::timeout(
        Duration::from_secs(5),
        tokio_tungstenite::connect_async(url.as_str()),
    )
    .await
    .map_err(|_| anyhow!("no handshake in 5 s"))??;
    ws.send(Message::text("who")).await?;
    let reply = tokio::time::timeout(Duration::from_secs(5), ws.next())
        .await
        .map_err(|_| anyhow!("no echo in 5 s"))?
        .ok_or_else(|| anyhow!("closed"))??;
    let _ = ws.close(None).await;
    let text = reply.into_text()?;
    Ok(text
        .split_once(':')
        .map_or(text.to_string(), |(name, _)| name.to_owned()))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn parse(text: &str) -> anyhow::Result<Scenario> {
        Scenario::parse(text, Path::new("."))
    }

    fn error(text: &str) -> String {
        format!("{:#}", parse(text).unwrap_err())
    }

    #[test]
    fn a_full_scenario_parses_with_short_values() {
        let s = parse(
            r"
name: demo
fleet: {clouds: 2, agents_per_cloud: {full: 2, short: 1}}
load: {http_rate: 50, websockets: {full: 1000, short: 100}, ws_interval: 500ms}
steps:
  - apply: demo
  - apply: {file: extra.yaml}
  - change: {count: {full: 200, short: 20}}
  - roll: {to: green}
  - storm: {rate: 100, duration: {full: 30s, short: 5s}}
  - wait_storm: {}
  - partition: {cloud: 1}
  - heal: {cloud: all}
  - link: {cloud: 2, latency: 80ms, loss: 0.01}
  - kill_manager: leader
  - kill_manager: 2
  - restart_manager: all
  - kill_agent: {cloud: 1, agent: 1}
  - restart_agent: {cloud: 1, agent: 1}
  - wait_converged: {timeout: 30s}
  - sleep: {full: 1m, short: 5s}
  - assert: {http_success: {window: 10s, min: 1.0, cloud: 1}}
  - assert: {websocket_dropped: {max: 0}}
  - assert: {staleness: {max: 0}}
  - assert: {new_connections_to: {stage: green}}
",
        )
        .unwrap();
        assert_eq!(s.fleet.agents_per_cloud.get(false), 2);
        assert_eq!(s.fleet.agents_per_cloud.get(true), 1);
        assert_eq!(s.load.websockets.unwrap().get(true), 100);
        assert_eq!(s.load.ws_interval, Dur(Duration::from_millis(500)));
        assert_eq!(s.steps.len(), 20);
        assert!(matches!(s.steps[0], Step::Apply(ApplySpec::Demo)));
        assert!(matches!(s.steps[9], Step::KillManager(ManagerSel::Leader)));
        assert!(matches!(s.steps[10], Step::KillManager(ManagerSel::One(2))));
        match &s.steps[15] {
            Step::Sleep(d) => {
                assert_eq!(d.get(false).0, Duration::from_secs(60));
                assert_eq!(d.get(true).0, Duration::from_secs(5));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn errors_name_the_step_and_the_field() {
        let e = error("name: x\nsteps:\n  - sleep: 1s\n  - kill_agent: {cloud: one, agent: 1}\n");
        assert!(e.contains("step 2 (`kill_agent`)"), "{e}");
        assert!(e.contains("kill_agent.cloud"), "{e}");
        assert!(e.contains("invalid type"), "{e}");

        let e = error("name: x\nsteps:\n  - sleep: 5 parsecs\n");
        assert!(e.contains("step 1 (`sleep`)"), "{e}");
        assert!(e.contains("unknown unit `parsecs`"), "{e}");

        let e = error("name: x\nsteps:\n  - kil_manager: 1\n");
        assert!(e.contains("step 1 (`kil_manager`)"), "{e}");
        assert!(e.contains("unknown variant `kil_manager`"), "{e}");

        let e = error("name: x\nsteps:\n  - kill_manager: 7\n");
        assert!(e.contains("step 1 (`kill_manager`)"), "{e}");
        assert!(e.contains("manager number 1-3, got `7`"), "{e}");

        let e = error(
            "name: x\nsteps:\n  - sleep: 1s\n  - sleep: 1s\n  - assert: {http_success: {window: 5s, minimum: 1.0}}\n",
        );
        assert!(e.contains("step 3 (`assert`)"), "{e}");
        assert!(e.contains("unknown field `minimum`"), "{e}");

        let e = error("name: x\nsteps:\n  - storm: {rate: 10}\n");
        assert!(e.contains("step 1 (`storm`)"), "{e}");
        assert!(e.contains("exactly one of `duration` and `changes`"), "{e}");

        let e = error("name: x\nsteps:\n  - sleep: {full: 5s}\n");
        assert!(e.contains("`short` is missing"), "{e}");

        let e = error("name: x\nload: {http_rate: fast}\nsteps:\n  - sleep: 1s\n");
        assert!(e.contains("field `load.http_rate`"), "{e}");

        let e = error("name: x\nsteps: []\n");
        assert!(e.contains("at least one step"), "{e}");

        let e = error("steps:\n  - sleep: 1s\n");
        assert!(e.contains("missing field `name`"), "{e}");
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert!(parse_duration("soon").is_err());
    }

    #[test]
    fn the_shipped_scenarios_parse() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scenarios");
        let mut count = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "yaml") {
                Scenario::load(&path).unwrap_or_else(|e| panic!("{e:#}"));
                count += 1;
            }
        }
        assert_eq!(count, 6);
    }
}
