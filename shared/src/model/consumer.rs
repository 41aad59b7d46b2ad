use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::Rate;

/// An API caller, shared by every auth policy.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsumerSpec {
    #[serde(default)]
    pub credentials: ConsumerCredentials,
    /// Limit overrides for this consumer, by key-rate-limit policy name. They change live: an
    /// edit here never resets the counters of other keys.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub rate_limits: BTreeMap<String, Rate>,
    /// Headers added to requests authenticated as this consumer.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
}

/// Every credential a consumer can present.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsumerCredentials {
    /// API keys for key-auth.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub keys: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwt: Option<JwtCredential>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hmac: Vec<HmacCredential>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub basic: Option<BasicCredential>,
}

impl std::fmt::Debug for ConsumerCredentials {
    // Secrets never reach logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsumerCredentials")
            .field("keys", &self.keys.len())
            .field("jwt", &self.jwt)
            .field(
                "hmac",
                &self.hmac.iter().map(|h| &h.key_id).collect::<Vec<_>>(),
            )
            .field("basic", &self.basic.as_ref().map(|b| &b.username))
            .finish()
    }
}

/// How a JWT is mapped to this consumer: by the policy's `consumer_claim` value.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtCredential {
    pub subject: String,
}

/// An HMAC key pair: the id sent in requests and the shared secret.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HmacCredential {
    pub key_id: String,
    pub secret: String,
}

impl std::fmt::Debug for HmacCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HmacCredential")
            .field("key_id", &self.key_id)
            .finish_non_exhaustive()
    }
}

/// A basic-auth user: the password is stored only as a salted hash.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BasicCredential {
    pub username: String,
    /// `pbkdf2-sha256$<iterations>$<salt hex>$<derived key hex>`: a slow, salted hash, so a
    /// leaked snapshot does not give passwords away.
    pub password_hash: String,
}
