//! DESIGN.md's S3 compatibility contract, item by item: aws-sdk-s3 with its current
//! defaults where it exercises the item, hand-signed requests (`raw`) for the encodings
//! other clients send.

use std::time::Duration;

use aws_sdk_s3::presigning::PresigningConfig;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{
    ChecksumAlgorithm, ChecksumMode, CompletedMultipartUpload, CompletedPart, Delete, ObjectIdentifier,
};
use base64::Engine as _;
use depot_tests::raw::{self, Payload, Signer};
use depot_tests::{Depot, test_dir};

pub fn body(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| ((i * 31 + i / 7) as u8).wrapping_add(seed)).collect()
}

pub fn signer(depot: &Depot) -> Signer {
    Signer {
        access_key: depot.field("access_key"),
        secret_key: depot.field("secret_key"),
        region: depot.field("region"),
    }
}

pub async fn get_bytes(s3: &aws_sdk_s3::Client, bucket: &str, key: &str) -> Vec<u8> {
    let got = s3.get_object().bucket(bucket).key(key).send().await.unwrap_or_else(|e| panic!("GET {key}: {e:?}"));
    got.body.collect().await.unwrap().into_bytes().to_vec()
}

pub fn crc32_b64(data: &[u8]) -> String {
    let mut crc = 0xffff_ffffu32;
    for &byte in data {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 == 1 { (crc >> 1) ^ 0xedb8_8320 } else { crc >> 1 };
        }
    }
    base64::engine::general_purpose::STANDARD.encode((!crc).to_be_bytes())
}

/// Items 1 and 7: path-style SigV4 works; HeadBucket reports the region BR checks.
#[tokio::test]
async fn item01_07_path_style_sigv4_and_bucket_region() {
    let dir = test_dir();
    let depot = Depot::start(&dir.path().join("archive"), &["--region", "eu-central-1"]);
    let s3 = depot.client();
    let bucket = depot.field("bucket");
    let head = s3.head_bucket().bucket(&bucket).send().await.unwrap();
    assert_eq!(head.bucket_region(), Some("eu-central-1"));
    let data = body(300_000, 7);
    s3.put_object().bucket(&bucket).key("a/b/c.sst").body(ByteStream::from(data.clone())).send().await.unwrap();
    assert_eq!(get_bytes(&s3, &bucket, "a/b/c.sst").await, data);
    // The object is an ordinary file in the archive.
    assert_eq!(std::fs::read(dir.path().join("archive/a/b/c.sst")).unwrap(), data);
}

/// Item 2: every payload encoding, byte-exact.
#[tokio::test]
async fn item02_every_payload_encoding_round_trips() {
    let dir = test_dir();
    let depot = Depot::start(&dir.path().join("archive"), &[]);
    let endpoint = depot.field("endpoint");
    let bucket = depot.field("bucket");
    let signer = signer(&depot);
    let data = body(200_000, 3);
    let crc = ("x-amz-checksum-crc32".to_owned(), crc32_b64(&data));
    let cases = [
        ("hex", Payload::Hex(data.clone())),
        ("unsigned", Payload::Unsigned(data.clone())),
        ("signed-chunks", Payload::SignedChunks { data: data.clone(), chunk: 65_536, trailer: None }),
        (
            "signed-chunks-trailer",
            Payload::SignedChunks { data: data.clone(), chunk: 65_536, trailer: Some(crc.clone()) },
        ),
        ("unsigned-trailer", Payload::UnsignedTrailer { data: data.clone(), chunk: 8_192, trailer: crc.clone() }),
    ];
    for (name, payload) in cases {
        let resp = raw::send(&endpoint, Some(&signer), "PUT", &format!("/{bucket}/{name}"), &[], payload).await;
        assert_eq!(resp.status, 200, "{name}: {}", resp.text());
        assert_eq!(std::fs::read(dir.path().join("archive").join(name)).unwrap(), data, "{name}");
    }
    let s3 = depot.client();
    assert_eq!(get_bytes(&s3, &bucket, "signed-chunks-trailer").await, data);
}

