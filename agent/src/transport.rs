//! Agent-to-agent transport settings (HTTP/2 over TLS over TCP) shared by the serving side
//! ([`crate::service::serve`]) and the calling side ([`crate::peer::PeerDirectory`]).
//!
//! A `ReadFile` stream is the hot path: each byte is read from disk, framed as gRPC without a
//! copy ([`ChunkFrames`]), encrypted by rustls, sent over TCP, then decrypted, framed and
//! decoded on the other end. The code here cuts per-byte copies and per-record system calls
//! on that path, measured with
//! `ONLY=readfile scripts/bench-agent.sh` and CPU profiles (docs/ARCHITECTURE.md, "Transfer
//! path"). None of them changes what is sent or who may send it.

use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{BufMut as _, Bytes, BytesMut};
use depot_proto::agent::FileChunk;
use http_body::{Body, Frame};
use tonic::Status;

/// HTTP/2 flow-control windows. The defaults (64 KiB) cap a single stream far below loopback
/// speed; 4 MiB per stream and 16 MiB per connection keep a 1 GiB transfer streaming while
/// bounding what a slow receiver can make this agent buffer.
pub(crate) const STREAM_WINDOW: u32 = 4 * 1024 * 1024;
/// See [`STREAM_WINDOW`].
pub(crate) const CONNECTION_WINDOW: u32 = 16 * 1024 * 1024;
/// Largest HTTP/2 frame we accept; peers send 1 MiB chunks in few frames.
pub(crate) const MAX_FRAME: u32 = 1024 * 1024;

/// Size of the buffer between a TCP socket and rustls on the receiving side. rustls reads at
/// most one TLS record (16 KiB) per `read` call, so without it a 1 GiB stream costs ~70,000
/// `recvfrom` calls (and as many readiness checks); with it one call fetches up to 256 KiB and
/// rustls takes its records from memory.
pub(crate) const TCP_READ_BUFFER: usize = 256 * 1024;

/// Plaintext rustls may hold encrypted and unsent per connection (rustls' default is 64 KiB).
/// A larger limit lets one `writev` carry up to 64 records (1 MiB) instead of four, so a 1 GiB
/// stream takes ~1,000 send calls instead of ~18,000. Bounded per connection, and only filled
/// while the socket accepts data.
pub(crate) const TLS_SEND_BUFFER: usize = 1024 * 1024;

/// Length of gRPC's per-message prefix (compressed flag, 4-byte length).
const GRPC_PREFIX: usize = 5;

/// The gRPC path of `ReadFile`: served by `crate::service` outside tonic's router and called
/// by [`crate::peer::Peer::read_file`] outside tonic's client, to frame chunks without copies.
pub(crate) const READ_FILE_PATH: &str = "/depot.agent.v1.NodeAgent/ReadFile";

/// A unary gRPC request for `path` carrying `message` (uncompressed), for a channel whose
/// origin fills in the scheme and authority.
pub(crate) fn unary_call(path: &'static str, message: &impl prost::Message) -> http::Request<tonic::body::Body> {
    let mut body = BytesMut::with_capacity(GRPC_PREFIX + message.encoded_len());
    body.put_u8(0);
    body.put_u32(u32::try_from(message.encoded_len()).expect("requests are small"));
    message.encode(&mut body).expect("the buffer has room for the message");
    let mut request = http::Request::new(tonic::body::Body::new(http_body_util::Full::new(body.freeze())));
    *request.method_mut() = http::Method::POST;
    *request.uri_mut() = http::Uri::from_static(path);
    let headers = request.headers_mut();
    headers.insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/grpc"));
    headers.insert(http::header::TE, http::HeaderValue::from_static("trailers"));
    request
}

/// Largest request body [`unary_request`] reads: a `ReadFileRequest` is a name and an offset.
const REQUEST_LIMIT: usize = 64 * 1024;

