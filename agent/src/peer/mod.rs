//! The peer-fallback reader: a file is read from the local root if it is there, and otherwise
//! copied in from a live peer that has it.
//!
//! This is the seed's `read()` (BR issue "when an SST file is missing, try to copy from its
//! peer"), made robust:
//! - The live peers are asked `FileExists` in parallel. A peer that errors or does not implement
//!   `NodeAgent` (`UNIMPLEMENTED`) counts as "does not have it", so older or foreign nodes do no
//!   harm. A peer that holds a file of another size does not have *this* file.
//! - One holder is chosen, the least busy first ([`Load`]). Its `ReadFile` stream goes into a
//!   temp file in `.depot/tmp/` while being hashed; size and SHA-256 are checked against the
//!   manifest before the file is renamed into place, so wrong bytes never appear under the
//!   file's name.
//! - A holder that dies or stalls mid-stream is left, and the transfer continues from the same
//!   offset on the next holder (`ReadFile(path, offset)`). A holder whose bytes fail the checksum
//!   is dropped for that file.
//! - "Nobody has it" is final only when every live peer gave a definite answer; while some
//!   peers were unreachable (connection refused, `UNAVAILABLE`, timeouts) the question is asked
//!   again with backoff, a bounded number of times.
//!
//! Every [`FetchError`] says whether it is retryable.
//!
//! # Embedding
//!
//! ```no_run
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! use depot_agent::auth::Secret;
//! use depot_agent::peer::{PeerDirectory, PeerReader};
//! use depot_agent::registry::Coordinator;
//!
//! let root = depot_fs::Root::open("/data/backup")?;
//! let coordinator = Coordinator::new("https://10.0.0.1:9000", Secret::new("join-token"), None)?;
//! let reader = PeerReader::new(root, PeerDirectory::new(coordinator, Some("tikv-1".into())));
//! // Local if present, else copied from a peer (size-checked), then opened.
//! let (file, origin) = reader.open("1_2_3_default.sst", None).await?;
//! # let _ = (file, origin);
//! # Ok(())
//! # }
//! ```

mod directory;
mod partial;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use depot_fs::{Root, UnsafeName};
use depot_proto::agent::{FileExistsRequest, ReadFileRequest};
use futures::future::join_all;
use tonic::Code;

pub use self::directory::{Lease, Load, Peer, PeerClient, PeerDirectory};
pub use self::partial::Partial;
use crate::digest::Sha256Digest;
use crate::manifest::FileEntry;
use crate::registry::{RegistryError, status_message};
pub use crate::transport::FileBytes;

/// How often and how patiently transient failures are retried.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// Rounds of asking the peers (the first included) before giving up on a file whose holders
    /// were unreachable.
    pub rounds: u32,
    /// Wait before the second round; doubled each round.
    pub initial_backoff: Duration,
    /// Longest wait between rounds.
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    /// Six rounds over about six seconds: long enough to ride out a peer restarting or a
    /// coordinator failing over, short enough that a dead cluster is reported promptly.
    fn default() -> Self {
        Self { rounds: 6, initial_backoff: Duration::from_millis(200), max_backoff: Duration::from_secs(3) }
    }
}

impl RetryPolicy {
    fn backoff(&self, round: u32) -> Duration {
        let factor = 2u32.saturating_pow(round.saturating_sub(1).min(16));
        let base = self.initial_backoff.saturating_mul(factor).min(self.max_backoff);
        // Up to 25% jitter, so many files retrying at once do not move in lockstep.
        let jitter = base.mul_f64(rand::random::<f64>() * 0.25);
        base + jitter
    }
}

/// Deadlines for peer calls.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// One `FileExists` call.
    pub rpc: Duration,
    /// The longest wait for the next chunk of a `ReadFile` stream before the holder is
    /// considered stalled.
    pub stall: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self { rpc: Duration::from_secs(5), stall: Duration::from_secs(30) }
    }
}

