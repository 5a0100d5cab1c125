//! Operating subscriptions: lag, seek (replay and skip), pause and resume.

use std::collections::BTreeMap;
use std::time::Instant;

use axum::Json;
use axum::extract::State;
use fanout_core::model::{Offset, Partition, TopicName};
use fanout_core::registry::{PartitionSeek, SubscriptionSpec};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::routes;

use super::error::Problem;
use super::routes::{Access, Route};

use super::subscriptions::{SubscriptionView, subscription_view, write};
use super::{AdminState, ApiError, Body, PathParams, ask_kafka, existing, now_ms, write_access};

/// The routes that operate subscriptions (and the lag they are operated by).
pub fn routes() -> Vec<Route> {
    vec![
        Route::new(Access::Viewer, routes!(all_lag)),
        Route::new(Access::Viewer, routes!(subscription_lag)),
        Route::new(Access::Operator, routes!(seek)),
        Route::new(Access::Operator, routes!(pause)),
        Route::new(Access::Operator, routes!(resume)),
        Route::new(Access::Operator, routes!(redrive)),
    ]
}

/// One partition of a subscription on this shard.
#[derive(Debug, Serialize, ToSchema)]
pub struct PartitionLag {
    pub partition: Partition,
    /// Oldest offset Kafka still holds.
    pub log_start: Offset,
    /// Offset the next record produced will get (the high watermark).
    pub log_end: Offset,
    /// Everything below it is acked.
    pub cursor: Offset,
    /// `log_end - cursor`: offsets not acked yet (a few may be transaction markers).
    pub lag: i64,
    /// Records in flight on streams.
    pub in_flight: usize,
    /// Records delivered and not acked (in flight, waiting for redelivery, dead-lettering).
    pub unacked: usize,
    /// How long ago the oldest record now in flight was delivered, in milliseconds (derived
    /// from its ack deadline); absent when nothing is in flight. The "longest-running
    /// handler".
    pub oldest_unacked_age_ms: Option<u64>,
    /// Served from Kafka by the catch-up path (too far behind for the shared window).
    pub catching_up: bool,
}

/// A subscription's lag on this shard.
#[derive(Debug, Serialize, ToSchema)]
pub struct LagView {
    pub topic: String,
    pub subscription: String,
    pub paused: bool,
    /// Streams connected to this shard.
    pub streams: usize,
    /// Sum of the partitions' lag.
    pub lag: i64,
    /// Partitions owned by this shard.
    pub partitions: Vec<PartitionLag>,
}

/// The lag of subscriptions of one topic (watermarks asked once for all of them).
async fn lag_of(
    s: &AdminState,
    topic: &TopicName,
    specs: Vec<SubscriptionSpec>,
) -> Result<Vec<LagView>, ApiError> {
    let owned: Vec<Partition> = s
        .shard
        .topic(topic)
        .map(|t| t.owned_partitions().iter().map(|o| o.partition).collect())
        .unwrap_or_default();
    let t = topic.clone();
    let marks: BTreeMap<Partition, (Offset, Offset)> = if owned.is_empty() {
        BTreeMap::new()
    } else {
        ask_kafka(s, move |kafka| kafka.watermarks(t.as_str(), &owned))
            .await?
            .into_iter()
            .map(|(p, lo, hi)| (p, (lo, hi)))
            .collect()
    };
    let now = Instant::now();
    Ok(specs
        .into_iter()
        .map(|spec| {
            let live = s.shard.subscription(&spec.topic, &spec.name).ok();
            let timeout = std::time::Duration::from_millis(spec.delivery.ack_timeout_ms);
            let partitions: Vec<PartitionLag> = live
                .as_ref()
                .map(|(_, l)| l.partition_stats())
                .unwrap_or_default()
                .into_iter()
                .filter_map(|st| {
                    let &(log_start, log_end) = marks.get(&st.partition)?;
                    Some(PartitionLag {
                        partition: st.partition,
                        log_start,
                        log_end,
                        cursor: st.cursor,
                        lag: (log_end - st.cursor).max(0),
                        in_flight: st.in_flight,
                        unacked: st.unacked,
                        oldest_unacked_age_ms: st.oldest_deadline.map(|d| {
                            let left = d.saturating_duration_since(now);
                            u64::try_from(timeout.saturating_sub(left).as_millis())
                                .unwrap_or(u64::MAX)
                        }),
                        catching_up: st.catching_up,
                    })
                })
                .collect();
            LagView {
                topic: spec.topic.to_string(),
                subscription: spec.name.to_string(),
                paused: spec.paused,
                streams: live.as_ref().map_or(0, |(_, l)| l.stream_count()),
                lag: partitions.iter().map(|p| p.lag).sum(),
                partitions,
            }
        })
        .collect())
}

