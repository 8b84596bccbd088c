//! `depot-agent fetch` onto crashfs: installed files, checkpoint records and the lock.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crashfs::{CrashFs, Survivors};
use depot_tests::agents::{Cluster, DataFile, eventually, run, spawn_piped, write_jsonl};
use rand::{Rng, SeedableRng};

/// The `.cpt` records under the fetching root's checkpoint storage: (file, names recorded).
fn records(root: &Path) -> Vec<(PathBuf, Vec<String>)> {
    let mut out = Vec::new();
    for task in std::fs::read_dir(root.join(".depot/checkpoints")).into_iter().flatten().flatten() {
        for cpt in std::fs::read_dir(task.path().join("data")).into_iter().flatten().flatten() {
            let text = std::fs::read_to_string(cpt.path()).unwrap_or_default();
            let names = text
                .split_once('\n')
                .and_then(|(_, body)| serde_json::from_str::<Vec<serde_json::Value>>(body).ok())
                .map(|records| records.iter().filter_map(|r| r["name"].as_str().map(str::to_owned)).collect());
            // A record is written whole or not at all: a torn one is a failure.
            out.push((cpt.path(), names.unwrap_or_else(|| panic!("torn checkpoint record {}", cpt.path().display()))));
        }
    }
    out
}

/// A fetch cut at a random point: every file a surviving record names is installed whole, the
/// lock and identity are whole; the re-run finishes; its success (every file installed, the
/// checkpoint removed) survives a second cut.
#[test]
fn fetch_installed_files_checkpoint_records_and_lock() {
    let dir = depot_tests::test_dir();
    let (backing, mnt) = (dir.path().join("backing"), dir.path().join("mnt"));
    std::fs::create_dir_all(backing.join("me")).unwrap();
    std::fs::create_dir(&mnt).unwrap();
    let mut fs = match CrashFs::mount(&backing, &mnt) {
        Ok(fs) => fs,
        Err(err) => {
            eprintln!("SKIPPED fetch_installed_files_checkpoint_records_and_lock: crashfs cannot mount ({err})");
            return;
        }
    };
    let seed = std::env::var("POWERCUT_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64 % 1_000_000
    });
    eprintln!("fetch: seed {seed}");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let cluster_dir = dir.path().join("cluster");
    std::fs::create_dir_all(cluster_dir.join("nodes")).unwrap();
    std::os::unix::fs::symlink(mnt.join("me"), cluster_dir.join("nodes/me")).unwrap();
    let cluster = Cluster::start(&cluster_dir, "500ms");
    let files: Vec<DataFile> = (0..60).map(|i| DataFile::new(&format!("store-{}/{i}.sst", i % 3), 32 << 10)).collect();
    for file in &files {
        file.write_to(&cluster.node_dir("a"));
    }
    let manifest = cluster.dir.join("manifest.jsonl");
    write_jsonl(&manifest, &files);
    let _a = cluster.agent("a", &["--max-rate", "1MiB"]);
    let me = mnt.join("me");
    let args = ["--checkpoint-interval", "100ms", "--concurrency", "2"];

    let mut child = spawn_piped(&mut cluster.fetch_command("me", manifest.to_str().unwrap(), &args));
    assert!(eventually(Duration::from_secs(30), || !records(&me).is_empty()), "the fetch wrote a checkpoint record");
    std::thread::sleep(Duration::from_millis(rng.random_range(0..600)));
    fs.cut_power();
    child.kill().unwrap();
    child.wait().unwrap();
    let survivors = if rng.random_bool(0.5) { Survivors::DurableOnly } else { Survivors::RandomPrefix(rng.random()) };
    fs.reboot(survivors).unwrap();

    let recorded: Vec<String> = records(&me).into_iter().flat_map(|(_, names)| names).collect();
    for name in &recorded {
        let file = files.iter().find(|f| &f.name == name).expect("a recorded name is in the backup");
        assert!(file.is_in(&me), "{name} was recorded as installed, but is not there whole after the cut");
    }
    for state in ["checkpoint.lock", "checkpoint.meta"] {
        for task in std::fs::read_dir(me.join(".depot/checkpoints")).into_iter().flatten().flatten() {
            if let Ok(text) = std::fs::read_to_string(task.path().join(state)) {
                serde_json::from_str::<serde_json::Value>(&text).unwrap_or_else(|e| panic!("torn {state}: {e}"));
            }
        }
    }
    eprintln!("  {} file(s) recorded survived the cut ({survivors:?})", recorded.len());

    let started = Instant::now();
    let again = run(&mut cluster.fetch_command("me", manifest.to_str().unwrap(), &args), Duration::from_secs(120));
    assert_eq!(again.code, Some(0), "the re-run after the cut finishes: {again:?}");
    eprintln!("  re-run took {:?}", started.elapsed());
    // Its success is acknowledged: a second cut changes nothing.
    fs.reboot(Survivors::DurableOnly).unwrap();
    for file in &files {
        assert!(file.is_in(&me), "{} was installed by a successful fetch, but is gone after a cut", file.name);
    }
    assert!(records(&me).is_empty(), "the successful fetch removed its checkpoint records; they came back");
}
