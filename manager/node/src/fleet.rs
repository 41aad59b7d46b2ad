//! What this node knows about the agents connected to its sync endpoint: the live half of the
//! fleet view. The other half (which agents are enrolled, revoked, when their certificates
//! expire) is replicated in the agent registry; `GET /api/v1/agents` joins the registry with
//! the live views of every node.
//!
//! Live state is not replicated on purpose: it changes with every Ack and Status of every
//! agent, and putting that through Raft would make the fleet's chatter compete with config
//! writes. A node that restarts forgets it, and agents reconnect within seconds.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use fleetgate_manager_store::NodeId;
use serde::{Deserialize, Serialize};

/// How many entries of agents that disconnected are kept for `last seen`.
const MAX_DISCONNECTED: usize = 10_000;

/// One problem of a rejected revision, as the agent reported it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NackError {
    pub resource: String,
    pub path: String,
    pub message: String,
}

/// The last revision an agent rejected.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastNack {
    pub revision: u64,
    pub time_ms: u64,
    pub errors: Vec<NackError>,
}

/// One agent as this node sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LiveAgent {
    pub id: String,
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub version: String,
    /// The manager node the agent is (or was last) connected to.
    pub node_id: NodeId,
    pub connected: bool,
    pub remote_addr: String,
    pub connected_ms: u64,
    pub last_seen_ms: u64,
    /// The revision the agent serves, as of its last Hello, Ack or Status.
    pub applied_revision: u64,
    pub applied_checksum: String,
    pub last_ack_ms: Option<u64>,
    pub last_nack: Option<LastNack>,
    /// Milliseconds since the agent last applied a config, as of its last Status.
    pub config_age_ms: Option<u64>,
    /// Increases with each session, so that the end of an older session of the same agent
    /// (a reconnect raced the old connection's timeout) does not mark the new one gone.
    #[serde(skip)]
    pub session: u64,
}

/// The agents connected to (or recently seen by) this node.
#[derive(Debug)]
pub struct Fleet {
    node_id: NodeId,
    agents: Mutex<HashMap<String, LiveAgent>>,
    sessions: std::sync::atomic::AtomicU64,
}

impl Fleet {
    pub fn new(node_id: NodeId) -> Self {
        Self {
            node_id,
            agents: Mutex::new(HashMap::new()),
            sessions: std::sync::atomic::AtomicU64::new(0),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, LiveAgent>> {
        self.agents.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records a new session; returns its number, for [`Self::update`] and
    /// [`Self::disconnected`].
    #[allow(clippy::too_many_arguments)]
    pub fn connected(
        &self,
        id: &str,
        name: &str,
        labels: &BTreeMap<String, String>,
        version: &str,
        remote_addr: &str,
        applied_revision: u64,
        applied_checksum: &str,
        now_ms: u64,
    ) -> u64 {
        let session = self
            .sessions
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            + 1;
        let mut agents = self.lock();
        let previous = agents.remove(id);
        agents.insert(
            id.to_owned(),
            LiveAgent {
                id: id.to_owned(),
                name: name.to_owned(),
                labels: labels.clone(),
                version: version.to_owned(),
                node_id: self.node_id,
                connected: true,
                remote_addr: remote_addr.to_owned(),
                connected_ms: now_ms,
                last_seen_ms: now_ms,
                applied_revision,
                applied_checksum: applied_checksum.to_owned(),
                last_ack_ms: previous.as_ref().and_then(|p| p.last_ack_ms),
                last_nack: previous.and_then(|p| p.last_nack),
                config_age_ms: None,
                session,
            },
        );
        if agents.len() > MAX_DISCONNECTED {
            evict_oldest_disconnected(&mut agents);
        }
        session
    }

    /// Changes the entry of `id` if `session` is still its current session.
    pub fn update(&self, id: &str, session: u64, now_ms: u64, change: impl FnOnce(&mut LiveAgent)) {
        if let Some(agent) = self.lock().get_mut(id).filter(|a| a.session == session) {
            agent.last_seen_ms = now_ms;
            change(agent);
        }
    }

    /// Marks the session ended (the entry stays, for `last seen`).
    pub fn disconnected(&self, id: &str, session: u64, now_ms: u64) {
        self.update(id, session, now_ms, |agent| agent.connected = false);
    }

    /// Every agent this node knows, by id.
    pub fn list(&self) -> Vec<LiveAgent> {
        let mut agents: Vec<LiveAgent> = self.lock().values().cloned().collect();
        agents.sort_by(|a, b| a.id.cmp(&b.id));
        agents
    }
}

fn evict_oldest_disconnected(agents: &mut HashMap<String, LiveAgent>) {
    let oldest = agents
        .values()
        .filter(|a| !a.connected)
        .min_by_key(|a| a.last_seen_ms)
        .map(|a| a.id.clone());
    if let Some(id) = oldest {
        agents.remove(&id);
    }
}

/// Of several nodes' views of the same agent, the one to show: a connected one first, then
/// the most recently seen.
pub fn merge(views: impl IntoIterator<Item = LiveAgent>) -> BTreeMap<String, LiveAgent> {
    let mut merged: BTreeMap<String, LiveAgent> = BTreeMap::new();
    for view in views {
        match merged.get(&view.id) {
            Some(known)
                if (known.connected, known.last_seen_ms) >= (view.connected, view.last_seen_ms) => {
            }
            _ => {
                merged.insert(view.id.clone(), view);
            }
        }
    }
    merged
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn an_old_session_ending_does_not_hide_the_new_one() {
        let fleet = Fleet::new(1);
        let labels = BTreeMap::new();
        let old = fleet.connected("a1", "edge-1", &labels, "0.1", "127.0.0.1:1", 3, "", 1_000);
        let new = fleet.connected("a1", "edge-1", &labels, "0.1", "127.0.0.1:2", 3, "", 2_000);
        fleet.update("a1", old, 2_500, |a| a.applied_revision = 99);
        fleet.disconnected("a1", old, 3_000);
        let view = &fleet.list()[0];
        assert!(view.connected);
        assert_eq!(view.applied_revision, 3);
        fleet.disconnected("a1", new, 4_000);
        let view = &fleet.list()[0];
        assert!(!view.connected);
        assert_eq!(view.last_seen_ms, 4_000);
    }

    #[test]
    fn merging_prefers_the_node_the_agent_is_connected_to() {
        let fleet = Fleet::new(1);
        let labels = BTreeMap::new();
        fleet.connected("a1", "edge", &labels, "0.1", "x", 3, "", 5_000);
        let mut stale = fleet.list()[0].clone();
        stale.connected = false;
        stale.node_id = 2;
        stale.last_seen_ms = 9_000;
        let merged = merge([stale.clone(), fleet.list()[0].clone()]);
        assert_eq!(merged["a1"].node_id, 1);
        let merged = merge([fleet.list()[0].clone(), stale]);
        assert_eq!(merged["a1"].node_id, 1);
    }
}
