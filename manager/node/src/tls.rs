//! The cluster CA and node certificates for manager-to-manager mutual TLS.
//!
//! `init` creates the CA; every manager keeps the CA key so that any of them can issue a
//! certificate to a joining node. Every node certificate names [`NODE_SERVER_NAME`]: a manager
//! proves membership by holding a certificate the cluster CA signed, not by its address, which
//! lets nodes be reached through any address (NAT, loopback in tests).

use std::fs;
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde::{Deserialize, Serialize};

use crate::Error;
use crate::settings::{DataDir, write_file};

/// The DNS name in every node certificate, and the name clients verify.
pub const NODE_SERVER_NAME: &str = fleetgate_proto::MANAGER_SERVER_NAME;

/// The CA's common name; the issuer DN of every node certificate.
const CA_COMMON_NAME: &str = "Fleetgate cluster CA";
/// The agent CA's common name; the issuer DN of every agent certificate.
///
/// Agents get their client certificates from a CA of their own, not from the cluster CA: the
/// Raft port admits any certificate of the cluster CA, and an agent must never be able to
/// speak Raft. The sync endpoint admits agent certificates only.
const AGENT_CA_COMMON_NAME: &str = "Fleetgate agent CA";

/// A node's TLS material, PEM-encoded: what `join` receives and what a node loads at start.
#[derive(Clone, Serialize, Deserialize)]
pub struct NodeTls {
    pub ca_cert: String,
    pub ca_key: String,
    pub node_cert: String,
    pub node_key: String,
    /// The CA that signs agent client certificates (see [`AGENT_CA_COMMON_NAME`]).
    pub agent_ca_cert: String,
    pub agent_ca_key: String,
}

impl std::fmt::Debug for NodeTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeTls").finish_non_exhaustive()
    }
}

fn ca_params(common_name: &str) -> Result<CertificateParams, Error> {
    let mut params = CertificateParams::new(Vec::<String>::new()).map_err(Error::tls)?;
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    Ok(params)
}

/// Creates a new cluster CA. Returns `(cert_pem, key_pem)`.
pub fn create_ca() -> Result<(String, String), Error> {
    create_ca_named(CA_COMMON_NAME)
}

