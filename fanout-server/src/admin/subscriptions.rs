//! Subscriptions: create, list, get, change settings, delete.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use fanout_core::model::{
    DEFAULT_ACK_TIMEOUT_MS, DeliveryOrder, DeliveryPolicy, Offset, Partition, StartOffsets,
    StartPosition, SubscriptionKey, TopicName,
};
use fanout_core::registry::{Entry, Key, SubscriptionSpec};
use fanout_core::shard::Shard;
use serde::{Deserialize, Deserializer, Serialize};
use utoipa::ToSchema;
use utoipa_axum::routes;

use super::error::Problem;
use super::routes::{Access, Route};

use super::schema::{self, LossTotal, PartitionSeek, RedrivePosition};
use super::{
    AdminState, ApiError, Body, PathParams, ask_kafka, existing, name_param, now_ms, registered,
    topic_param, write_access,
};

/// The subscription routes.
pub fn routes() -> Vec<Route> {
    vec![
        Route::new(Access::Viewer, routes!(list_subscriptions)),
        Route::new(Access::Admin, routes!(create_subscription)),
        Route::new(Access::Viewer, routes!(get_subscription)),
        Route::new(Access::Admin, routes!(update_subscription)),
        Route::new(Access::Admin, routes!(delete_subscription)),
    ]
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateSubscription {
    name: String,
    /// `earliest`, `latest` or `timestamp` (with `start_timestamp_ms`); absent: the topic's
    /// default start (`latest` unless registered otherwise).
    #[serde(default)]
    start: Option<schema::StartPosition>,
    /// With `start: timestamp`: the first record at or after this time (milliseconds since
    /// the Unix epoch) on each partition; the log end where there is none.
    #[serde(default)]
    start_timestamp_ms: Option<i64>,
    /// `partition` (the default), `key` or `none`.
    #[serde(default)]
    ordering: schema::DeliveryOrder,
    /// Milliseconds a delivery may stay unacked before it is delivered again (default 30000).
    #[serde(default)]
    ack_timeout_ms: Option<u64>,
    /// Deliveries before a record goes to the dead-letter topic; 0 or absent: unlimited.
    #[serde(default)]
    max_attempts: Option<u32>,
    /// Kafka topic for records out of attempts (required with `max_attempts`).
    #[serde(default)]
    dead_letter_topic: Option<String>,
    /// Most records a stream may have in flight, whatever it asks for (0 or absent: the
    /// server's limit).
    #[serde(default)]
    max_in_flight_records: Option<u32>,
}

/// Largest credits ceiling a subscription may set.
const MAX_IN_FLIGHT_CEILING: u32 = 1_000_000;

/// Longest ack timeout: one hour.
const MAX_ACK_TIMEOUT_MS: u64 = 3_600_000;
/// Most attempts a subscription may ask for.
const MAX_ATTEMPTS: u32 = 1_000;

/// Checks a delivery policy (except that the dead-letter topic exists in Kafka).
fn check_policy(
    topic: &TopicName,
    ordering: DeliveryOrder,
    ack_timeout_ms: u64,
    max_attempts: u32,
    dead_letter_topic: Option<&str>,
    max_in_flight_records: u32,
) -> Result<DeliveryPolicy, ApiError> {
    if max_in_flight_records > MAX_IN_FLIGHT_CEILING {
        return Err(ApiError::invalid(
            "max_in_flight_records",
            format!(
                "must be at most {MAX_IN_FLIGHT_CEILING} (0: the server's limit), got {max_in_flight_records}"
            ),
        ));
    }
    if !(100..=MAX_ACK_TIMEOUT_MS).contains(&ack_timeout_ms) {
        return Err(ApiError::invalid(
            "ack_timeout_ms",
            format!("must be between 100 and {MAX_ACK_TIMEOUT_MS}, got {ack_timeout_ms}"),
        ));
    }
    if max_attempts > MAX_ATTEMPTS {
        return Err(ApiError::invalid(
            "max_attempts",
            format!("must be at most {MAX_ATTEMPTS} (0: unlimited), got {max_attempts}"),
        ));
    }
    let dead_letter_topic = match dead_letter_topic {
        None => None,
        Some(t) => Some(
            TopicName::new(t).map_err(|e| ApiError::invalid("dead_letter_topic", e.to_string()))?,
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
            ordering,
            ack_timeout_ms,
            max_attempts,
            dead_letter_topic,
            max_in_flight_records,
            unknown: Default::default(),
        }),
    }
}

