//! The reader of one owned partition: moves records from its Kafka queue into the shared
//! window, waits when the window is full (which stops fetching that partition), and moves
//! back when a subscription needs records below the window.

use std::sync::{Arc, Weak};
use std::time::Duration;

use fanout_core::log::{Batch, LogWriter, held_bytes};
use fanout_core::model::{Offset, Record, TimestampKind};
use fanout_core::shard::{OwnedPartition, Shard, TopicRuntime};
use futures::FutureExt;
use rdkafka::consumer::Consumer;
use rdkafka::consumer::stream_consumer::StreamPartitionQueue;
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Headers, Message, Timestamp};
use rdkafka::types::RDKafkaErrorCode;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::{IngestConsumer, IngestContext, report_losses};
use crate::kafka;
use crate::telemetry;
use crate::wire;

/// Most records moved into the window in one batch.
const MAX_BATCH: usize = 1000;

pub(super) struct Reader {
    pub shard: Arc<Shard>,
    pub topic: Arc<TopicRuntime>,
    pub owned: Arc<OwnedPartition>,
    pub queue: StreamPartitionQueue<IngestContext>,
    pub consumer: Weak<IngestConsumer>,
    /// Ends the reader (revoke, shutdown).
    pub token: CancellationToken,
    /// Records fetched before the partition's queue was split, to append first.
    pub initial: Vec<Record>,
    /// Where to ask for a restart from another offset.
    pub restarts: mpsc::UnboundedSender<Restart>,
    /// What it counts.
    pub metrics: telemetry::metrics::Ingest,
}

/// A request to read a partition again from `offset`.
pub(super) struct Restart {
    pub owned: Arc<OwnedPartition>,
    pub offset: Offset,
}

enum Exit {
    Done,
    Restart(Offset),
}

/// How an append ended.
enum Appended {
    Done,
    Cancelled,
    /// A rewind request came while it waited for room: the batch, not appended.
    Interrupted(Batch),
}

enum Event {
    Cancelled,
    Rewind,
    Progress,
    Records(Vec<Record>),
}

/// Copies a Kafka message out of librdkafka, encoded for the wire: the only copy of its
/// payload fanout makes.
pub fn to_record(m: &BorrowedMessage<'_>) -> Record {
    let headers: Vec<(&str, Option<&[u8]>)> = m
        .headers()
        .map(|hs| hs.iter().map(|h| (h.key, h.value)).collect())
        .unwrap_or_default();
    wire::record(wire::Parts {
        partition: m.partition(),
        offset: m.offset(),
        key: m.key(),
        value: m.payload(),
        headers: &headers,
        timestamp: match m.timestamp() {
            Timestamp::CreateTime(t) => Some((t, TimestampKind::CreateTime)),
            Timestamp::LogAppendTime(t) => Some((t, TimestampKind::LogAppendTime)),
            Timestamp::NotAvailable => None,
        },
    })
}

impl Reader {
    pub async fn run(mut self, cancel: CancellationToken) {
        let span = tracing::info_span!("partition", topic = %self.owned.topic, partition = self.owned.partition);
        let exit = self.read(&cancel).instrument(span).await;
        if let Exit::Restart(offset) = exit {
            let Reader {
                queue,
                owned,
                restarts,
                ..
            } = self;
            // Every handle of the partition's queue shares one wake-up callback, which
            // dropping a handle turns off: drop ours before the driver splits a new one.
            drop(queue);
            let _ = restarts.send(Restart { owned, offset });
        }
    }

