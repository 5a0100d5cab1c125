//! The catch-up path: a few pooled Kafka consumers that serve every subscription too far
//! behind for a partition's shared window. Each reader takes one (subscription, partition)
//! at a time, assigns it at the head of its catch-up window, fills the window, and moves on
//! to the next one when the window is full or its time slice is over while others wait. A
//! lagging subscription never gets a Kafka client of its own, and memory stays within the
//! catch-up windows' budgets.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use fanout_core::log::{Batch, LogWriter, held_bytes};
use fanout_core::model::Record;
use fanout_core::shard::{CatchUpJob, Shard};
use futures::FutureExt;
use rdkafka::consumer::Consumer;
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Offset as KafkaOffset, TopicPartitionList};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use super::partition::to_record;
use super::report_losses;
use crate::kafka::{self, KafkaSettings};
use crate::telemetry;

/// Longest a reader stays on one (subscription, partition) while others wait.
const SLICE: Duration = Duration::from_millis(500);
/// Most records appended to a catch-up window at once.
const MAX_BATCH: usize = 1000;
/// Prefetch of one catch-up consumer (librdkafka `queued.max.messages.kbytes`, and the
/// most fetched per partition per request): what moving to another job may throw away.
const PREFETCH_KBYTES: &str = "1024";
const FETCH_PARTITION_BYTES: &str = "524288";
/// The readers' role, in their `client.id` and the `client` label of their traffic.
const ROLE: &str = "catch-up";

/// Starts `readers` catch-up readers on `tracker`, serving the shard's catch-up queue until
/// `cancel`.
pub fn start(
    cfg: &KafkaSettings,
    shard: &Arc<Shard>,
    readers: usize,
    tracker: &TaskTracker,
    cancel: CancellationToken,
) -> Result<(), KafkaError> {
    for i in 0..readers {
        let mut c = kafka::reader(cfg, ROLE);
        c.set("enable.partition.eof", "false")
            .set("queued.max.messages.kbytes", PREFETCH_KBYTES)
            .set("max.partition.fetch.bytes", FETCH_PARTITION_BYTES);
        kafka::operator_options(cfg, &mut c);
        let consumer: kafka::Reader = c.create_with_context(kafka::ReaderContext::new(ROLE))?;
        let reader = CatchUpReader {
            shard: shard.clone(),
            consumer,
        };
        let cancel = cancel.clone();
        tracker.spawn(
            reader
                .run(cancel)
                .instrument(tracing::info_span!("catch_up_reader", reader = i)),
        );
    }
    Ok(())
}

struct CatchUpReader {
    shard: Arc<Shard>,
    consumer: kafka::Reader,
}

/// What [`CatchUpReader::append_fitting`] did.
enum Appended {
    /// Appended some records.
    Some,
    /// Nothing fits now.
    None,
    /// The window refused them: read again from its head.
    Refused,
}

/// How serving one job ended.
enum Served {
    /// The subscription no longer needs it (rejoined the shared window, gone, revoked).
    Done,
    /// Its slice is over and others wait: back into the queue.
    Requeue,
    Cancelled,
}

impl CatchUpReader {
    async fn run(self, cancel: CancellationToken) {
        let queue = self.shard.catch_up_queue();
        loop {
            let job = tokio::select! {
                _ = cancel.cancelled() => break,
                job = queue.pop() => job,
                // While idle (nothing assigned), serve the consumer's queue all the same:
                // its statistics, and errors the next job need not trip over.
                idle = self.consumer.recv() => {
                    if let Err(e) = idle {
                        tracing::debug!(error = %e, "idle catch-up reader error");
                    }
                    continue;
                }
            };
            let span = tracing::debug_span!(
                "catch_up",
                topic = %job.topic.name,
                partition = job.partition,
                subscription = %job.subscription.key()
            );
            match self.serve(&job, &cancel).instrument(span).await {
                Served::Done => {}
                Served::Requeue => queue.push(job),
                Served::Cancelled => break,
            }
        }
        // Drop the consumer off the async path: closing it may block.
        let consumer = self.consumer;
        let _ = tokio::task::spawn_blocking(move || drop(consumer)).await;
    }

    fn finished(job: &CatchUpJob) -> bool {
        job.log.is_closed() || job.subscription.is_removed()
    }

    async fn serve(&self, job: &CatchUpJob, cancel: &CancellationToken) -> Served {
        if Self::finished(job) {
            return Served::Done;
        }
        let Some(mut writer) = job.log.writer() else {
            // Another reader has it (a duplicate request): that one serves it.
            return Served::Done;
        };
        // Wait for room before fetching anything: a subscription that does not ack must not
        // keep a consumer busy. While others wait, room for half a window at least, so that
        // an assignment (and the prefetch a move to another job throws away) pays off.
        let mut slice_end = tokio::time::Instant::now() + SLICE;
        loop {
            writer.trim_to_pins();
            let wanted = if self.shard.catch_up_queue().others_waiting() {
                writer.log().budget() / 2
            } else {
                1
            };
            if writer.is_empty() || writer.room() >= wanted {
                break;
            }
            if Self::finished(job) {
                return Served::Done;
            }
            tokio::select! {
                _ = cancel.cancelled() => return Served::Cancelled,
                _ = job.log.progressed() => {}
                _ = tokio::time::sleep_until(slice_end) => {
                    if self.shard.catch_up_queue().others_waiting() {
                        return Served::Requeue;
                    }
                    slice_end = tokio::time::Instant::now() + SLICE;
                }
            }
        }
        let from = job.log.head();
        let mut tpl = TopicPartitionList::new();
        if let Err(e) = tpl.add_partition_offset(
            job.topic.name.as_str(),
            job.partition,
            KafkaOffset::Offset(from),
        ) {
            tracing::error!(error = %e, "cannot build a catch-up assignment");
            return Served::Requeue;
        }
        if let Err(e) = self.consumer.assign(&tpl) {
            tracing::warn!(error = %e, "cannot assign a catch-up partition; retrying");
            tokio::time::sleep(Duration::from_millis(200)).await;
            return Served::Requeue;
        }
        drop(tpl);
        tracing::debug!(from, "catch-up reading");
        let served = self.fill(job, &mut writer, slice_end, cancel).await;
        // Leave the partition before another job's assignment replaces it.
        let _ = self.consumer.unassign();
        served
    }

