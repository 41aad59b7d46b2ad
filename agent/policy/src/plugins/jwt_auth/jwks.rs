//! A remote JWKS: fetched over HTTP(S), cached, refreshed in the background, and refetched
//! (rate-limited) when a token names a key it does not hold.
//!
//! Requests never wait for a refresh of a set they already have: a stale set keeps serving
//! while one background fetch replaces it (and keeps serving if that fetch fails). Two cases
//! wait, bounded by [`FETCH_TIMEOUT`]: the very first load (there is nothing to verify with
//! yet), and a token whose `kid` is not in the set (it would be refused anyway; the wait lets
//! a key rotation succeed on the first request that uses the new key). Fetches are single-
//! flight and at most one per `min_refetch` (10 s), so neither a flood of unknown `kid`s nor
//! a dead JWKS endpoint turns into a flood of fetches.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use bytes::Bytes;
use http::{Request, StatusCode, Uri, header};
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::rt::TokioIo;
use jsonwebtoken::DecodingKey;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, PublicKeyUse};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::Notify;

use super::{VerifyKey, algorithm_by_name};
use fleetgate_shared::model::JwtAlgorithm;

/// Bound on one fetch: connect, TLS, request and body. Also the longest a request waits for
/// a first load or an unknown-`kid` refetch.
pub(super) const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// At most one fetch per this interval, whatever triggers it.
pub(super) const MIN_REFETCH: Duration = Duration::from_secs(10);
/// A JWKS larger than this is refused: real ones are a few KiB.
const MAX_JWKS_BYTES: usize = 512 * 1024;

/// Where the system CA bundle is looked for (Debian/Ubuntu, then RHEL/Fedora).
const SYSTEM_CA_BUNDLES: [&str; 2] = [
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
];

/// One fetched key set.
#[derive(Debug)]
pub(super) struct KeySet {
    pub(super) keys: Vec<VerifyKey>,
    fetched: Instant,
}

/// The cached JWKS of one policy. Kept in `PolicyState` so a config version that does not
/// change the URL keeps the fetched set.
#[derive(Debug)]
pub(super) struct JwksCache {
    pub(super) url: String,
    uri: Uri,
    refresh_ms: AtomicU64,
    min_refetch_ms: AtomicU64,
    set: ArcSwapOption<KeySet>,
    /// Milliseconds since `base` of the last fetch start; `u64::MAX` before the first.
    last_attempt_ms: AtomicU64,
    base: Instant,
    in_flight: AtomicBool,
    done: Notify,
}

impl JwksCache {
    pub(super) fn new(url: &str, refresh: Duration) -> Result<Self, String> {
        let uri: Uri = url
            .parse()
            .map_err(|e| format!("jwks.url `{url}` is not a URL: {e}"))?;
        match uri.scheme_str() {
            Some("http" | "https") => {}
            _ => return Err(format!("jwks.url `{url}` must be http:// or https://")),
        }
        if uri.host().is_none() {
            return Err(format!("jwks.url `{url}` has no host"));
        }
        Ok(Self {
            url: url.to_owned(),
            uri,
            refresh_ms: AtomicU64::new(millis(refresh)),
            min_refetch_ms: AtomicU64::new(millis(MIN_REFETCH)),
            set: ArcSwapOption::empty(),
            last_attempt_ms: AtomicU64::new(u64::MAX),
            base: Instant::now(),
            in_flight: AtomicBool::new(false),
            done: Notify::new(),
        })
    }

    pub(super) fn set_refresh(&self, refresh: Duration) {
        self.refresh_ms.store(millis(refresh), Ordering::Relaxed);
    }

    #[cfg(test)]
    pub(super) fn set_min_refetch(&self, interval: Duration) {
        self.min_refetch_ms
            .store(millis(interval), Ordering::Relaxed);
    }

    /// Starts the first load ahead of the first request, when a runtime is there to run it.
    pub(super) fn prefetch(self: &Arc<Self>) {
        if self.set.load().is_none() {
            self.start_fetch();
        }
    }

