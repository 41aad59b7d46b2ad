//! One request through a parsed rule set: phase 1 (headers), the body processor, phase 2 (body),
//! following libmodsecurity 3.0.9's evaluation order (`RulesSet::evaluate`,
//! `RuleWithOperator::evaluate`, `RuleWithActions::executeActionsAfterFullMatch`):
//!
//! - `setvar` runs once per matched variable, when it matches, even if a later link of the chain
//!   does not match; every other action runs once, after the whole chain matched, innermost link
//!   first.
//! - `MATCHED_VAR(S)` accumulate over consecutive matching rules and are cleared by the first rule
//!   (or chain link) that matches nothing.
//! - `Outcome::matches` mirrors libmodsecurity's server log: a rule is there when its whole
//!   chain matched, unless it says `nolog` or intervened (`deny`: reported as the intervention
//!   instead); a `multiMatch` rule once per match.
//! - A disruptive action stops the phase and the request.

use std::rc::Rc;

use rustc_hash::FxHashMap;
use smallvec::SmallVec;

pub(crate) mod fold;

use super::Unsupported;
use super::operator::{self, Context};
use super::parse::{
    BodyProcessor, Collection, Config, Ctl, Disruptive, EngineMode, Item, Link, Macro, MacroPart,
    Names, Rule, Selector, SetOp, Target,
};
use super::request::{self, Pair};
use super::transform::Transform;
use crate::{Intervention, MAX_MATCHES, Outcome, Request, RuleMatch};
use std::ops::Range;

/// The request as the rules see it.
#[derive(Debug, Default)]
pub(crate) struct Vars<'r> {
    pub args_get: Vec<Pair>,
    pub args_post: Vec<Pair>,
    /// JSON body members: in `ARGS` and `ARGS_NAMES` only, as libmodsecurity 3.0.9 has them.
    pub args_json: Vec<Pair>,
    /// `ARGS`: the query's, then the body's arguments.
    pub args: Vec<Pair>,
    pub headers: &'r [(&'r [u8], &'r [u8])],
    pub cookies: Vec<Pair>,
    /// The order a rule sees each collection's members in (libmodsecurity's hash-table order;
    /// see `request::rule_order`): indices into the lists above.
    pub order: Orders,
    pub target: request::Target,
    pub method: &'r [u8],
    pub remote_addr: Vec<u8>,
    pub remote_port: Vec<u8>,
    pub unique_id: &'r [u8],
    pub body: Option<&'r [u8]>,
    pub reqbody_error: Option<&'static str>,
    pub reqbody_error_msg: Option<String>,
    pub inbound_data_error: Option<&'static str>,
    /// The engine's `ip` and `global` collections.
    pub store: Option<&'r Persistent>,
    /// The rule set's numbered `TX` names.
    pub tx_names: Option<&'r Names>,
    /// Collections known to be empty and headers known to be absent for this request (bits as
    /// in [`Link::reads`]): a link that reads only these has no value to test.
    pub empty: u128,
    /// The numbered headers ([`super::parse::HeaderKeys`]) the request lacks.
    pub absent_headers: u128,
}

/// Per collection, the order rules see its members in.
#[derive(Debug, Default)]
pub(crate) struct Orders {
    args: Vec<usize>,
    args_get: Vec<usize>,
    args_post: Vec<usize>,
    headers: Vec<usize>,
    cookies: Vec<usize>,
}

impl Vars<'_> {
    /// Fills `args` and the orders from the lists; `headers` also the header and cookie orders
    /// (the body adds arguments only).
    fn index(&mut self, headers: bool) {
        fn order<V>(pairs: &[(impl AsRef<[u8]>, V)]) -> Vec<usize> {
            match pairs.len() {
                0 => Vec::new(),
                1 => vec![0],
                _ => {
                    let keys: Vec<&[u8]> = pairs.iter().map(|(k, _)| k.as_ref()).collect();
                    request::rule_order(&keys)
                }
            }
        }
        self.args = [&self.args_get, &self.args_post, &self.args_json]
            .into_iter()
            .flatten()
            .cloned()
            .collect();
        self.order.args = order(&self.args);
        self.order.args_get = order(&self.args_get);
        self.order.args_post = order(&self.args_post);
        if headers {
            self.order.headers = order(self.headers);
            self.order.cookies = order(&self.cookies);
        }
        self.empty = self.empty_collections();
    }

    /// What `resolve` yields nothing from for this request: empty collections, and the
    /// numbered headers the request lacks.
    fn empty_collections(&self) -> u128 {
        use Collection::*;
        let mut empty = self.absent_headers;
        let mut mark = |collections: &[Collection], is_empty: bool| {
            if is_empty {
                empty |= collections.iter().fold(0, |m, c| m | c.bit());
            }
        };
        mark(&[Args, ArgsNames, ArgsCombinedSize], self.args.is_empty());
        mark(&[ArgsGet, ArgsGetNames], self.args_get.is_empty());
        mark(&[ArgsPost, ArgsPostNames], self.args_post.is_empty());
        mark(
            &[RequestHeaders, RequestHeadersNames],
            self.headers.is_empty(),
        );
        mark(
            &[RequestCookies, RequestCookiesNames],
            self.cookies.is_empty(),
        );
        mark(&[RequestBody, RequestBodyLength], self.body.is_none());
        // Never filled here (see `resolve`).
        let never = [
            MultipartStrictError,
            MultipartPartHeaders,
            Files,
            FilesNames,
            FilesCombinedSize,
            Xml,
            Geo,
            Duration,
        ];
        mark(&never, true);
        empty
    }
}

/// A count target (`&COLLECTION`) has a value to test even when its collection is empty: 0.
/// Where a link's test is known at load to fail on "0" (its transformations, then an operator
/// without macros), its count targets read only their collections instead (see
/// [`Link::reads`]): a request that has none of the members passes over them as over any empty
/// target, rather than testing the 0. The CRS asks `&REQUEST_HEADERS:Transfer-Encoding "!@eq 0"`
/// and `&MULTIPART_PART_HEADERS "@gt 0"` of every request.
pub(crate) fn narrow_counts(config: &mut Config) {
    let header_keys = &config.header_keys;
    for items in &mut config.phases {
        for item in items {
            let Item::Rule(rule) = item else { continue };
            for link in &mut rule.links {
                if link.targets.iter().any(|t| t.count) && fails_on_zero(link) {
                    for target in link.targets.iter_mut().filter(|t| t.count) {
                        target.reads = header_keys.reads(target);
                    }
                }
            }
            rule.gather_reads();
        }
    }
}

/// Whether `link`'s test, run on the value "0", is known not to match. Not known for
/// `multiMatch` (every transformation stage is tested), an operator whose parameter holds a
/// macro, or one the engine cannot run.
fn fails_on_zero(link: &Link) -> bool {
    /// Expands macro-free parameters; notes any other.
    struct Literal {
        opaque: bool,
    }
    impl Context for Literal {
        fn expand<'m>(&mut self, m: &'m Macro) -> Bytes<'m> {
            match m.parts.as_slice() {
                [] => Bytes::Borrowed(b""),
                [MacroPart::Text(text)] => Bytes::Borrowed(text.as_bytes()),
                _ => {
                    self.opaque = true;
                    Bytes::Borrowed(b"")
                }
            }
        }

        fn capture(&mut self, _: usize, _: &[u8]) {}
    }
    if link.multi_match {
        return false;
    }
    let (mut a, mut b) = (Vec::new(), Vec::new());
    let value = transform(&link.transforms, b"0", &mut a, &mut b);
    let mut cx = Literal { opaque: false };
    let hit = match link.operator.evaluate(value, false, &mut cx) {
        operator::Outcome::Match => !link.negated,
        operator::Outcome::NoMatch => link.negated,
        operator::Outcome::Unsupported(_) => return false,
    };
    !cx.opaque && !hit
}

/// libmodsecurity's in-memory `ip` and `global` collections: per record (the key `initcol`
/// gives, such as the CRS's client address and User-Agent hash), variables that keep their
/// value across requests. libmodsecurity 3.0.9 never expires them (`expirevar` is parsed and
/// ignored); neither does this, but it keeps at most [`MAX_RECORDS`] records, forgetting an
/// arbitrary one to make room, where libmodsecurity grows without bound.
#[derive(Debug, Default)]
pub(crate) struct Persistent {
    records: std::sync::Mutex<Records>,
}

/// A persistent collection's records: (collection, record key) → variables.
type Records = std::collections::HashMap<(Collection, String), Vec<(String, Vec<u8>)>>;

/// Records kept per engine, over both collections.
pub(crate) const MAX_RECORDS: usize = 65_536;
/// Variables kept per record, and the longest record key (keys come from `initcol` macros over
/// request data): writes beyond either are dropped, where libmodsecurity has no bound.
pub(crate) const MAX_RECORD_VARS: usize = 64;
pub(crate) const MAX_RECORD_KEY: usize = 512;

