//! Multipart uploads on disk, assembled in place when their parts have one size.
//!
//! The AWS SDKs, TiKV and BR upload parts of one fixed size (only the last is shorter). The
//! first part of at least 5 MiB whose length is declared fixes the upload's part size `P`;
//! from then on part `N` of length `<= P` is written straight to offset `(N-1) x P` of one
//! assembly file, and Complete of parts `1..=k` in that shape only truncates the file to its
//! size, stores the object's record and renames it: no byte is copied. A part that cannot go
//! in place — no length declared, `P` not known yet (a short last part sent first), a part
//! uploaded again (its region may already be named by a record) — goes to a file of its own;
//! if it has its slot's size, Complete copies just it into the slot. Other shapes — a part
//! longer than `P`, a Complete naming a subset with gaps — are concatenated into a new file.
//! Copies use `copy_file_range` (std's `io::copy` between files), in the kernel, which
//! reflinks on XFS and Btrfs.
//!
//! Layout of `.depot/uploads/<id>/`:
//!
//! ```text
//! upload.json          what CreateMultipartUpload was told (written by s3/multipart.rs)
//! part-size            P, written once (hard link of a complete temp file, so never torn)
//! assembly             the object being assembled; holes where parts have not arrived
//! parts.log            the parts' records, one JSON line each (size, ETag, checksums, where
//!                      its bytes are); the last line of a number wins
//! 00007-<random>.data  part 7's bytes, when they could not go in place
//! ```
//!
//! A part is durable before its 200: its bytes are fsynced (the assembly's `fdatasync`, or
//! the data file's commit), then its record is appended to `parts.log` and that is
//! `fdatasync`ed: one journal commit, where a file per record cost two (the file, then its
//! directory entry) on every part of a sequential upload. A line is trusted only whole (ends
//! in a newline and parses), so a crash mid-append loses only the part not yet answered.
//! Bytes without a record are never read, so a crash or a failed body mid-part leaves nothing
//! that counts. A record's region is never written again: a re-upload of a part that has a
//! record goes to a data file, and only after the new record is committed is the old data
//! file removed. Complete never truncates away a part that has a record but is not in the
//! object (it concatenates instead), so a Complete interrupted by a crash can be retried with
//! any parts. Writers in place are tracked in memory (one server per archive): a part number
//! is written in place by one request at a time, and Complete renames the assembly only when
//! no writer holds it open.
//!
//! Whole-object CRCs are combined from the parts' CRCs (`crc-fast`'s `checksum_combine`), so
//! Complete reads no data either way, unless a part was uploaded without the CRC asked for.

use std::collections::{HashMap, HashSet};
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use depot_fs::{CommitError, TempFile};
use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::body::Sink;
use crate::digest::Algorithm;
use crate::meta::StoredChecksum;

/// S3's minimum size of every part but the last.
pub const MIN_PART: u64 = 5 * 1024 * 1024;
/// S3's largest object: beyond it an offset cannot be a real part's.
const MAX_OBJECT: u64 = 5 * 1024 * 1024 * 1024 * 1024;
const ASSEMBLY: &str = "assembly";
const PART_SIZE: &str = "part-size";
const PARTS_LOG: &str = "parts.log";

/// What is known about one stored part (a line of `parts.log`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PartRecord {
    /// The part number.
    pub number: i32,
    /// Its length in bytes.
    pub size: u64,
    /// Its ETag, without quotes.
    pub etag: String,
    /// The checksum the client sent (or CRC64-NVME when it sent none).
    pub checksum: StoredChecksum,
    /// CRC64-NVME of the part (base64), always: the object's checksum when none was asked for.
    pub crc64nvme: String,
    /// Where its bytes are.
    pub at: Placement,
    /// When the record was written.
    #[serde(with = "unix_millis", default = "epoch")]
    pub modified: SystemTime,
}

fn epoch() -> SystemTime {
    SystemTime::UNIX_EPOCH
}

/// A time as milliseconds since the epoch (what ListParts reports has second precision).
mod unix_millis {
    use std::time::{Duration, SystemTime};

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(time: &SystemTime, out: S) -> Result<S::Ok, S::Error> {
        let millis = time.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_millis();
        out.serialize_u64(u64::try_from(millis).unwrap_or(u64::MAX))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(input: D) -> Result<SystemTime, D::Error> {
        Ok(SystemTime::UNIX_EPOCH + Duration::from_millis(u64::deserialize(input)?))
    }
}

/// Where a part's bytes are.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Placement {
    /// In the assembly file, at this offset.
    Assembly {
        /// Byte offset in `assembly`.
        offset: u64,
    },
    /// In a data file of its own, in the upload directory.
    File {
        /// The file's name.
        name: String,
    },
}

