//! A session: the connection task of a [`crate::Subscriber`] with one shard. It opens
//! streams, forwards records, batches acks into ranges, and reconnects with jittered
//! exponential backoff.

use std::collections::{BTreeMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;
use std::time::Duration;

use fanout_proto::v1 as pb;
use fanout_proto::v1::fanout_client::FanoutClient;
use rand::RngExt;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;
use tonic::transport::Endpoint;

use crate::{Command, Error, Record, Route, SubscriberConfig};

/// Largest message accepted from the server (one huge record must still fit).
const MAX_RESPONSE_BYTES: usize = 64 << 20;

/// An open stream.
pub(crate) struct Connected {
    outbound: mpsc::Sender<pb::SubscribeRequest>,
    inbound: Streaming<pb::SubscribeResponse>,
}

impl std::fmt::Debug for Connected {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connected").finish_non_exhaustive()
    }
}

/// Connects to `endpoint`, sends `open` and waits for `opened`, all within the connect
/// timeout. Transient errors name the endpoint.
pub(crate) async fn open(cfg: &SubscriberConfig, endpoint: &str) -> Result<Connected, Error> {
    match tokio::time::timeout(cfg.connect_timeout, open_stream(cfg, endpoint)).await {
        Ok(Ok(c)) => Ok(c),
        Ok(Err(Error::Unavailable(m))) => Err(Error::Unavailable(format!("{endpoint}: {m}"))),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(Error::Unavailable(format!(
            "{endpoint}: no stream opened within {:?}",
            cfg.connect_timeout
        ))),
    }
}

async fn open_stream(cfg: &SubscriberConfig, endpoint: &str) -> Result<Connected, Error> {
    let endpoint = Endpoint::from_shared(endpoint.to_owned())
        .map_err(|_| Error::BadEndpoint(format!("{endpoint:?} is not a URI")))?
        .connect_timeout(cfg.connect_timeout)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(20))
        .keep_alive_timeout(Duration::from_secs(10));
    let channel = endpoint
        .connect()
        .await
        .map_err(|e| Error::Unavailable(format!("cannot connect: {e}")))?;
    let mut client = FanoutClient::new(channel).max_decoding_message_size(MAX_RESPONSE_BYTES);
    let (outbound, rx) = mpsc::channel(64);
    let open = pb::SubscribeRequest {
        kind: Some(pb::subscribe_request::Kind::Open(pb::Open {
            topic: cfg.topic.clone(),
            subscription: cfg.subscription.clone(),
            max_in_flight_records: cfg.max_in_flight,
            max_in_flight_bytes: cfg.max_in_flight_bytes,
            client_id: cfg.client_id.clone(),
        })),
    };
    // The channel is empty: this cannot wait.
    let _ = outbound.send(open).await;
    let mut inbound = client
        .subscribe(ReceiverStream::new(rx))
        .await
        .map_err(|s| Error::from_status(&s))?
        .into_inner();
    match inbound.message().await {
        Ok(Some(pb::SubscribeResponse {
            kind: Some(pb::subscribe_response::Kind::Opened(_)),
        })) => Ok(Connected { outbound, inbound }),
        Ok(Some(_)) => Err(Error::Refused(
            "the server did not answer `open` with `opened`".into(),
        )),
        Ok(None) => Err(Error::Unavailable(
            "the stream ended before `opened`".into(),
        )),
        Err(s) => Err(Error::from_status(&s)),
    }
}

enum End {
    /// The subscriber closed the session, or was closed or dropped.
    Closed,
    Transient(Error),
    Permanent(Error),
}

/// What a session is given.
pub(crate) struct Session {
    /// The subscriber's settings.
    pub(crate) cfg: Arc<SubscriberConfig>,
    /// The shard's gRPC endpoint.
    pub(crate) endpoint: Arc<str>,
    /// The subscriber's records, shared by every session.
    pub(crate) records: mpsc::Sender<Result<Record, Error>>,
    /// This session's own commands, handed to every record it delivers as its route back.
    pub(crate) commands_tx: mpsc::UnboundedSender<Command>,
    /// Acks, nacks and close, from the subscriber.
    pub(crate) commands: mpsc::UnboundedReceiver<Command>,
    /// Set once discovery no longer lists the shard: the session serves its stream until
    /// the shard ends it (a shard draining before it stops still takes acks), then ends
    /// instead of reconnecting.
    pub(crate) retiring: Arc<std::sync::atomic::AtomicBool>,
}

