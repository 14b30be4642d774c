//! The span record: the one type the shim writes to its spool and the collector reads.
//!
//! Field names follow OTLP's JSON mapping (`trace_id`, `start_time_unix_nano`, …) so a record reads
//! the same in the spool, in `shimtrace traces --json` and in an exported trace.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Attribute keys. OpenTelemetry semantic-convention names where one exists.
pub mod attr {
    pub const RPC_SYSTEM: &str = "rpc.system";
    pub const RPC_SERVICE: &str = "rpc.service";
    pub const RPC_METHOD: &str = "rpc.method";
    pub const RPC_TTRPC_STATUS_CODE: &str = "rpc.ttrpc.status_code";
    pub const RPC_TTRPC_STATUS_MESSAGE: &str = "rpc.ttrpc.status_message";
    pub const CONTAINERD_NAMESPACE: &str = "containerd.namespace";
    pub const CONTAINERD_CONTAINER_ID: &str = "containerd.container.id";
    pub const CONTAINERD_EXEC_ID: &str = "containerd.exec.id";
    pub const CONTAINERD_BUNDLE: &str = "containerd.bundle";
    pub const PROCESS_PID: &str = "process.pid";
    pub const PROCESS_EXIT_CODE: &str = "process.exit.code";
    pub const INNER: &str = "shimtrace.inner";
    pub const PROTOCOL: &str = "shimtrace.protocol";
    /// Why a span ended without a response (`connection_closed`).
    pub const OUTCOME: &str = "shimtrace.outcome";
    /// The pid of the shimtrace process that recorded the span (wrapper or proxy).
    pub const RECORDER_PID: &str = "shimtrace.recorder.pid";
    pub const SIGNAL: &str = "shimtrace.signal";
    /// The container's own trace, set on spans that joined containerd's trace (`traceparent`), so
    /// a container's spans can still be gathered in one place.
    pub const CONTAINER_TRACE_ID: &str = "shimtrace.container.trace_id";
}

/// Span names of the wrapper's own processes; proxied calls are named `<service>/<method>`.
pub mod names {
    pub const WRAPPER_START: &str = "shim.start";
    pub const WRAPPER_DELETE: &str = "shim.delete";
    pub const INNER_START: &str = "inner.start";
    pub const INNER_DELETE: &str = "inner.delete";
    pub const PROXY_ENSURE: &str = "proxy.ensure";
}

/// A 16-byte W3C trace id, written as 32 lowercase hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct TraceId(pub [u8; 16]);

/// An 8-byte span id, written as 16 lowercase hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct SpanId(pub [u8; 8]);

/// A hex id that does not have the expected length or digits.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid {kind} {value:?}: expected {digits} hex digits, not all zero")]
pub struct InvalidId {
    kind: &'static str,
    digits: usize,
    value: String,
}

/// Fills `bytes` from a per-thread SplitMix64 stream seeded once from the OS. Ids are made on the
/// proxy's per-call path: one `getrandom` syscall per thread instead of one per span, and 64 bits
/// of seed per thread keep ids from different threads and processes apart.
fn fill_random(bytes: &mut [u8]) {
    use std::cell::Cell;
    thread_local! {
        static STATE: Cell<u64> = Cell::new(seed());
    }
    STATE.with(|state| {
        for chunk in bytes.chunks_mut(8) {
            let next = state.get().wrapping_add(0x9E37_79B9_7F4A_7C15);
            state.set(next);
            let mut z = next;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            chunk.copy_from_slice(&z.to_le_bytes()[..chunk.len()]);
        }
    });
}

fn seed() -> u64 {
    let mut bytes = [0u8; 8];
    if getrandom::getrandom(&mut bytes).is_ok() {
        return u64::from_le_bytes(bytes);
    }
    // No entropy source at all: time and pid still separate processes well enough for tracing,
    // and the shim must not fail a container over it.
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(1);
    nanos ^ ((std::process::id() as u64) << 32)
}

