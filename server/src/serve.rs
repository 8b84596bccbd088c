//! `depot serve` end to end, minus flag parsing and printing: lock the archive, sweep what a
//! crash left, resolve credentials, set up TLS, bind, build the services, run, summarise.
//!
//! [`Server::bind`] does everything that can fail before serving, so the caller prints the
//! banner only once the port accepts connections, then calls [`Server::run`].

use std::fs::File;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use depot_fs::{OpenRootError, Root};
use s3s::auth::SecretKey;
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;

use crate::archive::{Archive, Layout};
use crate::cluster::Cluster;
use crate::credentials::{CredentialError, Credentials, Given};
use crate::metrics::{Metrics, RecordOperation};
use crate::registry::Registry;
use crate::s3::Depot;
use crate::server::App;
use crate::stats::{Stats, Summary};
use crate::status::{StatusConfig, StatusService};
use crate::storage_url::{Advertised, StorageUrl};
use crate::tls::{self, TlsError};
use crate::uploads::Uploads;

/// When to serve HTTPS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum TlsMode {
    /// HTTPS when the advertised address is not a loopback address.
    #[default]
    Auto,
    /// Always HTTPS.
    On,
    /// Always plain HTTP.
    Off,
}

/// Everything `depot serve` needs, after flags and environment are read.
#[derive(Debug, Clone)]
pub struct Config {
    /// The archive directory (created if missing).
    pub archive: PathBuf,
    /// Where to listen; default: 127.0.0.1 on a free port, or every interface on the
    /// advertised port when `advertise` is given.
    pub listen: Option<SocketAddr>,
    /// The `host:port` nodes reach the server at.
    pub advertise: Option<Advertised>,
    /// The region clients sign for and HeadBucket reports.
    pub region: String,
    /// Given credentials; the rest are generated.
    pub credentials: Given,
    /// When to serve HTTPS.
    pub tls: TlsMode,
    /// The operator's certificate chain and key (PEM), instead of the generated ones.
    pub tls_files: Option<(PathBuf, PathBuf)>,
    /// Each top-level directory is a bucket.
    pub multi_bucket: bool,
    /// How often agents heartbeat.
    pub heartbeat_interval: Duration,
    /// Lifetime of the certificates issued to nodes.
    pub cert_lifetime: Duration,
    /// Connection caps and timeouts against hostile clients.
    pub limits: depot_net::Limits,
    /// How long Ctrl-C waits for requests in flight.
    pub drain_timeout: Duration,
    /// A multipart upload untouched for this long is removed (with a log line).
    pub multipart_expiry: Duration,
}

impl Config {
    /// Defaults for serving `archive` (what `depot serve DIR` does with no flags).
    pub fn new(archive: impl Into<PathBuf>) -> Self {
        Self {
            archive: archive.into(),
            listen: None,
            advertise: None,
            region: "us-east-1".into(),
            credentials: Given::default(),
            tls: TlsMode::Auto,
            tls_files: None,
            multi_bucket: false,
            heartbeat_interval: Duration::from_secs(5),
            cert_lifetime: Duration::from_secs(24 * 3600),
            limits: depot_net::Limits::default(),
            drain_timeout: Duration::from_secs(30),
            multipart_expiry: Duration::from_secs(7 * 24 * 3600),
        }
    }
}

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The archive directory cannot be created.
    #[error("cannot create the archive directory {}: {source}", path.display())]
    CreateArchive {
        /// The directory.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// The archive directory cannot be used.
    #[error(transparent)]
    Archive(#[from] OpenRootError),
    /// Another `depot serve` holds the archive.
    #[error("{} is already being served{holder}; stop that server first (two servers on one directory would overwrite each other's uploads)", path.display())]
    Locked {
        /// The archive.
        path: PathBuf,
        /// Who holds it, when known.
        holder: String,
    },
    /// Depot's state directory cannot be written.
    #[error("cannot write Depot's state in {}: {source} (is the archive writable?)", path.display())]
    State {
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// A given credential is unusable.
    #[error(transparent)]
    Credentials(#[from] CredentialError),
    /// TLS could not be set up.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The listen address cannot be bound.
    #[error("cannot listen on {addr}: {source}{hint}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The underlying error.
        source: io::Error,
        /// What to do about it.
        hint: &'static str,
    },
}

/// What the server prints at start: for a person, or (with `--json`) as one JSON line.
#[derive(Clone, Serialize)]
pub struct Banner {
    /// `scheme://host:port` of the S3 API.
    pub endpoint: String,
    /// The bucket (`null` in multi-bucket mode).
    pub bucket: Option<String>,
    /// The region to sign for.
    pub region: String,
    /// `AWS_ACCESS_KEY_ID`.
    pub access_key: String,
    /// `AWS_SECRET_ACCESS_KEY`.
    pub secret_key: String,
    /// The BR/TiKV storage URL (`null` in multi-bucket mode).
    pub storage_url: Option<String>,
    /// The generated CA (`null` over plain HTTP or with the operator's certificate).
    pub ca_file: Option<PathBuf>,
    /// System roots + the CA, for `SSL_CERT_FILE`.
    pub bundle_file: Option<PathBuf>,
    /// The same bundle, for `AWS_CA_BUNDLE`: aws-sdk-go v1 (BR), boto3 and the AWS CLI let it
    /// replace every other trust setting, so a value left over for another endpoint breaks them.
    pub aws_ca_bundle: Option<PathBuf>,
    /// The log file (set by the caller that configured logging).
    pub log_file: Option<PathBuf>,
    /// Where agents register (`--coordinator`): the same port as S3.
    pub registry: String,
    /// What agents present to the registry.
    pub join_token: String,
    /// The archive directory.
    pub archive: PathBuf,
    /// Whether top-level directories are buckets.
    pub multi_bucket: bool,
    /// The live status page, token included (read-only; fresh for this run).
    pub status_url: String,
    /// Prometheus metrics (no credential needed).
    pub metrics_url: String,
}

impl std::fmt::Debug for Banner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Banner").field("endpoint", &self.endpoint).field("bucket", &self.bucket).finish_non_exhaustive()
    }
}

