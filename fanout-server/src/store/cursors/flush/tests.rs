//! Component tests of the flusher, without Kafka: an in-memory shard whose subscription
//! acks records, and a cursor store that keeps what it was given (or fails).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};

use fanout_core::delivery::{Credits, OffsetRange, StreamId};
use fanout_core::log::Batch;
use fanout_core::model::{Record, SubscriptionName};
use fanout_core::shard::{CursorUpdate, ShardLimits, SubscriptionRuntime};
use fanout_core::testing;
use futures::future::BoxFuture;
use parking_lot::Mutex;

use super::*;
use crate::store::cursors::Membership;

/// One write the store was asked for.
#[derive(Debug, Clone)]
struct Written {
    cursors: Vec<(Partition, Offset)>,
    offsets: Vec<(Partition, Offset)>,
}

#[derive(Debug, Default)]
struct FakeStore {
    written: Arc<Mutex<Vec<Written>>>,
    failing: Arc<AtomicBool>,
}

impl CursorStore for FakeStore {
    fn write<'a>(
        &'a self,
        updates: &'a [CursorUpdate],
        offsets: &'a [(TopicName, Partition, Offset)],
        _membership: Membership,
        still_valid: Arc<dyn Fn() -> bool + Send + Sync>,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            if self.failing.load(Ordering::SeqCst) || !still_valid() {
                return Err(StoreError::Timeout {
                    what: "a fake cursor transaction".into(),
                    after: Duration::ZERO,
                });
            }
            self.written.lock().push(Written {
                cursors: updates.iter().map(|u| (u.partition, u.cursor)).collect(),
                offsets: offsets.iter().map(|(_, p, o)| (*p, *o)).collect(),
            });
            Ok(())
        })
    }
}

fn t(name: &str) -> TopicName {
    testing::topic(name)
}

struct Fixture {
    shard: Arc<Shard>,
    flusher: Arc<Flusher>,
    written: Arc<Mutex<Vec<Written>>>,
    failing: Arc<AtomicBool>,
    billing: Arc<SubscriptionRuntime>,
}

/// Topic `orders` with two owned partitions holding 10 records each, subscription
/// `billing` from offset 0, and a stream that took everything.
fn fixture() -> Fixture {
    fixture_with(ShardLimits::FOR_TESTS)
}

fn fixture_with(limits: ShardLimits) -> Fixture {
    let shard = Arc::new(Shard::new(limits));
    shard.lease().start(Instant::now());
    testing::apply(&shard, 0, &testing::topic_entry("orders"));
    testing::apply(
        &shard,
        1,
        &testing::subscription_entry("orders", "billing", &[(0, 0), (1, 0)], Default::default()),
    );
    for p in [0, 1] {
        let owned = shard.assign(&t("orders"), p, 0, 10).partition;
        let records = (0..10)
            .map(|offset| Record {
                partition: p,
                offset,
                key: None,
                value: Some(bytes::Bytes::from_static(b"v")),
                headers: Arc::new([]),
                timestamp: None,
                wire: bytes::Bytes::new(),
            })
            .collect();
        let mut w = owned.log.writer().unwrap();
        w.append(Batch::new(records).unwrap()).unwrap();
    }
    let (_, billing) = shard
        .subscription(&t("orders"), &SubscriptionName::new("billing").unwrap())
        .unwrap();
    billing.open_stream(
        StreamId(1),
        Credits {
            max_records: 100,
            max_bytes: usize::MAX,
        },
    );
    let taken = billing.take(StreamId(1), Instant::now(), ShardLimits::FOR_TESTS.take);
    assert_eq!(taken.records(), 20);
    let store = FakeStore::default();
    let (written, failing) = (store.written.clone(), store.failing.clone());
    let flusher = Arc::new(Flusher::new(shard.clone(), store));
    flusher.set_group(Arc::new(|| Some(Membership::unchecked())));
    Fixture {
        shard,
        flusher,
        written,
        failing,
        billing,
    }
}

impl Fixture {
    fn ack(&self, partition: Partition, first: Offset, last: Offset) {
        self.billing
            .ack(
                StreamId(1),
                &[(partition, vec![OffsetRange { first, last }])],
            )
            .unwrap();
    }

