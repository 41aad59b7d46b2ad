use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};

use fleetgate_shared::model::{Labels, LoadBalancing, ServiceSpec};

use super::{HttpClient, now_ms};

/// One upstream endpoint and its live state. All state is atomics: the request path never
/// locks.
#[derive(Debug)]
pub struct Endpoint {
    /// `host:port` as configured.
    pub address: String,
    pub authority: http::uri::Authority,
    pub weight: u32,
    pub labels: Labels,
    /// Active health: false after `unhealthy_threshold` failed probes.
    healthy: AtomicBool,
    probe_successes: AtomicU32,
    probe_failures: AtomicU32,
    in_flight: AtomicU32,
    /// Consecutive failed requests, for outlier detection.
    failures: AtomicU32,
    /// Ejected until this [`now_ms`] instant; 0 when not ejected.
    ejected_until: AtomicU64,
    ejections: AtomicU32,
}

impl Endpoint {
    fn new(address: &str, weight: u32, labels: Labels) -> Option<Self> {
        let authority = address.parse().ok()?;
        Some(Self {
            address: address.to_owned(),
            authority,
            weight,
            labels,
            healthy: AtomicBool::new(true),
            probe_successes: AtomicU32::new(0),
            probe_failures: AtomicU32::new(0),
            in_flight: AtomicU32::new(0),
            failures: AtomicU32::new(0),
            ejected_until: AtomicU64::new(0),
            ejections: AtomicU32::new(0),
        })
    }

    /// Whether active health checks consider the endpoint healthy.
    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    /// Whether outlier detection has ejected the endpoint at `now`.
    pub fn is_ejected(&self, now: u64) -> bool {
        self.ejected_until.load(Ordering::Relaxed) > now
    }

    /// Requests currently in flight to this endpoint.
    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Relaxed)
    }

    fn selects(&self, subset: &Labels) -> bool {
        subset.iter().all(|(k, v)| self.labels.get(k) == Some(v))
    }

    /// Records one active probe result, flipping health after the configured thresholds.
    /// Returns `Some(new state)` when health changed.
    pub(crate) fn record_probe(
        &self,
        ok: bool,
        healthy_threshold: u32,
        unhealthy_threshold: u32,
    ) -> Option<bool> {
        if ok {
            self.probe_failures.store(0, Ordering::Relaxed);
            let n = self.probe_successes.fetch_add(1, Ordering::Relaxed) + 1;
            if !self.is_healthy() && n >= healthy_threshold {
                self.healthy.store(true, Ordering::Relaxed);
                return Some(true);
            }
        } else {
            self.probe_successes.store(0, Ordering::Relaxed);
            let n = self.probe_failures.fetch_add(1, Ordering::Relaxed) + 1;
            if self.is_healthy() && n >= unhealthy_threshold {
                self.healthy.store(false, Ordering::Relaxed);
                return Some(false);
            }
        }
        None
    }
}

/// Keeps an endpoint's in-flight count raised while a request (and its streamed response)
/// is open.
#[derive(Debug)]
pub struct InFlight(Arc<Endpoint>);

impl InFlight {
    pub fn new(endpoint: Arc<Endpoint>) -> Self {
        endpoint.in_flight.fetch_add(1, Ordering::Relaxed);
        Self(endpoint)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The result of one forwarded request, as outlier detection sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Success,
    /// Connect failure, reset, timeout or a 5xx response.
    Failure,
}

/// A service's endpoints, balancer state and client. Shared across config generations while
/// its spec is unchanged.
pub struct ServiceRuntime {
    pub name: String,
    pub spec: ServiceSpec,
    pub endpoints: Vec<Arc<Endpoint>>,
    pub client: HttpClient,
    cursor: AtomicUsize,
    health_task: std::sync::OnceLock<tokio::task::JoinHandle<()>>,
}

impl std::fmt::Debug for ServiceRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceRuntime")
            .field("name", &self.name)
            .field("endpoints", &self.endpoints)
            .finish_non_exhaustive()
    }
}

