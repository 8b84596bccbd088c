//! Harness for Depot's end-to-end tests: real binaries, real sockets, real S3 clients.
//!
//! Binaries are found like ripgrep's `tests/util.rs` does: next to the test executable's
//! target directory (`target/debug/depot`), or wherever `DEPOT_BIN` / `DEPOT_AGENT_BIN` say.
//! `cargo test --workspace` builds them. Each test gets a fresh directory that also holds
//! the servers' logs (kept when the test fails, under the system temp directory).

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};
use aws_smithy_http_client::tls;

pub mod agents;
pub mod proto;
pub mod raw;

pub use proto::Proto;

/// The path of a workspace binary, `name` being `depot` or `depot-agent`.
///
/// # Panics
/// When the binary is not built, with the command that builds it.
pub fn bin(name: &str) -> PathBuf {
    let var = format!("{}_BIN", name.to_ascii_uppercase().replace('-', "_"));
    if let Ok(path) = std::env::var(&var) {
        return PathBuf::from(path);
    }
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test> → target/<profile>/<name>
    let dir = exe.parent().and_then(Path::parent).expect("target directory");
    let path = dir.join(name);
    assert!(path.exists(), "{} is not built: run `cargo build --workspace` (or set {var})", path.display());
    path
}

/// A fresh directory for one test.
pub fn test_dir() -> tempfile::TempDir {
    tempfile::Builder::new().prefix("depot-test-").tempdir().expect("temp dir")
}

/// A running `depot serve`, killed on drop.
pub struct Depot {
    child: Child,
    /// The `--json` banner.
    pub banner: serde_json::Value,
    /// Where its stderr goes.
    pub stderr_path: PathBuf,
    /// Lines printed on stdout after the banner.
    stdout: mpsc::Receiver<String>,
    /// The protocol [`Depot::client`] and [`Depot::target`] speak: HTTP/2 (ALPN) when the
    /// server has TLS, else HTTP/1.1 unless [`Proto::start`] chose h2c.
    pub proto: Proto,
}

impl Depot {
    /// Starts `depot serve ARCHIVE --listen 127.0.0.1:0 --json` plus `args`, waiting for the
    /// banner (10 s at most). Logs go to `logs/` next to the archive.
    ///
    /// # Panics
    /// When the server does not start; the message includes its stderr.
    pub fn start(archive: &Path, args: &[&str]) -> Self {
        Self::start_with_env(archive, args, &[])
    }

    /// [`Depot::start`] with extra environment variables.
    ///
    /// # Panics
    /// When the server does not start.
    pub fn start_with_env(archive: &Path, args: &[&str], env: &[(&str, &str)]) -> Self {
        let logs = archive.parent().expect("archive has a parent").join("logs");
        let mut full: Vec<String> = vec![archive.to_str().expect("UTF-8 path").to_owned()];
        full.extend(args.iter().map(|a| (*a).to_owned()));
        if !args.contains(&"--log-file") {
            let n = std::fs::read_dir(&logs).map(|d| d.count()).unwrap_or(0);
            full.push("--log-file".into());
            full.push(logs.join(format!("depot-{n}.log")).to_str().expect("UTF-8 path").to_owned());
        }
        let full: Vec<&str> = full.iter().map(String::as_str).collect();
        Self::spawn(&full, env, &logs)
    }

