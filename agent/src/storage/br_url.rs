//! BR's storage URLs mapped onto `object_store`'s builders — the one place that knows them.
//!
//! - `s3://BUCKET/PREFIX?endpoint=URL&force-path-style=true&region=R` (BR's query keys, `-` or
//!   `_`); credentials from `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY` / `AWS_SESSION_TOKEN`
//!   (as for BR and TiKV, so they never sit in a URL that ends up in a log), or BR's
//!   `access-key` / `secret-access-key` query keys.
//! - `gcs://BUCKET/PREFIX` or `gs://...` with `credentials-file=PATH` (else the usual
//!   `GOOGLE_*` environment).
//! - `azure://CONTAINER/PREFIX` or `azblob://...` with `account-name=` / `account-key=` (else
//!   `AZURE_STORAGE_ACCOUNT` / `AZURE_STORAGE_KEY`).
//! - `local:///DIR`, `file:///DIR` or a plain path: a local directory.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use object_store::aws::{AmazonS3Builder, Checksum};
use object_store::azure::MicrosoftAzureBuilder;
use object_store::gcp::GoogleCloudStorageBuilder;
use object_store::{BackoffConfig, Certificate, ClientOptions, RetryConfig};

use super::StoreError;
use crate::trust::ExtraCa;

/// Where a URL points.
pub(super) enum Target {
    /// A local directory.
    Local(PathBuf),
    /// A bucket (or container) prefix in a cloud store.
    Remote {
        /// The client.
        store: Arc<dyn object_store::ObjectStore>,
        /// `scheme://bucket`, for messages.
        display: String,
        /// The key prefix inside the bucket (no leading or trailing `/`).
        prefix: String,
    },
}

/// Parses `url` and builds its store. `ca` replaces the system roots for `https://`
/// endpoints (Depot's `bundle.pem` holds both).
pub(super) fn open(url: &str, ca: Option<&ExtraCa>) -> Result<Target, StoreError> {
    let bad = |reason: String| StoreError::BadUrl { url: redact(url), reason };
    let Some((scheme, _)) = url.split_once("://") else {
        return local(url, url);
    };
    if matches!(scheme, "local" | "file") {
        return local(url, &url[scheme.len() + 3..]);
    }
    let parsed = url::Url::parse(url).map_err(|err| bad(err.to_string()))?;
    let bucket = parsed.host_str().unwrap_or_default().to_owned();
    if bucket.is_empty() {
        return Err(bad(format!("no bucket (expected {scheme}://BUCKET/PREFIX)")));
    }
    let prefix = percent_encoding_free_path(&parsed);
    // BR writes query keys with '-' or '_'; url's query_pairs percent-decodes.
    let query: Vec<(String, String)> =
        parsed.query_pairs().map(|(k, v)| (k.replace('_', "-"), v.into_owned())).collect();
    let get = |key: &str| query.iter().rev().find(|(k, _)| k == key).map(|(_, v)| v.clone()).filter(|v| !v.is_empty());
    let env = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    let options = client_options(ca)?;
    let store: Arc<dyn object_store::ObjectStore> = match scheme {
        "s3" => {
            let path_style = match get("force-path-style").as_deref() {
                None | Some("true" | "1") => true,
                Some("false" | "0") => false,
                Some(_) => return Err(bad("force-path-style must be true or false".into())),
            };
            let (access, secret) = match (env("AWS_ACCESS_KEY_ID"), env("AWS_SECRET_ACCESS_KEY")) {
                (Some(a), Some(s)) => (a, s),
                _ => match (get("access-key"), get("secret-access-key")) {
                    (Some(a), Some(s)) => (a, s),
                    _ => return Err(StoreError::NoCredentials { url: redact(url) }),
                },
            };
            let mut builder = AmazonS3Builder::new()
                .with_bucket_name(&bucket)
                .with_region(get("region").unwrap_or_else(|| "us-east-1".into()))
                .with_access_key_id(access)
                .with_secret_access_key(secret)
                .with_virtual_hosted_style_request(!path_style)
                // Every PUT and part carries x-amz-checksum-crc64nvme: the archive checks the
                // bytes it received, as the AWS SDKs' default checksums do. CRC64 costs the
                // client and the archive next to nothing; a SHA-256 here cost both a pass over
                // every byte (the archive two: checksum and signed payload).
                .with_checksum_algorithm(Checksum::CRC64NVME)
                // The payload goes unsigned (`UNSIGNED-PAYLOAD`, headers still signed) where
                // nobody can change it on the way: over TLS or loopback, as the AWS SDKs do over
                // TLS. Signing it costs a SHA-256 of every byte on both ends; collect checks
                // size and SHA-256 of what it sends against the manifest itself.
                .with_unsigned_payload(payload_protected(get("endpoint").as_deref()))
                .with_retry(retry())
                .with_client_options(options);
            if let Some(token) = env("AWS_SESSION_TOKEN") {
                builder = builder.with_token(token);
            }
            if let Some(endpoint) = get("endpoint") {
                if !(endpoint.starts_with("http://") || endpoint.starts_with("https://")) {
                    return Err(bad("endpoint must start with http:// or https://".into()));
                }
                builder = builder.with_allow_http(endpoint.starts_with("http://")).with_endpoint(endpoint);
            }
            Arc::new(builder.build().map_err(|err| bad(err.to_string()))?)
        }
        "gcs" | "gs" => {
            let mut builder = GoogleCloudStorageBuilder::from_env()
                .with_bucket_name(&bucket)
                .with_retry(retry())
                .with_client_options(options);
            if let Some(file) = get("credentials-file") {
                builder = builder.with_service_account_path(file);
            }
            Arc::new(builder.build().map_err(|err| bad(err.to_string()))?)
        }
        "azure" | "azblob" => {
            let mut builder = MicrosoftAzureBuilder::from_env()
                .with_container_name(&bucket)
                .with_retry(retry())
                .with_client_options(options);
            if let Some(account) = get("account-name") {
                builder = builder.with_account(account);
            }
            if let Some(key) = get("account-key") {
                builder = builder.with_access_key(key);
            }
            Arc::new(builder.build().map_err(|err| bad(err.to_string()))?)
        }
        other => {
            return Err(bad(format!("unsupported scheme {other}://; use s3://, gcs://, azure://, local:// or a path")));
        }
    };
    Ok(Target::Remote { store, display: format!("{scheme}://{bucket}"), prefix })
}

