//! Files inside one root directory, kept safe and durable.
//!
//! `depot serve` (S3 keys) and `depot-agent` (paths its peers ask for) both map untrusted
//! relative names onto files under a root directory. Both must never touch anything outside
//! that root, and must never let a reader see a half-written file. This crate holds those two
//! rules, so they are the same on both sides.
//!
//! # Layout
//! - [`name`]: which relative names are acceptable ([`validate`], [`NameRule`]).
//! - [`root`]: [`Root`], a canonical root directory: resolving a name (refusing symlinks that
//!   leave the root), Depot's private `.depot/` directory, the sweep of leftover temp files.
//! - [`durable`]: [`TempFile`], the one way Depot writes a file: a temp file in `.depot/tmp/`,
//!   `fsync`, rename into place, `fsync` of the directory; deleted on drop if never committed.
//! - [`dirsync`]: directory fsyncs grouped across concurrent requests, the record of
//!   directories already durable, and durable removal.
//! - [`release`]: freeing a replaced or deleted large file after the answer, not inside the
//!   `rename`, `unlink` or directory removal that drops its name.
//! - [`writeback`]: [`Writeback`], starting the disk on a large file while it is written, so
//!   the final fsync has only the tail left; [`flush`]: the `sync_file_range` under it.
#![deny(unsafe_code)]
#![deny(missing_docs)]

pub mod dirsync;
pub mod durable;
pub mod flush;
pub mod name;
pub mod release;
pub mod root;
pub mod writeback;

pub use dirsync::{create_dir_all_durably, remove_dir_durably, remove_file_durably, sync_dir};
pub use durable::{CommitError, TempFile};
pub use name::{MAX_NAME_BYTES, MAX_SEGMENT_BYTES, NameRule, STATE_DIR, UnsafeName, validate};
pub use root::{OpenRootError, Root};
pub use writeback::Writeback;
