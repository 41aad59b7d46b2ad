//! The gateway's shared state: the current generation, the upstream clients, telemetry, and
//! the one apply path every config source uses.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use fleetgate_shared::{Snapshot, ValidationError};

use crate::config::AccessLog;
use crate::generation::{ConfigSource, Generation};
pub use crate::persist::PersistedSnapshot;
use crate::persist::SnapshotStore;
use crate::telemetry::Telemetry;
use crate::upstream::UpstreamClients;

/// Shared by every connection and by the config sources.
#[derive(Debug)]
pub struct Gateway {
    current: ArcSwap<Generation>,
    clients: UpstreamClients,
    /// Policy state that outlives config versions (rate-limit counters, bans).
    pub policy_state: fleetgate_agent_policy::PolicyState,
    pub telemetry: Telemetry,
    /// Serializes applies (compile + swap + persist); never taken on the request path.
    applying: Mutex<Applying>,
    /// The problems of the last rejected snapshot, for `/config`.
    last_rejection: Mutex<Option<(u64, Vec<ValidationError>)>>,
    /// Manager mode's session state; `None` in standalone mode.
    sync: Mutex<Option<crate::sync::SyncStatus>>,
    /// Replaced generations go to the reaper thread, which frees each once no request holds it.
    retired: Mutex<std::sync::mpsc::Sender<Arc<Generation>>>,
}

/// How often the reaper looks for retired generations no request holds any more.
const REAP_EVERY: std::time::Duration = std::time::Duration::from_millis(100);

/// Frees replaced generations off the apply path and off the async workers: a generation of
/// 10,000 routes takes milliseconds to free, which would otherwise delay the Ack of the next
/// one, or stall whichever request happened to hold the last reference. Ends when the gateway
/// is dropped.
fn reaper() -> std::sync::mpsc::Sender<Arc<Generation>> {
    let (tx, rx) = std::sync::mpsc::channel::<Arc<Generation>>();
    let spawned = std::thread::Builder::new()
        .name("fleetgate-reaper".into())
        .spawn(move || {
            let mut held: Vec<Arc<Generation>> = Vec::new();
            loop {
                match rx.recv_timeout(REAP_EVERY) {
                    Ok(generation) => held.push(generation),
                    Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                    Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return,
                }
                // A count of one is this thread's own reference: nobody can take another.
                held.retain(|generation| Arc::strong_count(generation) > 1);
            }
        });
    if let Err(e) = spawned {
        // Without the thread the channel is closed and generations are freed where they are
        // dropped: slower applies, nothing worse.
        tracing::warn!(
            "cannot start the thread that frees old config versions ({e}); freeing them inline"
        );
    }
    tx
}

/// What applies build on: the snapshot the current generation was compiled from, and the
/// persisted copy.
#[derive(Debug, Default)]
struct Applying {
    applied: Option<Snapshot>,
    store: Option<SnapshotStore>,
}

impl Gateway {
    pub fn new(access_log: AccessLog, data_dir: Option<PathBuf>) -> Arc<Self> {
        Arc::new(Self {
            current: ArcSwap::from_pointee(Generation::empty()),
            clients: UpstreamClients::default(),
            policy_state: Default::default(),
            telemetry: Telemetry::new(access_log),
            applying: Mutex::new(Applying {
                applied: None,
                store: data_dir.map(SnapshotStore::new),
            }),
            last_rejection: Mutex::new(None),
            sync: Mutex::new(None),
            retired: Mutex::new(reaper()),
        })
    }

    /// The generation serving now. Requests call this once and keep the `Arc`.
    pub fn current(&self) -> Arc<Generation> {
        self.current.load_full()
    }

