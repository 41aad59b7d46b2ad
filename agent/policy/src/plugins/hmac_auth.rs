//! HMAC request signing. The canonical request and the `Authorization` format are specified
//! in `docs/policies.md` ("hmac-auth request signing"); [`sign`] builds both, so clients,
//! tests and the verifier share one definition.

use std::borrow::Cow;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use fleetgate_shared::constant_time;
use fleetgate_shared::model::{HmacAlgorithm, HmacAuth as Config, Phase};
use hmac::{Hmac, Mac};
use http::header::{self, HeaderValue};
use http::{HeaderMap, Method, Response, StatusCode, Uri};
use parking_lot::Mutex;
use sha2::{Digest, Sha256, Sha384, Sha512};
use smallvec::SmallVec;

use super::credentials;
use super::hmac_sha256::HmacSha256;
use crate::context::{BodyPrefix, ConsumerEntry, RequestCtx, Verdict, epoch_time, reject};
use crate::plugin::AnswersAtOnce;
use crate::set::Consumers;
use crate::state::PolicyState;

/// The date header carrying unix seconds. Preferred over `date` when both are signed.
pub const DATE_HEADER: &str = "x-fleetgate-date";
/// The header carrying the hex SHA-256 of the body.
pub const CONTENT_SHA256_HEADER: &str = "x-fleetgate-content-sha256";

/// Bodies up to this size are digested. hmac-auth with `validate_body` answers a larger body
/// with 413: it cannot vouch for bytes it has not seen, and buffering more per request would
/// let signed-request endpoints pin memory. 1 MiB fits webhooks and API payloads.
pub const BODY_LIMIT: u64 = 1024 * 1024;
/// SHA-256 of no bytes in hex: the digest every bodiless signed request (GET, HEAD) carries,
/// compared as text (either case) rather than decoded and recomputed per request.
const EMPTY_BODY_SHA256_HEX: &str =
    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
/// Longest accepted nonce; 16 random bytes in base64 are 24 characters.
pub const MAX_NONCE_LEN: usize = 128;
/// Longest accepted key id.
const MAX_KEY_ID_LEN: usize = 256;

/// Remembered nonces per policy. Each takes ~40 bytes, so the cap is ~40 MiB at worst; it
/// holds 1M requests per replay window (2 × clock_skew), 1,700 signed requests a second at
/// the default 5-minute skew. When it is full of live nonces new requests are refused (503)
/// rather than forgetting a nonce that could then be replayed.
const NONCE_CAPACITY: usize = 1 << 20;
const NONCE_SHARDS: usize = 16;
/// How often a shard drops expired nonces even when not full, in seconds.
const NONCE_PURGE_EVERY: u64 = 30;

/// The `Authorization` scheme for an algorithm.
pub fn scheme(algorithm: HmacAlgorithm) -> &'static str {
    match algorithm {
        HmacAlgorithm::HmacSha256 => "FG-HMAC-SHA256",
        HmacAlgorithm::HmacSha384 => "FG-HMAC-SHA384",
        HmacAlgorithm::HmacSha512 => "FG-HMAC-SHA512",
    }
}

/// The algorithm a scheme names, in any case.
fn algorithm_of_scheme(scheme: &[u8]) -> Option<HmacAlgorithm> {
    [
        HmacAlgorithm::HmacSha256,
        HmacAlgorithm::HmacSha384,
        HmacAlgorithm::HmacSha512,
    ]
    .into_iter()
    .find(|a| credentials::same_ignoring_case(scheme, self::scheme(*a).as_bytes()))
}

/// A secret keyed for one algorithm. Keying hashes the padded secret once (at config load):
/// a request hashes only its canonical request and the inner digest, all in Rust, with the
/// CPU's SHA instructions where it has them. SHA-256, the usual one, over the compression
/// function itself ([`HmacSha256`]); the others clone the `hmac` crate's keyed state.
#[derive(Clone)]
enum MacKey {
    Sha256(HmacSha256),
    Sha384(Hmac<Sha384>),
    Sha512(Hmac<Sha512>),
}

impl MacKey {
    fn new(algorithm: HmacAlgorithm, secret: &[u8]) -> Result<Self, String> {
        fn keyed<M: Mac + hmac::digest::KeyInit>(secret: &[u8]) -> Result<M, String> {
            // HMAC takes a key of any length (a long one is hashed first).
            <M as hmac::digest::KeyInit>::new_from_slice(secret)
                .map_err(|_| "the secret cannot key HMAC".to_owned())
        }
        Ok(match algorithm {
            HmacAlgorithm::HmacSha256 => Self::Sha256(HmacSha256::new(secret)),
            HmacAlgorithm::HmacSha384 => Self::Sha384(keyed(secret)?),
            HmacAlgorithm::HmacSha512 => Self::Sha512(keyed(secret)?),
        })
    }

    /// The tag of `message`.
    fn sign(&self, message: &[u8]) -> Vec<u8> {
        fn tag<M: Mac + Clone>(key: &M, message: &[u8]) -> Vec<u8> {
            key.clone()
                .chain_update(message)
                .finalize()
                .into_bytes()
                .to_vec()
        }
        match self {
            Self::Sha256(key) => key.tag(message).to_vec(),
            Self::Sha384(key) => tag(key, message),
            Self::Sha512(key) => tag(key, message),
        }
    }

    /// Whether `tag` is the tag of `message`, compared in constant time
    /// ([`constant_time::eq`]: `Mac::verify_slice`'s comparison, with a barrier per byte, took
    /// ~220 instructions).
    fn verify(&self, message: &[u8], tag: &[u8]) -> bool {
        fn check<M: Mac + Clone>(key: &M, message: &[u8], tag: &[u8]) -> bool {
            constant_time::eq(
                &key.clone().chain_update(message).finalize().into_bytes(),
                tag,
            )
        }
        match self {
            Self::Sha256(key) => constant_time::eq(&key.tag(message), tag),
            Self::Sha384(key) => check(key, message, tag),
            Self::Sha512(key) => check(key, message, tag),
        }
    }
}

/// The lower-case hex SHA-256 of `body`: the value of [`CONTENT_SHA256_HEADER`].
pub fn body_digest(body: &[u8]) -> String {
    hex::encode(Sha256::digest(body))
}

/// A signing key as a client holds it.
#[derive(Clone, Copy)]
pub struct Credentials<'a> {
    pub algorithm: HmacAlgorithm,
    pub key_id: &'a str,
    pub secret: &'a [u8],
}

impl std::fmt::Debug for Credentials<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("algorithm", &self.algorithm)
            .field("key_id", &self.key_id)
            .finish_non_exhaustive()
    }
}

/// Signs a request: returns the `Authorization` header value. `headers` must already hold
/// every header in `signed_headers` (the date header, and the body digest when the policy
/// validates bodies); `nonce` may be empty when the policy does not require one.
pub fn sign(
    credentials: &Credentials<'_>,
    nonce: &str,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    signed_headers: &[&str],
) -> Result<String, String> {
    check_token("key id", credentials.key_id, MAX_KEY_ID_LEN)?;
    if !nonce.is_empty() {
        check_token("nonce", nonce, MAX_NONCE_LEN)?;
    }
    let list = signed_headers
        .iter()
        .map(|n| n.trim())
        .collect::<Vec<_>>()
        .join(";");
    let names = SignedNames::parse(list.as_bytes())?;
    let scheme = scheme(credentials.algorithm);
    let mut canonical = Vec::with_capacity(256);
    canonical_request(
        &mut canonical,
        scheme,
        credentials.key_id.as_bytes(),
        nonce.as_bytes(),
        method,
        uri,
        &Fields::of(headers),
        &names,
    )?;
    let tag = MacKey::new(credentials.algorithm, credentials.secret)?.sign(&canonical);
    let nonce = if nonce.is_empty() {
        String::new()
    } else {
        format!(", nonce=\"{nonce}\"")
    };
    Ok(format!(
        "{scheme} keyId=\"{}\", signedHeaders=\"{}\"{nonce}, signature=\"{}\"",
        credentials.key_id,
        list.to_ascii_lowercase(),
        STANDARD.encode(tag)
    ))
}

/// Key ids and nonces: visible ASCII without the characters that delimit the header.
fn check_token(what: &str, value: &str, max: usize) -> Result<(), String> {
    token(what, value.as_bytes(), max).map(drop)
}

/// The text of an error in what a client sent, formatted out of line: a valid request never
/// reaches it, and the accepting path is laid out without it in between.
#[cold]
#[inline(never)]
fn error(message: std::fmt::Arguments<'_>) -> String {
    message.to_string()
}

/// `value` if it is a key id or nonce ([`check_token`]). Checked with a table lookup and no
/// branch per byte: key ids and nonces are read on every signed request.
fn token<'a>(what: &str, value: &'a [u8], max: usize) -> Result<&'a [u8], String> {
    if value.is_empty() || value.len() > max {
        return Err(error(format_args!(
            "the {what} must be 1 to {max} characters"
        )));
    }
    let classes = value
        .iter()
        .fold(TOKEN_BYTE, |all, &b| all & BYTE_CLASSES[usize::from(b)]);
    if classes & TOKEN_BYTE == 0 {
        return Err(error(format_args!(
            "the {what} may hold visible ASCII except `\"`, `,`, `;` and `\\`"
        )));
    }
    Ok(value)
}

/// Appends the string that is signed to `out`. One item per line, no trailing newline:
/// scheme, key id, nonce (or empty), method, path (as sent), canonical query, then one
/// `name:value` line per signed header (name lower-case) in `signedHeaders` order. The lines
/// name the signed headers themselves, so the list is signed without a line of its own (a
/// field name holds no `:` and a value no line break: each line reads one way). Built whole
/// and hashed in one call: feeding the HMAC piece by piece costs more than the buffer.
#[allow(clippy::too_many_arguments)]
fn canonical_request(
    out: &mut Vec<u8>,
    scheme: &str,
    key_id: &[u8],
    nonce: &[u8],
    method: &Method,
    uri: &Uri,
    fields: &Fields,
    names: &SignedNames,
) -> Result<(), String> {
    // Single bytes are pushed: a copy of one byte costs a call.
    let path = uri.path().as_bytes();
    for part in [
        scheme.as_bytes(),
        key_id,
        nonce,
        method.as_str().as_bytes(),
        path,
    ] {
        out.extend_from_slice(part);
        out.push(b'\n');
    }
    canonical_query(out, uri.query());
    for (name, known) in names.with_known() {
        out.push(b'\n');
        out.extend_from_slice(name);
        out.push(b':');
        header_value(out, fields, uri, name, known)?;
    }
    Ok(())
}

/// The names of a `signedHeaders` list, lower-cased and trimmed, in the order they were
/// listed: split once per request, since the check reads the list several times (required
/// headers, the date, the canonical request). The list is scanned once for the bytes it holds
/// ([`BYTE_CLASSES`]): a list without capitals, as clients write it, is borrowed as sent.
#[derive(Debug)]
struct SignedNames<'a> {
    /// The list, lower-cased (a copy only when it had capitals): ASCII.
    list: Cow<'a, [u8]>,
    /// Shared with [`RECENT_HEADS`] when the list is remembered: a count, not a copy.
    layout: Rc<Layout>,
}

/// Where a list's names are, and what parsing found about them.
#[derive(Debug, Default)]
struct Layout {
    /// Each name's bytes in the list.
    spans: NameSpans,
    /// The [`Known`] fields listed, a [`Known::bit`] each.
    known: u8,
}

/// How many heads [`RecentHeads`] keeps per thread.
const RECENT_HEAD_COUNT: usize = 4;

/// The heads of the `Authorization` values in [`sign`]'s layout this thread read last (scheme,
/// key id and `signedHeaders`, up to the list's closing quote; lists borrowed as sent, i.e.
/// lower-case), with what reading them found. A client sends the same head on each of its
/// requests (only its nonce and signature change), so a request's head is nearly always one of
/// these and reading it is a compare; reading a head is a function of its bytes alone, so a
/// value that starts with a remembered head has its algorithm, key id and names. Four,
/// replaced in turn: clients on one thread each keep theirs.
#[derive(Default)]
struct RecentHeads {
    entries: [RecentHead; RECENT_HEAD_COUNT],
    next: usize,
}

