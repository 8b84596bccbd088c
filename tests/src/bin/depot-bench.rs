//! Load generator behind `scripts/bench.sh`; prints `name=value` lines.
//!
//! - `tcp-sink`: accepts connections and discards what they send (prints `port=N`).
//! - `tcp-send --to ADDR --bytes N`: the raw loopback TCP baseline.
//! - `md5 --bytes N`: MD5 of N bytes on one core, with the implementation the server uses
//!   (the md-5 crate, through s3s): the ETag's ceiling.
//! - `s3 ...`: one large PUT then GET, then many small PUTs then GETs at a concurrency.
//! - `get ...`: GETs of the keys a file lists (first field of each line), optionally
//!   shuffled, at a concurrency: seconds, files/s, MB/s (the agents' S3 view vs `depot serve`).
//! - `mpu ...`: one large PUT, then the same size as a multipart upload of fixed-size parts
//!   sent one after another (as TiKV does), with Complete timed on its own.
//! - `fs-commit --dir D`: the file system's own ceiling for group commit, without Depot:
//!   threads that each write a 4 KiB file, fsync it, rename it into one directory and fsync
//!   that directory, alone or grouped (`depot_fs::sync_dir`, what the server uses).
//! - `list ...`: directories of 1,000 to 1,000,000 empty files listed in full with V1 and V2
//!   (see `list.rs`).
//!
//! The S3 requests are signed with `UNSIGNED-PAYLOAD` and sent with plain hyper, and the large
//! GET is read the way the TCP baseline's sink reads (a reused 1 MiB buffer), so the client
//! costs what the baseline's client costs: the ratios measure the server.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use clap::{Parser, Subcommand};
use depot_tests::raw::{Signer, sign_request};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[path = "depot-bench/list.rs"]
mod list;

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Discard everything sent to a port (prints `port=N`).
    TcpSink,
    /// Send N bytes to a sink and report MB/s.
    TcpSend {
        #[arg(long)]
        to: String,
        #[arg(long)]
        bytes: u64,
    },
    /// MD5 of N bytes on one core; reports MB/s.
    Md5 {
        #[arg(long)]
        bytes: u64,
    },
    /// The S3 workload against a running `depot serve`.
    S3 {
        #[command(flatten)]
        target: Target,
        /// Size of the large object (0 skips it).
        #[arg(long, default_value_t = 1 << 30)]
        large: u64,
        /// Number of small objects (0 skips them).
        #[arg(long, default_value_t = 5000)]
        small_count: usize,
        #[arg(long, default_value_t = 4096)]
        small_size: usize,
        #[arg(long, default_value_t = 32)]
        concurrency: usize,
        /// Only GET the large object (stored by an earlier run).
        #[arg(long)]
        get_only: bool,
        /// Where the small objects go: `spread` (64 existing directories) or `fresh` (new
        /// nested directories, 16 objects each, written at once: TiKV's `<store>/` pattern).
        #[arg(long, default_value = "spread")]
        layout: String,
    },
    /// GETs of listed keys; prints `NAME_seconds`, `NAME_files_per_s`, `NAME_mb_per_s`.
    Get {
        #[command(flatten)]
        target: Target,
        /// One key per line (the first whitespace-separated field).
        #[arg(long)]
        keys_file: std::path::PathBuf,
        #[arg(long, default_value_t = 1)]
        concurrency: usize,
        /// Read the keys in a random order.
        #[arg(long)]
        shuffle: bool,
        /// Prefix of the printed names.
        #[arg(long)]
        name: String,
    },
    /// A PUT and a multipart upload of the same size, on one connection.
    Mpu {
        #[command(flatten)]
        target: Target,
        #[arg(long, default_value_t = 1 << 30)]
        size: u64,
        #[arg(long, default_value_t = 8 << 20)]
        part_size: u64,
    },
    /// Small durable writes straight to the file system (no Depot), with the directory fsync
    /// alone and grouped; prints `fs_commit_ops_s`, `fs_grouped_commit_ops_s` and their ratio.
    FsCommit {
        /// A directory on the file system to measure (created; its files are left for the
        /// caller to remove: deleting tens of thousands of files right away would slow the
        /// next creations, as ext4 skips recently freed inodes).
        #[arg(long)]
        dir: std::path::PathBuf,
        #[arg(long, default_value_t = 32)]
        threads: usize,
        /// Seconds per measurement; each mode is measured twice, alternated, best kept.
        #[arg(long, default_value_t = 0.5)]
        seconds: f64,
    },
    /// Directories of N empty files made in the archive, each listed in full with
    /// ListObjects (V1, Marker) and ListObjectsV2, 1,000 keys a page.
    List {
        #[command(flatten)]
        target: Target,
        /// The directory the server serves (the files are created in it directly).
        #[arg(long)]
        archive: std::path::PathBuf,
        /// Directory sizes, comma-separated.
        #[arg(long, value_delimiter = ',', default_values_t = [1_000, 100_000, 1_000_000])]
        sizes: Vec<usize>,
    },
    /// Registers N agents (each heartbeating a report with two jobs) with a running `depot
    /// serve`, then times scrapes of /_depot/metrics and reads of the status API.
    Scrape {
        #[arg(long)]
        endpoint: String,
        #[arg(long)]
        join_token: String,
        /// The status token (from `status_url`).
        #[arg(long)]
        status_token: String,
        #[arg(long, default_value_t = 100)]
        nodes: usize,
        #[arg(long, default_value_t = 50)]
        rounds: usize,
    },
}