fn create_ca_named(common_name: &str) -> Result<(String, String), Error> {
    let key = KeyPair::generate().map_err(Error::tls)?;
    let cert = ca_params(common_name)?
        .self_signed(&key)
        .map_err(Error::tls)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// Issues a node certificate (client and server auth) signed by the CA. Returns
/// `(cert_pem, key_pem)`.
///
/// The certificate names [`NODE_SERVER_NAME`] and `hosts` (the hosts of the node's addresses, so
/// that operators' tools can verify the admin API by address too).
pub fn issue_node_cert(
    ca_key_pem: &str,
    node_id: u64,
    hosts: &[String],
) -> Result<(String, String), Error> {
    let ca_key = KeyPair::from_pem(ca_key_pem).map_err(Error::tls)?;
    // The issuer is rebuilt from the same parameters the CA was created with: its DN and key
    // are what a verifier checks, and they are the same.
    let issuer = Issuer::new(ca_params(CA_COMMON_NAME)?, ca_key);
    let key = KeyPair::generate().map_err(Error::tls)?;
    let mut names = vec![NODE_SERVER_NAME.to_owned()];
    for host in hosts {
        if !host.is_empty() && !names.contains(host) {
            names.push(host.clone());
        }
    }
    let mut params = CertificateParams::new(names).map_err(Error::tls)?;
    params
        .distinguished_name
        .push(DnType::CommonName, format!("fleetgate-manager-{node_id}"));
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let cert = params.signed_by(&key, &issuer).map_err(Error::tls)?;
    Ok((cert.pem(), key.serialize_pem()))
}

impl NodeTls {
    /// A new CA and a certificate for the first node.
    pub fn bootstrap(node_id: u64, hosts: &[String]) -> Result<Self, Error> {
        let (ca_cert, ca_key) = create_ca()?;
        let (agent_ca_cert, agent_ca_key) = create_ca_named(AGENT_CA_COMMON_NAME)?;
        let (node_cert, node_key) = issue_node_cert(&ca_key, node_id, hosts)?;
        Ok(Self {
            ca_cert,
            ca_key,
            node_cert,
            node_key,
            agent_ca_cert,
            agent_ca_key,
        })
    }

    /// Material for another node of the same cluster.
    pub fn for_node(&self, node_id: u64, hosts: &[String]) -> Result<Self, Error> {
        let (node_cert, node_key) = issue_node_cert(&self.ca_key, node_id, hosts)?;
        Ok(Self {
            ca_cert: self.ca_cert.clone(),
            ca_key: self.ca_key.clone(),
            node_cert,
            node_key,
            agent_ca_cert: self.agent_ca_cert.clone(),
            agent_ca_key: self.agent_ca_key.clone(),
        })
    }

    pub fn save(&self, dir: &DataDir) -> Result<(), Error> {
        let tls = dir.tls();
        fs::create_dir_all(&tls).map_err(|e| Error::io(&tls, e))?;
        write_file(&tls.join("ca.pem"), self.ca_cert.as_bytes(), false)?;
        write_file(&tls.join("ca.key"), self.ca_key.as_bytes(), true)?;
        write_file(&tls.join("node.pem"), self.node_cert.as_bytes(), false)?;
        write_file(&tls.join("node.key"), self.node_key.as_bytes(), true)?;
        write_file(
            &tls.join("agent-ca.pem"),
            self.agent_ca_cert.as_bytes(),
            false,
        )?;
        write_file(
            &tls.join("agent-ca.key"),
            self.agent_ca_key.as_bytes(),
            true,
        )
    }

    pub fn load(dir: &DataDir) -> Result<Self, Error> {
        let tls = dir.tls();
        let read = |name: &str| {
            let path = tls.join(name);
            fs::read_to_string(&path).map_err(|e| Error::io(&path, e))
        };
        Ok(Self {
            ca_cert: read("ca.pem")?,
            ca_key: read("ca.key")?,
            node_cert: read("node.pem")?,
            node_key: read("node.key")?,
            agent_ca_cert: read("agent-ca.pem")?,
            agent_ca_key: read("agent-ca.key")?,
        })
    }
}

/// The host part of a `host:port` address (`[::1]:80` → `::1`).
pub fn host_of(addr: &str) -> String {
    let host = addr.rsplit_once(':').map_or(addr, |(host, _)| host);
    host.trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned()
}

/// The hosts of a node's addresses, for its certificate.
pub fn hosts_of(node: &fleetgate_manager_store::ManagerNode) -> Vec<String> {
    let mut hosts = vec![host_of(&node.api_addr), host_of(&node.raft_addr)];
    hosts.dedup();
    hosts
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

fn certs(pem: &str) -> Result<Vec<CertificateDer<'static>>, Error> {
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(Error::tls)
}

/// A TLS client config that trusts the cluster CA only (for the admin API of other managers).
/// Peers are verified by the name [`NODE_SERVER_NAME`], whatever address they were reached at.
pub fn client_config(ca_pem: &str) -> Result<Arc<rustls::ClientConfig>, Error> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in certs(ca_pem)? {
        roots.add(cert).map_err(Error::tls)?;
    }
    let mut config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(Error::tls)?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The admin API's TLS server config: this node's certificate (chain with the CA), no client
/// certificates (the API authenticates bearer tokens).
pub fn api_server_config(tls: &NodeTls) -> Result<Arc<rustls::ServerConfig>, Error> {
    let mut chain = certs(&tls.node_cert)?;
    chain.extend(certs(&tls.ca_cert)?);
    let key = PrivateKeyDer::from_pem_slice(tls.node_key.as_bytes()).map_err(Error::tls)?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(Error::tls)?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(Error::tls)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The lower-case hex SHA-256 of the first certificate in `pem` (DER): what a join token pins.
pub fn fingerprint(pem: &str) -> Result<String, Error> {
    let cert = certs(pem)?
        .into_iter()
        .next()
        .ok_or_else(|| Error::Tls("no certificate in the PEM text".to_owned()))?;
    Ok(fleetgate_proto::join_token::fingerprint(&cert))
}

/// A signed agent client certificate.
#[derive(Debug)]
pub struct AgentCert {
    pub pem: String,
    pub not_after_ms: u64,
}

/// Signs the key of the certificate signing request `csr_der` (whose signature proves the
/// agent holds the key) as a client certificate for `agent_id`, valid from a minute ago (clock
/// skew) for `ttl`. Everything but the key is ours: the subject, names and usages the request
/// asks for are ignored.
pub fn issue_agent_cert(
    tls: &NodeTls,
    csr_der: &[u8],
    agent_id: &str,
    ttl: std::time::Duration,
) -> Result<AgentCert, Error> {
    let csr = rcgen::CertificateSigningRequestParams::from_der(&csr_der.to_vec().into())
        .map_err(|e| Error::Tls(format!("the certificate signing request is not valid: {e}")))?;
    let ca_key = KeyPair::from_pem(&tls.agent_ca_key).map_err(Error::tls)?;
    let issuer = Issuer::new(ca_params(AGENT_CA_COMMON_NAME)?, ca_key);
    let mut params = CertificateParams::new(Vec::<String>::new()).map_err(Error::tls)?;
    params.distinguished_name.push(DnType::CommonName, agent_id);
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::minutes(1);
    let ttl = time::Duration::try_from(ttl).map_err(Error::tls)?;
    params.not_after = now + ttl;
    let cert = params
        .signed_by(&csr.public_key, &issuer)
        .map_err(Error::tls)?;
    let not_after_ms = u64::try_from((now + ttl).unix_timestamp_nanos() / 1_000_000).unwrap_or(0);
    Ok(AgentCert {
        pem: cert.pem(),
        not_after_ms,
    })
}

/// The agent id (the subject's common name) of a verified agent client certificate.
pub fn agent_id_of(cert: &CertificateDer<'_>) -> Option<String> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    let cn = parsed.subject().iter_common_name().next()?;
    cn.as_str().ok().map(str::to_owned)
}

/// The sync endpoint's TLS config (QUIC, so TLS 1.3 only): this node's certificate; client
/// certificates of the agent CA verified when presented, and allowed to be absent because an
/// agent enrolls before it has one. Which messages a connection without a certificate may send
/// is the sync endpoint's business (only `Enroll`).
pub fn sync_server_config(tls: &NodeTls) -> Result<rustls::ServerConfig, Error> {
    if tls.agent_ca_cert.trim().is_empty() {
        return Err(Error::Tls(
            "this node has no agent CA (tls/agent-ca.pem): it was initialized by an older version; \
             copy tls/agent-ca.pem and tls/agent-ca.key from a node that has them"
                .to_owned(),
        ));
    }
    let mut roots = rustls::RootCertStore::empty();
    for cert in certs(&tls.agent_ca_cert)? {
        roots.add(cert).map_err(Error::tls)?;
    }
    let verifier =
        rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
            .allow_unauthenticated()
            .build()
            .map_err(Error::tls)?;
    let mut chain = certs(&tls.node_cert)?;
    chain.extend(certs(&tls.ca_cert)?);
    let key = PrivateKeyDer::from_pem_slice(tls.node_key.as_bytes()).map_err(Error::tls)?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(Error::tls)?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(Error::tls)?;
    config.alpn_protocols = vec![fleetgate_proto::SYNC_ALPN.to_vec()];
    Ok(config)
}
