//! What a running agent refuses, and what bad input gets: credentials, unsafe paths, a wrong
//! join token, malformed or encrypted backupmetas; and a clean stop.

use std::time::{Duration, Instant};

use depot_agent::peer::{PeerClient, PeerDirectory};
use depot_agent::registry::PeerInfo;
use depot_proto::agent::{FileExistsRequest, ReadFileRequest, StatRequest};
use depot_tests::agents::{Agent, Cluster, DataFile, backupmeta_v1, run};
use depot_tests::test_dir;
use tonic::Code;

/// A client of `agent`, calling with the certificate `cluster` issues to a client-only run.
async fn client(cluster: &Cluster, agent: &Agent) -> PeerClient {
    let coordinator = cluster.coordinator("tester").await;
    let identity = coordinator.identity().unwrap();
    let peers = vec![PeerInfo { node_id: agent.node_id.clone(), address: agent.address.clone(), last_seen_ms: 0 }];
    PeerDirectory::fixed(peers, identity, None).peers(false).await.unwrap()[0].client().unwrap()
}

async fn read(c: &mut PeerClient, path: &str) -> Result<Vec<u8>, tonic::Status> {
    let mut stream = c.read_file(ReadFileRequest { path: path.into(), offset: 0 }).await?.into_inner();
    let mut out = Vec::new();
    while let Some(chunk) = stream.message().await? {
        out.extend(chunk.data);
    }
    Ok(out)
}

/// With a certificate from the coordinator, `..`, absolute paths, symlinks out of the root and
/// Depot's `.depot/` are refused with a clear status, and nothing outside the root is read.
/// (Callers without a valid certificate: `agent_trust.rs`.)
#[tokio::test]
async fn the_agent_refuses_paths_outside_its_root() {
    let dir = test_dir();
    let cluster = Cluster::start(dir.path(), "500ms");
    let root = cluster.node_dir("a");
    let secret_dir = dir.path().join("outside");
    std::fs::create_dir_all(&secret_dir).unwrap();
    std::fs::write(secret_dir.join("secret.txt"), b"not for peers").unwrap();
    std::os::unix::fs::symlink(&secret_dir, root.join("link-out")).unwrap();
    DataFile::new("ok.sst", 1000).write_to(&root);
    let agent = cluster.agent("a", &[]);

    let mut c = client(&cluster, &agent).await;
    assert_eq!(read(&mut c, "ok.sst").await.unwrap().len(), 1000);
    let absolute = secret_dir.join("secret.txt").display().to_string();
    for (path, code) in [
        ("../outside/secret.txt", Code::InvalidArgument),
        ("../../outside/secret.txt", Code::InvalidArgument),
        (absolute.as_str(), Code::InvalidArgument),
        ("link-out/secret.txt", Code::PermissionDenied),
        (".depot/node-id", Code::InvalidArgument),
    ] {
        let err = read(&mut c, path).await.unwrap_err();
        assert_eq!(err.code(), code, "{path}: {err:?}");
        assert!(!err.message().is_empty());
        let err = c.file_exists(FileExistsRequest { path: path.into() }).await.unwrap_err();
        assert_eq!(err.code(), code, "{path}");
        let err = c.stat(StatRequest { path: path.into() }).await.unwrap_err();
        assert_eq!(err.code(), code, "{path}");
    }
    let err = read(&mut c, "missing.sst").await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
}

/// A wrong join token: `serve` exits 2 at once saying so; `fetch` too.
#[test]
fn a_wrong_join_token_is_refused_with_a_message_that_says_so() {
    let dir = test_dir();
    let cluster = Cluster::start(dir.path(), "500ms");
    let started = Instant::now();
    let Err(out) = Agent::start(
        dir.path(),
        &cluster.node_dir("a"),
        &cluster.registry,
        "not-the-join-token",
        &["--listen", "127.0.0.1:0"],
    ) else {
        panic!("an agent with a wrong join token must not start");
    };
    assert_eq!(out.code, Some(2), "{out:?}");
    assert!(out.stderr.contains("refused the join token"), "{}", out.stderr);
    assert!(out.stderr.contains("--join-token"), "{}", out.stderr);
    assert!(started.elapsed() < Duration::from_secs(5), "not retried");

    let manifest = dir.path().join("backupmeta");
    std::fs::write(&manifest, backupmeta_v1(&[DataFile::new("f.sst", 10)])).unwrap();
    let out = run(
        std::process::Command::new(depot_tests::bin("depot-agent"))
            .arg("fetch")
            .arg("--root")
            .arg(cluster.node_dir("b"))
            .args(["--coordinator", &cluster.registry, "--join-token", "wrong", "--json"])
            .args(["--meta", manifest.to_str().unwrap()]),
        Duration::from_secs(30),
    );
    assert_eq!(out.code, Some(2), "{out:?}");
    assert!(out.stderr.contains("refused the join token"), "{}", out.stderr);
    let json = out.json();
    assert!(json["error"].as_str().unwrap().contains("join token"), "{json}");
}

