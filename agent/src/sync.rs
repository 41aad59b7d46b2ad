//! Manager mode: the agent keeps a QUIC session (mutual TLS) with one manager at a time and
//! applies what it sends through the same [`Gateway::apply`] as standalone mode.
//!
//! The request path never waits on any of this (law 1): the agent serves its persisted snapshot
//! before it talks to a manager, and through every disconnect (law 2). A session:
//!
//! 1. Resolve the manager addresses (a name may resolve to several) and take the next one.
//! 2. Without an identity, enrol with the join token (the manager is trusted by the CA
//!    fingerprint the token pins), and store the certificate.
//! 3. Hello with the revision and checksum the agent serves from a manager; receive a Delta on
//!    the control stream or a compressed Snapshot on a stream of its own; apply it (compile off
//!    the async workers, swap, persist) and only then Ack, or Nack with every problem.
//! 4. Status every [`STATUS_EVERY`]; renew the certificate at half its life on the same
//!    connection.
//!
//! Any failure ends the session; the agent waits a full-jitter exponential backoff and tries
//! the next manager.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, anyhow};
use fleetgate_proto::frame::{self, FrameError};
use fleetgate_proto::join_token::JoinToken;
use fleetgate_proto::sync::v1 as wire;
use fleetgate_proto::{MANAGER_SERVER_NAME, PROTOCOL_VERSION, WireError};
use fleetgate_shared::model::Labels;
use fleetgate_shared::{Snapshot, ValidationError};
use serde::Serialize;
use tokio::sync::watch;

use crate::gateway::Gateway;
use crate::generation::ConfigSource;
use crate::identity::{self, Identity};

/// How often the agent reports its status.
pub const STATUS_EVERY: Duration = Duration::from_secs(10);
/// Reconnect backoff: the first retry waits up to this, doubling each failure...
const BACKOFF_BASE: Duration = Duration::from_millis(200);
/// ...up to this.
const BACKOFF_CAP: Duration = Duration::from_secs(10);
/// A session that lasted this long counts as healthy: the backoff starts over.
const HEALTHY_AFTER: Duration = Duration::from_secs(30);
/// How long a QUIC handshake may take before the next manager is tried.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// QUIC keep-alive and idle timeout (the manager uses the same). A manager that dies without
/// closing (SIGKILL, power, a partition) is noticed after the idle timeout, and the agent moves
/// to the next one: 5 s bounds how long the agent misses revisions; a keep-alive every second
/// keeps several chances within it on a lossy link, for about 50 bytes a second.
const KEEP_ALIVE: Duration = Duration::from_secs(1);
const IDLE_TIMEOUT: Duration = Duration::from_secs(5);
/// After a failed renewal, try again after this (or sooner if the certificate expires sooner).
const RENEW_RETRY: Duration = Duration::from_secs(60);

/// What manager mode needs from the command line.
#[derive(Clone, Debug)]
pub struct SyncSettings {
    /// `host:port` of each manager's sync endpoint; names may resolve to several addresses.
    pub managers: Vec<String>,
    pub join_token: Option<String>,
    pub name: String,
    pub labels: Labels,
    pub data_dir: PathBuf,
}

/// What `/config` and `/metrics` show about the sync session.
#[derive(Clone, Debug, Default, Serialize)]
pub struct SyncStatus {
    /// `enrolling`, `connecting`, `connected` or `waiting` (backoff).
    pub state: &'static str,
    pub agent_id: Option<String>,
    /// The manager address of the current (or last) session.
    pub manager: Option<String>,
    pub connected_since_ms: Option<u64>,
    pub last_error: Option<String>,
    pub sessions_total: u64,
    pub acks_total: u64,
    pub nacks_total: u64,
    pub cert_not_after_ms: Option<u64>,
    /// UDP bytes received from and sent to managers (QUIC framing, TLS and keep-alives
    /// included: what the network carries).
    pub received_bytes: u64,
    pub sent_bytes: u64,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Exponential backoff with full jitter: each wait is uniform in `[0, min(cap, base·2ⁿ)]`,
/// which spreads a fleet's reconnects after a manager outage instead of synchronising them.
#[derive(Debug)]
pub struct Backoff {
    failures: u32,
}

impl Backoff {
    pub fn new() -> Self {
        Self { failures: 0 }
    }

