//! The cold-start report: per runtime, phase latency statistics, sum of phases against the
//! client-observed wall time, dropped spans; rendered as JSON, or as one `shimtrace-render`
//! document written as Markdown, plain text or a self-contained HTML page with inline SVG charts.
//!
//! [`build_report`] + [`render`] are the library entry points; callers (the lab) add their own
//! [`Section`]s, which every format renders after the runtime sections.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use shimtrace_render::{Bin as ChartBin, Column, Document, Figure, Histogram, Table, Text};
use shimtrace_render::{Waterfall, WaterfallRow};
use shimtrace_span::{names, SpanRecord};

pub use crate::stats::Stats;
use crate::timeline::fmt_ms;
use crate::trace::{Phase, Trace};

/// Output formats of `shimtrace report`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Md,
    Json,
    Html,
    /// Plain text for a terminal.
    Text,
}

/// One phase's statistics in a runtime.
#[derive(Debug, Clone, Serialize)]
pub struct PhaseStats {
    pub phase: Phase,
    pub label: &'static str,
    #[serde(flatten)]
    pub stats: Stats,
}

/// How much of the client-observed time the phases account for, over the containers that have
/// a wall time and every phase (a sum of some phases says nothing about the whole).
#[derive(Debug, Clone, Serialize)]
pub struct WallComparison {
    /// Containers with every phase and a wall time.
    pub n: usize,
    /// Containers with a wall time but not every phase: left out.
    pub left_out: usize,
    /// Containers whose phases sum to more than their wall time (the shim's and the client's
    /// clocks disagree): their time outside the phases counts as 0.
    pub phases_above_wall: usize,
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

/// Time from the wrapper's start to the init process running ([`Trace::running_at`]); `None`
/// when it never ran.
pub fn cold_start_nanos(trace: &Trace) -> Option<u64> {
    let root = trace
        .spans
        .iter()
        .find(|s| s.name == names::WRAPPER_START)?;
    trace.running_at()?.checked_sub(root.start_time_unix_nano)
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
            let (mut left_out, mut phases_above_wall) = (0, 0);
            for trace in &traces {
                let phases = trace.phases();
                for p in &phases {
                    per_phase
                        .entry(p.phase)
                        .or_default()
                        .push(p.duration_nanos());
                }
                let sum: u64 = phases.iter().map(|p| p.duration_nanos()).sum();
                if let Some(&w) = trace.container_id().and_then(|c| walls.get(c)) {
                    if phases.len() < Phase::ALL.len() {
                        left_out += 1;
                    } else {
                        sums.push(sum);
                        wall.push(w);
                        outside.push(w.saturating_sub(sum));
                        phases_above_wall += usize::from(sum > w);
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
                    left_out,
                    phases_above_wall,
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
        sections: pod_startup_section(&traces)
            .into_iter()
            .chain(sections)
            .collect(),
    }
}

/// Renders the report in `format`.
pub fn render(report: &Report, format: Format) -> String {
    match format {
        Format::Md => document(report).to_markdown(),
        Format::Json => serde_json::to_string_pretty(report).expect("a report always serializes"),
        Format::Html => document(report).to_html(),
        Format::Text => document(report).to_text(),
    }
}

/// The report as a document: a section per runtime, then the caller's sections.
pub fn document(report: &Report) -> Document {
    let mut doc = Document::new(&report.title);
    doc.paragraph(
        Text::new()
            .plain(format!(
                "{} traces, {} spans, ",
                report.traces, report.spans
            ))
            .strong(format!("{} spans dropped", report.dropped_spans))
            .plain(" by the shims."),
    );
    for (i, r) in report.runtimes.iter().enumerate() {
        runtime_section(&mut doc, i, r);
    }
    for s in &report.sections {
        caller_section(&mut doc, s);
    }
    doc
}

/// Nanoseconds as the report writes them (`12.345 ms`).
fn ns(v: f64) -> String {
    fmt_ms(v as u64)
}

/// A table row: the label, then the count and the percentiles in milliseconds.
pub(crate) fn stats_row(label: &str, s: &Stats) -> [String; 7] {
    [
        label.to_string(),
        s.n.to_string(),
        fmt_ms(s.p50_ns),
        fmt_ms(s.p90_ns),
        fmt_ms(s.p99_ns),
        fmt_ms(s.min_ns),
        fmt_ms(s.max_ns),
    ]
}

/// Phase statistics, then cold start and the wall-time comparison in the same columns.
fn phase_table(r: &RuntimeReport) -> Table {
    let mut table = Table::keyed("phase", ["n", "p50", "p90", "p99", "min", "max"]);
    for p in &r.phases {
        table.row(stats_row(p.label, &p.stats));
    }
    if let Some(c) = &r.cold_start {
        table.row(stats_row("cold start (wrapper → running)", c));
    }
    if let Some(w) = &r.wall {
        table.row(stats_row("sum of phases", &w.sum_of_phases));
        table.row(stats_row("client wall time", &w.wall_time));
        table.row(stats_row("outside phases (wall − sum)", &w.outside_phases));
    }
    table
}

fn median_figure(m: &MedianTrace) -> Figure {
    let container = m.container_id.as_deref().unwrap_or("-");
    Figure::listed(
        Waterfall {
            title: format!("waterfall of container {container}"),
            rows: m
                .bars
                .iter()
                .map(|b| WaterfallRow {
                    label: b.name.clone(),
                    depth: b.depth,
                    start: b.offset_ns as f64,
                    length: b.duration_ns as f64,
                })
                .collect(),
            markers: Vec::new(),
            format: ns,
        },
        Text::new()
            .plain("Median start: container ")
            .code(container)
            .plain(format!(" (cold start {})", fmt_ms(m.cold_start_ns))),
    )
}

/// `index` picks the histogram's colour, so runtimes side by side differ.
fn runtime_section(doc: &mut Document, index: usize, r: &RuntimeReport) {
    doc.heading(
        2,
        Text::new()
            .plain("Runtime ")
            .code(&r.runtime)
            .plain(format!(" ({} traces)", r.traces)),
    );
    doc.push(phase_table(r));
    if let Some(w) = &r.wall {
        doc.paragraph(wall_paragraph(w));
    }
    if let Some(m) = &r.median_trace {
        doc.push(median_figure(m));
    }
    if !r.cold_start_histogram.is_empty() {
        doc.push(Figure::drawn_only(
            Histogram {
                title: "cold-start latency histogram".into(),
                bins: r
                    .cold_start_histogram
                    .iter()
                    .map(|b| ChartBin {
                        lo: b.lo_ns as f64,
                        hi: b.hi_ns as f64,
                        count: b.count,
                    })
                    .collect(),
                color: index + 1,
                format: ns,
            },
            format!(
                "Cold start (wrapper start → container running), {} traces",
                r.cold_start.map(|s| s.n).unwrap_or(0)
            ),
        ));
    }
}

/// What the wall-time comparison amounts to, saying what it leaves out.
fn wall_paragraph(w: &WallComparison) -> String {
    let containers = |n: usize| match n {
        1 => "1 container".to_string(),
        n => format!("{n} containers"),
    };
    let mut text = format!(
        "Sum of phases vs client-observed wall time, over the {} with every phase: \
         the median sum, {}, is {:.1}% of the median wall time, {} (a ratio of medians).",
        containers(w.n),
        fmt_ms(w.sum_of_phases.p50_ns),
        100.0 * w.sum_of_phases.p50_ns as f64 / w.wall_time.p50_ns.max(1) as f64,
        fmt_ms(w.wall_time.p50_ns),
    );
    if w.left_out > 0 {
        text.push_str(&format!(
            " Left out: {} with a wall time but not every phase.",
            containers(w.left_out)
        ));
    }
    if w.phases_above_wall > 0 {
        text.push_str(&format!(
            " In {}, the phases sum to more than the wall time (the shim's and the client's \
             clocks disagree): their time outside the phases counts as 0.",
            w.phases_above_wall
        ));
    }
    text
}

fn caller_section(doc: &mut Document, s: &Section) {
    doc.heading(2, s.title.as_str());
    for para in s.text.split("\n\n").filter(|p| !p.trim().is_empty()) {
        doc.paragraph(para.trim_start_matches('\n').trim_end());
    }
    if let Some((header, rows)) = &s.table {
        let mut table = Table::new(header.iter().map(Column::left));
        for row in rows {
            table.row(row);
        }
        doc.push(table);
    }
}

/// A client-observed wall time for one container (the report's optional input; `shimtrace synth`
/// writes them beside its spool).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct WallTime {
    pub container_id: String,
    pub wall_time_ns: u64,
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

/// The report's pod startup section; `None` when no pod started completely.
pub(crate) fn pod_startup_section(traces: &[Trace]) -> Option<Section> {
    let reports = crate::pod::startup_reports(traces);
    if reports.is_empty() {
        return None;
    }
    let header = [
        "handler / runtime",
        "part",
        "pods",
        "p50",
        "p90",
        "p99",
        "min",
        "max",
    ]
    .map(str::to_string)
    .to_vec();
    let mut rows = Vec::new();
    for r in &reports {
        for (part, s) in [
            ("pod startup (sandbox → every container running)", &r.total),
            ("sandbox (start → sandbox running)", &r.sandbox),
            (
                "containers (sandbox running → every container running)",
                &r.containers,
            ),
        ] {
            let mut row = vec![r.group.clone()];
            row.extend(stats_row(part, s));
            rows.push(row);
        }
    }
    Some(Section {
        title: "Pod startup".into(),
        text: "From the pod's sandbox starting until every container runs, split where the \
               sandbox runs: sandbox time before, container time after (the kubelet's work between \
               the calls, such as image pulls, included). Pods whose sandbox or containers were \
               not all traced are left out."
            .into(),
        table: Some((header, rows)),
        data: serde_json::to_value(&reports).unwrap_or_default(),
    })
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
    fn the_wall_comparison_takes_complete_traces_and_says_what_it_left_out() {
        let (mut spans, mut walls) = synthetic(9);
        let traces = Trace::group(spans.clone());
        let runc: Vec<&Trace> = traces.iter().filter(|t| t.runtime() == "runc").collect();
        let (partial, fast) = (
            runc[0].container_id().unwrap().to_string(),
            runc[1].container_id().unwrap().to_string(),
        );
        // One container without its Create, one whose client saw less than the phases.
        spans.retain(|s| {
            !(s.container_id() == Some(partial.as_str()) && s.name.ends_with("/Create"))
        });
        for w in &mut walls {
            if w.container_id == fast {
                w.wall_time_ns = 1;
            }
        }
        let report = build_report(spans, 0, &walls, vec![]);
        let r = report
            .runtimes
            .iter()
            .find(|r| r.runtime == "runc")
            .unwrap();
        let w = r.wall.as_ref().unwrap();
        assert_eq!((w.n, w.left_out, w.phases_above_wall), (2, 1, 1));
        assert_eq!(w.outside_phases.min_ns, 0);
        let text = render(&report, Format::Text);
        assert!(
            text.contains("over the 2 containers with every phase")
                && text.contains("a ratio of medians")
                && text.contains("Left out: 1 container with a wall time but not every phase.")
                && text.contains("In 1, the phases sum to more than the wall time"),
            "{text}"
        );
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
        // The median trace is a listing in the text formats, a chart only in HTML.
        assert_eq!(md.matches("Median start: container `").count(), 3, "{md}");
        assert!(md.contains("```\n   +0.000 ms "), "{md}");
        let text = render(&report, Format::Text);
        assert!(
            text.contains("5 spans dropped") && !text.contains("**"),
            "{text}"
        );
        assert!(
            text.contains("Isolation probes\n----------------\n"),
            "{text}"
        );
        assert!(text.contains("runsc blocks <ptrace>."));
        assert_eq!(text.matches("Median start: container ").count(), 3);
        assert!(!text.contains("<svg"));
    }
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
