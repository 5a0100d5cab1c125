use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use proptest::prelude::*;

use super::*;
use crate::log::Batch;
use crate::model::{DeliveryOrder, DeliveryPolicy, Record};

const S1: StreamId = StreamId(1);
const S2: StreamId = StreamId(2);

fn rec(partition: Partition, offset: Offset) -> Record {
    Record {
        partition,
        offset,
        key: None,
        value: Some(Bytes::from_static(b"0123456789")),
        headers: Arc::new([]),
        timestamp: None,
        wire: Bytes::new(),
    }
}

fn log_with(partition: Partition, offsets: &[Offset]) -> Arc<PartitionLog> {
    let log = PartitionLog::new(offsets[0], 1 << 20);
    append(&log, partition, offsets);
    log
}

fn append(log: &Arc<PartitionLog>, partition: Partition, offsets: &[Offset]) {
    let mut w = log.writer().unwrap();
    w.append(Batch::new(offsets.iter().map(|&o| rec(partition, o)).collect()).unwrap())
        .unwrap();
}

fn range(first: Offset, last: Offset) -> OffsetRange {
    OffsetRange { first, last }
}

const LIMITS: TakeLimits = TakeLimits {
    batch_records: 1000,
    batch_bytes: 1 << 20,
    max_unacked_span: 10_000,
};

fn credits(records: usize) -> Credits {
    Credits {
        max_records: records,
        max_bytes: usize::MAX,
    }
}

fn offsets(take: &Take) -> Vec<(Partition, Offset, u32)> {
    take.deliveries
        .iter()
        .flat_map(|d| {
            d.chunk
                .records()
                .iter()
                .map(|r| (r.partition, r.offset, d.attempt))
        })
        .collect()
}

#[test]
fn window_cursor_follows_contiguous_acks_across_gaps() {
    let mut w = AckWindow::new(5);
    // 6 and 8 are not records (e.g. transaction markers).
    for o in [5, 7, 9] {
        w.deliver_first(o, 10, None, S1, None);
    }
    w.check_in_flight(S1, &[range(7, 7)]).unwrap();
    w.ack(S1, &[range(7, 7)]);
    assert_eq!(w.cursor(), 5, "5 is still unacked");
    w.ack(S1, &[range(5, 5)]);
    assert_eq!(w.cursor(), 8, "next fetch position after 7");
    w.ack(S1, &[range(9, 9)]);
    assert_eq!(w.cursor(), 10);
    assert_eq!(w.unacked(), 0);
}

#[test]
fn window_refuses_bad_acks_precisely() {
    let mut w = AckWindow::new(0);
    for o in [0, 1, 3] {
        w.deliver_first(o, 10, None, S1, None);
    }
    w.ack(S1, &[range(0, 0)]);
    assert_eq!(
        w.check_in_flight(S1, &[range(0, 1)]),
        Err(AckError::AlreadyAcked { offset: 0 })
    );
    assert_eq!(
        w.check_in_flight(S1, &[range(3, 4)]),
        Err(AckError::NotDelivered { offset: 4 })
    );
    assert_eq!(
        w.check_in_flight(S1, &[range(2, 2)]),
        Err(AckError::NotDelivered { offset: 2 }),
        "a gap alone is nothing to ack"
    );
    assert_eq!(
        w.check_in_flight(S2, &[range(1, 1)]),
        Err(AckError::OtherStream { offset: 1 })
    );
    assert_eq!(
        w.check_in_flight(S1, &[range(3, 1)]),
        Err(AckError::InvertedRange { first: 3, last: 1 })
    );
    assert_eq!(
        w.check_in_flight(S1, &[range(1, 3), range(3, 3)]),
        Err(AckError::OverlappingRanges { first: 3, last: 3 })
    );
    // A range spanning a gap is fine.
    w.check_in_flight(S1, &[range(1, 3)]).unwrap();
}

#[test]
fn nack_makes_records_due_after_the_delay_with_a_higher_attempt() {
    let t0 = Instant::now();
    let mut w = AckWindow::new(0);
    w.deliver_first(0, 10, None, S1, None);
    w.nack(S1, &[range(0, 0)], t0 + Duration::from_secs(2));
    assert_eq!(w.first_due(t0), None);
    assert_eq!(w.next_due_at(t0), Some(t0 + Duration::from_secs(2)));
    // A late ack of a record given back is accepted (checked here, applied below).
    assert_eq!(w.check_in_flight(S1, &[range(0, 0)]), Ok(()));
    let due = w.first_due(t0 + Duration::from_secs(2)).unwrap();
    assert_eq!(
        due,
        Due {
            offset: 0,
            attempt: 2,
            why: Redelivery::Nacked,
        }
    );
    assert_eq!(w.deliver_again(0, S2, None), Some(2));
    assert_eq!(w.cursor(), 0);
}

