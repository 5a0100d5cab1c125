//! Records encoded once for the wire.
//!
//! A record read from Kafka is encoded straight away as the `records` entry of a
//! `fanout.v1.RecordBatch` (field tag, length, `Record` message) and kept in that form: its
//! key, value and header values are slices of the encoded bytes, so its payload is copied
//! once, into one buffer (header keys are kept as strings besides). Sending a batch to a
//! stream then writes a few bytes of framing (the topic, the attempts) around those entries
//! as they are; no stream encodes a record again, however many subscriptions receive it.
//!
//! Shared by the ingest (which builds records) and the gRPC service (which sends them).
//!
//! `fanout.v1.RecordBatch` keeps per-delivery data (attempts) out of `Record` for exactly
//! this. The tests decode what [`Frame`] writes with the generated types and compare it with
//! a plain conversion.

use std::fmt;
use std::ops::Range;
use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use fanout_core::delivery::Delivery;
use fanout_core::model::{Header, Offset, Partition, Record, TimestampKind, TopicName};
use fanout_proto::encoded::Body;
use prost::encoding::{
    WireType, encode_key, encode_varint, encoded_len_varint, int32, int64, key_len,
};

/// Field numbers of `fanout.v1` messages written here.
mod field {
    pub const RESPONSE_BATCH: u32 = 2;
    pub const BATCH_TOPIC: u32 = 1;
    pub const BATCH_RECORDS: u32 = 2;
    pub const BATCH_ATTEMPTS: u32 = 3;
    pub const PARTITION: u32 = 1;
    pub const OFFSET: u32 = 2;
    pub const KEY: u32 = 3;
    pub const VALUE: u32 = 4;
    pub const HEADERS: u32 = 5;
    pub const TIMESTAMP_MS: u32 = 6;
    pub const TIMESTAMP_TYPE: u32 = 7;
    pub const HEADER_KEY: u32 = 1;
    pub const HEADER_VALUE: u32 = 2;
}

/// A record's parts, borrowed from wherever it was read.
#[derive(Debug, Clone, Copy)]
pub struct Parts<'a> {
    pub partition: Partition,
    pub offset: Offset,
    pub key: Option<&'a [u8]>,
    pub value: Option<&'a [u8]>,
    pub headers: &'a [(&'a str, Option<&'a [u8]>)],
    pub timestamp: Option<(i64, TimestampKind)>,
}

/// Encodes a record once; its payloads become slices of the encoding.
pub fn record(p: Parts<'_>) -> Record {
    let body = body_len(&p);
    let total = key_len(field::BATCH_RECORDS) + encoded_len_varint(body as u64) + body;
    let mut buf = BytesMut::with_capacity(total);
    encode_key(field::BATCH_RECORDS, WireType::LengthDelimited, &mut buf);
    encode_varint(body as u64, &mut buf);
    if p.partition != 0 {
        int32::encode(field::PARTITION, &p.partition, &mut buf);
    }
    if p.offset != 0 {
        int64::encode(field::OFFSET, &p.offset, &mut buf);
    }
    let key = p.key.map(|k| put_bytes(field::KEY, k, &mut buf));
    let value = p.value.map(|v| put_bytes(field::VALUE, v, &mut buf));
    let mut header_values = Vec::with_capacity(p.headers.len());
    for &(k, v) in p.headers {
        encode_key(field::HEADERS, WireType::LengthDelimited, &mut buf);
        encode_varint(header_len(k, v) as u64, &mut buf);
        if !k.is_empty() {
            put_bytes(field::HEADER_KEY, k.as_bytes(), &mut buf);
        }
        header_values.push(v.map(|v| put_bytes(field::HEADER_VALUE, v, &mut buf)));
    }
    if let Some((t, kind)) = p.timestamp {
        int64::encode(field::TIMESTAMP_MS, &t, &mut buf);
        int32::encode(field::TIMESTAMP_TYPE, &timestamp_type(kind), &mut buf);
    }
    debug_assert_eq!(buf.len(), total);
    let wire = buf.freeze();
    let headers: Arc<[Header]> = p
        .headers
        .iter()
        .zip(header_values)
        .map(|(&(k, _), v)| Header {
            key: k.to_owned(),
            value: v.map(|r| wire.slice(r)),
        })
        .collect();
    Record {
        partition: p.partition,
        offset: p.offset,
        key: key.map(|r| wire.slice(r)),
        value: value.map(|r| wire.slice(r)),
        headers,
        timestamp: p.timestamp,
        wire,
    }
}

/// The encoding of a record that was not read through [`record`].
fn encode(r: &Record) -> Bytes {
    let headers: Vec<(&str, Option<&[u8]>)> = r
        .headers
        .iter()
        .map(|h| (h.key.as_str(), h.value.as_deref()))
        .collect();
    record(Parts {
        partition: r.partition,
        offset: r.offset,
        key: r.key.as_deref(),
        value: r.value.as_deref(),
        headers: &headers,
        timestamp: r.timestamp,
    })
    .wire
}

