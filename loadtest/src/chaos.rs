//! `chaos`: one reliability scenario of the sharding issue, end to end on a real Kafka.
//!
//! Starts `--shards` fanout-server processes of a random cluster (child processes, killed
//! whatever happens), creates `--topics` × `--partitions` random topics and registers them
//! with `--subscriptions` subscriptions (start earliest, ordering partition), produces at
//! `--rate` records/s with a sequence number per partition in every value, follows every
//! subscription on every shard endpoint (acking each record as soon as it is recorded),
//! injects the scenario's faults under load, stops producing, waits (bounded) until every
//! subscription received every produced record, stops the shards, reads the cursors topic,
//! writes `produced.jsonl`, `delivered.jsonl`, `cursors.jsonl` and `run.json` to `--out`
//! and runs the checker on them (see `check.rs`). Fails if a check fails.
//!
//! The shards run in their own process group (a Ctrl-C at the terminal reaches this process,
//! which kills them); `--out` holds their logs and, while they run, `shard-<i>.pid`.

mod cursors;
mod load;
mod scenario;
mod shards;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use load::{Recorder, now_ms};
pub use scenario::Scenario;
use shards::{ShardSpec, Shards};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::check::model::{Event, Owned, RunMeta, SubscriptionMeta};
use crate::check::{self, model};

fn duration(s: &str) -> Result<Duration, humantime::DurationError> {
    humantime::parse_duration(s)
}

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The fault to inject.
    #[arg(long, value_enum)]
    scenario: Scenario,
    /// Kafka bootstrap servers.
    #[arg(long, env = "FANOUT_KAFKA_BOOTSTRAP", default_value = "127.0.0.1:9092")]
    kafka_bootstrap: String,
    /// The fanout-server binary to run.
    #[arg(long, default_value = "target/debug/fanout-server")]
    server_bin: PathBuf,
    /// Shards started at first (`add-shard` adds one more).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u16).range(1..=16))]
    shards: u16,
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..=8))]
    topics: u16,
    #[arg(long, default_value_t = 6, value_parser = clap::value_parser!(i32).range(1..=64))]
    partitions: i32,
    /// Subscriptions, spread over the topics in turn.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=32))]
    subscriptions: u16,
    /// Records produced per second (over every partition of every topic).
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=50_000))]
    rate: u32,
    /// Credits (records in flight) of each subscriber stream.
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    credits: u32,
    /// The shards' Kafka group session timeout (6 s is the broker's minimum).
    #[arg(long, default_value = "6s", value_parser = duration)]
    session_timeout: Duration,
    /// The shards' `--drain-timeout`.
    #[arg(long, default_value = "5s", value_parser = duration)]
    drain_timeout: Duration,
    /// The shards' `--cursor-flush-interval`.
    #[arg(long, default_value = "1s", value_parser = duration)]
    cursor_flush_interval: Duration,
    /// Load before the first fault.
    #[arg(long, default_value = "5s", value_parser = duration)]
    warmup: Duration,
    /// Load after the last step.
    #[arg(long, default_value = "5s", value_parser = duration)]
    tail: Duration,
    /// Longest wait for a started shard's `/readyz`.
    #[arg(long, default_value = "90s", value_parser = duration)]
    ready_timeout: Duration,
    /// Longest wait, after each step, for every partition to have exactly one live owner.
    #[arg(long, default_value = "60s", value_parser = duration)]
    settle_timeout: Duration,
    /// Longest wait, after producing stopped, for every subscription to receive everything.
    #[arg(long, default_value = "120s", value_parser = duration)]
    catch_up_timeout: Duration,
    /// Give up on the whole run after this long.
    #[arg(long, default_value = "20m", value_parser = duration)]
    max_duration: Duration,
    /// gRPC of shard i on 127.0.0.1:(P+i), admin on P+100+i (default: a free range).
    #[arg(long)]
    base_port: Option<u16>,
    /// Where to write the run's files (default: $TMPDIR/fanout-chaos/<scenario>-<cluster>).
    #[arg(long)]
    out: Option<PathBuf>,
}

