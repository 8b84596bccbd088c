//! The coordinator's registry, from the agent's side: register, heartbeat, list live peers.
//!
//! A serving agent [`Coordinator::register`]s (node id + advertised address) with the join token
//! and receives the peer token its own service must accept, then keeps itself listed with
//! [`heartbeat_loop`]. When the coordinator answers a heartbeat with `known = false` (it
//! restarted and forgot us) or comes back after being unreachable, the loop registers again and
//! takes whatever new peer token it is given. `fetch` and `verify` only call
//! [`Coordinator::list_peers`].

use std::time::Duration;

use depot_proto::registry::registry_client::RegistryClient;
use depot_proto::registry::{HeartbeatRequest, ListPeersRequest, NodeReport, RegisterRequest};
use tonic::Code;
use tonic::codegen::InterceptedService;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};

use crate::auth::{Bearer, Secret, TokenSlot};
use crate::trust::ExtraCa;

/// Deadline of one registry call: the coordinator answers from memory.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a registry call failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RegistryError {
    /// The `--coordinator` value is not a usable URL.
    #[error(
        "invalid coordinator URL {url:?}: {reason} (expected e.g. http://127.0.0.1:9000, the `registry` value `depot serve --json` prints)"
    )]
    BadUrl {
        /// The URL given.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The coordinator refused the join token.
    #[error(
        "the coordinator at {url} refused the join token ({message}); pass the `join_token` that `depot serve` printed with --join-token or DEPOT_JOIN_TOKEN"
    )]
    JoinTokenRefused {
        /// The coordinator.
        url: String,
        /// The coordinator's explanation.
        message: String,
    },
    /// The endpoint answers, but not as a Depot registry.
    #[error(
        "{url} does not serve Depot's registry ({message}); is it the `registry` URL `depot serve --json` printed?"
    )]
    NotARegistry {
        /// The coordinator.
        url: String,
        /// The status message.
        message: String,
    },
    /// The coordinator cannot be reached or is overloaded; worth retrying.
    #[error("cannot reach the coordinator at {url}: {message}")]
    Unreachable {
        /// The coordinator.
        url: String,
        /// What went wrong.
        message: String,
    },
    /// The coordinator refused the request for another reason.
    #[error("the coordinator at {url} refused the request: {code:?}: {message}")]
    Refused {
        /// The coordinator.
        url: String,
        /// The gRPC status code.
        code: Code,
        /// The coordinator's explanation.
        message: String,
    },
}

impl RegistryError {
    /// Whether trying again later may succeed (the coordinator is down or restarting).
    #[must_use]
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Unreachable { .. })
    }

    fn from_status(url: &str, status: &tonic::Status) -> Self {
        let url = url.to_owned();
        let message = status_message(status);
        match status.code() {
            Code::Unauthenticated | Code::PermissionDenied => Self::JoinTokenRefused { url, message },
            Code::Unimplemented | Code::NotFound => Self::NotARegistry { url, message },
            Code::Unavailable | Code::DeadlineExceeded | Code::ResourceExhausted | Code::Aborted | Code::Cancelled => {
                Self::Unreachable { url, message }
            }
            // A non-gRPC answer (an HTTP error page, an S3 XML error) surfaces as UNKNOWN or
            // INTERNAL with the HTTP status in the message.
            Code::Unknown | Code::Internal if message.contains("HTTP status") || message.contains("content-type") => {
                Self::NotARegistry { url, message }
            }
            code => Self::Refused { url, code, message },
        }
    }
}

/// The message of a status, with the transport error behind it when there is one (tonic puts
/// "transport error" in the message and the useful part, e.g. "Connection refused", in the
/// source chain).
pub(crate) fn status_message(status: &tonic::Status) -> String {
    let mut message = status.message().to_owned();
    let mut source = std::error::Error::source(status);
    while let Some(err) = source {
        let text = err.to_string();
        if !message.contains(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
        source = err.source();
    }
    if message.is_empty() {
        message = format!("{:?}", status.code());
    }
    message
}

/// A live agent, as the coordinator lists it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PeerInfo {
    /// The agent's node id.
    pub node_id: String,
    /// `host:port` of its `NodeAgent` service.
    pub address: String,
    /// Milliseconds since it was last heard from.
    pub last_seen_ms: u64,
}

