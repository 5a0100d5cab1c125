//! The gRPC `Subscribe` service: one task per stream that moves records from the
//! subscription's delivery state to the wire and acks, nacks and credits back.

mod convert;

use std::sync::Arc;
use std::time::{Duration, Instant};

use fanout_proto::encoded::fanout_server::Fanout;
use fanout_proto::encoded::{Body as _, EncodedResponse};
use fanout_proto::v1 as pb;
use fanout_proto::v1::subscribe_request::Kind;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::{Request, Response, Status, Streaming};
use tracing::Instrument;

use fanout_core::delivery::{AckError, Credits, PartitionAckError, StreamId, TakeLimits};
use fanout_core::model::{NameError, SubscriptionName, TopicName};
use fanout_core::shard::{LookupError, Shard, SubscriptionRuntime, TopicRuntime};

use crate::deadletter::{self, DeadLetterSink};
use crate::telemetry;
use crate::wire::Frame;

pub use fanout_proto::encoded::fanout_server::FanoutServer;

/// Largest gRPC message a subscriber may send (acks are ranges: this is plenty).
const MAX_REQUEST_BYTES: usize = 4 << 20;

/// Serves `service` on `listener` until `stop`. HTTP/2 keepalives find half-open
/// connections (a subscriber gone without a FIN) within 30 s.
pub async fn serve(
    listener: TcpListener,
    service: FanoutService,
    stop: CancellationToken,
) -> Result<(), tonic::transport::Error> {
    tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(20)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
        .max_concurrent_streams(Some(1024))
        .tcp_nodelay(true)
        .add_service(FanoutServer::new(service).max_decoding_message_size(MAX_REQUEST_BYTES))
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), stop.cancelled_owned())
        .await
}

/// Limits applied to every stream.
#[derive(Debug, Clone, Copy)]
pub struct StreamLimits {
    /// Most credits (records in flight) a stream may ask for.
    pub max_credits: u32,
    /// Byte credits of a stream that asks for none.
    pub default_bytes: u64,
    /// Batching and span limits.
    pub take: TakeLimits,
    /// How long a new stream may take to send its `open`.
    pub open_timeout: Duration,
    /// Longest retry delay a nack may ask for.
    pub max_nack_delay: Duration,
    /// Most ranges in one ack or nack.
    pub max_ranges: usize,
}

/// Shutdown phases shared by every stream.
#[derive(Debug, Clone, Default)]
pub struct StreamControl {
    /// Stop new deliveries; keep taking acks (shutdown drain).
    pub drain: CancellationToken,
    /// End every stream with UNAVAILABLE.
    pub close: CancellationToken,
}

/// The `fanout.v1.Fanout` service.
#[derive(Debug, Clone)]
pub struct FanoutService(Arc<Inner>);

#[derive(Debug)]
struct Inner {
    /// Delivery state of every subscription.
    shard: Arc<Shard>,
    limits: StreamLimits,
    control: StreamControl,
    /// Stream tasks, awaited on shutdown.
    tracker: TaskTracker,
    /// Where records out of attempts go.
    dead_letters: Arc<dyn DeadLetterSink>,
}

impl FanoutService {
    pub fn new(
        shard: Arc<Shard>,
        limits: StreamLimits,
        control: StreamControl,
        tracker: TaskTracker,
        dead_letters: Arc<dyn DeadLetterSink>,
    ) -> Self {
        Self(Arc::new(Inner {
            shard,
            limits,
            control,
            tracker,
            dead_letters,
        }))
    }
}