/// The state of a run the scenario steps work on.
#[derive(Debug)]
pub struct Run {
    /// The shard processes (killed when the run is dropped).
    pub shards: Shards,
    /// The run's topics, each with `partitions` partitions: what must have one owner.
    pub topics: Vec<String>,
    pub partitions: i32,
    /// The shards' group session timeout: how long `pause` stops a shard (× 3).
    pub session_timeout: Duration,
    /// The shards' drain timeout: how long a SIGTERM'd shard may take (+ 30 s).
    pub drain_timeout: Duration,
    /// Longest wait for a started shard's `/readyz`.
    ready_timeout: Duration,
    /// Longest wait for the cluster to settle after a step.
    settle_timeout: Duration,
    /// What happened, for `run.json`.
    events: Vec<Event>,
    /// Ownership when the cluster last settled.
    last_owners: BTreeMap<usize, Owned>,
    /// For the `+12.3s` of progress lines.
    started: Instant,
    /// The same, as wall-clock time (events and deliveries use it).
    started_at_ms: i64,
}

impl Run {
    fn say(&self, what: &str) {
        eprintln!(
            "chaos: +{:.1}s {what}",
            self.started.elapsed().as_secs_f64()
        );
    }

    pub fn event(&mut self, kind: &str, shard: Option<usize>, partitions: Owned, detail: String) {
        self.event_at(now_ms(), kind, shard, partitions, detail);
    }

    /// The same, at a time taken earlier (ms since the Unix epoch).
    pub fn event_at(
        &mut self,
        at_ms: i64,
        kind: &str,
        shard: Option<usize>,
        partitions: Owned,
        detail: String,
    ) {
        let mut line = kind.to_owned();
        if let Some(i) = shard {
            line.push_str(&format!(" shard-{i}"));
        }
        if !partitions.is_empty() {
            line.push_str(&format!(" {partitions:?}"));
        }
        if !detail.is_empty() {
            line.push_str(&format!(": {detail}"));
        }
        self.say(&line);
        self.events.push(Event {
            at_ms,
            kind: kind.into(),
            shard,
            partitions,
            detail,
        });
    }

    /// What shard i owned when the cluster last settled.
    pub fn owned_by(&self, i: usize) -> Owned {
        self.last_owners.get(&i).cloned().unwrap_or_default()
    }

    /// Lets the load run for `d`.
    pub async fn under_load(&self, d: Duration) {
        tokio::time::sleep(d).await;
    }

    pub async fn wait_ready(&mut self, i: usize) -> anyhow::Result<()> {
        let t = Instant::now();
        self.shards.wait_ready(i, self.ready_timeout).await?;
        self.event(
            "ready",
            Some(i),
            Owned::new(),
            format!("after {:.1} s", t.elapsed().as_secs_f64()),
        );
        Ok(())
    }

    /// Starts shard i and waits until it is ready.
    pub async fn start_shard(&mut self, i: usize) -> anyhow::Result<()> {
        self.shards.start(i)?;
        self.event("start", Some(i), Owned::new(), String::new());
        self.wait_ready(i).await
    }

