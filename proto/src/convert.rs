//! The crossings between the wire types ([`crate::sync::v1`]) and the domain model
//! ([`fleetgate_shared`]).
//!
//! Model → wire is infallible (`From`): the model is already valid. Wire → model is `TryFrom`
//! with a [`WireError`], because a message may come from a newer or a broken peer. A resource's
//! spec is decoded by [`fleetgate_shared::bundle::parse_document`], the parser YAML files go
//! through, so an unknown field on the wire is rejected by name exactly as it is in a file.
//!
//! Checksums: a wire [`wire::Snapshot`] or [`wire::Delta`] carries the hex content checksum of
//! the snapshot it describes (for a delta: the snapshot it produces). Decoding verifies it when
//! it is present, so a receiver knows it holds exactly the sender's content.

use fleetgate_shared::bundle::parse_document;
use fleetgate_shared::model::{SelectorOperator, SelectorRequirement};
use fleetgate_shared::snapshot::BadChecksum;
use fleetgate_shared::{
    Checksum, Delta, DeltaError, Kind, Placement, Resource, ResourceKey, Snapshot, Spec,
    ValidationError,
};
use serde_json::{Map, Value};

use crate::sync::v1 as wire;
use crate::sync::v1::selector_requirement::Operator;

/// Why a wire message could not be turned into model values.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// A `kind` number this build does not know: a newer peer, or corruption.
    #[error("unknown resource kind number {0}")]
    UnknownKind(i32),
    /// A selector `operator` number this build does not know.
    #[error("unknown placement operator number {0}")]
    UnknownOperator(i32),
    /// A required field was left at its zero value (`KIND_UNSPECIFIED`, an empty name, an
    /// empty spec, an unset operator). Protobuf cannot tell "unset" from "zero", so zero is
    /// treated as unset for these fields.
    #[error("required field `{0}` is missing")]
    MissingField(&'static str),
    /// A resource's document failed the shared crate's strict parsing: its `spec_json` is not
    /// JSON, or names an unknown field, or has a value of the wrong type. `resource` is
    /// `route/chat-ws`, `path` the field path (`spec.forward.backends[0].wieght`).
    #[error("{resource}: {}", located(.path, .message))]
    BadSpec {
        resource: String,
        path: String,
        message: String,
    },
    /// A checksum field is neither empty nor 64 hex digits.
    #[error(transparent)]
    BadChecksum(#[from] BadChecksum),
    /// The decoded content does not hash to the checksum the message carries.
    #[error(
        "checksum mismatch: the message says {expected}, the decoded content hashes to {actual}"
    )]
    ChecksumMismatch {
        expected: Checksum,
        actual: Checksum,
    },
    /// Two resources with the same kind and name in one snapshot.
    #[error("{0} appears more than once")]
    Duplicate(ResourceKey),
    /// A delta decoded but could not be applied to the base snapshot.
    #[error(transparent)]
    Delta(#[from] DeltaError),
}

/// `path: message`, or `message` alone for an empty path.
fn located(path: &str, message: &str) -> String {
    if path.is_empty() {
        message.to_owned()
    } else {
        format!("{path}: {message}")
    }
}

/// Parses a wire checksum field: empty means "not sent" (`None`), otherwise it must be 64
/// lower- or upper-case hex digits.
pub fn parse_checksum(text: &str) -> Result<Option<Checksum>, WireError> {
    if text.is_empty() {
        Ok(None)
    } else {
        Ok(Some(text.parse()?))
    }
}

/// Checks that `snapshot` hashes to the checksum in `claimed`, when one was sent.
fn verify_checksum(claimed: &str, snapshot: &Snapshot) -> Result<(), WireError> {
    if let Some(expected) = parse_checksum(claimed)? {
        let actual = snapshot.checksum();
        if actual != expected {
            return Err(WireError::ChecksumMismatch { expected, actual });
        }
    }
    Ok(())
}