/// `<archive>/.depot/server.json`: who serves the archive, for `depot url` and for the
/// "already served" message. No credentials.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ServerInfo {
    /// The serving process.
    pub pid: u32,
    /// `scheme://host:port`.
    pub endpoint: String,
    /// The bucket (single-bucket mode).
    pub bucket: Option<String>,
    /// The region.
    pub region: String,
}

impl ServerInfo {
    /// Where the record of `archive` lives.
    pub fn path(archive: &Path) -> PathBuf {
        archive.join(depot_fs::STATE_DIR).join("server.json")
    }

    /// The record of a server currently serving `archive`, if any.
    pub fn running(archive: &Path) -> Option<Self> {
        let lock = File::open(archive.join(depot_fs::STATE_DIR).join("lock")).ok()?;
        if lock.try_lock().is_ok() {
            return None; // nobody holds the lock: the record, if any, is stale
        }
        serde_json::from_slice(&std::fs::read(Self::path(archive)).ok()?).ok()
    }
}

/// `<archive>/.depot/status-token`: the run's read-only status token, owner-only, so
/// `depot status DIR` on the serving machine needs no flags.
#[derive(Debug)]
pub struct StatusToken;

impl StatusToken {
    /// Where the token of `archive`'s server lives.
    pub fn path(archive: &Path) -> PathBuf {
        archive.join(depot_fs::STATE_DIR).join("status-token")
    }
}

/// Writes `bytes` to a file only the owner can read.
fn write_private(path: &Path, bytes: &[u8]) -> io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let _ = std::fs::remove_file(path);
    let mut file = File::options().write(true).create_new(true).mode(0o600).open(path)?;
    file.write_all(bytes)
}

/// A bound server, ready to [`run`](Server::run).
pub struct Server {
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    app: App,
    banner: Banner,
    stats: Arc<Stats>,
    registry: Arc<Registry>,
    root: Root,
    swept: usize,
    drain: Duration,
    limits: depot_net::Limits,
    uploads: Arc<Uploads>,
    multipart_expiry: Duration,
    /// Held while serving: one server per archive.
    _lock: File,
}

