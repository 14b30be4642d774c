//! Prometheus metrics: the `/metrics` endpoint with the store's totals, this process's
//! [`Counters`], and cold-start phase histograms per runtime and role: a pod's sandboxes apart
//! from the containers that do the work, as the report keeps them. A histogram only grows: each
//! phase and pod is observed once, when final (see [`PhaseCache`]).

use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;
use std::hash::Hash;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use shimtrace_span::TraceId;

use crate::counters::Counters;
use crate::pod::PodStartup;
use crate::store::{Store, StoreError, EXPORTED_KEY};
use crate::trace::{Phase, PhaseSpan, Trace};

/// Histogram bucket bounds, seconds: cold-start phases run from microseconds to seconds.
pub const BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

#[derive(Debug, Clone, Default)]
struct Histogram {
    buckets: [u64; BUCKETS.len()],
    count: u64,
    sum_seconds: f64,
}

impl Histogram {
    fn observe(&mut self, seconds: f64) {
        for (i, le) in BUCKETS.iter().enumerate() {
            if seconds <= *le {
                self.buckets[i] += 1;
            }
        }
        self.count += 1;
        self.sum_seconds += seconds;
    }
}

/// How long a trace must stay as this collector reads it (no new span or event) before its
/// phases that later spans could still change count as they stand (see [`PhaseCache`]): the
/// spans that end a container (`Delete`, `Shutdown`, the shim's `delete`) come within seconds.
const TRACE_SETTLES_AFTER: Duration = Duration::from_secs(15);
/// How long a pod's startup must stay the same before it counts: kubelet may pull a container's
/// image before creating it, so a pod's containers can start minutes apart.
const POD_SETTLES_AFTER: Duration = Duration::from_secs(300);

/// Something waiting to settle: what it looked like when last read, and since when.
struct Waiting<S> {
    shape: S,
    since: Instant,
}

