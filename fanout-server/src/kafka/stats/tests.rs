use metrics_exporter_prometheus::PrometheusBuilder;
use rdkafka::consumer::Consumer;

use super::*;

/// A statistics document in librdkafka's shape (trimmed: the real one has many more fields,
/// skipped unread, some of them here to prove it).
fn doc(name: &str, brokers: &[(&str, u64, u64, u64, u64, u64)]) -> Vec<u8> {
    let (mut tx, mut txbytes, mut rx, mut rxbytes) = (0, 0, 0, 0);
    let brokers: serde_json::Map<String, serde_json::Value> = brokers
        .iter()
        .map(|&(broker, t, tb, r, rb, fetch)| {
            (tx, txbytes, rx, rxbytes) = (tx + t, txbytes + tb, rx + r, rxbytes + rb);
            let b = serde_json::json!({
                "name": broker, "nodeid": 1, "state": "UP", "stateage": 12,
                "tx": t, "txbytes": tb, "txerrs": 0, "txidle": -1,
                "rx": r, "rxbytes": rb, "rxerrs": 0, "rxidle": -1,
                "rtt": { "min": 1, "max": 9, "avg": 3, "p99": 9 },
                "req": { "Fetch": fetch, "Produce": 0, "Metadata": 2 },
                "toppars": { "t-0": { "topic": "t", "partition": 0 } }
            });
            (broker.to_owned(), b)
        })
        .collect();
    serde_json::to_vec(&serde_json::json!({
        "name": name, "client_id": "a", "type": "consumer", "ts": 1, "time": 2,
        "tx": tx, "txbytes": txbytes, "rx": rx, "rxbytes": rxbytes,
        "brokers": brokers,
        "topics": { "t": { "topic": "t", "partitions": { "0": { "partition": 0, "fetchq_cnt": 3 } } } }
    }))
    .unwrap()
}

fn add(seen: &mut Seen, json: &[u8]) -> Counts {
    seen.add(Snapshot::parse(json).unwrap())
}

const B1: &str = "127.0.0.1:9092/1";
const B2: &str = "127.0.0.1:9093/2";
const COORD: &str = "GroupCoordinator";

#[test]
fn each_snapshot_adds_what_is_new_per_instance() {
    let mut seen = Seen::default();
    let mut total = Counts::default();
    // Instance a, first: all of it counts (bootstrap and coordinator connections too).
    total += add(
        &mut seen,
        &doc(
            "a#consumer-1",
            &[(B1, 10, 1000, 9, 50_000, 5), (COORD, 2, 100, 2, 80, 0)],
        ),
    );
    assert_eq!(
        total,
        Counts {
            received_bytes: 50_080,
            sent_bytes: 1100,
            requests: 12,
            responses: 11,
            fetch_requests: 5,
        }
    );
    // Instance a again: only the growth counts.
    let d = add(
        &mut seen,
        &doc(
            "a#consumer-1",
            &[(B1, 15, 1500, 14, 80_000, 9), (COORD, 3, 150, 3, 120, 0)],
        ),
    );
    assert_eq!(
        d,
        Counts {
            received_bytes: 30_040,
            sent_bytes: 550,
            requests: 6,
            responses: 6,
            fetch_requests: 4,
        }
    );
    total += d;
    // Another instance: counted from its own start, next to the first.
    total += add(&mut seen, &doc("b#producer-2", &[(B2, 4, 400, 4, 40, 0)]));
    assert_eq!(
        total,
        Counts {
            received_bytes: 80_160,
            sent_bytes: 2050,
            requests: 22,
            responses: 21,
            fetch_requests: 9,
        }
    );
    // The same snapshot again adds nothing.
    let same = doc("b#producer-2", &[(B2, 4, 400, 4, 40, 0)]);
    assert_eq!(add(&mut seen, &same), Counts::default());
}

