//! Job progress that reaches the coordinator: a running `fetch` keeps
//! `<root>/.depot/jobs/<kind>-<task>.json` up to date (every second and at the end), and the
//! `serve` agent of that root reads those files into the report it sends with each heartbeat.
//!
//! A file, not a socket, because `fetch` and `serve` are separate processes that may start and
//! stop in any order; the file outlives a crashed fetch, whose stopped updates show as `stale`.
//! [`JobTracker`] sits between the job and its progress bar and recorder, so the job itself
//! does not change.
//!
//! A `collect` runs from any machine, usually one with no agent, and writes into the archive:
//! when its destination is the coordinator's own archive ([`same_server`]), it keeps the same
//! file at the root of the destination's bucket, in [`COLLECT_JOBS_DIR`]; the coordinator
//! reads those files when it builds its status, and removes them an hour after they stop
//! changing.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use depot_proto::registry::{BackupHolding, JobReport, NodeReport};
use serde::{Deserialize, Serialize};

use crate::fetch::{FileRecord, JobProgress, Recorder};
use crate::peer::{Origin, Progress};

/// Missing names kept per job (the report is bounded).
pub const MAX_MISSING: usize = 20;
/// Source nodes reported per job.
pub const MAX_SOURCES: usize = 64;
/// Jobs reported per heartbeat.
pub const MAX_JOBS: usize = 16;
/// A running job whose file has not changed for this long is reported as `stale`.
const STALE_AFTER: Duration = Duration::from_secs(10);
/// Ended jobs are reported for this long.
const KEEP_ENDED: Duration = Duration::from_secs(3600);
/// How often a running job rewrites its file.
pub const WRITE_EVERY: Duration = Duration::from_secs(1);

/// Where in a collect's destination bucket its job file goes.
pub const COLLECT_JOBS_DIR: &str = ".depot-collect/jobs";

/// Whether the storage URL `dest` (`s3://B/P?endpoint=...`) is served by the coordinator at
/// `coordinator` (`http://host:port`): same host and port. `depot serve` answers S3 and the
/// registry on one port, so then the coordinator can read what is written there.
#[must_use]
pub fn same_server(dest: &str, coordinator: &str) -> bool {
    let Ok(dest) = url::Url::parse(dest) else { return false };
    if dest.scheme() != "s3" {
        return false;
    }
    let endpoint = dest.query_pairs().find(|(k, _)| k == "endpoint").map(|(_, v)| v.into_owned());
    let (Some(Ok(endpoint)), Ok(coordinator)) = (endpoint.map(|e| url::Url::parse(&e)), url::Url::parse(coordinator))
    else {
        return false;
    };
    let host = |u: &url::Url| u.host_str().map(str::to_ascii_lowercase);
    host(&endpoint).is_some()
        && host(&endpoint) == host(&coordinator)
        && endpoint.port_or_known_default() == coordinator.port_or_known_default()
}

/// The root of the bucket an `s3://BUCKET/PREFIX?...` URL names (same query), or `None` for
/// another kind of URL.
#[must_use]
pub fn bucket_root(dest: &str) -> Option<String> {
    let mut url = url::Url::parse(dest).ok().filter(|u| u.scheme() == "s3")?;
    url.set_path("");
    Some(url.to_string())
}

/// The name of this machine, for a collect's job (it may run on a machine with no agent).
#[must_use]
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

/// The directory of job files under a root.
pub fn jobs_dir(root: &Path) -> PathBuf {
    root.join(depot_fs::STATE_DIR).join("jobs")
}

