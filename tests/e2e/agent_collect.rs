//! `depot-agent collect`: a backup scattered over the nodes gathered into the archive over S3,
//! and its faults — a source dying mid-file, corrupted bytes, an archive refusing writes, a
//! `kill -9` of collect itself, a file no node holds.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use depot_tests::agents::{Cluster, DataFile, eventually, finish, run, spawn_piped, write_backupmeta_v2};
use depot_tests::test_dir;

/// `depot-agent collect --meta META --to s3://.../PREFIX/ --json` with the archive's
/// credentials, plus `extra`.
fn collect_command(cluster: &Cluster, meta: &Path, prefix: &str, extra: &[&str]) -> Command {
    let mut cmd = cluster.command("collect");
    cmd.args(["--meta", meta.to_str().unwrap(), "--to", &cluster.s3_url(prefix), "--json"])
        .args(["--log-file", cluster.dir.join("logs/collect.log").to_str().unwrap()])
        .args(extra)
        .envs(cluster.aws_env());
    cmd
}

/// The BR host's backup directory: backupmeta (v2) and its datafile objects, plus what a
/// restore does not need (`backup.lock`, BR's `checkpoints/`).
fn br_host_dir(cluster: &Cluster, files: &[DataFile]) -> std::path::PathBuf {
    let meta = cluster.dir.join("br-host");
    write_backupmeta_v2(&meta, files);
    std::fs::write(meta.join("backup.lock"), b"lock").unwrap();
    std::fs::create_dir_all(meta.join("checkpoints/backup")).unwrap();
    std::fs::write(meta.join("checkpoints/backup/checkpoint.meta"), b"x").unwrap();
    std::fs::write(meta.join("backupmeta.schema.000000001"), b"schema bytes").unwrap();
    meta
}

/// The main path: SSTs over three nodes, the backupmeta on the BR host; `collect`
/// makes the archive hold the complete backup, byte-exact, with the meta files a restore
/// needs and not the ones it does not, and prints the `br restore` line. A second run copies
/// nothing.
#[test]
fn collect_gathers_a_scattered_backup_into_the_archive() {
    let dir = test_dir();
    let cluster = Cluster::start(dir.path(), "500ms");
    let mut files: Vec<DataFile> =
        (0..15).map(|i| DataFile::new(&format!("{}/{i}_write.sst", i % 4), 1000 + i * 90_001)).collect();
    files.push(DataFile::new("big/0_default.sst", 20 << 20));
    let meta = br_host_dir(&cluster, &files);
    let nodes = ["a", "b", "c"];
    for (i, f) in files.iter().enumerate() {
        f.write_to(&cluster.node_dir(nodes[i % 3]));
    }
    // One file on two nodes: it is copied once.
    files[1].write_to(&cluster.node_dir("c"));
    let _agents: Vec<_> = nodes.iter().map(|n| cluster.agent(n, &[])).collect();

    let out =
        run(&mut collect_command(&cluster, &meta, "collected/", &["--concurrency", "4"]), Duration::from_secs(120));
    assert_eq!(out.code, Some(0), "{out:?}");
    let summary = out.json();
    assert_eq!(summary["files_needed"], 16);
    assert_eq!(summary["files_copied"], 16);
    assert_eq!(summary["missing"], serde_json::json!([]));
    assert_eq!(summary["backupmeta_written"], true);
    let total: usize = files.iter().map(|f| f.data.len()).sum();
    assert_eq!(summary["bytes_copied"], total);
    let sources = summary["sources"].as_object().unwrap();
    assert_eq!(sources.values().map(|s| s["files"].as_u64().unwrap()).sum::<u64>(), 16, "{summary}");
    let restore = summary["restore_command"].as_str().unwrap();
    assert!(restore.starts_with("br restore full") && restore.contains(&cluster.s3_url("collected/")), "{restore}");

    let archive = cluster.archive().join("collected");
    for f in &files {
        assert!(f.is_in(&archive), "{} is byte-exact in the archive", f.name);
    }
    for name in
        ["backupmeta", "backupmeta.datafile.000000001", "backupmeta.datafile.000000002", "backupmeta.schema.000000001"]
    {
        assert_eq!(std::fs::read(archive.join(name)).unwrap(), std::fs::read(meta.join(name)).unwrap(), "{name}");
    }
    assert!(!archive.join("backup.lock").exists(), "BR's lock is not part of the backup");
    assert!(!archive.join("checkpoints").exists(), "BR's checkpoints are not part of the backup");
    assert!(!archive.join(".depot-collect").exists(), "collect's own checkpoint is removed on success");

    // Again: everything is there with its digest, nothing is copied.
    let again = run(&mut collect_command(&cluster, &meta, "collected/", &[]), Duration::from_secs(60));
    assert_eq!(again.code, Some(0), "{again:?}");
    let summary = again.json();
    assert_eq!(summary["files_present"], 16);
    assert_eq!(summary["files_copied"], 0);

    // The collected backupmeta reads as the same backup (fetch parses it through the archive).
    let mut check = cluster.fetch_command("d", &cluster.s3_url("collected/"), &[]);
    let check = run(check.envs(cluster.aws_env()), Duration::from_secs(60));
    assert_eq!(check.code, Some(0), "{check:?}");
    assert_eq!(check.json()["files_needed"], 16);
}

