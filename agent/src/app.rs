//! Process wiring: runtime, listeners, config source, signals, drain.

use std::sync::Arc;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::config::AgentConfig;
use crate::gateway::Gateway;
use crate::generation::ConfigSource;
use crate::server::{self, ServerSettings};
use crate::source;

/// A built agent: listeners bound, runtime ready. [`App::run`] serves until SIGTERM/SIGINT.
#[derive(Debug)]
pub struct App {
    config: AgentConfig,
    runtime: tokio::runtime::Runtime,
    listeners: Listeners,
}

#[derive(Debug)]
struct Listeners {
    plain: std::net::TcpListener,
    tls: Option<std::net::TcpListener>,
    admin: std::net::TcpListener,
}

fn bind(addr: std::net::SocketAddr, what: &str) -> anyhow::Result<std::net::TcpListener> {
    let listener = std::net::TcpListener::bind(addr)
        .with_context(|| format!("cannot listen on {addr} for {what}"))?;
    listener.set_nonblocking(true)?;
    Ok(listener)
}

impl App {
    /// Builds the runtime and binds every listener, so that a busy port fails here with a
    /// clear message before anything is served.
    pub fn build(config: AgentConfig) -> anyhow::Result<Self> {
        // One worker means one thread doing everything: the current-thread scheduler then
        // saves the cross-thread wake-ups of the work-stealing one.
        let mut runtime = match config.workers {
            Some(1) => tokio::runtime::Builder::new_current_thread(),
            _ => tokio::runtime::Builder::new_multi_thread(),
        };
        runtime.enable_all().thread_name("fleetgate-worker");
        if let Some(workers) = config.workers.filter(|w| *w > 1) {
            runtime.worker_threads(workers);
        }
        let runtime = runtime.build().context("cannot start the async runtime")?;
        let listeners = Listeners {
            plain: bind(config.listen, "HTTP")?,
            tls: config.listen_tls.map(|a| bind(a, "HTTPS")).transpose()?,
            admin: bind(config.admin, "the admin API")?,
        };
        Ok(Self {
            config,
            runtime,
            listeners,
        })
    }

    /// Serves until SIGTERM or SIGINT, then drains.
    pub fn run(self) -> anyhow::Result<()> {
        let App {
            config,
            runtime,
            listeners,
        } = self;
        runtime.block_on(async move {
            let gateway = Gateway::new(config.access_log, config.data_dir.clone());
            let (stop, stopped) = watch::channel(false);
            let servers = start(&gateway, &config, listeners, stopped)?;
            wait_for_signal().await;
            tracing::info!(
                "shutting down: no new connections; draining open ones for up to {}s",
                config.drain_timeout
            );
            let _ = stop.send(true);
            // Each listener returns once its connections finished or its drain deadline passed.
            for server in servers {
                let _ = server.await;
            }
            tracing::info!("stopped");
            Ok::<_, anyhow::Error>(())
        })?;
        // Upgraded connections and background tasks still running end with the runtime.
        runtime.shutdown_timeout(std::time::Duration::from_secs(1));
        Ok(())
    }
}

fn start(
    gateway: &Arc<Gateway>,
    config: &AgentConfig,
    listeners: Listeners,
    stopped: watch::Receiver<bool>,
) -> anyhow::Result<Vec<tokio::task::JoinHandle<()>>> {
    // Serve something before anything else: the config file, else the last persisted snapshot.
    // In manager mode, the persisted snapshot serves before any manager is asked. The file's
    // fingerprint is taken before it is read, so the watcher sees any change made after.
    let loaded = config.config.as_deref().map(source::fingerprint);
    let from_file = config
        .config
        .as_ref()
        .is_some_and(|path| source::load_and_apply(gateway, path, 1));
    // Loaded once: in manager mode it is also the base of the first delta.
    let mut manager_base = None;
    if !from_file {
        match gateway.load_persisted() {
            Some(persisted) => {
                let snapshot = persisted.snapshot;
                match &config.config {
                    Some(_) => tracing::warn!(
                        revision = snapshot.revision,
                        "config file unusable at start; serving the persisted snapshot until it is fixed"
                    ),
                    None => tracing::info!(
                        revision = snapshot.revision,
                        "serving the persisted snapshot while connecting to the managers"
                    ),
                }
                let _ = gateway.apply(&snapshot, ConfigSource::Disk);
                if persisted.from_manager {
                    manager_base = Some(snapshot);
                }
            }
            None => match &config.config {
                Some(path) => tracing::warn!(
                    "no usable config yet; answering 404 until {} is fixed",
                    path.display()
                ),
                None => tracing::info!(
                    "no persisted snapshot yet; answering 404 until a manager sends the config"
                ),
            },
        }
    }
    let settings = ServerSettings {
        header_timeout: config.header_timeout(),
        max_header_bytes: config.max_header_bytes,
        drain_timeout: config.drain_timeout(),
    };
    let plain = TcpListener::from_std(listeners.plain)?;
    tracing::info!(addr = %plain.local_addr()?, "listening for HTTP");
    let mut servers = vec![tokio::spawn(server::serve(
        plain,
        gateway.clone(),
        settings,
        false,
        stopped.clone(),
    ))];
    if let Some(tls) = listeners.tls {
        let tls = TcpListener::from_std(tls)?;
        tracing::info!(addr = %tls.local_addr()?, "listening for HTTPS");
        servers.push(tokio::spawn(server::serve(
            tls,
            gateway.clone(),
            settings,
            true,
            stopped.clone(),
        )));
    }
    let admin = TcpListener::from_std(listeners.admin)?;
    tracing::info!(addr = %admin.local_addr()?, "admin API listening");
    tokio::spawn(crate::admin::serve(admin, gateway.clone(), stopped.clone()));
    match (&config.config, &config.data_dir) {
        (Some(path), _) => {
            tokio::spawn(source::watch_file(
                gateway.clone(),
                path.clone(),
                loaded.unwrap_or_default(),
                config.watch_interval(),
                stopped,
            ));
        }
        (None, Some(data_dir)) => {
            let settings = crate::sync::SyncSettings {
                managers: config.manager.clone(),
                join_token: config.join.clone(),
                name: config.agent_name(),
                labels: config.labels.iter().cloned().collect(),
                data_dir: data_dir.clone(),
            };
            tokio::spawn(crate::sync::run(
                gateway.clone(),
                settings,
                manager_base,
                stopped,
            ));
        }
        (None, None) => anyhow::bail!("manager mode needs --data-dir"),
    }
    Ok(servers)
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!("cannot watch SIGTERM ({e}); stop with Ctrl-C");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
