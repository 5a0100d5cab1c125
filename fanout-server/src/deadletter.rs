//! Publishing records out of attempts to their subscription's dead-letter topic, and
//! redriving them into the subscription again.
//!
//! The record keeps its key, value, headers and timestamp; headers say where it came from
//! and why it is there. It counts as done for the subscription only once Kafka acknowledged
//! the publish (all in-sync replicas, idempotent producer).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fanout_core::delivery::DeadLetter;
use fanout_core::model::{
    Offset, Partition, REDRIVE_FOR, SubscriptionKey, SubscriptionName, TopicName,
};
use fanout_core::shard::SubscriptionRuntime;
use futures::future::BoxFuture;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
use rdkafka::{Offset as KafkaOffset, TopicPartitionList};
use serde::Serialize;

use crate::kafka::{self, KafkaSettings};
use crate::telemetry;

/// Header names added to a dead letter.
pub mod headers {
    pub const REASON: &str = "fanout.dlq.reason";
    pub const ATTEMPTS: &str = "fanout.dlq.attempts";
    pub const SUBSCRIPTION: &str = "fanout.dlq.subscription";
    pub const SOURCE_TOPIC: &str = "fanout.dlq.source.topic";
    pub const SOURCE_PARTITION: &str = "fanout.dlq.source.partition";
    pub const SOURCE_OFFSET: &str = "fanout.dlq.source.offset";
    /// Which life of the subscription (its creation time, ms): a subscription deleted and
    /// created again under the same name does not redrive the old one's dead letters.
    pub const SUBSCRIPTION_CREATED: &str = "fanout.dlq.subscription.created_at_ms";
}

/// How long one publish may take before it counts as failed (and is tried again).
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(30);

/// Where records out of attempts go (Kafka, or a fake in the stream loop's component tests).
pub trait DeadLetterSink: Send + Sync + std::fmt::Debug + 'static {
    /// Publishes `letter` (a record of `subscription`, of its life `incarnation`) to `to`,
    /// returning once Kafka acknowledged it.
    fn publish<'a>(
        &'a self,
        to: &'a TopicName,
        subscription: &'a SubscriptionKey,
        incarnation: i64,
        letter: &'a DeadLetter,
    ) -> BoxFuture<'a, Result<(), KafkaError>>;
}

/// Publishes a record out of attempts to the subscription's dead-letter topic; on
/// success it counts as acked, on failure it is tried again a little later.
pub async fn send(
    dead_letters: Arc<dyn DeadLetterSink>,
    sub: Arc<SubscriptionRuntime>,
    letter: DeadLetter,
) {
    let Some(r) = letter.chunk.records().first() else {
        return;
    };
    let (partition, offset) = (letter.partition, r.offset);
    let published = match &sub.spec().delivery.dead_letter_topic {
        Some(to) => dead_letters
            .publish(to, &sub.key(), sub.created_at_ms(), &letter)
            .await
            .map_err(|e| e.to_string()),
        None => Err("the subscription has no dead-letter topic".to_owned()),
    };
    match published {
        Ok(()) => {
            tracing::warn!(
                partition,
                offset,
                attempts = letter.attempts,
                reason = letter.why.as_str(),
                "record out of attempts sent to the dead-letter topic"
            );
            sub.dead_lettered(partition, offset);
            let key = sub.key();
            telemetry::metrics::dead_lettered(key.topic.as_str(), key.name.as_str());
        }
        Err(e) => {
            tracing::error!(partition, offset, error = %e, "dead-letter publish failed; retrying in 1s");
            sub.dead_letter_failed(
                partition,
                offset,
                letter.attempts,
                Instant::now() + Duration::from_secs(1),
            );
        }
    }
}

/// The producer of dead letters, shared by every stream.
pub struct DeadLetters {
    producer: FutureProducer<kafka::StatsContext>,
}

impl std::fmt::Debug for DeadLetters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DeadLetters")
    }
}

impl DeadLetters {
    pub fn new(cfg: &KafkaSettings) -> Result<Self, KafkaError> {
        Ok(Self {
            producer: kafka::producer(cfg, "dead-letters")?,
        })
    }
}

