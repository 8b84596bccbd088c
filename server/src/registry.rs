//! The coordinator's registry of agents, served over gRPC on the S3 port.
//!
//! Register is the join: the join token plus a CSR buys a certificate from the archive's CA
//! ([`crate::cluster`]) and a node secret. Every later call of that node (Heartbeat, ListPeers,
//! RenewNodeCertificate, DeregisterNode) carries the node secret instead, so the join token is
//! sent once per agent start and can be rotated (RotateJoinToken) without disturbing joined
//! nodes. ListPeers returns the agents heard from within three heartbeat intervals; heartbeat
//! answers and ListPeers carry the revoked serials. The admin calls (`depot nodes`) carry the
//! admin token from `DIR/.depot/cluster/admin-token`.
//!
//! [`Registry::nodes`] is the one view of the cluster: the joined nodes (from the cluster
//! state) with their liveness and last heartbeat report. `depot nodes` (ListNodes) and
//! `depot status` / the status page both show it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use depot_proto::registry::registry_server::{Registry as RegistryApi, RegistryServer};
use depot_proto::registry::{
    DeregisterNodeRequest, DeregisterNodeResponse, HeartbeatRequest, HeartbeatResponse, ListNodesRequest,
    ListNodesResponse, ListPeersRequest, ListPeersResponse, NodeRecord, NodeReport, Peer, RegisterRequest,
    RegisterResponse, RemoveNodeRequest, RemoveNodeResponse, RenewNodeCertificateRequest, RenewNodeCertificateResponse,
    RotateJoinTokenRequest, RotateJoinTokenResponse, S3Credentials,
};
use s3s::auth::SecretKey;
use subtle::ConstantTimeEq;
use tonic::metadata::MetadataMap;
use tonic::{Request, Response, Status};

use crate::cluster::{Cluster, ClusterError};
use crate::credentials::random_token;

/// An agent is live while heard from within this many heartbeat intervals.
const LIVE_INTERVALS: u32 = 3;
/// The metadata key naming the calling node.
pub const NODE_HEADER: &str = "depot-node";

/// The registry; shared by every connection.
#[derive(Debug)]
pub struct Registry {
    join_token: RwLock<SecretKey>,
    admin_token: SecretKey,
    cluster: Arc<Cluster>,
    /// How often agents are told to heartbeat.
    interval: Duration,
    /// node id -> what this run heard from it.
    live: Mutex<HashMap<String, Heard>>,
    /// The S3 credentials handed to serving nodes for their S3 views.
    s3: std::sync::OnceLock<S3Credentials>,
}

/// What the registry heard from a node in this run.
#[derive(Debug)]
struct Heard {
    address: String,
    last_seen: Instant,
    /// What it last reported with a heartbeat (for `depot status`).
    report: Option<NodeReport>,
}

/// A joined node as `depot nodes` and `depot status` show it.
#[derive(Debug, Clone)]
pub struct NodeView {
    /// Its node id (a fetch/verify run's is `NODE#run-…`).
    pub node_id: String,
    /// Its NodeAgent address (empty for a run).
    pub address: String,
    /// Heard from within three heartbeat intervals (runs: joined and not yet left).
    pub live: bool,
    /// Time since it was last heard from; `None` when not heard from in this run.
    pub last_seen: Option<Duration>,
    /// Serial (hex) of its newest certificate.
    pub serial: String,
    /// When that certificate expires (Unix seconds).
    pub certificate_not_after: i64,
    /// A fetch/verify run (client-only certificate, never a peer).
    pub client_only: bool,
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
    pub fn new(join_token: SecretKey, admin_token: SecretKey, cluster: Arc<Cluster>, interval: Duration) -> Arc<Self> {
        Arc::new(Self {
            join_token: RwLock::new(join_token),
            admin_token,
            cluster,
            interval,
            live: Mutex::new(HashMap::new()),
            s3: std::sync::OnceLock::new(),
        })
    }

    /// Hands `bucket` (empty in multi-bucket mode), the key pair and `region` to every serving
    /// node that joins, for its S3 view: one URL and one key pair for the whole cluster. Set
    /// once, before serving.
    pub fn hand_out_s3_credentials(&self, bucket: &str, access_key: &str, secret_key: &str, region: &str) {
        let _ = self.s3.set(S3Credentials {
            bucket: bucket.to_owned(),
            access_key: access_key.to_owned(),
            secret_key: secret_key.to_owned(),
            region: region.to_owned(),
        });
    }

    /// The gRPC routes of the registry.
    pub fn routes(self: &Arc<Self>) -> tonic::service::Routes {
        tonic::service::Routes::new(RegistryServer::new(Service(Arc::clone(self))))
    }

