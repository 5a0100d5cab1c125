//! The in-memory state of one shard: the registry it applied, the partitions it owns with
//! their shared windows, and every subscription's delivery state.
//!
//! Core module: no I/O. The adapters call in: the registry tailer applies records, the
//! ingest applies assignments and appends records, the gRPC service runs streams, the cursor
//! flusher reads cursors out. Wake-ups go out through `tokio::sync` channels (no I/O).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use parking_lot::{Mutex, RwLock};
use tokio::sync::watch;

use tokio::sync::Notify;

use crate::delivery::{CatchUpLimits, OffsetRange, StreamId, TakeLimits};
use crate::log::{LogLimits, MemoryPool, PartitionLog};
use crate::model::{Offset, Partition, SubscriptionKey, SubscriptionName, TopicName};
use crate::registry::{Change, DecodeError, Registry, SubscriptionSpec, TopicSpec};

mod lease;
mod runtime;

pub use lease::Lease;
pub use runtime::{OwnedPartition, Rewind, SubscriptionRuntime, TopicRuntime};

/// Limits the shard applies to every partition and stream.
#[derive(Debug, Clone, Copy)]
pub struct ShardLimits {
    /// Byte budget of each owned partition's shared window.
    pub partition_window_bytes: usize,
    /// Byte budget of all shared windows of the shard together.
    pub window_memory_bytes: usize,
    /// Byte budget of one (subscription, partition)'s private window on the catch-up path.
    pub catch_up_window_bytes: usize,
    /// Byte budget of all private windows of the shard together.
    pub catch_up_memory_bytes: usize,
    /// Batch and span limits of deliveries.
    pub take: TakeLimits,
    /// A stop of the process longer than this suspends deliveries and cursor writes until
    /// the shard group confirms this shard is still a member (see [`Lease`]).
    pub lease_gap: std::time::Duration,
}

#[cfg(any(test, feature = "test-util"))]
impl ShardLimits {
    /// Small windows and batches for tests (1 MiB per window, 100 records per batch).
    pub const FOR_TESTS: Self = Self {
        partition_window_bytes: 1 << 20,
        window_memory_bytes: 1 << 30,
        catch_up_window_bytes: 1 << 20,
        catch_up_memory_bytes: 1 << 30,
        take: TakeLimits {
            batch_records: 100,
            batch_bytes: 1 << 20,
            max_unacked_span: 1000,
        },
        lease_gap: std::time::Duration::from_secs(3),
    };
}

/// Why a subscription could not be found.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LookupError {
    #[error("topic {0:?} is not registered with fanout")]
    UnknownTopic(TopicName),
    #[error("subscription {name:?} does not exist on topic {topic:?}")]
    UnknownSubscription {
        topic: TopicName,
        name: SubscriptionName,
    },
}

/// Records a subscription can no longer get because Kafka's retention deleted them before
/// they were acked. Reported loudly by the caller; the cursor moves to the log start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Loss {
    pub subscription: SubscriptionKey,
    pub partition: Partition,
    pub cursor: Offset,
    pub log_start: Offset,
}

/// A cursor that changed since it was last stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CursorUpdate {
    pub subscription: SubscriptionKey,
    /// Which life of the subscription it belongs to (its creation time): a subscription
    /// deleted and created again under the same name must not inherit the old cursors.
    pub incarnation: i64,
    pub partition: Partition,
    pub cursor: Offset,
    /// Acked ranges above the cursor (bounded).
    pub acked: Vec<OffsetRange>,
    /// The seek of the partition it follows.
    pub seek: u64,
}

/// A cursor as stored in Kafka (or as a restart would derive it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredCursor {
    pub offset: Offset,
    /// The creation time of the subscription it belongs to.
    pub incarnation: i64,
    /// Ranges above the cursor acked already: not delivered again after a restart.
    pub acked: Vec<OffsetRange>,
    /// The seek of the partition the cursor follows (0: none). A cursor stored before the
    /// subscription's last seek no longer counts.
    pub seek: u64,
}