impl DeadLetterSink for DeadLetters {
    fn publish<'a>(
        &'a self,
        to: &'a TopicName,
        subscription: &'a SubscriptionKey,
        incarnation: i64,
        letter: &'a DeadLetter,
    ) -> BoxFuture<'a, Result<(), KafkaError>> {
        Box::pin(async move {
            let Some(r) = letter.chunk.records().first() else {
                return Ok(());
            };
            let mut hs = OwnedHeaders::new_with_capacity(r.headers.len() + 7);
            // A record dead-lettered before (its topic is a dead-letter topic itself) carries
            // older `fanout.dlq.*` headers: only the new ones describe it now.
            for h in r
                .headers
                .iter()
                .filter(|h| !h.key.starts_with("fanout.dlq."))
            {
                hs = hs.insert(Header {
                    key: &h.key,
                    value: h.value.as_deref(),
                });
            }
            let attempts = letter.attempts.to_string();
            let partition = r.partition.to_string();
            let offset = r.offset.to_string();
            let sub = subscription.name.to_string();
            let created = incarnation.to_string();
            for (key, value) in [
                (headers::SUBSCRIPTION_CREATED, created.as_str()),
                (headers::REASON, letter.why.as_str()),
                (headers::ATTEMPTS, attempts.as_str()),
                (headers::SUBSCRIPTION, sub.as_str()),
                (headers::SOURCE_TOPIC, subscription.topic.as_str()),
                (headers::SOURCE_PARTITION, partition.as_str()),
                (headers::SOURCE_OFFSET, offset.as_str()),
            ] {
                hs = hs.insert(Header {
                    key,
                    value: Some(value),
                });
            }
            let mut record: FutureRecord<'_, [u8], [u8]> =
                FutureRecord::to(to.as_str()).headers(hs);
            if let Some(k) = &r.key {
                record = record.key(k.as_ref());
            }
            if let Some(v) = &r.value {
                record = record.payload(v.as_ref());
            }
            if let Some((t, _)) = r.timestamp {
                record = record.timestamp(t);
            }
            self.producer
                .send(record, Timeout::After(PUBLISH_TIMEOUT))
                .await
                .map(|_| ())
                .map_err(|(e, _)| e)
        })
    }
}

/// What to redrive: the records of `dead_letter_topic` that came from `topic` for
/// `subscription` (this life of it: `incarnation`, its creation time), from `from` (per
/// dead-letter partition; absent: its start) up to the end the topic had when asked, at most
/// `max_records` read.
#[derive(Debug, Clone)]
pub struct RedriveRequest {
    pub topic: TopicName,
    pub subscription: SubscriptionName,
    pub incarnation: i64,
    pub dead_letter_topic: TopicName,
    pub from: BTreeMap<Partition, Offset>,
    pub max_records: usize,
}

/// What a redrive did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct RedriveOutcome {
    /// Dead letters read (of any subscription).
    pub scanned: usize,
    /// Records of this subscription published back to its topic.
    pub redriven: usize,
    /// Where the next redrive starts, per dead-letter partition.
    pub next: BTreeMap<Partition, Offset>,
    /// True if everything up to the end the topic had when asked was read; false if
    /// `max_records`, the byte limit or the time limit stopped it (call again to go on).
    pub complete: bool,
    /// False if the subscription changed while the records were published (its
    /// dead-letter topic, or another redrive): they were published, but the next redrive
    /// starts where this one did and publishes them again.
    pub position_saved: bool,
}

/// Why a redrive failed (nothing was published).
#[derive(Debug, thiserror::Error)]
pub enum RedriveError {
    #[error("Kafka has no topic {0:?}")]
    NoTopic(String),
    #[error(transparent)]
    Kafka(#[from] KafkaError),
}

/// Redrives dead letters (`POST .../redrive`); a trait so that the admin API's component
/// tests run without Kafka.
pub trait Redrive: Send + Sync + 'static {
    fn redrive(&self, req: RedriveRequest) -> BoxFuture<'_, Result<RedriveOutcome, RedriveError>>;
}

