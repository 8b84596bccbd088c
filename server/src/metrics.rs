//! Prometheus metrics of `depot serve`, served at `/_depot/metrics` on the S3 port.
//!
//! Counters live where they are cheapest to update: per-request figures (operation, status
//! class, latency) in a [`prometheus_client`] family updated once per response by the
//! connection loop; object and byte totals in [`Stats`] (the atomics behind the shutdown
//! summary), read only when scraped; registered nodes and open multipart uploads are counted
//! at scrape time. Nothing here carries a key, a file name, a node address or a secret: labels
//! are S3 operation names (a fixed set) and status classes.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeLabelValue, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::registry::Registry as Agents;
use crate::stats::Stats;

/// The content type of the exposition (OpenMetrics text, which Prometheus scrapes natively).
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// A response's status class, as a label.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
enum Class {
    #[allow(missing_docs)]
    ok,
    #[allow(missing_docs)]
    client_error,
    #[allow(missing_docs)]
    server_error,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    /// The S3 operation as s3s names it (`PutObject`, ...), `unknown` when the request never
    /// got that far (a bad signature), `registry` for the agents' gRPC calls.
    operation: String,
    class: Class,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OperationLabel {
    operation: String,
}

fn latency_histogram() -> Histogram {
    // 0.5 ms .. ~16 s: a small GET on loopback to a 1 GiB PUT on a slow disk.
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(0.0005, 2.0, 16))
}

/// The coordinator's metrics; shared by every connection.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    latency: Family<OperationLabel, Histogram, fn() -> Histogram>,
    request_body: Counter,
    connections_open: Gauge,
    connections: Counter,
    tls_failures: Counter,
}

impl Metrics {
    /// Metrics over `stats` (object totals), `agents` (registered nodes) and the multipart
    /// uploads in `uploads_dir`.
    pub fn new(stats: Arc<Stats>, agents: Arc<Agents>, uploads_dir: PathBuf) -> Arc<Self> {
        let mut registry = Registry::default();
        let requests = Family::<RequestLabels, Counter>::default();
        let latency = Family::<OperationLabel, Histogram, fn() -> Histogram>::new_with_constructor(latency_histogram);
        let request_body = Counter::default();
        let connections_open = Gauge::default();
        let connections = Counter::default();
        let tls_failures = Counter::default();
        registry.register("depot_s3_requests", "S3 requests answered, by operation and status class", requests.clone());
        registry.register(
            "depot_s3_request_duration_seconds",
            "Time from request to response headers, by S3 operation",
            latency.clone(),
        );
        registry.register(
            "depot_s3_request_body_bytes",
            "Request body bytes of answered S3 requests, as declared by Content-Length (on the wire)",
            request_body.clone(),
        );
        registry.register("depot_connections_open", "Client connections open now", connections_open.clone());
        registry.register("depot_connections", "Client connections accepted", connections.clone());
        registry.register(
            "depot_tls_handshake_failures",
            "TLS handshakes that failed or timed out",
            tls_failures.clone(),
        );
        registry.register_collector(Box::new(Snapshot { stats, agents, uploads_dir }));
        Arc::new(Self { registry, requests, latency, request_body, connections_open, connections, tls_failures })
    }

    /// An S3 (or registry) request got a response with `status` after `elapsed`.
    pub fn request(&self, operation: &str, status: http::StatusCode, elapsed: Duration, body_bytes: u64) {
        let class = match status.as_u16() {
            ..400 => Class::ok,
            400..500 => Class::client_error,
            _ => Class::server_error,
        };
        self.requests.get_or_create(&RequestLabels { operation: operation.to_owned(), class }).inc();
        self.latency.get_or_create(&OperationLabel { operation: operation.to_owned() }).observe(elapsed.as_secs_f64());
        if body_bytes > 0 {
            self.request_body.inc_by(body_bytes);
        }
    }

    /// A connection was accepted; the guard counts it closed when dropped.
    pub fn connection(self: &Arc<Self>) -> ConnectionGuard {
        self.connections.inc();
        self.connections_open.inc();
        ConnectionGuard(Arc::clone(self))
    }

    /// A TLS handshake failed or timed out.
    pub fn tls_failure(&self) {
        self.tls_failures.inc();
    }

    /// The exposition, OpenMetrics text (ends with `# EOF`).
    pub fn encode(&self) -> String {
        let mut out = String::with_capacity(8 * 1024);
        prometheus_client::encoding::text::encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }
}

/// Counts an open connection until dropped.
#[derive(Debug)]
pub struct ConnectionGuard(Arc<Metrics>);

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.0.connections_open.dec();
    }
}

/// Figures read at scrape time from where they already are.
#[derive(Debug)]
struct Snapshot {
    stats: Arc<Stats>,
    agents: Arc<Agents>,
    uploads_dir: PathBuf,
}

fn counter(encoder: &mut DescriptorEncoder, name: &str, help: &str, value: u64) -> Result<(), std::fmt::Error> {
    let metric = ConstCounter::new(value);
    metric.encode(encoder.encode_descriptor(name, help, None, metric.metric_type())?)
}

