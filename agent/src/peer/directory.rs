//! Who the live peers are, how to reach them, and how busy each one is.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use depot_proto::agent::ReadFileRequest;
use depot_proto::agent::node_agent_client::NodeAgentClient;
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::time::Instant;
use tonic::Status;
use tonic::transport::{Channel, Endpoint};

use crate::identity::Identity;
use crate::registry::{Coordinator, PeerInfo, RegistryError};
use crate::transport::{
    CONNECTION_WINDOW, FileBytes, MAX_FRAME, READ_FILE_PATH, STREAM_WINDOW, TCP_READ_BUFFER, unary_call,
};

/// How long a peer list is reused before asking the coordinator again: short enough that a
/// new agent is seen quickly, long enough that thousands of concurrent file fetches do not each
/// call `ListPeers`.
const LIST_MAX_AGE: Duration = Duration::from_secs(2);

/// A client of one peer's `NodeAgent`, over mutual TLS with this process's certificate.
pub type PeerClient = NodeAgentClient<Channel>;

/// One live peer, ready to be called.
#[derive(Debug, Clone)]
pub struct Peer {
    /// Its node id.
    pub node_id: String,
    /// `host:port` of its service.
    pub address: String,
    /// The shared connection to it; `None` if its address is unusable.
    channel: Option<Channel>,
}

impl Peer {
    /// A client for calls to this peer, over the shared (mutual TLS) connection; `None` if the
    /// peer's address is unusable.
    #[must_use]
    pub fn client(&self) -> Option<PeerClient> {
        let channel = self.channel.clone()?;
        Some(NodeAgentClient::new(channel).max_decoding_message_size(8 * 1024 * 1024))
    }

    /// Starts a `ReadFile` stream from this peer. The same call as [`Self::client`]'s
    /// `read_file`, but the file's bytes arrive as slices of the frames they came in
    /// ([`FileBytes`]) instead of through tonic's decoder, which copies every one.
    ///
    /// # Errors
    /// The call's status: `NOT_FOUND`, `OUT_OF_RANGE`, a refusal, or a transport error (as
    /// tonic reports it, so [`crate::peer::is_transient`] reads it the same way).
    pub async fn read_file(&self, request: ReadFileRequest) -> Result<FileBytes, Status> {
        use tower::ServiceExt as _;
        let channel = self.channel.clone().ok_or_else(|| Status::unavailable("unusable peer address"))?;
        let response = channel.oneshot(unary_call(READ_FILE_PATH, &request)).await;
        FileBytes::new(response.map_err(|err| Status::from_error(err.into()))?)
    }
}

/// Where the peer list comes from.
#[derive(Debug)]
enum Source {
    /// The coordinator's registry.
    Coordinator(Box<Coordinator>),
    /// A fixed list (embedders, tests), called with this identity.
    Fixed(Vec<PeerInfo>, Arc<Identity>),
}

/// The live peers, refreshed from the coordinator, with one HTTP/2 connection (mutual TLS) per
/// peer.
#[derive(Debug)]
pub struct PeerDirectory {
    source: Source,
    /// This node's id: never counted as a peer of itself.
    self_id: Option<String>,
    cached: tokio::sync::Mutex<Option<(Instant, Arc<Vec<Peer>>)>>,
    /// Connections by (node id, address), reused across refreshes (a std `Mutex`: held only to
    /// look up).
    channels: Mutex<HashMap<String, Channel>>,
    connect_timeout: Duration,
}

impl PeerDirectory {
    /// Peers as the coordinator lists them, except `self_id`.
    #[must_use]
    pub fn new(coordinator: Coordinator, self_id: Option<String>) -> Self {
        Self::with_source(Source::Coordinator(Box::new(coordinator)), self_id)
    }

    /// A fixed peer list, all called with `identity`'s certificate.
    #[must_use]
    pub fn fixed(peers: Vec<PeerInfo>, identity: Arc<Identity>, self_id: Option<String>) -> Self {
        Self::with_source(Source::Fixed(peers, identity), self_id)
    }

    fn with_source(source: Source, self_id: Option<String>) -> Self {
        Self {
            source,
            self_id,
            cached: tokio::sync::Mutex::new(None),
            channels: Mutex::new(HashMap::new()),
            connect_timeout: Duration::from_secs(3),
        }
    }

    /// This node's id, if known.
    #[must_use]
    pub fn self_id(&self) -> Option<&str> {
        self.self_id.as_deref()
    }

    /// The live peers. `fresh` asks for a list fetched after this call (after failures, to see
    /// peers that came or went; callers waiting together share one `ListPeers`); otherwise a
    /// list younger than two seconds is reused.
    ///
    /// # Errors
    /// The [`RegistryError`] of `ListPeers`.
    pub async fn peers(&self, fresh: bool) -> Result<Arc<Vec<Peer>>, RegistryError> {
        let asked = Instant::now();
        let mut cached = self.cached.lock().await;
        if let Some((at, peers)) = cached.as_ref()
            && (if fresh { *at >= asked } else { at.elapsed() < LIST_MAX_AGE })
        {
            return Ok(peers.clone());
        }
        // Stamped with when the request went out: a list asked for after `asked` is fresh.
        let sent = Instant::now();
        let (infos, identity) = match &self.source {
            Source::Coordinator(coordinator) => {
                // A serving agent's identity, or a fetch/verify run's client-only one.
                let identity = coordinator.client_identity(self.self_id.as_deref()).await?;
                (coordinator.list_peers().await?.peers, identity)
            }
            Source::Fixed(peers, identity) => (peers.clone(), identity.clone()),
        };
        let mut infos = infos;
        // A stable order: equally busy holders are then picked by node id, which keeps runs
        // reproducible (the load counters spread the transfers anyway).
        infos.sort_by(|a, b| a.node_id.cmp(&b.node_id));
        let peers: Vec<Peer> = infos
            .into_iter()
            .filter(|p| self.self_id.as_deref() != Some(p.node_id.as_str()))
            .map(|p| {
                let channel = self
                    .channel(&identity, &p.node_id, &p.address)
                    .map_err(|err| tracing::warn!(node = p.node_id, address = p.address, %err, "unusable peer address"))
                    .ok();
                Peer { node_id: p.node_id, address: p.address, channel }
            })
            .collect();
        let peers = Arc::new(peers);
        *cached = Some((sent, peers.clone()));
        Ok(peers)
    }

