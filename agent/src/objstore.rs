//! A small object-store client: a local directory or an S3-compatible bucket, behind the same
//! four calls (get, put, list, delete).
//!
//! `fetch` reads the backup manifest through it, and checkpoints (issue 4) will write through
//! it, so the same agent works with a backup on the node's disk, in `depot serve`'s archive, or
//! in a real S3 cluster (MinIO, Ceph RGW, AWS). S3 URLs are BR's: `s3://BUCKET/PREFIX?endpoint=
//! ...&force-path-style=true&region=...&provider=...`; credentials come from the environment
//! (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, optional `AWS_SESSION_TOKEN`) as for BR and
//! TiKV, so they never sit in a URL that ends up in a backupmeta or a log.
//!
//! Keys are `/`-separated and relative to the store's base (a directory, or a bucket prefix).

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_s3::error::{DisplayErrorContext, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use depot_fs::Root;

use crate::trust::ExtraCa;

/// Why an object-store call failed. Each variant names the object or URL.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The URL cannot be used.
    #[error("invalid storage URL {url:?}: {reason}")]
    BadUrl {
        /// The URL given.
        url: String,
        /// What is wrong.
        reason: String,
    },
    /// A key that would leave the store's base (`..`, absolute, ...).
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
    /// The store cannot be reached or timed out; worth retrying.
    #[error("cannot reach {location}: {message}")]
    Unreachable {
        /// The object.
        location: String,
        /// What went wrong.
        message: String,
    },
    /// Any other failure reported by the store.
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

impl StoreError {
    /// Whether trying again later may succeed.
    #[must_use]
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Unreachable { .. })
    }
}

/// One object, as [`ObjectStore::list`] reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    /// Key relative to the store's base.
    pub key: String,
    /// Size in bytes.
    pub size: u64,
}

/// Options that apply to every store.
#[derive(Debug, Clone, Default)]
pub struct StoreOptions {
    /// Extra CA to trust for `https://` endpoints (Depot's generated CA).
    pub ca: Option<ExtraCa>,
}

/// A local directory or an S3 bucket prefix. Cheap to clone.
#[derive(Clone)]
pub enum ObjectStore {
    /// Files under a directory.
    Local(LocalStore),
    /// Objects under a bucket prefix.
    S3(S3Store),
}

impl fmt::Debug for ObjectStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Local(s) => write!(f, "ObjectStore({})", s.base.display()),
            Self::S3(s) => write!(f, "ObjectStore(s3://{}/{})", s.bucket, s.prefix),
        }
    }
}

impl ObjectStore {
    /// Opens the store a URL or path names: `s3://BUCKET/PREFIX?...`, `local:///DIR`,
    /// `file:///DIR` or a plain path. The URL's path part becomes the store's base.
    ///
    /// # Errors
    /// [`StoreError::BadUrl`], [`StoreError::NoCredentials`], [`StoreError::Trust`].
    pub fn open(url: &str, options: &StoreOptions) -> Result<Self, StoreError> {
        if let Some(rest) = url.strip_prefix("s3://") {
            return S3Store::open(url, rest, options).map(Self::S3);
        }
        let path = url.strip_prefix("local://").or_else(|| url.strip_prefix("file://")).unwrap_or(url);
        if let Some((scheme, _)) = url.split_once("://")
            && !matches!(scheme, "local" | "file")
        {
            return Err(StoreError::BadUrl {
                url: url.to_owned(),
                reason: format!("unsupported scheme {scheme}://; use s3://, local:// or a path"),
            });
        }
        if path.is_empty() {
            return Err(StoreError::BadUrl { url: url.to_owned(), reason: "no path".into() });
        }
        Ok(Self::Local(LocalStore::new(path)))
    }

    /// The same store with its base moved down into `sub` (a directory or key prefix).
    #[must_use]
    pub fn at(&self, sub: &str) -> Self {
        let sub = sub.trim_matches('/');
        if sub.is_empty() {
            return self.clone();
        }
        match self {
            Self::Local(s) => Self::Local(LocalStore::new(s.base.join(sub))),
            Self::S3(s) => {
                let mut s = s.clone();
                s.prefix = join_key(&s.prefix, sub);
                Self::S3(s)
            }
        }
    }

