//! Component tests of the stream loop, without Kafka: the service over an in-memory shard
//! (registry records applied by hand, a partition assigned, records appended to its shared
//! log), served on 127.0.0.1 port 0, driven by the generated client. Dead letters go to a
//! fake sink.

use std::time::Duration;

use fanout_core::log::{Batch, LogWriter};
use fanout_core::model::{DeliveryPolicy, Offset, Partition};
use fanout_core::shard::ShardLimits;
use fanout_core::testing;
use fanout_proto::v1::fanout_client::FanoutClient;
use fanout_proto::v1::subscribe_response::Kind as Reply;
use futures::future::BoxFuture;
use parking_lot::Mutex;
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;
use tokio::net::TcpListener;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::Code;
use tonic::transport::Channel;

use super::*;
use crate::wire;

/// Longest any wait in these tests may take.
const WAIT: Duration = Duration::from_secs(10);

/// Dead letters, as published; fails while `failing` is set.
#[derive(Debug, Default)]
struct FakeSink {
    published: Mutex<Vec<(String, Partition, Offset, u32)>>,
    failing: std::sync::atomic::AtomicBool,
}

impl DeadLetterSink for FakeSink {
    fn publish<'a>(
        &'a self,
        to: &'a TopicName,
        _subscription: &'a fanout_core::model::SubscriptionKey,
        _incarnation: i64,
        letter: &'a fanout_core::delivery::DeadLetter,
    ) -> BoxFuture<'a, Result<(), KafkaError>> {
        Box::pin(async move {
            if self.failing.load(std::sync::atomic::Ordering::SeqCst) {
                return Err(KafkaError::MessageProduction(
                    RDKafkaErrorCode::BrokerTransportFailure,
                ));
            }
            let offset = letter.chunk.records()[0].offset;
            self.published
                .lock()
                .push((to.to_string(), letter.partition, offset, letter.attempts));
            Ok(())
        })
    }
}

/// One shard with topic `orders` (one partition, owned) and subscription `billing`,
/// serving the gRPC service on a port of its own.
struct Fixture {
    shard: Arc<Shard>,
    topic: Arc<TopicRuntime>,
    writer: LogWriter,
    next: Offset,
    sink: Arc<FakeSink>,
    control: StreamControl,
    addr: std::net::SocketAddr,
}

fn t(name: &str) -> TopicName {
    testing::topic(name)
}

impl Fixture {
    async fn start(delivery: DeliveryPolicy) -> Self {
        let shard = Arc::new(Shard::new(ShardLimits::FOR_TESTS));
        // As the shard renews it (the lease lapses after 3 s without a renewal here).
        tokio::spawn(crate::lease::renew(
            shard.clone(),
            ShardLimits::FOR_TESTS.lease_gap,
            CancellationToken::new(),
        ));
        testing::apply(&shard, 0, &testing::topic_entry("orders"));
        testing::apply(
            &shard,
            1,
            &testing::subscription_entry("orders", "billing", &[(0, 0)], delivery),
        );
        let assigned = shard.assign(&t("orders"), 0, 0, 0);
        let writer = assigned.partition.log.writer().unwrap();
        let topic = shard.topic(&t("orders")).unwrap();
        let sink = Arc::new(FakeSink::default());
        let control = StreamControl::default();
        let limits = StreamLimits {
            max_credits: 1000,
            default_bytes: 1 << 20,
            take: ShardLimits::FOR_TESTS.take,
            open_timeout: Duration::from_secs(2),
            max_nack_delay: Duration::from_secs(60),
            max_ranges: 100,
        };
        let service = FanoutService::new(
            shard.clone(),
            limits,
            control.clone(),
            TaskTracker::new(),
            sink.clone(),
        );
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(FanoutServer::new(service))
                .serve_with_incoming(TcpListenerStream::new(listener)),
        );
        Self {
            shard,
            topic,
            writer,
            next: 0,
            sink,
            control,
            addr,
        }
    }

    /// Appends `n` records to the partition's shared log, as the partition's reader would.
    fn produce(&mut self, n: i64) {
        let records = (self.next..self.next + n)
            .map(|offset| {
                wire::record(wire::Parts {
                    partition: 0,
                    offset,
                    key: Some(b"k"),
                    value: Some(b"value"),
                    headers: &[],
                    timestamp: None,
                })
            })
            .collect();
        self.writer.append(Batch::new(records).unwrap()).unwrap();
        self.next += n;
        self.topic.wake();
    }

    fn billing(&self) -> Arc<SubscriptionRuntime> {
        self.shard
            .subscription(&t("orders"), &SubscriptionName::new("billing").unwrap())
            .unwrap()
            .1
    }

    fn cursor(&self) -> Offset {
        self.billing().cursors()[0].1
    }

    async fn client(&self) -> FanoutClient<Channel> {
        FanoutClient::connect(format!("http://{}", self.addr))
            .await
            .unwrap()
    }

    /// Opens a stream of `billing` with `credits`; returns its request sender and responses.
    async fn open(&self, credits: u32) -> Stream {
        self.open_as("orders", "billing", credits).await.unwrap()
    }

    async fn open_as(&self, topic: &str, sub: &str, credits: u32) -> Result<Stream, Status> {
        let (tx, rx) = mpsc::channel(16);
        tx.send(request(Kind::Open(pb::Open {
            topic: topic.into(),
            subscription: sub.into(),
            max_in_flight_records: credits,
            ..Default::default()
        })))
        .await
        .unwrap();
        let mut replies = self
            .client()
            .await
            .subscribe(ReceiverStream::new(rx))
            .await?
            .into_inner();
        let opened = next(&mut replies).await?;
        assert!(matches!(opened, Reply::Opened(_)), "{opened:?}");
        Ok(Stream { tx, replies })
    }
}

