use std::collections::HashMap;

use super::model::{CursorRecord, Delivery, Event, Produced, RunMeta, ShardMeta, SubscriptionMeta};
use super::*;

fn produced(topic: &str, partition: i32, offsets: &[i64]) -> Vec<Produced> {
    offsets
        .iter()
        .enumerate()
        .map(|(i, &offset)| Produced {
            topic: topic.into(),
            partition,
            offset,
            seq: i as u64,
            at_ms: 0,
        })
        .collect()
}

fn d(sub: &str, partition: i32, offset: i64, shard: &str, at_ms: i64) -> Delivery {
    Delivery {
        topic: "t".into(),
        subscription: sub.into(),
        partition,
        offset,
        attempt: 1,
        shard: shard.into(),
        at_ms,
        seq: None,
    }
}

fn subs(names: &[&str]) -> Vec<SubscriptionMeta> {
    names
        .iter()
        .map(|n| SubscriptionMeta {
            topic: "t".into(),
            name: (*n).into(),
        })
        .collect()
}

#[test]
fn counts_lost_duplicates_and_max_deliveries() {
    let p = produced("t", 0, &[0, 1, 2, 3]);
    let del = vec![
        d("a", 0, 0, "s0", 1),
        d("a", 0, 1, "s0", 2),
        d("a", 0, 1, "s1", 3),
        d("a", 0, 1, "s1", 4),
        d("a", 0, 3, "s1", 5),
        // Another subscription's deliveries do not count for `a`.
        d("b", 0, 2, "s0", 6),
    ];
    let s = count(&p, &del, &subs(&["a", "b"]));
    assert_eq!(s[0].produced, 4);
    assert_eq!(s[0].delivered_unique, 3);
    assert_eq!(s[0].deliveries, 5);
    assert_eq!(s[0].lost, 1);
    assert_eq!(s[0].lost_examples, vec![(0, 2)]);
    assert_eq!(s[0].duplicates, 2);
    assert_eq!(s[0].max_deliveries, 3);
    assert_eq!(s[0].order_inversions, 0);
    assert_eq!(s[1].lost, 3);
    assert_eq!(s[1].duplicates, 0);
}

#[test]
fn records_never_produced_or_with_another_sequence_are_unexpected() {
    let p = produced("t", 0, &[0, 1]);
    let mut wrong_seq = d("a", 0, 1, "s0", 2);
    wrong_seq.seq = Some(7);
    let del = vec![d("a", 0, 0, "s0", 1), wrong_seq, d("a", 0, 9, "s0", 3)];
    let s = count(&p, &del, &subs(&["a"]));
    assert_eq!(s[0].unexpected, 2);
    // Offset 1 came with another sequence number: not the produced record.
    assert_eq!(s[0].lost, 1);
    assert_eq!(s[0].delivered_unique, 3);
}

#[test]
fn inversions_count_first_deliveries_below_an_earlier_first_delivery_per_partition() {
    let mut p = produced("t", 0, &[0, 1, 2, 3]);
    p.extend(produced("t", 1, &[0, 1]));
    let del = vec![
        d("a", 0, 0, "s0", 1),
        d("a", 0, 2, "s0", 2),
        d("a", 1, 1, "s0", 3),
        // Lower than 2 on partition 0: an inversion.
        d("a", 0, 1, "s0", 4),
        // A redelivery of a lower offset is a duplicate, not an inversion.
        d("a", 0, 0, "s1", 5),
        d("a", 0, 3, "s1", 6),
        // Partition 1 has its own order: 0 after 1 is an inversion there.
        d("a", 1, 0, "s1", 7),
    ];
    let s = count(&p, &del, &subs(&["a"]));
    assert_eq!(s[0].order_inversions, 2);
    assert_eq!(s[0].duplicates, 1);
    assert_eq!(s[0].lost, 0);
}

fn cursor(offset: i64, key: &str, cursor: i64, seek: u64) -> CursorRecord {
    CursorRecord {
        partition: 0,
        offset,
        key: key.into(),
        cursor,
        seek,
        subscription_created_at_ms: Some(1),
        shard: None,
        timestamp_ms: None,
    }
}

fn written(offset: i64, key: &str, value: i64, shard: &str, at: i64) -> CursorRecord {
    CursorRecord {
        shard: Some(shard.into()),
        timestamp_ms: Some(at),
        ..cursor(offset, key, value, 0)
    }
}

