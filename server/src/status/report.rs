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
    /// The `br restore` line for the nodes' S3 views (`null`: no live node has a view).
    #[serde(default)]
    pub restore: Option<RestoreStatus>,
}

/// How to restore through the nodes' S3 views, with nothing copied first.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RestoreStatus {
    /// The storage URL every live view answers on its own node (`null` when they differ).
    pub storage_url: Option<String>,
    /// The `br restore` command to run once, from any node with a view (`$PD_ADDR`: PD's
    /// address; `AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY` as `depot serve` printed).
    pub command: Option<String>,
    /// For HTTPS views: the `SSL_CERT_FILE` BR and every TiKV need, when it is the same path
    /// on every node (else each node's is in its `view.ca_bundle`).
    pub ssl_cert_file: Option<String>,
    /// What needs fixing first: live nodes without a view, views that differ (and on which
    /// nodes).
    pub problems: Vec<String>,
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
    /// Its S3 view (`--s3-listen`), as its last heartbeat said.
    #[serde(default)]
    pub view: Option<ViewStatus>,
}

/// A node's S3 view: where it answers on that node, and what it served since its agent
/// started.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ViewStatus {
    /// `http(s)://127.0.0.1:PORT`: the endpoint a client on that node uses.
    pub endpoint: String,
    /// The bucket.
    pub bucket: String,
    /// The backup's key prefix (empty or ending in `/`).
    pub prefix: String,
    /// HTTPS: the system roots plus the cluster CA on that node (for `SSL_CERT_FILE`).
    pub ca_bundle: Option<String>,
    /// Reads answered from the node's own files (hits on local data).
    pub local_reads: u64,
    /// Reads answered from the cache of files fetched before.
    pub cache_hits: u64,
    /// Files fetched from live peers.
    pub peer_reads: u64,
    /// Files read from the archive (no live holder).
    pub archive_reads: u64,
    /// Reads of files no one could provide.
    pub missing: u64,
    /// GET body bytes sent to clients.
    pub bytes_served: u64,
    /// Bytes of the files fetched (peers and archive).
    pub bytes_fetched: u64,
    /// Bytes in the cache.
    pub cache_bytes: u64,
    /// The cache's budget (`null`: unbounded).
    pub cache_max: Option<u64>,
    /// Files in the cache.
    pub cache_files: u64,
    /// Files evicted from the cache.
    pub evictions: u64,
}

impl From<&depot_proto::registry::ViewReport> for ViewStatus {
    fn from(v: &depot_proto::registry::ViewReport) -> Self {
        Self {
            endpoint: super::restore::endpoint(v),
            bucket: v.bucket.clone(),
            prefix: v.prefix.clone(),
            ca_bundle: Some(v.ca_bundle.clone()).filter(|b| !b.is_empty()),
            local_reads: v.local_reads,
            cache_hits: v.cache_hits,
            peer_reads: v.peer_reads,
            archive_reads: v.archive_reads,
            missing: v.missing,
            bytes_served: v.bytes_served,
            bytes_fetched: v.bytes_fetched,
            cache_bytes: v.cache_bytes,
            cache_max: Some(v.cache_max).filter(|m| *m > 0),
            cache_files: v.cache_files,
            evictions: v.evictions,
        }
    }
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

/// A job on a node (a fetch), or a collect writing into the archive.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobStatus {
    /// The node it runs on (for a collect: the machine, as it names itself).
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
    /// Bytes of finished files by the node they were read from.
    #[serde(default)]
    pub sources: std::collections::BTreeMap<String, u64>,
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
            sources: job.source_bytes.iter().map(|(k, v)| (k.clone(), *v)).collect(),
        }
    }
}
