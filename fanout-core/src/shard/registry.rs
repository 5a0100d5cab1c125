//! Applying the registry: topics and subscriptions come and go, settings and seeks change.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio::sync::watch;

use super::{Shard, StoredCursor, SubscriptionRuntime, TopicRuntime, stored_entry};
use crate::log::PartitionLog;
use crate::model::{Offset, Partition, SubscriptionKey, TopicName};
use crate::registry::{Change, DecodeError, Registry, SubscriptionSpec, TopicSpec};

impl Shard {
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
            // A seek is its generation and offset: fields of a newer build on it are no
            // new seek.
            .filter(|(p, s)| old.seeks.get(p).is_none_or(|o| !o.same_seek(s)))
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
}