    /// Runs `depot serve --listen 127.0.0.1:0 --json ARGS` (no archive argument added), with
    /// stderr in `logs`, and waits for the banner.
    ///
    /// # Panics
    /// When the server does not start.
    pub fn spawn(args: &[&str], env: &[(&str, &str)], logs: &Path) -> Self {
        std::fs::create_dir_all(logs).expect("logs dir");
        let n = std::fs::read_dir(logs).map(|d| d.count()).unwrap_or(0);
        let stderr_path = logs.join(format!("depot-{n}.stderr"));
        let mut cmd = Command::new(bin("depot"));
        cmd.arg("serve").args(["--listen", "127.0.0.1:0", "--json"]);
        cmd.args(args)
            .envs(env.iter().copied())
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr_path).expect("stderr file"));
        let (mut child, rx) = spawn_lines(&mut cmd);
        let line = rx.recv_timeout(Duration::from_secs(10)).unwrap_or_default();
        let Ok(banner) = serde_json::from_str::<serde_json::Value>(&line) else {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "depot serve did not start: {line:?}\n{}",
                std::fs::read_to_string(&stderr_path).unwrap_or_default()
            );
        };
        let proto =
            if banner["endpoint"].as_str().is_some_and(|e| e.starts_with("https://")) { Proto::H2 } else { Proto::H1 };
        Self { child, banner, stderr_path, stdout: rx, proto }
    }

    /// A banner field as a string.
    ///
    /// # Panics
    /// When the field is missing or not a string.
    pub fn field(&self, name: &str) -> String {
        self.banner[name]
            .as_str()
            .unwrap_or_else(|| panic!("banner has no string {name:?}: {}", self.banner))
            .to_owned()
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// An aws-sdk-s3 client with the server's endpoint and credentials (trusting its CA, if
    /// it has one).
    pub fn client(&self) -> aws_sdk_s3::Client {
        if self.proto == Proto::H2c {
            return proto::h2c_s3_client(
                &self.field("endpoint"),
                &self.field("access_key"),
                &self.field("secret_key"),
                &self.field("region"),
            );
        }
        let ca = self.banner["ca_file"].as_str().map(PathBuf::from);
        s3_client(
            &self.field("endpoint"),
            &self.field("access_key"),
            &self.field("secret_key"),
            &self.field("region"),
            ca.as_deref(),
        )
    }

    /// Where [`raw::send`] reaches this server, over its protocol.
    pub fn target(&self) -> raw::Target {
        raw::Target {
            endpoint: self.field("endpoint"),
            proto: self.proto,
            ca: self.banner["ca_file"].as_str().map(PathBuf::from),
        }
    }

    /// Sends SIGTERM.
    pub fn terminate(&self) {
        let _ = Command::new("kill").arg("-TERM").arg(self.child.id().to_string()).status();
    }

    /// Sends SIGTERM and waits (10 s at most).
    ///
    /// # Panics
    /// When it does not stop in time.
    pub fn stop(mut self) -> Stopped {
        self.terminate();
        let status =
            wait_timeout(&mut self.child, Duration::from_secs(10)).expect("depot stops within 10 s of SIGTERM");
        let mut stderr = String::new();
        let _ = std::fs::File::open(&self.stderr_path).and_then(|mut f| f.read_to_string(&mut stderr));
        // The reader thread ends when the process's stdout closes.
        let stdout = self.stdout.iter().collect();
        Stopped { status, stderr, stdout }
    }

    /// `kill -9`: no cleanup, no summary.
    pub fn kill9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Depot {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// How a server ended.
#[derive(Debug)]
pub struct Stopped {
    /// Its exit status.
    pub status: std::process::ExitStatus,
    /// Everything it wrote to stderr.
    pub stderr: String,
    /// Lines it wrote to stdout after the banner.
    pub stdout: Vec<String>,
}

/// Spawns `cmd` with its stdout piped into a channel, one line at a time (a thread reads it,
/// so a test can wait for a ready line with a timeout).
///
/// # Panics
/// When the command cannot be spawned.
pub fn spawn_lines(cmd: &mut Command) -> (Child, mpsc::Receiver<String>) {
    let mut child = cmd.stdout(Stdio::piped()).spawn().unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    (child, rx)
}

/// Waits for a child to exit, at most `limit`.
pub fn wait_timeout(child: &mut Child, limit: Duration) -> Option<std::process::ExitStatus> {
    let deadline = std::time::Instant::now() + limit;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        if std::time::Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// An aws-sdk-s3 client as a user would configure one for Depot: path-style, the SDK's
/// current defaults otherwise (CRC32 checksums in aws-chunked bodies with trailers).
pub fn s3_client(
    endpoint: &str,
    access_key: &str,
    secret_key: &str,
    region: &str,
    ca: Option<&Path>,
) -> aws_sdk_s3::Client {
    let mut trust = tls::TrustStore::default();
    if let Some(ca) = ca {
        trust = trust.with_pem_certificate(std::fs::read(ca).expect("CA file"));
    }
    let http = aws_smithy_http_client::Builder::new()
        .tls_provider(tls::Provider::Rustls(tls::rustls_provider::CryptoMode::Ring))
        .tls_context(tls::TlsContext::builder().with_trust_store(trust).build().expect("TLS context"))
        .build_https();
    let config = aws_sdk_s3::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .endpoint_url(endpoint)
        .region(Region::new(region.to_owned()))
        .credentials_provider(Credentials::new(access_key, secret_key, None, None, "depot-test"))
        .force_path_style(true)
        .http_client(http)
        .build();
    aws_sdk_s3::Client::from_conf(config)
}
