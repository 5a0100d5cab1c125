//! One cell: its topics and load, arm D and arm F one after the other, each driven until
//! its consumers are done (or stopped), and the record sets of both arms compared.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use indicatif::{ProgressBar, ProgressStyle};
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions};
use rdkafka::client::DefaultClientContext;

use super::child::{self, Worker};
use super::figures::{arm, process};
use super::produce::{self, Load, Produced};
use super::result::{Arm, Cell, KafkaTraffic, Workload};
use super::server::{self, Server};
use super::worker::{self, Report};
use super::{Arms, Ctx, Plan, procfs};

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
fn produce(
    ctx: &Ctx,
    plan: &Plan,
    topic: &str,
    rate: Option<u64>,
    pb: Option<ProgressBar>,
) -> (Arc<Produced>, tokio::task::JoinHandle<anyhow::Result<()>>) {
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
    let handle = tokio::task::spawn_blocking(move || {
        let r = produce::produce(&load, &p, &s, &st);
        // Ends the progress task below.
        st.store(true, Ordering::Release);
        r
    });
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
    (produced, handle)
}

/// The first sequence number whose latency counts: a steady load's first `--warm-up`.
fn latency_from(ctx: &Ctx, plan: &Plan) -> u64 {
    match plan.workload {
        Workload::Steady { rate, .. } => {
            ((rate as f64 * ctx.common.warm_up.as_secs_f64()) as u64).min(plan.records / 2)
        }
        Workload::Backlog { .. } => 0,
    }
}

async fn create_topic(ctx: &Ctx, topic: &str, partitions: u32) -> anyhow::Result<()> {
    crate::demo::create_topic(
        &ctx.common.kafka_bootstrap,
        topic,
        i32::try_from(partitions).context("partitions")?,
    )
    .await
}

pub(super) async fn run_cell(ctx: &Ctx, plan: &Plan, arms: Arms) -> anyhow::Result<Cell> {
    let mut topics = Vec::new();
    let r = run_cell_on(ctx, plan, arms, &mut topics).await;
    // Whatever happened, the cell's topics go (unless asked to keep them).
    if !ctx.common.keep_topics {
        delete_topics(&ctx.common.kafka_bootstrap, &topics).await;
    }
    r
}

async fn run_cell_on(
    ctx: &Ctx,
    plan: &Plan,
    arms: Arms,
    topics: &mut Vec<String>,
) -> anyhow::Result<Cell> {
    let started_at = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
    let id = short_id();
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
        let (produced, handle) = produce(ctx, plan, &topic, None, Some(pb.clone()));
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
            // The server's internal topics go with the cell's.
            topics.push(format!("__bench-{id}_registry"));
            topics.push(format!("__bench-{id}_cursors"));
            run_fanout(ctx, plan, &topic, produced, &id).await
        };
        let (a, digest) = r.with_context(|| format!("{} arm of {}", name, plan.label()))?;
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
    Ok(cell)
}

/// Starts `plan.subscribers` workers of `kind` (`direct` or `fanout`) on `topic`, each in
/// its own process group (a Ctrl-C meant for the benchmark must not end them), with the
/// arguments `extra(i)` of worker `i` besides the ones every worker takes.
fn spawn_workers(
    ctx: &Ctx,
    plan: &Plan,
    topic: &str,
    kind: &str,
    extra: impl Fn(u32) -> Vec<String>,
) -> anyhow::Result<Vec<Worker>> {
    let log = ctx.logs.join("workers.log");
    (0..plan.subscribers)
        .map(|i| {
            let mut cmd = child::command(&ctx.worker_bin, ctx.common.pin_arm.as_deref());
            cmd.args(["bench-worker", kind])
                .args(["--topic", topic])
                .args(["--expect", &plan.records.to_string()])
                .args(["--latency-from", &latency_from(ctx, plan).to_string()])
                .args(extra(i))
                .process_group(0);
            Worker::spawn(format!("{kind}-{i}"), cmd, &log)
        })
        .collect()
}

/// Arm D. Returns the arm and the digest Kafka acknowledged to the producer.
async fn run_direct(
    ctx: &Ctx,
    plan: &Plan,
    topic: &str,
    produced: Option<Arc<Produced>>,
    id: &str,
) -> anyhow::Result<(Arm, u64)> {
    let mut workers = spawn_workers(ctx, plan, topic, "direct", |i| {
        let mut args = vec!["--bootstrap".to_owned(), ctx.common.kafka_bootstrap.clone()];
        args.extend(["--group".to_owned(), format!("bench-{id}-direct-{i}")]);
        for (k, v) in &ctx.direct_options {
            args.extend(["--kafka-option".to_owned(), format!("{k}={v}")]);
        }
        args
    })?;
    let (reports, samples, digest, go_ns) =
        drive(ctx, plan, topic, produced, &mut workers, "direct").await?;
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
    let mut workers = spawn_workers(ctx, plan, topic, "fanout", |i| {
        vec![
            "--grpc".to_owned(),
            server.grpc.clone(),
            "--subscription".to_owned(),
            format!("sub-{i}"),
            "--credits".to_owned(),
            ctx.common.credits.to_string(),
        ]
    })?;
    let (reports, samples, digest, go_ns) =
        drive(ctx, plan, topic, produced, &mut workers, "fanout").await?;
    // The server's librdkafka statistics up to the end: one more report of every client.
    tokio::time::sleep(Duration::from_millis(
        ctx.common.stats_interval_ms * 2 + 1000,
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
) -> anyhow::Result<Measured> {
    let pb = bar(plan.records * u64::from(plan.subscribers), name);
    // Every worker is up (a direct consumer has joined its group, its partitions paused):
    // the measured interval starts now, for both arms alike.
    for w in workers.iter_mut() {
        tokio::select! {
            r = w.wait_ready(Duration::from_secs(60)) => r?,
            () = ctx.cancel.cancelled() => bail!("{name}: interrupted while starting"),
        }
    }
    let baselines = workers
        .iter()
        .map(Worker::sample)
        .collect::<anyhow::Result<Vec<_>>>()?;
    let go = Instant::now();
    let go_ns = worker::now_ns();
    for w in workers.iter_mut() {
        w.go().await;
    }
    let (produced, producer) = match produced {
        Some(p) => (p, None),
        None => {
            let Workload::Steady { rate, .. } = plan.workload else {
                bail!("a backlog cell without its backlog");
            };
            let (p, h) = produce(ctx, plan, topic, Some(rate), None);
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
        .zip(&baselines)
        .map(|(w, before)| w.sample().map(|after| after.since(before)))
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
