//! The demo: one producer of sample events, several subscriptions, live counts. Each
//! subscription is followed on every shard given in `--grpc` (comma-separated).

use std::collections::HashSet;
use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use counts::Counts;
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::util::Timeout;
use tokio_util::sync::CancellationToken;

use crate::multi;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    endpoints: crate::Endpoints,
    /// Topic to produce to (created with `--partitions` if missing).
    #[arg(long, default_value = "demo-events")]
    topic: String,
    #[arg(long, default_value_t = 4)]
    partitions: i32,
    /// Subscriptions to create (start=latest) and follow.
    #[arg(long, value_delimiter = ',', default_value = "orders,billing,audit")]
    subscriptions: Vec<String>,
    /// Records produced per second.
    #[arg(long, default_value_t = 200)]
    rate: u32,
    /// Stop after this long (default: run until Ctrl-C).
    #[arg(long, value_parser = humantime::parse_duration)]
    duration: Option<Duration>,
    /// At the end, fail unless every subscription received every produced record.
    #[arg(long)]
    check: bool,
}

mod counts {
    use std::sync::atomic::{AtomicU64, Ordering};

    /// Live counters of one subscription.
    #[derive(Debug, Default)]
    pub struct Counts {
        pub unique: AtomicU64,
        pub deliveries: AtomicU64,
    }

    impl Counts {
        pub fn get(&self) -> (u64, u64) {
            (
                self.unique.load(Ordering::Relaxed),
                self.deliveries.load(Ordering::Relaxed),
            )
        }
    }
}

async fn ensure_topic(args: &Args) -> anyhow::Result<()> {
    create_topic(
        &args.endpoints.kafka_bootstrap,
        &args.topic,
        args.partitions,
    )
    .await
}

/// Creates `topic` in Kafka (fine if it exists).
pub(crate) async fn create_topic(
    bootstrap: &str,
    topic: &str,
    partitions: i32,
) -> anyhow::Result<()> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .context("Kafka admin client")?;
    let results = admin
        .create_topics(
            [&NewTopic::new(
                topic,
                partitions,
                TopicReplication::Fixed(1),
            )],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(30))),
        )
        .await
        .with_context(|| format!("creating {topic} in Kafka at {bootstrap}"))?;
    for r in results {
        match r {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((t, e)) => bail!("creating topic {t}: {e}"),
        }
    }
    Ok(())
}

