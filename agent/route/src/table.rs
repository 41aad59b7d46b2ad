//! The route table: compiled routes, indexed by host and path, and the lookup over the index.
//!
//! # Index
//!
//! Every (route, host pattern, match) triple is one [`Entry`] holding its precedence key. The
//! entries sit in three host tiers (exact hosts in a map, wildcard suffixes in a map keyed by
//! what follows `*.`, and the routes without hosts), and inside each tier in four path lists:
//! exact paths in a map, normalized prefixes in a map, regexes, and no path condition. Every
//! list is sorted by key, greatest first.
//!
//! A lookup visits at most one exact-host tier, one wildcard tier (a host has exactly one
//! wildcard suffix that can match it: everything after its first label) and the any-host tier;
//! in each, one exact-path list, one prefix list per segment of the path, the regex list and the
//! no-path list. In each list it stops at the first entry whose conditions hold, or at the first
//! entry whose key cannot beat the best found so far. So the cost follows the request's shape
//! (segments, matching candidates), not the number of routes.

use std::fmt;
use std::sync::Arc;

use fleetgate_shared::{Change, Kind, SharedResource, Snapshot, Spec, ValidationError};

use crate::cow::{Chunks, Shards};
use crate::matcher::CompiledMatch;
use crate::path::{PathCondition, segment_prefixes};
use crate::precedence::{HostRank, Precedence, small};
use crate::request::RequestView;
use crate::route::CompiledRoute;

/// An immutable, indexed set of compiled routes. Build one per config version, off the request
/// path, and share it behind an `Arc`.
///
/// Everything sizeable is in shards or chunks ([`crate::cow`]) shared with the table it was
/// patched from: a change that keeps every route name copies only what it touches.
#[derive(Clone)]
pub struct RouteTable {
    /// Sorted by name, so that a route's index is its name rank for precedence rule (7).
    /// Shared with the next table for every route a change leaves alone.
    routes: Chunks<Arc<CompiledRoute>>,
    /// The resource each route was compiled from, by the same index: how the next table
    /// recognizes a route it can take over.
    sources: Chunks<Option<SharedResource>>,
    exact_hosts: Shards<Box<str>, Tier>,
    /// Keyed by the suffix after `*.`: `*.example.com` is under `example.com`.
    wildcard_hosts: Shards<Box<str>, Tier>,
    any_host: Tier,
    /// Shared by tables that hold the same route names in the same order (one patched from
    /// another), so that per-route state keyed by name can be kept without comparing names.
    names: Arc<()>,
}

/// The route that won a request, with which of its matches, and which prefix, took it.
#[derive(Clone, Copy, Debug)]
pub struct Matched<'t> {
    /// The winning route.
    pub route: &'t CompiledRoute,
    /// Its index in the table ([`RouteTable::routes`]' order), for state kept per route.
    pub index: usize,
    /// The index in `route.spec.matches` of the match that won; `None` when the route has no
    /// matches (it takes every request on its hosts).
    pub match_index: Option<usize>,
    /// The prefix when the winning match is a prefix match, normalized (without a trailing
    /// slash, except for `/` itself); what `rewrite.path_prefix` replaces.
    pub matched_prefix: Option<&'t str>,
}

/// The entries of one host tier, by path condition.
#[derive(Clone, Default)]
struct Tier {
    /// Keyed by the compiled routes' own path strings (shared, not copied).
    exact_paths: Shards<Arc<str>, Entries>,
    prefixes: Shards<Arc<str>, Entries>,
    regexes: Vec<Entry>,
    no_path: Vec<Entry>,
}

/// The entries under one exact path or prefix: almost always a single route, held inline so
/// that indexing 10,000 routes does not allocate 10,000 one-element lists.
#[derive(Clone, Default)]
enum Entries {
    #[default]
    None,
    One(Entry),
    Many(Vec<Entry>),
}

impl Entries {
    fn push(&mut self, entry: Entry) {
        *self = match std::mem::take(self) {
            Entries::None => Entries::One(entry),
            Entries::One(first) => Entries::Many(vec![first, entry]),
            Entries::Many(mut list) => {
                list.push(entry);
                Entries::Many(list)
            }
        };
    }

