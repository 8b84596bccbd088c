//! Hand-made S3 requests, for what the AWS SDK never sends: each payload encoding of the
//! compatibility contract (hex hash, `UNSIGNED-PAYLOAD`, signed aws-chunked with and without
//! trailers, unsigned aws-chunked with a trailer), wrong digests, unsafe keys, anonymous
//! requests. Signing uses the AWS SDK's own `aws-sigv4`; only the aws-chunked framing is
//! written here, as other clients (aws-sdk-go-v2, Java) send it.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use aws_credential_types::Credentials;
use aws_sigv4::http_request::{
    PayloadChecksumKind, PercentEncodingMode, SignableBody, SignableRequest, SigningSettings, UriPathNormalizationMode,
    sign,
};
use aws_sigv4::sign::v4;
use aws_smithy_runtime_api::client::identity::Identity;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use sha2::{Digest, Sha256};

use crate::Proto;

/// Who signs, and for which region.
#[derive(Debug, Clone)]
pub struct Signer {
    /// Access key id.
    pub access_key: String,
    /// Secret key.
    pub secret_key: String,
    /// Region in the credential scope.
    pub region: String,
}

/// How the body is sent and signed.
#[derive(Debug, Clone)]
pub enum Payload {
    /// `x-amz-content-sha256: <hex sha256 of the body>`.
    Hex(Vec<u8>),
    /// A hex hash of other bytes than those sent (a corrupted body).
    WrongHex { sent: Vec<u8>, hashed: Vec<u8> },
    /// `UNSIGNED-PAYLOAD`.
    Unsigned(Vec<u8>),
    /// `STREAMING-AWS4-HMAC-SHA256-PAYLOAD[-TRAILER]`: signed chunks, optional signed trailer.
    SignedChunks { data: Vec<u8>, chunk: usize, trailer: Option<(String, String)> },
    /// `STREAMING-UNSIGNED-PAYLOAD-TRAILER`: plain chunks and a trailer.
    UnsignedTrailer { data: Vec<u8>, chunk: usize, trailer: (String, String) },
}

/// Where a request goes and over which protocol.
#[derive(Debug, Clone)]
pub struct Target {
    /// `http://host:port` or `https://host:port`.
    pub endpoint: String,
    /// HTTP/1.1, HTTP/2 over TLS (`https://`), or h2c.
    pub proto: Proto,
    /// The CA to trust for `https://`.
    pub ca: Option<PathBuf>,
}

impl From<&str> for Target {
    fn from(endpoint: &str) -> Self {
        let proto = if endpoint.starts_with("https://") { Proto::H2 } else { Proto::H1 };
        Self { endpoint: endpoint.to_owned(), proto, ca: None }
    }
}

impl From<&String> for Target {
    fn from(endpoint: &String) -> Self {
        Self::from(endpoint.as_str())
    }
}

impl From<&Target> for Target {
    fn from(target: &Target) -> Self {
        target.clone()
    }
}

/// A response, read whole.
#[derive(Debug)]
pub struct Response {
    /// The protocol it came over.
    pub version: http::Version,
    /// Status code.
    pub status: u16,
    /// Headers.
    pub headers: http::HeaderMap,
    /// Body.
    pub body: Vec<u8>,
}

impl Response {
    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The `<Message>` of an S3 error body, XML entities decoded.
    pub fn message(&self) -> String {
        let text = self.text();
        let message =
            text.split_once("<Message>").and_then(|(_, rest)| rest.split_once("</Message>")).map_or("", |m| m.0);
        message
            .replace("&quot;", "\"")
            .replace("&apos;", "'")
            .replace("&lt;", "<")
            .replace("&gt;", ">")
            .replace("&amp;", "&")
    }
}

fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

fn settings() -> SigningSettings {
    let mut settings = SigningSettings::default();
    settings.percent_encoding_mode = PercentEncodingMode::Single;
    settings.payload_checksum_kind = PayloadChecksumKind::XAmzSha256;
    settings.uri_path_normalization_mode = UriPathNormalizationMode::Disabled;
    settings
}

