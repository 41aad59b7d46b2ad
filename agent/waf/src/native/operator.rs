//! Rule operators (`@rx`, `@pm`, `@eq`, ...) with libmodsecurity 3.0.9's semantics, including
//! its quirks: `@within` matches an empty input, the numeric comparisons read numbers the way C's
//! `atoll` does, `@eq` the way `std::stoi` does, `@validateUtf8Encoding` accepts code points past
//! U+10FFFF when the lead byte is F4.

use std::net::IpAddr;
use std::path::Path;

use aho_corasick::{AhoCorasick, AhoCorasickBuilder, MatchKind};

use super::eval::Bytes;
use super::parse::{Macro, compile_regex};
use crate::pcre::{Found, Pattern};

#[derive(Debug)]
pub(crate) enum Operator {
    /// `@rx`: the compiled pattern, one pointer away (an [`Rx`] is a shared pointer itself).
    Rx(Rx),
    /// `@rx` whose pattern contains a macro: compiled per evaluation.
    /// `@rx` with a macro: compiled when evaluated, the last pattern remembered (in the CRS the
    /// expansion is the same for every request).
    RxMacro(
        Macro,
        std::sync::Mutex<Option<(Vec<u8>, std::sync::Arc<Rx>)>>,
    ),
    /// A complete Aho-Corasick automaton rejects quickly; libmodsecurity's own matcher decides.
    Pm(Box<AhoCorasick>, Box<Acmp>),
    BeginsWith(Macro),
    EndsWith(Macro),
    Contains(Macro),
    ContainsWord(Macro),
    StrEq(Macro),
    Within(Macro),
    Eq(Macro),
    Ge(Macro),
    Gt(Macro),
    Le(Macro),
    Lt(Macro),
    ValidateByteRange(Box<[bool; 256]>),
    ValidateUrlEncoding,
    ValidateUtf8Encoding,
    DetectSqli,
    DetectXss,
    IpMatch(Vec<(IpAddr, u8)>),
    Unconditional,
    NoMatch,
    /// An operator that needs something the native engine does not have (DNS for `@rbl`, a GeoIP
    /// database): evaluating it hands the request to libmodsecurity.
    Unsupported(&'static str),
}

/// The macro parameter of an operator (`&Operator` or `&mut Operator`), if it has one.
macro_rules! param_of {
    ($operator:expr) => {
        match $operator {
            Operator::RxMacro(m, _)
            | Operator::BeginsWith(m)
            | Operator::EndsWith(m)
            | Operator::Contains(m)
            | Operator::ContainsWord(m)
            | Operator::StrEq(m)
            | Operator::Within(m)
            | Operator::Eq(m)
            | Operator::Ge(m)
            | Operator::Gt(m)
            | Operator::Le(m)
            | Operator::Lt(m) => Some(m),
            _ => None,
        }
    };
}

impl Operator {
    /// The parameter, for operators whose parameter may hold macros.
    pub fn param(&self) -> Option<&Macro> {
        param_of!(self)
    }

    /// [`Operator::param`], to change.
    pub fn param_mut(&mut self) -> Option<&mut Macro> {
        param_of!(self)
    }

