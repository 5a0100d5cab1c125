//! Several shards of one cluster: Kafka's group protocol splits the partitions between
//! them, any shard lists the whole cluster, and a graceful handover — a shard stopping, then
//! coming back and taking partitions from the other — delivers nothing twice.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fanout_client::{Discovery, Subscriber, SubscriberConfig};
use fanout_core::model::{SubscriptionKey, SubscriptionName, TopicName};
use fanout_core::shard::CursorUpdate;
use fanout_server::store::cursors::{CursorStore, CursorWriter, Membership};
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};

use crate::support::*;

/// Partitions per shard id, as `GET /v1/shards` on `admin` lists them.
async fn ownership(admin: &Admin, topic: &str) -> BTreeMap<String, BTreeSet<i32>> {
    let (status, body) = admin.get("/v1/shards").await;
    assert_eq!(status, 200, "{body}");
    body.as_array()
        .expect("a list of shards")
        .iter()
        .map(|s| {
            let owned = s["partitions"][topic]
                .as_array()
                .map(|ps| ps.iter().filter_map(serde_json::Value::as_i64))
                .into_iter()
                .flatten()
                .map(|p| i32::try_from(p).unwrap())
                .collect();
            (s["id"].as_str().unwrap().to_owned(), owned)
        })
        .collect()
}

/// True if the shards named own disjoint non-empty sets covering `0..partitions`.
fn split_over(owners: &BTreeMap<String, BTreeSet<i32>>, shards: &[&str], partitions: i32) -> bool {
    let mut all = BTreeSet::new();
    for id in shards {
        let Some(owned) = owners.get(*id).filter(|o| !o.is_empty()) else {
            return false;
        };
        if !all.is_disjoint(owned) {
            return false;
        }
        all.extend(owned);
    }
    owners.len() == shards.len() && all == (0..partitions).collect()
}

/// Waits until `GET /v1/shards` on `admin` shows the partitions split over `shards`.
async fn wait_split(admin: &Admin, topic: &str, shards: &[&str], partitions: i32) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let owners = ownership(admin, topic).await;
        if split_over(&owners, shards, partitions) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "partitions not split over {shards:?}: {owners:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A delivery, as the background subscriber saw it.
type Seen = (i32, i64, String);

/// Runs the subscriber in the background, acking every record at once (as a live service
/// would: a handover waits for acks), and reports each delivery.
fn ack_everything(mut sub: Subscriber) -> tokio::sync::mpsc::UnboundedReceiver<Seen> {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(Ok(r)) = sub.next().await {
            sub.ack(&r);
            if tx
                .send((r.partition, r.offset, r.shard().to_owned()))
                .is_err()
            {
                break;
            }
        }
        sub.close().await;
    });
    rx
}