fn gauge(encoder: &mut DescriptorEncoder, name: &str, help: &str, value: i64) -> Result<(), std::fmt::Error> {
    let metric = ConstGauge::new(value);
    metric.encode(encoder.encode_descriptor(name, help, None, metric.metric_type())?)
}

impl Collector for Snapshot {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let s = self.stats.summary();
        let e = &mut encoder;
        counter(
            e,
            "depot_s3_objects_written",
            "Objects stored (PUT, copy, completed multipart upload)",
            s.objects_written,
        )?;
        counter(e, "depot_s3_written_bytes", "Bytes of the objects stored", s.bytes_written)?;
        counter(e, "depot_s3_objects_read", "GET requests that sent an object body", s.objects_read)?;
        counter(e, "depot_s3_sent_bytes", "Object body bytes sent by GETs", s.bytes_read)?;
        let uploads = std::fs::read_dir(&self.uploads_dir).map_or(0, |dir| dir.filter_map(Result::ok).count());
        gauge(
            e,
            "depot_s3_multipart_uploads_open",
            "Multipart uploads started and not yet completed or aborted",
            uploads as i64,
        )?;
        gauge(
            e,
            "depot_registry_nodes",
            "Agents heard from within three heartbeat intervals",
            self.agents.live().len() as i64,
        )?;
        gauge(e, "depot_uptime_seconds", "Seconds since the server started", s.duration.as_secs() as i64)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_show_up_in_the_exposition() {
        let stats = Arc::new(Stats::default());
        stats.object_written(100);
        let dir = tempfile::tempdir().unwrap();
        let cluster = Arc::new(crate::cluster::Cluster::open(dir.path(), Duration::from_secs(60)).unwrap());
        let agents = Agents::new(
            s3s::auth::SecretKey::from("join-token-aaaaaaaa"),
            s3s::auth::SecretKey::from("admin"),
            cluster,
            Duration::from_secs(5),
        );
        let metrics = Metrics::new(stats, agents, PathBuf::from("/nonexistent"));
        metrics.request("PutObject", http::StatusCode::OK, Duration::from_millis(3), 100);
        metrics.request("PutObject", http::StatusCode::FORBIDDEN, Duration::from_millis(1), 0);
        let _open = metrics.connection();
        let text = metrics.encode();
        assert!(text.contains(r#"depot_s3_requests_total{operation="PutObject",class="ok"} 1"#), "{text}");
        assert!(text.contains(r#"depot_s3_requests_total{operation="PutObject",class="client_error"} 1"#), "{text}");
        assert!(text.contains("depot_s3_written_bytes_total 100"), "{text}");
        assert!(text.contains("depot_connections_open 1"), "{text}");
        assert!(text.contains("depot_s3_multipart_uploads_open 0"), "{text}");
        assert!(text.ends_with("# EOF\n"), "{text}");
    }
}

/// Where s3s's access check leaves the operation's name for the connection loop: the
/// response does not carry it, the request's extensions reach the check.
#[derive(Debug, Clone, Default)]
pub struct OperationSlot(Arc<std::sync::OnceLock<&'static str>>);

impl OperationSlot {
    /// The operation, or `unknown` when routing did not get that far (a bad signature).
    pub fn get(&self) -> &'static str {
        self.0.get().copied().unwrap_or("unknown")
    }
}

/// s3s's access hook, used only to learn the operation; it decides as s3s's default does
/// (a signed request is allowed, an anonymous one is not).
#[derive(Debug)]
pub struct RecordOperation;

#[async_trait::async_trait]
impl s3s::access::S3Access for RecordOperation {
    async fn check(&self, cx: &mut s3s::access::S3AccessContext<'_>) -> s3s::S3Result<()> {
        let name = intern(cx.s3_op().name());
        if let Some(slot) = cx.extensions_mut().get::<OperationSlot>() {
            let _ = slot.0.set(name);
        }
        match cx.credentials() {
            Some(_) => Ok(()),
            None => Err(s3s::s3_error!(AccessDenied, "Signature is required")),
        }
    }
}

/// The operation names s3s routes to Depot's handlers, as `'static` labels; any other name
/// (an operation Depot does not serve) is `other`, so labels stay a fixed, small set.
fn intern(name: &str) -> &'static str {
    const NAMES: [&str; 24] = [
        "ListBuckets",
        "CreateBucket",
        "DeleteBucket",
        "HeadBucket",
        "GetBucketLocation",
        "GetBucketVersioning",
        "GetObjectLockConfiguration",
        "PutObject",
        "GetObject",
        "HeadObject",
        "ListObjects",
        "ListObjectsV2",
        "DeleteObject",
        "DeleteObjects",
        "CopyObject",
        "CreateMultipartUpload",
        "UploadPart",
        "UploadPartCopy",
        "ListParts",
        "CompleteMultipartUpload",
        "AbortMultipartUpload",
        "ListMultipartUploads",
        "GetObjectAttributes",
        "PostObject",
    ];
    NAMES.iter().find(|n| **n == name).copied().unwrap_or("other")
}
