//! Listing a bucket's keys in S3 order from the directory tree, at the cost of the page.
//!
//! S3 lists keys in UTF-8 binary order. A depth-first walk yields exactly that order when
//! each directory's entries are sorted with directories compared as `name/` (so `a.txt` <
//! `a/…` < `a0`). Each directory is read through a [`snapshot`](crate::listing::snapshot):
//! its names, sorted once and cached while the directory is unchanged, so a page starts with
//! a binary search for the marker instead of reading and sorting the directory again; a
//! 1,000-key page of a directory of a million costs what one of a thousand does. Directories
//! that cannot hold a key after the marker, or outside the prefix, are skipped whole; with a
//! delimiter, a directory that rolls up into one common prefix is reported without being
//! walked (only checked to hold at least one file), and keys rolled into one prefix are
//! jumped over.

pub mod merged;
pub mod snapshot;

use std::path::Path;
use std::time::SystemTime;

use depot_fs::Root;

use crate::archive::has_files;
use crate::meta::ObjectMeta;
use snapshot::{Kind, Snapshot};

/// What to list.
#[derive(Debug, Clone, Default)]
pub struct Query {
    /// Only keys starting with this.
    pub prefix: String,
    /// Roll keys up to the first occurrence of this after the prefix.
    pub delimiter: Option<String>,
    /// Only keys (and common prefixes) after this (marker, start-after, continuation token).
    pub after: String,
    /// At most this many keys and common prefixes together.
    pub max_keys: usize,
}

/// One listed object.
#[derive(Debug, Clone)]
pub struct Listed {
    /// Its key.
    pub key: String,
    /// Its size in bytes.
    pub size: u64,
    /// Its ETag (without quotes).
    pub etag: String,
    /// Its mtime.
    pub last_modified: SystemTime,
}

/// One page of results.
#[derive(Debug, Clone, Default)]
pub struct Page {
    /// Objects, in key order.
    pub objects: Vec<Listed>,
    /// Common prefixes, in order.
    pub prefixes: Vec<String>,
    /// More keys follow.
    pub truncated: bool,
    /// The last key or prefix returned: where the next page starts.
    pub last: Option<String>,
}

/// Lists `root` (skipping Depot's `.depot/` when `root` is the archive directory).
pub fn list(root: &Root, query: &Query) -> Page {
    let mut page = Page::default();
    if query.max_keys == 0 {
        return page;
    }
    // The deepest directory the prefix pins down; a prefix no key can have lists nothing.
    let base = query.prefix.rfind('/').map_or("", |i| &query.prefix[..i]);
    let (start, base_key) = if base.is_empty() {
        (root.dir().to_path_buf(), String::new())
    } else {
        match root.resolve(base) {
            Ok(path) if path.is_dir() => (path, format!("{base}/")),
            _ => return page,
        }
    };
    // A marker `base/` sits in the directory the walk starts in, which it does not yield.
    if !base.is_empty() && query.prefix.len() == base.len() + 1 && !push_marker(&mut page, &start, &query.prefix, query)
    {
        return page;
    }
    walk(root, &start, &base_key, query, &mut page);
    page
}

/// Lists the directory `dir`, whose keys start with `dir_key` (empty or ending in `/`), into
/// `page`. Returns `false` once the page is full.
fn walk(root: &Root, dir: &Path, dir_key: &str, query: &Query, page: &mut Page) -> bool {
    let snapshot = match snapshot::of(dir) {
        Ok(snapshot) => snapshot,
        Err(err) => {
            tracing::warn!(dir = %dir.display(), %err, "skipping an unreadable directory while listing");
            return true;
        }
    };
    // What of the prefix and the marker is left below this directory.
    let prefix_rest = query.prefix.strip_prefix(dir_key).unwrap_or("");
    let mut i = first_after(&snapshot, dir_key, &query.after).max(snapshot.partition_point(prefix_rest));
    while i < snapshot.len() {
        let (name, kind) = snapshot.get(i);
        i += 1;
        if !name.starts_with(prefix_rest) {
            if name > prefix_rest {
                break; // sorted: no later name has the prefix
            }
            continue;
        }
        let key = format!("{dir_key}{name}");
        let path = || dir.join(name.trim_end_matches('/'));
        if kind == Kind::Dir {
            if dir_key.is_empty() && name.strip_suffix('/') == Some(depot_fs::STATE_DIR) {
                continue;
            }
            if let Some(common) = common_prefix(&key, query) {
                if has_files(&path()) && !push_prefix(page, common, query) {
                    return false;
                }
                continue;
            }
            if !push_marker(page, &path(), &key, query) || !walk(root, &path(), &key, query, page) {
                return false;
            }
            continue;
        }
        if kind == Kind::File && name == crate::marker::MARKER {
            continue; // listed as its directory's key, above
        }
        if kind == Kind::Symlink && !is_file_inside(root, &key) {
            continue;
        }
        if key <= query.after {
            continue;
        }
        if let Some(common) = common_prefix(&key, query) {
            if !push_prefix(page, common, query) {
                return false;
            }
            // Every later name rolled into the same prefix is skipped unread.
            i = i.max(snapshot.end_of_prefix(&common[dir_key.len()..]));
            continue;
        }
        if !push_object(page, &path(), key, query) {
            return false;
        }
    }
    true
}

