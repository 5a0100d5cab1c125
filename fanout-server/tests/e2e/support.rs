//! Test support: a real Kafka broker (started by `scripts/test`, address in
//! `FANOUT_TEST_KAFKA`, default 127.0.0.1:9092), random names, servers in-process or as a
//! child process, producers, subscribers and admin calls.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Once;
use std::time::{Duration, Instant};

use fanout_client::{Record, Subscriber, SubscriberConfig};
use fanout_server::app::{self, Listeners};
use fanout_server::config::Config;
use rand::RngExt;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Every wait in these tests is bounded by this, unless said otherwise.
pub const WAIT: Duration = Duration::from_secs(60);

pub fn kafka() -> String {
    std::env::var("FANOUT_TEST_KAFKA").unwrap_or_else(|_| "127.0.0.1:9092".into())
}

static LOGS: Once = Once::new();

pub fn init_logs() {
    LOGS.call_once(|| {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_default_env()
                    .unwrap_or_else(|_| "warn".into()),
            )
            .with_test_writer()
            .try_init();
    });
}

/// A random name with a prefix, unique per test run.
pub fn name(prefix: &str) -> String {
    let n: u64 = rand::rng().random();
    format!("{prefix}-{n:016x}")
}

/// Server configuration for the local single-broker Kafka.
pub fn config(cluster: &str) -> Config {
    let mut c = Config::for_bootstrap(&kafka(), cluster);
    c.internal_replication_factor = 1;
    c.internal_min_insync_replicas = 1;
    c.cursor_flush_interval = Duration::from_millis(200);
    c.drain_timeout = Duration::from_secs(3);
    c
}

pub fn admin_client() -> AdminClient<DefaultClientContext> {
    ClientConfig::new()
        .set("bootstrap.servers", kafka())
        .create()
        .expect("admin client")
}

/// Creates a topic in Kafka and waits until its metadata is visible.
pub async fn create_topic(topic: &str, partitions: i32) {
    let admin = admin_client();
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let r = admin
        .create_topics(
            [&NewTopic::new(
                topic,
                partitions,
                TopicReplication::Fixed(1),
            )],
            &opts,
        )
        .await
        .unwrap_or_else(|e| {
            panic!(
                "creating {topic}: {e}; is Kafka running at {}? (scripts/test starts it)",
                kafka()
            )
        });
    r[0].as_ref()
        .unwrap_or_else(|e| panic!("creating {topic}: {e:?}"));
    let t = topic.to_owned();
    tokio::task::spawn_blocking(move || {
        let c: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", kafka())
            .create()
            .unwrap();
        let deadline = Instant::now() + WAIT;
        loop {
            let md = c.fetch_metadata(Some(&t), Duration::from_secs(5)).unwrap();
            if md
                .topics()
                .first()
                .is_some_and(|m| m.error().is_none() && m.partitions().len() == partitions as usize)
            {
                return;
            }
            assert!(Instant::now() < deadline, "topic {t} not visible");
            std::thread::sleep(Duration::from_millis(50));
        }
    })
    .await
    .unwrap();
}

pub fn producer() -> FutureProducer {
    ClientConfig::new()
        .set("bootstrap.servers", kafka())
        .set("linger.ms", "5")
        .set("enable.idempotence", "true")
        .create()
        .expect("producer")
}

/// Produces `n` keyed records (`key-<i mod 97>`, value `value-<start+i>`); returns their
/// (partition, offset) as acknowledged by Kafka.
pub async fn produce(topic: &str, start: usize, n: usize) -> BTreeSet<(i32, i64)> {
    let p = producer();
    let mut acked = BTreeSet::new();
    for chunk in (start..start + n).collect::<Vec<_>>().chunks(1000) {
        let futs = chunk.iter().map(|i| {
            let key = format!("key-{}", i % 97);
            let value = format!("value-{i}");
            let p = &p;
            async move {
                p.send(
                    FutureRecord::to(topic).key(&key).payload(&value),
                    Timeout::After(WAIT),
                )
                .await
            }
        });
        for r in futures::future::join_all(futs).await {
            let d = r.unwrap_or_else(|(e, _)| panic!("produce to {topic}: {e}"));
            acked.insert((d.partition, d.offset));
        }
    }
    acked
}

