//! How libmodsecurity 3.0.9 (the Debian bookworm build, `3.0.9-1+deb12u1`, with yajl
//! `2.1.0-3+deb12u2` and libstdc++ 12) turns an HTTP request into its variables, rewritten in
//! safe Rust so the native evaluator sees byte-for-byte the same values.
//!
//! Everything here was checked differentially against the real library (the unit tests at the
//! bottom hard-code values read back from it). What 3.0.9 does:
//!
//! * **Request line** ([`target`]): `REQUEST_LINE` is `METHOD SP target SP HTTP/version` with
//!   the target exactly as sent (fragment included); `REQUEST_URI_RAW` is the target as sent;
//!   `REQUEST_PROTOCOL` is `HTTP/` + version; `REQUEST_METHOD` the method. Everything else
//!   first drops a `#fragment` (from the first raw `#`), then percent-decodes the *whole*
//!   target (path and query; `%XX` only, `+` stays `+`, bad escapes kept). `REQUEST_URI` is
//!   that decoded string, query included; for an absolute-form target (`scheme://host/...`) it
//!   starts at the first `/` after the host. `REQUEST_FILENAME` (and `PATH_INFO`, equal) is the
//!   decoded string up to its first `?` — so an encoded `%3F` in the path cuts it — and keeps
//!   `scheme://host` for absolute-form targets. `REQUEST_BASENAME` is what follows the last `/`
//!   or `\` of `REQUEST_FILENAME`, empty when there is none or nothing follows it.
//!   `QUERY_STRING` is the raw text after the first raw `?` (fragment removed, not decoded).
//! * **Arguments** ([`parse_query`], [`parse_form`]): split on `&` (or `SecArgumentSeparator`),
//!   a trailing empty piece is dropped but other empty pieces give an argument with empty name
//!   and value; each piece splits at its first `=` (no `=`: empty value); name and value are
//!   decoded with [`decode_arg`] (`%XX`, and `+` → space). `;` is not a separator. Duplicates
//!   are kept. Query arguments go to `ARGS` and `ARGS_GET`, urlencoded-body ones to `ARGS` and
//!   `ARGS_POST`, JSON ones to `ARGS` **only** (not `ARGS_POST`). `*_NAMES` hold the names
//!   (decoded) in the same order as the values. `ARGS_COMBINED_SIZE` is the sum of name and
//!   value lengths of every argument added, printed as a C++ `double` (`"14.000000"`,
//!   [`combined_size`]), empty while there is none. `URLENCODED_ERROR` is `1` when a `%` in a
//!   query or urlencoded-body name or value is not followed by two hex digits, else `0`.
//! * **Headers**: `REQUEST_HEADERS` / `REQUEST_HEADERS_NAMES` keep every header as given, name
//!   case included, duplicates separate (selection by name is case-insensitive).
//! * **Cookies** ([`parse_cookies`]): every header named `cookie` in any case is parsed on its
//!   own, in header order; pieces split on `;`, nothing decoded or unquoted.
//! * **JSON** ([`parse_json`]): yajl's grammar and error messages, ModSecurity's argument
//!   names (`json.a.b`, `json.list.array_0`, ...). `REQBODY_ERROR` is `1` on a parse error and
//!   `0` otherwise; `REQBODY_ERROR_MSG` the error. (With the urlencoded processor
//!   `REQBODY_ERROR` stays *empty*; with no body processor it is `0`. `REQBODY_PROCESSOR` is
//!   `URLENCODED` when a `Content-Type` header, lowercased, starts with
//!   `application/x-www-form-urlencoded`, `JSON` after `ctl:requestBodyProcessor=JSON`, else
//!   empty.)
//! * **Order** ([`collection_order`], [`rule_order`]): collections are
//!   `std::unordered_multimap`s with a case-insensitive sum-of-bytes hash, so rules see members
//!   in hash-table order, not in request order.
//!
//! Not modelled here (transaction-level, for the caller): `SecArgumentsLimit` (the `room`
//! parameter of the `*_limited` functions takes what is left of it), multipart and XML bodies,
//! the `SecRequestBodyNoFilesLimit` check that skips body parsing.
//!
//! A note on logging, found on the way: without `multiMatch` a rule logs once, after all its
//! variables were tried, and `%{MATCHED_VAR}` in its `msg` is the *last* match; with
//! `multiMatch` it logs once per matching variable (and per changed transformation stage).
//! The log line escapes bytes outside 0x20..=0x7E as `\xNN` but leaves `"` and `\` of `msg`
//! alone, so a matched value holding `"]` cuts `RuleMatch::parse`'s view of the message.

/// One variable of a collection: name, value.
pub type Pair = (Vec<u8>, Vec<u8>);

// ---------------------------------------------------------------------------------------------
// Percent decoding
// ---------------------------------------------------------------------------------------------