fn request(kind: Kind) -> pb::SubscribeRequest {
    pb::SubscribeRequest { kind: Some(kind) }
}

fn ranges(first: Offset, last: Offset) -> Vec<pb::PartitionRanges> {
    vec![pb::PartitionRanges {
        partition: 0,
        ranges: vec![pb::OffsetRange { first, last }],
    }]
}

/// The next reply, within [`WAIT`]; the stream's end status as an error.
async fn next(replies: &mut Streaming<pb::SubscribeResponse>) -> Result<Reply, Status> {
    match tokio::time::timeout(WAIT, replies.message()).await {
        Err(_) => panic!("no reply within {WAIT:?}"),
        Ok(Err(status)) => Err(status),
        Ok(Ok(None)) => Err(Status::cancelled("the stream ended without a status")),
        Ok(Ok(Some(r))) => Ok(r.kind.expect("a reply has a kind")),
    }
}

struct Stream {
    tx: mpsc::Sender<pb::SubscribeRequest>,
    replies: Streaming<pb::SubscribeResponse>,
}

impl Stream {
    /// Records received until `n` arrived: (offset, attempt).
    async fn records(&mut self, n: usize) -> Vec<(Offset, u32)> {
        let mut got = Vec::new();
        while got.len() < n {
            match next(&mut self.replies).await.unwrap() {
                Reply::Batch(b) => {
                    assert_eq!(b.topic, "orders");
                    assert_eq!(b.attempts.len(), b.records.len());
                    got.extend(b.records.iter().map(|r| r.offset).zip(b.attempts));
                }
                other => panic!("expected a batch, got {other:?}"),
            }
        }
        assert_eq!(got.len(), n, "more records than asked for: {got:?}");
        got
    }

    async fn send(&self, kind: Kind) {
        self.tx.send(request(kind)).await.unwrap();
    }

    async fn ack(&self, first: Offset, last: Offset) {
        self.send(Kind::Ack(pb::Ack {
            partitions: ranges(first, last),
        }))
        .await;
    }

    /// Nothing arrives for a moment (what a credit limit or a pause must give).
    async fn quiet(&mut self) {
        let r = tokio::time::timeout(Duration::from_millis(300), self.replies.message()).await;
        assert!(r.is_err(), "expected nothing, got {r:?}");
    }
}

