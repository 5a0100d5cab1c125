//! The client's handler style (`Subscriber::run`): 20,000 keyed records on an `ordering=key`
//! subscription, 16 handlers at a time, the server killed (SIGKILL) and started again in
//! the middle: every record handled, each key's records handled in order, everything acked.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use fanout_client::{Nack, Subscriber};
use parking_lot::Mutex;
use serde_json::json;

use crate::support::*;

/// One handled record: its key, partition and offset.
type Handled = (String, i32, i64);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn handlers_process_every_record_in_key_order_across_a_server_kill() {
    const RECORDS: usize = 20_000;
    const CONCURRENCY: usize = 16;
    let cluster = name("handler");
    let topic = name("keyed");
    create_topic(&topic, 4).await;
    let (grpc, admin_addr) = free_addrs();
    let args = ["--shard-id", "shard-0"];
    let mut server = ServerProcess::spawn_with(&cluster, grpc, admin_addr, &args).await;
    let admin = Admin {
        http: reqwest::Client::new(),
        base: server.admin.clone(),
    };
    admin.register(&topic).await;
    let (status, created) = admin
        .post(
            &format!("/v1/topics/{topic}/subscriptions"),
            json!({"name": "h", "start": "earliest", "ordering": "key"}),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    let want = produce(&topic, 0, RECORDS).await;

    let sub = Subscriber::builder(server.grpc.parse().unwrap())
        .topic(&topic)
        .subscription("h")
        .max_in_flight(200)
        .connect()
        .await
        .expect("subscribe");
    let handled: Arc<Mutex<Vec<Handled>>> = Arc::default();
    let (running, peak) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let run = {
        let (handled, running, peak) = (handled.clone(), running.clone(), peak.clone());
        tokio::spawn(sub.run(
            CONCURRENCY,
            async move {
                let _ = stopped.await;
            },
            move |record| {
                let (handled, running, peak) = (handled.clone(), running.clone(), peak.clone());
                async move {
                    let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                    peak.fetch_max(now, Ordering::SeqCst);
                    // Some work, so that handlers overlap.
                    tokio::time::sleep(Duration::from_micros(
                        300 + (record.offset % 7) as u64 * 100,
                    ))
                    .await;
                    let key = String::from_utf8(record.key.clone().unwrap_or_default().to_vec())?;
                    handled.lock().push((key, record.partition, record.offset));
                    running.fetch_sub(1, Ordering::SeqCst);
                    Ok::<(), Nack>(())
                }
            },
        ))
    };

    // Kill the server a quarter of the way through, start it again on the same ports.
    let count = || handled.lock().len();
    let t0 = std::time::Instant::now();
    eventually("a quarter of the records handled", || async {
        (count() >= RECORDS / 4).then_some(())
    })
    .await;
    server.kill9();
    let killed_at = count();
    let server = ServerProcess::spawn_with(&cluster, grpc, admin_addr, &args).await;
    eventually("every record handled", || async {
        let seen: BTreeSet<(i32, i64)> = handled.lock().iter().map(|(_, p, o)| (*p, *o)).collect();
        want.is_subset(&seen).then_some(())
    })
    .await;
    let took = t0.elapsed();
    let _ = stop.send(());
    let stats = run.await.unwrap().expect("run ends without an error");

    let handled = handled.lock().clone();
    // Each key's records, in the order they were first handled, go up: a record was never
    // handled before an earlier record of its key had been (redeliveries after the kill
    // may repeat some, in order again).
    let mut first: HashMap<String, Vec<i64>> = HashMap::new();
    let mut seen = BTreeSet::new();
    for (key, p, o) in &handled {
        if seen.insert((*p, *o)) {
            first.entry(key.clone()).or_default().push(*o);
        }
    }
    let out_of_order: Vec<&String> = first
        .iter()
        .filter(|(_, offsets)| offsets.windows(2).any(|w| w[0] > w[1]))
        .map(|(k, _)| k)
        .collect();
    let again = handled.len() - seen.len();
    println!(
        "records {RECORDS} in {took:?}, handled {} (again after the kill {again}), killed at {killed_at}, keys {}, peak concurrency {}, acked {}, nacked {}",
        handled.len(),
        first.len(),
        peak.load(Ordering::SeqCst),
        stats.acked,
        stats.nacked
    );
    assert_eq!(seen, want, "every record handled, nothing else");
    assert!(
        out_of_order.is_empty(),
        "keys out of order: {out_of_order:?}"
    );
    let peak = peak.load(Ordering::SeqCst);
    assert!(
        (2..=CONCURRENCY).contains(&peak),
        "handlers ran {peak} at a time"
    );
    assert_eq!(stats.nacked, 0);

    // Everything acked: the subscription's cursors reach the end of every partition.
    let admin = Admin {
        http: reqwest::Client::new(),
        base: server.admin.clone(),
    };
    eventually("the cursors at the log end", || async {
        let (status, lag) = admin
            .get(&format!("/v1/topics/{topic}/subscriptions/h/lag"))
            .await;
        (status == 200
            && lag["partitions"].as_array().is_some_and(|ps| ps.len() == 4)
            && lag["lag"] == 0)
            .then_some(())
    })
    .await;
}