/// The HTTP/2 body of a `ReadFile` response, encoded from the service's chunk stream without
/// copying the chunks.
///
/// tonic's encoder copies every message into its buffer before sending, one more pass over
/// each byte sent on the agent's busiest path. Here each `FileChunk` goes out as two DATA
/// frames: a small one with the gRPC prefix and the message's field header (prost's encoding),
/// then the chunk's bytes as read from disk. Sending the prefix alone also keeps tonic's
/// decoder on the receiving side from reserving twice a message's size. The stream ends with
/// gRPC's trailers: `grpc-status: 0`, or the stream's error status.
pub(crate) struct ChunkFrames<St> {
    chunks: St,
    /// The chunk whose head went out last, sent next.
    data: Option<Bytes>,
    done: bool,
}

impl<St> ChunkFrames<St> {
    pub(crate) fn new(chunks: St) -> Self {
        Self { chunks, data: None, done: false }
    }
}

/// The gRPC prefix and protobuf field header of a `FileChunk` holding `len` bytes.
fn chunk_head(len: usize) -> Bytes {
    use prost::encoding::{WireType, encode_key, encode_varint, encoded_len_varint, key_len};
    let field = if len == 0 { 0 } else { key_len(1) + encoded_len_varint(len as u64) + len };
    let mut head = BytesMut::with_capacity(GRPC_PREFIX + 16);
    head.put_u8(0); // not compressed
    head.put_u32(u32::try_from(field).expect("chunks are far below 4 GiB"));
    if len > 0 {
        encode_key(1, WireType::LengthDelimited, &mut head);
        encode_varint(len as u64, &mut head);
    }
    head.freeze()
}

/// gRPC's trailers for `status`.
fn status_trailers(status: &Status) -> http::HeaderMap {
    let mut trailers = http::HeaderMap::new();
    if let Err(unencodable) = status.add_header(&mut trailers) {
        // Only a message that cannot be a header value gets here; its code still goes out.
        let _ = Status::new(unencodable.code(), "").add_header(&mut trailers);
    }
    trailers
}

impl<St> Body for ChunkFrames<St>
where
    St: futures::Stream<Item = Result<FileChunk, Status>> + Unpin,
{
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        if let Some(data) = self.data.take() {
            return Poll::Ready(Some(Ok(Frame::data(data))));
        }
        if self.done {
            return Poll::Ready(None);
        }
        let frame = match ready!(Pin::new(&mut self.chunks).poll_next(cx)) {
            Some(Ok(FileChunk { data })) => {
                let head = chunk_head(data.len());
                self.data = Some(data).filter(|d| !d.is_empty());
                Frame::data(head)
            }
            Some(Err(status)) => {
                self.done = true;
                Frame::trailers(status_trailers(&status))
            }
            None => {
                self.done = true;
                Frame::trailers(status_trailers(&Status::ok("")))
            }
        };
        Poll::Ready(Some(Ok(frame)))
    }

    fn is_end_stream(&self) -> bool {
        self.done && self.data.is_none()
    }
}

/// The one message of a unary gRPC request body, decoded with prost: for a method served
/// outside tonic's router (see [`ChunkFrames`]).
///
/// # Errors
/// `UNIMPLEMENTED` for a compressed message; `INVALID_ARGUMENT` for a body that is not one
/// gRPC message of `M` under [`REQUEST_LIMIT`] bytes.
pub(crate) async fn unary_request<M, B>(headers: &http::HeaderMap, body: B) -> Result<M, Status>
where
    M: prost::Message + Default,
    B: Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    use http_body_util::BodyExt as _;
    if headers.get("grpc-encoding").is_some_and(|e| e != "identity") {
        return Err(Status::unimplemented("compressed requests are not accepted; send them uncompressed"));
    }
    let bytes = http_body_util::Limited::new(body, REQUEST_LIMIT)
        .collect()
        .await
        .map_err(|err| Status::invalid_argument(format!("reading the request: {err}")))?
        .to_bytes();
    let Some((prefix, message)) = bytes.split_at_checked(GRPC_PREFIX) else {
        return Err(Status::invalid_argument("the request is shorter than gRPC's 5-byte message prefix"));
    };
    if prefix[0] != 0 {
        return Err(Status::unimplemented("compressed requests are not accepted; send them uncompressed"));
    }
    let declared = u32::from_be_bytes([prefix[1], prefix[2], prefix[3], prefix[4]]) as usize;
    if declared != message.len() {
        return Err(Status::invalid_argument(format!(
            "the request holds {} bytes after its prefix, which declares {declared}: send one message per call",
            message.len()
        )));
    }
    M::decode(message).map_err(|err| Status::invalid_argument(format!("undecodable request: {err}")))
}