#[test]
fn one_stream_gets_partitions_in_offset_order_within_credits() {
    let now = Instant::now();
    let mut d = SubscriptionDelivery::new(CatchUpLimits::default());
    d.add_partition(0, log_with(0, &[0, 1, 2, 3]), 1);
    d.add_partition(1, log_with(1, &[10, 11]), 10);
    d.open_stream(S1, credits(3));
    let t = d.take(S1, now, LIMITS);
    assert_eq!(offsets(&t), vec![(0, 1, 1), (0, 2, 1), (0, 3, 1)]);
    assert!(
        d.take(S1, now, LIMITS).deliveries.is_empty(),
        "credits spent"
    );
    d.ack(S1, &[(0, vec![range(1, 2)])]).unwrap();
    assert_eq!(
        offsets(&d.take(S1, now, LIMITS)),
        vec![(1, 10, 1), (1, 11, 1)]
    );
    assert_eq!(d.cursor(0), Some(3));
}

#[test]
fn a_closed_stream_gives_its_records_back_to_the_next_one() {
    let now = Instant::now();
    let mut d = SubscriptionDelivery::new(CatchUpLimits::default());
    d.add_partition(0, log_with(0, &[0, 1, 2]), 0);
    d.open_stream(S1, credits(2));
    assert_eq!(d.take(S1, now, LIMITS).records(), 2);
    d.open_stream(S2, credits(10));
    assert!(
        d.take(S2, now, LIMITS).deliveries.is_empty(),
        "partition 0 is bound to S1"
    );
    assert_eq!(d.close_stream(S1, now), 2);
    // Redeliveries first, then the first delivery of 2, in offset order.
    assert_eq!(
        offsets(&d.take(S2, now, LIMITS)),
        vec![(0, 0, 2), (0, 1, 2), (0, 2, 1)]
    );
    assert!(d.ack(S2, &[(0, vec![range(0, 2)])]).is_ok());
    assert_eq!(d.cursor(0), Some(3));
}

#[test]
fn acks_are_all_or_nothing() {
    let now = Instant::now();
    let mut d = SubscriptionDelivery::new(CatchUpLimits::default());
    d.add_partition(0, log_with(0, &[0, 1]), 0);
    d.add_partition(1, log_with(1, &[0, 1]), 0);
    d.open_stream(S1, credits(10));
    assert_eq!(d.take(S1, now, LIMITS).records(), 4);
    let err = d
        .ack(S1, &[(0, vec![range(0, 1)]), (1, vec![range(0, 5)])])
        .unwrap_err();
    assert_eq!(
        err,
        PartitionAckError {
            partition: 1,
            error: AckError::NotDelivered { offset: 2 }
        }
    );
    assert_eq!(d.cursor(0), Some(0), "partition 0 was not acked either");
    assert_eq!(d.unacked(), 4);
}

#[test]
fn partitions_spread_over_streams_and_drain_before_moving() {
    let now = Instant::now();
    let mut d = SubscriptionDelivery::new(CatchUpLimits::default());
    for p in 0..4 {
        d.add_partition(p, log_with(p, &[0, 1]), 0);
    }
    d.open_stream(S1, credits(1));
    // S1 alone: it may hold all four, but has credit for one record.
    assert_eq!(offsets(&d.take(S1, now, LIMITS)), vec![(0, 0, 1)]);
    d.open_stream(S2, credits(100));
    // S1 holds 4 > fair share 2; the idle ones (2, 3... then 1) are let go on its next take.
    d.ack(S1, &[(0, vec![range(0, 0)])]).unwrap();
    let t1 = d.take(S1, now, LIMITS);
    assert!(
        t1.released,
        "S1 let go of partitions: the others must be told"
    );
    let t2 = d.take(S2, now, LIMITS);
    let s2_parts: std::collections::BTreeSet<Partition> = t2
        .deliveries
        .iter()
        .map(|x| x.chunk.records()[0].partition)
        .collect();
    assert_eq!(s2_parts.len(), 2, "S2 got its fair share: {s2_parts:?}");
    assert!(!s2_parts.contains(&0));
}

#[test]
fn a_stream_without_credits_still_lets_go_of_a_drained_partition() {
    let now = Instant::now();
    let mut d = SubscriptionDelivery::new(CatchUpLimits::default());
    for p in 0..2 {
        d.add_partition(p, log_with(p, &[0, 1]), 0);
    }
    d.open_stream(S1, credits(2));
    // S1 alone holds both partitions and spends its credits on partition 0.
    assert_eq!(
        offsets(&d.take(S1, now, LIMITS)),
        vec![(0, 0, 1), (0, 1, 1)]
    );
    d.open_stream(S2, credits(10));
    // S1 has no credits left, yet its idle partition 1 moves to S2.
    let t1 = d.take(S1, now, LIMITS);
    assert!(t1.deliveries.is_empty());
    assert!(t1.released);
    assert_eq!(
        offsets(&d.take(S2, now, LIMITS)),
        vec![(1, 0, 1), (1, 1, 1)]
    );
}

