//! The Fleetgate agent: the data plane.
//!
//! A reverse proxy for HTTP/1.1, HTTP/2, TLS and WebSocket. Config arrives as a
//! [`fleetgate_shared::Snapshot`] (from a watched file in standalone mode, or from a manager over
//! QUIC in manager mode: [`sync`]), is validated and
//! compiled off the request path into an immutable [`Generation`], and is published with one
//! atomic pointer swap. Requests load the current generation once and never wait on anything
//! else shared; connections that are already established keep the upstream they were given,
//! whatever later swaps do.

pub mod admin;
pub mod app;
pub mod config;
pub mod error;
pub mod gateway;
pub mod generation;
pub mod headers;
pub mod identity;
pub mod inbound;
pub mod persist;
pub mod proxy;
pub mod server;
pub mod source;
pub mod stats;
pub mod sync;
pub mod telemetry;
pub mod tls;
pub mod upstream;
mod wire;

pub use app::App;
pub use config::AgentConfig;
pub use gateway::Gateway;
pub use generation::Generation;

/// The error type of boxed bodies and connection tasks.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The body of every response the agent writes: streamed from an upstream or generated here.
pub type ResponseBody = http_body_util::combinators::BoxBody<bytes::Bytes, BoxError>;
