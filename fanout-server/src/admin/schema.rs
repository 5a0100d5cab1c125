//! The admin API's own types for what the core also knows: start positions, orderings,
//! delivery policies, seeks, redrive positions, losses.
//!
//! The core's types are the registry's stored format; these are the API's contract. They
//! look alike today, but they change for different reasons (a stored entry keeps fields it
//! does not understand, a request refuses them), and the core crate stays free of the
//! OpenAPI machinery. Conversions are here, in one place (ADR 0010).

use std::collections::BTreeMap;

use fanout_core::model::{self, Offset, Partition};
use fanout_core::registry;
use fanout_core::shard;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::membership;

/// In what order a subscription's records reach its streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
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

impl From<model::DeliveryOrder> for DeliveryOrder {
    fn from(o: model::DeliveryOrder) -> Self {
        match o {
            model::DeliveryOrder::Partition => Self::Partition,
            model::DeliveryOrder::Key => Self::Key,
            model::DeliveryOrder::None => Self::None,
        }
    }
}

impl From<DeliveryOrder> for model::DeliveryOrder {
    fn from(o: DeliveryOrder) -> Self {
        match o {
            DeliveryOrder::Partition => Self::Partition,
            DeliveryOrder::Key => Self::Key,
            DeliveryOrder::None => Self::None,
        }
    }
}

/// Where a new subscription starts reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum StartPosition {
    /// The oldest record Kafka still holds.
    Earliest,
    /// Only records produced after the subscription was created.
    Latest,
    /// The first record at or after a time (`start_timestamp_ms`).
    Timestamp,
}

impl From<model::StartPosition> for StartPosition {
    fn from(s: model::StartPosition) -> Self {
        match s {
            model::StartPosition::Earliest => Self::Earliest,
            model::StartPosition::Latest => Self::Latest,
            model::StartPosition::Timestamp => Self::Timestamp,
        }
    }
}

impl From<StartPosition> for model::StartPosition {
    fn from(s: StartPosition) -> Self {
        match s {
            StartPosition::Earliest => Self::Earliest,
            StartPosition::Latest => Self::Latest,
            StartPosition::Timestamp => Self::Timestamp,
        }
    }
}

/// How a subscription's records are delivered (order) and delivered again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
// Requests never carry it; the attributes only keep the document as it was (no field
// required, no others allowed).
#[serde(deny_unknown_fields)]
pub struct DeliveryPolicy {
    /// Order of deliveries.
    #[serde(default)]
    pub ordering: DeliveryOrder,
    /// A record not acked (or nacked) this long after its delivery is delivered again.
    #[serde(default)]
    pub ack_timeout_ms: u64,
    /// Deliveries of a record before it goes to `dead_letter_topic` instead; 0: unlimited.
    #[serde(default)]
    pub max_attempts: u32,
    /// Where records out of attempts go (required with `max_attempts`).
    #[serde(default)]
    pub dead_letter_topic: Option<String>,
    /// Most records a stream of the subscription may have in flight, whatever it asks for
    /// (0: the server's limit). Written only when set, so that entries without one stay
    /// readable by builds that predate it.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub max_in_flight_records: u32,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

impl From<&model::DeliveryPolicy> for DeliveryPolicy {
    fn from(p: &model::DeliveryPolicy) -> Self {
        Self {
            ordering: p.ordering.into(),
            ack_timeout_ms: p.ack_timeout_ms,
            max_attempts: p.max_attempts,
            dead_letter_topic: p.dead_letter_topic.as_ref().map(|t| t.to_string()),
            max_in_flight_records: p.max_in_flight_records,
        }
    }
}

/// A subscription's partition moved to `offset` by the seek `generation` (unique per
/// subscription and increasing: at least the previous one + 1 and at least the time of the
/// request in milliseconds, so that a retry after a lost or stale write is a new seek).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
pub struct PartitionSeek {
    pub generation: u64,
    pub offset: Offset,
    /// When the seek was asked for, milliseconds since the Unix epoch.
    pub at_ms: i64,
}

impl From<&registry::PartitionSeek> for PartitionSeek {
    fn from(s: &registry::PartitionSeek) -> Self {
        Self {
            generation: s.generation,
            offset: s.offset,
            at_ms: s.at_ms,
        }
    }
}

/// Per partition of a dead-letter topic, the next offset a redrive reads.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct RedrivePosition {
    pub dead_letter_topic: String,
    pub next: BTreeMap<Partition, Offset>,
}

impl From<&registry::RedrivePosition> for RedrivePosition {
    fn from(r: &registry::RedrivePosition) -> Self {
        Self {
            dead_letter_topic: r.dead_letter_topic.to_string(),
            next: r.next.clone(),
        }
    }
}

/// Records retention deleted before a subscription acked them, on one partition, since
/// this shard started (shown by the admin API).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, ToSchema)]
pub struct LossTotal {
    /// Records (offsets) lost.
    pub records: i64,
    /// Times it happened.
    pub events: u64,
    /// The log start the cursor was moved to the last time.
    pub last_log_start: Offset,
}

impl From<shard::LossTotal> for LossTotal {
    fn from(l: shard::LossTotal) -> Self {
        Self {
            records: l.records,
            events: l.events,
            last_log_start: l.last_log_start,
        }
    }
}

/// Per partition, the API's form of a core value.
pub fn by_partition<'a, A: 'a, B: From<&'a A>>(
    m: impl IntoIterator<Item = (&'a Partition, &'a A)>,
) -> BTreeMap<Partition, B> {
    m.into_iter().map(|(p, v)| (*p, B::from(v))).collect()
}

/// This shard, as `GET /v1/shards` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct ShardInfo {
    /// The shard's name (the pod name on Kubernetes).
    pub id: String,
    /// Where subscribers reach its gRPC service.
    pub grpc_address: String,
    pub admin_address: String,
}

impl From<&membership::ShardInfo> for ShardInfo {
    fn from(i: &membership::ShardInfo) -> Self {
        Self {
            id: i.id.clone(),
            grpc_address: i.grpc_address.clone(),
            admin_address: i.admin_address.clone(),
        }
    }
}
