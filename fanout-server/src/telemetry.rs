//! Logging setup: `tracing` to stderr, text or JSON, filtered by `RUST_LOG` (default
//! `info`). librdkafka's own log lines arrive through the `log` crate bridge.

use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// Installs the global subscriber. Call once, from `main`.
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,rdkafka=warn,h2=warn,hyper=warn,tower=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let result = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
    if let Err(e) = result {
        eprintln!("fanout-server: logging already initialised: {e}");
    }
}

/// Prometheus metrics, rendered by the admin API at `/metrics`. Names follow
/// `fanout_<what>_<unit>`; labels are topic and subscription (and partition for losses),
/// never a stream; the Kafka traffic counters are labelled by client role. Counters are kept as handles by the tasks that count; gauges of the
/// shard's state are set when `/metrics` is scraped ([`observe`]).
pub mod metrics {
    use std::sync::OnceLock;
    use std::time::{Duration, Instant};

    use ::metrics::{
        Counter, Unit, counter, describe_counter, describe_gauge, describe_histogram, gauge,
        histogram,
    };
    use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
    use metrics_util::MetricKindMask;

    use fanout_core::shard::Shard;

    /// Records deleted by retention before a subscription acked them.
    pub const LOST_RECORDS: &str = "fanout_lost_records_total";

    static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

