//! Multipart uploads, as S3 checks them. Where the parts live and how Complete turns them
//! into one file without copying is [`crate::uploads`].
//!
//! Each upload directory holds `upload.json` (bucket, key, headers, checksum settings) next to
//! the parts. Uploads survive a restart (with the same credentials a client can finish them);
//! Abort removes them, and `--multipart-expiry` sweeps the abandoned ones.

use std::io::{self, Write};
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use s3s::crypto::{Checksum as _, Md5};
use s3s::dto::*;
use s3s::{S3Request, S3Response};
use serde::{Deserialize, Serialize};

use super::completion::{self, Completion};
use super::put::{ChecksumFields as _, WriteCondition, install, user_metadata};
use super::{Depot, respond};
use crate::body::{self, Received};
use crate::digest::{Algorithm, Expected};
use crate::error::{Error, Result, write_error};
use crate::meta::{Headers, ObjectMeta, PartRuns, StoredChecksum};
use crate::uploads::{self, MIN_PART, PartRecord, PartSink, Placement};
/// S3's part number range.
const MAX_PART_NUMBER: i32 = 10_000;
/// S3's cap on parts and uploads per listing page.
const MAX_LISTED: i32 = 1000;

/// `upload.json`: what CreateMultipartUpload was told.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Upload {
    bucket: String,
    key: String,
    /// Seconds since the epoch.
    initiated: u64,
    headers: Headers,
    user: std::collections::BTreeMap<String, String>,
    /// The checksum algorithm the client chose for the upload, if any.
    checksum_algorithm: Option<String>,
    /// `COMPOSITE` or `FULL_OBJECT`.
    checksum_type: Option<String>,
    /// Tags from `x-amz-tagging`, given to the object.
    #[serde(default)]
    tags: std::collections::BTreeMap<String, String>,
}

impl Depot {
    fn upload_dir(&self, upload_id: &str) -> Result<PathBuf> {
        // Ids are ours (uuid hex); anything else cannot name an upload and must not name a path.
        if upload_id.is_empty() || upload_id.len() > 64 || !upload_id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(Error::NoSuchUpload { upload_id: upload_id.to_owned() });
        }
        Ok(self.archive.uploads_dir().join(upload_id))
    }

    /// Loads the upload, checking it belongs to `bucket`/`key`.
    fn upload(&self, upload_id: &str, bucket: &str, key: &str) -> Result<(PathBuf, Upload)> {
        let dir = self.upload_dir(upload_id)?;
        let missing = || Error::NoSuchUpload { upload_id: upload_id.to_owned() };
        let raw = std::fs::read(dir.join("upload.json")).map_err(|_| missing())?;
        let upload: Upload = serde_json::from_slice(&raw).map_err(|_| missing())?;
        if upload.bucket != bucket || upload.key != key {
            return Err(missing());
        }
        Ok((dir, upload))
    }
}

pub(super) fn check_part_number(part: i32) -> Result<()> {
    if (1..=MAX_PART_NUMBER).contains(&part) {
        Ok(())
    } else {
        Err(Error::InvalidRequest(format!("part number {part} is outside 1..={MAX_PART_NUMBER}")))
    }
}

fn blocking_error(e: tokio::task::JoinError) -> Error {
    Error::io("<multipart task>")(io::Error::other(e))
}