/// The value of an ASCII hex digit.
fn hex_value(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// The byte `%XY` stands for, when `XY` are the two bytes at `i + 1` and `i + 2`.
fn escaped_byte(raw: &[u8], i: usize) -> Option<u8> {
    let hi = hex_value(*raw.get(i + 1)?)?;
    let lo = hex_value(*raw.get(i + 2)?)?;
    Some(hi << 4 | lo)
}

/// ModSecurity's decoding of one query or form component (what `ARGS` names and values look
/// like): `%XY` with two hex digits becomes that byte, `+` becomes a space, and a `%` not
/// followed by two hex digits is kept as it is (and flags `URLENCODED_ERROR`, see
/// [`decode_arg_checked`]). Nothing else changes: no UTF-8 or `%uXXXX` handling.
#[cfg(test)]
pub fn decode_arg(raw: &[u8]) -> Vec<u8> {
    decode_arg_checked(raw).0
}

/// [`decode_arg`], also telling whether a `%` was not followed by two hex digits (what makes
/// ModSecurity set `URLENCODED_ERROR` to `1`).
pub fn decode_arg_checked(raw: &[u8]) -> (Vec<u8>, bool) {
    let mut out = Vec::with_capacity(raw.len());
    let mut invalid = false;
    let mut i = 0;
    while let Some(&c) = raw.get(i) {
        match c {
            b'%' => match escaped_byte(raw, i) {
                Some(b) => {
                    out.push(b);
                    i += 3;
                }
                None => {
                    out.push(b'%');
                    invalid = true;
                    i += 1;
                }
            },
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            _ => {
                out.push(c);
                i += 1;
            }
        }
    }
    (out, invalid)
}

/// The decoding ModSecurity applies to the request target for `REQUEST_URI`,
/// `REQUEST_FILENAME` and `REQUEST_BASENAME`: `%XY` with two hex digits becomes the byte;
/// everything else, `+` and malformed escapes included, is kept.
pub fn decode_uri(raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while let Some(&c) = raw.get(i) {
        if c == b'%'
            && let Some(b) = escaped_byte(raw, i)
        {
            out.push(b);
            i += 3;
            continue;
        }
        out.push(c);
        i += 1;
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Query strings and urlencoded bodies
// ---------------------------------------------------------------------------------------------

/// What [`parse_args_limited`] reports besides the arguments.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ArgsReport {
    /// A `%` was not followed by two hex digits somewhere (ModSecurity sets
    /// `URLENCODED_ERROR=1`; it does so even for arguments dropped by the limit).
    pub urlencoded_error: bool,
    /// Arguments dropped because `room` ran out (`SecArgumentsLimit`).
    pub dropped: usize,
}

/// Splits `buf` the way ModSecurity's `extractArguments` does, appending `(name, value)` to
/// `out` in request order:
/// - pieces are separated by `sep` (`&` unless `SecArgumentSeparator` says otherwise); like
///   C++ `getline`, an empty last piece (`a=1&`, or an empty `buf`) is not a piece, but empty
///   pieces elsewhere (`a&&b`, `&a`) are, and give an argument with empty name and value;
/// - a piece splits at its first `=`; without `=` the whole piece is the name and the value
///   is empty; further `=` stay in the value;
/// - name and value are decoded with [`decode_arg`].
///
/// At most `room` arguments are appended (`SecArgumentsLimit` minus the `ARGS` already held);
/// the rest are dropped (and do not count in `ARGS_COMBINED_SIZE`), parsing goes on.
pub fn parse_args_limited(buf: &[u8], sep: u8, room: usize, out: &mut Vec<Pair>) -> ArgsReport {
    let mut report = ArgsReport::default();
    let mut pieces: Vec<&[u8]> = buf.split(|&c| c == sep).collect();
    if pieces.last().is_some_and(|p| p.is_empty()) {
        pieces.pop();
    }
    let mut added = 0usize;
    for piece in pieces {
        let (name, value) = match piece.iter().position(|&c| c == b'=') {
            Some(eq) => (
                piece.get(..eq).unwrap_or_default(),
                piece.get(eq + 1..).unwrap_or_default(),
            ),
            None => (piece, &[][..]),
        };
        let (name, bad_name) = decode_arg_checked(name);
        let (value, bad_value) = decode_arg_checked(value);
        report.urlencoded_error |= bad_name | bad_value;
        if added < room {
            out.push((name, value));
            added += 1;
        } else {
            report.dropped += 1;
        }
    }
    report
}

/// `ARGS_GET` (and the `GET` part of `ARGS`) from a raw query string (the text after the
/// first `?` of the target, without it and without any `#fragment`), in request order,
/// duplicates kept. `;` is not a separator; `+` is a space. See [`parse_args_limited`].
pub fn parse_query(query: &[u8], out: &mut Vec<Pair>) {
    parse_args_limited(query, b'&', usize::MAX, out);
}

/// `ARGS_POST` from an `application/x-www-form-urlencoded` body: exactly the rules of
/// [`parse_query`] applied to the whole body (no trimming of a trailing newline).
/// ModSecurity picks this processor when the `Content-Type` header, lowercased, *starts with*
/// `application/x-www-form-urlencoded` (or with `ctl:requestBodyProcessor=URLENCODED`).
pub fn parse_form(body: &[u8], out: &mut Vec<Pair>) {
    parse_args_limited(body, b'&', usize::MAX, out);
}

/// `ARGS_COMBINED_SIZE` for arguments of these total name and value lengths: ModSecurity
/// keeps the sum in a `double` and prints it with `std::to_string`, i.e. `"%f"`. The variable
/// stays empty while no argument was added.
pub fn combined_size(args: &[Pair]) -> String {
    if args.is_empty() {
        return String::new();
    }
    let total: u64 = args
        .iter()
        .map(|(n, v)| (n.len() as u64).saturating_add(v.len() as u64))
        .fold(0u64, u64::saturating_add);
    format!("{total}.000000")
}

// ---------------------------------------------------------------------------------------------
// Cookies
// ---------------------------------------------------------------------------------------------

/// C `isspace` in the C locale.
fn is_c_space(c: u8) -> bool {
    matches!(c, b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r')
}

/// `REQUEST_COOKIES` (and `REQUEST_COOKIES_NAMES`) from one `Cookie` header value, appended to
/// `out`. ModSecurity 3.0.9 treats every header whose name is `cookie` in any case this way,
/// each on its own, in header order, so several `Cookie` headers simply add up.
///
/// - The value is split on `;` (C++ `getline`: an empty last piece is dropped).
/// - Trailing whitespace is removed from the last piece only.
/// - Empty pieces are skipped.
/// - A piece splits at its first `=`; without `=` the piece is the name and the value is
///   empty.
/// - Leading whitespace is removed from the name; its trailing whitespace and all of the
///   value (leading spaces, quotes, `%XX`) are kept as sent.
/// - A piece whose name ends up empty (`=x`, `  =x`) is skipped.
pub fn parse_cookies(header: &[u8], out: &mut Vec<Pair>) {
    let mut pieces: Vec<&[u8]> = header.split(|&c| c == b';').collect();
    if pieces.last().is_some_and(|p| p.is_empty()) {
        pieces.pop();
    }
    if let Some(last) = pieces.last_mut() {
        while let Some((&c, rest)) = last.split_last() {
            if !is_c_space(c) {
                break;
            }
            *last = rest;
        }
    }
    for piece in pieces {
        if piece.is_empty() {
            continue;
        }
        let (mut name, value) = match piece.iter().position(|&c| c == b'=') {
            Some(eq) => (
                piece.get(..eq).unwrap_or_default(),
                piece.get(eq + 1..).unwrap_or_default(),
            ),
            None => (piece, &[][..]),
        };
        while let Some((&c, rest)) = name.split_first() {
            if !is_c_space(c) {
                break;
            }
            name = rest;
        }
        if name.is_empty() {
            continue;
        }
        out.push((name.to_vec(), value.to_vec()));
    }
}

// ---------------------------------------------------------------------------------------------
// Request target
// ---------------------------------------------------------------------------------------------

/// The variables ModSecurity derives from the request line (`msc_process_uri`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Target {
    /// `REQUEST_URI`: the target without `#fragment`, percent-decoded (query included); for
    /// an absolute-form target, from the first `/` after `scheme://host`.
    pub request_uri: Vec<u8>,
    /// `REQUEST_URI_RAW`: the target exactly as given (fragment included).
    pub request_uri_raw: Vec<u8>,
    /// `REQUEST_FILENAME` (`PATH_INFO` is the same): the decoded target up to its first `?`
    /// (an encoded `%3F` therefore ends it too). Not stripped of `scheme://host`.
    pub request_filename: Vec<u8>,
    /// `REQUEST_BASENAME`: after the last `/` or `\` of `request_filename`; empty when there is
    /// no such separator or nothing follows it.
    pub request_basename: Vec<u8>,
    /// `QUERY_STRING`: the raw text after the first raw `?` (fragment removed, not decoded).
    pub query_string: Vec<u8>,
    /// `REQUEST_LINE`: `method SP target SP HTTP/version`, the target as given.
    pub request_line: Vec<u8>,
    /// `REQUEST_PROTOCOL`: `HTTP/` + version, e.g. `HTTP/1.1`.
    pub request_protocol: Vec<u8>,
}

/// The path-derived variables of a request, as `msc_process_uri(uri, method, version)`
/// computes them. `http_version` is what the connector passes (`1.0`, `1.1`, `2.0`).
/// The query arguments are `parse_query(&target.query_string)`.
pub fn target(method: &str, uri: &str, http_version: &str) -> Target {
    let raw = uri.as_bytes();
    // Everything but the raw variables and the request line ignores a fragment.
    let no_fragment = match raw.iter().position(|&c| c == b'#') {
        Some(hash) => raw.get(..hash).unwrap_or_default(),
        None => raw,
    };
    let query_string = match no_fragment.iter().position(|&c| c == b'?') {
        Some(q) => no_fragment.get(q + 1..).unwrap_or_default().to_vec(),
        None => Vec::new(),
    };
    let decoded = decode_uri(no_fragment);
    let request_filename = match decoded.iter().position(|&c| c == b'?') {
        Some(q) => decoded.get(..q).unwrap_or_default().to_vec(),
        None => decoded.clone(),
    };
    let request_basename = match request_filename
        .iter()
        .rposition(|&c| c == b'/' || c == b'\\')
    {
        Some(sep) => request_filename.get(sep + 1..).unwrap_or_default().to_vec(),
        None => Vec::new(),
    };
    let request_uri = absolute_form_path(&decoded)
        .map(<[u8]>::to_vec)
        .unwrap_or_else(|| decoded.clone());

    let mut request_line = Vec::with_capacity(method.len() + raw.len() + http_version.len() + 7);
    request_line.extend_from_slice(method.as_bytes());
    request_line.push(b' ');
    request_line.extend_from_slice(raw);
    request_line.extend_from_slice(b" HTTP/");
    request_line.extend_from_slice(http_version.as_bytes());

    Target {
        request_uri,
        request_uri_raw: raw.to_vec(),
        request_filename,
        request_basename,
        query_string,
        request_line,
        request_protocol: [b"HTTP/".as_slice(), http_version.as_bytes()].concat(),
    }
}

/// For a decoded target that does not start with `/` and reads `<anything>:` immediately
/// followed by `//`, then a `/` somewhere after that: the text from that `/` on. This is
/// ModSecurity's absolute-form handling for `REQUEST_URI` (the colon is the first one; the
/// "host" may contain anything but `/`).
fn absolute_form_path(decoded: &[u8]) -> Option<&[u8]> {
    if decoded.first().is_none_or(|&c| c == b'/') {
        return None;
    }
    let colon = decoded.iter().position(|&c| c == b':')?;
    let after = decoded.get(colon + 1..)?;
    if !after.starts_with(b"//") {
        return None;
    }
    let netloc = colon + 3;
    let rest = decoded.get(netloc..)?;
    let slash = rest.iter().position(|&c| c == b'/')?;
    decoded.get(netloc + slash..)
}

// ---------------------------------------------------------------------------------------------
// JSON (yajl 2.1.0 + ModSecurity's JSON body processor)
// ---------------------------------------------------------------------------------------------

/// ModSecurity's default `SecRequestBodyJsonDepthLimit` (it keeps it as a `double`).
pub const JSON_DEFAULT_DEPTH_LIMIT: u64 = 10_000;

/// `ARGS` from a JSON body (ModSecurity's JSON processor, selected by
/// `ctl:requestBodyProcessor=JSON`), appended to `out` in document order, with the default
/// depth limit and no argument limit. See [`parse_json_limited`].
#[cfg(test)]
pub fn parse_json(body: &[u8], out: &mut Vec<Pair>) -> Result<(), String> {
    parse_json_limited(body, JSON_DEFAULT_DEPTH_LIMIT, usize::MAX, out)
}

/// `ARGS` from a JSON body, as libmodsecurity 3.0.9 with yajl 2.1.0 produces them.
///
/// Names: the top-level value is `json`; an object member is `<object path>.<key>`; an array
/// element is `<array path>.array_<index>`, where an array's path is its own name, so
/// `{"a":[1,{"b":2}]}` gives `json.a.array_0=1` and `json.a.array_1.b=2`, `[[1]]` gives
/// `json.array_0.array_0=1` and a top-level scalar `7` gives `json=7`. An empty key is named
/// `empty-key`. Keys are yajl-decoded (escapes resolved), never percent-decoded.
///
/// Values: strings decoded by yajl (`\uXXXX` → UTF-8, a lone high surrogate → `?`, `\u0000` →
/// a NUL byte), numbers as written (`-1.5e3`), `true`/`false`, and `null` as an empty value.
/// Empty objects and arrays give nothing.
///
/// Grammar (yajl with its defaults: UTF-8 checked in strings, no comments, no trailing
/// garbage, one value): whitespace is space, `\t \n \v \f \r`; anything after the value is an
/// error except whitespace and, oddly, an unterminated string.
///
/// On a parse error the arguments produced before it stay in `out` and the error is the value
/// ModSecurity gives `REQBODY_ERROR_MSG` (and `REQBODY_PROCESSOR_ERROR_MSG`), e.g.
/// `"JSON parsing error: parse error: premature EOF\n"` — with yajl's trailing newline; a
/// container nested deeper than `max_depth` gives `"JSON parsing error: parse error: client
/// cancelled parse via callback return value\n. Parsing depth limit exceeded"`. When `Err` is
/// returned ModSecurity sets `REQBODY_ERROR=1`, otherwise `0`. An empty body is not an error
/// (ModSecurity ignores the error for a zero-length body) and gives no argument.
///
/// `room` is how many more arguments `SecArgumentsLimit` allows: the first argument over it
/// cancels the parse (error `"JSON parsing error: parse error: client cancelled parse via
/// callback return value\n"`).
#[cfg(test)]
pub fn parse_json_limited(
    body: &[u8],
    max_depth: u64,
    room: usize,
    out: &mut Vec<Pair>,
) -> Result<(), String> {
    match parse_json_budgeted(body, max_depth, room, usize::MAX, out) {
        Ok(()) => Ok(()),
        Err(JsonFailure::Parse(message)) => Err(message),
        // Unreachable with an unlimited budget; kept total for safety.
        Err(JsonFailure::OverBudget) => Ok(()),
    }
}

/// Why [`parse_json_budgeted`] stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JsonFailure {
    /// What libmodsecurity reports too: the `REQBODY_ERROR_MSG` text (see
    /// [`parse_json_limited`]).
    Parse(String),
    /// Not a libmodsecurity outcome: the arguments would exceed the caller's byte budget.
    /// ModSecurity builds every name from all enclosing containers' names, so a body can yield
    /// output quadratic in its size (`{"<long key>":[1,1,1,...]}`); a caller that must bound
    /// memory stops here and handles the request some other way.
    OverBudget,
}

/// [`parse_json_limited`] with a cap on the total bytes (names plus values) appended to
/// `out`; over it the parse stops with [`JsonFailure::OverBudget`] (with `out` holding what
/// fitted). Within the budget the result is exactly libmodsecurity's.
pub fn parse_json_budgeted(
    body: &[u8],
    max_depth: u64,
    room: usize,
    max_bytes: usize,
    out: &mut Vec<Pair>,
) -> Result<(), JsonFailure> {
    if body.is_empty() {
        return Ok(());
    }
    let mut parser = JsonParser {
        lexer: Lexer { body, pos: 0 },
        states: vec![State::Start],
        sink: JsonSink {
            containers: Vec::new(),
            current_key: Vec::new(),
            depth: 0,
            max_depth,
            depth_exceeded: false,
            room,
            budget: max_bytes,
            out,
        },
    };
    match parser.run() {
        Ok(()) => Ok(()),
        Err(error) if error.kind == OVER_BUDGET => Err(JsonFailure::OverBudget),
        Err(error) => {
            let mut message = String::from("JSON parsing error: ");
            message.push_str(error.kind);
            message.push_str(" error: ");
            message.push_str(error.text);
            message.push('\n');
            if parser.sink.depth_exceeded {
                message.push_str(". Parsing depth limit exceeded");
            }
            Err(JsonFailure::Parse(message))
        }
    }
}

/// The pseudo error kind of a blown [`parse_json_budgeted`] budget.
const OVER_BUDGET: &str = "budget";

/// yajl's tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tok {
    /// The input ran out (possibly in the middle of a token).
    Eof,
    Error(&'static str),
    OpenObject,
    CloseObject,
    OpenArray,
    CloseArray,
    Comma,
    Colon,
    Bool(bool),
    Null,
    /// The text between the quotes, and whether it holds escapes.
    Str(usize, usize, bool),
    /// The number's text.
    Number(usize, usize),
}

/// yajl's lexer over the body followed by the single space yajl feeds itself when the parse
/// is completed (`yajl_complete_parse`): lexing the concatenation in one go gives the same
/// tokens as yajl's two chunks.
struct Lexer<'a> {
    body: &'a [u8],
    pos: usize,
}

