//! Per-key state for a policy, kept in [`crate::PolicyState`] so that it outlives config
//! versions: a concurrent map (sharded locks held for one update, no global lock), swept of
//! idle keys, and capped.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use dashmap::DashMap;
use tokio::time::Instant;

/// Keys one policy tracks at most, per agent. At ~100 bytes a key (the key text, its state
/// and the map's overhead) that is ~10 MB per policy: enough for every client of a large
/// site within one window, small enough that a flood of random keys cannot exhaust memory.
/// What happens to a new key beyond it is the caller's choice (see `Table::update`).
pub const MAX_KEYS: usize = 100_000;

/// How often idle keys are swept: a sweep walks the whole map once, so not on every request;
/// 10 s keeps a table of short-window keys small without measurable cost.
const SWEEP_INTERVAL_NS: u64 = 10_000_000_000;

/// At the cap, how often a sweep may be tried again to make room: bounded so that a full table
/// of keys that are all still active does not cost a walk per request.
const FULL_SWEEP_GAP_NS: u64 = 1_000_000_000;

/// State whose removal, once idle, changes nothing: a key with its whole quota back behaves
/// exactly like a key never seen. That is what makes eviction safe.
pub trait Expiring {
    fn idle(&self, now: u64) -> bool;
}

/// A policy's per-key state.
#[derive(Debug)]
pub struct Table<V> {
    epoch: Instant,
    map: DashMap<String, V>,
    cap: usize,
    last_sweep: AtomicU64,
    full: AtomicBool,
    what: &'static str,
}

impl<V: Expiring> Table<V> {
    /// An empty table; `what` names the policy type in its one log line at the cap.
    pub fn new(cap: usize, what: &'static str) -> Self {
        Self {
            epoch: Instant::now(),
            map: DashMap::new(),
            cap,
            last_sweep: AtomicU64::new(0),
            full: AtomicBool::new(false),
            what,
        }
    }

    /// Nanoseconds since the table was created, on tokio's clock (paused in tests).
    pub fn now(&self) -> u64 {
        let elapsed = Instant::now().saturating_duration_since(self.epoch);
        u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX)
    }

    /// Keys tracked now.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Runs `update` on the state of `key`, creating it with `init` first if needed. Returns
    /// `None` without running it when the key is new and the table is at its cap even after
    /// dropping idle keys.
    pub fn update<R>(
        &self,
        key: &str,
        now: u64,
        init: impl FnOnce() -> V,
        update: impl FnOnce(&mut V) -> R,
    ) -> Option<R> {
        self.sweep_if_due(now, SWEEP_INTERVAL_NS);
        if let Some(mut state) = self.map.get_mut(key) {
            return Some(update(&mut state));
        }
        if self.map.len() >= self.cap {
            self.sweep_if_due(now, FULL_SWEEP_GAP_NS);
            if self.map.len() >= self.cap {
                if !self.full.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        keys = self.cap,
                        "{} is tracking its maximum of {} keys; new keys are handled as documented for the policy type until idle keys expire. If this is legitimate traffic, count by a coarser key",
                        self.what,
                        self.cap
                    );
                }
                return None;
            }
        }
        let mut state = self.map.entry(key.to_owned()).or_insert_with(init);
        Some(update(&mut state))
    }

    /// Reads every entry (for the admin API).
    pub fn collect<R>(&self, mut f: impl FnMut(&str, &V) -> Option<R>) -> Vec<R> {
        self.map
            .iter()
            .filter_map(|entry| f(entry.key(), entry.value()))
            .collect()
    }

    fn sweep_if_due(&self, now: u64, gap: u64) {
        let last = self.last_sweep.load(Ordering::Relaxed);
        if now.saturating_sub(last) < gap
            || self
                .last_sweep
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            return;
        }
        self.map.retain(|_, state| !state.idle(now));
        if self.map.len() < self.cap {
            self.full.store(false, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Until(u64);

    impl Expiring for Until {
        fn idle(&self, now: u64) -> bool {
            now >= self.0
        }
    }

    #[test]
    fn idle_keys_are_swept_and_the_cap_holds() {
        let table = Table::new(2, "test");
        assert_eq!(table.update("a", 0, || Until(5), |_| ()), Some(()));
        assert_eq!(table.update("b", 0, || Until(u64::MAX), |_| ()), Some(()));
        assert_eq!(table.update("c", 1, || Until(5), |_| ()), None, "full");
        assert_eq!(
            table.update("a", 1, || Until(5), |u| u.0),
            Some(5),
            "known keys still update"
        );
        // After the gap, "a" is idle and makes room for "c".
        let later = FULL_SWEEP_GAP_NS + 10;
        assert_eq!(
            table.update("c", later, || Until(u64::MAX), |_| ()),
            Some(())
        );
        assert_eq!(table.len(), 2);
        // The periodic sweep drops idle keys without any pressure.
        let table = Table::new(10, "test");
        table.update("x", 0, || Until(1), |_| ());
        table.update("y", SWEEP_INTERVAL_NS, || Until(u64::MAX), |_| ());
        assert_eq!(table.len(), 1);
    }
}