pub async fn create_multipart_upload(
    s3: &Depot,
    req: S3Request<CreateMultipartUploadInput>,
) -> Result<S3Response<CreateMultipartUploadOutput>> {
    let input = req.input;
    s3.archive.bucket(&input.bucket)?.path_of(&input.key)?;
    let algorithm = match &input.checksum_algorithm {
        Some(a) => Some(
            Algorithm::from_name(a.as_str())
                .ok_or_else(|| Error::InvalidRequest(format!("unsupported checksum algorithm {:?}", a.as_str())))?,
        ),
        None => None,
    };
    let checksum_type = match (algorithm, input.checksum_type.as_ref().map(ChecksumType::as_str)) {
        (None, Some(_)) => {
            return Err(Error::InvalidRequest("x-amz-checksum-type needs x-amz-checksum-algorithm".into()));
        }
        (None, None) => None,
        (Some(Algorithm::Crc64Nvme), Some(ChecksumType::COMPOSITE)) => {
            return Err(Error::InvalidRequest("CRC64NVME checksums can only be FULL_OBJECT".into()));
        }
        (Some(Algorithm::Sha1 | Algorithm::Sha256), Some(ChecksumType::FULL_OBJECT)) => {
            return Err(Error::InvalidRequest("SHA checksums of multipart uploads can only be COMPOSITE".into()));
        }
        (Some(Algorithm::Crc64Nvme), _) => Some(ChecksumType::FULL_OBJECT.to_owned()),
        (Some(_), Some(t @ (ChecksumType::COMPOSITE | ChecksumType::FULL_OBJECT))) => Some(t.to_owned()),
        (Some(_), Some(other)) => return Err(Error::InvalidRequest(format!("unknown checksum type {other:?}"))),
        (Some(_), None) => Some(ChecksumType::COMPOSITE.to_owned()),
    };
    let upload = Upload {
        bucket: input.bucket.clone(),
        key: input.key.clone(),
        initiated: SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs()),
        headers: stored_headers!(input),
        user: user_metadata(input.metadata)?,
        tags: super::tagging::from_header(input.tagging.as_deref())?,
        checksum_algorithm: algorithm.map(|a| a.name().to_owned()),
        checksum_type: checksum_type.clone(),
    };
    let upload_id = uuid::Uuid::new_v4().simple().to_string();
    let dir = s3.upload_dir(&upload_id)?;
    let mut temp = s3.archive.temp_file()?;
    tokio::task::spawn_blocking(move || {
        let json = serde_json::to_vec_pretty(&upload).map_err(io::Error::other)?;
        temp.write_all(&json)?;
        temp.commit(&dir.join("upload.json")).map_err(io::Error::other)
    })
    .await
    .map_err(blocking_error)?
    .map_err(|e| write_error(&input.key, s3.archive.uploads_dir(), e))?;
    Ok(respond(CreateMultipartUploadOutput {
        bucket: Some(input.bucket),
        key: Some(input.key),
        upload_id: Some(upload_id),
        checksum_algorithm: algorithm.map(|a| ChecksumAlgorithm::from(a.name().to_owned())),
        checksum_type: checksum_type.map(ChecksumType::from),
        ..Default::default()
    }))
}

pub async fn upload_part(s3: &Depot, req: S3Request<UploadPartInput>) -> Result<S3Response<UploadPartOutput>> {
    let S3Request { input, headers, trailing_headers, .. } = req;
    let number = input.part_number;
    check_part_number(number)?;
    let (dir, _upload) = s3.upload(&input.upload_id, &input.bucket, &input.key)?;
    body::check_declared_length(input.content_length)?;
    let expected = Expected::from_headers(&headers)?;

    let declared = input.content_length.and_then(|l| u64::try_from(l).ok());
    let sink = part_sink(s3, &input.upload_id, &dir, number, declared, &input.key);
    let Received { file, size, digests } = body::receive_with(input.body, sink, expected.hasher(), &input.key).await?;
    let trailers = trailing_headers.and_then(|t| t.take());
    let checksum = expected.verify(&digests, trailers.as_ref())?;
    let record = PartRecord {
        number,
        size,
        etag: digests.etag(),
        checksum: checksum.clone(),
        crc64nvme: digests.base64(Algorithm::Crc64Nvme).expect("always computed"),
        at: Placement::File { name: String::new() }, // set by store_part
        modified: SystemTime::now(),
    };
    let etag = record.etag.clone();
    store(s3, &input.upload_id, dir, file, record, &input.key).await?;

    let mut output = UploadPartOutput { e_tag: Some(ETag::Strong(etag)), ..Default::default() };
    if let Some(algorithm) = expected.algorithm() {
        *output.field(algorithm) = Some(checksum.value);
    }
    Ok(respond(output))
}

