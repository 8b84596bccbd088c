//! The archive directory as S3 buckets: which directory a bucket is, and the key → file map.
//!
//! Single-bucket mode (the default): the archive directory is the one bucket, so a backup
//! written through S3 is an ordinary directory tree and an existing directory is served as it
//! is. `--multi-bucket` mode: each top-level directory is a bucket. Either way Depot's own
//! state lives in `<archive>/.depot/`, out of reach of any key.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use depot_fs::{Root, TempFile};

use crate::error::{Error, Result};

/// How buckets map onto the archive directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Layout {
    /// The archive is the bucket with this name.
    Single(String),
    /// Every top-level directory is a bucket.
    Multi,
}

/// The served directory.
#[derive(Debug)]
pub struct Archive {
    /// The archive directory; owns `.depot/` (temp files, multipart uploads, TLS).
    root: Root,
    layout: Layout,
}

/// One bucket: a name and the directory its keys live under.
#[derive(Debug, Clone)]
pub struct Bucket {
    /// The bucket name.
    pub name: String,
    /// Where its keys live; symlinks out of it are refused.
    pub root: Root,
}

impl Archive {
    /// Serves `root` with the given layout.
    pub fn new(root: Root, layout: Layout) -> Self {
        Self { root, layout }
    }

    /// The archive directory.
    pub fn root(&self) -> &Root {
        &self.root
    }

    /// How buckets map onto the archive.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// Where multipart uploads keep their parts until completed.
    pub fn uploads_dir(&self) -> PathBuf {
        self.root.state_dir().join("uploads")
    }

    /// A new temp file for a write; see [`depot_fs::durable`].
    ///
    /// # Errors
    /// The I/O error creating it.
    pub fn temp_file(&self) -> Result<TempFile> {
        self.root.temp_file().map_err(Error::io(self.root.tmp_dir()))
    }

    /// The bucket called `name`, or `NoSuchBucket`.
    ///
    /// # Errors
    /// [`Error::NoSuchBucket`].
    pub fn bucket(&self, name: &str) -> Result<Bucket> {
        match &self.layout {
            Layout::Single(bucket) if bucket == name => Ok(Bucket { name: name.to_owned(), root: self.root.clone() }),
            Layout::Single(bucket) => Err(Error::NoSuchBucket {
                bucket: name.to_owned(),
                hint: format!("; this server has one bucket, {bucket:?}"),
            }),
            Layout::Multi => {
                let missing = || Error::NoSuchBucket { bucket: name.to_owned(), hint: String::new() };
                if !is_valid_bucket_name(name) {
                    return Err(missing());
                }
                let dir = self.root.dir().join(name);
                if !dir.symlink_metadata().is_ok_and(|m| m.is_dir()) {
                    return Err(missing());
                }
                let root = Root::open(&dir).map_err(|_| missing())?;
                Ok(Bucket { name: name.to_owned(), root })
            }
        }
    }

    /// Every bucket with its creation time (the directory's mtime), sorted by name.
    ///
    /// # Errors
    /// The I/O error reading the archive directory.
    pub fn buckets(&self) -> Result<Vec<(String, SystemTime)>> {
        let mtime = |path: &Path| path.metadata().and_then(|m| m.modified()).unwrap_or(SystemTime::UNIX_EPOCH);
        match &self.layout {
            Layout::Single(bucket) => Ok(vec![(bucket.clone(), mtime(self.root.dir()))]),
            Layout::Multi => {
                let dir = self.root.dir();
                let mut buckets = Vec::new();
                for entry in std::fs::read_dir(dir).map_err(Error::io(dir))? {
                    let entry = entry.map_err(Error::io(dir))?;
                    let is_dir = entry.file_type().is_ok_and(|t| t.is_dir());
                    if let (true, Some(name)) = (is_dir, entry.file_name().to_str())
                        && is_valid_bucket_name(name)
                    {
                        buckets.push((name.to_owned(), mtime(&entry.path())));
                    }
                }
                buckets.sort();
                Ok(buckets)
            }
        }
    }

    /// Creates a bucket (multi-bucket mode only).
    ///
    /// # Errors
    /// [`Error::SingleBucket`], [`Error::BucketAlreadyOwnedByYou`], an invalid name, or I/O.
    pub fn create_bucket(&self, name: &str) -> Result<()> {
        match &self.layout {
            Layout::Single(bucket) if bucket == name => Err(Error::BucketAlreadyOwnedByYou { bucket: name.to_owned() }),
            Layout::Single(bucket) => Err(Error::SingleBucket(format!(
                "this server serves one bucket ({bucket:?}); start it with --multi-bucket to create buckets"
            ))),
            Layout::Multi => {
                if !is_valid_bucket_name(name) {
                    return Err(Error::InvalidRequest(format!(
                        "{name:?} is not a valid bucket name (3-63 characters: lowercase letters, digits, '-' and '.')"
                    )));
                }
                let dir = self.root.dir().join(name);
                match std::fs::create_dir(&dir) {
                    Ok(()) => depot_fs::sync_dir(self.root.dir()).map_err(Error::io(self.root.dir())),
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                        Err(Error::BucketAlreadyOwnedByYou { bucket: name.to_owned() })
                    }
                    Err(e) => Err(Error::io(dir)(e)),
                }
            }
        }
    }

    /// Deletes an empty bucket (multi-bucket mode only). Empty directories left inside do not
    /// count as content.
    ///
    /// # Errors
    /// [`Error::SingleBucket`], [`Error::NoSuchBucket`], [`Error::BucketNotEmpty`], or I/O.
    pub fn delete_bucket(&self, name: &str) -> Result<()> {
        if let Layout::Single(_) = self.layout {
            self.bucket(name)?;
            return Err(Error::SingleBucket(
                "this server serves the archive directory as its one bucket; it cannot be deleted".into(),
            ));
        }
        let bucket = self.bucket(name)?;
        if has_files(bucket.root.dir()) {
            return Err(Error::BucketNotEmpty { bucket: name.to_owned() });
        }
        depot_fs::remove_dir_durably(bucket.root.dir()).map_err(Error::io(bucket.root.dir()))
    }
}

impl Bucket {
    /// The file a key names, after the safety rules of [`Root::resolve`]; a key ending in
    /// `/` names its directory's marker file ([`crate::marker`]).
    ///
    /// # Errors
    /// [`Error::UnsafeKey`].
    pub fn path_of(&self, key: &str) -> Result<PathBuf> {
        match crate::marker::dir_key(key) {
            Some(dir) => Ok(crate::marker::file_in(&self.root.resolve(dir).map_err(|mut e| {
                e.name = key.to_owned();
                e
            })?)),
            None => Ok(self.root.resolve(key)?),
        }
    }
}

/// Whether `dir` holds at least one file anywhere below it (stops at the first).
pub fn has_files(dir: &Path) -> bool {
    walkdir::WalkDir::new(dir).min_depth(1).into_iter().filter_map(Result::ok).any(|e| !e.file_type().is_dir())
}

/// S3's bucket naming rules (the subset that matters for a path-style URL).
pub fn is_valid_bucket_name(name: &str) -> bool {
    (3..=63).contains(&name.len())
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name.as_bytes()[name.len() - 1].is_ascii_alphanumeric()
        && !name.contains("..")
}
