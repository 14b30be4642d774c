//! The events tap: the inner shim publishes task events to `$TTRPC_ADDRESS` with
//! `containerd.services.events.ttrpc.v1.Events/Forward`; the wrapper points that address at the
//! proxy, which forwards every frame to containerd's real address unchanged and records each
//! envelope as a span in the container's trace.
//!
//! An event span starts at the envelope's timestamp (when the shim created the event) and ends when
//! the proxy saw it, so its length is the publish delay; it carries one span event named after the
//! topic (`/tasks/exit`, …) with the task's ids, pid and exit status.

use std::sync::Arc;

use containerd_shim_protos::events::task;
use containerd_shim_protos::protobuf::well_known_types::any::Any;
use containerd_shim_protos::shim::events::ForwardRequest;
use protobuf::Message;

use crate::identity::Ready;
use crate::tap::{non_empty, TapContext};
use shimtrace_span::{
    attr, AttributeValue, Attributes, SpanEvent, SpanId, SpanKind, SpanRecord, SpanStatus,
    TraceContext, TraceId,
};

pub const EVENTS_SERVICE: &str = "containerd.services.events.ttrpc.v1.Events";
pub const TOPIC_ATTRIBUTE: &str = "containerd.event.topic";
/// Prefix of event span names: `event /tasks/exit`.
pub const EVENT_SPAN_PREFIX: &str = "event ";

/// What a task event says about its task.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct TaskEventInfo {
    pub container_id: Option<String>,
    pub exec_id: Option<String>,
    pub pid: Option<u32>,
    pub exit_status: Option<u32>,
}

/// Decodes the task event in an envelope by its topic; other topics give nothing.
pub fn decode_task_event(topic: &str, event: &Any) -> TaskEventInfo {
    let bytes = event.value.as_slice();
    macro_rules! decode {
        ($ty:ty, |$e:ident| $info:expr) => {
            <$ty>::parse_from_bytes(bytes)
                .map(|$e| $info)
                .unwrap_or_default()
        };
    }
    match topic {
        "/tasks/create" => decode!(task::TaskCreate, |e| TaskEventInfo {
            container_id: non_empty(&e.container_id),
            pid: Some(e.pid),
            ..Default::default()
        }),
        "/tasks/start" => decode!(task::TaskStart, |e| TaskEventInfo {
            container_id: non_empty(&e.container_id),
            pid: Some(e.pid),
            ..Default::default()
        }),
        "/tasks/exit" => decode!(task::TaskExit, |e| TaskEventInfo {
            // TaskExit.id is the exec id, or the container id for the init process.
            exec_id: non_empty(&e.id).filter(|id| *id != e.container_id),
            container_id: non_empty(&e.container_id),
            pid: Some(e.pid),
            exit_status: Some(e.exit_status),
        }),
        "/tasks/delete" => decode!(task::TaskDelete, |e| TaskEventInfo {
            exec_id: non_empty(&e.id).filter(|id| *id != e.container_id),
            container_id: non_empty(&e.container_id),
            pid: Some(e.pid),
            exit_status: Some(e.exit_status),
        }),
        "/tasks/oom" => decode!(task::TaskOOM, |e| TaskEventInfo {
            container_id: non_empty(&e.container_id),
            ..Default::default()
        }),
        "/tasks/exec-added" => decode!(task::TaskExecAdded, |e| TaskEventInfo {
            container_id: non_empty(&e.container_id),
            exec_id: non_empty(&e.exec_id),
            ..Default::default()
        }),
        "/tasks/exec-started" => decode!(task::TaskExecStarted, |e| TaskEventInfo {
            container_id: non_empty(&e.container_id),
            exec_id: non_empty(&e.exec_id),
            pid: Some(e.pid),
            ..Default::default()
        }),
        "/tasks/paused" => decode!(task::TaskPaused, |e| TaskEventInfo {
            container_id: non_empty(&e.container_id),
            ..Default::default()
        }),
        "/tasks/resumed" => decode!(task::TaskResumed, |e| TaskEventInfo {
            container_id: non_empty(&e.container_id),
            ..Default::default()
        }),
        _ => TaskEventInfo::default(),
    }
}

/// Records the events one inner-shim connection publishes.
pub struct EventTap {
    ctx: Arc<TapContext>,
}

impl EventTap {
    pub fn new(ctx: Arc<TapContext>) -> EventTap {
        EventTap { ctx }
    }

