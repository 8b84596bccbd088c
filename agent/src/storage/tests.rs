use super::*;

#[test]
fn br_urls_map_onto_the_builders() {
    let url = "s3://depot-abc/backups/full?endpoint=http%3A%2F%2F127.0.0.1%3A9000&force-path-style=true&region=eu-1&provider=minio&access-key=AK&secret-access-key=SK";
    let store = Storage::open(url, &StoreOptions::default()).unwrap();
    assert_eq!(store.describe("backupmeta"), "s3://depot-abc/backups/full/backupmeta");
    assert_eq!(store.at("n1").describe("x"), "s3://depot-abc/backups/full/n1/x");
    assert!(store.local_dir().is_none());

    let plain = "s3://b/?endpoint=https://h:1&force_path_style=false&access_key=AK&secret_access_key=SK";
    assert_eq!(Storage::open(plain, &StoreOptions::default()).unwrap().describe("k"), "s3://b/k");

    for (bad, needle) in [
        ("s3:///x?access-key=a&secret-access-key=b", "no bucket"),
        ("s3://b/x?endpoint=ftp://h&access-key=a&secret-access-key=b", "http:// or https://"),
        ("s3://b/x?force-path-style=maybe&access-key=a&secret-access-key=b", "true or false"),
        ("hdfs://nn/x", "unsupported scheme"),
    ] {
        let err = Storage::open(bad, &StoreOptions::default()).unwrap_err();
        assert!(err.to_string().contains(needle), "{bad}: {err}");
    }
    assert_eq!(
        br_url::redact("s3://b/p?secret-access-key=hunter2&region=r"),
        "s3://b/p?secret-access-key=<redacted>&region=r"
    );
}

#[test]
fn gcs_and_azure_urls_open() {
    let gcs = Storage::open("gcs://bucket/some/prefix", &StoreOptions::default());
    // Without credentials GCS may refuse at build time; when it builds, keys are placed right.
    if let Ok(store) = gcs {
        assert_eq!(store.describe("backupmeta"), "gcs://bucket/some/prefix/backupmeta");
    }
    let azure = Storage::open("azure://container/p?account-name=acct&account-key=a2V5", &StoreOptions::default())
        .expect("azure URL with an account and key");
    assert_eq!(azure.describe("f.sst"), "azure://container/p/f.sst");
}

#[tokio::test]
async fn local_storage_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let store = Storage::open(&format!("local://{}", dir.path().display()), &StoreOptions::default()).unwrap();
    store.put("a/b.cpt", b"one".to_vec()).await.unwrap();
    store.put("a/c.cpt", b"two".to_vec()).await.unwrap();
    store.put("z", b"three".to_vec()).await.unwrap();
    assert_eq!(store.get("a/b.cpt").await.unwrap(), b"one");
    let listed = store.list("a/").await.unwrap();
    assert_eq!(listed.iter().map(|o| o.key.as_str()).collect::<Vec<_>>(), ["a/b.cpt", "a/c.cpt"]);
    assert_eq!(store.list("a/b").await.unwrap().len(), 1);
    assert_eq!(store.list("").await.unwrap().len(), 3, "the .depot/ state dir is not listed");
    assert!(store.list("nothing/here/").await.unwrap().is_empty());
    assert_eq!(store.head("z").await.unwrap().unwrap().size, 5);
    assert!(store.head("missing").await.unwrap().is_none());
    store.delete("a/b.cpt").await.unwrap();
    store.delete("a/b.cpt").await.unwrap();
    assert!(matches!(store.get("a/b.cpt").await, Err(StoreError::NotFound { .. })));
    assert!(matches!(store.get("../etc/passwd").await, Err(StoreError::BadKey { .. })));
    assert!(store.at("a").get("c.cpt").await.is_ok());

    // Create-only writes refuse an existing object and leave it alone.
    store.put_new("lock", b"mine".to_vec()).await.unwrap();
    assert!(matches!(store.put_new("lock", b"theirs".to_vec()).await, Err(StoreError::Exists { .. })));
    assert_eq!(store.get("lock").await.unwrap(), b"mine");

    // Pieces appear only when finished; an aborted upload leaves nothing.
    let mut upload = store.upload("big/file.sst", 6, None).await.unwrap();
    upload.write(Bytes::from_static(b"abc")).await.unwrap();
    assert!(store.head("big/file.sst").await.unwrap().is_none());
    upload.write(Bytes::from_static(b"def")).await.unwrap();
    upload.finish().await.unwrap();
    assert_eq!(store.get("big/file.sst").await.unwrap(), b"abcdef");
    let mut stream = store.get_stream("big/file.sst", 2).await.unwrap();
    let mut tail = Vec::new();
    while let Some(chunk) = stream.next().await {
        tail.extend_from_slice(&chunk.unwrap());
    }
    assert_eq!(tail, b"cdef");
    let upload = store.upload("gone.sst", 3, None).await.unwrap();
    upload.abort().await;
    assert!(store.head("gone.sst").await.unwrap().is_none());
    assert!(std::fs::read_dir(dir.path().join(".depot/tmp")).unwrap().next().is_none(), "no temp file left");
}

#[test]
fn s3_without_credentials_says_what_to_export() {
    // Only meaningful when the test environment has no AWS credentials.
    if std::env::var_os("AWS_ACCESS_KEY_ID").is_some() {
        return;
    }
    let err = Storage::open("s3://b/p?endpoint=http://127.0.0.1:1", &StoreOptions::default()).unwrap_err();
    assert!(err.to_string().contains("AWS_ACCESS_KEY_ID"), "{err}");
}

#[test]
fn payloads_go_unsigned_only_where_nobody_can_change_them() {
    for (endpoint, unsigned) in [
        (None, true),
        (Some("https://s3.example.com"), true),
        (Some("https://10.0.0.5:9000"), true),
        (Some("http://127.0.0.1:9000"), true),
        (Some("http://127.8.9.10:9000"), true),
        (Some("http://[::1]:9000"), true),
        (Some("http://localhost:9000"), true),
        (Some("http://10.0.0.5:9000"), false),
        (Some("http://archive.example.com"), false),
        (Some("not a url"), false),
    ] {
        assert_eq!(br_url::payload_protected(endpoint), unsigned, "{endpoint:?}");
    }
}