    fn as_slice(&self) -> &[Entry] {
        match self {
            Entries::None => &[],
            Entries::One(entry) => std::slice::from_ref(entry),
            Entries::Many(list) => list,
        }
    }

    fn sort(&mut self) {
        if let Entries::Many(list) = self {
            sort_greatest_first(list);
        }
    }

    /// Keeps the entries of every route but `route`.
    fn remove_route(&mut self, route: u32) {
        *self = match std::mem::take(self) {
            Entries::One(entry) if entry.route == route => Entries::None,
            Entries::Many(mut list) => {
                list.retain(|e| e.route != route);
                match list.len() {
                    0 => Entries::None,
                    1 => Entries::One(list[0]),
                    _ => Entries::Many(list),
                }
            }
            other => other,
        };
    }

    fn is_empty(&self) -> bool {
        matches!(self, Entries::None)
    }
}

/// Adds `entry` to a list: at its place in key order when `sorted`, else at the end.
fn insert_into(list: &mut Vec<Entry>, entry: Entry, sorted: bool) {
    if sorted {
        let at = list.partition_point(|e| e.key > entry.key);
        list.insert(at, entry);
    } else {
        list.push(entry);
    }
}

/// Sorts a list greatest key first, which is what lets [`RouteTable::scan`] stop early.
fn sort_greatest_first(list: &mut Vec<Entry>) {
    list.sort_by_key(|e| std::cmp::Reverse(e.key));
    list.shrink_to_fit();
}

/// One (route, host pattern, match) triple.
#[derive(Clone, Copy, Debug)]
struct Entry {
    key: Precedence,
    route: u32,
    match_index: u32,
}

impl RouteTable {
    /// Validates the snapshot's resources with [`fleetgate_shared::validate`] and compiles every
    /// route. Fails with every validation error; a snapshot that validates compiles.
    pub fn compile(snapshot: &Snapshot) -> Result<RouteTable, Vec<ValidationError>> {
        snapshot.validate()?;
        Self::compile_validated(snapshot, &RouteTable::empty())
    }

