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
pub type Fingerprint = Vec<(PathBuf, u64, Option<SystemTime>)>;

/// The names, sizes and modification times of the files at `path`.
pub fn fingerprint(path: &Path) -> Fingerprint {
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

/// Polls `path` until `shutdown` flips, applying each change as the next revision. `loaded` is
/// the fingerprint taken before the files were last loaded: a change made since (while the
/// agent was starting, before this task first ran) is applied at the first poll rather than
/// taken for the state already serving.
pub async fn watch_file(
    gateway: Arc<Gateway>,
    path: PathBuf,
    loaded: Fingerprint,
    interval: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut last = loaded;
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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::config::AccessLog;

    fn write(path: &Path, body: &str) {
        let yaml = format!(
            "kind: Route\nname: ping\nspec:\n  direct_response: {{ status: 200, body: {body} }}\n"
        );
        std::fs::write(path, yaml).unwrap();
    }

    /// A file changed after the agent read it at start, but before the watcher first ran, is
    /// applied at the watcher's first poll: the watcher compares with the fingerprint taken
    /// before the read, not with the file as it finds it (which would take the change for
    /// what is serving and never apply it).
    #[tokio::test]
    async fn a_change_made_while_the_agent_starts_is_applied() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gateway.yaml");
        write(&path, "first");
        let gateway = Gateway::new(AccessLog::Off, None);
        let loaded = fingerprint(&path);
        assert!(load_and_apply(&gateway, &path, 1));
        write(&path, "second-and-longer");

        let (stop, stopped) = watch::channel(false);
        let watcher = tokio::spawn(watch_file(
            gateway.clone(),
            path,
            loaded,
            Duration::from_millis(10),
            stopped,
        ));
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while gateway.current().revision < 2 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the change made while starting was never applied"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        stop.send(true).unwrap();
        watcher.await.unwrap();
    }
}
