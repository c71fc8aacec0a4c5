//! The `stator` binary: every verb of the CLI.

mod bench;

use anyhow::Context;
use clap::{Parser, Subcommand};
use std::time::Duration;

/// stator: an orchestrator for stateful, real-time services.
#[derive(Parser)]
#[command(name = "stator", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Verb,
}

#[derive(Subcommand)]
enum Verb {
    /// Benchmarks that measure their baselines in the same run.
    Bench {
        #[command(subcommand)]
        which: BenchVerb,
    },
}

#[derive(Subcommand)]
enum BenchVerb {
    /// Write latency and throughput of a replicated partition vs etcd and Redis+WAIT.
    Replication {
        /// Members per partition group (1, 3 or 5).
        #[arg(long, default_value_t = 3)]
        replicas: usize,
        /// Concurrent clients; a comma-separated list measures each in turn.
        #[arg(long, value_delimiter = ',', default_value = "1")]
        clients: Vec<usize>,
        /// Bytes per written value.
        #[arg(long, default_value_t = 100)]
        value_bytes: usize,
        /// Measured seconds per run (after a 1 s warm-up).
        #[arg(long, default_value_t = 5)]
        duration: u64,
        /// Partition groups (leaders spread over the hosts).
        #[arg(long, default_value_t = 1)]
        partitions: u32,
        /// Baselines to leave out: etcd, redis-wait.
        #[arg(long, value_delimiter = ',')]
        skip: Vec<String>,
        /// Print the result as one JSON object on the last line.
        #[arg(long)]
        json: bool,
    },
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("STATOR_LOG").unwrap_or_else(|_| "warn".into()))
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting tokio")?;
    runtime.block_on(async move {
        match cli.command {
            Verb::Bench { which: BenchVerb::Replication { replicas, clients, value_bytes, duration, partitions, skip, json } } => {
                anyhow::ensure!(matches!(replicas, 1 | 3 | 5), "--replicas: must be 1, 3 or 5, got {replicas}");
                let opts = bench::replication::Options {
                    replicas,
                    clients,
                    value_bytes,
                    duration: Duration::from_secs(duration),
                    partitions,
                    skip,
                };
                let runs = bench::replication::run(&opts).await?;
                bench::print_runs(&runs, json);
                Ok(())
            }
        }
    })
}
