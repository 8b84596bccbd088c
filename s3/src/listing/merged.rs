//! Listings that are not one directory tree: a sorted in-memory key set (a backup's manifest)
//! and the union of several sources' pages (an agent's view: local files, the write area, the
//! manifest), with the same prefix / delimiter / marker rules as the tree walk.

use std::collections::BTreeMap;
use std::ops::Bound;

use super::{Listed, Page, Query, common_prefix};

/// One page of `keys` (sorted by key, as S3 orders them) for `query`.
pub fn list_sorted(keys: &BTreeMap<String, Listed>, query: &Query) -> Page {
    let mut page = Page::default();
    if query.max_keys == 0 {
        return page;
    }
    let start = if query.after.as_str() >= query.prefix.as_str() {
        Bound::Excluded(query.after.as_str())
    } else {
        Bound::Included(query.prefix.as_str())
    };
    let mut skip_under: Option<String> = None;
    for (key, listed) in keys.range::<str, _>((start, Bound::Unbounded)) {
        if !key.starts_with(&query.prefix) {
            break; // sorted: no later key has the prefix
        }
        if skip_under.as_deref().is_some_and(|common| key.starts_with(common)) {
            continue;
        }
        let full = page.objects.len() + page.prefixes.len() == query.max_keys;
        match common_prefix(key, query) {
            Some(common) => {
                skip_under = Some(common.to_owned());
                if common <= query.after.as_str() {
                    continue;
                }
                if full {
                    page.truncated = true;
                    break;
                }
                page.prefixes.push(common.to_owned());
                page.last = Some(common.to_owned());
            }
            None => {
                if full {
                    page.truncated = true;
                    break;
                }
                page.objects.push(listed.clone());
                page.last = Some(key.clone());
            }
        }
    }
    page
}

/// The union of `pages`, each the answer of one source to the same query of `max_keys`:
/// sorted, a key or prefix listed by several sources once (the earliest source's object
/// wins), cut at `max_keys`. Each source listed its first `max_keys` results after the
/// marker, so the union's first `max_keys` are among them.
pub fn merge(pages: Vec<Page>, max_keys: usize) -> Page {
    enum Entry {
        Object(Listed),
        Prefix,
    }
    let mut truncated = false;
    let mut all: BTreeMap<String, Entry> = BTreeMap::new();
    for page in pages {
        truncated |= page.truncated;
        for object in page.objects {
            all.entry(object.key.clone()).or_insert(Entry::Object(object));
        }
        for prefix in page.prefixes {
            all.entry(prefix).or_insert(Entry::Prefix);
        }
    }
    truncated |= all.len() > max_keys;
    let mut page = Page { truncated, ..Page::default() };
    for (key, entry) in all.into_iter().take(max_keys) {
        match entry {
            Entry::Object(object) => page.objects.push(object),
            Entry::Prefix => page.prefixes.push(key.clone()),
        }
        page.last = Some(key);
    }
    page
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use super::*;

    fn keys(names: &[&str]) -> BTreeMap<String, Listed> {
        names
            .iter()
            .map(|k| {
                let listed = Listed {
                    key: (*k).to_owned(),
                    size: 1,
                    etag: String::new(),
                    last_modified: SystemTime::UNIX_EPOCH,
                };
                ((*k).to_owned(), listed)
            })
            .collect()
    }

    fn query(prefix: &str, delimiter: Option<&str>, after: &str, max_keys: usize) -> Query {
        Query { prefix: prefix.into(), delimiter: delimiter.map(Into::into), after: after.into(), max_keys }
    }

    fn names(page: &Page) -> Vec<String> {
        let mut all: Vec<String> =
            page.objects.iter().map(|o| o.key.clone()).chain(page.prefixes.iter().cloned()).collect();
        all.sort();
        all
    }

    /// Every page, walked with the marker a client would send, gives what one big page does.
    fn walk(keys: &BTreeMap<String, Listed>, prefix: &str, delimiter: Option<&str>, size: usize) -> Vec<String> {
        let mut seen = Vec::new();
        let mut after = String::new();
        loop {
            let page = list_sorted(keys, &query(prefix, delimiter, &after, size));
            seen.extend(names(&page));
            if !page.truncated {
                return seen;
            }
            after = page.last.unwrap();
        }
    }

    #[test]
    fn a_sorted_key_set_lists_like_s3() {
        let k = keys(&["a/1", "a/2", "a/b/3", "b", "b/4", "c/5", "c0"]);
        assert_eq!(names(&list_sorted(&k, &query("", Some("/"), "", 100))), ["a/", "b", "b/", "c/", "c0"]);
        assert_eq!(names(&list_sorted(&k, &query("a/", Some("/"), "", 100))), ["a/1", "a/2", "a/b/"]);
        assert_eq!(names(&list_sorted(&k, &query("", None, "a/2", 2))), ["a/b/3", "b"]);
        assert_eq!(names(&list_sorted(&k, &query("", Some("/"), "a/", 100))), ["b", "b/", "c/", "c0"]);
        assert_eq!(names(&list_sorted(&k, &query("zz", None, "", 100))), Vec::<String>::new());
        for size in 1..8 {
            assert_eq!(walk(&k, "", Some("/"), size), ["a/", "b", "b/", "c/", "c0"], "page size {size}");
            assert_eq!(walk(&k, "", None, size).len(), 7, "page size {size}");
        }
    }

    #[test]
    fn merged_pages_are_one_sorted_page_without_duplicates() {
        let one = keys(&["a/1", "c", "e"]);
        let two = keys(&["a/2", "c", "d", "f"]);
        for size in 1..8 {
            let mut seen = Vec::new();
            let mut after = String::new();
            loop {
                let q = query("", None, &after, size);
                let page = merge(vec![list_sorted(&one, &q), list_sorted(&two, &q)], size);
                assert!(page.objects.len() <= size);
                seen.extend(names(&page));
                if !page.truncated {
                    break;
                }
                after = page.last.unwrap();
            }
            assert_eq!(seen, ["a/1", "a/2", "c", "d", "e", "f"], "page size {size}");
        }
        let q = query("", Some("/"), "", 10);
        assert_eq!(names(&merge(vec![list_sorted(&one, &q), list_sorted(&two, &q)], 10)), ["a/", "c", "d", "e", "f"]);
    }
}
