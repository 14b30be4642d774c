//! The tap: turns the ttrpc frames a proxy connection forwards into spans.
//!
//! A request frame opens a pending call keyed by its stream id; the response frame with the same
//! stream id closes it. Requests are read just before they are forwarded, so that a request without
//! a `traceparent` can carry the proxy's (its span becomes the inner shim's parent), but only the
//! few fields that needs, borrowed from the frame; responses are only copied. The spool's writer
//! thread decodes the rest and builds the span, so a forwarding thread never does. The pending map
//! still accepts a response before its request, since the two directions run on their own threads.
//!
//! What a tap holds is bounded whatever the peers send: [`MAX_PENDING`] entries per connection, of
//! them [`MAX_EARLY`] responses without a request (those of requests it could not read), a request
//! copy of at most [`MAX_KEPT_REQUEST`] bytes, and [`PENDING_BYTES`] for the whole proxy. A call
//! over a bound still gets its span: with its request reduced to what names it, or, evicted, as
//! unanswered with the outcome `tap_limit`.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use containerd_shim_protos::api;
use protobuf::Message;

use crate::spool::{DeferredSpan, SpanSink};
use crate::trace_ctx::TraceRegistry;
use crate::wire::{self, RequestView};
use shimtrace_span::{
    attr, AttributeValue, Attributes, SpanId, SpanKind, SpanRecord, SpanStatus, TraceContext,
    TraceId,
};
use ttrpc::proto::{MessageHeader, MESSAGE_HEADER_LENGTH, MESSAGE_LENGTH_MAX};

/// ttrpc metadata key containerd sets to the namespace of every call.
pub const NAMESPACE_METADATA: &str = "containerd-namespace-ttrpc";
/// W3C trace context key that containerd 2.x's otelttrpc interceptor injects.
pub const TRACEPARENT_METADATA: &str = "traceparent";

/// Most entries one connection's tap keeps waiting for their other half. containerd has a few
/// calls in flight per connection (one `Wait` per process, and the call at hand).
pub const MAX_PENDING: usize = 1024;
/// Most responses one connection's tap keeps without their request. The proxy reads every request
/// before forwarding it, so these only answer requests it could not read: nothing will claim them.
pub const MAX_EARLY: usize = 16;
/// A request larger than this is kept reduced to what names the call (service, method,
/// namespace, container id): containerd's are a few KiB, and the copy waits for the response.
pub const MAX_KEPT_REQUEST: usize = 64 * 1024;
/// Most bytes of request and response copies waiting in all of a proxy's taps; beyond it requests
/// are kept reduced and lone responses are not kept.
pub const PENDING_BYTES: usize = 8 << 20;
/// `shimtrace.outcome` of a call whose wait was given up to stay within the bounds above.
pub const TAP_LIMIT: &str = "tap_limit";
/// Reduced string fields are cut to this many bytes.
const REDUCED_FIELD: usize = 256;

/// The bytes all of a proxy's taps hold for calls in flight (see [`PENDING_BYTES`]).
#[derive(Debug, Default)]
pub struct PendingBudget(AtomicUsize);

impl PendingBudget {
    /// Takes `bytes` from the budget if they fit.
    fn take(&self, bytes: usize) -> bool {
        self.0
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |held| {
                held.checked_add(bytes).filter(|n| *n <= PENDING_BYTES)
            })
            .is_ok()
    }

    /// Takes `bytes` whether or not they fit (a reduced request, a few hundred bytes at most).
    fn force(&self, bytes: usize) {
        self.0.fetch_add(bytes, Ordering::Relaxed);
    }

    fn give_back(&self, bytes: usize) {
        self.0.fetch_sub(bytes, Ordering::Relaxed);
    }

    /// Bytes held now.
    #[cfg(test)]
    fn held(&self) -> usize {
        self.0.load(Ordering::Relaxed)
    }
}

/// What every connection's tap shares within one proxy.
pub struct TapContext {
    pub sink: SpanSink,
    pub traces: TraceRegistry,
    /// Shared with every finished call handed to the spool's writer thread (one reference each).
    pub shim: Arc<ShimLabels>,
    /// Pass the proxy's `traceparent` to the inner shim on requests that carry none.
    pub propagate: bool,
    /// What the connections' taps hold for calls in flight.
    pub pending: PendingBudget,
}

/// What the proxy knows of the inner shim it serves, for every span.
#[derive(Debug, Clone)]
pub struct ShimLabels {
    /// Path of the inner shim binary (`shimtrace.inner`).
    pub inner: String,
    /// `plain/v2`, `json/v3`, … (`shimtrace.protocol`).
    pub protocol: String,
    /// The shim's `-namespace`; containerd 1.6 sends no namespace metadata on shim calls.
    pub namespace: String,
}

/// The tap of one proxied connection.
pub struct ConnectionTap {
    ctx: Arc<TapContext>,
    pending: Mutex<Pending>,
}

/// A connection's calls waiting for their other half, by stream id.
#[derive(Default)]
struct Pending {
    slots: HashMap<u32, Slot>,
    /// How many of `slots` are early responses.
    early: usize,
}

impl Pending {
    fn len(&self) -> usize {
        self.slots.len()
    }

