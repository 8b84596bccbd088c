//! Listing through S3 while other clients write and delete in the listed prefix (issue 8):
//! aws-sdk-s3 against the real `depot serve`.
//!
//! Writers PUT and DELETE keys in bursts, one directory at a time, so directories alternate
//! between changing (read afresh by every page) and settled (served from the snapshot cache,
//! then changed again under it). Meanwhile full listings page through the prefix with V1
//! `Marker` and V2 continuation tokens, a few keys a page so many pages meet a change. Every
//! operation's start and end and every listing's start and end are taken on one clock, and
//! each listing must be what S3 promises for that window:
//! - strictly increasing (S3 order, no key twice), and only keys some request made;
//! - every key written before the listing began and not touched until it ended is in it
//!   (every key never deleted, in particular);
//! - every key deleted before the listing began and not written again until it ended is not.
//!
//! Nothing waits on a timer: the writers run flat out and the listings repeat until each API
//! has run its share while the writers were changing the prefix.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use aws_sdk_s3::primitives::ByteStream;
use depot_tests::{Depot, test_dir};

/// Directories the writers move between.
const DIRS: usize = 6;
/// Keys each writer changes in a directory before moving on.
const BURST: usize = 12;
/// Keys per page: small, so a listing spans many requests.
const PAGE: i32 = 9;
/// Full listings per API that must overlap writes.
const LISTINGS: usize = 6;
/// A bound on listings, should the writers never overlap them.
const MAX_LISTINGS: usize = 400;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Put,
    Delete,
}

/// What one request did to a key, and when (`end` is `None` until it was answered).
#[derive(Debug, Clone, Copy)]
struct Event {
    op: Op,
    start: Instant,
    end: Option<Instant>,
}

/// Every request made to every key, in order (each key has one writer).
#[derive(Debug, Default)]
struct Ledger {
    keys: Mutex<BTreeMap<String, Vec<Event>>>,
}

impl Ledger {
    fn begin(&self, key: &str, op: Op) -> usize {
        let mut keys = self.keys.lock().unwrap();
        let events = keys.entry(key.to_owned()).or_default();
        events.push(Event { op, start: Instant::now(), end: None });
        events.len() - 1
    }

    fn end(&self, key: &str, index: usize) {
        self.keys.lock().unwrap().get_mut(key).unwrap()[index].end = Some(Instant::now());
    }

    /// Keys whose state is settled over `[from, to]`: (present, absent). A key is settled when
    /// its last request started before `from` was answered before `from`, and no request on it
    /// started before `to` after that.
    fn settled(&self, from: Instant, to: Instant) -> (BTreeSet<String>, BTreeSet<String>) {
        let keys = self.keys.lock().unwrap();
        let (mut present, mut absent) = (BTreeSet::new(), BTreeSet::new());
        for (key, events) in keys.iter() {
            let Some(last) = events.iter().rposition(|e| e.start < from) else { continue };
            let done_before = events[last].end.is_some_and(|end| end < from);
            let untouched = events[last + 1..].iter().all(|e| e.start > to);
            if done_before && untouched {
                match events[last].op {
                    Op::Put => present.insert(key.clone()),
                    Op::Delete => absent.insert(key.clone()),
                };
            }
        }
        (present, absent)
    }

    /// Whether some request started on `key` before `to` (a listed key must have been made).
    fn made_before(&self, key: &str, to: Instant) -> bool {
        self.keys.lock().unwrap().get(key).is_some_and(|e| e.iter().any(|e| e.op == Op::Put && e.start < to))
    }

    /// Requests started within `[from, to]`.
    fn started_within(&self, from: Instant, to: Instant) -> usize {
        let keys = self.keys.lock().unwrap();
        keys.values().flatten().filter(|e| e.start >= from && e.start <= to).count()
    }
}

async fn put(s3: &aws_sdk_s3::Client, bucket: &str, ledger: &Ledger, key: &str) {
    let at = ledger.begin(key, Op::Put);
    let body = ByteStream::from(key.as_bytes().to_vec());
    s3.put_object().bucket(bucket).key(key).body(body).send().await.unwrap_or_else(|e| panic!("PUT {key}: {e:?}"));
    ledger.end(key, at);
}

async fn delete(s3: &aws_sdk_s3::Client, bucket: &str, ledger: &Ledger, key: &str) {
    let at = ledger.begin(key, Op::Delete);
    s3.delete_object().bucket(bucket).key(key).send().await.unwrap_or_else(|e| panic!("DELETE {key}: {e:?}"));
    ledger.end(key, at);
}

