//! An arm's figures from its workers' reports and `/proc` samples, and the terminal summary
//! of a cell.

use anyhow::Context;

use super::Plan;
use super::procfs;
use super::result::{Arm, Cell, KafkaTraffic, Latency, Process};
use super::worker::Report;

pub(super) fn process(role: &str, pid: u32, s: &procfs::Sample) -> Process {
    Process {
        role: role.to_owned(),
        pid,
        cpu_seconds: s.user_seconds + s.system_seconds,
        user_seconds: s.user_seconds,
        system_seconds: s.system_seconds,
        peak_rss_bytes: s.peak_rss_bytes,
        write_syscalls: s.write_syscalls,
    }
}

/// An arm's figures from its workers' reports.
#[allow(clippy::too_many_arguments)]
pub(super) fn arm(
    name: &str,
    plan: &Plan,
    reports: &[Report],
    go_ns: u64,
    digest: u64,
    kafka: KafkaTraffic,
    processes: Vec<Process>,
    kafka_by_client: std::collections::BTreeMap<String, KafkaTraffic>,
) -> anyhow::Result<Arm> {
    let mut hist = hdrhistogram::Histogram::<u64>::new_with_bounds(1_000, 600_000_000_000, 3)
        .context("latency histogram")?;
    let mut delivered = 0;
    let mut duplicates = 0;
    let mut missing = 0;
    let mut last = go_ns;
    let mut rates = Vec::new();
    for r in reports {
        delivered += r.unique;
        duplicates += r.duplicates;
        missing += plan.records.saturating_sub(r.unique);
        last = last.max(r.last_ns);
        let secs = r.last_ns.saturating_sub(go_ns) as f64 / 1e9;
        rates.push(if secs > 0.0 {
            r.unique as f64 / secs
        } else {
            0.0
        });
        for &(v, c) in &r.latency_ns {
            let _ = hist.record_n(v.clamp(1_000, hist.high()), c);
        }
    }
    let consistent = !reports.is_empty()
        && reports
            .iter()
            .all(|r| r.digest == digest && r.unique == plan.records && r.unexpected == 0);
    Ok(Arm {
        arm: name.to_owned(),
        wall_seconds: last.saturating_sub(go_ns) as f64 / 1e9,
        delivered,
        duplicates,
        missing,
        consumer_rates: rates,
        kafka,
        kafka_by_client,
        processes,
        latency: latency(&hist),
        record_digest: reports.first().map_or(0, |r| r.digest),
        consistent,
    })
}

fn latency(h: &hdrhistogram::Histogram<u64>) -> Latency {
    if h.is_empty() {
        return Latency::default();
    }
    let us = |ns: u64| ns as f64 / 1e3;
    let mut cdf = Vec::new();
    for q in CDF_POINTS {
        cdf.push((us(h.value_at_quantile(q)), q));
    }
    Latency {
        count: h.len(),
        p50_us: us(h.value_at_quantile(0.5)),
        p99_us: us(h.value_at_quantile(0.99)),
        p999_us: us(h.value_at_quantile(0.999)),
        max_us: us(h.max()),
        mean_us: h.mean() / 1e3,
        cdf,
    }
}

/// Fractions at which the latency CDF is sampled.
const CDF_POINTS: [f64; 24] = [
    0.0, 0.01, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.97, 0.98, 0.99, 0.995,
    0.998, 0.999, 0.9995, 0.9999, 0.99995, 0.99999, 1.0,
];

/// One line per arm and the main ratios, for the terminal.
pub(super) fn summary(cell: &Cell) -> String {
    let line = |a: &Arm| {
        format!(
            "  {:<6} {:>10.0} rec/s  wall {:>6.1} s  kafka rx {:>8.1} MiB  fetches {:>6}  cpu {:>6.2} s  p50 {:>7.2} ms  p99 {:>7.2} ms  missing {}  dups {}",
            a.arm,
            a.delivered as f64 / a.wall_seconds.max(1e-9),
            a.wall_seconds,
            a.kafka.rx_bytes as f64 / (1024.0 * 1024.0),
            a.kafka.fetch_requests,
            a.cpu_total(),
            a.latency.p50_us / 1e3,
            a.latency.p99_us / 1e3,
            a.missing,
            a.duplicates,
        )
    };
    let mut s = String::new();
    for a in [&cell.direct, &cell.fanout].into_iter().flatten() {
        s.push_str(&line(a));
        s.push('\n');
    }
    if let (Some(d), Some(f)) = (&cell.direct, &cell.fanout) {
        s.push_str(&format!(
            "  F/D: egress {:.3} (goal ≤ {:.3})  cpu {:.3}  same records: {}",
            f.kafka.rx_bytes as f64 / d.kafka.rx_bytes.max(1) as f64,
            1.01 / f64::from(cell.subscribers),
            f.cpu_total() / d.cpu_total().max(1e-9),
            cell.same_records.unwrap_or(false)
        ));
    }
    s
}
