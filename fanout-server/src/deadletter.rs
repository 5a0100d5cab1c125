//! Publishing records out of attempts to their subscription's dead-letter topic, and
//! redriving them into the subscription again.
//!
//! The record keeps its key, value, headers and timestamp; headers say where it came from
//! and why it is there. It counts as done for the subscription only once Kafka acknowledged
//! the publish (all in-sync replicas, idempotent producer).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
use rdkafka::{Offset as KafkaOffset, TopicPartitionList};
use serde::Serialize;

use crate::config::Config;
use crate::delivery::DeadLetter;
use crate::kafka;
use crate::model::{Offset, Partition, REDRIVE_FOR, SubscriptionKey, SubscriptionName, TopicName};

/// Header names added to a dead letter.
pub mod headers {
    pub const REASON: &str = "fanout.dlq.reason";
    pub const ATTEMPTS: &str = "fanout.dlq.attempts";
    pub const SUBSCRIPTION: &str = "fanout.dlq.subscription";
    pub const SOURCE_TOPIC: &str = "fanout.dlq.source.topic";
    pub const SOURCE_PARTITION: &str = "fanout.dlq.source.partition";
    pub const SOURCE_OFFSET: &str = "fanout.dlq.source.offset";
}

/// How long one publish may take before it counts as failed (and is tried again).
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(30);

/// The producer of dead letters, shared by every stream.
pub struct DeadLetters {
    producer: FutureProducer,
}

impl std::fmt::Debug for DeadLetters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DeadLetters")
    }
}

impl DeadLetters {
    pub fn new(cfg: &Config) -> Result<Self, KafkaError> {
        Ok(Self {
            producer: kafka::producer(cfg, "dead-letters")?,
        })
    }

    /// Publishes `letter` (a record of `subscription`) to `to`, waiting for Kafka's ack.
    pub async fn publish(
        &self,
        to: &TopicName,
        subscription: &SubscriptionKey,
        letter: &DeadLetter,
    ) -> Result<(), KafkaError> {
        let Some(r) = letter.chunk.records().first() else {
            return Ok(());
        };
        let mut hs = OwnedHeaders::new_with_capacity(r.headers.len() + 6);
        for h in r.headers.iter() {
            hs = hs.insert(Header {
                key: &h.key,
                value: h.value.as_deref(),
            });
        }
        let attempts = letter.attempts.to_string();
        let partition = r.partition.to_string();
        let offset = r.offset.to_string();
        let sub = subscription.name.to_string();
        for (key, value) in [
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
        let mut record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(to.as_str()).headers(hs);
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
    }
}

/// What to redrive: the records of `dead_letter_topic` that came from `topic` for
/// `subscription`, from `from` (per dead-letter partition; absent: its start) up to the end
/// the topic had when asked, at most `max_records` read.
#[derive(Debug, Clone)]
pub struct RedriveRequest {
    pub topic: TopicName,
    pub subscription: SubscriptionName,
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
    /// `max_records` or the time limit stopped it (call again to go on).
    pub complete: bool,
}

/// Redrives dead letters (`POST .../redrive`); a trait so that the admin API's component
/// tests run without Kafka.
pub trait Redrive: Send + Sync + 'static {
    fn redrive(&self, req: RedriveRequest) -> BoxFuture<'_, Result<RedriveOutcome, KafkaError>>;
}

/// One dead letter to publish again.
struct Letter {
    partition: Partition,
    key: Option<Vec<u8>>,
    value: Option<Vec<u8>>,
    timestamp: Option<i64>,
    headers: Vec<(String, Option<Vec<u8>>)>,
    from: String,
}

/// How long reading a dead-letter topic for one redrive may take.
const REDRIVE_READ_LIMIT: Duration = Duration::from_secs(60);

/// Redrives through Kafka: reads the dead-letter topic with an assign-only consumer, then
/// publishes the subscription's records to the partition they came from, with the header
/// [`REDRIVE_FOR`] so that only that subscription receives them. At least once: a failure
/// after some publishes leaves the position where it was, and a retry publishes those again.
pub struct Redriver {
    cfg: Config,
    producer: FutureProducer,
}

impl std::fmt::Debug for Redriver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Redriver")
    }
}

impl Redriver {
    pub fn new(cfg: &Config) -> Result<Self, KafkaError> {
        Ok(Self {
            cfg: cfg.clone(),
            producer: kafka::producer(cfg, "redrive")?,
        })
    }

    /// Reads the dead letters of the request (blocking).
    fn read(
        cfg: &Config,
        req: &RedriveRequest,
    ) -> Result<(Vec<Letter>, RedriveOutcome), KafkaError> {
        let consumer: BaseConsumer = kafka::reader(cfg, "redrive").create()?;
        let dlq = req.dead_letter_topic.as_str();
        let partitions = kafka::partitions_of(&consumer, dlq)?.unwrap_or_default();
        let marks = kafka::watermarks(&consumer, dlq, &partitions)?;
        let mut next: BTreeMap<Partition, Offset> = BTreeMap::new();
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
        };
        if ends.is_empty() {
            return Ok((Vec::new(), out));
        }
        consumer.assign(&tpl)?;
        let deadline = Instant::now() + REDRIVE_READ_LIMIT;
        let mut letters = Vec::new();
        let header = |m: &BorrowedMessage<'_>, name: &str| -> Option<String> {
            m.headers()?
                .iter()
                .find(|h| h.key == name)
                .and_then(|h| h.value)
                .map(|v| String::from_utf8_lossy(v).into_owned())
        };
        while !ends.is_empty() {
            if out.scanned >= req.max_records || Instant::now() >= deadline {
                out.complete = false;
                break;
            }
            let m = match consumer.poll(Duration::from_millis(500)) {
                None => continue,
                Some(Err(KafkaError::PartitionEOF(p))) => {
                    if let Some(end) = ends.remove(&p) {
                        out.next.insert(p, end);
                    }
                    continue;
                }
                Some(Err(e)) => return Err(e),
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
            let mine = header(&m, headers::SUBSCRIPTION).as_deref()
                == Some(req.subscription.as_str())
                && header(&m, headers::SOURCE_TOPIC).as_deref() == Some(req.topic.as_str());
            let source = header(&m, headers::SOURCE_PARTITION).and_then(|s| s.parse().ok());
            let (true, Some(partition)) = (mine, source) else {
                continue;
            };
            let headers = m
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
            letters.push(Letter {
                partition,
                key: m.key().map(<[u8]>::to_vec),
                value: m.payload().map(<[u8]>::to_vec),
                timestamp: m.timestamp().to_millis(),
                headers,
                from: format!("{dlq}:{p}:{}", m.offset()),
            });
        }
        drop(tpl);
        Ok((letters, out))
    }
}

impl Redrive for Redriver {
    fn redrive(&self, req: RedriveRequest) -> BoxFuture<'_, Result<RedriveOutcome, KafkaError>> {
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
                if let Some(t) = l.timestamp {
                    record = record.timestamp(t);
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
