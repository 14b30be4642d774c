//! Groups spans into per-container traces and derives each trace's cold-start phases.
//!
//! A container's spans share one trace id and hang under its `shim.start` span; the phases follow
//! ARCHITECTURE.md "Cold start, as the report shows it".

use std::collections::BTreeMap;

use serde::Serialize;
use shimtrace_span::{attr, names, SpanId, SpanRecord, SpanStatus, TraceId};

/// Span events named after containerd task topics (added by the proxy's events tap).
pub const EXIT_EVENT: &str = "/tasks/exit";

/// Optional attribute carrying the inner runtime's options (e.g. a runc `BinaryName`); spools
/// from before `container.runtime.name` are grouped by it.
pub const RUNTIME_OPTIONS_ATTR: &str = "shimtrace.runtime.options";

/// All spans of one trace, sorted by start time.
#[derive(Debug, Clone)]
pub struct Trace {
    pub trace_id: TraceId,
    pub spans: Vec<SpanRecord>,
}

/// One cold-start phase of a container, in the order the report shows them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// containerd exec of the wrapper → inner `start` returned and the proxy is up (`shim.start`).
    WrapperStart,
    /// `Task/Create` of the init process.
    Create,
    /// `Task/Start` of the init process.
    Start,
    /// End of `Start` → first exit event of the init process (or `Wait` returning, or `Delete`).
    ToExit,
    /// `Task/Delete` of the init process.
    Delete,
    /// End of `Delete` → last of `Shutdown`, `shim.delete`, `inner.delete` ending.
    Teardown,
}

impl Phase {
    pub const ALL: [Phase; 6] = [
        Phase::WrapperStart,
        Phase::Create,
        Phase::Start,
        Phase::ToExit,
        Phase::Delete,
        Phase::Teardown,
    ];

    /// The machine name used in JSON and metrics.
    pub fn key(self) -> &'static str {
        match self {
            Phase::WrapperStart => "wrapper_start",
            Phase::Create => "create",
            Phase::Start => "start",
            Phase::ToExit => "to_exit",
            Phase::Delete => "delete",
            Phase::Teardown => "teardown",
        }
    }

    /// A person's name for the phase.
    pub fn label(self) -> &'static str {
        match self {
            Phase::WrapperStart => "wrapper start",
            Phase::Create => "Create",
            Phase::Start => "Start",
            Phase::ToExit => "to first exit",
            Phase::Delete => "Delete",
            Phase::Teardown => "teardown",
        }
    }
}

/// A phase as an interval of unix nanoseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct PhaseSpan {
    pub phase: Phase,
    pub start_unix_nano: u64,
    pub end_unix_nano: u64,
}

impl PhaseSpan {
    pub fn duration_nanos(&self) -> u64 {
        self.end_unix_nano.saturating_sub(self.start_unix_nano)
    }
}

/// What a trace amounts to: one line of `shimtrace traces --summary`.
#[derive(Debug, Clone, Serialize)]
pub struct TraceSummary {
    pub trace_id: TraceId,
    pub container_id: Option<String>,
    pub namespace: Option<String>,
    pub runtime: String,
    pub protocol: Option<String>,
    pub start_time_unix_nano: u64,
    pub end_time_unix_nano: u64,
    pub span_count: usize,
    pub status: String,
    pub exit_code: Option<i64>,
    /// Phase durations in nanoseconds, keyed by [`Phase::key`]; absent phases are left out.
    pub phases: BTreeMap<&'static str, u64>,
    /// The pod this container belongs to, under Kubernetes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pod: Option<PodMember>,
}

/// A container's place in its pod, from the `k8s.*` attributes of its spans.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PodMember {
    /// The pod's sandbox id (the sandbox's own container id).
    pub sandbox_id: String,
    /// `sandbox` or `container`.
    pub role: Option<String>,
    pub pod_name: Option<String>,
    pub pod_namespace: Option<String>,
    pub pod_uid: Option<String>,
    pub container_name: Option<String>,
}

