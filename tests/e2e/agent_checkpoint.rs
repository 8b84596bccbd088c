//! Resumable fetches (issue 4): `kill -9` and a re-run, damaged records, the lock, the job's
//! identity, and checkpoints kept in the archive over S3.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use depot_tests::agents::{
    Cluster, DataFile, eventually, partial_bytes, spawn_piped, write_backupmeta_v2, write_jsonl,
};
use depot_tests::test_dir;

/// The names recorded in the `.cpt` objects under `data` (each: a header line, then JSON).
fn recorded_names(data: &Path) -> Vec<String> {
    let mut names = Vec::new();
    for entry in std::fs::read_dir(data).into_iter().flatten().flatten() {
        let text = std::fs::read_to_string(entry.path()).unwrap();
        let (_, body) = text.split_once('\n').unwrap();
        let records: Vec<serde_json::Value> = serde_json::from_str(body).unwrap();
        names.extend(records.iter().map(|r| r["name"].as_str().unwrap().to_owned()));
    }
    names.sort();
    names
}

fn cpt_count(data: &Path) -> usize {
    std::fs::read_dir(data).map_or(0, |d| d.count())
}

/// A backup of `small` 64 KiB files and one 20 MiB file, all held by node "a".
fn backup(cluster: &Cluster, small: usize) -> (PathBuf, Vec<DataFile>) {
    let mut files = vec![DataFile::new("big/0.sst", 20 << 20)];
    files.extend((0..small).map(|i| DataFile::new(&format!("s/{i}.sst"), 64 << 10)));
    for file in &files {
        file.write_to(&cluster.node_dir("a"));
    }
    let manifest = cluster.dir.join("manifest.jsonl");
    write_jsonl(&manifest, &files);
    (manifest, files)
}

/// A point in [from, from + spread) that differs between runs (no RNG crate needed).
fn somewhere(from: Duration, spread: Duration) -> Duration {
    let nanos = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap().subsec_nanos();
    from + spread.mul_f64(f64::from(nanos % 1000) / 1000.0)
}

/// Kills a fetch with `kill -9` at a random point once some files are recorded and the big
/// file is part-way, then runs it again: every file ends verified; recorded files are neither
/// fetched nor hashed again; the big file continues from the bytes it had.
fn kill_and_resume(cluster: &Cluster, extra: &[&str], checkpoint_data: &dyn Fn() -> PathBuf) {
    let (manifest, files) = backup(cluster, 40);
    let _a = cluster.agent("a", &["--max-rate", "12MiB"]);
    let me = cluster.node_dir("me");
    let mut args = vec!["--checkpoint-interval", "100ms", "--concurrency", "2"];
    args.extend_from_slice(extra);
    let mut child = spawn_piped(cluster.fetch_command("me", manifest.to_str().unwrap(), &args).envs(cluster.aws_env()));
    assert!(
        eventually(Duration::from_secs(20), || cpt_count(&checkpoint_data()) >= 1 && partial_bytes(&me) >= 1 << 20),
        "the fetch recorded files and started the big one"
    );
    std::thread::sleep(somewhere(Duration::ZERO, Duration::from_millis(400)));
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();

    // Over S3, a record whose body had reached `depot serve` before the kill still lands
    // (the server finishes the PUT): wait until the records stop changing.
    let mut recorded = recorded_names(&checkpoint_data());
    let settle = std::time::Instant::now();
    loop {
        std::thread::sleep(Duration::from_millis(300));
        let now = recorded_names(&checkpoint_data());
        if now == recorded || settle.elapsed() > Duration::from_secs(5) {
            break;
        }
        recorded = now;
    }
    assert!(!recorded.is_empty());
    let kept = partial_bytes(&me);
    let mut again = cluster.fetch_command("me", manifest.to_str().unwrap(), &args);
    let run = depot_tests::agents::run(again.envs(cluster.aws_env()), Duration::from_secs(60));
    assert_eq!(run.code, Some(0), "{run:?}");
    let summary = run.json();
    eprintln!("recorded {} file(s), kept {kept} partial bytes; re-run: {summary}", recorded.len());
    assert_eq!(summary["files_needed"], files.len());
    assert_eq!(summary["files_resumed"], recorded.len(), "every recorded file trusted without hashing: {summary}");
    assert_eq!(
        summary["files_fetched"].as_u64().unwrap() + summary["files_present"].as_u64().unwrap(),
        files.len() as u64,
        "{summary}"
    );
    assert!(summary["files_fetched"].as_u64().unwrap() <= (files.len() - recorded.len()) as u64, "{summary}");
    if kept > 0 && !recorded.contains(&"big/0.sst".to_owned()) {
        assert_eq!(summary["bytes_resumed"].as_u64().unwrap(), kept, "the big file continued: {summary}");
        assert!(summary["bytes_received"].as_u64().unwrap() < files.iter().map(|f| f.data.len() as u64).sum::<u64>());
    }
    for file in &files {
        assert!(file.is_in(&me), "{} verified in place", file.name);
    }
    assert_eq!(summary["checkpoint"]["removed"], true, "{summary}");
    assert_eq!(partial_bytes(&me), 0);
}

