//! Ack timeout and nack redeliver with rising attempt numbers; records out of attempts go
//! to the dead-letter topic with their provenance in headers, and are not delivered again.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rdkafka::message::{Headers, Message};
use serde_json::json;

use crate::support::*;

/// Reads `n` records of a one-partition topic from the beginning: (key, value, headers).
async fn read_topic(topic: &str, n: usize) -> Vec<(Vec<u8>, Vec<u8>, BTreeMap<String, String>)> {
    let topic = topic.to_owned();
    tokio::task::spawn_blocking(move || {
        let c = reader_from_start(&topic, "test-dlq-reader", false);
        let mut out = Vec::new();
        let deadline = Instant::now() + WAIT;
        while out.len() < n {
            assert!(Instant::now() < deadline, "reading {topic} timed out");
            if let Some(m) = c.poll(Duration::from_millis(500)) {
                let m = m.unwrap();
                let headers = m
                    .headers()
                    .map(|hs| {
                        hs.iter()
                            .map(|h| {
                                let v = h.value.map(|v| String::from_utf8_lossy(v).into_owned());
                                (h.key.to_owned(), v.unwrap_or_default())
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                out.push((
                    m.key().unwrap_or_default().to_vec(),
                    m.payload().unwrap_or_default().to_vec(),
                    headers,
                ));
            }
        }
        out
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn timeouts_and_nacks_redeliver_then_dead_letter_with_headers() {
    let topic = name("redeliver");
    let dlq = name("dlq");
    create_topic(&topic, 1).await;
    create_topic(&dlq, 1).await;
    let server = TestServer::start(&name("c")).await;
    let admin = server.admin_api();
    admin.register(&topic).await;
    let path = format!("/v1/topics/{topic}/subscriptions");

    // Bad policies are refused and create nothing.
    for (body, field) in [
        (json!({"name": "s", "max_attempts": 3}), "dead_letter_topic"),
        (
            json!({"name": "s", "dead_letter_topic": dlq}),
            "max_attempts",
        ),
        (
            json!({"name": "s", "max_attempts": 3, "dead_letter_topic": topic}),
            "dead_letter_topic",
        ),
        (
            json!({"name": "s", "max_attempts": 3, "dead_letter_topic": name("missing")}),
            "dead_letter_topic!",
        ),
        (json!({"name": "s", "ack_timeout_ms": 0}), "ack_timeout_ms"),
        (
            json!({"name": "s", "max_attempts": 100_000, "dead_letter_topic": dlq}),
            "max_attempts",
        ),
    ] {
        let (status, problem) = admin.post(&path, body.clone()).await;
        // "!": well-formed but impossible (a topic Kafka lacks): 422; the rest are bad fields.
        let (want, field) = match field.strip_suffix('!') {
            Some(f) => (422, f),
            None => (400, field),
        };
        assert_eq!(status, want, "{body}: {problem}");
        assert_eq!(problem["field"], field, "{body}: {problem}");
    }
    assert_eq!(admin.get(&format!("{path}/s")).await.0, 404);

    let (status, created) = admin
        .post(
            &path,
            json!({"name": "s", "start": "earliest", "ack_timeout_ms": 500,
                   "max_attempts": 3, "dead_letter_topic": dlq}),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["delivery"]["max_attempts"], 3);
    // Offset 0 is acked, 1 is never acked (it times out), 2 is nacked every time.
    let want = produce(&topic, 0, 3).await;
    assert_eq!(want.len(), 3);
    let mut sub = subscriber(&server.grpc, &topic, "s", 10).await;
    let mut attempts: BTreeMap<i64, Vec<u32>> = BTreeMap::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    while attempts.get(&1).map_or(0, Vec::len) < 3 || attempts.get(&2).map_or(0, Vec::len) < 3 {
        let r = tokio::time::timeout_at(deadline, sub.next())
            .await
            .expect("redeliveries in time")
            .unwrap()
            .unwrap();
        attempts.entry(r.offset).or_default().push(r.attempt);
        match r.offset {
            0 => sub.ack(&r),
            2 => sub.nack(&r, Duration::ZERO),
            _ => {}
        }
    }
    assert_eq!(attempts[&0], vec![1]);
    assert_eq!(attempts[&1], vec![1, 2, 3], "ack timeout redelivers");
    assert_eq!(attempts[&2], vec![1, 2, 3], "nack redelivers");

    // Both go to the dead-letter topic, with where they came from and why.
    let letters = read_topic(&dlq, 2).await;
    let by_offset: BTreeMap<String, _> = letters
        .iter()
        .map(|(k, v, h)| (h["fanout.dlq.source.offset"].clone(), (k, v, h)))
        .collect();
    for (offset, reason) in [("1", "ack_timeout"), ("2", "nacked")] {
        let (key, value, h) = by_offset[offset];
        assert_eq!(h["fanout.dlq.reason"], reason);
        assert_eq!(h["fanout.dlq.attempts"], "3");
        assert_eq!(h["fanout.dlq.subscription"], "s");
        assert_eq!(h["fanout.dlq.source.topic"], topic);
        assert_eq!(h["fanout.dlq.source.partition"], "0");
        assert_eq!(key.as_slice(), format!("key-{offset}").as_bytes());
        assert_eq!(value.as_slice(), format!("value-{offset}").as_bytes());
    }
    // Dead letters count as done: the cursor passes them and nothing comes again.
    eventually("the cursor passes the dead letters", || async {
        (admin.cursors(&topic, "s").await.get(&0) == Some(&3)).then_some(())
    })
    .await;
    let quiet = tokio::time::timeout(Duration::from_millis(1500), sub.next()).await;
    assert!(
        quiet.is_err(),
        "nothing is delivered after dead-lettering: {quiet:?}"
    );
    println!(
        "attempts per offset: {attempts:?}; dead letters: {}",
        letters.len()
    );
    sub.close().await;
    server.stop().await.unwrap();
}