/// Item 2 with the SDK's own default over HTTPS: aws-chunked body, CRC32 trailer.
#[tokio::test]
async fn item02_sdk_default_over_tls_sends_trailers_and_they_are_checked() {
    let dir = test_dir();
    let depot = Depot::start(&dir.path().join("archive"), &["--tls", "on"]);
    assert!(depot.field("endpoint").starts_with("https://"));
    let s3 = depot.client();
    let bucket = depot.field("bucket");
    let data = body(3 * 1024 * 1024 + 5, 9);
    let put = s3.put_object().bucket(&bucket).key("tls/obj").body(ByteStream::from(data.clone())).send().await.unwrap();
    assert_eq!(put.checksum_crc32(), Some(crc32_b64(&data).as_str()), "the trailer's CRC32 is echoed");
    let got = s3.get_object().bucket(&bucket).key("tls/obj").checksum_mode(ChecksumMode::Enabled).send().await.unwrap();
    assert_eq!(got.checksum_crc32(), Some(crc32_b64(&data).as_str()));
    assert_eq!(got.body.collect().await.unwrap().into_bytes().as_ref(), data.as_slice());
}

/// Item 3: checksum headers are verified when present; SSE, ACL and storage-class headers
/// are accepted.
#[tokio::test]
async fn item03_checksum_headers_verified_sse_acl_storage_class_accepted() {
    let dir = test_dir();
    let depot = Depot::start(&dir.path().join("archive"), &[]);
    let s3 = depot.client();
    let bucket = depot.field("bucket");
    let data = body(10_000, 1);
    s3.put_object()
        .bucket(&bucket)
        .key("sha")
        .checksum_algorithm(ChecksumAlgorithm::Sha256)
        .server_side_encryption(aws_sdk_s3::types::ServerSideEncryption::Aes256)
        .acl(aws_sdk_s3::types::ObjectCannedAcl::BucketOwnerFullControl)
        .storage_class(aws_sdk_s3::types::StorageClass::StandardIa)
        .body(ByteStream::from(data.clone()))
        .send()
        .await
        .unwrap();
    let head = s3.head_object().bucket(&bucket).key("sha").checksum_mode(ChecksumMode::Enabled).send().await.unwrap();
    assert!(head.checksum_sha256().is_some());

    let endpoint = depot.field("endpoint");
    let wrong = crc32_b64(b"something else");
    let resp = raw::send(
        &endpoint,
        Some(&signer(&depot)),
        "PUT",
        &format!("/{bucket}/crc-mismatch"),
        &[("x-amz-checksum-crc32", &wrong)],
        Payload::Hex(data),
    )
    .await;
    assert_eq!(resp.status, 400, "{}", resp.text());
    assert!(resp.text().contains("<Code>BadDigest</Code>"), "{}", resp.text());
    assert!(!dir.path().join("archive/crc-mismatch").exists());
}

/// Item 4: `Expect: 100-continue` gets a 100 before the body is sent.
#[tokio::test]
async fn item04_expect_100_continue() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = test_dir();
    let depot = Depot::start(&dir.path().join("archive"), &[]);
    let s3 = depot.client();
    let bucket = depot.field("bucket");
    // A presigned PUT needs no signing here; the request is written by hand.
    let url = s3
        .put_object()
        .bucket(&bucket)
        .key("continued")
        .presigned(PresigningConfig::expires_in(Duration::from_secs(60)).unwrap())
        .await
        .unwrap();
    let uri: http::Uri = url.uri().parse().unwrap();
    let authority = uri.authority().unwrap().as_str().to_owned();
    let mut tcp = tokio::net::TcpStream::connect(&authority).await.unwrap();
    let head = format!(
        "PUT {} HTTP/1.1\r\nHost: {authority}\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n",
        uri.path_and_query().unwrap()
    );
    tcp.write_all(head.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 1024];
    let n = tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut buf)).await.unwrap().unwrap();
    let interim = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(interim.starts_with("HTTP/1.1 100 Continue"), "{interim}");
    tcp.write_all(b"hello").await.unwrap();
    let n = tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut buf)).await.unwrap().unwrap();
    let reply = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    assert_eq!(get_bytes(&s3, &bucket, "continued").await, b"hello");

    // An empty body with Expect gets no 100 and the connection closes (botocore#3755).
    let url = s3
        .put_object()
        .bucket(&bucket)
        .key("empty")
        .presigned(PresigningConfig::expires_in(Duration::from_secs(60)).unwrap())
        .await
        .unwrap();
    let uri: http::Uri = url.uri().parse().unwrap();
    let mut tcp = tokio::net::TcpStream::connect(&authority).await.unwrap();
    let head = format!(
        "PUT {} HTTP/1.1\r\nHost: {authority}\r\nContent-Length: 0\r\nExpect: 100-continue\r\n\r\n",
        uri.path_and_query().unwrap()
    );
    tcp.write_all(head.as_bytes()).await.unwrap();
    let mut reply = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut reply)).await.unwrap().unwrap();
    let reply = String::from_utf8_lossy(&reply).to_ascii_lowercase();
    assert!(reply.starts_with("http/1.1 200") && reply.contains("connection: close"), "{reply}");
    assert_eq!(get_bytes(&s3, &bucket, "empty").await, b"");
}

