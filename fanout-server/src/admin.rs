//! The admin HTTP API (axum): register topics, manage subscriptions (create, change, pause,
//! seek, delete), see lag, and this shard's state.
//!
//! Every write goes to the registry topic and answers once this shard applied it
//! (read-your-writes). Errors are `application/problem+json` with a stable `code` and, when
//! one field is at fault, its name. Requests need `Authorization: Bearer <token>` unless the
//! server runs with `--admin-no-auth`; probes (`/healthz`, `/readyz`) and `/metrics` are open.

mod error;
mod operate;
mod schema;
mod subscriptions;
mod topics;

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::rejection::JsonRejection;
use axum::extract::{DefaultBodyLimit, FromRequest, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures::future::BoxFuture;
use metrics_exporter_prometheus::PrometheusHandle;
use rdkafka::error::KafkaError;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::{Mutex, watch};
use utoipa::{OpenApi, ToSchema};
use utoipa_swagger_ui::SwaggerUi;

pub use error::{ApiError, Problem};
use fanout_core::model::{Offset, Partition, SubscriptionKey, SubscriptionName, TopicName};
use fanout_core::registry::{Key, SubscriptionSpec, TopicSpec};
use fanout_core::shard::Shard;
pub use operate::{LagView, PartitionLag};
pub use subscriptions::SubscriptionView;
pub use topics::TopicView;

use crate::kafka;
use crate::membership::ShardInfo;
use crate::store::StoreError;
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
    /// Does a broker answer?
    fn ping(&self) -> Result<(), KafkaError>;
    /// The members of a consumer group, with their assignments.
    fn group_members(&self, group: &str) -> Result<Vec<crate::membership::Member>, KafkaError>;
    /// Per partition, the first offset at or after `timestamp_ms` (`None`: no such record).
    fn offsets_for_time(
        &self,
        topic: &str,
        partitions: &[Partition],
        timestamp_ms: i64,
    ) -> Result<Vec<(Partition, Option<Offset>)>, KafkaError>;
}

impl KafkaView for kafka::MetadataClient {
    fn group_members(&self, group: &str) -> Result<Vec<crate::membership::Member>, KafkaError> {
        crate::membership::members(self, group)
    }

    fn ping(&self) -> Result<(), KafkaError> {
        // Any answer will do (a topic error included): the broker is reachable.
        rdkafka::consumer::Consumer::fetch_metadata(
            self,
            Some("__consumer_offsets"),
            std::time::Duration::from_secs(2),
        )
        .map(drop)
    }

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

    fn offsets_for_time(
        &self,
        topic: &str,
        partitions: &[Partition],
        timestamp_ms: i64,
    ) -> Result<Vec<(Partition, Option<Offset>)>, KafkaError> {
        kafka::offsets_for_time(self, topic, partitions, timestamp_ms)
    }
}

/// Where registry writes go: the registry topic (or, in component tests, straight to the
/// shard). A write returns once this shard applied it.
pub trait RegistryStore: Send + Sync + 'static {
    /// Returns once this shard applied everything written so far.
    fn sync(&self) -> BoxFuture<'_, Result<(), StoreError>>;
    fn put<'a>(
        &'a self,
        key: &'a Key,
        value: Option<Vec<u8>>,
    ) -> BoxFuture<'a, Result<i64, StoreError>>;
}

impl RegistryStore for RegistryWriter {
    fn sync(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(RegistryWriter::sync(self))
    }

    fn put<'a>(
        &'a self,
        key: &'a Key,
        value: Option<Vec<u8>>,
    ) -> BoxFuture<'a, Result<i64, StoreError>> {
        Box::pin(RegistryWriter::put(self, key, value))
    }
}

