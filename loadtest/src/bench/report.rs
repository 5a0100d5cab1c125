//! `report`: one markdown page from the files the benchmarks wrote — results of `run` /
//! `sweep` (G1–G8), `isolation --json` (G10) and criterion's `dispatch` output (G13) — with
//! SVG plots beside it.
//!
//! The page gives the machine of every run, the goals of VERIFY.md as F/D figures of the
//! same cell next to their bounds, every cell's figures per arm, and links to the plots.
//! Every figure is computed from those files and nothing else: one that cannot be is shown as
//! `–` with the reason in a footnote, and a figure whose two arms did not do the same work
//! (an arm missing, records missing, record sets that differ) is marked `†`.

mod criterion;
mod goals;
mod markdown;
mod plots;
#[cfg(test)]
mod tests;
mod text;

use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::de::DeserializeOwned;

use self::criterion::read_dispatch;
use self::markdown::render;
use self::plots::{plan_plots, write_plots};
use super::result::{Cell, Isolation, Results};

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
