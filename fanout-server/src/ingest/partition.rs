//! The reader of one owned partition: moves records from its Kafka queue into the shared
//! window, waits when the window is full (which stops fetching that partition), and moves
//! back when a subscription needs records below the window.

use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::FutureExt;
use rdkafka::Offset as KafkaOffset;
use rdkafka::consumer::Consumer;
use rdkafka::consumer::stream_consumer::StreamPartitionQueue;
use rdkafka::message::{BorrowedMessage, Headers, Message, Timestamp};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::{IngestConsumer, IngestContext, report_losses};
use crate::kafka;
use crate::log::Batch;
use crate::model::{Header, Record, TimestampKind};
use crate::shard::{OwnedPartition, Shard, TopicRuntime};

/// Most records moved into the window in one batch.
const MAX_BATCH: usize = 1000;

pub(super) struct Reader {
    pub shard: Arc<Shard>,
    pub topic: Arc<TopicRuntime>,
    pub owned: Arc<OwnedPartition>,
    pub queue: StreamPartitionQueue<IngestContext>,
    pub consumer: Weak<IngestConsumer>,
}

enum Event {
    Cancelled,
    Rewind,
    Records(Vec<Record>),
}

/// Copies a Kafka message out of librdkafka: the only copy of its payload fanout makes.
pub fn to_record(m: &BorrowedMessage<'_>) -> Record {
    let headers: Arc<[Header]> = match m.headers() {
        Some(hs) => hs
            .iter()
            .map(|h| Header {
                key: h.key.to_owned(),
                value: h.value.map(Bytes::copy_from_slice),
            })
            .collect(),
        None => Arc::new([]),
    };
    Record {
        partition: m.partition(),
        offset: m.offset(),
        key: m.key().map(Bytes::copy_from_slice),
        value: m.payload().map(Bytes::copy_from_slice),
        headers,
        timestamp: match m.timestamp() {
            Timestamp::CreateTime(t) => Some((t, TimestampKind::CreateTime)),
            Timestamp::LogAppendTime(t) => Some((t, TimestampKind::LogAppendTime)),
            Timestamp::NotAvailable => None,
        },
    }
}

impl Reader {
    pub async fn run(self, cancel: CancellationToken) {
        let span = tracing::info_span!("partition", topic = %self.owned.topic, partition = self.owned.partition);
        self.read(cancel).instrument(span).await;
    }

    async fn read(self, cancel: CancellationToken) {
        let mut rewinds = self.owned.rewind_requests();
        loop {
            let event = tokio::select! {
                biased;
                _ = cancel.cancelled() => Event::Cancelled,
                _ = rewinds.changed() => Event::Rewind,
                m = self.queue.recv() => match m {
                    Ok(m) => Event::Records(self.drain_ready(to_record(&m))),
                    Err(e) => {
                        tracing::warn!(error = %e, "partition read error");
                        Event::Records(Vec::new())
                    }
                },
            };
            match event {
                Event::Cancelled => break,
                Event::Rewind => self.rewind().await,
                Event::Records(records) => {
                    if !self.append(records, &cancel).await {
                        break;
                    }
                }
            }
        }
    }

    /// Adds whatever else is already fetched, without waiting.
    fn drain_ready(&self, first: Record) -> Vec<Record> {
        let mut records = vec![first];
        while records.len() < MAX_BATCH {
            match self.queue.recv().now_or_never() {
                Some(Ok(m)) => records.push(to_record(&m)),
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "partition read error");
                    break;
                }
                None => break,
            }
        }
        records
    }

    /// Appends to the window, waiting for room (this task is the only writer, so room once
    /// seen stays). Returns false when cancelled. A rewind request drops the batch: the
    /// rewind reads it again.
    async fn append(&self, mut records: Vec<Record>, cancel: &CancellationToken) -> bool {
        let log = &self.owned.log;
        records.retain(|r| r.offset >= log.head());
        let Some(batch) = Batch::new(records) else {
            return true;
        };
        while !log.has_room_for(batch.bytes()) {
            self.topic.trim(self.owned.partition);
            if log.has_room_for(batch.bytes()) {
                break;
            }
            // Wait for acks to free room; look again now and then regardless.
            let mut rewinds = self.owned.rewind_requests();
            tokio::select! {
                _ = cancel.cancelled() => return false,
                _ = rewinds.changed() => return true,
                _ = log.progressed() => {}
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            }
        }
        match log.append(batch) {
            Ok(()) => self.topic.wake(),
            Err(e) => tracing::error!(error = %e, "records dropped from the window"),
        }
        true
    }

    /// Moves the window back to the lowest cursor (and the requested offset).
    async fn rewind(&self) {
        let Some(requested) = self.owned.take_rewind() else {
            return;
        };
        let Some(consumer) = self.consumer.upgrade() else {
            return;
        };
        let topic = self.owned.topic.clone();
        let p = self.owned.partition;
        let min = self.topic.min_cursor(p).unwrap_or(requested);
        let mut target = requested.min(min);
        let c = consumer.clone();
        let t = topic.clone();
        let low = tokio::task::spawn_blocking(move || {
            c.fetch_watermarks(t.as_str(), p, kafka::REQUEST_TIMEOUT)
        })
        .await
        .ok()
        .and_then(Result::ok)
        .map(|(lo, _)| lo);
        if let Some(low) = low
            && target < low
        {
            let losses = self.shard.skip_deleted(&topic, p, low, Instant::now());
            report_losses(&losses);
            target = requested
                .max(low)
                .min(self.topic.min_cursor(p).unwrap_or(low));
        }
        let c = consumer.clone();
        let t = topic.clone();
        let seek = tokio::task::spawn_blocking(move || {
            c.seek(
                t.as_str(),
                p,
                KafkaOffset::Offset(target),
                kafka::REQUEST_TIMEOUT,
            )
        })
        .await;
        match seek {
            Ok(Ok(())) => {
                self.owned.log.reset(target);
                tracing::info!(offset = target, "partition re-read from an earlier offset");
                self.topic.wake();
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, offset = target, "seek failed; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
                self.owned.request_rewind(requested);
            }
            Err(e) => tracing::error!(error = %e, "seek task failed"),
        }
    }
}