/// A truncated, a garbage and an encrypted backupmeta: exit 2, an error naming the file and
/// the problem, nothing fetched.
#[test]
fn malformed_truncated_or_encrypted_backupmetas_get_clear_errors() {
    let dir = test_dir();
    let cluster = Cluster::start(dir.path(), "500ms");
    let files: Vec<DataFile> = (0..20).map(|i| DataFile::new(&format!("{i}.sst"), 100)).collect();
    let good = backupmeta_v1(&files);
    let meta_dir = dir.path().join("meta");
    std::fs::create_dir_all(&meta_dir).unwrap();
    let meta = meta_dir.join("backupmeta");
    let cases: [(&str, Vec<u8>, &str); 4] = [
        ("truncated", good[..good.len() * 2 / 3].to_vec(), "truncated"),
        ("garbage", b"\x07\xff\xfe\xfd not a backupmeta".to_vec(), "not a readable BR backupmeta"),
        ("empty", Vec::new(), "empty"),
        (
            "encrypted",
            {
                // BR's layout: 16-byte IV, then AES-CTR ciphertext.
                let key = depot_agent::manifest::CrypterKey::from_hex(&"42".repeat(16)).unwrap();
                key.encrypt_prefixed([1; 16], &good)
            },
            "--crypter.method",
        ),
    ];
    for (what, bytes, needle) in cases {
        std::fs::write(&meta, &bytes).unwrap();
        let out = cluster.fetch("me", meta_dir.to_str().unwrap(), &[]);
        assert_eq!(out.code, Some(2), "{what}: {out:?}");
        assert!(out.stderr.contains(needle), "{what}: {}", out.stderr);
        assert!(out.stderr.contains("backupmeta"), "{what}: names the file: {}", out.stderr);
        assert!(!out.stderr.contains("panicked"), "{what}: {}", out.stderr);
        assert!(out.json()["error"].is_string(), "{what}");
    }
    assert_eq!(
        std::fs::read_dir(cluster.node_dir("me")).unwrap().flatten().filter(|e| e.file_name() != ".depot").count(),
        0,
        "nothing fetched"
    );
    // With the key, the encrypted one is read.
    std::fs::write(
        &meta,
        depot_agent::manifest::CrypterKey::from_hex(&"42".repeat(16)).unwrap().encrypt_prefixed([1; 16], &good),
    )
    .unwrap();
    for f in &files {
        f.write_to(&cluster.node_dir("me"));
    }
    let out = cluster.fetch("me", meta.to_str().unwrap(), &["--crypter-key", &"42".repeat(16)]);
    assert_eq!(out.code, Some(0), "{out:?}");
    assert_eq!(out.json()["files_present"], 20);
}

/// SIGTERM stops an agent cleanly (exit 0, a summary); a new agent is in the peer list as
/// soon as it says it is ready, and a stopped one leaves it at once (Deregister), long before
/// three heartbeat intervals.
#[tokio::test]
async fn agents_join_at_once_and_stop_cleanly() {
    let dir = test_dir();
    let cluster = Cluster::start(dir.path(), "5s");
    let coordinator = cluster.coordinator("tester").await;
    let mut a = cluster.agent("a", &[]);
    let ids = |list: depot_agent::registry::PeerList| list.peers.into_iter().map(|p| p.node_id).collect::<Vec<_>>();
    assert_eq!(ids(coordinator.list_peers().await.unwrap()), ["a"]);
    let _b = cluster.agent("b", &[]);
    assert_eq!(ids(coordinator.list_peers().await.unwrap()), ["a", "b"]);
    assert_eq!(
        std::fs::read_to_string(cluster.node_dir("a").join(".depot/node-id")).unwrap().trim(),
        "a",
        "fetch on this root will know its node id"
    );

    let (status, lines) = a.stop();
    assert!(status.success(), "{status:?}: {}", a.stderr());
    let summary: serde_json::Value = serde_json::from_str(lines.last().expect("a stop summary")).unwrap();
    assert!(summary["seconds"].as_f64().is_some(), "{summary}");
    assert_eq!(ids(coordinator.list_peers().await.unwrap()), ["b"], "a stopped agent leaves the list at once");
}
