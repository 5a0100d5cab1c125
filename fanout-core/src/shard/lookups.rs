//! Finding a shard's topics and subscriptions.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::{LookupError, Shard, SubscriptionRuntime, TopicRuntime};
use crate::delivery::StreamId;
use crate::model::{SubscriptionName, TopicName};

impl Shard {
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
}
