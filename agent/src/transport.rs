//! Agent-to-agent transport settings (HTTP/2 over TLS over TCP) shared by the serving side
//! ([`crate::service::serve`]) and the calling side ([`crate::peer::PeerDirectory`]).
//!
//! A `ReadFile` stream is the hot path: each byte is read from disk, encoded by tonic,
//! encrypted by rustls, sent over TCP, then decrypted, framed and decoded on the other end. The
//! settings here cut per-byte copies and per-record system calls on that path, measured with
//! `ONLY=readfile scripts/bench-agent.sh` and CPU profiles (docs/ARCHITECTURE.md, "Transfer
//! path"). None of them changes what is sent or who may send it.

use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
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

/// A gRPC response body that sends each chunk's first [`GRPC_PREFIX`] bytes as a DATA frame of
/// their own.
///
/// tonic's encoder yields one chunk per large message, prefix included, and tonic's decoder on
/// the receiving side, on reading a message's prefix, reserves the message's whole length on
/// top of what it has already buffered: when prefix and body arrive in one frame, every
/// message is copied once more into a buffer twice its size. Sent alone, the prefix arrives
/// first, the reservation is exactly the message, and the body is copied once. Splitting a DATA
/// frame anywhere is invisible to HTTP/2 and gRPC, so a chunk that does not start a message
/// is only split needlessly, never wrongly.
pub(crate) struct PrefixFrames<B> {
    inner: B,
    rest: Option<Bytes>,
}

impl<B> PrefixFrames<B> {
    pub(crate) fn new(inner: B) -> Self {
        Self { inner, rest: None }
    }
}

impl<B> Body for PrefixFrames<B>
where
    B: Body<Data = Bytes, Error = Status> + Unpin,
{
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        if let Some(rest) = self.rest.take() {
            return Poll::Ready(Some(Ok(Frame::data(rest))));
        }
        let frame = match ready!(Pin::new(&mut self.inner).poll_frame(cx)) {
            Some(Ok(frame)) => frame,
            other => return Poll::Ready(other),
        };
        Poll::Ready(Some(Ok(match frame.into_data() {
            Ok(mut data) if data.len() > GRPC_PREFIX => {
                self.rest = Some(data.split_off(GRPC_PREFIX));
                Frame::data(data)
            }
            Ok(data) => Frame::data(data),
            Err(frame) => frame,
        })))
    }

    fn is_end_stream(&self) -> bool {
        self.rest.is_none() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        let mut hint = self.inner.size_hint();
        if let Some(rest) = &self.rest {
            let extra = rest.len() as u64;
            hint.set_lower(hint.lower() + extra);
            if let Some(upper) = hint.upper() {
                hint.set_upper(upper + extra);
            }
        }
        hint
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, StreamBody};

    #[tokio::test]
    async fn prefix_frames_keep_bytes_and_trailers() {
        let mut trailers = http::HeaderMap::new();
        trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
        let frames: Vec<Result<Frame<Bytes>, Status>> = vec![
            Ok(Frame::data(Bytes::from_static(b"\0\0\0\0\x03abc"))),
            Ok(Frame::data(Bytes::from_static(b"abc"))),
            Ok(Frame::data(Bytes::from_static(b"\0\0\0\0\x01z"))),
            Ok(Frame::trailers(trailers)),
        ];
        let body = PrefixFrames::new(StreamBody::new(futures::stream::iter(frames)));
        let mut body = std::pin::pin!(body);
        let mut data = Vec::new();
        let mut sizes = Vec::new();
        let mut got_trailers = None;
        while let Some(frame) = body.frame().await {
            match frame.unwrap().into_data() {
                Ok(chunk) => {
                    sizes.push(chunk.len());
                    data.extend_from_slice(&chunk);
                }
                Err(frame) => got_trailers = frame.into_trailers().ok(),
            }
        }
        assert_eq!(data, b"\0\0\0\0\x03abcabc\0\0\0\0\x01z");
        assert_eq!(sizes, [5, 3, 3, 5, 1]);
        assert_eq!(got_trailers.unwrap()["grpc-status"], "0");
    }
}
