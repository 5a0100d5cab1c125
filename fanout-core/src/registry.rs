//! The registry: which topics fanout reads and which subscriptions each has.
//!
//! It lives in the compacted topic `__<cluster>_registry`, one record per entry (key
//! `topic:<name>` or `subscription:<topic>:<name>`, JSON value with a schema version, a null
//! value deletes). Every shard loads the topic at start and tails it, applying records here in
//! offset order; the admin API writes records and waits until its own shard applied them.
//!
//! Core module: no I/O.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::model::{
    DeliveryPolicy, NameError, Offset, Partition, StartOffsets, StartPosition, SubscriptionKey,
    SubscriptionName, TopicName, UnknownFields,
};

/// Version written into every registry value; readers skip newer versions they cannot read.
/// Fields added within a version are optional, and a build that does not know them keeps
/// them through its writes (each record type's `unknown`): a rolling upgrade never erases
/// what the newer shards wrote.
pub const SCHEMA_VERSION: u32 = 1;

/// A registered topic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicSpec {
    pub name: TopicName,
    /// When it was registered, milliseconds since the Unix epoch.
    pub created_at_ms: i64,
    /// Where its new subscriptions start unless they say (`earliest` or `latest`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_start: Option<StartPosition>,
    /// Fields of a newer build, kept.
    #[serde(flatten, default)]
    pub unknown: UnknownFields,
}

/// A subscription and where it starts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubscriptionSpec {
    pub topic: TopicName,
    pub name: SubscriptionName,
    pub start: StartPosition,
    /// With `start: timestamp`: the time, in milliseconds since the Unix epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_timestamp_ms: Option<i64>,
    /// `start` resolved to offsets when the subscription was created.
    pub start_offsets: StartOffsets,
    pub created_at_ms: i64,
    /// Ack timeout, attempts and dead-letter topic (absent in entries from before they
    /// existed: the defaults).
    #[serde(default)]
    pub delivery: DeliveryPolicy,
    /// Paused: nothing is delivered (acks still count) until resumed.
    #[serde(default, skip_serializing_if = "is_false")]
    pub paused: bool,
    /// Per partition, the last seek (replay or skip): where the subscription was moved and
    /// which seek that was. A cursor stored before that seek no longer counts.
    #[serde(
        default,
        skip_serializing_if = "BTreeMap::is_empty",
        with = "partition_keys"
    )]
    pub seeks: BTreeMap<Partition, PartitionSeek>,
    /// How far its dead-letter topic was redriven into it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redrive: Option<RedrivePosition>,
    /// Fields of a newer build, kept.
    #[serde(flatten, default)]
    pub unknown: UnknownFields,
}

/// Per partition of a dead-letter topic, the next offset a redrive reads.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RedrivePosition {
    pub dead_letter_topic: TopicName,
    #[serde(with = "partition_keys")]
    pub next: BTreeMap<Partition, Offset>,
    /// Fields of a newer build, kept.
    #[serde(flatten, default)]
    pub unknown: UnknownFields,
}

/// Maps keyed by partition, as JSON objects (keys are strings there).
mod partition_keys {
    use std::collections::BTreeMap;

    use serde::de::Error;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    use crate::model::Partition;

    pub fn serialize<T: Serialize, S: Serializer>(
        m: &BTreeMap<Partition, T>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        let m: BTreeMap<String, &T> = m.iter().map(|(k, v)| (k.to_string(), v)).collect();
        m.serialize(s)
    }

    pub fn deserialize<'de, T: Deserialize<'de>, D: Deserializer<'de>>(
        d: D,
    ) -> Result<BTreeMap<Partition, T>, D::Error> {
        BTreeMap::<String, T>::deserialize(d)?
            .into_iter()
            .map(|(k, v)| match k.parse::<Partition>() {
                Ok(p) if p >= 0 => Ok((p, v)),
                _ => Err(D::Error::custom(format!("bad partition {k:?}"))),
            })
            .collect()
    }
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// A subscription's partition moved to `offset` by the seek `generation` (unique per
/// subscription and increasing: at least the previous one + 1 and at least the time of the
/// request in milliseconds, so that a retry after a lost or stale write is a new seek).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionSeek {
    pub generation: u64,
    pub offset: Offset,
    /// When the seek was asked for, milliseconds since the Unix epoch.
    pub at_ms: i64,
    /// Fields of a newer build, kept (a new seek of the partition replaces them).
    #[serde(flatten, default)]
    pub unknown: UnknownFields,
}

