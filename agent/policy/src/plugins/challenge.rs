//! Signed challenge cookies, shared by bot-detect and cc-protection.
//!
//! A cookie value is `expiry.signature`: the Unix second it stops being valid, and the hex
//! HMAC-SHA256 of `policy \n subject \n expiry` under a secret this agent generated. The subject
//! binds the cookie to what the policy counts (a client IP, a key), so a cookie cannot be
//! passed to another client; the policy name keeps one policy's cookie from satisfying another.

use aws_lc_rs::hmac;

/// Signs and checks challenge cookies with one random per-agent secret.
#[derive(Debug)]
pub struct CookieSigner {
    secret: hmac::Key,
}

impl CookieSigner {
    /// A signer with a fresh secret from the system's CSPRNG.
    pub fn generate() -> Result<Self, String> {
        let rng = aws_lc_rs::rand::SystemRandom::new();
        let secret = hmac::Key::generate(hmac::HMAC_SHA256, &rng).map_err(|_| {
            "the system random generator failed to make the challenge secret".to_owned()
        })?;
        Ok(Self { secret })
    }

    fn message(policy: &str, subject: &str, expiry: u64) -> String {
        format!("{policy}\n{subject}\n{expiry}")
    }

    /// The cookie value for `subject` under `policy`, valid until `expiry` (Unix seconds). Only
    /// `[0-9a-f.]`: safe in a header, a script string and a page.
    pub fn token(&self, policy: &str, subject: &str, expiry: u64) -> String {
        let tag = hmac::sign(
            &self.secret,
            Self::message(policy, subject, expiry).as_bytes(),
        );
        format!("{expiry}.{}", hex::encode(tag.as_ref()))
    }

    /// Whether `cookie` is a token of ours for this policy and subject, unexpired at `now`.
    /// The signature is compared in constant time.
    pub fn verify(&self, policy: &str, subject: &str, cookie: &str, now: u64) -> bool {
        let Some((expiry, signature)) = cookie.split_once('.') else {
            return false;
        };
        let (Ok(expiry), Ok(signature)) = (expiry.parse::<u64>(), hex::decode(signature)) else {
            return false;
        };
        expiry > now
            && hmac::verify(
                &self.secret,
                Self::message(policy, subject, expiry).as_bytes(),
                &signature,
            )
            .is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_verifies_only_for_its_policy_subject_and_lifetime() {
        let signer = CookieSigner::generate().unwrap();
        let token = signer.token("p", "192.0.2.1", 100);
        assert!(signer.verify("p", "192.0.2.1", &token, 99));
        assert!(!signer.verify("p", "192.0.2.1", &token, 100), "expired");
        assert!(
            !signer.verify("p", "192.0.2.2", &token, 99),
            "another subject"
        );
        assert!(
            !signer.verify("q", "192.0.2.1", &token, 99),
            "another policy"
        );
        assert!(
            !signer.verify("p", "192.0.2.1", &token.replace("100.", "999."), 99),
            "tampered expiry"
        );
        assert!(
            !CookieSigner::generate()
                .unwrap()
                .verify("p", "192.0.2.1", &token, 99),
            "another agent"
        );
        assert!(!signer.verify("p", "192.0.2.1", "garbage", 0));
    }
}
