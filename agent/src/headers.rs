//! Header hygiene: hop-by-hop removal (RFC 9110 7.6.1) and the forwarding headers.

use std::borrow::Cow;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};

/// Fields that describe one connection, never forwarded (RFC 9110 7.6.1, plus the legacy
/// `keep-alive` and `proxy-connection` that clients still send), lower-case. `Connection`
/// first and `Upgrade` last: `strip_hop_by_hop` keeps the latter for an upgrade.
pub const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

pub static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
/// The identified consumer's name ([`fleetgate_agent_policy::CONSUMER_HEADER`]).
static X_FLEETGATE_CONSUMER: HeaderName = fleetgate_agent_policy::CONSUMER_HEADER;

/// Whether the request asks to switch protocols (WebSocket and any HTTP/1.1 Upgrade).
pub fn is_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
        && connection_tokens(headers).any(|t| t.eq_ignore_ascii_case("upgrade"))
}

/// The items of one comma-separated field value (RFC 9110 5.6.1), trimmed, empty ones
/// skipped. A value that is not visible ASCII has none.
pub fn list_items(value: &HeaderValue) -> impl DoubleEndedIterator<Item = &str> {
    field_items(value.as_bytes())
}

/// [`list_items`] of a field value still in its raw bytes.
pub fn field_items(value: &[u8]) -> impl DoubleEndedIterator<Item = &str> {
    field_text(value)
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

/// A field value as text when it is visible ASCII (tabs allowed), as `HeaderValue::to_str`
/// reads it.
pub fn field_text(value: &[u8]) -> Option<&str> {
    if value
        .iter()
        .all(|&b| b == b'\t' || (0x20..0x7f).contains(&b))
    {
        std::str::from_utf8(value).ok()
    } else {
        None
    }
}

/// The tokens of every `Connection` header field.
pub fn connection_tokens(headers: &HeaderMap) -> impl Iterator<Item = &str> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .flat_map(list_items)
}

/// Removes hop-by-hop headers and every header the `Connection` header names. When `upgrade`
/// is set, `Connection: upgrade` and `Upgrade` are kept so that the upgrade reaches the peer.
pub fn strip_hop_by_hop(headers: &mut HeaderMap, upgrade: bool) {
    // Most messages carry none of them: one pass over the few names present notes which are
    // there (bit i: `HOP_BY_HOP[i]`; names compare by length first), so that only those are
    // removed rather than every hop-by-hop name hashed and looked for.
    let mut present = 0u16;
    for name in headers.keys() {
        if let Some(i) = HOP_BY_HOP.iter().position(|n| *n == name.as_str()) {
            present |= 1 << i;
        }
    }
    if present == 0 {
        return;
    }
    // The names `Connection` lists go too. Its values are cloned (a reference count: they
    // share the parsed head's bytes) so the map can change while they are read, and each name
    // is removed by its text, never made into a `HeaderName` (an allocation for a name that
    // is not a standard one).
    if present & 1 != 0 {
        let mut listed = headers.get_all(header::CONNECTION).iter();
        let first = listed.next().cloned();
        let more: Vec<HeaderValue> = listed.cloned().collect();
        for value in first.iter().chain(&more) {
            for token in
                list_items(value).filter(|t| !(upgrade && t.eq_ignore_ascii_case("upgrade")))
            {
                headers.remove(token);
            }
        }
    }
    let upgrade_value = if upgrade {
        headers.get(header::UPGRADE).cloned()
    } else {
        None
    };
    for (i, name) in HOP_BY_HOP.iter().enumerate() {
        if present & (1 << i) != 0 {
            headers.remove(*name);
        }
    }
    if let Some(value) = upgrade_value {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, value);
    }
}

