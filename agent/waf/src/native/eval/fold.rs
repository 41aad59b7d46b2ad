//! Rules whose outcome the configuration alone decides, evaluated once at load.
//!
//! About half the rules a benign request meets in the OWASP CRS read nothing but `TX` values the
//! configuration set: `REQUEST-901`'s defaults (`&TX:x "@eq 0"` → `setvar`) and each file's
//! paranoia-level gates (`TX:EXECUTING_PARANOIA_LEVEL "@lt 2"` → `skipAfter`). Their outcome is
//! the same for every request, so evaluating them per request is waste.
//!
//! **The analysis.** A forward pass over each phase's items tracks, per numbered `TX` name, what
//! every request has there when it reaches that item: unset, one known value, or unknown. Rules
//! that read request data are *opaque*: every `TX` name they may write becomes unknown, on the
//! path that falls through and on the path of each `skipAfter` they may take (the state at a
//! marker is the join of every path that reaches it). A rule that reads only `TX` names known at
//! its position, and macros of them, is evaluated right there on the known values by the same
//! code that evaluates requests; so is a chain whose first links read only those, up to the
//! first link that reads anything else, when one of them does not match (the chain stops
//! there for every request). If that evaluation only writes `TX`, changes `MATCHED_VAR(S)`
//! and jumps, with nothing logged and no other effect, the rule is *folded*: its outcome then
//! holds for every request that reaches it, and the pass follows the one path it takes.
//!
//! **Blocks.** From each folded rule, the run of folded rules (and markers) a request goes
//! through until the next opaque rule is evaluated once more on the known values and kept as
//! a [`Block`]: the `TX` values it leaves, its effect on `MATCHED_VARS`, and where evaluation
//! resumes. Per request, arriving at a folded rule applies its block instead of evaluating it.
//!
//! **When a block does not apply.** Only while nothing the analysis assumed was changed by the
//! request: a `ctl:ruleRemove*` can take a folded rule (or its target) away and a pending
//! `skip:N` counts rules. Once a request has run such an action the engine evaluates every rule
//! (`State::folding`). A rule set with `skip:N` anywhere is not folded at all.

use std::collections::HashSet;

use super::{
    Buffers, Config, EngineMode, Item, MacroPart, Rule, SetOp, State, Vars, chain_prefix_matches,
    evaluate_rule, next_marker, step,
};
use crate::native::parse::{Collection, Ctl, Link, Macro, Names, Selector};

/// Numbers folded writes across every rule set of the process; 0 means "not a folded write".
static WRITES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// Per phase and item index, the block that starts at that (folded) rule.
#[derive(Debug, Default)]
pub(crate) struct Folds {
    blocks: [Vec<Option<Box<Block>>>; 2],
}

/// What a run of folded rules does to every request that reaches its first rule.
#[derive(Debug)]
pub(crate) struct Block {
    /// Numbered `TX` names and the value each is left with (`None`: unset).
    writes: Vec<(u32, Option<Box<[u8]>>)>,
    /// The number of the first write; the other writes, then the `matched` entries follow it.
    /// Unique in the process (see `Tx::replay`), so a thread's state can tell its own earlier
    /// replay of a write.
    first_write: u64,
    /// Whether the run ends with `MATCHED_VARS` emptied before `matched` is appended.
    clear_matched: bool,
    matched: Vec<MatchedVar>,
    /// The item evaluation resumes at, and the marker pending then (a `skipAfter` whose marker
    /// is in the next phase).
    next: usize,
    marker: Option<u32>,
}

impl Folds {
    pub fn at(&self, phase: usize, item: usize) -> Option<&Block> {
        self.blocks[phase].get(item)?.as_deref()
    }

    /// How many rules were folded, over both phases.
    pub fn folded_rules(&self) -> usize {
        self.blocks.iter().flatten().filter(|b| b.is_some()).count()
    }
}

