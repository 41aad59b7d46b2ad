//! One compiled config version: everything a request needs, immutable once built.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use rustc_hash::FxHashMap;

use fleetgate_agent_route::RouteTable;
use fleetgate_shared::model::{Kind, Spec};
use fleetgate_shared::{Checksum, Snapshot, ValidationError};

use crate::tls::TlsTable;
use crate::upstream::{ServiceRuntime, UpstreamClients};

/// Where a generation's snapshot came from, as reported on `/config`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ConfigSource {
    /// Nothing loaded yet.
    None,
    /// A file or directory in standalone mode.
    File,
    /// The agent's persisted snapshot, loaded at start.
    Disk,
    /// A manager, over the sync protocol.
    Manager,
}

/// A compiled config: the route table, the services it forwards to, TLS by SNI, and the
/// HTTPS-redirect hosts. Built off the request path and published with one pointer swap.
#[derive(Debug)]
pub struct Generation {
    pub revision: u64,
    pub checksum: Checksum,
    pub source: ConfigSource,
    pub applied_at: SystemTime,
    pub resource_count: usize,
    pub routes: RouteTable,
    /// The maps read on every request are keyed by config names and use a fast non-keyed
    /// hash (a request can look a name up but never add one).
    pub services: FxHashMap<String, Arc<ServiceRuntime>>,
    pub tls: TlsTable,
    /// The policy chains: global, per domain, per route.
    pub policies: fleetgate_agent_policy::PolicySet,
    /// Hosts whose plain-HTTP requests are redirected to HTTPS.
    pub https_redirect: fleetgate_agent_route::hosts::HostMap<()>,
    /// Counters of this generation's routes, by route name (filled in when published; shared
    /// with the previous generation when the route names are the same).
    pub route_stats: Arc<FxHashMap<String, Arc<crate::stats::RouteStats>>>,
    /// Retry budgets of the routes that retry, kept across versions for routes that still
    /// retry (a config change does not hand a failing endpoint a fresh budget).
    retry_budgets: Arc<FxHashMap<String, Arc<RetryBudget>>>,
}

impl Generation {
    /// The generation before any config is loaded: every request gets 404.
    pub fn empty() -> Self {
        Self {
            revision: 0,
            checksum: Snapshot::default().checksum(),
            source: ConfigSource::None,
            applied_at: SystemTime::now(),
            resource_count: 0,
            routes: RouteTable::empty(),
            services: FxHashMap::default(),
            tls: TlsTable::default(),
            policies: Default::default(),
            https_redirect: Default::default(),
            retry_budgets: Default::default(),
            route_stats: Default::default(),
        }
    }

    /// The retry budget of a route that has retries.
    pub fn retry_budget(&self, route: &str) -> Option<&RetryBudget> {
        self.retry_budgets.get(route).map(|b| &**b)
    }

