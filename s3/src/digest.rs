//! The digests a client can attach to a body, computed while it streams in and checked after.
//!
//! S3 clients send `Content-MD5`, one `x-amz-checksum-<alg>` header, or announce the checksum
//! as an aws-chunked trailer (`x-amz-trailer`), the current AWS SDK default. s3s parses the
//! trailer but does not check it; this module does, for every one of them. CRC64-NVME is
//! always computed (cheap, SIMD): it is the object's checksum when the client sent none (as
//! S3 does today) and its ETag when there is no MD5 (see [`crate::meta`]).

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use http::HeaderMap;
use s3s::crypto::{Checksum as _, Crc32, Crc32c, Crc64Nvme, Md5, Sha1, Sha256};

use crate::error::{Error, Result};
use crate::meta::StoredChecksum;

/// A checksum algorithm S3 knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    /// CRC32 (ISO-HDLC).
    Crc32,
    /// CRC32C (Castagnoli).
    Crc32c,
    /// CRC64-NVME.
    Crc64Nvme,
    /// SHA-1.
    Sha1,
    /// SHA-256.
    Sha256,
}

impl Algorithm {
    const ALL: [Self; 5] = [Self::Crc32, Self::Crc32c, Self::Crc64Nvme, Self::Sha1, Self::Sha256];

    /// The name S3 uses (`CRC32`, ...).
    pub fn name(self) -> &'static str {
        match self {
            Self::Crc32 => "CRC32",
            Self::Crc32c => "CRC32C",
            Self::Crc64Nvme => "CRC64NVME",
            Self::Sha1 => "SHA1",
            Self::Sha256 => "SHA256",
        }
    }

    /// The header carrying it (`x-amz-checksum-crc32`, ...).
    pub fn header(self) -> &'static str {
        match self {
            Self::Crc32 => "x-amz-checksum-crc32",
            Self::Crc32c => "x-amz-checksum-crc32c",
            Self::Crc64Nvme => "x-amz-checksum-crc64nvme",
            Self::Sha1 => "x-amz-checksum-sha1",
            Self::Sha256 => "x-amz-checksum-sha256",
        }
    }

    /// Parses an S3 algorithm name, case-insensitively.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|a| a.name().eq_ignore_ascii_case(name))
    }

    fn from_header(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|a| a.header().eq_ignore_ascii_case(name))
    }

    /// The digest of `data` in one go (for composite checksums of part checksums).
    pub fn digest(self, data: &[u8]) -> Vec<u8> {
        let mut hasher = Hasher::new(self);
        hasher.update(data);
        hasher.finalize()
    }

    /// A running digest.
    pub fn hasher(self) -> Hasher {
        Hasher::new(self)
    }
}

/// One running digest; see [`Algorithm::hasher`].
pub enum Hasher {
    Crc32(Crc32),
    Crc32c(Crc32c),
    Crc64Nvme(Crc64Nvme),
    Sha1(Sha1),
    Sha256(Sha256),
}

impl Hasher {
    fn new(algorithm: Algorithm) -> Self {
        match algorithm {
            Algorithm::Crc32 => Self::Crc32(Crc32::new()),
            Algorithm::Crc32c => Self::Crc32c(Crc32c::new()),
            Algorithm::Crc64Nvme => Self::Crc64Nvme(Crc64Nvme::new()),
            Algorithm::Sha1 => Self::Sha1(Sha1::new()),
            Algorithm::Sha256 => Self::Sha256(Sha256::new()),
        }
    }

    /// Feeds the next bytes.
    pub fn update(&mut self, data: &[u8]) {
        match self {
            Self::Crc32(h) => h.update(data),
            Self::Crc32c(h) => h.update(data),
            Self::Crc64Nvme(h) => h.update(data),
            Self::Sha1(h) => h.update(data),
            Self::Sha256(h) => h.update(data),
        }
    }

    /// The digest, as bytes.
    pub fn finalize(self) -> Vec<u8> {
        match self {
            Self::Crc32(h) => h.finalize().to_vec(),
            Self::Crc32c(h) => h.finalize().to_vec(),
            Self::Crc64Nvme(h) => h.finalize().to_vec(),
            Self::Sha1(h) => h.finalize().as_ref().to_vec(),
            Self::Sha256(h) => h.finalize().as_ref().to_vec(),
        }
    }
}

