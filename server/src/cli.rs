//! The `depot` command line: flags (clap), output for people and scripts, logging, signals.
//!
//! Only this module and `main.rs` print; the library below returns values and typed errors.

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::{Args, Parser, Subcommand};

use crate::credentials::Given;
use crate::serve::{Banner, Config, Server, ServerInfo, TlsMode};
use crate::stats::Summary;
use crate::storage_url::{Advertised, StorageUrl, archive_path};

/// Turn a directory into a short-lived S3-compatible endpoint for backups.
#[derive(Debug, Parser)]
#[command(name = "depot", version, about, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve a directory (DIR or br:///DIR) as an S3 bucket until Ctrl-C.
    Serve(Box<ServeArgs>),
    /// Print the s3:// storage URL that br:///DIR translates to.
    Url(UrlArgs),
    /// The nodes joined to a running server: list, remove (revoke), rotate the join token.
    Nodes(crate::nodes_cli::NodesArgs),
    /// Show the cluster: nodes, backups in the archive, coverage, running jobs.
    Status(StatusArgs),
}

#[derive(Debug, Args)]
struct StatusArgs {
    /// The served archive (DIR or br:///DIR): its server.json and status token are used
    /// [default: a "depot-archive" directory under the system temp directory].
    archive: Option<String>,
    /// The status_url `depot serve` printed (or the endpoint, with --token).
    #[arg(long, value_name = "URL", conflicts_with = "archive")]
    endpoint: Option<String>,
    /// The status token, when --endpoint carries none.
    #[arg(long, env = "DEPOT_STATUS_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// A CA (PEM) to trust for https:// [default: the archive's ca.pem].
    #[arg(long, value_name = "PEM")]
    ca_file: Option<PathBuf>,
    /// Print the status as one JSON object.
    #[arg(long)]
    json: bool,
    /// Redraw every interval (e.g. 2s) until Ctrl-C.
    #[arg(long, value_name = "INTERVAL", num_args = 0..=1, default_missing_value = "2s", value_parser = humantime::parse_duration)]
    watch: Option<Duration>,
}

#[derive(Debug, Args)]
struct ServeArgs {
    /// The archive: a directory or br:///DIR [default: a "depot-archive" directory under the
    /// system temp directory].
    archive: Option<String>,
    /// Address to listen on [default: 127.0.0.1 on a free port; with --advertise, every
    /// interface on the advertised port].
    #[arg(long, value_name = "ADDR")]
    listen: Option<SocketAddr>,
    /// The HOST:PORT nodes reach this server at (printed in the storage URL).
    #[arg(long, value_name = "HOST:PORT")]
    advertise: Option<String>,
    /// The region clients sign for.
    #[arg(long, env = "DEPOT_REGION", default_value = "us-east-1")]
    region: String,
    #[command(flatten)]
    credentials: CredentialArgs,
    /// The agents' join token [default: generated].
    #[arg(long, env = "DEPOT_JOIN_TOKEN", hide_env_values = true)]
    join_token: Option<String>,
    /// File holding the agents' join token (instead of --join-token, which `ps` shows).
    #[arg(long, value_name = "FILE", conflicts_with = "join_token")]
    join_token_file: Option<PathBuf>,
    /// HTTPS: auto = on when --advertise is not a loopback address.
    #[arg(long, value_enum, default_value_t = TlsMode::Auto)]
    tls: TlsMode,
    /// Serve this certificate chain (PEM) instead of a generated one.
    #[arg(long, requires = "tls_key", value_name = "PEM")]
    tls_cert: Option<PathBuf>,
    /// The private key (PEM) of --tls-cert.
    #[arg(long, requires = "tls_cert", value_name = "PEM")]
    tls_key: Option<PathBuf>,
    /// Serve each top-level directory as a bucket (CreateBucket/DeleteBucket/ListBuckets).
    #[arg(long)]
    multi_bucket: bool,
    /// Print the start banner as one JSON line on stdout.
    #[arg(long)]
    json: bool,
    /// Log file [default: ARCHIVE/.depot/depot.log].
    #[arg(long, value_name = "PATH")]
    log_file: Option<PathBuf>,
    /// Log level (RUST_LOG, when set, wins).
    #[arg(long, default_value = "info")]
    log_level: String,
    /// How often agents heartbeat (e.g. 5s, 500ms).
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    heartbeat_interval: Duration,
    /// How long Ctrl-C waits for requests in flight.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    shutdown_timeout: Duration,
    /// Lifetime of the certificates issued to nodes at join (they renew at two thirds of it).
    #[arg(long, default_value = "24h", value_parser = parse_duration)]
    cert_lifetime: Duration,
    #[command(flatten)]
    limits: depot_net::LimitArgs,
    /// Remove multipart uploads untouched for this long (e.g. 7d, 12h, 3600), freeing their space.
    #[arg(long, default_value = "7d", value_parser = parse_duration)]
    multipart_expiry: Duration,
}

