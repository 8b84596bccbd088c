//! Extra certificate authorities to trust, so an HTTPS coordinator or archive whose certificate
//! was issued by Depot's own generated CA is accepted.
//!
//! `depot serve` writes its CA (and a bundle with the system roots) under the archive's
//! `.depot/` and prints `SSL_CERT_FILE=...`; TiKV honours that variable, so the agent does too.
//! `--ca-file` takes precedence over the environment.

use std::path::{Path, PathBuf};

/// PEM certificates to trust in addition to the system roots.
#[derive(Debug, Clone)]
pub struct ExtraCa {
    /// Where the certificates came from, for error messages.
    pub source: PathBuf,
    /// One or more PEM `CERTIFICATE` blocks.
    pub pem: Vec<u8>,
}

/// Why an extra CA file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    /// The file cannot be read.
    #[error("cannot read the CA file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The file holds no PEM certificate.
    #[error("the CA file {path} holds no PEM certificate (expected `-----BEGIN CERTIFICATE-----` blocks)")]
    NoCertificate {
        /// The file.
        path: PathBuf,
    },
}

impl ExtraCa {
    /// Loads `ca_file`, else the file named by `SSL_CERT_FILE`, else nothing.
    ///
    /// # Errors
    /// [`TrustError`] when the named file is unreadable or holds no certificate.
    pub fn load(ca_file: Option<&Path>) -> Result<Option<Self>, TrustError> {
        let path = match ca_file {
            Some(path) => path.to_path_buf(),
            None => match std::env::var_os("SSL_CERT_FILE") {
                Some(path) if !path.is_empty() => PathBuf::from(path),
                _ => return Ok(None),
            },
        };
        let pem = std::fs::read(&path).map_err(|source| TrustError::Read { path: path.clone(), source })?;
        if !pem.windows(27).any(|w| w == b"-----BEGIN CERTIFICATE-----") {
            return Err(TrustError::NoCertificate { path });
        }
        Ok(Some(Self { source: path, pem }))
    }
}
