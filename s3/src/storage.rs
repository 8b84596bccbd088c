//! What the S3 layer needs from where objects live.
//!
//! Reads (GET, HEAD, the source of a copy) and listings go through [`Storage`]; writes
//! (PUT, DELETE, multipart, tagging, buckets) go to the [`Archive`] the storage names as
//! writable. `depot serve`'s archive is both: its own [`Storage`]. An agent's view of a
//! backup reads from its local files, its cache and live peers, and writes into a local
//! archive of its own (see the agent's `view` module).
//!
//! A read hands the S3 layer an open local file: the view fetches a missing file completely
//! and verifies it before [`Storage::open`] returns, so the S3 code serves bytes from disk
//! the same way whoever the storage is.

use std::fmt::Debug;
use std::fs::File;
use std::path::PathBuf;

use crate::archive::Archive;
use crate::error::{Error, Result};
use crate::listing::{self, Page, Query};

/// An object opened for reading.
pub struct Opened {
    /// The file, open.
    pub file: File,
    /// Its metadata (size, mtime), taken from the open file.
    pub fs_meta: std::fs::Metadata,
    /// Where it is: its metadata record ([`crate::meta`]) is read from there.
    pub path: PathBuf,
    /// Held until the body is sent: a view's cache does not evict a file being read.
    pub pin: Option<Box<dyn Send + Sync>>,
}

impl Debug for Opened {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Opened").field("path", &self.path).field("pinned", &self.pin.is_some()).finish_non_exhaustive()
    }
}

/// Where the objects the S3 layer serves live.
#[async_trait::async_trait]
pub trait Storage: Send + Sync + Debug + 'static {
    /// Opens `key` of `bucket` for reading.
    ///
    /// # Errors
    /// [`Error::NoSuchBucket`], [`Error::NoSuchKey`], [`Error::UnsafeKey`], or what made the
    /// object unavailable.
    async fn open(&self, bucket: &str, key: &str) -> Result<Opened>;

    /// One page of the keys of `bucket`.
    ///
    /// # Errors
    /// [`Error::NoSuchBucket`], or I/O.
    async fn list(&self, bucket: &str, query: Query) -> Result<Page>;
}

#[async_trait::async_trait]
impl Storage for Archive {
    async fn open(&self, bucket: &str, key: &str) -> Result<Opened> {
        let path = self.bucket(bucket)?.path_of(key)?;
        let (file, fs_meta) = open_file(&path, key)?;
        Ok(Opened { file, fs_meta, path, pin: None })
    }

    async fn list(&self, bucket: &str, query: Query) -> Result<Page> {
        let bucket = self.bucket(bucket)?;
        tokio::task::spawn_blocking(move || listing::list(&bucket.root, &query))
            .await
            .map_err(|e| Error::io("<listing task>")(std::io::Error::other(e)))
    }
}

/// Opens the file of `key`; a missing file, or a directory (a prefix, not an object), is
/// `NoSuchKey`.
///
/// # Errors
/// [`Error::NoSuchKey`], or the I/O error.
pub fn open_file(path: &std::path::Path, key: &str) -> Result<(File, std::fs::Metadata)> {
    let missing = || Error::NoSuchKey { key: key.to_owned() };
    let file = match File::open(path) {
        Ok(file) => file,
        Err(e) if matches!(e.kind(), std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory) => {
            return Err(missing());
        }
        Err(e) => return Err(Error::io(path)(e)),
    };
    let fs_meta = file.metadata().map_err(Error::io(path))?;
    if !fs_meta.is_file() {
        return Err(missing());
    }
    Ok((file, fs_meta))
}