impl PartitionSeek {
    /// The same seek (generation and offset), whatever else either carries.
    pub fn same_seek(&self, other: &PartitionSeek) -> bool {
        (self.generation, self.offset) == (other.generation, other.offset)
    }
}

impl SubscriptionSpec {
    pub fn key(&self) -> SubscriptionKey {
        SubscriptionKey {
            topic: self.topic.clone(),
            name: self.name.clone(),
        }
    }

    /// Where the subscription begins on a partition when no cursor stored since its last
    /// seek exists: the seek's offset, else the start resolved at creation.
    pub fn start_of(&self, partition: Partition) -> Option<Offset> {
        match self.seeks.get(&partition) {
            Some(s) => Some(s.offset),
            None => self.start_offsets.get(partition),
        }
    }

    /// The last seek on a partition (0: none). Stored cursors carry it: a cursor counts only
    /// if it follows the partition's current seek.
    pub fn seek_generation(&self, partition: Partition) -> u64 {
        self.seeks.get(&partition).map_or(0, |s| s.generation)
    }

    /// The highest seek generation of any partition.
    pub fn last_seek(&self) -> u64 {
        self.seeks.values().map(|s| s.generation).max().unwrap_or(0)
    }
}

/// One registry entry, as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
// Short-lived (one record encoded or decoded at a time): a box would buy nothing.
#[allow(clippy::large_enum_variant)]
pub enum Entry {
    Topic(TopicSpec),
    Subscription(SubscriptionSpec),
}

#[derive(Serialize, Deserialize)]
struct Stored {
    version: u32,
    #[serde(flatten)]
    entry: Entry,
}

/// The key of a registry record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Key {
    Topic(TopicName),
    Subscription(SubscriptionKey),
}

impl Key {
    pub fn encode(&self) -> String {
        match self {
            Key::Topic(t) => format!("topic:{t}"),
            Key::Subscription(s) => format!("subscription:{}:{}", s.topic, s.name),
        }
    }

    pub fn decode(raw: &[u8]) -> Result<Self, DecodeError> {
        let s = std::str::from_utf8(raw).map_err(|_| DecodeError::Key(lossy(raw)))?;
        let bad = |_: NameError| DecodeError::Key(s.to_owned());
        match s.split(':').collect::<Vec<_>>().as_slice() {
            ["topic", t] => Ok(Key::Topic(TopicName::new(t).map_err(bad)?)),
            ["subscription", t, n] => Ok(Key::Subscription(SubscriptionKey {
                topic: TopicName::new(t).map_err(bad)?,
                name: SubscriptionName::new(n).map_err(bad)?,
            })),
            _ => Err(DecodeError::Key(s.to_owned())),
        }
    }
}

impl Entry {
    pub fn key(&self) -> Key {
        match self {
            Entry::Topic(t) => Key::Topic(t.name.clone()),
            Entry::Subscription(s) => Key::Subscription(s.key()),
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        #[derive(Serialize)]
        struct StoredRef<'a> {
            version: u32,
            #[serde(flatten)]
            entry: &'a Entry,
        }
        // Serializing these plain structs cannot fail.
        serde_json::to_vec(&StoredRef {
            version: SCHEMA_VERSION,
            entry: self,
        })
        .unwrap_or_default()
    }
}

/// A registry record that could not be read. The record is skipped (and logged).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("unreadable registry key {0:?}")]
    Key(String),
    #[error(
        "registry record {key:?} has schema version {version}; this build reads up to {SCHEMA_VERSION}"
    )]
    NewerVersion { key: String, version: u32 },
    #[error("registry record {key:?} is not valid: {reason}")]
    Value { key: String, reason: String },
    #[error("registry record key {key:?} does not match its value")]
    KeyMismatch { key: String },
}

fn lossy(raw: &[u8]) -> String {
    String::from_utf8_lossy(raw).into_owned()
}

