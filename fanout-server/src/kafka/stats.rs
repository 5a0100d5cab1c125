//! librdkafka's statistics of every Kafka client of the process, as Prometheus counters
//! (`fanout_kafka_*_total{client="<role>"}`).
//!
//! Every client emits a JSON document each `statistics.interval.ms` (10 s unless the
//! operator sets it; 0 turns it off) from the thread that serves its main queue. Its
//! counters are totals since the client was created, kept per broker connection (the
//! bootstrap, coordinator and other logical brokers included). Each client's context holds a
//! [`ClientStats`] that remembers the last document and adds only what is new to the
//! counters of the client's role, so clients created and dropped along the way (a cursor
//! writer started over) add up; it is dropped with the client. Counting per broker, rather
//! than librdkafka's top-level totals (their sum over the brokers it has now), keeps a
//! broker that leaves the metadata from taking the others' growth with it.
//!
//! What a client did after its last document is not counted: librdkafka emits none on
//! close. A measurement that scrapes `/metrics` before and after a run should wait at least
//! one interval after the run, and may lower the interval
//! (`--kafka-option statistics.interval.ms=1000`).

#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use serde::Deserialize;
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

use super::MetadataClient;
use crate::telemetry;

/// `statistics.interval.ms` of every client unless the operator sets it.
pub const DEFAULT_INTERVAL_MS: &str = "10000";

/// How often [`serve_unpolled`] serves its clients' queues.
const SERVE_EVERY: Duration = Duration::from_secs(1);

/// Most events [`serve_unpolled`] takes from one client's queue at a time.
const EVENTS_PER_SERVE: usize = 16;

/// Traffic of a client (or of one of its broker connections), as librdkafka counts it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Bytes received from the brokers (librdkafka `rxbytes`).
    pub received_bytes: u64,
    /// Bytes sent to the brokers (`txbytes`).
    pub sent_bytes: u64,
    /// Requests sent (`tx`).
    pub requests: u64,
    /// Responses received (`rx`).
    pub responses: u64,
    /// Fetch requests sent (`req.Fetch`).
    pub fetch_requests: u64,
}

impl Counts {
    /// What `self` counts beyond `earlier`, field by field; a field that went back (a
    /// broker connection created again under its name) adds nothing.
    fn since(self, earlier: Self) -> Self {
        Self {
            received_bytes: self.received_bytes.saturating_sub(earlier.received_bytes),
            sent_bytes: self.sent_bytes.saturating_sub(earlier.sent_bytes),
            requests: self.requests.saturating_sub(earlier.requests),
            responses: self.responses.saturating_sub(earlier.responses),
            fetch_requests: self.fetch_requests.saturating_sub(earlier.fetch_requests),
        }
    }
}

impl std::ops::AddAssign for Counts {
    fn add_assign(&mut self, other: Self) {
        self.received_bytes = self.received_bytes.saturating_add(other.received_bytes);
        self.sent_bytes = self.sent_bytes.saturating_add(other.sent_bytes);
        self.requests = self.requests.saturating_add(other.requests);
        self.responses = self.responses.saturating_add(other.responses);
        self.fetch_requests = self.fetch_requests.saturating_add(other.fetch_requests);
    }
}

/// The part of a librdkafka statistics document that is counted; the rest (topics,
/// partitions, latencies) is skipped unread.
#[derive(Debug, Deserialize)]
pub struct Snapshot {
    /// The client instance: its `client.id`, `#`, its type and a number unique in the
    /// process (`fanout-c-registry#consumer-3`).
    name: String,
    /// Per broker connection (`127.0.0.1:9092/1`, `GroupCoordinator`, ...).
    #[serde(default)]
    brokers: HashMap<String, Broker>,
}

/// Counters of one broker connection in a statistics document.
#[derive(Debug, Deserialize)]
struct Broker {
    /// Requests sent.
    #[serde(default)]
    tx: u64,
    /// Bytes sent.
    #[serde(default)]
    txbytes: u64,
    /// Responses received.
    #[serde(default)]
    rx: u64,
    /// Bytes received.
    #[serde(default)]
    rxbytes: u64,
    /// Requests sent, by request type.
    #[serde(default)]
    req: Requests,
}

