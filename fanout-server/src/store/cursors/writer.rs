//! Writes cursor records, together with the shard group's offsets, in Kafka transactions.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use fanout_core::model::{Offset, Partition, TopicName};
use fanout_core::shard::CursorUpdate;
use futures::future::{BoxFuture, join_all};
use parking_lot::Mutex;
use rdkafka::consumer::ConsumerGroupMetadata;
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::util::Timeout;
use rdkafka::{Offset as KafkaOffset, TopicPartitionList};

use super::{StoredCursor, encode_key, encode_value};
use crate::kafka::{self, KafkaSettings};
use crate::store::StoreError;

/// The writer's role, in its `client.id` and the `client` label of its traffic.
const ROLE: &str = "cursor-writer";

/// The transactional producer.
type TxnProducer = FutureProducer<kafka::StatsContext>;

/// The shard's membership of its group at one moment (its generation): a cursor
/// transaction carries it, and Kafka refuses the offsets of a member whose generation is
/// gone, so a zombie's cursors never become visible (KIP-447).
pub struct Membership(Option<ConsumerGroupMetadata>);

impl Membership {
    /// The group consumer's metadata, as of now.
    pub fn of(metadata: ConsumerGroupMetadata) -> Self {
        Self(Some(metadata))
    }

    /// A membership no broker checks, for cursor stores that do not fence (tests). The
    /// Kafka store refuses to commit offsets with it.
    pub fn unchecked() -> Self {
        Self(None)
    }
}

impl std::fmt::Debug for Membership {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "Membership"
        } else {
            "Membership(unchecked)"
        })
    }
}

/// Source of this shard's membership (the ingest consumer's group metadata), for fencing;
/// `None` while there is no group member. Blocking.
pub type MembershipSource = Arc<dyn Fn() -> Option<Membership> + Send + Sync>;

/// Where cursors and the shard group's offsets are written: Kafka ([`CursorWriter`]), or a
/// fake in the flusher's component tests.
pub trait CursorStore: Send + Sync + std::fmt::Debug + 'static {
    /// Writes `updates` and commits `offsets` as `membership`, atomically; `still_valid` is
    /// asked last, before the commit: if it says no, nothing is written.
    fn write<'a>(
        &'a self,
        updates: &'a [CursorUpdate],
        offsets: &'a [(TopicName, Partition, Offset)],
        membership: Membership,
        still_valid: Arc<dyn Fn() -> bool + Send + Sync>,
    ) -> BoxFuture<'a, Result<(), StoreError>>;
}

/// Writes cursor records, together with the shard group's offsets, in Kafka transactions.
///
/// A transaction that fails is aborted. One whose outcome stays unknown (a commit or abort
/// that timed out), or a producer Kafka fenced (its transaction outlived the transaction
/// timeout, e.g. while the process was stopped), makes the writer start over with a new
/// producer under the same transactional id, which aborts whatever the old one left open.
/// A *new* producer fenced before it committed anything means another live process
/// registered this shard's transactional id: the writer is then dead for good
/// ([`StoreError::Fenced`]), and the shard stops.
pub struct CursorWriter {
    /// Settings of the transactional producer, to create it again.
    settings: rdkafka::ClientConfig,
    /// The producer in use.
    producer: Mutex<TxnProducer>,
    /// Set when the producer must be created again before the next transaction.
    broken: AtomicBool,
    /// True until the producer in use committed a transaction.
    fresh: AtomicBool,
    /// Set once fenced for good: nothing is written any more.
    dead: AtomicBool,
    /// The shard's name, written into every cursor record.
    shard: String,
    /// The cursors topic.
    topic: String,
}

impl std::fmt::Debug for CursorWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CursorWriter")
            .field("topic", &self.topic)
            .finish_non_exhaustive()
    }
}

/// How long each transactional call may take. The calls of one transaction (sends,
/// offsets, and a commit tried twice) stay within the transaction timeout, so a slow broker
/// costs an abort and a retry, not a producer fenced for outliving its transaction.
const TXN_CALL_TIMEOUT: Duration = Duration::from_secs(2);

/// Tries of a commit or abort whose outcome is unknown (a retriable error).
const TXN_TRIES: usize = 2;

/// What a failed transactional call leaves to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Failure {
    /// The same call may be made again.
    Retriable,
    /// The transaction must be aborted.
    Abortable,
    /// The producer is unusable.
    Fatal,
}