/// Shared state of the admin handlers.
#[derive(Clone)]
pub struct AdminState {
    /// The applied registry and live delivery state.
    pub shard: Arc<Shard>,
    /// Writes registry records and waits for them to apply.
    pub registry: Arc<dyn RegistryStore>,
    /// Held while checking the registry and writing to it, so two calls of this process
    /// cannot both pass a check and then both write.
    pub write_lock: Arc<Mutex<()>>,
    /// Topic metadata and watermarks.
    pub kafka: Arc<dyn KafkaView>,
    /// True once the registry is loaded and the ingest runs.
    pub ready: watch::Receiver<bool>,
    /// Renders `/metrics` (absent: the process has no recorder of ours).
    pub metrics: Option<PrometheusHandle>,
    /// This shard's identity and addresses.
    pub info: ShardInfo,
    /// The cluster it belongs to (its shard group is named after it).
    pub cluster: Arc<str>,
    /// The bearer token requests must carry (`None`: no authentication, by configuration).
    pub token: Option<Arc<str>>,
    /// Redrives dead letters into their subscription.
    pub redrive: Arc<dyn crate::deadletter::Redrive>,
    /// One redrive at a time on this shard.
    pub redrive_lock: Arc<Mutex<()>>,
    /// When a Kafka broker last answered a readiness check.
    pub kafka_seen: Arc<parking_lot::Mutex<Option<std::time::Instant>>>,
}

/// How long Kafka may not answer before readiness fails: a short blip must not take every
/// shard out of its Services at once (they keep serving what they hold).
const KAFKA_READY_GRACE: std::time::Duration = std::time::Duration::from_secs(60);

impl std::fmt::Debug for AdminState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminState")
            .field("info", &self.info)
            .field("auth", &self.token.is_some())
            .finish_non_exhaustive()
    }
}

/// The OpenAPI document of the admin API (served at `/openapi.json`, browsable at `/docs`).
#[derive(OpenApi)]
#[openapi(
    info(
        title = "fanout admin API",
        description = "Register topics, manage subscriptions, see lag, replay and skip. Errors are application/problem+json with a stable code."
    ),
    paths(
        healthz,
        readyz,
        metrics,
        get_shard,
        list_shards,
        topics::list_topics,
        topics::register_topic,
        topics::get_topic,
        topics::unregister_topic,
        subscriptions::list_subscriptions,
        subscriptions::create_subscription,
        subscriptions::get_subscription,
        subscriptions::update_subscription,
        subscriptions::delete_subscription,
        operate::all_lag,
        operate::subscription_lag,
        operate::seek,
        operate::pause,
        operate::resume,
        operate::redrive,
    ),
    modifiers(&BearerAuth, &ProblemResponses),
    security(("bearer" = [])),
    tags(
        (name = "topics", description = "Kafka topics fanout reads"),
        (name = "subscriptions", description = "Who receives a topic's records, and how"),
        (name = "operations", description = "Lag, replay and skip, pause, dead-letter redrive"),
        (name = "shards", description = "This shard and the cluster"),
        (name = "probes", description = "Health, readiness, metrics (no token needed)"),
    )
)]
#[derive(Debug)]
pub struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        openapi
            .components
            .get_or_insert_default()
            .add_security_scheme(
                "bearer",
                SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
            );
    }
}

/// Adds what every `/v1` operation shares, from its shape: the `{topic}` and `{name}` path
/// parameters; the error responses 401 for all, 400 with a path, query or body, 404 under a
/// topic, 413/415/422 with a body. Handlers declare only their own (query parameters;
/// success, 409, 503, a 422 of their own).
struct ProblemResponses;

