//! OpenTelemetry export over OTLP (gRPC or HTTP/protobuf), keeping the shim's trace ids, span ids,
//! parents and timestamps exactly: spans are turned into SDK `SpanData` and handed to the OTLP
//! exporter directly, without a tracer.
//!
//! Configuration follows the OpenTelemetry environment variables (`OTEL_EXPORTER_OTLP_ENDPOINT`,
//! `_TRACES_ENDPOINT`, `_PROTOCOL`, `_TRACES_PROTOCOL`, `_HEADERS`, `OTEL_SERVICE_NAME`,
//! `OTEL_SDK_DISABLED`); flags override them. Headers are read by the OTLP exporter itself.
//!
//! Continuous export follows the store's ingest sequence with a cursor persisted in the store, so
//! what is pending survives a restart; failures, of the endpoint or of the store, are retried with
//! exponential backoff, and never end it. A batch goes out as one request per resource; a retry
//! sends only the requests the endpoint has not accepted, so no span reaches it twice (short of a
//! restart between a batch's requests, or a request that timed out after the endpoint took it).
//!
//! Each request waits at most `OTEL_EXPORTER_OTLP_TRACES_TIMEOUT` (else `OTEL_EXPORTER_OTLP_TIMEOUT`)
//! milliseconds, 10 s by default, for an answer; a request that got none names the variable to
//! raise. A one-shot export does not retry a request that got no answer: an endpoint that accepts
//! connections and never answers would otherwise hold it for every retry's timeout and backoff.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use opentelemetry::trace::{
    SpanContext, SpanId as OtelSpanId, SpanKind as OtelSpanKind, Status, TraceFlags,
    TraceId as OtelTraceId, TraceState,
};
use opentelemetry::{InstrumentationScope, KeyValue, Value};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::trace::{SpanData, SpanEvents, SpanExporter as _, SpanLinks};
use opentelemetry_sdk::Resource;
use shimtrace_span::{attr, AttributeValue, Attributes, SpanKind, SpanRecord, SpanStatus};

use crate::counters::Counters;
use crate::store::{Store, StoreError, EXPORT_CURSOR_KEY};

/// Resource attribute naming the runtime (inner shim and options).
pub const RUNTIME_RESOURCE_ATTR: &str = "shimtrace.runtime";
const BATCH: usize = 512;
/// The continuous exporter's first wait after a failure; each failure in a row doubles it.
const FIRST_BACKOFF: Duration = Duration::from_millis(250);
const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// How long a request waits for an answer unless the OTEL timeout variables say otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// The variable that sets the request timeout for every signal (a traces-only one comes first).
pub(crate) const TIMEOUT_VARIABLE: &str = "OTEL_EXPORTER_OTLP_TIMEOUT";

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("unknown OTLP protocol {0:?}: use grpc or http/protobuf")]
    Protocol(String),
    #[error("cannot build the OTLP exporter for {endpoint}: {message} (check OTEL_EXPORTER_OTLP_ENDPOINT or --otlp-endpoint)")]
    Build { endpoint: String, message: String },
    #[error("OTLP export to {endpoint} failed: {message} (is a collector listening there? check OTEL_EXPORTER_OTLP_ENDPOINT / --otlp-endpoint and the protocol)")]
    Export { endpoint: String, message: String },
    #[error("OTLP export to {endpoint} got no answer within {timeout:?}: something accepts connections there but does not answer (is it an OTLP collector speaking this protocol? if it is only slow, raise {variable}, in milliseconds)")]
    Timeout {
        endpoint: String,
        timeout: Duration,
        /// The variable that set the timeout, or the one to set.
        variable: &'static str,
    },
    #[error("{variable}={value:?} is not a timeout: give a whole number of milliseconds above 0")]
    BadTimeout {
        variable: &'static str,
        value: String,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// OTLP transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Grpc,
    HttpProtobuf,
}

impl std::str::FromStr for Protocol {
    type Err = ExportError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim() {
            "grpc" => Ok(Protocol::Grpc),
            "http/protobuf" | "http" => Ok(Protocol::HttpProtobuf),
            other => Err(ExportError::Protocol(other.to_string())),
        }
    }
}

/// Resolved export settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportConfig {
    pub protocol: Protocol,
    /// The exact URL the exporter sends to (for HTTP, including `/v1/traces`).
    pub endpoint: String,
    pub service_name: String,
    pub timeout: Duration,
    /// The variable that sets `timeout` (the one to raise): the one it came from, else
    /// [`TIMEOUT_VARIABLE`].
    pub timeout_variable: &'static str,
}

/// Flag values that override the environment.
#[derive(Debug, Clone, Default)]
pub struct ExportOverrides {
    /// Base endpoint, as `OTEL_EXPORTER_OTLP_ENDPOINT`.
    pub endpoint: Option<String>,
    pub protocol: Option<String>,
    pub service_name: Option<String>,
}

