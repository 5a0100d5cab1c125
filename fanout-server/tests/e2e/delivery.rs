//! Every record reaches every subscription; starts are explicit.

use std::collections::BTreeSet;

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_subscription_gets_every_record() {
    let topic = name("fan");
    create_topic(&topic, 4).await;
    let server = TestServer::start(&name("c")).await;
    let admin = server.admin_api();
    admin.register(&topic).await;
    // Half the records exist before the subscriptions, half are produced after.
    let mut want = produce(&topic, 0, 5_000).await;
    let subs = ["a", "b", "c"];
    for s in subs {
        admin.subscribe(&topic, s, "earliest").await;
    }
    want.extend(produce(&topic, 5_000, 5_000).await);
    assert_eq!(want.len(), 10_000);

    let mut tasks = Vec::new();
    for s in subs {
        let mut sub = subscriber(&server.grpc, &topic, s, 500).await;
        let want = want.clone();
        tasks.push(tokio::spawn(async move {
            let mut got = Received::default();
            receive_all(&mut sub, &want, &mut got).await;
            sub.close().await;
            got
        }));
    }
    for (s, t) in subs.iter().zip(tasks) {
        let got = t.await.unwrap();
        assert_eq!(
            got.unique, want,
            "subscription {s}: (partition, offset) sets differ"
        );
        println!(
            "subscription {s}: {} records, {} duplicates",
            got.unique.len(),
            got.duplicates()
        );
    }
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn start_latest_receives_only_newer_records() {
    let topic = name("latest");
    create_topic(&topic, 3).await;
    let server = TestServer::start(&name("c")).await;
    let admin = server.admin_api();
    admin.register(&topic).await;
    let old = produce(&topic, 0, 300).await;
    let created = admin.subscribe(&topic, "late", "latest").await;
    let starts = &created["start_offsets"];
    let newer = produce(&topic, 300, 300).await;
    for (p, o) in &newer {
        assert!(*o >= starts[p.to_string()].as_i64().unwrap());
    }
    let mut sub = subscriber(&server.grpc, &topic, "late", 100).await;
    let mut got = Received::default();
    receive_all(&mut sub, &newer, &mut got).await;
    // Partition order: anything older would have come before the newer records.
    let stale: BTreeSet<_> = got.unique.intersection(&old).collect();
    assert!(
        stale.is_empty(),
        "records from before the subscription: {stale:?}"
    );
    assert_eq!(got.unique, newer);
    sub.close().await;
    server.stop().await.unwrap();
}