#[test]
fn a_reset_partition_ends_the_streams_that_had_its_records() {
    let now = Instant::now();
    let mut d = SubscriptionDelivery::new(CatchUpLimits::default());
    let log = log_with(0, &[0, 1, 2]);
    d.add_partition(0, log.clone(), 0);
    d.open_stream(S1, credits(2));
    assert_eq!(d.take(S1, now, LIMITS).records(), 2);
    // Retention deleted 0..=1 before they were acked: the window restarts at 2.
    d.reset_partition(0, log, 2);
    assert_eq!(d.cursor(0), Some(2));
    assert_eq!(
        d.ack(S1, &[(0, vec![range(0, 1)])]).unwrap_err().error,
        AckError::StreamReset
    );
    assert!(d.take(S1, now, LIMITS).reset);
    // Its reconnect gets a fresh stream with full credits.
    d.close_stream(S1, now);
    d.open_stream(S2, credits(2));
    assert_eq!(offsets(&d.take(S2, now, LIMITS)), vec![(0, 2, 1)]);
}

#[test]
fn unacked_span_is_bounded() {
    let now = Instant::now();
    let mut d = SubscriptionDelivery::new(CatchUpLimits::default());
    d.add_partition(0, log_with(0, &[0, 1, 2, 3, 4, 5]), 0);
    d.open_stream(S1, credits(100));
    let limits = TakeLimits {
        max_unacked_span: 3,
        ..LIMITS
    };
    assert_eq!(d.take(S1, now, limits).records(), 3);
    d.ack(S1, &[(0, vec![range(1, 2)])]).unwrap();
    assert!(
        d.take(S1, now, limits).deliveries.is_empty(),
        "offset 0 unacked pins the span"
    );
    d.ack(S1, &[(0, vec![range(0, 0)])]).unwrap();
    assert_eq!(d.take(S1, now, limits).records(), 3);
}

#[test]
fn byte_credits_bound_flight_but_one_record_always_moves() {
    let now = Instant::now();
    let mut d = SubscriptionDelivery::new(CatchUpLimits::default());
    d.add_partition(0, log_with(0, &[0, 1, 2]), 0);
    let size = rec(0, 0).size();
    d.open_stream(
        S1,
        Credits {
            max_records: 100,
            max_bytes: size + 1,
        },
    );
    assert_eq!(d.take(S1, now, LIMITS).records(), 1);
    assert!(d.take(S1, now, LIMITS).deliveries.is_empty());
    d.set_credits(
        S1,
        Credits {
            max_records: 100,
            max_bytes: 1,
        },
    );
    d.ack(S1, &[(0, vec![range(0, 0)])]).unwrap();
    assert_eq!(
        d.take(S1, now, LIMITS).records(),
        1,
        "idle stream takes one record even above its byte credits"
    );
}

#[test]
fn a_cursor_below_the_window_catches_up_then_rejoins() {
    let now = Instant::now();
    let mut d = SubscriptionDelivery::new(CatchUpLimits::default());
    let shared = log_with(0, &[5, 6]);
    // Another subscription reads the shared window: it stays where it is.
    let other = shared.pin(5);
    d.add_partition(0, shared.clone(), 2);
    d.open_stream(S1, credits(10));
    let t = d.take(S1, now, LIMITS);
    assert!(t.deliveries.is_empty());
    assert_eq!(t.catch_up.len(), 1);
    assert_eq!(t.catch_up[0].rewind, None);
    let private = t.catch_up[0].log.clone();
    assert_eq!((t.catch_up[0].partition, private.head()), (0, 2));
    // Asked once: a second take waits for the catch-up reader.
    assert!(d.take(S1, now, LIMITS).catch_up.is_empty());
    // The subscription no longer holds the shared window back.
    assert_eq!(shared.lowest_pin(), Some(5));
    // The catch-up reader fills the catch-up window (3 is a gap).
    append(&private, 0, &[2, 4]);
    let t = d.take(S1, now, LIMITS);
    assert_eq!(offsets(&t), vec![(0, 2, 1), (0, 4, 1)]);
    // Past the private head, the shared window serves: no hole between them.
    let t = d.take(S1, now, LIMITS);
    assert_eq!(offsets(&t), vec![(0, 5, 1), (0, 6, 1)]);
    // Acked up to the shared window: it rejoins and the catch-up window is closed.
    d.ack(S1, &[(0, vec![range(2, 6)])]).unwrap();
    d.take(S1, now, LIMITS);
    assert!(private.is_closed());
    shared.unpin(&other);
    assert_eq!(shared.lowest_pin(), Some(7));
}

