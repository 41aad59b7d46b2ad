//! Data-plane errors, and the one place they become HTTP responses.

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};

use crate::ResponseBody;

/// Where a failure came from: it decides the status, whether a retry may help, and which side
/// the operator should look at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The request itself (no route, bad host): the client must change something.
    Client,
    /// The upstream (refused, reset, timed out).
    Upstream,
    /// The agent's own config (no healthy endpoint left).
    Config,
}

/// A request the agent could not forward.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("no route matches host `{host}` and path `{path}`")]
    NoRoute { host: String, path: String },
    #[error("service `{service}` has no healthy endpoint{}", subset_note(.subset))]
    NoHealthyEndpoint { service: String, subset: String },
    #[error("cannot connect to upstream {endpoint} of service `{service}`: {reason}")]
    Connect {
        service: String,
        endpoint: String,
        reason: String,
    },
    #[error("upstream {endpoint} of service `{service}` failed: {reason}")]
    Upstream {
        service: String,
        endpoint: String,
        reason: String,
    },
    #[error("upstream {endpoint} of service `{service}` did not answer within {timeout_ms} ms")]
    Timeout {
        service: String,
        endpoint: String,
        timeout_ms: u64,
    },
    #[error("service `{0}` is referenced by the route but missing from the running config")]
    MissingService(String),
    #[error("route `{route}` rewrote the path into an invalid request target `{target}`")]
    BadRewrite { route: String, target: String },
    #[error("request has no usable host")]
    BadHost,
    #[error("the request body could not be read: {0}")]
    ClientBody(String),
}

fn subset_note(subset: &str) -> String {
    if subset.is_empty() {
        String::new()
    } else {
        format!(" in subset {subset}")
    }
}

impl ProxyError {
    /// Which side failed.
    pub fn source(&self) -> Source {
        match self {
            ProxyError::NoRoute { .. } | ProxyError::BadHost | ProxyError::ClientBody(_) => {
                Source::Client
            }
            ProxyError::NoHealthyEndpoint { .. }
            | ProxyError::MissingService(_)
            | ProxyError::BadRewrite { .. } => Source::Config,
            ProxyError::Connect { .. }
            | ProxyError::Upstream { .. }
            | ProxyError::Timeout { .. } => Source::Upstream,
        }
    }

    /// A short machine-readable code for the JSON body and the access log.
    pub fn code(&self) -> &'static str {
        match self {
            ProxyError::NoRoute { .. } => "no_route",
            ProxyError::NoHealthyEndpoint { .. } => "no_healthy_endpoint",
            ProxyError::Connect { .. } => "upstream_connect_failed",
            ProxyError::Upstream { .. } => "upstream_failed",
            ProxyError::Timeout { .. } => "upstream_timeout",
            ProxyError::MissingService(_) => "missing_service",
            ProxyError::BadRewrite { .. } => "bad_rewrite",
            ProxyError::BadHost => "bad_host",
            ProxyError::ClientBody(_) => "bad_request_body",
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::NoRoute { .. } => StatusCode::NOT_FOUND,
            ProxyError::BadHost | ProxyError::ClientBody(_) => StatusCode::BAD_REQUEST,
            ProxyError::NoHealthyEndpoint { .. } | ProxyError::MissingService(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ProxyError::Connect { .. }
            | ProxyError::Upstream { .. }
            | ProxyError::BadRewrite { .. } => StatusCode::BAD_GATEWAY,
            ProxyError::Timeout { .. } => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    /// The response the client gets: the status and a small JSON body naming the problem.
    pub fn into_response(self, request_id: &str) -> Response<ResponseBody> {
        let body = serde_json::json!({
            "error": self.code(),
            "message": self.to_string(),
            "request_id": request_id,
        });
        json_response(self.status(), &body)
    }
}

/// A response with a JSON body.
pub fn json_response(status: StatusCode, body: &serde_json::Value) -> Response<ResponseBody> {
    let mut bytes = serde_json::to_vec(body).unwrap_or_default();
    bytes.push(b'\n');
    let mut response = Response::new(full(bytes));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// A complete in-memory body.
pub fn full(bytes: impl Into<Bytes>) -> ResponseBody {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed()
}

/// An empty body. Boxing it costs no allocation: the body is zero-sized.
pub fn empty() -> ResponseBody {
    http_body_util::Empty::new()
        .map_err(|never| match never {})
        .boxed()
}