/// The name of a proxied task call, without its service (`Create` for `containerd.task.v3.Task/Create`).
pub fn task_method(span: &SpanRecord) -> Option<&str> {
    let (service, method) = span.name.rsplit_once('/')?;
    service.ends_with(".Task").then_some(method)
}

impl Trace {
    /// Groups spans by trace id; traces come out ordered by their first span's start.
    pub fn group(spans: impl IntoIterator<Item = SpanRecord>) -> Vec<Trace> {
        let mut by_trace: BTreeMap<TraceId, Vec<SpanRecord>> = BTreeMap::new();
        for span in spans {
            // Spans that joined containerd's trace still belong with their container's.
            by_trace
                .entry(span.container_trace_id())
                .or_default()
                .push(span);
        }
        let mut traces: Vec<Trace> = by_trace
            .into_iter()
            .map(|(trace_id, mut spans)| {
                spans.sort_by(|a, b| {
                    (
                        a.start_time_unix_nano,
                        std::cmp::Reverse(a.end_time_unix_nano),
                        &a.name,
                    )
                        .cmp(&(
                            b.start_time_unix_nano,
                            std::cmp::Reverse(b.end_time_unix_nano),
                            &b.name,
                        ))
                });
                Trace { trace_id, spans }
            })
            .collect();
        traces.sort_by_cached_key(|t| (t.start(), t.trace_id));
        traces
    }

    pub fn start(&self) -> u64 {
        self.spans
            .iter()
            .map(|s| s.start_time_unix_nano)
            .min()
            .unwrap_or(0)
    }

    pub fn end(&self) -> u64 {
        self.spans
            .iter()
            .map(|s| s.end_time_unix_nano)
            .max()
            .unwrap_or(0)
    }

    fn first_attr_str(&self, key: &str) -> Option<&str> {
        self.spans.iter().find_map(|s| s.attr_str(key))
    }

    /// The container this trace belongs to: the id on its root span, else on any span.
    pub fn container_id(&self) -> Option<&str> {
        self.root()
            .and_then(SpanRecord::container_id)
            .or_else(|| self.spans.iter().find_map(SpanRecord::container_id))
    }

    pub fn namespace(&self) -> Option<&str> {
        self.first_attr_str(attr::CONTAINERD_NAMESPACE)
    }

    /// The runtime that ran this container: `container.runtime.name` (runc, runsc, crun, kata…,
    /// whichever shim it ran behind). Spans recorded before shimtrace wrote that name fall back to
    /// the inner shim binary, plus its options when a span names them. What the report and the
    /// metrics group by.
    pub fn runtime(&self) -> String {
        if let Some(name) = self.first_attr_str(attr::CONTAINER_RUNTIME_NAME) {
            return name.to_string();
        }
        let inner = self.first_attr_str(attr::INNER).unwrap_or("unknown");
        match self.first_attr_str(RUNTIME_OPTIONS_ATTR) {
            Some(options) if !options.is_empty() => format!("{inner} ({options})"),
            _ => inner.to_string(),
        }
    }

    /// The CRI runtime handler, when the spans name it.
    pub fn handler(&self) -> Option<&str> {
        self.first_attr_str(attr::RUNTIME_HANDLER)
    }

    /// What the report groups this trace under: its runtime, with a pod's sandboxes apart from
    /// the containers that do the work (a sandbox's start is the pod's overhead, not a workload's).
    pub fn report_group(&self) -> String {
        let runtime = self.runtime();
        if self.is_sandbox() {
            format!("{runtime} (pod sandboxes)")
        } else {
            runtime
        }
    }

