//! Running a node agent (`serve`): bind, register with the coordinator, serve the root, keep
//! heartbeating, stop cleanly.
//!
//! The agent joins *before* it reports itself ready: until it holds a certificate from the
//! coordinator it can neither serve TLS nor tell a peer from a stranger, so a ready agent is one
//! that peers can already use. On a clean stop it deregisters, leaving the peer list at once.
//! Removed from the cluster (`depot nodes remove`), it stops with an error saying so. Its node id is written to `<root>/.depot/node-id`, which is how `fetch` on the
//! same root knows which node it runs on (and does not count itself as a peer).

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use depot_fs::{OpenRootError, Root};
use serde::Serialize;

use crate::auth::Secret;
use crate::identity::{self, IdentityError};
use crate::registry::{Coordinator, RegistryError, heartbeat_loop, renewal_loop};
use crate::service::{self, NodeAgentService, ServeStats};
use crate::trust::ExtraCa;

/// File under the root's `.depot/` holding the node id of the agent serving that root.
pub const NODE_ID_FILE: &str = "node-id";

/// How long `serve` waits for the coordinator at start before giving up.
const REGISTER_PATIENCE: Duration = Duration::from_secs(30);

/// How long in-flight transfers may continue after a stop is requested.
const DRAIN_LIMIT: Duration = Duration::from_secs(5);

/// Everything `serve` needs.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// The directory served.
    pub root: std::path::PathBuf,
    /// Address to bind (`127.0.0.1:0` picks a free port).
    pub listen: String,
    /// `host:port` peers should use; default: the bound address.
    pub advertise: Option<String>,
    /// This node's id; default: the one recorded for this root, else the host name.
    pub node_id: Option<String>,
    /// The registry's URL.
    pub coordinator: String,
    /// The join token.
    pub join_token: Secret,
    /// Extra CA for an HTTPS coordinator.
    pub ca: Option<ExtraCa>,
    /// Accept a plaintext coordinator that is not on loopback (warned about).
    pub insecure_coordinator: bool,
    /// `ReadFile` chunk size.
    pub chunk_size: usize,
    /// Cap on the bytes per second served to peers, all streams together.
    pub max_rate: Option<u64>,
    /// Connection caps and timeouts against hostile clients.
    pub limits: depot_net::Limits,
    /// Where to serve metrics and health checks over HTTP (`--metrics`).
    pub metrics: Option<String>,
    /// The S3 view of the backup (`--s3-listen`).
    pub s3: Option<S3Options>,
}

/// When the S3 view serves HTTPS (`--s3-tls`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum ViewTls {
    /// HTTPS unless the coordinator is plain `http://` on loopback (a cluster without TLS),
    /// as `depot serve` decides for itself.
    #[default]
    Auto,
    /// Always HTTPS.
    On,
    /// Always plain HTTP (the view is then for clients on this machine only).
    Off,
}

/// The S3 view (`--s3-listen` and friends).
#[derive(Debug, Clone)]
pub struct S3Options {
    /// Address to bind.
    pub listen: String,
    /// When to serve HTTPS, with this node's certificate from the coordinator's CA.
    pub tls: ViewTls,
    /// The bucket, key prefix, cache, manifest and archive; `root` is the agent's.
    pub view: ViewSettings,
    /// The access key clients sign with; default: the one the coordinator hands out.
    pub access_key: Option<String>,
    /// Its secret; default: the coordinator's.
    pub secret_key: Option<Secret>,
}

/// [`crate::view::ViewConfig`] before the root is opened.
#[derive(Debug, Clone)]
pub struct ViewSettings {
    /// The bucket; default: the coordinator's.
    pub bucket: Option<String>,
    /// Key prefix; default: the root's directory name.
    pub prefix: Option<String>,
    /// Cache directory; default `ROOT/.depot/view/cache`.
    pub cache_dir: Option<std::path::PathBuf>,
    /// Cache budget in bytes.
    pub cache_max: Option<u64>,
    /// Where the manifest is; default `ROOT/backupmeta`.
    pub meta: Option<crate::manifest::ManifestSource>,
    /// Key of an encrypted backup.
    pub crypter: Option<crate::manifest::CrypterKey>,
    /// Archive read when no live node holds a file.
    pub archive: Option<crate::storage::Storage>,
}

