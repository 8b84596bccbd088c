//! The archive as a source: `fetch --archive URL` reads a file no live node holds from the
//! archive `collect` filled (verified by size and SHA-256 before it is installed, as a file
//! from a peer is), and `verify --archive URL` reports which files the archive holds.

use depot_fs::Root;
use futures::StreamExt;
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::digest::Sha256Digest;
use crate::manifest::FileEntry;
use crate::peer::{Fetched, Progress};
use crate::storage::{Storage, StoreError};

/// The node id under which files read from the archive are reported.
pub const ARCHIVE_SOURCE: &str = "archive";

/// Why a file could not be read from the archive.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ArchiveError {
    /// The archive does not hold it.
    #[error("{0} does not exist")]
    Absent(String),
    /// The archive's copy fails the manifest's size or SHA-256.
    #[error("{location}: the archive's copy fails the manifest's size/sha256 check ({size} bytes)")]
    Mismatch {
        /// The object.
        location: String,
        /// Bytes read.
        size: u64,
    },
    /// The archive failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Writing locally failed.
    #[error("cannot write {name} under {root}: {source}")]
    Local {
        /// The file.
        name: String,
        /// The root.
        root: String,
        /// The error.
        source: std::io::Error,
    },
}

/// Reads `entry` from `archive` into `root` (a temp file, checked, then committed).
///
/// # Errors
/// [`ArchiveError`]; nothing is left under the file's name on error.
pub async fn fetch(
    archive: &Storage,
    root: &Root,
    entry: &FileEntry,
    progress: &dyn Progress,
) -> Result<Fetched, ArchiveError> {
    let local = |source: std::io::Error| ArchiveError::Local {
        name: entry.name.clone(),
        root: root.dir().display().to_string(),
        source,
    };
    let dest = root.resolve(&entry.name).map_err(|err| local(std::io::Error::other(err)))?;
    let mut stream = match archive.get_stream(&entry.name, 0).await {
        Err(StoreError::NotFound { location }) => return Err(ArchiveError::Absent(location)),
        other => other?,
    };
    let mut file = Some(root.temp_file().map_err(local)?);
    let mut hasher = Sha256::new();
    let mut size = 0u64;
    let mut batch: Vec<u8> = Vec::with_capacity(1 << 20);
    let flush = async |batch: &mut Vec<u8>, file: &mut Option<depot_fs::TempFile>| -> Result<(), ArchiveError> {
        let data = std::mem::take(batch);
        let mut taken = file.take().expect("the temp file is put back after each write");
        let (taken, result) = tokio::task::spawn_blocking(move || {
            let result = std::io::Write::write_all(&mut taken, &data);
            (taken, result)
        })
        .await
        .map_err(|err| local(std::io::Error::other(err)))?;
        *file = Some(taken);
        result.map_err(local)
    };
    while let Some(chunk) = stream.next().await {
        let chunk = chunk?;
        size += chunk.len() as u64;
        if size > entry.size {
            break;
        }
        hasher.update(&chunk);
        progress.advance(chunk.len() as u64);
        batch.extend_from_slice(&chunk);
        if batch.len() >= 1 << 20 {
            flush(&mut batch, &mut file).await?;
        }
    }
    let digest: Sha256Digest = hasher.finalize().into();
    if size != entry.size || entry.sha256.is_some_and(|want| want != digest) {
        progress.rewind(size.min(entry.size));
        return Err(ArchiveError::Mismatch { location: archive.describe(&entry.name), size });
    }
    flush(&mut batch, &mut file).await?;
    let file = file.expect("the temp file is kept until committed");
    tokio::task::spawn_blocking(move || file.commit(&dest))
        .await
        .map_err(|err| local(std::io::Error::other(err)))?
        .map_err(|err| local(std::io::Error::other(err)))?;
    Ok(Fetched { node_id: ARCHIVE_SOURCE.to_owned(), size, sha256: digest, bytes_received: size })
}

/// What the archive holds of one file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ArchiveCopy {
    /// Right size and the SHA-256 stored with it (by `collect`) matches.
    Verified,
    /// Right size; no digest stored with it (put there by another tool), so only the size is
    /// known to match — `fetch --archive` still checks the bytes before installing them.
    SizeOnly,
    /// Another size or digest.
    Wrong,
    /// Not there.
    Absent,
}

/// What the archive holds of `entry`: one HEAD, no data moved.
///
/// # Errors
/// [`StoreError`].
pub async fn copy_state(archive: &Storage, entry: &FileEntry) -> Result<ArchiveCopy, StoreError> {
    let Some(head) = archive.head(&entry.name).await? else {
        return Ok(ArchiveCopy::Absent);
    };
    if head.size != entry.size {
        return Ok(ArchiveCopy::Wrong);
    }
    Ok(match (entry.sha256, head.sha256) {
        (Some(want), Some(stored)) if stored.eq_ignore_ascii_case(&hex::encode(want)) => ArchiveCopy::Verified,
        (Some(_), Some(_)) => ArchiveCopy::Wrong,
        (None, Some(_)) => ArchiveCopy::Verified,
        (_, None) => ArchiveCopy::SizeOnly,
    })
}
