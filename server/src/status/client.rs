//! `depot status`: reads the status document from a running coordinator and prints it.
//!
//! One GET of `/_depot/api/status` with the status token, over HTTP/1.1, plain or TLS (the
//! archive's CA, or `--ca-file`, plus the system roots).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt as _, Empty};
use hyper_util::rt::TokioIo;

use super::report::StatusReport;
use crate::serve::{ServerInfo, StatusToken};
use crate::stats::human_bytes;

/// How long one status request may take.
const TIMEOUT: Duration = Duration::from_secs(10);

/// Why the status could not be read.
#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    /// No server found on the archive and no `--endpoint`.
    #[error(
        "no depot is serving {}: start `depot serve {}`, or pass --endpoint with the status_url `depot serve` printed",
        archive.display(), archive.display()
    )]
    NotServing {
        /// The archive looked at.
        archive: PathBuf,
    },
    /// The endpoint has no token and none was given.
    #[error("no status token: pass the status_url `depot serve` printed (it includes ?token=), or --token")]
    NoToken,
    /// A local file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The URL is not usable.
    #[error("invalid endpoint {url:?}: {reason} (expected e.g. https://10.0.0.5:9000/_depot/?token=...)")]
    BadUrl {
        /// The URL given.
        url: String,
        /// What is wrong.
        reason: String,
    },
    /// The server could not be reached or the connection failed.
    #[error("cannot reach {url}: {message}")]
    Unreachable {
        /// The endpoint.
        url: String,
        /// What went wrong.
        message: String,
    },
    /// The server refused or failed the request.
    #[error("{url} answered {status}: {body}")]
    Refused {
        /// The endpoint.
        url: String,
        /// HTTP status.
        status: http::StatusCode,
        /// The answer.
        body: String,
    },
}

/// Where to read the status from.
#[derive(Debug, Clone)]
pub struct Target {
    /// `scheme://host:port` of the coordinator.
    pub endpoint: String,
    /// The status token.
    pub token: String,
    /// Extra CA (PEM) to trust for `https://`.
    pub ca_file: Option<PathBuf>,
}

impl Target {
    /// From `--endpoint` (a status URL with `?token=`, or a bare endpoint plus `token`).
    ///
    /// # Errors
    /// [`StatusError::BadUrl`], [`StatusError::NoToken`].
    pub fn from_url(url: &str, token: Option<String>, ca_file: Option<PathBuf>) -> Result<Self, StatusError> {
        let uri: http::Uri = url
            .parse()
            .map_err(|e: http::uri::InvalidUri| StatusError::BadUrl { url: url.to_owned(), reason: e.to_string() })?;
        let (Some(scheme), Some(authority)) = (uri.scheme_str(), uri.authority()) else {
            return Err(StatusError::BadUrl {
                url: url.to_owned(),
                reason: "it needs http:// or https:// and a host".into(),
            });
        };
        let from_query =
            uri.query().and_then(|q| q.split('&').find_map(|p| p.strip_prefix("token=")).map(str::to_owned));
        let token = token.or(from_query).ok_or(StatusError::NoToken)?;
        Ok(Self { endpoint: format!("{scheme}://{authority}"), token, ca_file })
    }

    /// From the server running on `archive` (its `server.json`, status token and CA).
    ///
    /// # Errors
    /// [`StatusError::NotServing`], [`StatusError::Read`].
    pub fn from_archive(archive: &Path, ca_file: Option<PathBuf>) -> Result<Self, StatusError> {
        let info = ServerInfo::running(archive).ok_or_else(|| StatusError::NotServing { archive: archive.into() })?;
        let path = StatusToken::path(archive);
        let token = std::fs::read_to_string(&path).map_err(|source| StatusError::Read { path, source })?;
        let ca = archive.join(depot_fs::STATE_DIR).join("tls").join("ca.pem");
        let ca_file = ca_file.or_else(|| (info.endpoint.starts_with("https://") && ca.is_file()).then_some(ca));
        Ok(Self { endpoint: info.endpoint, token: token.trim().to_owned(), ca_file })
    }

    /// Reads the status document.
    ///
    /// # Errors
    /// [`StatusError`].
    pub async fn fetch(&self) -> Result<StatusReport, StatusError> {
        match tokio::time::timeout(TIMEOUT, self.get("/_depot/api/status")).await {
            Ok(result) => {
                let body = result?;
                serde_json::from_slice(&body).map_err(|e| StatusError::Unreachable {
                    url: self.endpoint.clone(),
                    message: format!("the answer is not a status document ({e}); is it a depot server?"),
                })
            }
            Err(_) => Err(self.unreachable(format!("no answer within {TIMEOUT:?}"))),
        }
    }

