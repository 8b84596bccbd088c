//! The FUSE side: every operation is passed to the backing directory and charged to the
//! [`Model`](crate::model::Model); after a power cut every operation fails with `EIO`.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use fuser::{
    FileAttr, FileType, Filesystem, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry,
    ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr, Request, TimeOrNow,
};

use crate::model::{Change, Content, Model};

/// How long the kernel may cache names and attributes. Every change goes through us, so
/// the kernel's own caching stays right.
const TTL: Duration = Duration::from_secs(1);

/// The file system a session serves.
pub struct CrashFs {
    pub(crate) backing: PathBuf,
    pub(crate) model: Arc<Mutex<Model>>,
    handles: HashMap<u64, (u64, File)>,
    next_fh: u64,
}

type Result<T> = std::result::Result<T, libc::c_int>;

fn errno(err: &io::Error) -> libc::c_int {
    err.raw_os_error().unwrap_or(libc::EIO)
}

fn kind(meta: &std::fs::Metadata) -> FileType {
    let t = meta.file_type();
    if t.is_dir() {
        FileType::Directory
    } else if t.is_symlink() {
        FileType::Symlink
    } else {
        FileType::RegularFile
    }
}

fn attr(ino: u64, meta: &std::fs::Metadata) -> FileAttr {
    let time = |secs: i64, nsecs: i64| {
        SystemTime::UNIX_EPOCH + Duration::new(secs.max(0) as u64, nsecs.clamp(0, 999_999_999) as u32)
    };
    FileAttr {
        ino,
        size: meta.len(),
        blocks: meta.blocks(),
        atime: time(meta.atime(), meta.atime_nsec()),
        mtime: time(meta.mtime(), meta.mtime_nsec()),
        ctime: time(meta.ctime(), meta.ctime_nsec()),
        crtime: time(meta.ctime(), meta.ctime_nsec()),
        kind: kind(meta),
        perm: (meta.mode() & 0o7777) as u16,
        nlink: meta.nlink() as u32,
        uid: meta.uid(),
        gid: meta.gid(),
        rdev: 0,
        blksize: 4096,
        flags: 0,
    }
}

impl CrashFs {
    pub(crate) fn new(backing: PathBuf, model: Arc<Mutex<Model>>) -> Self {
        Self { backing, model, handles: HashMap::new(), next_fh: 1 }
    }

