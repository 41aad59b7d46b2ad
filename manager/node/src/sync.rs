//! The sync endpoint: agents connect here over QUIC (mutual TLS, ALPN `fleetgate-sync/1`) and
//! are served from this node's applied state, whether it leads or follows.
//!
//! Per connection, each bidirectional stream the agent opens starts with one message that says
//! what the stream is for (see `proto/.../sync.proto`): `Enroll` (no client certificate needed),
//! `Renew` or `Hello` (a certificate of the agent CA needed). A `Hello` stream is a session:
//!
//! - The node computes the config placed on the agent's labels (cached per label set and
//!   revision in [`Placements`], so a thousand agents with the same labels cost one selection).
//! - It sends a `Delta` when it can rebuild what the agent says it serves (same revision, same
//!   checksum), else a compressed `Snapshot` on a unidirectional stream of its own.
//! - At most one update per agent awaits its Ack or Nack. Revisions committed meanwhile are
//!   coalesced into the next delta, computed from what the agent acknowledged: a slow agent
//!   costs one pending update, not a queue.
//! - After each applied Raft entry the session checks that the agent is still enrolled and
//!   not revoked; a revoked agent gets a Goodbye and its connection is closed.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fleetgate_manager_store::{AgentRecord, Command, CommandResult, ConfigReader};
use fleetgate_proto::PROTOCOL_VERSION;
use fleetgate_proto::frame::{self, FrameError};
use fleetgate_proto::join_token::JoinToken;
use fleetgate_proto::sync::v1 as wire;
use fleetgate_shared::model::Labels;
use fleetgate_shared::{Checksum, Snapshot, diff};
use rustls_pki_types::CertificateDer;

use crate::Error;
use crate::api::now_ms;
use crate::auth::hash_token;
use crate::fleet::{LastNack, NackError};
use crate::node::{NodeCtx, propose_command};
use crate::tls;

/// How long a new stream may take to say what it is for.
const FIRST_MESSAGE_TIMEOUT: Duration = Duration::from_secs(10);
/// QUIC keep-alive: well under the idle timeout, so a quiet session stays open through NATs
/// and a lossy link gets several tries.
const KEEP_ALIVE: Duration = Duration::from_secs(1);
/// A connection with no packet for this long is dead; the agent then tries another manager
/// (the agent uses the same value; the lower of the two applies).
const IDLE_TIMEOUT: Duration = Duration::from_secs(5);
/// Limits on what an agent may claim about itself.
const MAX_LABELS: usize = 64;
const MAX_LABEL_BYTES: usize = 253;
const MAX_NAME_BYTES: usize = 128;
/// Close code sent with a Goodbye that ends the connection.
const CLOSE_REFUSED: u32 = 1;

/// Binds the sync endpoint on `addr` (UDP).
pub fn endpoint(addr: &str, node_tls: &tls::NodeTls) -> Result<quinn::Endpoint, Error> {
    let addr: SocketAddr = addr
        .parse()
        .map_err(|e| Error::Usage(format!("sync address `{addr}`: {e}")))?;
    let crypto = tls::sync_server_config(node_tls)?;
    let quic = quinn::crypto::rustls::QuicServerConfig::try_from(crypto).map_err(Error::tls)?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(quic));
    let mut transport = quinn::TransportConfig::default();
    transport
        .keep_alive_interval(Some(KEEP_ALIVE))
        .max_idle_timeout(Some(IDLE_TIMEOUT.try_into().map_err(Error::tls)?))
        // Agents open a few control streams (session, renewal); only the manager opens
        // unidirectional ones (snapshots).
        .max_concurrent_bidi_streams(8u32.into())
        .max_concurrent_uni_streams(0u32.into());
    config.transport_config(Arc::new(transport));
    quinn::Endpoint::server(config, addr)
        .map_err(|e| Error::Serve(format!("bind sync endpoint {addr} (UDP): {e}")))
}

/// Accepts agents until the endpoint is closed.
pub async fn serve(endpoint: quinn::Endpoint, ctx: NodeCtx) {
    let placements = Arc::new(Placements::default());
    while let Some(incoming) = endpoint.accept().await {
        tokio::spawn(connection(incoming, ctx.clone(), placements.clone()));
    }
}