/// Where part `number` of the upload in `dir` is written, made on a blocking thread by
/// [`body::receive_with`]: its slot of the assembly file when it fits the upload's shape
/// (`declared` length known), else a temp file of its own; with its path, for errors.
fn part_sink(
    s3: &Depot,
    upload_id: &str,
    dir: &Path,
    number: i32,
    declared: Option<u64>,
    key: &str,
) -> impl FnOnce() -> Result<(PartSink, PathBuf)> + Send + 'static {
    let (uploads, archive) = (Arc::clone(&s3.uploads), Arc::clone(&s3.archive));
    let (id, dir, key) = (upload_id.to_owned(), dir.to_path_buf(), key.to_owned());
    move || {
        let region = uploads.begin_part(&id, &dir, number, declared).map_err(|e| write_error(&key, dir.clone(), e))?;
        let sink = match region {
            Some(region) => PartSink::InPlace(region),
            None => PartSink::Separate(archive.temp_file()?),
        };
        let path = sink.path(&dir);
        Ok((sink, path))
    }
}

/// Makes a received part of upload `id` durable and records it (before its 200).
async fn store(s3: &Depot, id: &str, dir: PathBuf, sink: PartSink, record: PartRecord, key: &str) -> Result<()> {
    let (uploads, id, key) = (Arc::clone(&s3.uploads), id.to_owned(), key.to_owned());
    tokio::task::spawn_blocking(move || {
        uploads.store_part(&id, &dir, sink, record).map_err(|e| write_error(&key, dir, e))
    })
    .await
    .map_err(blocking_error)?
}

/// UploadPartCopy: part `N` is a range of an existing object (all of it without
/// `x-amz-copy-source-range`). The source is read as GET and CopyObject read it (through the
/// storage, with CopyObject's `x-amz-copy-source-if-*` checks) and its bytes go through the
/// same pipeline as an UploadPart's body ([`body::receive_with`]: the part's slot or its own file,
/// MD5, CRC64-NVME and the upload's checksum), so the part is stored, recorded and durable
/// exactly as an uploaded one, before the 200.
pub async fn upload_part_copy(
    s3: &Depot,
    req: S3Request<UploadPartCopyInput>,
) -> Result<S3Response<UploadPartCopyOutput>> {
    let input = req.input;
    let number = input.part_number;
    check_part_number(number)?;
    let wanted = input.copy_source_range.as_deref().map(copy_source_range).transpose()?;
    let (src_bucket, src_key) = super::copy::source_of(&input.copy_source)?;
    let (dir, upload) = s3.upload(&input.upload_id, &input.bucket, &input.key)?;
    let crate::storage::Opened { file: source, fs_meta, path: src_path, pin } =
        s3.storage.open(src_bucket, src_key).await?;
    let src_meta = ObjectMeta::load_or_synthesize(&src_path, &fs_meta);
    super::copy::check_source(&src_meta, &copy_conditions!(input))?;
    let size = fs_meta.len();
    let (offset, len) = match wanted {
        None => (0, size),
        Some((first, last)) if last < size => (first, last - first + 1),
        Some(_) => {
            let range = input.copy_source_range.clone().unwrap_or_default();
            return Err(Error::CopyRangeOutside { range, size });
        }
    };
    if len > body::MAX_BODY {
        return Err(Error::InvalidRequest(format!(
            "the copy source is {len} bytes; a part can be at most 5 GiB: copy it in parts of at most 5 GiB \
             each with x-amz-copy-source-range"
        )));
    }

    let algorithm = upload.checksum_algorithm.as_deref().and_then(Algorithm::from_name);
    let expected = Expected::computing(algorithm);
    let sink = part_sink(s3, &input.upload_id, &dir, number, Some(len), &input.key);
    let (bytes, reader) = read_range(source, pin, offset, len);
    let received = body::receive_with(Some(bytes), sink, expected.hasher(), &input.key).await;
    // A failed read of the source is the server's error, not a short body from a client.
    reader.await.map_err(blocking_error)?.map_err(Error::io(&src_path))?;
    let Received { file, size: copied, digests } = received?;
    let record = PartRecord {
        number,
        size: copied,
        etag: digests.etag(),
        checksum: expected.verify(&digests, None)?,
        crc64nvme: digests.base64(Algorithm::Crc64Nvme).expect("always computed"),
        at: Placement::File { name: String::new() }, // set by store_part
        modified: SystemTime::now(),
    };
    let mut result = CopyPartResult {
        e_tag: Some(ETag::Strong(record.etag.clone())),
        last_modified: Some(Timestamp::from(record.modified)),
        ..Default::default()
    };
    if let Some(algorithm) = algorithm {
        *result.field(algorithm) = Some(record.checksum.value.clone());
    }
    store(s3, &input.upload_id, dir, file, record, &input.key).await?;
    Ok(respond(UploadPartCopyOutput { copy_part_result: Some(result), ..Default::default() }))
}