fn timestamp_type(kind: TimestampKind) -> i32 {
    match kind {
        TimestampKind::CreateTime => 1,
        TimestampKind::LogAppendTime => 2,
    }
}

fn bytes_field_len(tag: u32, len: usize) -> usize {
    key_len(tag) + encoded_len_varint(len as u64) + len
}

/// Writes a bytes field; returns where its content sits in `buf`.
fn put_bytes(tag: u32, b: &[u8], buf: &mut BytesMut) -> Range<usize> {
    encode_key(tag, WireType::LengthDelimited, buf);
    encode_varint(b.len() as u64, buf);
    let start = buf.len();
    buf.put_slice(b);
    start..buf.len()
}

fn header_len(key: &str, value: Option<&[u8]>) -> usize {
    let key = if key.is_empty() {
        0
    } else {
        bytes_field_len(field::HEADER_KEY, key.len())
    };
    key + value.map_or(0, |v| bytes_field_len(field::HEADER_VALUE, v.len()))
}

fn body_len(p: &Parts<'_>) -> usize {
    let mut n = 0;
    if p.partition != 0 {
        n += int32::encoded_len(field::PARTITION, &p.partition);
    }
    if p.offset != 0 {
        n += int64::encoded_len(field::OFFSET, &p.offset);
    }
    n += p.key.map_or(0, |k| bytes_field_len(field::KEY, k.len()));
    n += p
        .value
        .map_or(0, |v| bytes_field_len(field::VALUE, v.len()));
    for &(k, v) in p.headers {
        n += bytes_field_len(field::HEADERS, header_len(k, v));
    }
    if let Some((t, kind)) = p.timestamp {
        n += int64::encoded_len(field::TIMESTAMP_MS, &t);
        n += int32::encoded_len(field::TIMESTAMP_TYPE, &timestamp_type(kind));
    }
    n
}

/// One `SubscribeResponse` carrying a batch: the records' encodings, shared with every
/// other stream, between a few bytes of framing of its own. It holds each record's encoding,
/// not the batches they came from: a frame queued for a slow subscriber keeps no more
/// alive than what it sends.
pub struct Frame {
    /// Response and batch framing, and the topic.
    head: Vec<u8>,
    records: Vec<Bytes>,
    /// The attempts field.
    tail: Vec<u8>,
    len: usize,
}

impl Frame {
    pub fn batch(topic: &TopicName, deliveries: Vec<Delivery>) -> Self {
        let n = deliveries.iter().map(|d| d.chunk.len()).sum();
        let mut records = Vec::with_capacity(n);
        let mut records_len = 0;
        let mut attempts = Vec::with_capacity(n);
        for d in &deliveries {
            for r in d.chunk.records() {
                let wire = if r.wire.is_empty() {
                    encode(r)
                } else {
                    r.wire.clone()
                };
                records_len += wire.len();
                records.push(wire);
                encode_varint(u64::from(d.attempt), &mut attempts);
            }
        }
        drop(deliveries);
        let mut tail = Vec::with_capacity(attempts.len() + 8);
        if !attempts.is_empty() {
            encode_key(field::BATCH_ATTEMPTS, WireType::LengthDelimited, &mut tail);
            encode_varint(attempts.len() as u64, &mut tail);
            tail.extend_from_slice(&attempts);
        }
        let topic = topic.as_str().as_bytes();
        let topic_len = if topic.is_empty() {
            0
        } else {
            bytes_field_len(field::BATCH_TOPIC, topic.len())
        };
        let batch_len = topic_len + records_len + tail.len();
        let mut head = Vec::with_capacity(topic_len + 16);
        encode_key(field::RESPONSE_BATCH, WireType::LengthDelimited, &mut head);
        encode_varint(batch_len as u64, &mut head);
        if !topic.is_empty() {
            encode_key(field::BATCH_TOPIC, WireType::LengthDelimited, &mut head);
            encode_varint(topic.len() as u64, &mut head);
            head.extend_from_slice(topic);
        }
        let len = head.len() + records_len + tail.len();
        Self {
            head,
            records,
            tail,
            len,
        }
    }
}

impl Body for Frame {
    fn size(&self) -> usize {
        self.len
    }

    fn write(&self, buf: &mut dyn BufMut) {
        buf.put_slice(&self.head);
        for r in &self.records {
            buf.put_slice(r);
        }
        buf.put_slice(&self.tail);
    }
}

impl fmt::Debug for Frame {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Frame")
            .field("records", &self.records.len())
            .field("len", &self.len)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests;
