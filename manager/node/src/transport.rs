//! How Raft RPCs reach another manager: a small [`RaftTransport`] trait, its gRPC + mutual TLS
//! implementation [`GrpcTransport`], and the gRPC server side [`RaftService`].
//!
//! The trait is the seam for tests and fault injection: openraft's network client
//! ([`crate::network`]) only sees opaque JSON payloads going to an address.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fleetgate_manager_store::TypeConfig;
use fleetgate_proto::raft::v1::raft_client::RaftClient;
use fleetgate_proto::raft::v1::raft_server::{Raft as RaftRpc, RaftServer};
use fleetgate_proto::raft::v1::{RaftReply, RaftRequest};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity, Server, ServerTlsConfig};

use crate::Error;
use crate::tls::{NODE_SERVER_NAME, NodeTls};

/// How long to wait for a TCP + TLS connection to another manager. Short: an unreachable peer
/// should be reported to openraft quickly so that it backs off instead of blocking replication.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);

/// The largest Raft message either side accepts (tonic's default is 4 MiB). One admin request
/// may carry up to 32 MiB of resources, a log entry holds it as JSON, and an AppendEntries may
/// batch several entries; snapshot chunks are kept far smaller (see `node.rs`).
pub const MAX_MESSAGE_BYTES: usize = 256 * 1024 * 1024;

/// Which Raft RPC a payload is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RpcKind {
    AppendEntries,
    Vote,
    InstallSnapshot,
    /// Not a Raft RPC: a command handed to the leader (see [`Proposed`]).
    Propose,
}

/// The leader's answer to a forwarded command.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub enum Proposed {
    /// Committed and applied: what applying it answered.
    Done(fleetgate_manager_store::CommandResult),
    /// The receiver is not the leader (any more); the caller asks again.
    NotLeader,
    /// Raft failed to commit it (shutting down, storage error).
    Failed(String),
}

/// Why an RPC got no answer from the remote handler.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// No connection could be made.
    #[error("cannot reach {addr}: {reason}")]
    Unreachable { addr: String, reason: String },
    /// A connection was made but the call failed (reset, TLS refused, gRPC status).
    #[error("call to {addr} failed: {reason}")]
    Failed { addr: String, reason: String },
}

/// Sends one Raft RPC payload to the manager at `addr` and returns the reply payload.
pub trait RaftTransport: Clone + Send + Sync + 'static {
    fn call(
        &self,
        addr: &str,
        kind: RpcKind,
        payload: Vec<u8>,
    ) -> impl Future<Output = Result<Vec<u8>, TransportError>> + Send;
}

/// Raft RPCs over gRPC with mutual TLS: one lazily connected channel per peer address.
#[derive(Clone, Debug)]
pub struct GrpcTransport {
    tls: ClientTlsConfig,
    channels: Arc<Mutex<HashMap<String, Channel>>>,
}

impl GrpcTransport {
    /// A client that trusts the cluster CA only and presents this node's certificate.
    pub fn new(tls: &NodeTls) -> Self {
        let config = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&tls.ca_cert))
            .identity(Identity::from_pem(&tls.node_cert, &tls.node_key))
            .domain_name(NODE_SERVER_NAME);
        Self {
            tls: config,
            channels: Arc::default(),
        }
    }

    fn channel(&self, addr: &str) -> Result<Channel, TransportError> {
        // Not the request path: one short critical section per Raft RPC.
        let mut channels = self.channels.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(channel) = channels.get(addr) {
            return Ok(channel.clone());
        }
        let unreachable = |reason: String| TransportError::Unreachable {
            addr: addr.to_owned(),
            reason,
        };
        let channel = Channel::from_shared(format!("https://{addr}"))
            .map_err(|e| unreachable(e.to_string()))?
            .tls_config(self.tls.clone())
            .map_err(|e| unreachable(e.to_string()))?
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_nodelay(true)
            .connect_lazy();
        channels.insert(addr.to_owned(), channel.clone());
        Ok(channel)
    }
}

