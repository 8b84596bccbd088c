//! Manifest parsing against protobuf bytes built with prost, as BR would write them.

use super::*;
use crate::storage::StoreOptions;

fn file(name: &str, content: &[u8]) -> brpb::File {
    brpb::File {
        name: name.into(),
        sha256: Sha256::digest(content).to_vec(),
        size: content.len() as u64,
        cf: "default".into(),
        total_kvs: 3,
        ..Default::default()
    }
}

fn meta_v1(files: Vec<brpb::File>) -> brpb::BackupMeta {
    brpb::BackupMeta {
        cluster_id: 6_900_000_000_000_000_001,
        cluster_version: "\"8.5.0\"".into(),
        files,
        end_version: 449_000_000_000_000_000,
        br_version: "BR\nRelease Version: v8.5.0".into(),
        version: 0,
        ..Default::default()
    }
}

/// A directory holding `backupmeta` (and whatever else), as a store and a source.
struct Backup {
    dir: tempfile::TempDir,
}

impl Backup {
    fn new() -> Self {
        Self { dir: tempfile::tempdir().unwrap() }
    }

    fn write(&self, name: &str, bytes: &[u8]) {
        std::fs::write(self.dir.path().join(name), bytes).unwrap();
    }

    async fn load(&self, key: Option<&CrypterKey>) -> Result<Manifest, ManifestError> {
        let source = ManifestSource::parse(&self.dir.path().display().to_string(), &StoreOptions::default()).unwrap();
        source.load(key).await
    }
}

#[tokio::test]
async fn reads_a_v1_backupmeta() {
    let backup = Backup::new();
    let meta = meta_v1(vec![
        file("1_2_3_write.sst", b"w"),
        file("1_2_3_default.sst", b"dd"),
        // BR lists nothing twice, but a repeated identical entry is harmless.
        file("1_2_3_write.sst", b"w"),
    ]);
    backup.write(BACKUPMETA, &meta.encode_to_vec());
    let manifest = backup.load(None).await.unwrap();
    assert_eq!(manifest.format, Format::BrV1);
    assert_eq!(manifest.end_version, Some(449_000_000_000_000_000));
    let names: Vec<_> = manifest.files.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(names, ["1_2_3_write.sst", "1_2_3_default.sst"]);
    assert_eq!(manifest.files[1].size, 2);
    assert_eq!(manifest.files[1].sha256.unwrap(), Sha256::digest(b"dd").as_slice());
    assert_eq!(manifest.total_bytes(), 3);
}

#[tokio::test]
async fn reads_a_v2_backupmeta_with_nested_indexes() {
    let backup = Backup::new();
    let leaf1 =
        brpb::MetaFile { data_files: vec![file("a/1.sst", b"one"), file("a/2.sst", b"two")], ..Default::default() };
    let leaf2 = brpb::MetaFile { data_files: vec![file("b/3.sst", b"three")], ..Default::default() };
    let index_entry = |name: &str, m: &brpb::MetaFile| {
        let bytes = m.encode_to_vec();
        backup.write(name, &bytes);
        brpb::File {
            name: name.into(),
            sha256: Sha256::digest(&bytes).to_vec(),
            size: bytes.len() as u64,
            ..Default::default()
        }
    };
    let e1 = index_entry("backupmeta.datafile.000000001", &leaf1);
    let e2 = index_entry("backupmeta.datafile.000000002", &leaf2);
    // One more level: an intermediate index naming the second leaf.
    let mid = brpb::MetaFile { meta_files: vec![e2], ..Default::default() };
    let e_mid = index_entry("backupmeta.metafile.000000003", &mid);
    let meta = brpb::BackupMeta {
        version: 1,
        file_index: Some(brpb::MetaFile { meta_files: vec![e1, e_mid], data_files: vec![] }),
        ..meta_v1(vec![])
    };
    backup.write(BACKUPMETA, &meta.encode_to_vec());
    let manifest = backup.load(None).await.unwrap();
    assert_eq!(manifest.format, Format::BrV2);
    let names: Vec<_> = manifest.files.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(names, ["a/1.sst", "a/2.sst", "b/3.sst"]);

    // The manifest can also be named directly.
    let direct =
        ManifestSource::parse(&backup.dir.path().join(BACKUPMETA).display().to_string(), &StoreOptions::default())
            .unwrap();
    assert_eq!(direct.load(None).await.unwrap().files.len(), 3);

    // A damaged index object is caught by its recorded digest.
    backup.write("backupmeta.datafile.000000002", b"\x0a\x00garbage");
    let err = backup.load(None).await.unwrap_err();
    assert!(matches!(err, ManifestError::IndexChecksum { .. }), "{err}");
    assert!(err.to_string().contains("backupmeta.datafile.000000002"), "{err}");

    // A missing index object is named.
    std::fs::remove_file(backup.dir.path().join("backupmeta.datafile.000000002")).unwrap();
    let err = backup.load(None).await.unwrap_err();
    assert!(err.to_string().contains("backupmeta.datafile.000000002"), "{err}");
}

#[tokio::test]
async fn truncated_and_foreign_backupmetas_are_named_errors() {
    let backup = Backup::new();
    let bytes = meta_v1((0..50).map(|i| file(&format!("{i}.sst"), b"x")).collect()).encode_to_vec();
    for cut in [bytes.len() - 1, bytes.len() / 2, 40] {
        backup.write(BACKUPMETA, &bytes[..cut]);
        let err = backup.load(None).await.unwrap_err();
        assert!(matches!(err, ManifestError::Truncated { .. }), "cut at {cut}: {err}");
        assert!(err.to_string().contains("backupmeta"), "{err}");
        assert!(err.to_string().contains("truncated"), "{err}");
    }
    backup.write(BACKUPMETA, b"");
    assert!(matches!(backup.load(None).await.unwrap_err(), ManifestError::Empty { .. }));
    backup.write(BACKUPMETA, b"\x0f\xff\xfe not protobuf");
    let err = backup.load(None).await.unwrap_err();
    assert!(matches!(err, ManifestError::NotPlaintext { .. }), "{err}");
    // Every prefix of a real backupmeta yields an error or a manifest, never a panic.
    for cut in 0..bytes.len() {
        backup.write(BACKUPMETA, &bytes[..cut]);
        let _ = backup.load(None).await;
    }
}

