use super::*;

#[test]
fn topic_names_follow_kafka_rules() {
    assert!(TopicName::new("site-events.v1_2").is_ok());
    assert_eq!(TopicName::new(""), Err(NameError::Empty { what: "topic" }));
    assert!(matches!(
        TopicName::new(&"a".repeat(250)),
        Err(NameError::TooLong {
            len: 250,
            max: 249,
            ..
        })
    ));
    for bad in ["a/b", "a b", "ü", "x:y"] {
        assert!(
            matches!(TopicName::new(bad), Err(NameError::BadChar { .. })),
            "{bad} accepted"
        );
    }
    assert_eq!(TopicName::new(".."), Err(NameError::Dots { what: "topic" }));
    assert!(matches!(
        TopicName::new("__fanout_registry"),
        Err(NameError::Internal { .. })
    ));
}

#[test]
fn subscription_names_are_bounded() {
    assert!(SubscriptionName::new("bookings").is_ok());
    assert!(SubscriptionName::new(&"s".repeat(128)).is_ok());
    assert!(SubscriptionName::new(&"s".repeat(129)).is_err());
    assert!(SubscriptionName::new("a..b").is_ok());
    assert!(SubscriptionName::new("..").is_err());
}

#[test]
fn names_deserialize_through_validation() {
    let ok: TopicName = serde_json::from_str("\"orders\"").unwrap();
    assert_eq!(ok.as_str(), "orders");
    assert!(serde_json::from_str::<TopicName>("\"a/b\"").is_err());
}

#[test]
fn record_size_counts_payloads_and_overhead() {
    let r = Record {
        partition: 0,
        offset: 1,
        key: Some(Bytes::from_static(b"k")),
        value: Some(Bytes::from_static(b"value")),
        headers: vec![Header {
            key: "h".into(),
            value: Some(Bytes::from_static(b"vv")),
        }]
        .into(),
        timestamp: None,
        wire: Bytes::new(),
    };
    assert_eq!(r.size(), 1 + 5 + 1 + 2 + 32);
}
