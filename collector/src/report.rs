//! The cold-start report: per runtime, phase latency statistics, sum of phases against the
//! client-observed wall time, dropped spans; rendered as Markdown, JSON or one self-contained HTML
//! page with inline SVG charts.
//!
//! [`build_report`] + [`render`] are the library entry points; callers (the lab) add their own
//! [`Section`]s, which every format renders after the runtime sections.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;
use shimtrace_span::{names, SpanRecord};

use crate::synth::WallTime;
use crate::timeline::fmt_ms;
use crate::trace::{task_method, Phase, Trace};

/// Output formats of `shimtrace report`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Md,
    Json,
    Html,
}

/// Latency statistics over a set of durations (nanoseconds; percentiles by nearest rank).
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq, Default)]
pub struct Stats {
    pub n: usize,
    pub p50_ns: u64,
    pub p90_ns: u64,
    pub p99_ns: u64,
    pub min_ns: u64,
    pub max_ns: u64,
}

impl Stats {
    /// Statistics of `values` (sorted in place); `None` for no values.
    pub fn of(values: &mut [u64]) -> Option<Stats> {
        if values.is_empty() {
            return None;
        }
        values.sort_unstable();
        let rank = |p: f64| {
            let i = ((p / 100.0) * values.len() as f64).ceil() as usize;
            values[i.clamp(1, values.len()) - 1]
        };
        Some(Stats {
            n: values.len(),
            p50_ns: rank(50.0),
            p90_ns: rank(90.0),
            p99_ns: rank(99.0),
            min_ns: values[0],
            max_ns: values[values.len() - 1],
        })
    }
}

/// One phase's statistics in a runtime.
#[derive(Debug, Clone, Serialize)]
pub struct PhaseStats {
    pub phase: Phase,
    pub label: &'static str,
    #[serde(flatten)]
    pub stats: Stats,
}

/// How much of the client-observed time the phases account for.
#[derive(Debug, Clone, Serialize)]
pub struct WallComparison {
    /// Containers with both phases and a wall time.
    pub n: usize,
    pub sum_of_phases: Stats,
    pub wall_time: Stats,
    /// Wall time minus the sum of phases: time spent outside the shim (containerd, client).
    pub outside_phases: Stats,
}

/// A bar of the median trace's waterfall.
#[derive(Debug, Clone, Serialize)]
pub struct WaterfallBar {
    pub name: String,
    pub depth: usize,
    pub offset_ns: u64,
    pub duration_ns: u64,
}

/// The trace whose cold start is the runtime's median, as a waterfall.
#[derive(Debug, Clone, Serialize)]
pub struct MedianTrace {
    pub container_id: Option<String>,
    pub trace_id: String,
    pub cold_start_ns: u64,
    pub bars: Vec<WaterfallBar>,
}

/// A histogram bin `[lo, hi)`.
#[derive(Debug, Clone, Serialize)]
pub struct Bin {
    pub lo_ns: u64,
    pub hi_ns: u64,
    pub count: usize,
}

/// Everything the report says about one runtime.
#[derive(Debug, Clone, Serialize)]
pub struct RuntimeReport {
    pub runtime: String,
    pub traces: usize,
    pub phases: Vec<PhaseStats>,
    /// `shim.start` begins → init `Start` returns: the time to a running container.
    pub cold_start: Option<Stats>,
    pub cold_start_histogram: Vec<Bin>,
    pub wall: Option<WallComparison>,
    pub median_trace: Option<MedianTrace>,
}

/// A caller-provided section (the lab's isolation and HTTP results, for instance).
#[derive(Debug, Clone, Serialize, Default)]
pub struct Section {
    pub title: String,
    /// Plain-text paragraphs (blank-line separated).
    pub text: String,
    /// An optional table: header row, then rows.
    pub table: Option<(Vec<String>, Vec<Vec<String>>)>,
    /// Machine-readable data for the JSON output.
    pub data: serde_json::Value,
}

/// The whole report.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub title: String,
    pub traces: usize,
    pub spans: usize,
    /// Spans the shims could not spool (bounded buffer or spool full).
    pub dropped_spans: u64,
    pub runtimes: Vec<RuntimeReport>,
    pub sections: Vec<Section>,
}

