use std::collections::BTreeMap;
use std::time::Instant;

use bytes::Bytes;

use super::*;
use crate::delivery::{Credits, OffsetRange};
use crate::log::Batch;
use crate::model::Record;
use crate::registry::{Change, Entry};
use crate::testing::{self, topic_entry};

const LIMITS: ShardLimits = ShardLimits::FOR_TESTS;

fn credits(records: usize) -> Credits {
    Credits {
        max_records: records,
        max_bytes: usize::MAX,
    }
}

fn t(name: &str) -> TopicName {
    testing::topic(name)
}

fn register(shard: &Shard, offset: i64, entry: Entry) -> Option<Change> {
    testing::apply(shard, offset, &entry)
}

fn sub_entry(topic: &str, name: &str, starts: &[(Partition, Offset)]) -> Entry {
    testing::subscription_entry(topic, name, starts, Default::default())
}

fn append(owned: &OwnedPartition, offsets: std::ops::Range<Offset>) {
    let recs = offsets
        .map(|offset| Record {
            partition: owned.partition,
            offset,
            key: None,
            value: Some(Bytes::from_static(b"v")),
            headers: Arc::new([]),
            timestamp: None,
            wire: Bytes::new(),
        })
        .collect();
    let mut w = owned.log.writer().unwrap();
    w.append(Batch::new(recs).unwrap()).unwrap();
    w.trim_to_pins();
}

#[test]
fn registry_progress_and_wanted_topics_follow_applied_records() {
    let shard = Shard::new(LIMITS);
    let wanted = shard.wanted_topics();
    register(&shard, 0, topic_entry("orders"));
    assert_eq!(*wanted.borrow(), vec![t("orders")]);
    assert_eq!(*shard.registry_progress().borrow(), 1);
    register(&shard, 7, sub_entry("orders", "a", &[]));
    assert_eq!(*shard.registry_progress().borrow(), 8);
    assert!(
        shard
            .subscription(&t("orders"), &SubscriptionName::new("a").unwrap())
            .is_ok()
    );
    assert_eq!(
        shard
            .subscription(&t("orders"), &SubscriptionName::new("b").unwrap())
            .unwrap_err(),
        LookupError::UnknownSubscription {
            topic: t("orders"),
            name: SubscriptionName::new("b").unwrap()
        }
    );
    assert_eq!(
        shard
            .subscription(&t("nope"), &SubscriptionName::new("a").unwrap())
            .unwrap_err(),
        LookupError::UnknownTopic(t("nope"))
    );
}

#[test]
fn assignment_starts_at_the_lowest_cursor_and_commits_the_lowest_stored() {
    let shard = Shard::new(LIMITS);
    register(&shard, 0, topic_entry("orders"));
    register(&shard, 1, sub_entry("orders", "a", &[(0, 5)]));
    register(&shard, 2, sub_entry("orders", "b", &[(0, 8)]));
    let a = SubscriptionKey {
        topic: t("orders"),
        name: SubscriptionName::new("a").unwrap(),
    };
    shard.load_stored([((a.clone(), 0), StoredCursor::at(6, 0))]);
    let assigned = shard.assign(&t("orders"), 0, 2, 100);
    assert_eq!(
        assigned.start, 6,
        "a's stored cursor 6 is below b's start 8"
    );
    assert!(assigned.losses.is_empty());
    assert_eq!(shard.commit_positions(), vec![(t("orders"), 0, 6)]);
    assert!(shard.cursor_updates().is_empty(), "nothing moved yet");

    // a acks 6..=9: its cursor moves to 10, b (at 8) now gates the commit once stored.
    append(&assigned.partition, 6..12);
    let (_, sa) = shard.subscription(&t("orders"), &a.name).unwrap();
    let s1 = shard.new_stream_id();
    sa.open_stream(s1, credits(4));
    assert_eq!(sa.take(s1, Instant::now(), LIMITS.take).records(), 4);
    sa.ack(s1, &[(0, vec![OffsetRange { first: 6, last: 9 }])])
        .unwrap();
    let updates = shard.cursor_updates();
    assert_eq!(
        updates,
        vec![CursorUpdate {
            subscription: a.clone(),
            incarnation: 0,
            partition: 0,
            cursor: 10,
            acked: vec![],
            seek: 0,
        }]
    );
    assert_eq!(
        shard.commit_positions(),
        vec![(t("orders"), 0, 6)],
        "not stored yet"
    );
    shard.mark_stored(&updates);
    assert_eq!(shard.commit_positions(), vec![(t("orders"), 0, 8)]);
    // The shared window holds from the lowest cursor.
    assert_eq!(assigned.partition.log.lowest_pin(), Some(8));
}

