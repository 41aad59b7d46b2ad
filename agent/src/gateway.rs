//! The gateway's shared state: the current generation, the upstream clients, telemetry, and
//! the one apply path every config source uses.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use fleetgate_shared::{Snapshot, ValidationError};

use crate::config::AccessLog;
use crate::generation::{ConfigSource, Generation};
use crate::telemetry::Telemetry;
use crate::upstream::UpstreamClients;

/// File name of the current persisted snapshot inside the data directory.
const CURRENT: &str = "snapshot.json";
/// File name of the previous generation, kept for when the current one is corrupt.
const PREVIOUS: &str = "snapshot.prev.json";

/// Shared by every connection and by the config sources.
#[derive(Debug)]
pub struct Gateway {
    current: ArcSwap<Generation>,
    clients: UpstreamClients,
    /// Policy state that outlives config versions (rate-limit counters, bans).
    pub policy_state: fleetgate_agent_policy::PolicyState,
    pub telemetry: Telemetry,
    /// Serializes applies (compile + swap + persist); never taken on the request path.
    apply_lock: Mutex<()>,
    data_dir: Option<PathBuf>,
    /// The problems of the last rejected snapshot, for `/config`.
    last_rejection: Mutex<Option<(u64, Vec<ValidationError>)>>,
    /// Manager mode's session state; `None` in standalone mode.
    sync: Mutex<Option<crate::sync::SyncStatus>>,
}

/// A persisted snapshot and where it came from.
#[derive(Debug)]
pub struct PersistedSnapshot {
    pub snapshot: Snapshot,
    /// Whether a manager sent it: only then may it be the base of the next delta.
    pub from_manager: bool,
}

/// What a persisted snapshot file holds: the snapshot and its content checksum, checked on
/// load so that a torn or corrupted file is detected rather than served.
#[derive(serde::Serialize, serde::Deserialize)]
struct Persisted {
    checksum: fleetgate_shared::Checksum,
    snapshot: Snapshot,
    /// Defaulted for files written before manager mode existed.
    #[serde(default)]
    from_manager: bool,
}

impl Gateway {
    pub fn new(access_log: AccessLog, data_dir: Option<PathBuf>) -> Arc<Self> {
        Arc::new(Self {
            current: ArcSwap::from_pointee(Generation::empty()),
            clients: UpstreamClients::default(),
            policy_state: Default::default(),
            telemetry: Telemetry::new(access_log),
            apply_lock: Mutex::new(()),
            data_dir,
            last_rejection: Mutex::new(None),
            sync: Mutex::new(None),
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
        let _serial = self.apply_lock.lock().unwrap_or_else(|p| p.into_inner());
        let previous = self.current();
        let compiled = Generation::compile(
            snapshot,
            source,
            &previous,
            &self.clients,
            &self.policy_state,
        );
        let generation = match compiled {
            Ok(mut generation) => {
                generation.route_stats = self
                    .telemetry
                    .stats
                    .for_routes(generation.routes.routes().map(|r| r.name.as_str()));
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
        *self
            .last_rejection
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = None;
        tracing::info!(
            revision = generation.revision,
            checksum = %generation.checksum.short(),
            routes = generation.routes.len(),
            source = ?source,
            "config applied"
        );
        if let Some(dir) = &self.data_dir
            && source != ConfigSource::Disk
            && let Err(e) = persist(dir, snapshot, source == ConfigSource::Manager)
        {
            tracing::warn!(dir = %dir.display(), "config applied but not persisted ({e}); a restart would not have it. Check the data directory");
        }
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

    /// The newest persisted snapshot that passes its checksum, with where it came from: the
    /// current file, else the previous generation (with a warning).
    pub fn load_persisted(&self) -> Option<PersistedSnapshot> {
        let dir = self.data_dir.as_ref()?;
        for name in [CURRENT, PREVIOUS] {
            let path = dir.join(name);
            match read_persisted(&path) {
                Ok(Some(snapshot)) => {
                    if name == PREVIOUS {
                        tracing::warn!(path = %dir.join(CURRENT).display(), "current persisted snapshot is unusable; serving the previous generation");
                    }
                    return Some(snapshot);
                }
                Ok(None) => {}
                Err(e) => tracing::warn!(path = %path.display(), "persisted snapshot ignored: {e}"),
            }
        }
        None
    }
}

fn read_persisted(path: &Path) -> Result<Option<PersistedSnapshot>, String> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e.to_string()),
    };
    let persisted: Persisted =
        serde_json::from_slice(&bytes).map_err(|e| format!("does not parse: {e}"))?;
    let actual = persisted.snapshot.checksum();
    if actual != persisted.checksum {
        return Err(format!(
            "checksum mismatch: file says {}, content is {}",
            persisted.checksum.short(),
            actual.short()
        ));
    }
    Ok(Some(PersistedSnapshot {
        snapshot: persisted.snapshot,
        from_manager: persisted.from_manager,
    }))
}

/// Writes the snapshot durably: to a temporary file, fsynced, then renamed over the current
/// one after the current one became the previous generation.
fn persist(dir: &Path, snapshot: &Snapshot, from_manager: bool) -> std::io::Result<()> {
    use std::io::Write;
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!("{CURRENT}.tmp"));
    let body = serde_json::to_vec(&Persisted {
        checksum: snapshot.checksum(),
        snapshot: snapshot.clone(),
        from_manager,
    })?;
    let mut file = std::fs::File::create(&tmp)?;
    file.write_all(&body)?;
    file.sync_all()?;
    let current = dir.join(CURRENT);
    if current.exists() {
        std::fs::rename(&current, dir.join(PREVIOUS))?;
    }
    std::fs::rename(&tmp, &current)?;
    std::fs::File::open(dir)?.sync_all()
}