/// Who is writing in place, per upload (in memory: one server per archive).
#[derive(Debug, Default)]
struct Live {
    /// Part numbers being written into the assembly right now.
    writers: HashSet<i32>,
    /// A Complete (or the expiry sweep) owns the upload.
    closing: bool,
}

/// The part numbers an upload's `parts.log` records, read incrementally: `begin_part` asks
/// on every part, and re-reading the whole log each time made an upload of N parts cost
/// O(N²) (a few ms per part at 10,000 parts).
#[derive(Debug, Default)]
struct Recorded {
    /// The log's bytes up to here (the end of its last whole line) are in `numbers`.
    read_to: u64,
    numbers: HashSet<i32>,
}

/// Beyond this many uploads' indexes the cache starts over (costing re-reads, never
/// correctness).
const MAX_INDEXED: usize = 4096;

/// The multipart uploads of an archive.
#[derive(Debug)]
pub struct Uploads {
    dir: PathBuf,
    live: Mutex<HashMap<String, Live>>,
    recorded: Mutex<HashMap<String, Recorded>>,
}

impl Uploads {
    /// The uploads kept in `dir` (`.depot/uploads`).
    pub fn new(dir: PathBuf) -> Self {
        Self { dir, live: Mutex::new(HashMap::new()), recorded: Mutex::new(HashMap::new()) }
    }

    /// Drops what is cached about upload `id` (aborted, completed or expired).
    pub fn forget(&self, id: &str) {
        self.recorded.lock().unwrap_or_else(std::sync::PoisonError::into_inner).remove(id);
    }

