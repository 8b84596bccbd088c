//! Checkpoints: what makes a long `fetch` resumable, after BR's checkpoint restore.
//!
//! Layout, in the checkpoint storage (a local directory, by default `ROOT/.depot/checkpoints/`,
//! or an `s3://` URL; see [`Settings`]):
//!
//! ```text
//! fetch-<task>/checkpoint.meta     the job's identity: manifest sha256, backup end version, node
//! fetch-<task>/checkpoint.lock     a lease that keeps two fetches of the task apart (lock.rs)
//! fetch-<task>/data/<uuid>.cpt     immutable batches of verified files, each with its own sha256
//! ```
//!
//! While a fetch runs, every file it verifies and installs is recorded; records are batched
//! and written as a new `.cpt` object every interval (30 s by default), and the lease is
//! refreshed well within its duration. A re-run with the same identity trusts recorded files
//! whose size and mtime still match, without hashing them again; a record that fails its
//! digest is skipped with a warning and its files are checked as usual. A different identity
//! is an error that says what differs and how to start over (`--fresh`). Success removes the
//! checkpoint; an error or an interruption writes what was done first.
//!
//! The bytes of a transfer that was interrupted live beside the root, not in the checkpoint
//! storage: `ROOT/.depot/resume/fetch-<task>/` (see [`Checkpoint::partial_path`]).

pub mod lock;
pub mod record;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub use self::lock::{Holder, Lease, LockError};
pub use self::record::Recorded;
use crate::fetch::{FileRecord, Recorder};
use crate::storage::{Storage, StoreError};

/// The identity file's key.
const META: &str = "checkpoint.meta";
/// Where record batches go.
const DATA: &str = "data/";

/// Where and how checkpoints are kept.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The checkpoint storage: holds `fetch-<task>/`.
    pub store: Storage,
    /// The task name (`fetch-<task>`): stable for a node and root, so a re-run finds it.
    pub task: String,
    /// How often recorded files are written out.
    pub interval: Duration,
    /// How long the lock's lease lasts; it is refreshed every third of it.
    pub lease: Duration,
    /// Discard an existing checkpoint of the task (and its partial transfers) first.
    pub fresh: bool,
    /// Where interrupted transfers keep their bytes (`ROOT/.depot/resume/fetch-<task>/`).
    pub partial_dir: PathBuf,
}

/// What a checkpoint belongs to. Resuming with another identity is refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    /// SHA-256 (hex) of the manifest as stored.
    pub manifest_sha256: String,
    /// The backup's end version (BR's backup ts), when the manifest has one.
    pub backup_end_version: Option<u64>,
    /// The fetching node.
    pub node_id: String,
}

/// `checkpoint.meta`.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Meta {
    version: u32,
    task: String,
    #[serde(flatten)]
    identity: Identity,
    created: String,
}

/// Why checkpointing cannot start or go on.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CheckpointError {
    /// The lock is held, or was lost.
    #[error(transparent)]
    Lock(#[from] LockError),
    /// The existing checkpoint belongs to another job.
    #[error(
        "the checkpoint {location} belongs to a different job: {}; to start over, run again with --fresh (the old checkpoint and partial transfers are discarded)",
        differences.join("; ")
    )]
    Mismatch {
        /// The checkpoint's `checkpoint.meta`.
        location: String,
        /// What differs, e.g. `manifest sha256: checkpoint ab12…, now cd34…`.
        differences: Vec<String>,
    },
    /// `checkpoint.meta` is unreadable.
    #[error("{location} is not a readable checkpoint identity ({reason}); run again with --fresh to start over")]
    BadMeta {
        /// The object.
        location: String,
        /// What is wrong.
        reason: String,
    },
    /// The storage failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The partial-transfer directory could not be cleared.
    #[error("cannot clear {}: {source}", path.display())]
    Partials {
        /// The directory.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
}