/// The index of the first entry of `snapshot` (the directory of keys starting with
/// `dir_key`) that can hold a key after `after`: a file after it, or a directory it is in or
/// before.
fn first_after(snapshot: &Snapshot, dir_key: &str, after: &str) -> usize {
    let Some(rest) = after.strip_prefix(dir_key) else {
        // The marker is before the whole directory (the walk never enters one wholly before).
        return 0;
    };
    let at = snapshot.partition_point(rest);
    match at.checked_sub(1).map(|i| snapshot.get(i)) {
        Some((name, Kind::Dir)) if rest.starts_with(name) => at - 1,
        _ => at,
    }
}

/// Adds the object `key` stored at `path`. Returns `false` when the page is full and another
/// result was waiting (truncated).
fn push_object(page: &mut Page, path: &Path, key: String, query: &Query) -> bool {
    let Ok(fs_meta) = std::fs::metadata(path) else {
        return true; // deleted since the directory was read
    };
    if fs_meta.is_dir() {
        return true; // replaced by a directory since it was read; the next listing has it
    }
    if page.objects.len() + page.prefixes.len() == query.max_keys {
        page.truncated = true;
        return false;
    }
    let meta = ObjectMeta::load_or_synthesize(path, &fs_meta);
    page.last = Some(key.clone());
    page.objects.push(Listed { key, size: fs_meta.len(), last_modified: meta.last_modified(), etag: meta.etag });
    true
}

/// Adds the directory marker of `dir` as the key `dir_key` (`x/`), if it has one and the
/// query wants it. Returns `false` when the page is full (see [`push_object`]).
fn push_marker(page: &mut Page, dir: &Path, dir_key: &str, query: &Query) -> bool {
    let marker = crate::marker::file_in(dir);
    if !dir_key.starts_with(&query.prefix) || dir_key <= query.after.as_str() || !marker.is_file() {
        return true;
    }
    push_object(page, &marker, dir_key.to_owned(), query)
}

/// Adds a common prefix unless it repeats the last one or is not after the marker. Returns
/// `false` when the page is full and another result was waiting (truncated).
fn push_prefix(page: &mut Page, common: &str, query: &Query) -> bool {
    if common <= query.after.as_str() || page.prefixes.last().is_some_and(|p| p == common) {
        return true;
    }
    if page.objects.len() + page.prefixes.len() == query.max_keys {
        page.truncated = true;
        return false;
    }
    page.prefixes.push(common.to_owned());
    page.last = Some(common.to_owned());
    true
}

/// The common prefix `key` rolls up into, if the query has a delimiter that occurs in `key`
/// after the prefix.
fn common_prefix<'k>(key: &'k str, query: &Query) -> Option<&'k str> {
    let delimiter = query.delimiter.as_deref().filter(|d| !d.is_empty())?;
    let rest = key.strip_prefix(query.prefix.as_str())?;
    let at = rest.find(delimiter)?;
    Some(&key[..query.prefix.len() + at + delimiter.len()])
}

