//! Cluster trust (issue 9): agents speak mutual TLS with certificates the coordinator issues;
//! what crosses the wire is unreadable; strangers, other clusters, expired and revoked
//! certificates are refused; removal, join-token rotation and renewal under load.

use std::io::{Read as _, Write as _};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use depot_agent::auth::Secret;
use depot_agent::identity::Identity;
use depot_agent::peer::{PeerClient, PeerDirectory};
use depot_agent::registry::{Coordinator, PeerInfo};
use depot_proto::agent::{FileExistsRequest, ReadFileRequest};
use depot_tests::agents::{Agent, Cluster, DataFile, write_jsonl};
use depot_tests::test_dir;
use rustls::pki_types::pem::PemObject as _;

/// A TCP relay on loopback that forwards to `target` and records every byte in both
/// directions.
fn relay(target: std::net::SocketAddr) -> (u16, Arc<Mutex<Vec<u8>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let captured = Arc::new(Mutex::new(Vec::new()));
    let record = captured.clone();
    std::thread::spawn(move || {
        for inbound in listener.incoming().flatten() {
            let Ok(outbound) = TcpStream::connect(target) else { continue };
            for (mut from, mut to) in
                [(inbound.try_clone().unwrap(), outbound.try_clone().unwrap()), (outbound, inbound)]
            {
                let record = record.clone();
                std::thread::spawn(move || {
                    let mut buf = vec![0u8; 64 * 1024];
                    while let Ok(n) = from.read(&mut buf) {
                        if n == 0 || to.write_all(&buf[..n]).is_err() {
                            break;
                        }
                        record.lock().unwrap().extend_from_slice(&buf[..n]);
                    }
                    let _ = to.shutdown(std::net::Shutdown::Both);
                });
            }
        }
    });
    (port, captured)
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// A fetch between two agents through a recording relay: the SST's bytes, its name and the
/// join token never appear in clear.
#[test]
fn nothing_readable_crosses_the_wire_between_agents() {
    let dir = test_dir();
    let cluster = Cluster::start(dir.path(), "500ms");
    let file = DataFile::new("secret/42_7_default.sst", 300_000);
    file.write_to(&cluster.node_dir("holder"));
    // The holder advertises the relay: peers reach it only through the recorder.
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let (relay_port, captured) = relay(format!("127.0.0.1:{port}").parse().unwrap());
    let listen = format!("127.0.0.1:{port}");
    let advertise = format!("127.0.0.1:{relay_port}");
    let _holder = cluster.agent("holder", &["--listen", &listen, "--advertise", &advertise]);
    let manifest = dir.path().join("manifest.jsonl");
    write_jsonl(&manifest, std::slice::from_ref(&file));

    let out = cluster.fetch("me", manifest.to_str().unwrap(), &[]);
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(file.is_in(&cluster.node_dir("me")));

    let fetched = captured.lock().unwrap().len();
    assert!(fetched > 300_000, "the fetch went through the relay ({fetched} bytes)");

    // collect reads from the same peers the same way: a client-only certificate, mTLS.
    let dest = dir.path().join("collected");
    let mut collect = cluster.command("collect");
    collect.args(["--meta", manifest.to_str().unwrap(), "--to", dest.to_str().unwrap(), "--json"]);
    let out = depot_tests::agents::run(&mut collect, Duration::from_secs(60));
    assert_eq!(out.code, Some(0), "{out:?}");
    assert_eq!(std::fs::read(dest.join(&file.name)).unwrap(), file.data, "collected byte for byte");
    // The fetch and the collect joined as runs and left at their end: only the holder stays.
    let listed = cluster.nodes(&["--json"]).json();
    let ids: Vec<&str> = listed.as_array().unwrap().iter().map(|n| n["node_id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["holder"], "{listed}");

    let wire = captured.lock().unwrap().clone();
    assert!(wire.len() > fetched + 300_000, "the collect went through the relay too ({} bytes)", wire.len());
    for window in [&file.data[..64], &file.data[150_000..150_064], &file.data[file.data.len() - 64..]] {
        assert!(!contains(&wire, window), "SST bytes in clear on the wire");
    }
    assert!(!contains(&wire, b"42_7_default.sst"), "the file name in clear on the wire");
    assert!(!contains(&wire, cluster.join_token.as_bytes()), "the join token on the wire");
}

/// Calls `node` at `address` with `identity`; `Ok(true)` if it answered that it has `name`.
async fn ask(identity: Arc<Identity>, node: &str, address: &str, name: &str) -> Result<bool, tonic::Status> {
    let peers = vec![PeerInfo { node_id: node.into(), address: address.into(), last_seen_ms: 0 }];
    let mut client: PeerClient =
        PeerDirectory::fixed(peers, identity, None).peers(false).await.unwrap()[0].client().unwrap();
    Ok(client.file_exists(FileExistsRequest { path: name.into() }).await?.into_inner().exists)
}

/// Connects to the agent at `address` over TLS with `config` and sends an HTTP/2 preface:
/// nothing may come back.
async fn assert_refused(config: Arc<rustls::ClientConfig>, address: &str, who: &str) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let tcp = tokio::net::TcpStream::connect(address).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    if let Ok(mut tls) = tokio_rustls::TlsConnector::from(config).connect(name, tcp).await {
        let _ = tls.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await;
        let mut buf = [0u8; 64];
        let read = tls.read(&mut buf).await;
        assert!(!matches!(read, Ok(n) if n > 0), "an agent answered {who}: {read:?}");
    }
}

/// An identity with a self-signed certificate naming `node` (trusting `ca_pem` for servers).
fn self_signed(node: &str, ca_pem: &str) -> Arc<Identity> {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()]).unwrap();
    params.distinguished_name.push(rcgen::DnType::CommonName, node);
    params.subject_alt_names.push(rcgen::SanType::URI(format!("depot://node/{node}").try_into().unwrap()));
    let cert = params.self_signed(&key).unwrap();
    Arc::new(Identity::new(node, key, &cert.pem(), ca_pem).unwrap())
}

