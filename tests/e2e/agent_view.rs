//! The agents' S3 view (`depot-agent serve --s3-listen`): every node serves the whole backup
//! over S3 — its own files from disk, the others fetched from a live holder on first read,
//! verified, cached — through the same S3 code as `depot serve`, read by aws-sdk-s3 as TiKV's
//! external storage reads it.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use aws_sdk_s3::primitives::ByteStream;
use depot_tests::agents::{Agent, Cluster, DataFile, eventually, partial_bytes, write_backupmeta_v2, write_jsonl};
use depot_tests::{s3_client, test_dir};

/// The prefix every view serves the backup under (node roots have different names here).
const PREFIX: &str = "backup";

/// Starts agent `id` with an S3 view reading the manifest at `meta` (default: its root's
/// backupmeta, else the peers'), plus `extra`.
fn view_agent(cluster: &Cluster, id: &str, meta: Option<&Path>, extra: &[&str]) -> Agent {
    // No bucket or key pair given: the coordinator hands its own to every serving agent.
    let mut args = vec!["--s3-listen", "127.0.0.1:0", "--s3-prefix", PREFIX];
    if let Some(meta) = meta {
        args.extend(["--s3-meta", meta.to_str().unwrap()]);
    }
    args.extend_from_slice(extra);
    cluster.agent(id, &args)
}

fn client_of(cluster: &Cluster, agent: &Agent) -> aws_sdk_s3::Client {
    let endpoint = agent.s3_endpoint.as_deref().expect("the ready line names the S3 view");
    s3_client(
        endpoint,
        &cluster.depot.field("access_key"),
        &cluster.depot.field("secret_key"),
        &cluster.depot.field("region"),
        None,
    )
}

async fn get(s3: &aws_sdk_s3::Client, bucket: &str, key: &str) -> Vec<u8> {
    let out = s3.get_object().bucket(bucket).key(key).send().await.unwrap_or_else(|e| panic!("GET {key}: {e:?}"));
    out.body.collect().await.unwrap().into_bytes().to_vec()
}

fn key(file: &DataFile) -> String {
    format!("{PREFIX}/{}", file.name)
}

/// Every key of the view under `prefix`, walked with ListObjects V1 and `Marker` (as BR does).
async fn list_v1(s3: &aws_sdk_s3::Client, bucket: &str, prefix: &str, page: i32) -> Vec<String> {
    let mut keys = Vec::new();
    let mut marker: Option<String> = None;
    loop {
        let out = s3
            .list_objects()
            .bucket(bucket)
            .prefix(prefix)
            .max_keys(page)
            .set_marker(marker.clone())
            .send()
            .await
            .unwrap();
        let got: Vec<String> = out.contents().iter().map(|o| o.key().unwrap().to_owned()).collect();
        assert!(got.len() <= page as usize);
        keys.extend(got);
        if !out.is_truncated().unwrap_or(false) {
            return keys;
        }
        marker = Some(out.next_marker().map_or_else(|| keys.last().unwrap().clone(), str::to_owned));
    }
}

/// Every key of the view under `prefix`, walked with ListObjectsV2 continuation tokens.
async fn list_v2(s3: &aws_sdk_s3::Client, bucket: &str, prefix: &str, page: i32) -> Vec<String> {
    let mut keys = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let out = s3
            .list_objects_v2()
            .bucket(bucket)
            .prefix(prefix)
            .max_keys(page)
            .set_continuation_token(token.clone())
            .send()
            .await
            .unwrap();
        keys.extend(out.contents().iter().map(|o| o.key().unwrap().to_owned()));
        match out.next_continuation_token() {
            Some(next) if out.is_truncated().unwrap_or(false) => token = Some(next.to_owned()),
            _ => return keys,
        }
    }
}