#[test]
fn cursors_below_the_log_start_are_reported_as_losses() {
    let shard = Shard::new(LIMITS);
    register(&shard, 0, topic_entry("orders"));
    register(&shard, 1, sub_entry("orders", "a", &[(0, 3)]));
    let assigned = shard.assign(&t("orders"), 0, 10, 20);
    assert_eq!(assigned.start, 10);
    assert_eq!(
        assigned.losses,
        vec![Loss {
            subscription: SubscriptionKey {
                topic: t("orders"),
                name: SubscriptionName::new("a").unwrap()
            },
            partition: 0,
            cursor: 3,
            log_start: 10
        }]
    );
    let key = SubscriptionKey {
        topic: t("orders"),
        name: SubscriptionName::new("a").unwrap(),
    };
    assert_eq!(
        shard.losses_of(&key),
        BTreeMap::from([(
            0,
            LossTotal {
                records: 7,
                events: 1,
                last_log_start: 10
            }
        )])
    );
}

#[test]
fn no_subscription_means_start_at_the_end_and_commit_the_head() {
    let shard = Shard::new(LIMITS);
    register(&shard, 0, topic_entry("orders"));
    let assigned = shard.assign(&t("orders"), 0, 0, 42);
    assert_eq!(assigned.start, 42);
    append(&assigned.partition, 42..45);
    assert_eq!(shard.commit_positions(), vec![(t("orders"), 0, 45)]);
    // Nobody holds anything: the window keeps nothing.
    assert_eq!(assigned.partition.log.bytes(), 0);
}

#[test]
fn a_new_subscription_below_the_window_catches_up_without_moving_it() {
    let shard = Shard::new(LIMITS);
    register(&shard, 0, topic_entry("orders"));
    // A subscription reads the shared window from 50 on.
    register(&shard, 1, sub_entry("orders", "lead", &[(0, 50)]));
    let assigned = shard.assign(&t("orders"), 0, 0, 50);
    let mut rewinds = assigned.partition.rewind_requests();
    rewinds.mark_unchanged();
    register(&shard, 2, sub_entry("orders", "late", &[(0, 10)]));
    assert!(!rewinds.has_changed().unwrap(), "the shared window stays");
    let (_, sub) = shard
        .subscription(&t("orders"), &SubscriptionName::new("late").unwrap())
        .unwrap();
    assert_eq!(sub.cursors(), vec![(0, 10)]);
    let s = shard.new_stream_id();
    sub.open_stream(
        s,
        crate::delivery::Credits {
            max_records: 10,
            max_bytes: 1 << 20,
        },
    );
    let take = sub.take(s, Instant::now(), LIMITS.take);
    assert_eq!(take.catch_up.len(), 1);
    assert_eq!(take.catch_up[0].rewind, None);
    assert_eq!(take.catch_up[0].log.head(), 10);
}

