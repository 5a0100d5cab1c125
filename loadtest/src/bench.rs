//! `run` and `sweep`: fanout (arm F) against N direct consumer groups (arm D), side by side
//! on the same Kafka, with the same records and fetch settings (VERIFY.md, "Benchmarks").
//!
//! Each cell (workload × record size × N) runs the arms one after the other:
//! - **D**: N `bench-worker direct` processes, each one rdkafka consumer in its own group;
//! - **F**: a fresh `fanout-server` (its own cluster name) with N subscriptions, and N
//!   `bench-worker fanout` processes, each one gRPC subscriber acking every record.
//!
//! A backlog cell produces its records once, before either arm starts, and both arms drain
//! the same topic. A steady cell gives each arm a fresh topic and produces the same records
//! (sequence numbers, keys, sizes) to it while the arm's consumers follow. Every consumer
//! books each record it gets (`worker::Tally`); the run checks that every consumer of both
//! arms got exactly the set Kafka acknowledged to the producer (an order-independent
//! digest of (sequence number, partition)), so the ratios compare equal work.
//!
//! Measured per arm: Kafka traffic of every Kafka client (librdkafka statistics: the
//! server's from its `/metrics`, which cover its ingest, catch-up, cursor, registry and
//! other clients; each direct consumer's its own), CPU-seconds, peak RSS and write system
//! calls of every process (`/proc`), records delivered and each consumer's rate, and the
//! end-to-end latency (receive − produce time, HDR histogram). Results go to a JSON file
//! after every cell; `report` turns them into tables and plots.

pub mod result;

mod cell;
mod child;
mod figures;
mod payload;
mod procfs;
mod produce;
pub mod report;
mod server;
mod svg;
pub mod worker;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tokio_util::sync::CancellationToken;

use self::cell::run_cell;
use self::figures::summary;
use self::result::{Results, Workload};
use self::server::ServerSpec;
use self::worker::parse_kv;

/// Settings shared by `run` and `sweep`.
#[derive(Debug, Clone, clap::Args)]
pub struct Common {
    /// Kafka bootstrap servers.
    #[arg(long, env = "FANOUT_KAFKA_BOOTSTRAP", default_value = "127.0.0.1:9092")]
    kafka_bootstrap: String,
    /// The fanout-server binary (default: next to this one).
    #[arg(long)]
    server_bin: Option<PathBuf>,
    /// One more flag for the server, e.g. `--server-arg=--partition-window-bytes=33554432`
    /// (repeatable).
    #[arg(long = "server-arg", allow_hyphen_values = true)]
    server_args: Vec<String>,
    /// librdkafka setting `key=value` for the Kafka consumers of both arms (repeatable).
    #[arg(long = "kafka-option", value_parser = parse_kv)]
    kafka_options: Vec<(String, String)>,
    /// Pin the arm's processes (server, subscribers, direct consumers) to these CPUs
    /// (`taskset -c` list, e.g. `1`).
    #[arg(long)]
    pin_arm: Option<String>,
    /// Pin this process (the producer) to these CPUs.
    #[arg(long)]
    pin_load: Option<String>,
    /// Pin the Kafka broker (every process whose command line runs `kafka.Kafka`).
    #[arg(long)]
    pin_broker: Option<String>,
    /// Credits of each fanout subscriber's stream.
    #[arg(long, default_value_t = 1000)]
    credits: u32,
    /// How long an arm may take after its load was produced before its consumers are
    /// stopped with what they have.
    #[arg(long, default_value = "180s", value_parser = humantime::parse_duration)]
    timeout: Duration,
    /// librdkafka statistics interval of every Kafka client in both arms, ms.
    #[arg(long, default_value_t = 1000)]
    stats_interval_ms: u64,
    /// Latency of a steady load counts from this long after its start (records before it
    /// are delivered and checked, not timed): the first fetches, group joins and stream
    /// starts are not the steady state.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    warm_up: Duration,
    /// Keep the benchmark topics (deleted after each cell by default).
    #[arg(long)]
    keep_topics: bool,
    /// Fail (exit 1) unless every consumer of every arm received exactly the records Kafka
    /// acknowledged to the producer (what CI runs).
    #[arg(long)]
    check: bool,
    /// Results file (JSON), rewritten after every cell.
    #[arg(long, default_value = "bench-results/results.json")]
    out: PathBuf,
}

