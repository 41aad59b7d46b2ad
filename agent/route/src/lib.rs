//! The agent's route table: the compiled runtime form of a config's routes.
//!
//! [`RouteTable::compile`] takes a [`fleetgate_shared::Snapshot`], validates it with
//! [`fleetgate_shared::validate`], and turns every `Route` into a [`CompiledRoute`] whose regexes,
//! header names and methods are parsed once. The table indexes the routes by host and path so
//! that [`RouteTable::find`] looks at a handful of candidates instead of every route, and it
//! stores each candidate's precedence key so that choosing between candidates is a comparison
//! of small integers.
//!
//! The precedence rules (which route wins when several match) are written down, with examples,
//! in `docs/routing.md`; [`RouteTable::find`] is the one implementation of them.
//!
//! The crate is pure: it takes values and returns values, with no sockets, no async runtime and
//! no clock. A table is immutable once compiled; the proxy publishes a new `Arc<RouteTable>` per
//! config version and readers never lock.

mod canary;
mod cow;
mod error;
pub mod hosts;
mod matcher;
mod path;
mod precedence;
mod request;
mod route;
mod table;
mod value;

#[cfg(test)]
mod testing;

pub use canary::CompiledCanary;
pub use request::{RequestView, cookie, cookie_values, normalize_host};
pub use route::CompiledRoute;
pub use table::{Matched, RouteTable};
