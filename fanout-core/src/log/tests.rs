use super::*;
use bytes::Bytes;

fn rec(offset: Offset, size: usize) -> Record {
    Record {
        partition: 0,
        offset,
        key: None,
        value: Some(Bytes::from(vec![b'x'; size])),
        headers: Arc::new([]),
        timestamp: None,
        wire: Bytes::new(),
    }
}

/// Memory one test record counts against budgets: 100 bytes of size, plus what holding it
/// costs.
const R: usize = 100 + RECORD_MEMORY;

fn batch(offsets: &[Offset]) -> Batch {
    Batch::new(offsets.iter().map(|&o| rec(o, 68)).collect()).unwrap()
}

fn offs(chunks: Vec<Chunk>) -> Vec<Offset> {
    chunks
        .iter()
        .flat_map(|c| c.records().iter().map(|r| r.offset))
        .collect()
}

fn log_and_writer(start: Offset, bytes: usize) -> (Arc<PartitionLog>, LogWriter) {
    let log = PartitionLog::new(start, bytes);
    let w = log.writer().unwrap();
    (log, w)
}

#[test]
fn batches_must_be_ordered_and_non_empty() {
    assert!(Batch::new(vec![]).is_none());
    assert!(Batch::new(vec![rec(2, 1), rec(1, 1)]).is_none());
    assert!(Batch::new(vec![rec(1, 1), rec(1, 1)]).is_none());
    assert_eq!(batch(&[1, 3]).bytes(), 2 * R);
}

#[test]
fn there_is_one_writer_at_a_time() {
    let (log, w) = log_and_writer(0, 1 << 20);
    assert!(log.writer().is_none());
    drop(w);
    assert!(log.writer().is_some());
}

#[test]
fn reads_from_any_offset_across_gaps() {
    let (log, mut w) = log_and_writer(10, 1 << 20);
    w.append(batch(&[10, 11, 13])).unwrap();
    w.append(batch(&[15, 16])).unwrap();
    assert_eq!(log.head(), 17);
    assert_eq!(
        offs(log.read(12, 10, usize::MAX).unwrap()),
        vec![13, 15, 16]
    );
    assert_eq!(offs(log.read(10, 2, usize::MAX).unwrap()), vec![10, 11]);
    assert_eq!(offs(log.read(14, 10, usize::MAX).unwrap()), vec![15, 16]);
    assert_eq!(
        offs(log.read(17, 10, usize::MAX).unwrap()),
        Vec::<Offset>::new()
    );
    // Byte limit: each record is 100 bytes; at least one is always returned.
    assert_eq!(offs(log.read(10, 10, 250).unwrap()), vec![10, 11]);
    assert_eq!(offs(log.read(10, 10, 1).unwrap()), vec![10]);
    assert!(log.read(9, 10, usize::MAX).is_none());
    // Chunks share the batches: two chunks for two batches.
    assert_eq!(log.read(10, 10, usize::MAX).unwrap().len(), 2);
}

#[test]
fn append_refuses_offsets_behind_head() {
    let (_log, mut w) = log_and_writer(0, 1 << 20);
    w.append(batch(&[0, 1])).unwrap();
    assert_eq!(
        w.append(batch(&[1, 2])),
        Err(AppendError::BehindHead { first: 1, head: 2 })
    );
}

#[test]
fn budget_bounds_the_window_but_never_wedges_it() {
    let (log, mut w) = log_and_writer(0, 2 * R + R / 2);
    w.append(batch(&[0, 1])).unwrap();
    assert!(!w.has_room_for(R));
    assert_eq!(
        w.append(batch(&[2])),
        Err(AppendError::Full {
            bytes: 2 * R,
            budget: 2 * R + R / 2,
            batches: 1,
        })
    );
    assert_eq!(w.trim(2), 2 * R);
    assert_eq!(log.start(), 2);
    assert_eq!(log.bytes(), 0);
    // An empty window takes a batch larger than the budget.
    w.append(batch(&[2, 3, 4, 5])).unwrap();
    assert_eq!(log.bytes(), 4 * R);
}

