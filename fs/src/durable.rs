//! The one way Depot writes a file: never in place, always whole.
//!
//! A [`TempFile`] is created in the root's `.depot/tmp/` (same file system as the target, so
//! the final rename is atomic). [`TempFile::commit`] fsyncs the data, makes sure every parent
//! directory exists *and is durable* up to the root — whichever request created it (see
//! [`crate::dirsync`]) — renames the file into place and fsyncs the target directory (grouped
//! with concurrent commits), so that after `commit` returns the file survives a power cut and
//! before it returns no reader can see it. A `TempFile` dropped without `commit` deletes
//! itself; one left by a crash is removed by [`Root::sweep_tmp`](crate::Root::sweep_tmp).
//!
//! Leftovers a power cut can leave are harmless by design: a temp file (swept at start), an
//! empty directory made for a write that was never acknowledged (S3 shows no empty
//! directories; the next write into it reuses it, a delete under it prunes it), and a
//! renamed file's old entry in `.depot/tmp/` (swept).
//!
//! A large file that a commit replaces is freed after the commit returns ([`crate::release`]).

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use rand::Rng;

use crate::dirsync::{ensure_dir, sync_dir};
use crate::name::STATE_DIR;
use crate::release;

/// A file being written in `.depot/tmp/`; see the module docs.
#[derive(Debug)]
pub struct TempFile {
    file: File,
    path: PathBuf,
    /// Set once renamed into place, so `Drop` leaves it alone.
    committed: bool,
    /// A resumable file outlives its writer; see [`TempFile::resumable`].
    keep_on_drop: bool,
    /// The root the file lives under (the parent of its `.depot/`), taken as durable:
    /// directories are made durable up to it. `None`: up to `/`.
    root: Option<PathBuf>,
}

/// The root a path in Depot's state lives under: the parent of its `.depot` ancestor.
fn root_of(path: &Path) -> Option<PathBuf> {
    path.ancestors()
        .find(|a| a.file_name().is_some_and(|n| n == STATE_DIR))
        .and_then(Path::parent)
        .map(Path::to_path_buf)
}

/// Why [`TempFile::commit`] failed. The temp file is deleted either way.
#[derive(Debug, thiserror::Error)]
pub enum CommitError {
    /// The target cannot exist as a file: a parent is a file, or the target is a non-empty
    /// directory (`a` vs `a/b`).
    #[error("{path} is {what}")]
    Conflict {
        /// The path in the way.
        path: PathBuf,
        /// What is in the way, completing "<path> is ...".
        what: &'static str,
    },
    /// An I/O error (disk full, permissions, ...).
    #[error("cannot write {path}: {source}")]
    Io {
        /// The file or directory being written.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
}

impl CommitError {
    pub(crate) fn io(path: &Path) -> impl FnOnce(io::Error) -> Self + '_ {
        move |source| Self::Io { path: path.to_path_buf(), source }
    }
}

impl TempFile {
    /// Creates a new, uniquely named temp file in `dir`.
    ///
    /// # Errors
    /// The I/O error creating it.
    pub fn create_in(dir: &Path) -> io::Result<Self> {
        let name = format!("{:016x}.tmp", rand::rng().random::<u64>());
        let path = dir.join(name);
        let file = OpenOptions::new().write(true).read(true).create_new(true).open(&path)?;
        let root = root_of(&path);
        Ok(Self { file, path, committed: false, keep_on_drop: false, root })
    }

    /// Opens (or creates) a temp file at a stable `path`, keeping what it holds, positioned at
    /// its end. Unlike [`TempFile::create_in`], it is *not* deleted on drop: an interrupted
    /// transfer leaves its bytes for the next run to continue from. [`TempFile::discard`]
    /// deletes it; [`TempFile::commit`] installs it as usual.
    ///
    /// # Errors
    /// The I/O error opening or creating it (or its directory).
    pub fn resumable(path: &Path) -> io::Result<Self> {
        let open = || OpenOptions::new().read(true).write(true).create(true).truncate(false).open(path);
        let mut file = match open() {
            Err(err) if err.kind() == io::ErrorKind::NotFound && path.parent().is_some() => {
                std::fs::create_dir_all(path.parent().expect("checked"))?;
                open()?
            }
            result => result?,
        };
        std::io::Seek::seek(&mut file, io::SeekFrom::End(0))?;
        Ok(Self { file, path: path.to_path_buf(), committed: false, keep_on_drop: true, root: root_of(path) })
    }