    pub fn reset(&mut self) {
        self.failures = 0;
    }

    /// The next wait.
    pub fn next_wait(&mut self) -> Duration {
        let ceiling = BACKOFF_BASE
            .saturating_mul(1u32 << self.failures.min(16))
            .min(BACKOFF_CAP);
        self.failures = self.failures.saturating_add(1);
        ceiling.mul_f64(fastrand::f64())
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Self::new()
    }
}

/// What the agent serves from the managers: the base of the next delta.
struct Base {
    snapshot: Snapshot,
}

/// The sync client's state across sessions.
struct Client {
    gateway: Arc<Gateway>,
    settings: SyncSettings,
    identity: Option<Identity>,
    /// The last snapshot applied from a manager (or persisted from one); `None` makes Hello ask
    /// for a full snapshot.
    base: Option<Base>,
    endpoint_v4: Option<quinn::Endpoint>,
    endpoint_v6: Option<quinn::Endpoint>,
    next_manager: usize,
    /// UDP bytes of the sessions that ended, so that the totals survive reconnects.
    received_before: u64,
    sent_before: u64,
}

/// Why a session ended.
enum End {
    /// Try the next manager after a backoff.
    Retry(String),
    /// The process is stopping.
    Stop,
}

/// Runs manager mode until `stop` flips. `base` is the persisted snapshot the agent serves, if a
/// manager sent it: the base of the first delta.
pub async fn run(
    gateway: Arc<Gateway>,
    settings: SyncSettings,
    base: Option<Snapshot>,
    mut stop: watch::Receiver<bool>,
) {
    let identity = match Identity::load(&settings.data_dir) {
        Ok(identity) => identity,
        Err(e) => {
            tracing::error!("agent identity unusable ({e:#}); enrolling again with --join");
            None
        }
    };
    let base = base.map(|snapshot| Base { snapshot });
    let mut client = Client {
        gateway: gateway.clone(),
        settings,
        identity,
        base,
        endpoint_v4: None,
        endpoint_v6: None,
        next_manager: fastrand::usize(..1024),
        received_before: 0,
        sent_before: 0,
    };
    gateway.set_sync_status(|s| {
        s.agent_id = client.identity.as_ref().map(|i| i.agent_id.clone());
        s.cert_not_after_ms = client.identity.as_ref().map(|i| i.not_after_ms);
    });
    let mut backoff = Backoff::new();
    loop {
        if *stop.borrow() {
            return;
        }
        let started = Instant::now();
        let end = client.attempt(&mut stop).await;
        let reason = match end {
            End::Stop => return,
            End::Retry(reason) => reason,
        };
        if started.elapsed() >= HEALTHY_AFTER {
            backoff.reset();
        }
        let wait = backoff.next_wait();
        tracing::warn!(
            "manager session ended: {reason}; still serving revision {}; retrying in {} ms",
            gateway.current().revision,
            wait.as_millis()
        );
        gateway.set_sync_status(|s| {
            s.state = "waiting";
            s.connected_since_ms = None;
            s.last_error = Some(reason.clone());
        });
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            _ = stop.changed() => return,
        }
    }
}

impl Client {
    /// Every address the manager list resolves to, in list order.
    async fn resolve(&self) -> Vec<SocketAddr> {
        let mut out = Vec::new();
        for manager in &self.settings.managers {
            match tokio::net::lookup_host(manager.as_str()).await {
                Ok(addrs) => out.extend(addrs),
                Err(e) => tracing::warn!(%manager, "cannot resolve manager address: {e}"),
            }
        }
        out
    }

