//! Writing a file's data to disk *without* committing the file system's journal.
//!
//! `fsync` does two things: it writes the file's dirty pages and then commits the journal
//! (a device cache flush). Early writeback only needs the first: start the disk on what has
//! arrived so far ([`start_write_out`]) or wait until all of it is written ([`write_out`]), and
//! leave the one commit to the fsync a reply waits for. `sync_file_range` is that first half;
//! std and the safe syscall crates (rustix, nix) do not offer it, hence the one `unsafe` call
//! below. Neither function makes anything durable.

use std::fs::File;
use std::io;

/// Writes every dirty page of `file` to the device and waits for it, without a journal
/// commit: see the module docs. Not a durability guarantee on its own.
///
/// # Errors
/// The I/O error the writeback reported.
pub fn write_out(file: &File) -> io::Result<()> {
    sys::sync_file_range(file, 0, 0, sys::WAIT_ALL)
}

/// Writes the dirty pages of `file` in `[offset, offset + len)` to the device and waits for
/// them (and for writes already under way there), without a journal commit.
///
/// # Errors
/// The I/O error the writeback reported.
pub fn write_out_range(file: &File, offset: u64, len: u64) -> io::Result<()> {
    sys::sync_file_range(file, offset, len, sys::WAIT_ALL)
}

/// Starts writing `file`'s dirty pages in `[offset, offset + len)` to the device and returns
/// at once (`len` 0: to the end). For early writeback of large files.
///
/// # Errors
/// The I/O error starting it.
pub fn start_write_out(file: &File, offset: u64, len: u64) -> io::Result<()> {
    sys::sync_file_range(file, offset, len, sys::START_ONLY)
}

#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
mod sys {
    use std::fs::File;
    use std::io;
    use std::os::fd::AsRawFd;

    pub const WAIT_ALL: u32 =
        libc::SYNC_FILE_RANGE_WAIT_BEFORE | libc::SYNC_FILE_RANGE_WRITE | libc::SYNC_FILE_RANGE_WAIT_AFTER;
    pub const START_ONLY: u32 = libc::SYNC_FILE_RANGE_WRITE;

    pub fn sync_file_range(file: &File, offset: u64, len: u64, flags: u32) -> io::Result<()> {
        let (Ok(offset), Ok(len)) = (i64::try_from(offset), i64::try_from(len)) else {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "range beyond i64"));
        };
        // SAFETY: the descriptor is borrowed from a live `File` for the whole call, and the
        // call takes no pointers.
        let rc = unsafe { libc::sync_file_range(file.as_raw_fd(), offset, len, flags) };
        if rc == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
    }
}

#[cfg(not(target_os = "linux"))]
mod sys {
    use std::fs::File;
    use std::io;

    pub const WAIT_ALL: u32 = 1;
    pub const START_ONLY: u32 = 0;

    /// Elsewhere: a full data sync when asked to wait (correct, just slower), nothing otherwise.
    pub fn sync_file_range(file: &File, _offset: u64, _len: u64, flags: u32) -> io::Result<()> {
        if flags == WAIT_ALL { file.sync_data() } else { Ok(()) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn writes_out_a_file_and_a_range() {
        let dir = tempfile::tempdir().unwrap();
        let mut file = File::create(dir.path().join("f")).unwrap();
        file.write_all(&[7u8; 1 << 16]).unwrap();
        start_write_out(&file, 0, 1 << 15).unwrap();
        write_out(&file).unwrap();
        assert_eq!(std::fs::read(dir.path().join("f")).unwrap(), vec![7u8; 1 << 16]);
    }
}
