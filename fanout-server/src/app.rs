//! The composition root: [`App::build`] makes every part from the configuration (each takes
//! only its own settings) and checks what can be checked before anything runs;
//! [`App::run`] starts the long-lived tasks, serves until told to stop, and shuts down in
//! order (not ready → stop new deliveries → drain acks → close streams → flush cursors and
//! commit → leave the group).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fanout_core::shard::Shard;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::{CancellationToken, DropGuard};
use tokio_util::task::TaskTracker;

use crate::admin::{self, AdminState};
use crate::config::{Config, ConfigError};
use crate::deadletter::{DeadLetters, Redriver};
use crate::grpc::{self, FanoutService, StreamControl, StreamLimits};
use crate::ingest::{self, Ingest, IngestSettings};
use crate::kafka;
use crate::membership::{self, ShardInfo};
use crate::store::cursors::{CursorTail, CursorWriter, Flusher};
use crate::store::registry::RegistryWriter;
use crate::store::{self, StoreError};
use crate::{lease, telemetry};

/// How long the stored cursors and the registry may take to load at start.
const LOAD_TIMEOUT: Duration = Duration::from_secs(120);

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

/// Runs a shard until `shutdown` is cancelled, then shuts it down in order.
pub async fn run(
    cfg: Config,
    listeners: Listeners,
    shutdown: CancellationToken,
) -> Result<(), AppError> {
    App::build(cfg, listeners).await?.run(shutdown).await
}

/// Settings the running shard needs beyond its parts.
#[derive(Debug)]
struct RunSettings {
    /// The ingest's, and every other Kafka client's (`ingest.kafka`).
    ingest: IngestSettings,
    catch_up_readers: usize,
    cursor_flush_interval: Duration,
    lease_gap: Duration,
    drain_timeout: Duration,
    stream_limits: StreamLimits,
}