#[test]
fn a_new_subscription_below_a_window_nobody_reads_moves_it_back() {
    let shard = Shard::new(LIMITS);
    register(&shard, 0, topic_entry("orders"));
    let assigned = shard.assign(&t("orders"), 0, 0, 50);
    register(&shard, 1, sub_entry("orders", "first", &[(0, 10)]));
    let (_, sub) = shard
        .subscription(&t("orders"), &SubscriptionName::new("first").unwrap())
        .unwrap();
    let s = shard.new_stream_id();
    sub.open_stream(
        s,
        crate::delivery::Credits {
            max_records: 10,
            max_bytes: 1 << 20,
        },
    );
    let take = sub.take(s, Instant::now(), LIMITS.take);
    assert_eq!(take.catch_up.len(), 1);
    assert_eq!(take.catch_up[0].rewind, Some(10));
    assert!(Arc::ptr_eq(&take.catch_up[0].log, &assigned.partition.log));
    assert!(sub.catching_up().is_empty());
}

#[test]
fn revoke_forgets_the_partition_everywhere() {
    let shard = Shard::new(LIMITS);
    register(&shard, 0, topic_entry("orders"));
    register(&shard, 1, sub_entry("orders", "a", &[(0, 0)]));
    let assigned = shard.assign(&t("orders"), 0, 0, 0);
    shard.stop_partition(&t("orders"), 0);
    assert!(assigned.partition.is_revoked());
    shard.revoke(&t("orders"), 0, Instant::now());
    assert!(shard.commit_positions().is_empty());
    let (_, a) = shard
        .subscription(&t("orders"), &SubscriptionName::new("a").unwrap())
        .unwrap();
    assert!(a.cursors().is_empty());
}

#[test]
fn deleting_a_subscription_ends_it() {
    let shard = Shard::new(LIMITS);
    register(&shard, 0, topic_entry("orders"));
    register(&shard, 1, sub_entry("orders", "a", &[(0, 3)]));
    let assigned = shard.assign(&t("orders"), 0, 0, 10);
    let (_, a) = shard
        .subscription(&t("orders"), &SubscriptionName::new("a").unwrap())
        .unwrap();
    assert_eq!(assigned.partition.log.lowest_pin(), Some(3));
    let change = shard
        .apply_registry(2, b"subscription:orders:a", None)
        .unwrap();
    assert!(matches!(change, Some(Change::SubscriptionRemoved(_))));
    assert!(a.is_removed());
    // It holds the window no longer, though its handle is still alive.
    assert_eq!(assigned.partition.log.lowest_pin(), None);
}

#[test]
fn a_subscription_recorded_before_its_topic_comes_alive_with_it() {
    let shard = Shard::new(LIMITS);
    register(&shard, 0, sub_entry("orders", "early", &[(0, 0)]));
    assert!(
        shard
            .subscription(&t("orders"), &SubscriptionName::new("early").unwrap())
            .is_err()
    );
    register(&shard, 1, topic_entry("orders"));
    assert!(
        shard
            .subscription(&t("orders"), &SubscriptionName::new("early").unwrap())
            .is_ok()
    );
}

#[test]
fn a_stopped_partition_delivers_nothing_more() {
    let shard = Shard::new(LIMITS);
    register(&shard, 0, topic_entry("orders"));
    register(&shard, 1, sub_entry("orders", "a", &[(0, 0)]));
    let assigned = shard.assign(&t("orders"), 0, 0, 0);
    append(&assigned.partition, 0..5);
    let (_, a) = shard
        .subscription(&t("orders"), &SubscriptionName::new("a").unwrap())
        .unwrap();
    let s = shard.new_stream_id();
    a.open_stream(s, credits(2));
    assert_eq!(a.take(s, Instant::now(), LIMITS.take).records(), 2);
    assert_eq!(a.in_flight(), 2);
    shard.stop_partition(&t("orders"), 0);
    a.ack(s, &[(0, vec![OffsetRange { first: 0, last: 1 }])])
        .unwrap();
    assert!(a.take(s, Instant::now(), LIMITS.take).deliveries.is_empty());
    assert_eq!(a.cursors(), vec![(0, 2)], "acks still count after the stop");
}

