//! Fleetgate's wire types.
//!
//! Three protocols are generated from the `.proto` files under `proto/`:
//!
//! - [`sync::v1`]: the agent ⇄ manager sync protocol. It runs over QUIC streams as
//!   length-delimited protobuf messages ([`sync::v1::AgentMessage`], [`sync::v1::ManagerMessage`]),
//!   not as gRPC.
//! - [`admin::v1`]: the admin gRPC service (`Admin`) that the CLI and the console call, with its
//!   client and server stubs.
//! - [`raft::v1`]: manager ⇄ manager Raft RPCs (`Raft` service, gRPC over mutual TLS); the
//!   payloads are serde_json of openraft's types, opaque to this crate.
//!
//! The wire types are kept apart from the domain model in `fleetgate-shared`; [`convert`] holds
//! the crossings (`From` for model → wire, `TryFrom` with a typed [`WireError`] for wire → model).
//! A resource's spec travels as canonical JSON decoded by the shared crate's strict parser, so a
//! document read from a wire message gets exactly the checks of one read from a YAML file.

pub mod convert;
pub mod frame;
pub mod join_token;

pub use convert::WireError;

/// The sync protocol version this crate speaks, sent in [`sync::v1::Hello::protocol_version`].
/// Bumped on any change an older peer would misread; additive changes keep it.
pub const PROTOCOL_VERSION: u32 = 1;

/// The ALPN protocol of the sync endpoint (QUIC). A peer that does not offer it is refused in
/// the handshake, before any message.
pub const SYNC_ALPN: &[u8] = b"fleetgate-sync/1";

/// The DNS name every manager certificate carries and every client verifies, whatever address
/// the manager was reached at (NAT, a load balancer, loopback in tests).
pub const MANAGER_SERVER_NAME: &str = "fleetgate-manager";

/// The agent ⇄ manager sync protocol (`fleetgate.sync.v1`).
pub mod sync {
    /// Version 1 of the sync protocol, generated from `fleetgate/sync/v1/sync.proto`.
    pub mod v1 {
        tonic::include_proto!("fleetgate.sync.v1");
    }
}

/// The admin gRPC API (`fleetgate.admin.v1`).
pub mod admin {
    /// Version 1 of the admin API, generated from `fleetgate/admin/v1/admin.proto`, with the
    /// `Admin` service's client ([`v1::admin_client`]) and server ([`v1::admin_server`]).
    pub mod v1 {
        tonic::include_proto!("fleetgate.admin.v1");
    }
}

/// Manager ⇄ manager Raft RPCs (`fleetgate.raft.v1`).
pub mod raft {
    /// Version 1 of the Raft transport, generated from `fleetgate/raft/v1/raft.proto`: the
    /// `Raft` service's client ([`v1::raft_client`]) and server ([`v1::raft_server`]). Payloads
    /// are serde_json encodings of openraft's request and response types.
    pub mod v1 {
        tonic::include_proto!("fleetgate.raft.v1");
    }
}

/// Written by hand (generation skips it, see `build.rs`): `spec_json` can hold private
/// keys and credentials, so only its length is shown, as the model's own `Debug` impls
/// redact secrets.
impl std::fmt::Debug for sync::v1::Resource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut out = f.debug_struct("Resource");
        match sync::v1::Kind::try_from(self.kind) {
            Ok(kind) => out.field("kind", &kind),
            Err(_) => out.field("kind", &self.kind),
        };
        out.field("name", &self.name)
            .field("labels", &self.labels)
            .field("placement", &self.placement)
            .field(
                "spec_json",
                &format_args!("<{} bytes>", self.spec_json.len()),
            )
            .finish()
    }
}

/// Written by hand: the join token is a secret and is never printed.
impl std::fmt::Debug for sync::v1::Enroll {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Enroll")
            .field("join_token", &"<redacted>")
            .field("csr_der", &format_args!("<{} bytes>", self.csr_der.len()))
            .field("name", &self.name)
            .field("labels", &self.labels)
            .field("version", &self.version)
            .finish()
    }
}