fn failure(e: &KafkaError) -> Failure {
    match e {
        KafkaError::Transaction(t) if t.is_fatal() => Failure::Fatal,
        KafkaError::Transaction(t) if t.txn_requires_abort() => Failure::Abortable,
        KafkaError::Transaction(t) if t.is_retriable() => Failure::Retriable,
        _ => Failure::Abortable,
    }
}

fn kafka_error(what: &str, source: KafkaError) -> StoreError {
    StoreError::Kafka {
        what: what.to_owned(),
        source,
    }
}

/// Why a transaction did not commit, and what it left behind.
struct Failed {
    error: StoreError,
    /// The producer is in an unknown state or fenced: start over with a new one.
    broken: bool,
    /// Kafka fenced the producer.
    fenced: bool,
}

impl Failed {
    fn kafka(what: &str, e: KafkaError) -> Self {
        let kind = failure(&e);
        Self {
            error: kafka_error(what, e),
            broken: kind == Failure::Fatal,
            fenced: kind == Failure::Fatal,
        }
    }
}

/// Runs a transactional call, again while its outcome is unknown.
fn with_retries(mut call: impl FnMut() -> KafkaResult<()>) -> KafkaResult<()> {
    let mut last = None;
    for _ in 0..TXN_TRIES {
        match call() {
            Ok(()) => return Ok(()),
            Err(e) if failure(&e) == Failure::Retriable => last = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last.unwrap_or(KafkaError::Canceled))
}

/// Runs a blocking librdkafka call off the async workers.
async fn blocking<T: Send + 'static>(
    call: impl FnOnce() -> KafkaResult<T> + Send + 'static,
) -> KafkaResult<T> {
    tokio::task::spawn_blocking(call)
        .await
        .unwrap_or(Err(KafkaError::Canceled))
}

impl CursorWriter {
    /// Creates the producer and registers its transactional id with Kafka, which aborts
    /// whatever an earlier life of this shard left open.
    pub async fn new(cfg: &KafkaSettings, shard_name: &str) -> Result<Self, StoreError> {
        let settings =
            kafka::transactional_settings(cfg, ROLE, &cfg.cursor_transactional_id(shard_name));
        let producer = Self::start(&settings)
            .await
            .map_err(|e| kafka_error("registering the cursor writer's transactional id", e))?;
        Ok(Self {
            settings,
            producer: Mutex::new(producer),
            broken: AtomicBool::new(false),
            fresh: AtomicBool::new(true),
            dead: AtomicBool::new(false),
            shard: shard_name.to_owned(),
            topic: cfg.cursors_topic(),
        })
    }

    async fn start(settings: &rdkafka::ClientConfig) -> KafkaResult<TxnProducer> {
        // A new context: each producer's statistics count from its own start.
        let producer: TxnProducer = settings.create_with_context(kafka::StatsContext::new(ROLE))?;
        let p = producer.clone();
        blocking(move || p.init_transactions(Duration::from_secs(60))).await?;
        Ok(producer)
    }

    /// The producer to use, created again first if the last one broke.
    async fn producer(&self) -> Result<TxnProducer, StoreError> {
        if self.dead.load(Ordering::Acquire) {
            return Err(StoreError::Fenced(
                "the cursor writer was fenced earlier".into(),
            ));
        }
        if self.broken.load(Ordering::Acquire) {
            tracing::warn!("starting the cursor writer over with a new producer");
            let fresh = Self::start(&self.settings)
                .await
                .map_err(|e| kafka_error("starting the cursor writer over", e))?;
            let old = std::mem::replace(&mut *self.producer.lock(), fresh);
            // Dropping a producer blocks (it flushes and joins its thread).
            tokio::task::spawn_blocking(move || drop(old));
            self.fresh.store(true, Ordering::Release);
            self.broken.store(false, Ordering::Release);
        }
        Ok(self.producer.lock().clone())
    }

