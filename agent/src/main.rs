//! `depot-agent`: the command line over the `depot_agent` library.
//!
//! Exit codes:
//! - `0`: success (`fetch`: every needed file is present and verified; `verify`: every file is
//!   held by a live node; `serve`: stopped cleanly by Ctrl-C or SIGTERM).
//! - `1`: files are missing: some file is held by no live node (and, for `fetch`, nothing else
//!   went wrong).
//! - `2`: failure: bad arguments, an unreadable or malformed manifest, the coordinator refused
//!   or could not be reached, or files failed for another reason (checksums, I/O).
//! - `130`: `fetch` was interrupted (Ctrl-C / SIGTERM); nothing partial was left behind.

mod collect_cmd;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};
use depot_agent::auth::Secret;
use depot_agent::checkpoint::{Checkpoint, Identity, Settings};
use depot_agent::fetch::{CheckpointReport, FetchJob, NoRecorder, Recorder, sweep_stale_temp_files};
use depot_agent::jobs::{JobTracker, JobWriter, backup_name};
use depot_agent::manifest::{CrypterKey, Manifest, ManifestSource};
use depot_agent::node::{self, ServeOptions};
use depot_agent::peer::{PeerDirectory, PeerReader, RetryPolicy, Timeouts};
use depot_agent::progress::Bar;
use depot_agent::registry::Coordinator;
use depot_agent::storage::{Storage, StoreOptions};
use depot_agent::trust::ExtraCa;

/// mimalloc instead of the system allocator: transfers allocate and free a megabyte-sized
/// buffer per chunk on different threads, which glibc's malloc answers with `mmap`/`munmap`
/// and page faults; measured on loopback, ReadFile runs about 1.5x faster with mimalloc. It is
/// built without transparent huge pages (`no_thp`), which would triple the agent's RSS.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const EXIT_MISSING: u8 = 1;
const EXIT_FAILURE: u8 = 2;
const EXIT_INTERRUPTED: u8 = 130;

#[derive(Debug, Parser)]
#[command(
    name = "depot-agent",
    version,
    about = "Serves a node's backup files to its peers and fetches the ones it lacks",
    long_about = "Serves a node's backup directory to its peers (FileExists/ReadFile/Stat over gRPC), \
                  fetches the SST files a backup lists that this node lacks from the peers that hold them, \
                  and verifies which nodes hold which files.\n\n\
                  Exit codes: 0 success; 1 files missing (held by no live node); 2 failure; 130 interrupted."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve DIR to peers, registered with the coordinator, until Ctrl-C or SIGTERM.
    Serve(ServeArgs),
    /// Make every data file of a backup present in DIR, fetching missing ones from peers.
    Fetch(FetchArgs),
    /// Report which live nodes hold each file of a backup (size and sha256; no data moved).
    Verify(VerifyArgs),
    /// Gather a backup scattered over the nodes into one archive (S3, GCS, Azure or a directory).
    Collect(collect_cmd::CollectArgs),
}

#[derive(Debug, Args)]
struct CoordinatorArgs {
    /// The coordinator's registry URL (`registry` in `depot serve --json`).
    #[arg(long, env = "DEPOT_COORDINATOR", value_name = "URL")]
    coordinator: Option<String>,
    /// The join token `depot serve` printed.
    #[arg(long, env = "DEPOT_JOIN_TOKEN", hide_env_values = true, value_name = "TOKEN")]
    join_token: Option<String>,
    /// File holding the join token (instead of --join-token, which `ps` shows).
    #[arg(long, value_name = "FILE", conflicts_with = "join_token")]
    join_token_file: Option<PathBuf>,
    /// PEM CA to trust for https:// coordinators and archives (default: $SSL_CERT_FILE; `depot
    /// serve` writes ARCHIVE/.depot/tls/bundle.pem for it).
    #[arg(long, value_name = "PEM")]
    ca_file: Option<PathBuf>,
    /// Accept a plain http:// coordinator that is not on this machine (the join token and the
    /// node secret then cross the network in clear; warned about at every start).
    #[arg(long)]
    insecure_coordinator: bool,
}

