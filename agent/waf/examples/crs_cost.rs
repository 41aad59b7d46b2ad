//! What one benign request costs libmodsecurity with the OWASP CRS, by rule file.
//!
//! ```sh
//! cargo run --release -p fleetgate-agent-waf --example crs_cost -- [HOST] [N] [CRS FILE...]
//! T=2 cargo run ...   # evaluations on two threads at once
//! COLD=8 cargo run ...   # 8 MiB written between evaluations (as a proxy's network path
//!                        # evicts the rule set between requests), each evaluation timed alone
//! ENGINE=native cargo run ...   # the native engine instead of libmodsecurity
//! ENGINE=native FOLD=0 cargo run ...   # ... evaluating every rule per request (no folding)
//! BARE=1 cargo run ...   # the request carries a Host header only, as wrk sends it
//! ```
//! Loads the agent's engine settings, Debian's `crs-setup.conf` at paranoia level 1 and either
//! every `REQUEST-*.conf` or only the named files, then evaluates `GET /` (Host HOST,
//! default `localhost`) N times (default 5,000) per thread and prints µs per evaluation.
//! docs/benchmarks.md ("WAF: where libmodsecurity's time goes") has the figures.

use std::time::Instant;

use fleetgate_agent_waf::{Engine, Outcome, Request, crs, native};

fn main() {
    let mut args = std::env::args().skip(1);
    let host = args.next().unwrap_or_else(|| "localhost".into());
    let n: usize = args.next().and_then(|n| n.parse().ok()).unwrap_or(5_000);
    let files: Vec<String> = args.collect();
    let threads: usize = std::env::var("T")
        .ok()
        .and_then(|t| t.parse().ok())
        .unwrap_or(1);

    let settings = crs::Settings {
        paranoia: 1,
        body_limit: 131_072,
        disabled: Vec::new(),
    };
    let rules = if files.is_empty() {
        settings.rules_text()
    } else {
        let names: Vec<&str> = files.iter().map(String::as_str).collect();
        settings.rules_text_with(&names)
    };
    let use_native = std::env::var("ENGINE").is_ok_and(|e| e == "native");
    let unfolded = std::env::var("FOLD").is_ok_and(|f| f == "0");
    let loaded = if use_native && unfolded {
        native::Engine::load_unfolded(&rules).map(|e| Either::Native(Box::new(e)))
    } else if use_native {
        native::Engine::load(&rules).map(|e| Either::Native(Box::new(e)))
    } else {
        Engine::load(&rules).map(Either::Modsec)
    };
    let engine = match loaded {
        Ok(engine) => engine,
        Err(e) => {
            eprintln!("the rule set did not load: {e}");
            std::process::exit(1);
        }
    };
    let headers: [(&[u8], &[u8]); 3] = [
        (b"Host", host.as_bytes()),
        (b"User-Agent", b"wrk"),
        (b"Accept", b"*/*"),
    ];
    // wrk's request (bench/plugins.sh) has no header but Host.
    let headers = if std::env::var("BARE").is_ok_and(|b| b == "1") {
        &headers[..1]
    } else {
        &headers[..]
    };
    let request = Request {
        id: "crs-cost",
        client: ([127, 0, 0, 1], 40000).into(),
        server: ([0, 0, 0, 0], 0).into(),
        method: "GET",
        uri: "/",
        http_version: "1.1",
        headers,
        body: b"",
    };
    let evaluate = || match engine.evaluate(&request) {
        Ok(outcome) => outcome,
        Err(e) => {
            eprintln!("evaluation failed: {e}");
            std::process::exit(1);
        }
    };
    let matched = evaluate().rule_ids();
    for _ in 0..200 {
        evaluate();
    }
    let cold_bytes: usize = std::env::var("COLD")
        .ok()
        .and_then(|mb| mb.parse::<usize>().ok())
        .map_or(0, |mb| mb << 20);
    // Evaluations timed one by one when the caches are cleared between them (the writes stay
    // outside the timed part), all together otherwise.
    let total = std::sync::Mutex::new(std::time::Duration::ZERO);
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| {
                let mut buffer = vec![0u8; cold_bytes];
                let mut spent = std::time::Duration::ZERO;
                if cold_bytes == 0 {
                    let started = Instant::now();
                    for _ in 0..n {
                        evaluate();
                    }
                    spent = started.elapsed();
                } else {
                    for round in 0..n {
                        // Every cache line of the buffer written.
                        for line in buffer.chunks_mut(64) {
                            line[0] = line[0].wrapping_add(round as u8);
                        }
                        std::hint::black_box(&buffer);
                        let started = Instant::now();
                        evaluate();
                        spent += started.elapsed();
                    }
                }
                *total.lock().expect("no thread panics holding it") += spent;
            });
        }
    });
    let per = total.into_inner().expect("not poisoned").as_secs_f64() * 1e6 / (n * threads) as f64;
    println!(
        "{per:7.1} µs per evaluation (wall, {threads} thread(s), {}); {} rules; matched {matched:?}; files {}",
        if cold_bytes == 0 {
            "warm caches".to_owned()
        } else {
            format!("{} MiB written between", cold_bytes >> 20)
        },
        engine.rule_count(),
        if files.is_empty() {
            "all REQUEST-*".to_owned()
        } else {
            files.join(" ")
        }
    );
}

/// The engine under measurement.
enum Either {
    Modsec(Engine),
    Native(Box<native::Engine>),
}

impl Either {
    fn evaluate(&self, request: &Request<'_>) -> Result<Outcome, String> {
        match self {
            Either::Modsec(e) => e.evaluate(request).map_err(|e| e.to_string()),
            Either::Native(e) => e.evaluate(request).map_err(|e| e.to_string()),
        }
    }

    fn rule_count(&self) -> String {
        match self {
            Either::Modsec(e) => e.rule_count().to_string(),
            Either::Native(e) => format!("{} ({} folded)", e.rule_count(), e.folded_rules()),
        }
    }
}
