//! The live objects of a shard: owned partitions, registered topics, subscriptions.
//!
//! Core module: no I/O.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use arc_swap::ArcSwap;
use parking_lot::{Mutex, RwLock};
use tokio::sync::watch;

use crate::delivery::{
    CatchUpLimits, Credits, OffsetRange, PartitionAckError, PartitionStats, Released, StreamId,
    SubscriptionDelivery, Take, TakeLimits,
};
use crate::log::PartitionLog;
use crate::model::{Offset, Partition, SubscriptionKey, SubscriptionName, TopicName};
use crate::registry::SubscriptionSpec;

/// One partition this shard owns.
#[derive(Debug)]
pub struct OwnedPartition {
    pub topic: TopicName,
    pub partition: Partition,
    /// The shared window every subscription reads.
    pub log: Arc<PartitionLog>,
    /// The pending request to read the partition again, until the reader takes it.
    pub(super) rewind: watch::Sender<Option<Rewind>>,
}

/// A request to read a partition again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rewind {
    /// From here (or from the lowest cursor, if that is lower).
    pub offset: Offset,
    /// The reader lost its place (a batch refused, a fetch error, a stray record): it reads
    /// again whatever the window holds. Otherwise only subscriptions behind the window asked
    /// (ADR 0009), and nothing is left to do once the window reaches back to `offset`.
    pub reposition: bool,
}

impl OwnedPartition {
    /// Asks the partition's reader to read again from `offset` (or from the lowest cursor,
    /// if that is lower): it lost its place.
    pub fn request_rewind(&self, offset: Offset) {
        self.request(Rewind {
            offset,
            reposition: true,
        });
    }

    /// Asks the partition's window to reach back to `offset` for subscriptions behind it
    /// (ADR 0009); a request the window covers by the time the reader looks is dropped.
    pub fn request_move_back(&self, offset: Offset) {
        self.request(Rewind {
            offset,
            reposition: false,
        });
    }

    /// Adds `r` to the pending request: the lowest offset, repositioning if either is.
    pub fn request(&self, r: Rewind) {
        self.rewind.send_modify(|pending| {
            *pending = Some(match *pending {
                Some(p) => Rewind {
                    offset: p.offset.min(r.offset),
                    reposition: p.reposition || r.reposition,
                },
                None => r,
            });
        });
    }

    /// Takes the pending rewind request (without waking the reader again).
    pub fn take_rewind(&self) -> Option<Rewind> {
        let mut taken = None;
        self.rewind.send_if_modified(|r| {
            taken = r.take();
            false
        });
        taken
    }

    /// Whether the pending request, if any, needs the reader to stop what it does: a
    /// repositioning, or a move back below what the window holds.
    pub fn rewind_needed(&self) -> bool {
        self.rewind
            .borrow()
            .is_some_and(|r| r.reposition || r.offset < self.log.start())
    }

    /// Wakes when a rewind is requested (or taken).
    pub fn rewind_requests(&self) -> watch::Receiver<Option<Rewind>> {
        self.rewind.subscribe()
    }

    /// Being (or already) given up: its window is closed to deliveries.
    pub fn is_revoked(&self) -> bool {
        self.log.is_closed()
    }
}

/// A registered topic on this shard.
#[derive(Debug)]
pub struct TopicRuntime {
    pub name: TopicName,
    /// Partitions of this topic owned by the shard.
    pub(super) partitions: RwLock<BTreeMap<Partition, Arc<OwnedPartition>>>,
    /// Subscriptions of this topic.
    pub(super) subscriptions: RwLock<BTreeMap<SubscriptionName, Arc<SubscriptionRuntime>>>,
    /// Bumped when records arrive or ownership changes: streams look again.
    wake: watch::Sender<u64>,
}