impl Persistent {
    fn read(
        &self,
        collection: Collection,
        record: &str,
        selector: &Selector,
    ) -> Vec<(String, Vec<u8>)> {
        let records = self
            .records
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        records
            .get(&(collection, record.to_owned()))
            .map(|vars| {
                vars.iter()
                    .filter(|(k, _)| selects(selector, k.as_bytes()))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default()
    }

    fn write(&self, collection: Collection, record: &str, name: &str, value: Option<Vec<u8>>) {
        let mut records = self
            .records
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if record.len() > MAX_RECORD_KEY {
            return;
        }
        let key = (collection, record.to_owned());
        if !records.contains_key(&key) {
            if value.is_none() {
                return;
            }
            if records.len() >= MAX_RECORDS
                && let Some(victim) = records.keys().next().cloned()
            {
                records.remove(&victim);
            }
        }
        let vars = records.entry(key).or_default();
        match value {
            None => vars.retain(|(k, _)| !k.eq_ignore_ascii_case(name)),
            Some(value) => {
                let room = vars.len() < MAX_RECORD_VARS;
                match vars.iter_mut().find(|(k, _)| k.eq_ignore_ascii_case(name)) {
                    Some((_, v)) => *v = value,
                    None if room => vars.push((name.to_ascii_lowercase(), value)),
                    None => {}
                }
            }
        }
    }
}

/// A `TX` value: short ones (most are numbers) held inline, longer ones shared, so that
/// reading one into a rule's values copies at most a few bytes or a reference count.
#[derive(Debug, Clone)]
pub(crate) enum TxValue {
    Inline([u8; TX_INLINE], u8),
    Shared(Rc<[u8]>),
}

const TX_INLINE: usize = 22;

impl TxValue {
    fn new(value: &[u8]) -> TxValue {
        match u8::try_from(value.len()) {
            Ok(len) if value.len() <= TX_INLINE => {
                let mut inline = [0u8; TX_INLINE];
                inline[..value.len()].copy_from_slice(value);
                TxValue::Inline(inline, len)
            }
            _ => TxValue::Shared(Rc::from(value)),
        }
    }
}

impl std::ops::Deref for TxValue {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        match self {
            TxValue::Inline(bytes, len) => &bytes[..usize::from(*len)],
            TxValue::Shared(bytes) => bytes,
        }
    }
}

/// A value the rules read: borrowed from the request, copied from the transaction's `TX`
/// collection, or computed.
#[derive(Debug, Clone)]
pub(crate) enum Bytes<'a> {
    Borrowed(&'a [u8]),
    Tx(TxValue),
    Owned(Vec<u8>),
}

impl Bytes<'_> {
    /// As text (invalid UTF-8 replaced), reusing an owned buffer.
    fn into_text(self) -> String {
        match self {
            Bytes::Owned(bytes) => String::from_utf8(bytes)
                .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned()),
            other => String::from_utf8_lossy(&other).into_owned(),
        }
    }
}

impl std::ops::Deref for Bytes<'_> {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        match self {
            Bytes::Borrowed(b) => b,
            Bytes::Tx(b) => b,
            Bytes::Owned(b) => b,
        }
    }
}

/// What the rules change as they run.
#[derive(Debug)]
struct State {
    tx: Tx,
    /// `MATCHED_VARS` (its last entry is `MATCHED_VAR`): the first `matched_len` entries; the
    /// rest are buffers kept for reuse.
    matched: Vec<Matched>,
    matched_len: usize,
    removed_ids: Vec<(u32, u32)>,
    removed_tags: Vec<String>,
    removed_targets_by_id: Vec<(u32, String)>,
    removed_targets_by_tag: Vec<(String, String)>,
    engine: EngineMode,
    /// From the Content-Type header, or `ctl:requestBodyProcessor=URLENCODED|MULTIPART`.
    body_type: Option<BodyProcessor>,
    /// `ctl:requestBodyProcessor=JSON|XML`.
    processor: Option<BodyProcessor>,
    /// `REQBODY_PROCESSOR`: whichever of the two was set last.
    processor_name: Option<&'static str>,
    body_access: bool,
    marker: Option<u32>,
    skip: u32,
    allowed: bool,
    status: Option<u16>,
    intervention: Option<Intervention>,
    matches: Vec<RuleMatch>,
    /// The message of the rule being evaluated (`log`/`nolog` seen so far).
    save_message: bool,
    /// The `ip` and `global` records `initcol` chose.
    ip_record: String,
    global_record: String,
    /// Writes to `ip`/`global` this evaluation made: committed to the store only when the
    /// evaluation completes, so that a request handed back to libmodsecurity changes nothing.
    pending: Vec<(Collection, String, String, Option<Vec<u8>>)>,
}

/// Where a thread transforms values: two buffers the stages alternate between, and this
/// evaluation's transformed values. Kept apart from [`State`] so that a link can transform
/// into them while its tests change the state.
#[derive(Debug, Default)]
struct Buffers {
    a: Vec<u8>,
    b: Vec<u8>,
    memo: TransformMemo,
}

/// The fully transformed values of one evaluation, by transformation list ([`Link::chain`])
/// and input. A request's header value goes through the same list for many rules (the XSS
/// rules share one, the SQL injection rules another), and the transformations cost far more
/// than finding the result again: on a browser's request they were a quarter of the WAF's
/// instructions. Found by content — a hash, then the bytes compared — never by address: a
/// request's values can be freed and their addresses reused within one evaluation.
#[derive(Debug, Default)]
struct TransformMemo {
    /// (chain, hash of the input) → where the input and the output sit in `bytes`.
    found: rustc_hash::FxHashMap<(u32, u64), Remembered>,
    bytes: Vec<u8>,
}

/// One remembered transformation: the input's range of bytes and the output's (`None`: the
/// list left the input as it was).
#[derive(Debug)]
struct Remembered {
    input: Range<usize>,
    output: Option<Range<usize>>,
}

impl TransformMemo {
    /// Bounds what one evaluation keeps; past it, values are transformed as they come.
    const MAX_BYTES: usize = 256 * 1024;
    /// Shorter values are transformed again: hashing and remembering them costs about what
    /// transforming them does (measured on a bare `GET /`, whose values are all this short).
    const MIN_INPUT: usize = 16;

    fn clear(&mut self) {
        self.found.clear();
        self.bytes.clear();
    }

    fn key(chain: u32, input: &[u8]) -> (u32, u64) {
        use std::hash::Hasher;
        let mut hasher = rustc_hash::FxHasher::default();
        hasher.write(input);
        (chain, hasher.finish())
    }

    /// `input` through the transformation list `chain` (= `transforms`): remembered, or
    /// computed in the two buffers and remembered.
    fn transformed<'v>(
        &'v mut self,
        chain: u32,
        transforms: &[Transform],
        input: &'v [u8],
        a: &'v mut Vec<u8>,
        b: &'v mut Vec<u8>,
    ) -> &'v [u8] {
        match self.find(chain, input) {
            Some(output) => output.map_or(input, |o| &self.bytes[o]),
            None => {
                let last = transform(transforms, input, a, b);
                self.put(chain, input, last, !std::ptr::eq(last, input));
                last
            }
        }
    }

    /// Where the remembered output for `input` is: `Some(None)` when the list left it unchanged.
    fn find(&self, chain: u32, input: &[u8]) -> Option<Option<Range<usize>>> {
        let found = self.found.get(&Self::key(chain, input))?;
        (self.bytes[found.input.clone()] == *input).then(|| found.output.clone())
    }

    /// Remembers `output` for `input`, unless the memo is full or another input with the same
    /// hash was remembered first.
    fn put(&mut self, chain: u32, input: &[u8], output: &[u8], changed: bool) {
        let stored = input.len() + if changed { output.len() } else { 0 };
        if self.bytes.len() + stored > Self::MAX_BYTES {
            return;
        }
        let key = Self::key(chain, input);
        if self.found.contains_key(&key) {
            return;
        }
        let start = self.bytes.len();
        self.bytes.extend_from_slice(input);
        let input = start..self.bytes.len();
        let output = changed.then(|| {
            let start = self.bytes.len();
            self.bytes.extend_from_slice(output);
            start..self.bytes.len()
        });
        self.found.insert(key, Remembered { input, output });
    }
}

/// A value `setvar` writes: expanded text, or a number printed on the stack.
enum Number<'a> {
    Text(Bytes<'a>),
    Int([u8; 20], usize),
}

impl From<i64> for Number<'_> {
    fn from(n: i64) -> Self {
        let mut buf = [0u8; 20];
        let mut cursor = std::io::Cursor::new(&mut buf[..]);
        // 20 bytes hold any i64.
        let _ = std::io::Write::write_fmt(&mut cursor, format_args!("{n}"));
        let len = usize::try_from(cursor.position()).unwrap_or(0);
        Number::Int(buf, len)
    }
}

impl Number<'_> {
    fn as_bytes(&self) -> &[u8] {
        match self {
            Number::Text(b) => b,
            Number::Int(buf, len) => &buf[..*len],
        }
    }
}

/// One matched variable.
#[derive(Debug, Default)]
struct Matched {
    collection: Option<Collection>,
    key: Option<Vec<u8>>,
    value: Vec<u8>,
    /// The folded entry ([`fold::Block`]) this was copied from, 0 for any other (as
    /// [`Slot::replayed`]).
    replayed: u64,
}