    /// Compiles the routes of a snapshot that has passed validation (whole, or as a change from
    /// a validated one: [`fleetgate_shared::validate_change`]). A route whose resource
    /// `previous` was compiled from is taken over as it is, so a one-route change compiles one
    /// route; the index is rebuilt, because a route's position is part of its precedence.
    pub fn compile_validated(
        snapshot: &Snapshot,
        previous: &RouteTable,
    ) -> Result<RouteTable, Vec<ValidationError>> {
        let mut routes = Vec::new();
        let mut sources = Vec::new();
        let mut errors = Vec::new();
        // Snapshots list resources by kind, then name, and tables hold routes by name: one walk
        // over both finds each route's predecessor.
        let mut old = previous
            .routes
            .iter()
            .zip(previous.sources.iter())
            .peekable();
        for resource in snapshot.shared() {
            let Spec::Route(spec) = &resource.spec else {
                continue;
            };
            while old
                .next_if(|(route, _)| route.name.as_str() < resource.name.as_str())
                .is_some()
            {}
            let taken_over = old
                .next_if(|(route, _)| route.name == resource.name)
                .and_then(|(route, source)| {
                    source
                        .as_ref()
                        .is_some_and(|s| s.same(resource))
                        .then(|| route.clone())
                });
            match taken_over {
                Some(route) => routes.push(route),
                None => match CompiledRoute::compile(&resource.name, spec.clone()) {
                    Ok(route) => routes.push(Arc::new(route)),
                    Err(found) => errors.extend(found),
                },
            }
            sources.push(Some(resource.clone()));
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(Self::index(routes, sources))
    }

    /// [`RouteTable::compile_validated`] for `snapshot`, a change from `base`, where `previous`
    /// was compiled from `base`. When the change keeps every route name, `previous` is patched:
    /// the changed routes are compiled and their index entries replaced, everything else shared,
    /// so the cost follows the change. Adding or removing a route moves positions (part of every
    /// precedence key after it), so that rebuilds the index.
    pub fn compile_change(
        base: &Snapshot,
        snapshot: &Snapshot,
        previous: &RouteTable,
    ) -> Result<RouteTable, Vec<ValidationError>> {
        let mut changed = Vec::new();
        for change in fleetgate_shared::changes(base, snapshot) {
            match change {
                change if change.key().kind != Kind::Route => {}
                Change::Changed(key, resource) => match previous.position(&key.name) {
                    Some(position) => changed.push((position, resource)),
                    // `previous` was not compiled from `base`.
                    None => return Self::compile_validated(snapshot, previous),
                },
                Change::Added(..) | Change::Removed(..) => {
                    return Self::compile_validated(snapshot, previous);
                }
            }
        }
        let mut table = previous.clone();
        let mut errors = Vec::new();
        for (position, resource) in changed {
            let Spec::Route(spec) = &resource.spec else {
                continue;
            };
            match CompiledRoute::compile(&resource.name, spec.clone()) {
                Ok(route) => {
                    table.unindex_route(position);
                    table.routes.set(position, Arc::new(route));
                    table.sources.set(position, Some(resource.clone()));
                    table.index_route(position, true);
                }
                Err(found) => errors.extend(found),
            }
        }
        if errors.is_empty() {
            Ok(table)
        } else {
            Err(errors)
        }
    }

    /// Whether `self` holds the same route names as `other` in the same order: true at once
    /// for a table patched from the other (or from one patched from it).
    pub fn same_names(&self, other: &RouteTable) -> bool {
        Arc::ptr_eq(&self.names, &other.names)
            || (self.len() == other.len()
                && self
                    .routes()
                    .zip(other.routes())
                    .all(|(a, b)| a.name == b.name))
    }

    /// The position of the route named `name`.
    fn position(&self, name: &str) -> Option<usize> {
        let (mut low, mut high) = (0, self.routes.len());
        while low < high {
            let middle = low + (high - low) / 2;
            match self.routes.get(middle).name.as_str().cmp(name) {
                std::cmp::Ordering::Less => low = middle + 1,
                std::cmp::Ordering::Greater => high = middle,
                std::cmp::Ordering::Equal => return Some(middle),
            }
        }
        None
    }

    /// A table without routes: every request is a 404.
    pub fn empty() -> RouteTable {
        Self::index(Vec::new(), Vec::new())
    }

    /// The number of routes.
    pub fn len(&self) -> usize {
        self.routes.len()
    }

    /// Whether the table has no routes.
    pub fn is_empty(&self) -> bool {
        self.routes.len() == 0
    }

    /// The routes, by name.
    pub fn routes(&self) -> impl Iterator<Item = &CompiledRoute> {
        self.routes.iter().map(|r| &**r)
    }

    /// The best route for the request by the precedence rules of `docs/routing.md`, or `None`
    /// when no route takes it (a 404).
    pub fn find<'t>(&'t self, req: &RequestView<'_>) -> Option<Matched<'t>> {
        let mut best: Option<&'t Entry> = None;
        // Most specific tier first, so that its winner prunes the later tiers' candidates.
        if let Some(tier) = self.exact_hosts.get(req.host) {
            self.search_tier(tier, req, &mut best);
        }
        if !self.wildcard_hosts.is_empty()
            && let Some((label, suffix)) = req.host.split_once('.')
            && !label.is_empty()
            && let Some(tier) = self.wildcard_hosts.get(suffix)
        {
            self.search_tier(tier, req, &mut best);
        }
        self.search_tier(&self.any_host, req, &mut best);
        best.map(|entry| self.matched(entry))
    }

    fn search_tier<'t>(
        &'t self,
        tier: &'t Tier,
        req: &RequestView<'_>,
        best: &mut Option<&'t Entry>,
    ) {
        if !tier.exact_paths.is_empty()
            && let Some(list) = tier.exact_paths.get(req.path)
        {
            self.scan(list.as_slice(), req, best, false);
        }
        if !tier.prefixes.is_empty() {
            for prefix in segment_prefixes(req.path) {
                if let Some(list) = tier.prefixes.get(prefix) {
                    self.scan(list.as_slice(), req, best, false);
                }
            }
            if let Some(list) = tier.prefixes.get("/") {
                self.scan(list.as_slice(), req, best, false);
            }
        }
        self.scan(&tier.regexes, req, best, true);
        self.scan(&tier.no_path, req, best, false);
    }

