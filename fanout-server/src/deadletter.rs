//! Publishing records out of attempts to their subscription's dead-letter topic.
//!
//! The record keeps its key, value, headers and timestamp; headers say where it came from
//! and why it is there. It counts as done for the subscription only once Kafka acknowledged
//! the publish (all in-sync replicas, idempotent producer).

use std::time::Duration;

use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;

use crate::config::Config;
use crate::delivery::DeadLetter;
use crate::kafka;
use crate::model::{SubscriptionKey, TopicName};

/// Header names added to a dead letter.
pub mod headers {
    pub const REASON: &str = "fanout.dlq.reason";
    pub const ATTEMPTS: &str = "fanout.dlq.attempts";
    pub const SUBSCRIPTION: &str = "fanout.dlq.subscription";
    pub const SOURCE_TOPIC: &str = "fanout.dlq.source.topic";
    pub const SOURCE_PARTITION: &str = "fanout.dlq.source.partition";
    pub const SOURCE_OFFSET: &str = "fanout.dlq.source.offset";
}

/// How long one publish may take before it counts as failed (and is tried again).
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(30);

/// The producer of dead letters, shared by every stream.
pub struct DeadLetters {
    producer: FutureProducer,
}

impl std::fmt::Debug for DeadLetters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DeadLetters")
    }
}

impl DeadLetters {
    pub fn new(cfg: &Config) -> Result<Self, KafkaError> {
        Ok(Self {
            producer: kafka::producer(cfg, "dead-letters")?,
        })
    }

    /// Publishes `letter` (a record of `subscription`) to `to`, waiting for Kafka's ack.
    pub async fn publish(
        &self,
        to: &TopicName,
        subscription: &SubscriptionKey,
        letter: &DeadLetter,
    ) -> Result<(), KafkaError> {
        let Some(r) = letter.chunk.records().first() else {
            return Ok(());
        };
        let mut hs = OwnedHeaders::new_with_capacity(r.headers.len() + 6);
        for h in r.headers.iter() {
            hs = hs.insert(Header {
                key: &h.key,
                value: h.value.as_deref(),
            });
        }
        let attempts = letter.attempts.to_string();
        let partition = r.partition.to_string();
        let offset = r.offset.to_string();
        let sub = subscription.name.to_string();
        for (key, value) in [
            (headers::REASON, letter.why.as_str()),
            (headers::ATTEMPTS, attempts.as_str()),
            (headers::SUBSCRIPTION, sub.as_str()),
            (headers::SOURCE_TOPIC, subscription.topic.as_str()),
            (headers::SOURCE_PARTITION, partition.as_str()),
            (headers::SOURCE_OFFSET, offset.as_str()),
        ] {
            hs = hs.insert(Header {
                key,
                value: Some(value),
            });
        }
        let mut record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(to.as_str()).headers(hs);
        if let Some(k) = &r.key {
            record = record.key(k.as_ref());
        }
        if let Some(v) = &r.value {
            record = record.payload(v.as_ref());
        }
        if let Some((t, _)) = r.timestamp {
            record = record.timestamp(t);
        }
        self.producer
            .send(record, Timeout::After(PUBLISH_TIMEOUT))
            .await
            .map(|_| ())
            .map_err(|(e, _)| e)
    }
}
