//! Which routes claim which (host, priority, path): the index behind the ambiguity rule when a
//! change is validated, so that checking one changed route looks up the few routes it can
//! collide with instead of reading every route in the config.
//!
//! Two routes can only be ambiguous (validation's rule: same host, same match, same priority)
//! if they share a claim. The index is a persistent map carried from snapshot to snapshot by
//! [`crate::Snapshot::apply`]: a delta patches the claims of the routes it touches.

use imbl::OrdMap;

use crate::model::{PathMatch, Resource, RouteSpec, Spec};

/// A host a route serves (`*` when it names none), its priority, and the path condition of one
/// of its matches (`None` for a match without one, or a route without matches).
pub(crate) type Claim = (String, i32, Option<PathMatch>);

/// Route names by claim; each list sorted and without repeats.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct RouteClaims(OrdMap<Claim, Vec<String>>);

/// The hosts a route claims: its hosts, or `*` when it has none.
pub(crate) fn route_hosts(route: &RouteSpec) -> impl Iterator<Item = &str> {
    let any = route.hosts.is_empty().then_some("*");
    route.hosts.iter().map(String::as_str).chain(any)
}

/// The path conditions of a route's matches (one, `None`, when it has no matches).
pub(crate) fn route_paths(route: &RouteSpec) -> impl Iterator<Item = &Option<PathMatch>> {
    const ANY: &Option<PathMatch> = &None;
    let any = route.matches.is_empty().then_some(ANY);
    route.matches.iter().map(|m| &m.path).chain(any)
}

/// Every claim of `route`, without repeats.
pub(crate) fn claims_of(route: &RouteSpec) -> Vec<Claim> {
    let mut out: Vec<Claim> = route_hosts(route)
        .flat_map(|host| {
            route_paths(route).map(move |path| (host.to_owned(), route.priority, path.clone()))
        })
        .collect();
    out.sort();
    out.dedup();
    out
}

fn route_spec(resource: &Resource) -> Option<&RouteSpec> {
    match &resource.spec {
        Spec::Route(route) => Some(route),
        _ => None,
    }
}

impl RouteClaims {
    /// The claims of every route among `resources`.
    pub(crate) fn of<'a>(resources: impl Iterator<Item = &'a Resource>) -> Self {
        let mut pairs: Vec<(Claim, &str)> = Vec::new();
        for resource in resources {
            if let Some(route) = route_spec(resource) {
                pairs.extend(
                    claims_of(route)
                        .into_iter()
                        .map(|claim| (claim, resource.name.as_str())),
                );
            }
        }
        pairs.sort_unstable();
        pairs.dedup();
        let mut map = OrdMap::new();
        for group in pairs.chunk_by(|a, b| a.0 == b.0) {
            let names = group.iter().map(|(_, name)| (*name).to_owned()).collect();
            map.insert(group[0].0.clone(), names);
        }
        Self(map)
    }

    /// Replaces the claims of `old` (a resource being changed or removed) by those of `new` (its
    /// new version, or an added resource). Resources that are not routes claim nothing.
    pub(crate) fn replace(&mut self, old: Option<&Resource>, new: Option<&Resource>) {
        if let Some(old) = old
            && let Some(route) = route_spec(old)
        {
            for claim in claims_of(route) {
                let emptied = self.0.get_mut(&claim).is_some_and(|names| {
                    names.retain(|n| *n != old.name);
                    names.is_empty()
                });
                if emptied {
                    self.0.remove(&claim);
                }
            }
        }
        if let Some(new) = new
            && let Some(route) = route_spec(new)
        {
            for claim in claims_of(route) {
                let names = self.0.entry(claim).or_default();
                if let Err(at) = names.binary_search(&new.name) {
                    names.insert(at, new.name.clone());
                }
            }
        }
    }

    /// The names of the routes that make `claim`.
    pub(crate) fn claiming(&self, claim: &Claim) -> &[String] {
        self.0.get(claim).map_or(&[], Vec::as_slice)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bundle::{Format, parse_bundle};
    use crate::{Delta, Snapshot};

    fn route(name: &str, hosts: &str, priority: i32, paths: &[&str]) -> Resource {
        let matches: Vec<String> = paths
            .iter()
            .map(|p| format!("{{ path: {{ prefix: {p} }} }}"))
            .collect();
        let yaml = format!(
            "kind: Route\nname: {name}\nspec:\n  hosts: [{hosts}]\n  priority: {priority}\n  matches: [{}]\n  direct_response: {{ status: 200 }}\n",
            matches.join(", ")
        );
        parse_bundle(&yaml, Format::Yaml, "")
            .expect("the test's route parses")
            .remove(0)
    }

    #[test]
    fn claims_carried_through_deltas_equal_claims_built_from_scratch() {
        // Seeded, so the sequence is the same on every run.
        let mut rng = fastrand::Rng::with_seed(0x9e37_79b9_7f4a_7c15);
        let mut next = move |n: u64| rng.u64(..n);
        let hosts = [
            "",
            "'a.example'",
            "'b.example'",
            "'a.example', 'b.example'",
            "'*.example'",
        ];
        let paths = ["/", "/api", "/api/v2", "/static"];
        let mut snapshot = Snapshot::new(1, Vec::new()).expect("empty");
        assert!(!snapshot.has_route_claims(), "built on first use only");
        snapshot.prepare_for_changes();
        assert!(snapshot.clone().has_route_claims(), "clones share it");
        for step in 0..400u64 {
            let mut delta = Delta {
                from: snapshot.revision,
                to: snapshot.revision + 1,
                upserts: Vec::new(),
                deletes: Vec::new(),
            };
            // Half of the steps upsert (add, or change hosts, priority or paths, keeping
            // several routes on one claim now and then); the rest delete a present route.
            let name = format!("r{}", next(12));
            let key = crate::ResourceKey::new(crate::Kind::Route, &name);
            if next(2) == 0 && snapshot.get(&key).is_some() {
                delta.deletes.push(key);
            } else {
                let count = 1 + next(3) as usize;
                let chosen: Vec<&str> = (0..count).map(|_| paths[next(4) as usize]).collect();
                let priority = i32::try_from(next(2)).expect("small");
                delta
                    .upserts
                    .push(route(&name, hosts[next(5) as usize], priority, &chosen));
            }
            snapshot = snapshot.apply(&delta).expect("the delta fits");
            assert!(
                snapshot.has_route_claims(),
                "step {step}: apply did not carry the claims forward"
            );
            assert_eq!(
                *snapshot.route_claims(),
                RouteClaims::of(snapshot.resources()),
                "step {step}: the claims carried through {delta:?} differ from a fresh build"
            );
        }
        assert!(snapshot.len() > 3, "the walk should leave several routes");
    }
}
