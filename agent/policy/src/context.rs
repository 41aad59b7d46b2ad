use std::cell::Cell;
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use fleetgate_shared::model::Rate;
use http::header::HeaderName;
use http::{HeaderMap, HeaderValue, Method, Response, StatusCode, Uri, header};

use crate::chain::CONSUMER_HEADER;

/// A consumer as plugins see it: who the caller is, what to tell the upstream, and its own
/// rate-limit overrides by policy name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerEntry {
    pub name: String,
    pub rate_limits: BTreeMap<String, Rate>,
    /// The value of [`CONSUMER_HEADER`] on an identified request: the name, or the consumer's
    /// own header of that name; none for a name that is not a valid header value when the
    /// consumer has no header of that name.
    consumer_header: Option<HeaderValue>,
    /// The consumer's other headers, parsed once here rather than per request (names or values
    /// that are not valid in HTTP are left out, as validation already reports them).
    extra_headers: Vec<(HeaderName, HeaderValue)>,
}

impl ConsumerEntry {
    pub fn new(
        name: String,
        headers: &BTreeMap<String, String>,
        rate_limits: BTreeMap<String, Rate>,
    ) -> Self {
        let mut consumer_header = HeaderValue::from_str(&name).ok();
        let mut extra_headers = Vec::new();
        for (name, value) in headers {
            let (Ok(name), Ok(value)) = (
                HeaderName::from_bytes(name.as_bytes()),
                HeaderValue::from_str(value),
            ) else {
                continue;
            };
            if name == CONSUMER_HEADER {
                consumer_header = Some(value);
            } else {
                extra_headers.push((name, value));
            }
        }
        Self {
            name,
            rate_limits,
            consumer_header,
            extra_headers,
        }
    }

    /// What an identified request carries upstream as [`CONSUMER_HEADER`]. The proxy writes it
    /// beside the request's header map (the chain has removed any a client sent).
    pub fn consumer_header(&self) -> Option<&HeaderValue> {
        self.consumer_header.as_ref()
    }

    /// The consumer's other headers, which the chain sets on an identified request.
    pub fn extra_headers(&self) -> &[(HeaderName, HeaderValue)] {
        &self.extra_headers
    }
}

/// What the proxy read of the request body before running the chain.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum BodyPrefix {
    /// No plugin asked for the body.
    #[default]
    NotRead,
    /// The whole body (it fit in the limit).
    Complete(Bytes),
    /// The first `limit` bytes; the body is longer. It is still forwarded whole.
    Partial(Bytes),
}

/// A part of the request a context holds: its own (a context built by itself, as tests and
/// benchmarks do) or borrowed from the request the proxy is handling, so that the chain edits
/// that request in place and nothing is moved into the context and back. Plugins use it as
/// the part itself: read and edit it through the dereference. It cannot be replaced from
/// outside this module (a replaced part would not reach the borrowed request).
#[derive(Debug)]
pub struct Held<'r, T>(Part<'r, T>);

#[derive(Debug)]
enum Part<'r, T> {
    Owned(T),
    Borrowed(&'r mut T),
}

impl<T> std::ops::Deref for Held<'_, T> {
    type Target = T;

    fn deref(&self) -> &T {
        match &self.0 {
            Part::Owned(part) => part,
            Part::Borrowed(part) => part,
        }
    }
}

impl<T> std::ops::DerefMut for Held<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        match &mut self.0 {
            Part::Owned(part) => part,
            Part::Borrowed(part) => part,
        }
    }
}

