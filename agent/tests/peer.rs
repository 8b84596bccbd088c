//! The peer-fallback reader against real agents, fake misbehaving ones and an in-process
//! registry: holders chosen, bad bytes rejected, breaks resumed, absence final, outages retried.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::*;
use depot_agent::auth::Secret;
use depot_agent::manifest::FileEntry;
use depot_agent::peer::{FetchError, Origin, PeerDirectory, PeerReader, RetryPolicy, Timeouts};
use depot_agent::registry::Coordinator;
use depot_agent::service::NodeAgentService;
use depot_proto::agent::node_agent_server::NodeAgent;
use depot_proto::agent::{
    FileChunk, FileExistsRequest, FileExistsResponse, ReadFileRequest, StatRequest, StatResponse,
};
use tonic::{Request, Response, Status};

fn reader(url: &str, root: &std::path::Path, self_id: &str) -> PeerReader {
    let coordinator = Coordinator::new(url, Secret::new(JOIN), None).unwrap();
    PeerReader::new(depot_fs::Root::open(root).unwrap(), PeerDirectory::new(coordinator, Some(self_id.into())))
        .with_retry(RetryPolicy {
            rounds: 4,
            initial_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_millis(200),
        })
        .with_timeouts(Timeouts { rpc: Duration::from_secs(2), stall: Duration::from_millis(500) })
}

/// A `NodeAgent` that claims to hold `entry` and misbehaves while serving it.
#[derive(Clone)]
struct FakeAgent {
    data: Arc<Vec<u8>>,
    behaviour: Behaviour,
    reads: Arc<AtomicU64>,
}

#[derive(Clone, Copy)]
enum Behaviour {
    /// Sends this many bytes, then fails the stream as a dying process would.
    BreakAfter(usize),
    /// Sends this many bytes, then goes silent.
    StallAfter(usize),
    /// Sends everything plus extra bytes.
    TooMuch,
}

#[tonic::async_trait]
impl NodeAgent for FakeAgent {
    async fn file_exists(&self, _: Request<FileExistsRequest>) -> Result<Response<FileExistsResponse>, Status> {
        Ok(Response::new(FileExistsResponse { exists: true, size: self.data.len() as u64 }))
    }

    type ReadFileStream = tokio_stream::wrappers::ReceiverStream<Result<FileChunk, Status>>;

    async fn read_file(&self, request: Request<ReadFileRequest>) -> Result<Response<Self::ReadFileStream>, Status> {
        self.reads.fetch_add(1, Ordering::SeqCst);
        let offset = request.into_inner().offset as usize;
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let data = self.data.clone();
        let behaviour = self.behaviour;
        tokio::spawn(async move {
            let body = &data[offset..];
            match behaviour {
                Behaviour::BreakAfter(n) => {
                    let _ = tx.send(Ok(FileChunk { data: body[..n].to_vec() })).await;
                    let _ = tx.send(Err(Status::unavailable("the process died"))).await;
                }
                Behaviour::StallAfter(n) => {
                    let _ = tx.send(Ok(FileChunk { data: body[..n].to_vec() })).await;
                    tokio::time::sleep(Duration::from_secs(3600)).await;
                }
                Behaviour::TooMuch => {
                    let mut more = body.to_vec();
                    more.extend_from_slice(b"trailing garbage");
                    let _ = tx.send(Ok(FileChunk { data: more })).await;
                }
            }
        });
        Ok(Response::new(tokio_stream::wrappers::ReceiverStream::new(rx)))
    }

    async fn stat(&self, _: Request<StatRequest>) -> Result<Response<StatResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }
}

/// A service of some other version: every call is UNIMPLEMENTED.
#[derive(Clone)]
struct Unimplemented;

#[tonic::async_trait]
impl NodeAgent for Unimplemented {
    async fn file_exists(&self, _: Request<FileExistsRequest>) -> Result<Response<FileExistsResponse>, Status> {
        Err(Status::unimplemented("no"))
    }

    type ReadFileStream = tokio_stream::wrappers::ReceiverStream<Result<FileChunk, Status>>;

    async fn read_file(&self, _: Request<ReadFileRequest>) -> Result<Response<Self::ReadFileStream>, Status> {
        Err(Status::unimplemented("no"))
    }

    async fn stat(&self, _: Request<StatRequest>) -> Result<Response<StatResponse>, Status> {
        Err(Status::unimplemented("no"))
    }
}

