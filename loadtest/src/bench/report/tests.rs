//! Tests of `report`: goals, markdown, criterion input, plots and number formatting.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use super::criterion::{dispatch_goals, read_dispatch};
use super::goals::{Goal, Met, Value, cell_goals, isolation_goals};
use super::markdown::render;
use super::plots::{link, relative, unique};
use super::text::{duration_ns, sig, thousands};
use super::{Args, Run, cells, run};
use crate::bench::result::{
    Arm, Cell, Isolation, IsolationRound, KafkaTraffic, Latency, Machine, Process, Results,
    Workload,
};

fn temp_dir(name: &str) -> PathBuf {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let dir = std::env::temp_dir().join(format!(
        "fanout-report-{name}-{}-{nanos}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn process(role: &str, cpu_seconds: f64, write_syscalls: u64) -> Process {
    Process {
        role: role.into(),
        cpu_seconds,
        peak_rss_bytes: 64 << 20,
        write_syscalls,
        ..Process::default()
    }
}

fn traffic(rx_bytes: u64, fetch_requests: u64) -> KafkaTraffic {
    KafkaTraffic {
        rx_bytes,
        fetch_requests,
        ..KafkaTraffic::default()
    }
}

fn latency(p50_us: f64, p99_us: f64, p999_us: f64) -> Latency {
    Latency {
        count: 1000,
        p50_us,
        p99_us,
        p999_us,
        cdf: vec![
            (p50_us / 2.0, 0.0),
            (p50_us, 0.5),
            (p99_us, 0.99),
            (p999_us, 1.0),
        ],
        ..Latency::default()
    }
}

fn cell(workload: Workload, n: u32, fanout: Arm, direct: Arm) -> Cell {
    Cell {
        workload,
        subscribers: n,
        partitions: 4,
        record_size: 256,
        records: 100_000,
        started_at: "2026-11-25T10:00:00Z".into(),
        direct: Some(direct),
        fanout: Some(fanout),
        same_records: Some(true),
    }
}

const BACKLOG: Workload = Workload::Backlog { records: 100_000 };

/// N=1 and N=8 backlog cells, and two steady cells at N=8 (1k/s and 50k/s).
fn results() -> Results {
    let n1 = cell(
        BACKLOG,
        1,
        Arm {
            arm: "fanout".into(),
            wall_seconds: 2.0,
            delivered: 100_000,
            consumer_rates: vec![45_000.0],
            kafka: traffic(1_050_000, 110),
            processes: vec![process("server", 0.5, 900), process("subscriber", 0.2, 0)],
            consistent: true,
            ..Arm::default()
        },
        Arm {
            arm: "direct".into(),
            wall_seconds: 1.8,
            delivered: 100_000,
            consumer_rates: vec![50_000.0],
            kafka: traffic(1_000_000, 100),
            processes: vec![process("consumer", 0.25, 0)],
            consistent: true,
            ..Arm::default()
        },
    );
    let n8 = cell(
        BACKLOG,
        8,
        Arm {
            arm: "fanout".into(),
            wall_seconds: 2.0,
            delivered: 800_000,
            consumer_rates: vec![49_000.0, 50_000.0, 51_000.0, 50_000.0],
            kafka: traffic(1_000_000, 100),
            processes: std::iter::once(process("server", 2.0, 4000))
                .chain((0..8).map(|_| process("subscriber", 0.25, 0)))
                .collect(),
            consistent: true,
            ..Arm::default()
        },
        Arm {
            arm: "direct".into(),
            wall_seconds: 5.0,
            delivered: 800_000,
            consumer_rates: vec![20_000.0, 19_000.0, 21_000.0],
            kafka: traffic(8_400_000, 840),
            processes: (0..8).map(|_| process("consumer", 1.0, 0)).collect(),
            consistent: true,
            ..Arm::default()
        },
    );
    let steady = |rate: u64, f: Latency, d: Latency| {
        cell(
            Workload::Steady {
                rate,
                seconds: 10.0,
            },
            8,
            Arm {
                arm: "fanout".into(),
                wall_seconds: 10.0,
                delivered: rate * 80,
                latency: f,
                consistent: true,
                ..Arm::default()
            },
            Arm {
                arm: "direct".into(),
                wall_seconds: 10.0,
                delivered: rate * 80,
                latency: d,
                consistent: true,
                ..Arm::default()
            },
        )
    };
    Results {
        command: "fanout-loadtest bench sweep".into(),
        machine: Machine {
            cpu: "Test CPU".into(),
            cores: 2,
            memory_gib: 24.0,
            kernel: "6.8.0".into(),
            pinning: "none".into(),
            kafka: "4.3.1".into(),
        },
        commit: Some("abc1234".into()),
        warm_up_seconds: 2.0,
        cells: vec![
            n1,
            n8,
            steady(
                50_000,
                latency(9_000.0, 30_000.0, 90_000.0),
                latency(1_000.0, 2_000.0, 4_000.0),
            ),
            steady(
                1_000,
                latency(1_080.0, 2_400.0, 6_000.0),
                latency(1_000.0, 2_000.0, 4_000.0),
            ),
        ],
        interrupted: false,
    }
}

fn goal<'a>(goals: &'a [Goal], id: &str, n: u32) -> &'a Goal {
    goals
        .iter()
        .find(|g| g.id == id && g.ns.contains(&n))
        .unwrap_or_else(|| panic!("no {id} at N={n}"))
}