#[test]
fn a_cursor_below_a_window_nobody_reads_moves_the_window_back() {
    let now = Instant::now();
    let mut d = SubscriptionDelivery::new(CatchUpLimits::default());
    let shared = log_with(0, &[5, 6]);
    // Another subscription behind the window too does not read it either.
    let behind = shared.pin(3);
    d.add_partition(0, shared.clone(), 2);
    d.open_stream(S1, credits(10));
    let t = d.take(S1, now, LIMITS);
    assert!(t.deliveries.is_empty());
    assert_eq!(t.catch_up.len(), 1);
    assert_eq!(
        t.catch_up[0].rewind,
        Some(2),
        "the shared window moves back"
    );
    assert!(
        Arc::ptr_eq(&t.catch_up[0].log, &shared),
        "no catch-up window"
    );
    assert!(d.catching_up().is_empty());
    // It holds the window from its cursor meanwhile, and asks once.
    assert_eq!(shared.lowest_pin(), Some(2));
    assert!(d.take(S1, now, LIMITS).catch_up.is_empty());
    // The partition's reader resets the window there and reads again.
    {
        let mut w = shared.writer().unwrap();
        w.reset(2);
        w.append(Batch::new(vec![rec(0, 2), rec(0, 3), rec(0, 4)]).unwrap())
            .unwrap();
    }
    let t = d.take(S1, now, LIMITS);
    assert_eq!(offsets(&t), vec![(0, 2, 1), (0, 3, 1), (0, 4, 1)]);
    assert!(t.catch_up.is_empty());
    shared.unpin(&behind);
}

#[test]
fn a_move_back_is_asked_again_once_the_window_moved_without_it() {
    let now = Instant::now();
    let mut d = SubscriptionDelivery::new(CatchUpLimits::default());
    let shared = log_with(0, &[5, 6]);
    d.add_partition(0, shared.clone(), 2);
    d.open_stream(S1, credits(10));
    assert_eq!(d.take(S1, now, LIMITS).catch_up[0].rewind, Some(2));
    assert!(d.take(S1, now, LIMITS).catch_up.is_empty(), "asked already");
    // The window moved on (another request's reset, say), still past the cursor: ask again.
    {
        let mut w = shared.writer().unwrap();
        w.reset(7);
        w.append(Batch::new(vec![rec(0, 7)]).unwrap()).unwrap();
    }
    let t = d.take(S1, now, LIMITS);
    assert_eq!(t.catch_up.len(), 1);
    assert_eq!(t.catch_up[0].rewind, Some(2));
}

#[test]
fn an_evicted_subscription_catches_up_privately_even_if_nobody_else_reads() {
    let now = Instant::now();
    let mut d = SubscriptionDelivery::new(CatchUpLimits::default());
    let shared = PartitionLog::new(0, 2 * (42 + crate::log::RECORD_MEMORY) + 10);
    d.add_partition(0, shared.clone(), 0);
    let lead = shared.pin(2);
    {
        let mut w = shared.writer().unwrap();
        w.append(Batch::new(vec![rec(0, 0)]).unwrap()).unwrap();
        w.append(Batch::new(vec![rec(0, 1)]).unwrap()).unwrap();
        assert_eq!(w.make_room(100), (true, 1));
    }
    // The lead that waited for it leaves: nobody reads the window now, but the evicted
    // subscription does not drag it back.
    shared.unpin(&lead);
    d.open_stream(S1, credits(10));
    let t = d.take(S1, now, LIMITS);
    assert_eq!(t.catch_up.len(), 1);
    assert_eq!(t.catch_up[0].rewind, None);
    assert_eq!(d.catching_up(), vec![0]);
}

#[test]
fn a_cursor_below_a_window_another_subscription_reads_catches_up_instead() {
    let now = Instant::now();
    let mut d = SubscriptionDelivery::new(CatchUpLimits::default());
    let shared = log_with(0, &[5, 6]);
    let reading = shared.pin(6);
    d.add_partition(0, shared.clone(), 2);
    d.open_stream(S1, credits(10));
    let t = d.take(S1, now, LIMITS);
    assert_eq!(t.catch_up.len(), 1);
    assert_eq!(t.catch_up[0].rewind, None);
    assert!(!Arc::ptr_eq(&t.catch_up[0].log, &shared));
    assert_eq!(d.catching_up(), vec![0]);
    shared.unpin(&reading);
}

