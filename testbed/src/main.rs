//! `fleetgate-testbed`: run Fleetgate on one machine.
//!
//! `up` starts demo backends (blue and green) and a gateway agent as separate processes of this
//! same binary, applies the standalone example config, prints where everything is, and stops
//! it all on Ctrl-C. Managers and emulated clouds join when the manager and sync issues land.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, ExitCode, Stdio};

use clap::{Parser, Subcommand};

mod managers;

use fleetgate_testbed::{backend, load, wan};

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
    /// Start demo backends and a gateway on loopback, and keep them running until Ctrl-C.
    Up {
        /// Config bundle served by the gateway.
        #[arg(long, default_value = "examples/standalone/gateway.yaml")]
        config: PathBuf,
        /// Gateway HTTP address.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
        /// Gateway admin address.
        #[arg(long, default_value = "127.0.0.1:9901")]
        admin: SocketAddr,
        /// The blue and green demo backends (the example config points at these).
        #[arg(long, default_values = ["127.0.0.1:9001", "127.0.0.1:9002"], num_args = 2)]
        backends: Vec<SocketAddr>,
        /// State directory (persisted snapshots, manager data, logs).
        #[arg(long, default_value = ".fleetgate")]
        state_dir: PathBuf,
        /// Manager nodes to run (a Raft cluster; 0 for none). Their admin APIs listen on
        /// 127.0.0.1:8101 and up, Raft on 7101 and up.
        #[arg(long, default_value_t = 3)]
        managers: u8,
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
            config,
            listen,
            admin,
            backends,
            state_dir,
            managers,
        } => match up(&config, listen, admin, &backends, &state_dir, managers) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::FAILURE
            }
        },
    }
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

/// Children that are killed when this guard drops, so that Ctrl-C or an error never leaves
/// processes behind.
pub(crate) struct Fleet(pub(crate) Vec<(String, Child)>);

impl Drop for Fleet {
    fn drop(&mut self) {
        for (name, child) in &mut self.0 {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(child.id().to_string())
                .status();
            let _ = child.wait();
            eprintln!("stopped {name}");
        }
    }
}

fn up(
    config: &std::path::Path,
    listen: SocketAddr,
    admin: SocketAddr,
    backends: &[SocketAddr],
    state_dir: &std::path::Path,
    manager_count: u8,
) -> anyhow::Result<()> {
    use anyhow::Context;
    let exe = std::env::current_exe().context("cannot find this program's path")?;
    std::fs::create_dir_all(state_dir.join("logs"))
        .with_context(|| format!("cannot create {}", state_dir.display()))?;
    let log = |name: &str| -> anyhow::Result<Stdio> {
        let path = state_dir.join("logs").join(format!("{name}.log"));
        Ok(std::fs::File::create(&path)
            .with_context(|| format!("cannot create {}", path.display()))?
            .into())
    };
    let mut fleet = Fleet(Vec::new());
    for (addr, stage) in backends.iter().zip(["blue", "green"]) {
        let name = format!("backend-{stage}");
        eprintln!("starting {name} on {addr}");
        let child = Command::new(&exe)
            .args([
                "demo-backend",
                "--listen",
                &addr.to_string(),
                "--name",
                &name,
            ])
            .stdout(log(&name)?)
            .stderr(log(&format!("{name}.err"))?)
            .spawn()
            .with_context(|| format!("cannot start {name}"))?;
        fleet.0.push((name, child));
    }
    eprintln!(
        "starting the gateway agent on {listen} with {}",
        config.display()
    );
    let agent = Command::new(&exe)
        .arg("agent")
        .arg("--config")
        .arg(config)
        .args([
            "--listen",
            &listen.to_string(),
            "--admin",
            &admin.to_string(),
        ])
        .arg("--data-dir")
        .arg(state_dir.join("agent"))
        .stdout(log("agent-access")?)
        .stderr(log("agent")?)
        .spawn()
        .context("cannot start the agent")?;
    fleet.0.push(("agent".into(), agent));

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let cluster = if manager_count > 0 {
        Some(runtime.block_on(managers::start(
            &exe,
            state_dir,
            manager_count,
            config,
            &mut fleet,
        ))?)
    } else {
        None
    };
    runtime.block_on(async {
        wait_ready(admin).await?;
        println!();
        println!("Fleetgate is up.");
        println!("  gateway      http://{listen}/            (try /api/hello, /healthz, /sse, and a WebSocket on /ws)");
        println!("  canary       curl -H 'x-canary: green' http://{listen}/api/hello");
        println!("  admin        http://{admin}/config   http://{admin}/metrics");
        println!("  config       {} (edit it: changes apply hot)", config.display());
        if let Some(cluster) = &cluster {
            cluster.print();
        }
        println!("  logs         {}/logs/", state_dir.display());
        println!("Press Ctrl-C to stop.");
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).context("cannot watch SIGTERM")?;
        tokio::select! {
            result = tokio::signal::ctrl_c() => result.context("cannot wait for Ctrl-C")?,
            _ = term.recv() => {}
        }
        eprintln!("stopping the fleet");
        Ok::<_, anyhow::Error>(())
    })?;
    drop(fleet);
    Ok(())
}

async fn wait_ready(admin: SocketAddr) -> anyhow::Result<()> {
    use http_body_util::Empty;
    use hyper_util::client::legacy::Client;
    let client: Client<_, Empty<bytes::Bytes>> =
        Client::builder(hyper_util::rt::TokioExecutor::new()).build_http();
    let uri: http::Uri = format!("http://{admin}/readyz").parse()?;
    for _ in 0..100 {
        if let Ok(response) = client.get(uri.clone()).await
            && response.status().is_success()
        {
            return Ok(());
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    anyhow::bail!("the agent did not become ready within 10 s; see .fleetgate/logs/agent.log")
}
