//! Every way an S3 request can fail inside Depot, and the S3 error each one becomes.
//!
//! Handlers return [`Error`]; the single `From<Error> for S3Error` below decides the S3 code
//! and HTTP status, like Garage's `aws_code()`. Messages name the key or upload and, where
//! the client can do something about it, what to do. They never contain a credential.

use std::io;
use std::path::PathBuf;

use depot_fs::{NameRule, UnsafeName};
use http::StatusCode;
use s3s::{S3Error, S3ErrorCode};

/// What went wrong; see the module docs.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The key cannot name a file safely.
    #[error("{0}")]
    UnsafeKey(#[from] UnsafeName),
    /// The key and an existing key cannot both be files (`a` vs `a/b`).
    #[error("key {key:?} conflicts with an existing object: {detail}")]
    KeyConflict {
        /// The key written.
        key: String,
        /// What is in the way.
        detail: String,
    },
    /// No object under that key.
    #[error("the key {key:?} does not exist")]
    NoSuchKey {
        /// The key asked for.
        key: String,
    },
    /// The bucket name is not served here.
    #[error("the bucket {bucket:?} does not exist{hint}")]
    NoSuchBucket {
        /// The bucket asked for.
        bucket: String,
        /// A pointer to the right bucket, when there is one.
        hint: String,
    },
    /// The multipart upload id is unknown (completed, aborted, or never created).
    #[error("the multipart upload {upload_id:?} does not exist (it may have been completed or aborted)")]
    NoSuchUpload {
        /// The id asked for.
        upload_id: String,
    },
    /// A Complete repeated for a completed upload that no longer matches its record.
    #[error("the multipart upload {upload_id:?} was completed, {why}")]
    CompletedOtherwise {
        /// The upload id.
        upload_id: String,
        /// Why the earlier result cannot be given again.
        why: &'static str,
    },
    /// A tag breaks S3's rules (key or value too long, empty or repeated key, malformed set).
    #[error("{0}")]
    InvalidTag(String),
    /// More than S3's 10 tags on one object.
    #[error("an object can have at most 10 tags; {count} were given")]
    TooManyTags {
        /// Tags given.
        count: usize,
    },
    /// The body does not match a digest the client sent.
    #[error("the {header} you specified ({expected}) did not match the body's ({actual})")]
    BadDigest {
        /// The header (or trailer) that carried the digest.
        header: String,
        /// Its value.
        expected: String,
        /// The digest of the bytes received.
        actual: String,
    },
    /// The body does not match the signed `x-amz-content-sha256`.
    #[error("the body's SHA-256 does not match the x-amz-content-sha256 header")]
    ContentSha256Mismatch,
    /// A chunk signature of an aws-chunked body is wrong.
    #[error("a chunk signature of the aws-chunked body does not match")]
    ChunkSignature,
    /// The body ended before the declared length.
    #[error("the body ended after {received} bytes, before the declared length")]
    IncompleteBody {
        /// Bytes received before the end.
        received: u64,
    },
    /// A header or parameter is malformed or unsupported.
    #[error("{0}")]
    InvalidRequest(String),
    /// A parameter S3 calls invalid (code `InvalidArgument`).
    #[error("{0}")]
    InvalidArgument(String),
    /// A single PUT or part over S3's 5 GiB limit.
    #[error("the body is {size} bytes; a single PUT or part can be at most 5 GiB (use a multipart upload)")]
    EntityTooLarge {
        /// The declared or received size.
        size: u64,
    },
    /// A part other than the last is below S3's 5 MiB minimum.
    #[error("part {part} is {size} bytes; every part but the last must be at least 5 MiB")]
    EntityTooSmall {
        /// The part number.
        part: i32,
        /// Its size.
        size: u64,
    },
    /// CompleteMultipartUpload names a part that was not uploaded, or with another ETag.
    #[error("part {part} {problem}")]
    InvalidPart {
        /// The part number.
        part: i32,
        /// What is wrong with it.
        problem: &'static str,
    },
    /// CompleteMultipartUpload lists parts out of ascending order.
    #[error("the parts must be listed in ascending order of part number")]
    InvalidPartOrder,
    /// GET/HEAD `partNumber` past the object's last part.
    #[error("part {part} does not exist: the object has {parts} part(s)")]
    NoSuchPart {
        /// The part asked for.
        part: i32,
        /// The object's parts (1 for an object not made by a multipart upload).
        parts: u32,
    },
    /// Range starts past the end of the object.
    #[error("the range {range} starts past the end of the object ({size} bytes)")]
    InvalidRange {
        /// The range header as received.
        range: String,
        /// The object's size.
        size: u64,
    },
    /// An UploadPartCopy's `x-amz-copy-source-range` reaches past the end of its source.
    #[error(
        "the x-amz-copy-source-range {range} does not lie within the source object ({size} bytes): \
         first and last must both be below {size}"
    )]
    CopyRangeOutside {
        /// The header as received.
        range: String,
        /// The source's size.
        size: u64,
    },
    /// If-Match / If-Unmodified-Since failed.
    #[error("a precondition (If-Match or If-Unmodified-Since) did not hold")]
    PreconditionFailed,
    /// If-None-Match / If-Modified-Since: the client's copy is current.
    #[error("not modified")]
    NotModified {
        /// The object's ETag (without quotes): a 304 carries it, as the 200 would.
        etag: String,
        /// Its Last-Modified.
        last_modified: std::time::SystemTime,
    },
    /// A bucket operation that needs `--multi-bucket`.
    #[error("{0}")]
    SingleBucket(String),
    /// DeleteBucket on a bucket that still holds objects.
    #[error("the bucket {bucket:?} is not empty")]
    BucketNotEmpty {
        /// The bucket.
        bucket: String,
    },
    /// CreateBucket on an existing bucket.
    #[error("the bucket {bucket:?} already exists")]
    BucketAlreadyOwnedByYou {
        /// The bucket.
        bucket: String,
    },
    /// GetObjectLockConfiguration: Depot never locks objects.
    #[error("object lock is not configured for this bucket")]
    ObjectLockNotConfigured,
    /// User metadata over S3's 2 KB limit.
    #[error("user metadata is {size} bytes; S3 allows at most 2 KB")]
    MetadataTooLarge {
        /// Its size.
        size: usize,
    },
    /// The object's record (headers, user metadata, tags) does not fit in the extended
    /// attributes the archive's file system keeps per file.
    #[error(
        "the metadata and tags of {key:?} do not fit in what the archive's file system keeps with a file \
         (ext4: about 4 KB of extended attributes); use fewer or shorter tags or x-amz-meta-* values"
    )]
    RecordTooLarge {
        /// The key.
        key: String,
    },
    /// The archive's disk is full.
    #[error("no space left on the archive's disk while writing {key:?}; free some space and retry")]
    DiskFull {
        /// The key being written.
        key: String,
    },
    /// The object exists but cannot be read now (a view's holders are unreachable): the
    /// client should retry.
    #[error("{key:?} cannot be read now: {reason}; retry later")]
    Unavailable {
        /// The key.
        key: String,
        /// Why.
        reason: String,
    },
    /// Any other I/O failure; logged with its path, reported without it.
    #[error("I/O error on {}: {source}", path.display())]
    Io {
        /// The file or directory involved.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
}

