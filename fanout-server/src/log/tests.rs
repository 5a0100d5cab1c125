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
    }
}

fn batch(offsets: &[Offset]) -> Batch {
    Batch::new(offsets.iter().map(|&o| rec(o, 68)).collect()).unwrap()
}

#[test]
fn batches_must_be_ordered_and_non_empty() {
    assert!(Batch::new(vec![]).is_none());
    assert!(Batch::new(vec![rec(2, 1), rec(1, 1)]).is_none());
    assert!(Batch::new(vec![rec(1, 1), rec(1, 1)]).is_none());
    assert_eq!(batch(&[1, 3]).bytes(), 200);
}

#[test]
fn reads_from_any_offset_across_gaps() {
    let log = PartitionLog::new(10, 1 << 20);
    log.append(batch(&[10, 11, 13])).unwrap();
    log.append(batch(&[15, 16])).unwrap();
    assert_eq!(log.head(), 17);
    let offs = |v: Vec<Record>| v.iter().map(|r| r.offset).collect::<Vec<_>>();
    assert_eq!(
        offs(log.read(12, 10, usize::MAX).unwrap()),
        vec![13, 15, 16]
    );
    assert_eq!(offs(log.read(10, 2, usize::MAX).unwrap()), vec![10, 11]);
    assert_eq!(
        offs(log.read(17, 10, usize::MAX).unwrap()),
        Vec::<Offset>::new()
    );
    // Byte limit: each record is 100 bytes; at least one is always returned.
    assert_eq!(offs(log.read(10, 10, 250).unwrap()), vec![10, 11]);
    assert_eq!(offs(log.read(10, 10, 1).unwrap()), vec![10]);
    assert!(log.read(9, 10, usize::MAX).is_none());
}

#[test]
fn append_refuses_offsets_behind_head() {
    let log = PartitionLog::new(0, 1 << 20);
    log.append(batch(&[0, 1])).unwrap();
    assert_eq!(
        log.append(batch(&[1, 2])),
        Err(AppendError::BehindHead { first: 1, head: 2 })
    );
}

#[test]
fn budget_bounds_the_window_but_never_wedges_it() {
    let log = PartitionLog::new(0, 250);
    log.append(batch(&[0, 1])).unwrap();
    assert!(!log.has_room_for(100));
    assert_eq!(
        log.append(batch(&[2])),
        Err(AppendError::Full {
            bytes: 200,
            budget: 250
        })
    );
    assert_eq!(log.trim(2), 200);
    assert_eq!(log.start(), 2);
    assert_eq!(log.bytes(), 0);
    // An empty window takes a batch larger than the budget.
    log.append(batch(&[2, 3, 4, 5])).unwrap();
    assert_eq!(log.bytes(), 400);
}

#[test]
fn trim_keeps_partial_batches_and_never_passes_head() {
    let log = PartitionLog::new(0, 1 << 20);
    log.append(batch(&[0, 1, 2])).unwrap();
    assert_eq!(log.trim(1), 0);
    assert_eq!(log.start(), 1);
    assert_eq!(log.read(1, 10, usize::MAX).unwrap().len(), 2);
    log.trim(100);
    assert_eq!(log.start(), 3);
    assert_eq!(log.head(), 3);
}

#[test]
fn reset_restarts_coverage() {
    let log = PartitionLog::new(50, 1 << 20);
    log.append(batch(&[50, 51])).unwrap();
    log.reset(7);
    assert_eq!((log.start(), log.head(), log.bytes()), (7, 7, 0));
    log.append(batch(&[7])).unwrap();
}
