//! The indexed lookup agrees with the definition: for random route sets and random requests,
//! `RouteTable::find` picks what a naive scan of every route picks when it sorts the matching
//! (route, host, match) triples by the precedence key of `docs/routing.md`.
//!
//! The reference below shares no code with the crate: its host, path, header and query
//! matching are written out from the documented rules, as plainly as possible.

#![allow(clippy::unwrap_used)] // helpers outside #[test] fns fail the test loudly

use std::cmp::Reverse;
use std::collections::BTreeMap;

use fleetgate_agent_route::{RequestView, RouteTable};
use fleetgate_shared::model::{
    DirectResponse, Filters, PathMatch, RouteMatch, RouteSpec, ValueMatch,
};
use fleetgate_shared::{Resource, Snapshot, Spec};
use http::{HeaderMap, HeaderName, HeaderValue, Method};
use proptest::prelude::*;
use proptest::sample::{select, subsequence};

// ------------------------------------------------------------------------ the reference

#[derive(Clone, Debug)]
struct Req {
    host: String,
    path: String,
    query: Option<String>,
    method: Method,
    headers: HeaderMap,
}

impl Req {
    fn view(&self) -> RequestView<'_> {
        RequestView {
            host: &self.host,
            path: &self.path,
            query: self.query.as_deref(),
            method: &self.method,
            headers: &self.headers,
        }
    }
}

/// The documented key: priority, host rank, path rank, header count, query count, method
/// condition, then name and match index reversed (first wins). Greatest wins.
type Key = (
    i32,
    (u8, usize),
    (u8, usize),
    usize,
    usize,
    bool,
    Reverse<String>,
    Reverse<usize>,
);

/// What a lookup reports: route name, match index, matched prefix.
type Outcome = (String, Option<usize>, Option<String>);

fn reference(routes: &[(String, RouteSpec)], req: &Req) -> Option<Outcome> {
    let mut candidates: Vec<(Key, Outcome)> = Vec::new();
    for (name, spec) in routes {
        let host_ranks: Vec<(u8, usize)> = if spec.hosts.is_empty() {
            vec![(0, 0)]
        } else {
            spec.hosts
                .iter()
                .filter_map(|pattern| host_rank(pattern, &req.host))
                .collect()
        };
        let matches: Vec<(Option<usize>, RouteMatch)> = if spec.matches.is_empty() {
            vec![(None, RouteMatch::default())]
        } else {
            spec.matches
                .iter()
                .cloned()
                .enumerate()
                .map(|(i, m)| (Some(i), m))
                .collect()
        };
        for host in &host_ranks {
            for (index, m) in &matches {
                if !match_holds(m, req) {
                    continue;
                }
                let (path_rank, prefix) = path_rank(m.path.as_ref());
                let key = (
                    spec.priority,
                    *host,
                    path_rank,
                    m.headers.len(),
                    m.query.len(),
                    !m.methods.is_empty(),
                    Reverse(name.clone()),
                    Reverse(index.unwrap_or(0)),
                );
                candidates.push((key, (name.clone(), *index, prefix)));
            }
        }
    }
    candidates.sort_by(|a, b| a.0.cmp(&b.0));
    candidates.pop().map(|(_, outcome)| outcome)
}

fn host_rank(pattern: &str, host: &str) -> Option<(u8, usize)> {
    match pattern.strip_prefix("*.") {
        Some(suffix) => {
            let label = host.strip_suffix(suffix)?.strip_suffix('.')?;
            (!label.is_empty() && !label.contains('.')).then_some((1, suffix.len()))
        }
        None => (pattern == host).then_some((2, 0)),
    }
}

/// A prefix without its trailing slashes, `/` for the root.
fn trimmed(prefix: &str) -> String {
    let t = prefix.trim_end_matches('/');
    if t.is_empty() { "/".into() } else { t.into() }
}