    /// Where `key` is, for messages: a path or an `s3://` URL (without query parameters).
    #[must_use]
    pub fn describe(&self, key: &str) -> String {
        match self {
            Self::Local(s) => s.base.join(key).display().to_string(),
            Self::S3(s) => format!("s3://{}/{}", s.bucket, join_key(&s.prefix, key)),
        }
    }

    /// Whether this is a local directory (then it can be examined with the file system).
    #[must_use]
    pub fn local_dir(&self) -> Option<&Path> {
        match self {
            Self::Local(s) => Some(&s.base),
            Self::S3(_) => None,
        }
    }

    /// Reads a whole object. Meant for manifests and checkpoint records, which are small.
    ///
    /// # Errors
    /// [`StoreError::NotFound`] for a missing object; others per variant.
    pub async fn get(&self, key: &str) -> Result<Vec<u8>, StoreError> {
        match self {
            Self::Local(s) => s.get(key).await,
            Self::S3(s) => s.get(key).await,
        }
    }

    /// Writes a whole object, atomically (readers see the old or the new content).
    ///
    /// # Errors
    /// [`StoreError`].
    pub async fn put(&self, key: &str, data: Vec<u8>) -> Result<(), StoreError> {
        match self {
            Self::Local(s) => s.put(key, data).await,
            Self::S3(s) => s.put(key, data).await,
        }
    }

    /// Objects whose key starts with `prefix`, in key order.
    ///
    /// # Errors
    /// [`StoreError`].
    pub async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, StoreError> {
        match self {
            Self::Local(s) => s.list(prefix).await,
            Self::S3(s) => s.list(prefix).await,
        }
    }

    /// Removes the empty directories a local store leaves after deletes (its base included,
    /// and the temp directory its writes use). S3 has no directories: a no-op there.
    ///
    /// # Errors
    /// [`StoreError::Io`] other than "not empty" or "not found".
    pub fn remove_empty(&self) -> Result<(), StoreError> {
        match self {
            Self::Local(s) => {
                remove_empty_dirs(&s.base).map(|_| ()).map_err(|source| StoreError::Io { path: s.base.clone(), source })
            }
            Self::S3(_) => Ok(()),
        }
    }

    /// Deletes an object; deleting a missing one succeeds (as in S3).
    ///
    /// # Errors
    /// [`StoreError`].
    pub async fn delete(&self, key: &str) -> Result<(), StoreError> {
        match self {
            Self::Local(s) => s.delete(key).await,
            Self::S3(s) => s.delete(key).await,
        }
    }
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
    if prefix.is_empty() { key.to_owned() } else { format!("{prefix}/{key}") }
}

fn check_key(key: &str) -> Result<(), StoreError> {
    depot_fs::validate(key).map_err(|rule| StoreError::BadKey { key: key.to_owned(), reason: format!("it {rule}") })
}

/// Files under a local directory.
#[derive(Debug, Clone)]
pub struct LocalStore {
    base: PathBuf,
}

impl LocalStore {
    /// A store of the files under `base` (which need not exist yet).
    pub fn new(base: impl Into<PathBuf>) -> Self {
        Self { base: base.into() }
    }

    async fn get(&self, key: &str) -> Result<Vec<u8>, StoreError> {
        check_key(key)?;
        let path = self.base.join(key);
        match tokio::fs::read(&path).await {
            Ok(data) => Ok(data),
            Err(err) if matches!(err.kind(), std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory) => {
                Err(StoreError::NotFound { location: path.display().to_string() })
            }
            Err(source) => Err(StoreError::Io { path, source }),
        }
    }