/// Time from the wrapper's start to the init `Start` returning.
pub fn cold_start_nanos(trace: &Trace) -> Option<u64> {
    let root = trace
        .spans
        .iter()
        .find(|s| s.name == names::WRAPPER_START)?;
    let start = trace.spans.iter().find(|s| {
        task_method(s) == Some("Start")
            && s.attr_str(shimtrace_span::attr::CONTAINERD_EXEC_ID)
                .is_none_or(|e| e.is_empty() || Some(e) == trace.container_id())
    })?;
    start
        .end_time_unix_nano
        .checked_sub(root.start_time_unix_nano)
}

fn histogram(values: &[u64], bins: usize) -> Vec<Bin> {
    let (Some(&lo), Some(&hi)) = (values.iter().min(), values.iter().max()) else {
        return Vec::new();
    };
    let width = ((hi - lo) / bins as u64).max(1);
    let mut out: Vec<Bin> = (0..bins as u64)
        .map(|i| Bin {
            lo_ns: lo + i * width,
            hi_ns: lo + (i + 1) * width,
            count: 0,
        })
        .collect();
    for v in values {
        let i = (((v - lo) / width) as usize).min(bins - 1);
        out[i].count += 1;
    }
    out
}

fn median_trace(traces: &[&Trace]) -> Option<MedianTrace> {
    let mut with_cold: Vec<(u64, &Trace)> = traces
        .iter()
        .filter_map(|t| cold_start_nanos(t).map(|c| (c, *t)))
        .collect();
    if with_cold.is_empty() {
        return None;
    }
    with_cold.sort_by_key(|(c, t)| (*c, t.trace_id));
    let (cold, trace) = with_cold[(with_cold.len() - 1) / 2];
    let origin = trace.start();
    Some(MedianTrace {
        container_id: trace.container_id().map(str::to_string),
        trace_id: trace.trace_id.to_hex(),
        cold_start_ns: cold,
        bars: trace
            .spans
            .iter()
            .zip(trace.depths())
            .map(|(s, depth)| WaterfallBar {
                name: s.name.clone(),
                depth,
                offset_ns: s.start_time_unix_nano - origin,
                duration_ns: s.duration_nanos(),
            })
            .collect(),
    })
}

/// Builds the report from spans, the shims' dropped count, optional client wall times and
/// caller sections.
pub fn build_report(
    spans: Vec<SpanRecord>,
    dropped_spans: u64,
    wall_times: &[WallTime],
    sections: Vec<Section>,
) -> Report {
    let span_count = spans.len();
    let traces = Trace::group(spans);
    let walls: BTreeMap<&str, u64> = wall_times
        .iter()
        .map(|w| (w.container_id.as_str(), w.wall_time_ns))
        .collect();
    let mut by_runtime: BTreeMap<String, Vec<&Trace>> = BTreeMap::new();
    for trace in &traces {
        by_runtime
            .entry(trace.report_group())
            .or_default()
            .push(trace);
    }
    let runtimes = by_runtime
        .into_iter()
        .map(|(runtime, traces)| {
            let mut per_phase: BTreeMap<Phase, Vec<u64>> = BTreeMap::new();
            let mut sums = Vec::new();
            let mut wall = Vec::new();
            let mut outside = Vec::new();
            for trace in &traces {
                let phases = trace.phases();
                for p in &phases {
                    per_phase
                        .entry(p.phase)
                        .or_default()
                        .push(p.duration_nanos());
                }
                let sum: u64 = phases.iter().map(|p| p.duration_nanos()).sum();
                if let Some(w) = trace.container_id().and_then(|c| walls.get(c)) {
                    if !phases.is_empty() {
                        sums.push(sum);
                        wall.push(*w);
                        outside.push(w.saturating_sub(sum));
                    }
                }
            }
            let mut cold: Vec<u64> = traces.iter().filter_map(|t| cold_start_nanos(t)).collect();
            let cold_start_histogram = histogram(&cold, 20);
            RuntimeReport {
                traces: traces.len(),
                phases: Phase::ALL
                    .iter()
                    .filter_map(|p| {
                        let stats = Stats::of(per_phase.get_mut(p)?)?;
                        Some(PhaseStats {
                            phase: *p,
                            label: p.label(),
                            stats,
                        })
                    })
                    .collect(),
                cold_start: Stats::of(&mut cold),
                cold_start_histogram,
                wall: Stats::of(&mut sums).map(|sum_of_phases| WallComparison {
                    n: sum_of_phases.n,
                    sum_of_phases,
                    wall_time: Stats::of(&mut wall).unwrap_or_default(),
                    outside_phases: Stats::of(&mut outside).unwrap_or_default(),
                }),
                median_trace: median_trace(&traces),
                runtime,
            }
        })
        .collect();
    Report {
        title: "shimtrace cold-start report".into(),
        traces: traces.len(),
        spans: span_count,
        dropped_spans,
        runtimes,
        // Pod startup leads the caller's sections (it is about the same traces as the runtimes).
        sections: crate::pod::startup_section(&traces)
            .into_iter()
            .chain(sections)
            .collect(),
    }
}

