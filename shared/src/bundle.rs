//! Reading resources from documents: YAML (multi-document) or JSON, files or directories.
//!
//! Parsing happens in two steps so that errors can name the resource and the field: each
//! document is first read into a generic tree (which bounds nesting and alias expansion), then
//! its envelope (`kind`, `name`, `labels`, `placement`) and its `spec` are decoded strictly,
//! with unknown fields rejected by name. Every document is parsed even when an earlier one
//! failed, so one run reports every broken document.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::Value;

use crate::model::{
    Kind, Labels, Placement, PolicyConfig, PolicyScope, PolicySpec, Resource, Spec,
};

/// Files larger than this are refused before parsing. A bundle of 10,000 routes is about 3 MB;
/// 32 MiB leaves room for large certificate bundles while bounding memory for garbage input.
pub const MAX_FILE_BYTES: u64 = 32 * 1024 * 1024;

/// One problem with one document: where it is, which resource (when known), which field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BundleError {
    /// `file.yaml, document 3`, or `document 3` for input without a file.
    pub origin: String,
    /// `route/chat-ws` when the document got far enough to say.
    pub resource: Option<String>,
    /// The field path inside the document (`spec.matches[0].path`), empty for syntax errors.
    pub path: String,
    pub message: String,
}

impl fmt::Display for BundleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.resource {
            Some(resource) => write!(f, "{resource}: ")?,
            None => write!(f, "{}: ", self.origin)?,
        }
        if !self.path.is_empty() {
            write!(f, "{}: ", self.path)?;
        }
        f.write_str(&self.message)?;
        if self.resource.is_some() && !self.origin.is_empty() {
            write!(f, " (in {})", self.origin)?;
        }
        Ok(())
    }
}

impl std::error::Error for BundleError {}

/// Why a set of paths could not be turned into resources.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// A path could not be read at all: missing, unreadable, too large, or not UTF-8.
    #[error("cannot read {}: {reason}", path.display())]
    Unreadable { path: PathBuf, reason: String },
    /// Every file was read, and some documents are malformed.
    #[error("{} invalid document(s); first: {}", .0.len(), .0.first().map(ToString::to_string).unwrap_or_default())]
    Invalid(Vec<BundleError>),
}

/// The format of a document source.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Yaml,
    Json,
}

impl Format {
    /// JSON for `.json` files, YAML for everything else (YAML also reads most JSON).
    pub fn for_path(path: &Path) -> Format {
        match path.extension().and_then(|e| e.to_str()) {
            Some(ext) if ext.eq_ignore_ascii_case("json") => Format::Json,
            _ => Format::Yaml,
        }
    }
}

/// Parses every document in `text`. `origin` names the source in errors (a file path, or
/// empty). Returns the resources in document order, or every error found.
pub fn parse_bundle(
    text: &str,
    format: Format,
    origin: &str,
) -> Result<Vec<Resource>, Vec<BundleError>> {
    let place = |index: usize| {
        if origin.is_empty() {
            format!("document {}", index + 1)
        } else {
            format!("{origin}, document {}", index + 1)
        }
    };
    let mut resources = Vec::new();
    let mut errors = Vec::new();
    for (index, value) in documents(text, format).into_iter().enumerate() {
        let parsed = value
            .map_err(|message| BundleError {
                origin: place(index),
                resource: None,
                path: String::new(),
                message,
            })
            .and_then(|value| {
                parse_document(value).map_err(|mut e| {
                    e.origin = place(index);
                    e
                })
            });
        match parsed {
            Ok(resource) => resources.push(resource),
            Err(e) => errors.push(e),
        }
    }
    if errors.is_empty() {
        Ok(resources)
    } else {
        Err(errors)
    }
}

