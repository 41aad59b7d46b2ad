//! What can fail when a validated route is compiled.
//!
//! Validation checks every value compilation parses, so these errors mean validation and
//! compilation disagree (a bug, or a shared crate older than this one). They are still reported
//! as [`ValidationError`]s with the field path, so an operator sees the same kind of message
//! either way and the agent keeps its previous table.

use fleetgate_shared::ValidationError;

/// Why one field of a route could not be compiled.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CompileError {
    #[error("invalid regex: {0}")]
    Regex(#[from] regex::Error),
    #[error("`{0}` is not a valid header name")]
    HeaderName(String),
    #[error("`{0}` is not a valid HTTP method")]
    Method(String),
}

impl CompileError {
    /// The error as validation would report it: `route/<name>: <path>: <message>`.
    pub(crate) fn at(self, route: &str, path: String) -> ValidationError {
        ValidationError {
            resource: format!("route/{route}"),
            path,
            message: self.to_string(),
        }
    }
}

/// Builds `^(?:pattern)$` within the size limit validation applies.
pub(crate) fn anchored_regex(pattern: &str) -> Result<regex::Regex, CompileError> {
    Ok(regex::RegexBuilder::new(&format!("^(?:{pattern})$"))
        .size_limit(fleetgate_shared::validate::REGEX_SIZE_LIMIT)
        .build()?)
}

/// Like [`anchored_regex`], over bytes: header values need not be UTF-8.
pub(crate) fn anchored_bytes_regex(pattern: &str) -> Result<regex::bytes::Regex, CompileError> {
    Ok(regex::bytes::RegexBuilder::new(&format!("^(?:{pattern})$"))
        .size_limit(fleetgate_shared::validate::REGEX_SIZE_LIMIT)
        .build()?)
}
