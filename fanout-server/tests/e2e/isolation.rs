//! A stalled subscription holds neither the others nor memory: it leaves the shared window
//! for the catch-up path and still receives everything once it reads again.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use crate::support::*;

const WINDOW: usize = 64 << 10;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stalled_subscription_holds_back_neither_others_nor_memory_and_loses_nothing() {
    let topic = name("iso");
    create_topic(&topic, 2).await;
    let mut cfg = config(&name("c"));
    cfg.partition_window_bytes = WINDOW;
    cfg.catch_up_window_bytes = WINDOW;
    let server = TestServer::start_with(cfg).await;
    let admin = server.admin_api();
    admin.register(&topic).await;
    admin.subscribe(&topic, "fast", "earliest").await;
    admin.subscribe(&topic, "stalled", "earliest").await;

    // The stalled subscriber takes its 100 credits' worth and then stops reading: the
    // records stay in flight and its connection stays open.
    let mut stalled = subscriber(&server.grpc, &topic, "stalled", 100).await;
    let mut want = produce(&topic, 0, 200).await;
    let mut held = Vec::new();
    let mut got_stalled = Received::default();
    while held.len() < 100 {
        let r = tokio::time::timeout(WAIT, stalled.next())
            .await
            .expect("first records in time")
            .unwrap()
            .unwrap();
        note(&mut got_stalled, &r);
        held.push(r);
    }

    // Memory is sampled all along (a measurement, not a synchronisation).
    let peak_window = Arc::new(AtomicU64::new(0));
    let peak_catch_up = Arc::new(AtomicU64::new(0));
    let sampling = Arc::new(AtomicBool::new(true));
    let sampler = {
        let (admin, w, c, on) = (
            server.admin_api(),
            peak_window.clone(),
            peak_catch_up.clone(),
            sampling.clone(),
        );
        tokio::spawn(async move {
            for _ in 0..6_000 {
                if !on.load(Ordering::Relaxed) {
                    break;
                }
                let (_, shard) = admin.get("/v1/shard").await;
                w.fetch_max(shard["window_bytes"].as_u64().unwrap(), Ordering::Relaxed);
                c.fetch_max(shard["catch_up_bytes"].as_u64().unwrap(), Ordering::Relaxed);
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
        })
    };

    // ~1 MB of records: far more than the 64 KiB windows of the two partitions.
    want.extend(produce(&topic, 200, 20_000).await);
    let mut fast = subscriber(&server.grpc, &topic, "fast", 1000).await;
    let mut got_fast = Received::default();
    receive_all(&mut fast, &want, &mut got_fast).await;
    assert_eq!(
        got_fast.unique, want,
        "the fast subscription got everything"
    );
    let view = admin
        .get(&format!("/v1/topics/{topic}/subscriptions/stalled"))
        .await
        .1;
    assert!(
        !view["catching_up"].as_array().unwrap().is_empty(),
        "the stalled subscription left the shared window: {view}"
    );

    // It reads again: everything, nothing lost.
    for r in &held {
        stalled.ack(r);
    }
    receive_all(&mut stalled, &want, &mut got_stalled).await;
    assert_eq!(
        got_stalled.unique, want,
        "the stalled subscription got everything"
    );
    sampling.store(false, Ordering::Relaxed);
    sampler.await.unwrap();

    let (peak_w, peak_c) = (
        peak_window.load(Ordering::Relaxed),
        peak_catch_up.load(Ordering::Relaxed),
    );
    println!(
        "records {}, fast duplicates {}, stalled duplicates {}, peak shared window {} B, peak catch-up {} B",
        want.len(),
        got_fast.duplicates(),
        got_stalled.duplicates(),
        peak_w,
        peak_c
    );
    // Two partitions, each window within its budget (an empty window may take one batch of
    // any size, which these small records never reach).
    assert!(
        peak_w <= 2 * WINDOW as u64,
        "shared windows peaked at {peak_w} B"
    );
    // Catch-up windows: two live ones within budget, plus at most one closed one (the
    // subscription rejoined, or started over) until its catch-up reader lets go of it.
    assert!(
        peak_c <= 3 * WINDOW as u64,
        "catch-up windows peaked at {peak_c} B"
    );
    // The catch-up readers are shared: once the stalled subscription is back, no private
    // window stays behind.
    eventually(
        "the stalled subscription rejoins the shared window",
        || async {
            let view = admin
                .get(&format!("/v1/topics/{topic}/subscriptions/stalled"))
                .await
                .1;
            view["catching_up"]
                .as_array()
                .unwrap()
                .is_empty()
                .then_some(())
        },
    )
    .await;
    fast.close().await;
    stalled.close().await;
    server.stop().await.unwrap();
}