    /// The model, or `EIO` once the power is cut.
    fn live(&self) -> Result<MutexGuard<'_, Model>> {
        let model = self.model.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if model.frozen { Err(libc::EIO) } else { Ok(model) }
    }

    fn path(model: &Model, backing: &Path, ino: u64) -> Result<PathBuf> {
        model.path(backing, ino).ok_or(libc::ENOENT)
    }

    fn stat(model: &Model, backing: &Path, ino: u64) -> Result<FileAttr> {
        let path = Self::path(model, backing, ino)?;
        let meta = std::fs::symlink_metadata(path).map_err(|e| errno(&e))?;
        Ok(attr(ino, &meta))
    }

    fn lookup_in(&self, parent: u64, name: &OsStr) -> Result<FileAttr> {
        let mut model = self.live()?;
        let ino = *model.node(parent).children.get(name).ok_or(libc::ENOENT)?;
        Self::stat(&model, &self.backing, ino)
    }

    fn open_handle(&mut self, ino: u64, path: &Path, flags: i32, create: Option<u32>) -> Result<u64> {
        let access = flags & libc::O_ACCMODE;
        let mut options = OpenOptions::new();
        options
            .read(access == libc::O_RDONLY || access == libc::O_RDWR)
            .write(access != libc::O_RDONLY)
            // Appends arrive with their offset; the backing file must not append on its own.
            .custom_flags(flags & !(libc::O_APPEND | libc::O_ACCMODE | libc::O_CREAT | libc::O_EXCL | libc::O_TRUNC));
        if let Some(mode) = create {
            options.create_new(true).mode(mode);
        }
        let file = options.open(path).map_err(|e| errno(&e))?;
        let fh = self.next_fh;
        self.next_fh += 1;
        self.handles.insert(fh, (ino, file));
        Ok(fh)
    }

    fn file(&self, fh: u64) -> Result<&File> {
        self.handles.get(&fh).map(|(_, f)| f).ok_or(libc::EBADF)
    }

    fn do_mkdir(&mut self, parent: u64, name: &OsStr, mode: u32) -> Result<FileAttr> {
        let mut model = self.live()?;
        let path = Self::path(&model, &self.backing, parent)?.join(name);
        std::fs::DirBuilder::new().mode(mode).create(&path).map_err(|e| errno(&e))?;
        let ino = model.add(parent, name.to_owned(), true, Content::Dir(Default::default()));
        let meta = std::fs::symlink_metadata(&path).map_err(|e| errno(&e))?;
        Ok(attr(ino, &meta))
    }

    fn do_create(&mut self, parent: u64, name: &OsStr, mode: u32, flags: i32) -> Result<(FileAttr, u64)> {
        let (path, existing) = {
            let mut model = self.live()?;
            let path = Self::path(&model, &self.backing, parent)?.join(name);
            (path, model.node(parent).children.get(name).copied())
        };
        if let Some(ino) = existing {
            if flags & libc::O_EXCL != 0 {
                return Err(libc::EEXIST);
            }
            let fh = self.do_open(ino, flags)?;
            let model = self.live()?;
            return Ok((Self::stat(&model, &self.backing, ino)?, fh));
        }
        let fh = self.open_handle(0, &path, flags, Some(mode))?;
        let mut model = self.live()?;
        let ino = model.add(parent, name.to_owned(), false, Content::new_file(0));
        model.change(ino, Change::Mode(mode & 0o7777));
        drop(model);
        if let Some(handle) = self.handles.get_mut(&fh) {
            handle.0 = ino;
        }
        let model = self.live()?;
        Ok((Self::stat(&model, &self.backing, ino)?, fh))
    }

    fn do_open(&mut self, ino: u64, flags: i32) -> Result<u64> {
        let path = {
            let model = self.live()?;
            Self::path(&model, &self.backing, ino)?
        };
        let fh = self.open_handle(ino, &path, flags, None)?;
        if flags & libc::O_TRUNC != 0 {
            self.file(fh)?.set_len(0).map_err(|e| errno(&e))?;
            self.live()?.change(ino, Change::Truncate(0));
        }
        Ok(fh)
    }

    fn do_unlink(&mut self, parent: u64, name: &OsStr, dir: bool) -> Result<()> {
        let mut model = self.live()?;
        let path = Self::path(&model, &self.backing, parent)?.join(name);
        let result = if dir { std::fs::remove_dir(&path) } else { std::fs::remove_file(&path) };
        result.map_err(|e| errno(&e))?;
        model.unlink(parent, &name.to_owned());
        Ok(())
    }

    fn do_rename(&mut self, parent: u64, name: &OsStr, newparent: u64, newname: &OsStr, flags: u32) -> Result<()> {
        if flags & !libc::RENAME_NOREPLACE != 0 {
            return Err(libc::EINVAL);
        }
        let mut model = self.live()?;
        let from = Self::path(&model, &self.backing, parent)?.join(name);
        let to = Self::path(&model, &self.backing, newparent)?.join(newname);
        if flags & libc::RENAME_NOREPLACE != 0 && std::fs::symlink_metadata(&to).is_ok() {
            return Err(libc::EEXIST);
        }
        std::fs::rename(&from, &to).map_err(|e| errno(&e))?;
        let ino = model.unlink(parent, &name.to_owned()).ok_or(libc::ENOENT)?;
        model.link(newparent, newname.to_owned(), ino);
        Ok(())
    }

    fn do_setattr(
        &mut self,
        ino: u64,
        mode: Option<u32>,
        size: Option<u64>,
        mtime: Option<TimeOrNow>,
    ) -> Result<FileAttr> {
        let mut model = self.live()?;
        let path = Self::path(&model, &self.backing, ino)?;
        if let Some(size) = size {
            OpenOptions::new().write(true).open(&path).and_then(|f| f.set_len(size)).map_err(|e| errno(&e))?;
            model.change(ino, Change::Truncate(size));
        }
        if let Some(mode) = mode {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode & 0o7777)).map_err(|e| errno(&e))?;
            model.change(ino, Change::Mode(mode & 0o7777));
        }
        if let Some(mtime) = mtime {
            let time = match mtime {
                TimeOrNow::SpecificTime(t) => t,
                TimeOrNow::Now => SystemTime::now(),
            };
            let file = File::options().write(true).open(&path).or_else(|_| File::open(&path));
            file.and_then(|f| f.set_modified(time)).map_err(|e| errno(&e))?;
            model.change(ino, Change::Mtime(time));
        }
        Self::stat(&model, &self.backing, ino)
    }

    fn do_readdir(&self, ino: u64) -> Result<Vec<(u64, FileType, OsString)>> {
        let mut model = self.live()?;
        let children: Vec<(OsString, u64)> = model.node(ino).children.iter().map(|(n, i)| (n.clone(), *i)).collect();
        let mut out = vec![(ino, FileType::Directory, ".".into()), (ino, FileType::Directory, "..".into())];
        for (name, child) in children {
            let kind = if model.node(child).is_dir { FileType::Directory } else { FileType::RegularFile };
            out.push((child, kind, name));
        }
        Ok(out)
    }

    fn do_xattr(&mut self, ino: u64, name: &OsStr, value: Option<&[u8]>) -> Result<()> {
        let mut model = self.live()?;
        let path = Self::path(&model, &self.backing, ino)?;
        match value {
            Some(value) => {
                xattr::set(&path, name, value).map_err(|e| errno(&e))?;
                model.change(ino, Change::SetXattr(name.to_owned(), value.to_vec()));
            }
            None => {
                xattr::remove(&path, name).map_err(|e| errno(&e))?;
                model.change(ino, Change::RemoveXattr(name.to_owned()));
            }
        }
        Ok(())
    }

    fn xattr_path(&self, ino: u64) -> Result<PathBuf> {
        let model = self.live()?;
        Self::path(&model, &self.backing, ino)
    }
}