#[test]
fn counters_never_go_back() {
    let mut seen = Seen::default();
    add(
        &mut seen,
        &doc("a#consumer-1", &[(B1, 10, 1000, 10, 1000, 10)]),
    );
    // A name seen before with lower counters (a reused name): nothing, not a negative.
    assert_eq!(
        add(&mut seen, &doc("a#consumer-1", &[(B1, 3, 300, 3, 300, 3)])),
        Counts::default()
    );
    // ... and it counts on from there.
    assert_eq!(
        add(&mut seen, &doc("a#consumer-1", &[(B1, 4, 400, 4, 400, 4)])).requests,
        1
    );
}

#[test]
fn a_broker_that_leaves_does_not_hide_the_others_growth() {
    let mut seen = Seen::default();
    add(
        &mut seen,
        &doc(
            "a#consumer-1",
            &[(B1, 10, 100, 10, 100, 1), (B2, 20, 200, 20, 200, 2)],
        ),
    );
    // B1 left the metadata (librdkafka's top-level totals drop by its share); B2 grew.
    let d = add(
        &mut seen,
        &doc("a#consumer-1", &[(B2, 25, 250, 25, 250, 3)]),
    );
    assert_eq!(
        d,
        Counts {
            received_bytes: 50,
            sent_bytes: 50,
            requests: 5,
            responses: 5,
            fetch_requests: 1,
        }
    );
}

#[test]
fn unreadable_documents_are_refused_without_panic() {
    for bad in [
        &b""[..],
        b"{",
        b"not json",
        b"[]",
        b"{\"brokers\":{}}",
        b"{\"name\":\"a\",\"brokers\":{\"b\":{\"tx\":-1}}}",
        b"{\"name\":\"a\",\"brokers\":{\"b\":{\"req\":{\"Fetch\":\"x\"}}}}",
        b"\xff\xfe",
    ] {
        assert!(
            Snapshot::parse(bad).is_err(),
            "{:?}",
            String::from_utf8_lossy(bad)
        );
    }
    // A document without brokers counts nothing.
    let mut seen = Seen::default();
    assert_eq!(
        add(&mut seen, b"{\"name\":\"a#consumer-1\"}"),
        Counts::default()
    );
}

#[test]
fn client_stats_count_under_the_role_and_ignore_garbage() {
    let recorder = PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    let stats = metrics::with_local_recorder(&recorder, || ClientStats::new("catch-up"));
    stats.record(&doc("r#consumer-7", &[(B1, 10, 1000, 9, 50_000, 5)]));
    stats.record(b"{ garbage");
    stats.record(&doc("r#consumer-7", &[(B1, 12, 1200, 11, 70_000, 7)]));
    let text = handle.render();
    for line in [
        "fanout_kafka_received_bytes_total{client=\"catch-up\"} 70000",
        "fanout_kafka_sent_bytes_total{client=\"catch-up\"} 1200",
        "fanout_kafka_requests_total{client=\"catch-up\"} 12",
        "fanout_kafka_responses_total{client=\"catch-up\"} 11",
        "fanout_kafka_fetch_requests_total{client=\"catch-up\"} 7",
    ] {
        assert!(text.lines().any(|l| l == line), "{line} not in:\n{text}");
    }
}

#[test]
fn librdkafka_documents_are_read() {
    // A real client (no broker needed: nothing listens there) emits real documents.
    let client: MetadataClient = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", "127.0.0.1:1")
        .set("client.id", "fanout-test-metadata")
        .set("statistics.interval.ms", "100")
        .set("log_level", "0")
        .create_with_context(crate::kafka::StatsContext::new("metadata"))
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let names = loop {
        let _ = client.poll(Duration::from_millis(50));
        let names: Vec<String> = client
            .context()
            .stats
            .seen
            .lock()
            .last
            .keys()
            .cloned()
            .collect();
        if !names.is_empty() || std::time::Instant::now() > deadline {
            break names;
        }
    };
    assert_eq!(names.len(), 1, "no statistics read");
    assert!(
        names[0].starts_with("fanout-test-metadata#consumer-"),
        "{names:?}"
    );
    let brokers = client.context().stats.seen.lock().last[&names[0]].len();
    assert!(brokers >= 1, "the bootstrap broker is listed");
}
