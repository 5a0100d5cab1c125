//! The goals of VERIFY.md taken from the cells (G1–G8) and the isolation files (G10): each
//! figure, its bound and whether it is met.

use std::fmt::Write as _;
use std::path::PathBuf;

use super::At;
use super::text::sig;
use crate::bench::result::{Arm, Cell, Isolation, Workload};

/// A goal's figure.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Value {
    Ratio(f64),
    /// G7: Δp50, Δp99, Δp99.9, ms.
    Deltas([f64; 3]),
    /// Not computable; why.
    Unknown(String),
}

/// What a figure must be.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum Bound {
    AtMost(f64),
    AtLeast(f64),
    /// ≤ `k`/N (G1, G2).
    PerN {
        k: f64,
        n: u32,
    },
    /// G7: each delta at most, ms.
    Deltas([f64; 3]),
    /// G10: ≥ 0.99, acceptance floor 0.95.
    Isolation,
    /// No goal stated at this N.
    None,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Met {
    Yes,
    No,
    /// G10 between the floor and the goal.
    FloorOnly,
    /// No goal here, or no figure.
    NotApplicable,
}

impl Bound {
    pub(super) fn text(self) -> String {
        match self {
            Bound::AtMost(b) => format!("≤ {b}"),
            Bound::AtLeast(b) => format!("≥ {b}"),
            Bound::PerN { k, n } => format!("≤ {k}/{n} = {}", sig(k / f64::from(n), 3)),
            Bound::Deltas(d) => format!("≤ {} / {} / {} ms", d[0], d[1], d[2]),
            Bound::Isolation => "≥ 0.99 (floor 0.95)".into(),
            Bound::None => "–".into(),
        }
    }

    pub(super) fn met(self, value: &Value) -> Met {
        let yes = |b: bool| if b { Met::Yes } else { Met::No };
        match (self, value) {
            (Bound::AtMost(b), Value::Ratio(v)) => yes(*v <= b),
            (Bound::AtLeast(b), Value::Ratio(v)) => yes(*v >= b),
            (Bound::PerN { k, n }, Value::Ratio(v)) => yes(*v <= k / f64::from(n)),
            (Bound::Deltas(b), Value::Deltas(d)) => yes(d.iter().zip(b).all(|(d, b)| *d <= b)),
            (Bound::Isolation, Value::Ratio(v)) if *v >= 0.99 => Met::Yes,
            (Bound::Isolation, Value::Ratio(v)) if *v >= 0.95 => Met::FloorOnly,
            (Bound::Isolation, Value::Ratio(_)) => Met::No,
            _ => Met::NotApplicable,
        }
    }
}

/// One row of the goals table.
#[derive(Debug, Clone)]
pub(super) struct Goal {
    pub(super) id: &'static str,
    pub(super) what: String,
    /// N (subscribers; readers for G13; fast subscriptions for G10); several when the
    /// figure could be taken at none of them.
    pub(super) ns: Vec<u32>,
    /// The cell or file the figure was taken from.
    pub(super) from: String,
    pub(super) value: Value,
    pub(super) bound: Bound,
    pub(super) met: Met,
    /// Why the two arms of the cell did not do the same work, if they did not.
    pub(super) unequal: Option<String>,
}

/// Which cell of an N a goal is taken from.
#[derive(Debug, Clone, Copy)]
enum Source {
    /// A backlog cell: 256 B records if there is one (or only those), else the first.
    Backlog { only_256: bool },
    /// The steady cell with the rate nearest 1,000/s, 256 B records preferred.
    SteadyNear1k,
}

/// A goal of VERIFY.md computed from one cell.
#[derive(Debug)]
struct Def {
    id: &'static str,
    what: &'static str,
    source: Source,
    figure: fn(&Cell) -> Result<Value, String>,
    bound: fn(u32) -> Bound,
}

const PREFER_256: Source = Source::Backlog { only_256: false };

