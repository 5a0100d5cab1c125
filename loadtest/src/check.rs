//! The reliability checker: what was produced against what every subscription received.
//!
//! Per subscription and in total: lost (produced, never delivered), unexpected (delivered,
//! never produced, or with another sequence number than produced), duplicates (deliveries
//! beyond the first of a record), the most deliveries of one record, and order inversions
//! (per subscription × partition, a first delivery of an offset lower than an earlier first
//! delivery's). Then the scenario's expectations, each printed as `PASS`/`FAIL <name>:
//! <detail>`, and `N passed, N failed`.
//!
//! `fanout-loadtest check --produced F --delivered F` runs it offline on what `chaos`
//! wrote; `run.json` and `cursors.jsonl` next to the delivered file are read if present
//! (the scenario, its events and settings; the cursors topic).

pub mod model;
mod report;
#[cfg(test)]
mod tests;

pub use report::analyse;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};

use anyhow::bail;
use model::{CursorRecord, Delivery, Produced, RunMeta, SubscriptionMeta, same_endpoint};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Records Kafka acknowledged (JSON lines, as `chaos` writes them).
    #[arg(long)]
    produced: PathBuf,
    /// Deliveries in the order subscribers received them (JSON lines).
    #[arg(long)]
    delivered: PathBuf,
    /// The run's settings and events (default: `run.json` next to the delivered file).
    #[arg(long)]
    meta: Option<PathBuf>,
    /// The cursors topic's records (default: `cursors.jsonl` next to the delivered file).
    #[arg(long)]
    cursors: Option<PathBuf>,
    /// Scenario whose expectations to check (default: the one in the run document).
    #[arg(long)]
    scenario: Option<String>,
}

/// Everything a check looks at.
#[derive(Debug, Default)]
pub struct Input {
    pub scenario: String,
    pub produced: Vec<Produced>,
    pub delivered: Vec<Delivery>,
    pub meta: Option<RunMeta>,
    pub cursors: Option<Vec<CursorRecord>>,
}

fn sibling(explicit: Option<PathBuf>, of: &Path, name: &str) -> Option<PathBuf> {
    explicit.or_else(|| {
        let p = of.parent().unwrap_or(Path::new(".")).join(name);
        p.exists().then_some(p)
    })
}

/// Loads a run's files.
pub fn load(
    produced: &Path,
    delivered: &Path,
    meta: Option<PathBuf>,
    cursors: Option<PathBuf>,
    scenario: Option<String>,
) -> anyhow::Result<Input> {
    let meta = sibling(meta, delivered, "run.json")
        .map(|p| model::read_meta(&p))
        .transpose()?;
    let cursors = sibling(cursors, delivered, "cursors.jsonl")
        .map(|p| model::read_jsonl(&p))
        .transpose()?;
    let scenario = scenario
        .or_else(|| meta.as_ref().map(|m| m.scenario.clone()))
        .unwrap_or_else(|| "none".into());
    Ok(Input {
        scenario,
        produced: model::read_jsonl(produced)?,
        delivered: model::read_jsonl(delivered)?,
        meta,
        cursors,
    })
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let input = load(
        &args.produced,
        &args.delivered,
        args.meta,
        args.cursors,
        args.scenario,
    )?;
    let report = analyse(&input);
    print!("{}", report.render());
    if report.failed() > 0 {
        bail!(
            "{} of {} checks failed",
            report.failed(),
            report.checks.len()
        );
    }
    Ok(())
}

/// Counts of one subscription (or the total).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SubStats {
    /// `topic/subscription`, or `total`.
    pub name: String,
    /// Records produced to its topic.
    pub produced: usize,
    pub delivered_unique: usize,
    pub deliveries: usize,
    pub lost: usize,
    pub unexpected: usize,
    pub duplicates: usize,
    pub max_deliveries: usize,
    pub order_inversions: usize,
    /// A few lost records, (partition, offset).
    pub lost_examples: Vec<(i32, i64)>,
}

