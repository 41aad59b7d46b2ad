//! The agent's policy chain.
//!
//! Every `Policy` resource becomes a [`Plugin`]: built once per config version by
//! [`PolicySet::compile`] (regexes, keys and rule sets prepared off the request path), then run
//! for each request by [`Chain::run`], phase by phase: authn → authz → rate limit → security →
//! transform (see `docs/policies.md`). A plugin may let the request through (possibly changing
//! its headers, naming the consumer, or adding response headers) or answer it itself.
//!
//! State that must outlive a config version (rate-limit counters, CC bans) lives in
//! [`PolicyState`], which the agent keeps for its whole life and hands to every compile; a
//! config change therefore never resets counters it did not touch.

mod chain;
mod context;
mod plugin;
pub mod plugins;
mod set;
mod state;

pub use chain::{CONSUMER_HEADER, Chain, Rejection, Unfinished};
pub use context::{BodyPrefix, ConsumerEntry, Held, RequestCtx, Verdict, canonical_ip, reject};
pub use plugin::{AnswersAtOnce, Plugin, PluginFuture, Step};
pub use set::{Consumers, PolicySet};
pub use state::PolicyState;
