//! The explorer's self-contained HTML report: the terminal table, and per workload inline SVG
//! plots (no script, no external stylesheet, no font): write and read latency CDFs per model,
//! the probability of a stale read against the time since the key's latest acknowledged write,
//! and the first seed's write availability over time with its fault windows shaded.
//!
//! Every number is formatted with a fixed precision and every collection iterated in a fixed
//! order: the same report gives the same bytes.

use super::{Cell, Report, TIMELINE_BIN, Workload, staleness::AGE_BINS_MS};
use std::fmt::Write as _;
use std::time::Duration;
use triarch_core::Model;

/// Plot size (px) and margins.
const WIDTH: f64 = 660.0;
const HEIGHT: f64 = 300.0;
const LEFT: f64 = 56.0;
/// Room for the legend, right of the plot.
const RIGHT: f64 = 116.0;
const TOP: f64 = 28.0;
const BOTTOM: f64 = 44.0;
/// Points drawn per CDF at most.
const CDF_POINTS: usize = 200;

/// A model's colour in every plot.
pub fn colour(model: Model) -> &'static str {
    match model {
        Model::PrimaryBackup => "#1f5fa8",
        Model::MultiLeader => "#c0392b",
        Model::Leaderless => "#2e8b57",
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn plot_x(fraction: f64) -> f64 {
    LEFT + fraction.clamp(0.0, 1.0) * (WIDTH - LEFT - RIGHT)
}

fn plot_y(fraction: f64) -> f64 {
    HEIGHT - BOTTOM - fraction.clamp(0.0, 1.0) * (HEIGHT - TOP - BOTTOM)
}

/// The frame of a plot: title, axes, y ticks 0..1, and the legend of `models`.
fn frame(out: &mut String, title: &str, x_label: &str, y_label: &str, models: &[Model]) {
    let _ = write!(
        out,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{WIDTH:.0}\" height=\"{HEIGHT:.0}\" \
         viewBox=\"0 0 {WIDTH:.0} {HEIGHT:.0}\" font-family=\"sans-serif\" font-size=\"11\">\
         <rect width=\"100%\" height=\"100%\" fill=\"#ffffff\"/>\
         <text x=\"{LEFT:.0}\" y=\"16\" font-size=\"13\" font-weight=\"bold\">{}</text>",
        escape(title)
    );
    let (x0, x1, y0, y1) = (plot_x(0.0), plot_x(1.0), plot_y(0.0), plot_y(1.0));
    let _ = write!(
        out,
        "<path d=\"M{x0:.1} {y1:.1}V{y0:.1}H{x1:.1}\" fill=\"none\" stroke=\"#333\"/>"
    );
    for i in 0..=4 {
        let f = i as f64 / 4.0;
        let y = plot_y(f);
        let _ = write!(
            out,
            "<path d=\"M{x0:.1} {y:.1}H{x1:.1}\" stroke=\"#ddd\"/>\
             <text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{f:.2}</text>",
            x0 - 4.0,
            y + 4.0
        );
    }
    let _ = write!(
        out,
        "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>\
         <text transform=\"translate(14 {:.1}) rotate(-90)\" text-anchor=\"middle\">{}</text>",
        (x0 + x1) / 2.0,
        HEIGHT - 8.0,
        escape(x_label),
        (y0 + y1) / 2.0,
        escape(y_label)
    );
    for (i, &m) in models.iter().enumerate() {
        let x = x1 + 8.0;
        let y = y1 + 10.0 + 14.0 * i as f64;
        let _ = write!(
            out,
            "<path d=\"M{x:.1} {:.1}h18\" stroke=\"{}\" stroke-width=\"2\"/>\
             <text x=\"{:.1}\" y=\"{y:.1}\">{}</text>",
            y - 4.0,
            colour(m),
            x + 22.0,
            m.as_str()
        );
    }
}

/// Latency in ms on a log axis from 0.1 ms to 10 s.
fn latency_x(d: Duration) -> f64 {
    let ms = (d.as_micros() as f64 / 1_000.0).max(0.1);
    plot_x((ms.log10() + 1.0) / 5.0)
}

/// The CDFs of one kind of latency, one curve per model that ran.
pub fn latency_cdf_svg(cells: &[&Cell], title: &str, pick: fn(&Cell) -> &Vec<Duration>) -> String {
    let models: Vec<Model> = cells
        .iter()
        .filter(|c| !pick(c).is_empty())
        .filter_map(|c| c.model)
        .collect();
    let mut out = String::new();
    frame(
        &mut out,
        title,
        "latency (ms, log scale)",
        "fraction of operations",
        &models,
    );
    for (i, label) in ["0.1", "1", "10", "100", "1000", "10000"]
        .iter()
        .enumerate()
    {
        let x = plot_x(i as f64 / 5.0);
        let _ = write!(
            out,
            "<path d=\"M{x:.1} {:.1}v4\" stroke=\"#333\"/><text x=\"{x:.1}\" y=\"{:.1}\" \
             text-anchor=\"middle\">{label}</text>",
            plot_y(0.0),
            plot_y(0.0) + 16.0
        );
    }
    for cell in cells {
        let values = pick(cell);
        let Some(model) = cell.model.filter(|_| !values.is_empty()) else {
            continue;
        };
        let n = values.len();
        let step = n.div_ceil(CDF_POINTS).max(1);
        let mut d = format!("M{:.1} {:.1}", latency_x(values[0]), plot_y(0.0));
        let mut i = 0;
        loop {
            let _ = write!(
                d,
                "L{:.1} {:.1}",
                latency_x(values[i]),
                plot_y((i + 1) as f64 / n as f64)
            );
            if i == n - 1 {
                break;
            }
            i = (i + step).min(n - 1);
        }
        let _ = write!(
            out,
            "<path d=\"{d}\" fill=\"none\" stroke=\"{}\" stroke-width=\"2\"/>",
            colour(model)
        );
    }
    out.push_str("</svg>");
    out
}

/// P(stale read) per bin of time since the key's latest acknowledged write.
pub fn staleness_svg(cells: &[&Cell], title: &str) -> String {
    let models: Vec<Model> = cells
        .iter()
        .filter(|c| c.staleness.is_some())
        .filter_map(|c| c.model)
        .collect();
    let mut out = String::new();
    frame(
        &mut out,
        title,
        "time since the key's latest acknowledged write (ms, bins)",
        "P(stale read)",
        &models,
    );
    let bins = AGE_BINS_MS.len();
    let bin_x = |i: f64| plot_x((i + 0.5) / bins as f64);
    for (i, from) in AGE_BINS_MS.iter().enumerate() {
        let label = if i + 1 == bins {
            format!("{from}+")
        } else {
            from.to_string()
        };
        let _ = write!(
            out,
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{label}</text>",
            bin_x(i as f64),
            plot_y(0.0) + 16.0
        );
    }
    for cell in cells {
        let (Some(model), Some(st)) = (cell.model, &cell.staleness) else {
            continue;
        };
        let mut d = String::new();
        for (i, &(reads, stale)) in st.by_age.iter().enumerate() {
            if reads == 0 {
                continue;
            }
            let p = stale as f64 / reads as f64;
            let (x, y) = (bin_x(i as f64), plot_y(p));
            let _ = write!(d, "{}{x:.1} {y:.1}", if d.is_empty() { "M" } else { "L" });
            let _ = write!(
                out,
                "<circle cx=\"{x:.1}\" cy=\"{y:.1}\" r=\"3\" fill=\"{}\"><title>{} reads, \
                 {} stale</title></circle>",
                colour(model),
                reads,
                stale
            );
        }
        let _ = write!(
            out,
            "<path d=\"{d}\" fill=\"none\" stroke=\"{}\" stroke-width=\"2\"/>",
            colour(model)
        );
    }
    out.push_str("</svg>");
    out
}

/// The first seed's fraction of writes that succeeded, per [`TIMELINE_BIN`] of invocation,
/// with its fault windows shaded.
pub fn availability_svg(cells: &[&Cell], title: &str) -> String {
    let models: Vec<Model> = cells
        .iter()
        .filter(|c| !c.timeline.is_empty())
        .filter_map(|c| c.model)
        .collect();
    let mut out = String::new();
    frame(
        &mut out,
        title,
        "time (s), fault windows shaded",
        "writes ok / attempted",
        &models,
    );
    let bins = cells
        .iter()
        .map(|c| c.timeline.len())
        .max()
        .unwrap_or(0)
        .max(1);
    let span = TIMELINE_BIN.as_secs_f64() * bins as f64;
    let time_x = |s: f64| plot_x(s / span);
    // Every model of a seed sees the same windows; shade the first cell's.
    if let Some(cell) = cells.iter().find(|c| !c.windows.is_empty()) {
        for (from, to, what) in &cell.windows {
            let (x0, x1) = (time_x(from.as_secs_f64()), time_x(to.as_secs_f64()));
            let _ = write!(
                out,
                "<rect x=\"{x0:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{:.1}\" \
                 fill=\"#f5c26b\" fill-opacity=\"0.35\"><title>{}</title></rect>\
                 <text x=\"{:.1}\" y=\"{:.1}\" font-size=\"9\">{}</text>",
                plot_y(1.0),
                x1 - x0,
                plot_y(0.0) - plot_y(1.0),
                escape(what),
                x0 + 2.0,
                plot_y(1.0) - 3.0,
                escape(what)
            );
        }
    }
    let whole = span.ceil() as u64;
    for s in (0..=whole).step_by(2) {
        let x = time_x(s as f64);
        let _ = write!(
            out,
            "<text x=\"{x:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{s}</text>",
            plot_y(0.0) + 16.0
        );
    }
    let _ = write!(
        out,
        "<path d=\"M{:.1} {:.1}h18\" stroke=\"#555\" stroke-width=\"2\" \
         stroke-dasharray=\"4 3\"/><text x=\"{:.1}\" y=\"{:.1}\" font-size=\"9\">cut-off side</text>",
        plot_x(1.0) + 8.0,
        plot_y(1.0) + 10.0 + 14.0 * models.len() as f64 - 4.0,
        plot_x(1.0) + 30.0,
        plot_y(1.0) + 10.0 + 14.0 * models.len() as f64
    );
    for cell in cells {
        let Some(model) = cell.model.filter(|_| !cell.timeline.is_empty()) else {
            continue;
        };
        // Solid: every write; dashed: writes through a region while it was cut off.
        for (line, dash) in [
            (&cell.timeline, ""),
            (&cell.timeline_cut_off, " stroke-dasharray=\"4 3\""),
        ] {
            let mut d = String::new();
            for (i, &(ok, attempted)) in line.iter().enumerate() {
                if attempted == 0 {
                    // A gap: nothing was attempted on that side then.
                    if !dash.is_empty() && !d.is_empty() && !d.ends_with('|') {
                        d.push('|');
                    }
                    continue;
                }
                let x = time_x((i as f64 + 0.5) * TIMELINE_BIN.as_secs_f64());
                let y = plot_y(ok as f64 / attempted as f64);
                let move_to = d.is_empty() || d.ends_with('|');
                let _ = write!(d, "{}{x:.1} {y:.1}", if move_to { "M" } else { "L" });
            }
            let d = d.replace('|', "");
            if d.is_empty() {
                continue;
            }
            let _ = write!(
                out,
                "<path d=\"{d}\" fill=\"none\" stroke=\"{}\" stroke-width=\"2\" \
                 stroke-opacity=\"0.85\"{dash}/>",
                colour(model)
            );
        }
    }
    out.push_str("</svg>");
    out
}

fn cells_of(report: &Report, workload: Workload) -> Vec<&Cell> {
    report
        .cells
        .iter()
        .filter(|c| c.workload == Some(workload) && c.run.is_some())
        .collect()
}

/// The write latency CDFs of `workload` alone, as a standalone SVG file.
pub fn write_latency_svg(report: &Report, workload: Workload) -> String {
    let cells = cells_of(report, workload);
    let title = format!("{workload}: write latency CDF, every region and seed");
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n{}\n",
        latency_cdf_svg(&cells, &title, |c| &c.write_cdf)
    )
}

