//! `fetch`: make every data file of a backup present in this node's root, byte-exact.
//!
//! 1. The manifest's files (or the `--files-from` subset) are checked locally: a file with the
//!    right size and SHA-256 is left alone, anything else is needed.
//! 2. Needed files are fetched from peers through the [`PeerReader`], `concurrency` at a time.
//! 3. The [`FetchSummary`] says what was present, fetched, missing (no live node has it) and
//!    failed (for another reason), with bytes, per-peer counts and throughput.
//!
//! Each file verified and in place is reported to a [`Recorder`] — the hook checkpoints use to
//! make a long fetch resumable. With a [`Checkpoint`] of an earlier run (`resume`), files it
//! recorded are trusted while their size and mtime match (no hashing), and transfers continue
//! from the bytes an interrupted run left.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use depot_fs::Root;
use futures::StreamExt;
use serde::Serialize;

use crate::checkpoint::{self, Checkpoint, Recorded};
use crate::digest::Sha256Digest;
use crate::manifest::{FileEntry, Manifest};
use crate::peer::{FetchError, Fetched, Origin, Partial, PeerReader, Progress};
use crate::registry::RegistryError;

/// A file verified and installed, as told to a [`Recorder`].
#[derive(Debug, Clone)]
pub struct FileRecord {
    /// Name relative to the root.
    pub name: String,
    /// Size in bytes.
    pub size: u64,
    /// Digest (the manifest's, now verified), when the manifest has one.
    pub sha256: Option<Sha256Digest>,
    /// Modification time of the installed file.
    pub mtime: Option<SystemTime>,
    /// Where it came from.
    pub origin: Origin,
}

/// Told about every file once it is verified and in place: already present (`Origin::Local`)
/// or fetched (`Origin::Peer`). Called from fetch tasks, so it must be cheap or hand work off.
pub trait Recorder: Send + Sync {
    /// `record` is verified and installed.
    fn installed(&self, record: &FileRecord);
    /// `name` could not be made present: held by no live node (`missing`), or another failure.
    fn failed(&self, _name: &str, _missing: bool) {}
}

/// A [`Recorder`] that records nothing.
#[derive(Debug, Default)]
pub struct NoRecorder;

impl Recorder for NoRecorder {
    fn installed(&self, _: &FileRecord) {}
}

/// What the job needs besides the manifest.
pub struct FetchJob {
    /// Where files go.
    pub root: Root,
    /// Reads from peers; `None` without a coordinator (then needed files fail).
    pub reader: Option<PeerReader>,
    /// Files fetched at once.
    pub concurrency: usize,
    /// Told about each installed file.
    pub recorder: Arc<dyn Recorder>,
    /// Shows progress (hashing and transfer).
    pub progress: Arc<dyn JobProgress>,
    /// An earlier run's checkpoint to resume from: its recorded files are trusted without
    /// hashing, and its partial transfers continue.
    pub resume: Option<Arc<Checkpoint>>,
    /// Where files no live node holds are read from (`--archive`), verified the same way.
    pub archive: Option<crate::storage::Storage>,
}

/// A progress display for the two phases of a fetch.
pub trait JobProgress: Progress {
    /// Checking local files: `bytes` to hash in total.
    fn start_check(&self, files: usize, bytes: u64);
    /// Transferring: `bytes` needed in total.
    fn start_transfer(&self, files: usize, bytes: u64);
    /// A message worth showing above the bar (a file that failed).
    fn println(&self, line: &str);
    /// All done: remove the bar.
    fn finish(&self);
}

/// Why the job could not run at all (per-file failures are in the summary instead).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FetchJobError {
    /// `--files-from` names files the manifest does not list.
    #[error("{count} name(s) in the file list are not in the manifest {manifest}, e.g. {examples}")]
    UnknownNames {
        /// How many.
        count: usize,
        /// Some of them.
        examples: String,
        /// The manifest.
        manifest: String,
    },
    /// Files are missing locally and there is no coordinator to find peers.
    #[error(
        "{count} file(s) are not in {root} (e.g. {example}); pass --coordinator and --join-token so they can be fetched from peers"
    )]
    NoCoordinator {
        /// How many.
        count: usize,
        /// One of them.
        example: String,
        /// The root.
        root: String,
    },
    /// The coordinator refused us or is not a coordinator.
    #[error(transparent)]
    Registry(#[from] RegistryError),
}