/// Receives progress in bytes as they are written (and taken back when a partial file is
/// discarded), to drive a progress bar.
pub trait Progress: Send + Sync {
    /// `bytes` more were received.
    fn advance(&self, bytes: u64);
    /// `bytes` received earlier were discarded (a failed checksum): they will come again.
    fn rewind(&self, bytes: u64);
    /// Another round of asking the peers begins (the holders were unreachable).
    fn retry(&self) {}
    /// A holder failed mid-file and the next one is tried.
    fn failover(&self) {}
}

/// A [`Progress`] that ignores everything.
#[derive(Debug, Default)]
pub struct NoProgress;

impl Progress for NoProgress {
    fn advance(&self, _: u64) {}
    fn rewind(&self, _: u64) {}
}

/// Why a file could not be fetched.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FetchError {
    /// The name cannot be used under the root.
    #[error(transparent)]
    UnsafeName(#[from] UnsafeName),
    /// Every live peer answered, and none holds the file (with the expected size).
    #[error("{name}: no live node has it (asked {asked} peer(s){detail})")]
    Missing {
        /// The file.
        name: String,
        /// Peers asked.
        asked: usize,
        /// Notes on peers that hold another version, e.g. a different size.
        detail: String,
    },
    /// Every holder served bytes that failed the size/SHA-256 check.
    #[error("{name}: every holder served bytes that fail the manifest's size/sha256 check (dropped: {})", holders.join(", "))]
    Corrupt {
        /// The file.
        name: String,
        /// The holders dropped.
        holders: Vec<String>,
    },
    /// Holders exist or may exist, but could not be read within the retry budget.
    #[error("{name}: gave up after {rounds} round(s): {last}")]
    Unavailable {
        /// The file.
        name: String,
        /// Rounds tried.
        rounds: u32,
        /// The last failure seen.
        last: String,
    },
    /// The coordinator's peer list could not be had.
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// Writing locally failed.
    #[error("{name}: cannot write {path}: {message}")]
    Local {
        /// The file.
        name: String,
        /// Where.
        path: PathBuf,
        /// The error.
        message: String,
    },
}

impl FetchError {
    /// Whether running the fetch again later may succeed. `Missing` and `Corrupt` are final
    /// answers from the live peers; `Unavailable` and an unreachable coordinator are not.
    #[must_use]
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Unavailable { .. } => true,
            Self::Registry(err) => err.is_retryable(),
            Self::Local { .. } | Self::UnsafeName(_) | Self::Missing { .. } | Self::Corrupt { .. } => false,
        }
    }

    /// Whether the file is simply held by no live node.
    #[must_use]
    pub fn is_missing(&self) -> bool {
        matches!(self, Self::Missing { .. })
    }
}

/// Where a file came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// It was already in the root.
    Local,
    /// It was copied from this peer (node id).
    Peer(String),
}

/// A file fetched from a peer and installed.
#[derive(Debug, Clone)]
pub struct Fetched {
    /// The peer that sent the bytes (the last one, if a transfer moved between holders).
    pub node_id: String,
    /// Size.
    pub size: u64,
    /// Digest of what was installed.
    pub sha256: Sha256Digest,
    /// Bytes received over the network (more than `size` when a transfer had to restart).
    pub bytes_received: u64,
}

/// What one peer said to `FileExists`.
enum Answer {
    Holds,
    /// Definitely not (absent, another size, `UNIMPLEMENTED`, a refusal).
    No(Option<String>),
    /// Could not tell (unreachable, overloaded, timed out).
    Unknown(String),
}

/// Why one transfer from one holder stopped.
enum TransferFailure {
    /// The holder no longer has the file.
    Gone,
    /// It sent more bytes than the file has: wrong bytes.
    Oversize,
    /// It broke off (died, stalled, errored): another holder may continue.
    Broken(String),
    /// Writing locally failed.
    Local(std::io::Error),
}

