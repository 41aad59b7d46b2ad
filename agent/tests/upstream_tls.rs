//! TLS towards upstreams: a service with `tls` reaches an HTTPS backend, verified against the
//! service's CA; a wrong CA fails closed with 502; `insecure_skip_verify` connects anyway; and
//! `protocol: http2` negotiates h2 by ALPN.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use bytes::Bytes;
use fleetgate_agent::Gateway;
use fleetgate_agent::config::AccessLog;
use fleetgate_agent::generation::ConfigSource;
use fleetgate_agent::server::{ServerSettings, serve};
use fleetgate_shared::Snapshot;
use fleetgate_shared::bundle::Format;
use http_body_util::{BodyExt, Empty, Full};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};

/// An HTTPS backend that answers `hello over <version>`, with a fresh self-signed certificate
/// for `backend.test`. Returns its address and the certificate PEM.
async fn https_backend() -> (std::net::SocketAddr, String) {
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["backend.test".to_owned()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone()],
            rustls_pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        )
        .unwrap();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let service = service_fn(|req: http::Request<hyper::body::Incoming>| async move {
                    let body = format!("hello over {:?}", req.version());
                    Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(Bytes::from(
                        body,
                    ))))
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    (addr, cert.pem())
}

fn indent(pem: &str) -> String {
    pem.lines().map(|l| format!("        {l}\n")).collect()
}

/// Starts an in-process gateway serving `yaml` and returns its address.
async fn gateway(yaml: &str) -> std::net::SocketAddr {
    let resources = fleetgate_shared::parse_bundle(yaml, Format::Yaml, "").unwrap();
    let gateway = Gateway::new(AccessLog::Off, None);
    gateway
        .apply(&Snapshot::new(1, resources).unwrap(), ConfigSource::File)
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (_stop, stopped) = tokio::sync::watch::channel(false);
    let settings = ServerSettings {
        header_timeout: std::time::Duration::from_secs(5),
        max_header_bytes: 64 * 1024,
        drain_timeout: std::time::Duration::from_secs(1),
    };
    tokio::spawn(async move {
        let _stop = _stop;
        serve(listener, gateway, settings, false, stopped).await;
    });
    addr
}

async fn get(addr: std::net::SocketAddr) -> (u16, String) {
    let client: hyper_util::client::legacy::Client<_, Empty<Bytes>> =
        hyper_util::client::legacy::Client::builder(TokioExecutor::new()).build_http();
    let response = client
        .get(format!("http://{addr}/").parse().unwrap())
        .await
        .unwrap();
    let status = response.status().as_u16();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

fn config(backend: std::net::SocketAddr, tls: &str, protocol: &str) -> String {
    format!(
        "kind: Service\nname: secure\nspec:\n  endpoints: [{{ address: '{backend}' }}]\n  protocol: {protocol}\n  tls:\n{tls}\n---\n\
         kind: Route\nname: all\nspec:\n  forward: {{ backends: [{{ service: secure }}] }}\n"
    )
}

#[tokio::test]
async fn an_https_upstream_is_verified_against_the_service_ca() {
    let (backend, cert_pem) = https_backend().await;
    let tls = format!(
        "    server_name: backend.test\n    ca_pem: |\n{}",
        indent(&cert_pem)
    );
    let addr = gateway(&config(backend, &tls, "http1")).await;
    assert_eq!(get(addr).await, (200, "hello over HTTP/1.1".to_owned()));
}

#[tokio::test]
async fn http2_to_an_https_upstream_is_negotiated_by_alpn() {
    let (backend, cert_pem) = https_backend().await;
    let tls = format!(
        "    server_name: backend.test\n    ca_pem: |\n{}",
        indent(&cert_pem)
    );
    let addr = gateway(&config(backend, &tls, "http2")).await;
    assert_eq!(get(addr).await, (200, "hello over HTTP/2.0".to_owned()));
}

#[tokio::test]
async fn a_certificate_from_another_ca_fails_closed_with_502() {
    let (backend, _) = https_backend().await;
    let (_, other_ca) = https_backend().await;
    let tls = format!(
        "    server_name: backend.test\n    ca_pem: |\n{}",
        indent(&other_ca)
    );
    let addr = gateway(&config(backend, &tls, "http1")).await;
    let (status, body) = get(addr).await;
    assert_eq!(status, 502, "{body}");
    assert!(body.contains("upstream_connect_failed"), "{body}");
}

#[tokio::test]
async fn insecure_skip_verify_connects_without_a_ca() {
    let (backend, _) = https_backend().await;
    let addr = gateway(&config(
        backend,
        "    server_name: backend.test\n    insecure_skip_verify: true",
        "http1",
    ))
    .await;
    assert_eq!(get(addr).await, (200, "hello over HTTP/1.1".to_owned()));
}
