//! The S3 views as a cluster feature: HTTPS with certificates from the coordinator's CA when
//! the cluster has TLS (renewed with the node's certificate), the `br restore` line `depot`
//! prints for the whole cluster, and each view's counters in `depot status`.

use std::sync::Arc;
use std::time::Duration;

use aws_sdk_s3::error::SdkError;
use depot_tests::agents::{Agent, Cluster, DataFile, write_backupmeta_v2};
use depot_tests::raw::{self, Payload, Signer, Target};
use depot_tests::{Proto, s3_client, test_dir};

const PREFIX: &str = "backup";

async fn get(s3: &aws_sdk_s3::Client, bucket: &str, key: &str) -> Vec<u8> {
    let out = s3.get_object().bucket(bucket).key(key).send().await.unwrap_or_else(|e| panic!("GET {key}: {e:?}"));
    out.body.collect().await.unwrap().into_bytes().to_vec()
}

/// A TLS handshake with the view at `endpoint` for the server name `name`, trusting `ca`
/// (PEM) only; the certificate's serial on success.
async fn handshake(endpoint: &str, name: &str, ca: &[u8]) -> Result<Vec<u8>, std::io::Error> {
    let mut roots = rustls::RootCertStore::empty();
    for block in pem::parse_many(ca).unwrap() {
        roots.add(rustls::pki_types::CertificateDer::from(block.into_contents())).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(endpoint.trim_start_matches("https://")).await?;
    let name = rustls::pki_types::ServerName::try_from(name.to_owned()).unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config)).connect(name, tcp).await?;
    let cert = tls.get_ref().1.peer_certificates().unwrap()[0].to_vec();
    Ok(cert)
}

/// With TLS on (an https:// coordinator), every view serves HTTPS with the node's certificate
/// from the cluster's CA: aws-sdk-s3 trusting that CA reads byte-exact (a file held by the
/// other node too, fetched over the agents' mutual TLS); HTTP/2 is negotiated by ALPN; the
/// certificate is valid for 127.0.0.1, ::1 and localhost but no other name; a client that does
/// not trust the CA fails the handshake; a renewal reaches the view; `--s3-tls off` is the
/// explicit way to a plain view.
#[test]
fn with_tls_on_the_view_serves_https_with_a_certificate_from_the_cluster_ca() {
    let dir = test_dir();
    let cluster = Cluster::start_with(dir.path(), "300ms", &["--tls", "on", "--cert-lifetime", "4s"]);
    assert!(cluster.registry.starts_with("https://"), "{}", cluster.registry);
    let ca = cluster.archive().join(".depot/tls/ca.pem");
    let ca_arg = ca.to_str().unwrap();
    let files = [DataFile::new("1/a.sst", 300_000), DataFile::new("2/b.sst", 200_000)];
    write_backupmeta_v2(&cluster.node_dir("a"), &files);
    files[0].write_to(&cluster.node_dir("a"));
    files[1].write_to(&cluster.node_dir("b"));
    let view = ["--s3-listen", "127.0.0.1:0", "--s3-prefix", PREFIX, "--ca-file", ca_arg];
    let _a = cluster.agent("a", &view);
    let b = cluster.agent("b", &view);
    let endpoint = b.s3_endpoint.clone().unwrap();
    assert!(endpoint.starts_with("https://127.0.0.1:"), "{endpoint}");
    assert!(b.s3_url.as_deref().unwrap().contains("endpoint=https://127.0.0.1:"), "{:?}", b.s3_url);
    let view_ca = b.s3_ca.clone().expect("the ready line names the CA");
    assert_eq!(std::fs::read(&view_ca).unwrap(), std::fs::read(&ca).unwrap(), "the view's CA is the cluster's");
    let bundle = b.root.join(".depot/view/bundle.pem");
    assert!(std::fs::read_to_string(&bundle).unwrap().ends_with(&std::fs::read_to_string(&ca).unwrap()));
    let bucket = cluster.depot.field("bucket");
    let (access, secret) = (cluster.depot.field("access_key"), cluster.depot.field("secret_key"));

    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let s3 = s3_client(&endpoint, &access, &secret, "us-east-1", Some(&view_ca));
        for f in &files {
            assert!(get(&s3, &bucket, &format!("{PREFIX}/{}", f.name)).await == f.data, "{} over HTTPS", f.name);
        }

        // HTTP/2 by ALPN (raw::send asserts `h2` was negotiated), signed, byte-exact.
        let target = Target { endpoint: endpoint.clone(), proto: Proto::H2, ca: Some(view_ca.clone()) };
        let signer = Signer { access_key: access.clone(), secret_key: secret.clone(), region: "us-east-1".into() };
        let path = format!("/{bucket}/{PREFIX}/{}", files[0].name);
        let response = raw::send(&target, Some(&signer), "GET", &path, &[], Payload::Hex(Vec::new())).await;
        assert_eq!((response.version, response.status), (http::Version::HTTP_2, 200));
        assert!(response.body == files[0].data);

        // The names a local client uses, and only those (and the advertised 127.0.0.1).
        let ca_pem = std::fs::read(&view_ca).unwrap();
        for name in ["127.0.0.1", "localhost", "::1"] {
            handshake(&endpoint, name, &ca_pem).await.unwrap_or_else(|e| panic!("{name}: {e}"));
        }
        let err = handshake(&endpoint, "other.example", &ca_pem).await.unwrap_err();
        assert!(err.to_string().contains("not valid for name"), "{err}");

        // A client without the cluster's CA fails the handshake (and gets no answer).
        let stranger = s3_client(&endpoint, &access, &secret, "us-east-1", None);
        let err = stranger.get_object().bucket(&bucket).key(format!("{PREFIX}/{}", files[0].name)).send().await;
        let err = err.unwrap_err();
        assert!(matches!(err, SdkError::DispatchFailure(_)), "{err:?}");
        assert!(format!("{err:?}").contains("UnknownIssuer"), "{err:?}");

        // Renewal (4 s certificates, renewed at 2/3) reaches the view's new handshakes.
        let first = handshake(&endpoint, "127.0.0.1", &ca_pem).await.unwrap();
        let renewed = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                tokio::time::sleep(Duration::from_millis(300)).await;
                let now = handshake(&endpoint, "127.0.0.1", &ca_pem).await.unwrap();
                if now != first {
                    return now;
                }
            }
        })
        .await
        .expect("the view serves the renewed certificate");
        assert_ne!(renewed, first);
        assert!(get(&s3, &bucket, &format!("{PREFIX}/{}", files[1].name)).await == files[1].data);
    });
    assert!(b.stderr().contains("certificate renewed"), "{}", b.stderr());

    // Plain HTTP only when asked for.
    let c: Agent = cluster.agent("c", &["--s3-listen", "127.0.0.1:0", "--s3-tls", "off", "--ca-file", ca_arg]);
    assert!(c.s3_endpoint.as_deref().unwrap().starts_with("http://127.0.0.1:"), "{:?}", c.s3_endpoint);
    assert!(c.s3_ca.is_none());
}