/// How a session begins.
pub(crate) enum Start {
    /// With this stream, opened already.
    Opened(Box<Connected>),
    /// By opening a stream at once.
    Now,
    /// By opening a stream after a backoff (a first try failed already).
    AfterBackoff,
}

/// A stream that lasted this long was healthy: the next reconnect starts from the initial
/// backoff again. One that ended sooner (a shard that accepts and drops streams) backs off
/// further each time.
const STABLE: Duration = Duration::from_secs(5);

/// How long a shard may answer "not found" before the session believes it. Shards apply
/// registry changes one after another: one may not know a subscription another just
/// created, for a few milliseconds.
pub(crate) const NOT_FOUND_GRACE: Duration = Duration::from_secs(10);

/// Whether `e` ends the session now: permanent errors do, except a "not found" within
/// [`NOT_FOUND_GRACE`] of the first one in a row (`since`, set here).
fn ends_session(e: &Error, since: &mut Option<tokio::time::Instant>) -> bool {
    if e.is_transient() {
        *since = None;
        return false;
    }
    if !matches!(e, Error::NotFound(_)) {
        return true;
    }
    let first = *since.get_or_insert_with(tokio::time::Instant::now);
    first.elapsed() >= NOT_FOUND_GRACE
}

/// Runs until the session is closed (`Ok`) or a permanent error ends it.
pub(crate) async fn run(mut s: Session, start: Start) -> Result<(), Error> {
    let cfg = s.cfg.clone();
    let mut generation = 0u64;
    let mut not_found_since = None;
    let mut backoff = cfg.initial_backoff;
    let mut conn = match start {
        Start::Opened(c) => Some(*c),
        Start::Now => None,
        Start::AfterBackoff => {
            if !wait(jitter(backoff), &mut s.commands).await {
                return Ok(());
            }
            backoff = (backoff * 2).min(cfg.max_backoff);
            None
        }
    };
    let retiring = || s.retiring.load(std::sync::atomic::Ordering::Acquire);
    loop {
        let c = match conn.take() {
            Some(c) => c,
            None if retiring() => return Ok(()),
            None => match until(open(&cfg, &s.endpoint), &mut s.commands).await {
                None => return Ok(()),
                Some(Ok(c)) => {
                    not_found_since = None;
                    if generation == 0 {
                        tracing::info!("connected");
                    } else {
                        tracing::info!("reconnected");
                    }
                    c
                }
                Some(Err(e)) if !ends_session(&e, &mut not_found_since) => {
                    tracing::debug!(error = %e, ?backoff, "connecting failed");
                    if !wait(jitter(backoff), &mut s.commands).await {
                        return Ok(());
                    }
                    backoff = (backoff * 2).min(cfg.max_backoff);
                    continue;
                }
                Some(Err(e)) => return Err(e),
            },
        };
        generation += 1;
        let route = Arc::new(Route {
            shard: s.endpoint.clone(),
            generation,
            commands: s.commands_tx.clone(),
        });
        let opened = tokio::time::Instant::now();
        match session(c, &route, &s.records, &mut s.commands).await {
            End::Closed => return Ok(()),
            _ if retiring() => {
                tracing::info!("the shard left the cluster's list and ended its stream");
                return Ok(());
            }
            End::Permanent(e) if ends_session(&e, &mut not_found_since) => return Err(e),
            End::Permanent(e) | End::Transient(e) => {
                if opened.elapsed() >= STABLE {
                    backoff = cfg.initial_backoff;
                }
                tracing::warn!(error = %e, ?backoff, "stream lost; reconnecting");
                if !wait(jitter(backoff), &mut s.commands).await {
                    return Ok(());
                }
                backoff = (backoff * 2).min(cfg.max_backoff);
            }
        }
    }
}

/// Runs `fut`, dropping meanwhile the acks meant for a dead connection. `None` if the
/// session was closed first.
async fn until<T>(
    fut: impl Future<Output = T>,
    commands: &mut mpsc::UnboundedReceiver<Command>,
) -> Option<T> {
    tokio::pin!(fut);
    loop {
        tokio::select! {
            v = &mut fut => return Some(v),
            c = commands.recv() => match c {
                None | Some(Command::Close) => return None,
                Some(_) => {}
            },
        }
    }
}