fn path_rank(path: Option<&PathMatch>) -> ((u8, usize), Option<String>) {
    match path {
        None => ((0, 0), None),
        Some(PathMatch::Regex(_)) => ((1, 0), None),
        Some(PathMatch::Prefix(p)) => ((2, trimmed(p).len()), Some(trimmed(p))),
        Some(PathMatch::Exact(_)) => ((3, 0), None),
    }
}

fn match_holds(m: &RouteMatch, req: &Req) -> bool {
    let path_ok = match &m.path {
        None => true,
        Some(PathMatch::Exact(e)) => req.path == *e,
        Some(PathMatch::Prefix(p)) => {
            let p = trimmed(p);
            p == "/" || req.path == p || req.path.starts_with(&format!("{p}/"))
        }
        Some(PathMatch::Regex(r)) => regex::Regex::new(&format!("^(?:{r})$"))
            .unwrap()
            .is_match(&req.path),
    };
    let method_ok = m.methods.is_empty() || m.methods.iter().any(|x| x == req.method.as_str());
    let headers_ok = m.headers.iter().all(|vm| {
        let values: Vec<Vec<u8>> = req
            .headers
            .iter()
            .filter(|(n, _)| n.as_str().eq_ignore_ascii_case(&vm.name))
            .map(|(_, v)| v.as_bytes().to_vec())
            .collect();
        value_match_holds(vm, &values)
    });
    let query_ok = m.query.iter().all(|vm| {
        let mut values = Vec::new();
        for pair in req.query.as_deref().unwrap_or("").split('&') {
            if pair.is_empty() {
                continue;
            }
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            if decode(k) == vm.name.as_bytes() {
                values.push(decode(v));
            }
        }
        value_match_holds(vm, &values)
    });
    path_ok && method_ok && headers_ok && query_ok
}

fn value_match_holds(vm: &ValueMatch, values: &[Vec<u8>]) -> bool {
    let one = |v: &Vec<u8>| {
        if let Some(e) = &vm.exact {
            v == e.as_bytes()
        } else if let Some(p) = &vm.prefix {
            v.starts_with(p.as_bytes())
        } else if let Some(r) = &vm.regex {
            regex::bytes::Regex::new(&format!("^(?:{r})$"))
                .unwrap()
                .is_match(v)
        } else {
            true
        }
    };
    values.iter().any(one) != vm.invert
}

