//! What the authentication plugins share: reading a credential from its configured sources,
//! removing it before the request is forwarded, the consumer allow-list, and 401 / 403 answers.

use std::borrow::Cow;

use bytes::Bytes;
use fleetgate_shared::model::TokenSource;
use http::header::{self, HeaderName, HeaderValue};
use http::uri::{PathAndQuery, Uri};
use http::{Response, StatusCode};

use crate::context::{ConsumerEntry, RequestCtx, reject};

/// A plugin's credential sources as the request path reads them: header names parsed once,
/// when the plugin is built, not on every request.
#[derive(Debug, Clone)]
pub struct Sources(Vec<Source>);

#[derive(Debug, Clone)]
enum Source {
    /// `None`: a name that is not a valid header name, which no request can carry.
    Header {
        name: Option<HeaderName>,
        prefix: Option<String>,
    },
    Query {
        name: String,
    },
    Cookie {
        name: String,
    },
}

impl Sources {
    pub fn new(sources: &[TokenSource]) -> Self {
        Self(
            sources
                .iter()
                .map(|source| match source {
                    TokenSource::Header { name, prefix } => Source::Header {
                        name: HeaderName::from_bytes(name.as_bytes()).ok(),
                        prefix: prefix.clone(),
                    },
                    TokenSource::Query { name } => Source::Query { name: name.clone() },
                    TokenSource::Cookie { name } => Source::Cookie { name: name.clone() },
                })
                .collect(),
        )
    }
}

/// The first credential present in `sources`, in their order. A header source with a prefix
/// (`Bearer `) only counts when the value starts with it (compared without regard to case, as
/// HTTP auth schemes are); the prefix is stripped. Query values are percent-decoded (`+` stays
/// `+`: keys are not form-encoded text). Empty values count as absent.
pub fn find<'c>(sources: &Sources, ctx: &'c RequestCtx<'_>) -> Option<Cow<'c, str>> {
    sources.0.iter().find_map(|source| match source {
        Source::Header { name, prefix } => ctx
            .headers
            .get_all(name.as_ref()?)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find_map(|value| {
                let value = value.trim();
                let rest = match prefix {
                    None => value,
                    Some(prefix) => {
                        let scheme = prefix.trim_end();
                        let rest = strip_prefix_ignore_case(value, scheme)?;
                        // `Bearer ` matches `Bearer abc`, not `Bearerabc`.
                        if scheme.len() < prefix.len()
                            && !rest.is_empty()
                            && !rest.starts_with([' ', '\t'])
                        {
                            return None;
                        }
                        rest
                    }
                };
                let rest = rest.trim();
                (!rest.is_empty()).then_some(Cow::Borrowed(rest))
            }),
        Source::Query { name } => ctx
            .query_param(name)
            .map(percent_decode)
            .filter(|v| !v.is_empty()),
        Source::Cookie { name } => ctx
            .cookie(name)
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .map(Cow::Borrowed),
    })
}

/// `value` without `prefix` (ASCII case-insensitive), if it starts with it.
fn strip_prefix_ignore_case<'v>(value: &'v str, prefix: &str) -> Option<&'v str> {
    let head = value.get(..prefix.len())?;
    same_ignoring_case(head.as_bytes(), prefix.as_bytes()).then(|| &value[prefix.len()..])
}

/// Whether `sent` is `written` in any ASCII case, as auth schemes and token prefixes are
/// compared. `written` is the usual spelling, which clients send: it is compared whole first,
/// where a case-blind compare goes byte by byte.
pub fn same_ignoring_case(sent: &[u8], written: &[u8]) -> bool {
    sent == written || sent.eq_ignore_ascii_case(written)
}

/// Decodes `%XX` escapes; an invalid escape or non-UTF-8 result leaves the text as sent.
pub fn percent_decode(text: &str) -> Cow<'_, str> {
    if !text.contains('%') {
        return Cow::Borrowed(text);
    }
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let Some(hex) = bytes.get(i + 1..i + 3)
            && let (Some(hi), Some(lo)) = (hex_digit(hex[0]), hex_digit(hex[1]))
        {
            out.push((hi << 4) | lo);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    match String::from_utf8(out) {
        Ok(decoded) => Cow::Owned(decoded),
        Err(_) => Cow::Borrowed(text),
    }
}

