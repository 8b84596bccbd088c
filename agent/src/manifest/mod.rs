//! Backup manifests: which data files a backup consists of, with their sizes and digests.
//!
//! Two formats are read:
//! - BR's `backupmeta` (protobuf, kvproto field numbers): v1 lists data files inline in
//!   `files`; v2 keeps them in `backupmeta.datafile.NNNNNNNNN` objects named by `file_index`
//!   (possibly through further `meta_files` levels), read from beside the backupmeta and checked
//!   against the sha256 the index records. An encrypted backupmeta (BR `--crypter.method`) is
//!   decrypted when the key is given, and otherwise refused with an error saying so.
//! - A plain manifest for non-TiKV users: JSON lines `{"name": .., "size": .., "sha256": "hex"}`.
//!
//! Only data files come out; names are validated (a manifest cannot send a fetch outside its
//! root) and de-duplicated.

pub mod crypter;
pub mod wire;

use std::collections::HashMap;
use std::collections::hash_map::Entry;

use depot_proto::brpb;
use prost::Message;
use sha2::{Digest, Sha256};

use crate::digest::Sha256Digest;
use crate::storage::{Storage, StoreError};
pub use crypter::CrypterKey;
use wire::Shape;

/// The file name BR gives the manifest at the root of a backup.
pub const BACKUPMETA: &str = "backupmeta";

/// Deepest `meta_files` nesting followed (BR writes one level; a loop in a damaged index must
/// not recurse forever).
const MAX_INDEX_DEPTH: usize = 8;

/// One data file of a backup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileEntry {
    /// Path relative to the backup's root.
    pub name: String,
    /// Size in bytes.
    pub size: u64,
    /// Digest of the content; `None` only when the manifest records none (then only the size
    /// can be checked).
    pub sha256: Option<Sha256Digest>,
}

/// Which format a manifest was in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Format {
    /// BR backupmeta with inline `files`.
    BrV1,
    /// BR backupmeta with a `file_index`.
    BrV2,
    /// JSON lines.
    JsonLines,
}

/// A parsed manifest.
#[derive(Debug, Clone)]
pub struct Manifest {
    /// Where it was read from (path or URL), for messages.
    pub source: String,
    /// Its format.
    pub format: Format,
    /// The data files, de-duplicated, in manifest order.
    pub files: Vec<FileEntry>,
    /// The backup's end version (BR's backup ts), when recorded.
    pub end_version: Option<u64>,
    /// SHA-256 of the top-level manifest bytes as stored: a job identity for checkpoints.
    pub digest: Sha256Digest,
}

impl Manifest {
    /// Total size of all files.
    #[must_use]
    pub fn total_bytes(&self) -> u64 {
        self.files.iter().map(|f| f.size).sum()
    }
}

