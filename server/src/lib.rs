//! depot-server.
