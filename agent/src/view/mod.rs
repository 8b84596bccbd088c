//! The agent's S3 view of a backup (`depot-agent serve --s3-listen`): the whole backup on
//! every node, local files first, peers on demand.
//!
//! [`View`] is a [`depot_s3::storage::Storage`], served by the same S3 code as `depot serve`
//! (`depot_s3::s3::Depot`). Its bucket holds, under one prefix (`--s3-prefix`, by default the
//! root's directory name, so `local:///data/backup` becomes `s3://BUCKET/backup`):
//!
//! - what BR wrote through the view (checkpoints, locks, restore metadata): an archive of
//!   its own under `ROOT/.depot/view/writes/`, written as `depot serve` writes (fsync file and
//!   directories before the answer), read back first;
//! - the node's own files under the root;
//! - every data file the backup's manifest lists (v1, v2, encrypted: as `fetch` reads it). A
//!   file the node does not hold is fetched from the least busy live holder through the
//!   verified fetch path ([`crate::peer::PeerReader`]: failover, corrupt holders dropped,
//!   size and SHA-256 checked before the rename, fsync), into the cache
//!   ([`cache::Cache`], `ROOT/.depot/view/cache/`), then served from there. Concurrent reads
//!   of one file wait for one fetch. With `--archive`, a file no live node holds is read from
//!   the archive (checked the same way).
//!
//! **Serve after the check**, not stream while hashing: the bytes a client gets are always
//! verified ones, and the fetch path (resume at an offset on another holder, drop a corrupt
//! holder and refetch) stays the one already tested for `fetch`. The cost is latency to the
//! first byte of a file's first read (a whole SST, tens of MiB); TiKV downloads an SST whole
//! before ingesting it, so its time to the last byte is what matters, and that is the same.
//!
//! A key outside the manifest that no local file has (the backupmeta on a node that did not
//! write it, other meta files) is fetched from a peer checked by the holder's size only, and
//! logged as such: the manifest has no digest for it.

pub mod cache;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use depot_fs::Root;
use depot_s3::archive::Archive;
use depot_s3::error::{Error, Result};
use depot_s3::listing::merged::{list_sorted, merge};
use depot_s3::listing::{self, Listed, Page, Query};
use depot_s3::storage::{Opened, Storage as S3Storage, open_file};

use crate::manifest::{CrypterKey, FileEntry, ManifestSource};
use crate::peer::{FetchError, NoProgress, PeerReader, RetryPolicy};
use cache::{Cache, CacheUse};

/// How long a failed manifest load is remembered before the next request tries again.
const MANIFEST_RETRY: Duration = Duration::from_secs(5);

/// What a view needs besides the peers.
#[derive(Debug, Clone)]
pub struct ViewConfig {
    /// The one bucket (the coordinator's, so one URL works everywhere).
    pub bucket: String,
    /// Key prefix of the backup: empty, or ending in `/`.
    pub prefix: String,
    /// The node's backup directory.
    pub root: Root,
    /// Where fetched files are kept (default `ROOT/.depot/view/cache`).
    pub cache_dir: std::path::PathBuf,
    /// The cache's budget in bytes.
    pub cache_max: Option<u64>,
    /// Where BR's writes go (default `ROOT/.depot/view/writes`).
    pub writes_dir: std::path::PathBuf,
    /// Where the manifest is (`--s3-meta`); default: `ROOT/backupmeta`.
    pub meta: Option<ManifestSource>,
    /// Key of an encrypted backup.
    pub crypter: Option<CrypterKey>,
    /// Read files no live node holds from here (`--archive`).
    pub archive: Option<crate::storage::Storage>,
}

/// Counters of a view, for the stop summary and reports.
#[derive(Debug, Default)]
pub struct ViewStats {
    /// Reads answered from the node's own files (or BR's writes).
    pub local: AtomicU64,
    /// Reads answered from the cache.
    pub cached: AtomicU64,
    /// Files fetched from peers (or the archive).
    pub fetched: AtomicU64,
    /// Of those, files read from the archive (no live holder).
    pub from_archive: AtomicU64,
    /// Bytes fetched.
    pub fetched_bytes: AtomicU64,
    /// Reads of files no one could provide.
    pub missing: AtomicU64,
}