    /// The live agents: (node id, address, time since last heard).
    pub fn live(&self) -> Vec<(String, String, Duration)> {
        let horizon = self.interval * LIVE_INTERVALS;
        let live = self.live.lock().expect("registry lock");
        let mut out: Vec<_> = live
            .iter()
            .filter(|(_, h)| h.last_seen.elapsed() <= horizon)
            .map(|(id, h)| (id.clone(), h.address.clone(), h.last_seen.elapsed()))
            .collect();
        out.sort();
        out
    }

    /// Every joined node with its liveness, certificate and last report, sorted by node id.
    pub fn nodes(&self) -> Vec<NodeView> {
        let horizon = self.interval * LIVE_INTERVALS;
        let members = self.cluster.nodes();
        let heard = self.live.lock().expect("registry lock");
        let mut nodes: Vec<NodeView> = members
            .into_iter()
            .map(|(node_id, n)| {
                let (serial, certificate_not_after) = n.newest().cloned().unwrap_or_default();
                let h = heard.get(&node_id);
                let last_seen = h.map(|h| h.last_seen.elapsed());
                NodeView {
                    // A run is never heartbeating; it is live from join until it leaves.
                    live: n.client_only || last_seen.is_some_and(|age| age <= horizon),
                    last_seen,
                    report: h.and_then(|h| h.report.clone()),
                    node_id,
                    address: n.address,
                    serial,
                    certificate_not_after,
                    client_only: n.client_only,
                }
            })
            .collect();
        nodes.sort_by(|a, b| a.node_id.cmp(&b.node_id));
        nodes
    }

    /// The heartbeat interval agents are given.
    pub fn interval(&self) -> Duration {
        self.interval
    }

    /// The current join token.
    pub fn join_token(&self) -> SecretKey {
        self.join_token.read().expect("join token lock").clone()
    }

    fn check_join_token(&self, metadata: &MetadataMap) -> Result<(), Status> {
        let presented = bearer(metadata);
        let current = self.join_token();
        if bool::from(presented.as_bytes().ct_eq(current.expose().as_bytes())) {
            Ok(())
        } else {
            Err(Status::unauthenticated(
                "missing or wrong join token: pass the join_token that `depot serve` printed (--join-token-file, or DEPOT_JOIN_TOKEN); if it was rotated, use the new one",
            ))
        }
    }

    fn check_admin(&self, metadata: &MetadataMap) -> Result<(), Status> {
        if bool::from(bearer(metadata).as_bytes().ct_eq(self.admin_token.expose().as_bytes())) {
            Ok(())
        } else {
            Err(Status::unauthenticated(
                "wrong admin token: run `depot nodes` on the coordinator's machine, as the user that runs `depot serve` (it reads ARCHIVE/.depot/cluster/admin-token)",
            ))
        }
    }

    /// The node a call comes from, checked against its node secret.
    fn check_node(&self, metadata: &MetadataMap) -> Result<String, Status> {
        let node = metadata.get(NODE_HEADER).and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
        if node.is_empty() {
            return Err(Status::unauthenticated(
                "missing node credential (`depot-node` and the node secret): join with Register first",
            ));
        }
        if self.cluster.check_secret(&node, bearer(metadata)) {
            Ok(node)
        } else {
            Err(Status::unauthenticated(ClusterError::NotJoined(node).to_string()))
        }
    }

    /// Records that `node_id` was heard from at `address` (keeping its last report).
    fn see(&self, node_id: &str, address: &str) {
        let mut live = self.live.lock().expect("registry lock");
        let report = live.remove(node_id).and_then(|h| h.report);
        live.insert(node_id.to_owned(), Heard { address: address.to_owned(), last_seen: Instant::now(), report });
    }

    /// Keeps `report` (cut to the limits) as `node_id`'s latest.
    fn keep_report(&self, node_id: &str, mut report: NodeReport) {
        report.jobs.truncate(MAX_JOBS);
        report.holdings.truncate(MAX_HOLDINGS);
        report.version.truncate(64);
        for job in &mut report.jobs {
            job.missing.truncate(MAX_MISSING);
        }
        if let Some(view) = &mut report.view {
            for (text, max) in [(&mut view.bucket, 255), (&mut view.prefix, 1024), (&mut view.ca_bundle, 4096)] {
                if text.len() > max {
                    text.clear(); // an honest agent never sends this much
                }
            }
            if view.scheme != "https" {
                view.scheme = "http".to_owned();
            }
        }
        if let Some(heard) = self.live.lock().expect("registry lock").get_mut(node_id) {
            heard.report = Some(report);
        }
    }

