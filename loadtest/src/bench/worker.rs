//! One consumer of a benchmark arm, in a process of its own (`fanout-loadtest bench-worker`),
//! so that its CPU, memory and system calls are its own in `/proc`:
//! - `direct`: one rdkafka consumer in its own consumer group (what a service does today);
//! - `fanout`: one gRPC subscription through `fanout-client`, acking every record.
//!
//! Both keep the same books ([`Tally`]): which sequence numbers arrived (a bitset), how many
//! twice, the latency of each (receive time − produce time carried in the record) in an HDR
//! histogram, and an order-independent digest of the distinct (sequence number, partition)
//! set. A worker is done once it has every expected record, or when told to stop.
//!
//! Talking to the orchestrator, over stdin and stdout, one line each: the worker prints
//! `ready` once it can start (a direct consumer: its group joined and its partitions
//! assigned, paused; a subscriber: its process up), waits for `go`, reads (the direct
//! consumer resumes its partitions, the subscriber opens its stream), and prints
//! `result {json}` when done; a `stop` line makes it finish with what it has. It exits when
//! stdin closes, after the orchestrator has read its `/proc` figures. So neither arm's
//! measured time includes process start, and the direct arm's excludes its group join
//! (fanout's server joined its group before the arm began too).

use std::io::{BufRead, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use hdrhistogram::Histogram;
use parking_lot::Mutex;
use rdkafka::ClientConfig;
use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance};
use rdkafka::message::Message;
use serde::{Deserialize, Serialize};

use super::payload;
use super::result::KafkaTraffic;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    kind: Kind,
}

#[derive(Debug, clap::Subcommand)]
enum Kind {
    /// One rdkafka consumer in its own group.
    Direct {
        #[arg(long)]
        bootstrap: String,
        #[arg(long)]
        topic: String,
        #[arg(long)]
        group: String,
        /// librdkafka settings `key=value` (the arm's fetch settings).
        #[arg(long = "kafka-option", value_parser = parse_kv)]
        kafka_options: Vec<(String, String)>,
        #[command(flatten)]
        common: Common,
    },
    /// One gRPC subscription of a fanout server.
    Fanout {
        /// gRPC endpoint(s) of the server (as `fanout-client` discovery takes them).
        #[arg(long)]
        grpc: String,
        #[arg(long)]
        topic: String,
        #[arg(long)]
        subscription: String,
        /// Credits of the stream.
        #[arg(long, default_value_t = 1000)]
        credits: u32,
        #[command(flatten)]
        common: Common,
    },
}

#[derive(Debug, clap::Args)]
struct Common {
    /// Records expected: sequence numbers 0..expect.
    #[arg(long)]
    expect: u64,
    /// Records below this sequence number are counted but their latency is not (the
    /// start of a steady load, while every client settles).
    #[arg(long, default_value_t = 0)]
    latency_from: u64,
    /// Give up after this long.
    #[arg(long, default_value = "600s", value_parser = humantime::parse_duration)]
    timeout: Duration,
}

pub fn parse_kv(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
        _ => Err(format!("expected key=value, got '{s}'")),
    }
}

/// What a worker reports.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Report {
    /// Distinct expected records received.
    pub unique: u64,
    /// Records received again.
    pub duplicates: u64,
    /// Records that were not part of the run (sequence number out of range, bad payload).
    pub unexpected: u64,
    /// Wall clock (ns since the epoch) of the first and last distinct record.
    pub first_ns: u64,
    pub last_ns: u64,
    pub digest: u64,
    /// Latency histogram, nanoseconds: (value, count) of every recorded bucket.
    pub latency_ns: Vec<(u64, u64)>,
    /// The worker's own Kafka traffic (direct consumers only).
    pub kafka: Option<KafkaTraffic>,
    /// Why it ended early, if it did.
    pub error: Option<String>,
}

/// The books of one consumer.
#[derive(Debug)]
pub struct Tally {
    expect: u64,
    latency_from: u64,
    seen: Vec<u64>,
    unique: u64,
    duplicates: u64,
    unexpected: u64,
    first_ns: u64,
    last_ns: u64,
    digest: u64,
    hist: Histogram<u64>,
}

impl Tally {
    pub fn new(expect: u64, latency_from: u64) -> anyhow::Result<Self> {
        let words = usize::try_from(expect.div_ceil(64)).context("too many records")?;
        Ok(Self {
            expect,
            latency_from,
            seen: vec![0; words],
            unique: 0,
            duplicates: 0,
            unexpected: 0,
            first_ns: 0,
            last_ns: 0,
            digest: 0,
            // 1 µs .. 10 min at 3 significant digits.
            hist: Histogram::new_with_bounds(1_000, 600_000_000_000, 3)
                .context("latency histogram")?,
        })
    }

