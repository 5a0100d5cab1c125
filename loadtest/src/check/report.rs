//! The checker's report: counts and figures, then the scenario's expectations as checks.

use std::fmt::Write as _;

use super::model;
use super::{
    Failover, Input, Regression, SubStats, by_shard, count, cursor_regressions,
    duplicates_after_events, failover, subscriptions,
};

/// One expectation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    pub name: String,
    pub pass: bool,
    pub detail: String,
}

fn check(name: &str, pass: bool, detail: String) -> Check {
    Check {
        name: name.into(),
        pass,
        detail,
    }
}

/// Figures and checks of a run.
#[derive(Debug, Default)]
pub struct Report {
    pub title: String,
    pub subs: Vec<SubStats>,
    pub total: SubStats,
    /// Lines printed between the table and the checks.
    pub notes: Vec<String>,
    pub checks: Vec<Check>,
}

impl Report {
    pub fn passed(&self) -> usize {
        self.checks.iter().filter(|c| c.pass).count()
    }

    pub fn failed(&self) -> usize {
        self.checks.len() - self.passed()
    }

    pub fn render(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "== {} ==", self.title);
        let w = self
            .subs
            .iter()
            .map(|r| r.name.len())
            .max()
            .unwrap_or(5)
            .max(12);
        let _ = writeln!(
            s,
            "{:<w$} {:>9} {:>9} {:>6} {:>10} {:>10} {:>8} {:>9} {:>10}",
            "subscription",
            "produced",
            "unique",
            "lost",
            "unexpected",
            "duplicates",
            "dup_pct",
            "max_deliv",
            "inversions"
        );
        for r in self.subs.iter().chain([&self.total]) {
            let _ = writeln!(
                s,
                "{:<w$} {:>9} {:>9} {:>6} {:>10} {:>10} {:>7.3}% {:>9} {:>10}",
                r.name,
                r.produced,
                r.delivered_unique,
                r.lost,
                r.unexpected,
                r.duplicates,
                r.dup_pct(),
                r.max_deliveries,
                r.order_inversions
            );
        }
        for n in &self.notes {
            let _ = writeln!(s, "{n}");
        }
        for c in &self.checks {
            let verdict = if c.pass { "PASS" } else { "FAIL" };
            let _ = writeln!(s, "{verdict} {}: {}", c.name, c.detail);
        }
        let _ = writeln!(s, "{} passed, {} failed", self.passed(), self.failed());
        s
    }
}

fn secs(ms: i64) -> String {
    format!("{:.1} s", ms as f64 / 1000.0)
}