const DEFS: [Def; 8] = [
    Def {
        id: "G1",
        what: "broker egress bytes, F/D",
        source: PREFER_256,
        figure: |c| {
            let (f, d) = both(c)?;
            ratio(
                f.kafka.rx_bytes as f64,
                d.kafka.rx_bytes as f64,
                "direct arm received no bytes from Kafka",
            )
        },
        bound: |n| Bound::PerN { k: 1.01, n },
    },
    Def {
        id: "G2",
        what: "broker fetch requests, F/D",
        source: PREFER_256,
        figure: |c| {
            let (f, d) = both(c)?;
            ratio(
                f.kafka.fetch_requests as f64,
                d.kafka.fetch_requests as f64,
                "direct arm sent no fetch requests",
            )
        },
        bound: |n| Bound::PerN { k: 1.05, n },
    },
    Def {
        id: "G3",
        what: "records per server CPU-s ÷ direct records per consumer CPU-s",
        source: Source::Backlog { only_256: true },
        figure: |c| {
            let (f, d) = both(c)?;
            let server = positive(
                f.cpu_of("server"),
                "no CPU time recorded for the fanout server",
            )?;
            let consumers = positive(
                d.cpu_of("consumer"),
                "no CPU time recorded for the direct consumers",
            )?;
            ratio(
                f.delivered as f64 / server,
                d.delivered as f64 / consumers,
                "direct arm delivered nothing",
            )
        },
        bound: |n| match n {
            1 => Bound::AtLeast(0.7),
            8 => Bound::AtLeast(3.0),
            _ => Bound::None,
        },
    },
    Def {
        id: "G4",
        what: "consumer-side CPU (server + subscribers), F/D",
        source: Source::Backlog { only_256: true },
        figure: |c| {
            let (f, d) = both(c)?;
            let fanout = f.cpu_of("server") + f.cpu_of("subscriber");
            ratio(
                fanout,
                d.cpu_of("consumer"),
                "no CPU time recorded for the direct consumers",
            )
        },
        bound: |n| {
            if n == 8 {
                Bound::AtMost(0.6)
            } else {
                Bound::None
            }
        },
    },
    Def {
        id: "G5",
        what: "backlog drain wall time, F/D",
        source: PREFER_256,
        figure: |c| {
            let (f, d) = both(c)?;
            ratio(
                f.wall_seconds,
                d.wall_seconds,
                "direct arm's wall time is 0",
            )
        },
        bound: |n| {
            if n == 8 {
                Bound::AtMost(0.45)
            } else {
                Bound::None
            }
        },
    },
    Def {
        id: "G6",
        what: "subscription rate ÷ direct consumer rate (medians)",
        source: PREFER_256,
        figure: |c| {
            let (f, d) = both(c)?;
            let fanout = median(&f.consumer_rates).ok_or("no subscription rates recorded")?;
            let direct = median(&d.consumer_rates).ok_or("no direct consumer rates recorded")?;
            ratio(fanout, direct, "direct consumers' median rate is 0")
        },
        bound: |_| Bound::AtLeast(0.95),
    },
    Def {
        id: "G7",
        what: "added latency Δp50 / Δp99 / Δp99.9, ms",
        source: Source::SteadyNear1k,
        figure: |c| {
            let (f, d) = both(c)?;
            if f.latency.count == 0 || d.latency.count == 0 {
                return Err("no latency samples in an arm".into());
            }
            let ms = |a: f64, b: f64| (a - b) / 1000.0;
            Ok(Value::Deltas([
                ms(f.latency.p50_us, d.latency.p50_us),
                ms(f.latency.p99_us, d.latency.p99_us),
                ms(f.latency.p999_us, d.latency.p999_us),
            ]))
        },
        bound: |_| Bound::Deltas([0.1, 0.5, 3.0]),
    },
    Def {
        id: "G8",
        what: "server write syscalls per delivered record",
        source: PREFER_256,
        figure: |c| {
            let f = c.fanout.as_ref().ok_or("fanout arm missing")?;
            let mut servers = f.processes.iter().filter(|p| p.role == "server").peekable();
            if servers.peek().is_none() {
                return Err("no server process recorded in the fanout arm".into());
            }
            let writes: u64 = servers.map(|p| p.write_syscalls).sum();
            ratio(
                writes as f64,
                f.delivered as f64,
                "fanout arm delivered nothing",
            )
        },
        bound: |_| Bound::AtMost(0.01),
    },
];

fn both(c: &Cell) -> Result<(&Arm, &Arm), String> {
    match (&c.fanout, &c.direct) {
        (Some(f), Some(d)) => Ok((f, d)),
        (None, Some(_)) => Err("fanout arm missing".into()),
        (Some(_), None) => Err("direct arm missing".into()),
        (None, None) => Err("both arms missing".into()),
    }
}

pub(super) fn ratio(num: f64, den: f64, den_zero: &str) -> Result<Value, String> {
    if den > 0.0 && num.is_finite() && den.is_finite() {
        Ok(Value::Ratio(num / den))
    } else {
        Err(den_zero.into())
    }
}

fn positive(v: f64, why: &str) -> Result<f64, String> {
    if v > 0.0 { Ok(v) } else { Err(why.into()) }
}

fn median(v: &[f64]) -> Option<f64> {
    let mut v: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let m = v.len() / 2;
    Some(if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    })
}

