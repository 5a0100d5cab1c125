use super::*;

fn topic(name: &str) -> Entry {
    Entry::Topic(TopicSpec {
        name: TopicName::new(name).unwrap(),
        created_at_ms: 1,
        default_start: None,
        unknown: Default::default(),
    })
}

fn sub(t: &str, n: &str) -> Entry {
    Entry::Subscription(SubscriptionSpec {
        topic: TopicName::new(t).unwrap(),
        name: SubscriptionName::new(n).unwrap(),
        start: StartPosition::Latest,
        start_timestamp_ms: None,
        start_offsets: StartOffsets([(0, 10), (1, 12)].into_iter().collect()),
        created_at_ms: 2,
        delivery: Default::default(),
        paused: false,
        seeks: Default::default(),
        redrive: None,
        unknown: Default::default(),
    })
}

fn put(r: &mut Registry, e: &Entry) -> Result<Option<Change>, DecodeError> {
    r.apply(e.key().encode().as_bytes(), Some(&e.encode()))
}

#[test]
fn entries_round_trip_and_report_changes() {
    let mut r = Registry::default();
    assert!(matches!(
        put(&mut r, &topic("orders")),
        Ok(Some(Change::TopicAdded(_)))
    ));
    assert_eq!(
        put(&mut r, &topic("orders")),
        Ok(None),
        "re-applying changes nothing"
    );
    let s = sub("orders", "billing");
    assert!(matches!(
        put(&mut r, &s),
        Ok(Some(Change::SubscriptionAdded(_)))
    ));
    put(&mut r, &sub("orders", "audit")).unwrap();
    put(&mut r, &topic("payments")).unwrap();
    put(&mut r, &sub("payments", "billing")).unwrap();
    let orders = TopicName::new("orders").unwrap();
    let names: Vec<_> = r
        .subscriptions_of(&orders)
        .map(|s| s.name.to_string())
        .collect();
    assert_eq!(names, ["audit", "billing"]);
    let Entry::Subscription(spec) = s else {
        unreachable!()
    };
    assert_eq!(r.subscription(&spec.key()), Some(&spec));
}

#[test]
fn tombstones_delete() {
    let mut r = Registry::default();
    put(&mut r, &topic("orders")).unwrap();
    let change = r.apply(b"topic:orders", None).unwrap();
    assert_eq!(
        change,
        Some(Change::TopicRemoved(TopicName::new("orders").unwrap()))
    );
    assert_eq!(r.apply(b"topic:orders", None), Ok(None));
}

#[test]
fn unreadable_records_change_nothing() {
    let mut r = Registry::default();
    assert!(matches!(
        r.apply(b"bogus", Some(b"{}")),
        Err(DecodeError::Key(_))
    ));
    assert!(matches!(
        r.apply(b"topic:a/b", Some(b"{}")),
        Err(DecodeError::Key(_))
    ));
    assert!(matches!(
        r.apply(b"topic:orders", Some(b"{\"version\":1,\"kind\":\"topic\"}")),
        Err(DecodeError::Value { .. })
    ));
    assert!(matches!(
        r.apply(b"topic:orders", Some(b"{\"version\":9,\"kind\":\"topic\"}")),
        Err(DecodeError::NewerVersion { version: 9, .. })
    ));
    let other = topic("payments").encode();
    assert!(matches!(
        r.apply(b"topic:orders", Some(&other)),
        Err(DecodeError::KeyMismatch { .. })
    ));
    assert_eq!(r.topics().count(), 0);
}

#[test]
fn stored_format_is_stable() {
    let json: serde_json::Value =
        serde_json::from_slice(&sub("orders", "billing").encode()).unwrap();
    assert_eq!(
        json,
        serde_json::json!({
            "version": 1,
            "kind": "subscription",
            "topic": "orders",
            "name": "billing",
            "start": "latest",
            "start_offsets": {"0": 10, "1": 12},
            "created_at_ms": 2,
            "delivery": {"ordering": "partition", "ack_timeout_ms": 30000, "max_attempts": 0, "dead_letter_topic": null}
        })
    );
    // Byte for byte, in field order, as before fields of newer builds were kept.
    assert_eq!(
        String::from_utf8(sub("orders", "billing").encode()).unwrap(),
        r#"{"version":1,"kind":"subscription","topic":"orders","name":"billing","start":"latest","start_offsets":{"0":10,"1":12},"created_at_ms":2,"delivery":{"ordering":"partition","ack_timeout_ms":30000,"max_attempts":0,"dead_letter_topic":null}}"#
    );
    // Entries written before the delivery policy existed read with its defaults.
    let mut r = Registry::default();
    let old = br#"{"version":1,"kind":"subscription","topic":"orders","name":"billing","start":"latest","start_offsets":{"0":10,"1":12},"created_at_ms":2}"#;
    r.apply(b"subscription:orders:billing", Some(old)).unwrap();
    let key = SubscriptionKey {
        topic: TopicName::new("orders").unwrap(),
        name: SubscriptionName::new("billing").unwrap(),
    };
    assert_eq!(
        r.subscription(&key).unwrap().delivery,
        DeliveryPolicy::default()
    );
}