impl Block {
    /// Applies the block to a request's state; returns the item to resume at.
    pub(super) fn apply(&self, state: &mut State) -> usize {
        for (n, (id, value)) in (self.first_write..).zip(&self.writes) {
            state.tx.replay(*id, value.as_deref(), n);
        }
        if self.clear_matched {
            state.matched_clear();
        }
        let first_entry = self.first_write + self.writes.len() as u64;
        for (n, (collection, key, value)) in (first_entry..).zip(&self.matched) {
            state.matched_replay(*collection, key.as_deref(), value, n);
        }
        state.marker = self.marker;
        self.next
    }
}

/// One `MATCHED_VARS` entry a block appends: collection, key, value.
type MatchedVar = (Collection, Option<Box<[u8]>>, Box<[u8]>);

/// What every request has in one numbered `TX` name at some item.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Known {
    Unset,
    Value(Box<[u8]>),
    Unknown,
}

/// Per numbered `TX` name, what is known; `None` where no request arrives.
type Abstract = Vec<Known>;

fn join(into: &mut Option<Abstract>, from: &Abstract) {
    match into {
        None => *into = Some(from.clone()),
        Some(state) => {
            for (a, b) in state.iter_mut().zip(from) {
                if a != b {
                    *a = Known::Unknown;
                }
            }
        }
    }
}

/// Analyses `config` and builds the blocks of its folded rules.
pub(crate) fn fold(config: &Config) -> Folds {
    let uses_skip = config
        .phases
        .iter()
        .flatten()
        .filter_map(|item| match item {
            Item::Rule(rule) => Some(rule),
            Item::Marker(_) => None,
        })
        .any(|rule| rule.links.iter().any(|l| l.skip.is_some()));
    if uses_skip {
        return Folds::default();
    }
    let names = config.tx_names.names.len();
    let mut folds = Folds::default();
    // Phase 1 starts with `TX` empty; phase 2 where phase 1 ended, at the pending marker.
    let mut entries: Vec<(Option<u32>, Abstract)> = vec![(None, vec![Known::Unset; names])];
    for phase in 0..2 {
        let items = &config.phases[phase];
        let mut arriving: Vec<Option<Abstract>> = vec![None; items.len() + 1];
        let mut carried: Vec<(Option<u32>, Abstract)> = Vec::new();
        for (marker, state) in &entries {
            let at = match marker {
                Some(id) => next_marker(config, phase, *id, 0),
                None => 0,
            };
            join(&mut arriving[at], state);
        }
        // At each folded rule, what was known there.
        let mut known: Vec<Option<Abstract>> = vec![None; items.len()];
        // Sends `state` to the marker `id` after item `from` (or out of the phase).
        let mut jump = |arriving: &mut Vec<Option<Abstract>>, id: u32, from: usize, state| {
            let at = next_marker(config, phase, id, from);
            if at == items.len() {
                carried.push((Some(id), state));
            } else {
                join(&mut arriving[at], &state);
            }
        };
        for (i, item) in items.iter().enumerate() {
            let Some(state) = arriving[i].take() else {
                continue;
            };
            let rule = match item {
                Item::Rule(rule) if !rule.removed => rule,
                _ => {
                    join(&mut arriving[i + 1], &state);
                    continue;
                }
            };
            match decide(config, phase, rule, &state) {
                Some(outcome) => {
                    known[i] = Some(state);
                    let after = outcome.state;
                    match outcome.marker {
                        Some(id) => jump(&mut arriving, id, i + 1, after),
                        None => join(&mut arriving[i + 1], &after),
                    }
                }
                None => {
                    let after = opaque_effect(rule, &config.tx_names, state);
                    for link in &rule.links {
                        if let Some(id) = link.skip_after {
                            jump(&mut arriving, id, i + 1, after.clone());
                        }
                    }
                    join(&mut arriving[i + 1], &after);
                }
            }
        }
        if let Some(state) = arriving[items.len()].take() {
            carried.push((None, state));
        }
        let folded: Vec<bool> = known.iter().map(Option::is_some).collect();
        folds.blocks[phase] = known
            .iter()
            .enumerate()
            .map(|(i, known)| block(config, phase, i, &folded, known.as_ref()?).map(Box::new))
            .collect();
        entries = carried;
    }
    folds
}

