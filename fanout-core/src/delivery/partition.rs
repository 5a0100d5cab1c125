//! One partition of a subscription: where its records come from (the shared window, or its
//! catch-up window while it is behind), its ack window, the stream it is bound to, and the
//! phases of a take on it.

use std::sync::Arc;
use std::time::Instant;

use super::{
    AckWindow, CatchUpLimits, CatchUpStart, DeadLetter, Delivery, OffsetRange, StreamId, Take,
    TakeLimits, budget::Budget,
};
use crate::log::{Chunk, LogLimits, PartitionLog, Pin};
use crate::model::{DeliveryOrder, Offset, Partition, REDRIVE_FOR, Record};

/// A window of records (shared, or a catch-up window) and this subscription's pin on it.
#[derive(Debug)]
pub(super) struct Pinned {
    pub(super) log: Arc<PartitionLog>,
    /// This subscription's hold on `log`.
    pub(super) pin: Arc<Pin>,
}

#[derive(Debug)]
pub(super) struct PartitionState {
    /// Which partition this is (catch-up work names it).
    pub(super) partition: Partition,
    /// The partition's shared window, read by every subscription near its head.
    pub(super) shared_window: Pinned,
    /// While this subscription is too far behind for the shared window: its catch-up window,
    /// filled from Kafka by a catch-up reader, until it reaches the shared window again.
    pub(super) catch_up_window: Option<Pinned>,
    /// Ack tracking of this subscription on this partition.
    pub(super) ack_window: AckWindow,
    /// The stream this partition is bound to (ordering=partition).
    pub(super) bound: Option<StreamId>,
    /// The shared window was asked to move back to this offset for us (nobody read it),
    /// when it started at the second one: asked again only once the window moved.
    pub(super) rewind_asked: Option<(Offset, Offset)>,
}

impl PartitionState {
    pub(super) fn new(
        partition: Partition,
        log: Arc<PartitionLog>,
        cursor: Offset,
        acked: &[OffsetRange],
    ) -> Self {
        let pin = log.pin(cursor);
        Self {
            partition,
            shared_window: Pinned { log, pin },
            catch_up_window: None,
            ack_window: AckWindow::restore(cursor, acked),
            bound: None,
            rewind_asked: None,
        }
    }

    /// Gives up both windows (the partition is no longer tracked).
    pub(super) fn drop_sources(&mut self) {
        // Done once: a second call (explicit, then on drop) finds nothing to release.
        self.shared_window.log.unpin(&self.shared_window.pin);
        self.end_catch_up();
    }

    pub(super) fn end_catch_up(&mut self) {
        if let Some(c) = self.catch_up_window.take() {
            c.log.close();
            c.log.unpin(&c.pin);
        }
    }

    /// Moves to the catch-up path at the cursor (evicted from the shared window, or the
    /// window no longer holds what is needed), or back to the shared window once everything
    /// still needed is in it.
    pub(super) fn settle(&mut self, limits: &CatchUpLimits, started: &mut Vec<CatchUpStart>) {
        let cursor = self.ack_window.cursor();
        match &self.catch_up_window {
            None if self.shared_window.pin.is_evicted() => self.start_catch_up(limits, started),
            // Holding nothing on the shared window (a catch-up ended without streams).
            None if self.shared_window.pin.cursor().is_none() => {
                self.shared_window.pin.hold(cursor);
                if cursor < self.shared_window.log.start() {
                    self.start_catch_up(limits, started);
                }
            }
            Some(_) if cursor >= self.shared_window.log.start() => {
                self.shared_window.pin.hold(cursor);
                // The writer may have trimmed past the cursor meanwhile: then stay out.
                if cursor >= self.shared_window.log.start() {
                    self.end_catch_up();
                } else {
                    self.shared_window.pin.release();
                }
            }
            _ => {}
        }
    }

    pub(super) fn start_catch_up(
        &mut self,
        limits: &CatchUpLimits,
        started: &mut Vec<CatchUpStart>,
    ) {
        let cursor = self.ack_window.cursor();
        let start = self.shared_window.log.start();
        // Not for an evicted subscription: the others waited at the head for it, and one
        // that holds an unacked record would only make the window read everything again.
        if cursor < start
            && !self.shared_window.pin.is_evicted()
            && self
                .shared_window
                .log
                .unread_by_others(Some(&self.shared_window.pin))
        {
            // Nobody reads the shared window (every other subscription, if any, is behind
            // it too): it moves back instead, and one Kafka read serves every subscription
            // behind it, where catch-up windows would read the same records once each.
            self.end_catch_up();
            self.shared_window.pin.hold(cursor);
            // Asked once per position of the window (a reset or a trim since asks again).
            if self.rewind_asked != Some((cursor, start)) {
                self.rewind_asked = Some((cursor, start));
                started.push(CatchUpStart {
                    partition: self.partition,
                    log: self.shared_window.log.clone(),
                    rewind: Some(cursor),
                });
            }
            return;
        }
        self.rewind_asked = None;
        self.end_catch_up();
        self.shared_window.pin.release();
        let log = PartitionLog::with_pool(
            cursor,
            LogLimits::bytes(limits.window_bytes),
            limits.pool.clone(),
        );
        let pin = log.pin(cursor);
        started.push(CatchUpStart {
            partition: self.partition,
            log: log.clone(),
            rewind: None,
        });
        self.catch_up_window = Some(Pinned { log, pin });
    }

