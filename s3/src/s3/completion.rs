//! Idempotent CompleteMultipartUpload: what a completed upload leaves behind so that a retried
//! Complete gets the same answer.
//!
//! When the reply to a successful Complete is lost, the SDK sends it again; S3 answers the
//! same result, and so must Depot, or an upload that succeeded is reported as failed. After
//! the object is installed, a small record `.depot/completed/<upload id>.json` (bucket, key,
//! the part list, ETag, checksum, location, and the installed file's identity) is written
//! durably before the upload's parts are removed. A Complete for an id with no upload left
//! is answered from the record when the part list is the same and the key still holds that
//! very file (same size, mtime and inode); otherwise it gets S3's `NoSuchUpload`. Records are
//! kept at least [`KEEP`] and swept after that once their object has changed.

use std::io::{self, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use s3s::dto::{CompleteMultipartUploadInput, CompleteMultipartUploadOutput, CompletedPart, ETag};
use serde::{Deserialize, Serialize};

use super::Depot;
use super::put::set_checksum_fields;
use crate::error::{Error, Result};
use crate::meta::{StoredChecksum, mtime_ns};

/// Left as they are in a key within `Location`: unreserved characters and `/`.
const KEY_ENCODE: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'_').remove(b'.').remove(b'~').remove(b'/');

/// How long a record is kept at least.
pub const KEEP: Duration = Duration::from_secs(24 * 60 * 60);

/// What a completed upload answered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Completion {
    /// The bucket and key it completed.
    pub bucket: String,
    /// The object's key.
    pub key: String,
    /// The part list it was completed with: (number, ETag without quotes).
    pub parts: Vec<(i32, String)>,
    /// The object's ETag without quotes.
    pub etag: String,
    /// The object's checksum, when the upload had an algorithm.
    pub checksum: Option<StoredChecksum>,
    /// The `Location` answered.
    pub location: String,
    /// The installed file: size, mtime (ns) and inode. A change means the key was overwritten.
    pub size: u64,
    /// See `size`.
    pub mtime_ns: i128,
    /// See `size`.
    pub inode: u64,
    /// Seconds since the epoch.
    pub completed_at: u64,
}

/// The part list of a Complete request as recorded: numbers and unquoted ETags.
pub fn part_list(parts: &[CompletedPart]) -> Vec<(i32, String)> {
    parts
        .iter()
        .map(|p| (p.part_number.unwrap_or(0), p.e_tag.as_ref().map(|e| e.value().to_owned()).unwrap_or_default()))
        .collect()
}

fn dir(s3: &Depot) -> PathBuf {
    s3.archive.root().state_dir().join("completed")
}

fn now_secs() -> u64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

impl Completion {
    /// The record of an upload of `bucket`/`key` completed with `parts` into an object with
    /// `etag` and `checksum`; [`record`] binds it to the installed file.
    pub fn new(
        s3: &Depot,
        bucket: &str,
        key: &str,
        parts: &[CompletedPart],
        etag: String,
        checksum: Option<StoredChecksum>,
    ) -> Self {
        let location = format!("{}/{bucket}/{}", s3.endpoint, utf8_percent_encode(key, KEY_ENCODE));
        Self {
            bucket: bucket.to_owned(),
            key: key.to_owned(),
            parts: part_list(parts),
            etag,
            checksum,
            location,
            size: 0,
            mtime_ns: 0,
            inode: 0,
            completed_at: now_secs(),
        }
    }

    /// The answer this record gives.
    pub fn output(&self) -> CompleteMultipartUploadOutput {
        let mut output = CompleteMultipartUploadOutput {
            bucket: Some(self.bucket.clone()),
            key: Some(self.key.clone()),
            e_tag: Some(ETag::Strong(self.etag.clone())),
            location: Some(self.location.clone()),
            ..Default::default()
        };
        if let Some(checksum) = &self.checksum {
            set_checksum_fields(checksum, &mut output);
        }
        output
    }

    /// Whether `path` still holds the object this record describes.
    fn still_installed(&self, path: &Path) -> bool {
        std::fs::metadata(path)
            .is_ok_and(|m| m.len() == self.size && mtime_ns(&m) == self.mtime_ns && m.ino() == self.inode)
    }
}

/// Binds `completion` to the object just installed at `path` and writes it as the record of
/// `upload_id` durably (temp file, fsync, rename, directory fsync), then sweeps expired
/// records. Call after the object is installed, before the parts are removed.
///
/// # Errors
/// Write errors.
pub fn record(s3: &Depot, upload_id: &str, path: &Path, mut completion: Completion) -> Result<Completion> {
    let installed = std::fs::metadata(path).map_err(Error::io(path))?;
    completion.size = installed.len();
    completion.mtime_ns = mtime_ns(&installed);
    completion.inode = installed.ino();
    let dir = dir(s3);
    let mut temp = s3.archive.temp_file()?;
    let json = serde_json::to_vec(&completion).map_err(|e| Error::io(temp.path())(io::Error::other(e)))?;
    temp.write_all(&json).map_err(Error::io(temp.path()))?;
    let path = dir.join(format!("{upload_id}.json"));
    temp.commit(&path).map_err(|e| Error::io(&path)(io::Error::other(e)))?;
    sweep(s3, &dir);
    Ok(completion)
}

/// Removes records older than [`KEEP`] whose object has changed since.
fn sweep(s3: &Depot, dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    let now = now_secs();
    for entry in entries.flatten() {
        let Ok(raw) = std::fs::read(entry.path()) else { continue };
        let Ok(old) = serde_json::from_slice::<Completion>(&raw) else { continue };
        if now.saturating_sub(old.completed_at) < KEEP.as_secs() {
            continue;
        }
        let installed =
            s3.archive.bucket(&old.bucket).and_then(|b| b.path_of(&old.key)).is_ok_and(|p| old.still_installed(&p));
        if !installed {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// Whether `upload_id` has a completion record (its object was installed).
pub fn recorded(s3: &Depot, upload_id: &str) -> bool {
    dir(s3).join(format!("{upload_id}.json")).exists()
}

/// Answers a Complete for an upload id that has no upload left, from its record: the same
/// result when the part list matches and the key still holds the object, else `NoSuchUpload`.
///
/// # Errors
/// [`Error::NoSuchUpload`], with a message saying why a record did not apply.
pub fn replay(s3: &Depot, input: &CompleteMultipartUploadInput) -> Result<CompleteMultipartUploadOutput> {
    let id = &input.upload_id;
    let missing = || Error::NoSuchUpload { upload_id: id.clone() };
    let otherwise = |why| Error::CompletedOtherwise { upload_id: id.clone(), why };
    // Ids are ours (uuid hex); anything else cannot name a record.
    if id.is_empty() || id.len() > 64 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(missing());
    }
    let Ok(raw) = std::fs::read(dir(s3).join(format!("{id}.json"))) else {
        return Err(missing());
    };
    let done: Completion = serde_json::from_slice(&raw).map_err(|_| missing())?;
    if done.bucket != input.bucket || done.key != input.key {
        return Err(missing());
    }
    let requested = part_list(input.multipart_upload.as_ref().and_then(|m| m.parts.as_deref()).unwrap_or_default());
    if requested != done.parts {
        return Err(otherwise("with a different part list"));
    }
    let path = s3.archive.bucket(&input.bucket)?.path_of(&input.key)?;
    if !done.still_installed(&path) {
        return Err(otherwise("but its key has been overwritten or deleted since"));
    }
    Ok(done.output())
}
