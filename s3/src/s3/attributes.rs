//! GetObjectAttributes: what HEAD tells, in the shape newer SDKs ask for it (their checksum
//! helpers and transfer managers call it after an upload).
//!
//! Parts are reported by count only: a multipart object's record keeps how many parts made
//! it, not each part's size and checksum, so `ObjectParts` carries `TotalPartsCount` and no
//! part list — as S3 does for an object uploaded without checksums.

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
        output.object_parts =
            Some(GetObjectAttributesParts { total_parts_count: Some(parts as i32), ..Default::default() });
    }
    Ok(respond(output))
}
