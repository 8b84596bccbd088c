//! Depot's one S3 implementation: the `s3s::S3` trait over a [`storage::Storage`].
//!
//! Two storages use it: the archive directory of `depot serve` ([`archive::Archive`], every
//! operation), and each agent's view of a backup (`depot-agent serve --s3-listen`, in the
//! agent crate: reads from local files, the cache and live peers; writes into a local area).
//!
//! # Layout
//! - [`storage`]: what the S3 layer needs from where objects live: a key as a local file, a
//!   listing, and the archive that takes writes.
//! - [`archive`]: buckets as directories of the archive.
//! - [`meta`]: what Depot keeps about an object beyond its bytes (an extended attribute).
//! - [`digest`]: Content-MD5 / `x-amz-checksum-*` (header or trailer) computed and checked.
//! - [`body`]: streaming a request body into a temp file, hashing on the way.
//! - [`uploads`]: multipart uploads on disk: parts written in place, Complete, expiry.
//! - [`listing`]: keys in S3 order straight from the directory tree, and merging listings.
//! - [`marker`]: directory markers (the empty object `x/`) as a file inside the directory.
//! - [`prechecks`]: requests S3 refuses before authentication (presign expiry, OPTIONS).
//! - [`s3`]: the `s3s::S3` implementation, one module per operation family.
//! - [`auth`]: the one access key a server accepts.
//! - [`http`]: the s3s service, the per-request fixes, an S3-only accept loop.
//! - [`error`]: every failure and the S3 error it becomes.
//! - [`stats`]: counters behind the shutdown summary.
#![forbid(unsafe_code)]

pub mod archive;
pub mod auth;
pub mod body;
pub mod digest;
pub mod error;
pub mod http;
pub mod listing;
pub mod marker;
pub mod meta;
pub mod prechecks;
pub mod s3;
pub mod stats;
pub mod storage;
pub mod uploads;
