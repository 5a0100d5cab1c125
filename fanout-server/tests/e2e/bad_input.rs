//! Bad input gets a precise error, changes nothing, and the server stays up.

use fanout_client::proto as pb;
use fanout_client::proto::fanout_client::FanoutClient;
use fanout_client::proto::subscribe_request::Kind;
use serde_json::json;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;

use crate::support::*;

fn open(topic: &str, sub: &str, credits: u32) -> pb::SubscribeRequest {
    pb::SubscribeRequest {
        kind: Some(Kind::Open(pb::Open {
            topic: topic.into(),
            subscription: sub.into(),
            max_in_flight_records: credits,
            max_in_flight_bytes: 0,
            client_id: "bad-input-test".into(),
        })),
    }
}

fn ack(partition: i32, first: i64, last: i64) -> pb::SubscribeRequest {
    pb::SubscribeRequest {
        kind: Some(Kind::Ack(pb::Ack {
            partitions: vec![pb::PartitionRanges {
                partition,
                ranges: vec![pb::OffsetRange { first, last }],
            }],
        })),
    }
}

/// Opens a raw stream with `first` as the first message.
async fn raw(
    grpc: &str,
    first: pb::SubscribeRequest,
) -> Result<
    (
        mpsc::Sender<pb::SubscribeRequest>,
        tonic::Streaming<pb::SubscribeResponse>,
    ),
    tonic::Status,
> {
    let mut client = FanoutClient::connect(grpc.to_owned()).await.unwrap();
    let (tx, rx) = mpsc::channel(8);
    tx.send(first).await.unwrap();
    let resp = client.subscribe(ReceiverStream::new(rx)).await?;
    Ok((tx, resp.into_inner()))
}

/// The status that ends a stream (after any records).
async fn end_status(stream: &mut tonic::Streaming<pb::SubscribeResponse>) -> tonic::Status {
    loop {
        match tokio::time::timeout(WAIT, stream.message())
            .await
            .expect("stream ends in time")
        {
            Ok(Some(_)) => continue,
            Ok(None) => panic!("stream ended without a status"),
            Err(s) => return s,
        }
    }
}

