//! Backups in the archive: every directory holding a `backupmeta` (BR) or `manifest.jsonl`,
//! read with the agent's manifest reader and checked against the files beside it (by size;
//! hashing a whole archive on every refresh would cost more than the page is worth).
//!
//! Collect jobs report through the archive they write to (a collect runs from any machine):
//! their files are at the root of the bucket, `.depot-collect/jobs/collect-*.json` (see
//! `depot_agent::jobs`), read at every status request.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use depot_agent::jobs::{COLLECT_JOBS_DIR, JobFile};
use depot_agent::manifest::ManifestSource;
use depot_agent::storage::StoreOptions;

use super::report::BackupStatus;

/// How deep under the archive (or a bucket) manifests are looked for.
const MAX_DEPTH: usize = 4;
/// Most backups listed.
const MAX_BACKUPS: usize = 100;
/// Missing names kept per backup.
const MAX_MISSING: usize = 20;
/// How long a scan is reused: the page polls every second or two.
const FRESH_FOR: Duration = Duration::from_secs(5);

/// The manifest file names recognised, in order of preference.
const MANIFESTS: [&str; 2] = ["backupmeta", "manifest.jsonl"];

/// A cached view of the archive's backups.
#[derive(Debug)]
pub struct Backups {
    archive: PathBuf,
    cache: tokio::sync::Mutex<Option<(Instant, Vec<BackupStatus>)>>,
}

impl Backups {
    /// Backups under `archive`.
    pub fn new(archive: PathBuf) -> Self {
        Self { archive, cache: tokio::sync::Mutex::new(None) }
    }

    /// The backups (at most [`FRESH_FOR`] old), without coverage.
    pub async fn list(&self) -> Vec<BackupStatus> {
        let mut cache = self.cache.lock().await;
        if let Some((at, list)) = &*cache
            && at.elapsed() < FRESH_FOR
        {
            return list.clone();
        }
        let archive = self.archive.clone();
        let found = tokio::task::spawn_blocking(move || find_manifests(&archive)).await.unwrap_or_default();
        let mut list = Vec::with_capacity(found.len());
        for (dir, manifest) in found {
            list.push(check(&self.archive, &dir, &manifest).await);
        }
        *cache = Some((Instant::now(), list.clone()));
        list
    }

    /// The collect jobs whose files are in the archive (at the root of a bucket: the archive,
    /// or with `--multi-bucket` a top-level directory), read now, with the machine each runs
    /// on. Files of jobs that ended (or stopped) long ago are removed: nothing else would.
    pub async fn collect_jobs(&self) -> Vec<(String, JobFile)> {
        let archive = self.archive.clone();
        tokio::task::spawn_blocking(move || {
            let mut dirs = vec![archive.join(COLLECT_JOBS_DIR)];
            if let Ok(top) = std::fs::read_dir(&archive) {
                dirs.extend(
                    top.filter_map(Result::ok)
                        .filter(|e| e.file_name() != depot_fs::STATE_DIR && e.file_type().is_ok_and(|t| t.is_dir()))
                        .map(|e| e.path().join(COLLECT_JOBS_DIR)),
                );
            }
            read_job_files(&dirs)
        })
        .await
        .unwrap_or_default()
    }
}

/// The collect job files in `dirs`, removing expired ones (and their directories, once
/// empty).
fn read_job_files(dirs: &[PathBuf]) -> Vec<(String, JobFile)> {
    let mut jobs = Vec::new();
    for dir in dirs {
        let Ok(entries) = std::fs::read_dir(dir) else { continue };
        for entry in entries.filter_map(Result::ok) {
            let path = entry.path();
            if path.extension().is_none_or(|x| x != "json") {
                continue;
            }
            let Some(job) = std::fs::read(&path).ok().and_then(|b| serde_json::from_slice::<JobFile>(&b).ok()) else {
                continue;
            };
            if job.expired() {
                let _ = std::fs::remove_file(&path);
                continue;
            }
            let host = if job.host.is_empty() { "collect".to_owned() } else { job.host.clone() };
            jobs.push((host, job));
        }
        // `jobs/`, then `.depot-collect/`, once nothing else is left in them.
        if std::fs::remove_dir(dir).is_ok()
            && let Some(parent) = dir.parent()
        {
            let _ = std::fs::remove_dir(parent);
        }
    }
    jobs.sort_by_key(|(_, j)| std::cmp::Reverse(j.updated_unix_ms));
    jobs
}

/// (backup directory, manifest file name) pairs, sorted.
fn find_manifests(archive: &Path) -> Vec<(PathBuf, String)> {
    let mut found = Vec::new();
    let walk = walkdir::WalkDir::new(archive)
        .max_depth(MAX_DEPTH)
        .sort_by_file_name()
        .into_iter()
        .filter_entry(|e| e.depth() == 0 || e.file_name() != depot_fs::STATE_DIR);
    for entry in walk.filter_map(Result::ok) {
        if !entry.file_type().is_dir() {
            continue;
        }
        if let Some(name) = MANIFESTS.iter().find(|m| entry.path().join(m).is_file()) {
            found.push((entry.path().to_path_buf(), (*name).to_owned()));
            if found.len() >= MAX_BACKUPS {
                break;
            }
        }
    }
    found
}

async fn check(archive: &Path, dir: &Path, manifest: &str) -> BackupStatus {
    let prefix = dir.strip_prefix(archive).unwrap_or(dir).display().to_string();
    let mut status = BackupStatus {
        prefix: if prefix.is_empty() { ".".into() } else { prefix },
        manifest: manifest.to_owned(),
        files: 0,
        bytes: 0,
        files_in_archive: 0,
        complete: false,
        missing: Vec::new(),
        error: None,
        coverage: Vec::new(),
    };
    let loaded = match ManifestSource::parse(&dir.join(manifest).display().to_string(), &StoreOptions::default()) {
        Ok(source) => source.load(None).await.map_err(|e| e.to_string()),
        Err(err) => Err(err.to_string()),
    };
    let manifest = match loaded {
        Ok(m) => m,
        Err(err) => {
            status.error = Some(err);
            return status;
        }
    };
    status.files = manifest.files.len() as u64;
    status.bytes = manifest.total_bytes();
    let dir = dir.to_path_buf();
    let (present, missing) = tokio::task::spawn_blocking(move || {
        let mut present = 0u64;
        let mut missing = Vec::new();
        for file in &manifest.files {
            let held = depot_fs::validate(&file.name).is_ok()
                && std::fs::metadata(dir.join(&file.name)).is_ok_and(|m| m.is_file() && m.len() == file.size);
            if held {
                present += 1;
            } else if missing.len() < MAX_MISSING {
                missing.push(file.name.clone());
            }
        }
        (present, missing)
    })
    .await
    .unwrap_or_default();
    status.files_in_archive = present;
    status.complete = present == status.files;
    status.missing = missing;
    status
}
