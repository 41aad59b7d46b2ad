//! The precedence key: which of several matching (route, host pattern, match) triples wins.
//!
//! The key is computed once per index entry when the table is compiled; at request time,
//! choosing between candidates is one comparison of small integers. The greatest key wins. The
//! field order *is* the rule order of `docs/routing.md`, so the derived `Ord` is the rule.

use std::cmp::Reverse;

/// How specific the host pattern that matched is. Only one wildcard can match a given host
/// (`*.` stands for exactly one label), so the suffix length only orders wildcards that could
/// never compete; it is kept because the documented rule says "longer suffix wins".
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum HostRank {
    /// A route without hosts.
    Any,
    Wildcard {
        suffix_len: u32,
    },
    Exact,
}

/// How specific the path condition of the match is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum PathRank {
    None,
    Regex,
    /// The length of the normalized prefix (`/api/` counts as `/api`).
    Prefix {
        len: u32,
    },
    Exact,
}

/// Greater wins. Fields compare in declaration order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Precedence {
    /// (1) Higher priority.
    pub(crate) priority: i32,
    /// (2) More specific host.
    pub(crate) host: HostRank,
    /// (3) More specific path.
    pub(crate) path: PathRank,
    /// (4) More header conditions.
    pub(crate) headers: u32,
    /// (5) More query conditions.
    pub(crate) query: u32,
    /// (6) A method condition.
    pub(crate) method: bool,
    /// (7) The route name first in byte order: its rank among the table's routes sorted by
    /// name, reversed so that the first name is the greatest.
    pub(crate) name: Reverse<u32>,
    /// (7) Then the lower match index.
    pub(crate) match_index: Reverse<u32>,
}

/// A count or length as a key field. Nothing in a config comes near `u32::MAX`; saturating
/// keeps the conversion total.
pub(crate) fn small(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> Precedence {
        Precedence {
            priority: 0,
            host: HostRank::Any,
            path: PathRank::None,
            headers: 0,
            query: 0,
            method: false,
            name: Reverse(5),
            match_index: Reverse(0),
        }
    }

    #[test]
    fn each_field_outranks_every_later_one() {
        let best_after = |k: Precedence| Precedence {
            host: if k.host == HostRank::Any {
                HostRank::Exact
            } else {
                k.host
            },
            path: PathRank::Exact,
            headers: 9,
            query: 9,
            method: true,
            name: Reverse(0),
            match_index: Reverse(0),
            ..k
        };
        let low = best_after(base());
        assert!(
            Precedence {
                priority: 1,
                ..base()
            } > low
        );
        let low = Precedence {
            host: HostRank::Wildcard { suffix_len: 100 },
            ..best_after(base())
        };
        assert!(
            Precedence {
                host: HostRank::Exact,
                ..base()
            } > low
        );
        assert!(
            Precedence {
                path: PathRank::Exact,
                ..base()
            } > Precedence {
                path: PathRank::Prefix { len: 1000 },
                headers: 9,
                ..base()
            }
        );
        assert!(
            Precedence {
                headers: 1,
                ..base()
            } > Precedence {
                query: 9,
                method: true,
                name: Reverse(0),
                ..base()
            }
        );
        assert!(
            Precedence { query: 1, ..base() }
                > Precedence {
                    method: true,
                    name: Reverse(0),
                    ..base()
                }
        );
        assert!(
            Precedence {
                method: true,
                ..base()
            } > Precedence {
                name: Reverse(0),
                ..base()
            }
        );
        assert!(
            Precedence {
                name: Reverse(4),
                match_index: Reverse(3),
                ..base()
            } > Precedence {
                name: Reverse(5),
                match_index: Reverse(0),
                ..base()
            }
        );
        assert!(
            Precedence {
                match_index: Reverse(0),
                ..base()
            } > Precedence {
                match_index: Reverse(1),
                ..base()
            }
        );
    }

    #[test]
    fn ranks_order_as_documented() {
        assert!(HostRank::Exact > HostRank::Wildcard { suffix_len: 200 });
        assert!(HostRank::Wildcard { suffix_len: 12 } > HostRank::Wildcard { suffix_len: 11 });
        assert!(HostRank::Wildcard { suffix_len: 1 } > HostRank::Any);
        assert!(PathRank::Exact > PathRank::Prefix { len: 500 });
        assert!(PathRank::Prefix { len: 5 } > PathRank::Prefix { len: 4 });
        assert!(PathRank::Prefix { len: 1 } > PathRank::Regex);
        assert!(PathRank::Regex > PathRank::None);
        assert!(
            Precedence {
                priority: -1,
                ..base()
            } < base()
        );
    }
}