impl SubStats {
    fn add(&mut self, o: &SubStats) {
        self.produced += o.produced;
        self.delivered_unique += o.delivered_unique;
        self.deliveries += o.deliveries;
        self.lost += o.lost;
        self.unexpected += o.unexpected;
        self.duplicates += o.duplicates;
        self.max_deliveries = self.max_deliveries.max(o.max_deliveries);
        self.order_inversions += o.order_inversions;
    }

    fn dup_pct(&self) -> f64 {
        100.0 * self.duplicates as f64 / self.delivered_unique.max(1) as f64
    }
}

/// The subscriptions to count: the run document's, else every one that received something.
fn subscriptions(input: &Input) -> Vec<SubscriptionMeta> {
    if let Some(m) = &input.meta {
        return m.subscriptions.clone();
    }
    let mut seen: Vec<SubscriptionMeta> = Vec::new();
    for d in &input.delivered {
        if !seen
            .iter()
            .any(|s| s.topic == d.topic && s.name == d.subscription)
        {
            seen.push(SubscriptionMeta {
                topic: d.topic.clone(),
                name: d.subscription.clone(),
            });
        }
    }
    seen
}

/// Per-subscription counts, in the order of `subs`.
pub fn count(
    produced: &[Produced],
    delivered: &[Delivery],
    subs: &[SubscriptionMeta],
) -> Vec<SubStats> {
    let mut out = Vec::new();
    for s in subs {
        // (partition, offset) -> (sequence number, deliveries)
        let mut want: HashMap<(i32, i64), (u64, usize)> = produced
            .iter()
            .filter(|p| p.topic == s.topic)
            .map(|p| ((p.partition, p.offset), (p.seq, 0)))
            .collect();
        let mut extra: HashMap<(i32, i64), usize> = HashMap::new();
        let mut highest_first: HashMap<i32, i64> = HashMap::new();
        let mut st = SubStats {
            name: format!("{}/{}", s.topic, s.name),
            produced: want.len(),
            ..SubStats::default()
        };
        for d in delivered
            .iter()
            .filter(|d| d.topic == s.topic && d.subscription == s.name)
        {
            st.deliveries += 1;
            let key = (d.partition, d.offset);
            let n = match want.get_mut(&key) {
                Some((seq, n)) if d.seq.is_none_or(|got| got == *seq) => n,
                _ => extra.entry(key).or_default(),
            };
            *n += 1;
            if *n == 1 {
                let h = highest_first.entry(d.partition).or_insert(d.offset);
                if d.offset < *h {
                    st.order_inversions += 1;
                }
                *h = (*h).max(d.offset);
            }
        }
        let mut lost: Vec<(i32, i64)> = want
            .iter()
            .filter(|(_, (_, n))| *n == 0)
            .map(|(k, _)| *k)
            .collect();
        lost.sort_unstable();
        st.lost = lost.len();
        st.lost_examples = lost.into_iter().take(5).collect();
        st.unexpected = extra.len();
        let counts = want
            .values()
            .map(|(_, n)| *n)
            .chain(extra.values().copied());
        for n in counts {
            if n > 0 {
                st.delivered_unique += 1;
                st.duplicates += n - 1;
                st.max_deliveries = st.max_deliveries.max(n);
            }
        }
        out.push(st);
    }
    out
}

/// A cursor lower than an earlier one of the same key, seek generation and subscription
/// life.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Regression {
    pub key: String,
    pub seek: u64,
    /// The highest cursor stored before.
    pub from: i64,
    pub to: i64,
    /// Where the lower one is in the cursors topic.
    pub partition: i32,
    pub offset: i64,
}

/// Cursors that moved backwards (records taken in the cursors topic's order per partition).
pub fn cursor_regressions(records: &[CursorRecord]) -> Vec<Regression> {
    let mut sorted: Vec<&CursorRecord> = records.iter().collect();
    sorted.sort_by_key(|r| (r.partition, r.offset));
    let mut highest: HashMap<(&str, u64, Option<i64>), i64> = HashMap::new();
    let mut out = Vec::new();
    for r in sorted {
        let h = highest
            .entry((r.key.as_str(), r.seek, r.subscription_created_at_ms))
            .or_insert(r.cursor);
        if r.cursor < *h {
            out.push(Regression {
                key: r.key.clone(),
                seek: r.seek,
                from: *h,
                to: r.cursor,
                partition: r.partition,
                offset: r.offset,
            });
        }
        *h = (*h).max(r.cursor);
    }
    out
}

