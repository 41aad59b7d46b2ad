//! Compiled canary rules: which requests of a forward route go to the canary backends.

use fleetgate_shared::model::CanaryRule;

use crate::error::CompileError;
use crate::request::{RequestView, cookie_values};
use crate::value::{HeaderCondition, ValueCondition};

/// One `spec.forward.canary` rule's condition, compiled. The backends stay in the spec
/// (`spec.forward.canary[i].backends`), at the same index.
#[derive(Debug)]
pub struct CompiledCanary {
    on: CanaryOn,
}

#[derive(Debug)]
enum CanaryOn {
    Header(HeaderCondition),
    Cookie {
        name: Box<str>,
        condition: ValueCondition,
    },
    /// A rule with neither a header nor a cookie condition never matches. Validation rejects
    /// such rules; this keeps compilation total.
    Never,
}

impl CompiledCanary {
    pub(crate) fn compile(rule: &CanaryRule) -> Result<Self, (&'static str, CompileError)> {
        let on = match (&rule.header, &rule.cookie) {
            (Some(header), _) => {
                CanaryOn::Header(HeaderCondition::compile(header).map_err(|e| ("header", e))?)
            }
            (None, Some(cookie)) => CanaryOn::Cookie {
                name: cookie.name.as_str().into(),
                condition: ValueCondition::compile(cookie).map_err(|e| ("cookie", e))?,
            },
            (None, None) => CanaryOn::Never,
        };
        Ok(Self { on })
    }

    /// Whether the request satisfies this rule: for a header rule, the header condition; for a
    /// cookie rule, the same condition applied to the values of that cookie in the request's
    /// `Cookie` headers.
    pub fn matches(&self, req: &RequestView<'_>) -> bool {
        match &self.on {
            CanaryOn::Header(condition) => condition.holds(req.headers),
            CanaryOn::Cookie { name, condition } => {
                condition.holds(cookie_values(req.headers, name))
            }
            CanaryOn::Never => false,
        }
    }
}