fn sized(reply: ReplyXattr, data: &[u8], size: u32) {
    if size == 0 {
        reply.size(data.len() as u32);
    } else if data.len() > size as usize {
        reply.error(libc::ERANGE);
    } else {
        reply.data(data);
    }
}

fn empty(reply: ReplyEmpty, result: Result<()>) {
    match result {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(e),
    }
}

fn entry(reply: ReplyEntry, result: Result<FileAttr>) {
    match result {
        Ok(attr) => reply.entry(&TTL, &attr, 0),
        Err(e) => reply.error(e),
    }
}

impl Filesystem for CrashFs {
    fn lookup(&mut self, _req: &Request<'_>, parent: u64, name: &OsStr, reply: ReplyEntry) {
        entry(reply, self.lookup_in(parent, name));
    }

    fn getattr(&mut self, _req: &Request<'_>, ino: u64, _fh: Option<u64>, reply: ReplyAttr) {
        match self.live().and_then(|model| Self::stat(&model, &self.backing, ino)) {
            Ok(attr) => reply.attr(&TTL, &attr),
            Err(e) => reply.error(e),
        }
    }

    fn setattr(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<u64>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<u32>,
        reply: ReplyAttr,
    ) {
        match self.do_setattr(ino, mode, size, mtime) {
            Ok(attr) => reply.attr(&TTL, &attr),
            Err(e) => reply.error(e),
        }
    }

    fn readlink(&mut self, _req: &Request<'_>, ino: u64, reply: ReplyData) {
        match self.xattr_path(ino).and_then(|p| std::fs::read_link(p).map_err(|e| errno(&e))) {
            Ok(target) => reply.data(target.as_os_str().as_encoded_bytes()),
            Err(e) => reply.error(e),
        }
    }

    fn mkdir(&mut self, _req: &Request<'_>, parent: u64, name: &OsStr, mode: u32, umask: u32, reply: ReplyEntry) {
        entry(reply, self.do_mkdir(parent, name, mode & !umask));
    }