fn owned(o: &model::Owned) -> String {
    o.iter()
        .map(|(t, ps)| {
            let ps: Vec<String> = ps.iter().map(i32::to_string).collect();
            format!("{t}[{}]", ps.join(","))
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Counts, figures and the scenario's checks.
pub fn analyse(input: &Input) -> Report {
    let subs = subscriptions(input);
    let stats = count(&input.produced, &input.delivered, &subs);
    let mut total = SubStats {
        name: "total".into(),
        ..SubStats::default()
    };
    for s in &stats {
        total.add(s);
    }
    let mut r = Report {
        title: match &input.meta {
            Some(m) => format!(
                "{}: cluster {}, {} shards, {} topics × {} partitions, {} subscriptions, {} records/s",
                input.scenario,
                m.cluster,
                m.shards.len(),
                m.topics.len(),
                m.partitions,
                m.subscriptions.len(),
                m.rate
            ),
            None => format!("{}: {} subscriptions", input.scenario, subs.len()),
        },
        ..Report::default()
    };
    for s in stats.iter().filter(|s| s.lost > 0) {
        r.notes.push(format!(
            "lost by {}: {} records, first (partition, offset) {:?}",
            s.name, s.lost, s.lost_examples
        ));
    }
    if let Some(m) = input.meta.as_ref().filter(|m| !m.events.is_empty()) {
        r.notes.push("events (seconds since the start):".into());
        for e in &m.events {
            let who = e.shard.map(|i| format!(" shard-{i}")).unwrap_or_default();
            let mut line = format!(
                "  +{:>6.1}s {}{who}",
                (e.at_ms - m.started_at_ms) as f64 / 1000.0,
                e.kind
            );
            if !e.partitions.is_empty() {
                line.push_str(&format!(" {}", owned(&e.partitions)));
            }
            if !e.detail.is_empty() {
                line.push_str(&format!(" ({})", e.detail));
            }
            r.notes.push(line);
        }
    }
    let shards: Vec<String> = by_shard(&input.delivered)
        .into_iter()
        .map(|(shard, n)| {
            let name = input
                .meta
                .as_ref()
                .and_then(|m| m.shard_index(&shard))
                .map_or(shard, |i| format!("shard-{i}"));
            format!("{name} {n}")
        })
        .collect();
    r.notes
        .push(format!("deliveries by shard: {}", shards.join(", ")));
    if let Some(m) = &input.meta
        && total.duplicates > 0
    {
        let after: Vec<String> = duplicates_after_events(m, &input.delivered)
            .into_iter()
            .map(|(label, n)| format!("{n} after {label}"))
            .collect();
        r.notes.push(format!(
            "duplicates by the last fault before them: {}",
            after.join(", ")
        ));
    }
    let regressions = input.cursors.as_deref().map(cursor_regressions);
    if let (Some(c), Some(reg)) = (&input.cursors, &regressions) {
        let keys: std::collections::HashSet<&str> = c.iter().map(|r| r.key.as_str()).collect();
        r.notes.push(format!(
            "cursors topic: {} records over {} keys, {} regressions",
            c.len(),
            keys.len(),
            reg.len()
        ));
        for g in reg.iter().take(5) {
            r.notes.push(format!(
                "  {} (seek {}): {} after {} (cursors partition {} offset {})",
                g.key, g.seek, g.to, g.from, g.partition, g.offset
            ));
        }
    }
    let failover = input
        .meta
        .as_ref()
        .filter(|_| input.scenario == "kill-busiest")
        .and_then(|m| failover(m, &input.delivered));
    if let Some(f) = &failover {
        r.notes.push(format!(
            "failover: shard-{} killed; orphaned partition → first delivery by a live owner (first / every subscription):",
            f.shard
        ));
        let t = |v: Option<i64>| v.map_or_else(|| "never".into(), secs);
        for (topic, p, any, all) in &f.recovery {
            r.notes
                .push(format!("  {topic}/{p}: {} / {}", t(*any), t(*all)));
        }
        r.notes.push(format!(
            "  max {}; duplicate bound {} = {} credits in flight + {} delivered by shard-{} in the {} before its kill",
            t(f.max_recovery_ms()),
            f.duplicate_bound(),
            f.in_flight,
            f.unflushed.iter().map(|(_, n)| n).sum::<usize>(),
            f.shard,
            secs(f.window_ms)
        ));
    }
    r.checks = expectations(input, &total, regressions.as_deref(), failover.as_ref());
    r.subs = stats;
    r.total = total;
    r
}

fn expectations(
    input: &Input,
    total: &SubStats,
    regressions: Option<&[Regression]>,
    failover: Option<&Failover>,
) -> Vec<Check> {
    let failures = input.meta.as_ref().map_or(0, |m| m.produce_failures);
    let mut out = vec![check(
        "produced",
        total.produced > 0,
        format!(
            "{} records acknowledged by Kafka ({failures} sends failed)",
            input.produced.len()
        ),
    )];
    if let Some(m) = &input.meta {
        let unsettled: Vec<String> = m
            .events
            .iter()
            .filter(|e| e.kind == "unsettled")
            .map(|e| {
                format!(
                    "+{:.1}s {}",
                    (e.at_ms - m.started_at_ms) as f64 / 1000.0,
                    e.detail
                )
            })
            .collect();
        out.push(check(
            "settled",
            unsettled.is_empty(),
            if unsettled.is_empty() {
                "after every step each partition had exactly one live owner".into()
            } else {
                format!("not settled: {}", unsettled.join("; "))
            },
        ));
    }
    if let Some(m) = &input.meta {
        let errors: Vec<&str> = m
            .events
            .iter()
            .filter(|e| e.kind == "error")
            .map(|e| e.detail.as_str())
            .collect();
        out.push(check(
            "steps",
            errors.is_empty(),
            if errors.is_empty() {
                "every step of the scenario ran".into()
            } else {
                errors.join("; ")
            },
        ));
    }
    let lost = || {
        check(
            "lost",
            total.lost == 0,
            format!(
                "{} of {} records never delivered",
                total.lost, total.produced
            ),
        )
    };
    let no_dups = || {
        check(
            "duplicates",
            total.duplicates == 0,
            format!(
                "{} (max deliveries of one record {})",
                total.duplicates, total.max_deliveries
            ),
        )
    };
    match input.scenario.as_str() {
        "baseline" => {
            out.extend([lost(), no_dups()]);
            out.push(check(
                "order",
                total.order_inversions == 0,
                format!("{} order inversions", total.order_inversions),
            ));
        }
        "rolling-term" => {
            out.extend([lost(), no_dups()]);
            if let Some(m) = &input.meta {
                let exits: Vec<&str> = m
                    .events
                    .iter()
                    .filter(|e| e.kind == "exited")
                    .map(|e| e.detail.as_str())
                    .collect();
                let clean = !exits.is_empty() && exits.iter().all(|d| *d == "exit status: 0");
                out.push(check(
                    "graceful",
                    clean,
                    format!("shard exits after SIGTERM: {}", exits.join(", ")),
                ));
            }
        }
        "add-shard" => {
            out.extend([lost(), no_dups()]);
            let moved = input.meta.as_ref().map_or(0, |m| {
                m.events
                    .iter()
                    .filter(|e| e.kind == "moved")
                    .map(|e| e.partitions.values().map(Vec::len).sum::<usize>())
                    .sum()
            });
            out.push(check(
                "moved",
                moved > 0,
                format!("{moved} partitions moved to the added shard"),
            ));
        }
        "kill-all" => out.push(lost()),
        "kill-busiest" => {
            out.push(lost());
            match failover {
                None => out.push(check(
                    "failover",
                    false,
                    "no kill in the run's events".into(),
                )),
                Some(f) => {
                    let bound = f.duplicate_bound();
                    out.push(check(
                        "duplicates",
                        total.duplicates <= bound,
                        format!(
                            "{} {} bound {bound} (max deliveries of one record {})",
                            total.duplicates,
                            if total.duplicates <= bound {
                                "≤"
                            } else {
                                ">"
                            },
                            total.max_deliveries
                        ),
                    ));
                    let goal = input
                        .meta
                        .as_ref()
                        .map_or(0, |m| m.session_timeout_ms as i64 + 6000);
                    out.push(check(
                        "recovery",
                        !f.recovery.is_empty() && f.max_recovery_ms().is_some_and(|t| t <= goal),
                        format!(
                            "slowest orphaned partition served again after {} (goal ≤ session timeout + 6 s = {})",
                            if f.recovery.is_empty() {
                                "- (the killed shard owned no partition)".into()
                            } else {
                                f.max_recovery_ms().map_or_else(|| "never".into(), secs)
                            },
                            secs(goal)
                        ),
                    ));
                }
            }
        }
        "pause" => {
            out.push(lost());
            out.push(match regressions {
                None => check(
                    "cursors",
                    false,
                    "the cursors topic was not read (no cursors.jsonl)".into(),
                ),
                Some(reg) => check(
                    "cursors",
                    reg.is_empty(),
                    format!(
                        "{} cursors moved backwards within a seek generation",
                        reg.len()
                    ),
                ),
            });
            out.extend(zombie_checks(input));
        }
        _ => out.push(lost()),
    }
    out.push(check(
        "unexpected",
        total.unexpected == 0,
        format!(
            "{} deliveries of records never produced (or with another sequence number)",
            total.unexpected
        ),
    ));
    if input.scenario != "pause"
        && let Some(reg) = regressions
    {
        out.push(check(
            "cursors",
            reg.is_empty(),
            format!(
                "{} cursors moved backwards within a seek generation",
                reg.len()
            ),
        ));
    }
    out
}

/// The paused shard's checks: no cursor it wrote before waking became visible after another
/// shard took its partition over, and it sent no stale record after waking.
fn zombie_checks(input: &Input) -> Vec<Check> {
    let Some(m) = &input.meta else {
        return vec![check(
            "zombie",
            false,
            "no run.json: which shard was stopped?".into(),
        )];
    };
    let stop = m.events.iter().find(|e| e.kind == "stop");
    let cont = m.events.iter().find(|e| e.kind == "cont");
    let (Some(stop), Some(cont)) = (stop, cont) else {
        return vec![check(
            "zombie",
            false,
            "no stop and cont in the run's events".into(),
        )];
    };
    let Some(shard) = stop.shard.and_then(|i| m.shards.get(i)) else {
        return vec![check(
            "zombie",
            false,
            "the stopped shard is unknown".into(),
        )];
    };
    let mut out = Vec::new();
    out.push(match &input.cursors {
        None => check(
            "zombie cursors",
            false,
            "the cursors topic was not read (no cursors.jsonl)".into(),
        ),
        Some(records) if !records.iter().any(|r| r.shard.is_some()) => check(
            "zombie cursors",
            false,
            "cursor records do not name their writer (server too old?)".into(),
        ),
        Some(records) => {
            let reassigned: std::collections::HashMap<(String, i32), i64> = m
                .events
                .iter()
                .filter(|e| e.kind == "owns" && e.shard == stop.shard && e.at_ms >= cont.at_ms)
                .flat_map(|e| {
                    e.partitions.iter().flat_map(move |(t, ps)| {
                        ps.iter().map(move |p| ((t.clone(), *p), e.at_ms))
                    })
                })
                .fold(std::collections::HashMap::new(), |mut m, (k, at)| {
                    m.entry(k).or_insert(at);
                    m
                });
            let bad = crate::check::zombie_cursor_writes(
                records,
                &shard.id,
                stop.at_ms,
                cont.at_ms,
                &reassigned,
            );
            let detail = match bad.first() {
                None => format!(
                    "no cursor record of {} became visible for a partition another shard had taken over, but after Kafka gave it back",
                    shard.id
                ),
                Some(r) => format!(
                    "{} cursor records of {} became visible for partitions another shard had taken over, e.g. {} = {} at {}:{}",
                    bad.len(),
                    shard.id,
                    r.key,
                    r.cursor,
                    r.partition,
                    r.offset
                ),
            };
            check("zombie cursors", bad.is_empty(), detail)
        }
    });
    // Without a takeover the zombie checks would pass for nothing.
    let taken_over = input
        .delivered
        .iter()
        .filter(|d| {
            d.at_ms > stop.at_ms
                && d.at_ms < cont.at_ms
                && !crate::check::model::same_endpoint(&d.shard, &shard.grpc)
                && stop
                    .partitions
                    .get(&d.topic)
                    .is_some_and(|ps| ps.contains(&d.partition))
        })
        .count();
    out.push(check(
        "takeover",
        taken_over > 0,
        format!(
            "{taken_over} records of {}'s partitions delivered by the others while it was stopped",
            shard.id
        ),
    ));
    let stale = crate::check::stale_deliveries(&input.delivered, &shard.grpc, cont.at_ms);
    out.push(check(
        "zombie deliveries",
        stale == 0,
        format!(
            "{stale} records delivered by {} after it woke that another shard delivered too",
            shard.id
        ),
    ));
    out
}
