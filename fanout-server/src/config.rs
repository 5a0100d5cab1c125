//! Server configuration: one typed struct, every flag also settable from the environment.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use fanout_core::delivery::TakeLimits;
use fanout_core::shard::ShardLimits;

use crate::grpc::StreamLimits;
use crate::ingest::IngestSettings;
use crate::kafka::KafkaSettings;
use crate::membership::{self, ShardInfo};
use crate::store::topics::Replication;

/// fanout-server: consume each registered Kafka topic once, push it to every subscription.
#[derive(Debug, Clone, Parser)]
#[command(name = "fanout-server", version, about, long_about = None)]
pub struct Config {
    /// Kafka bootstrap servers (host:port, comma-separated).
    #[arg(long, env = "FANOUT_KAFKA_BOOTSTRAP", default_value = "127.0.0.1:9092")]
    pub kafka_bootstrap: String,

    /// Cluster name. Shards with the same name form one cluster: it names the shards'
    /// consumer group and the internal topics `__<cluster>_registry` and `__<cluster>_cursors`.
    #[arg(long, env = "FANOUT_CLUSTER", default_value = "fanout")]
    pub cluster: String,

    /// Address of the gRPC endpoint subscribers connect to.
    #[arg(long, env = "FANOUT_GRPC_LISTEN", default_value = "127.0.0.1:50051")]
    pub grpc_listen: SocketAddr,

    /// Address of the admin HTTP API (/v1, /healthz).
    #[arg(long, env = "FANOUT_ADMIN_LISTEN", default_value = "127.0.0.1:8080")]
    pub admin_listen: SocketAddr,

    /// Replication factor of the internal topics when fanout creates them.
    #[arg(long, env = "FANOUT_INTERNAL_REPLICATION_FACTOR", default_value_t = 3)]
    pub internal_replication_factor: i32,

    /// `min.insync.replicas` of the internal topics.
    #[arg(long, env = "FANOUT_INTERNAL_MIN_INSYNC_REPLICAS", default_value_t = 2)]
    pub internal_min_insync_replicas: i32,

    /// How often moved cursors are written to Kafka and the shard group's offsets committed.
    #[arg(long, env = "FANOUT_CURSOR_FLUSH_INTERVAL", default_value = "1s", value_parser = humantime::parse_duration)]
    pub cursor_flush_interval: Duration,

    /// On shutdown, how long streams may still ack what is in flight before they are closed.
    #[arg(long, env = "FANOUT_DRAIN_TIMEOUT", default_value = "5s", value_parser = humantime::parse_duration)]
    pub drain_timeout: Duration,

    /// Byte budget of each owned partition's shared window of records.
    #[arg(long, env = "FANOUT_PARTITION_WINDOW_BYTES", default_value_t = 32 << 20)]
    pub partition_window_bytes: usize,

    /// Byte budget of the shared windows of all owned partitions together.
    #[arg(long, env = "FANOUT_WINDOW_MEMORY_BYTES", default_value_t = 512 << 20)]
    pub window_memory_bytes: usize,

    /// Byte budget of the catch-up window of one (subscription, partition) on the catch-up
    /// path (a subscription too far behind for the shared window, served from Kafka).
    #[arg(long, env = "FANOUT_CATCH_UP_WINDOW_BYTES", default_value_t = 4 << 20)]
    pub catch_up_window_bytes: usize,

    /// Byte budget of all private catch-up windows together.
    #[arg(long, env = "FANOUT_CATCH_UP_MEMORY_BYTES", default_value_t = 256 << 20)]
    pub catch_up_memory_bytes: usize,

    /// Catch-up readers: Kafka consumers shared by every subscription on the catch-up path,
    /// so a lagging subscription never gets a Kafka client of its own.
    #[arg(long, env = "FANOUT_CATCH_UP_READERS", default_value_t = 4)]
    pub catch_up_readers: usize,