#[test]
fn a_zombie_cursor_is_one_written_before_waking_and_visible_after_a_takeover() {
    // shard-0 stopped at 100, woke at 200; shard-1 took t:0 over at 150.
    let records = vec![
        written(0, "t:0:s", 10, "shard-0", 90),
        written(1, "t:1:s", 12, "shard-0", 95),
        written(2, "t:0:s", 20, "shard-1", 150),
        // Written before the stop, committed after the takeover: a zombie's write.
        written(3, "t:0:s", 15, "shard-0", 99),
        // Not taken over by anyone: its own partition, not a zombie write.
        written(4, "t:1:s", 13, "shard-0", 98),
        // After waking, t:0 given back to it: legitimate.
        written(5, "t:0:s", 30, "shard-0", 250),
    ];
    let given_back: HashMap<(String, i32), i64> = [(("t".to_owned(), 0), 240)].into();
    let bad = crate::check::zombie_cursor_writes(&records, "shard-0", 100, 200, &given_back);
    assert_eq!(bad.len(), 1);
    assert_eq!((bad[0].offset, bad[0].cursor), (3, 15));
    // Written after waking but before (or without) being given the partition back: also a
    // zombie's write.
    let bad = crate::check::zombie_cursor_writes(&records, "shard-0", 100, 200, &HashMap::new());
    assert_eq!(bad.iter().map(|r| r.offset).collect::<Vec<_>>(), vec![3, 5]);
    let late: HashMap<(String, i32), i64> = [(("t".to_owned(), 0), 900)].into();
    let bad = crate::check::zombie_cursor_writes(&records, "shard-0", 100, 200, &late);
    assert_eq!(bad.len(), 2);
}

#[test]
fn stale_deliveries_are_the_zombies_after_waking_that_others_made_too() {
    let d = |shard: &str, offset: i64, at: i64| Delivery {
        topic: "t".into(),
        subscription: "s".into(),
        partition: 0,
        offset,
        attempt: 1,
        shard: shard.into(),
        at_ms: at,
        seq: None,
    };
    let z = "http://127.0.0.1:1";
    let deliveries = vec![
        d(z, 1, 50),                     // before the stop
        d("http://127.0.0.1:2", 1, 150), // redelivered by the new owner
        d(z, 1, 210),                    // stale: after waking, delivered by another too
        d(z, 2, 220),                    // its own, new record after waking
    ];
    assert_eq!(crate::check::stale_deliveries(&deliveries, z, 200), 1);
}

#[test]
fn a_cursor_lower_than_an_earlier_one_of_the_same_seek_is_a_regression() {
    let records = vec![
        cursor(0, "t:0:a", 10, 0),
        cursor(1, "t:0:a", 20, 0),
        cursor(2, "t:1:a", 5, 0),
        // A seek back starts a new generation: lower is fine.
        cursor(3, "t:0:a", 3, 1),
        cursor(4, "t:0:a", 4, 1),
        // Back below the highest of generation 0: a regression.
        cursor(5, "t:0:a", 15, 0),
        // Equal is not lower.
        cursor(6, "t:1:a", 5, 0),
        // Below 4 in generation 1.
        cursor(7, "t:0:a", 2, 1),
    ];
    let r = cursor_regressions(&records);
    assert_eq!(r.len(), 2);
    assert_eq!(
        (r[0].key.as_str(), r[0].from, r[0].to, r[0].offset),
        ("t:0:a", 20, 15, 5)
    );
    assert_eq!((r[1].seek, r[1].from, r[1].to), (1, 4, 2));
    // A subscription created again starts over.
    let mut again = cursor(8, "t:0:a", 1, 0);
    again.subscription_created_at_ms = Some(2);
    assert_eq!(
        cursor_regressions(&[cursor(0, "t:0:a", 9, 0), again]).len(),
        0
    );
}

fn meta(scenario: &str, events: Vec<Event>) -> RunMeta {
    RunMeta {
        scenario: scenario.into(),
        cluster: "c".into(),
        shards: (0..2)
            .map(|i| ShardMeta {
                id: format!("shard-{i}"),
                grpc: format!("http://127.0.0.1:500{i}"),
                admin: String::new(),
            })
            .collect(),
        topics: vec!["t".into()],
        partitions: 2,
        subscriptions: subs(&["a", "b"]),
        rate: 100,
        session_timeout_ms: 6000,
        drain_timeout_ms: 5000,
        cursor_flush_interval_ms: 1000,
        credits: 10,
        started_at_ms: 0,
        produce_failures: 0,
        events,
    }
}

fn event(kind: &str, shard: usize, at_ms: i64, partitions: &[i32]) -> Event {
    Event {
        at_ms,
        kind: kind.into(),
        shard: Some(shard),
        partitions: if partitions.is_empty() {
            Default::default()
        } else {
            [("t".to_owned(), partitions.to_vec())].into()
        },
        detail: String::new(),
    }
}