impl CoordinatorArgs {
    /// Resolves `--join-token-file` and warns about `--join-token` on the command line.
    fn resolve_secrets(&mut self) -> anyhow::Result<()> {
        self.join_token = depot_net::secret_flag(
            "join-token",
            "DEPOT_JOIN_TOKEN",
            self.join_token.take(),
            self.join_token_file.as_deref(),
        )
        .map_err(anyhow::Error::msg)?;
        Ok(())
    }

    fn ca(&self) -> anyhow::Result<Option<ExtraCa>> {
        Ok(ExtraCa::load(self.ca_file.as_deref())?)
    }

    /// The coordinator client, or `None` when no URL was given.
    fn connect(&self, ca: Option<&ExtraCa>) -> anyhow::Result<Option<Coordinator>> {
        let Some(url) = &self.coordinator else {
            return Ok(None);
        };
        let Some(token) = &self.join_token else {
            bail!("--coordinator needs --join-token (or DEPOT_JOIN_TOKEN): the join_token `depot serve` printed");
        };
        Ok(Some(Coordinator::with_insecure(url, Secret::new(token.clone()), ca, self.insecure_coordinator)?))
    }
}

#[derive(Debug, Args)]
struct ServeArgs {
    /// The node's backup directory.
    #[arg(long, value_name = "DIR")]
    root: PathBuf,
    /// Address to listen on (`127.0.0.1:0` picks a free port).
    #[arg(long, value_name = "ADDR")]
    listen: String,
    /// HOST:PORT peers should dial (default: the listen address).
    #[arg(long, value_name = "HOST:PORT")]
    advertise: Option<String>,
    /// This node's id (default: the one recorded in DIR/.depot/node-id, else the host name).
    /// Several agents on one host need distinct ids.
    #[arg(long, value_name = "ID")]
    node_id: Option<String>,
    #[command(flatten)]
    coordinator: CoordinatorArgs,
    /// Print one JSON line `{"endpoint":..,"node_id":..}` once ready, and the stop summary as JSON.
    #[arg(long)]
    json: bool,
    /// Append logs to this file (default: stderr).
    #[arg(long, value_name = "FILE")]
    log_file: Option<PathBuf>,
    /// Cap on the bytes per second served to peers, all transfers together (e.g. 100MiB).
    #[arg(long, value_name = "BYTES", value_parser = parse_size)]
    max_rate: Option<u64>,
    /// ReadFile chunk size in bytes.
    #[arg(long, default_value_t = depot_agent::service::DEFAULT_CHUNK_SIZE, hide = true)]
    chunk_size: usize,
    #[command(flatten)]
    limits: depot_net::LimitArgs,
    /// Serve Prometheus metrics (/metrics) and health checks (/_depot/healthz, /_depot/readyz)
    /// over HTTP on this address (e.g. 127.0.0.1:9101; no credential, no file names).
    #[arg(long, value_name = "ADDR")]
    metrics: Option<String>,
    #[command(flatten)]
    s3: S3Args,
}

