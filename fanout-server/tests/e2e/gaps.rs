//! Offsets that are not records (transaction markers, aborted records) never stall a
//! subscription's cursor or the shard group's commit.
//!
//! DESIGN: "the cursor is the next fetch position after the last contiguously acked
//! delivered record; transaction markers, aborted records and compacted topics leave offset
//! gaps. Test it with a transactional producer".

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::util::Timeout;

use crate::support::*;

/// Timeout of each transactional call and of each send.
const TXN_TIMEOUT: Duration = Duration::from_secs(10);

/// How long nothing more may arrive once every committed record was acked (a bounded
/// negative check, not a synchronisation: the cursors have already settled by then).
const QUIET: Duration = Duration::from_secs(2);

/// A record Kafka acknowledged: (partition, offset, value).
type Sent = (i32, i64, String);

fn transactional_producer() -> FutureProducer {
    ClientConfig::new()
        .set("bootstrap.servers", kafka())
        .set("transactional.id", name("txn"))
        .set("transaction.timeout.ms", "30000")
        .set("message.timeout.ms", "20000")
        .set("linger.ms", "5")
        .create()
        .expect("transactional producer")
}

/// Runs a blocking transactional call of `p` off the async workers.
async fn txn_call<F>(p: &FutureProducer, what: &str, call: F)
where
    F: FnOnce(&FutureProducer) -> rdkafka::error::KafkaResult<()> + Send + 'static,
{
    let p = p.clone();
    tokio::task::spawn_blocking(move || call(&p))
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("{what}: {e}"));
}

/// One transaction writing `per_partition` records to every partition of `topic` (values
/// `<label>-p<partition>-<i>`), committed or aborted. Every send is acknowledged before
/// the transaction ends, so even aborted records take offsets in the log.
async fn transaction(
    p: &FutureProducer,
    topic: &str,
    partitions: i32,
    label: &str,
    per_partition: usize,
    commit: bool,
) -> Vec<Sent> {
    txn_call(p, "begin_transaction", |p| p.begin_transaction()).await;
    let mut sent = Vec::new();
    for i in 0..per_partition {
        for part in 0..partitions {
            let value = format!("{label}-p{part}-{i}");
            let key = format!("key-{i}");
            let d = p
                .send(
                    FutureRecord::to(topic)
                        .partition(part)
                        .key(&key)
                        .payload(&value),
                    Timeout::After(TXN_TIMEOUT),
                )
                .await
                .unwrap_or_else(|(e, _)| panic!("send {value}: {e}"));
            assert_eq!(d.partition, part);
            sent.push((d.partition, d.offset, value));
        }
    }
    if commit {
        txn_call(p, "commit_transaction", |p| {
            p.commit_transaction(TXN_TIMEOUT)
        })
        .await;
    } else {
        txn_call(p, "abort_transaction", |p| p.abort_transaction(TXN_TIMEOUT)).await;
    }
    sent
}

async fn high_watermarks(topic: &str, partitions: i32) -> BTreeMap<i32, i64> {
    let topic = topic.to_owned();
    tokio::task::spawn_blocking(move || {
        let c: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", kafka())
            .create()
            .unwrap();
        (0..partitions)
            .map(|p| {
                let (_, hi) = c.fetch_watermarks(&topic, p, TXN_TIMEOUT).unwrap();
                (p, hi)
            })
            .collect()
    })
    .await
    .unwrap()
}

/// Holes in an ascending offset sequence: (number of holes, offsets missing in them).
fn holes(offsets: &[i64]) -> (usize, i64) {
    offsets
        .windows(2)
        .filter(|w| w[1] > w[0] + 1)
        .fold((0, 0), |(n, missing), w| (n + 1, missing + w[1] - w[0] - 1))
}

