use fleetgate_shared::model::{Cors as Config, Phase};
use http::header::{self, HeaderValue};
use http::{Method, Response, StatusCode};

use crate::context::{RequestCtx, Verdict, reject};
use crate::plugin::AnswersAtOnce;

/// Cross-origin resource sharing: answers preflight requests itself and adds the CORS headers
/// to actual responses for allowed origins.
#[derive(Debug)]
pub struct Cors {
    name: String,
    any_origin: bool,
    origins: Vec<String>,
    methods: String,
    headers: Option<String>,
    expose: Option<String>,
    credentials: bool,
    max_age: Option<String>,
}

/// Methods allowed when the policy lists none: the CORS-safelisted ones.
const DEFAULT_METHODS: &str = "GET, HEAD, POST";

impl Cors {
    pub fn build(name: &str, config: &Config) -> Self {
        let join = |list: &[String]| (!list.is_empty()).then(|| list.join(", "));
        Self {
            name: name.to_owned(),
            any_origin: config.allow_origins.iter().any(|o| o == "*"),
            origins: config
                .allow_origins
                .iter()
                .filter(|o| *o != "*")
                .map(|o| o.to_ascii_lowercase())
                .collect(),
            methods: join(&config.allow_methods).unwrap_or_else(|| DEFAULT_METHODS.to_owned()),
            headers: join(&config.allow_headers),
            expose: join(&config.expose_headers),
            credentials: config.allow_credentials,
            max_age: config.max_age.map(|d| (d.as_millis() / 1000).to_string()),
        }
    }

    fn allows(&self, origin: &str) -> bool {
        self.any_origin || self.origins.iter().any(|o| o.eq_ignore_ascii_case(origin))
    }

    /// The Access-Control-Allow-Origin value: `*` for a wildcard policy without credentials,
    /// else the request's origin echoed (with `Vary: Origin` so caches keep them apart).
    fn allow_origin_value(&self, origin: &str) -> Option<HeaderValue> {
        if self.any_origin && !self.credentials {
            Some(HeaderValue::from_static("*"))
        } else {
            HeaderValue::from_str(origin).ok()
        }
    }
}

fn insert(headers: &mut http::HeaderMap, name: header::HeaderName, value: &str) {
    if let Ok(value) = HeaderValue::from_str(value) {
        headers.insert(name, value);
    }
}

impl AnswersAtOnce for Cors {
    fn name(&self) -> &str {
        &self.name
    }

    fn phase(&self) -> Phase {
        Phase::Authz
    }

    fn verdict(&self, ctx: &mut RequestCtx<'_>) -> Verdict {
        let origin = ctx
            .headers
            .get(header::ORIGIN)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let preflight = ctx.method == Method::OPTIONS
            && ctx
                .headers
                .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD);
        match origin {
            None => Verdict::Continue,
            Some(origin) if !self.allows(&origin) => {
                if preflight {
                    Verdict::Respond(reject(
                        StatusCode::FORBIDDEN,
                        "cors_origin_denied",
                        &format!("origin `{origin}` is not allowed"),
                        &self.name,
                    ))
                } else {
                    // Without CORS headers the browser withholds the response from the page.
                    Verdict::Continue
                }
            }
            Some(origin) => {
                let mut headers = http::HeaderMap::new();
                if let Some(value) = self.allow_origin_value(&origin) {
                    headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, value);
                }
                headers.insert(header::VARY, HeaderValue::from_static("origin"));
                if self.credentials {
                    headers.insert(
                        header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                        HeaderValue::from_static("true"),
                    );
                }
                if preflight {
                    insert(
                        &mut headers,
                        header::ACCESS_CONTROL_ALLOW_METHODS,
                        &self.methods,
                    );
                    let requested = ctx
                        .headers
                        .get(header::ACCESS_CONTROL_REQUEST_HEADERS)
                        .and_then(|v| v.to_str().ok());
                    match (&self.headers, requested) {
                        (Some(allowed), _) => {
                            insert(&mut headers, header::ACCESS_CONTROL_ALLOW_HEADERS, allowed)
                        }
                        (None, Some(requested)) if self.any_origin => insert(
                            &mut headers,
                            header::ACCESS_CONTROL_ALLOW_HEADERS,
                            requested,
                        ),
                        _ => {}
                    }
                    if let Some(age) = &self.max_age {
                        insert(&mut headers, header::ACCESS_CONTROL_MAX_AGE, age);
                    }
                    let mut response = Response::new(bytes::Bytes::new());
                    *response.status_mut() = StatusCode::NO_CONTENT;
                    *response.headers_mut() = headers;
                    Verdict::Respond(response)
                } else {
                    if let Some(expose) = &self.expose {
                        insert(&mut headers, header::ACCESS_CONTROL_EXPOSE_HEADERS, expose);
                    }
                    ctx.response_headers.extend(headers);
                    Verdict::Continue
                }
            }
        }
    }
}
