//! The agent's persisted config: what it serves after a restart with no manager reachable.
//!
//! # Files, in the data directory
//!
//! - `snapshot.json`: a *base*, a whole snapshot with its content checksum.
//! - `snapshot.journal`: the changes applied since that base, one JSON line each: the delta,
//!   the checksum of the content it leads to, whether a manager sent it, and a *seal* (SHA-256
//!   of the revisions, checksum and source, which the content checksum does not cover; a base
//!   carries one too). Appended and
//!   `fdatasync`ed before the agent acknowledges the revision, so persisting a one-route change
//!   writes a few hundred bytes, not the whole config.
//! - `snapshot.prev.json` and `snapshot.prev.journal`: the base and journal before the last
//!   compaction, the fallback when the current base is unusable.
//!
//! A new base is written (to a temporary file, synced, renamed; the old pair becomes the
//! previous one) when there is no journal to extend, when the change does not follow the tip,
//! or when the journal has grown past a bound (entries or half the base's size), which also
//! bounds the work of loading.
//!
//! # Loading
//!
//! The newest usable generation wins: the current base with the longest prefix of its journal
//! that chains (each delta starts where the previous one ended), matches its seal and reproduces
//! the recorded checksum; else the previous pair the same way. A torn last line (a crash mid-append) or a
//! damaged entry costs that entry and what follows it: the generation before it is served, with
//! a warning. A journal left from an older base (a crash between the rename of a new base and
//! the removal of the journal) does not chain from the new base and is ignored.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use fleetgate_shared::{Checksum, Delta, Resource, ResourceKey, Snapshot, diff};

/// The current base.
pub const CURRENT: &str = "snapshot.json";
/// The changes since the current base.
pub const JOURNAL: &str = "snapshot.journal";
const PREVIOUS: &str = "snapshot.prev.json";
const PREVIOUS_JOURNAL: &str = "snapshot.prev.journal";
/// At most this many journal entries before the next change writes a new base.
const MAX_ENTRIES: usize = 256;
/// A journal may grow to this size even when the base is smaller (half the base otherwise).
const MIN_JOURNAL_BYTES: u64 = 64 * 1024;

/// A persisted snapshot and where it came from.
#[derive(Debug)]
pub struct PersistedSnapshot {
    pub snapshot: Snapshot,
    /// Whether a manager sent it: only then may it be the base of the next delta.
    pub from_manager: bool,
}

/// What a base file holds: the snapshot and its content checksum, checked on load so that a
/// torn or corrupted file is detected rather than served.
#[derive(serde::Serialize, serde::Deserialize)]
struct Base {
    checksum: Checksum,
    snapshot: Snapshot,
    /// Defaulted for files written before manager mode existed.
    #[serde(default)]
    from_manager: bool,
    /// [`seal`] of the revision, checksum and source: the content checksum does not cover the
    /// revision, so without it a damaged digit would serve right content as the wrong revision.
    /// Absent in files written before it existed (then only the content is checked).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    seal: Option<Checksum>,
}

/// One journal line.
#[derive(serde::Serialize, serde::Deserialize)]
struct Entry {
    delta: Delta,
    /// The content checksum after the delta.
    checksum: Checksum,
    from_manager: bool,
    /// [`seal`] of the delta's revisions, the checksum and the source.
    seal: Checksum,
}

/// A SHA-256 over the fields of a persisted record that its content checksum does not cover.
fn seal(from: u64, to: u64, checksum: &Checksum, from_manager: bool) -> Checksum {
    use sha2::{Digest, Sha256};
    let mut hasher = Sha256::new();
    hasher.update(b"fleetgate-persist-seal-v1");
    hasher.update(from.to_be_bytes());
    hasher.update(to.to_be_bytes());
    hasher.update(checksum.0);
    hasher.update([u8::from(from_manager)]);
    Checksum(hasher.finalize().into())
}

impl Entry {
    fn new(delta: Delta, checksum: Checksum, from_manager: bool) -> Self {
        let seal = seal(delta.from, delta.to, &checksum, from_manager);
        Self {
            delta,
            checksum,
            from_manager,
            seal,
        }
    }

    fn sealed(&self) -> bool {
        self.seal
            == seal(
                self.delta.from,
                self.delta.to,
                &self.checksum,
                self.from_manager,
            )
    }
}