    async fn read(&mut self, cancel: &CancellationToken) -> Exit {
        // The previous reader of the partition (before a restart) has given its writer up.
        let Some(mut writer) = self.owned.log.writer() else {
            tracing::error!("the partition's window has another writer; not reading");
            return Exit::Done;
        };
        let initial = std::mem::take(&mut self.initial);
        if !initial.is_empty()
            && let Some(exit) = self.append_or_rewind(&mut writer, initial, cancel).await
        {
            return exit;
        }
        let mut rewinds = self.owned.rewind_requests();
        // A request made while no reader ran (during a restart) is taken now.
        if rewinds.borrow_and_update().is_some()
            && let Some(offset) = self.rewind_to(&mut writer).await
        {
            return Exit::Restart(offset);
        }
        let log = self.owned.log.clone();
        loop {
            let event = tokio::select! {
                biased;
                _ = cancel.cancelled() => Event::Cancelled,
                _ = rewinds.changed() => Event::Rewind,
                m = self.queue.recv() => match m {
                    Ok(m) => Event::Records(self.drain_ready(to_record(&m))),
                    Err(e) => {
                        self.on_error(&e);
                        Event::Records(Vec::new())
                    }
                },
                // Acks while no records come: let go of what everyone is done with.
                _ = log.progressed() => Event::Progress,
            };
            match event {
                Event::Cancelled => return Exit::Done,
                Event::Progress => {
                    writer.trim_to_pins();
                }
                Event::Rewind => {
                    if let Some(offset) = self.rewind_to(&mut writer).await {
                        return Exit::Restart(offset);
                    }
                }
                Event::Records(records) => {
                    if let Some(exit) = self.append_or_rewind(&mut writer, records, cancel).await {
                        return exit;
                    }
                }
            }
        }
    }

    /// Adds whatever else is already fetched, without waiting, up to a quarter of the
    /// window's budget (a batch must fit beside others to be appended without waiting for
    /// an empty window).
    fn drain_ready(&self, first: Record) -> Vec<Record> {
        let max_bytes = self.owned.log.budget() / 4;
        let mut bytes = held_bytes(&first);
        let mut records = vec![first];
        while records.len() < MAX_BATCH && bytes < max_bytes {
            match self.queue.recv().now_or_never() {
                Some(Ok(m)) => {
                    let r = to_record(&m);
                    bytes += held_bytes(&r);
                    records.push(r);
                }
                Some(Err(e)) => {
                    self.on_error(&e);
                    break;
                }
                None => break,
            }
        }
        records
    }

    /// A read error. With `auto.offset.reset=error`, librdkafka stops fetching a partition
    /// whose position fell out of the log (retention deleted records it had not read yet):
    /// the rewind path checks the watermarks, reports what was lost and seeks.
    fn on_error(&self, e: &KafkaError) {
        match e {
            KafkaError::MessageConsumption(
                RDKafkaErrorCode::AutoOffsetReset | RDKafkaErrorCode::OffsetOutOfRange,
            ) => {
                tracing::error!(error = %e, head = self.owned.log.head(), "read position out of the log; re-positioning");
                self.owned.request_rewind(self.owned.log.head());
            }
            _ => tracing::warn!(error = %e, "partition read error"),
        }
    }

    /// Appends `records`. A rewind request met while waiting for room is carried out first:
    /// a restart ends this reading (the restart reads the batch again); a request that
    /// turns out not to need one (a move back the window covers already) lets the batch be
    /// appended after all, so no batch is ever dropped without being read again.
    async fn append_or_rewind(
        &self,
        writer: &mut LogWriter,
        mut records: Vec<Record>,
        cancel: &CancellationToken,
    ) -> Option<Exit> {
        let head = writer.log().head();
        records.retain(|r| r.offset >= head);
        let batch = Batch::new(records)?;
        let mut outcome = self.append(writer, batch, cancel).await;
        loop {
            match outcome {
                Appended::Done => return None,
                Appended::Cancelled => return Some(Exit::Done),
                Appended::Interrupted(batch) => {
                    // A rewind that keeps failing (Kafka unreachable) must not hold a
                    // shutdown up.
                    if cancel.is_cancelled() {
                        return Some(Exit::Done);
                    }
                    if let Some(offset) = self.rewind_to(writer).await {
                        return Some(Exit::Restart(offset));
                    }
                    outcome = self.append(writer, batch, cancel).await;
                }
            }
        }
    }

