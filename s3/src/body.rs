//! Receiving a request body into a temp file, hashing it on the way.
//!
//! The network side (this task) computes the cheap checksums of each chunk and hands batches
//! (64 KiB first, doubling to 1 MiB) to a blocking writer thread and to an MD5 thread (the
//! ETag) over small bounded channels — the same reference-counted chunks, not copies — so
//! receiving, hashing and writing overlap, a PUT runs at the pace of the slowest of the three,
//! and at most a few MiB per upload are in memory. A body that ends within its first batch
//! (64 KiB: most small objects) skips all that: it is hashed and written in one blocking call
//! ([`Whole`]; a PutObject installs it in the same call), since two threads, their channels
//! and their wake-ups cost more than hashing a few KiB. Nothing reaches the object's path
//! here: the caller checks the digests and then commits the [`TempFile`] (or, for a multipart
//! part written in place, records it; see [`crate::uploads`]).

use std::io::{self, IoSlice, Write};
use std::path::PathBuf;

use bytes::Bytes;
use depot_fs::{TempFile, Writeback};
use futures::StreamExt;
use s3s::dto::StreamingBlob;

use crate::digest::{BodyHasher, Digests, Md5Thread};
use crate::error::{Error, Result, write_error};

/// S3's limit for one PUT or one part.
pub const MAX_BODY: u64 = 5 * 1024 * 1024 * 1024;

/// Bytes handed to the writer and the MD5 thread at once.
const BATCH_BYTES: usize = 1024 * 1024;
/// The first batch's size; each next one doubles, up to [`BATCH_BYTES`].
const FIRST_BATCH_BYTES: usize = 64 * 1024;
/// Chunks handed to the writer at once (below the kernel's `IOV_MAX` of 1024).
const BATCH_CHUNKS: usize = 256;
/// Batches in flight between the network and the writer.
const QUEUE: usize = 4;

/// Where a body's bytes go: a temp file, or a part's region of an assembly file.
pub trait Sink: Send + 'static {
    /// Writes every chunk of `batch`, in order, after what was written before.
    ///
    /// # Errors
    /// The I/O error.
    fn write_batch(&mut self, batch: &[Bytes]) -> io::Result<()>;
    /// The file written to (for the early writeback, [`Writeback`]).
    fn file(&self) -> &std::fs::File;
}

impl Sink for TempFile {
    fn write_batch(&mut self, batch: &[Bytes]) -> io::Result<()> {
        write_batch(self, batch)
    }

    fn file(&self) -> &std::fs::File {
        TempFile::file(self)
    }
}

/// A body written to a [`Sink`], with its size and digests.
pub struct Received<S = TempFile> {
    /// Where the body went.
    pub file: S,
    /// Bytes received.
    pub size: u64,
    /// Digests of those bytes.
    pub digests: Digests,
}

/// Checks a declared length against [`MAX_BODY`] before reading anything.
///
/// # Errors
/// [`Error::EntityTooLarge`].
pub fn check_declared_length(length: Option<i64>) -> Result<()> {
    match length.and_then(|l| u64::try_from(l).ok()) {
        Some(size) if size > MAX_BODY => Err(Error::EntityTooLarge { size }),
        _ => Ok(()),
    }
}

/// Streams `body` into the sink that `open` makes (with its path, for errors), hashing it
/// with `hasher`: [`start`], then [`Start::receive`]. `key` names the object in errors.
///
/// # Errors
/// A body error (digest or signature mismatch found by s3s, early end), [`Error::EntityTooLarge`],
/// `open`'s error, or a write error (a full disk is [`Error::DiskFull`]). The sink is dropped
/// on error (a temp file deletes itself).
pub async fn receive_with<S: Sink>(
    body: Option<StreamingBlob>,
    open: impl FnOnce() -> Result<(S, PathBuf)> + Send + 'static,
    hasher: BodyHasher,
    key: &str,
) -> Result<Received<S>> {
    start(body, hasher).await?.receive(open, key).await
}

/// A body's first batch, read and given to the hasher.
pub enum Start {
    /// The body ended within it.
    Whole(Whole),
    /// More follows.
    Longer(Head),
}

/// The first batch of a body longer than that.
pub struct Head {
    rest: StreamingBlob,
    first: Vec<Bytes>,
    size: u64,
    hasher: BodyHasher,
}

/// A body that ended within its first batch, so small that one blocking call can hash it,
/// write it and install it: the writer and MD5 threads of a longer body, their channels and
/// their thread hops cost more than hashing a few KiB.
pub struct Whole {
    chunks: Vec<Bytes>,
    size: u64,
    hasher: BodyHasher,
}

impl Whole {
    /// The body's chunks, size and digests (the MD5 computed now: call it off the runtime).
    #[must_use]
    pub fn finish(self) -> (Vec<Bytes>, u64, Digests) {
        let md5 = crate::digest::md5_of(&self.chunks);
        (self.chunks, self.size, self.hasher.finalize(Some(md5)))
    }
}