/// GETs `path` on `authority` over a fresh HTTP/1.1 connection; returns the body length.
async fn http_get(authority: &str, path: &str, bearer: Option<&str>) -> usize {
    let tcp = tokio::net::TcpStream::connect(authority).await.expect("connect");
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await.expect("handshake");
    tokio::spawn(connection);
    let mut req = http::Request::get(path).header("host", authority);
    if let Some(token) = bearer {
        req = req.header("authorization", format!("Bearer {token}"));
    }
    let response =
        sender.send_request(req.body(http_body_util::Empty::<Bytes>::new()).expect("request")).await.expect("send");
    assert_eq!(response.status(), 200, "GET {path}");
    response.into_body().collect().await.expect("body").to_bytes().len()
}

/// Joins `nodes` agents (a certificate each, as `depot-agent serve` does) and heartbeats each
/// once with a two-job report.
async fn register_nodes(endpoint: &str, join_token: &str, nodes: usize) {
    use depot_agent::registry::Coordinator;
    use depot_proto::registry::{JobReport, NodeReport};
    let job = |task: &str| JobReport {
        kind: "fetch".into(),
        task: task.into(),
        backup: "backup-1".into(),
        state: "fetching".into(),
        files_done: 500,
        files_needed: 2000,
        bytes_done: 500 << 20,
        bytes_needed: 2000 << 20,
        bytes_per_second: 100e6,
        missing: (0..20).map(|m| format!("1/{m}_missing.sst")).collect(),
        ..JobReport::default()
    };
    let report = NodeReport { version: "0.1.0".into(), jobs: vec![job("a"), job("b")], holdings: vec![], view: None };
    for i in 0..nodes {
        let (node_id, address) = (format!("bench-node-{i:03}"), format!("10.0.{}.{}:7070", i / 250, i % 250 + 1));
        let report = report.clone();
        let coordinator = Coordinator::new(endpoint, depot_agent::auth::Secret::new(join_token.to_owned()), None)
            .expect("registry")
            .with_reporter(std::sync::Arc::new(move || report.clone()));
        let key = rcgen::KeyPair::generate().expect("key");
        coordinator.join(&node_id, &address, key, false, Duration::from_secs(10)).await.expect("join");
        coordinator.heartbeat(&node_id, &address).await.expect("heartbeat");
    }
}

fn median_ms(mut samples: Vec<f64>) -> f64 {
    samples.sort_by(f64::total_cmp);
    samples[samples.len() / 2] * 1000.0
}

/// A running `depot serve` and its credentials.
#[derive(clap::Args)]
struct Target {
    #[arg(long)]
    endpoint: String,
    #[arg(long)]
    bucket: String,
    #[arg(long)]
    access_key: String,
    #[arg(long)]
    secret_key: String,
    #[arg(long, default_value = "us-east-1")]
    region: String,
}

impl Target {
    fn client(self) -> Client {
        let authority = self.endpoint.trim_start_matches("http://").to_owned();
        let signer = Signer { access_key: self.access_key, secret_key: self.secret_key, region: self.region };
        Client { endpoint: self.endpoint, authority, signer }
    }
}

const CHUNK: usize = 1024 * 1024;

fn mb_per_s(bytes: u64, seconds: f64) -> f64 {
    bytes as f64 / 1e6 / seconds
}

