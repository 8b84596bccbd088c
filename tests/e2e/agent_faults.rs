//! Faults during a fetch, with real processes: a peer killed mid-transfer, a corrupted copy,
//! peers that are not agents, holders that are briefly unreachable, a coordinator restart.

use std::io::BufRead;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use depot_agent::auth::Secret;
use depot_agent::registry::Coordinator;
use depot_tests::agents::{
    Agent, Cluster, DataFile, eventually, finish, partial_bytes, spawn_piped, temp_files, write_jsonl,
};
use depot_tests::{bin, test_dir, wait_timeout};

/// Bytes in the fetching node's temp files: how far an in-flight transfer has come.
/// The holder picked first (node ids break ties) is killed with `kill -9` while it streams;
/// the transfer continues from the same offset on the other holder, and nothing partial is
/// left behind.
#[test]
fn a_peer_killed_mid_transfer_is_replaced_by_another_holder() {
    let dir = test_dir();
    let cluster = Cluster::start(dir.path(), "500ms");
    let big = DataFile::new("big/1.sst", 24 << 20);
    let manifest = dir.path().join("manifest.jsonl");
    write_jsonl(&manifest, std::slice::from_ref(&big));
    big.write_to(&cluster.node_dir("a-dies"));
    big.write_to(&cluster.node_dir("b-stays"));
    // a-dies serves slowly, so the kill lands mid-transfer.
    let mut dying = cluster.agent("a-dies", &["--max-rate", "8MiB"]);
    let _stays = cluster.agent("b-stays", &[]);
    let me = cluster.node_dir("me");

    let started = Instant::now();
    let child = spawn_piped(&mut cluster.fetch_command("me", manifest.to_str().unwrap(), &["--stall-timeout", "2s"]));
    assert!(eventually(Duration::from_secs(20), || partial_bytes(&me) >= 2 << 20), "the transfer from a-dies started");
    dying.kill9();
    let out = finish(child, Duration::from_secs(60), started);
    assert_eq!(out.code, Some(0), "{out:?}");
    let summary = out.json();
    assert_eq!(summary["files_fetched"], 1);
    assert_eq!(summary["per_peer"], serde_json::json!({"b-stays": 1}));
    assert_eq!(summary["bytes_received"], big.data.len(), "resumed at the offset: no byte came twice");
    assert!(big.is_in(&me));
    assert_eq!(temp_files(&me), 0);
}

/// A holder with a corrupted copy (right size, wrong bytes): the checksum fails, that holder is
/// dropped for the file and the other one used. With only corrupted copies the file fails
/// (exit 2) and the bad bytes never appear under its name.
#[test]
fn a_corrupted_copy_fails_its_checksum_and_another_holder_is_used() {
    let dir = test_dir();
    let cluster = Cluster::start(dir.path(), "500ms");
    let file = DataFile::new("c/1.sst", 3 << 20);
    let manifest = dir.path().join("manifest.jsonl");
    write_jsonl(&manifest, std::slice::from_ref(&file));
    let mut bad = file.clone();
    bad.data[1 << 20] ^= 0x55;
    bad.write_to(&cluster.node_dir("a-bad"));
    let _bad = cluster.agent("a-bad", &[]);

    let out = cluster.fetch("me", manifest.to_str().unwrap(), &[]);
    assert_eq!(out.code, Some(2), "{out:?}");
    let summary = out.json();
    assert_eq!(summary["files_failed"], 1);
    assert_eq!(summary["missing"], serde_json::json!([]));
    let error = summary["failed"][0]["error"].as_str().unwrap();
    assert!(error.contains("sha256") && error.contains("a-bad"), "{error}");
    assert_eq!(summary["failed"][0]["retryable"], false);
    assert!(!cluster.node_dir("me").join("c/1.sst").exists(), "bad bytes never land");
    assert_eq!(temp_files(&cluster.node_dir("me")), 0);

    file.write_to(&cluster.node_dir("b-good"));
    let _good = cluster.agent("b-good", &[]);
    let out = cluster.fetch("me", manifest.to_str().unwrap(), &[]);
    assert_eq!(out.code, Some(0), "{out:?}");
    assert_eq!(out.json()["per_peer"], serde_json::json!({"b-good": 1}));
    assert!(file.is_in(&cluster.node_dir("me")));
}