impl Drop for ServiceRuntime {
    fn drop(&mut self) {
        if let Some(task) = self.health_task.get() {
            task.abort();
        }
    }
}

impl ServiceRuntime {
    /// Builds the runtime for a validated service spec, and starts its health checker when the
    /// spec has one (this needs a Tokio runtime).
    pub fn new(name: &str, spec: &ServiceSpec, client: HttpClient) -> Arc<Self> {
        let mut endpoints: Vec<Arc<Endpoint>> = spec
            .endpoints
            .iter()
            .filter_map(|ep| Endpoint::new(&ep.address, ep.weight, ep.labels.clone()))
            .map(Arc::new)
            .collect();
        if let Some(dns) = &spec.dns {
            // The connector resolves the name on connect and tries every address it returns.
            let address = format!("{}:{}", dns.name, dns.port);
            endpoints.extend(Endpoint::new(&address, 1, dns.labels.clone()).map(Arc::new));
        }
        let runtime = Arc::new(Self {
            name: name.to_owned(),
            spec: spec.clone(),
            endpoints,
            client,
            cursor: AtomicUsize::new(0),
            health_task: std::sync::OnceLock::new(),
        });
        if let Some(check) = &spec.health_check {
            let task = super::health::spawn(Arc::downgrade(&runtime), check.clone());
            let _ = runtime.health_task.set(task);
        }
        runtime
    }

    /// Picks an endpoint among those carrying every `subset` label that are healthy and not
    /// ejected. `hash_key` is the request's consistent-hash key when the service balances by
    /// one. `None` means no endpoint is eligible.
    pub fn pick(&self, subset: &Labels, hash_key: Option<u64>) -> Option<Arc<Endpoint>> {
        self.pick_avoiding(subset, hash_key, &[])
    }

    /// Like [`ServiceRuntime::pick`], but skips the endpoints in `avoid` (those a request
    /// already failed on) as long as another eligible endpoint remains.
    pub fn pick_avoiding(
        &self,
        subset: &Labels,
        hash_key: Option<u64>,
        avoid: &[Arc<Endpoint>],
    ) -> Option<Arc<Endpoint>> {
        let now = now_ms();
        let usable = |e: &&Arc<Endpoint>| e.selects(subset) && e.is_healthy() && !e.is_ejected(now);
        let avoided = |e: &&Arc<Endpoint>| avoid.iter().any(|a| Arc::ptr_eq(a, e));
        // Skip endpoints already tried only while something else is left. Two passes over the
        // endpoint list instead of collecting the eligible ones: no allocation per request.
        let skip_avoided =
            !avoid.is_empty() && self.endpoints.iter().filter(usable).any(|e| !avoided(&e));
        let eligible = || {
            self.endpoints
                .iter()
                .filter(usable)
                .filter(move |e| !(skip_avoided && avoided(e)))
        };
        let n = eligible().count();
        let nth = |i: usize| eligible().nth(i);
        let chosen = match n {
            0 => return None,
            1 => nth(0),
            _ => match (&self.spec.load_balancing, hash_key) {
                (LoadBalancing::RoundRobin, _) => {
                    nth(self.cursor.fetch_add(1, Ordering::Relaxed) % n)
                }
                (LoadBalancing::Weighted, _) => {
                    let total: u64 = eligible().map(|e| u64::from(e.weight)).sum();
                    let mut ticket =
                        (self.cursor.fetch_add(1, Ordering::Relaxed) as u64) % total.max(1);
                    eligible()
                        .find(|e| {
                            let w = u64::from(e.weight);
                            if ticket < w {
                                true
                            } else {
                                ticket -= w;
                                false
                            }
                        })
                        .or_else(|| eligible().next_back())
                }
                (LoadBalancing::LeastRequest, _) => {
                    // Power of two choices: two distinct random endpoints, the less loaded wins.
                    let a = fastrand::usize(..n);
                    let b = (a + 1 + fastrand::usize(..n - 1)) % n;
                    match (nth(a), nth(b)) {
                        (Some(a), Some(b)) => {
                            Some(if b.in_flight() < a.in_flight() { b } else { a })
                        }
                        (a, b) => a.or(b),
                    }
                }
                (LoadBalancing::ConsistentHash { .. }, Some(key)) => {
                    // Rendezvous hashing: each key ranks endpoints the same way everywhere, and
                    // removing one endpoint only moves the keys that preferred it.
                    eligible().max_by_key(|e| mix(key, &e.address))
                }
                (LoadBalancing::ConsistentHash { .. }, None) => nth(fastrand::usize(..n)),
            },
        };
        chosen.cloned()
    }