/// A running checkpoint: the lease, what earlier runs recorded, what this run records.
#[derive(Debug)]
pub struct Checkpoint {
    /// `fetch-<task>/` in the storage.
    dir: Storage,
    settings: Settings,
    /// Held while the checkpoint is in use; `None` once released.
    lease: tokio::sync::Mutex<Option<Lease>>,
    /// Files earlier runs recorded, by name.
    trusted: HashMap<String, Recorded>,
    /// `.cpt` objects that failed their digest (their files are checked again).
    skipped: Vec<String>,
    /// Records not yet written, and every name recorded (to record each once).
    pending: Mutex<(Vec<Recorded>, HashSet<String>)>,
    /// Held while a record is being written, by a task that outlives a dropped `keep_up`
    /// (local writes run on a blocking thread that cannot be cancelled): `complete` waits
    /// for it, so no record lands after the checkpoint was removed.
    writing: Arc<tokio::sync::Mutex<()>>,
}

impl Checkpoint {
    /// Takes the task's lock, checks or writes its identity, and loads what earlier runs
    /// recorded.
    ///
    /// # Errors
    /// [`CheckpointError`]: the lock is held, the identity differs, the storage fails.
    pub async fn open(settings: Settings, identity: Identity) -> Result<Self, CheckpointError> {
        let dir = settings.store.at(&format!("fetch-{}", settings.task));
        let lease = Lease::acquire(&dir, Holder::current(&identity.node_id), settings.lease, SystemTime::now()).await?;
        match Self::load(&dir, &settings, &identity).await {
            Ok((trusted, skipped)) => {
                let names = trusted.keys().cloned().collect();
                Ok(Self {
                    dir,
                    settings,
                    lease: tokio::sync::Mutex::new(Some(lease)),
                    trusted,
                    skipped,
                    pending: Mutex::new((Vec::new(), names)),
                    writing: Arc::default(),
                })
            }
            Err(err) => {
                if let Err(release) = lease.release().await {
                    tracing::warn!(%release, "cannot release the checkpoint lock");
                }
                Err(err)
            }
        }
    }

    async fn load(
        dir: &Storage,
        settings: &Settings,
        identity: &Identity,
    ) -> Result<(HashMap<String, Recorded>, Vec<String>), CheckpointError> {
        if settings.fresh {
            remove_records(dir).await?;
            dir.delete(META).await?;
            clear_dir(&settings.partial_dir)?;
        }
        match dir.get(META).await {
            Err(StoreError::NotFound { .. }) => {
                // A new job: whatever partial transfers exist belong to no checkpoint.
                clear_dir(&settings.partial_dir)?;
                let meta = Meta {
                    version: 1,
                    task: settings.task.clone(),
                    identity: identity.clone(),
                    created: humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
                };
                dir.put(META, serde_json::to_vec_pretty(&meta).expect("meta serializes")).await?;
                return Ok((HashMap::new(), Vec::new()));
            }
            Err(err) => return Err(err.into()),
            Ok(data) => {
                let location = dir.describe(META);
                let meta: Meta = serde_json::from_slice(&data)
                    .map_err(|e| CheckpointError::BadMeta { location: location.clone(), reason: e.to_string() })?;
                let differences = differences(&meta.identity, identity);
                if !differences.is_empty() {
                    return Err(CheckpointError::Mismatch { location, differences });
                }
            }
        }
        let mut trusted = HashMap::new();
        let mut skipped = Vec::new();
        for object in dir.list(DATA).await? {
            let data = dir.get(&object.key).await?;
            match record::decode(&data) {
                Ok(records) => trusted.extend(records.into_iter().map(|r| (r.name.clone(), r))),
                Err(err) => {
                    tracing::warn!(record = dir.describe(&object.key), %err, "skipping a damaged checkpoint record; its files are checked again");
                    skipped.push(dir.describe(&object.key));
                }
            }
        }
        Ok((trusted, skipped))
    }

    /// Where the checkpoint lives (for messages).
    #[must_use]
    pub fn location(&self) -> String {
        self.dir.describe("")
    }

