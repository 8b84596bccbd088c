//! `depot-agent fetch` and `verify` as a user runs them: a coordinator, agents on loopback,
//! a backup spread over their directories, the manifest read from the archive over S3.

use std::time::Duration;

use depot_tests::agents::{Cluster, DataFile, backupmeta_v1, run, temp_files, write_backupmeta_v2, write_jsonl};
use depot_tests::test_dir;

/// The main path: a BR v2 backup whose SSTs are scattered over two nodes; the third
/// node fetches what it lacks, reading the backupmeta through the archive's S3 URL. Files
/// already present are left alone, a damaged local copy is replaced, and a second run has
/// nothing to do.
#[test]
fn fetch_collects_a_scattered_backup_and_leaves_present_files_alone() {
    let dir = test_dir();
    let cluster = Cluster::start(dir.path(), "500ms");
    let files: Vec<DataFile> =
        (0..12).map(|i| DataFile::new(&format!("{}/{i}_write.sst", i % 3), 1000 + i * 70_001)).collect();
    write_backupmeta_v2(&cluster.archive().join("backup-1"), &files);
    let (a, b, c) = (cluster.node_dir("a"), cluster.node_dir("b"), cluster.node_dir("c"));
    for (i, f) in files.iter().enumerate() {
        f.write_to(if i % 2 == 0 { &a } else { &b });
    }
    // c already has two files, one of them damaged (right size, wrong bytes).
    files[0].write_to(&c);
    let mut damaged = files[1].clone();
    damaged.data[10] ^= 1;
    damaged.write_to(&c);
    let before = std::fs::metadata(c.join(&files[0].name)).unwrap().modified().unwrap();

    let _agents = [cluster.agent("a", &[]), cluster.agent("b", &[]), cluster.agent("c", &[])];
    let meta = cluster.s3_url("backup-1/");
    let mut cmd = cluster.fetch_command("c", &meta, &["--concurrency", "4"]);
    cmd.envs(cluster.aws_env());
    let fetched = run(&mut cmd, Duration::from_secs(60));
    assert_eq!(fetched.code, Some(0), "{fetched:?}");
    let summary = fetched.json();
    assert_eq!(summary["files_needed"], 12);
    assert_eq!(summary["files_present"], 1);
    assert_eq!(summary["files_fetched"], 11);
    assert_eq!(summary["files_replaced"], 1);
    assert_eq!(summary["files_failed"], 0);
    assert_eq!(summary["missing"], serde_json::json!([]));
    let expected_bytes: usize = files[1..].iter().map(|f| f.data.len()).sum();
    assert_eq!(summary["bytes_fetched"], expected_bytes);
    let per_peer = &summary["per_peer"];
    assert_eq!(per_peer["a"].as_u64().unwrap() + per_peer["b"].as_u64().unwrap(), 11, "{summary}");
    assert!(per_peer.get("c").is_none(), "a node never fetches from itself: {summary}");
    assert!(summary["seconds"].as_f64().unwrap() > 0.0);
    for f in &files {
        assert!(f.is_in(&c), "{} is byte-exact on c", f.name);
    }
    assert_eq!(temp_files(&c), 0, "nothing partial left");
    assert_eq!(
        std::fs::metadata(c.join(&files[0].name)).unwrap().modified().unwrap(),
        before,
        "a present, correct file is not rewritten"
    );

    let again = run(cluster.fetch_command("c", &meta, &[]).envs(cluster.aws_env()), Duration::from_secs(60));
    assert_eq!(again.code, Some(0), "{again:?}");
    let summary = again.json();
    assert_eq!(summary["files_present"], 12);
    assert_eq!(summary["files_fetched"], 0);
}

