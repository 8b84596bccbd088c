//! Every mutating S3 path, cut at random points with concurrent writers.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};

use crate::rig::{BUCKET, Ledger, Rig, State, delete, payload, put};

/// Power cuts per test.
const CYCLES: usize = 3;
const WRITERS: usize = 8;
const MIN: Duration = Duration::from_millis(250);
const SPREAD: Duration = Duration::from_millis(700);

fn size(w: usize, i: usize) -> usize {
    (i * 7919 + w * 104_729) % (48 << 10)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn put_flat() {
    put_until_cut("put_flat", |cycle, w, i| format!("flat-{cycle}-w{w}-{i}")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn put_into_new_nested_directories() {
    put_until_cut("put_into_new_nested_directories", |cycle, w, i| format!("nested/c{cycle}/w{w}/{i}/x/y.sst")).await;
}

/// Concurrent writers PUT fresh keys (named by `key(cycle, writer, i)`) until each cut.
async fn put_until_cut(name: &str, key: fn(usize, usize, usize) -> String) {
    let Some(mut rig) = Rig::new(name) else { return };
    let ledger = Arc::new(Ledger::default());
    for cycle in 0..CYCLES {
        let l = Arc::clone(&ledger);
        rig.cycle(&ledger, WRITERS, MIN, SPREAD, move |client, stop, w| {
            let ledger = Arc::clone(&l);
            async move {
                for i in 0.. {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let key = key(cycle, w, i);
                    put(&client, &ledger, &key, payload(&key, 0, size(w, i))).await;
                }
            }
        })
        .await;
    }
}

/// TiKV's pattern: many PUTs at once into one new directory, while the disk is slow to make
/// that directory's own entry durable (fsyncs of the archive root take 150 ms). A request that
/// finds the directory made by another must not answer before that entry is durable.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn put_many_at_once_into_one_new_directory() {
    let Some(mut rig) = Rig::new("put_many_at_once_into_one_new_directory") else { return };
    rig.fs.slow_dir_fsync(Some((std::path::Path::new("archive"), Duration::from_millis(150))));
    let ledger = Arc::new(Ledger::default());
    for cycle in 0..CYCLES {
        let l = Arc::clone(&ledger);
        let next = Arc::new(AtomicUsize::new(0));
        rig.cycle(&ledger, 16, MIN, SPREAD, move |client, stop, _| {
            let (ledger, next) = (Arc::clone(&l), Arc::clone(&next));
            async move {
                while !stop.load(Ordering::SeqCst) {
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    let key = format!("store-{cycle}-{}/{i}.sst", i / 32);
                    put(&client, &ledger, &key, payload(&key, 0, 4096)).await;
                }
            }
        })
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn overwrite() {
    let Some(mut rig) = Rig::new("overwrite") else { return };
    let ledger = Arc::new(Ledger::default());
    for _ in 0..CYCLES {
        let l = Arc::clone(&ledger);
        rig.cycle(&ledger, WRITERS, MIN, SPREAD, move |client, stop, w| {
            let ledger = Arc::clone(&l);
            async move {
                let key = format!("over/w{w}");
                for v in 0.. {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    put(&client, &ledger, &key, payload(&key, v, size(w, v))).await;
                }
            }
        })
        .await;
    }
}

/// Deletes of keys, each alone in its directories (which the delete prunes), and of keys
/// sharing one, mixed with new PUTs. A deleted key does not come back, nor do the directories
/// its delete emptied.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn delete_and_prune() {
    let Some(mut rig) = Rig::new("delete_and_prune") else { return };
    let ledger = Arc::new(Ledger::default());
    for cycle in 0..CYCLES {
        let client = rig.client();
        let keys: Vec<String> = (0..WRITERS * 24)
            .map(|i| if i % 3 == 0 { format!("del{cycle}/shared/{i}") } else { format!("del{cycle}/{i}/a/obj") })
            .collect();
        for key in &keys {
            assert!(put(&client, &ledger, key, payload(key, 0, 1000)).await);
        }
        let keys = Arc::new(keys);
        let l = Arc::clone(&ledger);
        rig.cycle(&ledger, WRITERS, Duration::from_millis(100), SPREAD, move |client, stop, w| {
            let (ledger, keys) = (Arc::clone(&l), Arc::clone(&keys));
            async move {
                for (n, key) in keys.iter().skip(w).step_by(WRITERS).enumerate() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    delete(&client, &ledger, key).await;
                    let fresh = format!("del{cycle}/new/w{w}-{n}");
                    put(&client, &ledger, &fresh, payload(&fresh, 0, 100)).await;
                }
            }
        })
        .await;
        let deleted: Vec<String> = keys_acked_absent(&ledger, &format!("del{cycle}/"));
        let back: Vec<String> = deleted
            .iter()
            .filter(|k| !k.contains("/shared/"))
            .map(|k| k.trim_end_matches("/a/obj").to_owned())
            .filter(|dir| rig.archive.join(dir).exists())
            .collect();
        assert!(back.is_empty(), "directories emptied by acknowledged deletes came back: {back:?}");
    }
}

fn keys_acked_absent(ledger: &Ledger, prefix: &str) -> Vec<String> {
    ledger.definitely(prefix, &State::Absent)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn copy_object() {
    let Some(mut rig) = Rig::new("copy_object") else { return };
    let ledger = Arc::new(Ledger::default());
    let client = rig.client();
    let sources: Vec<(String, Vec<u8>)> = (0..16)
        .map(|i| {
            let key = format!("src/{i}");
            let data = payload(&key, 0, size(i, i) + 1);
            (key, data)
        })
        .collect();
    for (key, data) in &sources {
        assert!(put(&client, &ledger, key, data.clone()).await);
    }
    let sources = Arc::new(sources);
    for cycle in 0..CYCLES {
        let (l, s) = (Arc::clone(&ledger), Arc::clone(&sources));
        rig.cycle(&ledger, WRITERS, MIN, SPREAD, move |client, stop, w| {
            let (ledger, sources) = (Arc::clone(&l), Arc::clone(&s));
            async move {
                for i in 0.. {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let (src, data) = &sources[(i + w) % sources.len()];
                    let key = format!("copies/c{cycle}/w{w}/{i}/copy");
                    ledger.attempt(&key, State::of(data));
                    let sent = client
                        .copy_object()
                        .bucket(BUCKET)
                        .key(&key)
                        .copy_source(format!("{BUCKET}/{src}"))
                        .send()
                        .await;
                    if sent.is_ok() {
                        ledger.acked(&key, State::of(data));
                    }
                }
            }
        })
        .await;
    }
}

/// What the writers know of one upload.
#[derive(Debug, Default, Clone)]
struct Upload {
    key: String,
    acked_parts: BTreeSet<i32>,
    /// Complete or Abort was sent.
    finishing: bool,
    /// ... and acknowledged.
    finished: bool,
}

/// Create, parts (one writer uploads two, the first of 5 MiB; odd writers copy every other
/// upload's part from an object with UploadPartCopy, and leave half of those uploads open),
/// then Complete or Abort. After
/// a cut: an acknowledged upload is listed with its acknowledged parts until it is completed
/// or aborted; a completed or aborted one is never listed; a completed object is whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn multipart() {
    let Some(mut rig) = Rig::new("multipart") else { return };
    let ledger = Arc::new(Ledger::default());
    let uploads: Arc<Mutex<BTreeMap<String, Upload>>> = Arc::default();
    for cycle in 0..CYCLES {
        let (l, u) = (Arc::clone(&ledger), Arc::clone(&uploads));
        rig.cycle(&ledger, WRITERS, MIN, SPREAD, move |client, stop, w| {
            let (ledger, uploads) = (Arc::clone(&l), Arc::clone(&u));
            async move { multipart_writer(client, &ledger, &uploads, &stop, cycle, w).await }
        })
        .await;
        let client = rig.client();
        let listed = client.list_multipart_uploads().bucket(BUCKET).send().await.expect("list uploads");
        let listed: BTreeMap<String, String> =
            listed.uploads().iter().map(|u| (u.upload_id().unwrap().to_owned(), u.key().unwrap().to_owned())).collect();
        let known = uploads.lock().unwrap().clone();
        for (id, upload) in &known {
            if upload.finished {
                assert!(
                    !listed.contains_key(id),
                    "upload {id} of {} was completed or aborted, but is listed",
                    upload.key
                );
            } else if !upload.finishing {
                assert!(listed.contains_key(id), "acknowledged upload {id} of {} is not listed", upload.key);
                let parts = client.list_parts().bucket(BUCKET).key(&upload.key).upload_id(id).send().await.unwrap();
                let have: BTreeSet<i32> = parts.parts().iter().filter_map(|p| p.part_number()).collect();
                assert!(upload.acked_parts.is_subset(&have), "upload {id}: parts {:?} of {have:?}", upload.acked_parts);
            }
        }
        // What is left can still be finished: abort it all, for the next cycle.
        for (id, key) in &listed {
            client.abort_multipart_upload().bucket(BUCKET).key(key).upload_id(id).send().await.expect("abort");
            if let Some(upload) = uploads.lock().unwrap().get_mut(id) {
                upload.finishing = true;
                upload.finished = true;
            }
        }
    }
}

async fn multipart_writer(
    client: aws_sdk_s3::Client,
    ledger: &Ledger,
    uploads: &Mutex<BTreeMap<String, Upload>>,
    stop: &AtomicBool,
    cycle: usize,
    w: usize,
) {
    for i in 0.. {
        if stop.load(Ordering::SeqCst) {
            return;
        }
        let key = format!("mpu/c{cycle}/w{w}/{i}/obj");
        let Ok(created) = client.create_multipart_upload().bucket(BUCKET).key(&key).send().await else {
            continue;
        };
        let id = created.upload_id().unwrap().to_owned();
        uploads.lock().unwrap().insert(id.clone(), Upload { key: key.clone(), ..Default::default() });
        let sizes: Vec<usize> = if w == 0 && i % 4 == 0 { vec![5 << 20, 10_000] } else { vec![size(w, i) + 1] };
        // Odd writers copy every other upload's part from an object they PUT (UploadPartCopy).
        let source = (w % 2 == 1 && i % 2 == 0).then(|| format!("mpu/c{cycle}/w{w}/{i}/src"));
        let mut whole = Vec::new();
        let mut parts = Vec::new();
        for (n, size) in sizes.iter().enumerate() {
            let number = n as i32 + 1;
            let data = payload(&key, n, *size);
            whole.extend_from_slice(&data);
            let e_tag = if let Some(source) = &source {
                if !put(&client, ledger, source, data).await {
                    return;
                }
                let sent = client
                    .upload_part_copy()
                    .bucket(BUCKET)
                    .key(&key)
                    .upload_id(&id)
                    .part_number(number)
                    .copy_source(format!("{BUCKET}/{source}"))
                    .send()
                    .await;
                let Ok(sent) = sent else { return };
                sent.copy_part_result.and_then(|r| r.e_tag)
            } else {
                let sent = client
                    .upload_part()
                    .bucket(BUCKET)
                    .key(&key)
                    .upload_id(&id)
                    .part_number(number)
                    .body(data.into())
                    .send()
                    .await;
                let Ok(sent) = sent else { return };
                sent.e_tag
            };
            uploads.lock().unwrap().get_mut(&id).unwrap().acked_parts.insert(number);
            parts.push(CompletedPart::builder().part_number(number).set_e_tag(e_tag).build());
        }
        if source.is_some() && i % 4 == 0 {
            continue; // left open: its copied part must still be listed after the cut
        }
        uploads.lock().unwrap().get_mut(&id).unwrap().finishing = true;
        let acked = if i % 3 == 2 {
            client.abort_multipart_upload().bucket(BUCKET).key(&key).upload_id(&id).send().await.is_ok()
        } else {
            ledger.attempt(&key, State::of(&whole));
            let done = CompletedMultipartUpload::builder().set_parts(Some(parts)).build();
            let sent = client
                .complete_multipart_upload()
                .bucket(BUCKET)
                .key(&key)
                .upload_id(&id)
                .multipart_upload(done)
                .send()
                .await;
            if sent.is_ok() {
                ledger.acked(&key, State::of(&whole));
            }
            sent.is_ok()
        };
        uploads.lock().unwrap().get_mut(&id).unwrap().finished = acked;
    }
}