/// A file that could not be fetched.
#[derive(Debug, Clone, Serialize)]
pub struct FailedFile {
    /// The file.
    pub name: String,
    /// Why.
    pub error: String,
    /// Whether a later run may succeed.
    pub retryable: bool,
}

/// Files and bytes from one peer.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PeerShare {
    /// Files fetched from it.
    pub files: u64,
    /// Bytes of those files.
    pub bytes: u64,
}

/// What a fetch did. Serialized as the `--json` output.
#[derive(Debug, Clone, Default, Serialize)]
pub struct FetchSummary {
    /// Where the manifest came from.
    pub manifest: String,
    /// Files the job had to make present (the manifest's, or the `--files-from` subset).
    pub files_needed: usize,
    /// Files already present and correct (hashed, or trusted from a checkpoint).
    pub files_present: usize,
    /// Of those, files trusted from the checkpoint of an interrupted run without re-hashing.
    pub files_resumed: usize,
    /// Files fetched from peers.
    pub files_fetched: usize,
    /// Fetched files that replaced a local file with wrong content.
    pub files_replaced: usize,
    /// Files neither present nor fetched (`missing` plus `failed`).
    pub files_failed: usize,
    /// Names no live node holds.
    pub missing: Vec<String>,
    /// Files that failed for another reason.
    pub failed: Vec<FailedFile>,
    /// Total size of the needed files.
    pub bytes_needed: u64,
    /// Bytes already present.
    pub bytes_present: u64,
    /// Size of the files fetched.
    pub bytes_fetched: u64,
    /// Bytes received over the network (more than `bytes_fetched` when transfers restarted).
    pub bytes_received: u64,
    /// Bytes of partial transfers an interrupted run left, not transferred again.
    pub bytes_resumed: u64,
    /// Node id -> files fetched from it.
    pub per_peer: BTreeMap<String, u64>,
    /// Node id -> files and bytes fetched from it.
    pub per_peer_detail: BTreeMap<String, PeerShare>,
    /// Wall time of the whole job.
    pub seconds: f64,
    /// Wall time of the transfer phase.
    pub transfer_seconds: f64,
    /// What became of the checkpoint (absent with `--no-checkpoint`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub checkpoint: Option<CheckpointReport>,
}

/// The checkpoint's part of a [`FetchSummary`].
#[derive(Debug, Clone, Default, Serialize)]
pub struct CheckpointReport {
    /// Where it lives.
    pub location: String,
    /// Damaged records that were skipped (their files were checked again).
    pub skipped_records: Vec<String>,
    /// Whether it was removed (after success).
    pub removed: bool,
    /// Why removing or writing it failed, if it did: a leftover checkpoint makes the next run
    /// with this task resume from it.
    pub error: Option<String>,
}

impl FetchSummary {
    /// Whether every needed file is present and verified.
    #[must_use]
    pub fn complete(&self) -> bool {
        self.files_failed == 0
    }
}

