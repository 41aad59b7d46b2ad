//! The `fleetgate-manager` command line: parsing and dispatch, shared by the binary and by the
//! testbed (which runs managers as processes of its own binary).

use std::path::PathBuf;
use std::process::ExitCode;

use crate::node;
use crate::settings::{DataDir, NodeSettings};
use clap::{Args, Parser, Subcommand};
use fleetgate_manager_store::ManagerNode;

/// A Fleetgate manager node: one member of the Raft-replicated config store, serving the admin
/// API.
///
/// Start a cluster with `init` on the first node, then `serve` it; add nodes with `join`.
#[derive(Debug, Parser)]
#[command(name = "fleetgate-manager", version)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Create a new cluster of one node: the data directory, the cluster CA, this node's
    /// certificate and a bootstrap admin token (printed once, and written to
    /// DATA_DIR/admin.token with mode 0600). Then run the node with `serve`.
    Init {
        #[command(flatten)]
        node: NodeArgs,
    },
    /// Run the node stored in the data directory (created by `init` or `join`).
    Serve {
        /// The node's data directory.
        #[arg(long, env = "FLEETGATE_DATA_DIR")]
        data_dir: PathBuf,
    },
    /// Add this new node to a running cluster and run it: fetches the cluster CA and a node
    /// certificate through the admin API, starts the node, then asks the leader to add it as a
    /// learner and promote it to voter. Keeps running the node; after a restart, run it with
    /// `serve`.
    Join {
        #[command(flatten)]
        node: NodeArgs,
        /// The admin API address (`host:port`) of any node of the cluster.
        #[arg(long)]
        cluster: String,
        /// An admin token of the cluster.
        #[arg(long, env = "FLEETGATE_TOKEN", hide_env_values = true)]
        token: String,
        /// The cluster CA certificate (PEM; `tls/ca.pem` in any node's data directory). The
        /// admin API is HTTPS with certificates of this CA; nothing else is trusted.
        #[arg(long)]
        ca_cert: PathBuf,
    },
    /// Remove this node from its cluster. The node must be running (`serve`); stop it
    /// afterwards.
    Leave {
        /// The node's data directory.
        #[arg(long, env = "FLEETGATE_DATA_DIR")]
        data_dir: PathBuf,
        /// An admin token of the cluster.
        #[arg(long, env = "FLEETGATE_TOKEN", hide_env_values = true)]
        token: String,
    },
}

#[derive(Debug, Args)]
struct NodeArgs {
    /// The node's data directory (created): settings, TLS material, the Raft store.
    #[arg(long, env = "FLEETGATE_DATA_DIR")]
    data_dir: PathBuf,
    /// This node's id, unique in the cluster and never reused.
    #[arg(long)]
    node_id: u64,
    /// `host:port` for Raft RPCs from other managers (gRPC, mutual TLS with the cluster CA).
    /// Other managers connect to this exact address.
    #[arg(long)]
    raft_addr: String,
    /// `host:port` for the admin REST API over HTTPS (the CLI, the console, other managers
    /// forwarding writes to the leader). Its certificate is the node's, from the cluster CA,
    /// for the name `fleetgate-manager`.
    #[arg(long)]
    api_addr: String,
    /// `host:port` (UDP) for agents: enrolment with a join token and config sync over QUIC
    /// with mutual TLS. Agents may be given any node's sync address; followers serve them too.
    #[arg(long)]
    sync_addr: String,
}

impl NodeArgs {
    fn split(self) -> (DataDir, NodeSettings) {
        (
            DataDir::new(self.data_dir),
            NodeSettings {
                node_id: self.node_id,
                addrs: ManagerNode {
                    raft_addr: self.raft_addr,
                    api_addr: self.api_addr,
                    sync_addr: self.sync_addr,
                },
            },
        )
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Cmd::Init { node } => {
            let (dir, settings) = node.split();
            let done = node::init(&dir, &settings).await?;
            println!("{}", done.admin_token);
            eprintln!(
                "initialized node {} in {}; the admin token above is shown once (also in {}); start the node with `fleetgate-manager serve --data-dir {}`",
                settings.node_id,
                dir.root().display(),
                dir.admin_token().display(),
                dir.root().display()
            );
        }
        Cmd::Serve { data_dir } => {
            node::start(&DataDir::new(data_dir)).await?.run().await?;
        }
        Cmd::Join {
            node,
            cluster,
            token,
            ca_cert,
        } => {
            let (dir, settings) = node.split();
            let ca_pem = std::fs::read_to_string(&ca_cert)
                .map_err(|e| anyhow::anyhow!("{}: {e}", ca_cert.display()))?;
            node::join(&dir, &settings, &cluster, &token, &ca_pem)
                .await?
                .run()
                .await?;
        }
        Cmd::Leave { data_dir, token } => {
            node::leave(&DataDir::new(data_dir), &token).await?;
            eprintln!("left the cluster; the node can be stopped");
        }
    }
    Ok(())
}

/// Parses `args` (the program name first) and runs the command; what `main` does.
pub fn main_with_args<I, T>(args: I) -> ExitCode
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let cli = Cli::parse_from(args);
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,openraft=warn")),
        )
        .with_writer(std::io::stderr)
        .try_init()
        .ok();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("fleetgate-manager: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("fleetgate-manager: {e:#}");
            ExitCode::FAILURE
        }
    }
}
