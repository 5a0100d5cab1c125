//! The admin HTTP API (axum): register topics, create subscriptions, look at them.
//!
//! Every write goes to the registry topic and answers once this shard applied it. Errors are
//! `application/problem+json` with a stable `code`.

mod error;

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::rejection::JsonRejection;
use axum::extract::{DefaultBodyLimit, FromRequest, Path, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use metrics_exporter_prometheus::PrometheusHandle;
use rdkafka::consumer::BaseConsumer;
use rdkafka::error::KafkaError;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

pub use error::ApiError;

use crate::kafka;
use crate::model::{
    DEFAULT_ACK_TIMEOUT_MS, DeliveryOrder, DeliveryPolicy, Offset, Partition, StartOffsets,
    StartPosition, SubscriptionKey, SubscriptionName, TopicName,
};
use crate::registry::{Entry, Key, SubscriptionSpec, TopicSpec};
use crate::shard::{LossTotal, Shard};
use crate::store::registry::RegistryWriter;

/// Largest request body accepted.
pub const MAX_BODY_BYTES: usize = 64 << 10;

/// What the admin API needs to know about Kafka. Blocking calls; run off the async workers.
pub trait KafkaView: Send + Sync + 'static {
    /// Partitions of a topic, or `None` if Kafka does not know it.
    fn partitions(&self, topic: &str) -> Result<Option<Vec<Partition>>, KafkaError>;
    /// (partition, low, high) watermarks.
    fn watermarks(
        &self,
        topic: &str,
        partitions: &[Partition],
    ) -> Result<Vec<(Partition, Offset, Offset)>, KafkaError>;
}

impl KafkaView for BaseConsumer {
    fn partitions(&self, topic: &str) -> Result<Option<Vec<Partition>>, KafkaError> {
        kafka::partitions_of(self, topic)
    }

    fn watermarks(
        &self,
        topic: &str,
        partitions: &[Partition],
    ) -> Result<Vec<(Partition, Offset, Offset)>, KafkaError> {
        kafka::watermarks(self, topic, partitions)
    }
}

/// Shared state of the admin handlers.
#[derive(Clone)]
pub struct AdminState {
    /// The applied registry and live delivery state.
    pub shard: Arc<Shard>,
    /// Writes registry records and waits for them to apply.
    pub writer: Arc<RegistryWriter>,
    /// Topic metadata and watermarks.
    pub kafka: Arc<dyn KafkaView>,
    /// True once the registry is loaded and the ingest runs.
    pub ready: watch::Receiver<bool>,
    /// Renders `/metrics` (absent: the process has no recorder of ours).
    pub metrics: Option<PrometheusHandle>,
}

impl std::fmt::Debug for AdminState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminState").finish_non_exhaustive()
    }
}

/// The admin router.
pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/v1/shard", get(get_shard))
        .route("/v1/topics", get(list_topics).post(register_topic))
        .route("/v1/topics/{topic}", get(get_topic))
        .route(
            "/v1/topics/{topic}/subscriptions",
            get(list_subscriptions).post(create_subscription),
        )
        .route(
            "/v1/topics/{topic}/subscriptions/{name}",
            get(get_subscription),
        )
        .fallback(|| async { ApiError::not_found("no_such_route", "no such endpoint") })
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

/// A JSON body whose rejections become problem documents.
#[derive(Debug)]
pub struct Body<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for Body<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(v)) => Ok(Body(v)),
            Err(r) => Err(match r {
                JsonRejection::JsonDataError(e) => ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "invalid_body",
                    e.body_text(),
                ),
                JsonRejection::JsonSyntaxError(e) => {
                    ApiError::new(StatusCode::BAD_REQUEST, "malformed_json", e.body_text())
                }
                JsonRejection::MissingJsonContentType(e) => ApiError::new(
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    "unsupported_media_type",
                    e.body_text(),
                ),
                other if other.status() == StatusCode::PAYLOAD_TOO_LARGE => ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "body_too_large",
                    format!("request bodies are limited to {MAX_BODY_BYTES} bytes"),
                ),
                other => ApiError::new(other.status(), "bad_body", other.body_text()),
            }),
        }
    }
}

/// Runs a blocking Kafka query off the async workers.
async fn ask_kafka<T: Send + 'static>(
    s: &AdminState,
    query: impl FnOnce(&dyn KafkaView) -> Result<T, KafkaError> + Send + 'static,
) -> Result<T, ApiError> {
    let kafka = s.kafka.clone();
    tokio::task::spawn_blocking(move || query(kafka.as_ref()))
        .await
        .map_err(ApiError::internal)?
        .map_err(ApiError::kafka)
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(s): State<AdminState>) -> Response {
    if *s.ready.borrow() {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "not_ready",
            "the registry is not loaded or the ingest is not running yet",
        )
        .into_response()
    }
}

