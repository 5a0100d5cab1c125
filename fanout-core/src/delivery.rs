//! Delivery of one subscription: which stream serves which partition, what each stream may
//! still receive (credits), and the ack window of every owned partition.
//!
//! Core module: no I/O; time is passed in. The gRPC adapter drives it: it opens and closes
//! streams, asks for batches, and feeds acks and nacks back.
//!
//! Ordering is `partition`: a partition is bound to one stream at a time, so its first
//! deliveries reach the subscription in offset order. Partitions are spread evenly over the
//! subscription's streams; a stream gives up a partition it holds beyond its fair share once
//! nothing of that partition is in flight on it.

mod window;

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::Instant;

use crate::log::{Chunk, LogLimits, MemoryPool, PartitionLog, Pin};
use crate::model::{DeliveryOrder, DeliveryPolicy, Offset, Partition, REDRIVE_FOR, Record};

pub use window::{AckWindow, Due, MAX_STORED_RANGES, OffsetRange, Redelivery, Released};

/// Identifies one live stream within a shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct StreamId(pub u64);

impl fmt::Display for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "s{}", self.0)
    }
}

/// Why an ack or nack was refused. Nothing was applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AckError {
    #[error("range {first}..={last} is inverted")]
    InvertedRange { first: Offset, last: Offset },
    #[error("ranges overlap at offsets {first}..={last}")]
    OverlappingRanges { first: Offset, last: Offset },
    #[error("offset {offset} was never delivered")]
    NotDelivered { offset: Offset },
    #[error("offset {offset} is already acked")]
    AlreadyAcked { offset: Offset },
    #[error("offset {offset} is in flight on another stream")]
    OtherStream { offset: Offset },
    #[error("offset {offset} is not in flight (it is waiting to be delivered again)")]
    NotInFlight { offset: Offset },
    #[error("the partition was reset under this stream; reconnect")]
    StreamReset,
}

/// An ack or nack refused, with the partition it concerned.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("partition {partition}: {error}")]
pub struct PartitionAckError {
    pub partition: Partition,
    pub error: AckError,
}

/// Credits of one stream and what it has in flight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Credits {
    pub max_records: usize,
    pub max_bytes: usize,
}

#[derive(Debug)]
struct StreamState {
    credits: Credits,
    in_flight_records: usize,
    in_flight_bytes: usize,
    /// Where this stream's next take starts among the partitions (round robin).
    resume_at: Partition,
}

impl StreamState {
    fn release(&mut self, r: Released) {
        self.in_flight_records -= r.records;
        self.in_flight_bytes -= r.bytes;
    }
}

/// Where a subscription's records of one partition come from.
#[derive(Debug)]
struct Source {
    log: Arc<PartitionLog>,
    /// This subscription's hold on `log`.
    pin: Arc<Pin>,
}

#[derive(Debug)]
struct PartitionState {
    /// Which partition this is (catch-up work names it).
    partition: Partition,
    /// The partition's shared window, read by every subscription near its head.
    shared: Source,
    /// While this subscription is too far behind for the shared window: its private window,
    /// filled from Kafka by a catch-up reader, until it reaches the shared window again.
    catch_up: Option<Source>,
    /// Ack tracking of this subscription on this partition.
    window: AckWindow,
    /// The stream this partition is bound to (ordering=partition).
    bound: Option<StreamId>,
    /// The shared window was asked to move back to this offset for us (nobody read it),
    /// when it started at the second one: asked again only once the window moved.
    rewind_asked: Option<(Offset, Offset)>,
}

impl PartitionState {
    fn new(
        partition: Partition,
        log: Arc<PartitionLog>,
        cursor: Offset,
        acked: &[OffsetRange],
    ) -> Self {
        let pin = log.pin(cursor);
        Self {
            partition,
            shared: Source { log, pin },
            catch_up: None,
            window: AckWindow::restore(cursor, acked),
            bound: None,
            rewind_asked: None,
        }
    }

    /// Gives up both windows (the partition is no longer tracked).
    fn drop_sources(&mut self) {
        // Done once: a second call (explicit, then on drop) finds nothing to release.
        self.shared.log.unpin(&self.shared.pin);
        self.end_catch_up();
    }

