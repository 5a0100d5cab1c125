use super::*;

#[test]
fn keys_and_values_round_trip() {
    let sub = SubscriptionKey {
        topic: TopicName::new("orders").unwrap(),
        name: SubscriptionName::new("billing.v2").unwrap(),
    };
    let k = encode_key(&sub, 7);
    assert_eq!(k, "orders:7:billing.v2");
    assert_eq!(decode_key(k.as_bytes()), Some((sub, 7)));
    let c = StoredCursor {
        offset: 42,
        incarnation: 7,
        seek: 3,
        acked: vec![
            OffsetRange {
                first: 44,
                last: 50,
            },
            OffsetRange {
                first: 60,
                last: 60,
            },
        ],
    };
    assert_eq!(
        decode_value(&encode_value(&c, Some("shard-1"))),
        Some(c.clone())
    );
    assert!(
        String::from_utf8(encode_value(&c, Some("shard-1")))
            .unwrap()
            .contains(r#""shard":"shard-1""#)
    );
    assert_eq!(decode_value(&encode_value(&c, None)), Some(c));
    // Written before acked ranges were stored: none.
    let old = br#"{"version":1,"cursor":5,"subscription_created_at_ms":1}"#;
    assert_eq!(decode_value(old), Some(StoredCursor::at(5, 1)));
    // Nonsense ranges are dropped, not trusted.
    let bad =
        br#"{"version":1,"cursor":5,"subscription_created_at_ms":1,"acked":[[9,7],[2,3],[6,6]]}"#;
    assert_eq!(
        decode_value(bad).unwrap().acked,
        vec![OffsetRange { first: 6, last: 6 }]
    );
    assert_eq!(
        decode_value(b"{\"version\":2,\"cursor\":1,\"subscription_created_at_ms\":7}"),
        None
    );
    assert_eq!(decode_key(b"orders:x:b"), None);
}