    async fn put(&self, key: &str, data: Vec<u8>) -> Result<(), StoreError> {
        check_key(key)?;
        let base = self.base.clone();
        let key = key.to_owned();
        tokio::task::spawn_blocking(move || {
            let io = |path: &Path| {
                let path = path.to_path_buf();
                move |source| StoreError::Io { path, source }
            };
            depot_fs::create_dir_all_durably(&base).map_err(io(&base))?;
            let root = Root::open(&base)
                .map_err(|err| StoreError::Failed { location: base.display().to_string(), message: err.to_string() })?;
            let dest =
                root.resolve(&key).map_err(|err| StoreError::BadKey { key: key.clone(), reason: err.to_string() })?;
            let mut tmp = root.temp_file().map_err(io(&root.tmp_dir()))?;
            std::io::Write::write_all(&mut tmp, &data).map_err(io(tmp.path()))?;
            tmp.commit(&dest)
                .map_err(|err| StoreError::Failed { location: dest.display().to_string(), message: err.to_string() })
        })
        .await
        .map_err(|err| StoreError::Failed {
            location: self.base.display().to_string(),
            message: format!("write task failed: {err}"),
        })?
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, StoreError> {
        let base = self.base.clone();
        let prefix = prefix.to_owned();
        tokio::task::spawn_blocking(move || {
            let mut out = Vec::new();
            walk(&base, "", &prefix, &mut out)?;
            out.sort_by(|a, b| a.key.cmp(&b.key));
            Ok(out)
        })
        .await
        .map_err(|err| StoreError::Failed {
            location: self.base.display().to_string(),
            message: format!("list task failed: {err}"),
        })?
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        check_key(key)?;
        let path = self.base.join(key);
        // Durably: a released lock or a removed record must not come back after a power cut.
        let removed = path.clone();
        match tokio::task::spawn_blocking(move || depot_fs::remove_file_durably(&removed)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(source)) => Err(StoreError::Io { path, source }),
            Err(err) => Err(StoreError::Io { path, source: std::io::Error::other(err) }),
        }
    }
}

/// Collects regular files under `dir` (named `rel` relative to the base) whose key starts with
/// `prefix`, skipping Depot's `.depot/` and directories that cannot hold a match.
fn walk(dir: &Path, rel: &str, prefix: &str, out: &mut Vec<ObjectInfo>) -> Result<(), StoreError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound && rel.is_empty() => return Ok(()),
        Err(source) => {
            return Err(StoreError::Io { path: dir.to_path_buf(), source });
        }
    };
    for entry in entries {
        let entry = entry.map_err(|source| StoreError::Io { path: dir.to_path_buf(), source })?;
        let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
            continue;
        };
        if rel.is_empty() && name == depot_fs::STATE_DIR {
            continue;
        }
        let key = if rel.is_empty() { name } else { format!("{rel}/{name}") };
        let meta = std::fs::metadata(entry.path()).map_err(|source| StoreError::Io { path: entry.path(), source })?;
        if meta.is_dir() {
            let as_dir = format!("{key}/");
            if as_dir.starts_with(prefix) || prefix.starts_with(&as_dir) {
                walk(&entry.path(), &key, prefix, out)?;
            }
        } else if meta.is_file() && key.starts_with(prefix) {
            out.push(ObjectInfo { key, size: meta.len() });
        }
    }
    Ok(())
}

/// Objects under an S3 bucket prefix.
#[derive(Clone)]
pub struct S3Store {
    client: aws_sdk_s3::Client,
    bucket: String,
    prefix: String,
}

/// The parts of a BR-style `s3://` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct S3Url {
    pub bucket: String,
    pub prefix: String,
    pub endpoint: Option<String>,
    pub region: String,
    pub force_path_style: bool,
    pub access_key: Option<String>,
    pub secret_key: Option<String>,
}

