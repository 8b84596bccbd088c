//! Everything under `/_depot/` on the S3 port: health, metrics, the status API and page.
//!
//! Bucket names cannot start with `_`, so these paths never collide with S3's. Health and
//! metrics need no credential (Prometheus' habit) and carry only counts and durations. The
//! status API and page need the run's status token (read-only: it can see, not change), as
//! `?token=` (so the printed `status_url` opens as it is) or `Authorization: Bearer`.
//!
//! - [`report`]: the status document.
//! - [`backups`]: backups found in the archive, checked against their manifests.
//! - [`client`]: `depot status`, the command-line reader of the document.
//! - [`restore`]: the cluster's `br restore` line, from the nodes' S3 views.

pub mod backups;
pub mod client;
pub mod report;
pub mod restore;

use std::fs::File;
use std::os::unix::fs::MetadataExt as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use rand::TryRngCore as _;
use rand::distr::{Alphanumeric, SampleString as _};
use s3s::auth::SecretKey;
use subtle::ConstantTimeEq as _;

use crate::metrics::Metrics;
use crate::registry::Registry;
use report::{Coverage, JobStatus, NodeStatus, ServerStatus, StatusReport};

/// The path prefix of everything here.
pub const PREFIX: &str = "/_depot/";

/// The page: one file, no build step, no external assets (works air-gapped).
const PAGE: &str = include_str!("page.html");

/// A fresh status token: 32 alphanumerics from the OS CSPRNG.
pub fn generate_token() -> SecretKey {
    let mut rng = rand::rngs::OsRng.unwrap_err();
    SecretKey::from(Alphanumeric.sample_string(&mut rng, 32))
}

/// What answers `/_depot/...`. Cheap to clone.
#[derive(Debug, Clone)]
pub struct StatusService(Arc<Inner>);

#[derive(Debug)]
struct Inner {
    token: SecretKey,
    metrics: Arc<Metrics>,
    registry: Arc<Registry>,
    backups: backups::Backups,
    endpoint: String,
    started: Instant,
    /// For readiness: the archive's temp directory must take a file...
    tmp_dir: PathBuf,
    /// ...and the lock file must still be the one this process holds.
    lock_path: PathBuf,
    lock: File,
}

/// What [`StatusService::new`] needs.
#[derive(Debug)]
pub struct StatusConfig {
    /// The status token.
    pub token: SecretKey,
    /// The server's metrics.
    pub metrics: Arc<Metrics>,
    /// The agents.
    pub registry: Arc<Registry>,
    /// The archive directory.
    pub archive: PathBuf,
    /// The S3 endpoint (shown on the page).
    pub endpoint: String,
    /// `.depot/tmp`.
    pub tmp_dir: PathBuf,
    /// `.depot/lock` and the handle holding it.
    pub lock: (PathBuf, File),
}

impl StatusService {
    /// The service.
    pub fn new(config: StatusConfig) -> Self {
        Self(Arc::new(Inner {
            token: config.token,
            metrics: config.metrics,
            registry: config.registry,
            backups: backups::Backups::new(config.archive),
            endpoint: config.endpoint,
            started: Instant::now(),
            tmp_dir: config.tmp_dir,
            lock_path: config.lock.0,
            lock: config.lock.1,
        }))
    }

    /// Answers a request whose path starts with [`PREFIX`] (or is `/_depot`).
    pub async fn handle<B>(&self, req: Request<B>) -> Response<s3s::Body> {
        let inner = &self.0;
        if req.method() != Method::GET && req.method() != Method::HEAD {
            return plain(StatusCode::METHOD_NOT_ALLOWED, "only GET and HEAD are served under /_depot/\n");
        }
        let path = req.uri().path().trim_start_matches("/_depot").trim_start_matches('/');
        match path {
            "healthz" => plain(StatusCode::OK, "ok\n"),
            "readyz" => match inner.ready() {
                Ok(()) => plain(StatusCode::OK, "ready\n"),
                Err(why) => plain(StatusCode::SERVICE_UNAVAILABLE, &format!("not ready: {why}\n")),
            },
            "metrics" => respond(StatusCode::OK, crate::metrics::CONTENT_TYPE, inner.metrics.encode().into()),
            "" | "index.html" | "api/status" if !inner.authorized(&req) => refuse(path != "api/status"),
            "" | "index.html" => {
                let mut response =
                    respond(StatusCode::OK, "text/html; charset=utf-8", Bytes::from_static(PAGE.as_bytes()));
                response.headers_mut().insert(
                    header::CONTENT_SECURITY_POLICY,
                    HeaderValue::from_static(
                        "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; img-src data:",
                    ),
                );
                response
            }
            "api/status" => {
                let report = self.report().await;
                let body = serde_json::to_vec(&report).expect("serializable");
                respond(StatusCode::OK, "application/json", body.into())
            }
            _ => plain(
                StatusCode::NOT_FOUND,
                "not found: /_depot/ serves healthz, readyz, metrics and (with the status token) the status page\n",
            ),
        }
    }

