//! The connection loop: TLS, HTTP/1.1 and HTTP/2, gRPC vs S3 dispatch, a bounded drain.
//!
//! One port serves both the S3 API and the agents' registry: gRPC requests are recognised by
//! their `application/grpc` content type (a firewall in an air-gapped cluster needs one hole,
//! not two). Shaped after mini-redis's `run(listener, shutdown)`: the caller binds, the loop
//! accepts until `shutdown` completes, then waits a bounded time for requests in flight.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use depot_net::Limits;
use http::{Request, Response};
use http_body_util::Either;
use hyper::body::Incoming;
use tokio::net::TcpListener;
use tower::Service as _;

use crate::metrics::{Metrics, OperationSlot};
use crate::stats::Stats;
use crate::status::StatusService;

/// The body of any response: S3 (s3s) or gRPC (tonic).
pub type ResponseBody = Either<s3s::Body, tonic::body::Body>;

/// Everything a connection needs to answer requests. Cheap to clone.
#[derive(Clone)]
pub struct App {
    /// The S3 API.
    pub s3: s3s::service::S3Service,
    /// The registry (gRPC).
    pub grpc: tonic::service::Routes,
    /// Response counters.
    pub stats: Arc<Stats>,
    /// Prometheus metrics.
    pub metrics: Arc<Metrics>,
    /// `/_depot/`: health, metrics, status.
    pub status: StatusService,
}

impl App {
    async fn handle(self, req: Request<Incoming>) -> Result<Response<ResponseBody>, s3s::HttpError> {
        let grpc = req
            .headers()
            .get(http::header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
        let started = std::time::Instant::now();
        if grpc {
            let mut routes = self.grpc;
            let response = match routes.call(req).await {
                Ok(response) => response,
                Err(never) => match never {},
            };
            self.metrics.request("registry", response.status(), started.elapsed(), 0);
            return Ok(response.map(Either::Right));
        }
        let path = req.uri().path();
        if path.starts_with(crate::status::PREFIX) || path == "/_depot" {
            return Ok(self.status.handle(req).await.map(Either::Left));
        }
        let body_bytes = req
            .headers()
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
        let slot = OperationSlot::default();
        // The same per-request handling as every Depot S3 endpoint (the agents' views too).
        let response = depot_s3::http::handle(&self.s3, req, |ext| {
            ext.insert(slot.clone());
        })
        .await?;
        self.stats.response(response.status());
        self.metrics.request(slot.get(), response.status(), started.elapsed(), body_bytes);
        Ok(response.map(Either::Left))
    }
}

/// Accepts connections on `listener` until `shutdown` completes, then waits up to `drain`
/// for requests in flight before returning. The loop is the one every Depot HTTP endpoint
/// runs (`depot_s3::http::serve_http`): hostile clients are held off by `limits` (see
/// `depot_net`): connection caps shedding the longest-idle first, a header timeout (which
/// also bounds the TLS handshake), an idle timeout.
pub async fn run(
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    app: App,
    shutdown: impl Future<Output = ()>,
    drain: Duration,
    limits: Limits,
) {
    let events = Arc::new(MetricsEvents(Arc::clone(&app.metrics)));
    let listen = depot_s3::http::Listen { tls, limits, drain, events };
    depot_s3::http::serve_http(listener, listen, move |req| app.clone().handle(req), shutdown).await;
}

/// Connections and failed TLS handshakes, counted in the metrics.
struct MetricsEvents(Arc<Metrics>);

impl depot_s3::http::ConnectionEvents for MetricsEvents {
    fn opened(&self) -> Box<dyn Send> {
        Box::new(self.0.connection())
    }

    fn tls_failure(&self) {
        self.0.tls_failure();
    }
}
