//! Which route wins: one story per precedence rule of `docs/routing.md`, each showing the rule
//! deciding when every earlier rule ties, and losing to the rule before it. Then compilation of
//! an invalid snapshot, and of the shipped example configs.

#![allow(clippy::unwrap_used)] // helpers outside #[test] fns fail the test loudly

use fleetgate_agent_route::{RequestView, RouteTable};
use fleetgate_shared::bundle::Format;
use fleetgate_shared::{Snapshot, parse_bundle};
use http::{HeaderMap, HeaderName, HeaderValue, Method};
use tracing::info;

fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_target(false)
        .try_init();
}

fn table(yaml: &str) -> RouteTable {
    let resources = parse_bundle(yaml, Format::Yaml, "").unwrap();
    RouteTable::compile(&Snapshot::new(1, resources).unwrap()).unwrap()
}

/// A route answering directly (the action plays no part in matching), with `spec` lines
/// indented by two spaces.
fn route(name: &str, spec: &str) -> String {
    format!("---\nkind: Route\nname: {name}\nspec:\n{spec}  direct_response: {{status: 200}}\n")
}

#[derive(Clone)]
struct Req {
    host: String,
    path: String,
    query: Option<String>,
    method: Method,
    headers: HeaderMap,
}

fn get(host: &str, path: &str) -> Req {
    Req {
        host: host.into(),
        path: path.into(),
        query: None,
        method: Method::GET,
        headers: HeaderMap::new(),
    }
}

impl Req {
    fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.append(
            HeaderName::from_bytes(name.as_bytes()).unwrap(),
            HeaderValue::from_str(value).unwrap(),
        );
        self
    }
    fn query(mut self, query: &str) -> Self {
        self.query = Some(query.into());
        self
    }
    fn method(mut self, method: Method) -> Self {
        self.method = method;
        self
    }
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

/// The name of the winning route and the index of its winning match.
fn winner(t: &RouteTable, req: &Req) -> Option<(String, Option<usize>)> {
    t.find(&req.view())
        .map(|m| (m.route.name.clone(), m.match_index))
}

fn winner_name(t: &RouteTable, req: &Req) -> Option<String> {
    winner(t, req).map(|(name, _)| name)
}

#[test]
fn rule_1_higher_priority_wins_over_every_specificity() {
    init_tracing();
    info!("--- a catch-all at priority 1 and a very specific route at priority 0");
    let t = table(&format!(
        "{}{}",
        route("catch-all", "  priority: 1\n"),
        route(
            "specific",
            "  hosts: [api.example.com]\n  matches: [{path: {exact: /v1/users}, methods: [GET], headers: [{name: x-a}], query: [{name: q}]}]\n"
        ),
    ));
    let req = get("api.example.com", "/v1/users")
        .header("x-a", "1")
        .query("q=1");
    assert_eq!(winner_name(&t, &req).as_deref(), Some("catch-all"));

    info!("--- a negative priority makes a route a fallback");
    let t = table(&format!(
        "{}{}",
        route("fallback", "  priority: -10\n"),
        route("api", "  matches: [{path: {prefix: /api}}]\n"),
    ));
    assert_eq!(winner_name(&t, &get("h", "/api/x")).as_deref(), Some("api"));
    assert_eq!(
        winner_name(&t, &get("h", "/other")).as_deref(),
        Some("fallback")
    );
}