/// Which arms to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Arms {
    Fanout,
    Direct,
    Both,
}

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    #[arg(long, value_enum, default_value_t = Arms::Both)]
    arm: Arms,
    /// N: direct consumer groups, or fanout subscriptions.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=256))]
    subscribers: u32,
    #[arg(long, default_value_t = 6, value_parser = clap::value_parser!(u32).range(1..=1000))]
    partitions: u32,
    /// Value size, bytes (at least 16: sequence number and produce time).
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u32).range(16..=1_048_576))]
    record_size: u32,
    /// Steady load: records per second, for `--duration`.
    #[arg(long, conflicts_with = "backlog", value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    rate: Option<u64>,
    /// Backlog: records produced before the consumers start.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=1_000_000_000))]
    backlog: Option<u64>,
    /// Length of a steady load.
    #[arg(long, default_value = "20s", value_parser = humantime::parse_duration)]
    duration: Duration,
    #[command(flatten)]
    common: Common,
}

#[derive(Debug, clap::Args)]
pub struct SweepArgs {
    /// Values of N.
    #[arg(long, value_delimiter = ',', default_value = "1,4,8,16")]
    subscribers: Vec<u32>,
    /// Record sizes, bytes.
    #[arg(long, value_delimiter = ',', default_value = "100,256,1024")]
    sizes: Vec<u32>,
    /// Workloads: `backlog`, or a steady rate in records/s.
    #[arg(long, value_delimiter = ',', default_value = "backlog,1000,50000")]
    workloads: Vec<String>,
    /// Records of a backlog.
    #[arg(long, default_value_t = 500_000)]
    backlog_records: u64,
    /// Length of a steady load.
    #[arg(long, default_value = "20s", value_parser = humantime::parse_duration)]
    duration: Duration,
    #[arg(long, default_value_t = 6)]
    partitions: u32,
    /// Stop starting cells after this long (the one running finishes).
    #[arg(long, default_value = "90m", value_parser = humantime::parse_duration)]
    max_time: Duration,
    #[command(flatten)]
    common: Common,
}

/// One cell to run.
#[derive(Debug, Clone, Copy)]
struct Plan {
    workload: Workload,
    subscribers: u32,
    partitions: u32,
    record_size: u32,
    records: u64,
}

impl Plan {
    fn label(&self) -> String {
        format!(
            "{} · {} B · N={}",
            self.workload.label(),
            self.record_size,
            self.subscribers
        )
    }
}

/// What every cell of a run shares.
#[derive(Debug)]
struct Ctx {
    common: Common,
    server: ServerSpec,
    worker_bin: PathBuf,
    logs: PathBuf,
    cancel: CancellationToken,
    /// The consumers' fetch settings, the same in both arms.
    direct_options: Vec<(String, String)>,
}

pub async fn run(args: RunArgs) -> anyhow::Result<()> {
    let workload = match (args.rate, args.backlog) {
        (Some(rate), None) => Workload::Steady {
            rate,
            seconds: args.duration.as_secs_f64(),
        },
        (None, Some(records)) => Workload::Backlog { records },
        _ => bail!("give either --rate R (with --duration) or --backlog M"),
    };
    let plan = plan(
        workload,
        args.subscribers,
        args.partitions,
        args.record_size,
    )?;
    execute(args.common, vec![plan], args.arm, None).await
}