    fn writes(&self) -> Vec<Written> {
        self.written.lock().clone()
    }
}

#[tokio::test]
async fn a_flush_writes_moved_cursors_with_their_offsets_once() {
    let f = fixture();
    // The first flush stores the starts the assignment decided (they are not in Kafka).
    assert_eq!(f.flusher.flush(None).await.unwrap(), 0);
    let first = f.writes();
    assert_eq!(first.len(), 1, "{first:?}");
    assert_eq!(first[0].offsets, [(0, 0), (1, 0)]);
    f.ack(0, 0, 4);
    assert_eq!(f.flusher.flush(None).await.unwrap(), 1);
    let w = f.writes().pop().unwrap();
    assert_eq!(w.cursors, [(0, 5)]);
    // The partition whose cursor is written carries its offset (fencing), changed or not.
    assert_eq!(w.offsets, [(0, 5)]);
    assert_eq!(
        f.shard.durable_cursors(&f.billing.spec()),
        BTreeMap::from([(0, 5), (1, 0)])
    );
    // Nothing moved: nothing written.
    let before = f.writes().len();
    assert_eq!(f.flusher.flush(None).await.unwrap(), 0);
    assert_eq!(f.writes().len(), before);
    // Only the partitions asked for (a revoke flushes its own).
    f.ack(0, 5, 9);
    f.ack(1, 0, 9);
    let only = [(t("orders"), 1)];
    assert_eq!(f.flusher.flush(Some(&only)).await.unwrap(), 1);
    assert_eq!(f.writes().pop().unwrap().cursors, [(1, 10)]);
    assert_eq!(f.flusher.flush(None).await.unwrap(), 1);
    assert_eq!(f.writes().pop().unwrap().cursors, [(0, 10)]);
}

#[tokio::test]
async fn a_failed_write_stores_nothing_and_the_next_flush_writes_it_again() {
    let f = fixture();
    f.flusher.flush(None).await.unwrap();
    f.ack(1, 0, 2);
    f.failing.store(true, Ordering::SeqCst);
    let before = f.writes().len();
    assert!(f.flusher.flush(None).await.is_err());
    assert_eq!(f.writes().len(), before);
    assert_eq!(
        f.shard.durable_cursors(&f.billing.spec())[&1],
        0,
        "not stored"
    );
    f.failing.store(false, Ordering::SeqCst);
    assert_eq!(f.flusher.flush(None).await.unwrap(), 1);
    assert_eq!(f.writes().pop().unwrap().cursors, [(1, 3)]);
    assert_eq!(f.shard.durable_cursors(&f.billing.spec())[&1], 3);
}

#[tokio::test]
async fn a_suspended_lease_writes_offsets_alone_and_a_commit_lifts_it() {
    let f = fixture_with(ShardLimits {
        lease_gap: Duration::from_millis(200),
        ..ShardLimits::FOR_TESTS
    });
    let lease = f.shard.lease();
    lease.renew(Instant::now());
    f.flusher.flush(None).await.unwrap();
    f.ack(0, 0, 1);
    // The process is stopped longer than the lease allows: the time passing is the test.
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(lease.renew(Instant::now()).is_some());
    assert!(lease.is_suspended());
    let before = f.writes().len();
    assert_eq!(f.flusher.flush(None).await.unwrap(), 0);
    let proof = &f.writes()[before..];
    assert_eq!(proof.len(), 1, "{proof:?}");
    assert!(proof[0].cursors.is_empty(), "no cursor while suspended");
    assert_eq!(proof[0].offsets, [(0, 0), (1, 0)], "the committed offsets");
    // The transaction began after the gap: the shard is still a member.
    assert!(!lease.is_suspended());
    lease.renew(Instant::now());
    assert_eq!(f.flusher.flush(None).await.unwrap(), 1);
    assert_eq!(f.writes().pop().unwrap().cursors, [(0, 2)]);
}

#[tokio::test]
async fn nothing_is_written_before_the_shard_is_a_group_member() {
    let f = fixture();
    let store = FakeStore::default();
    let written = store.written.clone();
    let flusher = Flusher::new(f.shard.clone(), store);
    f.ack(0, 0, 0);
    assert_eq!(flusher.flush(None).await.unwrap(), 0);
    assert!(written.lock().is_empty());
}