impl StoredCursor {
    /// A cursor with nothing acked above it.
    pub fn at(offset: Offset, incarnation: i64) -> Self {
        Self {
            offset,
            incarnation,
            acked: Vec::new(),
            seek: 0,
        }
    }

    /// The same, following seek `generation`.
    pub fn after_seek(self, generation: u64) -> Self {
        Self {
            seek: generation,
            ..self
        }
    }
}

type StoredCursors = HashMap<(SubscriptionKey, Partition), StoredCursor>;

/// The stored cursor of this life of the subscription since its last seek of the
/// partition, with its acked ranges.
fn stored_entry<'a>(
    stored: &'a StoredCursors,
    spec: &SubscriptionSpec,
    p: Partition,
) -> Option<&'a StoredCursor> {
    stored
        .get(&(spec.key(), p))
        .filter(|c| c.incarnation == spec.created_at_ms && c.seek == spec.seek_generation(p))
}

/// The stored cursor of this life of the subscription, if there is one.
fn stored_for(stored: &StoredCursors, spec: &SubscriptionSpec, p: Partition) -> Option<Offset> {
    stored_entry(stored, spec, p).map(|c| c.offset)
}

/// What the shard decided when it was given a partition.
#[derive(Debug)]
pub struct Assigned {
    /// Where the partition's reader starts: the lowest cursor of its subscriptions.
    pub start: Offset,
    pub partition: Arc<OwnedPartition>,
    pub losses: Vec<Loss>,
}

/// A (subscription, partition) that left the shared window: a catch-up reader fills its
/// private window from Kafka until the subscription no longer needs it (the window is
/// closed then).
#[derive(Debug, Clone)]
pub struct CatchUpJob {
    pub topic: Arc<TopicRuntime>,
    pub subscription: Arc<SubscriptionRuntime>,
    pub partition: Partition,
    /// The private window, filled from its head on.
    pub log: Arc<PartitionLog>,
}

/// Catch-up work waiting for a catch-up reader (readers put back what they leave unfinished).
#[derive(Debug, Default)]
pub struct CatchUpQueue {
    jobs: Mutex<VecDeque<CatchUpJob>>,
    /// Signalled for each job pushed.
    ready: Notify,
}

impl CatchUpQueue {
    pub fn push(&self, job: CatchUpJob) {
        self.jobs.lock().push_back(job);
        self.ready.notify_one();
    }

    /// Are jobs waiting for a reader?
    pub fn others_waiting(&self) -> bool {
        !self.jobs.lock().is_empty()
    }

    /// The oldest job, once there is one.
    pub async fn pop(&self) -> CatchUpJob {
        loop {
            let notified = self.ready.notified();
            if let Some(job) = self.jobs.lock().pop_front() {
                return job;
            }
            notified.await;
        }
    }
}

/// Records retention deleted before a subscription acked them, on one partition, since
/// this shard started (shown by the admin API).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LossTotal {
    /// Records (offsets) lost.
    pub records: i64,
    /// Times it happened.
    pub events: u64,
    /// The log start the cursor was moved to the last time.
    pub last_log_start: Offset,
}