/// Why a stream was refused or ended. Converted to a status once, here.
#[derive(Debug, thiserror::Error)]
pub enum SubscribeError {
    #[error("no `open` message within {0:?}")]
    OpenTimeout(Duration),
    #[error("the stream ended before `open`")]
    ClosedBeforeOpen,
    #[error("the first message must be `open`, got {0}")]
    NotOpen(&'static str),
    #[error("the stream is already open; send `open` only once")]
    OpenTwice,
    #[error("empty request: set one of open, ack, nack, credits")]
    Empty,
    #[error("bad {field}: {source}")]
    BadName {
        field: &'static str,
        #[source]
        source: NameError,
    },
    #[error(transparent)]
    Lookup(#[from] LookupError),
    #[error("max_in_flight_records must be at least 1")]
    ZeroCredits,
    #[error("max_in_flight_records {asked} exceeds the server limit {limit}")]
    TooManyCredits { asked: u32, limit: u32 },
    #[error("{0} ranges in one message; the limit is {1}")]
    TooManyRanges(usize, usize),
    #[error("retry_delay_ms {asked} exceeds the limit of {limit_ms} ms")]
    NackDelay { asked: u32, limit_ms: u128 },
    #[error("{what} refused, nothing applied: {reason}")]
    BadAck { what: &'static str, reason: String },
    #[error("subscription {0} was deleted")]
    Deleted(String),
    #[error("fanout is shutting down; reconnect (to another shard if there is one)")]
    ShuttingDown,
    #[error(
        "a partition was reset under this stream (a seek, or records lost to retention); reconnect"
    )]
    Reset,
}

impl From<SubscribeError> for Status {
    fn from(e: SubscribeError) -> Self {
        use SubscribeError as E;
        let msg = e.to_string();
        match e {
            E::OpenTimeout(_) => Status::deadline_exceeded(msg),
            E::Lookup(_) | E::Deleted(_) => Status::not_found(msg),
            E::ShuttingDown | E::Reset => Status::unavailable(msg),
            E::ClosedBeforeOpen
            | E::NotOpen(_)
            | E::OpenTwice
            | E::Empty
            | E::BadName { .. }
            | E::ZeroCredits
            | E::TooManyCredits { .. }
            | E::TooManyRanges(..)
            | E::NackDelay { .. }
            | E::BadAck { .. } => Status::invalid_argument(msg),
        }
    }
}

impl Inner {
    /// The credits a stream asked for, checked against the server's limit, then capped by
    /// its subscription's ceiling (`ceiling`, 0: none): `Opened` tells the stream.
    fn credits(&self, records: u32, bytes: u64, ceiling: u32) -> Result<Credits, SubscribeError> {
        if records == 0 {
            return Err(SubscribeError::ZeroCredits);
        }
        if records > self.limits.max_credits {
            return Err(SubscribeError::TooManyCredits {
                asked: records,
                limit: self.limits.max_credits,
            });
        }
        let records = if ceiling > 0 {
            records.min(ceiling)
        } else {
            records
        };
        let bytes = if bytes == 0 {
            self.limits.default_bytes
        } else {
            bytes
        };
        Ok(Credits {
            max_records: records as usize,
            max_bytes: usize::try_from(bytes).unwrap_or(usize::MAX),
        })
    }

    async fn open(
        &self,
        inbound: &mut Streaming<pb::SubscribeRequest>,
    ) -> Result<(Arc<TopicRuntime>, Arc<SubscriptionRuntime>, Credits), SubscribeError> {
        let first = tokio::time::timeout(self.limits.open_timeout, inbound.message())
            .await
            .map_err(|_| SubscribeError::OpenTimeout(self.limits.open_timeout))?
            .map_err(|_| SubscribeError::ClosedBeforeOpen)?
            .ok_or(SubscribeError::ClosedBeforeOpen)?;
        let open = match first.kind {
            Some(Kind::Open(o)) => o,
            other => return Err(SubscribeError::NotOpen(convert::kind_name(&other))),
        };
        if self.control.drain.is_cancelled() {
            return Err(SubscribeError::ShuttingDown);
        }
        let topic = TopicName::new(&open.topic).map_err(|source| SubscribeError::BadName {
            field: "topic",
            source,
        })?;
        let name = SubscriptionName::new(&open.subscription).map_err(|source| {
            SubscribeError::BadName {
                field: "subscription",
                source,
            }
        })?;
        let (t, s) = self.shard.subscription(&topic, &name)?;
        let credits = self.credits(
            open.max_in_flight_records,
            open.max_in_flight_bytes,
            s.spec().delivery.max_in_flight_records,
        )?;
        Ok((t, s, credits))
    }
}

#[tonic::async_trait]
impl Fanout for FanoutService {
    type SubscribeStream = ReceiverStream<Result<EncodedResponse, Status>>;