    /// Files earlier runs recorded, by name.
    #[must_use]
    pub fn trusted(&self) -> &HashMap<String, Recorded> {
        &self.trusted
    }

    /// Damaged records that were skipped.
    #[must_use]
    pub fn skipped(&self) -> &[String] {
        &self.skipped
    }

    /// Where the bytes of an interrupted transfer of `name` are kept between runs.
    #[must_use]
    pub fn partial_path(&self, name: &str) -> PathBuf {
        self.settings.partial_dir.join(format!("{}.part", hex::encode(Sha256::digest(name.as_bytes()))))
    }

    /// The partial transfers an earlier run left (their paths), listed once so a fetch only
    /// opens those and creates the others lazily.
    #[must_use]
    pub fn existing_partials(&self) -> HashSet<PathBuf> {
        std::fs::read_dir(&self.settings.partial_dir)
            .map(|dir| dir.flatten().map(|e| e.path()).collect())
            .unwrap_or_default()
    }

    /// Records a verified, installed file (once per name).
    pub fn record(&self, record: Recorded) {
        let mut pending = self.pending.lock().expect("checkpoint lock");
        if pending.1.insert(record.name.clone()) {
            pending.0.push(record);
        }
    }

    /// Writes the records gathered since the last flush as a new `.cpt`. Returns how many.
    ///
    /// # Errors
    /// [`CheckpointError::Store`]; the records stay pending for the next flush.
    pub async fn flush(&self) -> Result<usize, CheckpointError> {
        let writing = self.writing.clone().lock_owned().await;
        let batch = std::mem::take(&mut self.pending.lock().expect("checkpoint lock").0);
        if batch.is_empty() {
            return Ok(0);
        }
        let key = format!("{DATA}{}.cpt", uuid::Uuid::new_v4());
        let (dir, put_key, data) = (self.dir.clone(), key.clone(), record::encode(&batch));
        let put = tokio::spawn(async move {
            let _writing = writing;
            dir.put(&put_key, data).await
        });
        let written = put.await.unwrap_or_else(|join| {
            Err(StoreError::Io { path: key.clone().into(), source: std::io::Error::other(join) })
        });
        if let Err(err) = written {
            self.pending.lock().expect("checkpoint lock").0.extend(batch);
            return Err(err.into());
        }
        tracing::debug!(records = batch.len(), key, "checkpoint flushed");
        Ok(batch.len())
    }

    /// Extends the lease.
    ///
    /// # Errors
    /// [`LockError::Lost`] when another fetch took the lock over.
    pub async fn refresh(&self) -> Result<(), CheckpointError> {
        if let Some(lease) = self.lease.lock().await.as_mut() {
            lease.refresh(SystemTime::now()).await?;
        }
        Ok(())
    }

    /// Runs alongside the job (the caller drops it when the job ends): flushes every interval and refreshes the
    /// lease every third of its duration. Returns only on a lost lease.
    ///
    /// # Errors
    /// [`LockError::Lost`]; storage errors are logged and retried at the next tick.
    pub async fn keep_up(&self) -> Result<(), CheckpointError> {
        let every = |period: Duration| {
            let period = period.max(Duration::from_millis(10));
            let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            ticks
        };
        let mut flush = every(self.settings.interval);
        let mut refresh = every(self.settings.lease / 3);
        loop {
            tokio::select! {
                _ = refresh.tick() => match self.refresh().await {
                    Ok(()) => {}
                    Err(CheckpointError::Lock(lost @ LockError::Lost { .. })) => return Err(lost.into()),
                    Err(err) => tracing::warn!(%err, "cannot refresh the checkpoint lease; trying again"),
                },
                _ = flush.tick() => {
                    if let Err(err) = self.flush().await {
                        tracing::warn!(%err, "cannot write a checkpoint record; trying again");
                    }
                }
            }
        }
    }

