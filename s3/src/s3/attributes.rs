//! GetObjectAttributes: what HEAD tells, in the shape newer SDKs ask for it (their checksum
//! helpers and transfer managers call it after an upload).
//!
//! A multipart object's record keeps its parts' sizes (not their checksums), so `ObjectParts`
//! lists each part's number and size, paged by `max-parts` and `part-number-marker`; an object
//! completed before the sizes were kept reports `TotalPartsCount` only.

use s3s::dto::*;
use s3s::{S3Request, S3Response};

use super::put::set_checksum_fields;
use super::{Depot, respond};
use crate::error::Result;
use crate::meta::ObjectMeta;
use crate::storage::Opened;

pub async fn get_object_attributes(
    s3: &Depot,
    req: S3Request<GetObjectAttributesInput>,
) -> Result<S3Response<GetObjectAttributesOutput>> {
    let input = req.input;
    let Opened { fs_meta, path, .. } = s3.storage.open(&input.bucket, &input.key).await?;
    let meta = ObjectMeta::load_or_synthesize(&path, &fs_meta);
    // One header, `x-amz-object-attributes`: the SDKs send a list, boto3 one comma-separated value.
    let wanted = |name: &str| {
        input.object_attributes.iter().flat_map(|a| a.as_str().split(',')).any(|a| a.trim().eq_ignore_ascii_case(name))
    };
    let mut output =
        GetObjectAttributesOutput { last_modified: Some(Timestamp::from(meta.last_modified())), ..Default::default() };
    if wanted(ObjectAttributes::ETAG) {
        // S3 sends this one unquoted; s3s's serializer quotes every ETag (clients trim them).
        output.e_tag = Some(ETag::Strong(meta.etag.clone()));
    }
    if wanted(ObjectAttributes::OBJECT_SIZE) {
        output.object_size = Some(fs_meta.len() as i64);
    }
    if wanted(ObjectAttributes::STORAGE_CLASS) {
        output.storage_class = Some(StorageClass::from_static(StorageClass::STANDARD));
    }
    if wanted(ObjectAttributes::CHECKSUM)
        && let Some(stored) = &meta.checksum
    {
        let mut checksum = Checksum::default();
        set_checksum_fields(stored, &mut checksum);
        output.checksum = Some(checksum);
    }
    if wanted(ObjectAttributes::OBJECT_PARTS)
        && let Some(parts) = meta.parts
    {
        output.object_parts = Some(object_parts(&meta, parts, input.part_number_marker, input.max_parts));
    }
    Ok(respond(output))
}

/// S3's default and largest `max-parts`.
const MAX_PARTS: i32 = 1000;

/// The page of parts after `marker`, at most `max` of them.
fn object_parts(meta: &ObjectMeta, parts: u32, marker: Option<i32>, max: Option<i32>) -> GetObjectAttributesParts {
    let max = max.unwrap_or(MAX_PARTS).clamp(0, MAX_PARTS);
    let mut page = GetObjectAttributesParts {
        total_parts_count: Some(parts as i32),
        part_number_marker: marker,
        max_parts: Some(max),
        is_truncated: Some(false),
        ..Default::default()
    };
    if meta.part_runs.is_empty() {
        return page; // sizes not kept: the count alone
    }
    let first = marker.unwrap_or(0).max(0).unsigned_abs() + 1;
    let listed: Vec<ObjectPart> = (first..=parts)
        .take(max.unsigned_abs() as usize)
        .filter_map(|n| {
            let range = meta.part_runs.range(n)?;
            Some(ObjectPart {
                part_number: Some(n as i32),
                size: Some((range.end - range.start) as i64),
                ..Default::default()
            })
        })
        .collect();
    let last = listed.last().and_then(|p| p.part_number);
    let truncated = last.is_some_and(|l| (l as u32) < parts);
    page.is_truncated = Some(truncated);
    page.next_part_number_marker = if truncated { last } else { None };
    page.parts = Some(listed);
    page
}
