use fleetgate_shared::model::{Phase, RequestSizeLimit as Config};
use http::{StatusCode, header};

use crate::context::{BodyPrefix, RequestCtx, Verdict, reject};
use crate::plugin::AnswersAtOnce;

/// Refuses request bodies over a size, by `Content-Length` before reading, and by reading one
/// byte past the limit when the length is not declared (chunked uploads).
#[derive(Debug)]
pub struct RequestSizeLimit {
    name: String,
    max: u64,
}

impl RequestSizeLimit {
    pub fn build(name: &str, config: &Config) -> Self {
        Self {
            name: name.to_owned(),
            max: config.max_body_bytes,
        }
    }

    fn too_large(&self) -> Verdict {
        Verdict::Respond(reject(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            &format!("request body is larger than {} bytes", self.max),
            &self.name,
        ))
    }
}

impl AnswersAtOnce for RequestSizeLimit {
    fn name(&self) -> &str {
        &self.name
    }

    fn phase(&self) -> Phase {
        Phase::Security
    }

    fn body_limit(&self) -> Option<u64> {
        Some(self.max.saturating_add(1))
    }

    fn verdict(&self, ctx: &mut RequestCtx<'_>) -> Verdict {
        let declared = ctx
            .headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        match (&ctx.body, declared) {
            (_, Some(length)) if length > self.max => self.too_large(),
            (BodyPrefix::Partial(_), _) => self.too_large(),
            (BodyPrefix::Complete(body), _) if body.len() as u64 > self.max => self.too_large(),
            _ => Verdict::Continue,
        }
    }
}
