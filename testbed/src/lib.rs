//! The testbed's building blocks, as a library so that scenarios and integration tests use the
//! same code as the `fleetgate-testbed` binary.
//!
//! - [`backend`]: the demo backend (HTTP echo, WebSocket echo, SSE).
//! - [`harness`]: managers and agents as real processes, for tests and scenarios.
//! - [`wan`]: a user-space WAN emulator (TCP and UDP relays with latency, jitter, loss and
//!   partitions), because the test machines have no `netem`.

pub mod backend;
pub mod harness;
pub mod wan;