/// The S3 view: the whole backup on this node, local files first, peers on demand.
#[derive(Debug, Args)]
struct S3Args {
    /// Serve the whole backup over S3 on this address (e.g. 127.0.0.1:9000): this node's
    /// files from its disk, the others fetched from a live holder (verified) into a cache.
    #[arg(long, value_name = "ADDR")]
    s3_listen: Option<String>,
    /// HTTPS for the view, with this node's certificate from the coordinator's CA (valid for
    /// 127.0.0.1, ::1, localhost and the advertised host; renewed with it). `auto`: HTTPS
    /// unless the coordinator is plain http:// on loopback.
    #[arg(long, value_enum, default_value_t = node::ViewTls::Auto, value_name = "WHEN", requires = "s3_listen")]
    s3_tls: node::ViewTls,
    /// The view's bucket (default: the coordinator's, handed over when the agent joins).
    #[arg(long, env = "DEPOT_S3_BUCKET", value_name = "NAME", requires = "s3_listen")]
    s3_bucket: Option<String>,
    /// The access key clients sign with (default: the coordinator's, handed over when the
    /// agent joins, so one key pair works on every node).
    #[arg(long, env = "DEPOT_S3_ACCESS_KEY", value_name = "KEY", requires = "s3_listen")]
    s3_access_key: Option<String>,
    /// Its secret (default: the coordinator's).
    #[arg(long, env = "DEPOT_S3_SECRET_KEY", hide_env_values = true, value_name = "SECRET", requires = "s3_listen")]
    s3_secret_key: Option<String>,
    /// File holding the secret (instead of --s3-secret-key, which `ps` shows).
    #[arg(long, value_name = "FILE", requires = "s3_listen", conflicts_with = "s3_secret_key")]
    s3_secret_key_file: Option<PathBuf>,
    /// Key prefix of the backup in the view (default: DIR's name, so local:///data/backup is
    /// s3://BUCKET/backup).
    #[arg(long, value_name = "PREFIX", requires = "s3_listen")]
    s3_prefix: Option<String>,
    /// The backup's `backupmeta` (path or s3:// URL; default DIR/backupmeta), read when the
    /// view is first used.
    #[arg(long, value_name = "PATH|URL", requires = "s3_listen")]
    s3_meta: Option<String>,
    /// File holding the key of an encrypted backup (hex, as BR's --crypter.key-file).
    #[arg(long, value_name = "FILE", requires = "s3_listen")]
    s3_crypter_key_file: Option<PathBuf>,
    /// Cap on the view's cache of fetched files (e.g. 50GiB); least recently used go first.
    #[arg(long, value_name = "SIZE", value_parser = parse_size, requires = "s3_listen")]
    cache_max: Option<u64>,
    /// Where fetched files are kept (default DIR/.depot/view/cache).
    #[arg(long, value_name = "DIR", requires = "s3_listen")]
    cache_dir: Option<PathBuf>,
    /// Read files no live node holds from this archive (what `collect` wrote).
    #[arg(long, value_name = "URL", requires = "s3_listen")]
    archive: Option<String>,
}

impl S3Args {
    fn options(&self, ca: Option<&ExtraCa>) -> anyhow::Result<Option<node::S3Options>> {
        let Some(listen) = &self.s3_listen else { return Ok(None) };
        let options = StoreOptions { ca: ca.cloned() };
        let crypter = match &self.s3_crypter_key_file {
            Some(path) => {
                let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
                Some(CrypterKey::from_hex(&text).with_context(|| format!("in {}", path.display()))?)
            }
            None => None,
        };
        Ok(Some(node::S3Options {
            listen: listen.clone(),
            tls: self.s3_tls,
            access_key: self.s3_access_key.clone(),
            secret_key: depot_net::secret_flag(
                "s3-secret-key",
                "DEPOT_S3_SECRET_KEY",
                self.s3_secret_key.clone(),
                self.s3_secret_key_file.as_deref(),
            )
            .map_err(anyhow::Error::msg)?
            .map(Secret::new),
            view: node::ViewSettings {
                bucket: self.s3_bucket.clone(),
                prefix: self.s3_prefix.clone(),
                cache_dir: self.cache_dir.clone(),
                cache_max: self.cache_max,
                meta: self.s3_meta.as_deref().map(|m| ManifestSource::parse(m, &options)).transpose()?,
                crypter,
                archive: self.archive.as_deref().map(|url| Storage::open(url, &options)).transpose()?,
            },
        }))
    }
}

#[derive(Debug, Args)]
struct ManifestArgs {
    /// The backup's `backupmeta` (or its directory / S3 prefix), or a JSON-lines manifest:
    /// a path or s3://BUCKET/PREFIX?endpoint=...&force-path-style=true&region=... with
    /// AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY in the environment.
    #[arg(long, env = "DEPOT_META", value_name = "PATH|URL")]
    meta: String,
    /// Key of an encrypted backup (hex, as BR's --crypter.key).
    #[arg(long, env = "DEPOT_CRYPTER_KEY", hide_env_values = true, value_name = "HEX")]
    crypter_key: Option<String>,
    /// File holding the key of an encrypted backup (hex, as BR's --crypter.key-file).
    #[arg(long, value_name = "FILE", conflicts_with = "crypter_key")]
    crypter_key_file: Option<PathBuf>,
}

