//! The agent side of the harness: a coordinator plus real `depot-agent serve` processes on
//! loopback, one directory per node, and backups (BR backupmeta v1/v2, JSON lines) to fetch.
//!
//! Everything lives in the test's directory: `archive/` (the coordinator's), `nodes/<id>/`
//! (each agent's root) and `logs/` (every process's stderr and log file), so a failing test
//! leaves what is needed to see why.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use depot_proto::brpb;
use prost::Message;
use sha2::{Digest, Sha256};

use crate::{Depot, bin, wait_timeout};

/// A coordinator and the agents started against it.
pub struct Cluster {
    /// The test's directory.
    pub dir: PathBuf,
    /// The coordinator.
    pub depot: Depot,
    /// Its registry URL.
    pub registry: String,
    /// Its join token.
    pub join_token: String,
}

impl Cluster {
    /// Starts `depot serve DIR/archive` with agents heartbeating every `heartbeat`.
    ///
    /// # Panics
    /// When the coordinator does not start.
    pub fn start(dir: &Path, heartbeat: &str) -> Self {
        Self::start_with(dir, heartbeat, &[])
    }

    /// [`Cluster::start`] with extra `depot serve` arguments.
    ///
    /// # Panics
    /// When the coordinator does not start.
    pub fn start_with(dir: &Path, heartbeat: &str, extra: &[&str]) -> Self {
        let mut args = vec!["--heartbeat-interval", heartbeat];
        args.extend_from_slice(extra);
        let depot = Depot::start(&dir.join("archive"), &args);
        let registry = depot.field("registry");
        let join_token = depot.field("join_token");
        Self { dir: dir.to_path_buf(), depot, registry, join_token }
    }

    /// A registry client joined as a client-only run (`NAME#run-...`), as fetch would be.
    ///
    /// # Panics
    /// When it cannot join.
    pub async fn coordinator(&self, name: &str) -> depot_agent::registry::Coordinator {
        let coordinator = depot_agent::registry::Coordinator::new(
            &self.registry,
            depot_agent::auth::Secret::new(self.join_token.clone()),
            None,
        )
        .expect("coordinator URL");
        coordinator.client_identity(Some(name)).await.expect("join as a client-only run");
        coordinator
    }

    /// `depot nodes ARGS --archive ARCHIVE`, run to completion.
    pub fn nodes(&self, args: &[&str]) -> Run {
        let mut cmd = Command::new(bin("depot"));
        cmd.arg("nodes").args(args).arg("--archive").arg(self.archive()).env_remove("DEPOT_ARCHIVE");
        run(&mut cmd, Duration::from_secs(20))
    }

    /// `depot status --json ARCHIVE`: the status document.
    ///
    /// # Panics
    /// When `depot status` fails.
    pub fn status_json(&self) -> serde_json::Value {
        let mut cmd = Command::new(bin("depot"));
        let out = cmd.args(["status", "--json"]).arg(self.archive()).output().expect("depot status runs");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).expect("a JSON status document")
    }

    /// The archive directory (the bucket's content).
    pub fn archive(&self) -> PathBuf {
        self.dir.join("archive")
    }

    /// The root directory of node `id` (created).
    pub fn node_dir(&self, id: &str) -> PathBuf {
        let dir = self.dir.join("nodes").join(id);
        std::fs::create_dir_all(&dir).expect("node dir");
        dir
    }

    /// Starts an agent for node `id` serving [`Cluster::node_dir`] on a free port (unless
    /// `extra` has a `--listen`), plus `extra` arguments.
    ///
    /// # Panics
    /// When it does not become ready.
    pub fn agent(&self, id: &str, extra: &[&str]) -> Agent {
        let root = self.node_dir(id);
        let mut args = vec!["--node-id", id];
        if !extra.contains(&"--listen") {
            args.extend(["--listen", "127.0.0.1:0"]);
        }
        args.extend_from_slice(extra);
        Agent::start(&self.dir, &root, &self.registry, &self.join_token, &args)
            .unwrap_or_else(|run| panic!("agent {id} did not start: exit {:?}\n{}", run.code, run.stderr))
    }

    /// `depot-agent SUBCOMMAND` with this cluster's coordinator and join token.
    pub fn command(&self, subcommand: &str) -> Command {
        let mut cmd = Command::new(bin("depot-agent"));
        cmd.arg(subcommand)
            .args(["--coordinator", &self.registry, "--join-token", &self.join_token])
            .env_remove("RUST_LOG")
            .env_remove("DEPOT_JOIN_TOKEN")
            .env_remove("DEPOT_COORDINATOR")
            .env_remove("SSL_CERT_FILE")
            .stdin(Stdio::null());
        cmd
    }

    /// `depot-agent fetch --root NODE_DIR --node-id ID --meta META --json` plus `extra`,
    /// run to completion (60 s at most). Its log goes to `logs/fetch-ID-N.log`.
    pub fn fetch(&self, id: &str, meta: &str, extra: &[&str]) -> Run {
        let mut cmd = self.fetch_command(id, meta, extra);
        run(&mut cmd, Duration::from_secs(60))
    }

    /// The command [`Cluster::fetch`] runs, to spawn it instead.
    pub fn fetch_command(&self, id: &str, meta: &str, extra: &[&str]) -> Command {
        let root = self.node_dir(id);
        let log = next_log(&self.dir, &format!("fetch-{id}"));
        let mut cmd = self.command("fetch");
        cmd.arg("--root")
            .arg(&root)
            .args(["--node-id", id, "--meta", meta, "--json", "--log-file"])
            .arg(log)
            .args(extra);
        cmd
    }

    /// S3 credentials of the coordinator as `AWS_*` environment variables.
    pub fn aws_env(&self) -> [(String, String); 2] {
        [
            ("AWS_ACCESS_KEY_ID".into(), self.depot.field("access_key")),
            ("AWS_SECRET_ACCESS_KEY".into(), self.depot.field("secret_key")),
        ]
    }

    /// The storage URL of `prefix/` in the coordinator's bucket.
    pub fn s3_url(&self, prefix: &str) -> String {
        format!(
            "s3://{}/{prefix}?endpoint={}&force-path-style=true&region={}&provider=minio",
            self.depot.field("bucket"),
            self.depot.field("endpoint"),
            self.depot.field("region")
        )
    }
}

