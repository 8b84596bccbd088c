//! The `NodeAgent` service over real sockets: credentials, unsafe paths, offsets, digests.

mod common;

use common::{PEER, put};
use depot_agent::auth::{Bearer, Secret, TokenSlot};
use depot_agent::service::{self, NodeAgentService};
use depot_proto::agent::node_agent_client::NodeAgentClient;
use depot_proto::agent::{FileExistsRequest, ReadFileRequest, StatRequest};
use sha2::{Digest, Sha256};
use tonic::Code;
use tonic::transport::Channel;

async fn agent(dir: &std::path::Path, chunk: usize) -> String {
    let root = depot_fs::Root::open(dir).unwrap();
    let (addr, _) = service::spawn(
        "127.0.0.1:0".parse().unwrap(),
        NodeAgentService::new(root).with_chunk_size(chunk),
        TokenSlot::fixed(Secret::new(PEER)),
    )
    .await
    .unwrap();
    format!("http://{addr}")
}

async fn client(url: &str, token: &str) -> NodeAgentClient<tonic::codegen::InterceptedService<Channel, Bearer>> {
    let channel = Channel::from_shared(url.to_owned()).unwrap().connect().await.unwrap();
    NodeAgentClient::with_interceptor(channel, Bearer(Secret::new(token)))
}

async fn read_all(
    client: &mut NodeAgentClient<tonic::codegen::InterceptedService<Channel, Bearer>>,
    path: &str,
    offset: u64,
) -> Result<(Vec<u8>, usize), tonic::Status> {
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
    let url = agent(dir.path(), 64 * 1024).await;
    let mut c = client(&url, PEER).await;
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
    let url = agent(dir.path(), 1 << 20).await;
    let mut c = client(&url, PEER).await;
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
    let url = agent(dir.path(), 1 << 20).await;
    let mut c = client(&url, PEER).await;
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

#[tokio::test]
async fn calls_without_the_peer_token_are_unauthenticated() {
    let dir = tempfile::tempdir().unwrap();
    put(dir.path(), "x.sst", 10);
    let url = agent(dir.path(), 1 << 20).await;

    let mut wrong = client(&url, "not-the-token").await;
    let err = wrong.file_exists(FileExistsRequest { path: "x.sst".into() }).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    assert!(err.message().contains("wrong peer credential"), "{}", err.message());
    assert_eq!(read_all(&mut wrong, "x.sst", 0).await.unwrap_err().code(), Code::Unauthenticated);

    let channel = Channel::from_shared(url.clone()).unwrap().connect().await.unwrap();
    let mut none = NodeAgentClient::new(channel);
    let err = none.stat(StatRequest { path: "x.sst".into() }).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    assert!(err.message().contains("missing credential"), "{}", err.message());
}