/// A started agent, as reported once ready (`--json` prints it).
#[derive(Debug, Clone, Serialize)]
pub struct Ready {
    /// URL of the `NodeAgent` service.
    pub endpoint: String,
    /// The registered node id.
    pub node_id: String,
    /// The advertised `host:port`.
    pub address: String,
    /// The root served.
    pub root: String,
    /// `http://host:port` of the metrics endpoint, with `--metrics`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metrics: Option<String>,
    /// The S3 view, with `--s3-listen`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub s3: Option<S3Ready>,
}

/// Where the S3 view answers.
#[derive(Debug, Clone, Serialize)]
pub struct S3Ready {
    /// `http://127.0.0.1:port`, or `https://` with TLS.
    pub endpoint: String,
    /// With TLS: the cluster's CA (PEM) that signed the view's certificate.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<std::path::PathBuf>,
    /// With TLS: the system roots plus that CA, for `SSL_CERT_FILE` (TiKV, BR) or
    /// `AWS_CA_BUNDLE`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bundle_file: Option<std::path::PathBuf>,
    /// The bucket.
    pub bucket: String,
    /// The backup's key prefix (empty or ending in `/`).
    pub prefix: String,
    /// The storage URL to give BR on this node.
    pub url: String,
}

/// What a stopped agent did.
#[derive(Debug, Clone, Serialize)]
pub struct ServeReport {
    /// `ReadFile` streams served.
    pub reads: u64,
    /// Bytes sent.
    pub bytes_sent: u64,
    /// Requests refused for unsafe names.
    pub refused: u64,
    /// Seconds it ran.
    pub seconds: f64,
    /// What the S3 view served, with `--s3-listen`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub s3: Option<crate::view::ViewReport>,
}

/// Why the agent could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NodeError {
    /// The root cannot be used.
    #[error(transparent)]
    Root(#[from] OpenRootError),
    /// The listen address cannot be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The advertised address cannot be worked out.
    #[error("{0}")]
    Advertise(String),
    /// Registration failed, or the node was removed from the cluster.
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// The S3 view cannot start.
    #[error("the S3 view cannot start: {0}")]
    View(String),
    /// The node key cannot be made or read.
    #[error(transparent)]
    Identity(#[from] IdentityError),
    /// The connection loop failed.
    #[error("the agent's server failed: {0}")]
    Io(#[from] std::io::Error),
}

/// The machine's host name (Linux), for default node ids.
#[must_use]
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok().filter(|s| !s.is_empty()))
        .unwrap_or_else(|| "localhost".to_owned())
}

/// The node id recorded for `root` by the agent serving it, if any.
#[must_use]
pub fn recorded_node_id(root: &Path) -> Option<String> {
    std::fs::read_to_string(root.join(depot_fs::STATE_DIR).join(NODE_ID_FILE))
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
}

/// The node id `fetch` uses by default: the serving agent's for this root, else the host name.
#[must_use]
pub fn default_node_id(root: &Path) -> String {
    recorded_node_id(root).unwrap_or_else(host_name)
}

/// The address peers should dial: `advertise` if given, else the bound address; an
/// unspecified bind address (`0.0.0.0`) is replaced by the host name.
fn advertised(bound: SocketAddr, advertise: Option<&str>) -> Result<String, NodeError> {
    match advertise {
        Some(a) if a.rsplit_once(':').is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok()) => {
            Ok(a.to_owned())
        }
        Some(a) => Err(NodeError::Advertise(format!("--advertise {a:?} is not HOST:PORT (e.g. 10.0.0.5:7070)"))),
        None if bound.ip().is_unspecified() => Ok(format!("{}:{}", host_name(), bound.port())),
        None => Ok(match bound.ip() {
            IpAddr::V6(ip) => format!("[{ip}]:{}", bound.port()),
            IpAddr::V4(ip) => format!("{ip}:{}", bound.port()),
        }),
    }
}

/// Why the serving loop ended.
enum Stopped {
    Server(Result<std::io::Result<()>, tokio::task::JoinError>),
    Heartbeats(Result<Result<(), RegistryError>, tokio::task::JoinError>),
    Asked,
}

