//! Early writeback: a large file's data goes to disk while it is still being written.
//!
//! Every write Depot acknowledges is fsynced first. Left alone, the kernel holds a 1 GiB file
//! in the page cache and writes it all during that final fsync, after the network is done, so
//! the disk and the network take turns. Flushing every [`WRITEBACK_EVERY`] bytes on a thread of
//! its own (on a clone of the file descriptor, so the writer never waits for it) keeps the disk
//! busy during the transfer, and the final fsync only has the tail left. Small files never
//! start the thread. Used by `depot serve`'s PUT path and by the agent's fetch.

use std::fs::File;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// Bytes written between two early writebacks.
pub const WRITEBACK_EVERY: u64 = 32 * 1024 * 1024;

/// Starts flushing a file being written once it has grown by [`WRITEBACK_EVERY`] bytes. Call
/// [`Writeback::written`] after each write and [`Writeback::finish`] at the end (the final,
/// required fsync is still the caller's).
#[derive(Debug, Default)]
pub struct Writeback {
    since_last: u64,
    /// Bytes written so far (from where the writes started), read by the flusher.
    written: Arc<AtomicU64>,
    /// Drop flushed pages from the page cache ([`Writeback::uncached`]).
    uncached: bool,
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

    /// Like [`Writeback::new`], and each flush also drops the pages it made clean from the
    /// page cache: for a large file nobody reads back soon (the agent's fetch), so writing it
    /// recycles a few tens of MiB of cache instead of taking a fresh page for every 4 KiB of
    /// it and evicting what the node's database keeps cached. On a VM, fresh guest pages cost
    /// the host a fault each: writing 1 GiB into new page cache took 1.5-2 s of system CPU
    /// against 0.4 s while recycling (measured on this project's 2-core CI VM). Dirty pages
    /// are never dropped; durability is the caller's fsync as always.
    #[must_use]
    pub fn uncached() -> Self {
        let mut writeback = Self::default();
        writeback.uncached = true;
        writeback
    }

    /// `bytes` more were written to `file`: start a flush when enough have piled up.
    pub fn written(&mut self, file: &File, bytes: u64) {
        self.since_last += bytes;
        self.written.fetch_add(bytes, Ordering::Relaxed);
        if self.since_last < WRITEBACK_EVERY {
            return;
        }
        self.since_last = 0;
        if self.wake.is_none() {
            let Ok(clone) = file.try_clone() else { return };
            // Where the writes started: pages before it are not this writer's to drop.
            let start = std::io::Seek::stream_position(&mut &clone)
                .unwrap_or(0)
                .saturating_sub(self.written.load(Ordering::Relaxed));
            let (wake, asleep) = std::sync::mpsc::sync_channel::<()>(1);
            let (written, uncached) = (self.written.clone(), self.uncached);
            let spawned = std::thread::Builder::new().name("depot-writeback".into()).spawn(move || {
                let mut dropped = start;
                while asleep.recv().is_ok() {
                    // Everything written before the flush starts is clean when it returns.
                    let upto = start + written.load(Ordering::Relaxed);
                    // Best effort: the commit's fsync is the one that must succeed.
                    if clone.sync_data().is_ok() && uncached {
                        drop_cached(&clone, dropped, upto);
                        dropped = upto;
                    }
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

/// Drops the clean pages of `file` in `from..to` from the page cache (best effort).
#[cfg(target_os = "linux")]
fn drop_cached(file: &File, from: u64, to: u64) {
    if let Some(len) = std::num::NonZeroU64::new(to.saturating_sub(from)) {
        let _ = rustix::fs::fadvise(file, from, Some(len), rustix::fs::Advice::DontNeed);
    }
}

#[cfg(not(target_os = "linux"))]
fn drop_cached(_file: &File, _from: u64, _to: u64) {}

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

    #[test]
    fn an_uncached_writeback_keeps_every_byte() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let mut file = File::create(&path).unwrap();
        // Writes that start at an offset (a resumed partial): nothing before it is touched.
        file.write_all(b"head").unwrap();
        let mut writeback = Writeback::uncached();
        let mut expected = b"head".to_vec();
        for i in 0..(WRITEBACK_EVERY >> 20) * 3 + 1 {
            let chunk = vec![u8::try_from(i % 251).unwrap(); 1 << 20];
            file.write_all(&chunk).unwrap();
            writeback.written(&file, chunk.len() as u64);
            expected.extend_from_slice(&chunk);
        }
        writeback.finish();
        file.sync_all().unwrap();
        drop(file);
        assert!(std::fs::read(&path).unwrap() == expected, "the file reads back byte for byte");
    }
}