impl Lexer<'_> {
    fn at_end(&self) -> bool {
        self.pos > self.body.len()
    }

    /// The next byte of body + " ", or `None` past it.
    fn next(&mut self) -> Option<u8> {
        let c = match self.body.get(self.pos) {
            Some(&c) => c,
            None if self.pos == self.body.len() => b' ',
            None => return None,
        };
        self.pos += 1;
        Some(c)
    }

    fn unread(&mut self) {
        self.pos = self.pos.saturating_sub(1);
    }

    fn lex(&mut self) -> Tok {
        loop {
            let Some(c) = self.next() else {
                return Tok::Eof;
            };
            return match c {
                b'{' => Tok::OpenObject,
                b'}' => Tok::CloseObject,
                b'[' => Tok::OpenArray,
                b']' => Tok::CloseArray,
                b',' => Tok::Comma,
                b':' => Tok::Colon,
                b'\t' | b'\n' | 0x0b | 0x0c | b'\r' | b' ' => continue,
                b't' => self.literal(b"rue", Tok::Bool(true)),
                b'f' => self.literal(b"alse", Tok::Bool(false)),
                b'n' => self.literal(b"ull", Tok::Null),
                b'"' => self.string(),
                b'-' | b'0'..=b'9' => {
                    self.unread();
                    self.number()
                }
                b'/' => {
                    Tok::Error("probable comment found in input text, comments are not enabled.")
                }
                _ => Tok::Error("invalid char in json text."),
            };
        }
    }

    fn literal(&mut self, rest: &[u8], tok: Tok) -> Tok {
        for &want in rest {
            match self.next() {
                None => return Tok::Eof,
                Some(c) if c != want => return Tok::Error("invalid string in json text."),
                Some(_) => {}
            }
        }
        tok
    }

    fn string(&mut self) -> Tok {
        let start = self.pos;
        let mut escapes = false;
        loop {
            let Some(c) = self.next() else {
                return Tok::Eof;
            };
            match c {
                b'"' => return Tok::Str(start, self.pos - 1, escapes),
                b'\\' => {
                    escapes = true;
                    let Some(e) = self.next() else {
                        return Tok::Eof;
                    };
                    if e == b'u' {
                        for _ in 0..4 {
                            let Some(h) = self.next() else {
                                return Tok::Eof;
                            };
                            if hex_value(h).is_none() {
                                return Tok::Error(
                                    "invalid (non-hex) character occurs after '\\u' inside string.",
                                );
                            }
                        }
                    } else if !matches!(e, b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') {
                        return Tok::Error(
                            "inside a string, '\\' occurs before a character which it may not.",
                        );
                    }
                }
                0x00..=0x1f => return Tok::Error("invalid character inside string."),
                0x80..=0xff => {
                    // yajl's UTF-8 check: the lead byte's form says how many continuation
                    // bytes (10xxxxxx) follow; overlong forms and surrogates pass.
                    let continuation = if c >> 5 == 0b110 {
                        1
                    } else if c >> 4 == 0b1110 {
                        2
                    } else if c >> 3 == 0b11110 {
                        3
                    } else {
                        return Tok::Error("invalid bytes in UTF8 string.");
                    };
                    for _ in 0..continuation {
                        let Some(b) = self.next() else {
                            return Tok::Eof;
                        };
                        if b >> 6 != 0b10 {
                            return Tok::Error("invalid bytes in UTF8 string.");
                        }
                    }
                }
                _ => {}
            }
        }
    }

    fn number(&mut self) -> Tok {
        let start = self.pos;
        let Some(mut c) = self.next() else {
            return Tok::Eof;
        };
        if c == b'-' {
            let Some(n) = self.next() else {
                return Tok::Eof;
            };
            c = n;
        }
        if c == b'0' {
            let Some(n) = self.next() else {
                return Tok::Eof;
            };
            c = n;
        } else if c.is_ascii_digit() {
            loop {
                let Some(n) = self.next() else {
                    return Tok::Eof;
                };
                c = n;
                if !c.is_ascii_digit() {
                    break;
                }
            }
        } else {
            self.unread();
            return Tok::Error("malformed number, a digit is required after the minus sign.");
        }
        if c == b'.' {
            let mut digits = 0usize;
            let Some(n) = self.next() else {
                return Tok::Eof;
            };
            c = n;
            while c.is_ascii_digit() {
                digits += 1;
                let Some(n) = self.next() else {
                    return Tok::Eof;
                };
                c = n;
            }
            if digits == 0 {
                self.unread();
                return Tok::Error(
                    "malformed number, a digit is required after the decimal point.",
                );
            }
        }
        if c == b'e' || c == b'E' {
            let Some(n) = self.next() else {
                return Tok::Eof;
            };
            c = n;
            if c == b'+' || c == b'-' {
                let Some(n) = self.next() else {
                    return Tok::Eof;
                };
                c = n;
            }
            if c.is_ascii_digit() {
                loop {
                    let Some(n) = self.next() else {
                        return Tok::Eof;
                    };
                    if !n.is_ascii_digit() {
                        break;
                    }
                }
            } else {
                self.unread();
                return Tok::Error("malformed number, a digit is required after the exponent.");
            }
        }
        // Numbers are only complete once the next byte is seen: give it back.
        self.unread();
        Tok::Number(start, self.pos)
    }
}

