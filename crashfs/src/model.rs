//! What is durable: per inode, the state at its last fsync plus the changes made since.
//!
//! Every change is charged to exactly one inode: a file's writes, truncations, extended
//! attributes, mode and mtime to the file; a directory entry created, renamed in or out,
//! unlinked or removed to the directory holding it (a rename is an unlink from one directory
//! and a link into another). `fsync` (or `fdatasync`) of an inode folds its pending changes
//! into its durable state. A power cut keeps the durable state of every inode reachable from
//! the root through durable entries — and, optionally, every pending change up to a random
//! point in the global order (a prefix, so no change survives without those before it).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ffi::OsString;
use std::io;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use rand::{Rng, SeedableRng};

/// The root directory's inode number (FUSE's).
pub const ROOT: u64 = 1;

/// An inode's content.
#[derive(Debug, Clone)]
pub enum Content {
    /// A directory: name → inode.
    Dir(BTreeMap<OsString, u64>),
    /// A regular file.
    File {
        /// Its bytes.
        data: Vec<u8>,
        /// Extended attributes.
        xattrs: BTreeMap<OsString, Vec<u8>>,
        /// Permission bits.
        mode: u32,
        /// Modification time, when set explicitly.
        mtime: Option<SystemTime>,
    },
    /// A symbolic link and its target.
    Symlink(PathBuf),
}

/// One change to one inode.
#[derive(Debug, Clone)]
pub enum Change {
    /// A directory entry now names an inode (create, mkdir, rename in, link).
    Link(OsString, u64),
    /// A directory entry is gone (unlink, rmdir, rename out).
    Unlink(OsString),
    /// Bytes written at an offset.
    Write(u64, Vec<u8>),
    /// The file's size set.
    Truncate(u64),
    /// An extended attribute set.
    SetXattr(OsString, Vec<u8>),
    /// An extended attribute removed.
    RemoveXattr(OsString),
    /// Permission bits set.
    Mode(u32),
    /// Modification time set.
    Mtime(SystemTime),
}

impl Content {
    fn apply(&mut self, change: &Change) {
        match (self, change) {
            (Content::Dir(entries), Change::Link(name, ino)) => {
                entries.insert(name.clone(), *ino);
            }
            (Content::Dir(entries), Change::Unlink(name)) => {
                entries.remove(name);
            }
            (Content::File { data, .. }, Change::Write(offset, bytes)) => {
                let (start, end) = (*offset as usize, *offset as usize + bytes.len());
                if data.len() < end {
                    data.resize(end, 0);
                }
                data[start..end].copy_from_slice(bytes);
            }
            (Content::File { data, .. }, Change::Truncate(len)) => data.resize(*len as usize, 0),
            (Content::File { xattrs, .. }, Change::SetXattr(name, value)) => {
                xattrs.insert(name.clone(), value.clone());
            }
            (Content::File { xattrs, .. }, Change::RemoveXattr(name)) => {
                xattrs.remove(name);
            }
            (Content::File { mode, .. }, Change::Mode(new)) => *mode = *new,
            (Content::File { mtime, .. }, Change::Mtime(new)) => *mtime = Some(*new),
            // Metadata of directories and links is not modelled.
            _ => {}
        }
    }

    /// An empty file or directory, as just created (nothing of it durable yet).
    pub fn new_file(mode: u32) -> Self {
        Content::File { data: Vec::new(), xattrs: BTreeMap::new(), mode, mtime: None }
    }
}

/// One inode: where it lives now, what is durable, and what is not yet.
#[derive(Debug)]
pub struct Node {
    /// The names it has now (directory inode, name); the first is its path.
    pub links: Vec<(u64, OsString)>,
    /// Its live entries, for a directory.
    pub children: BTreeMap<OsString, u64>,
    /// Whether it is a directory.
    pub is_dir: bool,
    /// Its state at its last fsync.
    pub durable: Content,
    /// Changes since, with their global sequence numbers.
    pub pending: Vec<(u64, Change)>,
}

/// The whole file system's durability state.
#[derive(Debug, Default)]
pub struct Model {
    /// Inodes by number.
    pub nodes: HashMap<u64, Node>,
    next_ino: u64,
    seq: u64,
    /// Set by a power cut: from then on every operation fails.
    pub frozen: bool,
    /// A slow disk: fsyncs of this directory (a path under the backing directory) answer
    /// only after this long, and take effect then.
    pub slow_dir: Option<(PathBuf, std::time::Duration)>,
}

impl Model {
    /// A model of the tree under `backing` as it is, all of it durable (a fresh boot).
    ///
    /// # Errors
    /// The I/O error reading it.
    pub fn scan(backing: &Path) -> io::Result<Self> {
        let mut model = Self { next_ino: ROOT + 1, ..Self::default() };
        let root = Node {
            links: Vec::new(),
            children: BTreeMap::new(),
            is_dir: true,
            durable: Content::Dir(BTreeMap::new()),
            pending: Vec::new(),
        };
        model.nodes.insert(ROOT, root);
        model.scan_dir(backing, ROOT)?;
        Ok(model)
    }

