//! The coordinator's registry of live agents, served over gRPC on the S3 port.
//!
//! Agents prove themselves with the join token (`authorization: Bearer <token>`), register
//! their NodeAgent address, and heartbeat. ListPeers returns those heard from within three
//! heartbeat intervals, with the peer token agents present to each other. The peer token is
//! derived from the join token, so a coordinator restarted with the same `--join-token`
//! hands out the same one and running agents and fetches are not disturbed.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use depot_proto::registry::registry_server::{Registry as RegistryApi, RegistryServer};
use depot_proto::registry::{
    HeartbeatRequest, HeartbeatResponse, ListPeersRequest, ListPeersResponse, NodeReport, Peer, RegisterRequest,
    RegisterResponse,
};
use s3s::auth::SecretKey;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tonic::{Request, Response, Status};

/// An agent is live while heard from within this many heartbeat intervals.
const LIVE_INTERVALS: u32 = 3;
/// Longest accepted node id.
const MAX_NODE_ID: usize = 128;

/// The registry; shared by every connection.
#[derive(Debug)]
pub struct Registry {
    join_token: SecretKey,
    /// What agents present to each other; see the module docs.
    peer_token: String,
    /// How often agents are told to heartbeat.
    interval: Duration,
    agents: Mutex<HashMap<String, Agent>>,
}

#[derive(Debug)]
struct Agent {
    address: String,
    last_seen: Instant,
    /// What it last reported with a heartbeat (for `depot status`).
    report: Option<NodeReport>,
}

/// A live agent as `depot status` shows it.
#[derive(Debug, Clone)]
pub struct NodeView {
    /// Its node id.
    pub node_id: String,
    /// Its NodeAgent address.
    pub address: String,
    /// Time since it was last heard from.
    pub last_seen: Duration,
    /// Its last heartbeat's report (none before the first heartbeat, or from older agents).
    pub report: Option<NodeReport>,
}

/// Most jobs, holdings and missing names kept per node report (agents send no more; a
/// report over the limits is cut, so a misbehaving agent cannot grow the coordinator).
const MAX_JOBS: usize = 16;
const MAX_HOLDINGS: usize = 64;
const MAX_MISSING: usize = 20;

impl Registry {
    /// A registry accepting `join_token`, asking agents to heartbeat every `interval`.
    pub fn new(join_token: SecretKey, interval: Duration) -> Arc<Self> {
        let peer_token = peer_token_for(&join_token);
        Arc::new(Self { join_token, peer_token, interval, agents: Mutex::new(HashMap::new()) })
    }

    /// The gRPC routes of the registry, behind the join-token check.
    pub fn routes(self: &Arc<Self>) -> tonic::service::Routes {
        let check = Arc::clone(self);
        let service = RegistryServer::with_interceptor(Service(Arc::clone(self)), move |req: Request<()>| {
            check.authenticate(&req)?;
            Ok(req)
        });
        tonic::service::Routes::new(service)
    }

    /// The live agents: (node id, address, time since last heard).
    pub fn live(&self) -> Vec<(String, String, Duration)> {
        let horizon = self.interval * LIVE_INTERVALS;
        let mut agents = self.agents.lock().expect("registry lock");
        agents.retain(|_, a| a.last_seen.elapsed() <= horizon);
        let mut live: Vec<_> =
            agents.iter().map(|(id, a)| (id.clone(), a.address.clone(), a.last_seen.elapsed())).collect();
        live.sort();
        live
    }

    /// The live agents with their last reports, sorted by node id.
    pub fn nodes(&self) -> Vec<NodeView> {
        let horizon = self.interval * LIVE_INTERVALS;
        let mut agents = self.agents.lock().expect("registry lock");
        agents.retain(|_, a| a.last_seen.elapsed() <= horizon);
        let mut nodes: Vec<_> = agents
            .iter()
            .map(|(id, a)| NodeView {
                node_id: id.clone(),
                address: a.address.clone(),
                last_seen: a.last_seen.elapsed(),
                report: a.report.clone(),
            })
            .collect();
        nodes.sort_by(|a, b| a.node_id.cmp(&b.node_id));
        nodes
    }

    /// The heartbeat interval agents are given.
    pub fn interval(&self) -> Duration {
        self.interval
    }

    fn authenticate<T>(&self, req: &Request<T>) -> Result<(), Status> {
        let presented = req
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        if bool::from(presented.as_bytes().ct_eq(self.join_token.expose().as_bytes())) {
            Ok(())
        } else {
            Err(Status::unauthenticated(
                "missing or wrong join token: pass the join_token that `depot serve` printed (--join-token)",
            ))
        }
    }