/// Prometheus text exposition of the process's metrics.
async fn metrics(State(s): State<AdminState>) -> Response {
    match &s.metrics {
        Some(handle) => {
            handle.run_upkeep();
            (
                [(
                    axum::http::header::CONTENT_TYPE,
                    "text/plain; version=0.0.4; charset=utf-8",
                )],
                handle.render(),
            )
                .into_response()
        }
        None => {
            ApiError::not_found("metrics_off", "this process exports no metrics").into_response()
        }
    }
}

// ---- topics ----

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RegisterTopic {
    name: String,
}

/// A registered topic.
#[derive(Debug, Serialize)]
pub struct TopicView {
    pub name: String,
    pub created_at_ms: i64,
    pub subscriptions: Vec<String>,
}

fn topic_view(s: &Shard, t: &TopicSpec) -> TopicView {
    TopicView {
        name: t.name.to_string(),
        created_at_ms: t.created_at_ms,
        subscriptions: s.with_registry(|r| {
            r.subscriptions_of(&t.name)
                .map(|s| s.name.to_string())
                .collect()
        }),
    }
}

fn topic_param(raw: &str) -> Result<TopicName, ApiError> {
    TopicName::new(raw).map_err(|e| ApiError::invalid("topic", e.to_string()))
}

fn registered(s: &Shard, topic: &TopicName) -> Result<TopicSpec, ApiError> {
    s.with_registry(|r| r.topic(topic).cloned()).ok_or_else(|| {
        ApiError::not_found(
            "topic_not_registered",
            format!("topic {topic:?} is not registered"),
        )
    })
}

async fn list_topics(State(s): State<AdminState>) -> Json<Vec<TopicView>> {
    let topics: Vec<TopicSpec> = s.shard.with_registry(|r| r.topics().cloned().collect());
    Json(topics.iter().map(|t| topic_view(&s.shard, t)).collect())
}

async fn get_topic(
    State(s): State<AdminState>,
    Path(topic): Path<String>,
) -> Result<Json<TopicView>, ApiError> {
    let topic = topic_param(&topic)?;
    let spec = registered(&s.shard, &topic)?;
    Ok(Json(topic_view(&s.shard, &spec)))
}

async fn register_topic(
    State(s): State<AdminState>,
    Body(req): Body<RegisterTopic>,
) -> Result<(StatusCode, Json<TopicView>), ApiError> {
    let name = TopicName::new(&req.name).map_err(|e| ApiError::invalid("name", e.to_string()))?;
    let n = name.clone();
    let partitions = ask_kafka(&s, move |kafka| kafka.partitions(n.as_str())).await?;
    if partitions.is_none() {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "kafka_topic_not_found",
            format!("Kafka has no topic {name:?}; create it in Kafka first"),
        )
        .field("name"));
    }
    let _guard = s.writer.lock().await;
    if s.shard.with_registry(|r| r.topic(&name).is_some()) {
        return Err(ApiError::conflict(
            "topic_exists",
            format!("topic {name:?} is already registered"),
        ));
    }
    let spec = TopicSpec {
        name: name.clone(),
        created_at_ms: now_ms(),
    };
    let entry = Entry::Topic(spec.clone());
    s.writer
        .put(&entry.key(), Some(entry.encode()))
        .await
        .map_err(ApiError::store)?;
    Ok((StatusCode::CREATED, Json(topic_view(&s.shard, &spec))))
}

// ---- subscriptions ----