    /// [`attr::K8S_ROLE_SANDBOX`] for a pod's sandbox (pause) container, else [`attr::K8S_ROLE_CONTAINER`].
    pub fn role(&self) -> &'static str {
        if self.is_sandbox() {
            attr::K8S_ROLE_SANDBOX
        } else {
            attr::K8S_ROLE_CONTAINER
        }
    }

    /// Whether this is a pod's sandbox (pause) container.
    pub fn is_sandbox(&self) -> bool {
        self.first_attr_str(attr::K8S_ROLE) == Some(attr::K8S_ROLE_SANDBOX)
    }

    /// The pod this container belongs to, when its spans name one.
    pub fn pod(&self) -> Option<PodMember> {
        let get = |key| self.first_attr_str(key).map(str::to_string);
        Some(PodMember {
            sandbox_id: get(attr::K8S_SANDBOX_ID)?,
            role: get(attr::K8S_ROLE),
            pod_name: get(attr::K8S_POD_NAME),
            pod_namespace: get(attr::K8S_NAMESPACE_NAME),
            pod_uid: get(attr::K8S_POD_UID),
            container_name: get(attr::K8S_CONTAINER_NAME),
        })
    }

    /// When the init process was running: the end of its first `Start` call that did not fail
    /// (a failed `Start` leaves nothing running).
    pub fn running_at(&self) -> Option<u64> {
        self.start_that_worked().map(|s| s.end_time_unix_nano)
    }

    /// The init process's first `Start` call that did not fail.
    fn start_that_worked(&self) -> Option<&SpanRecord> {
        self.init_calls("Start")
            .find(|s| !matches!(s.status, SpanStatus::Error(_)))
    }

    /// The `shim.start` span, else the earliest span without a parent in this trace.
    pub fn root(&self) -> Option<&SpanRecord> {
        self.spans
            .iter()
            .find(|s| s.name == names::WRAPPER_START)
            .or_else(|| {
                self.spans.iter().find(|s| match s.parent_span_id {
                    None => true,
                    Some(parent) => !self.spans.iter().any(|p| p.span_id == parent),
                })
            })
    }

    /// Nesting depth of each span (0 for spans whose parent is not in the trace), in span order.
    pub fn depths(&self) -> Vec<usize> {
        let index: BTreeMap<SpanId, usize> = self
            .spans
            .iter()
            .enumerate()
            .map(|(i, s)| (s.span_id, i))
            .collect();
        self.spans
            .iter()
            .map(|span| {
                let mut depth = 0;
                let mut current = span.parent_span_id;
                // Bounded walk: a malformed spool could contain a parent cycle.
                while let Some(parent) = current {
                    match index.get(&parent) {
                        Some(&i) if depth < self.spans.len() => {
                            depth += 1;
                            current = self.spans[i].parent_span_id;
                        }
                        _ => break,
                    }
                }
                depth
            })
            .collect()
    }

    /// The init process's task call named `method` (a call without an exec id, or with the
    /// container's own id as exec id), first by start time.
    fn init_call<'t>(&'t self, method: &'t str) -> Option<&'t SpanRecord> {
        self.init_calls(method).next()
    }

    /// The init process's task calls named `method`, by start time.
    fn init_calls<'t>(&'t self, method: &'t str) -> impl Iterator<Item = &'t SpanRecord> + 't {
        let container = self.container_id();
        self.spans.iter().filter(move |s| {
            task_method(s) == Some(method)
                && match s.attr_str(attr::CONTAINERD_EXEC_ID) {
                    None | Some("") => true,
                    Some(exec) => Some(exec) == container,
                }
        })
    }

    /// When the init process was first reported exited: the earliest `/tasks/exit` event for it.
    pub fn first_exit_event(&self) -> Option<u64> {
        let container = self.container_id();
        self.spans
            .iter()
            .flat_map(|s| s.events.iter())
            .filter(|e| e.name == EXIT_EVENT)
            .filter(|e| {
                let exec = e
                    .attributes
                    .get(attr::CONTAINERD_EXEC_ID)
                    .and_then(|v| v.as_str())
                    .filter(|v| !v.is_empty());
                exec.is_none() || exec == container
            })
            .map(|e| e.time_unix_nano)
            .min()
    }

    /// Whether spans still to come could change `phase` as [`Trace::phases`] derives it: a start
    /// that failed (a later one may work), to-exit without its exit event (it ends at `Wait` or
    /// `Delete` until the event arrives) or from a start that failed, delete (a retried `Delete`
    /// that ended first may be followed by the earlier one) and teardown (each `Shutdown` or
    /// `delete` extends it).
    pub fn may_change(&self, phase: Phase) -> bool {
        match phase {
            Phase::WrapperStart | Phase::Create => false,
            Phase::Start => self.start_that_worked().is_none(),
            Phase::ToExit => {
                self.first_exit_event().is_none() || self.start_that_worked().is_none()
            }
            Phase::Delete | Phase::Teardown => true,
        }
    }

    /// The cold-start phases this trace has spans for, in phase order.
    pub fn phases(&self) -> Vec<PhaseSpan> {
        let mut phases = Vec::new();
        let mut push = |phase, start: u64, end: u64| {
            if end >= start {
                phases.push(PhaseSpan {
                    phase,
                    start_unix_nano: start,
                    end_unix_nano: end,
                })
            }
        };
        if let Some(s) = self.spans.iter().find(|s| s.name == names::WRAPPER_START) {
            push(
                Phase::WrapperStart,
                s.start_time_unix_nano,
                s.end_time_unix_nano,
            );
        }
        if let Some(s) = self.init_call("Create") {
            push(Phase::Create, s.start_time_unix_nano, s.end_time_unix_nano);
        }
        // The Start that ran the process, as `running_at` and the cold start take it; a failed
        // one only when no later one worked.
        let start = self.start_that_worked().or_else(|| self.init_call("Start"));
        if let Some(s) = start {
            push(Phase::Start, s.start_time_unix_nano, s.end_time_unix_nano);
        }
        let delete = self.init_call("Delete");
        if let Some(s) = start {
            let exit = self
                .first_exit_event()
                // A `Wait` the proxy ended unanswered (containerd restarted) did not return.
                .or_else(|| {
                    self.init_calls("Wait")
                        .find(|w| w.attr_str(attr::OUTCOME).is_none())
                        .map(|w| w.end_time_unix_nano)
                })
                .or_else(|| delete.map(|d| d.start_time_unix_nano));
            if let Some(exit) = exit {
                push(Phase::ToExit, s.end_time_unix_nano, exit);
            }
        }
        if let Some(d) = delete {
            push(Phase::Delete, d.start_time_unix_nano, d.end_time_unix_nano);
        }
        let teardown_end = self
            .spans
            .iter()
            .filter(|s| {
                task_method(s) == Some("Shutdown")
                    || s.name == names::WRAPPER_DELETE
                    || s.name == names::INNER_DELETE
            })
            .map(|s| (s.start_time_unix_nano, s.end_time_unix_nano))
            .fold(None, |acc: Option<(u64, u64)>, (s, e)| match acc {
                None => Some((s, e)),
                Some((s0, e0)) => Some((s0.min(s), e0.max(e))),
            });
        if let Some((first_start, last_end)) = teardown_end {
            let from = delete.map(|d| d.end_time_unix_nano).unwrap_or(first_start);
            push(Phase::Teardown, from.min(last_end), last_end);
        }
        phases
    }

    /// The exit code of the init process, when a span recorded it.
    pub fn exit_code(&self) -> Option<i64> {
        ["Delete", "Wait"]
            .iter()
            .filter_map(|m| self.init_call(m))
            .find_map(|s| s.attr_i64(attr::PROCESS_EXIT_CODE))
    }

    /// `error` if a span failed, `exited` once the init process was deleted, else `running`.
    /// Once `Delete` succeeded, a failing wrapper `delete` (containerd's clean-up of a shim that
    /// already removed the container) does not make the container's run an error.
    pub fn status(&self) -> &'static str {
        let deleted = self
            .init_call("Delete")
            .is_some_and(|d| !matches!(d.status, SpanStatus::Error(_)));
        let cleanup =
            |s: &SpanRecord| s.name == names::WRAPPER_DELETE || s.name == names::INNER_DELETE;
        if self
            .spans
            .iter()
            .any(|s| matches!(s.status, SpanStatus::Error(_)) && !(deleted && cleanup(s)))
        {
            "error"
        } else if self.init_call("Delete").is_some() {
            "exited"
        } else {
            "running"
        }
    }

    pub fn summary(&self) -> TraceSummary {
        TraceSummary {
            trace_id: self.trace_id,
            container_id: self.container_id().map(str::to_string),
            namespace: self.namespace().map(str::to_string),
            runtime: self.runtime(),
            protocol: self.first_attr_str(attr::PROTOCOL).map(str::to_string),
            start_time_unix_nano: self.start(),
            end_time_unix_nano: self.end(),
            span_count: self.spans.len(),
            status: self.status().to_string(),
            exit_code: self.exit_code(),
            phases: self
                .phases()
                .iter()
                .map(|p| (p.phase.key(), p.duration_nanos()))
                .collect(),
            pod: self.pod(),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use shimtrace_span::{Attributes, SpanEvent, SpanKind};

    /// A span of `trace` named `name` over [start, end] ms from 1e18 ns, under `parent`.
    pub(crate) fn span_at(
        trace: TraceId,
        id: u64,
        parent: Option<u64>,
        name: &str,
        start_ms: u64,
        end_ms: u64,
        container: &str,
    ) -> SpanRecord {
        let mut attributes = Attributes::new();
        attributes.insert(attr::CONTAINERD_CONTAINER_ID.into(), container.into());
        attributes.insert(attr::CONTAINERD_NAMESPACE.into(), "default".into());
        SpanRecord {
            trace_id: trace,
            span_id: SpanId(id.to_be_bytes()),
            parent_span_id: parent.map(|p| SpanId(p.to_be_bytes())),
            name: name.into(),
            kind: SpanKind::Server,
            start_time_unix_nano: 1_000_000_000_000_000_000 + start_ms * 1_000_000,
            end_time_unix_nano: 1_000_000_000_000_000_000 + end_ms * 1_000_000,
            attributes,
            events: vec![],
            status: SpanStatus::Ok,
        }
    }

    pub(crate) fn container_trace(trace: TraceId, container: &str) -> Vec<SpanRecord> {
        let mut root = span_at(trace, 1, None, names::WRAPPER_START, 0, 30, container);
        root.attributes.insert(
            attr::INNER.into(),
            "/usr/bin/containerd-shim-runc-v2".into(),
        );
        let mut delete = span_at(
            trace,
            6,
            Some(1),
            "containerd.task.v2.Task/Delete",
            200,
            210,
            container,
        );
        delete
            .attributes
            .insert(attr::PROCESS_EXIT_CODE.into(), 3i64.into());
        let mut wait = span_at(
            trace,
            5,
            Some(1),
            "containerd.task.v2.Task/Wait",
            100,
            190,
            container,
        );
        wait.events.push(SpanEvent {
            name: EXIT_EVENT.into(),
            time_unix_nano: 1_000_000_000_000_000_000 + 180 * 1_000_000,
            attributes: Default::default(),
        });
        vec![
            span_at(trace, 2, Some(1), names::INNER_START, 1, 20, container),
            root,
            span_at(
                trace,
                3,
                Some(1),
                "containerd.task.v2.Task/Create",
                40,
                90,
                container,
            ),
            span_at(
                trace,
                4,
                Some(1),
                "containerd.task.v2.Task/Start",
                95,
                100,
                container,
            ),
            wait,
            delete,
            span_at(
                trace,
                7,
                Some(1),
                "containerd.task.v2.Task/Shutdown",
                215,
                220,
                container,
            ),
        ]
    }

    #[test]
    fn phases_follow_the_cold_start_definition() {
        let trace = Trace::group(container_trace(TraceId([1; 16]), "c1")).remove(0);
        let got: Vec<(Phase, u64)> = trace
            .phases()
            .iter()
            .map(|p| (p.phase, p.duration_nanos() / 1_000_000))
            .collect();
        assert_eq!(
            got,
            [
                (Phase::WrapperStart, 30),
                (Phase::Create, 50),
                (Phase::Start, 5),
                (Phase::ToExit, 80),
                (Phase::Delete, 10),
                (Phase::Teardown, 10),
            ]
        );
        assert_eq!(trace.root().unwrap().name, names::WRAPPER_START);
        assert_eq!(trace.container_id(), Some("c1"));
        assert_eq!(trace.runtime(), "/usr/bin/containerd-shim-runc-v2");
        assert_eq!(trace.exit_code(), Some(3));
        assert_eq!(trace.status(), "exited");
        assert_eq!(trace.depths(), [0, 1, 1, 1, 1, 1, 1]);
    }

    /// containerd restarted while it waited: the proxy ended that `Wait` unanswered, which is no
    /// exit; to-exit ends at the exit event once it is there, at the `Delete` before that.
    #[test]
    fn a_wait_ended_unanswered_is_no_exit() {
        let mut spans = container_trace(TraceId([1; 16]), "c1");
        let wait = spans
            .iter_mut()
            .find(|s| s.name.ends_with("/Wait"))
            .unwrap();
        let event = wait.events.remove(0);
        wait.attributes
            .insert(attr::OUTCOME.into(), "connection_closed".into());
        let to_exit = |spans: &[SpanRecord]| {
            let trace = Trace::group(spans.to_vec()).remove(0);
            let to_exit = trace
                .phases()
                .into_iter()
                .find(|p| p.phase == Phase::ToExit);
            (
                to_exit.map(|p| p.duration_nanos() / 1_000_000),
                trace.may_change(Phase::ToExit),
            )
        };
        // From Start's end (100 ms) to Delete's start (200 ms), not to the cut Wait (190 ms).
        assert_eq!(to_exit(&spans), (Some(100), true));
        let wait = spans
            .iter_mut()
            .find(|s| s.name.ends_with("/Wait"))
            .unwrap();
        wait.events.push(event);
        assert_eq!(to_exit(&spans), (Some(80), false));
    }

    #[test]
    fn the_runtime_is_what_ran_the_container_not_the_shim_in_front() {
        let mut spans = container_trace(TraceId([1; 16]), "c1");
        // An old spool: the inner shim, and its options when a span names them.
        assert_eq!(
            Trace::group(spans.clone())[0].runtime(),
            "/usr/bin/containerd-shim-runc-v2"
        );
        spans[4]
            .attributes
            .insert(RUNTIME_OPTIONS_ATTR.into(), "BinaryName=runsc".into());
        assert_eq!(
            Trace::group(spans.clone())[0].runtime(),
            "/usr/bin/containerd-shim-runc-v2 (BinaryName=runsc)"
        );
        // What the shim records now wins, on whichever span it is.
        spans[6]
            .attributes
            .insert(attr::CONTAINER_RUNTIME_NAME.into(), "runsc".into());
        let trace = Trace::group(spans.clone()).remove(0);
        assert_eq!(trace.runtime(), "runsc");
        assert_eq!(trace.report_group(), "runsc");
        assert_eq!(trace.pod(), None);
        assert_eq!(trace.summary().pod, None);
        // A pod's sandbox is reported apart from the containers that do the work.
        for span in &mut spans {
            let a = &mut span.attributes;
            a.insert(attr::K8S_SANDBOX_ID.into(), "c1".into());
            a.insert(attr::K8S_ROLE.into(), attr::K8S_ROLE_SANDBOX.into());
            a.insert(attr::K8S_POD_NAME.into(), "web-1".into());
            a.insert(attr::RUNTIME_HANDLER.into(), "traced-runsc".into());
        }
        let trace = Trace::group(spans).remove(0);
        assert!(trace.is_sandbox());
        assert_eq!(trace.report_group(), "runsc (pod sandboxes)");
        assert_eq!(trace.handler(), Some("traced-runsc"));
        let pod = trace.summary().pod.expect("pod member");
        assert_eq!(pod.sandbox_id, "c1");
        assert_eq!(pod.pod_name.as_deref(), Some("web-1"));
        assert_eq!(pod.container_name, None);
        // Start ended 100 ms in.
        assert_eq!(
            trace.running_at(),
            Some(1_000_000_000_000_000_000 + 100 * 1_000_000)
        );
    }

    /// How long `trace`'s phase `phase` took.
    fn phase_nanos(trace: &Trace, phase: Phase) -> u64 {
        trace
            .phases()
            .into_iter()
            .find(|p| p.phase == phase)
            .unwrap()
            .duration_nanos()
    }

    #[test]
    fn to_exit_falls_back_to_wait_then_delete() {
        let mut spans = container_trace(TraceId([1; 16]), "c1");
        spans.iter_mut().for_each(|s| s.events.clear());
        let trace = Trace::group(spans.clone()).remove(0);
        assert_eq!(phase_nanos(&trace, Phase::ToExit), 90 * 1_000_000);
        spans.retain(|s| !s.name.ends_with("/Wait"));
        let trace = Trace::group(spans).remove(0);
        assert_eq!(phase_nanos(&trace, Phase::ToExit), 100 * 1_000_000);
    }

    /// A `Start` call of container c1's process `exec_id` (span 9, under the root), from `start_ms`
    /// to `end_ms`, through task v3 (the base trace's calls are v2).
    fn start_of(trace: TraceId, exec_id: &str, start_ms: u64, end_ms: u64) -> SpanRecord {
        let mut start = span_at(
            trace,
            9,
            Some(1),
            "containerd.task.v3.Task/Start",
            start_ms,
            end_ms,
            "c1",
        );
        start
            .attributes
            .insert(attr::CONTAINERD_EXEC_ID.into(), exec_id.into());
        start
    }

    #[test]
    fn exec_calls_do_not_count_as_init_phases() {
        let mut spans = container_trace(TraceId([1; 16]), "c1");
        spans.push(start_of(TraceId([1; 16]), "sh", 96, 300));
        let trace = Trace::group(spans).remove(0);
        assert_eq!(phase_nanos(&trace, Phase::Start), 5 * 1_000_000);
    }

    #[test]
    fn a_failed_start_is_not_running() {
        let t = TraceId([1; 16]);
        let mut spans = container_trace(t, "c1");
        let start = spans
            .iter_mut()
            .find(|s| s.name.ends_with("/Start"))
            .unwrap();
        start.status = SpanStatus::Error("OCI runtime create failed".into());
        let trace = Trace::group(spans.clone()).remove(0);
        assert_eq!(trace.running_at(), None);
        assert_eq!(crate::report::cold_start_nanos(&trace), None);
        // The call after the failed one that worked is when it ran.
        spans.push(start_of(t, "c1", 101, 104));
        let trace = Trace::group(spans).remove(0);
        let ran = 1_000_000_000_000_000_000 + 104 * 1_000_000;
        assert_eq!(trace.running_at(), Some(ran));
        assert_eq!(
            crate::report::cold_start_nanos(&trace),
            Some(ran - trace.start())
        );
        // Its phases are those of the Start that worked: 101 → 104 ms, then to the exit event.
        assert_eq!(phase_nanos(&trace, Phase::Start), 3 * 1_000_000);
        let to_exit = trace
            .phases()
            .into_iter()
            .find(|p| p.phase == Phase::ToExit)
            .unwrap();
        assert_eq!(to_exit.start_unix_nano, ran);
    }

    #[test]
    fn parent_cycles_do_not_hang() {
        let t = TraceId([2; 16]);
        let spans = vec![
            span_at(t, 1, Some(2), "a", 0, 1, "c"),
            span_at(t, 2, Some(1), "b", 0, 1, "c"),
        ];
        let trace = Trace::group(spans).remove(0);
        assert!(trace.depths().iter().all(|d| *d <= 2));
        assert_eq!(trace.status(), "running");
    }

    #[test]
    fn failed_cleanup_after_a_clean_delete_is_not_an_error() {
        let t = TraceId([1; 16]);
        let mut spans = container_trace(t, "c1");
        let mut cleanup = span_at(t, 8, Some(1), names::WRAPPER_DELETE, 230, 240, "c1");
        cleanup.status = SpanStatus::Error("no such container".into());
        spans.push(cleanup);
        assert_eq!(Trace::group(spans.clone()).remove(0).status(), "exited");
        spans[3].status = SpanStatus::Error("create failed".into());
        assert_eq!(Trace::group(spans).remove(0).status(), "error");
    }
}