/// Why a manifest cannot be used. Every variant names the file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ManifestError {
    /// The manifest (or an index object) cannot be read.
    #[error("cannot read the backup manifest: {0}")]
    Read(#[from] StoreError),
    /// Neither a backupmeta nor a JSON-lines manifest at the location.
    #[error("no backup manifest at {location}: expected a BR `backupmeta` there (or name a JSON-lines manifest file)")]
    NotFound {
        /// Where it was looked for.
        location: String,
    },
    /// The file is empty.
    #[error("{file} is empty; it is not a backup manifest")]
    Empty {
        /// The manifest.
        file: String,
    },
    /// Cut off in the middle of a field.
    #[error("{file} is truncated: the field at byte {at} runs past its end ({len} bytes); copy the backupmeta again")]
    Truncated {
        /// The manifest.
        file: String,
        /// Offset of the field that is cut off.
        at: usize,
        /// The file's length.
        len: usize,
    },
    /// Not plaintext protobuf: encrypted, or not a backupmeta.
    #[error(
        "{file} is not a readable BR backupmeta ({what} at byte {at}). If the backup was taken with BR's --crypter.method, the backupmeta is encrypted: pass the same key with --crypter-key (hex) or --crypter-key-file. Otherwise the file is not a backupmeta"
    )]
    NotPlaintext {
        /// The manifest.
        file: String,
        /// Offset of the first byte that does not fit.
        at: usize,
        /// What does not fit.
        what: String,
    },
    /// The index records a cipher IV: the backup is encrypted and no key was given.
    #[error(
        "{file} belongs to an encrypted backup (BR --crypter.method): pass the key with --crypter-key (hex) or --crypter-key-file"
    )]
    Encrypted {
        /// The manifest.
        file: String,
    },
    /// Decryption with the given key yields no backupmeta.
    #[error(
        "{file} does not decrypt to a backupmeta with the given key: is it the key the backup was taken with (--crypter.key)?"
    )]
    WrongKey {
        /// The manifest.
        file: String,
    },
    /// protobuf decoding failed.
    #[error("{file} is malformed: {source}")]
    Decode {
        /// The manifest or index object.
        file: String,
        /// The decoder's complaint.
        source: prost::DecodeError,
    },
    /// An index object's content does not match the digest its index entry records.
    #[error("{file} is damaged: its sha256 is {actual}, but the backupmeta records {expected}")]
    IndexChecksum {
        /// The index object.
        file: String,
        /// Recorded digest (hex).
        expected: String,
        /// Actual digest (hex).
        actual: String,
    },
    /// The index nests deeper than eight levels (a loop, or a damaged index).
    #[error("{file}: the meta file index nests deeper than {MAX_INDEX_DEPTH} levels; the backupmeta is damaged")]
    TooDeep {
        /// The index object.
        file: String,
    },
    /// A JSON-lines manifest line that is not a valid entry.
    #[error(
        "{file}:{line}: {message} (each line must be {{\"name\": \"...\", \"size\": N, \"sha256\": \"<64 hex digits>\"}})"
    )]
    BadLine {
        /// The manifest.
        file: String,
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        message: String,
    },
    /// An entry with a name that could escape the root, or an unusable digest.
    #[error("{file} lists an unusable entry {name:?}: {reason}")]
    BadEntry {
        /// The manifest.
        file: String,
        /// The entry's name.
        name: String,
        /// What is wrong.
        reason: String,
    },
    /// The same name twice with different size or digest.
    #[error("{file} lists {name:?} twice with different sizes or digests; the manifest is inconsistent")]
    Conflict {
        /// The manifest.
        file: String,
        /// The name.
        name: String,
    },
}

/// Where a manifest is and how to read it.
#[derive(Debug, Clone)]
pub struct ManifestSource {
    /// The store holding the manifest and (for BR v2) its index objects.
    pub store: Storage,
    /// The manifest's key in `store`; `None` means "the backup's directory": `backupmeta`.
    pub key: Option<String>,
}

impl ManifestSource {
    /// Interprets `--meta`: an `s3://` (or `gcs://`, `azure://`) URL or a path naming either the manifest itself or the
    /// backup's directory/prefix.
    ///
    /// # Errors
    /// [`StoreError`] for an unusable URL.
    pub fn parse(meta: &str, options: &crate::storage::StoreOptions) -> Result<Self, StoreError> {
        let remote = meta.split_once("://").filter(|(scheme, _)| !matches!(*scheme, "local" | "file"));
        if let Some((scheme, rest)) = remote {
            let (path, query) = match rest.split_once('?') {
                Some((p, q)) => (p, format!("?{q}")),
                None => (rest, String::new()),
            };
            let (bucket, prefix) = path.split_once('/').unwrap_or((path, ""));
            let prefix = prefix.trim_start_matches('/');
            if prefix.is_empty() || prefix.ends_with('/') {
                let store = Storage::open(&format!("{scheme}://{bucket}/{prefix}{query}"), options)?;
                return Ok(Self { store, key: None });
            }
            // Either the manifest object itself or a prefix without a trailing slash; `load`
            // tries the object first.
            let (dir, name) = prefix.rsplit_once('/').unwrap_or(("", prefix));
            let store = Storage::open(&format!("{scheme}://{bucket}/{dir}{query}"), options)?;
            return Ok(Self { store, key: Some(name.to_owned()) });
        }
        let path = meta.strip_prefix("local://").or_else(|| meta.strip_prefix("file://")).unwrap_or(meta);
        let path = std::path::Path::new(path);
        if path.is_dir() {
            return Ok(Self { store: Storage::open(&path.display().to_string(), options)?, key: None });
        }
        let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(std::path::Path::new("."));
        let name = path.file_name().and_then(|n| n.to_str()).ok_or_else(|| StoreError::BadUrl {
            url: meta.to_owned(),
            reason: "not a file or directory path".into(),
        })?;
        Ok(Self { store: Storage::open(&dir.display().to_string(), options)?, key: Some(name.to_owned()) })
    }

    /// Reads and parses the manifest.
    ///
    /// # Errors
    /// [`ManifestError`], naming the file.
    pub async fn load(&self, key: Option<&CrypterKey>) -> Result<Manifest, ManifestError> {
        Ok(self.load_located(key).await?.0)
    }