/// Item 5: multipart Create / UploadPart / ListParts / ListMultipartUploads / Complete /
/// Abort, and Complete with zero parts.
#[tokio::test]
async fn item05_multipart_upload_lifecycle() {
    let dir = test_dir();
    let depot = Depot::start(&dir.path().join("archive"), &[]);
    let s3 = depot.client();
    let bucket = depot.field("bucket");
    let part1 = body(5 * 1024 * 1024, 1);
    let part2 = body(1024 * 1024 + 17, 2);

    let create = s3
        .create_multipart_upload()
        .bucket(&bucket)
        .key("big.sst")
        .content_type("application/x-sst")
        .send()
        .await
        .unwrap();
    let id = create.upload_id().unwrap().to_owned();
    let mut etags = Vec::new();
    for (n, part) in [(1, &part1), (2, &part2)] {
        let up = s3
            .upload_part()
            .bucket(&bucket)
            .key("big.sst")
            .upload_id(&id)
            .part_number(n)
            .body(ByteStream::from(part.clone()))
            .send()
            .await
            .unwrap();
        etags.push(up.e_tag().unwrap().to_owned());
    }
    let parts = s3.list_parts().bucket(&bucket).key("big.sst").upload_id(&id).send().await.unwrap();
    let sizes: Vec<i64> = parts.parts().iter().map(|p| p.size().unwrap()).collect();
    assert_eq!(sizes, [part1.len() as i64, part2.len() as i64]);
    let uploads = s3.list_multipart_uploads().bucket(&bucket).send().await.unwrap();
    assert_eq!(uploads.uploads().iter().filter_map(|u| u.upload_id()).collect::<Vec<_>>(), [id.as_str()]);
    assert!(!dir.path().join("archive/big.sst").exists(), "nothing visible before Complete");

    let completed = CompletedMultipartUpload::builder()
        .set_parts(Some(
            etags
                .iter()
                .enumerate()
                .map(|(i, e)| CompletedPart::builder().part_number(i as i32 + 1).e_tag(e).build())
                .collect(),
        ))
        .build();
    let done = s3
        .complete_multipart_upload()
        .bucket(&bucket)
        .key("big.sst")
        .upload_id(&id)
        .multipart_upload(completed)
        .send()
        .await
        .unwrap();
    assert!(done.e_tag().unwrap().ends_with("-2\""), "{:?}", done.e_tag());
    let mut whole = part1.clone();
    whole.extend(&part2);
    assert_eq!(get_bytes(&s3, &bucket, "big.sst").await, whole);
    let head = s3.head_object().bucket(&bucket).key("big.sst").send().await.unwrap();
    assert_eq!(head.content_type(), Some("application/x-sst"));
    assert!(s3.list_multipart_uploads().bucket(&bucket).send().await.unwrap().uploads().is_empty());

    // Zero parts: an empty object.
    let id =
        s3.create_multipart_upload().bucket(&bucket).key("empty").send().await.unwrap().upload_id().unwrap().to_owned();
    s3.complete_multipart_upload()
        .bucket(&bucket)
        .key("empty")
        .upload_id(&id)
        .multipart_upload(CompletedMultipartUpload::builder().build())
        .send()
        .await
        .unwrap();
    assert_eq!(get_bytes(&s3, &bucket, "empty").await, b"");

    // Abort leaves nothing behind.
    let id = s3
        .create_multipart_upload()
        .bucket(&bucket)
        .key("aborted")
        .send()
        .await
        .unwrap()
        .upload_id()
        .unwrap()
        .to_owned();
    s3.upload_part()
        .bucket(&bucket)
        .key("aborted")
        .upload_id(&id)
        .part_number(1)
        .body(ByteStream::from(vec![1; 10]))
        .send()
        .await
        .unwrap();
    s3.abort_multipart_upload().bucket(&bucket).key("aborted").upload_id(&id).send().await.unwrap();
    let err = s3.list_parts().bucket(&bucket).key("aborted").upload_id(&id).send().await.unwrap_err();
    assert_eq!(err.into_service_error().meta().code(), Some("NoSuchUpload"));
    assert!(!dir.path().join("archive/aborted").exists());
}

