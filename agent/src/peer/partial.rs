//! A file being received: a temp file in the root's `.depot/tmp/`, how many bytes it holds,
//! and the running SHA-256 of those bytes.
//!
//! Receiving, hashing and writing overlap: the network task hands each chunk (a reference-
//! counted `Bytes`, never copied) to a hashing thread and to a writing thread over short
//! bounded queues, so a transfer runs at the pace of the slowest of the three instead of their
//! sum, and a slow disk or hash holds back the network (and memory) within a few chunks. The
//! writer flushes the file to disk every few tens of MiB while it arrives
//! ([`depot_fs::Writeback`]), so the fsync before the rename only has the tail left.

use std::collections::BTreeSet;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use bytes::Bytes;
use depot_fs::{CommitError, Root, TempFile, Writeback};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::digest::Sha256Digest;

/// Chunks queued for each of the hashing and writing threads: enough to keep them busy while
/// the next chunk arrives, few enough that a slow disk or hash holds back the network (and
/// memory) quickly. The two queues hold the same chunks, so a file in flight holds about as
/// much as one queue of 3 did (`fetch --concurrency` files at once stay within 64 MiB).
const QUEUE_CHUNKS: usize = 2;

/// The temp file and the hash of what it holds, owned by whoever is writing.
#[derive(Debug)]
struct Sink {
    tmp: TempFile,
    hasher: Sha256,
}

/// The hashing and writing threads, each with its half of the sink and its queue.
#[derive(Debug)]
struct Pipeline {
    hash_tx: mpsc::Sender<Bytes>,
    hasher: JoinHandle<Sha256>,
    write_tx: mpsc::Sender<Bytes>,
    writer: JoinHandle<(TempFile, io::Result<()>)>,
}

impl Pipeline {
    fn start(sink: Sink, uncached: bool) -> Self {
        let (hash_tx, mut hash_rx) = mpsc::channel::<Bytes>(QUEUE_CHUNKS);
        let (write_tx, write_rx) = mpsc::channel(QUEUE_CHUNKS);
        let mut hasher = sink.hasher;
        let hasher = tokio::task::spawn_blocking(move || {
            while let Some(data) = hash_rx.blocking_recv() {
                hasher.update(&data);
            }
            hasher
        });
        let tmp = sink.tmp;
        let writer = tokio::task::spawn_blocking(move || write_queue(tmp, write_rx, uncached));
        Self { hash_tx, hasher, write_tx, writer }
    }

    /// Closes the queues and waits for both threads to finish what is queued.
    async fn stop(self) -> io::Result<(Sink, io::Result<()>)> {
        let Self { hash_tx, hasher, write_tx, writer } = self;
        drop((hash_tx, write_tx));
        let (tmp, written) = writer.await.map_err(io::Error::other)?;
        let hasher = hasher.await.map_err(io::Error::other)?;
        Ok((Sink { tmp, hasher }, written))
    }
}

/// Where the sink is: here, or with the threads.
#[derive(Debug, Default)]
enum State {
    /// Nothing received yet: no temp file (files that are never fetched cost nothing).
    #[default]
    Empty,
    /// Idle: the sink is here.
    Idle(Sink),
    /// The hashing and writing threads have the sink.
    Running(Pipeline),
}

/// The received-so-far bytes of one file. Dropping it deletes the temp file (once the writer
/// thread, if running, has seen its queue close).
///
/// Bytes from several holders may be spliced (a transfer that breaks off continues from the
/// same offset on the next holder); [`Partial::contributors`] says whose bytes are in it, so a
/// checksum failure can be blamed on a single holder only when it is certain.
#[derive(Debug, Default)]
pub struct Partial {
    state: State,
    /// Bytes handed to the writer (all of them written unless it reports an error).
    len: u64,
    contributors: BTreeSet<String>,
    /// Where a resumable partial keeps its bytes between runs; see [`Partial::resumable`].
    resume_path: Option<PathBuf>,
    /// Bytes it started with (from an earlier run), not received in this one.
    resumed_bytes: u64,
    /// Drop written pages from the page cache once on disk ([`Partial::uncached`]).
    uncached: bool,
}

