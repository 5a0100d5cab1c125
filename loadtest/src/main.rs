//! `fanout-loadtest`: load generator and benchmark harness for fanout.
//!
//! `demo` produces sample events to a topic and follows several subscriptions of it,
//! printing live per-subscription counts (what `scripts/demo` runs). `isolation` measures
//! G10 (what `scripts/bench-isolation` runs). `chaos` runs one reliability scenario of
//! several shards under load and checks it (what `scripts/chaos` runs); `check` checks a
//! run's files again offline.

// A command-line tool: stdout is its output.
#![allow(clippy::print_stdout)]

mod bench;
mod chaos;
mod check;
mod demo;
mod isolation;
mod multi;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Where Kafka and the fanout server under test are.
#[derive(Debug, clap::Args)]
pub struct Endpoints {
    /// Kafka bootstrap servers.
    #[arg(long, env = "FANOUT_KAFKA_BOOTSTRAP", default_value = "127.0.0.1:9092")]
    pub kafka_bootstrap: String,
    /// Admin API of the fanout server.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub admin: String,
    /// gRPC endpoint of the fanout server (`demo`: comma-separated, every shard's).
    #[arg(long, default_value = "http://127.0.0.1:50051")]
    pub grpc: String,
}

#[derive(Debug, Parser)]
#[command(
    name = "fanout-loadtest",
    version,
    about = "Load generator and benchmarks for fanout"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Produce sample events and follow several subscriptions, with live counts.
    Demo(demo::Args),
    /// G10: fast subscriptions' drain rate with and without one throttled to 10%.
    Isolation(isolation::Args),
    /// A reliability scenario on several shards under load (kill, SIGTERM, pause, add), checked.
    Chaos(chaos::Args),
    /// Checks a chaos run's files: lost, duplicates, order, the scenario's expectations.
    Check(check::Args),
    /// Benchmark: fanout against N direct consumer groups, one workload, side by side.
    Run(bench::RunArgs),
    /// Benchmark: the matrix of N, record sizes and workloads (bounded by --max-time).
    Sweep(bench::SweepArgs),
    /// Benchmark report: results JSON (and isolation / criterion figures) → markdown + SVG.
    Report(bench::report::Args),
    /// One consumer of a benchmark arm (started by `run` and `sweep`).
    #[command(hide = true)]
    BenchWorker(bench::worker::Args),
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Check(args) => check::run(args),
        Command::Report(args) => bench::report::run(args),
        // A worker runs its own runtime (or none), sized for one consumer.
        Command::BenchWorker(args) => bench::worker::run(args),
        command => match tokio::runtime::Runtime::new() {
            Ok(rt) => rt.block_on(async move {
                match command {
                    Command::Demo(args) => demo::run(args).await,
                    Command::Isolation(args) => isolation::run(args).await,
                    Command::Chaos(args) => chaos::run(args).await,
                    Command::Run(args) => bench::run(args).await,
                    Command::Sweep(args) => bench::sweep(args).await,
                    Command::Check(_) | Command::Report(_) | Command::BenchWorker(_) => Ok(()),
                }
            }),
            Err(e) => Err(anyhow::anyhow!("tokio runtime: {e}")),
        },
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("fanout-loadtest: {e:#}");
            ExitCode::FAILURE
        }
    }
}
