//! The on-call operations through the admin API, on real Kafka: replay, skip a poison
//! record, delete a subscription and see the shard group's Kafka commit move.

use std::collections::BTreeSet;

use serde_json::{Value, json};

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn seek_replays_and_skips_and_deleting_a_subscription_releases_the_commit() {
    let topic = name("ops");
    create_topic(&topic, 1).await;
    let cluster = name("c");
    let server = TestServer::start(&cluster).await;
    let admin = server.admin_api();
    admin.register(&topic).await;
    admin.subscribe(&topic, "main", "earliest").await;
    // Never reads: holds the shard group's commit at its start.
    admin.subscribe(&topic, "idle", "earliest").await;
    let sub_path = format!("/v1/topics/{topic}/subscriptions");
    let first = produce(&topic, 0, 300).await;
    let mut sub = subscriber(&server.grpc, &topic, "main", 500).await;
    let mut got = Received::default();
    receive_all(&mut sub, &first, &mut got).await;
    let cursor_at = |want: i64| {
        let admin = admin.clone();
        let topic = topic.clone();
        async move {
            eventually(&format!("main's cursor at {want}"), || async {
                (admin.cursors(&topic, "main").await.get(&0) == Some(&want)).then_some(())
            })
            .await
        }
    };
    cursor_at(300).await;

    // Replay: back 100 offsets; exactly those 100 come again.
    let (status, view) = admin
        .post(
            &format!("{sub_path}/main/seek"),
            json!({"offsets": {"0": 200}}),
        )
        .await;
    assert_eq!(status, 200, "{view}");
    assert_eq!(view["seeks"]["0"]["offset"], 200);
    let replay: BTreeSet<(i32, i64)> = (200..300).map(|o| (0, o)).collect();
    let mut again = Received::default();
    receive_all(&mut sub, &replay, &mut again).await;
    assert_eq!(again.unique, replay);
    assert_eq!(again.deliveries, 100, "nothing else, nothing twice");
    cursor_at(300).await;

    // A poison record: received, never acked; a seek past it skips it.
    produce(&topic, 300, 1).await;
    let poison = tokio::time::timeout(WAIT, sub.next())
        .await
        .expect("the poison record")
        .unwrap()
        .unwrap();
    assert_eq!(poison.offset, 300);
    let (status, view) = admin
        .post(
            &format!("{sub_path}/main/seek"),
            json!({"offsets": {"0": 301}}),
        )
        .await;
    assert_eq!(status, 200, "{view}");
    let after = produce(&topic, 301, 20).await;
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut rest = Received::default();
    while !after.is_subset(&rest.unique) {
        match tokio::time::timeout_at(deadline, sub.next())
            .await
            .expect("records after the poison one")
            .expect("subscriber ended")
        {
            Ok(r) => {
                assert_ne!(r.offset, 300, "the skipped record came again");
                note(&mut rest, &r);
                sub.ack(&r);
            }
            // The stream that had the poison record in flight was reset; the client
            // reconnects by itself.
            Err(e) => assert!(e.is_transient(), "{e}"),
        }
    }
    cursor_at(321).await;

    // Prometheus sees it all.
    let (status, _, text) = admin.get_text("/metrics").await;
    assert_eq!(status, 200);
    let value = |name: &str, sub: Option<&str>| -> f64 {
        let topic_label = format!("topic=\"{topic}\"");
        let sub_label = sub.map(|s| format!("subscription=\"{s}\""));
        let line = text
            .lines()
            .find(|l| {
                l.starts_with(&format!("{name}{{"))
                    && l.contains(&topic_label)
                    && sub_label.as_ref().is_none_or(|s| l.contains(s.as_str()))
            })
            .unwrap_or_else(|| panic!("no {name} for {sub:?} in:\n{text}"));
        line.rsplit(' ').next().unwrap().parse().unwrap()
    };
    assert!(value("fanout_records_ingested_total", None) >= 321.0);
    assert!(value("fanout_records_delivered_total", Some("main")) >= 421.0);
    assert!(value("fanout_records_acked_total", Some("main")) >= 420.0);
    assert_eq!(value("fanout_streams", Some("main")), 1.0);
    assert_eq!(value("fanout_lag_records", Some("main")), 0.0);
    assert_eq!(value("fanout_lag_records", Some("idle")), 321.0);
    assert_eq!(value("fanout_paused", Some("idle")), 0.0);
    assert!(text.contains("fanout_cursor_flush_seconds"), "{text}");

    // Deleting the idle subscription lets the commit go up to main's cursor.
    let group = cluster.clone();
    let t = topic.clone();
    eventually("the commit held at idle's start", || {
        let (g, t) = (group.clone(), t.clone());
        async move { (committed(&g, &t, 1).await.get(&0) == Some(&0)).then_some(()) }
    })
    .await;
    let (status, _) = admin.delete(&format!("{sub_path}/idle")).await;
    assert_eq!(status, 204);
    eventually("the commit at main's cursor", || {
        let (g, t) = (group.clone(), t.clone());
        async move { (committed(&g, &t, 1).await.get(&0) == Some(&321)).then_some(()) }
    })
    .await;
    sub.close().await;
    server.stop().await.unwrap();
}

