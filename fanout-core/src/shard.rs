//! The in-memory state of one shard: the registry it applied, the partitions it owns with
//! their shared windows, and every subscription's delivery state.
//!
//! Core module: no I/O. The adapters call in: the registry tailer applies records, the
//! ingest applies assignments and appends records, the gRPC service runs streams, the cursor
//! flusher reads cursors out. Wake-ups go out through `tokio::sync` channels (no I/O).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use parking_lot::{Mutex, RwLock};
use tokio::sync::watch;

use crate::delivery::{CatchUpLimits, OffsetRange, TakeLimits};
use crate::log::MemoryPool;
use crate::model::{Offset, Partition, SubscriptionKey, SubscriptionName, TopicName};
use crate::registry::{Registry, SubscriptionSpec};

mod catch_up;
mod cursors;
mod lease;
mod lookups;
mod ownership;
mod registry;
mod runtime;
mod streams;

pub use catch_up::{CatchUpJob, CatchUpQueue};
pub use lease::Lease;
pub use runtime::{OwnedPartition, Rewind, SubscriptionRuntime, TopicRuntime};

/// Limits the shard applies to every partition and stream.
#[derive(Debug, Clone, Copy)]
pub struct ShardLimits {
    /// Byte budget of each owned partition's shared window.
    pub partition_window_bytes: usize,
    /// Byte budget of all shared windows of the shard together.
    pub window_memory_bytes: usize,
    /// Byte budget of one (subscription, partition)'s catch-up window.
    pub catch_up_window_bytes: usize,
    /// Byte budget of all catch-up windows of the shard together.
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
    /// Sizes of catch-up windows on the catch-up path.
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
}

#[cfg(test)]
mod tests;
