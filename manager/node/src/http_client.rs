//! A minimal HTTPS/1.1 client for manager-to-manager admin calls (forwarding writes to the
//! leader, `join`, `leave`) that trusts the cluster CA only.
//!
//! One connection per request: these calls are rare next to the Raft traffic, and a fresh
//! connection never lands on a stale leader's half-closed socket.

use bytes::Bytes;
use http::{HeaderMap, Method, Response, StatusCode, Uri, header};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::Error;
use crate::tls::{NODE_SERVER_NAME, client_config};

/// An HTTPS client for `https://host:port/...` URLs of manager admin APIs.
#[derive(Clone)]
pub struct HttpClient {
    connector: TlsConnector,
}

impl std::fmt::Debug for HttpClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpClient").finish_non_exhaustive()
    }
}

/// A collected response.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl HttpClient {
    /// A client that trusts `ca_pem` (the cluster CA) only.
    pub fn new(ca_pem: &str) -> Result<Self, Error> {
        Ok(Self {
            connector: TlsConnector::from(client_config(ca_pem)?),
        })
    }

    /// Sends a request and returns the response with its streaming body.
    pub async fn send(
        &self,
        method: Method,
        url: &str,
        headers: &HeaderMap,
        body: Bytes,
    ) -> Result<Response<hyper::body::Incoming>, String> {
        let uri: Uri = url.parse().map_err(|e| format!("bad URL {url}: {e}"))?;
        let authority = uri
            .authority()
            .ok_or_else(|| format!("no host in {url}"))?
            .as_str()
            .to_owned();
        let tcp = TcpStream::connect(&authority)
            .await
            .map_err(|e| format!("connect {authority}: {e}"))?;
        let _ = tcp.set_nodelay(true);
        let name = ServerName::try_from(NODE_SERVER_NAME).map_err(|e| e.to_string())?;
        let tls = self
            .connector
            .connect(name, tcp)
            .await
            .map_err(|e| format!("TLS with {authority}: {e}"))?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(connection);
        let path = uri
            .path_and_query()
            .map_or_else(|| "/".to_owned(), |p| p.as_str().to_owned());
        let mut builder = http::Request::builder()
            .method(method)
            .uri(path)
            .header(header::HOST, &authority);
        for (name, value) in headers {
            builder = builder.header(name, value);
        }
        let request = builder.body(Full::new(body)).map_err(|e| e.to_string())?;
        sender
            .send_request(request)
            .await
            .map_err(|e| e.to_string())
    }

    /// Sends a request and collects the whole response.
    pub async fn call(
        &self,
        method: Method,
        url: &str,
        headers: &HeaderMap,
        body: Bytes,
    ) -> Result<Reply, String> {
        let response = self.send(method, url, headers, body).await?;
        let (parts, body) = response.into_parts();
        let body = body.collect().await.map_err(|e| e.to_string())?.to_bytes();
        Ok(Reply {
            status: parts.status,
            headers: parts.headers,
            body,
        })
    }
}
