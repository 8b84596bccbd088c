//! `collect`: gather a backup scattered over the nodes' disks into one archive.
//!
//! After `br backup --storage local://...` every node holds only its own SST files and the
//! machine that ran BR holds the `backupmeta`. `collect` makes one destination (Depot's archive
//! or any S3/GCS/Azure prefix or directory) hold the complete backup, so that
//! `br restore --storage s3://...` can read it from there:
//!
//! - every data file the manifest lists, streamed from a live node that holds it (the least
//!   busy; another holder continues at the same offset when one dies or stalls) straight into
//!   the destination — a single PUT up to 16 MiB, a multipart upload above — hashed on the way
//!   and completed only when size and SHA-256 match the manifest; a holder whose bytes fail is
//!   dropped for that file and the upload aborted, so nothing short or wrong becomes visible;
//! - the backup's other meta files, copied from beside the `backupmeta`: BR v2's
//!   `backupmeta.datafile.*`, `backupmeta.schema.*`, `backupmeta.ddl.*` and statistics files
//!   (whatever else BR put there) — everything except the data files themselves (which come
//!   from the nodes), `backup.lock` (BR's marker that a backup ran, which a restore does not
//!   read and which would make a later `br backup` to the archive refuse) and BR's
//!   `checkpoints/` (progress of the backup run, not part of the backup);
//! - the `backupmeta` itself last, and only when every data file is there: an incomplete
//!   archive has no `backupmeta`, so a restore from it fails at once instead of half-way.
//!
//! A file already in the destination with the manifest's size and SHA-256 (the digest
//! `collect` stores with each object as `x-amz-meta-depot-sha256`, or, for objects put there
//! by something else, the object's bytes hashed) is not copied again. Each copied file is
//! recorded in the checkpoint, so a re-run after `kill -9` trusts those without a request.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use depot_proto::agent::{FileExistsRequest, ReadFileRequest};
use futures::StreamExt;
use serde::Serialize;
use sha2::{Digest, Sha256};
use tonic::Code;

use crate::checkpoint::{Checkpoint, Recorded};
use crate::digest::Sha256Digest;
use crate::fetch::{CheckpointReport, FailedFile, FileRecord, JobProgress, PeerShare, Recorder, human_bytes};
use crate::manifest::{FileEntry, Manifest};
use crate::peer::{Load, Origin, Peer, PeerDirectory, RetryPolicy, Timeouts, is_transient};
use crate::registry::status_message;
use crate::storage::{Storage, StoreError};

/// The key BR reads first.
const BACKUPMETA: &str = "backupmeta";
/// Memory (MiB) that uploads in flight may hold together: keeps `collect` within 64 MiB.
const BUFFER_BUDGET_MIB: u32 = 40;

/// What the job needs besides the manifest.
pub struct CollectJob {
    /// Where the backup goes.
    pub dest: Storage,
    /// Where the manifest was found, and its key there (the other meta files are beside it).
    pub meta: (Storage, String),
    /// The live nodes.
    pub directory: Arc<PeerDirectory>,
    /// Files copied at once.
    pub concurrency: usize,
    /// Cap on bytes per second read from any one node (all its transfers together).
    pub max_rate: Option<u64>,
    /// Rounds of asking for files whose holders were unreachable.
    pub retry: RetryPolicy,
    /// Call deadlines.
    pub timeouts: Timeouts,
    /// Progress in bytes.
    pub progress: Arc<dyn JobProgress>,
    /// Told about every data file once it is in the destination (copied from the node in its
    /// `origin`, or found there: `Origin::Local`), and about each one that is not (the job
    /// file `depot status` reads).
    pub recorder: Arc<dyn Recorder>,
    /// Records copied files; its earlier records are trusted.
    pub checkpoint: Option<Arc<Checkpoint>>,
}

