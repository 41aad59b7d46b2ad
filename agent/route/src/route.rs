//! One compiled route: the spec, plus everything parsed out of it ahead of requests.

use std::borrow::Cow;

use fleetgate_shared::ValidationError;
use fleetgate_shared::model::RouteSpec;

use crate::canary::CompiledCanary;
use crate::error::CompileError;
use crate::matcher::CompiledMatch;
use crate::request::RequestView;
use crate::table::Matched;

/// A route ready to serve: its spec, with its canary conditions and rewrite regex compiled.
#[derive(Debug)]
pub struct CompiledRoute {
    /// The route resource's name.
    pub name: String,
    /// The route as configured; actions, filters and policies are read from here.
    pub spec: RouteSpec,
    /// One per `spec.forward.canary` rule, in order; empty without `forward`.
    pub canary: Vec<CompiledCanary>,
    /// `spec.filters.rewrite.path_regex.pattern`, unanchored (it is a substitution, which
    /// replaces every match in the path).
    pub rewrite_regex: Option<regex::Regex>,
    /// One per `spec.matches`, or one that matches everything when there are none.
    pub(crate) matches: Vec<CompiledMatch>,
}

impl CompiledRoute {
    /// Compiles a validated route; errors carry the field path as validation would.
    pub(crate) fn compile(name: &str, spec: RouteSpec) -> Result<Self, Vec<ValidationError>> {
        let mut errors = Vec::new();
        let mut matches = Vec::with_capacity(spec.matches.len().max(1));
        if spec.matches.is_empty() {
            matches.push(CompiledMatch::everything());
        }
        for (i, m) in spec.matches.iter().enumerate() {
            match CompiledMatch::compile(m) {
                Ok(compiled) => matches.push(compiled),
                Err((field, e)) => errors.push(e.at(name, format!("spec.matches[{i}].{field}"))),
            }
        }
        let mut canary = Vec::new();
        for (i, rule) in spec.forward.iter().flat_map(|f| &f.canary).enumerate() {
            match CompiledCanary::compile(rule) {
                Ok(compiled) => canary.push(compiled),
                Err((field, e)) => {
                    errors.push(e.at(name, format!("spec.forward.canary[{i}].{field}")));
                }
            }
        }
        let rewrite_regex = match spec
            .filters
            .rewrite
            .as_ref()
            .and_then(|r| r.path_regex.as_ref())
        {
            None => None,
            Some(r) => match regex::RegexBuilder::new(&r.pattern)
                .size_limit(fleetgate_shared::validate::REGEX_SIZE_LIMIT)
                .build()
            {
                Ok(regex) => Some(regex),
                Err(e) => {
                    errors.push(
                        CompileError::from(e)
                            .at(name, "spec.filters.rewrite.path_regex.pattern".to_owned()),
                    );
                    None
                }
            },
        };
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(Self {
            name: name.to_owned(),
            spec,
            canary,
            rewrite_regex,
            matches,
        })
    }

    /// The index of the first canary rule the request satisfies (a header rule: the header's
    /// values; a cookie rule: the values of that cookie in the `Cookie` headers), or `None`
    /// when the request goes to `spec.forward.backends`.
    pub fn canary_for(&self, req: &RequestView<'_>) -> Option<usize> {
        self.canary.iter().position(|rule| rule.matches(req))
    }

    /// The path to send upstream after the route's rewrite filter:
    ///
    /// - `path`: replaced whole;
    /// - `path_prefix`: `matched.matched_prefix` replaced (`/api` → `/v2` turns `/api/x` into
    ///   `/v2/x`), joining with exactly one `/` where a slash ends the replacement and starts
    ///   the rest; with the `/` prefix, the replacement goes in front of the whole path;
    /// - `path_regex`: every match of the pattern replaced by the substitution (`$1` is a group).
    ///
    /// Without a rewrite, or when `matched` has no prefix to replace, the path is returned as is.
    pub fn rewritten_path<'p>(&self, matched: &Matched<'_>, path: &'p str) -> Cow<'p, str> {
        let Some(rewrite) = &self.spec.filters.rewrite else {
            return Cow::Borrowed(path);
        };
        if let Some(whole) = &rewrite.path {
            return Cow::Owned(whole.clone());
        }
        if let Some(replacement) = &rewrite.path_prefix {
            return match matched.matched_prefix {
                Some(prefix) => replace_prefix(path, prefix, replacement),
                None => Cow::Borrowed(path),
            };
        }
        if let (Some(regex), Some(r)) = (&self.rewrite_regex, &rewrite.path_regex) {
            return regex.replace_all(path, r.substitution.as_str());
        }
        Cow::Borrowed(path)
    }
}