    /// The job succeeded: removes the checkpoint (records, identity, partials, and last the
    /// lock).
    ///
    /// # Errors
    /// What failed; the caller reports it (a leftover checkpoint is harmless but should be
    /// known: the next run with this task would resume from it).
    pub async fn complete(&self) -> Result<(), CheckpointError> {
        let _writing = self.writing.lock().await;
        self.pending.lock().expect("checkpoint lock").0.clear();
        remove_records(&self.dir).await?;
        self.dir.delete(META).await?;
        clear_dir(&self.settings.partial_dir)?;
        if let Some(lease) = self.lease.lock().await.take() {
            lease.release().await?;
        }
        self.dir.remove_empty()?;
        Ok(())
    }

    /// The job stopped early (errors, interruption): writes what was done and releases the
    /// lock, so the next run resumes at once.
    ///
    /// # Errors
    /// What failed.
    pub async fn suspend(&self) -> Result<(), CheckpointError> {
        self.flush().await?;
        if let Some(lease) = self.lease.lock().await.take() {
            lease.release().await?;
        }
        Ok(())
    }
}

impl Recorder for Checkpoint {
    fn installed(&self, record: &FileRecord) {
        self.record(Recorded {
            name: record.name.clone(),
            size: record.size,
            sha256: record.sha256.map(hex::encode),
            mtime_ns: record.mtime.and_then(unix_nanos).unwrap_or(0),
        });
    }
}

/// Whether a file whose metadata is `meta` is still what `recorded` describes (same size and
/// mtime), so it need not be hashed again.
#[must_use]
pub fn unchanged(meta: &std::fs::Metadata, recorded: &Recorded) -> bool {
    meta.is_file()
        && meta.len() == recorded.size
        && meta.modified().ok().and_then(unix_nanos) == Some(recorded.mtime_ns)
}

/// Nanoseconds since the epoch, the unit of [`Recorded::mtime_ns`].
fn unix_nanos(t: SystemTime) -> Option<i128> {
    t.duration_since(SystemTime::UNIX_EPOCH).ok().and_then(|d| i128::try_from(d.as_nanos()).ok())
}

fn differences(was: &Identity, now: &Identity) -> Vec<String> {
    let mut out = Vec::new();
    if was.manifest_sha256 != now.manifest_sha256 {
        out.push(format!("manifest sha256: checkpoint {}, now {}", was.manifest_sha256, now.manifest_sha256));
    }
    if was.backup_end_version != now.backup_end_version {
        let show = |v: Option<u64>| v.map_or_else(|| "none".to_owned(), |v| v.to_string());
        out.push(format!(
            "backup end version: checkpoint {}, now {}",
            show(was.backup_end_version),
            show(now.backup_end_version)
        ));
    }
    if was.node_id != now.node_id {
        out.push(format!("node id: checkpoint {}, now {}", was.node_id, now.node_id));
    }
    out
}

async fn remove_records(dir: &Storage) -> Result<(), StoreError> {
    for object in dir.list(DATA).await? {
        dir.delete(&object.key).await?;
    }
    Ok(())
}