impl FetchJob {
    /// Runs the job over `manifest`, restricted to `only` when given.
    ///
    /// # Errors
    /// [`FetchJobError`] when it cannot run at all; per-file failures are in the summary.
    pub async fn run(&self, manifest: &Manifest, only: Option<&[String]>) -> Result<FetchSummary, FetchJobError> {
        let started = Instant::now();
        let files = select(manifest, only)?;
        let mut summary = FetchSummary {
            manifest: manifest.source.clone(),
            files_needed: files.len(),
            bytes_needed: files.iter().map(|f| f.size).sum(),
            ..FetchSummary::default()
        };

        // 1. What is already here?
        let check_bytes: u64 = files.iter().map(|f| f.size).sum();
        self.progress.start_check(files.len(), check_bytes);
        let checks = futures::stream::iter(files.iter().cloned())
            .map(|entry| {
                let root = self.root.clone();
                let recorded = self.resume.as_ref().and_then(|c| c.trusted().get(&entry.name).cloned());
                async move {
                    let checked =
                        tokio::task::spawn_blocking(move || check_local(&root, &entry, recorded.as_ref())).await;
                    checked.unwrap_or_else(|err| Local::Unusable(format!("check task failed: {err}")))
                }
            })
            .buffered(self.concurrency.clamp(1, 4));
        let mut needed: Vec<(FileEntry, bool)> = Vec::new();
        let mut checks = std::pin::pin!(checks);
        let mut index = 0;
        while let Some(local) = checks.next().await {
            let entry = &files[index];
            index += 1;
            self.progress.advance(entry.size);
            match local {
                Local::Present(mtime) | Local::Resumed(mtime) => {
                    summary.files_present += 1;
                    summary.files_resumed += usize::from(matches!(local, Local::Resumed(_)));
                    summary.bytes_present += entry.size;
                    self.recorder.installed(&FileRecord {
                        name: entry.name.clone(),
                        size: entry.size,
                        sha256: entry.sha256,
                        mtime,
                        origin: Origin::Local,
                    });
                }
                Local::Absent => needed.push((entry.clone(), false)),
                Local::Wrong => {
                    tracing::warn!(name = entry.name, "the local copy does not match the manifest; fetching it again");
                    needed.push((entry.clone(), true));
                }
                Local::Unusable(error) => {
                    self.recorder.failed(&entry.name, false);
                    summary.files_failed += 1;
                    summary.failed.push(FailedFile { name: entry.name.clone(), error, retryable: false });
                }
            }
        }

        // 2. Fetch what is not.
        if !needed.is_empty() {
            let Some(reader) = &self.reader else {
                self.progress.finish();
                return Err(FetchJobError::NoCoordinator {
                    count: needed.len(),
                    example: needed[0].0.name.clone(),
                    root: self.root.dir().display().to_string(),
                });
            };
            // Fail fast on a wrong join token or a URL that is not a coordinator, instead of
            // once per file.
            match reader.directory().peers(true).await {
                Err(err) if !err.is_retryable() => {
                    self.progress.finish();
                    return Err(err.into());
                }
                _ => {}
            }
            let transfer_started = Instant::now();
            self.progress.start_transfer(needed.len(), needed.iter().map(|(e, _)| e.size).sum());
            let existing = self.resume.as_ref().map(|c| c.existing_partials()).unwrap_or_default();
            let existing = &existing;
            let results = futures::stream::iter(needed)
                .map(|(entry, replacing)| async move {
                    let partial = self.partial_for(&entry, existing).await;
                    let resumed = partial.resumed_bytes();
                    let mut result = reader.fetch_resuming(&entry, partial).await;
                    // Held by no live node, or its holders could not be read: the archive.
                    if let (Err(err), Some(archive)) = (&result, &self.archive)
                        && (err.is_missing() || matches!(err, FetchError::Unavailable { .. }))
                    {
                        result = self.read_archive(archive, &entry, result).await;
                    }
                    (entry, replacing, result.map(|fetched| (fetched, resumed)))
                })
                .buffer_unordered(self.concurrency.max(1));
            let mut results = std::pin::pin!(results);
            while let Some((entry, replacing, result)) = results.next().await {
                match result {
                    Ok((fetched, resumed)) => {
                        summary.files_fetched += 1;
                        summary.bytes_resumed += resumed;
                        summary.files_replaced += usize::from(replacing);
                        summary.bytes_fetched += fetched.size;
                        summary.bytes_received += fetched.bytes_received;
                        *summary.per_peer.entry(fetched.node_id.clone()).or_default() += 1;
                        let share = summary.per_peer_detail.entry(fetched.node_id.clone()).or_default();
                        share.files += 1;
                        share.bytes += fetched.size;
                        tracing::info!(name = entry.name, node = fetched.node_id, size = fetched.size, "fetched");
                        let mtime = self
                            .root
                            .resolve(&entry.name)
                            .ok()
                            .and_then(|p| std::fs::metadata(p).ok())
                            .and_then(|m| m.modified().ok());
                        self.recorder.installed(&FileRecord {
                            name: entry.name.clone(),
                            size: fetched.size,
                            sha256: Some(fetched.sha256),
                            mtime,
                            origin: Origin::Peer(fetched.node_id),
                        });
                    }
                    Err(err) => {
                        summary.files_failed += 1;
                        tracing::error!(name = entry.name, %err, retryable = err.is_retryable(), "not fetched");
                        self.progress.println(&format!("not fetched: {err}"));
                        self.recorder.failed(&entry.name, err.is_missing());
                        if err.is_missing() {
                            summary.missing.push(entry.name.clone());
                        } else {
                            summary.failed.push(FailedFile {
                                name: entry.name.clone(),
                                error: err.to_string(),
                                retryable: err.is_retryable(),
                            });
                        }
                    }
                }
            }
            summary.transfer_seconds = transfer_started.elapsed().as_secs_f64();
        }
        self.progress.finish();
        summary.missing.sort();
        summary.failed.sort_by(|a, b| a.name.cmp(&b.name));
        summary.seconds = started.elapsed().as_secs_f64();
        Ok(summary)
    }
}