macro_rules! hex_id {
    ($ty:ident, $len:expr, $kind:expr) => {
        impl $ty {
            /// A random, non-zero id.
            pub fn random() -> Self {
                let mut bytes = [0u8; $len];
                loop {
                    fill_random(&mut bytes);
                    if bytes.iter().any(|b| *b != 0) {
                        return Self(bytes);
                    }
                }
            }

            pub fn is_valid(&self) -> bool {
                self.0.iter().any(|b| *b != 0)
            }

            pub fn to_hex(&self) -> String {
                hex::encode(self.0)
            }
        }

        impl FromStr for $ty {
            type Err = InvalidId;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                let invalid = || InvalidId {
                    kind: $kind,
                    digits: $len * 2,
                    value: s.to_string(),
                };
                let mut bytes = [0u8; $len];
                hex::decode_to_slice(s, &mut bytes).map_err(|_| invalid())?;
                let id = Self(bytes);
                if id.is_valid() {
                    Ok(id)
                } else {
                    Err(invalid())
                }
            }
        }

        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.to_hex())
            }
        }

        impl fmt::Debug for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($ty), self.to_hex())
            }
        }

        impl Serialize for $ty {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(&self.to_hex())
            }
        }

        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let s = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

hex_id!(TraceId, 16, "trace id");
hex_id!(SpanId, 8, "span id");

/// An attribute value; JSON keeps its natural type.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum AttributeValue {
    Bool(bool),
    Int(i64),
    Double(f64),
    String(String),
}

impl AttributeValue {
    pub fn as_str(&self) -> Option<&str> {
        match self {
            AttributeValue::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_i64(&self) -> Option<i64> {
        match self {
            AttributeValue::Int(i) => Some(*i),
            _ => None,
        }
    }
}

impl fmt::Display for AttributeValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AttributeValue::Bool(v) => write!(f, "{v}"),
            AttributeValue::Int(v) => write!(f, "{v}"),
            AttributeValue::Double(v) => write!(f, "{v}"),
            AttributeValue::String(v) => f.write_str(v),
        }
    }
}

impl From<&str> for AttributeValue {
    fn from(v: &str) -> Self {
        AttributeValue::String(v.to_string())
    }
}
impl From<String> for AttributeValue {
    fn from(v: String) -> Self {
        AttributeValue::String(v)
    }
}
impl From<i64> for AttributeValue {
    fn from(v: i64) -> Self {
        AttributeValue::Int(v)
    }
}
impl From<u32> for AttributeValue {
    fn from(v: u32) -> Self {
        AttributeValue::Int(v.into())
    }
}
impl From<i32> for AttributeValue {
    fn from(v: i32) -> Self {
        AttributeValue::Int(v.into())
    }
}
impl From<bool> for AttributeValue {
    fn from(v: bool) -> Self {
        AttributeValue::Bool(v)
    }
}

pub type Attributes = BTreeMap<String, AttributeValue>;

/// OpenTelemetry span kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum SpanKind {
    #[default]
    Internal,
    Server,
    Client,
    Producer,
    Consumer,
}

/// OpenTelemetry span status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case", tag = "code", content = "message")]
pub enum SpanStatus {
    #[default]
    Unset,
    Ok,
    Error(String),
}

/// A timestamped event inside a span (e.g. a containerd task event seen by the events tap).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SpanEvent {
    pub name: String,
    pub time_unix_nano: u64,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub attributes: Attributes,
}

/// One finished span.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SpanRecord {
    pub trace_id: TraceId,
    pub span_id: SpanId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_span_id: Option<SpanId>,
    pub name: String,
    #[serde(default)]
    pub kind: SpanKind,
    pub start_time_unix_nano: u64,
    pub end_time_unix_nano: u64,
    #[serde(default)]
    pub attributes: Attributes,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub events: Vec<SpanEvent>,
    #[serde(default)]
    pub status: SpanStatus,
}

impl SpanRecord {
    pub fn attr_str(&self, key: &str) -> Option<&str> {
        self.attributes.get(key).and_then(AttributeValue::as_str)
    }

    pub fn attr_i64(&self, key: &str) -> Option<i64> {
        self.attributes.get(key).and_then(AttributeValue::as_i64)
    }

    pub fn duration_nanos(&self) -> u64 {
        self.end_time_unix_nano
            .saturating_sub(self.start_time_unix_nano)
    }

