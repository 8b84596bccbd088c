//! PutObject, and [`install`]: how every new object (PUT, copy, completed upload) lands.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use depot_fs::{CommitError, TempFile};
use s3s::dto::*;
use s3s::{S3Request, S3Response};

use super::{Depot, respond};
use crate::body::{self, Received, Sink as _};
use crate::digest::{Algorithm, Digests, Expected};
use crate::error::{Error, Result, write_error};
use crate::meta::{ObjectMeta, StoredChecksum};

/// S3's limit on user metadata (keys and values together).
const MAX_USER_METADATA: usize = 2 * 1024;

pub async fn put_object(s3: &Depot, req: S3Request<PutObjectInput>) -> Result<S3Response<PutObjectOutput>> {
    let S3Request { input, headers, trailing_headers, .. } = req;
    let bucket = s3.archive.bucket(&input.bucket)?;
    let path = bucket.path_of(&input.key)?;
    body::check_declared_length(input.content_length)?;
    if let Some(size) = input.content_length.filter(|n| *n > 0)
        && crate::marker::dir_key(&input.key).is_some()
    {
        return Err(non_empty_marker(&input.key, size as u64));
    }
    let condition = WriteCondition { if_match: input.if_match.clone(), if_none_match: input.if_none_match.clone() };
    // Early, so a write that cannot succeed is refused before its body; again at the rename.
    condition.check(&path, &input.key)?;
    let expected = Expected::from_headers(&headers)?;
    let mut meta = ObjectMeta {
        headers: stored_headers!(input),
        user: user_metadata(input.metadata)?,
        tags: super::tagging::from_header(input.tagging.as_deref())?,
        ..ObjectMeta::default()
    };

    let with_algorithm = expected.algorithm().is_some();
    let archive = Arc::clone(&s3.archive);
    let (size, checksum, meta) = match body::start(input.body, expected.hasher()).await? {
        // A small body: checked, written and installed in one blocking call.
        body::Start::Whole(whole) => {
            let trailers = trailing_headers.and_then(|t| t.take());
            tokio::task::spawn_blocking(move || -> Result<_> {
                let (chunks, size, digests) = whole.finish();
                let checksum = seal(&mut meta, &expected, &digests, trailers.as_ref())?;
                let mut temp = archive.temp_file()?;
                temp.write_batch(&chunks).map_err(|e| write_error(&input.key, temp.path().to_path_buf(), e))?;
                install_now(temp, meta.clone(), &path, input.key, &condition)?;
                Ok((size, checksum, meta))
            })
            .await
            .map_err(|e| Error::io("<commit task>")(std::io::Error::other(e)))??
        }
        longer => {
            let temp = move || {
                let temp = archive.temp_file()?;
                let path = temp.path().to_path_buf();
                Ok((temp, path))
            };
            let Received { file, size, digests } = longer.receive(temp, &input.key).await?;
            let trailers = trailing_headers.and_then(|t| t.take());
            let checksum = seal(&mut meta, &expected, &digests, trailers.as_ref())?;
            install(file, meta.clone(), path, input.key, condition).await?;
            (size, checksum, meta)
        }
    };
    s3.stats.object_written(size);

    let mut output =
        PutObjectOutput { e_tag: Some(ETag::Strong(meta.etag)), size: Some(size as i64), ..Default::default() };
    if with_algorithm {
        set_checksum_fields(&checksum, &mut output);
    }
    Ok(respond(output))
}

/// Checks a received body's digests against what the client sent and records its ETag and
/// checksum in `meta`.
///
/// # Errors
/// [`Error::BadDigest`] and the other checksum errors of [`Expected::verify`].
fn seal(
    meta: &mut ObjectMeta,
    expected: &Expected,
    digests: &Digests,
    trailers: Option<&http::HeaderMap>,
) -> Result<StoredChecksum> {
    let checksum = expected.verify(digests, trailers)?;
    meta.etag = digests.etag();
    meta.checksum = Some(checksum.clone());
    Ok(checksum)
}

/// A write's `If-Match` / `If-None-Match` (S3's conditional writes).
#[derive(Debug, Clone, Default)]
pub struct WriteCondition {
    /// Write only over an object with this ETag (`*`: over any object); none there: 404.
    pub if_match: Option<ETagCondition>,
    /// Write only if no object (`*`), or none with this ETag, is there: else 412.
    pub if_none_match: Option<ETagCondition>,
}

impl WriteCondition {
    fn is_empty(&self) -> bool {
        self.if_match.is_none() && self.if_none_match.is_none()
    }

    /// Checks the condition against the object at `path` now.
    ///
    /// # Errors
    /// [`Error::NoSuchKey`] (If-Match, nothing there) or [`Error::PreconditionFailed`].
    pub fn check(&self, path: &Path, key: &str) -> Result<()> {
        if self.is_empty() {
            return Ok(());
        }
        let current = match std::fs::metadata(path) {
            Ok(fs_meta) if fs_meta.is_file() => Some(ObjectMeta::load_or_synthesize(path, &fs_meta)),
            _ => None,
        };
        let matches = |cond: &ETagCondition, meta: &ObjectMeta| match cond {
            ETagCondition::Any => true,
            ETagCondition::ETag(tag) => tag.value() == meta.etag,
        };
        if let Some(cond) = &self.if_match {
            let Some(meta) = &current else { return Err(Error::NoSuchKey { key: key.to_owned() }) };
            if !matches(cond, meta) {
                return Err(Error::PreconditionFailed);
            }
        }
        if let (Some(cond), Some(meta)) = (&self.if_none_match, &current)
            && matches(cond, meta)
        {
            return Err(Error::PreconditionFailed);
        }
        Ok(())
    }
}