    /// The set to verify with: the cached one (starting a background refresh when it is
    /// stale), or, before the first successful load, the result of waiting for one.
    pub(super) async fn current(self: &Arc<Self>) -> Option<Arc<KeySet>> {
        if let Some(set) = self.set.load_full() {
            let refresh = Duration::from_millis(self.refresh_ms.load(Ordering::Relaxed));
            if set.fetched.elapsed() >= refresh {
                self.start_fetch();
            }
            return Some(set);
        }
        if self.start_fetch() {
            self.wait_for_fetch().await;
        }
        self.set.load_full()
    }

    /// For a `kid` the set lacks: refetch (if the rate limit allows, or join a fetch under
    /// way) and return the set afterwards.
    pub(super) async fn refetch(self: &Arc<Self>) -> Option<Arc<KeySet>> {
        if self.start_fetch() {
            self.wait_for_fetch().await;
        }
        self.set.load_full()
    }

    /// Starts a fetch unless one ran too recently. Returns whether a fetch is now under way
    /// (started here or earlier), i.e. whether waiting can bring a new set.
    pub(super) fn start_fetch(self: &Arc<Self>) -> bool {
        if self.in_flight.load(Ordering::Acquire) {
            return true;
        }
        let now = millis(self.base.elapsed());
        let last = self.last_attempt_ms.load(Ordering::Relaxed);
        let min = self.min_refetch_ms.load(Ordering::Relaxed);
        if last != u64::MAX && now.saturating_sub(last) < min {
            return false;
        }
        if self
            .in_flight
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return true;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            self.in_flight.store(false, Ordering::Release);
            return false;
        };
        self.last_attempt_ms.store(now, Ordering::Relaxed);
        let cache = self.clone();
        runtime.spawn(async move {
            match tokio::time::timeout(FETCH_TIMEOUT, fetch(&cache.uri)).await {
                Ok(Ok(body)) => match parse(&body) {
                    Ok(keys) => {
                        tracing::debug!(url = %cache.url, keys = keys.len(), "JWKS loaded");
                        cache.set.store(Some(Arc::new(KeySet {
                            keys,
                            fetched: Instant::now(),
                        })));
                    }
                    Err(e) => tracing::warn!(url = %cache.url, "JWKS refused: {e}"),
                },
                Ok(Err(e)) => tracing::warn!(url = %cache.url, "JWKS fetch failed: {e}"),
                Err(_) => tracing::warn!(url = %cache.url, "JWKS fetch timed out"),
            }
            cache.in_flight.store(false, Ordering::Release);
            cache.done.notify_waiters();
        });
        true
    }

    async fn wait_for_fetch(&self) {
        let notified = self.done.notified();
        tokio::pin!(notified);
        // Registered before the flag is read, so a fetch ending in between still wakes us.
        notified.as_mut().enable();
        if !self.in_flight.load(Ordering::Acquire) {
            return;
        }
        let _ = tokio::time::timeout(FETCH_TIMEOUT + Duration::from_secs(1), notified).await;
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// The usable signing keys of a JWKS document. Keys for encryption (`use: enc`), of unknown
/// types or curves, and symmetric (`oct`) keys are skipped: a shared secret served at a URL
/// is not secret, and accepting one would let whoever controls the document mint tokens for
/// an HS policy. A document with no usable key is an error (the previous set stays).
pub(super) fn parse(body: &[u8]) -> Result<Vec<VerifyKey>, String> {
    let doc: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| format!("not JSON: {e}"))?;
    let entries = doc
        .get("keys")
        .and_then(|k| k.as_array())
        .ok_or("no `keys` array")?;
    let keys: Vec<VerifyKey> = entries
        .iter()
        .filter_map(|entry| serde_json::from_value::<Jwk>(entry.clone()).ok())
        .filter_map(|jwk| verify_key(&jwk))
        .collect();
    if keys.is_empty() {
        return Err("no usable signing key in the set".into());
    }
    Ok(keys)
}