    /// Whether upload `id` (kept in `dir`) has a record of part `number`, reading only what
    /// its log gained since the last call (one server per archive appends to it).
    fn has_record(&self, id: &str, dir: &Path, number: i32) -> io::Result<bool> {
        let log = match File::open(dir.join(PARTS_LOG)) {
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(false),
            result => result?,
        };
        let len = log.metadata()?.len();
        let mut all = self.recorded.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if all.len() >= MAX_INDEXED && !all.contains_key(id) {
            all.clear();
        }
        let index = all.entry(id.to_owned()).or_default();
        if len < index.read_to {
            *index = Recorded::default(); // not appended to: read it again
        }
        if len > index.read_to {
            let mut fresh = vec![0; usize::try_from(len - index.read_to).map_err(io::Error::other)?];
            log.read_exact_at(&mut fresh, index.read_to)?;
            // Only whole lines: a torn last line (a crash, or an append in progress) waits.
            let whole = fresh.iter().rposition(|b| *b == b'\n').map_or(0, |at| at + 1);
            for line in fresh[..whole].split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
                if let Ok(record) = serde_json::from_slice::<PartRecord>(line) {
                    index.numbers.insert(record.number);
                }
            }
            index.read_to += whole as u64;
        }
        Ok(index.numbers.contains(&number))
    }

    /// The directory holding every upload.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn live(&self) -> MutexGuard<'_, HashMap<String, Live>> {
        self.live.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Where part `number` of upload `id` (kept in `dir`) should be written: a region of the
    /// assembly file when the part fits the upload's shape, else `None` (a temp file).
    ///
    /// # Errors
    /// The I/O error reading the upload's part size or opening its assembly file.
    pub fn begin_part(
        self: &Arc<Self>,
        id: &str,
        dir: &Path,
        number: i32,
        declared: Option<u64>,
    ) -> io::Result<Option<Region>> {
        let Some(len) = declared else { return Ok(None) };
        let Some(part_size) = part_size(dir, Some(len))? else { return Ok(None) };
        let offset = u64::try_from(number - 1).unwrap_or(u64::MAX).saturating_mul(part_size);
        if len > part_size || offset.saturating_add(len) > MAX_OBJECT || self.has_record(id, dir, number)? {
            return Ok(None);
        }
        {
            let mut live = self.live();
            let upload = live.entry(id.to_owned()).or_default();
            if upload.closing || !upload.writers.insert(number) {
                return Ok(None);
            }
        }
        let claim = Claim { uploads: Arc::clone(self), id: id.to_owned(), number };
        let file = OpenOptions::new().write(true).create(true).truncate(false).open(dir.join(ASSEMBLY))?;
        Ok(Some(Region { file, offset, len, written: 0, _claim: claim }))
    }

    /// Makes a received part of upload `id` (kept in `dir`) durable and records it (`record.at` is
    /// filled in here). Blocking.
    ///
    /// # Errors
    /// The I/O error; the part is then not stored (an earlier record of the number stays).
    pub fn store_part(&self, id: &str, dir: &Path, sink: PartSink, mut record: PartRecord) -> io::Result<()> {
        match sink {
            PartSink::InPlace(region) => {
                if region.written != region.len {
                    return Err(io::Error::other(format!(
                        "the part ended after {} of its declared {} bytes",
                        region.written, region.len
                    )));
                }
                region.file.sync_data()?;
                record.at = Placement::Assembly { offset: region.offset };
                append_record(dir, &record)
                // `region` (and its claim) is dropped only now, after the record exists.
            }
            PartSink::Separate(temp) => {
                let name = format!("{:05}-{:016x}.data", record.number, rand::rng().random::<u64>());
                temp.commit(&dir.join(&name)).map_err(commit_error)?;
                // The data file of the number's latest record, if any, goes once this one is
                // recorded. The index says whether there is one without reading the log, which is
                // read in full only then: part 10,000 costs what part 1 does.
                let previous = if self.has_record(id, dir, record.number)? {
                    records(dir)?.into_iter().find(|p| p.number == record.number)
                } else {
                    None
                };
                record.at = Placement::File { name };
                append_record(dir, &record)?;
                if let Some(PartRecord { at: Placement::File { name }, .. }) = previous {
                    let _ = std::fs::remove_file(dir.join(name));
                }
                Ok(())
            }
        }
    }

    /// Takes upload `id` for Complete: `None` when another Complete holds it. The answer says
    /// whether the assembly may be renamed (no part is being written into it).
    pub fn begin_complete(self: &Arc<Self>, id: &str) -> Option<Closing> {
        let mut live = self.live();
        let upload = live.entry(id.to_owned()).or_default();
        if upload.closing {
            return None;
        }
        upload.closing = true;
        let idle = upload.writers.is_empty();
        Some(Closing { uploads: Arc::clone(self), id: id.to_owned(), idle })
    }

    /// Removes every upload idle for longer than `max_idle` (no part or record written, no
    /// request in progress), returning what was removed.
    ///
    /// # Errors
    /// The I/O error reading the uploads directory (one upload that cannot be removed is
    /// logged and skipped).
    pub fn sweep_expired(self: &Arc<Self>, max_idle: Duration) -> io::Result<Vec<Expired>> {
        let entries = match std::fs::read_dir(&self.dir) {
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            result => result?,
        };
        let now = SystemTime::now();
        let mut expired = Vec::new();
        for entry in entries {
            let entry = entry?;
            let Some(id) = entry.file_name().to_str().map(str::to_owned) else { continue };
            let dir = entry.path();
            let Ok(meta) = std::fs::symlink_metadata(&dir) else { continue };
            if !meta.is_dir() {
                continue;
            }
            let last = [dir.clone(), dir.join(ASSEMBLY), dir.join(PARTS_LOG)]
                .iter()
                .filter_map(|p| p.metadata().and_then(|m| m.modified()).ok())
                .max()
                .unwrap_or(SystemTime::UNIX_EPOCH);
            let idle = now.duration_since(last).unwrap_or_default();
            if idle <= max_idle {
                continue;
            }
            let Some(closing) = self.begin_complete(&id) else { continue };
            if !closing.idle {
                continue;
            }
            let key = std::fs::read(dir.join("upload.json"))
                .ok()
                .and_then(|raw| serde_json::from_slice::<serde_json::Value>(&raw).ok())
                .and_then(|v| v.get("key").and_then(|k| k.as_str()).map(str::to_owned));
            let bytes = disk_usage(&dir);
            match depot_fs::remove_dir_durably(&dir) {
                Ok(()) => expired.push(Expired { id, key, idle, bytes }),
                Err(err) => tracing::warn!(dir = %dir.display(), %err, "cannot remove an expired multipart upload"),
            }
            drop(closing);
            self.live().remove(&entry.file_name().to_string_lossy().into_owned());
        }
        Ok(expired)
    }
}