    async fn subscribe(
        &self,
        request: Request<Streaming<pb::SubscribeRequest>>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let peer = request.remote_addr();
        let mut inbound = request.into_inner();
        let (topic, sub, credits) = self.0.open(&mut inbound).await?;
        let id = self.0.shard.new_stream_id();
        sub.open_stream(id, credits);
        tracing::info!(stream = %id, subscription = %sub.key(), ?peer, credits = credits.max_records, "stream opened");
        let (tx, rx) = mpsc::channel(2);
        let opened = pb::SubscribeResponse {
            kind: Some(pb::subscribe_response::Kind::Opened(pb::Opened {
                stream_id: id.to_string(),
                max_in_flight_records: u32::try_from(credits.max_records).unwrap_or(u32::MAX),
                max_in_flight_bytes: credits.max_bytes as u64,
            })),
        };
        // The channel is empty: this cannot wait.
        let _ = tx.send(Ok(opened.into())).await;
        let metrics =
            telemetry::metrics::Stream::open(topic.name.as_str(), sub.key().name.as_str());
        let stream = StreamTask {
            inner: self.0.clone(),
            topic,
            sub,
            id,
            tx,
            metrics,
        };
        self.0.tracker.spawn(stream.run(inbound));
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

/// One live stream.
struct StreamTask {
    inner: Arc<Inner>,
    topic: Arc<TopicRuntime>,
    sub: Arc<SubscriptionRuntime>,
    id: StreamId,
    /// Responses to the subscriber.
    tx: mpsc::Sender<Result<EncodedResponse, Status>>,
    /// Its subscription's counters.
    metrics: telemetry::metrics::Stream,
}

enum Wake {
    Request(Option<pb::SubscribeRequest>),
    Drain,
    Close,
    Look,
}

impl StreamTask {
    async fn run(self, inbound: Streaming<pb::SubscribeRequest>) {
        let span = tracing::info_span!("stream", stream = %self.id, subscription = %self.sub.key());
        self.serve(inbound).instrument(span).await;
    }

    async fn serve(self, mut inbound: Streaming<pb::SubscribeRequest>) {
        let control = self.inner.control.clone();
        let mut topic_wake = self.topic.wakes();
        let mut sub_wake = self.sub.wakes();
        let mut draining = control.drain.is_cancelled();
        let end: Result<(), SubscribeError> = loop {
            if self.sub.is_removed() {
                break Err(SubscribeError::Deleted(self.sub.key().to_string()));
            }
            if control.close.is_cancelled() {
                break Err(SubscribeError::ShuttingDown);
            }
            if !draining {
                match self.deliver().await {
                    Ok(true) => {}
                    Ok(false) => break Err(SubscribeError::Reset),
                    // The subscriber is gone.
                    Err(()) => break Ok(()),
                }
            }
            let now = Instant::now();
            let due = self.sub.next_due_at(self.id, now);
            let sleep_until =
                tokio::time::Instant::from_std(due.unwrap_or(now + Duration::from_secs(3600)));
            let wake = tokio::select! {
                _ = control.close.cancelled() => Wake::Close,
                _ = control.drain.cancelled(), if !draining => Wake::Drain,
                m = inbound.message() => Wake::Request(m.ok().flatten()),
                _ = topic_wake.changed() => Wake::Look,
                _ = sub_wake.changed() => Wake::Look,
                _ = tokio::time::sleep_until(sleep_until) => Wake::Look,
            };
            match wake {
                Wake::Close => break Err(SubscribeError::ShuttingDown),
                Wake::Drain => draining = true,
                Wake::Look => {}
                Wake::Request(None) => break Ok(()),
                Wake::Request(Some(req)) => {
                    if let Err(e) = self.handle(req) {
                        break Err(e);
                    }
                }
            }
        };
        let given_back = self.sub.close_stream(self.id, Instant::now());
        match end {
            Ok(()) => tracing::info!(given_back, "stream closed by the subscriber"),
            Err(e) => {
                tracing::info!(given_back, reason = %e, "stream ended by the server");
                let _ = self.tx.send(Err(e.into())).await;
            }
        }
    }

    /// Sends batches while the stream has credits and records are there. Returns false if
    /// the stream was reset; errs when the subscriber is gone.
    async fn deliver(&self) -> Result<bool, ()> {
        loop {
            let take = self.inner.shard.take(
                &self.topic,
                &self.sub,
                self.id,
                Instant::now(),
                self.inner.limits.take,
            );
            if take.reset {
                return Ok(false);
            }
            for letter in take.dead_letters {
                // Published on a task of its own (awaited on shutdown with the streams): a
                // slow dead-letter topic must not stop this stream sending and taking acks.
                self.inner.tracker.spawn(deadletter::send(
                    self.inner.dead_letters.clone(),
                    self.sub.clone(),
                    letter,
                ));
            }
            if take.deliveries.is_empty() {
                return Ok(true);
            }
            let (mut records, mut again) = (0, 0);
            for d in &take.deliveries {
                records += d.chunk.len() as u64;
                if d.attempt > 1 {
                    again += d.chunk.len() as u64;
                }
            }
            let frame = Frame::batch(&self.topic.name, take.deliveries);
            self.metrics.delivered.increment(records);
            self.metrics.delivered_bytes.increment(frame.size() as u64);
            self.metrics.redelivered.increment(again);
            let batch = EncodedResponse::new(frame);
            tokio::select! {
                sent = self.tx.send(Ok(batch)) => sent.map_err(|_| ())?,
                _ = self.inner.control.close.cancelled() => return Ok(true),
            }
        }
    }

    fn handle(&self, req: pb::SubscribeRequest) -> Result<(), SubscribeError> {
        let limits = &self.inner.limits;
        match req.kind {
            Some(Kind::Ack(ack)) => {
                let ranges = convert::ranges(ack.partitions);
                check_range_count(&ranges, limits.max_ranges)?;
                let acked = self
                    .sub
                    .ack(self.id, &ranges)
                    .map_err(|e| bad_ack("ack", &e))?;
                self.metrics.acked.increment(acked.records as u64);
            }
            Some(Kind::Nack(nack)) => {
                let delay = Duration::from_millis(u64::from(nack.retry_delay_ms));
                if delay > limits.max_nack_delay {
                    return Err(SubscribeError::NackDelay {
                        asked: nack.retry_delay_ms,
                        limit_ms: limits.max_nack_delay.as_millis(),
                    });
                }
                let ranges = convert::ranges(nack.partitions);
                check_range_count(&ranges, limits.max_ranges)?;
                self.sub
                    .nack(self.id, &ranges, Instant::now() + delay)
                    .map_err(|e| bad_ack("nack", &e))?;
                tracing::debug!(reason = nack.reason, "records nacked");
            }
            Some(Kind::Credits(c)) => {
                let credits = self.inner.credits(
                    c.max_in_flight_records,
                    c.max_in_flight_bytes,
                    self.sub.spec().delivery.max_in_flight_records,
                )?;
                self.sub.set_credits(self.id, credits);
            }
            Some(Kind::Open(_)) => return Err(SubscribeError::OpenTwice),
            None => return Err(SubscribeError::Empty),
        }
        Ok(())
    }
}

fn bad_ack(what: &'static str, e: &PartitionAckError) -> SubscribeError {
    if e.error == AckError::StreamReset {
        return SubscribeError::Reset;
    }
    SubscribeError::BadAck {
        what,
        reason: e.to_string(),
    }
}

fn check_range_count(
    ranges: &[(i32, Vec<fanout_core::delivery::OffsetRange>)],
    limit: usize,
) -> Result<(), SubscribeError> {
    let n: usize = ranges.iter().map(|(_, r)| r.len().max(1)).sum();
    if n > limit {
        return Err(SubscribeError::TooManyRanges(n, limit));
    }
    Ok(())
}

#[cfg(test)]
mod tests;
