//! Certificate and key checks: the chain parses, the key parses and belongs to the leaf, and a
//! JWT verification key is of the family its algorithm needs.

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use x509_parser::oid_registry::{
    OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_NIST_EC_P384, OID_NIST_EC_P521,
    OID_PKCS1_RSAENCRYPTION, OID_PKCS1_RSASSAPSS, OID_SIG_ED448, OID_SIG_ED25519,
};
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};
use x509_parser::x509::SubjectPublicKeyInfo;

use crate::model::{CertificateSpec, JwtAlgorithm};

/// What a certificate resource is, derived from its leaf certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertificateInfo {
    /// DNS names and IP addresses from the subject alternative names, or the common name when
    /// there are none.
    pub names: Vec<String>,
    /// Unix seconds.
    pub not_before: i64,
    /// Unix seconds.
    pub not_after: i64,
}

/// Parses a certificate resource's chain and key and checks that they belong together.
/// Errors are `(field path, message)` pairs; every problem found is returned.
pub fn certificate_info(spec: &CertificateSpec) -> Result<CertificateInfo, Vec<(String, String)>> {
    let mut errors = Vec::new();
    let chain: Vec<CertificateDer<'static>> =
        match CertificateDer::pem_slice_iter(spec.cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
        {
            Ok(chain) if chain.is_empty() => {
                errors.push((
                    "spec.cert_pem".into(),
                    "no PEM `CERTIFICATE` block found".into(),
                ));
                Vec::new()
            }
            Ok(chain) => chain,
            Err(e) => {
                errors.push((
                    "spec.cert_pem".into(),
                    format!("not a PEM certificate chain: {e:?}"),
                ));
                Vec::new()
            }
        };
    let key = match PrivateKeyDer::from_pem_slice(spec.key_pem.as_bytes()) {
        Ok(key) => Some(key),
        Err(e) => {
            errors.push((
                "spec.key_pem".into(),
                format!("no usable PEM private key (PKCS#8, PKCS#1 or SEC1): {e:?}"),
            ));
            None
        }
    };
    let mut info = None;
    for (i, der) in chain.iter().enumerate() {
        match X509Certificate::from_der(der.as_ref()) {
            Ok((_, cert)) if i == 0 => info = Some(describe(&cert)),
            Ok(_) => {}
            Err(e) => errors.push((
                format!("spec.cert_pem (certificate {})", i + 1),
                format!("not a valid X.509 certificate: {e}"),
            )),
        }
    }
    if let (Some(leaf), Some(key)) = (chain.first(), key) {
        let provider = rustls::crypto::aws_lc_rs::default_provider();
        match provider.key_provider.load_private_key(key) {
            Err(e) => errors.push((
                "spec.key_pem".into(),
                format!("unsupported private key: {e}"),
            )),
            Ok(signing_key) => {
                let leaf_spki = X509Certificate::from_der(leaf.as_ref())
                    .ok()
                    .map(|(_, c)| c.public_key().raw.to_vec());
                match (signing_key.public_key(), leaf_spki) {
                    (Some(key_spki), Some(leaf_spki)) if key_spki.as_ref() != leaf_spki.as_slice() => errors.push((
                        "spec.key_pem".into(),
                        "the private key does not match the first (leaf) certificate in cert_pem".into(),
                    )),
                    _ => {}
                }
            }
        }
    }
    match info {
        Some(info) if errors.is_empty() => Ok(info),
        _ => Err(errors),
    }
}

fn describe(cert: &X509Certificate<'_>) -> CertificateInfo {
    let mut names = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            match name {
                GeneralName::DNSName(dns) => names.push(dns.to_ascii_lowercase()),
                GeneralName::IPAddress(bytes) => {
                    let ip = match bytes.len() {
                        4 => <[u8; 4]>::try_from(*bytes)
                            .ok()
                            .map(|b| std::net::IpAddr::from(b).to_string()),
                        16 => <[u8; 16]>::try_from(*bytes)
                            .ok()
                            .map(|b| std::net::IpAddr::from(b).to_string()),
                        _ => None,
                    };
                    names.extend(ip);
                }
                _ => {}
            }
        }
    }
    if names.is_empty() {
        names.extend(
            cert.subject()
                .iter_common_name()
                .filter_map(|cn| cn.as_str().ok())
                .map(str::to_ascii_lowercase),
        );
    }
    CertificateInfo {
        names,
        not_before: cert.validity().not_before.timestamp(),
        not_after: cert.validity().not_after.timestamp(),
    }
}

/// Whether `pem` holds at least one parseable X.509 certificate (for CA bundles).
pub fn ca_bundle(pem: &str) -> Result<(), String> {
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("not a PEM certificate bundle: {e:?}"))?;
    if certs.is_empty() {
        return Err("no PEM `CERTIFICATE` block found".into());
    }
    for der in certs {
        X509Certificate::from_der(der.as_ref())
            .map_err(|e| format!("not a valid X.509 certificate: {e}"))?;
    }
    Ok(())
}