/// What a collect did. Serialized as the `--json` output.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CollectSummary {
    /// The destination.
    pub destination: String,
    /// The manifest.
    pub manifest: String,
    /// Data files the manifest lists.
    pub files_needed: usize,
    /// Copied from a node in this run.
    pub files_copied: usize,
    /// Already in the destination with the right size and digest.
    pub files_present: usize,
    /// Recorded by an earlier, interrupted run.
    pub files_resumed: usize,
    /// Held by no live node.
    pub missing: Vec<String>,
    /// Failed for another reason (bad bytes from every holder, the destination refused, ...).
    pub failed: Vec<FailedFile>,
    /// Meta files copied (or already there), the `backupmeta` last.
    pub meta_files: Vec<String>,
    /// Whether the `backupmeta` was written: only when every data file is there.
    pub backupmeta_written: bool,
    /// Bytes of all data files.
    pub bytes_total: u64,
    /// Bytes uploaded in this run (data files).
    pub bytes_copied: u64,
    /// Per source node: files and bytes.
    pub sources: BTreeMap<String, PeerShare>,
    /// Wall-clock seconds.
    pub seconds: f64,
    /// Throughput of the copied bytes, MB/s.
    pub mb_per_s: f64,
    /// The checkpoint, when one was kept.
    pub checkpoint: Option<CheckpointReport>,
}

impl CollectSummary {
    /// Whether the destination holds the complete backup.
    #[must_use]
    pub fn complete(&self) -> bool {
        self.missing.is_empty() && self.failed.is_empty() && self.backupmeta_written
    }
}

impl std::fmt::Display for CollectSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = if self.complete() { "complete" } else { "INCOMPLETE" };
        writeln!(f, "collect {state}: {} <- {}", self.destination, self.manifest)?;
        writeln!(
            f,
            "  data files: {} needed, {} copied, {} already there, {} recorded earlier, {} missing, {} failed",
            self.files_needed,
            self.files_copied,
            self.files_present,
            self.files_resumed,
            self.missing.len(),
            self.failed.len()
        )?;
        writeln!(
            f,
            "  bytes: {} copied of {} in {:.1} s ({:.1} MB/s)",
            human_bytes(self.bytes_copied),
            human_bytes(self.bytes_total),
            self.seconds,
            self.mb_per_s
        )?;
        for (node, share) in &self.sources {
            writeln!(f, "  from {node}: {} file(s), {}", share.files, human_bytes(share.bytes))?;
        }
        writeln!(f, "  meta files: {}", self.meta_files.join(", "))?;
        for name in &self.missing {
            writeln!(f, "  missing on every live node: {name}")?;
        }
        for failed in &self.failed {
            writeln!(f, "  failed: {}: {}", failed.name, failed.error)?;
        }
        if !self.backupmeta_written {
            writeln!(f, "  backupmeta NOT written (the archive is incomplete); fix the above and run again")?;
        }
        if let Some(checkpoint) = &self.checkpoint {
            match (&checkpoint.error, checkpoint.removed) {
                (Some(err), _) => writeln!(f, "  checkpoint {}: {err}", checkpoint.location)?,
                (None, true) => {}
                (None, false) => writeln!(f, "  checkpoint kept in {}; run again to resume", checkpoint.location)?,
            }
        }
        Ok(())
    }
}

/// Why the job could not run at all (per-file failures are in the summary).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CollectError {
    /// Reading the meta files or writing to the destination failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// One file's result.
enum Outcome {
    Resumed,
    Present,
    Copied { node: String },
    Missing(String),
    Failed(FailedFile),
}

/// Why one transfer from one holder stopped.
enum Broke {
    /// The holder broke off (died, stalled, no longer has it): another may continue.
    Source(String),
    /// More bytes than the file has: the holder's are wrong.
    Oversize,
    /// The destination refused: no holder can help.
    Dest(StoreError),
}

/// Per-node read budgets for `--max-rate`.
#[derive(Default)]
struct Rates {
    rate: Option<u64>,
    /// node id -> when its budget is next free.
    next: Mutex<HashMap<String, Instant>>,
}

impl Rates {
    /// Waits until `bytes` more may be read from `node`.
    async fn take(&self, node: &str, bytes: u64) {
        let Some(rate) = self.rate else { return };
        let cost = Duration::from_secs_f64(bytes as f64 / rate as f64);
        let ready = {
            let mut next = self.next.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            let now = Instant::now();
            let slot = next.entry(node.to_owned()).or_insert(now);
            let start = (*slot).max(now);
            *slot = start + cost;
            start
        };
        tokio::time::sleep_until(ready.into()).await;
    }
}