/// One request on its way through the chain. Plugins read and change it; the proxy forwards
/// what is left.
#[derive(Debug)]
pub struct RequestCtx<'r> {
    pub method: Method,
    /// The request target. A plugin may change its query (key-auth drops a key sent as a
    /// query parameter) and the proxy forwards that; the path was routed already: the proxy
    /// forwards (or redirects to) the routed path whatever a plugin does to this one.
    pub uri: Held<'r, Uri>,
    /// Request headers as they will be forwarded (plugins strip credentials, add claims).
    pub headers: Held<'r, HeaderMap>,
    /// The TCP peer.
    pub peer: SocketAddr,
    /// Whether the client connection is TLS.
    pub tls: bool,
    pub body: BodyPrefix,
    /// Set by the authentication plugin that identified the caller.
    pub consumer: Option<Arc<ConsumerEntry>>,
    /// Headers added to the response the client gets (rate-limit state, CORS).
    pub response_headers: HeaderMap,
    /// Wall-clock time of the request since the Unix epoch, read at the first
    /// [`Self::since_epoch`] (JWT exp/nbf, HMAC dates, challenge cookies): most chains never ask.
    now: Cell<Option<Duration>>,
}

impl<'r> RequestCtx<'r> {
    /// A context owning its request's parts, with no body read, no consumer and the current
    /// time.
    pub fn new(method: Method, uri: Uri, headers: HeaderMap, peer: SocketAddr, tls: bool) -> Self {
        Self::holding(
            method,
            Held(Part::Owned(uri)),
            Held(Part::Owned(headers)),
            peer,
            tls,
        )
    }

    /// A context over the target and headers of a request that stays with its owner, who
    /// finds the chain's changes in them.
    pub fn borrowing(
        method: Method,
        uri: &'r mut Uri,
        headers: &'r mut HeaderMap,
        peer: SocketAddr,
        tls: bool,
    ) -> Self {
        Self::holding(
            method,
            Held(Part::Borrowed(uri)),
            Held(Part::Borrowed(headers)),
            peer,
            tls,
        )
    }

    fn holding(
        method: Method,
        uri: Held<'r, Uri>,
        headers: Held<'r, HeaderMap>,
        peer: SocketAddr,
        tls: bool,
    ) -> Self {
        Self {
            method,
            uri,
            headers,
            peer,
            tls,
            body: BodyPrefix::NotRead,
            consumer: None,
            response_headers: HeaderMap::new(),
            now: Cell::new(None),
        }
    }

    /// The request's wall-clock time since the Unix epoch: read once, the same for every
    /// plugin after ([`wall_clock`]).
    pub fn since_epoch(&self) -> Duration {
        self.now.get().unwrap_or_else(|| {
            let now = wall_clock();
            self.now.set(Some(now));
            now
        })
    }

    /// [`Self::since_epoch`] in whole seconds, the unit policies compare dates in.
    pub fn unix_secs(&self) -> u64 {
        self.since_epoch().as_secs()
    }

    /// Fixes the request's time, for tests that need a given clock (0 before the epoch).
    pub fn set_now(&mut self, now: SystemTime) {
        self.now.set(Some(epoch_time(now)));
    }

    /// The client IP as the TCP peer sees it, with an IPv4 client on a dual-stack socket
    /// (`::ffff:a.b.c.d`) given as the IPv4 address it is, so that every policy counts, binds
    /// and matches one client as one address.
    pub fn peer_ip(&self) -> IpAddr {
        canonical_ip(self.peer.ip())
    }

    /// The value of cookie `name` in the request, if present.
    pub fn cookie(&self, name: &str) -> Option<&str> {
        fleetgate_agent_route::cookie(&self.headers, name)
    }

    /// The first value of query parameter `name` (not percent-decoded).
    pub fn query_param(&self, name: &str) -> Option<&str> {
        self.uri
            .query()?
            .split('&')
            .map(|pair| pair.split_once('=').unwrap_or((pair, "")))
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v)
    }
}

