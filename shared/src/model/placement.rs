use serde::{Deserialize, Serialize};

use super::Labels;

/// A label selector over agent labels: which agents receive a resource.
///
/// An agent is selected when it has every label in `match_labels` and satisfies every
/// requirement in `match_expressions`. An empty placement selects every agent.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Placement {
    #[serde(default, skip_serializing_if = "Labels::is_empty")]
    pub match_labels: Labels,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub match_expressions: Vec<SelectorRequirement>,
}

/// One requirement on one agent label.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SelectorRequirement {
    pub key: String,
    pub operator: SelectorOperator,
    /// The values for `In` and `NotIn`; must be empty for `Exists` and `DoesNotExist`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<String>,
}

/// How a [`SelectorRequirement`] compares the label's value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SelectorOperator {
    In,
    NotIn,
    Exists,
    DoesNotExist,
}

impl Placement {
    /// Whether an agent with `labels` is selected.
    pub fn selects(&self, labels: &Labels) -> bool {
        self.match_labels
            .iter()
            .all(|(k, v)| labels.get(k) == Some(v))
            && self.match_expressions.iter().all(|req| req.holds(labels))
    }
}

impl SelectorRequirement {
    /// Whether `labels` satisfy this requirement.
    pub fn holds(&self, labels: &Labels) -> bool {
        let value = labels.get(&self.key);
        match self.operator {
            SelectorOperator::In => value.is_some_and(|v| self.values.contains(v)),
            SelectorOperator::NotIn => value.is_none_or(|v| !self.values.contains(v)),
            SelectorOperator::Exists => value.is_some(),
            SelectorOperator::DoesNotExist => value.is_none(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn match_labels_and_expressions_must_all_hold() {
        let placement = Placement {
            match_labels: labels(&[("cloud", "aws")]),
            match_expressions: vec![SelectorRequirement {
                key: "region".into(),
                operator: SelectorOperator::In,
                values: vec!["eu-west-1".into(), "eu-central-1".into()],
            }],
        };
        assert!(placement.selects(&labels(&[("cloud", "aws"), ("region", "eu-west-1")])));
        assert!(!placement.selects(&labels(&[("cloud", "gcp"), ("region", "eu-west-1")])));
        assert!(!placement.selects(&labels(&[("cloud", "aws")])));
        assert!(Placement::default().selects(&labels(&[])));
    }

    #[test]
    fn not_in_and_does_not_exist_select_agents_without_the_label() {
        let not_in = SelectorRequirement {
            key: "env".into(),
            operator: SelectorOperator::NotIn,
            values: vec!["prod".into()],
        };
        assert!(not_in.holds(&labels(&[])));
        assert!(not_in.holds(&labels(&[("env", "dev")])));
        assert!(!not_in.holds(&labels(&[("env", "prod")])));
        let absent = SelectorRequirement {
            key: "env".into(),
            operator: SelectorOperator::DoesNotExist,
            values: vec![],
        };
        assert!(absent.holds(&labels(&[])));
        assert!(!absent.holds(&labels(&[("env", "dev")])));
    }
}
