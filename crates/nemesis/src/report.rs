//! What a run writes for people: `summary.txt` and `latency-raw.svg`.
//!
//! The plot is Jepsen's latency-raw: one point per completed operation at its invocation time,
//! its latency on a log scale, colored by outcome (ok, fail, info), a circle for a read and a
//! square for a write, with the fault windows shaded behind (hover a window or a point for its
//! description). It is plain SVG written by hand: no plotting library, no script, no external
//! resource, so any browser shows it.

use crate::schedule::FaultClass;
use std::collections::BTreeMap;
use std::fmt::Write;
use std::time::Duration;
use triarch_sim::{EventType, Function, History, Op};

/// A fault as it really happened: when it was applied and healed (offsets from the start of the
/// main phase, by the harness's clock).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FaultSpan {
    pub class: FaultClass,
    /// `isolate-one`, `kill`, ...
    pub label: &'static str,
    pub description: String,
    pub start: Duration,
    /// `None`: still on when the run ended (the final heal removed it).
    pub end: Option<Duration>,
    /// What the heal reported (packets dropped), if anything.
    pub note: String,
}

fn class_color(class: FaultClass) -> &'static str {
    match class {
        FaultClass::Partition => "#7f7f7f",
        FaultClass::Kill => "#d62728",
        FaultClass::Pause => "#9467bd",
        FaultClass::Clock => "#bcbd22",
        FaultClass::Loss => "#17becf",
    }
}

fn outcome_color(kind: EventType) -> &'static str {
    match kind {
        EventType::Ok => "#2b83ba",
        EventType::Fail => "#d7191c",
        _ => "#f08a24",
    }
}

fn outcome_name(kind: EventType) -> &'static str {
    match kind {
        EventType::Ok => "ok",
        EventType::Fail => "fail",
        EventType::Info => "info",
        EventType::Invoke => "invoke",
    }
}

/// Escapes text for SVG content and attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c if c.is_control() && c != '\n' && c != '\t' => {}
            c => out.push(c),
        }
    }
    out
}

const WIDTH: f64 = 1200.0;
const HEIGHT: f64 = 620.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 190.0;
const TOP: f64 = 50.0;
const BOTTOM: f64 = 50.0;

