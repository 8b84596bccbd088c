//! A directory's names, sorted once and reused while the directory is unchanged.
//!
//! A listing page of a large directory used to read and sort the whole directory, so listing
//! it page by page was quadratic. A [`Snapshot`] holds the directory's UTF-8 names in S3
//! order (a directory's name with `/` appended) in one string plus 8 bytes of index per name,
//! and the process keeps the most recently used ones up to [`CACHE_BYTES`], keyed by the
//! directory's device and inode. Every use first `stat`s the directory: a snapshot is used
//! only while the directory's mtime and ctime are the ones it was read under, so a key created
//! or deleted since (by Depot or by hand) shows in the next listing.
//!
//! Directory timestamps come from a coarse kernel clock: two changes within one tick can leave
//! the same mtime. A snapshot is therefore cached only when the directory was last changed at
//! least [`SETTLED`] before it was read; a directory changing right now is read afresh each
//! time (and costs what it did before the cache).

use std::collections::HashMap;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, SystemTime};

/// What the cache may hold in names and index, all directories together.
pub const CACHE_BYTES: usize = 128 * 1024 * 1024;
/// How long a directory must have been unchanged for its snapshot to be cached.
const SETTLED: Duration = Duration::from_millis(100);

/// What an entry is (as `readdir` says, without following symlinks).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A regular file (or anything else that is not a directory or symlink).
    File,
    /// A directory; its name carries a trailing `/`.
    Dir,
    /// A symbolic link.
    Symlink,
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    start: u32,
    len: u16,
    kind: Kind,
}

/// One directory's names in S3 order.
#[derive(Debug, Default)]
pub struct Snapshot {
    names: String,
    entries: Vec<Entry>,
}

impl Snapshot {
    /// Reads and sorts `dir`. Names that are not UTF-8 cannot be keys and are left out.
    ///
    /// # Errors
    /// The I/O error reading the directory.
    pub fn read(dir: &Path) -> io::Result<Self> {
        let mut snapshot = Self::default();
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            let Some(name) = entry.file_name().to_str().map(str::to_owned) else { continue };
            let kind = match entry.file_type() {
                Ok(t) if t.is_dir() => Kind::Dir,
                Ok(t) if t.is_symlink() => Kind::Symlink,
                Ok(_) => Kind::File,
                Err(_) => continue, // gone since readdir
            };
            let start = u32::try_from(snapshot.names.len()).map_err(|_| io::Error::other("directory too large"))?;
            snapshot.names.push_str(&name);
            if kind == Kind::Dir {
                snapshot.names.push('/');
            }
            let len = u16::try_from(snapshot.names.len() - start as usize).map_err(io::Error::other)?;
            snapshot.entries.push(Entry { start, len, kind });
        }
        let names = &snapshot.names;
        let text = |e: &Entry| &names[e.start as usize..e.start as usize + e.len as usize];
        snapshot.entries.sort_unstable_by(|a, b| text(a).cmp(text(b)));
        snapshot.names.shrink_to_fit();
        snapshot.entries.shrink_to_fit();
        Ok(snapshot)
    }

    /// How many names.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the directory had no (UTF-8) names.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The `i`-th name (a directory's with `/`) and its kind.
    pub fn get(&self, i: usize) -> (&str, Kind) {
        let e = self.entries[i];
        (&self.names[e.start as usize..e.start as usize + e.len as usize], e.kind)
    }

    /// The index of the first name not below `name`.
    pub fn partition_point(&self, name: &str) -> usize {
        self.entries.partition_point(|e| self.text(e) < name)
    }

    /// The index of the first name after every name starting with `prefix`.
    pub fn end_of_prefix(&self, prefix: &str) -> usize {
        self.entries.partition_point(|e| {
            let text = self.text(e);
            text < prefix || text.starts_with(prefix)
        })
    }

    fn text(&self, e: &Entry) -> &str {
        &self.names[e.start as usize..e.start as usize + e.len as usize]
    }

    /// Memory held: the names and the index.
    pub fn bytes(&self) -> usize {
        self.names.capacity() + self.entries.capacity() * std::mem::size_of::<Entry>()
    }
}

/// What identifies a directory's contents: device, inode, mtime and ctime (ns).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Stamp {
    dev: u64,
    ino: u64,
    mtime: i128,
    ctime: i128,
}