/// A deterministic, incompressible-looking block.
fn block(len: usize) -> Bytes {
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect::<Vec<u8>>()
        .into()
}

/// A body of `remaining` bytes made of one block repeated (no copies).
struct Repeat {
    block: Bytes,
    remaining: u64,
}

impl Body for Repeat {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.remaining == 0 {
            return Poll::Ready(None);
        }
        let n = self.remaining.min(self.block.len() as u64) as usize;
        self.remaining -= n as u64;
        Poll::Ready(Some(Ok(Frame::data(self.block.slice(..n)))))
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.remaining)
    }
}

struct Client {
    endpoint: String,
    authority: String,
    signer: Signer,
}

impl Client {
    async fn connect(&self) -> hyper::client::conn::http1::SendRequest<Repeat> {
        let tcp = tokio::net::TcpStream::connect(&self.authority).await.expect("connect");
        tcp.set_nodelay(true).expect("nodelay");
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await.expect("handshake");
        tokio::spawn(conn);
        sender
    }

    fn request(&self, method: &str, path: &str, body: Repeat) -> http::Request<Repeat> {
        let len = body.remaining;
        let mut req = http::Request::builder()
            .method(method)
            .uri(path)
            .header("host", &self.authority)
            .header("content-length", len)
            .body(body)
            .expect("request");
        sign_request(&mut req, &self.endpoint, &self.signer, "UNSIGNED-PAYLOAD", SystemTime::now());
        req
    }

    /// A GET read the way the TCP baseline's sink reads: one connection, the head parsed
    /// just enough, the body read into a reused 1 MiB buffer and dropped. Returns (status,
    /// body bytes).
    async fn raw_get(&self, path: &str) -> (u16, u64) {
        let req = self.request("GET", path, Repeat { block: Bytes::new(), remaining: 0 });
        let mut head = format!("GET {} HTTP/1.1\r\n", req.uri());
        for (name, value) in req.headers() {
            head.push_str(&format!("{name}: {}\r\n", value.to_str().expect("ASCII header")));
        }
        head.push_str("\r\n");
        let mut tcp = tokio::net::TcpStream::connect(&self.authority).await.expect("connect");
        tcp.write_all(head.as_bytes()).await.expect("send");
        let mut buf = vec![0u8; CHUNK];
        let mut filled = 0;
        let end = loop {
            let n = tcp.read(&mut buf[filled..]).await.expect("read head");
            assert!(n > 0, "connection closed before the response head");
            filled += n;
            if let Some(at) = buf[..filled].windows(4).position(|w| w == b"\r\n\r\n") {
                break at + 4;
            }
        };
        let text = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
        let status = text[9..12].parse().expect("status code");
        let length: u64 = text
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .map_or(0, |v| v.trim().parse().expect("content-length"));
        let mut got = (filled - end) as u64;
        while got < length {
            let n = tcp.read(&mut buf).await.expect("read body");
            assert!(n > 0, "connection closed after {got} of {length} bytes");
            got += n as u64;
        }
        (status, got)
    }

    /// Sends a request and returns the status, headers and body.
    async fn call_full(
        &self,
        conn: &mut hyper::client::conn::http1::SendRequest<Repeat>,
        req: http::Request<Repeat>,
    ) -> (u16, http::HeaderMap, Bytes) {
        conn.ready().await.expect("connection ready");
        let resp = conn.send_request(req).await.expect("response");
        let (head, body) = resp.into_parts();
        let body = body.collect().await.expect("body").to_bytes();
        (head.status.as_u16(), head.headers, body)
    }

    /// Sends a request and drains the response; returns (status, body bytes).
    async fn call(
        &self,
        conn: &mut hyper::client::conn::http1::SendRequest<Repeat>,
        req: http::Request<Repeat>,
    ) -> (u16, u64) {
        conn.ready().await.expect("connection ready");
        let resp = conn.send_request(req).await.expect("response");
        let status = resp.status().as_u16();
        let mut body = resp.into_body();
        let mut n = 0u64;
        while let Some(frame) = body.frame().await {
            if let Ok(data) = frame.expect("body").into_data() {
                n += data.len() as u64;
            }
        }
        (status, n)
    }
}

