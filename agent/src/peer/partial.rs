//! A file being received: a temp file in the root's `.depot/tmp/`, how many bytes it holds,
//! and the running SHA-256 of those bytes.

use std::collections::BTreeSet;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::Path;

use depot_fs::{CommitError, Root, TempFile};
use sha2::{Digest, Sha256};

use crate::digest::Sha256Digest;

/// The verified-so-far bytes of one file. Dropping it deletes the temp file.
///
/// Bytes from several holders may be spliced (a transfer that breaks off continues from the
/// same offset on the next holder); [`Partial::contributors`] says whose bytes are in it, so a
/// checksum failure can be blamed on a single holder only when it is certain.
#[derive(Debug)]
pub struct Partial {
    /// `None` until the first byte arrives (no temp file for files that are never fetched).
    tmp: Option<TempFile>,
    len: u64,
    hasher: Sha256,
    contributors: BTreeSet<String>,
}

impl Default for Partial {
    fn default() -> Self {
        Self::new()
    }
}

impl Partial {
    /// An empty partial file.
    #[must_use]
    pub fn new() -> Self {
        Self {
            tmp: None,
            len: 0,
            hasher: Sha256::new(),
            contributors: BTreeSet::new(),
        }
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
            tmp: Some(tmp),
            len,
            hasher,
            contributors: BTreeSet::new(),
        })
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

    /// Appends `data` received from `node_id` (hashing and writing on a blocking thread).
    ///
    /// # Errors
    /// The local I/O error (disk full, ...).
    pub(crate) async fn append(&mut self, root: &Root, node_id: &str, data: Vec<u8>) -> io::Result<()> {
        if !self.contributors.contains(node_id) {
            self.contributors.insert(node_id.to_owned());
        }
        let tmp = match self.tmp.take() {
            Some(tmp) => tmp,
            None => {
                let root = root.clone();
                tokio::task::spawn_blocking(move || root.temp_file())
                    .await
                    .map_err(io::Error::other)??
            }
        };
        let mut hasher = std::mem::take(&mut self.hasher);
        let n = data.len() as u64;
        let (tmp, hasher, result) = tokio::task::spawn_blocking(move || {
            let mut tmp = tmp;
            hasher.update(&data);
            let result = tmp.write_all(&data);
            (tmp, hasher, result)
        })
        .await
        .map_err(io::Error::other)?;
        self.tmp = Some(tmp);
        self.hasher = hasher;
        result?;
        self.len += n;
        Ok(())
    }

    /// The digest of everything received (consumes the hasher state; call once, at the end).
    pub(crate) fn finish_digest(&mut self) -> Sha256Digest {
        std::mem::take(&mut self.hasher).finalize().into()
    }

    /// Makes the file durable and renames it to `dest` (creating parents). A zero-byte file
    /// that never received a chunk is created empty.
    ///
    /// # Errors
    /// [`CommitError`]; the temp file is gone either way.
    pub(crate) async fn commit(mut self, root: &Root, dest: &Path) -> Result<(), CommitError> {
        let tmp = match self.tmp.take() {
            Some(tmp) => tmp,
            None => root.temp_file().map_err(|source| CommitError::Io {
                path: root.tmp_dir(),
                source,
            })?,
        };
        let dest = dest.to_path_buf();
        tokio::task::spawn_blocking(move || tmp.commit(&dest))
            .await
            .map_err(|err| CommitError::Io {
                path: root.tmp_dir(),
                source: io::Error::other(err),
            })?
    }
}