async fn start_fake(registry: &TestRegistry, node_id: &str, data: Vec<u8>, behaviour: Behaviour) -> Arc<AtomicU64> {
    let reads = Arc::new(AtomicU64::new(0));
    let fake = FakeAgent { data: Arc::new(data), behaviour, reads: reads.clone() };
    let addr = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let identity = registry.join(node_id, &addr.to_string()).await;
    depot_agent::service::spawn(addr, fake, identity).await.unwrap();
    reads
}

#[tokio::test]
async fn fetches_from_holders_and_leaves_local_files_alone() {
    let (registry, url) = start_registry().await;
    let (a, b, me) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let e1 = put(a.path(), "x/1.sst", 100_000);
    let e2 = put(b.path(), "x/2.sst", 2_000_000);
    let e3 = put(me.path(), "x/3.sst", 10);
    start_agent(&registry, "a", a.path()).await;
    start_agent(&registry, "b", b.path()).await;
    let reader = reader(&url, me.path(), "me");

    let got1 = reader.fetch(&e1).await.unwrap();
    assert_eq!(got1.node_id, "a");
    let got2 = reader.fetch(&e2).await.unwrap();
    assert_eq!(got2.node_id, "b");
    assert_eq!(std::fs::read(me.path().join("x/2.sst")).unwrap(), content("x/2.sst", 2_000_000));
    let (_, origin) = reader.open("x/3.sst", Some(&e3)).await.unwrap();
    assert_eq!(origin, Origin::Local);
    // Without a manifest entry: the holder's size is expected.
    std::fs::remove_file(me.path().join("x/1.sst")).unwrap();
    let (_, origin) = reader.open("x/1.sst", None).await.unwrap();
    assert_eq!(origin, Origin::Peer("a".into()));
    assert_eq!(temp_files(me.path()), 0);
}

#[tokio::test]
async fn a_corrupted_copy_is_rejected_and_another_holder_used() {
    let (registry, url) = start_registry().await;
    let (bad, good, me) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let entry = put(good.path(), "c.sst", 500_000);
    // Same name and size, one flipped byte.
    let mut corrupt = content("c.sst", 500_000);
    corrupt[250_000] ^= 0xff;
    std::fs::write(bad.path().join("c.sst"), &corrupt).unwrap();
    start_agent(&registry, "bad", bad.path()).await;
    let reader = reader(&url, me.path(), "me");

    // Only the bad copy: checksum fails, the holder is dropped, nothing lands under the name.
    let err = reader.fetch(&entry).await.unwrap_err();
    assert!(matches!(err, FetchError::Corrupt { .. }), "{err}");
    assert!(!err.is_retryable());
    assert!(!me.path().join("c.sst").exists());
    assert_eq!(temp_files(me.path()), 0);

    start_agent(&registry, "good", good.path()).await;
    let got = reader.fetch(&entry).await.unwrap();
    assert_eq!(got.node_id, "good");
    assert_eq!(std::fs::read(me.path().join("c.sst")).unwrap(), content("c.sst", 500_000));
}

#[tokio::test]
async fn a_peer_dying_mid_transfer_is_resumed_from_another_holder() {
    let (registry, url) = start_registry().await;
    let (good, me) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let size = 3_000_000;
    let entry = put(good.path(), "big.sst", size);
    let data = content("big.sst", size);
    // The dying peer is asked first: nothing else is in flight and "a" < "z".
    let reads = start_fake(&registry, "a-dies", data.clone(), Behaviour::BreakAfter(1_000_000)).await;
    let root = depot_fs::Root::open(good.path()).unwrap();
    let service = NodeAgentService::new(root);
    let stats = service.stats();
    let addr = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let identity = registry.join("z-good", &addr.to_string()).await;
    depot_agent::service::spawn(addr, service, identity).await.unwrap();

    let reader = reader(&url, me.path(), "me");
    let got = reader.fetch(&entry).await.unwrap();
    assert_eq!(reads.load(Ordering::SeqCst), 1, "the dying peer was tried first");
    assert_eq!(got.node_id, "z-good");
    assert_eq!(std::fs::read(me.path().join("big.sst")).unwrap(), data);
    // The good holder sent only what was still missing: the transfer resumed at the offset.
    assert_eq!(stats.bytes_sent.load(Ordering::SeqCst), (size - 1_000_000) as u64);
    assert_eq!(temp_files(me.path()), 0);
}