#[test]
fn a_recreated_subscription_does_not_inherit_old_cursors() {
    let shard = Shard::new(LIMITS);
    register(&shard, 0, topic_entry("orders"));
    // A cursor of an earlier life of "a" (created at 0) is in Kafka; this "a" was created at 5.
    let mut entry = sub_entry("orders", "a", &[(0, 3)]);
    if let Entry::Subscription(spec) = &mut entry {
        spec.created_at_ms = 5;
    }
    let a = SubscriptionKey {
        topic: t("orders"),
        name: SubscriptionName::new("a").unwrap(),
    };
    shard.load_stored([((a, 0), StoredCursor::at(900, 0))]);
    register(&shard, 1, entry);
    let assigned = shard.assign(&t("orders"), 0, 0, 1000);
    assert_eq!(
        assigned.start, 3,
        "starts at its own start, not the old cursor 900"
    );
}

#[test]
fn a_stream_letting_go_of_a_partition_wakes_the_others() {
    let shard = Shard::new(LIMITS);
    register(&shard, 0, topic_entry("orders"));
    register(&shard, 1, sub_entry("orders", "a", &[(0, 0), (1, 0)]));
    for p in 0..2 {
        append(&shard.assign(&t("orders"), p, 0, 0).partition, 0..2);
    }
    let (_, a) = shard
        .subscription(&t("orders"), &SubscriptionName::new("a").unwrap())
        .unwrap();
    let (s1, s2) = (shard.new_stream_id(), shard.new_stream_id());
    a.open_stream(s1, credits(2));
    assert_eq!(a.take(s1, Instant::now(), LIMITS.take).records(), 2);
    a.open_stream(s2, credits(2));
    let mut s2_wakes = a.wakes();
    s2_wakes.mark_unchanged();
    // An ack wakes nobody else; the take after it lets partition 1 go and wakes the others.
    a.ack(s1, &[(0, vec![OffsetRange { first: 0, last: 1 }])])
        .unwrap();
    assert!(!s2_wakes.has_changed().unwrap());
    assert!(a.take(s1, Instant::now(), LIMITS.take).released);
    assert!(s2_wakes.has_changed().unwrap());
    assert_eq!(a.take(s2, Instant::now(), LIMITS.take).records(), 2);
}

#[test]
fn acked_ranges_above_the_cursor_survive_a_restart() {
    let key = SubscriptionKey {
        topic: t("orders"),
        name: SubscriptionName::new("a").unwrap(),
    };
    let now = Instant::now();
    let credits = crate::delivery::Credits {
        max_records: 100,
        max_bytes: 1 << 20,
    };
    // First life: 10 records delivered; 3..=5 and 8 acked, 0..=2, 6, 7, 9 not.
    let before = Shard::new(LIMITS);
    register(&before, 0, topic_entry("orders"));
    register(&before, 1, sub_entry("orders", "a", &[(0, 0)]));
    let assigned = before.assign(&t("orders"), 0, 0, 10);
    append(&assigned.partition, 0..10);
    let (_, sub) = before.subscription(&t("orders"), &key.name).unwrap();
    let s = before.new_stream_id();
    sub.open_stream(s, credits);
    assert_eq!(sub.take(s, now, LIMITS.take).records(), 10);
    let acked = [
        OffsetRange { first: 3, last: 5 },
        OffsetRange { first: 8, last: 8 },
    ];
    sub.ack(s, &[(0, acked.to_vec())]).unwrap();
    let updates = before.cursor_updates();
    assert_eq!(updates.len(), 1);
    assert_eq!(
        (updates[0].cursor, updates[0].acked.clone()),
        (0, acked.to_vec())
    );
    // As stored (the cursors topic's format round-trips it: see store::cursors' tests).
    let stored = crate::shard::StoredCursor {
        offset: updates[0].cursor,
        incarnation: updates[0].incarnation,
        acked: updates[0].acked.clone(),
        seek: updates[0].seek,
    };

    // Second life (restart or another shard): only the unacked records come again.
    let after = Shard::new(LIMITS);
    after.load_stored([((key.clone(), 0), stored)]);
    register(&after, 0, topic_entry("orders"));
    register(&after, 1, sub_entry("orders", "a", &[(0, 0)]));
    let assigned = after.assign(&t("orders"), 0, 0, 10);
    append(&assigned.partition, 0..10);
    let (_, sub) = after.subscription(&t("orders"), &key.name).unwrap();
    let s = after.new_stream_id();
    sub.open_stream(s, credits);
    let take = sub.take(s, now, LIMITS.take);
    let offsets: Vec<i64> = take
        .deliveries
        .iter()
        .flat_map(|d| d.chunk.records().iter().map(|r| r.offset))
        .collect();
    assert_eq!(offsets, vec![0, 1, 2, 6, 7, 9]);
    sub.ack(s, &[(0, vec![OffsetRange { first: 0, last: 2 }])])
        .unwrap();
    assert_eq!(sub.cursors(), vec![(0, 6)]);
    // 8 was acked before: it is not in flight, so it is acked around.
    sub.ack(
        s,
        &[(
            0,
            vec![
                OffsetRange { first: 6, last: 7 },
                OffsetRange { first: 9, last: 9 },
            ],
        )],
    )
    .unwrap();
    assert_eq!(sub.cursors(), vec![(0, 10)]);
}

