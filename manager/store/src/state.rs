//! The config state machine's pure core: resources by key, the global revision, and the bounded
//! history of change sets. It takes values and returns values: no IO, no clock, no runtime, so
//! every replica that applies the same commands in the same order reaches the same state, and
//! the logic is tested with plain `#[test]`s.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use fleetgate_shared::{Checksum, Delta, DeltaError, Resource, ResourceKey, Snapshot, diff};
use serde::{Deserialize, Serialize};

use crate::agents::AgentRegistry;
use crate::types::{ApiToken, Command, CommandResult, Reason};

/// How many change sets the history keeps. Enough for deltas to agents that were away for a
/// while, for audit of recent changes and for rollback to any recent revision; an agent further
/// behind gets a full snapshot. Each change set holds only what changed (and what it replaced),
/// so the cost follows the size of changes, not of the config.
pub const DEFAULT_HISTORY_LIMIT: usize = 1000;

/// One committed change set: what became `revision`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChangeSet {
    pub revision: u64,
    /// Who committed it (the API token's name).
    pub author: String,
    /// When the leader accepted it, in Unix milliseconds (taken from the command).
    pub time_ms: u64,
    /// For a rollback, the revision whose content it restored.
    pub rollback_to: Option<u64>,
    /// From `revision - 1` to `revision`.
    pub delta: Delta,
    /// The values that the changed and deleted resources had before this change set (resources
    /// that did not exist are not listed). What undoing the change set needs.
    pub replaced: Vec<Resource>,
    /// The checksum of the content at `revision`.
    pub checksum: Checksum,
}

impl ChangeSet {
    /// The keys this change set touched, upserts then deletes.
    pub fn keys(&self) -> impl Iterator<Item = ResourceKey> + '_ {
        self.delta
            .upserts
            .iter()
            .map(Resource::key)
            .chain(self.delta.deletes.iter().cloned())
    }
}

/// The persisted form of a whole [`ConfigState`]: its content and its history, oldest first.
/// Used for Raft snapshots.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateDoc {
    pub content: Snapshot,
    pub history: Vec<ChangeSet>,
    /// API tokens by name. Defaulted so that snapshots from before tokens were replicated
    /// still decode.
    #[serde(default)]
    pub tokens: BTreeMap<String, ApiToken>,
    /// Join tokens and enrolled agents; defaulted for snapshots from before agents.
    #[serde(default)]
    pub agents: AgentRegistry,
}

/// Stored state that does not hang together: a sign of corruption or of a bug.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StateError {
    #[error("history is not consecutive: revision {found} follows revision {previous}")]
    Gap { previous: u64, found: u64 },
    #[error(
        "the newest change set is revision {history}, but the content is at revision {content}"
    )]
    RevisionMismatch { history: u64, content: u64 },
    #[error(
        "content checksum {computed} differs from the recorded {recorded} at revision {revision}"
    )]
    ChecksumMismatch {
        revision: u64,
        computed: Checksum,
        recorded: Checksum,
    },
}

/// The replicated config: current content, its revision and checksum, and the last change sets.
#[derive(Clone, Debug)]
pub struct ConfigState {
    current: Snapshot,
    checksum: Checksum,
    /// Oldest first; consecutive revisions ending at `current.revision`.
    history: VecDeque<ChangeSet>,
    history_limit: usize,
    /// API tokens by name: replicated with the config, outside its content and revisions.
    tokens: BTreeMap<String, ApiToken>,
    /// Join tokens and enrolled agents: replicated the same way as API tokens.
    agents: AgentRegistry,
}

impl Default for ConfigState {
    fn default() -> Self {
        Self::new(DEFAULT_HISTORY_LIMIT)
    }
}

impl ConfigState {
    /// The empty config at revision 0, keeping at most `history_limit` change sets (at least 1).
    pub fn new(history_limit: usize) -> Self {
        let current = Snapshot::default();
        Self {
            checksum: current.checksum(),
            current,
            history: VecDeque::new(),
            history_limit: history_limit.max(1),
            tokens: BTreeMap::new(),
            agents: AgentRegistry::default(),
        }
    }