    fn end_catch_up(&mut self) {
        if let Some(c) = self.catch_up.take() {
            c.log.close();
            c.log.unpin(&c.pin);
        }
    }

    /// Moves to the catch-up path at the cursor (evicted from the shared window, or the
    /// window no longer holds what is needed), or back to the shared window once everything
    /// still needed is in it.
    fn settle(&mut self, limits: &CatchUpLimits, started: &mut Vec<CatchUpStart>) {
        let cursor = self.window.cursor();
        match &self.catch_up {
            None if self.shared.pin.is_evicted() => self.start_catch_up(limits, started),
            // Holding nothing on the shared window (a catch-up ended without streams).
            None if self.shared.pin.cursor().is_none() => {
                self.shared.pin.hold(cursor);
                if cursor < self.shared.log.start() {
                    self.start_catch_up(limits, started);
                }
            }
            Some(_) if cursor >= self.shared.log.start() => {
                self.shared.pin.hold(cursor);
                // The writer may have trimmed past the cursor meanwhile: then stay out.
                if cursor >= self.shared.log.start() {
                    self.end_catch_up();
                } else {
                    self.shared.pin.release();
                }
            }
            _ => {}
        }
    }

    fn start_catch_up(&mut self, limits: &CatchUpLimits, started: &mut Vec<CatchUpStart>) {
        let cursor = self.window.cursor();
        let start = self.shared.log.start();
        // Not for an evicted subscription: the others waited at the head for it, and one
        // that holds an unacked record would only make the window read everything again.
        if cursor < start
            && !self.shared.pin.is_evicted()
            && self.shared.log.unread_by_others(Some(&self.shared.pin))
        {
            // Nobody reads the shared window (every other subscription, if any, is behind
            // it too): it moves back instead, and one Kafka read serves every subscription
            // behind it, where private windows would read the same records once each.
            self.end_catch_up();
            self.shared.pin.hold(cursor);
            // Asked once per position of the window (a reset or a trim since asks again).
            if self.rewind_asked != Some((cursor, start)) {
                self.rewind_asked = Some((cursor, start));
                started.push(CatchUpStart {
                    partition: self.partition,
                    log: self.shared.log.clone(),
                    rewind: Some(cursor),
                });
            }
            return;
        }
        self.rewind_asked = None;
        self.end_catch_up();
        self.shared.pin.release();
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
        self.catch_up = Some(Source { log, pin });
    }

    /// Records from `from` on: from the shared window, or from the private one while
    /// catching up (and from the shared one past the private head). `None` while they are
    /// not available yet; a catch-up may have been started for them.
    fn read(
        &mut self,
        from: Offset,
        max_records: usize,
        max_bytes: usize,
        limits: &CatchUpLimits,
        started: &mut Vec<CatchUpStart>,
    ) -> Option<Vec<Chunk>> {
        let Some(c) = &self.catch_up else {
            let chunks = self.shared.log.read(from, max_records, max_bytes);
            if chunks.is_none() {
                self.start_catch_up(limits, started);
            }
            return chunks;
        };
        match c.log.read(from, max_records, max_bytes) {
            Some(chunks) if !chunks.is_empty() => Some(chunks),
            Some(_) if from >= c.log.head() => {
                // Past what the catch-up reader has fetched: the shared window may hold it.
                self.shared
                    .log
                    .read(from, max_records, max_bytes)
                    .filter(|chunks| !chunks.is_empty())
            }
            Some(_) => None,
            None => {
                // Below the private window: only a restart of the catch-up fetches it.
                self.start_catch_up(limits, started);
                None
            }
        }
    }

