//! PutObject, and [`install`]: how every new object (PUT, copy, completed upload) lands.

use std::path::PathBuf;

use depot_fs::{CommitError, TempFile};
use s3s::dto::*;
use s3s::{S3Request, S3Response};

use super::{Depot, respond};
use crate::body::{self, Received};
use crate::digest::{Algorithm, Expected};
use crate::error::{Error, Result, write_error};
use crate::meta::{Headers, ObjectMeta, StoredChecksum};

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
    if input.if_none_match.as_ref().is_some_and(|v| matches!(v, ETagCondition::Any)) && path.is_file() {
        return Err(Error::PreconditionFailed);
    }
    let expected = Expected::from_headers(&headers)?;
    let mut meta = ObjectMeta {
        headers: Headers {
            content_type: input.content_type.clone(),
            content_encoding: input.content_encoding.clone(),
            content_disposition: input.content_disposition.clone(),
            content_language: input.content_language.clone(),
            cache_control: input.cache_control.clone(),
            expires: Headers::expires_of(input.expires.as_ref()),
        },
        user: user_metadata(input.metadata)?,
        tags: super::tagging::from_header(input.tagging.as_deref())?,
        ..ObjectMeta::default()
    };

    let temp = s3.archive.temp_file()?;
    let temp_path = temp.path().to_path_buf();
    let Received { file, size, digests } =
        body::receive(input.body, temp, expected.hasher(), &input.key, &temp_path).await?;
    let trailers = trailing_headers.and_then(|t| t.take());
    let checksum = expected.verify(&digests, trailers.as_ref())?;
    meta.etag = digests.etag();
    meta.checksum = Some(checksum.clone());
    install(file, meta.clone(), path, input.key).await?;
    s3.stats.object_written(size);

    let mut output =
        PutObjectOutput { e_tag: Some(ETag::Strong(meta.etag)), size: Some(size as i64), ..Default::default() };
    if expected.algorithm().is_some() {
        set_checksum_fields(&checksum, &mut output);
    }
    Ok(respond(output))
}

/// Stores `meta` on `file` and commits it to `path` (fsync, rename, directory fsync) on a
/// blocking thread. `key` names the object in errors.
///
/// # Errors
/// [`Error::KeyConflict`] when `path` cannot be a file (`a` vs `a/b`); write errors.
pub async fn install(file: TempFile, mut meta: ObjectMeta, path: PathBuf, key: String) -> Result<()> {
    tokio::task::spawn_blocking(move || {
        let temp = file.path().to_path_buf();
        let size = file.file().metadata().map_err(Error::io(&temp))?.len();
        if size > 0 && crate::marker::dir_key(&key).is_some() {
            return Err(non_empty_marker(&key, size));
        }
        meta.store(file.file()).map_err(|e| write_error(&key, temp, e))?;
        file.commit(&path).map_err(|e| match e {
            CommitError::Conflict { path, what } => {
                let detail = format!(
                    "{} is {what}",
                    path.file_name().map_or_else(String::new, |n| n.to_string_lossy().into_owned())
                );
                Error::KeyConflict { key, detail }
            }
            CommitError::Io { path, source } => write_error(&key, path, source),
        })
    })
    .await
    .map_err(|e| Error::io("<commit task>")(std::io::Error::other(e)))?
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

/// Anything with the five `checksum_*` fields and `checksum_type` of S3 outputs.
pub trait ChecksumFields {
    /// The field for `algorithm`.
    fn field(&mut self, algorithm: Algorithm) -> &mut Option<String>;
    /// The `checksum_type` field.
    fn kind(&mut self) -> &mut Option<ChecksumType>;
}

macro_rules! checksum_fields {
    ($($ty:ty),*) => {$(
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
            fn kind(&mut self) -> &mut Option<ChecksumType> {
                &mut self.checksum_type
            }
        }
    )*};
}

checksum_fields!(PutObjectOutput, GetObjectOutput, HeadObjectOutput, CopyObjectResult, CompleteMultipartUploadOutput);

/// Fills the checksum fields of an output from a stored checksum.
pub fn set_checksum_fields(checksum: &StoredChecksum, output: &mut impl ChecksumFields) {
    if let Some(algorithm) = Algorithm::from_name(&checksum.algorithm) {
        *output.field(algorithm) = Some(checksum.value.clone());
        *output.kind() = Some(ChecksumType::from(checksum.kind.clone()));
    }
}