    /// Like [`ManifestSource::load`], also returning the storage the manifest was found in and
    /// its key there (`collect` copies the backup's other meta files from beside it).
    ///
    /// # Errors
    /// [`ManifestError`], naming the file.
    pub async fn load_located(&self, key: Option<&CrypterKey>) -> Result<(Manifest, Storage, String), ManifestError> {
        let (store, name, bytes) = self.fetch().await?;
        let manifest = parse(&store, &name, &bytes, key).await?;
        Ok((manifest, store, name))
    }

    /// Finds the manifest bytes: the named object, else `<name>/backupmeta`, else `backupmeta`.
    async fn fetch(&self) -> Result<(Storage, String, Vec<u8>), ManifestError> {
        match &self.key {
            None => match self.store.get(BACKUPMETA).await {
                Ok(bytes) => Ok((self.store.clone(), BACKUPMETA.to_owned(), bytes)),
                Err(StoreError::NotFound { .. }) => {
                    Err(ManifestError::NotFound { location: self.store.describe(BACKUPMETA) })
                }
                Err(err) => Err(err.into()),
            },
            Some(key) => match self.store.get(key).await {
                Ok(bytes) => Ok((self.store.clone(), key.clone(), bytes)),
                Err(StoreError::NotFound { .. }) => {
                    // `s3://bucket/backup` naming the backup's prefix without a trailing slash.
                    let inner = self.store.at(key);
                    match inner.get(BACKUPMETA).await {
                        Ok(bytes) => Ok((inner, BACKUPMETA.to_owned(), bytes)),
                        Err(StoreError::NotFound { .. }) => {
                            Err(ManifestError::NotFound { location: self.store.describe(key) })
                        }
                        Err(err) => Err(err.into()),
                    }
                }
                Err(err) => Err(err.into()),
            },
        }
    }
}

/// Parses manifest `bytes` read as `name` from `store` (index objects are read from there).
///
/// # Errors
/// [`ManifestError`], naming the file.
pub async fn parse(
    store: &Storage,
    name: &str,
    bytes: &[u8],
    key: Option<&CrypterKey>,
) -> Result<Manifest, ManifestError> {
    let file = store.describe(name);
    let digest: Sha256Digest = Sha256::digest(bytes).into();
    if bytes.is_empty() {
        return Err(ManifestError::Empty { file });
    }
    if looks_like_json_lines(bytes) {
        let files = parse_json_lines(&file, bytes)?;
        return Ok(Manifest { source: file, format: Format::JsonLines, files, end_version: None, digest });
    }
    let plain = match key {
        Some(key) => match key.decrypt_prefixed(bytes) {
            Some(plain) if scan_shape(&file, &plain).is_ok() => plain,
            // A key given for a backup that is not encrypted: the plaintext is what counts.
            _ if scan_shape(&file, bytes).is_ok() => {
                tracing::warn!(file, "a backup encryption key was given, but the backupmeta is not encrypted");
                bytes.to_vec()
            }
            _ => return Err(ManifestError::WrongKey { file }),
        },
        None => {
            scan_shape(&file, bytes)?;
            bytes.to_vec()
        }
    };
    let meta = brpb::BackupMeta::decode(plain.as_slice())
        .map_err(|source| ManifestError::Decode { file: file.clone(), source })?;
    let mut collector = Collector::new(&file);
    for f in &meta.files {
        collector.add(f)?;
    }
    for range in &meta.ranges {
        for f in &range.files {
            collector.add(f)?;
        }
    }
    let format = if let Some(index) = &meta.file_index {
        walk_index(store, index, key, &mut collector, 0, &file).await?;
        Format::BrV2
    } else {
        Format::BrV1
    };
    Ok(Manifest {
        source: file,
        format,
        files: collector.files,
        end_version: (meta.end_version != 0).then_some(meta.end_version),
        digest,
    })
}

fn scan_shape(file: &str, bytes: &[u8]) -> Result<(), ManifestError> {
    match wire::scan_backup_meta(bytes) {
        Shape::Whole => Ok(()),
        Shape::Truncated { at } => Err(ManifestError::Truncated { file: file.to_owned(), at, len: bytes.len() }),
        Shape::Foreign { at, what } => Err(ManifestError::NotPlaintext { file: file.to_owned(), at, what }),
    }
}

