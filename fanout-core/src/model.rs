//! Domain types shared by every module: validated names, records, start positions.
//!
//! Core module: no I/O.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// Longest topic name Kafka accepts.
pub const MAX_TOPIC_NAME_LEN: usize = 249;
/// Longest subscription name fanout accepts.
pub const MAX_SUBSCRIPTION_NAME_LEN: usize = 128;

/// Why a name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("{what} name must not be empty")]
    Empty { what: &'static str },
    #[error("{what} name is {len} characters long; the limit is {max}")]
    TooLong {
        what: &'static str,
        len: usize,
        max: usize,
    },
    #[error(
        "{what} name {name:?} contains {ch:?}; only ASCII letters, digits, '.', '_' and '-' are allowed"
    )]
    BadChar {
        what: &'static str,
        name: String,
        ch: char,
    },
    #[error("{what} name must not be \".\" or \"..\"")]
    Dots { what: &'static str },
    #[error("topic {name:?} is internal (names starting with \"__\" belong to Kafka and fanout)")]
    Internal { name: String },
}

fn check_name(what: &'static str, name: &str, max: usize) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty { what });
    }
    let len = name.chars().count();
    if len > max {
        return Err(NameError::TooLong { what, len, max });
    }
    if let Some(ch) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(NameError::BadChar {
            what,
            name: name.to_owned(),
            ch,
        });
    }
    if name == "." || name == ".." {
        return Err(NameError::Dots { what });
    }
    Ok(())
}

/// A Kafka topic name that fanout may read (Kafka's rules, and not an internal topic).
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct TopicName(Arc<str>);

impl TopicName {
    pub fn new(name: &str) -> Result<Self, NameError> {
        check_name("topic", name, MAX_TOPIC_NAME_LEN)?;
        if name.starts_with("__") {
            return Err(NameError::Internal {
                name: name.to_owned(),
            });
        }
        Ok(Self(name.into()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The name of a subscription, unique within its topic.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct SubscriptionName(Arc<str>);

impl SubscriptionName {
    pub fn new(name: &str) -> Result<Self, NameError> {
        check_name("subscription", name, MAX_SUBSCRIPTION_NAME_LEN)?;
        Ok(Self(name.into()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

macro_rules! name_impls {
    ($t:ty) => {
        /// Quoted like a string, so messages read `topic "orders"`.
        impl fmt::Debug for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Debug::fmt(&*self.0, f)
            }
        }
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
        impl TryFrom<String> for $t {
            type Error = NameError;
            fn try_from(s: String) -> Result<Self, NameError> {
                Self::new(&s)
            }
        }
        impl From<$t> for String {
            fn from(n: $t) -> String {
                n.0.to_string()
            }
        }
    };
}
name_impls!(TopicName);
name_impls!(SubscriptionName);

/// Identifies one subscription: a subscription name is unique within its topic.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SubscriptionKey {
    pub topic: TopicName,
    pub name: SubscriptionName,
}

impl fmt::Display for SubscriptionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.topic, self.name)
    }
}

/// Kafka partition number.
pub type Partition = i32;
/// Kafka offset.
pub type Offset = i64;

/// In what order a subscription's records reach its streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeliveryOrder {
    /// A partition is served by one stream at a time; first deliveries in offset order.
    #[default]
    Partition,
    /// Per key: a key's next record waits until the previous one is acked; keys spread over
    /// every stream. Records without a key are not ordered.
    Key,
    /// No order: every stream takes from every partition.
    None,
}

/// Fields of a stored record that this build does not know (written by a newer one), kept as
/// they were read so that a read-modify-write by this build does not erase them.
pub type UnknownFields = serde_json::Map<String, serde_json::Value>;

/// How a subscription's records are delivered (order) and delivered again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeliveryPolicy {
    /// Order of deliveries.
    #[serde(default)]
    pub ordering: DeliveryOrder,
    /// A record not acked (or nacked) this long after its delivery is delivered again.
    #[serde(default = "default_ack_timeout_ms")]
    pub ack_timeout_ms: u64,
    /// Deliveries of a record before it goes to `dead_letter_topic` instead; 0: unlimited.
    #[serde(default)]
    pub max_attempts: u32,
    /// Where records out of attempts go (required with `max_attempts`).
    #[serde(default)]
    pub dead_letter_topic: Option<TopicName>,
    /// Most records a stream of the subscription may have in flight, whatever it asks for
    /// (0: the server's limit). Written only when set, so that entries without one stay
    /// readable by builds that predate it.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub max_in_flight_records: u32,
    /// Fields of a newer build, kept.
    #[serde(flatten, default)]
    pub unknown: UnknownFields,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// Default ack timeout: 30 s.
pub const DEFAULT_ACK_TIMEOUT_MS: u64 = 30_000;

fn default_ack_timeout_ms() -> u64 {
    DEFAULT_ACK_TIMEOUT_MS
}

impl Default for DeliveryPolicy {
    fn default() -> Self {
        Self {
            ordering: DeliveryOrder::Partition,
            ack_timeout_ms: DEFAULT_ACK_TIMEOUT_MS,
            max_attempts: 0,
            dead_letter_topic: None,
            max_in_flight_records: 0,
            unknown: UnknownFields::new(),
        }
    }
}

/// Where a new subscription starts reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StartPosition {
    /// The oldest record Kafka still holds.
    Earliest,
    /// Only records produced after the subscription was created.
    Latest,
    /// The first record at or after a time (`start_timestamp_ms`).
    Timestamp,
}

