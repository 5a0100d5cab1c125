//! The SVG plots of the cells: which to draw, their file names and their links.

use std::collections::HashSet;
use std::path::{Component, Path, PathBuf};

use anyhow::Context;

use super::At;
use crate::bench::result::{Arm, Cell, Workload};
use crate::bench::svg;

/// A plot to write.
#[derive(Debug)]
pub(super) struct Planned {
    /// File name, sanitized and unique.
    file: String,
    chart: svg::Chart,
}

/// A written plot, as the markdown links it.
#[derive(Debug)]
pub(super) struct Plot {
    pub(super) alt: String,
    pub(super) link: String,
}

/// Throughput and CPU versus N per (workload, size), and a latency CDF per steady cell.
pub(super) fn plan_plots(cells: &[At<'_>]) -> Vec<Planned> {
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
pub(super) fn unique(used: &mut HashSet<String>, stem: &str) -> String {
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

pub(super) fn write_plots(
    planned: &[Planned],
    dir: &Path,
    link_base: &Path,
) -> anyhow::Result<Vec<Plot>> {
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
pub(super) fn relative(target: &Path, base: &Path) -> anyhow::Result<PathBuf> {
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
pub(super) fn link(p: &Path) -> String {
    p.components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join("/")
        .replace(' ', "%20")
        .replace('(', "%28")
        .replace(')', "%29")
}