    /// Rebuilds a state from its persisted parts, checking that they agree: consecutive history
    /// ending at the content's revision, and the newest checksum equal to the content's.
    pub fn from_doc(doc: StateDoc, history_limit: usize) -> Result<Self, StateError> {
        let StateDoc {
            content,
            history,
            tokens,
            agents,
        } = doc;
        for pair in history.windows(2) {
            if pair[1].revision != pair[0].revision + 1 {
                return Err(StateError::Gap {
                    previous: pair[0].revision,
                    found: pair[1].revision,
                });
            }
        }
        let checksum = content.checksum();
        if let Some(newest) = history.last() {
            if newest.revision != content.revision {
                return Err(StateError::RevisionMismatch {
                    history: newest.revision,
                    content: content.revision,
                });
            }
            if newest.checksum != checksum {
                return Err(StateError::ChecksumMismatch {
                    revision: content.revision,
                    computed: checksum,
                    recorded: newest.checksum,
                });
            }
        }
        let mut state = Self {
            current: content,
            checksum,
            history: history.into(),
            history_limit: history_limit.max(1),
            tokens,
            agents,
        };
        state.trim();
        Ok(state)
    }

    /// The persisted form of this state.
    pub fn to_doc(&self) -> StateDoc {
        StateDoc {
            content: self.current.clone(),
            history: self.history.iter().cloned().collect(),
            tokens: self.tokens.clone(),
            agents: self.agents.clone(),
        }
    }

    /// Join tokens and enrolled agents.
    pub fn agents(&self) -> &AgentRegistry {
        &self.agents
    }

    /// The API tokens, by name.
    pub fn tokens(&self) -> &BTreeMap<String, ApiToken> {
        &self.tokens
    }

    /// The current revision; 0 before the first commit.
    pub fn revision(&self) -> u64 {
        self.current.revision
    }

    /// The checksum of the current content.
    pub fn checksum(&self) -> Checksum {
        self.checksum
    }

    /// The current content.
    pub fn snapshot(&self) -> &Snapshot {
        &self.current
    }

    /// The oldest revision whose content can still be reconstructed (and that deltas can start
    /// from): the revision just before the oldest kept change set.
    pub fn oldest_revision(&self) -> u64 {
        self.history
            .front()
            .map_or(self.current.revision, |c| c.revision - 1)
    }

    /// The newest change set, if any is kept.
    pub fn last_change(&self) -> Option<&ChangeSet> {
        self.history.back()
    }

    /// The kept change sets, oldest first.
    pub fn change_sets(&self) -> impl DoubleEndedIterator<Item = &ChangeSet> + ExactSizeIterator {
        self.history.iter()
    }

    /// At most `limit` change sets, newest first.
    pub fn history(&self, limit: usize) -> Vec<ChangeSet> {
        self.history.iter().rev().take(limit).cloned().collect()
    }

    /// The change set that created `revision`, if it is kept.
    pub fn change_set(&self, revision: u64) -> Option<&ChangeSet> {
        let front = self.history.front()?.revision;
        let index = usize::try_from(revision.checked_sub(front)?).ok()?;
        self.history.get(index)
    }

    /// The content at `revision`, if it is the current one or within the kept history.
    pub fn content_at(&self, revision: u64) -> Option<Snapshot> {
        if revision > self.current.revision || revision < self.oldest_revision() {
            return None;
        }
        if revision == self.current.revision {
            return Some(self.current.clone());
        }
        let mut content: BTreeMap<ResourceKey, Resource> = self
            .current
            .resources()
            .map(|r| (r.key(), r.clone()))
            .collect();
        for change in self.history.iter().rev() {
            if change.revision <= revision {
                break;
            }
            for key in change.keys() {
                content.remove(&key);
            }
            for resource in &change.replaced {
                content.insert(resource.key(), resource.clone());
            }
        }
        Snapshot::new(revision, content.into_values()).ok()
    }

