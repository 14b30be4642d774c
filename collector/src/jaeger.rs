//! Jaeger UI "Upload JSON" format (the query API's shape): one entry per trace, parent links as
//! `CHILD_OF` references, microsecond times, one process per trace carrying the resource.

use serde::Serialize;
use serde_json::{json, Value};
use shimtrace_span::{AttributeValue, Attributes, SpanKind, SpanRecord, SpanStatus};

use crate::export::{host_name, ResourceResolver, RUNTIME_RESOURCE_ATTR};
use crate::trace::Trace;

fn tag(key: &str, value: &AttributeValue) -> Value {
    let (kind, value) = match value {
        AttributeValue::Bool(b) => ("bool", json!(b)),
        AttributeValue::Int(i) => ("int64", json!(i)),
        AttributeValue::Double(d) => ("float64", json!(d)),
        AttributeValue::String(s) => ("string", json!(s)),
    };
    json!({"key": key, "type": kind, "value": value})
}

fn tags(attributes: &Attributes) -> Vec<Value> {
    attributes.iter().map(|(k, v)| tag(k, v)).collect()
}

fn micros(nanos: u64) -> u64 {
    nanos / 1000
}

fn span_json(span: &SpanRecord) -> Value {
    let mut span_tags = tags(&span.attributes);
    let kind = match span.kind {
        SpanKind::Internal => "internal",
        SpanKind::Server => "server",
        SpanKind::Client => "client",
        SpanKind::Producer => "producer",
        SpanKind::Consumer => "consumer",
    };
    span_tags.push(tag("span.kind", &kind.into()));
    if let SpanStatus::Error(message) = &span.status {
        span_tags.push(tag("error", &true.into()));
        span_tags.push(tag("otel.status_description", &message.as_str().into()));
    }
    let references: Vec<Value> = span
        .parent_span_id
        .map(|parent| {
            json!({"refType": "CHILD_OF", "traceID": span.trace_id.to_hex(), "spanID": parent.to_hex()})
        })
        .into_iter()
        .collect();
    let logs: Vec<Value> = span
        .events
        .iter()
        .map(|e| {
            let mut fields = vec![tag("event", &e.name.as_str().into())];
            fields.extend(tags(&e.attributes));
            json!({"timestamp": micros(e.time_unix_nano), "fields": fields})
        })
        .collect();
    json!({
        "traceID": span.trace_id.to_hex(),
        "spanID": span.span_id.to_hex(),
        "flags": 1,
        "operationName": span.name,
        "references": references,
        "startTime": micros(span.start_time_unix_nano),
        "duration": micros(span.end_time_unix_nano).saturating_sub(micros(span.start_time_unix_nano)),
        "tags": span_tags,
        "logs": logs,
        "processID": "p1",
        "warnings": null,
    })
}

#[derive(Serialize)]
struct Upload {
    data: Vec<Value>,
    total: usize,
    limit: usize,
    offset: usize,
    errors: Option<()>,
}

/// The Jaeger JSON document for `spans` (grouped into traces).
pub fn to_jaeger_json(spans: Vec<SpanRecord>, service_name: &str) -> Value {
    let mut resolver = ResourceResolver::default();
    resolver.learn(&spans);
    let host = host_name();
    let data: Vec<Value> = Trace::group(spans)
        .iter()
        .map(|trace| {
            let key = trace.spans.first().map(|s| resolver.key(s)).unwrap_or(
                crate::export::ResourceKey {
                    namespace: None,
                    runtime: None,
                },
            );
            let mut process_tags = vec![tag("hostname", &host.as_str().into())];
            if let Some(ns) = &key.namespace {
                process_tags.push(tag(
                    shimtrace_span::attr::CONTAINERD_NAMESPACE,
                    &ns.as_str().into(),
                ));
            }
            if let Some(rt) = &key.runtime {
                process_tags.push(tag(RUNTIME_RESOURCE_ATTR, &rt.as_str().into()));
            }
            json!({
                "traceID": trace.trace_id.to_hex(),
                "spans": trace.spans.iter().map(span_json).collect::<Vec<_>>(),
                "processes": {"p1": {"serviceName": service_name, "tags": process_tags}},
                "warnings": null,
            })
        })
        .collect();
    serde_json::to_value(Upload {
        total: data.len(),
        data,
        limit: 0,
        offset: 0,
        errors: None,
    })
    .expect("jaeger json always serializes")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trace::tests::container_trace;
    use shimtrace_span::TraceId;

    #[test]
    fn jaeger_json_keeps_parent_links_and_micros() {
        let spans = container_trace(TraceId([4; 16]), "c");
        let doc = to_jaeger_json(spans.clone(), "shimtrace");
        let text = serde_json::to_string(&doc).unwrap();
        let back: Value = serde_json::from_str(&text).unwrap();
        let trace = &back["data"][0];
        assert_eq!(trace["traceID"], "04".repeat(16));
        let jspans = trace["spans"].as_array().unwrap();
        assert_eq!(jspans.len(), spans.len());
        for s in &spans {
            let j = jspans
                .iter()
                .find(|j| j["spanID"] == s.span_id.to_hex())
                .unwrap();
            assert_eq!(j["operationName"], s.name.as_str());
            assert_eq!(j["startTime"], s.start_time_unix_nano / 1000);
            match s.parent_span_id {
                Some(p) => {
                    assert_eq!(j["references"][0]["refType"], "CHILD_OF");
                    assert_eq!(j["references"][0]["spanID"], p.to_hex());
                }
                None => assert!(j["references"].as_array().unwrap().is_empty()),
            }
        }
        assert_eq!(trace["processes"]["p1"]["serviceName"], "shimtrace");
    }
}