/// One head as sent and what reading it found: spans in `head`.
#[derive(Default)]
struct RecentHead {
    head: Vec<u8>,
    algorithm: Option<HmacAlgorithm>,
    key_id: (u32, u32),
    list: (u32, u32),
    layout: Rc<Layout>,
}

/// What a remembered head says of a value that starts with it.
struct KnownHead {
    algorithm: HmacAlgorithm,
    key_id: (usize, usize),
    list: (usize, usize),
    layout: Rc<Layout>,
    len: usize,
}

impl RecentHeads {
    fn find(&self, value: &[u8]) -> Option<KnownHead> {
        let recent = self
            .entries
            .iter()
            .find(|recent| !recent.head.is_empty() && value.starts_with(&recent.head))?;
        let span = |(start, end): (u32, u32)| (start as usize, end as usize);
        Some(KnownHead {
            algorithm: recent.algorithm?,
            key_id: span(recent.key_id),
            list: span(recent.list),
            layout: Rc::clone(&recent.layout),
            len: recent.head.len(),
        })
    }

    /// Remembers `value[..len]`, whose key id and list are `auth`'s (slices of `value`).
    fn remember(&mut self, value: &[u8], len: usize, auth: &Authorization) {
        // Where a slice of `value` is in it (`auth` was read from `value`).
        let span = |part: &[u8]| {
            let start = (part.as_ptr() as usize).wrapping_sub(value.as_ptr() as usize);
            debug_assert!(start + part.len() <= len);
            (start as u32, (start + part.len()) as u32)
        };
        let Cow::Borrowed(list) = auth.signed.list else {
            return;
        };
        let entry = &mut self.entries[self.next];
        entry.head.clear();
        entry.head.extend_from_slice(&value[..len]);
        entry.algorithm = Some(auth.algorithm);
        entry.key_id = span(auth.key_id);
        entry.list = span(list);
        entry.layout = Rc::clone(&auth.signed.layout);
        self.next = (self.next + 1) % RECENT_HEAD_COUNT;
    }
}

thread_local!(static RECENT_HEADS: std::cell::RefCell<RecentHeads> =
    std::cell::RefCell::new(RecentHeads::default()));

/// Where each name of a `signedHeaders` list is in it. Up to 8 inline, no allocation.
type NameSpans = SmallVec<[NameSpan; 8]>;

/// One name of a list: its bytes' start and end, and which [`Known`] field it is, if any.
#[derive(Clone, Copy, Debug)]
struct NameSpan {
    start: u32,
    end: u32,
    known: Option<Known>,
}

/// What a byte can be in a `signedHeaders` list: a flag per class, or-ed over the list.
const NAME_BYTE: u8 = 1;
const CAPITAL: u8 = 2;
const BLANK: u8 = 4;
const OTHER: u8 = 8;
/// Apart from the list's classes: a byte a key id or nonce may hold ([`token`]).
const TOKEN_BYTE: u8 = 16;

/// The class of each byte in a `signedHeaders` list: RFC 9110's `tchar` (capitals flagged as
/// well), a blank (space, tab), the `;` separator (no flag), anything else; and whether a key
/// id or nonce may hold it. A header value is far shorter than 4 GiB (hyper bounds the whole
/// head), so a name's bytes fit `u32` spans.
static BYTE_CLASSES: [u8; 256] = {
    let mut table = [OTHER; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        table[b] = if c.is_ascii_uppercase() {
            NAME_BYTE | CAPITAL
        } else if c.is_ascii_alphanumeric()
            || matches!(
                c,
                b'!' | b'#'
                    | b'$'
                    | b'%'
                    | b'&'
                    | b'\''
                    | b'*'
                    | b'+'
                    | b'-'
                    | b'.'
                    | b'^'
                    | b'_'
                    | b'`'
                    | b'|'
                    | b'~'
            )
        {
            NAME_BYTE
        } else if c == b' ' || c == b'\t' {
            BLANK
        } else if c == b';' {
            0
        } else {
            OTHER
        };
        if c > b' ' && c < 0x7f && !matches!(c, b'"' | b',' | b';' | b'\\') {
            table[b] |= TOKEN_BYTE;
        }
        b += 1;
    }
    table
};

impl<'a> SignedNames<'a> {
    /// At most [`MAX_SIGNED_HEADERS`] field names, none listed twice (compared without
    /// regard to case). An empty list has no names.
    fn parse(list: &'a [u8]) -> Result<Self, String> {
        let list = list.trim_ascii();
        // The list clients send: lower-case letters, digits and `-` between `;`s, checked
        // without a branch per byte. Any other list has its bytes classed one by one.
        let usual = list.iter().fold(true, |ok, &b| {
            ok & (b.is_ascii_lowercase() | b.is_ascii_digit() | (b == b'-') | (b == b';'))
        });
        let seen = if usual {
            NAME_BYTE
        } else {
            list.iter()
                .fold(0u8, |seen, &b| seen | BYTE_CLASSES[usize::from(b)])
        };
        let mut spans = SmallVec::<[(u32, u32); 8]>::new();
        if !list.is_empty() {
            let ends = memchr::memchr_iter(b';', list).chain([list.len()]);
            let mut start = 0;
            for end in ends {
                if spans.len() == MAX_SIGNED_HEADERS {
                    return Err(error(format_args!(
                        "signedHeaders lists more than {MAX_SIGNED_HEADERS} headers"
                    )));
                }
                spans.push((start as u32, end as u32));
                start = end + 1;
            }
        }
        // Without blanks or other bytes in the list, a piece is a name unless empty.
        let plain = seen & (BLANK | OTHER) == 0;
        for span in &mut spans {
            let piece = &list[span.0 as usize..span.1 as usize];
            let (name, valid) = if plain {
                (piece, !piece.is_empty())
            } else {
                let lead = piece.len() - piece.trim_ascii_start().len();
                let name = piece[lead..].trim_ascii_end();
                *span = (span.0 + lead as u32, span.0 + (lead + name.len()) as u32);
                (name, is_token(name))
            };
            if !valid {
                return Err(error(format_args!(
                    "`{}` in signedHeaders is not a header name",
                    String::from_utf8_lossy(name)
                )));
            }
        }
        let list = if seen & CAPITAL == 0 {
            Cow::Borrowed(list)
        } else {
            Cow::Owned(list.to_ascii_lowercase())
        };
        let name = |&(start, end): &(u32, u32)| &list[start as usize..end as usize];
        for (i, span) in spans.iter().enumerate() {
            if spans[..i].iter().any(|earlier| name(earlier) == name(span)) {
                return Err(error(format_args!(
                    "`{}` is listed twice in signedHeaders",
                    String::from_utf8_lossy(name(span))
                )));
            }
        }
        let spans: NameSpans = spans
            .iter()
            .map(|span| NameSpan {
                start: span.0,
                end: span.1,
                known: Known::named(name(span)),
            })
            .collect();
        let known = spans
            .iter()
            .filter_map(|span| span.known)
            .fold(0, |known, k| known | k.bit());
        Ok(SignedNames {
            list,
            layout: Rc::new(Layout { spans, known }),
        })
    }

    /// The names, lower-case.
    fn iter(&self) -> impl Iterator<Item = &[u8]> {
        self.with_known().map(|(name, _)| name)
    }

    /// The names, lower-case, each with the [`Known`] field it is.
    fn with_known(&self) -> impl Iterator<Item = (&[u8], Option<Known>)> {
        self.layout.spans.iter().map(|span| {
            (
                &self.list[span.start as usize..span.end as usize],
                span.known,
            )
        })
    }

    /// Whether `name`, in lower case, is listed.
    fn contains(&self, name: &str) -> bool {
        debug_assert!(!name.bytes().any(|b| b.is_ascii_uppercase()));
        self.iter().any(|n| n == name.as_bytes())
    }
}

/// Whether `name` is a field name (RFC 9110 5.1: a token), as `HeaderName` would accept it
/// in any case, without building one.
fn is_token(name: &[u8]) -> bool {
    !name.is_empty()
        && name
            .iter()
            .all(|&b| BYTE_CLASSES[usize::from(b)] & NAME_BYTE != 0)
}

/// `s` split at each `sep`, like `str::split` with a char, which sets up a general searcher
/// per piece: the verifier splits a handful of short lists per request.
fn split_on(s: &[u8], sep: u8) -> impl Iterator<Item = &[u8]> {
    let mut rest = Some(s);
    std::iter::from_fn(move || {
        let r = rest?;
        match memchr::memchr(sep, r) {
            Some(i) => {
                rest = Some(&r[i + 1..]);
                Some(&r[..i])
            }
            None => {
                rest = None;
                Some(r)
            }
        }
    })
}

/// `s` split at its first `sep`, like `str::split_once` with a char.
fn split_once_on(s: &[u8], sep: u8) -> Option<(&[u8], &[u8])> {
    let i = memchr::memchr(sep, s)?;
    Some((&s[..i], &s[i + 1..]))
}

/// Query pairs split on `&` (empty pairs dropped), each split at its first `=` (a bare name
/// gets an empty value), sorted by name then value as bytes, joined as `name=value` with `&`.
/// Nothing is decoded or re-encoded.
fn canonical_query(out: &mut Vec<u8>, query: Option<&str>) {
    let Some(query) = query else {
        return;
    };
    let mut pairs: Vec<(&[u8], &[u8])> = split_on(query.as_bytes(), b'&')
        .filter(|p| !p.is_empty())
        .map(|p| split_once_on(p, b'=').unwrap_or((p, b"")))
        .collect();
    pairs.sort_unstable();
    for (i, (name, value)) in pairs.iter().enumerate() {
        if i > 0 {
            out.push(b'&');
        }
        out.extend_from_slice(name);
        out.push(b'=');
        out.extend_from_slice(value);
    }
}

/// Every value of header `name` (the [`Known`] field `known`), trimmed, joined with `,`.
/// `host` falls back to the URI's authority (HTTP/2 requests carry `:authority` instead of a
/// Host header).
fn header_value(
    out: &mut Vec<u8>,
    fields: &Fields,
    uri: &Uri,
    name: &[u8],
    known: Option<Known>,
) -> Result<(), String> {
    let shown = || String::from_utf8_lossy(name);
    let not_visible = || {
        error(format_args!(
            "signed header `{}` is not visible ASCII",
            shown()
        ))
    };
    // `host` is the host the gateway routes on: the target's authority when the request has
    // one (HTTP/2's `:authority`, an HTTP/1.1 absolute-form target, whose Host header a server
    // ignores), else the Host header. Signing a Host header the gateway does not route on
    // would let a signed request be replayed to another host behind the same policy.
    if known == Some(Known::Host)
        && let Some(authority) = uri.authority()
    {
        out.extend_from_slice(authority.as_str().as_bytes());
        return Ok(());
    }
    // A field sent once that the walk over the request read: its text is at hand. Any other
    // (sent twice, not sent, or not one the walk reads) is looked up in the map; a signed name
    // is a token, so ASCII.
    if let Some(only) = known.and_then(|known| fields.only_text(known)) {
        out.extend_from_slice(only.map_err(|()| not_visible())?);
        return Ok(());
    }
    let name_text = std::str::from_utf8(name).unwrap_or_default();
    let mut values = fields.headers.get_all(name_text).iter().peekable();
    if values.peek().is_none() {
        return Err(error(format_args!(
            "signed header `{}` is not in the request",
            shown()
        )));
    }
    for (i, value) in values.enumerate() {
        let text = visible(value).ok_or_else(not_visible)?;
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(text.trim_ascii());
    }
    Ok(())
}

/// The fields the verifier reads by name besides `Authorization`: the ones clients sign and
/// the ones the checks read. Each has a slot in [`Fields`], filled by one walk over the
/// request's fields.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Known {
    Host,
    Date,
    FleetgateDate,
    ContentSha256,
    ContentLength,
}