/// The outcome of a folded rule: the state after it and the marker it jumps to.
struct Decided {
    state: Abstract,
    marker: Option<u32>,
}

/// Evaluates `rule` on the known values if its outcome depends on nothing else and its effects
/// can be replayed: it reads only known values, or the links it starts with do and one of them
/// does not match (the chain stops there, so what later links read never counts: the CRS's
/// `&TX:MAX_NUM_ARGS "@eq 1"` chained to `&ARGS "@gt %{tx.max_num_args}"` with no limit set).
fn decide(config: &Config, phase: usize, rule: &Rule, known: &Abstract) -> Option<Decided> {
    let is_known = |id: &u32| !matches!(known.get(*id as usize), None | Some(Known::Unknown));
    let decided_links = rule
        .links
        .iter()
        .take_while(|link| reads(link).is_some_and(|reads| reads.iter().all(is_known)))
        .count();
    // (A `SecAction`, which always runs its actions, never starts a chain: the parser refuses
    // that, as libmodsecurity does.)
    if decided_links == 0 {
        return None;
    }
    let mut state = scratch(config, known);
    let vars = load_vars(config);
    let mut buffers = Buffers::default();
    if decided_links == rule.links.len() {
        evaluate_rule(config, phase, rule, &vars, &mut state, &mut buffers).ok()?;
    } else if chain_prefix_matches(
        config,
        phase,
        rule,
        decided_links,
        &vars,
        &mut state,
        &mut buffers,
    )
    .ok()?
    {
        // The chain goes on to a link that reads what only a request has.
        return None;
    }
    if !replayable(&state) {
        return None;
    }
    let mut after = known.clone();
    for id in state.tx.written.take().unwrap_or_default() {
        after[id as usize] = match state.tx.slot(id) {
            Some(value) => Known::Value(Box::from(&value[..])),
            None => Known::Unset,
        };
    }
    Some(Decided {
        state: after,
        marker: state.marker,
    })
}

/// A state for evaluating at load: the known `TX` values set, writes recorded, `MATCHED_VARS`
/// holding one marker entry (see [`block`]), and the engine on, so that a rule that would
/// disrupt any request is never folded.
fn scratch(config: &Config, known: &Abstract) -> State {
    let mut state = State::new();
    state.tx.reset(config.tx_names.names.len());
    for (id, k) in known.iter().enumerate() {
        if let (Known::Value(v), Ok(id)) = (k, u32::try_from(id)) {
            state.tx.set_slot(id, Some(v));
        }
    }
    state.tx.written = Some(Vec::new());
    state.engine = EngineMode::On;
    state.body_access = true;
    state.matched_push_parts(None, None, b"");
    state
}

/// The request variables at load: none but the `TX` names (folded rules read nothing else).
fn load_vars(config: &Config) -> Vars<'_> {
    Vars {
        tx_names: Some(&config.tx_names),
        ..Vars::default()
    }
}

/// Whether an evaluation changed nothing but `TX`, `MATCHED_VARS` and the pending marker.
fn replayable(state: &State) -> bool {
    state.matches.is_empty()
        && state.intervention.is_none()
        && !state.allowed
        && state.engine == EngineMode::On
        && state.body_access
        && state.processor.is_none()
        && state.body_type.is_none()
        && state.processor_name.is_none()
        && state.skip == 0
        && state.removed_ids.is_empty()
        && state.removed_tags.is_empty()
        && state.removed_targets_by_id.is_empty()
        && state.removed_targets_by_tag.is_empty()
        && state.pending.is_empty()
        && state.ip_record.is_empty()
        && state.global_record.is_empty()
        && state.tx.dynamic().next().is_none()
}

