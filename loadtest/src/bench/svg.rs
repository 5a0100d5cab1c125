//! A small line chart written as SVG by hand, for `report`'s plots: axes with ticks and
//! labels, a title, a legend, one polyline with markers per series, and an optional
//! log-scale x axis (for latency distributions). Nothing else; no plotting crate.

use std::fmt::Write as _;

/// Canvas size and the margins around the plot area, pixels.
const WIDTH: f64 = 720.0;
const HEIGHT: f64 = 420.0;
const LEFT: f64 = 80.0;
/// Room for the legend right of the plot area.
const RIGHT: f64 = 130.0;
const TOP: f64 = 44.0;
const BOTTOM: f64 = 56.0;

/// Colours of the series, in order (colour-blind safe: vermilion, blue, green, purple).
const COLOURS: [&str; 4] = ["#d55e00", "#0072b2", "#009e73", "#cc79a7"];

/// At most this many markers per series; longer series (a CDF) get every k-th point marked.
const MAX_MARKERS: usize = 24;

/// One named line of a chart.
#[derive(Debug, Clone, Default)]
pub struct Series {
    pub name: String,
    /// (x, y) points; non-finite ones (and x ≤ 0 on a log axis) are left out.
    pub points: Vec<(f64, f64)>,
}

/// What to draw.
#[derive(Debug, Clone, Default)]
pub struct Chart {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    /// Logarithmic x axis (decades).
    pub x_log: bool,
    pub series: Vec<Series>,
}

/// The chart as a standalone SVG document.
pub fn render(chart: &Chart) -> String {
    let series: Vec<Vec<(f64, f64)>> = chart
        .series
        .iter()
        .map(|s| {
            let mut p: Vec<(f64, f64)> = s
                .points
                .iter()
                .copied()
                .filter(|(x, y)| x.is_finite() && y.is_finite() && (!chart.x_log || *x > 0.0))
                .collect();
            p.sort_by(|a, b| a.0.total_cmp(&b.0));
            p
        })
        .collect();
    let xs = series.iter().flatten().map(|p| p.0);
    let ys = series.iter().flatten().map(|p| p.1);
    let x = if chart.x_log {
        Axis::log(xs)
    } else {
        Axis::linear(xs)
    };
    let y = Axis::linear(ys);
    let (px0, px1) = (LEFT, WIDTH - RIGHT);
    let (py0, py1) = (HEIGHT - BOTTOM, TOP);

    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(
        s,
        r#"<rect width="{WIDTH}" height="{HEIGHT}" fill="white"/>"#
    );
    let _ = writeln!(
        s,
        r#"<text x="{:.1}" y="24" text-anchor="middle" font-size="15" font-weight="bold">{}</text>"#,
        (px0 + px1) / 2.0,
        escape(&chart.title)
    );

    // Grid, ticks and tick labels.
    for t in &x.ticks {
        let px = x.pos(*t, px0, px1);
        let _ = writeln!(
            s,
            r##"<line x1="{px:.1}" y1="{py1:.1}" x2="{px:.1}" y2="{py0:.1}" stroke="#e5e5e5"/>"##
        );
        let _ = writeln!(
            s,
            r#"<line x1="{px:.1}" y1="{py0:.1}" x2="{px:.1}" y2="{:.1}" stroke="black"/>"#,
            py0 + 5.0
        );
        let _ = writeln!(
            s,
            r#"<text x="{px:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
            py0 + 19.0,
            escape(&x.label(*t))
        );
    }
    for t in &y.ticks {
        let py = y.pos(*t, py0, py1);
        let _ = writeln!(
            s,
            r##"<line x1="{px0:.1}" y1="{py:.1}" x2="{px1:.1}" y2="{py:.1}" stroke="#e5e5e5"/>"##
        );
        let _ = writeln!(
            s,
            r#"<line x1="{:.1}" y1="{py:.1}" x2="{px0:.1}" y2="{py:.1}" stroke="black"/>"#,
            px0 - 5.0
        );
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"#,
            px0 - 8.0,
            py + 4.0,
            escape(&y.label(*t))
        );
    }
    // Axes and their labels.
    let _ = writeln!(
        s,
        r#"<polyline points="{px0:.1},{py1:.1} {px0:.1},{py0:.1} {px1:.1},{py0:.1}" fill="none" stroke="black"/>"#
    );
    let _ = writeln!(
        s,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
        (px0 + px1) / 2.0,
        HEIGHT - 14.0,
        escape(&chart.x_label)
    );
    let _ = writeln!(
        s,
        r#"<text x="18" y="{0:.1}" text-anchor="middle" transform="rotate(-90 18 {0:.1})">{1}</text>"#,
        (py0 + py1) / 2.0,
        escape(&chart.y_label)
    );

    if series.iter().all(Vec::is_empty) {
        let _ = writeln!(
            s,
            r##"<text x="{:.1}" y="{:.1}" text-anchor="middle" fill="#777777">no data</text>"##,
            (px0 + px1) / 2.0,
            (py0 + py1) / 2.0
        );
    }

    // Series, then the legend.
    for (i, points) in series.iter().enumerate() {
        let colour = COLOURS[i % COLOURS.len()];
        let line: Vec<String> = points
            .iter()
            .map(|(vx, vy)| format!("{:.1},{:.1}", x.pos(*vx, px0, px1), y.pos(*vy, py0, py1)))
            .collect();
        if line.len() > 1 {
            let _ = writeln!(
                s,
                r#"<polyline points="{}" fill="none" stroke="{colour}" stroke-width="2"/>"#,
                line.join(" ")
            );
        }
        let every = points.len().div_ceil(MAX_MARKERS).max(1);
        for (k, (vx, vy)) in points.iter().enumerate() {
            if k % every == 0 || k + 1 == points.len() {
                marker(&mut s, i, x.pos(*vx, px0, px1), y.pos(*vy, py0, py1));
            }
        }
    }
    for (i, se) in chart.series.iter().enumerate() {
        let colour = COLOURS[i % COLOURS.len()];
        let ly = TOP + 10.0 + 22.0 * i as f64;
        let lx = px1 + 14.0;
        let _ = writeln!(
            s,
            r#"<line x1="{lx:.1}" y1="{ly:.1}" x2="{:.1}" y2="{ly:.1}" stroke="{colour}" stroke-width="2"/>"#,
            lx + 28.0
        );
        marker(&mut s, i, lx + 14.0, ly);
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}">{}</text>"#,
            lx + 36.0,
            ly + 4.0,
            escape(&se.name)
        );
    }
    s.push_str("</svg>\n");
    s
}