/// A fresh log path under `DIR/logs/` named after `stem`.
fn next_log(dir: &Path, stem: &str) -> PathBuf {
    let logs = dir.join("logs");
    std::fs::create_dir_all(&logs).expect("logs dir");
    let n = std::fs::read_dir(&logs).map(|d| d.count()).unwrap_or(0);
    logs.join(format!("{stem}-{n}.log"))
}

/// A running `depot-agent serve`, killed on drop.
pub struct Agent {
    child: Child,
    /// Its node id.
    pub node_id: String,
    /// `https://host:port` of its service (mutual TLS).
    pub endpoint: String,
    /// `host:port` it registered.
    pub address: String,
    /// The directory it serves.
    pub root: PathBuf,
    /// `http://host:port` of its metrics endpoint (with `--metrics`).
    pub metrics: Option<String>,
    /// `http://host:port` of its S3 view (with `--s3-listen`).
    pub s3_endpoint: Option<String>,
    /// The storage URL its ready line gives BR (with `--s3-listen`).
    pub s3_url: Option<String>,
    /// The cluster CA its HTTPS view's certificate comes from (with TLS on the view).
    pub s3_ca: Option<PathBuf>,
    /// Where its stderr goes.
    pub stderr_path: PathBuf,
    /// Lines it printed on stdout after the ready line.
    lines: mpsc::Receiver<String>,
}