    /// Replaces `best` with the first entry of `list` (sorted greatest first) that beats it and
    /// whose conditions hold. The index has already checked exact and prefix paths; regex paths
    /// are checked here (`check_path`), last, being the dearest condition.
    fn scan<'t>(
        &'t self,
        list: &'t [Entry],
        req: &RequestView<'_>,
        best: &mut Option<&'t Entry>,
        check_path: bool,
    ) {
        for entry in list {
            if best.is_some_and(|b| entry.key <= b.key) {
                return;
            }
            let m = self.compiled_match(entry);
            if m.holds_except_path(req) && (!check_path || m.path.holds(req.path)) {
                *best = Some(entry);
                return;
            }
        }
    }

    fn compiled_match(&self, entry: &Entry) -> &CompiledMatch {
        &self.routes.get(entry.route as usize).matches[entry.match_index as usize]
    }

    fn matched(&self, entry: &Entry) -> Matched<'_> {
        let route = self.routes.get(entry.route as usize);
        let matched_prefix = match &self.compiled_match(entry).path {
            PathCondition::Prefix(prefix) => Some(&**prefix),
            _ => None,
        };
        Matched {
            route,
            index: entry.route as usize,
            match_index: (!route.spec.matches.is_empty()).then_some(entry.match_index as usize),
            matched_prefix,
        }
    }

    /// Builds the index over `routes`, which must be sorted by name; `sources` holds the
    /// resource of each.
    fn index(routes: Vec<Arc<CompiledRoute>>, sources: Vec<Option<SharedResource>>) -> RouteTable {
        let mut table = RouteTable {
            routes: Chunks::from_vec(routes),
            sources: Chunks::from_vec(sources),
            exact_hosts: Shards::default(),
            wildcard_hosts: Shards::default(),
            any_host: Tier::default(),
            names: Arc::new(()),
        };
        for position in 0..table.routes.len() {
            table.index_route(position, false);
        }
        table.exact_hosts.reshard();
        table.wildcard_hosts.reshard();
        for tier in table
            .exact_hosts
            .values_mut()
            .chain(table.wildcard_hosts.values_mut())
            .chain(std::iter::once(&mut table.any_host))
        {
            tier.sort();
            tier.exact_paths.reshard();
            tier.prefixes.reshard();
        }
        table
    }

    /// The hosts of a route as the index keys them: lower case, each once.
    fn index_hosts(route: &CompiledRoute) -> Vec<String> {
        let mut hosts: Vec<String> = route
            .spec
            .hosts
            .iter()
            .map(|h| h.to_ascii_lowercase())
            .collect();
        hosts.sort();
        hosts.dedup();
        hosts
    }

    /// Adds the entries of the route at `position`. `sorted`: keep each list it joins sorted
    /// (a patch); a full build sorts every list once at the end instead.
    fn index_route(&mut self, position: usize, sorted: bool) {
        let route = self.routes.get(position).clone();
        let hosts = Self::index_hosts(&route);
        for (match_index, m) in route.matches.iter().enumerate() {
            let key = |host: HostRank| Precedence {
                priority: route.spec.priority,
                host,
                path: m.path_rank(),
                headers: small(m.header_count()),
                query: small(m.query_count()),
                method: m.has_methods(),
                name: std::cmp::Reverse(small(position)),
                match_index: std::cmp::Reverse(small(match_index)),
            };
            let entry = |host: HostRank| Entry {
                key: key(host),
                route: small(position),
                match_index: small(match_index),
            };
            if hosts.is_empty() {
                self.any_host.insert(&m.path, entry(HostRank::Any), sorted);
            }
            for host in &hosts {
                match host.strip_prefix("*.") {
                    Some(suffix) => self.wildcard_hosts.get_or_default(suffix.into()).insert(
                        &m.path,
                        entry(HostRank::Wildcard {
                            suffix_len: small(suffix.len()),
                        }),
                        sorted,
                    ),
                    None => self
                        .exact_hosts
                        .get_or_default(host.as_str().into())
                        .insert(&m.path, entry(HostRank::Exact), sorted),
                }
            }
        }
    }

    /// Removes the entries of the route at `position`.
    fn unindex_route(&mut self, position: usize) {
        let route = self.routes.get(position).clone();
        let hosts = Self::index_hosts(&route);
        let position = small(position);
        for m in &route.matches {
            if hosts.is_empty() {
                self.any_host.remove(&m.path, position);
            }
            for host in &hosts {
                let tier = match host.strip_prefix("*.") {
                    Some(suffix) => self.wildcard_hosts.get_mut(suffix),
                    None => self.exact_hosts.get_mut(host.as_str()),
                };
                if let Some(tier) = tier {
                    tier.remove(&m.path, position);
                }
            }
        }
    }
}