/// What the client said the body's digests would be.
#[derive(Debug, Clone, Default)]
pub struct Expected {
    /// Decoded `Content-MD5`.
    content_md5: Option<Vec<u8>>,
    /// The checksum algorithm the client uses, if any.
    algorithm: Option<Algorithm>,
    /// Its value when sent as a header (decoded); `None` when it comes as a trailer or the
    /// client only named the algorithm.
    value: Option<Vec<u8>>,
    /// The value will come as an aws-chunked trailer.
    trailer: bool,
}

impl Expected {
    /// Reads `Content-MD5`, `x-amz-checksum-*`, `x-amz-sdk-checksum-algorithm` and
    /// `x-amz-trailer` from the request headers.
    ///
    /// # Errors
    /// [`Error::InvalidRequest`] for malformed values or more than one checksum.
    pub fn from_headers(headers: &HeaderMap) -> Result<Self> {
        let mut expected = Self::default();
        if let Some(md5) = headers.get("content-md5") {
            let decoded = decode(md5.as_bytes()).filter(|d| d.len() == 16);
            expected.content_md5 = Some(decoded.ok_or_else(|| {
                Error::InvalidRequest("the Content-MD5 header is not a base64-encoded MD5 digest".into())
            })?);
        }
        for (name, value) in headers {
            let Some(algorithm) = Algorithm::from_header(name.as_str()) else {
                continue;
            };
            if expected.algorithm.is_some() {
                return Err(Error::InvalidRequest("expecting a single x-amz-checksum- header".into()));
            }
            let decoded = decode(value.as_bytes()).ok_or_else(|| {
                Error::InvalidRequest(format!("the {} header is not valid base64", algorithm.header()))
            })?;
            expected.algorithm = Some(algorithm);
            expected.value = Some(decoded);
        }
        if let Some(trailer) = headers.get("x-amz-trailer").and_then(|v| v.to_str().ok()) {
            let trailer = trailer.trim();
            let algorithm = Algorithm::from_header(trailer).ok_or_else(|| {
                Error::InvalidRequest(format!(
                    "unsupported x-amz-trailer {trailer:?}; expected an x-amz-checksum-* name"
                ))
            })?;
            if expected.algorithm.is_some_and(|a| a != algorithm) {
                return Err(Error::InvalidRequest("expecting a single x-amz-checksum- header".into()));
            }
            expected.algorithm = Some(algorithm);
            expected.trailer = true;
        }
        if expected.algorithm.is_none()
            && let Some(name) = headers.get("x-amz-sdk-checksum-algorithm").and_then(|v| v.to_str().ok())
        {
            expected.algorithm =
                Some(Algorithm::from_name(name).ok_or_else(|| {
                    Error::InvalidRequest(format!("unsupported x-amz-sdk-checksum-algorithm {name:?}"))
                })?);
        }
        Ok(expected)
    }

    /// Nothing to check, only `algorithm` to compute (besides CRC64-NVME): for bytes Depot
    /// reads itself, an UploadPartCopy's source, stored with the upload's checksum.
    pub fn computing(algorithm: Option<Algorithm>) -> Self {
        Self { algorithm, ..Self::default() }
    }

    /// The checksum algorithm in use, if the client named one.
    pub fn algorithm(&self) -> Option<Algorithm> {
        self.algorithm
    }

    /// A hasher computing everything needed to check these expectations.
    pub fn hasher(&self) -> BodyHasher {
        BodyHasher {
            crc64: Crc64Nvme::new(),
            extra: self.algorithm.filter(|a| *a != Algorithm::Crc64Nvme).map(|a| (a, Hasher::new(a))),
        }
    }

    /// Checks the digests of the body received against every expectation, reading the
    /// trailer if one was announced. Returns the checksum to store with the object.
    ///
    /// # Errors
    /// [`Error::BadDigest`] on a mismatch; [`Error::InvalidRequest`] when an announced
    /// trailer did not come.
    pub fn verify(&self, digests: &Digests, trailers: Option<&HeaderMap>) -> Result<StoredChecksum> {
        if let Some(want) = &self.content_md5 {
            let got = digests.md5.as_deref().expect("the MD5 is computed whenever Content-MD5 is sent");
            check("Content-MD5", want, got)?;
        }
        let Some(algorithm) = self.algorithm else {
            return Ok(full_object(Algorithm::Crc64Nvme, &digests.crc64));
        };
        let computed = digests.of(algorithm).expect("hasher computes the client's algorithm");
        let given = if self.trailer {
            let value = trailers.and_then(|t| t.get(algorithm.header())).ok_or_else(|| {
                Error::InvalidRequest(format!("the body ended without the announced {} trailer", algorithm.header()))
            })?;
            Some(decode(value.as_bytes()).ok_or_else(|| {
                Error::InvalidRequest(format!("the {} trailer is not valid base64", algorithm.header()))
            })?)
        } else {
            self.value.clone()
        };
        if let Some(given) = given {
            check(algorithm.header(), &given, computed)?;
        }
        Ok(full_object(algorithm, computed))
    }
}