#[test]
fn an_ack_that_frees_a_held_key_wakes_the_other_streams() {
    let shard = Shard::new(LIMITS);
    register(&shard, 0, topic_entry("orders"));
    let mut entry = sub_entry("orders", "k", &[(0, 0)]);
    if let Entry::Subscription(spec) = &mut entry {
        spec.delivery.ordering = crate::model::DeliveryOrder::Key;
    }
    register(&shard, 1, entry);
    let assigned = shard.assign(&t("orders"), 0, 0, 0);
    // Two records of the same key.
    let recs = (0..2)
        .map(|offset| Record {
            partition: 0,
            offset,
            key: Some(Bytes::from_static(b"a")),
            value: None,
            headers: Arc::new([]),
            timestamp: None,
            wire: Bytes::new(),
        })
        .collect();
    assigned
        .partition
        .log
        .writer()
        .unwrap()
        .append(Batch::new(recs).unwrap())
        .unwrap();
    let (_, sub) = shard
        .subscription(&t("orders"), &SubscriptionName::new("k").unwrap())
        .unwrap();
    let credits = Credits {
        max_records: 10,
        max_bytes: 1 << 20,
    };
    let (s1, s2) = (shard.new_stream_id(), shard.new_stream_id());
    sub.open_stream(s1, credits);
    sub.open_stream(s2, credits);
    assert_eq!(sub.take(s1, Instant::now(), LIMITS.take).records(), 1);
    let mut wakes = sub.wakes();
    wakes.mark_unchanged();
    sub.ack(s1, &[(0, vec![OffsetRange { first: 0, last: 0 }])])
        .unwrap();
    assert!(
        wakes.has_changed().unwrap(),
        "the held record is free for any stream"
    );
    wakes.mark_unchanged();
    assert_eq!(sub.take(s2, Instant::now(), LIMITS.take).records(), 1);
    sub.ack(s2, &[(0, vec![OffsetRange { first: 1, last: 1 }])])
        .unwrap();
    assert!(
        !wakes.has_changed().unwrap(),
        "an ack that frees nothing wakes nobody"
    );
}

fn seek(spec: &SubscriptionSpec, generation: u64, to: &[(Partition, Offset)]) -> Entry {
    let mut spec = spec.clone();
    for &(p, offset) in to {
        spec.seeks.insert(
            p,
            crate::registry::PartitionSeek {
                generation,
                offset,
                at_ms: 0,
                unknown: Default::default(),
            },
        );
    }
    Entry::Subscription(spec)
}