impl Matched {
    fn name(&self) -> Vec<u8> {
        self.collection
            .map_or_else(Vec::new, |c| variable_name(c, self.key.as_deref()))
    }
}

/// The transaction collection `TX`, keys lower-cased (libmodsecurity compares them without
/// regard to case). Names the rules spell out are numbered at load (`Config::tx_names`) and kept
/// in a vector by number; names built at run time (`setvar:tx.%{...}`) go to a list found
/// through a map. It lives in a thread's reused [`State`]: an entry belongs to this evaluation
/// only if it carries the current generation, so nothing is freed or allocated per request but
/// the values.
#[derive(Debug, Default)]
struct Tx {
    slots: Vec<Slot>,
    /// Run-time names: their place in `named`.
    dynamic: FxHashMap<String, usize>,
    named: Vec<Named>,
    /// The run-time names this evaluation set, each once, in the order first set: what
    /// `TX:/regex/` and `TX` walk, rather than every name earlier requests left in the map.
    /// libmodsecurity walks them in its hash table's order instead (not modelled for `TX`:
    /// with the CRS the order shows only in `MATCHED_VAR(S)` and messages).
    live: Vec<usize>,
    generation: u64,
    /// When folding rules at load: every numbered name written, in order.
    written: Option<Vec<u32>>,
}

/// A numbered `TX` name's value, which belongs to the evaluation of its `generation` only.
#[derive(Debug, Clone, Default)]
struct Slot {
    generation: u64,
    value: Option<TxValue>,
    /// The folded write ([`fold::Block`]) that put `value` here, 0 for any other: replaying
    /// the same write on a later request finds its value in place and only renews it.
    replayed: u64,
}

/// A run-time `TX` name and its value, which belongs to the evaluation of its `generation`.
#[derive(Debug)]
struct Named {
    name: String,
    generation: u64,
    /// The evaluation whose `Tx::live` lists it.
    listed: u64,
    value: TxValue,
}

/// More run-time `TX` names than this (rules can build names from request data) and the map is
/// emptied before the next evaluation.
const TX_NAMES_KEPT: usize = 4096;

impl Tx {
    /// Starts an evaluation for a rule set with `names` numbered names.
    fn reset(&mut self, names: usize) {
        if self.named.len() > TX_NAMES_KEPT {
            self.dynamic.clear();
            self.named.clear();
        }
        self.live.clear();
        self.generation += 1;
        if self.slots.len() < names {
            self.slots.resize(names, Slot::default());
        }
    }

    fn slot(&self, id: u32) -> Option<&TxValue> {
        self.slots
            .get(id as usize)
            .filter(|slot| slot.generation == self.generation)
            .and_then(|slot| slot.value.as_ref())
    }

    fn set_slot(&mut self, id: u32, value: Option<&[u8]>) {
        if let Some(written) = &mut self.written {
            written.push(id);
        }
        if let Some(slot) = self.slots.get_mut(id as usize) {
            *slot = Slot {
                generation: self.generation,
                value: value.map(TxValue::new),
                replayed: 0,
            };
        }
    }

    /// [`Tx::set_slot`] for the folded write numbered `write` (unique in the process), which
    /// always writes `value`: where the slot still holds what that write left, it is renewed
    /// without copying the value again.
    fn replay(&mut self, id: u32, value: Option<&[u8]>, write: u64) {
        match self.slots.get_mut(id as usize) {
            Some(slot) if slot.replayed == write && self.written.is_none() => {
                slot.generation = self.generation;
            }
            Some(_) => {
                self.set_slot(id, value);
                if let Some(slot) = self.slots.get_mut(id as usize) {
                    slot.replayed = write;
                }
            }
            None => {}
        }
    }

    /// `key` lower-case.
    fn get(&self, names: &Names, key: &str) -> Option<&TxValue> {
        match names.get(key) {
            Some(id) => self.slot(id),
            None => self
                .named
                .get(*self.dynamic.get(key)?)
                .filter(|e| e.generation == self.generation)
                .map(|e| &e.value),
        }
    }

    /// `key` lower-case; `None` unsets it.
    fn set(&mut self, names: &Names, key: &str, value: Option<&[u8]>) {
        if let Some(id) = names.get(key) {
            return self.set_slot(id, value);
        }
        let generation = self.generation;
        let Some(value) = value else {
            if let Some(e) = self.dynamic.get(key).and_then(|&i| self.named.get_mut(i)) {
                e.generation = 0;
            }
            return;
        };
        let value = TxValue::new(value);
        let Some(&i) = self.dynamic.get(key) else {
            self.dynamic.insert(key.to_owned(), self.named.len());
            self.live.push(self.named.len());
            self.named.push(Named {
                name: key.to_owned(),
                generation,
                listed: generation,
                value,
            });
            return;
        };
        if let Some(e) = self.named.get_mut(i) {
            e.generation = generation;
            e.value = value;
            if e.listed != generation {
                e.listed = generation;
                self.live.push(i);
            }
        }
    }

    /// The entries with run-time names (never numbered ones: [`Tx::set`] keeps those in slots).
    fn dynamic(&self) -> impl Iterator<Item = (&str, &TxValue)> {
        self.live.iter().filter_map(|&i| {
            let e = self.named.get(i)?;
            (e.generation == self.generation).then_some((e.name.as_str(), &e.value))
        })
    }

    fn iter<'a>(&'a self, names: &'a Names) -> impl Iterator<Item = (&'a str, &'a TxValue)> {
        let numbered = self.slots.iter().enumerate().filter_map(move |(id, slot)| {
            let v = slot
                .value
                .as_ref()
                .filter(|_| slot.generation == self.generation)?;
            Some((names.names.get(id)?.as_str(), v))
        });
        let dynamic = self.dynamic();
        numbered.chain(dynamic)
    }
}

impl State {
    fn new() -> State {
        State {
            tx: Tx::default(),
            matched: Vec::new(),
            matched_len: 0,
            removed_ids: Vec::new(),
            removed_tags: Vec::new(),
            removed_targets_by_id: Vec::new(),
            removed_targets_by_tag: Vec::new(),
            engine: EngineMode::Off,
            body_type: None,
            processor: None,
            processor_name: None,
            body_access: false,
            marker: None,
            skip: 0,
            allowed: false,
            status: None,
            intervention: None,
            matches: Vec::new(),
            save_message: true,
            ip_record: String::new(),
            global_record: String::new(),
            pending: Vec::new(),
        }
    }

    /// Whether the blocks of folded rules apply: nothing the analysis assumed has changed (see
    /// `fold`'s "When a block does not apply").
    fn folding(&self) -> bool {
        self.skip == 0
            && self.removed_ids.is_empty()
            && self.removed_tags.is_empty()
            && self.removed_targets_by_id.is_empty()
            && self.removed_targets_by_tag.is_empty()
    }

    fn matched_clear(&mut self) {
        self.matched_len = 0;
    }

    fn matched_push_parts(
        &mut self,
        collection: Option<Collection>,
        key: Option<&[u8]>,
        value: &[u8],
    ) {
        if self.matched_len == self.matched.len() {
            self.matched.push(Matched::default());
        }
        let entry = &mut self.matched[self.matched_len];
        self.matched_len += 1;
        entry.collection = collection;
        match (key, &mut entry.key) {
            (None, key) => *key = None,
            (Some(k), Some(buf)) => {
                buf.clear();
                buf.extend_from_slice(k);
            }
            (Some(k), key) => *key = Some(k.to_vec()),
        }
        entry.value.clear();
        entry.value.extend_from_slice(value);
        entry.replayed = 0;
    }

    /// [`State::matched_push_parts`] for the folded entry numbered `entry` (unique in the
    /// process): where the next place already holds what that entry copied there on an
    /// earlier request, it is taken as it is.
    fn matched_replay(
        &mut self,
        collection: Collection,
        key: Option<&[u8]>,
        value: &[u8],
        entry: u64,
    ) {
        if self
            .matched
            .get(self.matched_len)
            .is_some_and(|m| m.replayed == entry)
        {
            self.matched_len += 1;
            return;
        }
        self.matched_push_parts(Some(collection), key, value);
        if let Some(m) = self.matched.get_mut(self.matched_len - 1) {
            m.replayed = entry;
        }
    }

    fn matched(&self) -> &[Matched] {
        &self.matched[..self.matched_len]
    }

    fn record(&self, collection: Collection) -> &str {
        if collection == Collection::Ip {
            &self.ip_record
        } else {
            &self.global_record
        }
    }
}

/// The values one link inspects: usually few, kept on the stack.
type Values<'a> = SmallVec<[Value<'a>; 4]>;

/// A variable's value as one rule sees it.
#[derive(Debug)]
struct Value<'a> {
    collection: Collection,
    /// The member's name; `None` for scalars and counts.
    key: Option<Bytes<'a>>,
    value: Bytes<'a>,
}

impl Value<'_> {
    fn name(&self) -> Vec<u8> {
        variable_name(self.collection, self.key.as_deref())
    }
}

/// `COLLECTION:key` (or `COLLECTION` for a scalar), as libmodsecurity names a variable.
fn variable_name(collection: Collection, key: Option<&[u8]>) -> Vec<u8> {
    match key {
        None => collection.name().as_bytes().to_vec(),
        Some(key) => [collection.name().as_bytes(), b":", key].concat(),
    }
}

