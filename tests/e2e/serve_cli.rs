//! `depot serve` and `depot url` as a user runs them: the banner, credentials, TLS, the
//! summary on SIGTERM, multi-bucket mode, one server per archive.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_s3::primitives::ByteStream;
use depot_tests::{Depot, bin, s3_client, test_dir};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Every file under `dir`, read whole.
fn files_under(dir: &Path) -> Vec<(std::path::PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if let Ok(bytes) = std::fs::read(&path) {
                out.push((path, bytes));
            }
        }
    }
    out
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle.as_bytes())
}

#[tokio::test]
async fn the_json_banner_is_one_line_with_every_field_and_nothing_else_on_stdout() {
    let dir = test_dir();
    let depot = Depot::start(&dir.path().join("archive"), &[]);
    let b = &depot.banner;
    let endpoint = depot.field("endpoint");
    assert!(endpoint.starts_with("http://127.0.0.1:") && !endpoint.ends_with(":0"), "{endpoint}");
    let bucket = depot.field("bucket");
    assert!(bucket.starts_with("depot-"));
    assert_eq!(depot.field("region"), "us-east-1");
    let url = depot.field("storage_url");
    assert_eq!(
        url,
        format!("s3://{bucket}/?endpoint={endpoint}&force-path-style=true&provider=minio&region=us-east-1")
    );
    assert!(!url.contains(&depot.field("secret_key")) && !url.contains(&depot.field("access_key")));
    assert!(b["ca_file"].is_null());
    assert!(Path::new(&depot.field("log_file")).exists());
    assert_eq!(depot.field("registry"), endpoint);
    assert!(depot.field("join_token").len() >= 16);
    let stopped = depot.stop();
    assert!(stopped.status.success(), "{stopped:?}");
    assert!(stopped.stdout.is_empty(), "only the banner on stdout: {:?}", stopped.stdout);
}

#[tokio::test]
async fn credentials_are_fresh_each_run_and_never_written_down() {
    let dir = test_dir();
    let archive = dir.path().join("archive");
    let log = archive.join(".depot/depot.log");
    let args = ["--log-file", log.to_str().unwrap(), "--log-level", "debug"];
    let first = Depot::start(&archive, &args);
    let (secret1, bucket1) = (first.field("secret_key"), first.field("bucket"));
    let s3 = first.client();
    s3.put_object().bucket(&bucket1).key("k").body(ByteStream::from_static(b"v")).send().await.unwrap();
    let _ = s3.get_object().bucket(&bucket1).key("missing").send().await;
    let wrong =
        s3_client(&first.field("endpoint"), &first.field("access_key"), "wrong-secret-value", "us-east-1", None);
    let _ = wrong.get_object().bucket(&bucket1).key("k").send().await;
    assert!(first.stop().status.success());

    let second = Depot::start(&archive, &args);
    let (secret2, bucket2) = (second.field("secret_key"), second.field("bucket"));
    assert_ne!(secret1, secret2);
    assert_ne!(bucket1, bucket2);
    drop(second);
    for (path, bytes) in files_under(&archive) {
        for secret in [&secret1, &secret2] {
            assert!(!contains(&bytes, secret), "a secret key was written to {}", path.display());
        }
    }
    assert!(std::fs::metadata(&log).unwrap().len() > 0, "the log was written");
}

