//! The URLs Depot prints: the `s3://` storage URL nodes and BR use, and `br://` parsing.
//!
//! BR and TiKV take an S3 backend as `s3://BUCKET/PREFIX?endpoint=...&force-path-style=true&
//! provider=...&region=...`. Credentials never go in it (BR would store the URL in its
//! backupmeta); they travel as `AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

/// A `host:port` clients reach the server at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Advertised {
    /// Host name or IP address (no brackets).
    pub host: String,
    /// Port.
    pub port: u16,
}

/// A malformed `--advertise` value or archive argument.
#[derive(Debug, thiserror::Error)]
pub enum UrlError {
    /// `--advertise` is not `HOST:PORT`.
    #[error("--advertise {0:?} is not HOST:PORT (e.g. 10.0.0.5:9000 or backup.local:9000)")]
    Advertise(String),
    /// A `br://` URL with a host part.
    #[error("{0:?}: br:// URLs name a local directory; write br:///absolute/path (three slashes)")]
    BrHost(String),
    /// A URL scheme Depot does not serve.
    #[error("{0:?}: the archive is a directory path or a br:///path URL")]
    Scheme(String),
}

impl Advertised {
    /// Parses `HOST:PORT` (`[v6]:PORT` for IPv6).
    ///
    /// # Errors
    /// [`UrlError::Advertise`].
    pub fn parse(value: &str) -> Result<Self, UrlError> {
        let bad = || UrlError::Advertise(value.to_owned());
        if let Ok(addr) = value.parse::<SocketAddr>() {
            return Ok(Self { host: addr.ip().to_string(), port: addr.port() });
        }
        let (host, port) = value.rsplit_once(':').ok_or_else(bad)?;
        let port = port.parse().map_err(|_| bad())?;
        let valid_name = !host.is_empty()
            && host.split('.').all(|l| !l.is_empty() && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'));
        if !valid_name {
            return Err(bad());
        }
        Ok(Self { host: host.to_owned(), port })
    }

    /// From a bound socket address; an unspecified address (0.0.0.0) is advertised as
    /// 127.0.0.1, reachable from this machine only.
    pub fn from_socket(addr: SocketAddr) -> Self {
        let ip = if addr.ip().is_unspecified() { IpAddr::from([127, 0, 0, 1]) } else { addr.ip() };
        Self { host: ip.to_string(), port: addr.port() }
    }

    /// Whether only this machine can reach it.
    pub fn is_loopback(&self) -> bool {
        self.host == "localhost" || self.host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
    }

    /// `scheme://host:port`, with brackets around an IPv6 address.
    pub fn url(&self, tls: bool) -> String {
        let scheme = if tls { "https" } else { "http" };
        if self.host.contains(':') {
            format!("{scheme}://[{}]:{}", self.host, self.port)
        } else {
            format!("{scheme}://{}:{}", self.host, self.port)
        }
    }
}

/// The storage URL of a bucket at an endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StorageUrl {
    /// The bucket.
    pub bucket: String,
    /// `scheme://host:port`.
    pub endpoint: String,
    /// The region clients sign for.
    pub region: String,
}

impl fmt::Display for StorageUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "s3://{}/?endpoint={}&force-path-style=true&provider=minio&region={}",
            self.bucket, self.endpoint, self.region
        )
    }
}

/// The archive directory named by `DIR` or `br:///DIR`.
///
/// # Errors
/// [`UrlError`] for `br://host/...` or another scheme.
pub fn archive_path(arg: &str) -> Result<PathBuf, UrlError> {
    if let Some(rest) = arg.strip_prefix("br://") {
        return if rest.starts_with('/') { Ok(PathBuf::from(rest)) } else { Err(UrlError::BrHost(arg.to_owned())) };
    }
    if let Some((scheme, _)) = arg.split_once("://")
        && scheme.bytes().all(|b| b.is_ascii_alphanumeric())
    {
        return Err(UrlError::Scheme(arg.to_owned()));
    }
    Ok(PathBuf::from(arg))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advertise_values() {
        assert_eq!(Advertised::parse("10.0.0.5:9000").unwrap(), Advertised { host: "10.0.0.5".into(), port: 9000 });
        assert_eq!(Advertised::parse("[::1]:9").unwrap().url(true), "https://[::1]:9");
        assert_eq!(Advertised::parse("backup.local:80").unwrap().url(false), "http://backup.local:80");
        assert!(Advertised::parse("backup.local").is_err());
        assert!(Advertised::parse("bad host:1").is_err());
        assert!(Advertised::parse("localhost:1").unwrap().is_loopback());
        assert!(!Advertised::parse("10.1.1.1:1").unwrap().is_loopback());
        assert_eq!(Advertised::from_socket("0.0.0.0:5".parse().unwrap()).host, "127.0.0.1");
    }

    #[test]
    fn storage_url_has_no_credentials_and_names_the_region() {
        let url = StorageUrl { bucket: "depot-x".into(), endpoint: "http://127.0.0.1:9".into(), region: "eu-1".into() };
        assert_eq!(
            url.to_string(),
            "s3://depot-x/?endpoint=http://127.0.0.1:9&force-path-style=true&provider=minio&region=eu-1"
        );
    }

    #[test]
    fn br_urls_translate_to_directories() {
        assert_eq!(archive_path("br:///srv/backup").unwrap(), PathBuf::from("/srv/backup"));
        assert_eq!(archive_path("relative/dir").unwrap(), PathBuf::from("relative/dir"));
        assert!(archive_path("br://host/srv").unwrap_err().to_string().contains("three slashes"));
        assert!(archive_path("s3://bucket/x").is_err());
    }
}