pub(crate) fn evaluate(
    config: &Config,
    store: &Persistent,
    request: &Request<'_>,
) -> Result<Outcome, Unsupported> {
    let mut vars = Vars {
        store: Some(store),
        headers: request.headers,
        method: request.method.as_bytes(),
        unique_id: request.id.as_bytes(),
        remote_addr: {
            let mut addr = Vec::with_capacity(15);
            crate::push_address(&mut addr, request.client.ip());
            addr
        },
        remote_port: itoa::Buffer::new()
            .format(request.client.port())
            .as_bytes()
            .to_vec(),
        target: request::target(request.method, request.uri, request.http_version),
        ..Vars::default()
    };
    request::parse_query(&vars.target.query_string, &mut vars.args_get);
    // libmodsecurity reads the body type from each Content-Type header as it is added (a prefix
    // match, without regard to case); cookies from every Cookie header.
    let mut body_type = None;
    let mut processor_name = None;
    for (name, value) in request.headers {
        if name.eq_ignore_ascii_case(b"cookie") {
            request::parse_cookies(value, &mut vars.cookies);
        } else if name.eq_ignore_ascii_case(b"content-type") {
            let starts = |prefix: &[u8]| {
                value.len() >= prefix.len() && value[..prefix.len()].eq_ignore_ascii_case(prefix)
            };
            if starts(b"multipart/form-data") {
                body_type = Some(BodyProcessor::Multipart);
                processor_name = Some("MULTIPART");
            }
            if starts(b"application/x-www-form-urlencoded") {
                body_type = Some(BodyProcessor::UrlEncoded);
                processor_name = Some("URLENCODED");
            }
        }
    }

    vars.absent_headers = config
        .header_keys
        .absent(request.headers.iter().map(|(name, _)| *name));
    vars.index(true);
    let (mut state, mut buffers) = take_state();
    state.tx.reset(config.tx_names.names.len());
    vars.tx_names = Some(&config.tx_names);
    // Without SecRuleEngine libmodsecurity runs the rules but no disruptive action.
    state.engine = config.engine.unwrap_or(EngineMode::DetectionOnly);
    state.body_type = body_type;
    state.processor_name = processor_name;
    // Without SecRequestBodyAccess libmodsecurity still runs phase 2; only Off stops it.
    state.body_access = config.body_access.unwrap_or(true);
    let result = run(config, request, &mut vars, &mut state, &mut buffers);
    if result.is_ok() {
        for (collection, record, name, value) in state.pending.drain(..) {
            store.write(collection, &record, &name, value);
        }
    }
    give_back(state, buffers);
    result
}

thread_local! {
    /// A thread's evaluation state, reused: its maps and buffers keep their capacity.
    static STATE: std::cell::RefCell<Option<(State, Buffers)>> =
        const { std::cell::RefCell::new(None) };
}

/// This thread's state, reset for a new evaluation.
fn take_state() -> (State, Buffers) {
    let (mut state, mut buffers) = STATE
        .with(|s| s.borrow_mut().take())
        .unwrap_or_else(|| (State::new(), Buffers::default()));
    state.matched_len = 0;
    state.removed_ids.clear();
    state.removed_tags.clear();
    state.removed_targets_by_id.clear();
    state.removed_targets_by_tag.clear();
    state.processor = None;
    state.marker = None;
    state.skip = 0;
    state.allowed = false;
    state.status = None;
    state.intervention = None;
    state.matches = Vec::new();
    state.save_message = true;
    state.ip_record.clear();
    state.global_record.clear();
    state.pending.clear();
    buffers.memo.clear();
    (state, buffers)
}

fn give_back(state: State, buffers: Buffers) {
    STATE.with(|s| *s.borrow_mut() = Some((state, buffers)));
}

/// Bytes of JSON argument names and values inspected per request at least (at most 4× the
/// body if that is more); see the JSON body processing in [`run`].
const JSON_ARGS_BUDGET: usize = 1 << 20;

/// The phases and the body between them.
fn run<'r>(
    config: &Config,
    request: &Request<'r>,
    vars: &mut Vars<'r>,
    state: &mut State,
    buffers: &mut Buffers,
) -> Result<Outcome, Unsupported> {
    let state = &mut *state;
    if state.engine == EngineMode::Off {
        return Ok(Outcome::default());
    }

    run_phase(config, 0, vars, state, buffers)?;
    if state.intervention.is_some() || state.engine == EngineMode::Off {
        return Ok(finish(state));
    }

    // Between the phases: the body, as libmodsecurity's appendRequestBody and
    // processRequestBody do it.
    let mut body = request.body;
    if let Some(limit) = config.body_limit.filter(|l| *l > 0)
        && body.len() as u64 > limit
    {
        if !config.partial_bodies {
            return Err(Unsupported("request bodies over the limit with Reject"));
        }
        vars.inbound_data_error = Some("1");
        body = &body[..usize::try_from(limit).unwrap_or(body.len())];
    }
    if vars.inbound_data_error.is_none() {
        vars.inbound_data_error = Some("0");
    }
    let structured = state.body_type == Some(BodyProcessor::UrlEncoded)
        || matches!(
            state.processor,
            Some(BodyProcessor::Json | BodyProcessor::Xml)
        );
    let over = structured && config.no_files_limit.is_some_and(|l| body.len() as u64 > l);
    if over {
        vars.reqbody_error = Some("1");
        vars.reqbody_error_msg =
            Some("Request body excluding files is bigger than the maximum expected.".into());
        vars.inbound_data_error = Some("1");
    }
    match (state.processor, state.body_type) {
        (Some(BodyProcessor::Xml), _) => return Err(Unsupported("XML request bodies")),
        (Some(BodyProcessor::Json), _) => {
            if !over {
                // libmodsecurity names each member after all its containers, so a body can
                // yield arguments quadratic in its size; past JSON_ARGS_BUDGET the body counts as
                // one that does not parse (our deviation: libmodsecurity would build them all).
                let budget = body.len().saturating_mul(4).max(JSON_ARGS_BUDGET);
                match request::parse_json_budgeted(
                    body,
                    request::JSON_DEFAULT_DEPTH_LIMIT,
                    usize::MAX,
                    budget,
                    &mut vars.args_json,
                ) {
                    Ok(()) => vars.reqbody_error = Some("0"),
                    Err(request::JsonFailure::Parse(message)) => {
                        vars.reqbody_error = Some("1");
                        vars.reqbody_error_msg = Some(message);
                    }
                    Err(request::JsonFailure::OverBudget) => {
                        vars.args_json.clear();
                        vars.reqbody_error = Some("1");
                        vars.reqbody_error_msg = Some(
                            "JSON parsing error: the body's arguments exceed the inspection budget"
                                .into(),
                        );
                    }
                }
            }
        }
        (_, Some(BodyProcessor::Multipart)) => {
            return Err(Unsupported("multipart request bodies"));
        }
        // libmodsecurity sets no REQBODY_ERROR for a form body.
        (_, Some(BodyProcessor::UrlEncoded)) => {
            if !over {
                request::parse_form(body, &mut vars.args_post);
            }
        }
        _ => vars.reqbody_error = Some("0"),
    }
    if !state.body_access {
        return Ok(finish(state));
    }
    if !body.is_empty() {
        vars.body = Some(body);
    }
    vars.index(false);
    run_phase(config, 1, vars, state, buffers)?;
    Ok(finish(state))
}

fn finish(state: &mut State) -> Outcome {
    Outcome {
        intervention: state.intervention.take(),
        matches: std::mem::take(&mut state.matches),
    }
}

fn run_phase(
    config: &Config,
    phase: usize,
    vars: &Vars<'_>,
    state: &mut State,
    buffers: &mut Buffers,
) -> Result<(), Unsupported> {
    if state.allowed {
        return Ok(());
    }
    let items = &config.phases[phase];
    // A `skipAfter` jumps to the next marker of that name; one the previous phase did not
    // reach carries on into this one, as in libmodsecurity.
    let mut i = match state.marker {
        Some(id) => next_marker(config, phase, id, 0),
        None => 0,
    };
    while i < items.len() {
        if let Some(block) = config.folds.at(phase, i)
            && state.folding()
        {
            i = block.apply(state);
            continue;
        }
        i = step(config, phase, i, vars, state, buffers)?;
        if state.intervention.is_some() || state.allowed {
            break;
        }
    }
    Ok(())
}

