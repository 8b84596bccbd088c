//! S3 over HTTP: the s3s service with Depot's configuration, the per-request fixes every
//! Depot S3 endpoint applies, and a small accept loop for endpoints that serve S3 alone (an
//! agent's view; `depot serve` has its own loop, which also routes gRPC and `/_depot/`, and
//! calls [`handle`] for S3 requests).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use s3s::config::{S3Config, StaticConfigProvider};
use s3s::service::{S3Service, S3ServiceBuilder};
use tokio::net::TcpListener;

use crate::auth::OneKey;
use crate::s3::Depot;
use crate::stats::Stats;

/// How long a client may take to finish the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The s3s service: `depot` behind SigV4 with one key. `configure` may add hooks (the
/// coordinator's metrics).
pub fn service(depot: Depot, auth: OneKey, configure: impl FnOnce(&mut S3ServiceBuilder)) -> S3Service {
    let mut builder = S3ServiceBuilder::new(depot);
    builder.set_auth(auth);
    let mut config = S3Config::default();
    // PostObject (browser form uploads) is not served; without this s3s would buffer a form's
    // file in memory, before authentication, up to 5 GB.
    config.post_object_max_file_size = 0;
    config.form_max_fields_size = 1024 * 1024;
    builder.set_config(Arc::new(StaticConfigProvider::new(Arc::new(config))));
    configure(&mut builder);
    builder.build()
}

/// Answers one S3 request: the prechecks S3 makes before authentication, then s3s; a HEAD
/// answer never has a body, and `Expect: 100-continue` with an empty body closes an HTTP/1
/// connection (see ARCHITECTURE.md). `extensions` are added to the request (the
/// coordinator's operation slot for metrics).
///
/// # Errors
/// What s3s fails with (it answers S3 errors itself).
pub async fn handle<B>(
    s3: &S3Service,
    req: Request<B>,
    extensions: impl FnOnce(&mut http::Extensions),
) -> Result<Response<s3s::Body>, s3s::HttpError>
where
    s3s::Body: From<B>,
{
    let close = expects_continue_without_body(&req) && req.version() < http::Version::HTTP_2;
    let head = req.method() == http::Method::HEAD;
    let mut response = match crate::prechecks::refusal(&req) {
        Some(refused) => crate::prechecks::response(&refused),
        None => {
            let mut req = req.map(s3s::Body::from);
            extensions(req.extensions_mut());
            s3.call(req).await?
        }
    };
    if close {
        response.headers_mut().insert(http::header::CONNECTION, http::HeaderValue::from_static("close"));
    }
    if let Ok(id) = http::HeaderValue::try_from(request_id()) {
        // Every S3 answer names its request; SDKs put it in their errors and logs.
        response.headers_mut().insert("x-amz-id-2", id.clone());
        response.headers_mut().insert("x-amz-request-id", id);
    }
    if head {
        // s3s answers a failed HEAD with its XML error body. HTTP/1.1 drops it on the
        // wire, but HTTP/2 would send it as DATA, which clients reject (curl's
        // PROTOCOL_ERROR) or misread (aws-sdk-s3 cannot classify the 404).
        response = response.map(|_| s3s::Body::empty());
    }
    Ok(response)
}

/// A request id as S3 shapes them (16 upper-case hex digits): a random per-process prefix
/// and a counter, so ids are unique within a run and unlikely to repeat across runs.
fn request_id() -> String {
    use std::sync::LazyLock;
    use std::sync::atomic::{AtomicU32, Ordering};
    static PREFIX: LazyLock<u32> = LazyLock::new(rand::random);
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!("{:08X}{:08X}", *PREFIX, NEXT.fetch_add(1, Ordering::Relaxed))
}

/// An empty body sent with `Expect: 100-continue` is answered without a `100 Continue`
/// (nothing needs to be sent). That is allowed, but botocore before 1.43.77 (which the AWS
/// CLI still bundles) then misreads the next response on the connection and stalls for a
/// minute (boto/botocore#3755); closing such connections avoids it at the cost of a reconnect.
fn expects_continue_without_body<B>(req: &Request<B>) -> bool {
    let headers = req.headers();
    headers.get(http::header::EXPECT).is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"))
        && headers.get(http::header::CONTENT_LENGTH).is_some_and(|v| v.as_bytes() == b"0")
}

/// Serves S3 alone on `listener` (HTTP/1.1 and HTTP/2, TLS when given) until `shutdown`
/// completes, then waits up to `drain` for requests in flight.
pub async fn serve(
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    s3: S3Service,
    stats: Arc<Stats>,
    shutdown: impl Future<Output = ()>,
    drain: Duration,
) {
    let graceful = GracefulShutdown::new();
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    tokio::pin!(shutdown);
    loop {
        let Some((stream, peer)) = depot_net::accept(&listener, shutdown.as_mut()).await else { break };
        let _ = stream.set_nodelay(true);
        let (s3, stats, watcher, acceptor) = (s3.clone(), Arc::clone(&stats), graceful.watcher(), acceptor.clone());
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                let (s3, stats) = (s3.clone(), Arc::clone(&stats));
                async move {
                    let response = handle(&s3, req, |_| {}).await?;
                    stats.response(response.status());
                    Ok::<_, s3s::HttpError>(response)
                }
            });
            let builder = Builder::new(TokioExecutor::new());
            let result = match acceptor {
                None => watcher.watch(builder.serve_connection(TokioIo::new(stream), service).into_owned()).await,
                Some(acceptor) => match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                    Ok(Ok(stream)) => {
                        watcher.watch(builder.serve_connection(TokioIo::new(stream), service).into_owned()).await
                    }
                    Ok(Err(err)) => {
                        tracing::debug!(%peer, %err, "TLS handshake failed");
                        return;
                    }
                    Err(_) => {
                        tracing::debug!(%peer, "TLS handshake timed out");
                        return;
                    }
                },
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
            tracing::warn!(?drain, "S3 requests still in flight after the drain timeout; stopping anyway");
        }
    }
}