#[test]
fn a_seek_moves_a_live_cursor_resets_its_streams_and_outlives_older_stored_cursors() {
    let shard = Shard::new(LIMITS);
    register(&shard, 0, topic_entry("orders"));
    let Entry::Subscription(spec) = sub_entry("orders", "a", &[(0, 0)]) else {
        unreachable!()
    };
    register(&shard, 1, Entry::Subscription(spec.clone()));
    let assigned = shard.assign(&t("orders"), 0, 0, 100);
    append(&assigned.partition, 0..50);
    let (_, sa) = shard.subscription(&t("orders"), &spec.name).unwrap();
    let s1 = shard.new_stream_id();
    sa.open_stream(s1, credits(30));
    assert_eq!(sa.take(s1, Instant::now(), LIMITS.take).records(), 30);
    sa.ack(s1, &[(0, vec![OffsetRange { first: 0, last: 19 }])])
        .unwrap();
    let before = shard.cursor_updates();
    assert_eq!(before[0].cursor, 20);
    shard.mark_stored(&before);

    // Skip forward to 40: records 20..=29 in flight on s1 are dropped and s1 is reset.
    let change = register(&shard, 2, seek(&spec, 1, &[(0, 40)]));
    assert!(matches!(change, Some(Change::SubscriptionUpdated { .. })));
    assert_eq!(sa.cursors(), vec![(0, 40)]);
    assert!(sa.take(s1, Instant::now(), LIMITS.take).reset);
    // The seek is already where a restart would begin (the registry says so) and gates
    // the commit; nothing needs writing until the cursor moves.
    assert_eq!(shard.durable_cursors(&sa.spec()), BTreeMap::from([(0, 40)]));
    assert_eq!(shard.commit_positions(), vec![(t("orders"), 0, 40)]);
    assert!(shard.cursor_updates().is_empty());
    let s2 = shard.new_stream_id();
    sa.open_stream(s2, credits(100));
    let take = sa.take(s2, Instant::now(), LIMITS.take);
    let first = take.deliveries[0].chunk.records()[0].offset;
    assert_eq!((first, take.records()), (40, 10));
    sa.ack(
        s2,
        &[(
            0,
            vec![OffsetRange {
                first: 40,
                last: 44,
            }],
        )],
    )
    .unwrap();
    let after = shard.cursor_updates();
    assert_eq!((after[0].cursor, after[0].seek), (45, 1));

    // A restart that finds only the cursor stored before the seek begins at the seek.
    let restarted = Shard::new(LIMITS);
    restarted.load_stored([((spec.key(), 0), StoredCursor::at(20, spec.created_at_ms))]);
    register(&restarted, 0, topic_entry("orders"));
    register(&restarted, 1, seek(&spec, 1, &[(0, 40)]));
    assert_eq!(restarted.assign(&t("orders"), 0, 0, 100).start, 40);
    // One that finds the cursor stored after it begins there.
    let restarted = Shard::new(LIMITS);
    restarted.load_stored([(
        (spec.key(), 0),
        StoredCursor::at(45, spec.created_at_ms).after_seek(1),
    )]);
    register(&restarted, 0, topic_entry("orders"));
    register(&restarted, 1, seek(&spec, 1, &[(0, 40)]));
    assert_eq!(restarted.assign(&t("orders"), 0, 0, 100).start, 45);
}