impl Partial {
    /// An empty partial file.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Continues from the first `len` bytes of an existing temp file (e.g. one a checkpoint
    /// recorded before an interruption): those bytes are re-hashed, anything after them is cut.
    /// Blocking: call it from `spawn_blocking`.
    ///
    /// # Errors
    /// The I/O error reading the file, or `UnexpectedEof` when it holds fewer than `len` bytes.
    pub fn resume(tmp: TempFile, len: u64) -> io::Result<Self> {
        let mut file = tmp.file();
        file.seek(SeekFrom::Start(0))?;
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 256 * 1024];
        let mut read = 0u64;
        let mut reader = file.take(len);
        loop {
            let n = reader.read(&mut buf)?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            read += n as u64;
        }
        if read != len {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("the partial file holds {read} bytes, not {len}"),
            ));
        }
        tmp.file().set_len(len)?;
        let mut file = tmp.file();
        file.seek(SeekFrom::Start(len))?;
        Ok(Self {
            state: State::Idle(Sink { tmp, hasher }),
            len,
            contributors: BTreeSet::new(),
            resume_path: None,
            resumed_bytes: len,
            uncached: false,
        })
    }

    /// A partial file at a stable `path` (a [`TempFile::resumable`]): bytes an earlier,
    /// interrupted run left there are re-hashed and the transfer continues after them, and if
    /// this transfer is interrupted too (or fails in a way a later run may fix) its bytes stay
    /// for the next run. Their correctness is settled by the final size and SHA-256 check, like
    /// every other byte. Blocking: call it from `spawn_blocking`.
    ///
    /// # Errors
    /// The I/O error opening or re-hashing the file.
    pub fn resumable(path: &Path) -> io::Result<Self> {
        let existing = std::fs::metadata(path).map_or(0, |m| m.len());
        let mut partial = if existing > 0 { Self::resume(TempFile::resumable(path)?, existing)? } else { Self::new() };
        partial.resume_path = Some(path.to_path_buf());
        Ok(partial)
    }

    /// The same partial, its bytes leaving the page cache as they reach the disk
    /// ([`depot_fs::Writeback::uncached`]): for files nobody reads back soon (`fetch`), not for
    /// ones served right after (the S3 view's cache).
    #[must_use]
    pub fn uncached(mut self) -> Self {
        self.uncached = true;
        self
    }

    /// Bytes it started with, left by an earlier run (not transferred again).
    #[must_use]
    pub fn resumed_bytes(&self) -> u64 {
        self.resumed_bytes
    }

    /// A resumable partial at `path` that holds nothing yet (no I/O: the file is created when
    /// the first bytes arrive). For files with no earlier bytes; see [`Partial::resumable`].
    #[must_use]
    pub fn resumable_new(path: &Path) -> Self {
        Self { resume_path: Some(path.to_path_buf()), ..Self::default() }
    }

    /// Whether it started from bytes of an earlier run.
    pub(crate) fn resumed(&self) -> bool {
        self.resumed_bytes > 0
    }

    /// Whether the bytes survive an interruption ([`Partial::resumable`]).
    #[must_use]
    pub fn is_resumable(&self) -> bool {
        self.resume_path.is_some()
    }

    /// An empty partial writing to the same place as this one (after this one is discarded).
    pub(crate) fn restart(&self) -> Self {
        Self { resume_path: self.resume_path.clone(), uncached: self.uncached, ..Self::default() }
    }

    /// Bytes received so far: the offset the next `ReadFile` starts from.
    #[must_use]
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether nothing has been received.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The peers whose bytes are in the file.
    #[must_use]
    pub fn contributors(&self) -> &BTreeSet<String> {
        &self.contributors
    }

    /// Queues `data` received from `node_id` for hashing and writing.
    ///
    /// # Errors
    /// A local I/O error (disk full, ...) from this or an earlier chunk.
    pub(crate) async fn append(&mut self, root: &Root, node_id: &str, data: Bytes) -> io::Result<()> {
        if !self.contributors.contains(node_id) {
            self.contributors.insert(node_id.to_owned());
        }
        let n = data.len() as u64;
        loop {
            match std::mem::take(&mut self.state) {
                State::Empty => {
                    let root = root.clone();
                    let resume_path = self.resume_path.clone();
                    let tmp = tokio::task::spawn_blocking(move || match resume_path {
                        Some(path) => TempFile::resumable(&path),
                        None => root.temp_file(),
                    })
                    .await
                    .map_err(io::Error::other)??;
                    self.state = State::Idle(Sink { tmp, hasher: Sha256::new() });
                }
                State::Idle(sink) => self.state = State::Running(Pipeline::start(sink, self.uncached)),
                State::Running(pipeline) => {
                    // The hashing thread ends only when its queue closes: that send cannot fail.
                    let written =
                        pipeline.write_tx.send(data.clone()).await.is_ok() && pipeline.hash_tx.send(data).await.is_ok();
                    self.state = State::Running(pipeline);
                    if written {
                        self.len += n;
                        return Ok(());
                    }
                    // The writer stopped on an error: collect it.
                    self.settle().await?;
                    return Err(io::Error::other("the writer stopped"));
                }
            }
        }
    }

    /// Waits for the threads to finish the queued chunks and takes the sink back.
    async fn settle(&mut self) -> io::Result<()> {
        match std::mem::take(&mut self.state) {
            State::Running(pipeline) => {
                let (sink, result) = pipeline.stop().await?;
                self.state = State::Idle(sink);
                result
            }
            other => {
                self.state = other;
                Ok(())
            }
        }
    }

    /// Waits for everything queued to be written and returns the digest of all bytes
    /// received. Call once, at the end.
    ///
    /// # Errors
    /// A local I/O error from writing.
    pub(crate) async fn finish_digest(&mut self) -> io::Result<Sha256Digest> {
        self.settle().await?;
        Ok(match &mut self.state {
            State::Idle(sink) => std::mem::take(&mut sink.hasher).finalize().into(),
            _ => Sha256::new().finalize().into(),
        })
    }

    /// Stops the writer and deletes the temp file (resumable or not), before returning.
    pub(crate) async fn discard(mut self) {
        let _ = self.settle().await;
        if let State::Idle(sink) = std::mem::take(&mut self.state) {
            let _ = tokio::task::spawn_blocking(move || sink.tmp.discard()).await;
        }
    }

    /// Stops the writer, leaving the bytes of a resumable partial in place for a later run;
    /// any other partial is discarded.
    pub(crate) async fn keep(mut self) {
        if !self.is_resumable() {
            return self.discard().await;
        }
        let _ = self.settle().await;
        if let State::Idle(sink) = std::mem::take(&mut self.state) {
            let _ = tokio::task::spawn_blocking(move || sink.tmp.file().sync_data()).await;
        }
    }

    /// Makes the file durable and renames it to `dest` (creating parents). A zero-byte file
    /// that never received a chunk is created empty. Call after [`Partial::finish_digest`].
    ///
    /// # Errors
    /// [`CommitError`]; the temp file is gone either way.
    pub(crate) async fn commit(mut self, root: &Root, dest: &Path) -> Result<(), CommitError> {
        let io_err = |source: io::Error| CommitError::Io { path: root.tmp_dir(), source };
        self.settle().await.map_err(io_err)?;
        let tmp = match std::mem::take(&mut self.state) {
            State::Idle(sink) => sink.tmp,
            _ => root.temp_file().map_err(io_err)?,
        };
        let dest = dest.to_path_buf();
        tokio::task::spawn_blocking(move || tmp.commit(&dest)).await.map_err(|err| io_err(io::Error::other(err)))?
    }
}