/// A fanout server running in this process.
pub struct TestServer {
    pub cluster: String,
    pub grpc: String,
    pub admin: String,
    pub http: reqwest::Client,
    shutdown: CancellationToken,
    task: Option<JoinHandle<Result<(), app::AppError>>>,
}

impl TestServer {
    pub async fn start(cluster: &str) -> Self {
        Self::start_with(config(cluster)).await
    }

    pub async fn start_with(cfg: Config) -> Self {
        init_logs();
        let grpc = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let admin = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let grpc_addr = grpc.local_addr().unwrap();
        let admin_addr = admin.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let cluster = cfg.cluster.clone();
        let mut task = tokio::spawn(app::run(cfg, Listeners { grpc, admin }, shutdown.clone()));
        let http = reqwest::Client::new();
        let admin = format!("http://{admin_addr}");
        tokio::select! {
            _ = wait_ready(&http, &admin) => {}
            ended = &mut task => panic!("server stopped while starting: {ended:?}"),
        }
        Self {
            cluster,
            grpc: format!("http://{grpc_addr}"),
            admin,
            http,
            shutdown,
            task: Some(task),
        }
    }

    /// Graceful shutdown (as on SIGTERM); returns the server's result.
    pub async fn stop(mut self) -> Result<(), app::AppError> {
        self.shutdown.cancel();
        let task = self.task.take().unwrap();
        tokio::time::timeout(WAIT, task)
            .await
            .expect("server stops in time")
            .unwrap()
    }