/// A snapshot of [`ViewStats`] and the cache.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct ViewReport {
    /// See [`ViewStats::local`].
    pub local: u64,
    /// See [`ViewStats::cached`].
    pub cached: u64,
    /// See [`ViewStats::fetched`].
    pub fetched: u64,
    /// See [`ViewStats::from_archive`].
    pub from_archive: u64,
    /// See [`ViewStats::fetched_bytes`].
    pub fetched_bytes: u64,
    /// See [`ViewStats::missing`].
    pub missing: u64,
    /// What the cache holds.
    pub cache: CacheUse,
}

/// The manifest's files, by name and as listed keys.
#[derive(Debug, Default)]
struct Files {
    by_name: HashMap<String, FileEntry>,
    listed: BTreeMap<String, Listed>,
}

#[derive(Debug, Default)]
struct ManifestSlot {
    files: Option<Arc<Files>>,
    failed_at: Option<Instant>,
}

/// The view; see the module docs.
pub struct View {
    config: ViewConfig,
    writes: Arc<Archive>,
    cache: Arc<Cache>,
    /// Fetches manifest files into the cache.
    reader: PeerReader,
    /// Fetches files outside the manifest: one round, so a key nobody has is a quick 404.
    probe: PeerReader,
    manifest: tokio::sync::Mutex<ManifestSlot>,
    /// One fetch per file at a time; later readers wait for it and find it cached.
    flights: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    stats: ViewStats,
}

impl std::fmt::Debug for View {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("View")
            .field("bucket", &self.config.bucket)
            .field("prefix", &self.config.prefix)
            .field("root", &self.config.root)
            .finish_non_exhaustive()
    }
}

impl View {
    /// A view over `config.root`, fetching from the peers `reader`'s directory lists (its
    /// root is replaced by the cache directory).
    ///
    /// # Errors
    /// The cache or write area cannot be created.
    pub fn new(config: ViewConfig, reader: &PeerReader) -> std::io::Result<Self> {
        let cache = Cache::open(&config.cache_dir, config.cache_max)?;
        depot_fs::create_dir_all_durably(&config.writes_dir)?;
        let writes_root = Root::open(&config.writes_dir).map_err(std::io::Error::other)?;
        let _ = writes_root.sweep_tmp();
        let writes = Arc::new(Archive::new(writes_root, depot_s3::archive::Layout::Single(config.bucket.clone())));
        let reader = reader.with_root(cache.root().clone());
        let probe = reader.clone().with_retry(RetryPolicy { rounds: 1, ..RetryPolicy::default() });
        Ok(Self {
            config,
            writes,
            cache,
            reader,
            probe,
            manifest: tokio::sync::Mutex::default(),
            flights: Mutex::default(),
            stats: ViewStats::default(),
        })
    }

    /// The archive BR's writes go to (the S3 layer's writable side).
    pub fn writes(&self) -> Arc<Archive> {
        Arc::clone(&self.writes)
    }

    /// Counters and cache use.
    pub fn report(&self) -> ViewReport {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        ViewReport {
            local: get(&self.stats.local),
            cached: get(&self.stats.cached),
            fetched: get(&self.stats.fetched),
            from_archive: get(&self.stats.from_archive),
            fetched_bytes: get(&self.stats.fetched_bytes),
            missing: get(&self.stats.missing),
            cache: self.cache.usage(),
        }
    }