/// Item `i` of `phase` as a request meets it: a marker ends a jump to it; a rule is passed
/// over (`skip:N`, removed, nothing to test) or evaluated, and a jump it asks for is taken.
/// Returns the item to visit next. Inlined: it is the request path's per-rule loop body.
#[inline(always)]
fn step(
    config: &Config,
    phase: usize,
    i: usize,
    vars: &Vars<'_>,
    state: &mut State,
    buffers: &mut Buffers,
) -> Result<usize, Unsupported> {
    let next = i + 1;
    let rule = match &config.phases[phase][i] {
        Item::Marker(id) => {
            if state.marker == Some(*id) {
                state.marker = None;
            }
            return Ok(next);
        }
        Item::Rule(_) if state.skip > 0 => {
            state.skip -= 1;
            return Ok(next);
        }
        Item::Rule(rule) => rule,
    };
    if rule.removed
        || (!state.removed_tags.is_empty() && state.removed_tags.iter().any(|t| rule.has_tag(t)))
        // ctl:ruleRemoveById is checked by rules with an operator only, not by SecAction.
        // (The removal list first: it is nearly always empty, and the link is a pointer chase
        // to memory the scan would not touch otherwise.)
        || (in_ranges(&state.removed_ids, rule.id) && !rule.links[0].unconditional)
    {
        return Ok(next);
    }
    if rule.reads & !vars.empty == 0 {
        // Nothing to test (see `Eval::link`).
        state.matched_clear();
        return Ok(next);
    }
    evaluate_rule(config, phase, rule, vars, state, buffers)?;
    Ok(match state.marker {
        Some(id) => next_marker(config, phase, id, next),
        None => next,
    })
}

/// One rule, its chain and actions, and its log entry.
fn evaluate_rule(
    config: &Config,
    phase: usize,
    rule: &Rule,
    vars: &Vars<'_>,
    state: &mut State,
    buffers: &mut Buffers,
) -> Result<(), Unsupported> {
    let mut cx = Eval::start(config, phase, rule, rule.links.len(), vars, state);
    if rule.links[0].unconditional {
        cx.unconditional()?;
    } else if cx.link(0, buffers)? && cx.state.save_message {
        let disrupted = cx.state.intervention.is_some();
        if !disrupted && !rule.links[0].multi_match {
            cx.log();
        }
    }
    Ok(())
}

/// The first `links` links of `rule`'s chain as a request meets them, the chain ending there:
/// whether they all matched. A chain that fails within them has had its whole effect (the
/// setvars of the links that matched, `MATCHED_VARS` cleared), since evaluation stops at the
/// first link that does not match; the fold analysis relies on that.
fn chain_prefix_matches(
    config: &Config,
    phase: usize,
    rule: &Rule,
    links: usize,
    vars: &Vars<'_>,
    state: &mut State,
    buffers: &mut Buffers,
) -> Result<bool, Unsupported> {
    Eval::start(config, phase, rule, links, vars, state).link(0, buffers)
}

/// The index of the first marker `id` at or after `from` in `phase`, or the end.
fn next_marker(config: &Config, phase: usize, id: u32, from: usize) -> usize {
    let end = config.phases[phase].len();
    config.markers[phase]
        .get(id as usize)
        .map_or(end, |positions| {
            let at = positions.partition_point(|p| *p < from);
            positions.get(at).copied().unwrap_or(end)
        })
}

fn in_ranges(ranges: &[(u32, u32)], id: u32) -> bool {
    ranges.iter().any(|(a, b)| (*a..=*b).contains(&id))
}

struct Eval<'e, 'r> {
    config: &'e Config,
    rule: &'e Rule,
    /// How many links of the chain are evaluated: all of them, but for the fold analysis.
    links: usize,
    phase: usize,
    vars: &'e Vars<'r>,
    state: &'e mut State,
}

impl<'e, 'r> Eval<'e, 'r> {
    /// The evaluation of `rule`'s first `links` links, its per-rule state reset.
    fn start(
        config: &'e Config,
        phase: usize,
        rule: &'e Rule,
        links: usize,
        vars: &'e Vars<'r>,
        state: &'e mut State,
    ) -> Self {
        state.save_message = true;
        // A deny answers with its own rule's status (or the phase default), not one an
        // earlier rule set (checked against libmodsecurity in tests/native_semantics.rs).
        state.status = None;
        Eval {
            config,
            rule,
            links: links.min(rule.links.len()),
            phase,
            vars,
            state,
        }
    }
    fn log(&mut self) {
        if self.state.matches.len() < MAX_MATCHES {
            let message = self.rule.links[0]
                .msg
                .as_ref()
                .map(|m| self.expand_macro(m).into_text());
            self.state.matches.push(RuleMatch {
                id: Some(self.rule.id),
                message,
            });
        }
    }

    /// A `SecAction`: its actions run; it is logged only if it blocks or has a message (the
    /// logging rule libmodsecurity applies to unconditional rules).
    fn unconditional(&mut self) -> Result<(), Unsupported> {
        let link = &self.rule.links[0];
        if let Some(what) = link.unsupported {
            return Err(Unsupported(what));
        }
        for setvar in &link.setvars {
            self.setvar(setvar);
        }
        self.after_full_match(link)?;
        let blocks = link.disruptive == Some(Disruptive::Block);
        let disrupted = self.state.intervention.is_some();
        if !disrupted && (blocks || (self.state.save_message && link.msg.is_some())) {
            self.log();
        }
        Ok(())
    }

    /// Evaluates link `index` and, if it matches, the rest of the chain; runs the actions.
    fn link(&mut self, index: usize, buffers: &mut Buffers) -> Result<bool, Unsupported> {
        let rule = self.rule;
        let link = &rule.links[index];
        if link.reads & !self.vars.empty == 0 {
            // Nothing to test: the link matches nothing, as if evaluated.
            self.state.matched_clear();
            return Ok(false);
        }
        // libmodsecurity matches `ctl:ruleRemoveTarget*` against each link's own id and tags,
        // and a chained link has neither, so only the first link loses targets.
        let removals = index == 0
            && (!self.state.removed_targets_by_id.is_empty()
                || !self.state.removed_targets_by_tag.is_empty());
        // Each target's values are read when the link comes to it, after the tests of the
        // targets before it ran their captures and setvars, as libmodsecurity reads them.
        let mut matched = false;
        for target in &link.targets {
            // As for the whole link: a target that reads only what the request lacks yields
            // no value.
            if target.reads & !self.vars.empty != 0 {
                matched |= self.test_target(link, index, target, removals, buffers)?;
            }
        }
        if !matched {
            self.state.matched_clear();
            return Ok(false);
        }
        if index + 1 < self.links && !self.link(index + 1, buffers)? {
            return Ok(false);
        }
        self.after_full_match(link)?;
        Ok(true)
    }

    /// One target's values through the link: those the request holds as parsed and a
    /// numbered `TX` name tested as they are found, the others (computed or held by the
    /// state, or under `ctl:ruleRemoveTarget*`) gathered by [`Eval::collect`] first.
    fn test_target(
        &mut self,
        link: &Link,
        index: usize,
        target: &Target,
        removals: bool,
        buffers: &mut Buffers,
    ) -> Result<bool, Unsupported> {
        let (vars, config) = (self.vars, self.config);
        let collection = target.collection;
        let excluded = |key: &[u8]| target.exclusions.iter().any(|e| selects(e, key));
        // `&COLLECTION`: one value, how many members there are (0 included).
        let mut count = |this: &mut Self, n: usize| {
            let mut digits = itoa::Buffer::new();
            this.inspect(
                link,
                index,
                collection,
                None,
                digits.format(n).as_bytes(),
                buffers,
            )
        };
        match (removals, source(vars, collection), &target.selector) {
            (false, Source::Scalar(value), _) => {
                let value = value.filter(|_| !excluded(b""));
                if target.count {
                    return count(self, usize::from(value.is_some()));
                }
                match value {
                    Some(value) => self.inspect(link, index, collection, None, value, buffers),
                    None => Ok(false),
                }
            }
            (false, Source::Members(list), selector) => {
                let found = list.selected(selector).filter(|(key, _)| !excluded(key));
                if target.count {
                    return count(self, found.count());
                }
                let mut matched = false;
                for (key, value) in found {
                    matched |= self.inspect(link, index, collection, Some(key), value, buffers)?;
                }
                Ok(matched)
            }
            (false, Source::Computed, &Selector::Tx(id)) => {
                let name = config.tx_names.name(id).as_bytes();
                let value = self.state.tx.slot(id).filter(|_| !excluded(name)).cloned();
                if target.count {
                    return count(self, usize::from(value.is_some()));
                }
                match value {
                    Some(value) => {
                        self.inspect(link, index, collection, Some(name), &value, buffers)
                    }
                    None => Ok(false),
                }
            }
            _ => {
                let mut values = Values::new();
                self.collect(target, removals, &mut values);
                let mut matched = false;
                for value in &values {
                    let key = value.key.as_deref();
                    matched |=
                        self.inspect(link, index, value.collection, key, &value.value, buffers)?;
                }
                Ok(matched)
            }
        }
    }

    /// One value of a link through its transformations and operator: the fully transformed
    /// value, or with `multiMatch` the value and every stage that changed it.
    fn inspect(
        &mut self,
        link: &Link,
        index: usize,
        collection: Collection,
        key: Option<&[u8]>,
        value: &[u8],
        buffers: &mut Buffers,
    ) -> Result<bool, Unsupported> {
        let Buffers { a, b, memo } = buffers;
        if !link.multi_match {
            let last = if link.chain == 0 || value.len() < TransformMemo::MIN_INPUT {
                transform(&link.transforms, value, a, b)
            } else {
                memo.transformed(link.chain, &link.transforms, value, a, b)
            };
            return self.test(link, index, collection, key, last);
        }
        // The value itself, then every transformation stage that changed it, alternating
        // between the two buffers (`b_holds`: the last stage is in b).
        let mut matched = self.test(link, index, collection, key, value)?;
        let mut b_holds = None;
        for t in &link.transforms {
            let changed = match b_holds {
                None => t.apply_if_changing(value, a),
                Some(false) => t.apply_if_changing(a, b),
                Some(true) => t.apply_if_changing(b, a),
            };
            if changed {
                let in_b = b_holds == Some(false);
                b_holds = Some(in_b);
                let stage = if in_b { &b } else { &a };
                matched |= self.test(link, index, collection, key, stage)?;
            }
        }
        Ok(matched)
    }

