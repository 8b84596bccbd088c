//! CopyObject: a server-side copy (`copy_file_range`, a reflink where the file system can).

use std::io;

use s3s::dto::*;
use s3s::{S3Request, S3Response};

use super::get::Conditions;
use super::put::{WriteCondition, install_now, set_checksum_fields, user_metadata};
use super::{Depot, respond};
use crate::error::{Error, Result, write_error};
use crate::meta::ObjectMeta;
use crate::storage::Opened;

pub async fn copy_object(s3: &Depot, req: S3Request<CopyObjectInput>) -> Result<S3Response<CopyObjectOutput>> {
    let input = req.input;
    let (src_bucket, src_key) = source_of(&input.copy_source)?;
    let dest = s3.archive.bucket(&input.bucket)?;
    let dest_path = dest.path_of(&input.key)?;
    // The source is read through the storage (for a view: the backup's files too).
    let Opened { file: mut src_file, fs_meta, path: src_path, pin: _pin } =
        s3.storage.open(src_bucket, src_key).await?;
    let replace = input.metadata_directive.as_ref().is_some_and(|d| d.as_str() == MetadataDirective::REPLACE);
    if src_path == dest_path && !replace {
        return Err(Error::InvalidRequest(
            "copying an object onto itself needs x-amz-metadata-directive: REPLACE (there is nothing else to change)"
                .into(),
        ));
    }

    let src_meta = ObjectMeta::load_or_synthesize(&src_path, &fs_meta);
    check_source(&src_meta, &copy_conditions!(input))?;

    let mut meta = src_meta.clone();
    if input.tagging_directive.as_ref().is_some_and(|d| d.as_str() == TaggingDirective::REPLACE) {
        meta.tags = super::tagging::from_header(input.tagging.as_deref())?;
    }
    if replace {
        meta.headers = stored_headers!(input);
        meta.user = user_metadata(input.metadata.clone())?;
    }

    // A copy is a new single-part object, whose ETag S3 makes the MD5 of its bytes. A source
    // that already has one passes it on (and the copy can be a reflink); one with a multipart
    // or a hand-placed file's tag is hashed on the way.
    let hash = !is_md5(&meta.etag);
    // Copied and installed in one blocking call.
    let archive = std::sync::Arc::clone(&s3.archive);
    let key = input.key.clone();
    let (size, meta) = tokio::task::spawn_blocking(move || {
        let temp = archive.temp_file()?;
        let temp_path = temp.path().to_path_buf();
        let copied =
            if hash { copy_hashing(&mut src_file, &mut temp.file()) } else { copy_plain(&mut src_file, &temp) };
        let (size, md5) = copied.map_err(|e| write_error(&key, temp_path, e))?;
        if let Some(md5) = md5 {
            meta.etag = hex::encode(md5);
            meta.parts = None;
            meta.part_runs = crate::meta::PartRuns::default();
        }
        install_now(temp, meta.clone(), &dest_path, key, &WriteCondition::default())?;
        Ok::<_, Error>((size, meta))
    })
    .await
    .map_err(|e| Error::io("<copy task>")(io::Error::other(e)))??;
    s3.stats.object_written(size);

    let mut result = CopyObjectResult {
        e_tag: Some(ETag::Strong(meta.etag.clone())),
        last_modified: Some(Timestamp::from(std::time::SystemTime::now())),
        ..Default::default()
    };
    if let Some(checksum) = &meta.checksum {
        set_checksum_fields(checksum, &mut result);
    }
    Ok(respond(CopyObjectOutput { copy_object_result: Some(result), ..Default::default() }))
}

/// The bucket and key a copy reads (`x-amz-copy-source`, decoded by s3s). Buckets are
/// unversioned, so the one version a source can name is `null`.
pub(super) fn source_of(source: &CopySource) -> Result<(&str, &str)> {
    match source {
        CopySource::Bucket { bucket, key, version_id } => match version_id.as_deref() {
            None | Some("null") => Ok((bucket, key)),
            Some(other) => Err(Error::InvalidArgument(format!(
                "x-amz-copy-source names version {other:?}, which does not exist: buckets here are unversioned, \
                 so an object's one version is \"null\" (or leave ?versionId= out)"
            ))),
        },
        _ => Err(Error::InvalidRequest("copying from an access point or an outpost is not supported".into())),
    }
}

/// Checks a copy's `x-amz-copy-source-if-*` headers against its source. Every unmet one is a
/// 412: a copy has no 304 to give.
pub(super) fn check_source(meta: &ObjectMeta, conditions: &Conditions<'_>) -> Result<()> {
    conditions.check(meta).map_err(|_| Error::PreconditionFailed)
}

/// Whether an ETag is a plain MD5 (32 hex digits), as a single-part upload's is.
fn is_md5(etag: &str) -> bool {
    etag.len() == 32 && etag.bytes().all(|b| b.is_ascii_hexdigit())
}

fn copy_plain(src: &mut std::fs::File, temp: &depot_fs::TempFile) -> io::Result<(u64, Option<[u8; 16]>)> {
    Ok((io::copy(src, &mut temp.file())?, None))
}

/// Copies `src` into `dest`, returning the size and the MD5 of the bytes.
fn copy_hashing(src: &mut impl io::Read, dest: &mut impl io::Write) -> io::Result<(u64, Option<[u8; 16]>)> {
    use s3s::crypto::{Checksum as _, Md5};
    let mut md5 = Md5::new();
    // 128 KiB, not 1 MiB: 1 MiB writes made the kernel's copy into the page cache slow down
    // copy after copy (512 MiB: 2.1-3.2 s, now 1.5-1.8 s; see multipart.rs's COPY_CHUNK).
    let mut buf = vec![0u8; 128 * 1024];
    let mut size = 0u64;
    loop {
        let n = match src.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        md5.update(&buf[..n]);
        dest.write_all(&buf[..n])?;
        size += n as u64;
    }
    Ok((size, Some(md5.finalize())))
}