fn full_object(algorithm: Algorithm, digest: &[u8]) -> StoredChecksum {
    StoredChecksum { algorithm: algorithm.name().to_owned(), value: BASE64.encode(digest), kind: "FULL_OBJECT".into() }
}

fn check(header: &str, expected: &[u8], actual: &[u8]) -> Result<()> {
    if expected == actual {
        return Ok(());
    }
    Err(Error::BadDigest {
        header: header.to_owned(),
        expected: BASE64.encode(expected),
        actual: BASE64.encode(actual),
    })
}

fn decode(value: &[u8]) -> Option<Vec<u8>> {
    BASE64.decode(value.trim_ascii()).ok()
}

/// Running digests of a body (all but the MD5); see [`Expected::hasher`].
pub struct BodyHasher {
    crc64: Crc64Nvme,
    extra: Option<(Algorithm, Hasher)>,
}

impl BodyHasher {
    /// Feeds the next bytes of the body.
    pub fn update(&mut self, data: &[u8]) {
        self.crc64.update(data);
        if let Some((_, hasher)) = &mut self.extra {
            hasher.update(data);
        }
    }

    /// The final digests, with the body's MD5 when it was computed (see [`Md5Thread`]).
    pub fn finalize(self, md5: Option<[u8; 16]>) -> Digests {
        Digests {
            md5: md5.map(|m| m.to_vec()),
            crc64: self.crc64.finalize().to_vec(),
            extra: self.extra.map(|(a, h)| (a, h.finalize())),
        }
    }
}

/// The MD5 of `chunks` in order, computed here: for a body too small to be worth a thread.
pub fn md5_of(chunks: &[bytes::Bytes]) -> [u8; 16] {
    let mut md5 = Md5::new();
    for chunk in chunks {
        md5.update(chunk);
    }
    md5.finalize()
}

/// MD5 computed on a thread of its own, fed the same shared chunks the writer gets.
///
/// A PUT is then bounded by the slowest of network, disk and MD5 rather than their sum: the
/// network task only does the SIMD CRC64 and hands `Bytes` (reference-counted, not copied) to
/// the writer and to this thread over bounded channels.
pub struct Md5Thread {
    tx: tokio::sync::mpsc::Sender<Vec<bytes::Bytes>>,
    done: tokio::task::JoinHandle<[u8; 16]>,
}

impl Md5Thread {
    /// Starts the thread; `queue` batches may wait for it.
    pub fn start(queue: usize) -> Self {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<bytes::Bytes>>(queue);
        let done = tokio::task::spawn_blocking(move || {
            let mut md5 = Md5::new();
            while let Some(batch) = rx.blocking_recv() {
                for chunk in &batch {
                    md5.update(chunk);
                }
            }
            md5.finalize()
        });
        Self { tx, done }
    }

    /// Hashes `batch` next; waits while the thread is `queue` batches behind.
    pub async fn feed(&self, batch: Vec<bytes::Bytes>) {
        // The thread only ends when `tx` is dropped, so a send cannot fail.
        let _ = self.tx.send(batch).await;
    }

    /// The MD5 of everything fed.
    pub async fn finish(self) -> Option<[u8; 16]> {
        drop(self.tx);
        self.done.await.ok()
    }
}

/// The digests of a complete body.
#[derive(Debug, Clone)]
pub struct Digests {
    /// MD5 of the body (`None` only where nobody needs it: a concatenation of parts).
    pub md5: Option<Vec<u8>>,
    /// CRC64-NVME, always.
    pub crc64: Vec<u8>,
    /// The client's checksum algorithm, when it is not CRC64-NVME.
    extra: Option<(Algorithm, Vec<u8>)>,
}

impl Digests {
    fn of(&self, algorithm: Algorithm) -> Option<&[u8]> {
        if algorithm == Algorithm::Crc64Nvme {
            return Some(&self.crc64);
        }
        self.extra.as_ref().filter(|(a, _)| *a == algorithm).map(|(_, d)| d.as_slice())
    }