impl Tier {
    /// Adds `entry` under its path condition; `sorted`: at its place in key order.
    fn insert(&mut self, path: &PathCondition, entry: Entry, sorted: bool) {
        let list = match path {
            PathCondition::Any => {
                return insert_into(&mut self.no_path, entry, sorted);
            }
            PathCondition::Regex(_) => {
                return insert_into(&mut self.regexes, entry, sorted);
            }
            PathCondition::Exact(exact) => self.exact_paths.get_or_default(exact.clone()),
            PathCondition::Prefix(prefix) => self.prefixes.get_or_default(prefix.clone()),
        };
        list.push(entry);
        if sorted {
            list.sort();
        }
    }

    /// Removes the entries of route `route` under `path`.
    fn remove(&mut self, path: &PathCondition, route: u32) {
        let (map, key) = match path {
            PathCondition::Any => return self.no_path.retain(|e| e.route != route),
            PathCondition::Regex(_) => return self.regexes.retain(|e| e.route != route),
            PathCondition::Exact(exact) => (&mut self.exact_paths, &**exact),
            PathCondition::Prefix(prefix) => (&mut self.prefixes, &**prefix),
        };
        let emptied = map.get_mut(key).is_some_and(|list| {
            list.remove_route(route);
            list.is_empty()
        });
        if emptied {
            map.remove(key);
        }
    }

    /// Sorts every list greatest key first, which is what lets [`RouteTable::scan`] stop early.
    fn sort(&mut self) {
        for list in self
            .exact_paths
            .values_mut()
            .chain(self.prefixes.values_mut())
        {
            list.sort();
        }
        sort_greatest_first(&mut self.regexes);
        sort_greatest_first(&mut self.no_path);
    }
}

impl Default for RouteTable {
    fn default() -> Self {
        Self::empty()
    }
}

impl TryFrom<&Snapshot> for RouteTable {
    type Error = Vec<ValidationError>;

    /// [`RouteTable::compile`].
    fn try_from(snapshot: &Snapshot) -> Result<Self, Self::Error> {
        Self::compile(snapshot)
    }
}