    /// What changed from `revision` to the current revision, as one minimal delta; `None` if
    /// `revision` is in the future or older than the kept history (the caller then sends a full
    /// snapshot).
    pub fn delta_since(&self, revision: u64) -> Option<Delta> {
        if revision > self.current.revision || revision < self.oldest_revision() {
            return None;
        }
        // For each key touched since `revision`, its value at `revision` is what the first
        // change set touching it replaced (or absence).
        let mut before: BTreeMap<ResourceKey, Option<&Resource>> = BTreeMap::new();
        for change in self.history.iter().filter(|c| c.revision > revision) {
            let replaced: BTreeMap<ResourceKey, &Resource> =
                change.replaced.iter().map(|r| (r.key(), r)).collect();
            for key in change.keys() {
                let old = replaced.get(&key).copied();
                before.entry(key).or_insert(old);
            }
        }
        let mut delta = Delta {
            from: revision,
            to: self.current.revision,
            ..Delta::default()
        };
        for (key, old) in before {
            match (old, self.current.get(&key)) {
                (old, Some(now)) if old != Some(now) => delta.upserts.push(now.clone()),
                (Some(_), None) => delta.deletes.push(key),
                _ => {}
            }
        }
        Some(delta)
    }

    /// Applies one command: either commits it as the next revision, finds it changes nothing,
    /// or rejects it and leaves the state as it was. Deterministic.
    pub fn apply(&mut self, command: &Command) -> CommandResult {
        match command {
            Command::PutToken { token, .. } => {
                self.tokens.insert(token.name.clone(), token.clone());
                return self.unchanged();
            }
            Command::RevokeToken { name, .. } => {
                return match self.tokens.remove(name) {
                    Some(_) => self.unchanged(),
                    None => CommandResult::Rejected(Reason::UnknownToken(name.clone())),
                };
            }
            Command::PutJoinToken { token, .. } => {
                self.agents.put_join_token(token.clone());
                return self.unchanged();
            }
            Command::RevokeJoinToken { id, .. } => {
                let result = self.agents.revoke_join_token(id);
                return self.registry_result(result);
            }
            Command::EnrollAgent {
                time_ms,
                token_sha256,
                agent,
                ..
            } => {
                let result = self.agents.enroll(token_sha256, *time_ms, agent);
                return self.registry_result(result);
            }
            Command::RenewAgent {
                agent_id,
                cert_not_after_ms,
                ..
            } => {
                let result = self.agents.renew(agent_id, *cert_not_after_ms);
                return self.registry_result(result);
            }
            Command::RevokeAgent {
                time_ms, agent_id, ..
            } => {
                let result = self.agents.revoke(agent_id, *time_ms);
                return self.registry_result(result);
            }
            Command::Apply { .. } | Command::Rollback { .. } => {}
        }
        let expected = match command {
            Command::Apply {
                expected_revision, ..
            }
            | Command::Rollback {
                expected_revision, ..
            } => *expected_revision,
            _ => None,
        };
        if let Some(expected) = expected
            && expected != self.current.revision
        {
            return CommandResult::Rejected(Reason::RevisionMismatch {
                expected,
                current: self.current.revision,
            });
        }
        let planned = match command {
            Command::Apply {
                upserts, deletes, ..
            } => self.plan_apply(upserts, deletes),
            Command::Rollback { to_revision, .. } => self.plan_rollback(*to_revision),
            _ => Ok(Delta::default()),
        };
        let delta = match planned {
            Ok(delta) => delta,
            Err(reason) => return CommandResult::Rejected(reason),
        };
        if delta.is_empty() {
            return self.unchanged();
        }
        // plan_* only builds deltas that apply to the current content; should one not, refusing
        // the command is still deterministic.
        let next = match self.current.apply(&delta) {
            Ok(next) => next,
            Err(e) => return CommandResult::Rejected(reason_for(e)),
        };
        // The current content passed validation when it was committed: only what the change
        // can have broken is checked again (the same verdict as validating `next` whole).
        if let Err(problems) = fleetgate_shared::validate_change(&self.current, &next) {
            return CommandResult::Rejected(Reason::Invalid(problems));
        }
        let replaced = delta
            .upserts
            .iter()
            .map(Resource::key)
            .chain(delta.deletes.iter().cloned())
            .filter_map(|key| self.current.get(&key).cloned())
            .collect();
        let (author, time_ms, rollback_to) = match command {
            Command::Apply {
                author, time_ms, ..
            } => (author.clone(), *time_ms, None),
            Command::Rollback {
                author,
                time_ms,
                to_revision,
                ..
            } => (author.clone(), *time_ms, Some(*to_revision)),
            _ => (command.author().to_owned(), 0, None),
        };
        let checksum = next.checksum();
        self.history.push_back(ChangeSet {
            revision: next.revision,
            author,
            time_ms,
            rollback_to,
            delta,
            replaced,
            checksum,
        });
        self.current = next;
        self.checksum = checksum;
        self.trim();
        CommandResult::Committed {
            revision: self.current.revision,
            checksum,
        }
    }

