//! Probes: liveness, readiness, and the Prometheus metrics. Open to anyone: a kubelet and a
//! scraper carry no token.

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::routes;

use super::routes::{Access, Route};
use super::{AdminState, ApiError, Problem, ask_kafka};

/// The probes' routes.
pub fn routes() -> Vec<Route> {
    vec![
        Route::new(Access::Open, routes!(healthz)),
        Route::new(Access::Open, routes!(readyz)),
        Route::new(Access::Open, routes!(metrics)),
    ]
}

/// How long Kafka may not answer before readiness fails: a short blip must not take every
/// shard out of its Services at once (they keep serving what they hold).
const KAFKA_READY_GRACE: std::time::Duration = std::time::Duration::from_secs(60);

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