pub async fn sweep(args: SweepArgs) -> anyhow::Result<()> {
    let mut plans = Vec::new();
    for w in &args.workloads {
        let workload = if w == "backlog" {
            Workload::Backlog {
                records: args.backlog_records,
            }
        } else {
            let rate: u64 = w
                .parse()
                .ok()
                .filter(|r| *r > 0)
                .with_context(|| format!("workload '{w}': expected `backlog` or a rate"))?;
            Workload::Steady {
                rate,
                seconds: args.duration.as_secs_f64(),
            }
        };
        for &size in &args.sizes {
            for &n in &args.subscribers {
                plans.push(plan(workload, n, args.partitions, size)?);
            }
        }
    }
    execute(args.common, plans, Arms::Both, Some(args.max_time)).await
}

fn plan(workload: Workload, subscribers: u32, partitions: u32, size: u32) -> anyhow::Result<Plan> {
    if !(1..=256).contains(&subscribers) {
        bail!("N must be within 1..=256, got {subscribers}");
    }
    if !(16..=1_048_576).contains(&size) {
        bail!("record size must be within 16..=1048576 bytes, got {size}");
    }
    if partitions == 0 {
        bail!("partitions must be at least 1");
    }
    let records = match workload {
        Workload::Backlog { records } => records,
        Workload::Steady { rate, seconds } => (rate as f64 * seconds).round() as u64,
    };
    if records == 0 {
        bail!("{}: no records to produce", workload.label());
    }
    Ok(Plan {
        workload,
        subscribers,
        partitions,
        record_size: size,
        records,
    })
}

async fn execute(
    common: Common,
    plans: Vec<Plan>,
    arms: Arms,
    max_time: Option<Duration>,
) -> anyhow::Result<()> {
    let exe = std::env::current_exe().context("locating this program")?;
    let server_bin = common.server_bin.clone().unwrap_or_else(|| {
        exe.parent()
            .unwrap_or_else(|| Path::new("."))
            .join("fanout-server")
    });
    let out_dir = common
        .out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or_else(|| Path::new("."))
        .to_path_buf();
    std::fs::create_dir_all(&out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
    let logs = out_dir.join("logs");
    std::fs::create_dir_all(&logs).with_context(|| format!("creating {}", logs.display()))?;

    let stats = (
        "statistics.interval.ms".to_owned(),
        common.stats_interval_ms.to_string(),
    );
    // The server's ingest consumer prefetches 16 MiB per partition and reads committed
    // records only; the direct consumers get the same. Options given go to both.
    let mut direct_options = vec![
        ("queued.max.messages.kbytes".to_owned(), "16384".to_owned()),
        ("isolation.level".to_owned(), "read_committed".to_owned()),
        stats.clone(),
    ];
    direct_options.extend(common.kafka_options.iter().cloned());
    let mut server_options = vec![stats];
    server_options.extend(common.kafka_options.iter().cloned());

    let mut machine = procfs::machine();
    machine.pinning = pinning(&common).await?;
    machine.kafka = std::env::var("FANOUT_KAFKA_VERSION").unwrap_or_else(|_| "4.3.1".into());
    let mut results = Results {
        command: std::env::args().collect::<Vec<_>>().join(" "),
        machine,
        commit: git_commit(),
        cells: Vec::new(),
        interrupted: false,
        warm_up_seconds: common.warm_up.as_secs_f64(),
    };

    let cancel = CancellationToken::new();
    let c = cancel.clone();
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            eprintln!("\nfanout-loadtest: stopping (Ctrl-C); what was measured is kept");
            c.cancel();
            // A second Ctrl-C ends at once (children have their own process group and
            // end when their stdin closes; the server is killed on drop).
            if tokio::signal::ctrl_c().await.is_ok() {
                std::process::exit(130);
            }
        }
    });
    let ctx = Ctx {
        server: ServerSpec {
            binary: server_bin,
            bootstrap: common.kafka_bootstrap.clone(),
            pin: common.pin_arm.clone(),
            kafka_options: server_options,
            extra: common.server_args.clone(),
            log: logs.join("fanout-server.log"),
        },
        worker_bin: exe,
        logs,
        cancel: cancel.clone(),
        direct_options,
        common,
    };

    let started = Instant::now();
    let total = plans.len();
    for (i, plan) in plans.iter().enumerate() {
        if cancel.is_cancelled() {
            results.interrupted = true;
            break;
        }
        if let Some(max) = max_time
            && started.elapsed() > max
        {
            eprintln!(
                "fanout-loadtest: --max-time {} reached; {} of {total} cells ran",
                humantime::format_duration(max),
                i
            );
            results.interrupted = true;
            break;
        }
        eprintln!("[{}/{total}] {}", i + 1, plan.label());
        let cell = run_cell(&ctx, plan, arms).await?;
        eprintln!("{}", summary(&cell));
        results.cells.push(cell);
        if cancel.is_cancelled() {
            results.interrupted = true;
        }
        write_results(&ctx.common.out, &results)?;
    }
    write_results(&ctx.common.out, &results)?;
    eprintln!(
        "fanout-loadtest: {} cell(s) in {}; results: {} (`fanout-loadtest report {}`)",
        results.cells.len(),
        humantime::format_duration(Duration::from_secs(started.elapsed().as_secs())),
        ctx.common.out.display(),
        ctx.common.out.display()
    );
    if ctx.common.check {
        let bad: Vec<String> = results
            .cells
            .iter()
            .filter(|c| {
                [&c.direct, &c.fanout]
                    .into_iter()
                    .flatten()
                    .any(|a| !a.consistent || a.missing > 0)
                    || (c.direct.is_some() && c.fanout.is_some() && c.same_records != Some(true))
            })
            .map(|c| {
                format!(
                    "{} · {} B · N={}",
                    c.workload.label(),
                    c.record_size,
                    c.subscribers
                )
            })
            .collect();
        if !bad.is_empty() {
            bail!(
                "--check: records missing or different between the arms in: {}",
                bad.join("; ")
            );
        }
        eprintln!(
            "fanout-loadtest: check passed: every consumer of every arm received exactly the records produced"
        );
    }
    if results.interrupted && cancel.is_cancelled() {
        bail!(
            "interrupted; the cells measured are in {}",
            ctx.common.out.display()
        );
    }
    Ok(())
}