/// No certificate, a self-signed one, one from another archive's CA, an expired one and a
/// revoked node's: each refused, nothing served. A certificate from the cluster works.
#[tokio::test]
async fn strangers_other_clusters_expired_and_revoked_certificates_are_refused() {
    let dir = test_dir();
    let cluster = Cluster::start_with(dir.path(), "300ms", &["--cert-lifetime", "4s"]);
    DataFile::new("x.sst", 10).write_to(&cluster.node_dir("a"));
    DataFile::new("big.sst", 16 << 20).write_to(&cluster.node_dir("a"));
    // Slow enough that a transfer is still running when its caller is removed.
    let agent = cluster.agent("a", &["--max-rate", "2MiB", "--chunk-size", "262144"]);
    let ca_pem = std::fs::read_to_string(cluster.archive().join(".depot/tls/ca.pem")).unwrap();

    // A certificate from this cluster: served.
    let member = cluster.coordinator("member").await;
    assert!(ask(member.identity().unwrap(), "a", &agent.address, "x.sst").await.unwrap());

    // No client certificate at all: the TLS handshake is refused, nothing comes back.
    {
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls::pki_types::CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
            roots.add(cert.unwrap()).unwrap();
        }
        let config = rustls::ClientConfig::builder_with_provider(depot_agent::identity::provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        assert_refused(Arc::new(config), &agent.address, "a caller without a certificate").await;
    }

    // A self-signed certificate claiming to be node "a2".
    assert!(ask(self_signed("a2", &ca_pem), "a", &agent.address, "x.sst").await.is_err());

    // Another Depot archive's coordinator and CA.
    let other_dir = test_dir();
    let other = Cluster::start(other_dir.path(), "300ms");
    let stranger = other.coordinator("stranger").await;
    let other_ca = std::fs::read_to_string(other.archive().join(".depot/tls/ca.pem")).unwrap();
    assert_ne!(other_ca, ca_pem);
    assert!(ask(stranger.identity().unwrap(), "a", &agent.address, "x.sst").await.is_err());

    // An expired certificate: joined without renewing, then the lifetime (4 s) runs out.
    let lapsed = Coordinator::new(&cluster.registry, Secret::new(cluster.join_token.clone()), None).unwrap();
    let joined = lapsed
        .join("lapsed#run-1", "", rcgen::KeyPair::generate().unwrap(), true, Duration::from_secs(5))
        .await
        .unwrap();
    assert!(ask(joined.identity.clone(), "a", &agent.address, "x.sst").await.unwrap());
    // Certificate times have one-second resolution: wait well past the expiry.
    tokio::time::sleep(Duration::from_millis(6000)).await;
    let err = ask(joined.identity.clone(), "a", &agent.address, "x.sst").await.unwrap_err();
    // Said by the caller itself, before connecting: peers would answer with a bare TLS alert.
    assert!(format!("{err:?}").contains("this node's certificate expired"), "{err:?}");
    // A caller that presents it anyway is refused, and the agent logs who and why.
    assert_refused(joined.identity.client_config(Some("a")), &agent.address, "an expired certificate").await;
    // The agent logs who was refused and why.
    let deadline = Instant::now() + Duration::from_secs(3);
    while !agent.stderr().contains("expired") && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(agent.stderr().contains("lapsed#run-1") && agent.stderr().contains("expired"), "{}", agent.stderr());

    // A revoked node: `depot nodes remove` — refused within a heartbeat, even on a connection
    // opened before the removal.
    let evil_coordinator = Coordinator::new(&cluster.registry, Secret::new(cluster.join_token.clone()), None).unwrap();
    let evil = evil_coordinator
        .join("evil", "127.0.0.1:9", rcgen::KeyPair::generate().unwrap(), false, Duration::from_secs(5))
        .await
        .unwrap()
        .identity;
    let peers = vec![PeerInfo { node_id: "a".into(), address: agent.address.clone(), last_seen_ms: 0 }];
    let mut open = PeerDirectory::fixed(peers, evil.clone(), None).peers(false).await.unwrap()[0].client().unwrap();
    assert!(open.file_exists(FileExistsRequest { path: "x.sst".into() }).await.is_ok());
    // A transfer in flight (16 MiB at 2 MiB/s) when the node is removed: cut within a heartbeat.
    let mut transfer =
        open.read_file(ReadFileRequest { path: "big.sst".into(), offset: 0 }).await.unwrap().into_inner();
    let first = transfer.message().await.unwrap().expect("a first chunk");
    let mut received = first.data.len();
    let removed = cluster.nodes(&["remove", "evil"]);
    assert_eq!(removed.code, Some(0), "{removed:?}");
    assert!(removed.stdout.contains("removed node evil"), "{}", removed.stdout);
    let cut = loop {
        match transfer.message().await {
            Ok(Some(chunk)) => received += chunk.data.len(),
            Ok(None) => panic!("the whole file was served to a removed node"),
            Err(status) => break status,
        }
    };
    assert_eq!(cut.code(), tonic::Code::PermissionDenied, "{cut:?}");
    assert!(received < 16 << 20, "cut short: {received} bytes");
    assert!(agent.stderr().contains("cut a transfer"), "{}", agent.stderr());
    tokio::time::sleep(Duration::from_millis(700)).await; // two heartbeat intervals
    let err = open.file_exists(FileExistsRequest { path: "x.sst".into() }).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err:?}");
    assert!(err.message().contains("node evil") && err.message().contains("depot nodes remove"), "{}", err.message());
    assert!(ask(evil, "a", &agent.address, "x.sst").await.is_err());
    // Its node secret is gone too: no peer list, no renewal.
    let err = evil_coordinator.list_peers().await.unwrap_err();
    assert!(err.to_string().contains("not joined"), "{err}");
    // The member goes on.
    assert!(ask(member.identity().unwrap(), "a", &agent.address, "x.sst").await.unwrap());
}

