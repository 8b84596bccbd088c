//! Multipart uploads written in place, the fallback for irregular shapes, crashes, expiry.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{ChecksumAlgorithm, ChecksumMode, ChecksumType, CompletedMultipartUpload, CompletedPart};
use base64::Engine as _;
use depot_tests::{Depot, test_dir};

use crate::s3_contract::{body, code, crc32_b64, get_bytes};

const MIB: usize = 1024 * 1024;
const FIXED: [&str; 6] = ["--bucket", "mpu", "--access-key", "AKIDMULTIPART", "--secret-key", "multipart-secret"];

async fn create(s3: &aws_sdk_s3::Client, key: &str) -> String {
    s3.create_multipart_upload().bucket("mpu").key(key).send().await.unwrap().upload_id().unwrap().to_owned()
}

/// An upload with a CRC32 checksum, `FULL_OBJECT` or (`None`) the default `COMPOSITE`.
async fn create_crc32(s3: &aws_sdk_s3::Client, key: &str, kind: Option<ChecksumType>) -> String {
    let create = s3.create_multipart_upload().bucket("mpu").key(key).checksum_algorithm(ChecksumAlgorithm::Crc32);
    create.set_checksum_type(kind).send().await.unwrap().upload_id().unwrap().to_owned()
}

async fn part(s3: &aws_sdk_s3::Client, key: &str, id: &str, n: i32, data: &[u8]) -> String {
    let up = s3
        .upload_part()
        .bucket("mpu")
        .key(key)
        .upload_id(id)
        .part_number(n)
        .body(ByteStream::from(data.to_vec()))
        .send()
        .await
        .unwrap_or_else(|e| panic!("part {n}: {e:?}"));
    up.e_tag().unwrap().to_owned()
}

async fn complete(
    s3: &aws_sdk_s3::Client,
    key: &str,
    id: &str,
    parts: &[(i32, &str)],
) -> Result<
    aws_sdk_s3::operation::complete_multipart_upload::CompleteMultipartUploadOutput,
    aws_sdk_s3::error::SdkError<aws_sdk_s3::operation::complete_multipart_upload::CompleteMultipartUploadError>,
> {
    let parts = parts.iter().map(|(n, e)| CompletedPart::builder().part_number(*n).e_tag(*e).build()).collect();
    s3.complete_multipart_upload()
        .bucket("mpu")
        .key(key)
        .upload_id(id)
        .multipart_upload(CompletedMultipartUpload::builder().set_parts(Some(parts)).build())
        .send()
        .await
}

fn upload_dir(archive: &Path, id: &str) -> PathBuf {
    archive.join(".depot/uploads").join(id)
}

fn crc64nvme_b64(data: &[u8]) -> String {
    let crc = crc_fast::checksum(crc_fast::CrcAlgorithm::Crc64Nvme, data);
    base64::engine::general_purpose::STANDARD.encode(crc.to_be_bytes())
}

#[tokio::test]
async fn parts_of_one_size_are_assembled_in_place_even_out_of_order() {
    let dir = test_dir();
    let archive = dir.path().join("archive");
    let depot = Depot::start(&archive, &FIXED);
    let s3 = depot.client();
    let parts = [body(5 * MIB, 1), body(5 * MIB, 2), body(MIB + 5, 3)];
    let id = create(&s3, "sst/1.sst").await;
    let mut etags = vec![String::new(); 3];
    for n in [3, 1, 2] {
        etags[n - 1] = part(&s3, "sst/1.sst", &id, n as i32, &parts[n - 1]).await;
    }
    let assembly = upload_dir(&archive, &id).join("assembly").metadata().expect("parts went to the assembly file");
    let refs: Vec<(i32, &str)> = etags.iter().enumerate().map(|(i, e)| (i as i32 + 1, e.as_str())).collect();
    let done = complete(&s3, "sst/1.sst", &id, &refs).await.unwrap();
    assert!(done.e_tag().unwrap().ends_with("-3\""), "{:?}", done.e_tag());

    let whole = parts.concat();
    assert_eq!(get_bytes(&s3, "mpu", "sst/1.sst").await, whole);
    let object = archive.join("sst/1.sst").metadata().unwrap();
    assert_eq!(object.ino(), assembly.ino(), "Complete renamed the assembly file: no copy");
    let head =
        s3.head_object().bucket("mpu").key("sst/1.sst").checksum_mode(ChecksumMode::Enabled).send().await.unwrap();
    assert_eq!(head.checksum_crc64_nvme(), Some(crc64nvme_b64(&whole).as_str()), "combined from the parts' CRCs");
    assert!(!upload_dir(&archive, &id).exists());
}