    /// The status document now.
    pub async fn report(&self) -> StatusReport {
        let inner = &self.0;
        // The serving nodes; fetch/verify runs show as their node's jobs.
        let nodes: Vec<_> = inner.registry.nodes().into_iter().filter(|n| !n.client_only).collect();
        let mut backups = inner.backups.list().await;
        let mut jobs = Vec::new();
        for (host, job) in inner.backups.collect_jobs().await {
            jobs.push(JobStatus::from((host.as_str(), &job.into_report())));
        }
        for node in &nodes {
            let Some(report) = &node.report else { continue };
            jobs.extend(report.jobs.iter().map(|j| JobStatus::from((node.node_id.as_str(), j))));
            for holding in &report.holdings {
                if let Some(backup) = backups.iter_mut().find(|b| b.prefix == holding.backup) {
                    backup.coverage.push(Coverage {
                        node_id: node.node_id.clone(),
                        files_held: holding.files_held,
                        files_total: holding.files_total,
                        bytes_held: holding.bytes_held,
                    });
                }
            }
        }
        let mut report = StatusReport {
            server: ServerStatus {
                version: env!("CARGO_PKG_VERSION").to_owned(),
                endpoint: inner.endpoint.clone(),
                uptime_seconds: inner.started.elapsed().as_secs(),
                heartbeat_interval_ms: u64::try_from(inner.registry.interval().as_millis()).unwrap_or(u64::MAX),
            },
            nodes: nodes
                .iter()
                .map(|n| NodeStatus {
                    node_id: n.node_id.clone(),
                    address: n.address.clone(),
                    version: n.report.as_ref().map(|r| r.version.clone()).unwrap_or_default(),
                    live: n.live,
                    last_heartbeat_ms: n.last_seen.map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
                    certificate_expiry: time::OffsetDateTime::from_unix_timestamp(n.certificate_not_after)
                        .ok()
                        .filter(|_| !n.serial.is_empty())
                        .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok()),
                    jobs: n.report.as_ref().map_or(0, |r| r.jobs.len()),
                    view: n.report.as_ref().and_then(|r| r.view.as_ref()).map(report::ViewStatus::from),
                })
                .collect(),
            backups,
            jobs,
            restore: None,
        };
        report.restore = restore::advice(&report.nodes);
        report
    }
}

impl Inner {
    fn authorized<B>(&self, req: &Request<B>) -> bool {
        let from_query = req
            .uri()
            .query()
            .and_then(|q| q.split('&').find_map(|pair| pair.strip_prefix("token=")).map(str::to_owned));
        let from_header = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::to_owned);
        from_query
            .into_iter()
            .chain(from_header)
            .any(|presented| bool::from(presented.as_bytes().ct_eq(self.token.expose().as_bytes())))
    }

    /// Ready: the archive takes a file, and the lock this process holds is still the archive's.
    fn ready(&self) -> Result<(), String> {
        let _ = std::fs::create_dir_all(&self.tmp_dir);
        let probe = self.tmp_dir.join(format!("readyz-{}.tmp", std::process::id()));
        std::fs::write(&probe, b"").map_err(|e| format!("the archive is not writable ({}: {e})", probe.display()))?;
        let _ = std::fs::remove_file(&probe);
        let held = self.lock.metadata().map_err(|e| format!("the lock cannot be checked: {e}"))?;
        match std::fs::metadata(&self.lock_path) {
            Ok(now) if now.ino() == held.ino() && now.dev() == held.dev() => Ok(()),
            _ => Err(format!("{} is no longer the lock this server holds", self.lock_path.display())),
        }
    }
}

fn respond(status: StatusCode, content_type: &'static str, body: Bytes) -> Response<s3s::Body> {
    let mut response = Response::new(s3s::Body::from(body));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    response
}

fn plain(status: StatusCode, text: &str) -> Response<s3s::Body> {
    respond(status, "text/plain; charset=utf-8", Bytes::from(text.to_owned()))
}

fn refuse(html: bool) -> Response<s3s::Body> {
    let text = "the status page needs the status token: open the status_url `depot serve` printed \
                (the `status:` line), or send Authorization: Bearer <token>";
    if html {
        let page = format!(
            "<!doctype html><meta charset=utf-8><title>Depot: status token needed</title><h1>401: status token needed</h1><p>{text}</p>"
        );
        respond(StatusCode::UNAUTHORIZED, "text/html; charset=utf-8", Bytes::from(page))
    } else {
        plain(StatusCode::UNAUTHORIZED, &format!("{text}\n"))
    }
}