    fn live_address(&self, node_id: &str) -> Option<String> {
        let horizon = self.interval * LIVE_INTERVALS;
        let live = self.live.lock().expect("registry lock");
        live.get(node_id).filter(|h| h.last_seen.elapsed() <= horizon).map(|h| h.address.clone())
    }
}

fn bearer(metadata: &MetadataMap) -> &str {
    metadata.get("authorization").and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer ")).unwrap_or("")
}

fn status(err: ClusterError) -> Status {
    match err {
        ClusterError::NotJoined(_) => Status::unauthenticated(err.to_string()),
        ClusterError::Taken { .. } => Status::already_exists(err.to_string()),
        ClusterError::Sign(_) | ClusterError::Save { .. } => Status::internal(err.to_string()),
        _ => Status::invalid_argument(err.to_string()),
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// The gRPC service; a newtype so the shared state can stay an `Arc<Registry>`.
struct Service(Arc<Registry>);

#[tonic::async_trait]
impl RegistryApi for Service {
    async fn register(&self, req: Request<RegisterRequest>) -> Result<Response<RegisterResponse>, Status> {
        self.0.check_join_token(req.metadata())?;
        let req = req.into_inner();
        let secret = random_token(40);
        let live = if req.client_only { None } else { self.0.live_address(&req.node_id) };
        let issued = self
            .0
            .cluster
            .join(&req.node_id, &req.address, &req.csr_pem, req.client_only, &secret, live.as_deref())
            .map_err(|err| {
                tracing::warn!(node_id = %req.node_id, %err, "join refused");
                status(err)
            })?;
        if !req.client_only {
            self.0.see(&req.node_id, &req.address);
        }
        tracing::info!(node_id = %req.node_id, address = %req.address, client_only = req.client_only, serial = %issued.serial, "node joined");
        Ok(Response::new(RegisterResponse {
            peer_token: String::new(),
            heartbeat_interval_ms: millis(self.0.interval),
            certificate_pem: issued.pem,
            ca_pem: self.0.cluster.ca_pem().to_owned(),
            node_secret: secret,
            revoked_serials: self.0.cluster.revoked(),
            s3_credentials: if req.client_only { None } else { self.0.s3.get().cloned() },
        }))
    }

    async fn heartbeat(&self, req: Request<HeartbeatRequest>) -> Result<Response<HeartbeatResponse>, Status> {
        let node = self.0.check_node(req.metadata())?;
        let req = req.into_inner();
        if req.node_id != node {
            return Err(Status::permission_denied(format!("node {node} cannot heartbeat for node {}", req.node_id)));
        }
        if self.0.cluster.address(&node).is_some_and(|a| a == req.address) {
            self.0.see(&node, &req.address);
            if let Some(report) = req.node_report {
                self.0.keep_report(&node, report);
            }
        }
        Ok(Response::new(HeartbeatResponse { known: true, revoked_serials: self.0.cluster.revoked() }))
    }

    async fn list_peers(&self, req: Request<ListPeersRequest>) -> Result<Response<ListPeersResponse>, Status> {
        self.0.check_node(req.metadata())?;
        let peers = self
            .0
            .live()
            .into_iter()
            .map(|(node_id, address, age)| Peer { node_id, address, last_seen_ms: millis(age) })
            .collect();
        Ok(Response::new(ListPeersResponse {
            peers,
            peer_token: String::new(),
            revoked_serials: self.0.cluster.revoked(),
        }))
    }

    async fn renew_node_certificate(
        &self,
        req: Request<RenewNodeCertificateRequest>,
    ) -> Result<Response<RenewNodeCertificateResponse>, Status> {
        let node = self.0.check_node(req.metadata())?;
        let req = req.into_inner();
        if req.node_id != node {
            return Err(Status::permission_denied(format!(
                "node {node} cannot renew node {}'s certificate",
                req.node_id
            )));
        }
        let issued = self.0.cluster.renew(&node, &req.csr_pem).map_err(status)?;
        tracing::info!(node_id = %node, serial = %issued.serial, "certificate renewed");
        Ok(Response::new(RenewNodeCertificateResponse { certificate_pem: issued.pem }))
    }

    async fn deregister_node(
        &self,
        req: Request<DeregisterNodeRequest>,
    ) -> Result<Response<DeregisterNodeResponse>, Status> {
        let node = self.0.check_node(req.metadata())?;
        self.0.live.lock().expect("registry lock").remove(&node);
        self.0.cluster.forget_client(&node).map_err(status)?;
        tracing::info!(node_id = %node, "node left");
        Ok(Response::new(DeregisterNodeResponse {}))
    }

    async fn list_nodes(&self, req: Request<ListNodesRequest>) -> Result<Response<ListNodesResponse>, Status> {
        self.0.check_admin(req.metadata())?;
        let nodes = self
            .0
            .nodes()
            .into_iter()
            .map(|n| NodeRecord {
                view_endpoint: n
                    .report
                    .as_ref()
                    .and_then(|r| r.view.as_ref())
                    .map(crate::status::restore::endpoint)
                    .unwrap_or_default(),
                live: n.live,
                last_seen_ms: n.last_seen.map(millis),
                node_id: n.node_id,
                address: n.address,
                serial: n.serial,
                certificate_not_after: n.certificate_not_after,
                client_only: n.client_only,
            })
            .collect();
        Ok(Response::new(ListNodesResponse { nodes }))
    }

    async fn remove_node(&self, req: Request<RemoveNodeRequest>) -> Result<Response<RemoveNodeResponse>, Status> {
        self.0.check_admin(req.metadata())?;
        let node = req.into_inner().node_id;
        let revoked = self.0.cluster.remove(&node).map_err(|err| match err {
            ClusterError::NotJoined(_) => {
                Status::not_found(format!("no node {node:?} is joined; `depot nodes` lists the joined ones"))
            }
            err => status(err),
        })?;
        self.0.live.lock().expect("registry lock").remove(&node);
        tracing::warn!(node_id = %node, revoked, "node removed; its certificates are revoked");
        Ok(Response::new(RemoveNodeResponse { revoked: u32::try_from(revoked).unwrap_or(u32::MAX) }))
    }

    async fn rotate_join_token(
        &self,
        req: Request<RotateJoinTokenRequest>,
    ) -> Result<Response<RotateJoinTokenResponse>, Status> {
        self.0.check_admin(req.metadata())?;
        let token = random_token(32);
        *self.0.join_token.write().expect("join token lock") = SecretKey::from(token.clone());
        tracing::warn!("join token rotated; joined nodes are not affected");
        Ok(Response::new(RotateJoinTokenResponse { join_token: token }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn agents_drop_out_after_three_silent_intervals() {
        let dir = tempfile::tempdir().unwrap();
        let cluster = Arc::new(Cluster::open(dir.path(), Duration::from_secs(60)).unwrap());
        let registry = Registry::new(
            SecretKey::from("join-token-aaaaaaaa"),
            SecretKey::from("admin"),
            cluster,
            Duration::from_millis(20),
        );
        registry.see("n1", "127.0.0.1:1");
        assert_eq!(registry.live().len(), 1);
        tokio::time::sleep(Duration::from_millis(80)).await;
        assert!(registry.live().is_empty());
    }

    fn csr(cn: &str) -> String {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::default();
        params.distinguished_name.push(rcgen::DnType::CommonName, cn);
        params.serialize_request(&key).unwrap().pem().unwrap()
    }

    /// The one node view (`depot nodes` and `depot status`): every joined node, its newest
    /// certificate, whether it is live, its last report (cut to the limits).
    #[tokio::test]
    async fn nodes_join_membership_liveness_and_reports() {
        let dir = tempfile::tempdir().unwrap();
        let cluster = Arc::new(Cluster::open(dir.path(), Duration::from_secs(3600)).unwrap());
        let registry = Registry::new(
            SecretKey::from("join"),
            SecretKey::from("admin"),
            Arc::clone(&cluster),
            Duration::from_millis(20),
        );
        cluster.join("a", "127.0.0.1:7000", &csr("a"), false, "sa", None).unwrap();
        cluster.join("b", "127.0.0.1:7001", &csr("b"), false, "sb", None).unwrap();
        cluster.join("a#run-1", "", &csr("a#run-1"), true, "sr", None).unwrap();
        registry.see("a", "127.0.0.1:7000");
        let report = NodeReport {
            version: "0.1.0".into(),
            jobs: (0..40).map(|_| depot_proto::registry::JobReport::default()).collect(),
            holdings: vec![],
            view: None,
        };
        registry.keep_report("a", report);

        let nodes = registry.nodes();
        let ids: Vec<&str> = nodes.iter().map(|n| n.node_id.as_str()).collect();
        assert_eq!(ids, ["a", "a#run-1", "b"]);
        let (a, run, b) = (&nodes[0], &nodes[1], &nodes[2]);
        assert!(a.live && a.last_seen.is_some() && !a.serial.is_empty() && a.certificate_not_after > 0);
        assert_eq!(a.report.as_ref().unwrap().jobs.len(), MAX_JOBS, "a report is cut to the limits");
        assert!(run.client_only && run.address.is_empty());
        assert!(!b.live && b.last_seen.is_none() && b.report.is_none(), "joined, not heard this run");

        tokio::time::sleep(Duration::from_millis(80)).await;
        let a = &registry.nodes()[0];
        assert!(!a.live && a.last_seen.is_some() && a.report.is_some(), "silent: still listed, report kept");
    }
}