fn write_results(path: &Path, results: &Results) -> anyhow::Result<()> {
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(results)?)
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

fn git_commit() -> Option<String> {
    let o = std::process::Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .output()
        .ok()?;
    let s = String::from_utf8(o.stdout).ok()?.trim().to_owned();
    (!s.is_empty() && o.status.success()).then_some(s)
}

/// Applies `--pin-load` and `--pin-broker` and describes the pinning.
async fn pinning(common: &Common) -> anyhow::Result<String> {
    let mut parts = Vec::new();
    if let Some(cpus) = &common.pin_load {
        taskset_all(std::process::id(), cpus).await?;
        parts.push(format!("load={cpus}"));
    }
    if let Some(cpus) = &common.pin_broker {
        let out = tokio::process::Command::new("pgrep")
            .args(["-f", "kafka\\.Kafka"])
            .output()
            .await
            .context("pgrep (to find the broker)")?;
        let pids: Vec<u32> = String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect();
        if pids.is_empty() {
            bail!("--pin-broker: no kafka.Kafka process found");
        }
        for pid in pids {
            taskset_all(pid, cpus).await?;
        }
        parts.push(format!("broker={cpus}"));
    }
    if let Some(cpus) = &common.pin_arm {
        parts.push(format!("arm={cpus}"));
    }
    Ok(if parts.is_empty() {
        "none".to_owned()
    } else {
        parts.join(" ")
    })
}

/// Pins every thread of `pid`.
async fn taskset_all(pid: u32, cpus: &str) -> anyhow::Result<()> {
    let st = tokio::process::Command::new("taskset")
        .args(["-a", "-p", "-c", cpus, &pid.to_string()])
        .stdout(std::process::Stdio::null())
        .status()
        .await
        .context("running taskset")?;
    if !st.success() {
        bail!("taskset -a -p -c {cpus} {pid} failed");
    }
    Ok(())
}

/// The machine this runs on (pinning `none`; the caller says otherwise).
pub fn machine() -> result::Machine {
    procfs::machine()
}
