//! `fanout`: command-line client for fanout.
//!
//! `fanout subscribe --topic T --subscription S` prints records as they arrive and acks them.

use std::io::Write;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand, ValueEnum};
use fanout_client::{Record, Subscriber, SubscriberConfig};

#[derive(Debug, Parser)]
#[command(name = "fanout", version, about = "Command-line client for fanout")]
struct Cli {
    /// gRPC endpoint of a fanout server.
    #[arg(
        long,
        global = true,
        env = "FANOUT_SERVER",
        default_value = "http://127.0.0.1:50051"
    )]
    server: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print a subscription's records as they arrive, acking each one.
    Subscribe {
        #[arg(long)]
        topic: String,
        #[arg(long)]
        subscription: String,
        /// Stop after this many records.
        #[arg(long)]
        count: Option<u64>,
        /// Records in flight (credits).
        #[arg(long, default_value_t = 500)]
        max_in_flight: u32,
        /// Do not ack: records stay unacked and come again later.
        #[arg(long)]
        no_ack: bool,
        #[arg(long, value_enum, default_value = "pretty")]
        output: Output,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Output {
    /// One human-readable line per record.
    Pretty,
    /// One JSON object per line.
    Json,
}

fn text(b: &Option<bytes::Bytes>) -> String {
    match b {
        None => "null".into(),
        Some(b) => String::from_utf8_lossy(b).into_owned(),
    }
}

fn print(out: &mut impl Write, r: &Record, format: Output) -> std::io::Result<()> {
    match format {
        Output::Pretty => writeln!(
            out,
            "{}/{}@{} attempt={} key={} value={}",
            r.topic,
            r.partition,
            r.offset,
            r.attempt,
            text(&r.key),
            text(&r.value)
        ),
        Output::Json => {
            let headers: serde_json::Map<String, serde_json::Value> = r
                .headers
                .iter()
                .map(|(k, v)| {
                    (
                        k.clone(),
                        v.as_ref()
                            .map(|v| String::from_utf8_lossy(v).into_owned())
                            .into(),
                    )
                })
                .collect();
            let v = serde_json::json!({
                "topic": &*r.topic,
                "partition": r.partition,
                "offset": r.offset,
                "attempt": r.attempt,
                "timestamp_ms": r.timestamp_ms,
                "key": r.key.as_ref().map(|k| String::from_utf8_lossy(k).into_owned()),
                "value": r.value.as_ref().map(|v| String::from_utf8_lossy(v).into_owned()),
                "headers": headers,
            });
            writeln!(out, "{v}")
        }
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match cli.command {
        Command::Subscribe {
            topic,
            subscription,
            count,
            max_in_flight,
            no_ack,
            output,
        } => {
            let cfg = SubscriberConfig::new(&cli.server, &topic, &subscription)
                .max_in_flight(max_in_flight);
            let mut sub = match Subscriber::connect(cfg).await {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("fanout: {e}");
                    return ExitCode::FAILURE;
                }
            };
            let started = Instant::now();
            let mut seen = 0u64;
            let mut stdout = std::io::stdout().lock();
            let mut last_report = Instant::now();
            let code = loop {
                if count.is_some_and(|c| seen >= c) {
                    break ExitCode::SUCCESS;
                }
                let next = tokio::select! {
                    r = sub.next() => r,
                    _ = tokio::signal::ctrl_c() => break ExitCode::SUCCESS,
                };
                match next {
                    None => break ExitCode::SUCCESS,
                    Some(Err(e)) => {
                        eprintln!("fanout: {e}");
                        break ExitCode::FAILURE;
                    }
                    Some(Ok(r)) => {
                        if print(&mut stdout, &r, output).is_err() {
                            // stdout closed (e.g. piped into head): stop quietly.
                            break ExitCode::SUCCESS;
                        }
                        if !no_ack {
                            sub.ack(&r);
                        }
                        seen += 1;
                        if last_report.elapsed() > Duration::from_secs(5) {
                            let rate = seen as f64 / started.elapsed().as_secs_f64();
                            eprintln!("fanout: {seen} records ({rate:.0}/s)");
                            last_report = Instant::now();
                        }
                    }
                }
            };
            let _ = stdout.flush();
            sub.close().await;
            eprintln!(
                "fanout: {seen} records in {:.1}s",
                started.elapsed().as_secs_f64()
            );
            code
        }
    }
}