    /// Parses `[!]@name param` (no `@`: an implicit `@rx`). `dir` resolves data files.
    pub fn parse(text: &str, dir: Option<&Path>) -> Result<(Operator, bool), String> {
        let (negated, text) = match text.trim_start().strip_prefix('!') {
            Some(rest) => (true, rest),
            None => (false, text),
        };
        let Some(text) = text.strip_prefix('@') else {
            return Ok((rx(text)?, negated));
        };
        let (name, param) = match text.find(char::is_whitespace) {
            Some(at) => (&text[..at], text[at..].trim_start()),
            None => (text, ""),
        };
        let m = || Macro::parse(param);
        let operator = match name.to_ascii_lowercase().as_str() {
            "rx" => rx(param)?,
            "pm" => pm(param.split_whitespace().map(str::to_owned).collect(), param)?,
            "pmfromfile" | "pmf" => {
                // One file, as libmodsecurity opens it (the whole parameter is the path).
                let path = match dir {
                    Some(dir) if !Path::new(param).is_absolute() => dir.join(param),
                    _ => Path::new(param).to_owned(),
                };
                let text = std::fs::read(&path)
                    .map_err(|e| format!("@pmFromFile: cannot read {}: {e}", path.display()))?;
                let phrases = text
                    .split(|&b| b == b'\n')
                    .filter(|line| !is_comment(line))
                    .map(|line| String::from_utf8_lossy(line).into_owned())
                    .collect();
                pm(phrases, param)?
            }
            "beginswith" => Operator::BeginsWith(m()),
            "endswith" => Operator::EndsWith(m()),
            "contains" => Operator::Contains(m()),
            "containsword" => Operator::ContainsWord(m()),
            "streq" => Operator::StrEq(m()),
            "within" => Operator::Within(m()),
            "eq" => Operator::Eq(m()),
            "ge" => Operator::Ge(m()),
            "gt" => Operator::Gt(m()),
            "le" => Operator::Le(m()),
            "lt" => Operator::Lt(m()),
            "validatebyterange" => Operator::ValidateByteRange(byte_ranges(param)?),
            "validateurlencoding" => Operator::ValidateUrlEncoding,
            "validateutf8encoding" => Operator::ValidateUtf8Encoding,
            "detectsqli" => Operator::DetectSqli,
            "detectxss" => Operator::DetectXss,
            "ipmatch" => Operator::IpMatch(networks(param.split(','))?),
            "ipmatchfromfile" | "ipmatchf" => {
                let path = match dir {
                    Some(dir) if !Path::new(param).is_absolute() => dir.join(param),
                    _ => Path::new(param).to_owned(),
                };
                let text = std::fs::read_to_string(&path).map_err(|e| {
                    format!("@ipMatchFromFile: cannot read {}: {e}", path.display())
                })?;
                Operator::IpMatch(networks(
                    text.lines().filter(|l| !is_comment(l.as_bytes())),
                )?)
            }
            "unconditionalmatch" => Operator::Unconditional,
            "nomatch" => Operator::NoMatch,
            "rbl" => Operator::Unsupported("@rbl (DNS block lists)"),
            "geolookup" => Operator::Unsupported("@geoLookup"),
            other => return Err(format!("unsupported operator @{other}")),
        };
        Ok((operator, negated))
    }
}

fn rx(pattern: &str) -> Result<Operator, String> {
    let m = Macro::parse(pattern);
    if m.literal().is_none() {
        return Ok(Operator::RxMacro(m, std::sync::Mutex::new(None)));
    }
    Ok(Operator::Rx(Rx::new(compile_regex(pattern, false)?)))
}

fn pm(phrases: Vec<String>, param: &str) -> Result<Operator, String> {
    // libmodsecurity's quoted and |hex| phrase syntax: not used by the CRS.
    if phrases.iter().any(|p| p.contains(['"', '|'])) {
        return Err(format!(
            "@pm: quoted or |hex| phrases are not supported: {param:?}"
        ));
    }
    let automaton = AhoCorasickBuilder::new()
        .ascii_case_insensitive(true)
        .match_kind(MatchKind::LeftmostFirst)
        .build(phrases.iter().filter(|p| !p.is_empty()))
        .map_err(|e| format!("@pm: {e}"))?;
    let acmp = Acmp::new(
        phrases
            .iter()
            .filter(|p| !p.is_empty())
            .map(|p| p.as_bytes()),
    );
    Ok(Operator::Pm(Box::new(automaton), Box::new(acmp)))
}

/// libmodsecurity's data-file comment rule: empty, or only whitespace before a `#`.
fn is_comment(line: &[u8]) -> bool {
    match line.iter().position(|&b| b == b'#') {
        _ if line.is_empty() => true,
        Some(at) => line[..at].iter().all(u8::is_ascii_whitespace),
        None => false,
    }
}

fn byte_ranges(param: &str) -> Result<Box<[bool; 256]>, String> {
    let mut table = Box::new([false; 256]);
    for range in param.split(',') {
        let range = range.trim();
        let (a, b) = match range.split_once('-') {
            Some((a, b)) => (a.trim(), b.trim()),
            None => (range, range),
        };
        let parse = |s: &str| {
            s.parse::<u8>()
                .map_err(|_| format!("@validateByteRange: {range:?} is not a byte range"))
        };
        let (a, b) = (parse(a)?, parse(b)?);
        if a > b {
            return Err(format!("@validateByteRange: {range:?} runs backwards"));
        }
        for byte in a..=b {
            table[usize::from(byte)] = true;
        }
    }
    Ok(table)
}

fn networks<'a>(items: impl Iterator<Item = &'a str>) -> Result<Vec<(IpAddr, u8)>, String> {
    let mut out = Vec::new();
    for item in items.map(str::trim).filter(|i| !i.is_empty()) {
        let (addr, bits) = match item.split_once('/') {
            Some((a, b)) => (a, Some(b)),
            None => (item, None),
        };
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| format!("@ipMatch: {item:?} is not an address or network"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let bits = match bits {
            Some(b) => b
                .parse::<u8>()
                .ok()
                .filter(|b| *b <= max)
                .ok_or_else(|| format!("@ipMatch: {item:?} has a bad prefix length"))?,
            None => max,
        };
        out.push((addr, bits));
    }
    Ok(out)
}

/// C's `atoll`: optional whitespace and sign, then digits up to the first non-digit; 0 if none.
pub(crate) fn atoll(s: &[u8]) -> i64 {
    let s = trim_c_space(s);
    let (negative, digits) = match s.first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    let mut n: i64 = 0;
    for &d in digits.iter().take_while(|d| d.is_ascii_digit()) {
        n = n.wrapping_mul(10).wrapping_add(i64::from(d - b'0'));
    }
    if negative { n.wrapping_neg() } else { n }
}

/// `std::stoi` with its exceptions mapped to 0, as libmodsecurity's `@eq` does.
fn stoi(s: &[u8]) -> i64 {
    let s = trim_c_space(s);
    let body = match s.first() {
        Some(b'-' | b'+') => &s[1..],
        _ => s,
    };
    if !body.first().is_some_and(u8::is_ascii_digit) {
        return 0;
    }
    let n = atoll(s);
    // Out of `int` range throws `out_of_range`; long digit runs overflow i64 as well.
    let digits = body.iter().take_while(|d| d.is_ascii_digit()).count();
    if digits > 10 || n < i64::from(i32::MIN) || n > i64::from(i32::MAX) {
        return 0;
    }
    n
}

fn trim_c_space(s: &[u8]) -> &[u8] {
    let start = s
        .iter()
        .position(|b| !matches!(b, b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c))
        .unwrap_or(s.len());
    &s[start..]
}

/// What an operator needs from the transaction while it runs.
pub(crate) trait Context {
    fn expand<'m>(&mut self, m: &'m Macro) -> Bytes<'m>;
    /// Stores a capture group (`TX.0` .. `TX.9`) when the rule has `capture`.
    fn capture(&mut self, group: usize, value: &[u8]);
}

