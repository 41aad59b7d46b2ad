//! Upstream services: endpoints, load balancing, active health checks, passive outlier
//! detection, and the pooled HTTP clients that reach them.
//!
//! A [`ServiceRuntime`] is built once per distinct Service spec and shared by every config
//! generation that keeps that spec unchanged, so a config swap that does not touch a service
//! keeps its round-robin position, in-flight counts, health and ejections. Connection pools
//! live in [`UpstreamClients`], keyed by client settings, and outlive every generation.

mod clients;
mod connector;
mod h1;
mod health;
mod pool;
mod service;

pub use clients::{HttpClient, UpstreamBody, UpstreamClients};
pub use connector::{UpstreamConnector, UpstreamStream};
pub use h1::Upgraded;
pub use pool::{ClientError, Http1Pool, PooledBody};
pub use service::{Endpoint, InFlight, Outcome, ServiceRuntime};

use std::sync::OnceLock;
use std::time::Instant;

/// Whether a request with this method may be sent more than once (RFC 9110 9.2.2): retries
/// and the pool's resend on a connection that failed as it was reused ask this.
pub fn is_idempotent(method: &http::Method) -> bool {
    use http::Method;
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

/// Milliseconds on a monotonic clock that starts with the process. Ejection deadlines are
/// stored in atomics as these.
pub fn now_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_millis() as u64
}