impl FetchJob {
    /// `entry`, which no live node could provide, read from the archive; `missing` (the
    /// nodes' answer) stands when the archive does not hold it either.
    async fn read_archive(
        &self,
        archive: &crate::storage::Storage,
        entry: &FileEntry,
        missing: Result<Fetched, FetchError>,
    ) -> Result<Fetched, FetchError> {
        use crate::archive::ArchiveError;
        let name = entry.name.clone();
        match crate::archive::fetch(archive, &self.root, entry, &*self.progress).await {
            Ok(fetched) => Ok(fetched),
            Err(ArchiveError::Absent(_)) => missing,
            Err(ArchiveError::Mismatch { location, .. }) => {
                Err(FetchError::Corrupt { name, holders: vec![format!("archive ({location})")] })
            }
            Err(err) => Err(FetchError::Unavailable { name, rounds: 1, last: format!("from the archive: {err}") }),
        }
    }

    /// Where `entry`'s bytes are received: with a checkpoint, a resumable partial (continuing
    /// an interrupted transfer when `existing` lists one); otherwise a plain temp file. A
    /// fetched file is not read back here, so its pages leave the cache as they reach the disk
    /// ([`Partial::uncached`]).
    async fn partial_for(&self, entry: &FileEntry, existing: &HashSet<PathBuf>) -> Partial {
        self.partial_in_cache(entry, existing).await.uncached()
    }

    async fn partial_in_cache(&self, entry: &FileEntry, existing: &HashSet<PathBuf>) -> Partial {
        let Some(checkpoint) = &self.resume else {
            return Partial::new();
        };
        let path = checkpoint.partial_path(&entry.name);
        if !existing.contains(&path) {
            return Partial::resumable_new(&path);
        }
        let opened = tokio::task::spawn_blocking(move || Partial::resumable(&path)).await;
        opened.map_err(std::io::Error::other).flatten().unwrap_or_else(|err| {
            tracing::warn!(name = entry.name, %err, "cannot continue the interrupted transfer; starting over");
            Partial::new()
        })
    }
}

/// The manifest's files, or those named in `only` (in manifest order).
fn select(manifest: &Manifest, only: Option<&[String]>) -> Result<Vec<FileEntry>, FetchJobError> {
    let Some(only) = only else {
        return Ok(manifest.files.clone());
    };
    let by_name: HashMap<&str, &FileEntry> = manifest.files.iter().map(|f| (f.name.as_str(), f)).collect();
    let unknown: Vec<&String> = only.iter().filter(|n| !by_name.contains_key(n.as_str())).collect();
    if !unknown.is_empty() {
        return Err(FetchJobError::UnknownNames {
            count: unknown.len(),
            examples: unknown.iter().take(3).map(|n| format!("{n:?}")).collect::<Vec<_>>().join(", "),
            manifest: manifest.source.clone(),
        });
    }
    let wanted: std::collections::HashSet<&str> = only.iter().map(String::as_str).collect();
    Ok(manifest.files.iter().filter(|f| wanted.contains(f.name.as_str())).cloned().collect())
}