#[tokio::test]
async fn re_uploaded_parts_other_sizes_and_subsets_are_concatenated() {
    let dir = test_dir();
    let archive = dir.path().join("archive");
    let depot = Depot::start(&archive, &FIXED);
    let s3 = depot.client();

    // Part 2 uploaded again with other bytes of the same size: the second version counts.
    let id = create(&s3, "again").await;
    let (p1, p2, p2b, p3) = (body(5 * MIB, 1), body(5 * MIB, 2), body(5 * MIB, 9), body(100, 3));
    let e1 = part(&s3, "again", &id, 1, &p1).await;
    let e2 = part(&s3, "again", &id, 2, &p2).await;
    let e3 = part(&s3, "again", &id, 3, &p3).await;
    let e2b = part(&s3, "again", &id, 2, &p2b).await;
    assert_ne!(e2, e2b);
    assert_eq!(
        code(complete(&s3, "again", &id, &[(1, &e1), (2, &e2), (3, &e3)]).await).as_deref(),
        Some("InvalidPart")
    );
    complete(&s3, "again", &id, &[(1, &e1), (2, &e2b), (3, &e3)]).await.unwrap();
    assert_eq!(get_bytes(&s3, "mpu", "again").await, [p1.clone(), p2b, p3].concat());

    // Part 3 uploaded again, longer than the part size; Complete names a subset (1, 3, 4).
    let id = create(&s3, "subset").await;
    let (q3b, q4) = (body(6 * MIB + 1, 7), body(MIB, 4));
    let e1 = part(&s3, "subset", &id, 1, &p1).await;
    part(&s3, "subset", &id, 2, &p2).await;
    part(&s3, "subset", &id, 3, &p2).await;
    let e3 = part(&s3, "subset", &id, 3, &q3b).await;
    let e4 = part(&s3, "subset", &id, 4, &q4).await;
    let listed = s3.list_parts().bucket("mpu").key("subset").upload_id(&id).send().await.unwrap();
    let sizes: Vec<i64> = listed.parts().iter().map(|p| p.size().unwrap()).collect();
    assert_eq!(sizes, [5 * MIB as i64, 5 * MIB as i64, 6 * MIB as i64 + 1, MIB as i64]);
    complete(&s3, "subset", &id, &[(1, &e1), (3, &e3), (4, &e4)]).await.unwrap();
    let whole = [p1.clone(), q3b, q4].concat();
    assert_eq!(get_bytes(&s3, "mpu", "subset").await, whole);
    let head = s3.head_object().bucket("mpu").key("subset").checksum_mode(ChecksumMode::Enabled).send().await.unwrap();
    assert_eq!(head.checksum_crc64_nvme(), Some(crc64nvme_b64(&whole).as_str()));

    // A FULL_OBJECT CRC32 upload of parts of varying sizes: the whole object's CRC32.
    let id = create_crc32(&s3, "crc32", Some(ChecksumType::FullObject)).await;
    let sizes = [5 * MIB + 3, 7 * MIB, 12_345];
    let mut refs = Vec::new();
    let mut whole = Vec::new();
    for (i, size) in sizes.into_iter().enumerate() {
        let data = body(size, i as u8 + 40);
        let up = s3
            .upload_part()
            .bucket("mpu")
            .key("crc32")
            .upload_id(&id)
            .part_number(i as i32 + 1)
            .checksum_algorithm(ChecksumAlgorithm::Crc32)
            .body(ByteStream::from(data.clone()))
            .send()
            .await
            .unwrap();
        refs.push((i as i32 + 1, up.e_tag().unwrap().to_owned(), up.checksum_crc32().unwrap().to_owned()));
        whole.extend(data);
    }
    let parts = refs
        .iter()
        .map(|(n, e, c)| CompletedPart::builder().part_number(*n).e_tag(e).checksum_crc32(c).build())
        .collect();
    let done = s3
        .complete_multipart_upload()
        .bucket("mpu")
        .key("crc32")
        .upload_id(&id)
        .multipart_upload(CompletedMultipartUpload::builder().set_parts(Some(parts)).build())
        .send()
        .await
        .unwrap();
    assert_eq!(done.checksum_crc32(), Some(crc32_b64(&whole).as_str()));
    assert_eq!(get_bytes(&s3, "mpu", "crc32").await, whole);
    assert_eq!(std::fs::read_dir(archive.join(".depot/tmp")).unwrap().count(), 0, "no temp file left");
}