/// A file no node holds: named, exit 1, everything else collected, and no `backupmeta` in the
/// archive (a restore from it would fail half-way).
#[test]
fn a_file_no_node_holds_is_named_and_the_backupmeta_held_back() {
    let dir = test_dir();
    let cluster = Cluster::start(dir.path(), "500ms");
    let files: Vec<DataFile> = (0..5).map(|i| DataFile::new(&format!("t/{i}.sst"), 50_000 + i)).collect();
    let meta = br_host_dir(&cluster, &files);
    for f in &files[1..] {
        f.write_to(&cluster.node_dir("a"));
    }
    let _a = cluster.agent("a", &[]);
    let out = run(&mut collect_command(&cluster, &meta, "partial/", &["--retries", "1"]), Duration::from_secs(60));
    assert_eq!(out.code, Some(1), "{out:?}");
    let summary = out.json();
    assert_eq!(summary["missing"], serde_json::json!(["t/0.sst"]));
    assert_eq!(summary["files_copied"], 4);
    assert_eq!(summary["backupmeta_written"], false);
    assert!(summary["restore_command"].is_null());
    let archive = cluster.archive().join("partial");
    assert!(!archive.join("backupmeta").exists());
    for f in &files[1..] {
        assert!(f.is_in(&archive));
    }
}

/// A source killed mid-file: the other holder continues at the same offset into the same
/// multipart upload; the object appears once, complete and byte-exact.
#[test]
fn a_source_that_dies_mid_file_is_replaced_and_nothing_partial_appears() {
    let dir = test_dir();
    let cluster = Cluster::start(dir.path(), "500ms");
    let big = DataFile::new("big/1.sst", 40 << 20);
    let meta = br_host_dir(&cluster, std::slice::from_ref(&big));
    big.write_to(&cluster.node_dir("a-dies"));
    big.write_to(&cluster.node_dir("b-stays"));
    let mut dying = cluster.agent("a-dies", &["--max-rate", "8MiB"]);
    let _stays = cluster.agent("b-stays", &[]);
    let archive = cluster.archive().join("died");
    let uploads = cluster.archive().join(".depot/uploads");

    let started = Instant::now();
    let child = spawn_piped(&mut collect_command(&cluster, &meta, "died/", &["--stall-timeout", "2s"]));
    // A part has reached the archive: the kill lands mid-file.
    assert!(eventually(Duration::from_secs(20), || walk_size(&uploads) >= 8 << 20), "the transfer from a-dies started");
    assert!(!archive.join("big/1.sst").exists(), "nothing visible before it is complete");
    dying.kill9();
    let out = finish(child, Duration::from_secs(60), started);
    assert_eq!(out.code, Some(0), "{out:?}");
    assert_eq!(out.json()["sources"], serde_json::json!({"b-stays": {"files": 1, "bytes": big.data.len()}}));
    assert!(big.is_in(&archive));
}