/// yajl's parser states (`yajl_state_*`, without the multiple-values one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Start,
    ParseComplete,
    MapStart,
    MapNeedKey,
    MapSep,
    MapNeedVal,
    MapGotVal,
    ArrayStart,
    ArrayNeedVal,
    ArrayGotVal,
}

/// A yajl error: its kind (`lexical` or `parse`) and text.
#[derive(Debug, Clone, Copy)]
struct JsonError {
    kind: &'static str,
    text: &'static str,
}

const CANCELLED: &str = "client cancelled parse via callback return value";

fn parse_error(text: &'static str) -> JsonError {
    JsonError {
        kind: "parse",
        text,
    }
}

struct JsonParser<'a, 'o> {
    lexer: Lexer<'a>,
    states: Vec<State>,
    sink: JsonSink<'o>,
}

impl JsonParser<'_, '_> {
    fn set(&mut self, state: State) {
        if let Some(top) = self.states.last_mut() {
            *top = state;
        }
    }

    fn current(&self) -> State {
        self.states.last().copied().unwrap_or(State::ParseComplete)
    }

    /// The decoded bytes of a string token.
    fn text(&self, start: usize, end: usize, escapes: bool) -> Vec<u8> {
        let raw = self.lexer.body.get(start..end).unwrap_or_default();
        if escapes {
            decode_json_string(raw)
        } else {
            raw.to_vec()
        }
    }

    /// The next token where the grammar needs one: the end of the body is premature, and a
    /// lexical error is reported as yajl reports it.
    fn token(&mut self) -> Result<Tok, JsonError> {
        match self.lexer.lex() {
            Tok::Eof => Err(parse_error("premature EOF")),
            Tok::Error(text) => Err(JsonError {
                kind: "lexical",
                text,
            }),
            tok => Ok(tok),
        }
    }

    fn run(&mut self) -> Result<(), JsonError> {
        loop {
            let state = self.current();
            match state {
                State::ParseComplete => {
                    if self.lexer.at_end() {
                        return Ok(());
                    }
                    match self.lexer.lex() {
                        Tok::Eof => return Ok(()),
                        _ => return Err(parse_error("trailing garbage")),
                    }
                }
                State::Start | State::MapNeedVal | State::ArrayNeedVal | State::ArrayStart => {
                    let mut push = None;
                    match self.token()? {
                        Tok::Str(start, end, escapes) => {
                            let value = self.text(start, end, escapes);
                            self.sink.value(value)?;
                        }
                        Tok::Bool(b) => {
                            let value = if b {
                                b"true".to_vec()
                            } else {
                                b"false".to_vec()
                            };
                            self.sink.value(value)?;
                        }
                        Tok::Null => self.sink.value(Vec::new())?,
                        Tok::Number(start, end) => {
                            let value = self.lexer.body.get(start..end).unwrap_or_default();
                            self.sink.value(value.to_vec())?;
                        }
                        Tok::OpenObject => {
                            self.sink.open(false)?;
                            push = Some(State::MapStart);
                        }
                        Tok::OpenArray => {
                            self.sink.open(true)?;
                            push = Some(State::ArrayStart);
                        }
                        Tok::CloseArray if state == State::ArrayStart => {
                            self.sink.close();
                            self.states.pop();
                            continue;
                        }
                        // A closing bracket, colon or comma (`token` took the end and errors).
                        _ => {
                            return Err(parse_error("unallowed token at this point in JSON text"));
                        }
                    }
                    self.set(match state {
                        State::Start => State::ParseComplete,
                        State::MapNeedVal => State::MapGotVal,
                        _ => State::ArrayGotVal,
                    });
                    if let Some(next) = push {
                        self.states.push(next);
                    }
                }
                State::MapStart | State::MapNeedKey => match self.token()? {
                    Tok::Str(start, end, escapes) => {
                        self.sink.current_key = self.text(start, end, escapes);
                        self.set(State::MapSep);
                    }
                    Tok::CloseObject if state == State::MapStart => {
                        self.sink.close();
                        self.states.pop();
                    }
                    _ => return Err(parse_error("invalid object key (must be a string)")),
                },
                State::MapSep => match self.token()? {
                    Tok::Colon => self.set(State::MapNeedVal),
                    _ => {
                        return Err(parse_error(
                            "object key and value must be separated by a colon (':')",
                        ));
                    }
                },
                State::MapGotVal => match self.token()? {
                    Tok::CloseObject => {
                        self.sink.close();
                        self.states.pop();
                    }
                    Tok::Comma => self.set(State::MapNeedKey),
                    _ => {
                        return Err(parse_error(
                            "after key and value, inside map, I expect ',' or '}'",
                        ));
                    }
                },
                State::ArrayGotVal => match self.token()? {
                    Tok::CloseArray => {
                        self.sink.close();
                        self.states.pop();
                    }
                    Tok::Comma => self.set(State::ArrayNeedVal),
                    _ => return Err(parse_error("after array element, I expect ',' or ']'")),
                },
            }
        }
    }
}

/// One open object or array: its name, and for an array the index of its next element.
struct Container {
    name: Vec<u8>,
    next_index: Option<usize>,
}

/// ModSecurity's JSON body processor: turns yajl's events into argument names.
struct JsonSink<'o> {
    containers: Vec<Container>,
    /// The last object key seen and not yet used.
    current_key: Vec<u8>,
    depth: u64,
    max_depth: u64,
    depth_exceeded: bool,
    room: usize,
    /// Bytes of names and values still allowed in `out`.
    budget: usize,
    out: &'o mut Vec<Pair>,
}

impl JsonSink<'_> {
    fn top_is_array(&self) -> bool {
        self.containers
            .last()
            .is_some_and(|c| c.next_index.is_some())
    }

    /// The name the next value or container takes in its parent: `json` at the top, the
    /// pending key in an object (consumed), `empty-key` for an empty key in an object, nothing
    /// in an array.
    fn take_key(&mut self) -> Vec<u8> {
        if self.containers.is_empty() {
            return b"json".to_vec();
        }
        if self.current_key.is_empty() {
            if self.top_is_array() {
                return Vec::new();
            }
            return b"empty-key".to_vec();
        }
        std::mem::take(&mut self.current_key)
    }

    fn value(&mut self, value: Vec<u8>) -> Result<(), JsonError> {
        let mut name = Vec::new();
        for c in &self.containers {
            name.extend_from_slice(&c.name);
            match c.next_index {
                Some(i) => {
                    name.extend_from_slice(b".array_");
                    name.extend_from_slice(i.to_string().as_bytes());
                }
                None => name.push(b'.'),
            }
        }
        if let Some(Container {
            next_index: Some(i),
            ..
        }) = self.containers.last_mut()
        {
            *i += 1;
        } else {
            name.extend_from_slice(&self.take_key());
        }
        if self.room == 0 {
            return Err(parse_error(CANCELLED));
        }
        self.room -= 1;
        let size = name.len().saturating_add(value.len());
        if size > self.budget {
            return Err(JsonError {
                kind: OVER_BUDGET,
                text: "",
            });
        }
        self.budget -= size;
        self.out.push((name, value));
        Ok(())
    }

    fn open(&mut self, array: bool) -> Result<(), JsonError> {
        let name = self.take_key();
        self.containers.push(Container {
            name,
            next_index: array.then_some(0),
        });
        self.depth += 1;
        if self.depth > self.max_depth {
            self.depth_exceeded = true;
            return Err(parse_error(CANCELLED));
        }
        Ok(())
    }

    fn close(&mut self) {
        self.depth = self.depth.saturating_sub(1);
        if self.containers.pop().is_none() {
            return;
        }
        if let Some(Container {
            next_index: Some(i),
            ..
        }) = self.containers.last_mut()
        {
            *i += 1;
        }
    }
}