    fn remove(&mut self, sid: u32, budget: &PendingBudget) -> Option<Slot> {
        let slot = self.slots.remove(&sid)?;
        budget.give_back(slot.bytes());
        if matches!(slot, Slot::EarlyResponse { .. }) {
            self.early -= 1;
        }
        Some(slot)
    }

    /// Inserts `slot` (its bytes already taken from `budget`), into a free slot.
    fn insert(&mut self, sid: u32, slot: Slot) {
        if matches!(slot, Slot::EarlyResponse { .. }) {
            self.early += 1;
        }
        self.slots.insert(sid, slot);
    }

    /// Makes room for one more entry: lets go of an early response if there is one, else of the
    /// call waiting longest, which is returned to be ended.
    fn make_room(&mut self, budget: &PendingBudget) -> Option<PendingCall> {
        if self.slots.len() < MAX_PENDING {
            return None;
        }
        let victim = if self.early > 0 {
            self.slots
                .iter()
                .find(|(_, slot)| matches!(slot, Slot::EarlyResponse { .. }))
                .map(|(sid, _)| *sid)
        } else {
            self.slots
                .iter()
                .filter_map(|(sid, slot)| match slot {
                    Slot::Request(call) => Some((call.start, *sid)),
                    Slot::EarlyResponse { .. } => None,
                })
                .min()
                .map(|(_, sid)| sid)
        }?;
        match self.remove(victim, budget)? {
            Slot::Request(call) => Some(call),
            Slot::EarlyResponse { .. } => None,
        }
    }

    fn drain(&mut self, budget: &PendingBudget) -> Vec<Slot> {
        self.early = 0;
        let slots: Vec<Slot> = self.slots.drain().map(|(_, slot)| slot).collect();
        budget.give_back(slots.iter().map(Slot::bytes).sum());
        slots
    }
}

enum Slot {
    Request(PendingCall),
    /// The response was tapped first; its raw ttrpc `Response` waits for the request.
    EarlyResponse {
        end: u64,
        payload: Vec<u8>,
    },
}

impl Slot {
    /// The bytes this entry took from the budget.
    fn bytes(&self) -> usize {
        match self {
            Slot::Request(call) => call.request.len(),
            Slot::EarlyResponse { payload, .. } => payload.len(),
        }
    }
}

struct PendingCall {
    span_id: SpanId,
    start: u64,
    trace: TraceContext,
    /// The container's own trace, when the call joined containerd's.
    own_trace: Option<TraceId>,
    /// The raw ttrpc `Request`, decoded off the forwarding path.
    request: Vec<u8>,
    /// (namespace, container id) of a `Shutdown`, whose trace is retired once it ends (kept one
    /// generation more, for events published after it).
    retire_on_end: Option<(String, String)>,
}

/// Ids and details decoded from a task request.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct TaskRequestInfo {
    pub id: Option<String>,
    pub exec_id: Option<String>,
    pub bundle: Option<String>,
    pub signal: Option<u32>,
}

/// `s` unless it is empty (protobuf's "not set" for a string).
pub(crate) fn non_empty(s: &str) -> Option<String> {
    (!s.is_empty()).then(|| s.to_string())
}

/// Whether `service` is the shim task API (`containerd.task.v2.Task` or `containerd.task.v3.Task`);
/// the two are wire-identical, so the same message types decode both.
pub fn is_task_service(service: &str) -> bool {
    service.starts_with("containerd.task.v") && service.ends_with(".Task")
}

/// `payload` decoded as an `M`, then read by `read`; `None` when it does not decode.
fn decoded<M: Message, T>(payload: &[u8], read: impl FnOnce(M) -> T) -> Option<T> {
    M::parse_from_bytes(payload).ok().map(read)
}

/// Decodes the ids a task request carries; unknown methods or undecodable payloads give nothing.
pub fn decode_task_request(method: &str, payload: &[u8]) -> TaskRequestInfo {
    let p = payload;
    let id_only = |id: &str| TaskRequestInfo {
        id: non_empty(id),
        ..Default::default()
    };
    let id_and_exec = |id: &str, exec_id: &str| TaskRequestInfo {
        id: non_empty(id),
        exec_id: non_empty(exec_id),
        ..Default::default()
    };
    match method {
        "Create" => decoded(p, |r: api::CreateTaskRequest| TaskRequestInfo {
            bundle: non_empty(&r.bundle),
            ..id_only(&r.id)
        }),
        "Kill" => decoded(p, |r: api::KillRequest| TaskRequestInfo {
            signal: Some(r.signal),
            ..id_and_exec(&r.id, &r.exec_id)
        }),
        "State" => decoded(p, |r: api::StateRequest| id_and_exec(&r.id, &r.exec_id)),
        "Start" => decoded(p, |r: api::StartRequest| id_and_exec(&r.id, &r.exec_id)),
        "Delete" => decoded(p, |r: api::DeleteRequest| id_and_exec(&r.id, &r.exec_id)),
        "Exec" => decoded(p, |r: api::ExecProcessRequest| {
            id_and_exec(&r.id, &r.exec_id)
        }),
        "ResizePty" => decoded(p, |r: api::ResizePtyRequest| id_and_exec(&r.id, &r.exec_id)),
        "CloseIO" => decoded(p, |r: api::CloseIORequest| id_and_exec(&r.id, &r.exec_id)),
        "Wait" => decoded(p, |r: api::WaitRequest| id_and_exec(&r.id, &r.exec_id)),
        "Pids" => decoded(p, |r: api::PidsRequest| id_only(&r.id)),
        "Pause" => decoded(p, |r: api::PauseRequest| id_only(&r.id)),
        "Resume" => decoded(p, |r: api::ResumeRequest| id_only(&r.id)),
        "Checkpoint" => decoded(p, |r: api::CheckpointTaskRequest| id_only(&r.id)),
        "Update" => decoded(p, |r: api::UpdateTaskRequest| id_only(&r.id)),
        "Stats" => decoded(p, |r: api::StatsRequest| id_only(&r.id)),
        "Connect" => decoded(p, |r: api::ConnectRequest| id_only(&r.id)),
        "Shutdown" => decoded(p, |r: api::ShutdownRequest| id_only(&r.id)),
        _ => None,
    }
    .unwrap_or_default()
}

