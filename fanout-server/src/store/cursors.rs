//! Reads and writes the cursors topic: key `<topic>:<partition>:<subscription>`, JSON value
//! `{"version":1,"cursor":N}`; a null value deletes.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::join_all;
use rdkafka::consumer::Consumer;
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
use rdkafka::{Offset as KafkaOffset, TopicPartitionList};
use serde::{Deserialize, Serialize};

use super::StoreError;
use crate::config::Config;
use crate::delivery::{MAX_STORED_RANGES, OffsetRange};
use crate::kafka;
use crate::model::{Offset, Partition, SubscriptionKey, SubscriptionName, TopicName};
use crate::shard::{CursorUpdate, Shard, StoredCursor};

/// Version written into every cursor value.
pub const SCHEMA_VERSION: u32 = 1;

#[derive(Debug, Serialize, Deserialize)]
struct Stored {
    version: u32,
    cursor: Offset,
    /// Creation time of the subscription the cursor belongs to.
    subscription_created_at_ms: i64,
    /// Ranges above the cursor acked already, `[first, last]` inclusive (absent in records
    /// written before they were stored).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    acked: Vec<(Offset, Offset)>,
    /// The subscription's seek of the partition this cursor follows (absent: none).
    #[serde(default, skip_serializing_if = "is_zero")]
    seek: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// Every stored cursor, by (subscription, partition).
pub type Cursors = HashMap<(SubscriptionKey, Partition), StoredCursor>;

pub fn encode_key(sub: &SubscriptionKey, partition: Partition) -> String {
    format!("{}:{}:{}", sub.topic, partition, sub.name)
}

pub fn decode_key(raw: &[u8]) -> Option<(SubscriptionKey, Partition)> {
    let s = std::str::from_utf8(raw).ok()?;
    let mut parts = s.splitn(3, ':');
    let topic = TopicName::new(parts.next()?).ok()?;
    let partition = parts.next()?.parse().ok()?;
    let name = SubscriptionName::new(parts.next()?).ok()?;
    Some((SubscriptionKey { topic, name }, partition))
}

pub fn encode_value(cursor: &StoredCursor) -> Vec<u8> {
    serde_json::to_vec(&Stored {
        version: SCHEMA_VERSION,
        cursor: cursor.offset,
        subscription_created_at_ms: cursor.incarnation,
        acked: cursor
            .acked
            .iter()
            .take(MAX_STORED_RANGES)
            .map(|r| (r.first, r.last))
            .collect(),
        seek: cursor.seek,
    })
    .unwrap_or_default()
}

fn decode_value(raw: &[u8]) -> Option<StoredCursor> {
    let s: Stored = serde_json::from_slice(raw).ok()?;
    (s.version <= SCHEMA_VERSION && s.cursor >= 0).then(|| StoredCursor {
        offset: s.cursor,
        incarnation: s.subscription_created_at_ms,
        // Ranges that make no sense are dropped: their records are delivered again.
        acked: s
            .acked
            .into_iter()
            .filter(|&(first, last)| first <= last && first > s.cursor)
            .take(MAX_STORED_RANGES)
            .map(|(first, last)| OffsetRange { first, last })
            .collect(),
        seek: s.seek,
    })
}

/// Reads the whole cursors topic.
pub async fn load(cfg: &Config, timeout: Duration) -> Result<Cursors, StoreError> {
    let topic = cfg.cursors_topic();
    let md = kafka::metadata_client(cfg).map_err(StoreError::kafka("metadata client"))?;
    let t = topic.clone();
    let partitions = tokio::task::spawn_blocking(move || kafka::partitions_of(&md, &t))
        .await
        .map_err(|e| StoreError::InternalTopic {
            topic: topic.clone(),
            problem: format!("metadata task failed: {e}"),
        })?
        .map_err(StoreError::kafka(format!("reading metadata of {topic}")))?
        .ok_or_else(|| StoreError::InternalTopic {
            topic: topic.clone(),
            problem: "does not exist".into(),
        })?;
    let consumer: kafka::Reader = kafka::reader(cfg, "cursor-loader")
        .create_with_context(kafka::ReaderContext)
        .map_err(StoreError::kafka("creating the cursor reader"))?;
    let result = read_all(&consumer, &topic, &partitions, timeout).await;
    // Dropping a consumer blocks: keep that off the async workers.
    let _ = tokio::task::spawn_blocking(move || drop(consumer)).await;
    result
}

async fn read_all(
    consumer: &kafka::Reader,
    topic: &str,
    partitions: &[Partition],
    timeout: Duration,
) -> Result<Cursors, StoreError> {
    let mut tpl = TopicPartitionList::new();
    for &p in partitions {
        tpl.add_partition_offset(topic, p, KafkaOffset::Beginning)
            .map_err(StoreError::kafka("building the cursor assignment"))?;
    }
    consumer
        .assign(&tpl)
        .map_err(StoreError::kafka("assigning the cursors topic"))?;
    drop(tpl);

    let deadline = Instant::now() + timeout;
    let mut cursors = Cursors::new();
    let mut at_end: HashSet<Partition> = HashSet::new();
    let mut records = 0u64;
    while at_end.len() < partitions.len() {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(StoreError::Timeout {
                what: format!("reading {topic} ({records} records so far)"),
                after: timeout,
            });
        }
        let Ok(msg) = tokio::time::timeout(left, consumer.recv()).await else {
            continue;
        };
        match msg {
            Ok(m) => {
                records += 1;
                let Some(key) = m.key().and_then(decode_key) else {
                    tracing::warn!(offset = m.offset(), "unreadable cursor key skipped");
                    continue;
                };
                match m.payload() {
                    None => {
                        cursors.remove(&key);
                    }
                    Some(v) => match decode_value(v) {
                        Some(c) => {
                            cursors.insert(key, c);
                        }
                        None => {
                            tracing::warn!(offset = m.offset(), "unreadable cursor value skipped")
                        }
                    },
                }
            }
            Err(KafkaError::PartitionEOF(p)) => {
                at_end.insert(p);
            }
            Err(e) => return Err(StoreError::kafka(format!("reading {topic}"))(e)),
        }
    }
    tracing::info!(records, cursors = cursors.len(), "cursors loaded");
    Ok(cursors)
}