fn ratio_of(g: &Goal) -> f64 {
    match g.value {
        Value::Ratio(v) => v,
        ref other => panic!("{} N={:?}: {other:?}", g.id, g.ns),
    }
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-9
}

fn runs(results: Results) -> Vec<Run> {
    vec![Run {
        path: "results.json".into(),
        results,
    }]
}

#[test]
fn goals_of_a_small_sweep() {
    let runs = runs(results());
    let goals = cell_goals(&cells(&runs), 1);

    let g1 = goal(&goals, "G1", 8);
    assert!(close(ratio_of(g1), 1.0 / 8.4));
    assert_eq!(g1.met, Met::Yes);
    assert_eq!(g1.bound.text(), "≤ 1.01/8 = 0.126");
    assert_eq!(
        g1.from, "backlog 100000, 256 B",
        "G1 comes from the backlog cell"
    );
    let g1 = goal(&goals, "G1", 1);
    assert!(close(ratio_of(g1), 1.05));
    assert_eq!(g1.met, Met::No);

    let g3 = goal(&goals, "G3", 8);
    assert!(close(ratio_of(g3), 4.0));
    assert_eq!(g3.met, Met::Yes);
    let g3 = goal(&goals, "G3", 1);
    assert!(close(ratio_of(g3), 0.5));
    assert_eq!(g3.met, Met::No);

    let g4 = goal(&goals, "G4", 8);
    assert!(close(ratio_of(g4), 0.5));
    assert_eq!(g4.met, Met::Yes);
    let g4 = goal(&goals, "G4", 1);
    assert!(close(ratio_of(g4), 0.7 / 0.25));
    assert_eq!(
        g4.met,
        Met::NotApplicable,
        "G4's goal is stated at N=8 only"
    );

    let g6 = goal(&goals, "G6", 8);
    assert!(close(ratio_of(g6), 50_000.0 / 20_000.0));
    assert_eq!(g6.met, Met::Yes);
    assert_eq!(goal(&goals, "G6", 1).met, Met::No);

    let g7 = goal(&goals, "G7", 8);
    assert_eq!(
        g7.from, "steady 1000/s, 256 B",
        "the steady cell nearest 1k/s"
    );
    let Value::Deltas(d) = g7.value else {
        panic!("{:?}", g7.value)
    };
    assert!(
        close(d[0], 0.08) && close(d[1], 0.4) && close(d[2], 2.0),
        "{d:?}"
    );
    assert_eq!(g7.met, Met::Yes);
    let g7 = goal(&goals, "G7", 1);
    assert_eq!(g7.value, Value::Unknown("no steady cell at N=1".into()));
    assert_eq!(g7.met, Met::NotApplicable);

    assert!(close(ratio_of(goal(&goals, "G5", 8)), 0.4));
    assert!(close(ratio_of(goal(&goals, "G8", 8)), 0.005));
    assert!(goals.iter().all(|g| g.unequal.is_none()));
}

#[test]
fn g7_fails_when_one_delta_is_over() {
    let mut r = results();
    if let Some(f) = r.cells[3].fanout.as_mut() {
        f.latency.p999_us = 7_500.0;
    }
    let runs = runs(r);
    let goals = cell_goals(&cells(&runs), 1);
    assert_eq!(goal(&goals, "G7", 8).met, Met::No);
}

