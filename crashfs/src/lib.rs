//! `crashfs`: a FUSE pass-through file system for tests that loses, on a simulated power
//! cut, everything a program did not make durable.
//!
//! The persistence model is the pessimistic one of crash-consistency research (ALICE,
//! CrashMonkey), stricter than ext4 or XFS:
//! - a file's data, size, extended attributes and mode are durable only after `fsync` or
//!   `fdatasync` of that file;
//! - a directory's entries — create, `mkdir`, rename in or out, `unlink`, `rmdir`, `link` —
//!   are durable only after `fsync` of that directory;
//! - a power cut keeps what is durable and reachable from the root through durable entries;
//!   optionally (with a seed) also every later change up to a random point of the order in
//!   which they happened.
//!
//! [`CrashFs::mount`] serves a backing directory at a mount point. [`CrashFs::cut_power`]
//! freezes it (from that instant every operation fails with `EIO`, as if the machine
//! stopped); [`CrashFs::reboot`] unmounts, rewrites the backing directory to what survived,
//! and mounts it again. Processes using the mount must have exited before `reboot`.
//!
//! Needs `/dev/fuse` and the right to mount (root, or `fusermount3`); [`CrashFs::mount`]
//! says why it cannot, and tests skip with that message.
#![deny(missing_docs)]

mod fs;
pub mod model;

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use fuser::{BackgroundSession, MountOption};

use crate::model::Model;

/// A mounted crash file system.
pub struct CrashFs {
    backing: PathBuf,
    mountpoint: PathBuf,
    model: Arc<Mutex<Model>>,
    session: Option<BackgroundSession>,
}

impl std::fmt::Debug for CrashFs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CrashFs").field("backing", &self.backing).field("mountpoint", &self.mountpoint).finish()
    }
}

/// What survives [`CrashFs::reboot`] beyond what was made durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Survivors {
    /// Nothing: only what was fsynced.
    DurableOnly,
    /// Also the changes up to a random point (seeded) of the order they happened in.
    RandomPrefix(u64),
}

impl CrashFs {
    /// Serves `backing` (an existing directory; all of it taken as durable) at `mountpoint`
    /// (an existing empty directory).
    ///
    /// # Errors
    /// Why it cannot mount: no `/dev/fuse`, no permission, ...
    pub fn mount(backing: &Path, mountpoint: &Path) -> io::Result<Self> {
        if !Path::new("/dev/fuse").exists() {
            return Err(io::Error::new(io::ErrorKind::Unsupported, "/dev/fuse does not exist (no FUSE here)"));
        }
        let backing = backing.canonicalize()?;
        let mountpoint = mountpoint.canonicalize()?;
        let model = Arc::new(Mutex::new(Model::scan(&backing)?));
        let mut fs = Self { backing, mountpoint, model, session: None };
        fs.start()?;
        Ok(fs)
    }

    fn start(&mut self) -> io::Result<()> {
        let fs = fs::CrashFs::new(self.backing.clone(), Arc::clone(&self.model));
        let options = [MountOption::FSName("crashfs".into())];
        self.session = Some(fuser::spawn_mount2(fs, &self.mountpoint, &options)?);
        Ok(())
    }

    /// Where the file system is mounted.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.mountpoint
    }

    /// Makes fsyncs of one directory (`dir`, relative to the mount point) take `delay`, as on
    /// a busy disk: the window in which a writer that does not wait for them is caught.
    /// `None` makes them fast again.
    pub fn slow_dir_fsync(&self, slow: Option<(&Path, std::time::Duration)>) {
        self.model.lock().unwrap_or_else(std::sync::PoisonError::into_inner).slow_dir =
            slow.map(|(dir, delay)| (dir.to_path_buf(), delay));
    }

    /// Cuts the power: from now on every operation on the mount fails with `EIO`, and
    /// nothing more becomes durable.
    pub fn cut_power(&self) {
        self.model.lock().unwrap_or_else(std::sync::PoisonError::into_inner).frozen = true;
    }

    /// Cuts the power (if not yet) and boots again: unmounts, puts the backing directory
    /// into the state that survived, and mounts it again. Stop every process using the
    /// mount first.
    ///
    /// # Errors
    /// The I/O error rewriting the backing directory or mounting.
    pub fn reboot(&mut self, survivors: Survivors) -> io::Result<()> {
        self.cut_power();
        drop(self.session.take());
        let state = {
            let model = self.model.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            model.after_cut(match survivors {
                Survivors::DurableOnly => None,
                Survivors::RandomPrefix(seed) => Some(seed),
            })
        };
        let fresh = self.backing.with_extension("crashfs-new");
        let old = self.backing.with_extension("crashfs-old");
        let _ = std::fs::remove_dir_all(&fresh);
        model::materialize(&state, &fresh)?;
        std::fs::rename(&self.backing, &old)?;
        std::fs::rename(&fresh, &self.backing)?;
        std::fs::remove_dir_all(&old)?;
        let mut model = self.model.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let slow = model.slow_dir.take();
        *model = Model::scan(&self.backing)?;
        model.slow_dir = slow;
        drop(model);
        self.start()
    }
}

impl Drop for CrashFs {
    fn drop(&mut self) {
        drop(self.session.take());
    }
}
