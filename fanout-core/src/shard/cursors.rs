//! Cursors: which moved since they were stored, which are stored, and what the shard group
//! may commit.

use std::collections::{BTreeMap, HashMap};

use super::{CursorUpdate, Shard, StoredCursor, stored_for};
use crate::model::{Offset, Partition, SubscriptionKey, TopicName};
use crate::registry::SubscriptionSpec;

impl Shard {
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