#[test]
fn missing_arm_and_unequal_work_are_shown_not_panicked() {
    let mut r = results();
    let mut n16 = r.cells[1].clone();
    n16.subscribers = 16;
    n16.direct = None;
    n16.same_records = None;
    r.cells.push(n16);
    r.cells[1].same_records = Some(false);
    if let Some(f) = r.cells[1].fanout.as_mut() {
        f.missing = 12;
    }
    let runs = runs(r);
    let goals = cell_goals(&cells(&runs), 1);

    let g1 = goal(&goals, "G1", 16);
    assert_eq!(g1.value, Value::Unknown("direct arm missing".into()));
    assert_eq!(g1.met, Met::NotApplicable);
    // G8 needs the fanout arm only: shown, but flagged.
    let g8 = goal(&goals, "G8", 16);
    assert!(close(ratio_of(g8), 0.005));
    assert_eq!(g8.unequal.as_deref(), Some("direct arm missing"));
    let g1 = goal(&goals, "G1", 8);
    assert_eq!(
        g1.unequal.as_deref(),
        Some("fanout missing 12 records, the arms' record sets differ")
    );

    let md = render(&runs, &[], &[], &[]);
    assert!(
        md.contains("| G1 |  | 16 | backlog 100000, 256 B | –[^2] | ≤ 1.01/16 = 0.0631 | – |"),
        "{md}"
    );
    assert!(md.contains("direct arm missing"));
    assert!(md.contains("| 0.119 †[^1] |"), "{md}");
    assert!(md.contains("[^2]: direct arm missing\n"), "{md}");
    assert!(
        !md.contains("–[^2] †"),
        "no dagger on a figure not shown: {md}"
    );
    assert!(md.contains("not equal work"));
    assert!(md.contains("the direct arm did not run"));
    assert!(!md.contains("NaN") && !md.contains("inf"), "{md}");
}

#[test]
fn markdown_of_a_sweep() {
    let runs = runs(results());
    let md = render(&runs, &[], &[], &[]);
    assert!(md.contains("Test CPU, 2 cores, 24.0 GiB, kernel 6.8.0, pinning none, Kafka 4.3.1"));
    assert!(md.contains("commit abc1234; `fanout-loadtest bench sweep`"));
    assert!(
        md.contains("| G3 |  | 8 | backlog 100000, 256 B | 4.00 | ≥ 3 | yes |"),
        "{md}"
    );
    assert!(md.contains("| G7 | added latency Δp50 / Δp99 / Δp99.9, ms | 8 | steady 1000/s, 256 B | 0.080 / 0.40 / 2.0 | ≤ 0.1 / 0.5 / 3 ms | yes |"), "{md}");
    // The N=8 backlog rows: 400,000 rec/s fanout, 160,000 direct.
    assert!(
        md.contains("| backlog 100000 | 256 B | 8 | fanout | 400,000 | 2.00 |"),
        "{md}"
    );
    assert!(
        md.contains("| backlog 100000 | 256 B | 8 | direct | 160,000 | 5.00 |"),
        "{md}"
    );
    assert!(!md.contains("NaN") && !md.contains("inf"));
}

#[test]
fn nothing_measured() {
    let md = render(&[], &[], &[], &[]);
    assert!(md.contains("Nothing was measured"));
    let md = render(&runs(Results::default()), &[], &[], &[]);
    assert!(md.contains("Nothing was measured: the results files hold no cells"));
    assert!(md.contains("No cells were measured"));
}

fn estimates(dir: &Path, group: &str, readers: u32, mean_ns: f64) {
    let d = dir
        .join(format!("dispatch_{group}"))
        .join(readers.to_string())
        .join("new");
    std::fs::create_dir_all(&d).unwrap();
    let json = format!(
        r#"{{"mean":{{"confidence_interval":{{"confidence_level":0.95,"lower_bound":1.0,"upper_bound":2.0}},"point_estimate":{mean_ns},"standard_error":1.0}},"median":{{"point_estimate":{mean_ns}}}}}"#
    );
    std::fs::write(d.join("estimates.json"), json).unwrap();
}

#[test]
fn criterion_dispatch() {
    let dir = temp_dir("criterion");
    estimates(&dir, "log_read", 1, 100.0);
    estimates(&dir, "log_read", 8, 880.0);
    estimates(&dir, "log_read", 64, 7_680.0);
    estimates(&dir, "deliver_ack", 64, 9_600.0);
    estimates(&dir, "deliver_ack", 1, 100.0);
    // Criterion's own directories are not readers.
    std::fs::create_dir_all(dir.join("dispatch_log_read/report")).unwrap();

    let points = read_dispatch(&dir).unwrap();
    let readers: Vec<(&str, u32)> = points.iter().map(|p| (p.group, p.readers)).collect();
    assert_eq!(
        readers,
        [
            ("log_read", 1),
            ("log_read", 8),
            ("log_read", 64),
            ("deliver_ack", 1),
            ("deliver_ack", 64)
        ]
    );
    let goals = dispatch_goals(&points);
    assert!(close(ratio_of(&goals[1]), 1.1));
    assert_eq!(
        goals[1].met,
        Met::NotApplicable,
        "goal stated at 64 readers"
    );
    assert!(close(ratio_of(&goals[2]), 1.2));
    assert_eq!(goals[2].met, Met::Yes);
    assert!(close(ratio_of(&goals[4]), 1.5));
    assert_eq!(goals[4].met, Met::No);

    // A reader directory without its estimates is an error naming the file.
    std::fs::create_dir_all(dir.join("dispatch_deliver_ack/8/new")).unwrap();
    let err = format!("{:#}", read_dispatch(&dir).unwrap_err());
    assert!(
        err.contains("dispatch_deliver_ack/8/new/estimates.json"),
        "{err}"
    );

    let empty = temp_dir("criterion-empty");
    let err = format!("{:#}", read_dispatch(&empty).unwrap_err());
    assert!(err.contains("no `dispatch` benchmark"), "{err}");
    std::fs::remove_dir_all(dir).unwrap();
    std::fs::remove_dir_all(empty).unwrap();
}