/// Where the current journal stands, so that the next change can be appended.
#[derive(Debug)]
struct Tip {
    revision: u64,
    checksum: Checksum,
    base_bytes: u64,
    entries: usize,
    bytes: u64,
}

/// The persisted config of one data directory. Writes are serialized by the caller (the
/// gateway's apply lock).
#[derive(Debug)]
pub struct SnapshotStore {
    dir: PathBuf,
    /// `None` until a base is known to be on disk with a journal that ends at the tip.
    tip: Option<Tip>,
}

impl SnapshotStore {
    pub fn new(dir: PathBuf) -> Self {
        Self { dir, tip: None }
    }

    /// The data directory the files live in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Makes `next` durable. `previous` is the snapshot persisted before it (what the agent
    /// served), if any: when the journal ends at it, only the difference is appended.
    pub fn write(
        &mut self,
        previous: Option<&Snapshot>,
        next: &Snapshot,
        from_manager: bool,
    ) -> std::io::Result<()> {
        if let (Some(tip), Some(previous)) = (&self.tip, previous)
            && tip.revision == previous.revision
            && next.revision > previous.revision
            && tip.checksum == previous.checksum()
            && tip.entries < MAX_ENTRIES
            && tip.bytes < MIN_JOURNAL_BYTES.max(tip.base_bytes / 2)
        {
            return self.append(previous, next, from_manager);
        }
        self.write_base(next, from_manager)
    }

    fn append(
        &mut self,
        previous: &Snapshot,
        next: &Snapshot,
        from_manager: bool,
    ) -> std::io::Result<()> {
        let mut line = serde_json::to_vec(&Entry::new(
            diff(previous, next),
            next.checksum(),
            from_manager,
        ))?;
        line.push(b'\n');
        let path = self.dir.join(JOURNAL);
        let created = !path.exists();
        let mut file = OpenOptions::new().create(true).append(true).open(&path)?;
        file.write_all(&line)?;
        file.sync_data()?;
        if created {
            File::open(&self.dir)?.sync_all()?;
        }
        if let Some(tip) = &mut self.tip {
            tip.revision = next.revision;
            tip.checksum = next.checksum();
            tip.entries += 1;
            tip.bytes += line.len() as u64;
        }
        Ok(())
    }

    /// Writes `snapshot` as the new base: to a temporary file, synced, then renamed over the
    /// current one after the current pair became the previous pair.
    fn write_base(&mut self, snapshot: &Snapshot, from_manager: bool) -> std::io::Result<()> {
        self.tip = None;
        let dir = &self.dir;
        std::fs::create_dir_all(dir)?;
        let tmp = dir.join(format!("{CURRENT}.tmp"));
        let checksum = snapshot.checksum();
        let body = serde_json::to_vec(&Base {
            checksum,
            snapshot: snapshot.clone(),
            from_manager,
            seal: Some(seal(0, snapshot.revision, &checksum, from_manager)),
        })?;
        let mut file = File::create(&tmp)?;
        file.write_all(&body)?;
        file.sync_all()?;
        let current = dir.join(CURRENT);
        if current.exists() {
            std::fs::rename(&current, dir.join(PREVIOUS))?;
            match std::fs::rename(dir.join(JOURNAL), dir.join(PREVIOUS_JOURNAL)) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    remove_if_present(&dir.join(PREVIOUS_JOURNAL))?;
                }
                Err(e) => return Err(e),
            }
        }
        std::fs::rename(&tmp, &current)?;
        remove_if_present(&dir.join(JOURNAL))?;
        File::open(dir)?.sync_all()?;
        self.tip = Some(Tip {
            revision: snapshot.revision,
            checksum: snapshot.checksum(),
            base_bytes: body.len() as u64,
            entries: 0,
            bytes: 0,
        });
        Ok(())
    }

    /// The newest usable persisted generation (see the module documentation), logging a
    /// warning for everything that had to be skipped. Also prepares the next write: it extends
    /// the journal when the loaded generation is the current base's.
    pub fn load(&mut self) -> Option<PersistedSnapshot> {
        for (base_name, journal_name) in [(CURRENT, JOURNAL), (PREVIOUS, PREVIOUS_JOURNAL)] {
            let base_path = self.dir.join(base_name);
            let (base, base_bytes) = match read_base(&base_path) {
                Ok(Some(found)) => found,
                Ok(None) => continue,
                Err(e) => {
                    tracing::warn!(path = %base_path.display(), "persisted snapshot ignored: {e}; trying the previous generation");
                    continue;
                }
            };
            let journal_path = self.dir.join(journal_name);
            let (loaded, replayed) = replay(base, &journal_path);
            if base_name == CURRENT {
                self.tip = Some(Tip {
                    revision: loaded.snapshot.revision,
                    checksum: loaded.snapshot.checksum(),
                    base_bytes,
                    entries: replayed.entries,
                    bytes: replayed.bytes,
                });
                // Anything after the usable prefix must go before the journal is extended.
                if replayed.dropped
                    && let Err(e) = truncate(&journal_path, replayed.bytes)
                {
                    tracing::warn!(path = %journal_path.display(), "cannot cut the unusable end of the journal ({e}); the next change writes a new base");
                    self.tip = None;
                }
            } else {
                tracing::warn!(path = %self.dir.join(CURRENT).display(), "current persisted snapshot is unusable; serving the previous generation");
            }
            return Some(loaded);
        }
        None
    }
}