impl Server {
    /// Prepares everything and binds the port; nothing is served until [`Server::run`].
    ///
    /// # Errors
    /// [`ServeError`], each naming what to fix.
    pub async fn bind(config: Config) -> Result<Self, ServeError> {
        depot_fs::create_dir_all_durably(&config.archive)
            .map_err(|source| ServeError::CreateArchive { path: config.archive.clone(), source })?;
        let root = Root::open(&config.archive)?;
        let state = root.state_dir();
        let state_err = |path: &Path| {
            let path = path.to_path_buf();
            move |source| ServeError::State { path, source }
        };
        std::fs::create_dir_all(&state).map_err(state_err(&state))?;
        let lock_path = state.join("lock");
        let lock =
            File::options().create(true).truncate(false).write(true).open(&lock_path).map_err(state_err(&lock_path))?;
        if lock.try_lock().is_err() {
            let holder = std::fs::read(ServerInfo::path(root.dir()))
                .ok()
                .and_then(|raw| serde_json::from_slice::<ServerInfo>(&raw).ok())
                .map_or_else(String::new, |info| format!(" by process {} at {}", info.pid, info.endpoint));
            return Err(ServeError::Locked { path: root.dir().to_path_buf(), holder });
        }
        let swept = root.sweep_tmp().map_err(state_err(&root.tmp_dir()))?;

        let credentials = Credentials::resolve(config.credentials.clone(), config.multi_bucket)?;
        let listen = config.listen.unwrap_or_else(|| match &config.advertise {
            Some(advertised) => SocketAddr::new(IpAddr::from([0, 0, 0, 0]), advertised.port),
            None => SocketAddr::from(([127, 0, 0, 1], 0)),
        });
        let listener = TcpListener::bind(listen).await.map_err(|source| ServeError::Bind {
            addr: listen,
            hint: match source.kind() {
                io::ErrorKind::AddrInUse => {
                    "; the port is taken: choose another with --listen (port 0 picks a free one)"
                }
                io::ErrorKind::PermissionDenied => "; ports below 1024 need privileges: choose a higher port",
                _ => "",
            },
            source,
        })?;
        let bound = listener.local_addr().map_err(state_err(&lock_path))?;
        let advertised = match &config.advertise {
            Some(a) if a.port == 0 => Advertised { host: a.host.clone(), port: bound.port() },
            Some(a) => a.clone(),
            None => Advertised::from_socket(bound),
        };

        let tls = match (&config.tls_files, config.tls) {
            (_, TlsMode::Off) => None,
            (Some((cert, key)), _) => Some(tls::operator(cert, key)?),
            (None, TlsMode::On) => Some(tls::generated(&state.join("tls"), std::slice::from_ref(&advertised.host))?),
            (None, TlsMode::Auto) if advertised.is_loopback() => None,
            (None, TlsMode::Auto) => Some(tls::generated(&state.join("tls"), std::slice::from_ref(&advertised.host))?),
        };
        let endpoint = advertised.url(tls.is_some());

        let layout = match &credentials.bucket {
            Some(bucket) => Layout::Single(bucket.clone()),
            None => Layout::Multi,
        };
        let stats = Arc::new(Stats::default());
        let archive = Arc::new(Archive::new(root.clone(), layout));
        let cluster = Arc::new(Cluster::open(&state, config.cert_lifetime)?);
        let admin_token = write_admin_token(&state).map_err(state_err(&state.join("cluster")))?;
        let registry =
            Registry::new(credentials.join_token.clone(), admin_token, Arc::clone(&cluster), config.heartbeat_interval);
        registry.hand_out_s3_credentials(
            credentials.bucket.as_deref().unwrap_or_default(),
            &credentials.access_key,
            credentials.secret_key.expose(),
            &config.region,
        );
        let metrics = Metrics::new(Arc::clone(&stats), Arc::clone(&registry), state.join("uploads"));
        let status_token = crate::status::generate_token();
        let status = StatusService::new(StatusConfig {
            token: status_token.clone(),
            metrics: Arc::clone(&metrics),
            registry: Arc::clone(&registry),
            archive: root.dir().to_path_buf(),
            endpoint: endpoint.clone(),
            tmp_dir: root.tmp_dir(),
            lock: (lock_path.clone(), lock.try_clone().map_err(state_err(&lock_path))?),
        });
        let depot = Depot::new(archive, Arc::clone(&stats), config.region.clone()).with_endpoint(endpoint.clone());
        let uploads = Arc::clone(depot.uploads());
        let app = App {
            s3: s3_service(depot, &credentials),
            grpc: registry.routes(),
            stats: Arc::clone(&stats),
            metrics,
            status,
        };
        // `depot status DIR` reads the token from here (owner-only, removed at stop).
        let token_path = StatusToken::path(root.dir());
        write_private(&token_path, status_token.expose().as_bytes()).map_err(state_err(&token_path))?;

        let banner = Banner {
            endpoint: endpoint.clone(),
            bucket: credentials.bucket.clone(),
            region: config.region.clone(),
            access_key: credentials.access_key.clone(),
            secret_key: credentials.secret_key.expose().to_owned(),
            storage_url: credentials.bucket.clone().map(|bucket| {
                StorageUrl { bucket, endpoint: endpoint.clone(), region: config.region.clone() }.to_string()
            }),
            ca_file: tls.as_ref().and_then(|t| t.ca_file.clone()),
            bundle_file: tls.as_ref().and_then(|t| t.bundle_file.clone()),
            aws_ca_bundle: tls.as_ref().and_then(|t| t.bundle_file.clone()),
            log_file: None,
            registry: endpoint.clone(),
            join_token: credentials.join_token.expose().to_owned(),
            archive: root.dir().to_path_buf(),
            multi_bucket: config.multi_bucket,
            status_url: format!("{endpoint}/_depot/?token={}", status_token.expose()),
            metrics_url: format!("{endpoint}/_depot/metrics"),
        };
        let info = ServerInfo { pid: std::process::id(), endpoint, bucket: credentials.bucket, region: config.region };
        let info_path = ServerInfo::path(root.dir());
        std::fs::write(&info_path, serde_json::to_vec_pretty(&info).expect("serializable"))
            .map_err(state_err(&info_path))?;

        Ok(Self {
            listener,
            tls: tls.map(|t| t.config),
            app,
            banner,
            stats,
            registry,
            root,
            swept,
            drain: config.drain_timeout,
            limits: config.limits,
            uploads,
            multipart_expiry: config.multipart_expiry,
            _lock: lock,
        })
    }