impl utoipa::Modify for ProblemResponses {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::path::{Operation, ParameterBuilder, ParameterIn};
        use utoipa::openapi::schema::{ObjectBuilder, Type};
        use utoipa::openapi::{ContentBuilder, Ref, Required, ResponseBuilder};
        // Path parameters, in path order, each described once here.
        fn path_params(op: &mut Operation, path: &str) {
            let named = [
                ("{topic}", "topic", "Registered topic"),
                ("{name}", "name", "Subscription name"),
            ];
            let params = op.parameters.get_or_insert_with(Vec::new);
            for (i, (_, name, what)) in named
                .iter()
                .filter(|(seg, ..)| path.contains(seg))
                .enumerate()
            {
                let exists = params
                    .iter()
                    .any(|p| matches!(p, utoipa::openapi::RefOr::T(p) if p.name == *name));
                if exists {
                    continue;
                }
                let param = ParameterBuilder::new()
                    .name(*name)
                    .parameter_in(ParameterIn::Path)
                    .description(Some(*what))
                    .required(Required::True)
                    .schema(Some(ObjectBuilder::new().schema_type(Type::String)))
                    .build();
                params.insert(i.min(params.len()), param.into());
            }
            if params.is_empty() {
                op.parameters = None;
            }
        }
        fn add(op: &mut Operation, status: &str, what: &str) {
            op.responses
                .responses
                .entry(status.to_owned())
                .or_insert_with(|| {
                    ResponseBuilder::new()
                        .description(what)
                        .content(
                            "application/problem+json",
                            ContentBuilder::new()
                                .schema(Some(Ref::from_schema_name("Problem")))
                                .build(),
                        )
                        .build()
                        .into()
                });
        }
        for (path, item) in openapi.paths.paths.iter_mut() {
            if !path.starts_with("/v1/") {
                continue;
            }
            let ops = [
                &mut item.get,
                &mut item.post,
                &mut item.patch,
                &mut item.put,
                &mut item.delete,
            ];
            for op in ops.into_iter().flatten() {
                path_params(op, path);
                let body = op.request_body.is_some();
                let params = op.parameters.as_ref().is_some_and(|p| !p.is_empty());
                add(op, "401", "Missing or wrong bearer token");
                if params || body {
                    add(op, "400", "A bad field, path or query");
                }
                if path.contains("{topic}") {
                    add(op, "404", "No such topic or subscription");
                }
                if body {
                    add(op, "413", "Body over 64 KiB");
                    add(op, "415", "Not JSON");
                    add(op, "422", "Unreadable JSON body");
                }
            }
        }
    }
}

/// The admin router.
pub fn router(state: AdminState) -> Router {
    let api = Router::new()
        .route("/v1/shard", get(get_shard))
        .route("/v1/shards", get(list_shards))
        .route("/v1/lag", get(operate::all_lag))
        .route(
            "/v1/topics",
            get(topics::list_topics).post(topics::register_topic),
        )
        .route(
            "/v1/topics/{topic}",
            get(topics::get_topic).delete(topics::unregister_topic),
        )
        .route(
            "/v1/topics/{topic}/subscriptions",
            get(subscriptions::list_subscriptions).post(subscriptions::create_subscription),
        )
        .route(
            "/v1/topics/{topic}/subscriptions/{name}",
            get(subscriptions::get_subscription)
                .patch(subscriptions::update_subscription)
                .delete(subscriptions::delete_subscription),
        )
        .route(
            "/v1/topics/{topic}/subscriptions/{name}/lag",
            get(operate::subscription_lag),
        )
        .route(
            "/v1/topics/{topic}/subscriptions/{name}/seek",
            post(operate::seek),
        )
        .route(
            "/v1/topics/{topic}/subscriptions/{name}/pause",
            post(operate::pause),
        )
        .route(
            "/v1/topics/{topic}/subscriptions/{name}/redrive",
            post(operate::redrive),
        )
        .route(
            "/v1/topics/{topic}/subscriptions/{name}/resume",
            post(operate::resume),
        )
        .fallback(|| async { ApiError::not_found("no_such_route", "no such endpoint") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "this endpoint does not take that method (see /openapi.json)",
            )
        })
        .route_layer(middleware::from_fn_with_state(state.clone(), authenticate));
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .merge(SwaggerUi::new("/docs").url("/openapi.json", ApiDoc::openapi()))
        .merge(api)
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "this endpoint does not take that method (see /openapi.json)",
            )
        })
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

/// Serves the admin API on `listener` until `stop`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AdminState,
    stop: tokio_util::sync::CancellationToken,
) -> std::io::Result<()> {
    axum::serve(listener, router(state))
        .with_graceful_shutdown(stop.cancelled_owned())
        .await
}

