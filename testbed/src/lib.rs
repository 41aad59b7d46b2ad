//! The testbed's building blocks, as a library so that scenarios and integration tests use the
//! same code as the `fleetgate-testbed` binary.
//!
//! - [`backend`]: the demo backend (HTTP echo, WebSocket echo, SSE).
//! - [`fleet`]: three managers, emulated clouds of agents behind their own WAN links, blue and
//!   green backends, the demo bundle.
//! - [`scenario`]: scenario files (steps, faults, assertions) and their runner.
//! - [`harness`]: managers and agents as real processes, for tests and scenarios.
//! - [`wan`]: a user-space WAN emulator (TCP and UDP relays with latency, jitter, loss and
//!   partitions), because the test machines have no `netem`.
//! - [`load`]: an HTTP/1.1 and WebSocket load generator whose failure counts a scenario can
//!   assert on while it runs.

pub mod backend;
pub mod fleet;
pub mod harness;
pub mod load;
pub mod scenario;
pub mod wan;
