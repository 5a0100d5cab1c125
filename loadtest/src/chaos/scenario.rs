//! The faults a chaos run injects under load, each step followed by a bounded wait until
//! the cluster has settled.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::check::model::Owned;

use super::Run;

/// Which fault to inject.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Scenario {
    /// No fault: the load alone (lost 0, duplicates 0, no order inversion).
    Baseline,
    /// SIGTERM each shard in turn, restart it, wait until settled (lost 0, duplicates 0).
    RollingTerm,
    /// SIGKILL the shard owning the most partitions, restart it after 10 s (lost 0,
    /// duplicates within a bound, recovery time per orphaned partition).
    KillBusiest,
    /// SIGKILL every shard at once, restart them all (lost 0).
    KillAll,
    /// SIGSTOP the busiest shard for 3× the session timeout, then SIGCONT (lost 0, no
    /// cursor moved backwards).
    Pause,
    /// Start with `--shards`, add one more under load (lost 0, duplicates 0; which
    /// partitions moved to it).
    AddShard,
}

impl Scenario {
    pub fn name(self) -> &'static str {
        match self {
            Self::Baseline => "baseline",
            Self::RollingTerm => "rolling-term",
            Self::KillBusiest => "kill-busiest",
            Self::KillAll => "kill-all",
            Self::Pause => "pause",
            Self::AddShard => "add-shard",
        }
    }

    /// Shards the run knows (endpoints subscribers get), for `shards` started at first.
    pub fn endpoints(self, shards: usize) -> usize {
        if self == Self::AddShard {
            shards + 1
        } else {
            shards
        }
    }
}

fn count(o: &Owned) -> usize {
    o.values().map(Vec::len).sum()
}

/// The live shard owning the most partitions (the lowest index among equals).
fn busiest(owners: &BTreeMap<usize, Owned>) -> Option<usize> {
    owners
        .iter()
        .max_by_key(|(i, o)| (count(o), std::cmp::Reverse(**i)))
        .map(|(i, _)| *i)
}

/// Runs the scenario's steps; an error stops the steps (the caller records it and still
/// checks what was delivered).
pub async fn run(s: Scenario, run: &mut Run) -> anyhow::Result<()> {
    match s {
        Scenario::Baseline => run.under_load(Duration::from_secs(10)).await,
        Scenario::RollingTerm => rolling_term(run).await?,
        Scenario::KillBusiest => kill_busiest(run).await?,
        Scenario::KillAll => kill_all(run).await?,
        Scenario::Pause => pause(run).await?,
        Scenario::AddShard => add_shard(run).await?,
    }
    Ok(())
}

async fn rolling_term(run: &mut Run) -> anyhow::Result<()> {
    for i in run.shards.live() {
        let owned = run.owned_by(i);
        run.event("term", Some(i), owned, String::new());
        let wait = run.drain_timeout + Duration::from_secs(30);
        match run.shards.terminate(i, wait).await {
            Ok(status) => run.event("exited", Some(i), Owned::new(), status.to_string()),
            Err(e) => run.event("exited", Some(i), Owned::new(), format!("{e:#}")),
        }
        run.start_shard(i).await?;
        run.settle(&format!("after restarting shard-{i}")).await;
        run.under_load(Duration::from_secs(2)).await;
    }
    Ok(())
}

async fn kill_busiest(run: &mut Run) -> anyhow::Result<()> {
    let owners = run.settle("before the kill").await;
    let Some(i) = busiest(&owners) else {
        anyhow::bail!("no live shard owns a partition");
    };
    run.shards.kill(i);
    run.event("kill", Some(i), owners[&i].clone(), "SIGKILL".into());
    run.under_load(Duration::from_secs(10)).await;
    run.start_shard(i).await?;
    run.settle(&format!("after restarting shard-{i}")).await;
    Ok(())
}