/// Corrupted bytes: caught before the upload completes; with only a bad holder the file fails
/// (exit 2) and nothing appears; with a good holder as well, that one is used.
#[test]
fn corrupted_bytes_never_complete_an_upload() {
    let dir = test_dir();
    let cluster = Cluster::start(dir.path(), "500ms");
    let file = DataFile::new("c/1.sst", 20 << 20);
    let meta = br_host_dir(&cluster, std::slice::from_ref(&file));
    let mut bad = file.clone();
    bad.data[17 << 20] ^= 0x55;
    bad.write_to(&cluster.node_dir("a-bad"));
    let _bad = cluster.agent("a-bad", &[]);
    let archive = cluster.archive().join("corrupt");

    let out = run(&mut collect_command(&cluster, &meta, "corrupt/", &[]), Duration::from_secs(60));
    assert_eq!(out.code, Some(2), "{out:?}");
    let summary = out.json();
    let error = summary["failed"][0]["error"].as_str().unwrap();
    assert!(error.contains("sha256") && error.contains("a-bad"), "{error}");
    assert!(!archive.join("c/1.sst").exists(), "bad bytes never complete an upload");

    file.write_to(&cluster.node_dir("b-good"));
    let _good = cluster.agent("b-good", &[]);
    let out = run(&mut collect_command(&cluster, &meta, "corrupt/", &[]), Duration::from_secs(60));
    assert_eq!(out.code, Some(0), "{out:?}");
    assert_eq!(out.json()["sources"]["b-good"]["files"], 1);
    assert!(file.is_in(&archive));
}

/// The archive refuses writes (wrong secret): a clear error naming the file and the
/// destination, exit 2; a re-run with the right credentials completes.
#[test]
fn an_archive_that_refuses_writes_is_named_and_a_rerun_completes() {
    let dir = test_dir();
    let cluster = Cluster::start(dir.path(), "500ms");
    let files: Vec<DataFile> = (0..6).map(|i| DataFile::new(&format!("r/{i}.sst"), 70_000 + i)).collect();
    let meta = br_host_dir(&cluster, &files);
    for f in &files {
        f.write_to(&cluster.node_dir("a"));
    }
    let _a = cluster.agent("a", &[]);
    let mut cmd = collect_command(&cluster, &meta, "refused/", &["--no-checkpoint"]);
    cmd.env("AWS_SECRET_ACCESS_KEY", "wrong-secret-wrong-secret-wrong-secret12");
    let out = run(&mut cmd, Duration::from_secs(60));
    assert_eq!(out.code, Some(2), "{out:?}");
    let text = format!("{}{}", out.stdout, out.stderr);
    assert!(text.contains("refused") && text.contains("/refused/"), "names the destination: {text}");
    assert!(text.contains("r/") || text.contains("checkpoint"), "names what was being written: {text}");

    let out = run(&mut collect_command(&cluster, &meta, "refused/", &[]), Duration::from_secs(60));
    assert_eq!(out.code, Some(0), "{out:?}");
    for f in &files {
        assert!(f.is_in(&cluster.archive().join("refused")));
    }
}

