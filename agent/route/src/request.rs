//! The request as the matcher sees it, and the parsing of its parts (host, query, cookies).
//!
//! Parsing is lazy and allocation-free in the common case: a query parameter or cookie is only
//! looked for when a condition names it, and a value is only copied when it has to be
//! percent-decoded.

use std::borrow::Cow;

/// The parts of a request that routing looks at, borrowed from the request.
#[derive(Clone, Copy, Debug)]
pub struct RequestView<'a> {
    /// The host, lower-cased, without port and trailing dot: what [`normalize_host`] returns
    /// for the request's authority or `Host` header.
    pub host: &'a str,
    /// The path only, without the query.
    pub path: &'a str,
    /// The raw query string, without the leading `?`.
    pub query: Option<&'a str>,
    /// The method, for `methods` conditions.
    pub method: &'a http::Method,
    /// The request headers, for header conditions and canary rules (cookies included).
    pub headers: &'a http::HeaderMap,
}

/// The host part of an `:authority` or `Host` header value, as routes are matched against it:
/// userinfo and port removed, IPv6 brackets removed (`[::1]:8080` → `::1`), one trailing dot
/// removed (`example.com.` → `example.com`), ASCII lower-cased.
/// Borrows when the host needs no lower-casing (the common case), so most requests pay no
/// allocation for it.
pub fn normalize_host(authority_or_host_header: &str) -> Cow<'_, str> {
    // Byte searches: every request pays for this, and `str`'s pattern machinery costs several
    // times a plain scan of a host this short.
    let text = authority_or_host_header.trim();
    // `user@host` appears only in absolute-form request targets; the host is after the last `@`.
    let text = match text.bytes().rposition(|b| b == b'@') {
        Some(at) => &text[at + 1..],
        None => text,
    };
    let host = match text.strip_prefix('[') {
        // An IPv6 literal: everything up to `]`, whatever follows (the port).
        Some(rest) => rest.split_once(']').map_or(rest, |(inside, _)| inside),
        None => {
            let mut colons = text.bytes().enumerate().filter(|&(_, b)| b == b':');
            match (colons.next(), colons.next()) {
                (Some((colon, _)), None) => &text[..colon],
                // No port, or more than one `:`: an IPv6 address without brackets has no
                // port to cut.
                _ => text,
            }
        }
    };
    let host = host.strip_suffix('.').unwrap_or(host);
    if host.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(host.to_ascii_lowercase())
    } else {
        Cow::Borrowed(host)
    }
}

/// The values of the query parameter `name` in a raw query string, percent-decoded.
///
/// Pairs are separated by `&` and split at the first `=`; a parameter without `=` has the empty
/// value. Names and values are both percent-decoded (`%20` is a space); `+` is kept as it is,
/// since only HTML form encoding gives it a meaning. Malformed escapes are kept literally.
pub(crate) fn query_values<'q>(query: &'q str, name: &str) -> impl Iterator<Item = Cow<'q, [u8]>> {
    query.split('&').filter_map(move |pair| {
        if pair.is_empty() {
            return None;
        }
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        if !percent_decoded(key).eq(name.bytes()) {
            return None;
        }
        Some(if value.contains('%') {
            Cow::Owned(percent_decoded(value).collect())
        } else {
            Cow::Borrowed(value.as_bytes())
        })
    })
}

/// The bytes of `text` with `%XX` escapes decoded; a `%` not followed by two hex digits is
/// kept as it is.
fn percent_decoded(text: &str) -> impl Iterator<Item = u8> + '_ {
    let bytes = text.as_bytes();
    let mut i = 0;
    std::iter::from_fn(move || {
        let byte = *bytes.get(i)?;
        if byte == b'%'
            && let (Some(hi), Some(lo)) = (
                bytes.get(i + 1).and_then(|b| hex_digit(*b)),
                bytes.get(i + 2).and_then(|b| hex_digit(*b)),
            )
        {
            i += 3;
            return Some(hi << 4 | lo);
        }
        i += 1;
        Some(byte)
    })
}

fn hex_digit(byte: u8) -> Option<u8> {
    match byte {
        b'0'..=b'9' => Some(byte - b'0'),
        b'a'..=b'f' => Some(byte - b'a' + 10),
        b'A'..=b'F' => Some(byte - b'A' + 10),
        _ => None,
    }
}

/// The first value of the cookie `name` that is valid UTF-8 (see [`cookie_values`]).
pub fn cookie<'h>(headers: &'h http::HeaderMap, name: &str) -> Option<&'h str> {
    cookie_values(headers, name).find_map(|v| std::str::from_utf8(v).ok())
}