/// The shard's state.
#[derive(Debug)]
pub struct Shard {
    /// Limits applied to partitions and streams.
    limits: ShardLimits,
    /// The registry as applied so far.
    registry: RwLock<Registry>,
    /// Offset of the next registry record to apply: admin writes wait on it.
    registry_next: watch::Sender<i64>,
    /// Registered topics with their owned partitions and subscriptions.
    topics: RwLock<BTreeMap<TopicName, Arc<TopicRuntime>>>,
    /// Per (subscription, partition): the cursor a restart would begin from (stored in Kafka,
    /// or derivable from the subscription's start).
    stored: Mutex<StoredCursors>,
    /// Source of stream ids.
    next_stream: AtomicU64,
    /// The registered topics the ingest should subscribe to.
    wanted_topics: watch::Sender<Vec<TopicName>>,
    /// Set once the shard group gave this shard an assignment (possibly empty).
    group_joined: std::sync::atomic::AtomicBool,
    /// Budget of all shared windows.
    window_pool: Arc<MemoryPool>,
    /// Sizes of private windows on the catch-up path.
    catch_up: CatchUpLimits,
    /// Catch-up work for the catch-up readers.
    catch_up_queue: CatchUpQueue,
    /// Losses to retention per (subscription, partition), for the admin API.
    losses: Mutex<HashMap<(SubscriptionKey, Partition), LossTotal>>,
    /// Whether the shard may act on its partitions (false after the process was stopped).
    lease: Lease,
}

