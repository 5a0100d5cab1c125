//! Settings of every Kafka client fanout creates, in one place, and the contexts that count
//! their traffic ([`stats`]).

pub mod stats;

use std::time::Duration;

use fanout_core::model::{Offset, Partition};
use rdkafka::ClientConfig;
use rdkafka::admin::AdminClient;
use rdkafka::client::{ClientContext, DefaultClientContext};
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::producer::FutureProducer;
use rdkafka::types::RDKafkaErrorCode;

/// What every Kafka client of a shard is configured from: where Kafka is, the cluster the
/// shard belongs to (it names client ids, the shard group and the internal topics), and the
/// operator's pass-through options.
#[derive(Clone)]
pub struct KafkaSettings {
    /// Bootstrap servers (host:port, comma-separated).
    pub bootstrap: String,
    /// The cluster's name.
    pub cluster: String,
    /// librdkafka settings for every client (checked by `Config::validate`).
    pub options: Vec<(String, String)>,
}

/// Option values stay out of logs: some are secrets (`sasl.password`, keys).
impl std::fmt::Debug for KafkaSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaSettings")
            .field("bootstrap", &self.bootstrap)
            .field("cluster", &self.cluster)
            .field(
                "options",
                &self.options.iter().map(|(k, _)| k).collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl KafkaSettings {
    /// The shards' consumer group.
    pub fn group_id(&self) -> String {
        self.cluster.clone()
    }

    pub fn registry_topic(&self) -> String {
        format!("__{}_registry", self.cluster)
    }

    pub fn cursors_topic(&self) -> String {
        format!("__{}_cursors", self.cluster)
    }

    /// The transactional id of a shard's cursor writer: one per shard name, so a shard
    /// restarted under its name aborts what its previous life left open at once.
    pub fn cursor_transactional_id(&self, shard: &str) -> String {
        format!("{}-cursors-{shard}", self.cluster)
    }
}

/// Timeout of metadata and watermark requests.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Settings shared by every client: bootstrap, client id, statistics, and the operator's
/// pass-through options (which may not touch what fanout manages; see `Config::validate`).
pub fn base(cfg: &KafkaSettings, role: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &cfg.bootstrap)
        .set("client.id", format!("fanout-{}-{role}", cfg.cluster))
        // Traffic counters (`fanout_kafka_*_total`); the operator may change the interval,
        // or turn them off with 0.
        .set("statistics.interval.ms", stats::DEFAULT_INTERVAL_MS);
    operator_options(cfg, &mut c);
    c
}

/// Applies the operator's pass-through options again, after a client's own defaults, so
/// they win over those (tuning such as `queued.max.messages.kbytes`).
pub fn operator_options(cfg: &KafkaSettings, c: &mut ClientConfig) {
    for (k, v) in &cfg.options {
        c.set(k, v);
    }
}

/// A producer for fanout's own records: idempotent, acknowledged by all in-sync replicas.
pub fn producer(
    cfg: &KafkaSettings,
    role: &'static str,
) -> Result<FutureProducer<StatsContext>, KafkaError> {
    let mut c = base(cfg, role);
    c.set("linger.ms", "2").set("message.timeout.ms", "30000");
    operator_options(cfg, &mut c);
    // Durability settings come last: they are not the operator's to weaken.
    c.set("enable.idempotence", "true")
        .set("acks", "all")
        .create_with_context(StatsContext::new(role))
}

/// How long a cursor transaction may stay open before the broker aborts it. A shard killed
/// in the middle of one holds back the next owner's start (it reads cursors up to the end)
/// until then, unless it comes back first (its restart aborts it at once).
pub const TRANSACTION_TIMEOUT: Duration = Duration::from_secs(10);

/// Settings of a transactional producer: cursor records and the shard group's offsets are
/// written in one transaction, so a shard that lost its partitions (a zombie) cannot write
/// either.
pub fn transactional_settings(
    cfg: &KafkaSettings,
    role: &str,
    transactional_id: &str,
) -> ClientConfig {
    let mut c = base(cfg, role);
    let timeout_ms = TRANSACTION_TIMEOUT.as_millis().to_string();
    c.set("linger.ms", "2");
    operator_options(cfg, &mut c);
    c.set("transactional.id", transactional_id)
        .set("transaction.timeout.ms", &timeout_ms)
        .set("message.timeout.ms", &timeout_ms)
        .set("enable.idempotence", "true")
        .set("acks", "all");
    c
}

/// Context of the clients with no callbacks of their own (producers, metadata clients):
/// librdkafka's defaults, and their traffic counted under their role.
#[derive(Debug)]
pub struct StatsContext {
    /// Counts the client's traffic.
    stats: stats::ClientStats,
}

impl StatsContext {
    /// The context of a new client of `role` (as in its `client.id`).
    pub fn new(role: &'static str) -> Self {
        Self {
            stats: stats::ClientStats::new(role),
        }
    }
}

impl ClientContext for StatsContext {
    fn stats_raw(&self, statistics: &[u8]) {
        self.stats.record(statistics);
    }
}