#[test]
fn rule_2_exact_host_beats_wildcard_beats_any_host() {
    init_tracing();
    let routes = format!(
        "{}{}{}",
        route("any", "  matches: [{path: {exact: /x}}]\n"),
        route(
            "wild",
            "  hosts: [\"*.example.com\"]\n  matches: [{path: {prefix: /}}]\n"
        ),
        route("exact", "  hosts: [api.example.com]\n"),
    );
    let t = table(&routes);
    info!("--- host specificity outranks path specificity");
    assert_eq!(
        winner_name(&t, &get("api.example.com", "/x")).as_deref(),
        Some("exact")
    );
    assert_eq!(
        winner_name(&t, &get("www.example.com", "/x")).as_deref(),
        Some("wild")
    );
    assert_eq!(
        winner_name(&t, &get("example.org", "/x")).as_deref(),
        Some("any")
    );
    info!("--- the wildcard is exactly one label");
    assert_eq!(
        winner_name(&t, &get("a.b.example.com", "/x")).as_deref(),
        Some("any")
    );
    assert_eq!(winner_name(&t, &get("a.b.example.com", "/y")), None);

    info!("--- priority still comes first");
    let t = table(&format!(
        "{routes}{}",
        route("any-urgent", "  priority: 5\n")
    ));
    assert_eq!(
        winner_name(&t, &get("api.example.com", "/x")).as_deref(),
        Some("any-urgent")
    );
}

#[test]
fn rule_3_exact_path_beats_longer_prefix_beats_regex_beats_no_path() {
    init_tracing();
    let t = table(&format!(
        "{}{}{}{}{}",
        route("none", ""),
        route("regex", "  matches: [{path: {regex: \"/api/.*\"}}]\n"),
        route("short", "  matches: [{path: {prefix: /api}}]\n"),
        route("long", "  matches: [{path: {prefix: /api/v1}}]\n"),
        route("exact", "  matches: [{path: {exact: /api/v1/users}}]\n"),
    ));
    let w = |path: &str| winner_name(&t, &get("h", path));
    info!("--- each kind of path condition against the kinds below it");
    assert_eq!(w("/api/v1/users").as_deref(), Some("exact"));
    assert_eq!(w("/api/v1/users/7").as_deref(), Some("long"));
    assert_eq!(w("/api/v2").as_deref(), Some("short"));
    assert_eq!(w("/apix").as_deref(), Some("none"));

    info!("--- a regex beats no path condition; a route's best match counts");
    let t = table(&format!(
        "{}{}",
        route("none", "  matches: [{headers: [{name: x-a}]}]\n"),
        route(
            "regex",
            "  matches: [{path: {regex: \"/api/.*\"}}, {path: {exact: /nope}}]\n"
        ),
    ));
    let req = get("h", "/api/x").header("x-a", "1");
    assert_eq!(winner(&t, &req), Some(("regex".into(), Some(0))));

    info!("--- path specificity outranks header conditions");
    let t = table(&format!(
        "{}{}",
        route("prefix", "  matches: [{path: {prefix: /api}}]\n"),
        route(
            "headers",
            "  matches: [{path: {regex: \"/api.*\"}, headers: [{name: x-a}, {name: x-b}]}]\n"
        ),
    ));
    let req = get("h", "/api/x").header("x-a", "1").header("x-b", "1");
    assert_eq!(winner_name(&t, &req).as_deref(), Some("prefix"));
}

#[test]
fn a_trailing_slash_prefix_is_the_same_prefix() {
    init_tracing();
    info!("--- `/docs/` matches `/docs` too, and ranks as long as `/docs`");
    let t = table(&format!(
        "{}{}",
        route("docs", "  matches: [{path: {prefix: /docs/}}]\n"),
        route(
            "docs-bare",
            "  matches: [{path: {prefix: /docs}, methods: [GET]}]\n"
        ),
    ));
    let post = |path: &str| get("h", path).method(Method::POST);
    assert_eq!(winner_name(&t, &post("/docs")).as_deref(), Some("docs"));
    assert_eq!(winner_name(&t, &post("/docs/a")).as_deref(), Some("docs"));
    assert_eq!(winner_name(&t, &post("/docsx")), None);
    // Same length after normalization, so rule (6), the method condition, decides.
    assert_eq!(
        winner_name(&t, &get("h", "/docs/a")).as_deref(),
        Some("docs-bare")
    );
}

