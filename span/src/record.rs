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
    /// Why a span ended without a response: `connection_closed` (the connection ended first),
    /// `stream_id_reused` (the client sent another request on the call's stream id),
    /// `tap_limit` (the proxy stopped waiting to stay within its memory bounds); on the
    /// wrapper's `shim.start` span, `proxy_unavailable` (no proxy could be put in front of the
    /// inner shim: its calls are not traced).
    pub const OUTCOME: &str = "shimtrace.outcome";
    /// The pid of the shimtrace process that recorded the span (wrapper or proxy).
    pub const RECORDER_PID: &str = "shimtrace.recorder.pid";
    /// The inner shim's own pid, as its `Connect` answer gives it.
    pub const SHIM_PID: &str = "shimtrace.shim.pid";
    pub const SIGNAL: &str = "shimtrace.signal";
    /// The container's own trace, set on spans that joined containerd's trace (`traceparent`), so
    /// a container's spans can still be gathered in one place.
    pub const CONTAINER_TRACE_ID: &str = "shimtrace.container.trace_id";

    // On the wrapper's `proxy.ensure` span.
    /// Whether the container's proxy was already running (a pod's second container) or started.
    pub const PROXY_REUSED: &str = "shimtrace.proxy.reused";
    /// The pid of the proxy the wrapper started (absent when it reused one).
    pub const PROXY_PID: &str = "shimtrace.proxy.pid";
    /// The proxy's socket, the address containerd was given in place of the inner shim's.
    pub const PROXY_SOCKET: &str = "shimtrace.proxy.socket";
    // On the wrapper's `shim.delete` span, from the inner shim's `delete` answer.
    /// The task's pid.
    pub const TASK_PID: &str = "shimtrace.task.pid";
    /// The task's exit status.
    pub const TASK_EXIT_CODE: &str = "shimtrace.task.exit_code";

    // Who ran what: set on every span of a container by the wrapper and the proxy.
    /// The OCI runtime that really ran the container (`runc`, `runsc`, `crun`, `kata`, …), not
    /// the shim in front of it: OpenTelemetry's `container.runtime.name`.
    pub const CONTAINER_RUNTIME_NAME: &str = "container.runtime.name";
    /// What [`CONTAINER_RUNTIME_NAME`] was read from: `binary_name` (the runc shim's
    /// `BinaryName` option), `config` (the runtime's `oci_runtime` in the wrapper's config) or
    /// `shim` (the inner shim's own name).
    pub const RUNTIME_SOURCE: &str = "shimtrace.runtime.source";
    /// The runc shim's `BinaryName` as given (a path, possibly a wrapper script).
    pub const RUNTIME_BINARY: &str = "shimtrace.runtime.binary";
    /// The CRI runtime handler (a RuntimeClass's `handler`), when the bundle names it.
    pub const RUNTIME_HANDLER: &str = "shimtrace.runtime.handler";
    /// The image the container was created from, as CRI or Docker names it.
    pub const CONTAINER_IMAGE_NAME: &str = "container.image.name";
    /// The container's name as its engine knows it (Docker's `--name`).
    pub const CONTAINER_NAME: &str = "container.name";
    // Kubernetes, from the annotations containerd's CRI puts in the bundle's `config.json`.
    pub const K8S_POD_NAME: &str = "k8s.pod.name";
    pub const K8S_NAMESPACE_NAME: &str = "k8s.namespace.name";
    pub const K8S_POD_UID: &str = "k8s.pod.uid";
    pub const K8S_CONTAINER_NAME: &str = "k8s.container.name";
    /// [`K8S_ROLE_SANDBOX`] for a pod's sandbox (pause) container, [`K8S_ROLE_CONTAINER`] for the
    /// pod's containers.
    pub const K8S_ROLE: &str = "shimtrace.k8s.role";
    /// [`K8S_ROLE`] of a pod's sandbox.
    pub const K8S_ROLE_SANDBOX: &str = "sandbox";
    /// [`K8S_ROLE`] of a pod's container (and, in reports, of a container outside any pod).
    pub const K8S_ROLE_CONTAINER: &str = "container";
    /// The containerd id of the pod's sandbox (the sandbox's own id on its spans): what ties a
    /// pod's traces together.
    pub const K8S_SANDBOX_ID: &str = "shimtrace.k8s.sandbox_id";
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
                // On the stack: ids are written three times per span.
                let mut hex = [0u8; $len * 2];
                hex::encode_to_slice(self.0, &mut hex).expect("the buffer fits the id");
                serializer.serialize_str(std::str::from_utf8(&hex).expect("hex digits are ASCII"))
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
///
/// Serialized untagged (`true`, `42`, `1.5`, `"text"`). [`Deserialize`] is written by hand: the
/// derived untagged form buffers every value and tries bool, i64 and f64 in turn, formatting an
/// error for each miss, which dominated the collector's ingest. It accepts the same inputs: an
/// integer that does not fit `i64` becomes a `Double`, and strings may arrive as UTF-8 bytes.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum AttributeValue {
    Bool(bool),
    Int(i64),
    Double(f64),
    String(String),
}

