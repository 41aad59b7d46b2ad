//! Request metrics with no locks and no allocation on the request path.
//!
//! Every route has a [`RouteStats`]: requests by status class and a fixed-bucket latency
//! histogram, all atomics. Stats are kept by route name across config versions (counters are
//! monotonic, as Prometheus expects); a generation holds the `Arc`s of its routes, so recording
//! a request is a few atomic adds. Status is counted by class (`2xx` ...) to bound the number of
//! series per route.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Upper bounds of the latency buckets, in microseconds: sub-millisecond proxying up to slow
/// upstreams. Rendered in seconds.
const BUCKETS_US: [u64; 14] = [
    500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000,
    2_500_000, 5_000_000, 10_000_000,
];

/// One route's counters.
#[derive(Debug)]
pub struct RouteStats {
    pub name: Arc<str>,
    /// Requests by status class: index 0 = 1xx ... 4 = 5xx, 5 = anything else.
    by_class: [AtomicU64; 6],
    buckets: [AtomicU64; BUCKETS_US.len()],
    count: AtomicU64,
    sum_us: AtomicU64,
}

impl RouteStats {
    fn new(name: &str) -> Self {
        Self {
            name: Arc::from(name),
            by_class: Default::default(),
            buckets: Default::default(),
            count: AtomicU64::new(0),
            sum_us: AtomicU64::new(0),
        }
    }

    /// Records one request: its status and the time to its response headers.
    pub fn record(&self, status: u16, micros: u64) {
        let class = match status {
            100..=599 => usize::from(status / 100 - 1),
            _ => 5,
        };
        self.by_class[class].fetch_add(1, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_us.fetch_add(micros, Ordering::Relaxed);
        if let Some(i) = BUCKETS_US.iter().position(|&b| micros <= b) {
            self.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Stats of every route ever served, by name.
#[derive(Debug)]
pub struct Stats {
    routes: Mutex<HashMap<String, Arc<RouteStats>>>,
    /// Requests that matched no route.
    pub unrouted: Arc<RouteStats>,
}

impl Default for Stats {
    fn default() -> Self {
        Self {
            routes: Mutex::new(HashMap::new()),
            unrouted: Arc::new(RouteStats::new("")),
        }
    }
}

impl Stats {
    /// Requests by status class over every route (and unrouted requests): `requests_2xx`, ...
    /// For the periodic status an agent sends its manager.
    pub fn totals(&self) -> std::collections::BTreeMap<String, u64> {
        const NAMES: [&str; 6] = ["1xx", "2xx", "3xx", "4xx", "5xx", "other"];
        let routes = self.routes.lock().unwrap_or_else(|p| p.into_inner());
        let mut sums = [0u64; 6];
        for stats in routes.values().chain(std::iter::once(&self.unrouted)) {
            for (sum, count) in sums.iter_mut().zip(&stats.by_class) {
                *sum += count.load(Ordering::Relaxed);
            }
        }
        NAMES
            .iter()
            .zip(sums)
            .map(|(name, sum)| (format!("requests_{name}"), sum))
            .collect()
    }

    /// The stats of `names`, created as needed. Called while publishing a config version.
    pub fn for_routes<'a>(
        &self,
        names: impl Iterator<Item = &'a str>,
    ) -> rustc_hash::FxHashMap<String, Arc<RouteStats>> {
        let mut routes = self.routes.lock().unwrap_or_else(|p| p.into_inner());
        names
            .map(|name| {
                let stats = routes
                    .entry(name.to_owned())
                    .or_insert_with(|| Arc::new(RouteStats::new(name)))
                    .clone();
                (name.to_owned(), stats)
            })
            .collect()
    }

    /// Appends the Prometheus text form of every route's counters to `out`.
    pub fn render(&self, out: &mut String) {
        let routes = self.routes.lock().unwrap_or_else(|p| p.into_inner());
        let mut all: Vec<&Arc<RouteStats>> = routes.values().collect();
        all.sort_by(|a, b| a.name.cmp(&b.name));
        all.push(&self.unrouted);
        const CLASSES: [&str; 6] = ["1xx", "2xx", "3xx", "4xx", "5xx", "other"];
        let _ = writeln!(
            out,
            "# HELP fleetgate_requests_total Requests by route and status class (route=\"\" matched no route)."
        );
        let _ = writeln!(out, "# TYPE fleetgate_requests_total counter");
        for stats in &all {
            for (class, counter) in CLASSES.iter().zip(&stats.by_class) {
                let n = counter.load(Ordering::Relaxed);
                if n > 0 {
                    let _ = writeln!(
                        out,
                        "fleetgate_requests_total{{route=\"{}\",status=\"{class}\"}} {n}",
                        stats.name
                    );
                }
            }
        }
        let _ = writeln!(
            out,
            "# HELP fleetgate_request_duration_seconds Time to the response headers, by route."
        );
        let _ = writeln!(out, "# TYPE fleetgate_request_duration_seconds histogram");
        for stats in &all {
            let count = stats.count.load(Ordering::Relaxed);
            if count == 0 {
                continue;
            }
            let mut cumulative = 0;
            for (bound, bucket) in BUCKETS_US.iter().zip(&stats.buckets) {
                cumulative += bucket.load(Ordering::Relaxed);
                let _ = writeln!(
                    out,
                    "fleetgate_request_duration_seconds_bucket{{route=\"{}\",le=\"{}\"}} {cumulative}",
                    stats.name,
                    *bound as f64 / 1e6
                );
            }
            let _ = writeln!(
                out,
                "fleetgate_request_duration_seconds_bucket{{route=\"{}\",le=\"+Inf\"}} {count}",
                stats.name
            );
            let _ = writeln!(
                out,
                "fleetgate_request_duration_seconds_sum{{route=\"{}\"}} {}",
                stats.name,
                stats.sum_us.load(Ordering::Relaxed) as f64 / 1e6
            );
            let _ = writeln!(
                out,
                "fleetgate_request_duration_seconds_count{{route=\"{}\"}} {count}",
                stats.name
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_by_class_and_renders_a_cumulative_histogram() {
        let stats = Stats::default();
        let routes = stats.for_routes(["api"].into_iter());
        let api = &routes["api"];
        api.record(200, 300);
        api.record(204, 1_500);
        api.record(503, 20_000_000);
        let mut out = String::new();
        stats.render(&mut out);
        assert!(
            out.contains("fleetgate_requests_total{route=\"api\",status=\"2xx\"} 2\n"),
            "{out}"
        );
        assert!(
            out.contains("fleetgate_requests_total{route=\"api\",status=\"5xx\"} 1\n"),
            "{out}"
        );
        assert!(
            out.contains(
                "fleetgate_request_duration_seconds_bucket{route=\"api\",le=\"0.0005\"} 1\n"
            ),
            "{out}"
        );
        assert!(
            out.contains(
                "fleetgate_request_duration_seconds_bucket{route=\"api\",le=\"0.0025\"} 2\n"
            ),
            "{out}"
        );
        assert!(
            out.contains(
                "fleetgate_request_duration_seconds_bucket{route=\"api\",le=\"+Inf\"} 3\n"
            ),
            "{out}"
        );
        // The same route in a later config version keeps counting where it was.
        let again = stats.for_routes(["api"].into_iter());
        assert!(Arc::ptr_eq(&again["api"], api));
    }
}
