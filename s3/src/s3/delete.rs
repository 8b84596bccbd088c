//! DeleteObject and DeleteObjects. A missing key is not an error (S3 answers 204 either way);
//! directories left empty are removed so no phantom prefix remains.

use std::io;

use s3s::dto::*;
use s3s::{S3Error, S3Request, S3Response};

use super::{Depot, respond};
use crate::archive::Bucket;
use crate::error::{Error, Result};

/// S3's cap on keys per DeleteObjects request.
const MAX_DELETE: usize = 1000;

/// Deletes one key's file; `Ok` when it was not there.
fn delete_key(bucket: &Bucket, key: &str) -> Result<()> {
    let path = bucket.path_of(key)?;
    match std::fs::symlink_metadata(&path) {
        // A directory is a prefix, not an object: nothing to delete.
        Ok(meta) if meta.is_dir() => return Ok(()),
        Ok(_) => {}
        Err(e) if matches!(e.kind(), io::ErrorKind::NotFound | io::ErrorKind::NotADirectory) => return Ok(()),
        Err(e) => return Err(Error::io(&path)(e)),
    }
    // A large file is freed after the answer (see depot_fs::release), not inside the unlink:
    // held until this function returns, after the directory fsync and the prune.
    let _held = depot_fs::release::hold_if_large(&path);
    match std::fs::remove_file(&path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(Error::io(&path)(e)),
    }
    if let Some(parent) = path.parent() {
        match depot_fs::sync_dir(parent) {
            // A concurrent delete already removed the emptied directory.
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(Error::io(parent)(e)),
            // Emptied directories go durably too, so they do not come back after a power cut.
            _ => bucket.root.prune_empty_dirs(parent).map_err(Error::io(parent))?,
        }
    }
    Ok(())
}

pub async fn delete_object(s3: &Depot, req: S3Request<DeleteObjectInput>) -> Result<S3Response<DeleteObjectOutput>> {
    let bucket = s3.archive.bucket(&req.input.bucket)?;
    let key = req.input.key;
    tokio::task::spawn_blocking(move || delete_key(&bucket, &key))
        .await
        .map_err(|e| Error::io("<delete task>")(io::Error::other(e)))??;
    Ok(respond(DeleteObjectOutput::default()))
}

pub async fn delete_objects(s3: &Depot, req: S3Request<DeleteObjectsInput>) -> Result<S3Response<DeleteObjectsOutput>> {
    let bucket = s3.archive.bucket(&req.input.bucket)?;
    let delete = req.input.delete;
    if delete.objects.len() > MAX_DELETE {
        return Err(Error::InvalidRequest(format!("at most {MAX_DELETE} keys can be deleted in one request")));
    }
    let quiet = delete.quiet.unwrap_or(false);
    let (deleted, errors) = tokio::task::spawn_blocking(move || {
        let mut deleted = Vec::new();
        let mut errors = Vec::new();
        for object in delete.objects {
            match delete_key(&bucket, &object.key) {
                Ok(()) if quiet => {}
                Ok(()) => deleted.push(DeletedObject { key: Some(object.key), ..Default::default() }),
                Err(err) => {
                    let err = S3Error::from(err);
                    errors.push(s3s::dto::Error {
                        code: Some(err.code().as_str().to_owned()),
                        message: err.message().map(str::to_owned),
                        key: Some(object.key),
                        version_id: None,
                    });
                }
            }
        }
        (deleted, errors)
    })
    .await
    .map_err(|e| Error::io("<delete task>")(io::Error::other(e)))?;
    Ok(respond(DeleteObjectsOutput { deleted: Some(deleted), errors: Some(errors), ..Default::default() }))
}