/// The values of the cookie `name` in every `Cookie` header of `headers`.
///
/// Each header is a `;`-separated list of `name=value` pairs (RFC 6265 §4.2.1); whitespace
/// around a pair is ignored, names are case-sensitive, and a value in double quotes is taken
/// without its quotes. Values are not decoded: cookies have no standard encoding.
pub fn cookie_values<'h>(
    headers: &'h http::HeaderMap,
    name: &str,
) -> impl Iterator<Item = &'h [u8]> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .flat_map(|header| header.as_bytes().split(|b| *b == b';'))
        .filter_map(move |pair| {
            let pair = pair.trim_ascii();
            let at = pair.iter().position(|b| *b == b'=')?;
            let (key, value) = (&pair[..at], &pair[at + 1..]);
            if key.trim_ascii() != name.as_bytes() {
                return None;
            }
            let value = value.trim_ascii();
            Some(
                value
                    .strip_prefix(b"\"")
                    .and_then(|v| v.strip_suffix(b"\""))
                    .unwrap_or(value),
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_host_already_normal_is_borrowed() {
        assert!(matches!(
            normalize_host("api.example.com:443"),
            Cow::Borrowed("api.example.com")
        ));
        assert!(matches!(normalize_host("API.example.com"), Cow::Owned(_)));
    }

    #[test]
    fn normalize_host_strips_port_brackets_dot_and_case() {
        assert_eq!(normalize_host("api.example.com"), "api.example.com");
        assert_eq!(normalize_host("API.Example.COM"), "api.example.com");
        assert_eq!(normalize_host("api.example.com:8443"), "api.example.com");
        assert_eq!(normalize_host("api.example.com."), "api.example.com");
        assert_eq!(normalize_host("api.example.com.:80"), "api.example.com");
        assert_eq!(normalize_host("[::1]:8080"), "::1");
        assert_eq!(normalize_host("[2001:DB8::1]"), "2001:db8::1");
        assert_eq!(normalize_host("2001:db8::1"), "2001:db8::1");
        assert_eq!(normalize_host("127.0.0.1:80"), "127.0.0.1");
        assert_eq!(normalize_host("user:pw@Example.com:80"), "example.com");
        assert_eq!(normalize_host("  example.com  "), "example.com");
        assert_eq!(normalize_host(""), "");
    }

    proptest::proptest! {
        /// The byte scans say what the `str` splits they replaced said, on hosts built from
        /// the characters that matter (`@`, `:`, `[`, `]`, `.`, case) and on anything else.
        #[test]
        fn normalize_host_agrees_with_the_str_splitting_version(
            text in "[a-zA-Z0-9@:\\[\\]. ]{0,24}|\\PC{0,16}"
        ) {
            fn by_splits(text: &str) -> String {
                let text = text.trim();
                let text = text.rsplit_once('@').map_or(text, |(_, host)| host);
                let host = match text.strip_prefix('[') {
                    Some(rest) => rest.split_once(']').map_or(rest, |(inside, _)| inside),
                    None => match text.split_once(':') {
                        Some((host, port)) if !port.contains(':') => host,
                        _ => text,
                    },
                };
                host.strip_suffix('.').unwrap_or(host).to_ascii_lowercase()
            }
            proptest::prop_assert_eq!(normalize_host(&text).into_owned(), by_splits(&text));
        }
    }

    fn values(query: &str, name: &str) -> Vec<String> {
        query_values(query, name)
            .map(|v| String::from_utf8_lossy(&v).into_owned())
            .collect()
    }

    #[test]
    fn query_values_split_decode_and_default_to_empty() {
        assert_eq!(values("a=1&b=2&a=3", "a"), ["1", "3"]);
        assert_eq!(values("flag&x=1", "flag"), [""]);
        assert_eq!(values("flag=&x=1", "flag"), [""]);
        assert_eq!(values("q=a%20b%2Fc", "q"), ["a b/c"]);
        assert_eq!(values("q=a+b", "q"), ["a+b"]);
        assert_eq!(values("q=100%&r=%zz", "q"), ["100%"]);
        assert_eq!(values("r=%zz", "r"), ["%zz"]);
        assert_eq!(values("my%20key=v", "my key"), ["v"]);
        assert_eq!(values("x=a=b", "x"), ["a=b"]);
        assert!(values("&&", "a").is_empty());
        assert!(values("ab=1", "a").is_empty());
    }

    #[test]
    fn cookie_values_come_from_every_cookie_header() {
        let mut headers = http::HeaderMap::new();
        headers.append(
            http::header::COOKIE,
            http::HeaderValue::from_static("a=1; canary=green;b=2"),
        );
        headers.append(
            http::header::COOKIE,
            http::HeaderValue::from_static("canary=\"blue\"; Canary=x; flag"),
        );
        let found: Vec<&[u8]> = cookie_values(&headers, "canary").collect();
        assert_eq!(found, [&b"green"[..], &b"blue"[..]]);
        assert_eq!(cookie_values(&headers, "flag").count(), 0);
        assert_eq!(
            cookie_values(&headers, "b").collect::<Vec<_>>(),
            [&b"2"[..]]
        );
    }
}