/// Sleeps, dropping acks meant for the dead connection. False if the session was closed.
async fn wait(d: Duration, commands: &mut mpsc::UnboundedReceiver<Command>) -> bool {
    until(tokio::time::sleep(d), commands).await.is_some()
}

/// Full jitter over [d/2, d].
fn jitter(d: Duration) -> Duration {
    let ms = u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(2);
    Duration::from_millis(rand::rng().random_range(ms / 2..=ms))
}

/// Acks and nacks waiting to be sent, per partition.
#[derive(Default)]
struct Pending {
    acks: BTreeMap<i32, Vec<i64>>,
    nacks: BTreeMap<(u32, i32), Vec<i64>>,
}

impl Pending {
    fn messages(&mut self) -> Vec<pb::SubscribeRequest> {
        let mut out = Vec::new();
        if !self.acks.is_empty() {
            let partitions = std::mem::take(&mut self.acks)
                .into_iter()
                .map(|(partition, offsets)| pb::PartitionRanges {
                    partition,
                    ranges: to_ranges(offsets),
                })
                .collect();
            out.push(pb::SubscribeRequest {
                kind: Some(pb::subscribe_request::Kind::Ack(pb::Ack { partitions })),
            });
        }
        let mut by_delay: BTreeMap<u32, Vec<pb::PartitionRanges>> = BTreeMap::new();
        for ((delay, partition), offsets) in std::mem::take(&mut self.nacks) {
            by_delay
                .entry(delay)
                .or_default()
                .push(pb::PartitionRanges {
                    partition,
                    ranges: to_ranges(offsets),
                });
        }
        for (retry_delay_ms, partitions) in by_delay {
            out.push(pb::SubscribeRequest {
                kind: Some(pb::subscribe_request::Kind::Nack(pb::Nack {
                    partitions,
                    retry_delay_ms,
                    reason: String::new(),
                })),
            });
        }
        out
    }
}

/// Sorted, merged inclusive ranges of offsets.
pub(crate) fn to_ranges(mut offsets: Vec<i64>) -> Vec<pb::OffsetRange> {
    offsets.sort_unstable();
    offsets.dedup();
    let mut out: Vec<pb::OffsetRange> = Vec::new();
    for o in offsets {
        match out.last_mut() {
            Some(r) if r.last + 1 == o => r.last = o,
            _ => out.push(pb::OffsetRange { first: o, last: o }),
        }
    }
    out
}

/// (partition, offset) of the records delivered on this connection and not yet acked.
type Delivered = HashSet<(i32, i64), BuildHasherDefault<OffsetHasher>>;

/// A hasher for (partition, offset) pairs: one multiply per word. The set is private to a
/// session and its keys come from the server, not from anyone who could choose them to
/// collide; SipHash (the default) cost two of the hottest lines of a subscriber's profile.
#[derive(Debug, Default)]
struct OffsetHasher(u64);

impl Hasher for OffsetHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }

    fn write_i32(&mut self, v: i32) {
        self.write_u64(u64::from(v as u32));
    }

    fn write_i64(&mut self, v: i64) {
        self.write_u64(v as u64);
    }

    fn write_u64(&mut self, v: u64) {
        self.0 = (self.0.rotate_left(5) ^ v).wrapping_mul(0x517c_c1b7_2722_0a95);
    }
}

/// Folds one command into what is pending. Acks and nacks count only for records this
/// connection delivered and that were not acked yet: acking a record twice, or one from an
/// earlier connection (it comes again), is dropped here instead of being refused by the
/// server.
fn absorb(
    cmd: Command,
    generation: u64,
    delivered: &mut Delivered,
    pending: &mut Pending,
    close: &mut bool,
) {
    match cmd {
        Command::Ack {
            generation: g,
            partition,
            offset,
        } if g == generation && delivered.remove(&(partition, offset)) => {
            pending.acks.entry(partition).or_default().push(offset);
        }
        Command::Nack {
            generation: g,
            partition,
            offset,
            delay,
        } if g == generation && delivered.remove(&(partition, offset)) => {
            let ms = u32::try_from(delay.as_millis()).unwrap_or(u32::MAX);
            pending
                .nacks
                .entry((ms, partition))
                .or_default()
                .push(offset);
        }
        Command::Close => *close = true,
        Command::Ack { .. } | Command::Nack { .. } => {}
    }
}