fn hex_digit(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Removes every configured source from the request: the headers, the query parameters (all
/// occurrences; `ctx.uri` is rewritten and the proxy forwards its query) and the cookies.
pub fn strip(sources: &Sources, ctx: &mut RequestCtx<'_>) {
    for source in &sources.0 {
        match source {
            Source::Header { name, .. } => {
                if let Some(name) = name {
                    ctx.headers.remove(name);
                }
            }
            Source::Query { name } => remove_query_param(&mut ctx.uri, name),
            Source::Cookie { name } => remove_cookie(ctx, name),
        }
    }
}

/// Drops every `name=...` (or bare `name`) pair from the URI's query.
pub fn remove_query_param(uri: &mut Uri, name: &str) {
    let Some(query) = uri.query() else {
        return;
    };
    let kept: Vec<&str> = query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .filter(|pair| pair.split_once('=').map_or(*pair, |(k, _)| k) != name)
        .collect();
    let path = uri.path();
    let rebuilt = if kept.is_empty() {
        path.to_owned()
    } else {
        format!("{path}?{}", kept.join("&"))
    };
    let mut parts = std::mem::take(uri).into_parts();
    // Rebuilding from parts of a valid URI cannot fail; if it did, the query is dropped
    // whole rather than forwarding the credential.
    parts.path_and_query = PathAndQuery::try_from(rebuilt)
        .or_else(|_| PathAndQuery::try_from(path_only(&parts.path_and_query)))
        .ok();
    *uri = Uri::from_parts(parts).unwrap_or_else(|_| Uri::from_static("/"));
}

fn path_only(pq: &Option<PathAndQuery>) -> String {
    pq.as_ref().map_or("/", PathAndQuery::path).to_owned()
}

/// Removes cookie `name` from every `Cookie` header, dropping headers left empty.
fn remove_cookie(ctx: &mut RequestCtx<'_>, name: &str) {
    if ctx.cookie(name).is_none() {
        return;
    }
    let kept: Vec<String> = ctx
        .headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .map(str::trim)
        .filter(|pair| !pair.is_empty())
        .filter(|pair| pair.split_once('=').map_or(*pair, |(k, _)| k.trim()) != name)
        .map(str::to_owned)
        .collect();
    ctx.headers.remove(header::COOKIE);
    if !kept.is_empty()
        && let Ok(value) = HeaderValue::from_str(&kept.join("; "))
    {
        ctx.headers.insert(header::COOKIE, value);
    }
}

/// Whether `consumer` may pass a policy whose allow-list is `allow` (empty allows anyone the
/// policy authenticated, consumer or not).
pub fn allowed(allow: &[String], consumer: Option<&ConsumerEntry>) -> bool {
    allow.is_empty() || consumer.is_some_and(|c| allow.contains(&c.name))
}

/// 401 with the JSON error body and a `WWW-Authenticate` challenge (RFC 9110 requires one on
/// every 401).
pub fn unauthorized(
    policy: &str,
    code: &str,
    message: &str,
    challenge: &HeaderValue,
) -> Response<Bytes> {
    let mut response = reject(StatusCode::UNAUTHORIZED, code, message, policy);
    response
        .headers_mut()
        .insert(header::WWW_AUTHENTICATE, challenge.clone());
    response
}

/// 403 for a caller who authenticated but is not on the policy's allow-list.
pub fn forbidden(policy: &str, consumer: Option<&ConsumerEntry>) -> Response<Bytes> {
    let message = match consumer {
        Some(c) => format!("consumer `{}` is not allowed here", c.name),
        None => "the caller is not a known consumer, and this policy admits only listed consumers"
            .to_owned(),
    };
    reject(
        StatusCode::FORBIDDEN,
        "consumer_not_allowed",
        &message,
        policy,
    )
}

/// A challenge header value built from trusted config text; falls back to the bare scheme.
pub fn challenge(scheme: &'static str, realm: &str) -> HeaderValue {
    HeaderValue::from_str(&format!("{scheme} realm=\"{realm}\""))
        .unwrap_or_else(|_| HeaderValue::from_static(scheme))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{HeaderMap, Method};

    fn ctx(uri: &str, headers: &[(&str, &str)]) -> RequestCtx<'static> {
        let mut map = HeaderMap::new();
        for (k, v) in headers {
            map.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        RequestCtx::new(
            Method::GET,
            uri.parse().unwrap(),
            map,
            "127.0.0.1:1".parse().unwrap(),
            false,
        )
    }

    #[test]
    fn the_first_present_source_wins_and_prefixes_are_case_insensitive() {
        let sources = Sources::new(&[
            TokenSource::Header {
                name: "authorization".into(),
                prefix: Some("Bearer ".into()),
            },
            TokenSource::Query { name: "t".into() },
            TokenSource::Cookie { name: "c".into() },
        ]);
        let c = ctx("/p?t=q%2Fv", &[("authorization", "bearer abc")]);
        assert_eq!(find(&sources, &c).as_deref(), Some("abc"));
        let c = ctx("/p?t=q%2Fv", &[("authorization", "Basic zzz")]);
        assert_eq!(find(&sources, &c).as_deref(), Some("q/v"));
        let c = ctx("/p?t=q", &[("authorization", "Bearerabc")]);
        assert_eq!(find(&sources, &c).as_deref(), Some("q"));
        let c = ctx("/p", &[("cookie", "a=1; c=cv")]);
        assert_eq!(find(&sources, &c).as_deref(), Some("cv"));
        assert_eq!(find(&sources, &ctx("/p?t=", &[])), None);
    }

    #[test]
    fn stripping_removes_every_source() {
        let sources = Sources::new(&[
            TokenSource::Header {
                name: "x-api-key".into(),
                prefix: None,
            },
            TokenSource::Query {
                name: "api_key".into(),
            },
            TokenSource::Cookie { name: "k".into() },
        ]);
        let mut c = ctx(
            "/p/q?a=1&api_key=s&b=2&api_key=t",
            &[("x-api-key", "s"), ("cookie", "k=s; other=1")],
        );
        strip(&sources, &mut c);
        assert_eq!(c.uri.to_string(), "/p/q?a=1&b=2");
        assert!(c.headers.get("x-api-key").is_none());
        assert_eq!(c.headers.get("cookie").unwrap(), "other=1");
        let mut c = ctx("http://h.example/p?api_key=s", &[("cookie", "k=s")]);
        strip(&sources, &mut c);
        assert_eq!(c.uri.to_string(), "http://h.example/p");
        assert!(c.headers.get("cookie").is_none());
    }

    #[test]
    fn percent_decoding_leaves_bad_escapes_alone() {
        assert_eq!(percent_decode("a%20b+c"), "a b+c");
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%zz"), "%zz");
        assert_eq!(percent_decode("%ff"), "%ff");
    }
}
