//! The resource model: what operators write and what every component exchanges.
//!
//! A [`Resource`] is `kind` + `name` + optional `labels` and [`Placement`] + a typed [`Spec`].
//! The types here are plain data: they derive `Eq` so that snapshots can be compared, and they
//! hold no floats and no hash maps so that their serde encoding is canonical (see
//! [`crate::snapshot::Checksum`]).

mod certificate;
mod consumer;
mod domain;
mod placement;
mod policy;
mod route;
mod service;

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

pub use certificate::CertificateSpec;
pub use consumer::{
    BasicCredential, ConsumerCredentials, ConsumerSpec, HmacCredential, JwtCredential,
};
pub use domain::{DomainSpec, TlsVersion};
pub use placement::{Placement, SelectorOperator, SelectorRequirement};
pub use policy::*;
pub use route::*;
pub use service::*;

/// Labels on a resource or an agent: `key: value` pairs, ordered for a canonical encoding.
pub type Labels = BTreeMap<String, String>;

/// The kinds of resource, in the order they are listed and validated.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Kind {
    Certificate,
    Domain,
    Service,
    Consumer,
    Policy,
    Route,
}

impl Kind {
    /// Every kind, in dependency order (a kind only refers to kinds listed before it, except
    /// that domains and routes refer to policies).
    pub const ALL: [Kind; 6] = [
        Kind::Certificate,
        Kind::Domain,
        Kind::Service,
        Kind::Consumer,
        Kind::Policy,
        Kind::Route,
    ];

    /// The name used in documents (`kind: Route`).
    pub const fn as_str(self) -> &'static str {
        match self {
            Kind::Certificate => "Certificate",
            Kind::Domain => "Domain",
            Kind::Service => "Service",
            Kind::Consumer => "Consumer",
            Kind::Policy => "Policy",
            Kind::Route => "Route",
        }
    }

    /// The lower-case name used in error messages and API paths (`route/chat-ws`).
    pub const fn slug(self) -> &'static str {
        match self {
            Kind::Certificate => "certificate",
            Kind::Domain => "domain",
            Kind::Service => "service",
            Kind::Consumer => "consumer",
            Kind::Policy => "policy",
            Kind::Route => "route",
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A string that names no kind.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown kind `{0}`, expected one of Certificate, Domain, Service, Consumer, Policy, Route"
)]
pub struct UnknownKind(pub String);

impl FromStr for Kind {
    type Err = UnknownKind;

    /// Accepts the document form (`Route`) and the slug (`route`), plus the plural slug
    /// (`routes`) that API paths and the CLI use.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let lower = s.to_ascii_lowercase();
        let singular = lower
            .strip_suffix("ies")
            .map(|stem| format!("{stem}y"))
            .or_else(|| lower.strip_suffix('s').map(str::to_owned))
            .unwrap_or_else(|| lower.clone());
        Kind::ALL
            .into_iter()
            .find(|k| k.slug() == lower || k.slug() == singular)
            .ok_or_else(|| UnknownKind(s.to_owned()))
    }
}

/// The identity of a resource: unique within a snapshot.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ResourceKey {
    pub kind: Kind,
    pub name: String,
}

impl ResourceKey {
    /// The key of the resource of `kind` named `name`.
    pub fn new(kind: Kind, name: impl Into<String>) -> Self {
        Self {
            kind,
            name: name.into(),
        }
    }
}

impl fmt::Display for ResourceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.kind.slug(), self.name)
    }
}

/// One resource: what a document in a bundle describes.
///
/// Serialized in document form (`kind`, `name`, `labels`, `placement`, `spec`); deserialized
/// through [`crate::bundle::parse_document`], so every entry point applies the same checks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resource {
    /// Unique per kind; a DNS-label-like name (`[a-z0-9]([-a-z0-9.]*[a-z0-9])?`, at most 253 bytes).
    pub name: String,
    /// Free-form labels for operators and tooling.
    pub labels: Labels,
    /// Which agents receive this resource; `None` means every agent.
    pub placement: Option<Placement>,
    /// The kind-specific content.
    pub spec: Spec,
}

impl Serialize for Resource {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let fields =
            3 + usize::from(!self.labels.is_empty()) + usize::from(self.placement.is_some());
        let mut doc = serializer.serialize_struct("Resource", fields)?;
        doc.serialize_field("kind", &self.kind())?;
        doc.serialize_field("name", &self.name)?;
        if !self.labels.is_empty() {
            doc.serialize_field("labels", &self.labels)?;
        }
        if let Some(placement) = &self.placement {
            doc.serialize_field("placement", placement)?;
        }
        match &self.spec {
            Spec::Certificate(s) => doc.serialize_field("spec", s)?,
            Spec::Domain(s) => doc.serialize_field("spec", s)?,
            Spec::Service(s) => doc.serialize_field("spec", s)?,
            Spec::Consumer(s) => doc.serialize_field("spec", s)?,
            Spec::Policy(s) => doc.serialize_field("spec", s)?,
            Spec::Route(s) => doc.serialize_field("spec", s)?,
        }
        doc.end()
    }
}

impl<'de> Deserialize<'de> for Resource {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = serde_json::Value::deserialize(deserializer)?;
        crate::bundle::parse_document(value).map_err(|e| serde::de::Error::custom(e.to_string()))
    }
}

impl Resource {
    /// The resource's kind.
    pub fn kind(&self) -> Kind {
        self.spec.kind()
    }

    /// The resource's identity.
    pub fn key(&self) -> ResourceKey {
        ResourceKey::new(self.kind(), self.name.clone())
    }
}

/// The typed content of a resource, one variant per kind.
// Resources live in maps and are compiled once per config version, never moved on a hot path,
// so the size difference between variants costs nothing worth a Box in every match.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Spec {
    Certificate(CertificateSpec),
    Domain(DomainSpec),
    Service(ServiceSpec),
    Consumer(ConsumerSpec),
    Policy(PolicySpec),
    Route(RouteSpec),
}

impl Spec {
    /// The kind this spec belongs to.
    pub fn kind(&self) -> Kind {
        match self {
            Spec::Certificate(_) => Kind::Certificate,
            Spec::Domain(_) => Kind::Domain,
            Spec::Service(_) => Kind::Service,
            Spec::Consumer(_) => Kind::Consumer,
            Spec::Policy(_) => Kind::Policy,
            Spec::Route(_) => Kind::Route,
        }
    }
}

pub(crate) fn is_default<T: Default + PartialEq>(value: &T) -> bool {
    *value == T::default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kind_parses_document_slug_and_plural_forms() {
        assert_eq!("Route".parse::<Kind>(), Ok(Kind::Route));
        assert_eq!("routes".parse::<Kind>(), Ok(Kind::Route));
        assert_eq!("policies".parse::<Kind>(), Ok(Kind::Policy));
        assert_eq!("CERTIFICATE".parse::<Kind>(), Ok(Kind::Certificate));
        assert!("Gateway".parse::<Kind>().is_err());
    }
}
