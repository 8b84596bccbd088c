//! What bad input and faults get: each answer a client can act on, and nothing stored,
//! damaged, or left behind.

use std::path::Path;
use std::time::Duration;

use aws_sdk_s3::presigning::PresigningConfig;
use aws_sdk_s3::primitives::ByteStream;
use depot_tests::raw::{self, Payload, Signer};
use depot_tests::{Depot, test_dir};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::s3_contract::{body, get_bytes, path_and_query, signer};

/// The archive's entries other than Depot's own `.depot/`.
fn archive_entries(archive: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(archive)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n != ".depot")
        .collect();
    names.sort();
    names
}

fn temp_files(archive: &Path) -> usize {
    std::fs::read_dir(archive.join(".depot/tmp")).map(|d| d.count()).unwrap_or(0)
}

/// Polls `check` for up to 5 s.
async fn eventually(mut check: impl FnMut() -> bool) -> bool {
    for _ in 0..250 {
        if check() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

async fn presigned_put(depot: &Depot, key: &str) -> String {
    let url = depot
        .client()
        .put_object()
        .bucket(depot.field("bucket"))
        .key(key)
        .presigned(PresigningConfig::expires_in(Duration::from_secs(300)).unwrap())
        .await
        .unwrap();
    path_and_query(url.uri())
}

/// Opens a connection and sends a PUT's head plus the first `sent` bytes of a body that
/// declares `declared` bytes.
async fn partial_put(depot: &Depot, key: &str, declared: u64, sent: usize) -> tokio::net::TcpStream {
    let endpoint = depot.field("endpoint");
    let authority = endpoint.trim_start_matches("http://").to_owned();
    let target = presigned_put(depot, key).await;
    let mut tcp = tokio::net::TcpStream::connect(&authority).await.unwrap();
    let head = format!("PUT {target} HTTP/1.1\r\nHost: {authority}\r\nContent-Length: {declared}\r\n\r\n");
    tcp.write_all(head.as_bytes()).await.unwrap();
    tcp.write_all(&body(sent, 1)).await.unwrap();
    tcp
}

#[tokio::test]
async fn bad_credentials_are_403_and_write_nothing() {
    let dir = test_dir();
    let archive = dir.path().join("archive");
    let depot = Depot::start(&archive, &[]);
    let endpoint = depot.field("endpoint");
    let bucket = depot.field("bucket");
    let put = |who: Option<Signer>, key: &str| {
        let path = format!("/{bucket}/{key}");
        let endpoint = endpoint.clone();
        async move { raw::send(&endpoint, who.as_ref(), "PUT", &path, &[], Payload::Hex(b"x".to_vec())).await }
    };
    let good = signer(&depot);
    let wrong_secret = Signer { secret_key: "not-the-secret-key-at-all".into(), ..good.clone() };
    let resp = put(Some(wrong_secret), "k1").await;
    assert_eq!(resp.status, 403);
    assert!(resp.text().contains("<Code>SignatureDoesNotMatch</Code>"), "{}", resp.text());
    assert!(!resp.text().contains(&good.secret_key));

    let unknown_key = Signer { access_key: "AKIDUNKNOWN".into(), ..good.clone() };
    let resp = put(Some(unknown_key), "k2").await;
    assert_eq!(resp.status, 403);
    assert!(resp.text().contains("<Code>InvalidAccessKeyId</Code>"), "{}", resp.text());

    let resp = put(None, "k3").await;
    assert_eq!(resp.status, 403);
    assert!(resp.text().contains("<Code>AccessDenied</Code>"), "{}", resp.text());

    let expired = PresigningConfig::builder()
        .start_time(std::time::SystemTime::now() - Duration::from_secs(3600))
        .expires_in(Duration::from_secs(60))
        .build()
        .unwrap();
    let url = depot.client().put_object().bucket(&bucket).key("k4").presigned(expired).await.unwrap();
    let resp =
        raw::send(&endpoint, None, "PUT", &path_and_query(url.uri()), &[], Payload::Unsigned(b"x".to_vec())).await;
    assert_eq!(resp.status, 403);
    assert!(resp.text().contains("<Code>AccessDenied</Code>") && resp.text().contains("expired"), "{}", resp.text());

    let resp = raw::send(&endpoint, Some(&good), "PUT", "/not-this-bucket/k5", &[], Payload::Hex(b"x".to_vec())).await;
    assert_eq!(resp.status, 404);
    assert!(resp.text().contains("<Code>NoSuchBucket</Code>") && resp.text().contains(&bucket), "{}", resp.text());

    assert!(archive_entries(&archive).is_empty(), "{:?}", archive_entries(&archive));
    assert_eq!(temp_files(&archive), 0);
}

#[tokio::test]
async fn unsafe_keys_are_refused_naming_the_key_and_the_rule() {
    let dir = test_dir();
    let archive = dir.path().join("archive");
    let outside = dir.path().join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::create_dir_all(&archive).unwrap();
    std::os::unix::fs::symlink(&outside, archive.join("link-out")).unwrap();
    let depot = Depot::start(&archive, &[]);
    let endpoint = depot.field("endpoint");
    let bucket = depot.field("bucket");
    let s = signer(&depot);
    let long = "k".repeat(1025);
    let cases: Vec<(String, &str)> = vec![
        ("../escape".into(), "'..'"),
        ("a/../../escape".into(), "'..'"),
        ("a//b".into(), "empty segment"),
        ("/abs".into(), "starts with '/'"),
        ("nul%00byte".into(), "NUL"),
        ("back%5Cslash".into(), "backslash"),
        // s3s refuses it while parsing the path, with S3's own code.
        (long, "KeyTooLongError"),
        (".depot/tmp/x".into(), ".depot"),
        ("link-out/secret".into(), "symbolic link"),
    ];
    for (key, rule) in cases {
        let resp =
            raw::send(&endpoint, Some(&s), "PUT", &format!("/{bucket}/{key}"), &[], Payload::Hex(b"evil".to_vec()))
                .await;
        assert_eq!(resp.status, 400, "{key}: {}", resp.text());
        if rule == "KeyTooLongError" {
            assert!(resp.text().contains("<Code>KeyTooLongError</Code>"), "{}", resp.text());
            continue;
        }
        let text = resp.message();
        assert!(text.contains(rule), "{key}: expected the rule ({rule}) in {text}");
        {
            let shown = key.replace("%00", "\\0").replace("%5C", "\\\\");
            assert!(text.contains(&shown), "{key}: expected the key in {text}");
        }
    }
    assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0, "nothing written outside the archive");
    assert!(!dir.path().join("escape").exists());
    assert_eq!(archive_entries(&archive), ["link-out"]);
}

#[tokio::test]
async fn a_key_and_a_prefix_cannot_collide() {
    let dir = test_dir();
    let archive = dir.path().join("archive");
    let depot = Depot::start(&archive, &[]);
    let s3 = depot.client();
    let bucket = depot.field("bucket");
    s3.put_object().bucket(&bucket).key("a").body(ByteStream::from_static(b"file")).send().await.unwrap();
    let err = s3.put_object().bucket(&bucket).key("a/b").body(ByteStream::from_static(b"x")).send().await.unwrap_err();
    let raw = err.raw_response().unwrap();
    assert_eq!(raw.status().as_u16(), 409);
    let service = err.into_service_error();
    assert_eq!(service.meta().code(), Some("KeyConflict"));
    assert!(service.meta().message().unwrap().contains("\"a/b\""), "{:?}", service.meta().message());

    s3.put_object().bucket(&bucket).key("d/e").body(ByteStream::from_static(b"x")).send().await.unwrap();
    let err = s3.put_object().bucket(&bucket).key("d").body(ByteStream::from_static(b"x")).send().await.unwrap_err();
    assert_eq!(err.raw_response().unwrap().status().as_u16(), 409);
    assert_eq!(get_bytes(&s3, &bucket, "a").await, b"file");
    assert_eq!(get_bytes(&s3, &bucket, "d/e").await, b"x");
    assert_eq!(temp_files(&archive), 0);
}

#[tokio::test]
async fn a_body_that_fails_its_digest_is_not_stored() {
    let dir = test_dir();
    let archive = dir.path().join("archive");
    let depot = Depot::start(&archive, &[]);
    let endpoint = depot.field("endpoint");
    let bucket = depot.field("bucket");
    let s = signer(&depot);
    let data = body(100_000, 9);
    let md5_of_other = "XUFAKrxLKna5cZ2REBfFkg=="; // MD5("hello")
    let sha_of_other = "LPJNul+wow4m6DsqxbninhsWHlwfp0JecwQzYpOLmCQ="; // SHA-256("hello")
    type Case<'a> = (&'a str, Vec<(&'a str, &'a str)>, Payload, &'a str);
    let cases: Vec<Case<'_>> = vec![
        ("md5", vec![("content-md5", md5_of_other)], Payload::Hex(data.clone()), "BadDigest"),
        ("sha256", vec![("x-amz-checksum-sha256", sha_of_other)], Payload::Unsigned(data.clone()), "BadDigest"),
        (
            "signed-hash",
            vec![],
            Payload::WrongHex { sent: data.clone(), hashed: b"other".to_vec() },
            "XAmzContentSHA256Mismatch",
        ),
        (
            "trailer",
            vec![],
            Payload::UnsignedTrailer {
                data: data.clone(),
                chunk: 4096,
                trailer: ("x-amz-checksum-crc32".into(), "AAAAAA==".into()),
            },
            "BadDigest",
        ),
    ];
    for (key, headers, payload, expected) in cases {
        let resp = raw::send(&endpoint, Some(&s), "PUT", &format!("/{bucket}/{key}"), &headers, payload).await;
        assert_eq!(resp.status, 400, "{key}: {}", resp.text());
        assert!(resp.text().contains(&format!("<Code>{expected}</Code>")), "{key}: {}", resp.text());
    }
    assert!(archive_entries(&archive).is_empty(), "{:?}", archive_entries(&archive));
    assert_eq!(temp_files(&archive), 0);
}