/// How Kafka stamped a record's timestamp.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimestampKind {
    CreateTime,
    LogAppendTime,
}

/// One Kafka record as fanout keeps it: payloads are reference-counted, never copied again
/// after they leave librdkafka.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    pub partition: Partition,
    pub offset: Offset,
    pub key: Option<Bytes>,
    pub value: Option<Bytes>,
    pub headers: Arc<[Header]>,
    pub timestamp: Option<(i64, TimestampKind)>,
    /// The record as the gRPC adapter sends it, encoded once when it was read from Kafka;
    /// `key`, `value` and header values are slices of it. Opaque to the core; empty for
    /// records built elsewhere (the adapter then encodes them itself).
    pub wire: Bytes,
}

impl Record {
    /// Payload size counted against byte budgets and credits.
    pub fn size(&self) -> usize {
        let headers: usize = self
            .headers
            .iter()
            .map(|h| h.key.len() + h.value.as_ref().map_or(0, Bytes::len))
            .sum();
        self.key.as_ref().map_or(0, Bytes::len)
            + self.value.as_ref().map_or(0, Bytes::len)
            + headers
            // Fixed per-record overhead (offsets, timestamp, framing), so empty records count.
            + 32
    }
}

/// Header of a record redriven from a dead-letter topic: the one subscription (by name) it
/// is for. Every other subscription of the topic skips it.
pub const REDRIVE_FOR: &str = "fanout.redrive.for";

/// A Kafka record header.
#[derive(Debug, Clone, PartialEq)]
pub struct Header {
    pub key: String,
    pub value: Option<Bytes>,
}

/// Start offsets of a subscription, resolved when it was created, per partition. Partitions
/// that did not exist then start at their beginning: every record in them is newer than the
/// subscription.
///
/// Stored as a JSON object keyed by partition number (as text).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(
    try_from = "BTreeMap<String, Offset>",
    into = "BTreeMap<String, Offset>"
)]
pub struct StartOffsets(pub BTreeMap<Partition, Offset>);

impl TryFrom<BTreeMap<String, Offset>> for StartOffsets {
    type Error = String;
    fn try_from(m: BTreeMap<String, Offset>) -> Result<Self, String> {
        m.into_iter()
            .map(|(k, v)| match k.parse::<Partition>() {
                Ok(p) if p >= 0 && v >= 0 => Ok((p, v)),
                _ => Err(format!("bad start offset {k:?}: {v}")),
            })
            .collect::<Result<_, _>>()
            .map(Self)
    }
}

impl From<StartOffsets> for BTreeMap<String, Offset> {
    fn from(s: StartOffsets) -> Self {
        s.0.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
    }
}

impl StartOffsets {
    pub fn get(&self, partition: Partition) -> Option<Offset> {
        self.0.get(&partition).copied()
    }
}

#[cfg(test)]
mod tests;