fn verify_key(jwk: &Jwk) -> Option<VerifyKey> {
    if matches!(
        jwk.common.public_key_use,
        Some(PublicKeyUse::Encryption | PublicKeyUse::Other(_))
    ) {
        return None;
    }
    let by_type: &[JwtAlgorithm] = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => &[
            JwtAlgorithm::RS256,
            JwtAlgorithm::RS384,
            JwtAlgorithm::RS512,
            JwtAlgorithm::PS256,
            JwtAlgorithm::PS384,
            JwtAlgorithm::PS512,
        ],
        AlgorithmParameters::EllipticCurve(ec) => match ec.curve {
            EllipticCurve::P256 => &[JwtAlgorithm::ES256],
            EllipticCurve::P384 => &[JwtAlgorithm::ES384],
            _ => return None,
        },
        AlgorithmParameters::OctetKeyPair(okp) if okp.curve == EllipticCurve::Ed25519 => {
            &[JwtAlgorithm::EdDSA]
        }
        _ => return None,
    };
    // A key that names its algorithm is used with that one only.
    let algorithms: Vec<JwtAlgorithm> = match jwk.common.key_algorithm {
        None => by_type.to_vec(),
        Some(KeyAlgorithm::UNKNOWN_ALGORITHM) => return None,
        Some(alg) => {
            let named = algorithm_by_name(&format!("{alg:?}"))?;
            if !by_type.contains(&named) {
                return None;
            }
            vec![named]
        }
    };
    let key = DecodingKey::from_jwk(jwk).ok()?;
    Some(VerifyKey {
        kid: jwk.common.key_id.clone(),
        algorithms,
        key,
    })
}

/// GETs `uri` and returns the body of a 200 answer.
async fn fetch(uri: &Uri) -> Result<Bytes, String> {
    let host = uri.host().ok_or("no host")?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let tls = uri.scheme_str() == Some("https");
    let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
    let tcp = TcpStream::connect((host, port))
        .await
        .map_err(|e| format!("connect {host}:{port}: {e}"))?;
    let _ = tcp.set_nodelay(true);
    let authority = uri.authority().map_or(host, |a| a.as_str()).to_owned();
    let path = uri.path_and_query().map_or("/", |pq| pq.as_str());
    let request = Request::get(path)
        .header(header::HOST, authority)
        .header(header::ACCEPT, "application/jwk-set+json, application/json")
        .header(header::USER_AGENT, "fleetgate-agent")
        .body(Empty::<Bytes>::new())
        .map_err(|e| e.to_string())?;
    if tls {
        let config = tls_config()?;
        let name = rustls::pki_types::ServerName::try_from(host.to_owned())
            .map_err(|e| format!("`{host}` is not a TLS server name: {e}"))?;
        let stream = tokio_rustls::TlsConnector::from(config)
            .connect(name, tcp)
            .await
            .map_err(|e| format!("TLS with {host}: {e}"))?;
        exchange(stream, request).await
    } else {
        exchange(tcp, request).await
    }
}

async fn exchange<S>(io: S, request: Request<Empty<Bytes>>) -> Result<Bytes, String>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(|e| format!("HTTP handshake: {e}"))?;
    let driver = tokio::spawn(async move {
        let _ = connection.await;
    });
    let result = async {
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| format!("request: {e}"))?;
        if response.status() != StatusCode::OK {
            return Err(format!("answered {}", response.status()));
        }
        Limited::new(response.into_body(), MAX_JWKS_BYTES)
            .collect()
            .await
            .map(|c| c.to_bytes())
            .map_err(|e| format!("body: {e}"))
    }
    .await;
    driver.abort();
    result
}

/// The rustls client config for JWKS over HTTPS: the system CA bundle, aws-lc-rs. Built once
/// per process; a failure is reported each time (the bundle may appear later).
fn tls_config() -> Result<Arc<rustls::ClientConfig>, String> {
    static CONFIG: std::sync::OnceLock<Arc<rustls::ClientConfig>> = std::sync::OnceLock::new();
    if let Some(config) = CONFIG.get() {
        return Ok(config.clone());
    }
    use rustls_pki_types::pem::PemObject;
    let pem = SYSTEM_CA_BUNDLES
        .iter()
        .find_map(|path| std::fs::read(path).ok())
        .ok_or("no system CA bundle found for the https JWKS")?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pki_types::CertificateDer::pem_slice_iter(&pem).flatten() {
        // A system bundle may hold certificates rustls cannot use; skip those.
        let _ = roots.add(cert);
    }
    if roots.is_empty() {
        return Err("the system CA bundle holds no usable certificate".into());
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS versions: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(CONFIG.get_or_init(|| Arc::new(config)).clone())
}