impl ManifestArgs {
    /// The key of an encrypted backup, if one was given.
    fn crypter(&self) -> anyhow::Result<Option<CrypterKey>> {
        Ok(match (&self.crypter_key, &self.crypter_key_file) {
            (Some(hex), _) => {
                // Warns that the key is visible on the command line when it came from there.
                let hex = depot_net::secret_flag("crypter-key", "DEPOT_CRYPTER_KEY", Some(hex.clone()), None)
                    .map_err(anyhow::Error::msg)?
                    .unwrap_or_default();
                Some(CrypterKey::from_hex(&hex)?)
            }
            (None, Some(path)) => {
                let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
                Some(CrypterKey::from_hex(&text).with_context(|| format!("in {}", path.display()))?)
            }
            (None, None) => None,
        })
    }

    async fn load(&self, ca: Option<&ExtraCa>) -> anyhow::Result<Manifest> {
        let key = self.crypter()?;
        let options = StoreOptions { ca: ca.cloned() };
        let source = ManifestSource::parse(&self.meta, &options)?;
        Ok(source.load(key.as_ref()).await?)
    }
}

#[derive(Debug, Args)]
struct FetchArgs {
    /// This node's backup directory, where missing files are put.
    #[arg(long, value_name = "DIR")]
    root: PathBuf,
    #[command(flatten)]
    manifest: ManifestArgs,
    #[command(flatten)]
    coordinator: CoordinatorArgs,
    /// This node's id, so it does not count itself as a peer (default: the id of the agent
    /// serving DIR, else the host name).
    #[arg(long, value_name = "ID")]
    node_id: Option<String>,
    /// Read files no live node holds from this archive (what `collect` wrote): s3://..., a
    /// directory, gcs:// or azure://. Checked by size and sha256 like a peer's copy.
    #[arg(long, value_name = "URL")]
    archive: Option<String>,
    /// Only these files (one name per line; `-` reads standard input).
    #[arg(long, value_name = "LIST")]
    files_from: Option<PathBuf>,
    /// Files transferred at once.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..=256))]
    concurrency: u16,
    /// Rounds of asking the peers for a file whose holders are unreachable.
    #[arg(long, default_value_t = 6, value_parser = clap::value_parser!(u32).range(1..=100))]
    retries: u32,
    /// Give up on a holder that sends nothing for this long (e.g. 30s, 500ms).
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    stall_timeout: Duration,
    /// Deadline of one FileExists call.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    rpc_timeout: Duration,
    /// Print the summary as one JSON object (and no progress bar).
    #[arg(long)]
    json: bool,
    /// Append logs to this file (default: DIR/.depot/logs/fetch.log).
    #[arg(long, value_name = "FILE")]
    log_file: Option<PathBuf>,
    #[command(flatten)]
    checkpoint: CheckpointArgs,
    /// Serve this fetch's Prometheus metrics (/metrics) over HTTP on this address while it runs.
    #[arg(long, value_name = "ADDR")]
    metrics: Option<String>,
}

/// Resumable fetches: see `depot_agent::checkpoint`.
#[derive(Debug, Args)]
struct CheckpointArgs {
    /// Where checkpoints go: a directory or an s3:// URL, where each node gets its own
    /// directory (default: DIR/.depot/checkpoints).
    #[arg(long, value_name = "URL")]
    checkpoint_storage: Option<String>,
    /// How often progress is written to the checkpoint.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    checkpoint_interval: Duration,
    /// The job's name: a re-run with the same name resumes its checkpoint.
    #[arg(long, default_value = "fetch", value_name = "NAME")]
    task: String,
    /// Discard this task's checkpoint and partial transfers, and start over.
    #[arg(long)]
    fresh: bool,
    /// Keep no checkpoint (a re-run checks every file again).
    #[arg(long, conflicts_with_all = ["checkpoint_storage", "fresh"])]
    no_checkpoint: bool,
    /// Lease of the checkpoint lock (refreshed every third of it).
    #[arg(long, default_value = "60s", value_parser = parse_duration, hide = true)]
    checkpoint_lease: Duration,
    /// Keep the checkpoint after success (for benchmarks: a re-run then resumes everything).
    #[arg(long, hide = true)]
    keep_checkpoint: bool,
}

