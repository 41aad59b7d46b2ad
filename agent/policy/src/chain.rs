use std::sync::Arc;

use bytes::Bytes;
use http::Response;
use http::header::HeaderName;

use crate::context::{RequestCtx, Verdict};
use crate::plugin::{Plugin, Step};

/// The header that tells the upstream which consumer was authenticated. A value a client sends
/// is replaced or removed once the chain has run, so the upstream can trust it.
pub const CONSUMER_HEADER: HeaderName = HeaderName::from_static("x-fleetgate-consumer");

/// A request a policy answered itself, and which policy it was.
#[derive(Debug)]
pub struct Rejection {
    pub policy: String,
    pub response: Response<Bytes>,
}

/// The plugins that apply to one request, in phase order.
#[derive(Debug, Clone, Default)]
pub struct Chain {
    plugins: Vec<Arc<dyn Plugin>>,
    /// The most any plugin wants of the body, asked once here rather than per request.
    body_limit: Option<u64>,
}

impl Chain {
    pub fn new(plugins: Vec<Arc<dyn Plugin>>) -> Self {
        let body_limit = plugins.iter().filter_map(|p| p.body_limit()).max();
        Self {
            plugins,
            body_limit,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.plugins.is_empty()
    }

    /// The most request-body bytes any plugin of the chain wants to see.
    pub fn body_limit(&self) -> Option<u64> {
        self.body_limit
    }

    /// Names of the plugins, in the order they run.
    pub fn names(&self) -> Vec<&str> {
        self.plugins.iter().map(|p| p.name()).collect()
    }

    /// Runs every plugin in order. Returns the response to send instead of forwarding, if a
    /// plugin answered. On success a client's [`CONSUMER_HEADER`] is removed (the header is the
    /// gateway's: the caller sends an identified consumer's,
    /// [`crate::ConsumerEntry::consumer_header`], beside the request's header map, where inserting it
    /// would hash its name) and the identified consumer's other headers are set, replacing any
    /// a client sent. Both happen after the plugins, which see the request as sent.
    pub async fn run(&self, ctx: &mut RequestCtx<'_>) -> Option<Rejection> {
        match self.run_now(ctx) {
            Ok(rejection) => rejection,
            Err(unfinished) => self.run_from(unfinished, ctx).await,
        }
    }

    /// [`Self::run`] as far as it goes without waiting: the outcome, or where a plugin has to
    /// wait ([`Plugin::verdict_now`]). [`Self::run_from`] goes on from there.
    pub fn run_now(&self, ctx: &mut RequestCtx<'_>) -> Result<Option<Rejection>, Unfinished> {
        for (at, plugin) in self.plugins.iter().enumerate() {
            match plugin.verdict_now(ctx) {
                None => return Err(Unfinished { at }),
                Some(Verdict::Continue) => {}
                Some(Verdict::Respond(response)) => return Ok(Some(rejection(plugin, response))),
            }
        }
        finish(ctx);
        Ok(None)
    }

    /// The rest of [`Self::run`] from where [`Self::run_now`] stopped.
    pub async fn run_from(
        &self,
        unfinished: Unfinished,
        ctx: &mut RequestCtx<'_>,
    ) -> Option<Rejection> {
        for plugin in self.plugins.get(unfinished.at..).unwrap_or_default() {
            let verdict = match plugin.on_request(ctx) {
                Step::Done(verdict) => verdict,
                Step::Wait(future) => future.await,
            };
            if let Verdict::Respond(response) = verdict {
                return Some(rejection(plugin, response));
            }
        }
        finish(ctx);
        None
    }
}

/// Where a chain's run stopped without an outcome: at the plugin that has to wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unfinished {
    at: usize,
}

fn rejection(plugin: &Arc<dyn Plugin>, response: Response<Bytes>) -> Rejection {
    Rejection {
        policy: plugin.name().to_owned(),
        response,
    }
}