    /// A request frame (already forwarded to containerd), seen at `seen`.
    pub fn on_request(&self, payload: &[u8], seen: u64) {
        let Ok(request) = ttrpc::Request::parse_from_bytes(payload) else {
            return;
        };
        if request.service != EVENTS_SERVICE || request.method != "Forward" {
            return;
        }
        let Ok(forward) = ForwardRequest::parse_from_bytes(&request.payload) else {
            return;
        };
        let Some(envelope) = forward.envelope.as_ref() else {
            return;
        };
        let created = envelope
            .timestamp
            .as_ref()
            .map(|t| {
                (t.seconds.max(0) as u64)
                    .saturating_mul(1_000_000_000)
                    .saturating_add(t.nanos.max(0) as u64)
            })
            .unwrap_or(seen);
        let info = envelope
            .event
            .as_ref()
            .map(|event| decode_task_event(&envelope.topic, event))
            .unwrap_or_default();
        let namespace = if envelope.namespace.is_empty() {
            self.ctx.shim.namespace.clone()
        } else {
            envelope.namespace.clone()
        };
        let trace = match &info.container_id {
            Some(id) => self.ctx.traces.lookup(&namespace, id, None),
            None => TraceContext {
                trace_id: TraceId::random(),
                parent_span_id: None,
            },
        };

        let mut attributes = Attributes::new();
        let mut put = |key: &str, value: AttributeValue| {
            attributes.insert(key.to_string(), value);
        };
        put(TOPIC_ATTRIBUTE, envelope.topic.as_str().into());
        put(attr::CONTAINERD_NAMESPACE, namespace.as_str().into());
        if let Some(id) = &info.container_id {
            put(attr::CONTAINERD_CONTAINER_ID, id.as_str().into());
        }
        if let Some(exec) = &info.exec_id {
            put(attr::CONTAINERD_EXEC_ID, exec.as_str().into());
        }
        if let Some(pid) = info.pid {
            put(attr::PROCESS_PID, pid.into());
        }
        if let Some(status) = info.exit_status {
            put(attr::PROCESS_EXIT_CODE, status.into());
        }
        let event = SpanEvent {
            name: envelope.topic.clone(),
            time_unix_nano: created,
            attributes: attributes.clone(),
        };
        attributes.insert(attr::INNER.into(), self.ctx.shim.inner.as_str().into());
        attributes.insert(
            attr::RECORDER_PID.into(),
            shimtrace_span::clock::pid().into(),
        );
        let identities = self.ctx.traces.identities();
        self.ctx
            .sink
            .emit_deferred(identities.annotating(Ready(SpanRecord {
                trace_id: trace.trace_id,
                span_id: SpanId::random(),
                parent_span_id: trace.parent_span_id,
                name: format!("{EVENT_SPAN_PREFIX}{}", envelope.topic),
                kind: SpanKind::Producer,
                start_time_unix_nano: created.min(seen),
                end_time_unix_nano: seen.max(created),
                attributes,
                events: vec![event],
                status: SpanStatus::Unset,
            })));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use containerd_shim_protos::shim::event::Envelope;
    use shimtrace_span::spool::read_spool;
    use std::time::Duration;

    fn forward(topic: &str, event: impl Message, type_url: &str) -> Vec<u8> {
        let mut any = Any::new();
        any.type_url = type_url.into();
        any.value = event.write_to_bytes().unwrap();
        let mut envelope = Envelope::new();
        envelope.topic = topic.into();
        envelope.namespace = "ns1".into();
        let mut ts = protobuf::well_known_types::timestamp::Timestamp::new();
        ts.seconds = 100;
        ts.nanos = 5;
        envelope.timestamp = protobuf::MessageField::some(ts);
        envelope.event = protobuf::MessageField::some(any);
        let mut fr = ForwardRequest::new();
        fr.envelope = protobuf::MessageField::some(envelope);
        let mut request = ttrpc::Request::new();
        request.service = EVENTS_SERVICE.into();
        request.method = "Forward".into();
        request.payload = fr.write_to_bytes().unwrap();
        request.write_to_bytes().unwrap()
    }

    #[test]
    fn exit_event_becomes_a_span_with_a_topic_event() {
        let dir = tempfile::tempdir().unwrap();
        let ctx = crate::tap::test_context(dir.path());
        let tap = EventTap::new(ctx.clone());
        let mut exit = task::TaskExit::new();
        exit.container_id = "c1".into();
        exit.id = "c1".into();
        exit.pid = 42;
        exit.exit_status = 3;
        tap.on_request(
            &forward("/tasks/exit", exit, "containerd.events.TaskExit"),
            100_000_000_900,
        );
        tap.on_request(b"not a request", 1);
        ctx.sink.shutdown(Duration::from_secs(5));
        let spans = read_spool(dir.path()).unwrap().spans;
        assert_eq!(spans.len(), 1);
        let span = &spans[0];
        assert_eq!(span.name, "event /tasks/exit");
        assert_eq!(span.start_time_unix_nano, 100_000_000_005);
        assert_eq!(span.end_time_unix_nano, 100_000_000_900);
        assert_eq!(span.container_id(), Some("c1"));
        assert_eq!(span.attr_i64(attr::PROCESS_EXIT_CODE), Some(3));
        assert_eq!(span.attr_str(attr::CONTAINERD_EXEC_ID), None);
        assert_eq!(span.attr_str(attr::CONTAINERD_NAMESPACE), Some("ns1"));
        assert_eq!(span.events.len(), 1);
        assert_eq!(span.events[0].name, "/tasks/exit");
        assert_eq!(span.events[0].time_unix_nano, 100_000_000_005);
    }

    #[test]
    fn exec_events_carry_the_exec_id() {
        let mut started = task::TaskExecStarted::new();
        started.container_id = "c".into();
        started.exec_id = "e".into();
        started.pid = 7;
        let mut any = Any::new();
        any.value = started.write_to_bytes().unwrap();
        let info = decode_task_event("/tasks/exec-started", &any);
        assert_eq!(info.exec_id.as_deref(), Some("e"));
        assert_eq!(info.pid, Some(7));
        assert_eq!(
            decode_task_event("/unknown", &any),
            TaskEventInfo::default()
        );
    }
}