    async fn transact(
        &self,
        producer: &TxnProducer,
        updates: &[CursorUpdate],
        offsets: &[(TopicName, Partition, Offset)],
        group: Option<ConsumerGroupMetadata>,
        still_valid: Arc<dyn Fn() -> bool + Send + Sync>,
    ) -> Result<(), Failed> {
        let p = producer.clone();
        blocking(move || p.begin_transaction()).await.map_err(|e| {
            // A transaction left in an unknown state: start over.
            let mut f = Failed::kafka("beginning a cursor transaction", e);
            f.broken = true;
            f
        })?;
        let encoded: Vec<(String, Vec<u8>)> = updates
            .iter()
            .map(|u| {
                let value = StoredCursor {
                    offset: u.cursor,
                    incarnation: u.incarnation,
                    acked: u.acked.clone(),
                    seek: u.seek,
                };
                (
                    encode_key(&u.subscription, u.partition),
                    encode_value(&value, Some(&self.shard)),
                )
            })
            .collect();
        let sends = encoded.iter().map(|(k, v)| {
            producer.send(
                FutureRecord::to(&self.topic).key(k).payload(v),
                Timeout::After(TXN_CALL_TIMEOUT),
            )
        });
        for r in join_all(sends).await {
            r.map_err(|(e, _)| Failed::kafka(&format!("writing cursors to {}", self.topic), e))?;
        }
        let mut tpl = TopicPartitionList::new();
        for (t, part, o) in offsets {
            tpl.add_partition_offset(t.as_str(), *part, KafkaOffset::Offset(*o))
                .map_err(|e| Failed::kafka("building the offsets to commit", e))?;
        }
        if tpl.count() > 0 && group.is_none() {
            return Err(Failed::kafka(
                "committing the shard group's offsets (not a group member)",
                KafkaError::Canceled,
            ));
        }
        let p = producer.clone();
        tokio::task::spawn_blocking(move || {
            if let Some(metadata) = group.filter(|_| tpl.count() > 0) {
                p.send_offsets_to_transaction(&tpl, &metadata, TXN_CALL_TIMEOUT)
                    .map_err(|e| Failed::kafka("committing the shard group's offsets", e))?;
            }
            if !still_valid() {
                return Err(Failed {
                    error: StoreError::Timeout {
                        what: "a cursor transaction (the process was stopped, or a partition moved, meanwhile)".into(),
                        after: TXN_CALL_TIMEOUT,
                    },
                    broken: false,
                    fenced: false,
                });
            }
            with_retries(|| p.commit_transaction(TXN_CALL_TIMEOUT)).map_err(|e| {
                // Still unknown after the retries: start over rather than guess.
                let unknown = failure(&e) == Failure::Retriable;
                let mut f = Failed::kafka("committing a cursor transaction", e);
                f.broken |= unknown;
                f
            })
        })
        .await
        .map_err(|_| Failed::kafka("committing a cursor transaction", KafkaError::Canceled))?
    }
}

impl CursorStore for CursorWriter {
    /// Writes every update and commits `offsets` for the shard group in one transaction;
    /// returns once Kafka committed it. Kafka checks `membership` (the shard's group metadata,
    /// taken before the updates were): a shard that is no longer the member it was (a
    /// zombie) has the whole transaction refused. `still_valid` is asked just before the
    /// commit: false aborts it (the process was stopped, or a partition moved, meanwhile).
    fn write<'a>(
        &'a self,
        updates: &'a [CursorUpdate],
        offsets: &'a [(TopicName, Partition, Offset)],
        membership: Membership,
        still_valid: Arc<dyn Fn() -> bool + Send + Sync>,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        let group = membership.0;
        Box::pin(async move {
            let producer = self.producer().await?;
            let result = self
                .transact(&producer, updates, offsets, group, still_valid)
                .await;
            let Err(mut failed) = result else {
                self.fresh.store(false, Ordering::Release);
                return Ok(());
            };
            crate::telemetry::metrics::cursor_transaction_aborted();
            if !failed.broken {
                let p = producer.clone();
                if let Err(e) =
                    blocking(move || with_retries(|| p.abort_transaction(TXN_CALL_TIMEOUT))).await
                {
                    tracing::warn!(error = %e, "a cursor transaction could not be aborted");
                    failed.broken = true;
                    failed.fenced |= failure(&e) == Failure::Fatal;
                }
            }
            if failed.broken {
                self.broken.store(true, Ordering::Release);
            }
            if failed.fenced && self.fresh.load(Ordering::Acquire) {
                self.dead.store(true, Ordering::Release);
                return Err(StoreError::Fenced(failed.error.to_string()));
            }
            Err(failed.error)
        })
    }
}
