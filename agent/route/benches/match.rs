//! `RouteTable::find` against 10,000 routes: exact hosts, wildcard hosts, host-less prefixes and
//! a few regexes, the mix a large multi-tenant gateway carries. The goal is under 1 µs median
//! per lookup for every request shape, including a 404 (which visits the most candidates).

#![allow(clippy::unwrap_used)] // setup outside the measured loop fails the bench loudly

use std::fmt::Write;
use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use fleetgate_agent_route::{RequestView, RouteTable};
use fleetgate_shared::bundle::Format;
use fleetgate_shared::{Snapshot, parse_bundle};
use http::{HeaderMap, HeaderValue, Method};

/// 6,000 routes on 2,000 exact hosts, 2,000 on 1,000 wildcards, 1,950 host-less prefixes and
/// 50 regexes (40 on exact hosts, 10 host-less).
fn config() -> String {
    let mut yaml = String::new();
    let mut route = |name: &str, body: &str| {
        write!(
            yaml,
            "---\nkind: Route\nname: {name}\nspec:\n{body}  direct_response: {{status: 200}}\n"
        )
        .unwrap();
    };
    for h in 0..2000 {
        let host = format!("  hosts: [svc{h}.example.com]\n");
        route(
            &format!("h{h}-api"),
            &format!("{host}  matches: [{{path: {{prefix: /api/v1}}, methods: [GET]}}]\n"),
        );
        route(
            &format!("h{h}-static"),
            &format!("{host}  matches: [{{path: {{prefix: /static}}}}]\n"),
        );
        route(
            &format!("h{h}-health"),
            &format!("{host}  matches: [{{path: {{exact: /health}}}}]\n"),
        );
    }
    for t in 0..1000 {
        let host = format!("  hosts: [\"*.tenant{t}.example.net\"]\n");
        route(
            &format!("t{t}-app"),
            &format!("{host}  matches: [{{path: {{prefix: /app}}}}]\n"),
        );
        route(
            &format!("t{t}-beta"),
            &format!(
                "{host}  matches: [{{path: {{prefix: /}}, headers: [{{name: x-beta, exact: \"1\"}}]}}]\n"
            ),
        );
    }
    for j in 0..1950 {
        route(
            &format!("s{j}"),
            &format!("  matches: [{{path: {{prefix: /svc{j}/api}}}}]\n"),
        );
    }
    for r in 0..40 {
        route(
            &format!("rx{r}"),
            &format!(
                "  hosts: [svc{r}.example.com]\n  matches: [{{path: {{regex: \"/reports/[0-9]+/(daily|weekly)\"}}}}]\n"
            ),
        );
    }
    for r in 0..10 {
        route(
            &format!("any-rx{r}"),
            &format!("  matches: [{{path: {{regex: \"/legacy{r}/.*\\\\.php\"}}}}]\n"),
        );
    }
    yaml
}

struct Request {
    host: &'static str,
    path: &'static str,
    query: Option<&'static str>,
    method: Method,
    headers: HeaderMap,
}

impl Request {
    fn new(host: &'static str, path: &'static str) -> Self {
        let mut headers = HeaderMap::new();
        headers.insert("user-agent", HeaderValue::from_static("bench/1.0"));
        headers.insert("accept", HeaderValue::from_static("*/*"));
        Self {
            host,
            path,
            query: Some("page=2&sort=asc"),
            method: Method::GET,
            headers,
        }
    }

    fn view(&self) -> RequestView<'_> {
        RequestView {
            host: self.host,
            path: self.path,
            query: self.query,
            method: &self.method,
            headers: &self.headers,
        }
    }
}

fn bench(c: &mut Criterion) {
    let resources = parse_bundle(&config(), Format::Yaml, "").unwrap();
    let snapshot = Snapshot::new(1, resources).unwrap();
    let table = RouteTable::compile(&snapshot).unwrap();
    assert_eq!(table.len(), 10_000);

    let cases = [
        (
            "exact_host_prefix",
            Request::new("svc1234.example.com", "/api/v1/users/42/orders"),
            Some("h1234-api"),
        ),
        (
            "exact_host_exact_path",
            Request::new("svc77.example.com", "/health"),
            Some("h77-health"),
        ),
        (
            "exact_host_regex",
            Request::new("svc7.example.com", "/reports/2024/weekly"),
            Some("rx7"),
        ),
        (
            "wildcard_host",
            Request::new("acme.tenant512.example.net", "/app/dashboard/settings"),
            Some("t512-app"),
        ),
        (
            "any_host_prefix",
            Request::new("whatever.example.org", "/svc999/api/items/7"),
            Some("s999"),
        ),
        (
            "miss_404",
            Request::new("unknown.example.org", "/no/such/path/here"),
            None,
        ),
    ];

    let mut group = c.benchmark_group("find_10k_routes");
    for (name, request, expected) in &cases {
        let view = request.view();
        assert_eq!(
            table.find(&view).map(|m| m.route.name.as_str()),
            *expected,
            "{name}"
        );
        group.bench_function(*name, |b| {
            b.iter(|| table.find(black_box(&view)).map(|m| m.route as *const _))
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