/// The writing thread: writes queued chunks until the queue closes or a write fails, starting
/// the disk on them along the way.
fn write_queue(mut tmp: TempFile, mut rx: mpsc::Receiver<Bytes>, uncached: bool) -> (TempFile, io::Result<()>) {
    let mut writeback = if uncached { Writeback::uncached() } else { Writeback::new() };
    while let Some(data) = rx.blocking_recv() {
        if let Err(err) = tmp.write_all(&data) {
            return (tmp, Err(err));
        }
        writeback.written(tmp.file(), data.len() as u64);
    }
    (tmp, Ok(()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunks(data: &[u8]) -> impl Iterator<Item = Bytes> + '_ {
        // Uneven chunks, more of them than the queues hold.
        data.chunks(7919).map(Bytes::copy_from_slice)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn chunks_are_hashed_and_written_in_order_then_committed() {
        let dir = tempfile::tempdir().unwrap();
        let root = Root::open(dir.path()).unwrap();
        let data: Vec<u8> = (0..200_000u32).map(|i| (i * 31 + i / 7) as u8).collect();
        let mut partial = Partial::new();
        for chunk in chunks(&data) {
            partial.append(&root, "node1", chunk).await.unwrap();
        }
        assert_eq!(partial.len(), data.len() as u64);
        let digest = partial.finish_digest().await.unwrap();
        assert_eq!(digest, <[u8; 32]>::from(Sha256::digest(&data)));
        partial.commit(&root, &dir.path().join("a/b.sst")).await.unwrap();
        assert_eq!(std::fs::read(dir.path().join("a/b.sst")).unwrap(), data);
        assert_eq!(std::fs::read_dir(root.tmp_dir()).unwrap().count(), 0, "no temp file left");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_kept_resumable_partial_continues_where_it_stopped() {
        let dir = tempfile::tempdir().unwrap();
        let root = Root::open(dir.path()).unwrap();
        let path = root.tmp_dir().join("resume.part");
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        let mut first = Partial::resumable_new(&path);
        for chunk in chunks(&data[..60_000]) {
            first.append(&root, "node1", chunk).await.unwrap();
        }
        first.keep().await;
        let opened = tokio::task::spawn_blocking({
            let path = path.clone();
            move || Partial::resumable(&path)
        });
        let mut second = opened.await.unwrap().unwrap();
        assert_eq!((second.len(), second.resumed_bytes()), (60_000, 60_000));
        for chunk in chunks(&data[60_000..]) {
            second.append(&root, "node2", chunk).await.unwrap();
        }
        assert_eq!(second.finish_digest().await.unwrap(), <[u8; 32]>::from(Sha256::digest(&data)));
        second.commit(&root, &dir.path().join("f")).await.unwrap();
        assert_eq!(std::fs::read(dir.path().join("f")).unwrap(), data);
        assert!(!path.exists(), "the resumable file was renamed into place");
    }
}
