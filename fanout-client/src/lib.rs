//! Rust client for fanout subscriptions.
//!
//! A [`Subscriber`] opens a stream of one subscription, yields its records and sends acks
//! back in batched offset ranges. If the connection breaks it reconnects with jittered
//! backoff; records that were in flight then are delivered again (with a higher
//! `attempt`), and acks for them from before the reconnect are dropped.
//!
//! ```no_run
//! # async fn demo() -> Result<(), fanout_client::Error> {
//! use fanout_client::{Subscriber, SubscriberConfig};
//!
//! let cfg = SubscriberConfig::new("http://127.0.0.1:50051", "site-events", "bookings");
//! let mut sub = Subscriber::connect(cfg).await?;
//! while let Some(record) = sub.next().await {
//!     let record = record?;
//!     println!("{}:{} {:?}", record.partition, record.offset, record.value);
//!     sub.ack(&record);
//! }
//! # Ok(()) }
//! ```

pub mod admin;
pub mod cli;
mod session;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

pub use fanout_proto::v1 as proto;

/// Settings of a [`Subscriber`].
#[derive(Debug, Clone)]
pub struct SubscriberConfig {
    /// gRPC endpoint of a fanout server, e.g. `http://127.0.0.1:50051`.
    pub endpoint: String,
    /// The Kafka topic (registered with fanout).
    pub topic: String,
    /// The subscription on that topic.
    pub subscription: String,
    /// Most records delivered and not yet acked (the stream's credits).
    pub max_in_flight: u32,
    /// Most payload bytes in flight; 0 lets the server choose.
    pub max_in_flight_bytes: u64,
    /// Name of this instance, shown in server logs.
    pub client_id: String,
    /// First reconnect delay; doubles up to `max_backoff`, with jitter.
    pub initial_backoff: Duration,
    /// Longest reconnect delay.
    pub max_backoff: Duration,
    /// Timeout of connecting to the server.
    pub connect_timeout: Duration,
}

impl SubscriberConfig {
    /// Defaults: 1000 records in flight, reconnect between 100 ms and 5 s.
    pub fn new(endpoint: &str, topic: &str, subscription: &str) -> Self {
        Self {
            endpoint: endpoint.to_owned(),
            topic: topic.to_owned(),
            subscription: subscription.to_owned(),
            max_in_flight: 1000,
            max_in_flight_bytes: 0,
            client_id: format!("fanout-client-{}", std::process::id()),
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(5),
        }
    }

    /// Sets the credits.
    pub fn max_in_flight(mut self, records: u32) -> Self {
        self.max_in_flight = records;
        self
    }
}

/// What went wrong. Errors other than [`Error::Unavailable`] end the subscriber.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The topic or subscription does not exist (gRPC NOT_FOUND).
    #[error("not found: {0}")]
    NotFound(String),
    /// The server refused a request of this client (gRPC INVALID_ARGUMENT and friends).
    #[error("refused by the server: {0}")]
    Refused(String),
    /// Not allowed (gRPC PERMISSION_DENIED / UNAUTHENTICATED).
    #[error("not authorized: {0}")]
    Unauthorized(String),
    /// The server cannot be reached or went away; the subscriber keeps reconnecting.
    #[error("server unavailable: {0}")]
    Unavailable(String),
    /// The endpoint is not a valid URI.
    #[error("bad endpoint {0:?}")]
    BadEndpoint(String),
    /// The subscriber was closed.
    #[error("subscriber closed")]
    Closed,
}

impl Record {
    /// Which connection of the subscriber delivered this record: 1 for the first, one more
    /// after each reconnect. Records of an older connection are delivered again on the new
    /// one (their acks are dropped).
    pub fn connection(&self) -> u64 {
        self.generation
    }
}

impl Error {
    pub(crate) fn from_status(s: &tonic::Status) -> Self {
        use tonic::Code;
        let msg = s.message().to_owned();
        match s.code() {
            Code::NotFound => Error::NotFound(msg),
            Code::InvalidArgument
            | Code::FailedPrecondition
            | Code::OutOfRange
            | Code::Unimplemented
            | Code::AlreadyExists => Error::Refused(msg),
            Code::PermissionDenied | Code::Unauthenticated => Error::Unauthorized(msg),
            _ => Error::Unavailable(format!("{:?}: {msg}", s.code())),
        }
    }

    /// True if reconnecting may help.
    pub fn is_transient(&self) -> bool {
        matches!(self, Error::Unavailable(_))
    }
}

/// One delivered record.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    pub topic: Arc<str>,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Bytes>,
    pub value: Option<Bytes>,
    pub headers: Vec<(String, Option<Bytes>)>,
    /// Kafka timestamp, milliseconds since the Unix epoch.
    pub timestamp_ms: Option<i64>,
    /// 1 for a first delivery, more for redeliveries.
    pub attempt: u32,
    /// The connection it came on: acks from an older connection are dropped.
    pub(crate) generation: u64,
}

pub(crate) enum Command {
    Ack {
        generation: u64,
        partition: i32,
        offset: i64,
    },
    Nack {
        generation: u64,
        partition: i32,
        offset: i64,
        delay: Duration,
    },
    Close(oneshot::Sender<()>),
}

/// A live subscription stream.
#[derive(Debug)]
pub struct Subscriber {
    /// Records (and the error that ended the subscriber) from the connection task.
    records: mpsc::Receiver<Result<Record, Error>>,
    /// Acks, nacks and close to the connection task.
    commands: mpsc::UnboundedSender<Command>,
    /// The connection task.
    task: Option<JoinHandle<()>>,
}

impl Subscriber {
    /// Connects and opens the stream. Fails at once if the server refuses it (unknown topic
    /// or subscription, bad settings) or cannot be reached.
    pub async fn connect(cfg: SubscriberConfig) -> Result<Self, Error> {
        if cfg.max_in_flight == 0 {
            return Err(Error::Refused("max_in_flight must be at least 1".into()));
        }
        let first = session::open(&cfg).await?;
        let (records_tx, records) = mpsc::channel(cfg.max_in_flight as usize + 1);
        let (commands, commands_rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(session::run(cfg, first, records_tx, commands_rx));
        Ok(Self {
            records,
            commands,
            task: Some(task),
        })
    }

    /// The next record; `None` once the subscriber is closed. An `Err` ends it.
    pub async fn next(&mut self) -> Option<Result<Record, Error>> {
        self.records.recv().await
    }

    /// Marks a record done (sent in batches).
    pub fn ack(&self, record: &Record) {
        let _ = self.commands.send(Command::Ack {
            generation: record.generation,
            partition: record.partition,
            offset: record.offset,
        });
    }

    /// Gives a record back, to be delivered again after `delay`.
    pub fn nack(&self, record: &Record, delay: Duration) {
        let _ = self.commands.send(Command::Nack {
            generation: record.generation,
            partition: record.partition,
            offset: record.offset,
            delay,
        });
    }

    /// Sends outstanding acks and ends the stream; unacked records go back to the
    /// subscription.
    pub async fn close(mut self) {
        let (tx, rx) = oneshot::channel();
        if self.commands.send(Command::Close(tx)).is_ok() {
            // Records still buffered for us are not wanted any more; a connection task
            // waiting to hand one over sees the channel closed and finishes at once.
            self.records.close();
            let _ = tokio::time::timeout(Duration::from_secs(10), rx).await;
        }
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}