/// Parses `x-amz-copy-source-range` as S3 accepts it: one closed range `bytes=first-last`
/// (zero-based, inclusive, `first <= last`); no open or suffix range, no list.
fn copy_source_range(value: &str) -> Result<(u64, u64)> {
    match s3s::dto::Range::parse(value) {
        Ok(s3s::dto::Range::Int { first, last: Some(last) }) => Ok((first, last)),
        _ => Err(Error::InvalidArgument(format!(
            "the x-amz-copy-source-range {value:?} is not of the form bytes=first-last, where first and last \
             are the zero-based offsets of the first and last bytes to copy (e.g. bytes=0-5242879)"
        ))),
    }
}

/// Bytes read from the source per chunk of an UploadPartCopy. Measured with boto3's managed
/// copy of 512 MiB (10 parts at once into one assembly file, ext4 in a VM): with 1 MiB chunks
/// the server's system time grew from 0.25 s to 3 s over four back-to-back copies (most of it
/// the kernel's copy into the page cache, `copy_folio_from_iter_atomic`); with 128 KiB it
/// stays ~0.25 s.
const COPY_CHUNK: usize = 128 * 1024;

/// `len` bytes of `file` from `offset` as a body for [`body::receive_with`], read by a blocking
/// thread a few chunks ahead; the thread's result says whether the source could be read.
fn read_range(
    file: std::fs::File,
    pin: Option<Box<dyn Send + Sync>>,
    offset: u64,
    len: u64,
) -> (StreamingBlob, tokio::task::JoinHandle<io::Result<()>>) {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<io::Result<bytes::Bytes>>(2);
    let reader = tokio::task::spawn_blocking(move || {
        let _pin = pin; // a view's cache keeps the file until it is read
        let mut at = offset;
        let end = offset + len;
        while at < end {
            let mut chunk = vec![0; (end - at).min(COPY_CHUNK as u64) as usize];
            // On an error the body just ends; the caller reports this error instead.
            file.read_exact_at(&mut chunk, at).map_err(|err| match err.kind() {
                io::ErrorKind::UnexpectedEof => io::Error::other("the copy source shrank while being read"),
                _ => err,
            })?;
            at += chunk.len() as u64;
            if tx.blocking_send(Ok(bytes::Bytes::from(chunk))).is_err() {
                return Ok(()); // the receiver stopped: its own error is reported
            }
        }
        Ok(())
    });
    let stream = futures::stream::poll_fn(move |cx| rx.poll_recv(cx));
    (StreamingBlob::wrap(stream), reader)
}

/// The parts of an upload, by number.
fn stored_parts(dir: &std::path::Path) -> Result<Vec<PartRecord>> {
    uploads::records(dir).map_err(Error::io(dir))
}