#[tokio::test]
async fn given_credentials_come_from_flags_or_environment() {
    let dir = test_dir();
    let env = [
        ("DEPOT_ACCESS_KEY", "AKIDFROMENV"),
        ("DEPOT_SECRET_KEY", "secret-from-env"),
        ("DEPOT_BUCKET", "given-bucket"),
    ];
    let depot = Depot::start_with_env(&dir.path().join("archive"), &["--join-token", "join-token-given-1234"], &env);
    assert_eq!(depot.field("access_key"), "AKIDFROMENV");
    assert_eq!(depot.field("secret_key"), "secret-from-env");
    assert_eq!(depot.field("bucket"), "given-bucket");
    assert_eq!(depot.field("join_token"), "join-token-given-1234");
    let s3 = depot.client();
    s3.put_object().bucket("given-bucket").key("x").body(ByteStream::from_static(b"1")).send().await.unwrap();

    let out = Command::new(bin("depot"))
        .args(["serve", dir.path().join("other").to_str().unwrap(), "--secret-key", "has spaces in it"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("secret key may only contain"), "{stderr}");
    assert!(!stderr.contains("has spaces in it"), "the bad secret is not echoed: {stderr}");
}

/// A TLS client handshake to 127.0.0.1:`port` that checks the certificate for `name`.
async fn handshake(port: u16, name: &str, ca: Option<&Path>) -> Result<(), String> {
    let mut roots = rustls::RootCertStore::empty();
    if let Some(ca) = ca {
        let pem = std::fs::read_to_string(ca).unwrap();
        let der = pem::parse(pem).unwrap();
        roots.add(rustls::pki_types::CertificateDer::from(der.contents().to_vec())).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let server_name = rustls::pki_types::ServerName::try_from(name.to_owned()).unwrap();
    connector.connect(server_name, tcp).await.map(|_| ()).map_err(|e| e.to_string())
}

#[tokio::test]
async fn tls_is_automatic_for_a_non_loopback_advertise_and_covers_its_host() {
    let dir = test_dir();
    let depot = Depot::start(&dir.path().join("archive"), &["--advertise", "depot.example.test:0"]);
    let endpoint = depot.field("endpoint");
    assert!(endpoint.starts_with("https://depot.example.test:"), "{endpoint}");
    let port: u16 = endpoint.rsplit(':').next().unwrap().parse().unwrap();
    let ca = std::path::PathBuf::from(depot.field("ca_file"));
    let bundle = std::fs::read_to_string(depot.field("bundle_file")).unwrap();
    assert!(bundle.ends_with(&std::fs::read_to_string(&ca).unwrap()), "the bundle ends with the CA");
    assert!(bundle.matches("BEGIN CERTIFICATE").count() > 1, "and holds the system roots too");

    handshake(port, "depot.example.test", Some(&ca)).await.expect("the advertised name is covered");
    handshake(port, "localhost", Some(&ca)).await.expect("localhost is covered");
    assert!(handshake(port, "depot.example.test", None).await.is_err(), "without the CA the server is not trusted");

    let s3 = s3_client(
        &format!("https://127.0.0.1:{port}"),
        &depot.field("access_key"),
        &depot.field("secret_key"),
        "us-east-1",
        Some(&ca),
    );
    s3.put_object().bucket(depot.field("bucket")).key("k").body(ByteStream::from_static(b"tls")).send().await.unwrap();
    let untrusted = s3_client(
        &format!("https://127.0.0.1:{port}"),
        &depot.field("access_key"),
        &depot.field("secret_key"),
        "us-east-1",
        None,
    );
    assert!(untrusted.head_bucket().bucket(depot.field("bucket")).send().await.is_err());
}

#[tokio::test]
async fn the_operators_own_certificate_is_served() {
    let dir = test_dir();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".into()]).unwrap().self_signed(&key).unwrap();
    let (cert_path, key_path) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert_path, cert.pem()).unwrap();
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    let depot = Depot::start(
        &dir.path().join("archive"),
        &["--tls-cert", cert_path.to_str().unwrap(), "--tls-key", key_path.to_str().unwrap()],
    );
    assert!(depot.field("endpoint").starts_with("https://"));
    assert!(depot.banner["ca_file"].is_null());
    let s3 = s3_client(
        &depot.field("endpoint"),
        &depot.field("access_key"),
        &depot.field("secret_key"),
        "us-east-1",
        Some(&cert_path),
    );
    s3.head_bucket().bucket(depot.field("bucket")).send().await.unwrap();
}

#[tokio::test]
async fn depot_url_translates_br_urls() {
    let dir = test_dir();
    let archive = dir.path().join("archive");
    let depot = Depot::start(&archive, &[]);
    let br = format!("br://{}", archive.display());
    let out = Command::new(bin("depot")).args(["url", &br, "--advertise", "10.0.0.5:9000"]).output().unwrap();
    assert!(out.status.success(), "{out:?}");
    let bucket = depot.field("bucket");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("s3://{bucket}/?endpoint=http://10.0.0.5:9000&force-path-style=true&provider=minio&region=us-east-1")
    );
    let out = Command::new(bin("depot")).args(["url", &br]).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), depot.field("storage_url"));
    drop(depot);

    let out = Command::new(bin("depot")).args(["url", &br]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no depot is serving"), "{out:?}");
    let out = Command::new(bin("depot"))
        .args(["url", &br, "--bucket", "b1", "--advertise", "backup.local:9000", "--https"])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "s3://b1/?endpoint=https://backup.local:9000&force-path-style=true&provider=minio&region=us-east-1"
    );
    let out = Command::new(bin("depot")).args(["serve", "br://host/srv"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("three slashes"));
}