#[test]
fn fields_this_build_does_not_know_are_kept_through_a_read_and_a_write() {
    let newer = br#"{"version":1,"kind":"subscription","topic":"orders","name":"billing","start":"latest","start_offsets":{"0":10},"created_at_ms":2,"sharing":{"group":"g"},"delivery":{"ordering":"key","ack_timeout_ms":1000,"max_attempts":0,"dead_letter_topic":null,"priority":3},"seeks":{"0":{"generation":4,"offset":11,"at_ms":4,"by":"x"}},"redrive":{"dead_letter_topic":"orders.dlq","next":{"0":1},"batch":7}}"#;
    let mut r = Registry::default();
    r.apply(b"subscription:orders:billing", Some(newer))
        .unwrap();
    let key = SubscriptionKey {
        topic: TopicName::new("orders").unwrap(),
        name: SubscriptionName::new("billing").unwrap(),
    };
    let spec = r.subscription(&key).unwrap().clone();
    assert_eq!(spec.delivery.ack_timeout_ms, 1000);
    assert_eq!(spec.seeks[&0].offset, 11);
    let written: serde_json::Value = serde_json::from_slice(
        &Entry::Subscription(SubscriptionSpec {
            paused: true,
            ..spec
        })
        .encode(),
    )
    .unwrap();
    let mut want: serde_json::Value = serde_json::from_slice(newer).unwrap();
    want["paused"] = serde_json::json!(true);
    assert_eq!(written, want);
    // A topic's too.
    let newer_topic =
        br#"{"version":1,"kind":"topic","name":"orders","created_at_ms":1,"retention_hint":"7d"}"#;
    r.apply(b"topic:orders", Some(newer_topic)).unwrap();
    let t = r.topic(&TopicName::new("orders").unwrap()).unwrap().clone();
    let written: serde_json::Value = serde_json::from_slice(&Entry::Topic(t).encode()).unwrap();
    assert_eq!(
        written,
        serde_json::from_slice::<serde_json::Value>(newer_topic).unwrap()
    );
}

#[test]
fn updates_and_replacements_are_told_apart_and_seeks_round_trip() {
    let mut r = Registry::default();
    put(&mut r, &topic("orders")).unwrap();
    let Entry::Subscription(spec) = sub("orders", "billing") else {
        unreachable!()
    };
    put(&mut r, &Entry::Subscription(spec.clone())).unwrap();
    let mut moved = spec.clone();
    moved.paused = true;
    moved.seeks.insert(
        1,
        PartitionSeek {
            generation: 1,
            offset: 40,
            at_ms: 5,
            unknown: Default::default(),
        },
    );
    assert_eq!(
        put(&mut r, &Entry::Subscription(moved.clone())),
        Ok(Some(Change::SubscriptionUpdated {
            old: spec.clone(),
            new: moved.clone()
        }))
    );
    assert_eq!(r.subscription(&spec.key()), Some(&moved));
    assert_eq!((moved.start_of(1), moved.seek_generation(1)), (Some(40), 1));
    assert_eq!((moved.start_of(0), moved.seek_generation(0)), (Some(10), 0));
    // Same name, another life.
    let again = SubscriptionSpec {
        created_at_ms: 3,
        ..spec.clone()
    };
    assert_eq!(
        put(&mut r, &Entry::Subscription(again.clone())),
        Ok(Some(Change::SubscriptionReplaced(again)))
    );
    // Values from before pause and seeks existed still read, and write no such fields.
    let plain = Entry::Subscription(spec).encode();
    let text = String::from_utf8(plain).unwrap();
    assert!(
        !text.contains("paused") && !text.contains("seeks"),
        "{text}"
    );
    // Nonsense partitions are refused.
    let bad = text.replacen(
        "\"delivery\"",
        "\"seeks\":{\"-1\":{\"generation\":1,\"offset\":1,\"at_ms\":0}},\"delivery\"",
        1,
    );
    assert!(
        r.apply(b"subscription:orders:billing", Some(bad.as_bytes()))
            .is_err()
    );
}
