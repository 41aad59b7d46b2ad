//! Certificate checks: the chain parses, the key parses, and the key belongs to the leaf.

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

use crate::model::CertificateSpec;

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

/// Whether `pem` is a SubjectPublicKeyInfo public key (`-----BEGIN PUBLIC KEY-----`).
pub fn public_key(pem: &str) -> Result<(), String> {
    let der = rustls_pki_types::SubjectPublicKeyInfoDer::from_pem_slice(pem.as_bytes())
        .map_err(|e| format!("not a PEM `PUBLIC KEY`: {e:?}"))?;
    x509_parser::x509::SubjectPublicKeyInfo::from_der(der.as_ref())
        .map(|_| ())
        .map_err(|e| format!("not a valid public key: {e}"))
}
