//! Reads the registered topics from Kafka, once per shard, into the shared partition windows.
//!
//! One consumer in the cluster's group (`cooperative-sticky`) is subscribed to every
//! registered topic. Its main queue is served on a dedicated thread (the "driver"), where
//! rebalance callbacks run: on assign, the shard decides each partition's start (the lowest
//! cursor of its subscriptions, resolved against the watermarks) and the partition is assigned
//! at that explicit offset, then split into its own queue and read by its own task; on revoke,
//! deliveries stop, the acks of what is in flight are waited for, the final cursors and the
//! group offsets are committed in one transaction, and the partition is let go. Together with
//! the assign side (cursors are read up to the end first), that is the handover barrier.
//! Offsets are never auto-committed and `auto.offset.reset` is `error`: a start position is
//! always explicit.

pub mod catchup;
mod partition;

use std::collections::HashMap;
use std::sync::mpsc::RecvTimeoutError;
use std::sync::{Arc, OnceLock, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use fanout_core::model::{Offset, Partition, TopicName};
use fanout_core::shard::{Loss, OwnedPartition, Shard};
use futures::FutureExt;
use parking_lot::Mutex;
use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, StreamConsumer};
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{Offset as KafkaOffset, TopicPartitionList};
use tokio::runtime::Handle;
use tokio::sync::{Notify, mpsc, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::kafka::{self, KafkaSettings};
use crate::store::StoreError;
use crate::store::cursors::{CursorTail, Flusher, Membership};
use crate::telemetry;

/// The shard's group consumer.
pub type IngestConsumer = StreamConsumer<IngestContext>;

/// How long a revoke may spend writing the final cursors before giving up (the next owner
/// then starts from the previous flush: duplicates, never loss).
const REVOKE_FLUSH_TIMEOUT: Duration = Duration::from_secs(15);

/// How long an assign may spend reading the watermarks of its new partitions, all together.
const WATERMARKS_TIMEOUT: Duration = Duration::from_secs(60);

/// Reports records lost to retention, loudly.
pub fn report_losses(losses: &[Loss]) {
    for l in losses {
        telemetry::metrics::lost_records(
            l.subscription.topic.as_str(),
            l.subscription.name.as_str(),
            l.partition,
            u64::try_from(l.log_start - l.cursor).unwrap_or(0),
        );
        tracing::error!(
            subscription = %l.subscription,
            partition = l.partition,
            cursor = l.cursor,
            log_start = l.log_start,
            lost = l.log_start - l.cursor,
            "retention deleted records this subscription had not acked; it continues at the log start"
        );
    }
}

/// Callbacks of the group consumer; runs on the driver thread.
pub struct IngestContext {
    /// Where partitions and records go.
    shard: Arc<Shard>,
    /// Writes final cursors on revoke.
    flusher: Arc<Flusher>,
    /// Read up to the end at assign, so the previous owner's final cursors count.
    cursors: Arc<CursorTail>,
    /// Longest wait for that at assign.
    barrier_timeout: Duration,
    /// Longest wait, at revoke, for acks of records in flight.
    drain_timeout: Duration,
    /// The application runtime, where partition tasks and flushes run.
    app: Handle,
    /// Partition reader tasks, awaited before the consumer is dropped.
    readers: TaskTracker,
    /// The consumer itself, to split partition queues (set right after creation).
    consumer: OnceLock<Weak<IngestConsumer>>,
    /// Cancels each partition's reader task.
    reader_tokens: Mutex<HashMap<(TopicName, Partition), CancellationToken>>,
    /// Readers of newly assigned partitions, started by the driver once it has taken any
    /// record fetched before the partition's queue was split off the main queue.
    pending: Mutex<Vec<partition::Reader>>,
    /// Tells the driver that readers are pending.
    assigned: Notify,
    /// Readers ask the driver to restart them from an offset (rewinds, offset resets).
    restarts: mpsc::UnboundedSender<partition::Restart>,
    /// Counts the consumer's traffic (its statistics arrive on the driver thread).
    stats: kafka::stats::ClientStats,
}

impl std::fmt::Debug for IngestContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IngestContext").finish_non_exhaustive()
    }
}