#[test]
fn rule_4_more_header_conditions_win() {
    init_tracing();
    let t = table(&format!(
        "{}{}{}",
        route(
            "one",
            "  matches: [{path: {prefix: /}, headers: [{name: x-a}], query: [{name: q}, {name: r}]}]\n"
        ),
        route(
            "two",
            "  matches: [{path: {prefix: /}, headers: [{name: x-a}, {name: x-b}]}]\n"
        ),
        route(
            "zero",
            "  matches: [{path: {prefix: /}, methods: [GET], query: [{name: q}, {name: r}, {name: s}]}]\n"
        ),
    ));
    info!("--- two header conditions beat one, which beats none, whatever the query and method");
    let req = get("h", "/")
        .header("x-a", "1")
        .header("x-b", "1")
        .query("q&r&s");
    assert_eq!(winner_name(&t, &req).as_deref(), Some("two"));
    let req = get("h", "/").header("x-a", "1").query("q&r&s");
    assert_eq!(winner_name(&t, &req).as_deref(), Some("one"));
    let req = get("h", "/").query("q&r&s");
    assert_eq!(winner_name(&t, &req).as_deref(), Some("zero"));
}

#[test]
fn rule_5_more_query_conditions_win() {
    init_tracing();
    let t = table(&format!(
        "{}{}",
        route(
            "by-query",
            "  matches: [{path: {prefix: /search}, query: [{name: q}, {name: lang, exact: en}]}]\n"
        ),
        route(
            "by-method",
            "  matches: [{path: {prefix: /search}, methods: [GET], query: [{name: q}]}]\n"
        ),
    ));
    info!("--- two query conditions beat one plus a method");
    assert_eq!(
        winner_name(&t, &get("h", "/search").query("q=x&lang=en")).as_deref(),
        Some("by-query")
    );
    assert_eq!(
        winner_name(&t, &get("h", "/search").query("q=x&lang=de")).as_deref(),
        Some("by-method")
    );
}

#[test]
fn rule_6_a_method_condition_wins_a_tie() {
    init_tracing();
    let t = table(&format!(
        "{}{}",
        route("a-any-method", "  matches: [{path: {prefix: /upload}}]\n"),
        route(
            "b-post",
            "  matches: [{path: {prefix: /upload}, methods: [POST, PUT]}]\n"
        ),
    ));
    info!("--- `b-post` loses on name but wins on its method condition");
    assert_eq!(
        winner_name(&t, &get("h", "/upload").method(Method::POST)).as_deref(),
        Some("b-post")
    );
    assert_eq!(
        winner_name(&t, &get("h", "/upload")).as_deref(),
        Some("a-any-method")
    );
}

#[test]
fn rule_7_ties_go_to_the_first_name_then_the_first_match() {
    init_tracing();
    info!("--- same key up to the name: the name first in byte order wins");
    let t = table(&format!(
        "{}{}{}",
        route(
            "beta",
            "  matches: [{path: {prefix: /x}, headers: [{name: x-a}]}]\n"
        ),
        route(
            "alpha",
            "  matches: [{path: {prefix: /x}, headers: [{name: x-b}]}]\n"
        ),
        route("gamma", ""),
    ));
    let req = get("h", "/x").header("x-a", "1").header("x-b", "1");
    assert_eq!(winner_name(&t, &req).as_deref(), Some("alpha"));
    assert_eq!(
        winner_name(&t, &get("h", "/x").header("x-a", "1")).as_deref(),
        Some("beta")
    );

    info!("--- one route, two matches with the same key: the lower index wins");
    let t = table(&route(
        "multi",
        "  matches: [{path: {prefix: /y}, headers: [{name: x-b}]}, {path: {prefix: /y}, headers: [{name: x-a}]}]\n",
    ));
    let req = get("h", "/y").header("x-a", "1").header("x-b", "1");
    assert_eq!(winner(&t, &req), Some(("multi".into(), Some(0))));
    assert_eq!(
        winner(&t, &get("h", "/y").header("x-a", "1")),
        Some(("multi".into(), Some(1)))
    );
}

