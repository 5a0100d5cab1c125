//! Topics: register, list, get, unregister.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};

use super::{AdminState, ApiError, Body, QueryParams, ask_kafka, now_ms, registered, topic_param};
use crate::model::TopicName;
use crate::registry::{Entry, Key, SubscriptionSpec, TopicSpec};
use crate::shard::Shard;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegisterTopic {
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

pub async fn list_topics(State(s): State<AdminState>) -> Json<Vec<TopicView>> {
    let topics: Vec<TopicSpec> = s.shard.with_registry(|r| r.topics().cloned().collect());
    Json(topics.iter().map(|t| topic_view(&s.shard, t)).collect())
}

pub async fn get_topic(
    State(s): State<AdminState>,
    Path(topic): Path<String>,
) -> Result<Json<TopicView>, ApiError> {
    let topic = topic_param(&topic)?;
    let spec = registered(&s.shard, &topic)?;
    Ok(Json(topic_view(&s.shard, &spec)))
}

pub async fn register_topic(
    State(s): State<AdminState>,
    Body(req): Body<RegisterTopic>,
) -> Result<(StatusCode, Json<TopicView>), ApiError> {
    let name = TopicName::new(&req.name).map_err(|e| ApiError::invalid("name", e.to_string()))?;
    let n = name.clone();
    let partitions = ask_kafka(&s, move |kafka| kafka.partitions(n.as_str())).await?;
    if partitions.is_none() {
        return Err(ApiError::unprocessable(
            "kafka_topic_not_found",
            format!("Kafka has no topic {name:?}; create it in Kafka first"),
        )
        .field("name"));
    }
    let _guard = s.write_lock.lock().await;
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
    s.registry
        .put(&entry.key(), Some(entry.encode()))
        .await
        .map_err(ApiError::store)?;
    Ok((StatusCode::CREATED, Json(topic_view(&s.shard, &spec))))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UnregisterQuery {
    /// Delete the topic's subscriptions too.
    #[serde(default)]
    force: bool,
}

/// Stops reading a topic. Refused while it has subscriptions, unless `force=true`, which
/// deletes them first (each one a registry write: if one fails, the ones before it are
/// deleted and the topic stays registered; the error says so and the call can be retried).
pub async fn unregister_topic(
    State(s): State<AdminState>,
    Path(topic): Path<String>,
    QueryParams(q): QueryParams<UnregisterQuery>,
) -> Result<StatusCode, ApiError> {
    let topic = topic_param(&topic)?;
    let _guard = s.write_lock.lock().await;
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
    s.registry
        .put(&Key::Topic(topic), None)
        .await
        .map_err(ApiError::store)?;
    Ok(StatusCode::NO_CONTENT)
}