/// The cell of N `n` a goal is taken from, if there is one.
fn pick<'a>(cells: &[At<'a>], n: u32, source: Source) -> Option<At<'a>> {
    let of_n = cells.iter().filter(|a| a.cell.subscribers == n);
    match source {
        Source::Backlog { only_256 } => {
            let backlog: Vec<&At<'a>> = of_n
                .filter(|a| matches!(a.cell.workload, Workload::Backlog { .. }))
                .collect();
            let sized = backlog.iter().find(|a| a.cell.record_size == 256);
            match (sized, only_256) {
                (Some(a), _) => Some(**a),
                (None, true) => None,
                (None, false) => backlog.first().map(|a| **a),
            }
        }
        Source::SteadyNear1k => {
            let steady: Vec<(&At<'a>, u64)> = of_n
                .filter_map(|a| match a.cell.workload {
                    Workload::Steady { rate, .. } => Some((a, rate)),
                    Workload::Backlog { .. } => None,
                })
                .collect();
            let has_256 = steady.iter().any(|(a, _)| a.cell.record_size == 256);
            steady
                .iter()
                .filter(|(a, _)| !has_256 || a.cell.record_size == 256)
                .min_by_key(|(_, rate)| rate.abs_diff(1000))
                .map(|(a, _)| **a)
        }
    }
}

/// Why the two arms of a cell did not do the same work, if they did not.
fn unequal(c: &Cell) -> Option<String> {
    let mut why = Vec::new();
    for (name, arm) in [("fanout", &c.fanout), ("direct", &c.direct)] {
        match arm {
            None => why.push(format!("{name} arm missing")),
            Some(a) if a.missing > 0 => why.push(format!("{name} missing {} records", a.missing)),
            Some(a) if !a.consistent => why.push(format!("{name} consumers' records differ")),
            Some(_) => {}
        }
    }
    match c.same_records {
        Some(true) => {}
        Some(false) => why.push("the arms' record sets differ".into()),
        None if c.fanout.is_some() && c.direct.is_some() => {
            why.push("record sets not compared".into());
        }
        None => {}
    }
    (!why.is_empty()).then(|| why.join(", "))
}

/// `backlog 1000000, 256 B` (and `[run]` when there are several results files).
fn cell_label(at: At<'_>, runs: usize) -> String {
    let mut s = format!("{}, {} B", at.cell.workload.label(), at.cell.record_size);
    if runs > 1 {
        let _ = write!(s, " [{}]", at.run + 1);
    }
    s
}

/// G1–G8 for every N present, in goal order. The Ns a goal has no cell for share one row.
pub(super) fn cell_goals(cells: &[At<'_>], runs: usize) -> Vec<Goal> {
    let mut ns: Vec<u32> = cells.iter().map(|a| a.cell.subscribers).collect();
    ns.sort_unstable();
    ns.dedup();
    let mut goals = Vec::new();
    for def in &DEFS {
        let mut without = Vec::new();
        for &n in &ns {
            let Some(at) = pick(cells, n, def.source) else {
                without.push(n);
                continue;
            };
            let bound = (def.bound)(n);
            let value = (def.figure)(at.cell).unwrap_or_else(Value::Unknown);
            goals.push(Goal {
                id: def.id,
                what: def.what.into(),
                ns: vec![n],
                from: cell_label(at, runs),
                met: bound.met(&value),
                value,
                bound,
                unequal: unequal(at.cell),
            });
        }
        if let Some(&first) = without.first() {
            let bound = (def.bound)(first);
            let list = join(&without);
            let why = match def.source {
                Source::Backlog { only_256: true } => {
                    format!("no backlog cell of 256 B records at N={list}")
                }
                Source::Backlog { only_256: false } => format!("no backlog cell at N={list}"),
                Source::SteadyNear1k => format!("no steady cell at N={list}"),
            };
            goals.push(Goal {
                id: def.id,
                what: def.what.into(),
                bound: if without.iter().all(|n| (def.bound)(*n) == bound) {
                    bound
                } else {
                    Bound::None
                },
                ns: without,
                from: "–".into(),
                value: Value::Unknown(why),
                met: Met::NotApplicable,
                unequal: None,
            });
        }
    }
    goals
}

pub(super) fn join(ns: &[u32]) -> String {
    ns.iter().map(u32::to_string).collect::<Vec<_>>().join(", ")
}

/// G10: one row per isolation file, by N.
pub(super) fn isolation_goals(files: &[(PathBuf, Isolation)]) -> Vec<Goal> {
    let mut goals: Vec<Goal> = files
        .iter()
        .map(|(path, iso)| {
            let value = if iso.rounds.is_empty() || !iso.median_ratio.is_finite() {
                Value::Unknown(format!("no rounds in {}", path.display()))
            } else {
                Value::Ratio(iso.median_ratio)
            };
            Goal {
                id: "G10",
                what: format!(
                    "fast subscriptions' rate with one at {}% ÷ without (median of rounds)",
                    sig(iso.slow_fraction * 100.0, 2)
                ),
                ns: vec![iso.fast],
                from: format!(
                    "isolation, {} × {} B, {} rounds",
                    iso.records,
                    iso.record_size,
                    iso.rounds.len()
                ),
                met: Bound::Isolation.met(&value),
                value,
                bound: Bound::Isolation,
                unequal: None,
            }
        })
        .collect();
    goals.sort_by_key(|g| g.ns.clone());
    goals
}
