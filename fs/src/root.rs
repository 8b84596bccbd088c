//! A root directory that untrusted names are resolved under.

use std::io;
use std::path::{Path, PathBuf};

use crate::durable::TempFile;
use crate::name::{NameRule, STATE_DIR, UnsafeName, validate};

/// A root directory, held by its canonical path.
///
/// Depot keeps its own state in `<root>/.depot/` (temp files in `.depot/tmp/`); no name can
/// reach it. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Root {
    /// Canonical (symlink-free, absolute) path: the prefix every resolved path must keep.
    dir: PathBuf,
}

/// Why a directory cannot serve as a root.
#[derive(Debug, thiserror::Error)]
pub enum OpenRootError {
    /// The directory does not exist or cannot be read.
    #[error("cannot open directory {path}: {source}")]
    Open {
        /// The directory asked for.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// The path names something other than a directory.
    #[error("{path} is not a directory")]
    NotADirectory {
        /// The path asked for.
        path: PathBuf,
    },
}

impl Root {
    /// Opens an existing directory as a root. Nothing is created until the first write.
    ///
    /// # Errors
    /// [`OpenRootError`] when `dir` is missing or not a directory.
    pub fn open(dir: impl AsRef<Path>) -> Result<Self, OpenRootError> {
        let asked = dir.as_ref();
        let dir = asked.canonicalize().map_err(|source| OpenRootError::Open { path: asked.to_path_buf(), source })?;
        if !dir.is_dir() {
            return Err(OpenRootError::NotADirectory { path: asked.to_path_buf() });
        }
        Ok(Self { dir })
    }

    /// The canonical path of the root directory.
    #[must_use]
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// `<root>/.depot`: Depot's private state.
    #[must_use]
    pub fn state_dir(&self) -> PathBuf {
        self.dir.join(STATE_DIR)
    }

    /// `<root>/.depot/tmp`: where writes happen before they are renamed into place.
    #[must_use]
    pub fn tmp_dir(&self) -> PathBuf {
        self.state_dir().join("tmp")
    }

    /// Maps a relative name to its path under the root.
    ///
    /// Besides the rules of [`validate`], every existing segment that is a symbolic link must
    /// resolve inside the root; a dangling link is refused too, since writing through it would
    /// create a file wherever it points.
    ///
    /// # Errors
    /// [`UnsafeName`] naming the broken rule.
    pub fn resolve(&self, name: &str) -> Result<PathBuf, UnsafeName> {
        let refuse = |rule| UnsafeName { name: name.to_owned(), rule };
        validate(name).map_err(refuse)?;
        let mut prefix = self.dir.clone();
        for segment in name.split('/') {
            prefix.push(segment);
            match std::fs::symlink_metadata(&prefix) {
                Ok(meta) if meta.file_type().is_symlink() => match prefix.canonicalize() {
                    Ok(target) if target.starts_with(&self.dir) && !target.starts_with(self.state_dir()) => {}
                    _ => return Err(refuse(NameRule::EscapesRoot)),
                },
                Ok(_) => {}
                // Nothing further down exists yet (or a segment is a file): no link to follow.
                Err(_) => break,
            }
        }
        let path = self.dir.join(name);
        Ok(path)
    }

    /// The name of a path under the root, with `/` separators: the inverse of [`Root::resolve`].
    /// `None` for paths outside the root or that are not UTF-8.
    #[must_use]
    pub fn name_of(&self, path: &Path) -> Option<String> {
        let rel = path.strip_prefix(&self.dir).ok()?;
        let parts: Option<Vec<&str>> = rel.components().map(|c| c.as_os_str().to_str()).collect();
        Some(parts?.join("/"))
    }

    /// Starts a write: a new temp file in `.depot/tmp/` (created on first use).
    ///
    /// # Errors
    /// The I/O error creating the file.
    pub fn temp_file(&self) -> io::Result<TempFile> {
        let tmp = self.tmp_dir();
        match TempFile::create_in(&tmp) {
            Err(err) if err.kind() == io::ErrorKind::NotFound => {
                std::fs::create_dir_all(&tmp)?;
                TempFile::create_in(&tmp)
            }
            result => result,
        }
    }

