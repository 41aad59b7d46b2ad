//! What each policy costs one request, measured inside the chain with the proxy around it left
//! out: the policy's chain runs on the request its benchmark client sends (`bench/plugins.sh`'s
//! configs and headers), and the empty chain on the same request is its baseline, so what
//! carrying a token or signature costs the proxy anyway is not counted against the policy.
//!
//! The difference per request, divided by the agent's CPU time per proxied request (the
//! "agent CPU µs/request" of `off` in `bench/plugins.sh`), is the share of throughput a
//! core-bound agent gives up for the policy: the figure the plugin goals are about, measured
//! in-process where a shared machine's noise hides a few percent of a wall-clock run.
//!
//! `cargo bench -p fleetgate-agent-policy --bench plugins`

mod support;

use std::hint::black_box;
use std::net::SocketAddr;

use criterion::{Criterion, criterion_group, criterion_main};
use support::{HOST, ROUTE, VARIANTS, chain_for, headers_for, one_request};

fn plugins(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let peer: SocketAddr = "127.0.0.1:40000".parse().expect("an address");
    let off = chain_for(None);
    let mut group = c.benchmark_group("policy");
    for (name, policy) in VARIANTS {
        let set = chain_for(Some(policy));
        let chain = set.chain(HOST, ROUTE);
        let baseline = off.chain(HOST, ROUTE);
        let headers = headers_for(name);
        assert!(
            one_request(&runtime, &chain, &headers, peer),
            "{name}: the policy refuses the benchmark's request"
        );
        group.bench_function(format!("{name}/off"), |b| {
            b.iter(|| one_request(&runtime, black_box(&baseline), &headers, peer))
        });
        group.bench_function(format!("{name}/on"), |b| {
            b.iter(|| one_request(&runtime, black_box(&chain), &headers, peer))
        });
    }
    group.finish();
}

criterion_group!(benches, plugins);
criterion_main!(benches);