#[tokio::test]
async fn a_kill_9_between_parts_or_during_complete_leaves_no_partial_object() {
    let dir = test_dir();
    let archive = dir.path().join("archive");
    let depot = Depot::start(&archive, &FIXED);
    let s3 = depot.client();
    let parts = [body(5 * MIB, 1), body(5 * MIB, 2), body(3 * MIB, 3)];

    // Between parts: part 1 is durable, the upload continues after the restart.
    let id = create(&s3, "between").await;
    let e1 = part(&s3, "between", &id, 1, &parts[0]).await;
    depot.kill9();
    let depot = Depot::start(&archive, &FIXED);
    let s3 = depot.client();
    let e2 = part(&s3, "between", &id, 2, &parts[1]).await;
    let e3 = part(&s3, "between", &id, 3, &parts[2]).await;
    complete(&s3, "between", &id, &[(1, &e1), (2, &e2), (3, &e3)]).await.unwrap();
    assert_eq!(get_bytes(&s3, "mpu", "between").await, parts.concat());

    // During Complete, in place and concatenating, at a few moments: the object is whole or
    // absent, and an absent one can still be completed (or aborted).
    let mut depot = depot;
    for (round, delay_ms) in [0u64, 2, 10, 40].into_iter().enumerate() {
        let s3 = depot.client();
        let key = format!("during/{round}");
        let id = create(&s3, &key).await;
        // Odd rounds: a first part longer than the others, so Complete concatenates 40 MiB.
        let shape: Vec<Vec<u8>> =
            if round % 2 == 1 { vec![body(20 * MIB, 5), body(15 * MIB, 6), body(5 * MIB, 7)] } else { parts.to_vec() };
        let mut etags = Vec::new();
        for (i, data) in shape.iter().enumerate() {
            etags.push(part(&s3, &key, &id, i as i32 + 1, data).await);
        }
        let refs: Vec<(i32, &str)> = etags.iter().enumerate().map(|(i, e)| (i as i32 + 1, e.as_str())).collect();
        let request = {
            let (s3, key, id, refs) = (
                s3.clone(),
                key.clone(),
                id.clone(),
                refs.iter().map(|(n, e)| (*n, e.to_string())).collect::<Vec<_>>(),
            );
            tokio::spawn(async move {
                let refs: Vec<(i32, &str)> = refs.iter().map(|(n, e)| (*n, e.as_str())).collect();
                complete(&s3, &key, &id, &refs).await
            })
        };
        tokio::time::sleep(Duration::from_millis(delay_ms)).await;
        depot.kill9();
        let _ = request.await;
        let whole = shape.concat();
        match std::fs::read(archive.join(&key)) {
            Ok(bytes) => assert!(bytes == whole, "round {round}: a partial object ({} bytes)", bytes.len()),
            Err(err) => assert_eq!(err.kind(), std::io::ErrorKind::NotFound),
        }
        depot = Depot::start(&archive, &FIXED);
        let s3 = depot.client();
        if archive.join(&key).exists() {
            assert_eq!(get_bytes(&s3, "mpu", &key).await, whole);
        } else if round == 3 {
            s3.abort_multipart_upload().bucket("mpu").key(&key).upload_id(&id).send().await.unwrap();
            assert!(!upload_dir(&archive, &id).exists(), "abort frees the space");
        } else {
            complete(&s3, &key, &id, &refs).await.unwrap();
            assert_eq!(get_bytes(&s3, "mpu", &key).await, whole);
        }
    }
}

#[tokio::test]
async fn abandoned_uploads_expire_with_a_log_line() {
    let dir = test_dir();
    let archive = dir.path().join("archive");
    let log = dir.path().join("expiry.log");
    let mut args = FIXED.to_vec();
    // Long enough that a loaded 2-core machine gets the part in before the sweep takes the
    // upload (idle since its creation); the sweep then has up to 20 s.
    args.extend(["--multipart-expiry", "4", "--log-file", log.to_str().unwrap()]);
    let depot = Depot::start(&archive, &args);
    let s3 = depot.client();
    let id = create(&s3, "abandoned").await;
    part(&s3, "abandoned", &id, 1, &body(5 * MIB, 1)).await;
    assert!(upload_dir(&archive, &id).exists());
    let mut gone = false;
    for _ in 0..200 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if !upload_dir(&archive, &id).exists() {
            gone = true;
            break;
        }
    }
    assert!(gone, "the upload was not swept within 20 s");
    let uploads = s3.list_multipart_uploads().bucket("mpu").send().await.unwrap();
    assert!(uploads.uploads().is_empty());
    let err = s3.list_parts().bucket("mpu").key("abandoned").upload_id(&id).send().await.unwrap_err();
    assert_eq!(err.into_service_error().meta().code(), Some("NoSuchUpload"));
    let text = std::fs::read_to_string(&log).unwrap();
    let line = text.lines().find(|l| l.contains("--multipart-expiry")).expect("a log line names the sweep");
    assert!(line.contains(&id) && line.contains("abandoned"), "{line}");

    // A bad value is refused with the expected forms.
    let out = std::process::Command::new(depot_tests::bin("depot"))
        .args(["serve", "--multipart-expiry", "soon"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("plain seconds"), "{}", String::from_utf8_lossy(&out.stderr));
}

