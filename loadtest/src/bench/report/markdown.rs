//! The markdown page: runs, goals table, isolation and dispatch sections, cells, plots.

use std::fmt::Write as _;
use std::path::PathBuf;

use super::criterion::{Dispatch, dispatch_goals};
use super::goals::{Goal, Met, Value, cell_goals, isolation_goals, join};
use super::plots::Plot;
use super::text::{cell_text, code, duration_ns, mib, sig, thousands};
use super::{Run, cells};
use crate::bench::result::{Cell, Isolation, IsolationRound, Machine, Workload};

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

pub(super) fn render(
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
            if r.warm_up_seconds > 0.0 {
                let _ = write!(
                    s,
                    "; steady latency counted from {} s after the start",
                    r.warm_up_seconds
                );
            }
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

fn machine(m: &Machine) -> String {
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
        let list = |f: fn(&IsolationRound) -> f64| {
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
