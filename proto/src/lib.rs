//! Generated protobuf and gRPC code for Depot; nothing hand-written lives here.
//!
//! # Layout
//! - [`agent`]: the `NodeAgent` service every node runs (FileExists, ReadFile, Stat).
//! - [`registry`]: the coordinator's registry of live agents (Register, Heartbeat, ListPeers).
//! - [`brpb`]: the subset of kvproto's `backup` package needed to list a BR backup's files.
#![allow(missing_docs, clippy::all, clippy::pedantic)]

/// `depot.agent.v1`: the service each node agent serves to its peers.
pub mod agent {
    tonic::include_proto!("depot.agent.v1");
}

/// `depot.registry.v1`: the coordinator's registry of live agents.
pub mod registry {
    tonic::include_proto!("depot.registry.v1");
}

/// `backup`: kvproto's `brpb.proto` subset (BackupMeta, File, MetaFile).
pub mod brpb {
    tonic::include_proto!("backup");
}
