//! The power-cut rig: `depot serve` on crashfs, a ledger of what each request could have
//! done and what was acknowledged, the cut, the reboot, and the checks after it.
//!
//! A new mutating path gets one test: writers that call [`Ledger::attempt`] before each
//! request and [`Ledger::acked`] after its 200, then [`Rig::cycle`]. The checks are common:
//! every key is in a state its requests allow (the acknowledged one, or — for a request cut
//! short — the one it was making), byte-exact; no key is listed that no request made; the
//! start-up sweep left no temp files.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_sdk_s3::config::retry::RetryConfig;
use crashfs::{CrashFs, Survivors};
use depot_tests::Depot;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// The bucket, and credentials that stay the same across reboots.
pub const BUCKET: &str = "backup";
const ACCESS_KEY: &str = "powercut";
const SECRET_KEY: &str = "powercut-secret-key-0123456789";

/// A key's content as a client sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    /// No such key.
    Absent,
    /// These bytes.
    Bytes(Arc<Vec<u8>>),
}

impl State {
    /// The state holding `data`.
    pub fn of(data: &[u8]) -> Self {
        State::Bytes(Arc::new(data.to_vec()))
    }

    fn describe(&self) -> String {
        match self {
            State::Absent => "absent".into(),
            State::Bytes(b) => format!("{} bytes starting {:02x?}", b.len(), &b[..b.len().min(8)]),
        }
    }
}

/// Per key, the states it may be in after a cut.
#[derive(Debug, Default)]
pub struct Ledger {
    keys: Mutex<BTreeMap<String, Vec<State>>>,
}

impl Ledger {
    /// A request that would leave `key` in `state` is about to be sent: until it is
    /// acknowledged, either state is allowed.
    pub fn attempt(&self, key: &str, state: State) {
        let mut keys = self.keys.lock().unwrap();
        let allowed = keys.entry(key.to_owned()).or_insert_with(|| vec![State::Absent]);
        if !allowed.contains(&state) {
            allowed.push(state);
        }
    }

    /// The request was acknowledged: `key` is in `state` (until the next request).
    pub fn acked(&self, key: &str, state: State) {
        self.keys.lock().unwrap().insert(key.to_owned(), vec![state]);
    }

    /// How many keys are definitely present.
    pub fn present(&self) -> usize {
        self.keys.lock().unwrap().values().filter(|a| a.len() == 1 && a[0] != State::Absent).count()
    }

    /// Keys under `prefix` acknowledged to be in `state`.
    pub fn definitely(&self, prefix: &str, state: &State) -> Vec<String> {
        let keys = self.keys.lock().unwrap();
        keys.iter()
            .filter(|(k, a)| k.starts_with(prefix) && a.as_slice() == [state.clone()])
            .map(|(k, _)| k.clone())
            .collect()
    }

    fn snapshot(&self) -> BTreeMap<String, Vec<State>> {
        self.keys.lock().unwrap().clone()
    }
}

/// One test's archive on crashfs and the server serving it.
pub struct Rig {
    pub fs: CrashFs,
    pub archive: PathBuf,
    pub depot: Option<Depot>,
    pub rng: StdRng,
    logs: PathBuf,
    pub seed: u64,
    _dir: tempfile::TempDir,
}

