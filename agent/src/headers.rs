//! Header hygiene: hop-by-hop removal (RFC 9110 7.6.1) and the forwarding headers.

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};

/// Headers that describe one connection, never forwarded (RFC 9110 7.6.1, plus the legacy
/// `keep-alive` and `proxy-connection` that clients still send).
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
];

pub static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Whether the request asks to switch protocols (WebSocket and any HTTP/1.1 Upgrade).
pub fn is_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
        && connection_tokens(headers).any(|t| t.eq_ignore_ascii_case("upgrade"))
}

/// The items of one comma-separated field value (RFC 9110 5.6.1), trimmed, empty ones
/// skipped. A value that is not visible ASCII has none.
pub fn list_items(value: &HeaderValue) -> impl DoubleEndedIterator<Item = &str> {
    value
        .to_str()
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
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
    // Most messages carry none of them: one pass over the few names present costs less than
    // hashing every hop-by-hop name to remove what is not there.
    if !headers
        .keys()
        .any(|name| name == header::UPGRADE || HOP_BY_HOP.contains(name))
    {
        return;
    }
    // The names `Connection` lists go too. Its values are cloned (a reference count: they
    // share the parsed head's bytes) so the map can change while they are read, and each name
    // is removed by its text, never made into a `HeaderName` (an allocation for a name that
    // is not a standard one, such as `keep-alive`).
    let mut listed = headers.get_all(header::CONNECTION).iter();
    let first = listed.next().cloned();
    let more: Vec<HeaderValue> = listed.cloned().collect();
    for value in first.iter().chain(&more) {
        for token in list_items(value).filter(|t| !(upgrade && t.eq_ignore_ascii_case("upgrade"))) {
            headers.remove(token);
        }
    }
    let upgrade_value = if upgrade {
        headers.get(header::UPGRADE).cloned()
    } else {
        None
    };
    for name in &HOP_BY_HOP {
        headers.remove(name);
    }
    headers.remove(header::UPGRADE);
    if let Some(value) = upgrade_value {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, value);
    }
}

/// Appends the client's address to `X-Forwarded-For` and sets `X-Forwarded-Proto` and
/// `X-Forwarded-Host` (keeping values a previous proxy set for proto and host).
pub fn add_forwarded(
    headers: &mut HeaderMap,
    client_ip: std::net::IpAddr,
    tls: bool,
    host: Option<&HeaderValue>,
) {
    use std::io::Write;
    // Formatted on the stack: the longest prior list that fits is appended to here, and a
    // longer one (many proxies) takes the allocating path.
    let mut buffer = [0u8; 256];
    let mut out = std::io::Cursor::new(&mut buffer[..]);
    let prior = headers
        .get(&X_FORWARDED_FOR)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|p| !p.is_empty());
    let list = |out: &mut dyn Write| match prior {
        Some(prior) => write!(out, "{prior}, {client_ip}"),
        None => write!(out, "{client_ip}"),
    };
    let value = if list(&mut out).is_ok() {
        let len = usize::try_from(out.position()).unwrap_or(0);
        HeaderValue::from_bytes(&buffer[..len])
    } else {
        let mut long = Vec::new();
        let _ = list(&mut long);
        HeaderValue::from_bytes(&long)
    };
    if let Ok(value) = value {
        headers.insert(X_FORWARDED_FOR.clone(), value);
    }
    if !headers.contains_key(&X_FORWARDED_PROTO) {
        headers.insert(
            X_FORWARDED_PROTO.clone(),
            HeaderValue::from_static(if tls { "https" } else { "http" }),
        );
    }
    if let Some(host) = host
        && !headers.contains_key(&X_FORWARDED_HOST)
    {
        headers.insert(X_FORWARDED_HOST.clone(), host.clone());
    }
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
    fn a_forwarded_for_list_too_long_for_the_stack_buffer_still_gets_the_client() {
        let prior = vec!["198.51.100.77"; 40].join(", ");
        let mut h = map(&[("x-forwarded-for", &prior)]);
        add_forwarded(&mut h, "10.0.0.1".parse().unwrap(), false, None);
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
        add_forwarded(
            &mut h,
            "10.0.0.1".parse().unwrap(),
            true,
            Some(&HeaderValue::from_static("api.example.com")),
        );
        assert_eq!(h.get("x-forwarded-for").unwrap(), "203.0.113.9, 10.0.0.1");
        assert_eq!(h.get("x-forwarded-proto").unwrap(), "https");
        assert_eq!(h.get("x-forwarded-host").unwrap(), "api.example.com");
    }
}
