//! A subscriber against several shards: in-process fake gRPC shards, each serving its own
//! partition, and a fake admin API listing them. No Kafka.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod fake;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use fake::{FakeAdmin, FakeShard, WAIT, at, entry, free_addr};
use fanout_client::{Discovery, Error, Nack, Record, Subscriber, SubscriberConfig};
use serde_json::json;
use tokio::net::TcpListener;
use tonic::Code;

/// Quick reconnects and short timeouts, for tests.
fn cfg(discovery: Discovery) -> SubscriberConfig {
    let mut c = SubscriberConfig::with_discovery(discovery, "t", "s").max_in_flight(10);
    c.initial_backoff = Duration::from_millis(20);
    c.max_backoff = Duration::from_millis(200);
    c.connect_timeout = Duration::from_secs(2);
    c
}

fn both(a: &FakeShard, b: &FakeShard) -> Discovery {
    Discovery::Static(vec![a.endpoint.clone(), b.endpoint.clone()])
}

/// The next `n` records; panics if they do not come within [`WAIT`].
async fn take(sub: &mut Subscriber, n: usize) -> Vec<Record> {
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let r = tokio::time::timeout(WAIT, sub.next())
            .await
            .unwrap_or_else(|_| panic!("timed out after {} of {n} records", out.len()))
            .expect("the subscriber ended")
            .expect("a record");
        out.push(r);
    }
    out
}

#[tokio::test]
async fn records_of_every_shard_arrive_and_acks_go_to_the_shard_that_delivered_them() {
    let a = FakeShard::start(0, 3).await;
    let b = FakeShard::start(1, 3).await;
    let mut sub = Subscriber::connect(cfg(both(&a, &b))).await.unwrap();
    let got = take(&mut sub, 6).await;
    let delivered: BTreeSet<(i32, i64)> = got.iter().map(|r| (r.partition, r.offset)).collect();
    assert_eq!(delivered, &at(0, 0..3) | &at(1, 0..3));
    for r in &got {
        let from = if r.partition == 0 { &a } else { &b };
        assert_eq!(r.shard(), from.endpoint);
        assert_eq!(r.connection(), 1);
        assert_eq!(
            r.value.as_deref(),
            Some(format!("{}:{}", r.partition, r.offset).as_bytes())
        );
        if r.offset == 2 {
            sub.nack(r, Duration::ZERO);
        } else {
            sub.ack(r);
        }
    }
    for (shard, p) in [(&a, 0), (&b, 1)] {
        let seen = shard
            .wait_for("its acks and nacks", |s| {
                s.acked.len() + s.nacked.len() == 3
            })
            .await;
        assert_eq!(seen.acked, at(p, [0, 1]), "{}", shard.endpoint);
        assert_eq!(seen.nacked, at(p, [2]), "{}", shard.endpoint);
    }
    sub.close().await;
    for shard in [&a, &b] {
        let seen = shard
            .wait_for("the stream closed", |s| s.open_streams == 0)
            .await;
        assert_eq!(seen.opens, 1);
    }
}

#[tokio::test]
async fn close_sends_every_shards_last_acks() {
    // One record in flight per stream and ten per batch: each session is still handing its
    // batch over when the subscriber closes, so it has not sent the acks yet.
    let a = FakeShard::start(0, 10).await;
    let b = FakeShard::start(1, 10).await;
    let mut sub = Subscriber::connect(cfg(both(&a, &b)).max_in_flight(1))
        .await
        .unwrap();
    let mut acked = BTreeSet::new();
    while !(acked.iter().any(|&(p, _)| p == 0) && acked.iter().any(|&(p, _)| p == 1)) {
        let r = take(&mut sub, 1).await.remove(0);
        sub.ack(&r);
        acked.insert((r.partition, r.offset));
    }
    sub.close().await;
    for (shard, p) in [(&a, 0), (&b, 1)] {
        let seen = shard
            .wait_for("the stream closed", |s| s.open_streams == 0)
            .await;
        let want: BTreeSet<_> = acked.iter().filter(|r| r.0 == p).copied().collect();
        assert_eq!(seen.acked, want, "{}", shard.endpoint);
    }
}

#[tokio::test]
async fn dropping_the_subscriber_ends_every_stream() {
    let a = FakeShard::start(0, 1).await;
    let b = FakeShard::start(1, 1).await;
    let mut sub = Subscriber::connect(cfg(both(&a, &b))).await.unwrap();
    take(&mut sub, 2).await;
    drop(sub);
    for shard in [&a, &b] {
        shard
            .wait_for("the stream ended", |s| s.open_streams == 0)
            .await;
    }
}

