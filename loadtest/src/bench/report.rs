//! `report`: one markdown page from the files the benchmarks wrote — results of `run` /
//! `sweep` (G1–G8), `isolation --json` (G10) and criterion's `dispatch` output (G13) — with
//! SVG plots beside it.
//!
//! The page gives the machine of every run, the goals of VERIFY.md as F/D figures of the
//! same cell next to their bounds, every cell's figures per arm, and links to the plots.
//! Every figure is computed from those files and nothing else: one that cannot be is shown as
//! `–` with the reason in a footnote, and a figure whose two arms did not do the same work
//! (an arm missing, records missing, record sets that differ) is marked `†`.

use std::collections::HashSet;
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Component, Path, PathBuf};

use anyhow::{Context, bail};
use serde::Deserialize;
use serde::de::DeserializeOwned;

use super::result::{Arm, Cell, Isolation, Results, Workload};
use super::svg;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Results files written by `run` / `sweep` (JSON).
    pub results: Vec<PathBuf>,
    /// `isolation --json` files (G10), any number (one per N).
    #[arg(long)]
    pub isolation: Vec<PathBuf>,
    /// Criterion's output directory holding the `dispatch` benchmark (G13), e.g.
    /// target/criterion.
    #[arg(long)]
    pub criterion: Option<PathBuf>,
    /// Write the markdown here (default: stdout).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Directory for the SVG plots (created); the markdown links them relative to `--out`'s
    /// directory.
    #[arg(long)]
    pub plots: Option<PathBuf>,
}

/// Reads the inputs, writes the plots (if asked) and the markdown.
pub fn run(args: Args) -> anyhow::Result<()> {
    let runs = args
        .results
        .iter()
        .map(|p| {
            Ok(Run {
                path: p.clone(),
                results: read_json(p, "results")?,
            })
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let isolation = args
        .isolation
        .iter()
        .map(|p| Ok((p.clone(), read_json::<Isolation>(p, "isolation")?)))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let dispatch = match &args.criterion {
        Some(dir) => read_dispatch(dir)?,
        None => Vec::new(),
    };
    let out_dir = args
        .out
        .as_deref()
        .and_then(Path::parent)
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    if args.out.is_some() {
        std::fs::create_dir_all(out_dir)
            .with_context(|| format!("creating directory {}", out_dir.display()))?;
    }
    let plots = match &args.plots {
        Some(dir) => write_plots(&plan_plots(&cells(&runs)), dir, out_dir)?,
        None => Vec::new(),
    };
    let markdown = render(&runs, &isolation, &dispatch, &plots);
    match &args.out {
        Some(out) => std::fs::write(out, markdown)
            .with_context(|| format!("writing the report to {}", out.display()))?,
        None => {
            let mut stdout = std::io::stdout().lock();
            stdout
                .write_all(markdown.as_bytes())
                .and_then(|()| stdout.flush())
                .context("writing the report to stdout")?;
        }
    }
    Ok(())
}

fn read_json<T: DeserializeOwned>(path: &Path, what: &str) -> anyhow::Result<T> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading {what} file {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("parsing {what} file {}", path.display()))
}

/// One results file.
#[derive(Debug)]
struct Run {
    path: PathBuf,
    results: Results,
}

/// A cell and the run (index into the runs) it came from.
#[derive(Debug, Clone, Copy)]
struct At<'a> {
    run: usize,
    cell: &'a Cell,
}

fn cells(runs: &[Run]) -> Vec<At<'_>> {
    runs.iter()
        .enumerate()
        .flat_map(|(run, r)| r.results.cells.iter().map(move |cell| At { run, cell }))
        .collect()
}

// ---------------------------------------------------------------------------------------
// Goals

/// A goal's figure.
#[derive(Debug, Clone, PartialEq)]
enum Value {
    Ratio(f64),
    /// G7: Δp50, Δp99, Δp99.9, ms.
    Deltas([f64; 3]),
    /// Not computable; why.
    Unknown(String),
}

/// What a figure must be.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Bound {
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
enum Met {
    Yes,
    No,
    /// G10 between the floor and the goal.
    FloorOnly,
    /// No goal here, or no figure.
    NotApplicable,
}

