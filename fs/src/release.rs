//! Freeing a replaced or deleted large file off the request's path.
//!
//! Unlinking the last name of a large file makes the kernel free its extents and page cache
//! there and then: 0.4–0.7 s for 1 GiB on ext4, spent inside the `rename` that installs a
//! new version (or the `unlink` of a DELETE) and so added to the answer's latency. Holding
//! the old file open across the rename or unlink ([`Held`]) leaves the freeing to the last
//! `close`, made on a background thread. Nothing about durability changes: the name is gone
//! (and its directory fsynced) before the answer, as before; only the blocks are returned a
//! moment later (a client that deletes to make room may find the space back a little after
//! its answer). A crash in between leaves an orphan inode, which the file system frees when
//! it next mounts.

use std::fs::File;
use std::path::Path;
use std::sync::LazyLock;
use std::sync::mpsc;

/// Files smaller than this are freed in place: their freeing costs less than the hand-off.
pub const DEFER_FROM_BYTES: u64 = 16 * 1024 * 1024;

/// Files waiting for the release thread at most; beyond this one is freed in place (by the
/// request that dropped it), so a burst of large deletes cannot pile up open files and
/// space still to be returned.
pub(crate) const QUEUE: usize = 16;

/// An open handle to a large file whose name is about to go: dropped, it is closed on the
/// release thread ([`release_later`]). Keep it until the name is gone and its directory is
/// fsynced, so the freeing never overlaps the request's own commit.
#[derive(Debug)]
pub struct Held(Option<File>);

impl Drop for Held {
    fn drop(&mut self) {
        if let Some(file) = self.0.take() {
            release_later(file);
        }
    }
}

/// A [`Held`] handle to the large regular file at `path`, if there is one. `None` for a
/// missing, small or special file, or one that cannot be opened (it is then freed in place,
/// as without this).
pub fn hold_if_large(path: &Path) -> Option<Held> {
    let meta = std::fs::symlink_metadata(path).ok()?;
    if !meta.is_file() || meta.len() < DEFER_FROM_BYTES {
        return None;
    }
    File::open(path).ok().map(|file| Held(Some(file)))
}

/// Closes `file` on the release thread (started on first use), so the freeing of a file whose
/// last name is gone happens there; in place when that thread is [`QUEUE`] files behind.
fn release_later(file: File) {
    static RELEASER: LazyLock<Option<mpsc::SyncSender<File>>> = LazyLock::new(|| {
        let (tx, rx) = mpsc::sync_channel::<File>(QUEUE);
        let started = std::thread::Builder::new().name("depot-release".into()).spawn(move || {
            for file in rx {
                drop(file);
            }
        });
        started.ok().map(|_| tx)
    });
    if let Some(tx) = RELEASER.as_ref() {
        // Full, or no thread: the error hands the file back and it is closed here.
        let _ = tx.try_send(file);
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::os::unix::fs::MetadataExt;

    use super::*;

    #[test]
    fn small_and_missing_files_are_not_held() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("small"), b"x").unwrap();
        assert!(hold_if_large(&dir.path().join("small")).is_none());
        assert!(hold_if_large(&dir.path().join("missing")).is_none());
        assert!(hold_if_large(dir.path()).is_none());
    }

    #[test]
    fn a_held_file_outlives_its_name_until_released() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big");
        let mut file = File::create(&path).unwrap();
        file.write_all(b"old version").unwrap();
        file.set_len(DEFER_FROM_BYTES).unwrap();
        let held = hold_if_large(&path).expect("a large file is held");
        std::fs::write(dir.path().join("new"), b"new").unwrap();
        std::fs::rename(dir.path().join("new"), &path).unwrap();
        // The name is the new file's; the old inode is still open, with no name.
        assert_eq!(std::fs::read(&path).unwrap(), b"new");
        let file = held.0.as_ref().expect("holds the file");
        assert_eq!(file.metadata().unwrap().nlink(), 0);
        drop(held);
    }
}