/// `kill -9` of collect mid-way, then a re-run: the files recorded by the first run are not
/// uploaded again, and the archive ends byte-exact.
#[test]
fn kill_9_of_collect_then_a_rerun_completes_without_reuploading() {
    let dir = test_dir();
    let cluster = Cluster::start(dir.path(), "500ms");
    let files: Vec<DataFile> = (0..40).map(|i| DataFile::new(&format!("k/{i}.sst"), 256 << 10)).collect();
    let meta = br_host_dir(&cluster, &files);
    for f in &files {
        f.write_to(&cluster.node_dir("a"));
    }
    let _a = cluster.agent("a", &["--max-rate", "2MiB"]);
    let archive = cluster.archive().join("killed");
    let mut child = spawn_piped(&mut collect_command(
        &cluster,
        &meta,
        "killed/",
        &["--concurrency", "2", "--checkpoint-interval", "200ms"],
    ));
    assert!(
        eventually(Duration::from_secs(30), || files.iter().filter(|f| f.is_in(&archive)).count() >= 8),
        "some files were collected"
    );
    std::thread::sleep(Duration::from_millis(400));
    child.kill().unwrap();
    child.wait().unwrap();
    let before = files.iter().filter(|f| f.is_in(&archive)).count();
    assert!(before < files.len(), "killed mid-way");

    let out = run(&mut collect_command(&cluster, &meta, "killed/", &[]), Duration::from_secs(90));
    assert_eq!(out.code, Some(0), "{out:?}");
    let summary = out.json();
    let resumed = summary["files_resumed"].as_u64().unwrap();
    let present = summary["files_present"].as_u64().unwrap();
    let copied = summary["files_copied"].as_u64().unwrap();
    assert!(resumed > 0, "the checkpoint's records are trusted: {summary}");
    assert_eq!(resumed + present + copied, 40);
    assert!(copied as usize <= files.len() - before + 2, "recorded files are not uploaded again: {summary}");
    for f in &files {
        assert!(f.is_in(&archive), "{}", f.name);
    }
}

/// Bytes of the files under `dir`.
fn walk_size(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    entries
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => walk_size(&e.path()),
            _ => e.metadata().map_or(0, |m| m.len()),
        })
        .sum()
}

/// After a collect, the archive is a source: `fetch --archive` reads what no live node holds
/// from it (checked: a damaged archive copy is refused), `verify --archive` reports it, and a
/// file neither holds is named.
#[test]
fn fetch_and_verify_use_the_archive_for_files_no_node_holds() {
    let dir = test_dir();
    let cluster = Cluster::start(dir.path(), "500ms");
    let files: Vec<DataFile> = (0..6).map(|i| DataFile::new(&format!("f/{i}.sst"), 300_000 + i * 7)).collect();
    let meta = br_host_dir(&cluster, &files);
    for (i, f) in files.iter().enumerate() {
        f.write_to(&cluster.node_dir(if i < 3 { "a" } else { "b-gone" }));
    }
    let _a = cluster.agent("a", &[]);
    let mut gone = cluster.agent("b-gone", &[]);
    let out = run(&mut collect_command(&cluster, &meta, "arch/", &[]), Duration::from_secs(60));
    assert_eq!(out.code, Some(0), "{out:?}");
    gone.stop();
    let archive_url = cluster.s3_url("arch/");

    // verify: files 3..6 are held only by the archive; nothing is missing.
    let mut cmd = cluster.command("verify");
    cmd.args(["--meta", meta.to_str().unwrap(), "--archive", &archive_url, "--json"]).envs(cluster.aws_env());
    let report = run(&mut cmd, Duration::from_secs(60));
    let json = report.json();
    assert_eq!(json["archive"]["verified"], 6, "{json}");
    // b-gone may still be listed (and hold files 3..6) for three heartbeats after it stopped.
    let only = json["archive"]["only_in_archive"].as_array().map_or(0, Vec::len);
    assert!(only == 3 || json["nodes"].as_array().unwrap().len() == 2, "{json}");
    assert_eq!(json["missing"], serde_json::json!([]), "{json}");

    // fetch on a new node: three files from a, three from the archive, all verified.
    let mut cmd = cluster.fetch_command("c", meta.to_str().unwrap(), &["--archive", &archive_url, "--retries", "1"]);
    let out = run(cmd.envs(cluster.aws_env()), Duration::from_secs(60));
    assert_eq!(out.code, Some(0), "{out:?}");
    let summary = out.json();
    assert_eq!(summary["per_peer"], serde_json::json!({"a": 3, "archive": 3}), "{summary}");
    for f in &files {
        assert!(f.is_in(&cluster.node_dir("c")));
    }

    // A damaged archive copy is refused (exit 2); a file neither holds is named.
    let stored = cluster.archive().join("arch").join(&files[4].name);
    let mut damaged = std::fs::read(&stored).unwrap();
    damaged[100] ^= 1;
    std::fs::write(&stored, damaged).unwrap();
    std::fs::remove_file(cluster.archive().join("arch").join(&files[5].name)).unwrap();
    let mut cmd = cluster.fetch_command("d", meta.to_str().unwrap(), &["--archive", &archive_url, "--retries", "1"]);
    let out = run(cmd.envs(cluster.aws_env()), Duration::from_secs(60));
    assert_eq!(out.code, Some(2), "{out:?}");
    let summary = out.json();
    // f/5's only holder is stopped: missing once the coordinator drops it, unavailable while it
    // is still listed (three heartbeats); named either way.
    let mut named: Vec<&str> =
        summary["failed"].as_array().unwrap().iter().map(|f| f["name"].as_str().unwrap()).collect();
    named.extend(summary["missing"].as_array().unwrap().iter().map(|n| n.as_str().unwrap()));
    named.sort_unstable();
    assert_eq!(named, [files[4].name.as_str(), files[5].name.as_str()], "{summary}");
    assert_eq!(summary["failed"][0]["name"], files[4].name.as_str(), "{summary}");
    let error = summary["failed"][0]["error"].as_str().unwrap();
    assert!(error.contains("sha256") && error.contains("archive"), "{summary}");
    assert!(!cluster.node_dir("d").join(&files[4].name).exists(), "damaged bytes never land");
}