/// Runs the agent until `shutdown` resolves. `on_ready` is called once it is registered and
/// serving.
///
/// # Errors
/// [`NodeError`] when it cannot start (root, bind, registration) or the server fails.
pub async fn serve(
    options: ServeOptions,
    on_ready: impl FnOnce(&Ready),
    shutdown: impl Future<Output = ()>,
) -> Result<ServeReport, NodeError> {
    let started = Instant::now();
    let root = Root::open(&options.root)?;
    let node_id = options.node_id.clone().or_else(|| recorded_node_id(root.dir())).unwrap_or_else(host_name);
    let listener = tokio::net::TcpListener::bind(&options.listen)
        .await
        .map_err(|source| NodeError::Bind { addr: options.listen.clone(), source })?;
    let bound = listener.local_addr().map_err(|source| NodeError::Bind { addr: options.listen.clone(), source })?;
    let address = advertised(bound, options.advertise.as_deref())?;

    let metrics_listener = match &options.metrics {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|source| NodeError::Bind { addr: format!("{addr} (--metrics)"), source })?,
        ),
        None => None,
    };
    let s3_listener = match &options.s3 {
        Some(s3) => Some(
            tokio::net::TcpListener::bind(&s3.listen)
                .await
                .map_err(|source| NodeError::Bind { addr: format!("{} (--s3-listen)", s3.listen), source })?,
        ),
        None => None,
    };
    let report_root = root.dir().to_path_buf();
    // The view, once started: its endpoint and counters ride on every heartbeat.
    let view_slot: Arc<std::sync::OnceLock<StartedView>> = Arc::default();
    let coordinator = Coordinator::with_insecure(
        &options.coordinator,
        options.join_token.clone(),
        options.ca.as_ref(),
        options.insecure_coordinator,
    )?
    .with_reporter(Arc::new({
        let view = Arc::clone(&view_slot);
        move || {
            let mut report = crate::jobs::node_report(&report_root);
            report.view = view.get().map(StartedView::wire);
            report
        }
    }));
    let key = identity::node_key(&root.state_dir())?;
    let joined = coordinator.join(&node_id, &address, key, false, REGISTER_PATIENCE).await?;
    let identity = joined.identity.clone();
    let recorded = std::fs::create_dir_all(root.state_dir())
        .and_then(|()| std::fs::write(root.state_dir().join(NODE_ID_FILE), format!("{node_id}\n")));
    if let Err(err) = recorded {
        tracing::warn!(%err, "cannot record the node id under .depot/");
    }

    let service =
        NodeAgentService::new(root.clone()).with_chunk_size(options.chunk_size).with_rate_limit(options.max_rate);
    let stats: Arc<ServeStats> = service.stats();
    let metrics_url = metrics_listener.as_ref().and_then(|l| l.local_addr().ok()).map(|a| format!("http://{a}"));
    let metrics_task = metrics_listener.map(|listener| {
        let state = root.state_dir();
        let ready: crate::metrics::ReadyCheck = Arc::new(move || {
            // Ready: the root's state directory takes a file (fetches and checkpoints need it).
            let probe = state.join(format!("readyz-{}.tmp", std::process::id()));
            std::fs::write(&probe, b"").map_err(|e| format!("{} is not writable: {e}", state.display()))?;
            let _ = std::fs::remove_file(&probe);
            Ok(())
        });
        tokio::spawn(crate::metrics::serve(listener, crate::metrics::Source::Serve(Arc::clone(&stats)), ready))
    });
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let limits = options.limits;
    let server = {
        let mut stop_rx = stop_rx.clone();
        let identity = identity.clone();
        tokio::spawn(async move {
            service::serve(listener, service, identity, limits, async move {
                let _ = stop_rx.wait_for(|stop| *stop).await;
            })
            .await
        })
    };
    let view = match (&options.s3, s3_listener) {
        (Some(s3), Some(listener)) => {
            let directory = crate::peer::PeerDirectory::new(coordinator.clone(), Some(node_id.clone()));
            let reader = crate::peer::PeerReader::new(root.clone(), directory);
            let mut stop_rx = stop_rx.clone();
            let tls = match s3.tls {
                ViewTls::Off => None,
                ViewTls::Auto if coordinator.plain_on_loopback() => None,
                ViewTls::On | ViewTls::Auto => Some(&identity),
            };
            let port = ViewPort { listener, limits, tls };
            let (started, task) = start_view(s3, joined.s3.as_ref(), &root, &reader, port, async move {
                let _ = stop_rx.wait_for(|stop| *stop).await;
            })?;
            let _ = view_slot.set(started);
            Some(task)
        }
        _ => None,
    };
    let heartbeats = {
        let mut stop_rx = stop_rx.clone();
        tokio::spawn(heartbeat_loop(
            coordinator.clone(),
            node_id.clone(),
            address.clone(),
            joined.heartbeat_interval,
            async move {
                let _ = stop_rx.wait_for(|stop| *stop).await;
            },
        ))
    };
    let renewals = tokio::spawn(renewal_loop(coordinator.clone(), identity.clone()));
    let ready = Ready {
        endpoint: format!("https://{address}"),
        node_id: node_id.clone(),
        address: address.clone(),
        root: root.dir().display().to_string(),
        metrics: metrics_url,
        s3: view_slot.get().map(|v| v.ready.clone()),
    };
    tracing::info!(node_id, address, root = %root.dir().display(), "serving (mutual TLS)");
    on_ready(&ready);

    tokio::pin!(server);
    tokio::pin!(heartbeats);
    let outcome = tokio::select! {
        result = &mut server => Stopped::Server(result),
        result = &mut heartbeats => Stopped::Heartbeats(result),
        () = shutdown => Stopped::Asked,
    };
    let result = match outcome {
        Stopped::Server(result) => result,
        Stopped::Heartbeats(result) => {
            server.abort();
            renewals.abort();
            let err = match result {
                Ok(Err(err)) => err,
                Ok(Ok(())) => return Err(NodeError::Advertise("the heartbeat loop ended".into())),
                Err(join) => return Err(NodeError::Advertise(format!("the heartbeat task failed: {join}"))),
            };
            tracing::error!(%err, "stopping: the coordinator no longer accepts this node");
            return Err(err.into());
        }
        Stopped::Asked => {
            tracing::info!("stopping: no new requests; in-flight transfers get {DRAIN_LIMIT:?}");
            let _ = stop_tx.send(true);
            // Leave the peer list now, not after three missed heartbeats.
            match tokio::time::timeout(Duration::from_secs(2), coordinator.deregister()).await {
                Ok(Ok(())) => tracing::info!("deregistered"),
                Ok(Err(err)) => {
                    tracing::warn!(%err, "could not deregister; peers drop this node after three heartbeats")
                }
                Err(_) => tracing::warn!("deregistering timed out; peers drop this node after three heartbeats"),
            }
            match tokio::time::timeout(DRAIN_LIMIT, &mut server).await {
                Ok(result) => result,
                Err(_) => {
                    tracing::warn!("in-flight transfers did not finish in time; stopping anyway");
                    server.abort();
                    Ok(Ok(()))
                }
            }
        }
    };
    let _ = stop_tx.send(true);
    let _ = heartbeats.await;
    renewals.abort();
    let s3_report = match view {
        Some(view) => {
            let _ = view.await;
            view_slot.get().map(|v| v.view.report())
        }
        None => None,
    };
    if let Some(task) = metrics_task {
        task.abort();
    }
    match result {
        Ok(Ok(())) => {}
        Ok(Err(err)) => return Err(err.into()),
        Err(join) => tracing::error!(%join, "server task failed"),
    }
    Ok(ServeReport {
        reads: stats.reads.load(Ordering::Relaxed),
        bytes_sent: stats.bytes_sent.load(Ordering::Relaxed),
        refused: stats.refused.load(Ordering::Relaxed),
        seconds: started.elapsed().as_secs_f64(),
        s3: s3_report,
    })
}

