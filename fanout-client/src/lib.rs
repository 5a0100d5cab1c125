//! Rust client for fanout subscriptions.
//!
//! fanout runs as one or more shards, each serving the Kafka partitions it owns. A
//! [`Subscriber`] finds the shards (a [`Discovery`]), holds one stream of the subscription to
//! each, yields the records of all of them, and sends acks back, in batched offset ranges, to
//! the shard that delivered each record. A stream that breaks reconnects with jittered
//! backoff; records that were in flight on it are delivered again (with a higher `attempt`),
//! and acks for them from before the reconnect are dropped. Dynamic discoveries (DNS, the
//! admin API) are asked again every [`SubscriberConfig::rediscover_interval`]: streams are
//! opened to shards that appeared and closed on shards that went away.
//!
//! ```no_run
//! # async fn demo() -> Result<(), fanout_client::Error> {
//! use fanout_client::{Discovery, Subscriber, SubscriberConfig};
//!
//! // Every pod of a Kubernetes headless Service; one server would be
//! // `SubscriberConfig::new("http://127.0.0.1:50051", "site-events", "bookings")`.
//! let shards: Discovery = "dns://fanout-headless:50051".parse()?;
//! let cfg = SubscriberConfig::with_discovery(shards, "site-events", "bookings");
//! let mut sub = Subscriber::connect(cfg).await?;
//! while let Some(record) = sub.next().await {
//!     let record = record?;
//!     println!(
//!         "{} {}:{} {:?}",
//!         record.shard(),
//!         record.partition,
//!         record.offset,
//!         record.value
//!     );
//!     sub.ack(&record);
//! }
//! # Ok(()) }
//! ```

#![warn(missing_docs)]

pub mod admin;
pub mod cli;
mod discovery;
mod handler;
mod session;
mod shards;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tracing::Instrument;

pub use discovery::Discovery;
pub use fanout_proto::v1 as proto;
pub use handler::{Nack, RunStats};

use session::Start;
use shards::{Control, Shards};

/// Settings of a [`Subscriber`].
#[derive(Debug, Clone)]
pub struct SubscriberConfig {
    /// How to find the shards: one endpoint, a list, every address of a DNS name, or the
    /// admin API's list.
    pub discovery: Discovery,
    /// The Kafka topic (registered with fanout).
    pub topic: String,
    /// The subscription on that topic.
    pub subscription: String,
    /// Most records delivered and not yet acked, per stream (the credits of each shard's
    /// stream): the subscriber may hold up to `max_in_flight` × shards records.
    pub max_in_flight: u32,
    /// Most payload bytes in flight per stream; 0 lets the server choose.
    pub max_in_flight_bytes: u64,
    /// Name of this instance, shown in server logs.
    pub client_id: String,
    /// First reconnect delay; doubles up to `max_backoff`, with jitter.
    pub initial_backoff: Duration,
    /// Longest reconnect delay.
    pub max_backoff: Duration,
    /// Timeout of connecting to a shard and opening the stream there, and of each discovery.
    pub connect_timeout: Duration,
    /// How often a dynamic discovery (`Dns`, `Admin`) is asked again; zero: never.
    pub rediscover_interval: Duration,
}

impl SubscriberConfig {
    /// One server at `endpoint` (e.g. `http://127.0.0.1:50051`), with the defaults of
    /// [`SubscriberConfig::with_discovery`].
    pub fn new(endpoint: &str, topic: &str, subscription: &str) -> Self {
        Self::with_discovery(
            Discovery::Static(vec![endpoint.to_owned()]),
            topic,
            subscription,
        )
    }

    /// The shards `discovery` finds. Defaults: 1000 records in flight per stream, reconnect
    /// between 100 ms and 5 s, connect within 5 s, rediscover every 10 s.
    pub fn with_discovery(discovery: Discovery, topic: &str, subscription: &str) -> Self {
        Self {
            discovery,
            topic: topic.to_owned(),
            subscription: subscription.to_owned(),
            max_in_flight: 1000,
            max_in_flight_bytes: 0,
            client_id: format!("fanout-client-{}", std::process::id()),
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(5),
            rediscover_interval: Duration::from_secs(10),
        }
    }

    /// Sets the credits of each stream.
    pub fn max_in_flight(mut self, records: u32) -> Self {
        self.max_in_flight = records;
        self
    }