fn decode(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && let (Some(h), Some(l)) = (
                (b[i + 1] as char).to_digit(16),
                (b[i + 2] as char).to_digit(16),
            )
        {
            out.push((h * 16 + l) as u8);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    out
}

// ------------------------------------------------------------------------ generators

fn vm(
    name: &str,
    exact: Option<&str>,
    prefix: Option<&str>,
    regex: Option<&str>,
    invert: bool,
) -> ValueMatch {
    ValueMatch {
        name: name.into(),
        exact: exact.map(Into::into),
        prefix: prefix.map(Into::into),
        regex: regex.map(Into::into),
        invert,
    }
}

/// How the random configs are drawn.
#[derive(Clone, Copy, Debug)]
enum Shape {
    /// Every dimension varies: hosts, path kinds, priorities, conditions.
    Wide,
    /// Routes crowd onto one host and a couple of paths at one priority, and requests satisfy
    /// most conditions, so that the later rules (header, query and method counts, name, match
    /// index) decide, which rarely happens in wide configs.
    Crowded,
}

fn path_match(shape: Shape) -> BoxedStrategy<Option<PathMatch>> {
    match shape {
        Shape::Wide => prop_oneof![
            Just(None),
            select(vec![
                "/",
                "/api",
                "/api/v1",
                "/api/",
                "/static/app.js",
                "/a"
            ])
            .prop_map(|p| Some(PathMatch::Exact(p.into()))),
            select(vec![
                "/", "/api", "/api/", "/api/v1", "/ap", "/static", "//", "/a"
            ])
            .prop_map(|p| Some(PathMatch::Prefix(p.into()))),
            select(vec![
                "/api/.*",
                "/api/v[0-9]+",
                ".*\\.js",
                "/users/[0-9]+",
                "/a|/api"
            ])
            .prop_map(|p| Some(PathMatch::Regex(p.into()))),
        ]
        .boxed(),
        Shape::Crowded => prop_oneof![
            Just(None),
            Just(Some(PathMatch::Prefix("/api".into()))),
            Just(Some(PathMatch::Prefix("/api/".into()))),
        ]
        .boxed(),
    }
}

fn route_match(shape: Shape) -> impl Strategy<Value = RouteMatch> {
    let headers = vec![
        vm("x-a", None, None, None, false),
        vm("X-A", Some("1"), None, None, false),
        vm("x-b", None, Some("be"), None, false),
        vm("x-b", None, None, Some("b[a-z]+"), false),
        vm("x-a", Some("1"), None, None, true),
    ];
    let query = vec![
        vm("q", None, None, None, false),
        vm("q", Some("a b"), None, None, false),
        vm("v", None, Some("1"), None, false),
        vm("v", None, None, Some("[0-9]+"), true),
        vm("q", Some(""), None, None, false),
    ];
    (
        path_match(shape),
        subsequence(vec!["GET", "POST"], 0..=2),
        subsequence(headers, 0..=2),
        subsequence(query, 0..=2),
    )
        .prop_map(|(path, methods, headers, query)| RouteMatch {
            path,
            methods: methods.into_iter().map(Into::into).collect(),
            headers,
            query,
        })
}

fn route_spec(shape: Shape) -> impl Strategy<Value = RouteSpec> {
    let (hosts, priorities) = match shape {
        Shape::Wide => (
            vec![
                "a.example.com",
                "b.example.com",
                "*.example.com",
                "*.b.example.com",
                "x.b.example.com",
            ],
            0..=2i32,
        ),
        Shape::Crowded => (vec!["a.example.com"], 0..=0i32),
    };
    (
        subsequence(hosts.clone(), 0..=hosts.len().min(2)),
        prop::collection::vec(route_match(shape), 0..=2),
        priorities,
    )
        .prop_map(|(hosts, matches, priority)| RouteSpec {
            hosts: hosts.into_iter().map(Into::into).collect(),
            matches,
            priority,
            forward: None,
            redirect: None,
            direct_response: Some(DirectResponse {
                status: 200,
                body: String::new(),
                content_type: None,
            }),
            filters: Filters::default(),
            policies: Vec::new(),
        })
}

/// Named routes, dropping any that validation would reject as ambiguous with an earlier one
/// (same host, same match up to the order of its lists, same priority). Names are shuffled so
/// that name order is not generation order.
fn route_set(shape: Shape) -> impl Strategy<Value = Vec<(String, RouteSpec)>> {
    prop::collection::vec(route_spec(shape), 1..=16)
        .prop_flat_map(|specs| {
            let n = specs.len();
            (Just(specs), Just((0..n).collect::<Vec<_>>()).prop_shuffle())
        })
        .prop_map(|(specs, order)| {
            let mut claimed: BTreeMap<(String, RouteMatch, i32), usize> = BTreeMap::new();
            let mut kept = Vec::new();
            for (i, spec) in specs.into_iter().enumerate() {
                let hosts = if spec.hosts.is_empty() {
                    vec!["*".to_owned()]
                } else {
                    spec.hosts.clone()
                };
                let matches = if spec.matches.is_empty() {
                    vec![RouteMatch::default()]
                } else {
                    spec.matches.clone()
                };
                let keys: Vec<_> = hosts
                    .iter()
                    .flat_map(|h| {
                        matches.iter().map(move |m| {
                            let mut m = m.clone();
                            m.methods.sort();
                            m.headers.sort();
                            m.query.sort();
                            (h.clone(), m, spec.priority)
                        })
                    })
                    .collect();
                if keys
                    .iter()
                    .any(|k| claimed.get(k).is_some_and(|owner| *owner != i))
                {
                    continue;
                }
                for k in keys {
                    claimed.insert(k, i);
                }
                kept.push((format!("r{}", order[i]), spec));
            }
            kept
        })
}

fn request(shape: Shape) -> BoxedStrategy<Req> {
    let parts = match shape {
        Shape::Wide => (
            select(vec![
                "a.example.com",
                "b.example.com",
                "c.example.com",
                "x.b.example.com",
                "y.b.example.com",
                "example.com",
                "other.org",
                "a.b.c.example.com",
            ]),
            select(vec![
                "/",
                "/api",
                "/api/",
                "/api/v1",
                "/api/v1/x",
                "/apix",
                "/ap",
                "/static/app.js",
                "/static",
                "/users/42",
                "/api/v2",
                "/a",
                "//",
                "",
                "/a/b",
            ]),
            select(vec![Method::GET, Method::POST, Method::PUT]),
            select(vec![None, Some("1"), Some("2")]),
            select(vec![None, Some("beta"), Some("bx"), Some("b")]),
            select(vec![
                None,
                Some("q"),
                Some("q=a%20b"),
                Some("q=x&v=12"),
                Some("v=1a"),
                Some("v="),
                Some("q=a+b"),
                Some("q=&v=9"),
                Some("%71=a%20b"),
            ]),
        ),
        Shape::Crowded => (
            select(vec!["a.example.com", "b.example.com"]),
            select(vec!["/api", "/api/x"]),
            select(vec![Method::GET, Method::POST]),
            select(vec![Some("1"), Some("1"), None]),
            select(vec![Some("beta"), Some("bx")]),
            select(vec![
                Some("q=a%20b&v=1"),
                Some("q=a%20b&v=1"),
                Some("q&v=1x"),
                None,
            ]),
        ),
    };
    parts
        .prop_map(|(host, path, method, xa, xb, query)| {
            let mut headers = HeaderMap::new();
            if let Some(v) = xa {
                headers.append(HeaderName::from_static("x-a"), HeaderValue::from_static(v));
            }
            if let Some(v) = xb {
                headers.append(HeaderName::from_static("x-b"), HeaderValue::from_static(v));
            }
            Req {
                host: host.into(),
                path: path.into(),
                query: query.map(Into::into),
                method,
                headers,
            }
        })
        .boxed()
}

// ------------------------------------------------------------------------ the property

fn resource(name: &str, spec: &RouteSpec) -> Resource {
    Resource {
        name: name.to_owned(),
        labels: Default::default(),
        placement: None,
        spec: Spec::Route(spec.clone()),
    }
}

fn check(routes: &[(String, RouteSpec)], requests: &[Req]) -> Result<(), TestCaseError> {
    let snapshot = Snapshot::new(1, routes.iter().map(|(n, s)| resource(n, s))).unwrap();
    let table = RouteTable::compile(&snapshot);
    prop_assert!(table.is_ok(), "{:?}", table.err());
    check_table(&table.unwrap(), routes, requests)
}

/// The same route set compiled as a change: first every other route, with the first one
/// different, then a delta that adds the rest and restores the first. The second table takes
/// over the routes the two snapshots share and must find exactly what a fresh one finds.
fn check_incremental(
    routes: &[(String, RouteSpec)],
    requests: &[Req],
) -> Result<(), TestCaseError> {
    let mut first: Vec<Resource> = routes
        .iter()
        .step_by(2)
        .map(|(n, s)| resource(n, s))
        .collect();
    if let Some(Resource {
        spec: Spec::Route(spec),
        ..
    }) = first.first_mut()
    {
        spec.priority = spec.priority.wrapping_add(7);
        spec.hosts.push("changed.example".into());
    }
    let first = Snapshot::new(1, first).unwrap();
    let before = RouteTable::compile_validated(&first, &RouteTable::empty()).unwrap();
    let delta = fleetgate_shared::Delta {
        from: 1,
        to: 2,
        upserts: routes
            .iter()
            .enumerate()
            .filter(|(i, _)| i % 2 == 1 || *i == 0)
            .map(|(_, (n, s))| resource(n, s))
            .collect(),
        deletes: Vec::new(),
    };
    let second = first.apply(&delta).unwrap();
    let after = RouteTable::compile_validated(&second, &before).unwrap();
    check_table(&after, routes, requests)
}

fn check_table(
    table: &RouteTable,
    routes: &[(String, RouteSpec)],
    requests: &[Req],
) -> Result<(), TestCaseError> {
    prop_assert_eq!(table.len(), routes.len());
    for req in requests {
        let expected = reference(routes, req);
        let found = table.find(&req.view()).map(|m| {
            (
                m.route.name.clone(),
                m.match_index,
                m.matched_prefix.map(str::to_owned),
            )
        });
        prop_assert_eq!(found, expected, "request {:?}", req);
    }
    Ok(())
}

/// The same route set reached by patching ([`RouteTable::compile_change`]): every third route
/// starts different (priority, an extra host, its matches reversed), one delta restores half of
/// those and a second the rest. Each patched table must find what a fresh one finds.
fn check_patched(routes: &[(String, RouteSpec)], requests: &[Req]) -> Result<(), TestCaseError> {
    let version = |restored: &dyn Fn(usize) -> bool| -> Vec<(String, RouteSpec)> {
        routes
            .iter()
            .enumerate()
            .map(|(i, (name, spec))| {
                let mut spec = spec.clone();
                if i % 3 == 0 && !restored(i) {
                    spec.priority = spec.priority.wrapping_add(7);
                    spec.hosts.push("changed.example".into());
                    spec.matches.reverse();
                }
                (name.clone(), spec)
            })
            .collect()
    };
    let stages = [
        version(&|_| false),
        version(&|i| i % 6 == 3),
        version(&|_| true),
    ];
    let snapshot = |revision: u64, routes: &[(String, RouteSpec)]| {
        Snapshot::new(revision, routes.iter().map(|(n, s)| resource(n, s))).unwrap()
    };
    let mut base = snapshot(1, &stages[0]);
    // Validation is not under test: a changed version may be ambiguous; precedence still decides.
    let fresh = |snapshot: &Snapshot| RouteTable::compile_validated(snapshot, &RouteTable::empty());
    let mut table = fresh(&base).unwrap();
    for (step, stage) in stages.iter().enumerate().skip(1) {
        let next = base
            .apply(&fleetgate_shared::diff(
                &base,
                &snapshot(base.revision + 1, stage),
            ))
            .unwrap();
        table = RouteTable::compile_change(&base, &next, &table).unwrap();
        prop_assert!(table.same_names(&fresh(&base).unwrap()), "step {}", step);
        check_table(&table, stage, requests)?;
        base = next;
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(768))]

    #[test]
    fn find_agrees_with_a_naive_scan_of_every_route(
        routes in route_set(Shape::Wide),
        requests in prop::collection::vec(request(Shape::Wide), 1..=24),
    ) {
        check(&routes, &requests)?;
    }

    #[test]
    fn find_agrees_with_a_naive_scan_when_routes_crowd_one_host_and_path(
        routes in route_set(Shape::Crowded),
        requests in prop::collection::vec(request(Shape::Crowded), 1..=8),
    ) {
        check(&routes, &requests)?;
    }

    #[test]
    fn a_table_compiled_as_a_change_finds_what_a_fresh_one_finds(
        routes in route_set(Shape::Wide),
        requests in prop::collection::vec(request(Shape::Wide), 1..=24),
    ) {
        check_incremental(&routes, &requests)?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn a_patched_table_finds_what_a_fresh_one_finds(
        routes in route_set(Shape::Wide),
        requests in prop::collection::vec(request(Shape::Wide), 1..=24),
    ) {
        check_patched(&routes, &requests)?;
    }

    #[test]
    fn a_patched_table_finds_what_a_fresh_one_finds_when_routes_crowd(
        routes in route_set(Shape::Crowded),
        requests in prop::collection::vec(request(Shape::Crowded), 1..=8),
    ) {
        check_patched(&routes, &requests)?;
    }
}