// ---- Kind ----------------------------------------------------------------------------------

impl From<Kind> for wire::Kind {
    /// Every model kind has a wire number; the mapping is fixed by `sync.proto`.
    fn from(kind: Kind) -> Self {
        match kind {
            Kind::Certificate => wire::Kind::Certificate,
            Kind::Domain => wire::Kind::Domain,
            Kind::Service => wire::Kind::Service,
            Kind::Consumer => wire::Kind::Consumer,
            Kind::Policy => wire::Kind::Policy,
            Kind::Route => wire::Kind::Route,
        }
    }
}

impl TryFrom<wire::Kind> for Kind {
    type Error = WireError;

    /// Fails with [`WireError::MissingField`] for `KIND_UNSPECIFIED`.
    fn try_from(kind: wire::Kind) -> Result<Self, Self::Error> {
        match kind {
            wire::Kind::Unspecified => Err(WireError::MissingField("kind")),
            wire::Kind::Certificate => Ok(Kind::Certificate),
            wire::Kind::Domain => Ok(Kind::Domain),
            wire::Kind::Service => Ok(Kind::Service),
            wire::Kind::Consumer => Ok(Kind::Consumer),
            wire::Kind::Policy => Ok(Kind::Policy),
            wire::Kind::Route => Ok(Kind::Route),
        }
    }
}

/// The wire number of `kind`, as stored in a message's `kind` field.
pub fn kind_to_wire(kind: Kind) -> i32 {
    wire::Kind::from(kind).into()
}

/// Decodes a message's `kind` field: [`WireError::UnknownKind`] for a number outside the enum,
/// [`WireError::MissingField`] for `KIND_UNSPECIFIED` (0).
pub fn kind_from_wire(value: i32) -> Result<Kind, WireError> {
    wire::Kind::try_from(value)
        .map_err(|_| WireError::UnknownKind(value))?
        .try_into()
}

// ---- ResourceKey ---------------------------------------------------------------------------

impl From<&ResourceKey> for wire::ResourceKey {
    fn from(key: &ResourceKey) -> Self {
        Self {
            kind: kind_to_wire(key.kind),
            name: key.name.clone(),
        }
    }
}

impl From<ResourceKey> for wire::ResourceKey {
    fn from(key: ResourceKey) -> Self {
        Self {
            kind: kind_to_wire(key.kind),
            name: key.name,
        }
    }
}

impl TryFrom<wire::ResourceKey> for ResourceKey {
    type Error = WireError;

    /// Fails on an unknown or unset kind, or an empty name. The name's syntax is not checked
    /// here: a key only identifies a resource, and an unknown name simply matches nothing.
    fn try_from(key: wire::ResourceKey) -> Result<Self, Self::Error> {
        let kind = kind_from_wire(key.kind)?;
        if key.name.is_empty() {
            return Err(WireError::MissingField("name"));
        }
        Ok(ResourceKey::new(kind, key.name))
    }
}

// ---- Placement -----------------------------------------------------------------------------

impl From<SelectorOperator> for Operator {
    fn from(operator: SelectorOperator) -> Self {
        match operator {
            SelectorOperator::In => Operator::In,
            SelectorOperator::NotIn => Operator::NotIn,
            SelectorOperator::Exists => Operator::Exists,
            SelectorOperator::DoesNotExist => Operator::DoesNotExist,
        }
    }
}

impl TryFrom<Operator> for SelectorOperator {
    type Error = WireError;

    /// Fails with [`WireError::MissingField`] for `OPERATOR_UNSPECIFIED`.
    fn try_from(operator: Operator) -> Result<Self, Self::Error> {
        match operator {
            Operator::Unspecified => Err(WireError::MissingField("operator")),
            Operator::In => Ok(SelectorOperator::In),
            Operator::NotIn => Ok(SelectorOperator::NotIn),
            Operator::Exists => Ok(SelectorOperator::Exists),
            Operator::DoesNotExist => Ok(SelectorOperator::DoesNotExist),
        }
    }
}

