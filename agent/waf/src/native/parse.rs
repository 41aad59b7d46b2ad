//! ModSecurity's configuration language (SecLang), the part the OWASP CRS and the agent's own
//! rule text use, parsed into [`Config`]: engine settings and, per phase, the rules and markers
//! in the order they run.
//!
//! A directive, operator, variable or action this module does not know is a load error naming it
//! and the line it is on, never silently ignored: a rule the engine cannot evaluate the way
//! libmodsecurity would must not load. Purely informational actions (`ver`, `rev`, `maturity`,
//! audit-log settings, ...) are accepted and dropped.

use std::path::{Path, PathBuf};

use rustc_hash::FxHashMap;

use super::operator::{Operator, Rx};
use super::transform::Transform;

/// Where a directive came from, for errors.
#[derive(Debug, Clone)]
pub(crate) struct Origin {
    pub file: String,
    pub line: usize,
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.file, self.line)
    }
}

/// A load error: what was wrong and where.
#[derive(Debug)]
pub(crate) struct ParseError(pub String);

fn err<T>(origin: &Origin, message: impl std::fmt::Display) -> Result<T, ParseError> {
    Err(ParseError(format!("{origin}: {message}")))
}

/// A variable collection or scalar a rule can target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Collection {
    Args,
    ArgsGet,
    ArgsPost,
    ArgsNames,
    ArgsGetNames,
    ArgsPostNames,
    ArgsCombinedSize,
    RequestHeaders,
    RequestHeadersNames,
    RequestCookies,
    RequestCookiesNames,
    RequestUri,
    RequestUriRaw,
    RequestFilename,
    RequestBasename,
    RequestLine,
    RequestMethod,
    RequestProtocol,
    QueryString,
    RequestBody,
    RequestBodyLength,
    ReqbodyProcessor,
    ReqbodyError,
    ReqbodyErrorMsg,
    InboundDataError,
    MultipartStrictError,
    MultipartPartHeaders,
    Files,
    FilesNames,
    FilesCombinedSize,
    Xml,
    RemoteAddr,
    RemotePort,
    UniqueId,
    Duration,
    MatchedVar,
    MatchedVarName,
    MatchedVars,
    MatchedVarsNames,
    Tx,
    Ip,
    Global,
    Geo,
}

/// Every collection with the name rules spell it by (and ModSecurity prints before a key).
const COLLECTIONS: [(&str, Collection); 43] = [
    ("ARGS", Collection::Args),
    ("ARGS_GET", Collection::ArgsGet),
    ("ARGS_POST", Collection::ArgsPost),
    ("ARGS_NAMES", Collection::ArgsNames),
    ("ARGS_GET_NAMES", Collection::ArgsGetNames),
    ("ARGS_POST_NAMES", Collection::ArgsPostNames),
    ("ARGS_COMBINED_SIZE", Collection::ArgsCombinedSize),
    ("REQUEST_HEADERS", Collection::RequestHeaders),
    ("REQUEST_HEADERS_NAMES", Collection::RequestHeadersNames),
    ("REQUEST_COOKIES", Collection::RequestCookies),
    ("REQUEST_COOKIES_NAMES", Collection::RequestCookiesNames),
    ("REQUEST_URI", Collection::RequestUri),
    ("REQUEST_URI_RAW", Collection::RequestUriRaw),
    ("REQUEST_FILENAME", Collection::RequestFilename),
    ("REQUEST_BASENAME", Collection::RequestBasename),
    ("REQUEST_LINE", Collection::RequestLine),
    ("REQUEST_METHOD", Collection::RequestMethod),
    ("REQUEST_PROTOCOL", Collection::RequestProtocol),
    ("QUERY_STRING", Collection::QueryString),
    ("REQUEST_BODY", Collection::RequestBody),
    ("REQUEST_BODY_LENGTH", Collection::RequestBodyLength),
    ("REQBODY_PROCESSOR", Collection::ReqbodyProcessor),
    ("REQBODY_ERROR", Collection::ReqbodyError),
    ("REQBODY_ERROR_MSG", Collection::ReqbodyErrorMsg),
    ("INBOUND_DATA_ERROR", Collection::InboundDataError),
    ("MULTIPART_STRICT_ERROR", Collection::MultipartStrictError),
    ("MULTIPART_PART_HEADERS", Collection::MultipartPartHeaders),
    ("FILES", Collection::Files),
    ("FILES_NAMES", Collection::FilesNames),
    ("FILES_COMBINED_SIZE", Collection::FilesCombinedSize),
    ("XML", Collection::Xml),
    ("REMOTE_ADDR", Collection::RemoteAddr),
    ("REMOTE_PORT", Collection::RemotePort),
    ("UNIQUE_ID", Collection::UniqueId),
    ("DURATION", Collection::Duration),
    ("MATCHED_VAR", Collection::MatchedVar),
    ("MATCHED_VAR_NAME", Collection::MatchedVarName),
    ("MATCHED_VARS", Collection::MatchedVars),
    ("MATCHED_VARS_NAMES", Collection::MatchedVarsNames),
    ("TX", Collection::Tx),
    ("IP", Collection::Ip),
    ("GLOBAL", Collection::Global),
    ("GEO", Collection::Geo),
];

impl Collection {
    /// Its bit in a set of what links read (there are fewer than 64 collections; see
    /// [`Link::reads`]).
    pub(crate) fn bit(self) -> u128 {
        1 << (self as u32)
    }

    /// The collection called `name`, without regard to case.
    pub(crate) fn parse(name: &str) -> Option<Collection> {
        COLLECTIONS
            .iter()
            .find(|(known, _)| known.eq_ignore_ascii_case(name))
            .map(|&(_, c)| c)
    }

    /// The name ModSecurity prints before a key (`ARGS:id`).
    pub fn name(self) -> &'static str {
        COLLECTIONS
            .iter()
            .find(|&&(_, c)| c == self)
            .map_or("", |&(name, _)| name)
    }
}

/// Which members of a collection a target selects.
#[derive(Debug, Clone)]
pub(crate) enum Selector {
    All,
    /// A key, compared without regard to case.
    Key(String),
    /// Keys matching a regular expression (compiled caseless, as libmodsecurity does).
    Regex(Rx),
    /// One `TX` key, interned (see [`Names`]).
    Tx(u32),
    /// `TX:/regex/`: the pattern, and the numbered names it matches (computed once all names
    /// are known; run-time names are still matched by the pattern).
    TxRegex(Rx, Vec<u32>),
}

/// The request headers rules select by name (`REQUEST_HEADERS:User-Agent`), the first 64 of
/// them numbered: in [`Link::reads`] such a target sets its header's bit (64 + its number)
/// rather than the whole collection's, so a link that reads only headers the request lacks
/// (and empty collections) is passed over, as one that reads only empty collections is. Most
/// of what a plain request meets in the CRS asks for headers it does not have.
#[derive(Debug, Default)]
pub(crate) struct HeaderKeys {
    /// Lower-case names and their numbers, by name length.
    by_length: Vec<Vec<(Box<[u8]>, u32)>>,
    count: u32,
}

