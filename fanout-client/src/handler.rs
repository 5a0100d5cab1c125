//! The handler style: [`Subscriber::run`] calls a function per record, acks on `Ok` and
//! nacks on `Err`, with bounded concurrency and the records of one key handled one after
//! another.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::future::Future;
use std::time::Duration;

use std::panic::AssertUnwindSafe;

use bytes::Bytes;
use futures::FutureExt;
use tokio::task::JoinSet;

use crate::{Error, Record, Subscriber};

/// A handler's refusal of a record: it is given back to fanout and delivered again after
/// [`Nack::delay`] (to this subscriber or another instance), with its `attempt` one higher.
/// Any error that implements `Display` converts into one with the default delay, so a
/// handler can use `?`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Nack {
    /// How long fanout waits before delivering the record again.
    pub delay: Duration,
    /// Why, for logs.
    pub reason: String,
}

impl Nack {
    /// The delay of a nack made from an error with `?`.
    pub const DEFAULT_DELAY: Duration = Duration::from_secs(1);

    /// Deliver the record again after `delay`.
    pub fn after(delay: Duration, reason: impl fmt::Display) -> Self {
        Self {
            delay,
            reason: reason.to_string(),
        }
    }
}

impl<E: fmt::Display> From<E> for Nack {
    fn from(e: E) -> Self {
        Self::after(Self::DEFAULT_DELAY, e)
    }
}

/// What [`Subscriber::run`] did, once it returned.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunStats {
    /// Records the handler accepted (acked).
    pub acked: u64,
    /// Records it refused (nacked).
    pub nacked: u64,
}

/// Records of one key waiting for the one of that key being handled.
type KeyQueues = HashMap<Bytes, VecDeque<Record>>;

impl Subscriber {
    /// Calls `handler` for every record, at most `concurrency` at a time, until `shutdown`
    /// completes or the subscriber ends. `Ok` acks the record; `Err(nack)` gives it back
    /// for redelivery after `nack.delay`. Records with the same key are handled one after
    /// another, in the order they arrived (records without a key, in any order); a
    /// subscription with `ordering=key` also delivers them that way.
    ///
    /// A handler that panics counts as one that returned an error.
    ///
    /// On `shutdown` it stops taking records, lets the handlers already running finish,
    /// sends their acks and closes the streams (records not started are delivered again,
    /// elsewhere or later). A subscriber error (for example the subscription was deleted)
    /// ends it the same way and is returned.
    ///
    /// Records wait in this subscriber (up to `max_in_flight` per shard) while earlier ones
    /// are handled, and their ack timeout runs meanwhile: keep `max_in_flight` near
    /// `concurrency × ack timeout ÷ time per record` at most, or they come again before
    /// their turn.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), fanout_client::Error> {
    /// use fanout_client::{Nack, Subscriber};
    ///
    /// let sub = Subscriber::builder("dns://fanout-grpc:50051".parse()?)
    ///     .topic("site-events")
    ///     .subscription("bookings")
    ///     .connect()
    ///     .await?;
    /// let stats = sub
    ///     .run(16, tokio::signal::ctrl_c(), |record| async move {
    ///         let text = std::str::from_utf8(record.value.as_deref().unwrap_or_default())?;
    ///         println!("{}:{} {text}", record.partition, record.offset);
    ///         Ok::<(), Nack>(())
    ///     })
    ///     .await?;
    /// println!("{} acked", stats.acked);
    /// # Ok(()) }
    /// ```
    pub async fn run<F, Fut, S>(
        mut self,
        concurrency: usize,
        shutdown: S,
        handler: F,
    ) -> Result<RunStats, Error>
    where
        F: Fn(Record) -> Fut + Send + Sync + Clone + 'static,
        Fut: Future<Output = Result<(), Nack>> + Send + 'static,
        S: Future + Send,
    {
        let concurrency = concurrency.max(1);
        let mut running: JoinSet<(Record, Result<(), Nack>)> = JoinSet::new();
        // Keys with a record being handled, and what waits behind it.
        let mut waiting: KeyQueues = HashMap::new();
        let mut stats = RunStats::default();
        let start = |running: &mut JoinSet<_>, record: Record| {
            let handler = handler.clone();
            running.spawn(async move {
                // A handler that panics gives its record back like an error, and its key
                // moves on.
                let result = AssertUnwindSafe(handler(record.clone()))
                    .catch_unwind()
                    .await
                    .unwrap_or_else(|_| Err(Nack::from("the handler panicked")));
                (record, result)
            });
        };
        tokio::pin!(shutdown);
        let mut ended = None;
        loop {
            let room = running.len() < concurrency;
            tokio::select! {
                biased;
                _ = &mut shutdown => break,
                Some(done) = running.join_next() => {
                    // Panics are caught in the task: only an abort ends one without its
                    // record, and nothing aborts them.
                    let Ok((record, result)) = done else { continue };
                    self.settle(&record, result, &mut stats);
                    if let Some(next) = record.key.as_ref().and_then(|k| next_of_key(&mut waiting, k)) {
                        start(&mut running, next);
                    }
                }
                next = self.next(), if room => match next {
                    None => break,
                    Some(Err(e)) => {
                        ended = Some(e);
                        break;
                    }
                    Some(Ok(record)) => {
                        let busy = record.key.as_ref().and_then(|k| waiting.get_mut(k));
                        match busy {
                            Some(queue) => queue.push_back(record),
                            None => {
                                if let Some(k) = &record.key {
                                    waiting.insert(k.clone(), VecDeque::new());
                                }
                                start(&mut running, record);
                            }
                        }
                    }
                },
            }
        }
        // Let the running handlers finish; what waits behind them is not started.
        while let Some(done) = running.join_next().await {
            if let Ok((record, result)) = done {
                self.settle(&record, result, &mut stats);
            }
        }
        self.close().await;
        ended.map_or(Ok(stats), Err)
    }

    fn settle(&self, record: &Record, result: Result<(), Nack>, stats: &mut RunStats) {
        match result {
            Ok(()) => {
                self.ack(record);
                stats.acked += 1;
            }
            Err(nack) => {
                tracing::debug!(
                    partition = record.partition,
                    offset = record.offset,
                    reason = %nack.reason,
                    "record refused by the handler"
                );
                self.nack(record, nack.delay);
                stats.nacked += 1;
            }
        }
    }
}

/// The next record waiting for key `k`, or none (then the key is no longer busy).
fn next_of_key(waiting: &mut KeyQueues, k: &Bytes) -> Option<Record> {
    let queue = waiting.get_mut(k)?;
    let next = queue.pop_front();
    if next.is_none() {
        waiting.remove(k);
    }
    next
}