impl From<&SelectorRequirement> for wire::SelectorRequirement {
    fn from(req: &SelectorRequirement) -> Self {
        Self {
            key: req.key.clone(),
            operator: Operator::from(req.operator).into(),
            values: req.values.clone(),
        }
    }
}

impl TryFrom<wire::SelectorRequirement> for SelectorRequirement {
    type Error = WireError;

    /// Fails on an unknown or unset operator. Whether `values` suit the operator is left to
    /// validation, as for a requirement read from a file.
    fn try_from(req: wire::SelectorRequirement) -> Result<Self, Self::Error> {
        let operator = Operator::try_from(req.operator)
            .map_err(|_| WireError::UnknownOperator(req.operator))?;
        Ok(Self {
            key: req.key,
            operator: operator.try_into()?,
            values: req.values,
        })
    }
}

impl From<&Placement> for wire::Placement {
    fn from(placement: &Placement) -> Self {
        Self {
            match_labels: placement.match_labels.clone(),
            match_expressions: placement.match_expressions.iter().map(Into::into).collect(),
        }
    }
}

impl From<Placement> for wire::Placement {
    fn from(placement: Placement) -> Self {
        Self::from(&placement)
    }
}

impl TryFrom<wire::Placement> for Placement {
    type Error = WireError;

    /// Fails when any requirement has an unknown or unset operator.
    fn try_from(placement: wire::Placement) -> Result<Self, Self::Error> {
        Ok(Self {
            match_labels: placement.match_labels,
            match_expressions: placement
                .match_expressions
                .into_iter()
                .map(SelectorRequirement::try_from)
                .collect::<Result<_, _>>()?,
        })
    }
}

// ---- Resource ------------------------------------------------------------------------------

/// The canonical JSON of a spec: compact, struct fields in declaration order, maps ordered.
/// These are the bytes [`Snapshot::canonical_bytes`] embeds for the resource's `spec`.
fn spec_json(spec: &Spec) -> Vec<u8> {
    let encoded = match spec {
        Spec::Certificate(s) => serde_json::to_vec(s),
        Spec::Domain(s) => serde_json::to_vec(s),
        Spec::Service(s) => serde_json::to_vec(s),
        Spec::Consumer(s) => serde_json::to_vec(s),
        Spec::Policy(s) => serde_json::to_vec(s),
        Spec::Route(s) => serde_json::to_vec(s),
    };
    // The model is plain data with string map keys, which serde_json always encodes. Were that
    // ever to change, the receiver would reject the empty spec as a missing field: a loud,
    // per-resource NACK rather than a panic in the sender.
    encoded.unwrap_or_default()
}

impl From<&Resource> for wire::Resource {
    /// Carries the spec as canonical JSON (see `spec_json` in `sync.proto`).
    fn from(resource: &Resource) -> Self {
        Self {
            kind: kind_to_wire(resource.kind()),
            name: resource.name.clone(),
            labels: resource.labels.clone(),
            placement: resource.placement.as_ref().map(Into::into),
            spec_json: spec_json(&resource.spec),
        }
    }
}

impl From<Resource> for wire::Resource {
    fn from(resource: Resource) -> Self {
        Self::from(&resource)
    }
}

impl TryFrom<wire::Resource> for Resource {
    type Error = WireError;