/// Peers that are not agents — here an entry whose address is the coordinator's own port, a
/// plaintext server that fails the TLS handshake — count as "does not have it": they neither
/// block a fetch from a real holder nor turn "nobody has it" into a retry loop.
#[test]
fn peers_that_are_not_agents_count_as_not_having_the_file() {
    let dir = test_dir();
    let cluster = Cluster::start(dir.path(), "500ms");
    let depot_addr = cluster.registry.trim_start_matches("http://").to_owned();
    // A real agent process that advertises the coordinator's port instead of its own.
    let _impostor = cluster.agent("a-not-an-agent", &["--advertise", &depot_addr]);
    let file = DataFile::new("u/1.sst", 100_000);
    let nobody = DataFile::new("u/nobody.sst", 10);
    file.write_to(&cluster.node_dir("b"));
    let _b = cluster.agent("b", &[]);
    let manifest = dir.path().join("manifest.jsonl");
    write_jsonl(&manifest, &[file.clone(), nobody]);

    let out = cluster.fetch("me", manifest.to_str().unwrap(), &[]);
    assert_eq!(out.code, Some(1), "{out:?}");
    let summary = out.json();
    assert_eq!(summary["per_peer"], serde_json::json!({"b": 1}));
    assert_eq!(summary["missing"], serde_json::json!(["u/nobody.sst"]));
    assert!(file.is_in(&cluster.node_dir("me")));
    assert!(out.elapsed < Duration::from_secs(5), "not retried: {:?}", out.elapsed);
}

/// The only holder is unreachable for a while (stopped with SIGSTOP: connections hang; then
/// killed and restarted on the same port: connections are refused). Both are transient: the
/// fetch retries with backoff and succeeds once the holder is back.
#[test]
fn an_unreachable_holder_is_retried_until_it_is_back() {
    let dir = test_dir();
    let cluster = Cluster::start(dir.path(), "2s");
    let files = [DataFile::new("r/1.sst", 50_000), DataFile::new("r/2.sst", 60_000)];
    let manifest = dir.path().join("manifest.jsonl");
    write_jsonl(&manifest, &files[..1]);
    for f in &files {
        f.write_to(&cluster.node_dir("h"));
    }
    let holder = cluster.agent("h", &[]);
    let retry_args = ["--rpc-timeout", "300ms", "--stall-timeout", "1s", "--retries", "30"];

    holder.signal("STOP");
    let started = Instant::now();
    let child = spawn_piped(&mut cluster.fetch_command("me", manifest.to_str().unwrap(), &retry_args));
    std::thread::sleep(Duration::from_millis(1200));
    holder.signal("CONT");
    let out = finish(child, Duration::from_secs(30), started);
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(files[0].is_in(&cluster.node_dir("me")));
    assert!(out.elapsed >= Duration::from_millis(1200), "it waited for the holder");

    // Killed; still listed for three intervals; restarted on the same port after a while.
    let port = holder.port();
    let mut holder = holder;
    holder.kill9();
    write_jsonl(&manifest, &files);
    let started = Instant::now();
    let child = spawn_piped(&mut cluster.fetch_command("me", manifest.to_str().unwrap(), &retry_args));
    std::thread::sleep(Duration::from_millis(800));
    let _back = cluster.agent("h", &["--listen", &format!("127.0.0.1:{port}")]);
    let out = finish(child, Duration::from_secs(30), started);
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(files[1].is_in(&cluster.node_dir("me")));
    let log = std::fs::read_to_string(latest_fetch_log(dir.path())).unwrap();
    assert!(log.contains("retrying"), "the log tells about the retries:\n{log}");
}

