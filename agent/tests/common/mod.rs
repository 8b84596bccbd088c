//! In-process helpers: a minimal registry, agents on `127.0.0.1:0`, backup directories.
//!
//! The registry here is a test double with the same contract as `depot serve`'s (join token,
//! peer token, heartbeat TTL), so the library can be tested in one process, fast. The
//! end-to-end tests in `tests/e2e/` run the real binaries against the real coordinator.
#![allow(dead_code)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use depot_agent::auth::{Secret, TokenSlot};
use depot_agent::manifest::FileEntry;
use depot_agent::service::{self, NodeAgentService};
use depot_proto::registry::registry_server::{Registry, RegistryServer};
use depot_proto::registry::{
    HeartbeatRequest, HeartbeatResponse, ListPeersRequest, ListPeersResponse, Peer, RegisterRequest, RegisterResponse,
};
use sha2::{Digest, Sha256};
use tonic::{Request, Response, Status};

pub const JOIN: &str = "join-token-for-tests";
pub const PEER: &str = "peer-token-for-tests";

/// A registry keeping agents for three heartbeat intervals.
#[derive(Clone)]
pub struct MemoryRegistry {
    agents: Arc<Mutex<HashMap<String, (String, Instant)>>>,
    interval: Duration,
}

impl MemoryRegistry {
    fn check(&self, request_meta: &tonic::metadata::MetadataMap) -> Result<(), Status> {
        let ok = request_meta
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v == format!("Bearer {JOIN}"));
        if ok { Ok(()) } else { Err(Status::unauthenticated("wrong join token")) }
    }

    /// Adds an entry directly (e.g. a fake peer at some address).
    pub fn insert(&self, node_id: &str, address: &str) {
        self.agents
            .lock()
            .unwrap()
            .insert(node_id.into(), (address.into(), Instant::now() + Duration::from_secs(3600)));
    }
}

#[tonic::async_trait]
impl Registry for MemoryRegistry {
    async fn register(&self, request: Request<RegisterRequest>) -> Result<Response<RegisterResponse>, Status> {
        self.check(request.metadata())?;
        let r = request.into_inner();
        self.agents.lock().unwrap().insert(r.node_id, (r.address, Instant::now()));
        Ok(Response::new(RegisterResponse {
            peer_token: PEER.into(),
            heartbeat_interval_ms: self.interval.as_millis() as u64,
        }))
    }

    async fn heartbeat(&self, request: Request<HeartbeatRequest>) -> Result<Response<HeartbeatResponse>, Status> {
        self.check(request.metadata())?;
        let r = request.into_inner();
        let mut agents = self.agents.lock().unwrap();
        let known = match agents.get_mut(&r.node_id) {
            Some(entry) => {
                entry.1 = entry.1.max(Instant::now());
                true
            }
            None => false,
        };
        Ok(Response::new(HeartbeatResponse { known }))
    }

    async fn list_peers(&self, request: Request<ListPeersRequest>) -> Result<Response<ListPeersResponse>, Status> {
        self.check(request.metadata())?;
        let now = Instant::now();
        let peers = self
            .agents
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, (_, seen))| *seen > now || now.duration_since(*seen) < self.interval * 3)
            .map(|(id, (address, seen))| Peer {
                node_id: id.clone(),
                address: address.clone(),
                last_seen_ms: now.saturating_duration_since(*seen).as_millis() as u64,
            })
            .collect();
        Ok(Response::new(ListPeersResponse { peers, peer_token: PEER.into() }))
    }
}

/// Starts a registry; returns it and its URL.
pub async fn start_registry() -> (MemoryRegistry, String) {
    let registry = MemoryRegistry { agents: Arc::default(), interval: Duration::from_millis(200) };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let svc = RegistryServer::new(registry.clone());
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(svc)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
            .await
            .unwrap();
    });
    (registry, format!("http://{addr}"))
}

/// An agent serving `dir` in-process with the test peer token; registered as `node_id`.
pub async fn start_agent(
    registry: &MemoryRegistry,
    node_id: &str,
    dir: &Path,
) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let root = depot_fs::Root::open(dir).unwrap();
    let (addr, handle) = service::spawn(
        "127.0.0.1:0".parse().unwrap(),
        NodeAgentService::new(root),
        TokenSlot::fixed(Secret::new(PEER)),
    )
    .await
    .unwrap();
    registry.insert(node_id, &addr.to_string());
    (addr, handle)
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
