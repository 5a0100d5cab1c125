//! Small in-process stand-ins: a fanout shard's gRPC service that serves one partition, and
//! an admin API that lists shards. Each records what it saw in a `watch` channel, so that
//! tests wait for events (with a deadline) instead of sleeping.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::get;
use axum::{Json, Router};
use bytes::Bytes;
use fanout_client::proto as pb;
use fanout_client::proto::fanout_server::{Fanout, FanoutServer};
use fanout_client::proto::subscribe_request::Kind;
use futures::Stream;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::{Code, Request, Response, Status, Streaming};

/// How long a test waits for anything.
pub const WAIT: Duration = Duration::from_secs(10);

/// An address nothing listens on (bound, then let go).
pub async fn free_addr() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap()
}

/// What a fake shard saw.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Seen {
    /// Streams opened.
    pub opens: usize,
    /// Streams open now (the client has not ended them).
    pub open_streams: usize,
    /// Acked (partition, offset)s.
    pub acked: BTreeSet<(i32, i64)>,
    /// Nacked (partition, offset)s.
    pub nacked: BTreeSet<(i32, i64)>,
}

/// `(partition, offset)` for each of `offsets`.
pub fn at(partition: i32, offsets: impl IntoIterator<Item = i64>) -> BTreeSet<(i32, i64)> {
    offsets.into_iter().map(|o| (partition, o)).collect()
}

/// A fanout shard that owns one partition: every stream opened to it gets, at once, offsets
/// `0..records` of that partition (keys `"k<offset mod 3>"`, values
/// `"<partition>:<offset>"`), or the refusal.
#[derive(Debug)]
pub struct FakeShard {
    /// Where it listens.
    pub addr: SocketAddr,
    /// `http://<addr>`.
    pub endpoint: String,
    seen: watch::Receiver<Seen>,
    /// The response side of every stream opened (weak: a stream ends when the fake drops it).
    streams: Streams,
    server: JoinHandle<()>,
}

type Streams = Arc<Mutex<Vec<mpsc::WeakSender<Result<pb::SubscribeResponse, Status>>>>>;

#[derive(Debug, Clone)]
struct Service {
    partition: i32,
    records: i64,
    refuse: Option<Code>,
    seen: Arc<watch::Sender<Seen>>,
    streams: Streams,
}

type Responses = Pin<Box<dyn Stream<Item = Result<pb::SubscribeResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Fanout for Service {
    type SubscribeStream = Responses;

    async fn subscribe(
        &self,
        request: Request<Streaming<pb::SubscribeRequest>>,
    ) -> Result<Response<Responses>, Status> {
        if let Some(code) = self.refuse {
            return Err(Status::new(code, "refused by the fake shard"));
        }
        let mut inbound = request.into_inner();
        let Some(Kind::Open(open)) = inbound.message().await?.and_then(|m| m.kind) else {
            return Err(Status::invalid_argument("the first message must be `open`"));
        };
        let (tx, rx) = mpsc::channel(4);
        let opened = pb::SubscribeResponse {
            kind: Some(pb::subscribe_response::Kind::Opened(pb::Opened {
                stream_id: "fake".into(),
                max_in_flight_records: open.max_in_flight_records,
                max_in_flight_bytes: open.max_in_flight_bytes,
            })),
        };
        let records = (0..self.records)
            .map(|offset| pb::Record {
                partition: self.partition,
                offset,
                key: Some(Bytes::from(format!("k{}", offset % 3))),
                value: Some(Bytes::from(format!("{}:{offset}", self.partition))),
                ..Default::default()
            })
            .collect::<Vec<_>>();
        let batch = pb::SubscribeResponse {
            kind: Some(pb::subscribe_response::Kind::Batch(pb::RecordBatch {
                topic: open.topic,
                attempts: vec![1; records.len()],
                records,
            })),
        };
        // The channel has room for both.
        let _ = tx.send(Ok(opened)).await;
        let _ = tx.send(Ok(batch)).await;
        self.streams.lock().unwrap().push(tx.downgrade());
        self.seen.send_modify(|s| {
            s.opens += 1;
            s.open_streams += 1;
        });
        let seen = self.seen.clone();
        tokio::spawn(async move {
            while let Ok(Some(m)) = inbound.message().await {
                let (ranges, nacked) = match m.kind {
                    Some(Kind::Ack(a)) => (a.partitions, false),
                    Some(Kind::Nack(n)) => (n.partitions, true),
                    _ => continue,
                };
                seen.send_modify(|s| {
                    for p in ranges {
                        for r in p.ranges {
                            let to = if nacked { &mut s.nacked } else { &mut s.acked };
                            to.extend(at(p.partition, r.first..=r.last));
                        }
                    }
                });
            }
            seen.send_modify(|s| s.open_streams -= 1);
            // Dropping `tx` ends the response stream: the client half-closed.
            drop(tx);
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

impl FakeShard {
    /// A shard of `partition` with `records` records, on a new port.
    pub async fn start(partition: i32, records: i64) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        Self::start_on(listener, partition, records, None)
    }

    /// A shard that refuses every stream with `code`.
    pub async fn refusing(code: Code) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        Self::start_on(listener, 0, 0, Some(code))
    }

    /// A shard on `listener`.
    pub fn start_on(
        listener: TcpListener,
        partition: i32,
        records: i64,
        refuse: Option<Code>,
    ) -> Self {
        let addr = listener.local_addr().unwrap();
        let (seen_tx, seen) = watch::channel(Seen::default());
        let streams = Streams::default();
        let service = Service {
            partition,
            records,
            refuse,
            seen: Arc::new(seen_tx),
            streams: streams.clone(),
        };
        let server = tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(FanoutServer::new(service))
                .serve_with_incoming(TcpListenerStream::new(listener))
                .await;
        });
        Self {
            addr,
            endpoint: format!("http://{addr}"),
            seen,
            streams,
            server,
        }
    }

    /// Ends every stream opened so far with UNAVAILABLE (as a shard shutting down does).
    pub fn end_streams(&self) {
        for tx in self
            .streams
            .lock()
            .unwrap()
            .drain(..)
            .filter_map(|tx| tx.upgrade())
        {
            let _ = tx.try_send(Err(Status::unavailable("the fake shard ends the stream")));
        }
    }

    /// What it saw so far.
    pub fn seen(&self) -> Seen {
        self.seen.borrow().clone()
    }

    /// Waits until what it saw satisfies `done`; panics after [`WAIT`].
    pub async fn wait_for(&self, what: &str, done: impl FnMut(&Seen) -> bool) -> Seen {
        let mut seen = self.seen.clone();
        match tokio::time::timeout(WAIT, seen.wait_for(done)).await {
            Ok(Ok(s)) => s.clone(),
            _ => panic!(
                "{}: timed out waiting for {what}; saw {:?}",
                self.endpoint,
                self.seen()
            ),
        }
    }
}