    /// Most records a stream may ask to have in flight (its credits).
    #[arg(long, env = "FANOUT_MAX_STREAM_CREDITS", default_value_t = 100_000)]
    pub max_stream_credits: u32,

    /// Byte credits of a stream that does not ask for any.
    #[arg(long, env = "FANOUT_DEFAULT_STREAM_BYTES", default_value_t = 16 << 20)]
    pub default_stream_bytes: u64,

    /// Most offsets between a partition's cursor and its next first delivery, per
    /// subscription: bounds what one unacked record can hold back.
    #[arg(long, env = "FANOUT_MAX_UNACKED_SPAN", default_value_t = 100_000)]
    pub max_unacked_span: i64,

    /// Most records in one batch sent to a stream.
    #[arg(long, env = "FANOUT_BATCH_RECORDS", default_value_t = 500)]
    pub batch_records: usize,

    /// Most bytes in one batch sent to a stream (at least one record is always sent).
    #[arg(long, env = "FANOUT_BATCH_BYTES", default_value_t = 64 << 10)]
    pub batch_bytes: usize,

    /// Extra librdkafka settings for every Kafka client (repeatable `key=value`), e.g.
    /// `--kafka-option security.protocol=ssl`, or `statistics.interval.ms=1000` (default
    /// 10000; 0 turns off) for fresher `fanout_kafka_*_total` traffic counters.
    #[arg(long = "kafka-option", value_name = "KEY=VALUE", value_parser = parse_kafka_option)]
    pub kafka_options: Vec<(String, String)>,

    /// Log format.
    #[arg(long, env = "FANOUT_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,

    /// File holding the bearer token admin API requests must carry (surrounding whitespace
    /// is ignored). One of this, `FANOUT_ADMIN_TOKEN` or `--admin-no-auth` is required.
    #[arg(long, env = "FANOUT_ADMIN_TOKEN_FILE")]
    pub admin_token_file: Option<PathBuf>,

    /// The admin API's bearer token itself (prefer the file: a command line is visible to
    /// every user of the machine).
    #[arg(long, env = "FANOUT_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,

    /// Serve the admin API without authentication: for local use only.
    #[arg(long, env = "FANOUT_ADMIN_NO_AUTH")]
    pub admin_no_auth: bool,

    /// This shard's name in `GET /v1/shards` (default: `$HOSTNAME`, the pod name on
    /// Kubernetes, else the gRPC address).
    #[arg(long, env = "FANOUT_SHARD_ID")]
    pub shard_id: Option<String>,

    /// The gRPC address subscribers use to reach this shard, as listed by `GET /v1/shards`
    /// (default: the listen address, unless it is a wildcard such as 0.0.0.0: then
    /// `$POD_IP`, else the host name, with the listen port).
    #[arg(long, env = "FANOUT_ADVERTISE_GRPC")]
    pub advertise_grpc: Option<String>,

    /// The admin address other tools use to reach this shard (default as for gRPC).
    #[arg(long, env = "FANOUT_ADVERTISE_ADMIN")]
    pub advertise_admin: Option<String>,

    /// The shard group's session timeout: a shard silent for this long loses its partitions
    /// to the others. Kafka brokers accept 6s to 300s by default.
    #[arg(long, env = "FANOUT_SESSION_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub session_timeout: Duration,

    /// How long, at assign, a shard waits to have read every cursor written before (the
    /// previous owner's final ones) before it starts from what it has (duplicates, never loss).
    #[arg(long, env = "FANOUT_ASSIGN_BARRIER_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    pub assign_barrier_timeout: Duration,
}

/// Shortest admin token accepted.
pub const MIN_ADMIN_TOKEN_LEN: usize = 16;

/// How logs are written to stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

fn parse_kafka_option(s: &str) -> Result<(String, String), String> {
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| format!("expected KEY=VALUE, got {s:?}"))?;
    if k.trim().is_empty() {
        return Err(format!("empty key in {s:?}"));
    }
    Ok((k.trim().to_owned(), v.to_owned()))
}