impl ExportConfig {
    /// Resolves settings from flags and environment (`env` looks a variable up).
    /// `Ok(None)` when export is off: `OTEL_SDK_DISABLED=true`, or, if `require_endpoint`, when
    /// neither a flag nor a variable names an endpoint (as containerd does).
    pub fn resolve(
        overrides: &ExportOverrides,
        env: impl Fn(&str) -> Option<String>,
        require_endpoint: bool,
    ) -> Result<Option<ExportConfig>, ExportError> {
        let var = |k: &str| {
            env(k)
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
        };
        if var("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true")) {
            return Ok(None);
        }
        let protocol: Protocol = overrides
            .protocol
            .clone()
            .or_else(|| var("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"))
            .or_else(|| var("OTEL_EXPORTER_OTLP_PROTOCOL"))
            .unwrap_or_else(|| "http/protobuf".into())
            .parse()?;
        let signal_path = |base: &str| match protocol {
            Protocol::Grpc => base.to_string(),
            Protocol::HttpProtobuf => {
                if base.trim_end_matches('/').ends_with("/v1/traces") {
                    base.to_string()
                } else {
                    format!("{}/v1/traces", base.trim_end_matches('/'))
                }
            }
        };
        let endpoint = if let Some(base) = &overrides.endpoint {
            Some(signal_path(base))
        } else if let Some(exact) = var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") {
            Some(exact)
        } else {
            var("OTEL_EXPORTER_OTLP_ENDPOINT").map(|base| signal_path(&base))
        };
        let endpoint = match (endpoint, require_endpoint) {
            (Some(e), _) => e,
            (None, true) => return Ok(None),
            (None, false) => match protocol {
                Protocol::Grpc => "http://localhost:4317".into(),
                Protocol::HttpProtobuf => "http://localhost:4318/v1/traces".into(),
            },
        };
        let service_name = overrides
            .service_name
            .clone()
            .or_else(|| var("OTEL_SERVICE_NAME"))
            .unwrap_or_else(|| "shimtrace".into());
        let (timeout, timeout_variable) =
            match ["OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", TIMEOUT_VARIABLE]
                .into_iter()
                .find_map(|variable| var(variable).map(|value| (variable, value)))
            {
                None => (DEFAULT_TIMEOUT, TIMEOUT_VARIABLE),
                Some((variable, value)) => match value.parse::<u64>() {
                    Ok(ms) if ms > 0 => (Duration::from_millis(ms), variable),
                    _ => return Err(ExportError::BadTimeout { variable, value }),
                },
            };
        Ok(Some(ExportConfig {
            protocol,
            endpoint,
            service_name,
            timeout,
            timeout_variable,
        }))
    }
}

fn unix_time(nanos: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_nanos(nanos)
}

fn otel_value(v: &AttributeValue) -> Value {
    match v {
        AttributeValue::Bool(b) => Value::Bool(*b),
        AttributeValue::Int(i) => Value::I64(*i),
        AttributeValue::Double(d) => Value::F64(*d),
        AttributeValue::String(s) => Value::String(s.clone().into()),
    }
}

fn key_values(attributes: &Attributes) -> Vec<KeyValue> {
    attributes
        .iter()
        .map(|(k, v)| KeyValue::new(k.clone(), otel_value(v)))
        .collect()
}

/// The SDK span for a stored span: same ids, parent, name, timestamps, attributes, events.
pub fn to_span_data(span: &SpanRecord) -> SpanData {
    let mut events = SpanEvents::default();
    events.events = span
        .events
        .iter()
        .map(|e| {
            opentelemetry::trace::Event::new(
                e.name.clone(),
                unix_time(e.time_unix_nano),
                key_values(&e.attributes),
                0,
            )
        })
        .collect();
    SpanData {
        span_context: SpanContext::new(
            OtelTraceId::from_bytes(span.trace_id.0),
            OtelSpanId::from_bytes(span.span_id.0),
            TraceFlags::SAMPLED,
            false,
            TraceState::default(),
        ),
        parent_span_id: span
            .parent_span_id
            .map(|p| OtelSpanId::from_bytes(p.0))
            .unwrap_or(OtelSpanId::INVALID),
        parent_span_is_remote: false,
        span_kind: match span.kind {
            SpanKind::Internal => OtelSpanKind::Internal,
            SpanKind::Server => OtelSpanKind::Server,
            SpanKind::Client => OtelSpanKind::Client,
            SpanKind::Producer => OtelSpanKind::Producer,
            SpanKind::Consumer => OtelSpanKind::Consumer,
        },
        name: Cow::Owned(span.name.clone()),
        start_time: unix_time(span.start_time_unix_nano),
        end_time: unix_time(span.end_time_unix_nano),
        attributes: key_values(&span.attributes),
        dropped_attributes_count: 0,
        events,
        links: SpanLinks::default(),
        status: match &span.status {
            SpanStatus::Unset => Status::Unset,
            SpanStatus::Ok => Status::Ok,
            SpanStatus::Error(message) => Status::error(message.clone()),
        },
        instrumentation_scope: InstrumentationScope::builder("shimtrace")
            .with_version(env!("CARGO_PKG_VERSION"))
            .build(),
    }
}