/// The backup a `--meta` value names, as the coordinator names backups in its archive: the
/// manifest's directory (`s3://b/backup-1/manifest.jsonl?...` → `backup-1`).
pub fn backup_name(meta: &str) -> String {
    let path = meta.split('?').next().unwrap_or(meta);
    let (is_s3, path) = match path.strip_prefix("s3://") {
        Some(rest) => (true, rest.split_once('/').map_or("", |(_, key)| key)),
        None => (false, path.strip_prefix("local://").or_else(|| path.strip_prefix("file://")).unwrap_or(path)),
    };
    let path = path.trim_end_matches('/');
    let last = path.rsplit('/').next().unwrap_or(path);
    let is_file = last == "backupmeta" || last.ends_with(".json") || last.ends_with(".jsonl");
    let dir = if is_file { path.rsplit_once('/').map_or("", |(d, _)| d) } else { path };
    if is_s3 { dir.to_owned() } else { dir.rsplit('/').next().unwrap_or(dir).to_owned() }
}

/// What a job file holds.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct JobFile {
    /// `fetch` or `collect`.
    pub kind: String,
    /// The task name.
    pub task: String,
    /// The backup (see [`backup_name`]).
    pub backup: String,
    /// The process writing it.
    pub pid: u32,
    /// `checking`, `fetching`, `done`, `incomplete`, `failed`, `interrupted`.
    pub state: String,
    /// Files present and verified, of `files_needed`.
    pub files_done: u64,
    /// Files the job must make present.
    pub files_needed: u64,
    /// Bytes present (verified files, and the bytes of transfers in progress).
    pub bytes_done: u64,
    /// Bytes the job must make present.
    pub bytes_needed: u64,
    /// Bytes of verified files only (what the node holds for sure).
    pub bytes_held: u64,
    /// Recent transfer rate.
    pub bytes_per_second: f64,
    /// Start, Unix ms.
    pub started_unix_ms: i64,
    /// Last write, Unix ms.
    pub updated_unix_ms: i64,
    /// Files held by no live node.
    pub files_missing: u64,
    /// Files that failed otherwise.
    pub files_failed: u64,
    /// Missing names (the first [`MAX_MISSING`]).
    pub missing: Vec<String>,
    /// Bytes of finished files by the node they came from.
    #[serde(default)]
    pub sources: BTreeMap<String, u64>,
    /// The machine a collect runs on (empty for a fetch: its node reports it).
    #[serde(default)]
    pub host: String,
}

impl JobFile {
    /// Whether the job is still running (or was, when it stopped updating its file).
    #[must_use]
    pub fn running(&self) -> bool {
        matches!(self.state.as_str(), "checking" | "fetching")
    }

    /// Whether the file was last written so long ago that it is no longer reported.
    #[must_use]
    pub fn expired(&self) -> bool {
        now_ms() - self.updated_unix_ms >= KEEP_ENDED.as_millis() as i64
    }

    /// The job as reported to the coordinator: a running job whose file stopped changing is
    /// `stale`; lists are cut to their bounds.
    #[must_use]
    pub fn into_report(self) -> JobReport {
        let stale = self.running() && now_ms() - self.updated_unix_ms > STALE_AFTER.as_millis() as i64;
        JobReport {
            kind: self.kind,
            task: self.task,
            backup: self.backup,
            state: if stale { "stale".into() } else { self.state },
            files_done: self.files_done,
            files_needed: self.files_needed,
            bytes_done: self.bytes_done,
            bytes_needed: self.bytes_needed,
            bytes_per_second: self.bytes_per_second,
            started_unix_ms: self.started_unix_ms,
            updated_unix_ms: self.updated_unix_ms,
            files_missing: self.files_missing,
            files_failed: self.files_failed,
            missing: self.missing.into_iter().take(MAX_MISSING).collect(),
            source_bytes: self.sources.into_iter().take(MAX_SOURCES).collect(),
        }
    }
}

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Counters of a running job, updated by the job through the traits it already calls.
#[derive(Debug, Default)]
pub struct JobCounters {
    transferring: AtomicBool,
    files_needed: AtomicU64,
    bytes_needed: AtomicU64,
    files_done: AtomicU64,
    bytes_held: AtomicU64,
    /// Bytes of transfers in progress (received, not yet installed).
    bytes_in_flight: AtomicU64,
    files_missing: AtomicU64,
    files_failed: AtomicU64,
    retries: AtomicU64,
    failovers: AtomicU64,
    missing: Mutex<Vec<String>>,
    /// Bytes of installed files by the node they came from.
    per_source: Mutex<BTreeMap<String, u64>>,
}

