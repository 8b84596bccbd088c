//! What `depot status`, `/_depot/api/status` and the status page show: one JSON document.
//!
//! Visible to a holder of the status token: node ids and addresses, versions, backup
//! prefixes in the archive with file counts and the names of (at most 20) missing files per
//! backup or job, job progress. Never credentials, object contents, or keys beyond those
//! missing-file names.

use serde::{Deserialize, Serialize};

/// The whole status.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StatusReport {
    /// The coordinator.
    pub server: ServerStatus,
    /// The joined serving nodes, live or not (the same nodes `depot nodes` lists, without
    /// fetch/verify runs).
    pub nodes: Vec<NodeStatus>,
    /// Backups found in the archive (a directory holding a `backupmeta` or `manifest.jsonl`).
    pub backups: Vec<BackupStatus>,
    /// Jobs reported by the agents, across nodes.
    pub jobs: Vec<JobStatus>,
}

/// The coordinator itself.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ServerStatus {
    /// `depot` version.
    pub version: String,
    /// The S3 endpoint.
    pub endpoint: String,
    /// Seconds since start.
    pub uptime_seconds: u64,
    /// How often agents heartbeat.
    pub heartbeat_interval_ms: u64,
}

/// One joined serving node.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeStatus {
    /// Node id.
    pub node_id: String,
    /// Its NodeAgent `host:port`.
    pub address: String,
    /// `depot-agent` version (empty until its first heartbeat).
    pub version: String,
    /// Heard from within three heartbeat intervals.
    pub live: bool,
    /// Milliseconds since it was last heard from (`null`: not since the coordinator started).
    pub last_heartbeat_ms: Option<u64>,
    /// When its newest certificate expires (RFC 3339).
    pub certificate_expiry: Option<String>,
    /// Jobs running (or recently ended) on it.
    pub jobs: usize,
}

/// One backup in the archive.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BackupStatus {
    /// The backup's prefix (its directory in the archive), e.g. `backup-1`.
    pub prefix: String,
    /// `backupmeta` or `manifest.jsonl`.
    pub manifest: String,
    /// Data files its manifest lists.
    pub files: u64,
    /// Their bytes.
    pub bytes: u64,
    /// Of those, files in the archive with the listed size.
    pub files_in_archive: u64,
    /// Whether every listed file is in the archive with its size.
    pub complete: bool,
    /// Listed files not in the archive (the first 20).
    pub missing: Vec<String>,
    /// Why the manifest could not be read (an encrypted backupmeta, a damaged file).
    pub error: Option<String>,
    /// What each node reports holding of this backup.
    pub coverage: Vec<Coverage>,
}

/// What one node holds of a backup.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Coverage {
    /// The node.
    pub node_id: String,
    /// Files it holds (verified by its last job on this backup).
    pub files_held: u64,
    /// Files the backup lists (as the node's job saw it).
    pub files_total: u64,
    /// Bytes it holds.
    pub bytes_held: u64,
}

/// A job on a node.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobStatus {
    /// The node it runs on.
    pub node_id: String,
    /// `fetch` or `collect`.
    pub kind: String,
    /// Its task name.
    pub task: String,
    /// The backup it works on.
    pub backup: String,
    /// `checking`, `fetching`, `done`, `incomplete`, `failed`, `interrupted`, `stale`.
    pub state: String,
    /// Files done (present or fetched) of `files_needed`.
    pub files_done: u64,
    /// Files the job must make present.
    pub files_needed: u64,
    /// Bytes done of `bytes_needed`.
    pub bytes_done: u64,
    /// Bytes the job must make present.
    pub bytes_needed: u64,
    /// Recent transfer rate.
    pub bytes_per_second: f64,
    /// Seconds until done at that rate (`null` when unknown or finished).
    pub eta_seconds: Option<u64>,
    /// Start, Unix milliseconds.
    pub started_unix_ms: i64,
    /// Files held by no live node so far.
    pub files_missing: u64,
    /// Files that failed otherwise.
    pub files_failed: u64,
    /// Names of missing files (the first 20).
    pub missing: Vec<String>,
}

impl JobStatus {
    /// Percent of bytes done (100 when nothing is needed).
    pub fn percent(&self) -> f64 {
        if self.bytes_needed == 0 { 100.0 } else { self.bytes_done as f64 * 100.0 / self.bytes_needed as f64 }
    }
}

impl From<(&str, &depot_proto::registry::JobReport)> for JobStatus {
    fn from((node_id, job): (&str, &depot_proto::registry::JobReport)) -> Self {
        let left = job.bytes_needed.saturating_sub(job.bytes_done);
        let running = matches!(job.state.as_str(), "checking" | "fetching");
        let eta_seconds = (running && job.bytes_per_second > 1.0 && left > 0)
            .then(|| (left as f64 / job.bytes_per_second).ceil() as u64)
            .or_else(|| (running && left == 0).then_some(0));
        Self {
            node_id: node_id.to_owned(),
            kind: job.kind.clone(),
            task: job.task.clone(),
            backup: job.backup.clone(),
            state: job.state.clone(),
            files_done: job.files_done,
            files_needed: job.files_needed,
            bytes_done: job.bytes_done,
            bytes_needed: job.bytes_needed,
            bytes_per_second: job.bytes_per_second,
            eta_seconds,
            started_unix_ms: job.started_unix_ms,
            files_missing: job.files_missing,
            files_failed: job.files_failed,
            missing: job.missing.clone(),
        }
    }
}
