//! Who may talk to the sync endpoint, seen from a raw QUIC client against a real manager
//! process: enrolment needs a valid join token; a session needs a certificate of the agent CA
//! (not of the cluster CA, which would also open the Raft port); the identity in Hello must be
//! the certificate's; the protocol version must match. And what an enrolled agent receives.

#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use common::{Api, json, single_node};
use fleetgate_proto::frame::{self, decompress_snapshot};
use fleetgate_proto::sync::v1 as wire;
use fleetgate_proto::{MANAGER_SERVER_NAME, PROTOCOL_VERSION, SYNC_ALPN};
use http::{Method, StatusCode};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

fn certs(pem: &str) -> Vec<CertificateDer<'static>> {
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<_, _>>()
        .unwrap()
}

/// A QUIC client trusting the cluster CA, presenting `identity` (cert PEM, key PEM) if given.
fn client(ca_pem: &str, identity: Option<(&str, &str)>) -> quinn::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    for cert in certs(ca_pem) {
        roots.add(cert).unwrap();
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots);
    let mut config = match identity {
        Some((cert, key)) => builder
            .with_client_auth_cert(
                certs(cert),
                PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap(),
            )
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![SYNC_ALPN.to_vec()];
    quinn::ClientConfig::new(Arc::new(
        quinn::crypto::rustls::QuicClientConfig::try_from(config).unwrap(),
    ))
}

async fn connect(
    addr: &str,
    config: quinn::ClientConfig,
) -> Result<quinn::Connection, quinn::ConnectionError> {
    let endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr: SocketAddr = addr.parse().unwrap();
    endpoint
        .connect_with(config, addr, MANAGER_SERVER_NAME)
        .unwrap()
        .await
}

/// Sends `body` on a new stream; returns the manager's first answer.
async fn ask(conn: &quinn::Connection, body: wire::agent_message::Body) -> wire::ManagerMessage {
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    frame::write_message(&mut send, &wire::AgentMessage { body: Some(body) })
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(20), frame::read_message(&mut recv))
        .await
        .expect("the manager answers")
        .unwrap()
}

fn goodbye(answer: &wire::ManagerMessage) -> String {
    match &answer.body {
        Some(wire::manager_message::Body::Goodbye(g)) => g.reason.clone(),
        other => panic!("expected a Goodbye, got {other:?}"),
    }
}

fn hello(agent_id: &str, version: u32) -> wire::agent_message::Body {
    wire::agent_message::Body::Hello(wire::Hello {
        agent_id: agent_id.to_owned(),
        name: "raw-client".to_owned(),
        protocol_version: version,
        ..Default::default()
    })
}

/// A new key and a CSR for it: `(key_pem, csr_der)`.
fn key_and_csr() -> (String, Vec<u8>) {
    let key = rcgen::KeyPair::generate().unwrap();
    let csr = rcgen::CertificateParams::new(Vec::<String>::new())
        .unwrap()
        .serialize_request(&key)
        .unwrap();
    (key.serialize_pem(), csr.der().to_vec())
}