    /// Reads into the catch-up window until the job is finished, or its slice is over
    /// while others wait.
    async fn fill(
        &self,
        job: &CatchUpJob,
        writer: &mut LogWriter,
        mut slice_end: tokio::time::Instant,
        cancel: &CancellationToken,
    ) -> Served {
        // Fetched records that did not fit yet, in offset order.
        let mut pending: VecDeque<Record> = VecDeque::new();
        loop {
            if Self::finished(job) {
                return Served::Done;
            }
            if tokio::time::Instant::now() >= slice_end {
                if self.shard.catch_up_queue().others_waiting() {
                    return Served::Requeue;
                }
                slice_end = tokio::time::Instant::now() + SLICE;
            }
            writer.trim_to_pins();
            if !pending.is_empty() {
                match Self::append_fitting(job, writer, &mut pending) {
                    Appended::Some => continue,
                    Appended::None => {}
                    // Read again from the window's head rather than leave a hole.
                    Appended::Refused => return Served::Requeue,
                }
                // Full: wait for acks (or for the slice to end).
                tokio::select! {
                    _ = cancel.cancelled() => return Served::Cancelled,
                    _ = job.log.progressed() => {}
                    _ = tokio::time::sleep_until(slice_end) => {}
                }
                continue;
            }
            let first = tokio::select! {
                _ = cancel.cancelled() => return Served::Cancelled,
                _ = tokio::time::sleep_until(slice_end) => continue,
                // Acks, or the window closed (the subscription rejoined, left): look again.
                _ = job.log.progressed() => continue,
                m = self.consumer.recv() => m,
            };
            let topic = job.topic.name.as_str();
            match first {
                Ok(m) if m.topic() != topic => continue,
                Ok(m) => pending.push_back(to_record(&m)),
                Err(e) => {
                    self.on_error(job, &e);
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    return Served::Requeue;
                }
            }
            while pending.len() < MAX_BATCH {
                match self.consumer.recv().now_or_never() {
                    Some(Ok(m)) if m.topic() == topic => pending.push_back(to_record(&m)),
                    _ => break,
                }
            }
            let head = job.log.head();
            pending.retain(|r| r.offset >= head && r.partition == job.partition);
        }
    }

    /// Appends the pending records that fit (an empty window takes at least one).
    fn append_fitting(
        job: &CatchUpJob,
        writer: &mut LogWriter,
        pending: &mut VecDeque<Record>,
    ) -> Appended {
        let room = writer.room();
        let empty = writer.is_empty();
        let mut bytes = 0;
        let mut n = 0;
        for r in pending.iter() {
            // Counted as the window counts it.
            let size = held_bytes(r);
            let fits = bytes + size <= room || (n == 0 && empty);
            if !fits {
                break;
            }
            bytes += size;
            n += 1;
        }
        if n == 0 {
            return Appended::None;
        }
        let Some(batch) = Batch::new(pending.iter().take(n).cloned().collect()) else {
            pending.clear();
            return Appended::Refused;
        };
        match writer.append(batch) {
            Ok(()) => {
                pending.drain(..n);
                telemetry::metrics::read_again(job.topic.name.as_str(), n as u64);
                job.subscription.wake();
                Appended::Some
            }
            Err(e) => {
                tracing::debug!(error = %e, "catch-up batch refused; reading again from the head");
                pending.clear();
                Appended::Refused
            }
        }
    }

    fn on_error(&self, job: &CatchUpJob, e: &KafkaError) {
        match e {
            KafkaError::MessageConsumption(
                RDKafkaErrorCode::AutoOffsetReset | RDKafkaErrorCode::OffsetOutOfRange,
            ) => {
                // Retention deleted records this subscription still needed: report the loss
                // and move it to the log start (its catch-up window is replaced then).
                let low = self
                    .consumer
                    .fetch_watermarks(
                        job.topic.name.as_str(),
                        job.partition,
                        kafka::REQUEST_TIMEOUT,
                    )
                    .map(|(lo, _)| lo);
                match low {
                    Ok(low) => {
                        let losses = self.shard.skip_deleted(&job.topic.name, job.partition, low);
                        report_losses(&losses);
                        job.subscription.wake();
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot read watermarks after a catch-up read error")
                    }
                }
            }
            _ => tracing::warn!(error = %e, "catch-up read error"),
        }
    }
}