/// The main path: a v2 backup whose SSTs are spread over three nodes; on every node
/// aws-sdk-s3 reads every file byte-exact through the local view (ranged reads too), lists
/// it with V1 markers and V2 tokens, gets 404 NoSuchKey for a missing key and 403 for a wrong
/// secret. A file nobody holds is a 404 with a log line naming it. What BR writes is stored on
/// the node and read back. The manifest comes from the node's own backupmeta, a given path,
/// or the peers. After a restart with every other node gone, the files the view fetched
/// before (and the manifest) are served from its cache.
#[test]
fn every_node_serves_the_whole_backup_and_keeps_what_it_fetched() {
    let dir = test_dir();
    let cluster = Cluster::start(dir.path(), "500ms");
    let files: Vec<DataFile> =
        (0..12).map(|i| DataFile::new(&format!("{}/{i}_write.sst", i % 4), 1000 + i * 90_001)).collect();
    let lost = DataFile::new("3/lost_write.sst", 5000);
    let mut listed = files.clone();
    listed.push(lost.clone());
    let meta = cluster.archive().join("backup-1");
    write_backupmeta_v2(&meta, &listed);
    let ids = ["a", "b", "c"];
    for (i, f) in files.iter().enumerate() {
        f.write_to(&cluster.node_dir(ids[i % 3]));
    }
    // The node BR ran on also holds the backupmeta, as after `br backup --storage local://`.
    write_backupmeta_v2(&cluster.node_dir("a"), &listed);
    // Three ways to the manifest: a reads its own backupmeta, b the archive's copy, c fetches
    // it from its peers.
    let mut agents: Vec<Agent> = vec![
        view_agent(&cluster, "a", None, &[]),
        view_agent(&cluster, "b", Some(&meta), &[]),
        view_agent(&cluster, "c", None, &[]),
    ];
    let bucket = cluster.depot.field("bucket");
    let url = agents[0].s3_url.clone().unwrap();
    assert!(url.starts_with(&format!("s3://{bucket}/{PREFIX}?endpoint=http://127.0.0.1:")), "{url}");

    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        for agent in &agents {
            let s3 = client_of(&cluster, agent);
            for f in &files {
                assert!(get(&s3, &bucket, &key(f)).await == f.data, "{} through {}'s view", f.name, agent.node_id);
            }
            // Ranged reads of a file this node does not hold (now cached) and one it does.
            for f in [&files[4], &files[5]] {
                let out = s3.get_object().bucket(&bucket).key(key(f)).range("bytes=1000-70999").send().await.unwrap();
                assert_eq!(out.content_range(), Some(format!("bytes 1000-70999/{}", f.data.len()).as_str()));
                let body = out.body.collect().await.unwrap().into_bytes();
                assert!(body[..] == f.data[1000..71000], "range of {}", f.name);
            }
            // The backupmeta, which only a holds, reaches BR on every node.
            let backupmeta = std::fs::read(cluster.node_dir("a").join("backupmeta")).unwrap();
            assert_eq!(get(&s3, &bucket, &format!("{PREFIX}/backupmeta")).await, backupmeta);

            let err = s3.head_object().bucket(&bucket).key(format!("{PREFIX}/no/such.sst")).send().await.unwrap_err();
            assert!(err.into_service_error().is_not_found(), "HEAD of a missing key on {}", agent.node_id);
            let err = s3.get_object().bucket(&bucket).key(format!("{PREFIX}/no/such.sst")).send().await.unwrap_err();
            assert_eq!(err.into_service_error().meta().code(), Some("NoSuchKey"));

            let want: BTreeSet<String> = listed.iter().map(key).collect();
            let v1: BTreeSet<String> = list_v1(&s3, &bucket, &format!("{PREFIX}/"), 5).await.into_iter().collect();
            let v2: BTreeSet<String> = list_v2(&s3, &bucket, &format!("{PREFIX}/"), 4).await.into_iter().collect();
            assert!(want.is_subset(&v1), "V1 on {}: {v1:?}", agent.node_id);
            assert_eq!(v1, v2, "V1 and V2 list the same keys on {}", agent.node_id);
            let top = s3.list_objects_v2().bucket(&bucket).delimiter("/").send().await.unwrap();
            let prefixes: Vec<&str> = top.common_prefixes().iter().map(|p| p.prefix().unwrap()).collect();
            assert_eq!(prefixes, [format!("{PREFIX}/")]);

            let wrong = s3_client(
                agent.s3_endpoint.as_deref().unwrap(),
                &cluster.depot.field("access_key"),
                "not-the-secret-key-at-all-000000000000000",
                "us-east-1",
                None,
            );
            let err = wrong.get_object().bucket(&bucket).key(key(&files[0])).send().await.unwrap_err();
            assert_eq!(err.raw_response().map(|r| r.status().as_u16()), Some(403));
        }

        let log = agents[2].stderr();
        assert!(log.contains("fetched the backup's metadata for the view"), "c read the manifest from a peer:\n{log}");
        assert!(log.contains("the view serves this backup"), "{log}");

        // No live node holds it: 404, and the log names the file.
        let s3 = client_of(&cluster, &agents[2]);
        let err = s3.get_object().bucket(&bucket).key(key(&lost)).send().await.unwrap_err();
        assert_eq!(err.into_service_error().meta().code(), Some("NoSuchKey"));
        assert!(
            eventually(Duration::from_secs(5), || {
                let log = agents[2].stderr();
                log.contains("no live node (and no archive) can provide") && log.contains("lost_write.sst")
            }),
            "the log names the missing file:\n{}",
            agents[2].stderr()
        );

        // BR's writes (a restore checkpoint) are kept on the node and read back.
        let checkpoint = format!("{PREFIX}/checkpoints/restore-1/checkpoint.meta");
        s3.put_object().bucket(&bucket).key(&checkpoint).body(ByteStream::from_static(b"ckpt")).send().await.unwrap();
        assert_eq!(get(&s3, &bucket, &checkpoint).await, b"ckpt");
    });

    // c restarts alone: what it fetched comes from its cache, with no peer to ask.
    let (status, lines) = agents[2].stop();
    assert!(status.success());
    let summary: serde_json::Value = serde_json::from_str(lines.last().unwrap()).unwrap();
    assert!(summary["s3"]["fetched"].as_u64().unwrap() >= 8, "{summary}");
    for agent in &mut agents[..2] {
        agent.kill9();
    }
    let c = view_agent(&cluster, "c", None, &[]);
    rt.block_on(async {
        let s3 = client_of(&cluster, &c);
        for f in &files {
            assert!(get(&s3, &bucket, &key(f)).await == f.data, "{} after a restart, peers gone", f.name);
        }
        let checkpoint = format!("{PREFIX}/checkpoints/restore-1/checkpoint.meta");
        assert_eq!(get(&s3, &bucket, &checkpoint).await, b"ckpt", "BR's write survives a restart");
    });
}