/// The whole report as one HTML document.
pub fn render(report: &Report) -> String {
    let mut out = String::from(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <title>triarch explore</title><style>\
         body{font-family:sans-serif;max-width:1180px;margin:1em auto;padding:0 1em;color:#222}\
         pre{background:#f6f6f6;padding:1em;overflow-x:auto;font-size:12px}\
         .plots{display:flex;flex-wrap:wrap;gap:12px}svg{border:1px solid #ddd}\
         </style></head><body>\n<h1>triarch explore</h1>\n",
    );
    let _ = writeln!(
        out,
        "<p>The same workload shape, regions, latencies, faults and seeds against each \
         replication model. How to read it: <code>docs/explore.md</code>.</p>\n<pre>{}</pre>",
        escape(&report.to_string())
    );
    for &workload in &report.options.workloads {
        let cells = cells_of(report, workload);
        if cells.is_empty() {
            continue;
        }
        let _ = writeln!(out, "<h2>{workload}</h2>\n<div class=\"plots\">");
        out.push_str(&latency_cdf_svg(
            &cells,
            &format!("{workload}: write latency CDF"),
            |c| &c.write_cdf,
        ));
        out.push_str(&latency_cdf_svg(
            &cells,
            &format!("{workload}: read latency CDF"),
            |c| &c.read_cdf,
        ));
        out.push_str(&staleness_svg(
            &cells,
            &format!("{workload}: stale reads by time since the write"),
        ));
        out.push_str(&availability_svg(
            &cells,
            &format!(
                "{workload}: write availability, seed {}",
                report.options.first_seed
            ),
        ));
        out.push_str("\n</div>\n");
    }
    out.push_str("</body></html>\n");
    out
}