/// The result of one operator run.
pub(crate) enum Outcome {
    Match,
    NoMatch,
    Unsupported(&'static str),
}

impl Operator {
    pub fn evaluate(&self, input: &[u8], capture: bool, cx: &mut impl Context) -> Outcome {
        let matched = match self {
            Operator::Rx(rx) => rx.matches(input, capture, cx),
            Operator::RxMacro(m, last) => {
                let pattern = cx.expand(m).to_vec();
                if pattern.is_empty() {
                    true
                } else {
                    match compiled(&pattern, last) {
                        Some(rx) => rx.matches(input, capture, cx),
                        None => false,
                    }
                }
            }
            // libmodsecurity's matcher finds a subset of the true occurrences: one the complete
            // automaton does not see cannot match, one it sees must be confirmed.
            Operator::Pm(ac, acmp) => {
                ac.is_match(input)
                    && match acmp.find(input) {
                        Some(phrase) => {
                            if capture {
                                cx.capture(0, &phrase);
                            }
                            true
                        }
                        None => false,
                    }
            }
            Operator::BeginsWith(m) => input.starts_with(&cx.expand(m)),
            Operator::EndsWith(m) => input.ends_with(&cx.expand(m)),
            Operator::Contains(m) => find(input, &cx.expand(m)).is_some(),
            Operator::ContainsWord(m) => contains_word(input, &cx.expand(m)),
            Operator::StrEq(m) => input == &*cx.expand(m),
            Operator::Within(m) => input.is_empty() || find(&cx.expand(m), input).is_some(),
            Operator::Eq(m) => stoi(input) == stoi(&cx.expand(m)),
            Operator::Ge(m) => atoll(input) >= atoll(&cx.expand(m)),
            Operator::Gt(m) => atoll(input) > atoll(&cx.expand(m)),
            Operator::Le(m) => atoll(input) <= atoll(&cx.expand(m)),
            Operator::Lt(m) => atoll(input) < atoll(&cx.expand(m)),
            Operator::ValidateByteRange(table) => input.iter().any(|&b| !table[usize::from(b)]),
            Operator::ValidateUrlEncoding => !input.is_empty() && !url_encoding_valid(input),
            Operator::ValidateUtf8Encoding => !utf8_valid(input),
            Operator::DetectSqli => match crate::engine::detect_sqli(input) {
                Some(fingerprint) => {
                    if capture {
                        let len = fingerprint.iter().position(|&b| b == 0).unwrap_or(8);
                        cx.capture(0, &fingerprint[..len]);
                    }
                    true
                }
                None => false,
            },
            Operator::DetectXss => {
                let found = crate::engine::detect_xss(input);
                if found && capture {
                    cx.capture(0, input);
                }
                found
            }
            Operator::IpMatch(networks) => std::str::from_utf8(input)
                .ok()
                .and_then(|s| s.trim().parse::<IpAddr>().ok())
                .is_some_and(|ip| {
                    networks
                        .iter()
                        .any(|(net, bits)| in_network(ip, *net, *bits))
                }),
            Operator::Unconditional => true,
            Operator::NoMatch => false,
            Operator::Unsupported(what) => return Outcome::Unsupported(what),
        };
        if matched {
            Outcome::Match
        } else {
            Outcome::NoMatch
        }
    }
}

/// A compiled `@rx` pattern (or target-selector regex), shared by the rule sets' clones.
#[derive(Debug, Clone)]
pub(crate) struct Rx {
    pattern: std::sync::Arc<Pattern>,
}

impl Rx {
    pub fn new(pattern: Pattern) -> Rx {
        Rx {
            pattern: std::sync::Arc::new(pattern),
        }
    }