/// What this test asserts, and why exactly this.
///
/// Per partition the log is: a committed transaction, its commit marker, an aborted
/// transaction, its abort marker, a committed transaction, its marker, and finally an
/// aborted transaction and its abort marker (the log ends with offsets that are not records).
///
/// - The subscription receives exactly the committed values, each once, none aborted.
/// - The received offsets of each partition have at least one hole (marker + aborted records
///   + marker between the two committed transactions), so the test really crosses gaps.
/// - Once everything received is acked, each partition's cursor reaches at least the offset
///   after its last committed record: holes in the middle of the log do not stall it. The
///   design promises no more than that: the trailing abort and its marker are not records,
///   nothing is delivered for them, so a cursor resting at `last committed + 1` is correct
///   (and one at the high watermark would be too; the cursor never passes it).
/// - The durable cursors, the cursors stored in `__<cluster>_cursors` and the group's
///   committed offsets (one subscription: the commit is its stored cursor) equal the cursors.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn transaction_gaps_never_stall_cursors_or_the_group_commit() {
    const PARTITIONS: i32 = 2;
    let topic = name("gaps");
    create_topic(&topic, PARTITIONS).await;
    let server = TestServer::start(&name("c")).await;
    let admin = server.admin_api();
    admin.register(&topic).await;
    let sub_name = "txn";
    admin.subscribe(&topic, sub_name, "earliest").await;

    let producer = transactional_producer();
    txn_call(&producer, "init_transactions", |p| {
        p.init_transactions(TXN_TIMEOUT)
    })
    .await;
    let mut committed_sent =
        transaction(&producer, &topic, PARTITIONS, "committed-1", 20, true).await;
    let mut aborted_sent = transaction(&producer, &topic, PARTITIONS, "aborted-1", 10, false).await;
    committed_sent
        .extend(transaction(&producer, &topic, PARTITIONS, "committed-2", 20, true).await);
    aborted_sent.extend(transaction(&producer, &topic, PARTITIONS, "aborted-2", 10, false).await);
    drop(producer);

    let hw = high_watermarks(&topic, PARTITIONS).await;
    let want: BTreeSet<(i32, i64)> = committed_sent.iter().map(|(p, o, _)| (*p, *o)).collect();
    let want_values: BTreeSet<String> = committed_sent.iter().map(|(_, _, v)| v.clone()).collect();
    let aborted_values: BTreeSet<String> = aborted_sent.iter().map(|(_, _, v)| v.clone()).collect();
    let last_committed: BTreeMap<i32, i64> = (0..PARTITIONS)
        .map(|p| {
            let last = want.iter().filter(|(q, _)| *q == p).map(|(_, o)| *o).max();
            (p, last.unwrap())
        })
        .collect();
    // The offset after the last committed record: what the cursors must at least reach.
    let expected: BTreeMap<i32, i64> = last_committed.iter().map(|(p, o)| (*p, o + 1)).collect();
    for p in 0..PARTITIONS {
        let trailing_aborted = aborted_sent
            .iter()
            .filter(|(q, o, _)| *q == p && *o > last_committed[&p])
            .count();
        assert!(
            trailing_aborted > 0 && hw[&p] > expected[&p] + 1,
            "partition {p} should end with an aborted batch and its marker: \
             last committed {}, high watermark {}",
            last_committed[&p],
            hw[&p]
        );
    }

    // Receive and ack everything committed.
    let started = Instant::now();
    let mut sub = subscriber(&server.grpc, &topic, sub_name, 100).await;
    let mut got = Received::default();
    let mut values = Vec::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    while !want.is_subset(&got.unique) {
        let r = tokio::time::timeout_at(deadline, sub.next())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "timed out: {} of {} committed records",
                    got.unique.intersection(&want).count(),
                    want.len()
                )
            })
            .expect("subscriber ended")
            .expect("subscriber error");
        let value = String::from_utf8(r.value.as_deref().unwrap_or_default().to_vec()).unwrap();
        assert!(
            !aborted_values.contains(&value),
            "aborted record delivered: {value} at {}:{}",
            r.partition,
            r.offset
        );
        assert!(
            want.contains(&(r.partition, r.offset)),
            "unexpected record {value} at {}:{}",
            r.partition,
            r.offset
        );
        note(&mut got, &r);
        values.push(value);
        sub.ack(&r);
    }
    let received_in = started.elapsed();
    assert_eq!(got.unique, want, "(partition, offset) sets differ");
    assert_eq!(got.duplicates(), 0, "duplicates delivered");
    let value_set: BTreeSet<String> = values.iter().cloned().collect();
    assert_eq!(value_set.len(), values.len(), "duplicate values delivered");
    assert_eq!(
        value_set, want_values,
        "received values are not the committed ones"
    );

    // The received offsets have holes (markers, aborted records) in the middle of the log.
    let mut hole_report = BTreeMap::new();
    for p in 0..PARTITIONS {
        let offsets: Vec<i64> = got
            .unique
            .iter()
            .filter(|(q, _)| *q == p)
            .map(|(_, o)| *o)
            .collect();
        let (n, missing) = holes(&offsets);
        assert!(
            n >= 1,
            "partition {p}: received offsets are contiguous, no gap exercised: {offsets:?}"
        );
        hole_report.insert(p, (n, missing));
    }

    // Cursors, durable cursors and the group commit all get past every hole.
    let group = server.cluster.clone();
    let settled = eventually(
        "cursors, durable cursors and the commit past the gaps",
        || {
            let (admin, topic, group, expected, hw) = (&admin, &topic, &group, &expected, &hw);
            async move {
                let cursors = admin.cursors(topic, sub_name).await;
                for (p, c) in &cursors {
                    assert!(
                        *c <= hw[p],
                        "partition {p}: cursor {c} past the high watermark {}",
                        hw[p]
                    );
                }
                let at_least = expected.iter().all(|(p, e)| cursors.get(p) >= Some(e));
                if !at_least {
                    return None;
                }
                let durable = admin.durable_cursors(topic, sub_name).await;
                let commit = committed(group, topic, PARTITIONS).await;
                (durable == cursors && commit == cursors).then_some((cursors, commit))
            }
        },
    )
    .await;
    let cursor_time = started.elapsed();
    let (cursors, commit) = settled;

    // What is stored in the cursors topic agrees.
    let stored: BTreeMap<i32, i64> = stored_cursors(&server.cluster)
        .await
        .into_iter()
        .filter(|((s, _), _)| s == sub_name)
        .map(|((_, p), c)| (p, c))
        .collect();
    assert_eq!(stored, cursors, "cursors topic differs from the cursors");

    // Nothing else comes (the trailing aborted records are not records), nothing is left
    // unacked, and the cursors stay where they are.
    match tokio::time::timeout(QUIET, sub.next()).await {
        Err(_) => {}
        Ok(r) => panic!("more after every committed record: {r:?}"),
    }
    let (status, view) = admin
        .get(&format!("/v1/topics/{topic}/subscriptions/{sub_name}"))
        .await;
    assert_eq!(status, 200, "{view}");
    assert_eq!(view["unacked"], 0, "{view}");
    assert_eq!(admin.cursors(&topic, sub_name).await, cursors);

    println!(
        "committed {} records, aborted {} (never delivered); received {} in {received_in:?}, \
         {} duplicates",
        want.len(),
        aborted_sent.len(),
        got.deliveries,
        got.duplicates()
    );
    for p in 0..PARTITIONS {
        let (n, missing) = hole_report[&p];
        println!(
            "partition {p}: last committed offset {}, high watermark {}, {n} gaps \
             ({missing} offsets skipped); cursor {}, durable {}, stored {}, group commit {}",
            last_committed[&p], hw[&p], cursors[&p], cursors[&p], stored[&p], commit[&p]
        );
    }
    println!("cursors and group commit settled {cursor_time:?} after subscribing");

    sub.close().await;
    server.stop().await.unwrap();
}