/// The wall-clock time since the Unix epoch as policies read it. On Linux, the kernel's coarse
/// real-time clock: the time of its last tick (a few milliseconds old at most), read in ~2 ns
/// where `SystemTime::now` takes ~29 ns on this host (docs/benchmarks.md, session 20). Policies
/// compare it in seconds, against windows of seconds (a JWT's exp with its clock skew, an
/// HMAC date's window, a challenge cookie's expiry).
pub fn wall_clock() -> Duration {
    #[cfg(target_os = "linux")]
    {
        let now = rustix::time::clock_gettime(rustix::time::ClockId::RealtimeCoarse);
        // Before the epoch (a clock set wrong) reads as the epoch.
        u64::try_from(now.tv_sec).map_or(Duration::ZERO, |secs| {
            Duration::new(secs, u32::try_from(now.tv_nsec).unwrap_or(0))
        })
    }
    #[cfg(not(target_os = "linux"))]
    {
        epoch_time(SystemTime::now())
    }
}

/// `at` since the Unix epoch; zero before it (a clock set wrong reads as the epoch).
pub fn epoch_time(at: SystemTime) -> Duration {
    at.duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
}

/// `ip`, with an IPv4-mapped IPv6 address (`::ffff:a.b.c.d`) turned into its IPv4 address.
pub fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    }
}

/// What a plugin decided.
#[derive(Debug)]
pub enum Verdict {
    /// Go on to the next plugin (and then upstream).
    Continue,
    /// Answer the client with this response; later plugins and the upstream are skipped.
    Respond(Response<Bytes>),
}

/// A JSON error response: `{"error": code, "message": message, "policy": policy}`.
pub fn reject(status: StatusCode, code: &str, message: &str, policy: &str) -> Response<Bytes> {
    let body = serde_json::json!({ "error": code, "message": message, "policy": policy });
    let mut bytes = serde_json::to_vec(&body).unwrap_or_default();
    bytes.push(b'\n');
    let mut response = Response::new(Bytes::from(bytes));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The policies' clock is the wall clock: within a tick (a second is far more) of
    /// `SystemTime::now`, never ahead of it, and read once per request.
    #[test]
    fn the_policy_clock_is_the_wall_clock_read_once() {
        let before = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap();
        let ours = wall_clock();
        let after = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap();
        assert!(ours <= after, "{ours:?} is ahead of {after:?}");
        assert!(
            before.saturating_sub(ours) < Duration::from_secs(1),
            "{ours:?} lags {before:?}"
        );

        let peer = "127.0.0.1:1".parse().unwrap();
        let ctx = RequestCtx::new(
            Method::GET,
            Uri::from_static("/"),
            HeaderMap::new(),
            peer,
            false,
        );
        let first = ctx.since_epoch();
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(ctx.since_epoch(), first);
        assert_eq!(ctx.unix_secs(), first.as_secs());
    }

    /// A consumer names itself upstream unless its own headers set `x-fleetgate-consumer`,
    /// which then wins (it is not sent twice); its other headers are its own, and a name or
    /// value HTTP cannot carry is left out.
    #[test]
    fn a_consumer_names_itself_unless_its_headers_do() {
        let headers = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect()
        };
        let plain = ConsumerEntry::new(
            "acme".into(),
            &headers(&[("x-tenant", "acme"), ("bad name", "v")]),
            BTreeMap::new(),
        );
        assert_eq!(plain.consumer_header().unwrap(), "acme");
        let extra: Vec<_> = plain
            .extra_headers()
            .iter()
            .map(|(n, v)| (n.as_str(), v.to_str().unwrap()))
            .collect();
        assert_eq!(extra, [("x-tenant", "acme")]);

        let renamed = ConsumerEntry::new(
            "acme".into(),
            &headers(&[("x-fleetgate-consumer", "tenant-7")]),
            BTreeMap::new(),
        );
        assert_eq!(renamed.consumer_header().unwrap(), "tenant-7");
        assert!(renamed.extra_headers().is_empty());

        let unnameable =
            ConsumerEntry::new("line\nbreak".into(), &BTreeMap::new(), BTreeMap::new());
        assert_eq!(unnameable.consumer_header(), None);
    }
}