/// A file no live node has: listed by name, exit code 1, not retried, the others fetched.
/// Also a v1 backupmeta given by path, and `--files-from`.
#[test]
fn a_file_no_node_has_is_named_and_the_rest_still_arrives() {
    let dir = test_dir();
    let cluster = Cluster::start(dir.path(), "500ms");
    let present = [DataFile::new("t/1.sst", 5000), DataFile::new("t/2.sst", 7000)];
    let lost = DataFile::new("t/lost.sst", 100);
    let all = [present[0].clone(), present[1].clone(), lost.clone()];
    let meta = dir.path().join("backupmeta");
    std::fs::write(&meta, backupmeta_v1(&all)).unwrap();
    for f in &present {
        f.write_to(&cluster.node_dir("a"));
    }
    let _a = cluster.agent("a", &[]);
    let _b = cluster.agent("b", &[]);

    let out = cluster.fetch("b", meta.to_str().unwrap(), &[]);
    assert_eq!(out.code, Some(1), "{out:?}");
    let summary = out.json();
    assert_eq!(summary["missing"], serde_json::json!(["t/lost.sst"]));
    assert_eq!(summary["files_fetched"], 2);
    assert_eq!(summary["files_failed"], 1);
    assert!(present.iter().all(|f| f.is_in(&cluster.node_dir("b"))));
    assert!(!cluster.node_dir("b").join("t/lost.sst").exists());
    assert!(out.elapsed < Duration::from_secs(5), "absence is final, not retried: {:?}", out.elapsed);

    // The human summary names the file too.
    let out = run(
        cluster.command("fetch").arg("--root").arg(cluster.node_dir("b")).args([
            "--node-id",
            "b",
            "--meta",
            meta.to_str().unwrap(),
        ]),
        Duration::from_secs(30),
    );
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(out.stdout.contains("t/lost.sst"), "{}", out.stdout);
    assert!(out.stdout.contains("no live node has them"), "{}", out.stdout);

    // Only the listed subset is needed.
    let list = dir.path().join("list.txt");
    std::fs::write(&list, "t/1.sst\n\n").unwrap();
    let out = cluster.fetch("c", meta.to_str().unwrap(), &["--files-from", list.to_str().unwrap()]);
    assert_eq!(out.code, Some(0), "{out:?}");
    assert_eq!(out.json()["files_needed"], 1);
    assert!(present[0].is_in(&cluster.node_dir("c")));
    assert!(!cluster.node_dir("c").join("t/2.sst").exists());
}

/// `verify`: per file, the nodes holding it correctly (by Stat, nothing transferred); files
/// held by nobody listed; exit code 1 until every file has a holder.
#[test]
fn verify_reports_holders_and_files_held_by_nobody() {
    let dir = test_dir();
    let cluster = Cluster::start(dir.path(), "500ms");
    let files = [DataFile::new("x/1.sst", 3000), DataFile::new("x/2.sst", 4000), DataFile::new("x/3.sst", 5000)];
    let manifest = dir.path().join("manifest.jsonl");
    write_jsonl(&manifest, &files);
    files[0].write_to(&cluster.node_dir("a"));
    files[0].write_to(&cluster.node_dir("b"));
    files[1].write_to(&cluster.node_dir("b"));
    let mut wrong = files[2].clone();
    wrong.data[0] ^= 0xff;
    wrong.write_to(&cluster.node_dir("a"));
    let _agents = [cluster.agent("a", &[]), cluster.agent("b", &[])];

    let verify = |json: bool| {
        let mut cmd = cluster.command("verify");
        cmd.args(["--meta", manifest.to_str().unwrap()]);
        if json {
            cmd.arg("--json");
        }
        run(&mut cmd, Duration::from_secs(30))
    };
    let out = verify(true);
    assert_eq!(out.code, Some(1), "{out:?}");
    let report = out.json();
    assert_eq!(report["missing"], serde_json::json!(["x/3.sst"]));
    assert_eq!(report["files"][0]["nodes"], serde_json::json!(["a", "b"]));
    assert_eq!(report["files"][1]["nodes"], serde_json::json!(["b"]));
    assert_eq!(report["files"][2]["nodes"], serde_json::json!([]));
    assert_eq!(report["files"][2]["mismatched"], serde_json::json!(["a"]));
    let text = verify(false);
    assert!(text.stdout.contains("x/3.sst"), "{}", text.stdout);

    files[2].write_to(&cluster.node_dir("b"));
    let out = verify(true);
    assert_eq!(out.code, Some(0), "{out:?}");
    assert_eq!(out.json()["missing"], serde_json::json!([]));
}

/// Everything over TLS with Depot's generated CA: agents register with an `https://`
/// coordinator (`--ca-file`), and fetch reads the manifest over HTTPS trusting the CA from
/// `SSL_CERT_FILE`, as TiKV would.
#[test]
fn works_against_an_https_coordinator_with_its_generated_ca() {
    let dir = test_dir();
    let depot = depot_tests::Depot::start(&dir.path().join("archive"), &["--tls", "on"]);
    let registry = depot.field("registry");
    assert!(registry.starts_with("https://"), "{registry}");
    let ca = depot.field("ca_file");
    let token = depot.field("join_token");
    let file = DataFile::new("tls/1.sst", 70_000);
    let holder = dir.path().join("nodes/h");
    std::fs::create_dir_all(&holder).unwrap();
    file.write_to(&holder);
    let _h = depot_tests::agents::Agent::start(
        dir.path(),
        &holder,
        &registry,
        &token,
        &["--node-id", "h", "--listen", "127.0.0.1:0", "--ca-file", &ca],
    )
    .unwrap_or_else(|run| panic!("agent over TLS: {run:?}"));
    std::fs::create_dir_all(dir.path().join("archive/backup")).unwrap();
    write_jsonl(&dir.path().join("archive/backup/manifest.jsonl"), std::slice::from_ref(&file));
    let meta = format!(
        "s3://{}/backup/manifest.jsonl?endpoint={}&force-path-style=true&region={}",
        depot.field("bucket"),
        depot.field("endpoint"),
        depot.field("region")
    );
    let me = dir.path().join("nodes/me");
    std::fs::create_dir_all(&me).unwrap();
    let out = run(
        std::process::Command::new(depot_tests::bin("depot-agent"))
            .arg("fetch")
            .arg("--root")
            .arg(&me)
            .args(["--node-id", "me", "--coordinator", &registry, "--join-token", &token])
            .args(["--meta", &meta, "--json"])
            .env("SSL_CERT_FILE", &ca)
            .env("AWS_ACCESS_KEY_ID", depot.field("access_key"))
            .env("AWS_SECRET_ACCESS_KEY", depot.field("secret_key")),
        Duration::from_secs(30),
    );
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(file.is_in(&me));
}

