//! Catch-up work: (subscription, partition)s behind the shared window, waiting for one of
//! the shard's pooled catch-up readers.

use std::collections::VecDeque;
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::Notify;

use super::{SubscriptionRuntime, TopicRuntime};
use crate::log::PartitionLog;
use crate::model::Partition;

/// A (subscription, partition) that left the shared window: a catch-up reader fills its
/// catch-up window from Kafka until the subscription no longer needs it (the window is
/// closed then).
#[derive(Debug, Clone)]
pub struct CatchUpJob {
    pub topic: Arc<TopicRuntime>,
    pub subscription: Arc<SubscriptionRuntime>,
    pub partition: Partition,
    /// The catch-up window, filled from its head on.
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