struct Shared {
    load: Arc<Load>,
    rates: Rates,
    buffers: tokio::sync::Semaphore,
    /// Set when the destination refused a write: further files are not started.
    dest_refused: AtomicBool,
}

impl CollectJob {
    /// Runs the job. Per-file failures are in the summary; `Err` only when the meta files
    /// cannot be read or the destination cannot be listed.
    ///
    /// # Errors
    /// [`CollectError`].
    pub async fn run(&self, manifest: &Manifest) -> Result<CollectSummary, CollectError> {
        let started = Instant::now();
        let mut summary = CollectSummary {
            destination: self.dest.describe(""),
            manifest: manifest.source.clone(),
            files_needed: manifest.files.len(),
            bytes_total: manifest.total_bytes(),
            ..CollectSummary::default()
        };
        let shared = Shared {
            load: Arc::default(),
            rates: Rates { rate: self.max_rate, ..Rates::default() },
            buffers: tokio::sync::Semaphore::new(BUFFER_BUDGET_MIB as usize),
            dest_refused: AtomicBool::new(false),
        };
        self.progress.start_transfer(manifest.files.len(), manifest.total_bytes());
        let outcomes = futures::stream::iter(&manifest.files)
            .map(|entry| {
                let shared = &shared;
                async move { (entry, self.collect_file(entry, shared).await) }
            })
            .buffer_unordered(self.concurrency.max(1));
        let mut outcomes = std::pin::pin!(outcomes);
        while let Some((entry, outcome)) = outcomes.next().await {
            let there = |origin| FileRecord {
                name: entry.name.clone(),
                size: entry.size,
                sha256: entry.sha256,
                mtime: None,
                origin,
            };
            match &outcome {
                Outcome::Resumed | Outcome::Present => self.recorder.installed(&there(Origin::Local)),
                Outcome::Copied { node } => self.recorder.installed(&there(Origin::Peer(node.clone()))),
                Outcome::Missing(_) => self.recorder.failed(&entry.name, true),
                Outcome::Failed(_) => self.recorder.failed(&entry.name, false),
            }
            match outcome {
                Outcome::Resumed => summary.files_resumed += 1,
                Outcome::Present => summary.files_present += 1,
                Outcome::Copied { node } => {
                    summary.files_copied += 1;
                    summary.bytes_copied += entry.size;
                    let share = summary.sources.entry(node).or_default();
                    share.files += 1;
                    share.bytes += entry.size;
                }
                Outcome::Missing(why) => {
                    self.progress.println(&format!("missing: {why}"));
                    summary.missing.push(entry.name.clone());
                }
                Outcome::Failed(failed) => {
                    self.progress.println(&format!("failed: {}: {}", failed.name, failed.error));
                    summary.failed.push(failed);
                }
            }
        }
        self.progress.finish();
        summary.missing.sort();
        summary.failed.sort_by(|a, b| a.name.cmp(&b.name));
        let data: HashSet<&str> = manifest.files.iter().map(|f| f.name.as_str()).collect();
        let complete = summary.missing.is_empty() && summary.failed.is_empty();
        match self.copy_meta_files(&data, complete).await {
            Ok((copied, wrote_backupmeta)) => {
                summary.meta_files = copied;
                summary.backupmeta_written = wrote_backupmeta;
            }
            Err(err) => {
                summary.failed.push(FailedFile { name: self.meta.1.clone(), error: err.to_string(), retryable: true });
            }
        }
        summary.seconds = started.elapsed().as_secs_f64();
        summary.mb_per_s = summary.bytes_copied as f64 / 1e6 / summary.seconds.max(1e-9);
        Ok(summary)
    }