    /// Whether the pattern matches `input`; with `capture`, the groups go to `TX.0`..`TX.9`.
    fn matches(&self, input: &[u8], capture: bool, cx: &mut impl Context) -> bool {
        self.search(input, |groups| {
            if capture {
                for (group, start, end) in groups {
                    cx.capture(group, &input[start..end]);
                }
            }
        })
    }

    /// Whether the pattern matches `input`.
    pub fn is_match(&self, input: &[u8]) -> bool {
        self.search(input, |_| {})
    }

    /// Runs the pattern, as libmodsecurity does: JIT-compiled, and through PCRE2's interpreter
    /// when the JIT stack runs out; any other error (the match limit) counts as no match.
    /// `found` sees the groups of a match.
    fn search(
        &self,
        input: &[u8],
        found: impl FnOnce(&mut dyn Iterator<Item = (usize, usize, usize)>),
    ) -> bool {
        // `found` is needed by whichever run matches: hand it over through an Option.
        let mut found = Some(found);
        let mut report = |groups: &mut dyn Iterator<Item = (usize, usize, usize)>| {
            if let Some(found) = found.take() {
                found(groups);
            }
        };
        match self.pattern.find(input, false, &mut report) {
            Found::Match => true,
            Found::JitStackLimit => self.pattern.find(input, true, &mut report) == Found::Match,
            Found::NoMatch | Found::Error(_) => false,
        }
    }
}

/// The pattern `pattern` compiled, from `last` if it was the previous one. A pattern that does
/// not compile matches nothing (libmodsecurity: `hasError`).
fn compiled(
    pattern: &[u8],
    last: &std::sync::Mutex<Option<(Vec<u8>, std::sync::Arc<Rx>)>>,
) -> Option<std::sync::Arc<Rx>> {
    let mut last = last
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some((previous, rx)) = &*last
        && previous == pattern
    {
        return Some(rx.clone());
    }
    let re = compile_regex(std::str::from_utf8(pattern).ok()?, false).ok()?;
    let rx = std::sync::Arc::new(Rx::new(re));
    *last = Some((pattern.to_vec(), rx.clone()));
    Some(rx)
}

/// libmodsecurity 3.0.9's `@pm` matcher (`acmp`), which is not a complete Aho-Corasick
/// automaton: a node's failure link is its parent's failure node's child for the same letter,
/// or the root, never found by walking further up the failure chain. So it misses some
/// occurrences (after reading `etc/e` it no longer sees the `etc/passwd` that follows), and a
/// rule that uses it matches exactly when this finds something. Letters are compared lower-case.
#[derive(Debug, Default)]
pub(crate) struct Acmp {
    nodes: Vec<AcmpNode>,
}

#[derive(Debug, Default)]
struct AcmpNode {
    children: Vec<(u8, usize)>,
    fail: usize,
    /// A phrase ends here.
    phrase_end: bool,
    /// The nearest node on the failure chain where a phrase ends.
    output: Option<usize>,
    parent: usize,
    letter: u8,
}

impl Acmp {
    fn child(&self, node: usize, letter: u8) -> Option<usize> {
        self.nodes
            .get(node)?
            .children
            .iter()
            .find(|(l, _)| *l == letter)
            .map(|(_, c)| *c)
    }

