//! The `s3s::S3` implementation over a [`Storage`] (reads, listings) and an [`Archive`]
//! (writes).
//!
//! One module per operation family (as Garage's `api/s3/`); this file only delegates, and
//! operations Depot does not implement keep s3s's `NotImplemented` default.
//!
//! - [`bucket`]: ListBuckets, CreateBucket, DeleteBucket, HeadBucket, GetBucketLocation,
//!   GetBucketVersioning, GetObjectLockConfiguration.
//! - [`put`]: PutObject (with conditional writes), and [`put::install`], the one commit path
//!   of every write.
//! - [`get`]: GetObject and HeadObject (ranges, conditional requests).
//! - [`attributes`]: GetObjectAttributes (what HEAD tells, as newer SDKs ask for it).
//! - [`list`]: ListObjects (V1), ListObjectsV2 and ListObjectVersions.
//! - [`delete`]: DeleteObject and DeleteObjects.
//! - [`copy`]: server-side CopyObject.
//! - [`multipart`]: Create, UploadPart, UploadPartCopy, ListParts, Complete, Abort,
//!   ListMultipartUploads.
//! - [`tagging`]: PutObjectTagging, GetObjectTagging, DeleteObjectTagging.
//! - [`completion`]: the record that makes a repeated Complete answer the same.

/// The headers S3 stores with an object, from a write request (PutObject, CopyObject with
/// `REPLACE`, CreateMultipartUpload): their input types share these fields but no trait.
macro_rules! stored_headers {
    ($input:expr) => {
        $crate::meta::Headers {
            content_type: $input.content_type.clone(),
            content_encoding: $crate::meta::Headers::content_encoding_of($input.content_encoding.as_deref()),
            content_disposition: $input.content_disposition.clone(),
            content_language: $input.content_language.clone(),
            cache_control: $input.cache_control.clone(),
            expires: $crate::meta::Headers::expires_of($input.expires.as_ref()),
        }
    };
}

/// The `x-amz-copy-source-if-*` conditions of a copy (CopyObject, UploadPartCopy): their input
/// types share these fields but no trait.
macro_rules! copy_conditions {
    ($input:expr) => {
        $crate::s3::get::Conditions {
            if_match: $input.copy_source_if_match.as_ref(),
            if_none_match: $input.copy_source_if_none_match.as_ref(),
            if_modified_since: $input.copy_source_if_modified_since.as_ref(),
            if_unmodified_since: $input.copy_source_if_unmodified_since.as_ref(),
        }
    };
}

mod attributes;
mod bucket;
mod completion;
mod copy;
mod delete;
mod get;
mod list;
mod multipart;
mod put;
mod tagging;

use std::sync::Arc;

use s3s::dto::*;
use s3s::{S3, S3Error, S3Request, S3Response, S3Result};

use crate::archive::Archive;
use crate::stats::Stats;
use crate::storage::Storage;
use crate::uploads::Uploads;

/// The S3 service. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Depot {
    /// Where reads and listings go.
    storage: Arc<dyn Storage>,
    /// Where writes go (for `depot serve`, the same archive as `storage`).
    archive: Arc<Archive>,
    stats: Arc<Stats>,
    /// Multipart uploads in progress.
    uploads: Arc<Uploads>,
    /// Reported by HeadBucket (`x-amz-bucket-region`) and GetBucketLocation.
    region: String,
    /// The advertised endpoint, for `Location` in CompleteMultipartUpload.
    endpoint: String,
}

impl Depot {
    /// Serves `archive`, reporting `region`, counting into `stats`.
    pub fn new(archive: Arc<Archive>, stats: Arc<Stats>, region: String) -> Self {
        Self::over(Arc::clone(&archive) as Arc<dyn Storage>, archive, stats, region)
    }

    /// Serves reads and listings from `storage` and takes writes into `archive`.
    pub fn over(storage: Arc<dyn Storage>, archive: Arc<Archive>, stats: Arc<Stats>, region: String) -> Self {
        let uploads = Arc::new(Uploads::new(archive.uploads_dir()));
        Self { storage, archive, stats, uploads, region, endpoint: String::new() }
    }