/// Shorthand for handler results.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// An [`Error::Io`] constructor for `map_err`.
    pub fn io(path: impl Into<PathBuf>) -> impl FnOnce(io::Error) -> Self {
        let path = path.into();
        move |source| Self::Io { path, source }
    }

    /// The S3 code and HTTP status this error is sent as.
    fn code_and_status(&self) -> (S3ErrorCode, StatusCode) {
        use S3ErrorCode as C;
        let custom = |code: &'static str| C::Custom(code.into());
        match self {
            Self::UnsafeKey(e) if matches!(e.rule, NameRule::TooLong { .. }) => {
                (C::KeyTooLongError, StatusCode::BAD_REQUEST)
            }
            Self::UnsafeKey(_) => (C::InvalidArgument, StatusCode::BAD_REQUEST),
            Self::KeyConflict { .. } => (custom("KeyConflict"), StatusCode::CONFLICT),
            Self::NoSuchKey { .. } => (C::NoSuchKey, StatusCode::NOT_FOUND),
            Self::NoSuchBucket { .. } => (C::NoSuchBucket, StatusCode::NOT_FOUND),
            Self::NoSuchUpload { .. } | Self::CompletedOtherwise { .. } => (C::NoSuchUpload, StatusCode::NOT_FOUND),
            Self::BadDigest { .. } => (C::BadDigest, StatusCode::BAD_REQUEST),
            Self::ContentSha256Mismatch => (custom("XAmzContentSHA256Mismatch"), StatusCode::BAD_REQUEST),
            Self::ChunkSignature => (C::SignatureDoesNotMatch, StatusCode::FORBIDDEN),
            Self::IncompleteBody { .. } => (C::IncompleteBody, StatusCode::BAD_REQUEST),
            Self::InvalidRequest(_) => (C::InvalidRequest, StatusCode::BAD_REQUEST),
            Self::InvalidArgument(_) => (C::InvalidArgument, StatusCode::BAD_REQUEST),
            Self::EntityTooLarge { .. } => (C::EntityTooLarge, StatusCode::BAD_REQUEST),
            Self::EntityTooSmall { .. } => (C::EntityTooSmall, StatusCode::BAD_REQUEST),
            Self::InvalidPart { .. } => (C::InvalidPart, StatusCode::BAD_REQUEST),
            Self::InvalidPartOrder => (C::InvalidPartOrder, StatusCode::BAD_REQUEST),
            Self::NoSuchPart { .. } => (C::InvalidPart, StatusCode::BAD_REQUEST),
            Self::InvalidRange { .. } | Self::CopyRangeOutside { .. } => {
                (C::InvalidRange, StatusCode::RANGE_NOT_SATISFIABLE)
            }
            Self::PreconditionFailed => (C::PreconditionFailed, StatusCode::PRECONDITION_FAILED),
            Self::NotModified { .. } => (custom("NotModified"), StatusCode::NOT_MODIFIED),
            Self::InvalidTag(_) => (C::InvalidTag, StatusCode::BAD_REQUEST),
            Self::TooManyTags { .. } => (custom("BadRequest"), StatusCode::BAD_REQUEST),
            Self::SingleBucket(_) => (C::NotImplemented, StatusCode::NOT_IMPLEMENTED),
            Self::BucketNotEmpty { .. } => (C::BucketNotEmpty, StatusCode::CONFLICT),
            Self::BucketAlreadyOwnedByYou { .. } => (C::BucketAlreadyOwnedByYou, StatusCode::CONFLICT),
            Self::ObjectLockNotConfigured => (C::ObjectLockConfigurationNotFoundError, StatusCode::NOT_FOUND),
            Self::MetadataTooLarge { .. } | Self::RecordTooLarge { .. } => {
                (C::MetadataTooLarge, StatusCode::BAD_REQUEST)
            }
            Self::DiskFull { .. } => (custom("InsufficientStorage"), StatusCode::INSUFFICIENT_STORAGE),
            Self::Unavailable { .. } => (C::ServiceUnavailable, StatusCode::SERVICE_UNAVAILABLE),
            Self::Io { .. } => (C::InternalError, StatusCode::INTERNAL_SERVER_ERROR),
        }
    }
}

