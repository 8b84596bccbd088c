//! Where manifests are read from and checkpoints and archives written to: a local directory or
//! a bucket prefix in S3 (Depot's archive, MinIO, AWS), GCS or Azure, through the
//! `object_store` crate. BR's URL forms are mapped onto its builders in [`br_url`].
//!
//! Keys are `/`-separated and relative to the storage's base (a directory, or a bucket prefix).
//!
//! Local writes do not go through `object_store`'s `LocalFileSystem`, which renames without
//! fsyncing: a checkpoint record, a lock or a collected file must survive a power cut once
//! reported, so they are written with `depot-fs`'s durable temp-file commit (fsync the file,
//! rename, fsync the directory). Reads and listings use `LocalFileSystem`.

mod br_url;
mod upload;

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use object_store::local::LocalFileSystem;
use object_store::path::Path as StorePath;
use object_store::{Attribute, Attributes, GetOptions, ObjectStore as _, ObjectStoreExt as _, PutMode, PutOptions};

pub use self::upload::Upload;
use crate::trust::ExtraCa;

/// The user metadata key holding an object's SHA-256 (hex), set by `collect`.
pub const SHA256_METADATA: &str = "depot-sha256";

/// Why a storage call failed. Each variant names the object or URL.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The URL cannot be used.
    #[error("invalid storage URL {url:?}: {reason}")]
    BadUrl {
        /// The URL given (secrets redacted).
        url: String,
        /// What is wrong.
        reason: String,
    },
    /// A key that would leave the storage's base (`..`, absolute, ...).
    #[error("invalid object key {key:?}: {reason}")]
    BadKey {
        /// The key.
        key: String,
        /// Which rule it breaks.
        reason: String,
    },
    /// No credentials for an S3 URL.
    #[error(
        "no S3 credentials for {url}: export AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (`depot serve` prints both lines)"
    )]
    NoCredentials {
        /// The URL.
        url: String,
    },
    /// The extra CA could not be used.
    #[error("{0}")]
    Trust(String),
    /// The object does not exist.
    #[error("{location} does not exist")]
    NotFound {
        /// The object.
        location: String,
    },
    /// A create-only write found the object there already.
    #[error("{location} already exists")]
    Exists {
        /// The object.
        location: String,
    },
    /// The store refused the credentials or the request.
    #[error(
        "access to {location} was refused: {message} (check AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY and the region)"
    )]
    Denied {
        /// The object.
        location: String,
        /// The store's explanation.
        message: String,
    },
    /// Any other failure reported by the store (unreachable, full, ...).
    #[error("{location}: {message}")]
    Failed {
        /// The object.
        location: String,
        /// What went wrong.
        message: String,
    },
    /// A local I/O error.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
}

/// One object, as [`Storage::list`] reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    /// Key relative to the storage's base.
    pub key: String,
    /// Size in bytes.
    pub size: u64,
}

/// What [`Storage::head`] knows of an object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    /// Size in bytes.
    pub size: u64,
    /// The SHA-256 recorded with it (user metadata [`SHA256_METADATA`]), if any.
    pub sha256: Option<String>,
}

/// Options that apply to every storage.
#[derive(Debug, Clone, Default)]
pub struct StoreOptions {
    /// CA certificates to trust for `https://` endpoints instead of the system roots
    /// (Depot's `bundle.pem` holds both).
    pub ca: Option<ExtraCa>,
}

#[derive(Clone)]
enum Kind {
    /// A local directory (absolute).
    Local(PathBuf),
    /// A cloud store; `display` is `scheme://bucket`.
    Remote { display: String },
}

/// A local directory or a bucket prefix. Cheap to clone.
#[derive(Clone)]
pub struct Storage {
    store: Arc<dyn object_store::ObjectStore>,
    /// The base inside `store` (for local storage: the absolute directory).
    base: String,
    kind: Kind,
}

impl fmt::Debug for Storage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Storage({})", self.describe(""))
    }
}