    /// The record at `offset` alone, if it can be read now.
    fn read_one(
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
    fn cursor_moved(&self) {
        let cursor = self.window.cursor();
        let source = self.catch_up.as_ref().unwrap_or(&self.shared);
        source.pin.advance(cursor);
        source.log.notify_progress();
    }
}

impl Drop for PartitionState {
    fn drop(&mut self) {
        self.drop_sources();
    }
}

/// Sizes of the private windows of subscriptions on the catch-up path.
#[derive(Debug, Clone)]
pub struct CatchUpLimits {
    /// Byte budget of one (subscription, partition)'s private window.
    pub window_bytes: usize,
    /// Budget of all private windows of the shard together.
    pub pool: Arc<MemoryPool>,
}

impl Default for CatchUpLimits {
    fn default() -> Self {
        Self {
            window_bytes: 4 << 20,
            pool: MemoryPool::unlimited(),
        }
    }
}

/// A (subscription, partition) behind the shared window. Either it moved to the catch-up
/// path (`rewind` is `None`): its private window must be filled from Kafka, from the
/// window's head on, by a catch-up reader; or nobody reads the shared window, which must
/// move back to `rewind` (the partition's reader does that).
#[derive(Debug, Clone)]
pub struct CatchUpStart {
    pub partition: Partition,
    /// The private window, closed when the subscription no longer needs it; the shared
    /// window when `rewind` is set.
    pub log: Arc<PartitionLog>,
    /// Move the shared window back to this offset instead of catching up.
    pub rewind: Option<Offset>,
}

/// A record out of attempts, to publish to the dead-letter topic. Until
/// [`SubscriptionDelivery::dead_lettered`] (or `dead_letter_failed`) it holds the cursor.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    pub partition: Partition,
    /// The record (a chunk of one).
    pub chunk: Chunk,
    /// Deliveries made.
    pub attempts: u32,
    /// Why the last one failed.
    pub why: Redelivery,
}

/// Is `record` a dead letter redriven for another subscription than `name`?
fn addressed_elsewhere(record: &Record, name: Option<&str>) -> bool {
    !record.headers.is_empty()
        && record
            .headers
            .iter()
            .any(|h| h.key == REDRIVE_FOR && h.value.as_deref() != name.map(str::as_bytes))
}

/// A partition of a subscription, as the admin API shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionStats {
    pub partition: Partition,
    pub cursor: Offset,
    /// Records in flight on streams.
    pub in_flight: usize,
    /// Records delivered and not acked (in flight, waiting for redelivery, dead-lettering).
    pub unacked: usize,
    /// Earliest ack deadline in flight.
    pub oldest_deadline: Option<Instant>,
    pub catching_up: bool,
}

/// One delivery handed to a stream: a run of records of one partition with one attempt.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub chunk: Chunk,
    pub attempt: u32,
}

/// What [`SubscriptionDelivery::take`] found.
#[derive(Debug, Default)]
pub struct Take {
    /// Records to send now, each already counted in flight.
    pub deliveries: Vec<Delivery>,
    /// Partitions that moved to the catch-up path: their private windows need a reader.
    pub catch_up: Vec<CatchUpStart>,
    /// Records out of attempts: publish them to the dead-letter topic, then report back.
    pub dead_letters: Vec<DeadLetter>,
    /// This stream let go of a partition: the subscription's other streams should look.
    pub released: bool,
    /// A partition was reset under this stream: it must end (the subscriber reconnects).
    pub reset: bool,
}

impl Take {
    /// Records handed out (a delivery holds a run of them).
    pub fn records(&self) -> usize {
        self.deliveries.iter().map(|d| d.chunk.len()).sum()
    }
}

/// Limits applied by [`SubscriptionDelivery::take`].
#[derive(Debug, Clone, Copy)]
pub struct TakeLimits {
    /// Most records in one batch sent to a stream.
    pub batch_records: usize,
    /// Most bytes in one batch (at least one record is always taken).
    pub batch_bytes: usize,
    /// Most offsets between a partition's cursor and its next first delivery.
    pub max_unacked_span: i64,
}

/// Delivery state of one subscription on this shard.
#[derive(Debug, Default)]
pub struct SubscriptionDelivery {
    /// Sizes of private windows on the catch-up path.
    catch_up: CatchUpLimits,
    /// Order of deliveries (which streams serve which partitions, whether keys wait for
    /// each other), ack timeout and attempts.
    policy: DeliveryPolicy,
    /// Paused: takes deliver nothing (and nothing times out into a redelivery).
    paused: bool,
    /// The subscription's name: records addressed to another subscription (a dead-letter
    /// redrive, header [`REDRIVE_FOR`]) are skipped as done.
    name: Option<Arc<str>>,
    /// Owned partitions of the subscription's topic.
    partitions: BTreeMap<Partition, PartitionState>,
    /// Live streams and their credits.
    streams: BTreeMap<StreamId, StreamState>,
    /// Streams whose in-flight records were dropped under them by a partition reset: they
    /// must end, so their subscriber reconnects instead of acking records we forgot.
    reset: std::collections::BTreeSet<StreamId>,
}