    fn unreachable(&self, message: impl std::fmt::Display) -> StatusError {
        StatusError::Unreachable { url: self.endpoint.clone(), message: message.to_string() }
    }

    async fn get(&self, path: &str) -> Result<bytes::Bytes, StatusError> {
        let uri: http::Uri = self.endpoint.parse().map_err(|e: http::uri::InvalidUri| StatusError::BadUrl {
            url: self.endpoint.clone(),
            reason: e.to_string(),
        })?;
        let host = uri.host().unwrap_or("localhost").trim_start_matches('[').trim_end_matches(']').to_owned();
        let tls = uri.scheme_str() == Some("https");
        let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
        let tcp = tokio::net::TcpStream::connect((host.as_str(), port)).await.map_err(|e| self.unreachable(e))?;
        let request = http::Request::get(path)
            .header(http::header::HOST, uri.authority().map_or(host.clone(), ToString::to_string))
            .header(http::header::AUTHORIZATION, format!("Bearer {}", self.token))
            .body(Empty::<bytes::Bytes>::new())
            .map_err(|e| self.unreachable(e))?;
        let response = if tls {
            let config = self.tls_config()?;
            let name = rustls::pki_types::ServerName::try_from(host.clone()).map_err(|e| self.unreachable(e))?;
            let stream = tokio_rustls::TlsConnector::from(config)
                .connect(name, tcp)
                .await
                .map_err(|e| self.unreachable(format!("TLS: {e} (pass --ca-file with the archive's ca.pem?)")))?;
            send(TokioIo::new(stream), request).await
        } else {
            send(TokioIo::new(tcp), request).await
        }
        .map_err(|e| self.unreachable(e))?;
        let status = response.status();
        let body = response.into_body().collect().await.map_err(|e| self.unreachable(e))?.to_bytes();
        if !status.is_success() {
            return Err(StatusError::Refused {
                url: self.endpoint.clone(),
                status,
                body: String::from_utf8_lossy(&body).trim().to_owned(),
            });
        }
        Ok(body)
    }

    fn tls_config(&self) -> Result<Arc<rustls::ClientConfig>, StatusError> {
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls_native_certs::load_native_certs().certs {
            let _ = roots.add(cert);
        }
        if let Some(path) = &self.ca_file {
            let pem = std::fs::read(path).map_err(|source| StatusError::Read { path: path.clone(), source })?;
            for item in pem::parse_many(&pem).unwrap_or_default() {
                if item.tag() == "CERTIFICATE" {
                    let _ = roots.add(rustls::pki_types::CertificateDer::from(item.into_contents()));
                }
            }
        }
        let config = rustls::ClientConfig::builder_with_provider(crate::tls::provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| self.unreachable(e))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(Arc::new(config))
    }
}

async fn send<S>(
    io: TokioIo<S>,
    request: http::Request<Empty<bytes::Bytes>>,
) -> Result<http::Response<hyper::body::Incoming>, hyper::Error>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(io).await?;
    tokio::spawn(connection);
    sender.send_request(request).await
}