/// Sends what is pending, half-closes, and waits (briefly) for the server to end the stream.
async fn finish(
    outbound: mpsc::Sender<pb::SubscribeRequest>,
    mut inbound: Streaming<pb::SubscribeResponse>,
    pending: &mut Pending,
) -> End {
    for m in pending.messages() {
        if outbound.send(m).await.is_err() {
            break;
        }
    }
    drop(outbound);
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        while let Ok(Some(_)) = inbound.message().await {}
    })
    .await;
    End::Closed
}

async fn session(
    c: Connected,
    route: &Arc<Route>,
    records: &mpsc::Sender<Result<Record, Error>>,
    commands: &mut mpsc::UnboundedReceiver<Command>,
) -> End {
    let Connected {
        outbound,
        mut inbound,
    } = c;
    let mut pending = Pending::default();
    let mut delivered = Delivered::default();
    let generation = route.generation;
    loop {
        tokio::select! {
            biased;
            cmd = commands.recv() => {
                let Some(cmd) = cmd else { return End::Closed };
                let mut close = false;
                absorb(cmd, generation, &mut delivered, &mut pending, &mut close);
                while let Ok(cmd) = commands.try_recv() {
                    absorb(cmd, generation, &mut delivered, &mut pending, &mut close);
                }
                if close {
                    return finish(outbound, inbound, &mut pending).await;
                }
                for m in pending.messages() {
                    if outbound.send(m).await.is_err() {
                        return End::Transient(Error::Unavailable("stream closed while acking".into()));
                    }
                }
            }
            msg = inbound.message() => match msg {
                Ok(Some(pb::SubscribeResponse { kind: Some(pb::subscribe_response::Kind::Batch(b)) })) => {
                    let topic: Arc<str> = b.topic.into();
                    for (i, r) in b.records.into_iter().enumerate() {
                        delivered.insert((r.partition, r.offset));
                        let record = Record {
                            topic: topic.clone(),
                            partition: r.partition,
                            offset: r.offset,
                            key: r.key,
                            value: r.value,
                            headers: r.headers.into_iter().map(|h| (h.key, h.value)).collect(),
                            timestamp_ms: r.timestamp_ms,
                            attempt: b.attempts.get(i).copied().unwrap_or(1),
                            route: route.clone(),
                        };
                        if records.send(Ok(record)).await.is_err() {
                            // The user closed (or dropped) the subscriber: send its last acks.
                            let mut close = false;
                            while let Ok(cmd) = commands.try_recv() {
                                absorb(cmd, generation, &mut delivered, &mut pending, &mut close);
                            }
                            return finish(outbound, inbound, &mut pending).await;
                        }
                    }
                }
                Ok(Some(_)) => {}
                Ok(None) => return End::Transient(Error::Unavailable("the server ended the stream".into())),
                Err(s) => {
                    let e = Error::from_status(&s);
                    return if e.is_transient() { End::Transient(e) } else { End::Permanent(e) };
                }
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_merge_into_ranges() {
        let r = to_ranges(vec![7, 3, 4, 5, 9, 4, 10]);
        let pairs: Vec<(i64, i64)> = r.iter().map(|r| (r.first, r.last)).collect();
        assert_eq!(pairs, vec![(3, 5), (7, 7), (9, 10)]);
        assert!(to_ranges(vec![]).is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn not_found_ends_a_session_only_after_the_grace() {
        let mut since = None;
        let nf = Error::NotFound("subscription".into());
        assert!(!ends_session(&nf, &mut since), "the first one is doubted");
        tokio::time::advance(NOT_FOUND_GRACE / 2).await;
        assert!(!ends_session(&nf, &mut since));
        tokio::time::advance(NOT_FOUND_GRACE / 2).await;
        assert!(ends_session(&nf, &mut since), "believed after the grace");
        // A transient error in between starts the grace over.
        let mut since = None;
        assert!(!ends_session(&nf, &mut since));
        tokio::time::advance(NOT_FOUND_GRACE).await;
        assert!(!ends_session(
            &Error::Unavailable("gone".into()),
            &mut since
        ));
        assert!(!ends_session(&nf, &mut since));
        // Other refusals end it at once.
        assert!(ends_session(&Error::Unauthorized("no".into()), &mut None));
        assert!(!ends_session(&Error::Unavailable("x".into()), &mut None));
    }

    #[test]
    fn jitter_stays_within_half_to_full() {
        for _ in 0..100 {
            let j = jitter(Duration::from_millis(100));
            assert!(j >= Duration::from_millis(50) && j <= Duration::from_millis(100));
        }
    }
}