impl Storage {
    /// Opens what a URL or path names: `s3://BUCKET/PREFIX?...`, `gcs://`, `azure://`,
    /// `local:///DIR`, `file:///DIR` or a plain path. See [`br_url`] for BR's forms.
    ///
    /// # Errors
    /// [`StoreError::BadUrl`], [`StoreError::NoCredentials`], [`StoreError::Trust`].
    pub fn open(url: &str, options: &StoreOptions) -> Result<Self, StoreError> {
        match br_url::open(url, options.ca.as_ref())? {
            br_url::Target::Local(dir) => {
                let dir = std::path::absolute(&dir).map_err(|source| StoreError::Io { path: dir.clone(), source })?;
                let base = dir.to_str().ok_or_else(|| StoreError::BadUrl {
                    url: url.to_owned(),
                    reason: "the path is not UTF-8".into(),
                })?;
                Ok(Self {
                    store: Arc::new(LocalFileSystem::new()),
                    base: base.trim_matches('/').to_owned(),
                    kind: Kind::Local(dir),
                })
            }
            br_url::Target::Remote { store, display, prefix } => {
                Ok(Self { store, base: prefix, kind: Kind::Remote { display } })
            }
        }
    }

    /// The same storage with its base moved down into `sub` (a directory or key prefix).
    #[must_use]
    pub fn at(&self, sub: &str) -> Self {
        let sub = sub.trim_matches('/');
        if sub.is_empty() {
            return self.clone();
        }
        let mut out = self.clone();
        out.base = join_key(&self.base, sub);
        if let Kind::Local(dir) = &mut out.kind {
            *dir = dir.join(sub);
        }
        out
    }

    /// Where `key` is, for messages: a path or a `scheme://bucket/key` URL (no query).
    #[must_use]
    pub fn describe(&self, key: &str) -> String {
        match &self.kind {
            Kind::Local(dir) => dir.join(key).display().to_string(),
            Kind::Remote { display } => format!("{display}/{}", join_key(&self.base, key)),
        }
    }

    /// The directory, for local storage.
    #[must_use]
    pub fn local_dir(&self) -> Option<&Path> {
        match &self.kind {
            Kind::Local(dir) => Some(dir),
            Kind::Remote { .. } => None,
        }
    }

    fn path(&self, key: &str) -> Result<StorePath, StoreError> {
        depot_fs::validate(key)
            .map_err(|rule| StoreError::BadKey { key: key.to_owned(), reason: format!("it {rule}") })?;
        Ok(StorePath::from(join_key(&self.base, key)))
    }

    fn error(&self, key: &str, err: object_store::Error) -> StoreError {
        map_error(self.describe(key), err)
    }

    /// Reads a whole object. Meant for manifests and checkpoint records, which are small.
    ///
    /// # Errors
    /// [`StoreError::NotFound`] for a missing object; others per variant.
    pub async fn get(&self, key: &str) -> Result<Vec<u8>, StoreError> {
        let path = self.path(key)?;
        let result = self.store.get(&path).await.map_err(|err| self.error(key, err))?;
        Ok(result.bytes().await.map_err(|err| self.error(key, err))?.to_vec())
    }