/// A shard, built and not yet running.
pub struct App {
    settings: RunSettings,
    listeners: Listeners,
    /// This shard's name and addresses.
    me: ShardInfo,
    shard: Arc<Shard>,
    /// Renders `/metrics`.
    metrics: Option<PrometheusHandle>,
    /// Writes moved cursors (and the shard group's offsets).
    flusher: Arc<Flusher>,
    /// Writes registry records for the admin API.
    registry: Arc<RegistryWriter>,
    /// Publishes records out of attempts.
    dead_letters: Arc<DeadLetters>,
    /// Publishes dead letters back (admin redrive).
    redriver: Arc<Redriver>,
    /// The admin API's bearer token (`None`: no authentication).
    token: Option<Arc<str>>,
}

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("App")
            .field("me", &self.me)
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl App {
    /// Checks the configuration, the shard's name (no other live shard may have it) and the
    /// internal topics (created if missing), and makes the parts that read nothing: the
    /// shard's state, the cursor writer and its flusher, the producers of registry records,
    /// dead letters and redrives. Nothing runs yet; the readers are made by [`App::run`].
    pub async fn build(cfg: Config, listeners: Listeners) -> Result<Self, AppError> {
        cfg.validate()?;
        // Before anything that counts (the first assignment reports retention losses).
        let metrics = telemetry::metrics::install();
        let me = cfg.identity(
            listeners.grpc.local_addr().ok(),
            listeners.admin.local_addr().ok(),
        )?;
        tracing::info!(cluster = %cfg.cluster, kafka = %cfg.kafka_bootstrap, "fanout-server starting");
        let kafka = cfg.kafka();
        membership::refuse_a_taken_name(
            Arc::new(kafka::metadata_client(&kafka).map_err(StoreError::kafka("metadata client"))?),
            &cfg.cluster,
            &me,
            cfg.session_timeout + Duration::from_secs(5),
        )
        .await
        .map_err(|e| match e {
            membership::NameError::Taken { .. } => AppError::Config(ConfigError(e.to_string())),
            membership::NameError::Thread(why) => StoreError::Thread("membership", why).into(),
        })?;
        store::topics::ensure(&kafka, cfg.replication()).await?;
        let shard = Arc::new(Shard::new(cfg.shard_limits()));
        // Registering the writer's transactional id aborts whatever a previous life of this
        // shard left open, which reading the cursors to the end would otherwise wait for: it
        // exists before the cursors are read (in `run`).
        let cursor_writer = CursorWriter::new(&kafka, &me.id).await?;
        Ok(Self {
            flusher: Arc::new(Flusher::new(shard.clone(), cursor_writer)),
            registry: Arc::new(RegistryWriter::new(&kafka, shard.clone())?),
            dead_letters: Arc::new(
                DeadLetters::new(&kafka).map_err(StoreError::kafka("dead-letter producer"))?,
            ),
            redriver: Arc::new(
                Redriver::new(&kafka).map_err(StoreError::kafka("dead-letter redrive producer"))?,
            ),
            token: cfg.admin_token()?.map(Arc::from),
            settings: RunSettings {
                ingest: cfg.ingest(),
                catch_up_readers: cfg.catch_up_readers,
                cursor_flush_interval: cfg.cursor_flush_interval,
                lease_gap: cfg.lease_gap(),
                drain_timeout: cfg.drain_timeout,
                stream_limits: cfg.stream_limits(),
            },
            listeners,
            me,
            shard,
            metrics,
        })
    }

    /// Loads the stored cursors and the registry, starts reading Kafka and the front
    /// doors, serves until `shutdown` (or a front door fails, or the cursor writer is
    /// fenced), then shuts down in order.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), AppError> {
        let background = CancellationToken::new();
        // Every task of the shard stops if this returns early.
        let stop_background = background.clone().drop_guard();
        let tasks = TaskTracker::new();
        let Some(mut running) = self.start(&background, &tasks, &shutdown).await? else {
            return Ok(());
        };
        let failure = running.serve(&shutdown).await;
        running.stop(stop_background, tasks).await;
        failure.map_or(Ok(()), Err)
    }

    /// Starts everything; `None` if `shutdown` came while the registry was loading.
    async fn start(
        self,
        background: &CancellationToken,
        tasks: &TaskTracker,
        shutdown: &CancellationToken,
    ) -> Result<Option<Running>, AppError> {
        let Self {
            settings,
            listeners,
            me,
            shard,
            metrics,
            flusher,
            registry,
            dead_letters,
            redriver,
            token,
        } = self;
        let grpc_addr = listeners.grpc.local_addr().ok();
        let admin_addr = listeners.admin.local_addr().ok();

        // 1. Durable state: stored cursors (followed for the shard's life), the registry.
        let cursors = CursorTail::start(
            &settings.ingest.kafka,
            shard.clone(),
            tasks,
            background.clone(),
            LOAD_TIMEOUT,
        )
        .await?;
        let (loaded_tx, mut loaded) = watch::channel(false);
        tasks.spawn(store::registry::tail(
            store::registry::open_reader(&settings.ingest.kafka)?,
            shard.clone(),
            loaded_tx,
            background.clone(),
        ));
        tokio::select! {
            r = tokio::time::timeout(LOAD_TIMEOUT, loaded.wait_for(|l| *l)) => {
                if !matches!(r, Ok(Ok(_))) {
                    return Err(StoreError::Timeout { what: "loading the registry".into(), after: LOAD_TIMEOUT }.into());
                }
            }
            _ = shutdown.cancelled() => return Ok(None),
        }

        // 2. Reading Kafka and committing.
        let cursor_ends = cursors.ends_client();
        let ingest = Ingest::start(
            &settings.ingest,
            shard.clone(),
            flusher.clone(),
            cursors,
            &me,
        )?;
        ingest::catchup::start(
            &settings.ingest.kafka,
            &shard,
            settings.catch_up_readers,
            tasks,
            background.clone(),
        )
        .map_err(StoreError::kafka("catch-up reader"))?;
        let (fatal_tx, fatal) = mpsc::channel::<String>(1);
        tasks.spawn(flusher.clone().run(
            settings.cursor_flush_interval,
            background.clone(),
            fatal_tx,
        ));
        tasks.spawn(lease::renew(
            shard.clone(),
            settings.lease_gap,
            background.clone(),
        ));
        // The admin API's view of Kafka, and the long-lived clients nothing polls: their
        // statistics are served here.
        let admin_kafka = Arc::new(
            kafka::metadata_client(&settings.ingest.kafka)
                .map_err(StoreError::kafka("metadata client"))?,
        );
        tasks.spawn(kafka::stats::serve_unpolled(
            vec![admin_kafka.clone(), cursor_ends],
            background.clone(),
        ));

        // 3. The front doors.
        let control = StreamControl::default();
        let streams = TaskTracker::new();
        let service = FanoutService::new(
            shard.clone(),
            settings.stream_limits,
            control.clone(),
            streams.clone(),
            dead_letters,
        );
        let grpc_stop = CancellationToken::new();
        let grpc = tokio::spawn(grpc::serve(listeners.grpc, service, grpc_stop.clone()));
        let (ready_tx, ready_rx) = watch::channel(false);
        let admin_state = AdminState {
            shard: shard.clone(),
            registry,
            write_lock: Arc::new(tokio::sync::Mutex::new(())),
            kafka: admin_kafka,
            ready: ready_rx,
            metrics,
            info: me,
            cluster: Arc::from(settings.ingest.kafka.cluster.as_str()),
            token,
            kafka_seen: Arc::default(),
            redrive_lock: Arc::default(),
            redrive: redriver,
        };
        let admin_stop = CancellationToken::new();
        let admin = tokio::spawn(admin::serve(
            listeners.admin,
            admin_state,
            admin_stop.clone(),
        ));
        ready_tx.send_replace(true);
        tracing::info!(grpc = ?grpc_addr, admin = ?admin_addr, "fanout-server ready");
        Ok(Some(Running {
            shard,
            flusher,
            ingest,
            control,
            streams,
            grpc,
            grpc_stop,
            admin,
            admin_stop,
            ready: ready_tx,
            fatal,
            drain_timeout: settings.drain_timeout,
        }))
    }
}