    /// Validates and compiles `snapshot`. `base` is the snapshot `previous` was compiled from,
    /// if any: then only what changed from it is validated again, and routes it shares with
    /// `snapshot` are taken over compiled. Service runtimes whose spec is unchanged from
    /// `previous` are reused, keeping their balancer, health and ejection state. Any error
    /// (validation, or a certificate this host cannot load) rejects the whole snapshot and
    /// returns every problem; the caller keeps serving `previous`.
    pub fn compile(
        snapshot: &Snapshot,
        source: ConfigSource,
        previous: &Generation,
        base: Option<&Snapshot>,
        clients: &UpstreamClients,
        policy_state: &fleetgate_agent_policy::PolicyState,
    ) -> Result<Generation, Vec<ValidationError>> {
        match base {
            Some(base) => fleetgate_shared::validate_change(base, snapshot)?,
            None => snapshot.validate()?,
        }
        let routes = match base {
            Some(base) => RouteTable::compile_change(base, snapshot, &previous.routes)?,
            None => RouteTable::compile_validated(snapshot, &previous.routes)?,
        };
        let mut policies = fleetgate_agent_policy::PolicySet::compile_from(
            snapshot,
            policy_state,
            &previous.policies,
        )?;
        policies.index_routes(routes.routes().map(|route| route.name.as_str()));
        let mut services = FxHashMap::default();
        let mut domains = Vec::new();
        let mut certificates = HashMap::new();
        for (_, resource) in snapshot.of_kind(Kind::Service) {
            let Spec::Service(spec) = &resource.spec else {
                continue;
            };
            let runtime = match previous.services.get(&resource.name) {
                Some(old) if old.spec == *spec => old.clone(),
                _ => {
                    let client = clients.for_service(spec).map_err(|message| {
                        vec![ValidationError {
                            resource: resource.key().to_string(),
                            path: "spec.tls".into(),
                            message,
                        }]
                    })?;
                    ServiceRuntime::new(&resource.name, spec, client)
                }
            };
            services.insert(resource.name.clone(), runtime);
        }
        for (_, resource) in snapshot.of_kind(Kind::Domain) {
            if let Spec::Domain(spec) = &resource.spec {
                domains.push((resource.name.as_str(), spec));
            }
        }
        for (_, resource) in snapshot.of_kind(Kind::Certificate) {
            if let Spec::Certificate(spec) = &resource.spec {
                certificates.insert(resource.name.as_str(), spec);
            }
        }
        let tls = TlsTable::build(&domains, &certificates).map_err(|(domain, message)| {
            vec![ValidationError {
                resource: fleetgate_shared::ResourceKey::new(Kind::Domain, domain).to_string(),
                path: "spec.certificate".into(),
                message,
            }]
        })?;
        let mut https_redirect = fleetgate_agent_route::hosts::HostMap::default();
        for (_, spec) in &domains {
            if spec.https_redirect {
                for host in &spec.hosts {
                    https_redirect.insert(host, ());
                }
            }
        }
        let retry_budgets = retry_budgets(snapshot, base, &routes, previous);
        Ok(Generation {
            revision: snapshot.revision,
            checksum: snapshot.checksum(),
            source,
            applied_at: SystemTime::now(),
            resource_count: snapshot.len(),
            routes,
            services,
            tls,
            policies,
            https_redirect,
            retry_budgets,
            route_stats: Default::default(),
        })
    }
}

/// Whether a route's spec asks for retries.
fn retries(spec: &fleetgate_shared::model::RouteSpec) -> bool {
    spec.forward.as_ref().is_some_and(|f| f.retries.is_some())
}

/// The retry budgets of `routes`, taken over from `previous` by route name. When `routes`
/// holds the same names as `previous.routes` and `snapshot` is a change from `base`, only the
/// changed routes are looked at; otherwise every route.
fn retry_budgets(
    snapshot: &Snapshot,
    base: Option<&Snapshot>,
    routes: &RouteTable,
    previous: &Generation,
) -> Arc<FxHashMap<String, Arc<RetryBudget>>> {
    let old = &previous.retry_budgets;
    let take = |name: &str| old.get(name).cloned().unwrap_or_default();
    if let Some(base) = base
        && routes.same_names(&previous.routes)
    {
        let mut budgets = old.clone();
        for change in fleetgate_shared::changes(base, snapshot) {
            if let fleetgate_shared::Change::Changed(key, resource) = change
                && let Spec::Route(spec) = &resource.spec
                && retries(spec) != budgets.contains_key(&key.name)
            {
                let budgets = Arc::make_mut(&mut budgets);
                if retries(spec) {
                    budgets.insert(key.name.clone(), take(&key.name));
                } else {
                    budgets.remove(&key.name);
                }
            }
        }
        return budgets;
    }
    Arc::new(
        routes
            .routes()
            .filter(|r| retries(&r.spec))
            .map(|r| (r.name.clone(), take(&r.name)))
            .collect(),
    )
}

/// Retries allowed per window even when the percentage would allow none, so that a route
/// with little traffic can still retry a failed connect.
const RETRY_FLOOR: u64 = 10;
/// The budget counts requests and retries over windows of this length.
const RETRY_WINDOW_MS: u64 = 10_000;

