//! The composition root: builds every part, owns every long-lived task, and runs the
//! shutdown sequence (not ready → stop new deliveries → drain acks → close streams → flush
//! cursors and commit → leave the group).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fanout_core::delivery::TakeLimits;
use fanout_core::shard::{Shard, ShardLimits};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::admin::{self, AdminState};
use crate::config::{Config, ConfigError};
use crate::deadletter::DeadLetters;
use crate::grpc::{FanoutServer, FanoutService, StreamControl, StreamLimits};
use crate::ingest::{self, Ingest};
use crate::kafka;
use crate::membership::ShardInfo;
use crate::store::cursors::{CursorTail, CursorWriter, Flusher};
use crate::store::registry::RegistryWriter;
use crate::store::{self, StoreError};
use crate::telemetry;

/// Largest gRPC message a subscriber may send (acks are ranges: this is plenty).
const MAX_REQUEST_BYTES: usize = 4 << 20;

/// The sockets the server answers on, bound by the caller (tests bind port 0).
#[derive(Debug)]
pub struct Listeners {
    pub grpc: TcpListener,
    pub admin: TcpListener,
}

impl Listeners {
    /// Binds both addresses, with an error naming the one that failed.
    pub async fn bind(grpc: SocketAddr, admin: SocketAddr) -> Result<Self, AppError> {
        let bind = |addr: SocketAddr, what: &'static str| async move {
            TcpListener::bind(addr)
                .await
                .map_err(|source| AppError::Bind { what, addr, source })
        };
        Ok(Self {
            grpc: bind(grpc, "gRPC").await?,
            admin: bind(admin, "admin").await?,
        })
    }
}

/// Why the server could not start or run.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot listen for {what} on {addr}: {source}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("the {0} server failed: {1}")]
    Serve(&'static str, String),
}

fn shard_limits(cfg: &Config) -> ShardLimits {
    ShardLimits {
        partition_window_bytes: cfg.partition_window_bytes,
        window_memory_bytes: cfg.window_memory_bytes,
        catch_up_window_bytes: cfg.catch_up_window_bytes,
        catch_up_memory_bytes: cfg.catch_up_memory_bytes,
        take: TakeLimits {
            batch_records: cfg.batch_records,
            batch_bytes: cfg.batch_bytes,
            max_unacked_span: cfg.max_unacked_span,
        },
        lease_gap: lease_gap(cfg),
    }
}