/// Refuses requests without the configured bearer token.
async fn authenticate(State(s): State<AdminState>, req: Request, next: Next) -> Response {
    let Some(token) = &s.token else {
        return next.run(req).await;
    };
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, token) = v.split_once(' ')?;
            scheme
                .eq_ignore_ascii_case("bearer")
                .then_some(token.trim())
        });
    match given {
        Some(g) if constant_time_eq(g.as_bytes(), token.as_bytes()) => next.run(req).await,
        Some(_) => ApiError::new(
            StatusCode::UNAUTHORIZED,
            "bad_token",
            "the bearer token is not the admin token",
        )
        .into_response(),
        None => {
            let mut r = ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthenticated",
                "send the admin token as `Authorization: Bearer <token>`",
            )
            .into_response();
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
            r
        }
    }
}

/// Compares without an early exit on the first differing byte (the length is not secret).
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
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

/// Query parameters whose rejections become problem documents.
#[derive(Debug)]
pub struct QueryParams<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> axum::extract::FromRequestParts<S> for QueryParams<T> {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, ApiError> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|q| QueryParams(q.0))
            .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid_query", e.body_text()))
    }
}

/// Path parameters whose rejections (bad percent-encoding, ...) become problem documents.
#[derive(Debug)]
pub struct PathParams<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> axum::extract::FromRequestParts<S>
    for PathParams<T>
{
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, ApiError> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|p| PathParams(p.0))
            .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid_path", e.body_text()))
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

/// Alive (the process answers); for liveness probes.
#[utoipa::path(get, path = "/healthz", tag = "probes", security(()),
    responses((status = 200, description = "Alive", body = String, content_type = "text/plain")))]
async fn healthz() -> &'static str {
    "ok\n"
}

/// What readiness checked.
#[derive(Debug, Serialize, ToSchema)]
struct Readiness {
    /// The registry is loaded, the ingest runs, and no shutdown has begun.
    started: bool,
    kafka_reachable: bool,
    /// The shard group assigned this shard its partitions (or nothing is registered).
    assigned: bool,
    owned_partitions: usize,
}

/// Ready to serve: started, the shard group assigned this shard its partitions, and a Kafka
/// broker answers (or answered within the last minute). 200 with what was checked, else 503
/// saying what is missing.
#[utoipa::path(get, path = "/readyz", tag = "probes", security(()),
    responses(
        (status = 200, description = "Ready", body = Readiness),
        (status = 503, description = "Not ready, and why", body = Problem, content_type = "application/problem+json"),
    ))]
async fn readyz(State(s): State<AdminState>) -> Response {
    let started = *s.ready.borrow();
    let kafka_reachable = ask_kafka(&s, |k| k.ping()).await.is_ok();
    let kafka_recent = {
        let mut seen = s.kafka_seen.lock();
        if kafka_reachable {
            *seen = Some(std::time::Instant::now());
        }
        seen.is_some_and(|t| t.elapsed() < KAFKA_READY_GRACE)
    };
    let r = Readiness {
        started,
        kafka_reachable,
        assigned: s.shard.has_assignment(),
        owned_partitions: s
            .shard
            .topics()
            .iter()
            .map(|t| t.owned_partitions().len())
            .sum(),
    };
    if r.started && kafka_recent && r.assigned {
        return (StatusCode::OK, Json(r)).into_response();
    }
    let missing: Vec<&str> = [
        (!r.started).then_some("not started (registry loading, or shutting down)"),
        (!kafka_recent).then_some("Kafka has not answered for a minute"),
        (!r.assigned).then_some("no partition assignment from the shard group yet"),
    ]
    .into_iter()
    .flatten()
    .collect();
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "not_ready",
        missing.join("; "),
    )
    .into_response()
}

/// Prometheus text exposition of the process's metrics.
#[utoipa::path(get, path = "/metrics", tag = "probes", security(()),
    responses(
        (status = 200, description = "Prometheus text format 0.0.4", body = String, content_type = "text/plain"),
        (status = 404, description = "No metrics recorder in this process", body = Problem, content_type = "application/problem+json"),
    ))]