/// The fields the proxy adds to a forwarded request: `X-Forwarded-For`, `-Proto`, `-Host`,
/// `X-Request-Id`, a `Host` other than the client's and the consumer a policy identified
/// (`X-Fleetgate-Consumer`, whose client copy the policy chain removed). They travel beside
/// the client's header map instead of being inserted into it: the server sizes that map to
/// the client's fields, so the first insert past them rebuilds it (about a twentieth of a
/// proxied request's instructions went to these inserts; an insert also hashes the name).
/// The HTTP/1.1 client writes them after the map's
/// fields; a client that only encodes a map (HTTP/2) has them merged in first. The map holds
/// no field of the same name as one of them (the client's are taken out when replaced).
#[derive(Debug, Clone)]
pub struct Added<'c> {
    forwarded_for: Option<HeaderValue>,
    forwarded_proto: Option<HeaderValue>,
    forwarded_host: Option<HeaderValue>,
    request_id: Option<HeaderValue>,
    host: Option<HeaderValue>,
    /// Borrowed from the consumer the request holds, which outlives its exchanges (a copy
    /// would count a reference up and down on every identified request); owned only by a
    /// send that outlives the request (a mirror's, [`Added::into_owned`]).
    consumer: Option<Cow<'c, HeaderValue>>,
}

impl Added<'static> {
    /// Nothing added: requests the proxy makes itself (health checks).
    pub const NONE: Added<'static> = Added {
        forwarded_for: None,
        forwarded_proto: None,
        forwarded_host: None,
        request_id: None,
        host: None,
        consumer: None,
    };
}

impl<'c> Added<'c> {
    /// The added fields, `Host` first.
    pub fn fields(&self) -> impl Iterator<Item = (&HeaderName, &HeaderValue)> {
        [
            (&header::HOST, self.host.as_ref()),
            (&X_FORWARDED_FOR, self.forwarded_for.as_ref()),
            (&X_FORWARDED_PROTO, self.forwarded_proto.as_ref()),
            (&X_FORWARDED_HOST, self.forwarded_host.as_ref()),
            (&X_REQUEST_ID, self.request_id.as_ref()),
            (&X_FLEETGATE_CONSUMER, self.consumer.as_deref()),
        ]
        .into_iter()
        .filter_map(|(name, value)| value.map(|v| (name, v)))
    }

    /// The same fields, owning every value: for a send that outlives the request.
    pub fn into_owned(self) -> Added<'static> {
        Added {
            forwarded_for: self.forwarded_for,
            forwarded_proto: self.forwarded_proto,
            forwarded_host: self.forwarded_host,
            request_id: self.request_id,
            host: self.host,
            consumer: self.consumer.map(|value| Cow::Owned(value.into_owned())),
        }
    }

    /// Names the consumer a policy identified (the chain removed a client's field of that
    /// name).
    pub fn set_consumer(&mut self, consumer: Option<&'c fleetgate_agent_policy::ConsumerEntry>) {
        self.consumer = consumer
            .and_then(|c| c.consumer_header())
            .map(Cow::Borrowed);
    }

    /// Whether a `Host` is among them.
    pub fn has_host(&self) -> bool {
        self.host.is_some()
    }

    /// Puts the added fields into `headers` (for route header edits, which may change them,
    /// and for clients that encode a map).
    pub fn merge_into(&mut self, headers: &mut HeaderMap) {
        for (name, value) in self.fields() {
            headers.insert(name.clone(), value.clone());
        }
        *self = Added::NONE;
    }

    /// Sends `host` as the request's `Host` (the client's, or a rewrite).
    pub fn set_host(&mut self, headers: &mut HeaderMap, host: HeaderValue) {
        let mut sent = headers.get_all(header::HOST).iter();
        match (sent.next(), sent.next()) {
            (Some(only), None) if *only == host => {}
            (None, _) => self.host = Some(host),
            _ => {
                headers.remove(header::HOST);
                self.host = Some(host);
            }
        }
    }
}

/// What the proxy adds to a request it forwards (see [`Added`]): the client's address
/// appended to `X-Forwarded-For`, `X-Forwarded-Proto` and `X-Forwarded-Host` unless a previous
/// proxy set them, and the request id unless the client sent that very id.
pub fn forwarding(
    headers: &mut HeaderMap,
    client_ip: std::net::IpAddr,
    tls: bool,
    host: Option<&HeaderValue>,
    request_id: &HeaderValue,
) -> Added<'static> {
    let mut added = Added::NONE;
    let prior = headers.get(&X_FORWARDED_FOR);
    let prior_list = prior
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|p| !p.is_empty());
    let mut list = Vec::with_capacity(prior_list.map_or(0, |p| p.len() + 2) + 39);
    if let Some(prior) = prior_list {
        list.extend_from_slice(prior.as_bytes());
        list.extend_from_slice(b", ");
    }
    fleetgate_agent_waf::push_address(&mut list, client_ip);
    if prior.is_some() {
        headers.remove(&X_FORWARDED_FOR);
    }
    added.forwarded_for = HeaderValue::from_maybe_shared(Bytes::from(list)).ok();
    if !headers.contains_key(&X_FORWARDED_PROTO) {
        added.forwarded_proto = Some(HeaderValue::from_static(if tls { "https" } else { "http" }));
    }
    if let Some(host) = host
        && !headers.contains_key(&X_FORWARDED_HOST)
    {
        added.forwarded_host = Some(host.clone());
    }
    match headers.get(&X_REQUEST_ID) {
        Some(sent) if sent == request_id => {}
        Some(_) => {
            headers.remove(&X_REQUEST_ID);
            added.request_id = Some(request_id.clone());
        }
        None => added.request_id = Some(request_id.clone()),
    }
    added
}