/// A snapshot of [`JobCounters`] for metrics.
#[derive(Debug, Clone, Default)]
pub struct JobFigures {
    /// Files needed / done.
    pub files: (u64, u64),
    /// Bytes needed / done.
    pub bytes: (u64, u64),
    /// Files held by nobody, failed otherwise.
    pub missing_failed: (u64, u64),
    /// Retry rounds and failovers to another holder.
    pub retries_failovers: (u64, u64),
    /// Bytes received from each source node.
    pub per_source: BTreeMap<String, u64>,
}

impl JobCounters {
    /// The figures now.
    pub fn figures(&self) -> JobFigures {
        JobFigures {
            files: (self.files_needed.load(Relaxed), self.files_done.load(Relaxed)),
            bytes: (self.bytes_needed.load(Relaxed), self.bytes_done()),
            missing_failed: (self.files_missing.load(Relaxed), self.files_failed.load(Relaxed)),
            retries_failovers: (self.retries.load(Relaxed), self.failovers.load(Relaxed)),
            per_source: self.per_source.lock().map(|m| m.clone()).unwrap_or_default(),
        }
    }

    fn bytes_done(&self) -> u64 {
        self.bytes_held.load(Relaxed) + self.bytes_in_flight.load(Relaxed)
    }
}

/// Wraps a job's progress display and recorder, counting what passes through.
pub struct JobTracker {
    counters: Arc<JobCounters>,
    display: Arc<dyn JobProgress>,
    recorder: Arc<dyn Recorder>,
}

impl JobTracker {
    /// A tracker passing everything on to `display` and `recorder`.
    #[must_use]
    pub fn new(display: Arc<dyn JobProgress>, recorder: Arc<dyn Recorder>) -> Self {
        Self { counters: Arc::default(), display, recorder }
    }

    /// The counters (for metrics and the job file).
    #[must_use]
    pub fn counters(&self) -> Arc<JobCounters> {
        Arc::clone(&self.counters)
    }
}

impl Progress for JobTracker {
    fn advance(&self, bytes: u64) {
        if self.counters.transferring.load(Relaxed) {
            self.counters.bytes_in_flight.fetch_add(bytes, Relaxed);
        }
        self.display.advance(bytes);
    }

    fn rewind(&self, bytes: u64) {
        if self.counters.transferring.load(Relaxed) {
            let _ = self.counters.bytes_in_flight.fetch_update(Relaxed, Relaxed, |v| Some(v.saturating_sub(bytes)));
        }
        self.display.rewind(bytes);
    }

    fn retry(&self) {
        self.counters.retries.fetch_add(1, Relaxed);
    }

    fn failover(&self) {
        self.counters.failovers.fetch_add(1, Relaxed);
    }
}

impl JobProgress for JobTracker {
    fn start_check(&self, files: usize, bytes: u64) {
        self.counters.files_needed.store(files as u64, Relaxed);
        self.counters.bytes_needed.store(bytes, Relaxed);
        self.display.start_check(files, bytes);
    }

    fn start_transfer(&self, files: usize, bytes: u64) {
        // A collect has no checking phase: its transfer covers every file.
        let _ = self.counters.files_needed.compare_exchange(0, files as u64, Relaxed, Relaxed);
        let _ = self.counters.bytes_needed.compare_exchange(0, bytes, Relaxed, Relaxed);
        self.counters.transferring.store(true, Relaxed);
        self.display.start_transfer(files, bytes);
    }

    fn println(&self, line: &str) {
        self.display.println(line);
    }