    /// The ETag (without quotes): the hex MD5, as S3 gives for a single-part object or a part.
    ///
    /// # Panics
    /// When the MD5 was not computed (a programming error).
    pub fn etag(&self) -> String {
        hex::encode(self.md5.as_deref().expect("the MD5 of a received body is always computed"))
    }

    /// This body's digest under `algorithm` in base64, if it was computed.
    pub fn base64(&self, algorithm: Algorithm) -> Option<String> {
        self.of(algorithm).map(|d| BASE64.encode(d))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        pairs.iter().map(|(k, v)| (http::HeaderName::from_static(k), v.parse().unwrap())).collect()
    }

    fn digest_of(expected: &Expected, body: &[u8]) -> Digests {
        let mut hasher = expected.hasher();
        hasher.update(body);
        hasher.finalize(Some(Md5::checksum(body)))
    }

    #[test]
    fn content_md5_is_checked() {
        let good = BASE64.encode(Md5::checksum(b"hello"));
        let expected = Expected::from_headers(&headers(&[("content-md5", &good)])).unwrap();
        let digests = digest_of(&expected, b"hello");
        assert!(expected.verify(&digests, None).is_ok());
        assert_eq!(digests.etag(), "5d41402abc4b2a76b9719d911017c592");
        let err = expected.verify(&digest_of(&expected, b"hellO"), None).unwrap_err();
        assert!(matches!(err, Error::BadDigest { .. }), "{err}");
    }

    #[test]
    fn checksum_header_is_checked() {
        let crc = BASE64.encode(Crc32::checksum(b"data"));
        let expected = Expected::from_headers(&headers(&[("x-amz-checksum-crc32", &crc)])).unwrap();
        let stored = expected.verify(&digest_of(&expected, b"data"), None).unwrap();
        assert_eq!((stored.algorithm.as_str(), stored.value.as_str()), ("CRC32", crc.as_str()));
        assert!(expected.verify(&digest_of(&expected, b"datA"), None).is_err());
    }

    #[test]
    fn trailer_checksum_is_checked_and_required() {
        let expected = Expected::from_headers(&headers(&[("x-amz-trailer", "x-amz-checksum-crc32c")])).unwrap();
        let digests = digest_of(&expected, b"payload");
        let good = headers(&[("x-amz-checksum-crc32c", &BASE64.encode(Crc32c::checksum(b"payload")))]);
        assert!(expected.verify(&digests, Some(&good)).is_ok());
        let bad = headers(&[("x-amz-checksum-crc32c", &BASE64.encode(Crc32c::checksum(b"other")))]);
        assert!(matches!(expected.verify(&digests, Some(&bad)), Err(Error::BadDigest { .. })));
        assert!(matches!(expected.verify(&digests, None), Err(Error::InvalidRequest(_))));
    }

    #[test]
    fn without_expectations_the_checksum_is_crc64nvme() {
        let expected = Expected::from_headers(&HeaderMap::new()).unwrap();
        let digests = digest_of(&expected, b"x");
        let stored = expected.verify(&digests, None).unwrap();
        assert_eq!(stored.algorithm, "CRC64NVME");
        assert_eq!(digests.etag(), "9dd4e461268c8034f5c8564e155c67a6", "the ETag is the MD5 all the same");
    }

    #[test]
    fn malformed_or_duplicate_headers_are_refused() {
        assert!(Expected::from_headers(&headers(&[("content-md5", "not base64!")])).is_err());
        let two = headers(&[("x-amz-checksum-crc32", "AAAAAA=="), ("x-amz-checksum-sha1", "AAAAAA==")]);
        assert!(Expected::from_headers(&two).is_err());
        assert!(Expected::from_headers(&headers(&[("x-amz-trailer", "x-amz-foo")])).is_err());
    }
}

#[cfg(test)]
mod md5_thread_tests {
    use super::*;

    #[tokio::test]
    async fn the_md5_thread_hashes_every_batch_in_order() {
        let md5 = Md5Thread::start(2);
        for piece in [&b"hel"[..], b"", b"lo"] {
            md5.feed(vec![bytes::Bytes::copy_from_slice(piece), bytes::Bytes::new()]).await;
        }
        assert_eq!(hex::encode(md5.finish().await.unwrap()), "5d41402abc4b2a76b9719d911017c592");
    }
}