#[tokio::test]
async fn a_declared_body_over_5_gib_is_refused_before_reading() {
    let dir = test_dir();
    let depot = Depot::start(&dir.path().join("archive"), &[]);
    let mut tcp = partial_put(&depot, "huge", 6 * 1024 * 1024 * 1024, 0).await;
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut buf)).await.unwrap().unwrap();
    let reply = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(reply.starts_with("HTTP/1.1 400"), "{reply}");
    assert!(reply.contains("EntityTooLarge"), "{reply}");
}

#[tokio::test]
async fn a_client_that_disconnects_mid_upload_leaves_nothing() {
    let dir = test_dir();
    let archive = dir.path().join("archive");
    let depot = Depot::start(&archive, &[]);
    let tcp = partial_put(&depot, "half", 4 * 1024 * 1024, 1024 * 1024).await;
    assert!(eventually(|| temp_files(&archive) == 1).await, "the upload is in progress in a temp file");
    drop(tcp);
    assert!(eventually(|| temp_files(&archive) == 0).await, "the temp file is removed");
    assert!(archive_entries(&archive).is_empty());
    let err = depot.client().head_object().bucket(depot.field("bucket")).key("half").send().await.unwrap_err();
    assert!(err.into_service_error().is_not_found());
}

#[tokio::test]
async fn kill_9_mid_upload_keeps_earlier_objects_and_the_next_start_sweeps() {
    let dir = test_dir();
    let archive = dir.path().join("archive");
    let fixed = ["--bucket", "crashy", "--access-key", "AKIDCRASH", "--secret-key", "crash-secret-key"];
    let depot = Depot::start(&archive, &fixed);
    let s3 = depot.client();
    let earlier = body(2 * 1024 * 1024, 3);
    s3.put_object().bucket("crashy").key("earlier").body(ByteStream::from(earlier.clone())).send().await.unwrap();
    let _tcp = partial_put(&depot, "interrupted", 8 * 1024 * 1024, 3 * 1024 * 1024).await;
    assert!(eventually(|| temp_files(&archive) == 1).await);
    depot.kill9();
    assert_eq!(temp_files(&archive), 1, "a crash leaves the temp file");
    assert_eq!(archive_entries(&archive), ["earlier"], "but no partial object");

    let depot = Depot::start(&archive, &fixed);
    assert_eq!(temp_files(&archive), 0, "swept at start");
    let s3 = depot.client();
    assert_eq!(get_bytes(&s3, "crashy", "earlier").await, earlier);
    let err = s3.head_object().bucket("crashy").key("interrupted").send().await.unwrap_err();
    assert!(err.into_service_error().is_not_found());
}

