//! `isolation` (G10): do fast subscriptions keep their rate while another one crawls?
//!
//! After an unmeasured warm-up run, two phases on the same server, each on a fresh topic
//! with its subscriptions connected before `--records` records are produced as fast as
//! Kafka takes them:
//! 1. baseline: `--fast` subscriptions read them at full speed;
//! 2. throttled: the same, plus one subscription throttled to `--slow-fraction` of the
//!    baseline rate.
//!
//! A subscription's rate is its records ÷ the time from its first record to its last.
//!
//! The pair runs `--rounds` times (on 2 shared cores one pair alone varies by ±10%). It
//! prints each fast subscription's rate in both phases, each round's ratio and the median
//! (the goal is ≥ 0.95, ideally ≥ 0.99), checks that every subscription (the slow one too)
//! received every record, and samples the server's RSS (`--server-pid`) throughout.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use fanout_client::{Subscriber, SubscriberConfig};
use rdkafka::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;

use crate::bench::result::{Isolation, IsolationRound};
use crate::demo::{create_topic, ensure};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    endpoints: crate::Endpoints,
    #[arg(long, default_value_t = 4)]
    partitions: i32,
    /// Records in the backlog of each phase.
    #[arg(long, default_value_t = 200_000)]
    records: u64,
    /// Value size in bytes.
    #[arg(long, default_value_t = 256)]
    size: usize,
    /// Subscriptions at full speed.
    #[arg(long, default_value_t = 4)]
    fast: usize,
    /// Rate of the throttled subscription, as a fraction of the baseline rate.
    #[arg(long, default_value_t = 0.1)]
    slow_fraction: f64,
    /// Baseline / throttled pairs to run (the figure is the median ratio).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=20))]
    rounds: u32,
    /// Credits of each subscriber.
    #[arg(long, default_value_t = 1000)]
    credits: u32,
    /// The server's process id, to sample its resident memory.
    #[arg(long)]
    server_pid: Option<u32>,
    /// Also write the figures as JSON (`report --isolation` reads it).
    #[arg(long)]
    json: Option<std::path::PathBuf>,
    /// Give up after this long per phase.
    #[arg(long, default_value = "300s", value_parser = humantime::parse_duration)]
    timeout: Duration,
}

