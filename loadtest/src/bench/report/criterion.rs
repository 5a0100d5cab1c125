//! Criterion's `dispatch` benchmark (G13): its estimates, read from criterion's directory,
//! and the goal rows computed from them.

use std::path::Path;

use anyhow::{Context, bail};
use serde::Deserialize;

use super::goals::{Bound, Goal, Value, ratio};
use super::read_json;

/// The two groups of the `dispatch` benchmark, as criterion names their directories
/// (`dispatch/log_read` → `dispatch_log_read`).
const DISPATCH_GROUPS: [&str; 2] = ["log_read", "deliver_ack"];

/// One `dispatch` measurement.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Dispatch {
    /// `log_read` or `deliver_ack`.
    pub(super) group: &'static str,
    pub(super) readers: u32,
    /// Mean time of one iteration (every reader through every record), ns.
    pub(super) mean_ns: f64,
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
pub(super) fn read_dispatch(dir: &Path) -> anyhow::Result<Vec<Dispatch>> {
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
pub(super) fn dispatch_goals(points: &[Dispatch]) -> Vec<Goal> {
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