/// yajl's decoding of a string that contains escapes (`yajl_string_decode`, as patched by
/// Debian for CVE-2017-16516). The lexer guarantees every `\` starts a valid escape and every
/// `\u` has four hex digits.
fn decode_json_string(raw: &[u8]) -> Vec<u8> {
    let hex4 = |at: usize| -> u32 {
        (0..4).fold(0u32, |acc, k| {
            let digit = raw.get(at + k).copied().and_then(hex_value).unwrap_or(0);
            acc << 4 | u32::from(digit)
        })
    };
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while let Some(&c) = raw.get(i) {
        if c != b'\\' {
            out.push(c);
            i += 1;
            continue;
        }
        let Some(&e) = raw.get(i + 1) else {
            out.push(b'?');
            break;
        };
        let simple = match e {
            b'r' => Some(b'\r'),
            b'n' => Some(b'\n'),
            b'\\' => Some(b'\\'),
            b'/' => Some(b'/'),
            b'"' => Some(b'"'),
            b'f' => Some(0x0c),
            b'b' => Some(0x08),
            b't' => Some(b'\t'),
            _ => None,
        };
        if let Some(b) = simple {
            out.push(b);
            i += 2;
            continue;
        }
        if e != b'u' {
            out.push(b'?');
            i += 2;
            continue;
        }
        // `\uXXXX`: i + 2 .. i + 6 are the digits.
        let mut codepoint = hex4(i + 2);
        let mut next = i + 6;
        if codepoint & 0xfc00 == 0xd800 {
            if raw.get(next) == Some(&b'\\') && raw.get(next + 1) == Some(&b'u') {
                let low = hex4(next + 2);
                // yajl does not check that `low` is a low surrogate.
                codepoint = ((codepoint & 0x3f) << 10)
                    | ((((codepoint >> 6) & 0xf) + 1) << 16)
                    | (low & 0x3ff);
                next += 6;
            } else {
                out.push(b'?');
                i = next;
                continue;
            }
        }
        push_utf8(codepoint, &mut out);
        i = next;
    }
    out
}

/// yajl's `Utf32toUtf8` (no validity checks; a `\u0000` gives one NUL byte).
fn push_utf8(cp: u32, out: &mut Vec<u8>) {
    // The `as u8` casts keep the low bits on purpose, as the C code's `(char)` casts do.
    if cp < 0x80 {
        out.push(cp as u8);
    } else if cp < 0x800 {
        out.push((cp >> 6 | 0xc0) as u8);
        out.push((cp & 0x3f | 0x80) as u8);
    } else if cp < 0x10000 {
        out.push((cp >> 12 | 0xe0) as u8);
        out.push((cp >> 6 & 0x3f | 0x80) as u8);
        out.push((cp & 0x3f | 0x80) as u8);
    } else if cp < 0x20_0000 {
        out.push((cp >> 18 | 0xf0) as u8);
        out.push((cp >> 12 & 0x3f | 0x80) as u8);
        out.push((cp >> 6 & 0x3f | 0x80) as u8);
        out.push((cp & 0x3f | 0x80) as u8);
    } else {
        out.push(b'?');
    }
}

// ---------------------------------------------------------------------------------------------
// Collection order
// ---------------------------------------------------------------------------------------------

/// The bucket counts libstdc++ 12's `unordered_multimap` goes through after ModSecurity's
/// `reserve(10)`: it starts at 11 and, when an insertion would exceed one element per bucket,
/// grows to `_M_next_bkt(2 * count)` (values read from the installed libstdc++).
const BUCKET_CHAIN: [usize; 29] = [
    11, 23, 47, 97, 199, 409, 823, 1741, 3739, 7517, 15173, 30727, 62233, 126271, 256279, 520241,
    1056323, 2144977, 4355707, 8844859, 17961079, 36473443, 74066549, 150406843, 305431229,
    620239453, 1259520799, 2557710269, 6442450933,
];

/// ModSecurity's `MyHash` for collection keys: the sum of C `tolower()` of each `char` (signed
/// on x86-64, C locale): ASCII letters are lowered, bytes 0x80..=0xFE count as their unsigned
/// value, and 0xFF is `EOF` (-1).
fn key_hash(key: &[u8]) -> u64 {
    key.iter().fold(0u64, |h, &b| {
        let v = match b {
            0xff => u64::MAX,
            _ => u64::from(b.to_ascii_lowercase()),
        };
        h.wrapping_add(v)
    })
}

const NIL: usize = usize::MAX;
/// The "before begin" pseudo node of libstdc++'s singly linked list.
const HEAD: usize = usize::MAX - 1;

/// A model of libstdc++'s `_Hashtable` for multi keys (`_M_insert_multi_node`,
/// `_M_insert_bucket_begin`, `_M_rehash_aux`), keeping only the links between nodes. Two
/// additions make it linear-time without changing the result: `prev` links (the node before a
/// run of equivalent keys is what `_M_find_before_node` looks for) and a map from a key's
/// lowercase form to the first node of its run (equivalent keys always form one contiguous run
/// whose first node survives rehashes; a few keys are compared one by one instead, which
/// spares a request with a handful of headers the map).
struct MultiMapModel {
    codes: Vec<u64>,
    next: Vec<usize>,
    prev: Vec<usize>,
    head: usize,
    /// Per bucket: the node before its first node (`HEAD` or a node), or `NIL` when empty.
    buckets: Vec<usize>,
    chain_index: usize,
    /// Lower-case key → the first node of its run; `None` for a collection of at most
    /// [`MultiMapModel::FEW`] keys.
    runs: Option<std::collections::HashMap<Vec<u8>, usize>>,
}

impl MultiMapModel {
    const FEW: usize = 8;

    /// A model for a collection that will hold `keys` keys.
    fn new(keys: usize) -> Self {
        MultiMapModel {
            codes: Vec::new(),
            next: Vec::new(),
            prev: Vec::new(),
            head: NIL,
            buckets: vec![NIL; BUCKET_CHAIN[0]],
            chain_index: 0,
            runs: (keys > Self::FEW).then(std::collections::HashMap::new),
        }
    }

    fn bucket_in(&self, node: usize, buckets: usize) -> usize {
        let code = self.codes.get(node).copied().unwrap_or(0);
        (code % (buckets.max(1) as u64)) as usize
    }

    fn next_of(&self, node: usize) -> usize {
        if node == HEAD {
            self.head
        } else {
            self.next.get(node).copied().unwrap_or(NIL)
        }
    }

    /// `node->_M_nxt = to` (or the list head for `HEAD`), keeping `prev` in step.
    fn set_next(&mut self, node: usize, to: usize) {
        if node == HEAD {
            self.head = to;
        } else if let Some(slot) = self.next.get_mut(node) {
            *slot = to;
        }
        if let Some(slot) = self.prev.get_mut(to) {
            *slot = node;
        }
    }

    /// Links `node` right after `before`.
    fn link_after(&mut self, before: usize, node: usize) {
        let after = self.next_of(before);
        self.set_next(node, after);
        self.set_next(before, node);
    }

