//! The sessions of a [`crate::Subscriber`], one per shard, and the rediscovery that keeps
//! them in step with the cluster: one task owns them all, so that closing or dropping the
//! subscriber ends every one.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::{mpsc, oneshot};
use tokio::task::{JoinError, JoinSet};
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::task::AbortOnDropHandle;
use tracing::Instrument;

use crate::session::{self, Session, Start};
use crate::{Command, Error, Record, SubscriberConfig};

/// From the [`crate::Subscriber`] to the task running its sessions.
#[derive(Debug)]
pub(crate) enum Control {
    /// Flush every session's acks, end them all, then answer.
    Close(oneshot::Sender<()>),
}

/// The endpoints discovery finds now, within the connect timeout; none is an error.
pub(crate) async fn discover(cfg: &SubscriberConfig) -> Result<Vec<String>, Error> {
    let found = tokio::time::timeout(cfg.connect_timeout, cfg.discovery.resolve())
        .await
        .map_err(|_| {
            Error::Unavailable(format!(
                "discovery ({}) took longer than {:?}",
                cfg.discovery, cfg.connect_timeout
            ))
        })??;
    if found.is_empty() {
        return Err(Error::Unavailable(format!(
            "discovery ({}) found no shard",
            cfg.discovery
        )));
    }
    Ok(found)
}

/// A live session, as its owner knows it.
#[derive(Debug)]
struct Handle {
    /// Tells this session from a later one of the same endpoint.
    id: u64,
    /// Close goes here (acks go straight from the records).
    commands: mpsc::UnboundedSender<Command>,
    /// Set while discovery no longer lists the shard.
    retiring: Arc<AtomicBool>,
}

/// What a session task ends with: its endpoint, its id, and how it ended.
type Ended = (Arc<str>, u64, Result<(), Error>);

/// Every session of one subscriber.
#[derive(Debug)]
pub(crate) struct Shards {
    /// The subscriber's settings, shared with each session.
    cfg: Arc<SubscriberConfig>,
    /// The subscriber's records: every session sends into it, and so does this task, the
    /// error that ends the subscriber.
    records: mpsc::Sender<Result<Record, Error>>,
    /// The live session of each endpoint discovery found.
    live: HashMap<Arc<str>, Handle>,
    /// Sessions of endpoints discovery no longer lists, serving their stream until the shard
    /// ends it.
    retiring: HashMap<Arc<str>, Handle>,
    /// Every session task, live or still closing; dropping the set aborts them.
    tasks: JoinSet<Ended>,
    /// The id of the next session.
    next_id: u64,
    /// Endpoints whose session ended with "not found", and when.
    not_found: HashMap<Arc<str>, Instant>,
}

impl Shards {
    pub(crate) fn new(
        cfg: Arc<SubscriberConfig>,
        records: mpsc::Sender<Result<Record, Error>>,
    ) -> Self {
        Self {
            cfg,
            records,
            live: HashMap::new(),
            retiring: HashMap::new(),
            tasks: JoinSet::new(),
            next_id: 0,
            not_found: HashMap::new(),
        }
    }

    /// Starts the session of `endpoint`.
    pub(crate) fn start(&mut self, endpoint: &str, start: Start) {
        let id = self.next_id;
        self.next_id += 1;
        let endpoint: Arc<str> = endpoint.into();
        let (commands_tx, commands) = mpsc::unbounded_channel();
        let retiring = Arc::new(AtomicBool::new(false));
        let session = Session {
            cfg: self.cfg.clone(),
            endpoint: endpoint.clone(),
            records: self.records.clone(),
            commands_tx: commands_tx.clone(),
            commands,
            retiring: retiring.clone(),
        };
        let span = tracing::info_span!(
            "fanout_session",
            shard = %endpoint,
            topic = %self.cfg.topic,
            subscription = %self.cfg.subscription,
        );
        let name = endpoint.clone();
        self.tasks
            .spawn(async move { (name, id, session::run(session, start).await) }.instrument(span));
        self.live.insert(
            endpoint,
            Handle {
                id,
                commands: commands_tx,
                retiring,
            },
        );
    }