/// `ListPeers`' answer.
#[derive(Debug, Clone)]
pub struct PeerList {
    /// The live agents.
    pub peers: Vec<PeerInfo>,
    /// The credential to call them with.
    pub peer_token: Secret,
}

/// `Register`'s answer.
#[derive(Debug, Clone)]
pub struct Registration {
    /// The credential peers will present to us (and we to them).
    pub peer_token: Secret,
    /// How often to heartbeat.
    pub heartbeat_interval: Duration,
}

/// Builds the report sent with each heartbeat (jobs, holdings; see `crate::jobs`).
pub type Reporter = std::sync::Arc<dyn Fn() -> NodeReport + Send + Sync>;

/// A client of the coordinator's registry. Cheap to clone (one shared HTTP/2 connection).
#[derive(Clone)]
pub struct Coordinator {
    url: String,
    client: RegistryClient<InterceptedService<Channel, Bearer>>,
    /// What heartbeats carry besides the node's identity.
    reporter: Option<Reporter>,
}

impl std::fmt::Debug for Coordinator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Coordinator").field("url", &self.url).finish_non_exhaustive()
    }
}

impl Coordinator {
    /// A client of the registry at `url` (`http://` or `https://`), presenting `join_token`.
    /// Connects lazily: an unreachable coordinator shows up at the first call. Must be called
    /// within a Tokio runtime (the connection is driven by a task).
    ///
    /// # Errors
    /// [`RegistryError::BadUrl`] for a URL tonic cannot use.
    pub fn new(url: &str, join_token: Secret, ca: Option<&ExtraCa>) -> Result<Self, RegistryError> {
        let bad = |reason: String| RegistryError::BadUrl { url: url.to_owned(), reason };
        let full = if url.contains("://") { url.to_owned() } else { format!("http://{url}") };
        let mut endpoint = Endpoint::from_shared(full.clone())
            .map_err(|err| bad(err.to_string()))?
            .connect_timeout(Duration::from_secs(3))
            .timeout(CALL_TIMEOUT)
            .tcp_nodelay(true);
        if full.starts_with("https://") {
            let mut tls = ClientTlsConfig::new();
            tls = match ca {
                Some(ca) => tls.ca_certificate(tonic::transport::Certificate::from_pem(&ca.pem)),
                None => tls.with_native_roots(),
            };
            endpoint = endpoint.tls_config(tls).map_err(|err| bad(err.to_string()))?;
        } else if !full.starts_with("http://") {
            return Err(bad("the scheme must be http:// or https://".into()));
        }
        let client = RegistryClient::with_interceptor(endpoint.connect_lazy(), Bearer(join_token));
        Ok(Self { url: full, client, reporter: None })
    }

    /// Sends what `reporter` builds with every heartbeat.
    #[must_use]
    pub fn with_reporter(mut self, reporter: Reporter) -> Self {
        self.reporter = Some(reporter);
        self
    }

    /// The registry's URL.
    #[must_use]
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Announces this agent.
    ///
    /// # Errors
    /// [`RegistryError`]; `JoinTokenRefused` for a wrong join token.
    pub async fn register(&self, node_id: &str, address: &str) -> Result<Registration, RegistryError> {
        let response = self
            .client
            .clone()
            .register(RegisterRequest { node_id: node_id.to_owned(), address: address.to_owned() })
            .await
            .map_err(|status| RegistryError::from_status(&self.url, &status))?
            .into_inner();
        let interval_ms = if response.heartbeat_interval_ms == 0 { 5_000 } else { response.heartbeat_interval_ms };
        Ok(Registration {
            peer_token: Secret::new(response.peer_token),
            heartbeat_interval: Duration::from_millis(interval_ms),
        })
    }

