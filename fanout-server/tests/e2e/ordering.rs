//! `ordering=key`: a key's next record waits for the previous one's ack, and keys spread
//! over every stream of the subscription — more streams than partitions all get work.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use parking_lot::Mutex;
use serde_json::json;

use crate::support::*;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Received,
    AckSent,
}

#[derive(Debug, Clone)]
struct Event {
    seq: u64,
    stream: usize,
    kind: Kind,
    key: String,
    offset: (i32, i64),
    attempt: u32,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ordering_key_keeps_each_keys_order_and_uses_every_stream() {
    const STREAMS: usize = 8;
    let topic = name("keyed");
    create_topic(&topic, 2).await;
    let server = TestServer::start(&name("c")).await;
    let admin = server.admin_api();
    admin.register(&topic).await;
    let (status, created) = admin
        .post(
            &format!("/v1/topics/{topic}/subscriptions"),
            json!({"name": "k", "start": "earliest", "ordering": "key"}),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["delivery"]["ordering"], "key");

    let events = Arc::new(Mutex::new(Vec::<Event>::new()));
    let seq = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for stream in 0..STREAMS {
        let mut sub = subscriber(&server.grpc, &topic, "k", 16).await;
        let (events, seq, done) = (events.clone(), seq.clone(), done.clone());
        tasks.push(tokio::spawn(async move {
            let deadline = tokio::time::Instant::now() + WAIT;
            while !done.load(Ordering::Acquire) && tokio::time::Instant::now() < deadline {
                let Ok(next) =
                    tokio::time::timeout(std::time::Duration::from_millis(100), sub.next()).await
                else {
                    continue;
                };
                let r = next.expect("subscriber ended").expect("subscriber error");
                let key = String::from_utf8(r.key.clone().unwrap().to_vec()).unwrap();
                let mut e = Event {
                    seq: seq.fetch_add(1, Ordering::SeqCst),
                    stream,
                    kind: Kind::Received,
                    key,
                    offset: (r.partition, r.offset),
                    attempt: r.attempt,
                };
                events.lock().push(e.clone());
                // Let other streams run between receiving and acking.
                tokio::task::yield_now().await;
                e.seq = seq.fetch_add(1, Ordering::SeqCst);
                e.kind = Kind::AckSent;
                events.lock().push(e);
                sub.ack(&r);
            }
            sub.close().await;
        }));
    }
    // All streams are open before the records exist, so each can take its share.
    let want = produce(&topic, 0, 4_000).await;
    eventually("every record is received", || async {
        let got: BTreeSet<(i32, i64)> = events.lock().iter().map(|e| e.offset).collect();
        (got == want).then_some(())
    })
    .await;
    done.store(true, Ordering::Release);
    for t in tasks {
        t.await.unwrap();
    }

    let events = events.lock().clone();
    let mut per_key: BTreeMap<&str, Vec<&Event>> = BTreeMap::new();
    for e in &events {
        per_key.entry(&e.key).or_default().push(e);
    }
    let mut checked_pairs = 0;
    for (key, es) in &per_key {
        // First deliveries of a key arrive in offset order.
        let firsts: Vec<(i32, i64)> = es
            .iter()
            .filter(|e| e.kind == Kind::Received && e.attempt == 1)
            .map(|e| e.offset)
            .collect();
        assert!(
            firsts.windows(2).all(|w| w[0] < w[1]),
            "key {key}: first deliveries out of order: {firsts:?}"
        );
        // A key's next record is received only after the previous one's ack was sent.
        for w in firsts.windows(2) {
            let acked = es
                .iter()
                .find(|e| e.kind == Kind::AckSent && e.offset == w[0])
                .unwrap_or_else(|| panic!("key {key}: {:?} never acked", w[0]));
            let next = es
                .iter()
                .find(|e| e.kind == Kind::Received && e.offset == w[1])
                .unwrap();
            assert!(
                next.seq > acked.seq,
                "key {key}: {:?} arrived before {:?} was acked",
                w[1],
                w[0]
            );
            checked_pairs += 1;
        }
    }
    let mut per_stream = [0usize; STREAMS];
    for e in events.iter().filter(|e| e.kind == Kind::Received) {
        per_stream[e.stream] += 1;
    }
    println!(
        "{} records, {} keys, {checked_pairs} consecutive pairs checked, per stream {per_stream:?}",
        want.len(),
        per_key.len()
    );
    assert!(
        per_stream.iter().all(|&n| n > 0),
        "every stream gets work: {per_stream:?}"
    );
    server.stop().await.unwrap();
}
