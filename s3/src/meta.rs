//! What Depot remembers about an object beyond its bytes.
//!
//! Stored as JSON in the file's `user.depot` extended attribute, set on the temp file before
//! it is renamed into place, so the record and the bytes appear together or not at all. The
//! record carries the size and mtime it describes; a file changed behind Depot's back (or
//! placed there by hand) has no valid record and gets a [`ObjectMeta::synthesized`] one.
//!
//! ETags are what S3 gives: the hex MD5 of the bytes for a PUT, a copy or a part, and
//! `md5(part md5s)-N` for a multipart object. A file placed by hand has no record, and
//! hashing it at every listing would be too slow, so it gets a stable 16-hex-digit tag from
//! (size, mtime, inode): deliberately not MD5-shaped, so no client compares it with an MD5.

use std::collections::BTreeMap;
use std::fs::{File, Metadata};
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use xattr::FileExt;

/// The extended attribute holding the record.
const XATTR: &str = "user.depot";

/// A record longer than this that the file system refuses (`E2BIG`, `ENOSPC`) is too large for
/// it, not a sign of a full disk.
const RECORD_ROOM: usize = 3500;

/// Set once a file system refused extended attributes, so the warning is logged once.
static XATTR_UNSUPPORTED: AtomicBool = AtomicBool::new(false);

/// The metadata of one object (or one multipart part).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectMeta {
    /// Size the record describes; a mismatch means the file changed since.
    pub size: u64,
    /// Modification time (ns since the epoch) the record describes.
    pub mtime_ns: i128,
    /// The ETag without quotes.
    pub etag: String,
    /// Standard headers that round-trip.
    #[serde(default, skip_serializing_if = "Headers::is_empty")]
    pub headers: Headers,
    /// `x-amz-meta-*` user metadata (keys without the prefix, lowercase).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub user: BTreeMap<String, String>,
    /// The object's checksum (algorithm, base64 value), as S3 reports it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checksum: Option<StoredChecksum>,
    /// Object tags (key → value), as PutObjectTagging or `x-amz-tagging` set them.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tags: BTreeMap<String, String>,
    /// Number of parts, for an object made by a multipart upload.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parts: Option<u32>,
    /// The parts' sizes in order, as runs of `[size, count]` (a fixed-size upload is one or
    /// two runs), so GET/HEAD with `partNumber` can find a part's bytes. Empty for objects
    /// written before Depot kept them, or whose sizes vary too much to keep in the record
    /// ([`PartRuns::MAX_RUNS`]).
    #[serde(default, skip_serializing_if = "PartRuns::is_empty")]
    pub part_runs: PartRuns,
}

/// The sizes of a multipart object's parts, run-length encoded.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct PartRuns(Vec<(u64, u32)>);

impl PartRuns {
    /// Runs kept at most: ~30 bytes each in the record, which has room for a few KiB.
    pub const MAX_RUNS: usize = 32;

    /// The runs of `sizes`; empty when they need more than [`Self::MAX_RUNS`].
    pub fn of(sizes: impl IntoIterator<Item = u64>) -> Self {
        let mut runs: Vec<(u64, u32)> = Vec::new();
        for size in sizes {
            match runs.last_mut() {
                Some((last, count)) if *last == size => *count += 1,
                _ => runs.push((size, 1)),
            }
            if runs.len() > Self::MAX_RUNS {
                return Self::default();
            }
        }
        Self(runs)
    }

    /// Whether the sizes were not kept.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The byte range of part `number` (1-based, in the order the parts were completed), or
    /// `None` past the last part or when the sizes were not kept.
    pub fn range(&self, number: u32) -> Option<std::ops::Range<u64>> {
        let mut start = 0u64;
        let mut before = 0u32; // parts ahead of the current run
        for &(size, count) in &self.0 {
            if number > before && number <= before + count {
                let at = start + u64::from(number - before - 1) * size;
                return Some(at..at + size);
            }
            start += size * u64::from(count);
            before += count;
        }
        None
    }
}

