//! Commit safety and surviving a hard kill.

use std::collections::BTreeMap;

use fanout_client::{Subscriber, SubscriberConfig};

use crate::support::*;

/// Offsets of the last record + 1 per partition (where a cursor ends after acking all).
fn ends(records: &std::collections::BTreeSet<(i32, i64)>) -> BTreeMap<i32, i64> {
    let mut m = BTreeMap::new();
    for (p, o) in records {
        let e = m.entry(*p).or_insert(0);
        *e = (*e).max(o + 1);
    }
    m
}

/// Receives every record of `want`, acking those below `ack_below` in their partition, and
/// returns the ones left unacked.
async fn take_all(
    sub: &mut Subscriber,
    want: &std::collections::BTreeSet<(i32, i64)>,
    ack_below: i64,
) -> Vec<fanout_client::Record> {
    let mut got = Received::default();
    let mut kept = Vec::new();
    while !want.is_subset(&got.unique) {
        let r = tokio::time::timeout(WAIT, sub.next())
            .await
            .expect("records in time")
            .unwrap()
            .unwrap();
        note(&mut got, &r);
        if r.offset < ack_below {
            sub.ack(&r);
        } else {
            kept.push(r);
        }
    }
    kept
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kafka_commit_waits_for_the_slowest_subscription() {
    let topic = name("commit");
    create_topic(&topic, 2).await;
    let server = TestServer::start(&name("c")).await;
    let admin = server.admin_api();
    admin.register(&topic).await;
    for s in ["a", "b", "c"] {
        admin.subscribe(&topic, s, "earliest").await;
    }
    let records = produce(&topic, 0, 1_000).await;
    let end = ends(&records);
    assert!(
        end.values().all(|e| *e > 100),
        "each partition holds over 100 records: {end:?}"
    );

    // A acks everything first; its cursors reach the end of both partitions.
    let mut a = subscriber(&server.grpc, &topic, "a", 1000).await;
    assert!(take_all(&mut a, &records, i64::MAX).await.is_empty());
    eventually("a's cursors at the end", || async {
        (admin.cursors(&topic, "a").await == end).then_some(())
    })
    .await;
    // B acks offsets below 100, C below 50 (in each partition).
    let mut b = subscriber(&server.grpc, &topic, "b", 1000).await;
    let b_kept = take_all(&mut b, &records, 100).await;
    let mut c = subscriber(&server.grpc, &topic, "c", 1000).await;
    let c_kept = take_all(&mut c, &records, 50).await;

    // The group's commit settles on C's cursor, and no sample ever passes it.
    let gated: BTreeMap<i32, i64> = end.keys().map(|p| (*p, 50)).collect();
    eventually("the commit at c's cursor", || async {
        let now = committed(&server.cluster, &topic, 2).await;
        for (p, o) in &now {
            assert!(
                *o <= 50,
                "partition {p} committed {o}, past c's cursor 50 (a is at {})",
                end[p]
            );
        }
        (now == gated).then_some(())
    })
    .await;

    // B and C ack the rest: the commit advances to the end, never past the slowest.
    for r in &b_kept {
        b.ack(r);
    }
    eventually("b's cursors at the end", || async {
        let now = committed(&server.cluster, &topic, 2).await;
        assert!(now.values().all(|o| *o <= 50), "c still at 50: {now:?}");
        (admin.cursors(&topic, "b").await == end).then_some(())
    })
    .await;
    for r in &c_kept {
        c.ack(r);
    }
    eventually("the commit at the end", || async {
        (committed(&server.cluster, &topic, 2).await == end).then_some(())
    })
    .await;
    for s in [a, b, c] {
        s.close().await;
    }
    server.stop().await.unwrap();
}

/// A shard process with a 4-partition topic of 10,000 records and subscriptions `subs`,
/// each read by a subscriber that acks every record as it gets it, paced (~5,000 records/s,
/// as if it did some work) so that a restart lands mid-stream. Each task returns every
/// delivery as (partition, offset, connection); `halfway` completes once every subscriber
/// has 2,500 records.
struct PacedRun {
    topic: String,
    cluster: String,
    addrs: (std::net::SocketAddr, std::net::SocketAddr),
    server: ServerProcess,
    admin: Admin,
    want: std::collections::BTreeSet<(i32, i64)>,
    tasks: Vec<tokio::task::JoinHandle<Vec<(i32, i64, u64)>>>,
    halfway: tokio::sync::watch::Receiver<usize>,
}

const PACED_SUBS: [&str; 3] = ["a", "b", "c"];

impl PacedRun {
    async fn start(prefix: &str) -> Self {
        let topic = name(prefix);
        let cluster = name("c");
        create_topic(&topic, 4).await;
        let (grpc, http) = free_addrs();
        let server = ServerProcess::spawn(&cluster, grpc, http).await;
        let admin = Admin {
            http: reqwest::Client::new(),
            base: server.admin.clone(),
        };
        admin.register(&topic).await;
        for s in PACED_SUBS {
            admin.subscribe(&topic, s, "earliest").await;
        }
        let want = produce(&topic, 0, 10_000).await;
        let (progress, halfway) = tokio::sync::watch::channel(0usize);
        let progress = std::sync::Arc::new(progress);
        let mut tasks = Vec::new();
        for s in PACED_SUBS {
            let cfg = SubscriberConfig::new(&server.grpc, &topic, s).max_in_flight(100);
            let mut sub = Subscriber::connect(cfg).await.unwrap();
            let (want, progress) = (want.clone(), progress.clone());
            tasks.push(tokio::spawn(async move {
                let mut got = Received::default();
                let mut deliveries = Vec::new();
                let deadline = tokio::time::Instant::now() + WAIT * 2;
                let mut counted = false;
                while !want.is_subset(&got.unique) {
                    let r = tokio::time::timeout_at(deadline, sub.next())
                        .await
                        .expect("all records within the deadline")
                        .expect("subscriber ended")
                        .expect("subscriber error");
                    deliveries.push((r.partition, r.offset, r.connection()));
                    note(&mut got, &r);
                    sub.ack(&r);
                    if got.deliveries % 5 == 0 {
                        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
                    }
                    if !counted && got.unique.len() >= 2_500 {
                        counted = true;
                        progress.send_modify(|n| *n += 1);
                    }
                }
                sub.close().await;
                deliveries
            }));
        }
        Self {
            topic,
            cluster,
            addrs: (grpc, http),
            server,
            admin,
            want,
            tasks,
            halfway,
        }
    }

    /// Waits until every subscriber is well into the stream.
    async fn wait_halfway(&mut self) {
        self.halfway
            .wait_for(|n| *n == PACED_SUBS.len())
            .await
            .unwrap();
    }

    /// Starts the shard again on the same ports (the subscribers reconnect to it), and
    /// returns each subscription's deliveries, and how many were duplicates, once it has
    /// every record.
    async fn restart_and_finish(self) -> Vec<(&'static str, Vec<(i32, i64, u64)>, usize)> {
        let (grpc, http) = self.addrs;
        let _server = ServerProcess::spawn(&self.cluster, grpc, http).await;
        let mut out = Vec::new();
        for (s, t) in PACED_SUBS.into_iter().zip(self.tasks) {
            let deliveries = t.await.unwrap();
            let unique: std::collections::BTreeSet<_> =
                deliveries.iter().map(|&(p, o, _)| (p, o)).collect();
            assert!(
                self.want.is_subset(&unique),
                "subscription {s} lost records"
            );
            let duplicates = deliveries.len() - unique.len();
            out.push((s, deliveries, duplicates));
        }
        out
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_mid_stream_loses_nothing() {
    use std::collections::BTreeSet;

    let mut run = PacedRun::start("kill").await;
    // Kill once every subscriber is well into the stream and a flush stored some progress.
    run.wait_halfway().await;
    for s in PACED_SUBS {
        eventually("a flushed cursor", || async {
            let durable: i64 = run
                .admin
                .durable_cursors(&run.topic, s)
                .await
                .values()
                .sum();
            (durable >= 1_000).then_some(())
        })
        .await;
    }
    run.server.kill9();
    // What the dead shard had flushed: a restart resumes exactly there.
    let flushed = stored_cursors(&run.cluster).await;
    let total = run.want.len();
    for (s, deliveries, duplicates) in run.restart_and_finish().await {
        // Delivered by the first process: never twice.
        let mut before = BTreeSet::new();
        for &(p, o, _) in deliveries.iter().filter(|d| d.2 == 1) {
            assert!(before.insert((p, o)), "duplicate before the kill: {p}:{o}");
        }
        assert!(
            before.len() < total,
            "subscription {s} finished before the kill"
        );
        // Delivered again by the second process.
        let again: Vec<_> = deliveries
            .iter()
            .filter(|d| d.2 != 1 && before.contains(&(d.0, d.1)))
            .map(|&(p, o, _)| (p, o))
            .collect();
        // Bound: a record comes again only if it was in flight or acked after the last
        // cursor flush, i.e. at or above the flushed cursor of its partition.
        let cursor = |p: i32| flushed.get(&(s.to_string(), p)).copied().unwrap_or(0);
        let bound: BTreeSet<_> = before.iter().filter(|(p, o)| *o >= cursor(*p)).collect();
        for r in &again {
            assert!(
                bound.contains(r),
                "subscription {s}: {r:?} redelivered although below the flushed cursor"
            );
        }
        println!(
            "subscription {s}: {total} records, {} delivered before the kill, {duplicates} \
             duplicates after it (bound {}: in flight + acked since the last flush)",
            before.len(),
            bound.len()
        );
        assert!(duplicates <= bound.len());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn records_deleted_before_delivery_are_skipped_not_waited_for() {
    use rdkafka::TopicPartitionList;
    use rdkafka::admin::AdminOptions;

    let topic = name("gone");
    let cluster = name("c");
    create_topic(&topic, 1).await;
    let server = TestServer::start(&cluster).await;
    let admin = server.admin_api();
    admin.register(&topic).await;
    admin.subscribe(&topic, "s", "earliest").await;
    let all = produce(&topic, 0, 100).await;
    server.stop().await.unwrap();

    // Retention (here: DeleteRecords) removes offsets 0..40 the subscription never got.
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(&topic, 0, rdkafka::Offset::Offset(40))
        .unwrap();
    let deleted = admin_client()
        .delete_records(&tpl, &AdminOptions::new())
        .await
        .unwrap();
    drop(deleted);

    let server = TestServer::start(&cluster).await;
    let mut sub = subscriber(&server.grpc, &topic, "s", 100).await;
    let left: std::collections::BTreeSet<_> =
        all.iter().filter(|(_, o)| *o >= 40).copied().collect();
    let mut got = Received::default();
    receive_all(&mut sub, &left, &mut got).await;
    assert_eq!(
        got.unique, left,
        "continues at the new log start, nothing older"
    );
    // Loss is loud: the admin API shows it per partition.
    let view = server
        .admin_api()
        .get(&format!("/v1/topics/{topic}/subscriptions/s"))
        .await
        .1;
    assert_eq!(view["lost"]["0"]["records"], 40, "{view}");
    assert_eq!(view["lost"]["0"]["last_log_start"], 40, "{view}");
    // And Prometheus counts it.
    let (status, content_type, metrics) = server.admin_api().get_text("/metrics").await;
    assert_eq!(status, 200);
    assert!(content_type.starts_with("text/plain"), "{content_type}");
    let lost: Vec<&str> = metrics
        .lines()
        .filter(|l| {
            l.starts_with("fanout_lost_records_total{") && l.contains(&format!("topic=\"{topic}\""))
        })
        .collect();
    assert_eq!(lost.len(), 1, "{metrics}");
    assert!(
        lost[0].contains("subscription=\"s\"") && lost[0].contains("partition=\"0\""),
        "{}",
        lost[0]
    );
    assert!(lost[0].ends_with(" 40"), "{}", lost[0]);
    sub.close().await;
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn records_deleted_under_a_running_partition_are_skipped_and_streams_resume() {
    use rdkafka::TopicPartitionList;
    use rdkafka::admin::AdminOptions;

    let topic = name("gone-live");
    create_topic(&topic, 1).await;
    // A tiny window and prefetch: the partition's reader stops far behind the log end.
    let mut cfg = config(&name("c"));
    cfg.partition_window_bytes = 64 << 10;
    cfg.kafka_options = vec![
        ("queued.max.messages.kbytes".into(), "64".into()),
        ("max.partition.fetch.bytes".into(), "65536".into()),
    ];
    let server = TestServer::start_with(cfg).await;
    let admin = server.admin_api();
    admin.register(&topic).await;
    admin.subscribe(&topic, "s", "earliest").await;
    // ~2 MB of 1 kB records; the subscriber takes 10 and acks none yet, so the window and
    // the prefetch fill up and the reader waits far below the log end.
    let producer = producer();
    let value = vec![b'x'; 1000];
    let sends = (0..2_000).map(|i| {
        let key = format!("k{i}");
        let (producer, value, topic) = (&producer, &value, &topic);
        async move {
            producer
                .send(
                    rdkafka::producer::FutureRecord::to(topic)
                        .key(&key)
                        .payload(value),
                    WAIT,
                )
                .await
                .unwrap()
                .offset
        }
    });
    let last = futures::future::join_all(sends)
        .await
        .into_iter()
        .max()
        .unwrap();
    let mut sub = subscriber(&server.grpc, &topic, "s", 10).await;
    let mut held = Vec::new();
    while held.len() < 10 {
        held.push(sub.next().await.unwrap().unwrap());
    }
    assert_eq!(held[0].offset, 0);

    // Retention removes everything below 1,500 while the reader is far below it.
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(&topic, 0, rdkafka::Offset::Offset(1_500))
        .unwrap();
    drop(
        admin_client()
            .delete_records(&tpl, &AdminOptions::new())
            .await
            .unwrap(),
    );

    // The subscriber goes on. Records fanout had already read may still come; then its next
    // read falls out of the log: the loss is reported, the stream is told to reconnect, and
    // delivery goes on from 1,500, in order.
    for r in &held {
        sub.ack(r);
    }
    let mut got = Received::default();
    let mut past_the_gap = false;
    let deadline = tokio::time::Instant::now() + WAIT;
    while got.unique.iter().filter(|(_, o)| *o >= 1_500).count() < (last - 1_500 + 1) as usize {
        let r = tokio::time::timeout_at(deadline, sub.next())
            .await
            .expect("records after the deletion arrive")
            .unwrap()
            .unwrap();
        if r.offset >= 1_500 {
            past_the_gap = true;
        } else {
            assert!(
                !past_the_gap,
                "offset {} after the log start moved past it",
                r.offset
            );
        }
        note(&mut got, &r);
        sub.ack(&r);
    }
    assert!(
        got.unique.iter().filter(|(_, o)| *o < 1_500).count() < 1_490,
        "most deleted records were skipped"
    );
    sub.close().await;
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_mid_stream_causes_no_duplicates_when_subscribers_ack() {
    let mut run = PacedRun::start("term").await;
    run.wait_halfway().await;
    assert!(run.server.terminate().await, "graceful exit with status 0");
    let total = run.want.len();
    for (s, deliveries, duplicates) in run.restart_and_finish().await {
        let connections: std::collections::BTreeSet<u64> = deliveries.iter().map(|d| d.2).collect();
        assert!(
            connections.len() >= 2,
            "subscription {s} finished before the restart"
        );
        println!(
            "subscription {s}: {total} records over {} connections, {duplicates} duplicates",
            connections.len()
        );
        assert_eq!(
            duplicates, 0,
            "subscription {s}: duplicates after a graceful restart"
        );
    }
}