#[test]
fn criterion_without_one_reader() {
    let dir = temp_dir("criterion-no-1");
    estimates(&dir, "log_read", 64, 7_680.0);
    let goals = dispatch_goals(&read_dispatch(&dir).unwrap());
    assert_eq!(
        goals[0].value,
        Value::Unknown("no 1-reader run of dispatch/log_read".into())
    );
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn isolation_met_levels() {
    let iso = |fast: u32, median_ratio: f64| {
        (
            PathBuf::from(format!("iso-{fast}.json")),
            Isolation {
                fast,
                records: 500_000,
                record_size: 256,
                slow_fraction: 0.1,
                rounds: vec![IsolationRound {
                    ratio: median_ratio,
                    worst_pair: median_ratio - 0.01,
                    ..IsolationRound::default()
                }],
                median_ratio,
                server_peak_rss_bytes: Some(322 << 20),
                ..Isolation::default()
            },
        )
    };
    let files = [iso(8, 0.97), iso(4, 1.053), iso(16, 0.9)];
    let goals = isolation_goals(&files);
    let met: Vec<(u32, Met)> = goals.iter().map(|g| (g.ns[0], g.met)).collect();
    assert_eq!(met, [(4, Met::Yes), (8, Met::FloorOnly), (16, Met::No)]);
    let md = render(&[], &files, &[], &[]);
    assert!(
        md.contains("| 4 | 500,000 | 256 B | 10% | 1.05 | 1.04 | 1.05 | 322 MiB |"),
        "{md}"
    );
    assert!(md.contains("| floor only |"));
}

#[test]
fn run_writes_markdown_and_plots_linked_relative_to_out() {
    let dir = temp_dir("run");
    let results_path = dir.join("results.json");
    std::fs::write(&results_path, serde_json::to_string(&results()).unwrap()).unwrap();
    let out = dir.join("docs").join("report.md");
    run(Args {
        results: vec![results_path],
        isolation: vec![],
        criterion: None,
        out: Some(out.clone()),
        plots: Some(dir.join("plots")),
    })
    .unwrap();
    let md = std::fs::read_to_string(&out).unwrap();
    for file in [
        "throughput-backlog-100000-256.svg",
        "cpu-backlog-100000-256.svg",
        "throughput-steady-1000-256.svg",
        "latency-cdf-1000-256-n8.svg",
        "latency-cdf-50000-256-n8.svg",
    ] {
        assert!(
            md.contains(&format!("](../plots/{file})")),
            "{file} in {md}"
        );
        let svg = std::fs::read_to_string(dir.join("plots").join(file)).unwrap();
        assert!(svg.starts_with("<svg") && svg.contains("fanout") && svg.contains("direct"));
        assert!(!svg.contains("NaN"), "{file}");
    }
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn unreadable_inputs_name_the_file() {
    let dir = temp_dir("bad");
    let bad = dir.join("bad.json");
    std::fs::write(&bad, "{ not json").unwrap();
    for (results, isolation, name) in [
        (vec![bad.clone()], vec![], "bad.json"),
        (vec![], vec![dir.join("absent.json")], "absent.json"),
    ] {
        let err = run(Args {
            results,
            isolation,
            criterion: None,
            out: Some(dir.join("out.md")),
            plots: None,
        })
        .unwrap_err();
        assert!(format!("{err:#}").contains(name), "{err:#}");
    }
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn numbers() {
    assert_eq!(sig(0.126_25, 3), "0.126");
    assert_eq!(sig(176_928.4, 3), "176,928");
    assert_eq!(sig(-0.081, 2), "-0.081");
    assert_eq!(sig(4.0, 3), "4.00");
    assert_eq!(thousands(-1_234_567.0), "-1,234,567");
    assert_eq!(duration_ns(166_153.9), "166.2 µs");
    assert_eq!(
        unique(&mut HashSet::new(), "cpu-steady 1/s"),
        "cpu-steady_1_s.svg"
    );
    assert_eq!(
        relative(Path::new("/a/b/plots"), Path::new("/a/b/docs")).unwrap(),
        Path::new("../plots")
    );
    assert_eq!(link(Path::new("my plots/x.svg")), "my%20plots/x.svg");
}