/// The report for a person: nodes, backups with coverage, jobs with progress and ETA.
pub fn render(report: &StatusReport) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let s = &report.server;
    let _ = writeln!(out, "depot {} at {}, up {}s", s.version, s.endpoint, s.uptime_seconds);
    let _ = writeln!(out, "\nNODES ({})", report.nodes.len());
    if report.nodes.is_empty() {
        let _ = writeln!(out, "  none joined");
    } else {
        let _ = writeln!(
            out,
            "  {:<16} {:<24} {:<9} {:>10} {:>5}  CERT EXPIRES",
            "NODE", "ADDRESS", "VERSION", "HEARTBEAT", "JOBS"
        );
        for n in &report.nodes {
            let _ = writeln!(
                out,
                "  {:<16} {:<24} {:<9} {:>10} {:>5}  {}",
                n.node_id,
                n.address,
                if n.version.is_empty() { "?" } else { &n.version },
                heard(n),
                n.jobs,
                n.certificate_expiry.as_deref().unwrap_or("-")
            );
        }
    }
    let views: Vec<_> = report.nodes.iter().filter_map(|n| n.view.as_ref().map(|v| (n, v))).collect();
    if !views.is_empty() {
        let _ = writeln!(out, "\nS3 VIEWS ({})", views.len());
        let _ = writeln!(
            out,
            "  {:<16} {:<28} {:>6} {:>6} {:>6} {:>7} {:>9} {:>10}  CACHE (USED / MAX, EVICTED)",
            "NODE", "ENDPOINT (ON THE NODE)", "LOCAL", "CACHED", "PEERS", "ARCHIVE", "MISSING", "SERVED"
        );
        for (n, v) in &views {
            let max = v.cache_max.map_or_else(|| "unbounded".to_owned(), human_bytes);
            let _ = writeln!(
                out,
                "  {:<16} {:<28} {:>6} {:>6} {:>6} {:>7} {:>9} {:>10}  {} / {max}, {} evicted",
                n.node_id,
                v.endpoint,
                v.local_reads,
                v.cache_hits,
                v.peer_reads,
                v.archive_reads,
                v.missing,
                human_bytes(v.bytes_served),
                human_bytes(v.cache_bytes),
                v.evictions
            );
        }
    }
    if let Some(restore) = &report.restore {
        let _ = writeln!(out, "\nRESTORE WITH NO COPIES (through the S3 views)");
        match &restore.command {
            Some(command) => {
                let _ = writeln!(out, "  every live view agrees; run once, from any node with a view:");
                let _ = writeln!(out, "  {command}");
                let _ = writeln!(
                    out,
                    "  (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY as `depot serve` printed{})",
                    if restore.ssl_cert_file.is_some() { "; every TiKV needs the same SSL_CERT_FILE" } else { "" }
                );
            }
            None => {
                let _ = writeln!(out, "  no single br restore line: the views differ (below)");
            }
        }
        for problem in &restore.problems {
            let _ = writeln!(out, "  ! {problem}");
        }
    }
    let _ = writeln!(out, "\nBACKUPS ({})", report.backups.len());
    if report.backups.is_empty() {
        let _ = writeln!(out, "  none found (a directory with a backupmeta or manifest.jsonl)");
    }
    for b in &report.backups {
        match &b.error {
            Some(err) => {
                let _ = writeln!(out, "  {:<24} {}: unreadable: {err}", b.prefix, b.manifest);
            }
            None => {
                let state = if b.complete {
                    "complete".to_owned()
                } else {
                    format!("incomplete: {} of {} files in the archive", b.files_in_archive, b.files)
                };
                let _ = writeln!(out, "  {:<24} {} files, {}  {state}", b.prefix, b.files, human_bytes(b.bytes));
                if !b.complete && !b.missing.is_empty() {
                    let more = b.files - b.files_in_archive;
                    let shown = b.missing.iter().take(3).cloned().collect::<Vec<_>>().join(", ");
                    let _ = writeln!(out, "    not in the archive: {shown}{}", if more > 3 { ", ..." } else { "" });
                }
                for c in &b.coverage {
                    let _ = writeln!(
                        out,
                        "    {:<16} holds {} of {} files ({})",
                        c.node_id,
                        c.files_held,
                        c.files_total,
                        human_bytes(c.bytes_held)
                    );
                }
            }
        }
    }
    let _ = writeln!(out, "\nJOBS ({})", report.jobs.len());
    if report.jobs.is_empty() {
        let _ = writeln!(out, "  none");
    }
    for j in &report.jobs {
        let eta = j.eta_seconds.map_or_else(|| "-".to_owned(), |s| format!("{s}s"));
        let _ = writeln!(
            out,
            "  {:<12} {} {:<10} {:<14} {:<11} {:>5.1}%  {}/{} files, {} of {}, {}/s, eta {eta}",
            j.node_id,
            j.kind,
            j.task,
            j.backup,
            j.state,
            j.percent(),
            j.files_done,
            j.files_needed,
            human_bytes(j.bytes_done),
            human_bytes(j.bytes_needed),
            human_bytes(j.bytes_per_second as u64),
        );
        if !j.sources.is_empty() {
            let from: Vec<String> = j.sources.iter().map(|(node, b)| format!("{node} {}", human_bytes(*b))).collect();
            let _ = writeln!(out, "    from {}", from.join(", "));
        }
        if j.files_missing > 0 {
            let _ = writeln!(out, "    missing ({}): {}", j.files_missing, j.missing.join(", "));
        }
        if j.files_failed > 0 {
            let _ = writeln!(out, "    failed: {} file(s)", j.files_failed);
        }
    }
    out
}

/// A node's last heartbeat for the table: `1.2s`, `1.2s silent`, or `-` (not heard this run).
fn heard(n: &super::report::NodeStatus) -> String {
    match (n.last_heartbeat_ms, n.live) {
        (None, _) => "-".to_owned(),
        (Some(ms), true) => format!("{:.1}s", ms as f64 / 1000.0),
        (Some(ms), false) => format!("{:.0}s silent", ms as f64 / 1000.0),
    }
}
