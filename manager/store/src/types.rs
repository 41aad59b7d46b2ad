//! The Raft type configuration: what a node is, what a log entry asks for, and what applying it
//! answers.

use std::fmt;
use std::io::Cursor;

use fleetgate_shared::validate::ValidationError;
use fleetgate_shared::{Checksum, Resource, ResourceKey};
use serde::{Deserialize, Serialize};

use crate::agents::{AgentRecord, JoinToken};

openraft::declare_raft_types!(
    /// Fleetgate's Raft types: `u64` node ids, [`ManagerNode`] addresses, [`Command`] entries
    /// answered by [`CommandResult`]s, snapshots as JSON bytes, on tokio.
    pub TypeConfig:
        D = Command,
        R = CommandResult,
        NodeId = u64,
        Node = ManagerNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

/// A manager node id.
pub type NodeId = u64;

/// A log id with our node id type.
pub type LogId = openraft::LogId<NodeId>;

/// A log entry with our type config.
pub type Entry = openraft::Entry<TypeConfig>;

/// The storage error openraft expects from our store.
pub type StorageError = openraft::StorageError<NodeId>;

/// A cluster membership as recorded in the log and the state machine.
pub type StoredMembership = openraft::StoredMembership<NodeId, ManagerNode>;

/// Where to reach one manager node. Stored in membership log entries, so every node knows every
/// other node's addresses.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManagerNode {
    /// Manager-to-manager Raft RPCs (gRPC over mutual TLS), `host:port`.
    pub raft_addr: String,
    /// The admin API (REST and gRPC), `host:port`.
    pub api_addr: String,
    /// The sync endpoint agents connect to (QUIC), `host:port`.
    pub sync_addr: String,
}

impl fmt::Display for ManagerNode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "raft={} api={} sync={}",
            self.raft_addr, self.api_addr, self.sync_addr
        )
    }
}

/// What a client asks the replicated config store to do: the application data of a log entry.
///
/// Commands carry everything their effect depends on, including the wall-clock time the leader
/// stamped them with, so that applying the same log gives the same state on every replica.
/// The leader validates a command before proposing it; [`crate::ConfigState::apply`] checks it
/// again against the state it is applied to, which is what makes concurrent writers safe.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Command {
    /// Add or replace `upserts` and remove `deletes`, all or nothing, as one new revision.
    Apply {
        /// Who asked: the API token's name. Recorded in the history for audit.
        author: String,
        /// When the leader accepted the request, in Unix milliseconds.
        time_ms: u64,
        /// `If-Match`: commit only if the current revision is still this one.
        expected_revision: Option<u64>,
        upserts: Vec<Resource>,
        deletes: Vec<ResourceKey>,
    },
    /// Make the content equal to the content at `to_revision`, as one new revision.
    Rollback {
        author: String,
        time_ms: u64,
        expected_revision: Option<u64>,
        to_revision: u64,
    },
    /// Add or replace the API token named `name`. Tokens are replicated so that every node
    /// accepts the same ones; they are not part of the config content (no revision, no
    /// checksum change, never sent to agents).
    PutToken {
        author: String,
        time_ms: u64,
        token: ApiToken,
    },
    /// Remove the API token named `name`.
    RevokeToken {
        author: String,
        time_ms: u64,
        name: String,
    },
    /// Add or replace an agent join token (agent registry: outside the config content).
    PutJoinToken {
        author: String,
        time_ms: u64,
        token: JoinToken,
    },
    /// Remove the join token `id`; agents already enrolled with it stay enrolled.
    RevokeJoinToken {
        author: String,
        time_ms: u64,
        id: String,
    },
    /// Record an agent that presented a valid join token; `token_sha256` is the hash of the
    /// secret it presented, checked again here so that every replica decides the same.
    EnrollAgent {
        author: String,
        time_ms: u64,
        token_sha256: String,
        agent: AgentRecord,
    },
    /// Record the expiry of a renewed client certificate.
    RenewAgent {
        author: String,
        time_ms: u64,
        agent_id: String,
        cert_not_after_ms: u64,
    },
    /// Revoke an agent: every manager refuses it from now on.
    RevokeAgent {
        author: String,
        time_ms: u64,
        agent_id: String,
    },
}

/// What an API token may do. Ordered: each role may do everything the roles before it may.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TokenRole {
    /// Read resources, history and cluster status.
    Viewer,
    /// Also change resources: put, delete, apply, rollback.
    Editor,
    /// Also manage tokens and cluster membership.
    Admin,
}

/// A stored API token: its name, role and the SHA-256 of the secret, never the secret.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiToken {
    /// Who holds it; the author recorded for every write made with it. Unique.
    pub name: String,
    pub role: TokenRole,
    /// Lower-case hex SHA-256 of the token.
    pub sha256: String,
    /// Who created it, and when (Unix milliseconds).
    pub created_by: String,
    pub created_ms: u64,
}

impl Command {
    /// Who issued the command.
    pub fn author(&self) -> &str {
        match self {
            Command::Apply { author, .. }
            | Command::Rollback { author, .. }
            | Command::PutToken { author, .. }
            | Command::RevokeToken { author, .. }
            | Command::PutJoinToken { author, .. }
            | Command::RevokeJoinToken { author, .. }
            | Command::EnrollAgent { author, .. }
            | Command::RenewAgent { author, .. }
            | Command::RevokeAgent { author, .. } => author,
        }
    }
}

/// The outcome of applying one log entry. A rejection is a normal, deterministic outcome: the
/// entry stays in the log and every replica rejects it the same way.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CommandResult {
    /// The change set is committed as `revision`, and the content now has `checksum`.
    Committed { revision: u64, checksum: Checksum },
    /// The command was valid but changed nothing, so no revision was created; or the entry was
    /// not a command (a leader's blank entry, a membership change).
    Unchanged { revision: u64, checksum: Checksum },
    /// The command was refused; the state is as before.
    Rejected(Reason),
}

/// Why a command was refused at apply time.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// `If-Match` failed: someone else committed first.
    #[error("expected revision {expected}, but the current revision is {current}")]
    RevisionMismatch { expected: u64, current: u64 },
    /// The resulting config would be invalid.
    #[error("the resulting config is invalid ({} problems)", .0.len())]
    Invalid(Vec<ValidationError>),
    /// A delete names a resource that does not exist.
    #[error("{0} does not exist")]
    NotFound(ResourceKey),
    /// The same resource is upserted twice, or both upserted and deleted, in one command.
    #[error("{0} appears more than once in one change set")]
    Conflicting(ResourceKey),
    /// A rollback target that is in the future or older than the kept history.
    #[error("revision {requested} is not in the history (kept: {oldest} to {current})")]
    RevisionNotInHistory {
        requested: u64,
        oldest: u64,
        current: u64,
    },
    /// A token revocation names no token.
    #[error("there is no token named `{0}`")]
    UnknownToken(String),
    /// No join token with this id, or the secret presented does not match it.
    #[error("join token `{0}` is unknown or its secret does not match")]
    UnknownJoinToken(String),
    #[error("join token `{0}` has expired")]
    JoinTokenExpired(String),
    #[error("join token `{0}` has been used as many times as it allows")]
    JoinTokenUsedUp(String),
    #[error("agent `{0}` is already enrolled")]
    AgentExists(String),
    #[error("there is no agent `{0}`")]
    UnknownAgent(String),
    #[error("agent `{0}` has been revoked")]
    AgentRevoked(String),
}
