//! Terminal views of traces: per-container timelines, the trace list and the waterfall, plus the
//! stable JSON shape of a span.

use std::fmt::Write as _;

use serde::Serialize;
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
            let _ = write!(out, " {label}={value}");
        }
    }
    if let SpanStatus::Error(message) = &span.status {
        let _ = write!(out, " error={message:?}");
    }
    for event in &span.events {
        let _ = write!(
            out,
            " [{} @{}]",
            event.name,
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
        summary.container_id.as_deref().unwrap_or("(none)")
    );
    if let Some(ns) = &summary.namespace {
        let _ = write!(line, "  namespace {ns}");
    }
    let _ = write!(
        line,
        "  trace {}  runtime {}  spans {}  status {}",
        trace.trace_id, summary.runtime, summary.span_count, summary.status
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
                span.name,
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
            s.container_id.as_deref().unwrap_or("(none)"),
            s.namespace.as_deref().unwrap_or("-"),
            s.runtime,
            s.status,
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

/// A waterfall: one bar per span, placed by offset and scaled by duration across `width` columns.
pub fn render_waterfall(trace: &Trace, width: usize) -> String {
    let width = width.max(10);
    let origin = trace.start();
    let total = trace.end().saturating_sub(origin).max(1);
    let summary = trace.summary();
    let mut out = String::new();
    let _ = writeln!(out, "{}", header(trace, &summary));
    if let Some(line) = phase_line(&summary) {
        let _ = writeln!(out, "{line}");
    }
    let labels: Vec<String> = trace
        .spans
        .iter()
        .zip(trace.depths())
        .map(|(s, d)| format!("{}{}", "  ".repeat(d), s.name))
        .collect();
    let label_width = labels
        .iter()
        .map(|l| l.chars().count())
        .max()
        .unwrap_or(4)
        .min(48);
    for (span, label) in trace.spans.iter().zip(&labels) {
        let offset = span.start_time_unix_nano - origin;
        let begin = (offset as u128 * width as u128 / total as u128) as usize;
        let len = ((span.duration_nanos() as u128 * width as u128).div_ceil(total as u128)
            as usize)
            .max(1);
        let begin = begin.min(width - 1);
        let len = len.min(width - begin);
        let bar = format!(
            "{}{}{}",
            " ".repeat(begin),
            "█".repeat(len),
            " ".repeat(width - begin - len)
        );
        let label: String = label.chars().take(label_width).collect();
        let _ = writeln!(
            out,
            "{label:<label_width$} |{bar}| +{} {}",
            fmt_ms(offset),
            fmt_ms(span.duration_nanos())
        );
    }
    let _ = writeln!(
        out,
        "{:<label_width$}  0{:>w$}",
        "",
        fmt_ms(total),
        w = width
    );
    out
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
}