/// Implements `Deserialize` for `$ty` by handing whatever the input holds to a unit visitor
/// `$visitor` that expects `$expecting` and has the `visit_*` methods given.
macro_rules! deserialize_any_via {
    ($ty:ty, $visitor:ident, $expecting:expr, { $($visits:tt)* }) => {
        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                deserializer.deserialize_any($visitor)
            }
        }

        struct $visitor;

        impl<'de> serde::de::Visitor<'de> for $visitor {
            type Value = $ty;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str($expecting)
            }

            $($visits)*
        }
    };
}

deserialize_any_via!(
    AttributeValue,
    AttributeValueVisitor,
    "an attribute value (a bool, an integer, a float or a string)",
    {
        fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<Self::Value, E> {
            Ok(AttributeValue::Bool(v))
        }

        fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Self::Value, E> {
            Ok(AttributeValue::Int(v))
        }

        fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Self::Value, E> {
            Ok(match i64::try_from(v) {
                Ok(v) => AttributeValue::Int(v),
                Err(_) => AttributeValue::Double(v as f64),
            })
        }

        fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Self::Value, E> {
            Ok(AttributeValue::Double(v))
        }

        fn visit_char<E: serde::de::Error>(self, v: char) -> Result<Self::Value, E> {
            // The untagged form never took a char for a string; keep refusing it.
            Err(E::invalid_type(serde::de::Unexpected::Char(v), &self))
        }

        fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
            Ok(AttributeValue::String(v.to_owned()))
        }

        fn visit_string<E: serde::de::Error>(self, v: String) -> Result<Self::Value, E> {
            Ok(AttributeValue::String(v))
        }

        fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Self::Value, E> {
            match std::str::from_utf8(v) {
                Ok(s) => self.visit_str(s),
                Err(_) => Err(E::invalid_value(serde::de::Unexpected::Bytes(v), &self)),
            }
        }

        fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<Self::Value, E> {
            match String::from_utf8(v) {
                Ok(s) => Ok(AttributeValue::String(s)),
                Err(e) => Err(E::invalid_value(
                    serde::de::Unexpected::Bytes(e.as_bytes()),
                    &self,
                )),
            }
        }
    }
);

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
    /// A span with no parent, attributes or events, of the default kind and status.
    pub fn new(
        trace_id: TraceId,
        span_id: SpanId,
        name: impl Into<String>,
        start_time_unix_nano: u64,
        end_time_unix_nano: u64,
    ) -> Self {
        SpanRecord {
            trace_id,
            span_id,
            parent_span_id: None,
            name: name.into(),
            kind: SpanKind::default(),
            start_time_unix_nano,
            end_time_unix_nano,
            attributes: Attributes::default(),
            events: Vec::new(),
            status: SpanStatus::default(),
        }
    }

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
///
/// Serialized internally tagged (`{"type":"span",...}`). [`Deserialize`] is written by hand: the
/// derived form buffers every line into an intermediate tree before it looks at the tag. Writers
/// put the tag first, so the tag is read first and the rest of the line goes straight into its
/// variant; a line with the tag elsewhere (or a sequence) is still read, the slow way.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum SpoolEntry {
    /// A finished span.
    Span(SpanRecord),
    /// Spans that a writer could not spool.
    Dropped(DroppedSpans),
}