/// An upload removed by [`Uploads::sweep_expired`].
#[derive(Debug, Clone)]
pub struct Expired {
    /// The upload id.
    pub id: String,
    /// The key it was for (when `upload.json` was readable).
    pub key: Option<String>,
    /// How long nothing had happened to it.
    pub idle: Duration,
    /// Disk space freed.
    pub bytes: u64,
}

/// Bytes allocated under `dir` (holes in the assembly do not count).
fn disk_usage(dir: &Path) -> u64 {
    walkdir::WalkDir::new(dir)
        .into_iter()
        .filter_map(Result::ok)
        .filter_map(|e| e.metadata().ok())
        .map(|m| m.blocks() * 512)
        .sum()
}

/// A part number claimed for writing in place; released on drop.
#[derive(Debug)]
struct Claim {
    uploads: Arc<Uploads>,
    id: String,
    number: i32,
}

impl Drop for Claim {
    fn drop(&mut self) {
        let mut live = self.uploads.live();
        if let Some(upload) = live.get_mut(&self.id) {
            upload.writers.remove(&self.number);
            if upload.writers.is_empty() && !upload.closing {
                live.remove(&self.id);
            }
        }
    }
}

/// An upload held by a Complete (or the sweep); released on drop.
#[derive(Debug)]
pub struct Closing {
    uploads: Arc<Uploads>,
    id: String,
    /// No part was being written in place when it was taken.
    idle: bool,
}

impl Closing {
    /// Whether no part was being written in place when the upload was taken.
    pub fn idle(&self) -> bool {
        self.idle
    }
}

impl Drop for Closing {
    fn drop(&mut self) {
        // Completed or expired (or to be retried: then its index is read again).
        self.uploads.forget(&self.id);
        let mut live = self.uploads.live();
        if let Some(upload) = live.get_mut(&self.id) {
            upload.closing = false;
            if upload.writers.is_empty() {
                live.remove(&self.id);
            }
        }
    }
}

/// A part's region of the assembly file.
#[derive(Debug)]
pub struct Region {
    file: File,
    offset: u64,
    /// The declared length: the region's end.
    len: u64,
    written: u64,
    _claim: Claim,
}

impl Sink for Region {
    fn write_batch(&mut self, batch: &[Bytes]) -> io::Result<()> {
        for chunk in batch {
            let end = self.written + chunk.len() as u64;
            if end > self.len {
                return Err(io::Error::other(format!("the part is longer than its declared {} bytes", self.len)));
            }
            self.file.write_all_at(chunk, self.offset + self.written)?;
            self.written = end;
        }
        Ok(())
    }

    fn file(&self) -> &File {
        &self.file
    }
}

/// Where a part's body goes while it arrives.
#[derive(Debug)]
pub enum PartSink {
    /// Straight into the assembly file.
    InPlace(Region),
    /// Into a temp file, to become the part's own data file.
    Separate(TempFile),
}

impl Sink for PartSink {
    fn write_batch(&mut self, batch: &[Bytes]) -> io::Result<()> {
        match self {
            Self::InPlace(region) => region.write_batch(batch),
            Self::Separate(temp) => temp.write_batch(batch),
        }
    }

    fn file(&self) -> &File {
        match self {
            Self::InPlace(region) => region.file(),
            Self::Separate(temp) => temp.file(),
        }
    }
}

impl PartSink {
    /// The file the body is written to (for error messages).
    pub fn path(&self, dir: &Path) -> PathBuf {
        match self {
            Self::InPlace(_) => dir.join(ASSEMBLY),
            Self::Separate(temp) => temp.path().to_path_buf(),
        }
    }
}

fn commit_error(err: CommitError) -> io::Error {
    match err {
        CommitError::Io { source, .. } => source,
        conflict @ CommitError::Conflict { .. } => io::Error::other(conflict.to_string()),
    }
}

