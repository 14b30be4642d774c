//! Kubernetes pods: a pod's sandbox trace and its containers' traces, tied together by the sandbox
//! id CRI puts on every span (`shimtrace.k8s.sandbox_id`), shown as one tree and timed the way a
//! pod starts: the sandbox first, then the kubelet creates and starts each container.
//!
//! Pod startup runs from the sandbox's first span to the moment every container runs (the end of
//! the last container's init `Start`), split at the moment the sandbox runs: sandbox time before,
//! container time after (which includes the kubelet's own work between the calls, an image pull
//! among it). A container restarted later does not count: per container name, its first run does.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use crate::stats::Stats;
use crate::timeline::{self, fmt_ms, for_terminal};
use crate::trace::Trace;

/// One pod: its sandbox (absent when its spans were not kept) and its containers, by start.
#[derive(Debug, Clone)]
pub struct Pod<'a> {
    pub sandbox_id: String,
    pub name: Option<String>,
    pub namespace: Option<String>,
    pub uid: Option<String>,
    pub sandbox: Option<&'a Trace>,
    pub containers: Vec<&'a Trace>,
}

/// How long a pod took to start, in nanoseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct PodStartup {
    /// Sandbox's first span → every container running.
    pub total_ns: u64,
    /// Sandbox's first span → the sandbox running.
    pub sandbox_ns: u64,
    /// The sandbox running → every container running.
    pub containers_ns: u64,
    /// Containers counted (one per container name).
    pub containers: usize,
}

impl<'a> Pod<'a> {
    /// The pods among `traces`, in order of their first span; traces of no pod are left out.
    pub fn group(traces: &'a [Trace]) -> Vec<Pod<'a>> {
        let mut by_sandbox: BTreeMap<String, Pod<'a>> = BTreeMap::new();
        for trace in traces {
            let Some(member) = trace.pod() else {
                continue;
            };
            let pod = by_sandbox
                .entry(member.sandbox_id.clone())
                .or_insert_with(|| Pod {
                    sandbox_id: member.sandbox_id.clone(),
                    name: None,
                    namespace: None,
                    uid: None,
                    sandbox: None,
                    containers: Vec::new(),
                });
            pod.name = pod.name.take().or(member.pod_name);
            pod.namespace = pod.namespace.take().or(member.pod_namespace);
            pod.uid = pod.uid.take().or(member.pod_uid);
            if trace.is_sandbox() && pod.sandbox.is_none() {
                pod.sandbox = Some(trace);
            } else {
                pod.containers.push(trace);
            }
        }
        let mut pods: Vec<Pod<'a>> = by_sandbox.into_values().collect();
        for pod in &mut pods {
            pod.containers.sort_by_key(|t| (t.start(), t.trace_id));
        }
        pods.sort_by_cached_key(|p| (p.start(), p.sandbox_id.clone()));
        pods
    }

    /// The pod's traces: the sandbox, then each container.
    pub fn traces(&self) -> impl Iterator<Item = &'a Trace> + '_ {
        self.sandbox
            .into_iter()
            .chain(self.containers.iter().copied())
    }

    /// The pod's first span.
    pub fn start(&self) -> u64 {
        self.traces().map(Trace::start).min().unwrap_or(0)
    }

    /// The runtime the pod ran on (its sandbox's; else its first container's).
    pub fn runtime(&self) -> String {
        self.traces()
            .next()
            .map(Trace::runtime)
            .unwrap_or_else(|| "unknown".into())
    }

    /// The CRI runtime handler, when any of its spans names it.
    pub fn handler(&self) -> Option<&'a str> {
        self.traces().find_map(Trace::handler)
    }

    /// What the report groups the pod under: its handler when known, else its runtime.
    pub fn group_key(&self) -> String {
        match self.handler() {
            Some(handler) => format!("handler {handler} ({})", self.runtime()),
            None => self.runtime(),
        }
    }

    /// `namespace/name`, or the sandbox id when the spans name neither.
    pub fn display_name(&self) -> String {
        match (&self.namespace, &self.name) {
            (Some(ns), Some(name)) => format!("{ns}/{name}"),
            (None, Some(name)) => name.clone(),
            _ => self.sandbox_id.clone(),
        }
    }

    /// Whether `query` names this pod: its sandbox id, uid, `namespace/name` or name.
    pub fn matches(&self, query: &str) -> bool {
        query == self.sandbox_id
            || self.uid.as_deref() == Some(query)
            || self.name.as_deref() == Some(query)
            || self.display_name() == query
    }

