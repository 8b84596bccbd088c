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
use depot_tests::{Depot, Proto, test_dir};

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
async fn item01_07_path_style_sigv4_and_bucket_region(proto: Proto) {
    let dir = test_dir();
    let depot = proto.start(&dir.path().join("archive"), &["--region", "eu-central-1"]);
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
async fn item02_every_payload_encoding_round_trips(proto: Proto) {
    let dir = test_dir();
    let depot = proto.start(&dir.path().join("archive"), &[]);
    let target = depot.target();
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
        let resp = raw::send(&target, Some(&signer), "PUT", &format!("/{bucket}/{name}"), &[], payload).await;
        assert_eq!(resp.status, 200, "{name}: {}", resp.text());
        assert_eq!(std::fs::read(dir.path().join("archive").join(name)).unwrap(), data, "{name}");
    }
    let s3 = depot.client();
    assert_eq!(get_bytes(&s3, &bucket, "signed-chunks-trailer").await, data);
}

/// Item 2 with the SDK's own default: aws-chunked body, CRC32 trailer.
async fn item02_sdk_default_sends_trailers_and_they_are_checked(proto: Proto) {
    let dir = test_dir();
    let depot = proto.start(&dir.path().join("archive"), &[]);
    let s3 = depot.client();
    let bucket = depot.field("bucket");
    let data = body(3 * 1024 * 1024 + 5, 9);
    let put = s3.put_object().bucket(&bucket).key("tls/obj").body(ByteStream::from(data.clone())).send().await.unwrap();
    assert_eq!(put.checksum_crc32(), Some(crc32_b64(&data).as_str()), "the trailer's CRC32 is echoed");
    let got = s3.get_object().bucket(&bucket).key("tls/obj").checksum_mode(ChecksumMode::Enabled).send().await.unwrap();
    assert_eq!(got.checksum_crc32(), Some(crc32_b64(&data).as_str()));
    assert_eq!(got.content_encoding(), None, "aws-chunked framed the request; it is not the object's encoding");
    assert_eq!(got.body.collect().await.unwrap().into_bytes().as_ref(), data.as_slice());
    let put = s3.put_object().bucket(&bucket).key("tls/gz").content_encoding("gzip");
    put.body(ByteStream::from(data.clone())).send().await.unwrap();
    let got = s3.head_object().bucket(&bucket).key("tls/gz").send().await.unwrap();
    assert_eq!(got.content_encoding(), Some("gzip"));
}