#[utoipa::path(
    get,
    path = "/v1/topics/{topic}/subscriptions/{name}/lag",
    tag = "operations",
    responses(
        (status = 200, description = "Lag per partition owned by this shard", body = LagView),
        (status = 503, description = "Kafka or the registry did not answer", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn subscription_lag(
    State(s): State<AdminState>,
    PathParams((topic, name)): PathParams<(String, String)>,
) -> Result<Json<LagView>, ApiError> {
    let spec = existing(&s.shard, &topic, &name)?;
    let topic = spec.topic.clone();
    let mut views = lag_of(&s, &topic, vec![spec]).await?;
    views
        .pop()
        .map(Json)
        .ok_or_else(|| ApiError::internal("no lag view"))
}

/// The lag of every subscription of every registered topic, on this shard.
#[utoipa::path(
    get,
    path = "/v1/lag",
    tag = "operations",
    responses(
        (status = 200, description = "Lag of every subscription on this shard", body = [LagView]),
        (status = 503, description = "Kafka or the registry did not answer", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn all_lag(State(s): State<AdminState>) -> Result<Json<Vec<LagView>>, ApiError> {
    let topics: Vec<(TopicName, Vec<SubscriptionSpec>)> = s.shard.with_registry(|r| {
        r.topics()
            .map(|t| {
                (
                    t.name.clone(),
                    r.subscriptions_of(&t.name).cloned().collect(),
                )
            })
            .collect()
    });
    let mut out = Vec::new();
    for (topic, specs) in topics {
        if !specs.is_empty() {
            out.extend(lag_of(&s, &topic, specs).await?);
        }
    }
    Ok(Json(out))
}

/// Where to move a subscription: exactly one of `to`, `timestamp_ms`, `offsets`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SeekRequest {
    /// `earliest` (the oldest record Kafka holds) or `latest` (skip everything so far).
    #[serde(default)]
    to: Option<SeekTo>,
    /// The first record at or after this time (milliseconds since the Unix epoch); the
    /// log end where there is none.
    #[serde(default)]
    timestamp_ms: Option<i64>,
    /// Explicit offsets per partition (`{"0": 1200, "3": 5000}`); other partitions stay.
    #[serde(default)]
    offsets: Option<BTreeMap<String, Offset>>,
    /// With `to` or `timestamp_ms`: only these partitions (default: all).
    #[serde(default)]
    partitions: Option<Vec<Partition>>,
}

#[derive(Debug, Clone, Copy, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum SeekTo {
    Earliest,
    Latest,
}

/// Moves a subscription's cursors (replay: back; skip: forward), live. Records in flight on
/// moved partitions are dropped and their streams end with UNAVAILABLE (subscribers
/// reconnect). Offsets must lie within what Kafka holds (`log_start ..= log_end`).
#[utoipa::path(
    post,
    path = "/v1/topics/{topic}/subscriptions/{name}/seek",
    tag = "operations",
    request_body = SeekRequest,
    responses(
        (status = 200, description = "Moved; the view shows the seeks", body = SubscriptionView),
        (status = 422, description = "Unreadable JSON body, an offset outside what Kafka holds, or no such partition", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Kafka or the registry did not answer", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn seek(
    State(s): State<AdminState>,
    PathParams((topic, name)): PathParams<(String, String)>,
    Body(req): Body<SeekRequest>,
) -> Result<Json<SubscriptionView>, ApiError> {
    let given = [
        req.to.is_some(),
        req.timestamp_ms.is_some(),
        req.offsets.is_some(),
    ];
    if given.iter().filter(|g| **g).count() != 1 {
        return Err(ApiError::invalid(
            "to",
            "give exactly one of to, timestamp_ms, offsets",
        ));
    }
    if req.offsets.is_some() && req.partitions.is_some() {
        return Err(ApiError::invalid(
            "partitions",
            "partitions goes with to or timestamp_ms; offsets names its partitions itself",
        ));
    }
    if let Some(t) = req.timestamp_ms
        && t < 0
    {
        return Err(ApiError::invalid(
            "timestamp_ms",
            format!("must be milliseconds since the Unix epoch, got {t}"),
        ));
    }
    let explicit: Option<BTreeMap<Partition, Offset>> = match &req.offsets {
        None => None,
        Some(m) if m.is_empty() => {
            return Err(ApiError::invalid("offsets", "name at least one partition"));
        }
        Some(m) => Some(
            m.iter()
                .map(|(k, &v)| match k.parse::<Partition>() {
                    // Only the plain form: "01" and "+1" would name partition 1 twice.
                    Ok(p) if p >= 0 && p.to_string() == *k => Ok((p, v)),
                    _ => Err(ApiError::invalid(
                        format!("offsets.{k}"),
                        format!("{k:?} is not a partition number"),
                    )),
                })
                .collect::<Result<_, _>>()?,
        ),
    };

    let _guard = write_access(&s).await?;
    let spec = existing(&s.shard, &topic, &name)?;
    let t = spec.topic.clone();
    let (marks, by_time) = {
        let timestamp = req.timestamp_ms;
        ask_kafka(&s, move |kafka| {
            let all = kafka.partitions(t.as_str())?.unwrap_or_default();
            let marks = kafka.watermarks(t.as_str(), &all)?;
            let by_time = match timestamp {
                Some(ts) => kafka.offsets_for_time(t.as_str(), &all, ts)?,
                None => Vec::new(),
            };
            Ok((marks, by_time))
        })
        .await?
    };
    let marks: BTreeMap<Partition, (Offset, Offset)> =
        marks.into_iter().map(|(p, lo, hi)| (p, (lo, hi))).collect();
    if marks.is_empty() {
        return Err(ApiError::conflict(
            "kafka_topic_not_found",
            format!("Kafka no longer has topic {:?}", spec.topic),
        ));
    }
    let unknown = |p: Partition| {
        ApiError::unprocessable(
            "unknown_partition",
            format!(
                "topic {:?} has partitions 0..{}, not {p}",
                spec.topic,
                marks.len()
            ),
        )
    };
    let targets: BTreeMap<Partition, Offset> = match explicit {
        Some(offsets) => {
            for (&p, &o) in &offsets {
                let &(lo, hi) = marks
                    .get(&p)
                    .ok_or_else(|| unknown(p).field(format!("offsets.{p}")))?;
                if !(lo..=hi).contains(&o) {
                    return Err(ApiError::unprocessable(
                        "offset_out_of_range",
                        format!("partition {p} holds offsets {lo}..={hi} (log start ..= log end); {o} is outside"),
                    )
                    .field(format!("offsets.{p}")));
                }
            }
            offsets
        }
        None => {
            let chosen: Vec<Partition> = match &req.partitions {
                Some(ps) if ps.is_empty() => {
                    return Err(ApiError::invalid(
                        "partitions",
                        "name at least one partition",
                    ));
                }
                Some(ps) => {
                    for &p in ps {
                        if !marks.contains_key(&p) {
                            return Err(unknown(p).field("partitions"));
                        }
                    }
                    ps.clone()
                }
                None => marks.keys().copied().collect(),
            };
            let by_time: BTreeMap<Partition, Option<Offset>> = by_time.into_iter().collect();
            chosen
                .into_iter()
                .map(|p| {
                    let (lo, hi) = marks[&p];
                    let o = match (req.to, req.timestamp_ms) {
                        (Some(SeekTo::Earliest), _) => lo,
                        (Some(SeekTo::Latest), _) => hi,
                        // Kafka answers with the first offset at or after the time; none
                        // that recent means the end.
                        _ => by_time
                            .get(&p)
                            .copied()
                            .flatten()
                            .unwrap_or(hi)
                            .clamp(lo, hi),
                    };
                    (p, o)
                })
                .collect()
        }
    };
    let at_ms = now_ms();
    let generation = (spec.last_seek() + 1).max(u64::try_from(at_ms).unwrap_or(0));
    let mut new = spec.clone();
    for (p, offset) in targets {
        new.seeks.insert(
            p,
            PartitionSeek {
                generation,
                offset,
                at_ms,
                unknown: Default::default(),
            },
        );
    }
    write(&s, &new).await?;
    tracing::info!(subscription = %new.key(), generation, seeks = ?new.seeks, "seek written");
    Ok(Json(subscription_view(&s.shard, &new)))
}

/// How many dead letters one redrive call reads at most.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RedriveBody {
    /// Dead letters to read in this call (1..=100000, default 10000); call again while
    /// `complete` is false.
    #[serde(default)]
    max_records: Option<usize>,
}

/// Publishes the subscription's records from its dead-letter topic back to its topic, for it
/// alone (header `fanout.redrive.for`: other subscriptions skip them), from where the last
/// redrive stopped. They are delivered again as new records (attempt 1) at new offsets of the
/// partitions they came from. At least once: after an error, a retry may publish some again.
#[utoipa::path(
    post,
    path = "/v1/topics/{topic}/subscriptions/{name}/redrive",
    tag = "operations",
    request_body = RedriveBody,
    responses(
        (status = 200, description = "What was read and published; call again while not complete", body = crate::deadletter::RedriveOutcome),
        (status = 409, description = "The subscription has no dead-letter topic, or Kafka lacks it", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Kafka or the registry did not answer", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn redrive(
    State(s): State<AdminState>,
    PathParams((topic, name)): PathParams<(String, String)>,
    Body(req): Body<RedriveBody>,
) -> Result<Json<crate::deadletter::RedriveOutcome>, ApiError> {
    let max_records = req.max_records.unwrap_or(10_000);
    if !(1..=100_000).contains(&max_records) {
        return Err(ApiError::invalid(
            "max_records",
            format!("must be between 1 and 100000, got {max_records}"),
        ));
    }
    // On a task of its own: a client that hangs up does not stop it half-way (between the
    // publishes and the position).
    let task = tokio::spawn(redrive_once(s.clone(), topic, name, max_records));
    task.await.map_err(ApiError::internal)?.map(Json)
}

async fn redrive_once(
    s: AdminState,
    topic: String,
    name: String,
    max_records: usize,
) -> Result<crate::deadletter::RedriveOutcome, ApiError> {
    // One redrive of this shard at a time; admin writes are not held up meanwhile.
    let _one = s.redrive_lock.lock().await;
    s.registry.sync().await.map_err(ApiError::store)?;
    let spec = existing(&s.shard, &topic, &name)?;
    let Some(dlq) = spec.delivery.dead_letter_topic.clone() else {
        return Err(ApiError::conflict(
            "no_dead_letter_topic",
            format!("subscription {:?} has no dead-letter topic", spec.name),
        ));
    };
    // A position in another dead-letter topic (it was changed) does not count.
    let position = |spec: &SubscriptionSpec| {
        spec.redrive
            .as_ref()
            .filter(|r| r.dead_letter_topic == dlq)
            .map(|r| r.next.clone())
            .unwrap_or_default()
    };
    let from = position(&spec);
    let mut out = s
        .redrive
        .redrive(crate::deadletter::RedriveRequest {
            topic: spec.topic.clone(),
            subscription: spec.name.clone(),
            incarnation: spec.created_at_ms,
            dead_letter_topic: dlq.clone(),
            from: from.clone(),
            max_records,
        })
        .await
        .map_err(|e| match e {
            crate::deadletter::RedriveError::NoTopic(t) => ApiError::conflict(
                "dead_letter_topic_missing",
                format!("Kafka has no topic {t:?} (the subscription's dead-letter topic)"),
            ),
            crate::deadletter::RedriveError::Kafka(e) => ApiError::kafka(e),
        })?;
    // The position goes onto the subscription as it is now, if it is still the same life,
    // with the same dead-letter topic, and nobody moved the position meanwhile.
    let _guard = write_access(&s).await?;
    let now = existing(&s.shard, &topic, &name)?;
    let same = now.created_at_ms == spec.created_at_ms
        && now.delivery.dead_letter_topic.as_ref() == Some(&dlq)
        && position(&now) == from;
    if !same {
        tracing::warn!(
            topic,
            subscription = name,
            "subscription changed during a redrive; position not saved"
        );
    } else if out.next != from {
        // Fields of a newer build on the position stay with it (same dead-letter topic).
        let unknown = now
            .redrive
            .as_ref()
            .filter(|r| r.dead_letter_topic == dlq)
            .map(|r| r.unknown.clone())
            .unwrap_or_default();
        let new = SubscriptionSpec {
            redrive: Some(fanout_core::registry::RedrivePosition {
                dead_letter_topic: dlq,
                next: out.next.clone(),
                unknown,
            }),
            ..now
        };
        write(&s, &new).await?;
    }
    out.position_saved = same;
    tracing::info!(
        topic,
        subscription = name,
        scanned = out.scanned,
        redriven = out.redriven,
        complete = out.complete,
        "dead letters redriven"
    );
    Ok(out)
}

async fn set_paused(
    s: &AdminState,
    topic: &str,
    name: &str,
    paused: bool,
) -> Result<Json<SubscriptionView>, ApiError> {
    let _guard = write_access(s).await?;
    let spec = existing(&s.shard, topic, name)?;
    if spec.paused == paused {
        return Ok(Json(subscription_view(&s.shard, &spec)));
    }
    let new = SubscriptionSpec { paused, ..spec };
    write(s, &new).await?;
    Ok(Json(subscription_view(&s.shard, &new)))
}

/// Stops deliveries (acks still count) until resumed. Idempotent.
#[utoipa::path(
    post,
    path = "/v1/topics/{topic}/subscriptions/{name}/pause",
    tag = "operations",
    responses(
        (status = 200, description = "Paused", body = SubscriptionView),
        (status = 503, description = "Kafka or the registry did not answer", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn pause(
    State(s): State<AdminState>,
    PathParams((topic, name)): PathParams<(String, String)>,
) -> Result<Json<SubscriptionView>, ApiError> {
    set_paused(&s, &topic, &name, true).await
}

/// Starts deliveries again. Idempotent.
#[utoipa::path(
    post,
    path = "/v1/topics/{topic}/subscriptions/{name}/resume",
    tag = "operations",
    responses(
        (status = 200, description = "Resumed", body = SubscriptionView),
        (status = 503, description = "Kafka or the registry did not answer", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn resume(
    State(s): State<AdminState>,
    PathParams((topic, name)): PathParams<(String, String)>,
) -> Result<Json<SubscriptionView>, ApiError> {
    set_paused(&s, &topic, &name, false).await
}
