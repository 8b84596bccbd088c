//! The `NodeAgent` service over real sockets: credentials, unsafe paths, offsets, digests.

mod common;

use common::{client_of, put, start_registry};
use depot_agent::peer::PeerClient;
use depot_agent::service::{self, NodeAgentService};
use depot_proto::agent::{FileExistsRequest, ReadFileRequest, StatRequest};
use sha2::{Digest, Sha256};
use tonic::Code;

/// An agent serving `dir` (node "a"), and a client calling it as node "me".
async fn agent(dir: &std::path::Path, chunk: usize) -> PeerClient {
    let (registry, _) = start_registry().await;
    let root = depot_fs::Root::open(dir).unwrap();
    let addr = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let identity = registry.join("a", &addr.to_string()).await;
    service::spawn(addr, NodeAgentService::new(root).with_chunk_size(chunk), identity).await.unwrap();
    let me = registry.join("me", "127.0.0.1:1").await;
    // The registry's state must outlive the test's calls.
    std::mem::forget(registry);
    client_of(me, "a", addr).await
}

async fn read_all(client: &mut PeerClient, path: &str, offset: u64) -> Result<(Vec<u8>, usize), tonic::Status> {
    let mut stream = client.read_file(ReadFileRequest { path: path.into(), offset }).await?.into_inner();
    let mut out = Vec::new();
    let mut chunks = 0;
    while let Some(chunk) = stream.message().await? {
        out.extend_from_slice(&chunk.data);
        chunks += 1;
    }
    Ok((out, chunks))
}

#[tokio::test]
async fn streams_files_from_any_offset_in_chunks() {
    let dir = tempfile::tempdir().unwrap();
    let entry = put(dir.path(), "a/b/1.sst", 300_000);
    put(dir.path(), "empty.sst", 0);
    let mut c = agent(dir.path(), 64 * 1024).await;
    let data = std::fs::read(dir.path().join("a/b/1.sst")).unwrap();

    let (whole, chunks) = read_all(&mut c, "a/b/1.sst", 0).await.unwrap();
    assert_eq!(whole, data);
    assert_eq!(chunks, 5, "300 000 bytes in 64 KiB chunks");
    let (tail, _) = read_all(&mut c, "a/b/1.sst", 250_000).await.unwrap();
    assert_eq!(tail, &data[250_000..]);
    let (nothing, _) = read_all(&mut c, "a/b/1.sst", 300_000).await.unwrap();
    assert!(nothing.is_empty());
    let err = read_all(&mut c, "a/b/1.sst", 300_001).await.unwrap_err();
    assert_eq!(err.code(), Code::OutOfRange, "{err:?}");
    assert!(read_all(&mut c, "empty.sst", 0).await.unwrap().0.is_empty());

    let exists = c.file_exists(FileExistsRequest { path: "a/b/1.sst".into() }).await.unwrap().into_inner();
    assert!(exists.exists);
    assert_eq!(exists.size, 300_000);
    let stat = c.stat(StatRequest { path: "a/b/1.sst".into() }).await.unwrap().into_inner();
    assert_eq!(stat.sha256, entry.sha256.unwrap());
    assert_eq!(stat.sha256, Sha256::digest(&data).as_slice());
}

#[tokio::test]
async fn missing_files_and_directories() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("sub")).unwrap();
    let mut c = agent(dir.path(), 1 << 20).await;
    let exists = c.file_exists(FileExistsRequest { path: "nope.sst".into() }).await.unwrap().into_inner();
    assert!(!exists.exists);
    let err = read_all(&mut c, "nope.sst", 0).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    assert!(err.message().contains("nope.sst"), "{}", err.message());
    let sub = c.file_exists(FileExistsRequest { path: "sub".into() }).await.unwrap().into_inner();
    assert!(!sub.exists, "a directory is not a file");
    let stat = c.stat(StatRequest { path: "nope.sst".into() }).await.unwrap().into_inner();
    assert!(!stat.exists);
}

#[tokio::test]
async fn unsafe_paths_are_refused_and_nothing_outside_is_read() {
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("secret"), b"outside the root").unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(outside.path(), dir.path().join("escape")).unwrap();
    std::os::unix::fs::symlink(outside.path().join("secret"), dir.path().join("file-link")).unwrap();
    let mut c = agent(dir.path(), 1 << 20).await;
    // Depot's own state directory exists under every root.
    let tmp = depot_fs::Root::open(dir.path()).unwrap();
    std::fs::create_dir_all(tmp.state_dir()).unwrap();
    std::fs::write(tmp.state_dir().join("node-id"), b"x").unwrap();

    let absolute = outside.path().join("secret").display().to_string();
    let cases: [(&str, Code, &str); 6] = [
        ("../secret", Code::InvalidArgument, "'..'"),
        ("a/../../secret", Code::InvalidArgument, "'..'"),
        (&absolute, Code::InvalidArgument, "starts with '/'"),
        ("escape/secret", Code::PermissionDenied, "symbolic link"),
        ("file-link", Code::PermissionDenied, "symbolic link"),
        (".depot/node-id", Code::InvalidArgument, ".depot"),
    ];
    for (path, code, needle) in cases {
        let err = read_all(&mut c, path, 0).await.unwrap_err();
        assert_eq!(err.code(), code, "ReadFile {path}: {err:?}");
        assert!(err.message().contains(needle), "{path}: {}", err.message());
        let err = c.file_exists(FileExistsRequest { path: path.into() }).await.unwrap_err();
        assert_eq!(err.code(), code, "FileExists {path}");
        let err = c.stat(StatRequest { path: path.into() }).await.unwrap_err();
        assert_eq!(err.code(), code, "Stat {path}");
    }
}

/// Plaintext callers get nothing; a caller whose certificate the coordinator revoked is
/// refused per call (even on a connection opened before), naming the node and the fix.
#[tokio::test]
async fn plaintext_and_revoked_callers_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    put(dir.path(), "x.sst", 10);
    let (registry, _) = start_registry().await;
    let addr = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let agent_identity = registry.join("a", &addr.to_string()).await;
    let root = depot_fs::Root::open(dir.path()).unwrap();
    service::spawn(addr, NodeAgentService::new(root), agent_identity.clone()).await.unwrap();

    let plain = tonic::transport::Channel::from_shared(format!("http://{addr}")).unwrap().connect().await;
    if let Ok(channel) = plain {
        let mut c = depot_proto::agent::node_agent_client::NodeAgentClient::new(channel);
        assert!(c.file_exists(FileExistsRequest { path: "x.sst".into() }).await.is_err());
    }

    let me = registry.join("me", "127.0.0.1:1").await;
    let mut c = client_of(me.clone(), "a", addr).await;
    assert!(c.file_exists(FileExistsRequest { path: "x.sst".into() }).await.unwrap().into_inner().exists);
    let serial = depot_agent::identity::PeerIdentity::of(&me.certified_der()).unwrap().serial;
    agent_identity.set_revoked([serial]);
    let err = c.file_exists(FileExistsRequest { path: "x.sst".into() }).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    assert!(err.message().contains("node me") && err.message().contains("depot nodes remove me"), "{}", err.message());
    assert_eq!(read_all(&mut c, "x.sst", 0).await.unwrap_err().code(), Code::PermissionDenied);
}
