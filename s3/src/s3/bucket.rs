//! Bucket-level operations.

use s3s::dto::*;
use s3s::{S3Request, S3Response};

use super::{Depot, respond};
use crate::error::{Error, Result};

pub async fn list_buckets(s3: &Depot, req: S3Request<ListBucketsInput>) -> Result<S3Response<ListBucketsOutput>> {
    let owner = super::owner(&req);
    let input = req.input;
    // Pages by name (`max-buckets`, `continuation-token`: the last name given), as S3 does
    // since 2024; without `max-buckets`, every bucket in one answer.
    let after = match &input.continuation_token {
        Some(token) => Some(
            super::list::decode_token(token)
                .ok_or_else(|| Error::InvalidArgument("the continuation token is not one this server issued".into()))?,
        ),
        None => None,
    };
    let max = match input.max_buckets {
        Some(n) if !(1..=10_000).contains(&n) => {
            return Err(Error::InvalidArgument(format!("max-buckets {n} is outside 1..=10000")));
        }
        Some(n) => n as usize,
        None => usize::MAX,
    };
    let prefix = input.prefix.clone().unwrap_or_default();
    let mut names = s3.archive.buckets()?;
    names.sort_by(|a, b| a.0.cmp(&b.0));
    let mut matching = names
        .into_iter()
        .filter(|(name, _)| name.starts_with(&prefix) && after.as_ref().is_none_or(|a| name > a))
        .peekable();
    let mut buckets = Vec::new();
    while buckets.len() < max
        && let Some((name, created)) = matching.next()
    {
        buckets.push(Bucket {
            name: Some(name),
            creation_date: Some(Timestamp::from(created)),
            bucket_region: Some(s3.region.clone()),
        });
    }
    let more = matching.peek().is_some();
    let last = buckets.last().and_then(|b| b.name.as_deref());
    let continuation_token = last.filter(|_| more).map(super::list::encode_token);
    Ok(respond(ListBucketsOutput { buckets: Some(buckets), owner, continuation_token, prefix: input.prefix }))
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