#[tokio::test]
async fn sigterm_drains_in_flight_requests_and_prints_a_summary() {
    let dir = test_dir();
    let depot = Depot::start(&dir.path().join("archive"), &[]);
    let s3 = depot.client();
    let bucket = depot.field("bucket");
    s3.put_object().bucket(&bucket).key("one").body(ByteStream::from(vec![1u8; 1000])).send().await.unwrap();
    s3.get_object().bucket(&bucket).key("one").send().await.unwrap().body.collect().await.unwrap();
    let _ = s3.get_object().bucket(&bucket).key("missing").send().await;

    // An upload in flight when SIGTERM arrives still completes.
    let presigned = s3
        .put_object()
        .bucket(&bucket)
        .key("in-flight")
        .presigned(aws_sdk_s3::presigning::PresigningConfig::expires_in(Duration::from_secs(60)).unwrap())
        .await
        .unwrap();
    let uri: http::Uri = presigned.uri().parse().unwrap();
    let authority = uri.authority().unwrap().to_string();
    let mut tcp = tokio::net::TcpStream::connect(&authority).await.unwrap();
    let head =
        format!("PUT {} HTTP/1.1\r\nHost: {authority}\r\nContent-Length: 2000\r\n\r\n", uri.path_and_query().unwrap());
    tcp.write_all(head.as_bytes()).await.unwrap();
    tcp.write_all(&[2u8; 1000]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    depot.terminate();
    tokio::time::sleep(Duration::from_millis(200)).await;
    tcp.write_all(&[2u8; 1000]).await.unwrap();
    let mut reply = vec![0u8; 1024];
    let n = tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut reply)).await.unwrap().unwrap();
    assert!(
        String::from_utf8_lossy(&reply[..n]).starts_with("HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&reply[..n])
    );
    drop(tcp);

    let stopped = depot.stop();
    assert!(stopped.status.success(), "{stopped:?}");
    assert!(stopped.stderr.contains("written: 2 objects, 2.9 KiB"), "{}", stopped.stderr);
    assert!(stopped.stderr.contains("read:    1 objects, 1000 B"), "{}", stopped.stderr);
    assert!(stopped.stderr.contains("1 client errors, 0 server errors"), "{}", stopped.stderr);
    assert_eq!(std::fs::read(dir.path().join("archive/in-flight")).unwrap(), [2u8; 2000]);
}