    /// Waits (bounded) until every partition has exactly one live owner, the same on two
    /// looks a second apart; records `settled` or `unsettled`. Returns the ownership seen
    /// last.
    pub async fn settle(&mut self, step: &str) -> BTreeMap<usize, Owned> {
        let t = Instant::now();
        let mut previous: Option<BTreeMap<usize, Owned>> = None;
        let mut why = String::from("no answer yet");
        while t.elapsed() < self.settle_timeout {
            match self.shards.ownership().await {
                Some((owners, complete_view)) => {
                    let problems = shards::settle_problems(&owners, &self.topics, self.partitions);
                    if problems.is_empty() && previous.as_ref() == Some(&owners) {
                        let counts: Vec<String> = owners
                            .iter()
                            .map(|(i, o)| {
                                format!("shard-{i} {}", o.values().map(Vec::len).sum::<usize>())
                            })
                            .collect();
                        let view = if complete_view {
                            ""
                        } else {
                            "; no shard's GET /v1/shards lists every live shard"
                        };
                        self.event(
                            "settled",
                            None,
                            Owned::new(),
                            format!(
                                "{step}, after {:.1} s: {}{view}",
                                t.elapsed().as_secs_f64(),
                                counts.join(", ")
                            ),
                        );
                        self.last_owners = owners.clone();
                        return owners;
                    }
                    why = if problems.is_empty() {
                        "ownership still changing".into()
                    } else {
                        let n = problems.len();
                        let mut p = problems;
                        p.truncate(4);
                        format!("{n} partitions: {}", p.join(", "))
                    };
                    previous = Some(owners);
                }
                None => {
                    why = "a live shard did not answer GET /v1/shards".into();
                    previous = None;
                }
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        self.event(
            "unsettled",
            None,
            Owned::new(),
            format!(
                "{step}: not settled within {:?}: {why}",
                self.settle_timeout
            ),
        );
        previous.unwrap_or_default()
    }
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let cluster = format!("chaos-{:08x}", rand::random::<u32>());
    let out = args.out.clone().unwrap_or_else(|| {
        std::env::temp_dir()
            .join("fanout-chaos")
            .join(format!("{}-{cluster}", args.scenario.name()))
    });
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    // A reused directory must not lend an earlier run's files to this run's check.
    for f in [
        "produced.jsonl",
        "delivered.jsonl",
        "cursors.jsonl",
        "run.json",
    ] {
        let _ = std::fs::remove_file(out.join(f));
    }
    let count = args.scenario.endpoints(args.shards as usize);
    let base_port = match args.base_port {
        Some(p) => p,
        None => shards::free_base_port(count)?,
    };
    let mut spec = ShardSpec {
        bin: args.server_bin.clone(),
        kafka: args.kafka_bootstrap.clone(),
        cluster: cluster.clone(),
        base_port,
        session_timeout: args.session_timeout,
        drain_timeout: args.drain_timeout,
        cursor_flush_interval: args.cursor_flush_interval,
        log_dir: out.clone(),
        has_session_timeout: false,
        has_advertise: false,
    };
    spec.probe_flags()?;
    eprintln!(
        "chaos: {} on cluster {cluster}: {} shards (gRPC from 127.0.0.1:{base_port}, admin from {}), {} records/s; files and shard logs in {}",
        args.scenario.name(),
        args.shards,
        base_port as usize + 100,
        args.rate,
        out.display()
    );
    let run = Run {
        shards: Shards::new(spec, count),
        topics: (0..args.topics)
            .map(|t| format!("{cluster}-t{t}"))
            .collect(),
        partitions: args.partitions,
        session_timeout: args.session_timeout,
        drain_timeout: args.drain_timeout,
        ready_timeout: args.ready_timeout,
        settle_timeout: args.settle_timeout,
        events: Vec::new(),
        last_owners: BTreeMap::new(),
        started: Instant::now(),
        started_at_ms: now_ms(),
    };
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("SIGTERM handler")?;
    // Dropping the run (on any of these ends) kills the shards it still runs.
    let ran = tokio::select! {
        r = tokio::time::timeout(args.max_duration, drive(&args, run, &out)) => {
            r.unwrap_or_else(|_| Err(anyhow!("the run took longer than --max-duration {:?}", args.max_duration)))
        }
        _ = tokio::signal::ctrl_c() => Err(anyhow!("interrupted")),
        _ = term.recv() => Err(anyhow!("terminated")),
    };
    ran?;
    let input = check::load(
        &out.join("produced.jsonl"),
        &out.join("delivered.jsonl"),
        None,
        None,
        None,
    )?;
    let report = check::analyse(&input);
    print!("{}", report.render());
    println!("files: {}", out.display());
    if report.failed() > 0 {
        bail!(
            "{}: {} of {} checks failed",
            args.scenario.name(),
            report.failed(),
            report.checks.len()
        );
    }
    Ok(())
}

/// Starts the cluster and the load, runs the scenario, winds down and writes the files.
async fn drive(args: &Args, mut run: Run, out: &Path) -> anyhow::Result<()> {
    let initial = args.shards as usize;
    for i in 0..initial {
        run.shards.start(i)?;
        run.event("start", Some(i), Owned::new(), String::new());
    }
    for i in 0..initial {
        run.wait_ready(i).await?;
    }
    let subs = register(args, &run).await?;
    run.settle("after registering the topics").await;

    let (rec, writer) = Recorder::new(&subs, &out.join("delivered.jsonl"))?;
    let stop_subs = CancellationToken::new();
    let endpoints = run.shards.endpoints();
    let mut followers: Vec<JoinHandle<anyhow::Result<()>>> = Vec::new();
    for i in 0..subs.len() {
        let (e, rec, stop) = (endpoints.clone(), rec.clone(), stop_subs.clone());
        followers.push(tokio::spawn(load::follow(e, i, args.credits, rec, stop)));
    }
    let stop_producing = CancellationToken::new();
    let producer = tokio::spawn(load::produce(
        args.kafka_bootstrap.clone(),
        run.topics.clone(),
        run.partitions,
        args.rate,
        stop_producing.clone(),
        rec.clone(),
    ));
    let progress = {
        let (rec, stop, started) = (rec.clone(), stop_subs.clone(), run.started);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(3));
            loop {
                tokio::select! {
                    _ = tick.tick() => eprintln!("chaos: +{:.1}s {}", started.elapsed().as_secs_f64(), rec.progress()),
                    _ = stop.cancelled() => break,
                }
            }
        })
    };

    run.say("load running");
    run.under_load(args.warmup).await;
    if let Err(e) = scenario::run(args.scenario, &mut run).await {
        run.event("error", None, Owned::new(), format!("{e:#}"));
    }
    run.under_load(args.tail).await;

    stop_producing.cancel();
    match tokio::time::timeout(Duration::from_secs(90), producer).await {
        Ok(Ok(r)) => r?,
        Ok(Err(e)) => bail!("producer task: {e}"),
        Err(_) => bail!("the producer did not stop within 90 s"),
    }
    run.say(&format!("stopped producing: {}", rec.progress()));
    let deadline = Instant::now() + args.catch_up_timeout;
    loop {
        let missing = rec.incomplete();
        if missing.is_empty() {
            run.say("every subscription received every produced record");
            break;
        }
        if Instant::now() > deadline {
            run.event(
                "incomplete",
                None,
                Owned::new(),
                format!(
                    "after {:?}: {} still missing records",
                    args.catch_up_timeout,
                    missing.join(", ")
                ),
            );
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    stop_subs.cancel();
    for f in followers {
        match tokio::time::timeout(Duration::from_secs(20), f).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => run.event("error", None, Owned::new(), format!("subscriber: {e:#}")),
            Ok(Err(e)) => run.event("error", None, Owned::new(), format!("subscriber task: {e}")),
            Err(_) => run.say("a subscriber did not stop within 20 s"),
        }
    }
    let _ = progress.await;
    let produced = rec.produced_rows();
    let produce_failures = rec.failures.load(std::sync::atomic::Ordering::Relaxed);
    drop(rec);
    let delivered = tokio::time::timeout(Duration::from_secs(30), writer)
        .await
        .map_err(|_| anyhow!("the delivery log writer did not finish within 30 s"))?
        .context("delivery log writer")??;
    run.say(&format!(
        "{} records produced, {delivered} deliveries recorded; stopping the shards",
        produced.len()
    ));
    run.shards
        .stop_all(run.drain_timeout + Duration::from_secs(30))
        .await;

    model::write_jsonl(&out.join("produced.jsonl"), &produced)?;
    match cursors::read(
        &args.kafka_bootstrap,
        &run.shards.spec.cluster,
        Duration::from_secs(60),
    )
    .await
    {
        Ok(c) => model::write_jsonl(&out.join("cursors.jsonl"), &c)?,
        Err(e) => run.event(
            "error",
            None,
            Owned::new(),
            format!("reading the cursors topic: {e:#}"),
        ),
    }
    let meta = RunMeta {
        scenario: args.scenario.name().into(),
        cluster: run.shards.spec.cluster.clone(),
        shards: run.shards.meta(),
        topics: run.topics.clone(),
        partitions: run.partitions,
        subscriptions: subs,
        rate: args.rate,
        session_timeout_ms: args.session_timeout.as_millis() as u64,
        drain_timeout_ms: args.drain_timeout.as_millis() as u64,
        cursor_flush_interval_ms: args.cursor_flush_interval.as_millis() as u64,
        credits: args.credits,
        started_at_ms: run.started_at_ms,
        produce_failures,
        events: std::mem::take(&mut run.events),
    };
    model::write_meta(&out.join("run.json"), &meta)?;
    Ok(())
}

/// Creates the topics in Kafka, registers them and creates the subscriptions (through
/// shard 0's admin API).
async fn register(args: &Args, run: &Run) -> anyhow::Result<Vec<SubscriptionMeta>> {
    let admin = run.shards.spec.meta(0).admin;
    let http = reqwest::Client::new();
    for t in &run.topics {
        crate::demo::create_topic(&args.kafka_bootstrap, t, run.partitions).await?;
        crate::demo::ensure(
            &http,
            format!("{admin}/v1/topics"),
            serde_json::json!({ "name": t }),
        )
        .await?;
    }
    let subs: Vec<SubscriptionMeta> = (0..args.subscriptions as usize)
        .map(|i| SubscriptionMeta {
            topic: run.topics[i % run.topics.len()].clone(),
            name: format!("sub-{i}"),
        })
        .collect();
    for s in &subs {
        crate::demo::ensure(
            &http,
            format!("{admin}/v1/topics/{}/subscriptions", s.topic),
            serde_json::json!({ "name": s.name, "start": "earliest", "ordering": "partition" }),
        )
        .await?;
    }
    run.say(&format!(
        "registered {} topics and {} subscriptions",
        run.topics.len(),
        subs.len()
    ));
    Ok(subs)
}