async fn metrics(State(s): State<AdminState>) -> Response {
    match &s.metrics {
        Some(handle) => {
            crate::telemetry::metrics::observe(&s.shard);
            handle.run_upkeep();
            (
                [(
                    header::CONTENT_TYPE,
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

// ---- this shard ----

/// This shard's memory for records, against its budgets.
#[derive(Debug, Serialize, ToSchema)]
pub struct ShardView {
    /// Bytes held by the shared windows of all owned partitions.
    pub window_bytes: usize,
    pub window_budget_bytes: usize,
    /// Bytes held by the private windows of subscriptions on the catch-up path.
    pub catch_up_bytes: usize,
    pub catch_up_budget_bytes: usize,
}

#[utoipa::path(get, path = "/v1/shard", tag = "shards",
    responses(
        (status = 200, description = "This shard's memory against its budgets", body = ShardView),
    ))]
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

/// A shard and the partitions it owns.
#[derive(Debug, Serialize, ToSchema)]
pub struct ShardEntry {
    #[serde(flatten)]
    pub info: schema::ShardInfo,
    /// Owned partitions by topic.
    pub partitions: std::collections::BTreeMap<String, Vec<Partition>>,
}

/// The shards of the cluster, as the shard group's members in Kafka: each with its addresses
/// and the partitions Kafka assigned it (none while the group rebalances). The shard that
/// answers is always listed, even before it joined the group.
#[utoipa::path(get, path = "/v1/shards", tag = "shards",
    responses(
        (status = 200, description = "The shards and their partitions", body = [ShardEntry]),
        (status = 503, description = "Kafka did not answer", body = Problem),
    ))]
async fn list_shards(State(s): State<AdminState>) -> Result<Json<Vec<ShardEntry>>, ApiError> {
    let group = s.cluster.to_string();
    let members = ask_kafka(&s, move |k| k.group_members(&group)).await?;
    let mut shards: BTreeMap<String, ShardEntry> = members
        .into_iter()
        .filter_map(|m| {
            let info = crate::membership::parse_client_id(&s.cluster, &m.client_id)?;
            Some((
                info.id.clone(),
                ShardEntry {
                    info: (&info).into(),
                    partitions: m.assignment,
                },
            ))
        })
        .collect();
    shards
        .entry(s.info.id.clone())
        .or_insert_with(|| ShardEntry {
            info: (&s.info).into(),
            partitions: s
                .shard
                .topics()
                .iter()
                .map(|t| {
                    (
                        t.name.to_string(),
                        t.owned_partitions().iter().map(|o| o.partition).collect(),
                    )
                })
                .filter(|(_, ps): &(String, Vec<Partition>)| !ps.is_empty())
                .collect(),
        });
    Ok(Json(shards.into_values().collect()))
}

// ---- shared helpers ----

fn topic_param(raw: &str) -> Result<TopicName, ApiError> {
    TopicName::new(raw).map_err(|e| ApiError::invalid("topic", e.to_string()))
}

fn name_param(raw: &str) -> Result<SubscriptionName, ApiError> {
    SubscriptionName::new(raw).map_err(|e| ApiError::invalid("name", e.to_string()))
}

fn registered(s: &Shard, topic: &TopicName) -> Result<TopicSpec, ApiError> {
    s.with_registry(|r| r.topic(topic).cloned()).ok_or_else(|| {
        ApiError::not_found(
            "topic_not_registered",
            format!("topic {topic:?} is not registered"),
        )
    })
}

/// The subscription named by the path, as the registry has it.
fn existing(s: &Shard, topic: &str, name: &str) -> Result<SubscriptionSpec, ApiError> {
    let topic = topic_param(topic)?;
    let name = name_param(name)?;
    registered(s, &topic)?;
    let key = SubscriptionKey { topic, name };
    s.with_registry(|r| r.subscription(&key).cloned())
        .ok_or_else(|| {
            ApiError::not_found(
                "subscription_not_found",
                format!(
                    "subscription {:?} does not exist on topic {:?}",
                    key.name, key.topic
                ),
            )
        })
}

/// Takes the write lock and waits until this shard applied the whole registry: a
/// read-modify-write then starts from the latest state (writes of other shards, and earlier
/// writes of this one that timed out but landed).
async fn write_access(s: &AdminState) -> Result<tokio::sync::MutexGuard<'_, ()>, ApiError> {
    let guard = s.write_lock.lock().await;
    s.registry.sync().await.map_err(ApiError::store)?;
    Ok(guard)
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod api_md;
#[cfg(test)]
mod tests;
