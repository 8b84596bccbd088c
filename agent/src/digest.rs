//! SHA-256 of files, and a cache of them keyed by what would change if the file changed.
//!
//! `verify` asks every node for the digest of every file; hashing a terabyte on each call would
//! make it useless. The cache keeps a digest for as long as the file's size, modification time
//! and inode are what they were when it was hashed, which is how `make`, `rsync` and git's index
//! decide a file is unchanged.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use sha2::{Digest, Sha256};

/// A SHA-256 digest.
pub type Sha256Digest = [u8; 32];

/// Size of the buffer files are hashed through: large enough that syscalls do not dominate,
/// small enough to stay out of the agent's memory budget when several files hash at once.
const HASH_BUF: usize = 256 * 1024;

/// Hashes a whole file. Blocking: call it from `spawn_blocking`.
///
/// # Errors
/// The I/O error opening or reading the file.
pub fn hash_file(path: &Path) -> io::Result<(u64, Sha256Digest)> {
    let mut file = File::open(path)?;
    hash_reader(&mut file)
}

/// Hashes everything `reader` yields, returning the byte count and the digest.
///
/// # Errors
/// The I/O error reading.
pub fn hash_reader(reader: &mut impl Read) -> io::Result<(u64, Sha256Digest)> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; HASH_BUF];
    let mut len = 0u64;
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
            Err(err) => return Err(err),
        };
        hasher.update(&buf[..n]);
        len += n as u64;
    }
    Ok((len, hasher.finalize().into()))
}

/// What identifies one version of a file on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Version {
    size: u64,
    mtime_ns: i128,
    inode: u64,
}

impl Version {
    fn of(meta: &std::fs::Metadata) -> Self {
        Self {
            size: meta.len(),
            mtime_ns: i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec()),
            inode: meta.ino(),
        }
    }
}

/// Digests of files by path, valid while the file's size, mtime and inode are unchanged.
///
/// A std `Mutex` is enough: it is held only to look up or insert, never across hashing.
#[derive(Debug, Default)]
pub struct DigestCache {
    entries: Mutex<HashMap<PathBuf, (Version, Sha256Digest)>>,
}

/// Entries kept before the cache is cleared; a bound so a node serving millions of files does
/// not grow without limit (a cleared cache only costs re-hashing).
const MAX_ENTRIES: usize = 1 << 20;

impl DigestCache {
    /// Size and digest of the file at `path`, hashing it only if it changed since it was last
    /// hashed. Blocking: call it from `spawn_blocking`.
    ///
    /// # Errors
    /// The I/O error reading the file.
    pub fn digest(&self, path: &Path) -> io::Result<(u64, Sha256Digest)> {
        let mut file = File::open(path)?;
        let before = Version::of(&file.metadata()?);
        if let Some((version, digest)) = self.lock().get(path)
            && *version == before
        {
            return Ok((before.size, *digest));
        }
        let (len, digest) = hash_reader(&mut file)?;
        // Only a file that did not change while being hashed is worth remembering.
        let after = Version::of(&std::fs::metadata(path)?);
        if after == before && len == before.size {
            let mut entries = self.lock();
            if entries.len() >= MAX_ENTRIES {
                entries.clear();
            }
            entries.insert(path.to_path_buf(), (after, digest));
        }
        Ok((len, digest))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<PathBuf, (Version, Sha256Digest)>> {
        self.entries.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_matches_sha256_and_follows_changes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, b"abc").unwrap();
        let cache = DigestCache::default();
        let (len, digest) = cache.digest(&path).unwrap();
        assert_eq!(len, 3);
        assert_eq!(hex::encode(digest), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
        // Rewritten through a new inode (as every Depot write is): the cache notices.
        let tmp = dir.path().join("g");
        std::fs::write(&tmp, b"abd").unwrap();
        std::fs::rename(&tmp, &path).unwrap();
        let (_, again) = cache.digest(&path).unwrap();
        assert_ne!(again, digest);
        assert_eq!(again, Sha256::digest(b"abd").as_slice());
    }
}