/// Renders the report in `format`.
pub fn render(report: &Report, format: Format) -> String {
    match format {
        Format::Md => render_markdown(report),
        Format::Json => serde_json::to_string_pretty(report).expect("a report always serializes"),
        Format::Html => render_html(report),
    }
}

fn stats_cells(s: &Stats) -> [String; 6] {
    [
        s.n.to_string(),
        fmt_ms(s.p50_ns),
        fmt_ms(s.p90_ns),
        fmt_ms(s.p99_ns),
        fmt_ms(s.min_ns),
        fmt_ms(s.max_ns),
    ]
}

const STATS_HEADER: [&str; 7] = ["phase", "n", "p50", "p90", "p99", "min", "max"];

fn phase_rows(r: &RuntimeReport) -> Vec<Vec<String>> {
    let mut rows: Vec<Vec<String>> = r
        .phases
        .iter()
        .map(|p| {
            let mut row = vec![p.label.to_string()];
            row.extend(stats_cells(&p.stats));
            row
        })
        .collect();
    if let Some(c) = &r.cold_start {
        let mut row = vec!["cold start (wrapper → running)".to_string()];
        row.extend(stats_cells(c));
        rows.push(row);
    }
    if let Some(w) = &r.wall {
        for (label, s) in [
            ("sum of phases", &w.sum_of_phases),
            ("client wall time", &w.wall_time),
            ("outside phases (wall − sum)", &w.outside_phases),
        ] {
            let mut row = vec![label.to_string()];
            row.extend(stats_cells(s));
            rows.push(row);
        }
    }
    rows
}

fn md_table(out: &mut String, header: &[String], rows: &[Vec<String>]) {
    let escape = |s: &str| s.replace('|', "\\|");
    let _ = writeln!(
        out,
        "| {} |",
        header
            .iter()
            .map(|h| escape(h))
            .collect::<Vec<_>>()
            .join(" | ")
    );
    let _ = writeln!(out, "|{}", "---|".repeat(header.len()));
    for row in rows {
        let _ = writeln!(
            out,
            "| {} |",
            row.iter()
                .map(|c| escape(c))
                .collect::<Vec<_>>()
                .join(" | ")
        );
    }
}

fn render_markdown(report: &Report) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "# {}\n", report.title);
    let _ = writeln!(
        out,
        "{} traces, {} spans, **{} spans dropped** by the shims.\n",
        report.traces, report.spans, report.dropped_spans
    );
    let header: Vec<String> = STATS_HEADER.iter().map(|s| s.to_string()).collect();
    for r in &report.runtimes {
        let _ = writeln!(out, "## Runtime `{}` ({} traces)\n", r.runtime, r.traces);
        md_table(&mut out, &header, &phase_rows(r));
        if let Some(w) = &r.wall {
            let _ = writeln!(
                out,
                "\nSum of phases vs client-observed wall time ({} containers): median {} of {} ({:.1}%).",
                w.n,
                fmt_ms(w.sum_of_phases.p50_ns),
                fmt_ms(w.wall_time.p50_ns),
                100.0 * w.sum_of_phases.p50_ns as f64 / w.wall_time.p50_ns.max(1) as f64
            );
        }
        if let Some(m) = &r.median_trace {
            let _ = writeln!(
                out,
                "\nMedian start: container `{}` (cold start {}):\n\n```",
                m.container_id.as_deref().unwrap_or("-"),
                fmt_ms(m.cold_start_ns)
            );
            for b in &m.bars {
                let _ = writeln!(
                    out,
                    "{:>12} {:>12}  {}{}",
                    format!("+{}", fmt_ms(b.offset_ns)),
                    fmt_ms(b.duration_ns),
                    "  ".repeat(b.depth),
                    b.name
                );
            }
            let _ = writeln!(out, "```");
        }
        out.push('\n');
    }
    for s in &report.sections {
        let _ = writeln!(out, "## {}\n", s.title);
        if !s.text.is_empty() {
            let _ = writeln!(out, "{}\n", s.text.trim_end());
        }
        if let Some((header, rows)) = &s.table {
            md_table(&mut out, header, rows);
            out.push('\n');
        }
    }
    out
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Bar colours (Tableau 10), one per nesting depth or runtime.
const PALETTE: [&str; 6] = [
    "#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#b07aa1",
];