impl Known {
    const ALL: [Known; 5] = [
        Known::Host,
        Known::Date,
        Known::FleetgateDate,
        Known::ContentSha256,
        Known::ContentLength,
    ];

    fn name(self) -> &'static str {
        match self {
            Known::Host => "host",
            Known::Date => "date",
            Known::FleetgateDate => DATE_HEADER,
            Known::ContentSha256 => CONTENT_SHA256_HEADER,
            Known::ContentLength => "content-length",
        }
    }

    /// The one named `name` (lower-case).
    fn named(name: &[u8]) -> Option<Known> {
        Known::ALL.into_iter().find(|k| k.name().as_bytes() == name)
    }

    /// This name's flag in a set of names ([`Layout::known`]).
    fn bit(self) -> u8 {
        1 << self as u8
    }
}

/// A request's fields as the verifier reads them: the first `Authorization` value with an
/// `FG-HMAC-` scheme and the first value of each [`Known`] field, found in one walk over the
/// map; any other field (or a known one sent twice) is looked up in the map
/// ([`header_value`]). Comparing a request's dozen names costs less than hashing each
/// looked-up name, which `HeaderMap::get` does per call.
struct Fields<'a> {
    headers: &'a HeaderMap,
    authorization: Option<&'a HeaderValue>,
    first: [Option<&'a HeaderValue>; Known::ALL.len()],
    /// Each first value as text ([`visible`], trimmed): read once, though the checks and the
    /// canonical request both read the dates and the body digest.
    texts: [Option<&'a [u8]>; Known::ALL.len()],
    /// The [`Known`] fields sent more than once.
    repeated: u8,
}

impl<'a> Fields<'a> {
    fn of(headers: &'a HeaderMap) -> Self {
        let mut fields = Fields {
            headers,
            authorization: None,
            first: [None; Known::ALL.len()],
            texts: [None; Known::ALL.len()],
            repeated: 0,
        };
        for (name, value) in headers {
            // Standard names compare as a tag; the two of this scheme as bytes.
            let known = if name == header::AUTHORIZATION {
                if fields.authorization.is_none() && is_hmac_authorization(value) {
                    fields.authorization = Some(value);
                }
                continue;
            } else if name == header::HOST {
                Known::Host
            } else if name == header::DATE {
                Known::Date
            } else if name == header::CONTENT_LENGTH {
                Known::ContentLength
            } else {
                match name.as_str() {
                    DATE_HEADER => Known::FleetgateDate,
                    CONTENT_SHA256_HEADER => Known::ContentSha256,
                    _ => continue,
                }
            };
            let slot = &mut fields.first[known as usize];
            if slot.is_none() {
                *slot = Some(value);
                fields.texts[known as usize] = visible(value).map(<[u8]>::trim_ascii);
            } else {
                fields.repeated |= known.bit();
            }
        }
        fields
    }

    /// The first value of `known`, if visible ASCII, without surrounding whitespace.
    fn text(&self, known: Known) -> Option<&'a [u8]> {
        self.texts[known as usize]
    }

    /// The one value of `known`, as [`Self::text`] has it: `None` unless the field was sent
    /// exactly once; then `Err` if it is not visible ASCII.
    fn only_text(&self, known: Known) -> Option<Result<&'a [u8], ()>> {
        if self.repeated & known.bit() != 0 {
            return None;
        }
        self.first[known as usize].map(|_| self.texts[known as usize].ok_or(()))
    }
}

/// Whether an `Authorization` value has an `FG-HMAC-` scheme (in any case).
fn is_hmac_authorization(value: &HeaderValue) -> bool {
    value
        .as_bytes()
        .trim_ascii_start()
        .get(..8)
        .is_some_and(|s| credentials::same_ignoring_case(s, b"FG-HMAC-"))
}

/// The value's bytes if they are tab and visible ASCII, what `HeaderValue::to_str` accepts.
/// A `HeaderValue` holds no control byte but tab and no DEL (its constructors refuse them),
/// so that is a value without bytes past ASCII: checked a word at a time, where `to_str`'s
/// byte-at-a-time loop with an exit per byte cost more than the rest of parsing a signature.
fn visible(value: &HeaderValue) -> Option<&[u8]> {
    let bytes = value.as_bytes();
    debug_assert!(
        bytes
            .iter()
            .all(|&b| b >= 0x80 || b == b'\t' || (0x20..0x7f).contains(&b))
    );
    bytes.is_ascii().then_some(bytes)
}

/// Decimal digits (at least one) as a number; `None` for anything else or an overflow.
fn decimal(digits: &[u8]) -> Option<u64> {
    /// Nineteen digits are below 2^64, so they are read without an overflow check per digit
    /// and with no exit but at the end: dates and lengths are read on every signed request.
    const SAFE_DIGITS: usize = 19;
    if digits.is_empty() {
        return None;
    }
    if digits.len() > SAFE_DIGITS {
        return digits.iter().try_fold(0u64, |n, &d| {
            d.is_ascii_digit()
                .then(|| n.checked_mul(10)?.checked_add(u64::from(d - b'0')))?
        });
    }
    let (n, all_digits) = digits.iter().fold((0u64, true), |(n, all_digits), &d| {
        let digit = d.wrapping_sub(b'0');
        // Wrapping: a non-digit byte can carry the sum past 2^64, and the sum is then unused.
        (
            n.wrapping_mul(10).wrapping_add(u64::from(digit)),
            all_digits & (digit <= 9),
        )
    });
    all_digits.then_some(n)
}

/// Most headers one signature may cover. Far above what a client signs (host, a date, the
/// body digest and a few more), and it bounds the duplicate check below.
pub const MAX_SIGNED_HEADERS: usize = 64;

/// Longest signature: the tag of HMAC-SHA512.
const MAX_TAG_LEN: usize = 64;

/// A parsed `Authorization: FG-HMAC-<alg> keyId=..., signedHeaders=..., nonce=..., signature=...`,
/// borrowing from the header value.
#[derive(Debug)]
struct Authorization<'a> {
    algorithm: HmacAlgorithm,
    /// Visible ASCII ([`token`]).
    key_id: &'a [u8],
    signed: SignedNames<'a>,
    /// Visible ASCII ([`token`]).
    nonce: Option<&'a [u8]>,
    signature: [u8; MAX_TAG_LEN],
    signature_len: usize,
}

impl Authorization<'_> {
    fn signs(&self, name: &str) -> bool {
        self.signed.contains(name)
    }

    /// [`Self::signs`] for a [`Known`] field: a bit test.
    fn signs_known(&self, known: Known) -> bool {
        self.signed.layout.known & known.bit() != 0
    }

    fn signature(&self) -> &[u8] {
        &self.signature[..self.signature_len]
    }
}

/// The raw values of an `Authorization` header's parameters, quotes removed, not yet checked.
#[derive(Debug, Default)]
struct Params<'a> {
    key_id: Option<&'a [u8]>,
    signed: Option<&'a [u8]>,
    nonce: Option<&'a [u8]>,
    signature: Option<&'a [u8]>,
}

/// Parses the header value. Read as bytes: what the verifier keeps (key id, nonce, names,
/// signature) is checked for its own characters, so the whole value is not validated first.
fn parse_authorization<T: AsRef<[u8]> + ?Sized>(value: &T) -> Result<Authorization<'_>, String> {
    let value = value.as_ref().trim_ascii();
    // A head this thread read before: only the nonce and signature after it are read. Any
    // other outcome, a refusal included, is left to the reading below.
    if let Some(head) = RECENT_HEADS.with_borrow(|heads| heads.find(value))
        && let Some((nonce, signature)) = usual_tail(&value[head.len..])
        && let Ok(nonce) = checked_nonce(nonce)
        && let Ok(auth) = checked_tail(
            head.algorithm,
            &value[head.key_id.0..head.key_id.1],
            SignedNames {
                list: Cow::Borrowed(&value[head.list.0..head.list.1]),
                layout: head.layout,
            },
            nonce,
            Some(signature),
        )
    {
        return Ok(auth);
    }
    let (scheme, params) = split_once_on(value, b' ').ok_or("no parameters after the scheme")?;
    let algorithm = algorithm_of_scheme(scheme).ok_or("unknown scheme")?;
    // The layout `sign` writes is read without splitting the list; what it yields is kept
    // only if every value passes its check, and then the general reading yields the same
    // (checked values hold no `,` or `"`, so the list splits at the same places). Anything
    // else, a refusal included, is read the general way, so errors name what that finds.
    if let Some((usual, head_len)) = usual_params(params)
        && let Ok(auth) = checked(algorithm, usual)
    {
        let head_len = value.len() - params.len() + head_len;
        RECENT_HEADS.with_borrow_mut(|heads| heads.remember(value, head_len, &auth));
        return Ok(auth);
    }
    checked(algorithm, general_params(params)?)
}

/// The parameters of the layout [`sign`] writes: `keyId="..", signedHeaders=".."`, an
/// optional `, nonce=".."`, then `, signature=".."` at the end; and how long the head is (up to
/// the list's closing quote). `None` for any other layout.
fn usual_params(params: &[u8]) -> Option<(Params<'_>, usize)> {
    let (key_id, rest) = split_once_on(params.strip_prefix(b"keyId=\"")?, b'"')?;
    let (signed, rest) = split_once_on(rest.strip_prefix(b", signedHeaders=\"")?, b'"')?;
    let head_len = params.len() - rest.len();
    let (nonce, signature) = usual_tail(rest)?;
    Some((
        Params {
            key_id: Some(key_id),
            signed: Some(signed),
            nonce,
            signature: Some(signature),
        },
        head_len,
    ))
}

/// What follows the head in [`sign`]'s layout: an optional `, nonce=".."`, then
/// `, signature=".."` at the end.
fn usual_tail(rest: &[u8]) -> Option<(Option<&[u8]>, &[u8])> {
    let (nonce, rest) = match rest.strip_prefix(b", nonce=\"") {
        Some(rest) => split_once_on(rest, b'"').map(|(nonce, rest)| (Some(nonce), rest))?,
        None => (None, rest),
    };
    let signature = rest.strip_prefix(b", signature=\"")?.strip_suffix(b"\"")?;
    Some((nonce, signature))
}

/// The parameters read as the format is written: `name=value` pairs split at `,`, each
/// trimmed, a value's surrounding quotes removed. Unknown names are ignored so the format
/// can grow; a known name given twice is an error.
fn general_params(params: &[u8]) -> Result<Params<'_>, String> {
    let lossy = String::from_utf8_lossy;
    let mut found = Params::default();
    for param in split_on(params, b',') {
        let param = param.trim_ascii();
        let (name, raw) = split_once_on(param, b'=')
            .ok_or_else(|| error(format_args!("`{}` is not name=value", lossy(param))))?;
        let value = raw
            .strip_prefix(b"\"")
            .and_then(|v| v.strip_suffix(b"\""))
            .unwrap_or(raw);
        let name = name.trim_ascii();
        let slot = match name {
            b"keyId" => &mut found.key_id,
            b"signedHeaders" => &mut found.signed,
            b"nonce" => &mut found.nonce,
            b"signature" => &mut found.signature,
            _ => continue,
        };
        if slot.replace(value).is_some() {
            return Err(error(format_args!("`{}` is given twice", lossy(name))));
        }
    }
    Ok(found)
}