impl Agent {
    /// Starts `depot-agent serve --root ROOT --coordinator .. --join-token .. --json ARGS` and
    /// waits for its ready line (10 s at most). On failure, returns how it exited.
    ///
    /// # Errors
    /// The [`Run`] of an agent that exited instead of becoming ready.
    ///
    /// # Panics
    /// When it neither becomes ready nor exits within 10 s.
    pub fn start(dir: &Path, root: &Path, registry: &str, join_token: &str, args: &[&str]) -> Result<Self, Run> {
        let stderr_path = next_log(dir, "agent").with_extension("stderr");
        let mut cmd = Command::new(bin("depot-agent"));
        cmd.arg("serve")
            .arg("--root")
            .arg(root)
            .args(["--coordinator", registry, "--join-token", join_token, "--json"])
            .args(args)
            .env_remove("RUST_LOG")
            .env_remove("DEPOT_JOIN_TOKEN")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr_path).expect("stderr file"));
        let (mut child, rx) = crate::spawn_lines(&mut cmd);
        let ready = rx.recv_timeout(Duration::from_secs(10)).ok();
        // An agent that fails prints `{"error": ..}` instead of its ready line.
        let banner: Option<serde_json::Value> = ready
            .as_deref()
            .and_then(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|b| b.get("node_id").is_some());
        let Some(banner) = banner else {
            let status = wait_timeout(&mut child, Duration::from_secs(10));
            let stderr = std::fs::read_to_string(&stderr_path).unwrap_or_default();
            let _ = child.kill();
            let _ = child.wait();
            return Err(Run {
                code: status.and_then(|s| s.code()),
                stdout: ready.unwrap_or_default(),
                stderr,
                elapsed: Duration::ZERO,
            });
        };
        let field = |name: &str| banner[name].as_str().unwrap_or_default().to_owned();
        Ok(Self {
            node_id: field("node_id"),
            endpoint: field("endpoint"),
            address: field("address"),
            metrics: banner["metrics"].as_str().map(str::to_owned),
            s3_endpoint: banner["s3"]["endpoint"].as_str().map(str::to_owned),
            s3_url: banner["s3"]["url"].as_str().map(str::to_owned),
            s3_ca: banner["s3"]["ca_file"].as_str().map(PathBuf::from),
            root: root.to_path_buf(),
            stderr_path,
            child,
            lines: rx,
        })
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.address.rsplit_once(':').and_then(|(_, p)| p.parse().ok()).expect("address has a port")
    }

    /// Sends a signal (`STOP`, `CONT`, `TERM`, ...).
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill").arg(format!("-{name}")).arg(self.pid().to_string()).status().expect("kill");
        assert!(status.success(), "kill -{name} failed");
    }

    /// `kill -9`: the process dies mid-whatever, without cleanup.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then waits (10 s at most); returns the exit status and the stdout lines after
    /// the ready line.
    ///
    /// # Panics
    /// When it does not stop in time.
    pub fn stop(&mut self) -> (ExitStatus, Vec<String>) {
        self.signal("TERM");
        let status = wait_timeout(&mut self.child, Duration::from_secs(10)).expect("the agent stops within 10 s");
        let mut lines = Vec::new();
        while let Ok(line) = self.lines.recv_timeout(Duration::from_millis(200)) {
            lines.push(line);
        }
        (status, lines)
    }

    /// Waits up to `limit` for it to exit on its own; its exit code.
    pub fn wait(&mut self, limit: Duration) -> Option<i32> {
        wait_timeout(&mut self.child, limit).and_then(|s| s.code())
    }

    /// Its stderr so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = Command::new("kill").arg("-CONT").arg(self.child.id().to_string()).stderr(Stdio::null()).status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// How a command ended.
#[derive(Debug)]
pub struct Run {
    /// Exit code (`None` if killed by a signal).
    pub code: Option<i32>,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
    /// Wall time.
    pub elapsed: Duration,
}

impl Run {
    /// Standard output as one JSON value.
    ///
    /// # Panics
    /// When it is not JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(self.stdout.trim())
            .unwrap_or_else(|err| panic!("stdout is not JSON ({err}): {:?}\nstderr: {}", self.stdout, self.stderr))
    }
}

/// Runs `cmd` to completion, killing it after `limit`.
///
/// # Panics
/// When it does not finish in time.
pub fn run(cmd: &mut Command, limit: Duration) -> Run {
    let started = Instant::now();
    finish(spawn_piped(cmd), limit, started)
}

/// Spawns `cmd` with stdout and stderr piped, for [`finish`] to collect (or for a test that
/// interrupts it first).
///
/// # Panics
/// When it cannot be spawned.
pub fn spawn_piped(cmd: &mut Command) -> Child {
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"))
}

/// Waits for a spawned child (stdout and stderr piped), killing it after `limit`.
///
/// # Panics
/// When it does not finish in time.
pub fn finish(mut child: Child, limit: Duration, started: Instant) -> Run {
    let mut stdout = child.stdout.take().expect("piped stdout");
    let mut stderr = child.stderr.take().expect("piped stderr");
    let out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut stdout, &mut s);
        s
    });
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut stderr, &mut s);
        s
    });
    let status = wait_timeout(&mut child, limit);
    if status.is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
    let run = Run {
        code: status.and_then(|s| s.code()),
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
        elapsed: started.elapsed(),
    };
    assert!(status.is_some(), "command did not finish within {limit:?}: {run:?}");
    run
}

/// Deterministic content for a file named `name` of `size` bytes.
pub fn content(name: &str, size: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(size + 32);
    let mut block: [u8; 32] = Sha256::digest(name.as_bytes()).into();
    while out.len() < size {
        block = Sha256::digest(block).into();
        out.extend_from_slice(&block);
    }
    out.truncate(size);
    out
}

