//! GetObject and HeadObject: whole objects, ranges (206 / 416) and conditional requests.

use std::fs::File;
use std::io;
use std::io::{Read, Seek, SeekFrom};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures::Stream;
use s3s::dto::*;
use s3s::stream::{ByteStream, RemainingLength};
use s3s::{S3Request, S3Response, StdError};
use tokio::sync::mpsc;

use super::put::set_checksum_fields;
use super::{Depot, respond};
use crate::error::{Error, Result};
use crate::meta::ObjectMeta;
use crate::stats::Stats;
use crate::storage::Opened;

/// Bytes read from disk per chunk of a GET body: large, so the reading thread and the
/// network task hand over rarely.
const READ_CHUNK: usize = 1024 * 1024;
/// Chunks read ahead of the network.
const READ_AHEAD: usize = 2;

/// The request fields GetObject and HeadObject share.
struct Lookup<'a> {
    bucket: &'a str,
    key: &'a str,
    range: Option<&'a Range>,
    part_number: Option<i32>,
    conditions: Conditions<'a>,
    /// `x-amz-checksum-mode: ENABLED`.
    checksum_wanted: bool,
}

/// GetObject and HeadObject have distinct input and output types with the same field names;
/// these two macros read and fill those fields once for both.
macro_rules! lookup_of {
    ($input:expr) => {
        Lookup {
            bucket: &$input.bucket,
            key: &$input.key,
            range: $input.range.as_ref(),
            part_number: $input.part_number,
            conditions: Conditions {
                if_match: $input.if_match.as_ref(),
                if_none_match: $input.if_none_match.as_ref(),
                if_modified_since: $input.if_modified_since.as_ref(),
                if_unmodified_since: $input.if_unmodified_since.as_ref(),
            },
            checksum_wanted: $input.checksum_mode.as_ref().is_some_and(|m| m.as_str() == ChecksumMode::ENABLED),
        }
    };
}

macro_rules! describe {
    ($found:expr, $output:ty) => {{
        let found: &Found = $found;
        let meta = &found.meta;
        let mut output = <$output>::default();
        output.content_length = Some(found.content_length() as i64);
        output.content_range = found.content_range();
        output.accept_ranges = Some("bytes".into());
        output.e_tag = Some(ETag::Strong(meta.etag.clone()));
        output.last_modified = Some(Timestamp::from(meta.last_modified()));
        output.content_type = meta.headers.content_type.clone();
        output.content_encoding = meta.headers.content_encoding.clone();
        output.content_disposition = meta.headers.content_disposition.clone();
        output.content_language = meta.headers.content_language.clone();
        output.cache_control = meta.headers.cache_control.clone();
        output.expires = meta.headers.expires();
        output.metadata = (!meta.user.is_empty()).then(|| meta.user.clone().into_iter().collect());
        output.parts_count = meta.parts.map(|n| n as i32);
        // A checksum describes the whole object, so a range gets none (as in S3).
        if found.checksum_wanted
            && found.range.is_none()
            && let Some(checksum) = &meta.checksum
        {
            set_checksum_fields(checksum, &mut output);
        }
        output
    }};
}

/// An object found, its metadata checked against the conditions, its range resolved.
struct Found {
    file: File,
    /// Held while the body is sent (see [`crate::storage::Opened::pin`]).
    pin: Option<Box<dyn Send + Sync>>,
    meta: ObjectMeta,
    size: u64,
    range: Option<std::ops::Range<u64>>,
    checksum_wanted: bool,
}

impl Found {
    fn content_length(&self) -> u64 {
        self.range.as_ref().map_or(self.size, |r| r.end - r.start)
    }

    fn content_range(&self) -> Option<String> {
        self.range.as_ref().map(|r| format!("bytes {}-{}/{}", r.start, r.end - 1, self.size))
    }
}