/// The marker of series `i` at (x, y): circle, square, triangle, diamond.
fn marker(s: &mut String, i: usize, x: f64, y: f64) {
    let c = COLOURS[i % COLOURS.len()];
    let _ = match i % 4 {
        0 => writeln!(s, r#"<circle cx="{x:.1}" cy="{y:.1}" r="4" fill="{c}"/>"#),
        1 => writeln!(
            s,
            r#"<rect x="{:.1}" y="{:.1}" width="8" height="8" fill="{c}"/>"#,
            x - 4.0,
            y - 4.0
        ),
        2 => writeln!(
            s,
            r#"<polygon points="{x:.1},{:.1} {:.1},{:.1} {:.1},{:.1}" fill="{c}"/>"#,
            y - 5.0,
            x - 5.0,
            y + 4.0,
            x + 5.0,
            y + 4.0
        ),
        _ => writeln!(
            s,
            r#"<polygon points="{x:.1},{:.1} {:.1},{y:.1} {x:.1},{:.1} {:.1},{y:.1}" fill="{c}"/>"#,
            y - 5.0,
            x + 5.0,
            y + 5.0,
            x - 5.0
        ),
    };
}

/// One axis: its range, ticks and scale.
#[derive(Debug)]
struct Axis {
    lo: f64,
    hi: f64,
    log: bool,
    ticks: Vec<f64>,
}

impl Axis {
    /// A linear axis over the values and 0, widened to whole tick steps.
    fn linear(values: impl Iterator<Item = f64>) -> Axis {
        let (mut lo, mut hi) =
            values.fold((0.0_f64, 0.0_f64), |(lo, hi), v| (lo.min(v), hi.max(v)));
        if hi - lo <= 0.0 {
            hi = lo + 1.0;
        }
        let step = nice_step((hi - lo) / 5.0);
        lo = (lo / step).floor() * step;
        hi = (hi / step).ceil() * step;
        let n = ((hi - lo) / step).round() as i64;
        let ticks = (0..=n).map(|k| lo + k as f64 * step).collect();
        Axis {
            lo,
            hi,
            log: false,
            ticks,
        }
    }

    /// A log axis from the decade below the smallest value to the one above the largest.
    fn log(values: impl Iterator<Item = f64>) -> Axis {
        let (min, max) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
            (lo.min(v), hi.max(v))
        });
        let (mut d0, mut d1) = if min.is_finite() && max.is_finite() {
            (min.log10().floor() as i32, max.log10().ceil() as i32)
        } else {
            (0, 1)
        };
        if d1 <= d0 {
            d1 = d0 + 1;
        }
        d0 = d0.max(-12);
        d1 = d1.min(15).max(d0 + 1);
        let mut ticks = Vec::new();
        for d in d0..=d1 {
            let decade = 10f64.powi(d);
            ticks.push(decade);
            // Few decades: label 2× and 5× too.
            if d1 - d0 <= 2 && d < d1 {
                ticks.extend([2.0 * decade, 5.0 * decade]);
            }
        }
        Axis {
            lo: 10f64.powi(d0),
            hi: 10f64.powi(d1),
            log: true,
            ticks,
        }
    }

    /// Where `v` goes between pixels `p0` (at `lo`) and `p1` (at `hi`).
    fn pos(&self, v: f64, p0: f64, p1: f64) -> f64 {
        let f = if self.log {
            (v.log10() - self.lo.log10()) / (self.hi.log10() - self.lo.log10())
        } else {
            (v - self.lo) / (self.hi - self.lo)
        };
        p0 + f * (p1 - p0)
    }

    /// A tick's label: as few digits as the spacing of the ticks needs, `k`/`M` for large
    /// (the same suffix along a linear axis).
    fn label(&self, v: f64) -> String {
        if self.log {
            return tick_label(v, v, v);
        }
        let step = self
            .ticks
            .get(1)
            .zip(self.ticks.first())
            .map_or(1.0, |(b, a)| b - a);
        let largest = self.ticks.iter().fold(0.0_f64, |m, t| m.max(t.abs()));
        tick_label(v, step, largest)
    }
}