/// A running S3 view.
struct StartedView {
    view: Arc<crate::view::View>,
    ready: S3Ready,
    /// The S3 layer's counters (bytes served).
    stats: Arc<depot_s3::stats::Stats>,
    port: u16,
    tls: bool,
}

impl StartedView {
    /// What the heartbeat carries: where the view answers and what it served.
    fn wire(&self) -> depot_proto::registry::ViewReport {
        let report = self.view.report();
        depot_proto::registry::ViewReport {
            scheme: if self.tls { "https" } else { "http" }.to_owned(),
            port: u32::from(self.port),
            bucket: self.ready.bucket.clone(),
            prefix: self.ready.prefix.clone(),
            ca_bundle: self.ready.bundle_file.as_ref().map(|p| p.display().to_string()).unwrap_or_default(),
            local_reads: report.local,
            cache_hits: report.cached,
            peer_reads: report.fetched - report.from_archive,
            archive_reads: report.from_archive,
            missing: report.missing,
            bytes_served: self.stats.summary().bytes_read,
            bytes_fetched: report.fetched_bytes,
            cache_bytes: report.cache.bytes,
            cache_max: report.cache.max.unwrap_or(0),
            cache_files: report.cache.files as u64,
            evictions: report.cache.evicted,
        }
    }
}

