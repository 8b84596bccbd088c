//! depot-agent.