/// A data file of a test backup.
#[derive(Debug, Clone)]
pub struct DataFile {
    /// Name relative to the backup root.
    pub name: String,
    /// Its bytes.
    pub data: Vec<u8>,
}

impl DataFile {
    /// A file with [`content`].
    pub fn new(name: &str, size: usize) -> Self {
        Self { name: name.to_owned(), data: content(name, size) }
    }

    /// Writes it under `root`.
    pub fn write_to(&self, root: &Path) {
        let path = root.join(&self.name);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("parent dir");
        std::fs::write(path, &self.data).expect("write data file");
    }

    /// Whether `root` holds exactly these bytes under its name.
    pub fn is_in(&self, root: &Path) -> bool {
        std::fs::read(root.join(&self.name)).is_ok_and(|d| d == self.data)
    }

    fn to_brpb(&self) -> brpb::File {
        brpb::File {
            name: self.name.clone(),
            sha256: Sha256::digest(&self.data).to_vec(),
            size: self.data.len() as u64,
            cf: "default".into(),
            total_kvs: 1,
            total_bytes: self.data.len() as u64,
            ..Default::default()
        }
    }
}

/// A BR v1 `backupmeta` listing `files` inline.
pub fn backupmeta_v1(files: &[DataFile]) -> Vec<u8> {
    brpb::BackupMeta {
        cluster_id: 7_000_000_000_000_000_001,
        cluster_version: "\"v8.5.0\"".into(),
        files: files.iter().map(DataFile::to_brpb).collect(),
        end_version: 450_000_000_000_000_000,
        br_version: "BR v8.5.0".into(),
        ..Default::default()
    }
    .encode_to_vec()
}

/// Writes a BR v2 backup's metadata into `dir`: `backupmeta.datafile.000000001` (and `...2`)
/// holding `files`, and a `backupmeta` whose `file_index` names them with their sha256.
pub fn write_backupmeta_v2(dir: &Path, files: &[DataFile]) {
    std::fs::create_dir_all(dir).expect("backup dir");
    let half = files.len() / 2;
    let mut index = brpb::MetaFile::default();
    for (n, part) in [&files[..half], &files[half..]].into_iter().enumerate() {
        let meta_file =
            brpb::MetaFile { data_files: part.iter().map(DataFile::to_brpb).collect(), ..Default::default() };
        let bytes = meta_file.encode_to_vec();
        let name = format!("backupmeta.datafile.{:09}", n + 1);
        std::fs::write(dir.join(&name), &bytes).expect("datafile");
        index.meta_files.push(brpb::File {
            name,
            sha256: Sha256::digest(&bytes).to_vec(),
            size: bytes.len() as u64,
            ..Default::default()
        });
    }
    let meta = brpb::BackupMeta {
        cluster_id: 7_000_000_000_000_000_001,
        version: 1,
        file_index: Some(index),
        end_version: 450_000_000_000_000_000,
        ..Default::default()
    };
    std::fs::write(dir.join("backupmeta"), meta.encode_to_vec()).expect("backupmeta");
}

/// Writes a JSON-lines manifest of `files` to `path`.
pub fn write_jsonl(path: &Path, files: &[DataFile]) {
    let mut text = String::new();
    for f in files {
        text.push_str(
            &serde_json::json!({
                "name": f.name,
                "size": f.data.len(),
                "sha256": hex::encode(Sha256::digest(&f.data)),
            })
            .to_string(),
        );
        text.push('\n');
    }
    std::fs::write(path, text).expect("manifest");
}

/// Files left in a root's `.depot/tmp/` (partial transfers).
pub fn temp_files(root: &Path) -> usize {
    std::fs::read_dir(root.join(".depot/tmp")).map_or(0, |d| d.count())
}

/// Bytes of transfers in progress under `root`: temp files in `.depot/tmp/` and resumable
/// partial transfers in `.depot/resume/`.
pub fn partial_bytes(root: &Path) -> u64 {
    fn sum(dir: &Path) -> u64 {
        std::fs::read_dir(dir).map_or(0, |d| {
            d.flatten()
                .map(|e| match e.file_type() {
                    Ok(t) if t.is_dir() => sum(&e.path()),
                    _ => e.metadata().map_or(0, |m| m.len()),
                })
                .sum()
        })
    }
    sum(&root.join(".depot/tmp")) + sum(&root.join(".depot/resume"))
}

/// Polls `condition` every 20 ms for at most `limit`; whether it became true.
pub fn eventually(limit: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if condition() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
