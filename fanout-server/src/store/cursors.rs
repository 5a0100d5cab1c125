//! Reads and writes the cursors topic: key `<topic>:<partition>:<subscription>`, JSON value
//! `{"version":1,"cursor":N,…}`; a null value deletes. Written in transactions together with
//! the shard group's offsets (fencing), read with `read_committed`.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use futures::future::join_all;
use rdkafka::consumer::{Consumer, ConsumerGroupMetadata};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::util::Timeout;
use rdkafka::{Offset as KafkaOffset, TopicPartitionList};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

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

/// Follows the cursors topic for the life of the shard, keeping the shard's stored cursors
/// of partitions it does not own current (every shard's flushes land there). At assign, the
/// shard waits until it has read everything written before ([`CursorTail::barrier`]): the
/// previous owner's final cursors, and the outcome of any cursor transaction still open.
pub struct CursorTail {
    topic: String,
    partitions: Vec<Partition>,
    /// Answers high watermarks past open transactions.
    ends: Arc<rdkafka::consumer::BaseConsumer>,
    /// Per partition, the offset up to which records were applied.
    applied: watch::Receiver<HashMap<Partition, Offset>>,
}

impl std::fmt::Debug for CursorTail {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CursorTail")
            .field("topic", &self.topic)
            .field("applied", &*self.applied.borrow())
            .finish_non_exhaustive()
    }
}

impl CursorTail {
    /// Starts following the cursors topic from its beginning and returns once everything
    /// written so far is applied (or fails after `load_timeout`).
    pub async fn start(
        cfg: &Config,
        shard: Arc<Shard>,
        tasks: &TaskTracker,
        cancel: CancellationToken,
        load_timeout: Duration,
    ) -> Result<Arc<Self>, StoreError> {
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
        let consumer: kafka::Reader = kafka::reader(cfg, "cursor-tail")
            .create_with_context(kafka::ReaderContext)
            .map_err(StoreError::kafka("creating the cursor reader"))?;
        let mut tpl = TopicPartitionList::new();
        for &p in &partitions {
            tpl.add_partition_offset(&topic, p, KafkaOffset::Beginning)
                .map_err(StoreError::kafka("building the cursor assignment"))?;
        }
        consumer
            .assign(&tpl)
            .map_err(StoreError::kafka("assigning the cursors topic"))?;
        let (applied_tx, applied) = watch::channel(HashMap::new());
        tasks.spawn(tail(consumer, shard, applied_tx, cancel));
        let this = Arc::new(Self {
            topic: topic.clone(),
            partitions,
            ends: Arc::new(kafka::end_client(cfg).map_err(StoreError::kafka("ends client"))?),
            applied,
        });
        let started = Instant::now();
        this.barrier(load_timeout).await?;
        tracing::info!(elapsed = ?started.elapsed(), "cursors loaded");
        Ok(this)
    }

    /// Returns once every cursor record written before the call (committed or aborted: a
    /// transaction still open is waited for) has been applied to the shard.
    pub async fn barrier(&self, timeout: Duration) -> Result<(), StoreError> {
        let ends = self.ends.clone();
        let (topic, partitions) = (self.topic.clone(), self.partitions.clone());
        let ends =
            tokio::task::spawn_blocking(move || kafka::watermarks(&ends, &topic, &partitions))
                .await
                .map_err(|e| StoreError::InternalTopic {
                    topic: self.topic.clone(),
                    problem: format!("watermark task failed: {e}"),
                })?
                .map_err(StoreError::kafka(format!(
                    "reading the end of {}",
                    self.topic
                )))?;
        let mut applied = self.applied.clone();
        let reached = |a: &HashMap<Partition, Offset>| {
            ends.iter()
                .all(|&(p, _, end)| a.get(&p).copied().unwrap_or(0) >= end)
        };
        match tokio::time::timeout(timeout, applied.wait_for(reached)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(_)) => Err(StoreError::ShuttingDown),
            Err(_) => Err(StoreError::Timeout {
                what: format!(
                    "reading {} up to {:?} (read so far: {:?})",
                    self.topic,
                    ends.iter().map(|&(p, _, e)| (p, e)).collect::<Vec<_>>(),
                    *self.applied.borrow()
                ),
                after: timeout,
            }),
        }
    }
}

