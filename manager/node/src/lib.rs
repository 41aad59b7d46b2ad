//! The Fleetgate manager node: the replicated config store of `fleetgate-manager-store` put on
//! the network.
//!
//! - [`transport`]: the [`transport::RaftTransport`] seam, its gRPC + mutual TLS implementation,
//!   and the gRPC `Raft` service; [`network`]: openraft's network client on top of it.
//! - [`tls`]: the cluster CA and node certificates (rcgen, aws-lc-rs).
//! - [`auth`]: bearer tokens with roles, stored hashed.
//! - [`api`]: the admin REST API under `/api/v1` (axum over rustls), with write forwarding to
//!   the leader; [`http_client`]: HTTPS to other managers, trusting the cluster CA only.
//! - [`grpc_admin`]: the same admin API as the gRPC service `fleetgate.admin.v1.Admin`, on the
//!   same port (requests with a gRPC content type go to it).
//! - [`sync`]: the QUIC sync endpoint agents enrol at and receive config from;
//!   [`fleet`]: this node's live view of its agents.
//! - [`node`]: `init`, `join`, `serve` and `leave`: what the binary's subcommands do.

pub mod agents_api;
pub mod api;
pub mod auth;
pub mod cli;
pub mod fleet;
pub mod grpc_admin;
pub mod http_client;
pub mod network;
pub mod node;
pub mod settings;
pub mod sync;
pub mod tls;
pub mod transport;

use std::path::{Path, PathBuf};

/// What can go wrong running a node (not an API error: those are HTTP responses).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{} is corrupt: {reason}", path.display())]
    Corrupt { path: PathBuf, reason: String },
    #[error("{0}")]
    Usage(String),
    #[error("TLS: {0}")]
    Tls(String),
    #[error("the system random generator failed")]
    Random,
    #[error("store: {0}")]
    Store(#[from] fleetgate_manager_store::DiskError),
    #[error("raft: {0}")]
    Raft(String),
    #[error("server: {0}")]
    Serve(String),
    #[error("cluster: {0}")]
    Cluster(String),
}

impl Error {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        Error::Io {
            path: path.to_owned(),
            source,
        }
    }

    pub(crate) fn tls(e: impl std::fmt::Display) -> Self {
        Error::Tls(e.to_string())
    }
}