    /// When the sandbox and every container counted for startup were running; `None` until
    /// they all ran.
    fn all_running_at(&self) -> Option<u64> {
        let runs = self.first_runs();
        if runs.is_empty() {
            return None;
        }
        let mut all_running = self.sandbox?.running_at()?;
        for container in &runs {
            all_running = all_running.max(container.running_at()?);
        }
        Some(all_running)
    }

    /// The containers counted for startup: per container name, the first to start.
    fn first_runs(&self) -> Vec<&'a Trace> {
        let mut seen = std::collections::BTreeSet::new();
        self.containers
            .iter()
            .copied()
            .filter(|t| {
                let name = t.pod().and_then(|m| m.container_name);
                name.is_none() || seen.insert(name)
            })
            .collect()
    }

    /// How long the pod took to start; `None` until the sandbox and every container ran.
    pub fn startup(&self) -> Option<PodStartup> {
        let sandbox = self.sandbox?;
        let begin = sandbox.start();
        let sandbox_ready = sandbox.running_at()?;
        let all_running = self.all_running_at()?;
        Some(PodStartup {
            total_ns: all_running.saturating_sub(begin),
            sandbox_ns: sandbox_ready.saturating_sub(begin),
            containers_ns: all_running.saturating_sub(sandbox_ready),
            containers: self.first_runs().len(),
        })
    }
}

/// Pod startup statistics of one handler (or runtime).
#[derive(Debug, Clone, Serialize)]
pub struct PodStartupReport {
    /// `handler <name> (<runtime>)`, or the runtime when no span names a handler.
    pub group: String,
    pub pods: usize,
    pub total: Stats,
    pub sandbox: Stats,
    pub containers: Stats,
}

/// Pod startup per handler (or runtime), for the pods that started completely.
pub fn startup_reports(traces: &[Trace]) -> Vec<PodStartupReport> {
    let mut by_group: BTreeMap<String, Vec<PodStartup>> = BTreeMap::new();
    for pod in Pod::group(traces) {
        if let Some(startup) = pod.startup() {
            by_group.entry(pod.group_key()).or_default().push(startup);
        }
    }
    by_group
        .into_iter()
        .filter_map(|(group, startups)| {
            let of = |f: fn(&PodStartup) -> u64| {
                let mut values: Vec<u64> = startups.iter().map(f).collect();
                Stats::of(&mut values)
            };
            Some(PodStartupReport {
                pods: startups.len(),
                total: of(|s| s.total_ns)?,
                sandbox: of(|s| s.sandbox_ns)?,
                containers: of(|s| s.containers_ns)?,
                group,
            })
        })
        .collect()
}

/// The most recent pod `query` names (see [`Pod::matches`]), and how many others it also names.
pub fn find<'p, 'a>(pods: &'p [Pod<'a>], query: &str) -> Option<(&'p Pod<'a>, usize)> {
    let matching: Vec<&Pod> = pods.iter().filter(|p| p.matches(query)).collect();
    let latest = matching.iter().max_by_key(|p| p.start()).copied()?;
    Some((latest, matching.len() - 1))
}

/// A pod as one tree on one time axis: the sandbox's spans, then each container's, each under a
/// line for its trace, with bars across `width` columns (at least [`timeline::MIN_WIDTH`], at
/// most [`timeline::MAX_WIDTH`], as the waterfall).
pub fn render_tree(pod: &Pod, width: usize) -> String {
    let width = width.clamp(timeline::MIN_WIDTH, timeline::MAX_WIDTH);
    let origin = pod.start();
    let end = pod.traces().map(Trace::end).max().unwrap_or(origin);
    let total = end.saturating_sub(origin).max(1);
    let mut out = String::new();
    // Names and ids come from the spool: escaped like every terminal view's (see `timeline`).
    let _ = write!(out, "pod {}", for_terminal(&pod.display_name()));
    if let Some(uid) = &pod.uid {
        let _ = write!(out, "  uid {}", for_terminal(uid));
    }
    let _ = write!(
        out,
        "  sandbox {}  runtime {}",
        for_terminal(&pod.sandbox_id),
        for_terminal(&pod.runtime())
    );
    if let Some(handler) = pod.handler() {
        let _ = write!(out, "  handler {}", for_terminal(handler));
    }
    out.push('\n');
    match pod.startup() {
        Some(s) => {
            let _ = writeln!(
                out,
                "  startup {}: sandbox {}, then containers {} ({} containers)",
                fmt_ms(s.total_ns),
                fmt_ms(s.sandbox_ns),
                fmt_ms(s.containers_ns),
                s.containers
            );
        }
        None => out.push_str("  startup: not every part of the pod was traced running\n"),
    }
    // (label, start, end) rows: a line per trace, then its spans one level deeper.
    let mut rows: Vec<(String, u64, u64)> = Vec::new();
    if pod.sandbox.is_none() {
        rows.push(("sandbox (no spans)".into(), origin, origin));
    }
    for trace in pod.traces() {
        let id = for_terminal(trace.container_id().unwrap_or("(none)"));
        let title = match trace.pod().and_then(|m| m.container_name) {
            _ if trace.is_sandbox() => format!("sandbox {id}"),
            Some(name) => format!("container {} ({id})", for_terminal(&name)),
            None => format!("container {id}"),
        };
        rows.push((title, trace.start(), trace.end()));
        for (span, depth) in trace.spans.iter().zip(trace.depths()) {
            rows.push((
                format!("{}{}", "  ".repeat(depth + 1), for_terminal(&span.name)),
                span.start_time_unix_nano,
                span.end_time_unix_nano,
            ));
        }
    }
    timeline::write_bars(&mut out, &rows, origin, total, width, 56);
    out
}