/// The tailing task: applies every cursor record to the shard, then publishes how far it got.
async fn tail(
    consumer: kafka::Reader,
    shard: Arc<Shard>,
    applied: watch::Sender<HashMap<Partition, Offset>>,
    cancel: CancellationToken,
) {
    let mut records = 0u64;
    loop {
        let next = tokio::select! {
            _ = cancel.cancelled() => break,
            m = tokio::time::timeout(Duration::from_millis(100), consumer.recv()) => m,
        };
        match next {
            // Nothing new: positions may still have moved past transaction markers.
            Err(_) | Ok(Err(KafkaError::PartitionEOF(_))) => {}
            Ok(Ok(m)) => {
                records += 1;
                match m.key().and_then(decode_key) {
                    None => tracing::warn!(offset = m.offset(), "unreadable cursor key skipped"),
                    Some((key, p)) => match m.payload().map(decode_value) {
                        None => {
                            shard.apply_stored(key, p, None);
                        }
                        Some(Some(c)) => {
                            shard.apply_stored(key, p, Some(c));
                        }
                        Some(None) => {
                            tracing::warn!(offset = m.offset(), "unreadable cursor value skipped")
                        }
                    },
                }
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "reading the cursors topic; retrying");
                tokio::select! {
                    _ = cancel.cancelled() => break,
                    _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                }
            }
        }
        // Everything returned by the consumer so far has been applied (this task is its
        // only reader), so its position is how far the shard is.
        if let Ok(positions) = consumer.position() {
            applied.send_if_modified(|a| {
                let mut moved = false;
                for e in positions.elements() {
                    if let KafkaOffset::Offset(o) = e.offset() {
                        let at = a.entry(e.partition()).or_insert(0);
                        if o > *at {
                            *at = o;
                            moved = true;
                        }
                    }
                }
                moved
            });
        }
    }
    tracing::debug!(records, "cursor tail stopped");
    // Dropping a consumer blocks: keep that off the async workers.
    let _ = tokio::task::spawn_blocking(move || drop(consumer)).await;
}

/// Writes cursor records, together with the shard group's offsets, in Kafka transactions.
pub struct CursorWriter {
    /// Transactional producer for the cursors topic (one transactional id per shard name).
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

/// How long each transactional call may take.
const TXN_CALL_TIMEOUT: Duration = Duration::from_secs(10);

fn txn_error(what: &str, e: KafkaError) -> StoreError {
    let fatal = matches!(&e, KafkaError::Transaction(t) if t.is_fatal());
    if fatal {
        StoreError::Fenced(format!("{what}: {e}"))
    } else {
        StoreError::Kafka {
            what: what.to_owned(),
            source: e,
        }
    }
}

impl CursorWriter {
    /// Creates the producer and registers its transactional id with Kafka, which aborts
    /// whatever an earlier life of this shard left open.
    pub async fn new(cfg: &Config, shard_name: &str) -> Result<Self, StoreError> {
        let producer = kafka::transactional_producer(
            cfg,
            "cursor-writer",
            &cfg.cursor_transactional_id(shard_name),
        )
        .map_err(StoreError::kafka("creating the cursor producer"))?;
        let p = producer.clone();
        tokio::task::spawn_blocking(move || p.init_transactions(Duration::from_secs(60)))
            .await
            .map_err(|e| StoreError::Thread("cursor writer", e.to_string()))?
            .map_err(|e| txn_error("registering the cursor writer's transactional id", e))?;
        Ok(Self {
            producer,
            topic: cfg.cursors_topic(),
        })
    }

    /// Writes every update and commits `offsets` for the shard group (as the member
    /// `group` describes) in one transaction; returns once Kafka committed it. A shard that
    /// is no longer the group member it was (a zombie) has the whole transaction refused.
    /// [`StoreError::Fenced`] means this writer can never write again.
    pub async fn write(
        &self,
        updates: &[CursorUpdate],
        offsets: &[(TopicName, Partition, Offset)],
        group: Option<ConsumerGroupMetadata>,
    ) -> Result<(), StoreError> {
        self.producer
            .begin_transaction()
            .map_err(|e| txn_error("beginning a cursor transaction", e))?;
        let result = self.transact(updates, offsets, group).await;
        if let Err(e) = &result {
            crate::telemetry::metrics::cursor_transaction_aborted();
            if matches!(e, StoreError::Fenced(_)) {
                return result;
            }
            let p = self.producer.clone();
            let aborted =
                tokio::task::spawn_blocking(move || p.abort_transaction(TXN_CALL_TIMEOUT))
                    .await
                    .map_err(|e| StoreError::Thread("cursor writer", e.to_string()))?;
            if let Err(abort) = aborted {
                return Err(txn_error("aborting a cursor transaction", abort));
            }
        }
        result
    }