/// Reads `body` up to its first batch ([`FIRST_BATCH_BYTES`]), giving it to `hasher`.
///
/// # Errors
/// A body error (see [`receive_with`]).
pub async fn start(body: Option<StreamingBlob>, mut hasher: BodyHasher) -> Result<Start> {
    let mut first = Vec::new();
    let mut size = 0u64;
    let Some(mut rest) = body else {
        return Ok(Start::Whole(Whole { chunks: first, size, hasher }));
    };
    while size < FIRST_BATCH_BYTES as u64 && first.len() < BATCH_CHUNKS {
        match rest.next().await {
            None => return Ok(Start::Whole(Whole { chunks: first, size, hasher })),
            Some(Ok(chunk)) => {
                size += chunk.len() as u64;
                hasher.update(&chunk);
                first.push(chunk);
            }
            Some(Err(err)) => return Err(body_error(&*err, size)),
        }
    }
    Ok(Start::Longer(Head { rest, first, size, hasher }))
}

impl Start {
    /// Streams the whole body into the sink `open` makes. `open` runs on a blocking thread,
    /// so setting the sink up (a temp file created, or a part's slot: the upload's files read,
    /// the assembly opened) neither blocks the runtime nor delays hashing: for a longer body
    /// it overlaps with the MD5 of the first batch and receiving the rest.
    ///
    /// # Errors
    /// As [`receive_with`].
    pub async fn receive<S: Sink>(
        self,
        open: impl FnOnce() -> Result<(S, PathBuf)> + Send + 'static,
        key: &str,
    ) -> Result<Received<S>> {
        let whole = match self {
            Start::Longer(head) => return pipeline(head, open, key).await,
            Start::Whole(whole) => whole,
        };
        let key = key.to_owned();
        tokio::task::spawn_blocking(move || -> Result<Received<S>> {
            let (mut file, path) = open()?;
            let (chunks, size, digests) = whole.finish();
            file.write_batch(&chunks).map_err(|e| write_error(&key, path, e))?;
            Ok(Received { file, size, digests })
        })
        .await
        .map_err(|e| Error::io("<writer task>")(io::Error::other(e)))?
    }
}

/// [`Start::receive`] for a body longer than its first batch: the writer and MD5 threads, fed
/// over bounded channels.
async fn pipeline<S: Sink>(
    head: Head,
    open: impl FnOnce() -> Result<(S, PathBuf)> + Send + 'static,
    key: &str,
) -> Result<Received<S>> {
    let Head { rest: mut body, first, mut size, mut hasher } = head;
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<Bytes>>(QUEUE);
    let owned_key = key.to_owned();
    let writer = tokio::task::spawn_blocking(move || -> Result<S> {
        let (mut file, path) = open()?;
        let mut written = || -> io::Result<()> {
            let mut early = Writeback::new();
            let mut total = 0u64;
            while let Some(batch) = rx.blocking_recv() {
                file.write_batch(&batch)?;
                let bytes = batch.iter().map(|b| b.len() as u64).sum();
                total += bytes;
                early.written(file.file(), bytes);
            }
            if total >= TAIL_FLUSH_MIN {
                // The network is done before the MD5 thread (MD5 is the slowest of the three):
                // writing the tail out now overlaps it with that hashing, and the caller's
                // fsync has only the journal commit left. Best effort: the caller's fsync must
                // succeed.
                let _ = depot_fs::flush::write_out(file.file());
            }
            Ok(())
        };
        written().map_err(|e| write_error(&owned_key, path, e))?;
        Ok(file)
    });

    let md5 = Md5Thread::start(QUEUE);
    let mut outcome = Ok(());
    // The first batch is small, so MD5 (the slowest of the three) starts on the first bytes
    // rather than after a whole batch has arrived: a sequential client waits for each part's
    // MD5, so every millisecond it starts late is a millisecond per part. Each next batch
    // doubles, up to BATCH_BYTES.
    md5.feed(first.clone()).await;
    // A failed send means the writer failed; its error is reported below.
    if tx.send(first).await.is_ok() {
        let mut batch = Vec::new();
        let mut batch_bytes = 0;
        let mut batch_limit = FIRST_BATCH_BYTES * 2;
        while let Some(chunk) = body.next().await {
            let chunk = match chunk {
                Ok(chunk) => chunk,
                Err(err) => {
                    outcome = Err(body_error(&*err, size));
                    break;
                }
            };
            size += chunk.len() as u64;
            if size > MAX_BODY {
                outcome = Err(Error::EntityTooLarge { size });
                break;
            }
            hasher.update(&chunk);
            batch_bytes += chunk.len();
            batch.push(chunk);
            if batch_bytes >= batch_limit || batch.len() >= BATCH_CHUNKS {
                batch_bytes = 0;
                batch_limit = (batch_limit * 2).min(BATCH_BYTES);
                md5.feed(batch.clone()).await;
                if tx.send(std::mem::take(&mut batch)).await.is_err() {
                    break; // the writer failed
                }
            }
        }
        if outcome.is_ok() && !batch.is_empty() {
            md5.feed(batch.clone()).await;
            let _ = tx.send(batch).await;
        }
    }
    drop(tx);
    let md5 = md5.finish().await;
    let written = writer.await.map_err(|e| Error::io("<writer task>")(io::Error::other(e)))?;
    outcome?;
    Ok(Received { file: written?, size, digests: hasher.finalize(md5) })
}