/// Reads files from the local root, or from peers when they are missing. See the module docs.
#[derive(Clone)]
pub struct PeerReader {
    root: Root,
    directory: Arc<PeerDirectory>,
    /// Shared by every file fetched through this reader (and its clones), so concurrent
    /// transfers spread over the holders.
    load: Arc<Load>,
    retry: RetryPolicy,
    timeouts: Timeouts,
    progress: Arc<dyn Progress>,
}

impl std::fmt::Debug for PeerReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerReader")
            .field("root", &self.root)
            .field("directory", &self.directory)
            .field("retry", &self.retry)
            .field("timeouts", &self.timeouts)
            .finish_non_exhaustive()
    }
}

impl PeerReader {
    /// A reader over `root`, fetching from the peers `directory` lists.
    #[must_use]
    pub fn new(root: Root, directory: PeerDirectory) -> Self {
        Self {
            root,
            directory: Arc::new(directory),
            load: Arc::default(),
            retry: RetryPolicy::default(),
            timeouts: Timeouts::default(),
            progress: Arc::new(NoProgress),
        }
    }

    /// The same reader (peers, load counters, policies) installing into `root` instead.
    #[must_use]
    pub fn with_root(&self, root: Root) -> Self {
        Self { root, ..self.clone() }
    }

    /// Sets the retry policy.
    #[must_use]
    pub fn with_retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// Sets the call deadlines.
    #[must_use]
    pub fn with_timeouts(mut self, timeouts: Timeouts) -> Self {
        self.timeouts = timeouts;
        self
    }

    /// Reports received bytes to `progress`.
    #[must_use]
    pub fn with_progress(mut self, progress: Arc<dyn Progress>) -> Self {
        self.progress = progress;
        self
    }

    /// The root files are installed into.
    #[must_use]
    pub fn root(&self) -> &Root {
        &self.root
    }

    /// The peer directory.
    #[must_use]
    pub fn directory(&self) -> &PeerDirectory {
        &self.directory
    }

    /// The per-peer load counters.
    #[must_use]
    pub fn load(&self) -> &Load {
        &self.load
    }

    /// Opens `name` for reading: the local file if there is one, else a copy fetched from a
    /// peer and installed first. With `expect`, the local file must match it too (a mismatching
    /// local file is replaced) and a fetched copy is checked against its size and SHA-256;
    /// without, a fetched copy is checked against the size its holder reported.
    ///
    /// # Errors
    /// [`FetchError`].
    pub async fn open(&self, name: &str, expect: Option<&FileEntry>) -> Result<(tokio::fs::File, Origin), FetchError> {
        let path = self.root.resolve(name)?;
        let local = match expect {
            Some(entry) => {
                let path = path.clone();
                let entry = entry.clone();
                tokio::task::spawn_blocking(move || local_matches(&path, &entry)).await.unwrap_or(false)
            }
            None => tokio::fs::metadata(&path).await.is_ok_and(|m| m.is_file()),
        };
        let origin = if local {
            Origin::Local
        } else {
            let entry = match expect {
                Some(entry) => entry.clone(),
                None => FileEntry { name: name.to_owned(), size: u64::MAX, sha256: None },
            };
            Origin::Peer(self.fetch(&entry).await?.node_id)
        };
        let file = tokio::fs::File::open(&path).await.map_err(|err| FetchError::Local {
            name: name.to_owned(),
            path: path.clone(),
            message: err.to_string(),
        })?;
        Ok((file, origin))
    }

    /// Copies `entry` from a peer into the root, replacing whatever is at its name, and returns
    /// where it came from. Does not look at the local file: callers decide whether it is needed.
    /// An `entry.size` of `u64::MAX` means "any size": the holder's reported size is expected.
    ///
    /// # Errors
    /// [`FetchError`]; nothing is left under the file's name on error.
    pub async fn fetch(&self, entry: &FileEntry) -> Result<Fetched, FetchError> {
        self.fetch_resuming(entry, Partial::new()).await
    }