    /// Validates, compiles and publishes `snapshot`, then persists it. On error nothing
    /// changes: the running generation keeps serving, and every problem is returned (and
    /// logged, one line each).
    pub fn apply(
        &self,
        snapshot: &Snapshot,
        source: ConfigSource,
    ) -> Result<Arc<Generation>, Vec<ValidationError>> {
        let started = std::time::Instant::now();
        let mut applying = self.applying.lock().unwrap_or_else(|p| p.into_inner());
        let previous = self.current();
        let compiled = Generation::compile(
            snapshot,
            source,
            &previous,
            applying.applied.as_ref(),
            &self.clients,
            &self.policy_state,
        );
        let generation = match compiled {
            Ok(mut generation) => {
                generation.route_stats = if generation.routes.same_names(&previous.routes) {
                    previous.route_stats.clone()
                } else {
                    Arc::new(
                        self.telemetry
                            .stats
                            .for_routes(generation.routes.routes().map(|r| r.name.as_str())),
                    )
                };
                Arc::new(generation)
            }
            Err(errors) => {
                for error in &errors {
                    tracing::error!(revision = snapshot.revision, "config rejected: {error}");
                }
                tracing::error!(
                    revision = snapshot.revision,
                    serving = previous.revision,
                    "config rejected with {} problem(s); still serving revision {}. Fix the config and save it again",
                    errors.len(),
                    previous.revision
                );
                *self
                    .last_rejection
                    .lock()
                    .unwrap_or_else(|p| p.into_inner()) = Some((snapshot.revision, errors.clone()));
                return Err(errors);
            }
        };
        self.current.store(generation.clone());
        let swapped = started.elapsed();
        *self
            .last_rejection
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = None;
        let Applying { applied, store } = &mut *applying;
        if let Some(store) = store
            && source != ConfigSource::Disk
            && let Err(e) = store.write(applied.as_ref(), snapshot, source == ConfigSource::Manager)
        {
            tracing::warn!(dir = %store.dir().display(), "config applied but not persisted ({e}); a restart would not have it. Check the data directory");
        }
        *applied = Some(snapshot.clone());
        // After a whole snapshot, index it for the changes that follow while it already serves:
        // otherwise the first change would pay for it (milliseconds at 10,000 routes, on every
        // agent at once: the one slow trial in run N of docs/benchmarks.md).
        snapshot.prepare_for_changes();
        // A failed send hands the generation back, and it is freed here.
        let _ = self
            .retired
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .send(previous);
        tracing::info!(
            revision = generation.revision,
            checksum = %generation.checksum.short(),
            routes = generation.routes.len(),
            source = ?source,
            compile_ms = format_args!("{:.1}", swapped.as_secs_f64() * 1000.0),
            total_ms = format_args!("{:.1}", started.elapsed().as_secs_f64() * 1000.0),
            "config applied"
        );
        Ok(generation)
    }

    /// The problems of the last rejected snapshot, if the last apply failed.
    pub fn last_rejection(&self) -> Option<(u64, Vec<ValidationError>)> {
        self.last_rejection
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Manager mode's session state, for `/config` and `/metrics`.
    pub fn sync_status(&self) -> Option<crate::sync::SyncStatus> {
        self.sync.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Changes manager mode's session state (and marks the agent as being in manager mode).
    pub fn set_sync_status(&self, change: impl FnOnce(&mut crate::sync::SyncStatus)) {
        let mut sync = self.sync.lock().unwrap_or_else(|p| p.into_inner());
        change(sync.get_or_insert_with(Default::default));
    }

    /// The newest usable persisted snapshot, with where it came from (see [`crate::persist`]
    /// for what is tried and what is skipped with a warning).
    pub fn load_persisted(&self) -> Option<PersistedSnapshot> {
        let mut applying = self.applying.lock().unwrap_or_else(|p| p.into_inner());
        applying.store.as_mut()?.load()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn config(revision: u64) -> Snapshot {
        let yaml = format!(
            "kind: Route\nname: ping\nspec:\n  direct_response: {{ status: 200, body: v{revision} }}\n"
        );
        let resources =
            fleetgate_shared::parse_bundle(&yaml, fleetgate_shared::bundle::Format::Yaml, "")
                .unwrap();
        Snapshot::new(revision, resources).unwrap()
    }

    /// A replaced generation stays alive while a request holds it, and is freed (by the
    /// reaper, not leaked) once that request ends.
    #[test]
    fn a_replaced_generation_is_freed_once_no_request_holds_it() {
        let gateway = Gateway::new(AccessLog::Off, None);
        gateway.apply(&config(1), ConfigSource::File).unwrap();
        let in_flight = gateway.current();
        let first = Arc::downgrade(&in_flight);
        gateway.apply(&config(2), ConfigSource::File).unwrap();
        std::thread::sleep(REAP_EVERY * 3);
        assert!(first.upgrade().is_some(), "freed while a request held it");
        assert_eq!(in_flight.revision, 1);

        drop(in_flight);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while first.upgrade().is_some() {
            assert!(
                std::time::Instant::now() < deadline,
                "a replaced generation was never freed"
            );
            std::thread::sleep(REAP_EVERY / 4);
        }
        assert_eq!(gateway.current().revision, 2);
    }
}