/// The numbered `TX` names `link` reads, if that is all it reads.
fn reads(link: &Link) -> Option<Vec<u32>> {
    let mut reads = Vec::new();
    let macro_reads = |m: &Macro, reads: &mut Vec<u32>| -> Option<()> {
        for part in &m.parts {
            match part {
                MacroPart::Text(_) | MacroPart::Unknown => {}
                MacroPart::Tx(id) => reads.push(*id),
                MacroPart::Rule(Some(key)) if key == "id" => {}
                MacroPart::Rule(_) | MacroPart::Var(..) => return None,
            }
        }
        Some(())
    };
    // A `ctl` changes how the rest of the request is evaluated (the engine mode, body
    // access, rule removal): nothing a block could replay.
    let ctl = link.ctls.iter().any(|c| !matches!(c, Ctl::Ignored));
    if ctl || !link.initcols.is_empty() || link.unsupported.is_some() {
        return None;
    }
    for target in &link.targets {
        match (&target.collection, &target.selector) {
            (Collection::Tx, Selector::Tx(id)) if target.exclusions.is_empty() => reads.push(*id),
            _ => return None,
        }
    }
    if let Some(param) = link.operator.param() {
        macro_reads(param, &mut reads)?;
    }
    for setvar in &link.setvars {
        if setvar.collection != Collection::Tx {
            return None;
        }
        let slot = setvar.slot?;
        match &setvar.op {
            SetOp::Set(m) => macro_reads(m, &mut reads)?,
            SetOp::Add(m) | SetOp::Sub(m) => {
                reads.push(slot);
                macro_reads(m, &mut reads)?;
            }
            SetOp::Unset => {}
        }
    }
    Some(reads)
}

/// `state` after an opaque rule: whatever it may write is unknown.
fn opaque_effect(rule: &Rule, names: &Names, mut state: Abstract) -> Abstract {
    for link in &rule.links {
        if link.capture {
            // Groups are stored as `TX.0`, `TX.1`, ... with no upper bound: every numbered
            // name that is a group number.
            for (id, known) in state.iter_mut().enumerate() {
                if is_group_number(names.name(id as u32)) {
                    *known = Known::Unknown;
                }
            }
        }
        for setvar in &link.setvars {
            if setvar.collection != Collection::Tx {
                continue;
            }
            match setvar.slot {
                Some(id) => state[id as usize] = Known::Unknown,
                // A name built at run time (`tx.header_name_%{tx.0}`): any numbered name its
                // literal parts allow.
                None => {
                    for (id, known) in state.iter_mut().enumerate() {
                        if may_expand_to(&setvar.name.parts, names.name(id as u32)) {
                            *known = Known::Unknown;
                        }
                    }
                }
            }
        }
    }
    state
}

/// Whether a name built from `parts` (its macros expanding to anything, the whole lower-cased
/// as `setvar` does) can be `name` (lower-case): glob matching, a macro being `*`, in time
/// linear in the product of the lengths (adjacent macros are one `*`; on a mismatch only the
/// last `*` takes one more byte, which is enough for `*` patterns).
fn may_expand_to(parts: &[MacroPart], name: &str) -> bool {
    // The pattern as bytes, `None` for a `*`.
    let mut pattern: Vec<Option<u8>> = Vec::new();
    for part in parts {
        match part {
            MacroPart::Text(text) => {
                pattern.extend(text.bytes().map(|b| Some(b.to_ascii_lowercase())));
            }
            _ if pattern.last() == Some(&None) => {}
            _ => pattern.push(None),
        }
    }
    let name = name.as_bytes();
    let (mut p, mut n) = (0, 0);
    // The last `*` seen and the name position it was tried at.
    let mut star: Option<(usize, usize)> = None;
    while n < name.len() {
        match pattern.get(p) {
            Some(Some(b)) if *b == name[n] => {
                p += 1;
                n += 1;
            }
            Some(None) => {
                star = Some((p, n));
                p += 1;
            }
            _ => match star {
                Some((at, from)) => {
                    p = at + 1;
                    n = from + 1;
                    star = Some((at, from + 1));
                }
                None => return false,
            },
        }
    }
    pattern[p..].iter().all(Option::is_none)
}

