//! `depot-agent collect`: flags and output over `depot_agent::collect`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::bail;
use clap::Args;
use depot_agent::checkpoint::{Checkpoint, Identity, Settings};
use depot_agent::collect::{CollectJob, restore_command};
use depot_agent::fetch::CheckpointReport;
use depot_agent::manifest::ManifestSource;
use depot_agent::peer::{PeerDirectory, RetryPolicy, Timeouts};
use depot_agent::progress::Bar;
use depot_agent::storage::{Storage, StoreOptions};

use super::{
    CoordinatorArgs, EXIT_FAILURE, EXIT_INTERRUPTED, EXIT_MISSING, Leave, ManifestArgs, init_logging, parse_duration,
    parse_size, print_json, stop_signal,
};

#[derive(Debug, Args)]
pub struct CollectArgs {
    #[command(flatten)]
    manifest: ManifestArgs,
    /// The destination: s3://BUCKET/PREFIX?endpoint=...&force-path-style=true (Depot's archive or
    /// any S3), gcs://, azure://, or a directory.
    #[arg(long, value_name = "URL")]
    to: String,
    #[command(flatten)]
    coordinator: CoordinatorArgs,
    /// Files copied at once.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..=256))]
    concurrency: u16,
    /// Cap on the bytes per second read from each source node (e.g. 100MiB): nodes keep
    /// serving their cluster.
    #[arg(long, value_name = "BYTES", value_parser = parse_size)]
    max_rate: Option<u64>,
    /// Rounds of asking the nodes for a file whose holders are unreachable.
    #[arg(long, default_value_t = 6, value_parser = clap::value_parser!(u32).range(1..=100))]
    retries: u32,
    /// Give up on a holder that sends nothing for this long (e.g. 30s, 500ms).
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    stall_timeout: Duration,
    /// Deadline of one FileExists call.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    rpc_timeout: Duration,
    /// Where the checkpoint goes (default: the destination, under .depot-collect/; removed on
    /// success).
    #[arg(long, value_name = "URL")]
    checkpoint_storage: Option<String>,
    /// How often progress is written to the checkpoint.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    checkpoint_interval: Duration,
    /// The job's name: a re-run with the same name resumes its checkpoint.
    #[arg(long, default_value = "collect", value_name = "NAME")]
    task: String,
    /// Discard this task's checkpoint and start over (files already in the destination with
    /// the right digest are still not copied again).
    #[arg(long)]
    fresh: bool,
    /// Keep no checkpoint.
    #[arg(long, conflicts_with_all = ["checkpoint_storage", "fresh"])]
    no_checkpoint: bool,
    /// Lease of the checkpoint lock (refreshed every third of it).
    #[arg(long, default_value = "60s", value_parser = parse_duration, hide = true)]
    checkpoint_lease: Duration,
    /// Print the summary as one JSON object (and no progress bar).
    #[arg(long)]
    pub json: bool,
    /// Append logs to this file (default: warnings to stderr).
    #[arg(long, value_name = "FILE")]
    log_file: Option<PathBuf>,
}

pub async fn collect(args: CollectArgs) -> anyhow::Result<u8> {
    init_logging(args.log_file.as_deref(), "warn")?;
    let task_ok = !args.task.is_empty()
        && args.task.len() <= 64
        && args.task.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if !task_ok {
        bail!("--task {:?}: use 1 to 64 letters, digits, '-', '_' or '.'", args.task);
    }
    let ca = args.coordinator.ca()?;
    let Some(coordinator) = args.coordinator.connect(ca.as_ref())? else {
        bail!("collect needs --coordinator (or DEPOT_COORDINATOR) to find the nodes holding the files");
    };
    // Joins (a client-only certificate) when the peers are first needed; leaves at the end.
    let _leave = Leave(coordinator.clone());
    let options = StoreOptions { ca: ca.clone() };
    let dest = Storage::open(&args.to, &options)?;
    let key = args.manifest.crypter()?;
    let (manifest, meta_store, meta_key) =
        ManifestSource::parse(&args.manifest.meta, &options)?.load_located(key.as_ref()).await?;
    let checkpoint = if args.no_checkpoint {
        None
    } else {
        let store = match &args.checkpoint_storage {
            Some(url) => Storage::open(url, &options)?,
            None => dest.at(".depot-collect"),
        };
        let settings = Settings {
            store,
            task: args.task.clone(),
            interval: args.checkpoint_interval,
            lease: args.checkpoint_lease,
            fresh: args.fresh,
            // collect streams straight into the destination: no partial files are kept.
            partial_dir: std::env::temp_dir().join(format!("depot-collect-{}-unused", std::process::id())),
        };
        let identity = Identity {
            manifest_sha256: hex::encode(manifest.digest),
            backup_end_version: manifest.end_version,
            node_id: "collect".into(),
        };
        Some(Arc::new(Checkpoint::open(settings, identity).await?))
    };
    let bar = Arc::new(Bar::new(!args.json));
    let job = CollectJob {
        dest,
        meta: (meta_store, meta_key),
        directory: Arc::new(PeerDirectory::new(coordinator, None)),
        concurrency: usize::from(args.concurrency),
        max_rate: args.max_rate,
        retry: RetryPolicy { rounds: args.retries, ..RetryPolicy::default() },
        timeouts: Timeouts { rpc: args.rpc_timeout, stall: args.stall_timeout },
        progress: bar,
        checkpoint: checkpoint.clone(),
    };
    let keep_up = async {
        match &checkpoint {
            Some(checkpoint) => checkpoint.keep_up().await,
            None => std::future::pending().await,
        }
    };
    let result = tokio::select! {
        result = job.run(&manifest) => result,
        lost = keep_up => {
            return Err(anyhow::Error::from(lost.expect_err("keep_up returns only on error"))
                .context("stopped: another collect took over the checkpoint"));
        }
        () = stop_signal() => {
            let saved = match &checkpoint {
                Some(checkpoint) => match checkpoint.suspend().await {
                    Ok(()) => format!("progress saved in {}; run again to resume", checkpoint.location()),
                    Err(err) => format!("progress could not be saved: {err}"),
                },
                None => "run again: files already in the destination are not copied again".to_owned(),
            };
            eprintln!("depot-agent collect: interrupted; {saved}");
            return Ok(EXIT_INTERRUPTED);
        }
    };
    let mut summary = match result {
        Ok(summary) => summary,
        Err(err) => {
            if let Some(checkpoint) = &checkpoint
                && let Err(save) = checkpoint.suspend().await
            {
                tracing::warn!(%save, "cannot save the checkpoint");
            }
            return Err(err.into());
        }
    };
    if let Some(checkpoint) = &checkpoint {
        let mut report = CheckpointReport {
            location: checkpoint.location(),
            skipped_records: checkpoint.skipped().to_vec(),
            removed: summary.complete(),
            error: None,
        };
        let outcome = if summary.complete() { checkpoint.complete().await } else { checkpoint.suspend().await };
        if let Err(err) = outcome {
            report.removed = false;
            report.error = Some(err.to_string());
        }
        summary.checkpoint = Some(report);
    }
    let restore = summary.complete().then(|| restore_command(&args.to));
    if args.json {
        let mut value = serde_json::to_value(&summary)?;
        value["restore_command"] = serde_json::json!(restore);
        print_json(&value);
    } else {
        print!("{summary}");
        if let Some(restore) = &restore {
            println!("restore with:\n  {restore}");
        }
    }
    Ok(if summary.complete() {
        0
    } else if summary.failed.is_empty() {
        EXIT_MISSING
    } else {
        EXIT_FAILURE
    })
}
