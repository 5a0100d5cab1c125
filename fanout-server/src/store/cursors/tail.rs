//! Follows the cursors topic for the life of the shard.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fanout_core::model::{Offset, Partition};
use fanout_core::shard::Shard;
use rdkafka::consumer::Consumer;
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{Offset as KafkaOffset, TopicPartitionList};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::{decode_key, decode_value};
use crate::kafka::{self, KafkaSettings};
use crate::store::StoreError;

/// Follows the cursors topic for the life of the shard, keeping the shard's stored cursors
/// of partitions it does not own current (every shard's flushes land there). At assign, the
/// shard waits until it has read everything written before ([`CursorTail::barrier`]): the
/// previous owner's final cursors, and the outcome of any cursor transaction still open.
pub struct CursorTail {
    topic: String,
    partitions: Vec<Partition>,
    /// Answers high watermarks past open transactions.
    ends: Arc<kafka::MetadataClient>,
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
        cfg: &KafkaSettings,
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
        let role = "cursor-tail";
        let consumer: kafka::Reader = kafka::reader(cfg, role)
            .create_with_context(kafka::ReaderContext::new(role))
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

    /// The client that reads the end of the cursors topic. Nothing polls it: the caller
    /// serves its statistics ([`kafka::stats::serve_unpolled`]).
    pub fn ends_client(&self) -> Arc<kafka::MetadataClient> {
        self.ends.clone()
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