impl Stamp {
    fn of(meta: &std::fs::Metadata) -> Self {
        let ns = |s: i64, n: i64| i128::from(s) * 1_000_000_000 + i128::from(n);
        Self {
            dev: meta.dev(),
            ino: meta.ino(),
            mtime: ns(meta.mtime(), meta.mtime_nsec()),
            ctime: ns(meta.ctime(), meta.ctime_nsec()),
        }
    }

    /// Whether the directory was last changed at least [`SETTLED`] before `now`.
    fn settled(&self, now: SystemTime) -> bool {
        let now = now.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as i128);
        self.mtime.max(self.ctime) + SETTLED.as_nanos() as i128 <= now
    }
}

struct Cached {
    stamp: Stamp,
    snapshot: Arc<Snapshot>,
    used: u64,
}

#[derive(Default)]
struct Cache {
    by_dir: HashMap<(u64, u64), Cached>,
    bytes: usize,
    clock: u64,
}

static CACHE: LazyLock<Mutex<Cache>> = LazyLock::new(Mutex::default);

fn cache() -> std::sync::MutexGuard<'static, Cache> {
    CACHE.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The snapshot of `dir` as it is now: the cached one if the directory has not changed since
/// it was read, else a fresh one (cached when the directory has settled).
///
/// # Errors
/// The I/O error reading the directory.
pub fn of(dir: &Path) -> io::Result<Arc<Snapshot>> {
    let stamp = Stamp::of(&std::fs::metadata(dir)?);
    {
        let mut cache = cache();
        cache.clock += 1;
        let clock = cache.clock;
        if let Some(cached) = cache.by_dir.get_mut(&(stamp.dev, stamp.ino))
            && cached.stamp == stamp
        {
            cached.used = clock;
            return Ok(Arc::clone(&cached.snapshot));
        }
    }
    let now = SystemTime::now();
    let snapshot = Arc::new(Snapshot::read(dir)?);
    let size = snapshot.bytes();
    if !stamp.settled(now) || size > CACHE_BYTES {
        return Ok(snapshot);
    }
    let mut cache = cache();
    let clock = cache.clock;
    let cached = Cached { stamp, snapshot: Arc::clone(&snapshot), used: clock };
    if let Some(old) = cache.by_dir.insert((stamp.dev, stamp.ino), cached) {
        cache.bytes -= old.snapshot.bytes();
    }
    cache.bytes += size;
    while cache.bytes > CACHE_BYTES {
        let Some((&oldest, _)) = cache.by_dir.iter().min_by_key(|(_, c)| c.used) else { break };
        let evicted = cache.by_dir.remove(&oldest).expect("present");
        cache.bytes -= evicted.snapshot.bytes();
    }
    Ok(snapshot)
}

/// Bytes the cache holds now (for tests and the benchmark's state figure).
pub fn cached_bytes() -> usize {
    cache().bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_in_s3_order_with_directories_as_name_slash() {
        let dir = tempfile::tempdir().unwrap();
        for f in ["a.txt", "a0", "b", "é"] {
            std::fs::write(dir.path().join(f), b"").unwrap();
        }
        std::fs::create_dir(dir.path().join("a")).unwrap();
        let snapshot = Snapshot::read(dir.path()).unwrap();
        let names: Vec<&str> = (0..snapshot.len()).map(|i| snapshot.get(i).0).collect();
        assert_eq!(names, ["a.txt", "a/", "a0", "b", "é"]);
        assert_eq!(snapshot.get(1).1, Kind::Dir);
        assert_eq!(snapshot.partition_point("a/"), 1);
        assert_eq!(snapshot.partition_point("a00"), 3);
        assert_eq!(snapshot.end_of_prefix("a"), 3);
        assert_eq!(snapshot.end_of_prefix("b0"), 4);
    }

    #[test]
    fn a_changed_directory_is_read_again_and_a_settled_one_is_cached() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("one"), b"").unwrap();
        assert_eq!(of(dir.path()).unwrap().len(), 1);
        // Changes in quick succession are all seen (the directory never settles).
        for i in 0..50 {
            std::fs::write(dir.path().join(format!("k{i:02}")), b"").unwrap();
            assert_eq!(of(dir.path()).unwrap().len(), i + 2);
        }
        std::thread::sleep(SETTLED + Duration::from_millis(20));
        let first = of(dir.path()).unwrap();
        assert!(Arc::ptr_eq(&first, &of(dir.path()).unwrap()), "cached once settled");
        std::fs::remove_file(dir.path().join("k00")).unwrap();
        let after = of(dir.path()).unwrap();
        assert_eq!(after.len(), 50);
        assert!(!Arc::ptr_eq(&first, &after));
    }
}