    /// Copies the meta files beside the manifest (see the module docs); the manifest itself
    /// last and only when `complete`. Returns the keys copied or found in place.
    async fn copy_meta_files(&self, data: &HashSet<&str>, complete: bool) -> Result<(Vec<String>, bool), StoreError> {
        let (source, manifest_key) = &self.meta;
        let is_br = manifest_key == BACKUPMETA;
        let keys: Vec<String> = if is_br {
            source
                .list("")
                .await?
                .into_iter()
                .map(|o| o.key)
                .filter(|k| {
                    k != BACKUPMETA
                        && k != "backup.lock"
                        && !k.starts_with("checkpoints/")
                        && !data.contains(k.as_str())
                })
                .collect()
        } else {
            Vec::new()
        };
        let mut copied = Vec::new();
        for key in &keys {
            copy_object(source, key, &self.dest).await?;
            copied.push(key.clone());
        }
        if !complete {
            return Ok((copied, false));
        }
        copy_object(source, manifest_key, &self.dest).await?;
        copied.push(manifest_key.clone());
        Ok((copied, true))
    }

    async fn collect_file(&self, entry: &FileEntry, shared: &Shared) -> Outcome {
        let hex_digest = entry.sha256.map(hex::encode);
        if let Some(checkpoint) = &self.checkpoint
            && let Some(recorded) = checkpoint.trusted().get(&entry.name)
            && recorded.size == entry.size
            && recorded.sha256 == hex_digest
        {
            self.progress.advance(entry.size);
            return Outcome::Resumed;
        }
        let failed =
            |error: String, retryable: bool| Outcome::Failed(FailedFile { name: entry.name.clone(), error, retryable });
        if shared.dest_refused.load(Ordering::Relaxed) {
            return failed(format!("not attempted: {} refused an earlier write", self.dest.describe("")), true);
        }
        match self.already_there(entry).await {
            Ok(true) => {
                self.progress.advance(entry.size);
                self.record(entry);
                return Outcome::Present;
            }
            Ok(false) => {}
            Err(err) => return failed(format!("cannot check {}: {err}", self.dest.describe(&entry.name)), true),
        }
        let mib = u32::try_from(entry.size.div_ceil(1 << 20) + 1).unwrap_or(u32::MAX).min(26);
        let _permit = shared.buffers.acquire_many(mib).await.expect("the semaphore is never closed");
        match self.copy(entry, hex_digest.as_deref(), shared).await {
            Ok(node) => {
                self.record(entry);
                Outcome::Copied { node }
            }
            Err(outcome) => outcome,
        }
    }

    fn record(&self, entry: &FileEntry) {
        if let Some(checkpoint) = &self.checkpoint {
            checkpoint.record(Recorded {
                name: entry.name.clone(),
                size: entry.size,
                sha256: entry.sha256.map(hex::encode),
                mtime_ns: 0,
            });
        }
    }

    /// Whether the destination holds `entry` already: right size, and the digest stored with
    /// it matches (or, when none is stored, its bytes hash to the manifest's digest).
    async fn already_there(&self, entry: &FileEntry) -> Result<bool, StoreError> {
        let Some(head) = self.dest.head(&entry.name).await? else {
            return Ok(false);
        };
        if head.size != entry.size {
            return Ok(false);
        }
        let Some(want) = entry.sha256 else {
            return Ok(true);
        };
        match head.sha256 {
            Some(stored) => Ok(stored.eq_ignore_ascii_case(&hex::encode(want))),
            None => Ok(hash_object(&self.dest, &entry.name).await? == (entry.size, want)),
        }
    }

