//! Lookup by host pattern: exact names first, then `*.` wildcards (one label). Certificates,
//! HTTPS redirects and domain policies are found this way.

use rustc_hash::FxHashMap;

/// Values keyed by host pattern (`api.example.com` or `*.example.com`). Hashed with FxHash: the
/// keys come from config, a request only looks one up.
#[derive(Debug, Clone)]
pub struct HostMap<T> {
    exact: FxHashMap<String, T>,
    /// Keyed by the suffix after `*.`.
    wildcard: FxHashMap<String, T>,
}

impl<T> Default for HostMap<T> {
    fn default() -> Self {
        Self {
            exact: FxHashMap::default(),
            wildcard: FxHashMap::default(),
        }
    }
}

impl<T> HostMap<T> {
    /// Adds `value` for `pattern`; the first value for a pattern wins.
    pub fn insert(&mut self, pattern: &str, value: T) {
        self.entry(pattern).or_insert(value);
    }

    /// The value for `pattern` (exactly that pattern), made by `T::default()` if it has none.
    pub fn get_or_default(&mut self, pattern: &str) -> &mut T
    where
        T: Default,
    {
        self.entry(pattern).or_default()
    }

    fn entry(&mut self, pattern: &str) -> std::collections::hash_map::Entry<'_, String, T> {
        let pattern = pattern.to_ascii_lowercase();
        match pattern.strip_prefix("*.") {
            Some(suffix) => self.wildcard.entry(suffix.to_owned()),
            None => self.exact.entry(pattern),
        }
    }

    /// The value for `host` (lower case, no port): an exact pattern, else a wildcard covering
    /// exactly one more label. An empty map answers without hashing or splitting the host:
    /// most configs have no domain policies, and the proxy asks on every request.
    pub fn get(&self, host: &str) -> Option<&T> {
        if let Some(value) = self.exact.get(host) {
            return Some(value);
        }
        if self.wildcard.is_empty() {
            return None;
        }
        let (first, rest) = host.split_once('.')?;
        if first.is_empty() {
            None
        } else {
            self.wildcard.get(rest)
        }
    }

    pub fn is_empty(&self) -> bool {
        self.exact.is_empty() && self.wildcard.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_beats_wildcard_and_wildcards_cover_one_label() {
        let mut map = HostMap::default();
        map.insert("*.example.com", "wild");
        map.insert("api.example.com", "exact");
        assert_eq!(map.get("api.example.com"), Some(&"exact"));
        assert_eq!(map.get("www.example.com"), Some(&"wild"));
        assert_eq!(map.get("a.b.example.com"), None);
        assert_eq!(map.get("example.com"), None);
    }
}
