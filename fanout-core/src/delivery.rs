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

mod ack_window;
mod budget;
mod partition;

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::Instant;

use crate::log::{Chunk, MemoryPool, PartitionLog};
use crate::model::{DeliveryOrder, DeliveryPolicy, Offset, Partition};
use budget::Budget;
use partition::{PartitionState, TakeContext};

pub use ack_window::{AckWindow, Due, MAX_STORED_RANGES, OffsetRange, Redelivery, Released};

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

/// Sizes of the catch-up windows (one per subscription and partition on the catch-up path).
#[derive(Debug, Clone)]
pub struct CatchUpLimits {
    /// Byte budget of one (subscription, partition)'s catch-up window.
    pub window_bytes: usize,
    /// Budget of all catch-up windows of the shard together.
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
/// path (`rewind` is `None`): its catch-up window must be filled from Kafka, from the
/// window's head on, by a catch-up reader; or nobody reads the shared window, which must
/// move back to `rewind` (the partition's reader does that).
#[derive(Debug, Clone)]
pub struct CatchUpStart {
    pub partition: Partition,
    /// The catch-up window, closed when the subscription no longer needs it; the shared
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
    /// Partitions that moved to the catch-up path: their catch-up windows need a reader.
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
    /// Sizes of catch-up windows on the catch-up path.
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
                p.ack_window.retime(old, new);
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
            for (s, released) in p.ack_window.expire(now) {
                if let Some(st) = self.streams.get_mut(&s) {
                    st.release(released);
                }
            }
        }
    }

    /// The record at `offset` is in the dead-letter topic: it counts as acked.
    pub fn dead_lettered(&mut self, partition: Partition, offset: Offset) {
        if let Some(p) = self.partitions.get_mut(&partition) {
            let before = p.ack_window.cursor();
            p.ack_window.dead_lettered(offset);
            if p.ack_window.cursor() != before {
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
            p.ack_window
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
            st.release(p.ack_window.release_stream(s, now));
        }
        // Dropping `p` lets go of its windows (pins, catch-up window).
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
            self.reset.extend(p.ack_window.streams_in_flight());
        }
        self.add_partition(partition, log, cursor);
    }

    /// Cursor of every owned partition.
    pub fn cursors(&self) -> impl Iterator<Item = (Partition, Offset)> + '_ {
        self.partitions
            .iter()
            .map(|(&p, s)| (p, s.ack_window.cursor()))
    }

    /// Cursor and acked ranges above it (at most [`MAX_STORED_RANGES`]) of every owned
    /// partition, as stored.
    pub fn cursor_states(
        &self,
    ) -> impl Iterator<Item = (Partition, Offset, Vec<OffsetRange>)> + '_ {
        self.partitions.iter().map(|(&p, s)| {
            (
                p,
                s.ack_window.cursor(),
                s.ack_window.acked_ranges(MAX_STORED_RANGES),
            )
        })
    }

    pub fn cursor(&self, partition: Partition) -> Option<Offset> {
        self.partitions
            .get(&partition)
            .map(|p| p.ack_window.cursor())
    }

    /// Is a held record's key free, so that it can be delivered (`ordering=key`)?
    pub fn has_free_held(&self) -> bool {
        self.partitions
            .values()
            .any(|p| p.ack_window.first_free_held().is_some())
    }

    /// Partitions served by the catch-up path (too far behind for the shared window).
    pub fn catching_up(&self) -> Vec<Partition> {
        self.partitions
            .iter()
            .filter(|(_, p)| p.catch_up_window.is_some())
            .map(|(&p, _)| p)
            .collect()
    }

    /// Per partition, what an operator asks about: where the cursor is, what is unacked.
    pub fn partition_stats(&self) -> Vec<PartitionStats> {
        self.partitions
            .iter()
            .map(|(&partition, p)| PartitionStats {
                partition,
                cursor: p.ack_window.cursor(),
                in_flight: p.ack_window.in_flight(),
                unacked: p.ack_window.unacked(),
                oldest_deadline: p.ack_window.oldest_deadline(),
                catching_up: p.catch_up_window.is_some(),
            })
            .collect()
    }

    /// The subscription's delivery policy.
    pub fn policy(&self) -> &DeliveryPolicy {
        &self.policy
    }

    /// Records delivered and not yet acked, over all partitions.
    pub fn unacked(&self) -> usize {
        self.partitions
            .values()
            .map(|p| p.ack_window.unacked())
            .sum()
    }

    /// Records in flight on live streams, over all partitions.
    pub fn in_flight(&self) -> usize {
        self.partitions
            .values()
            .map(|p| p.ack_window.in_flight())
            .sum()
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
            given_back += p.ack_window.release_stream(stream, now).records;
            if p.bound == Some(stream) {
                p.bound = None;
            }
        }
        self.streams.remove(&stream);
        self.reset.remove(&stream);
        if self.streams.is_empty() {
            // Nobody reads: catch-up windows would only hold memory and a catch-up reader,
            // and the subscription waits at no window's head.
            for p in self.partitions.values_mut() {
                p.end_catch_up();
                p.shared_window.pin.reach(p.ack_window.cursor());
            }
        }
        given_back
    }

    pub fn set_paused(&mut self, paused: bool) {
        self.paused = paused;
    }

    /// Takes the next records for `stream` within its credits and `limits`: on each of its
    /// partitions, records due for redelivery first, then held records whose key became
    /// free, then first deliveries in offset order.
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
        let ordering = self.policy.ordering;
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
        let cx = TakeContext {
            stream,
            now,
            deadline: Some(now + std::time::Duration::from_millis(self.policy.ack_timeout_ms)),
            max_attempts: self.policy.max_attempts,
            ordering,
            name: self.name.as_deref(),
            limits,
            catch_up: &self.catch_up,
        };
        // Even without credits: an evicted subscription starts catching up (and stops
        // being counted on the shared window) at once.
        for p in self.partitions.values_mut() {
            if serves(p) && !p.shared_window.log.is_closed() {
                p.settle(cx.catch_up, &mut take.catch_up);
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
            if !serves(p) || draining.contains(&partition) || p.shared_window.log.is_closed() {
                continue;
            }
            p.take_due(&cx, &mut budget, &mut take);
            p.take_held(&cx, &mut budget, &mut take);
            if p.take_first(&cx, &mut budget, &mut take) {
                // More to skip than one take reads: the streams look again at once.
                take.released = true;
            }
            // Tell the shared window's writer how far this subscription has come.
            if p.catch_up_window.is_none() {
                p.shared_window.pin.reach(p.ack_window.next());
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
                    p.ack_window.next_due_at(now),
                    p.ack_window.next_deadline().filter(|&d| d > now),
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
                let before = p.ack_window.cursor();
                released += p.ack_window.ack(stream, rs);
                if p.ack_window.cursor() != before {
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
                released += p.ack_window.nack(stream, rs, not_before);
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
                p.ack_window
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
                if p.ack_window.in_flight() == 0 {
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

#[cfg(test)]
mod tests;
