//! Component tests: the router in-process, over a shard whose registry writes apply at once
//! and a Kafka that is a table. Every endpoint, every bad input, and "a refused request
//! changes nothing".

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering as AtomicOrdering};

use axum::body::Body as HttpBody;
use axum::http::{Method, Request as HttpRequest, header};
use fanout_core::model::{Offset, Partition};
use fanout_core::registry::Key;
use fanout_core::shard::ShardLimits;
use futures::future::BoxFuture;
use rdkafka::types::RDKafkaErrorCode;
use serde_json::{Value, json};
use tokio::sync::{Mutex, watch};
use tower::ServiceExt;

use super::auth::constant_time_eq;
use super::*;
use crate::membership::ShardInfo;
use crate::store::StoreError;

const LIMITS: ShardLimits = ShardLimits::FOR_TESTS;

/// Applies registry writes straight to the shard, and keeps the last value written.
struct Applied {
    shard: Arc<Shard>,
    next: AtomicI64,
    last: parking_lot::Mutex<Option<Vec<u8>>>,
}

impl RegistryStore for Applied {
    fn sync(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async { Ok(()) })
    }

    fn put<'a>(
        &'a self,
        key: &'a Key,
        value: Option<Vec<u8>>,
    ) -> BoxFuture<'a, Result<i64, StoreError>> {
        Box::pin(async move {
            let offset = self.next.fetch_add(1, AtomicOrdering::SeqCst);
            self.shard
                .apply_registry(offset, key.encode().as_bytes(), value.as_deref())
                .expect("the admin API writes readable records");
            *self.last.lock() = value;
            Ok(offset)
        })
    }
}

/// Kafka as a table: topic → per partition (low, high). Timestamps are offsets here.
struct Table {
    topics: BTreeMap<&'static str, Vec<(Offset, Offset)>>,
    down: AtomicBool,
}

impl Table {
    fn check(&self) -> Result<(), KafkaError> {
        if self.down.load(AtomicOrdering::SeqCst) {
            return Err(KafkaError::MetadataFetch(
                RDKafkaErrorCode::BrokerTransportFailure,
            ));
        }
        Ok(())
    }
}

impl KafkaView for Table {
    fn ping(&self) -> Result<(), KafkaError> {
        self.check()
    }

    fn group_members(&self, _group: &str) -> Result<Vec<crate::membership::Member>, KafkaError> {
        self.check()?;
        Ok(Vec::new())
    }

    fn partitions(&self, topic: &str) -> Result<Option<Vec<Partition>>, KafkaError> {
        self.check()?;
        Ok(self
            .topics
            .get(topic)
            .map(|ps| (0..ps.len() as Partition).collect()))
    }

    fn watermarks(
        &self,
        topic: &str,
        partitions: &[Partition],
    ) -> Result<Vec<(Partition, Offset, Offset)>, KafkaError> {
        self.check()?;
        let ps = &self.topics[topic];
        Ok(partitions
            .iter()
            .map(|&p| (p, ps[p as usize].0, ps[p as usize].1))
            .collect())
    }

    fn offsets_for_time(
        &self,
        topic: &str,
        partitions: &[Partition],
        timestamp_ms: i64,
    ) -> Result<Vec<(Partition, Option<Offset>)>, KafkaError> {
        self.check()?;
        let ps = &self.topics[topic];
        Ok(partitions
            .iter()
            .map(|&p| {
                let (lo, hi) = ps[p as usize];
                (p, (timestamp_ms < hi).then_some(timestamp_ms.max(lo)))
            })
            .collect())
    }
}

/// Redrives by moving every dead-letter partition 5 offsets on, remembering what it was
/// asked.
#[derive(Default)]
struct FakeRedrive {
    asked: parking_lot::Mutex<Vec<crate::deadletter::RedriveRequest>>,
}

impl crate::deadletter::Redrive for FakeRedrive {
    fn redrive(
        &self,
        req: crate::deadletter::RedriveRequest,
    ) -> BoxFuture<'_, Result<crate::deadletter::RedriveOutcome, crate::deadletter::RedriveError>>
    {
        Box::pin(async move {
            let next = [0, 1]
                .into_iter()
                .map(|p| (p, req.from.get(&p).copied().unwrap_or(0) + 5))
                .collect();
            self.asked.lock().push(req);
            Ok(crate::deadletter::RedriveOutcome {
                scanned: 10,
                redriven: 4,
                next,
                complete: true,
                position_saved: false,
            })
        })
    }
}

struct Api {
    router: Router,
    shard: Arc<Shard>,
    store: Arc<Applied>,
    kafka: Arc<Table>,
    kafka_seen: Arc<parking_lot::Mutex<Option<std::time::Instant>>>,
    redrive: Arc<FakeRedrive>,
}

struct Reply {
    status: u16,
    content_type: String,
    body: Value,
    www_authenticate: Option<String>,
}