/// The standard headers S3 stores with an object.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Headers {
    /// `Content-Type`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
    /// `Content-Encoding`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_encoding: Option<String>,
    /// `Content-Disposition`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_disposition: Option<String>,
    /// `Content-Language`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_language: Option<String>,
    /// `Cache-Control`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_control: Option<String>,
    /// `Expires`, as an HTTP date.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires: Option<String>,
}

impl Headers {
    /// `Content-Encoding` as S3 stores it: without `aws-chunked`, which only describes how the
    /// request body was framed (SigV4 streaming, trailing checksums), not the object.
    pub fn content_encoding_of(value: Option<&str>) -> Option<String> {
        let kept: Vec<&str> = value?
            .split(',')
            .map(str::trim)
            .filter(|t| !t.is_empty() && !t.eq_ignore_ascii_case("aws-chunked"))
            .collect();
        (!kept.is_empty()).then(|| kept.join(", "))
    }

    /// The `Expires` date to keep, from a request's parsed header.
    pub fn expires_of(expires: Option<&s3s::dto::Timestamp>) -> Option<String> {
        let mut text = Vec::new();
        expires?.format(s3s::dto::TimestampFormat::HttpDate, &mut text).ok()?;
        String::from_utf8(text).ok()
    }

    /// The kept `Expires` date, for a response.
    pub fn expires(&self) -> Option<s3s::dto::Timestamp> {
        s3s::dto::Timestamp::parse(s3s::dto::TimestampFormat::HttpDate, self.expires.as_deref()?).ok()
    }
}

impl Headers {
    fn is_empty(&self) -> bool {
        self == &Self::default()
    }
}

/// A checksum as S3 reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredChecksum {
    /// `CRC32`, `CRC32C`, `CRC64NVME`, `SHA1` or `SHA256`.
    pub algorithm: String,
    /// Base64 digest; composite (multipart) values end in `-N`.
    pub value: String,
    /// `FULL_OBJECT` or `COMPOSITE`.
    pub kind: String,
}

/// Nanoseconds since the epoch of a file's mtime.
pub fn mtime_ns(meta: &Metadata) -> i128 {
    i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec())
}

impl ObjectMeta {
    /// Reads the record of the file at `path` whose metadata is `fs_meta`; `None` when there
    /// is none or it describes other bytes.
    pub fn load(path: &Path, fs_meta: &Metadata) -> Option<Self> {
        let raw = xattr::get(path, XATTR).ok()??;
        let meta: Self = serde_json::from_slice(&raw).ok()?;
        (meta.size == fs_meta.len() && meta.mtime_ns == mtime_ns(fs_meta)).then_some(meta)
    }

    /// The record of a file Depot did not write: a stable ETag from (size, mtime, inode),
    /// no headers or checksum.
    pub fn synthesized(fs_meta: &Metadata) -> Self {
        let mut hash = Sha256::new();
        hash.update(fs_meta.len().to_le_bytes());
        hash.update(mtime_ns(fs_meta).to_le_bytes());
        hash.update(fs_meta.ino().to_le_bytes());
        let digest = hash.finalize();
        Self { size: fs_meta.len(), mtime_ns: mtime_ns(fs_meta), etag: hex::encode(&digest[..8]), ..Self::default() }
    }

    /// The record of `path`, real or synthesized.
    pub fn load_or_synthesize(path: &Path, fs_meta: &Metadata) -> Self {
        Self::load(path, fs_meta).unwrap_or_else(|| Self::synthesized(fs_meta))
    }