/// The parameters checked: a key id, the signed names, an optional nonce and a tag.
fn checked(algorithm: HmacAlgorithm, params: Params<'_>) -> Result<Authorization<'_>, String> {
    let key_id = token(
        "key id",
        params.key_id.ok_or("keyId is missing")?,
        MAX_KEY_ID_LEN,
    )?;
    let nonce = checked_nonce(params.nonce)?;
    let signed = SignedNames::parse(params.signed.ok_or("signedHeaders is missing")?)?;
    checked_tail(algorithm, key_id, signed, nonce, params.signature)
}

/// A nonce, if one was sent, checked.
fn checked_nonce(nonce: Option<&[u8]>) -> Result<Option<&[u8]>, String> {
    nonce
        .map(|nonce| token("nonce", nonce, MAX_NONCE_LEN))
        .transpose()
}

/// [`checked`] once the key id, nonce and names are: the tag.
fn checked_tail<'a>(
    algorithm: HmacAlgorithm,
    key_id: &'a [u8],
    signed: SignedNames<'a>,
    nonce: Option<&'a [u8]>,
    signature: Option<&'a [u8]>,
) -> Result<Authorization<'a>, String> {
    let mut tag = [0u8; MAX_TAG_LEN];
    let signature_len = decode_base64(signature.ok_or("signature is missing")?, &mut tag)
        .ok_or_else(|| {
            error(format_args!(
                "signature is not base64 of at most {MAX_TAG_LEN} bytes"
            ))
        })?;
    Ok(Authorization {
        algorithm,
        key_id,
        signed,
        nonce,
        signature: tag,
        signature_len,
    })
}

/// Marks a byte that is not in the base64 alphabet in [`BASE64_VALUES`].
const NOT_BASE64: u8 = 0x80;

/// Each byte's value in the standard base64 alphabet (RFC 4648 section 4), or [`NOT_BASE64`].
static BASE64_VALUES: [u8; 256] = {
    let mut table = [NOT_BASE64; 256];
    let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut i = 0;
    while i < alphabet.len() {
        table[alphabet[i] as usize] = i as u8;
        i += 1;
    }
    table
};

/// Decodes standard base64 with its padding into `out`; the number of bytes, or `None` for
/// anything but the one canonical encoding of at most `out.len()` bytes (padding to a
/// multiple of 4, unused bits zero), which is what the `base64` crate's `STANDARD` accepts.
/// The signature is the sender's text, so a table lookup per symbol reveals nothing; this
/// costs a quarter of the general decoder on a 44-character tag.
fn decode_base64(text: &[u8], out: &mut [u8; MAX_TAG_LEN]) -> Option<usize> {
    if !text.len().is_multiple_of(4) {
        return None;
    }
    let padding = match text {
        [.., b'=', b'='] => 2,
        [.., b'='] => 1,
        _ => 0,
    };
    let symbols = &text[..text.len() - padding];
    let len = symbols.len() * 3 / 4;
    if len > out.len() {
        return None;
    }
    let (groups, tail) = symbols.split_at(symbols.len() / 4 * 4);
    let mut invalid = 0u8;
    // Four symbols as 24 bits; a symbol outside the alphabet marks `invalid` (its bits then
    // do not matter: nothing decoded is returned).
    let mut bits_of = |group: [u8; 4]| {
        let [a, b, c, d] = group.map(|symbol| u32::from(BASE64_VALUES[usize::from(symbol)]));
        invalid |= (a | b | c | d) as u8;
        a << 18 | b << 12 | c << 6 | d
    };
    // Whole groups: four symbols, three bytes, stored as four (big-endian, the fourth byte
    // overwritten by the next group's or left past `len`): one store, not three. Room: with
    // `len` at most 64 there are at most 21 whole groups, the last ending at byte 64.
    for (i, group) in groups.as_chunks::<4>().0.iter().enumerate() {
        out[3 * i..3 * i + 4].copy_from_slice(&(bits_of(*group) << 8).to_be_bytes());
    }
    // A padded last group: two symbols for one byte or three for two, completed with `A`
    // (value 0); the bits past the symbols sent must be zero.
    if !tail.is_empty() {
        let mut group = [b'A'; 4];
        group[..tail.len()].copy_from_slice(tail);
        let bits = bits_of(group);
        let n = tail.len() - 1;
        out[len - n..len].copy_from_slice(&bits.to_be_bytes()[1..=n]);
        invalid |= u8::from(bits << (8 * n) & 0x00ff_ffff != 0) * NOT_BASE64;
    }
    (invalid & NOT_BASE64 == 0).then_some(len)
}

/// One consumer key, prepared for each algorithm the policy accepts.
struct KeyEntry {
    keys: Vec<(HmacAlgorithm, MacKey)>,
    consumer: Arc<ConsumerEntry>,
}

impl std::fmt::Debug for KeyEntry {
    // Secrets never reach logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyEntry")
            .field("consumer", &self.consumer.name)
            .finish_non_exhaustive()
    }
}

/// The headers a policy requires signed: the [`Known`] ones as a set of bits (a request's
/// list has its own, so the common check is one `and`), the others by name.
#[derive(Debug)]
struct RequiredHeaders {
    /// Every name, lower-case, sorted: the first missing one is named in the refusal.
    names: Vec<String>,
    known: u8,
    other: Vec<String>,
}

impl RequiredHeaders {
    /// The first required header `auth` does not sign, if any. The usual answer, none, is a
    /// bit test and the other names' compares.
    fn missing(&self, auth: &Authorization) -> Option<&str> {
        let known_signed = (self.known & !auth.signed.layout.known) == 0;
        if known_signed && self.other.iter().all(|h| auth.signs(h)) {
            return None;
        }
        self.names
            .iter()
            .find(|h| !auth.signs(h))
            .map(String::as_str)
    }

    fn new(mut names: Vec<String>) -> Self {
        names.sort_unstable();
        names.dedup();
        let known = names
            .iter()
            .filter_map(|name| Known::named(name.as_bytes()))
            .fold(0, |known, k| known | k.bit());
        let other = names
            .iter()
            .filter(|name| Known::named(name.as_bytes()).is_none())
            .cloned()
            .collect();
        Self {
            names,
            known,
            other,
        }
    }
}

/// Verifies signed requests against the consumers' HMAC keys.
#[derive(Debug)]
pub struct HmacAuth {
    name: String,
    required: RequiredHeaders,
    skew_secs: u64,
    validate_body: bool,
    require_nonce: bool,
    allow: Vec<String>,
    /// By key id. Hashed with foldhash (seeded per process): SipHash over the id cost more
    /// than the rest of the lookup.
    keys: HashMap<Box<[u8]>, KeyEntry, foldhash::fast::RandomState>,
    nonces: Arc<NonceCache>,
    challenge: HeaderValue,
}

impl HmacAuth {
    pub fn build(
        name: &str,
        config: &Config,
        consumers: &Arc<Consumers>,
        state: &PolicyState,
    ) -> Result<Self, String> {
        if config.algorithms.is_empty() {
            return Err("at least one algorithm is needed".into());
        }
        let keys = consumers
            .by_hmac_key
            .iter()
            .map(|(key_id, (secret, consumer))| {
                let keys = config
                    .algorithms
                    .iter()
                    .map(|a| Ok((*a, MacKey::new(*a, secret.as_bytes())?)))
                    .collect::<Result<_, String>>()
                    .map_err(|e| format!("key `{key_id}` of consumer `{}`: {e}", consumer.name))?;
                Ok((
                    Box::from(key_id.as_bytes()),
                    KeyEntry {
                        keys,
                        consumer: consumer.clone(),
                    },
                ))
            })
            .collect::<Result<_, String>>()?;
        let mut required: Vec<String> = config
            .signed_headers
            .iter()
            .map(|h| h.to_ascii_lowercase())
            .collect();
        if config.validate_body {
            required.push(CONTENT_SHA256_HEADER.to_owned());
        }
        Ok(Self {
            name: name.to_owned(),
            required: RequiredHeaders::new(required),
            skew_secs: config.clock_skew.to_std().as_secs().max(1),
            validate_body: config.validate_body,
            require_nonce: config.require_nonce,
            allow: config.consumers.clone(),
            keys,
            nonces: state.get_or_insert(name, "hmac-nonces", NonceCache::new),
            challenge: credentials::challenge(scheme(config.algorithms[0]), name),
        })
    }

    /// A refusal. Cold and out of line, as are the messages it formats: the accepting path
    /// is laid out without them in between.
    #[cold]
    #[inline(never)]
    fn unauthorized(&self, code: &str, message: &dyn std::fmt::Display) -> Verdict {
        Verdict::Respond(credentials::unauthorized(
            &self.name,
            code,
            &message.to_string(),
            &self.challenge,
        ))
    }

    fn check(&self, ctx: &mut RequestCtx<'_>) -> Verdict {
        let fields = Fields::of(&ctx.headers);
        let Some(value) = fields.authorization else {
            return self.unauthorized("missing_signature", &"an FG-HMAC signature is required");
        };
        let auth = match parse_authorization(value) {
            Ok(auth) => auth,
            Err(e) => {
                return self.unauthorized(
                    "malformed_signature",
                    &format_args!("the Authorization header is malformed: {e}"),
                );
            }
        };
        let Some(entry) = self.keys.get(auth.key_id) else {
            return self.unauthorized("unknown_key_id", &"the key id is not known");
        };
        let Some((_, key)) = entry.keys.iter().find(|(a, _)| *a == auth.algorithm) else {
            return self.unauthorized(
                "algorithm_not_allowed",
                &format_args!("{} is not accepted here", scheme(auth.algorithm)),
            );
        };
        if let Some(missing) = self.required.missing(&auth) {
            return self.unauthorized(
                "header_not_signed",
                &format_args!("header `{missing}` must be signed"),
            );
        }
        let now = ctx.unix_secs();
        let date = match signed_date(&fields, &auth) {
            Ok(date) => date,
            Err(message) => return self.unauthorized("missing_date", &message),
        };
        if now.abs_diff(date) > self.skew_secs {
            return self.unauthorized(
                "stale_request",
                &format_args!(
                    "the request date is more than {} s from the gateway's clock",
                    self.skew_secs
                ),
            );
        }
        if self.require_nonce && auth.nonce.is_none() {
            return self.unauthorized("missing_nonce", &"a nonce is required");
        }
        // The canonical request is built in a buffer each thread keeps, and dropped there.
        thread_local!(static CANONICAL: std::cell::RefCell<Vec<u8>> = const {
            std::cell::RefCell::new(Vec::new())
        });
        let checked = CANONICAL.with_borrow_mut(|canonical| -> Result<bool, String> {
            canonical.clear();
            canonical_request(
                canonical,
                scheme(auth.algorithm),
                auth.key_id,
                auth.nonce.unwrap_or_default(),
                &ctx.method,
                &ctx.uri,
                &fields,
                &auth.signed,
            )?;
            Ok(key.verify(canonical, auth.signature()))
        });
        match checked {
            Err(message) => return self.unauthorized("missing_signed_header", &message),
            Ok(false) => {
                return self.unauthorized("invalid_signature", &"the signature does not match");
            }
            Ok(true) => {}
        }
        if self.validate_body
            && let Some(answer) = self.check_body(&ctx.body, &fields)
        {
            return Verdict::Respond(answer);
        }
        if let Some(nonce) = auth.nonce {
            // Remembered until the request's date leaves the window: after that the date
            // check refuses a replay by itself.
            let expires = date.saturating_add(self.skew_secs).saturating_add(1);
            match self
                .nonces
                .check_and_insert(nonce_key(auth.key_id, nonce), now, expires)
            {
                NonceCheck::Fresh => {}
                NonceCheck::Replayed => {
                    return self.unauthorized("nonce_replayed", &"this nonce was already used");
                }
                NonceCheck::Full => {
                    return Verdict::Respond(reject(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "nonce_cache_full",
                        "too many signed requests in the replay window; retry later",
                        &self.name,
                    ));
                }
            }
        }
        if !credentials::allowed(&self.allow, Some(&entry.consumer)) {
            return Verdict::Respond(credentials::forbidden(&self.name, Some(&entry.consumer)));
        }
        ctx.consumer = Some(entry.consumer.clone());
        Verdict::Continue
    }