/// Phase histograms per (runtime, role, phase) and pod startup per (runtime, handler, part).
///
/// Each phase of a trace, and each pod's startup, is observed once, when spans still to come can
/// no longer change it, so a bucket never loses a count between scrapes (Prometheus would read
/// that as a counter reset). A phase that may change ([`Trace::may_change`]) waits until its
/// trace has gained no span for [`TRACE_SETTLES_AFTER`], a pod's startup until it has stayed the
/// same for [`POD_SETTLES_AFTER`], both timed by this process as it reads the store: not by the
/// spans' own times, which a lagging ingest, a shim's clock or a bad timestamp would skew. The
/// store is read again when it has new spans, or when something waiting may have settled.
#[derive(Default)]
struct PhaseCache {
    at_seq: Option<u64>,
    /// When the next trace or pod waiting to settle may have.
    next_settle: Option<Instant>,
    /// The phases already observed, per trace (bits by [`Phase::ALL`] order).
    observed: HashMap<TraceId, u8>,
    /// Traces with a phase that may still change, by their numbers of spans and events.
    waiting: HashMap<TraceId, Waiting<(usize, usize)>>,
    /// The pods whose startup was observed, by sandbox id.
    observed_pods: HashSet<String>,
    /// Pods whose startup is known but may still change.
    waiting_pods: HashMap<String, Waiting<PodStartup>>,
    histograms: BTreeMap<(String, &'static str, Phase), Histogram>,
    /// Pod startup per (runtime, handler, part).
    pods: BTreeMap<(String, String, &'static str), Histogram>,
}

/// Whether `key`, looking like `shape` at `now`, has looked so for `after` (seen so for the first
/// time: not yet); if not, `next_settle` is brought forward to when it would have.
fn has_settled<K: Hash + Eq, S: PartialEq>(
    waiting: &mut HashMap<K, Waiting<S>>,
    key: K,
    shape: S,
    now: Instant,
    after: Duration,
    next_settle: &mut Option<Instant>,
) -> bool {
    let since = match waiting.entry(key) {
        Entry::Occupied(seen) if seen.get().shape == shape => seen.get().since,
        Entry::Occupied(mut seen) => {
            seen.insert(Waiting { shape, since: now });
            now
        }
        Entry::Vacant(new) => new.insert(Waiting { shape, since: now }).since,
    };
    let at = since + after;
    if now >= at {
        return true;
    }
    *next_settle = Some(next_settle.map_or(at, |n| n.min(at)));
    false
}

impl PhaseCache {
    /// Whether the store must be read again: it has new spans, or something waiting may have
    /// settled.
    fn stale(&self, seq: u64, now: Instant) -> bool {
        self.at_seq != Some(seq) || self.next_settle.is_some_and(|at| now >= at)
    }

    /// Observes what in `traces` (the whole store, read at `now`) is final and was not observed
    /// before.
    fn observe(&mut self, traces: &[Trace], now: Instant) {
        let mut next_settle = None;
        for trace in traces {
            let seen = self.observed.get(&trace.trace_id).copied().unwrap_or(0);
            let phases: Vec<PhaseSpan> = trace
                .phases()
                .into_iter()
                .filter(|p| seen & phase_bit(p.phase) == 0)
                .collect();
            if phases.is_empty() {
                self.waiting.remove(&trace.trace_id);
                continue;
            }
            // Sandboxes apart, as the report keeps them (`Trace::report_group`).
            let (runtime, role) = (trace.runtime(), trace.role());
            let mut settled = None;
            let mut newly = 0;
            for p in &phases {
                if trace.may_change(p.phase)
                    && !*settled.get_or_insert_with(|| {
                        has_settled(
                            &mut self.waiting,
                            trace.trace_id,
                            (
                                trace.spans.len(),
                                trace.spans.iter().map(|s| s.events.len()).sum(),
                            ),
                            now,
                            TRACE_SETTLES_AFTER,
                            &mut next_settle,
                        )
                    })
                {
                    continue;
                }
                newly |= phase_bit(p.phase);
                self.histograms
                    .entry((runtime.clone(), role, p.phase))
                    .or_default()
                    .observe(p.duration_nanos() as f64 / 1e9);
            }
            if newly != 0 {
                *self.observed.entry(trace.trace_id).or_default() |= newly;
            }
            // Nothing of it waits any more (settled, or the phases that waited became final).
            if settled != Some(false) {
                self.waiting.remove(&trace.trace_id);
            }
        }
        for pod in crate::pod::Pod::group(traces) {
            if self.observed_pods.contains(&pod.sandbox_id) {
                continue;
            }
            let Some(startup) = pod.startup() else {
                continue;
            };
            if !has_settled(
                &mut self.waiting_pods,
                pod.sandbox_id.clone(),
                startup,
                now,
                POD_SETTLES_AFTER,
                &mut next_settle,
            ) {
                continue;
            }
            self.waiting_pods.remove(&pod.sandbox_id);
            self.observed_pods.insert(pod.sandbox_id.clone());
            let (runtime, handler) = (pod.runtime(), pod.handler().unwrap_or_default());
            for (part, nanos) in [
                ("total", startup.total_ns),
                ("sandbox", startup.sandbox_ns),
                ("containers", startup.containers_ns),
            ] {
                self.pods
                    .entry((runtime.clone(), handler.to_string(), part))
                    .or_default()
                    .observe(nanos as f64 / 1e9);
            }
        }
        self.next_settle = next_settle;
    }
}

/// `phase`'s bit in [`PhaseCache::observed`].
fn phase_bit(phase: Phase) -> u8 {
    match phase {
        Phase::WrapperStart => 1,
        Phase::Create => 1 << 1,
        Phase::Start => 1 << 2,
        Phase::ToExit => 1 << 3,
        Phase::Delete => 1 << 4,
        Phase::Teardown => 1 << 5,
    }
}

fn label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// One histogram's bucket, sum and count lines.
fn write_histogram(out: &mut String, name: &str, labels: &str, h: &Histogram) {
    for (le, n) in BUCKETS.iter().zip(h.buckets) {
        let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{le}\"}} {n}");
    }
    let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {}", h.count);
    let _ = writeln!(out, "{name}_sum{{{labels}}} {}", h.sum_seconds);
    let _ = writeln!(out, "{name}_count{{{labels}}} {}", h.count);
}

/// Renders the Prometheus text exposition.
pub struct MetricsRenderer {
    db: PathBuf,
    counters: Arc<Counters>,
    cache: Mutex<PhaseCache>,
}

impl MetricsRenderer {
    pub fn new(db: PathBuf, counters: Arc<Counters>) -> MetricsRenderer {
        MetricsRenderer {
            db,
            counters,
            cache: Mutex::new(PhaseCache::default()),
        }
    }

    /// The exposition text (blocking: reads the store).
    pub fn render(&self) -> Result<String, StoreError> {
        self.render_at(Instant::now())
    }