fn api_with_token(token: Option<&str>) -> Api {
    let shard = Arc::new(Shard::new(LIMITS));
    let kafka = Arc::new(Table {
        topics: BTreeMap::from([
            ("orders", vec![(0, 100), (10, 50)]),
            ("payments", vec![(0, 5)]),
            ("orders.dlq", vec![(0, 0)]),
        ]),
        down: AtomicBool::new(false),
    });
    let (_ready_tx, ready) = watch::channel(true);
    let kafka_seen: Arc<parking_lot::Mutex<Option<std::time::Instant>>> = Arc::default();
    let redrive = Arc::new(FakeRedrive::default());
    let store = Arc::new(Applied {
        shard: shard.clone(),
        next: AtomicI64::new(0),
        last: parking_lot::Mutex::new(None),
    });
    let state = AdminState {
        shard: shard.clone(),
        registry: store.clone(),
        write_lock: Arc::new(Mutex::new(())),
        kafka: kafka.clone(),
        ready,
        metrics: None,
        info: ShardInfo {
            id: "shard-0".into(),
            grpc_address: "127.0.0.1:50051".into(),
            admin_address: "127.0.0.1:8080".into(),
        },
        cluster: Arc::from("test"),
        token: token.map(Arc::from),
        kafka_seen: kafka_seen.clone(),
        redrive: redrive.clone(),
        redrive_lock: Arc::default(),
    };
    Api {
        router: router(state),
        shard,
        store,
        kafka,
        kafka_seen,
        redrive,
    }
}

fn api() -> Api {
    api_with_token(None)
}

impl Api {
    async fn raw(&self, method: Method, path: &str, body: Option<(&str, Vec<u8>)>) -> Reply {
        self.send(method, path, body, None).await
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<(&str, Vec<u8>)>,
        token: Option<&str>,
    ) -> Reply {
        let mut req = HttpRequest::builder().method(method).uri(path);
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        let req = match body {
            Some((ct, b)) => req.header("content-type", ct).body(HttpBody::from(b)),
            None => req.body(HttpBody::empty()),
        }
        .unwrap();
        let resp = self.router.clone().oneshot(req).await.unwrap();
        let status = resp.status().as_u16();
        let header = |name| {
            resp.headers()
                .get(name)
                .map(|v: &axum::http::HeaderValue| v.to_str().unwrap().to_owned())
        };
        let content_type = header(header::CONTENT_TYPE).unwrap_or_default();
        let www_authenticate = header(header::WWW_AUTHENTICATE);
        let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
            .await
            .unwrap();
        let body = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
        Reply {
            status,
            content_type,
            body,
            www_authenticate,
        }
    }

    async fn get(&self, path: &str) -> Reply {
        self.raw(Method::GET, path, None).await
    }

    async fn json(&self, method: Method, path: &str, body: Value) -> Reply {
        self.raw(
            method,
            path,
            Some(("application/json", serde_json::to_vec(&body).unwrap())),
        )
        .await
    }

    async fn post(&self, path: &str, body: Value) -> Reply {
        self.json(Method::POST, path, body).await
    }

    /// The registry, to check that a refused request changed nothing.
    fn registry(&self) -> String {
        self.shard.with_registry(|r| format!("{r:?}"))
    }

    /// Sends a request that must be refused with `status` and `code`, and change nothing.
    async fn refused(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
        status: u16,
        code: &str,
    ) -> Value {
        let before = self.registry();
        let reply = match body {
            Some(b) => self.json(method.clone(), path, b).await,
            None => self.raw(method.clone(), path, None).await,
        };
        assert_eq!(
            (reply.status, reply.body["code"].as_str()),
            (status, Some(code)),
            "{method} {path}: {}",
            reply.body
        );
        assert_eq!(reply.content_type, "application/problem+json");
        assert!(reply.body["detail"].as_str().is_some_and(|d| !d.is_empty()));
        assert_eq!(
            self.registry(),
            before,
            "{method} {path} changed the registry"
        );
        reply.body
    }

    async fn setup(&self) {
        assert_eq!(
            self.post("/v1/topics", json!({"name": "orders"}))
                .await
                .status,
            201
        );
        let r = self
            .post(
                "/v1/topics/orders/subscriptions",
                json!({"name": "billing", "start": "earliest"}),
            )
            .await;
        assert_eq!(r.status, 201, "{}", r.body);
    }
}

#[tokio::test]
async fn topics_register_list_get_and_unregister() {
    let api = api();
    let r = api.post("/v1/topics", json!({"name": "orders"})).await;
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(r.body["name"], "orders");
    assert_eq!(api.get("/v1/topics").await.body[0]["name"], "orders");
    assert_eq!(api.get("/v1/topics/orders").await.status, 200);
    api.refused(
        Method::POST,
        "/v1/topics",
        Some(json!({"name": "orders"})),
        409,
        "topic_exists",
    )
    .await;
    let e = api
        .refused(
            Method::POST,
            "/v1/topics",
            Some(json!({"name": "nope"})),
            422,
            "kafka_topic_not_found",
        )
        .await;
    assert_eq!(e["field"], "name");
    api.refused(
        Method::GET,
        "/v1/topics/nope",
        None,
        404,
        "topic_not_registered",
    )
    .await;

    // With a subscription: refused unless forced; forced takes the subscription with it.
    api.post(
        "/v1/topics/orders/subscriptions",
        json!({"name": "billing"}),
    )
    .await;
    api.refused(
        Method::DELETE,
        "/v1/topics/orders",
        None,
        409,
        "topic_has_subscriptions",
    )
    .await;
    api.refused(
        Method::DELETE,
        "/v1/topics/orders?force=maybe",
        None,
        400,
        "invalid_query",
    )
    .await;
    let r = api
        .raw(Method::DELETE, "/v1/topics/orders?force=true", None)
        .await;
    assert_eq!(r.status, 204);
    assert_eq!(api.get("/v1/topics").await.body, json!([]));
    assert!(api.shard.with_registry(|r| {
        r.subscriptions_of(&TopicName::new("orders").unwrap())
            .count()
            == 0
    }));
    api.refused(
        Method::DELETE,
        "/v1/topics/orders",
        None,
        404,
        "topic_not_registered",
    )
    .await;
}

