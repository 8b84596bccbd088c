//! S3 over HTTP: the s3s service with Depot's configuration, the per-request fixes every
//! Depot S3 endpoint applies ([`handle`]), and the one HTTP connection loop ([`serve_http`]):
//! `depot serve` runs it with a handler that also routes gRPC and `/_depot/`, an agent's view
//! with [`serve`], S3 alone.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use s3s::config::{S3Config, StaticConfigProvider};
use s3s::service::{S3Service, S3ServiceBuilder};
use tokio::net::TcpListener;

use crate::auth::OneKey;
use crate::s3::Depot;
use crate::stats::Stats;

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
    let attributes = req.method() == http::Method::GET && is_attributes_query(req.uri().query());
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
    let id = request_id();
    // Where S3's XML differs from s3s's: an error names its request too (`<RequestId>`), and
    // GetObjectAttributes' ETag is bare.
    let status = response.status();
    let rewritten = if status.as_u16() >= 400 {
        response.body().bytes().and_then(|xml| with_request_id(&xml, &id))
    } else if attributes && status.is_success() {
        response.body().bytes().and_then(|xml| unquoted_etag(&xml))
    } else {
        None
    };
    if let Some(xml) = rewritten {
        response.headers_mut().insert(http::header::CONTENT_LENGTH, http::HeaderValue::from(xml.len()));
        *response.body_mut() = <s3s::Body as From<bytes::Bytes>>::from(xml);
    }
    if let Ok(id) = http::HeaderValue::try_from(id) {
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

/// An S3 error document with `<RequestId>id</RequestId>` added at its end; `None` when `xml`
/// is not one or already names its request.
fn with_request_id(xml: &[u8], id: &str) -> Option<bytes::Bytes> {
    let text = std::str::from_utf8(xml).ok()?;
    let end = text.rfind("</Error>")?;
    if !text.contains("<Error>") || text.contains("<RequestId>") {
        return None;
    }
    Some(format!("{}<RequestId>{id}</RequestId>{}", &text[..end], &text[end..]).into())
}

/// Whether a GET is GetObjectAttributes (`?attributes`).
fn is_attributes_query(query: Option<&str>) -> bool {
    query.is_some_and(|q| form_urlencoded::parse(q.as_bytes()).any(|(key, _)| key == "attributes"))
}

/// GetObjectAttributes' `<ETag>` without the quotes s3s's serializer puts around every ETag:
/// S3 answers this one operation with the bare value (AWS's CLI examples, ceph/s3-tests), and
/// clients compare it as it comes. `None` for any other document, or one without a quoted ETag.
fn unquoted_etag(xml: &[u8]) -> Option<bytes::Bytes> {
    let text = std::str::from_utf8(xml).ok()?;
    if !text.contains("<GetObjectAttributesResponse") {
        return None;
    }
    let open = text.find("<ETag>\"")? + "<ETag>".len();
    let close = open + 1 + text[open + 1..].find("\"</ETag>")?;
    Some(format!("{}{}{}", &text[..open], &text[open + 1..close], &text[close + 1..]).into())
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

/// What a connection loop tells its owner (the coordinator's metrics); by default nothing.
pub trait ConnectionEvents: Send + Sync + 'static {
    /// A connection was admitted; the returned guard lives as long as the connection.
    fn opened(&self) -> Box<dyn Send> {
        Box::new(())
    }

    /// A TLS handshake failed or did not finish within the header timeout.
    fn tls_failure(&self) {}
}

/// No events.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoEvents;

impl ConnectionEvents for NoEvents {}

/// How an HTTP endpoint listens: TLS, the limits against hostile clients, the drain.
#[derive(Clone)]
pub struct Listen {
    /// HTTPS (HTTP/1.1 and HTTP/2 by ALPN) when given.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Connection caps and timeouts (see `depot_net`).
    pub limits: depot_net::Limits,
    /// How long requests in flight may finish after the shutdown.
    pub drain: Duration,
    /// Told about connections.
    pub events: Arc<dyn ConnectionEvents>,
}

/// Serves HTTP/1.1 and HTTP/2 (TLS when [`Listen::tls`] is given) on `listener` until
/// `shutdown` completes, answering every request with `handler`; then waits up to
/// [`Listen::drain`] for requests in flight. The accept loop is `depot_net`'s: every
/// connection is admitted through its tracker (caps shedding the longest-idle connection, a
/// header timeout that also bounds the TLS handshake, an idle timeout), and HTTP/1 headers must
/// arrive within the header timeout. `depot serve` and the agents' S3 views both serve this way.
pub async fn serve_http<H, Fut, B, E>(
    listener: TcpListener,
    listen: Listen,
    handler: H,
    shutdown: impl Future<Output = ()>,
) where
    H: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<Response<B>, E>> + Send + 'static,
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    E: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let Listen { tls, limits, drain, events } = listen;
    let mut builder = Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new()).header_read_timeout(limits.header_timeout);
    let graceful = GracefulShutdown::new();
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    depot_net::serve_connections(&listener, limits, shutdown, |stream, peer, activity| {
        let (handler, builder, watcher) = (handler.clone(), builder.clone(), graceful.watcher());
        let (acceptor, events) = (acceptor.clone(), Arc::clone(&events));
        async move {
            let _open = events.opened();
            let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                let in_flight = activity.request();
                let answer = handler(req);
                async move {
                    let response = answer.await;
                    drop(in_flight);
                    response
                }
            });
            let result = match acceptor {
                None => watcher.watch(builder.serve_connection(TokioIo::new(stream), service).into_owned()).await,
                Some(acceptor) => {
                    // Dropped unfinished (a failure, or the header timeout) it counts a failure.
                    let handshake = Handshake(Some(events));
                    match acceptor.accept(stream).await {
                        Ok(stream) => {
                            handshake.done();
                            watcher.watch(builder.serve_connection(TokioIo::new(stream), service).into_owned()).await
                        }
                        Err(err) => {
                            tracing::debug!(%peer, %err, "TLS handshake failed");
                            return;
                        }
                    }
                }
            };
            if let Err(err) = result {
                tracing::debug!(%peer, %err, "connection ended with an error");
            }
        }
    })
    .await;
    drop(listener);
    tokio::select! {
        () = graceful.shutdown() => {}
        () = tokio::time::sleep(drain) => {
            tracing::warn!(?drain, "requests still in flight after the drain timeout; stopping anyway");
        }
    }
}

/// A TLS handshake under way: dropped before [`Handshake::done`], it reports a failure.
struct Handshake(Option<Arc<dyn ConnectionEvents>>);

impl Handshake {
    fn done(mut self) {
        self.0 = None;
    }
}

impl Drop for Handshake {
    fn drop(&mut self) {
        if let Some(events) = self.0.take() {
            events.tls_failure();
        }
    }
}

/// Serves S3 alone on `listener` (an agent's view) with [`serve_http`]: every request goes
/// through [`handle`] and is counted in `stats`.
pub async fn serve(
    listener: TcpListener,
    listen: Listen,
    s3: S3Service,
    stats: Arc<Stats>,
    shutdown: impl Future<Output = ()>,
) {
    let handler = move |req: Request<Incoming>| {
        let (s3, stats) = (s3.clone(), Arc::clone(&stats));
        async move {
            let response = handle(&s3, req, |_| {}).await?;
            stats.response(response.status());
            Ok::<_, s3s::HttpError>(response)
        }
    };
    serve_http(listener, listen, handler, shutdown).await;
}
