//! Conversions between the generated `fanout.v1` types and the domain (requests; responses
//! carrying records are written by [`super::wire`]).

use fanout_core::delivery::OffsetRange;
use fanout_core::model::Partition;
use fanout_proto::v1 as pb;

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
