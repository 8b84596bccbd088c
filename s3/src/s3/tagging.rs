//! Object tagging: Put/Get/DeleteObjectTagging and the `x-amz-tagging` header of writes.
//!
//! Tags live in the object's metadata record ([`ObjectMeta::tags`]), so they appear with the
//! object's bytes at install and are replaced in one `fsetxattr` (then fsync) afterwards; the
//! record stays bound to the same size and mtime, since setting it changes neither.

use std::collections::BTreeMap;

use s3s::dto::*;
use s3s::{S3Request, S3Response};

use super::{Depot, respond};
use crate::error::{Error, Result, write_error};
use crate::meta::ObjectMeta;
use crate::storage::open_file as open;

/// S3's limits.
const MAX_TAGS: usize = 10;
const MAX_KEY_CHARS: usize = 128;
const MAX_VALUE_CHARS: usize = 256;

/// Checks tags against S3's rules and collects them.
///
/// # Errors
/// [`Error::InvalidTag`] or [`Error::TooManyTags`].
pub fn checked(tags: impl IntoIterator<Item = (String, String)>) -> Result<BTreeMap<String, String>> {
    let mut map = BTreeMap::new();
    let mut count = 0;
    for (key, value) in tags {
        count += 1;
        if key.is_empty() {
            return Err(Error::InvalidTag("a tag key cannot be empty".into()));
        }
        if key.chars().count() > MAX_KEY_CHARS {
            return Err(Error::InvalidTag(format!(
                "the tag key {key:?} is too long; at most {MAX_KEY_CHARS} characters"
            )));
        }
        if value.chars().count() > MAX_VALUE_CHARS {
            return Err(Error::InvalidTag(format!(
                "the value of tag {key:?} is too long; at most {MAX_VALUE_CHARS} characters"
            )));
        }
        if map.insert(key.clone(), value).is_some() {
            return Err(Error::InvalidTag(format!("the tag key {key:?} is given more than once")));
        }
    }
    if count > MAX_TAGS {
        return Err(Error::TooManyTags { count });
    }
    Ok(map)
}

/// The tags of an `x-amz-tagging` header (`k1=v1&k2=v2`, URL-encoded).
///
/// # Errors
/// See [`checked`].
pub fn from_header(header: Option<&str>) -> Result<BTreeMap<String, String>> {
    let Some(header) = header.filter(|h| !h.is_empty()) else {
        return Ok(BTreeMap::new());
    };
    checked(form_urlencoded::parse(header.as_bytes()).into_owned())
}

fn tag_set(tags: &BTreeMap<String, String>) -> TagSet {
    tags.iter().map(|(k, v)| Tag { key: Some(k.clone()), value: Some(v.clone()) }).collect()
}

/// Replaces the tags of `bucket`/`key` on a blocking thread: the record is rewritten in place
/// and the file fsynced before the reply.
async fn set_tags(s3: &Depot, bucket: &str, key: String, tags: BTreeMap<String, String>) -> Result<()> {
    let path = s3.archive.bucket(bucket)?.path_of(&key)?;
    tokio::task::spawn_blocking(move || {
        let (file, fs_meta) = open(&path, &key)?;
        let mut meta = ObjectMeta::load_or_synthesize(&path, &fs_meta);
        meta.tags = tags;
        meta.store(&file).map_err(|e| write_error(&key, path.clone(), e))?;
        file.sync_all().map_err(Error::io(&path))
    })
    .await
    .map_err(|e| Error::io("<tagging task>")(std::io::Error::other(e)))?
}

pub async fn put_object_tagging(
    s3: &Depot,
    req: S3Request<PutObjectTaggingInput>,
) -> Result<S3Response<PutObjectTaggingOutput>> {
    let input = req.input;
    let tags =
        checked(input.tagging.tag_set.into_iter().map(|t| (t.key.unwrap_or_default(), t.value.unwrap_or_default())))?;
    set_tags(s3, &input.bucket, input.key, tags).await?;
    Ok(respond(PutObjectTaggingOutput::default()))
}

pub async fn get_object_tagging(
    s3: &Depot,
    req: S3Request<GetObjectTaggingInput>,
) -> Result<S3Response<GetObjectTaggingOutput>> {
    let input = req.input;
    let path = s3.archive.bucket(&input.bucket)?.path_of(&input.key)?;
    let (_, fs_meta) = open(&path, &input.key)?;
    let meta = ObjectMeta::load_or_synthesize(&path, &fs_meta);
    Ok(respond(GetObjectTaggingOutput { tag_set: tag_set(&meta.tags), ..Default::default() }))
}

pub async fn delete_object_tagging(
    s3: &Depot,
    req: S3Request<DeleteObjectTaggingInput>,
) -> Result<S3Response<DeleteObjectTaggingOutput>> {
    let input = req.input;
    set_tags(s3, &input.bucket, input.key, BTreeMap::new()).await?;
    Ok(respond(DeleteObjectTaggingOutput::default()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_header_is_url_decoded_and_checked() {
        let tags = from_header(Some("project=depot&team=backup%20ops&empty=")).unwrap();
        assert_eq!(tags.get("team").map(String::as_str), Some("backup ops"));
        assert_eq!(tags.get("empty").map(String::as_str), Some(""));
        assert!(from_header(None).unwrap().is_empty());
        let eleven: String = (0..11).map(|i| format!("k{i}=v&")).collect();
        assert!(matches!(from_header(Some(&eleven)), Err(Error::TooManyTags { count: 11 })));
        assert!(matches!(from_header(Some("a=1&a=2")), Err(Error::InvalidTag(_))));
        let long_key = format!("{}=v", "k".repeat(129));
        assert!(matches!(from_header(Some(&long_key)), Err(Error::InvalidTag(_))));
        let ok_value = format!("k={}", "é".repeat(256));
        assert!(from_header(Some(&ok_value)).is_ok(), "characters, not bytes");
        let long_value = format!("k={}", "v".repeat(257));
        assert!(matches!(from_header(Some(&long_value)), Err(Error::InvalidTag(_))));
    }
}
