//! Fleetgate's shared resource model.
//!
//! Everything the manager stores and the agent serves is a set of [`Resource`]s: documents with a
//! `kind`, a `name`, optional `labels` and `placement`, and a typed `spec`. This crate owns
//!
//! - the model itself ([`model`]),
//! - reading bundles of documents from YAML or JSON files and directories ([`bundle`]),
//! - validation that reports every problem at once with its field path ([`validate`]),
//! - snapshots, deltas, content checksums and placement selection ([`snapshot`]),
//! - comparing secrets in constant time ([`constant_time`]).
//!
//! It is pure: no sockets, no clocks, no async runtime. The manager and the agent both depend on
//! it and on nothing of each other.

pub mod bundle;
pub mod checksum;
mod claims;
pub mod constant_time;
pub mod duration;
pub mod model;
pub mod password;
pub mod snapshot;
pub mod validate;

pub use bundle::{BundleError, LoadError, load_paths, parse_bundle};
pub use duration::Duration;
pub use model::{Kind, Placement, Resource, ResourceKey, Spec};
pub use snapshot::{Change, Checksum, Delta, DeltaError, SharedResource, Snapshot, changes, diff};
pub use validate::{ValidationError, validate, validate_change};
