//! The `NodeAgent` gRPC service: a node's backup directory, readable by its peers.
//!
//! Every name a peer sends goes through [`depot_fs::Root::resolve`], so `..`, absolute paths,
//! symlinks leading out of the root and Depot's own `.depot/` directory are refused before the
//! file system is touched. Files are streamed from an offset (so an interrupted transfer can
//! resume) by a blocking reader thread that stays at most a few chunks ahead of the network, so
//! a slow peer costs a few MiB of memory, not the file's size.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use depot_fs::{NameRule, Root, UnsafeName};
use depot_net::Limits;
use depot_proto::agent::node_agent_server::{NodeAgent, NodeAgentServer};
use depot_proto::agent::{
    FileChunk, FileExistsRequest, FileExistsResponse, ReadFileRequest, StatRequest, StatResponse,
};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::sync::{Semaphore, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::service::interceptor::InterceptedService;
use tonic::{Request, Response, Status};
use tower::Service as _;

use crate::auth::{RequirePeer, Standing};
use crate::digest::DigestCache;
use crate::identity::{Identity, PeerIdentity};
use crate::transport::{
    CONNECTION_WINDOW, ChunkFrames, MAX_FRAME, READ_FILE_PATH, STREAM_WINDOW, TLS_SEND_BUFFER, unary_request,
};

/// Default size of one `ReadFile` chunk. Measured on loopback (see `scripts/bench-agent.sh`):
/// 1 MiB chunks keep per-message overhead (framing, syscalls, task wake-ups) well under the cost
/// of the bytes themselves, while two chunks in flight stay far inside the memory budget.
pub const DEFAULT_CHUNK_SIZE: usize = 1024 * 1024;

/// Chunks the reader thread may read ahead of the network.
const READ_AHEAD_CHUNKS: usize = 2;

/// Files hashed at once by `Stat`: hashing is disk- and CPU-bound, so more would only thrash.
const HASHING_PERMITS: usize = 2;

/// Why a request on a path was refused or failed. The `Display` text is what the caller reads.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServiceError {
    /// The name breaks a rule of [`depot_fs::validate`] or leads out of the root.
    #[error(transparent)]
    UnsafeName(#[from] UnsafeName),
    /// Nothing by that name on this node.
    #[error("{name:?} does not exist on this node")]
    NotFound {
        /// The name asked for.
        name: String,
    },
    /// The name is a directory or another non-file.
    #[error("{name:?} is not a regular file on this node")]
    NotAFile {
        /// The name asked for.
        name: String,
    },
    /// `ReadFile` asked to start past the end of the file.
    #[error("offset {offset} is past the end of {name:?}, which is {size} bytes long")]
    OffsetPastEnd {
        /// The name asked for.
        name: String,
        /// The offset asked for.
        offset: u64,
        /// The file's size.
        size: u64,
    },
    /// A local I/O error.
    #[error("cannot read {name:?} on this node: {source}")]
    Io {
        /// The name asked for.
        name: String,
        /// The underlying error.
        source: io::Error,
    },
}

impl From<ServiceError> for Status {
    fn from(err: ServiceError) -> Self {
        let message = err.to_string();
        match err {
            ServiceError::UnsafeName(UnsafeName { rule: NameRule::EscapesRoot, .. }) => {
                Status::permission_denied(message)
            }
            ServiceError::UnsafeName(_) => Status::invalid_argument(message),
            ServiceError::NotFound { .. } => Status::not_found(message),
            ServiceError::NotAFile { .. } => Status::failed_precondition(message),
            ServiceError::OffsetPastEnd { .. } => Status::out_of_range(message),
            ServiceError::Io { .. } => Status::internal(message),
        }
    }
}

/// Counters for the summary `serve` prints when it stops, and for its metrics.
#[derive(Debug, Default)]
pub struct ServeStats {
    /// `ReadFile` streams started.
    pub reads: AtomicU64,
    /// Bytes handed to the network by `ReadFile`.
    pub bytes_sent: AtomicU64,
    /// Requests refused for an unsafe name.
    pub refused: AtomicU64,
    /// Calls by method (FileExists, ReadFile, Stat): answered, failed.
    pub calls: [[AtomicU64; 2]; 3],
    /// `ReadFile` streams sending now.
    pub active_transfers: AtomicU64,
    /// Chunks that waited for the rate limit, and the nanoseconds waited.
    pub rate_waits: AtomicU64,
    /// See `rate_waits`.
    pub rate_wait_nanos: AtomicU64,
    /// Bytes sent per calling node (as its certificate names it; at most [`MAX_PEER_LABELS`] names).
    pub per_peer: std::sync::Mutex<std::collections::BTreeMap<String, u64>>,
}

/// The methods counted in [`ServeStats::calls`], in order.
pub const METHODS: [&str; 3] = ["FileExists", "ReadFile", "Stat"];

/// Most distinct peer names kept in [`ServeStats::per_peer`]; later ones count as `other`.
pub const MAX_PEER_LABELS: usize = 64;

impl ServeStats {
    fn call<T, E>(&self, method: usize, result: &Result<T, E>) {
        self.calls[method][usize::from(result.is_err())].fetch_add(1, Ordering::Relaxed);
    }

    fn peer_sent(&self, peer: &str, bytes: u64) {
        if let Ok(mut map) = self.per_peer.lock() {
            let key = if map.contains_key(peer) || map.len() < MAX_PEER_LABELS { peer } else { "other" };
            *map.entry(key.to_owned()).or_default() += bytes;
        }
    }
}

/// A cap on the bytes per second all `ReadFile` streams of an agent send together, so a
/// node serving its peers keeps disk and network for its own work (and tests can make a
/// transfer last long enough to interrupt it).
#[derive(Debug)]
pub struct RateLimit {
    bytes_per_second: f64,
    /// When the next byte may go out: every chunk reserves its share of time after it.
    next: std::sync::Mutex<Instant>,
}

impl RateLimit {
    /// At most `bytes_per_second` (at least 1).
    #[must_use]
    pub fn new(bytes_per_second: u64) -> Self {
        Self { bytes_per_second: bytes_per_second.max(1) as f64, next: std::sync::Mutex::new(Instant::now()) }
    }

    /// Blocks until `bytes` more may be sent; returns how long it waited. Called from the
    /// reader threads.
    fn wait(&self, bytes: usize) -> Duration {
        let wait = {
            let mut next = self.next.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            let now = Instant::now();
            let start = (*next).max(now);
            *next = start + Duration::from_secs_f64(bytes as f64 / self.bytes_per_second);
            start - now
        };
        if !wait.is_zero() {
            std::thread::sleep(wait);
        }
        wait
    }
}

/// The `NodeAgent` implementation over one root directory. Cheap to clone.
#[derive(Debug, Clone)]
pub struct NodeAgentService {
    root: Root,
    /// Optional cap on the bytes per second sent by all streams together.
    rate: Option<Arc<RateLimit>>,
    /// Digests for `Stat`, so `verify` costs one hash per file version, not one per call.
    digests: Arc<DigestCache>,
    /// Bounds concurrent hashing (see [`HASHING_PERMITS`]).
    hashing: Arc<Semaphore>,
    chunk_size: usize,
    stats: Arc<ServeStats>,
}

impl NodeAgentService {
    /// Serves files under `root`.
    #[must_use]
    pub fn new(root: Root) -> Self {
        Self {
            root,
            rate: None,
            digests: Arc::default(),
            hashing: Arc::new(Semaphore::new(HASHING_PERMITS)),
            chunk_size: DEFAULT_CHUNK_SIZE,
            stats: Arc::default(),
        }
    }

    /// Sets the `ReadFile` chunk size (clamped to 4 KiB..=4 MiB, under gRPC's message limit).
    #[must_use]
    pub fn with_chunk_size(mut self, bytes: usize) -> Self {
        self.chunk_size = bytes.clamp(4096, 4 * 1024 * 1024);
        self
    }

    /// Caps the bytes per second all `ReadFile` streams send together.
    #[must_use]
    pub fn with_rate_limit(mut self, bytes_per_second: Option<u64>) -> Self {
        self.rate = bytes_per_second.map(|r| Arc::new(RateLimit::new(r)));
        self
    }

    /// The counters this service updates.
    #[must_use]
    pub fn stats(&self) -> Arc<ServeStats> {
        self.stats.clone()
    }

    /// Resolves a peer-supplied name, counting refusals.
    fn resolve(&self, name: &str) -> Result<PathBuf, ServiceError> {
        self.root.resolve(name).map_err(|err| {
            self.stats.refused.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(%err, "refused a request");
            ServiceError::from(err)
        })
    }

    /// The size of the regular file at `path`, `None` when there is none.
    async fn file_size(name: &str, path: PathBuf) -> Result<Option<u64>, ServiceError> {
        match tokio::fs::metadata(&path).await {
            Ok(meta) if meta.is_file() => Ok(Some(meta.len())),
            Ok(_) => Ok(None),
            Err(err) if matches!(err.kind(), io::ErrorKind::NotFound | io::ErrorKind::NotADirectory) => Ok(None),
            Err(source) => Err(ServiceError::Io { name: name.to_owned(), source }),
        }
    }
}

#[tonic::async_trait]
impl NodeAgent for NodeAgentService {
    #[tracing::instrument(skip_all, fields(caller = caller(&request), path = %request.get_ref().path))]
    async fn file_exists(&self, request: Request<FileExistsRequest>) -> Result<Response<FileExistsResponse>, Status> {
        let result = self.file_exists_inner(request).await;
        self.stats.call(0, &result);
        result
    }

    type ReadFileStream = ReceiverStream<Result<FileChunk, Status>>;

    #[tracing::instrument(skip_all, fields(caller = caller(&request), path = %request.get_ref().path, offset = request.get_ref().offset))]
    async fn read_file(&self, request: Request<ReadFileRequest>) -> Result<Response<Self::ReadFileStream>, Status> {
        let result = self.read_file_inner(request).await;
        self.stats.call(1, &result);
        result
    }

    #[tracing::instrument(skip_all, fields(caller = caller(&request), path = %request.get_ref().path))]
    async fn stat(&self, request: Request<StatRequest>) -> Result<Response<StatResponse>, Status> {
        let result = self.stat_inner(request).await;
        self.stats.call(2, &result);
        result
    }
}

impl NodeAgentService {
    async fn file_exists_inner(
        &self,
        request: Request<FileExistsRequest>,
    ) -> Result<Response<FileExistsResponse>, Status> {
        let name = request.into_inner().path;
        let path = self.resolve(&name)?;
        let size = Self::file_size(&name, path).await?;
        Ok(Response::new(FileExistsResponse { exists: size.is_some(), size: size.unwrap_or(0) }))
    }

    async fn read_file_inner(
        &self,
        request: Request<ReadFileRequest>,
    ) -> Result<Response<ReceiverStream<Result<FileChunk, Status>>>, Status> {
        let peer = metrics_peer(caller(&request)).to_owned();
        let standing = request.extensions().get::<Standing>().cloned();
        let ReadFileRequest { path: name, offset } = request.into_inner();
        tracing::info!("ReadFile");
        let path = self.resolve(&name)?;
        let opened = {
            let name = name.clone();
            tokio::task::spawn_blocking(move || open_at(&name, &path, offset))
                .await
                .map_err(|err| Status::internal(format!("reader task failed: {err}")))??
        };
        self.stats.reads.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel(READ_AHEAD_CHUNKS);
        let chunk_size = self.chunk_size;
        let stats = self.stats.clone();
        let rate = self.rate.clone();
        tokio::task::spawn_blocking(move || {
            stats.active_transfers.fetch_add(1, Ordering::Relaxed);
            let stream = Stream { name: &name, peer: &peer, standing: standing.as_ref(), tx: &tx, stats: &stats };
            stream_file(opened, chunk_size, rate.as_deref(), &stream);
            stats.active_transfers.fetch_sub(1, Ordering::Relaxed);
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn stat_inner(&self, request: Request<StatRequest>) -> Result<Response<StatResponse>, Status> {
        let name = request.into_inner().path;
        let path = self.resolve(&name)?;
        if Self::file_size(&name, path.clone()).await?.is_none() {
            return Ok(Response::new(StatResponse::default()));
        }
        let _permit = self.hashing.acquire().await.map_err(|_| Status::unavailable("the agent is shutting down"))?;
        let digests = self.digests.clone();
        let hashed = tokio::task::spawn_blocking(move || digests.digest(&path))
            .await
            .map_err(|err| Status::internal(format!("hashing task failed: {err}")))?;
        match hashed {
            Ok((size, sha256)) => Ok(Response::new(StatResponse { exists: true, size, sha256: sha256.to_vec() })),
            // Deleted between the two looks: it does not exist now.
            Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(Response::new(StatResponse::default())),
            Err(source) => Err(ServiceError::Io { name, source }.into()),
        }
    }
}

/// A file opened for `ReadFile`, positioned at the requested offset.
struct Opened {
    file: File,
    remaining: u64,
}

fn open_at(name: &str, path: &std::path::Path, offset: u64) -> Result<Opened, ServiceError> {
    let io_err = |source: io::Error| match source.kind() {
        io::ErrorKind::NotFound | io::ErrorKind::NotADirectory => ServiceError::NotFound { name: name.to_owned() },
        _ => ServiceError::Io { name: name.to_owned(), source },
    };
    let mut file = File::open(path).map_err(io_err)?;
    let meta = file.metadata().map_err(io_err)?;
    if !meta.is_file() {
        return Err(ServiceError::NotAFile { name: name.to_owned() });
    }
    let size = meta.len();
    if offset > size {
        return Err(ServiceError::OffsetPastEnd { name: name.to_owned(), offset, size });
    }
    file.seek(SeekFrom::Start(offset)).map_err(io_err)?;
    Ok(Opened { file, remaining: size - offset })
}

/// Reads `opened` to the size it had when opened, chunk by chunk, into `tx`. Stops early when
/// the caller goes away (the receiver is dropped).
/// Where one `ReadFile` stream goes and on whose behalf.
struct Stream<'a> {
    name: &'a str,
    peer: &'a str,
    /// The caller's standing, checked before every chunk (a revoked caller is cut off).
    standing: Option<&'a Standing>,
    tx: &'a mpsc::Sender<Result<FileChunk, Status>>,
    stats: &'a ServeStats,
}

fn stream_file(mut opened: Opened, chunk_size: usize, rate: Option<&RateLimit>, stream: &Stream<'_>) {
    let Stream { name, peer, standing, tx, stats } = *stream;
    let mut buffers = Buffers::default();
    while opened.remaining > 0 {
        if let Some(Err(refused)) = standing.map(Standing::check) {
            tracing::warn!(name, peer, "cut a transfer: the caller's certificate was revoked");
            let _ = tx.blocking_send(Err(refused));
            return;
        }
        let want = usize::try_from(opened.remaining).map_or(chunk_size, |r| r.min(chunk_size));
        let mut data = buffers.take(want);
        if let Err(source) = read_chunk(&opened.file, &mut data, want) {
            let err = ServiceError::Io { name: name.to_owned(), source };
            let _ = tx.blocking_send(Err(err.into()));
            return;
        }
        let filled = data.len();
        if filled == 0 {
            // Truncated while being read: the receiver sees a short file and rejects it.
            tracing::warn!(name, "file shrank while being read");
            return;
        }
        let data = buffers.sent(data);
        opened.remaining -= filled as u64;
        if let Some(rate) = rate {
            let waited = rate.wait(filled);
            if !waited.is_zero() {
                stats.rate_waits.fetch_add(1, Ordering::Relaxed);
                stats
                    .rate_wait_nanos
                    .fetch_add(u64::try_from(waited.as_nanos()).unwrap_or(u64::MAX), Ordering::Relaxed);
            }
        }
        if tx.blocking_send(Ok(FileChunk { data })).is_err() {
            return;
        }
        stats.bytes_sent.fetch_add(filled as u64, Ordering::Relaxed);
        stats.peer_sent(peer, filled as u64);
    }
}

/// Reads up to `want` bytes of `file` (fewer at its end) into `data`, which is empty, straight
/// into its spare capacity: a file's reads need no zeroed memory first.
fn read_chunk(file: &File, data: &mut Vec<u8>, want: usize) -> io::Result<()> {
    if data.capacity() != want {
        // More room than wanted (a short last chunk into a reused buffer): std's reader stops
        // at `want` (in a few growing reads).
        return file.take(want as u64).read_to_end(data).map(drop);
    }
    // One `read` a chunk; the capacity is exactly `want`, so it never reads past it.
    while data.len() < want {
        match rustix::io::read(file, rustix::buffer::spare_capacity(data)) {
            Ok(0) => break,
            Ok(_) | Err(rustix::io::Errno::INTR) => {}
            Err(errno) => return Err(errno.into()),
        }
    }
    Ok(())
}

/// Chunk buffers of one `ReadFile` stream, reused once the connection has written (and
/// dropped) them: a fresh 1 MiB allocation per chunk costs the allocator fresh pages (page
/// faults); a reused buffer is read into as it is.
#[derive(Default)]
struct Buffers {
    /// Chunks sent, oldest first; each is reusable once this is its only reference.
    sent: std::collections::VecDeque<Bytes>,
}

impl Buffers {
    /// References kept: those queued (`READ_AHEAD_CHUNKS`) and a few being framed or written
    /// (HTTP/2 holds a chunk until the window lets it out).
    const KEPT: usize = READ_AHEAD_CHUNKS + 4;

    /// An empty buffer with room for `len` bytes: a released one if any, else a new one.
    fn take(&mut self, len: usize) -> Vec<u8> {
        if let Some(free) = self.sent.iter().position(Bytes::is_unique) {
            let released = self.sent.remove(free).expect("position is in range");
            if let Ok(reused) = released.try_into_mut() {
                let mut reused = Vec::from(reused);
                if reused.capacity() >= len {
                    reused.clear();
                    return reused;
                }
            }
        }
        if self.sent.len() >= Self::KEPT {
            self.sent.pop_front(); // held elsewhere too long to wait for
        }
        Vec::with_capacity(len)
    }

    /// `data` is being sent: keeps a reference to reuse it later.
    fn sent(&mut self, data: Vec<u8>) -> Bytes {
        let data = Bytes::from(data);
        self.sent.push_back(data.clone());
        data
    }
}

/// The node id of a call's caller (from its certificate), for the log.
fn caller<T>(request: &Request<T>) -> &str {
    request.extensions().get::<PeerIdentity>().map_or("?", |p| p.node_id.as_str())
}

/// The per-peer metrics label of a caller: its node, without the `#run-…` of a fetch run, so
/// runs of one node add up under one label.
fn metrics_peer(node_id: &str) -> &str {
    node_id.split_once('#').map_or(node_id, |(node, _)| node)
}

/// Serves `service` (the real one, or a test double) on `listener` over mutual TLS with
/// `identity`, every call checked by [`RequirePeer`], until `shutdown` completes; then stops
/// accepting and waits for in-flight calls. Hostile clients are held off by `limits` (see
/// `depot_net`: caps shedding the longest-idle connection, a header timeout that also bounds the
/// TLS handshake, an idle timeout).
///
/// # Errors
/// None so far; the signature leaves room for fatal accept errors.
pub async fn serve<S: NodeAgent>(
    listener: tokio::net::TcpListener,
    service: S,
    identity: Arc<Identity>,
    limits: Limits,
    shutdown: impl Future<Output = ()> + Send,
) -> io::Result<()> {
    let service = Arc::new(service);
    let require = RequirePeer(identity.clone());
    let routes = tonic::service::Routes::new(InterceptedService::new(
        NodeAgentServer::from_arc(Arc::clone(&service)),
        require.clone(),
    ));
    let acceptor = tokio_rustls::TlsAcceptor::from(identity.server_config());
    let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    builder
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_frame_size(MAX_FRAME)
        .keep_alive_interval(Some(Duration::from_secs(30)))
        .timer(TokioTimer::new());
    let graceful = GracefulShutdown::new();
    // depot_net's loop: admitted through the tracker, dropped when it says so.
    depot_net::serve_connections(&listener, limits, shutdown, |stream, peer, activity| {
        let (acceptor, routes, builder, watcher) =
            (acceptor.clone(), routes.clone(), builder.clone(), graceful.watcher());
        let (service, require) = (Arc::clone(&service), require.clone());
        async move {
            let mut tls = match acceptor.accept(stream).await {
                Ok(tls) => tls,
                Err(err) => {
                    tracing::info!(%peer, %err, "TLS handshake refused");
                    return;
                }
            };
            tls.get_mut().1.set_buffer_limit(Some(TLS_SEND_BUFFER));
            tracing::debug!(%peer, suite = ?tls.get_ref().1.negotiated_cipher_suite().map(|s| s.suite()), "TLS established");
            let who = tls.get_ref().1.peer_certificates().and_then(|c| c.first()).and_then(|c| PeerIdentity::of(c));
            let service = hyper::service::service_fn(move |mut req: http::Request<hyper::body::Incoming>| {
                let in_flight = activity.request();
                if let Some(who) = &who {
                    req.extensions_mut().insert(who.clone());
                }
                let (mut routes, service, require) = (routes.clone(), Arc::clone(&service), require.clone());
                async move {
                    // ReadFile's chunks are framed here, without tonic's copy of each one.
                    let response = if req.uri().path() == READ_FILE_PATH {
                        Ok(read_file_call(&*service, require, req).await.unwrap_or_else(Status::into_http))
                    } else {
                        routes.call(req).await
                    };
                    drop(in_flight);
                    response
                }
            });
            if let Err(err) = watcher.watch(builder.serve_connection(TokioIo::new(tls), service)).await {
                tracing::debug!(%peer, %err, "connection ended with an error");
            }
        }
    })
    .await;
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}

/// One `ReadFile` call, answered as tonic's router would (the request decoded, the caller
/// checked by [`RequirePeer`], the service's `read_file` called) but with the chunks framed by
/// [`ChunkFrames`], which sends them without copying.
///
/// # Errors
/// The status of a refused or failed call, sent as a trailers-only response.
async fn read_file_call<S: NodeAgent>(
    service: &S,
    mut require: RequirePeer,
    req: http::Request<hyper::body::Incoming>,
) -> Result<http::Response<tonic::body::Body>, Status> {
    use tonic::service::Interceptor as _;
    let (parts, body) = req.into_parts();
    let message: ReadFileRequest = unary_request(&parts.headers, body).await?;
    let metadata = tonic::metadata::MetadataMap::from_headers(parts.headers);
    let (metadata, extensions, ()) = require.call(Request::from_parts(metadata, parts.extensions, ()))?.into_parts();
    let (metadata, chunks, _) =
        service.read_file(Request::from_parts(metadata, extensions, message)).await?.into_parts();
    let mut response = http::Response::new(tonic::body::Body::new(ChunkFrames::new(Box::pin(chunks))));
    *response.headers_mut() = metadata.into_headers();
    response.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/grpc"));
    Ok(response)
}

/// Binds `addr` and serves on it in a background task: for tests and embedders. Returns the
/// bound address.
///
/// # Errors
/// The I/O error binding.
pub async fn spawn<S: NodeAgent>(
    addr: SocketAddr,
    service: S,
    identity: Arc<Identity>,
) -> io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    let handle = tokio::spawn(async move {
        if let Err(err) = serve(listener, service, identity, Limits::default(), std::future::pending()).await {
            tracing::error!(%err, "agent server stopped");
        }
    });
    Ok((local, handle))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_file_is_answered_on_the_path_tonic_generates() {
        let generated = format!("/{}/ReadFile", depot_proto::agent::node_agent_server::SERVICE_NAME);
        assert_eq!(READ_FILE_PATH, generated);
    }

    #[test]
    fn a_chunk_is_read_up_to_what_is_wanted_and_no_further() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let bytes: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&path, &bytes).unwrap();
        let file = File::open(&path).unwrap();
        // Exactly the room wanted, then more room than wanted (a reused buffer), then the end.
        let mut exact = Vec::with_capacity(4000);
        read_chunk(&file, &mut exact, 4000).unwrap();
        assert_eq!(exact, bytes[..4000]);
        let mut roomy = Vec::with_capacity(8000);
        read_chunk(&file, &mut roomy, 3000).unwrap();
        assert_eq!(roomy, bytes[4000..7000], "stops at what is wanted though there is room");
        let mut last = Vec::with_capacity(5000);
        read_chunk(&file, &mut last, 5000).unwrap();
        assert_eq!(last, bytes[7000..], "a file shorter than wanted gives what it has");
        let mut none = Vec::with_capacity(100);
        read_chunk(&file, &mut none, 100).unwrap();
        assert!(none.is_empty());
    }

    #[test]
    fn chunk_buffers_are_reused_once_nothing_else_holds_them() {
        let mut buffers = Buffers::default();
        let mut first = buffers.take(1000);
        assert!(first.is_empty() && first.capacity() >= 1000);
        first.extend_from_slice(&[7; 1000]);
        let first = buffers.sent(first);
        let address = first.as_ptr();
        // Still held (queued or being framed): a new buffer, and the held one is not touched.
        let mut second = buffers.take(1000);
        assert_ne!(second.as_ptr(), address);
        second.extend_from_slice(&[8; 1000]);
        assert_eq!(first[..], [7; 1000]);
        let second = buffers.sent(second);
        drop(first);
        // Released (the second is still held): the same memory, emptied, with room as asked.
        let reused = buffers.take(1000);
        assert_eq!((reused.as_ptr(), reused.len()), (address, 0));
        assert!(reused.capacity() >= 1000);
        assert_eq!(second[..], [8; 1000]);
        drop(second);
        // Never more than KEPT references, however long the receiver holds its chunks.
        let mut held = Vec::new();
        for _ in 0..10 {
            let mut buffer = buffers.take(100);
            buffer.push(1);
            held.push(buffers.sent(buffer));
        }
        assert!(buffers.sent.len() <= Buffers::KEPT);
        drop(held);
    }
}