/// A `dropped` spool line: spans that a writer could not spool, counted since the writer's
/// previous `dropped` line of the same reason. Its fields stand beside `type` in
/// the line. (file, writer, time) identifies a line, so re-reading a file counts it once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DroppedSpans {
    pub count: u64,
    /// Which process dropped them (`wrapper` or `proxy`) and its pid.
    pub writer: String,
    /// Why, in words: the span buffer was full or the spool over its size bound, the spool's
    /// filesystem had no space left (`ENOSPC`) or its quota was exhausted (`EDQUOT`), or writing
    /// the spool file failed otherwise.
    pub reason: String,
    pub time_unix_nano: u64,
}

const SPOOL_TAG: &str = "type";

/// The `type` of a spool line (as the derived internally tagged form read it).
#[derive(Deserialize)]
#[serde(rename_all = "snake_case")]
enum SpoolTag {
    Span,
    Dropped,
}

impl SpoolTag {
    fn entry<'de, D: Deserializer<'de>>(self, rest: D) -> Result<SpoolEntry, D::Error> {
        Ok(match self {
            SpoolTag::Span => SpoolEntry::Span(SpanRecord::deserialize(rest)?),
            SpoolTag::Dropped => SpoolEntry::Dropped(DroppedSpans::deserialize(rest)?),
        })
    }
}

deserialize_any_via!(
    SpoolEntry,
    SpoolEntryVisitor,
    "a spool line (an object with a \"type\")",
    {
        fn visit_seq<A: serde::de::SeqAccess<'de>>(
            self,
            mut seq: A,
        ) -> Result<Self::Value, A::Error> {
            let tag: SpoolTag = seq
                .next_element()?
                .ok_or_else(|| serde::de::Error::missing_field(SPOOL_TAG))?;
            tag.entry(serde::de::value::SeqAccessDeserializer::new(seq))
        }

        fn visit_map<A: serde::de::MapAccess<'de>>(
            self,
            mut map: A,
        ) -> Result<Self::Value, A::Error> {
            use serde::de::Error;
            let Some(first) = map.next_key_seed(KeySeed)? else {
                return Err(A::Error::missing_field(SPOOL_TAG));
            };
            if first.as_str() == SPOOL_TAG {
                let tag: SpoolTag = map.next_value()?;
                return tag.entry(serde::de::value::MapAccessDeserializer::new(TagOnce(map)));
            }
            // The tag is not first: buffer the line (keeping duplicate keys, which the variant
            // rejects) until the tag turns up.
            let mut tag = None;
            let mut rest: Vec<(String, serde_json::Value)> = Vec::new();
            let mut key = Some(first);
            while let Some(k) = key {
                if k.as_str() == SPOOL_TAG {
                    if tag.is_some() {
                        return Err(A::Error::duplicate_field(SPOOL_TAG));
                    }
                    tag = Some(map.next_value::<SpoolTag>()?);
                } else {
                    rest.push((k.into_owned(), map.next_value()?));
                }
                key = map.next_key_seed(KeySeed)?;
            }
            let tag = tag.ok_or_else(|| A::Error::missing_field(SPOOL_TAG))?;
            tag.entry(
                serde::de::value::MapDeserializer::<_, serde_json::Error>::new(rest.into_iter()),
            )
            .map_err(A::Error::custom)
        }
    }
);

/// A map key, borrowed from the input when it can be.
enum Key<'de> {
    Borrowed(&'de str),
    Owned(String),
}

impl Key<'_> {
    fn as_str(&self) -> &str {
        match self {
            Key::Borrowed(s) => s,
            Key::Owned(s) => s,
        }
    }

    fn into_owned(self) -> String {
        match self {
            Key::Borrowed(s) => s.to_owned(),
            Key::Owned(s) => s,
        }
    }
}

struct KeySeed;

impl<'de> serde::de::DeserializeSeed<'de> for KeySeed {
    type Value = Key<'de>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl<'de> serde::de::Visitor<'de> for KeySeed {
    type Value = Key<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a field name")
    }

    fn visit_borrowed_str<E: serde::de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Key::Borrowed(v))
    }

    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Key::Owned(v.to_owned()))
    }

    fn visit_string<E: serde::de::Error>(self, v: String) -> Result<Self::Value, E> {
        Ok(Key::Owned(v))
    }
}