#[tokio::test]
async fn bad_names_are_refused_precisely() {
    let api = api();
    api.setup().await;
    let long = "a".repeat(250);
    for bad in ["", long.as_str(), "a/b", "..", "has space", "ünïcode"] {
        let e = api
            .refused(
                Method::POST,
                "/v1/topics",
                Some(json!({"name": bad})),
                400,
                "invalid_field",
            )
            .await;
        assert_eq!(e["field"], "name", "{bad:?}");
        let e = api
            .refused(
                Method::POST,
                "/v1/topics/orders/subscriptions",
                Some(json!({"name": bad})),
                400,
                "invalid_field",
            )
            .await;
        assert_eq!(e["field"], "name", "{bad:?}");
    }
    // Kafka's internal topics are not fanout's to read.
    api.refused(
        Method::POST,
        "/v1/topics",
        Some(json!({"name": "__consumer_offsets"})),
        400,
        "invalid_field",
    )
    .await;
    for bad in ["has%20space", "%C3%BC", "..", "a%2Fb"] {
        api.refused(
            Method::GET,
            &format!("/v1/topics/{bad}"),
            None,
            400,
            "invalid_field",
        )
        .await;
        api.refused(
            Method::GET,
            &format!("/v1/topics/orders/subscriptions/{bad}"),
            None,
            400,
            "invalid_field",
        )
        .await;
    }
}

#[tokio::test]
async fn bad_bodies_are_refused_precisely() {
    let api = api();
    api.setup().await;
    let path = "/v1/topics/orders/subscriptions";
    let send = |body: &'static [u8], ct: &'static str| {
        let api = &api;
        async move {
            let before = api.registry();
            let r = api.raw(Method::POST, path, Some((ct, body.to_vec()))).await;
            assert_eq!(api.registry(), before);
            assert_eq!(r.content_type, "application/problem+json");
            (r.status, r.body["code"].as_str().unwrap().to_owned())
        }
    };
    assert_eq!(
        send(b"{\"name\": ", "application/json").await,
        (400, "malformed_json".into())
    );
    assert_eq!(
        send(b"{\"name\": \"x\"}", "text/plain").await,
        (415, "unsupported_media_type".into())
    );
    assert_eq!(
        send(b"{\"name\": \"x\", \"colour\": 1}", "application/json").await,
        (422, "invalid_body".into())
    );
    assert_eq!(
        send(b"{\"name\": 7}", "application/json").await,
        (422, "invalid_body".into())
    );
    assert_eq!(
        send(
            b"{\"name\": \"x\", \"start\": \"yesterday\"}",
            "application/json"
        )
        .await,
        (422, "invalid_body".into())
    );
    let nested: &'static [u8] = Box::leak(
        format!(
            "{{\"name\": {}1{}}}",
            "[".repeat(10_000),
            "]".repeat(10_000)
        )
        .into_bytes()
        .into_boxed_slice(),
    );
    // serde_json's recursion limit, before any allocation of that depth.
    assert_eq!(
        send(nested, "application/json").await,
        (422, "invalid_body".into())
    );
    let huge: &'static [u8] = Box::leak(
        format!("{{\"name\": \"{}\"}}", "a".repeat(MAX_BODY_BYTES + 1))
            .into_bytes()
            .into_boxed_slice(),
    );
    assert_eq!(
        send(huge, "application/json").await,
        (413, "body_too_large".into())
    );
    api.refused(Method::GET, "/v2/nothing", None, 404, "no_such_route")
        .await;
    api.refused(Method::PUT, "/v1/topics", None, 405, "method_not_allowed")
        .await;
    api.refused(Method::POST, "/healthz", None, 405, "method_not_allowed")
        .await;
    api.refused(Method::GET, "/v1/topics/%FF", None, 400, "invalid_path")
        .await;
}

