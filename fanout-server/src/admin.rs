//! The admin HTTP API (axum): register topics, manage subscriptions (create, change, pause,
//! seek, delete), see lag, and this shard's state.
//!
//! Every write goes to the registry topic and answers once this shard applied it
//! (read-your-writes). Errors are `application/problem+json` with a stable `code` and, when
//! one field is at fault, its name. Requests need `Authorization: Bearer <token>` unless the
//! server runs with `--admin-no-auth`; probes (`/healthz`, `/readyz`) and `/metrics` are open.
//! Every route is declared once, with the role it will require, in its file's `routes()`
//! (`admin/routes.rs`): the router and the OpenAPI document are built from those entries.

mod auth;
mod error;
mod extract;
mod openapi;
mod operate;
mod probes;
mod routes;
mod schema;
mod shards;
mod state;
mod subscriptions;
mod topics;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use axum::middleware;
use fanout_core::model::{SubscriptionKey, SubscriptionName, TopicName};
use fanout_core::registry::{SubscriptionSpec, TopicSpec};
use fanout_core::shard::Shard;
use rdkafka::error::KafkaError;
use utoipa_swagger_ui::SwaggerUi;

pub use error::{ApiError, Problem};
pub use extract::{Body, PathParams, QueryParams};
pub use openapi::document;
pub use operate::{LagView, PartitionLag};
pub use routes::{Access, ROLE_EXTENSION, Route};
pub use shards::{ShardEntry, ShardView};
pub use state::{AdminState, KafkaView, RegistryStore};
pub use subscriptions::SubscriptionView;
pub use topics::TopicView;

/// Largest request body accepted.
pub const MAX_BODY_BYTES: usize = 64 << 10;

/// The admin router: every declared route (`routes::all`), those that need a role behind the
/// bearer token; the OpenAPI document at `/openapi.json` and its browser at `/docs`.
pub fn router(state: AdminState) -> Router {
    let routes = routes::all();
    let doc = openapi::document(&routes);
    let (open, guarded): (Vec<Route>, Vec<Route>) =
        routes.into_iter().partition(|r| r.access == Access::Open);
    let route = |router: Router<AdminState>, r: Route| router.route(&r.path, r.handler);
    let api = guarded
        .into_iter()
        .fold(Router::new(), route)
        .fallback(|| async { ApiError::not_found("no_such_route", "no such endpoint") })
        .method_not_allowed_fallback(method_not_allowed)
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            auth::authenticate,
        ));
    open.into_iter()
        .fold(Router::new(), route)
        .merge(SwaggerUi::new("/docs").url("/openapi.json", doc))
        .merge(api)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this endpoint does not take that method (see /openapi.json)",
    )
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