fn html_table(out: &mut String, header: &[String], rows: &[Vec<String>]) {
    out.push_str("<table><thead><tr>");
    for h in header {
        let _ = write!(out, "<th>{}</th>", esc(h));
    }
    out.push_str("</tr></thead><tbody>");
    for row in rows {
        out.push_str("<tr>");
        for c in row {
            let _ = write!(out, "<td>{}</td>", esc(c));
        }
        out.push_str("</tr>");
    }
    out.push_str("</tbody></table>\n");
}

/// An SVG waterfall: one bar per span of the median trace.
fn waterfall_svg(m: &MedianTrace) -> String {
    let label_w = 300.0;
    let plot_w = 560.0;
    let row_h = 20.0;
    let height = row_h * m.bars.len() as f64 + 30.0;
    let total = m
        .bars
        .iter()
        .map(|b| b.offset_ns + b.duration_ns)
        .max()
        .unwrap_or(1)
        .max(1) as f64;
    let mut svg = format!(
        r#"<svg class="waterfall" xmlns="http://www.w3.org/2000/svg" width="{w}" height="{height}" viewBox="0 0 {w} {height}" role="img"><title>waterfall of container {c}</title>"#,
        w = label_w + plot_w + 110.0,
        c = esc(m.container_id.as_deref().unwrap_or("-"))
    );
    for (i, b) in m.bars.iter().enumerate() {
        let y = i as f64 * row_h + 4.0;
        let x = label_w + b.offset_ns as f64 / total * plot_w;
        let width = (b.duration_ns as f64 / total * plot_w).max(1.5);
        let _ = write!(
            svg,
            r##"<text x="{tx}" y="{ty}" font-size="12" font-family="monospace">{name}</text><rect class="bar" x="{x:.2}" y="{y:.2}" width="{width:.2}" height="{h}" fill="{fill}"><title>{name}: +{off} {dur}</title></rect><text x="{lx:.2}" y="{ty}" font-size="11" fill="#555">{dur}</text>"##,
            tx = 4.0 + 12.0 * b.depth as f64,
            ty = y + 12.0,
            name = esc(&b.name),
            h = row_h - 6.0,
            fill = PALETTE[b.depth % PALETTE.len()],
            off = fmt_ms(b.offset_ns),
            dur = fmt_ms(b.duration_ns),
            lx = x + width + 4.0,
        );
    }
    let axis_y = m.bars.len() as f64 * row_h + 12.0;
    let _ = write!(
        svg,
        r##"<line x1="{label_w}" y1="{axis_y}" x2="{x2}" y2="{axis_y}" stroke="#333"/><text x="{label_w}" y="{ty}" font-size="11">0</text><text x="{x2}" y="{ty}" font-size="11" text-anchor="end">{total}</text></svg>"##,
        x2 = label_w + plot_w,
        ty = axis_y + 14.0,
        total = fmt_ms(total as u64)
    );
    svg
}

/// An SVG histogram of cold-start times.
fn histogram_svg(bins: &[Bin], color: &str) -> String {
    let (w, h, pad) = (640.0, 220.0, 30.0);
    let max = bins.iter().map(|b| b.count).max().unwrap_or(1).max(1) as f64;
    let bar_w = (w - 2.0 * pad) / bins.len().max(1) as f64;
    let mut svg = format!(
        r#"<svg class="histogram" xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" role="img"><title>cold-start latency histogram</title>"#
    );
    for (i, b) in bins.iter().enumerate() {
        let bh = b.count as f64 / max * (h - 2.0 * pad);
        let _ = write!(
            svg,
            r#"<rect class="bin" x="{x:.2}" y="{y:.2}" width="{bw:.2}" height="{bh:.2}" fill="{color}"><title>{lo} – {hi}: {n}</title></rect>"#,
            x = pad + i as f64 * bar_w,
            y = h - pad - bh,
            bw = (bar_w - 1.0).max(1.0),
            lo = fmt_ms(b.lo_ns),
            hi = fmt_ms(b.hi_ns),
            n = b.count
        );
    }
    if let (Some(first), Some(last)) = (bins.first(), bins.last()) {
        let _ = write!(
            svg,
            r##"<line x1="{pad}" y1="{ay}" x2="{x2}" y2="{ay}" stroke="#333"/><text x="{pad}" y="{ty}" font-size="11">{lo}</text><text x="{x2}" y="{ty}" font-size="11" text-anchor="end">{hi}</text><text x="{pad}" y="14" font-size="11">max {max} per bin</text>"##,
            ay = h - pad,
            x2 = w - pad,
            ty = h - pad + 16.0,
            lo = fmt_ms(first.lo_ns),
            hi = fmt_ms(last.hi_ns),
        );
    }
    svg.push_str("</svg>");
    svg
}