/// A duration: `30s`, `7d`, `1h 30m` (humantime), or plain seconds.
fn parse_duration(text: &str) -> Result<Duration, String> {
    if let Ok(seconds) = text.trim().parse::<u64>() {
        return Ok(Duration::from_secs(seconds));
    }
    humantime::parse_duration(text).map_err(|e| format!("{e} (expected e.g. 30s, 12h, 7d, or plain seconds)"))
}

#[derive(Debug, Args)]
struct CredentialArgs {
    /// The bucket name [default: depot-<random>].
    #[arg(long, env = "DEPOT_BUCKET")]
    bucket: Option<String>,
    /// The access key [default: generated].
    #[arg(long, env = "DEPOT_ACCESS_KEY")]
    access_key: Option<String>,
    /// The secret key [default: generated].
    #[arg(long, env = "DEPOT_SECRET_KEY", hide_env_values = true)]
    secret_key: Option<String>,
    /// File holding the secret key (instead of --secret-key, which `ps` shows).
    #[arg(long, value_name = "FILE", conflicts_with = "secret_key")]
    secret_key_file: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct UrlArgs {
    /// The archive: br:///DIR or a directory.
    archive: String,
    /// The HOST:PORT nodes reach the server at [default: the running server's].
    #[arg(long, value_name = "HOST:PORT")]
    advertise: Option<String>,
    /// The bucket, when no server is running on the archive.
    #[arg(long, env = "DEPOT_BUCKET")]
    bucket: Option<String>,
    /// The region, when no server is running on the archive.
    #[arg(long, env = "DEPOT_REGION", default_value = "us-east-1")]
    region: String,
    /// Whether the endpoint is HTTPS, when no server is running on the archive.
    #[arg(long)]
    https: bool,
}

/// Runs the parsed command line.
///
/// # Errors
/// Anything that stops the command; `main` prints it and exits 1.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve(args) => serve(*args),
        Command::Url(args) => url(args),
        Command::Nodes(args) => crate::nodes_cli::run(args),
        Command::Status(args) => status(args),
    }
}

fn status(args: StatusArgs) -> anyhow::Result<()> {
    use crate::status::client::{Target, render};
    let target = match &args.endpoint {
        Some(url) => Target::from_url(url, args.token.clone(), args.ca_file.clone())?,
        None => {
            let archive = match &args.archive {
                Some(arg) => archive_path(arg)?,
                None => std::env::temp_dir().join("depot-archive"),
            };
            Target::from_archive(&archive, args.ca_file.clone())?
        }
    };
    let runtime =
        tokio::runtime::Builder::new_current_thread().enable_all().build().context("cannot start the async runtime")?;
    runtime.block_on(async {
        loop {
            let report = target.fetch().await;
            let mut out = std::io::stdout().lock();
            match (&report, args.watch) {
                (Err(err), Some(_)) => {
                    write!(out, "\x1b[H\x1b[2J")?;
                    writeln!(out, "depot status: {err} (retrying)")?;
                }
                (Err(_), None) => return report.map(|_| ()).map_err(anyhow::Error::from),
                (Ok(report), watch) => {
                    if watch.is_some() && !args.json {
                        write!(out, "\x1b[H\x1b[2J")?;
                    }
                    if args.json {
                        writeln!(out, "{}", serde_json::to_string(report)?)?;
                    } else {
                        write!(out, "{}", render(report))?;
                    }
                }
            }
            out.flush()?;
            drop(out);
            let Some(every) = args.watch else { return Ok(()) };
            tokio::select! {
                () = tokio::time::sleep(every) => {}
                _ = tokio::signal::ctrl_c() => return Ok(()),
            }
        }
    })
}

fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let archive = match &args.archive {
        Some(arg) => archive_path(arg)?,
        None => std::env::temp_dir().join("depot-archive"),
    };
    let config = Config {
        archive: archive.clone(),
        listen: args.listen,
        advertise: args.advertise.as_deref().map(Advertised::parse).transpose()?,
        region: args.region,
        credentials: Given {
            bucket: args.credentials.bucket,
            access_key: args.credentials.access_key,
            secret_key: depot_net::secret_flag(
                "secret-key",
                "DEPOT_SECRET_KEY",
                args.credentials.secret_key,
                args.credentials.secret_key_file.as_deref(),
            )
            .map_err(anyhow::Error::msg)?,
            join_token: depot_net::secret_flag(
                "join-token",
                "DEPOT_JOIN_TOKEN",
                args.join_token,
                args.join_token_file.as_deref(),
            )
            .map_err(anyhow::Error::msg)?,
        },
        tls: args.tls,
        tls_files: args.tls_cert.zip(args.tls_key),
        multi_bucket: args.multi_bucket,
        heartbeat_interval: args.heartbeat_interval,
        cert_lifetime: args.cert_lifetime,
        limits: args.limits.limits(),
        drain_timeout: args.shutdown_timeout,
        multipart_expiry: args.multipart_expiry,
    };
    let raised = depot_net::raise_open_file_limit();
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    runtime.block_on(async move {
        let mut server = Server::bind(config).await?;
        let log_file = args.log_file.unwrap_or_else(|| server.banner().archive.join(".depot/depot.log"));
        init_logging(&log_file, &args.log_level)?;
        server.set_log_file(log_file);
        match raised {
            Ok((before, after)) => tracing::info!(?before, ?after, "open-file limit (soft) raised to the hard limit"),
            Err(err) => tracing::warn!(%err, "cannot raise the open-file limit"),
        }
        if server.swept() > 0 {
            tracing::info!(files = server.swept(), "removed temp files left by an interrupted run");
        }
        let shutdown = shutdown_signal()?;
        print_banner(server.banner(), args.json, server.swept())?;
        let summary = server.run(shutdown).await;
        print_summary(&summary, args.json);
        Ok(())
    })
}

