//! The connection loop: TLS, HTTP/1.1 and HTTP/2, gRPC vs S3 dispatch, a bounded drain.
//!
//! One port serves both the S3 API and the agents' registry: gRPC requests are recognised by
//! their `application/grpc` content type (a firewall in an air-gapped cluster needs one hole,
//! not two). Shaped after mini-redis's `run(listener, shutdown)`: the caller binds, the loop
//! accepts until `shutdown` completes, then waits a bounded time for requests in flight.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use depot_net::{Limits, Tracked, Tracker};
use http::{Request, Response};
use http_body_util::Either;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
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
/// for requests in flight before returning. Hostile clients are held off by `limits` (see
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
    let tracker = Tracker::new(limits);
    let mut builder = Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new()).header_read_timeout(limits.header_timeout);
    let graceful = GracefulShutdown::new();
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    tokio::pin!(shutdown);
    loop {
        let Some((stream, peer)) = depot_net::accept(&listener, shutdown.as_mut()).await else { break };
        let Some(conn) = tracker.admit(peer.ip()) else {
            continue; // every connection is busy: this one is dropped
        };
        let _ = stream.set_nodelay(true);
        let stream = Tracked::new(stream, &conn);
        let app = app.clone();
        let watcher = graceful.watcher();
        let acceptor = acceptor.clone();
        let builder = builder.clone();
        let connection = app.metrics.connection();
        tokio::spawn(async move {
            let _connection = connection;
            let metrics = Arc::clone(&app.metrics);
            let activity = conn.activity();
            let service = hyper::service::service_fn(move |req| {
                let in_flight = activity.request();
                let app = app.clone();
                async move {
                    let response = app.handle(req).await;
                    drop(in_flight);
                    response
                }
            });
            // Whether a TLS handshake is still under way (a header timeout then counts as a
            // handshake failure).
            let handshaking = std::sync::atomic::AtomicBool::new(acceptor.is_some());
            let serve = async {
                match acceptor {
                    None => watcher.watch(builder.serve_connection(TokioIo::new(stream), service).into_owned()).await,
                    Some(acceptor) => {
                        let stream = match acceptor.accept(stream).await {
                            Ok(stream) => stream,
                            Err(err) => {
                                metrics.tls_failure();
                                tracing::debug!(%peer, %err, "TLS handshake failed");
                                return Ok(());
                            }
                        };
                        handshaking.store(false, std::sync::atomic::Ordering::Relaxed);
                        watcher.watch(builder.serve_connection(TokioIo::new(stream), service).into_owned()).await
                    }
                }
            };
            // The header timeout also bounds the TLS handshake.
            let result = tokio::select! {
                result = serve => result,
                why = conn.closed() => {
                    if handshaking.load(std::sync::atomic::Ordering::Relaxed) {
                        metrics.tls_failure();
                    }
                    tracing::debug!(%peer, ?why, "connection closed by the server");
                    Ok(())
                }
            };
            if let Err(err) = result {
                tracing::debug!(%peer, %err, "connection ended with an error");
            }
        });
    }
    drop(listener);
    tokio::select! {
        () = graceful.shutdown() => {}
        () = tokio::time::sleep(drain) => {
            tracing::warn!(?drain, "requests still in flight after the drain timeout; stopping anyway");
        }
    }
}