impl Bound {
    fn text(self) -> String {
        match self {
            Bound::AtMost(b) => format!("≤ {b}"),
            Bound::AtLeast(b) => format!("≥ {b}"),
            Bound::PerN { k, n } => format!("≤ {k}/{n} = {}", sig(k / f64::from(n), 3)),
            Bound::Deltas(d) => format!("≤ {} / {} / {} ms", d[0], d[1], d[2]),
            Bound::Isolation => "≥ 0.99 (floor 0.95)".into(),
            Bound::None => "–".into(),
        }
    }

    fn met(self, value: &Value) -> Met {
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
struct Goal {
    id: &'static str,
    what: String,
    /// N (subscribers; readers for G13; fast subscriptions for G10); several when the
    /// figure could be taken at none of them.
    ns: Vec<u32>,
    /// The cell or file the figure was taken from.
    from: String,
    value: Value,
    bound: Bound,
    met: Met,
    /// Why the two arms of the cell did not do the same work, if they did not.
    unequal: Option<String>,
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

fn ratio(num: f64, den: f64, den_zero: &str) -> Result<Value, String> {
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
fn cell_goals(cells: &[At<'_>], runs: usize) -> Vec<Goal> {
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

fn join(ns: &[u32]) -> String {
    ns.iter().map(u32::to_string).collect::<Vec<_>>().join(", ")
}

/// G10: one row per isolation file, by N.
fn isolation_goals(files: &[(PathBuf, Isolation)]) -> Vec<Goal> {
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

// ---------------------------------------------------------------------------------------
// Criterion (G13)

/// The two groups of the `dispatch` benchmark, as criterion names their directories
/// (`dispatch/log_read` → `dispatch_log_read`).
const DISPATCH_GROUPS: [&str; 2] = ["log_read", "deliver_ack"];

/// One `dispatch` measurement.
#[derive(Debug, Clone, PartialEq)]
struct Dispatch {
    /// `log_read` or `deliver_ack`.
    group: &'static str,
    readers: u32,
    /// Mean time of one iteration (every reader through every record), ns.
    mean_ns: f64,
}

#[derive(Debug, Deserialize)]
struct Estimates {
    mean: Estimate,
}

#[derive(Debug, Deserialize)]
struct Estimate {
    point_estimate: f64,
}

/// Every `<dir>/dispatch_<group>/<R>/new/estimates.json`, by group then readers.
fn read_dispatch(dir: &Path) -> anyhow::Result<Vec<Dispatch>> {
    if !dir.is_dir() {
        bail!("criterion directory {} does not exist", dir.display());
    }
    let mut found = Vec::new();
    for group in DISPATCH_GROUPS {
        let gdir = dir.join(format!("dispatch_{group}"));
        if !gdir.is_dir() {
            continue;
        }
        let entries =
            std::fs::read_dir(&gdir).with_context(|| format!("reading {}", gdir.display()))?;
        let mut points = Vec::new();
        for entry in entries {
            let entry = entry.with_context(|| format!("reading {}", gdir.display()))?;
            // `report` and other non-numeric directories are criterion's own.
            let Some(readers) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<u32>().ok())
            else {
                continue;
            };
            let file = entry.path().join("new").join("estimates.json");
            let estimates: Estimates = read_json(&file, "criterion estimates")?;
            points.push(Dispatch {
                group,
                readers,
                mean_ns: estimates.mean.point_estimate,
            });
        }
        points.sort_by_key(|d| d.readers);
        found.extend(points);
    }
    if found.is_empty() {
        bail!(
            "no `dispatch` benchmark in {}: expected dispatch_log_read/<R>/new/estimates.json \
             (run `cargo bench -p fanout-server --bench dispatch`)",
            dir.display()
        );
    }
    Ok(found)
}

/// G13: per-reader time at R readers ÷ at 1 reader (records per reader are the same).
fn dispatch_goals(points: &[Dispatch]) -> Vec<Goal> {
    points
        .iter()
        .map(|p| {
            let one = points
                .iter()
                .find(|o| o.group == p.group && o.readers == 1)
                .map(|o| o.mean_ns);
            let value = match one {
                Some(one) => ratio(
                    p.mean_ns / f64::from(p.readers.max(1)),
                    one,
                    &format!("dispatch/{} at 1 reader took 0 ns", p.group),
                )
                .unwrap_or_else(Value::Unknown),
                None => Value::Unknown(format!("no 1-reader run of dispatch/{}", p.group)),
            };
            let bound = if p.readers == 64 {
                Bound::AtMost(1.25)
            } else {
                Bound::None
            };
            Goal {
                id: "G13",
                what: "dispatch: per-reader cost ÷ at 1 reader".into(),
                ns: vec![p.readers],
                from: format!(
                    "criterion dispatch/{}, {} reader{}",
                    p.group,
                    p.readers,
                    if p.readers == 1 { "" } else { "s" }
                ),
                met: bound.met(&value),
                value,
                bound,
                unequal: None,
            }
        })
        .collect()
}

// ---------------------------------------------------------------------------------------
// Markdown

/// Footnotes: each distinct reason once, numbered in order of first use.
#[derive(Debug, Default)]
struct Notes {
    reasons: Vec<String>,
}

impl Notes {
    fn mark(&mut self, reason: &str) -> String {
        let i = match self.reasons.iter().position(|r| r == reason) {
            Some(i) => i,
            None => {
                self.reasons.push(reason.into());
                self.reasons.len() - 1
            }
        };
        format!("[^{}]", i + 1)
    }

    /// `–` and the footnote saying why.
    fn dash(&mut self, reason: &str) -> String {
        format!("–{}", self.mark(reason))
    }

    fn render(&self, s: &mut String) {
        for (i, r) in self.reasons.iter().enumerate() {
            let _ = writeln!(s, "[^{}]: {}", i + 1, cell_text(r));
        }
    }
}

fn render(
    runs: &[Run],
    isolation: &[(PathBuf, Isolation)],
    dispatch: &[Dispatch],
    plots: &[Plot],
) -> String {
    let mut s = String::from("# fanout benchmark report\n\n");
    if runs.is_empty() && isolation.is_empty() && dispatch.is_empty() {
        s.push_str("Nothing was measured: no results, isolation or criterion files were given.\n");
        return s;
    }
    let mut notes = Notes::default();
    let cells = cells(runs);

    if !runs.is_empty() {
        s.push_str("## Runs\n\n");
        for (i, run) in runs.iter().enumerate() {
            let r = &run.results;
            let _ = write!(
                s,
                "{}. `{}`: {}; commit {}; {}",
                i + 1,
                run.path.display(),
                machine(&r.machine),
                r.commit.as_deref().unwrap_or("unknown"),
                code(&r.command)
            );
            if r.interrupted {
                s.push_str("; **interrupted** (only the cells below were measured)");
            }
            s.push('\n');
        }
        s.push('\n');
    }

    s.push_str("## Goals\n\n");
    let goals: Vec<Goal> = cell_goals(&cells, runs.len())
        .into_iter()
        .chain(isolation_goals(isolation))
        .chain(dispatch_goals(dispatch))
        .collect();
    if goals.is_empty() {
        s.push_str("Nothing was measured: the results files hold no cells.\n\n");
    } else {
        goals_table(&mut s, &goals, &mut notes);
    }
    s.push_str(
        "Not measured here: G9 (throughput with acks on ÷ acks off), G12 (server RSS per idle \
         stream).\n\n",
    );

    if !isolation.is_empty() {
        isolation_section(&mut s, isolation, &mut notes);
    }
    if !dispatch.is_empty() {
        dispatch_section(&mut s, dispatch, &mut notes);
    }
    for (i, run) in runs.iter().enumerate() {
        let _ = writeln!(s, "## Cells of [{}] `{}`\n", i + 1, run.path.display());
        cells_table(&mut s, &run.results.cells, &mut notes);
    }
    if !plots.is_empty() {
        s.push_str("## Plots\n\n");
        for p in plots {
            let _ = writeln!(s, "![{}]({})\n", p.alt, p.link);
        }
    }
    notes.render(&mut s);
    s
}

fn machine(m: &super::result::Machine) -> String {
    let or = |v: &str, unknown: &'static str| {
        if v.is_empty() {
            unknown.to_string()
        } else {
            v.to_string()
        }
    };
    format!(
        "{}, {} cores, {} GiB, kernel {}, pinning {}, Kafka {}",
        or(&m.cpu, "CPU unknown"),
        m.cores,
        sig(m.memory_gib, 3),
        or(&m.kernel, "unknown"),
        or(&m.pinning, "unknown"),
        or(&m.kafka, "unknown")
    )
}

fn goals_table(s: &mut String, goals: &[Goal], notes: &mut Notes) {
    s.push_str("| goal | what | N | taken from | value | goal | met |\n");
    s.push_str("|---|---|---|---|---|---|---|\n");
    for (i, g) in goals.iter().enumerate() {
        let mut value = match &g.value {
            Value::Ratio(v) => sig(*v, 3),
            Value::Deltas(d) => format!("{} / {} / {}", sig(d[0], 2), sig(d[1], 2), sig(d[2], 2)),
            Value::Unknown(why) => notes.dash(why),
        };
        // A figure shown although its arms did not do the same work.
        if let (Some(why), false) = (&g.unequal, matches!(g.value, Value::Unknown(_))) {
            let n = join(&g.ns);
            let note = notes.mark(&format!("† {}, N={n}: {why} — not equal work", g.from));
            let _ = write!(value, " †{note}");
        }
        // The goal's description on its first row only.
        let what = if i > 0 && goals[i - 1].id == g.id {
            String::new()
        } else {
            cell_text(&g.what)
        };
        let met = match g.met {
            Met::Yes => "yes",
            Met::No => "no",
            Met::FloorOnly => "floor only",
            Met::NotApplicable => "–",
        };
        let _ = writeln!(
            s,
            "| {} | {what} | {} | {} | {} | {} | {met} |",
            g.id,
            join(&g.ns),
            cell_text(&g.from),
            value,
            g.bound.text()
        );
    }
    s.push_str(
        "\nN: subscriptions and direct consumer groups (G1–G8), fast subscriptions (G10), \
         readers (G13). F/D: the fanout arm's figure ÷ the direct arm's, in the same cell.\n\n",
    );
}

fn isolation_section(s: &mut String, files: &[(PathBuf, Isolation)], notes: &mut Notes) {
    s.push_str("## G10: one subscription throttled\n\n");
    for (path, iso) in files {
        let _ = writeln!(
            s,
            "- `{}`: {}; {}",
            path.display(),
            machine(&iso.machine),
            code(&iso.command)
        );
    }
    s.push_str(
        "\n| N | records | size | slow | round ratios | worst pairs | median | server peak RSS |\n",
    );
    s.push_str("|---|---|---|---|---|---|---|---|\n");
    let mut sorted: Vec<&(PathBuf, Isolation)> = files.iter().collect();
    sorted.sort_by_key(|(_, iso)| iso.fast);
    for (_, iso) in sorted {
        let list = |f: fn(&super::result::IsolationRound) -> f64| {
            iso.rounds
                .iter()
                .map(|r| sig(f(r), 3))
                .collect::<Vec<_>>()
                .join(" · ")
        };
        let median = if iso.rounds.is_empty() {
            notes.dash("no rounds measured")
        } else {
            sig(iso.median_ratio, 3)
        };
        let rss = iso.server_peak_rss_bytes.map_or_else(
            || notes.dash("server RSS not sampled (`isolation` ran without `--server-pid`)"),
            |b| format!("{} MiB", sig(mib(b), 3)),
        );
        let _ = writeln!(
            s,
            "| {} | {} | {} B | {}% | {} | {} | {median} | {rss} |",
            iso.fast,
            thousands(iso.records as f64),
            iso.record_size,
            sig(iso.slow_fraction * 100.0, 2),
            list(|r| r.ratio),
            list(|r| r.worst_pair),
        );
    }
    s.push('\n');
}

fn dispatch_section(s: &mut String, points: &[Dispatch], notes: &mut Notes) {
    s.push_str("## G13: `dispatch` (criterion)\n\n");
    s.push_str("| group | readers | mean per iteration | per reader | ratio to 1 reader |\n");
    s.push_str("|---|---|---|---|---|\n");
    for (p, g) in points.iter().zip(dispatch_goals(points)) {
        let ratio = match &g.value {
            Value::Ratio(v) => sig(*v, 3),
            Value::Deltas(_) => "–".into(),
            Value::Unknown(why) => notes.dash(why),
        };
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {ratio} |",
            p.group,
            p.readers,
            duration_ns(p.mean_ns),
            duration_ns(p.mean_ns / f64::from(p.readers.max(1)))
        );
    }
    s.push('\n');
}

fn cells_table(s: &mut String, cells: &[Cell], notes: &mut Notes) {
    if cells.is_empty() {
        s.push_str("No cells were measured.\n\n");
        return;
    }
    s.push_str(
        "| workload | size | N | arm | rec/s | wall s | rx MiB | fetch req | CPU-s server | \
         CPU-s subscribers | CPU-s consumers | RSS MiB server | RSS MiB consumer (max) | \
         p50 ms | p99 ms | p99.9 ms | missing | dups | same records |\n",
    );
    s.push_str("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n");
    for c in cells {
        let same = match c.same_records {
            Some(true) => "yes".to_string(),
            Some(false) => "**no**".to_string(),
            None => notes.dash("not compared: an arm is missing"),
        };
        for (name, arm) in [("fanout", &c.fanout), ("direct", &c.direct)] {
            let _ = write!(
                s,
                "| {} | {} B | {} | {name} | ",
                c.workload.label(),
                c.record_size,
                c.subscribers
            );
            let Some(a) = arm else {
                let _ = writeln!(
                    s,
                    "{} |  |  |  |  |  |  |  |  |  |  |  |  |  | {same} |",
                    notes.dash(&format!("the {name} arm did not run"))
                );
                continue;
            };
            let rate = if a.wall_seconds > 0.0 {
                sig(a.delivered as f64 / a.wall_seconds, 3)
            } else {
                notes.dash("wall time 0: no rate")
            };
            let cpu = |role: &str| {
                if a.processes.iter().any(|p| p.role == role) {
                    sig(a.cpu_of(role), 3)
                } else {
                    String::new()
                }
            };
            let rss = |roles: &[&str]| {
                a.processes
                    .iter()
                    .filter(|p| roles.contains(&p.role.as_str()))
                    .map(|p| p.peak_rss_bytes)
                    .max()
                    .map_or_else(String::new, |b| sig(mib(b), 3))
            };
            let latency = match c.workload {
                Workload::Backlog { .. } => [String::new(), String::new(), String::new()],
                Workload::Steady { .. } if a.latency.count == 0 => {
                    let dash = notes.dash("no latency samples");
                    [dash.clone(), dash.clone(), dash]
                }
                Workload::Steady { .. } => [
                    sig(a.latency.p50_us / 1000.0, 3),
                    sig(a.latency.p99_us / 1000.0, 3),
                    sig(a.latency.p999_us / 1000.0, 3),
                ],
            };
            let consistent = if a.consistent {
                ""
            } else {
                " (consumers differ)"
            };
            let _ = writeln!(
                s,
                "{rate} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {same}{consistent} |",
                sig(a.wall_seconds, 3),
                sig(mib(a.kafka.rx_bytes), 3),
                thousands(a.kafka.fetch_requests as f64),
                cpu("server"),
                cpu("subscriber"),
                cpu("consumer"),
                rss(&["server"]),
                rss(&["subscriber", "consumer"]),
                latency[0],
                latency[1],
                latency[2],
                thousands(a.missing as f64),
                thousands(a.duplicates as f64),
            );
        }
    }
    s.push_str("\nLatency is shown for steady cells only: a backlog's records wait in Kafka by design.\n\n");
}

// ---------------------------------------------------------------------------------------
// Plots

/// A plot to write.
#[derive(Debug)]
struct Planned {
    /// File name, sanitized and unique.
    file: String,
    chart: svg::Chart,
}

/// A written plot, as the markdown links it.
#[derive(Debug)]
struct Plot {
    alt: String,
    link: String,
}

/// Throughput and CPU versus N per (workload, size), and a latency CDF per steady cell.
fn plan_plots(cells: &[At<'_>]) -> Vec<Planned> {
    // (workload, size) groups in order of first appearance; first cell per N.
    let mut groups: Vec<(String, Workload, u32, Vec<&Cell>)> = Vec::new();
    for at in cells {
        let c = at.cell;
        let key = match c.workload {
            Workload::Backlog { records } => format!("backlog-{records}"),
            Workload::Steady { rate, .. } => format!("steady-{rate}"),
        };
        match groups
            .iter_mut()
            .find(|(k, _, size, _)| *k == key && *size == c.record_size)
        {
            Some((_, _, _, members)) => {
                if members.iter().all(|m| m.subscribers != c.subscribers) {
                    members.push(c);
                }
            }
            None => groups.push((key, c.workload, c.record_size, vec![c])),
        }
    }
    let mut plots = Vec::new();
    let mut used = HashSet::new();
    for (key, workload, size, members) in &groups {
        let what = format!("{}, {size} B", workload.label());
        let series = |f: &dyn Fn(&Arm) -> Option<f64>| -> Vec<svg::Series> {
            [("fanout", false), ("direct", true)]
                .into_iter()
                .map(|(name, direct)| svg::Series {
                    name: name.into(),
                    points: members
                        .iter()
                        .filter_map(|c| {
                            let arm = if direct { &c.direct } else { &c.fanout };
                            Some((f64::from(c.subscribers), f(arm.as_ref()?)?))
                        })
                        .collect(),
                })
                .collect()
        };
        plots.push(Planned {
            file: unique(&mut used, &format!("throughput-{key}-{size}")),
            chart: svg::Chart {
                title: format!("Delivered records/s, {what}"),
                x_label: "N (subscriptions / direct consumer groups)".into(),
                y_label: "records/s, all consumers".into(),
                x_log: false,
                series: series(&|a| {
                    (a.wall_seconds > 0.0).then(|| a.delivered as f64 / a.wall_seconds)
                }),
            },
        });
        plots.push(Planned {
            file: unique(&mut used, &format!("cpu-{key}-{size}")),
            chart: svg::Chart {
                title: format!("Consumer-side CPU, {what}"),
                x_label: "N (subscriptions / direct consumer groups)".into(),
                y_label: "CPU-s (F: server + subscribers, D: consumers)".into(),
                x_log: false,
                // Each arm has only its own roles: F server + subscribers, D consumers.
                series: series(&|a| {
                    Some(a.cpu_of("server") + a.cpu_of("subscriber") + a.cpu_of("consumer"))
                }),
            },
        });
    }
    for at in cells {
        let c = at.cell;
        let Workload::Steady { rate, .. } = c.workload else {
            continue;
        };
        let cdf = |arm: &Option<Arm>| -> Vec<(f64, f64)> {
            arm.as_ref().map_or_else(Vec::new, |a| {
                a.latency
                    .cdf
                    .iter()
                    .map(|(us, f)| (us / 1000.0, *f))
                    .collect()
            })
        };
        plots.push(Planned {
            file: unique(
                &mut used,
                &format!("latency-cdf-{rate}-{}-n{}", c.record_size, c.subscribers),
            ),
            chart: svg::Chart {
                title: format!(
                    "Latency CDF, {}, {} B, N={}",
                    c.workload.label(),
                    c.record_size,
                    c.subscribers
                ),
                x_label: "end-to-end latency, ms (log scale)".into(),
                y_label: "fraction of records".into(),
                x_log: true,
                series: vec![
                    svg::Series {
                        name: "fanout".into(),
                        points: cdf(&c.fanout),
                    },
                    svg::Series {
                        name: "direct".into(),
                        points: cdf(&c.direct),
                    },
                ],
            },
        });
    }
    plots
}

/// `stem` made safe for a file name, `.svg`, with `-2`, `-3`… if already used.
fn unique(used: &mut HashSet<String>, stem: &str) -> String {
    let stem: String = stem
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '_'
            }
        })
        .collect();
    let mut name = format!("{stem}.svg");
    let mut k = 2;
    while !used.insert(name.clone()) {
        name = format!("{stem}-{k}.svg");
        k += 1;
    }
    name
}

fn write_plots(planned: &[Planned], dir: &Path, link_base: &Path) -> anyhow::Result<Vec<Plot>> {
    std::fs::create_dir_all(dir)
        .with_context(|| format!("creating directory {}", dir.display()))?;
    let rel = relative(dir, link_base)?;
    planned
        .iter()
        .map(|p| {
            let path = dir.join(&p.file);
            std::fs::write(&path, svg::render(&p.chart))
                .with_context(|| format!("writing plot {}", path.display()))?;
            Ok(Plot {
                alt: p.chart.title.clone(),
                link: link(&rel.join(&p.file)),
            })
        })
        .collect()
}

/// `target` relative to directory `base` (lexically: `..` is not resolved through links).
fn relative(target: &Path, base: &Path) -> anyhow::Result<PathBuf> {
    let absolute = |p: &Path| -> anyhow::Result<PathBuf> {
        let abs =
            std::path::absolute(p).with_context(|| format!("making {} absolute", p.display()))?;
        let mut out = PathBuf::new();
        for c in abs.components() {
            match c {
                Component::CurDir => {}
                Component::ParentDir => {
                    out.pop();
                }
                other => out.push(other),
            }
        }
        Ok(out)
    };
    let (t, b) = (absolute(target)?, absolute(base)?);
    let (t, b): (Vec<_>, Vec<_>) = (t.components().collect(), b.components().collect());
    let common = t.iter().zip(&b).take_while(|(x, y)| x == y).count();
    let mut rel = PathBuf::new();
    for _ in common..b.len() {
        rel.push("..");
    }
    for c in &t[common..] {
        rel.push(c);
    }
    Ok(rel)
}

/// A relative path as a markdown link target: `/` separators, spaces and parentheses escaped.
fn link(p: &Path) -> String {
    p.components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join("/")
        .replace(' ', "%20")
        .replace('(', "%28")
        .replace(')', "%29")
}

// ---------------------------------------------------------------------------------------
// Numbers and text

/// `x` to `digits` significant digits; whole numbers with thousands separators when the
/// integer part already has that many digits.
fn sig(x: f64, digits: i32) -> String {
    if !x.is_finite() {
        return "–".into();
    }
    if x == 0.0 {
        return "0".into();
    }
    let magnitude = x.abs().log10().floor() as i32;
    if magnitude >= digits - 1 {
        return thousands(x);
    }
    let decimals = (digits - 1 - magnitude) as usize;
    format!("{x:.decimals$}")
}

/// `x` rounded to a whole number, with `,` every three digits.
fn thousands(x: f64) -> String {
    let digits = format!("{:.0}", x.abs());
    let mut out = String::new();
    for (i, ch) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(ch);
    }
    if x < 0.0 && digits != "0" {
        out.insert(0, '-');
    }
    out
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / f64::from(1u32 << 20)
}

/// A duration given in ns, in the unit that suits it.
fn duration_ns(ns: f64) -> String {
    let (v, unit) = if ns >= 1e9 {
        (ns / 1e9, "s")
    } else if ns >= 1e6 {
        (ns / 1e6, "ms")
    } else if ns >= 1e3 {
        (ns / 1e3, "µs")
    } else {
        (ns, "ns")
    };
    format!("{} {unit}", sig(v, 4))
}

/// Inline code, even when the text holds backticks.
fn code(text: &str) -> String {
    if text.is_empty() {
        "command unknown".into()
    } else if text.contains('`') {
        format!("`` {text} ``")
    } else {
        format!("`{text}`")
    }
}

/// Text safe inside a table cell (and on one line).
fn cell_text(text: &str) -> String {
    text.replace('|', "\\|").replace('\n', " ")
}

#[cfg(test)]
mod tests {
    use std::time::{SystemTime, UNIX_EPOCH};

    use super::super::result::{IsolationRound, KafkaTraffic, Latency, Machine, Process};
    use super::*;

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
        assert!(
            md.contains("Test CPU, 2 cores, 24.0 GiB, kernel 6.8.0, pinning none, Kafka 4.3.1")
        );
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
}