/// A setting that cannot work, with what to do about it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid configuration: {0}")]
pub struct ConfigError(pub String);

impl Config {
    /// A configuration with every default, for tests and embedding, serving the admin API
    /// without authentication.
    pub fn for_bootstrap(bootstrap: &str, cluster: &str) -> Self {
        let mut c = Self::parse_from(["fanout-server"]);
        c.kafka_bootstrap = bootstrap.to_owned();
        c.cluster = cluster.to_owned();
        c.admin_no_auth = true;
        c.admin_token = None;
        c.admin_token_file = None;
        c
    }

    /// The admin API's bearer token (`None`: no authentication, as configured).
    pub fn admin_token(&self) -> Result<Option<String>, ConfigError> {
        let token = match (
            &self.admin_token_file,
            &self.admin_token,
            self.admin_no_auth,
        ) {
            (None, None, true) => return Ok(None),
            (None, None, false) => {
                return Err(ConfigError(
                    "the admin API needs a bearer token: --admin-token-file (or \
                     FANOUT_ADMIN_TOKEN), or --admin-no-auth for local use"
                        .into(),
                ));
            }
            (Some(_), Some(_), _) => {
                return Err(ConfigError(
                    "give the admin token once: --admin-token-file or FANOUT_ADMIN_TOKEN".into(),
                ));
            }
            (_, _, true) => {
                return Err(ConfigError(
                    "--admin-no-auth contradicts the admin token also given".into(),
                ));
            }
            (Some(path), None, false) => std::fs::read_to_string(path)
                .map_err(|e| {
                    ConfigError(format!(
                        "cannot read --admin-token-file {}: {e}",
                        path.display()
                    ))
                })?
                .trim()
                .to_owned(),
            (None, Some(t), false) => t.trim().to_owned(),
        };
        if token.len() < MIN_ADMIN_TOKEN_LEN || token.chars().any(char::is_whitespace) {
            return Err(ConfigError(format!(
                "the admin token must be at least {MIN_ADMIN_TOKEN_LEN} characters without \
                 spaces (for example `openssl rand -hex 32`)"
            )));
        }
        Ok(Some(token))
    }