    /// Feeds one request outcome to passive outlier detection: after
    /// `consecutive_failures` failures in a row the endpoint is ejected for a period that
    /// doubles with each ejection, unless that would eject more than `max_ejected_percent`.
    pub fn report(&self, endpoint: &Endpoint, outcome: Outcome) {
        let Some(od) = &self.spec.outlier_detection else {
            return;
        };
        match outcome {
            Outcome::Success => {
                endpoint.failures.store(0, Ordering::Relaxed);
                let now = now_ms();
                if !endpoint.is_ejected(now) && endpoint.ejected_until.load(Ordering::Relaxed) != 0
                {
                    // Back in service and succeeding: forget earlier ejections gradually.
                    endpoint.ejected_until.store(0, Ordering::Relaxed);
                    let _ = endpoint.ejections.fetch_update(
                        Ordering::Relaxed,
                        Ordering::Relaxed,
                        |n| Some(n.saturating_sub(1)),
                    );
                }
            }
            Outcome::Failure => {
                let failures = endpoint.failures.fetch_add(1, Ordering::Relaxed) + 1;
                let now = now_ms();
                if failures < od.consecutive_failures || endpoint.is_ejected(now) {
                    return;
                }
                let ejected = self.endpoints.iter().filter(|e| e.is_ejected(now)).count();
                let allowed = self.endpoints.len() * usize::from(od.max_ejected_percent) / 100;
                if ejected + 1 > allowed {
                    return;
                }
                let n = endpoint.ejections.fetch_add(1, Ordering::Relaxed).min(16);
                let period = od
                    .base_ejection
                    .as_millis()
                    .saturating_mul(1u64 << n)
                    .min(od.max_ejection.as_millis());
                endpoint
                    .ejected_until
                    .store(now + period, Ordering::Relaxed);
                endpoint.failures.store(0, Ordering::Relaxed);
                tracing::warn!(
                    service = %self.name, endpoint = %endpoint.address, ejected_for_ms = period,
                    "endpoint ejected after {failures} consecutive failures; it returns to rotation when the period ends"
                );
            }
        }
    }

    /// Describes the subset for error messages: `stage=green`.
    pub fn describe_subset(subset: &Labels) -> String {
        subset
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(",")
    }
}