#[tokio::test]
async fn subscriptions_create_get_update_and_delete() {
    let api = api();
    api.setup().await;
    let base = "/v1/topics/orders/subscriptions";
    api.refused(
        Method::POST,
        base,
        Some(json!({"name": "billing"})),
        409,
        "subscription_exists",
    )
    .await;
    api.refused(
        Method::POST,
        "/v1/topics/payments/subscriptions",
        Some(json!({"name": "x"})),
        404,
        "topic_not_registered",
    )
    .await;
    for (body, field) in [
        (json!({"name": "x", "ack_timeout_ms": 0}), "ack_timeout_ms"),
        (
            json!({"name": "x", "ack_timeout_ms": 3_600_001}),
            "ack_timeout_ms",
        ),
        (json!({"name": "x", "max_attempts": 3}), "dead_letter_topic"),
        (
            json!({"name": "x", "max_attempts": 100_000, "dead_letter_topic": "orders.dlq"}),
            "max_attempts",
        ),
        (
            json!({"name": "x", "dead_letter_topic": "orders.dlq"}),
            "max_attempts",
        ),
        (
            json!({"name": "x", "max_attempts": 3, "dead_letter_topic": "orders"}),
            "dead_letter_topic",
        ),
        (
            json!({"name": "x", "max_attempts": 3, "dead_letter_topic": "a b"}),
            "dead_letter_topic",
        ),
    ] {
        let e = api
            .refused(Method::POST, base, Some(body.clone()), 400, "invalid_field")
            .await;
        assert_eq!(e["field"], field, "{body}");
    }
    for body in [
        json!({"name": "x", "ack_timeout_ms": -1}),
        json!({"name": "x", "max_attempts": "3"}),
        json!({"name": "x", "ordering": "random"}),
    ] {
        api.refused(Method::POST, base, Some(body), 422, "invalid_body")
            .await;
    }
    let e = api
        .refused(
            Method::POST,
            base,
            Some(json!({"name": "x", "max_attempts": 3, "dead_letter_topic": "missing"})),
            422,
            "kafka_topic_not_found",
        )
        .await;
    assert_eq!(e["field"], "dead_letter_topic");

    let r = api.get(&format!("{base}/billing")).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body["start_offsets"], json!({"0": 0, "1": 10}));
    assert_eq!(r.body["paused"], false);
    assert_eq!(api.get(base).await.body.as_array().unwrap().len(), 1);
    api.refused(
        Method::GET,
        &format!("{base}/nobody"),
        None,
        404,
        "subscription_not_found",
    )
    .await;

    // Update: live settings change, the ordering does not.
    let sub = format!("{base}/billing");
    let r = api
        .json(
            Method::PATCH,
            &sub,
            json!({"ack_timeout_ms": 1000, "max_attempts": 5, "dead_letter_topic": "orders.dlq"}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["delivery"]["max_attempts"], 5);
    let (_, live) = api
        .shard
        .subscription(
            &TopicName::new("orders").unwrap(),
            &SubscriptionName::new("billing").unwrap(),
        )
        .unwrap();
    assert_eq!(live.spec().delivery.ack_timeout_ms, 1000);
    let e = api
        .refused(
            Method::PATCH,
            &sub,
            Some(json!({"ordering": "key"})),
            422,
            "ordering_fixed",
        )
        .await;
    assert_eq!(e["field"], "ordering");
    // Clearing the dead-letter topic while attempts are limited would lose records.
    api.refused(
        Method::PATCH,
        &sub,
        Some(json!({"dead_letter_topic": null})),
        400,
        "invalid_field",
    )
    .await;
    api.refused(
        Method::PATCH,
        &sub,
        Some(json!({"ack_timeout": 5})),
        422,
        "invalid_body",
    )
    .await;
    let r = api
        .json(
            Method::PATCH,
            &sub,
            json!({"max_attempts": 0, "dead_letter_topic": null}),
        )
        .await;
    assert_eq!(
        (r.status, &r.body["delivery"]["dead_letter_topic"]),
        (200, &Value::Null)
    );

    // Delete.
    assert_eq!(api.raw(Method::DELETE, &sub, None).await.status, 204);
    api.refused(Method::GET, &sub, None, 404, "subscription_not_found")
        .await;
    api.refused(Method::DELETE, &sub, None, 404, "subscription_not_found")
        .await;
    assert!(live.is_removed(), "its streams end");
}

#[tokio::test]
async fn seeks_resolve_validate_and_move_live_cursors() {
    let api = api();
    api.setup().await;
    let topic = TopicName::new("orders").unwrap();
    api.shard.assign(&topic, 0, 0, 100);
    let seek = "/v1/topics/orders/subscriptions/billing/seek";
    let (_, live) = api
        .shard
        .subscription(&topic, &SubscriptionName::new("billing").unwrap())
        .unwrap();
    assert_eq!(live.cursors(), vec![(0, 0)]);

    for (body, status, code, field) in [
        (json!({}), 400, "invalid_field", Some("to")),
        (
            json!({"to": "earliest", "timestamp_ms": 5}),
            400,
            "invalid_field",
            Some("to"),
        ),
        (
            json!({"offsets": {}}),
            400,
            "invalid_field",
            Some("offsets"),
        ),
        (
            json!({"offsets": {"x": 5}}),
            400,
            "invalid_field",
            Some("offsets.x"),
        ),
        (
            json!({"offsets": {"-1": 5}}),
            400,
            "invalid_field",
            Some("offsets.-1"),
        ),
        (
            json!({"offsets": {"01": 5}}),
            400,
            "invalid_field",
            Some("offsets.01"),
        ),
        (
            json!({"offsets": {"0": 101}}),
            422,
            "offset_out_of_range",
            Some("offsets.0"),
        ),
        (
            json!({"offsets": {"1": 9}}),
            422,
            "offset_out_of_range",
            Some("offsets.1"),
        ),
        (
            json!({"offsets": {"7": 1}}),
            422,
            "unknown_partition",
            Some("offsets.7"),
        ),
        (
            json!({"offsets": {"0": 1}, "partitions": [0]}),
            400,
            "invalid_field",
            Some("partitions"),
        ),
        (
            json!({"to": "latest", "partitions": []}),
            400,
            "invalid_field",
            Some("partitions"),
        ),
        (
            json!({"to": "latest", "partitions": [2]}),
            422,
            "unknown_partition",
            Some("partitions"),
        ),
        (
            json!({"timestamp_ms": -5}),
            400,
            "invalid_field",
            Some("timestamp_ms"),
        ),
        (json!({"to": "sideways"}), 422, "invalid_body", None),
        (json!({"to": "latest", "by": 3}), 422, "invalid_body", None),
    ] {
        let e = api
            .refused(Method::POST, seek, Some(body.clone()), status, code)
            .await;
        assert_eq!(e["field"].as_str(), field, "{body}");
    }
    api.refused(
        Method::POST,
        "/v1/topics/orders/subscriptions/nobody/seek",
        Some(json!({"to": "latest"})),
        404,
        "subscription_not_found",
    )
    .await;

    // Skip forward on partition 0 only; the live cursor moves at once.
    let r = api.post(seek, json!({"offsets": {"0": 60}})).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let first = r.body["seeks"]["0"]["generation"].as_u64().unwrap();
    assert_eq!(r.body["seeks"]["0"]["offset"], 60);
    assert_eq!(live.cursors(), vec![(0, 60)]);
    assert_eq!(r.body["durable_cursors"]["0"], 60);
    // By time (the table's timestamps are offsets), then to the log start.
    let r = api.post(seek, json!({"timestamp_ms": 30})).await;
    assert_eq!(
        (
            r.body["seeks"]["0"]["offset"].as_i64(),
            r.body["seeks"]["1"]["offset"].as_i64()
        ),
        (Some(30), Some(30))
    );
    let second = r.body["seeks"]["1"]["generation"].as_u64().unwrap();
    assert!(second > first, "each seek is a new generation");
    let r = api.post(seek, json!({"timestamp_ms": 10_000})).await;
    assert_eq!(
        r.body["seeks"]["1"]["offset"], 50,
        "nothing that recent: the log end"
    );
    let r = api
        .post(seek, json!({"to": "earliest", "partitions": [1]}))
        .await;
    assert_eq!(
        (
            r.body["seeks"]["0"]["offset"].as_i64(),
            r.body["seeks"]["1"]["offset"].as_i64()
        ),
        (Some(100), Some(10))
    );
    assert!(r.body["seeks"]["1"]["generation"].as_u64().unwrap() > second);
    assert_eq!(live.cursors(), vec![(0, 100)]);

    api.kafka.down.store(true, AtomicOrdering::SeqCst);
    api.refused(
        Method::POST,
        seek,
        Some(json!({"to": "latest"})),
        503,
        "kafka_unavailable",
    )
    .await;
}

