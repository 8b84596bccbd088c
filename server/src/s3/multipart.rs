//! Multipart uploads: parts wait in `.depot/uploads/<id>/` until Complete concatenates them
//! into one temp file, which is then installed like any PUT.
//!
//! Each upload directory holds `upload.json` (bucket, key, headers, checksum settings) and
//! one file per part, named by its number, carrying its ETag and checksum in the same
//! extended-attribute record as objects. Parts are written through temp files too, so a
//! crash never leaves a partial part. Uploads survive a restart (with the same credentials a
//! client can finish them); Abort removes them.

use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use depot_fs::TempFile;
use s3s::crypto::{Checksum as _, Md5};
use s3s::dto::*;
use s3s::{S3Request, S3Response};
use serde::{Deserialize, Serialize};

use super::completion::{self, Completion};
use super::put::{install, user_metadata};
use super::{Depot, respond};
use crate::body::{self, Received};
use crate::digest::{Algorithm, Expected};
use crate::error::{Error, Result, write_error};
use crate::meta::{Headers, ObjectMeta, StoredChecksum};

/// S3's minimum size of every part but the last.
const MIN_PART: u64 = 5 * 1024 * 1024;
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

fn part_path(dir: &Path, part: i32) -> PathBuf {
    dir.join(format!("{part:05}"))
}

fn check_part_number(part: i32) -> Result<()> {
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
        headers: Headers {
            content_type: input.content_type,
            content_encoding: input.content_encoding,
            content_disposition: input.content_disposition,
            content_language: input.content_language,
            cache_control: input.cache_control,
            expires: Headers::expires_of(input.expires.as_ref()),
        },
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
    check_part_number(input.part_number)?;
    let (dir, _upload) = s3.upload(&input.upload_id, &input.bucket, &input.key)?;
    body::check_declared_length(input.content_length)?;
    let expected = Expected::from_headers(&headers)?;
    let Received { file, digests, .. } =
        body::receive(input.body, s3.archive.temp_file()?, expected.hasher(), &input.key).await?;
    let trailers = trailing_headers.and_then(|t| t.take());
    let checksum = expected.verify(&digests, trailers.as_ref())?;
    let meta = ObjectMeta { etag: digests.etag(), checksum: Some(checksum.clone()), ..ObjectMeta::default() };
    install(file, meta.clone(), part_path(&dir, input.part_number), input.key).await?;

    let mut output = UploadPartOutput { e_tag: Some(ETag::Strong(meta.etag)), ..Default::default() };
    if let Some(algorithm) = expected.algorithm() {
        let value = Some(checksum.value);
        match algorithm {
            Algorithm::Crc32 => output.checksum_crc32 = value,
            Algorithm::Crc32c => output.checksum_crc32c = value,
            Algorithm::Crc64Nvme => output.checksum_crc64nvme = value,
            Algorithm::Sha1 => output.checksum_sha1 = value,
            Algorithm::Sha256 => output.checksum_sha256 = value,
        }
    }
    Ok(respond(output))
}

/// A stored part.
struct StoredPart {
    number: i32,
    path: PathBuf,
    size: u64,
    meta: ObjectMeta,
}

/// The parts of an upload, by number.
fn stored_parts(dir: &Path) -> Result<Vec<StoredPart>> {
    let mut parts = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(Error::io(dir))? {
        let entry = entry.map_err(Error::io(dir))?;
        let Some(number) = entry.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else {
            continue;
        };
        let path = entry.path();
        let fs_meta = entry.metadata().map_err(Error::io(&path))?;
        let meta = ObjectMeta::load_or_synthesize(&path, &fs_meta);
        parts.push(StoredPart { number, path, size: fs_meta.len(), meta });
    }
    parts.sort_by_key(|p| p.number);
    Ok(parts)
}