    async fn transact(
        &self,
        updates: &[CursorUpdate],
        offsets: &[(TopicName, Partition, Offset)],
        group: Option<ConsumerGroupMetadata>,
    ) -> Result<(), StoreError> {
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
                Timeout::After(TXN_CALL_TIMEOUT),
            )
        });
        for r in join_all(sends).await {
            r.map_err(|(e, _)| StoreError::Kafka {
                what: format!("writing cursors to {}", self.topic),
                source: e,
            })?;
        }
        let p = self.producer.clone();
        let mut tpl = TopicPartitionList::new();
        for (t, part, o) in offsets {
            tpl.add_partition_offset(t.as_str(), *part, KafkaOffset::Offset(*o))
                .map_err(StoreError::kafka("building the offsets to commit"))?;
        }
        tokio::task::spawn_blocking(move || {
            if let Some(group) = group
                && tpl.count() > 0
            {
                p.send_offsets_to_transaction(&tpl, &group, TXN_CALL_TIMEOUT)
                    .map_err(|e| txn_error("committing the shard group's offsets", e))?;
            }
            p.commit_transaction(TXN_CALL_TIMEOUT)
                .map_err(|e| txn_error("committing a cursor transaction", e))
        })
        .await
        .map_err(|e| StoreError::Thread("cursor writer", e.to_string()))?
    }
}

/// Source of this shard's group metadata (the ingest consumer's), for fencing.
pub type GroupMetadataSource = Box<dyn Fn() -> Option<ConsumerGroupMetadata> + Send + Sync>;

/// Writes moved cursors and the shard group's offsets to Kafka: periodically, on revoke and
/// on shutdown. One flush at a time, so an older snapshot never lands after a newer one.
pub struct Flusher {
    /// Source of cursors.
    shard: Arc<Shard>,
    /// Where they go.
    writer: CursorWriter,
    /// Serializes flushes; holds the offsets last committed.
    lock: tokio::sync::Mutex<HashMap<(TopicName, Partition), Offset>>,
    /// The ingest consumer's group metadata (set once it exists).
    group: OnceLock<GroupMetadataSource>,
}

impl std::fmt::Debug for Flusher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Flusher")
            .field("writer", &self.writer)
            .finish_non_exhaustive()
    }
}

impl Flusher {
    pub fn new(shard: Arc<Shard>, writer: CursorWriter) -> Self {
        Self {
            shard,
            writer,
            lock: tokio::sync::Mutex::new(HashMap::new()),
            group: OnceLock::new(),
        }
    }

    /// Where the group metadata of this shard's group member comes from.
    pub fn set_group(&self, source: GroupMetadataSource) {
        let _ = self.group.set(source);
    }

    /// Writes every cursor that moved and the group offsets that changed (of `only` these
    /// partitions, if given) in one transaction, and marks the cursors stored. Returns how
    /// many cursors were written.
    ///
    /// While the shard's lease is suspended (the process was stopped), nothing is written:
    /// a transaction with the offsets alone tests whether the shard is still the group
    /// member it was, and lifts the suspension if so.
    pub async fn flush(
        &self,
        only: Option<&[(TopicName, Partition)]>,
    ) -> Result<usize, StoreError> {
        let mut committed = self.lock.lock().await;
        let started = Instant::now();
        let lease = self.shard.lease();
        let suspended = lease.is_suspended();
        if !suspended && !lease.live(started) {
            // A gap the ticker has not seen yet: it will suspend the lease first.
            return Ok(0);
        }
        let wanted = |t: &TopicName, p: Partition| {
            only.is_none_or(|only| only.iter().any(|(ot, op)| ot == t && *op == p))
        };
        let mut updates = if suspended {
            Vec::new()
        } else {
            self.shard.cursor_updates()
        };
        updates.retain(|u| wanted(&u.subscription.topic, u.partition));
        let mut offsets = self.shard.commit_positions_after(&updates);
        offsets.retain(|(t, p, _)| wanted(t, *p));
        let group = self.group.get().and_then(|g| g());
        if suspended {
            if offsets.is_empty() {
                // Nothing owned, nothing to protect: no stale delivery is possible.
                self.lift(started);
                return Ok(0);
            }
            if group.is_none() {
                return Ok(0);
            }
        } else {
            offsets.retain(|(t, p, o)| committed.get(&(t.clone(), *p)) != Some(o));
            if updates.is_empty() && offsets.is_empty() {
                return Ok(0);
            }
        }
        tracing::trace!(
            updates = updates.len(),
            offsets = offsets.len(),
            "writing cursors"
        );
        self.writer.write(&updates, &offsets, group).await?;
        crate::telemetry::metrics::cursor_flush(started.elapsed());
        self.shard.mark_stored(&updates);
        for (t, p, o) in offsets {
            committed.insert((t, p), o);
        }
        if suspended {
            self.lift(started);
        }
        Ok(updates.len())
    }

    fn lift(&self, started: Instant) {
        if self.shard.lease().confirm(started) {
            tracing::info!(
                "the shard group confirmed this shard is still a member; deliveries resume"
            );
            self.shard.wake_all();
        }
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