fn enroll(token: &str, csr_der: Vec<u8>) -> wire::agent_message::Body {
    wire::agent_message::Body::Enroll(wire::Enroll {
        join_token: token.to_owned(),
        csr_der,
        name: "raw-client".to_owned(),
        labels: [("cloud".to_owned(), "test".to_owned())].into(),
        version: "test".to_owned(),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_enrolled_agents_with_agent_ca_certificates_get_sessions() {
    let root = tempfile::tempdir().unwrap();
    let (node, admin, _) = single_node(root.path(), &[]).await;
    let api = Api::of(&node);
    let ca = std::fs::read_to_string(node.dir.join("tls/ca.pem")).unwrap();
    let reply = api
        .call(
            Method::POST,
            &node.api,
            "/api/v1/apply",
            Some(&admin),
            None,
            "kind: Route\nname: r\nspec:\n  matches: [{ path: { prefix: / } }]\n  direct_response: { status: 200 }\n",
        )
        .await
        .unwrap();
    assert_eq!(reply.status, StatusCode::OK);
    let revision = json(&reply)["revision"].as_u64().unwrap();

    // Without a client certificate, a Hello is refused (only Enroll is allowed).
    let anonymous = connect(&node.sync, client(&ca, None)).await.unwrap();
    let reason = goodbye(&ask(&anonymous, hello("ag-x", PROTOCOL_VERSION)).await);
    assert!(reason.contains("agent certificate"), "{reason}");

    // A join token that does not exist, or with a wrong secret, is refused by name.
    let (_, csr) = key_and_csr();
    let bogus = format!(
        "fgj1.{}.{}.{}",
        "0".repeat(16),
        "1".repeat(64),
        "2".repeat(64)
    );
    let reason = goodbye(&ask(&anonymous, enroll(&bogus, csr.clone())).await);
    assert!(reason.contains("unknown"), "{reason}");
    let reason = goodbye(&ask(&anonymous, enroll("not a token", csr)).await);
    assert!(reason.contains("not a join token"), "{reason}");

    // A cluster-CA certificate (a manager's own) is not an agent certificate: the handshake
    // fails, so holding a node certificate never opens a sync session, and holding an agent
    // certificate never opens the Raft port (tested in cluster.rs for the other direction).
    let node_cert = std::fs::read_to_string(node.dir.join("tls/node.pem")).unwrap();
    let node_key = std::fs::read_to_string(node.dir.join("tls/node.key")).unwrap();
    let refused = match connect(&node.sync, client(&ca, Some((&node_cert, &node_key)))).await {
        Err(e) => e.to_string(),
        // TLS 1.3: the client may finish before the server rejects its certificate; the
        // refusal then arrives as the connection closing.
        Ok(conn) => match conn.open_bi().await {
            Err(e) => e.to_string(),
            Ok((mut send, _recv)) => {
                let _ = frame::write_message(
                    &mut send,
                    &wire::AgentMessage {
                        body: Some(hello("x", PROTOCOL_VERSION)),
                    },
                )
                .await;
                conn.closed().await.to_string()
            }
        },
    };
    assert!(
        refused.to_lowercase().contains("certificate") || refused.contains("issuer"),
        "{refused}"
    );

    // A real join token for one agent: enrolment signs our key (and only once).
    let reply = api
        .call(
            Method::POST,
            &node.api,
            "/api/v1/join-tokens",
            Some(&admin),
            None,
            r#"{"ttl_secs": 600, "max_uses": 1}"#,
        )
        .await
        .unwrap();
    assert_eq!(reply.status, StatusCode::OK);
    let token = json(&reply)["token"].as_str().unwrap().to_owned();
    let (key_pem, csr) = key_and_csr();
    let enrolled = match ask(&anonymous, enroll(&token, csr)).await.body {
        Some(wire::manager_message::Body::Enrolled(e)) => e,
        other => panic!("enrolment failed: {other:?}"),
    };
    assert!(enrolled.agent_id.starts_with("ag-"));
    assert_eq!(enrolled.manager_ca_pem.trim(), ca.trim());
    let (_, csr) = key_and_csr();
    let reason = goodbye(&ask(&anonymous, enroll(&token, csr)).await);
    assert!(reason.contains("used as many times"), "{reason}");

    // With the certificate: a Hello naming someone else, or another protocol version, is
    // refused; a proper Hello gets the config as a compressed snapshot on its own stream.
    let identity = Some((enrolled.certificate_pem.as_str(), key_pem.as_str()));
    let conn = connect(&node.sync, client(&ca, identity)).await.unwrap();
    let reason = goodbye(&ask(&conn, hello("ag-someone-else", PROTOCOL_VERSION)).await);
    assert!(reason.contains("certificate is agent"), "{reason}");
    let conn = connect(&node.sync, client(&ca, identity)).await.unwrap();
    let reason = goodbye(&ask(&conn, hello(&enrolled.agent_id, PROTOCOL_VERSION + 1)).await);
    assert!(reason.contains("protocol version"), "{reason}");
    let conn = connect(&node.sync, client(&ca, identity)).await.unwrap();
    let (mut send, _recv) = conn.open_bi().await.unwrap();
    frame::write_message(
        &mut send,
        &wire::AgentMessage {
            body: Some(hello(&enrolled.agent_id, PROTOCOL_VERSION)),
        },
    )
    .await
    .unwrap();
    let mut uni = tokio::time::timeout(Duration::from_secs(20), conn.accept_uni())
        .await
        .unwrap()
        .unwrap();
    let snapshot_frame: wire::SnapshotFrame = frame::read_message(&mut uni).await.unwrap();
    let snapshot = decompress_snapshot(&snapshot_frame).unwrap();
    assert_eq!(snapshot.revision, revision);
    assert_eq!(snapshot.resources.len(), 1);
    assert_eq!(snapshot.resources[0].name, "r");

    // Renewal on the authenticated connection: a new certificate for a new key, same id.
    let (_, csr) = key_and_csr();
    let renewed = match ask(
        &conn,
        wire::agent_message::Body::Renew(wire::Renew { csr_der: csr }),
    )
    .await
    .body
    {
        Some(wire::manager_message::Body::Enrolled(e)) => e,
        other => panic!("renewal failed: {other:?}"),
    };
    assert_eq!(renewed.agent_id, enrolled.agent_id);
    assert_ne!(renewed.certificate_pem, enrolled.certificate_pem);
}