impl ClientContext for IngestContext {
    fn error(&self, error: KafkaError, reason: &str) {
        tracing::warn!(%error, reason, "kafka client error (ingest)");
    }

    fn stats_raw(&self, statistics: &[u8]) {
        self.stats.record(statistics);
    }
}

impl ConsumerContext for IngestContext {
    fn rebalance(
        &self,
        base: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => self.on_assign(base, tpl),
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => self.on_revoke(base, tpl),
            other => {
                // librdkafka wants the assignment dropped on a rebalance error; do it the
                // careful way, flushing and committing first.
                tracing::error!(error = ?other, "rebalance error; giving up the partitions");
                self.on_revoke(base, tpl);
            }
        }
    }

    fn commit_callback(&self, result: KafkaResult<()>, _offsets: &TopicPartitionList) {
        if let Err(e) = result {
            tracing::warn!(error = %e, "offset commit failed");
        }
    }
}

fn partitions_of(tpl: &TopicPartitionList) -> Vec<(String, Partition)> {
    tpl.elements()
        .iter()
        .map(|e| (e.topic().to_owned(), e.partition()))
        .collect()
}

impl IngestContext {
    fn on_assign(&self, base: &BaseConsumer<Self>, tpl: &mut TopicPartitionList) {
        self.shard.mark_group_joined();
        let parts = partitions_of(tpl);
        if !parts.is_empty() {
            self.read_cursors_to_end(parts.len());
        }
        // All of this callback stays well below max.poll.interval.ms (300 s): the barrier
        // (at most 125 s), then the watermarks of every new partition within a minute.
        let watermarks_deadline = Instant::now() + WATERMARKS_TIMEOUT;
        let mut owned = Vec::with_capacity(parts.len());
        for (topic, p) in &parts {
            let Ok(name) = TopicName::new(topic) else {
                tracing::error!(topic, "assigned a topic fanout cannot name; skipping it");
                continue;
            };
            let (low, high) = watermarks_with_retry(base, topic, *p, watermarks_deadline);
            let assigned = self.shard.assign(&name, *p, low, high);
            for s in self
                .shard
                .topic(&name)
                .map(|t| t.subscriptions())
                .unwrap_or_default()
            {
                telemetry::metrics::track_losses(topic, s.spec().name.as_str(), *p);
            }
            report_losses(&assigned.losses);
            if let Err(e) = tpl.set_partition_offset(topic, *p, KafkaOffset::Offset(assigned.start))
            {
                tracing::error!(topic, partition = p, error = %e, "cannot set start offset");
            }
            tracing::info!(
                topic,
                partition = p,
                start = assigned.start,
                low,
                high,
                "partition assigned"
            );
            owned.push((name, assigned.partition));
        }
        let result = match base.rebalance_protocol() {
            rdkafka::consumer::RebalanceProtocol::Cooperative => base.incremental_assign(tpl),
            _ => base.assign(tpl),
        };
        if let Err(e) = result {
            tracing::error!(error = %e, "assign failed");
        }
        let Some(consumer) = self.consumer.get().and_then(Weak::upgrade) else {
            return;
        };
        for (_, part) in owned {
            self.prepare_reader(&consumer, part);
        }
        self.assigned.notify_one();
    }