/// The text of the first `<name>` element of an XML document.
fn xml_text(xml: &[u8], name: &str) -> Option<String> {
    let mut reader = quick_xml::Reader::from_reader(xml);
    let mut inside = false;
    loop {
        match reader.read_event().ok()? {
            quick_xml::events::Event::Start(e) => inside = e.name().as_ref() == name.as_bytes(),
            quick_xml::events::Event::Text(t) if inside => return Some(t.decode().ok()?.into_owned()),
            quick_xml::events::Event::Eof => return None,
            _ => {}
        }
    }
}

/// `put_1g_seconds`, `mpu_1g_seconds`, `mpu_vs_put` (throughput ratio) and
/// `mpu_complete_share` (Complete's share of the upload's wall time).
async fn multipart_vs_put(client: Client, bucket: &str, size: u64, part_size: u64) {
    let data = block(CHUNK);
    let mut conn = client.connect().await;
    let start = Instant::now();
    let path = format!("/{bucket}/bench/put-large");
    let (status, _) =
        client.call(&mut conn, client.request("PUT", &path, Repeat { block: data.clone(), remaining: size })).await;
    assert_eq!(status, 200, "large PUT");
    let put = start.elapsed().as_secs_f64();

    let path = format!("/{bucket}/bench/mpu-large");
    let start = Instant::now();
    let empty = || Repeat { block: Bytes::new(), remaining: 0 };
    let (status, _, body) =
        client.call_full(&mut conn, client.request("POST", &format!("{path}?uploads"), empty())).await;
    assert_eq!(status, 200, "CreateMultipartUpload");
    let id = xml_text(&body, "UploadId").expect("an UploadId");
    let mut completed = String::from("<CompleteMultipartUpload>");
    let mut number = 0;
    let mut sent = 0;
    while sent < size {
        number += 1;
        let len = part_size.min(size - sent);
        let query = format!("{path}?partNumber={number}&uploadId={id}");
        let req = client.request("PUT", &query, Repeat { block: data.clone(), remaining: len });
        let (status, headers, _) = client.call_full(&mut conn, req).await;
        assert_eq!(status, 200, "UploadPart {number}");
        let etag = headers.get("etag").and_then(|v| v.to_str().ok()).expect("an ETag").to_owned();
        completed.push_str(&format!("<Part><PartNumber>{number}</PartNumber><ETag>{etag}</ETag></Part>"));
        sent += len;
    }
    completed.push_str("</CompleteMultipartUpload>");
    let complete_start = Instant::now();
    let body = Bytes::from(completed);
    let req =
        client.request("POST", &format!("{path}?uploadId={id}"), Repeat { remaining: body.len() as u64, block: body });
    let (status, _, reply) = client.call_full(&mut conn, req).await;
    assert!(
        status == 200 && xml_text(&reply, "ETag").is_some(),
        "Complete: {status} {}",
        String::from_utf8_lossy(&reply)
    );
    let complete = complete_start.elapsed().as_secs_f64();
    let mpu = start.elapsed().as_secs_f64();
    println!("put_1g_seconds={put:.2}");
    println!("mpu_1g_seconds={mpu:.2}");
    println!("mpu_vs_put={:.2}", put / mpu);
    println!("mpu_complete_share={:.3}", complete / mpu);
}