    /// Copies `entry` from its holders into the destination. Returns the node that sent the
    /// last bytes.
    async fn copy(&self, entry: &FileEntry, hex_digest: Option<&str>, shared: &Shared) -> Result<String, Outcome> {
        let name = entry.name.as_str();
        let failed =
            |error: String, retryable: bool| Outcome::Failed(FailedFile { name: name.to_owned(), error, retryable });
        let dest_failed = |err: StoreError| {
            shared.dest_refused.store(true, Ordering::Relaxed);
            failed(format!("the destination refused {}: {err}", self.dest.describe(name)), true)
        };
        let mut corrupt: Vec<String> = Vec::new();
        let mut round = 0;
        loop {
            round += 1;
            let last = match self.directory.peers(round > 1).await {
                Err(err) if err.is_retryable() => err.to_string(),
                Err(err) => return Err(failed(err.to_string(), false)),
                Ok(peers) => {
                    let live: Vec<&Peer> = peers.iter().filter(|p| !corrupt.contains(&p.node_id)).collect();
                    let (holders, unknown) = self.survey(&live, entry).await;
                    if holders.is_empty() && unknown.is_empty() {
                        if !corrupt.is_empty() {
                            return Err(failed(
                                format!(
                                    "every holder served bytes that fail the manifest's size/sha256 check (dropped: {})",
                                    corrupt.join(", ")
                                ),
                                false,
                            ));
                        }
                        return Err(Outcome::Missing(format!("{name}: no live node has it (asked {})", live.len())));
                    }
                    // One upload per attempt: started here, completed only with verified bytes.
                    let mut upload = self.dest.upload(name, entry.size, hex_digest).await.map_err(dest_failed)?;
                    let mut hasher = Sha256::new();
                    let mut offset = 0u64;
                    let mut contributors: Vec<String> = Vec::new();
                    let mut remaining = holders.clone();
                    let mut last = unknown.first().cloned().unwrap_or_default();
                    let mut done = None;
                    while let Some((peer, lease)) = shared.load.pick(&remaining) {
                        remaining.retain(|p| p.node_id != peer.node_id);
                        let result = self.transfer(peer, entry, &mut offset, &mut hasher, &mut upload, shared).await;
                        drop(lease);
                        if !contributors.contains(&peer.node_id) && offset > 0 {
                            contributors.push(peer.node_id.clone());
                        }
                        match result {
                            Ok(()) => {
                                done = Some(peer.node_id.clone());
                                break;
                            }
                            Err(Broke::Dest(err)) => {
                                upload.abort().await;
                                return Err(dest_failed(err));
                            }
                            Err(Broke::Oversize) => {
                                corrupt.push(peer.node_id.clone());
                                last = format!("{}: sent more bytes than the file has", peer.node_id);
                                break;
                            }
                            Err(Broke::Source(why)) => {
                                tracing::warn!(name, node = peer.node_id, offset, why, "transfer broke off");
                                last = format!("{}: {why}", peer.node_id);
                            }
                        }
                    }
                    match done {
                        Some(node) => {
                            let digest: Sha256Digest = hasher.finalize().into();
                            if offset == entry.size && entry.sha256.is_none_or(|want| want == digest) {
                                upload.finish().await.map_err(dest_failed)?;
                                return Ok(node);
                            }
                            upload.abort().await;
                            self.progress.rewind(offset);
                            tracing::warn!(name, node, "checksum mismatch: upload aborted");
                            if contributors.len() == 1 {
                                corrupt.push(node.clone());
                            }
                            format!("{node}: checksum mismatch")
                        }
                        None => {
                            upload.abort().await;
                            self.progress.rewind(offset);
                            last
                        }
                    }
                }
            };
            if round >= self.retry.rounds {
                return Err(failed(format!("gave up after {round} round(s): {last}"), true));
            }
            tokio::time::sleep(
                self.retry.initial_backoff.saturating_mul(1 << round.min(4)).min(self.retry.max_backoff),
            )
            .await;
        }
    }