    /// `_M_rehash_aux(n, false_type)`: relinks every node into `n` buckets, keeping runs of
    /// nodes of one bucket together and in order.
    fn rehash(&mut self, n: usize) {
        let mut buckets = vec![NIL; n.max(1)];
        let n = buckets.len();
        let mut p = self.head;
        self.head = NIL;
        let mut begin_bucket = 0usize;
        let mut prev_bucket = 0usize;
        let mut prev = NIL;
        let mut check_bucket = false;
        while p != NIL {
            let following = self.next_of(p);
            let b = self.bucket_in(p, n);
            if prev != NIL && prev_bucket == b {
                self.link_after(prev, p);
                check_bucket = true;
            } else {
                if check_bucket {
                    let after = self.next_of(prev);
                    if after != NIL {
                        let nb = self.bucket_in(after, n);
                        if nb != prev_bucket
                            && let Some(slot) = buckets.get_mut(nb)
                        {
                            *slot = prev;
                        }
                    }
                    check_bucket = false;
                }
                let before = buckets.get(b).copied().unwrap_or(NIL);
                if before == NIL {
                    let old_head = self.head;
                    self.link_after(HEAD, p);
                    if let Some(slot) = buckets.get_mut(b) {
                        *slot = HEAD;
                    }
                    if old_head != NIL
                        && let Some(slot) = buckets.get_mut(begin_bucket)
                    {
                        *slot = p;
                    }
                    begin_bucket = b;
                } else {
                    self.link_after(before, p);
                }
            }
            prev = p;
            prev_bucket = b;
            p = following;
        }
        if check_bucket && prev != NIL {
            let after = self.next_of(prev);
            if after != NIL {
                let nb = self.bucket_in(after, n);
                if nb != prev_bucket
                    && let Some(slot) = buckets.get_mut(nb)
                {
                    *slot = prev;
                }
            }
        }
        self.buckets = buckets;
    }

    /// `emplace(key, value)` without hint: `_M_insert_multi_node`, for `keys[node]` (the keys
    /// before it already inserted).
    fn insert(&mut self, keys: &[&[u8]], node: usize) {
        let key = keys.get(node).copied().unwrap_or_default();
        if node + 1 > self.buckets.len()
            && let Some(&n) = BUCKET_CHAIN.get(self.chain_index + 1)
        {
            self.chain_index += 1;
            self.rehash(n);
        }
        self.codes.push(key_hash(key));
        self.next.push(NIL);
        self.prev.push(NIL);
        let b = self.bucket_in(node, self.buckets.len());
        // The newest equivalent key is the first node of its run.
        let lower = self.runs.as_ref().map(|_| key.to_ascii_lowercase());
        let first = match (&self.runs, &lower) {
            (Some(runs), Some(lower)) => runs.get(lower).copied(),
            _ => keys
                .get(..node)
                .unwrap_or_default()
                .iter()
                .rposition(|k| k.eq_ignore_ascii_case(key)),
        };
        match first {
            // An equivalent key exists: go just before the first one of its run.
            Some(first) => {
                let before = self.prev.get(first).copied().unwrap_or(HEAD);
                self.link_after(before, node);
            }
            None => {
                let before = self.buckets.get(b).copied().unwrap_or(NIL);
                if before != NIL {
                    // A non-empty bucket: become its first node.
                    self.link_after(before, node);
                } else {
                    // An empty bucket: become the first node of the whole list, and the
                    // bucket of the former first node now starts after this one.
                    let old_head = self.head;
                    self.link_after(HEAD, node);
                    if old_head != NIL {
                        let ob = self.bucket_in(old_head, self.buckets.len());
                        if let Some(slot) = self.buckets.get_mut(ob) {
                            *slot = node;
                        }
                    }
                    if let Some(slot) = self.buckets.get_mut(b) {
                        *slot = HEAD;
                    }
                }
            }
        }
        if let (Some(runs), Some(lower)) = (&mut self.runs, lower) {
            runs.insert(lower, node);
        }
    }

    fn iteration(&self) -> Vec<usize> {
        let mut order = Vec::with_capacity(self.codes.len());
        let mut p = self.head;
        while p != NIL && order.len() < self.codes.len() {
            order.push(p);
            p = self.next_of(p);
        }
        order
    }
}

/// The order in which ModSecurity 3.0.9 iterates a collection (`ARGS`, `ARGS_GET`,
/// `ARGS_POST`, `REQUEST_COOKIES`, `REQUEST_HEADERS`, and their `_NAMES`), given its keys in
/// insertion order: indices into `keys`.
///
/// Collections are `std::unordered_multimap<std::string, ..., MyHash, MyEqual>` with
/// `reserve(10)`; `MyHash` sums the (lowered) bytes, so the order depends on the keys, the
/// bucket count (11, 23, 47, ... as the collection grows) and libstdc++'s linking rules.
///
/// A rule that targets the whole collection (`ARGS`, `ARGS_NAMES`) or a regex selection
/// (`ARGS:/re/`) sees the members in the *reverse* of this order (ModSecurity inserts each at
/// the front of its list), which is [`rule_order`]. A rule on one key (`ARGS:id`, matched
/// case-insensitively) sees the members with that key in this order, i.e. newest first.
/// Each collection has its own table: `ARGS` holds the query then the body arguments,
/// `ARGS_GET` only the query ones, and so on.
pub fn collection_order(keys: &[&[u8]]) -> Vec<usize> {
    let mut model = MultiMapModel::new(keys.len());
    for node in 0..keys.len() {
        model.insert(keys, node);
    }
    model.iteration()
}

/// The order in which a rule targeting a whole collection (or `COLLECTION:/regex/`) sees its
/// members: the reverse of [`collection_order`]. For `ARGS` with query `a=1&b=2` this is
/// `a`, `b` (for small collections of distinct keys in distinct buckets it is often, but not
/// always, the request order).
pub fn rule_order(keys: &[&[u8]]) -> Vec<usize> {
    let mut order = collection_order(keys);
    order.reverse();
    order
}

#[cfg(test)]
mod tests {
    //! Every expected value below was read back from libmodsecurity 3.0.9 (Debian bookworm)
    //! through a differential harness.

    use super::*;

    fn pairs(list: &[(&[u8], &[u8])]) -> Vec<Pair> {
        list.iter().map(|(n, v)| (n.to_vec(), v.to_vec())).collect()
    }

    fn args(q: &[u8]) -> Vec<Pair> {
        let mut out = Vec::new();
        parse_query(q, &mut out);
        out
    }

    fn cookies(headers: &[&[u8]]) -> Vec<Pair> {
        let mut out = Vec::new();
        for h in headers {
            parse_cookies(h, &mut out);
        }
        out
    }

    fn json(body: &[u8]) -> (Vec<Pair>, Result<(), String>) {
        let mut out = Vec::new();
        let result = parse_json(body, &mut out);
        (out, result)
    }

    #[test]
    fn arguments_decode_percent_and_plus_and_keep_bad_escapes() {
        assert_eq!(decode_arg(b"a+b%41%4"), b"a bA%4");
        assert_eq!(decode_arg_checked(b"+%2b+"), (b" + ".to_vec(), false));
        assert_eq!(decode_arg_checked(b"%zz"), (b"%zz".to_vec(), true));
        assert_eq!(decode_arg_checked(b"%"), (b"%".to_vec(), true));
        assert_eq!(decode_arg(b"%00%ff%C3%A9"), b"\x00\xff\xc3\xa9");
        // The path decoding keeps `+`.
        assert_eq!(decode_uri(b"/a+b%2f%3F%zz%4"), b"/a+b/?%zz%4");
    }

    #[test]
    fn query_strings_split_like_modsecurity() {
        assert_eq!(
            args(b"x=1&y&&=z&a+b=%41%2"),
            pairs(&[
                (b"x", b"1"),
                (b"y", b""),
                (b"", b""),
                (b"", b"z"),
                (b"a b", b"A%2"),
            ])
        );
        assert_eq!(args(b""), pairs(&[]));
        assert_eq!(args(b"a=1&"), pairs(&[(b"a", b"1")]));
        assert_eq!(args(b"&"), pairs(&[(b"", b"")]));
        assert_eq!(args(b"&&"), pairs(&[(b"", b""), (b"", b"")]));
        assert_eq!(args(b"a=1;b=2"), pairs(&[(b"a", b"1;b=2")]));
        assert_eq!(args(b"a==b=c"), pairs(&[(b"a", b"=b=c")]));
        assert_eq!(
            args(b"a=1&A=2&a=3"),
            pairs(&[(b"a", b"1"), (b"A", b"2"), (b"a", b"3")])
        );
        let mut form = Vec::new();
        parse_form(b"a=1&b=2\r\n", &mut form);
        assert_eq!(form, pairs(&[(b"a", b"1"), (b"b", b"2\r\n")]));

        let mut out = Vec::new();
        let report = parse_args_limited(b"a=1&b=%&c=3", b'&', 2, &mut out);
        assert_eq!(out, pairs(&[(b"a", b"1"), (b"b", b"%")]));
        assert_eq!(
            report,
            ArgsReport {
                urlencoded_error: true,
                dropped: 1
            }
        );
        let mut out = Vec::new();
        parse_args_limited(b";a;;b=;", b';', usize::MAX, &mut out);
        assert_eq!(
            out,
            pairs(&[(b"", b""), (b"a", b""), (b"", b""), (b"b", b"")])
        );
    }

    #[test]
    fn combined_size_is_printed_as_a_double() {
        assert_eq!(combined_size(&[]), "");
        let all = args(b"x=1&y&&=z&a+b=%41%2");
        assert_eq!(combined_size(&all), "10.000000");
    }