impl TopicRuntime {
    pub(super) fn new(name: TopicName) -> Self {
        Self {
            name,
            partitions: RwLock::new(BTreeMap::new()),
            subscriptions: RwLock::new(BTreeMap::new()),
            wake: watch::Sender::new(0),
        }
    }

    pub fn wake(&self) {
        self.wake.send_modify(|g| *g = g.wrapping_add(1));
    }

    pub fn wakes(&self) -> watch::Receiver<u64> {
        self.wake.subscribe()
    }

    /// Wakes the streams of every subscription (something changed for all of them).
    pub fn wake_subscriptions(&self) {
        for s in self.subscriptions.read().values() {
            s.wake();
        }
    }

    pub fn partition(&self, partition: Partition) -> Option<Arc<OwnedPartition>> {
        self.partitions.read().get(&partition).cloned()
    }

    pub fn owned_partitions(&self) -> Vec<Arc<OwnedPartition>> {
        self.partitions.read().values().cloned().collect()
    }

    pub fn subscriptions(&self) -> Vec<Arc<SubscriptionRuntime>> {
        self.subscriptions.read().values().cloned().collect()
    }
}

/// A subscription on this shard.
#[derive(Debug)]
pub struct SubscriptionRuntime {
    key: SubscriptionKey,
    /// Which life of the subscription this is (its creation time); never changes.
    created_at_ms: i64,
    /// Its current settings; replaced (under the delivery lock) when the registry changes
    /// them.
    spec: ArcSwap<SubscriptionSpec>,
    /// Its delivery state: short critical sections only, never held across an await.
    pub(super) delivery: Mutex<SubscriptionDelivery>,
    /// Bumped when records come back or partitions are freed: its streams look again.
    wake: watch::Sender<u64>,
    /// Set when the subscription was deleted: its streams end.
    pub(super) removed: AtomicBool,
}

impl SubscriptionRuntime {
    pub(super) fn new(spec: SubscriptionSpec, catch_up: CatchUpLimits) -> Self {
        let mut delivery = SubscriptionDelivery::new(catch_up)
            .with_policy(spec.delivery.clone())
            .named(spec.name.as_str());
        delivery.set_paused(spec.paused);
        Self {
            key: spec.key(),
            created_at_ms: spec.created_at_ms,
            spec: ArcSwap::from_pointee(spec),
            delivery: Mutex::new(delivery),
            wake: watch::Sender::new(0),
            removed: AtomicBool::new(false),
        }
    }

    pub fn key(&self) -> SubscriptionKey {
        self.key.clone()
    }

    /// The subscription's current settings.
    pub fn spec(&self) -> Arc<SubscriptionSpec> {
        self.spec.load_full()
    }

    pub fn created_at_ms(&self) -> i64 {
        self.created_at_ms
    }

    pub fn is_paused(&self) -> bool {
        self.spec.load().paused
    }

    /// Applies new settings: delivery policy, pause, and the seeks of owned partitions
    /// (`resets`: each partition's window restarts at the offset, dropping what was in
    /// flight; streams that had some of it end and reconnect). Atomic with respect to
    /// [`Self::cursor_states`]: a cursor is never read with the wrong seek.
    pub(super) fn update(
        &self,
        new: SubscriptionSpec,
        resets: Vec<(Partition, Arc<PartitionLog>, Offset)>,
    ) {
        {
            let mut d = self.delivery.lock();
            d.set_policy(new.delivery.clone());
            for (p, log, offset) in resets {
                d.reset_partition(p, log, offset);
            }
            d.set_paused(new.paused);
            self.spec.store(Arc::new(new));
        }
        self.wake();
    }

    pub fn wake(&self) {
        self.wake.send_modify(|g| *g = g.wrapping_add(1));
    }

    pub fn wakes(&self) -> watch::Receiver<u64> {
        self.wake.subscribe()
    }

    pub fn is_removed(&self) -> bool {
        self.removed.load(Ordering::Acquire)
    }

