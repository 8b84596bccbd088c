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
