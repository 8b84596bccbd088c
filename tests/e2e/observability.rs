//! Metrics, health checks and the status API of `depot serve` (issue 11).

use std::time::Duration;

use aws_sdk_s3::primitives::ByteStream;
use depot_tests::agents::{Agent, Cluster, DataFile, eventually, spawn_piped, write_jsonl};
use depot_tests::raw::{self, Payload};
use depot_tests::{Depot, test_dir, wait_timeout};

/// GET `path` on `endpoint` without credentials.
async fn get(endpoint: &str, path: &str, headers: &[(&str, &str)]) -> raw::Response {
    raw::send(endpoint, None, "GET", path, headers, Payload::Unsigned(Vec::new())).await
}

/// The samples of a scrape, parsed by a Prometheus text parser.
fn scrape(text: &str) -> Vec<prometheus_parse::Sample> {
    let lines = text.lines().map(|l| Ok(l.to_owned()));
    prometheus_parse::Scrape::parse(lines).expect("the exposition parses").samples
}

/// The value of the sample `name` whose labels include `labels` (0 when absent).
fn value(samples: &[prometheus_parse::Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    let found: Vec<f64> = samples
        .iter()
        .filter(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(|s| match &s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => *v,
            other => panic!("{name} is not a plain value: {other:?}"),
        })
        .collect();
    assert!(found.len() <= 1, "{name} {labels:?} matched {} samples", found.len());
    found.first().copied().unwrap_or(0.0)
}

#[tokio::test]
async fn metrics_count_exactly_what_a_scripted_workload_did() {
    const PUTS: usize = 7;
    const SIZE: usize = 3000;
    let dir = test_dir();
    let depot = Depot::start(&dir.path().join("archive"), &[]);
    let endpoint = depot.field("endpoint");
    let bucket = depot.field("bucket");
    let s3 = depot.client();
    for i in 0..PUTS {
        s3.put_object()
            .bucket(&bucket)
            .key(format!("dir/object-{i}"))
            .body(ByteStream::from(vec![b'x'; SIZE]))
            .send()
            .await
            .unwrap();
    }
    for i in 0..3 {
        let got = s3.get_object().bucket(&bucket).key(format!("dir/object-{i}")).send().await.unwrap();
        assert_eq!(got.body.collect().await.unwrap().into_bytes().len(), SIZE);
    }
    assert!(s3.get_object().bucket(&bucket).key("dir/nothing-here").send().await.is_err());
    let upload = s3.create_multipart_upload().bucket(&bucket).key("mp").send().await.unwrap();

    let response = get(&endpoint, "/_depot/metrics", &[]).await;
    assert_eq!(response.status, 200, "{}", response.text());
    let content_type = response.headers["content-type"].to_str().unwrap();
    assert!(content_type.starts_with("application/openmetrics-text"), "{content_type}");
    let text = response.text();
    assert!(text.ends_with("# EOF\n"), "{text}");
    let samples = scrape(&text);
    let ok = [("class", "ok")];
    let req = "depot_s3_requests_total";
    assert_eq!(value(&samples, req, &[("operation", "PutObject"), ok[0]]), PUTS as f64, "{text}");
    assert_eq!(value(&samples, req, &[("operation", "GetObject"), ok[0]]), 3.0, "{text}");
    assert_eq!(value(&samples, req, &[("operation", "GetObject"), ("class", "client_error")]), 1.0, "{text}");
    assert_eq!(value(&samples, req, &[("operation", "CreateMultipartUpload"), ok[0]]), 1.0, "{text}");
    assert_eq!(value(&samples, "depot_s3_objects_written_total", &[]), PUTS as f64);
    assert_eq!(value(&samples, "depot_s3_written_bytes_total", &[]), (PUTS * SIZE) as f64);
    assert_eq!(value(&samples, "depot_s3_objects_read_total", &[]), 3.0);
    assert_eq!(value(&samples, "depot_s3_sent_bytes_total", &[]), (3 * SIZE) as f64);
    assert_eq!(value(&samples, "depot_s3_multipart_uploads_open", &[]), 1.0);
    assert_eq!(value(&samples, "depot_registry_nodes", &[]), 0.0);
    assert!(value(&samples, "depot_s3_request_body_bytes_total", &[]) >= (PUTS * SIZE) as f64);
    assert!(value(&samples, "depot_connections_open", &[]) >= 1.0);
    assert_eq!(value(&samples, "depot_tls_handshake_failures_total", &[]), 0.0);
    assert_eq!(value(&samples, "depot_s3_request_duration_seconds_count", &[("operation", "PutObject")]), PUTS as f64);
    // Nothing secret or naming an object is exposed.
    for secret in [depot.field("secret_key"), depot.field("access_key"), depot.field("join_token"), bucket.clone()] {
        assert!(!text.contains(&secret), "the metrics expose {secret}");
    }
    assert!(!text.contains("object-"), "the metrics name an object key");

    s3.abort_multipart_upload().bucket(&bucket).key("mp").upload_id(upload.upload_id().unwrap()).send().await.unwrap();
    let samples = scrape(&get(&endpoint, "/_depot/metrics", &[]).await.text());
    assert_eq!(value(&samples, "depot_s3_multipart_uploads_open", &[]), 0.0);
}

#[tokio::test]
async fn health_is_open_and_the_status_api_needs_the_status_token() {
    let dir = test_dir();
    let depot = Depot::start(&dir.path().join("archive"), &[]);
    let endpoint = depot.field("endpoint");
    assert_eq!(get(&endpoint, "/_depot/healthz", &[]).await.status, 200);
    let ready = get(&endpoint, "/_depot/readyz", &[]).await;
    assert_eq!(ready.status, 200, "{}", ready.text());

    let status_url = depot.field("status_url");
    let token = status_url.split_once("?token=").expect("the status URL carries the token").1.to_owned();
    assert!(token.len() >= 32, "{status_url}");
    assert_ne!(token, depot.field("join_token"));
    assert_ne!(token, depot.field("secret_key"));
    assert_eq!(depot.field("metrics_url"), format!("{endpoint}/_depot/metrics"));

    for (path, headers) in [
        ("/_depot/", vec![]),
        ("/_depot/api/status", vec![]),
        ("/_depot/api/status?token=wrong", vec![]),
        ("/_depot/api/status", vec![("authorization", format!("Bearer {}", depot.field("join_token")))]),
    ] {
        let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let refused = get(&endpoint, path, &headers).await;
        assert_eq!(refused.status, 401, "{path} {headers:?}: {}", refused.text());
        assert!(refused.text().contains("status token"), "{}", refused.text());
    }
    let page = get(&endpoint, &format!("/_depot/?token={token}"), &[]).await;
    assert_eq!(page.status, 200);
    assert!(page.text().contains("<html"), "{}", page.text());
    let api = get(&endpoint, "/_depot/api/status", &[("authorization", &format!("Bearer {token}"))]).await;
    assert_eq!(api.status, 200, "{}", api.text());
    let json: serde_json::Value = serde_json::from_slice(&api.body).unwrap();
    assert_eq!(json["server"]["endpoint"], endpoint.as_str());
    assert!(json["nodes"].as_array().unwrap().is_empty());
    assert!(!api.text().contains(&depot.field("secret_key")));

    // `depot status` finds the server and its token through the archive.
    let out = std::process::Command::new(depot_tests::bin("depot"))
        .args(["status", "--json"])
        .arg(dir.path().join("archive"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["server"]["endpoint"], endpoint.as_str());
    // The token file goes away with the server.
    let token_file = dir.path().join("archive/.depot/status-token");
    assert!(token_file.exists());
    assert!(depot.stop().status.success());
    assert!(!token_file.exists());
}

/// A coordinator, three agents and a slow fetch on node3 of `backup-1` (8 files on node1 and
/// node2, served at `rate` bytes/s each, plus `1/lost.sst`, which no node holds).
struct Scene {
    cluster: Cluster,
    agents: Vec<Agent>,
    fetch: std::process::Child,
}

fn scene(dir: &std::path::Path, rate: &str) -> Scene {
    let cluster = Cluster::start(dir, "500ms");
    let files: Vec<DataFile> =
        (0..8).map(|i| DataFile::new(&format!("1/{i}_{}_default.sst", i * 7), 512 * 1024)).collect();
    for (i, f) in files.iter().enumerate() {
        f.write_to(&cluster.node_dir(if i % 2 == 0 { "node1" } else { "node2" }));
    }
    // The lost file comes first, so it is reported missing while the others still transfer.
    let mut listed = vec![DataFile::new("1/lost.sst", 4096)];
    listed.extend(files);
    let manifest = cluster.archive().join("backup-1/manifest.jsonl");
    std::fs::create_dir_all(manifest.parent().unwrap()).unwrap();
    write_jsonl(&manifest, &listed);
    let agents = vec![
        cluster.agent("node1", &["--max-rate", rate, "--metrics", "127.0.0.1:0"]),
        cluster.agent("node2", &["--max-rate", rate]),
        // node3 also serves an S3 view: the page shows it and the cluster's restore line.
        cluster.agent("node3", &["--s3-listen", "127.0.0.1:0", "--s3-prefix", "backup-1"]),
    ];
    let mut cmd = cluster.fetch_command(
        "node3",
        manifest.to_str().unwrap(),
        &["--concurrency", "2", "--retries", "2", "--task", "restore-1"],
    );
    let fetch = spawn_piped(&mut cmd);
    Scene { cluster, agents, fetch }
}

/// `depot status --json` on the scene's archive.
fn status_json(cluster: &Cluster) -> serde_json::Value {
    let out = std::process::Command::new(depot_tests::bin("depot"))
        .args(["status", "--json"])
        .arg(cluster.archive())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

fn node3_job(status: &serde_json::Value) -> Option<serde_json::Value> {
    status["jobs"].as_array()?.iter().find(|j| j["node_id"] == "node3").cloned()
}

#[tokio::test]
async fn depot_status_shows_nodes_coverage_a_running_job_and_its_missing_file() {
    let dir = test_dir();
    let mut scene = scene(dir.path(), "512KiB");
    let cluster = &scene.cluster;

    // Nodes, with versions from their heartbeats.
    assert!(
        eventually(Duration::from_secs(10), || {
            let s = status_json(cluster);
            s["nodes"].as_array().unwrap().iter().filter(|n| n["version"] != "").count() == 3
        }),
        "three nodes with versions: {}",
        status_json(cluster)
    );
    let s = status_json(cluster);
    let ids: Vec<&str> = s["nodes"].as_array().unwrap().iter().map(|n| n["node_id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["node1", "node2", "node3"]);
    assert!(s["nodes"][0]["address"].as_str().unwrap().starts_with("127.0.0.1:"));

    // The job runs, and its progress advances.
    let mut first = 0;
    assert!(
        eventually(Duration::from_secs(15), || {
            node3_job(&status_json(cluster)).is_some_and(|j| {
                first = j["bytes_done"].as_u64().unwrap();
                j["state"] == "fetching" && first > 0
            })
        }),
        "a running fetch on node3: {}",
        status_json(cluster)
    );
    let job = node3_job(&status_json(cluster)).unwrap();
    assert_eq!(
        (job["kind"].as_str(), job["task"].as_str(), job["backup"].as_str()),
        (Some("fetch"), Some("restore-1"), Some("backup-1"))
    );
    assert_eq!(job["files_needed"], 9);
    assert_eq!(job["bytes_needed"], 8 * 512 * 1024 + 4096);
    assert!(
        eventually(Duration::from_secs(10), || node3_job(&status_json(cluster))
            .is_some_and(|j| j["bytes_done"].as_u64().unwrap() > first)),
        "progress advances past {first}"
    );
    // The file nobody holds is named while the job still runs.
    assert!(
        eventually(Duration::from_secs(20), || node3_job(&status_json(cluster))
            .is_some_and(|j| j["missing"] == serde_json::json!(["1/lost.sst"]) && j["files_missing"] == 1)),
        "the missing file is named: {}",
        status_json(cluster)
    );

    // node1's metrics: ReadFile calls and bytes sent to node3, rate-limit waits.
    let metrics = scene.agents[0].metrics.clone().expect("node1 serves metrics");
    let text = get(&metrics, "/metrics", &[]).await.text();
    let samples = scrape(&text);
    assert!(
        value(&samples, "depot_agent_requests_total", &[("method", "ReadFile"), ("outcome", "ok")]) >= 1.0,
        "{text}"
    );
    assert!(value(&samples, "depot_agent_peer_sent_bytes_total", &[("peer", "node3")]) > 0.0, "{text}");
    assert!(value(&samples, "depot_agent_rate_limit_waits_total", &[]) > 0.0, "{text}");
    assert_eq!(get(&metrics, "/_depot/healthz", &[]).await.status, 200);
    assert_eq!(get(&metrics, "/_depot/readyz", &[]).await.status, 200);
    assert!(!text.contains("sst"), "agent metrics name no file: {text}");

    // The fetch ends incomplete (exit 1: a file is missing); the status says so, with coverage.
    let status = wait_timeout(&mut scene.fetch, Duration::from_secs(60)).expect("the fetch ends");
    assert_eq!(status.code(), Some(1));
    assert!(
        eventually(Duration::from_secs(5), || node3_job(&status_json(cluster))
            .is_some_and(|j| j["state"] == "incomplete")),
        "{}",
        status_json(cluster)
    );
    let s = status_json(cluster);
    let backup = &s["backups"][0];
    assert_eq!((backup["prefix"].as_str(), backup["files"].as_u64()), (Some("backup-1"), Some(9)));
    assert_eq!(backup["complete"], false, "the SSTs are on the nodes, not in the archive");
    let coverage = backup["coverage"].as_array().unwrap();
    assert_eq!(coverage.len(), 1, "{backup}");
    assert_eq!((coverage[0]["node_id"].as_str(), coverage[0]["files_held"].as_u64()), (Some("node3"), Some(8)));
    // The text form shows the same.
    let out =
        std::process::Command::new(depot_tests::bin("depot")).arg("status").arg(cluster.archive()).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    for needle in ["node1", "node2", "node3", "backup-1", "incomplete", "1/lost.sst", "holds 8 of 9 files"] {
        assert!(text.contains(needle), "{needle:?} in:\n{text}");
    }
}

/// Debian's `chromium` (installed by `scripts/install-chromium.sh`), or `DEPOT_CHROMIUM`.
fn chromium() -> Option<std::path::PathBuf> {
    if let Some(path) = std::env::var_os("DEPOT_CHROMIUM") {
        return Some(path.into());
    }
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| std::path::Path::new(d).join("chromium"))
        .find(|p| p.is_file())
}

/// Runs headless Chromium on `url` with a fresh profile, letting the page's scripts run for a
/// few seconds; returns its stdout (the DOM with `--dump-dom`).
fn browse(browser: &std::path::Path, dir: &std::path::Path, extra: &[&str], url: &str) -> String {
    let profile = tempfile::tempdir_in(dir).unwrap();
    let mut cmd = std::process::Command::new(browser);
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        "--virtual-time-budget=3000",
    ])
    .arg(format!("--user-data-dir={}", profile.path().display()))
    .args(extra)
    .arg(url)
    .stdin(std::process::Stdio::null())
    .stdout(std::process::Stdio::piped())
    .stderr(std::process::Stdio::piped());
    let child = cmd.spawn().expect("chromium starts");
    let run = depot_tests::agents::finish(child, Duration::from_secs(90), std::time::Instant::now());
    assert_eq!(run.code, Some(0), "chromium failed: {}", run.stderr);
    run.stdout
}

/// The `data-bytes-done` of node3's job on a dumped page.
fn progress_on_page(dom: &str) -> Option<u64> {
    let row = dom.split("data-job=\"node3/restore-1\"").nth(1)?;
    row.split("data-bytes-done=\"").nth(1)?.split('"').next()?.parse().ok()
}

#[tokio::test]
async fn the_status_page_in_a_real_browser_shows_nodes_progress_and_the_missing_file() {
    let Some(browser) = chromium() else {
        eprintln!("\n*** SKIPPED: the status page browser test: no `chromium` (run scripts/install-chromium.sh) ***\n");
        return;
    };
    let dir = test_dir();
    let mut scene = scene(dir.path(), "96KiB");
    let cluster = &scene.cluster;
    let status_url = cluster.depot.field("status_url");
    assert!(
        eventually(Duration::from_secs(15), || node3_job(&status_json(cluster))
            .is_some_and(|j| j["state"] == "fetching" && j["bytes_done"].as_u64() > Some(0))),
        "the fetch runs: {}",
        status_json(cluster)
    );

    // What a person sees: three node rows and the job's progress, which advances.
    let first = browse(&browser, dir.path(), &["--dump-dom"], &status_url);
    for node in ["node1", "node2", "node3"] {
        assert!(first.contains(&format!("data-node=\"{node}\"")), "no row for {node}:\n{first}");
    }
    let before = progress_on_page(&first).unwrap_or_else(|| panic!("no progress figure for node3's job:\n{first}"));
    let mut after = before;
    assert!(
        eventually(Duration::from_secs(30), || {
            after = progress_on_page(&browse(&browser, dir.path(), &["--dump-dom"], &status_url)).unwrap_or(0);
            after > before
        }),
        "the progress figure advances from {before}"
    );
    // The file no node holds is named on the page.
    let mut page = String::new();
    assert!(
        eventually(Duration::from_secs(30), || {
            page = browse(&browser, dir.path(), &["--dump-dom"], &status_url);
            page.contains("missing (held by no live node): 1/lost.sst")
        }),
        "the missing file is named:\n{page}"
    );
    assert!(page.contains("backup-1"), "{page}");
    // node3's S3 view, and the restore line (the only view agrees with itself; the nodes
    // without one are named).
    assert!(page.contains("data-view=\"node3\""), "{page}");
    let command = page.split("id=\"restore-command\">").nth(1).and_then(|c| c.split("</pre>").next());
    let command = command.unwrap_or_else(|| panic!("no restore command on the page:\n{page}"));
    assert!(command.starts_with("br restore full --pd \"$PD_ADDR\" --storage \"s3://"), "{command}");
    assert!(page.contains("without an S3 view: node1, node2"), "{page}");
    // A screenshot for people (and, with DEPOT_SCREENSHOT_TO, for the README).
    let shot = dir.path().join("status-page.png");
    browse(
        &browser,
        dir.path(),
        &[&format!("--screenshot={}", shot.display()), "--window-size=1280,900", "--hide-scrollbars"],
        &status_url,
    );
    let png = std::fs::read(&shot).expect("a screenshot was written");
    assert!(png.starts_with(b"\x89PNG") && png.len() > 10_000, "{} bytes", png.len());
    if let Some(to) = std::env::var_os("DEPOT_SCREENSHOT_TO") {
        std::fs::copy(&shot, to).unwrap();
    }

    // Without the token (or with a wrong one): refused, nothing shown.
    let endpoint = cluster.depot.field("endpoint");
    for url in [format!("{endpoint}/_depot/"), format!("{endpoint}/_depot/?token=wrong")] {
        let refused = browse(&browser, dir.path(), &["--dump-dom"], &url);
        assert!(refused.contains("status token needed"), "{url}:\n{refused}");
        assert!(!refused.contains("node1"), "{url}:\n{refused}");
    }
    let _ = scene.fetch.kill();
    let _ = scene.fetch.wait();
    drop(scene.agents);
}