pub async fn list_parts(s3: &Depot, req: S3Request<ListPartsInput>) -> Result<S3Response<ListPartsOutput>> {
    let input = req.input;
    let (dir, upload) = s3.upload(&input.upload_id, &input.bucket, &input.key)?;
    let marker = input.part_number_marker.unwrap_or(0);
    let max = input.max_parts.unwrap_or(MAX_LISTED).clamp(0, MAX_LISTED) as usize;
    let all: Vec<StoredPart> = stored_parts(&dir)?.into_iter().filter(|p| p.number > marker).collect();
    let truncated = all.len() > max;
    let listed: Vec<Part> = all
        .iter()
        .take(max)
        .map(|p| {
            let mut part = Part {
                part_number: Some(p.number),
                size: Some(p.size as i64),
                e_tag: Some(ETag::Strong(p.meta.etag.clone())),
                last_modified: Some(Timestamp::from(p.meta.last_modified())),
                ..Default::default()
            };
            if let Some(c) = &p.meta.checksum
                && upload.checksum_algorithm.as_deref() == Some(c.algorithm.as_str())
            {
                let value = Some(c.value.clone());
                match Algorithm::from_name(&c.algorithm) {
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
    let path = s3.archive.bucket(&input.bucket)?.path_of(&input.key)?;
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
    let mut chosen: Vec<&StoredPart> = Vec::with_capacity(requested.len());
    for (i, (part, number)) in requested.iter().zip(numbers).enumerate() {
        let found = stored
            .iter()
            .find(|p| p.number == number)
            .ok_or(Error::InvalidPart { part: number, problem: "was not uploaded" })?;
        if let Some(etag) = &part.e_tag
            && etag.value() != found.meta.etag
        {
            return Err(Error::InvalidPart { part: number, problem: "has a different ETag than the one uploaded" });
        }
        if let Some(algorithm) = algorithm
            && let Some(given) = completed_checksum(part, algorithm)
            && found.meta.checksum.as_ref().is_none_or(|c| c.value != given)
        {
            return Err(Error::InvalidPart { part: number, problem: "has a different checksum than the one uploaded" });
        }
        if i + 1 < requested.len() && found.size < MIN_PART {
            return Err(Error::EntityTooSmall { part: number, size: found.size });
        }
        chosen.push(found);
    }

    let part_paths: Vec<PathBuf> = chosen.iter().map(|p| p.path.clone()).collect();
    let full_object = if composite { None } else { algorithm };
    let temp = s3.archive.temp_file()?;
    let key = input.key.clone();
    let (temp, size, digests) = tokio::task::spawn_blocking(move || concatenate(temp, &part_paths, full_object, &key))
        .await
        .map_err(blocking_error)??;

    let n = chosen.len();
    let mut etags = Vec::new();
    for part in &chosen {
        etags.extend(hex::decode(&part.meta.etag).unwrap_or_else(|_| part.meta.etag.as_bytes().to_vec()));
    }
    let etag = format!("{}-{n}", hex::encode(Md5::checksum(&etags)));
    let checksum = match (algorithm, composite) {
        (Some(algorithm), true) => {
            let mut joined = Vec::new();
            for part in &chosen {
                let value = part.meta.checksum.as_ref().filter(|c| c.algorithm == algorithm.name()).ok_or(
                    Error::InvalidPart { part: part.number, problem: "was uploaded without the upload's checksum" },
                )?;
                joined.extend(BASE64.decode(&value.value).unwrap_or_default());
            }
            StoredChecksum {
                algorithm: algorithm.name().to_owned(),
                value: format!("{}-{n}", BASE64.encode(algorithm.digest(&joined))),
                kind: ChecksumType::COMPOSITE.to_owned(),
            }
        }
        (Some(algorithm), false) => StoredChecksum {
            algorithm: algorithm.name().to_owned(),
            value: digests.1.expect("computed for FULL_OBJECT"),
            kind: ChecksumType::FULL_OBJECT.to_owned(),
        },
        (None, _) => StoredChecksum {
            algorithm: Algorithm::Crc64Nvme.name().to_owned(),
            value: digests.0,
            kind: ChecksumType::FULL_OBJECT.to_owned(),
        },
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
        ..ObjectMeta::default()
    };
    install(temp, meta, path.clone(), input.key.clone()).await?;
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

/// Writes the parts one after another into `temp`, computing CRC64-NVME (and `full_object`'s
/// algorithm) over the whole. Returns the file, its size, and the base64 digests.
fn concatenate(
    mut temp: TempFile,
    parts: &[PathBuf],
    full_object: Option<Algorithm>,
    key: &str,
) -> Result<(TempFile, u64, (String, Option<String>))> {
    let mut headers = http::HeaderMap::new();
    if let Some(algorithm) = full_object {
        headers.insert("x-amz-sdk-checksum-algorithm", http::HeaderValue::from_static(algorithm.name()));
    }
    let expected = Expected::from_headers(&headers)?;
    let mut hasher = expected.hasher();
    let mut buf = vec![0u8; 1024 * 1024];
    let mut size = 0u64;
    for path in parts {
        let mut file = std::fs::File::open(path).map_err(Error::io(path))?;
        loop {
            let n = file.read(&mut buf).map_err(Error::io(path))?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            temp.write_all(&buf[..n]).map_err(|e| write_error(key, temp.path().to_path_buf(), e))?;
            size += n as u64;
        }
    }
    let digests = hasher.finalize(None);
    let crc64 = digests.base64(Algorithm::Crc64Nvme).expect("always computed");
    Ok((temp, size, (crc64, full_object.and_then(|a| digests.base64(a)))))
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