/// The archive's disk fills (507 InsufficientStorage): the error names the file and the
/// destination, exit 2, no later file is started; once there is room a re-run completes.
/// Needs root (a tmpfs); prints SKIPPED otherwise.
#[test]
fn a_full_archive_is_named_and_a_rerun_after_freeing_space_completes() {
    let dir = test_dir();
    let archive = dir.path().join("archive");
    std::fs::create_dir_all(&archive).unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=6m", "tmpfs"])
        .arg(&archive)
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !mounted {
        eprintln!("SKIPPED a_full_archive_is_named: cannot mount a tmpfs here (needs root)");
        return;
    }
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
    let _unmount = Unmount(archive.clone());
    let cluster = Cluster::start(dir.path(), "500ms");
    let files: Vec<DataFile> = (0..8).map(|i| DataFile::new(&format!("full/{i}.sst"), 1 << 20)).collect();
    let meta = br_host_dir(&cluster, &files);
    for f in &files {
        f.write_to(&cluster.node_dir("a"));
    }
    let _a = cluster.agent("a", &[]);
    let out = run(&mut collect_command(&cluster, &meta, "full/", &["--concurrency", "1"]), Duration::from_secs(60));
    assert_eq!(out.code, Some(2), "{out:?}");
    let summary = out.json();
    let failed = summary["failed"].as_array().unwrap();
    let first = failed
        .iter()
        .find(|f| f["error"].as_str().unwrap().contains("507") || f["error"].as_str().unwrap().contains("space"))
        .unwrap_or_else(|| panic!("a 507 is reported: {summary}"));
    let error = first["error"].as_str().unwrap();
    assert!(
        error.contains("/full/full/") && error.contains("refused"),
        "names the object and the destination: {error}"
    );
    assert!(
        failed.iter().any(|f| f["error"].as_str().unwrap().contains("not attempted")),
        "later files are not started: {summary}"
    );

    assert!(Command::new("mount").args(["-o", "remount,size=64m"]).arg(&archive).status().unwrap().success());
    let out = run(&mut collect_command(&cluster, &meta, "full/", &[]), Duration::from_secs(60));
    assert_eq!(out.code, Some(0), "{out:?}");
    for f in &files {
        assert!(f.is_in(&archive.join("full")), "{}", f.name);
    }
}

