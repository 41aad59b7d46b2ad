//! Password hashes for basic-auth consumers: PBKDF2-HMAC-SHA256, salted, slow on purpose.
//!
//! Format: `pbkdf2-sha256$<iterations>$<salt hex>$<derived key hex>`. A leaked snapshot then
//! costs an attacker `iterations` HMACs per guess instead of giving passwords away.

use std::num::NonZeroU32;

use aws_lc_rs::pbkdf2;

/// Iterations for new hashes: OWASP's 2023 guidance for PBKDF2-HMAC-SHA256 is 600,000; a
/// gateway verifies on every request, so verified results are cached by the agent per
/// credential rather than lowering this.
pub const DEFAULT_ITERATIONS: u32 = 600_000;

const SCHEME: &str = "pbkdf2-sha256";
const KEY_LEN: usize = 32;

/// Hashes `password` with `salt` (at least 8 bytes) and `iterations`.
pub fn hash(password: &str, salt: &[u8], iterations: NonZeroU32) -> String {
    let mut key = [0u8; KEY_LEN];
    pbkdf2::derive(
        pbkdf2::PBKDF2_HMAC_SHA256,
        iterations,
        salt,
        password.as_bytes(),
        &mut key,
    );
    format!(
        "{SCHEME}${iterations}${}${}",
        hex::encode(salt),
        hex::encode(key)
    )
}

/// Hashes `password` with a fresh random 16-byte salt from the system's CSPRNG.
pub fn hash_new(
    password: &str,
    iterations: NonZeroU32,
) -> Result<String, aws_lc_rs::error::Unspecified> {
    let mut salt = [0u8; 16];
    aws_lc_rs::rand::fill(&mut salt)?;
    Ok(hash(password, &salt, iterations))
}

/// Whether `password` matches `encoded`, compared in constant time. A malformed `encoded`
/// never matches.
pub fn verify(encoded: &str, password: &str) -> bool {
    let mut parts = encoded.split('$');
    let (Some(SCHEME), Some(iterations), Some(salt), Some(key), None) = (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) else {
        return false;
    };
    let (Ok(iterations), Ok(salt), Ok(key)) = (
        iterations.parse::<NonZeroU32>(),
        hex::decode(salt),
        hex::decode(key),
    ) else {
        return false;
    };
    pbkdf2::verify(
        pbkdf2::PBKDF2_HMAC_SHA256,
        iterations,
        &salt,
        password.as_bytes(),
        &key,
    )
    .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hash_verifies_its_password_and_nothing_else() {
        let iterations = NonZeroU32::new(10_000).unwrap();
        let encoded = hash("correct horse", b"saltsalt", iterations);
        assert!(encoded.starts_with("pbkdf2-sha256$10000$73616c7473616c74$"));
        assert!(verify(&encoded, "correct horse"));
        assert!(!verify(&encoded, "correct horsf"));
        assert!(!verify("pbkdf2-sha256$10000$zz$00", "correct horse"));
        assert!(!verify("plain", "plain"));
    }
}