/// Adds what a task response tells (pids, exit codes) to `attributes`.
pub fn decode_task_response(method: &str, payload: &[u8], attributes: &mut Attributes) {
    let p = payload;
    // (the process's pid, its exit status, the shim's own pid)
    let told = match method {
        "Create" => decoded(p, |r: api::CreateTaskResponse| (Some(r.pid), None, None)),
        "Start" => decoded(p, |r: api::StartResponse| (Some(r.pid), None, None)),
        "Delete" => decoded(p, |r: api::DeleteResponse| {
            (Some(r.pid), Some(r.exit_status), None)
        }),
        "Wait" => decoded(p, |r: api::WaitResponse| (None, Some(r.exit_status), None)),
        "State" => decoded(p, |r: api::StateResponse| (Some(r.pid), None, None)),
        "Connect" => decoded(p, |r: api::ConnectResponse| {
            (Some(r.task_pid), None, Some(r.shim_pid))
        }),
        _ => None,
    };
    let (pid, exit_status, shim_pid) = told.unwrap_or_default();
    for (key, value) in [
        (attr::PROCESS_PID, pid),
        (attr::PROCESS_EXIT_CODE, exit_status),
        (attr::SHIM_PID, shim_pid),
    ] {
        if let Some(value) = value {
            attributes.insert(key.to_string(), AttributeValue::from(value));
        }
    }
}

impl ConnectionTap {
    pub fn new(ctx: Arc<TapContext>) -> ConnectionTap {
        ConnectionTap {
            ctx,
            pending: Mutex::new(Pending::default()),
        }
    }

    /// A request frame with stream id `sid`, seen at `start`, about to be forwarded; returns the
    /// frame to forward instead when a `traceparent` is added. Only what that needs is read here
    /// (borrowed from the frame); the span is assembled by the spool's writer thread.
    pub fn on_request(
        &self,
        header: &MessageHeader,
        payload: &[u8],
        start: u64,
    ) -> Option<Vec<u8>> {
        let sid = header.stream_id;
        let view = RequestView::parse(payload, [NAMESPACE_METADATA, TRACEPARENT_METADATA])?;
        #[cfg(test)]
        if view.method == PANIC_FOR_TEST {
            panic!("a tap defect, injected by a test");
        }
        let [namespace, traceparent] = view.metadata;
        let namespace = namespace.unwrap_or(&self.ctx.shim.namespace);
        let traceparent = traceparent.and_then(TraceContext::from_traceparent);
        let task_call = is_task_service(view.service) && carries_container_id(view.method);
        let container_id = task_call
            .then(|| wire::string_field(view.payload, 1))
            .flatten()
            .filter(|id| !id.is_empty());
        let container_trace = container_id.map(|id| {
            // Create names the bundle, where the wrapper's `start` left the container's trace.
            let bundle = (view.method == "Create")
                .then(|| wire::string_field(view.payload, 2))
                .flatten()
                .filter(|b| !b.is_empty());
            self.ctx.traces.lookup(namespace, id, bundle.map(Path::new))
        });
        if let (Some(id), "Create") = (container_id, view.method) {
            let identities = self.ctx.traces.identities();
            identities.create_seen(
                &self.ctx.sink,
                namespace,
                id,
                view.payload,
                &self.ctx.shim.inner,
            );
        }
        // containerd 2.x with tracing on names its own span as the parent: join that trace.
        let trace = traceparent
            .or(container_trace)
            .unwrap_or_else(|| TraceContext {
                trace_id: TraceId::random(),
                parent_span_id: None,
            });
        let span_id = SpanId::random();
        let replacement = (traceparent.is_none() && self.ctx.propagate)
            .then(|| {
                with_metadata(
                    header,
                    payload,
                    TRACEPARENT_METADATA,
                    &TraceContext::traceparent(trace.trace_id, span_id),
                )
            })
            .flatten();
        let retire_on_end = (view.method == "Shutdown")
            .then(|| container_id.map(|id| (namespace.to_string(), id.to_string())))
            .flatten();
        let budget = &self.ctx.pending;
        let request = if payload.len() <= MAX_KEPT_REQUEST && budget.take(payload.len()) {
            payload.to_vec()
        } else {
            let reduced = reduced_request(&view, namespace, container_id);
            budget.force(reduced.len());
            reduced
        };
        let call = PendingCall {
            span_id,
            start,
            trace,
            own_trace: traceparent.and(container_trace).map(|c| c.trace_id),
            request,
            retire_on_end,
        };
        let mut ended = Vec::new();
        if let Ok(mut pending) = self.pending.lock() {
            match pending.remove(sid, budget) {
                Some(Slot::EarlyResponse { end, payload }) => {
                    budget.give_back(call.request.len());
                    ended.push((call, end, Outcome::Response(payload)));
                }
                other => {
                    // A reused stream id without a response is a protocol error by the client;
                    // the older call is ended so it is not lost.
                    if let Some(Slot::Request(stale)) = other {
                        ended.push((stale, start, Outcome::Unanswered("stream_id_reused")));
                    }
                    if let Some(evicted) = pending.make_room(budget) {
                        ended.push((evicted, start, Outcome::Unanswered(TAP_LIMIT)));
                    }
                    pending.insert(sid, Slot::Request(call));
                }
            }
        } else {
            budget.give_back(call.request.len());
        }
        for (call, end, outcome) in ended {
            self.emit(call, end, outcome);
        }
        replacement
    }