#[test]
fn the_ring_bounds_the_batch_count() {
    let log = PartitionLog::with_pool(
        0,
        LogLimits {
            bytes: 1 << 20,
            batches: 3,
        },
        MemoryPool::unlimited(),
    );
    let mut w = log.writer().unwrap();
    for o in 0..3 {
        w.append(batch(&[o])).unwrap();
    }
    assert!(matches!(
        w.append(batch(&[3])),
        Err(AppendError::Full { batches: 3, .. })
    ));
    w.trim(1);
    w.append(batch(&[3])).unwrap();
    // Slot 0 now holds batch 3: reading offset 0 must not find it.
    assert!(log.read(0, 10, usize::MAX).is_none());
    assert_eq!(offs(log.read(1, 10, usize::MAX).unwrap()), vec![1, 2, 3]);
}

#[test]
fn the_shard_pool_bounds_all_windows() {
    let pool = MemoryPool::new(3 * R);
    let a = PartitionLog::with_pool(0, LogLimits::bytes(1 << 20), pool.clone());
    let b = PartitionLog::with_pool(0, LogLimits::bytes(1 << 20), pool.clone());
    let (mut wa, mut wb) = (a.writer().unwrap(), b.writer().unwrap());
    wa.append(batch(&[0, 1])).unwrap();
    wb.append(batch(&[0])).unwrap();
    assert_eq!(pool.used(), 3 * R);
    assert!(!wa.has_room_for(R));
    // A window that holds nothing still takes one batch.
    wa.trim(2);
    assert_eq!(pool.used(), R);
    wb.reset(5);
    assert_eq!(pool.used(), 0);
    drop(wa);
    wb.append(batch(&[5])).unwrap();
    drop((wb, b));
    assert_eq!(pool.used(), 0);
}

#[test]
fn trim_keeps_partial_batches_and_never_passes_head() {
    let (log, mut w) = log_and_writer(0, 1 << 20);
    w.append(batch(&[0, 1, 2])).unwrap();
    assert_eq!(w.trim(1), 0);
    assert_eq!(log.start(), 1);
    assert_eq!(offs(log.read(1, 10, usize::MAX).unwrap()), vec![1, 2]);
    w.trim(100);
    assert_eq!(log.start(), 3);
    assert_eq!(log.head(), 3);
}

#[test]
fn reset_restarts_coverage() {
    let (log, mut w) = log_and_writer(50, 1 << 20);
    w.append(batch(&[50, 51])).unwrap();
    w.reset(7);
    assert_eq!((log.start(), log.head(), log.bytes()), (7, 7, 0));
    assert!(log.read(50, 10, usize::MAX).unwrap().is_empty());
    w.append(batch(&[7])).unwrap();
    assert_eq!(offs(log.read(7, 10, usize::MAX).unwrap()), vec![7]);
}

/// Readers racing a writer that appends, trims and wraps the ring: every read is a
/// contiguous run of the records from where it asked, or `None` below the window.
#[test]
fn concurrent_reads_never_skip_records() {
    let log = PartitionLog::with_pool(
        0,
        LogLimits {
            bytes: 1 << 20,
            batches: 8,
        },
        MemoryPool::unlimited(),
    );
    let mut w = log.writer().unwrap();
    // Every third offset is a gap (a "marker"): records are the offsets not divisible by 3.
    let is_record = |o: Offset| o % 3 != 0;
    let readers: Vec<_> = (0..2)
        .map(|_| {
            let log = log.clone();
            std::thread::spawn(move || {
                let mut from = 1;
                let mut reads = 0;
                while from < 30_000 && reads < 2_000_000 {
                    reads += 1;
                    match log.read(from, 7, usize::MAX) {
                        None => from = log.start().max(from),
                        Some(chunks) => {
                            for o in offs(chunks) {
                                let want = (from..).find(|&x| is_record(x)).unwrap();
                                assert_eq!(o, want, "read from {from} skipped a record");
                                from = o + 1;
                            }
                        }
                    }
                }
            })
        })
        .collect();
    let mut next = 0;
    while next < 30_000 {
        let recs: Vec<Offset> = (next..next + 5).filter(|&o| is_record(o)).collect();
        next += 5;
        if recs.is_empty() {
            continue;
        }
        while !w.has_room_for(200) {
            w.trim(log.head() - 10);
        }
        w.append(batch(&recs)).unwrap();
    }
    for r in readers {
        r.join().unwrap();
    }
}