/// Whether `pem` is a SubjectPublicKeyInfo public key (`-----BEGIN PUBLIC KEY-----`) of the
/// family `algorithm` verifies with: RSA for RS* and PS*, EC P-256 for ES256, EC P-384 for
/// ES384, Ed25519 for EdDSA. A key of the wrong family would only fail when the first token
/// arrives, on every agent, so it is refused here.
pub fn jwt_public_key(algorithm: JwtAlgorithm, pem: &str) -> Result<(), String> {
    let der = rustls_pki_types::SubjectPublicKeyInfoDer::from_pem_slice(pem.as_bytes())
        .map_err(|e| format!("not a PEM `PUBLIC KEY`: {e:?}"))?;
    let (_, spki) = SubjectPublicKeyInfo::from_der(der.as_ref())
        .map_err(|e| format!("not a valid public key: {e}"))?;
    // Checks the key material where the parser knows its structure (an RSA modulus and
    // exponent); other families are only identified.
    spki.parsed()
        .map_err(|e| format!("not a valid public key: {e}"))?;
    let found = KeyFamily::of(&spki);
    let wanted = match algorithm {
        // Shared secrets have no public key; `jwt_checks` refuses a PEM for them.
        JwtAlgorithm::HS256 | JwtAlgorithm::HS384 | JwtAlgorithm::HS512 => return Ok(()),
        JwtAlgorithm::RS256
        | JwtAlgorithm::RS384
        | JwtAlgorithm::RS512
        | JwtAlgorithm::PS256
        | JwtAlgorithm::PS384
        | JwtAlgorithm::PS512 => KeyFamily::Rsa,
        JwtAlgorithm::ES256 => KeyFamily::Ec(Curve::P256),
        JwtAlgorithm::ES384 => KeyFamily::Ec(Curve::P384),
        JwtAlgorithm::EdDSA => KeyFamily::Ed25519,
    };
    if found == wanted {
        return Ok(());
    }
    let name = format!("{algorithm:?}");
    // "a PS256", but "an RS256", "an ES256", "an EdDSA": by how the first letter is spoken.
    let article = if name.starts_with('P') { "a" } else { "an" };
    Err(format!(
        "{article} {name} key must be {}, found {}",
        wanted.describe("public key"),
        found.describe("key")
    ))
}

/// What kind of public key a SubjectPublicKeyInfo holds, as far as JWS algorithms care.
#[derive(Clone, Debug, PartialEq, Eq)]
enum KeyFamily {
    /// `rsaEncryption`: usable for RS* and PS*.
    Rsa,
    /// `id-RSASSA-PSS`: an RSA key restricted to PSS, which JWT libraries rarely accept.
    RsaPss,
    Ec(Curve),
    Ed25519,
    Ed448,
    /// Any other algorithm, by OID.
    Other(String),
}

/// The named curve of an EC public key.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Curve {
    P256,
    P384,
    P521,
    /// Another named curve (by OID), or none given.
    Other(String),
}

impl KeyFamily {
    fn of(spki: &SubjectPublicKeyInfo<'_>) -> Self {
        let oid = &spki.algorithm.algorithm;
        if *oid == OID_PKCS1_RSAENCRYPTION {
            KeyFamily::Rsa
        } else if *oid == OID_PKCS1_RSASSAPSS {
            KeyFamily::RsaPss
        } else if *oid == OID_KEY_TYPE_EC_PUBLIC_KEY {
            let curve = spki
                .algorithm
                .parameters
                .as_ref()
                .and_then(|p| p.as_oid().ok());
            KeyFamily::Ec(match curve {
                Some(c) if c == OID_EC_P256 => Curve::P256,
                Some(c) if c == OID_NIST_EC_P384 => Curve::P384,
                Some(c) if c == OID_NIST_EC_P521 => Curve::P521,
                Some(c) => Curve::Other(format!("curve {c}")),
                None => Curve::Other("no named curve".into()),
            })
        } else if *oid == OID_SIG_ED25519 {
            KeyFamily::Ed25519
        } else if *oid == OID_SIG_ED448 {
            KeyFamily::Ed448
        } else {
            KeyFamily::Other(oid.to_id_string())
        }
    }

    /// "an EC P-256 {noun}", or "a {noun} with algorithm OID 1.2.840.10040.4.1". Every named
    /// family starts with a vowel sound (RSA, EC, Ed), hence "an".
    fn describe(&self, noun: &str) -> String {
        let name = match self {
            KeyFamily::Rsa => "RSA".to_owned(),
            KeyFamily::RsaPss => "RSA-PSS-only".to_owned(),
            KeyFamily::Ec(Curve::P256) => "EC P-256".to_owned(),
            KeyFamily::Ec(Curve::P384) => "EC P-384".to_owned(),
            KeyFamily::Ec(Curve::P521) => "EC P-521".to_owned(),
            KeyFamily::Ec(Curve::Other(what)) => format!("EC ({what})"),
            KeyFamily::Ed25519 => "Ed25519".to_owned(),
            KeyFamily::Ed448 => "Ed448".to_owned(),
            KeyFamily::Other(oid) => return format!("a {noun} with algorithm OID {oid}"),
        };
        format!("an {name} {noun}")
    }
}
