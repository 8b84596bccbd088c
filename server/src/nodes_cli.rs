//! `depot nodes`: the joined nodes of a running `depot serve`, their removal, and join-token
//! rotation.
//!
//! It runs on the coordinator's machine: it finds the server through `ARCHIVE/.depot/server.json`
//! and proves itself with the admin token the server wrote to
//! `ARCHIVE/.depot/cluster/admin-token` (mode 0600), over the server's own port (trusting the
//! archive's CA when it serves HTTPS).

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::{Args, Subcommand};
use depot_proto::registry::registry_client::RegistryClient;
use depot_proto::registry::{ListNodesRequest, RemoveNodeRequest, RotateJoinTokenRequest};
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};

use crate::serve::{ServerInfo, admin_token_path};
use crate::storage_url::archive_path;

/// `depot nodes ...`
#[derive(Debug, Args)]
pub struct NodesArgs {
    /// The archive the coordinator serves (a directory or br:///DIR) [default: the "depot-archive"
    /// directory under the system temp directory, as `depot serve`].
    #[arg(long, env = "DEPOT_ARCHIVE", value_name = "DIR", global = true)]
    archive: Option<String>,
    /// Print JSON instead of a table.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    action: Option<Action>,
}

#[derive(Debug, Subcommand)]
enum Action {
    /// List the joined nodes (the default).
    List,
    /// Revoke a node's certificates: its peers refuse it within one heartbeat interval, and it
    /// needs the join token to come back (rotate it too if the node's host is not trusted).
    Remove {
        /// The node id, as `depot nodes` lists it.
        node_id: String,
    },
    /// Replace the join token; joined nodes keep working. Prints the new token.
    RotateJoinToken,
}

/// Runs `depot nodes`.
///
/// # Errors
/// When no server runs on the archive, or it refuses.
pub fn run(args: NodesArgs) -> anyhow::Result<()> {
    let archive = match &args.archive {
        Some(arg) => archive_path(arg)?,
        None => std::env::temp_dir().join("depot-archive"),
    };
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async move {
        let mut client = connect(&archive).await?;
        match args.action.unwrap_or(Action::List) {
            Action::List => {
                let nodes = client.list_nodes(admin(&archive, ListNodesRequest {})?).await?.into_inner().nodes;
                if args.json {
                    let list: Vec<_> = nodes
                        .iter()
                        .map(|n| {
                            serde_json::json!({
                                "node_id": n.node_id, "address": n.address, "serial": n.serial,
                                "certificate_not_after": n.certificate_not_after,
                                "last_seen_ms": n.last_seen_ms, "live": n.live, "client_only": n.client_only,
                                "view_endpoint": Some(&n.view_endpoint).filter(|e| !e.is_empty()),
                            })
                        })
                        .collect();
                    println!("{}", serde_json::Value::Array(list));
                    return Ok(());
                }
                println!(
                    "{:<24} {:<24} {:<22} {:<16} {:<16} S3 VIEW (on the node)",
                    "NODE", "ADDRESS", "CERTIFICATE EXPIRES", "LAST HEARD", "STATE"
                );
                for n in &nodes {
                    let expires = time::OffsetDateTime::from_unix_timestamp(n.certificate_not_after)
                        .ok()
                        .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
                        .unwrap_or_else(|| "-".into());
                    let heard = n.last_seen_ms.map_or_else(
                        || "not this run".to_owned(),
                        |ms| format!("{} ago", humantime::format_duration(Duration::from_secs(ms / 1000))),
                    );
                    let state = match (n.client_only, n.live) {
                        (true, _) => "fetch/verify run",
                        (false, true) => "live",
                        (false, false) => "silent",
                    };
                    let address = if n.address.is_empty() { "-" } else { &n.address };
                    let view = if n.view_endpoint.is_empty() { "-" } else { &n.view_endpoint };
                    println!("{:<24} {:<24} {:<22} {:<16} {state:<16} {view}", n.node_id, address, expires, heard);
                }
                println!("{} node(s)", nodes.len());
            }
            Action::Remove { node_id } => {
                let answer = client
                    .remove_node(admin(&archive, RemoveNodeRequest { node_id: node_id.clone() })?)
                    .await
                    .map_err(|s| anyhow::anyhow!("{}", s.message()))?
                    .into_inner();
                println!(
                    "removed node {node_id}: {} certificate(s) revoked; peers refuse it from their next heartbeat on",
                    answer.revoked
                );
                println!(
                    "  it cannot re-join without the join token; if that node's host may hold it, run `depot nodes rotate-join-token`"
                );
            }
            Action::RotateJoinToken => {
                let answer = client.rotate_join_token(admin(&archive, RotateJoinTokenRequest {})?).await?.into_inner();
                if args.json {
                    println!("{}", serde_json::json!({ "join_token": answer.join_token }));
                } else {
                    println!("new join token (joined nodes are not affected; new agents need it):");
                    println!("  {}", answer.join_token);
                }
            }
        }
        Ok(())
    })
}

fn admin<T>(archive: &Path, message: T) -> anyhow::Result<tonic::Request<T>> {
    let path = admin_token_path(&archive.join(depot_fs::STATE_DIR));
    let token = std::fs::read_to_string(&path).with_context(|| {
        format!("cannot read the admin token {} (run this as the user that runs `depot serve`)", path.display())
    })?;
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert("authorization", format!("Bearer {}", token.trim()).parse()?);
    Ok(request)
}

async fn connect(archive: &Path) -> anyhow::Result<RegistryClient<tonic::transport::Channel>> {
    let Some(info) = ServerInfo::running(archive) else {
        bail!(
            "no depot is serving {}: `depot nodes` talks to the running `depot serve` of that archive (pass --archive DIR)",
            archive.display()
        );
    };
    let mut endpoint = Endpoint::from_shared(info.endpoint.clone())?.connect_timeout(Duration::from_secs(3));
    if info.endpoint.starts_with("https://") {
        let ca: PathBuf = archive.join(depot_fs::STATE_DIR).join("tls").join("ca.pem");
        let pem = std::fs::read(&ca).with_context(|| format!("cannot read the archive's CA {}", ca.display()))?;
        endpoint = endpoint.tls_config(ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pem)))?;
    }
    let channel = endpoint
        .connect()
        .await
        .with_context(|| format!("cannot reach the depot serving {} at {}", archive.display(), info.endpoint))?;
    Ok(RegistryClient::new(channel))
}