/// Follows a v2 `MetaFile` index: data files are collected, each `meta_files` entry is read,
/// decrypted if needed, checked against its recorded sha256, and followed.
async fn walk_index(
    store: &Storage,
    index: &brpb::MetaFile,
    key: Option<&CrypterKey>,
    collector: &mut Collector,
    depth: usize,
    parent: &str,
) -> Result<(), ManifestError> {
    if depth >= MAX_INDEX_DEPTH {
        return Err(ManifestError::TooDeep { file: parent.to_owned() });
    }
    for f in &index.data_files {
        collector.add(f)?;
    }
    for node in &index.meta_files {
        let file = store.describe(&node.name);
        let mut content = store.get(&node.name).await?;
        if !node.cipher_iv.is_empty() {
            let Some(key) = key else {
                return Err(ManifestError::Encrypted { file });
            };
            if !key.apply(&node.cipher_iv, &mut content) {
                return Err(ManifestError::WrongKey { file });
            }
        }
        if !node.sha256.is_empty() {
            let actual = Sha256::digest(&content);
            if actual.as_slice() != node.sha256.as_slice() {
                if key.is_some() && !node.cipher_iv.is_empty() {
                    return Err(ManifestError::WrongKey { file });
                }
                return Err(ManifestError::IndexChecksum {
                    file,
                    expected: hex::encode(&node.sha256),
                    actual: hex::encode(actual),
                });
            }
        }
        let child = brpb::MetaFile::decode(content.as_slice())
            .map_err(|source| ManifestError::Decode { file: file.clone(), source })?;
        Box::pin(walk_index(store, &child, key, collector, depth + 1, &file)).await?;
    }
    Ok(())
}

/// Accumulates entries, validating names and de-duplicating.
struct Collector {
    file: String,
    files: Vec<FileEntry>,
    seen: HashMap<String, usize>,
}

impl Collector {
    fn new(file: &str) -> Self {
        Self { file: file.to_owned(), files: Vec::new(), seen: HashMap::new() }
    }

    fn add(&mut self, f: &brpb::File) -> Result<(), ManifestError> {
        let sha256 = match f.sha256.len() {
            0 => None,
            32 => Some(f.sha256.as_slice().try_into().expect("length checked")),
            n => {
                return Err(ManifestError::BadEntry {
                    file: self.file.clone(),
                    name: f.name.clone(),
                    reason: format!("its sha256 is {n} bytes, not 32"),
                });
            }
        };
        self.push(FileEntry { name: f.name.clone(), size: f.size, sha256 })
    }

    fn push(&mut self, entry: FileEntry) -> Result<(), ManifestError> {
        if let Err(rule) = depot_fs::validate(&entry.name) {
            return Err(ManifestError::BadEntry {
                file: self.file.clone(),
                name: entry.name,
                reason: format!("the name {rule}"),
            });
        }
        match self.seen.entry(entry.name.clone()) {
            Entry::Occupied(at) => {
                if self.files[*at.get()] != entry {
                    return Err(ManifestError::Conflict { file: self.file.clone(), name: entry.name });
                }
            }
            Entry::Vacant(slot) => {
                slot.insert(self.files.len());
                self.files.push(entry);
            }
        }
        Ok(())
    }
}

/// Whether the bytes start with a JSON object (after white space): a protobuf backupmeta never
/// does, as `{` would be field 15 with the group wire type, which BR does not write.
fn looks_like_json_lines(bytes: &[u8]) -> bool {
    bytes.iter().find(|b| !b.is_ascii_whitespace()).is_some_and(|b| *b == b'{') && std::str::from_utf8(bytes).is_ok()
}

#[derive(serde::Deserialize)]
struct JsonEntry {
    name: String,
    size: u64,
    sha256: String,
}

fn parse_json_lines(file: &str, bytes: &[u8]) -> Result<Vec<FileEntry>, ManifestError> {
    let text = std::str::from_utf8(bytes).map_err(|err| ManifestError::BadLine {
        file: file.to_owned(),
        line: 1,
        message: format!("not UTF-8: {err}"),
    })?;
    let mut collector = Collector::new(file);
    for (index, line) in text.lines().enumerate() {
        let line_no = index + 1;
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let bad = |message: String| ManifestError::BadLine { file: file.to_owned(), line: line_no, message };
        let entry: JsonEntry = serde_json::from_str(line).map_err(|err| bad(err.to_string()))?;
        let digest = hex::decode(&entry.sha256)
            .ok()
            .and_then(|d| Sha256Digest::try_from(d.as_slice()).ok())
            .ok_or_else(|| bad(format!("sha256 {:?} is not 64 hex digits", entry.sha256)))?;
        collector.push(FileEntry { name: entry.name, size: entry.size, sha256: Some(digest) })?;
    }
    Ok(collector.files)
}

#[cfg(test)]
mod tests;