    pub fn open_stream(&self, stream: StreamId, credits: Credits) {
        self.delivery.lock().open_stream(stream, credits);
    }

    pub fn set_credits(&self, stream: StreamId, credits: Credits) {
        self.delivery.lock().set_credits(stream, credits);
        self.wake();
    }

    /// Ends a stream; its in-flight records go back to the subscription at once.
    pub fn close_stream(&self, stream: StreamId, now: Instant) -> usize {
        let n = self.delivery.lock().close_stream(stream, now);
        self.wake();
        n
    }

    /// Records for `stream` to send now (none while the subscription is paused).
    pub fn take(&self, stream: StreamId, now: Instant, limits: TakeLimits) -> Take {
        let take = self.delivery.lock().take(stream, now, limits);
        if take.released {
            self.wake();
        }
        take
    }

    pub fn next_due_at(&self, stream: StreamId, now: Instant) -> Option<Instant> {
        self.delivery.lock().next_due_at(stream, now)
    }

    /// Acks on behalf of `stream`. Other streams are woken only if held records of a key
    /// became free (`ordering=key`); otherwise this stream looks again itself after handling
    /// the ack (a partition it lets go of wakes the others through [`Self::take`]).
    pub fn ack(
        &self,
        stream: StreamId,
        ranges: &[(Partition, Vec<OffsetRange>)],
    ) -> Result<Released, PartitionAckError> {
        let (released, freed) = {
            let mut d = self.delivery.lock();
            let released = d.ack(stream, ranges)?;
            (released, d.has_free_held())
        };
        // ordering=key: records of a key this ack freed go to whichever stream asks first,
        // idle ones included.
        if freed {
            self.wake();
        }
        Ok(released)
    }

    /// Gives records back for redelivery by `stream` (see [`Self::ack`] on wake-ups).
    pub fn nack(
        &self,
        stream: StreamId,
        ranges: &[(Partition, Vec<OffsetRange>)],
        not_before: Instant,
    ) -> Result<Released, PartitionAckError> {
        self.delivery.lock().nack(stream, ranges, not_before)
    }

    /// Cursors with the acked ranges above them and the seek they follow, per partition.
    pub fn cursor_states(&self) -> Vec<(Partition, Offset, Vec<OffsetRange>, u64)> {
        let d = self.delivery.lock();
        let spec = self.spec.load();
        d.cursor_states()
            .map(|(p, c, acked)| (p, c, acked, spec.seek_generation(p)))
            .collect()
    }

    pub fn cursors(&self) -> Vec<(Partition, Offset)> {
        self.delivery.lock().cursors().collect()
    }

    /// A dead letter was published: the record counts as acked.
    pub fn dead_lettered(&self, partition: Partition, offset: Offset) {
        self.delivery.lock().dead_lettered(partition, offset);
        // The cursor may have moved and a key may be free: the streams look again.
        self.wake();
    }

    /// A dead letter could not be published: it is tried again from `retry_at`.
    pub fn dead_letter_failed(
        &self,
        partition: Partition,
        offset: Offset,
        attempts: u32,
        retry_at: Instant,
    ) {
        self.delivery
            .lock()
            .dead_letter_failed(partition, offset, attempts, retry_at);
        // Streams asleep until a time computed before this retry was scheduled look again.
        self.wake();
    }

    /// Per partition: cursor, unacked records, the oldest delivery in flight.
    pub fn partition_stats(&self) -> Vec<PartitionStats> {
        self.delivery.lock().partition_stats()
    }

    /// Partitions served by the catch-up path.
    pub fn catching_up(&self) -> Vec<Partition> {
        self.delivery.lock().catching_up()
    }

    pub fn unacked(&self) -> usize {
        self.delivery.lock().unacked()
    }

    pub fn in_flight(&self) -> usize {
        self.delivery.lock().in_flight()
    }

    pub fn stream_count(&self) -> usize {
        self.delivery.lock().stream_count()
    }
}