    fn finish(&self) {
        self.display.finish();
    }
}

impl Recorder for JobTracker {
    fn installed(&self, record: &FileRecord) {
        let c = &self.counters;
        c.files_done.fetch_add(1, Relaxed);
        c.bytes_held.fetch_add(record.size, Relaxed);
        // During the transfer every finished file's bytes were counted in flight as they came
        // (a collect advances the bar for files already in the destination too).
        if c.transferring.load(Relaxed) {
            let _ = c.bytes_in_flight.fetch_update(Relaxed, Relaxed, |v| Some(v.saturating_sub(record.size)));
        }
        if let Origin::Peer(node) = &record.origin
            && let Ok(mut map) = c.per_source.lock()
        {
            *map.entry(node.clone()).or_default() += record.size;
        }
        self.recorder.installed(record);
    }

    fn failed(&self, name: &str, missing: bool) {
        let c = &self.counters;
        if missing {
            c.files_missing.fetch_add(1, Relaxed);
            if let Ok(mut names) = c.missing.lock()
                && names.len() < MAX_MISSING
            {
                names.push(name.to_owned());
            }
        } else {
            c.files_failed.fetch_add(1, Relaxed);
        }
        self.recorder.failed(name, missing);
    }
}

/// Where a job file goes.
#[derive(Debug)]
enum Target {
    /// A local file (fetch: `<root>/.depot/jobs/`).
    Local(PathBuf),
    /// A key in a storage (collect: its destination).
    Store(crate::storage::Storage, String),
}

/// Writes a job's file while it runs.
#[derive(Debug)]
pub struct JobWriter {
    target: Target,
    counters: Arc<JobCounters>,
    file: Mutex<JobFile>,
    /// (time, bytes done) of the last rate sample.
    last: Mutex<(std::time::Instant, u64)>,
}

impl JobWriter {
    /// A writer of `<root>/.depot/jobs/<kind>-<task>.json`.
    #[must_use]
    pub fn new(root: &Path, kind: &str, task: &str, backup: String, counters: Arc<JobCounters>) -> Self {
        let file = JobFile {
            kind: kind.to_owned(),
            task: task.to_owned(),
            backup,
            pid: std::process::id(),
            state: "checking".into(),
            started_unix_ms: now_ms(),
            ..JobFile::default()
        };
        Self {
            target: Target::Local(jobs_dir(root).join(format!("{kind}-{task}.json"))),
            counters,
            file: Mutex::new(file),
            last: Mutex::new((std::time::Instant::now(), 0)),
        }
    }

    /// A writer of a collect's job file in `bucket` (the root of its destination's bucket):
    /// `<bucket>/`[`COLLECT_JOBS_DIR`]`/collect-<task>-<hash of the destination>.json`. Not
    /// under the backup's prefix, which then holds exactly the backup.
    #[must_use]
    pub fn in_bucket(
        bucket: &crate::storage::Storage,
        dest: &str,
        task: &str,
        backup: String,
        counters: Arc<JobCounters>,
    ) -> Self {
        use sha2::Digest as _;
        let mut writer = Self::new(Path::new("/"), "collect", task, backup, counters);
        let dest = dest.split('?').next().unwrap_or(dest);
        let tag = hex::encode(&sha2::Sha256::digest(dest.as_bytes())[..4]);
        writer.target = Target::Store(bucket.at(COLLECT_JOBS_DIR), format!("collect-{task}-{tag}.json"));
        if let Ok(mut file) = writer.file.lock() {
            file.host = host_name();
        }
        writer
    }