/// Bodies from this size on write their tail out as soon as the network is done (overlapping
/// the MD5 thread); smaller ones leave it to the commit.
const TAIL_FLUSH_MIN: u64 = 1024 * 1024;

/// Writes every chunk of `batch` with as few `writev` calls as the kernel allows.
fn write_batch(file: &mut TempFile, batch: &[Bytes]) -> io::Result<()> {
    let mut slices: Vec<IoSlice<'_>> = batch.iter().map(|b| IoSlice::new(b)).collect();
    let mut slices = &mut slices[..];
    while !slices.is_empty() {
        match file.write_vectored(slices) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => IoSlice::advance_slices(&mut slices, n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Turns an error from the body stream into the S3 error it stands for.
///
/// s3s checks the signed payload hash and the aws-chunked signatures inside the stream, but
/// its error types are private, so they are recognised by their (stable) names.
fn body_error(err: &(dyn std::error::Error + 'static), received: u64) -> Error {
    let text = err.to_string();
    if text.contains("Sha256Mismatch") {
        Error::ContentSha256Mismatch
    } else if text.contains("SignatureMismatch") {
        Error::ChunkSignature
    } else if text.contains("FormatError") || text.contains("TooLarge") || text.contains("TooMany") {
        Error::InvalidRequest(format!("malformed aws-chunked body: {text}"))
    } else {
        // "Incomplete", "LengthMismatch", or the connection went away mid-body.
        tracing::debug!(%text, received, "body ended early");
        Error::IncompleteBody { received }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::{Algorithm, Expected};

    fn blob(data: &[u8], chunk: usize) -> StreamingBlob {
        let chunks: Vec<io::Result<Bytes>> = data.chunks(chunk).map(|c| Ok(Bytes::copy_from_slice(c))).collect();
        StreamingBlob::wrap(futures::stream::iter(chunks))
    }

    fn hasher() -> BodyHasher {
        Expected::from_headers(&http::HeaderMap::new()).unwrap().hasher()
    }

    async fn receive_into_temp(dir: &std::path::Path, body: StreamingBlob) -> Result<Received> {
        let dir = dir.to_path_buf();
        let open = move || {
            let temp = TempFile::create_in(&dir).map_err(Error::io(&dir))?;
            let path = temp.path().to_path_buf();
            Ok((temp, path))
        };
        receive_with(Some(body), open, hasher(), "k").await
    }

    #[tokio::test]
    async fn bodies_on_both_sides_of_the_first_batch_arrive_whole_with_their_digests() {
        let dir = tempfile::tempdir().unwrap();
        let data: Vec<u8> = (0..3 * 1024 * 1024 + 7).map(|i| (i * 31 % 251) as u8).collect();
        let first = FIRST_BATCH_BYTES;
        for len in [0, 1, first - 1, first, first + 1, 3 * 1024 * 1024 + 7] {
            for chunk in [16 * 1024, 1024 * 1024] {
                let bytes = &data[..len];
                let shape = start(Some(blob(bytes, chunk)), hasher()).await.unwrap();
                assert_eq!(matches!(shape, Start::Whole(_)), len < first, "{len} bytes in {chunk}-byte chunks");

                let received = receive_into_temp(dir.path(), blob(bytes, chunk)).await.unwrap();
                assert_eq!(received.size, len as u64);
                assert_eq!(std::fs::read(received.file.path()).unwrap(), bytes, "{len} bytes");
                let mut direct = hasher();
                direct.update(bytes);
                let direct = direct.finalize(Some(crate::digest::md5_of(&[Bytes::copy_from_slice(bytes)])));
                assert_eq!(received.digests.etag(), direct.etag(), "{len} bytes");
                assert_eq!(received.digests.base64(Algorithm::Crc64Nvme), direct.base64(Algorithm::Crc64Nvme));
            }
        }
    }

    #[tokio::test]
    async fn a_small_body_cut_short_is_refused_before_any_file_is_made() {
        let dir = tempfile::tempdir().unwrap();
        let chunks: Vec<io::Result<Bytes>> =
            vec![Ok(Bytes::from_static(b"partial")), Err(io::Error::new(io::ErrorKind::UnexpectedEof, "Incomplete"))];
        let result = receive_into_temp(dir.path(), StreamingBlob::wrap(futures::stream::iter(chunks))).await;
        assert!(matches!(result, Err(Error::IncompleteBody { received: 7 })), "{:?}", result.err());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "no temp file left");
    }
}