    /// Deletes every file left in `.depot/tmp/` by writes that never finished (a crash, a
    /// killed process). Call it once at start, before serving. Returns how many were removed.
    ///
    /// # Errors
    /// The I/O error reading the directory.
    pub fn sweep_tmp(&self) -> io::Result<usize> {
        let mut removed = 0;
        let entries = match std::fs::read_dir(self.tmp_dir()) {
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(0),
            result => result?,
        };
        for entry in entries {
            let entry = entry?;
            let result = if entry.file_type()?.is_dir() {
                std::fs::remove_dir_all(entry.path())
            } else {
                std::fs::remove_file(entry.path())
            };
            match result {
                Ok(()) => removed += 1,
                Err(err) => tracing::warn!(path = %entry.path().display(), %err, "cannot remove leftover temp file"),
            }
        }
        Ok(removed)
    }

    /// Removes `dir` and its ancestors while they are empty, stopping at the root, so that
    /// deleting the last object under a prefix leaves no empty directory behind (S3 has none).
    /// The removal is made durable (the parent of the last directory removed is fsynced), so
    /// emptied directories do not come back after a power cut.
    ///
    /// # Errors
    /// The I/O error syncing that parent. A directory a concurrent delete already removed is
    /// not one (that delete syncs it).
    pub fn prune_empty_dirs(&self, dir: &Path) -> io::Result<()> {
        let mut dir = dir.to_path_buf();
        let mut removed = false;
        while dir.starts_with(&self.dir) && dir != self.dir {
            // A directory still holding something stays, and stays in the record of durable
            // directories (the next write into it needs no fsync of its parent).
            if std::fs::read_dir(&dir).map_or(true, |mut entries| entries.next().is_some()) {
                break;
            }
            crate::dirsync::forget(&dir, false);
            // Fails (and stops) on the first non-empty directory.
            if std::fs::remove_dir(&dir).is_err() {
                break;
            }
            removed = true;
            if !dir.pop() {
                break;
            }
        }
        if !removed {
            return Ok(());
        }
        match crate::dirsync::sync_dir(&dir) {
            Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(()),
            result => result,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root() -> (tempfile::TempDir, Root) {
        let dir = tempfile::tempdir().unwrap();
        let root = Root::open(dir.path()).unwrap();
        (dir, root)
    }

    #[test]
    fn resolves_plain_names_under_the_root() {
        let (_dir, root) = root();
        let path = root.resolve("a/b/c.sst").unwrap();
        assert_eq!(path, root.dir().join("a/b/c.sst"));
        assert_eq!(root.name_of(&path).as_deref(), Some("a/b/c.sst"));
    }

    #[test]
    fn refuses_a_symlink_out_of_the_root() {
        let (_dir, root) = root();
        let outside = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(outside.path(), root.dir().join("out")).unwrap();
        let err = root.resolve("out/secret").unwrap_err();
        assert_eq!(err.rule, NameRule::EscapesRoot);
        std::os::unix::fs::symlink("/nonexistent-target", root.dir().join("dangling")).unwrap();
        assert_eq!(root.resolve("dangling").unwrap_err().rule, NameRule::EscapesRoot);
        std::os::unix::fs::symlink(root.state_dir(), root.dir().join("state")).unwrap();
        assert_eq!(root.resolve("state/tmp/x").unwrap_err().rule, NameRule::EscapesRoot);
    }

    #[test]
    fn allows_a_symlink_that_stays_inside() {
        let (_dir, root) = root();
        std::fs::create_dir(root.dir().join("real")).unwrap();
        std::os::unix::fs::symlink(root.dir().join("real"), root.dir().join("alias")).unwrap();
        assert!(root.resolve("alias/x").is_ok());
    }

    #[test]
    fn sweep_removes_leftovers_and_prune_removes_empty_dirs() {
        let (_dir, root) = root();
        assert_eq!(root.sweep_tmp().unwrap(), 0, "nothing to sweep before the first write");
        drop(root.temp_file().unwrap());
        std::fs::write(root.tmp_dir().join("abandoned.tmp"), b"partial").unwrap();
        assert_eq!(root.sweep_tmp().unwrap(), 1);
        assert_eq!(std::fs::read_dir(root.tmp_dir()).unwrap().count(), 0);

        std::fs::create_dir_all(root.dir().join("a/b/c")).unwrap();
        std::fs::write(root.dir().join("a/keep"), b"x").unwrap();
        root.prune_empty_dirs(&root.dir().join("a/b/c")).unwrap();
        assert!(!root.dir().join("a/b").exists());
        assert!(root.dir().join("a/keep").exists());
    }
}