    /// Rebuilds the resource's document (`kind`, `name`, `labels`, `placement`, `spec`) and
    /// decodes it with [`parse_document`], so every check a YAML document gets applies here too:
    /// unknown fields are rejected by name, and a policy's `config` is decoded by its `type`.
    /// Cross-resource validation ([`fleetgate_shared::validate()`]) is the caller's next step.
    fn try_from(resource: wire::Resource) -> Result<Self, Self::Error> {
        let kind = kind_from_wire(resource.kind)?;
        if resource.name.is_empty() {
            return Err(WireError::MissingField("name"));
        }
        if resource.spec_json.is_empty() {
            return Err(WireError::MissingField("spec_json"));
        }
        let placement = resource.placement.map(Placement::try_from).transpose()?;
        let key = format!("{}/{}", kind.slug(), resource.name);
        let bad = |path: &str, message: String| WireError::BadSpec {
            resource: key.clone(),
            path: path.into(),
            message,
        };

        let spec: Value = serde_json::from_slice(&resource.spec_json)
            .map_err(|e| bad("spec", format!("invalid JSON: {e}")))?;
        let mut document = Map::new();
        document.insert("kind".into(), Value::String(kind.as_str().into()));
        document.insert("name".into(), Value::String(resource.name));
        if !resource.labels.is_empty() {
            document.insert(
                "labels".into(),
                Value::Object(
                    resource
                        .labels
                        .into_iter()
                        .map(|(k, v)| (k, Value::String(v)))
                        .collect(),
                ),
            );
        }
        if let Some(placement) = placement {
            let value =
                serde_json::to_value(placement).map_err(|e| bad("placement", e.to_string()))?;
            document.insert("placement".into(), value);
        }
        document.insert("spec".into(), spec);

        parse_document(Value::Object(document)).map_err(|e| bad(&e.path, e.message))
    }
}

// ---- Snapshot ------------------------------------------------------------------------------

impl From<&Snapshot> for wire::Snapshot {
    /// The resources in key order, with the snapshot's content checksum.
    fn from(snapshot: &Snapshot) -> Self {
        Self {
            revision: snapshot.revision,
            resources: snapshot.resources().map(Into::into).collect(),
            checksum: snapshot.checksum().to_string(),
        }
    }
}

impl TryFrom<wire::Snapshot> for Snapshot {
    type Error = WireError;

    /// Decodes every resource (stopping at the first that fails), rejects duplicate keys, and,
    /// when the message carries a checksum, verifies that the decoded content hashes to it.
    fn try_from(snapshot: wire::Snapshot) -> Result<Self, Self::Error> {
        let resources = snapshot
            .resources
            .into_iter()
            .map(Resource::try_from)
            .collect::<Result<Vec<_>, _>>()?;
        let decoded =
            Snapshot::new(snapshot.revision, resources).map_err(|e| WireError::Duplicate(e.0))?;
        verify_checksum(&snapshot.checksum, &decoded)?;
        Ok(decoded)
    }
}

// ---- Delta ---------------------------------------------------------------------------------

impl From<&Delta> for wire::Delta {
    /// The delta without a result checksum (the receiver cannot verify it); prefer
    /// [`wire::Delta::from_model`] when the resulting snapshot is known.
    fn from(delta: &Delta) -> Self {
        Self {
            from: delta.from,
            to: delta.to,
            upserts: delta.upserts.iter().map(Into::into).collect(),
            deletes: delta.deletes.iter().map(Into::into).collect(),
            checksum: String::new(),
        }
    }
}

impl TryFrom<wire::Delta> for Delta {
    type Error = WireError;

    /// Decodes every upsert and delete key. The checksum is not verified here, since it
    /// describes the snapshot the delta produces, which needs a base: use
    /// [`wire::Delta::apply_to`]. Whether the delta fits a base (revisions, duplicates,
    /// deletes of absent keys) is checked by [`Snapshot::apply`].
    fn try_from(delta: wire::Delta) -> Result<Self, Self::Error> {
        Ok(Delta {
            from: delta.from,
            to: delta.to,
            upserts: delta
                .upserts
                .into_iter()
                .map(Resource::try_from)
                .collect::<Result<_, _>>()?,
            deletes: delta
                .deletes
                .into_iter()
                .map(ResourceKey::try_from)
                .collect::<Result<_, _>>()?,
        })
    }
}