#[tokio::test]
async fn pause_resume_lag_and_shards() {
    let api = api();
    api.setup().await;
    let topic = TopicName::new("orders").unwrap();
    api.shard.assign(&topic, 0, 0, 100);
    let sub = "/v1/topics/orders/subscriptions/billing";
    let r = api.post(&format!("{sub}/pause"), json!({})).await;
    assert_eq!((r.status, &r.body["paused"]), (200, &json!(true)));
    let (_, live) = api
        .shard
        .subscription(&topic, &SubscriptionName::new("billing").unwrap())
        .unwrap();
    assert!(live.is_paused());
    assert_eq!(
        api.post(&format!("{sub}/pause"), json!({})).await.status,
        200,
        "idempotent"
    );
    let r = api.raw(Method::POST, &format!("{sub}/resume"), None).await;
    assert_eq!((r.status, &r.body["paused"]), (200, &json!(false)));
    assert!(!live.is_paused());
    api.refused(
        Method::POST,
        "/v1/topics/orders/subscriptions/nobody/pause",
        None,
        404,
        "subscription_not_found",
    )
    .await;

    let r = api.get(&format!("{sub}/lag")).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["lag"], 100);
    let p = &r.body["partitions"][0];
    assert_eq!(
        (
            p["partition"].as_i64(),
            p["log_start"].as_i64(),
            p["log_end"].as_i64(),
            p["cursor"].as_i64(),
            p["lag"].as_i64()
        ),
        (Some(0), Some(0), Some(100), Some(0), Some(100))
    );
    assert_eq!(p["oldest_unacked_age_ms"], Value::Null);
    let all = api.get("/v1/lag").await;
    assert_eq!(all.body.as_array().unwrap().len(), 1);
    assert_eq!(all.body[0]["subscription"], "billing");

    let shards = api.get("/v1/shards").await;
    assert_eq!(shards.body[0]["id"], "shard-0");
    assert_eq!(shards.body[0]["partitions"], json!({"orders": [0]}));
    assert_eq!(api.get("/v1/shard").await.status, 200);

    api.kafka.down.store(true, AtomicOrdering::SeqCst);
    api.refused(
        Method::GET,
        &format!("{sub}/lag"),
        None,
        503,
        "kafka_unavailable",
    )
    .await;
}

/// Every `METHOD path` the router answers, read from the router itself: its paths from its
/// `Debug` form (axum lists them there), each asked with every method (a method the router
/// does not route at a path answers 405). The document browser's own paths are left out.
async fn routed(api: &Api) -> Vec<String> {
    let debug = format!("{:?}", api.router);
    let mut paths: Vec<&str> = debug
        .split('"')
        .filter(|p| p.starts_with('/') && !p.contains("__private__"))
        .filter(|p| *p != "/openapi.json" && !p.starts_with("/docs"))
        .collect();
    paths.sort_unstable();
    paths.dedup();
    let mut routed = Vec::new();
    for path in paths {
        let uri = path
            .replace("{topic}", "orders")
            .replace("{name}", "billing");
        for method in [
            Method::GET,
            Method::POST,
            Method::PUT,
            Method::PATCH,
            Method::DELETE,
        ] {
            let r = api.raw(method.clone(), &uri, None).await;
            if r.status != 405 && r.body["code"] != "no_such_route" {
                routed.push(format!("{method} {path}"));
            }
        }
    }
    routed.sort();
    routed
}

