//! What one benign request costs libmodsecurity with the OWASP CRS, by rule file.
//!
//! ```sh
//! cargo run --release -p fleetgate-agent-waf --example crs_cost -- [HOST] [N] [CRS FILE...]
//! T=2 cargo run ...   # evaluations on two threads at once
//! ```
//! Loads the agent's engine settings, Debian's `crs-setup.conf` at paranoia level 1 and either
//! every `REQUEST-*.conf` or only the named files, then evaluates `GET /` (Host HOST,
//! default `localhost`) N times (default 5,000) per thread and prints µs per evaluation.
//! docs/benchmarks.md ("WAF: where libmodsecurity's time goes") has the figures.

use std::time::Instant;

use fleetgate_agent_waf::{Engine, Request};

const CRS_RULES: &str = "/usr/share/modsecurity-crs/rules";

fn main() {
    let mut args = std::env::args().skip(1);
    let host = args.next().unwrap_or_else(|| "localhost".into());
    let n: usize = args.next().and_then(|n| n.parse().ok()).unwrap_or(5_000);
    let files: Vec<String> = args.collect();
    let threads: usize = std::env::var("T")
        .ok()
        .and_then(|t| t.parse().ok())
        .unwrap_or(1);

    let mut rules = String::from(
        r#"SecRuleEngine On
SecRequestBodyAccess On
SecRequestBodyLimit 131072
SecRequestBodyNoFilesLimit 131072
SecRequestBodyLimitAction ProcessPartial
SecResponseBodyAccess Off
SecAuditEngine Off
SecAction "id:10005,phase:1,pass,nolog,t:none,setvar:'tx.allowed_methods=GET HEAD POST OPTIONS PUT PATCH DELETE'"
Include /etc/modsecurity/crs/crs-setup.conf
SecAction "id:10006,phase:1,pass,nolog,t:none,setvar:tx.paranoia_level=1,setvar:tx.executing_paranoia_level=1,setvar:tx.blocking_paranoia_level=1,setvar:tx.detection_paranoia_level=1"
"#,
    );
    if files.is_empty() {
        rules.push_str(&format!("Include {CRS_RULES}/REQUEST-*.conf\n"));
    }
    for file in &files {
        rules.push_str(&format!("Include {CRS_RULES}/{file}\n"));
    }
    let engine = match Engine::load(&rules) {
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
    let request = Request {
        id: "crs-cost",
        client: ([127, 0, 0, 1], 40000).into(),
        server: ([0, 0, 0, 0], 0).into(),
        method: "GET",
        uri: "/",
        http_version: "1.1",
        headers: &headers,
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
    let started = Instant::now();
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| {
                for _ in 0..n {
                    evaluate();
                }
            });
        }
    });
    let per = started.elapsed().as_secs_f64() * 1e6 / (n * threads) as f64;
    println!(
        "{per:7.1} µs per evaluation (wall, {threads} thread(s)); {} rules; matched {matched:?}; files {}",
        engine.rule_count(),
        if files.is_empty() {
            "all REQUEST-*".to_owned()
        } else {
            files.join(" ")
        }
    );
}