/// Conditional writes of one key are serialized from their check to their rename, so two
/// `If-None-Match: *` creates cannot both succeed. Keys share a lock by hash: contention is
/// rare and only costs waiting.
fn condition_lock(path: &Path) -> std::sync::MutexGuard<'static, ()> {
    use std::hash::{Hash, Hasher};
    static LOCKS: [std::sync::Mutex<()>; 64] = [const { std::sync::Mutex::new(()) }; 64];
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    path.hash(&mut hasher);
    LOCKS[(hasher.finish() % 64) as usize].lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Stores `meta` on `file` and commits it to `path` (fsync, rename, directory fsync) on a
/// blocking thread, if `condition` holds at that moment. `key` names the object in errors.
///
/// # Errors
/// [`Error::KeyConflict`] when `path` cannot be a file (`a` vs `a/b`); the condition's
/// errors; write errors.
pub async fn install(
    file: TempFile,
    meta: ObjectMeta,
    path: PathBuf,
    key: String,
    condition: WriteCondition,
) -> Result<()> {
    tokio::task::spawn_blocking(move || install_now(file, meta, &path, key, &condition))
        .await
        .map_err(|e| Error::io("<commit task>")(std::io::Error::other(e)))?
}

/// [`install`] on this (blocking) thread.
///
/// # Errors
/// As [`install`].
pub(super) fn install_now(
    file: TempFile,
    mut meta: ObjectMeta,
    path: &Path,
    key: String,
    condition: &WriteCondition,
) -> Result<()> {
    let _serialized = (!condition.is_empty()).then(|| condition_lock(path));
    condition.check(path, &key)?;
    let temp = file.path().to_path_buf();
    let size = file.file().metadata().map_err(Error::io(&temp))?.len();
    if size > 0 && crate::marker::dir_key(&key).is_some() {
        return Err(non_empty_marker(&key, size));
    }
    meta.store(file.file()).map_err(|e| write_error(&key, temp, e))?;
    file.commit(path).map_err(|e| match e {
        CommitError::Conflict { path, what } => {
            let detail = format!(
                "{} is {what}",
                path.file_name().map_or_else(String::new, |n| n.to_string_lossy().into_owned())
            );
            Error::KeyConflict { key, detail }
        }
        CommitError::Io { path, source } => write_error(&key, path, source),
    })
}

/// A key ending in `/` names a directory, which holds no bytes of its own.
fn non_empty_marker(key: &str, size: u64) -> Error {
    Error::InvalidRequest(format!(
        "the key {key:?} ends in '/', which makes it a directory marker, and a directory marker must be \
         empty (this body has {size} bytes); drop the trailing '/' to store the bytes as an object"
    ))
}

/// Checks user metadata against S3's size limit and normalises keys to lowercase (as S3
/// returns them).
///
/// # Errors
/// [`Error::MetadataTooLarge`].
pub fn user_metadata(metadata: Option<Metadata>) -> Result<std::collections::BTreeMap<String, String>> {
    let map: std::collections::BTreeMap<String, String> =
        metadata.unwrap_or_default().into_iter().map(|(k, v)| (k.to_ascii_lowercase(), v)).collect();
    let size: usize = map.iter().map(|(k, v)| k.len() + v.len()).sum();
    if size > MAX_USER_METADATA {
        return Err(Error::MetadataTooLarge { size });
    }
    Ok(map)
}

/// Anything with the five `checksum_*` fields of S3 outputs (and most with `checksum_type`).
pub trait ChecksumFields {
    /// The field for `algorithm`.
    fn field(&mut self, algorithm: Algorithm) -> &mut Option<String>;
    /// The `checksum_type` field, where the output has one (a part's does not).
    fn kind(&mut self) -> Option<&mut Option<ChecksumType>>;
}

macro_rules! checksum_fields {
    ($($ty:ty => |$this:ident| $kind:expr),* $(,)?) => {$(
        impl ChecksumFields for $ty {
            fn field(&mut self, algorithm: Algorithm) -> &mut Option<String> {
                match algorithm {
                    Algorithm::Crc32 => &mut self.checksum_crc32,
                    Algorithm::Crc32c => &mut self.checksum_crc32c,
                    Algorithm::Crc64Nvme => &mut self.checksum_crc64nvme,
                    Algorithm::Sha1 => &mut self.checksum_sha1,
                    Algorithm::Sha256 => &mut self.checksum_sha256,
                }
            }
            fn kind(&mut self) -> Option<&mut Option<ChecksumType>> {
                let $this = self;
                $kind
            }
        }
    )*};
}

checksum_fields!(
    PutObjectOutput => |o| Some(&mut o.checksum_type),
    GetObjectOutput => |o| Some(&mut o.checksum_type),
    HeadObjectOutput => |o| Some(&mut o.checksum_type),
    CopyObjectResult => |o| Some(&mut o.checksum_type),
    CompleteMultipartUploadOutput => |o| Some(&mut o.checksum_type),
    Checksum => |o| Some(&mut o.checksum_type),
    UploadPartOutput => |_o| None,
    CopyPartResult => |_o| None,
);

/// Fills the checksum fields of an output from a stored checksum.
pub fn set_checksum_fields(checksum: &StoredChecksum, output: &mut impl ChecksumFields) {
    if let Some(algorithm) = Algorithm::from_name(&checksum.algorithm) {
        *output.field(algorithm) = Some(checksum.value.clone());
        if let Some(kind) = output.kind() {
            *kind = Some(ChecksumType::from(checksum.kind.clone()));
        }
    }
}