    /// [`MetricsRenderer::render`], as at `now`.
    fn render_at(&self, now: Instant) -> Result<String, StoreError> {
        let store = Store::open(&self.db)?;
        let seq = store.max_seq()?;
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if cache.stale(seq, now) {
            cache.observe(&Trace::group(store.all_spans()?), now);
            cache.at_seq = Some(seq);
        }
        let mut out = String::new();
        let mut counter = |name: &str, help: &str, value: u64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}"
            );
        };
        counter(
            "shimtrace_spans_ingested_total",
            "Spans stored (all time, from the store).",
            store.span_count()?,
        );
        counter(
            "shimtrace_spans_exported_total",
            "Spans accepted by the OTLP endpoint (all time, from the store).",
            store.meta(EXPORTED_KEY)?,
        );
        counter(
            "shimtrace_spans_dropped_total",
            "Spans the shims could not spool (all time, from the store).",
            store.dropped_total()?,
        );
        counter(
            "shimtrace_spool_malformed_lines_total",
            "Spool problems skipped by this process: malformed lines, unterminated last lines of writers that exited, and spool files that could not be read (counted at each attempt).",
            self.counters.spool_issues.load(Ordering::Relaxed),
        );
        counter(
            "shimtrace_export_failures_total",
            "Failed OTLP export attempts by this process (the endpoint failed or did not answer, or the store could not be read or updated).",
            self.counters.export_failures.load(Ordering::Relaxed),
        );
        let name = "shimtrace_cold_start_phase_seconds";
        let _ = writeln!(
            out,
            "# HELP {name} Container cold-start phase durations per runtime; role=\"sandbox\" for a pod's sandbox (pause) containers, role=\"container\" for the others. Each phase counts once, when later spans can no longer change it: delete, teardown, a failed start, and a to-exit without its exit event or after a failed start, once the container has had no new span for {} s.\n# TYPE {name} histogram",
            TRACE_SETTLES_AFTER.as_secs()
        );
        for ((runtime, role, phase), h) in &cache.histograms {
            let labels = format!(
                "runtime=\"{}\",role=\"{role}\",phase=\"{}\"",
                label(runtime),
                phase.key()
            );
            write_histogram(&mut out, name, &labels, h);
        }
        let name = "shimtrace_pod_startup_seconds";
        if !cache.pods.is_empty() {
            let _ = writeln!(
                out,
                "# HELP {name} Pod startup per runtime and CRI handler: total (sandbox start to every container running), sandbox (to the sandbox running), containers (the rest). A pod counts once its startup stayed the same for {} s: a container that starts later than that after the previous one is left out (shimtrace report counts it).\n# TYPE {name} histogram",
                POD_SETTLES_AFTER.as_secs()
            );
        }
        for ((runtime, handler, part), h) in &cache.pods {
            let labels = format!(
                "runtime=\"{}\",handler=\"{}\",part=\"{part}\"",
                label(runtime),
                label(handler)
            );
            write_histogram(&mut out, name, &labels, h);
        }
        Ok(out)
    }
}

#[derive(Debug, thiserror::Error)]
#[error(
    "cannot serve metrics on {addr}: {source} (choose a free --metrics-addr, e.g. 127.0.0.1:9464)"
)]
pub struct MetricsBindError {
    pub addr: SocketAddr,
    #[source]
    pub source: std::io::Error,
}

