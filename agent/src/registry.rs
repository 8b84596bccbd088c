//! The coordinator's registry, from the agent's side: join, heartbeat, renew, list peers, leave.
//!
//! A serving agent [`Coordinator::join`]s (node id, advertised address, CSR) with the join token
//! — the one time it sends it — and gets its certificate ([`Identity`]) and a node secret that
//! authenticates every later call. [`heartbeat_loop`] keeps it listed and brings the revoked
//! serials; [`renewal_loop`] renews the certificate at two thirds of its lifetime. A
//! coordinator restarted on the same archive remembers joined nodes, so neither needs the join
//! token again. `fetch` and `verify` join as client-only runs the first time they need peers
//! ([`Coordinator::client_identity`]).

use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use depot_proto::registry::registry_client::RegistryClient;
use depot_proto::registry::{
    DeregisterNodeRequest, HeartbeatRequest, ListPeersRequest, NodeReport, RegisterRequest, RenewNodeCertificateRequest,
};
use rcgen::KeyPair;
use tonic::Code;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};

use crate::auth::Secret;
use crate::identity::{Identity, IdentityError};
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
    /// The coordinator no longer knows this node (it was removed, or this is another archive).
    #[error("the coordinator at {url} refused node {node}: {message}")]
    NotJoined {
        /// The coordinator.
        url: String,
        /// This node.
        node: String,
        /// The coordinator's explanation (names the fix).
        message: String,
    },
    /// The key or the certificate could not be made or used.
    #[error(transparent)]
    Identity(#[from] IdentityError),
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

    /// Whether the coordinator refused this node's credential (removed, or another archive).
    #[must_use]
    pub fn is_not_joined(&self) -> bool {
        matches!(self, Self::NotJoined { .. })
    }

    /// A refusal of a node-secret call (after the join).
    fn from_node_status(url: &str, node: &str, status: &tonic::Status) -> Self {
        if status.code() == Code::Unauthenticated {
            return Self::NotJoined { url: url.to_owned(), node: node.to_owned(), message: status_message(status) };
        }
        Self::from_status(url, status)
    }

    fn from_status(url: &str, status: &tonic::Status) -> Self {
        let url = url.to_owned();
        let message = status_message(status);
        match status.code() {
            Code::Unauthenticated => Self::JoinTokenRefused { url, message },
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
    /// Serials (hex) of revoked certificates.
    pub revoked: Vec<String>,
}

/// A joined node.
#[derive(Debug, Clone)]
pub struct Joined {
    /// Its certificate and the CA.
    pub identity: Arc<Identity>,
    /// How often to heartbeat.
    pub heartbeat_interval: Duration,
    /// The coordinator's S3 bucket and key pair, for this node's S3 view.
    pub s3: Option<depot_proto::registry::S3Credentials>,
}

/// Builds the report sent with each heartbeat (jobs, holdings; see `crate::jobs`).
pub type Reporter = Arc<dyn Fn() -> NodeReport + Send + Sync>;

/// A client of the coordinator's registry. Cheap to clone (one shared HTTP/2 connection; the
/// node credential and identity are shared by the clones).
#[derive(Clone)]
pub struct Coordinator {
    url: String,
    client: RegistryClient<Channel>,
    join_token: Secret,
    /// This node's id and node secret, once joined.
    session: Arc<RwLock<Option<(String, Secret)>>>,
    identity: Arc<tokio::sync::OnceCell<Arc<Identity>>>,
    /// What heartbeats carry besides the node's identity.
    reporter: Option<Reporter>,
}

impl std::fmt::Debug for Coordinator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Coordinator").field("url", &self.url).finish_non_exhaustive()
    }
}