    /// The current figures as JSON, with `state` when given (a final state), else the phase.
    fn render(&self, state: Option<&str>) -> Vec<u8> {
        let c = &self.counters;
        let Ok(mut file) = self.file.lock() else { return Vec::new() };
        let bytes_done = c.bytes_done();
        if let Ok(mut last) = self.last.lock() {
            let elapsed = last.0.elapsed().as_secs_f64();
            if elapsed >= 0.5 {
                let instant = bytes_done.saturating_sub(last.1) as f64 / elapsed;
                // Smoothed, so the page's ETA does not jump with every chunk.
                file.bytes_per_second =
                    if file.bytes_per_second == 0.0 { instant } else { 0.5 * file.bytes_per_second + 0.5 * instant };
                *last = (std::time::Instant::now(), bytes_done);
            }
        }
        file.state = match state {
            Some(state) => {
                file.bytes_per_second = 0.0;
                state.to_owned()
            }
            None if c.transferring.load(Relaxed) => "fetching".into(),
            None => "checking".into(),
        };
        file.files_needed = c.files_needed.load(Relaxed);
        file.bytes_needed = c.bytes_needed.load(Relaxed);
        file.files_done = c.files_done.load(Relaxed);
        file.bytes_done = bytes_done;
        file.bytes_held = c.bytes_held.load(Relaxed);
        file.files_missing = c.files_missing.load(Relaxed);
        file.files_failed = c.files_failed.load(Relaxed);
        file.missing = c.missing.lock().map(|m| m.clone()).unwrap_or_default();
        file.sources = c.per_source.lock().map(|m| m.clone()).unwrap_or_default();
        file.updated_unix_ms = now_ms();
        serde_json::to_vec(&*file).unwrap_or_default()
    }

    /// Writes the current figures to a local job file, with `state` when given (a final
    /// state), else the phase. (A job file in a storage is written by [`JobWriter::publish`].)
    pub fn write(&self, state: Option<&str>) {
        let Target::Local(path) = &self.target else { return };
        let json = self.render(state);
        // Rename over the old file, so a reader never sees half of one.
        let tmp = path.with_extension("json.tmp");
        let written = std::fs::create_dir_all(jobs_dir_of(path))
            .and_then(|()| std::fs::write(&tmp, json))
            .and_then(|()| std::fs::rename(&tmp, path));
        if let Err(err) = written {
            tracing::debug!(%err, path = %path.display(), "cannot write the job file");
        }
    }

    /// Writes the current figures wherever the job file lives (see [`JobWriter::write`]).
    pub async fn publish(&self, state: Option<&str>) {
        match &self.target {
            Target::Local(_) => self.write(state),
            Target::Store(store, key) => {
                // One PUT replaces the object whole: a reader never sees half of one.
                if let Err(err) = store.put(key, self.render(state)).await {
                    tracing::debug!(%err, "cannot write the job file");
                }
            }
        }
    }

    /// Rewrites the file every [`WRITE_EVERY`] until dropped (run it in a `select!`).
    pub async fn keep_writing(&self) {
        loop {
            self.publish(None).await;
            tokio::time::sleep(WRITE_EVERY).await;
        }
    }
}

fn jobs_dir_of(path: &Path) -> &Path {
    path.parent().unwrap_or(Path::new("."))
}