pub async fn list_parts(s3: &Depot, req: S3Request<ListPartsInput>) -> Result<S3Response<ListPartsOutput>> {
    let input = req.input;
    let (dir, upload) = s3.upload(&input.upload_id, &input.bucket, &input.key)?;
    let marker = input.part_number_marker.unwrap_or(0);
    let max = input.max_parts.unwrap_or(MAX_LISTED).clamp(0, MAX_LISTED) as usize;
    let all: Vec<PartRecord> = stored_parts(&dir)?.into_iter().filter(|p| p.number > marker).collect();
    let truncated = all.len() > max;
    let listed: Vec<Part> = all
        .iter()
        .take(max)
        .map(|p| {
            let mut part = Part {
                part_number: Some(p.number),
                size: Some(p.size as i64),
                e_tag: Some(ETag::Strong(p.etag.clone())),
                last_modified: Some(Timestamp::from(p.modified)),
                ..Default::default()
            };
            if upload.checksum_algorithm.as_deref() == Some(p.checksum.algorithm.as_str()) {
                let value = Some(p.checksum.value.clone());
                match Algorithm::from_name(&p.checksum.algorithm) {
                    Some(Algorithm::Crc32) => part.checksum_crc32 = value,
                    Some(Algorithm::Crc32c) => part.checksum_crc32c = value,
                    Some(Algorithm::Crc64Nvme) => part.checksum_crc64nvme = value,
                    Some(Algorithm::Sha1) => part.checksum_sha1 = value,
                    Some(Algorithm::Sha256) => part.checksum_sha256 = value,
                    None => {}
                }
            }
            part
        })
        .collect();
    let next = if truncated { listed.last().and_then(|p| p.part_number) } else { None };
    Ok(respond(ListPartsOutput {
        bucket: Some(input.bucket),
        key: Some(input.key),
        upload_id: Some(input.upload_id),
        part_number_marker: input.part_number_marker,
        next_part_number_marker: next,
        max_parts: Some(max as i32),
        is_truncated: Some(truncated),
        parts: Some(listed),
        checksum_algorithm: upload.checksum_algorithm.map(ChecksumAlgorithm::from),
        checksum_type: upload.checksum_type.map(ChecksumType::from),
        ..Default::default()
    }))
}

/// The checksum a CompletedPart carries for `algorithm`.
fn completed_checksum(part: &CompletedPart, algorithm: Algorithm) -> Option<&str> {
    match algorithm {
        Algorithm::Crc32 => part.checksum_crc32.as_deref(),
        Algorithm::Crc32c => part.checksum_crc32c.as_deref(),
        Algorithm::Crc64Nvme => part.checksum_crc64nvme.as_deref(),
        Algorithm::Sha1 => part.checksum_sha1.as_deref(),
        Algorithm::Sha256 => part.checksum_sha256.as_deref(),
    }
}