/// Runs the `fanout` command line in-process against `server`.
async fn fanout(server: &TestServer, args: &[&str]) -> (bool, String) {
    let mut argv = vec!["fanout", "--admin", &server.admin, "--server", &server.grpc];
    argv.extend_from_slice(args);
    let mut out = Vec::new();
    let code = fanout_client::cli::run(argv, &mut out).await;
    let ok = format!("{code:?}") == format!("{:?}", std::process::ExitCode::SUCCESS);
    (ok, String::from_utf8(out).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_cli_operates_subscriptions() {
    let topic = name("cli");
    create_topic(&topic, 2).await;
    let server = TestServer::start(&name("c")).await;
    let (ok, out) = fanout(&server, &["topics", "register", &topic]).await;
    assert!(ok, "{out}");
    let (ok, out) = fanout(
        &server,
        &[
            "subs",
            "create",
            "--topic",
            &topic,
            "--subscription",
            "s",
            "--start",
            "earliest",
        ],
    )
    .await;
    assert!(
        ok && out.contains("SUBSCRIPTION") && out.contains(" s "),
        "{out}"
    );
    produce(&topic, 0, 50).await;
    let admin = server.admin_api();
    // The partitions are assigned once the group has rebalanced: the lag table shows both.
    let lag = eventually("a lag row per partition", || async {
        let (ok, out) = fanout(&server, &["lag", "--output", "json"]).await;
        assert!(ok, "{out}");
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        (v[0]["partitions"].as_array().map(Vec::len) == Some(2) && v[0]["lag"] == 50).then_some(v)
    })
    .await;
    assert_eq!(lag[0]["subscription"], "s");
    let (ok, table) = fanout(&server, &["lag", "--topic", &topic, "--subscription", "s"]).await;
    assert!(ok, "{table}");
    assert!(table.starts_with("TOPIC"), "{table}");
    assert_eq!(
        table.lines().count(),
        3,
        "a header and a row per partition: {table}"
    );

    let (ok, out) = fanout(
        &server,
        &[
            "seek",
            "--topic",
            &topic,
            "--subscription",
            "s",
            "--to",
            "latest",
            "--partition",
            "0",
        ],
    )
    .await;
    assert!(ok && out.contains("partition 0: seek #"), "{out}");
    let (ok, out) = fanout(
        &server,
        &[
            "seek",
            "--topic",
            &topic,
            "--subscription",
            "s",
            "--offset",
            "1=0",
            "--output",
            "json",
        ],
    )
    .await;
    assert!(ok, "{out}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let second = v["seeks"]["1"]["generation"].as_i64().unwrap();
    assert!(
        second > v["seeks"]["0"]["generation"].as_i64().unwrap(),
        "{v}"
    );
    // A refused seek fails the command and changes nothing.
    let (ok, _) = fanout(
        &server,
        &[
            "seek",
            "--topic",
            &topic,
            "--subscription",
            "s",
            "--offset",
            "1=999999",
        ],
    )
    .await;
    assert!(!ok);
    let (ok, _) = fanout(
        &server,
        &["pause", "--topic", &topic, "--subscription", "s"],
    )
    .await;
    assert!(ok);
    let (_, v) = admin
        .get(&format!("/v1/topics/{topic}/subscriptions/s"))
        .await;
    assert_eq!(
        (
            v["paused"].as_bool(),
            v["seeks"]["1"]["generation"].as_i64()
        ),
        (Some(true), Some(second))
    );
    let (ok, _) = fanout(
        &server,
        &["resume", "--topic", &topic, "--subscription", "s"],
    )
    .await;
    assert!(ok);
    let (ok, out) = fanout(
        &server,
        &[
            "subs",
            "update",
            "--topic",
            &topic,
            "--subscription",
            "s",
            "--ack-timeout-ms",
            "2000",
        ],
    )
    .await;
    assert!(ok, "{out}");
    let (ok, _) = fanout(
        &server,
        &[
            "subs",
            "update",
            "--topic",
            &topic,
            "--subscription",
            "s",
            "--max-attempts",
            "3",
        ],
    )
    .await;
    assert!(!ok, "attempts without a dead-letter topic are refused");
    let (ok, out) = fanout(
        &server,
        &["subs", "list", "--topic", &topic, "--output", "json"],
    )
    .await;
    assert!(ok);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v[0]["paused"], false);
    assert_eq!(v[0]["delivery"]["ack_timeout_ms"], 2000);

    let (ok, _) = fanout(&server, &["topics", "unregister", &topic]).await;
    assert!(!ok, "refused while it has subscriptions");
    let (ok, out) = fanout(&server, &["topics", "unregister", &topic, "--force"]).await;
    assert!(ok, "{out}");
    let (ok, out) = fanout(&server, &["topics", "list", "--output", "json"]).await;
    assert!(ok && !out.contains(&topic), "{out}");
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redrive_delivers_dead_letters_again_to_their_subscription_alone() {
    let topic = name("redrive");
    let dlq = name("redrive-dlq");
    create_topic(&topic, 1).await;
    create_topic(&dlq, 1).await;
    let server = TestServer::start(&name("c")).await;
    let admin = server.admin_api();
    admin.register(&topic).await;
    let path = format!("/v1/topics/{topic}/subscriptions");
    let (status, body) = admin
        .post(
            &path,
            json!({"name": "s", "start": "earliest", "max_attempts": 1, "dead_letter_topic": dlq}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    admin.subscribe(&topic, "other", "earliest").await;
    let all = produce(&topic, 0, 10).await;

    // s gives offset 3 back: out of attempts, it goes to the dead-letter topic.
    let mut s = subscriber(&server.grpc, &topic, "s", 100).await;
    let mut seen = BTreeSet::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    while seen.len() < 10 {
        let r = tokio::time::timeout_at(deadline, s.next())
            .await
            .expect("s's records")
            .unwrap()
            .unwrap();
        seen.insert(r.offset);
        if r.offset == 3 {
            s.nack(&r, std::time::Duration::ZERO);
        } else {
            s.ack(&r);
        }
    }
    eventually("s's cursor past the dead letter", || async {
        (admin.cursors(&topic, "s").await.get(&0) == Some(&10)).then_some(())
    })
    .await;
    let mut other = subscriber(&server.grpc, &topic, "other", 100).await;
    let mut got = Received::default();
    receive_all(&mut other, &all, &mut got).await;

    // Redrive with the CLI: one record, published again for s alone.
    let (ok, out) = fanout(
        &server,
        &["redrive", "--topic", &topic, "--subscription", "s"],
    )
    .await;
    assert!(ok && out.starts_with("1 records redriven"), "{out}");
    let again = tokio::time::timeout(WAIT, s.next())
        .await
        .expect("the redriven record")
        .unwrap()
        .unwrap();
    assert_eq!((again.offset, again.attempt), (10, 1));
    assert!(
        again
            .headers
            .iter()
            .any(|(k, v)| k == "fanout.redrive.for" && v.as_deref() == Some(&b"s"[..])),
        "{again:?}"
    );
    assert!(
        !again
            .headers
            .iter()
            .any(|(k, _)| k.starts_with("fanout.dlq."))
    );
    // Stamped now (an old timestamp could fall behind retention); the original travels along.
    assert!(
        again
            .headers
            .iter()
            .any(|(k, _)| k == "fanout.redrive.timestamp"),
        "{again:?}"
    );
    s.ack(&again);
    // The other subscription skips it: its cursor passes offset 10, nothing delivered.
    eventually("other's cursor past the redriven record", || async {
        (admin.cursors(&topic, "other").await.get(&0) == Some(&11)).then_some(())
    })
    .await;
    assert!(
        tokio::time::timeout(std::time::Duration::from_millis(300), other.next())
            .await
            .is_err(),
        "other received the redriven record"
    );
    // Nothing is redriven twice.
    let (status, v) = admin.post(&format!("{path}/s/redrive"), json!({})).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(
        (v["redriven"].as_u64(), v["complete"].as_bool()),
        (Some(0), Some(true))
    );
    s.close().await;
    other.close().await;
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_subscription_caps_the_credits_of_its_streams() {
    let topic = name("ceiling");
    create_topic(&topic, 1).await;
    let server = TestServer::start(&name("c")).await;
    let admin = server.admin_api();
    admin.register(&topic).await;
    let (status, body) = admin
        .post(
            &format!("/v1/topics/{topic}/subscriptions"),
            json!({"name": "s", "start": "earliest", "max_in_flight_records": 7}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    produce(&topic, 0, 50).await;
    // Asks for 100, never acks: gets 7 and no more.
    let mut sub = subscriber(&server.grpc, &topic, "s", 100).await;
    for _ in 0..7 {
        tokio::time::timeout(WAIT, sub.next())
            .await
            .expect("a record within its credits")
            .unwrap()
            .unwrap();
    }
    assert!(
        tokio::time::timeout(std::time::Duration::from_millis(500), sub.next())
            .await
            .is_err(),
        "an eighth record arrived"
    );
    let (_, lag) = admin
        .get(&format!("/v1/topics/{topic}/subscriptions/s/lag"))
        .await;
    assert_eq!(lag["partitions"][0]["in_flight"], 7, "{lag}");
    sub.close().await;
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_cli_tails_a_topic_through_a_temporary_subscription() {
    let topic = name("tail");
    create_topic(&topic, 2).await;
    let server = TestServer::start(&name("c")).await;
    let admin = server.admin_api();
    admin.register(&topic).await;
    let want = produce(&topic, 0, 50).await;
    let (ok, out) = fanout(
        &server,
        &[
            "--output",
            "json",
            "tail",
            "--topic",
            &topic,
            "--from-beginning",
            "--count",
            "50",
        ],
    )
    .await;
    assert!(ok, "{out}");
    let got: BTreeSet<(i32, i64)> = out
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            (
                i32::try_from(v["partition"].as_i64().unwrap()).unwrap(),
                v["offset"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(got, want, "{out}");
    // The temporary subscription is gone.
    let (status, subs) = admin
        .get(&format!("/v1/topics/{topic}/subscriptions"))
        .await;
    assert_eq!(status, 200);
    assert_eq!(subs.as_array().map(Vec::len), Some(0), "{subs}");
}