    /// The trace that holds this span's container: its own trace id, unless the span joined
    /// containerd's trace, in which case the container's trace is named by an attribute.
    pub fn container_trace_id(&self) -> TraceId {
        self.attr_str(attr::CONTAINER_TRACE_ID)
            .and_then(|t| t.parse().ok())
            .unwrap_or(self.trace_id)
    }

    /// The container this span belongs to, if any.
    pub fn container_id(&self) -> Option<&str> {
        self.attr_str(attr::CONTAINERD_CONTAINER_ID)
    }
}

/// Where a span belongs in a trace: the trace it joins and the span it hangs under.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TraceContext {
    pub trace_id: TraceId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_span_id: Option<SpanId>,
}

impl TraceContext {
    /// Parses a W3C `traceparent` header (`00-<trace>-<span>-<flags>`).
    pub fn from_traceparent(value: &str) -> Option<TraceContext> {
        let mut parts = value.trim().split('-');
        let version = parts.next()?;
        let trace = parts.next()?;
        let span = parts.next()?;
        let flags = parts.next()?;
        if version.len() != 2 || version == "ff" || flags.len() != 2 {
            return None;
        }
        Some(TraceContext {
            trace_id: trace.parse().ok()?,
            parent_span_id: Some(span.parse().ok()?),
        })
    }

    /// The W3C `traceparent` value naming `span` as the parent (sampled).
    pub fn traceparent(trace_id: TraceId, span: SpanId) -> String {
        format!("00-{trace_id}-{span}-01")
    }
}

/// One line of a spool file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum SpoolEntry {
    /// A finished span.
    Span(SpanRecord),
    /// Spans that a writer could not spool (buffer full or spool over its bound), counted since the
    /// writer's previous `dropped` line.
    Dropped {
        count: u64,
        /// Which process dropped them (`wrapper` or `proxy`) and its pid.
        writer: String,
        reason: String,
        time_unix_nano: u64,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> SpanRecord {
        let mut attributes = Attributes::new();
        attributes.insert(attr::RPC_SYSTEM.into(), "ttrpc".into());
        attributes.insert(attr::PROCESS_PID.into(), 42i64.into());
        SpanRecord {
            trace_id: "0af7651916cd43dd8448eb211c80319c".parse().unwrap(),
            span_id: "b7ad6b7169203331".parse().unwrap(),
            parent_span_id: None,
            name: "containerd.task.v2.Task/Create".into(),
            kind: SpanKind::Server,
            start_time_unix_nano: 1,
            end_time_unix_nano: 5,
            attributes,
            events: vec![],
            status: SpanStatus::Ok,
        }
    }

    #[test]
    fn spool_line_round_trips_with_flat_span_fields() {
        let entry = SpoolEntry::Span(sample());
        let line = serde_json::to_string(&entry).unwrap();
        assert!(line.starts_with(r#"{"type":"span","trace_id":"0af7651916cd43dd8448eb211c80319c""#));
        assert!(line.contains(r#""process.pid":42"#));
        let back: SpoolEntry = serde_json::from_str(&line).unwrap();
        assert_eq!(back, entry);
    }

    #[test]
    fn ids_reject_wrong_length_and_all_zero() {
        assert!("abc".parse::<SpanId>().is_err());
        assert!("0000000000000000".parse::<SpanId>().is_err());
        assert!("zz00000000000001".parse::<SpanId>().is_err());
        assert!(TraceId::random().is_valid());
        let ids: std::collections::HashSet<SpanId> =
            (0..10_000).map(|_| SpanId::random()).collect();
        assert_eq!(ids.len(), 10_000, "random ids do not repeat");
    }

    #[test]
    fn traceparent_parses_and_formats() {
        let ctx = TraceContext::from_traceparent(
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        )
        .unwrap();
        assert_eq!(ctx.trace_id.to_hex(), "0af7651916cd43dd8448eb211c80319c");
        assert_eq!(
            TraceContext::traceparent(ctx.trace_id, ctx.parent_span_id.unwrap()),
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
        );
        assert!(TraceContext::from_traceparent("garbage").is_none());
        assert!(TraceContext::from_traceparent(
            "00-00000000000000000000000000000000-b7ad6b7169203331-01"
        )
        .is_none());
    }
}
