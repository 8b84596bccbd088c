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
//! - `archive`, `meta`, `digest`, `body`, `uploads`, `listing`, `marker`, `prechecks`, `s3`,
//!   `error`, `stats`: the S3 layer, re-exported from `depot-s3` (one S3 implementation,
//!   shared with the agents' views of a backup).
//! - [`metrics`]: Prometheus metrics (`/_depot/metrics`).
//! - [`status`]: everything under `/_depot/`: health, metrics, the status API and page, and
//!   `depot status`.
#![forbid(unsafe_code)]

pub mod cli;
pub mod cluster;
pub mod credentials;
pub mod metrics;
pub mod nodes_cli;
pub mod registry;
pub mod serve;
pub mod server;
pub mod status;
pub mod storage_url;
pub mod tls;

// The S3 layer lives in `depot-s3` (shared with the agent's view); these keep its modules at
// their old paths inside this crate.
pub use depot_s3::{archive, body, digest, error, listing, marker, meta, prechecks, s3, stats, uploads};
