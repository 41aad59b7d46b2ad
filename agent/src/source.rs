//! Standalone config source: a file or directory, polled for changes.
//!
//! Polling (every `--watch-interval-ms`) is used instead of inotify because it also works on
//! network and container-mounted volumes and for editors that replace files by rename. A
//! change is detected from the files' names, sizes and modification times; the snapshot is
//! applied only when its content checksum differs from what is serving.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use fleetgate_shared::{LoadError, Snapshot, load_paths};
use tokio::sync::watch;

use crate::gateway::Gateway;
use crate::generation::ConfigSource;

/// What the watcher compares between polls.
type Fingerprint = Vec<(PathBuf, u64, Option<SystemTime>)>;

fn fingerprint(path: &Path) -> Fingerprint {
    let mut out = Vec::new();
    collect(path, &mut out);
    out.sort();
    out
}

fn collect(path: &Path, out: &mut Fingerprint) {
    let Ok(meta) = std::fs::metadata(path) else {
        out.push((path.to_owned(), u64::MAX, None));
        return;
    };
    if meta.is_dir() {
        if let Ok(entries) = std::fs::read_dir(path) {
            for entry in entries.flatten() {
                collect(&entry.path(), out);
            }
        }
    } else {
        out.push((path.to_owned(), meta.len(), meta.modified().ok()));
    }
}

/// Loads the config path once and applies it as `revision`. Returns whether it applied.
pub fn load_and_apply(gateway: &Gateway, path: &Path, revision: u64) -> bool {
    let resources = match load_paths(&[path]) {
        Ok(resources) => resources,
        Err(LoadError::Unreadable { path, reason }) => {
            tracing::error!(path = %path.display(), "config not readable: {reason}; still serving the running config");
            return false;
        }
        Err(LoadError::Invalid(errors)) => {
            for error in &errors {
                tracing::error!("config rejected: {error}");
            }
            tracing::error!(
                "config rejected with {} parse problem(s); still serving the running config",
                errors.len()
            );
            return false;
        }
    };
    let snapshot = match Snapshot::new(revision, resources) {
        Ok(snapshot) => snapshot,
        Err(e) => {
            tracing::error!("config rejected: {e}; still serving the running config");
            return false;
        }
    };
    if gateway.current().checksum == snapshot.checksum()
        && gateway.current().source != ConfigSource::None
    {
        return false;
    }
    gateway.apply(&snapshot, ConfigSource::File).is_ok()
}

/// Polls `path` until `shutdown` flips, applying each change as the next revision.
pub async fn watch_file(
    gateway: Arc<Gateway>,
    path: PathBuf,
    interval: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut last = fingerprint(&path);
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = shutdown.changed() => return,
        }
        let now = fingerprint(&path);
        if now == last {
            continue;
        }
        last = now;
        let revision = gateway.current().revision + 1;
        let gateway = gateway.clone();
        let path = path.clone();
        // Parsing and compiling can take a while for big configs: keep them off the workers
        // that serve requests.
        let _ =
            tokio::task::spawn_blocking(move || load_and_apply(&gateway, &path, revision)).await;
    }
}