    /// Books one received record.
    pub fn record(&mut self, partition: i32, value: &[u8], now_ns: u64) {
        let Some((seq, produced_ns)) = payload::parse(value) else {
            self.unexpected += 1;
            return;
        };
        if seq >= self.expect {
            self.unexpected += 1;
            return;
        }
        let (w, bit) = ((seq / 64) as usize, 1u64 << (seq % 64));
        if self.seen[w] & bit != 0 {
            self.duplicates += 1;
            return;
        }
        self.seen[w] |= bit;
        self.unique += 1;
        if self.first_ns == 0 {
            self.first_ns = now_ns;
        }
        self.last_ns = now_ns;
        self.digest = self.digest.wrapping_add(payload::mix(seq, partition));
        if seq >= self.latency_from {
            let latency = now_ns.saturating_sub(produced_ns).max(1_000);
            let _ = self.hist.record(latency.min(self.hist.high()));
        }
    }

    pub fn complete(&self) -> bool {
        self.unique >= self.expect
    }

    pub fn unique(&self) -> u64 {
        self.unique
    }

    pub fn report(&self, kafka: Option<KafkaTraffic>, error: Option<String>) -> Report {
        Report {
            unique: self.unique,
            duplicates: self.duplicates,
            unexpected: self.unexpected,
            first_ns: self.first_ns,
            last_ns: self.last_ns,
            digest: self.digest,
            latency_ns: self
                .hist
                .iter_recorded()
                .map(|v| (v.value_iterated_to(), v.count_at_value()))
                .collect(),
            kafka,
            error,
        }
    }
}

pub fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// Lines from the orchestrator: `go` sets `go`, `stop` sets `stop`; the end of stdin sets
/// `closed` (and `stop`).
fn watch_stdin(go: Arc<AtomicBool>, stop: Arc<AtomicBool>, closed: Arc<AtomicBool>) {
    std::thread::spawn(move || {
        let stdin = std::io::stdin();
        for line in stdin.lock().lines() {
            match line {
                Ok(l) if l.trim() == "go" => go.store(true, Ordering::Release),
                Ok(l) if l.trim() == "stop" => stop.store(true, Ordering::Release),
                Ok(_) => {}
                Err(_) => break,
            }
        }
        stop.store(true, Ordering::Release);
        closed.store(true, Ordering::Release);
    });
}

/// `progress N` lines, at most four a second.
#[derive(Debug, Default)]
struct Progress {
    last: Option<Instant>,
}