#[test]
fn compile_rejects_an_invalid_snapshot_with_every_validation_error() {
    init_tracing();
    info!("--- a bad regex, a forward to a missing service, and two ambiguous routes");
    let yaml = format!(
        "{}{}{}---\nkind: Route\nname: orphan\nspec:\n  forward: {{backends: [{{service: missing}}]}}\n",
        route(
            "bad-regex",
            "  matches: [{path: {regex: \"/users/([0-9]+\"}}]\n"
        ),
        route(
            "twin-a",
            "  hosts: [a.example.com]\n  matches: [{path: {prefix: /}}]\n"
        ),
        route(
            "twin-b",
            "  hosts: [a.example.com]\n  matches: [{path: {prefix: /}}]\n"
        ),
    );
    let resources = parse_bundle(&yaml, Format::Yaml, "").unwrap();
    let snapshot = Snapshot::new(1, resources.clone()).unwrap();
    let errors = RouteTable::compile(&snapshot).unwrap_err();
    let expected = fleetgate_shared::validate(&snapshot.clone().into_resources()).unwrap_err();
    assert_eq!(errors, expected);
    let text: Vec<String> = errors.iter().map(ToString::to_string).collect();
    info!(?text, "rejected");
    assert_eq!(errors.len(), 3, "{text:#?}");
    assert!(text[0].starts_with("route/bad-regex: spec.matches[0].path.regex: invalid regex"));
    assert!(text[1].starts_with("route/orphan: spec.forward.backends[0].service"));
    assert!(text[2].starts_with("route/twin-b: spec.matches[0]: ambiguous with route/twin-a"));

    info!("--- TryFrom says the same");
    assert_eq!(RouteTable::try_from(&snapshot).unwrap_err(), expected);
}

#[test]
fn the_shipped_example_configs_compile() {
    init_tracing();
    for dir in ["examples/standalone", "examples/fleet"] {
        info!("--- {dir}");
        let path = format!("{}/../../{dir}", env!("CARGO_MANIFEST_DIR"));
        let resources = fleetgate_shared::load_paths(&[path]).unwrap();
        let routes = resources
            .iter()
            .filter(|r| r.kind() == fleetgate_shared::Kind::Route)
            .count();
        let t = RouteTable::compile(&Snapshot::new(1, resources).unwrap()).unwrap();
        assert_eq!(t.len(), routes);
        assert!(
            t.routes()
                .zip(t.routes().skip(1))
                .all(|(a, b)| a.name < b.name)
        );
    }
}

#[test]
fn the_worked_example_in_docs_routing_md_holds() {
    init_tracing();
    info!("--- the YAML of docs/routing.md's worked example, plus the services it forwards to");
    let doc = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../docs/routing.md"
    ))
    .unwrap();
    let example = doc
        .split("```yaml\n")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .unwrap();
    let mut yaml = example.to_owned();
    for service in ["api", "uploads", "tenant-app", "tenant-app-beta"] {
        yaml.push_str(&format!(
            "---\nkind: Service\nname: {service}\nspec: {{endpoints: [{{address: \"10.0.0.1:80\"}}]}}\n"
        ));
    }
    let t = table(&yaml);

    info!("--- every row of its table");
    let cases = [
        (
            get("api.example.com", "/v1/upload/3").method(Method::POST),
            "api-upload",
        ),
        (get("api.example.com", "/v1/upload/3"), "api"),
        (get("api.example.com", "/v2"), "tenants"),
        (get("acme.example.com", "/").header("x-beta", "1"), "beta"),
        (get("example.com", "/"), "fallback"),
        (get("www.other.org", "/"), "fallback"),
    ];
    for (req, expected) in cases {
        assert_eq!(
            winner_name(&t, &req).as_deref(),
            Some(expected),
            "{} {}{}",
            req.method,
            req.host,
            req.path
        );
    }
}
