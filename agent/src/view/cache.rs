//! The view's cache of files fetched from peers: a directory, bounded by `--cache-max`,
//! least recently used first out, a file being read never evicted, kept across restarts.
//!
//! Files land here only through the verified fetch path (temp file, size and SHA-256 checked,
//! fsync, rename, directory fsync), so a file present at start is one that was verified; its
//! size is checked again against the manifest before each use.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};

use depot_fs::Root;

/// The cache directory and its use order.
#[derive(Debug)]
pub struct Cache {
    root: Root,
    max: Option<u64>,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    entries: HashMap<String, Entry>,
    total: u64,
    /// Bumped at every use: the use order.
    tick: u64,
    evicted: u64,
}

#[derive(Debug)]
struct Entry {
    size: u64,
    used: u64,
    /// Readers holding a [`Pin`].
    pins: usize,
}

/// What the cache holds, for reports.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct CacheUse {
    /// Files.
    pub files: usize,
    /// Bytes.
    pub bytes: u64,
    /// Files evicted since start.
    pub evicted: u64,
    /// The budget (`--cache-max`); `None`: unbounded.
    pub max: Option<u64>,
}

/// Keeps one cached file from eviction while it is read.
#[derive(Debug)]
pub struct Pin {
    cache: Arc<Cache>,
    name: String,
}

impl Drop for Pin {
    fn drop(&mut self) {
        let mut state = self.cache.lock();
        if let Some(entry) = state.entries.get_mut(&self.name) {
            entry.pins = entry.pins.saturating_sub(1);
        }
        self.cache.evict(&mut state);
    }
}

impl Cache {
    /// Opens (creating it) the cache at `dir`, registering the files a previous run left, in
    /// the order of their modification times (the best use order a restart has).
    ///
    /// # Errors
    /// The directory cannot be created or opened.
    pub fn open(dir: &std::path::Path, max: Option<u64>) -> std::io::Result<Arc<Self>> {
        depot_fs::create_dir_all_durably(dir)?;
        let root = Root::open(dir).map_err(std::io::Error::other)?;
        let _ = root.sweep_tmp();
        let mut found = Vec::new();
        let walk = walkdir::WalkDir::new(root.dir())
            .min_depth(1)
            .into_iter()
            .filter_entry(|e| !(e.depth() == 1 && e.file_name() == depot_fs::STATE_DIR));
        for entry in walk.filter_map(Result::ok) {
            let Ok(meta) = entry.metadata() else { continue };
            if !meta.is_file() {
                continue;
            }
            let Ok(rel) = entry.path().strip_prefix(root.dir()) else { continue };
            let Some(name) = rel.to_str() else { continue };
            found.push((meta.modified().ok(), name.to_owned(), meta.len()));
        }
        found.sort();
        let mut state = State::default();
        for (_, name, size) in found {
            state.tick += 1;
            state.total += size;
            state.entries.insert(name, Entry { size, used: state.tick, pins: 0 });
        }
        let cache = Arc::new(Self { root, max, state: Mutex::new(state) });
        {
            let mut state = cache.lock();
            cache.evict(&mut state);
        }
        Ok(cache)
    }

    /// The directory files are fetched into.
    pub fn root(&self) -> &Root {
        &self.root
    }

    /// Where `name` is in the cache.
    ///
    /// # Errors
    /// An unsafe name.
    pub fn path(&self, name: &str) -> Result<PathBuf, depot_fs::UnsafeName> {
        self.root.resolve(name)
    }

    /// `name` if cached with `size` bytes, pinned and marked used.
    pub fn get(self: &Arc<Self>, name: &str, size: u64) -> Option<Pin> {
        let mut state = self.lock();
        state.tick += 1;
        let tick = state.tick;
        let entry = state.entries.get_mut(name)?;
        if entry.size != size {
            return None;
        }
        entry.used = tick;
        entry.pins += 1;
        Some(Pin { cache: Arc::clone(self), name: name.to_owned() })
    }