/// The pod's spans as `shimtrace traces --json` prints spans: the sandbox's, then each container's.
pub fn spans_json(pod: &Pod) -> serde_json::Result<String> {
    let traces: Vec<Trace> = pod.traces().cloned().collect();
    timeline::spans_json(&traces)
}

/// What went wrong finding a pod.
#[derive(Debug, thiserror::Error)]
pub enum PodError {
    #[error("no traced pod is named {query:?}; pods traced: {known} (give a pod name, namespace/name, uid or sandbox id)")]
    NotFound { query: String, known: String },
}

/// `shimtrace trace --pod QUERY`: the pod `query` names, as a tree (or its spans as JSON).
pub fn show(traces: &[Trace], query: &str, json: bool, width: usize) -> Result<String, PodError> {
    let pods = Pod::group(traces);
    let Some((pod, others)) = find(&pods, query) else {
        let mut known: Vec<String> = pods
            .iter()
            .map(|p| for_terminal(&p.display_name()).into_owned())
            .collect();
        known.dedup();
        let known = if known.is_empty() {
            "none (no span carries k8s.* attributes: are the pods run through CRI with a traced handler?)".to_string()
        } else {
            known.join(", ")
        };
        return Err(PodError::NotFound {
            query: query.to_string(),
            known,
        });
    };
    if json {
        return Ok(spans_json(pod).unwrap_or_else(|_| "[]".into()));
    }
    let mut text = render_tree(pod, width);
    if others > 0 {
        let _ = writeln!(
            text,
            "({others} earlier pod(s) also match {query:?}; give the uid or sandbox id to pick one)"
        );
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::synth::{default_profiles, pod_spans};
    use shimtrace_span::attr;

    const START: u64 = 1_767_225_600_000_000_000;

    fn pod_traces(pods: usize, containers: usize) -> Vec<Trace> {
        let profiles = default_profiles();
        let mut spans = Vec::new();
        for pod in 0..pods {
            let first = pod * (1 + containers);
            let (s, _) = pod_spans(
                pod,
                first,
                &profiles[pod % profiles.len()],
                containers,
                START + pod as u64 * 2_000_000_000,
                7,
            );
            spans.extend(s);
        }
        Trace::group(spans)
    }

    #[test]
    fn pods_group_their_sandbox_and_containers() {
        let traces = pod_traces(3, 2);
        assert_eq!(traces.len(), 9);
        let pods = Pod::group(&traces);
        assert_eq!(pods.len(), 3);
        for (i, pod) in pods.iter().enumerate() {
            let sandbox = pod.sandbox.expect("sandbox trace");
            assert!(sandbox.is_sandbox());
            assert_eq!(sandbox.container_id(), Some(pod.sandbox_id.as_str()));
            assert_eq!(pod.containers.len(), 2);
            assert_eq!(
                pod.name.as_deref(),
                Some(format!("synth-pod-{i:04}").as_str())
            );
            assert_eq!(pod.namespace.as_deref(), Some("synth"));
            assert!(pod.containers.iter().all(|c| !c.is_sandbox()));
            // The sandbox runs before any container starts.
            let ready = sandbox.running_at().unwrap();
            assert!(pod.containers.iter().all(|c| c.start() > ready));
            let startup = pod.startup().expect("complete pod");
            assert_eq!(startup.total_ns, startup.sandbox_ns + startup.containers_ns);
            assert_eq!(startup.containers, 2);
            let last = pod.containers[1].running_at().unwrap();
            assert_eq!(startup.total_ns, last - sandbox.start());
            assert_eq!(startup.sandbox_ns, ready - sandbox.start());
        }
        // Three pods over the three default runtimes.
        let runtimes: Vec<String> = pods.iter().map(Pod::runtime).collect();
        assert_eq!(runtimes, ["runc", "runsc", "crun"]);
    }

    #[test]
    fn startup_waits_for_every_part_and_counts_a_restart_once() {
        let traces = pod_traces(1, 2);
        // Without the last container's Start, the pod has not started.
        let mut spans: Vec<_> = traces.iter().flat_map(|t| t.spans.clone()).collect();
        let last_id = Pod::group(&traces)[0].containers[1]
            .container_id()
            .unwrap()
            .to_string();
        spans.retain(|s| {
            !(s.container_id() == Some(last_id.as_str()) && s.name.ends_with("/Start"))
        });
        let partial = Trace::group(spans);
        assert_eq!(Pod::group(&partial)[0].startup(), None);
        // A restart of app-0 later does not stretch the startup.
        let (restart, _) = pod_spans(0, 10, &default_profiles()[0], 1, START + 60_000_000_000, 9);
        let mut restarted: Vec<_> = restart
            .into_iter()
            .filter(|s| s.attr_str(attr::K8S_ROLE) == Some("container"))
            .collect();
        let sandbox_id = Pod::group(&traces)[0].sandbox_id.clone();
        for s in &mut restarted {
            s.attributes
                .insert(attr::K8S_SANDBOX_ID.into(), sandbox_id.as_str().into());
        }
        let mut spans: Vec<_> = traces.iter().flat_map(|t| t.spans.clone()).collect();
        let before = Pod::group(&traces)[0].startup().unwrap();
        spans.extend(restarted);
        let traces = Trace::group(spans);
        let pods = Pod::group(&traces);
        assert_eq!(pods[0].containers.len(), 3);
        assert_eq!(pods[0].startup(), Some(before));
    }

    #[test]
    fn the_report_section_gives_startup_per_runtime_or_handler() {
        let mut traces = pod_traces(6, 2);
        // Two of the runc pods name their handler.
        for trace in traces.iter_mut() {
            let pod = trace.pod().unwrap();
            if pod.pod_name.as_deref() == Some("synth-pod-0003") {
                for s in &mut trace.spans {
                    s.attributes
                        .insert(attr::RUNTIME_HANDLER.into(), "traced-runc".into());
                }
            }
        }
        let reports = startup_reports(&traces);
        let groups: Vec<(&str, usize)> =
            reports.iter().map(|r| (r.group.as_str(), r.pods)).collect();
        assert_eq!(
            groups,
            [
                ("crun", 2),
                ("handler traced-runc (runc)", 1),
                ("runc", 1),
                ("runsc", 2)
            ]
        );
        // gVisor's sandbox is slower to start than runc's (the synthetic profiles say so).
        let of = |g: &str| reports.iter().find(|r| r.group == g).unwrap();
        assert!(of("runsc").sandbox.p50_ns > of("runc").sandbox.p50_ns);
        let section = crate::report::pod_startup_section(&traces).unwrap();
        let (header, rows) = section.table.unwrap();
        assert_eq!(header.len(), rows[0].len());
        assert_eq!(rows.len(), 4 * 3);
        assert_eq!(section.data.as_array().unwrap().len(), 4);
        assert!(
            crate::report::pod_startup_section(&crate::trace::Trace::group(Vec::new())).is_none()
        );
    }

    /// The whole report from a spool: runc and gVisor (both behind the runc shim) are separate
    /// runtimes, sandboxes are apart from containers, and pod startup leads the sections.
    #[test]
    fn the_report_separates_runtimes_and_sandboxes_and_times_pods() {
        let dir = tempfile::tempdir().unwrap();
        let config = crate::synth::SynthConfig {
            containers: 6,
            pods: 3,
            containers_per_pod: 2,
            ..Default::default()
        };
        let (summary, walls) = crate::synth::generate_spool(dir.path(), &config, |_| {}).unwrap();
        assert_eq!(summary.containers, 6 + 3 * 3);
        let spans = crate::source::load_spool(dir.path()).unwrap().spans;
        let report = crate::report::build_report(spans, 0, &walls, vec![]);
        let groups: Vec<(&str, usize)> = report
            .runtimes
            .iter()
            .map(|r| (r.runtime.as_str(), r.traces))
            .collect();
        assert_eq!(
            groups,
            [
                ("crun", 2 + 2),
                ("crun (pod sandboxes)", 1),
                ("runc", 2 + 2),
                ("runc (pod sandboxes)", 1),
                ("runsc", 2 + 2),
                ("runsc (pod sandboxes)", 1)
            ]
        );
        assert_eq!(report.sections[0].title, "Pod startup");
        let data = report.sections[0].data.as_array().unwrap();
        let groups: Vec<&str> = data.iter().map(|g| g["group"].as_str().unwrap()).collect();
        assert_eq!(groups, ["crun", "runc", "runsc"]);
    }

    #[test]
    fn a_huge_width_is_clamped_like_the_waterfall() {
        let traces = pod_traces(1, 1);
        for width in [65_536, 99_999_999_999, usize::MAX] {
            let text = show(&traces, "synth-pod-0000", false, width).unwrap();
            let longest = text.lines().map(|l| l.chars().count()).max().unwrap();
            assert!(longest <= timeline::MAX_WIDTH + 100, "{longest} columns");
        }
    }

    #[test]
    fn control_characters_from_spans_are_escaped_in_the_tree() {
        let mut traces = pod_traces(1, 1);
        for trace in &mut traces {
            for s in &mut trace.spans {
                let container = s.attr_str(attr::K8S_ROLE) == Some("container");
                let a = &mut s.attributes;
                a.insert(attr::K8S_POD_UID.into(), "uid\u{1b}]0;t\u{7}".into());
                a.insert(attr::RUNTIME_HANDLER.into(), "h\u{9b}2J".into());
                a.insert(attr::CONTAINER_RUNTIME_NAME.into(), "r\r".into());
                if container {
                    a.insert(attr::K8S_CONTAINER_NAME.into(), "app\u{202e}x".into());
                }
            }
            trace.spans[0].name = "shim.start\u{1b}[2J".into();
        }
        let text = show(&traces, "synth-pod-0000", false, 40).unwrap();
        assert!(
            !text
                .chars()
                .any(|c| c.is_control() && c != '\n' || c == '\u{202e}'),
            "{text:?}"
        );
        assert!(text.contains("uid uid\\u{1b}]0;t\\u{7}"), "{text}");
        assert!(text.contains("container app\\u{202e}x ("), "{text}");
        assert!(text.contains("shim.start\\u{1b}[2J"), "{text}");
    }

    #[test]
    fn a_pod_shows_as_one_tree_and_is_found_by_any_of_its_names() {
        let traces = pod_traces(2, 2);
        let pods = Pod::group(&traces);
        let pod = &pods[1];
        for query in [
            "synth-pod-0001",
            "synth/synth-pod-0001",
            pod.sandbox_id.as_str(),
            pod.uid.as_deref().unwrap(),
        ] {
            let (found, others) = find(&pods, query).unwrap_or_else(|| panic!("{query}"));
            assert_eq!(found.sandbox_id, pod.sandbox_id);
            assert_eq!(others, 0);
        }
        let text = show(&traces, "synth-pod-0001", false, 40).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert!(
            lines[0].starts_with("pod synth/synth-pod-0001  uid "),
            "{text}"
        );
        assert!(lines[0].contains("runtime runsc"), "{text}");
        assert!(lines[1].contains("startup"), "{text}");
        let order: Vec<usize> = ["sandbox synth-", "container app-0 (", "container app-1 ("]
            .iter()
            .map(|t| lines.iter().position(|l| l.starts_with(t)).expect(t))
            .collect();
        assert!(order.windows(2).all(|w| w[0] < w[1]), "{text}");
        // Every span of the pod is a line, one level under its trace.
        let spans: usize = pod.traces().map(|t| t.spans.len()).sum();
        let span_lines = lines
            .iter()
            .filter(|l| l.starts_with("  ") && l.contains('|'));
        assert_eq!(span_lines.count(), spans, "{text}");
        let json: serde_json::Value =
            serde_json::from_str(&show(&traces, pod.sandbox_id.as_str(), true, 40).unwrap())
                .unwrap();
        assert_eq!(json.as_array().unwrap().len(), spans);
        let err = show(&traces, "nope", false, 40).unwrap_err().to_string();
        assert!(
            err.contains("synth/synth-pod-0000, synth/synth-pod-0001"),
            "{err}"
        );
    }
}