/// The state of one file in the root.
enum Local {
    /// Right size and digest (with its mtime).
    Present(Option<SystemTime>),
    /// Recorded by a checkpoint and unchanged since (same size and mtime): not hashed again.
    Resumed(Option<SystemTime>),
    /// Nothing there.
    Absent,
    /// Something else there (wrong size or digest): it will be replaced.
    Wrong,
    /// The name cannot be used (e.g. it leads through a symlink out of the root).
    Unusable(String),
}

fn check_local(root: &Root, entry: &FileEntry, recorded: Option<&Recorded>) -> Local {
    let path = match root.resolve(&entry.name) {
        Ok(path) => path,
        Err(err) => return Local::Unusable(err.to_string()),
    };
    let meta = std::fs::metadata(&path);
    if let (Some(recorded), Ok(meta)) = (recorded, &meta)
        && recorded.size == entry.size
        && recorded.sha256 == entry.sha256.map(hex::encode)
        && checkpoint::unchanged(meta, recorded)
    {
        return Local::Resumed(meta.modified().ok());
    }
    match meta {
        Err(_) => Local::Absent,
        Ok(meta) if !meta.is_file() => {
            Local::Unusable(format!("{} exists and is not a regular file; move it away", path.display()))
        }
        Ok(meta) if meta.len() != entry.size => Local::Wrong,
        Ok(meta) => match entry.sha256 {
            None => Local::Present(meta.modified().ok()),
            Some(want) => match crate::digest::hash_file(&path) {
                Ok((len, digest)) if len == entry.size && digest == want => Local::Present(meta.modified().ok()),
                Ok(_) => Local::Wrong,
                Err(err) => Local::Unusable(format!("cannot read {}: {err}", path.display())),
            },
        },
    }
}

/// Removes temp files in the root's `.depot/tmp/` untouched for `older_than`: leftovers of a
/// fetch that crashed. Recent ones may belong to a fetch running right now, so they stay.
/// Returns how many were removed.
pub fn sweep_stale_temp_files(root: &Root, older_than: Duration) -> usize {
    let Ok(entries) = std::fs::read_dir(root.tmp_dir()) else {
        return 0;
    };
    let now = SystemTime::now();
    let mut removed = 0;
    for entry in entries.flatten() {
        let stale = entry
            .metadata()
            .ok()
            .filter(std::fs::Metadata::is_file)
            .and_then(|m| m.modified().ok())
            .and_then(|t| now.duration_since(t).ok())
            .is_some_and(|age| age >= older_than);
        if stale && std::fs::remove_file(entry.path()).is_ok() {
            removed += 1;
        }
    }
    removed
}

/// `1.5 GiB`-style sizes for summaries.
#[must_use]
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 { format!("{bytes} B") } else { format!("{value:.1} {}", UNITS[unit]) }
}