/// A symlink is listed only when it resolves to a file inside the root (as reads require).
fn is_file_inside(root: &Root, key: &str) -> bool {
    root.resolve(key).is_ok_and(|path| path.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree(keys: &[&str]) -> (tempfile::TempDir, Root) {
        let dir = tempfile::tempdir().unwrap();
        for key in keys {
            let path = dir.path().join(key);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, key.as_bytes()).unwrap();
        }
        std::fs::create_dir_all(dir.path().join(".depot/tmp")).unwrap();
        std::fs::write(dir.path().join(".depot/tmp/x"), b"hidden").unwrap();
        let root = Root::open(dir.path()).unwrap();
        (dir, root)
    }

    fn keys(page: &Page) -> Vec<&str> {
        page.objects.iter().map(|o| o.key.as_str()).collect()
    }

    const KEYS: &[&str] = &["a/b", "a.txt", "a0", "a/c/d", "b", "a/c/e", "é"];

    #[test]
    fn lists_everything_in_binary_order_without_state() {
        let (_d, root) = tree(KEYS);
        let page = list(&root, &Query { max_keys: 1000, ..Query::default() });
        assert_eq!(keys(&page), ["a.txt", "a/b", "a/c/d", "a/c/e", "a0", "b", "é"]);
        assert!(!page.truncated);
    }

    #[test]
    fn pages_with_a_marker() {
        let (_d, root) = tree(KEYS);
        let mut after = String::new();
        let mut seen = Vec::new();
        loop {
            let page = list(&root, &Query { after: after.clone(), max_keys: 2, ..Query::default() });
            seen.extend(keys(&page).into_iter().map(str::to_owned));
            if !page.truncated {
                break;
            }
            after = page.last.unwrap();
        }
        assert_eq!(seen, ["a.txt", "a/b", "a/c/d", "a/c/e", "a0", "b", "é"]);
    }

    #[test]
    fn prefix_and_delimiter_roll_up() {
        let (_d, root) = tree(KEYS);
        let q = Query { delimiter: Some("/".into()), max_keys: 1000, ..Query::default() };
        let page = list(&root, &q);
        assert_eq!(keys(&page), ["a.txt", "a0", "b", "é"]);
        assert_eq!(page.prefixes, ["a/"]);

        let q = Query { prefix: "a/".into(), delimiter: Some("/".into()), max_keys: 1000, ..Query::default() };
        let page = list(&root, &q);
        assert_eq!(keys(&page), ["a/b"]);
        assert_eq!(page.prefixes, ["a/c/"]);

        let q = Query { prefix: "a/c".into(), max_keys: 1000, ..Query::default() };
        assert_eq!(keys(&list(&root, &q)), ["a/c/d", "a/c/e"]);
    }

    #[test]
    fn a_common_prefix_as_marker_skips_its_keys() {
        let (_d, root) = tree(KEYS);
        let q = Query { delimiter: Some("/".into()), after: "a/".into(), max_keys: 1000, ..Query::default() };
        let page = list(&root, &q);
        assert_eq!(keys(&page), ["a0", "b", "é"]);
        assert!(page.prefixes.is_empty());
    }

    #[test]
    fn empty_directories_are_not_prefixes_and_bad_prefixes_list_nothing() {
        let (d, root) = tree(&["x"]);
        std::fs::create_dir_all(d.path().join("empty/deeper")).unwrap();
        let q = Query { delimiter: Some("/".into()), max_keys: 1000, ..Query::default() };
        let page = list(&root, &q);
        assert_eq!(keys(&page), ["x"]);
        assert!(page.prefixes.is_empty());
        let q = Query { prefix: "../".into(), max_keys: 1000, ..Query::default() };
        assert!(list(&root, &q).objects.is_empty());
    }

    #[test]
    fn directory_markers_list_as_their_key_in_order() {
        let (d, root) = tree(&["m/-a", "m/z", "n"]);
        std::fs::write(d.path().join("m").join(crate::marker::MARKER), b"").unwrap();
        std::fs::create_dir_all(d.path().join("e")).unwrap();
        std::fs::write(d.path().join("e").join(crate::marker::MARKER), b"").unwrap();
        let all = list(&root, &Query { max_keys: 1000, ..Query::default() });
        assert_eq!(keys(&all), ["e/", "m/", "m/-a", "m/z", "n"]);
        assert_eq!(all.objects[0].size, 0);
        let q = Query { delimiter: Some("/".into()), max_keys: 1000, ..Query::default() };
        let page = list(&root, &q);
        assert_eq!(keys(&page), ["n"]);
        assert_eq!(page.prefixes, ["e/", "m/"]);
        let q = Query { prefix: "m/".into(), delimiter: Some("/".into()), max_keys: 1000, ..Query::default() };
        assert_eq!(keys(&list(&root, &q)), ["m/", "m/-a", "m/z"]);
        let q = Query { prefix: "m/".into(), after: "m/".into(), max_keys: 1000, ..Query::default() };
        assert_eq!(keys(&list(&root, &q)), ["m/-a", "m/z"]);
        let q = Query { after: "e/".into(), max_keys: 1, ..Query::default() };
        let page = list(&root, &q);
        assert_eq!((keys(&page), page.truncated), (vec!["m/"], true));
    }

    #[test]
    fn max_keys_counts_prefixes_too() {
        let (_d, root) = tree(&["p/1", "q/1", "r"]);
        let q = Query { delimiter: Some("/".into()), max_keys: 2, ..Query::default() };
        let page = list(&root, &q);
        assert_eq!(page.prefixes, ["p/", "q/"]);
        assert!(page.truncated);
        assert_eq!(page.last.as_deref(), Some("q/"));
    }

    /// What S3 returns, from the sorted list of every key: the order the walk must give.
    fn model(all: &[String], q: &Query) -> (Vec<String>, bool) {
        let mut items: Vec<String> = Vec::new();
        for key in all.iter().filter(|k| k.starts_with(&q.prefix)) {
            let item = common_prefix(key, q).unwrap_or(key).to_owned();
            if item.as_str() <= q.after.as_str() || items.last() == Some(&item) {
                continue;
            }
            items.push(item);
        }
        let truncated = items.len() > q.max_keys;
        items.truncate(q.max_keys);
        (items, truncated)
    }

    fn items(page: &Page) -> Vec<String> {
        let mut all: Vec<String> = keys(page).into_iter().map(str::to_owned).chain(page.prefixes.clone()).collect();
        all.sort();
        all
    }

    #[test]
    fn every_query_and_page_size_matches_s3_order() {
        let names =
            ["a-b", "a.txt", "a/b", "a/b-c", "a/bb/c", "a/b0", "a0", "b-1/x", "b-2", "b/c/d/e", "c", "é", "z/z"];
        let (d, root) = tree(&names);
        std::fs::create_dir_all(d.path().join("empty/inner")).unwrap();
        let mut all: Vec<String> = names.iter().map(|k| (*k).to_owned()).collect();
        all.sort();
        let prefixes = ["", "a", "a/", "a/b", "b", "b-", "b/c/", "x", "é"];
        let delimiters = [None, Some("/"), Some("-"), Some("b")];
        let mut afters: Vec<String> = vec![String::new(), "a/".into(), "a/b/".into(), "b".into(), "zzz".into()];
        afters.extend(all.iter().cloned());
        for prefix in prefixes {
            for delimiter in delimiters {
                for after in &afters {
                    for max_keys in [1, 2, 5, 1000] {
                        let q = Query {
                            prefix: prefix.into(),
                            delimiter: delimiter.map(str::to_owned),
                            after: after.clone(),
                            max_keys,
                        };
                        let (want, truncated) = model(&all, &q);
                        let page = list(&root, &q);
                        assert_eq!((items(&page), page.truncated), (want.clone(), truncated), "{q:?}");
                        assert_eq!(page.last, want.last().cloned(), "{q:?}");
                    }
                }
            }
        }
    }

    #[test]
    fn a_directory_changed_between_pages_gives_each_key_after_the_marker_once() {
        let names: Vec<String> = (0..20).map(|i| format!("d/k{i:02}")).collect();
        let (d, root) = tree(&names.iter().map(String::as_str).collect::<Vec<_>>());
        // Let the directory settle so the first page is served from a cached snapshot.
        std::thread::sleep(std::time::Duration::from_millis(150));
        let first = list(&root, &Query { max_keys: 5, ..Query::default() });
        assert_eq!(keys(&first), ["d/k00", "d/k01", "d/k02", "d/k03", "d/k04"]);
        std::fs::write(d.path().join("d/k00a"), b"before the marker").unwrap();
        std::fs::write(d.path().join("d/k10a"), b"after the marker").unwrap();
        std::fs::remove_file(d.path().join("d/k07")).unwrap();
        let rest = list(&root, &Query { after: first.last.clone().unwrap(), max_keys: 1000, ..Query::default() });
        let mut want: Vec<String> = names[5..].iter().filter(|k| *k != "d/k07").cloned().collect();
        want.push("d/k10a".into());
        want.sort();
        assert_eq!(keys(&rest), want);
    }

    #[test]
    fn keys_written_and_deleted_while_listing_never_disturb_the_others() {
        let stable: Vec<String> = (0..300).map(|i| format!("s/{i:04}")).collect();
        let (d, root) = tree(&stable.iter().map(String::as_str).collect::<Vec<_>>());
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let churn = {
            let (dir, stop) = (d.path().join("s"), std::sync::Arc::clone(&stop));
            std::thread::spawn(move || {
                let mut i = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let path = dir.join(format!("{:04}x{}", i % 300, i % 7));
                    std::fs::write(&path, b"churn").unwrap();
                    if i.is_multiple_of(2) {
                        std::fs::remove_file(&path).unwrap();
                    }
                    i += 1;
                }
            })
        };
        for round in 0..20 {
            let mut seen = Vec::new();
            let mut after = String::new();
            loop {
                let page = list(&root, &Query { after: after.clone(), max_keys: 37, ..Query::default() });
                seen.extend(keys(&page).into_iter().map(str::to_owned));
                if !page.truncated {
                    break;
                }
                after = page.last.unwrap();
            }
            assert!(seen.windows(2).all(|w| w[0] < w[1]), "round {round}: in order, each once");
            let kept: Vec<&String> = seen.iter().filter(|k| !k.contains('x')).collect();
            assert_eq!(kept.len(), stable.len(), "round {round}: every untouched key listed");
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        churn.join().unwrap();
    }
}