/// A shard that serves.
struct Running {
    shard: Arc<Shard>,
    flusher: Arc<Flusher>,
    ingest: Ingest,
    /// Drains and closes the streams.
    control: StreamControl,
    /// The stream tasks.
    streams: TaskTracker,
    grpc: JoinHandle<Result<(), tonic::transport::Error>>,
    grpc_stop: CancellationToken,
    admin: JoinHandle<std::io::Result<()>>,
    admin_stop: CancellationToken,
    /// Readiness, as `/readyz` reports it.
    ready: watch::Sender<bool>,
    /// Says why the cursor writer was fenced.
    fatal: mpsc::Receiver<String>,
    drain_timeout: Duration,
}

impl Running {
    /// Serves until `shutdown`, or a front door fails, or the cursor writer is fenced.
    async fn serve(&mut self, shutdown: &CancellationToken) -> Option<AppError> {
        tokio::select! {
            _ = shutdown.cancelled() => None,
            r = &mut self.grpc => Some(AppError::Serve("gRPC", format!("{r:?}"))),
            r = &mut self.admin => Some(AppError::Serve("admin", format!("{r:?}"))),
            Some(why) = self.fatal.recv() => Some(AppError::Store(StoreError::Fenced(why))),
        }
    }

    /// Not ready → stop new deliveries → drain acks → close streams → flush cursors and
    /// commit → leave the group → stop the background tasks and the admin API.
    async fn stop(mut self, background: DropGuard, tasks: TaskTracker) {
        tracing::info!("shutting down: draining streams");
        self.ready.send_replace(false);
        self.control.drain.cancel();
        let left = drain(&self.shard, self.drain_timeout).await;
        if left > 0 {
            tracing::warn!(
                unacked = left,
                "records still unacked at the drain deadline; they will be delivered again"
            );
        }
        self.control.close.cancel();
        self.grpc_stop.cancel();
        if tokio::time::timeout(Duration::from_secs(5), &mut self.grpc)
            .await
            .is_err()
        {
            tracing::warn!("gRPC server did not stop within 5s");
            self.grpc.abort();
        }
        self.streams.close();
        let _ = tokio::time::timeout(Duration::from_secs(5), self.streams.wait()).await;
        match tokio::time::timeout(Duration::from_secs(20), self.flusher.flush(None)).await {
            Ok(Ok(n)) => tracing::info!(cursors = n, "final cursors written"),
            Ok(Err(e)) => tracing::error!(error = %e, "final cursor flush failed"),
            Err(_) => tracing::error!("final cursor flush did not finish within 20 s"),
        }
        self.ingest.stop(Duration::from_secs(60)).await;
        drop(background);
        tasks.close();
        let _ = tokio::time::timeout(Duration::from_secs(10), tasks.wait()).await;
        self.admin_stop.cancel();
        if tokio::time::timeout(Duration::from_secs(5), &mut self.admin)
            .await
            .is_err()
        {
            self.admin.abort();
        }
        tracing::info!("fanout-server stopped");
    }
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