    /// Sets how often a dynamic discovery is asked again (zero: never).
    pub fn rediscover_interval(mut self, every: Duration) -> Self {
        self.rediscover_interval = every;
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
    /// [`Subscriber::connect`] returns it when discovery failed or found no shard, or when
    /// no shard could be reached.
    #[error("server unavailable: {0}")]
    Unavailable(String),
    /// An endpoint or a discovery string is not valid (the message says why).
    #[error("bad endpoint: {0}")]
    BadEndpoint(String),
    /// The subscriber was closed.
    #[error("subscriber closed")]
    Closed,
}

impl Record {
    /// Which connection to its shard delivered this record: 1 for the first, one more after
    /// each reconnect. Records of an older connection are delivered again (their acks are
    /// dropped).
    pub fn connection(&self) -> u64 {
        self.route.generation
    }

    /// The gRPC endpoint of the shard that delivered this record (as discovery found it,
    /// e.g. `http://10.0.3.7:50051`).
    pub fn shard(&self) -> &str {
        &self.route.shard
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
    /// The Kafka topic.
    pub topic: Arc<str>,
    /// The Kafka partition.
    pub partition: i32,
    /// The record's offset in its partition.
    pub offset: i64,
    /// The record's key, if it has one.
    pub key: Option<Bytes>,
    /// The record's value (`None` for a tombstone).
    pub value: Option<Bytes>,
    /// The record's headers, in order (a header's value may be absent).
    pub headers: Vec<(String, Option<Bytes>)>,
    /// Kafka timestamp, milliseconds since the Unix epoch.
    pub timestamp_ms: Option<i64>,
    /// 1 for a first delivery, more for redeliveries.
    pub attempt: u32,
    /// The connection it came on, where its ack goes.
    pub(crate) route: Arc<Route>,
}

/// The connection that delivered a record: its ack or nack goes to that shard's session,
/// which drops it if the connection is no longer the current one.
pub(crate) struct Route {
    /// The shard's endpoint ([`Record::shard`]).
    pub(crate) shard: Arc<str>,
    /// Which connection of the session: 1 for the first, one more after each reconnect.
    pub(crate) generation: u64,
    /// The session's commands.
    pub(crate) commands: mpsc::UnboundedSender<Command>,
}

/// The same connection of the same session.
impl PartialEq for Route {
    fn eq(&self, other: &Self) -> bool {
        self.generation == other.generation && self.commands.same_channel(&other.commands)
    }
}

impl fmt::Debug for Route {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Route")
            .field("shard", &self.shard)
            .field("generation", &self.generation)
            .finish_non_exhaustive()
    }
}

/// To a session.
pub(crate) enum Command {
    /// A record of connection `generation` is done.
    Ack {
        generation: u64,
        partition: i32,
        offset: i64,
    },
    /// A record of connection `generation` goes back, for redelivery after `delay`.
    Nack {
        generation: u64,
        partition: i32,
        offset: i64,
        delay: Duration,
    },
    /// Send what is pending and end the session.
    Close,
}

/// A live subscription: one stream per shard, all feeding one sequence of records.
#[derive(Debug)]
pub struct Subscriber {
    /// Records of every session (and the error that ended the subscriber).
    records: mpsc::Receiver<Result<Record, Error>>,
    /// Close, to the task running the sessions.
    control: mpsc::Sender<Control>,
    /// The task running the sessions and rediscovery; aborting it aborts them all.
    task: Option<JoinHandle<()>>,
}

/// Builds a [`Subscriber`]: [`Subscriber::builder`].
#[derive(Debug, Clone)]
pub struct SubscriberBuilder {
    cfg: SubscriberConfig,
}

impl SubscriberBuilder {
    /// The Kafka topic (registered with fanout). Required.
    pub fn topic(mut self, topic: &str) -> Self {
        self.cfg.topic = topic.to_owned();
        self
    }

    /// The subscription on that topic. Required.
    pub fn subscription(mut self, subscription: &str) -> Self {
        self.cfg.subscription = subscription.to_owned();
        self
    }

    /// Most records delivered and not yet acked, per shard (default 1000).
    pub fn max_in_flight(mut self, records: u32) -> Self {
        self.cfg.max_in_flight = records;
        self
    }

    /// Name of this instance, shown in server logs.
    pub fn client_id(mut self, id: &str) -> Self {
        self.cfg.client_id = id.to_owned();
        self
    }

    /// The settings built so far, to adjust the rest ([`SubscriberConfig`]'s fields).
    pub fn config(self) -> SubscriberConfig {
        self.cfg
    }