/// A free port on `ip` (bound, then released for the agents to take).
fn free_port(ip: &str) -> u16 {
    std::net::TcpListener::bind((ip, 0)).unwrap().local_addr().unwrap().port()
}

fn node<'a>(status: &'a serde_json::Value, id: &str) -> &'a serde_json::Value {
    status["nodes"].as_array().unwrap().iter().find(|n| n["node_id"] == id).unwrap_or_else(|| panic!("{status}"))
}

/// The views report to the coordinator: `depot status` (text and JSON) and `depot nodes` show
/// each view's endpoint and counters (local hits, peer and archive reads, bytes served, cache
/// used of its budget, evictions), and `depot status` prints the exact `br restore` line
/// while every live view agrees on scheme, port, bucket and prefix — naming the nodes without
/// a view, and which views differ once one does. The views here also read an encrypted
/// backupmeta (BR's `--crypter`, from the peer that holds it) and a file no live node holds
/// from `--archive`, byte-exact. (One machine: the agreeing views share a port on 127.0.0.2
/// and 127.0.0.3, as views on different hosts would on 127.0.0.1.)
#[test]
fn depot_status_prints_the_restore_line_and_each_views_counters() {
    let dir = test_dir();
    let cluster = Cluster::start(dir.path(), "300ms");
    let files: Vec<DataFile> = (0..5).map(|i| DataFile::new(&format!("{i}/{i}.sst"), 200_000 + i)).collect();
    // a (where BR ran) holds the encrypted backupmeta and files 0, 1; b holds 2, 3; file 4
    // is only in the archive.
    let key = depot_agent::manifest::CrypterKey::from_hex(&"42".repeat(16)).unwrap();
    let meta = key.encrypt_prefixed([7; 16], &depot_tests::agents::backupmeta_v1(&files));
    std::fs::write(cluster.node_dir("a").join("backupmeta"), &meta).unwrap();
    let key_file = dir.path().join("crypter.key");
    std::fs::write(&key_file, "42".repeat(16)).unwrap();
    for f in &files[..2] {
        f.write_to(&cluster.node_dir("a"));
    }
    for f in &files[2..4] {
        f.write_to(&cluster.node_dir("b"));
    }
    let archive = dir.path().join("collected");
    files[4].write_to(&archive);

    let port = free_port("127.0.0.2");
    let (listen_a, listen_b) = (format!("127.0.0.2:{port}"), format!("127.0.0.3:{port}"));
    let common = ["--s3-prefix", PREFIX, "--s3-crypter-key-file", key_file.to_str().unwrap()];
    let view = |listen: &str, extra: &[&str]| {
        let mut args = vec!["--s3-listen", listen];
        args.extend(common);
        args.extend_from_slice(extra);
        args.iter().map(|s| (*s).to_owned()).collect::<Vec<String>>()
    };
    let args_a = view(&listen_a, &[]);
    let args_b = view(&listen_b, &["--archive", archive.to_str().unwrap(), "--cache-max", "450000"]);
    let a = cluster.agent("a", &args_a.iter().map(String::as_str).collect::<Vec<_>>());
    let b = cluster.agent("b", &args_b.iter().map(String::as_str).collect::<Vec<_>>());
    let _c = cluster.agent("c", &[]); // no view
    let bucket = cluster.depot.field("bucket");
    let (access, secret) = (cluster.depot.field("access_key"), cluster.depot.field("secret_key"));

    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let s3 = s3_client(b.s3_endpoint.as_deref().unwrap(), &access, &secret, "us-east-1", None);
        for f in &files {
            assert!(get(&s3, &bucket, &format!("{PREFIX}/{}", f.name)).await == f.data, "{} through b", f.name);
        }
        // Read again: 2 and 3 are local hits.
        for f in &files[2..4] {
            assert!(get(&s3, &bucket, &format!("{PREFIX}/{}", f.name)).await == f.data);
        }
        let s3 = s3_client(a.s3_endpoint.as_deref().unwrap(), &access, &secret, "us-east-1", None);
        assert!(get(&s3, &bucket, &format!("{PREFIX}/{}", files[0].name)).await == files[0].data);
    });
    assert!(b.stderr().contains("reading the archive"), "{}", b.stderr());

    let want_url = format!("s3://{bucket}/{PREFIX}?endpoint=http://127.0.0.1:{port}&force-path-style=true");
    let want_command = format!("br restore full --pd \"$PD_ADDR\" --storage \"{want_url}\"");
    // The counters ride on the heartbeats (every 300 ms).
    let mut status = serde_json::Value::Null;
    let settled = depot_tests::agents::eventually(Duration::from_secs(10), || {
        status = cluster.status_json();
        node(&status, "b")["view"]["bytes_served"].as_u64().unwrap_or(0)
            >= files.iter().map(|f| f.data.len() as u64).sum()
    });
    assert!(settled, "b's view counters reach the coordinator: {status}");
    let vb = &node(&status, "b")["view"];
    assert_eq!(vb["endpoint"], format!("http://127.0.0.1:{port}"), "{vb}");
    assert_eq!((vb["bucket"].as_str(), vb["prefix"].as_str()), (Some(bucket.as_str()), Some("backup/")));
    assert_eq!(vb["local_reads"], 4, "files 2 and 3, twice: {vb}");
    assert_eq!(vb["peer_reads"], 2, "files 0 and 1 from a: {vb}");
    assert_eq!(vb["archive_reads"], 1, "file 4: {vb}");
    assert_eq!(vb["missing"], 0, "{vb}");
    assert_eq!(vb["cache_max"], 450_000, "{vb}");
    assert!(vb["cache_bytes"].as_u64().unwrap() <= 450_000, "{vb}");
    assert!(vb["evictions"].as_u64().unwrap() >= 1, "three 200 kB files in a 450 kB cache: {vb}");
    assert!(vb["bytes_fetched"].as_u64().unwrap() >= 600_000, "{vb}");
    assert!(node(&status, "c")["view"].is_null());
    let restore = &status["restore"];
    assert_eq!(restore["storage_url"], want_url.as_str(), "{restore}");
    assert_eq!(restore["command"], want_command.as_str(), "{restore}");
    let problems = restore["problems"].to_string();
    assert!(problems.contains("without an S3 view: c"), "{restore}");

    // The text forms.
    let text = std::process::Command::new(depot_tests::bin("depot")).arg("status").arg(cluster.archive()).output();
    let text = String::from_utf8(text.unwrap().stdout).unwrap();
    assert!(text.contains(&want_command), "{text}");
    assert!(text.contains("S3 VIEWS (2)") && text.contains(&format!("http://127.0.0.1:{port}")), "{text}");
    let nodes = cluster.nodes(&["--json"]);
    let listed: serde_json::Value = serde_json::from_str(&nodes.stdout).unwrap();
    let of =
        |id: &str| listed.as_array().unwrap().iter().find(|n| n["node_id"] == id).unwrap()["view_endpoint"].clone();
    assert_eq!(of("a"), format!("http://127.0.0.1:{port}").as_str(), "{listed}");
    assert!(of("c").is_null(), "{listed}");

    // A view on another port: no single line any more, and the status says who differs.
    let d = cluster.agent("d", &["--s3-listen", "127.0.0.1:0", "--s3-prefix", PREFIX]);
    let d_url = format!("{}?", d.s3_url.as_deref().unwrap().split('?').next().unwrap());
    let differs = depot_tests::agents::eventually(Duration::from_secs(10), || {
        status = cluster.status_json();
        status["restore"]["command"].is_null()
    });
    assert!(differs, "{status}");
    let problems = status["restore"]["problems"].to_string();
    assert!(problems.contains("the views differ"), "{problems}");
    assert!(problems.contains(&format!("a, b serve {want_url}")), "{problems}");
    assert!(problems.contains("d serve ") && problems.contains(&d_url[..d_url.len() - 1]), "{problems}");
}