impl ConsumerContext for StatsContext {}

/// A consumer that only asks for metadata, watermarks and offsets. Nothing polls it: its
/// statistics are served by [`stats::serve_unpolled`] if it lives long.
pub type MetadataClient = BaseConsumer<StatsContext>;

/// Context of the internal-topic readers: reaching the end of a partition is how they know
/// they caught up, not an error worth logging. Counts the reader's traffic under its role.
#[derive(Debug)]
pub struct ReaderContext {
    /// Counts the reader's traffic.
    stats: stats::ClientStats,
}

impl ReaderContext {
    /// The context of a new reader of `role` (as in its `client.id`).
    pub fn new(role: &'static str) -> Self {
        Self {
            stats: stats::ClientStats::new(role),
        }
    }
}

impl ClientContext for ReaderContext {
    fn stats_raw(&self, statistics: &[u8]) {
        self.stats.record(statistics);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        let eof = matches!(
            error,
            KafkaError::PartitionEOF(_) | KafkaError::Global(RDKafkaErrorCode::PartitionEOF)
        );
        if !eof {
            tracing::warn!(%error, reason, "kafka client error (internal reader)");
        }
    }
}

impl ConsumerContext for ReaderContext {}

/// A consumer of an internal topic.
pub type Reader = StreamConsumer<ReaderContext>;

/// Settings of a consumer that reads an internal topic from start to end. It assigns its
/// partitions itself and never joins or commits to its group (librdkafka wants a group id
/// for `assign` all the same).
pub fn reader(cfg: &KafkaSettings, role: &str) -> ClientConfig {
    let mut c = base(cfg, role);
    c.set("group.id", format!("{}-{role}-reader", cfg.group_id()))
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("enable.partition.eof", "true")
        .set("isolation.level", "read_committed")
        .set("auto.offset.reset", "error");
    c
}

/// An admin client, for the internal topics at start. Without statistics: rdkafka never
/// serves an admin client's main queue, where they would pile up.
pub fn admin(cfg: &KafkaSettings) -> Result<AdminClient<DefaultClientContext>, KafkaError> {
    base(cfg, "admin")
        .set("statistics.interval.ms", "0")
        .create()
}

/// A consumer used only for metadata and watermark queries.
pub fn metadata_client(cfg: &KafkaSettings) -> Result<MetadataClient, KafkaError> {
    base(cfg, "metadata")
        .set("enable.auto.commit", "false")
        .create_with_context(StatsContext::new("metadata"))
}

/// A client whose watermark requests answer the high watermark itself, past records of
/// transactions still open (a read_committed client is answered the last stable offset).
pub fn end_client(cfg: &KafkaSettings) -> Result<MetadataClient, KafkaError> {
    base(cfg, "ends")
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_uncommitted")
        .create_with_context(StatsContext::new("ends"))
}

/// Partitions of `topic`, or `None` if Kafka does not know the topic. Blocking.
pub fn partitions_of<C: ConsumerContext>(
    client: &BaseConsumer<C>,
    topic: &str,
) -> Result<Option<Vec<Partition>>, KafkaError> {
    let md = client.fetch_metadata(Some(topic), REQUEST_TIMEOUT)?;
    let Some(t) = md.topics().iter().find(|t| t.name() == topic) else {
        return Ok(None);
    };
    if t.error().is_some() || t.partitions().is_empty() {
        return Ok(None);
    }
    let mut ps: Vec<Partition> = t.partitions().iter().map(|p| p.id()).collect();
    ps.sort_unstable();
    Ok(Some(ps))
}

/// Low and high watermarks of every partition of `topic`. Blocking.
pub fn watermarks<C: ConsumerContext>(
    client: &BaseConsumer<C>,
    topic: &str,
    partitions: &[Partition],
) -> Result<Vec<(Partition, Offset, Offset)>, KafkaError> {
    partitions
        .iter()
        .map(|&p| {
            let (lo, hi) = client.fetch_watermarks(topic, p, REQUEST_TIMEOUT)?;
            Ok((p, lo, hi))
        })
        .collect()
}

/// Per partition, the first offset whose timestamp is at or after `timestamp_ms`, or `None`
/// when no record is that recent. Blocking.
pub fn offsets_for_time<C: ConsumerContext>(
    client: &BaseConsumer<C>,
    topic: &str,
    partitions: &[Partition],
    timestamp_ms: i64,
) -> Result<Vec<(Partition, Option<Offset>)>, KafkaError> {
    let mut tpl = rdkafka::TopicPartitionList::new();
    for &p in partitions {
        tpl.add_partition_offset(topic, p, rdkafka::Offset::Offset(timestamp_ms))?;
    }
    let found = client.offsets_for_times(tpl, REQUEST_TIMEOUT)?;
    partitions
        .iter()
        .map(|&p| {
            let Some(e) = found.find_partition(topic, p) else {
                return Ok((p, None));
            };
            e.error()?;
            Ok((
                p,
                match e.offset() {
                    rdkafka::Offset::Offset(o) => Some(o),
                    _ => None,
                },
            ))
        })
        .collect()
}