/// The report a `serve` agent sends with its heartbeat: its version, the jobs in its root's
/// job files (newest first, at most [`MAX_JOBS`]), and per backup what its latest job there
/// verified as held.
#[must_use]
pub fn node_report(root: &Path) -> NodeReport {
    let mut files: Vec<JobFile> = std::fs::read_dir(jobs_dir(root))
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
        .filter_map(|e| serde_json::from_slice::<JobFile>(&std::fs::read(e.path()).ok()?).ok())
        .filter(|f| !f.expired())
        .collect();
    files.sort_by_key(|f| std::cmp::Reverse(f.updated_unix_ms));
    files.truncate(MAX_JOBS);
    let mut holdings: Vec<BackupHolding> = Vec::new();
    for f in &files {
        if !f.backup.is_empty() && !holdings.iter().any(|h| h.backup == f.backup) {
            holdings.push(BackupHolding {
                backup: f.backup.clone(),
                files_held: f.files_done,
                files_total: f.files_needed,
                bytes_held: f.bytes_held,
            });
        }
    }
    let jobs = files.into_iter().map(JobFile::into_report).collect();
    NodeReport { version: env!("CARGO_PKG_VERSION").to_owned(), jobs, holdings, view: None }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backups_are_named_by_their_manifest_directory() {
        assert_eq!(backup_name("s3://b/backup-1/manifest.jsonl?endpoint=http://x"), "backup-1");
        assert_eq!(backup_name("s3://b/a/backup-2/?endpoint=http://x"), "a/backup-2");
        assert_eq!(backup_name("s3://b/backup-3"), "backup-3");
        assert_eq!(backup_name("/data/backup/backup-4/backupmeta"), "backup-4");
        assert_eq!(backup_name("/data/backup/backup-5"), "backup-5");
    }

    #[test]
    fn a_collect_reports_only_into_the_coordinators_own_archive() {
        let to = "s3://depot-abc/backup-1/?endpoint=http%3A%2F%2F127.0.0.1%3A9000&force-path-style=true";
        assert!(same_server(to, "http://127.0.0.1:9000"));
        assert!(same_server("s3://b/p?endpoint=http://LOCALHOST:80", "http://localhost"));
        assert!(!same_server(to, "http://127.0.0.1:9001"), "another port");
        assert!(!same_server("s3://b/p?endpoint=http://10.0.0.2:9000", "http://127.0.0.1:9000"));
        assert!(!same_server("s3://b/p", "http://127.0.0.1:9000"), "AWS itself");
        assert!(!same_server("/data/archive/backup-1", "http://127.0.0.1:9000"));
        assert_eq!(
            bucket_root("s3://depot-abc/backup-1/?endpoint=http://h:1&force-path-style=true").as_deref(),
            Some("s3://depot-abc?endpoint=http://h:1&force-path-style=true")
        );
        assert_eq!(bucket_root("/data/x"), None);
    }

    #[test]
    fn a_collect_counts_files_found_in_place_and_copied_once_each() {
        let tracker = JobTracker::new(Arc::new(crate::progress::Bar::new(false)), Arc::new(crate::fetch::NoRecorder));
        tracker.start_transfer(3, 30);
        let record = |name: &str, origin| FileRecord { name: name.into(), size: 10, sha256: None, mtime: None, origin };
        // Already in the destination: the bar advances, then the file is recorded.
        tracker.advance(10);
        tracker.installed(&record("a", Origin::Local));
        // Copied in two chunks from node1.
        tracker.advance(4);
        tracker.advance(6);
        tracker.installed(&record("b", Origin::Peer("node1".into())));
        tracker.advance(3); // "c" in flight
        let f = tracker.counters().figures();
        assert_eq!((f.files, f.bytes), ((3, 2), (30, 23)));
        assert_eq!(f.per_source, BTreeMap::from([("node1".to_owned(), 10)]));
    }

    #[test]
    fn a_written_job_file_becomes_a_bounded_report() {
        let dir = tempfile::tempdir().unwrap();
        let counters = Arc::<JobCounters>::default();
        counters.files_needed.store(10, Relaxed);
        counters.files_done.store(4, Relaxed);
        counters.files_missing.store(1, Relaxed);
        counters.missing.lock().unwrap().push("1/gone.sst".into());
        let writer = JobWriter::new(dir.path(), "fetch", "t1", "backup-1".into(), counters);
        writer.write(None);
        let report = node_report(dir.path());
        assert_eq!(report.jobs.len(), 1);
        let job = &report.jobs[0];
        assert_eq!((job.state.as_str(), job.files_done, job.files_needed), ("checking", 4, 10));
        assert_eq!(job.missing, ["1/gone.sst"]);
        assert_eq!(report.holdings[0].backup, "backup-1");
        writer.write(Some("incomplete"));
        assert_eq!(node_report(dir.path()).jobs[0].state, "incomplete");
    }
}