/// A stop of the process longer than this may have cost the shard its partitions (Kafka
/// moves them after the session timeout; heartbeats go every tenth of it): a third of the
/// session timeout, at least 1 s.
fn lease_gap(cfg: &Config) -> Duration {
    (cfg.session_timeout / 3).max(Duration::from_secs(1))
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

fn stream_limits(cfg: &Config) -> StreamLimits {
    StreamLimits {
        max_credits: cfg.max_stream_credits,
        default_bytes: cfg.default_stream_bytes,
        take: shard_limits(cfg).take,
        open_timeout: Duration::from_secs(10),
        max_nack_delay: Duration::from_secs(24 * 3600),
        max_ranges: 100_000,
    }
}

/// Runs a shard until `shutdown` is cancelled, then shuts it down in order.
pub async fn run(
    cfg: Config,
    listeners: Listeners,
    shutdown: CancellationToken,
) -> Result<(), AppError> {
    cfg.validate()?;
    // Before anything that counts (the first assignment reports retention losses).
    let metrics = telemetry::metrics::install();
    let grpc_addr = listeners.grpc.local_addr().ok();
    let admin_addr = listeners.admin.local_addr().ok();
    tracing::info!(cluster = %cfg.cluster, kafka = %cfg.kafka_bootstrap, "fanout-server starting");

    let me = ShardInfo {
        grpc_address: advertised(cfg.advertise_grpc.as_ref(), grpc_addr),
        admin_address: advertised(cfg.advertise_admin.as_ref(), admin_addr),
        id: String::new(),
    };
    let me = ShardInfo {
        id: cfg.shard_name(&me.grpc_address),
        ..me
    };
    crate::membership::check_shard_name(&me.id)
        .map_err(|e| ConfigError(format!("{e} (set --shard-id)")))?;
    for (flag, addr) in [
        ("--advertise-grpc", &me.grpc_address),
        ("--advertise-admin", &me.admin_address),
    ] {
        crate::membership::check_address(addr).map_err(|e| ConfigError(format!("{flag}: {e}")))?;
    }
    refuse_a_taken_name(&cfg, &me).await?;

    // 1. Durable state: internal topics, stored cursors (followed for the shard's life), the
    //    registry.
    store::topics::ensure(&cfg).await?;
    let shard = Arc::new(Shard::new(shard_limits(&cfg)));
    let background = CancellationToken::new();
    let tasks = TaskTracker::new();
    // The writer first: registering its transactional id aborts whatever a previous life of
    // this shard left open, which reading the cursors to the end would otherwise wait for.
    let cursor_writer = CursorWriter::new(&cfg, &me.id).await?;
    let cursors = match CursorTail::start(
        &cfg,
        shard.clone(),
        &tasks,
        background.clone(),
        Duration::from_secs(120),
    )
    .await
    {
        Ok(c) => c,
        Err(e) => {
            background.cancel();
            return Err(e.into());
        }
    };
    let (loaded_tx, mut loaded) = watch::channel(false);
    tasks.spawn(store::registry::tail(
        store::registry::open_reader(&cfg)?,
        shard.clone(),
        loaded_tx,
        background.clone(),
    ));
    let load_timeout = Duration::from_secs(120);
    tokio::select! {
        r = tokio::time::timeout(load_timeout, loaded.wait_for(|l| *l)) => {
            if !matches!(r, Ok(Ok(_))) {
                background.cancel();
                return Err(StoreError::Timeout { what: "loading the registry".into(), after: load_timeout }.into());
            }
        }
        _ = shutdown.cancelled() => {
            background.cancel();
            return Ok(());
        }
    }
    let writer = Arc::new(RegistryWriter::new(&cfg, shard.clone())?);
    let flusher = Arc::new(Flusher::new(shard.clone(), cursor_writer));

    // 2. Reading Kafka and committing.
    let cursor_ends = cursors.ends_client();
    let ingest = Ingest::start(&cfg, shard.clone(), flusher.clone(), cursors, &me)?;
    ingest::catchup::start(
        &cfg,
        &shard,
        cfg.catch_up_readers,
        &tasks,
        background.clone(),
    )
    .map_err(StoreError::kafka("catch-up reader"))?;
    let (fatal_tx, mut fatal) = tokio::sync::mpsc::channel::<String>(1);
    tasks.spawn(flush_loop(
        flusher.clone(),
        cfg.cursor_flush_interval,
        background.clone(),
        fatal_tx,
    ));
    tasks.spawn(renew_lease(
        shard.clone(),
        lease_gap(&cfg),
        background.clone(),
    ));

    // 3. The front doors.
    let control = StreamControl::default();
    let streams = TaskTracker::new();
    let service = FanoutService::new(
        shard.clone(),
        stream_limits(&cfg),
        control.clone(),
        streams.clone(),
        Arc::new(DeadLetters::new(&cfg).map_err(StoreError::kafka("dead-letter producer"))?),
    );
    let grpc_stop = CancellationToken::new();
    let grpc = tokio::spawn(
        tonic::transport::Server::builder()
            .http2_keepalive_interval(Some(Duration::from_secs(20)))
            .http2_keepalive_timeout(Some(Duration::from_secs(10)))
            .max_concurrent_streams(Some(1024))
            .tcp_nodelay(true)
            .add_service(FanoutServer::new(service).max_decoding_message_size(MAX_REQUEST_BYTES))
            .serve_with_incoming_shutdown(
                TcpListenerStream::new(listeners.grpc),
                grpc_stop.clone().cancelled_owned(),
            ),
    );
    let (ready_tx, ready_rx) = watch::channel(false);
    let admin_kafka =
        Arc::new(kafka::metadata_client(&cfg).map_err(StoreError::kafka("metadata client"))?);
    // The long-lived clients nothing polls: their statistics are served here.
    tasks.spawn(kafka::stats::serve_unpolled(
        vec![admin_kafka.clone(), cursor_ends],
        background.clone(),
    ));
    let admin_state = AdminState {
        shard: shard.clone(),
        registry: writer,
        write_lock: Arc::new(tokio::sync::Mutex::new(())),
        kafka: admin_kafka,
        ready: ready_rx,
        metrics,
        info: me.clone(),
        cluster: Arc::from(cfg.cluster.as_str()),
        token: cfg.admin_token()?.map(Arc::from),
        kafka_seen: Arc::default(),
        redrive_lock: Arc::default(),
        redrive: Arc::new(
            crate::deadletter::Redriver::new(&cfg)
                .map_err(StoreError::kafka("dead-letter redrive producer"))?,
        ),
    };
    let admin_stop = CancellationToken::new();
    let admin = tokio::spawn(
        axum::serve(listeners.admin, admin::router(admin_state))
            .with_graceful_shutdown(admin_stop.clone().cancelled_owned())
            .into_future(),
    );
    ready_tx.send_replace(true);
    tracing::info!(grpc = ?grpc_addr, admin = ?admin_addr, "fanout-server ready");

    // 4. Run until told to stop (or a front door fails).
    let mut grpc = grpc;
    let mut admin = admin;
    let failure = tokio::select! {
        _ = shutdown.cancelled() => None,
        r = &mut grpc => Some(AppError::Serve("gRPC", format!("{r:?}"))),
        r = &mut admin => Some(AppError::Serve("admin", format!("{r:?}"))),
        Some(why) = fatal.recv() => Some(AppError::Store(StoreError::Fenced(why))),
    };

    // 5. Shut down in order.
    tracing::info!("shutting down: draining streams");
    ready_tx.send_replace(false);
    control.drain.cancel();
    let left = drain(&shard, cfg.drain_timeout).await;
    if left > 0 {
        tracing::warn!(
            unacked = left,
            "records still unacked at the drain deadline; they will be delivered again"
        );
    }
    control.close.cancel();
    grpc_stop.cancel();
    if tokio::time::timeout(Duration::from_secs(5), &mut grpc)
        .await
        .is_err()
    {
        tracing::warn!("gRPC server did not stop within 5s");
        grpc.abort();
    }
    streams.close();
    let _ = tokio::time::timeout(Duration::from_secs(5), streams.wait()).await;
    match tokio::time::timeout(Duration::from_secs(20), flusher.flush(None)).await {
        Ok(Ok(n)) => tracing::info!(cursors = n, "final cursors written"),
        Ok(Err(e)) => tracing::error!(error = %e, "final cursor flush failed"),
        Err(_) => tracing::error!("final cursor flush did not finish within 20 s"),
    }
    ingest.stop(Duration::from_secs(60)).await;
    background.cancel();
    tasks.close();
    let _ = tokio::time::timeout(Duration::from_secs(10), tasks.wait()).await;
    admin_stop.cancel();
    if tokio::time::timeout(Duration::from_secs(5), &mut admin)
        .await
        .is_err()
    {
        admin.abort();
    }
    tracing::info!("fanout-server stopped");
    failure.map_or(Ok(()), Err)
}

/// Waits until nothing is in flight on a live stream or the deadline passes; returns what
/// is still in flight.
async fn drain(shard: &Shard, timeout: Duration) -> usize {
    let deadline = Instant::now() + timeout;
    loop {
        let in_flight: usize = shard
            .topics()
            .iter()
            .flat_map(|t| t.subscriptions())
            .map(|s| s.in_flight())
            .sum();
        if in_flight == 0 || Instant::now() >= deadline {
            return in_flight;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Refuses to start under the name of another live shard of the cluster (two shards with
/// one name would fence each other's cursor writes). A member with this name and other
/// addresses may be an earlier life of this shard whose session has not expired yet: it is
/// waited for, up to the session timeout.
async fn refuse_a_taken_name(cfg: &Config, me: &ShardInfo) -> Result<(), AppError> {
    let client =
        Arc::new(kafka::metadata_client(cfg).map_err(StoreError::kafka("metadata client"))?);
    let deadline = Instant::now() + cfg.session_timeout + Duration::from_secs(5);
    loop {
        let (c, group) = (client.clone(), cfg.group_id());
        let members =
            tokio::task::spawn_blocking(move || crate::membership::members(c.as_ref(), &group))
                .await
                .map_err(|e| StoreError::Thread("membership", e.to_string()))?;
        let other = match members {
            Ok(members) => members
                .iter()
                .filter_map(|m| crate::membership::parse_client_id(&cfg.cluster, &m.client_id))
                .find(|s| s.id == me.id && s.grpc_address != me.grpc_address),
            Err(e) => {
                tracing::warn!(error = %e, "cannot list the shard group; not checking the shard name");
                None
            }
        };
        let Some(other) = other else {
            return Ok(());
        };
        if Instant::now() >= deadline {
            return Err(ConfigError(format!(
                "another shard of cluster {:?} is named {:?} (gRPC at {}); give every shard its own --shard-id",
                cfg.cluster, me.id, other.grpc_address
            ))
            .into());
        }
        tracing::warn!(shard = %me.id, other = %other.grpc_address, "a shard of this name is still in the group; waiting for its session to end");
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Every interval: write moved cursors and changed group offsets (one transaction). A
/// fenced writer ends the shard: it can never store a cursor again.
async fn flush_loop(
    flusher: Arc<Flusher>,
    every: Duration,
    cancel: CancellationToken,
    fatal: tokio::sync::mpsc::Sender<String>,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = tick.tick() => {}
        }
        let started = Instant::now();
        match flusher.flush(None).await {
            Ok(0) => {}
            Ok(n) => tracing::debug!(cursors = n, elapsed = ?started.elapsed(), "cursors flushed"),
            Err(StoreError::Fenced(why)) => {
                tracing::error!(%why, "the cursor writer was fenced; this shard stops");
                let _ = fatal.send(why).await;
                break;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cursor flush failed; retrying next interval");
            }
        }
    }
}

/// Renews the shard's lease a few times per gap; a gap (the process was stopped) suspends
/// deliveries and cursor writes until the flusher confirms the shard is still a group member.
async fn renew_lease(shard: Arc<Shard>, gap: Duration, cancel: CancellationToken) {
    let mut tick = tokio::time::interval((gap / 8).max(Duration::from_millis(50)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    shard.lease().start(std::time::Instant::now());
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = tick.tick() => {}
        }
        if let Some(away) = shard.lease().renew(std::time::Instant::now()) {
            telemetry::metrics::lease_suspended();
            tracing::warn!(
                ?away,
                "this process was stopped longer than the lease allows; deliveries and cursor writes are suspended until the shard group confirms this shard still owns its partitions"
            );
        }
    }
}
