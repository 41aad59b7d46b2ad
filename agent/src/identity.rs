//! The agent's identity towards the managers: its key, its client certificate, and the CA it
//! trusts managers by, kept in `DATA_DIR/identity/`.
//!
//! The key is generated here and never leaves the machine: enrolment and renewal send a
//! certificate signing request. Before enrolment the agent trusts nothing but the CA
//! fingerprint in its join token ([`PinnedCa`]); afterwards it trusts the manager CA it received
//! and stored.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, anyhow};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use serde::{Deserialize, Serialize};

/// What `identity/agent.json` records besides the PEM files.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct IdentityMeta {
    agent_id: String,
    not_after_ms: u64,
    /// When the certificate was issued (the agent's clock), for renewal at half its life.
    issued_ms: u64,
}

/// An enrolled agent's credentials.
#[derive(Clone)]
pub struct Identity {
    pub agent_id: String,
    pub cert_pem: String,
    pub key_pem: String,
    pub manager_ca_pem: String,
    pub not_after_ms: u64,
    pub issued_ms: u64,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("agent_id", &self.agent_id)
            .field("not_after_ms", &self.not_after_ms)
            .finish_non_exhaustive()
    }
}

fn dir(data_dir: &Path) -> PathBuf {
    data_dir.join("identity")
}

/// Writes through a temporary file, fsync and rename: a crash leaves the old file or the new.
fn write_atomic(path: &Path, data: &[u8], private: bool) -> anyhow::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    if private {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options
        .open(&tmp)
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    file.write_all(data)?;
    file.sync_all()?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

impl Identity {
    /// Loads the identity from `data_dir`; `Ok(None)` when the agent has not enrolled yet.
    pub fn load(data_dir: &Path) -> anyhow::Result<Option<Self>> {
        let dir = dir(data_dir);
        let meta_path = dir.join("agent.json");
        let meta = match std::fs::read(&meta_path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => {
                return Err(e).with_context(|| format!("cannot read {}", meta_path.display()));
            }
        };
        let meta: IdentityMeta = serde_json::from_slice(&meta)
            .with_context(|| format!("{} is corrupt", meta_path.display()))?;
        let read = |name: &str| {
            let path = dir.join(name);
            std::fs::read_to_string(&path)
                .with_context(|| format!("cannot read {}", path.display()))
        };
        Ok(Some(Self {
            agent_id: meta.agent_id,
            cert_pem: read("agent.pem")?,
            key_pem: read("agent.key")?,
            manager_ca_pem: read("manager-ca.pem")?,
            not_after_ms: meta.not_after_ms,
            issued_ms: meta.issued_ms,
        }))
    }

    /// Stores the identity; `agent.json` is written last, so a crash midway leaves the previous
    /// identity's metadata pointing at files that are either all old or all new... except for a
    /// renewal interrupted between the key and the certificate, which the next renewal repairs:
    /// the certificate is checked against the key when a connection is configured.
    pub fn save(&self, data_dir: &Path) -> anyhow::Result<()> {
        let dir = dir(data_dir);
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        write_atomic(&dir.join("agent.key"), self.key_pem.as_bytes(), true)?;
        write_atomic(&dir.join("agent.pem"), self.cert_pem.as_bytes(), false)?;
        write_atomic(
            &dir.join("manager-ca.pem"),
            self.manager_ca_pem.as_bytes(),
            false,
        )?;
        let meta = IdentityMeta {
            agent_id: self.agent_id.clone(),
            not_after_ms: self.not_after_ms,
            issued_ms: self.issued_ms,
        };
        write_atomic(
            &dir.join("agent.json"),
            &serde_json::to_vec_pretty(&meta)?,
            false,
        )
    }

    /// When to renew: at half of the certificate's life.
    pub fn renew_at_ms(&self) -> u64 {
        self.issued_ms + self.not_after_ms.saturating_sub(self.issued_ms) / 2
    }

    /// A TLS client config that presents this identity and trusts only the manager CA.
    pub fn client_config(&self) -> anyhow::Result<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        for cert in certs(&self.manager_ca_pem)? {
            roots
                .add(cert)
                .context("the stored manager CA is not a usable certificate")?;
        }
        let key = PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes())
            .context("the stored agent key does not parse")?;
        let mut config = rustls::ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_root_certificates(roots)
            .with_client_auth_cert(certs(&self.cert_pem)?, key)
            .context("the stored agent certificate does not match its key")?;
        config.alpn_protocols = vec![fleetgate_proto::SYNC_ALPN.to_vec()];
        Ok(config)
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

fn certs(pem: &str) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .context("PEM certificates do not parse")?;
    if certs.is_empty() {
        return Err(anyhow!("no certificate in the PEM text"));
    }
    Ok(certs)
}

/// A fresh key and a certificate signing request for it: `(key_pem, csr_der)`.
pub fn new_key_and_csr() -> anyhow::Result<(String, Vec<u8>)> {
    let key = rcgen::KeyPair::generate().context("cannot generate a key")?;
    let params = rcgen::CertificateParams::new(Vec::<String>::new())?;
    let csr = params
        .serialize_request(&key)
        .context("cannot build a certificate signing request")?;
    Ok((key.serialize_pem(), csr.der().to_vec()))
}

/// A TLS client config for enrolment: no client certificate, and the server is trusted only if
/// its chain includes a CA certificate with the join token's fingerprint that signed it.
pub fn enrolment_config(ca_fingerprint: &str) -> anyhow::Result<rustls::ClientConfig> {
    let verifier = Arc::new(PinnedCa {
        fingerprint: ca_fingerprint.to_ascii_lowercase(),
        provider: provider(),
    });
    let mut config = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    config.alpn_protocols = vec![fleetgate_proto::SYNC_ALPN.to_vec()];
    Ok(config)
}

/// Verifies a manager by the CA fingerprint a join token pins: the manager sends its CA in its
/// chain; the CA is accepted only if its SHA-256 is the pinned one, and the leaf is then
/// verified against it as against any root (signature, validity, server name).
#[derive(Debug)]
struct PinnedCa {
    fingerprint: String,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PinnedCa {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let ca = intermediates
            .iter()
            .find(|cert| fleetgate_proto::join_token::fingerprint(cert) == self.fingerprint)
            .ok_or_else(|| {
                rustls::Error::General(
                    "the manager's CA is not the one the join token names (fingerprint mismatch)"
                        .to_owned(),
                )
            })?;
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(ca.clone().into_owned())
            .map_err(|e| rustls::Error::General(format!("the pinned CA is not usable: {e}")))?;
        let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            self.provider.clone(),
        )
        .build()
        .map_err(|e| rustls::Error::General(e.to_string()))?;
        verifier.verify_server_cert(end_entity, &[], server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn an_identity_survives_a_save_and_load_and_its_key_stays_private() {
        let dir = tempfile::tempdir().unwrap();
        assert!(Identity::load(dir.path()).unwrap().is_none());
        let (key_pem, _csr) = new_key_and_csr().unwrap();
        let identity = Identity {
            agent_id: "ag-1".to_owned(),
            cert_pem: "cert".to_owned(),
            key_pem,
            manager_ca_pem: "ca".to_owned(),
            not_after_ms: 3_000,
            issued_ms: 1_000,
        };
        identity.save(dir.path()).unwrap();
        let loaded = Identity::load(dir.path()).unwrap().unwrap();
        assert_eq!(loaded.agent_id, "ag-1");
        assert_eq!(loaded.key_pem, identity.key_pem);
        assert_eq!(loaded.renew_at_ms(), 2_000);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("identity/agent.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
