//! Bucket-level operations.

use s3s::dto::*;
use s3s::{S3Request, S3Response};

use super::{Depot, respond};
use crate::error::{Error, Result};

pub async fn list_buckets(s3: &Depot, _req: S3Request<ListBucketsInput>) -> Result<S3Response<ListBucketsOutput>> {
    let buckets = s3
        .archive
        .buckets()?
        .into_iter()
        .map(|(name, created)| Bucket {
            name: Some(name),
            creation_date: Some(Timestamp::from(created)),
            bucket_region: Some(s3.region.clone()),
        })
        .collect();
    Ok(respond(ListBucketsOutput { buckets: Some(buckets), ..Default::default() }))
}

pub async fn create_bucket(s3: &Depot, req: S3Request<CreateBucketInput>) -> Result<S3Response<CreateBucketOutput>> {
    match s3.archive.create_bucket(&req.input.bucket) {
        // S3 answers 200 in us-east-1 (legacy clients count on it), 409 everywhere else.
        Err(Error::BucketAlreadyOwnedByYou { .. }) if s3.region == "us-east-1" => {}
        result => result?,
    }
    Ok(respond(CreateBucketOutput { location: Some(format!("/{}", req.input.bucket)) }))
}

pub async fn delete_bucket(s3: &Depot, req: S3Request<DeleteBucketInput>) -> Result<S3Response<DeleteBucketOutput>> {
    s3.archive.delete_bucket(&req.input.bucket)?;
    Ok(respond(DeleteBucketOutput {}))
}

pub async fn head_bucket(s3: &Depot, req: S3Request<HeadBucketInput>) -> Result<S3Response<HeadBucketOutput>> {
    s3.archive.bucket(&req.input.bucket)?;
    // BR compares this with the region in its storage URL.
    Ok(respond(HeadBucketOutput { bucket_region: Some(s3.region.clone()), ..Default::default() }))
}

pub async fn get_bucket_location(
    s3: &Depot,
    req: S3Request<GetBucketLocationInput>,
) -> Result<S3Response<GetBucketLocationOutput>> {
    s3.archive.bucket(&req.input.bucket)?;
    // S3 reports us-east-1 as an empty constraint.
    let location = (s3.region != "us-east-1").then(|| BucketLocationConstraint::from(s3.region.clone()));
    Ok(respond(GetBucketLocationOutput { location_constraint: location }))
}

pub async fn get_bucket_versioning(
    s3: &Depot,
    req: S3Request<GetBucketVersioningInput>,
) -> Result<S3Response<GetBucketVersioningOutput>> {
    s3.archive.bucket(&req.input.bucket)?;
    // Never enabled: an empty configuration, as S3 answers for a bucket that never had it.
    Ok(respond(GetBucketVersioningOutput::default()))
}

pub async fn get_object_lock_configuration(
    s3: &Depot,
    req: S3Request<GetObjectLockConfigurationInput>,
) -> Result<S3Response<GetObjectLockConfigurationOutput>> {
    s3.archive.bucket(&req.input.bucket)?;
    // BR asks before writing; "not configured" lets it go ahead.
    Err(Error::ObjectLockNotConfigured)
}