/// Checks that a dead-letter topic exists in Kafka.
async fn check_dead_letter_topic(s: &AdminState, policy: &DeliveryPolicy) -> Result<(), ApiError> {
    let Some(dlq) = policy.dead_letter_topic.clone() else {
        return Ok(());
    };
    let name = dlq.clone();
    let found = ask_kafka(s, move |kafka| kafka.partitions(name.as_str())).await?;
    if found.is_none() {
        return Err(ApiError::unprocessable(
            "kafka_topic_not_found",
            format!("Kafka has no topic {dlq:?}; create it first"),
        )
        .field("dead_letter_topic"));
    }
    Ok(())
}

/// A subscription, with its live state on this shard.
#[derive(Debug, Serialize, ToSchema)]
pub struct SubscriptionView {
    pub topic: String,
    pub name: String,
    pub start: schema::StartPosition,
    pub start_timestamp_ms: Option<i64>,
    pub start_offsets: BTreeMap<Partition, Offset>,
    pub created_at_ms: i64,
    /// Ordering, ack timeout, attempts and dead-letter topic.
    pub delivery: schema::DeliveryPolicy,
    /// Paused: nothing is delivered until resumed.
    pub paused: bool,
    /// Per partition, the last seek.
    pub seeks: BTreeMap<Partition, PartitionSeek>,
    /// Where the next dead-letter redrive starts.
    pub redrive: Option<RedrivePosition>,
    /// Cursor per partition owned by this shard: everything below it is acked.
    pub cursors: BTreeMap<Partition, Offset>,
    /// Per partition, where a restart would resume: the cursor last written to Kafka (or the
    /// start or seek it has not moved from).
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

pub fn subscription_view(s: &Shard, spec: &SubscriptionSpec) -> SubscriptionView {
    let live = s.subscription(&spec.topic, &spec.name).ok();
    SubscriptionView {
        topic: spec.topic.to_string(),
        name: spec.name.to_string(),
        start: spec.start.into(),
        start_timestamp_ms: spec.start_timestamp_ms,
        start_offsets: spec.start_offsets.0.clone(),
        created_at_ms: spec.created_at_ms,
        delivery: (&spec.delivery).into(),
        paused: spec.paused,
        seeks: schema::by_partition(&spec.seeks),
        redrive: spec.redrive.as_ref().map(RedrivePosition::from),
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
        lost: s
            .losses_of(&spec.key())
            .into_iter()
            .map(|(p, l)| (p, LossTotal::from(l)))
            .collect(),
    }
}

#[utoipa::path(
    get,
    path = "/v1/topics/{topic}/subscriptions",
    tag = "subscriptions",
    responses(
        (status = 200, description = "The topic's subscriptions", body = [SubscriptionView]),
    )
)]
pub async fn list_subscriptions(
    State(s): State<AdminState>,
    PathParams(topic): PathParams<String>,
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

#[utoipa::path(
    get,
    path = "/v1/topics/{topic}/subscriptions/{name}",
    tag = "subscriptions",
    responses(
        (status = 200, description = "The subscription", body = SubscriptionView),
    )
)]
pub async fn get_subscription(
    State(s): State<AdminState>,
    PathParams((topic, name)): PathParams<(String, String)>,
) -> Result<Json<SubscriptionView>, ApiError> {
    let spec = existing(&s.shard, &topic, &name)?;
    Ok(Json(subscription_view(&s.shard, &spec)))
}