impl RaftTransport for GrpcTransport {
    async fn call(
        &self,
        addr: &str,
        kind: RpcKind,
        payload: Vec<u8>,
    ) -> Result<Vec<u8>, TransportError> {
        let mut client = RaftClient::new(self.channel(addr)?)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);
        let request = RaftRequest { payload };
        let reply = match kind {
            RpcKind::AppendEntries => client.append_entries(request).await,
            RpcKind::Vote => client.vote(request).await,
            RpcKind::InstallSnapshot => client.install_snapshot(request).await,
            RpcKind::Propose => client.propose(request).await,
        };
        match reply {
            Ok(reply) => Ok(reply.into_inner().payload),
            // tonic reports connection failures as `Unavailable`.
            Err(status) if status.code() == tonic::Code::Unavailable => {
                Err(TransportError::Unreachable {
                    addr: addr.to_owned(),
                    reason: status.message().to_owned(),
                })
            }
            Err(status) => Err(TransportError::Failed {
                addr: addr.to_owned(),
                reason: status.to_string(),
            }),
        }
    }
}

/// The gRPC `Raft` service: decodes openraft requests and hands them to the local Raft.
#[derive(Clone)]
pub struct RaftService {
    raft: openraft::Raft<TypeConfig>,
}

impl std::fmt::Debug for RaftService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RaftService").finish_non_exhaustive()
    }
}

fn decode<T: DeserializeOwned>(request: tonic::Request<RaftRequest>) -> Result<T, tonic::Status> {
    serde_json::from_slice(&request.into_inner().payload)
        .map_err(|e| tonic::Status::invalid_argument(format!("bad Raft payload: {e}")))
}

fn encode<T: Serialize>(value: &T) -> Result<tonic::Response<RaftReply>, tonic::Status> {
    serde_json::to_vec(value)
        .map(|payload| tonic::Response::new(RaftReply { payload }))
        .map_err(|e| tonic::Status::internal(format!("cannot encode Raft reply: {e}")))
}

#[tonic::async_trait]
impl RaftRpc for RaftService {
    async fn append_entries(
        &self,
        request: tonic::Request<RaftRequest>,
    ) -> Result<tonic::Response<RaftReply>, tonic::Status> {
        let result = self.raft.append_entries(decode(request)?).await;
        encode(&result)
    }

    async fn vote(
        &self,
        request: tonic::Request<RaftRequest>,
    ) -> Result<tonic::Response<RaftReply>, tonic::Status> {
        let result = self.raft.vote(decode(request)?).await;
        encode(&result)
    }

    async fn install_snapshot(
        &self,
        request: tonic::Request<RaftRequest>,
    ) -> Result<tonic::Response<RaftReply>, tonic::Status> {
        let result = self.raft.install_snapshot(decode(request)?).await;
        encode(&result)
    }

    async fn propose(
        &self,
        request: tonic::Request<RaftRequest>,
    ) -> Result<tonic::Response<RaftReply>, tonic::Status> {
        use openraft::error::{ClientWriteError, RaftError};
        let command: fleetgate_manager_store::Command = decode(request)?;
        let answer = match self.raft.client_write(command).await {
            Ok(response) => Proposed::Done(response.data),
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_))) => Proposed::NotLeader,
            Err(e) => Proposed::Failed(e.to_string()),
        };
        encode(&answer)
    }
}

impl RaftService {
    pub fn new(raft: openraft::Raft<TypeConfig>) -> Self {
        Self { raft }
    }

    /// Serves the Raft service on `listener` with mutual TLS: clients must present a
    /// certificate signed by the cluster CA. Runs until `shutdown` resolves.
    pub async fn serve(
        self,
        listener: tokio::net::TcpListener,
        tls: &NodeTls,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), Error> {
        let config = ServerTlsConfig::new()
            .identity(Identity::from_pem(&tls.node_cert, &tls.node_key))
            .client_ca_root(Certificate::from_pem(&tls.ca_cert));
        let incoming =
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
        Server::builder()
            .tls_config(config)
            .map_err(Error::tls)?
            .add_service(
                RaftServer::new(self)
                    .max_decoding_message_size(MAX_MESSAGE_BYTES)
                    .max_encoding_message_size(MAX_MESSAGE_BYTES),
            )
            .serve_with_incoming_shutdown(incoming, shutdown)
            .await
            .map_err(|e| Error::Serve(e.to_string()))
    }
}