/// This machine's host name (for the `host.name` resource attribute).
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

/// What a span's resource says: namespace and runtime (both may come from other spans of its trace).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ResourceKey {
    pub namespace: Option<String>,
    pub runtime: Option<String>,
}

/// Finds each trace's namespace and runtime, from the span itself or its trace-mates.
#[derive(Default)]
pub struct ResourceResolver {
    by_trace: HashMap<shimtrace_span::TraceId, ResourceKey>,
}

impl ResourceResolver {
    /// Learns from every span of a set (call before [`ResourceResolver::key`]).
    pub fn learn(&mut self, spans: &[SpanRecord]) {
        for s in spans {
            let entry = self.by_trace.entry(s.trace_id).or_insert(ResourceKey {
                namespace: None,
                runtime: None,
            });
            if entry.namespace.is_none() {
                entry.namespace = s.attr_str(attr::CONTAINERD_NAMESPACE).map(str::to_string);
            }
            if entry.runtime.is_none() {
                entry.runtime = s.attr_str(attr::INNER).map(|inner| {
                    match s.attr_str(crate::trace::RUNTIME_OPTIONS_ATTR) {
                        Some(o) if !o.is_empty() => format!("{inner} ({o})"),
                        _ => inner.to_string(),
                    }
                });
            }
        }
    }