    /// What to tell the user; includes the secrets.
    pub fn banner(&self) -> &Banner {
        &self.banner
    }

    /// Records the log file in the banner.
    pub fn set_log_file(&mut self, path: PathBuf) {
        self.banner.log_file = Some(path);
    }

    /// How many leftover temp files the start removed.
    pub fn swept(&self) -> usize {
        self.swept
    }

    /// The live-agent registry (for status output and tests).
    pub fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }

    /// The counters (for tests; [`Server::run`] returns the final summary).
    pub fn stats(&self) -> &Arc<Stats> {
        &self.stats
    }

    /// Serves until `shutdown` completes, drains, and returns the summary.
    pub async fn run(self, shutdown: impl std::future::Future<Output = ()>) -> Summary {
        tracing::info!(endpoint = %self.banner.endpoint, archive = %self.root.dir().display(), "serving");
        let sweeper = tokio::spawn(sweep_uploads(Arc::clone(&self.uploads), self.multipart_expiry));
        crate::server::run(self.listener, self.tls, self.app, shutdown, self.drain, self.limits).await;
        sweeper.abort();
        let _ = std::fs::remove_file(ServerInfo::path(self.root.dir()));
        let _ = std::fs::remove_file(StatusToken::path(self.root.dir()));
        let summary = self.stats.summary();
        tracing::info!(?summary, "stopped");
        summary
    }
}

/// Where `depot nodes` finds the admin token of the server on an archive.
pub fn admin_token_path(state_dir: &Path) -> PathBuf {
    state_dir.join("cluster").join("admin-token")
}

/// A fresh admin token for this run, written (mode 0600) for `depot nodes`.
fn write_admin_token(state_dir: &Path) -> io::Result<SecretKey> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let path = admin_token_path(state_dir);
    std::fs::create_dir_all(path.parent().expect("has a parent"))?;
    let token = crate::credentials::random_token(40);
    let _ = std::fs::remove_file(&path);
    let mut file = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&path)?;
    file.write_all(token.as_bytes())?;
    file.sync_all()?;
    Ok(SecretKey::from(token))
}

/// Removes multipart uploads idle for longer than `expiry`, at start and then every quarter
/// of `expiry` (between a second and an hour), logging each.
async fn sweep_uploads(uploads: Arc<Uploads>, expiry: Duration) {
    let every = (expiry / 4).clamp(Duration::from_secs(1), Duration::from_secs(3600));
    loop {
        let sweep = Arc::clone(&uploads);
        match tokio::task::spawn_blocking(move || sweep.sweep_expired(expiry)).await {
            Ok(Ok(expired)) => {
                for upload in expired {
                    tracing::info!(
                        upload_id = %upload.id,
                        key = upload.key.as_deref().unwrap_or("?"),
                        idle = %humantime::format_duration(Duration::from_secs(upload.idle.as_secs())),
                        freed_bytes = upload.bytes,
                        "removed a multipart upload abandoned for longer than --multipart-expiry"
                    );
                }
            }
            Ok(Err(err)) => {
                tracing::warn!(dir = %uploads.dir().display(), %err, "cannot sweep expired multipart uploads")
            }
            Err(err) => tracing::warn!(%err, "the multipart expiry sweep failed"),
        }
        tokio::time::sleep(every).await;
    }
}

/// The s3s service: Depot's S3 behind SigV4 with the run's credentials (the configuration
/// every Depot S3 endpoint shares), recording each operation for the metrics.
fn s3_service(depot: Depot, credentials: &Credentials) -> s3s::service::S3Service {
    let auth = depot_s3::auth::OneKey::new(
        credentials.access_key.clone(),
        credentials.secret_key.clone(),
        "use the AWS_ACCESS_KEY_ID `depot serve` printed",
    );
    depot_s3::http::service(depot, auth, |builder| builder.set_access(RecordOperation))
}