/// Caps retries at a share of a route's requests, so that retries absorb a failing endpoint
/// without multiplying an overload.
#[derive(Debug, Default)]
pub struct RetryBudget {
    window_start: AtomicU64,
    requests: AtomicU64,
    retries: AtomicU64,
}

impl RetryBudget {
    fn roll(&self) {
        let now = crate::upstream::now_ms();
        let start = self.window_start.load(Ordering::Relaxed);
        if now.saturating_sub(start) >= RETRY_WINDOW_MS
            && self
                .window_start
                .compare_exchange(start, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            self.requests.store(0, Ordering::Relaxed);
            self.retries.store(0, Ordering::Relaxed);
        }
    }

    /// Counts one request.
    pub fn record_request(&self) {
        self.roll();
        self.requests.fetch_add(1, Ordering::Relaxed);
    }

    /// Takes one retry from the budget if `percent` of this window's requests (plus a small
    /// floor) allows it.
    pub fn try_spend(&self, percent: u8) -> bool {
        let allowed =
            self.requests.load(Ordering::Relaxed) * u64::from(percent) / 100 + RETRY_FLOOR;
        if self.retries.fetch_add(1, Ordering::Relaxed) < allowed {
            true
        } else {
            self.retries.fetch_sub(1, Ordering::Relaxed);
            false
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use fleetgate_shared::{Resource, ResourceKey};

    const CONFIG: &str = r#"
kind: Service
name: app
spec:
  endpoints: [{address: "127.0.0.1:9"}]
---
kind: Route
name: a
spec:
  hosts: [a.test]
  forward: {backends: [{service: app}], retries: {attempts: 2}}
---
kind: Route
name: b
spec:
  hosts: [b.test]
  forward: {backends: [{service: app}]}
"#;

    fn with_route(base: &Snapshot, name: &str, change: impl FnOnce(&mut Resource)) -> Snapshot {
        let mut resource = base
            .get(&ResourceKey::new(Kind::Route, name))
            .unwrap()
            .clone();
        change(&mut resource);
        base.with(resource)
    }

    fn forward(resource: &mut Resource) -> &mut fleetgate_shared::model::Forward {
        match &mut resource.spec {
            Spec::Route(route) => route.forward.as_mut().unwrap(),
            _ => unreachable!("a route"),
        }
    }

    #[test]
    fn a_retry_budget_survives_changes_until_its_route_stops_retrying() {
        let resources =
            fleetgate_shared::parse_bundle(CONFIG, fleetgate_shared::bundle::Format::Yaml, "")
                .unwrap();
        let first = Snapshot::new(1, resources).unwrap();
        let (clients, state) = (UpstreamClients::default(), Default::default());
        let compile = |snapshot: &Snapshot, previous: &Generation, base: Option<&Snapshot>| {
            Generation::compile(
                snapshot,
                ConfigSource::File,
                previous,
                base,
                &clients,
                &state,
            )
            .unwrap()
        };
        let one = compile(&first, &Generation::empty(), None);
        let budget = one.retry_budgets.get("a").unwrap().clone();
        assert!(one.retry_budget("b").is_none());

        // Route b starts retrying: a keeps its budget (and the requests it counted), b gets one.
        budget.record_request();
        let mut a = first
            .get(&ResourceKey::new(Kind::Route, "a"))
            .unwrap()
            .clone();
        let retries = forward(&mut a).retries.clone();
        let second = with_route(&first, "b", |r| forward(r).retries = retries);
        let two = compile(&second, &one, Some(&first));
        assert!(Arc::ptr_eq(two.retry_budgets.get("a").unwrap(), &budget));
        assert!(two.retry_budget("b").is_some());

        // The same change compiled whole (no base) keeps the budget too.
        let whole = compile(&second, &one, None);
        assert!(Arc::ptr_eq(whole.retry_budgets.get("a").unwrap(), &budget));

        // Route a stops retrying: its budget goes.
        let third = with_route(&second, "a", |r| forward(r).retries = None);
        let three = compile(&third, &two, Some(&second));
        assert!(three.retry_budget("a").is_none());
        assert!(three.retry_budget("b").is_some());
    }
}