#[tokio::test]
async fn a_stalled_or_oversending_peer_is_left() {
    let (registry, url) = start_registry().await;
    let (good, me) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let entry = put(good.path(), "s.sst", 200_000);
    let data = content("s.sst", 200_000);
    start_fake(&registry, "a-stalls", data.clone(), Behaviour::StallAfter(50_000)).await;
    start_fake(&registry, "b-too-much", data.clone(), Behaviour::TooMuch).await;
    start_agent(&registry, "z-good", good.path()).await;
    let started = Instant::now();
    let got = reader(&url, me.path(), "me").fetch(&entry).await.unwrap();
    assert_eq!(got.node_id, "z-good");
    assert_eq!(std::fs::read(me.path().join("s.sst")).unwrap(), data);
    assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
}

#[tokio::test]
async fn nobody_has_it_is_final_and_quick() {
    let (registry, url) = start_registry().await;
    let (a, me) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    put(a.path(), "other.sst", 10);
    // A different file by the same name (another size) does not count.
    put(a.path(), "n.sst", 5);
    start_agent(&registry, "a", a.path()).await;
    // A node whose service does not implement NodeAgent (UNIMPLEMENTED) does not have it.
    let addr = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let identity = registry.join("not-an-agent", &addr.to_string()).await;
    depot_agent::service::spawn(addr, Unimplemented, identity).await.unwrap();
    // A retry would wait three seconds first: finishing sooner proves there was none.
    let patient = reader(&url, me.path(), "me").with_retry(RetryPolicy {
        rounds: 4,
        initial_backoff: Duration::from_secs(3),
        max_backoff: Duration::from_secs(3),
    });
    let started = Instant::now();
    let err = patient.fetch(&entry("n.sst", 10)).await.unwrap_err();
    assert!(err.is_missing(), "{err}");
    assert!(!err.is_retryable());
    assert!(err.to_string().contains("n.sst"), "{err}");
    assert!(err.to_string().contains("5-byte"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(2), "not retried: {:?}", started.elapsed());

    // The UNIMPLEMENTED peer does not hide a real holder either.
    let e = put(a.path(), "m.sst", 1000);
    assert_eq!(reader(&url, me.path(), "me").fetch(&e).await.unwrap().node_id, "a");
}

#[tokio::test]
async fn an_unreachable_holder_is_retried_until_it_comes_up() {
    let (registry, url) = start_registry().await;
    let (late, me) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let entry = put(late.path(), "late.sst", 50_000);
    // Reserve a port, register it, and start the agent there only after a while.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let identity = registry.insert("late", &format!("127.0.0.1:{port}")).await;
    let root = depot_fs::Root::open(late.path()).unwrap();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await.unwrap();
        depot_agent::service::serve(
            listener,
            NodeAgentService::new(root),
            identity,
            depot_net::Limits::default(),
            std::future::pending(),
        )
        .await
        .unwrap();
    });
    let got = reader(&url, me.path(), "me").fetch(&entry).await.unwrap();
    assert_eq!(got.node_id, "late");

    // A holder that never comes back: given up after the retry budget, marked retryable.
    registry.insert("gone", "127.0.0.1:1").await;
    let started = Instant::now();
    let err = reader(&url, me.path(), "me").fetch(&entry_named_only_on_gone()).await.unwrap_err();
    assert!(matches!(err, FetchError::Unavailable { rounds: 4, .. }), "{err}");
    assert!(err.is_retryable());
    assert!(started.elapsed() < Duration::from_secs(3), "{:?}", started.elapsed());
}

fn entry_named_only_on_gone() -> FileEntry {
    entry("only-on-gone.sst", 10)
}

#[tokio::test]
async fn a_wrong_join_token_is_reported_as_such() {
    let (_registry, url) = start_registry().await;
    let me = tempfile::tempdir().unwrap();
    let coordinator = Coordinator::new(&url, Secret::new("wrong"), None).unwrap();
    let reader =
        PeerReader::new(depot_fs::Root::open(me.path()).unwrap(), PeerDirectory::new(coordinator.clone(), None));
    let err = reader.fetch(&entry("f.sst", 1)).await.unwrap_err();
    assert!(!err.is_retryable());
    assert!(err.to_string().contains("refused the join token"), "{err}");
    let key = rcgen::KeyPair::generate().unwrap();
    let err = coordinator.join("n", "127.0.0.1:1", key, false, Duration::from_secs(1)).await.unwrap_err();
    assert!(err.to_string().contains("--join-token"), "{err}");
}