    fn unlink(&mut self, _req: &Request<'_>, parent: u64, name: &OsStr, reply: ReplyEmpty) {
        empty(reply, self.do_unlink(parent, name, false));
    }

    fn rmdir(&mut self, _req: &Request<'_>, parent: u64, name: &OsStr, reply: ReplyEmpty) {
        empty(reply, self.do_unlink(parent, name, true));
    }

    fn symlink(&mut self, _req: &Request<'_>, parent: u64, link_name: &OsStr, target: &Path, reply: ReplyEntry) {
        let result = (|| {
            let mut model = self.live()?;
            let path = Self::path(&model, &self.backing, parent)?.join(link_name);
            std::os::unix::fs::symlink(target, &path).map_err(|e| errno(&e))?;
            let ino = model.add(parent, link_name.to_owned(), false, Content::Symlink(target.to_path_buf()));
            model.sync(ino); // a link's target is written with it
            let meta = std::fs::symlink_metadata(&path).map_err(|e| errno(&e))?;
            Ok(attr(ino, &meta))
        })();
        entry(reply, result);
    }

    fn rename(
        &mut self,
        _req: &Request<'_>,
        parent: u64,
        name: &OsStr,
        newparent: u64,
        newname: &OsStr,
        flags: u32,
        reply: ReplyEmpty,
    ) {
        empty(reply, self.do_rename(parent, name, newparent, newname, flags));
    }

    fn link(&mut self, _req: &Request<'_>, ino: u64, newparent: u64, newname: &OsStr, reply: ReplyEntry) {
        let result = (|| {
            let mut model = self.live()?;
            let from = Self::path(&model, &self.backing, ino)?;
            let to = Self::path(&model, &self.backing, newparent)?.join(newname);
            std::fs::hard_link(&from, &to).map_err(|e| errno(&e))?;
            model.link(newparent, newname.to_owned(), ino);
            Self::stat(&model, &self.backing, ino)
        })();
        entry(reply, result);
    }

    fn open(&mut self, _req: &Request<'_>, ino: u64, flags: i32, reply: ReplyOpen) {
        match self.do_open(ino, flags) {
            Ok(fh) => reply.opened(fh, 0),
            Err(e) => reply.error(e),
        }
    }

    fn read(
        &mut self,
        _req: &Request<'_>,
        _ino: u64,
        fh: u64,
        offset: i64,
        size: u32,
        _flags: i32,
        _lock_owner: Option<u64>,
        reply: ReplyData,
    ) {
        let result = self.live().map(drop).and_then(|()| {
            let file = self.file(fh)?;
            let mut buf = vec![0u8; size as usize];
            let mut filled = 0;
            while filled < buf.len() {
                match file.read_at(&mut buf[filled..], offset as u64 + filled as u64) {
                    Ok(0) => break,
                    Ok(n) => filled += n,
                    Err(e) => return Err(errno(&e)),
                }
            }
            buf.truncate(filled);
            Ok(buf)
        });
        match result {
            Ok(data) => reply.data(&data),
            Err(e) => reply.error(e),
        }
    }

    fn write(
        &mut self,
        _req: &Request<'_>,
        _ino: u64,
        fh: u64,
        offset: i64,
        data: &[u8],
        _write_flags: u32,
        _flags: i32,
        _lock_owner: Option<u64>,
        reply: ReplyWrite,
    ) {
        let result = (|| {
            let mut model = self.live()?;
            let (ino, file) = self.handles.get(&fh).ok_or(libc::EBADF)?;
            file.write_all_at(data, offset as u64).map_err(|e| errno(&e))?;
            model.change(*ino, Change::Write(offset as u64, data.to_vec()));
            Ok(())
        })();
        match result {
            Ok(()) => reply.written(data.len() as u32),
            Err(e) => reply.error(e),
        }
    }

    fn flush(&mut self, _req: &Request<'_>, _ino: u64, _fh: u64, _lock_owner: u64, reply: ReplyEmpty) {
        empty(reply, self.live().map(drop));
    }

