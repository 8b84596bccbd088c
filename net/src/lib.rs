//! What `depot serve` and `depot-agent serve` both need against hostile clients.
//!
//! A client that opens connections and then sends nothing (or half a request line, or
//! garbage) must not hold a file descriptor for ever, nor lock real clients out by using up the
//! process's descriptors. Every accepted connection is [`Tracker::admit`]ted:
//! - a cap on connections per server and per client address; when a new one would exceed a
//!   cap, the connection that has been idle longest (no request in flight) is shed to make room
//!   — a stalled or garbage connection is idle from its first second — and only when none is
//!   idle is the newcomer refused;
//! - a header timeout: a connection that has not started a request (TLS handshake included)
//!   within it is closed;
//! - an idle timeout: a connection that moved no byte and has no request in flight for that
//!   long is closed.
//!
//! [`raise_open_file_limit`] lifts the soft `RLIMIT_NOFILE` to the hard limit at start, and
//! [`serve_connections`] is the accept loop every server shares (`depot serve`, the agent's
//! peer service, the agent's S3 view).
#![forbid(unsafe_code)]
#![deny(missing_docs)]

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

/// The limits; the defaults never bother a real TiKV/BR or S3 client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Connections open at once, all clients together.
    pub max_connections: usize,
    /// Connections open at once from one client address.
    pub max_per_address: usize,
    /// Time from accept to the first request (TLS handshake included).
    pub header_timeout: Duration,
    /// Time a connection may sit without moving a byte and without a request in flight.
    pub idle_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: 4096,
            max_per_address: 1024,
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(300),
        }
    }
}

/// Why a connection was closed by the tracker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Closed {
    /// No request started within the header timeout.
    HeaderTimeout,
    /// Idle for the idle timeout.
    Idle,
    /// Shed to make room for a newer connection.
    Shed,
}

/// Open connections, by id.
#[derive(Debug)]
pub struct Tracker {
    limits: Limits,
    epoch: Instant,
    next_id: AtomicU64,
    open: Mutex<HashMap<u64, Arc<State>>>,
}

#[derive(Debug)]
struct State {
    address: IpAddr,
    opened: Instant,
    /// Milliseconds since the tracker's epoch of the last byte moved.
    last_active: AtomicU64,
    in_flight: AtomicUsize,
    requests: AtomicU64,
    shed: Notify,
}

impl Tracker {
    /// A tracker enforcing `limits`.
    #[must_use]
    pub fn new(limits: Limits) -> Arc<Self> {
        Arc::new(Self { limits, epoch: Instant::now(), next_id: AtomicU64::new(0), open: Mutex::new(HashMap::new()) })
    }

