//! Compiled [`ValueMatch`] conditions on headers, query parameters and cookies.

use fleetgate_shared::model::ValueMatch;
use http::HeaderName;

use crate::error::{CompileError, anchored_bytes_regex};
use crate::request::query_values;

/// A [`ValueMatch`] without its name: holds when some value passes the test, or, inverted,
/// when none does. With no test, any value passes, so the condition means "present" (or,
/// inverted, "absent").
#[derive(Debug)]
pub(crate) struct ValueCondition {
    test: ValueTest,
    invert: bool,
}

#[derive(Debug)]
enum ValueTest {
    Present,
    Exact(Box<[u8]>),
    Prefix(Box<[u8]>),
    /// Anchored: the whole value must match.
    Regex(regex::bytes::Regex),
}

impl ValueCondition {
    pub(crate) fn compile(m: &ValueMatch) -> Result<Self, CompileError> {
        // Validation allows at most one of the three; exact wins if a future model allowed more.
        let test = if let Some(exact) = &m.exact {
            ValueTest::Exact(exact.as_bytes().into())
        } else if let Some(prefix) = &m.prefix {
            ValueTest::Prefix(prefix.as_bytes().into())
        } else if let Some(pattern) = &m.regex {
            ValueTest::Regex(anchored_bytes_regex(pattern)?)
        } else {
            ValueTest::Present
        };
        Ok(Self {
            test,
            invert: m.invert,
        })
    }

    fn passes(&self, value: &[u8]) -> bool {
        match &self.test {
            ValueTest::Present => true,
            ValueTest::Exact(exact) => value == &exact[..],
            ValueTest::Prefix(prefix) => value.starts_with(prefix),
            ValueTest::Regex(regex) => regex.is_match(value),
        }
    }

    /// Whether the condition holds for a name carrying `values` (none when it is absent).
    pub(crate) fn holds<V: AsRef<[u8]>>(&self, values: impl IntoIterator<Item = V>) -> bool {
        let any = values.into_iter().any(|v| self.passes(v.as_ref()));
        any != self.invert
    }
}

/// A condition on a request header. Names are case-insensitive; each field line is one value
/// (a comma-separated line is not split, since commas mean different things in different
/// headers).
#[derive(Debug)]
pub(crate) struct HeaderCondition {
    name: HeaderName,
    condition: ValueCondition,
}

impl HeaderCondition {
    pub(crate) fn compile(m: &ValueMatch) -> Result<Self, CompileError> {
        // `from_bytes` lower-cases, which is what makes the match case-insensitive.
        let name = HeaderName::from_bytes(m.name.as_bytes())
            .map_err(|_| CompileError::HeaderName(m.name.clone()))?;
        Ok(Self {
            name,
            condition: ValueCondition::compile(m)?,
        })
    }

    pub(crate) fn holds(&self, headers: &http::HeaderMap) -> bool {
        self.condition
            .holds(headers.get_all(&self.name).iter().map(|v| v.as_bytes()))
    }
}

/// A condition on a query parameter (see [`query_values`] for the parsing).
#[derive(Debug)]
pub(crate) struct QueryCondition {
    name: Box<str>,
    condition: ValueCondition,
}

impl QueryCondition {
    pub(crate) fn compile(m: &ValueMatch) -> Result<Self, CompileError> {
        Ok(Self {
            name: m.name.as_str().into(),
            condition: ValueCondition::compile(m)?,
        })
    }

    pub(crate) fn holds(&self, query: Option<&str>) -> bool {
        self.condition
            .holds(query.into_iter().flat_map(|q| query_values(q, &self.name)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{HeaderMap, HeaderValue};

    fn vm(name: &str) -> ValueMatch {
        ValueMatch {
            name: name.into(),
            ..ValueMatch::default()
        }
    }

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, HeaderValue::from_static(value));
        }
        map
    }

    fn header(m: ValueMatch, pairs: &[(&'static str, &'static str)]) -> bool {
        HeaderCondition::compile(&m).unwrap().holds(&headers(pairs))
    }

    #[test]
    fn header_present_and_absent() {
        assert!(header(vm("x-canary"), &[("x-canary", "")]));
        assert!(!header(vm("x-canary"), &[("x-other", "1")]));
        let absent = ValueMatch {
            invert: true,
            ..vm("x-canary")
        };
        assert!(header(absent.clone(), &[("x-other", "1")]));
        assert!(!header(absent, &[("x-canary", "1")]));
    }