impl std::fmt::Display for FetchSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "fetch: {} file(s) needed ({}): {} present, {} fetched, {} failed",
            self.files_needed,
            human_bytes(self.bytes_needed),
            self.files_present,
            self.files_fetched,
            self.files_failed
        )?;
        if self.files_resumed > 0 || self.bytes_resumed > 0 {
            writeln!(
                f,
                "  resumed from the checkpoint: {} file(s) trusted without hashing, {} of partial transfers not sent again",
                self.files_resumed,
                human_bytes(self.bytes_resumed)
            )?;
        }
        if self.files_fetched > 0 {
            let secs = self.transfer_seconds.max(1e-9);
            writeln!(
                f,
                "  fetched {} in {:.2} s ({}/s, {:.0} files/s){}",
                human_bytes(self.bytes_fetched),
                self.transfer_seconds,
                human_bytes((self.bytes_fetched as f64 / secs) as u64),
                self.files_fetched as f64 / secs,
                if self.files_replaced > 0 {
                    format!("; {} replaced a damaged local copy", self.files_replaced)
                } else {
                    String::new()
                }
            )?;
            let peers: Vec<String> = self
                .per_peer_detail
                .iter()
                .map(|(node, share)| format!("{node}: {} file(s), {}", share.files, human_bytes(share.bytes)))
                .collect();
            writeln!(f, "  from {}", peers.join("; "))?;
        }
        if let Some(checkpoint) = &self.checkpoint {
            if !checkpoint.skipped_records.is_empty() {
                writeln!(
                    f,
                    "  warning: {} damaged checkpoint record(s) skipped (their files were checked again): {}",
                    checkpoint.skipped_records.len(),
                    checkpoint.skipped_records.join(", ")
                )?;
            }
            match (&checkpoint.error, checkpoint.removed) {
                (Some(error), _) => writeln!(f, "  warning: checkpoint {}: {error}", checkpoint.location)?,
                (None, true) => writeln!(f, "  checkpoint removed: {}", checkpoint.location)?,
                (None, false) => writeln!(f, "  progress saved: {} (run again to resume)", checkpoint.location)?,
            }
        }
        if !self.missing.is_empty() {
            writeln!(f, "  missing (no live node has them): {}", self.missing.len())?;
            for name in &self.missing {
                writeln!(f, "    {name}")?;
            }
        }
        if !self.failed.is_empty() {
            writeln!(f, "  failed: {}", self.failed.len())?;
            for failed in &self.failed {
                let hint = if failed.retryable { " (retryable)" } else { "" };
                writeln!(f, "    {}: {}{hint}", failed.name, failed.error)?;
            }
        }
        write!(f, "  total time {:.2} s", self.seconds)
    }
}

#[cfg(test)]
mod tests {
    use sha2::Digest;

    use super::*;
    use crate::manifest::Format;

    fn manifest(names: &[&str]) -> Manifest {
        Manifest {
            source: "test-manifest".into(),
            format: Format::JsonLines,
            files: names
                .iter()
                .map(|n| FileEntry { name: (*n).into(), size: 3, sha256: Some(sha2::Sha256::digest(b"abc").into()) })
                .collect(),
            end_version: None,
            digest: [0; 32],
        }
    }

    #[test]
    fn files_from_selects_in_manifest_order_and_refuses_unknown_names() {
        let m = manifest(&["a", "b", "c"]);
        let picked = select(&m, Some(&["c".to_owned(), "a".to_owned()])).unwrap();
        assert_eq!(picked.iter().map(|f| f.name.as_str()).collect::<Vec<_>>(), ["a", "c"]);
        let err = select(&m, Some(&["a".to_owned(), "zz".to_owned()])).unwrap_err();
        assert!(err.to_string().contains("\"zz\"") && err.to_string().contains("test-manifest"), "{err}");
        assert_eq!(select(&m, None).unwrap().len(), 3);
    }

    #[test]
    fn local_files_are_classified_by_size_and_digest() {
        let dir = tempfile::tempdir().unwrap();
        let root = Root::open(dir.path()).unwrap();
        let m = manifest(&["good", "wrong", "short", "absent", "dir"]);
        std::fs::write(dir.path().join("good"), b"abc").unwrap();
        std::fs::write(dir.path().join("wrong"), b"abd").unwrap();
        std::fs::write(dir.path().join("short"), b"ab").unwrap();
        std::fs::create_dir(dir.path().join("dir")).unwrap();
        let states: Vec<&str> = m
            .files
            .iter()
            .map(|f| match check_local(&root, f, None) {
                Local::Present(_) | Local::Resumed(_) => "present",
                Local::Absent => "absent",
                Local::Wrong => "wrong",
                Local::Unusable(_) => "unusable",
            })
            .collect();
        assert_eq!(states, ["present", "wrong", "wrong", "absent", "unusable"]);
    }

    #[test]
    fn only_stale_temp_files_are_swept() {
        let dir = tempfile::tempdir().unwrap();
        let root = Root::open(dir.path()).unwrap();
        let fresh = root.temp_file().unwrap();
        std::fs::write(root.tmp_dir().join("old.tmp"), b"left by a crash").unwrap();
        assert_eq!(sweep_stale_temp_files(&root, Duration::from_secs(3600)), 0);
        assert_eq!(sweep_stale_temp_files(&root, Duration::ZERO), 2);
        drop(fresh);
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(12), "12 B");
    }
}