async fn kill_all(run: &mut Run) -> anyhow::Result<()> {
    let live = run.shards.live();
    for &i in &live {
        run.shards.kill(i);
        let owned = run.owned_by(i);
        run.event("kill", Some(i), owned, "SIGKILL".into());
    }
    for &i in &live {
        run.shards.start(i)?;
        run.event("start", Some(i), Owned::new(), String::new());
    }
    for &i in &live {
        run.wait_ready(i).await?;
    }
    run.settle("after restarting every shard").await;
    Ok(())
}

async fn pause(run: &mut Run) -> anyhow::Result<()> {
    let owners = run.settle("before the pause").await;
    let Some(i) = busiest(&owners) else {
        anyhow::bail!("no live shard owns a partition");
    };
    run.shards.pause(i)?;
    let stopped_for = run.session_timeout * 3;
    run.event(
        "stop",
        Some(i),
        owners[&i].clone(),
        format!("SIGSTOP for {}", humantime::format_duration(stopped_for)),
    );
    run.under_load(stopped_for).await;
    run.shards.resume(i)?;
    run.event("cont", Some(i), Owned::new(), "SIGCONT".into());
    // When it is given partitions again (the checker allows its cursor writes of a
    // partition only from then on): watched closely until its assignment holds for 3 s.
    let watch = std::time::Instant::now();
    let mut seen: Owned = Owned::new();
    let mut stable_since = std::time::Instant::now();
    while watch.elapsed() < run.session_timeout * 3 {
        // Stamped with the time the question was asked (it may have been given it while the
        // answer came: within 250 ms, which the checker allows).
        let asked_at = super::load::now_ms();
        if let Some(owned) = run.shards.owned_by_itself(i).await {
            let mut new = Owned::new();
            for (t, ps) in &owned {
                for p in ps {
                    let known = seen.entry(t.clone()).or_default();
                    if !known.contains(p) {
                        known.push(*p);
                        new.entry(t.clone()).or_default().push(*p);
                    }
                }
            }
            if new.is_empty() {
                if !seen.is_empty() && stable_since.elapsed() >= Duration::from_secs(3) {
                    break;
                }
            } else {
                stable_since = std::time::Instant::now();
                run.event_at(asked_at, "owns", Some(i), new, "given to it again".into());
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    run.settle(&format!("after shard-{i} woke")).await;
    Ok(())
}

async fn add_shard(run: &mut Run) -> anyhow::Result<()> {
    let before = run.settle("before adding a shard").await;
    let i = run.shards.count - 1;
    run.start_shard(i).await?;
    let after = run.settle(&format!("after adding shard-{i}")).await;
    let to_new = after.get(&i).cloned().unwrap_or_default();
    let mut others = Vec::new();
    for (j, owned) in &after {
        for (t, ps) in owned {
            for p in ps {
                let was = before
                    .iter()
                    .find(|(_, o)| o.get(t).is_some_and(|v| v.contains(p)))
                    .map(|(k, _)| *k);
                if *j != i && was != Some(*j) {
                    let was = was.map_or_else(|| "nobody".into(), |k| format!("shard-{k}"));
                    others.push(format!("{t}/{p}: {was} → shard-{j}"));
                }
            }
        }
    }
    let detail = if others.is_empty() {
        format!(
            "{} partitions moved to it, none between the others",
            count(&to_new)
        )
    } else {
        format!(
            "{} partitions moved to it; also moved: {}",
            count(&to_new),
            others.join(", ")
        )
    };
    run.event("moved", Some(i), to_new, detail);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_busiest_shard_owns_the_most_partitions() {
        let o = |n: i32| -> Owned { [("t".to_owned(), (0..n).collect())].into() };
        let owners: BTreeMap<usize, Owned> = [(0, o(2)), (1, o(4)), (2, o(4))].into();
        assert_eq!(busiest(&owners), Some(1));
        assert_eq!(busiest(&BTreeMap::new()), None);
    }
}