fn md5_of(data: &[u8]) -> [u8; 16] {
    use md5::Digest as _;
    md5::Md5::digest(data).into()
}

/// The S3 code, HTTP status and message of a refused UploadPartCopy.
fn refusal(
    result: Result<
        aws_sdk_s3::operation::upload_part_copy::UploadPartCopyOutput,
        aws_sdk_s3::error::SdkError<aws_sdk_s3::operation::upload_part_copy::UploadPartCopyError>,
    >,
) -> (String, u16, String) {
    use aws_sdk_s3::error::ProvideErrorMetadata as _;
    let err = result.expect_err("the request was refused");
    let status = err.raw_response().map_or(0, |r| r.status().as_u16());
    (err.code().unwrap_or_default().to_owned(), status, err.message().unwrap_or_default().to_owned())
}

/// UploadPartCopy (boto3's managed copy and `aws s3 cp s3://… s3://…` above 8 MiB, s3-tests'
/// `test_multipart_copy_*`): parts copied from a range of an object and from a whole one are
/// stored as uploaded parts are; refusals are S3's.
async fn upload_part_copy(proto: depot_tests::Proto) {
    let dir = test_dir();
    let archive = dir.path().join("archive");
    let depot = proto.start(&archive, &FIXED);
    let s3 = depot.client();
    let (big, small) = (body(7 * MIB + 3, 11), body(3 * MIB + 5, 12));
    for (key, data) in [("src/big one", &big), ("src/small", &small)] {
        s3.put_object().bucket("mpu").key(key).body(ByteStream::from(data.clone())).send().await.unwrap();
    }
    let small_etag = s3.head_object().bucket("mpu").key("src/small").send().await.unwrap().e_tag().unwrap().to_owned();

    // Part 1 uploaded, part 2 a 6 MiB range of a key with a space (URL-encoded, `?versionId=null`),
    // part 3 the whole small object, with a copy condition that holds.
    let id = create(&s3, "copied").await;
    let p1 = body(5 * MIB, 13);
    let e1 = part(&s3, "copied", &id, 1, &p1).await;
    let (first, last) = (1000, 1000 + 6 * MIB - 1);
    let c2 = s3
        .upload_part_copy()
        .bucket("mpu")
        .key("copied")
        .upload_id(&id)
        .part_number(2)
        .copy_source("mpu/src/big%20one?versionId=null")
        .copy_source_range(format!("bytes={first}-{last}"))
        .send()
        .await
        .unwrap();
    let c3 = s3
        .upload_part_copy()
        .bucket("mpu")
        .key("copied")
        .upload_id(&id)
        .part_number(3)
        .copy_source("/mpu/src/small")
        .copy_source_if_match(&small_etag)
        .send()
        .await
        .unwrap();
    let range = &big[first..=last];
    let (r2, r3) = (c2.copy_part_result().unwrap(), c3.copy_part_result().unwrap());
    assert_eq!(r2.e_tag(), Some(format!("\"{}\"", hex::encode(md5_of(range))).as_str()), "the MD5 of the range");
    assert_eq!(r3.e_tag(), Some(small_etag.as_str()), "a whole copy's ETag is its source's MD5");
    assert!(r2.last_modified().is_some() && r3.last_modified().is_some());
    assert!(c2.copy_source_version_id().is_none(), "no versioning, no version id");

    let listed = s3.list_parts().bucket("mpu").key("copied").upload_id(&id).send().await.unwrap();
    let sizes: Vec<i64> = listed.parts().iter().map(|p| p.size().unwrap()).collect();
    assert_eq!(sizes, [5 * MIB as i64, 6 * MIB as i64, small.len() as i64]);
    let done =
        complete(&s3, "copied", &id, &[(1, &e1), (2, r2.e_tag().unwrap()), (3, r3.e_tag().unwrap())]).await.unwrap();
    let whole = [&p1[..], range, &small].concat();
    assert_eq!(get_bytes(&s3, "mpu", "copied").await, whole, "byte-exact");
    let md5s = [md5_of(&p1), md5_of(range), md5_of(&small)].concat();
    assert_eq!(done.e_tag(), Some(format!("\"{}-3\"", hex::encode(md5_of(&md5s))).as_str()));
    let head = s3.head_object().bucket("mpu").key("copied").checksum_mode(ChecksumMode::Enabled).send().await.unwrap();
    assert_eq!(head.checksum_crc64_nvme(), Some(crc64nvme_b64(&whole).as_str()), "the parts' CRCs were recorded");

    // An upload with a COMPOSITE CRC32: the copied part gets one, and Complete takes it.
    let id = create_crc32(&s3, "crc32", None).await;
    let copied = s3
        .upload_part_copy()
        .bucket("mpu")
        .key("crc32")
        .upload_id(&id)
        .part_number(1)
        .copy_source("mpu/src/small")
        .copy_source_range("bytes=0-99")
        .send()
        .await
        .unwrap();
    let result = copied.copy_part_result().unwrap();
    assert_eq!(result.checksum_crc32(), Some(crc32_b64(&small[..100]).as_str()));
    let only = CompletedPart::builder()
        .part_number(1)
        .e_tag(result.e_tag().unwrap())
        .checksum_crc32(result.checksum_crc32().unwrap())
        .build();
    s3.complete_multipart_upload()
        .bucket("mpu")
        .key("crc32")
        .upload_id(&id)
        .multipart_upload(CompletedMultipartUpload::builder().parts(only).build())
        .send()
        .await
        .unwrap();
    assert_eq!(get_bytes(&s3, "mpu", "crc32").await, &small[..100]);

    // Refusals, each leaving no part behind.
    let id = create(&s3, "refused").await;
    let copy = |source: &str| {
        s3.upload_part_copy().bucket("mpu").key("refused").upload_id(&id).part_number(1).copy_source(source)
    };
    let past = format!("bytes=0-{}", small.len());
    let (code, status, message) = refusal(copy("mpu/src/small").copy_source_range(&past).send().await);
    assert_eq!((code.as_str(), status), ("InvalidRange", 416), "s3-tests' test_multipart_copy_invalid_range");
    assert!(message.contains(&past) && message.contains(&small.len().to_string()), "{message}");
    for bad in ["0-2", "bytes=0", "bytes=hello-world", "bytes=0-bar", "bytes=hello-", "bytes=0-2,3-5", "bytes=-5"] {
        let (code, status, message) = refusal(copy("mpu/src/small").copy_source_range(bad).send().await);
        assert_eq!((code.as_str(), status), ("InvalidArgument", 400), "{bad}");
        assert!(message.contains("x-amz-copy-source-range") && message.contains("bytes=first-last"), "{message}");
    }
    let (code, status, _) = refusal(copy("mpu/src/missing").send().await);
    assert_eq!((code.as_str(), status), ("NoSuchKey", 404));
    let (code, status, _) = refusal(copy("mpu/src/small").copy_source_if_match("\"0123456789abcdef\"").send().await);
    assert_eq!((code.as_str(), status), ("PreconditionFailed", 412));
    let (code, status, _) = refusal(copy("mpu/src/small").copy_source_if_none_match(&small_etag).send().await);
    assert_eq!((code.as_str(), status), ("PreconditionFailed", 412), "a copy has no 304");
    let (code, status, _) = refusal(copy("mpu/src/small?versionId=3HL4kqtJlcpXroDTDmJ").send().await);
    assert_eq!((code.as_str(), status), ("InvalidArgument", 400), "a version Depot does not have");
    let (code, status, _) = refusal(copy("mpu/src/small").part_number(10_001).send().await);
    assert_eq!((code.as_str(), status), ("InvalidRequest", 400), "as UploadPart");
    let unknown = "0123456789abcdef0123456789abcdef";
    let (code, status, _) = refusal(copy("mpu/src/small").upload_id(unknown).send().await);
    assert_eq!((code.as_str(), status), ("NoSuchUpload", 404));
    let listed = s3.list_parts().bucket("mpu").key("refused").upload_id(&id).send().await.unwrap();
    assert!(listed.parts().is_empty(), "{:?}", listed.parts());
    assert_eq!(std::fs::read_dir(archive.join(".depot/tmp")).unwrap().count(), 0, "no temp file left");
}

mod upload_part_copy {
    #[tokio::test]
    async fn h1() {
        super::upload_part_copy(depot_tests::Proto::H1).await;
    }

    #[tokio::test]
    async fn h2() {
        super::upload_part_copy(depot_tests::Proto::H2).await;
    }

    #[tokio::test]
    async fn h2c() {
        super::upload_part_copy(depot_tests::Proto::H2c).await;
    }
}