/// What the chain does once every plugin let the request through: the consumer header is the
/// gateway's, and the identified consumer's other headers are set.
fn finish(ctx: &mut RequestCtx<'_>) {
    // Looked for first: comparing a request's few names costs less than hashing this one.
    if ctx.headers.keys().any(|name| *name == CONSUMER_HEADER) {
        ctx.headers.remove(&CONSUMER_HEADER);
    }
    if let Some(consumer) = &ctx.consumer {
        for (name, value) in consumer.extra_headers() {
            ctx.headers.insert(name.clone(), value.clone());
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::net::SocketAddr;

    use fleetgate_shared::model::Phase;
    use http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};

    use super::*;
    use crate::context::reject;

    /// A plugin that appends its name to `x-seen`, answers at once or only after a wait (a
    /// real one: the future yields once), and refuses the request when `refuses`.
    #[derive(Debug)]
    struct Marker {
        name: &'static str,
        waits: bool,
        refuses: bool,
    }

    impl Marker {
        fn plugin(name: &'static str, waits: bool) -> Arc<dyn Plugin> {
            Arc::new(Self {
                name,
                waits,
                refuses: false,
            })
        }

        fn mark(&self, ctx: &mut RequestCtx<'_>) -> Verdict {
            let seen = ctx
                .headers
                .get("x-seen")
                .map(|v| format!("{},{}", v.to_str().unwrap(), self.name))
                .unwrap_or_else(|| self.name.to_owned());
            ctx.headers
                .insert("x-seen", HeaderValue::from_str(&seen).unwrap());
            if self.refuses {
                Verdict::Respond(reject(StatusCode::FORBIDDEN, "no", "refused", self.name))
            } else {
                Verdict::Continue
            }
        }
    }

    impl Plugin for Marker {
        fn name(&self) -> &str {
            self.name
        }

        fn phase(&self) -> Phase {
            Phase::Authn
        }

        fn on_request<'a>(&'a self, ctx: &'a mut RequestCtx<'_>) -> Step<'a> {
            if !self.waits {
                return Step::Done(self.mark(ctx));
            }
            Step::Wait(Box::pin(async move {
                tokio::task::yield_now().await;
                self.mark(ctx)
            }))
        }

        fn verdict_now(&self, ctx: &mut RequestCtx<'_>) -> Option<Verdict> {
            (!self.waits).then(|| self.mark(ctx))
        }
    }

    fn ctx() -> RequestCtx<'static> {
        let mut headers = HeaderMap::new();
        headers.insert(CONSUMER_HEADER, HeaderValue::from_static("forged"));
        let peer: SocketAddr = "127.0.0.1:4000".parse().unwrap();
        RequestCtx::new(Method::GET, Uri::from_static("/"), headers, peer, false)
    }

    fn seen(ctx: &RequestCtx<'static>) -> String {
        ctx.headers
            .get("x-seen")
            .unwrap()
            .to_str()
            .unwrap()
            .to_owned()
    }

    /// Plugins that answer at once run as a plain call; the run stops at the first that has to
    /// wait, and the rest of the run starts with that one: each plugin runs once, in order,
    /// and the chain's closing work (a client's consumer header removed) happens once at the
    /// end either way.
    #[tokio::test]
    async fn a_run_goes_on_from_the_plugin_that_has_to_wait() {
        let at_once = Chain::new(vec![Marker::plugin("a", false), Marker::plugin("b", false)]);
        let mut c = ctx();
        assert!(at_once.run_now(&mut c).unwrap().is_none());
        assert_eq!(seen(&c), "a,b");
        assert!(!c.headers.contains_key(CONSUMER_HEADER));

        let mixed = Chain::new(vec![
            Marker::plugin("a", false),
            Marker::plugin("b", true),
            Marker::plugin("c", false),
        ]);
        let mut c = ctx();
        let unfinished = mixed.run_now(&mut c).unwrap_err();
        assert_eq!(seen(&c), "a");
        assert!(c.headers.contains_key(CONSUMER_HEADER), "finished early");
        assert!(mixed.run_from(unfinished, &mut c).await.is_none());
        assert_eq!(seen(&c), "a,b,c");
        assert!(!c.headers.contains_key(CONSUMER_HEADER));

        // `run` is the two together; from the start, every plugin runs through `on_request`.
        let mut c = ctx();
        assert!(mixed.run(&mut c).await.is_none());
        assert_eq!(seen(&c), "a,b,c");
        let mut c = ctx();
        assert!(mixed.run_from(Unfinished { at: 0 }, &mut c).await.is_none());
        assert_eq!(seen(&c), "a,b,c");
    }

    /// A refusal ends the run where it is given, at once or after a wait, and names its policy;
    /// the plugins after it do not run and the request is left as the refusing one saw it.
    #[tokio::test]
    async fn a_refusal_ends_the_run_and_names_its_policy() {
        let refusing = |name, waits| -> Arc<dyn Plugin> {
            Arc::new(Marker {
                name,
                waits,
                refuses: true,
            })
        };
        for waits in [false, true] {
            let chain = Chain::new(vec![
                Marker::plugin("a", false),
                refusing("guard", waits),
                Marker::plugin("c", false),
            ]);
            let mut c = ctx();
            let rejection = chain.run(&mut c).await.unwrap();
            assert_eq!(rejection.policy, "guard");
            assert_eq!(rejection.response.status(), StatusCode::FORBIDDEN);
            assert_eq!(seen(&c), "a,guard");
            assert!(c.headers.contains_key(CONSUMER_HEADER));
        }
    }
}
