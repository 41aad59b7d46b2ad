//! Runs N requests of one benchmark variant through its chain, for counting what a policy
//! costs with callgrind rather than timing it: the instructions of a run with N2 requests
//! minus those of a run with N1, divided by N2 - N1, are one request's (set-up cancels out).
//!
//! ```sh
//! cargo build --release --workspace --examples
//! for n in 1000 3000; do
//!   valgrind --tool=callgrind --callgrind-out-file=cg.$n \
//!     target/release/examples/policy_cost hmac $n
//! done
//! ```
//! VARIANT is `off` (no policy) or one of the criterion benchmark's variants (`key`, `jwt`,
//! `hmac`, `waf`); the requests carry the headers of CLIENT's variant (default: VARIANT's own),
//! so `policy_cost off N hmac` is the baseline of `policy_cost hmac N`. `hmac-nonce` is
//! hmac-auth as configured by default, requiring a nonce: its N requests are signed, each with
//! its own nonce, before the clock starts (so under callgrind the signing counts; time it).
//!
//! Also prints the time per request, which only means something outside valgrind: wall time,
//! and on Linux the thread's CPU time (`/proc/thread-self/schedstat`). Two builds compared at
//! once on one core (`taskset -c 0 A & taskset -c 0 B`) share the machine's state, so their
//! CPU times compare where consecutive runs on a shared host swing by 10 % or more.

#[path = "../benches/support/mod.rs"]
mod support;

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Instant;

use support::{HOST, ROUTE, VARIANTS, chain_for, headers_for, one_request, signed_headers};

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let (Some(variant), Some(n)) = (args.next(), args.next().and_then(|n| n.parse::<u32>().ok()))
    else {
        eprintln!("usage: policy_cost VARIANT N [CLIENT]   (off, key, jwt, hmac, hmac-nonce, waf)");
        return ExitCode::FAILURE;
    };
    let set = if variant == "off" {
        chain_for(None)
    } else if variant == "hmac-nonce" {
        chain_for(Some("type: hmac-auth\n  config: { require_nonce: true }"))
    } else {
        let Some((_, policy)) = VARIANTS.iter().find(|(name, _)| *name == variant) else {
            eprintln!("unknown variant `{variant}`: use off, key, jwt, hmac, hmac-nonce or waf");
            return ExitCode::FAILURE;
        };
        chain_for(Some(policy))
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let peer: SocketAddr = "127.0.0.1:40000".parse().expect("an address");
    let chain = set.chain(HOST, ROUTE);
    let client = args.next().unwrap_or_else(|| variant.clone());
    // One request's headers for every request, or each its own (a nonce is used once).
    let requests: Vec<_> = if client == "hmac-nonce" {
        (0..n).map(|i| signed_headers(&format!("n-{i}"))).collect()
    } else {
        vec![headers_for(&client)]
    };
    let started = Instant::now();
    let cpu_before = cpu_ns();
    for headers in requests.iter().cycle().take(n as usize) {
        if !one_request(&runtime, &chain, headers, peer) {
            eprintln!("{variant}: the policy refused the benchmark's request");
            return ExitCode::FAILURE;
        }
    }
    let wall = started.elapsed().as_secs_f64() * 1e6 / f64::from(n);
    let cpu = match (cpu_before, cpu_ns()) {
        (Some(before), Some(after)) => {
            format!(
                ", CPU {:.3} µs",
                (after - before) as f64 / 1e3 / f64::from(n)
            )
        }
        _ => String::new(),
    };
    println!("{variant}: {n} requests, wall {wall:.3} µs{cpu} per request");
    ExitCode::SUCCESS
}

/// Nanoseconds this thread has run on a CPU, from the scheduler's statistics.
fn cpu_ns() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    stat.split_whitespace().next()?.parse().ok()
}