/// One full listing of `prefix`: (start, end, keys in the order received).
async fn list_all(s3: &aws_sdk_s3::Client, bucket: &str, prefix: &str, v2: bool) -> (Instant, Instant, Vec<String>) {
    let start = Instant::now();
    let mut keys: Vec<String> = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let truncated = if v2 {
            let out = s3
                .list_objects_v2()
                .bucket(bucket)
                .prefix(prefix)
                .max_keys(PAGE)
                .set_continuation_token(token.take())
                .send()
                .await
                .expect("ListObjectsV2");
            keys.extend(out.contents().iter().map(|o| o.key().expect("a key").to_owned()));
            token = out.next_continuation_token().map(str::to_owned);
            out.is_truncated().unwrap_or(false)
        } else {
            let out = s3
                .list_objects()
                .bucket(bucket)
                .prefix(prefix)
                .max_keys(PAGE)
                .set_marker(keys.last().cloned())
                .send()
                .await
                .expect("ListObjects");
            keys.extend(out.contents().iter().map(|o| o.key().expect("a key").to_owned()));
            out.is_truncated().unwrap_or(false)
        };
        if !truncated {
            break;
        }
        assert!(!v2 || token.is_some(), "a truncated V2 page without a NextContinuationToken");
    }
    (start, Instant::now(), keys)
}

/// Checks one listing against the ledger; returns how many keys it had to contain.
fn check(
    ledger: &Ledger,
    never_deleted: &BTreeSet<String>,
    api: &str,
    listing: &(Instant, Instant, Vec<String>),
) -> usize {
    let (from, to, keys) = listing;
    for pair in keys.windows(2) {
        assert!(pair[0] < pair[1], "{api}: {:?} then {:?}: not in S3 order, or listed twice", pair[0], pair[1]);
    }
    let listed: BTreeSet<&String> = keys.iter().collect();
    for key in keys {
        assert!(ledger.made_before(key, *to), "{api}: listed {key:?}, which no request had made");
    }
    let (present, absent) = ledger.settled(*from, *to);
    for key in never_deleted.iter().chain(&present) {
        assert!(listed.contains(key), "{api}: {key:?} existed for the whole listing but is not in it");
    }
    for key in &absent {
        assert!(!listed.contains(key), "{api}: {key:?} was deleted before the listing began but is in it");
    }
    present.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn listings_under_concurrent_puts_and_deletes_keep_s3_semantics() {
    let dir = test_dir();
    let depot = Depot::start(&dir.path().join("archive"), &[]);
    let s3 = depot.client();
    let bucket = depot.field("bucket");
    let ledger = Arc::new(Ledger::default());

    // Keys written before any listing and never deleted: a few in every directory, one at
    // the top, one nested deeper.
    let mut never_deleted = BTreeSet::new();
    for d in 0..DIRS {
        for i in 0..4 {
            never_deleted.insert(format!("p/d{d}/keep-{i}"));
        }
    }
    never_deleted.insert("p/keep".to_owned());
    never_deleted.insert("p/d2/deep/er/keep".to_owned());
    for key in &never_deleted {
        put(&s3, &bucket, &ledger, key).await;
    }

    // Writers: bursts of PUTs and DELETEs in one directory at a time, some in new nested
    // directories that the deletes prune again.
    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..3 {
        let (s3, bucket, ledger, stop) = (s3.clone(), bucket.clone(), Arc::clone(&ledger), Arc::clone(&stop));
        writers.push(tokio::spawn(async move {
            let mut round = 0usize;
            while !stop.load(Ordering::Relaxed) {
                let d = (round + 2 * w) % DIRS;
                for i in 0..BURST {
                    let key = if i % 4 == 3 { format!("p/d{d}/n{w}-{i}/x") } else { format!("p/d{d}/w{w}-{i:02}") };
                    // Alternate: the first pass over a directory writes, the next deletes.
                    if (round / DIRS).is_multiple_of(2) {
                        put(&s3, &bucket, &ledger, &key).await;
                    } else {
                        delete(&s3, &bucket, &ledger, &key).await;
                    }
                }
                round += 1;
            }
        }));
    }

    // List until each API has run LISTINGS times while a writer was changing the prefix, and
    // written keys (not only the never-deleted ones) were required to be there: how many
    // listings that takes depends on the machine's speed, not on a timer.
    let mut required = 0;
    let mut overlapped = [0usize; 2];
    let mut runs = 0usize;
    while (overlapped.iter().any(|&o| o < LISTINGS) || required <= never_deleted.len() * runs) && runs < MAX_LISTINGS {
        let v2 = runs % 2 == 1;
        let api = if v2 { "V2" } else { "V1" };
        let listing = list_all(&s3, &bucket, "p/", v2).await;
        required += check(&ledger, &never_deleted, api, &listing);
        overlapped[usize::from(v2)] += usize::from(ledger.started_within(listing.0, listing.1) > 0);
        runs += 1;
    }
    stop.store(true, Ordering::Relaxed);
    for writer in writers {
        writer.await.expect("writer");
    }
    // The test proves something only if the prefix changed under the listings and they had
    // more than the never-deleted keys to find.
    assert!(
        overlapped.iter().all(|&o| o >= LISTINGS),
        "after {runs} listings only {overlapped:?} (V1, V2) ran while a writer was changing the prefix"
    );
    assert!(required > never_deleted.len() * runs, "too few settled written keys were checked ({required})");

    // Quiet now: one more listing of each kind holds exactly the keys the ledger says exist.
    for v2 in [false, true] {
        let listing = list_all(&s3, &bucket, "p/", v2).await;
        let (present, _) = ledger.settled(listing.0, listing.1);
        assert_eq!(listing.2, present.into_iter().collect::<Vec<_>>(), "a quiet listing (v2 = {v2})");
    }
}
