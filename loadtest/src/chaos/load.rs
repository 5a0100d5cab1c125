//! The load of a chaos run: a producer at a bounded rate whose records carry per-partition
//! sequence numbers, and one subscriber per subscription that records every delivery
//! before acking it.

use std::collections::{HashMap, HashSet};
use std::io::{BufWriter, Write as _};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use futures::StreamExt as _;
use futures::stream::FuturesUnordered;
use rdkafka::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde::Deserialize;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::check::model::{Delivery, Produced, SubscriptionMeta};
use crate::multi;

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// What one subscriber received so far.
#[derive(Debug)]
struct Received {
    sub: SubscriptionMeta,
    /// (partition, offset) of every record received at least once.
    unique: Mutex<HashSet<(i32, i64)>>,
    deliveries: AtomicU64,
}

/// Produced records and deliveries, live (for progress and the final wait) and as rows
/// for the checker.
#[derive(Debug)]
pub struct Recorder {
    /// Produced rows, in acknowledgement order.
    produced: Mutex<Vec<Produced>>,
    /// (partition, offset) acknowledged per topic.
    acked: Mutex<HashMap<String, HashSet<(i32, i64)>>>,
    /// Sends Kafka did not acknowledge.
    pub failures: AtomicU64,
    subs: Vec<Received>,
    /// Delivery rows to the writer task.
    rows: mpsc::UnboundedSender<Delivery>,
}

impl Recorder {
    /// Deliveries are written to `delivered` as they come, by the returned task (it ends,
    /// with the count written, once every clone of the recorder is dropped).
    pub fn new(
        subs: &[SubscriptionMeta],
        delivered: &Path,
    ) -> anyhow::Result<(Arc<Self>, JoinHandle<anyhow::Result<u64>>)> {
        let f = std::fs::File::create(delivered)
            .with_context(|| format!("creating {}", delivered.display()))?;
        let (rows, mut rx) = mpsc::unbounded_channel::<Delivery>();
        let writer = tokio::task::spawn_blocking(move || {
            let mut w = BufWriter::new(f);
            let mut n = 0;
            while let Some(d) = rx.blocking_recv() {
                serde_json::to_writer(&mut w, &d)?;
                w.write_all(b"\n")?;
                n += 1;
            }
            w.flush()?;
            Ok(n)
        });
        let rec = Self {
            produced: Mutex::default(),
            acked: Mutex::default(),
            failures: AtomicU64::new(0),
            subs: subs
                .iter()
                .map(|s| Received {
                    sub: s.clone(),
                    unique: Mutex::default(),
                    deliveries: AtomicU64::new(0),
                })
                .collect(),
            rows,
        };
        Ok((Arc::new(rec), writer))
    }

    fn produced(&self, row: Produced) {
        lock(&self.acked)
            .entry(row.topic.clone())
            .or_default()
            .insert((row.partition, row.offset));
        lock(&self.produced).push(row);
    }

    pub fn produced_rows(&self) -> Vec<Produced> {
        lock(&self.produced).clone()
    }

    /// Subscriptions that have not yet received every record produced to their topic.
    pub fn incomplete(&self) -> Vec<String> {
        let acked = lock(&self.acked);
        self.subs
            .iter()
            .filter(|r| {
                let want = acked.get(&r.sub.topic);
                let got = lock(&r.unique);
                want.is_some_and(|w| got.len() < w.len() || !w.iter().all(|k| got.contains(k)))
            })
            .map(|r| r.sub.name.clone())
            .collect()
    }

    /// `produced N | sub-0 N (lag L) ...`
    pub fn progress(&self) -> String {
        let acked = lock(&self.acked);
        let mut line = format!(
            "produced {}",
            acked.values().map(HashSet::len).sum::<usize>()
        );
        let failed = self.failures.load(Ordering::Relaxed);
        if failed > 0 {
            line.push_str(&format!(" ({failed} failed)"));
        }
        for r in &self.subs {
            let want = acked.get(&r.sub.topic).map_or(0, HashSet::len);
            let got = lock(&r.unique).len();
            let dups = r.deliveries.load(Ordering::Relaxed) - got as u64;
            line.push_str(&format!(
                " | {} {got} (lag {}, dup {dups})",
                r.sub.name,
                want.saturating_sub(got)
            ));
        }
        line
    }
}