    /// Keeps this agent listed; `Ok(false)` means the coordinator does not know it (register).
    ///
    /// # Errors
    /// [`RegistryError`].
    pub async fn heartbeat(&self, node_id: &str, address: &str) -> Result<bool, RegistryError> {
        let response = self
            .client
            .clone()
            .heartbeat(HeartbeatRequest {
                node_id: node_id.to_owned(),
                address: address.to_owned(),
                node_report: self.reporter.as_ref().map(|report| report()),
            })
            .await
            .map_err(|status| RegistryError::from_status(&self.url, &status))?;
        Ok(response.into_inner().known)
    }

    /// The live agents and the credential to call them with.
    ///
    /// # Errors
    /// [`RegistryError`].
    pub async fn list_peers(&self) -> Result<PeerList, RegistryError> {
        let response = self
            .client
            .clone()
            .list_peers(ListPeersRequest {})
            .await
            .map_err(|status| RegistryError::from_status(&self.url, &status))?
            .into_inner();
        let peers = response
            .peers
            .into_iter()
            .map(|p| PeerInfo { node_id: p.node_id, address: p.address, last_seen_ms: p.last_seen_ms })
            .collect();
        Ok(PeerList { peers, peer_token: Secret::new(response.peer_token) })
    }

    /// Registers, retrying transient failures with backoff for up to `patience`.
    ///
    /// # Errors
    /// The first non-retryable [`RegistryError`], or the last one once `patience` is spent.
    pub async fn register_patiently(
        &self,
        node_id: &str,
        address: &str,
        patience: Duration,
    ) -> Result<Registration, RegistryError> {
        let started = tokio::time::Instant::now();
        let mut delay = Duration::from_millis(100);
        loop {
            match self.register(node_id, address).await {
                Ok(registration) => return Ok(registration),
                Err(err) if err.is_retryable() && started.elapsed() + delay < patience => {
                    tracing::warn!(%err, "registration failed; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(2));
                }
                Err(err) => return Err(err),
            }
        }
    }
}

/// Keeps `node_id` registered until `shutdown` resolves: heartbeats every interval, registers
/// again when the coordinator has forgotten us or comes back after an outage, and stores each
/// new peer token in `tokens`. `registration` is the answer to the first `Register`.
pub async fn heartbeat_loop(
    coordinator: Coordinator,
    node_id: String,
    address: String,
    tokens: TokenSlot,
    registration: Registration,
    shutdown: impl Future<Output = ()>,
) {
    let mut interval = registration.heartbeat_interval;
    // After an outage the coordinator may be a new process: register instead of heartbeating.
    let mut must_register = false;
    let mut unreachable_since: Option<tokio::time::Instant> = None;
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => return,
            () = tokio::time::sleep(interval) => {}
        }
        let result = if must_register {
            coordinator.register(&node_id, &address).await.map(Some)
        } else {
            match coordinator.heartbeat(&node_id, &address).await {
                Ok(true) => Ok(None),
                Ok(false) => {
                    tracing::info!("the coordinator does not know this agent (it restarted?); registering again");
                    coordinator.register(&node_id, &address).await.map(Some)
                }
                Err(err) => Err(err),
            }
        };
        match result {
            Ok(registered) => {
                if let Some(registration) = registered {
                    tokens.set(registration.peer_token);
                    interval = registration.heartbeat_interval;
                    tracing::info!(node_id, address, "registered with the coordinator");
                }
                if let Some(since) = unreachable_since.take() {
                    tracing::info!(after = ?since.elapsed(), "the coordinator is reachable again");
                }
                must_register = false;
            }
            Err(err) => {
                if unreachable_since.is_none() {
                    tracing::warn!(%err, "heartbeat failed; will keep trying");
                    unreachable_since = Some(tokio::time::Instant::now());
                }
                must_register = true;
            }
        }
    }
}