/// Whether the body of a request to `endpoint` (AWS itself when `None`) cannot be changed on
/// the way: HTTPS, or plain HTTP to a loopback address.
pub(super) fn payload_protected(endpoint: Option<&str>) -> bool {
    let Some(endpoint) = endpoint else { return true };
    let Ok(url) = url::Url::parse(endpoint) else { return false };
    match (url.scheme(), url.host()) {
        ("https", _) => true,
        (_, Some(url::Host::Ipv4(ip))) => ip.is_loopback(),
        (_, Some(url::Host::Ipv6(ip))) => ip.is_loopback(),
        (_, Some(url::Host::Domain(name))) => name.eq_ignore_ascii_case("localhost"),
        (_, None) => false,
    }
}

fn local(url: &str, path: &str) -> Result<Target, StoreError> {
    if path.is_empty() {
        return Err(StoreError::BadUrl { url: url.to_owned(), reason: "no path".into() });
    }
    Ok(Target::Local(PathBuf::from(path)))
}

/// The URL's path, decoded, without surrounding slashes.
fn percent_encoding_free_path(url: &url::Url) -> String {
    let segments: Vec<String> = url
        .path_segments()
        .into_iter()
        .flatten()
        .filter(|s| !s.is_empty())
        .map(|s| percent_encoding::percent_decode_str(s).decode_utf8_lossy().into_owned())
        .collect();
    segments.join("/")
}

/// Few, quick retries: the callers have their own (a re-run resumes), and a store that
/// answers 507 or 403 should be reported in seconds, not minutes.
fn retry() -> RetryConfig {
    RetryConfig {
        backoff: BackoffConfig {
            init_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(2),
            base: 2.0,
        },
        max_retries: 3,
        retry_timeout: Duration::from_secs(30),
    }
}

fn client_options(ca: Option<&ExtraCa>) -> Result<ClientOptions, StoreError> {
    // reqwest is built without a default crypto provider: use ring, as the rest of Depot does.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut options = ClientOptions::new()
        .with_connect_timeout(Duration::from_secs(5))
        // Large objects stream for minutes; a stalled read is caught by the read timeout.
        .with_timeout_disabled()
        .with_read_timeout(Duration::from_secs(60))
        .with_allow_http2();
    if let Some(ca) = ca {
        let trust = |reason: String| StoreError::Trust(format!("{}: {reason}", ca.source.display()));
        let certs = Certificate::from_pem_bundle(&ca.pem).map_err(|err| trust(err.to_string()))?;
        if certs.is_empty() {
            return Err(trust("holds no PEM certificate".into()));
        }
        for cert in certs {
            options = options.with_root_certificate(cert);
        }
        // As SSL_CERT_FILE does for curl and TiKV: the file replaces the system roots.
        options = options.with_no_system_certificates(true);
    }
    Ok(options)
}

/// The URL with any secret query parameter blanked, for messages.
pub(super) fn redact(url: &str) -> String {
    let Some((head, query)) = url.split_once('?') else {
        return url.to_owned();
    };
    let query: Vec<String> = query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((k, _)) if k.contains("secret") || k.contains("token") || k.contains("key") => {
                format!("{k}=<redacted>")
            }
            _ => pair.to_owned(),
        })
        .collect();
    format!("{head}?{}", query.join("&"))
}