/// Where and how the view listens.
struct ViewPort<'a> {
    listener: tokio::net::TcpListener,
    limits: depot_net::Limits,
    /// The node identity whose certificate serves HTTPS; `None`: plain HTTP.
    tls: Option<&'a Arc<crate::identity::Identity>>,
}

/// Builds the view over `root` and serves it with `depot-s3` on `listener`.
fn start_view(
    s3: &S3Options,
    handed: Option<&depot_proto::registry::S3Credentials>,
    root: &Root,
    reader: &crate::peer::PeerReader,
    port: ViewPort<'_>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(StartedView, tokio::task::JoinHandle<()>), NodeError> {
    let ViewPort { listener, limits, tls } = port;
    let settings = &s3.view;
    // The flags win; by default the view takes what the coordinator handed over the
    // authenticated channel, so one URL and key pair work on every node.
    let missing = |what: &str| {
        NodeError::View(format!(
            "no {what}: the coordinator handed none (an older `depot serve`?); give --s3-bucket, --s3-access-key and --s3-secret-key"
        ))
    };
    let bucket = match (&settings.bucket, handed) {
        (Some(bucket), _) => bucket.clone(),
        (None, Some(c)) if !c.bucket.is_empty() => c.bucket.clone(),
        _ => return Err(missing("bucket")),
    };
    let access_key = match (&s3.access_key, handed) {
        (Some(key), _) => key.clone(),
        (None, Some(c)) => c.access_key.clone(),
        _ => return Err(missing("access key")),
    };
    let secret_key = match (&s3.secret_key, handed) {
        (Some(secret), _) => secret.expose().to_owned(),
        (None, Some(c)) => c.secret_key.clone(),
        _ => return Err(missing("secret key")),
    };
    let prefix = match &settings.prefix {
        Some(p) => p.trim_matches('/').to_owned(),
        None => root.dir().file_name().and_then(|n| n.to_str()).unwrap_or_default().to_owned(),
    };
    let prefix = if prefix.is_empty() { prefix } else { format!("{prefix}/") };
    let state = root.state_dir().join("view");
    let config = crate::view::ViewConfig {
        bucket: bucket.clone(),
        prefix: prefix.clone(),
        root: root.clone(),
        cache_dir: settings.cache_dir.clone().unwrap_or_else(|| state.join("cache")),
        cache_max: settings.cache_max,
        writes_dir: state.join("writes"),
        meta: settings.meta.clone(),
        crypter: settings.crypter.clone(),
        archive: settings.archive.clone(),
    };
    let view = Arc::new(crate::view::View::new(config, reader).map_err(|e| NodeError::View(e.to_string()))?);
    let stats = Arc::new(depot_s3::stats::Stats::default());
    let depot = depot_s3::s3::Depot::over(
        Arc::clone(&view) as Arc<dyn depot_s3::storage::Storage>,
        view.writes(),
        Arc::clone(&stats),
        "us-east-1".to_owned(),
    );
    let auth = depot_s3::auth::OneKey::new(
        access_key,
        s3s::auth::SecretKey::from(secret_key),
        "use the AWS_ACCESS_KEY_ID `depot serve` printed (every agent's view takes the coordinator's key)",
    );
    let service = depot_s3::http::service(depot, auth, |_| {});
    let bound = listener.local_addr().map_err(|e| NodeError::View(e.to_string()))?;
    // The address a client on this machine dials (a wildcard bind answers on loopback too).
    let local = match bound.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => SocketAddr::from(([127, 0, 0, 1], bound.port())),
        IpAddr::V6(ip) if ip.is_unspecified() => SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, bound.port())),
        _ => bound,
    };
    let (ca_file, bundle_file) = match tls {
        Some(identity) => {
            let (ca, bundle) = write_view_ca(&state, identity.ca_pem())
                .map_err(|e| NodeError::View(format!("cannot write the CA files under {}: {e}", state.display())))?;
            (Some(ca), Some(bundle))
        }
        None => (None, None),
    };
    let scheme = if tls.is_some() { "https" } else { "http" };
    let endpoint = format!("{scheme}://{local}");
    let url = format!("s3://{}/{}?endpoint={endpoint}&force-path-style=true", bucket, prefix.trim_end_matches('/'));
    tracing::info!(endpoint, bucket, prefix, "S3 view serving");
    // The same limits as the peer service, with a tracker of its own: a flood on one port
    // does not shed the other's connections. The certificate is the node's, read at each
    // handshake, so a renewal reaches the view at once.
    let listen = depot_s3::http::Listen {
        tls: tls.map(crate::identity::Identity::view_server_config),
        limits,
        drain: DRAIN_LIMIT,
        events: Arc::new(depot_s3::http::NoEvents),
    };
    let task = tokio::spawn(depot_s3::http::serve(listener, listen, service, Arc::clone(&stats), shutdown));
    let ready = S3Ready { endpoint, ca_file, bundle_file, bucket, prefix, url };
    Ok((StartedView { view, ready, stats: Arc::clone(&stats), port: local.port(), tls: tls.is_some() }, task))
}

