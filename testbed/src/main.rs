//! `fleetgate-testbed`: run Fleetgate on one machine.
//!
//! `up` starts a fleet (three managers, emulated clouds of agents behind their own WAN links,
//! blue and green demo backends; see `fleetgate_testbed::fleet`), applies the demo bundle,
//! prints where everything is, and stops it all on Ctrl-C. `run` runs scenario files (see
//! `fleetgate_testbed::scenario`). Managers and agents are processes of this same binary.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use fleetgate_testbed::{backend, fleet, load, scenario, wan};

#[derive(Parser, Debug)]
#[command(
    name = "fleetgate-testbed",
    version,
    about = "A Fleetgate fleet on one machine"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Start a fleet on loopback (3 managers, emulated clouds of agents, blue and green
    /// backends, the demo bundle) and keep it running until Ctrl-C.
    Up {
        /// Emulated clouds; cloud K's agents listen on 127.0.(10+K).1, .2, ...
        #[arg(long, default_value_t = 3)]
        clouds: usize,
        /// Agents in each cloud.
        #[arg(long, default_value_t = 2)]
        agents_per_cloud: usize,
        /// Gateway port of every agent (each agent has its own address).
        #[arg(long, default_value_t = 8080)]
        port: u16,
        /// Admin port of every agent.
        #[arg(long, default_value_t = 9901)]
        admin_port: u16,
        /// The blue and green demo backends.
        #[arg(long, default_values = ["127.0.0.1:9001", "127.0.0.1:9002"], num_args = 2)]
        backends: Vec<SocketAddr>,
        /// State directory (manager data, agents' identities and snapshots, logs); a second
        /// `up` resumes the cluster found there.
        #[arg(long, default_value = ".fleetgate")]
        state_dir: PathBuf,
    },
    /// Run scenario files (faults, load, assertions); exit 0 only when every assertion of
    /// every scenario holds.
    Run {
        /// Scenario files (scenarios/*.yaml).
        #[arg(required = true)]
        scenarios: Vec<PathBuf>,
        /// Shrink durations and counts (the scenario's `short` values), for CI.
        #[arg(long)]
        short: bool,
        /// Write a JSON report here.
        #[arg(long)]
        report: Option<PathBuf>,
        /// State directory of the runs (each scenario's is wiped when it starts).
        #[arg(long, default_value = ".fleetgate/scenarios")]
        state_dir: PathBuf,
    },
    /// Relay TCP and UDP from one port to another through an emulated WAN link (fixed
    /// conditions; scenarios change them at run time through the library).
    Wan {
        /// Where clients connect (TCP) and send (UDP).
        #[arg(long)]
        listen: SocketAddr,
        /// Where traffic goes.
        #[arg(long)]
        target: SocketAddr,
        /// One-way latency in milliseconds, applied in each direction.
        #[arg(long, default_value_t = 0)]
        latency_ms: u64,
        /// Uniform jitter (plus or minus) in milliseconds.
        #[arg(long, default_value_t = 0)]
        jitter_ms: u64,
        /// Loss probability: UDP datagrams dropped, TCP chunks delayed by a retransmission.
        #[arg(long, default_value_t = 0.0)]
        loss: f64,
    },
    /// Generate HTTP/1.1 and WebSocket load; prints the totals as JSON, and one line of the last
    /// second's HTTP counts every second on stderr.
    Load {
        /// Where to connect.
        #[arg(long)]
        addr: SocketAddr,
        /// Host header (default: the address).
        #[arg(long)]
        host: Option<String>,
        /// Path and query of the HTTP requests.
        #[arg(long, default_value = "/")]
        path: String,
        /// HTTP keep-alive connections (0 for none).
        #[arg(long, default_value_t = 8)]
        connections: usize,
        /// Total HTTP requests per second (0: as fast as responses come).
        #[arg(long, default_value_t = 100.0)]
        rate: f64,
        /// WebSocket connections held open (0 for none).
        #[arg(long, default_value_t = 0)]
        ws_connections: usize,
        /// WebSocket path.
        #[arg(long, default_value = "/ws")]
        ws_path: String,
        /// Milliseconds between a WebSocket client's messages.
        #[arg(long, default_value_t = 100)]
        ws_interval_ms: u64,
        /// How long to run, in seconds.
        #[arg(long, default_value_t = 10)]
        duration_secs: u64,
    },
    /// Run one demo backend: HTTP echo (JSON), WebSocket echo on /ws, SSE ticker on /sse.
    DemoBackend {
        #[arg(long)]
        listen: SocketAddr,
        /// Name reported in every answer.
        #[arg(long)]
        name: String,
    },
    /// Run a manager node (the same code as `fleetgate-manager`); used by `up`.
    #[command(trailing_var_arg = true)]
    Manager {
        #[arg(allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Run the gateway agent (the same code as `fleetgate-agent`); used by `up`.
    #[command(trailing_var_arg = true)]
    Agent {
        #[arg(allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Cmd::Wan {
            listen,
            target,
            latency_ms,
            jitter_ms,
            loss,
        } => {
            let link = wan::LinkControl::with_conditions(wan::LinkConditions {
                latency: std::time::Duration::from_millis(latency_ms),
                jitter: std::time::Duration::from_millis(jitter_ms),
                loss,
                partitioned: false,
            });
            run_async(async move {
                let _tcp = wan::TcpRelay::start(listen, target, link.clone()).await?;
                let _udp = wan::UdpRelay::start(listen, target, link).await?;
                eprintln!("relaying {listen} -> {target} (TCP and UDP); Ctrl-C stops");
                tokio::signal::ctrl_c().await?;
                Ok(())
            })
        }
        Cmd::Load {
            addr,
            host,
            path,
            connections,
            rate,
            ws_connections,
            ws_path,
            ws_interval_ms,
            duration_secs,
        } => {
            let http = (connections > 0).then(|| {
                let mut http = load::HttpLoad::new(addr);
                http.host.clone_from(&host);
                http.path = path;
                http.connections = connections;
                http.rate = (rate > 0.0).then_some(rate);
                http
            });
            let websocket = (ws_connections > 0).then(|| {
                let mut ws = load::WsLoad::new(addr);
                ws.host = host;
                ws.path = ws_path;
                ws.connections = ws_connections;
                ws.interval = std::time::Duration::from_millis(ws_interval_ms);
                ws
            });
            let plan = load::LoadPlan {
                http,
                websocket,
                duration: std::time::Duration::from_secs(duration_secs),
            };
            run_async(async move {
                let run = load::LoadRun::start(plan)?;
                let stats = run.stats();
                let progress = tokio::spawn(async move {
                    let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
                    tick.tick().await;
                    loop {
                        tick.tick().await;
                        let last = stats.snapshot(std::time::Duration::from_secs(1));
                        eprintln!(
                            "last 1 s: {} sent, {} ok, {} failed, p99 {:?} ms; websockets open {}",
                            last.http.sent,
                            last.http.succeeded,
                            last.http.failed.total(),
                            last.http.latency.p99_ms,
                            last.websocket.open_now,
                        );
                    }
                });
                let report = run.finish().await;
                progress.abort();
                println!("{}", serde_json::to_string_pretty(&report)?);
                Ok(())
            })
        }
        Cmd::DemoBackend { listen, name } => {
            let runtime = match tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("error: cannot start the runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match runtime.block_on(backend::run(listen, name)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: demo backend on {listen}: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Cmd::Agent { args } => {
            use clap::Parser as _;
            let config = match fleetgate_agent::AgentConfig::try_parse_from(
                std::iter::once("fleetgate-agent".to_owned()).chain(args),
            ) {
                Ok(c) => c,
                Err(e) => e.exit(),
            };
            fleetgate_agent::telemetry::init_logging(config.log_format);
            match fleetgate_agent::App::build(config).and_then(fleetgate_agent::App::run) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("fleetgate-agent: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Cmd::Manager { args } => fleetgate_manager::cli::main_with_args(
            std::iter::once("fleetgate-manager".to_owned()).chain(args),
        ),
        Cmd::Up {
            clouds,
            agents_per_cloud,
            port,
            admin_port,
            backends,
            state_dir,
        } => {
            let options = fleet::FleetOptions {
                agent_ports: Some((port, admin_port)),
                backends: Some((backends[0], backends[1])),
                ..fleet::FleetOptions::new(&PathBuf::new(), &state_dir, clouds, agents_per_cloud)
            };
            run_multi(up(options))
        }
        Cmd::Run {
            scenarios,
            short,
            report,
            state_dir,
        } => run_scenarios(&scenarios, short, report.as_deref(), &state_dir),
    }
}

/// Runs on a two-thread runtime (the load generator, relays and backends share it).
fn run_multi(work: impl std::future::Future<Output = anyhow::Result<ExitCode>>) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(work) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn up(mut options: fleet::FleetOptions) -> anyhow::Result<ExitCode> {
    use anyhow::Context;
    options.bin = std::env::current_exe().context("cannot find this program's path")?;
    std::fs::create_dir_all(&options.root)
        .with_context(|| format!("cannot create {}", options.root.display()))?;
    options.root = options
        .root
        .canonicalize()
        .with_context(|| format!("cannot resolve {}", options.root.display()))?;
    eprintln!(
        "starting 3 managers, {} cloud(s) of {} agent(s), and the blue and green backends (state in {})",
        options.clouds,
        options.agents_per_cloud,
        options.root.display()
    );
    let fleet = fleet::Fleet::start(&options).await?;
    let token = fleet::demo_token("demo-user", std::time::Duration::from_secs(24 * 3600))?;
    let first = fleet
        .clouds
        .first()
        .and_then(|c| c.agents.first())
        .map_or_else(String::new, |a| a.listen.clone());
    println!();
    println!(
        "Fleetgate is up{}: revision {} on every agent.",
        if fleet.resumed {
            " (managers resumed from the state directory)"
        } else {
            ""
        },
        fleet.revision
    );
    for cloud in &fleet.clouds {
        let relays: Vec<String> = cloud.relays.iter().map(|r| r.addr().to_string()).collect();
        println!(
            "  {}  (reaches the managers through the WAN relays {})",
            cloud.name,
            relays.join(", ")
        );
        for agent in &cloud.agents {
            println!(
                "    gateway http://{}/   admin http://{}/config",
                agent.listen, agent.admin
            );
        }
    }
    println!(
        "  backends     blue http://{}/  green http://{}/  (HTTP echo, WebSocket /ws, SSE /sse)",
        fleet.blue.addr(),
        fleet.green.addr()
    );
    let apis: Vec<String> = fleet
        .managers
        .nodes
        .iter()
        .map(|n| format!("https://{}", n.api))
        .collect();
    let ca = fleet.managers.nodes[0].dir.join("tls").join("ca.pem");
    println!("  admin API    {}", apis.join("  "));
    println!("  admin token  {}", fleet.managers.token);
    println!(
        "  CLI          cargo run -q -p fleetgate-manager-cli -- --server {} --ca-cert {} --token {} cluster status",
        apis[0],
        ca.display(),
        fleet.managers.token
    );
    println!("  try          curl -s http://{first}/hello                 (blue; the web route)");
    println!("               curl -sN http://{first}/sse                  (server-sent events)");
    println!(
        "               for i in $(seq 30); do curl -s -o /dev/null -w '%{{http_code}} ' http://{first}/api/x; done   (429 past 20/s)"
    );
    println!("               curl -s http://{first}/private               (401 without a token)");
    println!("               curl -s -H 'authorization: Bearer {token}' http://{first}/private");
    println!(
        "  logs         {}/managers/*.log  {}/agents/*.log",
        options.root.display(),
        options.root.display()
    );
    println!("Press Ctrl-C to stop.");
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("cannot watch SIGTERM")?;
    tokio::select! {
        result = tokio::signal::ctrl_c() => result.context("cannot wait for Ctrl-C")?,
        _ = term.recv() => {}
    }
    eprintln!("stopping the fleet");
    fleet.shutdown().await;
    eprintln!("stopped");
    Ok(ExitCode::SUCCESS)
}

fn run_scenarios(
    paths: &[PathBuf],
    short: bool,
    report: Option<&std::path::Path>,
    state_dir: &std::path::Path,
) -> ExitCode {
    // Parse every file first: a typo in the last one should not wait for the first to run.
    let mut scenarios = Vec::new();
    for path in paths {
        match scenario::Scenario::load(path) {
            Ok(s) => scenarios.push(s),
            Err(e) => {
                eprintln!("error: {e:#}");
                return ExitCode::from(2);
            }
        }
    }
    let bin = match std::env::current_exe() {
        Ok(bin) => bin,
        Err(e) => {
            eprintln!("error: cannot find this program's path: {e}");
            return ExitCode::from(2);
        }
    };
    run_multi(async move {
        let mut reports = Vec::new();
        for s in &scenarios {
            let options = scenario::RunOptions {
                bin: bin.clone(),
                root: std::path::absolute(state_dir.join(&s.name))?,
                short,
            };
            // Ctrl-C drops the run: the fleet's processes are killed on the way out instead of
            // outliving this one.
            let outcome = tokio::select! {
                outcome = scenario::run(s, &options) => outcome,
                _ = tokio::signal::ctrl_c() => {
                    eprintln!("interrupted: stopping {}", s.name);
                    return Ok(ExitCode::from(130));
                }
            };
            match outcome {
                Ok(r) => reports.push(serde_json::to_value(&r)?),
                Err(e) => {
                    println!("FAILED {}: {e:#}", s.name);
                    reports.push(serde_json::json!({
                        "scenario": s.name, "short": short, "passed": false,
                        "error": format!("{e:#}"),
                    }));
                }
            }
            println!();
        }
        let passed = reports.iter().all(|r| r["passed"] == true);
        if reports.len() > 1 {
            println!("summary:");
            for r in &reports {
                println!(
                    "  {} {:<28} {:>6.1}s",
                    if r["passed"] == true {
                        "PASSED"
                    } else {
                        "FAILED"
                    },
                    r["scenario"].as_str().unwrap_or("?"),
                    r["total_secs"].as_f64().unwrap_or(0.0)
                );
            }
        }
        if let Some(path) = report {
            let doc = serde_json::json!({ "passed": passed, "short": short, "scenarios": reports });
            std::fs::write(path, serde_json::to_vec_pretty(&doc)?)
                .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))?;
            println!("report written to {}", path.display());
        }
        Ok(if passed {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        })
    })
}

/// Runs a small tool on a current-thread runtime and maps its outcome to an exit code.
fn run_async(work: impl std::future::Future<Output = anyhow::Result<()>>) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(work) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
