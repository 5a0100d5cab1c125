//! The partitions the shard group gave this shard: assigned, drained, revoked, and moved up
//! past what retention deleted.

use std::sync::Arc;
use std::time::Instant;

use tokio::sync::watch;

use super::{Assigned, Loss, OwnedPartition, Shard, StoredCursor, TopicRuntime, stored_entry};
use crate::log::{LogLimits, PartitionLog};
use crate::model::{Offset, Partition, TopicName};

impl Shard {
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
}