    /// The manifest's files; loaded on first use, again after a failure (the backup may not
    /// exist yet when the agent starts).
    async fn files(&self) -> Arc<Files> {
        let mut slot = self.manifest.lock().await;
        if let Some(files) = &slot.files {
            return Arc::clone(files);
        }
        if slot.failed_at.is_some_and(|at| at.elapsed() < MANIFEST_RETRY) {
            return Arc::default();
        }
        let loaded = self.load_manifest().await;
        match loaded {
            Ok(manifest) => {
                let now = SystemTime::now();
                let mut files = Files::default();
                for entry in manifest.files {
                    let key = format!("{}{}", self.config.prefix, entry.name);
                    let etag = entry.sha256.map_or_else(|| format!("{:016x}", entry.size), |d| hex::encode(&d[..16]));
                    files.listed.insert(key.clone(), Listed { key, size: entry.size, etag, last_modified: now });
                    files.by_name.insert(entry.name.clone(), entry);
                }
                tracing::info!(source = manifest.source, files = files.by_name.len(), "the view serves this backup");
                let files = Arc::new(files);
                slot.files = Some(Arc::clone(&files));
                files
            }
            Err(err) => {
                tracing::warn!(%err, "the view has no backup manifest yet: it serves local files only; retrying on a later request");
                slot.failed_at = Some(Instant::now());
                Arc::default()
            }
        }
    }

    /// Reads the manifest: `--s3-meta`, else `ROOT/backupmeta`, else from the peers.
    async fn load_manifest(&self) -> std::result::Result<crate::manifest::Manifest, String> {
        let options = crate::storage::StoreOptions::default();
        let source = match &self.config.meta {
            Some(source) => source.clone(),
            None if self.config.root.dir().join(crate::manifest::BACKUPMETA).is_file() => {
                ManifestSource::parse(&self.config.root.dir().display().to_string(), &options)
                    .map_err(|e| e.to_string())?
            }
            None => return self.load_manifest_from_peers().await,
        };
        source.load(self.config.crypter.as_ref()).await.map_err(|e| e.to_string())
    }

    /// The node that ran BR holds the `backupmeta` (and, for v2, its index files): they are
    /// fetched into the cache and parsed there. The index files are checked against the
    /// digests the backupmeta records; the backupmeta itself only by its holder's size.
    async fn load_manifest_from_peers(&self) -> std::result::Result<crate::manifest::Manifest, String> {
        let cache_dir = self.cache.root().dir().to_path_buf();
        let store = crate::storage::Storage::open(&cache_dir.display().to_string(), &Default::default())
            .map_err(|e| e.to_string())?;
        let source = ManifestSource { store, key: None };
        // Each round fetches the one file the parser missed; a v2 backupmeta names a handful.
        for _ in 0..64 {
            let missing = match source.load(self.config.crypter.as_ref()).await {
                Ok(manifest) => return Ok(manifest),
                Err(crate::manifest::ManifestError::NotFound { .. }) => crate::manifest::BACKUPMETA.to_owned(),
                Err(crate::manifest::ManifestError::Read(crate::storage::StoreError::NotFound { location })) => {
                    match std::path::Path::new(&location).strip_prefix(&cache_dir).ok().and_then(|p| p.to_str()) {
                        Some(name) => name.to_owned(),
                        None => return Err(format!("{location} is missing")),
                    }
                }
                Err(err) => return Err(err.to_string()),
            };
            let entry = FileEntry { name: missing.clone(), size: u64::MAX, sha256: None };
            match self.probe.fetch(&entry).await {
                Ok(fetched) => {
                    tracing::info!(
                        name = missing,
                        from = fetched.node_id,
                        "fetched the backup's metadata for the view"
                    );
                    drop(self.cache.insert(&missing, fetched.size));
                }
                Err(err) => return Err(format!("no local backupmeta and none from the peers: {err}")),
            }
        }
        Err("the backupmeta's index names too many files".into())
    }

    fn check_bucket(&self, bucket: &str) -> Result<()> {
        if bucket == self.config.bucket {
            return Ok(());
        }
        Err(Error::NoSuchBucket {
            bucket: bucket.to_owned(),
            hint: format!("; this view has one bucket, {:?}", self.config.bucket),
        })
    }

    /// `name` from the cache, pinned and opened, if it is there with `size` bytes.
    fn open_cached(&self, name: &str, key: &str, size: u64) -> Option<Opened> {
        let pin = self.cache.get(name, size)?;
        let path = self.cache.path(name).ok()?;
        match open_file(&path, key) {
            Ok((file, fs_meta)) if fs_meta.len() == size => {
                Some(Opened { file, fs_meta, path, pin: Some(Box::new(pin)) })
            }
            _ => {
                drop(pin);
                self.cache.forget(name);
                None
            }
        }
    }