    /// A response frame (already forwarded) with stream id `sid`, seen at `end`.
    pub fn on_response(&self, sid: u32, payload: &[u8], end: u64) {
        #[cfg(test)]
        if payload == PANIC_FOR_TEST.as_bytes() {
            panic!("a tap defect, injected by a test");
        }
        let budget = &self.ctx.pending;
        let call = {
            let Ok(mut pending) = self.pending.lock() else {
                return;
            };
            match pending.slots.get(&sid) {
                Some(Slot::Request(_)) => match pending.remove(sid, budget) {
                    Some(Slot::Request(call)) => call,
                    _ => return,
                },
                // A second response for one stream id: the first one stays.
                Some(Slot::EarlyResponse { .. }) => return,
                None => {
                    // Kept only within bounds: a response nobody asked for (as far as the tap
                    // could read) is not worth growing for.
                    let fits = pending.early < MAX_EARLY
                        && pending.len() < MAX_PENDING
                        && payload.len() <= MAX_KEPT_REQUEST
                        && budget.take(payload.len());
                    if fits {
                        let payload = payload.to_vec();
                        pending.insert(sid, Slot::EarlyResponse { end, payload });
                    }
                    return;
                }
            }
        };
        self.emit(call, end, Outcome::Response(payload.to_vec()));
    }

    /// The connection closed: calls still waiting for a response end now, marked as such.
    pub fn on_close(&self, end: u64) {
        let slots = match self.pending.lock() {
            Ok(mut pending) => pending.drain(&self.ctx.pending),
            Err(_) => return,
        };
        for slot in slots {
            if let Slot::Request(call) = slot {
                self.emit(call, end, Outcome::Unanswered("connection_closed"));
            }
        }
    }

    fn emit(&self, mut call: PendingCall, end: u64, outcome: Outcome) {
        if let Some((namespace, id)) = call.retire_on_end.take() {
            self.ctx.traces.retire(&namespace, &id);
        }
        let span = CallSpan {
            shim: self.ctx.shim.clone(),
            call,
            end,
            outcome,
        };
        // Assembled, then given its container's identity, on the writer thread.
        let identities = self.ctx.traces.identities();
        self.ctx.sink.emit_deferred(identities.annotating(span));
    }
}

/// A ttrpc `Request` naming the call and little else (service, method, namespace, the container
/// id and field 2 of the task request: its exec id or bundle), each cut to [`REDUCED_FIELD`]
/// bytes: what a span needs from a request too large to keep whole.
fn reduced_request(view: &RequestView<'_>, namespace: &str, container_id: Option<&str>) -> Vec<u8> {
    let cut = |s: &str| {
        let mut end = s.len().min(REDUCED_FIELD);
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s[..end].to_string()
    };
    let mut request = ttrpc::Request::new();
    request.service = cut(view.service);
    request.method = cut(view.method);
    let mut kv = ttrpc::proto::KeyValue::new();
    kv.key = NAMESPACE_METADATA.into();
    kv.value = cut(namespace);
    request.metadata.push(kv);
    if let Some(id) = container_id {
        let mut payload = Vec::new();
        let mut out = protobuf::CodedOutputStream::vec(&mut payload);
        let second = wire::string_field(view.payload, 2).map(cut);
        let written = out.write_string(1, &cut(id)).and_then(|()| match &second {
            Some(second) => out.write_string(2, second),
            None => Ok(()),
        });
        if written.and_then(|()| out.flush()).is_ok() {
            drop(out);
            request.payload = payload;
        }
    }
    request.write_to_bytes().unwrap_or_default()
}

/// Whether a task API method's request carries the container id (field 1 of all of these).
fn carries_container_id(method: &str) -> bool {
    matches!(
        method,
        "Create"
            | "Kill"
            | "State"
            | "Start"
            | "Delete"
            | "Exec"
            | "ResizePty"
            | "CloseIO"
            | "Wait"
            | "Pids"
            | "Pause"
            | "Resume"
            | "Checkpoint"
            | "Update"
            | "Stats"
            | "Connect"
            | "Shutdown"
    )
}