/// Sends one request to `target` (an `http://host:port` endpoint, or a [`Target`] naming the
/// protocol) for `path_and_query` (sent as given, so it may carry any percent-encoding),
/// signed by `signer` unless it is `None`.
///
/// # Panics
/// On connection or signing failures (the tests want to see them).
pub async fn send(
    target: impl Into<Target>,
    signer: Option<&Signer>,
    method: &str,
    path_and_query: &str,
    headers: &[(&str, &str)],
    payload: Payload,
) -> Response {
    let target: Target = target.into();
    let endpoint = target.endpoint.as_str();
    let authority = endpoint.trim_start_matches("http://").trim_start_matches("https://").trim_end_matches('/');
    let mut builder = http::Request::builder().method(method).uri(path_and_query).header("host", authority);
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    let (content_sha, wire_body, extra): (String, Vec<u8>, Vec<(String, String)>) = match &payload {
        Payload::Hex(data) => (sha256_hex(data), data.clone(), vec![]),
        Payload::WrongHex { sent, hashed } => (sha256_hex(hashed), sent.clone(), vec![]),
        Payload::Unsigned(data) => ("UNSIGNED-PAYLOAD".into(), data.clone(), vec![]),
        Payload::SignedChunks { data, trailer, .. } => {
            let mode = if trailer.is_some() {
                "STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER"
            } else {
                "STREAMING-AWS4-HMAC-SHA256-PAYLOAD"
            };
            let mut extra = vec![
                ("content-encoding".into(), "aws-chunked".into()),
                ("x-amz-decoded-content-length".into(), data.len().to_string()),
            ];
            if let Some((name, _)) = trailer {
                extra.push(("x-amz-trailer".into(), name.clone()));
            }
            (mode.into(), Vec::new(), extra)
        }
        Payload::UnsignedTrailer { data, trailer, chunk } => {
            let extra = vec![
                ("content-encoding".into(), "aws-chunked".into()),
                ("x-amz-decoded-content-length".into(), data.len().to_string()),
                ("x-amz-trailer".into(), trailer.0.clone()),
            ];
            ("STREAMING-UNSIGNED-PAYLOAD-TRAILER".into(), unsigned_chunks(data, *chunk, trailer), extra)
        }
    };
    for (name, value) in &extra {
        builder = builder.header(name.as_str(), value.as_str());
    }
    let mut request = builder.body(()).expect("valid request");

    let time = SystemTime::now();
    let seed_signature = match signer {
        Some(signer) => sign_request(&mut request, endpoint, signer, &content_sha, time),
        None => {
            request.headers_mut().insert("x-amz-content-sha256", content_sha.parse().expect("header"));
            String::new()
        }
    };
    let identity = identity(signer);
    let region = signer.map_or("us-east-1", |s| s.region.as_str());
    let params = signing_params(&identity, region, time);

    let wire_body = match payload {
        Payload::SignedChunks { data, chunk, trailer } => {
            signed_chunks(&data, chunk, trailer.as_ref(), &seed_signature, &params)
        }
        _ => wire_body,
    };
    request.headers_mut().insert("content-length", wire_body.len().to_string().parse().expect("header"));
    let (mut parts, ()) = request.into_parts();
    if target.proto != Proto::H1 {
        // HTTP/2 carries the scheme and authority as pseudo-headers.
        parts.uri = format!("{endpoint}{}", parts.uri).parse().expect("absolute URI");
    }
    let request = http::Request::from_parts(parts, Full::new(Bytes::from(wire_body)));
    let response = exchange(&target, authority, request).await;
    let version = response.version();
    let (parts, body) = response.into_parts();
    let body = body.collect().await.map(|b| b.to_bytes().to_vec()).unwrap_or_default();
    Response { version, status: parts.status.as_u16(), headers: parts.headers, body }
}

/// One request on a fresh connection of `target`'s protocol.
async fn exchange(
    target: &Target,
    authority: &str,
    request: http::Request<Full<Bytes>>,
) -> http::Response<hyper::body::Incoming> {
    let tcp = tokio::net::TcpStream::connect(authority).await.expect("connect");
    match target.proto {
        Proto::H1 => {
            let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await.expect("handshake");
            tokio::spawn(conn);
            sender.send_request(request).await.expect("send")
        }
        Proto::H2c => {
            let (mut sender, conn) =
                hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp)).await.expect("h2c");
            tokio::spawn(conn);
            sender.send_request(request).await.expect("send")
        }
        Proto::H2 => {
            let tls = tls_connect(target.ca.as_deref(), tcp).await;
            assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]), "the server accepts h2 by ALPN");
            let (mut sender, conn) =
                hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls)).await.expect("h2");
            tokio::spawn(conn);
            sender.send_request(request).await.expect("send")
        }
    }
}