    pub fn admin_api(&self) -> Admin {
        Admin {
            http: self.http.clone(),
            base: self.admin.clone(),
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

pub async fn wait_ready(http: &reqwest::Client, admin: &str) {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Ok(r) = http.get(format!("{admin}/readyz")).send().await
            && r.status().is_success()
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "server at {admin} not ready within {WAIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A fanout server as a child process (for SIGKILL).
pub struct ServerProcess {
    pub grpc: String,
    pub admin: String,
    child: Child,
}

impl ServerProcess {
    pub async fn spawn(cluster: &str, grpc: SocketAddr, admin: SocketAddr) -> Self {
        Self::spawn_with(cluster, grpc, admin, &[]).await
    }

    /// The same, with more command-line arguments.
    pub async fn spawn_with(
        cluster: &str,
        grpc: SocketAddr,
        admin: SocketAddr,
        extra: &[&str],
    ) -> Self {
        let log = std::env::temp_dir().join(format!("{cluster}-{}.log", grpc.port()));
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_fanout-server"))
            .args(["--kafka-bootstrap", &kafka(), "--cluster", cluster])
            .args([
                "--grpc-listen",
                &grpc.to_string(),
                "--admin-listen",
                &admin.to_string(),
            ])
            .args([
                "--internal-replication-factor",
                "1",
                "--internal-min-insync-replicas",
                "1",
            ])
            .args(["--cursor-flush-interval", "200ms", "--admin-no-auth"])
            .args(extra)
            .env(
                "RUST_LOG",
                std::env::var("FANOUT_TEST_SERVER_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdout(Stdio::null())
            .stderr(out)
            .spawn()
            .expect("spawn fanout-server");
        let s = Self {
            grpc: format!("http://{grpc}"),
            admin: format!("http://{admin}"),
            child,
        };
        wait_ready(&reqwest::Client::new(), &s.admin).await;
        s
    }

    /// SIGTERM, then waits (bounded) for a graceful exit; returns whether it exited 0.
    pub async fn terminate(&mut self) -> bool {
        let pid = self.child.id().to_string();
        let sent = Command::new("kill").args(["-TERM", &pid]).status();
        assert!(sent.is_ok_and(|s| s.success()), "kill -TERM {pid}");
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.success();
            }
            assert!(
                Instant::now() < deadline,
                "fanout-server did not stop after SIGTERM"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Two free loopback ports.
pub fn free_addrs() -> (SocketAddr, SocketAddr) {
    let a = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let b = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    (a.local_addr().unwrap(), b.local_addr().unwrap())
}

/// Admin API calls.
#[derive(Clone)]
pub struct Admin {
    pub http: reqwest::Client,
    pub base: String,
}

impl Admin {
    pub async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        let r = self
            .http
            .post(format!("{}{path}", self.base))
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    pub async fn post_raw(
        &self,
        path: &str,
        content_type: &str,
        body: Vec<u8>,
    ) -> (u16, String, Value) {
        let r = self
            .http
            .post(format!("{}{path}", self.base))
            .header("content-type", content_type)
            .body(body)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let ct = r
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        (status, ct, r.json().await.unwrap_or(Value::Null))
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        self.bodiless(reqwest::Method::GET, path).await
    }

    pub async fn delete(&self, path: &str) -> (u16, Value) {
        self.bodiless(reqwest::Method::DELETE, path).await
    }

    async fn bodiless(&self, method: reqwest::Method, path: &str) -> (u16, Value) {
        let r = self
            .http
            .request(method, format!("{}{path}", self.base))
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// A text endpoint (`/metrics`): status, content type, body.
    pub async fn get_text(&self, path: &str) -> (u16, String, String) {
        let r = self
            .http
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let ct = r
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        (status, ct, r.text().await.unwrap_or_default())
    }

    pub async fn register(&self, topic: &str) {
        let (s, b) = self
            .post("/v1/topics", serde_json::json!({ "name": topic }))
            .await;
        assert_eq!(s, 201, "register {topic}: {b}");
    }

    pub async fn subscribe(&self, topic: &str, sub: &str, start: &str) -> Value {
        let (s, b) = self
            .post(
                &format!("/v1/topics/{topic}/subscriptions"),
                serde_json::json!({ "name": sub, "start": start }),
            )
            .await;
        assert_eq!(s, 201, "create {topic}/{sub}: {b}");
        b
    }

    /// Cursors of a subscription on this shard.
    pub async fn cursors(&self, topic: &str, sub: &str) -> BTreeMap<i32, i64> {
        self.cursor_field(topic, sub, "cursors").await
    }

    /// Where a restart would resume the subscription.
    pub async fn durable_cursors(&self, topic: &str, sub: &str) -> BTreeMap<i32, i64> {
        self.cursor_field(topic, sub, "durable_cursors").await
    }

    async fn cursor_field(&self, topic: &str, sub: &str, field: &str) -> BTreeMap<i32, i64> {
        let (s, b) = self
            .get(&format!("/v1/topics/{topic}/subscriptions/{sub}"))
            .await;
        assert_eq!(s, 200, "{b}");
        b[field]
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.parse().unwrap(), v.as_i64().unwrap()))
            .collect()
    }
}

/// Offsets the shard group committed, per partition (absent: nothing committed).
pub async fn committed(group: &str, topic: &str, partitions: i32) -> BTreeMap<i32, i64> {
    let group = group.to_owned();
    let topic = topic.to_owned();
    tokio::task::spawn_blocking(move || {
        let c: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", kafka())
            .set("group.id", &group)
            .set("enable.auto.commit", "false")
            .create()
            .unwrap();
        let mut tpl = TopicPartitionList::new();
        for p in 0..partitions {
            tpl.add_partition(&topic, p);
        }
        let out = c.committed_offsets(tpl, Duration::from_secs(10)).unwrap();
        let map = out
            .elements()
            .iter()
            .filter_map(|e| match e.offset() {
                Offset::Offset(o) => Some((e.partition(), o)),
                _ => None,
            })
            .collect();
        // Drop the list before the consumer (a live list makes the consumer's close hang).
        drop(out);
        map
    })
    .await
    .unwrap()
}

/// Polls `check` until it returns Some, failing after `WAIT`.
pub async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub async fn subscriber(server: &str, topic: &str, sub: &str, credits: u32) -> Subscriber {
    Subscriber::connect(SubscriberConfig::new(server, topic, sub).max_in_flight(credits))
        .await
        .unwrap_or_else(|e| panic!("subscribe {topic}/{sub}: {e}"))
}

/// What one subscriber saw.
#[derive(Debug, Default)]
pub struct Received {
    pub unique: BTreeSet<(i32, i64)>,
    pub deliveries: usize,
}

impl Received {
    pub fn duplicates(&self) -> usize {
        self.deliveries - self.unique.len()
    }

    /// How many of `want` were seen, for messages.
    pub fn progress(&self, want: &BTreeSet<(i32, i64)>) -> String {
        format!(
            "{} of {} records",
            self.unique.intersection(want).count(),
            want.len()
        )
    }
}

/// Receives (and acks) until every record of `want` was seen, failing after `WAIT`.
pub async fn receive_all(sub: &mut Subscriber, want: &BTreeSet<(i32, i64)>, got: &mut Received) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !want.is_subset(&got.unique) {
        let r = tokio::time::timeout_at(deadline, sub.next())
            .await
            .unwrap_or_else(|_| panic!("timed out: {}", got.progress(want)))
            .expect("subscriber ended")
            .expect("subscriber error");
        note(got, &r);
        sub.ack(&r);
    }
}

pub fn note(got: &mut Received, r: &Record) {
    got.deliveries += 1;
    got.unique.insert((r.partition, r.offset));
}

/// A consumer assigned to partition 0 of `topic` from its beginning (committed records
/// only); with `eof`, reaching the end shows as `PartitionEOF`. Blocking.
pub fn reader_from_start(topic: &str, group: &str, eof: bool) -> BaseConsumer {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", kafka())
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", if eof { "true" } else { "false" })
        .set("isolation.level", "read_committed")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, Offset::Beginning)
        .unwrap();
    c.assign(&tpl).unwrap();
    c
}

/// The cursors stored in the cluster's cursors topic: (subscription, partition) -> cursor.
pub async fn stored_cursors(cluster: &str) -> BTreeMap<(String, i32), i64> {
    let topic = format!("__{cluster}_cursors");
    tokio::task::spawn_blocking(move || {
        let c = reader_from_start(&topic, "test-cursor-reader", true);
        let mut out = BTreeMap::new();
        let deadline = Instant::now() + WAIT;
        loop {
            assert!(Instant::now() < deadline, "reading {topic} timed out");
            match c.poll(Duration::from_millis(500)) {
                None => continue,
                Some(Err(rdkafka::error::KafkaError::PartitionEOF(_))) => break,
                Some(Err(e)) => panic!("reading {topic}: {e}"),
                Some(Ok(m)) => {
                    use rdkafka::Message;
                    let key = String::from_utf8(m.key().unwrap().to_vec()).unwrap();
                    let mut parts = key.splitn(3, ':');
                    let (_t, p, s) = (
                        parts.next().unwrap(),
                        parts.next().unwrap(),
                        parts.next().unwrap(),
                    );
                    let k = (s.to_owned(), p.parse().unwrap());
                    match m.payload() {
                        None => {
                            out.remove(&k);
                        }
                        Some(v) => {
                            let v: Value = serde_json::from_slice(v).unwrap();
                            out.insert(k, v["cursor"].as_i64().unwrap());
                        }
                    }
                }
            }
        }
        out
    })
    .await
    .unwrap()
}