impl fmt::Debug for RouteTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RouteTable")
            .field("routes", &self.routes.len())
            .field("exact_hosts", &self.exact_hosts.len())
            .field("wildcard_hosts", &self.wildcard_hosts.len())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{Req, table};

    fn winner(t: &RouteTable, req: Req) -> Option<String> {
        t.find(&req.view()).map(|m| m.route.name.clone())
    }

    #[test]
    fn table_is_shareable_across_threads() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<RouteTable>();
    }

    #[test]
    fn empty_table_finds_nothing() {
        let t = RouteTable::empty();
        assert!(t.is_empty());
        assert_eq!(t.len(), 0);
        assert_eq!(winner(&t, Req::get("a", "/")), None);
        assert_eq!(
            winner(
                &RouteTable::compile(&Snapshot::default()).unwrap(),
                Req::get("a", "/")
            ),
            None
        );
    }

    #[test]
    fn a_change_compiles_only_the_routes_it_touches() {
        let resources =
            fleetgate_shared::parse_bundle(PATHS, fleetgate_shared::bundle::Format::Yaml, "")
                .unwrap();
        let first = Snapshot::new(1, resources).unwrap();
        let before = RouteTable::compile(&first).unwrap();
        let mut changed = first
            .get(&fleetgate_shared::ResourceKey::new(
                fleetgate_shared::Kind::Route,
                "prefix",
            ))
            .unwrap()
            .clone();
        if let Spec::Route(spec) = &mut changed.spec {
            spec.priority = 5;
        }
        let second = first
            .apply(&fleetgate_shared::Delta {
                from: 1,
                to: 2,
                upserts: vec![changed],
                deletes: vec![],
            })
            .unwrap();
        let after = RouteTable::compile_validated(&second, &before).unwrap();
        let shared: Vec<(&str, bool)> = before
            .routes
            .iter()
            .zip(after.routes.iter())
            .map(|(a, b)| (a.name.as_str(), Arc::ptr_eq(a, b)))
            .collect();
        assert_eq!(
            shared,
            [
                ("exact", true),
                ("prefix", false),
                ("prefix-slash", true),
                ("regex", true)
            ]
        );
        assert_eq!(
            after
                .routes()
                .find(|r| r.name == "prefix")
                .unwrap()
                .spec
                .priority,
            5
        );
    }

    const PATHS: &str = r#"
kind: Route
name: exact
spec:
  matches: [{path: {exact: /login}}]
  direct_response: {status: 200}
---
kind: Route
name: prefix
spec:
  matches: [{path: {prefix: /api}}]
  direct_response: {status: 200}
---
kind: Route
name: prefix-slash
spec:
  matches: [{path: {prefix: /static/}}]
  direct_response: {status: 200}
---
kind: Route
name: regex
spec:
  matches: [{path: {regex: "/users/[0-9]+"}}]
  direct_response: {status: 200}
"#;

    #[test]
    fn path_exact_prefix_and_regex() {
        let t = table(PATHS);
        assert_eq!(t.len(), 4);
        let w = |path: &str| winner(&t, Req::get("any.host", path));
        assert_eq!(w("/login").as_deref(), Some("exact"));
        assert_eq!(w("/login/"), None);
        assert_eq!(w("/api").as_deref(), Some("prefix"));
        assert_eq!(w("/api/").as_deref(), Some("prefix"));
        assert_eq!(w("/api/x/y").as_deref(), Some("prefix"));
        assert_eq!(w("/apix"), None);
        assert_eq!(w("/static").as_deref(), Some("prefix-slash"));
        assert_eq!(w("/static/app.js").as_deref(), Some("prefix-slash"));
        assert_eq!(w("/staticx"), None);
        assert_eq!(w("/users/42").as_deref(), Some("regex"));
        assert_eq!(w("/users/42/x"), None);
        assert_eq!(w("/v1/users/42"), None);
    }

    #[test]
    fn matched_reports_match_index_and_prefix() {
        let t = table(
            r#"
kind: Route
name: multi
spec:
  matches: [{path: {exact: /a}}, {path: {prefix: /b/}}]
  direct_response: {status: 200}
---
kind: Route
name: all
spec:
  hosts: [all.example.com]
  direct_response: {status: 200}
"#,
        );
        let req = Req::get("x", "/a");
        let m = t.find(&req.view()).unwrap();
        assert_eq!((m.match_index, m.matched_prefix), (Some(0), None));
        let req = Req::get("x", "/b/c");
        let m = t.find(&req.view()).unwrap();
        assert_eq!((m.match_index, m.matched_prefix), (Some(1), Some("/b")));
        let req = Req::get("all.example.com", "/zzz");
        let m = t.find(&req.view()).unwrap();
        assert_eq!(m.route.name, "all");
        assert_eq!((m.match_index, m.matched_prefix), (None, None));
    }

    #[test]
    fn prefix_slash_matches_everything() {
        let t = table(
            "kind: Route\nname: root\nspec:\n  matches: [{path: {prefix: /}}]\n  direct_response: {status: 200}\n",
        );
        for path in ["/", "/x", "/x/y/z", ""] {
            let req = Req::get("h", path);
            let m = t.find(&req.view()).unwrap();
            assert_eq!(m.matched_prefix, Some("/"), "{path}");
        }
    }

    #[test]
    fn methods_headers_and_query_filter_candidates() {
        let t = table(
            r#"
kind: Route
name: m
spec:
  matches: [{methods: [POST], headers: [{name: x-a, exact: "1"}], query: [{name: q, invert: true}]}]
  direct_response: {status: 200}
"#,
        );
        let ok = Req::get("h", "/").method("POST").header("X-A", "1");
        assert_eq!(winner(&t, ok.clone()).as_deref(), Some("m"));
        assert_eq!(winner(&t, ok.clone().method("GET")), None);
        assert_eq!(winner(&t, ok.clone().query("q=1")), None);
        assert_eq!(winner(&t, ok.clone().query("r=1")).as_deref(), Some("m"));
        assert_eq!(
            winner(&t, Req::get("h", "/").method("POST").header("x-a", "2")),
            None
        );
    }

    const HOSTS: &str = r#"
