//! Prometheus metrics and health checks of an agent, over plain HTTP on `--metrics ADDR`:
//! `/metrics` (also `/_depot/metrics`), `/_depot/healthz`, `/_depot/readyz`.
//!
//! Figures are read at scrape time from the counters the agent keeps anyway
//! ([`ServeStats`] for `serve`, [`JobCounters`] for `fetch`). No credential is needed, so
//! nothing here names a file, an address or a secret: labels are method names, outcomes, and
//! node ids (which peers name themselves).

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::rt::{TokioExecutor, TokioIo};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

use crate::jobs::JobCounters;
use crate::service::{METHODS, ServeStats};

/// The content type of the exposition (OpenMetrics text).
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// What a metrics endpoint exposes.
#[derive(Debug, Clone)]
pub enum Source {
    /// A serving agent.
    Serve(Arc<ServeStats>),
    /// A running fetch.
    Fetch(Arc<JobCounters>),
}

impl Collector for Source {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let e = &mut encoder;
        match self {
            Self::Serve(s) => {
                let mut calls = e.encode_descriptor(
                    "depot_agent_requests",
                    "NodeAgent calls answered, by method and outcome",
                    None,
                    prometheus_client::metrics::MetricType::Counter,
                )?;
                for (i, method) in METHODS.iter().enumerate() {
                    for (j, outcome) in ["ok", "error"].iter().enumerate() {
                        let labels = [("method", *method), ("outcome", *outcome)];
                        ConstCounter::new(s.calls[i][j].load(Relaxed)).encode(calls.encode_family(&labels)?)?;
                    }
                }
                counter(e, "depot_agent_sent_bytes", "ReadFile bytes sent to peers", s.bytes_sent.load(Relaxed))?;
                let per_peer = s.per_peer.lock().map(|m| m.clone()).unwrap_or_default();
                let mut peers = e.encode_descriptor(
                    "depot_agent_peer_sent_bytes",
                    "ReadFile bytes sent, by the node id the caller gave",
                    None,
                    prometheus_client::metrics::MetricType::Counter,
                )?;
                for (peer, bytes) in &per_peer {
                    let labels = [("peer", peer.as_str())];
                    ConstCounter::new(*bytes).encode(peers.encode_family(&labels)?)?;
                }
                counter(
                    e,
                    "depot_agent_refused_requests",
                    "Requests refused for an unsafe name",
                    s.refused.load(Relaxed),
                )?;
                gauge(
                    e,
                    "depot_agent_active_transfers",
                    "ReadFile streams sending now",
                    s.active_transfers.load(Relaxed),
                )?;
                counter(
                    e,
                    "depot_agent_rate_limit_waits",
                    "Chunks held back by --max-rate",
                    s.rate_waits.load(Relaxed),
                )?;
                let waited = s.rate_wait_nanos.load(Relaxed) as f64 / 1e9;
                let metric = ConstCounter::new(waited);
                metric.encode(e.encode_descriptor(
                    "depot_agent_rate_limit_wait_seconds",
                    "Time chunks were held back by --max-rate",
                    None,
                    metric.metric_type(),
                )?)?;
            }
            Self::Fetch(c) => {
                let f = c.figures();
                gauge(e, "depot_fetch_files_needed", "Files the fetch must make present", f.files.0)?;
                gauge(e, "depot_fetch_files_done", "Files present and verified", f.files.1)?;
                gauge(e, "depot_fetch_bytes_needed", "Bytes the fetch must make present", f.bytes.0)?;
                gauge(
                    e,
                    "depot_fetch_bytes_done",
                    "Bytes present (verified, or received for a file in progress)",
                    f.bytes.1,
                )?;
                gauge(e, "depot_fetch_files_missing", "Files held by no live node", f.missing_failed.0)?;
                gauge(e, "depot_fetch_files_failed", "Files that failed for another reason", f.missing_failed.1)?;
                counter(e, "depot_fetch_retries", "Rounds of asking the peers again", f.retries_failovers.0)?;
                counter(e, "depot_fetch_failovers", "Transfers continued from another holder", f.retries_failovers.1)?;
                let mut sources = e.encode_descriptor(
                    "depot_fetch_source_bytes",
                    "Bytes of installed files, by the node they came from",
                    None,
                    prometheus_client::metrics::MetricType::Counter,
                )?;
                for (node, bytes) in &f.per_source {
                    let labels = [("source", node.as_str())];
                    ConstCounter::new(*bytes).encode(sources.encode_family(&labels)?)?;
                }
            }
        }
        Ok(())
    }
}

fn counter(e: &mut DescriptorEncoder, name: &str, help: &str, value: u64) -> Result<(), std::fmt::Error> {
    let metric = ConstCounter::new(value);
    metric.encode(e.encode_descriptor(name, help, None, metric.metric_type())?)
}

fn gauge(e: &mut DescriptorEncoder, name: &str, help: &str, value: u64) -> Result<(), std::fmt::Error> {
    let metric = ConstGauge::new(i64::try_from(value).unwrap_or(i64::MAX));
    metric.encode(e.encode_descriptor(name, help, None, metric.metric_type())?)
}

/// The exposition of `source`.
#[must_use]
pub fn encode(source: &Source) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(source.clone()));
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, &registry).expect("writing to a String cannot fail");
    out
}

/// Readiness: `Ok` or why not.
pub type ReadyCheck = Arc<dyn Fn() -> Result<(), String> + Send + Sync>;

/// Serves the metrics of `source` and the health checks on `listener` until the task is
/// dropped or aborted.
pub async fn serve(listener: tokio::net::TcpListener, source: Source, ready: ReadyCheck) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            continue;
        };
        let source = source.clone();
        let ready = Arc::clone(&ready);
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                let response = answer(req.uri().path(), &source, &ready);
                async move { Ok::<_, Infallible>(response) }
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

fn answer(path: &str, source: &Source, ready: &ReadyCheck) -> http::Response<Full<Bytes>> {
    let (status, content_type, body) = match path {
        "/metrics" | "/_depot/metrics" => (200, CONTENT_TYPE, encode(source)),
        "/_depot/healthz" | "/healthz" => (200, "text/plain", "ok\n".to_owned()),
        "/_depot/readyz" | "/readyz" => match ready() {
            Ok(()) => (200, "text/plain", "ready\n".to_owned()),
            Err(why) => (503, "text/plain", format!("not ready: {why}\n")),
        },
        _ => (404, "text/plain", "not found: /metrics, /_depot/healthz, /_depot/readyz\n".to_owned()),
    };
    http::Response::builder()
        .status(status)
        .header(http::header::CONTENT_TYPE, content_type)
        .body(Full::new(Bytes::from(body)))
        .expect("a valid response")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serve_counters_are_exposed_by_method_and_peer() {
        let stats = Arc::<ServeStats>::default();
        stats.calls[1][0].fetch_add(2, Relaxed);
        stats.per_peer.lock().unwrap().insert("node3".into(), 4096);
        let text = encode(&Source::Serve(stats));
        assert!(text.contains(r#"depot_agent_requests_total{method="ReadFile",outcome="ok"} 2"#), "{text}");
        assert!(text.contains(r#"depot_agent_peer_sent_bytes_total{peer="node3"} 4096"#), "{text}");
        assert!(text.ends_with("# EOF\n"));
    }
}