#[test]
fn make_room_evicts_readers_far_behind_a_lead_only() {
    let (log, mut w) = log_and_writer(0, 3 * R);
    let slow = log.pin(0);
    let also_slow = log.pin(0);
    for o in 0..3 {
        w.append(batch(&[o])).unwrap();
    }
    // Everyone busy with the window (nobody at the head): wait, evict nobody.
    assert_eq!(w.make_room(R), (false, 0));
    assert!(!slow.is_evicted());
    also_slow.advance(1);
    let lead = log.pin(3);
    // A reader waits at the head; the oldest quarter ends at 1: the pin at 0 is evicted,
    // the one at 1 stays.
    assert_eq!(w.make_room(R), (true, 1));
    assert!(slow.is_evicted() && slow.cursor().is_none());
    assert!(!also_slow.is_evicted());
    assert_eq!(log.start(), 1);
    // An evicted reader may hold again; advancing while evicted changes nothing.
    slow.advance(2);
    assert_eq!(slow.cursor(), None);
    slow.hold(1);
    assert!(!slow.is_evicted());
    assert_eq!(log.lowest_pin(), Some(1));
    log.unpin(&also_slow);
    log.unpin(&slow);
    assert_eq!(log.lowest_pin(), Some(3));
    drop(lead);
}

#[test]
fn an_append_cleared_by_has_room_for_never_fails_on_the_shared_pool() {
    let pool = MemoryPool::new(3 * R);
    let a = PartitionLog::with_pool(0, LogLimits::bytes(1 << 20), pool.clone());
    let b = PartitionLog::with_pool(0, LogLimits::bytes(1 << 20), pool.clone());
    let (mut wa, mut wb) = (a.writer().unwrap(), b.writer().unwrap());
    wa.append(batch(&[0])).unwrap();
    assert!(wa.has_room_for(R));
    // Another partition takes the pool's last bytes in between.
    wb.append(batch(&[0])).unwrap();
    wb.append(batch(&[1])).unwrap();
    // Records are never dropped for that: the pool overshoots by this batch.
    wa.append(batch(&[1])).unwrap();
    assert_eq!(pool.used(), 4 * R);
    assert!(!wa.has_room_for(1));
}

#[test]
fn one_batch_pinned_by_a_stalled_reader_is_evicted_for_a_waiting_one() {
    let (log, mut w) = log_and_writer(0, 3 * R);
    let stalled = log.pin(0);
    // The other reader took everything and has it in flight: its cursor is still 0.
    let waiting = log.pin(0);
    w.append(batch(&[0, 1, 2])).unwrap();
    waiting.reach(3);
    assert_eq!(w.make_room(R), (false, 1));
    assert!(stalled.is_evicted());
    assert!(
        !waiting.is_evicted(),
        "a reader at the head is never evicted"
    );
    // Once it acks, the window empties and takes the next batch.
    waiting.advance(3);
    assert_eq!(w.make_room(R), (true, 0));
}

#[test]
fn a_reader_at_the_head_that_never_acks_is_evicted_too() {
    let (log, mut w) = log_and_writer(0, 4 * R);
    // It took everything but never acks offset 0 (a poison record, a crashed consumer).
    let stuck = log.pin(0);
    for o in 0..4 {
        w.append(batch(&[o])).unwrap();
    }
    stuck.reach(4);
    assert_eq!(w.make_room(R), (true, 1));
    assert!(stuck.is_evicted());
}

#[test]
fn a_window_is_unread_while_every_pin_is_below_it() {
    let (log, mut w) = log_and_writer(10, 100 * R);
    w.append(batch(&[10, 11, 12])).unwrap();
    assert!(log.unread_by_others(None), "no pins at all");
    let behind = log.pin(3);
    let other = log.pin(5);
    assert!(log.unread_by_others(None), "both behind the window");
    assert!(log.unread_by_others(Some(&behind)));
    let reading = log.pin(11);
    assert!(!log.unread_by_others(None));
    assert!(!log.unread_by_others(Some(&behind)));
    log.unpin(&reading);
    // A pin that holds nothing may be reading past a catch-up window: it counts as reading.
    other.release();
    assert!(!log.unread_by_others(None));
    assert!(log.unread_by_others(Some(&other)));
}