/// The object store `fetch` reads manifests through (and checkpoints will be written through):
/// put, get, list, delete against Depot's S3 endpoint, byte-exact; a missing key is NotFound.
#[tokio::test]
async fn the_object_store_round_trips_through_depot() {
    use depot_agent::storage::{Storage, StoreError, StoreOptions};
    let dir = test_dir();
    let depot = depot_tests::Depot::start(&dir.path().join("archive"), &[]);
    let url = format!(
        "s3://{}/checkpoints/fetch?endpoint={}&force-path-style=true&region={}&access-key={}&secret-access-key={}",
        depot.field("bucket"),
        depot.field("endpoint"),
        depot.field("region"),
        depot.field("access_key"),
        depot.field("secret_key"),
    );
    // Only when the test environment has no AWS credentials of its own do the URL's apply.
    if std::env::var_os("AWS_ACCESS_KEY_ID").is_some() {
        return;
    }
    let store = Storage::open(&url, &StoreOptions::default()).unwrap();
    let record = depot_tests::agents::content("record", 300_000);
    store.put("data/1.cpt", record.clone()).await.unwrap();
    store.put("data/2.cpt", b"two".to_vec()).await.unwrap();
    store.put("checkpoint.meta", b"{}".to_vec()).await.unwrap();
    assert_eq!(store.get("data/1.cpt").await.unwrap(), record);
    assert_eq!(
        std::fs::read(dir.path().join("archive/checkpoints/fetch/data/1.cpt")).unwrap(),
        record,
        "an ordinary file in the archive"
    );
    let listed: Vec<String> = store.list("data/").await.unwrap().into_iter().map(|o| o.key).collect();
    assert_eq!(listed, ["data/1.cpt", "data/2.cpt"]);
    store.delete("data/1.cpt").await.unwrap();
    store.delete("data/1.cpt").await.unwrap();
    assert!(matches!(store.get("data/1.cpt").await, Err(StoreError::NotFound { .. })));
    assert_eq!(store.list("").await.unwrap().len(), 2);

    // Create-only writes (the checkpoint lock): Depot honours If-None-Match: *.
    store.put_new("checkpoint.lock", b"first".to_vec()).await.unwrap();
    assert!(matches!(store.put_new("checkpoint.lock", b"second".to_vec()).await, Err(StoreError::Exists { .. })));
    assert_eq!(store.get("checkpoint.lock").await.unwrap(), b"first");

    // A multipart upload (over 16 MiB) carries the digest as metadata, visible to HEAD, and is
    // invisible until finished; an aborted one leaves nothing.
    let big = depot_tests::agents::content("big", 20 << 20);
    let digest = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&big));
    let mut upload = store.upload("big.sst", big.len() as u64, Some(&digest)).await.unwrap();
    for chunk in big.chunks(1 << 20) {
        upload.write(bytes::Bytes::copy_from_slice(chunk)).await.unwrap();
    }
    assert!(store.head("big.sst").await.unwrap().is_none());
    upload.finish().await.unwrap();
    let head = store.head("big.sst").await.unwrap().unwrap();
    assert_eq!((head.size, head.sha256.as_deref()), (big.len() as u64, Some(digest.as_str())));
    assert_eq!(std::fs::read(dir.path().join("archive/checkpoints/fetch/big.sst")).unwrap(), big);
    let mut upload = store.upload("aborted.sst", big.len() as u64, None).await.unwrap();
    upload.write(bytes::Bytes::copy_from_slice(&big[..9 << 20])).await.unwrap();
    upload.abort().await;
    assert!(store.head("aborted.sst").await.unwrap().is_none());
}
