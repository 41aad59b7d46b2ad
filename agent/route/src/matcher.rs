//! One compiled [`RouteMatch`]: its path, method, header and query conditions.

use fleetgate_shared::model::{PathMatch, RouteMatch};
use http::Method;

use crate::error::{CompileError, anchored_regex};
use crate::path::{PathCondition, normalize_prefix};
use crate::precedence::{PathRank, small};
use crate::request::RequestView;
use crate::value::{HeaderCondition, QueryCondition};

/// A match whose conditions must all hold. A route without matches gets one of these with no
/// conditions, so that every route has at least one.
#[derive(Debug)]
pub(crate) struct CompiledMatch {
    pub(crate) path: PathCondition,
    /// Empty: any method.
    methods: Vec<Method>,
    headers: Vec<HeaderCondition>,
    query: Vec<QueryCondition>,
}

impl CompiledMatch {
    /// The match of a route without `matches`: every request.
    pub(crate) fn everything() -> Self {
        Self {
            path: PathCondition::Any,
            methods: Vec::new(),
            headers: Vec::new(),
            query: Vec::new(),
        }
    }

    /// Compiles `m`; an error names the field under the match (`path.regex`, `headers[1].regex`).
    pub(crate) fn compile(m: &RouteMatch) -> Result<Self, (String, CompileError)> {
        let path = match &m.path {
            None => PathCondition::Any,
            Some(PathMatch::Exact(exact)) => PathCondition::Exact(exact.as_str().into()),
            Some(PathMatch::Prefix(prefix)) => {
                PathCondition::Prefix(normalize_prefix(prefix).into())
            }
            Some(PathMatch::Regex(pattern)) => PathCondition::Regex(
                anchored_regex(pattern).map_err(|e| ("path.regex".to_owned(), e))?,
            ),
        };
        let methods = m
            .methods
            .iter()
            .enumerate()
            .map(|(i, name)| {
                Method::from_bytes(name.as_bytes())
                    .map_err(|_| (format!("methods[{i}]"), CompileError::Method(name.clone())))
            })
            .collect::<Result<_, _>>()?;
        let headers = m
            .headers
            .iter()
            .enumerate()
            .map(|(i, h)| HeaderCondition::compile(h).map_err(|e| (format!("headers[{i}]"), e)))
            .collect::<Result<_, _>>()?;
        let query = m
            .query
            .iter()
            .enumerate()
            .map(|(i, q)| QueryCondition::compile(q).map_err(|e| (format!("query[{i}]"), e)))
            .collect::<Result<_, _>>()?;
        Ok(Self {
            path,
            methods,
            headers,
            query,
        })
    }

    /// The path part of this match's precedence key.
    pub(crate) fn path_rank(&self) -> PathRank {
        match &self.path {
            PathCondition::Any => PathRank::None,
            PathCondition::Regex(_) => PathRank::Regex,
            PathCondition::Prefix(prefix) => PathRank::Prefix {
                len: small(prefix.len()),
            },
            PathCondition::Exact(_) => PathRank::Exact,
        }
    }

    pub(crate) fn header_count(&self) -> usize {
        self.headers.len()
    }

    pub(crate) fn query_count(&self) -> usize {
        self.query.len()
    }

    pub(crate) fn has_methods(&self) -> bool {
        !self.methods.is_empty()
    }

    /// Whether every condition but the path holds. Cheapest first: methods, then headers, then
    /// query parameters, which need the query string scanned.
    pub(crate) fn holds_except_path(&self, req: &RequestView<'_>) -> bool {
        (self.methods.is_empty() || self.methods.contains(req.method))
            && self.headers.iter().all(|h| h.holds(req.headers))
            && self.query.iter().all(|q| q.holds(req.query))
    }

    /// Whether every condition holds (the table splits this up; tests use it whole).
    #[cfg(test)]
    pub(crate) fn holds(&self, req: &RequestView<'_>) -> bool {
        self.holds_except_path(req) && self.path.holds(req.path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::Req;

    fn compile(yaml_match: &str) -> CompiledMatch {
        let m: RouteMatch = crate::testing::parse_match(yaml_match);
        CompiledMatch::compile(&m).unwrap()
    }

    #[test]
    fn methods_empty_means_any() {
        let any = compile("path: {prefix: /}");
        assert!(any.holds(&Req::get("a", "/").method("DELETE").view()));
        let some = compile("methods: [GET, POST]");
        assert!(some.holds(&Req::get("a", "/").view()));
        assert!(some.holds(&Req::get("a", "/").method("POST").view()));
        assert!(!some.holds(&Req::get("a", "/").method("PUT").view()));
    }

    #[test]
    fn every_condition_must_hold() {
        let m = compile(
            "{path: {exact: /search}, methods: [GET], headers: [{name: x-a}], query: [{name: q}]}",
        );
        let ok = Req::get("a", "/search").header("x-a", "1").query("q=1");
        assert!(m.holds(&ok.view()));
        assert!(!m.holds(&ok.clone().path("/searchx").view()));
        assert!(!m.holds(&ok.clone().method("POST").view()));
        assert!(!m.holds(&Req::get("a", "/search").query("q=1").view()));
        assert!(!m.holds(&Req::get("a", "/search").header("x-a", "1").view()));
    }

    #[test]
    fn ranks_and_counts_feed_the_key() {
        assert_eq!(compile("path: {exact: /a}").path_rank(), PathRank::Exact);
        assert_eq!(
            compile("path: {prefix: /api/}").path_rank(),
            PathRank::Prefix { len: 4 }
        );
        assert_eq!(compile("path: {regex: /.*}").path_rank(), PathRank::Regex);
        let m = compile("{headers: [{name: a}, {name: b}], query: [{name: c}]}");
        assert_eq!(m.path_rank(), PathRank::None);
        assert_eq!((m.header_count(), m.query_count()), (2, 1));
        assert!(!m.has_methods());
    }
}