    /// Connects ([`Subscriber::connect`]); a missing topic or subscription is refused first.
    pub async fn connect(self) -> Result<Subscriber, Error> {
        if self.cfg.topic.is_empty() || self.cfg.subscription.is_empty() {
            return Err(Error::Refused(
                "a topic and a subscription are required".into(),
            ));
        }
        Subscriber::connect(self.cfg).await
    }
}

impl Subscriber {
    /// Starts building a subscriber of the shards `discovery` finds (a string such as
    /// `"http://127.0.0.1:50051"` or `"dns://fanout-grpc:50051"` parses into one).
    pub fn builder(discovery: Discovery) -> SubscriberBuilder {
        SubscriberBuilder {
            cfg: SubscriberConfig::with_discovery(discovery, "", ""),
        }
    }

    /// Finds the shards and opens a stream to each, concurrently. Fails if discovery fails or
    /// finds no shard, if any shard refuses the stream (bad settings, not authorized), if
    /// no shard knows the topic or subscription, or if no shard can be reached. Succeeds once at least one
    /// stream is open: shards that could not be reached are tried again in the background.
    pub async fn connect(cfg: SubscriberConfig) -> Result<Self, Error> {
        if cfg.max_in_flight == 0 {
            return Err(Error::Refused("max_in_flight must be at least 1".into()));
        }
        let endpoints = shards::discover(&cfg).await?;
        let opened =
            futures::future::join_all(endpoints.iter().map(|e| session::open(&cfg, e))).await;
        // A refusal is final; "not found" is, unless another shard opened the stream (this
        // one has not applied the registry change yet: its session keeps trying).
        let any_opened = opened.iter().any(Result::is_ok);
        if let Some(Err(e)) = opened.iter().find(|r| {
            r.as_ref().is_err_and(|e| {
                let retried = e.is_transient() || any_opened && matches!(e, Error::NotFound(_));
                !retried
            })
        }) {
            return Err(e.clone());
        }
        if opened.iter().all(Result::is_err) {
            let mut why: Vec<String> = opened
                .into_iter()
                .filter_map(Result::err)
                .map(|e| match e {
                    Error::Unavailable(m) => m,
                    other => other.to_string(),
                })
                .collect();
            return Err(Error::Unavailable(if why.len() == 1 {
                why.remove(0)
            } else {
                format!("no shard could be reached: {}", why.join("; "))
            }));
        }
        let span = tracing::info_span!(
            "fanout_subscriber",
            topic = %cfg.topic,
            subscription = %cfg.subscription,
        );
        let cfg = Arc::new(cfg);
        let (records_tx, records) = mpsc::channel(cfg.max_in_flight as usize + 1);
        let mut shards = Shards::new(cfg.clone(), records_tx);
        for (endpoint, r) in endpoints.iter().zip(opened) {
            match r {
                Ok(c) => shards.start(endpoint, Start::Opened(Box::new(c))),
                Err(e) => {
                    tracing::warn!(shard = %endpoint, error = %e, "shard unreachable; retrying");
                    shards.start(endpoint, Start::AfterBackoff);
                }
            }
        }
        let (control, control_rx) = mpsc::channel(1);
        let task = tokio::spawn(shards.run(control_rx).instrument(span));
        Ok(Self {
            records,
            control,
            task: Some(task),
        })
    }

    /// The next record, of any shard; `None` once the subscriber is closed. An `Err` ends
    /// it.
    pub async fn next(&mut self) -> Option<Result<Record, Error>> {
        self.records.recv().await
    }

    /// Marks a record done (sent in batches, to the shard that delivered it).
    pub fn ack(&self, record: &Record) {
        let _ = record.route.commands.send(Command::Ack {
            generation: record.route.generation,
            partition: record.partition,
            offset: record.offset,
        });
    }

    /// Gives a record back, to be delivered again after `delay`.
    pub fn nack(&self, record: &Record, delay: Duration) {
        let _ = record.route.commands.send(Command::Nack {
            generation: record.route.generation,
            partition: record.partition,
            offset: record.offset,
            delay,
        });
    }

    /// Sends outstanding acks to every shard and ends every stream (waiting up to 10 s);
    /// unacked records go back to the subscription.
    pub async fn close(mut self) {
        let (tx, rx) = oneshot::channel();
        if self.control.send(Control::Close(tx)).await.is_ok() {
            // Records still buffered for us are not wanted any more; a session waiting to
            // hand one over sees the channel closed and finishes at once.
            self.records.close();
            let _ = tokio::time::timeout(Duration::from_secs(10), rx).await;
        }
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// Aborts every session: acks not sent yet are lost (their records come again).
impl Drop for Subscriber {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}
