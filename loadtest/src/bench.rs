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

mod child;
mod payload;
mod procfs;
mod produce;
pub mod report;
mod server;
mod svg;
pub mod worker;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use indicatif::{ProgressBar, ProgressStyle};
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions};
use rdkafka::client::DefaultClientContext;
use tokio_util::sync::CancellationToken;

use self::child::Worker;
use self::produce::{Load, Produced};
use self::result::{Arm, Cell, KafkaTraffic, Latency, Process, Results, Workload};
use self::server::{Server, ServerSpec};
use self::worker::{Report, parse_kv};

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
    /// Keep the benchmark topics (deleted after each cell by default).
    #[arg(long)]
    keep_topics: bool,
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

fn short_id() -> String {
    format!("{:08x}", rand::random::<u32>())
}

async fn kafka_admin(bootstrap: &str) -> anyhow::Result<AdminClient<DefaultClientContext>> {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .context("Kafka admin client")
}

async fn delete_topics(bootstrap: &str, topics: &[String]) {
    if topics.is_empty() {
        return;
    }
    let Ok(admin) = kafka_admin(bootstrap).await else {
        return;
    };
    let names: Vec<&str> = topics.iter().map(String::as_str).collect();
    if let Err(e) = admin
        .delete_topics(
            &names,
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(30))),
        )
        .await
    {
        tracing::warn!(error = %e, "deleting benchmark topics");
    }
}

fn bar(len: u64, label: &str) -> ProgressBar {
    let pb = ProgressBar::new(len);
    pb.set_style(
        ProgressStyle::with_template(
            "  {prefix:>8} [{bar:30}] {human_pos}/{human_len} {per_sec:>12} {elapsed} {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    pb.set_prefix(label.to_owned());
    pb
}

/// Produces `plan`'s records to `topic` (on a thread), with a progress bar.
async fn produce(
    ctx: &Ctx,
    plan: &Plan,
    topic: &str,
    rate: Option<u64>,
    pb: Option<ProgressBar>,
) -> anyhow::Result<(Arc<Produced>, tokio::task::JoinHandle<anyhow::Result<()>>)> {
    let load = Load {
        bootstrap: ctx.common.kafka_bootstrap.clone(),
        topic: topic.to_owned(),
        count: plan.records,
        size: plan.record_size as usize,
        rate,
    };
    let produced = Arc::new(Produced::default());
    let sent = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let (p, s, st) = (produced.clone(), sent.clone(), stop.clone());
    let handle = tokio::task::spawn_blocking(move || produce::produce(&load, &p, &s, &st));
    let cancel = ctx.cancel.clone();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                () = cancel.cancelled() => { stop.store(true, Ordering::Release); break; }
                () = tokio::time::sleep(Duration::from_millis(200)) => {
                    if let Some(pb) = &pb { pb.set_position(sent.load(Ordering::Acquire)); }
                    if stop.load(Ordering::Acquire) { break; }
                }
            }
        }
    });
    Ok((produced, handle))
}

async fn create_topic(ctx: &Ctx, topic: &str, partitions: u32) -> anyhow::Result<()> {
    crate::demo::create_topic(
        &ctx.common.kafka_bootstrap,
        topic,
        i32::try_from(partitions).context("partitions")?,
    )
    .await
}

async fn run_cell(ctx: &Ctx, plan: &Plan, arms: Arms) -> anyhow::Result<Cell> {
    let started_at = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
    let id = short_id();
    let mut topics = Vec::new();
    let mut cell = Cell {
        workload: plan.workload,
        subscribers: plan.subscribers,
        partitions: plan.partitions,
        record_size: plan.record_size,
        records: plan.records,
        started_at,
        direct: None,
        fanout: None,
        same_records: None,
    };
    // A backlog is produced once; both arms drain it.
    let backlog = if let Workload::Backlog { .. } = plan.workload {
        let topic = format!("bench-{id}-backlog");
        create_topic(ctx, &topic, plan.partitions).await?;
        topics.push(topic.clone());
        let pb = bar(plan.records, "produce");
        let (produced, handle) = produce(ctx, plan, &topic, None, Some(pb.clone())).await?;
        let r = handle.await.context("producer thread")?;
        pb.finish_and_clear();
        r?;
        Some((topic, produced))
    } else {
        None
    };
    let mut expected = Vec::new();
    for arm in [Arms::Direct, Arms::Fanout] {
        if ctx.cancel.is_cancelled() || (arms != Arms::Both && arms != arm) {
            continue;
        }
        let name = if arm == Arms::Direct {
            "direct"
        } else {
            "fanout"
        };
        let (topic, produced) = match &backlog {
            Some((t, p)) => (t.clone(), Some(p.clone())),
            None => {
                let t = format!("bench-{id}-{name}");
                create_topic(ctx, &t, plan.partitions).await?;
                topics.push(t.clone());
                (t, None)
            }
        };
        let r = if arm == Arms::Direct {
            run_direct(ctx, plan, &topic, produced, &id).await
        } else {
            run_fanout(ctx, plan, &topic, produced, &id).await
        };
        let (a, digest) = match r {
            Ok(x) => x,
            Err(e) => {
                if !ctx.common.keep_topics {
                    delete_topics(&ctx.common.kafka_bootstrap, &topics).await;
                }
                return Err(e.context(format!("{} arm of {}", name, plan.label())));
            }
        };
        expected.push(digest);
        if arm == Arms::Direct {
            cell.direct = Some(a);
        } else {
            cell.fanout = Some(a);
        }
    }
    if let (Some(d), Some(f)) = (&cell.direct, &cell.fanout) {
        cell.same_records = Some(
            d.consistent
                && f.consistent
                && d.record_digest == f.record_digest
                && expected.windows(2).all(|w| w[0] == w[1]),
        );
    }
    if !ctx.common.keep_topics {
        delete_topics(&ctx.common.kafka_bootstrap, &topics).await;
    }
    Ok(cell)
}