    /// The (lazily connecting) mutual-TLS channel to node `node_id` at `address`, shared by
    /// all calls to it. The peer's certificate must name `node_id` and `address`'s host.
    fn channel(
        &self,
        identity: &Arc<Identity>,
        node_id: &str,
        address: &str,
    ) -> Result<Channel, tonic::transport::Error> {
        let key = format!("{node_id}@{address}");
        let mut channels = self.channels.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(channel) = channels.get(&key) {
            return Ok(channel.clone());
        }
        let config = identity.client_config(Some(node_id));
        let target = address.to_owned();
        let timeout = self.connect_timeout;
        let identity = identity.clone();
        let connector = tower::service_fn(move |_: http::Uri| {
            let (config, target) = (config.clone(), target.clone());
            let expired = identity.expired();
            async move {
                if let Some(why) = expired {
                    return Err(std::io::Error::new(std::io::ErrorKind::PermissionDenied, why));
                }
                let host = target.rsplit_once(':').map_or(target.as_str(), |(h, _)| h);
                let name = ServerName::try_from(host.trim_start_matches('[').trim_end_matches(']').to_owned())
                    .map_err(std::io::Error::other)?;
                let connect = async {
                    let tcp = tokio::net::TcpStream::connect(&target).await?;
                    tcp.set_nodelay(true)?;
                    let tcp = tokio::io::BufReader::with_capacity(TCP_READ_BUFFER, tcp);
                    tokio_rustls::TlsConnector::from(config).connect(name, tcp).await
                };
                let tls = tokio::time::timeout(timeout, connect).await.map_err(|_| {
                    std::io::Error::new(std::io::ErrorKind::TimedOut, "connect/TLS handshake timed out")
                })??;
                Ok::<_, std::io::Error>(TokioIo::new(tls))
            }
        });
        let channel = Endpoint::from_shared(format!("http://{address}"))?
            .connect_timeout(self.connect_timeout)
            .initial_stream_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONNECTION_WINDOW)
            .max_frame_size(MAX_FRAME)
            .http2_keep_alive_interval(Duration::from_secs(30))
            .keep_alive_timeout(Duration::from_secs(10))
            .connect_with_connector_lazy(connector);
        channels.insert(key, channel.clone());
        Ok(channel)
    }
}

/// Transfers in flight and done per peer, to spread load: a new transfer goes to the holder
/// with the fewest in flight, then the fewest done so far.
#[derive(Debug, Default)]
pub struct Load {
    /// node id -> (in flight, started so far). A std `Mutex`: held only to count.
    counts: Mutex<HashMap<String, (usize, u64)>>,
}

impl Load {
    /// Picks the least busy of `candidates` and counts a transfer against it until the returned
    /// lease is dropped. `None` when `candidates` is empty.
    pub fn pick<'a>(self: &Arc<Self>, candidates: &[&'a Peer]) -> Option<(&'a Peer, Lease)> {
        let mut counts = self.counts.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let chosen = candidates.iter().min_by_key(|p| counts.get(&p.node_id).copied().unwrap_or_default())?;
        let entry = counts.entry(chosen.node_id.clone()).or_default();
        entry.0 += 1;
        entry.1 += 1;
        Some((chosen, Lease { load: self.clone(), node_id: chosen.node_id.clone() }))
    }

    /// Transfers currently in flight from `node_id`.
    #[must_use]
    pub fn in_flight(&self, node_id: &str) -> usize {
        self.counts.lock().unwrap_or_else(std::sync::PoisonError::into_inner).get(node_id).map_or(0, |c| c.0)
    }
}

/// One transfer counted against a peer; dropping it ends the count.
#[derive(Debug)]
pub struct Lease {
    load: Arc<Load>,
    node_id: String,
}

impl Drop for Lease {
    fn drop(&mut self) {
        let mut counts = self.load.counts.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(entry) = counts.get_mut(&self.node_id) {
            entry.0 = entry.0.saturating_sub(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(id: &str) -> Peer {
        Peer { node_id: id.into(), address: format!("{id}:1"), channel: None }
    }

    #[test]
    fn picks_the_least_busy_holder() {
        let load = Arc::new(Load::default());
        let (a, b, c) = (peer("a"), peer("b"), peer("c"));
        let all = [&a, &b, &c];
        let (first, lease_a) = load.pick(&all).unwrap();
        assert_eq!(first.node_id, "a");
        let (second, _lease_b) = load.pick(&all).unwrap();
        assert_eq!(second.node_id, "b");
        let (third, _lease_c) = load.pick(&all).unwrap();
        assert_eq!(third.node_id, "c");
        drop(lease_a);
        assert_eq!(load.in_flight("a"), 0);
        // a has nothing in flight again: it is next.
        assert_eq!(load.pick(&all).unwrap().0.node_id, "a");
        assert!(load.pick(&[]).is_none());
    }
}