#[utoipa::path(
    post,
    path = "/v1/topics/{topic}/subscriptions",
    tag = "subscriptions",
    request_body = CreateSubscription,
    responses(
        (status = 201, description = "Created", body = SubscriptionView),
        (status = 422, description = "Unreadable JSON body, or Kafka has no such dead-letter topic", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Exists already", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Kafka or the registry did not answer", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn create_subscription(
    State(s): State<AdminState>,
    PathParams(topic): PathParams<String>,
    Body(req): Body<CreateSubscription>,
) -> Result<(StatusCode, Json<SubscriptionView>), ApiError> {
    let topic = topic_param(&topic)?;
    let name = name_param(&req.name)?;
    registered(&s.shard, &topic)?;
    let delivery = check_policy(
        &topic,
        req.ordering.into(),
        req.ack_timeout_ms.unwrap_or(DEFAULT_ACK_TIMEOUT_MS),
        req.max_attempts.unwrap_or(0),
        req.dead_letter_topic.as_deref(),
        req.max_in_flight_records.unwrap_or(0),
    )?;
    let start = req
        .start
        .map(StartPosition::from)
        .or_else(|| {
            s.shard
                .with_registry(|r| r.topic(&topic).and_then(|t| t.default_start))
        })
        .unwrap_or(StartPosition::Latest);
    let start_timestamp_ms = match (start, req.start_timestamp_ms) {
        (StartPosition::Timestamp, Some(t)) if t >= 0 => Some(t),
        (StartPosition::Timestamp, Some(t)) => {
            return Err(ApiError::invalid(
                "start_timestamp_ms",
                format!("must be milliseconds since the Unix epoch, got {t}"),
            ));
        }
        (StartPosition::Timestamp, None) => {
            return Err(ApiError::invalid(
                "start_timestamp_ms",
                "required with start: timestamp",
            ));
        }
        (_, Some(_)) => {
            return Err(ApiError::invalid(
                "start_timestamp_ms",
                "goes with start: timestamp only",
            ));
        }
        (_, None) => None,
    };
    check_dead_letter_topic(&s, &delivery).await?;
    let key = SubscriptionKey {
        topic: topic.clone(),
        name: name.clone(),
    };
    let _guard = write_access(&s).await?;
    if s.shard.with_registry(|r| r.subscription(&key).is_some()) {
        return Err(ApiError::conflict(
            "subscription_exists",
            format!("subscription {name:?} already exists on topic {topic:?}"),
        ));
    }
    // Resolve the start position now, so it means "as of creation" on every shard.
    let t = topic.clone();
    let (offsets, by_time) = ask_kafka(&s, move |kafka| {
        let partitions = kafka.partitions(t.as_str())?.unwrap_or_default();
        let marks = kafka.watermarks(t.as_str(), &partitions)?;
        let by_time = match start_timestamp_ms {
            Some(ts) => kafka.offsets_for_time(t.as_str(), &partitions, ts)?,
            None => Vec::new(),
        };
        Ok((marks, by_time))
    })
    .await?;
    let by_time: BTreeMap<Partition, Option<Offset>> = by_time.into_iter().collect();
    if offsets.is_empty() {
        return Err(ApiError::conflict(
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
                        StartPosition::Timestamp => by_time
                            .get(&p)
                            .copied()
                            .flatten()
                            .unwrap_or(hi)
                            .clamp(lo, hi),
                    },
                )
            })
            .collect(),
    );
    let spec = SubscriptionSpec {
        topic,
        name,
        start,
        start_timestamp_ms,
        start_offsets,
        created_at_ms: now_ms(),
        delivery,
        paused: false,
        seeks: BTreeMap::new(),
        redrive: None,
        unknown: Default::default(),
    };
    let entry = Entry::Subscription(spec.clone());
    debug_assert_eq!(entry.key(), Key::Subscription(key));
    s.registry
        .put(&entry.key(), Some(entry.encode()))
        .await
        .map_err(ApiError::store)?;
    Ok((
        StatusCode::CREATED,
        Json(subscription_view(&s.shard, &spec)),
    ))
}

/// `null` (clear) told apart from absent (keep).
fn present<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