    /// Deletes the file now, resumable or not.
    ///
    /// # Errors
    /// The I/O error removing it (a missing file is not one).
    pub fn discard(mut self) -> io::Result<()> {
        self.keep_on_drop = true; // removed here, not again in Drop
        match std::fs::remove_file(&self.path) {
            Err(err) if err.kind() != io::ErrorKind::NotFound => Err(err),
            _ => Ok(()),
        }
    }

    /// The open file, for writes at offsets, `set_len`, metadata or extended attributes.
    #[must_use]
    pub fn file(&self) -> &File {
        &self.file
    }

    /// Where the temp file currently is.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Makes the file durable and atomically puts it at `dest`, replacing a file there.
    ///
    /// An empty directory at `dest` (left by an earlier delete) is replaced too; a non-empty
    /// one is a [`CommitError::Conflict`].
    ///
    /// # Errors
    /// [`CommitError`]; on error nothing has changed at `dest` and the temp file is gone.
    pub fn commit(mut self, dest: &Path) -> Result<(), CommitError> {
        self.file.sync_all().map_err(CommitError::io(&self.path))?;
        let parent =
            dest.parent().ok_or_else(|| CommitError::Conflict { path: dest.to_path_buf(), what: "not a file path" })?;
        // Retried a few times: a concurrent delete may prune a parent directory (left empty)
        // while it is being created or before the rename, and an empty directory at `dest`
        // gives way.
        for _ in 0..10 {
            match ensure_dir(parent, self.root.as_deref()) {
                Err(CommitError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => continue,
                result => result?,
            }
            // A large file replaced is freed after the answer, not inside the rename.
            let replaced = release::hold_if_large(dest);
            let err = match std::fs::rename(&self.path, dest) {
                Ok(()) => {
                    self.committed = true;
                    let synced = match sync_dir(parent) {
                        // The new file was deleted (and its directory pruned) by a concurrent
                        // delete of the same name: the write itself happened.
                        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
                        result => result.map_err(CommitError::io(parent)),
                    };
                    drop(replaced); // only now: after the directory fsync
                    return synced;
                }
                Err(err) => err,
            };
            if err.kind() == io::ErrorKind::NotFound && self.path.exists() {
                continue;
            }
            if !dest.is_dir() {
                return Err(CommitError::io(dest)(err));
            }
            // remove_dir fails on a non-empty directory: a real conflict.
            std::fs::remove_dir(dest).map_err(|_| CommitError::Conflict {
                path: dest.to_path_buf(),
                what: "a directory that holds other files (a name cannot be both a file and a prefix)",
            })?;
        }
        Err(CommitError::io(dest)(io::Error::other("the target kept changing under concurrent writers")))
    }
}

impl Write for TempFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.file.write(buf)
    }

    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        self.file.write_all(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if !self.committed
            && !self.keep_on_drop
            && let Err(err) = std::fs::remove_file(&self.path)
            && err.kind() != io::ErrorKind::NotFound
        {
            tracing::warn!(path = %self.path.display(), %err, "cannot remove temp file");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Root;

    fn root() -> (tempfile::TempDir, Root) {
        let dir = tempfile::tempdir().unwrap();
        let root = Root::open(dir.path()).unwrap();
        (dir, root)
    }

    #[test]
    fn commit_puts_the_whole_file_in_place() {
        let (_dir, root) = root();
        let mut tmp = root.temp_file().unwrap();
        tmp.write_all(b"hello").unwrap();
        let tmp_path = tmp.path().to_path_buf();
        let dest = root.dir().join("x/y/z.sst");
        tmp.commit(&dest).unwrap();
        assert_eq!(std::fs::read(&dest).unwrap(), b"hello");
        assert!(!tmp_path.exists());
    }

    #[test]
    fn commit_replaces_an_existing_file() {
        let (_dir, root) = root();
        let dest = root.dir().join("k");
        std::fs::write(&dest, b"old").unwrap();
        let mut tmp = root.temp_file().unwrap();
        tmp.write_all(b"new").unwrap();
        tmp.commit(&dest).unwrap();
        assert_eq!(std::fs::read(&dest).unwrap(), b"new");
    }

    #[test]
    fn dropping_an_uncommitted_file_deletes_it() {
        let (_dir, root) = root();
        let mut tmp = root.temp_file().unwrap();
        tmp.write_all(b"partial").unwrap();
        let path = tmp.path().to_path_buf();
        drop(tmp);
        assert!(!path.exists());
    }

    #[test]
    fn a_resumable_file_outlives_its_writer_and_continues_where_it_stopped() {
        let (_dir, root) = root();
        let path = root.state_dir().join("resume/job/x.part");
        let mut first = TempFile::resumable(&path).unwrap();
        first.write_all(b"hello ").unwrap();
        drop(first);
        assert_eq!(std::fs::read(&path).unwrap(), b"hello ");
        let mut second = TempFile::resumable(&path).unwrap();
        second.write_all(b"world").unwrap();
        second.commit(&root.dir().join("done")).unwrap();
        assert_eq!(std::fs::read(root.dir().join("done")).unwrap(), b"hello world");
        assert!(!path.exists());
        let third = TempFile::resumable(&path).unwrap();
        third.discard().unwrap();
        assert!(!path.exists());
    }

    #[test]
    fn a_file_parent_or_a_full_directory_is_a_conflict() {
        let (_dir, root) = root();
        std::fs::write(root.dir().join("a"), b"file").unwrap();
        let tmp = root.temp_file().unwrap();
        let err = tmp.commit(&root.dir().join("a/b")).unwrap_err();
        assert!(matches!(&err, CommitError::Conflict { path, .. } if path.ends_with("a")), "{err}");

        std::fs::create_dir_all(root.dir().join("d/e")).unwrap();
        std::fs::write(root.dir().join("d/e/f"), b"x").unwrap();
        let tmp = root.temp_file().unwrap();
        let err = tmp.commit(&root.dir().join("d")).unwrap_err();
        assert!(matches!(err, CommitError::Conflict { .. }), "{err}");
        assert_eq!(std::fs::read(root.dir().join("d/e/f")).unwrap(), b"x");
        assert_eq!(std::fs::read_dir(root.tmp_dir()).unwrap().count(), 0);
    }

    #[test]
    fn commits_survive_concurrent_deletes_pruning_their_directories() {
        let (_dir, root) = root();
        let threads: Vec<_> = (0..8)
            .map(|t| {
                let root = root.clone();
                std::thread::spawn(move || {
                    for i in 0..200 {
                        let dest = root.dir().join(format!("race/d{}/e/k{t}-{i}", i % 2));
                        let mut tmp = root.temp_file().unwrap();
                        tmp.write_all(b"x").unwrap();
                        tmp.commit(&dest).unwrap_or_else(|e| panic!("commit {}: {e}", dest.display()));
                        std::fs::remove_file(&dest).unwrap();
                        root.prune_empty_dirs(dest.parent().unwrap()).unwrap();
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().expect("no commit failed");
        }
        assert!(!root.dir().join("race").exists());
    }

    #[test]
    fn an_empty_directory_gives_way() {
        let (_dir, root) = root();
        std::fs::create_dir_all(root.dir().join("e")).unwrap();
        let mut tmp = root.temp_file().unwrap();
        tmp.write_all(b"x").unwrap();
        tmp.commit(&root.dir().join("e")).unwrap();
        assert_eq!(std::fs::read(root.dir().join("e")).unwrap(), b"x");
    }
}
