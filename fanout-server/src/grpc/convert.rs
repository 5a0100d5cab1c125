//! Conversions between the generated `fanout.v1` types and the domain. The only place that
//! touches both.

use fanout_proto::v1 as pb;

use crate::delivery::{Delivery, OffsetRange};
use crate::model::{Partition, TimestampKind, TopicName};

/// A batch of deliveries as sent on the wire.
pub fn batch(topic: &TopicName, deliveries: Vec<Delivery>) -> pb::SubscribeResponse {
    let n = deliveries.iter().map(|d| d.chunk.len()).sum();
    let mut records = Vec::with_capacity(n);
    let mut attempts = Vec::with_capacity(n);
    for (r, attempt) in deliveries
        .iter()
        .flat_map(|d| d.chunk.records().iter().map(|r| (r, d.attempt)))
    {
        attempts.push(attempt);
        let (timestamp_ms, timestamp_type) = match r.timestamp {
            Some((t, TimestampKind::CreateTime)) => (Some(t), pb::TimestampType::CreateTime),
            Some((t, TimestampKind::LogAppendTime)) => (Some(t), pb::TimestampType::LogAppendTime),
            None => (None, pb::TimestampType::Unspecified),
        };
        records.push(pb::Record {
            partition: r.partition,
            offset: r.offset,
            key: r.key.clone(),
            value: r.value.clone(),
            headers: r
                .headers
                .iter()
                .map(|h| pb::Header {
                    key: h.key.clone(),
                    value: h.value.clone(),
                })
                .collect(),
            timestamp_ms,
            timestamp_type: timestamp_type as i32,
        });
    }
    pb::SubscribeResponse {
        kind: Some(pb::subscribe_response::Kind::Batch(pb::RecordBatch {
            topic: topic.to_string(),
            records,
            attempts,
        })),
    }
}

/// Ranges of an ack or nack, in domain terms.
pub fn ranges(partitions: Vec<pb::PartitionRanges>) -> Vec<(Partition, Vec<OffsetRange>)> {
    partitions
        .into_iter()
        .map(|p| {
            (
                p.partition,
                p.ranges
                    .into_iter()
                    .map(|r| OffsetRange {
                        first: r.first,
                        last: r.last,
                    })
                    .collect(),
            )
        })
        .collect()
}

/// The name of a request kind, for error messages.
pub fn kind_name(kind: &Option<pb::subscribe_request::Kind>) -> &'static str {
    match kind {
        Some(pb::subscribe_request::Kind::Open(_)) => "open",
        Some(pb::subscribe_request::Kind::Ack(_)) => "ack",
        Some(pb::subscribe_request::Kind::Nack(_)) => "nack",
        Some(pb::subscribe_request::Kind::Credits(_)) => "credits",
        None => "an empty message",
    }
}
