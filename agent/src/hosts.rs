//! Lookup by host pattern: exact names first, then `*.` wildcards (one label).

use std::collections::HashMap;

/// Values keyed by host pattern (`api.example.com` or `*.example.com`).
#[derive(Debug, Clone)]
pub struct HostMap<T> {
    exact: HashMap<String, T>,
    /// Keyed by the suffix after `*.`.
    wildcard: HashMap<String, T>,
}

impl<T> Default for HostMap<T> {
    fn default() -> Self {
        Self {
            exact: HashMap::new(),
            wildcard: HashMap::new(),
        }
    }
}

impl<T> HostMap<T> {
    /// Adds `value` for `pattern`; the first value for a pattern wins.
    pub fn insert(&mut self, pattern: &str, value: T) {
        let pattern = pattern.to_ascii_lowercase();
        match pattern.strip_prefix("*.") {
            Some(suffix) => self.wildcard.entry(suffix.to_owned()).or_insert(value),
            None => self.exact.entry(pattern).or_insert(value),
        };
    }

    /// The value for `host` (lower case, no port): an exact pattern, else a wildcard covering
    /// exactly one more label.
    pub fn get(&self, host: &str) -> Option<&T> {
        self.exact.get(host).or_else(|| {
            let (first, rest) = host.split_once('.')?;
            if first.is_empty() {
                None
            } else {
                self.wildcard.get(rest)
            }
        })
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