    /// Streams an object from byte `offset` on.
    ///
    /// # Errors
    /// [`StoreError`]; the stream's items carry errors met while reading.
    pub async fn get_stream(
        &self,
        key: &str,
        offset: u64,
    ) -> Result<futures::stream::BoxStream<'static, Result<Bytes, StoreError>>, StoreError> {
        let path = self.path(key)?;
        let options = GetOptions { range: (offset > 0).then(|| (offset..).into()), ..GetOptions::default() };
        let result = self.store.get_opts(&path, options).await.map_err(|err| self.error(key, err))?;
        let location = self.describe(key);
        Ok(result.into_stream().map_err(move |err| map_error(location.clone(), err)).boxed())
    }

    /// The object's size and recorded SHA-256, or `None` when it does not exist.
    ///
    /// # Errors
    /// [`StoreError`].
    pub async fn head(&self, key: &str) -> Result<Option<Head>, StoreError> {
        let path = self.path(key)?;
        let options = GetOptions { head: true, ..GetOptions::default() };
        match self.store.get_opts(&path, options).await {
            Ok(result) => Ok(Some(Head {
                size: result.meta.size,
                sha256: result.attributes.get(&Attribute::Metadata(SHA256_METADATA.into())).map(|v| v.to_string()),
            })),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(err) => Err(self.error(key, err)),
        }
    }

    /// Writes a whole object, atomically (readers see the old or the new content) and, for
    /// local storage, durably.
    ///
    /// # Errors
    /// [`StoreError`].
    pub async fn put(&self, key: &str, data: Vec<u8>) -> Result<(), StoreError> {
        self.put_mode(key, data, false).await
    }

    /// Writes an object only if none exists under `key`: [`StoreError::Exists`] otherwise.
    /// On S3 this is `If-None-Match: *` (which `depot serve` honours); locally a hard link,
    /// which fails on an existing name.
    ///
    /// # Errors
    /// [`StoreError::Exists`]; [`StoreError`].
    pub async fn put_new(&self, key: &str, data: Vec<u8>) -> Result<(), StoreError> {
        self.put_mode(key, data, true).await
    }

    async fn put_mode(&self, key: &str, data: Vec<u8>, create: bool) -> Result<(), StoreError> {
        let path = self.path(key)?;
        match &self.kind {
            Kind::Local(dir) => {
                let (dir, key) = (dir.clone(), key.to_owned());
                let location = self.describe(&key);
                tokio::task::spawn_blocking(move || upload::write_local(&dir, &key, &data, create))
                    .await
                    .map_err(|err| StoreError::Failed { location, message: format!("write task failed: {err}") })?
            }
            Kind::Remote { .. } => {
                let mode = if create { PutMode::Create } else { PutMode::Overwrite };
                let options = PutOptions { mode, ..PutOptions::default() };
                self.store.put_opts(&path, data.into(), options).await.map_err(|err| self.error(key, err))?;
                Ok(())
            }
        }
    }

    /// Starts writing `key` in pieces. Nothing is visible under `key` until
    /// [`Upload::finish`]; dropping or [`Upload::abort`]ing leaves nothing behind. `sha256`
    /// (hex), when given, is stored with a remote object as user metadata, for [`Storage::head`].
    ///
    /// # Errors
    /// [`StoreError`].
    pub async fn upload(&self, key: &str, size: u64, sha256: Option<&str>) -> Result<Upload, StoreError> {
        let path = self.path(key)?;
        let location = self.describe(key);
        match &self.kind {
            Kind::Local(dir) => Upload::local(dir, key, location).await,
            Kind::Remote { .. } => {
                let mut attributes = Attributes::new();
                if let Some(sha256) = sha256 {
                    attributes.insert(Attribute::Metadata(SHA256_METADATA.into()), sha256.to_owned().into());
                }
                Upload::remote(self.store.clone(), path, size, attributes, location).await
            }
        }
    }

    /// Objects whose key starts with `prefix`, in key order. Depot's `.depot/` state directory
    /// at the base of local storage is not listed.
    ///
    /// # Errors
    /// [`StoreError`].
    pub async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, StoreError> {
        // object_store lists whole path segments: list the directory part, filter the rest.
        let dir = prefix.rfind('/').map_or("", |i| &prefix[..i]);
        let list_base = join_key(&self.base, dir);
        let base_len = if self.base.is_empty() { 0 } else { self.base.len() + 1 };
        let listing: Vec<_> = match &self.kind {
            Kind::Local(root) if !root.join(dir).is_dir() => Vec::new(),
            _ => self
                .store
                .list(Some(&StorePath::from(list_base)))
                .try_collect()
                .await
                .map_err(|err| self.error(prefix, err))?,
        };
        let local = matches!(self.kind, Kind::Local(_));
        let mut out: Vec<ObjectInfo> = listing
            .into_iter()
            .filter_map(|meta| {
                let key = meta.location.as_ref().get(base_len..)?.to_owned();
                let state = local && key.split('/').next() == Some(depot_fs::STATE_DIR);
                (key.starts_with(prefix) && !state).then_some(ObjectInfo { key, size: meta.size })
            })
            .collect();
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    /// Deletes an object; deleting a missing one succeeds (as in S3).
    ///
    /// # Errors
    /// [`StoreError`].
    pub async fn delete(&self, key: &str) -> Result<(), StoreError> {
        let path = self.path(key)?;
        if let Kind::Local(dir) = &self.kind {
            // Durably: a released lock or a removed record must not come back after a power cut.
            let file = dir.join(key);
            let removed = file.clone();
            return match tokio::task::spawn_blocking(move || depot_fs::remove_file_durably(&removed)).await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(source)) => Err(StoreError::Io { path: file, source }),
                Err(err) => Err(StoreError::Io { path: file, source: std::io::Error::other(err) }),
            };
        }
        match self.store.delete(&path).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(err) => Err(self.error(key, err)),
        }
    }

    /// Removes the empty directories local storage leaves after deletes (its base included),
    /// and the temp files a writer killed mid-write left in the base's `.depot/tmp/` (so call
    /// it only when no one writes here any more). Object stores have no directories: a no-op
    /// there.
    ///
    /// # Errors
    /// [`StoreError::Io`] other than "not empty" or "not found".
    pub fn remove_empty(&self) -> Result<(), StoreError> {
        match &self.kind {
            Kind::Local(dir) => {
                let tmp = dir.join(depot_fs::STATE_DIR).join("tmp");
                match std::fs::remove_dir_all(&tmp) {
                    Err(source) if source.kind() != std::io::ErrorKind::NotFound => {
                        return Err(StoreError::Io { path: tmp, source });
                    }
                    _ => {}
                }
                remove_empty_dirs(dir).map(|_| ()).map_err(|source| StoreError::Io { path: dir.clone(), source })
            }
            Kind::Remote { .. } => Ok(()),
        }
    }
}