    /// Runs `fut` on the application runtime and waits for it here, on the driver thread,
    /// at most `timeout` (the driver's own runtime cannot run it: the callbacks block it).
    fn wait_on_app<T: Send + 'static>(
        &self,
        fut: impl std::future::Future<Output = T> + Send + 'static,
        timeout: Duration,
    ) -> Result<T, RecvTimeoutError> {
        let (tx, rx) = std::sync::mpsc::channel();
        self.app.spawn(async move {
            let _ = tx.send(fut.await);
        });
        rx.recv_timeout(timeout)
    }

    /// The assign half of the handover barrier: waits until every cursor record written
    /// before now is applied (the previous owner's final flush; a transaction of a shard that
    /// died in the middle of one is waited for until Kafka aborts it). Gives up after the
    /// barrier timeout and starts from what it has: older cursors, so duplicates, not loss.
    fn read_cursors_to_end(&self, partitions: usize) {
        let started = Instant::now();
        let cursors = self.cursors.clone();
        let timeout = self.barrier_timeout;
        let result = self.wait_on_app(
            async move { cursors.barrier(timeout).await },
            timeout + Duration::from_secs(5),
        );
        telemetry::metrics::assign_barrier(started.elapsed());
        match result {
            Ok(Ok(())) => tracing::debug!(
                partitions,
                elapsed = ?started.elapsed(),
                "cursors read to the end before assigning"
            ),
            Ok(Err(e)) => tracing::error!(
                error = %e,
                "cannot read the cursors to the end; starting from those read so far (records since the previous owner's last flush may be delivered again)"
            ),
            Err(_) => tracing::error!(
                "reading the cursors to the end did not finish; starting from those read so far"
            ),
        }
    }

    /// The revoke half of the handover barrier, before the final flush: deliveries of the
    /// partitions have stopped; waits until what is in flight was acked (or the drain timeout
    /// passed: those records go to the next owner again).
    fn drain(&self, parts: &[(TopicName, Partition)]) {
        let started = Instant::now();
        let deadline = started + self.drain_timeout;
        loop {
            let in_flight = self.shard.in_flight_of(parts);
            if in_flight == 0 {
                telemetry::metrics::revoke_drain(started.elapsed(), 0);
                tracing::debug!(elapsed = ?started.elapsed(), "revoked partitions drained");
                return;
            }
            if Instant::now() >= deadline {
                telemetry::metrics::revoke_drain(started.elapsed(), in_flight);
                tracing::warn!(
                    in_flight,
                    timeout = ?self.drain_timeout,
                    "records of revoked partitions still unacked at the drain deadline; their next owner delivers them again"
                );
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Splits a partition's queue off the main queue and makes its reader pending.
    fn prepare_reader(&self, consumer: &Arc<IngestConsumer>, owned: Arc<OwnedPartition>) {
        let (name, p) = (owned.topic.clone(), owned.partition);
        let Some(topic) = self.shard.topic(&name) else {
            return;
        };
        let Some(queue) = consumer.split_partition_queue(name.as_str(), p) else {
            tracing::error!(topic = %name, partition = p, "cannot split partition queue");
            return;
        };
        let token = CancellationToken::new();
        let metrics = telemetry::metrics::Ingest::new(name.as_str());
        self.reader_tokens.lock().insert((name, p), token.clone());
        self.pending.lock().push(partition::Reader {
            shard: self.shard.clone(),
            topic,
            owned,
            queue,
            consumer: Arc::downgrade(consumer),
            token,
            initial: Vec::new(),
            restarts: self.restarts.clone(),
            metrics,
        });
    }

    /// Reads a partition again from `offset`: it is assigned anew at that offset (the one
    /// way out of librdkafka's stopped state after `auto.offset.reset=error`, and a clean
    /// cut for rewinds: nothing fetched before it can follow). Runs on the driver thread, in
    /// order with the rebalance callbacks.
    fn restart(&self, consumer: &Arc<IngestConsumer>, r: partition::Restart) {
        let (name, p) = (r.owned.topic.clone(), r.owned.partition);
        let current = self.shard.topic(&name).and_then(|t| t.partition(p));
        if r.owned.is_revoked() || !current.is_some_and(|c| Arc::ptr_eq(&c, &r.owned)) {
            return;
        }
        let result = (|| {
            let mut tpl = TopicPartitionList::new();
            tpl.add_partition(name.as_str(), p);
            consumer.incremental_unassign(&tpl)?;
            let mut tpl = TopicPartitionList::new();
            tpl.add_partition_offset(name.as_str(), p, KafkaOffset::Offset(r.offset))?;
            consumer.incremental_assign(&tpl)
        })();
        if let Err(e) = result {
            tracing::error!(topic = %name, partition = p, error = %e, "cannot re-assign the partition");
            return;
        }
        tracing::info!(topic = %name, partition = p, offset = r.offset, "partition reader restarted");
        self.prepare_reader(consumer, r.owned);
        self.start_pending(consumer);
    }

    /// A record that arrived on the main queue. Records fetched before a partition's queue
    /// was split go there; they precede everything the split queue yields, so they become
    /// the first records of the partition's pending reader. For a partition already being
    /// read (which librdkafka's forwarding rules out) the partition is read again from it.
    fn stray(&self, m: &BorrowedMessage<'_>) {
        let mut pending = self.pending.lock();
        if let Some(r) = pending
            .iter_mut()
            .find(|r| r.owned.topic.as_str() == m.topic() && r.owned.partition == m.partition())
        {
            r.initial.push(partition::to_record(m));
            return;
        }
        drop(pending);
        tracing::error!(
            topic = m.topic(),
            partition = m.partition(),
            offset = m.offset(),
            "record on the main queue for a partition already being read; re-reading it"
        );
        if let Ok(t) = TopicName::new(m.topic())
            && let Some(owned) = self
                .shard
                .topic(&t)
                .and_then(|t| t.partition(m.partition()))
        {
            owned.request_rewind(m.offset());
        }
    }

    /// Starts the pending readers, after taking every record already on the main queue.
    fn start_pending(&self, consumer: &IngestConsumer) {
        while let Some(m) = consumer.recv().now_or_never() {
            match m {
                Ok(m) => self.stray(&m),
                Err(e) => tracing::warn!(error = %e, "ingest consumer error"),
            }
        }
        let readers = std::mem::take(&mut *self.pending.lock());
        for reader in readers {
            let token = reader.token.clone();
            self.readers.spawn_on(reader.run(token), &self.app);
        }
    }

    /// Writes the final cursors and offsets of revoked partitions (on the application
    /// runtime; this thread waits, bounded).
    fn final_flush(&self, parts: &[(TopicName, Partition)]) {
        let flusher = self.flusher.clone();
        let only = parts.to_vec();
        let result = self.wait_on_app(
            async move { flusher.flush(Some(&only)).await },
            REVOKE_FLUSH_TIMEOUT,
        );
        match result {
            Ok(Ok(n)) => tracing::debug!(cursors = n, "final cursors written"),
            Ok(Err(e)) => {
                tracing::error!(error = %e, "final cursor flush failed; the next owner redelivers since the previous flush")
            }
            Err(RecvTimeoutError::Timeout) => tracing::error!(
                "final cursor flush timed out; the next owner redelivers since the previous flush"
            ),
            Err(RecvTimeoutError::Disconnected) => tracing::error!(
                "final cursor flush did not run (runtime stopping); the next owner redelivers since the previous flush"
            ),
        }
    }

    fn on_revoke(&self, base: &BaseConsumer<Self>, tpl: &mut TopicPartitionList) {
        let parts: Vec<(TopicName, Partition)> = partitions_of(tpl)
            .into_iter()
            .filter_map(|(t, p)| TopicName::new(&t).ok().map(|t| (t, p)))
            .collect();
        // 1. No new deliveries; stop reading.
        for (t, p) in &parts {
            self.shard.stop_partition(t, *p);
            if let Some(token) = self.reader_tokens.lock().remove(&(t.clone(), *p)) {
                token.cancel();
            }
        }
        // 2. Unless Kafka already gave them to another shard (a lost assignment, after which
        //    this shard's writes are fenced anyway): wait for the acks of what is in flight,
        //    then write the final cursors and the group offsets, and let go only once Kafka
        //    committed them.
        if base.assignment_lost() {
            tracing::warn!(
                partitions = parts.len(),
                "assignment lost (this shard was away longer than the session timeout); letting go without a final flush"
            );
        } else {
            self.drain(&parts);
            self.final_flush(&parts);
        }
        // 3. Forget the partitions and let Kafka have them.
        let now = Instant::now();
        for (t, p) in &parts {
            self.shard.revoke(t, *p, now);
            tracing::info!(topic = %t, partition = p, "partition revoked");
        }
        let result = match base.rebalance_protocol() {
            rdkafka::consumer::RebalanceProtocol::Cooperative => base.incremental_unassign(tpl),
            _ => base.unassign(),
        };
        if let Err(e) = result {
            tracing::error!(error = %e, "unassign failed");
        }
    }
}

/// Watermarks of a newly assigned partition. Without them the shard cannot tell where a
/// new subscription starts or whether retention deleted unacked records, so it retries for a
/// while; if Kafka stays silent it starts from the stored cursors without a loss check.
fn watermarks_with_retry(
    base: &BaseConsumer<IngestContext>,
    topic: &str,
    p: Partition,
    deadline: Instant,
) -> (Offset, Offset) {
    let mut attempt = 0;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        attempt += 1;
        match base.fetch_watermarks(topic, p, left.min(kafka::REQUEST_TIMEOUT)) {
            Ok(w) => return w,
            Err(e) => {
                tracing::warn!(topic, partition = p, attempt, error = %e, "cannot read watermarks");
                std::thread::sleep(Duration::from_millis(500).min(left));
            }
        }
    }
    tracing::error!(
        topic,
        partition = p,
        "no watermarks: starting without a retention check"
    );
    (0, 0)
}

/// What the ingest is configured from.
#[derive(Debug, Clone)]
pub struct IngestSettings {
    pub kafka: KafkaSettings,
    /// The shard group's session timeout.
    pub session_timeout: Duration,
    /// How long an assignment waits to have read the cursors written before it.
    pub assign_barrier_timeout: Duration,
    /// How long a revoke waits for the acks of what is in flight.
    pub drain_timeout: Duration,
}

/// The running ingest.
#[derive(Debug)]
pub struct Ingest {
    /// Ends the driver: unsubscribe, revoke everything, close.
    stop: CancellationToken,
    /// The driver thread.
    thread: Option<JoinHandle<()>>,
}

impl Ingest {
    /// Creates the group consumer and starts the driver thread. Must run inside the
    /// application runtime.
    pub fn start(
        settings: &IngestSettings,
        shard: Arc<Shard>,
        flusher: Arc<Flusher>,
        cursors: Arc<CursorTail>,
        me: &crate::membership::ShardInfo,
    ) -> Result<Self, StoreError> {
        let readers = TaskTracker::new();
        let (restarts, restart_requests) = mpsc::unbounded_channel();
        let context = IngestContext {
            shard: shard.clone(),
            flusher: flusher.clone(),
            cursors,
            barrier_timeout: settings.assign_barrier_timeout,
            drain_timeout: settings.drain_timeout,
            app: Handle::current(),
            readers: readers.clone(),
            consumer: OnceLock::new(),
            reader_tokens: Mutex::new(HashMap::new()),
            pending: Mutex::new(Vec::new()),
            assigned: Notify::new(),
            restarts,
            stats: kafka::stats::ClientStats::new("ingest"),
        };
        let cfg = &settings.kafka;
        let session_ms = settings.session_timeout.as_millis();
        let mut client = kafka::base(cfg, "ingest");
        client
            .set("session.timeout.ms", session_ms.to_string())
            .set(
                "heartbeat.interval.ms",
                (session_ms / 10).max(100).to_string(),
            )
            .set("topic.metadata.refresh.interval.ms", "10000")
            // Prefetch per partition, on top of the window budget.
            .set("queued.max.messages.kbytes", "16384");
        kafka::operator_options(cfg, &mut client);
        let consumer: IngestConsumer = client
            // Names the shard in the group's member list (`GET /v1/shards`).
            .set("client.id", crate::membership::client_id(&cfg.cluster, me))
            // The bound every rebalance callback stays below (drain, barrier, watermarks).
            .set("max.poll.interval.ms", "300000")
            .set("group.id", cfg.group_id())
            .set("partition.assignment.strategy", "cooperative-sticky")
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "error")
            .set("isolation.level", "read_committed")
            .create_with_context(context)
            .map_err(StoreError::kafka("creating the ingest consumer"))?;
        let consumer = Arc::new(consumer);
        let _ = consumer.context().consumer.set(Arc::downgrade(&consumer));
        let group = Arc::downgrade(&consumer);
        flusher.set_group(Arc::new(move || {
            group.upgrade()?.group_metadata().map(Membership::of)
        }));
        let stop = CancellationToken::new();
        let driver_stop = stop.clone();
        let wanted = shard.wanted_topics();
        let thread = std::thread::Builder::new()
            .name("fanout-ingest".into())
            .spawn(move || drive(consumer, wanted, restart_requests, readers, driver_stop))
            .map_err(|e| StoreError::Thread("ingest", e.to_string()))?;
        Ok(Self {
            stop,
            thread: Some(thread),
        })
    }

    /// Leaves the group (revoking and flushing every partition) and closes the consumer.
    pub async fn stop(mut self, timeout: Duration) {
        self.stop.cancel();
        let Some(thread) = self.thread.take() else {
            return;
        };
        let joined = tokio::task::spawn_blocking(move || thread.join());
        if tokio::time::timeout(timeout, joined).await.is_err() {
            tracing::error!(?timeout, "ingest did not stop in time");
        }
    }
}

