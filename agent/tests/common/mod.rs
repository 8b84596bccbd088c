//! In-process helpers: the coordinator's real registry (`depot_server::registry`) on a
//! loopback port, agents on `127.0.0.1:0` with certificates from it, backup directories.
//!
//! The end-to-end tests in `tests/e2e/` run the real binaries against the real coordinator.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use depot_agent::auth::Secret;
use depot_agent::identity::Identity;
use depot_agent::manifest::FileEntry;
use depot_agent::peer::{PeerClient, PeerDirectory};
use depot_agent::registry::{Coordinator, PeerInfo};
use depot_agent::service::{self, NodeAgentService};
use depot_server::cluster::Cluster;
use depot_server::registry::Registry;
use sha2::{Digest, Sha256};

pub const JOIN: &str = "join-token-for-tests";

/// The coordinator's registry, in process. Nodes stay listed for three minutes without
/// heartbeats (the interval is a minute), so tests need not heartbeat.
pub struct TestRegistry {
    pub url: String,
    pub registry: Arc<Registry>,
    _state: tempfile::TempDir,
}

impl TestRegistry {
    /// Joins `node_id` at `address` (as a serving agent would); returns its identity.
    pub async fn join(&self, node_id: &str, address: &str) -> Arc<Identity> {
        let coordinator = Coordinator::new(&self.url, Secret::new(JOIN), None).unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        coordinator.join(node_id, address, key, false, Duration::from_secs(5)).await.unwrap().identity
    }

    /// Lists a node at `address` (which may be anything, e.g. a dead port).
    pub async fn insert(&self, node_id: &str, address: &str) -> Arc<Identity> {
        self.join(node_id, address).await
    }
}

/// Starts a registry; returns it and its URL.
pub async fn start_registry() -> (TestRegistry, String) {
    let state = tempfile::tempdir().unwrap();
    let cluster = Arc::new(Cluster::open(state.path(), Duration::from_secs(3600)).unwrap());
    let registry = Registry::new(JOIN.into(), "admin-token-for-tests".into(), cluster, Duration::from_secs(60));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let routes = registry.routes();
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_routes(routes)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
            .await
            .unwrap();
    });
    let url = format!("http://{addr}");
    (TestRegistry { url: url.clone(), registry, _state: state }, url)
}

/// An agent serving `dir` in-process over mutual TLS; joined as `node_id`.
pub async fn start_agent(
    registry: &TestRegistry,
    node_id: &str,
    dir: &Path,
) -> (SocketAddr, tokio::task::JoinHandle<()>, Arc<Identity>) {
    let root = depot_fs::Root::open(dir).unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let identity = registry.join(node_id, &addr.to_string()).await;
    let (addr, handle) = service::spawn(addr, NodeAgentService::new(root), identity.clone()).await.unwrap();
    (addr, handle, identity)
}

/// A client of the agent `node_id` at `addr`, calling with `identity`'s certificate.
pub async fn client_of(identity: Arc<Identity>, node_id: &str, addr: SocketAddr) -> PeerClient {
    let peers = vec![PeerInfo { node_id: node_id.into(), address: addr.to_string(), last_seen_ms: 0 }];
    let directory = PeerDirectory::fixed(peers, identity, None);
    directory.peers(false).await.unwrap()[0].client().unwrap()
}

/// Deterministic content for a file of `size` bytes named `name`.
pub fn content(name: &str, size: usize) -> Vec<u8> {
    let seed = Sha256::digest(name.as_bytes());
    let mut out = Vec::with_capacity(size);
    let mut block = seed.to_vec();
    while out.len() < size {
        block = Sha256::digest(&block).to_vec();
        out.extend_from_slice(&block);
    }
    out.truncate(size);
    out
}

/// Writes `name` with its deterministic content under `dir`; returns its manifest entry.
pub fn put(dir: &Path, name: &str, size: usize) -> FileEntry {
    let data = content(name, size);
    let path = dir.join(name);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, &data).unwrap();
    FileEntry { name: name.into(), size: size as u64, sha256: Some(Sha256::digest(&data).into()) }
}

/// The manifest entry for `name` of `size` without writing it anywhere.
pub fn entry(name: &str, size: usize) -> FileEntry {
    FileEntry { name: name.into(), size: size as u64, sha256: Some(Sha256::digest(content(name, size)).into()) }
}

/// Files left in a root's `.depot/tmp/`.
pub fn temp_files(dir: &Path) -> usize {
    std::fs::read_dir(dir.join(".depot/tmp")).map_or(0, |d| d.count())
}