/// The file bytes of a `ReadFile` response, taken from its HTTP/2 DATA frames without
/// copying them.
///
/// tonic's decoder copies every frame into a buffer of its own before decoding a message
/// from it; here each `FileChunk`'s gRPC prefix and field header are parsed as they arrive and
/// the bytes after them are handed on as slices of the frames they came in. A message of
/// another shape (which this agent's peers do not send) is decoded whole with prost.
pub struct FileBytes {
    body: tonic::body::Body,
    /// Bytes of the current frame not yet consumed.
    frame: Bytes,
    /// Bytes of a message head (or of a whole odd-shaped message) gathered across frames.
    head: BytesMut,
    /// File bytes of the current message still to come.
    data_left: usize,
    ended: bool,
}

impl FileBytes {
    /// Reads `response`, refusing it when it carries a gRPC error status (a trailers-only
    /// response) or is not a gRPC response at all.
    ///
    /// # Errors
    /// The call's status.
    pub(crate) fn new(response: http::Response<tonic::body::Body>) -> Result<Self, Status> {
        if let Some(status) = Status::from_header_map(response.headers()).filter(|s| s.code() != tonic::Code::Ok) {
            return Err(status);
        }
        if response.status() != http::StatusCode::OK {
            return Err(Status::unknown(format!(
                "the peer answered HTTP {} instead of a gRPC stream",
                response.status()
            )));
        }
        Ok(Self { body: response.into_body(), frame: Bytes::new(), head: BytesMut::new(), data_left: 0, ended: false })
    }

    /// The next bytes of the file; `None` once the stream ended with status OK.
    ///
    /// # Errors
    /// The stream's error status, a broken connection, or a malformed stream.
    pub async fn next(&mut self) -> Result<Option<Bytes>, Status> {
        loop {
            if self.data_left > 0 && !self.frame.is_empty() {
                let n = self.data_left.min(self.frame.len());
                self.data_left -= n;
                return Ok(Some(self.frame.split_to(n)));
            }
            if self.data_left == 0 && !self.frame.is_empty() {
                if let Some(data) = self.parse_head()? {
                    return Ok(Some(data));
                }
                continue;
            }
            if self.ended {
                return Ok(None);
            }
            self.frame = self.next_frame().await?;
        }
    }