    fn registry_result(&self, result: Result<(), Reason>) -> CommandResult {
        match result {
            Ok(()) => self.unchanged(),
            Err(reason) => CommandResult::Rejected(reason),
        }
    }

    /// The answer for an entry that changes nothing.
    pub fn unchanged(&self) -> CommandResult {
        CommandResult::Unchanged {
            revision: self.current.revision,
            checksum: self.checksum,
        }
    }

    fn plan_apply(&self, upserts: &[Resource], deletes: &[ResourceKey]) -> Result<Delta, Reason> {
        let mut seen = BTreeSet::new();
        let mut changed = BTreeMap::new();
        for resource in upserts {
            let key = resource.key();
            if !seen.insert(key.clone()) {
                return Err(Reason::Conflicting(key));
            }
            if self.current.get(&key) != Some(resource) {
                changed.insert(key, resource.clone());
            }
        }
        let mut removed = BTreeSet::new();
        for key in deletes {
            if !seen.insert(key.clone()) {
                return Err(Reason::Conflicting(key.clone()));
            }
            if self.current.get(key).is_none() {
                return Err(Reason::NotFound(key.clone()));
            }
            removed.insert(key.clone());
        }
        Ok(Delta {
            from: self.current.revision,
            to: self.current.revision + 1,
            upserts: changed.into_values().collect(),
            deletes: removed.into_iter().collect(),
        })
    }

    fn plan_rollback(&self, to_revision: u64) -> Result<Delta, Reason> {
        let target = self
            .content_at(to_revision)
            .ok_or(Reason::RevisionNotInHistory {
                requested: to_revision,
                oldest: self.oldest_revision(),
                current: self.current.revision,
            })?;
        let mut delta = diff(&self.current, &target);
        delta.to = self.current.revision + 1;
        Ok(delta)
    }

    fn trim(&mut self) {
        while self.history.len() > self.history_limit {
            self.history.pop_front();
        }
    }
}

