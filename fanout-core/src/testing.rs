//! Helpers for tests of the core and of the adapters around it (feature `test-util`):
//! registry entries and applying them to a shard as the registry tailer would. They panic
//! on what a test should never give them.
#![allow(clippy::expect_used)]

use std::collections::BTreeMap;

use crate::model::{
    DeliveryPolicy, Offset, Partition, StartOffsets, StartPosition, SubscriptionName, TopicName,
};
use crate::registry::{Change, Entry, SubscriptionSpec, TopicSpec};
use crate::shard::Shard;

/// A topic name.
///
/// # Panics
/// If the name is not one.
pub fn topic(name: &str) -> TopicName {
    TopicName::new(name).expect("a valid topic name")
}

/// A topic registered at time 0.
pub fn topic_entry(name: &str) -> Entry {
    Entry::Topic(TopicSpec {
        name: topic(name),
        created_at_ms: 0,
        default_start: None,
        unknown: Default::default(),
    })
}

/// A subscription created at time 0 (its incarnation), starting at `starts` (per partition), delivered by
/// `delivery`.
///
/// # Panics
/// If a name is not one.
pub fn subscription_entry(
    topic_name: &str,
    name: &str,
    starts: &[(Partition, Offset)],
    delivery: DeliveryPolicy,
) -> Entry {
    Entry::Subscription(SubscriptionSpec {
        topic: topic(topic_name),
        name: SubscriptionName::new(name).expect("a valid subscription name"),
        start: StartPosition::Earliest,
        start_timestamp_ms: None,
        start_offsets: StartOffsets(starts.iter().copied().collect::<BTreeMap<_, _>>()),
        created_at_ms: 0,
        delivery,
        paused: false,
        seeks: BTreeMap::new(),
        redrive: None,
        unknown: Default::default(),
    })
}

/// Applies `entry` to `shard` as the registry record at `offset`.
///
/// # Panics
/// If the shard cannot read it.
pub fn apply(shard: &Shard, offset: i64, entry: &Entry) -> Option<Change> {
    shard
        .apply_registry(
            offset,
            entry.key().encode().as_bytes(),
            Some(&entry.encode()),
        )
        .expect("a readable registry record")
}