    /// Compares the signed body digest with the body. `None` when they match.
    fn check_body(&self, body: &BodyPrefix, fields: &Fields) -> Option<Response<Bytes>> {
        let too_large = || {
            reject(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                &format!("signed request bodies are limited to {BODY_LIMIT} bytes"),
                &self.name,
            )
        };
        let declared = fields.text(Known::ContentLength).and_then(decimal);
        if declared.is_some_and(|len| len > BODY_LIMIT) {
            return Some(too_large());
        }
        let body = match body {
            BodyPrefix::Complete(body) => body,
            BodyPrefix::Partial(_) => return Some(too_large()),
            // The proxy reads the body for every chain that declares a limit, which this
            // plugin does; refuse rather than pass an unverified body.
            BodyPrefix::NotRead => {
                return Some(reject(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "body_not_read",
                    "the request body was not available to verify",
                    &self.name,
                ));
            }
        };
        let claimed = fields.text(Known::ContentSha256).unwrap_or_default();
        // Hex digits in either case. A body's digest is compared as bytes: the claim is
        // decoded instead of the digest being encoded.
        let mut claimed_digest = [0u8; 32];
        let matches = if body.is_empty() {
            // Exact first: clients write lower case, and that compare is a few wide loads.
            claimed == EMPTY_BODY_SHA256_HEX.as_bytes()
                || claimed.eq_ignore_ascii_case(EMPTY_BODY_SHA256_HEX.as_bytes())
        } else {
            hex::decode_to_slice(claimed, &mut claimed_digest).is_ok()
                && Sha256::digest(body).as_slice() == claimed_digest
        };
        if matches {
            None
        } else {
            Some(credentials::unauthorized(
                &self.name,
                "body_digest_mismatch",
                &format!("`{CONTENT_SHA256_HEADER}` does not match the body"),
                &self.challenge,
            ))
        }
    }
}

/// The signed date: `x-fleetgate-date` (unix seconds) if signed, else `date` (RFC 9110
/// IMF-fixdate) if signed.
fn signed_date(fields: &Fields, auth: &Authorization) -> Result<u64, String> {
    if auth.signs_known(Known::FleetgateDate)
        && let Some(value) = fields.text(Known::FleetgateDate)
    {
        return decimal(value)
            .filter(|_| value.len() <= 12)
            .ok_or_else(|| error(format_args!("`{DATE_HEADER}` must be unix seconds")));
    }
    if auth.signs_known(Known::Date)
        && let Some(value) = fields.text(Known::Date)
    {
        return std::str::from_utf8(value)
            .ok()
            .and_then(|value| httpdate::parse_http_date(value).ok())
            .map(|date| epoch_time(date).as_secs())
            .ok_or_else(|| "`date` is not an HTTP date".to_owned());
    }
    Err(error(format_args!(
        "sign a date: `{DATE_HEADER}` (unix seconds) or `date`"
    )))
}

/// 128 bits of sha256(key id, nonce): the same nonce under two keys is two entries.
fn nonce_key(key_id: &[u8], nonce: &[u8]) -> u128 {
    let digest = Sha256::new()
        .chain_update((key_id.len() as u64).to_be_bytes())
        .chain_update(key_id)
        .chain_update(nonce)
        .finalize();
    let mut first = [0u8; 16];
    first.copy_from_slice(&digest[..16]);
    u128::from_be_bytes(first)
}

/// The outcome of recording a nonce.
#[derive(Debug, PartialEq, Eq)]
enum NonceCheck {
    Fresh,
    Replayed,
    Full,
}

/// Nonces seen within their replay window, per policy, kept across config versions.
#[derive(Debug)]
pub struct NonceCache {
    shards: Vec<Mutex<NonceShard>>,
    capacity_per_shard: usize,
}

#[derive(Debug, Default)]
struct NonceShard {
    /// Nonce key → unix second after which it may be forgotten. The keys are SHA-256 output,
    /// which no sender steers, so the fast seeded hash is enough.
    seen: HashMap<u128, u64, foldhash::fast::RandomState>,
    next_purge: u64,
    /// The second of the last purge. Nonces expire by the second, so a second purge within the
    /// same second would free nothing: a shard full of live nonces refuses each new one without
    /// scanning itself again (a scan of a full shard is ~65 k entries, under its lock).
    purged_at: Option<u64>,
}

impl NonceCache {
    fn new() -> Self {
        Self::with_capacity(NONCE_CAPACITY)
    }

    fn with_capacity(capacity: usize) -> Self {
        Self {
            shards: (0..NONCE_SHARDS)
                .map(|_| Mutex::new(NonceShard::default()))
                .collect(),
            capacity_per_shard: (capacity / NONCE_SHARDS).max(1),
        }
    }

    fn check_and_insert(&self, key: u128, now: u64, expires: u64) -> NonceCheck {
        use std::collections::hash_map::Entry;
        let index = (key % self.shards.len() as u128) as usize;
        let mut guard = self.shards[index].lock();
        let shard = &mut *guard;
        // Purging keeps every nonce still in its window, so it never hides a replay.
        let due = now >= shard.next_purge || shard.seen.len() >= self.capacity_per_shard;
        if due && shard.purged_at != Some(now) {
            shard.seen.retain(|_, until| *until >= now);
            shard.next_purge = now.saturating_add(NONCE_PURGE_EVERY);
            shard.purged_at = Some(now);
        }
        let full = shard.seen.len() >= self.capacity_per_shard;
        match shard.seen.entry(key) {
            Entry::Occupied(seen) if *seen.get() >= now => NonceCheck::Replayed,
            // Out of its window but not purged yet: the nonce may be used again, in its slot.
            Entry::Occupied(mut seen) => {
                seen.insert(expires);
                NonceCheck::Fresh
            }
            Entry::Vacant(_) if full => NonceCheck::Full,
            Entry::Vacant(slot) => {
                slot.insert(expires);
                NonceCheck::Fresh
            }
        }
    }
}

impl AnswersAtOnce for HmacAuth {
    fn name(&self) -> &str {
        &self.name
    }

    fn phase(&self) -> Phase {
        Phase::Authn
    }

    fn body_limit(&self) -> Option<u64> {
        // One byte past the limit tells a body of exactly BODY_LIMIT from a longer one.
        self.validate_body.then_some(BODY_LIMIT + 1)
    }

    fn verdict(&self, ctx: &mut RequestCtx<'_>) -> Verdict {
        self.check(ctx)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::time::{Duration, UNIX_EPOCH};

    use super::*;
    use crate::plugin::Plugin;

    const SECRET: &str = "partner-secret-0123456789abcdef";
    const NOW: u64 = 1_800_000_000;

    fn consumers() -> Arc<Consumers> {
        let mut consumers = Consumers::default();
        for (name, key_id) in [("partner", "k-partner"), ("other", "k-other")] {
            let entry = Arc::new(ConsumerEntry::new(
                name.into(),
                &BTreeMap::new(),
                BTreeMap::new(),
            ));
            consumers
                .by_hmac_key
                .insert(key_id.into(), (SECRET.into(), entry.clone()));
            consumers.by_name.insert(name.into(), entry);
        }
        Arc::new(consumers)
    }

    fn config() -> Config {
        Config {
            algorithms: vec![HmacAlgorithm::HmacSha256, HmacAlgorithm::HmacSha512],
            signed_headers: vec!["host".into(), "content-type".into()],
            clock_skew: fleetgate_shared::Duration::from_secs(300),
            validate_body: true,
            require_nonce: true,
            consumers: vec![],
        }
    }

    fn plugin(config: &Config, state: &PolicyState) -> HmacAuth {
        HmacAuth::build("hmac", config, &consumers(), state).unwrap()
    }

    /// A signed POST as a client would send it, signed at `date`.
    fn signed(
        algorithm: HmacAlgorithm,
        key_id: &str,
        nonce: &str,
        date: u64,
        body: &'static str,
    ) -> RequestCtx<'static> {
        let uri: Uri = "/v1/orders?b=2&a=1&a=0".parse().unwrap();
        let mut headers = HeaderMap::new();
        headers.insert("host", "api.example.com".parse().unwrap());
        headers.insert("content-type", "application/json".parse().unwrap());
        headers.insert(DATE_HEADER, date.to_string().parse().unwrap());
        headers.insert(
            CONTENT_SHA256_HEADER,
            body_digest(body.as_bytes()).parse().unwrap(),
        );
        let credentials = Credentials {
            algorithm,
            key_id,
            secret: SECRET.as_bytes(),
        };
        let authorization = sign(
            &credentials,
            nonce,
            &Method::POST,
            &uri,
            &headers,
            &["host", "content-type", DATE_HEADER, CONTENT_SHA256_HEADER],
        )
        .unwrap();
        headers.insert(header::AUTHORIZATION, authorization.parse().unwrap());
        let mut ctx = RequestCtx::new(
            Method::POST,
            uri,
            headers,
            "127.0.0.1:5".parse().unwrap(),
            true,
        );
        ctx.body = BodyPrefix::Complete(Bytes::from_static(body.as_bytes()));
        ctx.set_now(UNIX_EPOCH + Duration::from_secs(NOW));
        ctx
    }