/// The driver thread: serves the consumer's main queue (rebalances, errors) and follows the
/// registered topics, on a runtime of its own so rebalance callbacks may block.
fn drive(
    consumer: Arc<IngestConsumer>,
    mut wanted: watch::Receiver<Vec<TopicName>>,
    mut restarts: mpsc::UnboundedReceiver<partition::Restart>,
    readers: TaskTracker,
    stop: CancellationToken,
) {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(error = %e, "cannot build the ingest runtime");
            return;
        }
    };
    rt.block_on(async {
        subscribe(&consumer, &wanted.borrow_and_update());
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                changed = wanted.changed() => {
                    if changed.is_err() { break; }
                    let topics = wanted.borrow_and_update().clone();
                    subscribe(&consumer, &topics);
                }
                _ = consumer.context().assigned.notified() => consumer.context().start_pending(&consumer),
                Some(r) = restarts.recv() => consumer.context().restart(&consumer, r),
                msg = consumer.recv() => match msg {
                    Ok(m) => consumer.context().stray(&m),
                    Err(e) => tracing::warn!(error = %e, "ingest consumer error"),
                },
            }
        }
        // Leave the group: the revoke callback flushes and commits every partition.
        consumer.unsubscribe();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while consumer.assignment().map(|a| a.count()).unwrap_or(0) > 0
            && tokio::time::Instant::now() < deadline
        {
            let _ = tokio::time::timeout(Duration::from_millis(100), consumer.recv()).await;
        }
        consumer.context().pending.lock().clear();
        for token in consumer.context().reader_tokens.lock().drain().map(|(_, t)| t) {
            token.cancel();
        }
        readers.close();
        if tokio::time::timeout(Duration::from_secs(10), readers.wait()).await.is_err() {
            tracing::error!("partition readers did not stop in time");
        }
    });
    // The readers held the partition queues; this is the last reference: closing the
    // consumer blocks until it has left the group.
    drop(consumer);
    tracing::info!("ingest stopped");
}

fn subscribe(consumer: &IngestConsumer, topics: &[TopicName]) {
    if topics.is_empty() {
        consumer.unsubscribe();
        tracing::info!("no registered topics; ingest idle");
        return;
    }
    let names: Vec<&str> = topics.iter().map(TopicName::as_str).collect();
    match consumer.subscribe(&names) {
        Ok(()) => tracing::info!(topics = ?names, "ingest subscribed"),
        Err(e) => tracing::error!(error = %e, "ingest subscribe failed"),
    }
}