/// Small durable writes per second on the file system under `dir`, `threads` at once for
/// `seconds`: each writes 4 KiB to a new file in `dir/tmp`, fsyncs it, renames it into
/// `dir/objects` and fsyncs that directory (with `grouped`, through `depot_fs::sync_dir`).
fn fs_commit(dir: &std::path::Path, threads: usize, seconds: f64, grouped: bool) -> f64 {
    use std::io::Write as _;
    let (tmp, objects) = (dir.join("tmp"), dir.join("objects"));
    std::fs::create_dir_all(&tmp).expect("create the tmp directory");
    std::fs::create_dir_all(&objects).expect("create the objects directory");
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let done = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let workers: Vec<_> = (0..threads)
        .map(|thread| {
            let (tmp, objects, stop, done) = (tmp.clone(), objects.clone(), Arc::clone(&stop), Arc::clone(&done));
            std::thread::spawn(move || {
                let data = [b'x'; 4096];
                for n in 0.. {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let name = format!("{thread}-{n}");
                    let mut file = std::fs::File::create_new(tmp.join(&name)).expect("create");
                    file.write_all(&data).expect("write");
                    file.sync_all().expect("fsync the file");
                    std::fs::rename(tmp.join(&name), objects.join(&name)).expect("rename");
                    if grouped {
                        depot_fs::sync_dir(&objects).expect("fsync the directory");
                    } else {
                        std::fs::File::open(&objects).and_then(|d| d.sync_all()).expect("fsync the directory");
                    }
                    done.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs_f64(seconds));
    stop.store(true, Ordering::Relaxed);
    for worker in workers {
        worker.join().expect("worker");
    }
    done.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64()
}

#[tokio::main]
async fn main() {
    match Cli::parse().command {
        Command::Scrape { endpoint, join_token, status_token, nodes, rounds } => {
            register_nodes(&endpoint, &join_token, nodes).await;
            let authority = endpoint.trim_start_matches("http://").to_owned();
            let (mut scrape, mut status, mut worst) = (Vec::new(), Vec::new(), 0.0f64);
            for _ in 0..rounds {
                let start = Instant::now();
                http_get(&authority, "/_depot/metrics", None).await;
                let took = start.elapsed().as_secs_f64();
                worst = worst.max(took);
                scrape.push(took);
                let start = Instant::now();
                http_get(&authority, "/_depot/api/status", Some(&status_token)).await;
                status.push(start.elapsed().as_secs_f64());
            }
            println!("scrape_{nodes}_nodes_ms={:.2}", median_ms(scrape));
            println!("scrape_{nodes}_nodes_worst_ms={:.2}", worst * 1000.0);
            println!("status_api_{nodes}_nodes_ms={:.2}", median_ms(status));
        }
        Command::FsCommit { dir, threads, seconds } => {
            let (mut alone, mut grouped) = (0.0f64, 0.0f64);
            for round in 0..2 {
                alone = alone.max(fs_commit(&dir.join(format!("alone-{round}")), threads, seconds, false));
                grouped = grouped.max(fs_commit(&dir.join(format!("grouped-{round}")), threads, seconds, true));
            }
            println!("fs_commit_ops_s={alone:.0}");
            println!("fs_grouped_commit_ops_s={grouped:.0}");
            println!("fs_group_commit_ceiling={:.2}", grouped / alone);
        }
        Command::TcpSink => {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
            println!("port={}", listener.local_addr().expect("addr").port());
            loop {
                let (mut tcp, _) = listener.accept().await.expect("accept");
                tokio::spawn(async move {
                    let mut buf = vec![0u8; CHUNK];
                    while tcp.read(&mut buf).await.is_ok_and(|n| n > 0) {}
                    let _ = tcp.write_all(b"done").await;
                });
            }
        }
        Command::Md5 { bytes } => {
            use md5::Digest as _;
            let data = block(CHUNK);
            let mut md5 = md5::Md5::new();
            let start = Instant::now();
            let mut hashed = 0u64;
            while hashed < bytes {
                let n = (bytes - hashed).min(CHUNK as u64) as usize;
                md5.update(&data[..n]);
                hashed += n as u64;
            }
            std::hint::black_box(md5.finalize());
            println!("md5_one_core_mb_s={:.0}", mb_per_s(bytes, start.elapsed().as_secs_f64()));
        }
        Command::TcpSend { to, bytes } => {
            let mut tcp = tokio::net::TcpStream::connect(&to).await.expect("connect");
            let data = block(CHUNK);
            let start = Instant::now();
            let mut sent = 0u64;
            while sent < bytes {
                let n = (bytes - sent).min(CHUNK as u64) as usize;
                tcp.write_all(&data[..n]).await.expect("send");
                sent += n as u64;
            }
            tcp.shutdown().await.expect("shutdown");
            let mut ack = [0u8; 4];
            tcp.read_exact(&mut ack).await.expect("ack");
            println!("tcp_loopback_mb_s={:.0}", mb_per_s(bytes, start.elapsed().as_secs_f64()));
        }
        Command::List { target, archive, sizes } => {
            let client =
                depot_tests::s3_client(&target.endpoint, &target.access_key, &target.secret_key, &target.region, None);
            list::run(client, &target.bucket, &archive, &sizes).await;
        }
        Command::Get { target, keys_file, concurrency, shuffle, name } => {
            let bucket = target.bucket.clone();
            let text = std::fs::read_to_string(&keys_file).expect("keys file");
            let mut keys: Vec<String> =
                text.lines().filter_map(|l| l.split_whitespace().next()).map(|k| format!("/{bucket}/{k}")).collect();
            if shuffle {
                // Fisher-Yates with a fixed xorshift: the same order every run.
                let mut x = 0x2545_f491_4f6c_dd1du64;
                for i in (1..keys.len()).rev() {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    keys.swap(i, (x % (i as u64 + 1)) as usize);
                }
            }
            let client = Arc::new(target.client());
            let keys = Arc::new(keys);
            let next = Arc::new(AtomicUsize::new(0));
            let bytes = Arc::new(std::sync::atomic::AtomicU64::new(0));
            let start = Instant::now();
            let mut workers = Vec::new();
            for _ in 0..concurrency.max(1) {
                let (client, keys, next, bytes) =
                    (Arc::clone(&client), Arc::clone(&keys), Arc::clone(&next), Arc::clone(&bytes));
                workers.push(tokio::spawn(async move {
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(path) = keys.get(i) else { break };
                        let (status, got) = client.raw_get(path).await;
                        assert_eq!(status, 200, "GET {path}");
                        bytes.fetch_add(got, Ordering::Relaxed);
                    }
                }));
            }
            for worker in workers {
                worker.await.expect("worker");
            }
            let seconds = start.elapsed().as_secs_f64();
            let total = bytes.load(Ordering::Relaxed);
            println!("{name}_seconds={seconds:.3}");
            println!("{name}_files_per_s={:.0}", keys.len() as f64 / seconds);
            println!("{name}_mb_per_s={:.1}", mb_per_s(total, seconds));
        }
        Command::Mpu { target, size, part_size } => {
            let bucket = target.bucket.clone();
            multipart_vs_put(target.client(), &bucket, size, part_size).await;
        }
        Command::S3 { target, large, small_count, small_size, concurrency, get_only, layout } => {
            let bucket = target.bucket.clone();
            let client = Arc::new(target.client());
            if large > 0 {
                let mut conn = client.connect().await;
                let path = format!("/{bucket}/bench/large");
                if !get_only {
                    let start = Instant::now();
                    let (status, _) = client
                        .call(&mut conn, client.request("PUT", &path, Repeat { block: block(CHUNK), remaining: large }))
                        .await;
                    let put = start.elapsed().as_secs_f64();
                    assert_eq!(status, 200, "large PUT");
                    println!("put_large_mb_s={:.0}", mb_per_s(large, put));
                }
                let start = Instant::now();
                let (status, got) = client.raw_get(&path).await;
                let get = start.elapsed().as_secs_f64();
                assert_eq!((status, got), (200, large), "large GET");
                println!("get_large_mb_s={:.0}", mb_per_s(large, get));
            }
            if small_count > 0 {
                let data = block(small_size);
                let run = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
                let fresh = match layout.as_str() {
                    "spread" => None,
                    "fresh" => Some(run),
                    other => panic!("--layout is spread or fresh, not {other:?}"),
                };
                for method in ["PUT", "GET"] {
                    let next = Arc::new(AtomicUsize::new(0));
                    let start = Instant::now();
                    let mut workers = Vec::new();
                    for _ in 0..concurrency {
                        let (client, next, data, bucket) =
                            (Arc::clone(&client), Arc::clone(&next), data.clone(), bucket.clone());
                        workers.push(tokio::spawn(async move {
                            let mut conn = client.connect().await;
                            loop {
                                let i = next.fetch_add(1, Ordering::Relaxed);
                                if i >= small_count {
                                    break;
                                }
                                let path = match fresh {
                                    None => format!("/{bucket}/bench/small/{:02}/{i:06}", i % 64),
                                    Some(run) => format!("/{bucket}/bench/fresh-{run}/{:04}/sst/{i:06}", i / 16),
                                };
                                let body = if method == "PUT" {
                                    Repeat { block: data.clone(), remaining: data.len() as u64 }
                                } else {
                                    Repeat { block: Bytes::new(), remaining: 0 }
                                };
                                let (status, _) = client.call(&mut conn, client.request(method, &path, body)).await;
                                assert_eq!(status, 200, "{method} {path}");
                            }
                        }));
                    }
                    for worker in workers {
                        worker.await.expect("worker");
                    }
                    let rate = small_count as f64 / start.elapsed().as_secs_f64();
                    let figure = if fresh.is_some() { "fresh_dir" } else { "small" };
                    println!("{figure}_{}_ops_s={rate:.0}", method.to_ascii_lowercase());
                }
            }
        }
    }
}