    #[test]
    fn cookies_split_trim_and_skip_like_modsecurity() {
        assert_eq!(
            cookies(&[b"a=1; b = 2 ;c;=d; e=\" q \"  "]),
            pairs(&[
                (b"a", b"1"),
                (b"b ", b" 2 "),
                (b"c", b""),
                (b"e", b"\" q \"")
            ])
        );
        assert_eq!(cookies(&[b";;a=1;;"]), pairs(&[(b"a", b"1")]));
        assert_eq!(cookies(&[b"a=1; "]), pairs(&[(b"a", b"1")]));
        assert_eq!(cookies(&[b" a "]), pairs(&[(b"a", b"")]));
        assert_eq!(cookies(&[b"  =x; a=1=2"]), pairs(&[(b"a", b"1=2")]));
        assert_eq!(cookies(&[b"a=%41+%42"]), pairs(&[(b"a", b"%41+%42")]));
        assert_eq!(cookies(&[b"a=1\t \r\n"]), pairs(&[(b"a", b"1")]));
        assert_eq!(cookies(&[b"", b";", b" "]), pairs(&[]));
        assert_eq!(
            cookies(&[b"a=1; b=2", b"a=3", b"c=4 "]),
            pairs(&[(b"a", b"1"), (b"b", b"2"), (b"a", b"3"), (b"c", b"4")])
        );
    }

    #[test]
    fn targets_decode_the_whole_uri_and_cut_at_the_decoded_question_mark() {
        let t = target("POST", "/a%2fb/c%3Fd.php?x=1&y&&=z&a+b=%41%2", "1.1");
        assert_eq!(t.request_uri, b"/a/b/c?d.php?x=1&y&&=z&a+b=A%2");
        assert_eq!(t.request_uri_raw, b"/a%2fb/c%3Fd.php?x=1&y&&=z&a+b=%41%2");
        assert_eq!(t.request_filename, b"/a/b/c");
        assert_eq!(t.request_basename, b"c");
        assert_eq!(t.query_string, b"x=1&y&&=z&a+b=%41%2");
        assert_eq!(
            t.request_line,
            b"POST /a%2fb/c%3Fd.php?x=1&y&&=z&a+b=%41%2 HTTP/1.1"
        );
        assert_eq!(t.request_protocol, b"HTTP/1.1");

        let t = target("GET", "/a?x=1#frag?y=2", "2.0");
        assert_eq!(t.request_uri, b"/a?x=1");
        assert_eq!(t.request_uri_raw, b"/a?x=1#frag?y=2");
        assert_eq!(t.query_string, b"x=1");
        assert_eq!(t.request_line, b"GET /a?x=1#frag?y=2 HTTP/2.0");
        assert_eq!(t.request_protocol, b"HTTP/2.0");

        let t = target("GET", "http://host/path/x.php?q=1", "1.1");
        assert_eq!(t.request_uri, b"/path/x.php?q=1");
        assert_eq!(t.request_filename, b"http://host/path/x.php");
        assert_eq!(t.request_basename, b"x.php");
        assert_eq!(t.query_string, b"q=1");

        let t = target("GET", "http://host?x=1", "1.1");
        assert_eq!(t.request_uri, b"http://host?x=1");
        let t = target("GET", "http:%2F%2Fh/x", "1.1");
        assert_eq!(t.request_uri, b"/x");

        let t = target("GET", "abc", "1.0");
        assert_eq!(t.request_filename, b"abc");
        assert_eq!(t.request_basename, b"");
        let t = target("GET", "/a\\b\\c.txt", "1.0");
        assert_eq!(t.request_basename, b"c.txt");
        let t = target("GET", "/a/b/", "1.0");
        assert_eq!(t.request_basename, b"");
        let t = target("GET", "/a+b?c+d=e+f", "1.1");
        assert_eq!(t.request_uri, b"/a+b?c+d=e+f");
        assert_eq!(t.request_filename, b"/a+b");
        assert_eq!(args(&t.query_string), pairs(&[(b"c d", b"e f")]));
        let t = target("GET", "", "1.1");
        assert_eq!(
            t,
            Target {
                request_line: b"GET  HTTP/1.1".to_vec(),
                request_protocol: b"HTTP/1.1".to_vec(),
                ..Target::default()
            }
        );
    }