#[test]
fn failover_measures_recovery_from_live_owners_and_bounds_duplicates() {
    let (s0, s1) = ("127.0.0.1:5000", "http://127.0.0.1:5001/");
    let m = meta(
        "kill-busiest",
        vec![
            event("kill", 1, 10_000, &[1]),
            event("start", 1, 20_000, &[]),
        ],
    );
    let del = vec![
        // Before the window (kill - 3 s): flushed long ago.
        d("a", 1, 0, s1, 5_000),
        // In the window: may come again.
        d("a", 1, 1, s1, 8_000),
        d("b", 1, 1, s1, 9_500),
        // Drained from the client's buffer after the kill: in the window, not a recovery.
        d("a", 1, 2, s1, 10_100),
        // The new owner.
        d("a", 1, 1, s0, 16_000),
        d("b", 1, 1, s0, 17_500),
        // Partition 0 was not orphaned.
        d("a", 0, 0, s1, 9_000),
    ];
    let f = failover(&m, &del).unwrap();
    assert_eq!(f.recovery, vec![("t".into(), 1, Some(6_000), Some(7_500))]);
    assert_eq!(f.max_recovery_ms(), Some(7_500));
    assert_eq!(f.window_ms, 3_000);
    assert_eq!(
        f.unflushed,
        vec![("t/a".to_owned(), 3), ("t/b".to_owned(), 1)]
    );
    assert_eq!(f.duplicate_bound(), 4 + 2 * 10);

    // Served again only by the restarted shard: that counts once it was restarted.
    let late = vec![d("a", 1, 5, s1, 21_000)];
    let f = failover(&m, &late).unwrap();
    assert_eq!(f.recovery, vec![("t".into(), 1, Some(11_000), None)]);
    assert_eq!(f.max_recovery_ms(), None);
}

#[test]
fn the_report_ends_with_pass_and_fail_counts_per_scenario() {
    let input = Input {
        scenario: "pause".into(),
        produced: produced("t", 0, &[0, 1]),
        delivered: vec![
            d("a", 0, 0, "s0", 1),
            d("a", 0, 1, "s0", 2),
            d("b", 0, 0, "s0", 1),
        ],
        meta: Some(meta("pause", vec![])),
        cursors: Some(vec![cursor(0, "t:0:a", 2, 0), cursor(1, "t:0:a", 1, 0)]),
    };
    let r = analyse(&input);
    let text = r.render();
    assert!(text.contains("PASS produced:"), "{text}");
    assert!(text.contains("PASS settled:"), "{text}");
    assert!(text.contains("PASS steps:"), "{text}");
    assert!(text.contains("FAIL lost: 1 of 4 records"), "{text}");
    assert!(
        text.contains("FAIL cursors: 1 cursors moved backwards"),
        "{text}"
    );
    // The run's events say nothing of a stopped shard.
    assert!(text.contains("FAIL zombie: no stop and cont"), "{text}");
    assert!(text.trim_end().ends_with("4 passed, 3 failed"), "{text}");
    assert_eq!(r.total.lost, 1);

    let clean = Input {
        scenario: "rolling-term".into(),
        produced: produced("t", 0, &[0]),
        delivered: vec![
            d("a", 0, 0, "s0", 1),
            d("b", 0, 0, "s0", 1),
            d("b", 0, 0, "s1", 2),
        ],
        meta: Some(meta("rolling-term", vec![])),
        cursors: None,
    };
    let r = analyse(&clean);
    assert_eq!(r.failed(), 2, "{}", r.render());
    assert!(r.render().contains("FAIL duplicates: 1"));
    // No shard exit was recorded: nothing shows the SIGTERMs were graceful.
    assert!(r.render().contains("FAIL graceful"));
}

#[test]
fn jsonl_round_trips() {
    let dir = std::env::temp_dir().join(format!("fanout-check-{}", rand::random::<u64>()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("delivered.jsonl");
    let rows = vec![d("a", 0, 1, "s0", 5), d("b", 1, 2, "s1", 6)];
    model::write_jsonl(&path, &rows).unwrap();
    let back: Vec<Delivery> = model::read_jsonl(&path).unwrap();
    assert_eq!(back, rows);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn duplicates_are_attributed_to_the_last_fault_before_them() {
    let m = meta(
        "kill-busiest",
        vec![
            event("settled", 0, 500, &[]),
            event("kill", 1, 1_000, &[1]),
            event("start", 1, 3_000, &[]),
        ],
    );
    let del = vec![
        d("a", 0, 0, "s0", 100),
        d("a", 0, 0, "s0", 200),
        d("a", 0, 1, "s0", 900),
        d("a", 0, 1, "s0", 1_500),
        d("b", 0, 1, "s0", 1_600),
        d("a", 0, 1, "s0", 3_500),
    ];
    let got = duplicates_after_events(&m, &del);
    assert_eq!(
        got,
        vec![
            ("start of the run".to_owned(), 1),
            ("+1.0s kill shard-1".to_owned(), 1),
            ("+3.0s start shard-1".to_owned(), 1),
        ]
    );
}