    /// The signed names of a parsed header, as text.
    fn names<'a>(auth: &'a Authorization) -> Vec<&'a str> {
        auth.signed
            .iter()
            .map(|name| std::str::from_utf8(name).unwrap())
            .collect()
    }

    fn outcome(verdict: Verdict) -> (StatusCode, String) {
        match verdict {
            Verdict::Continue => (StatusCode::OK, String::new()),
            Verdict::Respond(r) => {
                let body: serde_json::Value = serde_json::from_slice(r.body()).unwrap();
                (r.status(), body["error"].as_str().unwrap().to_owned())
            }
        }
    }

    /// docs/policies.md's example, a known answer computed apart from this code (Python's
    /// `hmac`): `sign` writes its `Authorization` value byte for byte, and the gateway accepts
    /// the request as printed there. A change to the signed format fails here first.
    #[tokio::test]
    async fn the_documented_example_signs_and_passes() {
        const BODY: &str = r#"{"sku":"a-1","qty":2}"#;
        const AUTHORIZATION: &str = "FG-HMAC-SHA256 keyId=\"k-partner\", \
            signedHeaders=\"host;x-fleetgate-date;x-fleetgate-content-sha256\", nonce=\"n-1\", \
            signature=\"npTSUBpGGWZ0QqnDNuOGBiSZYe0+nVqPfF4xKEp3I+0=\"";
        let uri: Uri = "/v1/orders?b=2&a=1".parse().unwrap();
        let mut headers = HeaderMap::new();
        headers.insert("host", HeaderValue::from_static("api.example.com"));
        headers.insert(DATE_HEADER, HeaderValue::from_static("1800000000"));
        headers.insert(
            CONTENT_SHA256_HEADER,
            HeaderValue::from_static(
                "b7081bdea406d833414e4f94e9d665dfe708535b787cf856f964234d397d8cdc",
            ),
        );
        let credentials = Credentials {
            algorithm: HmacAlgorithm::HmacSha256,
            key_id: "k-partner",
            secret: SECRET.as_bytes(),
        };
        let signed_headers = ["host", DATE_HEADER, CONTENT_SHA256_HEADER];
        assert_eq!(
            sign(
                &credentials,
                "n-1",
                &Method::POST,
                &uri,
                &headers,
                &signed_headers
            )
            .unwrap(),
            AUTHORIZATION
        );
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static(AUTHORIZATION),
        );
        let mut c = RequestCtx::new(
            Method::POST,
            uri,
            headers,
            "127.0.0.1:5".parse().unwrap(),
            true,
        );
        c.body = BodyPrefix::Complete(Bytes::from_static(BODY.as_bytes()));
        c.set_now(UNIX_EPOCH + Duration::from_secs(NOW));
        let config = Config {
            signed_headers: vec!["host".into()],
            ..config()
        };
        let p = plugin(&config, &PolicyState::default());
        assert_eq!(outcome(p.on_request(&mut c).await).0, StatusCode::OK);
        assert_eq!(c.consumer.unwrap().name, "partner");
    }

    #[tokio::test]
    async fn a_valid_signature_passes_and_names_the_consumer() {
        let state = PolicyState::default();
        let p = plugin(&config(), &state);
        for (i, alg) in [HmacAlgorithm::HmacSha256, HmacAlgorithm::HmacSha512]
            .into_iter()
            .enumerate()
        {
            let mut c = signed(alg, "k-partner", &format!("n-{i}"), NOW - 10, "{\"a\":1}");
            assert_eq!(outcome(p.on_request(&mut c).await).0, StatusCode::OK);
            assert_eq!(c.consumer.as_ref().unwrap().name, "partner");
        }
    }

    /// Auth schemes are case-blind (RFC 9110 11.1): the scheme as the client wrote it is
    /// found and named in any case, while the canonical request signs it as specified.
    #[tokio::test]
    async fn the_scheme_may_be_written_in_any_case() {
        let state = PolicyState::default();
        let p = plugin(&config(), &state);
        for (i, (alg, written)) in [
            (HmacAlgorithm::HmacSha256, "fg-hmac-sha256"),
            (HmacAlgorithm::HmacSha512, "Fg-Hmac-Sha512"),
        ]
        .into_iter()
        .enumerate()
        {
            let mut c = signed(alg, "k-partner", &format!("case-{i}"), NOW - 10, "{}");
            let sent = c.headers[header::AUTHORIZATION]
                .to_str()
                .unwrap()
                .to_owned();
            let (_, params) = sent.split_once(' ').unwrap();
            let rewritten = format!("{written} {params}");
            c.headers
                .insert(header::AUTHORIZATION, rewritten.parse().unwrap());
            assert_eq!(
                outcome(p.on_request(&mut c).await),
                (StatusCode::OK, String::new()),
                "{rewritten}"
            );
        }
    }

    #[tokio::test]
    async fn a_tampered_body_is_refused() {
        let state = PolicyState::default();
        let p = plugin(&config(), &state);
        let mut c = signed(
            HmacAlgorithm::HmacSha256,
            "k-partner",
            "n1",
            NOW,
            "{\"amount\":1}",
        );
        c.body = BodyPrefix::Complete(Bytes::from_static(b"{\"amount\":1000}"));
        assert_eq!(
            outcome(p.on_request(&mut c).await),
            (StatusCode::UNAUTHORIZED, "body_digest_mismatch".into())
        );
        // A body dropped on the way (or one added to a signed bodiless request) is caught too.
        for (nonce, signed_body, sent) in [("n3", "{}", ""), ("n4", "", "{}")] {
            let mut c = signed(
                HmacAlgorithm::HmacSha256,
                "k-partner",
                nonce,
                NOW,
                signed_body,
            );
            c.body = BodyPrefix::Complete(Bytes::from_static(sent.as_bytes()));
            assert_eq!(
                outcome(p.on_request(&mut c).await),
                (StatusCode::UNAUTHORIZED, "body_digest_mismatch".into()),
                "signed {signed_body:?}, sent {sent:?}"
            );
        }
        let mut c = signed(HmacAlgorithm::HmacSha256, "k-partner", "n5", NOW, "");
        assert_eq!(outcome(p.on_request(&mut c).await).0, StatusCode::OK);
        let mut c = signed(HmacAlgorithm::HmacSha256, "k-partner", "n2", NOW, "{}");
        c.body = BodyPrefix::Partial(Bytes::from_static(b"{}"));
        assert_eq!(
            outcome(p.on_request(&mut c).await).0,
            StatusCode::PAYLOAD_TOO_LARGE
        );
    }

    #[tokio::test]
    async fn a_tampered_header_query_or_method_is_refused() {
        let state = PolicyState::default();
        let p = plugin(&config(), &state);
        let mut c = signed(HmacAlgorithm::HmacSha256, "k-partner", "n1", NOW, "{}");
        c.headers
            .insert("content-type", "text/plain".parse().unwrap());
        assert_eq!(
            outcome(p.on_request(&mut c).await),
            (StatusCode::UNAUTHORIZED, "invalid_signature".into())
        );
        let mut c = signed(HmacAlgorithm::HmacSha256, "k-partner", "n2", NOW, "{}");
        *c.uri = "/v1/orders?b=2&a=1&a=9".parse().unwrap();
        assert_eq!(outcome(p.on_request(&mut c).await).1, "invalid_signature");
        let mut c = signed(HmacAlgorithm::HmacSha256, "k-partner", "n3", NOW, "{}");
        c.method = Method::PUT;
        assert_eq!(outcome(p.on_request(&mut c).await).1, "invalid_signature");
        // Query order does not matter: the canonical query is sorted.
        let mut c = signed(HmacAlgorithm::HmacSha256, "k-partner", "n4", NOW, "{}");
        *c.uri = "/v1/orders?a=0&a=1&b=2".parse().unwrap();
        assert_eq!(outcome(p.on_request(&mut c).await).0, StatusCode::OK);
    }

    #[tokio::test]
    async fn a_stale_or_future_date_is_refused() {
        let state = PolicyState::default();
        let p = plugin(&config(), &state);
        for (nonce, date) in [("n1", NOW - 301), ("n2", NOW + 301)] {
            let mut c = signed(HmacAlgorithm::HmacSha256, "k-partner", nonce, date, "{}");
            assert_eq!(
                outcome(p.on_request(&mut c).await),
                (StatusCode::UNAUTHORIZED, "stale_request".into())
            );
        }
        let mut c = signed(
            HmacAlgorithm::HmacSha256,
            "k-partner",
            "n3",
            NOW + 300,
            "{}",
        );
        assert_eq!(outcome(p.on_request(&mut c).await).0, StatusCode::OK);
    }

    #[tokio::test]
    async fn a_replayed_nonce_is_refused_until_its_window_passes() {
        let state = PolicyState::default();
        let p = plugin(&config(), &state);
        let mut first = signed(HmacAlgorithm::HmacSha256, "k-partner", "once", NOW, "{}");
        assert_eq!(outcome(p.on_request(&mut first).await).0, StatusCode::OK);
        let mut again = signed(HmacAlgorithm::HmacSha256, "k-partner", "once", NOW, "{}");
        assert_eq!(
            outcome(p.on_request(&mut again).await),
            (StatusCode::UNAUTHORIZED, "nonce_replayed".into())
        );
        // A new config version of the policy keeps the nonces.
        let next = plugin(&config(), &state);
        let mut again = signed(HmacAlgorithm::HmacSha256, "k-partner", "once", NOW, "{}");
        assert_eq!(
            outcome(next.on_request(&mut again).await).1,
            "nonce_replayed"
        );
        // The same nonce under another key is another nonce.
        let mut other = signed(HmacAlgorithm::HmacSha256, "k-other", "once", NOW, "{}");
        assert_eq!(outcome(next.on_request(&mut other).await).0, StatusCode::OK);
        // Once the date is out of the window, the date check refuses it instead.
        let mut late = signed(HmacAlgorithm::HmacSha256, "k-partner", "once", NOW, "{}");
        late.set_now(UNIX_EPOCH + Duration::from_secs(NOW + 302));
        assert_eq!(outcome(next.on_request(&mut late).await).1, "stale_request");
    }

    #[tokio::test]
    async fn unknown_keys_missing_parts_and_disallowed_consumers_are_refused() {
        let state = PolicyState::default();
        let p = plugin(&config(), &state);
        let mut c = signed(HmacAlgorithm::HmacSha256, "k-nobody", "n1", NOW, "{}");
        assert_eq!(
            outcome(p.on_request(&mut c).await),
            (StatusCode::UNAUTHORIZED, "unknown_key_id".into())
        );
        let mut c = signed(HmacAlgorithm::HmacSha384, "k-partner", "n2", NOW, "{}");
        assert_eq!(
            outcome(p.on_request(&mut c).await).1,
            "algorithm_not_allowed"
        );
        let mut c = signed(HmacAlgorithm::HmacSha256, "k-partner", "n3", NOW, "{}");
        c.headers.remove(header::AUTHORIZATION);
        let Verdict::Respond(response) = p.on_request(&mut c).await else {
            panic!("an unsigned request passed");
        };
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(
            response.headers().get(header::WWW_AUTHENTICATE).unwrap(),
            "FG-HMAC-SHA256 realm=\"hmac\""
        );
        let mut c = signed(HmacAlgorithm::HmacSha256, "k-partner", "", NOW, "{}");
        assert_eq!(outcome(p.on_request(&mut c).await).1, "missing_nonce");

        let mut restricted = config();
        restricted.consumers = vec!["other".into()];
        let p = plugin(&restricted, &PolicyState::default());
        let mut c = signed(HmacAlgorithm::HmacSha256, "k-partner", "n4", NOW, "{}");
        assert_eq!(outcome(p.on_request(&mut c).await).0, StatusCode::FORBIDDEN);
        assert!(c.consumer.is_none());
    }

    #[tokio::test]
    async fn required_headers_must_be_signed() {
        let state = PolicyState::default();
        let p = plugin(&config(), &state);
        let uri: Uri = "/x".parse().unwrap();
        let mut headers = HeaderMap::new();
        headers.insert("host", "api.example.com".parse().unwrap());
        headers.insert(DATE_HEADER, NOW.to_string().parse().unwrap());
        headers.insert(CONTENT_SHA256_HEADER, body_digest(b"").parse().unwrap());
        let credentials = Credentials {
            algorithm: HmacAlgorithm::HmacSha256,
            key_id: "k-partner",
            secret: SECRET.as_bytes(),
        };
        // content-type is required by the policy but left out of the signature.
        let authorization = sign(
            &credentials,
            "n1",
            &Method::GET,
            &uri,
            &headers,
            &["host", DATE_HEADER, CONTENT_SHA256_HEADER],
        )
        .unwrap();
        headers.insert(header::AUTHORIZATION, authorization.parse().unwrap());
        let mut c = RequestCtx::new(
            Method::GET,
            uri,
            headers,
            "127.0.0.1:5".parse().unwrap(),
            false,
        );
        c.body = BodyPrefix::Complete(Bytes::new());
        c.set_now(UNIX_EPOCH + Duration::from_secs(NOW));
        assert_eq!(outcome(p.on_request(&mut c).await).1, "header_not_signed");
    }

    #[tokio::test]
    async fn an_http_date_header_can_carry_the_date() {
        let mut config = config();
        config.validate_body = false;
        config.signed_headers = vec![];
        let p = plugin(&config, &PolicyState::default());
        assert_eq!(Plugin::body_limit(&p), None, "no body digest, no body read");
        let uri: Uri = "/x".parse().unwrap();
        let now = UNIX_EPOCH + Duration::from_secs(NOW);
        let mut headers = HeaderMap::new();
        headers.insert(
            "date",
            httpdate::fmt_http_date(now - Duration::from_secs(30))
                .parse()
                .unwrap(),
        );
        let credentials = Credentials {
            algorithm: HmacAlgorithm::HmacSha256,
            key_id: "k-other",
            secret: SECRET.as_bytes(),
        };
        let authorization =
            sign(&credentials, "n1", &Method::GET, &uri, &headers, &["date"]).unwrap();
        headers.insert(header::AUTHORIZATION, authorization.parse().unwrap());
        let mut c = RequestCtx::new(
            Method::GET,
            uri,
            headers,
            "127.0.0.1:5".parse().unwrap(),
            false,
        );
        c.set_now(now);
        assert_eq!(outcome(p.on_request(&mut c).await).0, StatusCode::OK);
        assert_eq!(c.consumer.unwrap().name, "other");
    }

    #[tokio::test]
    async fn signed_header_names_match_in_any_case_and_spacing() {
        let state = PolicyState::default();
        let p = plugin(&config(), &state);
        let mut c = signed(HmacAlgorithm::HmacSha256, "k-partner", "n-case", NOW, "{}");
        // The signer wrote the list lower-case; the canonical request lower-cases and trims each
        // name, so a client that sends them as written in its code signs the same string.
        let sent = c.headers[header::AUTHORIZATION]
            .to_str()
            .unwrap()
            .to_owned();
        let shouted = sent.replace(
            "signedHeaders=\"host;content-type;",
            "signedHeaders=\"Host; Content-Type ;",
        );
        assert_ne!(sent, shouted);
        c.headers
            .insert(header::AUTHORIZATION, shouted.parse().unwrap());
        assert_eq!(
            outcome(p.on_request(&mut c).await),
            (StatusCode::OK, String::new())
        );
    }

    /// A value that starts with a head this thread read before is read from what it
    /// remembered: the same as the general reading, whatever follows the head (another nonce
    /// or signature, a refused one, another layout), for heads one byte apart, and again after
    /// other heads pushed it out.
    #[test]
    fn remembered_heads_read_as_fresh_ones() {
        // What a reading found, owned: the names with the known fields they are.
        type Read = (
            Vec<u8>,
            Vec<(String, Option<Known>)>,
            Option<Vec<u8>>,
            Vec<u8>,
        );
        let owned = |auth: Authorization| -> Read {
            (
                auth.key_id.to_vec(),
                auth.signed
                    .with_known()
                    .map(|(name, known)| (String::from_utf8_lossy(name).into_owned(), known))
                    .collect(),
                auth.nonce.map(<[u8]>::to_vec),
                auth.signature().to_vec(),
            )
        };
        let read = |value: &str| parse_authorization(value).map(owned);
        let general = |value: &str| {
            let (_, params) = value.split_once(' ').unwrap();
            general_params(params.as_bytes())
                .and_then(|p| checked(HmacAlgorithm::HmacSha256, p))
                .map(owned)
        };
        let head = "FG-HMAC-SHA256 keyId=\"k1\", signedHeaders=\"host;x-fleetgate-date\"";
        let tails = [
            ", signature=\"AAAA\"",
            ", nonce=\"n-1\", signature=\"AAAB\"",
            ", nonce=\"n 2\", signature=\"AAAB\"",
            ", signature=\"A\"",
            ", signature=\"AAAA\", v=2",
            ",signature=\"AAAA\"",
            "",
        ];
        for round in 0..2 {
            for tail in tails {
                let value = format!("{head}{tail}");
                assert_eq!(read(&value), general(&value), "round {round}: {value}");
            }
            for other in [
                "FG-HMAC-SHA256 keyId=\"k12\", signedHeaders=\"host;x-fleetgate-date\"",
                "FG-HMAC-SHA256 keyId=\"k1\", signedHeaders=\"host;x-fleetgate-dat\"",
                "FG-HMAC-SHA256 keyId=\"k1\", signedHeaders=\"host;x-fleetgate-daxy\"",
                "FG-HMAC-SHA256 keyId=\"k1\", signedHeaders=\"Host;X-Fleetgate-Date\"",
            ] {
                let value = format!("{other}, signature=\"AAAA\"");
                assert_eq!(read(&value), general(&value), "round {round}: {value}");
            }
        }
        for i in 0..2 * RECENT_HEAD_COUNT {
            let value = format!(
                "FG-HMAC-SHA256 keyId=\"k-{i}\", signedHeaders=\"host\", signature=\"AAAA\""
            );
            assert_eq!(read(&value), general(&value));
        }
        let value = format!("{head}{}", tails[1]);
        assert_eq!(read(&value), general(&value));
    }

    #[test]
    fn signed_header_lists_and_signatures_are_bounded() {
        let names: Vec<String> = (0..=MAX_SIGNED_HEADERS)
            .map(|i| format!("x-h{i}"))
            .collect();
        let long = format!(
            "FG-HMAC-SHA256 keyId=a, signedHeaders=\"{}\", signature=AA==",
            names.join(";")
        );
        let err = parse_authorization(&long).unwrap_err();
        assert!(err.contains("more than 64 headers"), "{err}");
        let fits = long.replacen("x-h0;", "", 1);
        assert!(parse_authorization(&fits).is_ok());

        let tag = STANDARD.encode([7u8; MAX_TAG_LEN + 1]);
        let err = parse_authorization(&format!(
            "FG-HMAC-SHA512 keyId=a, signedHeaders=host, signature={tag}"
        ))
        .unwrap_err();
        assert!(err.contains("at most 64 bytes"), "{err}");
        let dup =
            parse_authorization("FG-HMAC-SHA256 keyId=a, signedHeaders=Host;host, signature=AA==")
                .unwrap_err();
        assert!(dup.contains("`host` is listed twice"), "{dup}");
    }

    proptest::proptest! {
        /// Whatever a client sends, parsing answers Ok or Err, and what it accepts holds
        /// the invariants the verifier relies on.
        #[test]
        fn any_authorization_header_parses_or_is_refused(
            value in proptest::collection::vec(proptest::num::u8::ANY, 0..300),
        ) {
            if let Ok(auth) = parse_authorization(&value) {
                proptest::prop_assert!(token("key id", auth.key_id, MAX_KEY_ID_LEN).is_ok());
                let signed = names(&auth);
                proptest::prop_assert!(signed.len() <= MAX_SIGNED_HEADERS);
                for (i, name) in signed.iter().enumerate() {
                    proptest::prop_assert!(is_token(name.as_bytes()));
                    proptest::prop_assert!(!name.bytes().any(|b| b.is_ascii_uppercase()));
                    proptest::prop_assert!(!signed[..i].iter().any(|n| n.eq_ignore_ascii_case(name)));
                }
                proptest::prop_assert!(auth.signature().len() <= MAX_TAG_LEN);
            }
        }

        /// The one-pass parse of a `signedHeaders` list (its fast path for the usual list
        /// included) agrees with the format read plainly: split at `;`, each piece trimmed,
        /// a token, lower-cased, none twice.
        #[test]
        fn signed_name_lists_parse_as_the_format_reads(list in "[a-zA-Z0-9;, \t_.-]{0,60}") {
            let expected: Option<Vec<String>> = (|| {
                let list = list.trim_matches([' ', '\t']);
                let mut names: Vec<String> = Vec::new();
                if list.is_empty() {
                    return Some(names);
                }
                for piece in list.split(';') {
                    let name = piece.trim_matches([' ', '\t']);
                    let token = !name.is_empty()
                        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
                    let lower = name.to_ascii_lowercase();
                    if !token || names.contains(&lower) {
                        return None;
                    }
                    names.push(lower);
                }
                Some(names)
            })();
            match (SignedNames::parse(list.as_bytes()), expected) {
                (Ok(parsed), Some(expected)) => {
                    let got: Vec<&[u8]> = parsed.iter().collect();
                    let want: Vec<&[u8]> = expected.iter().map(String::as_bytes).collect();
                    proptest::prop_assert_eq!(got, want);
                }
                (Err(_), None) => {}
                (parsed, expected) => proptest::prop_assert!(
                    false,
                    "{list:?}: parsed {:?}, expected {expected:?}",
                    parsed.map(|p| p.iter().map(|n| String::from_utf8_lossy(n).into_owned()).collect::<Vec<_>>())
                ),
            }
        }

        /// Dates and lengths read as `u64::from_str` reads a string of digits, up to the
        /// largest number and past it; anything with another byte is no number.
        #[test]
        fn decimals_read_as_the_standard_parser_does(
            text in "[0-9]{0,25}|18446744073709551[0-9]{3,5}|[0-9]{0,8}[^0-9][0-9]{0,12}",
        ) {
            let expected = if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
                text.parse::<u64>().ok()
            } else {
                None
            };
            proptest::prop_assert_eq!(decimal(text.as_bytes()), expected);
        }

        /// Headers that look almost right: the scheme and parameter names are kept, the
        /// values are arbitrary.
        #[test]
        fn near_miss_authorization_headers_never_panic(
            key in "\\PC{0,40}",
            names in "[A-Za-z0-9;, \"-]{0,80}",
            signature in "[A-Za-z0-9+/=\"]{0,120}",
            nonce in proptest::option::of("\\PC{0,40}"),
        ) {
            let nonce = nonce.map(|n| format!(", nonce=\"{n}\"")).unwrap_or_default();
            let value = format!(
                "FG-HMAC-SHA512 keyId=\"{key}\", signedHeaders=\"{names}\"{nonce}, signature=\"{signature}\""
            );
            let _ = parse_authorization(&value);
        }

        /// What `sign` writes, the verifier parses back to the same key, names and tag size.
        #[test]
        fn a_signed_header_parses_back(key in "[a-z0-9-]{1,20}", extra in proptest::collection::vec("x-[a-z]{1,8}", 0..5)) {
            let mut headers = HeaderMap::new();
            headers.insert("host", "api.example.com".parse().unwrap());
            let mut signed: Vec<&str> = vec!["host"];
            for name in &extra {
                if !signed.contains(&name.as_str()) {
                    headers.insert(header::HeaderName::from_bytes(name.as_bytes()).unwrap(), "v".parse().unwrap());
                    signed.push(name);
                }
            }
            let credentials = Credentials { algorithm: HmacAlgorithm::HmacSha384, key_id: &key, secret: b"s" };
            let value = sign(&credentials, "", &Method::GET, &"/".parse().unwrap(), &headers, &signed).unwrap();
            let auth = parse_authorization(&value).unwrap();
            proptest::prop_assert_eq!(auth.key_id, key.as_bytes());
            proptest::prop_assert_eq!(names(&auth), signed);
            proptest::prop_assert_eq!(auth.signature().len(), 48);
            proptest::prop_assert_eq!(auth.algorithm, HmacAlgorithm::HmacSha384);
        }

        /// The signature decoder agrees with the `base64` crate's standard engine on any
        /// text of base64 symbols, padding and a few strays: the same bytes, or both refuse.
        #[test]
        fn signatures_decode_as_standard_base64_does(
            text in "([A-Za-z0-9+/]{4}){0,23}([A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?|[A-Za-z0-9+/=_ -]{0,92}",
        ) {
            let mut ours = [0u8; MAX_TAG_LEN];
            let mut theirs = [0u8; MAX_TAG_LEN];
            let decoded = decode_base64(text.as_bytes(), &mut ours);
            let expected = STANDARD.decode_slice(text.as_bytes(), &mut theirs).ok();
            proptest::prop_assert_eq!(decoded, expected, "{:?}", text);
            if let Some(len) = decoded {
                proptest::prop_assert_eq!(&ours[..len], &theirs[..len]);
            }
        }

        /// The layout `sign` writes is read by a shortcut; whatever a header holds, parsing
        /// gives what the general reading of the parameters gives: the same values, or an
        /// error in both.
        #[test]
        fn the_usual_layout_reads_as_the_general_format(
            key in "[a-z-]{1,8}|[a-z\\-\", =]{0,10}",
            list in "[a-z-]{1,5}(;[a-zA-Z-]{1,5}){0,3}|[a-zA-Z;, \"=-]{0,30}",
            nonce in proptest::option::of("[a-z0-9]{1,8}|[a-z0-9\", =]{0,10}"),
            signature in "(AAAA|abcd|q+/9){0,4}(AA==|AAA=)?|[A-Za-z0-9+/=\", ]{0,48}",
            tail in proptest::sample::select(vec!["", "\"", ", v=2", " "]),
        ) {
            let nonce = nonce.map(|n| format!(", nonce=\"{n}\"")).unwrap_or_default();
            let params = format!(
                "keyId=\"{key}\", signedHeaders=\"{list}\"{nonce}, signature=\"{signature}\"{tail}"
            );
            let value = format!("FG-HMAC-SHA256 {params}");
            let general = || general_params(params.trim_ascii().as_bytes())
                .and_then(|p| checked(HmacAlgorithm::HmacSha256, p));
            // Twice: the second reading may start from the head the first one remembered.
            for _ in 0..2 {
            match (parse_authorization(&value), general()) {
                (Ok(ours), Ok(plain)) => {
                    proptest::prop_assert_eq!(ours.key_id, plain.key_id);
                    proptest::prop_assert_eq!(names(&ours), names(&plain));
                    proptest::prop_assert_eq!(ours.nonce, plain.nonce);
                    proptest::prop_assert_eq!(ours.signature(), plain.signature());
                }
                (Err(ours), Err(plain)) => proptest::prop_assert_eq!(ours, plain),
                (ours, plain) => proptest::prop_assert!(
                    false,
                    "{value:?}: parsed {:?}, the general reading {:?}",
                    ours.map(|a| a.key_id.to_vec()),
                    plain.map(|a| a.key_id.to_vec())
                ),
            }
            }
        }
    }

    /// RFC 4231 test cases 2 (a short key) and 6 (a key longer than a block, hashed first),
    /// for each algorithm; one flipped bit of a tag fails, and so does a truncated tag.
    #[test]
    fn keyed_states_give_the_rfc_4231_tags() {
        let long_key = [0xaa; 131];
        let cases: [(&[u8], &[u8], [&str; 3]); 2] = [
            (
                b"Jefe",
                b"what do ya want for nothing?",
                [
                    "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843",
                    "af45d2e376484031617f78d2b58a6b1b9c7ef464f5a01b47e42ec3736322445e\
                     8e2240ca5e69e2c78b3239ecfab21649",
                    "164b7a7bfcf819e2e395fbe73b56e0a387bd64222e831fd610270cd7ea250554\
                     9758bf75c05a994a6d034f65f8f0e6fdcaeab1a34d4a6b4b636e070a38bce737",
                ],
            ),
            (
                &long_key,
                b"Test Using Larger Than Block-Size Key - Hash Key First",
                [
                    "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54",
                    "4ece084485813e9088d2c63a041bc5b44f9ef1012a2b588f3cd11f05033ac4c6\
                     0c2ef6ab4030fe8296248df163f44952",
                    "80b24263c7c1a3ebb71493c1dd7be8b49b46d1f41b4aeec1121b013783f8f352\
                     6b56d037e05f2598bd0fd2215d6a1e5295e64f73f63f0aec8b915a985d786598",
                ],
            ),
        ];
        let algorithms = [
            HmacAlgorithm::HmacSha256,
            HmacAlgorithm::HmacSha384,
            HmacAlgorithm::HmacSha512,
        ];
        for (secret, message, tags) in cases {
            for (algorithm, expected) in algorithms.into_iter().zip(tags) {
                let key = MacKey::new(algorithm, secret).unwrap();
                let tag = key.sign(message);
                assert_eq!(hex::encode(&tag), expected, "{algorithm:?}");
                // The keyed state is read per message, never consumed: verify twice.
                assert!(key.verify(message, &tag) && key.verify(message, &tag));
                let mut flipped = tag.clone();
                flipped[0] ^= 1;
                assert!(!key.verify(message, &flipped));
                assert!(!key.verify(message, &tag[..tag.len() - 1]));
            }
        }
    }

    #[test]
    fn the_empty_body_digest_is_sha256_of_nothing() {
        assert_eq!(hex::encode(Sha256::digest(b"")), EMPTY_BODY_SHA256_HEX);
    }

    #[test]
    fn the_canonical_request_is_stable() {
        let uri: Uri = "/p/a%20b?z=1&a=2&a=1&flag".parse().unwrap();
        let mut headers = HeaderMap::new();
        headers.insert(DATE_HEADER, "1800000000".parse().unwrap());
        headers.append("x-multi", " one ".parse().unwrap());
        headers.append("x-multi", "two".parse().unwrap());
        // A field the verifier finds in its walk, sent twice: both values, as for any other.
        headers.append("date", "first".parse().unwrap());
        headers.append("date", " second".parse().unwrap());
        let mut canonical = Vec::new();
        canonical_request(
            &mut canonical,
            "FG-HMAC-SHA256",
            b"kid",
            b"nonce",
            &Method::GET,
            &uri,
            &Fields::of(&headers),
            &SignedNames::parse(b"X-Fleetgate-Date;x-multi;date").unwrap(),
        )
        .unwrap();
        assert_eq!(
            String::from_utf8(canonical).unwrap(),
            "FG-HMAC-SHA256\nkid\nnonce\nGET\n/p/a%20b\na=1&a=2&flag=&z=1\n\
             x-fleetgate-date:1800000000\nx-multi:one,two\ndate:first,second"
        );
    }

    /// The walk over the request puts each known field in its own slot: the names it compares
    /// against are the names `Known` gives.
    #[test]
    fn the_walk_finds_every_known_field_by_its_name() {
        for known in Known::ALL {
            let mut headers = HeaderMap::new();
            headers.insert("x-other", HeaderValue::from_static("other"));
            headers.insert(
                header::HeaderName::from_static(known.name()),
                HeaderValue::from_static(" 42 "),
            );
            let fields = Fields::of(&headers);
            assert_eq!(fields.text(known), Some(&b"42"[..]), "{known:?}");
            let found: Vec<Known> = Known::ALL
                .into_iter()
                .filter(|k| fields.first[*k as usize].is_some())
                .collect();
            assert_eq!(found, [known]);
            assert_eq!(Known::named(known.name().as_bytes()), Some(known));
        }
    }

    /// A signed `host` is the host the gateway routes on: the target's authority when the
    /// request has one (HTTP/2's `:authority`, an absolute-form target), whatever Host header
    /// came with it, else the Host header; any other signed field that is not sent is an error
    /// naming it.
    #[test]
    fn a_signed_host_is_the_host_the_gateway_routes_on() {
        let canonical = |uri: &str, headers: &HeaderMap, list: &[u8]| {
            let mut out = Vec::new();
            canonical_request(
                &mut out,
                "FG-HMAC-SHA256",
                b"kid",
                b"",
                &Method::GET,
                &uri.parse().unwrap(),
                &Fields::of(headers),
                &SignedNames::parse(list).unwrap(),
            )
            .map(|()| String::from_utf8(out).unwrap())
        };
        let none = HeaderMap::new();
        let h2 = canonical("https://api.example.com/p", &none, b"host").unwrap();
        assert!(h2.ends_with("\n/p\n\nhost:api.example.com"), "{h2}");
        let mut headers = HeaderMap::new();
        headers.insert("host", HeaderValue::from_static("sent.example.com"));
        let absolute = canonical("https://api.example.com/p", &headers, b"host").unwrap();
        assert!(absolute.ends_with("\nhost:api.example.com"), "{absolute}");
        let h1 = canonical("/p", &headers, b"host").unwrap();
        assert!(h1.ends_with("\nhost:sent.example.com"), "{h1}");
        assert_eq!(
            canonical("/p", &none, b"host").unwrap_err(),
            "signed header `host` is not in the request"
        );
        assert_eq!(
            canonical("https://api.example.com/p", &none, b"date").unwrap_err(),
            "signed header `date` is not in the request"
        );
    }

    /// A signed value with bytes past ASCII (obs-text, which HTTP allows in a value) cannot
    /// be signed as text: refused by name, whether the verifier read the field in its walk
    /// (the date) or looks it up (any other), and whether sent once or twice.
    #[test]
    fn signed_values_past_ascii_are_refused() {
        let uri: Uri = "/".parse().unwrap();
        let latin = HeaderValue::from_bytes(b"caf\xe9").unwrap();
        for (name, twice) in [
            (DATE_HEADER, false),
            (DATE_HEADER, true),
            ("x-other", false),
        ] {
            let mut headers = HeaderMap::new();
            let name = header::HeaderName::from_static(name);
            if twice {
                headers.append(name.clone(), "1800000000".parse().unwrap());
            }
            headers.append(name.clone(), latin.clone());
            let list = SignedNames::parse(name.as_str().as_bytes()).unwrap();
            let mut canonical = Vec::new();
            let err = canonical_request(
                &mut canonical,
                "FG-HMAC-SHA256",
                b"kid",
                b"",
                &Method::GET,
                &uri,
                &Fields::of(&headers),
                &list,
            )
            .unwrap_err();
            assert_eq!(
                err,
                format!("signed header `{name}` is not visible ASCII"),
                "{name}, twice: {twice}"
            );
        }
    }

    #[test]
    fn a_full_nonce_cache_refuses_instead_of_forgetting() {
        let cache = NonceCache::with_capacity(NONCE_SHARDS);
        // One slot per shard: fill shard 0.
        assert_eq!(cache.check_and_insert(0, 100, 200), NonceCheck::Fresh);
        assert_eq!(cache.check_and_insert(16, 100, 200), NonceCheck::Full);
        assert_eq!(cache.check_and_insert(0, 150, 200), NonceCheck::Replayed);
        // Expired entries make room.
        assert_eq!(cache.check_and_insert(16, 201, 300), NonceCheck::Fresh);
    }

    /// A shard full of live nonces is scanned for expired ones at most once a second (nonces
    /// expire by the second, so a second scan frees nothing): refusing a flood of new nonces
    /// costs a lookup each, not a scan of the whole shard under its lock.
    #[test]
    fn a_full_shard_is_purged_at_most_once_a_second() {
        let cache = NonceCache::with_capacity(2 * NONCE_SHARDS);
        // Shard 0 holds two: 0 until second 200, 16 until second 150.
        assert_eq!(cache.check_and_insert(0, 100, 200), NonceCheck::Fresh);
        assert_eq!(cache.check_and_insert(16, 100, 150), NonceCheck::Fresh);
        assert_eq!(cache.check_and_insert(32, 100, 200), NonceCheck::Full);
        // Second 150's first request finds the shard full and purges it: nothing has expired.
        assert_eq!(cache.check_and_insert(64, 150, 250), NonceCheck::Full);
        // An entry already expired, slipped in behind that purge: another purge would take it.
        cache.shards[0].lock().seen.insert(48, 120);
        assert_eq!(cache.check_and_insert(80, 150, 250), NonceCheck::Full);
        assert!(
            cache.shards[0].lock().seen.contains_key(&48),
            "purged twice in one second"
        );
        // Second 151's first request purges (48 and 16 go) and uses the room.
        assert_eq!(cache.check_and_insert(64, 151, 250), NonceCheck::Fresh);
        assert!(!cache.shards[0].lock().seen.contains_key(&48));
        // A replay is refused whatever the purges did.
        assert_eq!(cache.check_and_insert(0, 151, 250), NonceCheck::Replayed);
    }

    /// A nonce whose window has passed is fresh again before any purge has removed it: it
    /// takes its old slot.
    #[test]
    fn an_expired_nonce_is_fresh_before_it_is_purged() {
        let cache = NonceCache::with_capacity(2 * NONCE_SHARDS);
        // The shard's first request purges; the next purge is due 30 s later, at 130.
        assert_eq!(cache.check_and_insert(0, 100, 120), NonceCheck::Fresh);
        assert_eq!(cache.check_and_insert(0, 110, 130), NonceCheck::Replayed);
        assert_eq!(cache.check_and_insert(0, 121, 300), NonceCheck::Fresh);
        assert_eq!(cache.check_and_insert(0, 122, 300), NonceCheck::Replayed);
        assert_eq!(cache.shards[0].lock().seen.len(), 1);
    }

    #[test]
    fn malformed_authorization_headers_are_reported() {
        for bad in [
            "FG-HMAC-SHA256",
            "FG-HMAC-SHA256 keyId=a",
            "FG-HMAC-SHA256 keyId=a, signedHeaders=host, signature=***",
            "FG-HMAC-SHA256 keyId=a, keyId=b, signedHeaders=host, signature=AA==",
            "FG-HMAC-SHA256 keyId=a, signedHeaders=host;host, signature=AA==",
            "FG-HMAC-MD5 keyId=a, signedHeaders=host, signature=AA==",
        ] {
            assert!(parse_authorization(bad).is_err(), "{bad}");
        }
        let ok = parse_authorization(
            "FG-HMAC-SHA256 keyId=\"a\", signedHeaders=\"Host;X-Y\", signature=\"AA==\", v=2",
        )
        .unwrap();
        assert_eq!(names(&ok), ["host", "x-y"]);
        assert!(ok.signs("x-y") && ok.signs("host") && !ok.signs("date"));
        assert_eq!(ok.signature(), [0]);
        assert_eq!(ok.nonce, None);
    }
}
