use std::sync::Arc;

use bytes::Bytes;
use fanout_core::delivery::Delivery;
use fanout_core::log::{Batch, Chunk};
use fanout_proto::encoded::Body;
use fanout_proto::v1 as pb;
use proptest::prelude::*;
use prost::Message;

use super::*;

/// What the generated types make of a batch: the oracle for [`Frame`].
fn plain(topic: &TopicName, deliveries: &[Delivery]) -> pb::SubscribeResponse {
    let mut records = Vec::new();
    let mut attempts = Vec::new();
    for d in deliveries {
        for r in d.chunk.records() {
            attempts.push(d.attempt);
            let (timestamp_ms, timestamp_type) = match r.timestamp {
                Some((t, TimestampKind::CreateTime)) => (Some(t), pb::TimestampType::CreateTime),
                Some((t, TimestampKind::LogAppendTime)) => {
                    (Some(t), pb::TimestampType::LogAppendTime)
                }
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
    }
    pb::SubscribeResponse {
        kind: Some(pb::subscribe_response::Kind::Batch(pb::RecordBatch {
            topic: topic.to_string(),
            records,
            attempts,
        })),
    }
}

fn written(frame: &Frame) -> Vec<u8> {
    let mut buf = Vec::new();
    frame.write(&mut buf);
    buf
}

type HeaderParts = Vec<(String, Option<Vec<u8>>)>;

#[derive(Debug, Clone)]
struct Input {
    partition: Partition,
    offset: Offset,
    key: Option<Vec<u8>>,
    value: Option<Vec<u8>>,
    headers: HeaderParts,
    timestamp: Option<(i64, TimestampKind)>,
    /// Built by [`record`] (else without an encoding, as tests and re-reads may).
    encoded: bool,
}

impl Input {
    fn record(&self) -> Record {
        let headers: Vec<(&str, Option<&[u8]>)> = self
            .headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_deref()))
            .collect();
        let r = record(Parts {
            partition: self.partition,
            offset: self.offset,
            key: self.key.as_deref(),
            value: self.value.as_deref(),
            headers: &headers,
            timestamp: self.timestamp,
        });
        if self.encoded {
            r
        } else {
            Record {
                key: r.key.map(|k| Bytes::copy_from_slice(&k)),
                value: r.value.map(|v| Bytes::copy_from_slice(&v)),
                wire: Bytes::new(),
                ..r
            }
        }
    }
}

fn bytes() -> impl Strategy<Value = Option<Vec<u8>>> {
    prop::option::of(prop::collection::vec(any::<u8>(), 0..200))
}

fn input() -> impl Strategy<Value = Input> {
    (
        (
            prop_oneof![0..4i32, Just(-1i32)],
            prop_oneof![Just(0i64), 0..i64::MAX],
        ),
        bytes(),
        prop_oneof![
            bytes(),
            prop::collection::vec(any::<u8>(), 0..5000).prop_map(Some)
        ],
        prop::collection::vec(("[a-z.]{0,12}", bytes()), 0..4),
        prop::option::of((
            any::<i64>(),
            prop_oneof![
                Just(TimestampKind::CreateTime),
                Just(TimestampKind::LogAppendTime)
            ],
        )),
        prop::bool::weighted(0.9),
    )
        .prop_map(
            |((partition, offset), key, value, headers, timestamp, encoded)| Input {
                partition,
                offset,
                key,
                value,
                headers,
                timestamp,
                encoded,
            },
        )
}

proptest! {
    /// Whatever the records, a frame decodes to what the generated types would have sent.
    #[test]
    fn frames_decode_like_plain_encoding(
        inputs in prop::collection::vec(input(), 1..12),
        cuts in prop::collection::vec((0usize..12, 1u32..5), 1..4),
        topic in "[a-z][a-z0-9._-]{0,30}",
    ) {
        let topic = TopicName::new(&topic).unwrap();
        let records: Vec<Record> = inputs
            .iter()
            .enumerate()
            .map(|(i, input)| Input { offset: i as Offset, ..input.clone() }.record())
            .collect();
        let n = records.len();
        let batch = Arc::new(Batch::new(records).unwrap());
        // Deliveries over consecutive runs of the batch, each with its own attempt.
        let mut deliveries = Vec::new();
        let mut start = 0;
        for (cut, attempt) in cuts {
            let end = (start + 1 + cut).min(n);
            if start < end {
                deliveries.push(Delivery { chunk: Chunk::new(batch.clone(), start..end), attempt });
            }
            start = end;
        }
        let expected = plain(&topic, &deliveries);
        let frame = Frame::batch(&topic, deliveries);
        let bytes = written(&frame);
        prop_assert_eq!(bytes.len(), frame.size());
        prop_assert_eq!(bytes.len(), expected.encoded_len());
        let decoded = pb::SubscribeResponse::decode(bytes.as_slice()).unwrap();
        prop_assert_eq!(decoded, expected);
    }

    /// A record is encoded as `plain` would, and its payloads are slices of that encoding.
    #[test]
    fn records_share_their_encoding(input in input()) {
        let r = Input { encoded: true, ..input }.record();
        let decoded = pb::RecordBatch::decode(r.wire.clone()).unwrap();
        prop_assert_eq!(decoded.records.len(), 1);
        let d = &decoded.records[0];
        prop_assert_eq!(d.partition, r.partition);
        prop_assert_eq!(d.offset, r.offset);
        prop_assert_eq!(&d.key, &r.key);
        prop_assert_eq!(&d.value, &r.value);
        let headers: Vec<(String, Option<Bytes>)> =
            d.headers.iter().map(|h| (h.key.clone(), h.value.clone())).collect();
        let kept: Vec<(String, Option<Bytes>)> =
            r.headers.iter().map(|h| (h.key.clone(), h.value.clone())).collect();
        prop_assert_eq!(headers, kept);
        prop_assert_eq!(d.timestamp_ms, r.timestamp.map(|(t, _)| t));
        let within = |b: &Bytes| {
            let w = r.wire.as_ptr_range();
            let p = b.as_ptr_range();
            w.start <= p.start && p.end <= w.end
        };
        prop_assert!(r.key.iter().chain(r.value.iter()).all(within));
        prop_assert!(r.headers.iter().filter_map(|h| h.value.as_ref()).all(within));
    }
}

#[test]
fn an_empty_record_still_encodes() {
    let r = record(Parts {
        partition: 0,
        offset: 0,
        key: None,
        value: None,
        headers: &[],
        timestamp: None,
    });
    // The entry's tag and a zero length: the record with every field at its default.
    assert_eq!(r.wire.as_ref(), &[0x12, 0x00]);
}