fn render_html(report: &Report) -> String {
    let mut out = String::new();
    let _ = write!(
        out,
        r#"<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: sans-serif; margin: 2em; color: #222; }}
table {{ border-collapse: collapse; margin: 0.5em 0 1em; }}
th, td {{ border: 1px solid #ccc; padding: 3px 8px; text-align: right; }}
th:first-child, td:first-child {{ text-align: left; }}
figure {{ margin: 1em 0; }} figcaption {{ font-size: 0.9em; color: #555; }}
.dropped {{ font-weight: bold; }}
</style></head><body>
<h1>{title}</h1>
<p>{traces} traces, {spans} spans, <span class="dropped">{dropped} spans dropped</span> by the shims.</p>
"#,
        title = esc(&report.title),
        traces = report.traces,
        spans = report.spans,
        dropped = report.dropped_spans
    );
    let header: Vec<String> = STATS_HEADER.iter().map(|s| s.to_string()).collect();
    for (i, r) in report.runtimes.iter().enumerate() {
        let _ = writeln!(
            out,
            "<section class=\"runtime\"><h2>Runtime <code>{}</code> ({} traces)</h2>",
            esc(&r.runtime),
            r.traces
        );
        html_table(&mut out, &header, &phase_rows(r));
        if let Some(w) = &r.wall {
            let _ = writeln!(
                out,
                "<p>Sum of phases vs client-observed wall time ({} containers): median {} of {} ({:.1}%).</p>",
                w.n,
                fmt_ms(w.sum_of_phases.p50_ns),
                fmt_ms(w.wall_time.p50_ns),
                100.0 * w.sum_of_phases.p50_ns as f64 / w.wall_time.p50_ns.max(1) as f64
            );
        }
        if let Some(m) = &r.median_trace {
            let _ = writeln!(
                out,
                "<figure>{}<figcaption>Median start: container {} (cold start {})</figcaption></figure>",
                waterfall_svg(m),
                esc(m.container_id.as_deref().unwrap_or("-")),
                fmt_ms(m.cold_start_ns)
            );
        }
        if !r.cold_start_histogram.is_empty() {
            let _ = writeln!(
                out,
                "<figure>{}<figcaption>Cold start (wrapper start → container running), {} traces</figcaption></figure>",
                histogram_svg(&r.cold_start_histogram, PALETTE[(i + 1) % PALETTE.len()]),
                r.cold_start.map(|s| s.n).unwrap_or(0)
            );
        }
        out.push_str("</section>\n");
    }
    for s in &report.sections {
        let _ = writeln!(out, "<section class=\"extra\"><h2>{}</h2>", esc(&s.title));
        for para in s.text.split("\n\n").filter(|p| !p.trim().is_empty()) {
            let _ = writeln!(out, "<p>{}</p>", esc(para.trim()));
        }
        if let Some((header, rows)) = &s.table {
            html_table(&mut out, header, rows);
        }
        out.push_str("</section>\n");
    }
    out.push_str("</body></html>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::synth::{generate_spool, SynthConfig};

    fn synthetic(containers: usize) -> (Vec<SpanRecord>, Vec<WallTime>) {
        let dir = tempfile::tempdir().unwrap();
        let config = SynthConfig {
            containers,
            ..SynthConfig::default()
        };
        let (_, walls) = generate_spool(dir.path(), &config, |_| {}).unwrap();
        (crate::source::load_spool(dir.path()).unwrap().spans, walls)
    }

    #[test]
    fn percentiles_use_nearest_rank() {
        let mut v: Vec<u64> = (1..=100).rev().collect();
        let s = Stats::of(&mut v).unwrap();
        assert_eq!(
            (s.n, s.p50_ns, s.p90_ns, s.p99_ns, s.min_ns, s.max_ns),
            (100, 50, 90, 99, 1, 100)
        );
        assert_eq!(Stats::of(&mut [7]).unwrap().p99_ns, 7);
        assert!(Stats::of(&mut []).is_none());
    }

    #[test]
    fn report_has_every_phase_per_runtime_and_compares_wall_time() {
        let (spans, walls) = synthetic(60);
        let report = build_report(spans, 3, &walls, vec![]);
        assert_eq!(report.traces, 60);
        assert_eq!(report.runtimes.len(), 3);
        for r in &report.runtimes {
            assert_eq!(r.traces, 20);
            assert_eq!(r.phases.len(), 6, "{}", r.runtime);
            assert!(r
                .phases
                .iter()
                .all(|p| p.stats.n == 20 && p.stats.min_ns <= p.stats.p50_ns));
            let w = r.wall.as_ref().unwrap();
            assert_eq!(w.n, 20);
            assert!(w.sum_of_phases.p50_ns < w.wall_time.p50_ns);
            assert_eq!(r.median_trace.as_ref().unwrap().bars.len(), 10);
            assert_eq!(
                r.cold_start_histogram
                    .iter()
                    .map(|b| b.count)
                    .sum::<usize>(),
                20
            );
        }
        let runsc = report
            .runtimes
            .iter()
            .find(|r| r.runtime.contains("runsc"))
            .unwrap();
        let crun = report
            .runtimes
            .iter()
            .find(|r| r.runtime.contains("crun"))
            .unwrap();
        assert!(runsc.cold_start.unwrap().p50_ns > crun.cold_start.unwrap().p50_ns);
    }

    #[test]
    fn every_format_renders_runtimes_dropped_count_and_sections() {
        let (spans, walls) = synthetic(9);
        let section = Section {
            title: "Isolation probes".into(),
            text: "runsc blocks <ptrace>.".into(),
            table: Some((
                vec!["probe".into(), "runc".into()],
                vec![vec!["ptrace".into(), "allowed".into()]],
            )),
            data: serde_json::json!({"probes": 1}),
        };
        let report = build_report(spans, 5, &walls, vec![section]);
        let md = render(&report, Format::Md);
        assert!(md.contains("**5 spans dropped**"), "{md}");
        assert!(md.contains("| Create |"), "{md}");
        assert!(md.contains("## Isolation probes"));
        let json: serde_json::Value = serde_json::from_str(&render(&report, Format::Json)).unwrap();
        assert_eq!(json["dropped_spans"], 5);
        assert_eq!(json["runtimes"][0]["phases"][0]["phase"], "wrapper_start");
        assert!(json["runtimes"][0]["phases"][0]["p99_ns"].as_u64().unwrap() > 0);
        assert_eq!(json["sections"][0]["data"]["probes"], 1);
        let html = render(&report, Format::Html);
        assert_eq!(html.matches("<svg class=\"waterfall\"").count(), 3);
        assert_eq!(html.matches("<svg class=\"histogram\"").count(), 3);
        assert!(html.contains("runsc blocks &lt;ptrace&gt;."));
        assert!(!html.contains("src=\"http") && !html.contains("href=\"http"));
    }
}

/// A wall-time input that does not parse.
#[derive(Debug, thiserror::Error)]
#[error("wall-time input line {line}: {message} (expected a JSON array or JSON lines of {{\"container_id\": \"...\", \"wall_time_ns\": N}})")]
pub struct WallTimeError {
    pub line: usize,
    pub message: String,
}

/// Parses client-observed wall times: a JSON array, or one JSON object per line.
pub fn parse_wall_times(text: &str) -> Result<Vec<WallTime>, WallTimeError> {
    if text.trim_start().starts_with('[') {
        return serde_json::from_str(text).map_err(|e| WallTimeError {
            line: e.line(),
            message: e.to_string(),
        });
    }
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l).map_err(|e| WallTimeError {
                line: i + 1,
                message: e.to_string(),
            })
        })
        .collect()
}

#[cfg(test)]
mod wall_time_tests {
    use super::*;

    #[test]
    fn wall_times_parse_as_array_or_lines_and_errors_name_the_line() {
        let one = r#"{"container_id":"a","wall_time_ns":5}"#;
        assert_eq!(parse_wall_times(&format!("[{one}]")).unwrap().len(), 1);
        assert_eq!(
            parse_wall_times(&format!("{one}\n\n{one}\n"))
                .unwrap()
                .len(),
            2
        );
        let err = parse_wall_times(&format!("{one}\n{{\"container_id\":1}}\n")).unwrap_err();
        assert_eq!(err.line, 2);
        assert!(err.to_string().contains("wall_time_ns"));
    }
}