#[tokio::test]
async fn every_route_is_declared_once_with_its_role_and_documented() {
    let api = api();
    api.setup().await;
    let mut declared: Vec<String> = routes::all()
        .iter()
        .map(|r| format!("{} {}", r.method, r.path))
        .collect();
    declared.sort();
    let before = declared.len();
    declared.dedup();
    assert_eq!(declared.len(), before, "a route declared twice");
    // Nothing is routed that is not declared (a `.route()` beside the table), and every
    // declared route is routed.
    assert_eq!(routed(&api).await, declared);
    // Every declared route needs a role, but the probes.
    for r in routes::all() {
        let probe = ["/healthz", "/readyz", "/metrics"].contains(&r.path.as_str());
        assert_eq!(r.access == Access::Open, probe, "{r:?}");
        assert!(probe || r.path.starts_with("/v1/"), "{r:?}");
    }
    // The document lists exactly the declared routes, each with its role.
    let r = api.get("/openapi.json").await;
    assert_eq!(r.status, 200);
    let mut documented = Vec::new();
    for (path, item) in r.body["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            let role = op[ROLE_EXTENSION].as_str().unwrap_or("none");
            let open = ["/healthz", "/readyz", "/metrics"].contains(&path.as_str());
            let allowed: &[&str] = if open {
                &["open"]
            } else {
                &["viewer", "operator", "admin"]
            };
            assert!(allowed.contains(&role), "{method} {path}: role {role}");
            documented.push(format!("{} {path}", method.to_uppercase()));
        }
    }
    documented.sort();
    assert_eq!(documented, declared);
    let role = |path: &str, method: &str| r.body["paths"][path][method][ROLE_EXTENSION].clone();
    assert_eq!(role("/v1/topics", "get"), "viewer");
    assert_eq!(role("/v1/topics", "post"), "admin");
    let sub = "/v1/topics/{topic}/subscriptions/{name}";
    assert_eq!(role(&format!("{sub}/seek"), "post"), "operator");
    assert_eq!(role(sub, "patch"), "admin");
}

/// Every path of a declared route but the probes refuses a request without the token, or
/// with a wrong one (another token, a prefix of it, it with a byte more, another scheme),
/// whatever the method, before any handler runs: 401, and the registry is unchanged
/// (bodies that would write if they got through).
#[tokio::test]
async fn every_route_but_the_probes_refuses_a_missing_or_wrong_token_and_changes_nothing() {
    let token = "0123456789abcdef0123";
    let api = api_with_token(Some(token));
    for (path, body) in [
        ("/v1/topics", json!({"name": "orders"})),
        (
            "/v1/topics/orders/subscriptions",
            json!({"name": "billing", "start": "earliest"}),
        ),
    ] {
        let body = Some(("application/json", serde_json::to_vec(&body).unwrap()));
        let r = api.send(Method::POST, path, body, Some(token)).await;
        assert_eq!(r.status, 201, "{}", r.body);
    }
    let before = api.registry();
    let mut paths: Vec<String> = routes::all()
        .into_iter()
        .filter(|r| r.access != Access::Open)
        .map(|r| r.path)
        .collect();
    paths.sort();
    paths.dedup();
    let mut refused = 0;
    for path in &paths {
        let uri = path
            .replace("{topic}", "orders")
            .replace("{name}", "billing");
        let body = json!({"name": "other", "paused": true, "to": "latest", "max_attempts": 3});
        let body = serde_json::to_vec(&body).unwrap();
        // Every method, not only the routed ones: a 405 must not answer before the token.
        for method in [
            Method::GET,
            Method::POST,
            Method::PUT,
            Method::PATCH,
            Method::DELETE,
            Method::HEAD,
            Method::OPTIONS,
        ] {
            let authorizations = [
                None,
                Some("Bearer 0123456789abcdef0124".to_owned()),
                Some(format!("Bearer {}", &token[..10])),
                Some(format!("Basic {token}")),
                Some(format!("Bearer {token}x")),
            ];
            for authorization in authorizations {
                let mut req = HttpRequest::builder()
                    .method(method.clone())
                    .uri(&uri)
                    .header("content-type", "application/json");
                if let Some(a) = &authorization {
                    req = req.header("authorization", a);
                }
                let req = req.body(HttpBody::from(body.clone())).unwrap();
                let reply = api.router.clone().oneshot(req).await.unwrap();
                assert_eq!(
                    reply.status().as_u16(),
                    401,
                    "{method} {uri} with {authorization:?}"
                );
                refused += 1;
            }
        }
    }
    assert_eq!(paths.len(), 12, "the /v1 paths: {paths:?}");
    assert_eq!(refused, 12 * 7 * 5);
    assert_eq!(
        api.registry(),
        before,
        "a refused request changed the registry"
    );
    assert!(api.redrive.asked.lock().is_empty(), "a refused redrive ran");
}

#[tokio::test]
async fn the_openapi_document_describes_the_shared_responses_and_the_docs_render() {
    let api = api_with_token(Some("0123456789abcdef0123"));
    // Open: a tool needs the document before it has a token.
    let r = api.get("/openapi.json").await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.body["components"]["securitySchemes"]["bearer"]["scheme"],
        "bearer"
    );
    // The shared error responses follow each operation's shape.
    let statuses = |path: &str, method: &str| -> Vec<String> {
        r.body["paths"][path][method]["responses"]
            .as_object()
            .unwrap()
            .keys()
            .cloned()
            .collect()
    };
    assert_eq!(
        statuses("/v1/topics", "post"),
        ["201", "400", "401", "409", "413", "415", "422", "503"]
    );
    assert_eq!(statuses("/v1/topics", "get"), ["200", "401"]);
    assert_eq!(
        statuses("/v1/topics/{topic}/subscriptions/{name}/pause", "post"),
        ["200", "400", "401", "404", "503"]
    );
    assert_eq!(statuses("/healthz", "get"), ["200"]);
    let ui = api.get("/docs/").await;
    assert_eq!(ui.status, 200);
    assert!(
        ui.content_type.starts_with("text/html"),
        "{}",
        ui.content_type
    );
}