/// Arm D. Returns the arm and the digest Kafka acknowledged to the producer.
async fn run_direct(
    ctx: &Ctx,
    plan: &Plan,
    topic: &str,
    produced: Option<Arc<Produced>>,
    id: &str,
) -> anyhow::Result<(Arm, u64)> {
    let mut workers = Vec::new();
    let log = ctx.logs.join("workers.log");
    let go = Instant::now();
    let go_ns = worker::now_ns();
    for i in 0..plan.subscribers {
        let mut cmd = child::command(&ctx.worker_bin, ctx.common.pin_arm.as_deref());
        cmd.args(["bench-worker", "direct"])
            .args(["--bootstrap", &ctx.common.kafka_bootstrap])
            .args(["--topic", topic])
            .args(["--group", &format!("bench-{id}-direct-{i}")])
            .args(["--expect", &plan.records.to_string()]);
        for (k, v) in &ctx.direct_options {
            cmd.arg("--kafka-option").arg(format!("{k}={v}"));
        }
        cmd.process_group(0);
        workers.push(Worker::spawn(format!("direct-{i}"), cmd, &log)?);
    }
    let (reports, samples, digest, go_ns) = drive(
        ctx,
        plan,
        topic,
        produced,
        &mut workers,
        "direct",
        go,
        go_ns,
    )
    .await?;
    let mut processes = Vec::new();
    for (w, s) in workers.iter().zip(&samples) {
        processes.push(process("consumer", w.pid(), s));
    }
    let mut kafka = KafkaTraffic::default();
    for r in &reports {
        if let Some(k) = &r.kafka {
            kafka.add(k);
        }
    }
    for w in workers {
        w.close().await;
    }
    let by_client = [("consumer".to_owned(), kafka)].into_iter().collect();
    let arm = arm(
        "direct", plan, &reports, go_ns, digest, kafka, processes, by_client,
    )?;
    Ok((arm, digest))
}

/// Arm F.
async fn run_fanout(
    ctx: &Ctx,
    plan: &Plan,
    topic: &str,
    produced: Option<Arc<Produced>>,
    id: &str,
) -> anyhow::Result<(Arm, u64)> {
    let server = Server::start(&ctx.server, &format!("bench-{id}")).await?;
    let r = run_fanout_on(ctx, plan, topic, produced, &server).await;
    server.stop().await;
    r
}