/// Waits until `cond` holds, up to [`WAIT`], looking every 10 ms.
async fn until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !cond() {
        assert!(Instant::now() < deadline, "{what}: not within {WAIT:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn attempts(records: &[(Offset, u32)]) -> Vec<u32> {
    records.iter().map(|r| r.1).collect()
}

fn offsets(records: &[(Offset, u32)]) -> Vec<Offset> {
    records.iter().map(|r| r.0).collect()
}

#[tokio::test]
async fn a_stream_takes_within_its_credits_and_acks_move_the_cursor() {
    let mut f = Fixture::start(DeliveryPolicy::default()).await;
    f.produce(10);
    let mut s = f.open(4).await;
    let first = s.records(4).await;
    assert_eq!(offsets(&first), [0, 1, 2, 3]);
    assert_eq!(attempts(&first), [1, 1, 1, 1]);
    // Four in flight: the credits are spent.
    s.quiet().await;
    assert_eq!(f.cursor(), 0);
    s.ack(0, 3).await;
    assert_eq!(offsets(&s.records(4).await), [4, 5, 6, 7]);
    until("the cursor moves past the ack", || f.cursor() == 4).await;
    // Records produced later reach the open stream.
    s.ack(4, 7).await;
    assert_eq!(offsets(&s.records(2).await), [8, 9]);
    f.produce(1);
    assert_eq!(offsets(&s.records(1).await), [10]);
    s.ack(8, 10).await;
    until("everything acked", || f.cursor() == 11).await;
    assert_eq!(f.billing().in_flight(), 0);
}

#[tokio::test]
async fn a_nack_delivers_the_records_again_with_the_next_attempt() {
    let mut f = Fixture::start(DeliveryPolicy::default()).await;
    f.produce(3);
    let mut s = f.open(10).await;
    assert_eq!(offsets(&s.records(3).await), [0, 1, 2]);
    s.send(Kind::Nack(pb::Nack {
        partitions: ranges(1, 2),
        retry_delay_ms: 0,
        reason: "not now".into(),
    }))
    .await;
    let again = s.records(2).await;
    assert_eq!(again, [(1, 2), (2, 2)]);
    s.ack(0, 2).await;
    until("all acked", || f.cursor() == 3).await;
}

#[tokio::test]
async fn a_streams_end_gives_its_records_back_to_the_subscription() {
    let mut f = Fixture::start(DeliveryPolicy::default()).await;
    f.produce(5);
    let mut a = f.open(100).await;
    assert_eq!(offsets(&a.records(5).await), [0, 1, 2, 3, 4]);
    a.ack(0, 1).await;
    until("the ack applies", || f.cursor() == 2).await;
    assert_eq!(f.billing().in_flight(), 3);
    drop(a);
    until("the ended stream gave its records back", || {
        f.billing().in_flight() == 0 && f.billing().stream_count() == 0
    })
    .await;
    let mut b = f.open(100).await;
    assert_eq!(b.records(3).await, [(2, 2), (3, 2), (4, 2)]);
    assert_eq!(f.cursor(), 2, "nothing given back counts as acked");
}

#[tokio::test]
async fn a_record_out_of_attempts_goes_to_the_dead_letter_sink_then_counts_as_done() {
    let mut f = Fixture::start(DeliveryPolicy {
        max_attempts: 1,
        dead_letter_topic: Some(t("orders.dlq")),
        ..DeliveryPolicy::default()
    })
    .await;
    f.sink
        .failing
        .store(true, std::sync::atomic::Ordering::SeqCst);
    f.produce(2);
    let mut s = f.open(10).await;
    assert_eq!(offsets(&s.records(2).await), [0, 1]);
    s.ack(1, 1).await;
    s.send(Kind::Nack(pb::Nack {
        partitions: ranges(0, 0),
        retry_delay_ms: 0,
        reason: String::new(),
    }))
    .await;
    // Out of attempts: not delivered again; the failing sink holds the cursor.
    s.quiet().await;
    assert_eq!(f.cursor(), 0);
    assert!(f.sink.published.lock().is_empty());
    // Published once the sink works (retried every second), then done.
    f.sink
        .failing
        .store(false, std::sync::atomic::Ordering::SeqCst);
    until("the dead letter is published and counted", || {
        f.cursor() == 2
    })
    .await;
    assert_eq!(
        *f.sink.published.lock(),
        [("orders.dlq".to_owned(), 0, 0, 1)]
    );
    s.quiet().await;
}

#[tokio::test]
async fn refused_streams_end_with_a_status_and_get_nothing() {
    let mut f = Fixture::start(DeliveryPolicy::default()).await;
    f.produce(3);
    let e = f.open_as("orders", "nobody", 10).await.err().unwrap();
    assert_eq!(e.code(), Code::NotFound, "{e}");
    let e = f.open_as("orders", "billing", 0).await.err().unwrap();
    assert_eq!(e.code(), Code::InvalidArgument, "{e}");
    assert!(e.message().contains("at least 1"), "{e}");
    // An ack first, not an open.
    let (tx, rx) = mpsc::channel(1);
    tx.send(request(Kind::Ack(pb::Ack {
        partitions: ranges(0, 0),
    })))
    .await
    .unwrap();
    let e = f
        .client()
        .await
        .subscribe(ReceiverStream::new(rx))
        .await
        .err()
        .unwrap();
    assert_eq!(e.code(), Code::InvalidArgument, "{e}");
    // An ack of records never delivered refuses the whole message and ends the stream.
    let mut s = f.open(1).await;
    assert_eq!(offsets(&s.records(1).await), [0]);
    s.ack(0, 2).await;
    let e = next(&mut s.replies).await.err().unwrap();
    assert_eq!(e.code(), Code::InvalidArgument, "{e}");
    assert!(e.message().contains("nothing applied"), "{e}");
    assert_eq!(f.cursor(), 0, "nothing was acked");
    until("the refused stream's record is given back", || {
        f.billing().in_flight() == 0
    })
    .await;
    assert_eq!(f.billing().unacked(), 1);
}

#[tokio::test]
async fn a_drain_stops_new_deliveries_but_takes_acks_and_a_close_ends_the_stream() {
    let mut f = Fixture::start(DeliveryPolicy::default()).await;
    f.produce(2);
    let mut s = f.open(1).await;
    assert_eq!(offsets(&s.records(1).await), [0]);
    f.control.drain.cancel();
    s.ack(0, 0).await;
    until("the ack during the drain applies", || f.cursor() == 1).await;
    s.quiet().await;
    f.control.close.cancel();
    let e = next(&mut s.replies).await.err().unwrap();
    assert_eq!(e.code(), Code::Unavailable, "{e}");
    assert_eq!(f.cursor(), 1);
}