    #[test]
    fn header_names_are_case_insensitive() {
        assert!(header(vm("X-Canary"), &[("x-canary", "1")]));
        let mut map = HeaderMap::new();
        map.insert(
            HeaderName::from_bytes(b"X-CANARY").unwrap(),
            HeaderValue::from_static("1"),
        );
        assert!(
            HeaderCondition::compile(&vm("x-canary"))
                .unwrap()
                .holds(&map)
        );
    }

    #[test]
    fn header_exact_prefix_regex_against_any_value() {
        let exact = ValueMatch {
            exact: Some("green".into()),
            ..vm("x-stage")
        };
        assert!(header(exact.clone(), &[("x-stage", "green")]));
        assert!(!header(exact.clone(), &[("x-stage", "greenish")]));
        assert!(!header(exact.clone(), &[("x-stage", "Green")]));
        assert!(header(exact, &[("x-stage", "blue"), ("x-stage", "green")]));

        let prefix = ValueMatch {
            prefix: Some("Bearer ".into()),
            ..vm("authorization")
        };
        assert!(header(prefix.clone(), &[("authorization", "Bearer abc")]));
        assert!(!header(prefix, &[("authorization", "Basic abc")]));

        let regex = ValueMatch {
            regex: Some("v[0-9]+".into()),
            ..vm("x-version")
        };
        assert!(header(regex.clone(), &[("x-version", "v12")]));
        // Anchored: a match inside the value is not enough.
        assert!(!header(regex.clone(), &[("x-version", "av12")]));
        assert!(!header(regex.clone(), &[("x-version", "v12b")]));
        assert!(header(regex, &[("x-version", "x"), ("x-version", "v1")]));
    }

    #[test]
    fn header_invert_means_no_value_matches() {
        let not_green = ValueMatch {
            exact: Some("green".into()),
            invert: true,
            ..vm("x-stage")
        };
        assert!(header(not_green.clone(), &[("x-stage", "blue")]));
        assert!(header(not_green.clone(), &[]));
        assert!(!header(not_green.clone(), &[("x-stage", "green")]));
        assert!(!header(
            not_green,
            &[("x-stage", "blue"), ("x-stage", "green")]
        ));
    }

    #[test]
    fn header_values_need_not_be_utf8() {
        let mut map = HeaderMap::new();
        map.insert("x-raw", HeaderValue::from_bytes(b"caf\xe9").unwrap());
        let prefix = ValueMatch {
            prefix: Some("caf".into()),
            ..vm("x-raw")
        };
        assert!(HeaderCondition::compile(&prefix).unwrap().holds(&map));
        let regex = ValueMatch {
            regex: Some("c.*".into()),
            ..vm("x-raw")
        };
        // `.` matches characters, and a lone 0xE9 byte is not one: no match, no panic.
        assert!(!HeaderCondition::compile(&regex).unwrap().holds(&map));
    }

    fn query(m: ValueMatch, q: Option<&str>) -> bool {
        QueryCondition::compile(&m).unwrap().holds(q)
    }

    #[test]
    fn query_present_exact_prefix_regex_invert() {
        assert!(query(vm("debug"), Some("debug")));
        assert!(query(vm("debug"), Some("a=1&debug=")));
        assert!(!query(vm("debug"), Some("debugging=1")));
        assert!(!query(vm("debug"), None));

        let exact = ValueMatch {
            exact: Some("a b".into()),
            ..vm("q")
        };
        assert!(query(exact.clone(), Some("q=a%20b")));
        assert!(!query(exact.clone(), Some("q=a+b")));
        assert!(query(exact, Some("q=x&q=a%20b")));

        let prefix = ValueMatch {
            prefix: Some("v1".into()),
            ..vm("api")
        };
        assert!(query(prefix.clone(), Some("api=v1.2")));
        assert!(!query(prefix, Some("api=v2")));

        let regex = ValueMatch {
            regex: Some("[0-9]+".into()),
            ..vm("page")
        };
        assert!(query(regex.clone(), Some("page=12")));
        assert!(!query(regex.clone(), Some("page=12a")));

        let inverted = ValueMatch {
            invert: true,
            ..regex
        };
        assert!(query(inverted.clone(), Some("page=x")));
        assert!(query(inverted.clone(), None));
        assert!(!query(inverted, Some("page=3")));
    }
}