impl Shard {
    pub fn new(limits: ShardLimits) -> Self {
        Self {
            window_pool: MemoryPool::new(limits.window_memory_bytes),
            catch_up: CatchUpLimits {
                window_bytes: limits.catch_up_window_bytes,
                pool: MemoryPool::new(limits.catch_up_memory_bytes),
            },
            catch_up_queue: CatchUpQueue::default(),
            losses: Mutex::new(HashMap::new()),
            lease: Lease::new(limits.lease_gap),
            limits,
            registry: RwLock::new(Registry::default()),
            registry_next: watch::Sender::new(0),
            topics: RwLock::new(BTreeMap::new()),
            stored: Mutex::new(HashMap::new()),
            next_stream: AtomicU64::new(1),
            wanted_topics: watch::Sender::new(Vec::new()),
            group_joined: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Whether the shard may still deliver and write cursors.
    pub fn lease(&self) -> &Lease {
        &self.lease
    }

    /// Wakes every stream (after a suspension was lifted).
    pub fn wake_all(&self) {
        for t in self.topics() {
            t.wake();
            t.wake_subscriptions();
        }
    }

    /// Bytes held by shared windows, and their budget.
    pub fn window_memory(&self) -> (usize, usize) {
        (self.window_pool.used(), self.window_pool.limit())
    }

    /// Bytes held by private catch-up windows, and their budget.
    pub fn catch_up_memory(&self) -> (usize, usize) {
        (self.catch_up.pool.used(), self.catch_up.pool.limit())
    }

    /// Counts losses (they are also logged by the caller).
    fn record_losses(&self, losses: &[Loss]) {
        let mut totals = self.losses.lock();
        for l in losses {
            let t = totals
                .entry((l.subscription.clone(), l.partition))
                .or_default();
            t.records += l.log_start - l.cursor;
            t.events += 1;
            t.last_log_start = l.log_start;
        }
    }

    /// Losses to retention of a subscription since this shard started, per partition.
    pub fn losses_of(&self, key: &SubscriptionKey) -> BTreeMap<Partition, LossTotal> {
        self.losses
            .lock()
            .iter()
            .filter(|((k, _), _)| k == key)
            .map(|((_, p), t)| (*p, *t))
            .collect()
    }

    /// The catch-up work of the shard: subscriptions' streams push, catch-up readers pop.
    pub fn catch_up_queue(&self) -> &CatchUpQueue {
        &self.catch_up_queue
    }

    // ---- registry ----

    /// Reads the applied registry without copying it.
    pub fn with_registry<R>(&self, f: impl FnOnce(&Registry) -> R) -> R {
        f(&self.registry.read())
    }

    /// The registry reader reached `end` (the end of the topic): offsets below it that were
    /// no records (compacted away) count as applied.
    pub fn registry_reached(&self, end: i64) {
        self.registry_next.send_if_modified(|n| {
            let moved = end > *n;
            *n = (*n).max(end);
            moved
        });
    }

    /// Watches the offset of the next registry record to apply.
    pub fn registry_progress(&self) -> watch::Receiver<i64> {
        self.registry_next.subscribe()
    }

    /// Applies the registry record at `offset` and acts on what changed (a new subscription
    /// below a partition's window asks that partition's reader to move back). Returns the
    /// change.
    pub fn apply_registry(
        &self,
        offset: i64,
        key: &[u8],
        value: Option<&[u8]>,
    ) -> Result<Option<Change>, DecodeError> {
        let result = self.registry.write().apply(key, value);
        if let Ok(Some(change)) = &result {
            match change {
                Change::TopicAdded(spec) => self.add_topic(spec),
                Change::TopicRemoved(name) => self.remove_topic(name),
                Change::SubscriptionAdded(spec) => self.add_subscription(spec),
                Change::SubscriptionUpdated { old, new } => self.update_subscription(old, new),
                Change::SubscriptionReplaced(spec) => {
                    self.remove_subscription(&spec.key());
                    self.add_subscription(spec);
                }
                Change::SubscriptionRemoved(key) => self.remove_subscription(key),
            }
        }
        self.registry_next
            .send_modify(|n| *n = (*n).max(offset + 1));
        result
    }

    fn add_topic(&self, spec: &TopicSpec) {
        self.topics
            .write()
            .entry(spec.name.clone())
            .or_insert_with(|| Arc::new(TopicRuntime::new(spec.name.clone())));
        // Subscriptions recorded before their topic (written by hand, or a topic registered
        // again) come to life with it.
        let subs: Vec<SubscriptionSpec> = self
            .registry
            .read()
            .subscriptions_of(&spec.name)
            .cloned()
            .collect();
        for s in &subs {
            self.add_subscription(s);
        }
        self.publish_wanted_topics();
    }

    fn remove_topic(&self, name: &TopicName) {
        if let Some(t) = self.topics.write().remove(name) {
            for s in t.subscriptions() {
                s.removed.store(true, Ordering::Release);
                s.wake();
            }
        }
        self.publish_wanted_topics();
    }

    fn publish_wanted_topics(&self) {
        let names: Vec<TopicName> = self.topics.read().keys().cloned().collect();
        self.wanted_topics.send_if_modified(|w| {
            let changed = *w != names;
            *w = names;
            changed
        });
    }

    /// The shard group assigned partitions to this shard (possibly none).
    pub fn mark_group_joined(&self) {
        self.group_joined.store(true, Ordering::Release);
    }

    /// Has the shard group assigned this shard its partitions, or is there nothing to read?
    pub fn has_assignment(&self) -> bool {
        self.group_joined.load(Ordering::Acquire) || self.wanted_topics.borrow().is_empty()
    }

    /// Watches the registered topics the ingest should read.
    pub fn wanted_topics(&self) -> watch::Receiver<Vec<TopicName>> {
        self.wanted_topics.subscribe()
    }

    fn add_subscription(&self, spec: &SubscriptionSpec) {
        let Some(topic) = self.topic(&spec.topic) else {
            return;
        };
        if topic.subscriptions.read().contains_key(&spec.name) {
            return;
        }
        let rt = Arc::new(SubscriptionRuntime::new(
            spec.clone(),
            self.catch_up.clone(),
        ));
        let key = spec.key();
        // Lock order everywhere: partitions, subscriptions, stored cursors, a delivery. The
        // partition map stays locked until the subscription is listed, so an assignment
        // cannot slip in between and miss it.
        let partitions = topic.partitions.read();
        let mut subscriptions = topic.subscriptions.write();
        let mut cursors = Vec::with_capacity(partitions.len());
        {
            let mut stored = self.stored.lock();
            for (&p, owned) in partitions.iter() {
                let cursor = match stored_entry(&stored, spec, p).cloned() {
                    Some(c) => c,
                    None => {
                        let c = spec.start_of(p).unwrap_or_else(|| {
                            tracing::warn!(
                                topic = %spec.topic, partition = p, subscription = %spec.name,
                                "partition appeared while the subscription was created; \
                                 starting it at the live position"
                            );
                            owned.log.head()
                        });
                        let c = StoredCursor::at(c, spec.created_at_ms)
                            .after_seek(spec.seek_generation(p));
                        stored.insert((key.clone(), p), c.clone());
                        c
                    }
                };
                cursors.push((p, owned.clone(), cursor));
            }
        }
        {
            let mut delivery = rt.delivery.lock();
            for (p, owned, c) in &cursors {
                delivery.add_partition_restored(*p, owned.log.clone(), c.offset, &c.acked);
            }
        }
        subscriptions.insert(spec.name.clone(), rt);
        drop((subscriptions, partitions));
        // A start below a shared window is served by the catch-up path when the
        // subscription's streams look: the window is not moved back for everyone.
        drop(cursors);
        topic.wake();
    }

    /// Applies changed settings, pause and seeks to a live subscription.
    fn update_subscription(&self, old: &SubscriptionSpec, new: &SubscriptionSpec) {
        let Some(topic) = self.topic(&new.topic) else {
            return;
        };
        let Some(rt) = topic.subscriptions.read().get(&new.name).cloned() else {
            return;
        };
        if old.delivery.ordering != new.delivery.ordering {
            tracing::warn!(
                subscription = %new.key(),
                "the registry changes the ordering of a live subscription; keeping {:?}",
                old.delivery.ordering
            );
        }
        // Lock order: partitions, stored cursors, a delivery (taken one after the other here).
        let partitions = topic.partitions.read();
        let resets: Vec<(Partition, Arc<PartitionLog>, Offset)> = new
            .seeks
            .iter()
            .filter(|(p, s)| old.seeks.get(p) != Some(*s))
            .filter_map(|(p, s)| partitions.get(p).map(|o| (*p, o.log.clone(), s.offset)))
            .collect();
        {
            let mut stored = self.stored.lock();
            for (p, _, offset) in &resets {
                stored.insert(
                    (new.key(), *p),
                    StoredCursor::at(*offset, new.created_at_ms)
                        .after_seek(new.seek_generation(*p)),
                );
            }
        }
        for (p, _, offset) in &resets {
            tracing::info!(subscription = %new.key(), partition = p, offset, "seek applied");
        }
        rt.update(new.clone(), resets);
        drop(partitions);
        // A seek forward may let the windows trim; a resume has records to send.
        for owned in topic.owned_partitions() {
            owned.log.notify_progress();
        }
        topic.wake();
    }

    fn remove_subscription(&self, key: &SubscriptionKey) {
        let Some(topic) = self.topic(&key.topic) else {
            return;
        };
        let removed = topic.subscriptions.write().remove(&key.name);
        if let Some(s) = &removed {
            s.removed.store(true, Ordering::Release);
            // Its holds on the windows go now, not when its last stream ends.
            s.delivery.lock().clear();
            s.wake();
            // The stored cursors of that life only: the cursor tail may have applied those
            // of a newer life (deleted and created again) already.
            let incarnation = s.created_at_ms();
            self.stored
                .lock()
                .retain(|(k, _), c| !(k == key && c.incarnation == incarnation));
        }
        // The lowest cursor may have moved up: let the readers trim.
        for owned in topic.owned_partitions() {
            owned.log.notify_progress();
        }
        topic.wake();
    }

    // ---- lookups ----

    pub fn topic(&self, name: &TopicName) -> Option<Arc<TopicRuntime>> {
        self.topics.read().get(name).cloned()
    }

    pub fn topics(&self) -> Vec<Arc<TopicRuntime>> {
        self.topics.read().values().cloned().collect()
    }

    pub fn subscription(
        &self,
        topic: &TopicName,
        name: &SubscriptionName,
    ) -> Result<(Arc<TopicRuntime>, Arc<SubscriptionRuntime>), LookupError> {
        let t = self
            .topic(topic)
            .ok_or_else(|| LookupError::UnknownTopic(topic.clone()))?;
        let s = t.subscriptions.read().get(name).cloned().ok_or_else(|| {
            LookupError::UnknownSubscription {
                topic: topic.clone(),
                name: name.clone(),
            }
        })?;
        Ok((t, s))
    }

    pub fn new_stream_id(&self) -> StreamId {
        StreamId(self.next_stream.fetch_add(1, Ordering::Relaxed))
    }

    // ---- ownership ----

    /// Takes ownership of a partition whose log runs from `low` to `high` (watermarks). Each
    /// subscription starts at its stored cursor, else at its resolved start, else (a
    /// partition newer than the subscription) at `low`. A cursor below `low` means retention
    /// deleted unacked records: it is reported and moved to `low`.
    pub fn assign(
        &self,
        topic: &TopicName,
        partition: Partition,
        low: Offset,
        high: Offset,
    ) -> Assigned {
        let rt = {
            let mut topics = self.topics.write();
            topics
                .entry(topic.clone())
                .or_insert_with(|| Arc::new(TopicRuntime::new(topic.clone())))
                .clone()
        };
        let mut partitions = rt.partitions.write();
        let subs = rt.subscriptions.read();
        let mut losses = Vec::new();
        let mut cursors = Vec::with_capacity(subs.len());
        {
            let mut stored = self.stored.lock();
            for s in subs.values() {
                let key = s.key();
                let spec = s.spec();
                let (mut cursor, mut acked) = match stored_entry(&stored, &spec, partition) {
                    Some(c) => (c.offset, c.acked.clone()),
                    None => (spec.start_of(partition).unwrap_or(low), Vec::new()),
                };
                if cursor < low {
                    acked.clear();
                    losses.push(Loss {
                        subscription: key.clone(),
                        partition,
                        cursor,
                        log_start: low,
                    });
                    cursor = low;
                }
                stored.insert(
                    (key, partition),
                    StoredCursor {
                        offset: cursor,
                        incarnation: spec.created_at_ms,
                        acked: acked.clone(),
                        seek: spec.seek_generation(partition),
                    },
                );
                cursors.push((s.clone(), cursor, acked));
            }
        }
        let start = cursors.iter().map(|(_, c, _)| *c).min().unwrap_or(high);
        let owned = Arc::new(OwnedPartition {
            topic: topic.clone(),
            partition,
            log: PartitionLog::with_pool(
                start,
                LogLimits::bytes(self.limits.partition_window_bytes),
                self.window_pool.clone(),
            ),
            rewind: watch::Sender::new(None),
        });
        for (s, cursor, acked) in cursors {
            s.delivery
                .lock()
                .add_partition_restored(partition, owned.log.clone(), cursor, &acked);
        }
        partitions.insert(partition, owned.clone());
        drop((partitions, subs));
        self.record_losses(&losses);
        rt.wake();
        Assigned {
            start,
            partition: owned,
            losses,
        }
    }

    /// Stops new deliveries of a partition that is being revoked.
    pub fn stop_partition(&self, topic: &TopicName, partition: Partition) {
        if let Some(owned) = self.topic(topic).and_then(|t| t.partition(partition)) {
            owned.log.close();
        }
    }

    /// Gives up a partition: every subscription forgets it.
    pub fn revoke(&self, topic: &TopicName, partition: Partition, now: Instant) {
        let Some(rt) = self.topic(topic) else {
            return;
        };
        if let Some(owned) = rt.partitions.write().remove(&partition) {
            owned.log.close();
        }
        for s in rt.subscriptions() {
            s.delivery.lock().remove_partition(partition, now);
            s.wake();
        }
        // The stored cursors stay: the cursor tailer keeps them current from the next
        // owner's writes.
        rt.wake();
    }

    /// True while this shard owns the partition.
    pub fn owns(&self, topic: &TopicName, partition: Partition) -> bool {
        self.topic(topic)
            .and_then(|t| t.partition(partition))
            .is_some()
    }

    /// Records in flight on streams, of these partitions (a revoke drains them).
    pub fn in_flight_of(&self, partitions: &[(TopicName, Partition)]) -> usize {
        partitions
            .iter()
            .filter_map(|(t, p)| self.topic(t).map(|rt| (rt, *p)))
            .flat_map(|(rt, p)| rt.subscriptions().into_iter().map(move |s| (s, p)))
            .map(|(s, p)| {
                s.partition_stats()
                    .iter()
                    .filter(|st| st.partition == p)
                    .map(|st| st.in_flight)
                    .sum::<usize>()
            })
            .sum()
    }

    /// Moves subscriptions whose cursor is below `low` (retention deleted their unacked
    /// records) up to it, and returns what they lost.
    pub fn skip_deleted(&self, topic: &TopicName, partition: Partition, low: Offset) -> Vec<Loss> {
        let Some(rt) = self.topic(topic) else {
            return Vec::new();
        };
        let Some(owned) = rt.partition(partition) else {
            return Vec::new();
        };
        let mut losses = Vec::new();
        for s in rt.subscriptions() {
            let lost = {
                let mut d = s.delivery.lock();
                match d.cursor(partition) {
                    Some(cursor) if cursor < low => {
                        d.reset_partition(partition, owned.log.clone(), low);
                        Some(cursor)
                    }
                    _ => None,
                }
            };
            if let Some(cursor) = lost {
                self.stored.lock().insert(
                    (s.key(), partition),
                    StoredCursor::at(low, s.created_at_ms())
                        .after_seek(s.spec().seek_generation(partition)),
                );
                losses.push(Loss {
                    subscription: s.key(),
                    partition,
                    cursor,
                    log_start: low,
                });
                s.wake();
            }
        }
        self.record_losses(&losses);
        losses
    }

    // ---- cursors ----

    /// Cursors that moved since they were last stored, of owned partitions.
    pub fn cursor_updates(&self) -> Vec<CursorUpdate> {
        let mut live = Vec::new();
        for s in self.topics().iter().flat_map(|t| t.subscriptions()) {
            for (partition, cursor, acked, seek) in s.cursor_states() {
                live.push((s.clone(), partition, cursor, acked, seek));
            }
        }
        let stored = self.stored.lock();
        live.into_iter()
            .filter(|(s, p, cursor, acked, seek)| {
                stored.get(&(s.key(), *p)).is_none_or(|c| {
                    c.incarnation != s.created_at_ms()
                        || c.seek != *seek
                        || c.offset != *cursor
                        || c.acked != *acked
                })
            })
            .map(|(s, partition, cursor, acked, seek)| CursorUpdate {
                subscription: s.key(),
                incarnation: s.created_at_ms(),
                partition,
                cursor,
                acked,
                seek,
            })
            .collect()
    }

    /// Records that these cursors are now stored in Kafka. Partitions no longer owned (a
    /// flush that outlived its revoke) are left out: the next owner decides from Kafka.
    pub fn mark_stored(&self, updates: &[CursorUpdate]) {
        let current_seek = |u: &CursorUpdate| {
            let (_, s) = self
                .subscription(&u.subscription.topic, &u.subscription.name)
                .ok()?;
            (s.created_at_ms() == u.incarnation).then(|| s.spec().seek_generation(u.partition))
        };
        // Looked up before the stored cursors are locked (lock order).
        let keep: Vec<bool> = updates
            .iter()
            .map(|u| {
                let owned = self
                    .topic(&u.subscription.topic)
                    .and_then(|t| t.partition(u.partition))
                    .is_some();
                // A seek applied while the flush ran is not undone by the cursor before it.
                owned && current_seek(u) == Some(u.seek)
            })
            .collect();
        let mut stored = self.stored.lock();
        for (u, keep) in updates.iter().zip(keep) {
            let key = (u.subscription.clone(), u.partition);
            // A seek applied since `keep` was decided left its entry here first.
            let newer_seek = stored
                .get(&key)
                .is_some_and(|c| c.incarnation == u.incarnation && c.seek != u.seek);
            if keep && !newer_seek {
                stored.insert(
                    key,
                    StoredCursor {
                        offset: u.cursor,
                        incarnation: u.incarnation,
                        acked: u.acked.clone(),
                        seek: u.seek,
                    },
                );
            }
        }
    }

    /// Where a restart would resume a subscription, per owned partition: its stored cursor
    /// (or the start it had before anything was stored).
    pub fn durable_cursors(&self, spec: &SubscriptionSpec) -> BTreeMap<Partition, Offset> {
        let key = spec.key();
        self.stored
            .lock()
            .iter()
            .filter(|((k, p), c)| {
                *k == key
                    && c.incarnation == spec.created_at_ms
                    && c.seek == spec.seek_generation(*p)
            })
            .map(|((_, p), c)| (*p, c.offset))
            .collect()
    }

    /// Stored cursors, as if read from Kafka (tests).
    #[cfg(any(test, feature = "test-util"))]
    pub fn load_stored(
        &self,
        cursors: impl IntoIterator<Item = ((SubscriptionKey, Partition), StoredCursor)>,
    ) {
        self.stored.lock().extend(cursors);
    }

    /// A cursor record read from Kafka (`None`: deleted). Applied unless this shard owns
    /// the partition: an owner's own state is newer than anything it reads back, and only
    /// a fenced zombie could write there meanwhile. Returns whether it was applied.
    pub fn apply_stored(
        &self,
        key: SubscriptionKey,
        partition: Partition,
        cursor: Option<StoredCursor>,
    ) -> bool {
        let topic = self.topic(&key.topic);
        // Held until the cursor is stored, so that an assign cannot slip in between (lock
        // order: partitions, then stored cursors).
        let partitions = topic.as_ref().map(|t| t.partitions.read());
        if partitions
            .as_ref()
            .is_some_and(|ps| ps.contains_key(&partition))
        {
            return false;
        }
        let mut stored = self.stored.lock();
        match cursor {
            Some(c) => stored.insert((key, partition), c),
            None => stored.remove(&(key, partition)),
        };
        true
    }

    /// Per owned partition, the offset the shard group may commit: the lowest *stored*
    /// cursor of its subscriptions (a restart begins there), or the window head with none.
    /// Each topic is read under its partition and subscription locks (the usual order), so a
    /// subscription being added is either fully counted or not there yet; one added after
    /// lowers the commit at the next flush.
    pub fn commit_positions(&self) -> Vec<(TopicName, Partition, Offset)> {
        self.commit_positions_after(&[])
    }

    /// The same, as it will be once `updates` are stored (they are written in the same
    /// transaction as the offsets).
    pub fn commit_positions_after(
        &self,
        updates: &[CursorUpdate],
    ) -> Vec<(TopicName, Partition, Offset)> {
        let updated: HashMap<(&SubscriptionKey, Partition), &CursorUpdate> = updates
            .iter()
            .map(|u| ((&u.subscription, u.partition), u))
            .collect();
        let mut out = Vec::new();
        for t in self.topics() {
            let partitions = t.partitions.read();
            let subs = t.subscriptions.read();
            let stored = self.stored.lock();
            for (&p, owned) in partitions.iter() {
                let min = subs
                    .values()
                    .filter_map(|s| {
                        let spec = s.spec();
                        updated
                            .get(&(&spec.key(), p))
                            .filter(|u| {
                                u.incarnation == spec.created_at_ms
                                    && u.seek == spec.seek_generation(p)
                            })
                            .map(|u| u.cursor)
                            .or_else(|| stored_for(&stored, &spec, p))
                    })
                    .min();
                out.push((t.name.clone(), p, min.unwrap_or_else(|| owned.log.head())));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests;