    /// The multipart uploads (for the expiry sweep).
    pub fn uploads(&self) -> &Arc<Uploads> {
        &self.uploads
    }

    /// Names the advertised endpoint (`https://host:port`) used in `Location` answers.
    #[must_use]
    pub fn with_endpoint(mut self, endpoint: String) -> Self {
        self.endpoint = endpoint;
        self
    }
}

/// The owner S3 names in listings: the caller's credential, as one account. Its ID is
/// canonical-user shaped (64 hex digits, a SHA-256 of the access key: stable, and no secret).
fn owner<T>(req: &S3Request<T>) -> Option<Owner> {
    use sha2::Digest as _;
    let access_key = &req.credentials.as_ref()?.access_key;
    Some(Owner {
        id: Some(hex::encode(sha2::Sha256::digest(format!("depot:{access_key}")))),
        display_name: Some(access_key.clone()),
    })
}

/// Wraps an output in a default response.
fn respond<T>(output: T) -> S3Response<T> {
    S3Response::new(output)
}

macro_rules! delegate {
    ($($op:ident => $module:ident, $input:ident, $output:ident;)*) => {
        #[async_trait::async_trait]
        impl S3 for Depot {
            $(
                #[tracing::instrument(level = "debug", skip_all)]
                async fn $op(&self, req: S3Request<$input>) -> S3Result<S3Response<$output>> {
                    $module::$op(self, req).await.map_err(S3Error::from)
                }
            )*
        }
    };
}

delegate! {
    list_buckets => bucket, ListBucketsInput, ListBucketsOutput;
    create_bucket => bucket, CreateBucketInput, CreateBucketOutput;
    delete_bucket => bucket, DeleteBucketInput, DeleteBucketOutput;
    head_bucket => bucket, HeadBucketInput, HeadBucketOutput;
    get_bucket_location => bucket, GetBucketLocationInput, GetBucketLocationOutput;
    get_bucket_versioning => bucket, GetBucketVersioningInput, GetBucketVersioningOutput;
    get_object_lock_configuration => bucket, GetObjectLockConfigurationInput, GetObjectLockConfigurationOutput;
    put_object => put, PutObjectInput, PutObjectOutput;
    get_object => get, GetObjectInput, GetObjectOutput;
    head_object => get, HeadObjectInput, HeadObjectOutput;
    get_object_attributes => attributes, GetObjectAttributesInput, GetObjectAttributesOutput;
    list_objects => list, ListObjectsInput, ListObjectsOutput;
    list_objects_v2 => list, ListObjectsV2Input, ListObjectsV2Output;
    list_object_versions => list, ListObjectVersionsInput, ListObjectVersionsOutput;
    delete_object => delete, DeleteObjectInput, DeleteObjectOutput;
    delete_objects => delete, DeleteObjectsInput, DeleteObjectsOutput;
    copy_object => copy, CopyObjectInput, CopyObjectOutput;
    create_multipart_upload => multipart, CreateMultipartUploadInput, CreateMultipartUploadOutput;
    upload_part => multipart, UploadPartInput, UploadPartOutput;
    upload_part_copy => multipart, UploadPartCopyInput, UploadPartCopyOutput;
    list_parts => multipart, ListPartsInput, ListPartsOutput;
    complete_multipart_upload => multipart, CompleteMultipartUploadInput, CompleteMultipartUploadOutput;
    abort_multipart_upload => multipart, AbortMultipartUploadInput, AbortMultipartUploadOutput;
    list_multipart_uploads => multipart, ListMultipartUploadsInput, ListMultipartUploadsOutput;
    put_object_tagging => tagging, PutObjectTaggingInput, PutObjectTaggingOutput;
    get_object_tagging => tagging, GetObjectTaggingInput, GetObjectTaggingOutput;
    delete_object_tagging => tagging, DeleteObjectTaggingInput, DeleteObjectTaggingOutput;
}