impl Progress {
    fn maybe_say(&mut self, unique: u64) {
        if self
            .last
            .is_none_or(|t| t.elapsed() >= Duration::from_millis(250))
        {
            self.last = Some(Instant::now());
            say(&format!("progress {unique}"));
        }
    }
}

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// Prints the result and waits (bounded) for the orchestrator to close stdin.
fn finish(report: &Report, closed: &AtomicBool) -> anyhow::Result<()> {
    say(&format!("result {}", serde_json::to_string(report)?));
    let deadline = Instant::now() + Duration::from_secs(120);
    while !closed.load(Ordering::Acquire) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// Waits for `go` (or `stop`, or `timeout`); true once told to go.
fn wait_for_go(go: &AtomicBool, stop: &AtomicBool, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while !go.load(Ordering::Acquire) {
        if stop.load(Ordering::Acquire) || Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    true
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let go = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let closed = Arc::new(AtomicBool::new(false));
    watch_stdin(go.clone(), stop.clone(), closed.clone());
    let report = match args.kind {
        Kind::Direct {
            bootstrap,
            topic,
            group,
            kafka_options,
            common,
        } => direct(
            &bootstrap,
            &topic,
            &group,
            &kafka_options,
            &common,
            &go,
            &stop,
        )?,
        Kind::Fanout {
            grpc,
            topic,
            subscription,
            credits,
            common,
        } => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .context("tokio runtime")?
            .block_on(fanout(
                &grpc,
                &topic,
                &subscription,
                credits,
                &common,
                &go,
                &stop,
            ))?,
    };
    finish(&report, &closed)?;
    // The consumer is not dropped: leaving its group is not measured, and dropping an
    // rdkafka consumer can hang; the process ends here.
    std::process::exit(0)
}

/// The statistics of a direct consumer: its latest cumulative counters.
#[derive(Debug)]
struct StatsContext {
    latest: Mutex<KafkaTraffic>,
    reports: AtomicU64,
    assigned: AtomicBool,
    /// Until the orchestrator says go, assigned partitions stay paused.
    go: Arc<AtomicBool>,
}

impl ClientContext for StatsContext {
    fn stats_raw(&self, statistics: &[u8]) {
        if let Some(t) = payload::parse_stats(statistics) {
            *self.latest.lock() = t;
            self.reports.fetch_add(1, Ordering::AcqRel);
        }
    }
}

impl ConsumerContext for StatsContext {
    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(tpl) = rebalance
            && tpl.count() > 0
        {
            if !self.go.load(Ordering::Acquire)
                && let Err(e) = consumer.pause(tpl)
            {
                tracing::warn!(error = %e, "cannot pause the assigned partitions");
            }
            self.assigned.store(true, Ordering::Release);
        }
    }
}

fn direct(
    bootstrap: &str,
    topic: &str,
    group: &str,
    options: &[(String, String)],
    common: &Common,
    go: &Arc<AtomicBool>,
    stop: &AtomicBool,
) -> anyhow::Result<Report> {
    let mut cfg = ClientConfig::new();
    cfg.set("bootstrap.servers", bootstrap)
        .set("group.id", group)
        .set("client.id", format!("bench-direct-{group}"))
        .set("auto.offset.reset", "earliest")
        .set("enable.partition.eof", "false");
    for (k, v) in options {
        cfg.set(k, v);
    }
    let consumer: BaseConsumer<StatsContext> = cfg
        .create_with_context(StatsContext {
            latest: Mutex::new(KafkaTraffic::default()),
            reports: AtomicU64::new(0),
            assigned: AtomicBool::new(false),
            go: go.clone(),
        })
        .context("creating the consumer")?;
    consumer.subscribe(&[topic]).context("subscribe")?;
    let mut tally = Tally::new(common.expect, common.latency_from)?;
    let deadline = Instant::now() + common.timeout;
    let mut said_ready = false;
    let mut resumed = false;
    let mut error = None;
    let mut progress = Progress::default();
    while !tally.complete() {
        if said_ready && !resumed && go.load(Ordering::Acquire) {
            resumed = true;
            let assignment = consumer.assignment().context("the assignment")?;
            consumer
                .resume(&assignment)
                .context("resuming the partitions")?;
        }
        progress.maybe_say(tally.unique());
        if stop.load(Ordering::Acquire) {
            error = Some("stopped before every record arrived".to_owned());
            break;
        }
        if Instant::now() > deadline {
            error = Some(format!("timed out after {:?}", common.timeout));
            break;
        }
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                let now = now_ns();
                tally.record(m.partition(), m.payload().unwrap_or_default(), now);
            }
            Some(Err(e)) => tracing::warn!(error = %e, "consumer error"),
            None => {}
        }
        if !said_ready && consumer.context().assigned.load(Ordering::Acquire) {
            said_ready = true;
            say("ready");
        }
    }
    // The counters up to the end: wait for the next statistics report (bounded), polling
    // so that librdkafka can serve its callbacks.
    let before = consumer.context().reports.load(Ordering::Acquire);
    let until = Instant::now() + Duration::from_secs(5);
    while consumer.context().reports.load(Ordering::Acquire) == before && Instant::now() < until {
        let _ = consumer.poll(Duration::from_millis(50));
    }
    let kafka = *consumer.context().latest.lock();
    std::mem::forget(consumer);
    Ok(tally.report(Some(kafka), error))
}

async fn fanout(
    grpc: &str,
    topic: &str,
    subscription: &str,
    credits: u32,
    common: &Common,
    go: &Arc<AtomicBool>,
    stop: &Arc<AtomicBool>,
) -> anyhow::Result<Report> {
    let endpoints: Vec<String> = grpc.split(',').map(str::to_owned).collect();
    // Ready as soon as the process runs; the stream opens on `go`.
    say("ready");
    let (g, s) = (Arc::clone(go), Arc::clone(stop));
    let told = tokio::task::spawn_blocking(move || wait_for_go(&g, &s, Duration::from_secs(120)))
        .await
        .unwrap_or(false);
    if !told {
        return Ok(Tally::new(common.expect, common.latency_from)?
            .report(None, Some("stopped before it was told to go".to_owned())));
    }
    let mut sub = crate::multi::connect(
        &endpoints,
        topic,
        subscription,
        credits,
        Duration::from_secs(30),
    )
    .await?;
    let mut tally = Tally::new(common.expect, common.latency_from)?;
    let deadline = tokio::time::Instant::now() + common.timeout;
    let mut error = None;
    let mut progress = Progress::default();
    while !tally.complete() {
        progress.maybe_say(tally.unique());
        if stop.load(Ordering::Acquire) {
            error = Some("stopped before every record arrived".to_owned());
            break;
        }
        let r = tokio::time::timeout_at(
            deadline.min(tokio::time::Instant::now() + Duration::from_millis(200)),
            sub.next(),
        )
        .await;
        match r {
            Ok(Some(Ok(r))) => {
                let now = now_ns();
                tally.record(r.partition, r.value.as_deref().unwrap_or_default(), now);
                sub.ack(&r);
            }
            Ok(Some(Err(e))) => bail!("{topic}/{subscription}: {e}"),
            Ok(None) => bail!("{topic}/{subscription}: the subscriber ended"),
            Err(_) if tokio::time::Instant::now() >= deadline => {
                error = Some(format!("timed out after {:?}", common.timeout));
                break;
            }
            Err(_) => {}
        }
    }
    // The last acks reach the server before the figures are read.
    sub.close().await;
    Ok(tally.report(None, error))
}
