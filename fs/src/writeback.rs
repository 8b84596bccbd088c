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

/// Starts the disk on a file being written once it has grown by [`WRITEBACK_EVERY`] bytes.
/// Call [`Writeback::written`] after each write; the final, required fsync is still the
/// caller's.
#[derive(Debug, Default)]
pub struct Writeback {
    since_last: u64,
}

impl Writeback {
    /// Nothing written yet.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// `bytes` more were written to `file`: start its dirty pages towards the disk when
    /// enough have piled up. Returns whether it did.
    pub fn written(&mut self, file: &File, bytes: u64) -> bool {
        self.since_last += bytes;
        if self.since_last < WRITEBACK_EVERY {
            return false;
        }
        self.since_last = 0;
        // Best effort: the commit's fsync is the one that must succeed.
        let _ = crate::flush::start_write_out(file, 0, 0);
        true
    }
}

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
}
