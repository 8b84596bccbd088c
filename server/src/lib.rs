//! `depot serve`: a short-lived S3-compatible endpoint over a local backup directory.
//!
//! # Layout
//! - [`cli`]: the command line (flags, banner, summary, logging, signals); only it prints.
//! - [`serve`]: `depot serve` end to end: lock, sweep, credentials, TLS, bind, run.
//! - [`server`]: the connection loop: TLS, HTTP/1+2, S3 vs gRPC dispatch, graceful drain.
//! - [`registry`]: the gRPC registry of agents: join, heartbeat, peers, renewal, removal.
//! - [`cluster`]: node certificates from the archive's CA, joined nodes, revoked serials.
//! - [`nodes_cli`]: `depot nodes` (list, remove, rotate-join-token) against a running server.
//! - [`tls`]: the generated CA and server certificate, or the operator's own.
//! - [`storage_url`]: the `s3://` URL nodes use; `br://` parsing.
//! - [`credentials`]: the generated (or given) bucket, access key, secret key, join token.
//! - [`archive`]: buckets as directories of the archive.
//! - [`meta`]: what Depot keeps about an object beyond its bytes (an extended attribute).
//! - [`digest`]: Content-MD5 / `x-amz-checksum-*` (header or trailer) computed and checked.
//! - [`body`]: streaming a request body into a temp file, hashing on the way.
//! - [`uploads`]: multipart uploads on disk: parts written in place, Complete, expiry.
//! - [`listing`]: keys in S3 order straight from the directory tree.
//! - [`marker`]: directory markers (the empty object `x/`) as a file inside the directory.
//! - [`prechecks`]: requests S3 refuses before authentication (presign expiry, OPTIONS).
//! - [`s3`]: the `s3s::S3` implementation, one module per operation family.
//! - [`error`]: every failure and the S3 error it becomes.
//! - [`stats`]: counters behind the shutdown summary.
//! - [`metrics`]: Prometheus metrics (`/_depot/metrics`).
//! - [`status`]: everything under `/_depot/`: health, metrics, the status API and page, and
//!   `depot status`.
#![forbid(unsafe_code)]

pub mod archive;
pub mod body;
pub mod cli;
pub mod cluster;
pub mod credentials;
pub mod digest;
pub mod error;
pub mod listing;
pub mod marker;
pub mod meta;
pub mod metrics;
pub mod nodes_cli;
pub mod prechecks;
pub mod registry;
pub mod s3;
pub mod serve;
pub mod server;
pub mod stats;
pub mod status;
pub mod storage_url;
pub mod tls;
pub mod uploads;
