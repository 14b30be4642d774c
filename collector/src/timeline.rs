//! Terminal views of traces: per-container timelines, the trace list and the waterfall, plus the
//! stable JSON shape of a span.
//!
//! Everything a span carries (names, ids, attribute values) comes from the spool, which whoever
//! can talk to a shim can influence: in terminal views it passes through [`for_terminal`], so it
//! can neither move the cursor, clear the screen or retitle the terminal, nor reorder the line.
//! (The report's text and Markdown do the same, with the same function.)

use std::fmt::Write as _;

use serde::Serialize;
pub use shimtrace_render::for_terminal;
use shimtrace_span::{
    attr, Attributes, SpanEvent, SpanId, SpanKind, SpanRecord, SpanStatus, TraceId,
};

use crate::trace::{Phase, Trace, TraceSummary};

/// A span as `shimtrace traces --json` prints it: every field always present
/// (`parent_span_id` is `null` for a root), so scripts can rely on the keys.
#[derive(Debug, Serialize)]
pub struct SpanJson<'a> {
    pub trace_id: TraceId,
    pub span_id: SpanId,
    pub parent_span_id: Option<SpanId>,
    pub name: &'a str,
    pub kind: SpanKind,
    pub start_time_unix_nano: u64,
    pub end_time_unix_nano: u64,
    pub attributes: &'a Attributes,
    pub events: &'a [SpanEvent],
    pub status: &'a SpanStatus,
}

impl<'a> From<&'a SpanRecord> for SpanJson<'a> {
    fn from(s: &'a SpanRecord) -> Self {
        SpanJson {
            trace_id: s.trace_id,
            span_id: s.span_id,
            parent_span_id: s.parent_span_id,
            name: &s.name,
            kind: s.kind,
            start_time_unix_nano: s.start_time_unix_nano,
            end_time_unix_nano: s.end_time_unix_nano,
            attributes: &s.attributes,
            events: &s.events,
            status: &s.status,
        }
    }
}

/// The spans of `traces` as one JSON array, trace by trace, each in start order.
pub fn spans_json(traces: &[Trace]) -> serde_json::Result<String> {
    let spans: Vec<SpanJson> = traces
        .iter()
        .flat_map(|t| t.spans.iter().map(SpanJson::from))
        .collect();
    serde_json::to_string_pretty(&spans)
}

/// Widest waterfall drawn, in columns; wider requests are drawn this wide.
pub const MAX_WIDTH: usize = 1000;
/// Narrowest waterfall drawn, in columns.
pub const MIN_WIDTH: usize = 10;

/// Milliseconds with microsecond precision: `12.345 ms`.
pub fn fmt_ms(nanos: u64) -> String {
    format!("{:.3} ms", nanos as f64 / 1e6)
}

/// Attributes worth a glance on a timeline line (ids and runtime go in the trace header).
const KEY_ATTRS: [(&str, &str); 6] = [
    (attr::CONTAINERD_EXEC_ID, "exec"),
    (attr::PROCESS_PID, "pid"),
    (attr::PROCESS_EXIT_CODE, "exit"),
    (attr::RPC_TTRPC_STATUS_CODE, "status"),
    (attr::OUTCOME, "outcome"),
    (attr::PROTOCOL, "protocol"),
];

fn key_attributes(span: &SpanRecord) -> String {
    let mut out = String::new();
    for (key, label) in KEY_ATTRS {
        if let Some(value) = span.attributes.get(key) {
            // A zero status code is the normal case and only adds noise.
            if key == attr::RPC_TTRPC_STATUS_CODE && value.as_i64() == Some(0) {
                continue;
            }
            let _ = write!(out, " {label}={}", for_terminal(&value.to_string()));
        }
    }
    if let SpanStatus::Error(message) = &span.status {
        let _ = write!(out, " error={message:?}");
    }
    for event in &span.events {
        let _ = write!(
            out,
            " [{} @{}]",
            for_terminal(&event.name),
            fmt_ms(
                event
                    .time_unix_nano
                    .saturating_sub(span.start_time_unix_nano)
            )
        );
    }
    out
}

fn header(trace: &Trace, summary: &TraceSummary) -> String {
    let mut line = format!(
        "container {}",
        for_terminal(summary.container_id.as_deref().unwrap_or("(none)"))
    );
    if let Some(ns) = &summary.namespace {
        let _ = write!(line, "  namespace {}", for_terminal(ns));
    }
    let _ = write!(
        line,
        "  trace {}  runtime {}  spans {}  status {}",
        trace.trace_id,
        for_terminal(&summary.runtime),
        summary.span_count,
        for_terminal(&summary.status)
    );
    if let Some(code) = summary.exit_code {
        let _ = write!(line, " (exit {code})");
    }
    line
}

