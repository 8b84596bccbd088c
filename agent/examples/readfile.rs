//! Streams one file from a live peer with `ReadFile` and throws the bytes away: the transfer
//! protocol alone, without hashing or writing, for `scripts/bench-agent.sh`.
//!
//! Usage: `DEPOT_JOIN_TOKEN=... readfile COORDINATOR_URL NODE_ID PATH` (prints `bytes seconds`).
//! It joins as a client-only run, as `fetch` does, so the bytes cross mutual TLS.

use std::time::Instant;

use depot_agent::auth::Secret;
use depot_agent::peer::PeerDirectory;
use depot_agent::registry::Coordinator;
use depot_proto::agent::ReadFileRequest;

/// The agent binary's allocator, so this measures what `depot-agent` would do.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let [_, url, node, path] = args.as_slice() else {
        return Err("usage: DEPOT_JOIN_TOKEN=... readfile COORDINATOR_URL NODE_ID PATH".into());
    };
    let token = std::env::var("DEPOT_JOIN_TOKEN").map_err(|_| "set DEPOT_JOIN_TOKEN")?;
    let coordinator = Coordinator::new(url, Secret::new(token), None)?;
    let peers = PeerDirectory::new(coordinator, None).peers(true).await?;
    let peer = peers.iter().find(|p| &p.node_id == node).ok_or_else(|| format!("no live node {node}"))?;
    let started = Instant::now();
    let request = ReadFileRequest { path: path.clone(), offset: 0 };
    let mut stream = peer.read_file(request).await?;
    let mut bytes = 0u64;
    while let Some(chunk) = stream.next().await? {
        bytes += chunk.len() as u64;
    }
    println!("{bytes} {:.6}", started.elapsed().as_secs_f64());
    Ok(())
}