#[test]
fn kill_9_then_a_rerun_resumes_without_refetching_or_rehashing() {
    let dir = test_dir();
    let cluster = Cluster::start(dir.path(), "500ms");
    let data = cluster.node_dir("me").join(".depot/checkpoints/fetch-fetch/data");
    kill_and_resume(&cluster, &[], &|| data.clone());
    assert!(!cluster.node_dir("me").join(".depot/checkpoints/fetch-fetch").exists(), "success removes it");
}

#[test]
fn checkpoints_in_the_archive_over_s3_resume_the_same_way() {
    let dir = test_dir();
    let cluster = Cluster::start(dir.path(), "500ms");
    let url = cluster.s3_url("checkpoints");
    let data = cluster.archive().join("checkpoints/me/fetch-fetch/data");
    kill_and_resume(&cluster, &["--checkpoint-storage", &url], &|| data.clone());
    assert!(!cluster.archive().join("checkpoints/me/fetch-fetch/checkpoint.meta").exists(), "success removes it");
    assert!(!cluster.archive().join("checkpoints/me/fetch-fetch/checkpoint.lock").exists());
}

#[test]
fn a_damaged_record_is_skipped_with_a_warning_and_its_files_checked_again() {
    let dir = test_dir();
    let cluster = Cluster::start(dir.path(), "500ms");
    let files: Vec<DataFile> = (0..6).map(|i| DataFile::new(&format!("d/{i}.sst"), 10_000)).collect();
    for f in &files {
        f.write_to(&cluster.node_dir("a"));
    }
    let backup = cluster.archive().join("b1");
    write_backupmeta_v2(&backup, &files);
    let _a = cluster.agent("a", &[]);
    let meta = backup.to_str().unwrap();
    let first = cluster.fetch("me", meta, &["--keep-checkpoint"]);
    assert_eq!(first.code, Some(0), "{first:?}");
    let data = cluster.node_dir("me").join(".depot/checkpoints/fetch-fetch/data");
    assert_eq!(recorded_names(&data).len(), 6);

    let cpt = std::fs::read_dir(&data).unwrap().next().unwrap().unwrap().path();
    let mut bytes = std::fs::read(&cpt).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0x01;
    std::fs::write(&cpt, bytes).unwrap();

    let second = cluster.fetch("me", meta, &[]);
    assert_eq!(second.code, Some(0), "{second:?}");
    let summary = second.json();
    assert_eq!(summary["files_resumed"], 0, "nothing trusted from a damaged record");
    assert_eq!(summary["files_present"], 6, "the files were hashed again instead");
    assert_eq!(summary["checkpoint"]["skipped_records"].as_array().unwrap().len(), 1, "{summary}");
    let logged: String = std::fs::read_dir(dir.path().join("logs"))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("fetch-me"))
        .map(|e| std::fs::read_to_string(e.path()).unwrap_or_default())
        .collect();
    assert!(logged.contains("damaged checkpoint record"), "warned in the log: {logged}");
}

