//! ListObjects (V1), ListObjectsV2 and ListObjectVersions over [`crate::storage::Storage::list`].
//!
//! Buckets are never versioned, so ListObjectVersions lists each object once, as S3 does for
//! an unversioned bucket: version id `null`, the latest. Tools that empty a bucket through it
//! (boto3's `object_versions.delete()`, s3-tests' clean-up, Terraform) then work unchanged.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as TOKEN;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use s3s::dto::*;
use s3s::{S3Request, S3Response};

use super::{Depot, respond};
use crate::error::{Error, Result};
use crate::listing::{Page, Query};

/// S3's cap on keys per page.
const MAX_KEYS: i32 = 1000;

/// Characters left as they are under `encoding-type=url`: unreserved ones and `/`. Encoding
/// everything else means any URL decoder (with or without `+` as space) restores the key.
const KEY_ENCODE: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'_').remove(b'.').remove(b'~').remove(b'/');

/// Applies `encoding-type=url` when asked.
struct Encoder(bool);

impl Encoder {
    fn new(encoding: Option<&EncodingType>) -> Result<Self> {
        match encoding.map(EncodingType::as_str) {
            None => Ok(Self(false)),
            Some("url") => Ok(Self(true)),
            Some(other) => Err(Error::InvalidRequest(format!("unsupported encoding-type {other:?}; only \"url\" is"))),
        }
    }

    fn apply(&self, value: String) -> String {
        if self.0 { utf8_percent_encode(&value, KEY_ENCODE).to_string() } else { value }
    }
}

async fn run(s3: &Depot, bucket: &str, query: Query) -> Result<Page> {
    s3.storage.list(bucket, query).await
}

/// A continuation token: the last name a page gave, encoded so it stays opaque.
pub(super) fn encode_token(last: &str) -> String {
    TOKEN.encode(last)
}

/// The last name a continuation token holds; `None` for a token this server did not issue.
pub(super) fn decode_token(token: &str) -> Option<String> {
    TOKEN.decode(token).ok().and_then(|bytes| String::from_utf8(bytes).ok())
}

fn max_keys(requested: Option<i32>) -> Result<usize> {
    match requested {
        Some(n) if n < 0 => Err(Error::InvalidRequest("max-keys cannot be negative".into())),
        Some(n) => Ok(n.min(MAX_KEYS) as usize),
        None => Ok(MAX_KEYS as usize),
    }
}

fn contents(page: &Page, enc: &Encoder, owner: Option<&Owner>) -> (Vec<Object>, Vec<CommonPrefix>) {
    let objects = page
        .objects
        .iter()
        .map(|o| Object {
            key: Some(enc.apply(o.key.clone())),
            size: Some(o.size as i64),
            e_tag: Some(ETag::Strong(o.etag.clone())),
            last_modified: Some(Timestamp::from(o.last_modified)),
            storage_class: Some(ObjectStorageClass::from_static(ObjectStorageClass::STANDARD)),
            owner: owner.cloned(),
            ..Default::default()
        })
        .collect();
    let prefixes = page.prefixes.iter().map(|p| CommonPrefix { prefix: Some(enc.apply(p.clone())) }).collect();
    (objects, prefixes)
}

pub async fn list_objects(s3: &Depot, req: S3Request<ListObjectsInput>) -> Result<S3Response<ListObjectsOutput>> {
    // V1 names each object's owner, as S3 does.
    let owner = super::owner(&req);
    let input = req.input;
    let enc = Encoder::new(input.encoding_type.as_ref())?;
    let query = Query {
        prefix: input.prefix.clone().unwrap_or_default(),
        delimiter: input.delimiter.clone().filter(|d| !d.is_empty()),
        after: input.marker.clone().unwrap_or_default(),
        max_keys: max_keys(input.max_keys)?,
    };
    let page = run(s3, &input.bucket, query).await?;
    let (objects, prefixes) = contents(&page, &enc, owner.as_ref());
    Ok(respond(ListObjectsOutput {
        name: Some(input.bucket),
        prefix: Some(enc.apply(input.prefix.unwrap_or_default())),
        marker: Some(enc.apply(input.marker.unwrap_or_default())),
        max_keys: Some(input.max_keys.unwrap_or(MAX_KEYS)),
        is_truncated: Some(page.truncated),
        next_marker: page.truncated.then(|| page.last.clone().map(|l| enc.apply(l))).flatten(),
        // An empty `delimiter=` is no delimiter, and S3 does not echo it.
        delimiter: input.delimiter.filter(|d| !d.is_empty()).map(|d| enc.apply(d)),
        encoding_type: input.encoding_type,
        contents: Some(objects),
        common_prefixes: Some(prefixes),
        ..Default::default()
    }))
}

