//! `verify`: which live nodes hold each file of a backup, with the right size and SHA-256,
//! without moving any data (every node answers `Stat` from its digest cache).
//!
//! This answers BR's "checksum fails because the files are on other nodes" before a restore:
//! a file held by no node is listed by name.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use depot_proto::agent::StatRequest;
use futures::StreamExt;
use serde::Serialize;

use crate::archive::ArchiveCopy;
use crate::manifest::{FileEntry, Manifest};
use crate::peer::{Peer, PeerDirectory, is_transient};
use crate::registry::{RegistryError, status_message};
use crate::storage::{Storage, StoreError};

/// Attempts of one `Stat` call before the node is considered unreachable.
const STAT_ATTEMPTS: u32 = 3;

/// One file and the nodes holding it.
#[derive(Debug, Clone, Serialize)]
pub struct FileHolders {
    /// The file.
    pub name: String,
    /// Its size per the manifest.
    pub size: u64,
    /// Nodes holding it with the right size and digest.
    pub nodes: Vec<String>,
    /// Nodes holding a file by that name with another size or digest.
    pub mismatched: Vec<String>,
    /// What the archive holds of it, with `--archive`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub archive: Option<ArchiveCopy>,
}

/// The archive's part of a [`VerifyReport`].
#[derive(Debug, Clone, Serialize)]
pub struct ArchiveSummary {
    /// The archive.
    pub location: String,
    /// Files it holds with the right size and stored digest.
    pub verified: usize,
    /// Files it holds with the right size but no stored digest.
    pub size_only: usize,
    /// Files no live node holds, which the archive does.
    pub only_in_archive: Vec<String>,
}

/// A node that could not be asked.
#[derive(Debug, Clone, Serialize)]
pub struct NodeProblem {
    /// The node.
    pub node_id: String,
    /// What went wrong.
    pub error: String,
}

/// What `verify` found. Serialized as the `--json` output.
#[derive(Debug, Clone, Serialize)]
pub struct VerifyReport {
    /// Where the manifest came from.
    pub manifest: String,
    /// The live nodes asked.
    pub nodes: Vec<String>,
    /// Every file of the manifest, with its holders.
    pub files: Vec<FileHolders>,
    /// Files no live node holds correctly (and, with `--archive`, the archive neither).
    pub missing: Vec<String>,
    /// With `--archive`: the archive, and the files only it holds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub archive: Option<ArchiveSummary>,
    /// Nodes that could not be asked (their files may be listed as missing because of it).
    pub unreachable: Vec<NodeProblem>,
    /// Node id -> files it holds correctly.
    pub per_node: BTreeMap<String, u64>,
    /// Wall time.
    pub seconds: f64,
}

/// Asks every live node about every file of `manifest`, `concurrency` calls at a time.
///
/// # Errors
/// The [`RegistryError`] of listing the nodes.
pub async fn verify(
    manifest: &Manifest,
    directory: &PeerDirectory,
    concurrency: usize,
    rpc_timeout: Duration,
) -> Result<VerifyReport, RegistryError> {
    let started = Instant::now();
    let peers = directory.peers(true).await?;
    let dead: Arc<Vec<(AtomicBool, std::sync::Mutex<Option<String>>)>> =
        Arc::new(peers.iter().map(|_| (AtomicBool::new(false), std::sync::Mutex::new(None))).collect());
    let jobs = manifest.files.iter().enumerate().flat_map(|(fi, _)| (0..peers.len()).map(move |pi| (fi, pi)));
    let answers = futures::stream::iter(jobs)
        .map(|(fi, pi)| {
            let peer = &peers[pi];
            let entry = &manifest.files[fi];
            let dead = dead.clone();
            async move {
                if dead[pi].0.load(Ordering::Relaxed) {
                    return (fi, pi, Held::Unknown);
                }
                let held = stat(peer, entry, rpc_timeout).await;
                if let Held::Unreachable(err) = &held {
                    dead[pi].0.store(true, Ordering::Relaxed);
                    let mut slot = dead[pi].1.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                    slot.get_or_insert_with(|| err.clone());
                }
                (fi, pi, held)
            }
        })
        .buffer_unordered(concurrency.max(1));
    let mut files: Vec<FileHolders> = manifest
        .files
        .iter()
        .map(|f| FileHolders {
            name: f.name.clone(),
            size: f.size,
            nodes: Vec::new(),
            mismatched: Vec::new(),
            archive: None,
        })
        .collect();
    let mut answers = std::pin::pin!(answers);
    while let Some((fi, pi, held)) = answers.next().await {
        let node = peers[pi].node_id.clone();
        match held {
            Held::Right => files[fi].nodes.push(node),
            Held::Wrong => files[fi].mismatched.push(node),
            Held::No | Held::Unknown | Held::Unreachable(_) => {}
        }
    }
    let mut per_node: BTreeMap<String, u64> = peers.iter().map(|p| (p.node_id.clone(), 0)).collect();
    for file in &mut files {
        file.nodes.sort();
        file.mismatched.sort();
        for node in &file.nodes {
            *per_node.entry(node.clone()).or_default() += 1;
        }
    }
    let missing = files.iter().filter(|f| f.nodes.is_empty()).map(|f| f.name.clone()).collect();
    let unreachable = peers
        .iter()
        .zip(dead.iter())
        .filter(|(_, (flag, _))| flag.load(Ordering::Relaxed))
        .map(|(peer, (_, err))| NodeProblem {
            node_id: peer.node_id.clone(),
            error: err.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone().unwrap_or_default(),
        })
        .collect();
    Ok(VerifyReport {
        manifest: manifest.source.clone(),
        nodes: peers.iter().map(|p| p.node_id.clone()).collect(),
        files,
        missing,
        archive: None,
        unreachable,
        per_node,
        seconds: started.elapsed().as_secs_f64(),
    })
}