kind: Route
name: exact
spec:
  hosts: [api.example.com]
  direct_response: {status: 200}
---
kind: Route
name: wildcard
spec:
  hosts: ["*.example.com"]
  direct_response: {status: 200}
---
kind: Route
name: ip
spec:
  hosts: ["::1", 127.0.0.1]
  direct_response: {status: 200}
"#;

    #[test]
    fn hosts_exact_wildcard_and_any() {
        let t = table(HOSTS);
        let w = |host: &str| winner(&t, Req::get(host, "/"));
        assert_eq!(w("api.example.com").as_deref(), Some("exact"));
        assert_eq!(w("www.example.com").as_deref(), Some("wildcard"));
        // `*.` is exactly one label: not the apex, not two labels.
        assert_eq!(w("example.com"), None);
        assert_eq!(w("a.b.example.com"), None);
        assert_eq!(w(".example.com"), None);
        assert_eq!(w("::1").as_deref(), Some("ip"));
        assert_eq!(
            w(&crate::normalize_host("[::1]:443")).as_deref(),
            Some("ip")
        );
        assert_eq!(w("127.0.0.1").as_deref(), Some("ip"));
        assert_eq!(w("other.org"), None);

        let with_any = table(&format!(
            "{HOSTS}---\nkind: Route\nname: any\nspec:\n  direct_response: {{status: 200}}\n"
        ));
        let w = |host: &str| winner(&with_any, Req::get(host, "/"));
        assert_eq!(w("other.org").as_deref(), Some("any"));
        assert_eq!(w("example.com").as_deref(), Some("any"));
        assert_eq!(w("api.example.com").as_deref(), Some("exact"));
    }

    #[test]
    fn a_route_with_several_hosts_ranks_by_the_host_that_matched() {
        // `both` is listed under its exact host and its wildcard; `rival` has the same exact
        // host and loses on name, but beats `both` where only the wildcard matches `both`.
        let t = table(
            r#"
kind: Route
name: both
spec:
  hosts: [a.example.com, "*.example.com"]
  direct_response: {status: 200}
---
kind: Route
name: rival
spec:
  hosts: [b.example.com]
  direct_response: {status: 200}
"#,
        );
        assert_eq!(
            winner(&t, Req::get("a.example.com", "/")).as_deref(),
            Some("both")
        );
        assert_eq!(
            winner(&t, Req::get("b.example.com", "/")).as_deref(),
            Some("rival")
        );
        assert_eq!(
            winner(&t, Req::get("c.example.com", "/")).as_deref(),
            Some("both")
        );
    }
}
