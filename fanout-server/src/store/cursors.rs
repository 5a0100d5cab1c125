//! Reads and writes the cursors topic: key `<topic>:<partition>:<subscription>`, JSON value
//! `{"version":1,"cursor":N,…}`; a null value deletes. Written in transactions together with
//! the shard group's offsets (fencing), read with `read_committed`.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use futures::future::join_all;
use parking_lot::Mutex;
use rdkafka::consumer::{Consumer, ConsumerGroupMetadata};
use rdkafka::error::{KafkaError, KafkaResult};
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
    /// The shard that wrote it (for operators and the reliability checks; not read back).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    shard: Option<String>,
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

/// A cursor's record value, naming the shard that writes it (if given).
pub fn encode_value(cursor: &StoredCursor, shard: Option<&str>) -> Vec<u8> {
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
        shard: shard.map(str::to_owned),
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
        let deadline = tokio::time::Instant::now() + timeout;
        // Kafka may not answer at once (a leader moving): asked again within the timeout.
        let ends = loop {
            let (client, topic, partitions) = (
                self.ends.clone(),
                self.topic.clone(),
                self.partitions.clone(),
            );
            let asked = tokio::task::spawn_blocking(move || {
                kafka::watermarks(&client, &topic, &partitions)
            })
            .await
            .map_err(|e| StoreError::InternalTopic {
                topic: self.topic.clone(),
                problem: format!("watermark task failed: {e}"),
            })?;
            match asked {
                Ok(ends) => break ends,
                Err(e) if tokio::time::Instant::now() + Duration::from_millis(500) < deadline => {
                    tracing::warn!(error = %e, "cannot read the end of the cursors topic; asking again");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Err(e) => {
                    return Err(StoreError::kafka(format!(
                        "reading the end of {}",
                        self.topic
                    ))(e));
                }
            }
        };
        let mut applied = self.applied.clone();
        let reached = |a: &HashMap<Partition, Offset>| {
            ends.iter()
                .all(|&(p, _, end)| a.get(&p).copied().unwrap_or(0) >= end)
        };
        match tokio::time::timeout_at(deadline, applied.wait_for(reached)).await {
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
        let mut publish = true;
        let next = tokio::select! {
            _ = cancel.cancelled() => break,
            m = tokio::time::timeout(Duration::from_millis(100), consumer.recv()) => m,
        };
        match next {
            // Nothing new: positions may still have moved past transaction markers.
            Err(_) | Ok(Err(KafkaError::PartitionEOF(_))) => {}
            Ok(Ok(m)) => {
                records += 1;
                // While records stream in, how far the tail got is published every 100 of
                // them (and whenever it catches up).
                publish = records.is_multiple_of(100);
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
        if !publish {
            continue;
        }
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
///
/// A transaction that fails is aborted; one whose outcome stays unknown (a commit or abort
/// that timed out), or a producer Kafka fenced (its transaction outlived the transaction
/// timeout while the process was stopped), makes the writer start over with a new producer
/// under the same transactional id, which aborts whatever the old one left open. Fenced
/// twice within a minute means another live process uses this shard's name: that ends the
/// shard ([`StoreError::Fenced`]).
pub struct CursorWriter {
    /// Settings of the transactional producer, to create it again.
    settings: rdkafka::ClientConfig,
    /// The producer in use.
    producer: Mutex<FutureProducer>,
    /// Set when the producer must be created again before the next transaction.
    broken: AtomicBool,
    /// When Kafka last fenced the producer.
    last_fenced: Mutex<Option<Instant>>,
    /// The shard's name, written into every cursor record.
    shard: String,
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

/// Tries of a commit or abort whose outcome is unknown (a retriable error).
const TXN_TRIES: usize = 3;

/// What a failed transactional call leaves to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Failure {
    /// The same call may be made again.
    Retriable,
    /// The transaction must be aborted.
    Abortable,
    /// The producer is unusable.
    Fatal,
}

fn failure(e: &KafkaError) -> Failure {
    match e {
        KafkaError::Transaction(t) if t.is_fatal() => Failure::Fatal,
        KafkaError::Transaction(t) if t.txn_requires_abort() => Failure::Abortable,
        KafkaError::Transaction(t) if t.is_retriable() => Failure::Retriable,
        _ => Failure::Abortable,
    }
}

fn kafka_error(what: &str, source: KafkaError) -> StoreError {
    StoreError::Kafka {
        what: what.to_owned(),
        source,
    }
}

/// Why a transaction did not commit, and what it left behind.
struct Failed {
    error: StoreError,
    /// The producer was fenced or is in an unknown state.
    broken: bool,
    fenced: bool,
}

impl Failed {
    fn kafka(what: &str, e: KafkaError) -> Self {
        let kind = failure(&e);
        Self {
            error: kafka_error(what, e),
            broken: kind == Failure::Fatal,
            fenced: kind == Failure::Fatal,
        }
    }
}

/// Runs a transactional call, again while its outcome is unknown.
fn with_retries(mut call: impl FnMut() -> KafkaResult<()>) -> KafkaResult<()> {
    let mut last = None;
    for _ in 0..TXN_TRIES {
        match call() {
            Ok(()) => return Ok(()),
            Err(e) if failure(&e) == Failure::Retriable => last = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last.unwrap_or(KafkaError::Canceled))
}

impl CursorWriter {
    /// Creates the producer and registers its transactional id with Kafka, which aborts
    /// whatever an earlier life of this shard left open.
    pub async fn new(cfg: &Config, shard_name: &str) -> Result<Self, StoreError> {
        let settings = kafka::transactional_settings(
            cfg,
            "cursor-writer",
            &cfg.cursor_transactional_id(shard_name),
        );
        let producer = Self::start(&settings)
            .await
            .map_err(|e| match failure(&e) {
                Failure::Fatal => StoreError::Fenced(format!(
                    "registering the cursor writer's transactional id: {e}"
                )),
                _ => kafka_error("registering the cursor writer's transactional id", e),
            })?;
        Ok(Self {
            settings,
            producer: Mutex::new(producer),
            broken: AtomicBool::new(false),
            last_fenced: Mutex::new(None),
            shard: shard_name.to_owned(),
            topic: cfg.cursors_topic(),
        })
    }

    async fn start(settings: &rdkafka::ClientConfig) -> KafkaResult<FutureProducer> {
        let producer: FutureProducer = settings.create()?;
        let p = producer.clone();
        tokio::task::spawn_blocking(move || p.init_transactions(Duration::from_secs(60)))
            .await
            .map_err(|_| KafkaError::Canceled)??;
        Ok(producer)
    }

    /// The producer to use, created again first if the last one broke.
    async fn producer(&self) -> Result<FutureProducer, StoreError> {
        if self.broken.load(Ordering::Acquire) {
            tracing::warn!("starting the cursor writer over with a new producer");
            let fresh = Self::start(&self.settings)
                .await
                .map_err(|e| kafka_error("starting the cursor writer over", e))?;
            *self.producer.lock() = fresh;
            self.broken.store(false, Ordering::Release);
        }
        Ok(self.producer.lock().clone())
    }

    /// Writes every update and commits `offsets` for the shard group in one transaction;
    /// returns once Kafka committed it. `group` gives the shard's group metadata (asked off
    /// the async workers), which Kafka checks: a shard that is no longer the member it was
    /// (a zombie) has the whole transaction refused. `still_valid` is asked just before the
    /// commit: false aborts it (the process was stopped meanwhile).
    pub async fn write(
        &self,
        updates: &[CursorUpdate],
        offsets: &[(TopicName, Partition, Offset)],
        group: GroupMetadataSource,
        still_valid: Arc<dyn Fn() -> bool + Send + Sync>,
    ) -> Result<(), StoreError> {
        let producer = self.producer().await?;
        let result = self
            .transact(&producer, updates, offsets, group, still_valid)
            .await;
        let Err(mut failed) = result else {
            return Ok(());
        };
        crate::telemetry::metrics::cursor_transaction_aborted();
        if !failed.broken {
            let p = producer.clone();
            let aborted = tokio::task::spawn_blocking(move || {
                with_retries(|| p.abort_transaction(TXN_CALL_TIMEOUT))
            })
            .await
            .map_err(|_| KafkaError::Canceled)
            .and_then(|r| r);
            if let Err(e) = aborted {
                tracing::warn!(error = %e, "a cursor transaction could not be aborted");
                failed.broken = true;
                failed.fenced |= failure(&e) == Failure::Fatal;
            }
        }
        if failed.broken {
            self.broken.store(true, Ordering::Release);
        }
        if failed.fenced {
            let now = Instant::now();
            let again = self
                .last_fenced
                .lock()
                .replace(now)
                .is_some_and(|t| now.duration_since(t) < Duration::from_secs(60));
            if again {
                return Err(StoreError::Fenced(failed.error.to_string()));
            }
        }
        Err(failed.error)
    }

    async fn transact(
        &self,
        producer: &FutureProducer,
        updates: &[CursorUpdate],
        offsets: &[(TopicName, Partition, Offset)],
        group: GroupMetadataSource,
        still_valid: Arc<dyn Fn() -> bool + Send + Sync>,
    ) -> Result<(), Failed> {
        let p = producer.clone();
        tokio::task::spawn_blocking(move || p.begin_transaction())
            .await
            .map_err(|_| Failed::kafka("beginning a cursor transaction", KafkaError::Canceled))?
            .map_err(|e| {
                // A transaction left in an unknown state: start over.
                let mut f = Failed::kafka("beginning a cursor transaction", e);
                f.broken = true;
                f
            })?;
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
                    encode_value(&value, Some(&self.shard)),
                )
            })
            .collect();
        let sends = encoded.iter().map(|(k, v)| {
            producer.send(
                FutureRecord::to(&self.topic).key(k).payload(v),
                Timeout::After(TXN_CALL_TIMEOUT),
            )
        });
        for r in join_all(sends).await {
            r.map_err(|(e, _)| Failed::kafka(&format!("writing cursors to {}", self.topic), e))?;
        }
        let mut tpl = TopicPartitionList::new();
        for (t, part, o) in offsets {
            tpl.add_partition_offset(t.as_str(), *part, KafkaOffset::Offset(*o))
                .map_err(|e| Failed::kafka("building the offsets to commit", e))?;
        }
        let p = producer.clone();
        tokio::task::spawn_blocking(move || {
            if tpl.count() > 0 {
                let Some(metadata) = group() else {
                    return Err(Failed::kafka(
                        "committing the shard group's offsets (not a group member)",
                        KafkaError::Canceled,
                    ));
                };
                p.send_offsets_to_transaction(&tpl, &metadata, TXN_CALL_TIMEOUT)
                    .map_err(|e| Failed::kafka("committing the shard group's offsets", e))?;
            }
            if !still_valid() {
                return Err(Failed {
                    error: StoreError::Timeout {
                        what: "a cursor transaction (the process was stopped meanwhile)".into(),
                        after: TXN_CALL_TIMEOUT,
                    },
                    broken: false,
                    fenced: false,
                });
            }
            with_retries(|| p.commit_transaction(TXN_CALL_TIMEOUT)).map_err(|e| {
                // Still unknown after the retries: start over rather than guess.
                let unknown = failure(&e) == Failure::Retriable;
                let mut f = Failed::kafka("committing a cursor transaction", e);
                f.broken |= unknown;
                f
            })
        })
        .await
        .map_err(|_| Failed::kafka("committing a cursor transaction", KafkaError::Canceled))?
    }
}

/// Source of this shard's group metadata (the ingest consumer's), for fencing. Blocking.
pub type GroupMetadataSource = Arc<dyn Fn() -> Option<ConsumerGroupMetadata> + Send + Sync>;

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
        let owns_nothing = offsets.is_empty();
        offsets.retain(|(t, p, _)| wanted(t, *p));
        if suspended && owns_nothing {
            // Nothing owned, nothing to protect: no stale delivery is possible.
            self.lift(started);
            return Ok(0);
        }
        // Before the ingest exists, nothing is owned.
        let Some(group) = self.group.get().cloned() else {
            return Ok(0);
        };
        // Every transaction carries the offsets of the partitions whose cursors it writes
        // (changed or not): Kafka checks the shard's membership only when offsets are sent.
        // A cursor of a partition no longer owned is not written.
        let owned: HashSet<(TopicName, Partition)> =
            offsets.iter().map(|(t, p, _)| (t.clone(), *p)).collect();
        updates.retain(|u| owned.contains(&(u.subscription.topic.clone(), u.partition)));
        if !suspended {
            let touched: HashSet<(&TopicName, Partition)> = updates
                .iter()
                .map(|u| (&u.subscription.topic, u.partition))
                .collect();
            offsets.retain(|(t, p, o)| {
                touched.contains(&(t, *p)) || committed.get(&(t.clone(), *p)) != Some(o)
            });
        }
        if offsets.is_empty() {
            return Ok(0);
        }
        tracing::trace!(
            updates = updates.len(),
            offsets = offsets.len(),
            suspended,
            "writing cursors"
        );
        let shard = self.shard.clone();
        // Not stopped again since this flush began (a suspended shard's proof may not
        // straddle a gap either).
        let still_valid: Arc<dyn Fn() -> bool + Send + Sync> =
            Arc::new(move || shard.lease().recent(Instant::now()));
        self.writer
            .write(&updates, &offsets, group, still_valid)
            .await?;
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
        assert_eq!(
            decode_value(&encode_value(&c, Some("shard-1"))),
            Some(c.clone())
        );
        assert!(
            String::from_utf8(encode_value(&c, Some("shard-1")))
                .unwrap()
                .contains(r#""shard":"shard-1""#)
        );
        assert_eq!(decode_value(&encode_value(&c, None)), Some(c));
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