/// The latency plot of `history` with `spans` shaded behind and a line at `final_heal` (the end
/// of the main phase); `title` goes on top.
pub fn latency_svg(
    history: &History,
    spans: &[FaultSpan],
    final_heal: Option<Duration>,
    title: &str,
) -> String {
    let ops: Vec<Op> = history
        .ops()
        .into_iter()
        .filter(|op| op.complete_time.is_some())
        .collect();
    let latency_ms = |op: &Op| {
        let micros = op.complete_time.expect("completed").0 - op.invoke_time.0;
        (micros as f64 / 1_000.0).max(0.001)
    };
    let seconds = |micros: u64| micros as f64 / 1e6;
    let x_max = ops
        .iter()
        .map(|op| seconds(op.complete_time.expect("completed").0))
        .chain(spans.iter().map(|s| s.end.unwrap_or(s.start).as_secs_f64()))
        .fold(1.0_f64, f64::max)
        .ceil();
    let (lo, hi) = ops
        .iter()
        .map(latency_ms)
        .fold((f64::MAX, 0.0_f64), |(lo, hi), l| (lo.min(l), hi.max(l)));
    let (lo_exp, hi_exp) = if ops.is_empty() {
        (-1, 4)
    } else {
        (
            lo.log10().floor() as i32,
            (hi.log10().ceil() as i32).max(lo.log10().floor() as i32 + 1),
        )
    };
    let plot_w = WIDTH - LEFT - RIGHT;
    let plot_h = HEIGHT - TOP - BOTTOM;
    let x = |s: f64| LEFT + s / x_max * plot_w;
    let y = |ms: f64| {
        let f = (ms.log10() - f64::from(lo_exp)) / f64::from(hi_exp - lo_exp);
        TOP + plot_h * (1.0 - f.clamp(0.0, 1.0))
    };

    let mut s = String::new();
    let _ = writeln!(s, r#"<?xml version="1.0" encoding="UTF-8"?>"#);
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, "<title>{}</title>", escape(title));
    let _ = writeln!(
        s,
        r#"<rect width="{WIDTH}" height="{HEIGHT}" fill="white"/>"#
    );
    let _ = writeln!(
        s,
        r#"<text x="{LEFT}" y="24" font-size="15" font-weight="bold">{}</text>"#,
        escape(title)
    );

    // Fault windows: one lane of labels per class along the top of the plot.
    let _ = writeln!(s, r#"<g id="faults">"#);
    for span in spans {
        let end = span.end.map_or(x_max, |e| e.as_secs_f64());
        let (x0, x1) = (x(span.start.as_secs_f64()), x(end));
        let lane = FaultClass::ALL
            .iter()
            .position(|&c| c == span.class)
            .unwrap_or(0) as f64;
        let color = class_color(span.class);
        let _ = writeln!(
            s,
            r#"<rect x="{x0:.1}" y="{TOP}" width="{:.1}" height="{plot_h}" fill="{color}" fill-opacity="0.16"><title>{}</title></rect>"#,
            (x1 - x0).max(1.0),
            escape(&format!(
                "{:.3}s-{:.3}s {}{}",
                span.start.as_secs_f64(),
                end,
                span.description,
                if span.note.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", span.note)
                }
            ))
        );
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}" font-size="9" fill="{color}">{}</text>"#,
            x0 + 2.0,
            TOP + 10.0 + lane * 10.0,
            escape(span.label)
        );
    }
    if let Some(at) = final_heal {
        let xx = x(at.as_secs_f64());
        let _ = writeln!(
            s,
            r##"<line x1="{xx:.1}" y1="{TOP}" x2="{xx:.1}" y2="{:.1}" stroke="#2ca02c" stroke-dasharray="4 3"/><text x="{:.1}" y="{:.1}" font-size="9" fill="#2ca02c">final heal</text>"##,
            TOP + plot_h,
            xx + 2.0,
            TOP + plot_h - 4.0
        );
    }
    let _ = writeln!(s, "</g>");

    // Axes, ticks and grid.
    let _ = writeln!(s, r##"<g id="axes" stroke="#333" fill="none">"##);
    let _ = writeln!(
        s,
        r#"<rect x="{LEFT}" y="{TOP}" width="{plot_w}" height="{plot_h}"/>"#
    );
    let _ = writeln!(s, "</g>");
    let _ = writeln!(s, r##"<g id="ticks" fill="#333">"##);
    for e in lo_exp..=hi_exp {
        let ms = 10f64.powi(e);
        let yy = y(ms);
        let label = if ms >= 1.0 {
            format!("{ms:.0}")
        } else {
            format!("{ms}")
        };
        let _ = writeln!(
            s,
            r##"<line x1="{LEFT}" y1="{yy:.1}" x2="{:.1}" y2="{yy:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" text-anchor="end">{label}</text>"##,
            LEFT + plot_w,
            LEFT - 6.0,
            yy + 4.0
        );
    }
    let step = nice_step(x_max);
    let mut t = 0.0;
    while t <= x_max + 1e-9 {
        let xx = x(t);
        let _ = writeln!(
            s,
            r##"<line x1="{xx:.1}" y1="{:.1}" x2="{xx:.1}" y2="{:.1}" stroke="#333"/><text x="{xx:.1}" y="{:.1}" text-anchor="middle">{t}</text>"##,
            TOP + plot_h,
            TOP + plot_h + 5.0,
            TOP + plot_h + 18.0
        );
        t += step;
    }
    let _ = writeln!(
        s,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">time since the start of the main phase (s)</text>"#,
        LEFT + plot_w / 2.0,
        HEIGHT - 12.0
    );
    let _ = writeln!(
        s,
        r#"<text transform="translate(18 {:.1}) rotate(-90)" text-anchor="middle">latency (ms, log scale)</text>"#,
        TOP + plot_h / 2.0
    );
    let _ = writeln!(s, "</g>");

    // Points, grouped by (function, outcome) so that each group carries its style once.
    let mut groups: BTreeMap<(Function, EventType), Vec<&Op>> = BTreeMap::new();
    for op in &ops {
        groups.entry((op.f, op.outcome)).or_default().push(op);
    }
    let _ = writeln!(s, r#"<g id="points">"#);
    for ((f, kind), ops) in &groups {
        let _ = writeln!(
            s,
            r#"<g fill="{}" fill-opacity="0.75"><title>{} {}: {} operations</title>"#,
            outcome_color(*kind),
            function_name(*f),
            outcome_name(*kind),
            ops.len()
        );
        for op in ops {
            let (px, py) = (x(seconds(op.invoke_time.0)), y(latency_ms(op)));
            match f {
                Function::Read => {
                    let _ = writeln!(s, r#"<circle cx="{px:.1}" cy="{py:.1}" r="1.6"/>"#);
                }
                Function::Write => {
                    let _ = writeln!(
                        s,
                        r#"<rect x="{:.1}" y="{:.1}" width="3" height="3"/>"#,
                        px - 1.5,
                        py - 1.5
                    );
                }
            }
        }
        let _ = writeln!(s, "</g>");
    }
    let _ = writeln!(s, "</g>");

    // Legend.
    let lx = WIDTH - RIGHT + 15.0;
    let mut ly = TOP + 5.0;
    let _ = writeln!(s, r#"<g id="legend">"#);
    for kind in [EventType::Ok, EventType::Fail, EventType::Info] {
        let _ = writeln!(
            s,
            r#"<circle cx="{:.1}" cy="{ly:.1}" r="4" fill="{}"/><text x="{:.1}" y="{:.1}">{}</text>"#,
            lx + 4.0,
            outcome_color(kind),
            lx + 14.0,
            ly + 4.0,
            outcome_name(kind)
        );
        ly += 18.0;
    }
    let _ = writeln!(
        s,
        r##"<circle cx="{:.1}" cy="{ly:.1}" r="3" fill="#555"/><text x="{:.1}" y="{:.1}">read</text>"##,
        lx + 4.0,
        lx + 14.0,
        ly + 4.0
    );
    ly += 18.0;
    let _ = writeln!(
        s,
        r##"<rect x="{:.1}" y="{:.1}" width="6" height="6" fill="#555"/><text x="{:.1}" y="{:.1}">write</text>"##,
        lx + 1.0,
        ly - 3.0,
        lx + 14.0,
        ly + 4.0
    );
    ly += 28.0;
    for class in FaultClass::ALL {
        let _ = writeln!(
            s,
            r#"<rect x="{lx:.1}" y="{:.1}" width="10" height="10" fill="{}" fill-opacity="0.35"/><text x="{:.1}" y="{:.1}">{}</text>"#,
            ly - 5.0,
            class_color(class),
            lx + 14.0,
            ly + 4.0,
            class.name()
        );
        ly += 18.0;
    }
    let _ = writeln!(s, "</g>");
    let _ = writeln!(s, "</svg>");
    s
}

fn function_name(f: Function) -> &'static str {
    match f {
        Function::Read => "read",
        Function::Write => "write",
    }
}

/// A tick step giving 5 to 12 ticks over `0..max`.
fn nice_step(max: f64) -> f64 {
    [1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0]
        .into_iter()
        .find(|&step| max / step <= 12.0)
        .unwrap_or(1_200.0)
}

/// Counts and latency percentiles of one kind of operation.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct OpStats {
    pub ok: u64,
    pub fail: u64,
    pub info: u64,
    /// Latencies of the `ok` operations, in milliseconds: p50, p99, max.
    pub ok_latency_ms: Option<(f64, f64, f64)>,
}

pub fn op_stats<'a>(ops: impl IntoIterator<Item = &'a Op>) -> OpStats {
    let mut stats = OpStats::default();
    let mut latencies = Vec::new();
    for op in ops {
        match op.outcome {
            EventType::Ok => {
                stats.ok += 1;
                if let Some(c) = op.complete_time {
                    latencies.push((c.0 - op.invoke_time.0) as f64 / 1_000.0);
                }
            }
            EventType::Fail => stats.fail += 1,
            _ => stats.info += 1,
        }
    }
    latencies.sort_by(f64::total_cmp);
    if let Some(&max) = latencies.last() {
        let at = |q: f64| latencies[((latencies.len() - 1) as f64 * q).round() as usize];
        stats.ok_latency_ms = Some((at(0.5), at(0.99), max));
    }
    stats
}

impl std::fmt::Display for OpStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ok, {} fail, {} info", self.ok, self.fail, self.info)?;
        if let Some((p50, p99, max)) = self.ok_latency_ms {
            write!(
                f,
                "; ok latency p50 {p50:.1} ms, p99 {p99:.1} ms, max {max:.1} ms"
            )?;
        }
        Ok(())
    }
}