/// Whether a `TX` name is one a capture group is stored under (`0`, `1`, ... `10`, ...).
fn is_group_number(name: &str) -> bool {
    !name.is_empty()
        && name.bytes().all(|b| b.is_ascii_digit())
        && (name == "0" || !name.starts_with('0'))
}

/// Evaluates the folded rules a request runs through from item `start` on the known values.
fn block(
    config: &Config,
    phase: usize,
    start: usize,
    folded: &[bool],
    known: &Abstract,
) -> Option<Block> {
    let items = &config.phases[phase];
    let mut state = scratch(config, known);
    let vars = load_vars(config);
    let mut buffers = Buffers::default();
    let mut i = start;
    // Through markers and removed rules, up to the next rule that was not folded.
    while let Some(item) = items.get(i) {
        if matches!(item, Item::Rule(rule) if !rule.removed && !folded[i]) {
            break;
        }
        i = step(config, phase, i, &vars, &mut state, &mut buffers).ok()?;
        if !replayable(&state) {
            return None;
        }
    }
    let written = state.tx.written.take().unwrap_or_default();
    let mut seen = HashSet::new();
    let writes: Vec<_> = written
        .into_iter()
        .filter(|id| seen.insert(*id))
        .map(|id| (id, state.tx.slot(id).map(|v| Box::from(&v[..]))))
        .collect();
    // The marker entry `scratch` put first is still there unless the run emptied the list.
    let matched_all = state.matched();
    let clear_matched = matched_all.first().is_none_or(|m| m.collection.is_some());
    let kept = usize::from(!clear_matched);
    let matched: Vec<MatchedVar> = matched_all[kept..]
        .iter()
        .filter_map(|m| {
            Some((
                m.collection?,
                m.key.as_deref().map(Box::from),
                Box::from(&m.value[..]),
            ))
        })
        .collect();
    Some(Block {
        first_write: WRITES.fetch_add(
            (writes.len() + matched.len()) as u64,
            std::sync::atomic::Ordering::Relaxed,
        ),
        writes,
        clear_matched,
        matched,
        next: i,
        marker: state.marker,
    })
}

#[cfg(test)]
mod tests {
    use super::{MacroPart, is_group_number, may_expand_to};

    fn parts(pattern: &str) -> Vec<MacroPart> {
        pattern
            .split('*')
            .enumerate()
            .flat_map(|(i, text)| {
                let text = (!text.is_empty()).then(|| MacroPart::Text(text.to_owned()));
                (i > 0)
                    .then_some(MacroPart::Unknown)
                    .into_iter()
                    .chain(text)
            })
            .collect()
    }

    #[test]
    fn a_name_built_at_run_time_matches_what_its_literal_parts_allow() {
        assert!(may_expand_to(
            &parts("header_name_*"),
            "header_name_x-forwarded"
        ));
        assert!(
            may_expand_to(&parts("Header_Name_*"), "header_name_"),
            "lower-cased"
        );
        assert!(!may_expand_to(&parts("header_name_*"), "anomaly_score"));
        assert!(may_expand_to(&parts("*"), "anything"));
        assert!(may_expand_to(&parts("a*b*c"), "axxbyybc"));
        assert!(!may_expand_to(&parts("a*b*c"), "axxbyyb"));
        assert!(may_expand_to(&parts("exact"), "exact"));
        assert!(!may_expand_to(&parts("exact"), "exactly"));
        // Many macros in a row against a long name that does not match: linear, not
        // exponential (this took minutes with backtracking over every split).
        let many = "*".repeat(24) + "z";
        assert!(!may_expand_to(&parts(&many), &"a".repeat(60)));
        let spaced: String = (0..24).map(|_| "*a").collect::<String>() + "z";
        assert!(!may_expand_to(&parts(&spaced), &"a".repeat(60)));
    }

    #[test]
    fn group_numbers_are_canonical_decimals() {
        for name in ["0", "1", "9", "10", "123"] {
            assert!(is_group_number(name), "{name}");
        }
        for name in ["", "01", "1a", "limit", "-1"] {
            assert!(!is_group_number(name), "{name}");
        }
    }
}