#[test]
fn takes_go_round_the_partitions_when_credits_are_short() {
    let now = Instant::now();
    let mut d = SubscriptionDelivery::new(CatchUpLimits::default());
    for p in 0..3 {
        d.add_partition(p, log_with(p, &[0, 1, 2, 3, 4, 5]), 0);
    }
    d.open_stream(S1, credits(2));
    let mut served = Vec::new();
    for _ in 0..6 {
        let t = d.take(S1, now, LIMITS);
        let got = offsets(&t);
        assert_eq!(got.len(), 2);
        served.push(got[0].0);
        let mut acks: BTreeMap<Partition, Vec<OffsetRange>> = BTreeMap::new();
        for (p, o, _) in got {
            acks.entry(p).or_default().push(range(o, o));
        }
        d.ack(S1, &acks.into_iter().collect::<Vec<_>>()).unwrap();
    }
    // Starting from the first partition each time, partitions 1 and 2 would wait until
    // partition 0 ran dry.
    assert_eq!(served, vec![0, 1, 2, 0, 1, 2]);
    assert_eq!(
        (d.cursor(0), d.cursor(1), d.cursor(2)),
        (Some(4), Some(4), Some(4))
    );
}

#[test]
fn an_evicted_subscription_moves_to_the_catch_up_path() {
    let now = Instant::now();
    let mut d = SubscriptionDelivery::new(CatchUpLimits::default());
    // Room for two records of 42 bytes (as counted), not three.
    let shared = PartitionLog::new(0, 2 * (42 + crate::log::RECORD_MEMORY) + 10);
    d.add_partition(0, shared.clone(), 0);
    let lead = shared.pin(2);
    let mut w = shared.writer().unwrap();
    w.append(Batch::new(vec![rec(0, 0)]).unwrap()).unwrap();
    w.append(Batch::new(vec![rec(0, 1)]).unwrap()).unwrap();
    // Full; the subscription at 0 is far behind the lead at 2: evicted, and the window
    // trimmed up to the lead.
    assert_eq!(w.make_room(100), (true, 1));
    assert_eq!(shared.start(), 2);
    d.open_stream(S1, credits(10));
    let t = d.take(S1, now, LIMITS);
    assert_eq!(t.catch_up.len(), 1);
    assert_eq!(t.catch_up[0].log.head(), 0);
    drop(lead);
}

// ---- property test: the ack window against a simple model ----

#[derive(Debug, Clone)]
enum Op {
    Deliver {
        stream: u8,
        count: usize,
    },
    Ack {
        stream: u8,
        pick: usize,
        len: usize,
    },
    Nack {
        stream: u8,
        pick: usize,
        delay_ms: u64,
    },
    Close {
        stream: u8,
    },
    Redeliver {
        stream: u8,
    },
    Tick {
        ms: u64,
    },
    /// Ack timeouts fire.
    Expire,
    /// The first due record goes to the dead-letter topic instead.
    DeadLetter,
    /// The oldest dead letter was published (`ok`) or failed.
    DeadLettered {
        ok: bool,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0u8..3, 1usize..6).prop_map(|(stream, count)| Op::Deliver { stream, count }),
        (0u8..3, 0usize..64, 1usize..4).prop_map(|(stream, pick, len)| Op::Ack {
            stream,
            pick,
            len
        }),
        (0u8..3, 0usize..64, 0u64..50).prop_map(|(stream, pick, delay_ms)| Op::Nack {
            stream,
            pick,
            delay_ms
        }),
        (0u8..3).prop_map(|stream| Op::Close { stream }),
        (0u8..3).prop_map(|stream| Op::Redeliver { stream }),
        (0u64..60).prop_map(|ms| Op::Tick { ms }),
        Just(Op::Expire),
        Just(Op::DeadLetter),
        any::<bool>().prop_map(|ok| Op::DeadLettered { ok }),
    ]
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum M {
    InFlight(StreamId),
    Waiting,
    Dead,
    Acked,
}

/// Ack timeout of deliveries in the model test.
const TIMEOUT: Duration = Duration::from_millis(40);

