//! Path conditions, and the segment-boundary rules for prefixes.
//!
//! A prefix matches on segment boundaries, and a trailing slash in a configured prefix is
//! ignored: `/api` and `/api/` both match `/api`, `/api/` and `/api/x`, and neither matches
//! `/apix`. (Gateway API's `PathPrefix` makes the same choice, so an operator who writes
//! `/api/` to mean "the api tree" is not surprised by a 404 on `/api`.) The prefix `/` matches
//! every path.

/// A compiled path condition of one match.
#[derive(Debug)]
pub(crate) enum PathCondition {
    /// No path condition: every path.
    Any,
    /// Shared (`Arc`) with the table's index, which keys its maps by it.
    Exact(std::sync::Arc<str>),
    /// A normalized prefix (see [`normalize_prefix`]); shared like an exact path.
    Prefix(std::sync::Arc<str>),
    /// Anchored: the whole path must match.
    Regex(regex::Regex),
}

impl PathCondition {
    /// Whether `path` satisfies the condition. The table's index answers this for exact and
    /// prefix conditions without calling it; it is the definition the index must agree with.
    pub(crate) fn holds(&self, path: &str) -> bool {
        match self {
            PathCondition::Any => true,
            PathCondition::Exact(exact) => path == &**exact,
            PathCondition::Prefix(prefix) => prefix_holds(prefix, path),
            PathCondition::Regex(regex) => regex.is_match(path),
        }
    }
}

/// A configured prefix without its trailing slashes; `/` (or any run of slashes) stays `/`.
pub(crate) fn normalize_prefix(prefix: &str) -> &str {
    let trimmed = prefix.trim_end_matches('/');
    if trimmed.is_empty() { "/" } else { trimmed }
}

/// Whether the normalized `prefix` matches `path` on a segment boundary.
pub(crate) fn prefix_holds(prefix: &str, path: &str) -> bool {
    prefix == "/"
        || path
            .strip_prefix(prefix)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

/// Every normalized prefix other than `/` that matches `path`, longest first: the path itself,
/// then the path cut before each `/`. A table looks each up in a hash map, so finding the
/// prefix routes for a path costs one lookup per segment, whatever the number of routes.
pub(crate) fn segment_prefixes(path: &str) -> impl Iterator<Item = &str> {
    std::iter::once(path.len())
        .chain(path.rmatch_indices('/').map(|(at, _)| at))
        .map(move |end| &path[..end])
        // Normalized prefixes never end with `/` and are never empty; skipping those saves
        // lookups that cannot hit (such as `/a/` for `/a//b`).
        .filter(|candidate| !candidate.is_empty() && !candidate.ends_with('/'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_normalize_their_trailing_slash() {
        assert_eq!(normalize_prefix("/api"), "/api");
        assert_eq!(normalize_prefix("/api/"), "/api");
        assert_eq!(normalize_prefix("/api//"), "/api");
        assert_eq!(normalize_prefix("/"), "/");
        assert_eq!(normalize_prefix("//"), "/");
    }

    #[test]
    fn prefix_matches_on_segment_boundaries() {
        for path in ["/api", "/api/", "/api/x", "/api/x/y", "/api//x"] {
            assert!(prefix_holds("/api", path), "{path}");
        }
        for path in ["/apix", "/ap", "/", "/x/api", ""] {
            assert!(!prefix_holds("/api", path), "{path}");
        }
        for path in ["/", "/x", "", "*"] {
            assert!(prefix_holds("/", path), "{path}");
        }
        // A trailing slash in the config is ignored, so `/api/` also matches `/api`.
        let with_slash = normalize_prefix("/api/");
        assert!(prefix_holds(with_slash, "/api"));
        assert!(prefix_holds(with_slash, "/api/x"));
        assert!(!prefix_holds(with_slash, "/apix"));
    }

    #[test]
    fn segment_prefixes_are_longest_first() {
        fn all(p: &str) -> Vec<&str> {
            segment_prefixes(p).collect()
        }
        assert_eq!(all("/a/b/c"), ["/a/b/c", "/a/b", "/a"]);
        assert_eq!(all("/a/b/"), ["/a/b", "/a"]);
        assert_eq!(all("/a//b"), ["/a//b", "/a"]);
        assert_eq!(all("/"), Vec::<&str>::new());
        assert_eq!(all(""), Vec::<&str>::new());
        assert_eq!(all("*"), ["*"]);
    }

    #[test]
    fn segment_prefixes_are_exactly_the_matching_prefixes() {
        let configured = ["/a", "/a/b", "/a/b/c", "/ab", "/a//b", "/b", "/a/bc"];
        for path in [
            "/a", "/a/", "/a/b", "/a/b/c/d", "/ab/c", "/a//b/x", "/a/bc", "/x", "/",
        ] {
            let via_walk: Vec<&str> = segment_prefixes(path)
                .filter(|p| configured.contains(p))
                .collect();
            let mut via_scan: Vec<&str> = configured
                .iter()
                .copied()
                .filter(|p| prefix_holds(p, path))
                .collect();
            via_scan.sort_by_key(|p| std::cmp::Reverse(p.len()));
            assert_eq!(via_walk, via_scan, "{path}");
        }
    }

    #[test]
    fn path_conditions() {
        assert!(PathCondition::Any.holds("/anything"));
        let exact = PathCondition::Exact("/login".into());
        assert!(exact.holds("/login"));
        assert!(!exact.holds("/login/"));
        assert!(!exact.holds("/Login"));
        let regex = PathCondition::Regex(crate::error::anchored_regex("/users/[0-9]+").unwrap());
        assert!(regex.holds("/users/42"));
        assert!(!regex.holds("/users/42/posts"));
        assert!(!regex.holds("/v1/users/42"));
        let prefix = PathCondition::Prefix("/static".into());
        assert!(prefix.holds("/static/app.js"));
        assert!(!prefix.holds("/statics"));
    }
}