    /// Runs the operator on one (transformed) value; on a match, the per-match actions.
    fn test(
        &mut self,
        link: &Link,
        index: usize,
        collection: Collection,
        key: Option<&[u8]>,
        input: &[u8],
    ) -> Result<bool, Unsupported> {
        let hit = match link.operator.evaluate(input, link.capture, self) {
            operator::Outcome::Match => !link.negated,
            operator::Outcome::NoMatch => link.negated,
            operator::Outcome::Unsupported(what) => return Err(Unsupported(what)),
        };
        if !hit {
            return Ok(false);
        }
        // Only a link that matches runs the actions the engine cannot.
        if let Some(what) = link.unsupported {
            return Err(Unsupported(what));
        }
        self.state.matched_push_parts(Some(collection), key, input);
        for setvar in &link.setvars {
            self.setvar(setvar);
        }
        if link.multi_match && self.state.save_message && index == 0 {
            self.log();
        }
        Ok(true)
    }

    fn after_full_match(&mut self, link: &Link) -> Result<(), Unsupported> {
        let defaults = &self.config.defaults[self.phase];
        if let Some(log) = defaults.log {
            self.state.save_message = log;
        }
        for (collection, key) in &link.initcols {
            let record = self.expand_macro(key).into_text();
            if *collection == Collection::Ip {
                self.state.ip_record = record;
            } else {
                self.state.global_record = record;
            }
        }
        for ctl in &link.ctls {
            self.ctl(ctl);
        }
        if let Some(marker) = link.skip_after {
            self.state.marker = Some(marker);
        }
        if let Some(n) = link.skip {
            self.state.skip = n;
        }
        if let Some(log) = link.log {
            self.state.save_message = log;
        }
        // The phase's default status, then the rule's own.
        if let Some(status) = defaults.status {
            self.state.status = Some(status);
        }
        if let Some(status) = link.status {
            self.state.status = Some(status);
        }
        let disruptive = match link.disruptive {
            Some(Disruptive::Block) => defaults.disruptive,
            other => other,
        };
        if self.state.engine != EngineMode::On {
            return Ok(());
        }
        match disruptive {
            None | Some(Disruptive::Pass) | Some(Disruptive::Block) => {}
            Some(Disruptive::Deny) => {
                let message = self.rule.links[0]
                    .msg
                    .as_ref()
                    .map(|m| self.expand_macro(m).into_text());
                self.state.intervention = Some(Intervention {
                    // deny turns an unset (200) status into 403; the reference wrapper
                    // reports anything outside 300–599 as 403 too.
                    status: self
                        .state
                        .status
                        .filter(|s| (300..600).contains(s))
                        .unwrap_or(403),
                    rule: RuleMatch {
                        id: Some(self.rule.id),
                        message,
                    },
                    redirect: None,
                });
            }
            Some(Disruptive::Allow) => self.state.allowed = true,
            Some(Disruptive::Drop) => return Err(Unsupported("drop")),
            Some(Disruptive::Redirect) => return Err(Unsupported("redirect")),
        }
        Ok(())
    }

    fn ctl(&mut self, ctl: &Ctl) {
        let state = &mut *self.state;
        match ctl {
            Ctl::RuleRemoveById(a, b) => state.removed_ids.push((*a, *b)),
            Ctl::RuleRemoveByTag(tag) => state.removed_tags.push(tag.clone()),
            Ctl::RuleRemoveTargetById(id, target) => {
                state.removed_targets_by_id.push((*id, target.clone()))
            }
            Ctl::RuleRemoveTargetByTag(tag, target) => state
                .removed_targets_by_tag
                .push((tag.clone(), target.clone())),
            Ctl::RuleEngine(mode) => state.engine = *mode,
            Ctl::BodyProcessor(p) => {
                match p {
                    BodyProcessor::Json | BodyProcessor::Xml => state.processor = Some(*p),
                    BodyProcessor::UrlEncoded | BodyProcessor::Multipart => {
                        state.body_type = Some(*p)
                    }
                }
                state.processor_name = Some(p.name());
            }
            Ctl::RequestBodyAccess(on) => state.body_access = *on,
            Ctl::Ignored => {}
        }
    }

    fn setvar(&mut self, setvar: &super::parse::SetVar) {
        let name: std::borrow::Cow<'_, str> = match &setvar.literal {
            Some(name) => name.into(),
            None => {
                let mut name = self.expand_macro(&setvar.name).into_text();
                name.make_ascii_lowercase();
                name.into()
            }
        };
        let collection = setvar.collection;
        let names = &self.config.tx_names;
        let current = || -> i64 {
            if collection == Collection::Tx {
                let value = match setvar.slot {
                    Some(id) => self.state.tx.slot(id),
                    None => self.state.tx.get(names, &name),
                };
                value.map_or(0, |v| operator::atoll(v))
            } else {
                persistent_read(
                    self.vars,
                    self.state,
                    collection,
                    &Selector::Key(name.to_string()),
                )
                .first()
                .map_or(0, |(_, v)| operator::atoll(v))
            }
        };
        let value = match &setvar.op {
            SetOp::Unset => None,
            SetOp::Set(value) => Some(Number::Text(self.expand_macro(value))),
            SetOp::Add(delta) => {
                let delta = operator::atoll(&self.expand_macro(delta));
                Some(Number::from(current().wrapping_add(delta)))
            }
            SetOp::Sub(delta) => {
                let delta = operator::atoll(&self.expand_macro(delta));
                Some(Number::from(current().wrapping_sub(delta)))
            }
        };
        if collection == Collection::Tx {
            let value = value.as_ref().map(Number::as_bytes);
            match setvar.slot {
                Some(id) => self.state.tx.set_slot(id, value),
                None => self.state.tx.set(names, &name, value),
            }
        } else {
            let record = self.state.record(collection).to_owned();
            let value = value.map(|v| v.as_bytes().to_vec());
            self.state
                .pending
                .push((collection, record, name.into_owned(), value));
        }
    }

    /// The values one target of a link gives, exclusions and (with `removals`) `ctl` target
    /// removals applied.
    fn collect(&self, target: &'e Target, removals: bool, out: &mut Values<'e>) {
        if removals && self.target_removed(target) {
            return;
        }
        resolve(
            self.vars,
            self.state,
            target.collection,
            &target.selector,
            out,
        );
        // `!COLLECTION:key` exclusions, then `ctl:ruleRemoveTarget*` removals.
        if !target.exclusions.is_empty() || removals {
            let mut i = 0;
            while i < out.len() {
                let key: &[u8] = out[i].key.as_deref().unwrap_or(b"");
                let excluded = target.exclusions.iter().any(|e| selects(e, key))
                    || (removals && self.value_removed(&out[i].name()));
                if excluded {
                    out.remove(i);
                } else {
                    i += 1;
                }
            }
        }
        if target.count {
            let count = out.len();
            out.clear();
            out.push(Value {
                collection: target.collection,
                key: None,
                value: Bytes::Owned(count.to_string().into_bytes()),
            });
        }
    }

    fn target_removed(&self, target: &Target) -> bool {
        let key = match &target.selector {
            Selector::All => None,
            Selector::Key(k) => Some(k.as_str()),
            Selector::Tx(id) => Some(self.config.tx_names.name(*id)),
            Selector::Regex(_) | Selector::TxRegex(..) => return false,
        };
        self.value_removed(&variable_name(target.collection, key.map(str::as_bytes)))
    }

    /// Whether `ctl:ruleRemoveTarget*` took `name` (`COLLECTION` or `COLLECTION:key`, compared
    /// as written, as libmodsecurity does) from this rule.
    fn value_removed(&self, name: &[u8]) -> bool {
        self.state
            .removed_targets_by_id
            .iter()
            .any(|(id, t)| *id == self.rule.id && t.as_bytes() == name)
            || self
                .state
                .removed_targets_by_tag
                .iter()
                .any(|(tag, t)| self.rule.has_tag(tag) && t.as_bytes() == name)
    }

    /// Expands `%{...}` macros: the first value of each named variable (`TX` directly, others
    /// as a rule target would see them).
    fn expand_macro<'m>(&self, m: &'m Macro) -> Bytes<'m> {
        match m.parts.as_slice() {
            [] => return Bytes::Borrowed(b""),
            [MacroPart::Text(t)] => return Bytes::Borrowed(t.as_bytes()),
            [MacroPart::Tx(id)] => {
                return match self.state.tx.slot(*id) {
                    Some(v) => Bytes::Tx(v.clone()),
                    None => Bytes::Borrowed(b""),
                };
            }
            _ => {}
        }
        // Room for the text and a short value per variable: most expand to a record key or
        // a variable name, and growing the buffer part by part cost more than the rest.
        let room = m.parts.iter().fold(0, |n, part| match part {
            MacroPart::Text(t) => n + t.len(),
            _ => n + 24,
        });
        let mut out = Vec::with_capacity(room);
        for part in &m.parts {
            match part {
                MacroPart::Text(t) => out.extend_from_slice(t.as_bytes()),
                MacroPart::Tx(id) => {
                    if let Some(v) = self.state.tx.slot(*id) {
                        out.extend_from_slice(v);
                    }
                }
                MacroPart::Rule(key) => match key.as_deref() {
                    Some("id") => out.extend_from_slice(self.rule.id.to_string().as_bytes()),
                    Some("msg") => {
                        if let Some(msg) = &self.rule.links[0].msg {
                            out.extend_from_slice(&self.expand_macro(msg));
                        }
                    }
                    _ => {}
                },
                MacroPart::Unknown => {}
                MacroPart::Var(c, selector) => match source(self.vars, *c) {
                    Source::Scalar(value) => out.extend_from_slice(value.unwrap_or_default()),
                    Source::Members(members) => {
                        if let Some((_, value)) = members.selected(selector).next() {
                            out.extend_from_slice(value);
                        }
                    }
                    Source::Computed => {
                        let mut values = Values::new();
                        resolve(self.vars, self.state, *c, selector, &mut values);
                        if let Some(first) = values.first() {
                            out.extend_from_slice(&first.value);
                        }
                    }
                },
            }
        }
        Bytes::Owned(out)
    }
}