fn remove_if_present(path: &Path) -> std::io::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

fn truncate(path: &Path, len: u64) -> std::io::Result<()> {
    let file = OpenOptions::new().write(true).open(path)?;
    file.set_len(len)?;
    file.sync_all()
}

fn read_base(path: &Path) -> Result<Option<(PersistedSnapshot, u64)>, String> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e.to_string()),
    };
    let base: Base = serde_json::from_slice(&bytes).map_err(|e| format!("does not parse: {e}"))?;
    let actual = base.snapshot.checksum();
    if actual != base.checksum {
        return Err(format!(
            "checksum mismatch: file says {}, content is {}",
            base.checksum.short(),
            actual.short()
        ));
    }
    if base
        .seal
        .is_some_and(|s| s != seal(0, base.snapshot.revision, &actual, base.from_manager))
    {
        return Err("its revision or source does not match its seal".to_owned());
    }
    let persisted = PersistedSnapshot {
        snapshot: base.snapshot,
        from_manager: base.from_manager,
    };
    Ok(Some((persisted, bytes.len() as u64)))
}

/// How much of a journal was used.
struct Replayed {
    entries: usize,
    /// The bytes of the entries used: where the journal should end.
    bytes: u64,
    /// Whether anything after them was left out.
    dropped: bool,
}

/// Applies the longest usable prefix of the journal at `path` to `base`.
fn replay(base: PersistedSnapshot, path: &Path) -> (PersistedSnapshot, Replayed) {
    let mut replayed = Replayed {
        entries: 0,
        bytes: 0,
        dropped: false,
    };
    let file = match File::open(path) {
        Ok(file) => file,
        Err(e) => {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(path = %path.display(), "journal unreadable ({e}); serving its base, revision {}", base.snapshot.revision);
                replayed.dropped = true;
            }
            return (base, replayed);
        }
    };
    // Parse the lines that chain from the base; stop at the first that does not.
    let mut entries: Vec<(Entry, u64)> = Vec::new();
    let mut revision = base.snapshot.revision;
    let mut reader = BufReader::new(file);
    let mut line = Vec::new();
    loop {
        line.clear();
        match reader.read_until(b'\n', &mut line) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(path = %path.display(), "journal read failed after {} entries ({e})", entries.len());
                replayed.dropped = true;
                break;
            }
        }
        let problem = match serde_json::from_slice::<Entry>(&line) {
            _ if line.last() != Some(&b'\n') => Some("it is incomplete".to_owned()),
            Ok(entry) if entry.delta.from != revision => Some(format!(
                "it starts at revision {}, not {revision}",
                entry.delta.from
            )),
            Ok(entry) if !entry.sealed() => {
                Some("its revisions or source do not match its seal".to_owned())
            }
            Ok(entry) => {
                revision = entry.delta.to;
                entries.push((entry, line.len() as u64));
                None
            }
            Err(e) => Some(format!("it does not parse: {e}")),
        };
        if let Some(problem) = problem {
            // A journal from an older base is expected after a crash during compaction.
            if !(entries.is_empty() && problem.starts_with("it starts")) {
                tracing::warn!(path = %path.display(), "journal entry {} unusable ({problem}); serving the generation before it", entries.len() + 1);
            }
            replayed.dropped = true;
            break;
        }
    }
    if entries.is_empty() {
        return (base, replayed);
    }
    // Fast path: all the deltas folded into one, applied once, checked once.
    if let Some(snapshot) = fold(&base.snapshot, &entries)
        && entries
            .last()
            .is_some_and(|(last, _)| last.checksum == snapshot.checksum())
    {
        replayed.entries = entries.len();
        replayed.bytes = entries.iter().map(|(_, len)| len).sum();
        let from_manager = entries.last().is_some_and(|(e, _)| e.from_manager);
        return (
            PersistedSnapshot {
                snapshot,
                from_manager,
            },
            replayed,
        );
    }
    // Some entry is damaged: apply them one at a time and keep the last that checks out.
    let mut current = base;
    for (index, (entry, len)) in entries.iter().enumerate() {
        let next = current.snapshot.apply(&entry.delta);
        match next {
            Ok(snapshot) if snapshot.checksum() == entry.checksum => {
                current = PersistedSnapshot {
                    snapshot,
                    from_manager: entry.from_manager,
                };
                replayed.entries += 1;
                replayed.bytes += len;
            }
            _ => {
                tracing::warn!(path = %path.display(), "journal entry {} does not reproduce its checksum; serving revision {}", index + 1, current.snapshot.revision);
                replayed.dropped = true;
                break;
            }
        }
    }
    (current, replayed)
}