pub async fn complete_multipart_upload(
    s3: &Depot,
    req: S3Request<CompleteMultipartUploadInput>,
) -> Result<S3Response<CompleteMultipartUploadOutput>> {
    let input = req.input;
    let (dir, upload) = match s3.upload(&input.upload_id, &input.bucket, &input.key) {
        Ok(found) => found,
        // Completed already? A retry (the reply was lost) gets the same answer.
        Err(Error::NoSuchUpload { .. }) => return Ok(respond(completion::replay(s3, &input)?)),
        Err(err) => return Err(err),
    };
    if completion::recorded(s3, &input.upload_id) {
        // Completed just before a crash cut its clean-up: answer as a retry is answered.
        let answer = completion::replay(s3, &input);
        if let Err(err) = depot_fs::remove_dir_durably(&dir) {
            tracing::warn!(dir = %dir.display(), %err, "cannot remove a completed upload's parts");
        }
        return answer.map(respond);
    }
    let path = s3.archive.bucket(&input.bucket)?.path_of(&input.key)?;
    // If-Match / If-None-Match are checked before any byte moves, not again at the rename: a
    // condition failing there would cost the assembled parts.
    WriteCondition { if_match: input.if_match.clone(), if_none_match: input.if_none_match.clone() }
        .check(&path, &input.key)?;
    let requested = input.multipart_upload.and_then(|m| m.parts).unwrap_or_default();
    let stored = stored_parts(&dir)?;
    let algorithm = upload.checksum_algorithm.as_deref().and_then(Algorithm::from_name);
    let composite = upload.checksum_type.as_deref() == Some(ChecksumType::COMPOSITE);

    // Which stored parts make the object, checked as S3 checks them.
    let numbers = requested
        .iter()
        .map(|p| p.part_number.ok_or_else(|| Error::InvalidRequest("a part has no PartNumber".into())))
        .collect::<Result<Vec<i32>>>()?;
    if numbers.windows(2).any(|w| w[0] >= w[1]) {
        return Err(Error::InvalidPartOrder);
    }
    let mut chosen: Vec<PartRecord> = Vec::with_capacity(requested.len());
    for (i, (part, number)) in requested.iter().zip(numbers).enumerate() {
        let found = stored
            .iter()
            .find(|p| p.number == number)
            .ok_or(Error::InvalidPart { part: number, problem: "was not uploaded" })?;
        if let Some(etag) = &part.e_tag
            && etag.value() != found.etag
        {
            return Err(Error::InvalidPart { part: number, problem: "has a different ETag than the one uploaded" });
        }
        if let Some(algorithm) = algorithm
            && let Some(given) = completed_checksum(part, algorithm)
            && found.checksum.value != given
        {
            return Err(Error::InvalidPart { part: number, problem: "has a different checksum than the one uploaded" });
        }
        if i + 1 < requested.len() && found.size < MIN_PART {
            return Err(Error::EntityTooSmall { part: number, size: found.size });
        }
        chosen.push(found.clone());
    }

    let n = chosen.len();
    let mut etags = Vec::new();
    for part in &chosen {
        etags.extend(hex::decode(&part.etag).unwrap_or_else(|_| part.etag.as_bytes().to_vec()));
    }
    let etag = format!("{}-{n}", hex::encode(Md5::checksum(&etags)));
    let composite_checksum = match (algorithm, composite) {
        (Some(algorithm), true) => {
            let mut joined = Vec::new();
            for part in &chosen {
                if part.checksum.algorithm != algorithm.name() {
                    return Err(Error::InvalidPart {
                        part: part.number,
                        problem: "was uploaded without the upload's checksum",
                    });
                }
                joined.extend(BASE64.decode(&part.checksum.value).unwrap_or_default());
            }
            Some(StoredChecksum {
                algorithm: algorithm.name().to_owned(),
                value: format!("{}-{n}", BASE64.encode(algorithm.digest(&joined))),
                kind: ChecksumType::COMPOSITE.to_owned(),
            })
        }
        _ => None,
    };

    // The bytes: the assembly file itself when the parts are in shape, else a concatenation.
    let closing = s3.uploads.begin_complete(&input.upload_id).ok_or_else(|| {
        Error::InvalidRequest("another CompleteMultipartUpload of this upload is in progress; retry later".into())
    })?;
    let temp = s3.archive.temp_file()?;
    let full_object = if composite { None } else { Some(algorithm.unwrap_or(Algorithm::Crc64Nvme)) };
    let (at, idle) = (dir.clone(), closing.idle());
    let part_runs = PartRuns::of(chosen.iter().map(|p| p.size));
    let assembled = tokio::task::spawn_blocking(move || {
        let full = match full_object {
            Some(algorithm) => uploads::combined_crc(&at, &chosen, algorithm)?.map(|value| (algorithm, value)),
            None => None,
        };
        let (file, size) = uploads::assemble(&at, &chosen, &stored, idle, temp)?;
        Ok((file, size, full))
    })
    .await
    .map_err(blocking_error)?;
    let (file, size, full_checksum) = assembled.map_err(|e: io::Error| match e.kind() {
        // A part's bytes are gone: the upload was completed just before a crash.
        io::ErrorKind::NotFound => Error::NoSuchUpload { upload_id: input.upload_id.clone() },
        _ => write_error(&input.key, dir.clone(), e),
    })?;
    let checksum = match (composite_checksum, full_checksum) {
        (Some(composite), _) => composite,
        (None, Some((algorithm, value))) => {
            StoredChecksum { algorithm: algorithm.name().to_owned(), value, kind: ChecksumType::FULL_OBJECT.to_owned() }
        }
        (None, None) => {
            return Err(Error::InvalidRequest("SHA checksums of multipart uploads can only be COMPOSITE".into()));
        }
    };
    // A whole-object checksum sent with Complete must match what was assembled.
    let given = [
        (Algorithm::Crc32, &input.checksum_crc32),
        (Algorithm::Crc32c, &input.checksum_crc32c),
        (Algorithm::Crc64Nvme, &input.checksum_crc64nvme),
        (Algorithm::Sha1, &input.checksum_sha1),
        (Algorithm::Sha256, &input.checksum_sha256),
    ];
    for (algorithm, value) in given {
        if let Some(value) = value
            && algorithm.name() == checksum.algorithm
            && strip_part_count(value) != strip_part_count(&checksum.value)
        {
            return Err(Error::BadDigest {
                header: algorithm.header().to_owned(),
                expected: value.clone(),
                actual: checksum.value.clone(),
            });
        }
    }

    let meta = ObjectMeta {
        etag: etag.clone(),
        headers: upload.headers,
        user: upload.user,
        tags: upload.tags,
        checksum: Some(checksum.clone()),
        parts: Some(n as u32),
        part_runs,
        ..ObjectMeta::default()
    };
    install(file, meta, path.clone(), input.key.clone(), WriteCondition::default()).await?;
    s3.stats.object_written(size);
    let done = Completion::new(s3, &input.bucket, &input.key, &requested, etag, algorithm.map(|_| checksum));
    let done = completion::record(s3, &input.upload_id, &path, done)?;
    // Durably, or a power cut could list (and complete again) an upload already answered.
    if let Err(err) = depot_fs::remove_dir_durably(&dir) {
        tracing::warn!(dir = %dir.display(), %err, "cannot remove a completed upload's parts");
    }
    Ok(respond(done.output()))
}