/// `depot status --json` on the cluster's archive.
fn status_json(cluster: &Cluster) -> serde_json::Value {
    let out =
        Command::new(depot_tests::bin("depot")).args(["status", "--json"]).arg(cluster.archive()).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

fn collect_job(status: &serde_json::Value) -> Option<serde_json::Value> {
    status["jobs"].as_array()?.iter().find(|j| j["kind"] == "collect").cloned()
}

/// Issue 10's leftover: a running collect shows in `depot status` as a fetch does (progress,
/// bytes, the nodes it reads from), then as done; the backup's prefix holds only the backup.
#[test]
fn a_running_collect_is_reported_in_depot_status() {
    let dir = test_dir();
    let cluster = Cluster::start(dir.path(), "500ms");
    let files: Vec<DataFile> = (0..6).map(|i| DataFile::new(&format!("1/{i}_write.sst"), 384 * 1024)).collect();
    let meta = br_host_dir(&cluster, &files);
    for (i, f) in files.iter().enumerate() {
        f.write_to(&cluster.node_dir(if i % 2 == 0 { "a" } else { "b" }));
    }
    // Slow sources, so the job is seen running: about 3 s in all.
    let _agents: Vec<_> = ["a", "b"].iter().map(|n| cluster.agent(n, &["--max-rate", "384KiB"])).collect();
    let mut cmd = collect_command(&cluster, &meta, "backup-7/", &["--task", "nightly", "--concurrency", "2"]);
    let started = Instant::now();
    let collect = spawn_piped(&mut cmd);

    let total = 6 * 384 * 1024;
    let mut first = 0;
    assert!(
        eventually(Duration::from_secs(15), || collect_job(&status_json(&cluster)).is_some_and(|j| {
            first = j["bytes_done"].as_u64().unwrap();
            j["state"] == "fetching" && first > 0 && first < total
        })),
        "a running collect: {}",
        status_json(&cluster)
    );
    let job = collect_job(&status_json(&cluster)).unwrap();
    assert_eq!((job["task"].as_str(), job["backup"].as_str()), (Some("nightly"), Some("backup-7")));
    assert_eq!((job["files_needed"].as_u64(), job["bytes_needed"].as_u64()), (Some(6), Some(total)));
    assert!(!job["node_id"].as_str().unwrap().is_empty(), "the machine it runs on: {job}");
    assert!(
        eventually(Duration::from_secs(10), || collect_job(&status_json(&cluster))
            .is_some_and(|j| j["bytes_done"].as_u64().unwrap() > first)),
        "progress advances past {first}"
    );

    let out = finish(collect, Duration::from_secs(60), started);
    assert_eq!(out.code, Some(0), "{out:?}");
    let job = collect_job(&status_json(&cluster)).expect("the ended collect is still reported");
    assert_eq!(job["state"], "done", "{job}");
    assert_eq!((job["files_done"].as_u64(), job["bytes_done"].as_u64()), (Some(6), Some(total)));
    let sources = job["sources"].as_object().unwrap();
    assert_eq!(sources.keys().collect::<Vec<_>>(), ["a", "b"], "{job}");
    assert_eq!(sources.values().map(|b| b.as_u64().unwrap()).sum::<u64>(), total);
    let text = Command::new(depot_tests::bin("depot")).arg("status").arg(cluster.archive()).output().unwrap();
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("collect") && text.contains("nightly") && text.contains("from a "), "{text}");
    assert!(!cluster.archive().join("backup-7/.depot-collect").exists(), "the backup's prefix holds only the backup");
    for f in &files {
        assert!(f.is_in(&cluster.archive().join("backup-7")), "{}", f.name);
    }
}