fn default_start() -> StartPosition {
    StartPosition::Latest
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateSubscription {
    name: String,
    /// `earliest` or `latest` (the default).
    #[serde(default = "default_start")]
    start: StartPosition,
    /// `partition` (the default), `key` or `none`.
    #[serde(default)]
    ordering: DeliveryOrder,
    /// Milliseconds a delivery may stay unacked before it is delivered again (default 30000).
    #[serde(default)]
    ack_timeout_ms: Option<u64>,
    /// Deliveries before a record goes to the dead-letter topic; 0 or absent: unlimited.
    #[serde(default)]
    max_attempts: Option<u32>,
    /// Kafka topic for records out of attempts (required with `max_attempts`).
    #[serde(default)]
    dead_letter_topic: Option<String>,
}

/// Longest ack timeout: one hour.
const MAX_ACK_TIMEOUT_MS: u64 = 3_600_000;
/// Most attempts a subscription may ask for.
const MAX_ATTEMPTS: u32 = 1_000;

impl CreateSubscription {
    /// The delivery policy asked for, checked (except that the dead-letter topic exists).
    fn policy(&self, topic: &TopicName) -> Result<DeliveryPolicy, ApiError> {
        let ack_timeout_ms = self.ack_timeout_ms.unwrap_or(DEFAULT_ACK_TIMEOUT_MS);
        if !(100..=MAX_ACK_TIMEOUT_MS).contains(&ack_timeout_ms) {
            return Err(ApiError::invalid(
                "ack_timeout_ms",
                format!("must be between 100 and {MAX_ACK_TIMEOUT_MS}, got {ack_timeout_ms}"),
            ));
        }
        let max_attempts = self.max_attempts.unwrap_or(0);
        if max_attempts > MAX_ATTEMPTS {
            return Err(ApiError::invalid(
                "max_attempts",
                format!("must be at most {MAX_ATTEMPTS} (0: unlimited), got {max_attempts}"),
            ));
        }
        let dead_letter_topic = match &self.dead_letter_topic {
            None => None,
            Some(t) => Some(
                TopicName::new(t)
                    .map_err(|e| ApiError::invalid("dead_letter_topic", e.to_string()))?,
            ),
        };
        match (&dead_letter_topic, max_attempts) {
            (None, 1..) => Err(ApiError::invalid(
                "dead_letter_topic",
                "required with max_attempts: records out of attempts must go somewhere",
            )),
            (Some(_), 0) => Err(ApiError::invalid(
                "max_attempts",
                "a dead_letter_topic needs max_attempts of at least 1",
            )),
            (Some(d), _) if d == topic => Err(ApiError::invalid(
                "dead_letter_topic",
                "must not be the subscription's own topic",
            )),
            _ => Ok(DeliveryPolicy {
                ordering: self.ordering,
                ack_timeout_ms,
                max_attempts,
                dead_letter_topic,
            }),
        }
    }
}

/// A subscription, with its live state on this shard.
#[derive(Debug, Serialize)]
pub struct SubscriptionView {
    pub topic: String,
    pub name: String,
    pub start: StartPosition,
    pub start_offsets: BTreeMap<Partition, Offset>,
    pub created_at_ms: i64,
    /// Ack timeout, attempts and dead-letter topic.
    pub delivery: DeliveryPolicy,
    /// Cursor per partition owned by this shard: everything below it is acked.
    pub cursors: BTreeMap<Partition, Offset>,
    /// Per partition, where a restart would resume: the cursor last written to Kafka.
    pub durable_cursors: BTreeMap<Partition, Offset>,
    /// Records delivered and not yet acked.
    pub unacked: usize,
    /// Streams connected to this shard.
    pub streams: usize,
    /// Per partition: records Kafka's retention deleted before this subscription acked
    /// them, since this shard started (also logged as errors when it happens).
    pub lost: BTreeMap<Partition, LossTotal>,
    /// Partitions this subscription reads through the catch-up path: it was too far behind
    /// for the shared window, so fanout reads Kafka again for it until it catches up.
    pub catching_up: Vec<Partition>,
}

/// This shard's memory for records, against its budgets.
#[derive(Debug, Serialize)]
pub struct ShardView {
    /// Bytes held by the shared windows of all owned partitions.
    pub window_bytes: usize,
    pub window_budget_bytes: usize,
    /// Bytes held by the private windows of subscriptions on the catch-up path.
    pub catch_up_bytes: usize,
    pub catch_up_budget_bytes: usize,
}

async fn get_shard(State(s): State<AdminState>) -> Json<ShardView> {
    let (window_bytes, window_budget_bytes) = s.shard.window_memory();
    let (catch_up_bytes, catch_up_budget_bytes) = s.shard.catch_up_memory();
    Json(ShardView {
        window_bytes,
        window_budget_bytes,
        catch_up_bytes,
        catch_up_budget_bytes,
    })
}

fn subscription_view(s: &Shard, spec: &SubscriptionSpec) -> SubscriptionView {
    let live = s.subscription(&spec.topic, &spec.name).ok();
    SubscriptionView {
        topic: spec.topic.to_string(),
        name: spec.name.to_string(),
        start: spec.start,
        start_offsets: spec.start_offsets.0.clone(),
        created_at_ms: spec.created_at_ms,
        delivery: spec.delivery.clone(),
        cursors: live
            .as_ref()
            .map(|(_, l)| l.cursors().into_iter().collect())
            .unwrap_or_default(),
        durable_cursors: s.durable_cursors(spec),
        unacked: live.as_ref().map_or(0, |(_, l)| l.unacked()),
        streams: live.as_ref().map_or(0, |(_, l)| l.stream_count()),
        catching_up: live
            .as_ref()
            .map(|(_, l)| l.catching_up())
            .unwrap_or_default(),
        lost: s.losses_of(&spec.key()),
    }
}

async fn list_subscriptions(
    State(s): State<AdminState>,
    Path(topic): Path<String>,
) -> Result<Json<Vec<SubscriptionView>>, ApiError> {
    let topic = topic_param(&topic)?;
    registered(&s.shard, &topic)?;
    let specs: Vec<SubscriptionSpec> = s
        .shard
        .with_registry(|r| r.subscriptions_of(&topic).cloned().collect());
    Ok(Json(
        specs
            .iter()
            .map(|spec| subscription_view(&s.shard, spec))
            .collect(),
    ))
}

async fn get_subscription(
    State(s): State<AdminState>,
    Path((topic, name)): Path<(String, String)>,
) -> Result<Json<SubscriptionView>, ApiError> {
    let topic = topic_param(&topic)?;
    let name =
        SubscriptionName::new(&name).map_err(|e| ApiError::invalid("name", e.to_string()))?;
    registered(&s.shard, &topic)?;
    let key = SubscriptionKey { topic, name };
    let spec = s
        .shard
        .with_registry(|r| r.subscription(&key).cloned())
        .ok_or_else(|| {
            ApiError::not_found(
                "subscription_not_found",
                format!(
                    "subscription {:?} does not exist on topic {:?}",
                    key.name, key.topic
                ),
            )
        })?;
    Ok(Json(subscription_view(&s.shard, &spec)))
}

async fn create_subscription(
    State(s): State<AdminState>,
    Path(topic): Path<String>,
    Body(req): Body<CreateSubscription>,
) -> Result<(StatusCode, Json<SubscriptionView>), ApiError> {
    let topic = topic_param(&topic)?;
    let name =
        SubscriptionName::new(&req.name).map_err(|e| ApiError::invalid("name", e.to_string()))?;
    registered(&s.shard, &topic)?;
    let delivery = req.policy(&topic)?;
    if let Some(dlq) = delivery.dead_letter_topic.clone() {
        let name = dlq.clone();
        let found = ask_kafka(&s, move |kafka| kafka.partitions(name.as_str())).await?;
        if found.is_none() {
            return Err(ApiError::invalid(
                "dead_letter_topic",
                format!("Kafka has no topic {dlq:?}; create it first"),
            ));
        }
    }
    let key = SubscriptionKey {
        topic: topic.clone(),
        name: name.clone(),
    };
    let _guard = s.writer.lock().await;
    if s.shard.with_registry(|r| r.subscription(&key).is_some()) {
        return Err(ApiError::conflict(
            "subscription_exists",
            format!("subscription {name:?} already exists on topic {topic:?}"),
        ));
    }
    // Resolve the start position now, so it means "as of creation" on every shard.
    let t = topic.clone();
    let start = req.start;
    let offsets = ask_kafka(&s, move |kafka| {
        let partitions = kafka.partitions(t.as_str())?.unwrap_or_default();
        kafka.watermarks(t.as_str(), &partitions)
    })
    .await?;
    if offsets.is_empty() {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "kafka_topic_not_found",
            format!("topic {topic:?} is registered but Kafka no longer has it"),
        ));
    }
    let start_offsets = StartOffsets(
        offsets
            .into_iter()
            .map(|(p, lo, hi)| {
                (
                    p,
                    match start {
                        StartPosition::Earliest => lo,
                        StartPosition::Latest => hi,
                    },
                )
            })
            .collect(),
    );
    let spec = SubscriptionSpec {
        topic,
        name,
        start,
        start_offsets,
        created_at_ms: now_ms(),
        delivery,
        paused: false,
        seeks: BTreeMap::new(),
    };
    let entry = Entry::Subscription(spec.clone());
    debug_assert_eq!(entry.key(), Key::Subscription(key));
    s.writer
        .put(&entry.key(), Some(entry.encode()))
        .await
        .map_err(ApiError::store)?;
    Ok((
        StatusCode::CREATED,
        Json(subscription_view(&s.shard, &spec)),
    ))
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}
