//! Hostile clients cannot starve a server (issue 9): 500 connections that send half a request
//! and stall, plus 100 that send garbage, against the coordinator and against an agent. A
//! normal client's request still succeeds within a second throughout, the stalled ones are
//! closed after the header timeout, and the server's memory stays bounded.

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use depot_agent::peer::PeerDirectory;
use depot_agent::registry::PeerInfo;
use depot_proto::agent::FileExistsRequest;
use depot_tests::agents::{Cluster, DataFile};
use depot_tests::test_dir;

const STALLED: usize = 500;
const GARBAGE: usize = 100;
const LIMITS: [&str; 6] = ["--header-timeout", "2s", "--max-connections", "400", "--idle-timeout", "30s"];

/// Opens the attackers' connections to `addr`: `STALLED` that send `half` and go silent,
/// `GARBAGE` that send junk.
fn attack(addr: &str, half: &[u8]) -> Vec<TcpStream> {
    let mut conns = Vec::new();
    for i in 0..STALLED + GARBAGE {
        let Ok(mut conn) = TcpStream::connect(addr) else { continue };
        let _ = if i < STALLED { conn.write_all(half) } else { conn.write_all(&[0xff; 512]) };
        conns.push(conn);
    }
    conns
}

/// How many of `conns` the server has closed (EOF or reset within `wait`).
fn closed(conns: &mut [TcpStream], wait: Duration) -> usize {
    conns
        .iter_mut()
        .map(|c| {
            c.set_read_timeout(Some(wait)).unwrap();
            let mut buf = [0u8; 1024];
            loop {
                match c.read(&mut buf) {
                    Ok(0) => return true,
                    Ok(_) => {} // an error response first (garbage gets a 400), then EOF
                    Err(e)
                        if e.kind() == std::io::ErrorKind::WouldBlock || e.kind() == std::io::ErrorKind::TimedOut =>
                    {
                        return false;
                    }
                    Err(_) => return true,
                }
            }
        })
        .filter(|shut| *shut)
        .count()
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap()
}