/// Appends `record` to the upload's `parts.log` and makes it durable. The log is created by
/// the first part (then its directory entry is made durable too). One line goes out in one
/// `write` on an `O_APPEND` descriptor, so concurrent parts' lines do not interleave; it
/// starts with a newline too, so the rest of an append that failed half-way (a full disk)
/// stays a line of its own, skipped, and never spoils this record.
fn append_record(dir: &Path, record: &PartRecord) -> io::Result<()> {
    let mut line = vec![b'\n'];
    serde_json::to_writer(&mut line, record).map_err(io::Error::other)?;
    line.push(b'\n');
    let path = dir.join(PARTS_LOG);
    let (mut log, created) = match OpenOptions::new().append(true).create_new(true).open(&path) {
        Ok(log) => (log, true),
        Err(err) if err.kind() == io::ErrorKind::AlreadyExists => (OpenOptions::new().append(true).open(&path)?, false),
        Err(err) => return Err(err),
    };
    log.write_all(&line)?;
    log.sync_data()?;
    if created {
        depot_fs::sync_dir(dir)?;
    }
    Ok(())
}

/// The stored parts of the upload in `dir`, by number (a re-uploaded part's last record).
///
/// # Errors
/// The I/O error reading the log; [`io::ErrorKind::NotFound`] when the upload is gone.
pub fn records(dir: &Path) -> io::Result<Vec<PartRecord>> {
    let log = match std::fs::read(dir.join(PARTS_LOG)) {
        Err(err) if err.kind() == io::ErrorKind::NotFound && dir.is_dir() => return Ok(Vec::new()),
        result => result?,
    };
    let mut parts = std::collections::BTreeMap::new();
    // Only whole lines count: a crash mid-append leaves a torn last line, never answered.
    let whole = log.split_inclusive(|b| *b == b'\n').filter(|l| l.ends_with(b"\n") && l.len() > 1);
    for line in whole {
        match serde_json::from_slice::<PartRecord>(line) {
            Ok(record) => {
                parts.insert(record.number, record);
            }
            Err(err) => tracing::warn!(dir = %dir.display(), %err, "skipping an unreadable part record"),
        }
    }
    Ok(parts.into_values().collect())
}

/// The upload's part size, fixing it to `declared` (when at least [`MIN_PART`]) if no part
/// fixed it yet.
fn part_size(dir: &Path, declared: Option<u64>) -> io::Result<Option<u64>> {
    let path = dir.join(PART_SIZE);
    let read = |path: &Path| -> io::Result<Option<u64>> {
        match std::fs::read_to_string(path) {
            Ok(text) => Ok(text.trim().parse().ok()),
            Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(err) => Err(err),
        }
    };
    if let Some(size) = read(&path)? {
        return Ok(Some(size));
    }
    let Some(size) = declared.filter(|s| *s >= MIN_PART) else { return Ok(None) };
    let mut temp = TempFile::create_in(dir)?;
    temp.write_all(size.to_string().as_bytes())?;
    temp.file().sync_all()?;
    match std::fs::hard_link(temp.path(), &path) {
        Ok(()) => depot_fs::sync_dir(dir)?,
        Err(err) if err.kind() == io::ErrorKind::AlreadyExists => {} // a concurrent part was first
        Err(err) => return Err(err),
    }
    drop(temp);
    read(&path)
}

/// Builds the object from `chosen` (checked by the caller) and returns the file to install
/// and its size. When the parts are `1..=k`, all of the part size but the last, and no other
/// part has bytes in the assembly (and, `idle`, no writer holds it: [`Closing::idle`]), that
/// is the assembly file itself: parts that went to files of their own (a re-upload, a short
/// last part that came before the part size was known) are copied into their slots, and it is
/// truncated to its size. Otherwise the parts are concatenated into `temp`. Blocking.
///
/// # Errors
/// The I/O error; [`io::ErrorKind::NotFound`] when a part's bytes are gone (an upload
/// completed just before a crash).
pub fn assemble(
    dir: &Path,
    chosen: &[PartRecord],
    all: &[PartRecord],
    idle: bool,
    temp: TempFile,
) -> io::Result<(TempFile, u64)> {
    let total: u64 = chosen.iter().map(|p| p.size).sum();
    let assembly = dir.join(ASSEMBLY);
    if idle
        && let Some(part_size) = part_size(dir, None)?
        && in_shape(chosen, all, part_size)
    {
        if !assembly.is_file() && chosen.iter().any(|p| matches!(p.at, Placement::Assembly { .. })) {
            return Err(io::Error::new(io::ErrorKind::NotFound, "the upload's assembly file is gone"));
        }
        drop(temp);
        let file = TempFile::resumable(&assembly)?;
        for (i, part) in chosen.iter().enumerate() {
            if let Placement::File { name } = &part.at {
                copy_part(&File::open(dir.join(name))?, 0, part.size, file.file(), i as u64 * part_size)?;
            }
        }
        file.file().set_len(total)?;
        return Ok((file, total));
    }
    let mut source_assembly: Option<File> = None;
    let mut written = 0;
    for part in chosen {
        match &part.at {
            Placement::Assembly { offset } => {
                if source_assembly.is_none() {
                    source_assembly = Some(File::open(&assembly)?);
                }
                let source = source_assembly.as_ref().expect("opened");
                copy_part(source, *offset, part.size, temp.file(), written)?;
            }
            Placement::File { name } => copy_part(&File::open(dir.join(name))?, 0, part.size, temp.file(), written)?,
        }
        written += part.size;
    }
    Ok((temp, total))
}