proptest! {
    #[test]
    fn window_never_passes_unacked_and_never_forgets(
        gaps in proptest::collection::vec(0i64..3, 64),
        ops in proptest::collection::vec(op(), 1..120),
    ) {
        // The partition's record offsets, with random gaps between them.
        let mut log = Vec::new();
        let mut o = 100;
        for g in gaps { o += 1 + g; log.push(o); }
        let mut w = AckWindow::new(log[0]);
        let mut model: BTreeMap<Offset, M> = BTreeMap::new();
        let mut deadlines: BTreeMap<Offset, Instant> = BTreeMap::new();
        let mut now = Instant::now();
        for op in ops {
            match op {
                Op::Deliver { stream, count } => {
                    let s = StreamId(u64::from(stream));
                    let next = w.next();
                    for &off in log.iter().filter(|&&x| x >= next).take(count) {
                        w.deliver_first(off, 1, None, s, Some(now + TIMEOUT));
                        model.insert(off, M::InFlight(s));
                        deadlines.insert(off, now + TIMEOUT);
                    }
                }
                Op::Ack { stream, pick, len } => {
                    let s = StreamId(u64::from(stream));
                    let first = log[pick % log.len()];
                    let last = log[(pick + len - 1).min(log.len() - 1)];
                    let r = [range(first, last)];
                    // Acks may cover records in flight on this stream, or given back
                    // (late acks); never acked ones or another stream's.
                    let ok = model.range(first..=last).next().is_some()
                        && first >= w.cursor()
                        && last < w.next()
                        && model
                            .range(first..=last)
                            .all(|(_, m)| matches!(m, M::Waiting | M::Dead) || *m == M::InFlight(s));
                    prop_assert_eq!(w.check_in_flight(s, &r).is_ok(), ok);
                    if ok {
                        let released = w.ack(s, &r);
                        let n = model
                            .range(first..=last)
                            .filter(|(_, m)| **m == M::InFlight(s))
                            .count();
                        prop_assert_eq!(released.records, n);
                        for (_, m) in model.range_mut(first..=last) { *m = M::Acked; }
                    }
                }
                Op::Nack { stream, pick, delay_ms } => {
                    let s = StreamId(u64::from(stream));
                    let off = log[pick % log.len()];
                    let r = [range(off, off)];
                    let m = model.get(&off).copied();
                    let ok = off >= w.cursor()
                        && matches!(m, Some(M::Waiting | M::Dead))
                        || (m == Some(M::InFlight(s)) && off >= w.cursor());
                    prop_assert_eq!(w.check_in_flight(s, &r).is_ok(), ok);
                    if ok {
                        w.nack(s, &r, now + Duration::from_millis(delay_ms));
                        if m == Some(M::InFlight(s)) {
                            model.insert(off, M::Waiting);
                        }
                    }
                }
                Op::Close { stream } => {
                    let s = StreamId(u64::from(stream));
                    w.release_stream(s, now);
                    for m in model.values_mut() {
                        if *m == M::InFlight(s) { *m = M::Waiting; }
                    }
                }
                Op::Redeliver { stream } => {
                    let s = StreamId(u64::from(stream));
                    if let Some(due) = w.first_due(now) {
                        prop_assert_eq!(model.get(&due.offset), Some(&M::Waiting));
                        prop_assert!(due.attempt >= 2);
                        w.deliver_again(due.offset, s, Some(now + TIMEOUT));
                        model.insert(due.offset, M::InFlight(s));
                        deadlines.insert(due.offset, now + TIMEOUT);
                    }
                }
                Op::Expire => {
                    let expired = w.expire(now);
                    let n: usize = expired.iter().map(|(_, r)| r.records).sum();
                    let mut want = 0;
                    for (o, m) in model.iter_mut() {
                        if matches!(m, M::InFlight(_)) && deadlines[o] <= now {
                            *m = M::Waiting;
                            want += 1;
                        }
                    }
                    prop_assert_eq!(n, want);
                }
                Op::DeadLetter => {
                    if let Some(due) = w.first_due(now) {
                        prop_assert!(w.start_dead_letter(due.offset));
                        model.insert(due.offset, M::Dead);
                    }
                }
                Op::DeadLettered { ok } => {
                    if let Some((&off, _)) = model.iter().find(|(_, m)| **m == M::Dead) {
                        if ok {
                            w.dead_lettered(off);
                            model.insert(off, M::Acked);
                        } else {
                            w.dead_letter_failed(off, 9, now);
                            model.insert(off, M::Waiting);
                        }
                    }
                }
                Op::Tick { ms } => now += Duration::from_millis(ms),
            }
            // Commit safety: the cursor never passes a delivered record that is not acked.
            let lowest_unacked = model.iter().find(|(_, m)| **m != M::Acked).map(|(o, _)| *o);
            if let Some(u) = lowest_unacked {
                prop_assert!(w.cursor() <= u, "cursor {} passed unacked {}", w.cursor(), u);
            }
            // The cursor is exactly past the acked prefix.
            let expect = match lowest_unacked {
                Some(u) => model.range(..u).next_back().map_or(log[0], |(o, _)| (o + 1).min(u)),
                None => model.keys().next_back().map_or(log[0], |o| o + 1),
            };
            prop_assert_eq!(w.cursor(), expect.max(log[0]));
            // Nothing delivered is forgotten.
            prop_assert_eq!(w.unacked(), model.values().filter(|m| **m != M::Acked).count());
            prop_assert_eq!(
                w.in_flight(),
                model.values().filter(|m| matches!(m, M::InFlight(_))).count()
            );
        }
    }
}