    pub(crate) fn new<'a>(phrases: impl Iterator<Item = &'a [u8]>) -> Acmp {
        let mut acmp = Acmp {
            nodes: vec![AcmpNode::default()],
        };
        for phrase in phrases {
            let mut node = 0;
            for letter in phrase.iter().map(u8::to_ascii_lowercase) {
                node = match acmp.child(node, letter) {
                    Some(child) => child,
                    None => {
                        let child = acmp.nodes.len();
                        acmp.nodes.push(AcmpNode {
                            parent: node,
                            letter,
                            ..AcmpNode::default()
                        });
                        acmp.nodes[node].children.push((letter, child));
                        child
                    }
                };
            }
            acmp.nodes[node].phrase_end = true;
        }
        // Breadth first, so that a parent's failure link is set before its children's.
        let mut level: Vec<usize> = acmp.nodes[0].children.iter().map(|(_, c)| *c).collect();
        while !level.is_empty() {
            let mut next = Vec::new();
            for &node in &level {
                let AcmpNode { parent, letter, .. } = acmp.nodes[node];
                acmp.nodes[node].fail = if parent == 0 {
                    0
                } else {
                    acmp.child(acmp.nodes[parent].fail, letter).unwrap_or(0)
                };
                next.extend(acmp.nodes[node].children.iter().map(|(_, c)| *c));
            }
            level = next;
        }
        for node in 1..acmp.nodes.len() {
            let mut on_chain = acmp.nodes[node].fail;
            while on_chain != 0 {
                if acmp.nodes[on_chain].phrase_end {
                    acmp.nodes[node].output = Some(on_chain);
                    break;
                }
                on_chain = acmp.nodes[on_chain].fail;
            }
        }
        acmp
    }

    /// The first phrase found in `input` (its text, lower-case), scanning as libmodsecurity's
    /// `acmp_process_quick` does.
    pub(crate) fn find(&self, input: &[u8]) -> Option<Vec<u8>> {
        let mut node = 0;
        for letter in input.iter().map(u8::to_ascii_lowercase) {
            let next = loop {
                let next = self.child(node, letter);
                if let Some(n) = next
                    && self.nodes[n].phrase_end
                {
                    return Some(self.text(n));
                }
                if next.is_some() || node == 0 {
                    break next;
                }
                node = self.nodes[node].fail;
            };
            if let Some(n) = next {
                node = n;
            }
            if self.nodes[node].output.is_some() {
                return Some(self.text(node));
            }
        }
        None
    }