    /// Runs until the subscriber closes (`control`), a session ends with a permanent error
    /// (sent as the subscriber's last item), or the task is aborted (the subscriber dropped).
    pub(crate) async fn run(mut self, mut control: mpsc::Receiver<Control>) {
        let (found_tx, mut found) = mpsc::channel(1);
        let every = self.cfg.rediscover_interval;
        let _rediscovery = (self.cfg.discovery.is_dynamic() && !every.is_zero())
            .then(|| AbortOnDropHandle::new(tokio::spawn(rediscover(self.cfg.clone(), found_tx))));
        loop {
            tokio::select! {
                c = control.recv() => {
                    self.close_all().await;
                    if let Some(Control::Close(done)) = c {
                        let _ = done.send(());
                    }
                    return;
                }
                Some(r) = found.recv() => self.apply(r),
                Some(joined) = self.tasks.join_next() => {
                    if let Some(e) = self.ended(joined) {
                        // The error is the subscriber's last item: no session may send after it.
                        self.tasks.shutdown().await;
                        let _ = self.records.send(Err(e)).await;
                        return;
                    }
                }
            }
        }
    }

    /// Starts sessions for new endpoints and closes those of endpoints that went away. A
    /// failed discovery changes nothing.
    fn apply(&mut self, found: Result<Vec<String>, Error>) {
        let found = match found {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!(
                    discovery = %self.cfg.discovery,
                    error = %e,
                    "rediscovery failed; keeping the current shards"
                );
                return;
            }
        };
        let gone: Vec<Arc<str>> = self
            .live
            .keys()
            .filter(|&e| !found.iter().any(|f| f.as_str() == &**e))
            .cloned()
            .collect();
        let new: Vec<&String> = found
            .iter()
            .filter(|f| !self.live.contains_key(f.as_str()))
            .collect();
        if gone.is_empty() && new.is_empty() {
            return;
        }
        tracing::info!(added = ?new, removed = ?gone, "the shards changed");
        // A shard that left the list (stopping, or not ready) may still be draining: its
        // stream stays until the shard ends it, so that the acks of what it delivered reach it.
        for e in gone {
            if let Some(h) = self.live.remove(&e) {
                h.retiring.store(true, Ordering::Release);
                self.retiring.insert(e, h);
            }
        }
        for e in new {
            match self.retiring.remove(e.as_str()) {
                Some(h) => {
                    h.retiring.store(false, Ordering::Release);
                    self.live.insert(e.as_str().into(), h);
                }
                None => self.start(e, Start::Now),
            }
        }
    }

    /// Forgets a session that ended; the error that must end the subscriber, if any.
    fn ended(&mut self, joined: Result<Ended, JoinError>) -> Option<Error> {
        let (endpoint, id, result) = match joined {
            Ok(ended) => ended,
            Err(e) => return Some(Error::Unavailable(format!("a session failed: {e}"))),
        };
        let live = self.live.get(&endpoint).is_some_and(|h| h.id == id);
        if live {
            self.live.remove(&endpoint);
        }
        if self.retiring.get(&endpoint).is_some_and(|h| h.id == id) {
            self.retiring.remove(&endpoint);
        }
        match result {
            // One shard has not known the subscription for a while: it may lag behind the
            // registry, while the others serve. The subscriber ends only once every shard
            // said so recently (the subscription was deleted).
            Err(e @ Error::NotFound(_)) if live => {
                let now = Instant::now();
                self.not_found.insert(endpoint.clone(), now);
                self.not_found
                    .retain(|_, at| now.duration_since(*at) < 3 * session::NOT_FOUND_GRACE);
                let everywhere = self.live.keys().all(|e| self.not_found.contains_key(e));
                if everywhere {
                    return Some(e);
                }
                tracing::warn!(shard = %endpoint, error = %e, "this shard does not know the subscription; others do: trying it again");
                self.start(&endpoint, Start::AfterBackoff);
                None
            }
            Err(e) if live => Some(e),
            Err(e) => {
                tracing::warn!(shard = %endpoint, error = %e, "a closed session ended with an error");
                None
            }
            Ok(()) => None,
        }
    }

    /// Closes every session (each sends its pending acks and ends its stream) and waits for
    /// them all.
    async fn close_all(&mut self) {
        for (_, h) in self.live.drain().chain(self.retiring.drain()) {
            let _ = h.commands.send(Command::Close);
        }
        while self.tasks.join_next().await.is_some() {}
    }
}

/// Runs discovery every `rediscover_interval`, sending what it found.
async fn rediscover(cfg: Arc<SubscriberConfig>, found: mpsc::Sender<Result<Vec<String>, Error>>) {
    let every = cfg.rediscover_interval;
    let mut tick = tokio::time::interval_at(Instant::now() + every, every);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if found.send(discover(&cfg).await).await.is_err() {
            return;
        }
    }
}
