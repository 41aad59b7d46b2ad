//! The agent registry: join tokens and enrolled agents, replicated with the config but outside
//! its content and revisions (like API tokens: no revision, no checksum change, never sent to
//! agents).
//!
//! Every decision here is taken from the command alone (its leader-stamped `time_ms`, never
//! the local clock), so all replicas agree on whether an enrolment was accepted.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::types::Reason;

/// A join token: lets agents enrol until it expires or is used up. Only its hash is kept.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinToken {
    /// Public identifier, part of the token text; names the token in the registry and in
    /// each agent's record.
    pub id: String,
    /// Lower-case hex SHA-256 of the token's secret part.
    pub sha256: String,
    pub created_by: String,
    pub created_ms: u64,
    /// No enrolment is accepted at or after this time (Unix milliseconds).
    pub expires_ms: u64,
    /// How many agents may enrol with it; 0 means no limit (until it expires).
    pub max_uses: u32,
    /// How many agents enrolled with it so far.
    pub uses: u32,
}

/// An enrolled agent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentRecord {
    /// Stable identity, the common name of its client certificates.
    pub id: String,
    /// Human-readable name (host name by default).
    pub name: String,
    /// The labels it enrolled with (its sessions report the current ones).
    pub labels: BTreeMap<String, String>,
    pub enrolled_ms: u64,
    /// The join token it enrolled with.
    pub join_token: String,
    /// When its newest client certificate expires (Unix milliseconds).
    pub cert_not_after_ms: u64,
    /// When it was revoked; a revoked agent is refused by every manager.
    pub revoked_ms: Option<u64>,
}

/// Join tokens by id and agents by id.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentRegistry {
    #[serde(default)]
    pub join_tokens: BTreeMap<String, JoinToken>,
    #[serde(default)]
    pub agents: BTreeMap<String, AgentRecord>,
}

impl AgentRegistry {
    /// Adds or replaces a join token.
    pub fn put_join_token(&mut self, token: JoinToken) {
        self.join_tokens.insert(token.id.clone(), token);
    }

    pub fn revoke_join_token(&mut self, id: &str) -> Result<(), Reason> {
        self.join_tokens
            .remove(id)
            .map(|_| ())
            .ok_or_else(|| Reason::UnknownJoinToken(id.to_owned()))
    }

    /// Whether the join token `id` whose secret hashes to `sha256` would admit one more agent
    /// at `time_ms`. The same check [`Self::enroll`] makes, for a node to refuse early before
    /// it signs a certificate.
    pub fn check_join_token(&self, id: &str, sha256: &str, time_ms: u64) -> Result<(), Reason> {
        let token = self
            .join_tokens
            .get(id)
            .filter(|t| fleetgate_shared::constant_time::eq(t.sha256.as_bytes(), sha256.as_bytes()))
            .ok_or_else(|| Reason::UnknownJoinToken(id.to_owned()))?;
        if time_ms >= token.expires_ms {
            return Err(Reason::JoinTokenExpired(id.to_owned()));
        }
        if token.max_uses != 0 && token.uses >= token.max_uses {
            return Err(Reason::JoinTokenUsedUp(id.to_owned()));
        }
        Ok(())
    }

    /// Records a new agent enrolled with the join token named in `agent.join_token`, and
    /// counts the use.
    pub fn enroll(
        &mut self,
        sha256: &str,
        time_ms: u64,
        agent: &AgentRecord,
    ) -> Result<(), Reason> {
        self.check_join_token(&agent.join_token, sha256, time_ms)?;
        if self.agents.contains_key(&agent.id) {
            return Err(Reason::AgentExists(agent.id.clone()));
        }
        if let Some(token) = self.join_tokens.get_mut(&agent.join_token) {
            token.uses += 1;
        }
        self.agents.insert(agent.id.clone(), agent.clone());
        Ok(())
    }

    /// Records a renewed certificate of a known, unrevoked agent.
    pub fn renew(&mut self, id: &str, cert_not_after_ms: u64) -> Result<(), Reason> {
        let agent = self.active_mut(id)?;
        agent.cert_not_after_ms = agent.cert_not_after_ms.max(cert_not_after_ms);
        Ok(())
    }