#[tokio::test]
async fn multi_bucket_mode_serves_each_top_level_directory() {
    let dir = test_dir();
    let archive = dir.path().join("archive");
    std::fs::create_dir_all(archive.join("existing")).unwrap();
    std::fs::write(archive.join("existing/old.sst"), b"old").unwrap();
    let depot = Depot::start(&archive, &["--multi-bucket"]);
    assert!(depot.banner["bucket"].is_null() && depot.banner["storage_url"].is_null());
    let s3 = depot.client();
    s3.create_bucket().bucket("alpha").send().await.unwrap();
    s3.create_bucket().bucket("beta").send().await.unwrap();
    let names: Vec<String> =
        s3.list_buckets().send().await.unwrap().buckets().iter().filter_map(|b| b.name().map(str::to_owned)).collect();
    assert_eq!(names, ["alpha", "beta", "existing"]);
    s3.put_object().bucket("alpha").key("k/v").body(ByteStream::from_static(b"a")).send().await.unwrap();
    assert_eq!(std::fs::read(archive.join("alpha/k/v")).unwrap(), b"a");
    // us-east-1 (the default region) answers a re-create of an owned bucket with 200, as S3
    // does there for legacy clients; the bucket keeps its objects.
    s3.create_bucket().bucket("alpha").send().await.unwrap();
    assert_eq!(std::fs::read(archive.join("alpha/k/v")).unwrap(), b"a");
    let got = s3.get_object().bucket("existing").key("old.sst").send().await.unwrap();
    assert_eq!(got.body.collect().await.unwrap().into_bytes().as_ref(), b"old");
    let err = s3.delete_bucket().bucket("alpha").send().await.unwrap_err();
    assert_eq!(err.into_service_error().meta().code(), Some("BucketNotEmpty"));
    s3.delete_bucket().bucket("beta").send().await.unwrap();
    assert!(!archive.join("beta").exists());
    let err = s3.put_object().bucket("beta").key("x").body(ByteStream::from_static(b"x")).send().await.unwrap_err();
    assert_eq!(err.into_service_error().meta().code(), Some("NoSuchBucket"));
}

#[tokio::test]
async fn one_server_per_archive_and_a_default_archive_under_the_temp_dir() {
    let dir = test_dir();
    let archive = dir.path().join("archive");
    let depot = Depot::start(&archive, &[]);
    let out = Command::new(bin("depot"))
        .args(["serve", archive.to_str().unwrap(), "--listen", "127.0.0.1:0"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&format!("already being served by process {}", depot.pid())), "{stderr}");
    drop(depot);

    let tmp = dir.path().join("tmp");
    std::fs::create_dir_all(&tmp).unwrap();
    let default = Depot::spawn(&[], &[("TMPDIR", tmp.to_str().unwrap())], &dir.path().join("logs"));
    assert_eq!(default.field("archive"), tmp.join("depot-archive").canonicalize().unwrap().to_str().unwrap());
}

/// With TLS, the banner tells clients to trust the bundle through `AWS_CA_BUNDLE` as well as
/// `SSL_CERT_FILE` (aws-sdk-go, BR's S3 library, reads the first and lets it replace its trust),
/// and `--json` has the field.
#[tokio::test]
async fn the_tls_banner_names_aws_ca_bundle_too() {
    let dir = test_dir();
    let archive = dir.path().join("archive");
    let depot = Depot::start(&archive, &["--tls", "on"]);
    let bundle = depot.field("bundle_file");
    assert_eq!(depot.field("aws_ca_bundle"), bundle);
    drop(depot);
    let plain = Depot::start(&dir.path().join("plain"), &[]);
    assert!(plain.banner["aws_ca_bundle"].is_null());
    drop(plain);

    let mut cmd = Command::new(bin("depot"));
    cmd.args(["serve", archive.to_str().unwrap(), "--tls", "on", "--listen", "127.0.0.1:0"])
        .stderr(std::process::Stdio::null());
    let (mut child, lines) = depot_tests::spawn_lines(&mut cmd);
    let mut banner = Vec::new();
    while let Ok(line) = lines.recv_timeout(Duration::from_secs(10)) {
        let done = line.starts_with("Press Ctrl-C");
        banner.push(line);
        if done {
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    let banner = banner.join("\n");
    assert!(banner.contains(&format!("export SSL_CERT_FILE={bundle}")), "{banner}");
    assert!(banner.contains(&format!("export AWS_CA_BUNDLE={bundle}")), "{banner}");
}