fn phase_line(summary: &TraceSummary) -> Option<String> {
    let parts: Vec<String> = Phase::ALL
        .iter()
        .filter_map(|p| {
            summary
                .phases
                .get(p.key())
                .map(|d| format!("{} {}", p.label(), fmt_ms(*d)))
        })
        .collect();
    (!parts.is_empty()).then(|| format!("  phases: {}", parts.join(", ")))
}

/// Per container: a header, its phases, then one line per span with its offset from the trace's
/// first span, its duration, its name (indented by nesting) and key attributes.
pub fn render_timelines(traces: &[Trace]) -> String {
    let mut out = String::new();
    for (i, trace) in traces.iter().enumerate() {
        if i > 0 {
            out.push('\n');
        }
        let summary = trace.summary();
        let _ = writeln!(out, "{}", header(trace, &summary));
        if let Some(line) = phase_line(&summary) {
            let _ = writeln!(out, "{line}");
        }
        let _ = writeln!(out, "  {:>12}  {:>12}  span", "offset", "duration");
        let origin = trace.start();
        for (span, depth) in trace.spans.iter().zip(trace.depths()) {
            let _ = writeln!(
                out,
                "  {:>12}  {:>12}  {}{}{}",
                format!("+{}", fmt_ms(span.start_time_unix_nano - origin)),
                fmt_ms(span.duration_nanos()),
                "  ".repeat(depth),
                for_terminal(&span.name),
                key_attributes(span)
            );
        }
    }
    if traces.is_empty() {
        out.push_str("no spans found\n");
    }
    out
}

/// One line per trace: container, runtime, status and phase durations.
pub fn render_summary_table(traces: &[Trace]) -> String {
    let mut out = String::new();
    let _ = write!(
        out,
        "{:<24} {:<12} {:<34} {:<8} {:>5}",
        "CONTAINER", "NAMESPACE", "RUNTIME", "STATUS", "SPANS"
    );
    for p in Phase::ALL {
        let _ = write!(out, " {:>14}", p.key().to_uppercase());
    }
    out.push('\n');
    for trace in traces {
        let s = trace.summary();
        let _ = write!(
            out,
            "{:<24} {:<12} {:<34} {:<8} {:>5}",
            for_terminal(s.container_id.as_deref().unwrap_or("(none)")),
            for_terminal(s.namespace.as_deref().unwrap_or("-")),
            for_terminal(&s.runtime),
            for_terminal(&s.status),
            s.span_count
        );
        for p in Phase::ALL {
            let cell = s
                .phases
                .get(p.key())
                .map(|d| fmt_ms(*d))
                .unwrap_or_else(|| "-".into());
            let _ = write!(out, " {cell:>14}");
        }
        out.push('\n');
    }
    out
}

/// A waterfall: one bar per span, placed by offset and scaled by duration across `width` columns
/// (at least [`MIN_WIDTH`], at most [`MAX_WIDTH`]).
pub fn render_waterfall(trace: &Trace, width: usize) -> String {
    let width = width.clamp(MIN_WIDTH, MAX_WIDTH);
    let origin = trace.start();
    let total = trace.end().saturating_sub(origin).max(1);
    let summary = trace.summary();
    let mut out = String::new();
    let _ = writeln!(out, "{}", header(trace, &summary));
    if let Some(line) = phase_line(&summary) {
        let _ = writeln!(out, "{line}");
    }
    let rows: Vec<(String, u64, u64)> = trace
        .spans
        .iter()
        .zip(trace.depths())
        .map(|(s, d)| {
            let label = format!("{}{}", "  ".repeat(d), for_terminal(&s.name));
            (label, s.start_time_unix_nano, s.end_time_unix_nano)
        })
        .collect();
    write_bars(&mut out, &rows, origin, total, width, 48);
    out
}

