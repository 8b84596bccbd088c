//! depot-agent: serves a node's backup files to its peers and fetches the ones it lacks.
//!
//! A BR backup to `local://` storage leaves each TiKV's SST files on that node's own disk; a
//! restore then needs every file on every node. The agent runs on each node: it serves the
//! node's backup directory to its peers (`NodeAgent`: `FileExists`, `ReadFile`, `Stat`), keeps
//! itself listed with the coordinator (`depot serve`), and `fetch` copies in the files a backup
//! lists that this node lacks, from whichever live peer holds them, verified by size and
//! SHA-256. This is BR's "when an SST file is missing, try to copy from its peer", made into a
//! tool for an air-gapped cluster.
//!
//! # Layout
//! - [`service`]: the `NodeAgent` gRPC service over a root directory (safe names, streaming
//!   reads from an offset, cached digests) and [`service::serve`].
//! - [`identity`]: this node's key and certificate (renewed in place), agent-to-agent mutual
//!   TLS, who a caller is ([`identity::PeerIdentity`]).
//! - [`auth`]: the join token and node secret ([`auth::Secret`]) and the per-call check of a
//!   caller's certificate ([`auth::RequirePeer`]).
//! - [`registry`]: the coordinator's registry from the agent's side: join (CSR in, certificate
//!   out), heartbeat, renewal, list peers, deregister.
//! - [`peer`]: [`peer::PeerReader`], the peer-fallback reader (local if present, else from the
//!   least busy live holder, verified, resumable from an offset, with bounded retries).
//! - [`manifest`]: BR `backupmeta` v1/v2 (kvproto field numbers, encrypted ones with a key) and
//!   JSON-lines manifests.
//! - [`storage`]: a local directory or an S3/GCS/Azure bucket prefix (`object_store`), for manifests,
//!   checkpoints and archives; BR's URL forms.
//! - [`fetch`]: the `fetch` job: local check, concurrent fetch, summary, the [`fetch::Recorder`]
//!   hook.
//! - [`checkpoint`]: what makes a long fetch resumable: recorded files, a lease lock, the
//!   job's identity, partial transfers kept between runs.
//! - [`verify`]: which live nodes hold each file (by `Stat`, no data moved).
//! - [`jobs`]: job progress files (`.depot/jobs/`), read into the heartbeat's report.
//! - [`metrics`]: Prometheus metrics and health checks over HTTP (`--metrics ADDR`).
//! - [`view`]: the S3 view of a backup (`serve --s3-listen`): local files first, peers on
//!   demand, verified, cached; served by `depot-s3`, the same S3 code as `depot serve`.
//! - [`node`]: running an agent: bind, register, serve, heartbeat, stop cleanly.
//! - [`digest`], [`trust`], [`progress`]: SHA-256 of files, extra CAs, the progress bar.
//!
//! The binary (`src/main.rs`) only parses flags, calls these, prints and picks the exit code.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod archive;
pub mod auth;
pub mod checkpoint;
pub mod collect;
pub mod digest;
pub mod fetch;
pub mod identity;
pub mod jobs;
pub mod manifest;
pub mod metrics;
pub mod node;
pub mod peer;
pub mod progress;
pub mod registry;
pub mod service;
pub mod storage;
mod transport;
pub mod trust;
pub mod verify;
pub mod view;