fn fmt3(v: &[f64]) -> String {
    v.iter()
        .map(|r| format!("{r:.3}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Resident memory of `pid` in bytes (`VmRSS`), if readable.
fn rss(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

async fn produce(args: &Args, topic: &str) -> anyhow::Result<()> {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &args.endpoints.kafka_bootstrap)
        .set("linger.ms", "5")
        .set("batch.size", "1000000")
        .set("enable.idempotence", "true")
        .create()
        .context("producer")?;
    let value = vec![b'x'; args.size];
    let started = Instant::now();
    let mut i = 0;
    while i < args.records {
        let n = (args.records - i).min(10_000);
        let sends = (i..i + n).map(|k| {
            let key = format!("key-{}", k % 1024);
            let (producer, value) = (&producer, &value);
            async move {
                producer
                    .send(
                        FutureRecord::to(topic).key(&key).payload(value.as_slice()),
                        Timeout::After(Duration::from_secs(60)),
                    )
                    .await
            }
        });
        for r in futures::future::join_all(sends).await {
            if let Err((e, _)) = r {
                bail!("produce to {topic}: {e}");
            }
        }
        i += n;
    }
    eprintln!(
        "isolation: produced {} records of {} B to {topic} in {:.1}s",
        args.records,
        args.size,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Drains the backlog on one subscription; `max_rate` throttles it (records/s). Returns
/// the drain rate in records/s.
async fn drain(
    args: &Args,
    topic: &str,
    sub: &str,
    max_rate: Option<f64>,
    deadline: Instant,
) -> anyhow::Result<f64> {
    let cfg = SubscriberConfig::new(&args.endpoints.grpc, topic, sub).max_in_flight(
        if max_rate.is_some() {
            100
        } else {
            args.credits
        },
    );
    let mut s = Subscriber::connect(cfg)
        .await
        .with_context(|| format!("subscribe {topic}/{sub}"))?;
    let mut seen = HashSet::with_capacity(args.records as usize);
    let mut started = None;
    while (seen.len() as u64) < args.records {
        let left = deadline.saturating_duration_since(Instant::now());
        let r = match tokio::time::timeout(left, s.next()).await {
            Ok(Some(Ok(r))) => r,
            Ok(Some(Err(e))) => bail!("{sub}: {e}"),
            Ok(None) => bail!("{sub}: subscriber ended"),
            Err(_) => bail!(
                "{sub}: timed out with {} of {} records",
                seen.len(),
                args.records
            ),
        };
        let t0 = *started.get_or_insert_with(Instant::now);
        seen.insert((r.partition, r.offset));
        s.ack(&r);
        if let Some(rate) = max_rate {
            // Stay at `rate`: sleep until this record is due.
            let due = t0 + Duration::from_secs_f64(seen.len() as f64 / rate);
            tokio::time::sleep_until(due.into()).await;
        }
    }
    let secs = started.map_or(0.0, |t| t.elapsed().as_secs_f64());
    s.close().await;
    Ok(args.records as f64 / secs.max(1e-9))
}

/// Runs one phase: `fast` subscriptions at full speed and, with `slow`, one throttled.
/// Returns the fast rates and the slow one's.
async fn phase(
    args: &Arc<Args>,
    name: &str,
    slow: Option<f64>,
) -> anyhow::Result<(Vec<f64>, Option<f64>)> {
    let http = reqwest::Client::new();
    let topic = format!("iso-{name}-{}", rand::random::<u32>());
    create_topic(&args.endpoints.kafka_bootstrap, &topic, args.partitions).await?;
    ensure(
        &http,
        format!("{}/v1/topics", args.endpoints.admin),
        serde_json::json!({ "name": topic }),
    )
    .await?;
    let mut subs: Vec<(String, Option<f64>)> = (0..args.fast)
        .map(|i| (format!("fast-{i}"), None))
        .collect();
    if let Some(rate) = slow {
        subs.push(("slow".into(), Some(rate)));
    }
    for (s, _) in &subs {
        ensure(
            &http,
            format!("{}/v1/topics/{topic}/subscriptions", args.endpoints.admin),
            serde_json::json!({ "name": s, "start": "earliest" }),
        )
        .await?;
    }
    // The subscriptions exist and read before the records arrive, as in production: they
    // all start on the shared window.
    let deadline = Instant::now() + args.timeout;
    let mut tasks = Vec::new();
    for (s, rate) in subs {
        let (args, topic) = (args.clone(), topic.clone());
        tasks.push(tokio::spawn(async move {
            drain(&args, &topic, &s, rate, deadline).await
        }));
    }
    produce(args, &topic).await?;
    let mut fast = Vec::new();
    let mut slow_rate = None;
    for (i, t) in tasks.into_iter().enumerate() {
        let rate = t.await.context("subscriber task")??;
        if i < args.fast {
            fast.push(rate);
        } else {
            slow_rate = Some(rate);
        }
    }
    Ok((fast, slow_rate))
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let args = Arc::new(args);
    let peak = Arc::new(AtomicU64::new(0));
    let sampling = Arc::new(AtomicBool::new(true));
    let sampler = args.server_pid.map(|pid| {
        let (peak, sampling) = (peak.clone(), sampling.clone());
        tokio::spawn(async move {
            while sampling.load(Ordering::Relaxed) {
                if let Some(r) = rss(pid) {
                    peak.fetch_max(r, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    });
    let rss_start = args.server_pid.and_then(rss);

    // A first run warms up the broker, the server and this process, unmeasured: otherwise
    // the baseline, which comes first, runs colder than the throttled phase.
    let (warm, _) = phase(&args, "warmup", None).await?;
    eprintln!(
        "isolation: warm-up at {:.0} rec/s per subscription (not counted)",
        warm.iter().sum::<f64>() / warm.len() as f64
    );
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    let fmt = |v: &[f64]| {
        v.iter()
            .map(|r| format!("{r:.0}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    println!("| round | phase | fast subscriptions (rec/s each) | mean | slow | ratio |");
    println!("|---|---|---|---|---|---|");
    let mut rounds = Vec::new();
    for round in 1..=args.rounds {
        let (base, _) = phase(&args, "base", None).await?;
        let slow_target = mean(&base) * args.slow_fraction;
        eprintln!(
            "isolation: round {round}: baseline {:.0} rec/s per subscription; throttling one to {slow_target:.0} rec/s",
            mean(&base)
        );
        let (with_slow, slow) = phase(&args, "slow", Some(slow_target)).await?;
        let ratio = mean(&with_slow) / mean(&base);
        let worst = with_slow
            .iter()
            .zip(&base)
            .map(|(w, b)| w / b)
            .fold(f64::INFINITY, f64::min);
        println!(
            "| {round} | baseline | {} | {:.0} | – | |",
            fmt(&base),
            mean(&base)
        );
        println!(
            "| {round} | one at {:.0}% | {} | {:.0} | {:.0} | {ratio:.3} (worst pair {worst:.3}) |",
            args.slow_fraction * 100.0,
            fmt(&with_slow),
            mean(&with_slow),
            slow.unwrap_or(0.0)
        );
        rounds.push(IsolationRound {
            baseline: base,
            throttled: with_slow,
            slow: slow.unwrap_or(0.0),
            ratio,
            worst_pair: worst,
        });
    }
    sampling.store(false, Ordering::Relaxed);
    if let Some(s) = sampler {
        let _ = s.await;
    }
    let mut ratios: Vec<f64> = rounds.iter().map(|r| r.ratio).collect();
    ratios.sort_by(f64::total_cmp);
    let median = ratios[ratios.len() / 2];
    println!(
        "G10: fast rate with a throttled one ÷ without, median of {} rounds: {median:.3} \
         (per round {}; goal ≥ 0.99, floor 0.95); every subscription, the slow one too, \
         received all {} records in every round",
        ratios.len(),
        fmt3(&ratios),
        args.records
    );
    if let Some(pid) = args.server_pid {
        println!(
            "server RSS: {} MiB at start, peak {} MiB (pid {pid})",
            rss_start.unwrap_or(0) >> 20,
            peak.load(Ordering::Relaxed) >> 20
        );
    }
    let peak_rss = peak.load(Ordering::Relaxed);
    let result = Isolation {
        command: std::env::args().collect::<Vec<_>>().join(" "),
        machine: crate::bench::machine(),
        fast: u32::try_from(args.fast).unwrap_or(u32::MAX),
        records: args.records,
        record_size: u32::try_from(args.size).unwrap_or(u32::MAX),
        slow_fraction: args.slow_fraction,
        rounds,
        median_ratio: median,
        server_peak_rss_bytes: args.server_pid.map(|_| peak_rss),
    };
    println!("{}", serde_json::to_string(&result)?);
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_vec_pretty(&result)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}