impl CheckpointArgs {
    /// Takes the task's checkpoint for `manifest`, or `None` with `--no-checkpoint`.
    async fn open(
        &self,
        root: &depot_fs::Root,
        manifest: &Manifest,
        node_id: &str,
        ca: Option<&ExtraCa>,
    ) -> anyhow::Result<Option<Checkpoint>> {
        if self.no_checkpoint {
            return Ok(None);
        }
        let task_ok = !self.task.is_empty()
            && self.task.len() <= 64
            && self.task.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
        if !task_ok {
            bail!("--task {:?}: use 1 to 64 letters, digits, '-', '_' or '.'", self.task);
        }
        let store = match &self.checkpoint_storage {
            // Shared storage: one directory per node, so every node's progress sits side by side.
            Some(url) => Storage::open(url, &StoreOptions { ca: ca.cloned() })?.at(node_id),
            None => Storage::open(
                root.state_dir().join("checkpoints").to_str().context("non-UTF-8 root")?,
                &StoreOptions::default(),
            )?,
        };
        let settings = Settings {
            store,
            task: self.task.clone(),
            interval: self.checkpoint_interval,
            lease: self.checkpoint_lease,
            fresh: self.fresh,
            partial_dir: root.state_dir().join("resume").join(format!("fetch-{}", self.task)),
        };
        let identity = Identity {
            manifest_sha256: hex::encode(manifest.digest),
            backup_end_version: manifest.end_version,
            node_id: node_id.to_owned(),
        };
        Ok(Some(Checkpoint::open(settings, identity).await?))
    }
}

#[derive(Debug, Args)]
struct VerifyArgs {
    #[command(flatten)]
    manifest: ManifestArgs,
    #[command(flatten)]
    coordinator: CoordinatorArgs,
    /// Also report which files this archive holds (one HEAD each; no data moved).
    #[arg(long, value_name = "URL")]
    archive: Option<String>,
    /// Stat calls in flight at once.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u16).range(1..=1024))]
    concurrency: u16,
    /// Deadline of one call (Stat gets twelve times this: it may hash a large file).
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    rpc_timeout: Duration,
    /// Print the report as one JSON object.
    #[arg(long)]
    json: bool,
    /// Append logs to this file (default: warnings to stderr).
    #[arg(long, value_name = "FILE")]
    log_file: Option<PathBuf>,
}

/// Parses a positive duration the way `depot serve` does (humantime: `500ms`, `30s`, `2m`).
fn parse_duration(text: &str) -> Result<Duration, String> {
    let duration = humantime::parse_duration(text.trim())
        .map_err(|err| format!("{text:?} is not a duration ({err}; e.g. 500ms, 30s, 2m)"))?;
    if duration.is_zero() { Err(format!("{text:?} must be positive")) } else { Ok(duration) }
}

/// Parses `4096`, `512K`/`512KiB`, `100M`/`100MiB`, `1G`/`1GiB` (powers of 1024).
fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number.parse().map_err(|_| format!("{text:?} is not a size (e.g. 4096, 512K, 100MiB, 1G)"))?;
    let scale: u64 = match unit.trim().to_ascii_lowercase().trim_end_matches("ib").trim_end_matches('b') {
        "" => 1,
        "k" => 1 << 10,
        "m" => 1 << 20,
        "g" => 1 << 30,
        _ => return Err(format!("{text:?}: unknown unit (use K, M or G)")),
    };
    match number.checked_mul(scale) {
        Some(0) | None => Err(format!("{text:?} must be between 1 byte and 16 EiB")),
        Some(n) => Ok(n),
    }
}

/// Sends logs to `file` (appending; parents created) or to stderr at `stderr_level`.
fn init_logging(file: Option<&Path>, stderr_level: &str) -> anyhow::Result<()> {
    use tracing_subscriber::EnvFilter;
    let quiet_deps = "h2=warn,hyper=warn,hyper_util=warn,tower=warn,tonic=warn,aws=warn,rustls=warn";
    match file {
        Some(path) => {
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("cannot create the log directory {}", dir.display()))?;
            }
            let log = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .with_context(|| format!("cannot open the log file {}", path.display()))?;
            let filter =
                EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(format!("info,{quiet_deps}")));
            tracing_subscriber::fmt()
                .with_env_filter(filter)
                .with_ansi(false)
                .with_writer(std::sync::Mutex::new(log))
                .init();
        }
        None => {
            let filter = EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| EnvFilter::new(format!("{stderr_level},{quiet_deps}")));
            tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
        }
    }
    Ok(())
}