    fn see(&self, node_id: &str, address: &str) -> Result<(), Status> {
        if node_id.is_empty() || node_id.len() > MAX_NODE_ID {
            return Err(Status::invalid_argument(format!("node id must be 1 to {MAX_NODE_ID} characters")));
        }
        if address.rsplit_once(':').is_none_or(|(host, port)| host.is_empty() || port.parse::<u16>().is_err()) {
            return Err(Status::invalid_argument(format!("address {address:?} is not HOST:PORT")));
        }
        let mut agents = self.agents.lock().expect("registry lock");
        let report = agents.remove(node_id).and_then(|a| a.report);
        agents.insert(node_id.to_owned(), Agent { address: address.to_owned(), last_seen: Instant::now(), report });
        Ok(())
    }

    /// Keeps `report` (cut to the limits) as `node_id`'s latest.
    fn keep_report(&self, node_id: &str, mut report: NodeReport) {
        report.jobs.truncate(MAX_JOBS);
        report.holdings.truncate(MAX_HOLDINGS);
        report.version.truncate(64);
        for job in &mut report.jobs {
            job.missing.truncate(MAX_MISSING);
        }
        if let Some(agent) = self.agents.lock().expect("registry lock").get_mut(node_id) {
            agent.report = Some(report);
        }
    }
}

/// The peer token belonging to a join token.
fn peer_token_for(join_token: &SecretKey) -> String {
    let mut hash = Sha256::new();
    hash.update(b"depot peer token v1\0");
    hash.update(join_token.expose().as_bytes());
    hex::encode(hash.finalize())
}

/// The gRPC service; a newtype so the shared state can stay an `Arc<Registry>`.
struct Service(Arc<Registry>);

#[tonic::async_trait]
impl RegistryApi for Service {
    async fn register(&self, req: Request<RegisterRequest>) -> Result<Response<RegisterResponse>, Status> {
        let req = req.into_inner();
        self.0.see(&req.node_id, &req.address)?;
        tracing::info!(node_id = %req.node_id, address = %req.address, "agent registered");
        Ok(Response::new(RegisterResponse {
            peer_token: self.0.peer_token.clone(),
            heartbeat_interval_ms: u64::try_from(self.0.interval.as_millis()).unwrap_or(u64::MAX),
        }))
    }

    async fn heartbeat(&self, req: Request<HeartbeatRequest>) -> Result<Response<HeartbeatResponse>, Status> {
        let req = req.into_inner();
        let known = {
            let agents = self.0.agents.lock().expect("registry lock");
            agents.get(&req.node_id).is_some_and(|a| a.address == req.address)
        };
        if known {
            self.0.see(&req.node_id, &req.address)?;
            if let Some(report) = req.node_report {
                self.0.keep_report(&req.node_id, report);
            }
        }
        Ok(Response::new(HeartbeatResponse { known }))
    }

    async fn list_peers(&self, _req: Request<ListPeersRequest>) -> Result<Response<ListPeersResponse>, Status> {
        let peers = self
            .0
            .live()
            .into_iter()
            .map(|(node_id, address, age)| Peer {
                node_id,
                address,
                last_seen_ms: u64::try_from(age.as_millis()).unwrap_or(u64::MAX),
            })
            .collect();
        Ok(Response::new(ListPeersResponse { peers, peer_token: self.0.peer_token.clone() }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_peer_token_is_stable_for_a_join_token_and_differs_between_them() {
        let a = peer_token_for(&SecretKey::from("join-token-aaaaaaaa"));
        assert_eq!(a, peer_token_for(&SecretKey::from("join-token-aaaaaaaa")));
        assert_ne!(a, peer_token_for(&SecretKey::from("join-token-bbbbbbbb")));
        assert!(!a.contains("join-token"));
    }

    #[tokio::test]
    async fn agents_drop_out_after_three_silent_intervals() {
        let registry = Registry::new(SecretKey::from("join-token-aaaaaaaa"), Duration::from_millis(20));
        registry.see("n1", "127.0.0.1:1").unwrap();
        assert_eq!(registry.live().len(), 1);
        tokio::time::sleep(Duration::from_millis(80)).await;
        assert!(registry.live().is_empty());
        assert!(registry.see("", "127.0.0.1:1").is_err());
        assert!(registry.see("n2", "no-port").is_err());
    }
}