    /// Records from `from` on: from the shared window, or from the catch-up window while
    /// catching up (and from the shared one past the catch-up window's head). `None` while they are
    /// not available yet; a catch-up may have been started for them.
    pub(super) fn read(
        &mut self,
        from: Offset,
        max_records: usize,
        max_bytes: usize,
        limits: &CatchUpLimits,
        started: &mut Vec<CatchUpStart>,
    ) -> Option<Vec<Chunk>> {
        let Some(c) = &self.catch_up_window else {
            let chunks = self.shared_window.log.read(from, max_records, max_bytes);
            if chunks.is_none() {
                self.start_catch_up(limits, started);
            }
            return chunks;
        };
        match c.log.read(from, max_records, max_bytes) {
            Some(chunks) if !chunks.is_empty() => Some(chunks),
            Some(_) if from >= c.log.head() => {
                // Past what the catch-up reader has fetched: the shared window may hold it.
                self.shared_window
                    .log
                    .read(from, max_records, max_bytes)
                    .filter(|chunks| !chunks.is_empty())
            }
            Some(_) => None,
            None => {
                // Below the catch-up window: only a restart of the catch-up fetches it.
                self.start_catch_up(limits, started);
                None
            }
        }
    }

    /// The record at `offset` alone, if it can be read now.
    pub(super) fn read_one(
        &mut self,
        offset: Offset,
        limits: &CatchUpLimits,
        started: &mut Vec<CatchUpStart>,
    ) -> Option<Chunk> {
        self.read(offset, 1, usize::MAX, limits, started)?
            .into_iter()
            .next()
            .filter(|c| c.records()[0].offset == offset)
    }

    /// The cursor moved: the windows may let go of what lies below it.
    pub(super) fn cursor_moved(&self) {
        let cursor = self.ack_window.cursor();
        let source = self.catch_up_window.as_ref().unwrap_or(&self.shared_window);
        source.pin.advance(cursor);
        source.log.notify_progress();
    }
}

/// What one take applies to every partition it serves.
pub(super) struct TakeContext<'a> {
    pub(super) stream: StreamId,
    pub(super) now: Instant,
    /// The ack deadline of what this take delivers.
    pub(super) deadline: Option<Instant>,
    /// Deliveries of a record before it is dead-lettered (0: unlimited).
    pub(super) max_attempts: u32,
    pub(super) ordering: DeliveryOrder,
    /// The subscription's name: records redriven for another are skipped as done.
    pub(super) name: Option<&'a str>,
    pub(super) limits: TakeLimits,
    pub(super) catch_up: &'a CatchUpLimits,
}

/// The phases of a take on one partition, in the order they run.
impl PartitionState {
    /// Records due for redelivery, in offset order; those out of attempts become dead
    /// letters instead.
    pub(super) fn take_due(&mut self, cx: &TakeContext<'_>, budget: &mut Budget, take: &mut Take) {
        while let Some(due) = self
            .ack_window
            .first_due(cx.now)
            .filter(|_| !budget.exhausted())
        {
            // Not there yet: it is being fetched again from Kafka.
            let Some(chunk) = self.read_one(due.offset, cx.catch_up, &mut take.catch_up) else {
                break;
            };
            if cx.max_attempts > 0 && due.attempt > cx.max_attempts {
                if self.ack_window.start_dead_letter(due.offset) {
                    take.dead_letters.push(DeadLetter {
                        partition: self.partition,
                        chunk,
                        attempts: due.attempt - 1,
                        why: due.why,
                    });
                }
                continue;
            }
            if !budget.admit(chunk.records()[0].size()) {
                break;
            }
            self.ack_window
                .deliver_again(due.offset, cx.stream, cx.deadline);
            take.deliveries.push(Delivery {
                chunk,
                attempt: due.attempt,
            });
        }
    }

    /// Held records whose key became free (`ordering=key`), in offset order.
    pub(super) fn take_held(&mut self, cx: &TakeContext<'_>, budget: &mut Budget, take: &mut Take) {
        while let Some(offset) = self
            .ack_window
            .first_free_held()
            .filter(|_| !budget.exhausted())
        {
            let Some(chunk) = self.read_one(offset, cx.catch_up, &mut take.catch_up) else {
                break;
            };
            if !budget.admit(chunk.records()[0].size()) {
                break;
            }
            self.ack_window.deliver_held(offset, cx.stream, cx.deadline);
            take.deliveries.push(Delivery { chunk, attempt: 1 });
        }
    }