/// `depot nodes` lists nodes; removing a serving agent stops it with a message naming the
/// fix; the other nodes go on; a rotated join token lets new agents in, old ones keep working,
/// and the old token is refused.
#[tokio::test]
async fn remove_a_node_and_rotate_the_join_token() {
    let dir = test_dir();
    let cluster = Cluster::start(dir.path(), "300ms");
    let file = DataFile::new("r.sst", 5000);
    file.write_to(&cluster.node_dir("a"));
    file.write_to(&cluster.node_dir("b"));
    let a = cluster.agent("a", &[]);
    let b = cluster.agent("b", &[]);

    let listed = cluster.nodes(&["--json"]);
    assert_eq!(listed.code, Some(0), "{listed:?}");
    let nodes = listed.json();
    let ids: Vec<&str> = nodes.as_array().unwrap().iter().map(|n| n["node_id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["a", "b"]);
    assert!(nodes[0]["certificate_not_after"].as_i64().unwrap() > 0 && nodes[0]["live"] == true, "{nodes}");
    let table = cluster.nodes(&[]);
    assert!(table.stdout.contains("NODE") && table.stdout.contains(&a.address), "{}", table.stdout);

    let out = cluster.nodes(&["remove", "b"]);
    assert_eq!(out.code, Some(0), "{out:?}");
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut b = b;
    while !b.stderr().contains("removed") && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(b.stderr().contains("depot nodes remove"), "the removed agent says why: {}", b.stderr());
    assert_eq!(b.wait(Duration::from_secs(5)), Some(2), "the removed agent stops with exit 2");
    let unknown = cluster.nodes(&["remove", "nobody"]);
    assert_ne!(unknown.code, Some(0));
    assert!(unknown.stderr.contains("nobody"), "{}", unknown.stderr);

    // The others go on: a fetch still finds the file on a.
    let manifest = dir.path().join("m.jsonl");
    write_jsonl(&manifest, std::slice::from_ref(&file));
    let out = cluster.fetch("me", manifest.to_str().unwrap(), &[]);
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(out.json()["per_peer"]["a"].as_u64().unwrap() > 0, "{}", out.stdout);

    // `depot status` shows the nodes `depot nodes` lists (one source): b is gone from both,
    // a is live with its certificate's expiry.
    let status = std::process::Command::new(depot_tests::bin("depot"))
        .args(["status", "--json"])
        .arg(cluster.archive())
        .output()
        .unwrap();
    assert!(status.status.success(), "{}", String::from_utf8_lossy(&status.stderr));
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    let listed = cluster.nodes(&["--json"]).json();
    let members: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .filter(|n| n["client_only"] == false)
        .map(|n| n["node_id"].as_str().unwrap())
        .collect();
    let shown: Vec<&str> = status["nodes"].as_array().unwrap().iter().map(|n| n["node_id"].as_str().unwrap()).collect();
    assert_eq!(shown, members, "{status}\n{listed}");
    assert_eq!(shown, ["a"], "{status}");
    assert_eq!(status["nodes"][0]["live"], true, "{status}");
    assert!(status["nodes"][0]["certificate_expiry"].as_str().is_some_and(|t| t.starts_with("20")), "{status}");

    // Rotation: the old token no longer joins, the new one does, `a` is undisturbed.
    let rotated = cluster.nodes(&["rotate-join-token", "--json"]);
    assert_eq!(rotated.code, Some(0), "{rotated:?}");
    let new_token = rotated.json()["join_token"].as_str().unwrap().to_owned();
    assert_ne!(new_token, cluster.join_token);
    let Err(refused) = Agent::start(
        dir.path(),
        &cluster.node_dir("c"),
        &cluster.registry,
        &cluster.join_token,
        &["--node-id", "c", "--listen", "127.0.0.1:0"],
    ) else {
        panic!("the old join token must be refused");
    };
    assert!(refused.stderr.contains("refused the join token"), "{}", refused.stderr);
    let _c = Agent::start(
        dir.path(),
        &cluster.node_dir("c"),
        &cluster.registry,
        &new_token,
        &["--node-id", "c", "--listen", "127.0.0.1:0"],
    )
    .unwrap();
    tokio::time::sleep(Duration::from_millis(700)).await;
    let coordinator = Coordinator::new(&cluster.registry, Secret::new(new_token), None).unwrap();
    coordinator.client_identity(Some("t")).await.unwrap();
    let live: Vec<String> = coordinator.list_peers().await.unwrap().peers.into_iter().map(|p| p.node_id).collect();
    assert_eq!(live, ["a", "c"]);
    drop(a);
}

/// Certificates that live 3 s: a rate-limited fetch of ~8 s completes across several renewals
/// of both the serving agent's certificate and the fetch run's.
#[test]
fn a_long_fetch_survives_certificate_renewals() {
    let dir = test_dir();
    let cluster = Cluster::start_with(dir.path(), "300ms", &["--cert-lifetime", "3s"]);
    let file = DataFile::new("long.sst", 8 << 20);
    file.write_to(&cluster.node_dir("a"));
    let agent = cluster.agent("a", &["--max-rate", "1MiB"]);
    let manifest = dir.path().join("m.jsonl");
    write_jsonl(&manifest, std::slice::from_ref(&file));
    let started = Instant::now();
    let out = cluster.fetch("me", manifest.to_str().unwrap(), &[]);
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(started.elapsed() > Duration::from_secs(6), "the fetch spanned renewals: {:?}", started.elapsed());
    assert!(file.is_in(&cluster.node_dir("me")));
    let renewals = agent.stderr().matches("certificate renewed").count();
    assert!(renewals >= 2, "the serving agent renewed {renewals} time(s): {}", agent.stderr());
}

/// A plaintext coordinator that is not on loopback is refused unless --insecure-coordinator.
#[test]
fn a_plaintext_remote_coordinator_is_refused() {
    let dir = test_dir();
    let root = dir.path().join("n");
    std::fs::create_dir_all(&root).unwrap();
    let Err(out) = Agent::start(
        dir.path(),
        &root,
        "http://10.255.255.1:9000",
        "x".repeat(32).as_str(),
        &["--listen", "127.0.0.1:0"],
    ) else {
        panic!("a plaintext remote coordinator must be refused");
    };
    assert_eq!(out.code, Some(2), "{out:?}");
    assert!(out.stderr.contains("--insecure-coordinator") && out.stderr.contains("https://"), "{}", out.stderr);
}

/// Secrets off the command line: `--join-token` in argv is warned about; `--join-token-file`
/// (or the environment) is not, and works.
#[test]
fn a_join_token_on_the_command_line_is_warned_about_and_a_file_works() {
    let dir = test_dir();
    let cluster = Cluster::start(dir.path(), "500ms");
    let file = DataFile::new("held.sst", 100);
    file.write_to(&cluster.node_dir("argv"));
    let agent = cluster.agent("argv", &[]);
    assert!(agent.stderr().contains("visible to every user"), "{}", agent.stderr());
    let token_file = dir.path().join("join-token");
    std::fs::write(&token_file, format!("{}\n", cluster.join_token)).unwrap();
    let manifest = dir.path().join("m.jsonl");
    write_jsonl(&manifest, std::slice::from_ref(&file));
    let out = depot_tests::agents::run(
        std::process::Command::new(depot_tests::bin("depot-agent"))
            .arg("verify")
            .args(["--coordinator", &cluster.registry, "--join-token-file"])
            .arg(&token_file)
            .args(["--meta", manifest.to_str().unwrap(), "--json"])
            .env_remove("DEPOT_JOIN_TOKEN"),
        Duration::from_secs(30),
    );
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(!out.stderr.contains("visible to every user"), "{}", out.stderr);
}
