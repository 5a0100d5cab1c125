//! `dispatch`: what one more subscription costs on the shared log (G13 in VERIFY.md).
//!
//! One writer fills a partition's window; R readers on the same thread (one core) each go
//! through every record: `log_read` takes the records as shared chunks; `deliver_ack` runs
//! each reader as a subscription (take within credits, then ack the whole batch as one
//! range), the work a stream does per record minus the network. Criterion reports time
//! per record per reader; the goal is that 64 readers cost at most 1.25x per reader what 1
//! reader costs. No lock is taken on these paths (see `log.rs`).

#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use fanout_server::delivery::{
    CatchUpLimits, Credits, OffsetRange, StreamId, SubscriptionDelivery, TakeLimits,
};
use fanout_server::log::{Batch, PartitionLog};
use fanout_server::model::{Offset, Record};

const BATCHES: i64 = 200;
const PER_BATCH: i64 = 100;
const RECORDS: i64 = BATCHES * PER_BATCH;
const READERS: [usize; 3] = [1, 8, 64];

fn filled_log() -> Arc<PartitionLog> {
    let value = Bytes::from(vec![b'v'; 256]);
    let log = PartitionLog::new(0, usize::MAX);
    let mut w = log.writer().unwrap();
    for b in 0..BATCHES {
        let records = (0..PER_BATCH)
            .map(|i| Record {
                partition: 0,
                offset: b * PER_BATCH + i,
                key: Some(Bytes::from_static(b"key")),
                value: Some(value.clone()),
                headers: Arc::new([]),
                timestamp: Some((0, fanout_server::model::TimestampKind::CreateTime)),
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

criterion_group!(benches, log_read, deliver_ack);
criterion_main!(benches);