/// Copies `len` bytes at `offset` of `source` to `out_offset` of `out`. std's `io::copy`
/// between two files is `copy_file_range` on Linux: the kernel moves (or reflinks) the bytes.
fn copy_part(mut source: &File, offset: u64, len: u64, mut out: &File, out_offset: u64) -> io::Result<()> {
    source.seek(SeekFrom::Start(offset))?;
    out.seek(SeekFrom::Start(out_offset))?;
    let copied = io::copy(&mut source.take(len), &mut out)?;
    if copied != len {
        return Err(io::Error::new(io::ErrorKind::UnexpectedEof, format!("a part holds {copied} of its {len} bytes")));
    }
    Ok(())
}

/// Whether `chosen` are parts `1..=k`, all but the last of `part_size` bytes, each in its
/// slot `(N-1) x part_size` or in a file of its own, and no other part has bytes in the
/// assembly.
fn in_shape(chosen: &[PartRecord], all: &[PartRecord], part_size: u64) -> bool {
    let last = chosen.len();
    let chosen_ok = chosen.iter().enumerate().all(|(i, p)| {
        let slot = i as u64 * part_size;
        p.number == i as i32 + 1
            && matches!(&p.at, Placement::File { .. }) | (p.at == Placement::Assembly { offset: slot })
            && (p.size == part_size || (i + 1 == last && p.size <= part_size))
    });
    let others_elsewhere =
        all.iter().filter(|p| p.number > last as i32).all(|p| !matches!(p.at, Placement::Assembly { .. }));
    !chosen.is_empty() && chosen_ok && others_elsewhere
}

/// The CRC `algorithm` of the concatenation of `parts` (base64), combined from the parts'
/// CRCs; a part stored without that CRC is read and hashed. `None` for SHA algorithms, which
/// do not combine. Blocking.
///
/// # Errors
/// The I/O error reading a part that must be hashed.
pub fn combined_crc(dir: &Path, parts: &[PartRecord], algorithm: Algorithm) -> io::Result<Option<String>> {
    let (crc_algorithm, width) = match algorithm {
        Algorithm::Crc32 => (crc_fast::CrcAlgorithm::Crc32IsoHdlc, 4),
        Algorithm::Crc32c => (crc_fast::CrcAlgorithm::Crc32Iscsi, 4),
        Algorithm::Crc64Nvme => (crc_fast::CrcAlgorithm::Crc64Nvme, 8),
        Algorithm::Sha1 | Algorithm::Sha256 => return Ok(None),
    };
    let mut combined = 0u64; // the CRC of nothing, for all three
    for part in parts {
        let stored = if algorithm == Algorithm::Crc64Nvme {
            Some(part.crc64nvme.as_str())
        } else {
            Some(part.checksum.value.as_str()).filter(|_| part.checksum.algorithm == algorithm.name())
        };
        let bytes = match stored.and_then(|v| BASE64.decode(v).ok()).filter(|b| b.len() == width) {
            Some(bytes) => bytes,
            None => hash_part(dir, part, algorithm)?,
        };
        let crc = bytes.iter().fold(0u64, |acc, b| acc << 8 | u64::from(*b));
        combined = crc_fast::checksum_combine(crc_algorithm, combined, crc, part.size);
    }
    let bytes = combined.to_be_bytes();
    Ok(Some(BASE64.encode(&bytes[8 - width..])))
}