async fn run_fanout_on(
    ctx: &Ctx,
    plan: &Plan,
    topic: &str,
    produced: Option<Arc<Produced>>,
    server: &Server,
) -> anyhow::Result<(Arm, u64)> {
    let http = server.http();
    crate::demo::ensure(
        http,
        format!("{}/v1/topics", server.admin),
        serde_json::json!({ "name": topic }),
    )
    .await?;
    for i in 0..plan.subscribers {
        crate::demo::ensure(
            http,
            format!("{}/v1/topics/{topic}/subscriptions", server.admin),
            serde_json::json!({ "name": format!("sub-{i}"), "start": "earliest" }),
        )
        .await?;
    }
    let server_before = procfs::sample(server.pid())?;
    let traffic_before = server.kafka_traffic().await?;
    let mut workers = Vec::new();
    let log = ctx.logs.join("workers.log");
    let go = Instant::now();
    let go_ns = worker::now_ns();
    for i in 0..plan.subscribers {
        let mut cmd = child::command(&ctx.worker_bin, ctx.common.pin_arm.as_deref());
        cmd.args(["bench-worker", "fanout"])
            .args(["--grpc", &server.grpc])
            .args(["--topic", topic])
            .args(["--subscription", &format!("sub-{i}")])
            .args(["--credits", &ctx.common.credits.to_string()])
            .args(["--expect", &plan.records.to_string()]);
        cmd.process_group(0);
        workers.push(Worker::spawn(format!("fanout-{i}"), cmd, &log)?);
    }
    let (reports, samples, digest, go_ns) = drive(
        ctx,
        plan,
        topic,
        produced,
        &mut workers,
        "fanout",
        go,
        go_ns,
    )
    .await?;
    // The server's librdkafka statistics up to the end: one more report of every client.
    tokio::time::sleep(Duration::from_millis(
        ctx.common.stats_interval_ms * 3 / 2 + 100,
    ))
    .await;
    let traffic = server::traffic_since(&server.kafka_traffic().await?, &traffic_before);
    let server_after = procfs::sample(server.pid())?;
    let mut processes = vec![process(
        "server",
        server.pid(),
        &server_after.since(&server_before),
    )];
    for (w, s) in workers.iter().zip(&samples) {
        processes.push(process("subscriber", w.pid(), s));
    }
    for w in workers {
        w.close().await;
    }
    let mut kafka = KafkaTraffic::default();
    for t in traffic.values() {
        kafka.add(t);
    }
    let arm = arm(
        "fanout", plan, &reports, go_ns, digest, kafka, processes, traffic,
    )?;
    Ok((arm, digest))
}

type Measured = (Vec<Report>, Vec<procfs::Sample>, u64, u64);

/// Starts the load (steady: once every worker reads), waits for every worker's result
/// (stopping them at the deadline or on Ctrl-C), and samples their `/proc` counters.
/// Returns the reports, the samples, the producer's digest and the start (ns).
#[allow(clippy::too_many_arguments)]
async fn drive(
    ctx: &Ctx,
    plan: &Plan,
    topic: &str,
    produced: Option<Arc<Produced>>,
    workers: &mut [Worker],
    name: &str,
    mut go: Instant,
    mut go_ns: u64,
) -> anyhow::Result<Measured> {
    let pb = bar(plan.records * u64::from(plan.subscribers), name);
    let (produced, producer) = match produced {
        Some(p) => (p, None),
        None => {
            // Steady: every consumer reads before the first record is produced.
            for w in workers.iter_mut() {
                w.wait_ready(Duration::from_secs(60)).await?;
            }
            let Workload::Steady { rate, .. } = plan.workload else {
                bail!("a backlog cell without its backlog");
            };
            go = Instant::now();
            go_ns = worker::now_ns();
            let (p, h) = produce(ctx, plan, topic, Some(rate), None).await?;
            (p, Some(h))
        }
    };
    let mut producer = producer;
    let mut load_done: Option<Instant> = if producer.is_none() { Some(go) } else { None };
    let mut stop_deadline: Option<Instant> = None;
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    loop {
        tick.tick().await;
        pb.set_position(workers_progress(workers));
        if workers.iter().all(Worker::is_done) {
            break;
        }
        if let Some(h) = &producer
            && h.is_finished()
        {
            if let Some(h) = producer.take() {
                h.await.context("producer thread")??;
            }
            load_done = Some(Instant::now());
        }
        let late = load_done.is_some_and(|t| t.elapsed() > ctx.common.timeout);
        match stop_deadline {
            None if late || ctx.cancel.is_cancelled() => {
                if late {
                    pb.println(format!(
                        "  {name}: stopping the consumers: not done {} after the load",
                        humantime::format_duration(ctx.common.timeout)
                    ));
                }
                for w in workers.iter_mut() {
                    w.stop().await;
                }
                stop_deadline = Some(Instant::now() + Duration::from_secs(30));
            }
            Some(t) if Instant::now() > t => bail!("{name}: consumers did not stop within 30 s"),
            _ => {}
        }
    }
    if let Some(h) = producer.take() {
        h.await.context("producer thread")??;
    }
    pb.finish_and_clear();
    let samples = workers
        .iter()
        .map(Worker::sample)
        .collect::<anyhow::Result<Vec<_>>>()?;
    let reports = workers
        .iter()
        .map(Worker::take_result)
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok((reports, samples, produced.digest(), go_ns))
}

fn workers_progress(workers: &[Worker]) -> u64 {
    workers
        .iter()
        .map(|w| w.progress.load(Ordering::Relaxed))
        .sum()
}

