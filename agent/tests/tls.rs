//! TLS termination: certificates chosen by SNI from Domain resources, ALPN choosing the HTTP
//! version, HTTPS redirects on the plain listener, and certificate swaps that reach new
//! connections while open ones carry on.

#![allow(clippy::unwrap_used)]

mod support;

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::RootCertStore;
use rustls::pki_types::{CertificateDer, ServerName};
use support::{Backend, GatewayOptions, start_gateway_with, within};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tracing::info;

/// A self-signed certificate for some names, as PEM for the config and DER for the client.
struct Cert {
    cert_pem: String,
    key_pem: String,
    der: CertificateDer<'static>,
}

impl Cert {
    fn new(names: &[&str]) -> Cert {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let certified = rcgen::generate_simple_self_signed(names).unwrap();
        Cert {
            cert_pem: certified.cert.pem(),
            key_pem: certified.signing_key.serialize_pem(),
            der: certified.cert.der().clone(),
        }
    }

    fn resource(&self, name: &str) -> String {
        let indent = |pem: &str| {
            pem.lines()
                .map(|l| format!("    {l}\n"))
                .collect::<String>()
        };
        format!(
            "---\nkind: Certificate\nname: {name}\nspec:\n  cert_pem: |\n{}  key_pem: |\n{}",
            indent(&self.cert_pem),
            indent(&self.key_pem)
        )
    }
}

/// Domain `a` (a.test) with certificate `cert-a`, domain `b` (b.test, redirecting plain HTTP
/// to HTTPS) with `cert-b`, and one route for every host to the backend.
fn config(cert_a: &Cert, cert_b: &Cert, backend: &Backend) -> String {
    format!(
        r#"{}{}---
kind: Domain
name: a
spec: {{hosts: [a.test], certificate: cert-a}}
---
kind: Domain
name: b
spec: {{hosts: [b.test], certificate: cert-b, https_redirect: true}}
---
kind: Service
name: web
spec: {{endpoints: [{{address: "{}"}}]}}
---
kind: Route
name: all
spec:
  forward: {{backends: [{{service: web}}]}}
"#,
        cert_a.resource("cert-a"),
        cert_b.resource("cert-b"),
        backend.addr
    )
}

/// A TLS client trusting exactly `roots`, offering `alpn`.
fn connector(roots: &[&Cert], alpn: &[&[u8]]) -> TlsConnector {
    let mut store = RootCertStore::empty();
    for cert in roots {
        store.add(cert.der.clone()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(store)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    TlsConnector::from(Arc::new(config))
}

async fn tls_connect(
    connector: &TlsConnector,
    addr: SocketAddr,
    sni: &'static str,
) -> TlsStream<TcpStream> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = ServerName::try_from(sni).unwrap();
    within(
        &format!("the TLS handshake for {sni}"),
        connector.connect(name, tcp),
    )
    .await
    .unwrap_or_else(|e| panic!("TLS handshake for {sni} failed: {e}"))
}

fn peer_certificate(stream: &TlsStream<TcpStream>) -> CertificateDer<'static> {
    stream.get_ref().1.peer_certificates().unwrap()[0].clone()
}

fn alpn(stream: &TlsStream<TcpStream>) -> Option<String> {
    stream
        .get_ref()
        .1
        .alpn_protocol()
        .map(|p| String::from_utf8_lossy(p).into_owned())
}

async fn read(
    response: http::Response<hyper::body::Incoming>,
) -> (StatusCode, http::Version, serde_json::Value) {
    let status = response.status();
    let version = response.version();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, version, serde_json::from_slice(&body).unwrap())
}

fn get(uri: &str, host: Option<&str>) -> Request<Empty<Bytes>> {
    let mut request = Request::get(uri);
    if let Some(host) = host {
        request = request.header("host", host);
    }
    request.body(Empty::new()).unwrap()
}