    /// Checks settings that cannot work together, with messages a person can act on.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError(m));
        self.admin_token()?;
        if self.kafka_bootstrap.trim().is_empty() {
            return bad("--kafka-bootstrap is empty; give host:port of a Kafka broker".into());
        }
        let cluster_ok = !self.cluster.is_empty()
            && self.cluster.len() <= 200
            && self
                .cluster
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
        if !cluster_ok {
            return bad(format!(
                "--cluster {:?} must be 1-200 ASCII letters, digits, '.', '_' or '-' (it names Kafka topics)",
                self.cluster
            ));
        }
        if self.internal_replication_factor < 1 {
            return bad("--internal-replication-factor must be at least 1".into());
        }
        if self.internal_min_insync_replicas < 1
            || self.internal_min_insync_replicas > self.internal_replication_factor
        {
            return bad(format!(
                "--internal-min-insync-replicas {} must be between 1 and the replication factor {}",
                self.internal_min_insync_replicas, self.internal_replication_factor
            ));
        }
        if self.cursor_flush_interval < Duration::from_millis(10)
            || self.cursor_flush_interval > Duration::from_secs(60)
        {
            return bad("--cursor-flush-interval must be between 10ms and 60s".into());
        }
        if self.drain_timeout > Duration::from_secs(240) {
            return bad(
                "--drain-timeout must be at most 240s (it must stay below max.poll.interval.ms)"
                    .into(),
            );
        }
        if self.session_timeout < Duration::from_secs(1)
            || self.session_timeout > Duration::from_secs(300)
        {
            return bad("--session-timeout must be between 1s and 300s (brokers allow 6s to 300s by default)".into());
        }
        if self.assign_barrier_timeout > Duration::from_secs(120) {
            return bad(
                "--assign-barrier-timeout must be at most 120s (it must stay below max.poll.interval.ms)"
                    .into(),
            );
        }
        if self.partition_window_bytes < 64 << 10 {
            return bad("--partition-window-bytes must be at least 65536".into());
        }
        if self.window_memory_bytes < self.partition_window_bytes {
            return bad(format!(
                "--window-memory-bytes ({}) must be at least --partition-window-bytes ({})",
                self.window_memory_bytes, self.partition_window_bytes
            ));
        }
        if self.catch_up_window_bytes < 64 << 10
            || self.catch_up_memory_bytes < self.catch_up_window_bytes
        {
            return bad("--catch-up-window-bytes must be at least 65536, and \
                 --catch-up-memory-bytes at least --catch-up-window-bytes"
                .into());
        }
        if !(1..=64).contains(&self.catch_up_readers) {
            return bad("--catch-up-readers must be between 1 and 64".into());
        }
        if self.max_stream_credits == 0 {
            return bad("--max-stream-credits must be at least 1".into());
        }
        if self.max_unacked_span < 1 {
            return bad("--max-unacked-span must be at least 1".into());
        }
        if self.batch_records == 0 || self.batch_bytes == 0 {
            return bad("--batch-records and --batch-bytes must be at least 1".into());
        }
        for (k, _) in &self.kafka_options {
            if matches!(
                k.as_str(),
                "group.id"
                    | "enable.auto.commit"
                    | "enable.auto.offset.store"
                    | "isolation.level"
                    | "auto.offset.reset"
                    | "partition.assignment.strategy"
                    | "enable.partition.eof"
                    | "enable.idempotence"
                    | "acks"
                    | "session.timeout.ms"
                    | "max.poll.interval.ms"
                    | "transactional.id"
            ) {
                return bad(format!(
                    "--kafka-option {k} is managed by fanout and cannot be overridden"
                ));
            }
        }
        Ok(())
    }

    /// What every Kafka client is configured from.
    pub fn kafka(&self) -> KafkaSettings {
        KafkaSettings {
            bootstrap: self.kafka_bootstrap.clone(),
            cluster: self.cluster.clone(),
            options: self.kafka_options.clone(),
        }
    }

    /// How the internal topics are replicated when fanout creates them.
    pub fn replication(&self) -> Replication {
        Replication {
            factor: self.internal_replication_factor,
            min_insync_replicas: self.internal_min_insync_replicas,
        }
    }

    /// Limits of the shard's windows and deliveries.
    pub fn shard_limits(&self) -> ShardLimits {
        ShardLimits {
            partition_window_bytes: self.partition_window_bytes,
            window_memory_bytes: self.window_memory_bytes,
            catch_up_window_bytes: self.catch_up_window_bytes,
            catch_up_memory_bytes: self.catch_up_memory_bytes,
            take: self.take_limits(),
            lease_gap: self.lease_gap(),
        }
    }

    fn take_limits(&self) -> TakeLimits {
        TakeLimits {
            batch_records: self.batch_records,
            batch_bytes: self.batch_bytes,
            max_unacked_span: self.max_unacked_span,
        }
    }

    /// A stop of the process longer than this may have cost the shard its partitions (Kafka
    /// moves them after the session timeout; heartbeats go every tenth of it): a third of
    /// the session timeout, at least 1 s.
    pub fn lease_gap(&self) -> Duration {
        (self.session_timeout / 3).max(Duration::from_secs(1))
    }

    /// Limits applied to every `Subscribe` stream.
    pub fn stream_limits(&self) -> StreamLimits {
        StreamLimits {
            max_credits: self.max_stream_credits,
            default_bytes: self.default_stream_bytes,
            take: self.take_limits(),
            open_timeout: Duration::from_secs(10),
            max_nack_delay: Duration::from_secs(24 * 3600),
            max_ranges: 100_000,
        }
    }

    /// What the ingest is configured from.
    pub fn ingest(&self) -> IngestSettings {
        IngestSettings {
            kafka: self.kafka(),
            session_timeout: self.session_timeout,
            assign_barrier_timeout: self.assign_barrier_timeout,
            drain_timeout: self.drain_timeout,
        }
    }

    /// This shard's name and advertised addresses, given where its listeners are bound.
    pub fn identity(
        &self,
        grpc: Option<SocketAddr>,
        admin: Option<SocketAddr>,
    ) -> Result<ShardInfo, ConfigError> {
        let grpc_address = advertised(self.advertise_grpc.as_ref(), grpc);
        let me = ShardInfo {
            id: self.shard_name(&grpc_address),
            admin_address: advertised(self.advertise_admin.as_ref(), admin),
            grpc_address,
        };
        membership::check_shard_name(&me.id)
            .map_err(|e| ConfigError(format!("{e} (set --shard-id)")))?;
        for (flag, addr) in [
            ("--advertise-grpc", &me.grpc_address),
            ("--advertise-admin", &me.admin_address),
        ] {
            membership::check_address(addr).map_err(|e| ConfigError(format!("{flag}: {e}")))?;
        }
        Ok(me)
    }

    /// This shard's name: `--shard-id`, else `$HOSTNAME` (the pod name on Kubernetes), else
    /// `fallback` (the gRPC address).
    fn shard_name(&self, fallback: &str) -> String {
        self.shard_id
            .clone()
            .filter(|s| !s.trim().is_empty())
            .or_else(|| std::env::var("HOSTNAME").ok().filter(|h| !h.is_empty()))
            .unwrap_or_else(|| fallback.to_owned())
    }
}