    /// Fetches `entry` into the cache (one fetch per file at a time) and opens it.
    async fn fetch(&self, entry: &FileEntry, key: &str, verified: bool) -> Result<Opened> {
        let flight = {
            let mut flights = self.flights.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            Arc::clone(flights.entry(entry.name.clone()).or_default())
        };
        let guard = flight.lock().await;
        let result = self.fetch_alone(entry, key, verified).await;
        drop(guard);
        let mut flights = self.flights.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if Arc::strong_count(&flight) <= 2 {
            flights.remove(&entry.name);
        }
        result
    }

    async fn fetch_alone(&self, entry: &FileEntry, key: &str, verified: bool) -> Result<Opened> {
        if entry.size != u64::MAX
            && let Some(opened) = self.open_cached(&entry.name, key, entry.size)
        {
            // Another reader fetched it while this one waited.
            self.stats.cached.fetch_add(1, Ordering::Relaxed);
            return Ok(opened);
        }
        let reader = if verified { &self.reader } else { &self.probe };
        let fetched = match reader.fetch(entry).await {
            Ok(fetched) => Ok((fetched, false)),
            Err(err) => match (&self.config.archive, verified) {
                (Some(archive), true) if !matches!(err, FetchError::UnsafeName(_)) => {
                    tracing::info!(name = entry.name, %err, "no live node gave it; reading the archive");
                    crate::archive::fetch(archive, self.cache.root(), entry, &NoProgress)
                        .await
                        .map(|fetched| (fetched, true))
                        .map_err(|archive_err| (err, Some(archive_err.to_string())))
                }
                _ => Err((err, None)),
            },
        };
        match fetched {
            Ok((fetched, from_archive)) => {
                self.stats.fetched.fetch_add(1, Ordering::Relaxed);
                if from_archive {
                    self.stats.from_archive.fetch_add(1, Ordering::Relaxed);
                }
                self.stats.fetched_bytes.fetch_add(fetched.size, Ordering::Relaxed);
                if verified {
                    tracing::info!(
                        name = entry.name,
                        from = fetched.node_id,
                        size = fetched.size,
                        "fetched for the view, verified"
                    );
                } else {
                    tracing::warn!(
                        name = entry.name,
                        from = fetched.node_id,
                        size = fetched.size,
                        "served a file the manifest does not list: checked by the holder's size only"
                    );
                }
                let pin = self.cache.insert(&entry.name, fetched.size);
                let path = self.cache.path(&entry.name)?;
                let (file, fs_meta) = open_file(&path, key)?;
                Ok(Opened { file, fs_meta, path, pin: Some(Box::new(pin)) })
            }
            Err((err, archive)) => {
                let archive = archive.map(|a| format!("; archive: {a}")).unwrap_or_default();
                if !verified || err.is_missing() || matches!(err, FetchError::Corrupt { .. }) {
                    self.stats.missing.fetch_add(1, Ordering::Relaxed);
                    if verified {
                        tracing::warn!(key, %err, archive, "no live node (and no archive) can provide a file of the backup");
                    } else {
                        tracing::debug!(key, %err, "not found locally or on any peer");
                    }
                    return Err(Error::NoSuchKey { key: key.to_owned() });
                }
                tracing::warn!(key, %err, archive, "cannot read a file of the backup now");
                Err(Error::Unavailable { key: key.to_owned(), reason: err.to_string() })
            }
        }
    }

    /// How the view's keys map onto a query of names without the prefix.
    fn unprefixed(&self, query: &Query) -> Option<Query> {
        let prefix = self.config.prefix.as_str();
        let after = match query.after.strip_prefix(prefix) {
            Some(rest) => rest.to_owned(),
            None if query.after.as_str() < prefix => String::new(),
            None => return None, // the marker is past every key of the view
        };
        if let Some(rest) = query.prefix.strip_prefix(prefix) {
            return Some(Query { prefix: rest.to_owned(), after, ..query.clone() });
        }
        // The query's prefix is shorter than the view's: keys only roll up by a delimiter
        // inside the name (one within the view's prefix is handled by the caller).
        prefix.starts_with(query.prefix.as_str()).then(|| Query { prefix: String::new(), after, ..query.clone() })
    }