/// How much earlier than the harness saw a partition given back to a woken shard its first
/// cursor write of it may be stamped (the harness asks every 50 ms, and stamps the answer
/// with the time it asked).
const REASSIGN_TOLERANCE_MS: i64 = 250;

/// The topic and partition of a cursor key `<topic>:<partition>:<subscription>`.
fn key_partition(key: &str) -> Option<(&str, i32)> {
    let mut parts = key.splitn(3, ':');
    Some((parts.next()?, parts.next()?.parse().ok()?))
}

/// Cursor records a stopped shard (a zombie) wrote that became visible after another shard
/// had written the same key since the stop — cursors "moved by the zombie after it lost its
/// partition" — except those it wrote once Kafka had given it the partition again
/// (`reassigned`: (topic, partition) → when the harness first saw that, after it woke).
pub fn zombie_cursor_writes<'a>(
    records: &'a [CursorRecord],
    zombie: &str,
    stopped_at_ms: i64,
    woke_at_ms: i64,
    reassigned: &HashMap<(String, i32), i64>,
) -> Vec<&'a CursorRecord> {
    let mut sorted: Vec<&CursorRecord> = records.iter().collect();
    sorted.sort_by_key(|r| (r.partition, r.offset));
    let mut taken_over: HashSet<&str> = HashSet::new();
    let mut out = Vec::new();
    for r in sorted {
        let by_zombie = r.shard.as_deref() == Some(zombie);
        let at = r.timestamp_ms.unwrap_or(i64::MIN);
        if !by_zombie {
            if at >= stopped_at_ms {
                taken_over.insert(&r.key);
            }
            continue;
        }
        if !taken_over.contains(r.key.as_str()) {
            continue;
        }
        let given_back = key_partition(&r.key)
            .and_then(|(t, p)| reassigned.get(&(t.to_owned(), p)))
            .is_some_and(|&since| at >= woke_at_ms && at >= since - REASSIGN_TOLERANCE_MS);
        if !given_back {
            out.push(r);
        }
    }
    out
}

/// Deliveries by the stopped shard after it woke of records another shard delivered too:
/// stale records a zombie sent before learning it had lost their partition.
pub fn stale_deliveries(deliveries: &[Delivery], zombie_grpc: &str, woke_at_ms: i64) -> usize {
    let mut others: HashSet<(&str, &str, i32, i64)> = HashSet::new();
    for d in deliveries {
        if !crate::check::model::same_endpoint(&d.shard, zombie_grpc) {
            others.insert((&d.topic, &d.subscription, d.partition, d.offset));
        }
    }
    deliveries
        .iter()
        .filter(|d| {
            d.at_ms >= woke_at_ms
                && crate::check::model::same_endpoint(&d.shard, zombie_grpc)
                && others.contains(&(&d.topic, &d.subscription, d.partition, d.offset))
        })
        .count()
}

/// What a SIGKILL of one shard cost (`kill-busiest`).
#[derive(Debug, Clone, PartialEq)]
pub struct Failover {
    pub shard: usize,
    pub killed_at_ms: i64,
    /// When it was started again, if it was.
    pub restarted_at_ms: Option<i64>,
    /// Per orphaned partition: ms from the kill to the first delivery by a live owner, for
    /// the first subscription and for the last one of its topic (`None`: none came).
    pub recovery: Vec<(String, i32, Option<i64>, Option<i64>)>,
    /// How far before the kill a delivery counts as possibly acked but not flushed (ms).
    pub window_ms: i64,
    /// Per subscription: deliveries by the killed shard from `window_ms` before the kill.
    pub unflushed: Vec<(String, usize)>,
    /// In flight: credits of one stream per subscription.
    pub in_flight: usize,
}

impl Failover {
    pub fn duplicate_bound(&self) -> usize {
        self.unflushed.iter().map(|(_, n)| n).sum::<usize>() + self.in_flight
    }

    /// The slowest orphaned partition (every subscription served again); `None` if one
    /// never was.
    pub fn max_recovery_ms(&self) -> Option<i64> {
        self.recovery
            .iter()
            .map(|r| r.3)
            .try_fold(0, |m, r| r.map(|r| m.max(r)))
    }
}

