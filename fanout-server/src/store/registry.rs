//! Reads and writes the registry topic.
//!
//! Every shard tails the topic from its beginning and applies each record to its [`Shard`];
//! the admin API writes through [`RegistryWriter`], which answers once this shard has applied
//! the write (read-your-writes).

use std::sync::Arc;
use std::time::Duration;

use fanout_core::registry::{Change, Key};
use fanout_core::shard::Shard;
use rdkafka::consumer::Consumer;
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::util::Timeout;
use rdkafka::{Offset as KafkaOffset, TopicPartitionList};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::StoreError;
use crate::kafka::{self, KafkaSettings};
use crate::telemetry;

/// Opens a consumer on the registry topic, positioned at its beginning.
pub fn open_reader(cfg: &KafkaSettings) -> Result<kafka::Reader, StoreError> {
    let role = "registry";
    let consumer: kafka::Reader = kafka::reader(cfg, role)
        .create_with_context(kafka::ReaderContext::new(role))
        .map_err(StoreError::kafka("creating the registry reader"))?;
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(&cfg.registry_topic(), 0, KafkaOffset::Beginning)
        .map_err(StoreError::kafka("building the registry assignment"))?;
    consumer
        .assign(&tpl)
        .map_err(StoreError::kafka("assigning the registry topic"))?;
    Ok(consumer)
}

/// Applies registry records to the shard until cancelled. `loaded` turns true once the
/// reader reached the end of the topic for the first time.
pub async fn tail(
    consumer: kafka::Reader,
    shard: Arc<Shard>,
    loaded: watch::Sender<bool>,
    cancel: CancellationToken,
) {
    loop {
        let msg = tokio::select! {
            _ = cancel.cancelled() => break,
            m = consumer.recv() => m,
        };
        match msg {
            Ok(m) => {
                let Some(key) = m.key() else {
                    tracing::warn!(offset = m.offset(), "registry record without a key skipped");
                    continue;
                };
                match shard.apply_registry(m.offset(), key, m.payload()) {
                    Ok(Some(change)) => {
                        tracing::info!(offset = m.offset(), ?change, "registry change");
                        if let Change::SubscriptionAdded(spec) = &change {
                            for p in shard
                                .topic(&spec.topic)
                                .map(|t| t.owned_partitions())
                                .unwrap_or_default()
                            {
                                telemetry::metrics::track_losses(
                                    spec.topic.as_str(),
                                    spec.name.as_str(),
                                    p.partition,
                                );
                            }
                        }
                    }
                    Ok(None) => {}
                    Err(e) => {
                        tracing::error!(offset = m.offset(), error = %e, "registry record skipped")
                    }
                }
            }
            Err(KafkaError::PartitionEOF(_)) => {
                if let Ok(positions) = consumer.position()
                    && let Some(KafkaOffset::Offset(end)) = positions
                        .elements()
                        .first()
                        .map(rdkafka::topic_partition_list::TopicPartitionListElem::offset)
                {
                    shard.registry_reached(end);
                }
                if !*loaded.borrow() {
                    let (topics, subs) = shard.with_registry(|r| {
                        let topics = r.topics().count();
                        let subs: usize = r
                            .topics()
                            .map(|t| r.subscriptions_of(&t.name).count())
                            .sum();
                        (topics, subs)
                    });
                    tracing::info!(topics, subscriptions = subs, "registry loaded");
                    loaded.send_replace(true);
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "registry reader error");
                tokio::select! {
                    _ = cancel.cancelled() => break,
                    _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                }
            }
        }
    }
    // Dropping a consumer blocks (it closes its queues): keep that off the async workers.
    let _ = tokio::task::spawn_blocking(move || drop(consumer)).await;
}

/// Writes registry records and waits until this shard applied them.
pub struct RegistryWriter {
    /// Idempotent producer for the registry topic.
    producer: FutureProducer<kafka::StatsContext>,
    /// The registry topic.
    topic: String,
    /// Where writes become visible.
    shard: Arc<Shard>,
    /// How long a write may take to be applied before the caller gets an error.
    apply_timeout: Duration,
}

impl std::fmt::Debug for RegistryWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryWriter")
            .field("topic", &self.topic)
            .finish_non_exhaustive()
    }
}

impl RegistryWriter {
    pub fn new(cfg: &KafkaSettings, shard: Arc<Shard>) -> Result<Self, StoreError> {
        Ok(Self {
            producer: kafka::producer(cfg, "registry-writer")
                .map_err(StoreError::kafka("creating the registry producer"))?,
            topic: cfg.registry_topic(),
            shard,
            apply_timeout: Duration::from_secs(15),
        })
    }

    /// Waits until this shard applied everything the registry topic holds now (writes of
    /// other shards, and earlier writes of this one that timed out), so that a
    /// read-modify-write starts from the latest state.
    pub async fn sync(&self) -> Result<(), StoreError> {
        let producer = self.producer.clone();
        let topic = self.topic.clone();
        let high = tokio::task::spawn_blocking(move || {
            producer
                .client()
                .fetch_watermarks(&topic, 0, Duration::from_secs(10))
        })
        .await
        .map_err(|_| StoreError::ShuttingDown)?
        .map_err(|e| StoreError::Kafka {
            what: format!("reading the end of {}", self.topic),
            source: e,
        })?
        .1;
        self.applied_up_to(high, || format!("the registry up to offset {high}"))
            .await
    }

    /// Writes `value` (or a tombstone) under `key` and waits until the shard applied it.
    pub async fn put(&self, key: &Key, value: Option<Vec<u8>>) -> Result<i64, StoreError> {
        let k = key.encode();
        let mut record: FutureRecord<'_, str, [u8]> = FutureRecord::to(&self.topic).key(&k);
        if let Some(v) = value.as_deref() {
            record = record.payload(v);
        }
        let delivery = self
            .producer
            .send(record, Timeout::After(Duration::from_secs(10)))
            .await
            .map_err(|(e, _)| StoreError::Kafka {
                what: format!("writing {k} to {}", self.topic),
                source: e,
            })?;
        let offset = delivery.offset;
        self.applied_up_to(offset + 1, || {
            format!("registry record {k} at offset {offset}")
        })
        .await?;
        Ok(offset)
    }

    /// Waits until the shard applied every registry record below `end`.
    async fn applied_up_to(
        &self,
        end: i64,
        what: impl FnOnce() -> String,
    ) -> Result<(), StoreError> {
        let mut progress = self.shard.registry_progress();
        tokio::time::timeout(self.apply_timeout, progress.wait_for(|next| *next >= end))
            .await
            .map_err(|_| StoreError::Timeout {
                what: format!("applying {}", what()),
                after: self.apply_timeout,
            })?
            .map_err(|_| StoreError::ShuttingDown)?;
        Ok(())
    }
}
