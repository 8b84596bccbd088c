//! Counters behind the shutdown summary: what was stored and served, and how requests ended.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use http::StatusCode;

/// Process-wide counters; shared by the S3 handlers and the connection loop.
#[derive(Debug)]
pub struct Stats {
    started: Instant,
    objects_written: AtomicU64,
    bytes_written: AtomicU64,
    objects_read: AtomicU64,
    bytes_read: AtomicU64,
    /// Responses by class: 2xx, 3xx, 4xx, 5xx.
    responses: [AtomicU64; 4],
}

/// A snapshot of [`Stats`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Summary {
    /// Objects stored (PUT, copy, completed multipart upload).
    pub objects_written: u64,
    /// Bytes of those objects.
    pub bytes_written: u64,
    /// GET requests that sent an object body.
    pub objects_read: u64,
    /// Body bytes sent by those GETs.
    pub bytes_read: u64,
    /// 2xx and 3xx responses.
    pub requests_ok: u64,
    /// 4xx responses (the client's mistake: bad key, wrong credentials, ...).
    pub requests_client_error: u64,
    /// 5xx responses (Depot's or the disk's failure).
    pub requests_server_error: u64,
    /// Time since start.
    #[serde(skip)]
    pub duration: Duration,
}

impl Default for Stats {
    fn default() -> Self {
        Self {
            started: Instant::now(),
            objects_written: AtomicU64::new(0),
            bytes_written: AtomicU64::new(0),
            objects_read: AtomicU64::new(0),
            bytes_read: AtomicU64::new(0),
            responses: Default::default(),
        }
    }
}

impl Stats {
    /// An object of `size` bytes was stored.
    pub fn object_written(&self, size: u64) {
        self.objects_written.fetch_add(1, Relaxed);
        self.bytes_written.fetch_add(size, Relaxed);
    }

    /// A GET started sending an object.
    pub fn object_read(&self) {
        self.objects_read.fetch_add(1, Relaxed);
    }

    /// `n` body bytes of a GET were sent.
    pub fn bytes_sent(&self, n: u64) {
        self.bytes_read.fetch_add(n, Relaxed);
    }

    /// A response with `status` went out.
    pub fn response(&self, status: StatusCode) {
        let class = usize::from(status.as_u16() / 100).clamp(2, 5) - 2;
        self.responses[class].fetch_add(1, Relaxed);
    }

    /// The counters now.
    pub fn summary(&self) -> Summary {
        let responses = |i: usize| self.responses[i].load(Relaxed);
        Summary {
            objects_written: self.objects_written.load(Relaxed),
            bytes_written: self.bytes_written.load(Relaxed),
            objects_read: self.objects_read.load(Relaxed),
            bytes_read: self.bytes_read.load(Relaxed),
            requests_ok: responses(0) + responses(1),
            requests_client_error: responses(2),
            requests_server_error: responses(3),
            duration: self.started.elapsed(),
        }
    }
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "depot: served for {:.1}s", self.duration.as_secs_f64())?;
        writeln!(f, "  written: {} objects, {}", self.objects_written, human_bytes(self.bytes_written))?;
        writeln!(f, "  read:    {} objects, {}", self.objects_read, human_bytes(self.bytes_read))?;
        write!(
            f,
            "  requests: {} ok, {} client errors, {} server errors",
            self.requests_ok, self.requests_client_error, self.requests_server_error
        )
    }
}

/// `1536` → `1.5 KiB`.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 { format!("{n} B") } else { format!("{value:.1} {}", UNITS[unit]) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_formats() {
        let stats = Stats::default();
        stats.object_written(1536);
        stats.object_read();
        stats.bytes_sent(10);
        stats.response(StatusCode::OK);
        stats.response(StatusCode::NOT_FOUND);
        stats.response(StatusCode::INSUFFICIENT_STORAGE);
        let s = stats.summary();
        assert_eq!((s.objects_written, s.bytes_written, s.bytes_read), (1, 1536, 10));
        assert_eq!((s.requests_ok, s.requests_client_error, s.requests_server_error), (1, 1, 1));
        assert!(s.to_string().contains("1 objects, 1.5 KiB"), "{s}");
    }
}