fn mix(key: u64, address: &str) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    key.hash(&mut h);
    address.hash(&mut h);
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use fleetgate_shared::model::OutlierDetection;

    fn spec(lb: LoadBalancing, weights: &[u32]) -> ServiceSpec {
        let endpoints: Vec<serde_json::Value> = weights
            .iter()
            .enumerate()
            .map(|(i, w)| serde_json::json!({ "address": format!("127.0.0.1:{}", 1000 + i), "weight": w }))
            .collect();
        let mut spec: ServiceSpec =
            serde_json::from_value(serde_json::json!({ "endpoints": endpoints })).unwrap();
        spec.load_balancing = lb;
        spec
    }

    fn runtime(spec: &ServiceSpec) -> Arc<ServiceRuntime> {
        ServiceRuntime::new(
            "svc",
            spec,
            crate::upstream::UpstreamClients::default()
                .for_service(spec)
                .unwrap(),
        )
    }

    fn spread(rt: &ServiceRuntime, picks: usize, key: impl Fn(usize) -> Option<u64>) -> Vec<usize> {
        let mut counts = vec![0; rt.endpoints.len()];
        for i in 0..picks {
            let e = rt.pick(&Labels::new(), key(i)).unwrap();
            counts[rt
                .endpoints
                .iter()
                .position(|x| Arc::ptr_eq(x, &e))
                .unwrap()] += 1;
        }
        counts
    }

    #[tokio::test]
    async fn round_robin_is_even_and_weighted_follows_weights() {
        let rr = runtime(&spec(LoadBalancing::RoundRobin, &[1, 1, 1]));
        assert_eq!(spread(&rr, 300, |_| None), vec![100, 100, 100]);
        let weighted = runtime(&spec(LoadBalancing::Weighted, &[1, 3]));
        assert_eq!(spread(&weighted, 400, |_| None), vec![100, 300]);
    }

    #[tokio::test]
    async fn least_request_prefers_idle_endpoints() {
        let rt = runtime(&spec(LoadBalancing::LeastRequest, &[1, 1]));
        let _busy: Vec<InFlight> = (0..10)
            .map(|_| InFlight::new(rt.endpoints[0].clone()))
            .collect();
        let counts = spread(&rt, 200, |_| None);
        assert_eq!(
            counts,
            vec![0, 200],
            "with two endpoints P2C always compares both"
        );
    }

    #[tokio::test]
    async fn consistent_hash_keeps_keys_on_their_endpoint() {
        let lb = LoadBalancing::ConsistentHash {
            hash_on: fleetgate_shared::model::HashOn::SourceIp,
        };
        let rt = runtime(&spec(lb, &[1, 1, 1, 1]));
        for key in 0..50u64 {
            let first = rt.pick(&Labels::new(), Some(key)).unwrap();
            for _ in 0..5 {
                assert!(Arc::ptr_eq(
                    &first,
                    &rt.pick(&Labels::new(), Some(key)).unwrap()
                ));
            }
        }
        let counts = spread(&rt, 4000, |i| Some(i as u64));
        assert!(
            counts.iter().all(|c| (700..1300).contains(c)),
            "spread within tolerance: {counts:?}"
        );
    }

    #[tokio::test]
    async fn outlier_detection_ejects_and_caps_the_ejected_share() {
        let mut s = spec(LoadBalancing::RoundRobin, &[1, 1]);
        s.outlier_detection = Some(OutlierDetection {
            consecutive_failures: 3,
            base_ejection: fleetgate_shared::Duration::from_secs(60),
            max_ejection: fleetgate_shared::Duration::from_secs(600),
            max_ejected_percent: 50,
        });
        let rt = runtime(&s);
        let (a, b) = (rt.endpoints[0].clone(), rt.endpoints[1].clone());
        for _ in 0..3 {
            rt.report(&a, Outcome::Failure);
        }
        assert!(a.is_ejected(now_ms()));
        assert_eq!(spread(&rt, 10, |_| None), vec![0, 10]);
        // Ejecting the second would exceed 50%: it stays in rotation however much it fails.
        for _ in 0..10 {
            rt.report(&b, Outcome::Failure);
        }
        assert!(!b.is_ejected(now_ms()));
    }

    #[tokio::test]
    async fn subsets_pick_only_labelled_endpoints() {
        let mut s = spec(LoadBalancing::RoundRobin, &[1, 1]);
        s.endpoints[1].labels.insert("stage".into(), "green".into());
        let rt = runtime(&s);
        let green: Labels = [("stage".to_owned(), "green".to_owned())].into();
        for _ in 0..5 {
            assert_eq!(rt.pick(&green, None).unwrap().address, "127.0.0.1:1001");
        }
        let red: Labels = [("stage".to_owned(), "red".to_owned())].into();
        assert!(rt.pick(&red, None).is_none());
    }
}