fn process(role: &str, pid: u32, s: &procfs::Sample) -> Process {
    Process {
        role: role.to_owned(),
        pid,
        cpu_seconds: s.user_seconds + s.system_seconds,
        user_seconds: s.user_seconds,
        system_seconds: s.system_seconds,
        peak_rss_bytes: s.peak_rss_bytes,
        write_syscalls: s.write_syscalls,
    }
}

/// An arm's figures from its workers' reports.
#[allow(clippy::too_many_arguments)]
fn arm(
    name: &str,
    plan: &Plan,
    reports: &[Report],
    go_ns: u64,
    digest: u64,
    kafka: KafkaTraffic,
    processes: Vec<Process>,
    kafka_by_client: std::collections::BTreeMap<String, KafkaTraffic>,
) -> anyhow::Result<Arm> {
    let mut hist = hdrhistogram::Histogram::<u64>::new_with_bounds(1_000, 600_000_000_000, 3)
        .context("latency histogram")?;
    let mut delivered = 0;
    let mut duplicates = 0;
    let mut missing = 0;
    let mut last = go_ns;
    let mut rates = Vec::new();
    for r in reports {
        delivered += r.unique;
        duplicates += r.duplicates;
        missing += plan.records.saturating_sub(r.unique);
        last = last.max(r.last_ns);
        let secs = r.last_ns.saturating_sub(go_ns) as f64 / 1e9;
        rates.push(if secs > 0.0 {
            r.unique as f64 / secs
        } else {
            0.0
        });
        for &(v, c) in &r.latency_ns {
            let _ = hist.record_n(v.clamp(1_000, hist.high()), c);
        }
    }
    let consistent = !reports.is_empty()
        && reports
            .iter()
            .all(|r| r.digest == digest && r.unique == plan.records && r.unexpected == 0);
    Ok(Arm {
        arm: name.to_owned(),
        wall_seconds: last.saturating_sub(go_ns) as f64 / 1e9,
        delivered,
        duplicates,
        missing,
        consumer_rates: rates,
        kafka,
        kafka_by_client,
        processes,
        latency: latency(&hist),
        record_digest: reports.first().map_or(0, |r| r.digest),
        consistent,
    })
}

fn latency(h: &hdrhistogram::Histogram<u64>) -> Latency {
    if h.is_empty() {
        return Latency::default();
    }
    let us = |ns: u64| ns as f64 / 1e3;
    let mut cdf = Vec::new();
    for q in CDF_POINTS {
        cdf.push((us(h.value_at_quantile(q)), q));
    }
    Latency {
        count: h.len(),
        p50_us: us(h.value_at_quantile(0.5)),
        p99_us: us(h.value_at_quantile(0.99)),
        p999_us: us(h.value_at_quantile(0.999)),
        max_us: us(h.max()),
        mean_us: h.mean() / 1e3,
        cdf,
    }
}

/// Fractions at which the latency CDF is sampled.
const CDF_POINTS: [f64; 24] = [
    0.0, 0.01, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.97, 0.98, 0.99, 0.995,
    0.998, 0.999, 0.9995, 0.9999, 0.99995, 0.99999, 1.0,
];

/// One line per arm and the main ratios, for the terminal.
fn summary(cell: &Cell) -> String {
    let line = |a: &Arm| {
        format!(
            "  {:<6} {:>10.0} rec/s  wall {:>6.1} s  kafka rx {:>8.1} MiB  fetches {:>6}  cpu {:>6.2} s  p50 {:>7.2} ms  p99 {:>7.2} ms  missing {}  dups {}",
            a.arm,
            a.delivered as f64 / a.wall_seconds.max(1e-9),
            a.wall_seconds,
            a.kafka.rx_bytes as f64 / (1024.0 * 1024.0),
            a.kafka.fetch_requests,
            a.cpu_total(),
            a.latency.p50_us / 1e3,
            a.latency.p99_us / 1e3,
            a.missing,
            a.duplicates,
        )
    };
    let mut s = String::new();
    for a in [&cell.direct, &cell.fanout].into_iter().flatten() {
        s.push_str(&line(a));
        s.push('\n');
    }
    if let (Some(d), Some(f)) = (&cell.direct, &cell.fanout) {
        s.push_str(&format!(
            "  F/D: egress {:.3} (goal ≤ {:.3})  cpu {:.3}  same records: {}",
            f.kafka.rx_bytes as f64 / d.kafka.rx_bytes.max(1) as f64,
            1.01 / f64::from(cell.subscribers),
            f.cpu_total() / d.cpu_total().max(1e-9),
            cell.same_records.unwrap_or(false)
        ));
    }
    s
}
