//! Helpers for the unit tests: tables from YAML, and owned requests to take views of.

use fleetgate_shared::bundle::Format;
use fleetgate_shared::model::RouteMatch;
use fleetgate_shared::{Snapshot, Spec, parse_bundle};
use http::{HeaderMap, HeaderName, HeaderValue, Method};

use crate::{RequestView, RouteTable};

/// Compiles the YAML bundle, failing the test with every error.
pub(crate) fn table(yaml: &str) -> RouteTable {
    let resources = parse_bundle(yaml, Format::Yaml, "").unwrap();
    let snapshot = Snapshot::new(1, resources).unwrap();
    RouteTable::compile(&snapshot).unwrap()
}

/// The one match of a route whose `matches` list is `- <yaml>`.
pub(crate) fn parse_match(yaml: &str) -> RouteMatch {
    let doc = format!(
        "kind: Route\nname: t\nspec:\n  matches:\n    - {yaml}\n  direct_response: {{status: 200}}\n"
    );
    let resources = parse_bundle(&doc, Format::Yaml, "").unwrap();
    match &resources[0].spec {
        Spec::Route(spec) => spec.matches[0].clone(),
        other => panic!("not a route: {other:?}"),
    }
}

/// A request that owns its parts; [`Req::view`] lends them out as the matcher sees them.
#[derive(Clone, Debug)]
pub(crate) struct Req {
    host: String,
    path: String,
    query: Option<String>,
    method: Method,
    headers: HeaderMap,
}

impl Req {
    pub(crate) fn get(host: &str, path: &str) -> Self {
        Self {
            host: host.to_owned(),
            path: path.to_owned(),
            query: None,
            method: Method::GET,
            headers: HeaderMap::new(),
        }
    }

    pub(crate) fn method(mut self, method: &str) -> Self {
        self.method = Method::from_bytes(method.as_bytes()).unwrap();
        self
    }

    pub(crate) fn path(mut self, path: &str) -> Self {
        self.path = path.to_owned();
        self
    }

    pub(crate) fn query(mut self, query: &str) -> Self {
        self.query = Some(query.to_owned());
        self
    }

    pub(crate) fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.append(
            HeaderName::from_bytes(name.as_bytes()).unwrap(),
            HeaderValue::from_str(value).unwrap(),
        );
        self
    }

    pub(crate) fn view(&self) -> RequestView<'_> {
        RequestView {
            host: &self.host,
            path: &self.path,
            query: self.query.as_deref(),
            method: &self.method,
            headers: &self.headers,
        }
    }
}