impl VerifyReport {
    /// Adds what `archive` holds of each file (one HEAD each, `concurrency` at a time); a file
    /// the archive holds is no longer missing.
    ///
    /// # Errors
    /// The archive's [`StoreError`].
    pub async fn add_archive(
        &mut self,
        manifest: &Manifest,
        archive: &Storage,
        concurrency: usize,
    ) -> Result<(), StoreError> {
        let states: Vec<Result<ArchiveCopy, StoreError>> = futures::stream::iter(&manifest.files)
            .map(|entry| crate::archive::copy_state(archive, entry))
            .buffered(concurrency.max(1))
            .collect()
            .await;
        let mut summary =
            ArchiveSummary { location: archive.describe(""), verified: 0, size_only: 0, only_in_archive: Vec::new() };
        for (file, state) in self.files.iter_mut().zip(states) {
            let state = state?;
            file.archive = Some(state);
            summary.verified += usize::from(state == ArchiveCopy::Verified);
            summary.size_only += usize::from(state == ArchiveCopy::SizeOnly);
            if file.nodes.is_empty() && matches!(state, ArchiveCopy::Verified | ArchiveCopy::SizeOnly) {
                summary.only_in_archive.push(file.name.clone());
            }
        }
        self.missing.retain(|name| !summary.only_in_archive.contains(name));
        self.archive = Some(summary);
        Ok(())
    }
}

/// One node's answer about one file.
enum Held {
    /// Right size and digest.
    Right,
    /// A file by that name, but another version.
    Wrong,
    /// Not there (or the node does not implement `NodeAgent`, or refused).
    No,
    /// The node was already found unreachable; not asked.
    Unknown,
    /// The node could not be reached.
    Unreachable(String),
}

async fn stat(peer: &Peer, entry: &FileEntry, rpc_timeout: Duration) -> Held {
    let Some(mut client) = peer.client() else {
        return Held::Unreachable(format!("unusable address {:?}", peer.address));
    };
    let mut last = String::new();
    for attempt in 0..STAT_ATTEMPTS {
        if attempt > 0 {
            tokio::time::sleep(Duration::from_millis(100 << attempt)).await;
        }
        let call = client.stat(StatRequest { path: entry.name.clone() });
        // Hashing a large file the first time can take a while: give Stat more time than a
        // plain existence check.
        match tokio::time::timeout(rpc_timeout * 12, call).await {
            Err(_) => last = "Stat timed out".into(),
            Ok(Ok(response)) => {
                let r = response.into_inner();
                if !r.exists {
                    return Held::No;
                }
                let digest_ok = entry.sha256.is_none_or(|want| r.sha256 == want);
                return if r.size == entry.size && digest_ok { Held::Right } else { Held::Wrong };
            }
            Ok(Err(status)) if is_transient(&status) => last = status_message(&status),
            Ok(Err(_)) => return Held::No,
        }
    }
    Held::Unreachable(last)
}

impl std::fmt::Display for VerifyReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "verify: {} file(s) in {}, {} live node(s): {}",
            self.files.len(),
            self.manifest,
            self.nodes.len(),
            self.nodes.join(", ")
        )?;
        for (node, count) in &self.per_node {
            writeln!(f, "  {node}: holds {count} file(s)")?;
        }
        for file in self.files.iter().filter(|f| !f.mismatched.is_empty()) {
            writeln!(f, "  {}: a different version on {}", file.name, file.mismatched.join(", "))?;
        }
        for problem in &self.unreachable {
            writeln!(f, "  could not ask {}: {}", problem.node_id, problem.error)?;
        }
        if let Some(archive) = &self.archive {
            writeln!(
                f,
                "  archive {}: holds {} file(s) verified by digest, {} by size only; {} held only there",
                archive.location,
                archive.verified,
                archive.size_only,
                archive.only_in_archive.len()
            )?;
        }
        if self.missing.is_empty() {
            let or_archive = if self.archive.is_some() { " or the archive" } else { "" };
            write!(f, "  every file is held by at least one live node{or_archive}")
        } else {
            writeln!(f, "  held by no live node: {}", self.missing.len())?;
            let last = self.missing.len() - 1;
            for (i, name) in self.missing.iter().enumerate() {
                write!(f, "    {name}")?;
                if i != last {
                    writeln!(f)?;
                }
            }
            Ok(())
        }
    }
}
