//! crashfs proves it can fail: each writer that skips a step of the durable-write recipe
//! loses what it wrote after a power cut, and the one that follows the recipe keeps it.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use crashfs::{CrashFs, Survivors};

struct Mounted {
    fs: CrashFs,
    _dir: tempfile::TempDir,
}

impl Mounted {
    fn path(&self, rel: &str) -> PathBuf {
        self.fs.path().join(rel)
    }
}

/// A mounted crashfs, or `None` (with a SKIPPED line) where FUSE is missing.
fn mount(test: &str) -> Option<Mounted> {
    let dir = tempfile::tempdir().unwrap();
    let (backing, mnt) = (dir.path().join("backing"), dir.path().join("mnt"));
    std::fs::create_dir(&backing).unwrap();
    std::fs::create_dir(&mnt).unwrap();
    match CrashFs::mount(&backing, &mnt) {
        Ok(fs) => Some(Mounted { fs, _dir: dir }),
        Err(err) => {
            eprintln!("SKIPPED {test}: crashfs cannot mount ({err}); install FUSE (scripts/test.sh does)");
            None
        }
    }
}

fn sync_dir(dir: &Path) {
    File::open(dir).unwrap().sync_all().unwrap();
}

fn write(path: &Path, data: &[u8], fsync: bool) {
    let mut file = File::create(path).unwrap();
    file.write_all(data).unwrap();
    if fsync {
        file.sync_all().unwrap();
    }
}

#[test]
fn a_writer_that_fsyncs_file_and_directory_keeps_the_file() {
    let Some(mut m) = mount("a_writer_that_fsyncs_file_and_directory_keeps_the_file") else { return };
    write(&m.path("kept"), b"durable bytes", true);
    xattr::set(m.path("kept"), "user.etag", b"abc").unwrap();
    File::open(m.path("kept")).unwrap().sync_all().unwrap();
    sync_dir(m.fs.path());
    m.fs.reboot(Survivors::DurableOnly).unwrap();
    assert_eq!(std::fs::read(m.path("kept")).unwrap(), b"durable bytes");
    assert_eq!(xattr::get(m.path("kept"), "user.etag").unwrap().as_deref(), Some(&b"abc"[..]));
}

#[test]
fn a_writer_that_skips_the_file_fsync_loses_the_bytes() {
    let Some(mut m) = mount("a_writer_that_skips_the_file_fsync_loses_the_bytes") else { return };
    write(&m.path("torn"), b"never fsynced", false);
    sync_dir(m.fs.path());
    m.fs.reboot(Survivors::DurableOnly).unwrap();
    assert_eq!(std::fs::read(m.path("torn")).unwrap(), b"", "the name survived, the bytes did not");
}

#[test]
fn a_writer_that_skips_the_directory_fsync_loses_the_name() {
    let Some(mut m) = mount("a_writer_that_skips_the_directory_fsync_loses_the_name") else { return };
    write(&m.path("nameless"), b"bytes fsynced", true);
    m.fs.reboot(Survivors::DurableOnly).unwrap();
    assert!(!m.path("nameless").exists());
}

#[test]
fn a_rename_into_a_new_directory_whose_parent_was_never_fsynced_loses_the_file() {
    let Some(mut m) = mount("a_rename_into_a_new_directory_whose_parent_was_never_fsynced_loses_the_file") else {
        return;
    };
    for (dir, sync_parent) in [("lost", false), ("kept", true)] {
        std::fs::create_dir(m.path(&format!("{dir}.tmp"))).unwrap();
        let tmp = m.path(&format!("{dir}.tmp/x"));
        write(&tmp, b"payload", true);
        std::fs::create_dir(m.path(dir)).unwrap();
        std::fs::rename(&tmp, m.path(&format!("{dir}/x"))).unwrap();
        sync_dir(&m.path(dir));
        if sync_parent {
            sync_dir(m.fs.path());
        }
        m.fs.reboot(Survivors::DurableOnly).unwrap();
        if sync_parent {
            assert_eq!(std::fs::read(m.path("kept/x")).unwrap(), b"payload");
        } else {
            assert!(!m.path("lost").exists(), "the new directory went, and the file with it");
            assert!(!m.path("lost.tmp").exists());
        }
    }
}

#[test]
fn removals_not_fsynced_come_back() {
    let Some(mut m) = mount("removals_not_fsynced_come_back") else { return };
    std::fs::create_dir(m.path("d")).unwrap();
    write(&m.path("f"), b"x", true);
    sync_dir(m.fs.path());
    std::fs::remove_file(m.path("f")).unwrap();
    std::fs::remove_dir(m.path("d")).unwrap();
    m.fs.reboot(Survivors::DurableOnly).unwrap();
    assert_eq!(std::fs::read(m.path("f")).unwrap(), b"x");
    assert!(m.path("d").is_dir());
    std::fs::remove_file(m.path("f")).unwrap();
    sync_dir(m.fs.path());
    m.fs.reboot(Survivors::DurableOnly).unwrap();
    assert!(!m.path("f").exists());
}

#[test]
fn after_the_cut_nothing_works_until_the_reboot() {
    let Some(mut m) = mount("after_the_cut_nothing_works_until_the_reboot") else { return };
    m.fs.cut_power();
    let err = File::create(m.path("late")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(5), "EIO: {err}");
    m.fs.reboot(Survivors::DurableOnly).unwrap();
    write(&m.path("after"), b"ok", true);
}

#[test]
fn a_random_survivor_set_respects_the_order_of_changes() {
    let Some(mut m) = mount("a_random_survivor_set_respects_the_order_of_changes") else { return };
    let mut sizes = std::collections::BTreeSet::new();
    for seed in 0..6 {
        for i in 0..10 {
            write(&m.path(&format!("f{i}")), b"data", false);
        }
        m.fs.reboot(Survivors::RandomPrefix(seed)).unwrap();
        let present: Vec<bool> = (0..10).map(|i| m.path(&format!("f{i}")).exists()).collect();
        let kept = present.iter().take_while(|p| **p).count();
        assert!(present[kept..].iter().all(|p| !p), "seed {seed}: a prefix survives, not {present:?}");
        sizes.insert(kept);
        for i in 0..kept {
            std::fs::remove_file(m.path(&format!("f{i}"))).unwrap();
        }
        sync_dir(m.fs.path());
    }
    assert!(sizes.len() > 1, "different seeds cut at different points: {sizes:?}");
}