impl wire::Delta {
    /// The wire form of `delta`, carrying `result`: the content checksum of the snapshot that
    /// applying the delta to its base produces (for an agent, the snapshot placed on it).
    pub fn from_model(delta: &Delta, result: Checksum) -> Self {
        Self {
            checksum: result.to_string(),
            ..Self::from(delta)
        }
    }

    /// Decodes this delta, applies it to `base`, and verifies the result against the checksum
    /// the message carries (when it carries one). On any error `base` is untouched and the
    /// caller keeps serving it.
    pub fn apply_to(mut self, base: &Snapshot) -> Result<Snapshot, WireError> {
        let checksum = std::mem::take(&mut self.checksum);
        let delta = Delta::try_from(self)?;
        let next = base.apply(&delta)?;
        verify_checksum(&checksum, &next)?;
        Ok(next)
    }
}

// ---- Errors --------------------------------------------------------------------------------

impl From<&ValidationError> for wire::ResourceError {
    fn from(error: &ValidationError) -> Self {
        Self {
            resource: error.resource.clone(),
            path: error.path.clone(),
            message: error.message.clone(),
        }
    }
}

impl From<ValidationError> for wire::ResourceError {
    fn from(error: ValidationError) -> Self {
        Self {
            resource: error.resource,
            path: error.path,
            message: error.message,
        }
    }
}

impl From<wire::ResourceError> for ValidationError {
    /// Field for field; the wire form carries exactly what a validation error says.
    fn from(error: wire::ResourceError) -> Self {
        Self {
            resource: error.resource,
            path: error.path,
            message: error.message,
        }
    }
}