impl S3Url {
    /// Parses `BUCKET/PREFIX?k=v&...` (the part after `s3://`).
    pub(crate) fn parse(url: &str, rest: &str) -> Result<Self, StoreError> {
        let bad = |reason: &str| StoreError::BadUrl { url: redact(url), reason: reason.to_owned() };
        let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
        let (bucket, prefix) = path.split_once('/').unwrap_or((path, ""));
        if bucket.is_empty() {
            return Err(bad("no bucket (expected s3://BUCKET/PREFIX)"));
        }
        let mut parsed = Self {
            bucket: bucket.to_owned(),
            prefix: prefix.trim_matches('/').to_owned(),
            endpoint: None,
            region: "us-east-1".to_owned(),
            force_path_style: true,
            access_key: None,
            secret_key: None,
        };
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let v = percent_decode(v).ok_or_else(|| bad("bad %-escape in a query parameter"))?;
            match k.replace('_', "-").as_str() {
                "endpoint" => parsed.endpoint = Some(v).filter(|v| !v.is_empty()),
                "region" if !v.is_empty() => parsed.region = v,
                "force-path-style" => {
                    parsed.force_path_style = match v.as_str() {
                        "" | "true" | "1" => true,
                        "false" | "0" => false,
                        _ => return Err(bad("force-path-style must be true or false")),
                    }
                }
                "access-key" => parsed.access_key = Some(v),
                "secret-access-key" => parsed.secret_key = Some(v),
                // BR's other options (provider, storage-class, sse, acl, ...) change nothing
                // for reading and writing small objects.
                _ => {}
            }
        }
        if let Some(endpoint) = &parsed.endpoint
            && !(endpoint.starts_with("http://") || endpoint.starts_with("https://"))
        {
            return Err(bad("endpoint must start with http:// or https://"));
        }
        Ok(parsed)
    }
}

/// The URL with any secret query parameter blanked, for error messages.
fn redact(url: &str) -> String {
    let Some((head, query)) = url.split_once('?') else {
        return url.to_owned();
    };
    let query: Vec<String> = query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((k, _)) if k.contains("secret") || k.contains("token") => format!("{k}=<redacted>"),
            _ => pair.to_owned(),
        })
        .collect();
    format!("{head}?{}", query.join("&"))
}

fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = s.get(i + 1..i + 3)?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// Builds the HTTP client: rustls with ring, trusting `ca` instead of the system roots when it
/// is given (as `SSL_CERT_FILE` replaces the default bundle for curl and TiKV).
fn http_client(ca: Option<&ExtraCa>) -> Result<aws_sdk_s3::config::SharedHttpClient, StoreError> {
    use aws_smithy_http_client::tls::{self, TlsContext, TrustStore};
    let trust = match ca {
        Some(ca) => {
            // The SDK panics on a PEM it cannot load, so check each certificate first.
            let mut checked = Vec::new();
            let mut roots = rustls::RootCertStore::empty();
            for der in
                <rustls::pki_types::CertificateDer<'_> as rustls::pki_types::pem::PemObject>::pem_slice_iter(&ca.pem)
            {
                let der = der.map_err(|err| StoreError::Trust(format!("{}: {err}", ca.source.display())))?;
                roots.add(der.clone()).map_err(|err| StoreError::Trust(format!("{}: {err}", ca.source.display())))?;
                checked.push(der);
            }
            if checked.is_empty() {
                return Err(StoreError::Trust(format!("{} holds no PEM certificate", ca.source.display())));
            }
            TrustStore::empty().with_pem_certificate(ca.pem.clone())
        }
        None => TrustStore::default(),
    };
    let context =
        TlsContext::builder().with_trust_store(trust).build().map_err(|err| StoreError::Trust(err.to_string()))?;
    Ok(aws_smithy_http_client::Builder::new()
        .tls_provider(tls::Provider::Rustls(tls::rustls_provider::CryptoMode::Ring))
        .tls_context(context)
        .build_https())
}