/// `base` with every entry's delta applied, computed as one delta.
fn fold(base: &Snapshot, entries: &[(Entry, u64)]) -> Option<Snapshot> {
    let mut changed: BTreeMap<ResourceKey, Option<&Resource>> = BTreeMap::new();
    for (entry, _) in entries {
        for resource in &entry.delta.upserts {
            changed.insert(resource.key(), Some(resource));
        }
        for key in &entry.delta.deletes {
            changed.insert(key.clone(), None);
        }
    }
    let mut delta = Delta {
        from: base.revision,
        to: entries.last()?.0.delta.to,
        ..Delta::default()
    };
    for (key, resource) in changed {
        match resource {
            Some(resource) => delta.upserts.push(resource.clone()),
            // Added and removed again within the journal: nothing to delete.
            None if base.get(&key).is_some() => delta.deletes.push(key),
            None => {}
        }
    }
    base.apply(&delta).ok()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn config(revision: u64, routes: &[(&str, &str)]) -> Snapshot {
        let yaml: Vec<String> = routes
            .iter()
            .map(|(name, body)| {
                format!(
                    "kind: Route\nname: {name}\nspec:\n  matches: [{{ path: {{ exact: /{name} }} }}]\n  direct_response: {{ status: 200, body: {body} }}\n"
                )
            })
            .collect();
        let resources = fleetgate_shared::parse_bundle(
            &yaml.join("---\n"),
            fleetgate_shared::bundle::Format::Yaml,
            "",
        )
        .unwrap();
        Snapshot::new(revision, resources).unwrap()
    }

    /// Revisions 1..=n of a config whose route `a` answers `v<revision>`, and whose route
    /// `r<revision>` exists from its revision on; each persisted in turn.
    fn history(store: &mut SnapshotStore, n: u64) -> Vec<Snapshot> {
        let mut out: Vec<Snapshot> = Vec::new();
        for revision in 1..=n {
            let mut routes = vec![("a".to_owned(), format!("v{revision}"))];
            routes.extend((1..=revision).map(|r| (format!("r{r}"), "x".to_owned())));
            let refs: Vec<(&str, &str)> = routes
                .iter()
                .map(|(a, b)| (a.as_str(), b.as_str()))
                .collect();
            let next = config(revision, &refs);
            store.write(out.last(), &next, true).unwrap();
            out.push(next);
        }
        out
    }

    fn journal_lines(dir: &Path) -> Vec<String> {
        std::fs::read_to_string(dir.join(JOURNAL))
            .unwrap()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    #[test]
    fn changes_are_appended_and_a_restart_replays_them() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = SnapshotStore::new(dir.path().into());
        let revisions = history(&mut store, 5);
        // One base, four small entries.
        assert_eq!(journal_lines(dir.path()).len(), 4);
        let loaded = SnapshotStore::new(dir.path().into()).load().unwrap();
        assert_eq!(loaded.snapshot, revisions[4]);
        assert_eq!(loaded.snapshot.checksum(), revisions[4].checksum());
        assert!(loaded.from_manager);
    }

    #[test]
    fn a_torn_last_entry_serves_the_generation_before_it_and_is_cut_off() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = SnapshotStore::new(dir.path().into());
        let revisions = history(&mut store, 4);
        let path = dir.path().join(JOURNAL);
        let len = std::fs::metadata(&path).unwrap().len();
        truncate(&path, len - 7).unwrap();

        let mut reopened = SnapshotStore::new(dir.path().into());
        let loaded = reopened.load().unwrap();
        assert_eq!(loaded.snapshot, revisions[2]);
        assert_eq!(
            journal_lines(dir.path()).len(),
            2,
            "the torn line was not cut off"
        );
        // The journal goes on from there.
        let mut next = revisions[3].clone();
        next.revision = 9;
        reopened.write(Some(&loaded.snapshot), &next, true).unwrap();
        assert_eq!(journal_lines(dir.path()).len(), 3);
        assert_eq!(
            SnapshotStore::new(dir.path().into())
                .load()
                .unwrap()
                .snapshot,
            next
        );
    }

    #[test]
    fn a_damaged_entry_that_still_parses_is_caught_by_its_checksum() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = SnapshotStore::new(dir.path().into());
        let revisions = history(&mut store, 5);
        let good = journal_lines(dir.path());
        let write = |lines: &[String]| {
            std::fs::write(dir.path().join(JOURNAL), lines.join("\n") + "\n").unwrap();
        };

        // Entry 3 (revision 3 -> 4) adds route r4 answering `y` instead of `x`; nothing later
        // overwrites r4, so the end state is wrong and the entries are checked one by one.
        let mut lines = good.clone();
        assert!(lines[2].contains("\"body\":\"x\""), "{}", lines[2]);
        lines[2] = lines[2].replace("\"body\":\"x\"", "\"body\":\"y\"");
        write(&lines);
        let loaded = SnapshotStore::new(dir.path().into()).load().unwrap();
        assert_eq!(loaded.snapshot, revisions[2]);

        // The last entry damaged: the generation before it.
        let mut lines = good.clone();
        lines[3] = lines[3].replace("\"v5\"", "\"w5\"");
        write(&lines);
        let loaded = SnapshotStore::new(dir.path().into()).load().unwrap();
        assert_eq!(loaded.snapshot, revisions[3]);

        // Damage that a later entry overwrites does not matter: the end state reproduces the
        // recorded checksum, so it is exactly what was acknowledged.
        let mut lines = good;
        lines[2] = lines[2].replace("\"v4\"", "\"w4\"");
        write(&lines);
        let loaded = SnapshotStore::new(dir.path().into()).load().unwrap();
        assert_eq!(loaded.snapshot, revisions[4]);
    }

    /// The content checksum does not cover revisions: a damaged revision number is caught by the
    /// seal, so right content is never served as the wrong revision. (Found by the random
    /// damage test below: a flipped digit turned an entry's `"to":3` into `"to":4`.)
    #[test]
    fn a_damaged_revision_number_is_caught_by_the_seal() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = SnapshotStore::new(dir.path().into());
        let revisions = history(&mut store, 5);
        let mut lines = journal_lines(dir.path());
        // Entry 2 leads from revision 2 to 3; the base is revision 1.
        assert!(lines[1].contains("\"to\":3"), "{}", lines[1]);
        lines[1] = lines[1].replace("\"to\":3", "\"to\":4");
        std::fs::write(dir.path().join(JOURNAL), lines.join("\n") + "\n").unwrap();
        let loaded = SnapshotStore::new(dir.path().into()).load().unwrap();
        assert_eq!(loaded.snapshot, revisions[1]);

        // The same damage to the base file's revision: the previous generation is served.
        let mut store = SnapshotStore::new(dir.path().into());
        let next = Snapshot::new(9, revisions[4].resources().cloned()).unwrap();
        store.write(None, &next, true).unwrap();
        let base = std::fs::read_to_string(dir.path().join(CURRENT)).unwrap();
        assert!(base.contains("\"revision\":9"), "{base}");
        std::fs::write(
            dir.path().join(CURRENT),
            base.replace("\"revision\":9", "\"revision\":8"),
        )
        .unwrap();
        let loaded = SnapshotStore::new(dir.path().into()).load().unwrap();
        assert_eq!(loaded.snapshot.revision, revisions[1].revision);
    }

    /// Whatever happens to the journal (bytes flipped, cut anywhere, garbage appended), loading
    /// never panics and serves one of the revisions that were written, never a mix.
    #[test]
    fn any_damage_to_the_journal_yields_a_written_revision() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = SnapshotStore::new(dir.path().into());
        let revisions = history(&mut store, 8);
        let path = dir.path().join(JOURNAL);
        let good = std::fs::read(&path).unwrap();
        // A failure prints its seed; FLEETGATE_TEST_SEED=<seed> replays it.
        let seed = std::env::var("FLEETGATE_TEST_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| fastrand::u64(..));
        let mut rng = fastrand::Rng::with_seed(seed);
        for round in 0..300 {
            let mut bytes = good.clone();
            match rng.u8(0..3) {
                0 => {
                    for _ in 0..rng.usize(1..4) {
                        let at = rng.usize(..bytes.len());
                        bytes[at] = rng.u8(..);
                    }
                }
                1 => bytes.truncate(rng.usize(..bytes.len())),
                _ => bytes.extend((0..rng.usize(1..64)).map(|_| rng.u8(..))),
            }
            std::fs::write(&path, &bytes).unwrap();
            let loaded = SnapshotStore::new(dir.path().into()).load().unwrap();
            assert!(
                revisions.contains(&loaded.snapshot),
                "seed {seed}, round {round}: loaded revision {} is not one that was written",
                loaded.snapshot.revision
            );
        }
    }

    #[test]
    fn a_corrupt_base_falls_back_to_the_previous_pair() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = SnapshotStore::new(dir.path().into());
        // Enough entries to force a compaction: the first pair becomes the previous one.
        let revisions = history(&mut store, MAX_ENTRIES as u64 + 3);
        assert!(dir.path().join(PREVIOUS).exists());
        let base: Base =
            serde_json::from_slice(&std::fs::read(dir.path().join(CURRENT)).unwrap()).unwrap();
        let compacted_at = base.snapshot.revision;
        assert!(compacted_at > 2 && compacted_at <= MAX_ENTRIES as u64 + 2);
        std::fs::write(dir.path().join(CURRENT), b"{ not a snapshot").unwrap();
        let loaded = SnapshotStore::new(dir.path().into()).load().unwrap();
        // The previous base plus its whole journal: the revision just before the compaction.
        assert_eq!(loaded.snapshot, revisions[compacted_at as usize - 2]);
    }

    #[test]
    fn a_journal_left_from_an_older_base_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = SnapshotStore::new(dir.path().into());
        let revisions = history(&mut store, 3);
        let old_journal = std::fs::read(dir.path().join(JOURNAL)).unwrap();
        // A new base is written, and the crash comes before the old journal was removed.
        let mut fresh = SnapshotStore::new(dir.path().into());
        let mut next = revisions[2].clone();
        next.revision = 10;
        fresh.write(None, &next, false).unwrap();
        std::fs::write(dir.path().join(JOURNAL), old_journal).unwrap();
        let loaded = SnapshotStore::new(dir.path().into()).load().unwrap();
        assert_eq!(loaded.snapshot, next);
        assert!(!loaded.from_manager);
    }

    #[test]
    fn a_change_that_does_not_follow_the_tip_writes_a_new_base() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = SnapshotStore::new(dir.path().into());
        let revisions = history(&mut store, 3);
        let unrelated = config(7, &[("z", "zz")]);
        // `previous` is not what the journal ends at.
        store.write(Some(&revisions[0]), &unrelated, true).unwrap();
        assert!(!dir.path().join(JOURNAL).exists());
        assert_eq!(
            SnapshotStore::new(dir.path().into())
                .load()
                .unwrap()
                .snapshot,
            unrelated
        );
    }
}