    /// The limits.
    #[must_use]
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Connections open now.
    #[must_use]
    pub fn open(&self) -> usize {
        self.open.lock().unwrap_or_else(std::sync::PoisonError::into_inner).len()
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Admits a connection from `address`, shedding the longest-idle connection (from that
    /// address when its own cap is hit) if a cap would be exceeded. `None`: every connection
    /// is busy; drop the newcomer.
    pub fn admit(self: &Arc<Self>, address: IpAddr) -> Option<Conn> {
        let mut open = self.open.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let from_address = open.values().filter(|s| s.address == address).count();
        let over_address = from_address >= self.limits.max_per_address;
        let over_total = open.len() >= self.limits.max_connections;
        if over_address || over_total {
            let victim = open
                .iter()
                .filter(|(_, s)| (!over_address || s.address == address) && s.in_flight.load(Ordering::Relaxed) == 0)
                .min_by_key(|(_, s)| s.last_active.load(Ordering::Relaxed))
                .map(|(id, _)| *id);
            let Some(victim) = victim else {
                tracing::warn!(%address, open = open.len(), "connection refused: every connection is busy");
                return None;
            };
            if let Some(state) = open.remove(&victim) {
                tracing::info!(address = %state.address, "shedding the longest-idle connection to make room");
                state.shed.notify_one();
            }
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let state = Arc::new(State {
            address,
            opened: Instant::now(),
            last_active: AtomicU64::new(self.now_ms()),
            in_flight: AtomicUsize::new(0),
            requests: AtomicU64::new(0),
            shed: Notify::new(),
        });
        open.insert(id, state.clone());
        Some(Conn { tracker: self.clone(), id, state })
    }
}

/// One admitted connection; dropping it frees its place.
#[derive(Debug)]
pub struct Conn {
    tracker: Arc<Tracker>,
    id: u64,
    state: Arc<State>,
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.tracker.open.lock().unwrap_or_else(std::sync::PoisonError::into_inner).remove(&self.id);
    }
}

/// A request in flight on a connection (it is not idle meanwhile).
#[derive(Debug)]
pub struct InFlight(Arc<State>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// What the IO wrapper and the request hook share.
#[derive(Debug, Clone)]
pub struct Activity {
    tracker: Arc<Tracker>,
    state: Arc<State>,
}

impl Activity {
    fn touch(&self) {
        self.state.last_active.store(self.tracker.now_ms(), Ordering::Relaxed);
    }

    /// Marks a request as started; the connection is busy until the guard drops.
    #[must_use]
    pub fn request(&self) -> InFlight {
        self.state.requests.fetch_add(1, Ordering::Relaxed);
        self.state.in_flight.fetch_add(1, Ordering::Relaxed);
        self.touch();
        InFlight(self.state.clone())
    }
}

impl Conn {
    /// The handle the IO wrapper and request hook use.
    #[must_use]
    pub fn activity(&self) -> Activity {
        Activity { tracker: self.tracker.clone(), state: self.state.clone() }
    }

    /// Resolves when the connection must be closed: shed, no request within the header
    /// timeout, or idle too long. Race it against serving the connection.
    pub async fn closed(&self) -> Closed {
        let limits = self.tracker.limits;
        let tick = (limits.header_timeout.min(limits.idle_timeout) / 4)
            .clamp(Duration::from_millis(20), Duration::from_secs(1));
        loop {
            tokio::select! {
                () = self.state.shed.notified() => return Closed::Shed,
                () = tokio::time::sleep(tick) => {}
            }
            let s = &self.state;
            if s.requests.load(Ordering::Relaxed) == 0 && s.opened.elapsed() >= limits.header_timeout {
                return Closed::HeaderTimeout;
            }
            let idle_ms = self.tracker.now_ms().saturating_sub(s.last_active.load(Ordering::Relaxed));
            if s.in_flight.load(Ordering::Relaxed) == 0 && Duration::from_millis(idle_ms) >= limits.idle_timeout {
                return Closed::Idle;
            }
        }
    }
}

/// An IO stream that records when bytes move.
#[derive(Debug)]
pub struct Tracked<IO> {
    inner: IO,
    activity: Activity,
}

impl<IO> Tracked<IO> {
    /// Wraps `inner` for `conn`.
    pub fn new(inner: IO, conn: &Conn) -> Self {
        Self { inner, activity: conn.activity() }
    }

    /// The wrapped stream.
    pub fn get_ref(&self) -> &IO {
        &self.inner
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Tracked<IO> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let result = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.touch();
        }
        result
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Tracked<IO> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<std::io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write(cx, data);
        if matches!(result, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        result
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(result, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        result
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// The flags of both servers for [`Limits`].
#[derive(Debug, Clone, clap::Args)]
pub struct LimitArgs {
    /// Close a connection that has not sent a request (TLS handshake included) within this.
    #[arg(long, default_value = "10s", value_parser = parse_duration, value_name = "DURATION")]
    pub header_timeout: Duration,
    /// Close a connection that moved no byte, with no request in flight, for this long.
    #[arg(long, default_value = "5m", value_parser = parse_duration, value_name = "DURATION")]
    pub idle_timeout: Duration,
    /// Connections open at once; beyond it the longest-idle one is closed to make room.
    #[arg(long, default_value_t = 4096, value_name = "N")]
    pub max_connections: usize,
    /// Connections open at once from one client address (same shedding).
    #[arg(long, default_value_t = 1024, value_name = "N")]
    pub max_connections_per_ip: usize,
}

impl LimitArgs {
    /// The limits these flags ask for.
    #[must_use]
    pub fn limits(&self) -> Limits {
        Limits {
            max_connections: self.max_connections.max(1),
            max_per_address: self.max_connections_per_ip.max(1),
            header_timeout: self.header_timeout,
            idle_timeout: self.idle_timeout,
        }
    }
}

/// Raises the soft open-file limit to the hard limit; returns (before, after). A server holds
/// a descriptor per connection and per open file, and distributions often start processes
/// with a soft limit of 1024 below a much higher hard one.
///
/// # Errors
/// When `setrlimit` fails.
pub fn raise_open_file_limit() -> std::io::Result<(Option<u64>, Option<u64>)> {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    if limit.current != limit.maximum {
        setrlimit(Resource::Nofile, Rlimit { current: limit.maximum, maximum: limit.maximum })?;
    }
    Ok((limit.current, getrlimit(Resource::Nofile).current))
}

/// A secret given as `--NAME VALUE` (visible to every user in `ps`) or as `--NAME-file PATH`:
/// the value, with a warning on stderr for the first form. `env` is the variable that is the
/// recommended way.
///
/// # Errors
/// When the file cannot be read or is empty.
pub fn secret_flag(
    name: &str,
    env: &str,
    value: Option<String>,
    file: Option<&std::path::Path>,
) -> Result<Option<String>, String> {
    if let Some(path) = file {
        let text =
            std::fs::read_to_string(path).map_err(|e| format!("cannot read --{name}-file {}: {e}", path.display()))?;
        let text = text.trim().to_owned();
        if text.is_empty() {
            return Err(format!("--{name}-file {} is empty", path.display()));
        }
        return Ok(Some(text));
    }
    let flag = format!("--{name}");
    let on_command_line = std::env::args().any(|a| a == flag || a.starts_with(&format!("{flag}=")));
    if value.is_some() && on_command_line {
        eprintln!(
            "warning: {flag} on the command line is visible to every user of this machine (ps, /proc); set {env} or use {flag}-file instead"
        );
    }
    Ok(value)
}

/// Parses a duration flag (`30s`, `500ms`, or plain seconds).
///
/// # Errors
/// A message naming the value and the accepted forms.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if let Ok(secs) = text.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    humantime::parse_duration(text).map_err(|err| format!("{text:?} is not a duration ({err}; e.g. 30s, 500ms, 2m)"))
}

/// The next connection on `listener`, or `None` once `shutdown` has completed. An accept
/// error (EMFILE and friends) is logged and retried after a short pause instead of spinning.
async fn accept<F: Future<Output = ()>>(
    listener: &TcpListener,
    mut shutdown: Pin<&mut F>,
) -> Option<(TcpStream, SocketAddr)> {
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(conn) => return Some(conn),
                Err(err) => {
                    tracing::warn!(%err, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            () = &mut shutdown => return None,
        }
    }
}

/// The accept loop every Depot server shares: accepts on `listener` until `shutdown`
/// completes, admits each connection through a [`Tracker`] with `limits` (a refused one is
/// dropped), and spawns `connection(stream, peer, activity)` raced against the tracker's
/// verdict ([`Conn::closed`]): a connection shed, silent past the header timeout (a stalled
/// TLS handshake or half a request) or idle too long is dropped mid-whatever. The spawned
/// tasks outlive this function; the caller drains them (hyper's graceful shutdown).
pub async fn serve_connections<S, F, Fut>(listener: &TcpListener, limits: Limits, shutdown: S, mut connection: F)
where
    S: Future<Output = ()>,
    F: FnMut(Tracked<TcpStream>, SocketAddr, Activity) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let tracker = Tracker::new(limits);
    tokio::pin!(shutdown);
    while let Some((stream, peer)) = accept(listener, shutdown.as_mut()).await {
        let Some(conn) = tracker.admit(peer.ip()) else {
            continue; // every connection is busy: this one is dropped
        };
        let _ = stream.set_nodelay(true);
        let serve = connection(Tracked::new(stream, &conn), peer, conn.activity());
        tokio::spawn(async move {
            tokio::select! {
                () = serve => {}
                why = conn.closed() => tracing::debug!(%peer, ?why, "connection closed by the server"),
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(total: usize, per: usize) -> Limits {
        Limits {
            max_connections: total,
            max_per_address: per,
            header_timeout: Duration::from_millis(100),
            idle_timeout: Duration::from_millis(200),
        }
    }

    #[tokio::test]
    async fn the_longest_idle_connection_is_shed_and_busy_ones_are_kept() {
        let tracker = Tracker::new(limits(2, 10));
        let a: IpAddr = "127.0.0.1".parse().unwrap();
        let busy = tracker.admit(a).unwrap();
        let _working = busy.activity().request();
        let idle = tracker.admit(a).unwrap();
        let third = tracker.admit(a).unwrap();
        assert_eq!(idle.closed().await, Closed::Shed);
        assert_eq!(tracker.open(), 2);
        // Both left are busy: a fourth is refused.
        let _also = third.activity().request();
        assert!(tracker.admit(a).is_none());
        drop(busy);
        assert_eq!(tracker.open(), 1);
    }

    #[tokio::test]
    async fn per_address_caps_shed_only_that_address() {
        let tracker = Tracker::new(limits(10, 1));
        let (a, b) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let from_b = tracker.admit(b).unwrap();
        let first = tracker.admit(a).unwrap();
        let _second = tracker.admit(a).unwrap();
        assert_eq!(first.closed().await, Closed::Shed);
        assert_eq!(tracker.open(), 2);
        drop(from_b);
    }

    #[tokio::test]
    async fn silent_connections_time_out() {
        let tracker = Tracker::new(limits(10, 10));
        let silent = tracker.admit("127.0.0.1".parse().unwrap()).unwrap();
        assert_eq!(silent.closed().await, Closed::HeaderTimeout);
        let talked = tracker.admit("127.0.0.1".parse().unwrap()).unwrap();
        drop(talked.activity().request());
        assert_eq!(talked.closed().await, Closed::Idle);
    }

    #[test]
    fn the_soft_limit_reaches_the_hard_one() {
        let (_, after) = raise_open_file_limit().unwrap();
        let hard = rustix::process::getrlimit(rustix::process::Resource::Nofile).maximum;
        assert_eq!(after, hard);
        assert_eq!(parse_duration("30").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert!(parse_duration("soon").is_err());
    }
}