/// How a call ended.
enum Outcome {
    /// The raw ttrpc `Response`.
    Response(Vec<u8>),
    /// No response came; the value of `shimtrace.outcome`.
    Unanswered(&'static str),
}

/// A finished call as the forwarding threads leave it; the spool's writer thread turns it into
/// its span.
struct CallSpan {
    shim: Arc<ShimLabels>,
    call: PendingCall,
    end: u64,
    outcome: Outcome,
}

impl DeferredSpan for CallSpan {
    fn build(self: Box<Self>) -> Option<SpanRecord> {
        // Runs on the spool's writer thread: a defect in decoding loses this span, not the writer.
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| (*self).assemble()))
            .ok()
            .flatten()
    }
}

impl CallSpan {
    fn assemble(self) -> Option<SpanRecord> {
        let CallSpan {
            shim,
            call,
            end,
            outcome,
        } = self;
        // The forwarding thread already read this request successfully.
        let request = ttrpc::Request::parse_from_bytes(&call.request).ok()?;
        let mut request_namespace = None;
        for kv in &request.metadata {
            if kv.key == NAMESPACE_METADATA {
                request_namespace = Some(kv.value.as_str());
            }
        }
        let info = if is_task_service(&request.service) {
            decode_task_request(&request.method, &request.payload)
        } else {
            TaskRequestInfo::default()
        };
        let mut attributes = Attributes::new();
        let mut put = |key: &str, value: AttributeValue| {
            attributes.insert(key.to_string(), value);
        };
        put(attr::RPC_SYSTEM, "ttrpc".into());
        put(attr::RPC_SERVICE, request.service.as_str().into());
        put(attr::RPC_METHOD, request.method.as_str().into());
        put(
            attr::CONTAINERD_NAMESPACE,
            request_namespace.unwrap_or(&shim.namespace).into(),
        );
        put(attr::INNER, shim.inner.as_str().into());
        put(attr::PROTOCOL, shim.protocol.as_str().into());
        put(attr::RECORDER_PID, shimtrace_span::clock::pid().into());
        if let Some(id) = &info.id {
            put(attr::CONTAINERD_CONTAINER_ID, id.as_str().into());
        }
        if let Some(own) = call.own_trace {
            put(attr::CONTAINER_TRACE_ID, own.to_hex().into());
        }
        if let Some(exec) = &info.exec_id {
            put(attr::CONTAINERD_EXEC_ID, exec.as_str().into());
        }
        if let Some(bundle) = &info.bundle {
            put(attr::CONTAINERD_BUNDLE, bundle.as_str().into());
        }
        if let Some(signal) = info.signal {
            put(attr::SIGNAL, signal.into());
        }
        let status = match outcome {
            Outcome::Response(payload) => {
                response_status(&request.service, &request.method, &payload, &mut attributes)
            }
            Outcome::Unanswered(outcome) => {
                attributes.insert(attr::OUTCOME.into(), outcome.into());
                SpanStatus::Unset
            }
        };
        Some(SpanRecord {
            trace_id: call.trace.trace_id,
            span_id: call.span_id,
            parent_span_id: call.trace.parent_span_id,
            name: format!("{}/{}", request.service, request.method),
            kind: SpanKind::Server,
            start_time_unix_nano: call.start,
            end_time_unix_nano: end.max(call.start),
            attributes,
            events: Vec::new(),
            status,
        })
    }
}

/// The span status a raw ttrpc `Response` gives, adding its code (and what a task response tells)
/// to `attributes`.
fn response_status(
    service: &str,
    method: &str,
    payload: &[u8],
    attributes: &mut Attributes,
) -> SpanStatus {
    match ttrpc::Response::parse_from_bytes(payload) {
        Ok(response) => {
            let code = response.status.code.value();
            attributes.insert(attr::RPC_TTRPC_STATUS_CODE.into(), code.into());
            if code == 0 {
                if is_task_service(service) {
                    decode_task_response(method, &response.payload, attributes);
                }
                SpanStatus::Ok
            } else {
                let message = response.status.message.clone();
                attributes.insert(
                    attr::RPC_TTRPC_STATUS_MESSAGE.into(),
                    message.as_str().into(),
                );
                SpanStatus::Error(message)
            }
        }
        Err(e) => SpanStatus::Error(format!("undecodable ttrpc response: {e}")),
    }
}

/// The request frame with one more metadata entry. Protobuf merges repeated fields across
/// concatenated encodings, so appending the encoded `metadata` field (5) to the payload adds the
/// entry without re-encoding, or disturbing, anything containerd sent. `None` past ttrpc's limit.
pub fn with_metadata(
    header: &MessageHeader,
    payload: &[u8],
    key: &str,
    value: &str,
) -> Option<Vec<u8>> {
    use protobuf::rt::{compute_raw_varint64_size, string_size, WireType};
    // KeyValue { key = 1, value = 2 } as field 5 of the Request: tag, length, entry.
    let entry = string_size(1, key) + string_size(2, value);
    let field = 1 + compute_raw_varint64_size(entry) + entry;
    let length = payload.len() + usize::try_from(field).ok()?;
    if length > MESSAGE_LENGTH_MAX {
        return None;
    }
    let mut frame = Vec::with_capacity(MESSAGE_HEADER_LENGTH + length);
    frame.extend_from_slice(&(length as u32).to_be_bytes());
    frame.extend_from_slice(&header.stream_id.to_be_bytes());
    frame.push(header.type_);
    frame.push(header.flags);
    frame.extend_from_slice(payload);
    {
        let mut out = protobuf::CodedOutputStream::vec(&mut frame);
        out.write_tag(5, WireType::LengthDelimited).ok()?;
        out.write_raw_varint64(entry).ok()?;
        out.write_string(1, key).ok()?;
        out.write_string(2, value).ok()?;
        out.flush().ok()?;
    }
    (frame.len() == MESSAGE_HEADER_LENGTH + length).then_some(frame)
}