/// `path` with its normalized `prefix` replaced by `replacement`. A path the prefix does not
/// match is returned unchanged.
fn replace_prefix<'p>(path: &'p str, prefix: &str, replacement: &str) -> Cow<'p, str> {
    let rest = if prefix == "/" {
        path
    } else {
        match path.strip_prefix(prefix) {
            Some(rest) if rest.is_empty() || rest.starts_with('/') => rest,
            _ => return Cow::Borrowed(path),
        }
    };
    let rest = if replacement.ends_with('/') {
        rest.strip_prefix('/').unwrap_or(rest)
    } else {
        rest
    };
    let mut out = String::with_capacity(replacement.len() + rest.len());
    out.push_str(replacement);
    out.push_str(rest);
    if out.is_empty() {
        out.push('/');
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{Req, table};

    #[test]
    fn prefix_replacement_joins_with_one_slash() {
        assert_eq!(replace_prefix("/api/x", "/api", "/v2"), "/v2/x");
        assert_eq!(replace_prefix("/api/x", "/api", "/v2/"), "/v2/x");
        assert_eq!(replace_prefix("/api/x", "/api", "/"), "/x");
        assert_eq!(replace_prefix("/api", "/api", "/"), "/");
        assert_eq!(replace_prefix("/api", "/api", "/v2"), "/v2");
        assert_eq!(replace_prefix("/api/", "/api", "/v2"), "/v2/");
        assert_eq!(replace_prefix("/x/y", "/", "/v2"), "/v2/x/y");
        assert_eq!(replace_prefix("/x/y", "/", "/v2/"), "/v2/x/y");
        assert_eq!(replace_prefix("/apix", "/api", "/v2"), "/apix");
    }

    const REWRITES: &str = r#"
kind: Route
name: whole
spec:
  matches: [{path: {exact: /login}}]
  direct_response: {status: 200}
  filters: {rewrite: {path: /v1/sessions}}
---
kind: Route
name: prefix
spec:
  matches: [{path: {prefix: /api/}}, {path: {prefix: /old-api}}]
  direct_response: {status: 200}
  filters: {rewrite: {path_prefix: /v2}}
---
kind: Route
name: regex
spec:
  matches: [{path: {prefix: /users}}]
  direct_response: {status: 200}
  filters: {rewrite: {path_regex: {pattern: "^/users/([0-9]+)/?(.*)$", substitution: "/u/$1/$2"}}}
---
kind: Route
name: plain
spec:
  matches: [{path: {prefix: /plain}}]
  direct_response: {status: 200}
"#;

    fn rewrite(path: &str) -> String {
        let t = table(REWRITES);
        let req = Req::get("h", path);
        let view = req.view();
        let m = t.find(&view).unwrap();
        m.route.rewritten_path(&m, path).into_owned()
    }

    #[test]
    fn rewritten_path_for_each_kind() {
        assert_eq!(rewrite("/login"), "/v1/sessions");
        assert_eq!(rewrite("/api/items/3"), "/v2/items/3");
        assert_eq!(rewrite("/api"), "/v2");
        assert_eq!(rewrite("/old-api/x"), "/v2/x");
        assert_eq!(rewrite("/users/42/posts"), "/u/42/posts");
        assert_eq!(rewrite("/users/me"), "/users/me");
        assert_eq!(rewrite("/plain/x"), "/plain/x");
    }

    #[test]
    fn rewritten_path_borrows_when_nothing_changes() {
        let t = table(REWRITES);
        let req = Req::get("h", "/plain/x");
        let view = req.view();
        let m = t.find(&view).unwrap();
        assert!(matches!(
            m.route.rewritten_path(&m, "/plain/x"),
            Cow::Borrowed(_)
        ));
    }

    const CANARIES: &str = r#"
kind: Service
name: app
spec: {endpoints: [{address: "10.0.0.1:80"}]}
---
kind: Route
name: app
spec:
  forward:
    backends: [{service: app}]
    canary:
      - header: {name: X-Canary, exact: green}
        backends: [{service: app}]
      - cookie: {name: canary, prefix: gr}
        backends: [{service: app}]
      - header: {name: x-beta}
        backends: [{service: app}]
"#;

    #[test]
    fn canary_for_header_and_cookie_rules_first_wins() {
        let t = table(CANARIES);
        let canary = |req: Req| {
            let view = req.view();
            t.find(&view).unwrap().route.canary_for(&view)
        };
        assert_eq!(t.routes().next().unwrap().canary.len(), 3);
        assert_eq!(canary(Req::get("h", "/")), None);
        assert_eq!(
            canary(Req::get("h", "/").header("x-canary", "green")),
            Some(0)
        );
        assert_eq!(canary(Req::get("h", "/").header("x-canary", "blue")), None);
        assert_eq!(
            canary(Req::get("h", "/").header("cookie", "a=1; canary=grey")),
            Some(1)
        );
        assert_eq!(
            canary(Req::get("h", "/").header("cookie", "canary=blue")),
            None
        );
        // The cookie is parsed: a header merely containing the text does not count.
        assert_eq!(
            canary(Req::get("h", "/").header("cookie", "xcanary=green")),
            None
        );
        assert_eq!(canary(Req::get("h", "/").header("x-beta", "")), Some(2));
        // Two rules hold: the first one wins.
        let both = Req::get("h", "/")
            .header("x-beta", "1")
            .header("x-canary", "green");
        assert_eq!(canary(both), Some(0));
    }
}
