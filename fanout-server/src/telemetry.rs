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

/// Prometheus metrics, rendered by the admin API at `/metrics`.
pub mod metrics {
    use std::sync::OnceLock;

    use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

    /// Records deleted by retention before a subscription acked them.
    pub const LOST_RECORDS: &str = "fanout_lost_records_total";

    static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

    /// Installs the process-wide recorder (once; later calls return the same handle), or
    /// `None` if another recorder was installed first.
    pub fn install() -> Option<PrometheusHandle> {
        HANDLE
            .get_or_init(|| match PrometheusBuilder::new().install_recorder() {
                Ok(handle) => {
                    describe();
                    Some(handle)
                }
                Err(e) => {
                    tracing::warn!(error = %e, "metrics recorder not installed; /metrics is off");
                    None
                }
            })
            .clone()
    }

    fn describe() {
        ::metrics::describe_counter!(
            LOST_RECORDS,
            ::metrics::Unit::Count,
            "Offsets a subscription skipped because retention deleted them before it acked them (records, and any transaction markers or compacted gaps among them), by topic, subscription and partition. Each series starts at 0 when the partition is assigned, so that increase() sees the first loss."
        );
    }

    /// Starts the loss series of a subscription's partition at 0.
    pub fn track_losses(topic: &str, subscription: &str, partition: i32) {
        lost_records(topic, subscription, partition, 0);
    }

    /// Counts offsets a subscription lost to retention.
    pub fn lost_records(topic: &str, subscription: &str, partition: i32, n: u64) {
        ::metrics::counter!(
            LOST_RECORDS,
            "topic" => topic.to_owned(),
            "subscription" => subscription.to_owned(),
            "partition" => partition.to_string(),
        )
        .increment(n);
    }
}