/// The address others reach a listener at: the one configured, else the bound address
/// unless it is a wildcard, else `$POD_IP` or the host name with the bound port.
fn advertised(configured: Option<&String>, bound: Option<SocketAddr>) -> String {
    if let Some(a) = configured.filter(|a| !a.trim().is_empty()) {
        return a.trim().to_owned();
    }
    let Some(bound) = bound else {
        return String::new();
    };
    if !bound.ip().is_unspecified() {
        return bound.to_string();
    }
    let host = std::env::var("POD_IP")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok().filter(|h| !h.is_empty()))
        .unwrap_or_else(|| "localhost".to_owned());
    format!("{host}:{}", bound.port())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_name_the_internal_topics() {
        let c = Config::for_bootstrap("127.0.0.1:9092", "fanout");
        c.validate().unwrap();
        assert_eq!(c.kafka().registry_topic(), "__fanout_registry");
        assert_eq!(c.kafka().cursors_topic(), "__fanout_cursors");
        assert_eq!(c.kafka().group_id(), "fanout");
    }

    #[test]
    fn bad_settings_are_refused_with_a_reason() {
        let mut c = Config::for_bootstrap("127.0.0.1:9092", "a/b");
        assert!(c.validate().unwrap_err().0.contains("--cluster"));
        c.cluster = "ok".into();
        c.internal_min_insync_replicas = 4;
        assert!(c.validate().unwrap_err().0.contains("min-insync"));
        c.internal_min_insync_replicas = 2;
        c.kafka_options = vec![("group.id".into(), "x".into())];
        assert!(c.validate().unwrap_err().0.contains("managed by fanout"));
        // Tuning is the operator's: the statistics interval, for one.
        c.kafka_options = vec![("statistics.interval.ms".into(), "1000".into())];
        c.validate().unwrap();
    }

    #[test]
    fn kafka_options_parse() {
        assert_eq!(
            parse_kafka_option("a.b=c=d"),
            Ok(("a.b".to_owned(), "c=d".to_owned()))
        );
        assert!(parse_kafka_option("nokey").is_err());
    }
}
