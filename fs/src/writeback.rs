//! Early writeback: a large file's data goes to disk while it is still being written.
//!
//! Every write Depot acknowledges is fsynced first. Left alone, the kernel holds a 1 GiB file
//! (or an 8 MiB multipart part) in the page cache and writes it all during that final fsync,
//! after the network is done, so the disk and the network take turns. Asking the kernel to
//! start writing every [`WRITEBACK_EVERY`] bytes ([`crate::flush::start_write_out`]: it queues
//! the I/O and returns, with no journal commit) keeps the disk busy during the transfer, and
//! the final fsync only has the tail left. Used by `depot serve`'s PUT and UploadPart paths
//! and by the agent's fetch.

use std::fs::File;

/// Bytes written between two early writebacks: small enough that a multipart part (8 MiB
/// for TiKV and the AWS SDKs) streams to disk while it arrives, large enough that the
/// device gets big requests.
pub const WRITEBACK_EVERY: u64 = 2 * 1024 * 1024;

/// How far behind the newest write an uncached writer drops pages: what is older has had
/// time to reach the disk, so waiting for it rarely waits.
const UNCACHED_BEHIND: u64 = 8 * 1024 * 1024;

/// Starts the disk on a file being written once it has grown by [`WRITEBACK_EVERY`] bytes.
/// Call [`Writeback::written`] after each write; the final, required fsync is still the
/// caller's.
#[derive(Debug, Default)]
pub struct Writeback {
    since_last: u64,
    /// Bytes written through this writer so far.
    written: u64,
    /// Drop written pages from the page cache ([`Writeback::uncached`]).
    uncached: bool,
    /// The file offset where this writer's writes started (pages before it are not its to
    /// drop), learned at the first writeback.
    start: Option<u64>,
    /// Pages before this offset have been written and dropped.
    dropped: u64,
}

impl Writeback {
    /// Nothing written yet.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Like [`Writeback::new`], and the pages that reached the disk also leave the page cache
    /// (all but the last few MiB): for a large file nobody reads back soon (the agent's
    /// fetch), so writing it recycles a few MiB of cache instead of taking a fresh page for
    /// every 4 KiB of it and evicting what the node's database keeps cached. On a VM, fresh
    /// guest pages cost the host a fault each: writing 1 GiB into new page cache took 1.5-2 s
    /// of system CPU against 0.4 s while recycling (measured on this project's 2-core CI VM).
    /// Dirty pages are never dropped; durability is the caller's fsync as always.
    #[must_use]
    pub fn uncached() -> Self {
        Self { uncached: true, ..Self::default() }
    }

    /// `bytes` more were appended to `file` (at its current position): start its dirty pages
    /// towards the disk when enough have piled up. Returns whether it did.
    pub fn written(&mut self, file: &File, bytes: u64) -> bool {
        self.since_last += bytes;
        self.written += bytes;
        if self.since_last < WRITEBACK_EVERY {
            return false;
        }
        self.since_last = 0;
        // Best effort throughout: the commit's fsync is the one that must succeed.
        let _ = crate::flush::start_write_out(file, 0, 0);
        if self.uncached {
            let start = match self.start {
                Some(start) => start,
                None => {
                    let at = std::io::Seek::stream_position(&mut &*file).unwrap_or(0).saturating_sub(self.written);
                    self.dropped = at;
                    *self.start.insert(at)
                }
            };
            let upto = (start + self.written).saturating_sub(UNCACHED_BEHIND);
            if upto > self.dropped && crate::flush::write_out_range(file, self.dropped, upto - self.dropped).is_ok() {
                drop_cached(file, self.dropped, upto);
                self.dropped = upto;
            }
        }
        true
    }
}

/// Drops the clean pages of `file` in `from..to` from the page cache (best effort).
#[cfg(target_os = "linux")]
fn drop_cached(file: &File, from: u64, to: u64) {
    if let Some(len) = std::num::NonZeroU64::new(to.saturating_sub(from)) {
        let _ = rustix::fs::fadvise(file, from, Some(len), rustix::fs::Advice::DontNeed);
    }
}

#[cfg(not(target_os = "linux"))]
fn drop_cached(_file: &File, _from: u64, _to: u64) {}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    #[test]
    fn a_large_file_starts_the_disk_every_interval_and_a_small_one_never() {
        let dir = tempfile::tempdir().unwrap();
        let mut file = File::create(dir.path().join("f")).unwrap();
        let mut writeback = Writeback::new();
        let chunk = vec![7u8; 1 << 20];
        let mut started = 0;
        for _ in 0..(WRITEBACK_EVERY >> 20) * 3 {
            file.write_all(&chunk).unwrap();
            started += usize::from(writeback.written(&file, chunk.len() as u64));
        }
        assert_eq!(started, 3);
        let mut small = Writeback::new();
        assert!(!small.written(&file, 4096), "a small file is left to the final fsync");
    }

    #[test]
    fn an_uncached_writeback_keeps_every_byte() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let mut file = File::create(&path).unwrap();
        // Writes that start at an offset (a resumed partial): nothing before it is touched.
        file.write_all(b"head").unwrap();
        let mut writeback = Writeback::uncached();
        let mut expected = b"head".to_vec();
        for i in 0..(UNCACHED_BEHIND >> 20) * 3 + 1 {
            let chunk = vec![u8::try_from(i % 251).unwrap(); 1 << 20];
            file.write_all(&chunk).unwrap();
            writeback.written(&file, chunk.len() as u64);
            expected.extend_from_slice(&chunk);
        }
        assert!(writeback.dropped > 4, "pages behind the newest writes were dropped");
        file.sync_all().unwrap();
        drop(file);
        assert!(std::fs::read(&path).unwrap() == expected, "the file reads back byte for byte");
    }
}
