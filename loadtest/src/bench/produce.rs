//! The load: records `0..count` of `size` bytes, as fast as Kafka takes them (a backlog) or
//! at a steady rate, each stamped with its produce time. Runs on a thread of its own (the
//! pacing needs finer sleeps than tokio's timer) in the orchestrator, whose CPU no arm
//! counts.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use parking_lot::Mutex;
use rdkafka::ClientConfig;
use rdkafka::client::ClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};

use super::payload;
use super::worker::now_ns;

/// What the producer saw acknowledged.
#[derive(Debug, Default)]
pub struct Produced {
    /// Records Kafka acknowledged.
    pub acked: AtomicU64,
    /// Records Kafka refused (each one fails the run).
    pub failed: AtomicU64,
    /// Sum of [`payload::mix`] over the acknowledged records: the digest every consumer
    /// must reach.
    digest: AtomicU64,
    first_error: Mutex<Option<String>>,
}

impl Produced {
    pub fn digest(&self) -> u64 {
        self.digest.load(Ordering::Acquire)
    }
}

#[derive(Debug)]
struct Acks {
    produced: Arc<Produced>,
}

impl ClientContext for Acks {}

impl ProducerContext for Acks {
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, seq: usize) {
        match result {
            Ok(m) => {
                self.produced
                    .digest
                    .fetch_add(payload::mix(seq as u64, m.partition()), Ordering::AcqRel);
                self.produced.acked.fetch_add(1, Ordering::AcqRel);
            }
            Err((e, _)) => {
                self.produced.failed.fetch_add(1, Ordering::AcqRel);
                self.produced
                    .first_error
                    .lock()
                    .get_or_insert_with(|| e.to_string());
            }
        }
    }
}

/// How to produce.
#[derive(Debug, Clone)]
pub struct Load {
    pub bootstrap: String,
    pub topic: String,
    pub count: u64,
    pub size: usize,
    /// Records per second; `None`: as fast as Kafka takes them.
    pub rate: Option<u64>,
}

/// Produces `load` on the calling thread; `sent` counts records handed to the client,
/// `cancel` stops early. Returns once every record sent is acknowledged (or failed).
pub fn produce(
    load: &Load,
    produced: &Arc<Produced>,
    sent: &AtomicU64,
    cancel: &AtomicBool,
) -> anyhow::Result<()> {
    if load.size < payload::HEADER {
        bail!("records must be at least {} bytes", payload::HEADER);
    }
    let producer: ThreadedProducer<Acks> = ClientConfig::new()
        .set("bootstrap.servers", &load.bootstrap)
        .set("client.id", "bench-producer")
        .set("linger.ms", "1")
        .set("batch.size", "1000000")
        .set("queue.buffering.max.messages", "1000000")
        .set("enable.idempotence", "true")
        .create_with_context(Acks {
            produced: produced.clone(),
        })
        .context("creating the producer")?;
    let mut value = vec![b'x'; load.size];
    let started = Instant::now();
    let started_ns = now_ns();
    for seq in 0..load.count {
        if cancel.load(Ordering::Acquire) {
            break;
        }
        if let Some(rate) = load.rate {
            let due = started + Duration::from_secs_f64(seq as f64 / rate as f64);
            let now = Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
        }
        let key = payload::key(seq);
        // A paced record carries the time it was due, not the time it went: a producer
        // that fell behind (the 2 cores are shared) is then latency too, not left out.
        let stamp = match load.rate {
            Some(rate) => started_ns + (seq as f64 * 1e9 / rate as f64) as u64,
            None => now_ns(),
        };
        payload::fill(&mut value, seq, stamp);
        let mut record = BaseRecord::with_opaque_to(&load.topic, seq as usize)
            .key(key.as_bytes())
            .payload(value.as_slice());
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                    record = r;
                    std::thread::sleep(Duration::from_millis(1));
                    if cancel.load(Ordering::Acquire) {
                        break;
                    }
                }
                Err((e, _)) => bail!("producing to {}: {e}", load.topic),
            }
        }
        sent.fetch_add(1, Ordering::Release);
    }
    producer
        .flush(Duration::from_secs(60))
        .with_context(|| format!("waiting for Kafka to acknowledge records of {}", load.topic))?;
    if produced.failed.load(Ordering::Acquire) > 0 {
        let e = produced.first_error.lock().clone().unwrap_or_default();
        bail!(
            "{} records refused by Kafka (first: {e})",
            produced.failed.load(Ordering::Acquire)
        );
    }
    Ok(())
}
