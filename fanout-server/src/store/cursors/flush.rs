//! Writes moved cursors and the shard group's offsets: periodically, on revoke, on shutdown.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use fanout_core::model::{Offset, Partition, TopicName};
use fanout_core::shard::Shard;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::writer::{CursorStore, MembershipSource};
use crate::store::StoreError;

/// Writes moved cursors and the shard group's offsets to Kafka: periodically, on revoke and
/// on shutdown. One flush at a time, so an older snapshot never lands after a newer one.
pub struct Flusher {
    /// Source of cursors.
    shard: Arc<Shard>,
    /// Where they go.
    writer: Box<dyn CursorStore>,
    /// Serializes flushes; holds the offsets last committed.
    lock: tokio::sync::Mutex<HashMap<(TopicName, Partition), Offset>>,
    /// The shard's group membership (set once the ingest consumer exists).
    group: OnceLock<MembershipSource>,
}

impl std::fmt::Debug for Flusher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Flusher")
            .field("writer", &self.writer)
            .finish_non_exhaustive()
    }
}

impl Flusher {
    pub fn new(shard: Arc<Shard>, writer: impl CursorStore) -> Self {
        Self {
            shard,
            writer: Box::new(writer),
            lock: tokio::sync::Mutex::new(HashMap::new()),
            group: OnceLock::new(),
        }
    }

    /// Where the membership of this shard's group member comes from.
    pub fn set_group(&self, source: MembershipSource) {
        let _ = self.group.set(source);
    }

    /// Writes every cursor that moved and the group offsets that changed (of `only` these
    /// partitions, if given) in one transaction, and marks the cursors stored. Returns how
    /// many cursors were written.
    ///
    /// While the shard's lease is suspended (the process was stopped), nothing is written:
    /// a transaction with the offsets alone tests whether the shard is still the group
    /// member it was, and lifts the suspension if so.
    pub async fn flush(
        &self,
        only: Option<&[(TopicName, Partition)]>,
    ) -> Result<usize, StoreError> {
        let mut committed = self.lock.lock().await;
        let started = Instant::now();
        let lease = self.shard.lease();
        let suspended = lease.is_suspended();
        if !suspended && !lease.live(started) {
            // A gap the ticker has not seen yet: it will suspend the lease first.
            return Ok(0);
        }
        let wanted = |t: &TopicName, p: Partition| {
            only.is_none_or(|only| only.iter().any(|(ot, op)| ot == t && *op == p))
        };
        // The group metadata first: a cursor taken after it belongs to a partition owned in
        // that generation or later, so Kafka refuses the transaction if ownership moved.
        let group = match self.group.get().cloned() {
            Some(source) => tokio::task::spawn_blocking(move || source())
                .await
                .unwrap_or(None),
            None => None,
        };
        let mut updates = if suspended {
            Vec::new()
        } else {
            self.shard.cursor_updates()
        };
        updates.retain(|u| wanted(&u.subscription.topic, u.partition));
        let mut offsets = self.shard.commit_positions_after(&updates);
        let owns_nothing = offsets.is_empty();
        offsets.retain(|(t, p, _)| wanted(t, *p));
        if suspended && owns_nothing {
            // Nothing owned, nothing to protect: no stale delivery is possible.
            self.lift(started);
            return Ok(0);
        }
        // Before the ingest exists (or once it is gone), nothing is owned.
        let Some(group) = group else {
            return Ok(0);
        };
        // Every transaction carries the offsets of the partitions whose cursors it writes
        // (changed or not): Kafka checks the shard's membership only when offsets are sent.
        // A cursor of a partition no longer owned is not written.
        let owned: HashSet<(TopicName, Partition)> =
            offsets.iter().map(|(t, p, _)| (t.clone(), *p)).collect();
        updates.retain(|u| owned.contains(&(u.subscription.topic.clone(), u.partition)));
        if !suspended {
            let touched: HashSet<(&TopicName, Partition)> = updates
                .iter()
                .map(|u| (&u.subscription.topic, u.partition))
                .collect();
            offsets.retain(|(t, p, o)| {
                touched.contains(&(t, *p)) || committed.get(&(t.clone(), *p)) != Some(o)
            });
        }
        if offsets.is_empty() {
            return Ok(0);
        }
        tracing::trace!(
            updates = updates.len(),
            offsets = offsets.len(),
            suspended,
            "writing cursors"
        );
        let shard = self.shard.clone();
        let partitions: Vec<(TopicName, Partition)> =
            offsets.iter().map(|(t, p, _)| (t.clone(), *p)).collect();
        // Not stopped again since this flush began (a suspended shard's proof may not
        // straddle a gap either), and every partition still owned (a revoke that gave up on
        // this flush has let it go).
        let still_valid: Arc<dyn Fn() -> bool + Send + Sync> = Arc::new(move || {
            shard.lease().recent(Instant::now())
                && partitions.iter().all(|(t, p)| shard.owns(t, *p))
        });
        self.writer
            .write(&updates, &offsets, group, still_valid)
            .await?;
        crate::telemetry::metrics::cursor_flush(started.elapsed());
        self.shard.mark_stored(&updates);
        for (t, p, o) in offsets {
            committed.insert((t, p), o);
        }
        if suspended {
            self.lift(started);
        }
        Ok(updates.len())
    }

    /// Every `every`, writes moved cursors and changed group offsets (one transaction),
    /// until `cancel`. A fenced writer ends the loop and says why on `fatal`: it can never
    /// store a cursor again, and the shard stops.
    pub async fn run(
        self: Arc<Self>,
        every: Duration,
        cancel: CancellationToken,
        fatal: mpsc::Sender<String>,
    ) {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = tick.tick() => {}
            }
            let started = Instant::now();
            match self.flush(None).await {
                Ok(0) => {}
                Ok(n) => {
                    tracing::debug!(cursors = n, elapsed = ?started.elapsed(), "cursors flushed")
                }
                Err(StoreError::Fenced(why)) => {
                    tracing::error!(%why, "the cursor writer was fenced; this shard stops");
                    let _ = fatal.send(why).await;
                    break;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cursor flush failed; retrying next interval");
                }
            }
        }
    }

    fn lift(&self, started: Instant) {
        if self.shard.lease().confirm(started) {
            tracing::info!(
                "the shard group confirmed this shard is still a member; deliveries resume"
            );
            self.shard.wake_all();
        }
    }
}

#[cfg(test)]
mod tests;