    fn endpoint(&mut self, addr: SocketAddr) -> anyhow::Result<quinn::Endpoint> {
        let slot = if addr.is_ipv4() {
            &mut self.endpoint_v4
        } else {
            &mut self.endpoint_v6
        };
        if let Some(endpoint) = slot {
            return Ok(endpoint.clone());
        }
        let bind: SocketAddr = if addr.is_ipv4() {
            (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
        } else {
            (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
        };
        let endpoint = quinn::Endpoint::client(bind).context("cannot open a UDP socket")?;
        *slot = Some(endpoint.clone());
        Ok(endpoint)
    }

    async fn connect(
        &mut self,
        addr: SocketAddr,
        tls: rustls::ClientConfig,
    ) -> anyhow::Result<quinn::Connection> {
        let quic = quinn::crypto::rustls::QuicClientConfig::try_from(tls)?;
        let mut config = quinn::ClientConfig::new(Arc::new(quic));
        let mut transport = quinn::TransportConfig::default();
        transport
            .keep_alive_interval(Some(KEEP_ALIVE))
            .max_idle_timeout(Some(IDLE_TIMEOUT.try_into()?));
        config.transport_config(Arc::new(transport));
        let connecting = self
            .endpoint(addr)?
            .connect_with(config, addr, MANAGER_SERVER_NAME)?;
        match tokio::time::timeout(CONNECT_TIMEOUT, connecting).await {
            Ok(Ok(conn)) => Ok(conn),
            Ok(Err(e)) => Err(anyhow!("cannot connect to {addr}: {e}")),
            Err(_) => Err(anyhow!(
                "cannot connect to {addr}: no handshake within {} s",
                CONNECT_TIMEOUT.as_secs()
            )),
        }
    }

    /// One try: pick a manager, enrol if needed, and run a session until it ends.
    async fn attempt(&mut self, stop: &mut watch::Receiver<bool>) -> End {
        let addrs = self.resolve().await;
        if addrs.is_empty() {
            return End::Retry("no manager address resolves".to_owned());
        }
        let addr = addrs[self.next_manager % addrs.len()];
        self.next_manager = self.next_manager.wrapping_add(1);
        self.gateway.set_sync_status(|s| {
            s.manager = Some(addr.to_string());
        });
        if self.identity.is_none() {
            match self.enroll(addr).await {
                Ok(identity) => {
                    tracing::info!(agent = %identity.agent_id, manager = %addr, "enrolled with the fleet");
                    self.gateway.set_sync_status(|s| {
                        s.agent_id = Some(identity.agent_id.clone());
                        s.cert_not_after_ms = Some(identity.not_after_ms);
                    });
                    self.identity = Some(identity);
                }
                Err(e) => return End::Retry(format!("enrolment at {addr} failed: {e:#}")),
            }
        }
        let Some(identity) = self.identity.clone() else {
            return End::Retry("no identity".to_owned());
        };
        self.gateway.set_sync_status(|s| s.state = "connecting");
        let tls = match identity.client_config() {
            Ok(tls) => tls,
            Err(e) => {
                // A broken identity cannot fix itself: enrol again (needs a join token).
                self.identity = None;
                return End::Retry(format!("the stored identity is unusable: {e:#}"));
            }
        };
        let conn = match self.connect(addr, tls).await {
            Ok(conn) => conn,
            Err(e) => return End::Retry(format!("{e:#}")),
        };
        let end = self.session(&conn, addr, stop).await;
        conn.close(0u32.into(), b"bye");
        end
    }

    async fn enroll(&mut self, addr: SocketAddr) -> anyhow::Result<Identity> {
        let text = self.settings.join_token.clone().ok_or_else(|| {
            anyhow!("this agent has no identity yet: start it with --join TOKEN (from `fleetgate token create --agent`)")
        })?;
        let token = JoinToken::parse(&text)?;
        self.gateway.set_sync_status(|s| s.state = "enrolling");
        let tls = identity::enrolment_config(&token.ca_fingerprint)?;
        let conn = self.connect(addr, tls).await?;
        let (key_pem, csr_der) = identity::new_key_and_csr()?;
        let issued_ms = now_ms();
        let request = wire::AgentMessage {
            body: Some(wire::agent_message::Body::Enroll(wire::Enroll {
                join_token: token.to_string(),
                csr_der,
                name: self.settings.name.clone(),
                labels: self.settings.labels.clone(),
                version: env!("CARGO_PKG_VERSION").to_owned(),
            })),
        };
        let enrolled = exchange(&conn, &request).await;
        conn.close(0u32.into(), b"enrolled");
        let enrolled = enrolled?;
        let identity = Identity {
            agent_id: enrolled.agent_id,
            cert_pem: enrolled.certificate_pem,
            key_pem,
            manager_ca_pem: enrolled.manager_ca_pem,
            not_after_ms: enrolled.not_after_ms,
            issued_ms,
        };
        // The CA the agent trusts from now on must be the one the token pinned.
        let ca = manager_ca_fingerprint(&identity.manager_ca_pem)?;
        if ca != token.ca_fingerprint {
            return Err(anyhow!(
                "the manager sent a CA other than the one the join token names"
            ));
        }
        identity.client_config()?;
        identity.save(&self.settings.data_dir)?;
        Ok(identity)
    }

    /// Renews the certificate over `conn`; stores and returns the new identity.
    async fn renew(
        &self,
        conn: &quinn::Connection,
        current: &Identity,
    ) -> anyhow::Result<Identity> {
        let (key_pem, csr_der) = identity::new_key_and_csr()?;
        let issued_ms = now_ms();
        let request = wire::AgentMessage {
            body: Some(wire::agent_message::Body::Renew(wire::Renew { csr_der })),
        };
        let enrolled = exchange(conn, &request).await?;
        if enrolled.agent_id != current.agent_id {
            return Err(anyhow!(
                "the manager renewed agent {} instead of {}",
                enrolled.agent_id,
                current.agent_id
            ));
        }
        let identity = Identity {
            agent_id: enrolled.agent_id,
            cert_pem: enrolled.certificate_pem,
            key_pem,
            manager_ca_pem: current.manager_ca_pem.clone(),
            not_after_ms: enrolled.not_after_ms,
            issued_ms,
        };
        identity.client_config()?;
        identity.save(&self.settings.data_dir)?;
        Ok(identity)
    }

    fn hello(&self, identity: &Identity) -> wire::AgentMessage {
        let (have_revision, checksum) = self.base.as_ref().map_or((0, String::new()), |b| {
            (b.snapshot.revision, b.snapshot.checksum().to_string())
        });
        wire::AgentMessage {
            body: Some(wire::agent_message::Body::Hello(wire::Hello {
                agent_id: identity.agent_id.clone(),
                name: self.settings.name.clone(),
                labels: self.settings.labels.clone(),
                version: env!("CARGO_PKG_VERSION").to_owned(),
                have_revision,
                checksum,
                protocol_version: PROTOCOL_VERSION,
            })),
        }
    }

    async fn session(
        &mut self,
        conn: &quinn::Connection,
        addr: SocketAddr,
        stop: &mut watch::Receiver<bool>,
    ) -> End {
        let Some(identity) = self.identity.clone() else {
            return End::Retry("no identity".to_owned());
        };
        let (mut send, recv) = match conn.open_bi().await {
            Ok(streams) => streams,
            Err(e) => return End::Retry(format!("cannot open a stream to {addr}: {e}")),
        };
        if let Err(e) = frame::write_message(&mut send, &self.hello(&identity)).await {
            return End::Retry(format!("cannot send Hello to {addr}: {e}"));
        }
        tracing::info!(manager = %addr, agent = %identity.agent_id, "connected to manager");
        self.gateway.set_sync_status(|s| {
            s.state = "connected";
            s.connected_since_ms = Some(now_ms());
            s.last_error = None;
            s.sessions_total += 1;
        });
        let (mut control, reader) = frame::spawn_reader::<_, wire::ManagerMessage>(recv);
        let mut status = tokio::time::interval(STATUS_EVERY);
        status.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut identity = identity;
        let mut renew_at = instant_at(identity.renew_at_ms());
        let end = loop {
            self.count_bytes(conn);
            tokio::select! {
                message = control.recv() => {
                    let message = match message {
                        Some(Ok(message)) => message,
                        Some(Err(FrameError::Closed)) | None => break End::Retry(format!("{addr} closed the session")),
                        Some(Err(e)) => break End::Retry(format!("unreadable message from {addr}: {e}")),
                    };
                    if let Err(end) = self.on_control(&mut send, message).await {
                        break end;
                    }
                }
                uni = conn.accept_uni() => {
                    let mut stream = match uni {
                        Ok(stream) => stream,
                        Err(e) => break End::Retry(format!("connection to {addr} lost: {e}")),
                    };
                    let frame = match frame::read_message::<_, wire::SnapshotFrame>(&mut stream).await {
                        Ok(frame) => frame,
                        Err(e) => break End::Retry(format!("unreadable snapshot from {addr}: {e}")),
                    };
                    if let Err(end) = self.on_snapshot_frame(&mut send, frame).await {
                        break end;
                    }
                }
                _ = status.tick() => {
                    let generation = self.gateway.current();
                    let age = generation.applied_at.elapsed().unwrap_or_default();
                    let message = wire::AgentMessage {
                        body: Some(wire::agent_message::Body::Status(wire::Status {
                            applied_revision: generation.revision,
                            config_age_ms: u64::try_from(age.as_millis()).unwrap_or(u64::MAX),
                            counters: self.gateway.telemetry.counters(),
                        })),
                    };
                    if let Err(e) = frame::write_message(&mut send, &message).await {
                        break End::Retry(format!("cannot send status to {addr}: {e}"));
                    }
                }
                () = tokio::time::sleep_until(renew_at) => {
                    match self.renew(conn, &identity).await {
                        Ok(renewed) => {
                            tracing::info!(agent = %renewed.agent_id, "client certificate renewed");
                            self.gateway.set_sync_status(|s| s.cert_not_after_ms = Some(renewed.not_after_ms));
                            renew_at = instant_at(renewed.renew_at_ms());
                            self.identity = Some(renewed.clone());
                            identity = renewed;
                        }
                        Err(e) => {
                            tracing::warn!("certificate renewal failed ({e:#}); retrying in {} s", RENEW_RETRY.as_secs());
                            renew_at = tokio::time::Instant::now() + RENEW_RETRY;
                        }
                    }
                }
                _ = stop.changed() => break End::Stop,
            }
        };
        reader.abort();
        self.count_bytes(conn);
        let stats = conn.stats();
        self.received_before += stats.udp_rx.bytes;
        self.sent_before += stats.udp_tx.bytes;
        end
    }

    /// Publishes the byte counters: earlier sessions plus this connection so far.
    fn count_bytes(&self, conn: &quinn::Connection) {
        let stats = conn.stats();
        let (rx, tx) = (
            self.received_before + stats.udp_rx.bytes,
            self.sent_before + stats.udp_tx.bytes,
        );
        self.gateway.set_sync_status(|s| {
            s.received_bytes = rx;
            s.sent_bytes = tx;
        });
    }

    async fn on_control(
        &mut self,
        send: &mut quinn::SendStream,
        message: wire::ManagerMessage,
    ) -> Result<(), End> {
        use wire::manager_message::Body;
        match message.body {
            Some(Body::Delta(delta)) => {
                let revision = delta.to;
                tracing::debug!(from = delta.from, revision, "delta received");
                let Some(base) = &self.base else {
                    return Err(End::Retry(
                        "a delta arrived but no base snapshot is known; resyncing".to_owned(),
                    ));
                };
                let next = match delta.apply_to(&base.snapshot) {
                    Ok(next) => next,
                    Err(e @ (WireError::Delta(_) | WireError::ChecksumMismatch { .. })) => {
                        // The manager and the agent disagree about the base: a new session
                        // starts with Hello, and the manager then sends a full snapshot.
                        self.base = None;
                        return Err(End::Retry(format!(
                            "delta to revision {revision} does not fit: {e}; resyncing"
                        )));
                    }
                    Err(e) => {
                        let errors = vec![problem(e.to_string())];
                        return self.reply(send, revision, Err(errors)).await;
                    }
                };
                let result = self.apply(next).await;
                self.reply(send, revision, result).await
            }
            // Managers send snapshots on their own stream; accept one here all the same.
            Some(Body::Snapshot(snapshot)) => self.on_snapshot(send, snapshot).await,
            Some(Body::Ping(ping)) => {
                let pong = wire::AgentMessage {
                    body: Some(wire::agent_message::Body::Pong(wire::Pong {
                        nonce: ping.nonce,
                    })),
                };
                frame::write_message(send, &pong)
                    .await
                    .map_err(|e| End::Retry(format!("cannot answer a ping: {e}")))
            }
            Some(Body::Pong(_)) => Ok(()),
            Some(Body::Goodbye(goodbye)) => Err(End::Retry(format!(
                "the manager said goodbye: {}",
                goodbye.reason
            ))),
            Some(Body::Enrolled(_)) | None => {
                Err(End::Retry("unexpected message from the manager".to_owned()))
            }
        }
    }

    /// Inflates a snapshot frame off the async workers and applies it.
    async fn on_snapshot_frame(
        &mut self,
        send: &mut quinn::SendStream,
        frame: wire::SnapshotFrame,
    ) -> Result<(), End> {
        let snapshot = tokio::task::spawn_blocking(move || frame::decompress_snapshot(&frame))
            .await
            .map_err(|e| End::Retry(format!("snapshot decoding failed: {e}")))?
            .map_err(|e| End::Retry(format!("unusable snapshot: {e}")))?;
        self.on_snapshot(send, snapshot).await
    }

    /// Decodes a snapshot (off the async workers: big ones are CPU work), applies it, and
    /// answers.
    async fn on_snapshot(
        &mut self,
        send: &mut quinn::SendStream,
        snapshot: wire::Snapshot,
    ) -> Result<(), End> {
        let revision = snapshot.revision;
        let decoded = tokio::task::spawn_blocking(move || Snapshot::try_from(snapshot))
            .await
            .map_err(|e| End::Retry(format!("snapshot decoding failed: {e}")))?;
        let result = match decoded {
            Ok(snapshot) => self.apply(snapshot).await,
            Err(e) => Err(vec![problem(e.to_string())]),
        };
        self.reply(send, revision, result).await
    }

    /// Applies a snapshot from the manager (validate, compile, swap, persist) unless it would
    /// move the agent's revision backwards.
    async fn apply(&mut self, snapshot: Snapshot) -> Result<(), Vec<ValidationError>> {
        if let Some(base) = &self.base
            && snapshot.revision <= base.snapshot.revision
            && snapshot.checksum() != base.snapshot.checksum()
        {
            return Err(vec![problem(format!(
                "revision {} is older than revision {} which this agent serves; revisions only move forward",
                snapshot.revision, base.snapshot.revision
            ))]);
        }
        let gateway = self.gateway.clone();
        let (snapshot, result) = tokio::task::spawn_blocking(move || {
            let result = gateway.apply(&snapshot, ConfigSource::Manager).map(|_| ());
            (snapshot, result)
        })
        .await
        .map_err(|e| vec![problem(format!("apply failed: {e}"))])?;
        result?;
        self.base = Some(Base { snapshot });
        Ok(())
    }

    async fn reply(
        &mut self,
        send: &mut quinn::SendStream,
        revision: u64,
        result: Result<(), Vec<ValidationError>>,
    ) -> Result<(), End> {
        let body = match result {
            Ok(()) => {
                let checksum = self
                    .base
                    .as_ref()
                    .map(|b| b.snapshot.checksum().to_string())
                    .unwrap_or_default();
                self.gateway.set_sync_status(|s| s.acks_total += 1);
                wire::agent_message::Body::Ack(wire::Ack { revision, checksum })
            }
            Err(errors) => {
                tracing::error!(
                    revision,
                    problems = errors.len(),
                    "rejected revision {revision} from the manager; still serving revision {}",
                    self.gateway.current().revision
                );
                self.gateway.set_sync_status(|s| s.nacks_total += 1);
                wire::agent_message::Body::Nack(wire::Nack {
                    revision,
                    errors: errors.iter().map(Into::into).collect(),
                })
            }
        };
        frame::write_message(send, &wire::AgentMessage { body: Some(body) })
            .await
            .map_err(|e| End::Retry(format!("cannot answer revision {revision}: {e}")))
    }
}

/// Sends one request on a new stream and reads the `Enrolled` answer.
async fn exchange(
    conn: &quinn::Connection,
    request: &wire::AgentMessage,
) -> anyhow::Result<wire::Enrolled> {
    let (mut send, mut recv) = conn.open_bi().await?;
    frame::write_message(&mut send, request).await?;
    let _ = send.finish();
    let answer: wire::ManagerMessage =
        tokio::time::timeout(Duration::from_secs(30), frame::read_message(&mut recv))
            .await
            .map_err(|_| anyhow!("no answer within 30 s"))??;
    match answer.body {
        Some(wire::manager_message::Body::Enrolled(enrolled)) => Ok(enrolled),
        Some(wire::manager_message::Body::Goodbye(goodbye)) => Err(anyhow!("{}", goodbye.reason)),
        _ => Err(anyhow!("unexpected answer from the manager")),
    }
}

/// A problem that is not about one resource, for a Nack.
fn problem(message: impl Into<String>) -> ValidationError {
    ValidationError {
        resource: String::new(),
        path: String::new(),
        message: message.into(),
    }
}

/// The tokio instant at a Unix time in milliseconds (now if it has passed).
fn instant_at(unix_ms: u64) -> tokio::time::Instant {
    let wait = unix_ms.saturating_sub(now_ms());
    tokio::time::Instant::now() + Duration::from_millis(wait)
}

/// The fingerprint of the first certificate in `pem`, as join tokens pin it.
fn manager_ca_fingerprint(pem: &str) -> anyhow::Result<String> {
    use rustls_pki_types::pem::PemObject;
    let cert = rustls_pki_types::CertificateDer::pem_slice_iter(pem.as_bytes())
        .next()
        .ok_or_else(|| anyhow!("no certificate in the manager CA"))??;
    Ok(fleetgate_proto::join_token::fingerprint(&cert))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_to_its_cap_with_full_jitter_and_resets() {
        let mut backoff = Backoff::new();
        let mut ceilings_seen = Vec::new();
        for _ in 0..12 {
            ceilings_seen.push(backoff.next_wait());
        }
        assert!(ceilings_seen.iter().all(|w| *w <= BACKOFF_CAP));
        // Full jitter: over many draws at the cap, waits spread over the whole range.
        let draws: Vec<Duration> = (0..200).map(|_| backoff.next_wait()).collect();
        assert!(draws.iter().any(|w| *w < BACKOFF_CAP / 4));
        assert!(draws.iter().any(|w| *w > BACKOFF_CAP * 3 / 4));
        backoff.reset();
        assert!(backoff.next_wait() <= BACKOFF_BASE);
    }
}