#[tokio::test]
async fn a_token_guards_the_api_but_not_the_probes() {
    let token = "0123456789abcdef0123";
    let api = api_with_token(Some(token));
    let r = api.get("/v1/topics").await;
    assert_eq!(
        (r.status, r.body["code"].as_str()),
        (401, Some("unauthenticated"))
    );
    assert_eq!(r.www_authenticate.as_deref(), Some("Bearer"));
    let r = api
        .send(
            Method::GET,
            "/v1/topics",
            None,
            Some("0123456789abcdef0124"),
        )
        .await;
    assert_eq!(
        (r.status, r.body["code"].as_str()),
        (401, Some("bad_token"))
    );
    let before = api.registry();
    let r = api
        .send(
            Method::POST,
            "/v1/topics",
            Some(("application/json", br#"{"name":"orders"}"#.to_vec())),
            None,
        )
        .await;
    assert_eq!(r.status, 401);
    assert_eq!(api.registry(), before);
    assert_eq!(
        api.send(Method::GET, "/v1/topics", None, Some(token))
            .await
            .status,
        200
    );
    assert_eq!(api.get("/healthz").await.status, 200);
    assert_eq!(api.get("/readyz").await.status, 200);
    // A Kafka blip does not make the shard unready (it answered a moment ago)...
    api.kafka.down.store(true, AtomicOrdering::SeqCst);
    let r = api.get("/readyz").await;
    assert_eq!((r.status, &r.body["kafka_reachable"]), (200, &json!(false)));
    // ...a Kafka that has not answered for a minute does.
    *api.kafka_seen.lock() = Some(std::time::Instant::now() - std::time::Duration::from_secs(61));
    let r = api.get("/readyz").await;
    assert_eq!(
        (r.status, r.body["code"].as_str()),
        (503, Some("not_ready"))
    );
    assert!(
        r.body["detail"].as_str().unwrap().contains("Kafka"),
        "{}",
        r.body
    );
    assert_eq!(api.get("/healthz").await.status, 200, "alive all the same");
    // The scheme is case-insensitive (RFC 9110).
    let req = HttpRequest::builder()
        .uri("/v1/topics")
        .header("authorization", format!("bearer {token}"))
        .body(HttpBody::empty())
        .unwrap();
    assert_eq!(api.router.clone().oneshot(req).await.unwrap().status(), 200);
    assert!(constant_time_eq(b"abc", b"abc"));
    assert!(!constant_time_eq(b"abc", b"abd"));
    assert!(!constant_time_eq(b"abc", b"abcd"));
}

#[tokio::test]
async fn redrive_needs_a_dead_letter_topic_and_goes_on_where_it_stopped() {
    let api = api();
    api.setup().await;
    let redrive = "/v1/topics/orders/subscriptions/billing/redrive";
    api.refused(
        Method::POST,
        redrive,
        Some(json!({})),
        409,
        "no_dead_letter_topic",
    )
    .await;
    let r = api
        .json(
            Method::PATCH,
            "/v1/topics/orders/subscriptions/billing",
            json!({"max_attempts": 2, "dead_letter_topic": "orders.dlq"}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    for body in [json!({"max_records": 0}), json!({"max_records": 100_001})] {
        let e = api
            .refused(Method::POST, redrive, Some(body), 400, "invalid_field")
            .await;
        assert_eq!(e["field"], "max_records");
    }
    api.refused(
        Method::POST,
        redrive,
        Some(json!({"max": 1})),
        422,
        "invalid_body",
    )
    .await;
    let r = api.post(redrive, json!({})).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        (r.body["redriven"].as_u64(), r.body["complete"].as_bool()),
        (Some(4), Some(true))
    );
    assert_eq!(r.body["position_saved"], true);
    let r = api.post(redrive, json!({"max_records": 50})).await;
    assert_eq!(r.body["next"], json!({"0": 10, "1": 10}));
    let asked = api.redrive.asked.lock().clone();
    assert_eq!(asked.len(), 2);
    assert!(
        asked[0].from.is_empty(),
        "the first redrive starts at the beginning"
    );
    assert_eq!(asked[1].from, BTreeMap::from([(0, 5), (1, 5)]));
    assert_eq!(
        (asked[1].max_records, asked[1].subscription.as_str()),
        (50, "billing")
    );
    let view = api.get("/v1/topics/orders/subscriptions/billing").await;
    assert_eq!(
        view.body["redrive"]["next"],
        json!({"0": 10, "1": 10}),
        "{}",
        view.body
    );
}

#[tokio::test]
async fn starts_default_per_topic_resolve_by_time_and_credits_have_a_ceiling() {
    let api = api();
    api.refused(
        Method::POST,
        "/v1/topics",
        Some(json!({"name": "orders", "default_start": "timestamp"})),
        400,
        "invalid_field",
    )
    .await;
    let r = api
        .post(
            "/v1/topics",
            json!({"name": "orders", "default_start": "earliest"}),
        )
        .await;
    assert_eq!(
        (r.status, &r.body["default_start"]),
        (201, &json!("earliest"))
    );
    let base = "/v1/topics/orders/subscriptions";
    let r = api.post(base, json!({"name": "a"})).await;
    assert_eq!(
        r.body["start_offsets"],
        json!({"0": 0, "1": 10}),
        "the topic's default"
    );
    let r = api
        .post(base, json!({"name": "b", "start": "latest"}))
        .await;
    assert_eq!(r.body["start_offsets"], json!({"0": 100, "1": 50}));
    // By time (the table's timestamps are offsets): the first record at or after it, the
    // log end where there is none.
    let r = api
        .post(
            base,
            json!({"name": "c", "start": "timestamp", "start_timestamp_ms": 30}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(r.body["start_offsets"], json!({"0": 30, "1": 30}));
    assert_eq!(r.body["start_timestamp_ms"], 30);
    let r = api
        .post(
            base,
            json!({"name": "d", "start": "timestamp", "start_timestamp_ms": 75}),
        )
        .await;
    assert_eq!(r.body["start_offsets"], json!({"0": 75, "1": 50}));
    for body in [
        json!({"name": "x", "start": "timestamp"}),
        json!({"name": "x", "start": "timestamp", "start_timestamp_ms": -1}),
        json!({"name": "x", "start": "latest", "start_timestamp_ms": 5}),
    ] {
        let e = api
            .refused(Method::POST, base, Some(body.clone()), 400, "invalid_field")
            .await;
        assert_eq!(e["field"], "start_timestamp_ms", "{body}");
    }
    // A ceiling on every stream's credits, set at creation or later.
    let e = api
        .refused(
            Method::POST,
            base,
            Some(json!({"name": "x", "max_in_flight_records": 2_000_000})),
            400,
            "invalid_field",
        )
        .await;
    assert_eq!(e["field"], "max_in_flight_records");
    let r = api
        .post(base, json!({"name": "e", "max_in_flight_records": 7}))
        .await;
    assert_eq!(r.body["delivery"]["max_in_flight_records"], 7);
    let r = api
        .json(
            Method::PATCH,
            &format!("{base}/e"),
            json!({"max_in_flight_records": 0}),
        )
        .await;
    // 0 (the server's limit) is not written.
    assert_eq!(r.body["delivery"]["max_in_flight_records"], Value::Null);
}

/// A shard of a newer build wrote fields this build does not know, at the top of a
/// subscription's record and inside its policy, seeks and redrive position. Every write of
/// this build (pause, a change of settings, resume, a seek of another partition) keeps them,
/// and the API does not show them.
#[tokio::test]
async fn fields_of_a_newer_build_survive_this_builds_writes() {
    let api = api();
    api.setup().await;
    let sub = "/v1/topics/orders/subscriptions/billing";
    let r = api
        .post(&format!("{sub}/seek"), json!({"offsets": {"1": 20}}))
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let key = SubscriptionKey {
        topic: TopicName::new("orders").unwrap(),
        name: SubscriptionName::new("billing").unwrap(),
    };
    let spec = api
        .shard
        .with_registry(|r| r.subscription(&key).cloned())
        .unwrap();
    let mut record: Value =
        serde_json::from_slice(&fanout_core::registry::Entry::Subscription(spec).encode()).unwrap();
    assert_eq!(record["version"], 1);
    record["sharing"] = json!({"group": "payments", "weight": 3});
    record["delivery"]["priority"] = json!("high");
    record["seeks"]["1"]["by"] = json!("on-call");
    record["redrive"] = json!({"dead_letter_topic": "orders.dlq", "next": {"0": 4}, "batch": 7});
    let offset = api.store.next.fetch_add(1, AtomicOrdering::SeqCst);
    api.shard
        .apply_registry(
            offset,
            Key::Subscription(key.clone()).encode().as_bytes(),
            Some(&serde_json::to_vec(&record).unwrap()),
        )
        .unwrap();
    let kept = |what: &str| {
        let written: Value =
            serde_json::from_slice(api.store.last.lock().as_deref().expect("a write")).unwrap();
        assert_eq!(written["sharing"], record["sharing"], "{what}: {written}");
        assert_eq!(written["delivery"]["priority"], "high", "{what}: {written}");
        assert_eq!(written["seeks"]["1"]["by"], "on-call", "{what}: {written}");
        assert_eq!(written["redrive"]["batch"], 7, "{what}: {written}");
        written
    };
    let r = api.post(&format!("{sub}/pause"), json!({})).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(kept("pause")["paused"], true);
    let r = api
        .json(Method::PATCH, sub, json!({"ack_timeout_ms": 5000}))
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(kept("settings")["delivery"]["ack_timeout_ms"], 5000);
    let r = api.post(&format!("{sub}/resume"), json!({})).await;
    assert_eq!(r.status, 200, "{}", r.body);
    kept("resume");
    let r = api
        .post(&format!("{sub}/seek"), json!({"offsets": {"0": 3}}))
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(kept("seek")["seeks"]["0"]["offset"], 3);
    // The API shows what this build knows.
    let view = api.get(sub).await.body;
    assert!(view.get("sharing").is_none(), "{view}");
    assert!(view["delivery"].get("priority").is_none(), "{view}");
    assert!(view["seeks"]["1"].get("by").is_none(), "{view}");
}