/// A request method, or a response payload, on which the tap of a test build panics: how tests
/// show that a defect in the tap never stops the forwarding.
#[cfg(test)]
pub(crate) const PANIC_FOR_TEST: &str = "PanicForTest";

/// A tap context spooling to `dir`, for the tap's and the events tap's unit tests. Its spool
/// holds 64 MiB, more than any test writes, so no test loses spans to a full spool.
#[cfg(test)]
pub(crate) fn test_context(dir: &std::path::Path) -> Arc<TapContext> {
    test_context_in(dir, None)
}

/// A [`test_context`] whose bundles live under `task_root`.
#[cfg(test)]
pub(crate) fn test_context_in(
    dir: &std::path::Path,
    task_root: Option<std::path::PathBuf>,
) -> Arc<TapContext> {
    let config = crate::spool::SpoolConfig {
        dir: dir.to_path_buf(),
        max_bytes: 64 << 20,
    };
    Arc::new(TapContext {
        sink: SpanSink::start(&config, "test").unwrap(),
        traces: TraceRegistry::new(task_root),
        shim: Arc::new(ShimLabels {
            inner: "/usr/bin/containerd-shim-runc-v2".into(),
            protocol: "plain/v2".into(),
            namespace: "fallback".into(),
        }),
        propagate: true,
        pending: PendingBudget::default(),
    })
}

/// An encoded ttrpc request (with a timeout, as containerd sends), for unit tests.
#[cfg(test)]
pub(crate) fn test_request(
    service: &str,
    method: &str,
    payload: Vec<u8>,
    meta: &[(&str, &str)],
) -> Vec<u8> {
    let mut r = ttrpc::Request::new();
    r.service = service.into();
    r.method = method.into();
    r.payload = payload;
    r.timeout_nano = 5_000_000_000;
    for (k, v) in meta {
        let mut kv = ttrpc::proto::KeyValue::new();
        kv.key = k.to_string();
        kv.value = v.to_string();
        r.metadata.push(kv);
    }
    r.write_to_bytes().unwrap()
}

/// The header of a request on stream `sid`, as the tap is given it, for unit tests.
#[cfg(test)]
pub(crate) fn test_header(sid: u32) -> MessageHeader {
    MessageHeader {
        length: 0,
        stream_id: sid,
        type_: ttrpc::proto::MESSAGE_TYPE_REQUEST,
        flags: 0,
    }
}

/// An encoded ttrpc response with status `code` (message "boom") and `payload`, for unit tests.
#[cfg(test)]
pub(crate) fn test_response(code: ttrpc::Code, payload: Vec<u8>) -> Vec<u8> {
    let mut r = ttrpc::Response::new();
    r.status = protobuf::MessageField::some(ttrpc::get_status(code, "boom"));
    r.payload = payload;
    r.write_to_bytes().unwrap()
}

#[cfg(test)]
mod tests {
    use super::*;
    use shimtrace_span::spool::read_spool;
    use std::time::Duration;
    use test_header as header;
    use test_request as request;
    use test_response as response;

    fn with_tap(test: impl FnOnce(&ConnectionTap)) -> Vec<SpanRecord> {
        let dir = tempfile::tempdir().unwrap();
        let ctx = test_context(dir.path());
        let tap = ConnectionTap::new(ctx.clone());
        test(&tap);
        drop(tap);
        let ctx = Arc::try_unwrap(ctx).ok().unwrap();
        ctx.sink.shutdown(Duration::from_secs(5));
        read_spool(dir.path()).unwrap().spans
    }

    #[test]
    fn request_and_response_make_one_span_with_ids_and_exit_code() {
        let mut wait = api::WaitRequest::new();
        wait.id = "c1".into();
        wait.exec_id = "e1".into();
        let mut done = api::WaitResponse::new();
        done.exit_status = 3;
        let spans = with_tap(|tap| {
            tap.on_request(
                &header(1),
                &request(
                    "containerd.task.v2.Task",
                    "Wait",
                    wait.write_to_bytes().unwrap(),
                    &[(NAMESPACE_METADATA, "default")],
                ),
                100,
            );
            tap.on_response(
                1,
                &response(ttrpc::Code::OK, done.write_to_bytes().unwrap()),
                250,
            );
        });
        assert_eq!(spans.len(), 1);
        let span = &spans[0];
        assert_eq!(span.name, "containerd.task.v2.Task/Wait");
        assert_eq!(
            (span.start_time_unix_nano, span.end_time_unix_nano),
            (100, 250)
        );
        assert_eq!(span.attr_str(attr::CONTAINERD_CONTAINER_ID), Some("c1"));
        assert_eq!(span.attr_str(attr::CONTAINERD_EXEC_ID), Some("e1"));
        assert_eq!(span.attr_str(attr::CONTAINERD_NAMESPACE), Some("default"));
        assert_eq!(span.attr_i64(attr::PROCESS_EXIT_CODE), Some(3));
        assert_eq!(span.attr_i64(attr::RPC_TTRPC_STATUS_CODE), Some(0));
        assert_eq!(span.attr_str(attr::RPC_SYSTEM), Some("ttrpc"));
        assert_eq!(span.status, SpanStatus::Ok);
    }