    #[test]
    fn json_names_values_and_escapes() {
        let (out, result) = json(
            br#"{"a":"\uD800abc","b":"\uD800","c":"\uD800\u0041x","d":[1,[2,{"":null}],{"e":true}],"":{"f":-1.5e3}}"#,
        );
        assert_eq!(result, Ok(()));
        assert_eq!(
            out,
            pairs(&[
                (b"json.a", b"?abc"),
                (b"json.b", b"?"),
                (b"json.c", b"\xf0\x90\x81\x81x"),
                (b"json.d.array_0", b"1"),
                (b"json.d.array_1.array_0", b"2"),
                (b"json.d.array_1.array_1.empty-key", b""),
                (b"json.d.array_2.e", b"true"),
                (b"json.empty-key.f", b"-1.5e3"),
            ])
        );
        // The order a rule on ARGS sees them in.
        let keys: Vec<&[u8]> = out.iter().map(|(k, _)| k.as_slice()).collect();
        assert_eq!(rule_order(&keys), vec![0, 1, 2, 3, 4, 7, 5, 6]);

        let (out, result) = json(b"[[1,2],[3]]");
        assert_eq!(result, Ok(()));
        assert_eq!(
            out,
            pairs(&[
                (b"json.array_0.array_0", b"1"),
                (b"json.array_0.array_1", b"2"),
                (b"json.array_1.array_0", b"3"),
            ])
        );
        assert_eq!(json(b"7"), (pairs(&[(b"json", b"7")]), Ok(())));
        assert_eq!(json(b"null"), (pairs(&[(b"json", b"")]), Ok(())));
        assert_eq!(
            json(br#"{"a":"\u00e9\n\u0000z","\u0041\n":false}"#),
            (
                pairs(&[(b"json.a", b"\xc3\xa9\n\x00z"), (b"json.A\n", b"false")]),
                Ok(())
            )
        );
        assert_eq!(
            json(br#"{"a":"\ud83d\ude00","b":"\uDC00"}"#),
            (
                pairs(&[
                    (b"json.a", b"\xf0\x9f\x98\x80"),
                    (b"json.b", b"\xed\xb0\x80")
                ]),
                Ok(())
            )
        );
        assert_eq!(json(b"{\"a\":[],\"b\":{},\"c\":[{}]}"), (vec![], Ok(())));
        assert_eq!(json(b""), (vec![], Ok(())));
        // Garbage after the value is an error, except an unterminated string.
        assert_eq!(
            json(b"{\"a\":1} \"abc"),
            (pairs(&[(b"json.a", b"1")]), Ok(()))
        );
        assert_eq!(
            json(b"{\"a\":1}\n\t\x0b\x0c\r "),
            (pairs(&[(b"json.a", b"1")]), Ok(()))
        );
    }

    #[test]
    fn json_errors_keep_earlier_arguments_and_use_yajls_messages() {
        let err = |m: &str| Err(format!("JSON parsing error: {m}\n"));
        assert_eq!(
            json(b"[1,"),
            (
                pairs(&[(b"json.array_0", b"1")]),
                err("parse error: premature EOF")
            )
        );
        assert_eq!(json(b" "), (vec![], err("parse error: premature EOF")));
        assert_eq!(
            json(b"{\"a\":1} 12"),
            (
                pairs(&[(b"json.a", b"1")]),
                err("parse error: trailing garbage")
            )
        );
        assert_eq!(
            json(b"[1,]"),
            (
                pairs(&[(b"json.array_0", b"1")]),
                err("parse error: unallowed token at this point in JSON text")
            )
        );
        assert_eq!(
            json(b"{\"a\":1,}"),
            (
                pairs(&[(b"json.a", b"1")]),
                err("parse error: invalid object key (must be a string)")
            )
        );
        assert_eq!(
            json(b"{\"a\" 1}").1,
            err("parse error: object key and value must be separated by a colon (':')")
        );
        assert_eq!(
            json(b"{\"a\":1 \"b\":2}").1,
            err("parse error: after key and value, inside map, I expect ',' or '}'")
        );
        assert_eq!(
            json(b"[1 2]").1,
            err("parse error: after array element, I expect ',' or ']'")
        );
        assert_eq!(json(b"01").1, err("parse error: trailing garbage"));
        assert_eq!(
            json(b"tru").1,
            err("lexical error: invalid string in json text.")
        );
        assert_eq!(
            json(b"-a").1,
            err("lexical error: malformed number, a digit is required after the minus sign.")
        );
        assert_eq!(
            json(b"1.e5").1,
            err("lexical error: malformed number, a digit is required after the decimal point.")
        );
        assert_eq!(
            json(b"1e+").1,
            err("lexical error: malformed number, a digit is required after the exponent.")
        );
        assert_eq!(
            json(b"/* c */ 1").1,
            err("lexical error: probable comment found in input text, comments are not enabled.")
        );
        assert_eq!(
            json(b"\xef\xbb\xbf{}").1,
            err("lexical error: invalid char in json text.")
        );
        assert_eq!(
            json(b"{\"a\":\"\\x\"}").1,
            err("lexical error: inside a string, '\\' occurs before a character which it may not.")
        );
        assert_eq!(
            json(b"{\"a\":\"\\u12G4\"}").1,
            err("lexical error: invalid (non-hex) character occurs after '\\u' inside string.")
        );
        assert_eq!(
            json(b"{\"a\":\"x\x01\"}").1,
            err("lexical error: invalid character inside string.")
        );
        assert_eq!(
            json(b"{\"a\":\"\xc3\"}").1,
            err("lexical error: invalid bytes in UTF8 string.")
        );
        // Overlong forms and encoded surrogates pass yajl's check.
        assert_eq!(json(b"{\"a\":\"\xed\xa0\x80\xc0\x80\"}").1, Ok(()));
    }

    #[test]
    fn json_depth_and_argument_limits() {
        let nested = |depth: usize| {
            let mut body = vec![b'['; depth];
            body.push(b'1');
            body.extend(std::iter::repeat_n(b']', depth));
            body
        };
        let (out, result) = json(&nested(10_000));
        assert_eq!(result, Ok(()));
        assert_eq!(out.len(), 1);
        assert_eq!(out.first().map(|(n, _)| n.len()), Some(4 + 8 * 10_000));
        assert_eq!(
            json(&nested(10_001)),
            (
                vec![],
                Err(
                    "JSON parsing error: parse error: client cancelled parse via callback return \
                     value\n. Parsing depth limit exceeded"
                        .to_string()
                )
            )
        );
        let mut out = Vec::new();
        let result = parse_json_limited(b"{\"a\":1,\"b\":[1,2]}", 10, 2, &mut out);
        assert_eq!(out, pairs(&[(b"json.a", b"1"), (b"json.b.array_0", b"1")]));
        assert_eq!(
            result,
            Err(
                "JSON parsing error: parse error: client cancelled parse via callback return \
                 value\n"
                    .to_string()
            )
        );
        let mut out = Vec::new();
        let result = parse_json_limited(b"[1,[2,[3,[4]]]]", 3, usize::MAX, &mut out);
        assert_eq!(
            out,
            pairs(&[
                (b"json.array_0", b"1"),
                (b"json.array_1.array_0", b"2"),
                (b"json.array_1.array_1.array_0", b"3")
            ])
        );
        assert!(result.is_err_and(|e| e.ends_with(". Parsing depth limit exceeded")));
    }

    #[test]
    fn json_budget_stops_quadratic_output() {
        let mut body = b"{\"".to_vec();
        body.extend(std::iter::repeat_n(b'k', 1000));
        body.extend_from_slice(b"\":[");
        body.extend_from_slice(&b"1,".repeat(100));
        body.extend_from_slice(b"1]}");
        let mut out = Vec::new();
        assert_eq!(
            parse_json_budgeted(&body, 10, usize::MAX, 20_000, &mut out),
            Err(JsonFailure::OverBudget)
        );
        assert_eq!(out.len(), 19);
        let mut all = Vec::new();
        assert_eq!(
            parse_json_budgeted(&body, 10, usize::MAX, usize::MAX, &mut all),
            Ok(())
        );
        assert_eq!(all.len(), 101);
        assert_eq!(all.get(..19), Some(out.as_slice()));
        assert_eq!(
            parse_json_budgeted(b"[1,", 10, usize::MAX, 100, &mut Vec::new()),
            Err(JsonFailure::Parse(
                "JSON parsing error: parse error: premature EOF\n".to_string()
            ))
        );
    }

    #[test]
    fn collection_order_follows_the_hash_table() {
        // Query `a=1&A=2&b=3&a=4&ab=5&AB=6&a=7`: libmodsecurity gives `ARGS:a` as 7,4,2,1 and
        // `ARGS:/^a/` as 1,2,4,7,5,6.
        let list = args(b"a=1&A=2&b=3&a=4&ab=5&AB=6&a=7");
        let keys: Vec<&[u8]> = list.iter().map(|(k, _)| k.as_slice()).collect();
        let value = |i: &usize| list.get(*i).map(|(_, v)| v.clone()).unwrap_or_default();
        let by_key: Vec<Vec<u8>> = collection_order(&keys)
            .iter()
            .filter(|&&i| keys.get(i).is_some_and(|k| k.eq_ignore_ascii_case(b"a")))
            .map(value)
            .collect();
        assert_eq!(by_key, [b"7", b"4", b"2", b"1"]);
        let by_regex: Vec<Vec<u8>> = rule_order(&keys)
            .iter()
            .filter(|&&i| {
                keys.get(i)
                    .is_some_and(|k| k.first().is_some_and(|c| c.eq_ignore_ascii_case(&b'a')))
            })
            .map(value)
            .collect();
        assert_eq!(by_regex, [&b"1"[..], b"2", b"4", b"7", b"5", b"6"]);

        // 26 arguments: past the first rehash (11 -> 23 -> 47 buckets).
        let list = args(b"x=0&a=1&y=2&A=3&aa=4&a=5&b=6&c=7&d=8&e=9&f=10&g=11&h=12&a=13&Ab=14&ab=15&a=16&i=17&j=18&k=19&l=20&m=21&n=22&o=23&a=24&p=25");
        let keys: Vec<&[u8]> = list.iter().map(|(k, _)| k.as_slice()).collect();
        let value = |i: &usize| list.get(*i).map(|(_, v)| v.clone()).unwrap_or_default();
        let by_key: Vec<Vec<u8>> = collection_order(&keys)
            .iter()
            .filter(|&&i| keys.get(i).is_some_and(|k| k.eq_ignore_ascii_case(b"a")))
            .map(value)
            .collect();
        assert_eq!(by_key, [&b"24"[..], b"16", b"13", b"5", b"3", b"1"]);
        let by_regex: Vec<Vec<u8>> = rule_order(&keys)
            .iter()
            .filter(|&&i| {
                keys.get(i)
                    .is_some_and(|k| k.first().is_some_and(|c| c.eq_ignore_ascii_case(&b'a')))
            })
            .map(value)
            .collect();
        assert_eq!(
            by_regex,
            [
                &b"14"[..],
                b"15",
                b"1",
                b"3",
                b"5",
                b"13",
                b"16",
                b"24",
                b"4"
            ]
        );

        assert_eq!(collection_order(&[]), Vec::<usize>::new());
        // Every index exactly once, even for many colliding keys.
        let many: Vec<Vec<u8>> = (0..5000u32)
            .map(|i| {
                if i % 3 == 0 {
                    b"same".to_vec()
                } else {
                    format!("k{}", i % 997).into_bytes()
                }
            })
            .collect();
        let refs: Vec<&[u8]> = many.iter().map(Vec::as_slice).collect();
        let mut order = collection_order(&refs);
        order.sort_unstable();
        assert!(order.iter().copied().eq(0..5000));
    }

    #[test]
    fn a_few_keys_compared_one_by_one_give_the_order_the_map_gives() {
        let alphabet: [&[u8]; 6] = [b"a", b"A", b"b", b"ab", b"Ab", b"ba"];
        let mut rng = crate::test_rng::Rng(0x9e37_79b9_7f4a_7c15);
        for _ in 0..3000 {
            let len = rng.below(MultiMapModel::FEW + 1);
            let keys: Vec<&[u8]> = (0..len).map(|_| rng.pick(&alphabet)).collect();
            let mut with_map = MultiMapModel::new(keys.len());
            with_map.runs = Some(std::collections::HashMap::new());
            for node in 0..keys.len() {
                with_map.insert(&keys, node);
            }
            assert_eq!(collection_order(&keys), with_map.iteration(), "{keys:?}");
        }
    }

    #[test]
    fn parsers_never_panic_on_arbitrary_bytes() {
        let mut rng = crate::test_rng::Rng(0x2545_f491_4f6c_dd1d);
        let alphabet = b"{}[]:,\"\\u0aE-+.e /tfnrl%&=;\x00\x80\xc3\xff";
        for round in 0..2000 {
            let body: Vec<u8> = (0..round % 40).map(|_| rng.pick(alphabet)).collect();
            let mut out = Vec::new();
            let _ = parse_json(&body, &mut out);
            parse_query(&body, &mut out);
            parse_cookies(&body, &mut out);
            let _ = decode_uri(&body);
            let text = String::from_utf8_lossy(&body);
            let _ = target("GET", &text, "1.1");
        }
    }
}
