//! Placement consistency: a resource may only refer to resources that every agent holding it
//! also holds.
//!
//! An agent receives the resources whose placement selects it ([`crate::Snapshot::select`]) and
//! validates that part on its own. A reference to a resource placed on fewer agents dangles on
//! the others, which then reject the whole revision. Whether one selector's agents are a subset
//! of another's depends on which labels agents will carry, so the rule here is deliberately
//! simple and easy to predict: the referred-to resource has no placement (it is everywhere), or
//! the same placement as the resource that refers to it.
//!
//! "The same" compares what the placements select, not how they are spelled: `match_labels:
//! {k: v}` is the requirement `{key: k, operator: In, values: [v]}`, and neither the order of
//! requirements nor the order of values matters. An empty placement selects every agent, like
//! no placement.

use std::collections::BTreeSet;

use super::{Check, Index};
use crate::model::{Kind, Placement, Resource, SelectorOperator, Spec};

/// Reports every reference to a resource whose placement is neither absent nor the same as the
/// referring resource's. References to resources that do not exist are reported elsewhere.
pub(super) fn check(resources: &[&Resource], index: &Index<'_>, check: &mut Check<'_>) {
    for resource in resources {
        let here = selection(resource.placement.as_ref());
        check.resource = resource.key().to_string();
        for reference in references(resource) {
            let Some(target) = index.get(reference.kind, reference.name) else {
                continue;
            };
            let there = selection(target.placement.as_ref());
            if !there.is_empty() && there != here {
                let target = target.key();
                check.fail(
                    &reference.path,
                    format!(
                        "refers to {target}, which may be placed on fewer agents (placement differs); place both the same way or remove {target}'s placement"
                    ),
                );
            }
        }
    }
}

/// One by-name reference from a resource to another, with the field that makes it.
pub(super) struct Reference<'a> {
    pub(super) path: String,
    pub(super) kind: Kind,
    pub(super) name: &'a str,
}

/// The kinds whose resources can refer by name to a resource of `kind`: what [`references`]
/// can name, read the other way. A change to a `kind` resource can break only these.
pub(super) fn referring_kinds(kind: Kind) -> &'static [Kind] {
    match kind {
        Kind::Certificate => &[Kind::Domain],
        Kind::Policy => &[Kind::Domain, Kind::Consumer, Kind::Route],
        Kind::Consumer | Kind::Domain | Kind::Route => &[Kind::Policy],
        Kind::Service => &[Kind::Route],
    }
}

/// Every by-name reference `resource` makes, in field order.
pub(super) fn references<'a>(resource: &'a Resource) -> Vec<Reference<'a>> {
    let mut out = Vec::new();
    let mut add = |path: String, kind: Kind, name: &'a str| {
        out.push(Reference { path, kind, name });
    };
    match &resource.spec {
        Spec::Certificate(_) | Spec::Service(_) => {}
        Spec::Domain(domain) => {
            if let Some(name) = &domain.certificate {
                add("spec.certificate".into(), Kind::Certificate, name);
            }
            for (i, name) in domain.policies.iter().enumerate() {
                add(format!("spec.policies[{i}]"), Kind::Policy, name);
            }
        }
        Spec::Consumer(consumer) => {
            for name in consumer.rate_limits.keys() {
                add(format!("spec.rate_limits.{name}"), Kind::Policy, name);
            }
        }
        Spec::Policy(policy) => {
            for (path, name) in policy.config.consumer_refs() {
                add(path, Kind::Consumer, name);
            }
            for (i, name) in policy.scope.domains.iter().enumerate() {
                add(format!("spec.scope.domains[{i}]"), Kind::Domain, name);
            }
            for (i, name) in policy.scope.routes.iter().enumerate() {
                add(format!("spec.scope.routes[{i}]"), Kind::Route, name);
            }
        }
        Spec::Route(route) => {
            if let Some(forward) = &route.forward {
                for (i, backend) in forward.backends.iter().enumerate() {
                    add(
                        format!("spec.forward.backends[{i}].service"),
                        Kind::Service,
                        &backend.service,
                    );
                }
                for (i, rule) in forward.canary.iter().enumerate() {
                    for (j, backend) in rule.backends.iter().enumerate() {
                        add(
                            format!("spec.forward.canary[{i}].backends[{j}].service"),
                            Kind::Service,
                            &backend.service,
                        );
                    }
                }
                if let Some(mirror) = &forward.mirror {
                    add(
                        "spec.forward.mirror.service".into(),
                        Kind::Service,
                        &mirror.service,
                    );
                }
            }
            for (i, name) in route.policies.iter().enumerate() {
                add(format!("spec.policies[{i}]"), Kind::Policy, name);
            }
        }
    }
    out
}

/// One requirement of a placement in a spelling-independent form.
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Requirement<'a> {
    key: &'a str,
    operator: &'static str,
    values: BTreeSet<&'a str>,
}

/// What a placement requires of an agent, as a set: empty for no placement or an empty one.
fn selection(placement: Option<&Placement>) -> BTreeSet<Requirement<'_>> {
    let Some(placement) = placement else {
        return BTreeSet::new();
    };
    let labels = placement
        .match_labels
        .iter()
        .map(|(key, value)| Requirement {
            key,
            operator: "In",
            values: BTreeSet::from([value.as_str()]),
        });
    let expressions = placement.match_expressions.iter().map(|req| Requirement {
        key: &req.key,
        operator: match req.operator {
            SelectorOperator::In => "In",
            SelectorOperator::NotIn => "NotIn",
            SelectorOperator::Exists => "Exists",
            SelectorOperator::DoesNotExist => "DoesNotExist",
        },
        values: req.values.iter().map(String::as_str).collect(),
    });
    labels.chain(expressions).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::SelectorRequirement;

    fn requirement(key: &str, operator: SelectorOperator, values: &[&str]) -> SelectorRequirement {
        SelectorRequirement {
            key: key.into(),
            operator,
            values: values.iter().map(|v| v.to_string()).collect(),
        }
    }

    #[test]
    fn selections_compare_meaning_not_spelling() {
        let labels = Placement {
            match_labels: [("jurisdiction".to_string(), "eu".to_string())].into(),
            match_expressions: vec![],
        };
        let expression = Placement {
            match_labels: Default::default(),
            match_expressions: vec![requirement("jurisdiction", SelectorOperator::In, &["eu"])],
        };
        assert_eq!(selection(Some(&labels)), selection(Some(&expression)));

        let ab = Placement {
            match_labels: Default::default(),
            match_expressions: vec![
                requirement("cloud", SelectorOperator::In, &["aws", "gcp"]),
                requirement("tier", SelectorOperator::Exists, &[]),
            ],
        };
        let ba = Placement {
            match_labels: Default::default(),
            match_expressions: vec![
                requirement("tier", SelectorOperator::Exists, &[]),
                requirement("cloud", SelectorOperator::In, &["gcp", "aws"]),
            ],
        };
        assert_eq!(selection(Some(&ab)), selection(Some(&ba)));
        assert_ne!(selection(Some(&ab)), selection(Some(&labels)));

        // An empty placement selects every agent, like none.
        assert!(selection(Some(&Placement::default())).is_empty());
        assert!(selection(None).is_empty());
    }
}