    /// Like [`PeerReader::fetch`], continuing from the bytes already in `partial` (a transfer
    /// interrupted earlier): the first `ReadFile` starts at `partial.len()`.
    ///
    /// # Errors
    /// [`FetchError`].
    pub async fn fetch_resuming(&self, entry: &FileEntry, mut partial: Partial) -> Result<Fetched, FetchError> {
        let result = self.fetch_into(entry, &mut partial).await;
        match &result {
            // Holders may be back later: a resumable partial keeps its bytes for that run.
            Err(err) if err.is_retryable() => partial.keep().await,
            // On success the bytes were committed; otherwise the temp file goes, before returning.
            _ => partial.discard().await,
        }
        result
    }

    async fn fetch_into(&self, entry: &FileEntry, partial: &mut Partial) -> Result<Fetched, FetchError> {
        let name = entry.name.as_str();
        let dest = self.root.resolve(name)?;
        // Holders whose bytes failed the check: never asked again for this file.
        let mut corrupt: Vec<String> = Vec::new();
        let mut received = 0u64;
        let mut round = 0u32;
        loop {
            round += 1;
            let last = match self.directory.peers(round > 1).await {
                Err(err) if err.is_retryable() => err.to_string(),
                Err(err) => return Err(err.into()),
                Ok(peers) => {
                    let live: Vec<&Peer> = peers.iter().filter(|p| !corrupt.contains(&p.node_id)).collect();
                    let (holders, unknown, notes) = self.survey(&live, entry).await;
                    if holders.is_empty() && unknown.is_empty() {
                        if !corrupt.is_empty() {
                            return Err(FetchError::Corrupt { name: name.to_owned(), holders: corrupt });
                        }
                        return Err(FetchError::Missing {
                            name: name.to_owned(),
                            asked: live.len(),
                            detail: if notes.is_empty() { String::new() } else { format!("; {}", notes.join("; ")) },
                        });
                    }
                    match self.try_holders(entry, &dest, &holders, partial, &mut corrupt, &mut received).await? {
                        Ok(fetched) => return Ok(fetched),
                        Err(last) => last.or_else(|| unknown.first().cloned()).unwrap_or_default(),
                    }
                }
            };
            if round >= self.retry.rounds {
                return Err(FetchError::Unavailable { name: name.to_owned(), rounds: round, last });
            }
            let delay = self.retry.backoff(round);
            self.progress.retry();
            tracing::info!(name, round, ?delay, last, "retrying");
            tokio::time::sleep(delay).await;
        }
    }