/// The rest of a spool line after its tag: hands the variant every key but a second tag, which is
/// an error (as in the derived form).
struct TagOnce<A>(A);

impl<'de, A: serde::de::MapAccess<'de>> serde::de::MapAccess<'de> for TagOnce<A> {
    type Error = A::Error;

    fn next_key_seed<K: serde::de::DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, A::Error> {
        use serde::de::value::{BorrowedStrDeserializer, StringDeserializer};
        match self.0.next_key_seed(KeySeed)? {
            None => Ok(None),
            Some(key) if key.as_str() == SPOOL_TAG => {
                Err(serde::de::Error::duplicate_field(SPOOL_TAG))
            }
            Some(Key::Borrowed(k)) => seed.deserialize(BorrowedStrDeserializer::new(k)).map(Some),
            Some(Key::Owned(k)) => seed.deserialize(StringDeserializer::new(k)).map(Some),
        }
    }

    fn next_value_seed<V: serde::de::DeserializeSeed<'de>>(
        &mut self,
        seed: V,
    ) -> Result<V::Value, A::Error> {
        self.0.next_value_seed(seed)
    }

    fn size_hint(&self) -> Option<usize> {
        self.0.size_hint()
    }
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

    /// The derived deserialisers these hand-written ones replace, to compare against.
    mod derived {
        use super::*;

        #[derive(Debug, PartialEq, Deserialize)]
        #[serde(untagged)]
        pub enum AttributeValue {
            Bool(bool),
            Int(i64),
            Double(f64),
            String(String),
        }

        impl From<AttributeValue> for super::AttributeValue {
            fn from(v: AttributeValue) -> Self {
                match v {
                    AttributeValue::Bool(v) => Self::Bool(v),
                    AttributeValue::Int(v) => Self::Int(v),
                    AttributeValue::Double(v) => Self::Double(v),
                    AttributeValue::String(v) => Self::String(v),
                }
            }
        }

        #[derive(Debug, Deserialize)]
        #[serde(tag = "type", rename_all = "snake_case")]
        pub enum SpoolEntry {
            Span(SpanRecord),
            Dropped(DroppedSpans),
        }

        impl From<SpoolEntry> for super::SpoolEntry {
            fn from(v: SpoolEntry) -> Self {
                match v {
                    SpoolEntry::Span(s) => Self::Span(s),
                    SpoolEntry::Dropped(d) => Self::Dropped(d),
                }
            }
        }
    }

    #[test]
    fn attribute_values_keep_their_json_form() {
        let cases: [(AttributeValue, &str); 8] = [
            (AttributeValue::Bool(true), "true"),
            (AttributeValue::Bool(false), "false"),
            (AttributeValue::Int(-7), "-7"),
            (AttributeValue::Int(i64::MAX), "9223372036854775807"),
            (AttributeValue::Double(1.5), "1.5"),
            (AttributeValue::Double(2.0), "2.0"),
            (AttributeValue::String("42".into()), "\"42\""),
            (AttributeValue::String("a\"b\\\n".into()), r#""a\"b\\\n""#),
        ];
        for (value, json) in cases {
            assert_eq!(serde_json::to_string(&value).unwrap(), json, "{value:?}");
            let back: AttributeValue = serde_json::from_str(json).unwrap();
            assert_eq!(back, value, "{json}");
            let borrowed: AttributeValue = serde_json::from_slice(json.as_bytes()).unwrap();
            assert_eq!(borrowed, value, "{json}");
        }
    }

    #[test]
    fn a_number_beyond_i64_reads_back_the_same_after_a_write() {
        // Without exact float parsing, a 34-digit integer reads as one double and its shortest
        // written form reads back as the next one.
        for json in [
            "2333333333333333333333333333333333",
            "1e308",
            "0.1",
            "-4.9e-324",
        ] {
            let read: AttributeValue = serde_json::from_str(json).unwrap();
            let written = serde_json::to_string(&read).unwrap();
            let back: AttributeValue = serde_json::from_str(&written).unwrap();
            assert_eq!(back, read, "{json} → {written}");
        }
    }

    #[test]
    fn attribute_values_accept_exactly_what_the_untagged_form_accepted() {
        let inputs = [
            "true",
            "false",
            "0",
            "-1",
            "9223372036854775807",
            "9223372036854775808",
            "18446744073709551615",
            "-9223372036854775808",
            "-9223372036854775809",
            "1.0",
            "-0.0",
            "1e3",
            "1e400",
            "\"\"",
            "\"true\"",
            "\"1\"",
            "\"1.5\"",
            "\"caf\\u00e9 \\\"q\\\"\"",
            "\"\\ud800\"",
            "null",
            "[]",
            "[1]",
            "{}",
            "{\"a\":1}",
            "",
            "tru",
        ];
        for input in inputs {
            let ours = serde_json::from_str::<AttributeValue>(input);
            let theirs = serde_json::from_str::<derived::AttributeValue>(input);
            match (ours, theirs) {
                (Ok(ours), Ok(theirs)) => assert_eq!(ours, theirs.into(), "{input}"),
                (Err(_), Err(_)) => {}
                (ours, theirs) => panic!("{input}: ours {ours:?}, derived {theirs:?}"),
            }
        }
        // Inside a map (as in `attributes`), and from a `serde_json::Value`.
        let map = r#"{"b":true,"i":3,"u":18446744073709551615,"d":0.25,"s":"x"}"#;
        let ours: Attributes = serde_json::from_str(map).unwrap();
        let theirs: BTreeMap<String, derived::AttributeValue> = serde_json::from_str(map).unwrap();
        let theirs: Attributes = theirs.into_iter().map(|(k, v)| (k, v.into())).collect();
        assert_eq!(ours, theirs);
        let value: serde_json::Value = serde_json::from_str(map).unwrap();
        assert_eq!(Attributes::deserialize(value).unwrap(), ours);
        // Strings given as bytes, as the untagged form's buffer accepted them.
        use serde::de::value::{BytesDeserializer, Error};
        let bytes = BytesDeserializer::<Error>::new(b"ok");
        assert_eq!(
            AttributeValue::deserialize(bytes).unwrap(),
            AttributeValue::String("ok".into())
        );
        let bad = BytesDeserializer::<Error>::new(&[0xff]);
        assert!(AttributeValue::deserialize(bad).is_err());
    }

    #[test]
    fn every_spool_entry_round_trips_byte_for_byte() {
        let mut full = sample();
        full.parent_span_id = Some("00f067aa0ba902b7".parse().unwrap());
        full.attributes.insert("flag".into(), true.into());
        full.attributes
            .insert("ratio".into(), AttributeValue::Double(0.5));
        full.events.push(SpanEvent {
            name: "/tasks/exit".into(),
            time_unix_nano: 3,
            attributes: full.attributes.clone(),
        });
        full.status = SpanStatus::Error("boom \"quoted\"".into());
        let mut unset = sample();
        unset.status = SpanStatus::Unset;
        unset.kind = SpanKind::Internal;
        let entries = [
            SpoolEntry::Span(sample()),
            SpoolEntry::Span(full),
            SpoolEntry::Span(unset),
            SpoolEntry::Dropped(DroppedSpans {
                count: 12,
                writer: "proxy/42".into(),
                reason: "queue full".into(),
                time_unix_nano: u64::MAX,
            }),
        ];
        // The spool format, to the byte: what shims of this version write and collectors read.
        let golden = [
            r#"{"type":"span","trace_id":"0af7651916cd43dd8448eb211c80319c","span_id":"b7ad6b7169203331","name":"containerd.task.v2.Task/Create","kind":"server","start_time_unix_nano":1,"end_time_unix_nano":5,"attributes":{"process.pid":42,"rpc.system":"ttrpc"},"status":{"code":"ok"}}"#,
            r#"{"type":"span","trace_id":"0af7651916cd43dd8448eb211c80319c","span_id":"b7ad6b7169203331","parent_span_id":"00f067aa0ba902b7","name":"containerd.task.v2.Task/Create","kind":"server","start_time_unix_nano":1,"end_time_unix_nano":5,"attributes":{"flag":true,"process.pid":42,"ratio":0.5,"rpc.system":"ttrpc"},"events":[{"name":"/tasks/exit","time_unix_nano":3,"attributes":{"flag":true,"process.pid":42,"ratio":0.5,"rpc.system":"ttrpc"}}],"status":{"code":"error","message":"boom \"quoted\""}}"#,
            r#"{"type":"span","trace_id":"0af7651916cd43dd8448eb211c80319c","span_id":"b7ad6b7169203331","name":"containerd.task.v2.Task/Create","kind":"internal","start_time_unix_nano":1,"end_time_unix_nano":5,"attributes":{"process.pid":42,"rpc.system":"ttrpc"},"status":{"code":"unset"}}"#,
            r#"{"type":"dropped","count":12,"writer":"proxy/42","reason":"queue full","time_unix_nano":18446744073709551615}"#,
        ];
        assert_eq!(entries.len(), golden.len());
        for (entry, golden) in entries.into_iter().zip(golden) {
            let line = serde_json::to_string(&entry).unwrap();
            assert_eq!(line, golden);
            let back: SpoolEntry = serde_json::from_str(&line).unwrap();
            assert_eq!(back, entry);
            assert_eq!(serde_json::to_string(&back).unwrap(), line);
            let derived: derived::SpoolEntry = serde_json::from_str(&line).unwrap();
            assert_eq!(SpoolEntry::from(derived), entry);
        }
    }

    #[test]
    fn spool_lines_parse_exactly_as_the_derived_form_parsed_them() {
        let span = serde_json::to_string(&SpoolEntry::Span(sample())).unwrap();
        let body = span.strip_prefix(r#"{"type":"span","#).unwrap();
        let inputs = [
            span.clone(),
            // Tag last, in the middle, spelled with an escape, duplicated, missing, unknown.
            format!(r#"{{{},"type":"span"}}"#, body.strip_suffix('}').unwrap()),
            format!("{{{}", body.replacen(r#""name""#, r#""type":"span","name""#, 1)),
            span.replacen(r#""type""#, r#""typ\u0065""#, 1),
            span.replacen(r#""name""#, r#""type":"span","name""#, 1),
            span.replacen(r#""name""#, r#""type":"dropped","name""#, 1),
            format!(r#"{{"name":"x","type":"span",{body}"#),
            format!("{{{body}"),
            span.replacen(r#""span""#, r#""spans""#, 1),
            span.replacen(r#""span""#, "0", 1),
            span.replacen(r#""span""#, "null", 1),
            // Unknown fields are ignored; a field twice or missing is an error.
            span.replacen(r#""name""#, r#""future":{"x":[1]},"name""#, 1),
            span.replacen(r#""name""#, r#""name":"a","name""#, 1),
            span.replacen(r#""name":"containerd.task.v2.Task/Create","#, "", 1),
            span.replacen(r#""process.pid":42"#, r#""process.pid":null"#, 1),
            r#"{"type":"dropped","count":3,"writer":"w","reason":"r","time_unix_nano":9}"#.into(),
            r#"{"count":3,"writer":"w","reason":"r","time_unix_nano":9,"type":"dropped"}"#.into(),
            r#"{"type":"dropped","count":3,"writer":"w","reason":"r","time_unix_nano":9,"x":1}"#
                .into(),
            r#"{"type":"dropped","count":-3,"writer":"w","reason":"r","time_unix_nano":9}"#.into(),
            r#"{"type":"dropped","count":3,"writer":"w","reason":"r"}"#.into(),
            r#"{"type":"dropped","type":"dropped","count":3,"writer":"w","reason":"r","time_unix_nano":9}"#.into(),
            r#"["dropped",3,"w","r",9]"#.into(),
            r#"["dropped",3,"w"]"#.into(),
            "[]".into(),
            "{}".into(),
            r#"{"type":"span"}"#.into(),
            "null".into(),
            "42".into(),
            r#""span""#.into(),
        ];
        let mut parsed = 0;
        for input in &inputs {
            let ours = serde_json::from_str::<SpoolEntry>(input);
            let theirs = serde_json::from_str::<derived::SpoolEntry>(input);
            match (ours, theirs) {
                (Ok(ours), Ok(theirs)) => {
                    assert_eq!(ours, theirs.into(), "{input}");
                    parsed += 1;
                }
                (Err(_), Err(_)) => {}
                (ours, theirs) => panic!("{input}: ours {ours:?}, derived {theirs:?}"),
            }
        }
        // The comparison covers both outcomes.
        assert!(parsed >= 8 && parsed < inputs.len(), "{parsed}");
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
