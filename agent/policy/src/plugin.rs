use std::future::Future;
use std::pin::Pin;

use fleetgate_shared::model::Phase;

use crate::context::{RequestCtx, Verdict};

/// What a plugin that has to wait returns: cluster-wide rate limits await Redis, JWKS
/// refreshes a fetch, the WAF its turn on the blocking pool.
pub type PluginFuture<'a> = Pin<Box<dyn Future<Output = Verdict> + Send + 'a>>;

/// A plugin's answer to a request: given at once (most plugins, with no allocation), or after
/// waiting. Awaiting a `Step` gives the verdict either way.
pub enum Step<'a> {
    Done(Verdict),
    Wait(PluginFuture<'a>),
}

impl std::fmt::Debug for Step<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Step::Done(verdict) => f.debug_tuple("Done").field(verdict).finish(),
            Step::Wait(_) => f.write_str("Wait(..)"),
        }
    }
}

impl<'a> std::future::IntoFuture for Step<'a> {
    type Output = Verdict;
    type IntoFuture = PluginFuture<'a>;

    /// For callers that await every step alike (tests): a verdict given at once is boxed
    /// here. The chain matches on the step instead and boxes nothing.
    fn into_future(self) -> PluginFuture<'a> {
        match self {
            Step::Done(verdict) => Box::pin(std::future::ready(verdict)),
            Step::Wait(future) => future,
        }
    }
}

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
    fn on_request<'a>(&'a self, ctx: &'a mut RequestCtx<'_>) -> Step<'a>;

    /// [`Self::on_request`]'s verdict when it is given at once, or `None` when this request
    /// has to wait; the chain then calls `on_request`, so a `None` must leave the request as
    /// `on_request` expects to find it. A chain whose plugins all answer here runs as a plain
    /// call, without creating a future (the proxy's state machine would copy it on every
    /// request). The default, for plugins that always wait: `None`.
    fn verdict_now(&self, _ctx: &mut RequestCtx<'_>) -> Option<Verdict> {
        None
    }
}

/// A plugin that always answers at once, without waiting: it gives its verdict and is a
/// [`Plugin`] whose `on_request` and `verdict_now` both give that verdict, so the two cannot
/// disagree.
pub trait AnswersAtOnce: Send + Sync + std::fmt::Debug {
    /// The policy's resource name.
    fn name(&self) -> &str;

    /// The phase this plugin runs in.
    fn phase(&self) -> Phase;

    /// As [`Plugin::body_limit`].
    fn body_limit(&self) -> Option<u64> {
        None
    }

    /// Inspects (and may change) the request; answers it or lets it through.
    fn verdict(&self, ctx: &mut RequestCtx<'_>) -> Verdict;
}

impl<T: AnswersAtOnce> Plugin for T {
    fn name(&self) -> &str {
        AnswersAtOnce::name(self)
    }

    fn phase(&self) -> Phase {
        AnswersAtOnce::phase(self)
    }

    fn body_limit(&self) -> Option<u64> {
        AnswersAtOnce::body_limit(self)
    }

    fn on_request<'a>(&'a self, ctx: &'a mut RequestCtx<'_>) -> Step<'a> {
        Step::Done(self.verdict(ctx))
    }

    fn verdict_now(&self, ctx: &mut RequestCtx<'_>) -> Option<Verdict> {
        Some(self.verdict(ctx))
    }
}
