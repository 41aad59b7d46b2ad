use std::borrow::Cow;
use std::collections::HashMap;

use fleetgate_agent_route::hosts::HostMap;
use rustc_hash::FxHashMap;
use std::sync::Arc;

use fleetgate_shared::model::{Kind, ResourceKey, Spec};
use fleetgate_shared::{SharedResource, Snapshot, ValidationError};

use crate::chain::Chain;
use crate::context::ConsumerEntry;
use crate::plugin::Plugin;
use crate::plugins;
use crate::state::PolicyState;

/// A map an auth plugin reads on every request, hashed with foldhash (seeded per process):
/// SipHash over a key or subject cost as much as the rest of key-auth's lookup.
pub type ConsumerMap<V> = HashMap<String, V, foldhash::fast::RandomState>;

/// Every consumer and the credentials that identify it, indexed for the auth plugins.
#[derive(Debug, Default)]
pub struct Consumers {
    pub by_name: ConsumerMap<Arc<ConsumerEntry>>,
    /// API key → consumer.
    pub by_key: ConsumerMap<Arc<ConsumerEntry>>,
    /// JWT subject → consumer.
    pub by_jwt_subject: ConsumerMap<Arc<ConsumerEntry>>,
    /// HMAC key id → (secret, consumer).
    pub by_hmac_key: ConsumerMap<(String, Arc<ConsumerEntry>)>,
    /// Basic-auth username → (password hash, consumer).
    pub by_basic_user: ConsumerMap<(String, Arc<ConsumerEntry>)>,
}

impl Consumers {
    fn build(snapshot: &Snapshot) -> Self {
        let mut consumers = Consumers::default();
        for (_, resource) in snapshot.of_kind(Kind::Consumer) {
            let Spec::Consumer(spec) = &resource.spec else {
                continue;
            };
            let entry = Arc::new(ConsumerEntry::new(
                resource.name.clone(),
                &spec.headers,
                spec.rate_limits.clone(),
            ));
            let creds = &spec.credentials;
            for key in &creds.keys {
                consumers.by_key.insert(key.clone(), entry.clone());
            }
            if let Some(jwt) = &creds.jwt {
                consumers
                    .by_jwt_subject
                    .insert(jwt.subject.clone(), entry.clone());
            }
            for hmac in &creds.hmac {
                consumers
                    .by_hmac_key
                    .insert(hmac.key_id.clone(), (hmac.secret.clone(), entry.clone()));
            }
            if let Some(basic) = &creds.basic {
                consumers.by_basic_user.insert(
                    basic.username.clone(),
                    (basic.password_hash.clone(), entry.clone()),
                );
            }
            consumers.by_name.insert(resource.name.clone(), entry);
        }
        consumers
    }
}

/// The compiled policies of one config version and where they apply.
#[derive(Debug, Default)]
pub struct PolicySet {
    global: Vec<Arc<dyn Plugin>>,
    // The maps read per request are keyed by config (hosts, route names): a request looks
    // keys up, never adds one, so the non-keyed FxHash is safe.
    /// Host pattern → plugins of the domains claiming it.
    domains: HostMap<Vec<Arc<dyn Plugin>>>,
    by_route: FxHashMap<String, Vec<Arc<dyn Plugin>>>,
    /// The chain of a request on a route without policies to a host without any: global only.
    global_chain: Chain,
    /// The chain of a request whose host has no domain policies (global + route), by the route
    /// table's index of its route ([`Self::index_routes`]): what the proxy reads per request
    /// ([`Self::chain_at`]), merged once per config version and found without hashing a name.
    indexed_chains: Vec<Chain>,
    consumers: Arc<Consumers>,
    /// Each policy's plugin with the resource it was built from, for the next version to take
    /// over when neither that resource nor the consumers changed.
    plugins: HashMap<String, (SharedResource, Arc<dyn Plugin>)>,
    /// The consumer resources `consumers` was built from.
    consumer_sources: Vec<SharedResource>,
}

impl PolicySet {
    /// Builds every policy of a validated snapshot. A policy this agent cannot build (an
    /// unsupported type, a key its crypto library refuses) is an error naming that policy; the
    /// caller rejects the snapshot and keeps serving the previous one.
    pub fn compile(
        snapshot: &Snapshot,
        state: &PolicyState,
    ) -> Result<PolicySet, Vec<ValidationError>> {
        Self::compile_from(snapshot, state, &PolicySet::default())
    }

