//! Directory entries made durable: shared, grouped and remembered.
//!
//! A new name (a file renamed into a directory, a `mkdir`, an `unlink`, an `rmdir`) survives
//! a power cut only once its directory has been fsynced. Three things here keep that cheap
//! and correct when many requests run at once:
//!
//! - **Group commit** ([`sync_dir`]): concurrent fsyncs of one directory share one call. A
//!   request's fsync is covered only by a call that *started after* the request (its change
//!   happened before it asked), so a late-comer waits for the next call rather than riding on
//!   one already running. `DEPOT_GROUP_COMMIT=off` turns grouping off (for A/B benchmarks).
//! - **A record of directories known durable** ([`ensure_dir`]): a directory's own entry in
//!   its parent must be durable before anything renamed into it is. Whoever finds a directory
//!   not in the record — the request that created it, *or a late-comer that found it already
//!   there* — fsyncs its parent (grouped) and then records it, keyed by path and inode. So no
//!   request answers before the directories it wrote into are durable, whichever request made
//!   them, and a directory costs one parent fsync per process, not one per request.
//! - **Forgetting on removal** ([`forget`]): a directory Depot removes leaves the record first,
//!   and every removal bumps an epoch; a record made by someone who started before a removal
//!   is dropped. A directory removed and re-made with the same inode number is therefore never
//!   mistaken for the old, durable one.
//!
//! Directories removed or created by other programs are not seen: the record is a cache of
//! what this process made durable, consulted only for directories under a Depot root.

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, LazyLock, Mutex, MutexGuard};

use crate::durable::CommitError;
use crate::release::{self, Held, hold_if_large};

/// Beyond this many remembered directories the record starts over (costing fsyncs, never
/// correctness).
const MAX_REMEMBERED: usize = 100_000;

/// Whether concurrent fsyncs of one directory are grouped (`DEPOT_GROUP_COMMIT=off` says no).
fn grouping() -> bool {
    static ON: LazyLock<bool> =
        LazyLock::new(|| !matches!(std::env::var("DEPOT_GROUP_COMMIT").as_deref(), Ok("off" | "0" | "false" | "no")));
    *ON
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding these locks leaves plain counters behind: still usable.
    mutex.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// One directory's group commit.
#[derive(Default)]
struct Group {
    state: Mutex<GroupState>,
    done: Condvar,
}

#[derive(Default)]
struct GroupState {
    /// Tickets handed out (one per request).
    requested: u64,
    /// Every ticket up to this one is covered by a finished fsync.
    covered: u64,
    running: bool,
    /// The last finished fsync's error, if it failed.
    error: Option<(io::ErrorKind, String)>,
}

static GROUPS: LazyLock<Mutex<HashMap<PathBuf, Arc<Group>>>> = LazyLock::new(Default::default);

/// Fsyncs a directory, making the entries created, renamed or removed in it durable.
///
/// Concurrent callers for one directory share fsyncs (see the module docs); each returns
/// only after an fsync that started after it was called has finished.
///
/// # Errors
/// The I/O error opening or syncing it.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    if !grouping() {
        return File::open(dir)?.sync_all();
    }
    let group = Arc::clone(lock(&GROUPS).entry(dir.to_path_buf()).or_default());
    let result = group.sync(dir);
    let mut groups = lock(&GROUPS);
    // Only the map and this caller hold it: nobody waits, so it can go.
    if Arc::strong_count(&group) == 2 {
        groups.remove(dir);
    }
    result
}

impl Group {
    fn sync(&self, dir: &Path) -> io::Result<()> {
        let mut state = lock(&self.state);
        state.requested += 1;
        let ticket = state.requested;
        loop {
            if state.covered >= ticket {
                return match &state.error {
                    None => Ok(()),
                    Some((kind, message)) => Err(io::Error::new(*kind, message.clone())),
                };
            }
            if state.running {
                state = self.done.wait(state).unwrap_or_else(std::sync::PoisonError::into_inner);
                continue;
            }
            // Everyone who asked so far made their change before this fsync starts.
            state.running = true;
            let target = state.requested;
            drop(state);
            let result = File::open(dir).and_then(|f| f.sync_all());
            state = lock(&self.state);
            state.running = false;
            state.covered = target;
            state.error = result.err().map(|e| (e.kind(), e.to_string()));
            self.done.notify_all();
        }
    }
}