/// A plain HTTP request on a fresh connection; the status line must come back within 1 s.
fn normal_request(addr: &str) -> Duration {
    let started = Instant::now();
    let mut conn = TcpStream::connect(addr).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
    conn.write_all(format!("GET / HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes()).unwrap();
    let mut head = [0u8; 12];
    conn.read_exact(&mut head).unwrap_or_else(|e| panic!("no answer within 1 s under attack: {e}"));
    assert!(head.starts_with(b"HTTP/1.1 "), "{head:?}");
    started.elapsed()
}

#[test]
fn the_coordinator_serves_normal_clients_under_a_connection_flood() {
    depot_net::raise_open_file_limit().unwrap();
    let dir = test_dir();
    let depot = depot_tests::Depot::start(&dir.path().join("archive"), &LIMITS);
    let addr = depot.field("endpoint").trim_start_matches("http://").to_owned();
    let rss_before = rss_kib(depot.pid());
    let started = Instant::now();
    let mut conns = attack(&addr, b"GET /depot-bucket/some/ke");
    assert!(conns.len() >= STALLED, "the attack connected");
    while started.elapsed() < Duration::from_secs(3) {
        assert!(normal_request(&addr) < Duration::from_secs(1));
        std::thread::sleep(Duration::from_millis(100));
    }
    let shut = closed(&mut conns, Duration::from_secs(3));
    assert_eq!(shut, conns.len(), "every stalled and garbage connection is closed after the header timeout");
    let rss_after = rss_kib(depot.pid());
    assert!(rss_after < rss_before + 64 * 1024, "RSS {rss_before} KiB -> {rss_after} KiB");
    assert!(normal_request(&addr) < Duration::from_secs(1));
}

#[tokio::test(flavor = "multi_thread")]
async fn an_agent_serves_its_peers_under_a_connection_flood() {
    depot_net::raise_open_file_limit().unwrap();
    let dir = test_dir();
    let cluster = Cluster::start(dir.path(), "500ms");
    DataFile::new("x.sst", 10).write_to(&cluster.node_dir("a"));
    let agent = cluster.agent("a", &LIMITS);
    let member = cluster.coordinator("member").await;
    let identity = member.identity().unwrap();
    let rss_before = rss_kib(agent.pid());
    let address = agent.address.clone();
    // Half a TLS ClientHello, then silence.
    let mut conns =
        tokio::task::spawn_blocking(move || attack(&address, b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"))
            .await
            .unwrap();
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(3) {
        let t = Instant::now();
        let peers = vec![PeerInfo { node_id: "a".into(), address: agent.address.clone(), last_seen_ms: 0 }];
        // A fresh directory: a fresh connection and TLS handshake every time.
        let mut client =
            PeerDirectory::fixed(peers, identity.clone(), None).peers(false).await.unwrap()[0].client().unwrap();
        let call = client.file_exists(FileExistsRequest { path: "x.sst".into() });
        let answer = tokio::time::timeout(Duration::from_secs(1), call).await.expect("answered within 1 s").unwrap();
        assert!(answer.into_inner().exists);
        assert!(t.elapsed() < Duration::from_secs(1));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let shut = tokio::task::spawn_blocking(move || closed(&mut conns, Duration::from_secs(3)));
    let shut = shut.await.unwrap();
    assert_eq!(shut, STALLED + GARBAGE, "every stalled and garbage connection is closed");
    let rss_after = rss_kib(agent.pid());
    assert!(rss_after < rss_before + 64 * 1024, "RSS {rss_before} KiB -> {rss_after} KiB");
}

/// The same flood against an agent's S3 view (`--s3-listen`), which admits through the same
/// loop and limits as the agent's peer service: half-sent S3 requests and garbage are closed
/// after the header timeout while a signed GET on a fresh connection succeeds throughout.
#[tokio::test(flavor = "multi_thread")]
async fn an_agents_s3_view_serves_signed_gets_under_a_connection_flood() {
    depot_net::raise_open_file_limit().unwrap();
    let dir = test_dir();
    let cluster = Cluster::start(dir.path(), "500ms");
    let file = DataFile::new("1/x.sst", 100_000);
    file.write_to(&cluster.node_dir("a"));
    let mut args = LIMITS.to_vec();
    args.extend(["--s3-listen", "127.0.0.1:0", "--s3-prefix", "backup"]);
    let agent = cluster.agent("a", &args);
    let endpoint = agent.s3_endpoint.clone().expect("the ready line names the view");
    let rss_before = rss_kib(agent.pid());
    let address = endpoint.trim_start_matches("http://").to_owned();
    let mut conns =
        tokio::task::spawn_blocking(move || attack(&address, b"GET /depot-bucket/backup/1/x.s")).await.unwrap();
    assert!(conns.len() >= STALLED, "the attack connected");
    let (bucket, key) = (cluster.depot.field("bucket"), "backup/1/x.sst");
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(3) {
        let t = Instant::now();
        // A fresh client: a fresh connection every time.
        let s3 = depot_tests::s3_client(
            &endpoint,
            &cluster.depot.field("access_key"),
            &cluster.depot.field("secret_key"),
            &cluster.depot.field("region"),
            None,
        );
        let get = s3.get_object().bucket(&bucket).key(key).send();
        let out = tokio::time::timeout(Duration::from_secs(1), get).await.expect("answered within 1 s").unwrap();
        assert!(out.body.collect().await.unwrap().into_bytes() == file.data, "a signed GET, byte-exact");
        assert!(t.elapsed() < Duration::from_secs(1));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let shut = tokio::task::spawn_blocking(move || closed(&mut conns, Duration::from_secs(3)));
    let shut = shut.await.unwrap();
    assert_eq!(shut, STALLED + GARBAGE, "every stalled and garbage connection to the view is closed");
    let rss_after = rss_kib(agent.pid());
    assert!(rss_after < rss_before + 64 * 1024, "RSS {rss_before} KiB -> {rss_after} KiB");
}
