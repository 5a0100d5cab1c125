//! Reads and writes the cursors topic: key `<topic>:<partition>:<subscription>`, JSON value
//! `{"version":1,"cursor":N,…}`; a null value deletes. Written in transactions together with
//! the shard group's offsets (fencing), read with `read_committed`.

mod flush;
mod tail;
mod writer;

pub use flush::Flusher;
pub use tail::CursorTail;
pub use writer::{CursorStore, CursorWriter, Membership, MembershipSource};

use fanout_core::delivery::{MAX_STORED_RANGES, OffsetRange};
use fanout_core::model::{Offset, Partition, SubscriptionKey, SubscriptionName, TopicName};
use fanout_core::shard::StoredCursor;
use serde::{Deserialize, Serialize};

/// Version written into every cursor value.
pub const SCHEMA_VERSION: u32 = 1;

#[derive(Debug, Serialize, Deserialize)]
struct Stored {
    version: u32,
    cursor: Offset,
    /// Creation time of the subscription the cursor belongs to.
    subscription_created_at_ms: i64,
    /// Ranges above the cursor acked already, `[first, last]` inclusive (absent in records
    /// written before they were stored).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    acked: Vec<(Offset, Offset)>,
    /// The subscription's seek of the partition this cursor follows (absent: none).
    #[serde(default, skip_serializing_if = "is_zero")]
    seek: u64,
    /// The shard that wrote it (for operators and the reliability checks; not read back).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    shard: Option<String>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

pub fn encode_key(sub: &SubscriptionKey, partition: Partition) -> String {
    format!("{}:{}:{}", sub.topic, partition, sub.name)
}

pub fn decode_key(raw: &[u8]) -> Option<(SubscriptionKey, Partition)> {
    let s = std::str::from_utf8(raw).ok()?;
    let mut parts = s.splitn(3, ':');
    let topic = TopicName::new(parts.next()?).ok()?;
    let partition = parts.next()?.parse().ok()?;
    let name = SubscriptionName::new(parts.next()?).ok()?;
    Some((SubscriptionKey { topic, name }, partition))
}

/// A cursor's record value, naming the shard that writes it (if given).
pub fn encode_value(cursor: &StoredCursor, shard: Option<&str>) -> Vec<u8> {
    serde_json::to_vec(&Stored {
        version: SCHEMA_VERSION,
        cursor: cursor.offset,
        subscription_created_at_ms: cursor.incarnation,
        acked: cursor
            .acked
            .iter()
            .take(MAX_STORED_RANGES)
            .map(|r| (r.first, r.last))
            .collect(),
        seek: cursor.seek,
        shard: shard.map(str::to_owned),
    })
    .unwrap_or_default()
}

fn decode_value(raw: &[u8]) -> Option<StoredCursor> {
    let s: Stored = serde_json::from_slice(raw).ok()?;
    (s.version <= SCHEMA_VERSION && s.cursor >= 0).then(|| StoredCursor {
        offset: s.cursor,
        incarnation: s.subscription_created_at_ms,
        // Ranges that make no sense are dropped: their records are delivered again.
        acked: s
            .acked
            .into_iter()
            .filter(|&(first, last)| first <= last && first > s.cursor)
            .take(MAX_STORED_RANGES)
            .map(|(first, last)| OffsetRange { first, last })
            .collect(),
        seek: s.seek,
    })
}

#[cfg(test)]
mod tests;