impl SubscriptionDelivery {
    pub fn new(catch_up: CatchUpLimits) -> Self {
        Self {
            catch_up,
            ..Self::default()
        }
    }

    /// Names the subscription, so that records addressed to others are skipped.
    pub fn named(mut self, name: &str) -> Self {
        self.name = Some(Arc::from(name));
        self
    }

    /// Replaces the policy's ack timeout, attempts and dead-letter topic. Records in flight
    /// move to the new ack timeout (counted from their delivery). The ordering stays: it
    /// cannot change under a live subscription.
    pub fn set_policy(&mut self, policy: DeliveryPolicy) {
        if policy.ack_timeout_ms != self.policy.ack_timeout_ms {
            let old = std::time::Duration::from_millis(self.policy.ack_timeout_ms);
            let new = std::time::Duration::from_millis(policy.ack_timeout_ms);
            for p in self.partitions.values_mut() {
                p.window.retime(old, new);
            }
        }
        self.policy = DeliveryPolicy {
            ordering: self.policy.ordering,
            ..policy
        };
    }

    pub fn with_policy(mut self, policy: DeliveryPolicy) -> Self {
        self.policy = policy;
        self
    }

    /// Gives back what timed out on any stream, freeing those streams' credits.
    fn expire(&mut self, now: Instant) {
        for p in self.partitions.values_mut() {
            for (s, released) in p.window.expire(now) {
                if let Some(st) = self.streams.get_mut(&s) {
                    st.release(released);
                }
            }
        }
    }

    /// The record at `offset` is in the dead-letter topic: it counts as acked.
    pub fn dead_lettered(&mut self, partition: Partition, offset: Offset) {
        if let Some(p) = self.partitions.get_mut(&partition) {
            let before = p.window.cursor();
            p.window.dead_lettered(offset);
            if p.window.cursor() != before {
                p.cursor_moved();
            }
        }
    }

    /// Publishing to the dead-letter topic failed: the record waits and is tried again.
    pub fn dead_letter_failed(
        &mut self,
        partition: Partition,
        offset: Offset,
        attempts: u32,
        retry_at: Instant,
    ) {
        if let Some(p) = self.partitions.get_mut(&partition) {
            p.window
                .dead_letter_failed(offset, attempts.saturating_add(1), retry_at);
        }
    }

    /// Starts tracking an owned partition at `cursor`. If it was tracked already, its state
    /// is dropped first as by [`Self::remove_partition`].
    pub fn add_partition(&mut self, partition: Partition, log: Arc<PartitionLog>, cursor: Offset) {
        self.add_partition_restored(partition, log, cursor, &[]);
    }

    /// Like [`Self::add_partition`], with the ranges above the cursor acked before (as
    /// stored with it): those records are not delivered again.
    pub fn add_partition_restored(
        &mut self,
        partition: Partition,
        log: Arc<PartitionLog>,
        cursor: Offset,
        acked: &[OffsetRange],
    ) {
        self.remove_partition(partition, Instant::now());
        self.partitions.insert(
            partition,
            PartitionState::new(partition, log, cursor, acked),
        );
    }

    /// Stops tracking a partition (no longer owned). Its in-flight records are forgotten
    /// here (their streams get the credits back); the cursor flushed last is where the next
    /// owner starts.
    pub fn remove_partition(&mut self, partition: Partition, now: Instant) {
        let Some(mut p) = self.partitions.remove(&partition) else {
            return;
        };
        for (&s, st) in self.streams.iter_mut() {
            st.release(p.window.release_stream(s, now));
        }
        // Dropping `p` lets go of its windows (pins, private window).
    }

    /// The subscription is gone: lets go of every window it held.
    pub fn clear(&mut self) {
        self.partitions.clear();
    }

    /// Restarts a partition's tracking at `cursor`, dropping what was delivered (retention
    /// deleted those records). Streams that had some of them in flight are marked reset.
    pub fn reset_partition(
        &mut self,
        partition: Partition,
        log: Arc<PartitionLog>,
        cursor: Offset,
    ) {
        if let Some(p) = self.partitions.get(&partition) {
            self.reset.extend(p.window.streams_in_flight());
        }
        self.add_partition(partition, log, cursor);
    }