impl HeaderKeys {
    const MAX: u32 = 64;

    /// What `target` reads, numbering its header if it names one and there is room.
    fn bit(&mut self, target: &Target) -> u128 {
        if let (Selector::Key(key), Collection::RequestHeaders) =
            (&target.selector, target.collection)
        {
            self.number(key.as_bytes());
        }
        self.reads(target)
    }

    /// What `target` reads as its headers are numbered now: its header's bit, or its
    /// collection's.
    pub fn reads(&self, target: &Target) -> u128 {
        match (&target.selector, target.collection) {
            (Selector::Key(key), Collection::RequestHeaders) => self
                .find(key.as_bytes())
                .map_or(target.collection.bit(), |n| 1 << (64 + n)),
            (_, collection) => collection.bit(),
        }
    }

    fn number(&mut self, key: &[u8]) -> Option<u32> {
        if let Some(n) = self.find(key) {
            return Some(n);
        }
        if self.count == Self::MAX {
            return None;
        }
        if self.by_length.len() <= key.len() {
            self.by_length.resize_with(key.len() + 1, Vec::new);
        }
        let n = self.count;
        self.count += 1;
        self.by_length[key.len()].push((key.to_ascii_lowercase().into(), n));
        Some(n)
    }

    fn find(&self, name: &[u8]) -> Option<u32> {
        self.by_length
            .get(name.len())?
            .iter()
            .find(|(known, _)| known.eq_ignore_ascii_case(name))
            .map(|(_, n)| *n)
    }

    /// The bits of the numbered headers none of `names` is.
    pub fn absent<'n>(&self, names: impl Iterator<Item = &'n [u8]>) -> u128 {
        let all = ((1u128 << self.count) - 1) << 64;
        names.fold(all, |absent, name| match self.find(name) {
            Some(n) => absent & !(1 << (64 + n)),
            None => absent,
        })
    }
}

/// One element of a rule's target list.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    pub collection: Collection,
    pub selector: Selector,
    /// `&COLLECTION`: the number of members instead of their values.
    pub count: bool,
    /// Keys removed from this target by `!COLLECTION:key` elements of the same list.
    pub exclusions: Vec<Selector>,
    /// What it reads, as in [`Link::reads`] (every bit when it counts members): a target
    /// whose bits are all empty for a request has no value to test and is passed over.
    pub reads: u128,
}

/// A string that may contain `%{...}` macros, split at parse time.
#[derive(Debug, Clone)]
pub(crate) struct Macro {
    pub parts: Vec<MacroPart>,
}

#[derive(Debug, Clone)]
pub(crate) enum MacroPart {
    Text(String),
    /// `%{COLLECTION}` or `%{COLLECTION.key}`: the first member the selector (key lower-cased)
    /// picks, resolved as a rule target.
    Var(Collection, Selector),
    /// `%{TX.key}`, the key interned (see [`Names`]).
    Tx(u32),
    /// `%{RULE.key}`: a property of the rule being evaluated (`id`, `msg`), key lower-cased.
    Rule(Option<String>),
    /// A name that is no variable: expands to nothing.
    Unknown,
}

impl Macro {
    pub fn parse(text: &str) -> Macro {
        let mut parts = Vec::new();
        let mut rest = text;
        while let Some(start) = rest.find("%{") {
            let Some(len) = rest[start..].find('}') else {
                break;
            };
            if start > 0 {
                parts.push(MacroPart::Text(rest[..start].to_owned()));
            }
            let inner = &rest[start + 2..start + len];
            // Keys are looked up without regard to case: kept lower-case.
            let (collection, key) = match inner.split_once(['.', ':']) {
                Some((c, k)) => (c, Some(k.to_ascii_lowercase())),
                None => (inner, None),
            };
            let part = if collection.eq_ignore_ascii_case("RULE") {
                MacroPart::Rule(key)
            } else {
                match Collection::parse(collection) {
                    Some(c) => MacroPart::Var(c, key.map_or(Selector::All, Selector::Key)),
                    None => MacroPart::Unknown,
                }
            };
            parts.push(part);
            rest = &rest[start + len + 1..];
        }
        if !rest.is_empty() {
            parts.push(MacroPart::Text(rest.to_owned()));
        }
        Macro { parts }
    }

    /// The text itself when it has no macro.
    pub fn literal(&self) -> Option<String> {
        match self.parts.as_slice() {
            [] => Some(String::new()),
            [MacroPart::Text(t)] => Some(t.clone()),
            _ => None,
        }
    }
}

/// `setvar`.
#[derive(Debug, Clone)]
pub(crate) struct SetVar {
    pub collection: Collection,
    pub name: Macro,
    /// The name lower-cased, when it has no macro.
    pub literal: Option<String>,
    /// The interned `TX` name, when it has no macro.
    pub slot: Option<u32>,
    pub op: SetOp,
}

#[derive(Debug, Clone)]
pub(crate) enum SetOp {
    Set(Macro),
    Add(Macro),
    Sub(Macro),
    Unset,
}

