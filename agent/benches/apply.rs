//! What one agent spends applying a one-route change to a 10,000-route config, stage by stage:
//! the CPU behind the sync benchmark's commit → serving time (`docs/benchmarks.md`, Sync).
//!
//! Each stage keeps its own running state and moves it forward one revision per iteration, so
//! what is measured includes freeing what the change replaced, as in a running agent.
//!
//! `cargo bench -p fleetgate-agent --bench apply`

use std::hint::black_box;
use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use fleetgate_agent::Gateway;
use fleetgate_agent::config::AccessLog;
use fleetgate_agent::generation::{ConfigSource, Generation};
use fleetgate_agent_route::RouteTable;
use fleetgate_shared::bundle::Format;
use fleetgate_shared::{Delta, Resource, Snapshot, parse_bundle, validate_change};

const ROUTES: usize = 10_000;

/// The sync benchmark's route shape: an exact path and a direct response.
fn route(i: usize, body: &str) -> String {
    format!(
        "kind: Route\nname: r-{i:05}\nspec:\n  matches: [{{ path: {{ exact: /r/{i} }} }}]\n  direct_response: {{ status: 200, body: \"{body}\" }}\n"
    )
}

fn parse(yaml: &str) -> Vec<Resource> {
    parse_bundle(yaml, Format::Yaml, "").expect("the benchmark's config parses")
}

/// A stream of one-route changes: change `n` gives route `(n · 7919) mod ROUTES` a new body.
struct Changes {
    snapshot: Snapshot,
    /// Two versions of 64 routes, parsed once so that parsing stays out of the figures.
    variants: Vec<[Resource; 2]>,
    next: usize,
}

impl Changes {
    fn new() -> Self {
        let bundle: String = (0..ROUTES)
            .map(|i| route(i, "v0"))
            .collect::<Vec<_>>()
            .join("---\n");
        let snapshot = Snapshot::new(1, parse(&bundle)).expect("names are unique");
        let variants = (0..64)
            .map(|n| {
                let i = (n * 7919) % ROUTES;
                let mut two = parse(&format!("{}---\n{}", route(i, "a"), route(i, "b")));
                let b = two.pop().expect("two documents");
                let a = two.pop().expect("two documents");
                [a, b]
            })
            .collect();
        Self {
            snapshot,
            variants,
            next: 0,
        }
    }

    /// The next one-route delta from the current snapshot.
    fn delta(&mut self) -> Delta {
        let n = self.next;
        self.next += 1;
        let revision = self.snapshot.revision;
        Delta {
            from: revision,
            to: revision + 1,
            upserts: vec![self.variants[n % 64][(n / 64) % 2].clone()],
            deletes: Vec::new(),
        }
    }

    /// Moves to the next snapshot and returns it with the one it replaced.
    fn advance(&mut self) -> (Snapshot, Snapshot) {
        let delta = self.delta();
        let next = self.snapshot.apply(&delta).expect("the delta fits");
        let base = std::mem::replace(&mut self.snapshot, next.clone());
        (base, next)
    }
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("apply_one_route_of_10000");

    let mut changes = Changes::new();
    group.bench_function("delta_to_snapshot_with_checksum", |b| {
        b.iter(|| {
            let delta = changes.delta();
            let next = changes.snapshot.apply(&delta).expect("the delta fits");
            black_box(next.checksum());
            changes.snapshot = next;
        })
    });

    let mut changes = Changes::new();
    changes.snapshot.checksum();
    group.bench_function("validate_change", |b| {
        b.iter(|| {
            let (base, next) = changes.advance();
            validate_change(&base, &next).expect("valid");
        })
    });

    let mut changes = Changes::new();
    let mut table = RouteTable::compile(&changes.snapshot).expect("valid");
    group.bench_function("route_table", |b| {
        b.iter(|| {
            let (base, next) = changes.advance();
            table = RouteTable::compile_change(&base, &next, &table).expect("valid");
        })
    });

    let gateway = Gateway::new(AccessLog::Off, None);
    let mut changes = Changes::new();
    let clients = Default::default();
    let policy_state = Default::default();
    let mut generation = Arc::new(Generation::empty());
    let mut applied: Option<Snapshot> = None;
    group.bench_function("generation_compile", |b| {
        b.iter(|| {
            let (_, next) = changes.advance();
            let compiled = Generation::compile(
                &next,
                ConfigSource::Manager,
                &generation,
                applied.as_ref(),
                &clients,
                &policy_state,
            )
            .expect("valid");
            generation = Arc::new(compiled);
            applied = Some(next);
        })
    });
    drop(gateway);

    let gateway = Gateway::new(AccessLog::Off, None);
    let mut changes = Changes::new();
    group.bench_function("gateway_apply", |b| {
        b.iter(|| {
            let (_, next) = changes.advance();
            gateway.apply(&next, ConfigSource::Manager).expect("valid");
        })
    });

    let dir = tempfile::tempdir().expect("a temporary directory");
    let gateway = Gateway::new(AccessLog::Off, Some(dir.path().to_path_buf()));
    let mut changes = Changes::new();
    group.bench_function("gateway_apply_persisted", |b| {
        b.iter(|| {
            let (_, next) = changes.advance();
            gateway.apply(&next, ConfigSource::Manager).expect("valid");
        })
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(30);
    targets = bench
}
criterion_main!(benches);