#[tokio::test]
async fn each_sni_name_gets_its_certificate_and_alpn_picks_the_http_version() {
    support::init_tracing();
    let (cert_a, cert_b) = (Cert::new(&["a.test"]), Cert::new(&["b.test"]));
    let backend = Backend::start("web").await;
    let gw = start_gateway_with(
        &config(&cert_a, &cert_b, &backend),
        GatewayOptions {
            tls: true,
            ..Default::default()
        },
    )
    .await;
    let https = gw.https.unwrap();

    info!("--- SNI a.test, offering h2: certificate a, HTTP/2");
    let tls = tls_connect(
        &connector(&[&cert_a, &cert_b], &[b"h2", b"http/1.1"]),
        https,
        "a.test",
    )
    .await;
    assert!(
        peer_certificate(&tls) == cert_a.der,
        "a.test got another certificate"
    );
    assert_eq!(alpn(&tls).as_deref(), Some("h2"));
    let (mut h2, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .unwrap();
    tokio::spawn(connection);
    let response = within(
        "an HTTP/2 response over TLS",
        h2.send_request(get("https://a.test/over-h2", None)),
    )
    .await
    .unwrap();
    let (status, version, seen) = read(response).await;
    assert_eq!((status, version), (StatusCode::OK, http::Version::HTTP_2));
    assert_eq!(seen["path"], "/over-h2");
    assert_eq!(seen["headers"]["x-forwarded-proto"], "https");

    info!("--- SNI b.test, offering only http/1.1: certificate b, HTTP/1.1");
    let tls = tls_connect(
        &connector(&[&cert_a, &cert_b], &[b"http/1.1"]),
        https,
        "b.test",
    )
    .await;
    assert!(
        peer_certificate(&tls) == cert_b.der,
        "b.test got another certificate"
    );
    assert_eq!(alpn(&tls).as_deref(), Some("http/1.1"));
    let (mut h1, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(connection);
    let response = within(
        "an HTTP/1.1 response over TLS",
        h1.send_request(get("/over-h1", Some("b.test"))),
    )
    .await
    .unwrap();
    let (status, version, seen) = read(response).await;
    assert_eq!((status, version), (StatusCode::OK, http::Version::HTTP_11));
    assert_eq!(seen["path"], "/over-h1");

    info!("--- a client that trusts only a's certificate cannot be fooled into b.test");
    let tcp = TcpStream::connect(https).await.unwrap();
    let refused = connector(&[&cert_a], &[b"http/1.1"])
        .connect(ServerName::try_from("b.test").unwrap(), tcp)
        .await;
    assert!(refused.is_err(), "b.test must present b's certificate");
}

#[tokio::test]
async fn an_https_redirect_domain_answers_plain_http_with_308() {
    support::init_tracing();
    let (cert_a, cert_b) = (Cert::new(&["a.test"]), Cert::new(&["b.test"]));
    let backend = Backend::start("web").await;
    let gw = start_gateway_with(
        &config(&cert_a, &cert_b, &backend),
        GatewayOptions {
            tls: true,
            ..Default::default()
        },
    )
    .await;
    let client = gw.client();

    info!("--- plain HTTP to the redirecting domain");
    let reply = client.get("b.test", "/account?tab=2").await;
    assert_eq!(reply.status, StatusCode::PERMANENT_REDIRECT);
    assert_eq!(
        reply.header("location"),
        Some("https://b.test/account?tab=2")
    );
    assert_eq!(backend.requests(), 0);

    info!("--- plain HTTP to a domain without the redirect is served");
    let reply = client.get("a.test", "/account").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.backend(), "web");

    info!("--- the redirecting domain is served over HTTPS");
    let tls = tls_connect(
        &connector(&[&cert_b], &[b"http/1.1"]),
        gw.https.unwrap(),
        "b.test",
    )
    .await;
    let (mut h1, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(connection);
    let response = h1
        .send_request(get("/account?tab=2", Some("b.test")))
        .await
        .unwrap();
    let (status, _, seen) = read(response).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(seen["path"], "/account?tab=2");
}

#[tokio::test]
async fn a_certificate_swap_reaches_new_connections_and_spares_open_ones() {
    support::init_tracing();
    let (cert_a, cert_b) = (Cert::new(&["a.test"]), Cert::new(&["b.test"]));
    let renewed_a = Cert::new(&["a.test"]);
    let backend = Backend::start("web").await;
    let gw = start_gateway_with(
        &config(&cert_a, &cert_b, &backend),
        GatewayOptions {
            tls: true,
            ..Default::default()
        },
    )
    .await;
    let https = gw.https.unwrap();
    let trusting_all = connector(&[&cert_a, &cert_b, &renewed_a], &[b"http/1.1"]);

    info!("--- a keep-alive TLS connection on the old certificate");
    let tls = tls_connect(&trusting_all, https, "a.test").await;
    assert!(peer_certificate(&tls) == cert_a.der);
    let (mut old, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(connection);
    let (status, _, _) = read(
        old.send_request(get("/before", Some("a.test")))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::OK);

    info!("--- the certificate of a.test is renewed");
    gw.apply(&config(&renewed_a, &cert_b, &backend)).unwrap();

    info!("--- a new connection gets the renewed certificate");
    let tls = tls_connect(&trusting_all, https, "a.test").await;
    assert!(
        peer_certificate(&tls) == renewed_a.der,
        "a new connection got the old certificate"
    );
    let (mut new, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(connection);
    let (status, _, _) = read(new.send_request(get("/new", Some("a.test"))).await.unwrap()).await;
    assert_eq!(status, StatusCode::OK);

    info!("--- the open connection keeps working on its session");
    for i in 0..3 {
        let response = within(
            "a request on the old connection",
            old.send_request(get(&format!("/after/{i}"), Some("a.test"))),
        )
        .await
        .unwrap();
        let (status, _, seen) = read(response).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(seen["path"], format!("/after/{i}"));
    }
    info!("--- b.test is untouched");
    let tls = tls_connect(&trusting_all, https, "b.test").await;
    assert!(peer_certificate(&tls) == cert_b.der);
}
