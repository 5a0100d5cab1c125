//! What a stream takes, and the work a take starts: a subscription behind the shared window
//! either gets a catch-up job (its catch-up window is filled from Kafka) or, when nobody
//! reads that window, asks the partition's reader to move it back (ADR 0009).

use std::sync::Arc;
use std::time::Instant;

use super::{CatchUpJob, Shard, SubscriptionRuntime, TopicRuntime};
use crate::delivery::{CatchUpStart, StreamId, Take, TakeLimits};

impl Shard {
    /// The next records for `stream` of `sub`, within its credits and `limits`. Nothing
    /// while the lease is not live: a shard that was stopped may have lost its partitions
    /// without knowing yet, and nothing goes out until the shard group confirms it still
    /// owns them ([`Shard::wake_all`] then). The catch-up work the take started is handed on
    /// here: the returned take's `catch_up` is empty.
    pub fn take(
        &self,
        topic: &Arc<TopicRuntime>,
        sub: &Arc<SubscriptionRuntime>,
        stream: StreamId,
        now: Instant,
        limits: TakeLimits,
    ) -> Take {
        if !self.lease.live(now) {
            return Take::default();
        }
        let mut take = sub.take(stream, now, limits);
        for start in std::mem::take(&mut take.catch_up) {
            self.start_catch_up(topic, sub, start);
        }
        take
    }

    /// Logs in the caller's span (the stream's: it names the subscription).
    fn start_catch_up(
        &self,
        topic: &Arc<TopicRuntime>,
        sub: &Arc<SubscriptionRuntime>,
        start: CatchUpStart,
    ) {
        if let Some(offset) = start.rewind {
            tracing::info!(
                partition = start.partition,
                offset,
                from = start.log.start(),
                "subscription behind a shared window nobody reads: moving it back"
            );
            // Only the window that was behind, and only while it still is: another
            // subscription's request may have moved it already.
            if let Some(owned) = topic.partition(start.partition)
                && Arc::ptr_eq(&owned.log, &start.log)
                && offset < owned.log.start()
            {
                owned.request_move_back(offset);
            }
            return;
        }
        tracing::info!(
            partition = start.partition,
            from = start.log.head(),
            "subscription behind the shared window: catching up from Kafka"
        );
        self.catch_up_queue.push(CatchUpJob {
            topic: topic.clone(),
            subscription: sub.clone(),
            partition: start.partition,
            log: start.log,
        });
    }
}