    /// Binds the record to `file`'s current size and mtime and stores it on the file. Call
    /// after the last data write and before the commit. A file system without extended
    /// attributes is tolerated (warned about once): the object then behaves like one placed
    /// by hand.
    ///
    /// # Errors
    /// [`io::ErrorKind::FileTooLarge`] when the record does not fit in the file system's
    /// extended attributes; any other I/O error.
    pub fn store(&mut self, file: &File) -> io::Result<()> {
        let fs_meta = file.metadata()?;
        self.size = fs_meta.len();
        self.mtime_ns = mtime_ns(&fs_meta);
        let json = serde_json::to_vec(self).map_err(io::Error::other)?;
        match file.set_xattr(XATTR, &json) {
            Ok(()) => Ok(()),
            // ext4 keeps at most one block (4 KiB) of attributes per file: S3's limits (2 KB of
            // user metadata plus 10 tags of up to 384 bytes) can add up to more.
            Err(err) if matches!(err.raw_os_error(), Some(7 | 28)) && json.len() > RECORD_ROOM => Err(io::Error::new(
                io::ErrorKind::FileTooLarge,
                format!("the record takes {} bytes, more than the file system keeps with a file", json.len()),
            )),
            Err(err) if err.kind() == io::ErrorKind::Unsupported || err.raw_os_error() == Some(95) => {
                if !XATTR_UNSUPPORTED.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        "the archive's file system has no user extended attributes: \
                         Content-Type, user metadata and checksums will not be kept"
                    );
                }
                Ok(())
            }
            Err(err) => Err(err),
        }
    }

    /// Last-Modified: the file's mtime.
    pub fn last_modified(&self) -> SystemTime {
        let secs = u64::try_from(self.mtime_ns.div_euclid(1_000_000_000)).unwrap_or(0);
        let nanos = u32::try_from(self.mtime_ns.rem_euclid(1_000_000_000)).unwrap_or(0);
        SystemTime::UNIX_EPOCH + std::time::Duration::new(secs, nanos)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn part_runs_locate_every_part() {
        let mib = 1u64 << 20;
        let fixed = PartRuns::of([8 * mib, 8 * mib, 8 * mib, 3]);
        assert_eq!(fixed.0, [(8 * mib, 3), (3, 1)]);
        assert_eq!(fixed.range(1), Some(0..8 * mib));
        assert_eq!(fixed.range(3), Some(16 * mib..24 * mib));
        assert_eq!(fixed.range(4), Some(24 * mib..24 * mib + 3));
        assert_eq!(fixed.range(5), None);
        assert_eq!(fixed.range(0), None);
        let varied = PartRuns::of([5 * mib, 6 * mib, 6 * mib, 5 * mib]);
        assert_eq!(varied.range(4), Some(17 * mib..22 * mib));
        // Too varied to keep: no runs, so no part can be located.
        let chaos = PartRuns::of((0..100).map(|i| 5 * mib + i));
        assert!(chaos.is_empty());
        assert_eq!(chaos.range(1), None);
        let json = serde_json::to_string(&fixed).unwrap();
        assert_eq!(json, format!("[[{},3],[3,1]]", 8 * mib));
    }

    #[test]
    fn aws_chunked_is_not_part_of_the_stored_content_encoding() {
        assert_eq!(Headers::content_encoding_of(Some("gzip, aws-chunked")).as_deref(), Some("gzip"));
        assert_eq!(Headers::content_encoding_of(Some("aws-chunked")), None);
        assert_eq!(Headers::content_encoding_of(Some("aws-chunked,br")).as_deref(), Some("br"));
        assert_eq!(Headers::content_encoding_of(None), None);
    }
    use std::io::Write;

    #[test]
    fn a_record_round_trips_and_is_dropped_when_the_file_changes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("obj");
        let mut file = File::create(&path).unwrap();
        file.write_all(b"hello").unwrap();
        let mut meta = ObjectMeta { etag: "abc".into(), ..ObjectMeta::default() };
        meta.headers.content_type = Some("text/plain".into());
        meta.user.insert("owner".into(), "me".into());
        meta.store(&file).unwrap();
        drop(file);

        let loaded = ObjectMeta::load(&path, &path.metadata().unwrap()).expect("record");
        assert_eq!(loaded, meta);
        assert_eq!(loaded.size, 5);

        std::thread::sleep(std::time::Duration::from_millis(10));
        std::fs::OpenOptions::new().append(true).open(&path).unwrap().write_all(b"!").unwrap();
        let fs_meta = path.metadata().unwrap();
        assert!(ObjectMeta::load(&path, &fs_meta).is_none());
        let synthesized = ObjectMeta::load_or_synthesize(&path, &fs_meta);
        assert_eq!(synthesized.size, 6);
        assert_eq!(synthesized.etag.len(), 16);
        assert_eq!(synthesized, ObjectMeta::synthesized(&fs_meta), "stable");
    }
}