    /// Registers `name` (`size` bytes), just installed, pinned for its first reader; older
    /// files go if the cache is over its budget.
    pub fn insert(self: &Arc<Self>, name: &str, size: u64) -> Pin {
        let mut state = self.lock();
        state.tick += 1;
        let tick = state.tick;
        let old = state.entries.insert(name.to_owned(), Entry { size, used: tick, pins: 1 });
        let pins = old.as_ref().map_or(0, |o| o.pins);
        state.total = state.total - old.map_or(0, |o| o.size) + size;
        if let Some(entry) = state.entries.get_mut(name) {
            entry.pins += pins;
        }
        self.evict(&mut state);
        Pin { cache: Arc::clone(self), name: name.to_owned() }
    }

    /// Forgets `name` (its file is gone or wrong).
    pub fn forget(&self, name: &str) {
        let mut state = self.lock();
        if let Some(entry) = state.entries.remove(name) {
            state.total -= entry.size;
        }
    }

    /// What the cache holds.
    pub fn usage(&self) -> CacheUse {
        let state = self.lock();
        CacheUse { files: state.entries.len(), bytes: state.total, evicted: state.evicted, max: self.max }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Removes least recently used, unpinned files until the cache fits its budget.
    fn evict(&self, state: &mut State) {
        let Some(max) = self.max else { return };
        while state.total > max {
            let victim = state
                .entries
                .iter()
                .filter(|(_, e)| e.pins == 0)
                .min_by_key(|(_, e)| e.used)
                .map(|(name, e)| (name.clone(), e.size));
            let Some((name, size)) = victim else { return }; // all in use: over budget until read
            state.entries.remove(&name);
            state.total -= size;
            state.evicted += 1;
            if let Ok(path) = self.root.resolve(&name) {
                match std::fs::remove_file(&path) {
                    Ok(()) => tracing::info!(name, size, "evicted from the view's cache (least recently used)"),
                    Err(err) => tracing::warn!(name, %err, "cannot evict from the view's cache"),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(cache: &Arc<Cache>, name: &str, size: usize) -> Pin {
        std::fs::write(cache.path(name).unwrap(), vec![7u8; size]).unwrap();
        cache.insert(name, size as u64)
    }

    #[test]
    fn least_recently_used_goes_first_and_pinned_files_stay() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(dir.path(), Some(250)).unwrap();
        drop(put(&cache, "a", 100));
        drop(put(&cache, "b", 100));
        drop(cache.get("a", 100).unwrap()); // a is now more recent than b
        let c = put(&cache, "c", 100); // over budget: b goes
        assert!(cache.get("b", 100).is_none());
        assert!(!dir.path().join("b").exists());
        assert!(cache.get("a", 100).is_some());
        // Everything pinned: over budget until a reader lets go.
        let a = cache.get("a", 100).unwrap();
        let d = put(&cache, "d", 100);
        assert_eq!(cache.usage().files, 3);
        drop((a, c));
        assert!(cache.usage().bytes <= 250, "{:?}", cache.usage());
        assert!(dir.path().join("d").exists());
        drop(d);
        assert!(cache.get("x", 1).is_none());
        assert!(cache.get("d", 99).is_none(), "another size is not a hit");
    }

    #[test]
    fn a_restart_keeps_what_fits() {
        let dir = tempfile::tempdir().unwrap();
        {
            let cache = Cache::open(dir.path(), None).unwrap();
            std::fs::create_dir_all(dir.path().join("x")).unwrap();
            drop(put(&cache, "x/1", 10));
            drop(put(&cache, "2", 10));
        }
        let cache = Cache::open(dir.path(), Some(100)).unwrap();
        assert!(cache.get("x/1", 10).is_some());
        assert!(cache.get("2", 10).is_some());
        assert_eq!(cache.usage(), CacheUse { files: 2, bytes: 20, evicted: 0, max: Some(100) });
        drop(cache);
        let cache = Cache::open(dir.path(), Some(10)).unwrap();
        assert_eq!(cache.usage().files, 1);
    }
}