    #[test]
    fn response_before_request_and_errors_and_traceparent() {
        let mut state = api::StateRequest::new();
        state.id = "c2".into();
        let parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        let spans = with_tap(|tap| {
            tap.on_response(3, &response(ttrpc::Code::NOT_FOUND, vec![]), 90);
            tap.on_request(
                &header(3),
                &request(
                    "containerd.task.v3.Task",
                    "State",
                    state.write_to_bytes().unwrap(),
                    &[(TRACEPARENT_METADATA, parent)],
                ),
                80,
            );
        });
        assert_eq!(spans.len(), 1);
        let span = &spans[0];
        assert_eq!(
            (span.start_time_unix_nano, span.end_time_unix_nano),
            (80, 90)
        );
        assert_eq!(span.attr_i64(attr::RPC_TTRPC_STATUS_CODE), Some(5));
        assert_eq!(span.status, SpanStatus::Error("boom".into()));
        assert_eq!(span.trace_id.to_hex(), "0af7651916cd43dd8448eb211c80319c");
        assert_eq!(span.parent_span_id.unwrap().to_hex(), "b7ad6b7169203331");
        // The container's own trace stays findable.
        let own = span
            .attr_str(attr::CONTAINER_TRACE_ID)
            .expect("container trace");
        assert_ne!(own, "0af7651916cd43dd8448eb211c80319c");
        assert_eq!(span.container_trace_id().to_hex(), own);
    }

    #[test]
    fn traceparent_is_added_only_when_absent_and_names_the_span() {
        let mut state = api::StateRequest::new();
        state.id = "c3".into();
        let payload = request(
            "containerd.task.v2.Task",
            "State",
            state.write_to_bytes().unwrap(),
            &[(NAMESPACE_METADATA, "ns")],
        );
        let mut forwarded = None;
        let spans = with_tap(|tap| {
            forwarded = tap.on_request(&header(7), &payload, 1);
            tap.on_response(7, &response(ttrpc::Code::OK, vec![]), 2);
            let given = request(
                "containerd.task.v2.Task",
                "State",
                vec![],
                &[(
                    TRACEPARENT_METADATA,
                    "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
                )],
            );
            assert!(
                tap.on_request(&header(9), &given, 3).is_none(),
                "never rewrite containerd's"
            );
        });
        let frame = forwarded.expect("a traceparent was added");
        let header = MessageHeader::from(&frame[..MESSAGE_HEADER_LENGTH]);
        assert_eq!(header.stream_id, 7);
        assert_eq!(header.length as usize, frame.len() - MESSAGE_HEADER_LENGTH);
        let sent = ttrpc::Request::parse_from_bytes(&frame[MESSAGE_HEADER_LENGTH..]).unwrap();
        assert_eq!(sent.method, "State");
        assert_eq!(
            api::StateRequest::parse_from_bytes(&sent.payload)
                .unwrap()
                .id,
            "c3"
        );
        assert_eq!(
            sent.metadata[0].value, "ns",
            "containerd's metadata kept first"
        );
        let span = spans
            .iter()
            .find(|s| s.attr_str(attr::CONTAINERD_CONTAINER_ID) == Some("c3"))
            .unwrap();
        assert_eq!(
            sent.metadata[1].value,
            TraceContext::traceparent(span.trace_id, span.span_id)
        );
    }

    #[test]
    fn calls_open_at_close_are_ended_not_lost() {
        let spans = with_tap(|tap| {
            tap.on_request(
                &header(5),
                &request("containerd.task.v2.Task", "Wait", vec![], &[]),
                10,
            );
            tap.on_close(20);
        });
        assert_eq!(spans.len(), 1);
        assert_eq!(spans[0].attr_str(attr::OUTCOME), Some("connection_closed"));
        // No namespace metadata (containerd 1.6): the shim's own namespace.
        assert_eq!(
            spans[0].attr_str(attr::CONTAINERD_NAMESPACE),
            Some("fallback")
        );
        assert_eq!(spans[0].end_time_unix_nano, 20);
    }

    impl ConnectionTap {
        /// Entries waiting for their other half now.
        fn pending_len(&self) -> usize {
            self.pending.lock().map(|p| p.len()).unwrap_or(0)
        }
    }

