//! Listing a bucket's keys in S3 order from the directory tree, without reading all of it.
//!
//! S3 lists keys in UTF-8 binary order. A depth-first walk yields exactly that order when
//! each directory's entries are sorted with directories compared as `name/` (so `a.txt` <
//! `a/…` < `a0`). Directories that cannot hold a key after the marker, or outside the prefix,
//! are skipped whole; with a delimiter, a directory that rolls up into one common prefix is
//! reported without being walked (only checked to hold at least one file).

use std::cmp::Ordering;
use std::path::Path;
use std::time::SystemTime;

use depot_fs::Root;
use walkdir::{DirEntry, WalkDir};

use crate::archive::has_files;
use crate::meta::ObjectMeta;

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
    let start = if base.is_empty() {
        root.dir().to_path_buf()
    } else {
        match root.resolve(base) {
            Ok(path) if path.is_dir() => path,
            _ => return page,
        }
    };

    // A marker `base/` sits in the directory the walk starts in, which it does not yield.
    if !base.is_empty() && query.prefix.len() == base.len() + 1 && !push_marker(&mut page, &start, &query.prefix, query)
    {
        return page;
    }
    let mut walk = WalkDir::new(&start).min_depth(1).follow_links(false).sort_by(walk_order).into_iter();
    while let Some(entry) = walk.next() {
        let entry = match entry {
            Ok(entry) => entry,
            Err(err) => {
                tracing::warn!(%err, "skipping an unreadable entry while listing");
                continue;
            }
        };
        let Some(key) = key_of(root, entry.path()) else {
            // Not UTF-8: cannot be an S3 key.
            if entry.file_type().is_dir() {
                walk.skip_current_dir();
            }
            continue;
        };
        if entry.file_type().is_dir() {
            if key == depot_fs::STATE_DIR {
                walk.skip_current_dir();
                continue;
            }
            let dir_key = format!("{key}/");
            let in_prefix = dir_key.starts_with(&query.prefix) || query.prefix.starts_with(&dir_key);
            let all_before = dir_key.as_str() < query.after.as_str() && !query.after.starts_with(&dir_key);
            if !in_prefix || all_before {
                walk.skip_current_dir();
                continue;
            }
            if let Some(common) = common_prefix(&dir_key, query) {
                walk.skip_current_dir();
                if has_files(entry.path()) && !push_prefix(&mut page, common, query) {
                    break;
                }
            } else if !push_marker(&mut page, entry.path(), &dir_key, query) {
                break;
            }
            continue;
        }
        if crate::marker::is_marker_name(entry.file_name()) {
            continue; // listed as its directory's key, above
        }
        if entry.file_type().is_symlink() && !is_file_inside(root, &key) {
            continue;
        }
        if !key.starts_with(&query.prefix) || key <= query.after {
            continue;
        }
        if let Some(common) = common_prefix(&key, query) {
            if !push_prefix(&mut page, common, query) {
                break;
            }
            continue;
        }
        if !push_object(&mut page, entry.path(), key, query) {
            break;
        }
    }
    page
}

/// Adds the object `key` stored at `path`. Returns `false` when the page is full and another
/// result was waiting (truncated).
fn push_object(page: &mut Page, path: &Path, key: String, query: &Query) -> bool {
    let Ok(fs_meta) = std::fs::metadata(path) else {
        return true;
    };
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

/// The key of a path under the root, if it is UTF-8.
fn key_of(root: &Root, path: &Path) -> Option<String> {
    root.name_of(path)
}

/// A symlink is listed only when it resolves to a file inside the root (as reads require).
fn is_file_inside(root: &Root, key: &str) -> bool {
    root.resolve(key).is_ok_and(|path| path.is_file())
}

/// Sibling order: file names compared as bytes, a directory's name with a `/` appended.
fn walk_order(a: &DirEntry, b: &DirEntry) -> Ordering {
    let bytes = |e: &DirEntry| {
        let mut name = e.file_name().as_encoded_bytes().to_vec();
        if e.file_type().is_dir() {
            name.push(b'/');
        }
        name
    };
    bytes(a).cmp(&bytes(b))
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
}