/// The request types that are counted (a producer's document lists no `Fetch`).
#[derive(Debug, Default, Deserialize)]
struct Requests {
    /// Fetch requests sent.
    #[serde(rename = "Fetch", default)]
    fetch: u64,
}

impl From<&Broker> for Counts {
    fn from(b: &Broker) -> Self {
        Self {
            received_bytes: b.rxbytes,
            sent_bytes: b.txbytes,
            requests: b.tx,
            responses: b.rx,
            fetch_requests: b.req.fetch,
        }
    }
}

impl Snapshot {
    /// Reads a statistics document as `ClientContext::stats_raw` hands it over.
    pub fn parse(json: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(json)
    }
}

/// What was counted already, per client instance and broker connection.
#[derive(Debug, Default)]
pub struct Seen {
    /// Per client instance (a snapshot's `name`), the counters of its last snapshot per
    /// broker connection. One entry in practice: each client has its own `Seen`.
    last: HashMap<String, HashMap<String, Counts>>,
}

impl Seen {
    /// What `snapshot` adds to what was seen of its client instance (all of it, the first
    /// time). Broker connections the snapshot no longer lists are forgotten.
    pub fn add(&mut self, snapshot: Snapshot) -> Counts {
        let before = self.last.remove(&snapshot.name).unwrap_or_default();
        let mut added = Counts::default();
        let mut now = HashMap::with_capacity(snapshot.brokers.len());
        for (broker, b) in snapshot.brokers {
            let counts = Counts::from(&b);
            added += counts.since(before.get(&broker).copied().unwrap_or_default());
            now.insert(broker, counts);
        }
        self.last.insert(snapshot.name, now);
        added
    }
}

/// The statistics of one Kafka client: the counters of its role, and what it counted
/// already. Each client's context holds its own.
#[derive(Debug)]
pub struct ClientStats {
    /// The client's role (as in its `client.id`), the `client` label of its counters.
    role: &'static str,
    /// The counters of that role.
    counters: telemetry::metrics::KafkaClient,
    /// What the client's snapshots counted so far.
    seen: Mutex<Seen>,
}

impl ClientStats {
    /// The statistics of a new client of `role`.
    pub fn new(role: &'static str) -> Self {
        Self {
            role,
            counters: telemetry::metrics::KafkaClient::new(role),
            seen: Mutex::new(Seen::default()),
        }
    }

    /// Counts what a statistics document adds (from `ClientContext::stats_raw`); one that
    /// cannot be read is ignored.
    pub fn record(&self, json: &[u8]) {
        let snapshot = match Snapshot::parse(json) {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!(client = self.role, error = %e, "unreadable librdkafka statistics ignored");
                return;
            }
        };
        let added = self.seen.lock().add(snapshot);
        let c = &self.counters;
        c.received_bytes.increment(added.received_bytes);
        c.sent_bytes.increment(added.sent_bytes);
        c.requests.increment(added.requests);
        c.responses.increment(added.responses);
        c.fetch_requests.increment(added.fetch_requests);
    }
}

/// Serves the main queue of clients that only make blocking requests (metadata, ends) and
/// that nothing else polls: librdkafka hands out their statistics (and errors, and log
/// lines) only from there, and would keep them queued otherwise. Runs until `cancel`.
pub async fn serve_unpolled(clients: Vec<Arc<MetadataClient>>, cancel: CancellationToken) {
    let mut every = tokio::time::interval(SERVE_EVERY);
    every.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = every.tick() => {}
        }
        for client in &clients {
            for _ in 0..EVENTS_PER_SERVE {
                // Does not block. A statistics event is handled inside (and answers `None`
                // like an empty queue); an error was logged by the client's context.
                let _ = client.poll(Duration::ZERO);
            }
        }
    }
    // Dropping a client may block (it closes its queues): keep that off the async workers.
    let _ = tokio::task::spawn_blocking(move || drop(clients)).await;
}
