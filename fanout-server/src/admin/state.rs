//! What the admin handlers share ([`AdminState`]), and the two ports it reaches the world
//! through: [`KafkaView`] (metadata and watermarks) and [`RegistryStore`] (registry writes).
//! Component tests put a table and the shard itself behind them.

use std::sync::Arc;

use fanout_core::model::{Offset, Partition};
use fanout_core::registry::Key;
use fanout_core::shard::Shard;
use futures::future::BoxFuture;
use metrics_exporter_prometheus::PrometheusHandle;
use rdkafka::error::KafkaError;
use tokio::sync::{Mutex, watch};

use crate::kafka;
use crate::membership::{self, ShardInfo};
use crate::store::StoreError;
use crate::store::registry::RegistryWriter;

/// What the admin API needs to know about Kafka. Blocking calls; run off the async workers.
pub trait KafkaView: Send + Sync + 'static {
    /// Partitions of a topic, or `None` if Kafka does not know it.
    fn partitions(&self, topic: &str) -> Result<Option<Vec<Partition>>, KafkaError>;
    /// (partition, low, high) watermarks.
    fn watermarks(
        &self,
        topic: &str,
        partitions: &[Partition],
    ) -> Result<Vec<(Partition, Offset, Offset)>, KafkaError>;
    /// Does a broker answer?
    fn ping(&self) -> Result<(), KafkaError>;
    /// The members of a consumer group, with their assignments.
    fn group_members(&self, group: &str) -> Result<Vec<membership::Member>, KafkaError>;
    /// Per partition, the first offset at or after `timestamp_ms` (`None`: no such record).
    fn offsets_for_time(
        &self,
        topic: &str,
        partitions: &[Partition],
        timestamp_ms: i64,
    ) -> Result<Vec<(Partition, Option<Offset>)>, KafkaError>;
}

impl KafkaView for kafka::MetadataClient {
    fn group_members(&self, group: &str) -> Result<Vec<membership::Member>, KafkaError> {
        membership::members(self, group)
    }

    fn ping(&self) -> Result<(), KafkaError> {
        // Any answer will do (a topic error included): the broker is reachable.
        rdkafka::consumer::Consumer::fetch_metadata(
            self,
            Some("__consumer_offsets"),
            std::time::Duration::from_secs(2),
        )
        .map(drop)
    }

    fn partitions(&self, topic: &str) -> Result<Option<Vec<Partition>>, KafkaError> {
        kafka::partitions_of(self, topic)
    }

    fn watermarks(
        &self,
        topic: &str,
        partitions: &[Partition],
    ) -> Result<Vec<(Partition, Offset, Offset)>, KafkaError> {
        kafka::watermarks(self, topic, partitions)
    }

    fn offsets_for_time(
        &self,
        topic: &str,
        partitions: &[Partition],
        timestamp_ms: i64,
    ) -> Result<Vec<(Partition, Option<Offset>)>, KafkaError> {
        kafka::offsets_for_time(self, topic, partitions, timestamp_ms)
    }
}

/// Where registry writes go: the registry topic (or, in component tests, straight to the
/// shard). A write returns once this shard applied it.
pub trait RegistryStore: Send + Sync + 'static {
    /// Returns once this shard applied everything written so far.
    fn sync(&self) -> BoxFuture<'_, Result<(), StoreError>>;
    fn put<'a>(
        &'a self,
        key: &'a Key,
        value: Option<Vec<u8>>,
    ) -> BoxFuture<'a, Result<i64, StoreError>>;
}

impl RegistryStore for RegistryWriter {
    fn sync(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(RegistryWriter::sync(self))
    }

    fn put<'a>(
        &'a self,
        key: &'a Key,
        value: Option<Vec<u8>>,
    ) -> BoxFuture<'a, Result<i64, StoreError>> {
        Box::pin(RegistryWriter::put(self, key, value))
    }
}

/// Shared state of the admin handlers.
#[derive(Clone)]
pub struct AdminState {
    /// The applied registry and live delivery state.
    pub shard: Arc<Shard>,
    /// Writes registry records and waits for them to apply.
    pub registry: Arc<dyn RegistryStore>,
    /// Held while checking the registry and writing to it, so two calls of this process
    /// cannot both pass a check and then both write.
    pub write_lock: Arc<Mutex<()>>,
    /// Topic metadata and watermarks.
    pub kafka: Arc<dyn KafkaView>,
    /// True once the registry is loaded and the ingest runs.
    pub ready: watch::Receiver<bool>,
    /// Renders `/metrics` (absent: the process has no recorder of ours).
    pub metrics: Option<PrometheusHandle>,
    /// This shard's identity and addresses.
    pub info: ShardInfo,
    /// The cluster it belongs to (its shard group is named after it).
    pub cluster: Arc<str>,
    /// The bearer token requests must carry (`None`: no authentication, by configuration).
    pub token: Option<Arc<str>>,
    /// Redrives dead letters into their subscription.
    pub redrive: Arc<dyn crate::deadletter::Redrive>,
    /// One redrive at a time on this shard.
    pub redrive_lock: Arc<Mutex<()>>,
    /// When a Kafka broker last answered a readiness check.
    pub kafka_seen: Arc<parking_lot::Mutex<Option<std::time::Instant>>>,
}

impl std::fmt::Debug for AdminState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminState")
            .field("info", &self.info)
            .field("auth", &self.token.is_some())
            .finish_non_exhaustive()
    }
}