    #[test]
    fn a_shutdown_retires_its_containers_trace_and_other_calls_do_not() {
        let dir = tempfile::tempdir().unwrap();
        let ctx = test_context(dir.path());
        let tap = ConnectionTap::new(ctx.clone());
        let traces = &ctx.traces;
        let (c1, c2) = (
            traces.lookup("default", "c1", None),
            traces.lookup("default", "c2", None),
        );
        let mut shutdown = api::ShutdownRequest::new();
        shutdown.id = "c1".into();
        let mut state = api::StateRequest::new();
        state.id = "c2".into();
        let meta = [(NAMESPACE_METADATA, "default")];
        for (sid, method, payload) in [
            (1, "Shutdown", shutdown.write_to_bytes().unwrap()),
            (3, "State", state.write_to_bytes().unwrap()),
        ] {
            let call = request("containerd.task.v2.Task", method, payload, &meta);
            tap.on_request(&header(sid), &call, 10);
            tap.on_response(sid, &response(ttrpc::Code::OK, vec![]), 20);
        }
        // Enough new containers for one generation turn.
        for i in 0..crate::generations::REMEMBERED / 2 {
            traces.lookup("default", &format!("new-{i}"), None);
        }
        assert_ne!(
            traces.lookup("default", "c1", None),
            c1,
            "retired at Shutdown"
        );
        assert_eq!(traces.lookup("default", "c2", None), c2);
    }

    #[test]
    fn unmatched_halves_stay_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let ctx = test_context(dir.path());
        let tap = ConnectionTap::new(ctx.clone());
        // Undecodable requests are not tapped; the inner shim answers each with an error.
        for i in 0..200_000u32 {
            let sid = 2 * i + 1;
            assert!(tap.on_request(&header(sid), b"\xff\xff\xff", 1).is_none());
            tap.on_response(sid, &response(ttrpc::Code::INVALID_ARGUMENT, vec![]), 2);
        }
        assert!(
            tap.pending_len() <= MAX_PENDING,
            "{} unmatched responses kept",
            tap.pending_len()
        );
        // Requests never answered (a peer that ignores them), too large to keep whole.
        const UNANSWERED: usize = 1_500;
        let mut state = api::StateRequest::new();
        state.id = "c9".into();
        state.exec_id = "x".repeat(100_000);
        let big = request(
            "containerd.task.v2.Task",
            "State",
            state.write_to_bytes().unwrap(),
            &[],
        );
        for i in 0..UNANSWERED as u32 {
            tap.on_request(&header(2 * i + 1), &big, 3);
        }
        assert!(
            tap.pending_len() <= MAX_PENDING,
            "{} unanswered requests kept",
            tap.pending_len()
        );
        let held = ctx.pending.held();
        assert!(held <= PENDING_BYTES, "{held} bytes held");
        // Whatever was let go of is a span, not a silent loss; what remains ends at close.
        tap.on_close(4);
        assert_eq!(ctx.pending.held(), 0);
        drop(tap);
        ctx.sink.shutdown(Duration::from_secs(5));
        let spans = read_spool(dir.path()).unwrap().spans;
        assert_eq!(spans.len(), UNANSWERED);
        let evicted = spans
            .iter()
            .filter(|s| s.attr_str(attr::OUTCOME) == Some(TAP_LIMIT))
            .count();
        assert!(evicted >= UNANSWERED - MAX_PENDING - MAX_EARLY, "{evicted}");
        // Reduced, the request still names the call and its container.
        for span in &spans {
            assert_eq!(span.name, "containerd.task.v2.Task/State");
            assert_eq!(span.container_id(), Some("c9"));
            assert_eq!(
                span.attr_str(attr::CONTAINERD_EXEC_ID).map(str::len),
                Some(REDUCED_FIELD)
            );
        }
    }

    #[test]
    fn create_and_kill_requests_decode() {
        let mut create = api::CreateTaskRequest::new();
        create.id = "c".into();
        create.bundle = "/b".into();
        let info = decode_task_request("Create", &create.write_to_bytes().unwrap());
        assert_eq!(info.bundle.as_deref(), Some("/b"));
        let mut kill = api::KillRequest::new();
        kill.id = "c".into();
        kill.signal = 9;
        let info = decode_task_request("Kill", &kill.write_to_bytes().unwrap());
        assert_eq!(info.signal, Some(9));
        assert_eq!(
            decode_task_request("Nope", b"\xff"),
            TaskRequestInfo::default()
        );
    }

    #[test]
    fn responses_give_pids_and_exit_codes() {
        let decode = |method: &str, payload: Vec<u8>| {
            let mut attributes = Attributes::new();
            decode_task_response(method, &payload, &mut attributes);
            let get = |key: &str| attributes.get(key).and_then(|v| v.as_i64());
            (
                get(attr::PROCESS_PID),
                get(attr::PROCESS_EXIT_CODE),
                get(attr::SHIM_PID),
            )
        };
        let mut deleted = api::DeleteResponse::new();
        (deleted.pid, deleted.exit_status) = (41, 137);
        assert_eq!(
            decode("Delete", deleted.write_to_bytes().unwrap()),
            (Some(41), Some(137), None)
        );
        let mut connected = api::ConnectResponse::new();
        (connected.task_pid, connected.shim_pid) = (7, 8);
        assert_eq!(
            decode("Connect", connected.write_to_bytes().unwrap()),
            (Some(7), None, Some(8))
        );
        assert_eq!(decode("Create", b"\xff".to_vec()), (None, None, None));
    }
}
