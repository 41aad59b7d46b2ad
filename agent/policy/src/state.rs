use std::any::Any;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// One policy's state of one kind, type-erased.
type Entry = Arc<dyn Any + Send + Sync>;

/// State that outlives config versions, keyed by policy name and a kind tag: rate-limit
/// counters, CC bans, nonce caches. Looked up only while compiling a config version; the
/// request path holds the `Arc`s the compiled plugins captured.
#[derive(Debug, Default)]
pub struct PolicyState {
    entries: Mutex<HashMap<(String, &'static str), Entry>>,
}

impl PolicyState {
    /// The state of kind `T` for `policy`, created with `init` the first time. When a policy
    /// changes type, its old state of another kind is left for [`PolicyState::retain`] to drop.
    pub fn get_or_insert<T: Any + Send + Sync>(
        &self,
        policy: &str,
        kind: &'static str,
        init: impl FnOnce() -> T,
    ) -> Arc<T> {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let key = (policy.to_owned(), kind);
        if let Some(existing) = entries.get(&key)
            && let Ok(typed) = existing.clone().downcast::<T>()
        {
            return typed;
        }
        let fresh = Arc::new(init());
        entries.insert(key, fresh.clone());
        fresh
    }

    /// Drops the state of policies that no longer exist.
    pub fn retain(&self, live: impl Fn(&str) -> bool) {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries.retain(|(policy, _), _| live(policy));
    }

    /// Every state of kind `T`, by policy name (for the admin API).
    pub fn all<T: Any + Send + Sync>(&self, kind: &'static str) -> Vec<(String, Arc<T>)> {
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries
            .iter()
            .filter(|((_, k), _)| *k == kind)
            .filter_map(|((name, _), v)| v.clone().downcast::<T>().ok().map(|t| (name.clone(), t)))
            .collect()
    }
}