/// Resolves on Ctrl-C or SIGTERM.
async fn stop_signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut sig) => {
                sig.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = terminate => {}
    }
}

/// Ends a fetch/verify run's membership (its client-only certificate) when dropped, if it
/// joined at all: the coordinator forgets it at once instead of at the certificate's expiry.
struct Leave(Coordinator);

impl Drop for Leave {
    fn drop(&mut self) {
        if self.0.identity().is_some() {
            // Best effort, bounded to a second (multi-threaded runtime: blocking here is allowed).
            tokio::task::block_in_place(|| {
                tokio::runtime::Handle::current().block_on(async {
                    let _ = tokio::time::timeout(Duration::from_secs(1), self.0.deregister()).await;
                });
            });
        }
    }
}

/// Aborts a background task when dropped (the fetch's metrics endpoint ends with the fetch).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn print_json(value: &impl serde::Serialize) {
    println!("{}", serde_json::to_string(value).unwrap_or_else(|err| format!("{{\"error\":\"{err}\"}}")));
}

async fn serve(mut args: ServeArgs) -> anyhow::Result<u8> {
    args.coordinator.resolve_secrets()?;
    init_logging(args.log_file.as_deref(), "info")?;
    let ca = args.coordinator.ca()?;
    let Some(coordinator) = args.coordinator.coordinator.clone() else {
        bail!("serve needs --coordinator (or DEPOT_COORDINATOR): the registry URL `depot serve --json` prints");
    };
    let Some(join_token) = args.coordinator.join_token.clone() else {
        bail!("serve needs --join-token (or DEPOT_JOIN_TOKEN): the join_token `depot serve` printed");
    };
    let s3 = args.s3.options(ca.as_ref())?;
    let options = ServeOptions {
        root: args.root,
        listen: args.listen,
        advertise: args.advertise,
        node_id: args.node_id,
        coordinator,
        join_token: Secret::new(join_token),
        ca,
        insecure_coordinator: args.coordinator.insecure_coordinator,
        chunk_size: args.chunk_size,
        max_rate: args.max_rate,
        limits: args.limits.limits(),
        metrics: args.metrics,
        s3,
    };
    match depot_net::raise_open_file_limit() {
        Ok((before, after)) => tracing::info!(?before, ?after, "open-file limit (soft) raised to the hard limit"),
        Err(err) => tracing::warn!(%err, "cannot raise the open-file limit"),
    }
    let json = args.json;
    let report = node::serve(
        options,
        |ready| {
            if json {
                print_json(ready);
            } else {
                println!("depot-agent serving {} as node {} at {}", ready.root, ready.node_id, ready.endpoint);
                if let Some(s3) = &ready.s3 {
                    println!(
                        "S3 view of the whole backup at {} (bucket {}, prefix {:?})",
                        s3.endpoint, s3.bucket, s3.prefix
                    );
                    if let Some(bundle) = &s3.bundle_file {
                        println!("  its clients trust the cluster's CA: SSL_CERT_FILE={}", bundle.display());
                    }
                    println!("  br restore ... --storage \"{}\"", s3.url);
                }
            }
        },
        stop_signal(),
    )
    .await?;
    if json {
        print_json(&report);
    } else {
        println!(
            "depot-agent stopped after {:.1} s: served {} file stream(s), {}, refused {} unsafe request(s)",
            report.seconds,
            report.reads,
            depot_agent::fetch::human_bytes(report.bytes_sent),
            report.refused
        );
        if let Some(s3) = &report.s3 {
            println!(
                "S3 view: {} local read(s), {} from the cache, {} file(s) fetched ({}), {} missing; cache {} file(s), {}, {} evicted",
                s3.local,
                s3.cached,
                s3.fetched,
                depot_agent::fetch::human_bytes(s3.fetched_bytes),
                s3.missing,
                s3.cache.files,
                depot_agent::fetch::human_bytes(s3.cache.bytes),
                s3.cache.evicted
            );
        }
    }
    Ok(0)
}

fn read_list(path: &Path) -> anyhow::Result<Vec<String>> {
    let text = if path == Path::new("-") {
        std::io::read_to_string(std::io::stdin()).context("cannot read the file list from standard input")?
    } else {
        std::fs::read_to_string(path).with_context(|| format!("cannot read the file list {}", path.display()))?
    };
    Ok(text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).map(str::to_owned).collect())
}