/// Splits `text` into generic document trees; empty YAML documents are skipped.
fn documents(text: &str, format: Format) -> Vec<Result<Value, String>> {
    match format {
        Format::Json => match serde_json::from_str::<Value>(text) {
            Ok(Value::Array(items)) => items.into_iter().map(Ok).collect(),
            Ok(Value::Null) => Vec::new(),
            Ok(value) => vec![Ok(value)],
            Err(e) => vec![Err(format!("invalid JSON: {e}"))],
        },
        Format::Yaml => {
            let mut out = Vec::new();
            for document in serde_yaml_ng::Deserializer::from_str(text) {
                match Value::deserialize(document) {
                    Ok(Value::Null) => {}
                    Ok(value) => out.push(Ok(value)),
                    Err(e) => {
                        // After a syntax error the YAML stream cannot be resynchronised:
                        // report it and stop reading this source.
                        out.push(Err(format!("invalid YAML: {e}")));
                        break;
                    }
                }
            }
            out
        }
    }
}

/// The envelope every document shares.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Envelope {
    kind: String,
    name: String,
    #[serde(default)]
    labels: Labels,
    #[serde(default)]
    placement: Option<Placement>,
    spec: Value,
}

/// A policy's spec before its `config` is decoded by `type`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicySpec {
    #[serde(rename = "type")]
    policy_type: String,
    #[serde(default)]
    config: Option<Value>,
    #[serde(default)]
    scope: PolicyScope,
}

/// Decodes one document tree into a resource, strictly. The error's `origin` is empty; callers
/// that know the source fill it in.
pub fn parse_document(value: Value) -> Result<Resource, BundleError> {
    let resource_hint = match (
        value.get("kind").and_then(Value::as_str),
        value.get("name").and_then(Value::as_str),
    ) {
        (Some(kind), Some(name)) => Some(match kind.parse::<Kind>() {
            Ok(k) => format!("{}/{name}", k.slug()),
            Err(_) => format!("{kind}/{name}"),
        }),
        _ => None,
    };
    let fail = |path: String, message: String| BundleError {
        origin: String::new(),
        resource: resource_hint.clone(),
        path,
        message,
    };
    if !value.is_object() {
        return Err(fail(
            String::new(),
            format!(
                "expected a resource document (a mapping with kind, name and spec), found {}",
                describe(&value)
            ),
        ));
    }
    let envelope: Envelope = decode(value, "").map_err(|(p, m)| fail(p, m))?;
    let kind: Kind = envelope
        .kind
        .parse()
        .map_err(|e: crate::model::UnknownKind| fail("kind".into(), e.to_string()))?;
    let spec = match kind {
        Kind::Certificate => {
            Spec::Certificate(decode(envelope.spec, "spec").map_err(|(p, m)| fail(p, m))?)
        }
        Kind::Domain => Spec::Domain(decode(envelope.spec, "spec").map_err(|(p, m)| fail(p, m))?),
        Kind::Service => Spec::Service(decode(envelope.spec, "spec").map_err(|(p, m)| fail(p, m))?),
        Kind::Consumer => {
            Spec::Consumer(decode(envelope.spec, "spec").map_err(|(p, m)| fail(p, m))?)
        }
        Kind::Route => Spec::Route(decode(envelope.spec, "spec").map_err(|(p, m)| fail(p, m))?),
        Kind::Policy => {
            let raw: RawPolicySpec = decode(envelope.spec, "spec").map_err(|(p, m)| fail(p, m))?;
            let config = raw
                .config
                .unwrap_or_else(|| Value::Object(Default::default()));
            let config = policy_config(&raw.policy_type, config).map_err(|(p, m)| fail(p, m))?;
            Spec::Policy(PolicySpec {
                config,
                scope: raw.scope,
            })
        }
    };
    Ok(Resource {
        name: envelope.name,
        labels: envelope.labels,
        placement: envelope.placement,
        spec,
    })
}