/// A newer build rewrote the entry with a field of its own on a seek: the seek is the same
/// (generation, offset), so nothing is reset and no cursor moves back.
#[test]
fn a_seek_that_only_gained_fields_of_a_newer_build_is_not_applied_again() {
    let shard = Shard::new(LIMITS);
    register(&shard, 0, topic_entry("orders"));
    let Entry::Subscription(spec) = sub_entry("orders", "a", &[(0, 0)]) else {
        unreachable!()
    };
    register(&shard, 1, Entry::Subscription(spec.clone()));
    let assigned = shard.assign(&t("orders"), 0, 0, 100);
    append(&assigned.partition, 0..50);
    register(&shard, 2, seek(&spec, 1, &[(0, 10)]));
    let (_, sa) = shard.subscription(&t("orders"), &spec.name).unwrap();
    let s = shard.new_stream_id();
    sa.open_stream(s, credits(10));
    assert_eq!(sa.take(s, Instant::now(), LIMITS.take).records(), 10);
    sa.ack(
        s,
        &[(
            0,
            vec![OffsetRange {
                first: 10,
                last: 14,
            }],
        )],
    )
    .unwrap();
    assert_eq!(sa.cursors(), vec![(0, 15)]);
    let mut newer = (*sa.spec()).clone();
    if let Some(seek) = newer.seeks.get_mut(&0) {
        seek.unknown.insert("by".into(), "on-call".into());
    }
    let change = register(&shard, 3, Entry::Subscription(newer));
    assert!(matches!(change, Some(Change::SubscriptionUpdated { .. })));
    assert_eq!(
        sa.cursors(),
        vec![(0, 15)],
        "the seek was not applied again"
    );
    let take = sa.take(s, Instant::now(), LIMITS.take);
    assert!(!take.reset, "the stream was not reset");
    assert_eq!(sa.in_flight(), 10, "five still in flight, five more taken");
}

#[test]
fn a_seek_back_below_the_window_replays_through_the_catch_up_path() {
    let shard = Shard::new(LIMITS);
    register(&shard, 0, topic_entry("orders"));
    let Entry::Subscription(spec) = sub_entry("orders", "a", &[(0, 10)]) else {
        unreachable!()
    };
    register(&shard, 1, Entry::Subscription(spec.clone()));
    // Another subscription reads the shared window.
    register(&shard, 2, sub_entry("orders", "b", &[(0, 10)]));
    let assigned = shard.assign(&t("orders"), 0, 0, 100);
    append(&assigned.partition, 10..20);
    register(&shard, 3, seek(&spec, 1, &[(0, 3)]));
    let (_, sa) = shard.subscription(&t("orders"), &spec.name).unwrap();
    let s1 = shard.new_stream_id();
    sa.open_stream(s1, credits(100));
    let take = sa.take(s1, Instant::now(), LIMITS.take);
    assert_eq!(
        take.catch_up.len(),
        1,
        "offsets 3..10 must come from Kafka again"
    );
    assert_eq!(take.catch_up[0].log.head(), 3);
    assert_eq!(sa.catching_up(), vec![0]);
}

#[test]
fn a_paused_subscription_delivers_nothing_until_resumed_and_settings_change_live() {
    let shard = Shard::new(LIMITS);
    register(&shard, 0, topic_entry("orders"));
    let Entry::Subscription(spec) = sub_entry("orders", "a", &[(0, 0)]) else {
        unreachable!()
    };
    register(&shard, 1, Entry::Subscription(spec.clone()));
    let assigned = shard.assign(&t("orders"), 0, 0, 100);
    append(&assigned.partition, 0..10);
    let (_, sa) = shard.subscription(&t("orders"), &spec.name).unwrap();
    let s1 = shard.new_stream_id();
    sa.open_stream(s1, credits(4));
    assert_eq!(sa.take(s1, Instant::now(), LIMITS.take).records(), 4);
    let mut paused = spec.clone();
    paused.paused = true;
    paused.delivery.ack_timeout_ms = 1_000;
    register(&shard, 2, Entry::Subscription(paused.clone()));
    assert!(sa.is_paused());
    assert_eq!(sa.spec().delivery.ack_timeout_ms, 1_000);
    assert_eq!(sa.take(s1, Instant::now(), LIMITS.take).records(), 0);
    // Acks still count while paused.
    sa.ack(s1, &[(0, vec![OffsetRange { first: 0, last: 3 }])])
        .unwrap();
    assert_eq!(sa.cursors(), vec![(0, 4)]);
    paused.paused = false;
    register(&shard, 3, Entry::Subscription(paused.clone()));
    assert_eq!(sa.take(s1, Instant::now(), LIMITS.take).records(), 4);
    // A seek while paused still ends the stream whose records it dropped.
    paused.paused = true;
    register(&shard, 4, seek(&paused, 9, &[(0, 8)]));
    let take = sa.take(s1, Instant::now(), LIMITS.take);
    assert!(take.reset && take.records() == 0);
}