async fn connection(incoming: quinn::Incoming, ctx: NodeCtx, placements: Arc<Placements>) {
    let remote = incoming.remote_address();
    let conn = match incoming.await {
        Ok(conn) => conn,
        Err(e) => {
            tracing::info!(%remote, "sync handshake failed: {e}");
            return;
        }
    };
    // The verifier already checked the chain to the agent CA; the identity is its subject.
    let agent_id = conn
        .peer_identity()
        .and_then(|any| any.downcast::<Vec<CertificateDer<'static>>>().ok())
        .and_then(|certs| certs.first().and_then(tls::agent_id_of));
    while let Ok((send, recv)) = conn.accept_bi().await {
        tokio::spawn(stream(
            ctx.clone(),
            conn.clone(),
            agent_id.clone(),
            send,
            recv,
            placements.clone(),
        ));
    }
}

fn manager_message(body: wire::manager_message::Body) -> wire::ManagerMessage {
    wire::ManagerMessage { body: Some(body) }
}

/// Sends a Goodbye, then closes the connection once the agent has read it (it closes its side
/// on a Goodbye) or after a second. Closing at once could drop the Goodbye in flight, and the
/// agent would only see "connection lost" instead of the reason.
async fn goodbye_and_close(conn: &quinn::Connection, send: &mut quinn::SendStream, reason: &str) {
    goodbye(send, reason).await;
    let _ = tokio::time::timeout(Duration::from_secs(1), conn.closed()).await;
    conn.close(CLOSE_REFUSED.into(), b"refused");
}

/// Sends a Goodbye and ends the stream.
async fn goodbye(send: &mut quinn::SendStream, reason: &str) {
    let message = manager_message(wire::manager_message::Body::Goodbye(wire::Goodbye {
        reason: reason.to_owned(),
        protocol_version: PROTOCOL_VERSION,
    }));
    let _ = frame::write_message(send, &message).await;
    let _ = send.finish();
}

async fn stream(
    ctx: NodeCtx,
    conn: quinn::Connection,
    agent_id: Option<String>,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    placements: Arc<Placements>,
) {
    use wire::agent_message::Body;
    let remote = conn.remote_address();
    let first = tokio::time::timeout(
        FIRST_MESSAGE_TIMEOUT,
        frame::read_message::<_, wire::AgentMessage>(&mut recv),
    )
    .await;
    let body = match first {
        Ok(Ok(message)) => message.body,
        Ok(Err(FrameError::Closed)) => return,
        Ok(Err(e)) => {
            goodbye(&mut send, &format!("unreadable first message: {e}")).await;
            return;
        }
        Err(_) => {
            goodbye(&mut send, "no message within 10 s").await;
            return;
        }
    };
    match (body, agent_id) {
        (Some(Body::Enroll(request)), _) => {
            let name = request.name.clone();
            match enroll(&ctx, request).await {
                Ok(enrolled) => {
                    tracing::info!(agent = %enrolled.agent_id, %name, %remote, "agent enrolled");
                    let message = manager_message(wire::manager_message::Body::Enrolled(enrolled));
                    let _ = frame::write_message(&mut send, &message).await;
                    let _ = send.finish();
                }
                Err(reason) => {
                    tracing::warn!(%name, %remote, "enrolment refused: {reason}");
                    goodbye(&mut send, &format!("enrolment refused: {reason}")).await;
                }
            }
        }
        (Some(Body::Renew(request)), Some(id)) => match renew(&ctx, &id, &request).await {
            Ok(enrolled) => {
                tracing::info!(agent = %id, %remote, "agent certificate renewed");
                let message = manager_message(wire::manager_message::Body::Enrolled(enrolled));
                let _ = frame::write_message(&mut send, &message).await;
                let _ = send.finish();
            }
            Err(reason) => {
                tracing::warn!(agent = %id, %remote, "renewal refused: {reason}");
                goodbye(&mut send, &format!("renewal refused: {reason}")).await;
            }
        },
        (Some(Body::Hello(hello)), Some(id)) => {
            Session::start(ctx, conn, id, hello, send, recv, placements).await;
        }
        (Some(Body::Hello(_) | Body::Renew(_)), None) => {
            tracing::info!(%remote, "refused a session without an agent certificate");
            goodbye(
                &mut send,
                "this needs an agent certificate: enrol first with a join token",
            )
            .await;
        }
        (_, _) => {
            goodbye(&mut send, "a stream starts with Hello, Enroll or Renew").await;
        }
    }
}

fn check_identity(name: &str, labels: &BTreeMap<String, String>) -> Result<(), String> {
    if name.len() > MAX_NAME_BYTES {
        return Err(format!("the name is longer than {MAX_NAME_BYTES} bytes"));
    }
    if labels.len() > MAX_LABELS {
        return Err(format!("more than {MAX_LABELS} labels"));
    }
    if let Some((key, _)) = labels
        .iter()
        .find(|(k, v)| k.is_empty() || k.len() > MAX_LABEL_BYTES || v.len() > MAX_LABEL_BYTES)
    {
        return Err(format!(
            "label `{key}`: keys have 1 to {MAX_LABEL_BYTES} bytes, values at most {MAX_LABEL_BYTES}"
        ));
    }
    Ok(())
}

fn new_agent_id() -> Result<String, String> {
    let mut bytes = [0u8; 8];
    aws_lc_rs::rand::fill(&mut bytes).map_err(|_| "the system random generator failed")?;
    Ok(format!("ag-{}", hex::encode(bytes)))
}

fn enrolled(ctx: &NodeCtx, agent_id: &str, cert: tls::AgentCert) -> wire::Enrolled {
    wire::Enrolled {
        agent_id: agent_id.to_owned(),
        certificate_pem: cert.pem,
        manager_ca_pem: ctx.tls.ca_cert.clone(),
        not_after_ms: cert.not_after_ms,
    }
}

/// Checks the join token, signs the agent's key, and records the agent through Raft. The
/// certificate is handed out only once the enrolment is committed, so an agent the registry
/// does not know never holds one.
async fn enroll(ctx: &NodeCtx, request: wire::Enroll) -> Result<wire::Enrolled, String> {
    let token = JoinToken::parse(&request.join_token).map_err(|e| e.to_string())?;
    let sha256 = hash_token(&token.secret);
    let now = now_ms();
    ctx.reader
        .check_join_token(&token.id, &sha256, now)
        .map_err(|r| r.to_string())?;
    check_identity(&request.name, &request.labels)?;
    let agent_id = new_agent_id()?;
    let cert = tls::issue_agent_cert(&ctx.tls, &request.csr_der, &agent_id, ctx.agent_cert_ttl)
        .map_err(|e| e.to_string())?;
    let record = AgentRecord {
        id: agent_id.clone(),
        name: request.name,
        labels: request.labels,
        enrolled_ms: now,
        join_token: token.id.clone(),
        cert_not_after_ms: cert.not_after_ms,
        revoked_ms: None,
    };
    let command = Command::EnrollAgent {
        author: format!("join-token/{}", token.id),
        time_ms: now,
        token_sha256: sha256,
        agent: record,
    };
    match propose_command(ctx, command).await {
        Ok(CommandResult::Rejected(reason)) => Err(reason.to_string()),
        Ok(_) => Ok(enrolled(ctx, &agent_id, cert)),
        Err(e) => Err(format!("the cluster cannot record it now ({e}); retry")),
    }
}

async fn renew(
    ctx: &NodeCtx,
    agent_id: &str,
    request: &wire::Renew,
) -> Result<wire::Enrolled, String> {
    ctx.reader
        .active_agent(agent_id)
        .map_err(|r| r.to_string())?;
    let cert = tls::issue_agent_cert(&ctx.tls, &request.csr_der, agent_id, ctx.agent_cert_ttl)
        .map_err(|e| e.to_string())?;
    let command = Command::RenewAgent {
        author: format!("agent/{agent_id}"),
        time_ms: now_ms(),
        agent_id: agent_id.to_owned(),
        cert_not_after_ms: cert.not_after_ms,
    };
    match propose_command(ctx, command).await {
        Ok(CommandResult::Rejected(reason)) => Err(reason.to_string()),
        Ok(_) => Ok(enrolled(ctx, agent_id, cert)),
        Err(e) => Err(format!("the cluster cannot record it now ({e}); retry")),
    }
}

/// The config placed on one label set at one revision, with its checksum.
#[derive(Debug)]
pub struct Placed {
    pub snapshot: Snapshot,
    pub checksum: Checksum,
}

/// The newest [`Placed`] per label set, shared by every session of this node, and the updates
/// built lately: agents with the same labels at the same revision share one `Placed`, so one
/// delta serves all of them instead of one diff per agent.
#[derive(Debug, Default)]
pub struct Placements {
    by_labels: Mutex<std::collections::HashMap<Labels, Arc<Placed>>>,
    updates: Mutex<std::collections::VecDeque<BuiltUpdate>>,
}

/// How many built updates are kept for sessions that need the same one.
const KEPT_UPDATES: usize = 16;

/// An update from `base` (`None`: a full snapshot) to `target`. Holding both keeps their
/// addresses from being reused while the entry is matched by identity.
#[derive(Debug)]
struct BuiltUpdate {
    base: Option<Arc<Placed>>,
    target: Arc<Placed>,
    update: Arc<Update>,
}

impl Placements {
    /// The config placed on `labels` at this node's current revision. Computed at most once per
    /// label set and revision (two sessions racing may both compute it; either result is the
    /// same).
    fn current(&self, reader: &ConfigReader, labels: &Labels) -> Arc<Placed> {
        let (revision, _) = reader.revision();
        {
            let cache = self.by_labels.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(placed) = cache
                .get(labels)
                .filter(|p| p.snapshot.revision == revision)
            {
                return placed.clone();
            }
        }
        let snapshot = reader.snapshot().select(labels);
        let placed = Arc::new(Placed {
            checksum: snapshot.checksum(),
            snapshot,
        });
        self.by_labels
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(labels.clone(), placed.clone());
        placed
    }

    /// The update from `base` to `target`, built once for every session that needs it.
    async fn update(
        &self,
        base: Option<Arc<Placed>>,
        target: Arc<Placed>,
    ) -> Result<Arc<Update>, String> {
        let same = |entry: &BuiltUpdate| {
            Arc::ptr_eq(&entry.target, &target)
                && match (&entry.base, &base) {
                    (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                    (None, None) => true,
                    _ => false,
                }
        };
        if let Some(found) = self
            .updates
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .find(|entry| same(entry))
        {
            return Ok(found.update.clone());
        }
        let (base_for_build, target_for_build) = (base.clone(), target.clone());
        // Diffing, encoding and compressing a large config is CPU work: off the async workers.
        let update = tokio::task::spawn_blocking(move || {
            build_update(base_for_build.as_deref(), &target_for_build)
        })
        .await
        .map_err(|e| format!("building the update failed: {e}"))??;
        let update = Arc::new(update);
        let mut kept = self.updates.lock().unwrap_or_else(|e| e.into_inner());
        if kept.len() >= KEPT_UPDATES {
            kept.pop_front();
        }
        kept.push_back(BuiltUpdate {
            base,
            target,
            update: update.clone(),
        });
        Ok(update)
    }
}

/// What to send the agent next.
#[derive(Debug)]
enum Update {
    Delta(wire::ManagerMessage),
    Snapshot(wire::SnapshotFrame),
}

/// One agent's session on this node.
struct Session {
    ctx: NodeCtx,
    conn: quinn::Connection,
    agent_id: String,
    labels: Labels,
    session: u64,
    placements: Arc<Placements>,
    /// What the agent serves, when this node can rebuild it: the base of the next delta.
    acked: Option<Arc<Placed>>,
    /// The revision the agent serves (even when `acked` is unknown here).
    agent_revision: u64,
    /// The checksum it reported at Hello, until `acked` is known.
    hello_checksum: Option<Checksum>,
    /// Sent, awaiting Ack or Nack.
    pending: Option<Arc<Placed>>,
    /// The newest revision the agent rejected: not sent again until a newer one exists.
    nacked: u64,
}

impl Session {
    async fn start(
        ctx: NodeCtx,
        conn: quinn::Connection,
        agent_id: String,
        hello: wire::Hello,
        mut send: quinn::SendStream,
        recv: quinn::RecvStream,
        placements: Arc<Placements>,
    ) {
        let remote = conn.remote_address();
        let refusal = if hello.protocol_version != PROTOCOL_VERSION {
            Some(format!(
                "protocol version {} is not supported (this manager speaks {PROTOCOL_VERSION})",
                hello.protocol_version
            ))
        } else if !hello.agent_id.is_empty() && hello.agent_id != agent_id {
            Some(format!(
                "Hello says agent `{}` but the certificate is agent `{agent_id}`",
                hello.agent_id
            ))
        } else if let Err(reason) = ctx.reader.active_agent(&agent_id) {
            Some(reason.to_string())
        } else {
            check_identity(&hello.name, &hello.labels).err()
        };
        if let Some(reason) = refusal {
            tracing::warn!(agent = %agent_id, %remote, "session refused: {reason}");
            goodbye_and_close(&conn, &mut send, &format!("session refused: {reason}")).await;
            return;
        }
        let hello_checksum = fleetgate_proto::convert::parse_checksum(&hello.checksum)
            .ok()
            .flatten();
        let session = ctx.fleet.connected(
            &agent_id,
            &hello.name,
            &hello.labels,
            &hello.version,
            &remote.to_string(),
            hello.have_revision,
            &hello.checksum,
            now_ms(),
        );
        tracing::info!(
            agent = %agent_id,
            name = %hello.name,
            %remote,
            have_revision = hello.have_revision,
            "agent connected"
        );
        let mut this = Session {
            ctx: ctx.clone(),
            conn,
            agent_id: agent_id.clone(),
            labels: hello.labels,
            session,
            placements,
            acked: None,
            agent_revision: hello.have_revision,
            hello_checksum,
            pending: None,
            nacked: 0,
        };
        let reason = this.run(send, recv).await;
        ctx.fleet.disconnected(&agent_id, session, now_ms());
        tracing::info!(agent = %agent_id, %remote, "agent session ended: {reason}");
    }

    /// Serves the session until it ends; returns why it ended.
    async fn run(&mut self, mut send: quinn::SendStream, recv: quinn::RecvStream) -> String {
        // Messages arrive through a reader task, so that the loop waits on them and on config
        // changes at once.
        let (mut messages, reader) = frame::spawn_reader::<_, wire::AgentMessage>(recv);
        let mut applied = self.ctx.reader.subscribe_applied();
        let reason = loop {
            if self.pending.is_none()
                && let Err(e) = self.send_update(&mut send).await
            {
                break e;
            }
            tokio::select! {
                message = messages.recv() => match message {
                    Some(Ok(message)) => {
                        if let Err(e) = self.on_message(&mut send, message).await {
                            break e;
                        }
                    }
                    Some(Err(FrameError::Closed)) | None => break "the agent closed the session".to_owned(),
                    Some(Err(e)) => break format!("unreadable message: {e}"),
                },
                changed = applied.changed() => {
                    if changed.is_err() {
                        goodbye(&mut send, "the node is shutting down").await;
                        break "the node is shutting down".to_owned();
                    }
                    if let Err(reason) = self.ctx.reader.active_agent(&self.agent_id) {
                        goodbye_and_close(&self.conn, &mut send, &format!("session ended: {reason}")).await;
                        break reason.to_string();
                    }
                }
            }
        };
        reader.abort();
        reason
    }

    /// Sends the next update if this node has a revision newer than what the agent serves and
    /// did not reject.
    async fn send_update(&mut self, send: &mut quinn::SendStream) -> Result<(), String> {
        let (revision, _) = self.ctx.reader.revision();
        if revision <= self.agent_revision || revision <= self.nacked {
            return Ok(());
        }
        tracing::debug!(agent = %self.agent_id, revision, "preparing an update");
        let target = self.placements.current(&self.ctx.reader, &self.labels);
        if self.acked.is_none() && self.agent_revision > 0 {
            self.acked = self.rebuild_agent_content();
        }
        let update = self
            .placements
            .update(self.acked.clone(), target.clone())
            .await?;
        match &*update {
            Update::Delta(message) => frame::write_message(send, message)
                .await
                .map_err(|e| format!("cannot send a delta: {e}"))?,
            Update::Snapshot(snapshot) => {
                let mut stream = self
                    .conn
                    .open_uni()
                    .await
                    .map_err(|e| format!("cannot open a snapshot stream: {e}"))?;
                frame::write_message(&mut stream, snapshot)
                    .await
                    .map_err(|e| format!("cannot send a snapshot: {e}"))?;
                let _ = stream.finish();
            }
        }
        tracing::debug!(agent = %self.agent_id, revision, "update sent");
        self.pending = Some(target);
        Ok(())
    }

    /// The content the agent says it serves, if this node still has that revision and the
    /// checksum matches; `None` means "send a full snapshot".
    fn rebuild_agent_content(&self) -> Option<Arc<Placed>> {
        let expected = self.hello_checksum?;
        let snapshot = self
            .ctx
            .reader
            .content_at(self.agent_revision)?
            .select(&self.labels);
        let checksum = snapshot.checksum();
        (checksum == expected).then(|| Arc::new(Placed { snapshot, checksum }))
    }

    async fn on_message(
        &mut self,
        send: &mut quinn::SendStream,
        message: wire::AgentMessage,
    ) -> Result<(), String> {
        use wire::agent_message::Body;
        let now = now_ms();
        match message.body {
            Some(Body::Ack(ack)) => {
                let Some(pending) = self
                    .pending
                    .take_if(|p| p.snapshot.revision == ack.revision)
                else {
                    return Err(format!(
                        "Ack for revision {} which was not sent",
                        ack.revision
                    ));
                };
                if ack.checksum != pending.checksum.to_string() {
                    tracing::warn!(
                        agent = %self.agent_id,
                        revision = ack.revision,
                        "the agent acknowledged with checksum {} but the content sent has {}",
                        ack.checksum,
                        pending.checksum
                    );
                }
                self.agent_revision = ack.revision;
                self.acked = Some(pending);
                self.ctx
                    .fleet
                    .update(&self.agent_id, self.session, now, |agent| {
                        agent.applied_revision = ack.revision;
                        agent.applied_checksum = ack.checksum;
                        agent.last_ack_ms = Some(now);
                    });
            }
            Some(Body::Nack(nack)) => {
                let Some(pending) = self
                    .pending
                    .take_if(|p| p.snapshot.revision == nack.revision)
                else {
                    return Err(format!(
                        "Nack for revision {} which was not sent",
                        nack.revision
                    ));
                };
                self.nacked = pending.snapshot.revision;
                tracing::warn!(
                    agent = %self.agent_id,
                    revision = nack.revision,
                    problems = nack.errors.len(),
                    "agent rejected the revision and keeps serving revision {}; see GET /api/v1/agents",
                    self.agent_revision
                );
                let errors = nack
                    .errors
                    .into_iter()
                    .map(|e| NackError {
                        resource: e.resource,
                        path: e.path,
                        message: e.message,
                    })
                    .collect();
                self.ctx
                    .fleet
                    .update(&self.agent_id, self.session, now, |agent| {
                        agent.last_nack = Some(LastNack {
                            revision: nack.revision,
                            time_ms: now,
                            errors,
                        });
                    });
            }
            Some(Body::Status(status)) => {
                self.ctx
                    .fleet
                    .update(&self.agent_id, self.session, now, |agent| {
                        agent.config_age_ms = Some(status.config_age_ms);
                    });
            }
            Some(Body::Ping(ping)) => {
                let pong = manager_message(wire::manager_message::Body::Pong(wire::Pong {
                    nonce: ping.nonce,
                }));
                frame::write_message(send, &pong)
                    .await
                    .map_err(|e| format!("cannot answer a ping: {e}"))?;
                self.ctx
                    .fleet
                    .update(&self.agent_id, self.session, now, |_| {});
            }
            Some(Body::Pong(_)) => {
                self.ctx
                    .fleet
                    .update(&self.agent_id, self.session, now, |_| {});
            }
            Some(Body::Hello(_) | Body::Enroll(_) | Body::Renew(_)) | None => {
                return Err("unexpected message in a session".to_owned());
            }
        }
        Ok(())
    }
}

/// A delta from `base` when there is one, else a compressed snapshot.
fn build_update(base: Option<&Placed>, target: &Placed) -> Result<Update, String> {
    match base {
        Some(base) => {
            let delta = diff(&base.snapshot, &target.snapshot);
            Ok(Update::Delta(manager_message(
                wire::manager_message::Body::Delta(wire::Delta::from_model(
                    &delta,
                    target.checksum,
                )),
            )))
        }
        None => {
            let snapshot = wire::Snapshot::from(&target.snapshot);
            frame::compress_snapshot(&snapshot)
                .map(Update::Snapshot)
                .map_err(|e| format!("cannot compress the snapshot: {e}"))
        }
    }
}
