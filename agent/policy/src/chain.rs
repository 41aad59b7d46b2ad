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
        for plugin in &self.plugins {
            let verdict = match plugin.on_request(ctx) {
                Step::Done(verdict) => verdict,
                Step::Wait(future) => future.await,
            };
            if let Verdict::Respond(response) = verdict {
                return Some(Rejection {
                    policy: plugin.name().to_owned(),
                    response,
                });
            }
        }
        // Looked for first: comparing a request's few names costs less than hashing this one.
        if ctx.headers.keys().any(|name| *name == CONSUMER_HEADER) {
            ctx.headers.remove(&CONSUMER_HEADER);
        }
        if let Some(consumer) = &ctx.consumer {
            for (name, value) in consumer.extra_headers() {
                ctx.headers.insert(name.clone(), value.clone());
            }
        }
        None
    }
}