/// The members of the current `ip`/`global` record that `selector` picks: the store's, with
/// this evaluation's pending writes over them.
fn persistent_read(
    vars: &Vars<'_>,
    state: &State,
    collection: Collection,
    selector: &Selector,
) -> Vec<(String, Vec<u8>)> {
    let record = state.record(collection);
    let mut members = vars
        .store
        .map(|store| store.read(collection, record, selector))
        .unwrap_or_default();
    for (c, r, name, value) in &state.pending {
        if *c != collection || r != record || !selects(selector, name.as_bytes()) {
            continue;
        }
        members.retain(|(k, _)| !k.eq_ignore_ascii_case(name));
        if let Some(value) = value {
            members.push((name.clone(), value.clone()));
        }
    }
    members
}

/// Where a collection's values are for this request.
enum Source<'s> {
    /// One value, or none.
    Scalar(Option<&'s [u8]>),
    /// A keyed collection's members.
    Members(Members<'s>),
    /// Values computed when read or held by the evaluation's state: [`resolve`] builds them.
    Computed,
}

/// The values of the collections the request holds as parsed; [`Source::Computed`] for the
/// others.
fn source<'s>(vars: &'s Vars<'_>, collection: Collection) -> Source<'s> {
    use Collection::*;
    let pairs = |list: &'s [Pair], order: &'s [usize], names: bool| {
        Source::Members(Members {
            list: List::Pairs(list),
            order,
            names,
        })
    };
    let headers = |names: bool| {
        Source::Members(Members {
            list: List::Headers(vars.headers),
            order: &vars.order.headers,
            names,
        })
    };
    let scalar = |value: &'s [u8]| Source::Scalar(Some(value));
    let text = |value: Option<&'s str>| Source::Scalar(value.map(str::as_bytes));
    match collection {
        Args => pairs(&vars.args, &vars.order.args, false),
        ArgsGet => pairs(&vars.args_get, &vars.order.args_get, false),
        ArgsPost => pairs(&vars.args_post, &vars.order.args_post, false),
        ArgsNames => pairs(&vars.args, &vars.order.args, true),
        ArgsGetNames => pairs(&vars.args_get, &vars.order.args_get, true),
        ArgsPostNames => pairs(&vars.args_post, &vars.order.args_post, true),
        RequestHeaders => headers(false),
        RequestHeadersNames => headers(true),
        RequestCookies => pairs(&vars.cookies, &vars.order.cookies, false),
        RequestCookiesNames => pairs(&vars.cookies, &vars.order.cookies, true),
        RequestUri => scalar(&vars.target.request_uri),
        RequestUriRaw => scalar(&vars.target.request_uri_raw),
        RequestFilename => scalar(&vars.target.request_filename),
        RequestBasename => scalar(&vars.target.request_basename),
        RequestLine => scalar(&vars.target.request_line),
        RequestMethod => scalar(vars.method),
        RequestProtocol => scalar(&vars.target.request_protocol),
        QueryString => scalar(&vars.target.query_string),
        RequestBody => Source::Scalar(vars.body),
        ReqbodyError => text(vars.reqbody_error),
        ReqbodyErrorMsg => text(vars.reqbody_error_msg.as_deref()),
        InboundDataError => text(vars.inbound_data_error),
        // Multipart and XML bodies go to libmodsecurity: for the requests evaluated here these
        // are empty, as libmodsecurity has them then. No GeoIP database, no timing.
        MultipartStrictError | MultipartPartHeaders | Files | FilesNames | FilesCombinedSize
        | Xml | Geo | Duration => Source::Scalar(None),
        RemoteAddr => scalar(&vars.remote_addr),
        RemotePort => scalar(&vars.remote_port),
        UniqueId => scalar(vars.unique_id),
        ArgsCombinedSize | RequestBodyLength | ReqbodyProcessor | MatchedVar | MatchedVarName
        | MatchedVars | MatchedVarsNames | Tx | Ip | Global => Source::Computed,
    }
}

/// A keyed collection of the request: its pairs, the order rules visit them in, and whether
/// a rule reads the names (`*_NAMES`) instead of the values.
#[derive(Clone, Copy)]
struct Members<'s> {
    list: List<'s>,
    order: &'s [usize],
    names: bool,
}

#[derive(Clone, Copy)]
enum List<'s> {
    Pairs(&'s [Pair]),
    Headers(&'s [(&'s [u8], &'s [u8])]),
}

impl<'s> Members<'s> {
    /// The (name, value) of each member `selector` picks, as libmodsecurity's multimap yields
    /// them: a whole collection or a regex selection in rule order, one key's members newest
    /// first (the reverse). For `*_NAMES` the value is the name.
    fn selected<'a>(
        self,
        selector: &'a Selector,
    ) -> impl Iterator<Item = (&'s [u8], &'s [u8])> + use<'a, 's> {
        let forward = !matches!(selector, Selector::Key(_));
        let n = self.order.len();
        (0..n).filter_map(move |j| {
            let i = self.order[if forward { j } else { n - 1 - j }];
            let (k, v) = match self.list {
                List::Pairs(list) => list.get(i).map(|(k, v)| (&k[..], &v[..]))?,
                List::Headers(list) => *list.get(i)?,
            };
            selects(selector, k).then_some((k, if self.names { k } else { v }))
        })
    }
}

/// Appends the members of `collection` that `selector` picks.
fn resolve<'s>(
    vars: &'s Vars<'_>,
    state: &State,
    collection: Collection,
    selector: &'s Selector,
    out: &mut Values<'s>,
) {
    use Collection::*;
    match source(vars, collection) {
        Source::Scalar(value) => {
            if let Some(value) = value {
                out.push(Value {
                    collection,
                    key: None,
                    value: Bytes::Borrowed(value),
                });
            }
            return;
        }
        Source::Members(members) => {
            for (key, value) in members.selected(selector) {
                out.push(Value {
                    collection,
                    key: Some(Bytes::Borrowed(key)),
                    value: Bytes::Borrowed(value),
                });
            }
            return;
        }
        Source::Computed => {}
    }
    match collection {
        ArgsCombinedSize if !vars.args.is_empty() => out.push(Value {
            collection,
            key: None,
            value: Bytes::Owned(request::combined_size(&vars.args).into_bytes()),
        }),
        RequestBodyLength if let Some(body) = vars.body => out.push(Value {
            collection,
            key: None,
            value: Bytes::Owned(body.len().to_string().into_bytes()),
        }),
        ReqbodyProcessor if let Some(name) = state.processor_name => out.push(Value {
            collection,
            key: None,
            value: Bytes::Borrowed(name.as_bytes()),
        }),
        MatchedVar | MatchedVarName => {
            if let Some(m) = state.matched().last() {
                out.push(Value {
                    collection,
                    key: None,
                    value: Bytes::Owned(if collection == MatchedVar {
                        m.value.clone()
                    } else {
                        m.name()
                    }),
                });
            }
        }
        MatchedVars | MatchedVarsNames => {
            for m in state.matched() {
                let name = m.name();
                if selects(selector, &name) {
                    out.push(Value {
                        collection,
                        value: Bytes::Owned(if collection == MatchedVars {
                            m.value.clone()
                        } else {
                            name.clone()
                        }),
                        key: Some(Bytes::Owned(name)),
                    });
                }
            }
        }
        Tx => match selector {
            Selector::Tx(id) => {
                if let Some(v) = state.tx.slot(*id) {
                    let name = vars.tx_names.map_or("", |names| names.name(*id));
                    out.push(Value {
                        collection,
                        key: Some(Bytes::Borrowed(name.as_bytes())),
                        value: Bytes::Tx(v.clone()),
                    });
                }
            }
            Selector::TxRegex(rx, ids) => {
                if let Some(names) = vars.tx_names {
                    for id in ids {
                        if let Some(v) = state.tx.slot(*id) {
                            out.push(Value {
                                collection,
                                key: Some(Bytes::Borrowed(names.name(*id).as_bytes())),
                                value: Bytes::Tx(v.clone()),
                            });
                        }
                    }
                    for (k, v) in state.tx.dynamic() {
                        if rx.is_match(k.as_bytes()) {
                            out.push(Value {
                                collection,
                                key: Some(Bytes::Owned(k.as_bytes().to_vec())),
                                value: Bytes::Tx(v.clone()),
                            });
                        }
                    }
                }
            }
            _ => {
                if let Some(names) = vars.tx_names {
                    for (k, v) in state.tx.iter(names) {
                        if selects(selector, k.as_bytes()) {
                            out.push(Value {
                                collection,
                                key: Some(Bytes::Owned(k.as_bytes().to_vec())),
                                value: Bytes::Tx(v.clone()),
                            });
                        }
                    }
                }
            }
        },
        Ip | Global => {
            for (k, v) in persistent_read(vars, state, collection, selector) {
                out.push(Value {
                    collection,
                    key: Some(Bytes::Owned(k.into_bytes())),
                    value: Bytes::Owned(v),
                });
            }
        }
        // Empty, or served by `source` above.
        _ => {}
    }
}