/// Reads a part's bytes and digests them with `algorithm`.
fn hash_part(dir: &Path, part: &PartRecord, algorithm: Algorithm) -> io::Result<Vec<u8>> {
    let (mut file, offset) = match &part.at {
        Placement::Assembly { offset } => (File::open(dir.join(ASSEMBLY))?, *offset),
        Placement::File { name } => (File::open(dir.join(name))?, 0),
    };
    file.seek(SeekFrom::Start(offset))?;
    let mut hasher = algorithm.hasher();
    let mut reader = file.take(part.size);
    let mut buf = vec![0u8; 1024 * 1024];
    loop {
        let n = reader.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher.finalize())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(number: i32, size: u64, at: Placement) -> PartRecord {
        PartRecord {
            number,
            size,
            etag: String::new(),
            checksum: StoredChecksum {
                algorithm: "CRC64NVME".into(),
                value: String::new(),
                kind: "FULL_OBJECT".into(),
            },
            crc64nvme: String::new(),
            at,
            modified: SystemTime::UNIX_EPOCH,
        }
    }

    #[test]
    fn the_record_index_reads_only_new_whole_lines() {
        let dir = tempfile::tempdir().unwrap();
        let uploads = Uploads::new(dir.path().to_path_buf());
        let at = || Placement::Assembly { offset: 0 };
        assert!(!uploads.has_record("u", dir.path(), 1).unwrap(), "no log yet");
        append_record(dir.path(), &record(1, 5, at())).unwrap();
        assert!(uploads.has_record("u", dir.path(), 1).unwrap());
        assert!(!uploads.has_record("u", dir.path(), 2).unwrap());
        // A torn append (a crash mid-write) is not a record, and does not spoil the next one.
        let log = dir.path().join(PARTS_LOG);
        std::fs::OpenOptions::new().append(true).open(&log).unwrap().write_all(b"\n{\"number\":2,\"si").unwrap();
        assert!(!uploads.has_record("u", dir.path(), 2).unwrap());
        append_record(dir.path(), &record(3, 5, at())).unwrap();
        assert!(!uploads.has_record("u", dir.path(), 2).unwrap());
        assert!(uploads.has_record("u", dir.path(), 3).unwrap());
        assert_eq!(records(dir.path()).unwrap().iter().map(|r| r.number).collect::<Vec<_>>(), [1, 3]);
        uploads.forget("u");
        assert!(uploads.has_record("u", dir.path(), 1).unwrap(), "read again after forget");
    }

    #[test]
    fn a_part_stored_again_replaces_the_data_file_of_its_last_record() {
        let dir = tempfile::tempdir().unwrap();
        let uploads = Uploads::new(dir.path().to_path_buf());
        let store = |number: i32, bytes: &[u8]| {
            let mut temp = TempFile::create_in(dir.path()).unwrap();
            temp.write_all(bytes).unwrap();
            let at = Placement::File { name: String::new() };
            uploads
                .store_part("u", dir.path(), PartSink::Separate(temp), record(number, bytes.len() as u64, at))
                .unwrap();
        };
        let data_files = || {
            let mut names: Vec<String> = std::fs::read_dir(dir.path())
                .unwrap()
                .map(|e| e.unwrap().file_name().into_string().unwrap())
                .filter(|n| n.ends_with(".data"))
                .collect();
            names.sort();
            names
        };
        for round in 0..3u8 {
            store(1, &[round; 3]);
            store(2, &[9; 5]);
        }
        let files = data_files();
        assert_eq!(files.len(), 2, "one data file per part number: {files:?}");
        let parts = records(dir.path()).unwrap();
        for part in &parts {
            let Placement::File { name } = &part.at else { panic!("stored in a file of its own") };
            assert!(files.contains(name), "{name} is the recorded file");
        }
        let Placement::File { name } = &parts[0].at else { unreachable!() };
        assert_eq!(std::fs::read(dir.path().join(name)).unwrap(), [2; 3], "the last upload's bytes");
    }

    #[test]
    fn the_log_keeps_each_parts_last_whole_record() {
        let dir = tempfile::tempdir().unwrap();
        assert!(records(dir.path()).unwrap().is_empty(), "no log yet: no parts");
        append_record(dir.path(), &record(2, 7, Placement::Assembly { offset: 5 })).unwrap();
        append_record(dir.path(), &record(1, 5, Placement::Assembly { offset: 0 })).unwrap();
        // A re-upload of part 2 after an append that died half-way (a full disk).
        let log = dir.path().join(PARTS_LOG);
        let mut file = OpenOptions::new().append(true).open(&log).unwrap();
        file.write_all(b"\n{\"number\":2,\"si").unwrap();
        append_record(dir.path(), &record(2, 9, Placement::File { name: "b".into() })).unwrap();
        // A crash in the middle of the next append: a torn last line, never answered.
        file.write_all(b"\n{\"number\":3,\"size\":1").unwrap();
        let parts = records(dir.path()).unwrap();
        let seen: Vec<(i32, u64)> = parts.iter().map(|p| (p.number, p.size)).collect();
        assert_eq!(seen, [(1, 5), (2, 9)]);
        assert_eq!(parts[1].at, Placement::File { name: "b".into() });
        let gone = dir.path().join("gone");
        assert_eq!(records(&gone).unwrap_err().kind(), io::ErrorKind::NotFound, "a removed upload is not empty");
    }

    #[test]
    fn combined_crcs_equal_the_crc_of_the_whole() {
        let dir = tempfile::tempdir().unwrap();
        let data: Vec<u8> = (0..300_000u32).map(|i| (i * 7 + i / 13) as u8).collect();
        let cuts = [0usize, 100_000, 100_001, 250_000, 300_000];
        for algorithm in [Algorithm::Crc32, Algorithm::Crc32c, Algorithm::Crc64Nvme] {
            let parts: Vec<PartRecord> = cuts
                .windows(2)
                .enumerate()
                .map(|(i, w)| {
                    let name = format!("p{i}");
                    std::fs::write(dir.path().join(&name), &data[w[0]..w[1]]).unwrap();
                    let digest = BASE64.encode(algorithm.digest(&data[w[0]..w[1]]));
                    let mut part = record(i as i32 + 1, (w[1] - w[0]) as u64, Placement::File { name });
                    // Every other part without a stored CRC: read and hashed instead.
                    if i % 2 == 0 {
                        part.checksum.algorithm = algorithm.name().into();
                        part.checksum.value.clone_from(&digest);
                        part.crc64nvme = digest;
                    }
                    part
                })
                .collect();
            let whole = BASE64.encode(algorithm.digest(&data));
            assert_eq!(combined_crc(dir.path(), &parts, algorithm).unwrap(), Some(whole), "{algorithm:?}");
            let empty = BASE64.encode(algorithm.digest(b""));
            assert_eq!(combined_crc(dir.path(), &[], algorithm).unwrap(), Some(empty));
        }
        assert_eq!(combined_crc(dir.path(), &[], Algorithm::Sha256).unwrap(), None);
    }

    #[test]
    fn only_parts_one_to_k_of_the_part_size_are_in_shape() {
        let p = MIN_PART;
        let at = |n: u64| Placement::Assembly { offset: (n - 1) * p };
        let uniform = vec![record(1, p, at(1)), record(2, p, at(2)), record(3, 10, at(3))];
        assert!(in_shape(&uniform, &uniform, p));
        assert!(in_shape(&uniform[..2], &uniform[..2], p));
        // A short part that is not last, a gap, a part elsewhere, a stored part left out.
        let short_middle = vec![record(1, p, at(1)), record(2, 10, at(2)), record(3, p, at(3))];
        assert!(!in_shape(&short_middle, &short_middle, p));
        let gap = vec![record(1, p, at(1)), record(3, p, at(3))];
        assert!(!in_shape(&gap, &gap, p));
        // A part in a file of its own is copied into its slot, if it has the slot's size.
        let elsewhere = vec![record(1, p, at(1)), record(2, p, Placement::File { name: "x".into() })];
        assert!(in_shape(&elsewhere, &elsewhere, p));
        let longer = vec![record(1, p, at(1)), record(2, p + 1, Placement::File { name: "x".into() })];
        assert!(!in_shape(&longer, &longer, p));
        assert!(!in_shape(&uniform[..2], &uniform, p));
        assert!(!in_shape(&[], &[], p));
    }

    #[test]
    fn the_first_large_part_fixes_the_part_size_once() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(part_size(dir.path(), Some(10)).unwrap(), None);
        assert_eq!(part_size(dir.path(), Some(MIN_PART + 1)).unwrap(), Some(MIN_PART + 1));
        assert_eq!(part_size(dir.path(), Some(MIN_PART * 2)).unwrap(), Some(MIN_PART + 1));
        assert_eq!(part_size(dir.path(), None).unwrap(), Some(MIN_PART + 1));
    }
}