#[tokio::test]
async fn a_shard_down_at_connect_gets_a_stream_once_it_starts() {
    let a = FakeShard::start(0, 2).await;
    let late = free_addr().await;
    let late_endpoint = format!("http://{late}");
    let discovery = Discovery::Static(vec![a.endpoint.clone(), late_endpoint.clone()]);
    let mut sub = Subscriber::connect(cfg(discovery)).await.unwrap();
    for r in take(&mut sub, 2).await {
        assert_eq!((r.shard(), r.partition), (a.endpoint.as_str(), 0));
        sub.ack(&r);
    }
    let c = FakeShard::start_on(TcpListener::bind(late).await.unwrap(), 2, 2, None);
    let got = take(&mut sub, 2).await;
    for r in &got {
        assert_eq!((r.shard(), r.partition), (late_endpoint.as_str(), 2));
        sub.ack(r);
    }
    c.wait_for("its acks", |s| s.acked == at(2, [0, 1])).await;
    a.wait_for("its acks", |s| s.acked == at(0, [0, 1])).await;
    sub.close().await;
}

#[tokio::test]
async fn a_lost_stream_reconnects_and_acks_of_the_older_connection_are_dropped() {
    let a = FakeShard::start(0, 2).await;
    let b = FakeShard::start(1, 1).await;
    let mut sub = Subscriber::connect(cfg(both(&a, &b))).await.unwrap();
    let first: Vec<Record> = take(&mut sub, 3)
        .await
        .into_iter()
        .filter(|r| r.partition == 0)
        .collect();
    a.end_streams();
    let again = take(&mut sub, 2).await;
    for r in &again {
        assert_eq!(
            (r.shard(), r.partition, r.connection()),
            (a.endpoint.as_str(), 0, 2)
        );
    }
    // Acked after the reconnect, the first connection's record is dropped; the second
    // connection's, sent after it, arrives.
    sub.ack(&first[0]);
    let fresh = again.iter().find(|r| r.offset == 1).unwrap();
    sub.ack(fresh);
    let seen = a.wait_for("the fresh ack", |s| !s.acked.is_empty()).await;
    assert_eq!((seen.opens, seen.acked), (2, at(0, [1])));
    // b's stream was not touched.
    assert_eq!((b.seen().opens, b.seen().open_streams), (1, 1));
    sub.close().await;
}