/// The rejection for a delta that does not apply (see [`ConfigState::apply`]).
fn reason_for(error: DeltaError) -> Reason {
    match error {
        DeltaError::UnknownDelete(key) => Reason::NotFound(key),
        DeltaError::Conflict(key) | DeltaError::Duplicate(key) => Reason::Conflicting(key),
        DeltaError::BaseMismatch {
            snapshot,
            delta_from,
        } => Reason::RevisionMismatch {
            expected: delta_from,
            current: snapshot,
        },
        DeltaError::Backwards { from, .. } => Reason::RevisionMismatch {
            expected: from,
            current: from,
        },
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use fleetgate_shared::Kind;
    use fleetgate_shared::bundle::parse_document;
    use serde_json::json;

    use super::*;

    fn service(name: &str, port: u16) -> Resource {
        parse_document(json!({
            "kind": "Service",
            "name": name,
            "spec": { "endpoints": [{ "address": format!("127.0.0.1:{port}") }] },
        }))
        .unwrap()
    }

    fn route_to(name: &str, service: &str) -> Resource {
        parse_document(json!({
            "kind": "Route",
            "name": name,
            "spec": {
                "matches": [{ "path": { "prefix": format!("/{name}") } }],
                "forward": { "backends": [{ "service": service }] },
            },
        }))
        .unwrap()
    }

    fn put(resources: Vec<Resource>, deletes: Vec<ResourceKey>) -> Command {
        Command::Apply {
            author: "alice".into(),
            time_ms: 1_700_000_000_000,
            expected_revision: None,
            upserts: resources,
            deletes,
        }
    }

    fn if_match(expected: u64, resources: Vec<Resource>) -> Command {
        Command::Apply {
            author: "bob".into(),
            time_ms: 1_700_000_000_001,
            expected_revision: Some(expected),
            upserts: resources,
            deletes: Vec::new(),
        }
    }

    fn rollback(to: u64) -> Command {
        Command::Rollback {
            author: "carol".into(),
            time_ms: 1_700_000_000_002,
            expected_revision: None,
            to_revision: to,
        }
    }

    fn committed(result: &CommandResult) -> (u64, Checksum) {
        match result {
            CommandResult::Committed { revision, checksum } => (*revision, *checksum),
            other => panic!("expected a commit, got {other:?}"),
        }
    }

    fn svc_key(name: &str) -> ResourceKey {
        ResourceKey::new(Kind::Service, name)
    }

    #[test]
    fn each_change_set_raises_the_revision_by_exactly_one() {
        let mut state = ConfigState::default();
        assert_eq!(state.revision(), 0);
        for i in 1..=5u16 {
            let result = state.apply(&put(vec![service("a", 8000 + i), service("b", i)], vec![]));
            assert_eq!(committed(&result).0, u64::from(i));
            assert_eq!(state.revision(), u64::from(i));
            assert_eq!(state.checksum(), state.snapshot().checksum());
        }
        let change = state.last_change().unwrap();
        assert_eq!(change.revision, 5);
        assert_eq!(change.author, "alice");
        assert_eq!(change.time_ms, 1_700_000_000_000);
        assert_eq!((change.delta.from, change.delta.to), (4, 5));
    }

    #[test]
    fn a_command_that_changes_nothing_creates_no_revision() {
        let mut state = ConfigState::default();
        committed(&state.apply(&put(vec![service("a", 1)], vec![])));
        let again = state.apply(&put(vec![service("a", 1)], vec![]));
        assert_eq!(
            again,
            CommandResult::Unchanged {
                revision: 1,
                checksum: state.checksum()
            }
        );
        assert_eq!(state.change_sets().len(), 1);
    }

    #[test]
    fn unchanged_upserts_are_left_out_of_the_recorded_delta() {
        let mut state = ConfigState::default();
        committed(&state.apply(&put(vec![service("a", 1), service("b", 1)], vec![])));
        committed(&state.apply(&put(vec![service("a", 1), service("b", 2)], vec![])));
        let delta = &state.last_change().unwrap().delta;
        assert_eq!(delta.upserts, vec![service("b", 2)]);
        assert_eq!(state.last_change().unwrap().replaced, vec![service("b", 1)]);
    }

    #[test]
    fn if_match_lets_exactly_one_of_two_concurrent_writers_win() {
        let mut state = ConfigState::default();
        committed(&state.apply(&put(vec![service("a", 1)], vec![])));
        // Both writers read revision 1 and propose; the log orders them.
        let first = state.apply(&if_match(1, vec![service("a", 2)]));
        let second = state.apply(&if_match(1, vec![service("a", 3)]));
        assert_eq!(committed(&first).0, 2);
        assert_eq!(
            second,
            CommandResult::Rejected(Reason::RevisionMismatch {
                expected: 1,
                current: 2
            })
        );
        assert_eq!(state.snapshot().get(&svc_key("a")), Some(&service("a", 2)));
        assert_eq!(state.revision(), 2);
    }

    #[test]
    fn invalid_results_are_rejected_and_change_nothing() {
        let mut state = ConfigState::default();
        committed(&state.apply(&put(vec![service("api", 1), route_to("r", "api")], vec![])));
        let before = state.checksum();

        let dangling = state.apply(&put(vec![route_to("r2", "missing")], vec![]));
        assert!(
            matches!(&dangling, CommandResult::Rejected(Reason::Invalid(problems)) if problems[0].resource == "route/r2"),
            "{dangling:?}"
        );
        let orphaning = state.apply(&put(vec![], vec![svc_key("api")]));
        assert!(
            matches!(orphaning, CommandResult::Rejected(Reason::Invalid(_))),
            "{orphaning:?}"
        );
        assert_eq!(
            state.apply(&put(vec![], vec![svc_key("nope")])),
            CommandResult::Rejected(Reason::NotFound(svc_key("nope")))
        );
        assert_eq!(
            state.apply(&put(vec![service("x", 1), service("x", 2)], vec![])),
            CommandResult::Rejected(Reason::Conflicting(svc_key("x")))
        );
        assert_eq!(
            state.apply(&put(vec![service("api", 2)], vec![svc_key("api")])),
            CommandResult::Rejected(Reason::Conflicting(svc_key("api")))
        );
        assert_eq!(state.revision(), 1);
        assert_eq!(state.checksum(), before);
    }

    #[test]
    fn rollback_restores_the_old_content_exactly_as_a_new_revision() {
        let mut state = ConfigState::default();
        committed(&state.apply(&put(vec![service("a", 1), service("b", 1)], vec![])));
        let (_, at_two) = committed(&state.apply(&put(vec![service("c", 1)], vec![])));
        committed(&state.apply(&put(vec![service("a", 9)], vec![svc_key("b")])));
        committed(&state.apply(&put(vec![service("d", 1)], vec![svc_key("c")])));
        assert_ne!(state.checksum(), at_two);

        let result = state.apply(&rollback(2));
        let (revision, checksum) = committed(&result);
        assert_eq!(revision, 5);
        assert_eq!(checksum, at_two);
        assert_eq!(state.snapshot().checksum(), at_two);
        let change = state.last_change().unwrap();
        assert_eq!(change.rollback_to, Some(2));
        assert_eq!(change.author, "carol");

        // Rolling back to where we are changes nothing.
        assert!(matches!(
            state.apply(&rollback(5)),
            CommandResult::Unchanged { revision: 5, .. }
        ));
        // Rollback to before anything was written empties the config.
        let (_, empty) = committed(&state.apply(&rollback(0)));
        assert_eq!(empty, Snapshot::default().checksum());
        assert!(state.snapshot().is_empty());
    }

    #[test]
    fn rollback_outside_the_history_is_rejected() {
        let mut state = ConfigState::new(2);
        for port in 1..=4 {
            committed(&state.apply(&put(vec![service("a", port)], vec![])));
        }
        assert_eq!(state.oldest_revision(), 2);
        assert_eq!(
            state.apply(&rollback(1)),
            CommandResult::Rejected(Reason::RevisionNotInHistory {
                requested: 1,
                oldest: 2,
                current: 4
            })
        );
        assert!(matches!(
            state.apply(&rollback(9)),
            CommandResult::Rejected(Reason::RevisionNotInHistory { .. })
        ));
        let at_two = state.content_at(2).unwrap().checksum();
        let (_, checksum) = committed(&state.apply(&rollback(2)));
        assert_eq!(checksum, at_two);
    }

    #[test]
    fn history_is_bounded_and_keeps_the_newest() {
        let mut state = ConfigState::new(10);
        for i in 1..=25u16 {
            committed(&state.apply(&put(vec![service("a", i)], vec![])));
        }
        assert_eq!(state.change_sets().len(), 10);
        assert_eq!(state.oldest_revision(), 15);
        let newest: Vec<u64> = state.history(3).iter().map(|c| c.revision).collect();
        assert_eq!(newest, vec![25, 24, 23]);
        assert_eq!(state.history(100).len(), 10);
        assert!(state.change_set(15).is_none());
        assert_eq!(state.change_set(16).unwrap().revision, 16);
        assert!(state.content_at(14).is_none());
        assert!(state.delta_since(14).is_none());
        assert!(state.content_at(15).is_some());
    }

    #[test]
    fn content_at_each_kept_revision_matches_what_was_committed() {
        let mut state = ConfigState::default();
        let mut seen = vec![(0, state.checksum())];
        let steps = [
            put(vec![service("a", 1), service("b", 1)], vec![]),
            put(vec![service("b", 2), service("c", 1)], vec![]),
            put(vec![], vec![svc_key("a")]),
            put(vec![service("a", 3)], vec![svc_key("c")]),
            rollback(1),
        ];
        for step in &steps {
            seen.push(committed(&state.apply(step)));
        }
        for (revision, checksum) in seen {
            let content = state.content_at(revision).unwrap();
            assert_eq!(content.revision, revision);
            assert_eq!(content.checksum(), checksum, "content at {revision}");
        }
    }

    #[test]
    fn delta_since_any_kept_revision_brings_that_content_to_the_current_one() {
        let mut state = ConfigState::default();
        let steps = [
            put(vec![service("a", 1), service("b", 1)], vec![]),
            put(vec![service("c", 1)], vec![]),
            put(vec![service("a", 2)], vec![svc_key("c")]),
            put(vec![service("a", 1)], vec![]),
            put(vec![], vec![svc_key("b")]),
        ];
        for step in &steps {
            committed(&state.apply(step));
        }
        for from in 0..=state.revision() {
            let base = state.content_at(from).unwrap();
            let delta = state.delta_since(from).unwrap();
            assert_eq!(
                base.apply(&delta).unwrap(),
                *state.snapshot(),
                "from {from}"
            );
        }
        // `c` was created and deleted after 1: not in the delta. `a` changed and changed back.
        let since_one = state.delta_since(1).unwrap();
        assert!(since_one.upserts.is_empty(), "{since_one:?}");
        assert_eq!(since_one.deletes, vec![svc_key("b")]);
        assert!(state.delta_since(state.revision()).unwrap().is_empty());
        assert!(state.delta_since(state.revision() + 1).is_none());
    }

    #[test]
    fn a_state_survives_its_doc_and_a_corrupt_doc_is_refused() {
        let mut state = ConfigState::default();
        committed(&state.apply(&put(vec![service("a", 1)], vec![])));
        committed(&state.apply(&put(vec![service("b", 1)], vec![])));
        let doc = state.to_doc();
        let text = serde_json::to_string(&doc).unwrap();
        let back = ConfigState::from_doc(serde_json::from_str(&text).unwrap(), 1000).unwrap();
        assert_eq!(back.to_doc(), doc);
        assert_eq!(back.checksum(), state.checksum());

        let mut bad = doc.clone();
        bad.history[1].checksum = bad.history[0].checksum;
        assert!(matches!(
            ConfigState::from_doc(bad, 1000),
            Err(StateError::ChecksumMismatch { .. })
        ));
        let mut gap = doc;
        gap.history.remove(0);
        gap.history.insert(0, {
            let mut c = gap.history[0].clone();
            c.revision = 0;
            c
        });
        assert!(matches!(
            ConfigState::from_doc(gap, 1000),
            Err(StateError::Gap { .. })
        ));
    }

    #[test]
    fn replicas_applying_the_same_commands_agree_exactly() {
        let commands = [
            put(vec![service("a", 1), service("b", 1)], vec![]),
            if_match(1, vec![service("a", 2)]),
            if_match(1, vec![service("a", 3)]),
            put(vec![route_to("r", "a")], vec![svc_key("b")]),
            put(vec![], vec![svc_key("a")]),
            rollback(1),
        ];
        let mut one = ConfigState::default();
        let mut two = ConfigState::default();
        for command in &commands {
            assert_eq!(one.apply(command), two.apply(command));
        }
        assert_eq!(one.to_doc(), two.to_doc());
        assert_eq!(
            serde_json::to_vec(&one.to_doc()).unwrap(),
            serde_json::to_vec(&two.to_doc()).unwrap()
        );
    }

    #[test]
    fn commands_survive_json() {
        let command = put(
            vec![service("a", 1), route_to("r", "a")],
            vec![svc_key("z")],
        );
        let text = serde_json::to_string(&command).unwrap();
        assert_eq!(serde_json::from_str::<Command>(&text).unwrap(), command);
        let result = CommandResult::Rejected(Reason::NotFound(svc_key("z")));
        let text = serde_json::to_string(&result).unwrap();
        assert_eq!(
            serde_json::from_str::<CommandResult>(&text).unwrap(),
            result
        );
    }

    #[test]
    fn tokens_are_replicated_outside_the_config_revisions() {
        let mut state = ConfigState::new(10);
        let token = crate::types::ApiToken {
            name: "ci".into(),
            role: crate::types::TokenRole::Editor,
            sha256: "ab".repeat(32),
            created_by: "root".into(),
            created_ms: 1,
        };
        let put = Command::PutToken {
            author: "root".into(),
            time_ms: 1,
            token: token.clone(),
        };
        assert!(matches!(
            state.apply(&put),
            CommandResult::Unchanged { revision: 0, .. }
        ));
        assert_eq!(state.tokens().get("ci"), Some(&token));
        let restored = ConfigState::from_doc(state.to_doc(), 10).unwrap();
        assert_eq!(restored.tokens(), state.tokens());
        let revoke = |name: &str| Command::RevokeToken {
            author: "root".into(),
            time_ms: 2,
            name: name.into(),
        };
        assert!(matches!(
            state.apply(&revoke("ci")),
            CommandResult::Unchanged { .. }
        ));
        assert!(state.tokens().is_empty());
        assert_eq!(
            state.apply(&revoke("ci")),
            CommandResult::Rejected(Reason::UnknownToken("ci".into()))
        );
        assert_eq!(state.revision(), 0);
    }
}
