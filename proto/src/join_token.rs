//! The text form of an agent join token: `fgj1.<id>.<secret>.<ca>`.
//!
//! - `id`: 16 hex digits naming the token in the registry (public: it appears in the fleet
//!   view as the token each agent enrolled with).
//! - `secret`: 64 hex digits (256 random bits); the managers keep only its SHA-256.
//! - `ca`: the lower-case hex SHA-256 of the cluster CA certificate (DER). The agent trusts a
//!   manager during enrolment only if it presents a chain ending in a CA with this fingerprint,
//!   so the token cannot be replayed to an impostor, and the agent needs nothing else to trust
//!   the cluster.
//!
//! Shared by the manager (which makes and checks tokens) and the agent (which presents one and
//! pins the CA), so it lives with the wire types.

use std::fmt;

/// The fingerprint a join token pins: the lower-case hex SHA-256 of a certificate's DER bytes.
/// The manager computes it over its CA when it makes a token; the agent over the CA a manager
/// presents, and over the CA it is given at enrolment.
pub fn fingerprint(cert_der: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(cert_der))
}

/// The version prefix; a new format would take a new one.
const PREFIX: &str = "fgj1";

/// A parsed join token.
#[derive(Clone, PartialEq, Eq)]
pub struct JoinToken {
    pub id: String,
    pub secret: String,
    pub ca_fingerprint: String,
}

impl fmt::Debug for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JoinToken")
            .field("id", &self.id)
            .field("secret", &"<redacted>")
            .field("ca_fingerprint", &self.ca_fingerprint)
            .finish()
    }
}

/// Why a join token's text is not one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "not a join token: {0} (expected fgj1.<16 hex>.<64 hex>.<64 hex>, as printed by `fleetgate token create --agent`)"
)]
pub struct BadJoinToken(&'static str);

fn is_hex(text: &str, len: usize) -> bool {
    text.len() == len && text.bytes().all(|b| b.is_ascii_hexdigit())
}

impl JoinToken {
    /// Parses the text form (surrounding whitespace ignored; hex accepted in either case and
    /// kept lower-case).
    pub fn parse(text: &str) -> Result<Self, BadJoinToken> {
        let mut parts = text.trim().split('.');
        if parts.next() != Some(PREFIX) {
            return Err(BadJoinToken("it does not start with `fgj1.`"));
        }
        let (Some(id), Some(secret), Some(ca), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(BadJoinToken("it does not have four dot-separated parts"));
        };
        if !is_hex(id, 16) {
            return Err(BadJoinToken("the id is not 16 hex digits"));
        }
        if !is_hex(secret, 64) {
            return Err(BadJoinToken("the secret is not 64 hex digits"));
        }
        if !is_hex(ca, 64) {
            return Err(BadJoinToken("the CA fingerprint is not 64 hex digits"));
        }
        Ok(Self {
            id: id.to_ascii_lowercase(),
            secret: secret.to_ascii_lowercase(),
            ca_fingerprint: ca.to_ascii_lowercase(),
        })
    }
}

impl fmt::Display for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{PREFIX}.{}.{}.{}",
            self.id, self.secret, self.ca_fingerprint
        )
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn the_text_form_round_trips_and_hides_the_secret_in_debug() {
        let token = JoinToken {
            id: "0123456789abcdef".to_owned(),
            secret: "ab".repeat(32),
            ca_fingerprint: "cd".repeat(32),
        };
        let text = token.to_string();
        assert_eq!(JoinToken::parse(&format!(" {text}\n")).unwrap(), token);
        assert_eq!(
            JoinToken::parse(&text.to_uppercase().replacen("FGJ1", "fgj1", 1)).unwrap(),
            token
        );
        assert!(!format!("{token:?}").contains(&token.secret));
    }

    #[test]
    fn malformed_tokens_say_what_is_wrong() {
        let good = format!(
            "fgj1.{}.{}.{}",
            "a".repeat(16),
            "b".repeat(64),
            "c".repeat(64)
        );
        assert!(JoinToken::parse(&good).is_ok());
        for (text, needle) in [
            ("fgt_abc", "does not start"),
            ("fgj1.aa.bb", "four"),
            (&good.replacen(&"a".repeat(16), "xyz", 1) as &str, "id"),
            (
                &format!(
                    "fgj1.{}.{}.{}",
                    "a".repeat(16),
                    "b".repeat(63),
                    "c".repeat(64)
                ),
                "secret",
            ),
            (&format!("{good}.extra"), "four"),
            (
                &format!(
                    "fgj1.{}.{}.{}",
                    "a".repeat(16),
                    "b".repeat(64),
                    "g".repeat(64)
                ),
                "fingerprint",
            ),
        ] {
            let error = JoinToken::parse(text).unwrap_err().to_string();
            assert!(error.contains(needle), "{text}: {error}");
        }
    }
}