/// Directories known durable (their entry in their parent, and so on up to the root).
#[derive(Default)]
struct Record {
    /// Bumped by every removal; a record started before one is not kept.
    epoch: u64,
    /// Path → (device, inode) when it was made durable.
    dirs: HashMap<PathBuf, (u64, u64)>,
}

static RECORD: LazyLock<Mutex<Record>> = LazyLock::new(Default::default);

fn identity(meta: &std::fs::Metadata) -> (u64, u64) {
    (meta.dev(), meta.ino())
}

/// Forgets `dir` (and, with `below`, every directory under it) before Depot removes it.
pub(crate) fn forget(dir: &Path, below: bool) {
    let mut record = lock(&RECORD);
    record.epoch += 1;
    record.dirs.remove(dir);
    if below {
        record.dirs.retain(|path, _| !path.starts_with(dir));
    }
}

/// Makes sure `dir` exists and is durable: its entry in its parent, and each ancestor's, up
/// to `stop` (a root taken as durable; `None`: up to `/`). Creates what is missing.
///
/// # Errors
/// [`CommitError::Conflict`] when a file is in the way; I/O errors (`NotFound` when a
/// concurrent delete pruned a directory on the way: the caller may retry).
pub(crate) fn ensure_dir(dir: &Path, stop: Option<&Path>) -> Result<(), CommitError> {
    if Some(dir) == stop {
        return Ok(());
    }
    let epoch = lock(&RECORD).epoch;
    let existing = match std::fs::metadata(dir) {
        Ok(meta) if meta.is_dir() => {
            if lock(&RECORD).dirs.get(dir) == Some(&identity(&meta)) {
                return Ok(());
            }
            true
        }
        Ok(_) => {
            return Err(CommitError::Conflict {
                path: dir.to_path_buf(),
                what: "a file, so nothing can be stored under it (a name cannot be both a file and a prefix)",
            });
        }
        Err(err) if matches!(err.kind(), io::ErrorKind::NotFound | io::ErrorKind::NotADirectory) => false,
        Err(err) => return Err(CommitError::io(dir)(err)),
    };
    let Some(parent) = dir.parent() else {
        return Ok(()); // `/`
    };
    ensure_dir(parent, stop)?;
    if !existing {
        match std::fs::create_dir(dir) {
            Ok(()) => {}
            Err(err) if err.kind() == io::ErrorKind::AlreadyExists => match std::fs::metadata(dir) {
                // A concurrent writer made it first: it is a late-comer's directory now too.
                Ok(meta) if meta.is_dir() => {}
                Ok(_) => {
                    return Err(CommitError::Conflict {
                        path: dir.to_path_buf(),
                        what: "a file, so nothing can be stored under it (a name cannot be both a file and a prefix)",
                    });
                }
                // Made and pruned again (left empty) by concurrent requests in between: a
                // `NotFound` the caller retries on, not a conflict.
                Err(err) => return Err(CommitError::io(dir)(err)),
            },
            Err(err) => return Err(CommitError::io(dir)(err)),
        }
    }
    let meta = std::fs::metadata(dir).map_err(CommitError::io(dir))?;
    // Whoever made `dir`, its entry is durable once an fsync of the parent that started
    // after we saw it has finished.
    sync_dir(parent).map_err(CommitError::io(parent))?;
    let mut record = lock(&RECORD);
    if record.epoch == epoch {
        if record.dirs.len() >= MAX_REMEMBERED {
            record.dirs.clear();
        }
        record.dirs.insert(dir.to_path_buf(), identity(&meta));
    }
    Ok(())
}

/// Creates `dir` and its missing ancestors, each durable (see [`ensure_dir`], up to `/`).
///
/// # Errors
/// The I/O error, or a file in the way.
pub fn create_dir_all_durably(dir: &Path) -> io::Result<()> {
    // Walking up a relative path would end at "" rather than at `/`.
    let dir = std::path::absolute(dir)?;
    ensure_dir(&dir, None).map_err(|err| match err {
        CommitError::Io { source, .. } => source,
        conflict => io::Error::new(io::ErrorKind::AlreadyExists, conflict.to_string()),
    })
}

/// Removes a file and makes the removal durable (fsyncs its directory). A missing file is
/// not an error.
///
/// # Errors
/// The I/O error removing it or syncing its directory.
pub fn remove_file_durably(path: &Path) -> io::Result<()> {
    match std::fs::remove_file(path) {
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(()),
        result => result?,
    }
    match path.parent() {
        Some(parent) => sync_dir(parent),
        None => Ok(()),
    }
}