async fn find(s3: &Depot, lookup: &Lookup<'_>) -> Result<Found> {
    let Opened { file, fs_meta, path, pin } = s3.storage.open(lookup.bucket, lookup.key).await?;
    let meta = ObjectMeta::load_or_synthesize(&path, &fs_meta);
    lookup.conditions.check(&meta).map_err(|unmet| match unmet {
        Unmet::Precondition => Error::PreconditionFailed,
        Unmet::NotModified => Error::NotModified { etag: meta.etag.clone(), last_modified: meta.last_modified() },
    })?;
    let size = fs_meta.len();
    let range = match (lookup.range, lookup.part_number) {
        (Some(_), Some(_)) => {
            return Err(Error::InvalidRequest(
                "Cannot specify both Range header and partNumber query parameter".into(),
            ));
        }
        (Some(range), None) => {
            Some(range.check(size).map_err(|_| Error::InvalidRange { range: range.to_header_string(), size })?)
        }
        (None, Some(part)) => part_range(&meta, part, size)?,
        (None, None) => None,
    };
    Ok(Found { file, pin, meta, size, range, checksum_wanted: lookup.checksum_wanted })
}

/// The bytes of part `part` (GET/HEAD `partNumber`): a part of a multipart object as its
/// record's part sizes place it; part 1 of any other object is all of it, as in S3.
fn part_range(meta: &ObjectMeta, part: i32, size: u64) -> Result<Option<std::ops::Range<u64>>> {
    super::multipart::check_part_number(part)?;
    let number = part.unsigned_abs();
    let Some(parts) = meta.parts else {
        return match number {
            1 if size == 0 => Ok(None),
            1 => Ok(Some(0..size)),
            _ => Err(Error::NoSuchPart { part, parts: 1 }),
        };
    };
    if number > parts {
        return Err(Error::NoSuchPart { part, parts });
    }
    match meta.part_runs.range(number) {
        Some(range) if range.is_empty() && size == 0 => Ok(None),
        // An empty last part of a non-empty object: no Content-Range can name it.
        Some(range) if range.is_empty() => Err(Error::InvalidRequest(format!("part {part} is empty"))),
        Some(range) if range.end <= size => Ok(Some(range)),
        _ => Err(Error::InvalidRequest(format!(
            "this object's part sizes were not recorded (it was completed by an older Depot), so part {part} cannot be located: read it with a Range instead"
        ))),
    }
}

/// The conditional headers of a read (If-Match, ...) or of a copy's source
/// (x-amz-copy-source-if-match, ...).
pub(super) struct Conditions<'a> {
    pub if_match: Option<&'a ETagCondition>,
    pub if_none_match: Option<&'a ETagCondition>,
    pub if_modified_since: Option<&'a Timestamp>,
    pub if_unmodified_since: Option<&'a Timestamp>,
}

/// Which kind of condition failed.
pub(super) enum Unmet {
    /// If-Match or If-Unmodified-Since: 412.
    Precondition,
    /// If-None-Match or If-Modified-Since: 304 on a read.
    NotModified,
}

impl Conditions<'_> {
    /// RFC 9110's evaluation order, as S3 applies it: an ETag condition, when present,
    /// overrides its date counterpart.
    pub(super) fn check(&self, meta: &ObjectMeta) -> Result<(), Unmet> {
        let matches = |cond: &ETagCondition| match cond {
            ETagCondition::Any => true,
            ETagCondition::ETag(tag) => tag.value() == meta.etag,
        };
        // HTTP dates have whole seconds.
        let modified = time::OffsetDateTime::from(meta.last_modified()).replace_nanosecond(0).expect("0 is valid");
        let at = |t: &Timestamp| time::OffsetDateTime::from(t.clone());
        let precondition = match self.if_match {
            Some(cond) => matches(cond),
            None => self.if_unmodified_since.is_none_or(|t| modified <= at(t)),
        };
        if !precondition {
            return Err(Unmet::Precondition);
        }
        let modified_since = match self.if_none_match {
            Some(cond) => !matches(cond),
            None => self.if_modified_since.is_none_or(|t| modified > at(t)),
        };
        if !modified_since {
            return Err(Unmet::NotModified);
        }
        Ok(())
    }
}

