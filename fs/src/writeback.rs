//! Early writeback: a large file's data goes to disk while it is still being written.
//!
//! Every write Depot acknowledges is fsynced first. Left alone, the kernel holds a 1 GiB file
//! in the page cache and writes it all during that final fsync, after the network is done, so
//! the disk and the network take turns. Flushing every [`WRITEBACK_EVERY`] bytes on a thread of
//! its own (on a clone of the file descriptor, so the writer never waits for it) keeps the disk
//! busy during the transfer, and the final fsync only has the tail left. Small files never
//! start the thread. Used by `depot serve`'s PUT path and by the agent's fetch.

use std::fs::File;

/// Bytes written between two early writebacks.
pub const WRITEBACK_EVERY: u64 = 32 * 1024 * 1024;

/// Starts flushing a file being written once it has grown by [`WRITEBACK_EVERY`] bytes. Call
/// [`Writeback::written`] after each write and [`Writeback::finish`] at the end (the final,
/// required fsync is still the caller's).
#[derive(Debug, Default)]
pub struct Writeback {
    since_last: u64,
    /// Wakes the flusher; a full slot means a flush is already pending (one is enough).
    wake: Option<std::sync::mpsc::SyncSender<()>>,
    flusher: Option<std::thread::JoinHandle<()>>,
}

impl Writeback {
    /// Nothing written yet.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// `bytes` more were written to `file`: start a flush when enough have piled up.
    pub fn written(&mut self, file: &File, bytes: u64) {
        self.since_last += bytes;
        if self.since_last < WRITEBACK_EVERY {
            return;
        }
        self.since_last = 0;
        if self.wake.is_none() {
            let Ok(clone) = file.try_clone() else { return };
            let (wake, asleep) = std::sync::mpsc::sync_channel::<()>(1);
            let spawned = std::thread::Builder::new().name("depot-writeback".into()).spawn(move || {
                while asleep.recv().is_ok() {
                    // Best effort: the commit's fsync is the one that must succeed.
                    let _ = clone.sync_data();
                }
            });
            let Ok(flusher) = spawned else { return };
            self.wake = Some(wake);
            self.flusher = Some(flusher);
        }
        if let Some(wake) = &self.wake {
            let _ = wake.try_send(());
        }
    }

    /// Stops the flusher, after its flush in progress.
    pub fn finish(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        self.wake = None;
        if let Some(flusher) = self.flusher.take() {
            let _ = flusher.join();
        }
    }
}

impl Drop for Writeback {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    #[test]
    fn a_large_file_is_flushed_along_the_way_and_finish_waits_for_the_flusher() {
        let dir = tempfile::tempdir().unwrap();
        let mut file = File::create(dir.path().join("f")).unwrap();
        let mut writeback = Writeback::new();
        let chunk = vec![7u8; 1 << 20];
        for _ in 0..(WRITEBACK_EVERY >> 20) * 2 + 1 {
            file.write_all(&chunk).unwrap();
            writeback.written(&file, chunk.len() as u64);
        }
        assert!(writeback.flusher.is_some(), "the flusher starts after WRITEBACK_EVERY bytes");
        writeback.finish();
        let mut small = Writeback::new();
        small.written(&file, 4096);
        assert!(small.flusher.is_none(), "a small file starts no thread");
    }
}
