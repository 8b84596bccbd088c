//! End-to-end tests: the real `depot` (and `depot-agent`) binaries on loopback, driven by
//! real clients. One test binary, one module per topic.

mod agent_checkpoint;
mod agent_collect;
mod agent_faults;
mod agent_fetch;
mod agent_security;
mod agent_trust;
mod agent_view;
mod agent_view_cluster;
mod hostile_clients;
mod observability;
mod s3_contract;
mod s3_faults;
mod s3_listing;
mod s3_multipart;
mod serve_cli;
