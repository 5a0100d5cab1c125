//! Reads a cluster's cursors topic `__<cluster>_cursors` from its beginning to its end,
//! committed records only, as the checker's [`CursorRecord`]s.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use serde::Deserialize;

use crate::check::model::CursorRecord;

/// The fields of a cursor record the checker needs.
#[derive(Debug, Deserialize)]
struct Value {
    cursor: i64,
    #[serde(default)]
    seek: u64,
    #[serde(default)]
    subscription_created_at_ms: Option<i64>,
    #[serde(default)]
    shard: Option<String>,
}

/// Reaching the end of a partition is what this reader waits for, not an error to log.
struct Quiet;

impl ClientContext for Quiet {
    fn error(&self, error: KafkaError, reason: &str) {
        let eof = matches!(error, KafkaError::PartitionEOF(_))
            || error.rdkafka_error_code() == Some(RDKafkaErrorCode::PartitionEOF);
        if !eof {
            tracing::error!("librdkafka: {error}: {reason}");
        }
    }
}

impl ConsumerContext for Quiet {}

/// Every cursor record of `__<cluster>_cursors`, per partition in offset order (tombstones
/// and unreadable values are skipped and counted on stderr). Gives up after `timeout`.
pub async fn read(
    kafka: &str,
    cluster: &str,
    timeout: Duration,
) -> anyhow::Result<Vec<CursorRecord>> {
    let (kafka, topic) = (kafka.to_owned(), format!("__{cluster}_cursors"));
    tokio::task::spawn_blocking(move || read_blocking(&kafka, &topic, timeout))
        .await
        .context("cursor reader task")?
}

fn read_blocking(kafka: &str, topic: &str, timeout: Duration) -> anyhow::Result<Vec<CursorRecord>> {
    let deadline = Instant::now() + timeout;
    let c: BaseConsumer<Quiet> = ClientConfig::new()
        .set("bootstrap.servers", kafka)
        .set(
            "group.id",
            format!("chaos-cursor-reader-{}", rand::random::<u32>()),
        )
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .set("isolation.level", "read_committed")
        .create_with_context(Quiet)
        .context("cursor reader")?;
    let md = c
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .with_context(|| format!("metadata of {topic}"))?;
    let partitions: Vec<i32> = md
        .topics()
        .first()
        .filter(|t| t.error().is_none())
        .map(|t| t.partitions().iter().map(|p| p.id()).collect())
        .unwrap_or_default();
    if partitions.is_empty() {
        bail!("{topic} has no partitions (does the cluster exist?)");
    }
    let mut tpl = TopicPartitionList::new();
    for &p in &partitions {
        tpl.add_partition_offset(topic, p, Offset::Beginning)?;
    }
    c.assign(&tpl)?;
    let mut at_end: HashSet<i32> = HashSet::new();
    let mut out = Vec::new();
    let (mut tombstones, mut unreadable) = (0, 0);
    while at_end.len() < partitions.len() {
        if Instant::now() > deadline {
            bail!(
                "reading {topic}: not at the end after {timeout:?} ({} records so far)",
                out.len()
            );
        }
        match c.poll(Duration::from_millis(500)) {
            None => {}
            Some(Err(KafkaError::PartitionEOF(p))) => {
                at_end.insert(p);
            }
            Some(Err(e)) => bail!("reading {topic}: {e}"),
            Some(Ok(m)) => {
                let key = String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned();
                let Some(payload) = m.payload() else {
                    tombstones += 1;
                    continue;
                };
                match serde_json::from_slice::<Value>(payload) {
                    Ok(v) => out.push(CursorRecord {
                        partition: m.partition(),
                        offset: m.offset(),
                        key,
                        cursor: v.cursor,
                        seek: v.seek,
                        subscription_created_at_ms: v.subscription_created_at_ms,
                        shard: v.shard,
                        timestamp_ms: m.timestamp().to_millis(),
                    }),
                    Err(_) => unreadable += 1,
                }
            }
        }
    }
    if tombstones + unreadable > 0 {
        eprintln!(
            "chaos: {topic}: skipped {tombstones} tombstones and {unreadable} unreadable values"
        );
    }
    Ok(out)
}