    /// Moves bytes of the current frame into the message head; once the head is complete,
    /// sets up the data that follows it. Returns file bytes that came with the head (a few
    /// bytes, or an odd-shaped message decoded whole).
    fn parse_head(&mut self) -> Result<Option<Bytes>, Status> {
        use prost::Message as _;
        if self.head.len() < GRPC_PREFIX {
            self.gather(GRPC_PREFIX);
            if self.head.len() < GRPC_PREFIX {
                return Ok(None);
            }
            if self.head[0] != 0 {
                return Err(Status::internal("the peer sent a compressed message, which this agent never asks for"));
            }
            if self.declared() > MAX_MESSAGE {
                let len = self.declared();
                return Err(Status::resource_exhausted(format!(
                    "a {len}-byte message is over the {MAX_MESSAGE}-byte limit"
                )));
            }
        }
        let len = self.declared();
        // The field's key (one byte) and length (a varint of up to ten).
        let want = GRPC_PREFIX + len.min(11);
        self.gather(want);
        let body = &self.head[GRPC_PREFIX..];
        if len == 0 {
            self.head.clear();
            return Ok(None);
        }
        // The usual shape: field 1 (bytes), its length, then exactly the rest of the message.
        if body.first() == Some(&0x0a) {
            let mut rest = &body[1..];
            match prost::encoding::decode_varint(&mut rest) {
                Ok(n) if usize::try_from(n).is_ok_and(|n| body.len() - rest.len() + n == len) => {
                    let header = body.len() - rest.len();
                    let early = self.head.split_off(GRPC_PREFIX + header).freeze();
                    self.head.clear();
                    self.data_left = len - header - early.len();
                    return Ok(Some(early).filter(|e| !e.is_empty()));
                }
                Err(_) if self.head.len() < want => return Ok(None), // the length goes on
                _ => {}
            }
        } else if body.is_empty() {
            return Ok(None);
        }
        // Any other shape: the whole message, decoded by prost.
        self.gather(GRPC_PREFIX + len);
        if self.head.len() < GRPC_PREFIX + len {
            return Ok(None);
        }
        let message = self.head.split_off(GRPC_PREFIX).freeze();
        self.head.clear();
        let chunk = FileChunk::decode(message).map_err(|err| Status::internal(format!("undecodable chunk: {err}")))?;
        Ok(Some(chunk.data).filter(|d| !d.is_empty()))
    }

    /// Moves bytes from the current frame into the head until it holds `want` bytes.
    fn gather(&mut self, want: usize) {
        let n = want.saturating_sub(self.head.len()).min(self.frame.len());
        self.head.extend_from_slice(&self.frame.split_to(n));
    }

    /// The message length in the head's gRPC prefix (the head holds the prefix).
    fn declared(&self) -> usize {
        u32::from_be_bytes([self.head[1], self.head[2], self.head[3], self.head[4]]) as usize
    }

    /// The next DATA frame; at the end of the body, the trailers' status.
    async fn next_frame(&mut self) -> Result<Bytes, Status> {
        use http_body_util::BodyExt as _;
        loop {
            match self.body.frame().await {
                Some(frame) => match frame?.into_data() {
                    Ok(data) => return Ok(data),
                    Err(frame) => {
                        let Ok(trailers) = frame.into_trailers() else { continue };
                        self.ended = true;
                        if !self.head.is_empty() || self.data_left > 0 {
                            return Err(Status::internal("the stream ended inside a message"));
                        }
                        return match Status::from_header_map(&trailers) {
                            Some(status) if status.code() == tonic::Code::Ok => Ok(Bytes::new()),
                            Some(status) => Err(status),
                            None => Err(Status::unknown("the stream ended without gRPC's status trailers")),
                        };
                    }
                },
                None => {
                    self.ended = true;
                    return Err(Status::unknown("the stream ended without gRPC's status trailers"));
                }
            }
        }
    }
}

