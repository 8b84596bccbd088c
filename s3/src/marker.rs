//! Directory markers: the zero-byte object `x/` that S3 consoles ("create folder"), rclone
//! `--s3-directory-markers`, s3fs and Hadoop S3A write.
//!
//! A key ending in `/` names a directory. Its marker is a file inside that directory called
//! [`MARKER`] — a name with a backslash, so no key can ever address it — holding nothing, with
//! the usual metadata record (ETag, Content-Type, tags) like any object. Every operation
//! reaches it through [`crate::archive::Bucket::path_of`], so PUT, GET, HEAD, DELETE, copy and
//! tagging need nothing of their own; being a file, it keeps its directory from being pruned
//! and counts as content (a prefix with a delimiter, a non-empty bucket). The listing walk
//! reports it as the key `x/` where it meets the directory (whose entries sort as `x/`, just
//! where S3 puts the key) and skips the file itself.

use std::path::{Path, PathBuf};

/// The marker's file name inside its directory.
pub const MARKER: &str = ".depot\\dir";

/// The directory part of a marker key (`a/b/` → `a/b`), if `key` is one.
pub fn dir_key(key: &str) -> Option<&str> {
    key.strip_suffix('/')
}

/// The marker file of the directory at `dir`.
pub fn file_in(dir: &Path) -> PathBuf {
    dir.join(MARKER)
}

/// Whether the directory at `dir` is marked.
pub fn is_marked(dir: &Path) -> bool {
    file_in(dir).is_file()
}

/// Whether a directory entry is a marker file (never listed as itself).
pub fn is_marker_name(name: &std::ffi::OsStr) -> bool {
    name == MARKER
}