fn strip_part_count(value: &str) -> &str {
    value.split_once('-').map_or(value, |(v, _)| v)
}

pub async fn abort_multipart_upload(
    s3: &Depot,
    req: S3Request<AbortMultipartUploadInput>,
) -> Result<S3Response<AbortMultipartUploadOutput>> {
    let input = req.input;
    let (dir, _) = s3.upload(&input.upload_id, &input.bucket, &input.key)?;
    tokio::task::spawn_blocking(move || depot_fs::remove_dir_durably(&dir).map_err(Error::io(&dir)))
        .await
        .map_err(blocking_error)??;
    s3.uploads.forget(&input.upload_id);
    Ok(respond(AbortMultipartUploadOutput::default()))
}

pub async fn list_multipart_uploads(
    s3: &Depot,
    req: S3Request<ListMultipartUploadsInput>,
) -> Result<S3Response<ListMultipartUploadsOutput>> {
    let input = req.input;
    s3.archive.bucket(&input.bucket)?;
    let root = s3.archive.uploads_dir();
    let mut uploads: Vec<(String, Upload)> = Vec::new();
    if let Ok(entries) = std::fs::read_dir(&root) {
        for entry in entries.flatten() {
            let Some(id) = entry.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            let Ok(raw) = std::fs::read(entry.path().join("upload.json")) else {
                continue;
            };
            let Ok(upload) = serde_json::from_slice::<Upload>(&raw) else {
                continue;
            };
            let prefix = input.prefix.as_deref().unwrap_or("");
            if upload.bucket == input.bucket && upload.key.starts_with(prefix) {
                uploads.push((id, upload));
            }
        }
    }
    uploads.sort_by(|a, b| (&a.1.key, a.1.initiated, &a.0).cmp(&(&b.1.key, b.1.initiated, &b.0)));
    let key_marker = input.key_marker.clone().unwrap_or_default();
    let id_marker = input.upload_id_marker.clone().unwrap_or_default();
    uploads.retain(|(id, u)| u.key > key_marker || (u.key == key_marker && !id_marker.is_empty() && *id > id_marker));
    let max = input.max_uploads.unwrap_or(MAX_LISTED).clamp(0, MAX_LISTED) as usize;
    let truncated = uploads.len() > max;
    uploads.truncate(max);
    let next = if truncated { uploads.last().map(|(id, u)| (u.key.clone(), id.clone())) } else { None };
    let listed = uploads
        .into_iter()
        .map(|(id, u)| MultipartUpload {
            key: Some(u.key),
            upload_id: Some(id),
            initiated: Some(Timestamp::from(SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(u.initiated))),
            checksum_algorithm: u.checksum_algorithm.map(ChecksumAlgorithm::from),
            checksum_type: u.checksum_type.map(ChecksumType::from),
            ..Default::default()
        })
        .collect();
    Ok(respond(ListMultipartUploadsOutput {
        bucket: Some(input.bucket),
        prefix: input.prefix,
        key_marker: input.key_marker,
        upload_id_marker: input.upload_id_marker,
        next_key_marker: next.as_ref().map(|n| n.0.clone()),
        next_upload_id_marker: next.map(|n| n.1),
        max_uploads: Some(max as i32),
        is_truncated: Some(truncated),
        uploads: Some(listed),
        ..Default::default()
    }))
}
