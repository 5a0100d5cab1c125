//! Topics: register, list, get, unregister.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use fanout_core::model::{StartPosition, TopicName};
use fanout_core::registry::{Entry, Key, SubscriptionSpec, TopicSpec};
use fanout_core::shard::Shard;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::routes;

use super::error::Problem;
use super::routes::{Access, Route};

use super::schema;
use super::{
    AdminState, ApiError, Body, PathParams, QueryParams, ask_kafka, now_ms, registered,
    topic_param, write_access,
};

/// The topic routes.
pub fn routes() -> Vec<Route> {
    vec![
        Route::new(Access::Viewer, routes!(list_topics)),
        Route::new(Access::Admin, routes!(register_topic)),
        Route::new(Access::Viewer, routes!(get_topic)),
        Route::new(Access::Admin, routes!(unregister_topic)),
    ]
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RegisterTopic {
    name: String,
    /// Where new subscriptions of the topic start unless they say: `earliest` or `latest`
    /// (absent: `latest`).
    #[serde(default)]
    default_start: Option<schema::StartPosition>,
}

/// A registered topic.
#[derive(Debug, Serialize, ToSchema)]
pub struct TopicView {
    pub name: String,
    pub created_at_ms: i64,
    /// Where new subscriptions start unless they say.
    pub default_start: schema::StartPosition,
    pub subscriptions: Vec<String>,
}

fn topic_view(s: &Shard, t: &TopicSpec) -> TopicView {
    TopicView {
        name: t.name.to_string(),
        created_at_ms: t.created_at_ms,
        default_start: t.default_start.unwrap_or(StartPosition::Latest).into(),
        subscriptions: s.with_registry(|r| {
            r.subscriptions_of(&t.name)
                .map(|s| s.name.to_string())
                .collect()
        }),
    }
}

#[utoipa::path(
    get,
    path = "/v1/topics",
    tag = "topics",
    responses(
        (status = 200, description = "Registered topics", body = [TopicView]),

    )
)]
pub async fn list_topics(State(s): State<AdminState>) -> Json<Vec<TopicView>> {
    let topics: Vec<TopicSpec> = s.shard.with_registry(|r| r.topics().cloned().collect());
    Json(topics.iter().map(|t| topic_view(&s.shard, t)).collect())
}

#[utoipa::path(
    get,
    path = "/v1/topics/{topic}",
    tag = "topics",
    responses(
        (status = 200, description = "The topic", body = TopicView),
    )
)]
pub async fn get_topic(
    State(s): State<AdminState>,
    PathParams(topic): PathParams<String>,
) -> Result<Json<TopicView>, ApiError> {
    let topic = topic_param(&topic)?;
    let spec = registered(&s.shard, &topic)?;
    Ok(Json(topic_view(&s.shard, &spec)))
}

#[utoipa::path(
    post,
    path = "/v1/topics",
    tag = "topics",
    request_body = RegisterTopic,
    responses(
        (status = 201, description = "Registered", body = TopicView),
        (status = 422, description = "Unreadable JSON body, or Kafka has no such topic", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Already registered", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Kafka or the registry did not answer", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn register_topic(
    State(s): State<AdminState>,
    Body(req): Body<RegisterTopic>,
) -> Result<(StatusCode, Json<TopicView>), ApiError> {
    let name = TopicName::new(&req.name).map_err(|e| ApiError::invalid("name", e.to_string()))?;
    let default_start = req.default_start.map(StartPosition::from);
    if default_start == Some(StartPosition::Timestamp) {
        return Err(ApiError::invalid(
            "default_start",
            "a topic's default start is earliest or latest; a time is given per subscription",
        ));
    }
    let n = name.clone();
    let partitions = ask_kafka(&s, move |kafka| kafka.partitions(n.as_str())).await?;
    if partitions.is_none() {
        return Err(ApiError::unprocessable(
            "kafka_topic_not_found",
            format!("Kafka has no topic {name:?}; create it in Kafka first"),
        )
        .field("name"));
    }
    let _guard = write_access(&s).await?;
    if s.shard.with_registry(|r| r.topic(&name).is_some()) {
        return Err(ApiError::conflict(
            "topic_exists",
            format!("topic {name:?} is already registered"),
        ));
    }
    let spec = TopicSpec {
        name: name.clone(),
        created_at_ms: now_ms(),
        default_start,
        unknown: Default::default(),
    };
    let entry = Entry::Topic(spec.clone());
    s.registry
        .put(&entry.key(), Some(entry.encode()))
        .await
        .map_err(ApiError::store)?;
    Ok((StatusCode::CREATED, Json(topic_view(&s.shard, &spec))))
}

#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct UnregisterQuery {
    /// Delete the topic's subscriptions too.
    #[serde(default)]
    force: bool,
}

/// Stops reading a topic. Refused while it has subscriptions, unless `force=true`, which
/// deletes them first (each one a registry write: if one fails, the ones before it are
/// deleted and the topic stays registered; the error says so and the call can be retried).
#[utoipa::path(
    delete,
    path = "/v1/topics/{topic}",
    tag = "topics",
    params(UnregisterQuery),
    responses(
        (status = 204, description = "Unregistered"),
        (status = 409, description = "The topic has subscriptions (pass force=true)", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Kafka or the registry did not answer", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn unregister_topic(
    State(s): State<AdminState>,
    PathParams(topic): PathParams<String>,
    QueryParams(q): QueryParams<UnregisterQuery>,
) -> Result<StatusCode, ApiError> {
    let topic = topic_param(&topic)?;
    let _guard = write_access(&s).await?;
    registered(&s.shard, &topic)?;
    let subs: Vec<SubscriptionSpec> = s
        .shard
        .with_registry(|r| r.subscriptions_of(&topic).cloned().collect());
    if !subs.is_empty() && !q.force {
        let names: Vec<String> = subs.iter().map(|s| s.name.to_string()).collect();
        return Err(ApiError::conflict(
            "topic_has_subscriptions",
            format!(
                "topic {topic:?} has subscriptions ({}); delete them first, or pass force=true",
                names.join(", ")
            ),
        ));
    }
    for (i, sub) in subs.iter().enumerate() {
        if let Err(e) = s.registry.put(&Key::Subscription(sub.key()), None).await {
            let mut err = ApiError::store(e);
            err.detail = format!(
                "{}; {i} of {} subscriptions were deleted, the topic is still registered",
                err.detail,
                subs.len()
            );
            return Err(err);
        }
    }
    if let Err(e) = s.registry.put(&Key::Topic(topic), None).await {
        let mut err = ApiError::store(e);
        if !subs.is_empty() {
            err.detail = format!(
                "{}; its {} subscriptions were deleted before",
                err.detail,
                subs.len()
            );
        }
        return Err(err);
    }
    Ok(StatusCode::NO_CONTENT)
}