/// Maps an `object_store` error to a [`StoreError`] naming `location`.
fn map_error(location: String, err: object_store::Error) -> StoreError {
    use object_store::Error as E;
    match err {
        E::NotFound { .. } => StoreError::NotFound { location },
        E::AlreadyExists { .. } | E::Precondition { .. } => StoreError::Exists { location },
        E::PermissionDenied { source, .. } | E::Unauthenticated { source, .. } => {
            StoreError::Denied { location, message: source.to_string() }
        }
        other => {
            let message = error_chain(&other);
            // object_store reports a 403 on PUT as a generic error: recognise it by its code.
            if message.contains("403")
                || message.contains("InvalidAccessKeyId")
                || message.contains("SignatureDoesNotMatch")
            {
                StoreError::Denied { location, message }
            } else {
                StoreError::Failed { location, message }
            }
        }
    }
}

/// The error and its sources, joined: object_store's top-level messages say little.
fn error_chain(err: &dyn std::error::Error) -> String {
    let mut out = err.to_string();
    let mut next = err.source();
    while let Some(source) = next {
        let text = source.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        next = source.source();
    }
    out
}

/// Removes `dir` and every directory under it that holds no files. Returns whether `dir` went.
fn remove_empty_dirs(dir: &Path) -> std::io::Result<bool> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(true),
        Err(err) => return Err(err),
    };
    let mut empty = true;
    for entry in entries {
        let entry = entry?;
        empty &= entry.file_type()?.is_dir() && remove_empty_dirs(&entry.path())?;
    }
    if !empty {
        return Ok(false);
    }
    match std::fs::remove_dir(dir) {
        Ok(()) => Ok(true),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(true),
        Err(err) if err.kind() == std::io::ErrorKind::DirectoryNotEmpty => Ok(false),
        Err(err) => Err(err),
    }
}

fn join_key(prefix: &str, key: &str) -> String {
    let prefix = prefix.trim_end_matches('/');
    let key = key.trim_start_matches('/');
    if prefix.is_empty() {
        key.to_owned()
    } else if key.is_empty() {
        prefix.to_owned()
    } else {
        format!("{prefix}/{key}")
    }
}

#[cfg(test)]
mod tests;