/// The events of `key` up to and a little past history index `index` (at most `before` of them
/// before it), one per line: the evidence next to a violation.
pub fn excerpt(history: &History, key: u64, index: usize, before: usize) -> String {
    let events: Vec<_> = history.events().iter().filter(|e| e.key == key).collect();
    let at = events.partition_point(|e| e.index <= index);
    let from = at.saturating_sub(before);
    let to = (at + 2).min(events.len());
    let mut out = String::new();
    for e in &events[from..to] {
        let _ = writeln!(out, "{e}");
    }
    out
}

/// The most frequent error texts of `history`'s failed and indeterminate completions.
pub fn error_counts(history: &History, top: usize) -> Vec<(u64, String)> {
    let mut counts: BTreeMap<String, u64> = BTreeMap::new();
    for e in history.events() {
        if let Some(error) = &e.error {
            *counts.entry(error.clone()).or_default() += 1;
        }
    }
    let mut counts: Vec<(u64, String)> = counts.into_iter().map(|(e, n)| (n, e)).collect();
    counts.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
    counts.truncate(top);
    counts
}

/// The `keyspace_<name>:` line of an `INFO` text, as `key=value` pairs.
pub fn keyspace_counters(info: &str, keyspace: &str) -> Option<String> {
    let prefix = format!("keyspace_{keyspace}:");
    info.lines()
        .find_map(|l| l.trim_end().strip_prefix(&prefix))
        .map(|rest| {
            rest.split(',')
                .filter(|kv| {
                    !["model=", "n=", "r=", "w=", "merge=", "read=", "quorum="]
                        .iter()
                        .any(|p| kv.starts_with(p))
                })
                .collect::<Vec<_>>()
                .join(" ")
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use triarch_core::{Instant, NodeId};
    use triarch_sim::ProcessId;

    fn sample_history() -> History {
        let mut h = History::new();
        let mut t = 1_000;
        let mut next = |d: u64| {
            t += d;
            Instant(t)
        };
        for i in 0..50u64 {
            let p = ProcessId(i % 4);
            let (f, v) = if i % 2 == 0 {
                (Function::Write, Some(i + 1))
            } else {
                (Function::Read, None)
            };
            h.invoke(p, f, i % 3, v, NodeId(1 + (i % 5) as u32), next(200_000));
            let kind = match i % 7 {
                0 => EventType::Fail,
                1 => EventType::Info,
                _ => EventType::Ok,
            };
            h.complete(
                p,
                kind,
                None,
                next(300 * (i + 1)),
                Some("x <& y>".into()).filter(|_| kind != EventType::Ok),
            );
        }
        h
    }

    fn spans() -> Vec<FaultSpan> {
        vec![
            FaultSpan {
                class: FaultClass::Partition,
                label: "isolate-one",
                description: "isolate-one: n3 alone <&>".into(),
                start: Duration::from_secs(2),
                end: Some(Duration::from_secs(5)),
                note: "12 packets dropped".into(),
            },
            FaultSpan {
                class: FaultClass::Kill,
                label: "kill",
                description: "kill -9: n1".into(),
                start: Duration::from_secs(7),
                end: None,
                note: String::new(),
            },
        ]
    }

    #[test]
    fn the_latency_plot_is_valid_svg_with_a_point_per_completed_op_and_a_band_per_fault() {
        let h = sample_history();
        let svg = latency_svg(
            &h,
            &spans(),
            Some(Duration::from_secs(9)),
            "seed 1 <test> & more",
        );
        let doc = roxmltree::Document::parse(&svg).expect("well-formed XML");
        let root = doc.root_element();
        assert_eq!(root.tag_name().name(), "svg");
        assert_eq!(
            root.tag_name().namespace(),
            Some("http://www.w3.org/2000/svg")
        );
        let by_id = |id: &str| {
            root.descendants()
                .find(|n| n.attribute("id") == Some(id))
                .unwrap_or_else(|| panic!("no #{id}"))
        };
        let points = by_id("points");
        let circles = points
            .descendants()
            .filter(|n| n.has_tag_name("circle"))
            .count();
        let squares = points
            .descendants()
            .filter(|n| n.has_tag_name("rect"))
            .count();
        assert_eq!((circles, squares), (25, 25));
        let faults = by_id("faults");
        let bands = faults.children().filter(|n| n.has_tag_name("rect")).count();
        assert_eq!(bands, 2);
        assert_eq!(
            faults.children().filter(|n| n.has_tag_name("line")).count(),
            1
        );
        for n in root.descendants().filter(|n| n.is_element()) {
            for a in n.attributes() {
                if ["x", "y", "cx", "cy", "width", "height"].contains(&a.name()) {
                    let v: f64 = a.value().parse().expect("numeric coordinate");
                    assert!(
                        v.is_finite() && (0.0..=WIDTH).contains(&v),
                        "{} = {}",
                        a.name(),
                        v
                    );
                }
            }
        }
        assert!(svg.contains("n3 alone &lt;&amp;&gt;"));
    }

    #[test]
    fn an_empty_history_still_plots() {
        let svg = latency_svg(&History::new(), &[], None, "empty");
        roxmltree::Document::parse(&svg).expect("well-formed XML");
    }

    #[test]
    fn stats_count_outcomes_and_percentiles() {
        let h = sample_history();
        let ops = h.ops();
        let s = op_stats(&ops);
        assert_eq!(s.ok + s.fail + s.info, 50);
        let (p50, p99, max) = s.ok_latency_ms.unwrap();
        assert!(p50 <= p99 && p99 <= max);
        assert!(error_counts(&h, 3)[0].1.contains("x <& y>"));
    }

    #[test]
    fn excerpts_show_the_key_around_the_violation() {
        let h = sample_history();
        let text = excerpt(&h, 0, 20, 3);
        assert!(text.lines().count() <= 5 && !text.is_empty());
        assert!(text.lines().all(|l| l.contains("key 0")), "{text}");
    }

    #[test]
    fn keyspace_counters_leave_settings_out() {
        let info = "x:y\r\nkeyspace_nemesis:model=leaderless,n=3,r=2,w=2,merge=lww,reads=5,writes=7,read_repairs=1\r\n";
        assert_eq!(
            keyspace_counters(info, "nemesis").as_deref(),
            Some("reads=5 writes=7 read_repairs=1")
        );
        assert_eq!(keyspace_counters(info, "other"), None);
    }
}