    /// Cursor of every owned partition.
    pub fn cursors(&self) -> impl Iterator<Item = (Partition, Offset)> + '_ {
        self.partitions.iter().map(|(&p, s)| (p, s.window.cursor()))
    }

    /// Cursor and acked ranges above it (at most [`MAX_STORED_RANGES`]) of every owned
    /// partition, as stored.
    pub fn cursor_states(
        &self,
    ) -> impl Iterator<Item = (Partition, Offset, Vec<OffsetRange>)> + '_ {
        self.partitions.iter().map(|(&p, s)| {
            (
                p,
                s.window.cursor(),
                s.window.acked_ranges(MAX_STORED_RANGES),
            )
        })
    }

    pub fn cursor(&self, partition: Partition) -> Option<Offset> {
        self.partitions.get(&partition).map(|p| p.window.cursor())
    }

    /// Is a held record's key free, so that it can be delivered (`ordering=key`)?
    pub fn has_free_held(&self) -> bool {
        self.partitions
            .values()
            .any(|p| p.window.first_free_held().is_some())
    }

    /// Partitions served by the catch-up path (too far behind for the shared window).
    pub fn catching_up(&self) -> Vec<Partition> {
        self.partitions
            .iter()
            .filter(|(_, p)| p.catch_up.is_some())
            .map(|(&p, _)| p)
            .collect()
    }

    /// Per partition, what an operator asks about: where the cursor is, what is unacked.
    pub fn partition_stats(&self) -> Vec<PartitionStats> {
        self.partitions
            .iter()
            .map(|(&partition, p)| PartitionStats {
                partition,
                cursor: p.window.cursor(),
                in_flight: p.window.in_flight(),
                unacked: p.window.unacked(),
                oldest_deadline: p.window.oldest_deadline(),
                catching_up: p.catch_up.is_some(),
            })
            .collect()
    }

    /// The subscription's delivery policy.
    pub fn policy(&self) -> &DeliveryPolicy {
        &self.policy
    }

    /// Records delivered and not yet acked, over all partitions.
    pub fn unacked(&self) -> usize {
        self.partitions.values().map(|p| p.window.unacked()).sum()
    }

    /// Records in flight on live streams, over all partitions.
    pub fn in_flight(&self) -> usize {
        self.partitions.values().map(|p| p.window.in_flight()).sum()
    }

    pub fn stream_count(&self) -> usize {
        self.streams.len()
    }

    pub fn open_stream(&mut self, stream: StreamId, credits: Credits) {
        self.streams.insert(
            stream,
            StreamState {
                credits,
                in_flight_records: 0,
                in_flight_bytes: 0,
                resume_at: 0,
            },
        );
    }

    pub fn set_credits(&mut self, stream: StreamId, credits: Credits) {
        if let Some(s) = self.streams.get_mut(&stream) {
            s.credits = credits;
        }
    }

    /// The stream ended: its in-flight records become due again at once, its partitions
    /// are free for the other streams. Returns how many records were given back.
    pub fn close_stream(&mut self, stream: StreamId, now: Instant) -> usize {
        let mut given_back = 0;
        for p in self.partitions.values_mut() {
            given_back += p.window.release_stream(stream, now).records;
            if p.bound == Some(stream) {
                p.bound = None;
            }
        }
        self.streams.remove(&stream);
        self.reset.remove(&stream);
        if self.streams.is_empty() {
            // Nobody reads: private windows would only hold memory and a catch-up reader,
            // and the subscription waits at no window's head.
            for p in self.partitions.values_mut() {
                p.end_catch_up();
                p.shared.pin.reach(p.window.cursor());
            }
        }
        given_back
    }

    pub fn set_paused(&mut self, paused: bool) {
        self.paused = paused;
    }

    /// Takes the next records for `stream` within its credits and `limits`: on each of its
    /// partitions, records due for redelivery first, then first deliveries in offset order.
    pub fn take(&mut self, stream: StreamId, now: Instant, limits: TakeLimits) -> Take {
        let mut take = Take::default();
        if !self.streams.contains_key(&stream) {
            return take;
        }
        if self.reset.contains(&stream) {
            take.reset = true;
            return take;
        }
        if self.paused {
            return take;
        }
        self.expire(now);
        let deadline = Some(now + std::time::Duration::from_millis(self.policy.ack_timeout_ms));
        let max_attempts = self.policy.max_attempts;
        let ordering = self.policy.ordering;
        let name = self.name.clone();
        // Rebind even without credits: a drained partition must move on regardless.
        let (draining, released) = if ordering == DeliveryOrder::Partition {
            self.rebind(stream)
        } else {
            (Vec::new(), false)
        };
        take.released = released;
        let serves =
            |p: &PartitionState| ordering != DeliveryOrder::Partition || p.bound == Some(stream);
        let Some(st) = self.streams.get(&stream) else {
            return take;
        };
        let mut budget = Budget::new(st, &limits);
        let limits_cu = &self.catch_up;
        // Even without credits: an evicted subscription starts catching up (and stops
        // being counted on the shared window) at once.
        for p in self.partitions.values_mut() {
            if serves(p) && !p.shared.log.is_closed() {
                p.settle(limits_cu, &mut take.catch_up);
            }
        }
        if budget.exhausted() {
            return take;
        }
        // Round robin: a take starts after the partition the last full take ended on, so
        // that a stream with many partitions and few credits serves all of them alike
        // (from the first one each time, the last ones would lag far behind the others
        // and be evicted from their shared windows).
        let resume_at = st.resume_at;
        let order: Vec<Partition> = self
            .partitions
            .range(resume_at..)
            .chain(self.partitions.range(..resume_at))
            .map(|(&k, _)| k)
            .collect();
        let mut last_served = None;
        for partition in order {
            if budget.exhausted() {
                break;
            }
            let Some(p) = self.partitions.get_mut(&partition) else {
                continue;
            };
            if !serves(p) || draining.contains(&partition) || p.shared.log.is_closed() {
                continue;
            }
            // Redeliveries first, in offset order.
            while let Some(due) = p.window.first_due(now).filter(|_| !budget.exhausted()) {
                // Not there yet: it is being fetched again from Kafka.
                let Some(chunk) = p.read_one(due.offset, limits_cu, &mut take.catch_up) else {
                    break;
                };
                if max_attempts > 0 && due.attempt > max_attempts {
                    if p.window.start_dead_letter(due.offset) {
                        take.dead_letters.push(DeadLetter {
                            partition,
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
                p.window.deliver_again(due.offset, stream, deadline);
                take.deliveries.push(Delivery {
                    chunk,
                    attempt: due.attempt,
                });
            }
            // Held records whose key became free (ordering=key), in offset order.
            while let Some(offset) = p.window.first_free_held().filter(|_| !budget.exhausted()) {
                let Some(chunk) = p.read_one(offset, limits_cu, &mut take.catch_up) else {
                    break;
                };
                if !budget.admit(chunk.records()[0].size()) {
                    break;
                }
                p.window.deliver_held(offset, stream, deadline);
                take.deliveries.push(Delivery { chunk, attempt: 1 });
            }
            // First deliveries, bounded by the unacked span. Records skipped as done (acked
            // before a restart, redriven for another subscription) take no budget: read on
            // past them, or a long run of them would leave this take empty with more to do.
            let mut still_skipping = false;
            for _pass in 0..64 {
                still_skipping = false;
                let span_left = limits.max_unacked_span - p.window.unacked_span();
                if budget.exhausted() || span_left <= 0 {
                    break;
                }
                let delivered_before = take.deliveries.len();
                let next_before = p.window.next();
                let want = budget
                    .records_left
                    .min(usize::try_from(span_left).unwrap_or(usize::MAX));
                let next = p.window.next();
                let chunks = p
                    .read(
                        next,
                        want,
                        budget.batch_bytes_left,
                        limits_cu,
                        &mut take.catch_up,
                    )
                    .unwrap_or_default();
                let mut moved = false;
                'chunks: for chunk in chunks {
                    // Runs of delivered records; a held record (its key busy) ends a run.
                    let mut run_start = 0;
                    let mut stop = false;
                    let mut end = 0;
                    for (i, record) in chunk.records().iter().enumerate() {
                        if record.offset - p.window.cursor() >= limits.max_unacked_span {
                            stop = true;
                            break;
                        }
                        if p.window.pre_acked(record.offset)
                            || addressed_elsewhere(record, name.as_deref())
                        {
                            // Acked before a restart, or redriven for another
                            // subscription: done, not delivered.
                            if i > run_start && end > run_start {
                                take.deliveries.push(Delivery {
                                    chunk: chunk.slice(run_start..end),
                                    attempt: 1,
                                });
                            }
                            p.window.skip_acked(record.offset, record.size());
                            moved = true;
                            run_start = i + 1;
                            end = i + 1;
                            continue;
                        }
                        let key = (ordering == DeliveryOrder::Key)
                            .then(|| key_hash(record))
                            .flatten();
                        if p.window.key_busy(key) {
                            if end > run_start {
                                take.deliveries.push(Delivery {
                                    chunk: chunk.slice(run_start..i),
                                    attempt: 1,
                                });
                            }
                            p.window.hold(record.offset, record.size(), key);
                            run_start = i + 1;
                            end = i + 1;
                            continue;
                        }
                        if !budget.admit(record.size()) {
                            stop = true;
                            break;
                        }
                        p.window
                            .deliver_first(record.offset, record.size(), key, stream, deadline);
                        end = i + 1;
                    }
                    if end > run_start {
                        take.deliveries.push(Delivery {
                            chunk: chunk.slice(run_start..end),
                            attempt: 1,
                        });
                    }
                    if stop {
                        break 'chunks;
                    }
                }
                if moved {
                    p.cursor_moved();
                }
                still_skipping =
                    take.deliveries.len() == delivered_before && p.window.next() > next_before;
                if !still_skipping {
                    break;
                }
            }
            if still_skipping {
                // More to skip than one take reads: the streams look again at once.
                take.released = true;
            }
            // Tell the shared window's writer how far this subscription has come.
            if p.catch_up.is_none() {
                p.shared.pin.reach(p.window.next());
            }
            last_served = Some(partition);
        }
        if let Some(st) = self.streams.get_mut(&stream) {
            if budget.exhausted()
                && let Some(last) = last_served
            {
                st.resume_at = last.saturating_add(1);
            }
            st.in_flight_records += budget.taken_records;
            st.in_flight_bytes += budget.taken_bytes;
        }
        take
    }

    /// When `stream` should look again for a delayed redelivery or an ack deadline, if
    /// any is pending.
    pub fn next_due_at(&self, stream: StreamId, now: Instant) -> Option<Instant> {
        self.partitions
            .values()
            .filter(|p| p.bound.is_none() || p.bound == Some(stream))
            .flat_map(|p| {
                [
                    p.window.next_due_at(now),
                    p.window.next_deadline().filter(|&d| d > now),
                ]
            })
            .flatten()
            .min()
    }

    /// Acks ranges per partition on behalf of `stream`. All or nothing: if any range is
    /// refused, nothing is applied. Partitions this shard does not own (any more) are
    /// skipped: their records went back to Kafka's side with the ownership.
    pub fn ack(
        &mut self,
        stream: StreamId,
        ranges: &[(Partition, Vec<OffsetRange>)],
    ) -> Result<Released, PartitionAckError> {
        self.check(stream, ranges)?;
        let mut released = Released::default();
        for (partition, rs) in ranges {
            if let Some(p) = self.partitions.get_mut(partition) {
                let before = p.window.cursor();
                released += p.window.ack(stream, rs);
                if p.window.cursor() != before {
                    p.cursor_moved();
                }
            }
        }
        if let Some(st) = self.streams.get_mut(&stream) {
            st.release(released);
        }
        Ok(released)
    }

    /// Gives ranges back for redelivery at `not_before`. All or nothing, like [`Self::ack`].
    pub fn nack(
        &mut self,
        stream: StreamId,
        ranges: &[(Partition, Vec<OffsetRange>)],
        not_before: Instant,
    ) -> Result<Released, PartitionAckError> {
        self.check(stream, ranges)?;
        let mut released = Released::default();
        for (partition, rs) in ranges {
            if let Some(p) = self.partitions.get_mut(partition) {
                released += p.window.nack(stream, rs, not_before);
            }
        }
        if let Some(st) = self.streams.get_mut(&stream) {
            st.release(released);
        }
        Ok(released)
    }

    fn check(
        &self,
        stream: StreamId,
        ranges: &[(Partition, Vec<OffsetRange>)],
    ) -> Result<(), PartitionAckError> {
        if self.reset.contains(&stream) {
            return Err(PartitionAckError {
                partition: ranges.first().map_or(0, |(p, _)| *p),
                error: AckError::StreamReset,
            });
        }
        let mut seen = Vec::with_capacity(ranges.len());
        for (partition, rs) in ranges {
            if seen.contains(partition) {
                // The same partition twice in one message: treat as overlapping input.
                let first = rs.first().map_or(0, |r| r.first);
                return Err(PartitionAckError {
                    partition: *partition,
                    error: AckError::OverlappingRanges { first, last: first },
                });
            }
            seen.push(*partition);
            if let Some(p) = self.partitions.get(partition) {
                p.window
                    .check_in_flight(stream, rs)
                    .map_err(|error| PartitionAckError {
                        partition: *partition,
                        error,
                    })?;
            }
        }
        Ok(())
    }

    /// Spreads partitions over streams: `stream` claims free partitions up to its fair share
    /// and lets go of the ones it holds above it as soon as nothing of them is in flight.
    /// Returns the partitions it holds above its share (no new deliveries on those, so they
    /// drain and move to a stream that has fewer), and whether it let go of any.
    fn rebind(&mut self, stream: StreamId) -> (Vec<Partition>, bool) {
        let streams = self.streams.len().max(1);
        let fair = self.partitions.len().div_ceil(streams);
        let mut held = self
            .partitions
            .values()
            .filter(|p| p.bound == Some(stream))
            .count();
        let mut draining = Vec::new();
        let mut released = false;
        for (&partition, p) in self.partitions.iter_mut().rev() {
            if held <= fair {
                break;
            }
            if p.bound == Some(stream) {
                held -= 1;
                if p.window.in_flight() == 0 {
                    p.bound = None;
                    released = true;
                } else {
                    draining.push(partition);
                }
            }
        }
        for p in self.partitions.values_mut() {
            if held >= fair {
                break;
            }
            if p.bound.is_none() {
                p.bound = Some(stream);
                held += 1;
            }
        }
        (draining, released)
    }
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

/// What one `take` may still hand to a stream.
struct Budget {
    /// Records: the stream's free credits, capped by the batch size.
    records_left: usize,
    /// The stream's free byte credits.
    bytes_left: usize,
    /// Bytes left in this batch.
    batch_bytes_left: usize,
    taken_records: usize,
    taken_bytes: usize,
    /// Nothing in flight: the first record may exceed the byte credits, so a record larger
    /// than the credits still moves.
    idle: bool,
}

impl Budget {
    fn new(st: &StreamState, limits: &TakeLimits) -> Self {
        let idle = st.in_flight_records == 0;
        let bytes_left = st.credits.max_bytes.saturating_sub(st.in_flight_bytes);
        let mut records_left = st
            .credits
            .max_records
            .saturating_sub(st.in_flight_records)
            .min(limits.batch_records);
        if bytes_left == 0 && !idle {
            records_left = 0;
        }
        Self {
            records_left,
            bytes_left,
            batch_bytes_left: limits.batch_bytes,
            taken_records: 0,
            taken_bytes: 0,
            idle,
        }
    }

    fn exhausted(&self) -> bool {
        self.records_left == 0
    }

    /// Counts a record of `size` if it fits; once one does not, the budget is spent (records
    /// go out in order, none is skipped for a smaller one behind it).
    fn admit(&mut self, size: usize) -> bool {
        let first = self.taken_records == 0;
        let batch_ok = first || size <= self.batch_bytes_left;
        let credit_ok = size <= self.bytes_left || (self.idle && first);
        if self.exhausted() || !batch_ok || !credit_ok {
            self.records_left = 0;
            return false;
        }
        self.records_left -= 1;
        self.taken_records += 1;
        self.taken_bytes += size;
        self.bytes_left = self.bytes_left.saturating_sub(size);
        self.batch_bytes_left = self.batch_bytes_left.saturating_sub(size);
        true
    }
}

#[cfg(test)]
mod tests;