    /// Installs the process-wide recorder (once; later calls return the same handle), or
    /// `None` if another recorder was installed first. Gauges of subscriptions that are
    /// gone disappear after 10 minutes without an update.
    pub fn install() -> Option<PrometheusHandle> {
        HANDLE
            .get_or_init(|| {
                let builder = PrometheusBuilder::new()
                    .idle_timeout(MetricKindMask::GAUGE, Some(Duration::from_secs(600)));
                match builder.install_recorder() {
                    Ok(handle) => {
                        describe();
                        Some(handle)
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "metrics recorder not installed; /metrics is off");
                        None
                    }
                }
            })
            .clone()
    }

    fn describe() {
        describe_counter!(
            LOST_RECORDS,
            Unit::Count,
            "Offsets a subscription skipped because retention deleted them before it acked them (records, and any transaction markers or compacted gaps among them), by topic, subscription and partition. Each series starts at 0 when the partition is assigned, so that increase() sees the first loss."
        );
        describe_counter!(
            "fanout_records_ingested_total",
            Unit::Count,
            "Records read from Kafka into the shared windows (once per record, whatever the number of subscriptions)."
        );
        describe_counter!(
            "fanout_ingested_bytes_total",
            Unit::Bytes,
            "Payload bytes (key, value, headers) read into the shared windows."
        );
        describe_counter!(
            "fanout_records_read_again_total",
            Unit::Count,
            "Records read from Kafka again by the catch-up readers for subscriptions too far behind the shared window."
        );
        describe_counter!(
            "fanout_records_delivered_total",
            Unit::Count,
            "Records sent to a subscription's streams, first deliveries and redeliveries."
        );
        describe_counter!(
            "fanout_delivered_bytes_total",
            Unit::Bytes,
            "Bytes of batches sent to a subscription's streams (the protobuf messages: records with their framing)."
        );
        describe_counter!(
            "fanout_records_redelivered_total",
            Unit::Count,
            "Deliveries with an attempt above 1 (ack timeout, nack, stream ended)."
        );
        describe_counter!(
            "fanout_records_acked_total",
            Unit::Count,
            "Records a subscription acked."
        );
        describe_counter!(
            "fanout_records_dead_lettered_total",
            Unit::Count,
            "Records out of attempts published to the subscription's dead-letter topic."
        );
        describe_gauge!(
            "fanout_streams",
            Unit::Count,
            "Streams connected to this shard, per subscription."
        );
        describe_gauge!(
            "fanout_lag_records",
            Unit::Count,
            "Per subscription: offsets this shard has read from Kafka that the subscription has not acked (the admin API's lag also counts what Kafka holds and fanout has not read yet)."
        );
        describe_gauge!(
            "fanout_unacked_records",
            Unit::Count,
            "Per subscription: records delivered and not acked."
        );
        describe_gauge!(
            "fanout_oldest_unacked_age_seconds",
            Unit::Seconds,
            "Per subscription: how long ago the oldest record still in flight was delivered (the longest-running handler)."
        );
        describe_gauge!(
            "fanout_catch_up_partitions",
            Unit::Count,
            "Per subscription: partitions served by the catch-up path."
        );
        describe_gauge!(
            "fanout_paused",
            Unit::Count,
            "Per subscription: 1 while paused."
        );
        describe_gauge!(
            "fanout_window_bytes",
            Unit::Bytes,
            "Bytes held by the shared windows of this shard."
        );
        describe_gauge!(
            "fanout_window_budget_bytes",
            Unit::Bytes,
            "Budget of the shared windows of this shard."
        );
        describe_gauge!(
            "fanout_catch_up_bytes",
            Unit::Bytes,
            "Bytes held by the catch-up windows of the catch-up path."
        );
        describe_gauge!(
            "fanout_catch_up_budget_bytes",
            Unit::Bytes,
            "Budget of the catch-up windows of the catch-up path."
        );
        describe_gauge!(
            "fanout_owned_partitions",
            Unit::Count,
            "Partitions this shard owns, per topic."
        );
        describe_histogram!(
            "fanout_cursor_flush_seconds",
            Unit::Seconds,
            "Time of one cursor transaction (the moved cursors and the shard group's offsets), until Kafka committed it."
        );
        describe_counter!(
            "fanout_cursor_transactions_aborted_total",
            Unit::Count,
            "Cursor transactions that failed and were aborted (Kafka unreachable, or this shard no longer the group member it was: a fenced zombie). The cursors are written again by the next flush, or by the partition's next owner."
        );
        describe_histogram!(
            "fanout_assign_barrier_seconds",
            Unit::Seconds,
            "At assign, time to read the cursors topic up to its high watermark before the new partitions start (the previous owner's final cursors)."
        );
        describe_histogram!(
            "fanout_revoke_drain_seconds",
            Unit::Seconds,
            "At revoke, time waiting for the acks of records in flight on the revoked partitions (bounded by --drain-timeout)."
        );
        describe_counter!(
            "fanout_revoke_unacked_records_total",
            Unit::Count,
            "Records still in flight on revoked partitions at the drain deadline: their next owner delivers them again."
        );
        describe_counter!(
            "fanout_lease_suspensions_total",
            Unit::Count,
            "Times this process was found stopped longer than its lease allows (a third of the session timeout): deliveries and cursor writes were suspended until the shard group confirmed it."
        );
        describe_gauge!(
            "fanout_lease_suspended",
            Unit::Count,
            "1 while deliveries and cursor writes are suspended after the process was stopped, else 0."
        );
        describe_counter!(
            "fanout_kafka_received_bytes_total",
            Unit::Bytes,
            "Bytes received from Kafka brokers by this process's Kafka clients, by client role (librdkafka rxbytes; counted from each client's statistics, every statistics.interval.ms)."
        );
        describe_counter!(
            "fanout_kafka_sent_bytes_total",
            Unit::Bytes,
            "Bytes sent to Kafka brokers by this process's Kafka clients, by client role (librdkafka txbytes)."
        );
        describe_counter!(
            "fanout_kafka_requests_total",
            Unit::Count,
            "Requests sent to Kafka brokers by this process's Kafka clients, by client role (librdkafka tx)."
        );
        describe_counter!(
            "fanout_kafka_responses_total",
            Unit::Count,
            "Responses received from Kafka brokers by this process's Kafka clients, by client role (librdkafka rx)."
        );
        describe_counter!(
            "fanout_kafka_fetch_requests_total",
            Unit::Count,
            "Fetch requests sent to Kafka brokers by this process's Kafka clients, by client role (librdkafka req.Fetch, summed over brokers)."
        );
    }

    /// Starts the loss series of a subscription's partition at 0.
    pub fn track_losses(topic: &str, subscription: &str, partition: i32) {
        lost_records(topic, subscription, partition, 0);
    }

    /// Counts offsets a subscription lost to retention.
    pub fn lost_records(topic: &str, subscription: &str, partition: i32, n: u64) {
        counter!(
            LOST_RECORDS,
            "topic" => topic.to_owned(),
            "subscription" => subscription.to_owned(),
            "partition" => partition.to_string(),
        )
        .increment(n);
    }

    /// Counters of one partition reader.
    #[derive(Debug, Clone)]
    pub struct Ingest {
        pub records: Counter,
        pub bytes: Counter,
    }

    impl Ingest {
        pub fn new(topic: &str) -> Self {
            Self {
                records: counter!("fanout_records_ingested_total", "topic" => topic.to_owned()),
                bytes: counter!("fanout_ingested_bytes_total", "topic" => topic.to_owned()),
            }
        }
    }

    /// Traffic counters of the Kafka clients of one role (`client` label: `ingest`,
    /// `catch-up`, ...), added to from each client's librdkafka statistics.
    #[derive(Debug, Clone)]
    pub struct KafkaClient {
        pub received_bytes: Counter,
        pub sent_bytes: Counter,
        pub requests: Counter,
        pub responses: Counter,
        pub fetch_requests: Counter,
    }

    impl KafkaClient {
        pub fn new(role: &'static str) -> Self {
            Self {
                received_bytes: counter!("fanout_kafka_received_bytes_total", "client" => role),
                sent_bytes: counter!("fanout_kafka_sent_bytes_total", "client" => role),
                requests: counter!("fanout_kafka_requests_total", "client" => role),
                responses: counter!("fanout_kafka_responses_total", "client" => role),
                fetch_requests: counter!("fanout_kafka_fetch_requests_total", "client" => role),
            }
        }
    }

    /// Records read again for the catch-up path.
    pub fn read_again(topic: &str, n: u64) {
        counter!("fanout_records_read_again_total", "topic" => topic.to_owned()).increment(n);
    }

    /// Counters of one stream, labelled by its subscription.
    #[derive(Debug, Clone)]
    pub struct Stream {
        pub delivered: Counter,
        pub delivered_bytes: Counter,
        pub redelivered: Counter,
        pub acked: Counter,
    }

    impl Stream {
        pub fn open(topic: &str, subscription: &str) -> Self {
            let labels = [
                ("topic", topic.to_owned()),
                ("subscription", subscription.to_owned()),
            ];
            Self {
                delivered: counter!("fanout_records_delivered_total", &labels),
                delivered_bytes: counter!("fanout_delivered_bytes_total", &labels),
                redelivered: counter!("fanout_records_redelivered_total", &labels),
                acked: counter!("fanout_records_acked_total", &labels),
            }
        }
    }

    pub fn dead_lettered(topic: &str, subscription: &str) {
        counter!(
            "fanout_records_dead_lettered_total",
            "topic" => topic.to_owned(),
            "subscription" => subscription.to_owned(),
        )
        .increment(1);
    }

    pub fn cursor_flush(took: Duration) {
        histogram!("fanout_cursor_flush_seconds").record(took.as_secs_f64());
    }

    pub fn cursor_transaction_aborted() {
        counter!("fanout_cursor_transactions_aborted_total").increment(1);
    }

    pub fn assign_barrier(took: Duration) {
        histogram!("fanout_assign_barrier_seconds").record(took.as_secs_f64());
    }

    pub fn revoke_drain(took: Duration, unacked: usize) {
        histogram!("fanout_revoke_drain_seconds").record(took.as_secs_f64());
        counter!("fanout_revoke_unacked_records_total").increment(unacked as u64);
    }

    pub fn lease_suspended() {
        counter!("fanout_lease_suspensions_total").increment(1);
    }

    /// Sets the gauges of the shard's state (called on each scrape).
    pub fn observe(shard: &Shard) {
        let (window, window_budget) = shard.window_memory();
        let (catch_up, catch_up_budget) = shard.catch_up_memory();
        gauge!("fanout_lease_suspended").set(if shard.lease().is_suspended() {
            1.0
        } else {
            0.0
        });
        gauge!("fanout_window_bytes").set(window as f64);
        gauge!("fanout_window_budget_bytes").set(window_budget as f64);
        gauge!("fanout_catch_up_bytes").set(catch_up as f64);
        gauge!("fanout_catch_up_budget_bytes").set(catch_up_budget as f64);
        let now = Instant::now();
        for t in shard.topics() {
            let owned = t.owned_partitions();
            gauge!("fanout_owned_partitions", "topic" => t.name.to_string())
                .set(owned.len() as f64);
            for s in t.subscriptions() {
                let spec = s.spec();
                let labels = [
                    ("topic", t.name.to_string()),
                    ("subscription", spec.name.to_string()),
                ];
                let timeout = Duration::from_millis(spec.delivery.ack_timeout_ms);
                let stats = s.partition_stats();
                let lag: i64 = stats
                    .iter()
                    .filter_map(|st| {
                        let o = owned.iter().find(|o| o.partition == st.partition)?;
                        Some((o.log.head() - st.cursor).max(0))
                    })
                    .sum();
                let oldest = stats
                    .iter()
                    .filter_map(|st| st.oldest_deadline)
                    .min()
                    .map_or(0.0, |d| {
                        timeout
                            .saturating_sub(d.saturating_duration_since(now))
                            .as_secs_f64()
                    });
                gauge!("fanout_lag_records", &labels).set(lag as f64);
                gauge!("fanout_unacked_records", &labels)
                    .set(stats.iter().map(|st| st.unacked).sum::<usize>() as f64);
                gauge!("fanout_oldest_unacked_age_seconds", &labels).set(oldest);
                gauge!("fanout_catch_up_partitions", &labels)
                    .set(stats.iter().filter(|st| st.catching_up).count() as f64);
                gauge!("fanout_paused", &labels).set(if s.is_paused() { 1.0 } else { 0.0 });
                gauge!("fanout_streams", &labels).set(s.stream_count() as f64);
            }
        }
    }
}