/// Item 5: S3's part rules — every part but the last at least 5 MiB, ascending, ETags match.
#[tokio::test]
async fn item05_multipart_rules_are_enforced() {
    let dir = test_dir();
    let depot = Depot::start(&dir.path().join("archive"), &[]);
    let s3 = depot.client();
    let bucket = depot.field("bucket");
    let id =
        s3.create_multipart_upload().bucket(&bucket).key("k").send().await.unwrap().upload_id().unwrap().to_owned();
    let mut etags = Vec::new();
    for n in 1..=2 {
        let up = s3
            .upload_part()
            .bucket(&bucket)
            .key("k")
            .upload_id(&id)
            .part_number(n)
            .body(ByteStream::from(vec![n as u8; 1000]))
            .send()
            .await
            .unwrap();
        etags.push(up.e_tag().unwrap().to_owned());
    }
    let complete = |parts: Vec<(i32, &str)>| {
        let parts = parts.into_iter().map(|(n, e)| CompletedPart::builder().part_number(n).e_tag(e).build()).collect();
        s3.complete_multipart_upload()
            .bucket(&bucket)
            .key("k")
            .upload_id(&id)
            .multipart_upload(CompletedMultipartUpload::builder().set_parts(Some(parts)).build())
            .send()
    };
    assert_eq!(code(complete(vec![(1, &etags[0]), (2, &etags[1])]).await).as_deref(), Some("EntityTooSmall"));
    assert_eq!(code(complete(vec![(2, &etags[1]), (1, &etags[0])]).await).as_deref(), Some("InvalidPartOrder"));
    assert_eq!(code(complete(vec![(1, "\"0000\"")]).await).as_deref(), Some("InvalidPart"));
    assert_eq!(code(complete(vec![(3, &etags[0])]).await).as_deref(), Some("InvalidPart"));
    // A single small part is fine (it is the last one).
    complete(vec![(2, &etags[1])]).await.unwrap();
    assert_eq!(get_bytes(&s3, &bucket, "k").await, vec![2u8; 1000]);
}

