//! Line charts as SVG text: one or more panels stacked over a shared load axis, each with its
//! own y axis and series. Small enough to write by hand, so the load tester needs no drawing
//! library. Non-finite points are left out; every series is one `<polyline>` (plus a dot per
//! point), even with a single point, so a reader can count series in the file.

use std::fmt::Write;

const WIDTH: f64 = 760.0;
const PANEL_HEIGHT: f64 = 240.0;
const LEFT: f64 = 86.0;
const RIGHT: f64 = 24.0;
const TITLE: f64 = 36.0;
const PANEL_TOP: f64 = 28.0;
const PANEL_BOTTOM: f64 = 40.0;
const COLOURS: [&str; 5] = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e"];

#[derive(Debug, Clone)]
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
}

#[derive(Debug, Clone)]
pub struct Panel {
    pub y_label: String,
    pub series: Vec<Series>,
    /// A dashed horizontal line: (value, label), e.g. a threshold.
    pub limit: Option<(f64, String)>,
}

#[derive(Debug, Clone)]
pub struct Chart {
    pub title: String,
    pub x_label: String,
    pub panels: Vec<Panel>,
    /// A dashed vertical line across every panel: (x, label), e.g. the load held.
    pub marker: Option<(f64, String)>,
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A tick label: short, without trailing zeros.
fn label(v: f64) -> String {
    let a = v.abs();
    if a >= 1e6 {
        format!("{:.1}M", v / 1e6)
    } else if a >= 1e4 {
        format!("{:.0}k", v / 1e3)
    } else if a >= 100.0 || v == v.round() {
        format!("{v:.0}")
    } else {
        let s = format!("{v:.3}");
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    }
}

/// A step between ticks of 1, 2 or 5 times a power of ten giving about `n` ticks over `span`.
fn tick_step(span: f64, n: f64) -> f64 {
    let raw = (span / n).max(f64::MIN_POSITIVE);
    let p = 10f64.powf(raw.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * p)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * p)
}

fn finite(points: &[(f64, f64)]) -> impl Iterator<Item = (f64, f64)> + '_ {
    points
        .iter()
        .copied()
        .filter(|(x, y)| x.is_finite() && y.is_finite())
}

/// The x range over every panel, with a margin.
fn x_range(chart: &Chart) -> (f64, f64) {
    let xs = chart
        .panels
        .iter()
        .flat_map(|p| &p.series)
        .flat_map(|s| finite(&s.points).map(|(x, _)| x))
        .chain(chart.marker.iter().map(|m| m.0).filter(|x| x.is_finite()));
    let (lo, hi) = xs.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), x| {
        (lo.min(x), hi.max(x))
    });
    if !lo.is_finite() {
        (0.0, 1.0)
    } else if hi - lo < 1e-9 {
        (
            lo - 1.0_f64.max(lo.abs() * 0.5),
            hi + 1.0_f64.max(hi.abs() * 0.5),
        )
    } else {
        // A margin, so that the first and last points sit clear of the frame.
        let pad = (hi - lo) * 0.05;
        (lo - pad, hi + pad)
    }
}