/// Takes deliveries until every record of `want` was seen; notes which shards delivered.
async fn receive_from_shards(
    seen: &mut tokio::sync::mpsc::UnboundedReceiver<Seen>,
    want: &BTreeSet<(i32, i64)>,
    got: &mut Received,
    shards: &mut BTreeSet<String>,
) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while !want.is_subset(&got.unique) {
        let (partition, offset, shard) = tokio::time::timeout_at(deadline, seen.recv())
            .await
            .unwrap_or_else(|_| panic!("timed out: {}", got.progress(want)))
            .expect("subscriber ended");
        got.deliveries += 1;
        got.unique.insert((partition, offset));
        shards.insert(shard);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn shards_split_the_partitions_and_hand_them_over_without_duplicates() {
    init_logs();
    let cluster = name("shards");
    let topic = name("orders");
    const PARTITIONS: i32 = 6;
    create_topic(&topic, PARTITIONS).await;
    let ((g0, a0), (g1, a1)) = (free_addrs(), free_addrs());
    let args = |id: &'static str| {
        [
            "--shard-id",
            id,
            "--session-timeout",
            "6s",
            "--drain-timeout",
            "5s",
        ]
    };
    let s0 = ServerProcess::spawn_with(&cluster, g0, a0, &args("shard-0")).await;
    let mut s1 = ServerProcess::spawn_with(&cluster, g1, a1, &args("shard-1")).await;
    let http = reqwest::Client::new();
    let admin0 = Admin {
        http: http.clone(),
        base: s0.admin.clone(),
    };
    let admin1 = Admin {
        http,
        base: s1.admin.clone(),
    };
    admin0.register(&topic).await;
    admin0.subscribe(&topic, "billing", "earliest").await;

    // Either shard lists both, with the partitions split between them.
    for admin in [&admin0, &admin1] {
        wait_split(admin, &topic, &["shard-0", "shard-1"], PARTITIONS).await;
    }

    // One subscriber, one stream per shard: records of every partition, from both.
    let cfg = SubscriberConfig::with_discovery(
        Discovery::Static(vec![s0.grpc.clone(), s1.grpc.clone()]),
        &topic,
        "billing",
    )
    .max_in_flight(200);
    let mut sub = ack_everything(Subscriber::connect(cfg).await.expect("subscribe"));
    let mut got = Received::default();
    let mut shards = BTreeSet::new();
    let mut want = produce(&topic, 0, 3000).await;
    receive_from_shards(&mut sub, &want, &mut got, &mut shards).await;
    assert_eq!(shards.len(), 2, "records came from {shards:?}");
    println!("phase 1: duplicates {}", got.duplicates());

    // Shard 1 stops (SIGTERM) while records keep coming: shard 0 takes its partitions
    // after the handover barrier.
    let t = topic.clone();
    let more = tokio::spawn(async move { produce(&t, 3000, 3000).await });
    assert!(s1.terminate().await, "shard 1 exits 0");
    want.extend(more.await.unwrap());
    receive_from_shards(&mut sub, &want, &mut got, &mut shards).await;
    wait_split(&admin0, &topic, &["shard-0"], PARTITIONS).await;
    println!("phase 2 (shard 1 stopped): duplicates {}", got.duplicates());

    // Shard 1 comes back: the group moves partitions from shard 0 to it (a revoke on a
    // running shard: it drains the acks, commits, then lets go).
    let t = topic.clone();
    let more = tokio::spawn(async move { produce(&t, 6000, 3000).await });
    let _s1 = ServerProcess::spawn_with(&cluster, g1, a1, &args("shard-1")).await;
    want.extend(more.await.unwrap());
    wait_split(&admin0, &topic, &["shard-0", "shard-1"], PARTITIONS).await;
    want.extend(produce(&topic, 9000, 3000).await);
    receive_from_shards(&mut sub, &want, &mut got, &mut shards).await;

    // `fanout lag`, asked of one shard, shows every partition with the shard owning it.
    let owners = ownership(&admin0, &topic).await;
    let mut out = Vec::new();
    let code = fanout_client::cli::run(
        [
            "fanout",
            "--admin",
            &s0.admin,
            "lag",
            "--topic",
            &topic,
            "--subscription",
            "billing",
            "--output",
            "json",
        ],
        &mut out,
    )
    .await;
    let out = String::from_utf8(out).unwrap();
    assert_eq!(
        format!("{code:?}"),
        format!("{:?}", std::process::ExitCode::SUCCESS),
        "{out}"
    );
    let lag: serde_json::Value = serde_json::from_str(&out).unwrap();
    let rows: BTreeMap<i32, String> = lag[0]["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                i32::try_from(p["partition"].as_i64().unwrap()).unwrap(),
                p["shard"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let expected: BTreeMap<i32, String> = owners
        .iter()
        .flat_map(|(id, ps)| ps.iter().map(move |p| (*p, id.clone())))
        .collect();
    assert_eq!(rows, expected, "{out}");

    println!(
        "records {}, deliveries {}, duplicates {}",
        want.len(),
        got.deliveries,
        got.duplicates()
    );
    assert_eq!(got.unique, want, "every record, nothing else");
    assert_eq!(
        got.duplicates(),
        0,
        "a graceful handover delivers nothing twice"
    );
}

/// A group member's state as Kafka describes the group: (members, state).
fn group_state(group: &str) -> (usize, String) {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", kafka())
        .create()
        .unwrap();
    let list = c
        .fetch_group_list(Some(group), Duration::from_secs(10))
        .unwrap();
    let g = list.groups().iter().find(|g| g.name() == group);
    g.map_or((0, String::new()), |g| {
        (g.members().len(), g.state().to_owned())
    })
}

/// Joins `group` on `topic` and polls until the consumer has taken part in a rebalance.
fn member(group: &str, topic: &str) -> BaseConsumer {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", kafka())
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("session.timeout.ms", "6000")
        .create()
        .unwrap();
    c.subscribe(&[topic]).unwrap();
    c
}

/// KIP-447 fencing of the cursor writer, without timing luck: a transaction carrying the
/// group metadata of a generation the group has left behind (a zombie's) is refused and
/// none of its cursor records becomes visible; the same write with the member's current
/// metadata commits.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cursor_transaction_of_an_old_group_generation_is_refused() {
    init_logs();
    let cluster = name("fence");
    let topic = name("fenced");
    create_topic(&topic, 1).await;
    let cfg = config(&cluster);
    fanout_server::store::topics::ensure(&cfg.kafka(), cfg.replication())
        .await
        .unwrap();
    let writer = CursorWriter::new(&cfg.kafka(), "shard-z").await.unwrap();
    let group = cfg.kafka().group_id();

    // A member of the shard group, and its metadata in the first generation.
    let (g, t) = (group.clone(), topic.clone());
    let (first, old) = tokio::task::spawn_blocking(move || {
        let c = member(&g, &t);
        let deadline = Instant::now() + Duration::from_secs(60);
        while c.assignment().unwrap().count() == 0 {
            assert!(Instant::now() < deadline, "no assignment");
            let _ = c.poll(Duration::from_millis(100));
        }
        let old = c.group_metadata().unwrap();
        (c, old)
    })
    .await
    .unwrap();
    // A second member joins: a new generation, which the first member takes part in.
    let (g, t) = (group.clone(), topic.clone());
    let (first, second) = tokio::task::spawn_blocking(move || {
        let second = member(&g, &t);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let _ = first.poll(Duration::from_millis(50));
            let _ = second.poll(Duration::from_millis(50));
            if group_state(&g) == (2, "Stable".to_owned()) {
                break;
            }
            assert!(Instant::now() < deadline, "the group did not settle");
        }
        (first, second)
    })
    .await
    .unwrap();

    let key = SubscriptionKey {
        topic: TopicName::new(&topic).unwrap(),
        name: SubscriptionName::new("billing").unwrap(),
    };
    let update = |cursor| CursorUpdate {
        subscription: key.clone(),
        incarnation: 1,
        partition: 0,
        cursor,
        acked: Vec::new(),
        seek: 0,
    };
    let offsets = |o| vec![(TopicName::new(&topic).unwrap(), 0, o)];
    let valid: Arc<dyn Fn() -> bool + Send + Sync> = Arc::new(|| true);

    // The zombie's write: refused, and nothing of it visible.
    let refused = writer
        .write(
            &[update(7)],
            &offsets(7),
            Membership::of(old),
            valid.clone(),
        )
        .await;
    assert!(
        refused.is_err(),
        "a stale generation's transaction committed"
    );
    assert_eq!(
        stored_cursors(&cluster).await.get(&("billing".into(), 0)),
        None
    );

    // The member's current metadata: committed and visible.
    let current = first.group_metadata().unwrap();
    writer
        .write(&[update(9)], &offsets(9), Membership::of(current), valid)
        .await
        .expect("a current member's transaction commits");
    assert_eq!(
        stored_cursors(&cluster).await.get(&("billing".into(), 0)),
        Some(&9)
    );
    tokio::task::spawn_blocking(move || drop((first, second)))
        .await
        .unwrap();
}
