use serde::{Deserialize, Serialize};

/// A TLS certificate chain and its private key, both PEM.
///
/// The names and expiry are derived from the leaf certificate when the resource is validated
/// (see [`crate::validate::certificate_info`]); they are not written by operators.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertificateSpec {
    /// The leaf certificate first, then intermediates.
    pub cert_pem: String,
    /// The private key matching the leaf (PKCS#8, PKCS#1 or SEC1).
    pub key_pem: String,
}

impl std::fmt::Debug for CertificateSpec {
    // The key never reaches logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertificateSpec")
            .field("cert_pem", &format_args!("<{} bytes>", self.cert_pem.len()))
            .field("key_pem", &"<redacted>")
            .finish()
    }
}