impl From<&WireError> for wire::ResourceError {
    /// How an agent reports a message it could not decode in a `Nack`: per resource when the
    /// error names one, otherwise with an empty `resource`.
    fn from(error: &WireError) -> Self {
        match error {
            WireError::BadSpec {
                resource,
                path,
                message,
            } => Self {
                resource: resource.clone(),
                path: path.clone(),
                message: message.clone(),
            },
            WireError::Duplicate(key) => Self {
                resource: key.to_string(),
                path: String::new(),
                message: "defined more than once".into(),
            },
            other => Self {
                resource: String::new(),
                path: String::new(),
                message: other.to_string(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wire_resource(kind: i32, name: &str, spec_json: &str) -> wire::Resource {
        wire::Resource {
            kind,
            name: name.into(),
            labels: Default::default(),
            placement: None,
            spec_json: spec_json.as_bytes().to_vec(),
        }
    }

    #[test]
    fn every_kind_maps_to_a_wire_number_and_back() {
        for kind in Kind::ALL {
            assert_eq!(kind_from_wire(kind_to_wire(kind)), Ok(kind));
        }
        assert_eq!(kind_to_wire(Kind::Certificate), 1);
        assert_eq!(kind_to_wire(Kind::Route), 6);
    }

    #[test]
    fn unknown_and_unset_kinds_are_rejected() {
        assert_eq!(kind_from_wire(42), Err(WireError::UnknownKind(42)));
        assert_eq!(kind_from_wire(-1), Err(WireError::UnknownKind(-1)));
        assert_eq!(kind_from_wire(0), Err(WireError::MissingField("kind")));
    }

    #[test]
    fn placement_round_trips_and_rejects_bad_operators() {
        let placement = Placement {
            match_labels: [("cloud".to_string(), "aws".to_string())].into(),
            match_expressions: vec![
                SelectorRequirement {
                    key: "region".into(),
                    operator: SelectorOperator::In,
                    values: vec!["eu".into()],
                },
                SelectorRequirement {
                    key: "env".into(),
                    operator: SelectorOperator::DoesNotExist,
                    values: vec![],
                },
            ],
        };
        assert_eq!(
            Placement::try_from(wire::Placement::from(&placement)),
            Ok(placement.clone())
        );

        let mut bad = wire::Placement::from(&placement);
        bad.match_expressions[0].operator = 9;
        assert_eq!(Placement::try_from(bad), Err(WireError::UnknownOperator(9)));
        let mut unset = wire::Placement::from(&placement);
        unset.match_expressions[1].operator = 0;
        assert_eq!(
            Placement::try_from(unset),
            Err(WireError::MissingField("operator"))
        );
    }

    #[test]
    fn resource_needs_a_name_and_a_spec() {
        let route = kind_to_wire(Kind::Route);
        assert_eq!(
            Resource::try_from(wire_resource(route, "", "{}")),
            Err(WireError::MissingField("name"))
        );
        assert_eq!(
            Resource::try_from(wire_resource(route, "r", "")),
            Err(WireError::MissingField("spec_json"))
        );
    }

    #[test]
    fn spec_that_is_not_json_is_a_bad_spec_naming_the_resource() {
        let err = Resource::try_from(wire_resource(kind_to_wire(Kind::Route), "r", "{not json"))
            .unwrap_err();
        match err {
            WireError::BadSpec {
                resource,
                path,
                message,
            } => {
                assert_eq!(resource, "route/r");
                assert_eq!(path, "spec");
                assert!(message.starts_with("invalid JSON"), "{message}");
            }
            other => panic!("expected BadSpec, got {other:?}"),
        }
    }

    #[test]
    fn a_spec_of_the_wrong_kind_is_rejected_with_its_field() {
        // A domain's spec sent as a route: `hosts` is fine for both, `https_redirect` is not a
        // route field.
        let err = Resource::try_from(wire_resource(
            kind_to_wire(Kind::Route),
            "r",
            r#"{"hosts":["a.example.com"],"https_redirect":true}"#,
        ))
        .unwrap_err();
        assert!(err.to_string().contains("https_redirect"), "{err}");
        assert!(err.to_string().starts_with("route/r: spec"), "{err}");
    }

    #[test]
    fn resource_key_round_trips() {
        let key = ResourceKey::new(Kind::Policy, "tenant-limit");
        assert_eq!(
            ResourceKey::try_from(wire::ResourceKey::from(&key)),
            Ok(key)
        );
        let empty = wire::ResourceKey {
            kind: kind_to_wire(Kind::Policy),
            name: String::new(),
        };
        assert_eq!(
            ResourceKey::try_from(empty),
            Err(WireError::MissingField("name"))
        );
    }

    #[test]
    fn validation_errors_cross_the_wire_unchanged() {
        let error = ValidationError {
            resource: "route/chat-ws".into(),
            path: "spec.matches[0].path.regex".into(),
            message: "unclosed group".into(),
        };
        let wire_error = wire::ResourceError::from(&error);
        assert_eq!(wire_error.resource, "route/chat-ws");
        assert_eq!(ValidationError::from(wire_error), error);
    }

    #[test]
    fn wire_errors_become_nack_entries() {
        let bad = WireError::BadSpec {
            resource: "route/r".into(),
            path: "spec.x".into(),
            message: "unknown field".into(),
        };
        let entry = wire::ResourceError::from(&bad);
        assert_eq!(
            (entry.resource.as_str(), entry.path.as_str()),
            ("route/r", "spec.x")
        );
        assert_eq!(bad.to_string(), "route/r: spec.x: unknown field");

        let entry = wire::ResourceError::from(&WireError::UnknownKind(7));
        assert_eq!(entry.resource, "");
        assert_eq!(entry.message, "unknown resource kind number 7");
    }

    #[test]
    fn checksum_field_may_be_empty_but_not_malformed() {
        assert_eq!(parse_checksum(""), Ok(None));
        assert!(matches!(
            parse_checksum("abc"),
            Err(WireError::BadChecksum(_))
        ));
        let sum = Snapshot::default().checksum();
        assert_eq!(parse_checksum(&sum.to_string()), Ok(Some(sum)));
    }
}