impl S3Store {
    fn open(url: &str, rest: &str, options: &StoreOptions) -> Result<Self, StoreError> {
        let parsed = S3Url::parse(url, rest)?;
        let env = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let (access, secret) = match (env("AWS_ACCESS_KEY_ID"), env("AWS_SECRET_ACCESS_KEY")) {
            (Some(a), Some(s)) => (a, s),
            _ => match (parsed.access_key.clone(), parsed.secret_key.clone()) {
                (Some(a), Some(s)) => (a, s),
                _ => return Err(StoreError::NoCredentials { url: redact(url) }),
            },
        };
        let credentials = Credentials::new(access, secret, env("AWS_SESSION_TOKEN"), None, "depot-agent");
        let timeouts = aws_sdk_s3::config::timeout::TimeoutConfig::builder()
            .connect_timeout(Duration::from_secs(5))
            .operation_attempt_timeout(Duration::from_secs(60))
            .build();
        let mut config = aws_sdk_s3::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new(parsed.region.clone()))
            .credentials_provider(credentials)
            .force_path_style(parsed.force_path_style)
            .timeout_config(timeouts)
            .http_client(http_client(options.ca.as_ref())?);
        if let Some(endpoint) = &parsed.endpoint {
            config = config.endpoint_url(endpoint.clone());
        }
        Ok(Self { client: aws_sdk_s3::Client::from_conf(config.build()), bucket: parsed.bucket, prefix: parsed.prefix })
    }

    fn key(&self, key: &str) -> Result<String, StoreError> {
        check_key(key)?;
        Ok(join_key(&self.prefix, key))
    }

    fn location(&self, key: &str) -> String {
        format!("s3://{}/{}", self.bucket, join_key(&self.prefix, key))
    }

    /// Maps an SDK error to a [`StoreError`] naming `key`.
    fn error<E, R>(&self, key: &str, err: SdkError<E, R>) -> StoreError
    where
        E: std::error::Error + aws_sdk_s3::error::ProvideErrorMetadata + Send + Sync + 'static,
        R: fmt::Debug + Send + Sync + 'static,
        SdkError<E, R>: HasStatus,
    {
        let location = self.location(key);
        let status = err.http_status();
        let code = aws_sdk_s3::error::ProvideErrorMetadata::code(&err).map(str::to_owned);
        let message = DisplayErrorContext(&err).to_string();
        match (&err, status, code.as_deref()) {
            (_, _, Some("NoSuchKey" | "NotFound")) | (_, Some(404), _) => {
                if code.as_deref() == Some("NoSuchBucket") {
                    StoreError::Failed { location, message }
                } else {
                    StoreError::NotFound { location }
                }
            }
            (_, Some(401 | 403), _) => StoreError::Denied { location, message },
            (SdkError::DispatchFailure(_) | SdkError::TimeoutError(_), _, _) | (_, Some(500..=599), _) => {
                StoreError::Unreachable { location, message }
            }
            _ => StoreError::Failed { location, message },
        }
    }

    async fn get(&self, key: &str) -> Result<Vec<u8>, StoreError> {
        let full = self.key(key)?;
        let object = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(&full)
            .send()
            .await
            .map_err(|err| self.error(key, err))?;
        let body = object
            .body
            .collect()
            .await
            .map_err(|err| StoreError::Unreachable { location: self.location(key), message: err.to_string() })?;
        Ok(body.into_bytes().to_vec())
    }

    async fn put(&self, key: &str, data: Vec<u8>) -> Result<(), StoreError> {
        let full = self.key(key)?;
        self.client
            .put_object()
            .bucket(&self.bucket)
            .key(&full)
            .body(ByteStream::from(data))
            .send()
            .await
            .map_err(|err| self.error(key, err))?;
        Ok(())
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, StoreError> {
        let base = if self.prefix.is_empty() { String::new() } else { format!("{}/", self.prefix) };
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let page = self
                .client
                .list_objects_v2()
                .bucket(&self.bucket)
                .prefix(format!("{base}{prefix}"))
                .set_continuation_token(token.take())
                .send()
                .await
                .map_err(|err| self.error(prefix, err))?;
            for object in page.contents() {
                if let Some(key) = object.key().and_then(|k| k.strip_prefix(&base)) {
                    out.push(ObjectInfo {
                        key: key.to_owned(),
                        size: object.size().and_then(|s| u64::try_from(s).ok()).unwrap_or(0),
                    });
                }
            }
            match page.next_continuation_token() {
                Some(next) if page.is_truncated() == Some(true) => token = Some(next.to_owned()),
                _ => break,
            }
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        let full = self.key(key)?;
        self.client.delete_object().bucket(&self.bucket).key(&full).send().await.map_err(|err| self.error(key, err))?;
        Ok(())
    }
}