/// Item 3: checksum headers are verified when present; SSE, ACL and storage-class headers
/// are accepted.
async fn item03_checksum_headers_verified_sse_acl_storage_class_accepted(proto: Proto) {
    let dir = test_dir();
    let depot = proto.start(&dir.path().join("archive"), &[]);
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

    let target = depot.target();
    let wrong = crc32_b64(b"something else");
    let resp = raw::send(
        &target,
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

/// Item 4: `Expect: 100-continue` gets a 100 before the body is sent (over HTTP/2 the
/// interim response is a HEADERS frame; the exchange must still end in a 200).
async fn item04_expect_100_continue(proto: Proto) {
    let dir = test_dir();
    let depot = proto.start(&dir.path().join("archive"), &[]);
    let s3 = depot.client();
    let bucket = depot.field("bucket");
    if proto != Proto::H1 {
        for (key, data) in [("continued", &b"hello"[..]), ("empty", &b""[..])] {
            let resp = raw::send(
                &depot.target(),
                Some(&signer(&depot)),
                "PUT",
                &format!("/{bucket}/{key}"),
                &[("expect", "100-continue")],
                Payload::Hex(data.to_vec()),
            )
            .await;
            assert_eq!(resp.status, 200, "{key}: {}", resp.text());
            assert_eq!(resp.version, http::Version::HTTP_2);
            assert!(!resp.headers.contains_key("connection"), "no connection-specific header over HTTP/2");
            assert_eq!(get_bytes(&s3, &bucket, key).await, data);
        }
        return;
    }
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
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
async fn item05_multipart_upload_lifecycle(proto: Proto) {
    let dir = test_dir();
    let depot = proto.start(&dir.path().join("archive"), &[]);
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
async fn item05_multipart_rules_are_enforced(proto: Proto) {
    let dir = test_dir();
    let depot = proto.start(&dir.path().join("archive"), &[]);
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
async fn item06_list_objects_v1_and_v2(proto: Proto) {
    let dir = test_dir();
    let depot = proto.start(&dir.path().join("archive"), &[]);
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
async fn item08_object_lock_not_configured(proto: Proto) {
    let dir = test_dir();
    let depot = proto.start(&dir.path().join("archive"), &[]);
    let err = depot.client().get_object_lock_configuration().bucket(depot.field("bucket")).send().await.unwrap_err();
    assert_eq!(err.into_service_error().meta().code(), Some("ObjectLockConfigurationNotFoundError"));
}

/// Item 9: DeleteObject (204 also for a missing key) and DeleteObjects.
async fn item09_delete_object_and_objects(proto: Proto) {
    let dir = test_dir();
    let archive = dir.path().join("archive");
    let depot = proto.start(&archive, &[]);
    let s3 = depot.client();
    let bucket = depot.field("bucket");
    for key in ["d/1", "d/2", "d/3", "keep"] {
        s3.put_object().bucket(&bucket).key(key).body(ByteStream::from(vec![1])).send().await.unwrap();
    }
    s3.delete_object().bucket(&bucket).key("d/1").send().await.unwrap();
    s3.delete_object().bucket(&bucket).key("never-existed").send().await.unwrap();
    let resp = raw::send(
        &depot.target(),
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
async fn item10_ranged_get(proto: Proto) {
    let dir = test_dir();
    let depot = proto.start(&dir.path().join("archive"), &[]);
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
        &depot.target(),
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
async fn item11_errors_as_s3_xml_and_bodyless_head_404(proto: Proto) {
    let dir = test_dir();
    let depot = proto.start(&dir.path().join("archive"), &[]);
    let target = depot.target();
    let bucket = depot.field("bucket");
    let s = signer(&depot);
    let resp = raw::send(&target, Some(&s), "GET", &format!("/{bucket}/missing"), &[], Payload::Hex(vec![])).await;
    assert_eq!(resp.status, 404);
    assert!(resp.text().contains("<Code>NoSuchKey</Code>"), "{}", resp.text());
    let id = resp.headers.get("x-amz-request-id").expect("every answer names its request").to_str().unwrap();
    assert!(id.len() == 16 && id.bytes().all(|b| b.is_ascii_hexdigit()), "{id}");
    assert!(
        resp.text().contains(&format!("<RequestId>{id}</RequestId>")),
        "the body names the request: {}",
        resp.text()
    );
    if let Some(length) = resp.headers.get("content-length") {
        assert_eq!(length.to_str().unwrap(), resp.body.len().to_string(), "an error's Content-Length is its body's");
    }
    let resp = raw::send(&target, Some(&s), "GET", "/other-bucket/x", &[], Payload::Hex(vec![])).await;
    assert_eq!(resp.status, 404);
    assert!(resp.text().contains("<Code>NoSuchBucket</Code>"), "{}", resp.text());
    // No HEAD answer carries a body, whatever its status (HTTP/2 would send it as DATA).
    let path = format!("/{bucket}/present");
    assert_eq!(raw::send(&target, Some(&s), "PUT", &path, &[], Payload::Hex(b"abc".to_vec())).await.status, 200);
    for (path, status) in [
        (format!("/{bucket}/missing"), 404),
        ("/other-bucket/x".to_owned(), 404),
        (format!("/{bucket}/present"), 200),
        (format!("/{bucket}/a/../x"), 400),
    ] {
        let resp = raw::send(&target, Some(&s), "HEAD", &path, &[], Payload::Hex(vec![])).await;
        assert_eq!(resp.status, status, "HEAD {path}");
        assert!(resp.body.is_empty(), "HEAD {path} sent a body over {proto:?}: {}", resp.text());
        assert_ne!(resp.headers.get("x-amz-request-id").map(|v| v.as_bytes()), Some(id.as_bytes()), "ids differ");
    }
    let bad = Signer { secret_key: "wrong".into(), ..s.clone() };
    let resp = raw::send(&target, Some(&bad), "HEAD", &format!("/{bucket}/present"), &[], Payload::Hex(vec![])).await;
    assert_eq!(resp.status, 403);
    assert!(resp.body.is_empty(), "HEAD 403 sent a body over {proto:?}");
    let err = depot.client().head_object().bucket(&bucket).key("missing").send().await.unwrap_err();
    assert!(err.into_service_error().is_not_found());
}

/// Item 12: CopyObject, user metadata and Content-Type round trips, presigned URLs.
async fn item12_copy_metadata_and_presigned_urls(proto: Proto) {
    let dir = test_dir();
    let depot = proto.start(&dir.path().join("archive"), &[]);
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
        &depot.target(),
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
        raw::send(&depot.target(), None, "GET", &path_and_query(get.uri()), &[], Payload::Unsigned(vec![])).await;
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
async fn conditional_requests(proto: Proto) {
    let dir = test_dir();
    let depot = proto.start(&dir.path().join("archive"), &[]);
    let s3 = depot.client();
    let bucket = depot.field("bucket");
    let put = s3.put_object().bucket(&bucket).key("c").body(ByteStream::from_static(b"v1")).send().await.unwrap();
    let etag = put.e_tag().unwrap().to_owned();
    let got = s3.get_object().bucket(&bucket).key("c").if_match(&etag).range("bytes=0-0").send().await.unwrap();
    assert_eq!(got.body.collect().await.unwrap().into_bytes().as_ref(), b"v");
    let err = s3.get_object().bucket(&bucket).key("c").if_match("\"other\"").send().await.unwrap_err();
    assert_eq!(err.raw_response().unwrap().status().as_u16(), 412);
    let err = s3.get_object().bucket(&bucket).key("c").if_none_match(&etag).send().await.unwrap_err();
    let raw = err.raw_response().unwrap();
    assert_eq!(raw.status().as_u16(), 304);
    assert_eq!(raw.headers().get("etag"), Some(etag.as_str()), "a 304 carries the validators");
    assert!(raw.headers().get("last-modified").is_some());
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

    // Conditional writes: If-None-Match creates only, If-Match replaces only what it names.
    fn status<E: aws_sdk_s3::error::ProvideErrorMetadata>(
        err: &aws_sdk_s3::error::SdkError<E, aws_sdk_s3::config::http::HttpResponse>,
    ) -> (Option<u16>, Option<String>) {
        use aws_sdk_s3::error::ProvideErrorMetadata as _;
        (err.raw_response().map(|r| r.status().as_u16()), err.code().map(str::to_owned))
    }
    let put = |key: &'static str, data: &'static [u8]| {
        s3.put_object().bucket(&bucket).key(key).body(ByteStream::from_static(data))
    };
    let err = put("c", b"v2").if_none_match("*").send().await.unwrap_err();
    assert_eq!(status(&err), (Some(412), Some("PreconditionFailed".into())));
    let err = put("c", b"v2").if_match("\"other\"").send().await.unwrap_err();
    assert_eq!(status(&err), (Some(412), Some("PreconditionFailed".into())));
    let err = put("absent", b"v2").if_match("*").send().await.unwrap_err();
    assert_eq!(status(&err), (Some(404), Some("NoSuchKey".into())));
    assert_eq!(get_bytes(&s3, &bucket, "c").await, b"v1", "a refused write changes nothing");
    put("c", b"v2").if_match(&etag).send().await.unwrap();
    put("c", b"v3").if_none_match(&etag).send().await.unwrap(); // v2's tag is not v1's
    assert_eq!(get_bytes(&s3, &bucket, "c").await, b"v3");
    // Racing creates of one key: exactly one wins.
    let mut racers = tokio::task::JoinSet::new();
    for i in 0..8 {
        let s3 = s3.clone();
        let bucket = bucket.clone();
        racers.spawn(async move {
            let body = ByteStream::from(format!("racer {i}").into_bytes());
            s3.put_object().bucket(&bucket).key("lock").if_none_match("*").body(body).send().await.is_ok()
        });
    }
    let won = racers.join_all().await.into_iter().filter(|won| *won).count();
    assert_eq!(won, 1, "one If-None-Match: * create succeeds, the rest get 412");
}

/// GetObjectAttributes: ETag (unquoted), size, storage class, checksum, parts count.
async fn object_attributes(proto: Proto) {
    use aws_sdk_s3::types::{ChecksumAlgorithm, ObjectAttributes};
    let dir = test_dir();
    let depot = proto.start(&dir.path().join("archive"), &[]);
    let s3 = depot.client();
    let bucket = depot.field("bucket");
    let data = body(1000, 3);
    let put = s3.put_object().bucket(&bucket).key("a").checksum_algorithm(ChecksumAlgorithm::Sha256);
    let put = put.body(ByteStream::from(data.clone())).send().await.unwrap();
    let all = [
        ObjectAttributes::Etag,
        ObjectAttributes::ObjectSize,
        ObjectAttributes::StorageClass,
        ObjectAttributes::Checksum,
        ObjectAttributes::ObjectParts,
    ];
    let got = s3.get_object_attributes().bucket(&bucket).key("a").set_object_attributes(Some(all.to_vec()));
    let got = got.send().await.unwrap();
    // S3 sends this one ETag unquoted (every other answer quotes it).
    assert_eq!(got.e_tag(), Some(md5_hex(&data).as_str()));
    assert_eq!(got.object_size(), Some(1000));
    assert_eq!(got.storage_class().map(|c| c.as_str()), Some("STANDARD"));
    assert_eq!(got.checksum().and_then(|c| c.checksum_sha256()), put.checksum_sha256());
    assert!(got.object_parts().is_none(), "a PUT object has no parts");
    // boto3 sends the list as one comma-separated header value.
    let headers = [("x-amz-object-attributes", "ETag,ObjectSize")];
    let path = format!("/{bucket}/a?attributes");
    let resp = raw::send(&depot.target(), Some(&signer(&depot)), "GET", &path, &headers, Payload::Hex(vec![])).await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    let bare = format!("<ETag>{}</ETag>", md5_hex(&data));
    assert!(resp.text().contains("<ObjectSize>1000</ObjectSize>") && resp.text().contains(&bare), "{}", resp.text());
    if let Some(length) = resp.headers.get("content-length") {
        assert_eq!(
            length.to_str().unwrap().parse::<usize>().unwrap(),
            resp.body.len(),
            "the length of the rewritten body"
        );
    }

    let (id, parts) = upload_parts(&s3, &bucket, "m", &[body(5 * 1024 * 1024, 1), body(10, 2)]).await;
    complete_upload(&s3, &bucket, "m", &id, parts).await;
    let got = s3.get_object_attributes().bucket(&bucket).key("m").object_attributes(ObjectAttributes::ObjectParts);
    let got = got.send().await.unwrap();
    let listed = got.object_parts().unwrap();
    assert_eq!(listed.total_parts_count(), Some(2));
    let sizes: Vec<_> = listed.parts().iter().map(|p| (p.part_number(), p.size())).collect();
    assert_eq!(sizes, [(Some(1), Some(5 * 1024 * 1024)), (Some(2), Some(10))]);
    assert_eq!(listed.is_truncated(), Some(false));
    assert_eq!(got.object_size(), None, "only what was asked for");
    // Paged by max-parts and part-number-marker.
    let page = s3.get_object_attributes().bucket(&bucket).key("m").object_attributes(ObjectAttributes::ObjectParts);
    let page = page.max_parts(1).send().await.unwrap();
    let page = page.object_parts().unwrap();
    assert_eq!((page.parts().len(), page.is_truncated(), page.next_part_number_marker()), (1, Some(true), Some("1")));
    let rest = s3.get_object_attributes().bucket(&bucket).key("m").object_attributes(ObjectAttributes::ObjectParts);
    let rest = rest.part_number_marker("1").send().await.unwrap();
    let numbers: Vec<_> = rest.object_parts().unwrap().parts().iter().map(|p| p.part_number()).collect();
    assert_eq!(numbers, [Some(2)]);
    let err = s3.get_object_attributes().bucket(&bucket).key("nope").object_attributes(ObjectAttributes::Etag);
    let err = err.send().await.unwrap_err();
    assert_eq!(err.raw_response().map(|r| r.status().as_u16()), Some(404));
}

/// ListObjectVersions of an unversioned bucket: every object once, version `null`, paged by
/// key-marker as S3 pages it.
async fn list_object_versions(proto: Proto) {
    let dir = test_dir();
    let depot = proto.start(&dir.path().join("archive"), &[]);
    let s3 = depot.client();
    let bucket = depot.field("bucket");
    for key in ["a/1", "a/2", "b", "c/3"] {
        s3.put_object().bucket(&bucket).key(key).body(ByteStream::from_static(b"x")).send().await.unwrap();
    }
    let page = s3.list_object_versions().bucket(&bucket).max_keys(2).send().await.unwrap();
    let keys: Vec<_> =
        page.versions().iter().map(|v| (v.key().unwrap(), v.version_id().unwrap(), v.is_latest())).collect();
    assert_eq!(keys, [("a/1", "null", Some(true)), ("a/2", "null", Some(true))]);
    assert_eq!(
        (page.is_truncated(), page.next_key_marker(), page.next_version_id_marker()),
        (Some(true), Some("a/2"), Some("null"))
    );
    let rest = s3
        .list_object_versions()
        .bucket(&bucket)
        .key_marker("a/2")
        .version_id_marker("null")
        .delimiter("/")
        .send()
        .await
        .unwrap();
    let keys: Vec<_> = rest.versions().iter().filter_map(|v| v.key()).collect();
    let prefixes: Vec<_> = rest.common_prefixes().iter().filter_map(|p| p.prefix()).collect();
    assert_eq!((keys, prefixes, rest.is_truncated()), (vec!["b"], vec!["c/"], Some(false)));
    let err = s3.list_object_versions().bucket(&bucket).version_id_marker("null").send().await.unwrap_err();
    assert_eq!(err.into_service_error().meta().code(), Some("InvalidArgument"));
}

/// A new multipart upload of `key` with `parts` as parts 1..=N: its id and the parts as
/// Complete names them (ETags as UploadPart answered), in order. Complete is the caller's.
async fn upload_parts(
    s3: &aws_sdk_s3::Client,
    bucket: &str,
    key: &str,
    parts: &[Vec<u8>],
) -> (String, Vec<CompletedPart>) {
    let id = s3.create_multipart_upload().bucket(bucket).key(key).send().await.unwrap().upload_id.unwrap();
    let mut uploaded = Vec::new();
    for (i, data) in parts.iter().enumerate() {
        let n = i as i32 + 1;
        let part = s3.upload_part().bucket(bucket).key(key).upload_id(&id).part_number(n);
        let part = part.body(ByteStream::from(data.clone())).send().await.unwrap();
        uploaded.push(CompletedPart::builder().part_number(n).e_tag(part.e_tag().unwrap()).build());
    }
    (id, uploaded)
}

/// CompleteMultipartUpload of `parts`.
async fn complete_upload(
    s3: &aws_sdk_s3::Client,
    bucket: &str,
    key: &str,
    id: &str,
    parts: Vec<CompletedPart>,
) -> aws_sdk_s3::operation::complete_multipart_upload::CompleteMultipartUploadOutput {
    let upload = CompletedMultipartUpload::builder().set_parts(Some(parts)).build();
    s3.complete_multipart_upload().bucket(bucket).key(key).upload_id(id).multipart_upload(upload).send().await.unwrap()
}

fn md5_hex(data: &[u8]) -> String {
    use md5::Digest as _;
    hex::encode(md5::Md5::digest(data))
}

fn quoted(etag: &str) -> String {
    format!("\"{etag}\"")
}

/// ETags are S3's: the MD5 of a PUT, a copy and each part; `md5(part md5s)-N` for a
/// multipart object; listings agree. A file placed by hand keeps a stable tag that is not
/// MD5-shaped.
async fn etags_are_md5_as_in_s3(proto: Proto) {
    let dir = test_dir();
    let archive = dir.path().join("archive");
    let depot = proto.start(&archive, &[]);
    let s3 = depot.client();
    let bucket = depot.field("bucket");
    let data = body(3 * 1024 * 1024 + 11, 8);
    let put = s3.put_object().bucket(&bucket).key("one").body(ByteStream::from(data.clone())).send().await.unwrap();
    assert_eq!(put.e_tag(), Some(quoted(&md5_hex(&data)).as_str()));
    let head = s3.head_object().bucket(&bucket).key("one").send().await.unwrap();
    assert_eq!(head.e_tag(), put.e_tag());
    let empty = s3.put_object().bucket(&bucket).key("empty").body(ByteStream::from_static(b"")).send().await.unwrap();
    assert_eq!(empty.e_tag(), Some("\"d41d8cd98f00b204e9800998ecf8427e\""));

    let parts = [body(5 * 1024 * 1024, 1), body(777, 2)];
    let (id, completed) = upload_parts(&s3, &bucket, "multi", &parts).await;
    for (part, data) in completed.iter().zip(&parts) {
        let n = part.part_number().unwrap();
        assert_eq!(part.e_tag(), Some(quoted(&md5_hex(data)).as_str()), "part {n}");
    }
    let done = complete_upload(&s3, &bucket, "multi", &id, completed).await;
    let joined: Vec<u8> = parts.iter().flat_map(|p| hex::decode(md5_hex(p)).unwrap()).collect();
    let multi_etag = format!("{}-2", md5_hex(&joined));
    assert_eq!(done.e_tag(), Some(quoted(&multi_etag).as_str()));

    // Copies are new single-part objects: the MD5 of their bytes.
    let copy = s3.copy_object().bucket(&bucket).key("copy-one").copy_source(format!("{bucket}/one")).send().await;
    assert_eq!(copy.unwrap().copy_object_result.unwrap().e_tag(), Some(quoted(&md5_hex(&data)).as_str()));
    let copy = s3.copy_object().bucket(&bucket).key("copy-multi").copy_source(format!("{bucket}/multi")).send().await;
    let whole: Vec<u8> = parts.concat();
    assert_eq!(copy.unwrap().copy_object_result.unwrap().e_tag(), Some(quoted(&md5_hex(&whole)).as_str()));

    // A file placed by hand: a stable tag, not MD5-shaped.
    std::fs::write(archive.join("by-hand"), b"placed").unwrap();
    let first = s3.head_object().bucket(&bucket).key("by-hand").send().await.unwrap();
    let tag = first.e_tag().unwrap().trim_matches('"').to_owned();
    assert_eq!(tag.len(), 16, "{tag}");
    let again = s3.head_object().bucket(&bucket).key("by-hand").send().await.unwrap();
    assert_eq!(again.e_tag(), first.e_tag());

    let listed = s3.list_objects_v2().bucket(&bucket).send().await.unwrap();
    let tags: Vec<(&str, &str)> = listed.contents().iter().map(|o| (o.key().unwrap(), o.e_tag().unwrap())).collect();
    assert!(tags.contains(&("one", quoted(&md5_hex(&data)).as_str())), "{tags:?}");
    assert!(tags.contains(&("multi", quoted(&multi_etag).as_str())), "{tags:?}");
}

/// A repeated CompleteMultipartUpload (the reply to the first was lost) gets the same answer,
/// also after a restart; another part list, or a key overwritten since, gets `NoSuchUpload`.
async fn complete_multipart_upload_is_idempotent(proto: Proto) {
    let dir = test_dir();
    let archive = dir.path().join("archive");
    let depot = proto.start(&archive, &[]);
    let s3 = depot.client();
    let bucket = depot.field("bucket");
    let parts = [body(5 * 1024 * 1024, 3), body(1000, 4)];
    let id = s3.create_multipart_upload().bucket(&bucket).key("k/obj").send().await.unwrap().upload_id.unwrap();
    let mut completed = Vec::new();
    for (i, part) in parts.iter().enumerate() {
        let n = i as i32 + 1;
        let up = s3.upload_part().bucket(&bucket).key("k/obj").upload_id(&id).part_number(n);
        let up = up.body(ByteStream::from(part.clone())).send().await.unwrap();
        completed.push(CompletedPart::builder().part_number(n).e_tag(up.e_tag().unwrap()).build());
    }
    let complete = |s3: aws_sdk_s3::Client, parts: Vec<CompletedPart>| {
        let bucket = bucket.clone();
        let id = id.clone();
        async move {
            s3.complete_multipart_upload()
                .bucket(bucket)
                .key("k/obj")
                .upload_id(id)
                .multipart_upload(CompletedMultipartUpload::builder().set_parts(Some(parts)).build())
                .send()
                .await
        }
    };
    let first = complete(s3.clone(), completed.clone()).await.unwrap();
    assert!(first.location().is_some_and(|l| l.ends_with(&format!("/{bucket}/k/obj"))), "{:?}", first.location());
    let again = complete(s3.clone(), completed.clone()).await.unwrap();
    assert_eq!((again.e_tag(), again.location()), (first.e_tag(), first.location()));
    let fewer = complete(s3.clone(), completed[..1].to_vec()).await;
    assert_eq!(code(fewer).as_deref(), Some("NoSuchUpload"));

    // The record survives a restart.
    // Stopped off the runtime's thread: an HTTP/2 client must stay polled to see the GOAWAY.
    drop(s3);
    tokio::task::spawn_blocking(move || depot.stop()).await.unwrap();
    let depot = proto.start(&archive, &["--bucket", &bucket]);
    let s3 = depot.client();
    let again = complete(s3.clone(), completed.clone()).await.unwrap();
    assert_eq!(again.e_tag(), first.e_tag());
    assert_eq!(get_bytes(&s3, &bucket, "k/obj").await, parts.concat());

    // Once the key holds another object, the old result is not given again.
    s3.put_object().bucket(&bucket).key("k/obj").body(ByteStream::from_static(b"new")).send().await.unwrap();
    let err = complete(s3.clone(), completed.clone()).await.unwrap_err();
    let err = err.into_service_error();
    assert_eq!(err.meta().code(), Some("NoSuchUpload"));
    assert!(err.meta().message().unwrap_or_default().contains("overwritten"), "{err:?}");
}

/// Directory markers: a zero-byte `x/` makes and marks the directory; it lists as the key `x/`
/// of size 0 (a common prefix with a delimiter), HEAD/GET answer an empty object, DELETE
/// removes it (and the directory when empty). A non-empty body under such a key is a 400.
async fn directory_markers(proto: Proto) {
    let dir = test_dir();
    let archive = dir.path().join("archive");
    let depot = proto.start(&archive, &[]);
    let s3 = depot.client();
    let bucket = depot.field("bucket");
    let put = s3.put_object().bucket(&bucket).key("photos/").content_type("application/x-directory");
    let put = put.body(ByteStream::from_static(b"")).send().await.unwrap();
    assert_eq!(put.e_tag(), Some("\"d41d8cd98f00b204e9800998ecf8427e\""));
    assert!(archive.join("photos").is_dir());
    let head = s3.head_object().bucket(&bucket).key("photos/").send().await.unwrap();
    assert_eq!((head.content_length(), head.content_type()), (Some(0), Some("application/x-directory")));
    assert_eq!(get_bytes(&s3, &bucket, "photos/").await, b"");
    s3.put_object()
        .bucket(&bucket)
        .key("photos/2024/a.jpg")
        .body(ByteStream::from_static(b"jpg"))
        .send()
        .await
        .unwrap();
    s3.put_object().bucket(&bucket).key("photos/2024/").body(ByteStream::from_static(b"")).send().await.unwrap();
    s3.put_object().bucket(&bucket).key("empty-dir/").body(ByteStream::from_static(b"")).send().await.unwrap();

    let all = s3.list_objects_v2().bucket(&bucket).send().await.unwrap();
    let listed: Vec<(&str, i64)> = all.contents().iter().map(|o| (o.key().unwrap(), o.size().unwrap())).collect();
    assert_eq!(listed, [("empty-dir/", 0), ("photos/", 0), ("photos/2024/", 0), ("photos/2024/a.jpg", 3)]);
    let top = s3.list_objects_v2().bucket(&bucket).delimiter("/").send().await.unwrap();
    assert!(top.contents().is_empty());
    let prefixes: Vec<&str> = top.common_prefixes().iter().map(|p| p.prefix().unwrap()).collect();
    assert_eq!(prefixes, ["empty-dir/", "photos/"]);
    let inside = s3.list_objects_v2().bucket(&bucket).prefix("photos/").delimiter("/").send().await.unwrap();
    assert_eq!(inside.contents().iter().map(|o| o.key().unwrap()).collect::<Vec<_>>(), ["photos/"]);
    assert_eq!(inside.common_prefixes().iter().map(|p| p.prefix().unwrap()).collect::<Vec<_>>(), ["photos/2024/"]);

    // Deleting the last object keeps the marked directory; deleting the marker removes it.
    s3.delete_object().bucket(&bucket).key("photos/2024/a.jpg").send().await.unwrap();
    assert!(archive.join("photos/2024").is_dir());
    s3.delete_object().bucket(&bucket).key("photos/2024/").send().await.unwrap();
    assert!(!archive.join("photos/2024").exists());
    s3.delete_object().bucket(&bucket).key("empty-dir/").send().await.unwrap();
    assert!(!archive.join("empty-dir").exists());
    let err = s3.head_object().bucket(&bucket).key("empty-dir/").send().await.unwrap_err();
    assert!(err.into_service_error().is_not_found());

    // A directory that only exists because of a key below it has no marker.
    s3.put_object().bucket(&bucket).key("implicit/x").body(ByteStream::from_static(b"x")).send().await.unwrap();
    let err = s3.get_object().bucket(&bucket).key("implicit/").send().await.unwrap_err();
    assert_eq!(err.into_service_error().meta().code(), Some("NoSuchKey"));

    // A trailing-slash key with bytes is refused, saying why.
    let resp = raw::send(
        &depot.target(),
        Some(&signer(&depot)),
        "PUT",
        &format!("/{bucket}/notes/"),
        &[],
        Payload::Hex(b"not empty".to_vec()),
    )
    .await;
    assert_eq!(resp.status, 400, "{}", resp.text());
    assert!(resp.message().contains("directory marker must be empty"), "{}", resp.message());
    assert!(!archive.join("notes").exists());
}

/// Object tagging: Put/Get/DeleteObjectTagging, `x-amz-tagging` on PUT, copy and multipart,
/// `x-amz-tagging-count` on GET, S3's limits and errors; the bytes and ETag are untouched.
async fn object_tagging(proto: Proto) {
    use aws_sdk_s3::types::{Tag, Tagging, TaggingDirective};
    let dir = test_dir();
    let depot = proto.start(&dir.path().join("archive"), &[]);
    let s3 = depot.client();
    let bucket = depot.field("bucket");
    let put = s3.put_object().bucket(&bucket).key("t").tagging("project=depot&team=backup%20ops");
    let put = put.body(ByteStream::from_static(b"tagged")).send().await.unwrap();
    let tags_of = |key: &'static str| {
        let s3 = s3.clone();
        let bucket = bucket.clone();
        async move {
            let out = s3.get_object_tagging().bucket(bucket).key(key).send().await.unwrap();
            let mut tags: Vec<(String, String)> =
                out.tag_set().iter().map(|t| (t.key().to_owned(), t.value().to_owned())).collect();
            tags.sort();
            tags
        }
    };
    let pair = |k: &str, v: &str| (k.to_owned(), v.to_owned());
    assert_eq!(tags_of("t").await, [pair("project", "depot"), pair("team", "backup ops")]);
    // Ten tags at S3's largest sizes may not fit in a file system's extended attributes
    // (ext4: 4 KB): stored, or refused as too large — never a server error.
    let big: Vec<Tag> =
        (0..10).map(|i| Tag::builder().key(format!("{i:0>128}")).value("v".repeat(256)).build().unwrap()).collect();
    let tagging = Tagging::builder().set_tag_set(Some(big)).build().unwrap();
    match s3.put_object_tagging().bucket(&bucket).key("t").tagging(tagging).send().await {
        Ok(_) => assert_eq!(tags_of("t").await.len(), 10),
        Err(err) => {
            let err = err.into_service_error();
            assert_eq!(err.meta().code(), Some("MetadataTooLarge"), "{err:?}");
            assert!(err.meta().message().unwrap().contains("fewer or shorter tags"), "{err:?}");
            assert_eq!(tags_of("t").await.len(), 2, "a refused tagging leaves the old tags");
        }
    }
    let restore = Tagging::builder()
        .tag_set(Tag::builder().key("project").value("depot").build().unwrap())
        .tag_set(Tag::builder().key("team").value("backup ops").build().unwrap())
        .build()
        .unwrap();
    s3.put_object_tagging().bucket(&bucket).key("t").tagging(restore).send().await.unwrap();
    let got = s3.get_object().bucket(&bucket).key("t").send().await.unwrap();
    assert_eq!(got.tag_count(), Some(2));
    assert_eq!(got.e_tag(), put.e_tag());

    let tag = |k: &str, v: &str| Tag::builder().key(k).value(v).build().unwrap();
    let tagging = Tagging::builder().tag_set(tag("env", "prod")).build().unwrap();
    s3.put_object_tagging().bucket(&bucket).key("t").tagging(tagging).send().await.unwrap();
    assert_eq!(tags_of("t").await, [pair("env", "prod")]);
    assert_eq!(get_bytes(&s3, &bucket, "t").await, b"tagged");
    let head = s3.head_object().bucket(&bucket).key("t").send().await.unwrap();
    assert_eq!(head.e_tag(), put.e_tag(), "tagging leaves the object as it was");

    // Copies keep the source's tags unless told to replace them.
    s3.copy_object().bucket(&bucket).key("c1").copy_source(format!("{bucket}/t")).send().await.unwrap();
    assert_eq!(tags_of("c1").await, [pair("env", "prod")]);
    let copy = s3.copy_object().bucket(&bucket).key("c2").copy_source(format!("{bucket}/t"));
    copy.tagging_directive(TaggingDirective::Replace).tagging("a=b").send().await.unwrap();
    assert_eq!(tags_of("c2").await, [pair("a", "b")]);

    // Multipart uploads carry x-amz-tagging to the object.
    let id = s3.create_multipart_upload().bucket(&bucket).key("m").tagging("mp=yes").send().await.unwrap();
    let id = id.upload_id.unwrap();
    let up = s3.upload_part().bucket(&bucket).key("m").upload_id(&id).part_number(1);
    let up = up.body(ByteStream::from_static(b"part")).send().await.unwrap();
    let parts = vec![CompletedPart::builder().part_number(1).e_tag(up.e_tag().unwrap()).build()];
    let done = s3.complete_multipart_upload().bucket(&bucket).key("m").upload_id(&id);
    done.multipart_upload(CompletedMultipartUpload::builder().set_parts(Some(parts)).build()).send().await.unwrap();
    assert_eq!(tags_of("m").await, [pair("mp", "yes")]);

    s3.delete_object_tagging().bucket(&bucket).key("t").send().await.unwrap();
    assert!(tags_of("t").await.is_empty());
    assert_eq!(s3.get_object().bucket(&bucket).key("t").send().await.unwrap().tag_count(), None);

    // S3's limits and errors.
    let too_many = Tagging::builder().set_tag_set(Some((0..11).map(|i| tag(&format!("k{i}"), "v")).collect()));
    let err = s3.put_object_tagging().bucket(&bucket).key("t").tagging(too_many.build().unwrap()).send().await;
    assert_eq!(code(err).as_deref(), Some("BadRequest"));
    let long_key = Tagging::builder().tag_set(tag(&"k".repeat(129), "v")).build().unwrap();
    let err = s3.put_object_tagging().bucket(&bucket).key("t").tagging(long_key).send().await;
    assert_eq!(code(err).as_deref(), Some("InvalidTag"));
    let long_value = Tagging::builder().tag_set(tag("k", &"v".repeat(257))).build().unwrap();
    let err = s3.put_object_tagging().bucket(&bucket).key("t").tagging(long_value).send().await;
    assert_eq!(code(err).as_deref(), Some("InvalidTag"));
    let twice = Tagging::builder().tag_set(tag("k", "1")).tag_set(tag("k", "2")).build().unwrap();
    let err = s3.put_object_tagging().bucket(&bucket).key("t").tagging(twice).send().await;
    assert_eq!(code(err).as_deref(), Some("InvalidTag"));
    let err = s3.put_object().bucket(&bucket).key("bad").tagging(format!("k={}", "v".repeat(300))).send().await;
    assert_eq!(code(err).as_deref(), Some("InvalidTag"));
    let err = s3.get_object_tagging().bucket(&bucket).key("missing").send().await;
    assert_eq!(code(err).as_deref(), Some("NoSuchKey"));
}

/// The smaller things S3 clients notice: `Expires` is kept; an empty `delimiter=` is not
/// echoed; presigned URLs valid for over a week, or a negative time, are 403; OPTIONS
/// without `Origin` is 400; DeleteObject on a missing bucket (multi-bucket) is `NoSuchBucket`.
async fn smaller_s3_behaviours(proto: Proto) {
    let dir = test_dir();
    let depot = proto.start(&dir.path().join("archive"), &[]);
    let s3 = depot.client();
    let bucket = depot.field("bucket");
    let target = depot.target();
    let expires = aws_sdk_s3::primitives::DateTime::from_secs(4_102_444_800); // 2100-01-01
    let put = s3.put_object().bucket(&bucket).key("e").expires(expires);
    put.body(ByteStream::from_static(b"x")).send().await.unwrap();
    #[allow(deprecated)]
    let kept = s3.head_object().bucket(&bucket).key("e").send().await.unwrap().expires().copied();
    assert_eq!(kept, Some(expires));
    let got = s3.get_object().bucket(&bucket).key("e").send().await.unwrap();
    assert_eq!(got.expires_string(), Some("Fri, 01 Jan 2100 00:00:00 GMT"));

    let list = raw::send(
        &target,
        Some(&signer(&depot)),
        "GET",
        &format!("/{bucket}?list-type=2&delimiter="),
        &[],
        Payload::Hex(vec![]),
    )
    .await;
    assert_eq!(list.status, 200, "{}", list.text());
    assert!(list.text().contains("<Key>e</Key>") && !list.text().contains("Delimiter"), "{}", list.text());

    let url = s3
        .get_object()
        .bucket(&bucket)
        .key("e")
        .presigned(PresigningConfig::expires_in(Duration::from_secs(60)).unwrap())
        .await
        .unwrap();
    let url = path_and_query(url.uri());
    for bad in ["604801", "-1"] {
        let url = url.replace("X-Amz-Expires=60", &format!("X-Amz-Expires={bad}"));
        let resp = raw::send(&target, None, "GET", &url, &[], Payload::Unsigned(vec![])).await;
        assert_eq!(resp.status, 403, "X-Amz-Expires={bad}: {}", resp.text());
        assert!(resp.text().contains("AuthorizationQueryParametersError"), "{}", resp.text());
    }
    let resp = raw::send(&target, None, "GET", &url, &[], Payload::Unsigned(vec![])).await;
    assert_eq!((resp.status, resp.body.as_slice()), (200, &b"x"[..]));

    let resp = raw::send(&target, None, "OPTIONS", &format!("/{bucket}/e"), &[], Payload::Unsigned(vec![])).await;
    assert_eq!(resp.status, 400, "{}", resp.text());
    assert!(resp.message().contains("Origin"), "{}", resp.text());

    let multi = proto.start(&dir.path().join("multi"), &["--multi-bucket"]);
    let err = multi.client().delete_object().bucket("no-such-bucket").key("k").send().await.unwrap_err();
    assert_eq!(err.into_service_error().meta().code(), Some("NoSuchBucket"));

    // ListBuckets pages by name (max-buckets, continuation-token, prefix) and names the owner.
    let m3 = multi.client();
    for name in ["b-1", "b-2", "b-3", "c-1"] {
        m3.create_bucket().bucket(name).send().await.unwrap();
    }
    let (mut names, mut token) = (Vec::new(), None);
    loop {
        let page =
            m3.list_buckets().max_buckets(2).prefix("b-").set_continuation_token(token.clone()).send().await.unwrap();
        assert!(page.owner().and_then(|o| o.id()).is_some_and(|id| id.len() == 64), "{:?}", page.owner());
        names.extend(page.buckets().iter().filter_map(|b| b.name().map(str::to_owned)));
        token = page.continuation_token().map(str::to_owned);
        if token.is_none() {
            break;
        }
    }
    assert_eq!(names, ["b-1", "b-2", "b-3"]);
    assert_eq!(m3.list_buckets().send().await.unwrap().buckets().len(), 4, "no max-buckets: all of them");

    // Listings name each object's owner: V1 always, V2 with fetch-owner.
    let owner = m3.list_buckets().send().await.unwrap().owner().cloned().unwrap();
    m3.put_object().bucket("c-1").key("k").body(ByteStream::from_static(b"v")).send().await.unwrap();
    let v1 = m3.list_objects().bucket("c-1").send().await.unwrap();
    assert_eq!(v1.contents()[0].owner(), Some(&owner));
    let v2 = m3.list_objects_v2().bucket("c-1").send().await.unwrap();
    assert_eq!(v2.contents()[0].owner(), None);
    let v2 = m3.list_objects_v2().bucket("c-1").fetch_owner(true).send().await.unwrap();
    assert_eq!(v2.contents()[0].owner(), Some(&owner));
}

/// GET and HEAD with `partNumber` read one part of a multipart object (as the newer
/// transfer managers download), part 1 of a plain object is all of it, and a part past the
/// last one is 400 `InvalidPart`.
async fn part_number_reads(proto: Proto) {
    let dir = test_dir();
    let depot = proto.start(&dir.path().join("archive"), &[]);
    let s3 = depot.client();
    let bucket = depot.field("bucket");
    // Three parts of one size and a shorter last one (assembled in place), and an upload of
    // varied sizes (concatenated).
    for (key, sizes) in
        [("fixed.sst", vec![5 << 20, 5 << 20, 5 << 20, 1 << 20]), ("varied.sst", vec![6 << 20, 5 << 20, 7])]
    {
        let parts: Vec<Vec<u8>> = sizes.iter().enumerate().map(|(i, &n)| body(n, i as u8)).collect();
        let (id, done) = upload_parts(&s3, &bucket, key, &parts).await;
        let completed = complete_upload(&s3, &bucket, key, &id, done).await;
        let total: usize = sizes.iter().sum();
        let mut start = 0;
        for (i, data) in parts.iter().enumerate() {
            let n = i as i32 + 1;
            let got = s3.get_object().bucket(&bucket).key(key).part_number(n).send().await.unwrap();
            assert_eq!(got.parts_count(), Some(parts.len() as i32), "{key} part {n}");
            assert_eq!(got.e_tag(), completed.e_tag(), "the whole object's ETag");
            assert_eq!(got.content_length(), Some(data.len() as i64));
            let range = format!("bytes {start}-{}/{total}", start + data.len() - 1);
            assert_eq!(got.content_range(), Some(range.as_str()));
            assert!(got.body.collect().await.unwrap().into_bytes() == data[..], "{key} part {n}'s bytes");
            let head = s3.head_object().bucket(&bucket).key(key).part_number(n).send().await.unwrap();
            assert_eq!(
                (head.content_length(), head.parts_count()),
                (Some(data.len() as i64), Some(parts.len() as i32))
            );
            start += data.len();
        }
        let past = parts.len() as i32 + 1;
        let err = s3.get_object().bucket(&bucket).key(key).part_number(past).send().await.unwrap_err();
        assert_eq!(err.raw_response().map(|r| r.status().as_u16()), Some(400));
        assert_eq!(err.into_service_error().meta().code(), Some("InvalidPart"));
        let err = s3.get_object().bucket(&bucket).key(key).part_number(1).range("bytes=0-9").send().await.unwrap_err();
        assert_eq!(err.into_service_error().meta().code(), Some("InvalidRequest"));
    }

    let data = body(1000, 9);
    s3.put_object().bucket(&bucket).key("plain").body(ByteStream::from(data.clone())).send().await.unwrap();
    let got = s3.get_object().bucket(&bucket).key("plain").part_number(1).send().await.unwrap();
    assert_eq!(got.parts_count(), None);
    assert!(got.body.collect().await.unwrap().into_bytes() == data[..]);
    let err = s3.get_object().bucket(&bucket).key("plain").part_number(2).send().await.unwrap_err();
    assert_eq!(err.into_service_error().meta().code(), Some("InvalidPart"));
}

/// Every contract test, once per protocol: the same bodies over HTTP/1.1, HTTP/2 over TLS
/// (ALPN `h2`) and h2c.
macro_rules! over_each_protocol {
    ($($test:ident),* $(,)?) => {
        mod h1 {
            $(#[tokio::test] async fn $test() { super::$test(depot_tests::Proto::H1).await })*
        }
        mod h2 {
            $(#[tokio::test] async fn $test() { super::$test(depot_tests::Proto::H2).await })*
        }
        mod h2c {
            $(#[tokio::test] async fn $test() { super::$test(depot_tests::Proto::H2c).await })*
        }
    };
}

over_each_protocol!(
    item01_07_path_style_sigv4_and_bucket_region,
    item02_every_payload_encoding_round_trips,
    item02_sdk_default_sends_trailers_and_they_are_checked,
    item03_checksum_headers_verified_sse_acl_storage_class_accepted,
    item04_expect_100_continue,
    item05_multipart_upload_lifecycle,
    item05_multipart_rules_are_enforced,
    item06_list_objects_v1_and_v2,
    item08_object_lock_not_configured,
    item09_delete_object_and_objects,
    item10_ranged_get,
    item11_errors_as_s3_xml_and_bodyless_head_404,
    item12_copy_metadata_and_presigned_urls,
    conditional_requests,
    list_object_versions,
    object_attributes,
    etags_are_md5_as_in_s3,
    complete_multipart_upload_is_idempotent,
    directory_markers,
    object_tagging,
    smaller_s3_behaviours,
    part_number_reads,
);