/// Binds `addr`; the returned future serves `GET /metrics` until `shutdown` completes.
pub async fn serve_metrics(
    addr: SocketAddr,
    renderer: Arc<MetricsRenderer>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<impl std::future::Future<Output = std::io::Result<()>>, MetricsBindError> {
    use axum::http::{header, StatusCode};
    use axum::response::IntoResponse;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| MetricsBindError { addr, source })?;
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let renderer = renderer.clone();
            async move {
                match tokio::task::spawn_blocking(move || renderer.render()).await {
                    Ok(Ok(text)) => (
                        StatusCode::OK,
                        [(
                            header::CONTENT_TYPE,
                            "text/plain; version=0.0.4; charset=utf-8",
                        )],
                        text,
                    )
                        .into_response(),
                    Ok(Err(e)) => {
                        (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response()
                    }
                    Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
                }
            }
        }),
    );
    Ok(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(shutdown)
            .await
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::tests::store_holding;
    use crate::trace::tests::container_trace;
    use shimtrace_span::{SpanRecord, TraceId};

    #[test]
    fn exposition_parses_and_histograms_count_every_trace() {
        let mut spans = container_trace(TraceId([1; 16]), "a");
        spans.extend(container_trace(TraceId([2; 16]), "b"));
        let (_dir, db, _) = store_holding("db", &spans);
        let renderer = MetricsRenderer::new(db, Arc::new(Counters::default()));
        let text = renderer.render().unwrap();
        let lines = text.lines().map(|l| Ok(l.to_string()));
        let scrape = prometheus_parse::Scrape::parse(lines).unwrap();
        let ingested = scrape
            .samples
            .iter()
            .find(|s| s.metric == "shimtrace_spans_ingested_total")
            .unwrap();
        assert!(matches!(ingested.value, prometheus_parse::Value::Counter(v) if v == 14.0));
        // The help says everything the counter counts, not only malformed lines.
        let help = &scrape.docs["shimtrace_spool_malformed_lines_total"];
        assert!(
            help.contains("exited") && help.contains("could not be read"),
            "{help}"
        );
        let create = scrape
            .samples
            .iter()
            .find(|s| {
                s.metric == "shimtrace_cold_start_phase_seconds"
                    && s.labels.get("phase") == Some("create")
            })
            .expect("a create histogram");
        match &create.value {
            prometheus_parse::Value::Histogram(buckets) => {
                let inf = buckets
                    .iter()
                    .find(|b| b.less_than == f64::INFINITY)
                    .unwrap();
                assert_eq!(inf.count, 2.0);
                // Create took 50 ms in both traces.
                let at_50ms = buckets.iter().find(|b| b.less_than == 0.05).unwrap();
                assert_eq!(at_50ms.count, 2.0);
                let at_25ms = buckets.iter().find(|b| b.less_than == 0.025).unwrap();
                assert_eq!(at_25ms.count, 0.0);
            }
            other => panic!("not a histogram: {other:?}"),
        }
    }

    /// Every observation of the cache, as (runtime, role, phase, count, sum in ms), in order.
    fn observations(cache: &PhaseCache) -> Vec<(String, &'static str, Phase, u64, f64)> {
        cache
            .histograms
            .iter()
            .map(|((runtime, role, phase), h)| {
                (runtime.clone(), *role, *phase, h.count, h.sum_seconds * 1e3)
            })
            .collect()
    }

    /// How many observations of `phase` the cache holds, and their sum in milliseconds.
    fn observed(cache: &PhaseCache, phase: Phase) -> (u64, f64) {
        observations(cache)
            .into_iter()
            .filter(|o| o.2 == phase)
            .fold((0, 0.0), |(n, sum), o| (n + o.3, sum + o.4))
    }

    #[test]
    fn a_phase_later_spans_could_change_counts_once_its_trace_stayed_as_it_is() {
        let full = container_trace(TraceId([1; 16]), "c");
        // Before the exit event arrives, to-exit would end at `Wait` (90 ms instead of 80).
        let mut before_exit = full.clone();
        for span in &mut before_exit {
            span.events.clear();
        }
        let t0 = Instant::now();
        let mut cache = PhaseCache::default();
        cache.observe(&Trace::group(before_exit), t0);
        assert_eq!(observed(&cache, Phase::Create).0, 1);
        assert_eq!(observed(&cache, Phase::ToExit).0, 0);
        assert_eq!(observed(&cache, Phase::Delete).0, 0);
        assert_eq!(observed(&cache, Phase::Teardown).0, 0);
        assert_eq!(cache.next_settle, Some(t0 + TRACE_SETTLES_AFTER));

        // The event arrives (spans and their times are long past: only this process's reading
        // of them counts): to-exit is final, as the event says; the rest waits again from here.
        let t1 = t0 + Duration::from_secs(30);
        cache.observe(&Trace::group(full.clone()), t1);
        let (count, sum_ms) = observed(&cache, Phase::ToExit);
        assert_eq!(count, 1);
        assert!(
            (sum_ms - 80.0).abs() < 1e-6,
            "to-exit as the event says: {sum_ms} ms"
        );
        assert_eq!(observed(&cache, Phase::Create).0, 1, "observed once");
        assert_eq!(observed(&cache, Phase::Teardown).0, 0);
        assert_eq!(cache.next_settle, Some(t1 + TRACE_SETTLES_AFTER));

        // Nothing new for the wait: delete and teardown are as they stand, and count once.
        let settled = t1 + TRACE_SETTLES_AFTER;
        cache.at_seq = Some(7);
        assert!(!cache.stale(7, settled - Duration::from_millis(1)));
        assert!(cache.stale(7, settled));
        for _ in 0..2 {
            cache.observe(&Trace::group(full.clone()), settled);
        }
        let (count, sum_ms) = observed(&cache, Phase::Teardown);
        assert_eq!(count, 1);
        assert!((sum_ms - 10.0).abs() < 1e-6, "{sum_ms} ms");
        assert_eq!(observed(&cache, Phase::Delete).0, 1);
        assert_eq!(observed(&cache, Phase::ToExit).0, 1);
        assert_eq!(cache.next_settle, None);
        assert!(cache.waiting.is_empty());
        assert!(!cache.stale(7, settled + Duration::from_secs(3600)));
    }

    /// A trace read in two parts, a failed `Start` first and the one that worked later, counts
    /// what the whole trace read at once counts.
    #[test]
    fn a_trace_read_in_parts_counts_as_the_whole() {
        let mut whole = container_trace(TraceId([2; 16]), "c");
        let mut failed = whole
            .iter()
            .find(|s| s.name.ends_with("/Start"))
            .unwrap()
            .clone();
        failed.span_id = shimtrace_span::SpanId([9; 8]);
        failed.start_time_unix_nano -= 20_000_000;
        failed.end_time_unix_nano = failed.start_time_unix_nano + 2_000_000;
        failed.status = shimtrace_span::SpanStatus::Error("OCI runtime start failed".into());
        whole.push(failed.clone());
        let first_part: Vec<SpanRecord> = whole
            .iter()
            .filter(|s| s.start_time_unix_nano <= failed.start_time_unix_nano)
            .cloned()
            .collect();
        assert!(first_part.len() < whole.len());

        let t0 = Instant::now();
        let mut in_parts = PhaseCache::default();
        in_parts.observe(&Trace::group(first_part), t0);
        in_parts.observe(&Trace::group(whole.clone()), t0 + Duration::from_secs(59));
        in_parts.observe(
            &Trace::group(whole.clone()),
            t0 + Duration::from_secs(59) + TRACE_SETTLES_AFTER,
        );
        let mut at_once = PhaseCache::default();
        at_once.observe(&Trace::group(whole.clone()), t0);
        at_once.observe(&Trace::group(whole), t0 + TRACE_SETTLES_AFTER);
        assert_eq!(observations(&in_parts), observations(&at_once));
        let (count, sum_ms) = observed(&in_parts, Phase::Start);
        assert_eq!(count, 1);
        assert!(
            (sum_ms - 5.0).abs() < 1e-6,
            "the Start that worked: {sum_ms} ms"
        );
    }

    #[test]
    fn a_pods_startup_counts_once_it_stayed_the_same_for_five_minutes() {
        let profile = &crate::synth::default_profiles()[0];
        let start = 1_767_225_600_000_000_000;
        let (spans, _) = crate::synth::pod_spans(0, 0, profile, 2, start, 1);
        let pod_counts = |cache: &PhaseCache| {
            cache
                .pods
                .iter()
                .map(|((_, _, part), h)| (*part, h.count))
                .collect::<Vec<_>>()
        };
        // The pod's second container has not been read yet.
        let traces = Trace::group(spans);
        let second = crate::pod::Pod::group(&traces)[0].containers[1].trace_id;
        let first_part: Vec<Trace> = traces
            .iter()
            .filter(|t| t.trace_id != second)
            .cloned()
            .collect();
        let t0 = Instant::now();
        let mut cache = PhaseCache::default();
        cache.observe(&first_part, t0);
        assert_eq!(pod_counts(&cache), []);
        assert_eq!(cache.next_settle, Some(t0 + TRACE_SETTLES_AFTER));
        // It starts four minutes later: the pod waits again from there.
        let t1 = t0 + Duration::from_secs(240);
        cache.observe(&traces, t1);
        assert_eq!(pod_counts(&cache), []);
        cache.observe(&traces, t0 + POD_SETTLES_AFTER);
        assert_eq!(pod_counts(&cache), []);
        for _ in 0..2 {
            cache.observe(&traces, t1 + POD_SETTLES_AFTER);
        }
        assert_eq!(
            pod_counts(&cache),
            [("containers", 1), ("sandbox", 1), ("total", 1)]
        );
        let startup = crate::pod::Pod::group(&traces)[0].startup().unwrap();
        let total = cache
            .pods
            .iter()
            .find(|((_, _, part), _)| *part == "total")
            .unwrap()
            .1;
        assert_eq!(
            total.sum_seconds,
            startup.total_ns as f64 / 1e9,
            "the whole pod's"
        );
        assert!(cache.waiting_pods.is_empty());
    }

    /// The endpoint reads the store again when something waiting has settled, without new spans.
    #[test]
    fn a_scrape_after_the_wait_counts_what_settled() {
        let spans = container_trace(TraceId([3; 16]), "c");
        let (_dir, db, _) = store_holding("db", &spans);
        let renderer = MetricsRenderer::new(db, Arc::new(Counters::default()));
        let teardown_count = |text: &str| {
            text.lines()
                .find(|l| {
                    l.starts_with("shimtrace_cold_start_phase_seconds_count")
                        && l.contains("phase=\"teardown\"")
                })
                .map(|l| l.rsplit(' ').next().unwrap().to_string())
        };
        let t0 = Instant::now();
        assert_eq!(teardown_count(&renderer.render_at(t0).unwrap()), None);
        let settled = t0 + TRACE_SETTLES_AFTER;
        assert_eq!(
            teardown_count(&renderer.render_at(settled).unwrap()).as_deref(),
            Some("1")
        );
    }

    #[test]
    fn runtimes_and_pods_are_labelled_by_what_ran_them() {
        let profiles = crate::synth::default_profiles();
        let mut spans = Vec::new();
        for (pod, profile) in profiles.iter().take(2).enumerate() {
            let start = 1_767_225_600_000_000_000 + pod as u64 * 2_000_000_000;
            let (s, _) = crate::synth::pod_spans(pod, pod * 3, profile, 2, start, 1);
            spans.extend(s);
        }
        let (_dir, db, _) = store_holding("db", &spans);
        let renderer = MetricsRenderer::new(db, Arc::new(Counters::default()));
        // Pods count once their startup stayed the same for a while.
        let t0 = Instant::now();
        renderer.render_at(t0).unwrap();
        let text = renderer.render_at(t0 + POD_SETTLES_AFTER).unwrap();
        let lines = text.lines().map(|l| Ok(l.to_string()));
        let scrape = prometheus_parse::Scrape::parse(lines).unwrap();
        let runtimes: std::collections::BTreeSet<&str> = scrape
            .samples
            .iter()
            .filter(|s| s.metric == "shimtrace_cold_start_phase_seconds")
            .filter_map(|s| s.labels.get("runtime"))
            .collect();
        // Both pods ran behind the runc shim; one of them on gVisor.
        assert_eq!(runtimes.into_iter().collect::<Vec<_>>(), ["runc", "runsc"]);
        // Sandboxes are apart from the containers that do the work, as in the report.
        let creates =
            histogram_counts(&scrape, "shimtrace_cold_start_phase_seconds", "role", |s| {
                s.labels.get("phase") == Some("create") && s.labels.get("runtime") == Some("runc")
            });
        assert_eq!(
            creates,
            [("runc", "container", 2.0), ("runc", "sandbox", 1.0)]
        );
        let pods = histogram_counts(&scrape, "shimtrace_pod_startup_seconds", "part", |_| true);
        assert_eq!(
            pods,
            [
                ("runc", "containers", 1.0),
                ("runc", "sandbox", 1.0),
                ("runc", "total", 1.0),
                ("runsc", "containers", 1.0),
                ("runsc", "sandbox", 1.0),
                ("runsc", "total", 1.0)
            ]
        );
    }

    /// (runtime, `label`, count) of each histogram of `metric` whose labels `keep` accepts, in a
    /// fixed order (the exposition's order of label sets is not part of the format).
    fn histogram_counts<'a>(
        scrape: &'a prometheus_parse::Scrape,
        metric: &str,
        label: &str,
        keep: impl Fn(&prometheus_parse::Sample) -> bool,
    ) -> Vec<(&'a str, &'a str, f64)> {
        let mut counts: Vec<(&str, &str, f64)> = scrape
            .samples
            .iter()
            .filter(|s| s.metric == metric && keep(s))
            .map(|s| match &s.value {
                prometheus_parse::Value::Histogram(b) => (
                    s.labels.get("runtime").unwrap(),
                    s.labels.get(label).unwrap(),
                    b.iter()
                        .find(|b| b.less_than == f64::INFINITY)
                        .unwrap()
                        .count,
                ),
                other => panic!("not a histogram: {other:?}"),
            })
            .collect();
        counts.sort_by(|a, b| a.partial_cmp(b).unwrap());
        counts
    }
}