    fn release(
        &mut self,
        _req: &Request<'_>,
        _ino: u64,
        fh: u64,
        _flags: i32,
        _lock_owner: Option<u64>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.handles.remove(&fh);
        reply.ok();
    }

    fn fsync(&mut self, _req: &Request<'_>, ino: u64, _fh: u64, _datasync: bool, reply: ReplyEmpty) {
        empty(reply, self.live().map(|mut model| model.sync(ino)));
    }

    fn opendir(&mut self, _req: &Request<'_>, _ino: u64, _flags: i32, reply: ReplyOpen) {
        match self.live() {
            Ok(_) => reply.opened(0, 0),
            Err(e) => reply.error(e),
        }
    }

    fn readdir(&mut self, _req: &Request<'_>, ino: u64, _fh: u64, offset: i64, mut reply: ReplyDirectory) {
        match self.do_readdir(ino) {
            Ok(entries) => {
                for (i, (child, kind, name)) in entries.into_iter().enumerate().skip(offset as usize) {
                    if reply.add(child, (i + 1) as i64, kind, name) {
                        break;
                    }
                }
                reply.ok();
            }
            Err(e) => reply.error(e),
        }
    }

    fn fsyncdir(&mut self, _req: &Request<'_>, ino: u64, _fh: u64, _datasync: bool, reply: ReplyEmpty) {
        let slow = match self.live() {
            Err(e) => return reply.error(e),
            Ok(model) => match &model.slow_dir {
                Some((dir, delay))
                    if model.path(&self.backing, ino).as_deref() == Some(self.backing.join(dir).as_path()) =>
                {
                    Some(*delay)
                }
                _ => None,
            },
        };
        let Some(delay) = slow else {
            return empty(reply, self.live().map(|mut model| model.sync(ino)));
        };
        // Answered later from another thread, so other requests go on meanwhile (as they do
        // while a real disk is busy); it takes effect when it answers, unless the power is cut.
        let model = Arc::clone(&self.model);
        std::thread::spawn(move || {
            std::thread::sleep(delay);
            let mut model = model.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            if model.frozen {
                reply.error(libc::EIO);
            } else {
                model.sync(ino);
                reply.ok();
            }
        });
    }

    fn statfs(&mut self, _req: &Request<'_>, _ino: u64, reply: ReplyStatfs) {
        reply.statfs(1 << 28, 1 << 27, 1 << 27, 1 << 24, 1 << 23, 4096, 255, 4096);
    }

    fn setxattr(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        name: &OsStr,
        value: &[u8],
        _flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        empty(reply, self.do_xattr(ino, name, Some(value)));
    }

    fn getxattr(&mut self, _req: &Request<'_>, ino: u64, name: &OsStr, size: u32, reply: ReplyXattr) {
        match self.xattr_path(ino).and_then(|p| xattr::get(p, name).map_err(|e| errno(&e))) {
            Ok(Some(value)) => sized(reply, &value, size),
            Ok(None) => reply.error(libc::ENODATA),
            Err(e) => reply.error(e),
        }
    }

    fn listxattr(&mut self, _req: &Request<'_>, ino: u64, size: u32, reply: ReplyXattr) {
        match self.xattr_path(ino).and_then(|p| xattr::list(p).map_err(|e| errno(&e))) {
            Ok(names) => {
                let mut data = Vec::new();
                for name in names {
                    data.extend_from_slice(name.as_encoded_bytes());
                    data.push(0);
                }
                sized(reply, &data, size);
            }
            Err(e) => reply.error(e),
        }
    }

    fn removexattr(&mut self, _req: &Request<'_>, ino: u64, name: &OsStr, reply: ReplyEmpty) {
        empty(reply, self.do_xattr(ino, name, None));
    }

    fn access(&mut self, _req: &Request<'_>, _ino: u64, _mask: i32, reply: ReplyEmpty) {
        empty(reply, self.live().map(drop));
    }

    fn create(
        &mut self,
        _req: &Request<'_>,
        parent: u64,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        match self.do_create(parent, name, mode & !umask, flags) {
            Ok((attr, fh)) => reply.created(&TTL, &attr, 0, fh, 0),
            Err(e) => reply.error(e),
        }
    }
}