/// The HTTP status of an SDK error, when the service answered.
trait HasStatus {
    fn http_status(&self) -> Option<u16>;
}

impl<E> HasStatus for SdkError<E, aws_sdk_s3::config::http::HttpResponse> {
    fn http_status(&self) -> Option<u16> {
        self.raw_response().map(|r| r.status().as_u16())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_br_s3_urls() {
        let url = "s3://depot-abc/backups/full?endpoint=http%3A%2F%2F127.0.0.1%3A9000&force-path-style=true&region=eu-1&provider=minio";
        let parsed = S3Url::parse(url, url.strip_prefix("s3://").unwrap()).unwrap();
        assert_eq!(parsed.bucket, "depot-abc");
        assert_eq!(parsed.prefix, "backups/full");
        assert_eq!(parsed.endpoint.as_deref(), Some("http://127.0.0.1:9000"));
        assert_eq!(parsed.region, "eu-1");
        assert!(parsed.force_path_style);

        let plain = "s3://b/?endpoint=https://h:1&force_path_style=false";
        let parsed = S3Url::parse(plain, plain.strip_prefix("s3://").unwrap()).unwrap();
        assert_eq!(parsed.prefix, "");
        assert!(!parsed.force_path_style);

        for (bad, needle) in [
            ("s3:///x", "no bucket"),
            ("s3://b/x?endpoint=ftp://h", "http:// or https://"),
            ("s3://b/x?force-path-style=maybe", "true or false"),
        ] {
            let err = S3Url::parse(bad, bad.strip_prefix("s3://").unwrap()).unwrap_err();
            assert!(err.to_string().contains(needle), "{bad}: {err}");
        }
        assert_eq!(
            redact("s3://b/p?secret-access-key=hunter2&region=r"),
            "s3://b/p?secret-access-key=<redacted>&region=r"
        );
    }

    #[tokio::test]
    async fn local_store_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let store = ObjectStore::open(&format!("local://{}", dir.path().display()), &StoreOptions::default()).unwrap();
        store.put("a/b.cpt", b"one".to_vec()).await.unwrap();
        store.put("a/c.cpt", b"two".to_vec()).await.unwrap();
        store.put("z", b"three".to_vec()).await.unwrap();
        assert_eq!(store.get("a/b.cpt").await.unwrap(), b"one");
        let listed = store.list("a/").await.unwrap();
        assert_eq!(listed.iter().map(|o| o.key.as_str()).collect::<Vec<_>>(), ["a/b.cpt", "a/c.cpt"]);
        assert_eq!(store.list("").await.unwrap().len(), 3, "the .depot/ state dir is not listed");
        store.delete("a/b.cpt").await.unwrap();
        store.delete("a/b.cpt").await.unwrap();
        assert!(matches!(store.get("a/b.cpt").await, Err(StoreError::NotFound { .. })));
        assert!(matches!(store.get("../etc/passwd").await, Err(StoreError::BadKey { .. })));
        assert!(store.at("a").get("c.cpt").await.is_ok());
    }

    #[test]
    fn s3_without_credentials_says_what_to_export() {
        // Only meaningful when the test environment has no AWS credentials.
        if std::env::var_os("AWS_ACCESS_KEY_ID").is_some() {
            return;
        }
        let err = ObjectStore::open("s3://b/p?endpoint=http://127.0.0.1:1", &StoreOptions::default()).unwrap_err();
        assert!(err.to_string().contains("AWS_ACCESS_KEY_ID"), "{err}");
    }
}