/// Item 6: ListObjects V1 and V2, with every paging and grouping parameter, keys in UTF-8
/// binary order.
#[tokio::test]
async fn item06_list_objects_v1_and_v2() {
    let dir = test_dir();
    let depot = Depot::start(&dir.path().join("archive"), &[]);
    let s3 = depot.client();
    let bucket = depot.field("bucket");
    let keys = ["b", "a/1", "a/2/x", "a.txt", "a0", "é", "z/é y+%", "c/d/e"];
    for key in keys {
        s3.put_object().bucket(&bucket).key(key).body(ByteStream::from(key.as_bytes().to_vec())).send().await.unwrap();
    }
    let mut sorted: Vec<&str> = keys.to_vec();
    sorted.sort_unstable();

    // V2, one key per page, following continuation tokens.
    let mut seen = Vec::new();
    let mut token = None;
    loop {
        let page = s3
            .list_objects_v2()
            .bucket(&bucket)
            .max_keys(1)
            .set_continuation_token(token.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(page.key_count(), Some(1));
        seen.extend(page.contents().iter().map(|o| o.key().unwrap().to_owned()));
        if !page.is_truncated().unwrap() {
            break;
        }
        token = page.next_continuation_token().map(str::to_owned);
    }
    assert_eq!(seen, sorted);

    // Delimiter and prefix.
    let page = s3.list_objects_v2().bucket(&bucket).delimiter("/").send().await.unwrap();
    let top: Vec<&str> = page.contents().iter().map(|o| o.key().unwrap()).collect();
    let prefixes: Vec<&str> = page.common_prefixes().iter().map(|p| p.prefix().unwrap()).collect();
    assert_eq!(top, ["a.txt", "a0", "b", "é"]);
    assert_eq!(prefixes, ["a/", "c/", "z/"]);
    let page = s3.list_objects_v2().bucket(&bucket).prefix("a/").delimiter("/").send().await.unwrap();
    assert_eq!(page.contents().iter().map(|o| o.key().unwrap()).collect::<Vec<_>>(), ["a/1"]);
    assert_eq!(page.common_prefixes().iter().map(|p| p.prefix().unwrap()).collect::<Vec<_>>(), ["a/2/"]);

    // start-after.
    let page = s3.list_objects_v2().bucket(&bucket).start_after("a0").send().await.unwrap();
    assert_eq!(page.contents().iter().map(|o| o.key().unwrap()).collect::<Vec<_>>(), ["b", "c/d/e", "z/é y+%", "é"]);

    // V1 with marker paging.
    let mut seen = Vec::new();
    let mut marker: Option<String> = None;
    loop {
        let page = s3.list_objects().bucket(&bucket).max_keys(3).set_marker(marker.clone()).send().await.unwrap();
        seen.extend(page.contents().iter().map(|o| o.key().unwrap().to_owned()));
        if !page.is_truncated().unwrap() {
            break;
        }
        marker = page.next_marker().map(str::to_owned).or_else(|| seen.last().cloned());
    }
    assert_eq!(seen, sorted);
    // Sizes and ETags are listed.
    let page = s3.list_objects_v2().bucket(&bucket).prefix("c/").send().await.unwrap();
    let obj = &page.contents()[0];
    assert_eq!(obj.size(), Some(5));
    assert!(obj.e_tag().is_some());
}

/// Item 8: object lock is "not configured".
#[tokio::test]
async fn item08_object_lock_not_configured() {
    let dir = test_dir();
    let depot = Depot::start(&dir.path().join("archive"), &[]);
    let err = depot.client().get_object_lock_configuration().bucket(depot.field("bucket")).send().await.unwrap_err();
    assert_eq!(err.into_service_error().meta().code(), Some("ObjectLockConfigurationNotFoundError"));
}

/// Item 9: DeleteObject (204 also for a missing key) and DeleteObjects.
#[tokio::test]
async fn item09_delete_object_and_objects() {
    let dir = test_dir();
    let archive = dir.path().join("archive");
    let depot = Depot::start(&archive, &[]);
    let s3 = depot.client();
    let bucket = depot.field("bucket");
    for key in ["d/1", "d/2", "d/3", "keep"] {
        s3.put_object().bucket(&bucket).key(key).body(ByteStream::from(vec![1])).send().await.unwrap();
    }
    s3.delete_object().bucket(&bucket).key("d/1").send().await.unwrap();
    s3.delete_object().bucket(&bucket).key("never-existed").send().await.unwrap();
    let resp = raw::send(
        &depot.field("endpoint"),
        Some(&signer(&depot)),
        "DELETE",
        &format!("/{bucket}/never-existed"),
        &[],
        Payload::Hex(vec![]),
    )
    .await;
    assert_eq!(resp.status, 204);
    let ids = ["d/2", "d/3", "missing"].map(|k| ObjectIdentifier::builder().key(k).build().unwrap());
    let out = s3
        .delete_objects()
        .bucket(&bucket)
        .delete(Delete::builder().set_objects(Some(ids.to_vec())).build().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(out.deleted().len(), 3);
    assert!(out.errors().is_empty());
    assert!(!archive.join("d").exists(), "emptied directories are removed");
    assert!(archive.join("keep").exists());
}

/// Item 10: ranged GET is 206 with Content-Range; a range past the end is 416.
#[tokio::test]
async fn item10_ranged_get() {
    let dir = test_dir();
    let depot = Depot::start(&dir.path().join("archive"), &[]);
    let s3 = depot.client();
    let bucket = depot.field("bucket");
    let data = body(1000, 4);
    s3.put_object().bucket(&bucket).key("r").body(ByteStream::from(data.clone())).send().await.unwrap();
    for (range, expect) in [
        ("bytes=10-19", &data[10..20]),
        ("bytes=990-", &data[990..]),
        ("bytes=-5", &data[995..]),
        ("bytes=995-5000", &data[995..]),
    ] {
        let got = s3.get_object().bucket(&bucket).key("r").range(range).send().await.unwrap();
        let start = 1000 - expect.len().min(1000);
        let start = if range == "bytes=10-19" { 10 } else { start };
        assert_eq!(
            got.content_range(),
            Some(format!("bytes {start}-{}/1000", start + expect.len() - 1).as_str()),
            "{range}"
        );
        assert_eq!(got.body.collect().await.unwrap().into_bytes().as_ref(), expect, "{range}");
    }
    let resp = raw::send(
        &depot.field("endpoint"),
        Some(&signer(&depot)),
        "GET",
        &format!("/{bucket}/r"),
        &[("range", "bytes=1000-")],
        Payload::Hex(vec![]),
    )
    .await;
    assert_eq!(resp.status, 416, "{}", resp.text());
    assert_eq!(resp.headers["content-range"], "bytes */1000");
    assert!(resp.text().contains("<Code>InvalidRange</Code>"));
}

/// Item 11: errors are S3 XML with the right codes; HEAD of a missing key is a bodyless 404.
#[tokio::test]
async fn item11_errors_as_s3_xml_and_bodyless_head_404() {
    let dir = test_dir();
    let depot = Depot::start(&dir.path().join("archive"), &[]);
    let endpoint = depot.field("endpoint");
    let bucket = depot.field("bucket");
    let s = signer(&depot);
    let resp = raw::send(&endpoint, Some(&s), "GET", &format!("/{bucket}/missing"), &[], Payload::Hex(vec![])).await;
    assert_eq!(resp.status, 404);
    assert!(resp.text().contains("<Code>NoSuchKey</Code>"), "{}", resp.text());
    let resp = raw::send(&endpoint, Some(&s), "GET", "/other-bucket/x", &[], Payload::Hex(vec![])).await;
    assert_eq!(resp.status, 404);
    assert!(resp.text().contains("<Code>NoSuchBucket</Code>"), "{}", resp.text());
    let resp = raw::send(&endpoint, Some(&s), "HEAD", &format!("/{bucket}/missing"), &[], Payload::Hex(vec![])).await;
    assert_eq!(resp.status, 404);
    assert!(resp.body.is_empty());
    let err = depot.client().head_object().bucket(&bucket).key("missing").send().await.unwrap_err();
    assert!(err.into_service_error().is_not_found());
}

/// Item 12: CopyObject, user metadata and Content-Type round trips, presigned URLs.
#[tokio::test]
async fn item12_copy_metadata_and_presigned_urls() {
    let dir = test_dir();
    let depot = Depot::start(&dir.path().join("archive"), &[]);
    let s3 = depot.client();
    let bucket = depot.field("bucket");
    let data = body(70_000, 5);
    s3.put_object()
        .bucket(&bucket)
        .key("src")
        .content_type("application/json")
        .metadata("Owner", "backup-team")
        .body(ByteStream::from(data.clone()))
        .send()
        .await
        .unwrap();
    let head = s3.head_object().bucket(&bucket).key("src").send().await.unwrap();
    assert_eq!(head.content_type(), Some("application/json"));
    assert_eq!(head.metadata().unwrap().get("owner").map(String::as_str), Some("backup-team"));

    s3.copy_object().bucket(&bucket).key("dst/copy").copy_source(format!("{bucket}/src")).send().await.unwrap();
    assert_eq!(get_bytes(&s3, &bucket, "dst/copy").await, data);
    let head = s3.head_object().bucket(&bucket).key("dst/copy").send().await.unwrap();
    assert_eq!(head.metadata().unwrap().get("owner").map(String::as_str), Some("backup-team"));
    s3.copy_object()
        .bucket(&bucket)
        .key("dst/replaced")
        .copy_source(format!("{bucket}/src"))
        .metadata_directive(aws_sdk_s3::types::MetadataDirective::Replace)
        .content_type("text/plain")
        .send()
        .await
        .unwrap();
    let head = s3.head_object().bucket(&bucket).key("dst/replaced").send().await.unwrap();
    assert_eq!(head.content_type(), Some("text/plain"));
    assert!(head.metadata().is_none_or(|m| m.is_empty()));

    // Presigned PUT and GET, with a plain HTTP client (hyper via raw::send without signing
    // would add headers; use the URL as a browser would).
    let put = s3
        .put_object()
        .bucket(&bucket)
        .key("presigned")
        .presigned(PresigningConfig::expires_in(Duration::from_secs(300)).unwrap())
        .await
        .unwrap();
    let resp = raw::send(
        &depot.field("endpoint"),
        None,
        "PUT",
        &path_and_query(put.uri()),
        &[],
        Payload::Unsigned(b"via url".to_vec()),
    )
    .await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    let get = s3
        .get_object()
        .bucket(&bucket)
        .key("presigned")
        .presigned(PresigningConfig::expires_in(Duration::from_secs(300)).unwrap())
        .await
        .unwrap();
    let resp =
        raw::send(&depot.field("endpoint"), None, "GET", &path_and_query(get.uri()), &[], Payload::Unsigned(vec![]))
            .await;
    assert_eq!((resp.status, resp.body.as_slice()), (200, &b"via url"[..]));
}

/// The S3 error code of a failed SDK call (`None` if it succeeded).
pub fn code<T, E: aws_sdk_s3::error::ProvideErrorMetadata>(result: Result<T, E>) -> Option<String> {
    result.err().and_then(|e| e.code().map(str::to_owned))
}

pub fn path_and_query(url: &str) -> String {
    let uri: http::Uri = url.parse().unwrap();
    uri.path_and_query().unwrap().to_string()
}

/// Conditional reads and copies (clients such as boto3's downloader send If-Match on every
/// ranged part of a download).
#[tokio::test]
async fn conditional_requests() {
    let dir = test_dir();
    let depot = Depot::start(&dir.path().join("archive"), &[]);
    let s3 = depot.client();
    let bucket = depot.field("bucket");
    let put = s3.put_object().bucket(&bucket).key("c").body(ByteStream::from_static(b"v1")).send().await.unwrap();
    let etag = put.e_tag().unwrap().to_owned();
    let got = s3.get_object().bucket(&bucket).key("c").if_match(&etag).range("bytes=0-0").send().await.unwrap();
    assert_eq!(got.body.collect().await.unwrap().into_bytes().as_ref(), b"v");
    let err = s3.get_object().bucket(&bucket).key("c").if_match("\"other\"").send().await.unwrap_err();
    assert_eq!(err.raw_response().unwrap().status().as_u16(), 412);
    let err = s3.get_object().bucket(&bucket).key("c").if_none_match(&etag).send().await.unwrap_err();
    assert_eq!(err.raw_response().unwrap().status().as_u16(), 304);
    let later = aws_sdk_s3::primitives::DateTime::from(std::time::SystemTime::now() + Duration::from_secs(3600));
    let err = s3.head_object().bucket(&bucket).key("c").if_modified_since(later).send().await.unwrap_err();
    assert_eq!(err.raw_response().unwrap().status().as_u16(), 304);
    let err = s3
        .copy_object()
        .bucket(&bucket)
        .key("c2")
        .copy_source(format!("{bucket}/c"))
        .copy_source_if_match("\"other\"")
        .send()
        .await
        .unwrap_err();
    assert_eq!(err.raw_response().unwrap().status().as_u16(), 412);
    s3.copy_object()
        .bucket(&bucket)
        .key("c2")
        .copy_source(format!("{bucket}/c"))
        .copy_source_if_match(&etag)
        .send()
        .await
        .unwrap();
    assert_eq!(get_bytes(&s3, &bucket, "c2").await, b"v1");
}