impl Drop for FakeShard {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// An admin API serving `GET /v1/shards` from a list the test changes.
#[derive(Debug)]
pub struct FakeAdmin {
    /// `http://<addr>`.
    pub url: String,
    state: Arc<AdminState>,
    /// Requests answered so far.
    requests: watch::Receiver<usize>,
    server: JoinHandle<()>,
}

#[derive(Debug)]
struct AdminState {
    /// The bearer token it requires, if any.
    token: Option<String>,
    /// What `/v1/shards` answers; `None`: a 503.
    shards: Mutex<Option<Value>>,
    requests: watch::Sender<usize>,
}

async fn list_shards(
    State(s): State<Arc<AdminState>>,
    headers: HeaderMap,
) -> (StatusCode, Json<Value>) {
    s.requests.send_modify(|n| *n += 1);
    if let Some(t) = &s.token {
        let given = headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        if given != Some(t.as_str()) {
            let problem = json!({"code": "unauthorized", "detail": "bearer token required"});
            return (StatusCode::UNAUTHORIZED, Json(problem));
        }
    }
    match s.shards.lock().unwrap().clone() {
        Some(v) => (StatusCode::OK, Json(v)),
        None => {
            let problem = json!({"code": "unavailable", "detail": "down for the test"});
            (StatusCode::SERVICE_UNAVAILABLE, Json(problem))
        }
    }
}

/// An entry of `/v1/shards` for `shard` (owning `partition` of topic `t`).
pub fn entry(shard: &FakeShard, partition: i32) -> Value {
    json!({
        "id": format!("shard-{partition}"),
        "grpc_address": shard.addr.to_string(),
        "admin_address": "127.0.0.1:1",
        "partitions": {"t": [partition]},
    })
}

impl FakeAdmin {
    /// Lists `shards`; requires `token` if given.
    pub async fn start(token: Option<&str>, shards: Value) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (requests_tx, requests) = watch::channel(0);
        let state = Arc::new(AdminState {
            token: token.map(str::to_owned),
            shards: Mutex::new(Some(shards)),
            requests: requests_tx,
        });
        let app = Router::new()
            .route("/v1/shards", get(list_shards))
            .with_state(state.clone());
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self {
            url: format!("http://{addr}"),
            state,
            requests,
            server,
        }
    }

    /// From now on, lists `shards` (`None`: answers 503).
    pub fn set(&self, shards: Option<Value>) {
        *self.state.shards.lock().unwrap() = shards;
    }

    /// Waits until it answered `n` more requests than so far; panics after [`WAIT`].
    pub async fn wait_requests(&self, n: usize) {
        let mut requests = self.requests.clone();
        let target = *requests.borrow() + n;
        let waited = tokio::time::timeout(WAIT, requests.wait_for(|r| *r >= target)).await;
        assert!(
            matches!(waited, Ok(Ok(_))),
            "timed out waiting for {n} requests"
        );
    }
}

impl Drop for FakeAdmin {
    fn drop(&mut self) {
        self.server.abort();
    }
}