fn url(args: UrlArgs) -> anyhow::Result<()> {
    let archive = archive_path(&args.archive)?;
    let advertised = args.advertise.as_deref().map(Advertised::parse).transpose()?;
    let (bucket, region, tls, endpoint) = match ServerInfo::running(&archive) {
        Some(info) => {
            let tls = info.endpoint.starts_with("https://");
            let Some(bucket) = args.bucket.or(info.bucket) else {
                bail!("the server on {} has no single bucket (--multi-bucket); pass --bucket", archive.display());
            };
            (bucket, info.region, tls, info.endpoint)
        }
        None => {
            let Some(bucket) = args.bucket else {
                bail!(
                    "no depot is serving {}: start `depot serve br://{}`, or pass --bucket (and --advertise) to translate without one",
                    archive.display(),
                    archive.display()
                );
            };
            let Some(advertised) = &advertised else {
                bail!("no depot is serving {}: pass --advertise HOST:PORT", archive.display());
            };
            (bucket, args.region, args.https, advertised.url(args.https))
        }
    };
    let endpoint = advertised.map_or(endpoint, |a| a.url(tls));
    println!("{}", StorageUrl { bucket, endpoint, region });
    Ok(())
}

/// Logs go to a file; the console is for the banner and the summary.
fn init_logging(path: &PathBuf, level: &str) -> anyhow::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create the log directory {}", dir.display()))?;
    }
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("cannot open the log file {}", path.display()))?;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(level))
        .with_context(|| format!("--log-level {level:?} is not a valid level or filter"))?;
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::sync::Mutex::new(file)).with_ansi(false).init();
    Ok(())
}

fn print_banner(banner: &Banner, json: bool, swept: usize) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    if json {
        writeln!(out, "{}", serde_json::to_string(banner)?)?;
        out.flush()?;
        return Ok(());
    }
    let what = match &banner.bucket {
        Some(bucket) => format!("as bucket {bucket}"),
        None => "with one bucket per top-level directory".to_owned(),
    };
    writeln!(out, "depot: serving {} {what}", banner.archive.display())?;
    writeln!(out, "  endpoint:    {}  (region {})", banner.endpoint, banner.region)?;
    if let Some(url) = &banner.storage_url {
        writeln!(out, "  storage URL: {url}")?;
        writeln!(
            out,
            "               (BR/TiKV: put a backup under a prefix, s3://{}/NAME?...)",
            banner.bucket.as_deref().unwrap_or("")
        )?;
    }
    writeln!(out, "  credentials (fresh for this run, stored nowhere):")?;
    writeln!(out, "    export AWS_ACCESS_KEY_ID={} AWS_SECRET_ACCESS_KEY={}", banner.access_key, banner.secret_key)?;
    if let Some(bundle) = &banner.bundle_file {
        writeln!(out, "    export SSL_CERT_FILE={}", bundle.display())?;
    }
    if let Some(bundle) = &banner.aws_ca_bundle {
        // aws-sdk-go (BR), boto3 and the AWS CLI read AWS_CA_BUNDLE before SSL_CERT_FILE.
        writeln!(out, "    export AWS_CA_BUNDLE={}", bundle.display())?;
    }
    if let Some(ca) = &banner.ca_file {
        writeln!(out, "  CA certificate: {} (copy it to every node)", ca.display())?;
    }
    // The join token goes in the environment: a flag would show in `ps` on every node.
    writeln!(out, "  agents:      export DEPOT_JOIN_TOKEN={}", banner.join_token)?;
    writeln!(out, "               depot-agent serve --coordinator {} --root DIR ...", banner.registry)?;
    writeln!(out, "  status:      {}", banner.status_url)?;
    writeln!(out, "  metrics:     {}  (Prometheus; no credential)", banner.metrics_url)?;
    if let Some(log) = &banner.log_file {
        writeln!(out, "  log file:    {}", log.display())?;
    }
    if swept > 0 {
        writeln!(out, "  removed {swept} temp files left by an interrupted run")?;
    }
    writeln!(out, "Press Ctrl-C to stop.")?;
    out.flush()?;
    Ok(())
}

fn print_summary(summary: &Summary, json: bool) {
    // With --json, stdout carries exactly the one banner line; the summary goes to stderr.
    if json {
        eprintln!("{summary}");
    } else {
        println!("{summary}");
    }
}

/// A future that completes on Ctrl-C or SIGTERM. The handlers are installed now, before the
/// banner tells anyone the server is up, so an early SIGTERM is a clean stop, not a kill.
fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut interrupt = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
    let mut terminate = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
    Ok(async move {
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = terminate.recv() => {}
        }
    })
}