/// Renders the chart.
pub fn svg(chart: &Chart) -> String {
    let height = TITLE + PANEL_HEIGHT * chart.panels.len().max(1) as f64;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{WIDTH}\" height=\"{height}\" \
         viewBox=\"0 0 {WIDTH} {height}\" font-family=\"sans-serif\" font-size=\"12\">"
    );
    let _ = writeln!(
        out,
        "<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"{}\" y=\"22\" text-anchor=\"middle\" font-size=\"15\">{}</text>",
        WIDTH / 2.0,
        escape(&chart.title)
    );
    let (x0, x1) = x_range(chart);
    let whole_x = chart
        .panels
        .iter()
        .flat_map(|p| &p.series)
        .flat_map(|s| finite(&s.points))
        .all(|(x, _)| x == x.round());
    let plot_w = WIDTH - LEFT - RIGHT;
    let px = |x: f64| LEFT + (x - x0) / (x1 - x0) * plot_w;
    for (i, panel) in chart.panels.iter().enumerate() {
        let top = TITLE + PANEL_HEIGHT * i as f64 + PANEL_TOP;
        let plot_h = PANEL_HEIGHT - PANEL_TOP - PANEL_BOTTOM;
        let bottom = top + plot_h;
        let y_max = panel
            .series
            .iter()
            .flat_map(|s| finite(&s.points).map(|(_, y)| y))
            .chain(panel.limit.iter().map(|l| l.0).filter(|y| y.is_finite()))
            .fold(0.0_f64, f64::max);
        let step = tick_step(if y_max > 0.0 { y_max * 1.1 } else { 1.0 }, 4.0);
        let y_top = ((y_max * 1.1) / step).ceil().max(1.0) * step;
        let py = |y: f64| bottom - (y / y_top) * plot_h;
        let _ = writeln!(
            out,
            "<g class=\"panel\">\n<text x=\"{LEFT}\" y=\"{}\" font-size=\"13\">{}</text>\n\
             <line x1=\"{LEFT}\" y1=\"{bottom}\" x2=\"{}\" y2=\"{bottom}\" stroke=\"black\"/>\n\
             <line x1=\"{LEFT}\" y1=\"{top}\" x2=\"{LEFT}\" y2=\"{bottom}\" stroke=\"black\"/>",
            top - 8.0,
            escape(&panel.y_label),
            LEFT + plot_w
        );
        let mut y = 0.0;
        while y <= y_top + step * 0.01 {
            let _ = writeln!(
                out,
                "<line x1=\"{LEFT}\" y1=\"{0:.1}\" x2=\"{1}\" y2=\"{0:.1}\" stroke=\"#ddd\"/>\n\
                 <text x=\"{2}\" y=\"{3:.1}\" text-anchor=\"end\">{4}</text>",
                py(y),
                LEFT + plot_w,
                LEFT - 6.0,
                py(y) + 4.0,
                label(y)
            );
            y += step;
        }
        let mut x_step = tick_step(x1 - x0, 6.0);
        if whole_x {
            // Loads are counted in clients or sessions: no tick between two of them.
            x_step = x_step.max(1.0);
        }
        let mut x = (x0 / x_step).ceil() * x_step;
        while x <= x1 + x_step * 0.01 {
            let _ = writeln!(
                out,
                "<text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\">{}</text>",
                px(x),
                bottom + 16.0,
                label(x)
            );
            x += x_step;
        }
        let _ = writeln!(
            out,
            "<text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\">{}</text>",
            LEFT + plot_w / 2.0,
            bottom + 32.0,
            escape(&chart.x_label)
        );
        if let Some((v, name)) = panel.limit.as_ref().filter(|l| l.0.is_finite()) {
            let _ = writeln!(
                out,
                "<line x1=\"{LEFT}\" y1=\"{0:.1}\" x2=\"{1}\" y2=\"{0:.1}\" stroke=\"#888\" \
                 stroke-dasharray=\"6 4\"/>\n<text x=\"{4}\" y=\"{2:.1}\" fill=\"#555\">{3}</text>",
                py(*v),
                LEFT + plot_w,
                py(*v) - 4.0,
                escape(name),
                LEFT + 6.0
            );
        }
        if let Some((mx, name)) = chart.marker.as_ref().filter(|m| m.0.is_finite()) {
            let _ = writeln!(
                out,
                "<line x1=\"{0:.1}\" y1=\"{top}\" x2=\"{0:.1}\" y2=\"{bottom}\" stroke=\"#2ca02c\" \
                 stroke-dasharray=\"3 3\"/>\n<text x=\"{1:.1}\" y=\"{2}\" text-anchor=\"end\" \
                 fill=\"#2ca02c\">{3}</text>",
                px(*mx),
                px(*mx) - 4.0,
                top + 12.0,
                escape(name)
            );
        }
        for (k, s) in panel.series.iter().enumerate() {
            let colour = COLOURS[k % COLOURS.len()];
            let points: Vec<String> = finite(&s.points)
                .map(|(x, y)| format!("{:.1},{:.1}", px(x), py(y)))
                .collect();
            let _ = writeln!(
                out,
                "<polyline class=\"series\" data-name=\"{}\" fill=\"none\" stroke=\"{colour}\" \
                 stroke-width=\"2\" points=\"{}\"/>",
                escape(&s.name),
                points.join(" ")
            );
            for (x, y) in finite(&s.points) {
                let _ = writeln!(
                    out,
                    "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"3.5\" fill=\"{colour}\"/>",
                    px(x),
                    py(y)
                );
            }
            let ly = top + 14.0 + 16.0 * k as f64;
            let lx = LEFT + plot_w - 190.0;
            let _ = writeln!(
                out,
                "<line x1=\"{lx}\" y1=\"{0}\" x2=\"{1}\" y2=\"{0}\" stroke=\"{colour}\" \
                 stroke-width=\"2\"/>\n<text x=\"{2}\" y=\"{3}\">{4}</text>",
                ly - 4.0,
                lx + 18.0,
                lx + 24.0,
                ly,
                escape(&s.name)
            );
        }
        out.push_str("</g>\n");
    }
    out.push_str("</svg>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chart(points: Vec<(f64, f64)>) -> Chart {
        Chart {
            title: "a < b & c".into(),
            x_label: "clients".into(),
            panels: vec![
                Panel {
                    y_label: "MB/s".into(),
                    series: vec![
                        Series {
                            name: "put".into(),
                            points: points.clone(),
                        },
                        Series {
                            name: "get".into(),
                            points,
                        },
                    ],
                    limit: Some((5.0, "limit".into())),
                },
                Panel {
                    y_label: "CPU".into(),
                    series: vec![Series {
                        name: "relay".into(),
                        points: vec![],
                    }],
                    limit: None,
                },
            ],
            marker: Some((2.0, "held".into())),
        }
    }

    #[test]
    fn one_polyline_per_series_and_escaped_text() {
        let s = svg(&chart(vec![(1.0, 3.0), (2.0, f64::NAN), (4.0, 9.5)]));
        assert!(s.starts_with("<svg"), "{s}");
        assert!(s.trim_end().ends_with("</svg>"), "{s}");
        assert_eq!(s.matches("<polyline").count(), 3, "{s}");
        assert_eq!(s.matches("<circle").count(), 4, "{s}");
        assert!(s.contains("a &lt; b &amp; c"), "{s}");
        assert!(!s.contains("NaN") && !s.contains("inf"), "{s}");
    }

    #[test]
    fn a_single_point_and_no_points_still_draw() {
        for points in [vec![(3.0, 0.0)], vec![]] {
            let s = svg(&chart(points));
            assert_eq!(s.matches("<polyline").count(), 3, "{s}");
            assert!(!s.contains("NaN") && !s.contains("inf"), "{s}");
        }
    }

    #[test]
    fn ticks() {
        assert_eq!(tick_step(10.0, 4.0), 5.0);
        assert_eq!(tick_step(1000.0, 4.0), 500.0);
        assert_eq!(label(12_000.0), "12k");
        assert_eq!(label(2.5), "2.5");
        assert_eq!(label(0.25), "0.25");
        assert_eq!(label(0.5), "0.5");
    }
}