#[tokio::test]
async fn sixteen_concurrent_puts_to_one_key_leave_exactly_one_body() {
    let dir = test_dir();
    let archive = dir.path().join("archive");
    let depot = Depot::start(&archive, &[]);
    let s3 = depot.client();
    let bucket = depot.field("bucket");
    let bodies: Vec<Vec<u8>> = (0..16).map(|i| body(512 * 1024 + i * 1000, i as u8)).collect();
    let mut tasks = Vec::new();
    for data in &bodies {
        let (s3, bucket, data) = (s3.clone(), bucket.clone(), data.clone());
        tasks.push(tokio::spawn(async move {
            s3.put_object().bucket(bucket).key("contended").body(ByteStream::from(data)).send().await.unwrap();
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let stored = get_bytes(&s3, &bucket, "contended").await;
    assert!(bodies.contains(&stored), "the object is one of the bodies, whole ({} bytes)", stored.len());
    assert_eq!(temp_files(&archive), 0);
}

/// A size-limited file system (tmpfs) under the test directory, unmounted on drop.
struct SmallDisk(std::path::PathBuf);

impl SmallDisk {
    fn mount(dir: &Path, size: &str) -> Option<Self> {
        std::fs::create_dir_all(dir).unwrap();
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| Self(dir.to_path_buf()))
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[tokio::test]
async fn a_full_disk_fails_the_put_cleanly_and_the_server_keeps_serving() {
    let dir = test_dir();
    let archive = dir.path().join("archive");
    let Some(_disk) = SmallDisk::mount(&archive, "8m") else {
        eprintln!(
            "SKIPPED a_full_disk_fails_the_put_cleanly: cannot mount a tmpfs here (needs root); see README's manual check"
        );
        return;
    };
    let depot = Depot::start(&archive, &["--log-file", dir.path().join("depot.log").to_str().unwrap()]);
    let s3 = depot.client();
    let bucket = depot.field("bucket");
    let small = body(1024 * 1024, 1);
    s3.put_object().bucket(&bucket).key("small").body(ByteStream::from(small.clone())).send().await.unwrap();

    let result =
        s3.put_object().bucket(&bucket).key("too-big").body(ByteStream::from(body(12 * 1024 * 1024, 2))).send().await;
    let err = result.unwrap_err();
    let status = err.raw_response().map(|r| r.status().as_u16());
    assert_eq!(status, Some(507), "{err:?}");
    let message = err.into_service_error().meta().message().unwrap_or_default().to_owned();
    assert!(message.contains("no space left"), "{message}");

    assert!(eventually(|| temp_files(&archive) == 0).await, "the failed upload's temp file is gone");
    assert_eq!(get_bytes(&s3, &bucket, "small").await, small, "what was stored is intact");
    let err = s3.head_object().bucket(&bucket).key("too-big").send().await.unwrap_err();
    assert!(err.into_service_error().is_not_found(), "no partial object");
    s3.put_object().bucket(&bucket).key("after").body(ByteStream::from_static(b"still serving")).send().await.unwrap();
    assert_eq!(get_bytes(&s3, &bucket, "after").await, b"still serving");
}

#[tokio::test]
async fn concurrent_puts_and_deletes_in_one_directory_never_fail() {
    let dir = test_dir();
    let archive = dir.path().join("archive");
    let depot = Depot::start(&archive, &[]);
    let s3 = depot.client();
    let bucket = depot.field("bucket");
    let mut tasks = Vec::new();
    for worker in 0..16 {
        let (s3, bucket) = (s3.clone(), bucket.clone());
        tasks.push(tokio::spawn(async move {
            for round in 0..12 {
                // Two shared directories: deletes keep emptying them while puts fill them.
                let key = format!("race/d{}/e/k{worker}-{round}", round % 2);
                s3.put_object().bucket(&bucket).key(&key).body(ByteStream::from_static(b"x")).send().await.unwrap();
                s3.delete_object().bucket(&bucket).key(&key).send().await.unwrap();
            }
        }));
    }
    for task in tasks {
        task.await.expect("no request failed");
    }
    assert!(!archive.join("race").exists(), "every emptied directory is gone");
    assert_eq!(temp_files(&archive), 0);
}