/// The request's id, as the header value sent upstream and back to the client: the client's
/// `X-Request-Id` when it sent a sane one (1–128 visible ASCII characters), else a new random
/// 128-bit id in hex. Made once per request and cloned (a reference count) where it goes.
pub fn request_id(headers: &HeaderMap) -> HeaderValue {
    if let Some(id) = headers.get(&X_REQUEST_ID)
        && (1..=128).contains(&id.len())
        && id.to_str().is_ok()
    {
        return id.clone();
    }
    // Formatted on the stack: two random words, 16 lower-case hex digits each.
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut id = [0u8; 32];
    let bits = (u128::from(fastrand::u64(..)) << 64) | u128::from(fastrand::u64(..));
    for (i, digit) in id.iter_mut().enumerate() {
        *digit = HEX[((bits >> (124 - 4 * i)) & 0xf) as usize];
    }
    // Shared from the start (one allocation), so the clones that go upstream and back to the
    // client are reference counts; a value copied from a slice would allocate again when first
    // cloned.
    HeaderValue::from_maybe_shared(Bytes::from_owner(id))
        .unwrap_or_else(|_| HeaderValue::from_static("-"))
}

/// Applies a route's header edits in the order remove → set → add.
pub fn apply_edits(headers: &mut HeaderMap, edits: &fleetgate_shared::model::HeaderEdits) {
    for name in &edits.remove {
        if let Ok(name) = HeaderName::from_bytes(name.as_bytes()) {
            headers.remove(name);
        }
    }
    for (name, value) in &edits.set {
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            headers.insert(name, value);
        }
    }
    for (name, value) in &edits.add {
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            headers.append(name, value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    fn id() -> HeaderValue {
        HeaderValue::from_static("0123456789abcdef0123456789abcdef")
    }

    #[test]
    fn added_fields_stay_beside_the_map_and_replace_what_the_client_sent() {
        let mut h = map(&[
            ("host", "a.example"),
            ("x-forwarded-for", "203.0.113.9"),
            ("x-forwarded-proto", "https"),
            ("x-request-id", "bad id with spaces"),
        ]);
        let mut added = forwarding(&mut h, "10.0.0.1".parse().unwrap(), false, None, &id());
        added.set_host(&mut h, HeaderValue::from_static("a.example"));
        // The client's forwarded-for list and its unusable request id left the map; the
        // previous proxy's proto and the client's own Host stayed in it.
        let names: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
        assert_eq!(names, ["host", "x-forwarded-proto"]);
        let fields: Vec<(&str, &str)> = added
            .fields()
            .map(|(n, v)| (n.as_str(), v.to_str().unwrap()))
            .collect();
        assert_eq!(
            fields,
            [
                ("x-forwarded-for", "203.0.113.9, 10.0.0.1"),
                ("x-request-id", "0123456789abcdef0123456789abcdef"),
            ]
        );
        assert!(!added.has_host());

        // A rewritten Host replaces the client's, and every client id that is the request's
        // own stays where it is.
        let mut h = map(&[
            ("host", "a.example"),
            ("x-request-id", "0123456789abcdef0123456789abcdef"),
        ]);
        let mut added = forwarding(&mut h, "10.0.0.1".parse().unwrap(), true, None, &id());
        added.set_host(&mut h, HeaderValue::from_static("internal.blue"));
        assert!(h.get("host").is_none() && added.has_host());
        added.merge_into(&mut h);
        assert_eq!(h.get("host").unwrap(), "internal.blue");
        assert_eq!(h.get_all("x-request-id").iter().count(), 1);
        assert_eq!(h.get("x-forwarded-proto").unwrap(), "https");
    }

    #[test]
    fn a_sane_client_request_id_is_kept_and_anything_else_replaced_by_128_random_bits() {
        let kept = request_id(&map(&[("x-request-id", "order-42/retry-1")]));
        assert_eq!(kept, "order-42/retry-1");
        let too_long = "a".repeat(129);
        let mut odd = HeaderMap::new();
        odd.insert(
            X_REQUEST_ID.clone(),
            HeaderValue::from_bytes(b"caf\xc3\xa9").unwrap(),
        );
        for headers in [
            HeaderMap::new(),
            map(&[("x-request-id", "")]),
            map(&[("x-request-id", &too_long)]),
            odd,
        ] {
            let id = request_id(&headers);
            let id = id.to_str().unwrap();
            assert_eq!(id.len(), 32, "{id}");
            assert!(
                id.bytes()
                    .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
            );
        }
        let (a, b) = (request_id(&HeaderMap::new()), request_id(&HeaderMap::new()));
        assert_ne!(a, b, "fresh ids differ");
    }

    #[test]
    fn hop_by_hop_and_connection_named_headers_are_removed() {
        let mut h = map(&[
            ("connection", "keep-alive, x-secret"),
            ("keep-alive", "timeout=5"),
            ("x-secret", "1"),
            ("te", "trailers"),
            ("transfer-encoding", "chunked"),
            ("proxy-authorization", "basic x"),
            ("x-kept", "yes"),
        ]);
        strip_hop_by_hop(&mut h, false);
        let names: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
        assert_eq!(names, vec!["x-kept"]);
    }

    #[test]
    fn every_connection_field_names_headers_to_remove_in_any_case() {
        let mut h = HeaderMap::new();
        h.append("connection", HeaderValue::from_static("X-One, bad name,,"));
        h.append("connection", HeaderValue::from_static("x-two"));
        h.insert("x-one", HeaderValue::from_static("1"));
        h.insert("x-two", HeaderValue::from_static("2"));
        h.insert("x-kept", HeaderValue::from_static("yes"));
        strip_hop_by_hop(&mut h, false);
        let names: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
        assert_eq!(names, vec!["x-kept"]);
    }

    #[test]
    fn an_upgrade_keeps_its_upgrade_headers_only() {
        let mut h = map(&[
            ("connection", "Upgrade, x-secret"),
            ("upgrade", "websocket"),
            ("x-secret", "1"),
        ]);
        assert!(is_upgrade(&h));
        strip_hop_by_hop(&mut h, true);
        assert_eq!(h.get("connection").unwrap(), "upgrade");
        assert_eq!(h.get("upgrade").unwrap(), "websocket");
        assert!(h.get("x-secret").is_none());
    }

    #[test]
    fn a_message_without_hop_by_hop_headers_is_left_as_it_is() {
        let mut h = map(&[("host", "a.example"), ("x-kept", "yes"), ("accept", "*/*")]);
        let before = h.clone();
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h, before);
    }

    #[test]
    fn a_long_forwarded_for_list_keeps_every_hop_and_gets_the_client() {
        let prior = vec!["198.51.100.77"; 40].join(", ");
        let mut h = map(&[("x-forwarded-for", &prior)]);
        forwarding(&mut h, "10.0.0.1".parse().unwrap(), false, None, &id()).merge_into(&mut h);
        assert_eq!(
            h.get("x-forwarded-for").unwrap().to_str().unwrap(),
            format!("{prior}, 10.0.0.1")
        );
        assert_eq!(h.get("x-forwarded-proto").unwrap(), "http");
        assert!(h.get("x-forwarded-host").is_none());
    }

    #[test]
    fn forwarded_headers_append_the_client() {
        let mut h = map(&[("x-forwarded-for", "203.0.113.9")]);
        forwarding(
            &mut h,
            "10.0.0.1".parse().unwrap(),
            true,
            Some(&HeaderValue::from_static("api.example.com")),
            &id(),
        )
        .merge_into(&mut h);
        assert_eq!(h.get("x-forwarded-for").unwrap(), "203.0.113.9, 10.0.0.1");
        assert_eq!(h.get("x-forwarded-proto").unwrap(), "https");
        assert_eq!(h.get("x-forwarded-host").unwrap(), "api.example.com");
    }
}