async fn fetch(mut args: FetchArgs) -> anyhow::Result<u8> {
    args.coordinator.resolve_secrets()?;
    let root = depot_fs::Root::open(&args.root)?;
    let log_file = args.log_file.clone().unwrap_or_else(|| root.state_dir().join("logs").join("fetch.log"));
    init_logging(Some(&log_file), "warn")?;
    tracing::info!(meta = args.manifest.meta, root = %root.dir().display(), "fetch started");
    let swept = sweep_stale_temp_files(&root, Duration::from_secs(600));
    if swept > 0 {
        tracing::info!(swept, "removed temp files left by an earlier, interrupted fetch");
    }
    let ca = args.coordinator.ca()?;
    let manifest = args.manifest.load(ca.as_ref()).await?;
    let only = args.files_from.as_deref().map(read_list).transpose()?;
    let node_id = args.node_id.clone().unwrap_or_else(|| node::default_node_id(root.dir()));
    let bar: Arc<Bar> = Arc::new(Bar::new(!args.json));
    let coordinator = args.coordinator.connect(ca.as_ref())?;
    let _leave = coordinator.clone().map(Leave);
    let reader = coordinator.map(|coordinator| {
        PeerReader::new(root.clone(), PeerDirectory::new(coordinator, Some(node_id.clone())))
            .with_retry(RetryPolicy { rounds: args.retries, ..RetryPolicy::default() })
            .with_timeouts(Timeouts { rpc: args.rpc_timeout, stall: args.stall_timeout })
    });
    let checkpoint = args.checkpoint.open(&root, &manifest, &node_id, ca.as_ref()).await?.map(Arc::new);
    // Progress goes to the bar, the checkpoint, the job file (for `depot status`) and metrics.
    let tracker = Arc::new(JobTracker::new(
        bar,
        checkpoint.clone().map_or_else(|| Arc::new(NoRecorder) as Arc<dyn Recorder>, |c| c as Arc<dyn Recorder>),
    ));
    let reader = reader.map(|r| r.with_progress(tracker.clone()));
    let task = if args.checkpoint.no_checkpoint { "fetch".to_owned() } else { args.checkpoint.task.clone() };
    let job_file = JobWriter::new(root.dir(), "fetch", &task, backup_name(&args.manifest.meta), tracker.counters());
    let _metrics = match &args.metrics {
        Some(addr) => {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen on {addr} (--metrics)"))?;
            if let Ok(bound) = listener.local_addr() {
                tracing::info!(%bound, "serving metrics");
                if !args.json {
                    eprintln!("depot-agent fetch: metrics at http://{bound}/metrics");
                }
            }
            let source = depot_agent::metrics::Source::Fetch(tracker.counters());
            let ready: depot_agent::metrics::ReadyCheck = Arc::new(|| Ok(()));
            Some(AbortOnDrop(tokio::spawn(depot_agent::metrics::serve(listener, source, ready))))
        }
        None => None,
    };
    let job = FetchJob {
        root: root.clone(),
        reader,
        concurrency: usize::from(args.concurrency),
        recorder: tracker.clone(),
        progress: tracker.clone(),
        resume: checkpoint.clone(),
        archive: args.archive.as_deref().map(|url| Storage::open(url, &StoreOptions { ca: ca.clone() })).transpose()?,
    };
    let keep_up = async {
        match &checkpoint {
            Some(checkpoint) => checkpoint.keep_up().await,
            None => std::future::pending().await,
        }
    };
    let result = tokio::select! {
        result = job.run(&manifest, only.as_deref()) => result,
        () = job_file.keep_writing() => unreachable!("keep_writing never returns"),
        lost = keep_up => {
            return Err(anyhow::Error::from(lost.expect_err("keep_up returns only on error"))
                .context("stopped: another fetch took over the checkpoint"));
        }
        () = stop_signal() => {
            tracing::warn!("interrupted");
            job_file.write(Some("interrupted"));
            let saved = match &checkpoint {
                Some(checkpoint) => match checkpoint.suspend().await {
                    Ok(()) => format!("progress saved in {}; run again to resume", checkpoint.location()),
                    Err(err) => format!("progress could not be saved: {err}"),
                },
                None => "files not yet verified were discarded".to_owned(),
            };
            eprintln!("depot-agent fetch: interrupted; {saved}");
            return Ok(EXIT_INTERRUPTED);
        }
    };
    let mut summary = match result {
        Ok(summary) => {
            job_file.write(Some(if summary.complete() { "done" } else { "incomplete" }));
            summary
        }
        Err(err) => {
            job_file.write(Some("failed"));
            if let Some(checkpoint) = &checkpoint
                && let Err(save) = checkpoint.suspend().await
            {
                tracing::warn!(%save, "cannot save the checkpoint");
            }
            return Err(err.into());
        }
    };
    if let Some(checkpoint) = &checkpoint {
        let mut report = CheckpointReport {
            location: checkpoint.location(),
            skipped_records: checkpoint.skipped().to_vec(),
            ..CheckpointReport::default()
        };
        let outcome = if summary.complete() && !args.checkpoint.keep_checkpoint {
            report.removed = true;
            checkpoint.complete().await
        } else {
            checkpoint.suspend().await
        };
        if let Err(err) = outcome {
            tracing::error!(%err, "checkpoint");
            report.removed = false;
            report.error = Some(err.to_string());
        }
        summary.checkpoint = Some(report);
    }
    tracing::info!(?summary, "fetch finished");
    if args.json {
        print_json(&summary);
    } else {
        println!("{summary}");
        println!("  log: {}", log_file.display());
    }
    Ok(if summary.complete() {
        0
    } else if summary.failed.is_empty() {
        EXIT_MISSING
    } else {
        EXIT_FAILURE
    })
}

