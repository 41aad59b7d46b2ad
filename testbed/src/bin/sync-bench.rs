//! `sync-bench`: how fast and how small config sync is, with real processes on loopback.
//!
//! 3 managers, `--agents` agents in manager mode, `--routes` routes. Then `--trials` times:
//! change one route and measure the time from the commit's acknowledgement (the API answer) to
//! the last agent's Ack (agents Ack only once the new table serves), as the managers record
//! it, and the bytes each agent received for the change. Finally the cold start of an agent
//! serving the whole config from its persisted snapshot with no manager reachable.
//!
//! Run it from a release build (`cargo build --release --workspace --bins`): it starts the
//! `fleetgate-testbed` binary found next to itself.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use clap::Parser;
use fleetgate_testbed::harness::{Agent, Managers};
use serde_json::{Value, json};

#[derive(Parser, Debug)]
#[command(
    name = "sync-bench",
    about = "Manager → agent sync latency, bytes and cold start"
)]
struct Args {
    #[arg(long, default_value_t = 50)]
    agents: usize,
    #[arg(long, default_value_t = 10_000)]
    routes: usize,
    #[arg(long, default_value_t = 50)]
    trials: usize,
    /// Cold starts to time.
    #[arg(long, default_value_t = 5)]
    cold_starts: usize,
    /// Where the fleet lives (default: a new temporary directory, removed at the end).
    #[arg(long)]
    dir: Option<PathBuf>,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn route(i: usize, body: &str) -> String {
    format!(
        "kind: Route\nname: r-{i:05}\nspec:\n  matches: [{{ path: {{ exact: /r/{i} }} }}]\n  direct_response: {{ status: 200, body: \"{body}\" }}\n"
    )
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

/// Prints one line of percentiles; the JSON also keeps every value in trial order, so a slow
/// tail can be matched to when it happened.
fn summary(name: &str, unit: &str, mut values: Vec<f64>) -> Value {
    let in_order = values.clone();
    values.sort_by(f64::total_cmp);
    let (p50, p99, max) = (
        percentile(&values, 50.0),
        percentile(&values, 99.0),
        values.last().copied().unwrap_or(f64::NAN),
    );
    println!(
        "{name:<44} p50 {p50:>9.1} {unit:<3} p99 {p99:>9.1} {unit:<3} max {max:>9.1} {unit}  (n={})",
        values.len()
    );
    json!({"p50": p50, "p99": p99, "max": max, "n": values.len(), "unit": unit, "values": in_order})
}

/// Waits until every agent has acknowledged `revision`; returns the latest Ack time. The time
/// comes from the managers' Ack records, so polling every 50 ms does not round it; polling
/// faster only loads the managers (each poll gathers the fleet view from every node) and
/// slows what is being measured.
async fn all_acked(managers: &Managers, revision: u64, agents: usize) -> anyhow::Result<u64> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let view = managers.agents(Some(revision)).await?;
        if view["rollout"]["applied"].as_u64() == Some(agents as u64) {
            let latest = view["agents"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|a| a["live"]["last_ack_ms"].as_u64())
                .max()
                .unwrap_or(0);
            return Ok(latest);
        }
        if Instant::now() > deadline {
            bail!(
                "revision {revision} did not reach {agents} agents: {}",
                view["rollout"]
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn received_bytes(agents: &[Agent]) -> Vec<u64> {
    agents
        .iter()
        .map(|a| {
            a.config()
                .and_then(|c| c["sync"]["received_bytes"].as_u64())
                .unwrap_or(0)
        })
        .collect()
}

async fn run(args: Args, root: &Path) -> anyhow::Result<Value> {
    let exe = std::env::current_exe()?;
    let bin = exe
        .parent()
        .context("no directory")?
        .join("fleetgate-testbed");
    if !bin.exists() {
        bail!(
            "{} is missing: cargo build --release --workspace --bins",
            bin.display()
        );
    }
    eprintln!("starting 3 managers in {}", root.display());
    let managers = Managers::start(&bin, &root.join("managers"), 3, &[]).await?;
    eprintln!("applying {} routes", args.routes);
    let bundle: String = (0..args.routes)
        .map(|i| route(i, "v0"))
        .collect::<Vec<_>>()
        .join("---\n");
    let started = Instant::now();
    let base = managers.apply(&bundle).await?;
    eprintln!(
        "  revision {base}: {} KiB of YAML committed in {:.1} s",
        bundle.len() / 1024,
        started.elapsed().as_secs_f64()
    );
    let token = managers.join_token(0).await?;
    let sync = managers.sync_addrs();
    eprintln!("starting {} agents", args.agents);
    let mut agents: Vec<Agent> = (0..args.agents)
        .map(|i| {
            let labels = format!("cloud={}", ["a", "b", "c"][i % 3]);
            Agent::new(
                &bin,
                &root.join("agents"),
                &format!("agent-{i:03}"),
                &labels,
                &sync,
                Some(&token),
            )
        })
        .collect();
    let started = Instant::now();
    for agent in &mut agents {
        agent.start()?;
    }
    all_acked(&managers, base, args.agents).await?;
    eprintln!(
        "  all {} agents serve revision {base} ({:.1} s from start)",
        args.agents,
        started.elapsed().as_secs_f64()
    );

    eprintln!("{} one-route changes", args.trials);
    let mut commit_to_served = Vec::new();
    let mut request_to_served = Vec::new();
    let mut commit_latency = Vec::new();
    let mut bytes = Vec::new();
    for trial in 0..args.trials {
        let before = received_bytes(&agents);
        let target = (trial * 7919) % args.routes;
        let body = format!("trial-{trial}");
        let sent = now_ms();
        let revision = managers.apply(&route(target, &body)).await?;
        let committed = now_ms();
        let served = all_acked(&managers, revision, args.agents).await?;
        commit_latency.push((committed - sent) as f64);
        commit_to_served.push(served.saturating_sub(committed) as f64);
        request_to_served.push(served.saturating_sub(sent) as f64);
        // The agents say they serve it: check one of them does.
        let probe = &agents[trial % agents.len()];
        match probe.get(&format!("/r/{target}")) {
            Some((200, text)) if text == body => {}
            other => bail!(
                "{} serves {other:?} after acknowledging revision {revision}",
                probe.name
            ),
        }
        let after = received_bytes(&agents);
        let mut per_agent: Vec<u64> = after.iter().zip(&before).map(|(a, b)| a - b).collect();
        per_agent.sort_unstable();
        bytes.push(per_agent[per_agent.len() / 2] as f64);
        if (trial + 1) % 10 == 0 {
            eprintln!("  {} / {} trials", trial + 1, args.trials);
        }
    }

    eprintln!(
        "{} cold starts from the persisted snapshot, no manager reachable",
        args.cold_starts
    );
    let mut cold = Vec::new();
    let probe_path = format!("/r/{}", args.routes - 1);
    let agent = &mut agents[0];
    agent.managers = "127.0.0.1:9".to_owned();
    for _ in 0..args.cold_starts {
        agent.kill();
        let started = Instant::now();
        agent.start()?;
        loop {
            if let Some((200, _)) = agent.get(&probe_path) {
                break;
            }
            if started.elapsed() > Duration::from_secs(60) {
                bail!("the restarted agent never served {probe_path}");
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        cold.push(started.elapsed().as_secs_f64() * 1000.0);
    }

    println!();
    println!(
        "3 managers, {} agents, {} routes, {} trials (loopback)",
        args.agents, args.routes, args.trials
    );
    let report = json!({
        "agents": args.agents,
        "routes": args.routes,
        "commit_ms": summary("commit (API request → commit acknowledged)", "ms", commit_latency),
        "commit_to_all_serving_ms": summary("commit acknowledged → all agents serving", "ms", commit_to_served),
        "request_to_all_serving_ms": summary("API request → all agents serving", "ms", request_to_served),
        "bytes_per_agent_per_change": summary("bytes received per agent per change", "B", bytes),
        "cold_start_ms": summary("cold start → serving from snapshot", "ms", cold),
    });
    println!("{report}");
    Ok(report)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let mut args = Args::parse();
    let (root, ours) = match args.dir.take() {
        Some(dir) => (dir, false),
        None => (tempfile_dir()?, true),
    };
    let result = run(args, &root).await;
    match &result {
        Ok(_) if ours => {
            let _ = std::fs::remove_dir_all(&root);
        }
        Ok(_) => {}
        Err(_) => eprintln!("logs kept in {}", root.display()),
    }
    result.map(|_| ())
}

fn tempfile_dir() -> anyhow::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("fleetgate-sync-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}