/// Writes cursor records.
pub struct CursorWriter {
    /// Idempotent producer for the cursors topic.
    producer: FutureProducer,
    /// The cursors topic.
    topic: String,
}

impl std::fmt::Debug for CursorWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CursorWriter")
            .field("topic", &self.topic)
            .finish_non_exhaustive()
    }
}

impl CursorWriter {
    pub fn new(cfg: &Config) -> Result<Self, StoreError> {
        Ok(Self {
            producer: kafka::producer(cfg, "cursor-writer")
                .map_err(StoreError::kafka("creating the cursor producer"))?,
            topic: cfg.cursors_topic(),
        })
    }

    /// Writes every update and returns once Kafka acknowledged all of them.
    pub async fn write(&self, updates: &[CursorUpdate]) -> Result<(), StoreError> {
        let encoded: Vec<(String, Vec<u8>)> = updates
            .iter()
            .map(|u| {
                let value = StoredCursor {
                    offset: u.cursor,
                    incarnation: u.incarnation,
                    acked: u.acked.clone(),
                    seek: u.seek,
                };
                (
                    encode_key(&u.subscription, u.partition),
                    encode_value(&value),
                )
            })
            .collect();
        let sends = encoded.iter().map(|(k, v)| {
            self.producer.send(
                FutureRecord::to(&self.topic).key(k).payload(v),
                Timeout::After(Duration::from_secs(10)),
            )
        });
        for r in join_all(sends).await {
            r.map_err(|(e, _)| StoreError::Kafka {
                what: format!("writing cursors to {}", self.topic),
                source: e,
            })?;
        }
        Ok(())
    }
}

/// Writes moved cursors to Kafka: periodically, on revoke and on shutdown. One flush at a
/// time, so an older snapshot never lands after a newer one.
#[derive(Debug)]
pub struct Flusher {
    /// Source of cursors.
    shard: Arc<Shard>,
    /// Where they go.
    writer: CursorWriter,
    /// Serializes flushes.
    lock: tokio::sync::Mutex<()>,
}

impl Flusher {
    pub fn new(shard: Arc<Shard>, writer: CursorWriter) -> Self {
        Self {
            shard,
            writer,
            lock: tokio::sync::Mutex::new(()),
        }
    }

    /// Writes every cursor that moved (of `only` these partitions, if given) and marks them
    /// stored. Returns how many were written.
    pub async fn flush(
        &self,
        only: Option<&[(TopicName, Partition)]>,
    ) -> Result<usize, StoreError> {
        let _one_at_a_time = self.lock.lock().await;
        let mut updates = self.shard.cursor_updates();
        if let Some(only) = only {
            updates.retain(|u| {
                only.iter()
                    .any(|(t, p)| *t == u.subscription.topic && *p == u.partition)
            });
        }
        if updates.is_empty() {
            return Ok(0);
        }
        tracing::trace!(updates = updates.len(), "writing cursors");
        let started = std::time::Instant::now();
        self.writer.write(&updates).await?;
        crate::telemetry::metrics::cursor_flush(started.elapsed());
        self.shard.mark_stored(&updates);
        Ok(updates.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_values_round_trip() {
        let sub = SubscriptionKey {
            topic: TopicName::new("orders").unwrap(),
            name: SubscriptionName::new("billing.v2").unwrap(),
        };
        let k = encode_key(&sub, 7);
        assert_eq!(k, "orders:7:billing.v2");
        assert_eq!(decode_key(k.as_bytes()), Some((sub, 7)));
        let c = StoredCursor {
            offset: 42,
            incarnation: 7,
            seek: 3,
            acked: vec![
                OffsetRange {
                    first: 44,
                    last: 50,
                },
                OffsetRange {
                    first: 60,
                    last: 60,
                },
            ],
        };
        assert_eq!(decode_value(&encode_value(&c)), Some(c));
        // Written before acked ranges were stored: none.
        let old = br#"{"version":1,"cursor":5,"subscription_created_at_ms":1}"#;
        assert_eq!(decode_value(old), Some(StoredCursor::at(5, 1)));
        // Nonsense ranges are dropped, not trusted.
        let bad = br#"{"version":1,"cursor":5,"subscription_created_at_ms":1,"acked":[[9,7],[2,3],[6,6]]}"#;
        assert_eq!(
            decode_value(bad).unwrap().acked,
            vec![OffsetRange { first: 6, last: 6 }]
        );
        assert_eq!(
            decode_value(b"{\"version\":2,\"cursor\":1,\"subscription_created_at_ms\":7}"),
            None
        );
        assert_eq!(decode_key(b"orders:x:b"), None);
    }
}