impl Context for Eval<'_, '_> {
    fn expand<'m>(&mut self, m: &'m Macro) -> Bytes<'m> {
        self.expand_macro(m)
    }

    fn capture(&mut self, group: usize, value: &[u8]) {
        // `TX.0`..`TX.9` are numbered 0–9 in every rule set; libmodsecurity stores higher
        // groups too.
        match u32::try_from(group) {
            Ok(id) if id <= 9 => self.state.tx.set_slot(id, Some(value)),
            _ => self
                .state
                .tx
                .set(&self.config.tx_names, &group.to_string(), Some(value)),
        }
    }
}

/// Whether `selector` picks the member named `key`.
fn selects(selector: &Selector, key: &[u8]) -> bool {
    match selector {
        Selector::All => true,
        Selector::Key(k) => k.as_bytes().eq_ignore_ascii_case(key),
        Selector::Regex(re) => re.is_match(key),
        // Only `TX` targets are numbered, and `TX` is looked up by number.
        Selector::Tx(_) => false,
        Selector::TxRegex(re, _) => re.is_match(key),
    }
}

/// The fully transformed value, computed in two reused buffers.
fn transform<'v>(
    transforms: &[Transform],
    value: &'v [u8],
    a: &'v mut Vec<u8>,
    b: &'v mut Vec<u8>,
) -> &'v [u8] {
    // 0: the value itself, 1: `a`, 2: `b`.
    let mut current = 0u8;
    for t in transforms {
        let changed = match current {
            0 => t.apply_if_changing(value, a),
            1 => t.apply_if_changing(a, b),
            _ => t.apply_if_changing(b, a),
        };
        if changed {
            current = if current == 1 { 2 } else { 1 };
        }
    }
    match current {
        0 => value,
        1 => a,
        _ => b,
    }
}

#[cfg(test)]
mod tests {
    use super::super::parse::Names;
    use super::super::transform::Transform;
    use super::{TransformMemo, Tx};

    #[test]
    fn a_count_is_read_only_from_its_collection_where_zero_is_known_to_fail_its_test() {
        use super::super::parse::{Config, Item};
        let text = r#"SecRule &REQUEST_HEADERS:X-Foo "!@eq 0" "id:1,phase:1,pass,nolog"
SecRule &MULTIPART_PART_HEADERS "@gt 0" "id:2,phase:1,pass,nolog"
SecRule &ARGS "@eq 0" "id:3,phase:1,pass,nolog"
SecRule &ARGS "@eq 1" "id:4,phase:1,pass,nolog,t:length"
SecRule &ARGS "@eq %{tx.zero}" "id:5,phase:1,pass,nolog"
SecRule &ARGS "@gt 0" "id:6,phase:1,pass,nolog,multiMatch"
"#;
        let mut config = Config::parse(text).expect("parses");
        super::narrow_counts(&mut config);
        let reads: Vec<(u32, u128)> = config.phases[0]
            .iter()
            .filter_map(|item| match item {
                Item::Rule(rule) => Some((rule.id, rule.reads)),
                Item::Marker(_) => None,
            })
            .collect();
        let narrowed: Vec<u32> = reads
            .iter()
            .filter(|(_, r)| *r != u128::MAX)
            .map(|(id, _)| *id)
            .collect();
        // 3 matches 0; 4's length of "0" is 1, which matches; 5's parameter is a macro; 6
        // tests every stage.
        assert_eq!(narrowed, [1, 2], "{reads:?}");
        let foo = config.header_keys.absent([b"host".as_slice()].into_iter());
        assert_ne!(reads[0].1 & foo, 0, "rule 1 reads X-Foo's own bit");
    }

    #[test]
    fn run_time_tx_names_are_walked_only_as_this_evaluation_set_them() {
        let names = Names::default();
        let mut tx = Tx::default();
        tx.reset(0);
        for n in 0..1000 {
            tx.set(&names, &format!("header_name_{n}"), Some(b"x"));
        }
        assert_eq!(tx.dynamic().count(), 1000);
        // The next request sets two names, one of them twice and one unset and set again:
        // the thousand names of the last one are neither seen nor walked.
        tx.reset(0);
        tx.set(&names, "header_name_7", Some(b"a"));
        tx.set(&names, "new_name", Some(b"b"));
        tx.set(&names, "header_name_7", None);
        tx.set(&names, "header_name_7", Some(b"c"));
        let seen: Vec<(&str, &[u8])> = tx.dynamic().map(|(k, v)| (k, &v[..])).collect();
        assert_eq!(
            seen,
            [("header_name_7", &b"c"[..]), ("new_name", &b"b"[..])]
        );
        assert_eq!(tx.live.len(), 2);
        assert_eq!(tx.get(&names, "header_name_8").map(|v| v.to_vec()), None);
        tx.set(&names, "new_name", None);
        assert_eq!(tx.dynamic().count(), 1);
    }

    /// `input` through `transforms` (list number `chain`) with fresh buffers, and whether
    /// the buffers were written (a remembered value leaves them untouched).
    fn through(
        memo: &mut TransformMemo,
        chain: u32,
        transforms: &[Transform],
        input: &[u8],
    ) -> (Vec<u8>, bool) {
        let (mut a, mut b) = (Vec::new(), Vec::new());
        let out = memo
            .transformed(chain, transforms, input, &mut a, &mut b)
            .to_vec();
        (out, !a.is_empty() || !b.is_empty())
    }

    #[test]
    fn the_memo_answers_by_content_and_list_and_says_when_nothing_changed() {
        let lower = [Transform::Lowercase];
        let mut memo = TransformMemo::default();
        let input = b"Mozilla/5.0 (X11; Linux x86_64)".to_vec();
        assert_eq!(
            through(&mut memo, 1, &lower, &input),
            (b"mozilla/5.0 (x11; linux x86_64)".to_vec(), true)
        );
        // The same bytes at another address are found without transforming again.
        let copy = input.clone();
        assert_eq!(
            through(&mut memo, 1, &lower, &copy),
            (b"mozilla/5.0 (x11; linux x86_64)".to_vec(), false)
        );
        // A list that leaves the value as it is: remembered as "unchanged", the input itself.
        let unchanged = b"already lower-case text".to_vec();
        through(&mut memo, 1, &lower, &unchanged);
        let (mut a, mut b) = (Vec::new(), Vec::new());
        let out = memo.transformed(1, &lower, &unchanged, &mut a, &mut b);
        assert!(
            std::ptr::eq(out, &unchanged[..]),
            "unchanged: the input itself"
        );
        // Another list number is another entry, and different bytes are never taken for the
        // remembered ones.
        assert!(through(&mut memo, 2, &lower, &copy).1);
        assert!(through(&mut memo, 1, &lower, b"Mozilla/5.0 (X11; Linux x86_65)").1);
        memo.clear();
        assert!(through(&mut memo, 1, &lower, &copy).1);
    }

    #[test]
    fn the_memo_stops_growing_at_its_bound() {
        let lower = [Transform::Lowercase];
        let mut memo = TransformMemo::default();
        // Input and output of each are stored: the first takes two thirds of the bound.
        let big = vec![b'A'; TransformMemo::MAX_BYTES / 3];
        assert!(through(&mut memo, 1, &lower, &big).1);
        assert!(!through(&mut memo, 1, &lower, &big).1, "remembered");
        let other = vec![b'B'; TransformMemo::MAX_BYTES / 3];
        assert!(through(&mut memo, 1, &lower, &other).1);
        assert!(
            through(&mut memo, 1, &lower, &other).1,
            "past the bound nothing more is kept"
        );
        assert!(memo.bytes.len() <= TransformMemo::MAX_BYTES);
    }
}