/// Removes a directory and everything in it, and makes the removal durable (fsyncs its
/// parent): once this returns, it cannot come back after a power cut. A missing directory is
/// not an error.
///
/// # Errors
/// The I/O error removing it or syncing its parent.
pub fn remove_dir_durably(dir: &Path) -> io::Result<()> {
    forget(dir, true);
    // Its large files (an upload's assembly or parts) are freed after the removal is durable,
    // not inside it (see `crate::release`): held until this returns. No more than the release
    // thread takes at once: an upload of 10,000 large parts must not hold 10,000 descriptors.
    let _held: Vec<Held> = match std::fs::read_dir(dir) {
        Ok(entries) => {
            entries.flatten().filter_map(|entry| hold_if_large(&entry.path())).take(release::QUEUE).collect()
        }
        Err(_) => Vec::new(), // missing, or not readable: `remove_dir_all` says which
    };
    match std::fs::remove_dir_all(dir) {
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(()),
        result => result?,
    }
    match dir.parent() {
        Some(parent) => sync_dir(parent),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn concurrent_syncs_of_one_directory_share_calls_and_all_return() {
        let dir = tempfile::tempdir().unwrap();
        let threads: Vec<_> = (0..16)
            .map(|_| {
                let dir = dir.path().to_path_buf();
                std::thread::spawn(move || {
                    for _ in 0..20 {
                        sync_dir(&dir).unwrap();
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        assert!(!lock(&GROUPS).contains_key(dir.path()), "an idle group is dropped");
        let missing = dir.path().join("missing");
        assert_eq!(sync_dir(&missing).unwrap_err().kind(), io::ErrorKind::NotFound);
    }

    #[test]
    fn a_directory_with_large_files_is_removed_whole() {
        let dir = tempfile::tempdir().unwrap();
        let upload = dir.path().join("upload");
        std::fs::create_dir(&upload).unwrap();
        let big = std::fs::File::create(upload.join("assembly")).unwrap();
        big.set_len(crate::release::DEFER_FROM_BYTES * 2).unwrap();
        std::fs::write(upload.join("parts.log"), b"{}").unwrap();
        remove_dir_durably(&upload).unwrap();
        assert!(!upload.exists());
        remove_dir_durably(&upload).unwrap(); // missing: not an error
    }

    #[test]
    fn a_directory_is_remembered_once_durable_and_forgotten_when_removed() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("a/b");
        ensure_dir(&dir, Some(root.path())).unwrap();
        assert!(dir.is_dir());
        let meta = std::fs::metadata(&dir).unwrap();
        assert_eq!(lock(&RECORD).dirs.get(&dir), Some(&identity(&meta)));
        assert!(lock(&RECORD).dirs.contains_key(&root.path().join("a")));
        assert!(!lock(&RECORD).dirs.contains_key(root.path()), "the root is taken as durable");

        remove_dir_durably(&root.path().join("a")).unwrap();
        assert!(!lock(&RECORD).dirs.contains_key(&dir), "removal forgets everything below");
        // A directory made by someone else (not in the record) is made durable by whoever
        // finds it.
        std::fs::create_dir_all(&dir).unwrap();
        ensure_dir(&dir, Some(root.path())).unwrap();
        assert!(lock(&RECORD).dirs.contains_key(&dir));
    }

    #[test]
    fn a_file_in_the_way_is_a_conflict() {
        let root = tempfile::tempdir().unwrap();
        std::fs::write(root.path().join("f"), b"x").unwrap();
        let err = ensure_dir(&root.path().join("f/g/h"), Some(root.path())).unwrap_err();
        assert!(matches!(&err, CommitError::Conflict { path, .. } if path.ends_with("f")), "{err}");
    }
}

#[cfg(test)]
mod relative_path_tests {
    #[test]
    fn a_relative_directory_is_created() {
        let base = tempfile::tempdir().unwrap();
        let cwd = std::env::current_dir().unwrap();
        let rel = pathdiff(base.path(), &cwd);
        let dir = rel.join("a/b");
        super::create_dir_all_durably(&dir).unwrap();
        assert!(base.path().join("a/b").is_dir());
    }

    /// `target` relative to `from` (both absolute), with `..` as needed.
    fn pathdiff(target: &std::path::Path, from: &std::path::Path) -> std::path::PathBuf {
        let ups = from.components().count() - 1;
        let mut out: std::path::PathBuf = (0..ups).map(|_| "..").collect();
        out.push(target.strip_prefix("/").unwrap());
        out
    }
}