impl Rig {
    /// Mounts crashfs and starts `depot serve` on `archive/` inside it; `None` (after a
    /// SKIPPED line) where FUSE is missing.
    pub fn new(test: &str) -> Option<Self> {
        let dir = depot_tests::test_dir();
        let (backing, mnt) = (dir.path().join("backing"), dir.path().join("mnt"));
        std::fs::create_dir(&backing).unwrap();
        std::fs::create_dir(&mnt).unwrap();
        std::fs::create_dir(backing.join("archive")).unwrap();
        let fs = match CrashFs::mount(&backing, &mnt) {
            Ok(fs) => fs,
            Err(err) => {
                eprintln!("SKIPPED {test}: crashfs cannot mount ({err}); scripts/test.sh installs FUSE");
                return None;
            }
        };
        let seed = std::env::var("POWERCUT_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64 % 1_000_000
        });
        eprintln!("{test}: seed {seed} (POWERCUT_SEED={seed} repeats the random choices)");
        let name_hash = test.bytes().fold(0u64, |h, b| h.wrapping_mul(31).wrapping_add(u64::from(b)));
        let mut rig = Self {
            archive: fs.path().join("archive"),
            fs,
            depot: None,
            rng: StdRng::seed_from_u64(seed ^ name_hash),
            logs: dir.path().join("logs"),
            seed,
            _dir: dir,
        };
        rig.start();
        Some(rig)
    }

    fn start(&mut self) {
        let n = std::fs::read_dir(&self.logs).map_or(0, |d| d.count());
        let log = self.logs.join(format!("depot-{n}.log"));
        let args = [self.archive.to_str().unwrap(), "--tls", "off", "--log-file", log.to_str().unwrap()];
        let env = [("DEPOT_ACCESS_KEY", ACCESS_KEY), ("DEPOT_SECRET_KEY", SECRET_KEY), ("DEPOT_BUCKET", BUCKET)];
        self.depot = Some(Depot::spawn(&args, &env, &self.logs));
    }

    /// A client of the running server that does not retry (a cut request fails at once).
    pub fn client(&self) -> aws_sdk_s3::Client {
        let client = self.depot.as_ref().expect("server running").client();
        let config = client.config().to_builder().retry_config(RetryConfig::disabled()).build();
        aws_sdk_s3::Client::from_conf(config)
    }

    /// Cuts the power at once, kills the server, boots again (keeping only what was durable,
    /// or a random order-respecting part of the rest too) and starts the server.
    pub fn power_cut(&mut self) {
        self.fs.cut_power();
        if let Some(depot) = self.depot.take() {
            depot.kill9();
        }
    }

    /// Boots after [`Rig::power_cut`] (writers must have stopped) and restarts the server.
    pub fn reboot(&mut self) {
        let survivors =
            if self.rng.random_bool(0.5) { Survivors::DurableOnly } else { Survivors::RandomPrefix(self.rng.random()) };
        eprintln!("  reboot keeping {survivors:?}");
        self.fs.reboot(survivors).expect("reboot crashfs");
        self.start();
    }

    /// Runs `writers` (each gets a client, a stop flag and its index) until a random point
    /// in `[min, min + spread)`, cuts the power, reboots, and checks the ledger.
    pub async fn cycle<F, Fut>(&mut self, ledger: &Arc<Ledger>, writers: usize, min: Duration, spread: Duration, f: F)
    where
        F: Fn(aws_sdk_s3::Client, Arc<AtomicBool>, usize) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let stop = Arc::new(AtomicBool::new(false));
        let tasks: Vec<_> = (0..writers).map(|w| tokio::spawn(f(self.client(), Arc::clone(&stop), w))).collect();
        let cut_at = min + spread.mul_f64(self.rng.random::<f64>());
        tokio::time::sleep(cut_at).await;
        self.power_cut();
        stop.store(true, Ordering::SeqCst);
        for task in tasks {
            task.await.expect("writer");
        }
        eprintln!("  cut at {cut_at:?}: {} key(s) acknowledged present", ledger.present());
        self.reboot();
        self.check(ledger).await;
    }

    /// After a reboot: every key in a state its requests allow, byte-exact; no key listed
    /// that no request made; no temp file left by the start-up sweep.
    pub async fn check(&self, ledger: &Ledger) {
        let client = self.client();
        let mut failures = Vec::new();
        let expected = ledger.snapshot();
        for (key, allowed) in &expected {
            let got = get(&client, key).await;
            if !allowed.contains(&got) {
                let allowed: Vec<String> = allowed.iter().map(State::describe).collect();
                failures.push(format!("{key}: {} after the cut; allowed: {}", got.describe(), allowed.join(" or ")));
            }
        }
        for key in list(&client, "").await {
            if !expected.contains_key(&key) {
                failures.push(format!("{key}: listed, but no request made it"));
            }
        }
        // An empty directory left by an unanswered write is no prefix either.
        let top = client.list_objects_v2().bucket(BUCKET).delimiter("/").send().await.expect("list with delimiter");
        for prefix in top.common_prefixes().iter().filter_map(|p| p.prefix()) {
            let backed = expected
                .iter()
                .any(|(k, allowed)| k.starts_with(prefix) && allowed.iter().any(|s| *s != State::Absent));
            if !backed {
                failures.push(format!("{prefix}: listed as a prefix, but no key under it can exist"));
            }
        }
        let tmp = self.archive.join(".depot/tmp");
        let left = std::fs::read_dir(&tmp).map_or(0, |d| d.count());
        if left > 0 {
            failures.push(format!("{left} temp file(s) left in {} after the start-up sweep", tmp.display()));
        }
        assert!(
            failures.is_empty(),
            "after a power cut (seed {}), {} problem(s):\n{}",
            self.seed,
            failures.len(),
            failures.join("\n")
        );
    }
}

/// GET as a state.
pub async fn get(client: &aws_sdk_s3::Client, key: &str) -> State {
    match client.get_object().bucket(BUCKET).key(key).send().await {
        Ok(out) => State::of(&out.body.collect().await.expect("body").into_bytes()),
        Err(err) if err.as_service_error().is_some_and(|e| e.is_no_such_key()) => State::Absent,
        Err(err) => panic!("GET {key}: {}", aws_sdk_s3::error::DisplayErrorContext(err)),
    }
}

/// Every key under `prefix` (ListObjectsV2, all pages).
pub async fn list(client: &aws_sdk_s3::Client, prefix: &str) -> Vec<String> {
    let mut keys = Vec::new();
    let mut pages = client.list_objects_v2().bucket(BUCKET).prefix(prefix).into_paginator().send();
    while let Some(page) = pages.next().await {
        let page = page.unwrap_or_else(|e| panic!("list: {}", aws_sdk_s3::error::DisplayErrorContext(e)));
        keys.extend(page.contents().iter().filter_map(|o| o.key().map(str::to_owned)));
    }
    keys
}

/// PUT `data` at `key`, recorded in `ledger`; whether it was acknowledged.
pub async fn put(client: &aws_sdk_s3::Client, ledger: &Ledger, key: &str, data: Vec<u8>) -> bool {
    let state = State::of(&data);
    ledger.attempt(key, state.clone());
    let sent = client.put_object().bucket(BUCKET).key(key).body(data.into()).send().await;
    if sent.is_ok() {
        ledger.acked(key, state);
    }
    sent.is_ok()
}

/// DELETE `key`, recorded in `ledger`; whether it was acknowledged.
pub async fn delete(client: &aws_sdk_s3::Client, ledger: &Ledger, key: &str) -> bool {
    ledger.attempt(key, State::Absent);
    let sent = client.delete_object().bucket(BUCKET).key(key).send().await;
    if sent.is_ok() {
        ledger.acked(key, State::Absent);
    }
    sent.is_ok()
}

/// Bytes that differ per key and version, of a size drawn from `sizes`.
pub fn payload(key: &str, version: usize, size: usize) -> Vec<u8> {
    let mut x = key.bytes().fold(version as u64 + 1, |h, b| h.wrapping_mul(131).wrapping_add(u64::from(b)));
    (0..size)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}