    /// [`PolicySet::compile`] for the version after `previous`: a policy whose resource is the
    /// very one `previous` built it from keeps its plugin (a route change does not reload a
    /// WAF rule set or refetch a JWKS), unless the consumers changed, since auth plugins hold
    /// them.
    pub fn compile_from(
        snapshot: &Snapshot,
        state: &PolicyState,
        previous: &PolicySet,
    ) -> Result<PolicySet, Vec<ValidationError>> {
        let consumer_sources: Vec<SharedResource> = snapshot
            .of_kind(Kind::Consumer)
            .map(|(_, r)| r.clone())
            .collect();
        let same_consumers = consumer_sources.len() == previous.consumer_sources.len()
            && consumer_sources
                .iter()
                .zip(&previous.consumer_sources)
                .all(|(a, b)| a.same(b));
        let consumers = if same_consumers {
            previous.consumers.clone()
        } else {
            Arc::new(Consumers::build(snapshot))
        };
        let mut built: HashMap<&str, Arc<dyn Plugin>> = HashMap::new();
        let mut errors = Vec::new();
        let mut set = PolicySet {
            consumers: consumers.clone(),
            consumer_sources,
            ..PolicySet::default()
        };
        for (_, resource) in snapshot.of_kind(Kind::Policy) {
            let Spec::Policy(spec) = &resource.spec else {
                continue;
            };
            let taken_over = previous
                .plugins
                .get(&resource.name)
                .filter(|(source, _)| same_consumers && source.same(resource))
                .map(|(_, plugin)| plugin.clone());
            let plugin = match taken_over {
                Some(plugin) => Ok(plugin),
                None => plugins::build(&resource.name, &spec.config, &consumers, state),
            };
            match plugin {
                Ok(plugin) => {
                    built.insert(resource.name.as_str(), plugin.clone());
                    set.plugins
                        .insert(resource.name.clone(), (resource.clone(), plugin));
                }
                Err(message) => errors.push(ValidationError {
                    resource: ResourceKey::new(Kind::Policy, resource.name.clone()).to_string(),
                    path: "spec.config".into(),
                    message,
                }),
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        // Without a policy nothing can attach anywhere: a config of many routes and no
        // policies skips the walk over its domains and routes.
        let mut domain_hosts: HashMap<&str, Vec<&str>> = HashMap::new();
        let attachable = if built.is_empty() {
            None
        } else {
            Some(
                snapshot
                    .of_kind(Kind::Domain)
                    .chain(snapshot.of_kind(Kind::Route)),
            )
        };
        for (_, resource) in attachable.into_iter().flatten() {
            match &resource.spec {
                Spec::Domain(domain) => {
                    domain_hosts.insert(
                        resource.name.as_str(),
                        domain.hosts.iter().map(String::as_str).collect(),
                    );
                    for policy in &domain.policies {
                        if let Some(plugin) = built.get(policy.as_str()) {
                            set.attach_domain(&domain.hosts, plugin.clone());
                        }
                    }
                }
                Spec::Route(route) => {
                    for policy in &route.policies {
                        if let Some(plugin) = built.get(policy.as_str()) {
                            set.by_route
                                .entry(resource.name.clone())
                                .or_default()
                                .push(plugin.clone());
                        }
                    }
                }
                _ => {}
            }
        }
        for (_, resource) in snapshot.of_kind(Kind::Policy) {
            let Spec::Policy(spec) = &resource.spec else {
                continue;
            };
            let Some(plugin) = built.get(resource.name.as_str()) else {
                continue;
            };
            if spec.scope.global {
                set.global.push(plugin.clone());
            }
            for domain in &spec.scope.domains {
                if let Some(hosts) = domain_hosts.get(domain.as_str()) {
                    let hosts: Vec<String> = hosts.iter().map(|h| h.to_string()).collect();
                    set.attach_domain(&hosts, plugin.clone());
                }
            }
            for route in &spec.scope.routes {
                set.by_route
                    .entry(route.clone())
                    .or_default()
                    .push(plugin.clone());
            }
        }
        set.global_chain = Self::merge([Some(&set.global), None, None]);
        state.retain(|name| built.contains_key(name));
        Ok(set)
    }

    fn attach_domain(&mut self, hosts: &[String], plugin: Arc<dyn Plugin>) {
        for host in hosts {
            self.domains.get_or_default(host).push(plugin.clone());
        }
    }

    /// Whether no policy applies anywhere (the proxy then skips the chain entirely).
    pub fn is_empty(&self) -> bool {
        self.global.is_empty() && self.domains.is_empty() && self.by_route.is_empty()
    }

    /// The consumers of this config version.
    pub fn consumers(&self) -> &Arc<Consumers> {
        &self.consumers
    }

    /// Lays out the chains of hosts without domain policies by route table index for
    /// [`Self::chain_at`]: `routes` are the table's route names, in its order.
    pub fn index_routes<'a>(&mut self, routes: impl IntoIterator<Item = &'a str>) {
        self.indexed_chains = routes
            .into_iter()
            .map(|route| self.chain_in(None, route).into_owned())
            .collect();
    }

    /// [`Self::chain`] for the route at `index` in the route table given to
    /// [`Self::index_routes`], whose name is `route`.
    pub fn chain_at(&self, host: &str, route: &str, index: usize) -> Cow<'_, Chain> {
        let domain = self.domains.get(host);
        if domain.is_none()
            && let Some(chain) = self.indexed_chains.get(index)
        {
            debug_assert_eq!(chain.names(), self.chain_in(None, route).names(), "{route}");
            return Cow::Borrowed(chain);
        }
        self.chain_in(domain, route)
    }