    fn scan_dir(&mut self, dir: &Path, ino: u64) -> io::Result<()> {
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            let path = entry.path();
            let meta = std::fs::symlink_metadata(&path)?;
            let content = if meta.is_dir() {
                Content::Dir(BTreeMap::new())
            } else if meta.file_type().is_symlink() {
                Content::Symlink(std::fs::read_link(&path)?)
            } else {
                let mut xattrs = BTreeMap::new();
                for name in xattr::list(&path)? {
                    if let Some(value) = xattr::get(&path, &name)? {
                        xattrs.insert(name, value);
                    }
                }
                use std::os::unix::fs::PermissionsExt;
                Content::File {
                    data: std::fs::read(&path)?,
                    xattrs,
                    mode: meta.permissions().mode() & 0o7777,
                    mtime: meta.modified().ok(),
                }
            };
            let child = self.add(ino, entry.file_name(), meta.is_dir(), content.clone());
            self.node(ino).pending.clear();
            if let Content::Dir(entries) = &mut self.node(ino).durable {
                entries.insert(entry.file_name(), child);
            }
            if meta.is_dir() {
                self.scan_dir(&path, child)?;
                let node = self.node(child);
                node.durable = Content::Dir(node.children.clone());
            }
        }
        Ok(())
    }

    /// The node numbered `ino` (which must exist).
    pub fn node(&mut self, ino: u64) -> &mut Node {
        self.nodes.get_mut(&ino).expect("known inode")
    }

    /// Records a change to `ino`.
    pub fn change(&mut self, ino: u64, change: Change) {
        self.seq += 1;
        let seq = self.seq;
        self.node(ino).pending.push((seq, change));
    }

    /// A new inode named `name` in directory `parent`, with `durable` as its state so far.
    pub fn add(&mut self, parent: u64, name: OsString, is_dir: bool, durable: Content) -> u64 {
        let ino = self.next_ino;
        self.next_ino += 1;
        let node = Node {
            links: vec![(parent, name.clone())],
            children: BTreeMap::new(),
            is_dir,
            durable,
            pending: Vec::new(),
        };
        self.nodes.insert(ino, node);
        self.node(parent).children.insert(name.clone(), ino);
        self.change(parent, Change::Link(name, ino));
        ino
    }

    /// Removes the entry `name` from `parent` (unlink, rmdir); returns the inode it named.
    pub fn unlink(&mut self, parent: u64, name: &OsString) -> Option<u64> {
        let ino = self.node(parent).children.remove(name)?;
        self.change(parent, Change::Unlink(name.clone()));
        self.node(ino).links.retain(|(p, n)| !(*p == parent && n == name));
        Some(ino)
    }

    /// Adds the entry `name` → `ino` to `parent` (rename in, link), replacing one there.
    pub fn link(&mut self, parent: u64, name: OsString, ino: u64) {
        if let Some(old) = self.node(parent).children.insert(name.clone(), ino) {
            self.node(old).links.retain(|(p, n)| !(*p == parent && *n == name));
        }
        self.change(parent, Change::Link(name.clone(), ino));
        self.node(ino).links.push((parent, name));
    }

    /// `fsync`: everything pending on `ino` becomes durable.
    pub fn sync(&mut self, ino: u64) {
        let node = self.node(ino);
        for (_, change) in std::mem::take(&mut node.pending) {
            node.durable.apply(&change);
        }
    }

    /// The backing path of `ino` (its first name), or `None` once it has no name.
    pub fn path(&self, backing: &Path, mut ino: u64) -> Option<PathBuf> {
        let mut names = Vec::new();
        while ino != ROOT {
            let (parent, name) = self.nodes.get(&ino)?.links.first()?;
            names.push(name.clone());
            ino = *parent;
        }
        let mut path = backing.to_path_buf();
        path.extend(names.iter().rev());
        Some(path)
    }

    /// What survives a power cut: every inode's durable state, plus, with a seed, every
    /// pending change up to a random point of the global order.
    pub fn after_cut(&self, seed: Option<u64>) -> HashMap<u64, Content> {
        let cutoff = match seed {
            None => 0,
            Some(seed) => {
                let first = self.nodes.values().flat_map(|n| n.pending.first()).map(|(s, _)| *s).min();
                match first {
                    Some(first) => rand::rngs::StdRng::seed_from_u64(seed).random_range(first - 1..=self.seq),
                    None => 0,
                }
            }
        };
        self.nodes
            .iter()
            .map(|(ino, node)| {
                let mut content = node.durable.clone();
                for (_, change) in node.pending.iter().take_while(|(s, _)| *s <= cutoff) {
                    content.apply(change);
                }
                (*ino, content)
            })
            .collect()
    }
}

/// Writes the tree that survived (`after_cut`) to `dest`, which must not exist.
///
/// # Errors
/// The I/O error writing it.
pub fn materialize(state: &HashMap<u64, Content>, dest: &Path) -> io::Result<()> {
    std::fs::create_dir(dest)?;
    let mut seen = HashSet::from([ROOT]);
    write_dir(state, ROOT, dest, &mut seen)
}

fn write_dir(state: &HashMap<u64, Content>, ino: u64, dir: &Path, seen: &mut HashSet<u64>) -> io::Result<()> {
    let Some(Content::Dir(entries)) = state.get(&ino) else {
        return Ok(());
    };
    for (name, child) in entries {
        let path = dir.join(name);
        match state.get(child) {
            // A directory reachable twice (renamed, both parents durable) appears once.
            Some(Content::Dir(_)) if seen.insert(*child) => {
                std::fs::create_dir(&path)?;
                write_dir(state, *child, &path, seen)?;
            }
            Some(Content::Dir(_)) => {}
            Some(Content::File { data, xattrs, mode, mtime }) => {
                std::fs::write(&path, data)?;
                for (name, value) in xattrs {
                    xattr::set(&path, name, value)?;
                }
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(*mode))?;
                if let Some(mtime) = mtime {
                    std::fs::File::options().write(true).open(&path)?.set_modified(*mtime)?;
                }
            }
            Some(Content::Symlink(target)) => std::os::unix::fs::symlink(target, &path)?,
            None => {}
        }
    }
    Ok(())
}