/// One dead letter to publish again.
struct Letter {
    partition: Partition,
    key: Option<Vec<u8>>,
    value: Option<Vec<u8>>,
    headers: Vec<(String, Option<Vec<u8>>)>,
    from: String,
}

/// How long reading a dead-letter topic for one redrive may take.
const REDRIVE_READ_LIMIT: Duration = Duration::from_secs(20);
/// Most bytes of dead letters one redrive holds in memory.
const REDRIVE_MAX_BYTES: usize = 64 << 20;

/// Redrives through Kafka: reads the dead-letter topic with an assign-only consumer, then
/// publishes the subscription's records to the partition they came from, with the header
/// [`REDRIVE_FOR`] so that only that subscription receives them, stamped with the time of
/// the redrive (the original timestamp travels in `fanout.redrive.timestamp`: an old one
/// could fall behind the topic's retention at once). At least once: a failure after some
/// publishes leaves the position where it was, and a retry publishes those again.
pub struct Redriver {
    cfg: KafkaSettings,
    producer: FutureProducer<kafka::StatsContext>,
}

impl std::fmt::Debug for Redriver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Redriver")
    }
}

/// The value of the last header `name` of `m` (a record dead-lettered twice carries the
/// newest last).
fn last_header(m: &BorrowedMessage<'_>, name: &str) -> Option<String> {
    m.headers()?
        .iter()
        .filter(|h| h.key == name)
        .last()
        .and_then(|h| h.value)
        .map(|v| String::from_utf8_lossy(v).into_owned())
}

impl Redriver {
    pub fn new(cfg: &KafkaSettings) -> Result<Self, KafkaError> {
        Ok(Self {
            cfg: cfg.clone(),
            producer: kafka::producer(cfg, "redrive")?,
        })
    }