    /// Appends to the window, waiting for room (this task is the only writer, so room once
    /// seen stays). Makes room by trimming what every subscription is done with, and by
    /// evicting subscriptions far behind the others to the catch-up path; subscriptions all
    /// equally slow are waited for. A rewind request that may need the reader
    /// ([`OwnedPartition::rewind_needed`]) interrupts the wait and hands the batch back.
    async fn append(
        &self,
        writer: &mut LogWriter,
        batch: Batch,
        cancel: &CancellationToken,
    ) -> Appended {
        let head = writer.log().head();
        let (n, bytes) = (
            batch.records().len() as u64,
            batch.records().iter().map(Record::size).sum::<usize>() as u64,
        );
        loop {
            let (fits, evicted) = writer.make_room(batch.bytes());
            if evicted > 0 {
                tracing::info!(
                    evicted,
                    "subscriptions far behind moved to the catch-up path"
                );
                // Their streams must notice and start catching up.
                self.topic.wake_subscriptions();
            }
            if fits {
                break;
            }
            // Wait for acks to free room; look again now and then regardless. A request
            // made before this receiver existed counts as seen by it: look first.
            let mut rewinds = self.owned.rewind_requests();
            if self.owned.rewind_needed() {
                return Appended::Interrupted(batch);
            }
            let log = writer.log().clone();
            tokio::select! {
                _ = cancel.cancelled() => return Appended::Cancelled,
                // A move back the window covers already does not interrupt.
                _ = rewinds.changed() => if self.owned.rewind_needed() {
                    return Appended::Interrupted(batch);
                },
                _ = log.progressed() => {}
                _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            }
        }
        match writer.append(batch) {
            Ok(()) => {
                self.metrics.records.increment(n);
                self.metrics.bytes.increment(bytes);
                // Keep only what some subscription still needs.
                writer.trim_to_pins();
                self.topic.wake();
            }
            Err(e) => {
                // Never go on past records that are not in the window: read them again.
                tracing::error!(error = %e, "batch refused by the window; reading it again");
                self.owned.request_rewind(head);
            }
        }
        Appended::Done
    }

    /// Where to read the partition again from, for a pending rewind request: the lowest
    /// cursor (or the requested offset, if lower), but not below the log start, where
    /// retention deleted records (reported as lost). Resets the window there.
    async fn rewind_to(&self, writer: &mut LogWriter) -> Option<Offset> {
        let request = self.owned.take_rewind()?;
        let mut requested = request.offset;
        if !request.reposition {
            // Subscriptions behind the window asked. Only those still holding an offset
            // below it count: an earlier request may have moved it back far enough, and
            // the asker may have been evicted or gone meanwhile. Reading again for nobody
            // would only repeat (and throw away what Kafka prefetched).
            // And only while nobody reads the window: a reader that came meanwhile would
            // wait for what it has; the askers then catch up privately instead.
            if !self.owned.log.unread_by_others(None) {
                return None;
            }
            let start = self.owned.log.start();
            requested = self.owned.log.lowest_pin().filter(|&p| p < start)?;
        }
        let consumer = self.consumer.upgrade()?;
        let topic = self.owned.topic.clone();
        let p = self.owned.partition;
        let t = topic.clone();
        let low = tokio::task::spawn_blocking(move || {
            consumer.fetch_watermarks(t.as_str(), p, kafka::REQUEST_TIMEOUT)
        })
        .await
        .ok()
        .and_then(Result::ok)
        .map(|(lo, _)| lo);
        let Some(low) = low else {
            // Without the log start the new position could be out of range: try again soon.
            tracing::warn!("cannot read watermarks for a rewind; retrying");
            tokio::time::sleep(Duration::from_millis(500)).await;
            self.owned.request(request);
            return None;
        };
        let losses = self.shard.skip_deleted(&topic, p, low);
        report_losses(&losses);
        // Subscriptions on the catch-up path read for themselves: only the pins count.
        let min = self.owned.log.lowest_pin().unwrap_or(requested);
        let target = requested.min(min).max(low);
        writer.reset(target);
        self.topic.wake();
        tracing::info!(offset = target, "partition will be read again from here");
        Some(target)
    }
}