/// `ctl` actions that change how this transaction is evaluated.
#[derive(Debug, Clone)]
pub(crate) enum Ctl {
    RuleRemoveById(u32, u32),
    RuleRemoveByTag(String),
    RuleRemoveTargetById(u32, String),
    RuleRemoveTargetByTag(String, String),
    RuleEngine(EngineMode),
    BodyProcessor(BodyProcessor),
    RequestBodyAccess(bool),
    /// Audit log settings and the like: no effect on the verdict.
    Ignored,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum EngineMode {
    On,
    Off,
    DetectionOnly,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BodyProcessor {
    UrlEncoded,
    Multipart,
    Json,
    Xml,
}

impl BodyProcessor {
    /// Its `REQBODY_PROCESSOR` value.
    pub fn name(self) -> &'static str {
        match self {
            BodyProcessor::UrlEncoded => "URLENCODED",
            BodyProcessor::Multipart => "MULTIPART",
            BodyProcessor::Json => "JSON",
            BodyProcessor::Xml => "XML",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Disruptive {
    Pass,
    Block,
    Deny,
    Drop,
    Allow,
    Redirect,
}

/// One link of a rule chain (a rule without `chain` is a chain of one).
#[derive(Debug)]
pub(crate) struct Link {
    pub targets: Vec<Target>,
    pub operator: Operator,
    pub negated: bool,
    /// The transformations that run, in order (after parsing: the defaults included).
    pub transforms: Vec<Transform>,
    /// `t:none` was given: the phase's default transformations do not apply.
    pub has_none: bool,
    pub capture: bool,
    pub multi_match: bool,
    pub setvars: Vec<SetVar>,
    pub ctls: Vec<Ctl>,
    /// The interned marker name.
    pub skip_after: Option<u32>,
    pub skip: Option<u32>,
    /// `log` (true) or `nolog` (false) if the rule says.
    pub log: Option<bool>,
    pub disruptive: Option<Disruptive>,
    pub status: Option<u16>,
    pub msg: Option<Macro>,
    pub tags: Vec<String>,
    /// `initcol`: which record of a persistent collection this transaction uses.
    pub initcols: Vec<(Collection, Macro)>,
    /// Actions the native engine does not evaluate.
    pub unsupported: Option<&'static str>,
    /// `SecAction`: no operator, its actions always run.
    pub unconditional: bool,
    /// What its targets read: a bit per collection ([`Collection::bit`]), and for a request
    /// header selected by name the header's bit instead ([`HeaderKeys`]); every bit when a
    /// target counts members (`&ARGS` is `0` for an empty collection, a value to test).
    pub reads: u128,
    /// Its transformation list, interned: links with the same list share the number (`0`: no
    /// transformation). Transformed values are remembered per request by it.
    pub chain: u32,
}

/// A rule: its id, phase and chain links.
#[derive(Debug)]
pub(crate) struct Rule {
    /// Removed by `SecRuleRemoveById`/`ByTag` (kept in place: `skip:N` still counts it, as in
    /// libmodsecurity).
    pub removed: bool,
    pub id: u32,
    pub phase: u8,
    pub links: Vec<Link>,
    pub origin: Origin,
    /// Its first link's [`Link::reads`], kept here to spare a pointer chase per rule; every
    /// bit for a `SecAction`, which runs without reading anything.
    pub reads: u128,
}

impl Rule {
    /// Sets each link's [`Link::reads`] from its targets' and the rule's from its first link.
    pub fn gather_reads(&mut self) {
        for link in &mut self.links {
            link.reads = link.targets.iter().fold(0, |m, t| m | t.reads);
        }
        self.reads = match self.links.first() {
            Some(first) if !first.unconditional => first.reads,
            _ => u128::MAX,
        };
    }

    pub fn has_tag(&self, tag: &str) -> bool {
        self.links
            .first()
            .is_some_and(|l| l.tags.iter().any(|t| t == tag))
    }
}

#[derive(Debug)]
pub(crate) enum Item {
    Rule(Rule),
    /// A `SecMarker`, by its interned name.
    Marker(u32),
}

/// Names given numbers at load: `TX` keys (so the transaction keeps `TX` in a vector) and
/// marker names.
#[derive(Debug, Default)]
pub(crate) struct Names {
    pub names: Vec<String>,
    pub index: FxHashMap<String, u32>,
}

impl Names {
    pub fn id(&mut self, name: &str) -> u32 {
        if let Some(id) = self.index.get(name) {
            return *id;
        }
        let id = u32::try_from(self.names.len()).unwrap_or(u32::MAX);
        self.names.push(name.to_owned());
        self.index.insert(name.to_owned(), id);
        id
    }

    pub fn get(&self, name: &str) -> Option<u32> {
        self.index.get(name).copied()
    }

    pub fn name(&self, id: u32) -> &str {
        self.names.get(id as usize).map_or("", String::as_str)
    }
}

/// What `SecDefaultAction` sets for a phase.
#[derive(Debug, Clone, Default)]
pub(crate) struct Defaults {
    pub transforms: Vec<Transform>,
    pub log: Option<bool>,
    pub disruptive: Option<Disruptive>,
    pub status: Option<u16>,
}

/// A parsed rule text.
#[derive(Debug, Default)]
pub(crate) struct Config {
    pub engine: Option<EngineMode>,
    /// `SecRequestBodyAccess`, if the text sets it.
    pub body_access: Option<bool>,
    pub body_limit: Option<u64>,
    pub no_files_limit: Option<u64>,
    /// `SecRequestBodyLimitAction ProcessPartial`.
    pub partial_bodies: bool,
    /// Phase 1 and phase 2 items in order; rules of later phases are kept out (the engine
    /// evaluates requests only; `rule_count` still counts them).
    pub phases: [Vec<Item>; 2],
    /// Per phase and marker id, where the marker stands (item indices, ascending).
    pub markers: [Vec<Vec<usize>>; 2],
    pub marker_names: Names,
    /// `TX` keys named in the rules; ids 0–9 are the capture groups `TX.0`..`TX.9`.
    pub tx_names: Names,
    pub defaults: [Defaults; 2],
    pub removed_ids: Vec<(u32, u32)>,
    pub removed_tags: Vec<String>,
    pub rule_count: usize,
    /// The request headers rules select by name, numbered for [`Link::reads`].
    pub header_keys: HeaderKeys,
    /// The rules evaluated at load (see `eval::fold`); set by the engine after parsing.
    pub folds: super::eval::fold::Folds,
}

impl Config {
    pub fn parse(text: &str) -> Result<Config, ParseError> {
        let mut config = Config::default();
        for group in 0..10 {
            config.tx_names.id(&group.to_string());
        }
        let mut pending: Option<Rule> = None;
        config.read_text(text, "<rules>", None, &mut pending, 0)?;
        if let Some(rule) = pending {
            return err(
                &rule.origin,
                "the last rule of a chain (`chain`) has no rule after it",
            );
        }
        let marker_count = config.marker_names.names.len();
        for (phase, items) in config.phases.iter_mut().enumerate() {
            config.markers[phase] = vec![Vec::new(); marker_count];
            for (index, item) in items.iter_mut().enumerate() {
                match item {
                    Item::Marker(id) => {
                        if let Some(positions) = config.markers[phase].get_mut(*id as usize) {
                            positions.push(index);
                        }
                    }
                    Item::Rule(rule) => {
                        rule.removed = config
                            .removed_ids
                            .iter()
                            .any(|(a, b)| (*a..=*b).contains(&rule.id))
                            || config.removed_tags.iter().any(|t| rule.has_tag(t));
                    }
                }
            }
        }
        // `TX:/regex/` targets: the numbered names each one selects, matched once here.
        let tx_names = &config.tx_names;
        for items in &mut config.phases {
            for item in items {
                let Item::Rule(rule) = item else { continue };
                for target in rule.links.iter_mut().flat_map(|l| &mut l.targets) {
                    if target.collection == Collection::Tx
                        && let Selector::Regex(rx) = &target.selector
                    {
                        let ids = (0..tx_names.names.len() as u32)
                            .filter(|id| rx.is_match(tx_names.name(*id).as_bytes()))
                            .collect();
                        target.selector = Selector::TxRegex(rx.clone(), ids);
                    }
                }
            }
        }
        // Each link's transformations as they run: the phase's default ones first, unless the
        // link says `t:none` (the defaults are those in force at the end of the text, as in
        // libmodsecurity, which reads them at evaluation). And what each link and rule reads.
        let mut header_keys = HeaderKeys::default();
        for (phase, items) in config.phases.iter_mut().enumerate() {
            let defaults = &config.defaults[phase].transforms;
            for item in items {
                if let Item::Rule(rule) = item {
                    for link in &mut rule.links {
                        for target in &mut link.targets {
                            // A count's header is numbered too (see `eval::narrow_counts`).
                            let bits = header_keys.bit(target);
                            target.reads = if target.count { u128::MAX } else { bits };
                        }
                        if !link.has_none && !defaults.is_empty() {
                            let mut all = defaults.clone();
                            all.append(&mut link.transforms);
                            link.transforms = all;
                        }
                    }
                    rule.gather_reads();
                }
            }
        }
        config.header_keys = header_keys;
        // Every distinct transformation list gets a number (in both phases: a request's
        // values go through the same lists in either).
        let mut chains: FxHashMap<Vec<Transform>, u32> = FxHashMap::default();
        for items in &mut config.phases {
            for item in items {
                let Item::Rule(rule) = item else { continue };
                for link in &mut rule.links {
                    if !link.transforms.is_empty() {
                        let next = chains.len() as u32 + 1;
                        link.chain = *chains.entry(link.transforms.clone()).or_insert(next);
                    }
                }
            }
        }
        Ok(config)
    }

    fn read_text(
        &mut self,
        text: &str,
        file: &str,
        dir: Option<&Path>,
        pending: &mut Option<Rule>,
        depth: usize,
    ) -> Result<(), ParseError> {
        for (line, directive) in directives(text) {
            let origin = Origin {
                file: file.to_owned(),
                line,
            };
            let words =
                split_words(&directive).map_err(|e| ParseError(format!("{origin}: {e}")))?;
            let Some((name, args)) = words.split_first() else {
                continue;
            };
            self.directive(name, args, &origin, dir, pending, depth)?;
        }
        Ok(())
    }

    fn directive(
        &mut self,
        name: &str,
        args: &[String],
        origin: &Origin,
        dir: Option<&Path>,
        pending: &mut Option<Rule>,
        depth: usize,
    ) -> Result<(), ParseError> {
        let arg = |i: usize| -> Result<&str, ParseError> {
            args.get(i)
                .map(String::as_str)
                .ok_or_else(|| ParseError(format!("{origin}: {name} needs an argument")))
        };
        let on_off = |value: &str| -> Result<bool, ParseError> {
            match value.to_ascii_lowercase().as_str() {
                "on" => Ok(true),
                "off" => Ok(false),
                other => err(origin, format!("{name} takes On or Off, not {other:?}")),
            }
        };
        match name.to_ascii_lowercase().as_str() {
            "secrule" => {
                let actions = args.get(2).map(String::as_str).unwrap_or("");
                self.rule(Some((arg(0)?, arg(1)?)), actions, origin, dir, pending)
            }
            "secaction" => self.rule(None, arg(0)?, origin, dir, pending),
            "secmarker" => {
                if let Some(rule) = pending.take() {
                    return err(&rule.origin, "a chained rule is followed by SecMarker");
                }
                let id = self.marker_names.id(arg(0)?);
                for phase in &mut self.phases {
                    phase.push(Item::Marker(id));
                }
                Ok(())
            }
            "secdefaultaction" => {
                let actions = parse_actions(arg(0)?, origin)?;
                let mut defaults = Defaults::default();
                let mut phase = 2u8;
                for (key, value) in actions {
                    match key.as_str() {
                        "phase" => phase = parse_phase(&value, origin)?,
                        "t" => match Transform::parse(&value) {
                            Some(t) => defaults.transforms.push(t),
                            // libmodsecurity refuses it too.
                            None if value.eq_ignore_ascii_case("none") => {
                                return err(origin, "t:none cannot be part of SecDefaultAction");
                            }
                            None => {
                                return err(origin, format!("unknown transformation t:{value}"));
                            }
                        },
                        "log" => defaults.log = Some(true),
                        "nolog" => defaults.log = Some(false),
                        "pass" => defaults.disruptive = Some(Disruptive::Pass),
                        "deny" => defaults.disruptive = Some(Disruptive::Deny),
                        "drop" => defaults.disruptive = Some(Disruptive::Drop),
                        "status" => defaults.status = value.parse().ok(),
                        "auditlog" | "noauditlog" | "tag" => {}
                        other => {
                            return err(
                                origin,
                                format!("SecDefaultAction: unsupported action {other}"),
                            );
                        }
                    }
                }
                match phase {
                    1 | 2 => self.defaults[usize::from(phase - 1)] = defaults,
                    _ => {}
                }
                Ok(())
            }
            "secruleengine" => {
                self.engine = Some(match arg(0)?.to_ascii_lowercase().as_str() {
                    "on" => EngineMode::On,
                    "off" => EngineMode::Off,
                    "detectiononly" => EngineMode::DetectionOnly,
                    other => return err(origin, format!("SecRuleEngine {other:?}")),
                });
                Ok(())
            }
            "secrequestbodyaccess" => {
                self.body_access = Some(on_off(arg(0)?)?);
                Ok(())
            }
            "secrequestbodylimit" => {
                self.body_limit = Some(parse_number(arg(0)?, origin)?);
                Ok(())
            }
            "secrequestbodynofileslimit" => {
                self.no_files_limit = Some(parse_number(arg(0)?, origin)?);
                Ok(())
            }
            "secrequestbodylimitaction" => {
                self.partial_bodies = arg(0)?.eq_ignore_ascii_case("ProcessPartial");
                Ok(())
            }
            "secruleremovebyid" => {
                for value in args.iter().flat_map(|a| a.split_whitespace()) {
                    self.removed_ids.push(parse_id_range(value, origin)?);
                }
                Ok(())
            }
            "secruleremovebytag" => {
                self.removed_tags.push(arg(0)?.to_owned());
                Ok(())
            }
            "include" => self.include(arg(0)?, origin, dir, pending, depth),
            // Settings with no effect on request verdicts.
            "secresponsebodyaccess"
            | "secresponsebodymimetype"
            | "secresponsebodylimit"
            | "secresponsebodylimitaction"
            | "secauditengine"
            | "secauditlog"
            | "secauditlogparts"
            | "secauditlogtype"
            | "secauditlogformat"
            | "secauditlogstoragedir"
            | "secauditlogrelevantstatus"
            | "secdebuglog"
            | "secdebugloglevel"
            | "seccomponentsignature"
            | "seccollectiontimeout"
            | "sectmpdir"
            | "secdatadir"
            | "secstatusengine"
            | "secpcrematchlimit"
            | "secpcrematchlimitrecursion"
            | "secrequestbodyinmemorylimit"
            | "secunicodemapfile"
            | "secservesignature"
            | "secargumentseparator"
            | "seccookieformat"
            | "secuploaddir"
            | "secuploadkeepfiles"
            | "sectmpsaveuploadedfiles"
            | "secuploadfilelimit"
            | "secuploadfilemode" => Ok(()),
            other => err(origin, format!("unsupported directive {other}")),
        }
    }

    fn include(
        &mut self,
        pattern: &str,
        origin: &Origin,
        dir: Option<&Path>,
        pending: &mut Option<Rule>,
        depth: usize,
    ) -> Result<(), ParseError> {
        if depth > 8 {
            return err(origin, "Include nested more than 8 deep");
        }
        let path = match dir {
            Some(dir) if !Path::new(pattern).is_absolute() => dir.join(pattern),
            _ => PathBuf::from(pattern),
        };
        let files = expand_glob(&path).map_err(|e| ParseError(format!("{origin}: {e}")))?;
        if files.is_empty() {
            return err(origin, format!("Include {pattern}: no such file"));
        }
        for file in files {
            let text = std::fs::read_to_string(&file).map_err(|e| {
                ParseError(format!("{origin}: cannot read {}: {e}", file.display()))
            })?;
            let name = file.display().to_string();
            self.read_text(&text, &name, file.parent(), pending, depth + 1)?;
        }
        Ok(())
    }

    fn rule(
        &mut self,
        rule: Option<(&str, &str)>,
        actions: &str,
        origin: &Origin,
        dir: Option<&Path>,
        pending: &mut Option<Rule>,
    ) -> Result<(), ParseError> {
        let (targets, operator, negated) = match rule {
            Some((variables, operator)) => {
                let targets = parse_targets(variables, origin)?;
                let (operator, negated) = Operator::parse(operator, dir)
                    .map_err(|e| ParseError(format!("{origin}: {e}")))?;
                (targets, operator, negated)
            }
            None => (Vec::new(), Operator::Unconditional, false),
        };
        let mut link = Link {
            targets,
            operator,
            negated,
            transforms: Vec::new(),
            has_none: false,
            capture: false,
            multi_match: false,
            setvars: Vec::new(),
            ctls: Vec::new(),
            skip_after: None,
            skip: None,
            log: None,
            disruptive: None,
            status: None,
            msg: None,
            tags: Vec::new(),
            initcols: Vec::new(),
            unsupported: None,
            unconditional: rule.is_none(),
            reads: 0,
            chain: 0,
        };
        let mut id = None;
        let mut phase = None;
        let mut chain = false;
        for (key, value) in parse_actions(actions, origin)? {
            match key.as_str() {
                "id" => id = Some(parse_number(&value, origin)? as u32),
                "phase" => phase = Some(parse_phase(&value, origin)?),
                "chain" => chain = true,
                "t" => {
                    if value.eq_ignore_ascii_case("none") {
                        link.has_none = true;
                        link.transforms.clear();
                    } else {
                        match Transform::parse(&value) {
                            Some(t) => link.transforms.push(t),
                            None => {
                                return err(origin, format!("unknown transformation t:{value}"));
                            }
                        }
                    }
                }
                "capture" => link.capture = true,
                "multimatch" => link.multi_match = true,
                "setvar" => link.setvars.push(parse_setvar(&value, origin)?),
                "ctl" => link.ctls.push(parse_ctl(&value, origin)?),
                "skipafter" => link.skip_after = Some(self.marker_names.id(&value)),
                "skip" => link.skip = Some(parse_number(&value, origin)? as u32),
                "log" => link.log = Some(true),
                "nolog" => link.log = Some(false),
                "pass" => link.disruptive = Some(Disruptive::Pass),
                "block" => link.disruptive = Some(Disruptive::Block),
                "deny" => link.disruptive = Some(Disruptive::Deny),
                "drop" => link.disruptive = Some(Disruptive::Drop),
                "allow" => {
                    if !value.is_empty() {
                        return err(origin, format!("allow:{value} is not supported"));
                    }
                    link.disruptive = Some(Disruptive::Allow)
                }
                "redirect" => link.disruptive = Some(Disruptive::Redirect),
                "status" => link.status = Some(parse_number(&value, origin)? as u16),
                "msg" => link.msg = Some(Macro::parse(&value)),
                "tag" => link.tags.push(value),
                "initcol" => {
                    let Some((collection, key)) = value.split_once('=') else {
                        return err(origin, format!("initcol:{value}: expected collection=key"));
                    };
                    let collection = match Collection::parse(collection) {
                        Some(c @ (Collection::Ip | Collection::Global)) => c,
                        _ => {
                            return err(
                                origin,
                                format!("initcol: unsupported collection {collection}"),
                            );
                        }
                    };
                    link.initcols.push((collection, Macro::parse(key)));
                }
                // Parsed and ignored by libmodsecurity 3.0.9: its in-memory collections never
                // expire a variable.
                "expirevar" => {}
                "setenv" | "sanitisematched" | "sanitisearg" | "sanitiserequestheader" => {
                    link.unsupported = Some("setenv and sanitise actions");
                }
                "logdata" | "severity" | "ver" | "rev" | "maturity" | "accuracy" | "auditlog"
                | "noauditlog" => {}
                other => return err(origin, format!("unsupported action {other}")),
            }
        }
        self.intern_tx(&mut link);
        if chain && rule.is_none() {
            // libmodsecurity adds a SecAction on its own, so the rule after it is an id-less
            // rule and the set does not load.
            return err(
                origin,
                "`chain` on a SecAction: only a SecRule starts a chain",
            );
        }
        match pending {
            Some(parent) => {
                if id.is_some() || phase.is_some() {
                    // libmodsecurity accepts neither on a chained rule.
                    return err(origin, "a chained rule cannot have an id or a phase");
                }
                parent.links.push(link);
                if !chain {
                    let rule = pending.take().expect("checked above");
                    self.push(rule);
                }
            }
            None => {
                let Some(id) = id else {
                    return err(origin, "a rule without an id");
                };
                let rule = Rule {
                    removed: false,
                    reads: 0,
                    id,
                    phase: phase.unwrap_or(2),
                    links: vec![link],
                    origin: origin.clone(),
                };
                if chain {
                    *pending = Some(rule);
                } else {
                    self.push(rule);
                }
            }
        }
        Ok(())
    }

    /// Gives every literal `TX` name of `link` (targets, macros, setvar names) its number.
    fn intern_tx(&mut self, link: &mut Link) {
        let names = &mut self.tx_names;
        let mut intern = |m: &mut Macro| {
            for part in &mut m.parts {
                if let MacroPart::Var(Collection::Tx, Selector::Key(key)) = part {
                    *part = MacroPart::Tx(names.id(key));
                }
            }
        };
        for setvar in &mut link.setvars {
            intern(&mut setvar.name);
            match &mut setvar.op {
                SetOp::Set(m) | SetOp::Add(m) | SetOp::Sub(m) => intern(m),
                SetOp::Unset => {}
            }
        }
        if let Some(m) = &mut link.msg {
            intern(m);
        }
        for (_, m) in &mut link.initcols {
            intern(m);
        }
        if let Some(m) = link.operator.param_mut() {
            intern(m);
        }
        for setvar in &mut link.setvars {
            if setvar.collection == Collection::Tx
                && let Some(name) = &setvar.literal
            {
                setvar.slot = Some(names.id(name));
            }
        }
        for target in &mut link.targets {
            if target.collection == Collection::Tx
                && let Selector::Key(key) = &target.selector
            {
                target.selector = Selector::Tx(names.id(key));
            }
        }
    }

    fn push(&mut self, rule: Rule) {
        self.rule_count += 1;
        match rule.phase {
            1 | 2 => self.phases[usize::from(rule.phase - 1)].push(Item::Rule(rule)),
            // Response and logging phases: counted, not evaluated (requests only).
            _ => {}
        }
    }
}

fn parse_number(value: &str, origin: &Origin) -> Result<u64, ParseError> {
    value
        .trim()
        .parse()
        .or_else(|_| err(origin, format!("{value:?} is not a number")))
}

fn parse_id_range(value: &str, origin: &Origin) -> Result<(u32, u32), ParseError> {
    match value.split_once('-') {
        Some((a, b)) => Ok((
            parse_number(a, origin)? as u32,
            parse_number(b, origin)? as u32,
        )),
        None => {
            let id = parse_number(value, origin)? as u32;
            Ok((id, id))
        }
    }
}

fn parse_phase(value: &str, origin: &Origin) -> Result<u8, ParseError> {
    match value.to_ascii_lowercase().as_str() {
        "1" | "request_headers" => Ok(1),
        "2" | "request" => Ok(2),
        "3" | "response_headers" => Ok(3),
        "4" | "response" => Ok(4),
        "5" | "logging" => Ok(5),
        other => err(origin, format!("unknown phase {other:?}")),
    }
}

fn parse_setvar(value: &str, origin: &Origin) -> Result<SetVar, ParseError> {
    let (unset, value) = match value.strip_prefix('!') {
        Some(rest) => (true, rest),
        None => (false, value),
    };
    let (name, assigned) = match value.split_once('=') {
        Some((n, v)) => (n, Some(v)),
        None => (value, None),
    };
    let Some((collection, key)) = name.split_once('.') else {
        return err(origin, format!("setvar:{value}: expected collection.name"));
    };
    let Some(collection) = Collection::parse(collection) else {
        return err(origin, format!("setvar: unknown collection {collection}"));
    };
    if !matches!(
        collection,
        Collection::Tx | Collection::Ip | Collection::Global
    ) {
        return err(
            origin,
            format!("setvar: {} cannot be written", collection.name()),
        );
    }
    let op = if unset {
        SetOp::Unset
    } else {
        match assigned {
            None => SetOp::Set(Macro::parse("1")),
            Some(v) => match v.as_bytes().first() {
                Some(b'+') => SetOp::Add(Macro::parse(&v[1..])),
                Some(b'-') => SetOp::Sub(Macro::parse(&v[1..])),
                _ => SetOp::Set(Macro::parse(v)),
            },
        }
    };
    let name = Macro::parse(key);
    Ok(SetVar {
        collection,
        literal: name.literal().map(|n| n.to_ascii_lowercase()),
        slot: None,
        name,
        op,
    })
}

fn parse_ctl(value: &str, origin: &Origin) -> Result<Ctl, ParseError> {
    let Some((name, arg)) = value.split_once('=') else {
        return err(origin, format!("ctl:{value}: expected name=value"));
    };
    let bool_arg = || match arg.to_ascii_lowercase().as_str() {
        "on" => Ok(true),
        "off" => Ok(false),
        other => err(origin, format!("ctl:{name} takes On or Off, not {other:?}")),
    };
    Ok(match name.to_ascii_lowercase().as_str() {
        "ruleremovebyid" => {
            let (a, b) = parse_id_range(arg, origin)?;
            Ctl::RuleRemoveById(a, b)
        }
        "ruleremovebytag" => Ctl::RuleRemoveByTag(arg.to_owned()),
        "ruleremovetargetbyid" => {
            let Some((id, target)) = arg.split_once(';') else {
                return err(origin, format!("ctl:{value}: expected id;TARGET"));
            };
            // libmodsecurity reads the id with `stoi`: "941000-942999" means rule 941000.
            let digits: String = id.trim().chars().take_while(char::is_ascii_digit).collect();
            Ctl::RuleRemoveTargetById(parse_number(&digits, origin)? as u32, target.to_owned())
        }
        "ruleremovetargetbytag" => {
            let Some((tag, target)) = arg.split_once(';') else {
                return err(origin, format!("ctl:{value}: expected tag;TARGET"));
            };
            Ctl::RuleRemoveTargetByTag(tag.to_owned(), target.to_owned())
        }
        "ruleengine" => Ctl::RuleEngine(match arg.to_ascii_lowercase().as_str() {
            "on" => EngineMode::On,
            "off" => EngineMode::Off,
            "detectiononly" => EngineMode::DetectionOnly,
            other => return err(origin, format!("ctl:ruleEngine={other}")),
        }),
        "requestbodyprocessor" => Ctl::BodyProcessor(match arg.to_ascii_uppercase().as_str() {
            "URLENCODED" => BodyProcessor::UrlEncoded,
            "MULTIPART" => BodyProcessor::Multipart,
            "JSON" => BodyProcessor::Json,
            "XML" => BodyProcessor::Xml,
            other => return err(origin, format!("ctl:requestBodyProcessor={other}")),
        }),
        "requestbodyaccess" => Ctl::RequestBodyAccess(bool_arg()?),
        // libmodsecurity 3.0.9 fills REQUEST_BODY for every body: forcing it changes nothing.
        "forcerequestbodyvariable" => {
            bool_arg()?;
            Ctl::Ignored
        }
        "auditengine" | "auditlogparts" | "debugloglevel" => Ctl::Ignored,
        other => return err(origin, format!("unsupported ctl:{other}")),
    })
}

fn parse_targets(text: &str, origin: &Origin) -> Result<Vec<Target>, ParseError> {
    let mut targets: Vec<Target> = Vec::new();
    let mut exclusions: Vec<(Collection, Selector, bool)> = Vec::new();
    for element in split_targets(text) {
        let (excluded, element) = match element.strip_prefix('!') {
            Some(rest) => (true, rest),
            None => (false, element.as_str()),
        };
        let (count, element) = match element.strip_prefix('&') {
            Some(rest) => (true, rest),
            None => (false, element),
        };
        let (name, key) = match element.split_once(':') {
            Some((n, k)) => (n, Some(k)),
            None => (element, None),
        };
        let Some(collection) = Collection::parse(name) else {
            return err(origin, format!("unknown variable {name}"));
        };
        let selector = match key {
            None => Selector::All,
            Some(key) if key.len() >= 2 && key.starts_with('/') && key.ends_with('/') => {
                let pattern = &key[1..key.len() - 1];
                Selector::Regex(Rx::new(compile_regex(pattern, true).map_err(|e| {
                    ParseError(format!("{origin}: target {name}:{key}: {e}"))
                })?))
            }
            // `TX` is stored lower-case and looked up directly.
            Some(key) if collection == Collection::Tx => {
                Selector::Key(key.trim_matches('\'').to_ascii_lowercase())
            }
            Some(key) => Selector::Key(key.trim_matches('\'').to_owned()),
        };
        if excluded {
            exclusions.push((collection, selector, key.is_none()));
        } else {
            targets.push(Target {
                collection,
                selector,
                count,
                exclusions: Vec::new(),
                reads: 0,
            });
        }
    }
    for (collection, selector, whole) in exclusions {
        for target in targets.iter_mut().filter(|t| t.collection == collection) {
            if whole {
                // `!ARGS` with `ARGS` in the same list: libmodsecurity drops the target.
                target.exclusions.push(Selector::All);
            } else {
                target.exclusions.push(selector.clone());
            }
        }
    }
    targets.retain(|t| !t.exclusions.iter().any(|e| matches!(e, Selector::All)));
    Ok(targets)
}

/// Splits `A|B:/x|y/|C` at the pipes that are not inside a `/regex/` selector.
fn split_targets(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    let mut in_regex = false;
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '|' if !in_regex => out.push(std::mem::take(&mut current)),
            '/' if current.ends_with(':') && !in_regex => {
                in_regex = true;
                current.push(c);
            }
            '\\' if in_regex => {
                current.push(c);
                if let Some(next) = chars.next() {
                    current.push(next);
                }
            }
            '/' if in_regex => {
                in_regex = false;
                current.push(c);
            }
            c => current.push(c),
        }
    }
    out.push(current);
    out.into_iter()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .collect()
}

/// Compiles a pattern as libmodsecurity does: PCRE2 with DOTALL and MULTILINE, caseless on
/// request, JIT-compiled. An empty pattern means `.*`.
pub(crate) fn compile_regex(pattern: &str, caseless: bool) -> Result<crate::pcre::Pattern, String> {
    let pattern = if pattern.is_empty() { ".*" } else { pattern };
    crate::pcre::Pattern::compile(pattern, caseless)
        .map_err(|e| format!("regular expression {pattern:?} does not compile: {e}"))
}

/// Splits an action list at the commas outside single quotes; returns (lower-case name, value)
/// with the value's quotes removed.
fn parse_actions(text: &str, origin: &Origin) -> Result<Vec<(String, String)>, ParseError> {
    let mut out = Vec::new();
    let mut current = String::new();
    let mut quoted = false;
    let mut chars = text.chars();
    let mut pieces = Vec::new();
    while let Some(c) = chars.next() {
        match c {
            '\\' if quoted => match chars.next() {
                Some('\'') => current.push('\''),
                Some(other) => {
                    current.push('\\');
                    current.push(other);
                }
                None => current.push('\\'),
            },
            '\'' => quoted = !quoted,
            ',' if !quoted => pieces.push(std::mem::take(&mut current)),
            c => current.push(c),
        }
    }
    if quoted {
        return err(
            origin,
            format!("unbalanced single quote in actions {text:?}"),
        );
    }
    pieces.push(current);
    for piece in pieces {
        let piece = piece.trim();
        if piece.is_empty() {
            continue;
        }
        let (name, value) = match piece.split_once(':') {
            Some((n, v)) => (n.trim(), v.trim()),
            None => (piece, ""),
        };
        out.push((name.to_ascii_lowercase(), value.to_owned()));
    }
    Ok(out)
}

/// Joins continuation lines, drops comments and blank lines: (first line number, directive).
fn directives(text: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let mut current = String::new();
    let mut start = 0;
    for (index, line) in text.lines().enumerate() {
        let trimmed = line.trim_start();
        if current.is_empty() {
            if trimmed.is_empty() || trimmed.starts_with('#') {
                continue;
            }
            start = index + 1;
        }
        let line = line.trim_end();
        match line.strip_suffix('\\') {
            Some(rest) => current.push_str(rest),
            None => {
                current.push_str(line);
                out.push((start, std::mem::take(&mut current)));
            }
        }
    }
    if !current.trim().is_empty() {
        out.push((start, current));
    }
    out
}

/// Splits a directive into words: whitespace separates, double quotes group (`\"` inside is a
/// quote; other backslash pairs are kept as written, for regular expressions).
fn split_words(text: &str) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut chars = text.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        let Some(&first) = chars.peek() else {
            return Ok(words);
        };
        let mut word = String::new();
        if first == '"' {
            chars.next();
            let mut closed = false;
            while let Some(c) = chars.next() {
                match c {
                    '\\' => match chars.next() {
                        Some('"') => word.push('"'),
                        Some(other) => {
                            word.push('\\');
                            word.push(other);
                        }
                        None => word.push('\\'),
                    },
                    '"' => {
                        closed = true;
                        break;
                    }
                    c => word.push(c),
                }
            }
            if !closed {
                return Err(format!("unterminated quote in {text:?}"));
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c.is_whitespace() {
                    break;
                }
                word.push(c);
                chars.next();
            }
        }
        words.push(word);
    }
}

