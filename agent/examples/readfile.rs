//! Streams one file from a live peer with `ReadFile` and throws the bytes away: the transfer
//! protocol alone, without hashing or writing, for `scripts/bench-agent.sh`.
//!
//! Usage: `readfile COORDINATOR_URL JOIN_TOKEN NODE_ID PATH` (prints `bytes seconds`).

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
    let [_, url, token, node, path] = args.as_slice() else {
        return Err("usage: readfile COORDINATOR_URL JOIN_TOKEN NODE_ID PATH".into());
    };
    let coordinator = Coordinator::new(url, Secret::new(token.clone()), None)?;
    let peers = PeerDirectory::new(coordinator, None).peers(true).await?;
    let peer = peers.iter().find(|p| &p.node_id == node).ok_or_else(|| format!("no live node {node}"))?;
    let mut client = peer.client().ok_or("unusable peer address")?;
    let started = Instant::now();
    let request = ReadFileRequest { path: path.clone(), offset: 0 };
    let mut stream = client.read_file(request).await?.into_inner();
    let mut bytes = 0u64;
    while let Some(chunk) = stream.message().await? {
        bytes += chunk.data.len() as u64;
    }
    println!("{bytes} {:.6}", started.elapsed().as_secs_f64());
    Ok(())
}