    /// Reads the dead letters of the request (blocking).
    fn read(
        cfg: &KafkaSettings,
        req: &RedriveRequest,
    ) -> Result<(Vec<Letter>, RedriveOutcome), RedriveError> {
        let consumer: BaseConsumer<kafka::StatsContext> = kafka::reader(cfg, "redrive")
            .create_with_context(kafka::StatsContext::new("redrive"))?;
        let dlq = req.dead_letter_topic.as_str();
        let partitions = kafka::partitions_of(&consumer, dlq)?
            .ok_or_else(|| RedriveError::NoTopic(dlq.to_owned()))?;
        let marks = kafka::watermarks(&consumer, dlq, &partitions)?;
        // Positions only move forward; partitions not read keep theirs.
        let mut next = req.from.clone();
        let mut ends: BTreeMap<Partition, Offset> = BTreeMap::new();
        let mut tpl = TopicPartitionList::new();
        for (p, lo, hi) in marks {
            let start = req.from.get(&p).copied().unwrap_or(lo).clamp(lo, hi);
            next.insert(p, start);
            if start < hi {
                ends.insert(p, hi);
                tpl.add_partition_offset(dlq, p, KafkaOffset::Offset(start))?;
            }
        }
        let mut out = RedriveOutcome {
            scanned: 0,
            redriven: 0,
            next,
            complete: true,
            position_saved: false,
        };
        if ends.is_empty() {
            return Ok((Vec::new(), out));
        }
        consumer.assign(&tpl)?;
        drop(tpl);
        let deadline = Instant::now() + REDRIVE_READ_LIMIT;
        let (mut letters, mut bytes, mut last_error) = (Vec::new(), 0usize, None);
        while !ends.is_empty() {
            if out.scanned >= req.max_records
                || bytes >= REDRIVE_MAX_BYTES
                || Instant::now() >= deadline
            {
                out.complete = false;
                break;
            }
            let m = match consumer.poll(Duration::from_millis(500)) {
                None => continue,
                Some(Err(KafkaError::PartitionEOF(p))) => {
                    // At the end for this reader (with read_committed: the last stable
                    // offset, so an open transaction's records are read next time).
                    if ends.remove(&p).is_some() {
                        let position = consumer.position()?;
                        if let Some(KafkaOffset::Offset(o)) =
                            position.find_partition(dlq, p).map(|e| e.offset())
                        {
                            out.next.insert(p, o);
                        }
                    }
                    continue;
                }
                Some(Err(e)) => {
                    // Transient (a broker moving, ...): go on until the deadline.
                    tracing::debug!(error = %e, "reading the dead-letter topic");
                    last_error = Some(e);
                    continue;
                }
                Some(Ok(m)) => m,
            };
            let p = m.partition();
            let Some(&end) = ends.get(&p) else {
                continue;
            };
            if m.offset() >= end {
                ends.remove(&p);
                out.next.insert(p, end);
                continue;
            }
            out.scanned += 1;
            out.next.insert(p, m.offset() + 1);
            if m.offset() + 1 >= end {
                ends.remove(&p);
                out.next.insert(p, end);
            }
            let this_life = last_header(&m, headers::SUBSCRIPTION_CREATED)
                .is_none_or(|c| c == req.incarnation.to_string());
            let mine = this_life
                && last_header(&m, headers::SUBSCRIPTION).as_deref()
                    == Some(req.subscription.as_str())
                && last_header(&m, headers::SOURCE_TOPIC).as_deref() == Some(req.topic.as_str());
            let source = last_header(&m, headers::SOURCE_PARTITION).and_then(|s| s.parse().ok());
            let (true, Some(partition)) = (mine, source) else {
                continue;
            };
            let mut headers: Vec<(String, Option<Vec<u8>>)> = m
                .headers()
                .map(|hs| {
                    hs.iter()
                        .filter(|h| {
                            !h.key.starts_with("fanout.dlq.")
                                && !h.key.starts_with("fanout.redrive.")
                        })
                        .map(|h| (h.key.to_owned(), h.value.map(<[u8]>::to_vec)))
                        .collect()
                })
                .unwrap_or_default();
            if let Some(t) = m.timestamp().to_millis() {
                headers.push((
                    "fanout.redrive.timestamp".into(),
                    Some(t.to_string().into_bytes()),
                ));
            }
            let letter = Letter {
                partition,
                key: m.key().map(<[u8]>::to_vec),
                value: m.payload().map(<[u8]>::to_vec),
                headers,
                from: format!("{dlq}:{p}:{}", m.offset()),
            };
            bytes += letter.key.as_ref().map_or(0, Vec::len)
                + letter.value.as_ref().map_or(0, Vec::len)
                + letter
                    .headers
                    .iter()
                    .map(|(k, v)| k.len() + v.as_ref().map_or(0, Vec::len))
                    .sum::<usize>();
            letters.push(letter);
        }
        if out.scanned == 0
            && !out.complete
            && let Some(e) = last_error
        {
            return Err(e.into());
        }
        Ok((letters, out))
    }
}

impl Redrive for Redriver {
    fn redrive(&self, req: RedriveRequest) -> BoxFuture<'_, Result<RedriveOutcome, RedriveError>> {
        Box::pin(async move {
            let cfg = self.cfg.clone();
            let request = req.clone();
            let (letters, mut out) =
                tokio::task::spawn_blocking(move || Self::read(&cfg, &request))
                    .await
                    .map_err(|_| KafkaError::Canceled)??;
            let name = req.subscription.to_string();
            let sends = letters.iter().map(|l| {
                let mut hs = OwnedHeaders::new_with_capacity(l.headers.len() + 2);
                for (k, v) in &l.headers {
                    hs = hs.insert(Header {
                        key: k,
                        value: v.as_deref(),
                    });
                }
                hs = hs
                    .insert(Header {
                        key: REDRIVE_FOR,
                        value: Some(name.as_str()),
                    })
                    .insert(Header {
                        key: "fanout.redrive.from",
                        value: Some(l.from.as_str()),
                    });
                let mut record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(req.topic.as_str())
                    .partition(l.partition)
                    .headers(hs);
                if let Some(k) = &l.key {
                    record = record.key(k.as_slice());
                }
                if let Some(v) = &l.value {
                    record = record.payload(v.as_slice());
                }
                self.producer.send(record, Timeout::After(PUBLISH_TIMEOUT))
            });
            for sent in futures::future::join_all(sends).await {
                sent.map_err(|(e, _)| e)?;
            }
            out.redriven = letters.len();
            Ok(out)
        })
    }
}