/// 1, 2 or 5 × a power of ten, at least `raw`.
fn nice_step(raw: f64) -> f64 {
    if !(raw.is_finite() && raw > 0.0) {
        return 1.0;
    }
    let mag = 10f64.powf(raw.log10().floor());
    let norm = raw / mag;
    let nice = if norm <= 1.0 {
        1.0
    } else if norm <= 2.0 {
        2.0
    } else if norm <= 5.0 {
        5.0
    } else {
        10.0
    };
    nice * mag
}

/// `v` with the decimals `step` needs, in thousands (`k`) or millions (`M`) when `largest`
/// (the largest tick) is that big.
fn tick_label(v: f64, step: f64, largest: f64) -> String {
    if v == 0.0 {
        return "0".into();
    }
    let (scaled, step, suffix) = if largest >= 1e6 {
        (v / 1e6, step / 1e6, "M")
    } else if largest >= 1e4 {
        (v / 1e3, step / 1e3, "k")
    } else {
        (v, step, "")
    };
    let decimals = if step >= 1.0 {
        0
    } else {
        (-step.log10().floor()) as usize
    };
    format!("{scaled:.decimals$}{suffix}")
}

/// Text for SVG character data and attribute values.
fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chart(x_log: bool, fanout: Vec<(f64, f64)>, direct: Vec<(f64, f64)>) -> Chart {
        Chart {
            title: "rate <N> & more".into(),
            x_label: "N".into(),
            y_label: "records/s".into(),
            x_log,
            series: vec![
                Series {
                    name: "fanout".into(),
                    points: fanout,
                },
                Series {
                    name: "direct".into(),
                    points: direct,
                },
            ],
        }
    }

    fn well_formed(svg: &str) {
        assert!(svg.starts_with("<svg"), "{svg}");
        assert!(svg.trim_end().ends_with("</svg>"));
        assert!(!svg.contains("NaN") && !svg.contains("inf"), "{svg}");
        assert!(svg.contains(">fanout</text>") && svg.contains(">direct</text>"));
        assert_eq!(svg.matches("<svg").count(), 1);
    }

    #[test]
    fn linear_chart_has_both_series_and_no_nan() {
        let svg = render(&chart(
            false,
            vec![(1.0, 150_000.0), (8.0, 1_100_000.0), (16.0, f64::NAN)],
            vec![(1.0, 160_000.0), (8.0, 600_000.0), (16.0, 700_000.0)],
        ));
        well_formed(&svg);
        assert!(svg.contains("rate &lt;N&gt; &amp; more"));
        assert_eq!(svg.matches("<polyline").count(), 3, "axes + two series");
        assert!(
            svg.contains(">0.5M</text>") && svg.contains(">1.5M</text>"),
            "{svg}"
        );
    }

    #[test]
    fn log_chart_leaves_out_non_positive_x() {
        let cdf: Vec<(f64, f64)> = (0..500)
            .map(|i| (0.05 + i as f64 * 0.01, i as f64 / 499.0))
            .collect();
        let svg = render(&chart(
            true,
            cdf.clone(),
            vec![(0.0, 0.1), (-1.0, 0.2), (0.3, 1.0)],
        ));
        well_formed(&svg);
        assert!(
            svg.contains(">0.01</text>") && svg.contains(">10</text>"),
            "{svg}"
        );
        // Markers thinned to at most MAX_MARKERS + 1 on the long series.
        assert!(svg.matches("<circle").count() <= MAX_MARKERS + 2);
    }

    #[test]
    fn empty_chart_says_so() {
        let svg = render(&chart(true, vec![], vec![(f64::INFINITY, 1.0)]));
        well_formed(&svg);
        assert!(svg.contains("no data"));
    }

    #[test]
    fn ticks_are_round() {
        let a = Axis::linear([3.0, 17.0].into_iter());
        assert_eq!(a.ticks, vec![0.0, 5.0, 10.0, 15.0, 20.0]);
        assert_eq!(tick_label(0.30000000000000004, 0.1, 0.5), "0.3");
        assert_eq!(tick_label(250_000.0, 50_000.0, 300_000.0), "250k");
        assert_eq!(tick_label(2_000.0, 1_000.0, 5_000.0), "2000");
    }
}