/// Whether `host` (from a URL) is a loopback name or address.
fn is_loopback(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost") || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

impl Coordinator {
    /// Whether the coordinator is plain `http://` on this machine: a cluster without TLS,
    /// where the S3 view is plain HTTP too by default.
    #[must_use]
    pub fn plain_on_loopback(&self) -> bool {
        self.url.starts_with("http://")
            && self.url.parse::<http::Uri>().ok().and_then(|u| u.host().map(is_loopback)).unwrap_or(false)
    }

    /// A client of the registry at `url`, presenting `join_token` when joining. `https://` is
    /// verified against `ca` (else the system roots); plain `http://` is accepted only for a
    /// loopback coordinator (see [`Coordinator::with_insecure`]). Connects lazily: an
    /// unreachable coordinator shows up at the first call. Must be called within a Tokio
    /// runtime (the connection is driven by a task).
    ///
    /// # Errors
    /// [`RegistryError::BadUrl`] for a URL tonic cannot use, or plaintext to a remote host.
    pub fn new(url: &str, join_token: Secret, ca: Option<&ExtraCa>) -> Result<Self, RegistryError> {
        Self::with_insecure(url, join_token, ca, false)
    }

    /// As [`Coordinator::new`]; `insecure` also accepts `http://` to a host that is not
    /// loopback (`--insecure-coordinator`), with a warning.
    ///
    /// # Errors
    /// [`RegistryError::BadUrl`].
    pub fn with_insecure(
        url: &str,
        join_token: Secret,
        ca: Option<&ExtraCa>,
        insecure: bool,
    ) -> Result<Self, RegistryError> {
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
        } else if full.starts_with("http://") {
            let host = endpoint.uri().host().unwrap_or_default().to_owned();
            if !is_loopback(&host) {
                if !insecure {
                    return Err(bad(format!(
                        "plain http:// is accepted only for a coordinator on this machine (loopback), and {host} is not: \
                         use the https:// registry URL `depot serve --advertise` prints, with its CA (--ca-file or \
                         SSL_CERT_FILE=ARCHIVE/.depot/tls/bundle.pem), or accept the risk with --insecure-coordinator"
                    )));
                }
                tracing::warn!(
                    url = full,
                    "--insecure-coordinator: the join token and this node's secret cross the network in clear, and the coordinator is not authenticated"
                );
            }
        } else {
            return Err(bad("the scheme must be http:// or https://".into()));
        }
        Ok(Self {
            url: full,
            client: RegistryClient::new(endpoint.connect_lazy()),
            join_token,
            session: Arc::new(RwLock::new(None)),
            identity: Arc::new(tokio::sync::OnceCell::new()),
            reporter: None,
        })
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

    /// This node's identity, once joined.
    #[must_use]
    pub fn identity(&self) -> Option<Arc<Identity>> {
        self.identity.get().cloned()
    }

    fn with_join_token<T>(&self, message: T) -> Result<tonic::Request<T>, RegistryError> {
        let mut request = tonic::Request::new(message);
        let value = self.join_token.bearer().map_err(|s| RegistryError::BadUrl {
            url: self.url.clone(),
            reason: format!("the join token: {}", s.message()),
        })?;
        request.metadata_mut().insert("authorization", value);
        Ok(request)
    }

    /// A request carrying the node credential; the node id too.
    fn with_session<T>(&self, message: T) -> Result<(tonic::Request<T>, String), RegistryError> {
        let session = self.session.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
        let Some((node, secret)) = session else {
            return Err(RegistryError::NotJoined {
                url: self.url.clone(),
                node: String::new(),
                message: "this process has not joined the cluster yet".into(),
            });
        };
        let mut request = tonic::Request::new(message);
        let bad = |_| RegistryError::NotJoined {
            url: self.url.clone(),
            node: node.clone(),
            message: "the node id or secret cannot be sent in a header".into(),
        };
        request.metadata_mut().insert("authorization", secret.bearer().map_err(|_| ()).map_err(bad)?);
        request.metadata_mut().insert("depot-node", node.parse().map_err(|_| ()).map_err(bad)?);
        Ok((request, node))
    }

    /// Joins the cluster as `node_id` at `address` with `key` (its CSR goes to the coordinator),
    /// retrying transient failures with backoff for up to `patience`. `client_only` for a
    /// fetch/verify run.
    ///
    /// # Errors
    /// [`RegistryError`]; `JoinTokenRefused` for a wrong join token.
    pub async fn join(
        &self,
        node_id: &str,
        address: &str,
        key: KeyPair,
        client_only: bool,
        patience: Duration,
    ) -> Result<Joined, RegistryError> {
        let csr = Identity::csr(node_id, &key)?;
        let message =
            RegisterRequest { node_id: node_id.to_owned(), address: address.to_owned(), csr_pem: csr, client_only };
        let started = tokio::time::Instant::now();
        let mut delay = Duration::from_millis(100);
        let response = loop {
            let result = self
                .client
                .clone()
                .register(self.with_join_token(message.clone())?)
                .await
                .map_err(|status| RegistryError::from_status(&self.url, &status));
            match result {
                Ok(response) => break response.into_inner(),
                Err(err) if err.is_retryable() && started.elapsed() + delay < patience => {
                    tracing::warn!(%err, "joining failed; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(2));
                }
                Err(err) => return Err(err),
            }
        };
        let identity = Arc::new(Identity::new(node_id, key, &response.certificate_pem, &response.ca_pem)?);
        identity.set_revoked(response.revoked_serials);
        let skew = identity.clock_skew();
        if skew > Duration::from_secs(30) {
            tracing::warn!(
                node_id,
                skew_secs = skew.as_secs(),
                "this machine's clock differs from the coordinator's by more than 30 s: certificates may look expired or not yet valid to peers; fix the clock (NTP)"
            );
        }
        *self.session.write().unwrap_or_else(std::sync::PoisonError::into_inner) =
            Some((node_id.to_owned(), Secret::new(response.node_secret)));
        let _ = self.identity.set(identity.clone());
        let interval_ms = if response.heartbeat_interval_ms == 0 { 5_000 } else { response.heartbeat_interval_ms };
        let s3 = response.s3_credentials.filter(|c| !c.access_key.is_empty());
        Ok(Joined { identity, heartbeat_interval: Duration::from_millis(interval_ms), s3 })
    }

    /// The identity of this process for calling peers: the serving agent's, or — for a
    /// fetch/verify run — a client-only certificate obtained the first time it is needed
    /// (as `SELF#run-XXXXXXXX`, an in-memory key, renewed in the background).
    ///
    /// # Errors
    /// [`RegistryError`] from the join.
    pub async fn client_identity(&self, self_id: Option<&str>) -> Result<Arc<Identity>, RegistryError> {
        let identity = self
            .identity
            .get_or_try_init(|| async {
                let base = self_id.map_or_else(crate::node::host_name, str::to_owned);
                let base: String = base
                    .chars()
                    .map(|c| if c.is_ascii_alphanumeric() || "._-".contains(c) { c } else { '-' })
                    .collect();
                let run = format!("{base}#run-{:08x}", rand::random::<u32>());
                let key = KeyPair::generate().map_err(IdentityError::from)?;
                let joined = self.join(&run, "", key, true, Duration::from_secs(10)).await?;
                tokio::spawn(renewal_loop(self.clone(), joined.identity.clone()));
                Ok::<_, RegistryError>(joined.identity)
            })
            .await?;
        Ok(identity.clone())
    }

    /// Keeps this node listed; brings the revoked serials into its identity.
    ///
    /// # Errors
    /// [`RegistryError`]; `NotJoined` when the node was removed.
    pub async fn heartbeat(&self, node_id: &str, address: &str) -> Result<(), RegistryError> {
        let (request, node) = self.with_session(HeartbeatRequest {
            node_id: node_id.to_owned(),
            address: address.to_owned(),
            node_report: self.reporter.as_ref().map(|report| report()),
        })?;
        let response = self
            .client
            .clone()
            .heartbeat(request)
            .await
            .map_err(|status| RegistryError::from_node_status(&self.url, &node, &status))?
            .into_inner();
        if let Some(identity) = self.identity() {
            identity.set_revoked(response.revoked_serials);
        }
        Ok(())
    }

    /// The live agents (and the revoked serials, which also go into this node's identity).
    ///
    /// # Errors
    /// [`RegistryError`].
    pub async fn list_peers(&self) -> Result<PeerList, RegistryError> {
        let (request, node) = self.with_session(ListPeersRequest {})?;
        let response = self
            .client
            .clone()
            .list_peers(request)
            .await
            .map_err(|status| RegistryError::from_node_status(&self.url, &node, &status))?
            .into_inner();
        let peers = response
            .peers
            .into_iter()
            .map(|p| PeerInfo { node_id: p.node_id, address: p.address, last_seen_ms: p.last_seen_ms })
            .collect();
        if let Some(identity) = self.identity() {
            identity.set_revoked(response.revoked_serials.iter().cloned());
        }
        Ok(PeerList { peers, revoked: response.revoked_serials })
    }

    /// Renews this node's certificate (same key) and installs it.
    ///
    /// # Errors
    /// [`RegistryError`].
    pub async fn renew(&self, identity: &Identity) -> Result<(), RegistryError> {
        let csr = identity.renewal_csr()?;
        let (request, node) =
            self.with_session(RenewNodeCertificateRequest { node_id: identity.node_id().to_owned(), csr_pem: csr })?;
        let response = self
            .client
            .clone()
            .renew_node_certificate(request)
            .await
            .map_err(|status| RegistryError::from_node_status(&self.url, &node, &status))?
            .into_inner();
        identity.install(&response.certificate_pem)?;
        Ok(())
    }

    /// Leaves the peer list at once (a clean stop).
    ///
    /// # Errors
    /// [`RegistryError`].
    pub async fn deregister(&self) -> Result<(), RegistryError> {
        let (request, node) = self.with_session(DeregisterNodeRequest::default())?;
        let mut request = request;
        request.get_mut().node_id.clone_from(&node);
        self.client
            .clone()
            .deregister_node(request)
            .await
            .map_err(|status| RegistryError::from_node_status(&self.url, &node, &status))?;
        Ok(())
    }
}

/// Renews `identity` at two thirds of each certificate's lifetime, forever (the task ends with
/// the runtime). A failed renewal is retried every few seconds, with a warning.
pub async fn renewal_loop(coordinator: Coordinator, identity: Arc<Identity>) {
    loop {
        let wait = identity.renew_at().duration_since(SystemTime::now()).unwrap_or_default();
        tokio::time::sleep(wait).await;
        match coordinator.renew(&identity).await {
            Ok(()) => tracing::info!(node_id = identity.node_id(), "certificate renewed"),
            Err(err) => {
                let left = identity.not_after().duration_since(SystemTime::now()).unwrap_or_default();
                tracing::warn!(%err, expires_in = ?left, "certificate renewal failed; retrying");
                tokio::time::sleep((left / 10).clamp(Duration::from_millis(200), Duration::from_secs(30))).await;
            }
        }
    }
}

/// Keeps `node_id` listed until `shutdown` resolves: heartbeats every `interval` (bringing in
/// the revoked serials). A coordinator that is down is waited for; one that no longer knows
/// this node (removed with `depot nodes remove`) ends the loop with that error.
///
/// # Errors
/// [`RegistryError::NotJoined`].
pub async fn heartbeat_loop(
    coordinator: Coordinator,
    node_id: String,
    address: String,
    interval: Duration,
    shutdown: impl Future<Output = ()>,
) -> Result<(), RegistryError> {
    let mut unreachable_since: Option<tokio::time::Instant> = None;
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => return Ok(()),
            () = tokio::time::sleep(interval) => {}
        }
        match coordinator.heartbeat(&node_id, &address).await {
            Ok(()) => {
                if let Some(since) = unreachable_since.take() {
                    tracing::info!(after = ?since.elapsed(), "the coordinator is reachable again");
                }
            }
            Err(err) if err.is_not_joined() => return Err(err),
            Err(err) => {
                if unreachable_since.is_none() {
                    tracing::warn!(%err, "heartbeat failed; will keep trying");
                    unreachable_since = Some(tokio::time::Instant::now());
                }
            }
        }
    }
}