/// Expands `*` in the last path component (what `Include dir/REQUEST-*.conf` needs), sorted.
fn expand_glob(path: &Path) -> Result<Vec<PathBuf>, String> {
    let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
        return Ok(vec![path.to_owned()]);
    };
    if !name.contains('*') {
        return Ok(if path.exists() {
            vec![path.to_owned()]
        } else {
            Vec::new()
        });
    }
    let dir = path.parent().unwrap_or(Path::new("."));
    let (prefix, suffix) = name.split_once('*').unwrap_or((name, ""));
    if suffix.contains('*') {
        return Err(format!(
            "Include {}: only one * is supported",
            path.display()
        ));
    }
    let entries =
        std::fs::read_dir(dir).map_err(|e| format!("cannot list {}: {e}", dir.display()))?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.file_name().and_then(|n| n.to_str()).is_some_and(|n| {
                n.len() >= prefix.len() + suffix.len()
                    && n.starts_with(prefix)
                    && n.ends_with(suffix)
            })
        })
        .collect();
    files.sort();
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn continuation_lines_and_quotes_make_one_directive() {
        let text = "# comment\nSecRule ARGS \"@rx a\\\"b\" \\\n    \"id:1,\\\n    msg:'x, y'\"\n";
        let d = directives(text);
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].0, 2);
        let words = split_words(&d[0].1).unwrap();
        assert_eq!(
            words,
            vec!["SecRule", "ARGS", "@rx a\"b", "id:1,    msg:'x, y'"]
        );
        let origin = Origin {
            file: "t".into(),
            line: 1,
        };
        let actions = parse_actions(&words[3], &origin).unwrap();
        assert_eq!(actions[1], ("msg".to_owned(), "x, y".to_owned()));
    }

    #[test]
    fn targets_split_at_pipes_outside_regexes_and_exclusions_attach() {
        assert_eq!(
            split_targets("ARGS|REQUEST_COOKIES:/a|b/|!ARGS:x"),
            vec!["ARGS", "REQUEST_COOKIES:/a|b/", "!ARGS:x"]
        );
        let origin = Origin {
            file: "t".into(),
            line: 1,
        };
        let t = parse_targets("ARGS|!ARGS:x|&TX:y", &origin).unwrap();
        assert_eq!(t.len(), 2);
        assert_eq!(t[0].exclusions.len(), 1);
        assert!(t[1].count);
    }

    #[test]
    fn headers_named_by_rules_get_their_own_bits_and_absent_ones_are_known() {
        let origin = Origin {
            file: "t".into(),
            line: 1,
        };
        let targets = parse_targets(
            "REQUEST_HEADERS:User-Agent|REQUEST_HEADERS:referer|REQUEST_HEADERS|ARGS",
            &origin,
        )
        .unwrap();
        let mut keys = HeaderKeys::default();
        let bits: Vec<u128> = targets.iter().map(|t| keys.bit(t)).collect();
        assert_eq!(bits[0], 1 << 64);
        assert_eq!(bits[1], 1 << 65);
        assert_eq!(
            bits[2],
            Collection::RequestHeaders.bit(),
            "the whole collection"
        );
        assert_eq!(bits[3], Collection::Args.bit());
        // Names compare without regard to case; a request with only a Referer lacks the agent.
        let request: [&[u8]; 2] = [b"Host", b"REFERER"];
        assert_eq!(keys.absent(request.into_iter()), 1 << 64);
        assert_eq!(keys.absent(std::iter::empty()), 0b11 << 64);
        // Past 64 names a header is read as the whole collection again.
        for n in 2..70 {
            let name = format!("X-Header-{n}");
            let target = parse_targets(&format!("REQUEST_HEADERS:{name}"), &origin).unwrap();
            let expected = if n < 64 {
                1 << (64 + n)
            } else {
                Collection::RequestHeaders.bit()
            };
            assert_eq!(keys.bit(&target[0]), expected, "{name}");
        }
        assert_eq!(keys.absent(request.into_iter()).count_ones(), 63);
    }

    #[test]
    fn macros_split_into_text_and_variables() {
        let m = Macro::parse("+%{tx.Critical_Anomaly_Score} x %{MATCHED_VAR}%{rule.ID}%{nope}");
        assert!(
            matches!(
                m.parts.as_slice(),
                [
                    MacroPart::Text(plus),
                    MacroPart::Var(Collection::Tx, Selector::Key(key)),
                    MacroPart::Text(x),
                    MacroPart::Var(Collection::MatchedVar, Selector::All),
                    MacroPart::Rule(Some(id)),
                    MacroPart::Unknown,
                ] if plus == "+" && key == "critical_anomaly_score" && x == " x " && id == "id"
            ),
            "{:?}",
            m.parts
        );
    }

    #[test]
    fn errors_name_the_place_and_the_problem() {
        let e = Config::parse("SecRuleEngine On\nSecRule ARGS \"@rx a\" \"id:1,frobnicate\"")
            .unwrap_err();
        assert_eq!(e.0, "<rules>:2: unsupported action frobnicate");
        let e = Config::parse("SecRule NOPE \"@rx a\" \"id:1\"").unwrap_err();
        assert!(e.0.contains("unknown variable NOPE"), "{}", e.0);
        let e = Config::parse("SecRule ARGS \"@rx a\" \"id:1,chain\"").unwrap_err();
        assert!(e.0.contains("has no rule after it"), "{}", e.0);
        let e = Config::parse("SecAction \"id:1,chain\"\nSecRule ARGS \"@rx a\" \"t:none\"")
            .unwrap_err();
        assert!(e.0.contains("`chain` on a SecAction"), "{}", e.0);
    }

    /// Pieces of SecLang, valid and not, that a generated rule text is made of.
    const PIECES: &[&str] = &[
        "SecRule ",
        "SecAction ",
        "SecMarker ",
        "SecDefaultAction ",
        "SecRuleEngine On",
        "SecRuleRemoveById ",
        "Include ",
        "ARGS",
        "REQUEST_HEADERS:Host",
        "!ARGS:/^x/",
        "&TX:a",
        "TX:/a|b/",
        "|",
        ":",
        "\"",
        "'",
        "\\",
        "\n",
        " ",
        "@rx ",
        "@pm a b",
        "@eq ",
        "@within %{tx.a}",
        "@pmFromFile x.data",
        "@rbl x",
        "!@streq ",
        "(",
        ")",
        "[",
        "%{",
        "}",
        "id:1",
        "id:",
        ",",
        "phase:2",
        "phase:9",
        "chain",
        "t:none",
        "t:lowercase",
        "t:nope",
        "setvar:tx.a=+1",
        "setvar:'ip.b=%{MATCHED_VAR}'",
        "setvar:!tx.a",
        "ctl:ruleRemoveTargetById=1;ARGS:x",
        "ctl:ruleEngine=Off",
        "ctl:x",
        "skipAfter:END",
        "initcol:ip=%{REMOTE_ADDR}",
        "msg:'a, b'",
        "deny",
        "status:999",
        "allow:phase",
        "1",
        "99999999999999999999",
        "\u{0}",
        "é",
    ];

    proptest::proptest! {
        /// Rule text is operator input: whatever it is, the parser answers with a rule set or
        /// an error naming where, and never panics.
        #[test]
        fn any_rule_text_loads_or_is_refused_without_panicking(
            lines in proptest::collection::vec(
                proptest::collection::vec(proptest::sample::select(PIECES), 0..12),
                0..6,
            ),
            noise in ".{0,40}",
        ) {
            let mut text: String = lines
                .iter()
                .map(|line| line.concat())
                .collect::<Vec<_>>()
                .join("\n");
            text.push_str(&noise);
            if let Err(e) = Config::parse(&text) {
                proptest::prop_assert!(e.0.starts_with("<rules>:"), "{}", e.0);
            }
        }
    }
}