/// Faults on the peer side of a view's read: a holder killed mid-file (the read continues on
/// the other holder; the client gets one good body), a holder serving corrupted bytes (caught,
/// logged, another used), and a cache over its budget (old files evicted, reads still right,
/// concurrent reads of one file sharing one fetch).
#[test]
fn a_view_survives_dying_and_lying_holders_and_keeps_its_cache_in_budget() {
    let dir = test_dir();
    let cluster = Cluster::start(dir.path(), "500ms");
    let big = DataFile::new("big/1.sst", 24 << 20);
    let bent = DataFile::new("bent/1.sst", 3 << 20);
    let small: Vec<DataFile> = (0..6).map(|i| DataFile::new(&format!("small/{i}.sst"), 1 << 20)).collect();
    let mut all = vec![big.clone(), bent.clone()];
    all.extend(small.iter().cloned());
    let manifest = dir.path().join("manifest.jsonl");
    write_jsonl(&manifest, &all);
    // a-dies holds the big file and serves it slowly; b holds everything right; a-bad holds a
    // corrupted copy of `bent` (same size).
    big.write_to(&cluster.node_dir("a-dies"));
    for f in &all {
        f.write_to(&cluster.node_dir("b"));
    }
    let mut corrupted = bent.clone();
    corrupted.data[1 << 20] ^= 0x55;
    corrupted.write_to(&cluster.node_dir("a-bad"));
    let mut dying = cluster.agent("a-dies", &["--max-rate", "8MiB"]);
    let _bad = cluster.agent("a-bad", &[]);
    let _b = cluster.agent("b", &[]);
    let me = view_agent(&cluster, "me", Some(&manifest), &["--cache-max", "5MiB"]);
    let cache = cluster.node_dir("me").join(".depot/view/cache");
    let bucket = cluster.depot.field("bucket");

    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let s3 = client_of(&cluster, &me);
        // Holder killed mid-file: a-dies is picked first (node ids break ties), killed once
        // the transfer is under way; the read completes from b.
        let read = tokio::spawn({
            let (s3, bucket, key) = (s3.clone(), bucket.clone(), key(&big));
            async move { get(&s3, &bucket, &key).await }
        });
        let started = eventually(Duration::from_secs(20), || partial_bytes(&cache) >= 2 << 20);
        assert!(started, "the transfer from a-dies started");
        dying.kill9();
        assert!(read.await.unwrap() == big.data, "one good body after the holder died");

        // A holder with corrupted bytes is caught and another one used; it is logged.
        assert!(get(&s3, &bucket, &key(&bent)).await == bent.data);
        let log = me.stderr();
        assert!(log.contains("checksum mismatch") && log.contains("a-bad"), "the corrupt holder is logged:\n{log}");
        assert!(log.contains("transfer broke off") && log.contains("a-dies"), "the failover is logged:\n{log}");

        // Concurrent readers of one file share one fetch, and everything stays right while
        // the cache (5 MiB) evicts the least recently used files.
        for round in 0..2 {
            let mut reads = Vec::new();
            for f in &small {
                for _ in 0..3 {
                    let (s3, bucket, key) = (s3.clone(), bucket.clone(), key(f));
                    reads.push(tokio::spawn(async move { get(&s3, &bucket, &key).await }));
                }
            }
            for (i, read) in reads.into_iter().enumerate() {
                assert!(read.await.unwrap() == small[i / 3].data, "round {round}: {}", small[i / 3].name);
            }
        }
    });
    let cached: u64 = walk_size(&cache);
    assert!(cached <= 5 << 20, "the cache holds {cached} bytes, over its 5 MiB budget");
    let mut me = me;
    let (_, lines) = me.stop();
    let summary: serde_json::Value = serde_json::from_str(lines.last().unwrap()).unwrap();
    assert!(summary["s3"]["cache"]["evicted"].as_u64().unwrap() >= 1, "{summary}");
    // 2 big ones + 6 small once each + re-fetches after eviction; never one fetch per reader.
    let fetched = summary["s3"]["fetched"].as_u64().unwrap();
    assert!(fetched < 2 + 6 * 3 * 2, "concurrent reads shared fetches: {summary}");
}

fn walk_size(dir: &Path) -> u64 {
    let mut total = 0;
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let name = entry.file_name();
        if name == ".depot" {
            continue;
        }
        let meta = entry.metadata().unwrap();
        total += if meta.is_dir() { walk_size(&entry.path()) } else { meta.len() };
    }
    total
}