#[test]
fn a_second_fetch_of_the_task_is_refused_until_the_holder_is_gone_or_its_lease_ends() {
    let dir = test_dir();
    let cluster = Cluster::start(dir.path(), "500ms");
    let big = DataFile::new("l/1.sst", 16 << 20);
    big.write_to(&cluster.node_dir("a"));
    let manifest = dir.path().join("manifest.jsonl");
    write_jsonl(&manifest, std::slice::from_ref(&big));
    let _a = cluster.agent("a", &["--max-rate", "2MiB"]);
    let me = cluster.node_dir("me");
    let lock = me.join(".depot/checkpoints/fetch-fetch/checkpoint.lock");
    let mut first = spawn_piped(&mut cluster.fetch_command("me", manifest.to_str().unwrap(), &[]));
    assert!(eventually(Duration::from_secs(20), || lock.exists()));

    let refused = cluster.fetch("me", manifest.to_str().unwrap(), &[]);
    assert_eq!(refused.code, Some(2), "{refused:?}");
    assert!(refused.stderr.contains("another fetch of this task is running"), "{}", refused.stderr);
    assert!(refused.stderr.contains(&format!("process {}", first.id())), "names the holder: {}", refused.stderr);
    assert!(refused.stderr.contains("until "), "says when the lease ends: {}", refused.stderr);

    // kill -9: the holder is provably gone (same host, no such process): taken over at once.
    first.kill().unwrap();
    first.wait().unwrap();
    let started = Instant::now();
    let taken = cluster.fetch("me", manifest.to_str().unwrap(), &["--checkpoint-lease", "2s"]);
    assert_eq!(taken.code, Some(0), "{taken:?}");
    assert!(started.elapsed() < Duration::from_secs(30));
    assert!(big.is_in(&me));

    // A holder on another host cannot be proven gone: refused while its lease runs, taken
    // over once it has ended.
    std::fs::remove_file(me.join("l/1.sst")).unwrap();
    let write_lock = |expires_in_ms: i64| {
        let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap().as_millis() as i64;
        let record = serde_json::json!({
            "id": "someone-else",
            "holder": {"host": "another-host", "pid": 4242, "pid_start": null, "node_id": "me"},
            "expires_unix_ms": now + expires_in_ms,
        });
        std::fs::create_dir_all(lock.parent().unwrap()).unwrap();
        std::fs::write(&lock, record.to_string()).unwrap();
    };
    write_lock(60_000);
    let refused = cluster.fetch("me", manifest.to_str().unwrap(), &[]);
    assert_eq!(refused.code, Some(2), "{refused:?}");
    assert!(refused.stderr.contains("process 4242 on another-host"), "{}", refused.stderr);
    write_lock(-1);
    let taken = cluster.fetch("me", manifest.to_str().unwrap(), &[]);
    assert_eq!(taken.code, Some(0), "an expired lease is taken over: {taken:?}");
}

#[test]
fn another_job_is_refused_with_what_differs_and_fresh_starts_over() {
    let dir = test_dir();
    let cluster = Cluster::start(dir.path(), "500ms");
    let one = [DataFile::new("j/1.sst", 5000)];
    let two = [DataFile::new("j/2.sst", 7000)];
    for f in one.iter().chain(&two) {
        f.write_to(&cluster.node_dir("a"));
    }
    let (m1, m2) = (dir.path().join("m1.jsonl"), dir.path().join("m2.jsonl"));
    write_jsonl(&m1, &one);
    write_jsonl(&m2, &two);
    let _a = cluster.agent("a", &[]);
    let first = cluster.fetch("me", m1.to_str().unwrap(), &["--keep-checkpoint"]);
    assert_eq!(first.code, Some(0), "{first:?}");

    let refused = cluster.fetch("me", m2.to_str().unwrap(), &[]);
    assert_eq!(refused.code, Some(2), "{refused:?}");
    let message = &refused.stderr;
    assert!(message.contains("belongs to a different job") && message.contains("manifest sha256"), "{message}");
    assert!(message.contains("--fresh"), "says how to start over: {message}");
    assert!(!cluster.node_dir("me").join("j/2.sst").exists(), "nothing fetched");

    let fresh = cluster.fetch("me", m2.to_str().unwrap(), &["--fresh"]);
    assert_eq!(fresh.code, Some(0), "{fresh:?}");
    assert!(two[0].is_in(&cluster.node_dir("me")));
    let summary = fresh.json();
    assert_eq!(summary["files_fetched"], 1);
}