/// The first SIGKILL in the run's events, measured on the deliveries.
pub fn failover(meta: &RunMeta, delivered: &[Delivery]) -> Option<Failover> {
    let kill = meta.events.iter().find(|e| e.kind == "kill")?;
    let k = kill.shard?;
    let killed = &meta.shards.get(k)?.grpc;
    let restarted_at_ms = meta
        .events
        .iter()
        .find(|e| e.kind == "start" && e.shard == Some(k) && e.at_ms > kill.at_ms)
        .map(|e| e.at_ms);
    let by_killed = |d: &Delivery| {
        same_endpoint(&d.shard, killed) && restarted_at_ms.is_none_or(|r| d.at_ms < r)
    };
    let mut first: HashMap<(&str, &str, i32), i64> = HashMap::new();
    for d in delivered
        .iter()
        .filter(|d| d.at_ms >= kill.at_ms && !by_killed(d))
    {
        first
            .entry((&d.topic, &d.subscription, d.partition))
            .or_insert(d.at_ms);
    }
    let mut recovery = Vec::new();
    for (topic, parts) in &kill.partitions {
        for &p in parts {
            let times: Vec<Option<i64>> = meta
                .subscriptions
                .iter()
                .filter(|s| &s.topic == topic)
                .map(|s| {
                    first
                        .get(&(topic.as_str(), s.name.as_str(), p))
                        .map(|t| t - kill.at_ms)
                })
                .collect();
            let any = times.iter().flatten().min().copied();
            let all = times.iter().try_fold(0, |m, t| t.map(|t| m.max(t)));
            recovery.push((topic.clone(), p, any, all));
        }
    }
    let window_ms = 2 * meta.cursor_flush_interval_ms as i64 + 1000;
    let unflushed = meta
        .subscriptions
        .iter()
        .map(|s| {
            let n = delivered
                .iter()
                .filter(|d| d.topic == s.topic && d.subscription == s.name)
                .filter(|d| d.at_ms >= kill.at_ms - window_ms && by_killed(d))
                .count();
            (format!("{}/{}", s.topic, s.name), n)
        })
        .collect();
    Some(Failover {
        shard: k,
        killed_at_ms: kill.at_ms,
        restarted_at_ms,
        recovery,
        window_ms,
        unflushed,
        in_flight: meta.credits as usize * meta.subscriptions.len(),
    })
}

/// Fault events: what a duplicate is attributed to.
const FAULTS: &[&str] = &["term", "kill", "start", "stop", "cont"];

/// Duplicate deliveries (beyond a record's first, per subscription) counted by the last
/// fault event before them (`start of the run` before any), in time order.
pub fn duplicates_after_events(meta: &RunMeta, delivered: &[Delivery]) -> Vec<(String, usize)> {
    let faults: Vec<&model::Event> = meta
        .events
        .iter()
        .filter(|e| FAULTS.contains(&e.kind.as_str()))
        .collect();
    let label = |i: Option<usize>| match i {
        None => "start of the run".to_owned(),
        Some(i) => {
            let e = faults[i];
            let who = e.shard.map(|s| format!(" shard-{s}")).unwrap_or_default();
            format!(
                "+{:.1}s {}{who}",
                (e.at_ms - meta.started_at_ms) as f64 / 1000.0,
                e.kind
            )
        }
    };
    let mut seen: std::collections::HashSet<(&str, &str, i32, i64)> = Default::default();
    let mut counts: BTreeMap<Option<usize>, usize> = BTreeMap::new();
    for d in delivered {
        if !seen.insert((&d.topic, &d.subscription, d.partition, d.offset)) {
            let last = faults.iter().rposition(|e| e.at_ms <= d.at_ms);
            *counts.entry(last).or_default() += 1;
        }
    }
    counts.into_iter().map(|(i, n)| (label(i), n)).collect()
}

/// Deliveries per shard (as the subscribers named it).
pub fn by_shard(delivered: &[Delivery]) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for d in delivered {
        *out.entry(d.shard.clone()).or_default() += 1;
    }
    out
}