/// Decodes a policy's `config` by its `type`, so that errors carry the path inside the config.
fn policy_config(policy_type: &str, config: Value) -> Result<PolicyConfig, (String, String)> {
    const AT: &str = "spec.config";
    Ok(match policy_type {
        "jwt-auth" => PolicyConfig::JwtAuth(decode(config, AT)?),
        "key-auth" => PolicyConfig::KeyAuth(decode(config, AT)?),
        "basic-auth" => PolicyConfig::BasicAuth(decode(config, AT)?),
        "hmac-auth" => PolicyConfig::HmacAuth(decode(config, AT)?),
        "key-rate-limit" => PolicyConfig::KeyRateLimit(decode(config, AT)?),
        "ip-restriction" => PolicyConfig::IpRestriction(decode(config, AT)?),
        "cors" => PolicyConfig::Cors(decode(config, AT)?),
        "bot-detect" => PolicyConfig::BotDetect(decode(config, AT)?),
        "waf" => PolicyConfig::Waf(decode(config, AT)?),
        "cc-protection" => PolicyConfig::CcProtection(decode(config, AT)?),
        "request-size-limit" => PolicyConfig::RequestSizeLimit(decode(config, AT)?),
        other => {
            return Err((
                "spec.type".into(),
                format!(
                    "unknown policy type `{other}`, expected one of {}",
                    PolicyConfig::TYPES.join(", ")
                ),
            ));
        }
    })
}

/// Decodes `value` as `T`, returning the failing field's full path (under `prefix`) and message.
fn decode<T: serde::de::DeserializeOwned>(
    value: Value,
    prefix: &str,
) -> Result<T, (String, String)> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let inner = e.path().to_string();
        let path = match (prefix.is_empty(), inner.as_str()) {
            (_, ".") => prefix.to_owned(),
            (true, _) => inner,
            (false, _) => format!("{prefix}.{inner}"),
        };
        (path, e.into_inner().to_string())
    })
}

fn describe(value: &Value) -> &'static str {
    match value {
        Value::Null => "nothing",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a mapping",
    }
}

/// Reads every path (files, or directories walked recursively for `*.yaml`, `*.yml` and
/// `*.json`, in name order, skipping hidden entries) and parses every document in them.
pub fn load_paths<P: AsRef<Path>>(paths: &[P]) -> Result<Vec<Resource>, LoadError> {
    let mut files = Vec::new();
    for path in paths {
        collect_files(path.as_ref(), true, &mut files)?;
    }
    let mut resources = Vec::new();
    let mut errors = Vec::new();
    for file in files {
        let text = read_text(&file)?;
        match parse_bundle(&text, Format::for_path(&file), &file.display().to_string()) {
            Ok(mut found) => resources.append(&mut found),
            Err(mut found) => errors.append(&mut found),
        }
    }
    if errors.is_empty() {
        Ok(resources)
    } else {
        Err(LoadError::Invalid(errors))
    }
}

fn collect_files(path: &Path, explicit: bool, out: &mut Vec<PathBuf>) -> Result<(), LoadError> {
    let unreadable = |reason: String| LoadError::Unreadable {
        path: path.to_owned(),
        reason,
    };
    let meta = std::fs::metadata(path).map_err(|e| unreadable(e.to_string()))?;
    if meta.is_dir() {
        let mut entries = std::fs::read_dir(path)
            .map_err(|e| unreadable(e.to_string()))?
            .map(|entry| entry.map(|e| e.path()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| unreadable(e.to_string()))?;
        entries.sort();
        for entry in entries {
            let hidden = entry
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with('.'));
            if !hidden {
                collect_files(&entry, false, out)?;
            }
        }
    } else if explicit || is_document_file(path) {
        out.push(path.to_owned());
    }
    Ok(())
}

fn is_document_file(path: &Path) -> bool {
    matches!(
        path.extension().and_then(|e| e.to_str()),
        Some("yaml" | "yml" | "json")
    )
}

/// Reads a file as UTF-8 text, refusing files over [`MAX_FILE_BYTES`] before reading them.
pub fn read_text(path: &Path) -> Result<String, LoadError> {
    use std::io::Read;
    let unreadable = |reason: String| LoadError::Unreadable {
        path: path.to_owned(),
        reason,
    };
    let file = std::fs::File::open(path).map_err(|e| unreadable(e.to_string()))?;
    let mut bytes = Vec::new();
    // Read one byte past the limit so that a file growing while it is read is still caught.
    file.take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| unreadable(e.to_string()))?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(unreadable(format!(
            "larger than the {} MiB limit for a config file",
            MAX_FILE_BYTES / 1024 / 1024
        )));
    }
    String::from_utf8(bytes).map_err(|e| {
        unreadable(format!(
            "not valid UTF-8 (first bad byte at offset {})",
            e.utf8_error().valid_up_to()
        ))
    })
}
