//! Where a wrapped cold start's extra time goes, from the spans the wrapper itself recorded: the
//! wrapper's own share of `start` (everything but the inner shim's `start`), the proxy's spawn, and
//! the same for `delete` when containerd ran it.

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;
use shimtrace_collector::stats::Summary;
use shimtrace_span::{names, SpanRecord, TraceId};

/// Medians over the wrapped containers of one cold-start kind (milliseconds).
#[derive(Debug, Clone, Serialize)]
pub struct StartBreakdown {
    pub containers: usize,
    /// The wrapper's `start` process, from its `main` to its reply (span `shim.start`).
    pub wrapper_start_ms: Option<Summary>,
    /// The inner shim's own `start`, run by the wrapper (span `inner.start`).
    pub inner_start_ms: Option<Summary>,
    /// `shim.start` − `inner.start`: what the wrapper adds inside its own process.
    pub wrapper_own_start_ms: Option<Summary>,
    /// Spawning the proxy and waiting for its readiness (span `proxy.ensure`).
    pub proxy_ensure_ms: Option<Summary>,
    /// `shim.delete` − `inner.delete`, for containers where containerd ran the shim's `delete`.
    pub wrapper_own_delete_ms: Option<Summary>,
    pub deletes_seen: usize,
}

fn duration_ms(span: &SpanRecord) -> f64 {
    span.duration_nanos() as f64 / 1e6
}

/// Summarises the spans of every container whose id starts with `prefix` and ends with `suffix`.
pub fn of_containers(spans: &[SpanRecord], prefix: &str, suffix: &str) -> StartBreakdown {
    // `proxy.ensure` names no container; it shares the trace of the `start` that ran it.
    let container_of_trace: HashMap<TraceId, &str> = spans
        .iter()
        .filter_map(|s| Some((s.trace_id, s.container_id()?)))
        .collect();
    let mut by_container: BTreeMap<&str, Vec<&SpanRecord>> = BTreeMap::new();
    for span in spans {
        let id = span
            .container_id()
            .or_else(|| container_of_trace.get(&span.trace_id).copied());
        if let Some(id) = id.filter(|id| id.starts_with(prefix) && id.ends_with(suffix)) {
            by_container.entry(id).or_default().push(span);
        }
    }
    let (mut wrapper, mut inner, mut own, mut ensure, mut own_delete) =
        (vec![], vec![], vec![], vec![], vec![]);
    for spans in by_container.values() {
        let find = |name: &str| {
            spans
                .iter()
                .find(|s| s.name == name)
                .map(|s| duration_ms(s))
        };
        if let (Some(w), Some(i)) = (find(names::WRAPPER_START), find(names::INNER_START)) {
            wrapper.push(w);
            inner.push(i);
            own.push(w - i);
        }
        if let Some(e) = find(names::PROXY_ENSURE) {
            ensure.push(e);
        }
        if let (Some(w), Some(i)) = (find(names::WRAPPER_DELETE), find(names::INNER_DELETE)) {
            own_delete.push(w - i);
        }
    }
    StartBreakdown {
        containers: by_container.len(),
        wrapper_start_ms: Summary::of(&wrapper),
        inner_start_ms: Summary::of(&inner),
        wrapper_own_start_ms: Summary::of(&own),
        proxy_ensure_ms: Summary::of(&ensure),
        deletes_seen: own_delete.len(),
        wrapper_own_delete_ms: Summary::of(&own_delete),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shimtrace_span::{attr, Attributes, SpanId, SpanKind, SpanStatus};

    /// A span of container `id` (none for an empty id), in a trace of its own per container.
    fn span(id: &str, name: &str, start_ms: u64, end_ms: u64) -> SpanRecord {
        let mut attributes = Attributes::new();
        if !id.is_empty() {
            attributes.insert(attr::CONTAINERD_CONTAINER_ID.into(), id.into());
        }
        let mut trace = [0u8; 16];
        trace[..id.len().min(16)].copy_from_slice(&id.as_bytes()[..id.len().min(16)]);
        SpanRecord {
            trace_id: TraceId(trace),
            span_id: SpanId::random(),
            parent_span_id: None,
            name: name.into(),
            kind: SpanKind::Internal,
            start_time_unix_nano: start_ms * 1_000_000,
            end_time_unix_nano: end_ms * 1_000_000,
            attributes,
            events: Vec::new(),
            status: SpanStatus::Ok,
        }
    }

    #[test]
    fn wrapper_share_is_start_minus_inner_start_per_container() {
        let spans = vec![
            span("c-0-wrapped", names::WRAPPER_START, 0, 30),
            span("c-0-wrapped", names::INNER_START, 2, 22),
            SpanRecord {
                trace_id: span("c-0-wrapped", "", 0, 0).trace_id,
                ..span("", names::PROXY_ENSURE, 23, 28)
            },
            span("c-1-wrapped", names::WRAPPER_START, 0, 40),
            span("c-1-wrapped", names::INNER_START, 5, 35),
            span("c-1-wrapped", names::WRAPPER_DELETE, 50, 60),
            span("c-1-wrapped", names::INNER_DELETE, 52, 58),
            span("other", names::WRAPPER_START, 0, 1000),
        ];
        let b = of_containers(&spans, "c-", "-wrapped");
        assert_eq!(b.containers, 2);
        let own = b.wrapper_own_start_ms.unwrap();
        assert_eq!((own.min, own.max), (10.0, 10.0));
        assert_eq!(b.proxy_ensure_ms.unwrap().n, 1);
        assert_eq!(b.deletes_seen, 1);
        assert_eq!(b.wrapper_own_delete_ms.unwrap().p50, 4.0);
        assert!(of_containers(&spans, "x", "").wrapper_start_ms.is_none());
    }
}