    /// Tries `holders` one after the other (least busy first). `Ok(Ok)` once the file is
    /// installed; `Ok(Err(last failure))` when none succeeded this round; `Err` for failures no
    /// retry can fix.
    async fn try_holders(
        &self,
        entry: &FileEntry,
        dest: &std::path::Path,
        holders: &[(&Peer, u64)],
        partial: &mut Partial,
        corrupt: &mut Vec<String>,
        received: &mut u64,
    ) -> Result<Result<Fetched, Option<String>>, FetchError> {
        let name = entry.name.as_str();
        let mut remaining: Vec<&Peer> = holders.iter().map(|(p, _)| *p).collect();
        let mut last = None;
        while let Some((peer, lease)) = self.load.pick(&remaining) {
            if last.is_some() {
                self.progress.failover();
            }
            remaining.retain(|p| p.node_id != peer.node_id);
            if corrupt.contains(&peer.node_id) {
                continue;
            }
            let size = if entry.size == u64::MAX {
                holders.iter().find(|(p, _)| p.node_id == peer.node_id).map_or(0, |h| h.1)
            } else {
                entry.size
            };
            let before = partial.len();
            let outcome = self.transfer(peer, name, size, partial).await;
            *received += partial.len().saturating_sub(before);
            drop(lease);
            match outcome {
                Ok(()) if partial.len() < size => {
                    // Ended cleanly but short (the holder is stopping?): keep what came, so the
                    // next holder continues from here.
                    tracing::warn!(name, node = peer.node_id, offset = partial.len(), size, "stream ended early");
                    last = Some(format!("{}: stream ended at byte {} of {size}", peer.node_id, partial.len()));
                }
                Ok(()) => {
                    let digest = partial.finish_digest().await.map_err(|err| FetchError::Local {
                        name: name.to_owned(),
                        path: self.root.tmp_dir(),
                        message: err.to_string(),
                    })?;
                    let good = partial.len() == size && entry.sha256.is_none_or(|want| want == digest);
                    if good {
                        let taken = std::mem::take(partial);
                        taken.commit(&self.root, dest).await.map_err(|err| FetchError::Local {
                            name: name.to_owned(),
                            path: dest.to_path_buf(),
                            message: err.to_string(),
                        })?;
                        return Ok(Ok(Fetched {
                            node_id: peer.node_id.clone(),
                            size,
                            sha256: digest,
                            bytes_received: *received,
                        }));
                    }
                    let discarded = std::mem::replace(partial, partial.restart());
                    self.progress.rewind(discarded.len());
                    // Bytes resumed from an earlier run have no known sender: blame nobody then.
                    let blame = discarded.contributors().len() == 1 && !discarded.resumed();
                    discarded.discard().await;
                    tracing::warn!(
                        name,
                        node = peer.node_id,
                        spliced = !blame,
                        "checksum mismatch: discarding the received bytes"
                    );
                    if blame {
                        corrupt.push(peer.node_id.clone());
                    }
                    last = Some(format!("{}: checksum mismatch", peer.node_id));
                }
                Err(TransferFailure::Oversize) => {
                    let discarded = std::mem::replace(partial, partial.restart());
                    self.progress.rewind(discarded.len());
                    discarded.discard().await;
                    tracing::warn!(name, node = peer.node_id, "sent more bytes than the file has");
                    corrupt.push(peer.node_id.clone());
                    last = Some(format!("{}: sent more bytes than the file has", peer.node_id));
                }
                Err(TransferFailure::Gone) => {
                    last = Some(format!("{}: no longer has the file", peer.node_id));
                }
                Err(TransferFailure::Broken(why)) => {
                    tracing::warn!(name, node = peer.node_id, offset = partial.len(), why, "transfer broke off");
                    last = Some(format!("{}: {why}", peer.node_id));
                }
                Err(TransferFailure::Local(err)) => {
                    return Err(FetchError::Local {
                        name: name.to_owned(),
                        path: self.root.tmp_dir(),
                        message: err.to_string(),
                    });
                }
            }
        }
        Ok(Err(last))
    }