#[tokio::test]
async fn connect_fails_on_a_refusal_or_when_no_shard_answers() {
    let a = FakeShard::start(0, 1).await;
    let refusing = FakeShard::refusing(Code::NotFound).await;
    // No shard knows the subscription: not found.
    match Subscriber::connect(cfg(Discovery::Static(vec![refusing.endpoint.clone()]))).await {
        Err(Error::NotFound(_)) => {}
        other => panic!("{other:?}"),
    }
    // Another shard does: this one has not applied the registry change yet, and is tried
    // again in the background.
    let sub = Subscriber::connect(cfg(both(&a, &refusing)))
        .await
        .expect("one shard knows the subscription");
    a.wait_for("the stream of the shard that knows it", |s| {
        s.open_streams == 1
    })
    .await;
    sub.close().await;
    let denying = FakeShard::refusing(Code::PermissionDenied).await;
    match Subscriber::connect(cfg(both(&denying, &a))).await {
        Err(Error::Unauthorized(_)) => {}
        other => panic!("{other:?}"),
    }

    let (x, y) = (free_addr().await, free_addr().await);
    let down = Discovery::Static(vec![format!("http://{x}"), format!("http://{y}")]);
    match Subscriber::connect(cfg(down)).await {
        Err(Error::Unavailable(m)) => {
            assert!(
                m.contains(&x.to_string()) && m.contains(&y.to_string()),
                "{m}"
            );
        }
        other => panic!("{other:?}"),
    }
    match Subscriber::connect(cfg(Discovery::Static(vec![]))).await {
        Err(Error::BadEndpoint(_)) => {}
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn admin_discovery_lists_the_shards_with_a_grpc_address() {
    let a = FakeShard::start(0, 1).await;
    let b = FakeShard::start(1, 1).await;
    let admin = FakeAdmin::start(
        Some("s3cret"),
        json!([
            entry(&a, 0),
            entry(&b, 1),
            {"id": "shard-9", "grpc_address": "", "admin_address": "127.0.0.1:2", "partitions": {}},
        ]),
    )
    .await;
    let d: Discovery = format!("shards+{}", admin.url).parse().unwrap();
    match d.resolve().await {
        Err(Error::Unauthorized(m)) => assert!(m.contains("/v1/shards"), "{m}"),
        other => panic!("{other:?}"),
    }
    match Subscriber::connect(cfg(d.clone())).await {
        Err(Error::Unauthorized(_)) => {}
        other => panic!("{other:?}"),
    }

    let d = d.with_token(Some("s3cret".into()));
    let mut want = vec![a.endpoint.clone(), b.endpoint.clone()];
    want.sort();
    assert_eq!(d.resolve().await.unwrap(), want);

    let mut sub = Subscriber::connect(cfg(d)).await.unwrap();
    let mut shards: Vec<String> = take(&mut sub, 2)
        .await
        .iter()
        .map(|r| r.shard().to_owned())
        .collect();
    shards.sort();
    assert_eq!(shards, want);
    sub.close().await;
}

#[tokio::test]
async fn rediscovery_opens_new_shards_and_retires_gone_ones() {
    let a = FakeShard::start(0, 1).await;
    let b = FakeShard::start(1, 1).await;
    let admin = FakeAdmin::start(None, json!([entry(&a, 0)])).await;
    let d: Discovery = format!("shards+{}", admin.url).parse().unwrap();
    let mut sub = Subscriber::connect(cfg(d).rediscover_interval(Duration::from_millis(50)))
        .await
        .unwrap();
    let r = take(&mut sub, 1).await.remove(0);
    assert_eq!(r.shard(), a.endpoint);
    sub.ack(&r);

    // b joins.
    admin.set(Some(json!([entry(&a, 0), entry(&b, 1)])));
    let r = take(&mut sub, 1).await.remove(0);
    assert_eq!((r.shard(), r.partition), (b.endpoint.as_str(), 1));
    sub.ack(&r);
    b.wait_for("its ack", |s| s.acked == at(1, [0])).await;

    // a leaves the list (it may be draining before it stops): its stream stays, acks
    // included, until a ends it; then the session ends instead of reconnecting.
    admin.set(Some(json!([entry(&b, 1)])));
    admin.wait_requests(3).await;
    let seen = a.wait_for("its ack", |s| s.acked == at(0, [0])).await;
    assert_eq!((seen.opens, seen.open_streams), (1, 1));
    a.end_streams();
    let seen = a
        .wait_for("the stream closed", |s| s.open_streams == 0)
        .await;
    assert_eq!(seen.opens, 1);
    admin.wait_requests(3).await;
    assert_eq!(a.seen().opens, 1, "a shard off the list is not reconnected");

    // Failing discoveries keep the shards there are.
    admin.set(None);
    admin.wait_requests(3).await;
    assert_eq!((b.seen().opens, b.seen().open_streams), (1, 1));
    admin.set(Some(json!([])));
    admin.wait_requests(3).await;
    assert_eq!((b.seen().opens, b.seen().open_streams), (1, 1));

    sub.close().await;
    b.wait_for("the stream closed", |s| s.open_streams == 0)
        .await;
}

#[tokio::test]
async fn dns_discovery_subscribes_to_every_address_of_a_name() {
    let a = FakeShard::start(0, 2).await;
    let d: Discovery = format!("dns://localhost:{}", a.addr.port())
        .parse()
        .unwrap();
    let mut sub = Subscriber::connect(cfg(d)).await.unwrap();
    for r in take(&mut sub, 2).await {
        assert_eq!(r.shard(), a.endpoint);
        sub.ack(&r);
    }
    a.wait_for("its acks", |s| s.acked == at(0, [0, 1])).await;
    sub.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn run_handles_records_concurrently_a_key_at_a_time_and_acks_or_nacks() {
    use std::collections::HashMap;
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicUsize, Ordering};

    let a = FakeShard::start(0, 30).await;
    let b = FakeShard::start(1, 30).await;
    let sub = Subscriber::connect(cfg(both(&a, &b))).await.unwrap();
    // Per (partition, key): handlers running now, and the offsets in the order handled.
    type PerKey<T> = Arc<Mutex<HashMap<(i32, String), T>>>;
    let busy: PerKey<usize> = Arc::default();
    let order: PerKey<Vec<i64>> = Arc::default();
    let (running, peak, overlap) = (
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicUsize::new(0)),
    );
    let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
    let done_tx = Arc::new(Mutex::new(Some(done_tx)));
    let handled = Arc::new(AtomicUsize::new(0));
    let stats = {
        let (busy, order, running, peak, overlap, handled) = (
            busy.clone(),
            order.clone(),
            running.clone(),
            peak.clone(),
            overlap.clone(),
            handled.clone(),
        );
        tokio::time::timeout(
            WAIT,
            sub.run(
                4,
                async move {
                    let _ = done_rx.await;
                },
                move |r| {
                    let (busy, order, running, peak, overlap, handled, done_tx) = (
                        busy.clone(),
                        order.clone(),
                        running.clone(),
                        peak.clone(),
                        overlap.clone(),
                        handled.clone(),
                        done_tx.clone(),
                    );
                    async move {
                        let key = (
                            r.partition,
                            String::from_utf8(r.key.clone().unwrap().to_vec()).unwrap(),
                        );
                        if std::mem::replace(
                            busy.lock().unwrap().entry(key.clone()).or_default(),
                            1,
                        ) == 1
                        {
                            overlap.fetch_add(1, Ordering::SeqCst);
                        }
                        let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                        peak.fetch_max(now, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(2)).await;
                        running.fetch_sub(1, Ordering::SeqCst);
                        order
                            .lock()
                            .unwrap()
                            .entry(key.clone())
                            .or_default()
                            .push(r.offset);
                        busy.lock().unwrap().insert(key, 0);
                        if handled.fetch_add(1, Ordering::SeqCst) + 1 == 60
                            && let Some(tx) = done_tx.lock().unwrap().take()
                        {
                            let _ = tx.send(());
                        }
                        if r.offset % 10 == 0 {
                            Err(Nack::after(
                                Duration::from_secs(5),
                                "every tenth is refused",
                            ))
                        } else {
                            Ok(())
                        }
                    }
                },
            ),
        )
        .await
        .expect("run ends after its shutdown")
        .expect("no subscriber error")
    };
    assert_eq!((stats.acked, stats.nacked), (54, 6));
    let peak = peak.load(Ordering::SeqCst);
    assert!((2..=4).contains(&peak), "handlers ran {peak} at a time");
    assert_eq!(
        overlap.load(Ordering::SeqCst),
        0,
        "a key's records overlapped"
    );
    for (key, offsets) in order.lock().unwrap().iter() {
        assert!(
            offsets.windows(2).all(|w| w[0] < w[1]),
            "{key:?}: {offsets:?}"
        );
    }
    // The acks and nacks reached the shards that delivered the records.
    for (shard, p) in [(&a, 0), (&b, 1)] {
        let refused = at(p, (0..30).filter(|o| o % 10 == 0));
        let seen = shard
            .wait_for("its acks and nacks", |s| {
                s.acked.len() + s.nacked.len() == 30
            })
            .await;
        assert_eq!(seen.nacked, refused);
        assert_eq!(
            seen.acked,
            at(p, 0..30).difference(&refused).copied().collect()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_handler_gives_its_record_back_and_its_key_goes_on() {
    use std::sync::Mutex;

    let a = FakeShard::start(0, 6).await;
    let sub = Subscriber::connect(cfg(Discovery::Static(vec![a.endpoint.clone()])))
        .await
        .unwrap();
    let handled: Arc<Mutex<Vec<i64>>> = Arc::default();
    let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
    let done_tx = Arc::new(Mutex::new(Some(done_tx)));
    let h = handled.clone();
    let stats = tokio::time::timeout(
        WAIT,
        sub.run(
            2,
            async move {
                let _ = done_rx.await;
            },
            move |r| {
                let (h, done_tx) = (h.clone(), done_tx.clone());
                async move {
                    assert!(r.offset != 0, "offset 0 makes the handler panic");
                    let mut h = h.lock().unwrap();
                    h.push(r.offset);
                    // Offset 3 has offset 0's key: it runs only if the panic freed the key.
                    if h.len() == 5
                        && let Some(tx) = done_tx.lock().unwrap().take()
                    {
                        let _ = tx.send(());
                    }
                    Ok::<(), Nack>(())
                }
            },
        ),
    )
    .await
    .expect("run ends after its shutdown")
    .expect("no subscriber error");
    assert_eq!((stats.acked, stats.nacked), (5, 1));
    let mut h = handled.lock().unwrap().clone();
    h.sort_unstable();
    assert_eq!(h, vec![1, 2, 3, 4, 5]);
    let seen = a
        .wait_for("the nack of the panicked record", |s| {
            s.nacked == at(0, [0])
        })
        .await;
    assert_eq!(seen.acked, at(0, 1..6));
}