    /// The node's own files under the prefix.
    async fn list_local(&self, query: &Query) -> Result<Page> {
        let prefix = self.config.prefix.clone();
        // A delimiter inside the view's prefix rolls every key into one common prefix.
        if let Some(delimiter) = query.delimiter.as_deref()
            && let Some(rest) = prefix.strip_prefix(query.prefix.as_str())
            && let Some(at) = rest.find(delimiter)
        {
            let common = format!("{}{}", query.prefix, &rest[..at + delimiter.len()]);
            let any = listing::list(&self.config.root, &Query { max_keys: 1, ..Query::default() });
            let mut page = Page::default();
            if common.as_str() > query.after.as_str() && !any.objects.is_empty() && query.max_keys > 0 {
                page.prefixes.push(common.clone());
                page.last = Some(common);
            }
            return Ok(page);
        }
        let Some(inner) = self.unprefixed(query) else { return Ok(Page::default()) };
        let root = self.config.root.clone();
        let mut page = tokio::task::spawn_blocking(move || listing::list(&root, &inner))
            .await
            .map_err(|e| Error::io("<listing task>")(std::io::Error::other(e)))?;
        for object in &mut page.objects {
            object.key.insert_str(0, &prefix);
        }
        for common in &mut page.prefixes {
            common.insert_str(0, &prefix);
        }
        if let Some(last) = &mut page.last {
            last.insert_str(0, &prefix);
        }
        Ok(page)
    }
}

#[async_trait::async_trait]
impl S3Storage for View {
    async fn open(&self, bucket: &str, key: &str) -> Result<Opened> {
        self.check_bucket(bucket)?;
        match self.writes.open(bucket, key).await {
            Err(Error::NoSuchKey { .. }) => {}
            other => return other,
        }
        let missing = || Error::NoSuchKey { key: key.to_owned() };
        let name = key.strip_prefix(self.config.prefix.as_str()).ok_or_else(missing)?;
        if name.is_empty() || name.ends_with('/') {
            return Err(missing());
        }
        let path = self.config.root.resolve(name)?;
        let files = self.files().await;
        let entry = files.by_name.get(name);
        if let Ok((file, fs_meta)) = open_file(&path, key) {
            // A local copy of another size is damaged or another backup's: fetch the right one.
            if entry.is_none_or(|e| e.size == fs_meta.len()) {
                self.stats.local.fetch_add(1, Ordering::Relaxed);
                return Ok(Opened { file, fs_meta, path, pin: None });
            }
        }
        match entry {
            Some(entry) => {
                if let Some(opened) = self.open_cached(name, key, entry.size) {
                    self.stats.cached.fetch_add(1, Ordering::Relaxed);
                    return Ok(opened);
                }
                self.fetch(entry, key, true).await
            }
            None => {
                // Outside the manifest: a meta file (backupmeta, ...) another node holds.
                let any = FileEntry { name: name.to_owned(), size: u64::MAX, sha256: None };
                if let Ok(cached) = self.cache.path(name)
                    && let Ok(meta) = std::fs::metadata(&cached)
                    && let Some(opened) = self.open_cached(name, key, meta.len())
                {
                    self.stats.cached.fetch_add(1, Ordering::Relaxed);
                    return Ok(opened);
                }
                self.fetch(&any, key, false).await
            }
        }
    }

    async fn list(&self, bucket: &str, query: Query) -> Result<Page> {
        self.check_bucket(bucket)?;
        let writes = self.writes.list(bucket, query.clone()).await?;
        let local = self.list_local(&query).await?;
        let files = self.files().await;
        let manifest = list_sorted(&files.listed, &query);
        Ok(merge(vec![writes, local, manifest], query.max_keys))
    }
}
