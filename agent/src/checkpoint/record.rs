//! Checkpoint records: what a `data/<uuid>.cpt` object holds.
//!
//! ```text
//! depot-checkpoint v1 sha256=<hex of everything after this line>
//! [{"name":"1/2_3_default.sst","size":1048576,"sha256":"<hex>","mtime_ns":1700000000123456789}, ...]
//! ```
//!
//! Each object is written once and never changed. The digest in the first line covers the
//! rest, so a record torn or altered after it was written is detected on load and skipped;
//! its files are then simply checked again. A record is only ever a shortcut, never trusted
//! over what is on disk: a file is skipped only while its size and mtime still match.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

const HEADER: &str = "depot-checkpoint v1 sha256=";

/// One file that was verified and installed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Recorded {
    /// Name relative to the root.
    pub name: String,
    /// Size in bytes.
    pub size: u64,
    /// SHA-256 (hex), when the manifest has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// Modification time of the installed file, in nanoseconds since the epoch: together
    /// with the size, what tells a later run the file has not changed since.
    pub mtime_ns: i128,
}

/// Why a record object could not be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RecordError {
    /// No `depot-checkpoint v1` header line.
    #[error("not a checkpoint record (no header line)")]
    NoHeader,
    /// The content does not match the digest in the header.
    #[error("its content does not match its sha256 (torn or altered)")]
    Digest,
    /// The content is not the expected JSON.
    #[error("malformed content: {0}")]
    Malformed(String),
}

/// Encodes records as one `.cpt` object.
#[must_use]
pub fn encode(records: &[Recorded]) -> Vec<u8> {
    let body = serde_json::to_vec(records).expect("records serialize");
    let mut out = format!("{HEADER}{}\n", hex::encode(Sha256::digest(&body))).into_bytes();
    out.extend(body);
    out
}

/// Decodes and checks one `.cpt` object.
///
/// # Errors
/// [`RecordError`].
pub fn decode(data: &[u8]) -> Result<Vec<Recorded>, RecordError> {
    let newline = data.iter().position(|&b| b == b'\n').ok_or(RecordError::NoHeader)?;
    let header = std::str::from_utf8(&data[..newline]).map_err(|_| RecordError::NoHeader)?;
    let want = header.strip_prefix(HEADER).ok_or(RecordError::NoHeader)?;
    let body = &data[newline + 1..];
    if hex::encode(Sha256::digest(body)) != want {
        return Err(RecordError::Digest);
    }
    serde_json::from_slice(body).map_err(|e| RecordError::Malformed(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<Recorded> {
        vec![
            Recorded {
                name: "a/1.sst".into(),
                size: 10,
                sha256: Some("ab".repeat(32)),
                mtime_ns: 1_700_000_000_000_000_001,
            },
            Recorded { name: "b.sst".into(), size: 0, sha256: None, mtime_ns: 5 },
        ]
    }

    #[test]
    fn records_round_trip() {
        assert_eq!(decode(&encode(&sample())).unwrap(), sample());
    }

    #[test]
    fn any_altered_byte_is_detected() {
        let good = encode(&sample());
        for i in 0..good.len() {
            let mut bad = good.clone();
            bad[i] ^= 0x20;
            assert!(decode(&bad).is_err(), "byte {i} altered and accepted");
        }
        assert_eq!(decode(&good[..good.len() - 3]), Err(RecordError::Digest), "torn");
        assert_eq!(decode(b"garbage"), Err(RecordError::NoHeader));
    }
}
