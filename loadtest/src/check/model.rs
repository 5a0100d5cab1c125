//! What a chaos run records, as JSON lines (`produced.jsonl`, `delivered.jsonl`,
//! `cursors.jsonl`) and one JSON document (`run.json`), and how they are read and written.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::Path;

use anyhow::Context;
use serde::{Deserialize, Serialize, de::DeserializeOwned};

/// A record Kafka acknowledged to the producer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Produced {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    /// Sequence number within (topic, partition), also carried in the value.
    pub seq: u64,
    /// When the producer got Kafka's acknowledgement (ms since the Unix epoch).
    pub at_ms: i64,
}

/// One delivery to a subscriber, in the order the subscriber received them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delivery {
    pub topic: String,
    pub subscription: String,
    pub partition: i32,
    pub offset: i64,
    pub attempt: u32,
    /// The shard (gRPC endpoint) that delivered it.
    pub shard: String,
    /// Receive time (ms since the Unix epoch).
    pub at_ms: i64,
    /// The sequence number read from the value (absent: unreadable value).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
}

/// One record of the cluster's cursors topic, in the order it holds them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CursorRecord {
    /// Partition and offset in the cursors topic.
    pub partition: i32,
    pub offset: i64,
    /// `<topic>:<partition>:<subscription>`.
    pub key: String,
    pub cursor: i64,
    /// Seek generation the cursor follows (absent in the record: 0).
    #[serde(default)]
    pub seek: u64,
    /// The subscription's creation time, telling apart a subscription deleted and created
    /// again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subscription_created_at_ms: Option<i64>,
    /// The shard that wrote it (its name, e.g. `shard-0`), if the record says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shard: Option<String>,
    /// When its writer produced it (Kafka's create time, ms since the Unix epoch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestamp_ms: Option<i64>,
}

/// A subscription of the run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubscriptionMeta {
    pub topic: String,
    pub name: String,
}

/// A shard of the run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardMeta {
    pub id: String,
    /// gRPC endpoint (`http://127.0.0.1:P`), as subscribers name it.
    pub grpc: String,
    pub admin: String,
}

/// Partitions per topic.
pub type Owned = BTreeMap<String, Vec<i32>>;

/// Something the scenario did or saw.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// ms since the Unix epoch.
    pub at_ms: i64,
    /// `start`, `ready`, `term`, `exited`, `kill`, `stop` (SIGSTOP), `cont`, `settled`,
    /// `unsettled`, `moved`.
    pub kind: String,
    /// Index of the shard it concerns.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shard: Option<usize>,
    /// Partitions it concerns: what a shard owned when it was stopped, what moved to it.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub partitions: Owned,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub detail: String,
}

/// The run's settings and what happened (`run.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunMeta {
    pub scenario: String,
    pub cluster: String,
    pub shards: Vec<ShardMeta>,
    pub topics: Vec<String>,
    pub partitions: i32,
    pub subscriptions: Vec<SubscriptionMeta>,
    /// Records produced per second.
    pub rate: u32,
    pub session_timeout_ms: u64,
    pub drain_timeout_ms: u64,
    pub cursor_flush_interval_ms: u64,
    /// Credits (records in flight) of each subscriber stream.
    pub credits: u32,
    pub started_at_ms: i64,
    /// Sends Kafka did not acknowledge (not in `produced.jsonl`).
    pub produce_failures: u64,
    pub events: Vec<Event>,
}

impl RunMeta {
    /// Index of the shard whose gRPC endpoint is `shard` (scheme and trailing `/` ignored).
    pub fn shard_index(&self, shard: &str) -> Option<usize> {
        self.shards
            .iter()
            .position(|s| same_endpoint(&s.grpc, shard))
    }
}

/// True if two endpoints name the same host:port.
pub fn same_endpoint(a: &str, b: &str) -> bool {
    fn bare(s: &str) -> &str {
        let s = s
            .strip_prefix("http://")
            .or_else(|| s.strip_prefix("https://"))
            .unwrap_or(s);
        s.trim_end_matches('/')
    }
    bare(a) == bare(b)
}

/// Reads a JSON-lines file (blank lines skipped).
pub fn read_jsonl<T: DeserializeOwned>(path: &Path) -> anyhow::Result<Vec<T>> {
    let f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut out = Vec::new();
    for (i, line) in BufReader::new(f).lines().enumerate() {
        let line = line.with_context(|| format!("reading {}", path.display()))?;
        if line.trim().is_empty() {
            continue;
        }
        out.push(
            serde_json::from_str(&line)
                .with_context(|| format!("{}:{}: not a valid line", path.display(), i + 1))?,
        );
    }
    Ok(out)
}

/// Writes items as JSON lines.
pub fn write_jsonl<'a, T: Serialize + 'a>(
    path: &Path,
    items: impl IntoIterator<Item = &'a T>,
) -> anyhow::Result<()> {
    let f = std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let mut w = BufWriter::new(f);
    for item in items {
        serde_json::to_writer(&mut w, item)?;
        w.write_all(b"\n")?;
    }
    w.flush()
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

pub fn read_meta(path: &Path) -> anyhow::Result<RunMeta> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{}: not a run document", path.display()))
}

pub fn write_meta(path: &Path, meta: &RunMeta) -> anyhow::Result<()> {
    let text = serde_json::to_string_pretty(meta)?;
    std::fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))
}