#[test]
fn the_registry_reader_reaching_the_end_counts_as_applied() {
    let shard = Shard::new(LIMITS);
    register(&shard, 0, topic_entry("orders"));
    let progress = shard.registry_progress();
    assert_eq!(*progress.borrow(), 1);
    // Offsets 1..5 were compacted away: nothing to apply, and an admin write waiting for
    // them must not wait forever.
    shard.registry_reached(5);
    assert_eq!(*progress.borrow(), 5);
    shard.registry_reached(3);
    assert_eq!(*progress.borrow(), 5, "never back");
}

#[test]
fn any_change_of_a_seek_applies_and_flushes_never_undo_one() {
    let shard = Shard::new(LIMITS);
    register(&shard, 0, topic_entry("orders"));
    let Entry::Subscription(spec) = sub_entry("orders", "a", &[(0, 0)]) else {
        unreachable!()
    };
    register(&shard, 1, Entry::Subscription(spec.clone()));
    let assigned = shard.assign(&t("orders"), 0, 0, 100);
    append(&assigned.partition, 0..50);
    let (_, sa) = shard.subscription(&t("orders"), &spec.name).unwrap();
    register(&shard, 2, seek(&spec, 500, &[(0, 40)]));
    assert_eq!(sa.cursors(), vec![(0, 40)]);
    // The registry now says another seek (a lower generation: written from a stale read):
    // it applies all the same, and cursors stored under the other one stop counting.
    register(&shard, 3, seek(&spec, 7, &[(0, 10)]));
    assert_eq!(sa.cursors(), vec![(0, 10)]);
    assert_eq!(shard.durable_cursors(&sa.spec()), BTreeMap::from([(0, 10)]));
    // A flush of a cursor read before the seek does not overwrite it.
    let stale = CursorUpdate {
        subscription: spec.key(),
        incarnation: spec.created_at_ms,
        partition: 0,
        cursor: 45,
        acked: vec![],
        seek: 500,
    };
    shard.mark_stored(&[stale]);
    assert_eq!(shard.durable_cursors(&sa.spec()), BTreeMap::from([(0, 10)]));
    assert_eq!(shard.commit_positions(), vec![(t("orders"), 0, 10)]);
}

#[test]
fn rewind_requests_merge_and_a_repositioning_is_never_lost() {
    let shard = Shard::new(LIMITS);
    register(&shard, 0, topic_entry("orders"));
    let assigned = shard.assign(&t("orders"), 0, 0, 50);
    let owned = &assigned.partition;
    append(owned, 50..60);
    // Nobody pins it: the window starts at its head.
    assert_eq!(owned.log.start(), 60);
    owned.request_move_back(60);
    assert!(!owned.rewind_needed(), "the window covers 60 already");
    owned.request_move_back(10);
    assert!(owned.rewind_needed(), "10 is below the window");
    owned.request_rewind(70);
    assert_eq!(
        owned.take_rewind(),
        Some(Rewind {
            offset: 10,
            reposition: true
        }),
        "the lowest offset, and repositioning if any request was"
    );
    assert_eq!(owned.take_rewind(), None);
    owned.request_rewind(60);
    assert!(
        owned.rewind_needed(),
        "a repositioning needs the reader even inside the window"
    );
}