    /// First deliveries, bounded by the unacked span. Records skipped as done (acked before
    /// a restart, redriven for another subscription) take no budget: it reads on past them,
    /// or a long run of them would leave this take empty with more to do. Returns true if
    /// there is still more to skip than one take reads.
    pub(super) fn take_first(
        &mut self,
        cx: &TakeContext<'_>,
        budget: &mut Budget,
        take: &mut Take,
    ) -> bool {
        for _pass in 0..64 {
            let span_left = cx.limits.max_unacked_span - self.ack_window.unacked_span();
            if budget.exhausted() || span_left <= 0 {
                return false;
            }
            let delivered_before = take.deliveries.len();
            let next = self.ack_window.next();
            let want = budget
                .records_left
                .min(usize::try_from(span_left).unwrap_or(usize::MAX));
            let chunks = self
                .read(
                    next,
                    want,
                    budget.batch_bytes_left,
                    cx.catch_up,
                    &mut take.catch_up,
                )
                .unwrap_or_default();
            let mut moved = false;
            for chunk in chunks {
                let run = self.take_run(&chunk, cx, budget, take);
                moved |= run.skipped;
                if run.stop {
                    break;
                }
            }
            if moved {
                self.cursor_moved();
            }
            let still_skipping =
                take.deliveries.len() == delivered_before && self.ack_window.next() > next;
            if !still_skipping {
                return false;
            }
        }
        true
    }

    /// First deliveries from one chunk: runs of delivered records, each a slice of it; a
    /// held record (its key busy) or one skipped as done ends a run.
    fn take_run(
        &mut self,
        chunk: &Chunk,
        cx: &TakeContext<'_>,
        budget: &mut Budget,
        take: &mut Take,
    ) -> Run {
        let mut out = Run::default();
        let mut run_start = 0;
        let mut end = 0;
        for (i, record) in chunk.records().iter().enumerate() {
            if record.offset - self.ack_window.cursor() >= cx.limits.max_unacked_span {
                out.stop = true;
                break;
            }
            if self.ack_window.pre_acked(record.offset) || addressed_elsewhere(record, cx.name) {
                // Acked before a restart, or redriven for another subscription: done, not
                // delivered.
                if i > run_start && end > run_start {
                    take.deliveries.push(Delivery {
                        chunk: chunk.slice(run_start..end),
                        attempt: 1,
                    });
                }
                self.ack_window.skip_acked(record.offset, record.size());
                out.skipped = true;
                run_start = i + 1;
                end = i + 1;
                continue;
            }
            let key = (cx.ordering == DeliveryOrder::Key)
                .then(|| key_hash(record))
                .flatten();
            if self.ack_window.key_busy(key) {
                if end > run_start {
                    take.deliveries.push(Delivery {
                        chunk: chunk.slice(run_start..i),
                        attempt: 1,
                    });
                }
                self.ack_window.hold(record.offset, record.size(), key);
                run_start = i + 1;
                end = i + 1;
                continue;
            }
            if !budget.admit(record.size()) {
                out.stop = true;
                break;
            }
            self.ack_window.deliver_first(
                record.offset,
                record.size(),
                key,
                cx.stream,
                cx.deadline,
            );
            end = i + 1;
        }
        if end > run_start {
            take.deliveries.push(Delivery {
                chunk: chunk.slice(run_start..end),
                attempt: 1,
            });
        }
        out
    }
}

/// What [`PartitionState::take_run`] did with a chunk.
#[derive(Debug, Default)]
struct Run {
    /// Records were skipped as done: the cursor may have moved.
    skipped: bool,
    /// The budget or the unacked span ran out: no more chunks.
    stop: bool,
}

impl Drop for PartitionState {
    fn drop(&mut self) {
        self.drop_sources();
    }
}

/// Is `record` a dead letter redriven for another subscription than `name`?
fn addressed_elsewhere(record: &Record, name: Option<&str>) -> bool {
    !record.headers.is_empty()
        && record
            .headers
            .iter()
            .any(|h| h.key == REDRIVE_FOR && h.value.as_deref() != name.map(str::as_bytes))
}

/// The hash a record's key is ordered by (`ordering=key`); records without a key are not
/// ordered.
fn key_hash(record: &Record) -> Option<u64> {
    use std::hash::{Hash, Hasher};
    let key = record.key.as_ref()?;
    let mut h = std::collections::hash_map::DefaultHasher::new();
    key.hash(&mut h);
    Some(h.finish())
}