    /// Asks `peers` in parallel whether they hold `entry` (with its size). Returns the
    /// holders and the failures that leave the question open.
    async fn survey<'a>(&self, peers: &[&'a Peer], entry: &FileEntry) -> (Vec<&'a Peer>, Vec<String>) {
        let asks = peers.iter().map(|peer| async move {
            let Some(mut client) = peer.client() else { return (*peer, Ok(false)) };
            let call = client.file_exists(FileExistsRequest { path: entry.name.clone() });
            let answer = match tokio::time::timeout(self.timeouts.rpc, call).await {
                Err(_) => Err("FileExists timed out".to_owned()),
                Ok(Ok(r)) => Ok(r.get_ref().exists && r.get_ref().size == entry.size),
                Ok(Err(status)) if is_transient(&status) => Err(status_message(&status)),
                Ok(Err(_)) => Ok(false),
            };
            (*peer, answer)
        });
        let mut holders = Vec::new();
        let mut unknown = Vec::new();
        for (peer, answer) in futures::future::join_all(asks).await {
            match answer {
                Ok(true) => holders.push(peer),
                Ok(false) => {}
                Err(why) => unknown.push(format!("{}: {why}", peer.node_id)),
            }
        }
        (holders, unknown)
    }

    /// Streams `entry` from `peer`, from `offset` on, into the hasher and the upload.
    async fn transfer(
        &self,
        peer: &Peer,
        entry: &FileEntry,
        offset: &mut u64,
        hasher: &mut Sha256,
        upload: &mut crate::storage::Upload,
        shared: &Shared,
    ) -> Result<(), Broke> {
        if *offset == entry.size {
            return Ok(());
        }
        let request = ReadFileRequest { path: entry.name.clone(), offset: *offset };
        let mut stream = match tokio::time::timeout(self.timeouts.stall, peer.read_file(request)).await {
            Err(_) => return Err(Broke::Source("ReadFile did not start in time".into())),
            Ok(Err(status)) if status.code() == Code::OutOfRange => return Err(Broke::Oversize),
            Ok(Err(status)) => return Err(Broke::Source(status_message(&status))),
            Ok(Ok(stream)) => stream,
        };
        loop {
            let next = match tokio::time::timeout(self.timeouts.stall, stream.next()).await {
                Err(_) => return Err(Broke::Source(format!("stalled: no data for {:?}", self.timeouts.stall))),
                Ok(Err(status)) => return Err(Broke::Source(status_message(&status))),
                Ok(Ok(next)) => next,
            };
            let Some(chunk) = next else {
                return if *offset == entry.size {
                    Ok(())
                } else {
                    Err(Broke::Source(format!("stream ended at byte {} of {}", *offset, entry.size)))
                };
            };
            let n = chunk.len() as u64;
            if *offset + n > entry.size {
                return Err(Broke::Oversize);
            }
            shared.rates.take(&peer.node_id, n).await;
            hasher.update(&chunk);
            upload.write(chunk).await.map_err(Broke::Dest)?;
            *offset += n;
            self.progress.advance(n);
        }
    }
}

/// Size and SHA-256 of an object, read through once.
async fn hash_object(store: &Storage, key: &str) -> Result<(u64, Sha256Digest), StoreError> {
    let mut stream = store.get_stream(key, 0).await?;
    let mut hasher = Sha256::new();
    let mut size = 0u64;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk?;
        size += chunk.len() as u64;
        hasher.update(&chunk);
    }
    Ok((size, hasher.finalize().into()))
}

/// Copies `key` from `source` to `dest` unless `dest` already holds the same bytes.
async fn copy_object(source: &Storage, key: &str, dest: &Storage) -> Result<(), StoreError> {
    let (size, digest) = hash_object(source, key).await?;
    let hex_digest = hex::encode(digest);
    if let Some(head) = dest.head(key).await?
        && head.size == size
    {
        let same = match &head.sha256 {
            Some(stored) => stored.eq_ignore_ascii_case(&hex_digest),
            None => hash_object(dest, key).await? == (size, digest),
        };
        if same {
            return Ok(());
        }
    }
    let mut upload = dest.upload(key, size, Some(&hex_digest)).await?;
    let mut stream = source.get_stream(key, 0).await?;
    let mut hasher = Sha256::new();
    while let Some(chunk) = stream.next().await {
        let chunk = match chunk {
            Ok(chunk) => chunk,
            Err(err) => {
                upload.abort().await;
                return Err(err);
            }
        };
        hasher.update(&chunk);
        if let Err(err) = upload.write(chunk).await {
            upload.abort().await;
            return Err(err);
        }
    }
    if <[u8; 32]>::from(hasher.finalize()) != digest {
        upload.abort().await;
        return Err(StoreError::Failed {
            location: source.describe(key),
            message: "changed while being copied; run again".into(),
        });
    }
    upload.finish().await
}

/// The `br restore` command line for a backup collected into `url`.
#[must_use]
pub fn restore_command(url: &str) -> String {
    format!("br restore full --pd \"$PD_ADDR\" --storage \"{url}\"")
}