/// Produces round-robin over every partition of `topics` at `rate` records/s until `stop`,
/// then waits (up to 60 s) for Kafka's last acknowledgements.
pub async fn produce(
    kafka: String,
    topics: Vec<String>,
    partitions: i32,
    rate: u32,
    stop: CancellationToken,
    rec: Arc<Recorder>,
) -> anyhow::Result<()> {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &kafka)
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .set("message.timeout.ms", "30000")
        .create()
        .context("Kafka producer")?;
    let slots = topics.len() * partitions as usize;
    let mut seqs = vec![0u64; slots];
    let mut sent = 0u64;
    let mut inflight = FuturesUnordered::new();
    let mut reported = 0;
    let started = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            Some(done) = inflight.next(), if !inflight.is_empty() => acked(&rec, &topics, done, &mut reported),
            _ = tick.tick() => {
                let due = (started.elapsed().as_secs_f64() * f64::from(rate)) as u64;
                // At most one second's worth at once, whatever the delay.
                let n = due.saturating_sub(sent).min(u64::from(rate));
                for _ in 0..n {
                    let slot = (sent % slots as u64) as usize;
                    sent += 1;
                    let (t, p) = (slot / partitions as usize, (slot % partitions as usize) as i32);
                    let seq = seqs[slot];
                    let value = format!(r#"{{"seq":{seq},"at_ms":{}}}"#, now_ms());
                    let key = format!("k-{p}-{seq}");
                    let record = FutureRecord::to(&topics[t]).partition(p).key(&key).payload(&value);
                    match producer.send_result(record) {
                        Ok(fut) => {
                            seqs[slot] += 1;
                            inflight.push(async move { (t, seq, fut.await) });
                        }
                        Err((e, _)) => {
                            rec.failures.fetch_add(1, Ordering::Relaxed);
                            if reported < 5 {
                                reported += 1;
                                eprintln!("chaos: produce refused: {e}");
                            }
                        }
                    }
                }
            }
        }
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while !inflight.is_empty() {
        match tokio::time::timeout_at(deadline, inflight.next()).await {
            Ok(Some(done)) => acked(&rec, &topics, done, &mut reported),
            Ok(None) => break,
            Err(_) => {
                eprintln!(
                    "chaos: {} sends still unacknowledged after 60 s: counted as failed",
                    inflight.len()
                );
                rec.failures
                    .fetch_add(inflight.len() as u64, Ordering::Relaxed);
                break;
            }
        }
    }
    Ok(())
}

type Acked = (
    usize,
    u64,
    Result<
        rdkafka::producer::future_producer::OwnedDeliveryResult,
        futures::channel::oneshot::Canceled,
    >,
);

/// Records Kafka's answer to one send of record `seq` to `topics[topic]`.
fn acked(rec: &Recorder, topics: &[String], (topic, seq, r): Acked, reported: &mut u32) {
    match r {
        Ok(Ok(d)) => rec.produced(Produced {
            topic: topics[topic].clone(),
            partition: d.partition,
            offset: d.offset,
            seq,
            at_ms: now_ms(),
        }),
        Ok(Err((e, _))) => {
            rec.failures.fetch_add(1, Ordering::Relaxed);
            if *reported < 5 {
                *reported += 1;
                eprintln!("chaos: produce failed: {e}");
            }
        }
        Err(_) => {
            rec.failures.fetch_add(1, Ordering::Relaxed);
        }
    }
}

#[derive(Deserialize)]
struct Value {
    seq: u64,
}

/// Follows subscription `i` of the recorder on every endpoint, recording each delivery
/// and then acking it, until `stop`.
pub async fn follow(
    endpoints: Vec<String>,
    i: usize,
    credits: u32,
    rec: Arc<Recorder>,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    let me = &rec.subs[i];
    let mut sub = multi::connect(
        &endpoints,
        &me.sub.topic,
        &me.sub.name,
        credits,
        Duration::from_secs(30),
    )
    .await?;
    let mut ended = Ok(());
    loop {
        let r = tokio::select! {
            _ = stop.cancelled() => break,
            r = sub.next() => r,
        };
        let record = match r {
            Some(Ok(record)) => record,
            Some(Err(e)) => {
                ended = Err(anyhow::anyhow!(
                    "{}: the subscriber ended: {e}",
                    me.sub.name
                ));
                break;
            }
            None => {
                ended = Err(anyhow::anyhow!("{}: the subscriber ended", me.sub.name));
                break;
            }
        };
        let seq = record
            .value
            .as_deref()
            .and_then(|v| serde_json::from_slice::<Value>(v).ok())
            .map(|v| v.seq);
        let _ = rec.rows.send(Delivery {
            topic: record.topic.to_string(),
            subscription: me.sub.name.clone(),
            partition: record.partition,
            offset: record.offset,
            attempt: record.attempt,
            shard: record.shard().to_owned(),
            at_ms: now_ms(),
            seq,
        });
        lock(&me.unique).insert((record.partition, record.offset));
        me.deliveries.fetch_add(1, Ordering::Relaxed);
        sub.ack(&record);
    }
    sub.close().await;
    ended
}