/// What applying a record changed.
#[derive(Debug, Clone, PartialEq, Eq)]
// Short-lived (one per record applied): a box would buy nothing.
#[allow(clippy::large_enum_variant)]
pub enum Change {
    TopicAdded(TopicSpec),
    TopicRemoved(TopicName),
    SubscriptionAdded(SubscriptionSpec),
    /// Settings, pause or seeks changed (same subscription: same creation time).
    SubscriptionUpdated {
        old: SubscriptionSpec,
        new: SubscriptionSpec,
    },
    /// Deleted and created again under the same name while this shard did not look.
    SubscriptionReplaced(SubscriptionSpec),
    SubscriptionRemoved(SubscriptionKey),
}

/// The registry as of some offset of the registry topic.
#[derive(Debug, Default, Clone)]
pub struct Registry {
    topics: BTreeMap<TopicName, TopicSpec>,
    /// Subscriptions by topic, then by name.
    subscriptions: BTreeMap<TopicName, BTreeMap<SubscriptionName, SubscriptionSpec>>,
}

impl Registry {
    pub fn topic(&self, name: &TopicName) -> Option<&TopicSpec> {
        self.topics.get(name)
    }

    pub fn topics(&self) -> impl Iterator<Item = &TopicSpec> {
        self.topics.values()
    }

    pub fn subscription(&self, key: &SubscriptionKey) -> Option<&SubscriptionSpec> {
        self.subscriptions.get(&key.topic)?.get(&key.name)
    }

    /// Subscriptions of one topic, by name.
    pub fn subscriptions_of(&self, topic: &TopicName) -> impl Iterator<Item = &SubscriptionSpec> {
        self.subscriptions
            .get(topic)
            .into_iter()
            .flat_map(BTreeMap::values)
    }

    /// Applies one record of the registry topic. A record that cannot be read changes
    /// nothing and is returned as an error for the caller to log. Re-applying a record
    /// that changes nothing returns `Ok(None)`.
    pub fn apply(
        &mut self,
        key: &[u8],
        value: Option<&[u8]>,
    ) -> Result<Option<Change>, DecodeError> {
        let k = Key::decode(key)?;
        let Some(value) = value else {
            return Ok(match k {
                Key::Topic(t) => self.topics.remove(&t).map(|_| Change::TopicRemoved(t)),
                Key::Subscription(s) => {
                    let subs = self.subscriptions.get_mut(&s.topic);
                    let removed = subs.and_then(|m| m.remove(&s.name));
                    if self
                        .subscriptions
                        .get(&s.topic)
                        .is_some_and(BTreeMap::is_empty)
                    {
                        self.subscriptions.remove(&s.topic);
                    }
                    removed.map(|_| Change::SubscriptionRemoved(s))
                }
            });
        };
        let raw_key = k.encode();
        let version = serde_json::from_slice::<serde_json::Value>(value)
            .ok()
            .and_then(|v| v.get("version").and_then(serde_json::Value::as_u64));
        if let Some(v) = version
            && v > u64::from(SCHEMA_VERSION)
        {
            return Err(DecodeError::NewerVersion {
                key: raw_key,
                version: u32::try_from(v).unwrap_or(u32::MAX),
            });
        }
        let stored: Stored = serde_json::from_slice(value).map_err(|e| DecodeError::Value {
            key: raw_key.clone(),
            reason: e.to_string(),
        })?;
        if stored.entry.key() != k {
            return Err(DecodeError::KeyMismatch { key: raw_key });
        }
        Ok(match stored.entry {
            Entry::Topic(t) => match self.topics.insert(t.name.clone(), t.clone()) {
                None => Some(Change::TopicAdded(t)),
                Some(old) if old == t => None,
                // A topic has no settings yet that a shard must react to.
                Some(_) => None,
            },
            Entry::Subscription(s) => match self
                .subscriptions
                .entry(s.topic.clone())
                .or_default()
                .insert(s.name.clone(), s.clone())
            {
                None => Some(Change::SubscriptionAdded(s)),
                Some(old) if old == s => None,
                Some(old) if old.created_at_ms == s.created_at_ms => {
                    Some(Change::SubscriptionUpdated { old, new: s })
                }
                Some(_) => Some(Change::SubscriptionReplaced(s)),
            },
        })
    }
}

#[cfg(test)]
mod tests;