pub async fn list_objects_v2(
    s3: &Depot,
    req: S3Request<ListObjectsV2Input>,
) -> Result<S3Response<ListObjectsV2Output>> {
    // V2 names owners only when asked (`fetch-owner=true`), as S3 does.
    let owner = if req.input.fetch_owner == Some(true) { super::owner(&req) } else { None };
    let input = req.input;
    let enc = Encoder::new(input.encoding_type.as_ref())?;
    // The continuation token is the last key or prefix returned, encoded so it stays opaque.
    let after = match &input.continuation_token {
        Some(token) => decode_token(token)
            .ok_or_else(|| Error::InvalidRequest("the continuation token is not one this server issued".into()))?,
        None => input.start_after.clone().unwrap_or_default(),
    };
    let query = Query {
        prefix: input.prefix.clone().unwrap_or_default(),
        delimiter: input.delimiter.clone().filter(|d| !d.is_empty()),
        after,
        max_keys: max_keys(input.max_keys)?,
    };
    let page = run(s3, &input.bucket, query).await?;
    let (objects, prefixes) = contents(&page, &enc, owner.as_ref());
    let key_count = (objects.len() + prefixes.len()) as i32;
    Ok(respond(ListObjectsV2Output {
        name: Some(input.bucket),
        prefix: Some(enc.apply(input.prefix.unwrap_or_default())),
        max_keys: Some(input.max_keys.unwrap_or(MAX_KEYS)),
        key_count: Some(key_count),
        continuation_token: input.continuation_token,
        is_truncated: Some(page.truncated),
        next_continuation_token: page.truncated.then(|| page.last.as_deref().map(encode_token)).flatten(),
        // An empty `delimiter=` is no delimiter, and S3 does not echo it.
        delimiter: input.delimiter.filter(|d| !d.is_empty()).map(|d| enc.apply(d)),
        encoding_type: input.encoding_type,
        start_after: input.start_after.map(|s| enc.apply(s)),
        contents: Some(objects),
        common_prefixes: Some(prefixes),
        ..Default::default()
    }))
}

/// The one version id of an object in an unversioned bucket.
pub const NULL_VERSION: &str = "null";

pub async fn list_object_versions(
    s3: &Depot,
    req: S3Request<ListObjectVersionsInput>,
) -> Result<S3Response<ListObjectVersionsOutput>> {
    let owner = super::owner(&req);
    let input = req.input;
    let enc = Encoder::new(input.encoding_type.as_ref())?;
    let key_marker = input.key_marker.clone().filter(|m| !m.is_empty());
    match (&key_marker, input.version_id_marker.as_deref()) {
        (None, Some(v)) if !v.is_empty() => {
            return Err(Error::InvalidArgument("a version-id-marker cannot be given without a key-marker".into()));
        }
        // Every object's one version is `null`: after it comes the next key, as after the key.
        (_, Some(v)) if !v.is_empty() && v != NULL_VERSION => {
            return Err(Error::InvalidArgument(format!(
                "invalid version-id-marker {v:?}: this server does not keep versions (every object's version id is \"null\")"
            )));
        }
        _ => {}
    }
    let query = Query {
        prefix: input.prefix.clone().unwrap_or_default(),
        delimiter: input.delimiter.clone().filter(|d| !d.is_empty()),
        after: key_marker.clone().unwrap_or_default(),
        max_keys: max_keys(input.max_keys)?,
    };
    let page = run(s3, &input.bucket, query).await?;
    let (objects, prefixes) = contents(&page, &enc, owner.as_ref());
    let versions = objects
        .into_iter()
        .map(|o| ObjectVersion {
            key: o.key,
            size: o.size,
            e_tag: o.e_tag,
            last_modified: o.last_modified,
            owner: o.owner,
            is_latest: Some(true),
            version_id: Some(NULL_VERSION.into()),
            storage_class: Some(ObjectVersionStorageClass::from_static(ObjectVersionStorageClass::STANDARD)),
            ..Default::default()
        })
        .collect::<Vec<_>>();
    // The next page starts after the last entry; a version marker only when that was a key.
    let last_is_key = page.last.as_ref().is_some_and(|l| page.objects.last().is_some_and(|o| &o.key == l));
    Ok(respond(ListObjectVersionsOutput {
        name: Some(input.bucket),
        prefix: Some(enc.apply(input.prefix.unwrap_or_default())),
        key_marker: Some(enc.apply(key_marker.unwrap_or_default())),
        version_id_marker: Some(input.version_id_marker.unwrap_or_default()),
        max_keys: Some(input.max_keys.unwrap_or(MAX_KEYS)),
        is_truncated: Some(page.truncated),
        next_key_marker: page.truncated.then(|| page.last.clone().map(|l| enc.apply(l))).flatten(),
        next_version_id_marker: (page.truncated && last_is_key).then(|| NULL_VERSION.to_owned()),
        delimiter: input.delimiter.filter(|d| !d.is_empty()).map(|d| enc.apply(d)),
        encoding_type: input.encoding_type,
        versions: Some(versions),
        common_prefixes: Some(prefixes),
        ..Default::default()
    }))
}