    /// Fills gaps from the store (the root of a trace may have been exported in an earlier batch).
    pub fn learn_from_store(
        &mut self,
        store: &Store,
        spans: &[SpanRecord],
    ) -> Result<(), StoreError> {
        let missing: Vec<_> = spans
            .iter()
            .map(|s| s.trace_id)
            .filter(|t| {
                self.by_trace
                    .get(t)
                    .is_none_or(|k| k.namespace.is_none() || k.runtime.is_none())
            })
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        for trace in missing {
            match store.spans_of_container(&trace.to_hex()) {
                Ok(mates) => self.learn(&mates),
                // A span of the trace that does not parse: its resource stays unknown, and export
                // goes on (the span itself is passed over when its turn comes).
                Err(e @ StoreError::Corrupt { .. }) => {
                    tracing::warn!(error = %e, "a trace's resource cannot be read");
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    pub fn key(&self, span: &SpanRecord) -> ResourceKey {
        self.by_trace
            .get(&span.trace_id)
            .cloned()
            .unwrap_or(ResourceKey {
                namespace: None,
                runtime: None,
            })
    }

    /// Keeps memory bounded in a long-running exporter.
    pub fn trim(&mut self, max: usize) {
        if self.by_trace.len() > max {
            self.by_trace.clear();
        }
    }
}

fn resource(service_name: &str, host: &str, key: &ResourceKey) -> Resource {
    let mut attrs = vec![KeyValue::new("host.name", host.to_string())];
    if let Some(ns) = &key.namespace {
        attrs.push(KeyValue::new(attr::CONTAINERD_NAMESPACE, ns.clone()));
    }
    if let Some(rt) = &key.runtime {
        attrs.push(KeyValue::new(RUNTIME_RESOURCE_ATTR, rt.clone()));
    }
    Resource::builder_empty()
        .with_service_name(service_name.to_string())
        .with_attributes(attrs)
        .build()
}

/// An OTLP span exporter for one configuration.
pub struct OtlpExporter {
    config: ExportConfig,
    inner: opentelemetry_otlp::SpanExporter,
    host: String,
}

impl OtlpExporter {
    /// Builds the exporter; must be called inside a Tokio runtime that outlives it.
    pub fn new(config: ExportConfig) -> Result<OtlpExporter, ExportError> {
        let build_err = |e: opentelemetry_otlp::ExporterBuildError| ExportError::Build {
            endpoint: config.endpoint.clone(),
            message: e.to_string(),
        };
        // `export` times each request itself (and can so tell a timeout from other failures);
        // the client's own timeout, a little later, only backs it up.
        let client_timeout = config.timeout + Duration::from_secs(1);
        let inner = match config.protocol {
            Protocol::Grpc => opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_endpoint(config.endpoint.clone())
                .with_timeout(client_timeout)
                .build()
                .map_err(build_err)?,
            Protocol::HttpProtobuf => opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
                .with_endpoint(config.endpoint.clone())
                .with_timeout(client_timeout)
                .build()
                .map_err(build_err)?,
        };
        Ok(OtlpExporter {
            config,
            inner,
            host: host_name(),
        })
    }

    pub fn config(&self) -> &ExportConfig {
        &self.config
    }

    /// Sends what `requests` still holds, one request per resource, each answered within the
    /// configured timeout or failed with [`ExportError::Timeout`]. A request the endpoint accepted
    /// leaves `requests`: after a failure, sending them again sends only the rest.
    pub(crate) async fn send(&mut self, requests: &mut Requests) -> Result<(), ExportError> {
        while let Some((key, spans)) = requests.pending.front() {
            self.inner
                .set_resource(&resource(&self.config.service_name, &self.host, key));
            let batch = spans.iter().map(to_span_data).collect();
            tokio::time::timeout(self.config.timeout, self.inner.export(batch))
                .await
                .map_err(|_| ExportError::Timeout {
                    endpoint: self.config.endpoint.clone(),
                    timeout: self.config.timeout,
                    variable: self.config.timeout_variable,
                })?
                .map_err(|e| ExportError::Export {
                    endpoint: self.config.endpoint.clone(),
                    message: e.to_string(),
                })?;
            requests.pending.pop_front();
        }
        Ok(())
    }
}

/// A batch of spans as the requests that carry it: one per (namespace, runtime) resource, for
/// [`OtlpExporter::send`].
pub(crate) struct Requests {
    pending: std::collections::VecDeque<(ResourceKey, Vec<SpanRecord>)>,
}

impl Requests {
    /// `spans` grouped by the resource `resolver` finds for each.
    pub(crate) fn new(spans: Vec<SpanRecord>, resolver: &ResourceResolver) -> Requests {
        let mut groups: BTreeMap<ResourceKey, Vec<SpanRecord>> = BTreeMap::new();
        for s in spans {
            groups.entry(resolver.key(&s)).or_default().push(s);
        }
        Requests {
            pending: groups.into_iter().collect(),
        }
    }
}

/// Exports `spans` once, retrying failures `retries` times with backoff; a request that got no
/// answer within the timeout is not retried.
pub async fn export_once(
    config: ExportConfig,
    spans: &[SpanRecord],
    retries: u32,
) -> Result<usize, ExportError> {
    let mut exporter = OtlpExporter::new(config)?;
    let mut resolver = ResourceResolver::default();
    resolver.learn(spans);
    for chunk in spans.chunks(BATCH) {
        let mut requests = Requests::new(chunk.to_vec(), &resolver);
        let mut backoff = Duration::from_millis(500);
        let mut attempt = 0;
        loop {
            match exporter.send(&mut requests).await {
                Ok(()) => break,
                Err(e @ ExportError::Timeout { .. }) => return Err(e),
                Err(e) if attempt < retries => {
                    tracing::warn!(error = %e, "retrying in {backoff:?}");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }
    Ok(spans.len())
}

/// Continuous export: follows the store from its persisted cursor until `stop` turns true.
/// `wake` is notified by ingest after it stores spans. It ends only when told to: an export that
/// fails, and a store it cannot read or update (busy under a large ingest, a full disk), are
/// logged, counted in [`Counters::export_failures`] and retried with backoff.
pub async fn run_continuous(
    store: Store,
    mut exporter: OtlpExporter,
    wake: Arc<tokio::sync::Notify>,
    counters: Arc<Counters>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut resolver = ResourceResolver::default();
    let mut backoff = FIRST_BACKOFF;
    // A batch being sent (the `seq` of its last span, how many, what is left to send): a failed
    // send is retried with what the endpoint did not accept yet, so that the receiver does not
    // get any span twice.
    let mut sending: Option<(u64, u64, Requests)> = None;
    // A batch sent whose export the store could not record: recorded before anything else is
    // sent, for the same reason.
    let mut unrecorded: Option<(u64, u64)> = None;
    tracing::info!(endpoint = %exporter.config().endpoint, protocol = ?exporter.config().protocol, "exporting spans over OTLP");
    loop {
        if *stop.borrow() {
            return;
        }
        let exported = if let Some((last, count)) = unrecorded {
            let recorded = store.record_export(last, count).map_err(ExportError::from);
            if recorded.is_ok() {
                unrecorded = None;
            }
            recorded
        } else if let Some((last, count, requests)) = &mut sending {
            match exporter.send(requests).await {
                Ok(()) => {
                    unrecorded = Some((*last, *count));
                    sending = None;
                    continue;
                }
                Err(e) => Err(e),
            }
        } else {
            match next_batch(&store, &mut resolver) {
                Ok(None) => {
                    tokio::select! {
                        _ = wake.notified() => {}
                        _ = stop.changed() => {}
                    }
                    continue;
                }
                Ok(Some((last, spans))) => {
                    let count = spans.len() as u64;
                    sending = Some((last, count, Requests::new(spans, &resolver)));
                    continue;
                }
                Err(e) => Err(e.into()),
            }
        };
        match exported {
            Ok(()) => backoff = FIRST_BACKOFF,
            Err(e) => {
                counters.export_failures.fetch_add(1, Ordering::Relaxed);
                match pending(&store) {
                    Ok(n) => {
                        tracing::warn!(error = %e, "export failed; {n} spans pending, retrying in {backoff:?}")
                    }
                    Err(_) => tracing::warn!(error = %e, "export failed; retrying in {backoff:?}"),
                }
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = stop.changed() => {}
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

/// The spans after the export cursor, up to a batch, with the `seq` of the last; `None` when
/// every span was exported. `resolver` learns their resources. A stored span that does not parse
/// is passed over (logged, never exported): export would otherwise stop at it for good.
fn next_batch(
    store: &Store,
    resolver: &mut ResourceResolver,
) -> Result<Option<(u64, Vec<SpanRecord>)>, StoreError> {
    let mut cursor = store.meta(EXPORT_CURSOR_KEY)?;
    // The spans before a record that does not parse go first; then that record is passed over.
    let mut before = u64::MAX;
    let batch = loop {
        match store.spans_between(cursor, before, BATCH) {
            Ok(batch) if batch.is_empty() && before != u64::MAX => {
                tracing::error!(
                    seq = before,
                    "a stored span does not parse; it is not exported"
                );
                store.record_export(before, 0)?;
                (cursor, before) = (before, u64::MAX);
            }
            Ok(batch) => break batch,
            Err(StoreError::Corrupt { seq, .. }) if seq < before => before = seq,
            Err(e) => return Err(e),
        }
    };
    let Some(&(last, _)) = batch.last() else {
        return Ok(None);
    };
    let spans: Vec<SpanRecord> = batch.into_iter().map(|(_, s)| s).collect();
    resolver.trim(100_000);
    resolver.learn(&spans);
    resolver.learn_from_store(store, &spans)?;
    Ok(Some((last, spans)))
}

/// Spans stored but not yet exported.
fn pending(store: &Store) -> Result<u64, StoreError> {
    Ok(store
        .max_seq()?
        .saturating_sub(store.meta(EXPORT_CURSOR_KEY)?))
}

/// A time-range argument that does not parse.
#[derive(Debug, thiserror::Error)]
#[error("{flag} {value:?}: {expected}")]
pub struct TimeRangeError {
    pub flag: &'static str,
    pub value: String,
    pub expected: &'static str,
}

/// `d` in nanoseconds; past what a u64 holds (584 years), the most it holds.
fn saturating_nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// A time as unix nanoseconds or RFC 3339 (`2026-11-28T20:00:00Z`).
pub fn parse_time(flag: &'static str, text: &str) -> Result<u64, TimeRangeError> {
    if let Ok(nanos) = text.trim().parse::<u64>() {
        return Ok(nanos);
    }
    humantime::parse_rfc3339_weak(text.trim())
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map(saturating_nanos)
        .ok_or(TimeRangeError {
            flag,
            value: text.to_string(),
            expected: "expected RFC 3339 (2026-11-28T20:00:00Z) or unix nanoseconds",
        })
}

/// The `[from, to)` unix-nanosecond range selected by `--from`/`--to`/`--since` at time `now`.
pub fn time_range(
    from: Option<&str>,
    to: Option<&str>,
    since: Option<&str>,
    now: u64,
) -> Result<(u64, u64), TimeRangeError> {
    let from = match (since, from) {
        (Some(since), _) => {
            let ago = humantime::parse_duration(since.trim()).map_err(|_| TimeRangeError {
                flag: "--since",
                value: since.to_string(),
                expected: "expected a duration like 1h or 30m",
            })?;
            now.saturating_sub(saturating_nanos(ago))
        }
        (None, Some(t)) => parse_time("--from", t)?,
        (None, None) => 0,
    };
    let to = to
        .map(|t| parse_time("--to", t))
        .transpose()?
        .unwrap_or(u64::MAX);
    Ok((from, to))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trace::tests::container_trace;

    #[test]
    fn time_ranges_parse_nanos_rfc3339_and_since() {
        assert_eq!(time_range(None, None, None, 5).unwrap(), (0, u64::MAX));
        assert_eq!(
            time_range(Some("10"), Some("20"), None, 5).unwrap(),
            (10, 20)
        );
        let (from, _) = time_range(Some("2026-01-01T00:00:00Z"), None, None, 0).unwrap();
        assert_eq!(from, 1_767_225_600_000_000_000);
        let now = 10_000_000_000_000;
        assert_eq!(
            time_range(None, None, Some("1h"), now).unwrap().0,
            now - 3_600_000_000_000
        );
        let err = time_range(None, Some("yesterday"), None, 0)
            .unwrap_err()
            .to_string();
        assert!(err.contains("--to") && err.contains("RFC 3339"), "{err}");
        // Beyond what nanoseconds in a u64 hold: as far as they go, instead of wrapping.
        assert_eq!(time_range(None, None, Some("600y"), now).unwrap().0, 0);
        assert_eq!(
            time_range(None, Some("3000-01-01T00:00:00Z"), None, now).unwrap(),
            (0, u64::MAX)
        );
        assert!(time_range(None, None, Some("soon"), 0)
            .unwrap_err()
            .to_string()
            .contains("1h"));
    }
    use shimtrace_span::TraceId;

    use shimtrace_testkit::env::from_pairs as env;

    /// The export configuration `overrides` and the variables `vars` resolve to (export asked).
    fn resolved(overrides: &ExportOverrides, vars: &[(&str, &str)]) -> ExportConfig {
        ExportConfig::resolve(overrides, env(vars), true)
            .unwrap()
            .unwrap()
    }

    /// The protocol and endpoint the variables `vars` alone resolve to.
    fn protocol_and_endpoint(vars: &[(&str, &str)]) -> (Protocol, String) {
        let c = resolved(&ExportOverrides::default(), vars);
        (c.protocol, c.endpoint)
    }

    #[test]
    fn endpoints_resolve_like_the_otel_spec() {
        let none = ExportOverrides::default();
        assert_eq!(
            protocol_and_endpoint(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://h:4318/")]),
            (
                Protocol::HttpProtobuf,
                "http://h:4318/v1/traces".to_string()
            )
        );
        assert_eq!(
            protocol_and_endpoint(&[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://h:4317"),
                ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
            ]),
            (Protocol::Grpc, "http://h:4317".to_string())
        );
        let c = resolved(
            &none,
            &[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://a"),
                ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://b/custom"),
                ("OTEL_SERVICE_NAME", "svc"),
            ],
        );
        assert_eq!(
            (c.endpoint.as_str(), c.service_name.as_str()),
            ("http://b/custom", "svc")
        );
        let flags = ExportOverrides {
            endpoint: Some("http://flag:4317".into()),
            protocol: Some("grpc".into()),
            service_name: None,
        };
        let c = resolved(
            &flags,
            &[("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://b")],
        );
        assert_eq!(c.endpoint, "http://flag:4317");
        assert!(ExportConfig::resolve(&none, env(&[]), true)
            .unwrap()
            .is_none());
        assert_eq!(
            ExportConfig::resolve(&none, env(&[]), false)
                .unwrap()
                .unwrap()
                .endpoint,
            "http://localhost:4318/v1/traces"
        );
        assert!(
            ExportConfig::resolve(&flags, env(&[("OTEL_SDK_DISABLED", "TRUE")]), true)
                .unwrap()
                .is_none()
        );
        let err = ExportConfig::resolve(
            &none,
            env(&[("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json")]),
            true,
        )
        .unwrap_err();
        assert!(err.to_string().contains("grpc or http/protobuf"));
    }

    #[test]
    fn the_request_timeout_comes_from_the_otel_variables() {
        let none = ExportOverrides::default();
        let endpoint = ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://h:4318");
        let timeout = |vars: &[(&str, &str)]| {
            ExportConfig::resolve(&none, env(vars), true)
                .map(|c| c.unwrap().timeout)
                .map_err(|e| e.to_string())
        };
        assert_eq!(timeout(&[endpoint]), Ok(Duration::from_secs(10)));
        assert_eq!(
            timeout(&[endpoint, ("OTEL_EXPORTER_OTLP_TIMEOUT", "2500")]),
            Ok(Duration::from_millis(2500))
        );
        assert_eq!(
            timeout(&[
                endpoint,
                ("OTEL_EXPORTER_OTLP_TIMEOUT", "2500"),
                ("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "700")
            ]),
            Ok(Duration::from_millis(700))
        );
        for bad in ["soon", "-1", "0"] {
            let err = timeout(&[endpoint, ("OTEL_EXPORTER_OTLP_TIMEOUT", bad)]).unwrap_err();
            assert!(
                err.contains("OTEL_EXPORTER_OTLP_TIMEOUT") && err.contains(bad),
                "{err}"
            );
        }
    }

    #[test]
    fn an_endpoint_that_never_answers_fails_after_one_timeout() {
        // Connections complete in the kernel's backlog; nothing ever reads or answers them.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let spans = container_trace(TraceId([6; 16]), "c");
        let runtime = tokio::runtime::Runtime::new().unwrap();
        for (protocol, endpoint) in [
            (
                Protocol::HttpProtobuf,
                format!("http://127.0.0.1:{port}/v1/traces"),
            ),
            (Protocol::Grpc, format!("http://127.0.0.1:{port}")),
        ] {
            let config = ExportConfig {
                protocol,
                endpoint,
                service_name: "shimtrace".into(),
                timeout: Duration::from_millis(500),
                timeout_variable: TIMEOUT_VARIABLE,
            };
            let started = std::time::Instant::now();
            let err = runtime
                .block_on(export_once(config, &spans, 5))
                .unwrap_err()
                .to_string();
            let took = started.elapsed();
            assert!(took < Duration::from_secs(4), "{protocol:?}: {took:?}");
            assert!(
                err.contains("no answer within 500ms")
                    && err.contains("OTEL_EXPORTER_OTLP_TIMEOUT"),
                "{protocol:?}: {err}"
            );
        }
        // The advice names the variable that set the timeout.
        let config = ExportConfig::resolve(
            &ExportOverrides::default(),
            env(&[
                (
                    "OTEL_EXPORTER_OTLP_ENDPOINT",
                    &format!("http://127.0.0.1:{port}"),
                ),
                ("OTEL_EXPORTER_OTLP_TIMEOUT", "5000"),
                ("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "300"),
            ]),
            true,
        )
        .unwrap()
        .unwrap();
        let err = runtime
            .block_on(export_once(config, &spans, 5))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("no answer within 300ms")
                && err.contains("raise OTEL_EXPORTER_OTLP_TRACES_TIMEOUT,"),
            "{err}"
        );
        drop(listener);
    }

    /// Waits up to 20 s for `done`.
    fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
        shimtrace_testkit::traced::wait_until(what, Duration::from_secs(20), || {
            done().then_some(())
        });
    }

    /// `run_continuous` over the store at `db`, exporting to `endpoint`; stopped by the sender.
    fn continuous(
        runtime: &tokio::runtime::Runtime,
        db: &std::path::Path,
        endpoint: String,
        counters: &Arc<Counters>,
    ) -> (
        tokio::sync::watch::Sender<bool>,
        tokio::task::JoinHandle<()>,
    ) {
        let config = ExportConfig {
            protocol: Protocol::HttpProtobuf,
            endpoint,
            service_name: "shimtrace".into(),
            timeout: DEFAULT_TIMEOUT,
            timeout_variable: TIMEOUT_VARIABLE,
        };
        let (stop, stop_rx) = tokio::sync::watch::channel(false);
        let exporter = {
            let _entered = runtime.enter();
            OtlpExporter::new(config).unwrap()
        };
        let task = runtime.spawn(run_continuous(
            Store::open(db).unwrap(),
            exporter,
            Arc::new(tokio::sync::Notify::new()),
            counters.clone(),
            stop_rx,
        ));
        (stop, task)
    }

    fn stop_continuous(
        runtime: &tokio::runtime::Runtime,
        (stop, task): (
            tokio::sync::watch::Sender<bool>,
            tokio::task::JoinHandle<()>,
        ),
    ) {
        stop.send(true).unwrap();
        runtime
            .block_on(async { tokio::time::timeout(Duration::from_secs(20), task).await })
            .expect("export stops when told to")
            .unwrap();
    }

    #[test]
    fn a_sent_batch_the_store_cannot_record_is_recorded_later_not_sent_again() {
        let spans = container_trace(TraceId([7; 16]), "c");
        let (_dir, db, store) = crate::store::tests::store_holding("db", &spans);
        drop(store);
        // The store reads but refuses writes to its cursor, as a full disk would.
        let conn = rusqlite::Connection::open(&db).unwrap();
        for event in ["INSERT", "UPDATE"] {
            conn.execute_batch(&format!(
                "CREATE TRIGGER full_{event} BEFORE {event} ON meta BEGIN SELECT RAISE(ABORT, 'disk full'); END;"
            ))
            .unwrap();
        }
        let (_receiving, receiver) = shimtrace_testkit::otlp::otlp_http_receiver();
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let counters = Arc::new(Counters::default());
        let running = continuous(&runtime, &db, http_endpoint(&receiver), &counters);
        wait_for("two failed attempts to record", || {
            counters.export_failures.load(Ordering::SeqCst) >= 2
        });
        assert!(!running.1.is_finished(), "export gave up");
        conn.execute_batch("DROP TRIGGER full_INSERT; DROP TRIGGER full_UPDATE;")
            .unwrap();
        let store = Store::open_read_only(&db).unwrap();
        wait_for("the export recorded", || {
            store.meta(EXPORT_CURSOR_KEY).unwrap() == 7
        });
        assert_eq!(store.meta(crate::store::EXPORTED_KEY).unwrap(), 7);
        assert_eq!(
            receiver.received.spans().len(),
            7,
            "the batch was sent again"
        );
        stop_continuous(&runtime, running);
    }

    #[test]
    fn a_batch_sent_in_part_is_retried_with_the_rest_only() {
        // Two namespaces, two resources: the endpoint takes one request and refuses the other.
        let mut spans = container_trace(TraceId([7; 16]), "c");
        let mut other = container_trace(TraceId([8; 16]), "d");
        // Span ids of their own: the receiver tells spans apart by them.
        let own = |mut id: shimtrace_span::SpanId| {
            id.0[0] = 8;
            id
        };
        for span in &mut other {
            span.span_id = own(span.span_id);
            span.parent_span_id = span.parent_span_id.map(own);
            span.attributes
                .insert(attr::CONTAINERD_NAMESPACE.into(), "refused".into());
        }
        spans.extend(other);
        let (_dir, db, store) = crate::store::tests::store_holding("db", &spans);
        drop(store);
        let (_receiving, receiver) = shimtrace_testkit::otlp::otlp_http_receiver();
        receiver
            .received
            .refuse_resource(attr::CONTAINERD_NAMESPACE, "refused");
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let counters = Arc::new(Counters::default());
        let running = continuous(&runtime, &db, http_endpoint(&receiver), &counters);
        wait_for("two failed attempts", || {
            counters.export_failures.load(Ordering::SeqCst) >= 2
        });
        // The request the endpoint takes arrived before it accepts the rest (else a retry of the
        // whole batch would pass too).
        assert_eq!(receiver.received.distinct(), 7);
        receiver.received.accept_all();
        let store = Store::open_read_only(&db).unwrap();
        wait_for("the export recorded", || {
            store.meta(EXPORT_CURSOR_KEY).unwrap() == 14
        });
        let got = receiver.received.spans();
        assert_eq!(receiver.received.distinct(), 14);
        assert_eq!(got.len(), 14, "a span accepted once was sent again");
        stop_continuous(&runtime, running);
    }

    /// Where an OTLP/HTTP exporter reaches `receiver`.
    fn http_endpoint(receiver: &shimtrace_testkit::otlp::OtlpReceiver) -> String {
        format!("{}/v1/traces", receiver.endpoint())
    }

    #[test]
    fn a_stored_span_that_does_not_parse_is_passed_over() {
        // Without a namespace, each batch asks the store for the rest of the trace, bad span and all.
        let mut spans = container_trace(TraceId([7; 16]), "c");
        for span in &mut spans {
            span.attributes.remove(attr::CONTAINERD_NAMESPACE);
        }
        let (_dir, db, store) = crate::store::tests::store_holding("db", &spans);
        drop(store);
        let conn = rusqlite::Connection::open(&db).unwrap();
        conn.execute("UPDATE spans SET record = '{' WHERE seq = 3", [])
            .unwrap();
        let (_receiving, receiver) = shimtrace_testkit::otlp::otlp_http_receiver();
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let counters = Arc::new(Counters::default());
        let running = continuous(&runtime, &db, http_endpoint(&receiver), &counters);
        let store = Store::open_read_only(&db).unwrap();
        wait_for("every other span exported", || {
            store.meta(EXPORT_CURSOR_KEY).unwrap() == 7
        });
        assert_eq!(store.meta(crate::store::EXPORTED_KEY).unwrap(), 6);
        assert_eq!(receiver.received.distinct(), 6);
        stop_continuous(&runtime, running);
    }

    #[test]
    fn span_data_keeps_ids_parent_and_timestamps() {
        let spans = container_trace(TraceId([5; 16]), "c");
        let create = spans.iter().find(|s| s.name.ends_with("/Create")).unwrap();
        let data = to_span_data(create);
        assert_eq!(data.span_context.trace_id().to_bytes(), [5; 16]);
        assert_eq!(data.span_context.span_id().to_bytes(), create.span_id.0);
        assert_eq!(
            data.parent_span_id.to_bytes(),
            create.parent_span_id.unwrap().0
        );
        assert_eq!(data.start_time, unix_time(create.start_time_unix_nano));
        assert_eq!(data.end_time, unix_time(create.end_time_unix_nano));
        let wait = spans.iter().find(|s| s.name.ends_with("/Wait")).unwrap();
        assert_eq!(to_span_data(wait).events.events.len(), 1);
        let mut resolver = ResourceResolver::default();
        resolver.learn(&spans);
        let key = resolver.key(create);
        assert_eq!(
            key.runtime.as_deref(),
            Some("/usr/bin/containerd-shim-runc-v2")
        );
        assert_eq!(key.namespace.as_deref(), Some("default"));
    }
}