/// POSTs to the admin API; 201 and 409 (already there) are both fine.
pub(crate) async fn ensure(
    http: &reqwest::Client,
    url: String,
    body: serde_json::Value,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r = http.post(&url).json(&body).send().await;
        match r {
            Ok(r) if r.status().as_u16() == 201 || r.status().as_u16() == 409 => return Ok(()),
            Ok(r) => {
                let status = r.status();
                let text = r.text().await.unwrap_or_default();
                // Kafka may need a moment to show a new topic.
                if status.as_u16() != 422 || Instant::now() > deadline {
                    bail!("POST {url}: {status} {text}");
                }
            }
            Err(e) if Instant::now() > deadline => bail!("POST {url}: {e}"),
            Err(_) => {}
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    ensure_topic(&args).await?;
    let http = reqwest::Client::new();
    ensure(
        &http,
        format!("{}/v1/topics", args.endpoints.admin),
        serde_json::json!({ "name": args.topic }),
    )
    .await?;
    for s in &args.subscriptions {
        ensure(
            &http,
            format!(
                "{}/v1/topics/{}/subscriptions",
                args.endpoints.admin, args.topic
            ),
            serde_json::json!({ "name": s, "start": "latest" }),
        )
        .await?;
    }

    let stop = CancellationToken::new();
    let produced = Arc::new(AtomicU64::new(0));
    let mut counts = Vec::new();
    let mut followers = Vec::new();
    for s in &args.subscriptions {
        let c = Arc::new(Counts::default());
        counts.push((s.clone(), c.clone()));
        let endpoints: Vec<String> = args
            .endpoints
            .grpc
            .split(',')
            .map(|e| e.trim().to_owned())
            .filter(|e| !e.is_empty())
            .collect();
        let mut sub = multi::connect(&endpoints, &args.topic, s, 500, Duration::from_secs(10))
            .await
            .with_context(|| {
                format!(
                    "subscribing to {}/{s} at {}",
                    args.topic, args.endpoints.grpc
                )
            })?;
        let stop = stop.clone();
        followers.push(tokio::spawn(async move {
            let mut seen: HashSet<(i32, i64)> = HashSet::new();
            loop {
                let r = tokio::select! {
                    r = sub.next() => r,
                    _ = stop.cancelled() => break,
                };
                match r {
                    Some(Ok(r)) => {
                        if seen.insert((r.partition, r.offset)) {
                            c.unique.fetch_add(1, Ordering::Relaxed);
                        }
                        c.deliveries.fetch_add(1, Ordering::Relaxed);
                        sub.ack(&r);
                    }
                    Some(Err(e)) => {
                        eprintln!("subscriber error: {e}");
                        break;
                    }
                    None => break,
                }
            }
            sub.close().await;
            seen
        }));
    }

    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &args.endpoints.kafka_bootstrap)
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .create()
        .context("Kafka producer")?;
    let acked: Arc<std::sync::Mutex<HashSet<(i32, i64)>>> = Arc::default();
    let stop_producing = CancellationToken::new();
    let producing = {
        let stop = stop_producing.clone();
        let produced = produced.clone();
        let acked = acked.clone();
        let topic = args.topic.clone();
        let rate = args.rate.max(1);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1) / rate);
            let mut seq = 0u64;
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = stop.cancelled() => break,
                }
                let key = format!("user-{}", seq % 50);
                let ts = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map(|d| d.as_millis())
                    .unwrap_or(0);
                let value =
                    serde_json::json!({ "seq": seq, "produced_at_ms": ts, "event": "page_view" })
                        .to_string();
                match producer
                    .send(
                        FutureRecord::to(&topic).key(&key).payload(&value),
                        Timeout::After(Duration::from_secs(10)),
                    )
                    .await
                {
                    Ok(d) => {
                        if let Ok(mut a) = acked.lock() {
                            a.insert((d.partition, d.offset));
                        }
                        produced.fetch_add(1, Ordering::Relaxed);
                        seq += 1;
                    }
                    Err((e, _)) => eprintln!("produce failed: {e}"),
                }
            }
        })
    };

    let started = Instant::now();
    let mut report = tokio::time::interval(Duration::from_secs(1));
    let deadline = args.duration.map(|d| started + d);
    eprintln!(
        "demo: producing {} records/s to {}; Ctrl-C to stop",
        args.rate, args.topic
    );
    loop {
        tokio::select! {
            _ = report.tick() => {}
            _ = tokio::signal::ctrl_c() => break,
        }
        print_line(started, &produced, &counts);
        if deadline.is_some_and(|d| Instant::now() >= d) {
            break;
        }
    }
    // Stop producing, give the subscriptions a moment to catch up, then report.
    stop_producing.cancel();
    let _ = producing.await;
    let total = produced.load(Ordering::Relaxed);
    let catch_up = Instant::now() + Duration::from_secs(10);
    while counts.iter().any(|(_, c)| c.get().0 < total) && Instant::now() < catch_up {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    print_line(started, &produced, &counts);
    stop.cancel();
    let acked = acked.lock().map(|a| a.clone()).unwrap_or_default();
    let mut missing = false;
    for ((name, c), f) in counts.iter().zip(followers) {
        let seen = f.await.unwrap_or_default();
        let lost = acked.iter().filter(|r| !seen.contains(r)).count();
        let (_, deliveries) = c.get();
        println!(
            "{name}: received {} of {} produced, {} missing, {} duplicates",
            acked.len() - lost,
            acked.len(),
            lost,
            deliveries.saturating_sub(seen.len() as u64)
        );
        missing |= lost > 0;
    }
    if args.check && missing {
        bail!("a subscription is missing records");
    }
    Ok(())
}

fn print_line(started: Instant, produced: &AtomicU64, counts: &[(String, Arc<Counts>)]) {
    let p = produced.load(Ordering::Relaxed);
    let mut line = format!("{:>5.1}s  produced {p:>7}", started.elapsed().as_secs_f64());
    for (name, c) in counts {
        let (unique, _) = c.get();
        line.push_str(&format!(
            "  | {name} {unique:>7} (lag {})",
            p.saturating_sub(unique)
        ));
    }
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
}