/// Largest message [`FileBytes`] accepts (chunks are 1 MiB by default).
const MAX_MESSAGE: usize = 8 * 1024 * 1024;

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, Full};
    use prost::Message as _;

    /// The frames of a `ChunkFrames` body: data frames' sizes and bytes, and the trailers.
    async fn frames(chunks: Vec<Result<FileChunk, Status>>) -> (Vec<usize>, Vec<u8>, http::HeaderMap) {
        let mut body = std::pin::pin!(ChunkFrames::new(futures::stream::iter(chunks)));
        let (mut sizes, mut data, mut trailers) = (Vec::new(), Vec::new(), None);
        while let Some(frame) = body.frame().await {
            match frame.unwrap().into_data() {
                Ok(chunk) => {
                    sizes.push(chunk.len());
                    data.extend_from_slice(&chunk);
                }
                Err(frame) => trailers = frame.into_trailers().ok(),
            }
        }
        assert!(body.is_end_stream());
        (sizes, data, trailers.expect("trailers end the stream"))
    }

    /// What tonic's prost encoder sends for `chunk`: the gRPC prefix, then the message.
    fn grpc_message(chunk: &FileChunk) -> Vec<u8> {
        let message = chunk.encode_to_vec();
        let mut out = vec![0];
        out.extend_from_slice(&u32::try_from(message.len()).unwrap().to_be_bytes());
        out.extend_from_slice(&message);
        out
    }

    #[tokio::test]
    async fn chunks_go_out_as_prost_encodes_them_with_the_bytes_in_frames_of_their_own() {
        let chunks =
            [vec![7u8; 300], vec![], vec![1, 2, 3], vec![9u8; 1 << 20]].map(|d| FileChunk { data: Bytes::from(d) });
        let (sizes, data, trailers) = frames(chunks.iter().cloned().map(Ok).collect()).await;
        let want: Vec<u8> = chunks.iter().flat_map(grpc_message).collect();
        assert_eq!(data, want, "byte-identical to tonic's encoding");
        // Head (prefix + field header), then the chunk; an empty chunk is its prefix alone.
        assert_eq!(sizes, [5 + 3, 300, 5, 5 + 2, 3, 5 + 4, 1 << 20]);
        assert_eq!(trailers["grpc-status"], "0");
    }

    #[tokio::test]
    async fn an_error_in_the_stream_ends_it_with_its_status() {
        let chunks =
            vec![Ok(FileChunk { data: Bytes::from_static(b"abc") }), Err(Status::permission_denied("revoked"))];
        let (_, data, trailers) = frames(chunks).await;
        assert_eq!(data, grpc_message(&FileChunk { data: Bytes::from_static(b"abc") }));
        let status = Status::from_header_map(&trailers).expect("a status");
        assert_eq!((status.code(), status.message()), (tonic::Code::PermissionDenied, "revoked"));
    }

    /// A response whose body is `wire` cut into frames of `sizes` (cycled), then `trailers`.
    fn response(wire: &[u8], sizes: &[usize], trailers: Option<http::HeaderMap>) -> http::Response<tonic::body::Body> {
        let mut frames: Vec<Result<Frame<Bytes>, Status>> = Vec::new();
        let (mut at, mut i) = (0, 0);
        while at < wire.len() {
            let n = sizes[i % sizes.len()].min(wire.len() - at);
            frames.push(Ok(Frame::data(Bytes::copy_from_slice(&wire[at..at + n]))));
            (at, i) = (at + n, i + 1);
        }
        frames.extend(trailers.map(|t| Ok(Frame::trailers(t))));
        let body = http_body_util::StreamBody::new(futures::stream::iter(frames));
        http::Response::new(tonic::body::Body::new(body))
    }

    /// Everything a `FileBytes` yields, or its error.
    async fn read_all(response: http::Response<tonic::body::Body>) -> Result<Vec<u8>, Status> {
        let mut stream = FileBytes::new(response)?;
        let mut out = Vec::new();
        while let Some(bytes) = stream.next().await? {
            assert!(!bytes.is_empty(), "no empty slices");
            out.extend_from_slice(&bytes);
        }
        Ok(out)
    }

    fn ok_trailers() -> Option<http::HeaderMap> {
        Some(status_trailers(&Status::ok("")))
    }

    #[tokio::test]
    async fn file_bytes_come_through_however_the_frames_are_cut() {
        let chunks = [vec![5u8; 1000], vec![], vec![1, 2, 3], (0..=255).cycle().take(70_000).collect::<Vec<u8>>()];
        let want: Vec<u8> = chunks.concat();
        let wire: Vec<u8> =
            chunks.iter().flat_map(|d| grpc_message(&FileChunk { data: Bytes::from(d.clone()) })).collect();
        for sizes in [&[usize::MAX][..], &[1], &[2, 7], &[5, 1000], &[6, 3, 16_384], &[4096]] {
            let got = read_all(response(&wire, sizes, ok_trailers())).await.unwrap();
            assert_eq!(got, want, "frames of {sizes:?}");
        }
    }

    #[tokio::test]
    async fn a_message_of_another_shape_is_decoded_whole() {
        // Field 1 twice (prost keeps the last) and an unknown field 2: not the usual shape.
        let mut message = FileChunk { data: Bytes::from_static(b"old") }.encode_to_vec();
        message.extend_from_slice(&FileChunk { data: Bytes::from_static(b"new bytes") }.encode_to_vec());
        message.extend_from_slice(&[0x10, 0x01]);
        let mut wire = vec![0];
        wire.extend_from_slice(&u32::try_from(message.len()).unwrap().to_be_bytes());
        wire.extend_from_slice(&message);
        for sizes in [&[usize::MAX][..], &[1], &[3, 2]] {
            assert_eq!(read_all(response(&wire, sizes, ok_trailers())).await.unwrap(), b"new bytes");
        }
    }

    #[tokio::test]
    async fn file_bytes_report_the_status_and_a_broken_stream() {
        let wire = grpc_message(&FileChunk { data: Bytes::from_static(b"abc") });
        let denied = Some(status_trailers(&Status::permission_denied("revoked")));
        let err = read_all(response(&wire, &[2], denied)).await.unwrap_err();
        assert_eq!((err.code(), err.message()), (tonic::Code::PermissionDenied, "revoked"));

        let err = read_all(response(&wire[..6], &[4], ok_trailers())).await.unwrap_err();
        assert!(err.message().contains("inside a message"), "{err:?}");
        let err = read_all(response(&wire, &[4], None)).await.unwrap_err();
        assert!(err.message().contains("without gRPC's status"), "{err:?}");

        // A trailers-only answer: the status in the headers, no body.
        let only = Status::not_found("\"a.sst\" does not exist on this node").into_http::<tonic::body::Body>();
        assert_eq!(read_all(only).await.unwrap_err().code(), tonic::Code::NotFound);

        let mut compressed = wire.clone();
        compressed[0] = 1;
        assert_eq!(
            read_all(response(&compressed, &[64], ok_trailers())).await.unwrap_err().code(),
            tonic::Code::Internal
        );
        let huge = [0, 0x7f, 0, 0, 0];
        let err = read_all(response(&huge, &[64], ok_trailers())).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::ResourceExhausted);
    }

    #[tokio::test]
    async fn a_unary_request_is_decoded_and_bad_ones_are_refused() {
        use depot_proto::agent::ReadFileRequest;
        let request = ReadFileRequest { path: "1/a.sst".into(), offset: 42 };
        let mut body = vec![0];
        body.extend_from_slice(&u32::try_from(request.encoded_len()).unwrap().to_be_bytes());
        body.extend_from_slice(&request.encode_to_vec());
        let headers = http::HeaderMap::new();
        let decode = |body: Vec<u8>, headers: http::HeaderMap| async move {
            unary_request::<ReadFileRequest, _>(&headers, Full::new(Bytes::from(body))).await
        };
        assert_eq!(decode(body.clone(), headers.clone()).await.unwrap(), request);

        let mut extra = body.clone();
        extra.push(0);
        assert_eq!(decode(extra, headers.clone()).await.unwrap_err().code(), tonic::Code::InvalidArgument);
        assert_eq!(decode(body[..3].to_vec(), headers.clone()).await.unwrap_err().code(), tonic::Code::InvalidArgument);
        let mut compressed = body.clone();
        compressed[0] = 1;
        assert_eq!(decode(compressed, headers.clone()).await.unwrap_err().code(), tonic::Code::Unimplemented);
        let mut gzip = headers;
        gzip.insert("grpc-encoding", http::HeaderValue::from_static("gzip"));
        assert_eq!(decode(body, gzip).await.unwrap_err().code(), tonic::Code::Unimplemented);
        let huge = vec![0u8; REQUEST_LIMIT + 1];
        assert_eq!(decode(huge, http::HeaderMap::new()).await.unwrap_err().code(), tonic::Code::InvalidArgument);
    }
}