    /// The letters from the root to `node`.
    fn text(&self, mut node: usize) -> Vec<u8> {
        let mut text = Vec::new();
        while node != 0 {
            text.push(self.nodes[node].letter);
            node = self.nodes[node].parent;
        }
        text.reverse();
        text
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() {
        return Some(0);
    }
    memchr::memmem::find(haystack, needle)
}

/// `@containsWord`: the parameter bounded by non-word characters or the input's ends.
fn contains_word(input: &[u8], word: &[u8]) -> bool {
    if word.is_empty() {
        return true;
    }
    if input.is_empty() {
        return false;
    }
    let boundary = |at: Option<usize>| match at.and_then(|i| input.get(i)) {
        None => true,
        Some(c) => !(c.is_ascii_alphanumeric() || *c == b'_'),
    };
    let mut from = 0;
    while let Some(pos) = find(&input[from..], word).map(|p| p + from) {
        if boundary(pos.checked_sub(1)) && boundary(Some(pos + word.len())) {
            return true;
        }
        from = pos + 1;
        if from >= input.len() {
            break;
        }
    }
    false
}

/// libmodsecurity's `validate_url_encoding` (note its off-by-one: a `%` with exactly two bytes
/// after it at the very end counts as truncated only when fewer than three remain).
fn url_encoding_valid(input: &[u8]) -> bool {
    let mut i = 0;
    while i < input.len() {
        if input[i] == b'%' {
            if i + 2 >= input.len() {
                return false;
            }
            if input[i + 1].is_ascii_hexdigit() && input[i + 2].is_ascii_hexdigit() {
                i += 3;
            } else {
                return false;
            }
        } else {
            i += 1;
        }
    }
    true
}

/// libmodsecurity's UTF-8 check (RFC 3629 minus the U+10FFFF ceiling for F4 lead bytes).
fn utf8_valid(input: &[u8]) -> bool {
    let mut i = 0;
    while i < input.len() {
        let c = input[i];
        let rest = &input[i..];
        let continuation = |n: usize| rest.get(n).is_some_and(|b| b & 0xC0 == 0x80);
        let (len, code) = if c & 0x80 == 0 {
            (1, u32::from(c))
        } else if c & 0xE0 == 0xC0 {
            if rest.len() < 2 || !continuation(1) {
                return false;
            }
            (2, (u32::from(c & 0x1F) << 6) | u32::from(rest[1] & 0x3F))
        } else if c & 0xF0 == 0xE0 {
            if rest.len() < 3 || !continuation(1) || !continuation(2) {
                return false;
            }
            (
                3,
                (u32::from(c & 0x0F) << 12)
                    | (u32::from(rest[1] & 0x3F) << 6)
                    | u32::from(rest[2] & 0x3F),
            )
        } else if c & 0xF8 == 0xF0 {
            if c >= 0xF5 || rest.len() < 4 || !(1..4).all(continuation) {
                return false;
            }
            (
                4,
                (u32::from(c & 0x07) << 18)
                    | (u32::from(rest[1] & 0x3F) << 12)
                    | (u32::from(rest[2] & 0x3F) << 6)
                    | u32::from(rest[3] & 0x3F),
            )
        } else {
            return false;
        };
        let overlong = match len {
            2 => code < 0x80,
            3 => code < 0x800,
            4 => code < 0x10000,
            _ => false,
        };
        if (0xD800..=0xDFFF).contains(&code) || overlong {
            return false;
        }
        i += len;
    }
    true
}

fn in_network(ip: IpAddr, net: IpAddr, bits: u8) -> bool {
    match (ip, net) {
        (IpAddr::V4(a), IpAddr::V4(b)) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(bits)).unwrap_or(0);
            u32::from(a) & mask == u32::from(b) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(b)) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(bits)).unwrap_or(0);
            u128::from(a) & mask == u128::from(b) & mask
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_read_like_c() {
        assert_eq!(atoll(b"  42abc"), 42);
        assert_eq!(atoll(b"-7"), -7);
        assert_eq!(atoll(b"x1"), 0);
        assert_eq!(stoi(b"12"), 12);
        assert_eq!(stoi(b"abc"), 0);
        assert_eq!(stoi(b"99999999999"), 0);
    }

    #[test]
    fn url_encoding_and_utf8_checks_follow_libmodsecurity() {
        assert!(url_encoding_valid(b"a%41b"));
        assert!(!url_encoding_valid(b"a%4"));
        assert!(!url_encoding_valid(b"%zz1"));
        assert!(utf8_valid("héllo €".as_bytes()));
        assert!(!utf8_valid(b"\xc0\xaf"));
        assert!(!utf8_valid(b"\xed\xa0\x80"));
        assert!(utf8_valid(b"\xf4\x90\x80\x80"));
        assert!(!utf8_valid(b"\xe2\x82"));
    }

    #[test]
    fn words_need_boundaries() {
        assert!(contains_word(b"select * from", b"select"));
        assert!(contains_word(b"a select", b"select"));
        assert!(!contains_word(b"selection", b"select"));
        assert!(contains_word(b"selection select", b"select"));
    }

    #[test]
    fn networks_match_by_prefix() {
        let nets = networks(["10.0.0.0/8", "::1"].into_iter()).unwrap();
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert!(nets.iter().any(|(n, b)| in_network(ip("10.9.8.7"), *n, *b)));
        assert!(!nets.iter().any(|(n, b)| in_network(ip("11.0.0.1"), *n, *b)));
        assert!(nets.iter().any(|(n, b)| in_network(ip("::1"), *n, *b)));
    }
}
