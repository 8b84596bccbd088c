//! depot-agent: serves a node's backup files to its peers and fetches the ones it lacks.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod auth;
pub mod digest;
pub mod manifest;
pub mod objstore;
pub mod registry;
pub mod service;
pub mod trust;
