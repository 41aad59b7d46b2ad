use std::future::Future;
use std::pin::Pin;

use fleetgate_shared::model::Phase;

use crate::context::{RequestCtx, Verdict};

/// The future a plugin returns: most plugins answer at once (`Box::pin(async { ... })` over a
/// synchronous check); cluster-wide rate limits and JWKS refreshes await I/O.
pub type PluginFuture<'a> = Pin<Box<dyn Future<Output = Verdict> + Send + 'a>>;

/// One compiled policy. Built once per config version; called for every request its scope
/// covers. Implementations must not block: CPU-heavy work (a WAF) runs on a blocking pool.
pub trait Plugin: Send + Sync + std::fmt::Debug {
    /// The policy's resource name.
    fn name(&self) -> &str;

    /// The phase this plugin runs in.
    fn phase(&self) -> Phase;

    /// How many bytes of the request body this plugin needs to see, if any. The proxy reads at
    /// most the largest such limit of a chain before running it, and forwards the body whole.
    fn body_limit(&self) -> Option<u64> {
        None
    }

    /// Inspects (and may change) the request; answers it or lets it through.
    fn on_request<'a>(&'a self, ctx: &'a mut RequestCtx) -> PluginFuture<'a>;
}