fn clear_dir(path: &Path) -> Result<(), CheckpointError> {
    match std::fs::remove_dir_all(path) {
        Err(err) if err.kind() != std::io::ErrorKind::NotFound => {
            Err(CheckpointError::Partials { path: path.to_path_buf(), source: err })
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(dir: &Path, interval: Duration) -> Settings {
        Settings {
            store: Storage::open(dir.join("checkpoints").to_str().unwrap(), &Default::default()).unwrap(),
            task: "t".into(),
            interval,
            lease: Duration::from_secs(60),
            fresh: false,
            partial_dir: dir.join("resume"),
        }
    }

    fn identity(manifest: &str) -> Identity {
        Identity { manifest_sha256: manifest.into(), backup_end_version: Some(42), node_id: "n1".into() }
    }

    fn recorded(name: &str) -> Recorded {
        Recorded { name: name.into(), size: 1, sha256: None, mtime_ns: 7 }
    }

    #[tokio::test]
    async fn records_are_written_every_interval_and_resumed_by_the_next_run() {
        let dir = tempfile::tempdir().unwrap();
        let cp = Checkpoint::open(settings(dir.path(), Duration::from_millis(50)), identity("m1")).await.unwrap();
        cp.record(recorded("a"));
        cp.record(recorded("a"));
        // keep_up runs until the job ends; here, a little over two intervals.
        let _ = tokio::time::timeout(Duration::from_millis(130), cp.keep_up()).await;
        let data = dir.path().join("checkpoints/fetch-t/data");
        assert_eq!(std::fs::read_dir(&data).unwrap().count(), 1, "one record written, once");
        cp.record(recorded("b"));
        cp.suspend().await.unwrap();
        assert_eq!(std::fs::read_dir(&data).unwrap().count(), 2);
        assert!(!dir.path().join("checkpoints/fetch-t/checkpoint.lock").exists(), "released");

        let again = Checkpoint::open(settings(dir.path(), Duration::from_secs(30)), identity("m1")).await.unwrap();
        let mut names: Vec<&String> = again.trusted().keys().collect();
        names.sort();
        assert_eq!(names, ["a", "b"]);
        // A record write cut by `kill -9` leaves its temp file behind.
        let tmp = dir.path().join("checkpoints/fetch-t/.depot/tmp");
        std::fs::create_dir_all(&tmp).unwrap();
        std::fs::write(tmp.join("killed-mid-write"), b"half a record").unwrap();
        again.complete().await.unwrap();
        assert!(!dir.path().join("checkpoints").join("fetch-t").exists(), "success removes everything");
    }

    #[tokio::test]
    async fn another_identity_is_refused_and_fresh_starts_over() {
        let dir = tempfile::tempdir().unwrap();
        let cp = Checkpoint::open(settings(dir.path(), Duration::from_secs(30)), identity("m1")).await.unwrap();
        cp.record(recorded("a"));
        cp.suspend().await.unwrap();
        std::fs::create_dir_all(dir.path().join("resume")).unwrap();
        std::fs::write(dir.path().join("resume/x.part"), b"partial").unwrap();

        let err = Checkpoint::open(settings(dir.path(), Duration::from_secs(30)), identity("m2")).await.unwrap_err();
        let message = err.to_string();
        assert!(message.contains("manifest sha256: checkpoint m1, now m2") && message.contains("--fresh"), "{message}");
        assert!(dir.path().join("resume/x.part").exists(), "nothing discarded by a refusal");

        let fresh = Settings { fresh: true, ..settings(dir.path(), Duration::from_secs(30)) };
        let cp = Checkpoint::open(fresh, identity("m2")).await.unwrap();
        assert!(cp.trusted().is_empty());
        assert!(!dir.path().join("resume").exists(), "partial transfers discarded");
    }

    #[tokio::test]
    async fn a_damaged_record_is_skipped_not_trusted() {
        let dir = tempfile::tempdir().unwrap();
        let cp = Checkpoint::open(settings(dir.path(), Duration::from_secs(30)), identity("m1")).await.unwrap();
        cp.record(recorded("a"));
        cp.flush().await.unwrap();
        cp.record(recorded("b"));
        cp.suspend().await.unwrap();
        let data = dir.path().join("checkpoints/fetch-t/data");
        let victim = std::fs::read_dir(&data)
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| std::fs::read_to_string(p).unwrap().contains("\"b\""))
            .unwrap();
        let mut bytes = std::fs::read(&victim).unwrap();
        let last = bytes.len() - 2;
        bytes[last] ^= 1;
        std::fs::write(&victim, bytes).unwrap();

        let again = Checkpoint::open(settings(dir.path(), Duration::from_secs(30)), identity("m1")).await.unwrap();
        assert_eq!(again.trusted().keys().collect::<Vec<_>>(), ["a"]);
        assert_eq!(again.skipped().len(), 1);
        assert!(again.skipped()[0].ends_with(".cpt"));
    }
}