    /// Asks `peers` in parallel whether they hold `entry`. Returns the holders (with the size
    /// they report), the failures that leave the question open, and notes on peers holding a
    /// different version.
    async fn survey<'a>(
        &self,
        peers: &[&'a Peer],
        entry: &FileEntry,
    ) -> (Vec<(&'a Peer, u64)>, Vec<String>, Vec<String>) {
        let asks = peers.iter().map(|peer| async move { (*peer, self.ask(peer, entry).await) });
        let mut holders = Vec::new();
        let mut unknown = Vec::new();
        let mut notes = Vec::new();
        for (peer, answer) in join_all(asks).await {
            match answer {
                (Answer::Holds, size) => holders.push((peer, size)),
                (Answer::No(note), _) => notes.extend(note),
                (Answer::Unknown(why), _) => {
                    tracing::debug!(name = entry.name, node = peer.node_id, why, "peer did not answer");
                    unknown.push(format!("{}: {why}", peer.node_id));
                }
            }
        }
        (holders, unknown, notes)
    }

    async fn ask(&self, peer: &Peer, entry: &FileEntry) -> (Answer, u64) {
        let Some(mut client) = peer.client() else {
            return (Answer::No(None), 0);
        };
        let call = client.file_exists(FileExistsRequest { path: entry.name.clone() });
        match tokio::time::timeout(self.timeouts.rpc, call).await {
            Err(_) => (Answer::Unknown("FileExists timed out".into()), 0),
            Ok(Ok(response)) => {
                let response = response.into_inner();
                if !response.exists {
                    (Answer::No(None), 0)
                } else if entry.size == u64::MAX || response.size == entry.size {
                    (Answer::Holds, response.size)
                } else {
                    (
                        Answer::No(Some(format!(
                            "{} holds a {}-byte file by that name, the manifest says {}",
                            peer.node_id, response.size, entry.size
                        ))),
                        0,
                    )
                }
            }
            Ok(Err(status)) => {
                if is_transient(&status) {
                    (Answer::Unknown(status_message(&status)), 0)
                } else {
                    // UNIMPLEMENTED (not an agent, or an older one), a refusal, or any other
                    // error: "does not have it", as the seed asks for backward compatibility.
                    tracing::debug!(node = peer.node_id, code = ?status.code(), "FileExists failed; counting as absent");
                    (Answer::No(None), 0)
                }
            }
        }
    }

    /// Streams `name` from `peer` into `partial`, from `partial.len()` on, until `size` bytes.
    async fn transfer(&self, peer: &Peer, name: &str, size: u64, partial: &mut Partial) -> Result<(), TransferFailure> {
        let offset = partial.len();
        if offset == size && offset > 0 {
            return Ok(());
        }
        // The holder knows who asks from this side's certificate (for its per-peer metrics too).
        let request = ReadFileRequest { path: name.to_owned(), offset };
        let mut stream = match tokio::time::timeout(self.timeouts.stall, peer.read_file(request)).await {
            Err(_) => return Err(TransferFailure::Broken("ReadFile did not start in time".into())),
            Ok(Err(status)) if status.code() == Code::NotFound => return Err(TransferFailure::Gone),
            Ok(Err(status)) if status.code() == Code::OutOfRange => return Err(TransferFailure::Oversize),
            Ok(Err(status)) => return Err(TransferFailure::Broken(status_message(&status))),
            Ok(Ok(stream)) => stream,
        };
        loop {
            let next = match tokio::time::timeout(self.timeouts.stall, stream.next()).await {
                Err(_) => {
                    return Err(TransferFailure::Broken(format!("stalled: no data for {:?}", self.timeouts.stall)));
                }
                Ok(Err(status)) => return Err(TransferFailure::Broken(status_message(&status))),
                Ok(Ok(next)) => next,
            };
            let Some(chunk) = next else {
                return Ok(());
            };
            if partial.len() + chunk.len() as u64 > size {
                return Err(TransferFailure::Oversize);
            }
            let n = chunk.len() as u64;
            partial.append(&self.root, &peer.node_id, chunk).await.map_err(TransferFailure::Local)?;
            self.progress.advance(n);
        }
    }
}

/// Whether a failed call leaves open whether the peer has the file: it could not be reached,
/// was overloaded, timed out, or did not yet accept our credential (a coordinator restart
/// hands out a new one; peers pick it up within a heartbeat).
pub(crate) fn is_transient(status: &tonic::Status) -> bool {
    let message = status_message(status);
    // A TLS answer that proves the other end is not an agent of this cluster (plaintext, a
    // certificate from elsewhere, another node at that address) is definite, not transient.
    if message.contains("received corrupt message")
        || message.contains("invalid peer certificate")
        || message.contains("not node")
    {
        return false;
    }
    match status.code() {
        Code::Unavailable
        | Code::DeadlineExceeded
        | Code::ResourceExhausted
        | Code::Aborted
        | Code::Cancelled
        | Code::Unauthenticated => true,
        // Connection-level failures surface as UNKNOWN with a transport error behind them.
        Code::Unknown => {
            message.contains("transport error") || message.contains("connection") || message.contains("h2 protocol")
        }
        _ => false,
    }
}

/// Whether the file at `path` has `entry`'s size and digest. Blocking.
pub(crate) fn local_matches(path: &std::path::Path, entry: &FileEntry) -> bool {
    match std::fs::metadata(path) {
        Ok(meta) if meta.is_file() && meta.len() == entry.size => match entry.sha256 {
            None => true,
            Some(want) => crate::digest::hash_file(path).is_ok_and(|(len, digest)| len == entry.size && digest == want),
        },
        _ => false,
    }
}