/// A TLS connection to 127.0.0.1 trusting `ca`, offering only `h2` by ALPN.
async fn tls_connect(
    ca: Option<&Path>,
    tcp: tokio::net::TcpStream,
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let mut roots = rustls::RootCertStore::empty();
    let pem = std::fs::read(ca.expect("an https target needs its CA")).expect("CA file");
    for block in pem::parse_many(pem).expect("CA PEM") {
        roots.add(rustls::pki_types::CertificateDer::from(block.into_contents())).expect("CA certificate");
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").expect("server name");
    connector.connect(name, tcp).await.expect("TLS handshake")
}

fn identity(signer: Option<&Signer>) -> Identity {
    let (access, secret) = signer.map_or(("", ""), |s| (s.access_key.as_str(), s.secret_key.as_str()));
    Credentials::new(access, secret, None, None, "raw").into()
}

fn signing_params<'a>(
    identity: &'a Identity,
    region: &'a str,
    time: SystemTime,
) -> v4::SigningParams<'a, SigningSettings> {
    v4::SigningParams::builder()
        .identity(identity)
        .region(region)
        .name("s3")
        .time(time)
        .settings(settings())
        .build()
        .expect("signing params")
}

/// Signs `request` (its URI being the path and query, its `host` header set) for
/// `endpoint`, with `x-amz-content-sha256: content_sha` (a hex hash, `UNSIGNED-PAYLOAD`, or a
/// `STREAMING-*` mode). Returns the signature, which seeds chunk signatures.
///
/// # Panics
/// When the request cannot be signed.
pub fn sign_request<B>(
    request: &mut http::Request<B>,
    endpoint: &str,
    signer: &Signer,
    content_sha: &str,
    time: SystemTime,
) -> String {
    let uri = format!("{endpoint}{}", request.uri());
    let header_pairs: Vec<(String, String)> = request
        .headers()
        .iter()
        .map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap_or_default().to_owned()))
        .collect();
    let signable = SignableRequest::new(
        request.method().as_str(),
        &uri,
        header_pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())),
        SignableBody::Precomputed(content_sha.to_owned()),
    )
    .expect("signable");
    let identity = identity(Some(signer));
    let params = signing_params(&identity, &signer.region, time);
    let (instructions, signature) = sign(signable, &params.into()).expect("sign").into_parts();
    instructions.apply_to_request_http1x(request);
    signature
}

fn unsigned_chunks(data: &[u8], chunk: usize, trailer: &(String, String)) -> Vec<u8> {
    let mut out = Vec::new();
    for piece in data.chunks(chunk.max(1)) {
        out.extend(format!("{:x}\r\n", piece.len()).as_bytes());
        out.extend(piece);
        out.extend(b"\r\n");
    }
    out.extend(format!("0\r\n{}:{}\r\n\r\n", trailer.0, trailer.1).as_bytes());
    out
}

fn signed_chunks(
    data: &[u8],
    chunk: usize,
    trailer: Option<&(String, String)>,
    seed: &str,
    params: &v4::SigningParams<'_, SigningSettings>,
) -> Vec<u8> {
    let mut out = Vec::new();
    let mut previous = seed.to_owned();
    let pieces: Vec<&[u8]> = data.chunks(chunk.max(1)).chain(std::iter::once(&[][..])).collect();
    for piece in pieces {
        let signature =
            v4::sign_chunk(&Bytes::copy_from_slice(piece), &previous, params).expect("chunk").into_parts().1;
        out.extend(format!("{:x};chunk-signature={signature}\r\n", piece.len()).as_bytes());
        out.extend(piece);
        if !piece.is_empty() || trailer.is_none() {
            out.extend(b"\r\n");
        }
        previous = signature;
    }
    if let Some((name, value)) = trailer {
        let mut headers = aws_smithy_runtime_api::http::Headers::new();
        headers.insert(name.clone(), value.clone());
        let signature = v4::sign_trailer(&headers, &previous, params).expect("trailer").into_parts().1;
        out.extend(format!("{name}:{value}\r\nx-amz-trailer-signature:{signature}\r\n\r\n").as_bytes());
    }
    out
}