/// Writes the cluster's CA as `DIR/ca.pem` and the system roots plus it as `DIR/bundle.pem`
/// (what `SSL_CERT_FILE` wants: TiKV and BR then trust the view without losing the public
/// roots), each durably. Returns both paths.
fn write_view_ca(dir: &Path, ca_pem: &str) -> std::io::Result<(std::path::PathBuf, std::path::PathBuf)> {
    let natives = rustls_native_certs::load_native_certs().certs.into_iter().map(|c| c.to_vec());
    let bundle = bundle(natives, ca_pem);
    let (ca, all) = (dir.join("ca.pem"), dir.join("bundle.pem"));
    for (path, text) in [(&ca, ca_pem), (&all, bundle.as_str())] {
        let temp = path.with_extension("pem.tmp");
        std::fs::write(&temp, text)?;
        std::fs::File::open(&temp)?.sync_all()?;
        std::fs::rename(&temp, path)?;
    }
    depot_fs::sync_dir(dir)?;
    Ok((ca, all))
}

/// The roots (DER) then the CA, as PEM, each certificate once: the system roots honour
/// `SSL_CERT_FILE`, which may be this very bundle from an earlier start.
fn bundle(roots: impl IntoIterator<Item = Vec<u8>>, ca_pem: &str) -> String {
    let mut seen: std::collections::HashSet<Vec<u8>> =
        pem::parse_many(ca_pem).unwrap_or_default().into_iter().map(pem::Pem::into_contents).collect();
    let mut bundle = String::new();
    for root in roots {
        if seen.insert(root.clone()) {
            bundle.push_str(&pem::encode(&pem::Pem::new("CERTIFICATE", root)));
        }
    }
    bundle.push_str(ca_pem);
    bundle
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bundle_holds_each_root_once_and_the_ca_last() {
        let ca = pem::encode(&pem::Pem::new("CERTIFICATE", b"the-ca".to_vec()));
        let roots = [b"root-1".to_vec(), b"the-ca".to_vec(), b"root-2".to_vec(), b"root-1".to_vec()];
        let got = bundle(roots, &ca);
        let ders: Vec<Vec<u8>> = pem::parse_many(&got).unwrap().into_iter().map(pem::Pem::into_contents).collect();
        assert_eq!(ders, [b"root-1".to_vec(), b"root-2".to_vec(), b"the-ca".to_vec()]);
        // Fed its own output (SSL_CERT_FILE pointing at it), it does not grow.
        assert_eq!(bundle(ders, &ca), got);
    }

    #[test]
    fn advertises_something_dialable() {
        let bound: SocketAddr = "127.0.0.1:7070".parse().unwrap();
        assert_eq!(advertised(bound, None).unwrap(), "127.0.0.1:7070");
        assert_eq!(advertised(bound, Some("node1:9")).unwrap(), "node1:9");
        assert!(advertised(bound, Some("node1")).is_err());
        let any: SocketAddr = "0.0.0.0:7070".parse().unwrap();
        assert!(advertised(any, None).unwrap().ends_with(":7070"));
        assert!(!advertised(any, None).unwrap().starts_with("0.0.0.0"));
    }
}