#[tokio::test]
async fn an_encrypted_backupmeta_needs_its_key() {
    let backup = Backup::new();
    let key = CrypterKey::from_hex("0123456789abcdef0123456789abcdef").unwrap();
    // v2 with an encrypted data file index, laid out as BR's MetaWriter does.
    let leaf = brpb::MetaFile { data_files: vec![file("t/1.sst", b"secret rows")], ..Default::default() };
    let plain_leaf = leaf.encode_to_vec();
    let iv = [9u8; 16];
    let mut sealed_leaf = plain_leaf.clone();
    assert!(key.apply(&iv, &mut sealed_leaf));
    backup.write("backupmeta.datafile.000000001", &sealed_leaf);
    let meta = brpb::BackupMeta {
        version: 1,
        file_index: Some(brpb::MetaFile {
            meta_files: vec![brpb::File {
                name: "backupmeta.datafile.000000001".into(),
                sha256: Sha256::digest(&plain_leaf).to_vec(),
                size: plain_leaf.len() as u64,
                cipher_iv: iv.to_vec(),
                ..Default::default()
            }],
            data_files: vec![],
        }),
        ..meta_v1(vec![])
    };
    backup.write(BACKUPMETA, &key.encrypt_prefixed([3; 16], &meta.encode_to_vec()));

    let err = backup.load(None).await.unwrap_err();
    assert!(matches!(err, ManifestError::NotPlaintext { .. }), "{err}");
    assert!(err.to_string().contains("--crypter-key"), "{err}");

    let manifest = backup.load(Some(&key)).await.unwrap();
    assert_eq!(manifest.files.len(), 1);
    assert_eq!(manifest.files[0].name, "t/1.sst");

    let wrong = CrypterKey::from_hex("ffffffffffffffffffffffffffffffff").unwrap();
    let err = backup.load(Some(&wrong)).await.unwrap_err();
    assert!(matches!(err, ManifestError::WrongKey { .. }), "{err}");

    // A plaintext top level whose index entries carry IVs: encrypted, key missing.
    backup.write(BACKUPMETA, &meta.encode_to_vec());
    let err = backup.load(None).await.unwrap_err();
    assert!(matches!(err, ManifestError::Encrypted { .. }), "{err}");
}

#[tokio::test]
async fn reads_json_lines_and_refuses_bad_lines() {
    let backup = Backup::new();
    let sha = hex::encode(Sha256::digest(b"abc"));
    backup.write(
        "manifest.jsonl",
        format!(
            "{{\"name\":\"x/a.bin\",\"size\":3,\"sha256\":\"{sha}\"}}\n\n# comment\n{{\"name\":\"b\",\"size\":3,\"sha256\":\"{sha}\",\"extra\":1}}\n"
        )
        .as_bytes(),
    );
    let source = ManifestSource::parse(
        &backup.dir.path().join("manifest.jsonl").display().to_string(),
        &StoreOptions::default(),
    )
    .unwrap();
    let manifest = source.load(None).await.unwrap();
    assert_eq!(manifest.format, Format::JsonLines);
    assert_eq!(manifest.files.len(), 2);

    for (content, needle) in [
        (format!("{{\"name\":\"a\",\"size\":3,\"sha256\":\"{sha}\"}}\n{{\"name\":\"b\"\n"), ":2:"),
        ("{\"name\":\"a\",\"size\":3,\"sha256\":\"abc\"}".to_owned(), "64 hex digits"),
        (format!("{{\"name\":\"../etc/passwd\",\"size\":3,\"sha256\":\"{sha}\"}}"), "'..'"),
        (format!("{{\"name\":\"/abs\",\"size\":3,\"sha256\":\"{sha}\"}}"), "starts with '/'"),
        (
            format!(
                "{{\"name\":\"a\",\"size\":3,\"sha256\":\"{sha}\"}}\n{{\"name\":\"a\",\"size\":4,\"sha256\":\"{sha}\"}}"
            ),
            "twice",
        ),
        (format!("{{\"name\":\"a\",\"sha256\":\"{sha}\"}}"), "size"),
    ] {
        backup.write("manifest.jsonl", content.as_bytes());
        let err = source.load(None).await.unwrap_err();
        let text = err.to_string();
        assert!(text.contains("manifest.jsonl"), "{text}");
        assert!(text.contains(needle), "{needle}: {text}");
    }
}

#[tokio::test]
async fn unsafe_names_in_a_backupmeta_are_refused() {
    let backup = Backup::new();
    backup.write(BACKUPMETA, &meta_v1(vec![file("../../outside.sst", b"x")]).encode_to_vec());
    let err = backup.load(None).await.unwrap_err();
    assert!(matches!(err, ManifestError::BadEntry { .. }), "{err}");
    assert!(err.to_string().contains("outside.sst"), "{err}");
}

#[tokio::test]
async fn a_directory_without_backupmeta_says_what_it_expected() {
    let backup = Backup::new();
    let err = backup.load(None).await.unwrap_err();
    assert!(matches!(err, ManifestError::NotFound { .. }), "{err}");
    assert!(err.to_string().contains("backupmeta"), "{err}");
}