impl From<Error> for S3Error {
    fn from(err: Error) -> Self {
        let (code, status) = err.code_and_status();
        let message = match &err {
            // The server's paths are for its log, not for the client.
            Error::Io { source, .. } => {
                tracing::error!(%err, "I/O error");
                format!("internal I/O error: {source}")
            }
            _ => err.to_string(),
        };
        let mut s3 = S3Error::with_message(code, message);
        s3.set_status_code(status);
        if let Error::NotModified { etag, last_modified } = &err {
            // RFC 9110: a 304 sends the validators the 200 would have.
            let mut headers = http::HeaderMap::new();
            if let Ok(value) = http::HeaderValue::try_from(format!("\"{etag}\"")) {
                headers.insert(http::header::ETAG, value);
            }
            let mut date = Vec::new();
            if s3s::dto::Timestamp::from(*last_modified).format(s3s::dto::TimestampFormat::HttpDate, &mut date).is_ok()
                && let Ok(value) = http::HeaderValue::try_from(date)
            {
                headers.insert(http::header::LAST_MODIFIED, value);
            }
            s3.set_headers(headers);
        }
        if let Error::InvalidRange { size, .. } = err
            && let Ok(value) = http::HeaderValue::try_from(format!("bytes */{size}"))
        {
            let mut headers = http::HeaderMap::new();
            headers.insert(http::header::CONTENT_RANGE, value);
            s3.set_headers(headers);
        }
        s3
    }
}

/// Maps an I/O error while writing `key` to the error the client gets: a full disk is said as
/// such (507), anything else is an internal error.
pub fn write_error(key: &str, path: PathBuf, source: io::Error) -> Error {
    if source.kind() == io::ErrorKind::FileTooLarge {
        Error::RecordTooLarge { key: key.to_owned() }
    } else if source.kind() == io::ErrorKind::StorageFull || source.raw_os_error() == Some(28) {
        tracing::error!(key, path = %path.display(), "disk full");
        Error::DiskFull { key: key.to_owned() }
    } else {
        Error::Io { path, source }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_errors_keep_server_paths_out_of_the_message() {
        let err = Error::Io { path: "/srv/archive/a".into(), source: io::Error::other("boom") };
        let s3 = S3Error::from(err);
        assert_eq!(s3.code(), &S3ErrorCode::InternalError);
        assert!(!s3.message().unwrap().contains("/srv/archive"));
    }

    #[test]
    fn invalid_range_carries_content_range() {
        let s3 = S3Error::from(Error::InvalidRange { range: "bytes=10-".into(), size: 5 });
        assert_eq!(s3.status_code(), Some(StatusCode::RANGE_NOT_SATISFIABLE));
        assert_eq!(s3.headers().unwrap()[http::header::CONTENT_RANGE], "bytes */5");
    }

    #[test]
    fn full_disk_is_reported_as_such() {
        let err = write_error("k", "/x".into(), io::Error::from_raw_os_error(28));
        assert!(matches!(err, Error::DiskFull { .. }));
        assert_eq!(S3Error::from(err).status_code(), Some(StatusCode::INSUFFICIENT_STORAGE));
    }
}
