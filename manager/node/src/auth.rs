//! API tokens: bearer tokens with a role, stored as SHA-256 hashes.
//!
//! Tokens are random 256-bit values, so a plain SHA-256 is enough to make a leaked store
//! useless (no dictionary to try); a slow password hash would only slow every request down.
//!
//! Where they live: in the replicated state machine (`Command::PutToken` / `RevokeToken` of
//! `fleetgate-manager-store`), outside the config content: every node accepts the same tokens,
//! creating or revoking one is a Raft write like any other, and no token ever reaches an agent.

pub use fleetgate_manager_store::{ApiToken, TokenRole as Role};
use sha2::{Digest, Sha256};

use crate::Error;

/// The lower-case hex SHA-256 of a token.
pub fn hash_token(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// A new random token: `fgt_` and 64 hex digits (256 bits from the system generator).
pub fn generate_token() -> Result<String, Error> {
    let mut bytes = [0u8; 32];
    aws_lc_rs::rand::fill(&mut bytes).map_err(|_| Error::Random)?;
    Ok(format!("fgt_{}", hex::encode(bytes)))
}

/// A new token for `name` with `role`: the secret (shown once) and the record to replicate.
pub fn new_token(
    name: &str,
    role: Role,
    created_by: &str,
    created_ms: u64,
) -> Result<(String, ApiToken), Error> {
    let secret = generate_token()?;
    let record = ApiToken {
        name: name.to_owned(),
        role,
        sha256: hash_token(&secret),
        created_by: created_by.to_owned(),
        created_ms,
    };
    Ok((secret, record))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_is_random_and_only_its_hash_is_kept() {
        let (a, record) = new_token("root", Role::Admin, "init", 0).unwrap();
        let (b, _) = new_token("root", Role::Admin, "init", 0).unwrap();
        assert!(a.starts_with("fgt_") && a.len() == 68);
        assert_ne!(a, b);
        assert_eq!(record.sha256, hash_token(&a));
        assert!(
            !serde_json::to_string(&record)
                .unwrap_or_default()
                .contains(&a)
        );
        assert!(Role::Admin > Role::Editor && Role::Editor > Role::Viewer);
    }
}
