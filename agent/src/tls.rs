//! TLS termination: one rustls server config per (certificate, minimum version), chosen by SNI
//! from the current generation for every new connection. A certificate change is therefore
//! just another generation swap: listeners and established connections are untouched.

use std::collections::HashMap;
use std::sync::Arc;

use fleetgate_shared::model::{CertificateSpec, DomainSpec, TlsVersion};
use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use fleetgate_agent_route::hosts::HostMap;

/// Server configs by SNI host pattern.
#[derive(Debug, Clone, Default)]
pub struct TlsTable {
    by_host: HostMap<Arc<ServerConfig>>,
    /// Served to clients that send no SNI or an unknown name: the first domain (by name) that
    /// has a certificate, so that `curl https://127.0.0.1` still gets a handshake.
    fallback: Option<Arc<ServerConfig>>,
}

/// ALPN protocols offered, in preference order.
const ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

impl TlsTable {
    /// Builds configs for every domain with a certificate. `domains` must be validated (so
    /// every certificate reference resolves); an error names the domain and why this host's
    /// TLS stack refused the certificate.
    pub fn build(
        domains: &[(&str, &DomainSpec)],
        certificates: &HashMap<&str, &CertificateSpec>,
    ) -> Result<TlsTable, (String, String)> {
        let mut table = TlsTable::default();
        let mut built: HashMap<(&str, TlsVersion), Arc<ServerConfig>> = HashMap::new();
        let mut sorted: Vec<&(&str, &DomainSpec)> = domains.iter().collect();
        sorted.sort_by_key(|(name, _)| *name);
        for (domain, spec) in sorted {
            let Some(cert_name) = spec.certificate.as_deref() else {
                continue;
            };
            let Some(cert) = certificates.get(cert_name) else {
                return Err((
                    domain.to_string(),
                    format!("certificate/{cert_name} is missing"),
                ));
            };
            let config = match built.get(&(cert_name, spec.min_tls_version)) {
                Some(config) => config.clone(),
                None => {
                    let config = Arc::new(
                        server_config(cert, spec.min_tls_version)
                            .map_err(|e| (domain.to_string(), e))?,
                    );
                    built.insert((cert_name, spec.min_tls_version), config.clone());
                    config
                }
            };
            for host in &spec.hosts {
                table.by_host.insert(host, config.clone());
            }
            if table.fallback.is_none() {
                table.fallback = Some(config);
            }
        }
        Ok(table)
    }

    /// The config for a ClientHello's server name.
    pub fn config_for(&self, sni: Option<&str>) -> Option<Arc<ServerConfig>> {
        sni.and_then(|name| self.by_host.get(&name.to_ascii_lowercase()).cloned())
            .or_else(|| self.fallback.clone())
    }

    pub fn is_empty(&self) -> bool {
        self.fallback.is_none()
    }
}

fn server_config(cert: &CertificateSpec, min: TlsVersion) -> Result<ServerConfig, String> {
    let chain = CertificateDer::pem_slice_iter(cert.cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("certificate chain does not parse: {e:?}"))?;
    let key = PrivateKeyDer::from_pem_slice(cert.key_pem.as_bytes())
        .map_err(|e| format!("private key does not parse: {e:?}"))?;
    let versions: &[&rustls::SupportedProtocolVersion] = match min {
        TlsVersion::Tls12 => &[&rustls::version::TLS13, &rustls::version::TLS12],
        TlsVersion::Tls13 => &[&rustls::version::TLS13],
    };
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .map_err(|e| format!("TLS versions refused: {e}"))?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| format!("the TLS stack refused the certificate: {e}"))?;
    config.alpn_protocols = ALPN.iter().map(|p| p.to_vec()).collect();
    Ok(config)
}