fn keyed_log(keys: &[&'static str]) -> Arc<PartitionLog> {
    let log = PartitionLog::new(0, 1 << 20);
    let records = keys
        .iter()
        .enumerate()
        .map(|(i, k)| Record {
            key: Some(Bytes::from_static(k.as_bytes())),
            ..rec(0, i as Offset)
        })
        .collect();
    log.writer()
        .unwrap()
        .append(Batch::new(records).unwrap())
        .unwrap();
    log
}

#[test]
fn ordering_key_holds_a_keys_next_record_until_the_previous_is_acked() {
    let now = Instant::now();
    let mut d = SubscriptionDelivery::new(CatchUpLimits::default()).with_policy(DeliveryPolicy {
        ordering: DeliveryOrder::Key,
        ..DeliveryPolicy::default()
    });
    d.add_partition(0, keyed_log(&["a", "b", "a", "c", "a"]), 0);
    d.open_stream(S1, credits(10));
    d.open_stream(S2, credits(10));
    // Different keys go out at once; the second and third "a" wait.
    assert_eq!(
        offsets(&d.take(S1, now, LIMITS)),
        vec![(0, 0, 1), (0, 1, 1), (0, 3, 1)]
    );
    assert!(d.take(S2, now, LIMITS).deliveries.is_empty());
    // Acking a held record is refused: it was never delivered.
    assert!(d.ack(S1, &[(0, vec![range(2, 2)])]).is_err());
    d.ack(S1, &[(0, vec![range(0, 0)])]).unwrap();
    // Any stream may take the next "a" now, and only that one.
    assert_eq!(offsets(&d.take(S2, now, LIMITS)), vec![(0, 2, 1)]);
    assert!(d.take(S1, now, LIMITS).deliveries.is_empty());
    // A nack keeps the key busy: the record comes again before the next "a".
    d.nack(S2, &[(0, vec![range(2, 2)])], now).unwrap();
    assert_eq!(offsets(&d.take(S1, now, LIMITS)), vec![(0, 2, 2)]);
    d.ack(S1, &[(0, vec![range(1, 3)])]).unwrap();
    assert_eq!(offsets(&d.take(S2, now, LIMITS)), vec![(0, 4, 1)]);
    d.ack(S2, &[(0, vec![range(4, 4)])]).unwrap();
    assert_eq!(d.cursor(0), Some(5));
}

#[test]
fn ordering_none_lets_every_stream_take_from_every_partition() {
    let now = Instant::now();
    let mut d = SubscriptionDelivery::new(CatchUpLimits::default()).with_policy(DeliveryPolicy {
        ordering: DeliveryOrder::None,
        ..DeliveryPolicy::default()
    });
    d.add_partition(0, log_with(0, &[0, 1, 2, 3]), 0);
    d.open_stream(S1, credits(2));
    d.open_stream(S2, credits(2));
    assert_eq!(
        offsets(&d.take(S1, now, LIMITS)),
        vec![(0, 0, 1), (0, 1, 1)]
    );
    assert_eq!(
        offsets(&d.take(S2, now, LIMITS)),
        vec![(0, 2, 1), (0, 3, 1)]
    );
}

#[test]
fn a_subscription_without_streams_gives_up_its_private_windows() {
    let now = Instant::now();
    let mut d = SubscriptionDelivery::new(CatchUpLimits::default());
    let shared = log_with(0, &[5, 6]);
    let other = shared.pin(5);
    d.add_partition(0, shared, 2);
    d.open_stream(S1, credits(10));
    let private = d.take(S1, now, LIMITS).catch_up[0].log.clone();
    assert!(!private.is_closed());
    d.close_stream(S1, now);
    assert!(
        private.is_closed(),
        "nobody reads: no catch-up reader works for it"
    );
    drop(other);
}

#[test]
fn a_subscription_without_streams_waits_at_no_head() {
    let now = Instant::now();
    let one = crate::log::held_bytes(&rec(0, 0));
    let shared = PartitionLog::new(0, 4 * one);
    {
        let mut w = shared.writer().unwrap();
        for o in 0..4 {
            w.append(Batch::new(vec![rec(0, o)]).unwrap()).unwrap();
        }
    }
    let mut d = SubscriptionDelivery::new(CatchUpLimits::default());
    d.add_partition(0, shared.clone(), 0);
    let other = shared.pin(0);
    d.open_stream(S1, credits(10));
    // It takes everything (and sits at the head), acks nothing, and its stream goes away.
    assert_eq!(d.take(S1, now, LIMITS).records(), 4);
    d.close_stream(S1, now);
    // Nobody waits at the head of the full window: nobody is evicted.
    let mut w = shared.writer().unwrap();
    assert_eq!(w.make_room(one), (false, 0));
    assert!(!other.is_evicted());
}

#[test]
fn a_new_ack_timeout_applies_to_records_in_flight() {
    let mut d = SubscriptionDelivery::new(CatchUpLimits::default()).with_policy(DeliveryPolicy {
        ack_timeout_ms: 30_000,
        ..DeliveryPolicy::default()
    });
    d.add_partition(0, log_with(0, &[0, 1]), 0);
    let s = StreamId(1);
    d.open_stream(s, credits(1));
    let t0 = Instant::now();
    assert_eq!(offsets(&d.take(s, t0, LIMITS)), vec![(0, 0, 1)]);
    let age = |d: &SubscriptionDelivery, now: Instant| {
        let deadline = d.partition_stats()[0].oldest_deadline.unwrap();
        Duration::from_millis(d.policy().ack_timeout_ms) - deadline.saturating_duration_since(now)
    };
    assert!(age(&d, t0 + Duration::from_secs(1)) <= Duration::from_secs(1));
    d.set_policy(DeliveryPolicy {
        ack_timeout_ms: 1_000,
        ..DeliveryPolicy::default()
    });
    // Still delivered 1 s ago, not 29 s.
    assert!(age(&d, t0 + Duration::from_millis(500)) <= Duration::from_millis(500));
    // Timed out under the new timeout: delivered again.
    assert_eq!(
        offsets(&d.take(s, t0 + Duration::from_secs(2), LIMITS)),
        vec![(0, 0, 2)]
    );
}

#[test]
fn records_redriven_for_another_subscription_are_skipped_as_done() {
    let log = PartitionLog::new(0, 1 << 20);
    let header = |to: &str| -> Arc<[crate::model::Header]> {
        Arc::new([crate::model::Header {
            key: crate::model::REDRIVE_FOR.into(),
            value: Some(Bytes::copy_from_slice(to.as_bytes())),
        }])
    };
    let records = vec![
        rec(0, 0),
        Record {
            headers: header("billing"),
            ..rec(0, 1)
        },
        Record {
            headers: header("audit"),
            ..rec(0, 2)
        },
        rec(0, 3),
    ];
    log.writer()
        .unwrap()
        .append(Batch::new(records).unwrap())
        .unwrap();
    let got = |name: &str| {
        let mut d = SubscriptionDelivery::new(CatchUpLimits::default()).named(name);
        d.add_partition(0, log.clone(), 0);
        let s = StreamId(1);
        d.open_stream(s, credits(10));
        let take = d.take(s, Instant::now(), LIMITS);
        let offsets: Vec<Offset> = offsets(&take).iter().map(|&(_, o, _)| o).collect();
        // Acking what it got moves the cursor past the skipped ones too.
        let ranges: Vec<OffsetRange> = offsets.iter().map(|&o| range(o, o)).collect();
        d.ack(s, &[(0, ranges)]).unwrap();
        (offsets, d.cursor(0))
    };
    assert_eq!(got("billing"), (vec![0, 1, 3], Some(4)));
    assert_eq!(got("audit"), (vec![0, 2, 3], Some(4)));
    assert_eq!(got("other"), (vec![0, 3], Some(4)));
}

#[test]
fn a_long_run_of_records_for_others_does_not_leave_a_take_empty() {
    let log = PartitionLog::new(0, 64 << 20);
    let other: Arc<[crate::model::Header]> = Arc::new([crate::model::Header {
        key: crate::model::REDRIVE_FOR.into(),
        value: Some(Bytes::from_static(b"someone-else")),
    }]);
    let mut records: Vec<Record> = (0..3_000)
        .map(|o| Record {
            headers: other.clone(),
            ..rec(0, o)
        })
        .collect();
    records.push(rec(0, 3_000));
    log.writer()
        .unwrap()
        .append(Batch::new(records).unwrap())
        .unwrap();
    let mut d = SubscriptionDelivery::new(CatchUpLimits::default()).named("me");
    d.add_partition(0, log, 0);
    let s = StreamId(1);
    d.open_stream(s, credits(100));
    let limits = TakeLimits {
        batch_records: 100,
        ..LIMITS
    };
    assert_eq!(
        offsets(&d.take(s, Instant::now(), limits)),
        vec![(0, 3_000, 1)]
    );
    assert_eq!(d.cursor(0), Some(3_000));
}