    /// Revokes an agent: from now on every manager refuses it.
    pub fn revoke(&mut self, id: &str, time_ms: u64) -> Result<(), Reason> {
        let agent = self.active_mut(id)?;
        agent.revoked_ms = Some(time_ms);
        Ok(())
    }

    /// The agent `id` if it is enrolled and not revoked.
    pub fn active(&self, id: &str) -> Result<&AgentRecord, Reason> {
        let agent = self
            .agents
            .get(id)
            .ok_or_else(|| Reason::UnknownAgent(id.to_owned()))?;
        if agent.revoked_ms.is_some() {
            return Err(Reason::AgentRevoked(id.to_owned()));
        }
        Ok(agent)
    }

    fn active_mut(&mut self, id: &str) -> Result<&mut AgentRecord, Reason> {
        self.active(id)?;
        self.agents
            .get_mut(id)
            .ok_or_else(|| Reason::UnknownAgent(id.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn token(max_uses: u32) -> JoinToken {
        JoinToken {
            id: "jt1".to_owned(),
            sha256: "ab".repeat(32),
            created_by: "admin".to_owned(),
            created_ms: 1_000,
            expires_ms: 10_000,
            max_uses,
            uses: 0,
        }
    }

    fn agent(id: &str) -> AgentRecord {
        AgentRecord {
            id: id.to_owned(),
            name: format!("host-{id}"),
            labels: BTreeMap::from([("cloud".to_owned(), "aws".to_owned())]),
            enrolled_ms: 2_000,
            join_token: "jt1".to_owned(),
            cert_not_after_ms: 50_000,
            revoked_ms: None,
        }
    }

    #[test]
    fn a_join_token_admits_agents_until_it_is_used_up_or_expires() {
        let mut registry = AgentRegistry::default();
        registry.put_join_token(token(2));
        let secret = "ab".repeat(32);
        registry.enroll(&secret, 2_000, &agent("a1")).unwrap();
        assert_eq!(
            registry.enroll(&secret, 2_000, &agent("a1")),
            Err(Reason::AgentExists("a1".to_owned()))
        );
        registry.enroll(&secret, 9_999, &agent("a2")).unwrap();
        assert_eq!(
            registry.enroll(&secret, 3_000, &agent("a3")),
            Err(Reason::JoinTokenUsedUp("jt1".to_owned()))
        );
        registry.put_join_token(token(0));
        assert_eq!(
            registry.enroll(&secret, 10_000, &agent("a3")),
            Err(Reason::JoinTokenExpired("jt1".to_owned()))
        );
        assert_eq!(
            registry.enroll(&"cd".repeat(32), 3_000, &agent("a3")),
            Err(Reason::UnknownJoinToken("jt1".to_owned()))
        );
        registry.revoke_join_token("jt1").unwrap();
        assert_eq!(
            registry.enroll(&secret, 3_000, &agent("a3")),
            Err(Reason::UnknownJoinToken("jt1".to_owned()))
        );
    }

    #[test]
    fn a_revoked_agent_cannot_renew_and_stays_revoked() {
        let mut registry = AgentRegistry::default();
        registry.put_join_token(token(0));
        registry
            .enroll(&"ab".repeat(32), 2_000, &agent("a1"))
            .unwrap();
        registry.renew("a1", 90_000).unwrap();
        assert_eq!(registry.active("a1").unwrap().cert_not_after_ms, 90_000);
        registry.revoke("a1", 5_000).unwrap();
        assert_eq!(
            registry.renew("a1", 99_000),
            Err(Reason::AgentRevoked("a1".to_owned()))
        );
        assert_eq!(
            registry.active("a1"),
            Err(Reason::AgentRevoked("a1".to_owned()))
        );
        assert_eq!(
            registry.revoke("nobody", 1),
            Err(Reason::UnknownAgent("nobody".to_owned()))
        );
    }
}