async fn verify(mut args: VerifyArgs) -> anyhow::Result<u8> {
    args.coordinator.resolve_secrets()?;
    init_logging(args.log_file.as_deref(), "warn")?;
    let ca = args.coordinator.ca()?;
    let Some(coordinator) = args.coordinator.connect(ca.as_ref())? else {
        bail!("verify needs --coordinator (or DEPOT_COORDINATOR) to find the live nodes");
    };
    let manifest = args.manifest.load(ca.as_ref()).await?;
    let _leave = Leave(coordinator.clone());
    let directory = PeerDirectory::new(coordinator, None);
    let mut report =
        depot_agent::verify::verify(&manifest, &directory, usize::from(args.concurrency), args.rpc_timeout).await?;
    if let Some(url) = &args.archive {
        let archive = Storage::open(url, &StoreOptions { ca: ca.clone() })?;
        report.add_archive(&manifest, &archive, usize::from(args.concurrency)).await?;
    }
    if args.json {
        print_json(&report);
    } else {
        println!("{report}");
    }
    Ok(if report.missing.is_empty() { 0 } else { EXIT_MISSING })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let json = match &cli.command {
        Command::Serve(a) => a.json,
        Command::Fetch(a) => a.json,
        Command::Verify(a) => a.json,
        Command::Collect(a) => a.json,
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("depot-agent: cannot start the async runtime: {err}");
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Serve(args) => serve(args).await,
            Command::Fetch(args) => fetch(args).await,
            Command::Verify(args) => verify(args).await,
            Command::Collect(args) => collect_cmd::collect(args).await,
        }
    });
    // Finish background tasks (and their temp-file guards) before exiting.
    runtime.shutdown_timeout(Duration::from_secs(1));
    match result {
        Ok(code) => ExitCode::from(code),
        Err(err) => {
            let message = format!("{err:#}");
            tracing::error!(error = message, "failed");
            eprintln!("depot-agent: {message}");
            if json {
                print_json(&serde_json::json!({ "error": message, "exit_code": EXIT_FAILURE }));
            }
            ExitCode::from(EXIT_FAILURE)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("1s 500ms").unwrap(), Duration::from_millis(1500));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("0s").is_err());
    }

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert_eq!(parse_size("512K").unwrap(), 512 * 1024);
        assert_eq!(parse_size("100MiB").unwrap(), 100 << 20);
        assert_eq!(parse_size("1g").unwrap(), 1 << 30);
        assert!(parse_size("0").is_err());
        assert!(parse_size("12 parsecs").is_err());
    }

    #[test]
    fn the_cli_is_well_formed() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