fn expect_err(r: Result<impl Sized, tonic::Status>, code: Code, text: &str) {
    match r {
        Ok(_) => panic!("expected {code:?} containing {text:?}, got success"),
        Err(s) => {
            assert_eq!(s.code(), code, "{s:?}");
            assert!(
                s.message().contains(text),
                "{:?} does not mention {text:?}",
                s.message()
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn grpc_bad_input_is_refused_precisely_and_changes_nothing() {
    let topic = name("bad");
    create_topic(&topic, 1).await;
    let server = TestServer::start(&name("c")).await;
    let admin = server.admin_api();
    admin.register(&topic).await;
    admin.subscribe(&topic, "s", "earliest").await;
    let records = produce(&topic, 0, 10).await;
    let g = &server.grpc;

    expect_err(
        raw(g, open("nope", "s", 10)).await,
        Code::NotFound,
        "topic \"nope\" is not registered",
    );
    expect_err(
        raw(g, open(&topic, "nope", 10)).await,
        Code::NotFound,
        "subscription \"nope\" does not exist",
    );
    expect_err(
        raw(g, ack(0, 0, 0)).await,
        Code::InvalidArgument,
        "first message must be `open`, got ack",
    );
    expect_err(
        raw(g, open(&topic, "s", 0)).await,
        Code::InvalidArgument,
        "at least 1",
    );
    expect_err(
        raw(g, open(&topic, "s", 1_000_000_000)).await,
        Code::InvalidArgument,
        "exceeds the server limit",
    );
    expect_err(
        raw(g, open("a/b", "s", 10)).await,
        Code::InvalidArgument,
        "bad topic",
    );
    expect_err(
        raw(g, pb::SubscribeRequest { kind: None }).await,
        Code::InvalidArgument,
        "empty message",
    );

    // A stream that acks what it never got is ended; the cursor does not move.
    let (tx, mut stream) = raw(g, open(&topic, "s", 100)).await.unwrap();
    let mut delivered = 0;
    while delivered < records.len() {
        if let Some(pb::subscribe_response::Kind::Batch(b)) =
            stream.message().await.unwrap().unwrap().kind
        {
            delivered += b.records.len();
        }
    }
    let before = admin.cursors(&topic, "s").await;
    tx.send(ack(0, 5, 50)).await.unwrap();
    let s = end_status(&mut stream).await;
    assert_eq!(s.code(), Code::InvalidArgument);
    assert!(
        s.message().contains("offset 10 was never delivered"),
        "{}",
        s.message()
    );
    assert_eq!(
        admin.cursors(&topic, "s").await,
        before,
        "a refused ack moved the cursor"
    );

    // Acks for another stream's records, and a second open, are refused too.
    let (tx1, mut s1) = raw(g, open(&topic, "s", 100)).await.unwrap();
    let mut got = 0;
    while got < records.len() {
        if let Some(pb::subscribe_response::Kind::Batch(b)) =
            s1.message().await.unwrap().unwrap().kind
        {
            got += b.records.len();
        }
    }
    let (tx2, mut s2) = raw(g, open(&topic, "s", 100)).await.unwrap();
    tx2.send(ack(0, 0, 0)).await.unwrap();
    let s = end_status(&mut s2).await;
    assert!(
        s.message().contains("in flight on another stream"),
        "{}",
        s.message()
    );
    tx1.send(open(&topic, "s", 10)).await.unwrap();
    let s = end_status(&mut s1).await;
    assert!(s.message().contains("already open"), "{}", s.message());
    assert_eq!(admin.cursors(&topic, "s").await, before);

    // The server is still up and a well-behaved subscriber gets everything.
    let mut sub = subscriber(g, &topic, "s", 100).await;
    let mut got = Received::default();
    receive_all(&mut sub, &records, &mut got).await;
    sub.close().await;
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn admin_bad_input_is_refused_precisely_and_changes_nothing() {
    let topic = name("adm");
    create_topic(&topic, 1).await;
    let server = TestServer::start(&name("c")).await;
    let admin = server.admin_api();

    let cases: Vec<(&str, serde_json::Value, u16, &str)> = vec![
        (
            "/v1/topics",
            json!({"name": "does-not-exist-in-kafka"}),
            422,
            "kafka_topic_not_found",
        ),
        ("/v1/topics", json!({"name": "a/b"}), 400, "invalid_field"),
        ("/v1/topics", json!({"name": ""}), 400, "invalid_field"),
        (
            "/v1/topics",
            json!({"name": "x".repeat(250)}),
            400,
            "invalid_field",
        ),
        (
            "/v1/topics",
            json!({"name": "__consumer_offsets"}),
            400,
            "invalid_field",
        ),
        (
            "/v1/topics",
            json!({"name": topic, "extra": 1}),
            422,
            "invalid_body",
        ),
        ("/v1/topics", json!({"name": 5}), 422, "invalid_body"),
        ("/v1/topics", json!([]), 422, "invalid_body"),
    ];
    for (path, body, status, code) in cases {
        let (s, b) = admin.post(path, body.clone()).await;
        assert_eq!(
            (s, b["code"].as_str()),
            (status, Some(code)),
            "{body} -> {b}"
        );
    }
    let (s, ct, b) = admin
        .post_raw("/v1/topics", "application/json", b"{\"name\":".to_vec())
        .await;
    assert_eq!((s, b["code"].as_str()), (400, Some("malformed_json")));
    assert_eq!(ct, "application/problem+json");
    let (s, _, b) = admin
        .post_raw("/v1/topics", "text/plain", b"{}".to_vec())
        .await;
    assert_eq!(
        (s, b["code"].as_str()),
        (415, Some("unsupported_media_type"))
    );
    let (s, _, b) = admin
        .post_raw("/v1/topics", "application/json", vec![b' '; 100_000])
        .await;
    assert_eq!((s, b["code"].as_str()), (413, Some("body_too_large")));
    let (s, b) = admin
        .post(
            &format!("/v1/topics/{topic}/subscriptions"),
            json!({"name": "s"}),
        )
        .await;
    assert_eq!((s, b["code"].as_str()), (404, Some("topic_not_registered")));
    let (s, b) = admin.get("/v1/topics").await;
    assert_eq!(
        (s, b),
        (200, json!([])),
        "nothing was registered by the refused calls"
    );

    admin.register(&topic).await;
    let (s, b) = admin.post("/v1/topics", json!({"name": topic})).await;
    assert_eq!((s, b["code"].as_str()), (409, Some("topic_exists")));
    let subs = format!("/v1/topics/{topic}/subscriptions");
    admin.subscribe(&topic, "s", "earliest").await;
    for (body, status, code) in [
        (json!({"name": "s"}), 409, "subscription_exists"),
        (
            json!({"name": "t", "start": "yesterday"}),
            422,
            "invalid_body",
        ),
        (json!({"name": "t x"}), 400, "invalid_field"),
        (
            json!({"name": "t", "ordering": "fifo"}),
            422,
            "invalid_body",
        ),
    ] {
        let (s, b) = admin.post(&subs, body.clone()).await;
        assert_eq!(
            (s, b["code"].as_str()),
            (status, Some(code)),
            "{body} -> {b}"
        );
    }
    let (s, b) = admin.get(&format!("{subs}/missing")).await;
    assert_eq!(
        (s, b["code"].as_str()),
        (404, Some("subscription_not_found"))
    );
    let (s, b) = admin.get(&subs).await;
    assert_eq!(s, 200);
    assert_eq!(
        b.as_array().map(Vec::len),
        Some(1),
        "only the one good subscription: {b}"
    );
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuses_to_start_on_a_wrong_internal_topic() {
    let cluster = name("c");
    // The registry topic exists but is not compacted.
    let admin = admin_client();
    let t = format!("__{cluster}_registry");
    let nt = rdkafka::admin::NewTopic::new(&t, 1, rdkafka::admin::TopicReplication::Fixed(1))
        .set("cleanup.policy", "delete");
    admin
        .create_topics([&nt], &rdkafka::admin::AdminOptions::new())
        .await
        .unwrap()[0]
        .as_ref()
        .unwrap();
    init_logs();
    let grpc = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let http = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let r = tokio::time::timeout(
        WAIT,
        fanout_server::app::run(
            config(&cluster),
            fanout_server::app::Listeners { grpc, admin: http },
            tokio_util::sync::CancellationToken::new(),
        ),
    )
    .await
    .expect("fails fast");
    let msg = r.expect_err("must refuse").to_string();
    assert!(
        msg.contains(&t) && msg.contains("cleanup.policy=\"delete\"") && msg.contains("compact"),
        "{msg}"
    );
}