/// One bar per `(label, start, end)` row, placed by its offset from `origin` and scaled so `total`
/// nanoseconds fill `width` columns, then the time axis; labels are cut to `max_label` characters.
pub(crate) fn write_bars(
    out: &mut String,
    rows: &[(String, u64, u64)],
    origin: u64,
    total: u64,
    width: usize,
    max_label: usize,
) {
    let label_width = rows
        .iter()
        .map(|(l, _, _)| l.chars().count())
        .max()
        .unwrap_or(4)
        .min(max_label);
    for (label, start, end) in rows {
        let offset = start.saturating_sub(origin);
        let duration = end.saturating_sub(*start);
        let begin = ((offset as u128 * width as u128 / total as u128) as usize).min(width - 1);
        let len = ((duration as u128 * width as u128).div_ceil(total as u128) as usize)
            .max(1)
            .min(width - begin);
        let label: String = label.chars().take(label_width).collect();
        let _ = writeln!(
            out,
            "{label:<label_width$} |{}{}{}| +{} {}",
            " ".repeat(begin),
            "█".repeat(len),
            " ".repeat(width - begin - len),
            fmt_ms(offset),
            fmt_ms(duration)
        );
    }
    let _ = writeln!(
        out,
        "{:<label_width$}  0{:>w$}",
        "",
        fmt_ms(total),
        w = width
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trace::tests::container_trace;

    #[test]
    fn timeline_lists_every_span_with_offset_and_duration() {
        let traces = Trace::group(container_trace(TraceId([1; 16]), "c1"));
        let text = render_timelines(&traces);
        assert!(
            text.starts_with("container c1  namespace default  trace 0101"),
            "{text}"
        );
        assert!(
            text.contains("+0.000 ms     30.000 ms  shim.start"),
            "{text}"
        );
        assert!(
            text.contains("+40.000 ms     50.000 ms    containerd.task.v2.Task/Create"),
            "{text}"
        );
        assert!(text.contains("exit=3"), "{text}");
        assert_eq!(
            text.lines()
                .filter(|l| l.contains("containerd.task"))
                .count(),
            5
        );
    }

    #[test]
    fn spans_json_always_has_parent_key() {
        let traces = Trace::group(container_trace(TraceId([1; 16]), "c1"));
        let value: serde_json::Value = serde_json::from_str(&spans_json(&traces).unwrap()).unwrap();
        let spans = value.as_array().unwrap();
        assert_eq!(spans.len(), 7);
        let root = spans.iter().find(|s| s["name"] == "shim.start").unwrap();
        assert!(root["parent_span_id"].is_null());
        assert!(root["attributes"].is_object());
        let create = spans
            .iter()
            .find(|s| s["name"] == "containerd.task.v2.Task/Create")
            .unwrap();
        assert_eq!(create["parent_span_id"], root["span_id"]);
    }

    #[test]
    fn waterfall_bars_are_placed_by_offset() {
        let trace = Trace::group(container_trace(TraceId([1; 16]), "c1")).remove(0);
        let text = render_waterfall(&trace, 44);
        let root_line = text.lines().find(|l| l.starts_with("shim.start")).unwrap();
        assert!(root_line.contains("|██████"), "{text}");
        let shutdown = text.lines().find(|l| l.contains("Shutdown")).unwrap();
        let bar = shutdown.split('|').nth(1).unwrap();
        assert!(
            bar.starts_with("                                          "),
            "{text}"
        );
    }

    #[test]
    fn a_huge_width_is_clamped_instead_of_a_panic() {
        let trace = Trace::group(container_trace(TraceId([1; 16]), "c1")).remove(0);
        for width in [65_536, usize::MAX] {
            let text = render_waterfall(&trace, width);
            let longest = text.lines().map(|l| l.chars().count()).max().unwrap();
            assert!(longest <= MAX_WIDTH + 100, "{longest} columns");
        }
    }

    #[test]
    fn control_characters_from_spans_are_escaped_in_terminal_views() {
        let mut spans = container_trace(TraceId([1; 16]), "c1\r\u{1b}[2Jx");
        spans[0].name = "shim.start\u{1b}]0;title\u{7}".into();
        spans[0]
            .attributes
            .insert(attr::OUTCOME.into(), "\u{9b}31mred\u{7f}".into());
        spans[0].status = SpanStatus::Error("bad\u{1b}[1m".into());
        let at = spans[1].start_time_unix_nano;
        spans[1].events.push(SpanEvent {
            name: "/tasks/\u{1b}[8m".into(),
            time_unix_nano: at,
            attributes: Default::default(),
        });
        let traces = Trace::group(spans);
        for text in [
            render_timelines(&traces),
            render_summary_table(&traces),
            render_waterfall(&traces[0], 40),
        ] {
            assert!(
                !text.chars().any(|c| c.is_control() && c != '\n'),
                "{text:?}"
            );
        }
        let text = render_timelines(&traces);
        assert!(text.contains("shim.start\\u{1b}]0;title\\u{7}"), "{text}");
        assert!(text.contains("container c1\\r\\u{1b}[2Jx"), "{text}");
    }
}
