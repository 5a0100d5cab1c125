//! `dispatch`: what one more subscription costs on the shared log (G13 in VERIFY.md).
//!
//! One writer fills a partition's window; R readers on the same thread (one core) each go
//! through every record: `log_read` takes the records as shared chunks; `deliver_ack` runs
//! each reader as a subscription (take within credits, then ack the whole batch as one
//! range), the work a stream does per record minus the network. Criterion reports time
//! per record per reader; the goal is that 64 readers cost at most 1.25x per reader what 1
//! reader costs. No lock is taken on these paths (see `log.rs`).
//!
//! `frame`: what sending a batch of 500 records costs a stream. `encoded_once` writes the
//! records' shared encodings into the response buffer (what fanout does); `per_stream`
//! builds and encodes the generated message for the stream (what it would do otherwise).

#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::sync::Arc;
use std::time::Instant;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use fanout_core::delivery::Delivery;
use fanout_core::delivery::{
    CatchUpLimits, Credits, OffsetRange, StreamId, SubscriptionDelivery, TakeLimits,
};
use fanout_core::log::{Batch, PartitionLog};
use fanout_core::model::{Offset, TimestampKind, TopicName};
use fanout_proto::encoded::Body;
use fanout_proto::v1 as pb;
use fanout_server::wire;
use prost::Message;

const BATCHES: i64 = 200;
const PER_BATCH: i64 = 100;
const RECORDS: i64 = BATCHES * PER_BATCH;
const READERS: [usize; 4] = [1, 8, 16, 64];

fn filled_log() -> Arc<PartitionLog> {
    let value = vec![b'v'; 256];
    let log = PartitionLog::new(0, usize::MAX);
    let mut w = log.writer().unwrap();
    for b in 0..BATCHES {
        let records = (0..PER_BATCH)
            .map(|i| {
                wire::record(wire::Parts {
                    partition: 0,
                    offset: b * PER_BATCH + i,
                    key: Some(b"key"),
                    value: Some(&value),
                    headers: &[],
                    timestamp: Some((1_700_000_000_000, TimestampKind::CreateTime)),
                })
            })
            .collect();
        w.append(Batch::new(records).unwrap()).unwrap();
    }
    log
}

fn log_read(c: &mut Criterion) {
    let log = filled_log();
    let mut g = c.benchmark_group("dispatch/log_read");
    for readers in READERS {
        g.throughput(Throughput::Elements(RECORDS as u64 * readers as u64));
        g.bench_with_input(BenchmarkId::from_parameter(readers), &readers, |b, &r| {
            b.iter(|| {
                let mut sum = 0i64;
                for _ in 0..r {
                    let mut from: Offset = 0;
                    while from < RECORDS {
                        for chunk in log.read(from, 500, 64 << 10).unwrap() {
                            for rec in chunk.records() {
                                sum += rec.offset;
                            }
                            from = chunk.records().last().unwrap().offset + 1;
                        }
                    }
                }
                black_box(sum)
            });
        });
    }
    g.finish();
}

fn deliver_ack(c: &mut Criterion) {
    let log = filled_log();
    let limits = TakeLimits {
        batch_records: 500,
        batch_bytes: 1 << 20,
        max_unacked_span: 100_000,
    };
    let s = StreamId(1);
    let mut g = c.benchmark_group("dispatch/deliver_ack");
    for readers in READERS {
        g.throughput(Throughput::Elements(RECORDS as u64 * readers as u64));
        g.bench_with_input(BenchmarkId::from_parameter(readers), &readers, |b, &r| {
            b.iter_batched(
                || {
                    (0..r)
                        .map(|_| {
                            let mut d = SubscriptionDelivery::new(CatchUpLimits::default());
                            d.add_partition(0, log.clone(), 0);
                            d.open_stream(
                                s,
                                Credits {
                                    max_records: 1000,
                                    max_bytes: usize::MAX,
                                },
                            );
                            d
                        })
                        .collect::<Vec<_>>()
                },
                |mut subs| {
                    let now = Instant::now();
                    for d in &mut subs {
                        loop {
                            let take = d.take(s, now, limits);
                            let Some(last) = take.deliveries.last() else {
                                break;
                            };
                            let first = take.deliveries[0].chunk.records()[0].offset;
                            let last = last.chunk.records().last().unwrap().offset;
                            d.ack(s, &[(0, vec![OffsetRange { first, last }])]).unwrap();
                        }
                        assert_eq!(d.cursor(0), Some(RECORDS));
                    }
                    subs
                },
                criterion::BatchSize::LargeInput,
            );
        });
    }
    g.finish();
}

fn frame(c: &mut Criterion) {
    let log = filled_log();
    let topic = TopicName::new("bench.topic").unwrap();
    let deliveries = || -> Vec<Delivery> {
        log.read(0, 500, usize::MAX)
            .unwrap()
            .into_iter()
            .map(|chunk| Delivery { chunk, attempt: 1 })
            .collect()
    };
    assert_eq!(
        deliveries().iter().map(|d| d.chunk.len()).sum::<usize>(),
        500
    );
    let mut g = c.benchmark_group("frame");
    g.throughput(Throughput::Elements(500));
    g.bench_function("encoded_once", |b| {
        b.iter(|| {
            let frame = wire::Frame::batch(&topic, deliveries());
            let mut buf = Vec::with_capacity(frame.size());
            frame.write(&mut buf);
            black_box(buf)
        });
    });
    g.bench_function("per_stream", |b| {
        b.iter(|| {
            let ds = deliveries();
            let mut records = Vec::with_capacity(500);
            let mut attempts = Vec::with_capacity(500);
            for d in &ds {
                for r in d.chunk.records() {
                    attempts.push(d.attempt);
                    records.push(pb::Record {
                        partition: r.partition,
                        offset: r.offset,
                        key: r.key.clone(),
                        value: r.value.clone(),
                        headers: Vec::new(),
                        timestamp_ms: r.timestamp.map(|(t, _)| t),
                        timestamp_type: pb::TimestampType::CreateTime as i32,
                    });
                }
            }
            let m = pb::SubscribeResponse {
                kind: Some(pb::subscribe_response::Kind::Batch(pb::RecordBatch {
                    topic: topic.to_string(),
                    records,
                    attempts,
                })),
            };
            let mut buf = Vec::with_capacity(m.encoded_len());
            m.encode(&mut buf).unwrap();
            black_box(buf)
        });
    });
    g.finish();
}

criterion_group!(benches, log_read, deliver_ack, frame);
criterion_main!(benches);