/// Settings to change; absent fields keep their value.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateSubscription {
    /// Cannot change: accepted only if equal to the current ordering.
    #[serde(default)]
    ordering: Option<schema::DeliveryOrder>,
    #[serde(default)]
    ack_timeout_ms: Option<u64>,
    #[serde(default)]
    max_attempts: Option<u32>,
    /// A topic name, or `null` to have none (then `max_attempts` must be 0).
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>)]
    dead_letter_topic: Option<Option<String>>,
    #[serde(default)]
    max_in_flight_records: Option<u32>,
}

/// Changes a subscription's delivery settings, live: they apply at once, to records in
/// flight too (a new ack timeout counts from their delivery).
#[utoipa::path(
    patch,
    path = "/v1/topics/{topic}/subscriptions/{name}",
    tag = "subscriptions",
    request_body = UpdateSubscription,
    responses(
        (status = 200, description = "Changed (or nothing to change)", body = SubscriptionView),
        (status = 422, description = "Unreadable JSON body, an ordering change, or Kafka has no such dead-letter topic", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Kafka or the registry did not answer", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn update_subscription(
    State(s): State<AdminState>,
    PathParams((topic, name)): PathParams<(String, String)>,
    Body(req): Body<UpdateSubscription>,
) -> Result<Json<SubscriptionView>, ApiError> {
    let _guard = write_access(&s).await?;
    let spec = existing(&s.shard, &topic, &name)?;
    let old = &spec.delivery;
    if let Some(o) = req.ordering.map(DeliveryOrder::from)
        && o != old.ordering
    {
        return Err(ApiError::unprocessable(
            "ordering_fixed",
            format!(
                "the ordering of a subscription cannot change (it is {:?}); create a new subscription",
                old.ordering
            ),
        )
        .field("ordering"));
    }
    let dead_letter_topic = match &req.dead_letter_topic {
        None => old
            .dead_letter_topic
            .as_ref()
            .map(|t| t.as_str().to_owned()),
        Some(t) => t.clone(),
    };
    let delivery = check_policy(
        &spec.topic,
        old.ordering,
        req.ack_timeout_ms.unwrap_or(old.ack_timeout_ms),
        req.max_attempts.unwrap_or(old.max_attempts),
        dead_letter_topic.as_deref(),
        req.max_in_flight_records
            .unwrap_or(old.max_in_flight_records),
    )?;
    // What a newer build stored in the policy stays.
    let delivery = DeliveryPolicy {
        unknown: old.unknown.clone(),
        ..delivery
    };
    if delivery == *old {
        return Ok(Json(subscription_view(&s.shard, &spec)));
    }
    if delivery.dead_letter_topic != old.dead_letter_topic {
        check_dead_letter_topic(&s, &delivery).await?;
    }
    let new = SubscriptionSpec { delivery, ..spec };
    write(&s, &new).await?;
    Ok(Json(subscription_view(&s.shard, &new)))
}

/// Deletes a subscription: its streams end, its cursors stop gating the shards' Kafka
/// commit from the next flush on.
#[utoipa::path(
    delete,
    path = "/v1/topics/{topic}/subscriptions/{name}",
    tag = "subscriptions",
    responses(
        (status = 204, description = "Deleted"),
        (status = 503, description = "Kafka or the registry did not answer", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn delete_subscription(
    State(s): State<AdminState>,
    PathParams((topic, name)): PathParams<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let _guard = write_access(&s).await?;
    let spec = existing(&s.shard, &topic, &name)?;
    s.registry
        .put(&Key::Subscription(spec.key()), None)
        .await
        .map_err(ApiError::store)?;
    Ok(StatusCode::NO_CONTENT)
}

/// Writes a changed subscription (the caller holds the write lock).
pub(super) async fn write(s: &AdminState, spec: &SubscriptionSpec) -> Result<(), ApiError> {
    let entry = Entry::Subscription(spec.clone());
    s.registry
        .put(&entry.key(), Some(entry.encode()))
        .await
        .map_err(ApiError::store)?;
    Ok(())
}