pub async fn get_object(s3: &Depot, req: S3Request<GetObjectInput>) -> Result<S3Response<GetObjectOutput>> {
    let found = find(s3, &lookup_of!(req.input)).await?;
    let mut output = describe!(&found, GetObjectOutput);
    output.tag_count = (!found.meta.tags.is_empty()).then_some(found.meta.tags.len() as i32);
    let (start, len) = (found.range.as_ref().map_or(0, |r| r.start), found.content_length());
    s3.stats.object_read();
    output.body = Some(file_body(found.file, found.pin, start, len, Arc::clone(&s3.stats)));
    Ok(respond(output))
}

pub async fn head_object(s3: &Depot, req: S3Request<HeadObjectInput>) -> Result<S3Response<HeadObjectOutput>> {
    let found = find(s3, &lookup_of!(req.input)).await?;
    Ok(respond(describe!(&found, HeadObjectOutput)))
}

/// `len` bytes of `file` from `offset`, read ahead by a blocking thread.
///
/// Chunk buffers come back to the reader when the network is done with them
/// ([`PooledChunk`]), so a GET of any size touches a few MiB of warm memory instead of
/// faulting in fresh pages for every chunk.
fn file_body(
    mut file: File,
    pin: Option<Box<dyn Send + Sync>>,
    offset: u64,
    len: u64,
    stats: Arc<Stats>,
) -> StreamingBlob {
    let (tx, rx) = mpsc::channel(READ_AHEAD);
    tokio::task::spawn_blocking(move || {
        let _pin = pin;
        if let Err(err) = file.seek(SeekFrom::Start(offset)) {
            let _ = tx.blocking_send(Err(err));
            return;
        }
        let (home, returned) = std::sync::mpsc::channel();
        let mut remaining = len;
        while remaining > 0 {
            let n = remaining.min(READ_CHUNK as u64) as usize;
            // Small objects get small buffers: 32 GETs of 4 KiB must not hold 32 MiB.
            let mut buf = returned.try_recv().unwrap_or_else(|_| vec![0; n]);
            let chunk = match file.read_exact(&mut buf[..n]) {
                Ok(()) => Ok(Bytes::from_owner(PooledChunk { buf, len: n, home: home.clone() })),
                Err(err) if err.kind() == io::ErrorKind::UnexpectedEof => {
                    Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the file shrank while being read"))
                }
                Err(err) => Err(err),
            };
            let failed = chunk.is_err();
            if tx.blocking_send(chunk).is_err() || failed {
                return; // the client went away, or the file could not be read
            }
            stats.bytes_sent(n as u64);
            remaining -= n as u64;
        }
    });
    StreamingBlob::new(FileBody { rx, remaining: len })
}

/// A chunk of a GET body whose buffer goes back to its reader when dropped.
struct PooledChunk {
    buf: Vec<u8>,
    len: usize,
    home: std::sync::mpsc::Sender<Vec<u8>>,
}

impl AsRef<[u8]> for PooledChunk {
    fn as_ref(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

impl Drop for PooledChunk {
    fn drop(&mut self) {
        // The reader may be gone (last chunk): then the buffer is simply freed.
        let _ = self.home.send(std::mem::take(&mut self.buf));
    }
}

/// The receiving end of [`file_body`], with an exact length so the response has one.
struct FileBody {
    rx: mpsc::Receiver<io::Result<Bytes>>,
    remaining: u64,
}

impl Stream for FileBody {
    type Item = Result<Bytes, StdError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.rx.poll_recv(cx).map(|item| {
            item.map(|chunk| match chunk {
                Ok(bytes) => {
                    self.remaining -= bytes.len() as u64;
                    Ok(bytes)
                }
                Err(err) => Err(Box::new(err) as StdError),
            })
        })
    }
}

impl ByteStream for FileBody {
    fn remaining_length(&self) -> RemainingLength {
        RemainingLength::new_exact(usize::try_from(self.remaining).unwrap_or(usize::MAX))
    }
}