    /// The chain for a request to `host` matched by `route`: global, then domain, then route
    /// policies, each policy once, ordered by phase (stable, so scope order holds within a phase).
    pub fn chain(&self, host: &str, route: &str) -> Cow<'_, Chain> {
        self.chain_in(self.domains.get(host), route)
    }

    /// [`Self::chain`] with the host's domain policies, if it has any. Merged here per call
    /// unless only global policies apply: the proxy reads [`Self::chain_at`]'s merged chains.
    fn chain_in(&self, domain: Option<&Vec<Arc<dyn Plugin>>>, route: &str) -> Cow<'_, Chain> {
        match (domain, self.by_route.get(route)) {
            (None, None) => Cow::Borrowed(&self.global_chain),
            (domain, route) => Cow::Owned(Self::merge([Some(&self.global), domain, route])),
        }
    }

    /// The plugins of `scopes`, each once, in phase order (stable: scope order within a phase).
    fn merge(scopes: [Option<&Vec<Arc<dyn Plugin>>>; 3]) -> Chain {
        let mut plugins: Vec<Arc<dyn Plugin>> = Vec::new();
        for plugin in scopes.into_iter().flatten().flatten() {
            if !plugins.iter().any(|p| p.name() == plugin.name()) {
                plugins.push(plugin.clone());
            }
        }
        plugins.sort_by_key(|p| p.phase());
        Chain::new(plugins)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use fleetgate_shared::Resource;

    const CONFIG: &str = r#"
kind: Policy
name: keys
spec:
  type: key-auth
  config:
    key_from: [{header: {name: x-api-key}}]
---
kind: Consumer
name: acme
spec:
  credentials: {keys: [acme-key-1]}
---
kind: Route
name: api
spec:
  direct_response: {status: 200}
  policies: [keys]
---
kind: Policy
name: small-bodies
spec:
  type: request-size-limit
  config: {max_body_bytes: 1024}
---
kind: Route
name: open
spec:
  direct_response: {status: 200}
  policies: [small-bodies]
"#;

    fn snapshot() -> Snapshot {
        let resources =
            fleetgate_shared::parse_bundle(CONFIG, fleetgate_shared::bundle::Format::Yaml, "")
                .unwrap();
        Snapshot::new(1, resources).unwrap()
    }

    /// `base` with `name`'s resource replaced by `change` applied to a copy of it.
    fn changed(
        base: &Snapshot,
        kind: Kind,
        name: &str,
        change: impl FnOnce(&mut Resource),
    ) -> Snapshot {
        let mut resource = base.get(&ResourceKey::new(kind, name)).unwrap().clone();
        change(&mut resource);
        base.with(resource)
    }

    fn plugin(set: &PolicySet) -> &Arc<dyn Plugin> {
        &set.plugins["keys"].1
    }

    #[test]
    fn a_policy_keeps_its_plugin_until_it_or_the_consumers_change() {
        let state = PolicyState::default();
        let first = snapshot();
        let before = PolicySet::compile(&first, &state).unwrap();

        // A route change: the plugin is taken over, not rebuilt.
        let route_changed = changed(&first, Kind::Route, "api", |r| {
            r.labels.insert("tier".into(), "gold".into());
        });
        let after = PolicySet::compile_from(&route_changed, &state, &before).unwrap();
        assert!(Arc::ptr_eq(plugin(&before), plugin(&after)));
        assert!(Arc::ptr_eq(&before.consumers, &after.consumers));

        // The policy itself changed: rebuilt.
        let policy_changed = changed(&route_changed, Kind::Policy, "keys", |r| {
            r.labels.insert("v".into(), "2".into());
        });
        let rebuilt = PolicySet::compile_from(&policy_changed, &state, &after).unwrap();
        assert!(!Arc::ptr_eq(plugin(&after), plugin(&rebuilt)));

        // A consumer changed: the auth plugin holds the consumers, so it is rebuilt too, and
        // the new key identifies the consumer.
        let consumer_changed = changed(&policy_changed, Kind::Consumer, "acme", |r| {
            if let Spec::Consumer(spec) = &mut r.spec {
                spec.credentials.keys.push("acme-key-2".into());
            }
        });
        let with_new_key = PolicySet::compile_from(&consumer_changed, &state, &rebuilt).unwrap();
        assert!(!Arc::ptr_eq(plugin(&rebuilt), plugin(&with_new_key)));
        assert!(with_new_key.consumers().by_key.contains_key("acme-key-2"));
    }

    /// The proxy finds a route's chain by the route's index in the route table: each index
    /// gives the chain of the route named there, as the lookup by name does.
    #[test]
    fn a_route_finds_its_chain_by_its_index_in_the_route_table() {
        let mut set = PolicySet::compile(&snapshot(), &PolicyState::default()).unwrap();
        let routes = ["api", "bare", "open"];
        set.index_routes(routes);
        for (index, route) in routes.into_iter().enumerate() {
            let by_index = set.chain_at("h", route, index);
            assert_eq!(by_index.names(), set.chain("h", route).names(), "{route}");
        }
        assert_eq!(set.chain_at("h", "api", 0).names(), ["keys"]);
        assert!(set.chain_at("h", "bare", 1).is_empty());
        assert_eq!(set.chain_at("h", "open", 2).names(), ["small-bodies"]);
        // A set not laid out by a table still answers, by name.
        let unindexed = PolicySet::compile(&snapshot(), &PolicyState::default()).unwrap();
        assert_eq!(unindexed.chain_at("h", "open", 2).names(), ["small-bodies"]);
    }

    /// `x-fleetgate-consumer` is the gateway's to set: a value a client sends is removed,
    /// whether a policy identified a consumer (whose name the proxy sends instead) or not; a
    /// refused request is answered by the policy that refused it.
    #[tokio::test]
    async fn the_consumer_header_is_set_by_the_gateway_alone() {
        use crate::chain::CONSUMER_HEADER;
        use crate::context::RequestCtx;
        use http::{HeaderMap, HeaderValue, Method, Uri};

        let set = PolicySet::compile(&snapshot(), &PolicyState::default()).unwrap();
        let request = |key: Option<&'static str>| {
            let mut headers = HeaderMap::new();
            headers.insert(CONSUMER_HEADER, HeaderValue::from_static("spoofed"));
            if let Some(key) = key {
                headers.insert("x-api-key", HeaderValue::from_static(key));
            }
            let peer = "127.0.0.1:9".parse().unwrap();
            RequestCtx::new(Method::GET, Uri::from_static("/"), headers, peer, false)
        };

        let mut identified = request(Some("acme-key-1"));
        assert!(set.chain("h", "api").run(&mut identified).await.is_none());
        assert!(!identified.headers.contains_key(CONSUMER_HEADER));
        let consumer = identified.consumer.as_deref().unwrap();
        assert_eq!(consumer.consumer_header().unwrap(), "acme");

        let mut anonymous = request(None);
        assert!(set.chain("h", "open").run(&mut anonymous).await.is_none());
        assert!(!anonymous.headers.contains_key(CONSUMER_HEADER));

        let mut refused = request(Some("not-a-key"));
        let rejection = set.chain("h", "api").run(&mut refused).await.unwrap();
        assert_eq!(rejection.policy, "keys");
        assert_eq!(rejection.response.status(), http::StatusCode::UNAUTHORIZED);
    }
}
