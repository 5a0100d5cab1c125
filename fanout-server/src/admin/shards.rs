//! This shard (its memory against its budgets) and the cluster's shards (from Kafka's record
//! of the shard group).

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::State;
use fanout_core::model::Partition;
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::routes;

use super::routes::{Access, Route};
use super::{AdminState, ApiError, Problem, ask_kafka, schema};
use crate::membership;

/// The shard routes.
pub fn routes() -> Vec<Route> {
    vec![
        Route::new(Access::Viewer, routes!(get_shard)),
        Route::new(Access::Viewer, routes!(list_shards)),
    ]
}

/// This shard's memory for records, against its budgets.
#[derive(Debug, Serialize, ToSchema)]
pub struct ShardView {
    /// Bytes held by the shared windows of all owned partitions.
    pub window_bytes: usize,
    pub window_budget_bytes: usize,
    /// Bytes held by the catch-up windows of subscriptions behind the shared windows.
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
            let info = membership::parse_client_id(&s.cluster, &m.client_id)?;
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