fn latest_fetch_log(dir: &std::path::Path) -> std::path::PathBuf {
    let mut logs: Vec<_> = std::fs::read_dir(dir.join("logs"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with("fetch-"))
        .collect();
    logs.sort_by_key(|p| std::fs::metadata(p).unwrap().modified().unwrap());
    logs.pop().unwrap()
}

/// The coordinator is killed and restarted (same archive, same CA, same port): it remembers
/// the joined nodes, their heartbeats list them again without the join token, and fetches work
/// again.
#[test]
fn agents_register_again_after_a_coordinator_restart() {
    let dir = test_dir();
    let archive = dir.path().join("archive");
    std::fs::create_dir_all(&archive).unwrap();
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let token = "join-token-restart-test-0123456789";
    let start_depot = || {
        let mut child = Command::new(bin("depot"))
            .arg("serve")
            .arg(&archive)
            .args(["--listen", &format!("127.0.0.1:{port}"), "--json", "--join-token", token])
            .args(["--heartbeat-interval", "300ms", "--log-file"])
            .arg(dir.path().join("depot.log"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        let child = KillOnDrop(child);
        assert!(line.contains("registry"), "depot started: {line}");
        child
    };
    let registry = format!("http://127.0.0.1:{port}");
    let depot = start_depot();
    let file = DataFile::new("k/1.sst", 10_000);
    let root = dir.path().join("nodes/a");
    std::fs::create_dir_all(&root).unwrap();
    file.write_to(&root);
    let a = Agent::start(dir.path(), &root, &registry, token, &["--node-id", "a", "--listen", "127.0.0.1:0"]).unwrap();

    drop(depot);
    let depot = start_depot();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let _context = runtime.enter();
    let coordinator = Coordinator::new(&registry, Secret::new(token), None).unwrap();
    runtime.block_on(coordinator.client_identity(Some("test"))).unwrap();
    let listed = eventually(Duration::from_secs(5), || {
        runtime.block_on(coordinator.list_peers()).is_ok_and(|l| l.peers.iter().any(|p| p.node_id == "a"))
    });
    assert!(listed, "agent a is listed again by the new coordinator: {}", a.stderr());
    assert!(!a.stderr().contains("no longer accepts"), "{}", a.stderr());

    let manifest = dir.path().join("manifest.jsonl");
    write_jsonl(&manifest, std::slice::from_ref(&file));
    let me = dir.path().join("nodes/me");
    std::fs::create_dir_all(&me).unwrap();
    let out = depot_tests::agents::run(
        Command::new(bin("depot-agent"))
            .arg("fetch")
            .arg("--root")
            .arg(&me)
            .args(["--node-id", "me", "--coordinator", &registry, "--join-token", token, "--json"])
            .args(["--meta", manifest.to_str().unwrap()]),
        Duration::from_secs(30),
    );
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(file.is_in(&me));
    drop(depot);
}

/// A child process killed when dropped, also when the test panics.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = wait_timeout(&mut self.0, Duration::from_secs(5));
    }
}

/// Ctrl-C during a fetch: exit code 130, nothing under the file's name; the bytes received so
/// far are kept for the next run (checkpoints are on by default), which continues from them.
/// With `--no-checkpoint` nothing partial is left at all.
#[test]
fn an_interrupted_fetch_keeps_its_partial_transfer_for_the_next_run() {
    let dir = test_dir();
    let cluster = Cluster::start(dir.path(), "500ms");
    let big = DataFile::new("i/1.sst", 16 << 20);
    let manifest = dir.path().join("manifest.jsonl");
    write_jsonl(&manifest, std::slice::from_ref(&big));
    big.write_to(&cluster.node_dir("slow"));
    let _slow = cluster.agent("slow", &["--max-rate", "4MiB"]);
    let me = cluster.node_dir("me");
    let started = Instant::now();
    let child = spawn_piped(&mut cluster.fetch_command("me", manifest.to_str().unwrap(), &[]));
    assert!(eventually(Duration::from_secs(20), || partial_bytes(&me) >= 1 << 20));
    let status = Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap();
    assert!(status.success());
    let out = finish(child, Duration::from_secs(10), started);
    assert_eq!(out.code, Some(130), "{out:?}");
    assert!(out.stderr.contains("interrupted") && out.stderr.contains("progress saved"), "{}", out.stderr);
    assert!(!me.join("i/1.sst").exists());
    assert_eq!(temp_files(&me), 0);
    let kept = partial_bytes(&me);
    assert!(kept >= 1 << 20, "the received bytes are kept: {kept}");

    let again = cluster.fetch("me", manifest.to_str().unwrap(), &[]);
    assert_eq!(again.code, Some(0), "{again:?}");
    let summary = again.json();
    assert!(summary["bytes_resumed"].as_u64().unwrap() >= kept.min(1 << 20), "{summary}");
    assert!(summary["bytes_received"].as_u64().unwrap() <= big.data.len() as u64 - (1 << 20), "{summary}");
    assert!(big.is_in(&me));
    assert_eq!(partial_bytes(&me), 0, "a finished fetch leaves nothing behind");

    // Without checkpoints, an interruption leaves nothing partial.
    std::fs::remove_file(me.join("i/1.sst")).unwrap();
    let child = spawn_piped(&mut cluster.fetch_command("me", manifest.to_str().unwrap(), &["--no-checkpoint"]));
    assert!(eventually(Duration::from_secs(20), || partial_bytes(&me) >= 1 << 20));
    Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap();
    let out = finish(child, Duration::from_secs(10), Instant::now());
    assert_eq!(out.code, Some(130), "{out:?}");
    assert!(eventually(Duration::from_secs(5), || partial_bytes(&me) == 0), "the partial temp file is gone");
}
