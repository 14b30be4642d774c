//! Prometheus metrics: the `/metrics` endpoint with the store's totals, this process's
//! [`Counters`], and cold-start phase histograms per runtime and role: a pod's sandboxes apart
//! from the containers that do the work, as the report keeps them. A histogram only grows: each
//! phase and pod is observed once, when final (see [`PhaseCache`]).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use shimtrace_span::TraceId;

use crate::counters::Counters;
use crate::store::{Store, StoreError, EXPORTED_KEY};
use crate::trace::{Phase, Trace};

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

/// How long a trace must go without a new span before its phases that later spans could still
/// change count as they are (see [`PhaseCache`]); likewise a pod after its last container started.
pub const SETTLED_AFTER: Duration = Duration::from_secs(60);

/// Phase histograms per (runtime, role, phase) and pod startup per (runtime, handler, part).
///
/// Each phase of a trace, and each pod's startup, is observed once, when spans still to come can
/// no longer change it, so a bucket never loses a count between scrapes (Prometheus would read
/// that as a counter reset). A phase that may change ([`Trace::may_change`]: teardown, a start
/// that failed, to-exit without its exit event) waits until its trace has had no new span for
/// [`SETTLED_AFTER`]; a pod's startup waits that long after its last container started. The store
/// is read again when it has new spans, or when something waiting has settled since.
#[derive(Default)]
struct PhaseCache {
    at_seq: Option<u64>,
    /// When the next phase or pod waiting to settle does (unix nanoseconds).
    next_settle: Option<u64>,
    /// The phases already observed, per trace (bits by [`Phase::ALL`] order).
    observed: HashMap<TraceId, u8>,
    /// The pods whose startup was observed, by sandbox id.
    observed_pods: HashSet<String>,
    histograms: BTreeMap<(String, &'static str, Phase), Histogram>,
    /// Pod startup per (runtime, handler, part).
    pods: BTreeMap<(String, String, &'static str), Histogram>,
}

impl PhaseCache {
    /// Whether the store must be read again: it has new spans, or something waiting has settled.
    fn stale(&self, seq: u64, now: u64) -> bool {
        self.at_seq != Some(seq) || self.next_settle.is_some_and(|at| now >= at)
    }

    /// Observes what in `traces` is final at `now` and was not observed before.
    fn observe(&mut self, traces: &[Trace], now: u64) {
        let settle = u64::try_from(SETTLED_AFTER.as_nanos()).unwrap_or(u64::MAX);
        let mut next_settle: Option<u64> = None;
        let mut wait_for = |at: u64| next_settle = Some(next_settle.map_or(at, |n| n.min(at)));
        for trace in traces {
            let settles_at = trace.end().saturating_add(settle);
            let seen = self.observed.entry(trace.trace_id).or_default();
            // Sandboxes apart, as the report keeps them (`Trace::report_group`).
            let (runtime, role) = (trace.runtime(), trace.role());
            for p in trace.phases() {
                let bit = phase_bit(p.phase);
                if *seen & bit != 0 {
                    continue;
                }
                if trace.may_change(p.phase) && now < settles_at {
                    wait_for(settles_at);
                    continue;
                }
                *seen |= bit;
                self.histograms
                    .entry((runtime.clone(), role, p.phase))
                    .or_default()
                    .observe(p.duration_nanos() as f64 / 1e9);
            }
        }
        for pod in crate::pod::Pod::group(traces) {
            if self.observed_pods.contains(&pod.sandbox_id) {
                continue;
            }
            let (Some(startup), Some(running)) = (pod.startup(), pod.all_running_at()) else {
                continue;
            };
            let settles_at = running.saturating_add(settle);
            if now < settles_at {
                wait_for(settles_at);
                continue;
            }
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
    let index = Phase::ALL.iter().position(|p| *p == phase).unwrap_or(0);
    1 << index
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
        let store = Store::open(&self.db)?;
        let seq = store.max_seq()?;
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        // Wall clock, as the shims' span times are (this process's own clock is anchored once).
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
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
            "# HELP {name} Container cold-start phase durations per runtime; role=\"sandbox\" for a pod's sandbox (pause) containers, role=\"container\" for the others. Each phase counts once, when later spans can no longer change it: teardown, a failed start and a to-exit without its exit event after a minute without new spans.\n# TYPE {name} histogram"
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
                "# HELP {name} Pod startup per runtime and CRI handler: total (sandbox start to every container running), sandbox (to the sandbox running), containers (the rest). A pod counts once, a minute after its last container started.\n# TYPE {name} histogram"
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
    use shimtrace_span::TraceId;

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

    /// How many observations of `phase` the cache holds, and their sum in milliseconds.
    fn observed(cache: &PhaseCache, phase: Phase) -> (u64, f64) {
        cache
            .histograms
            .iter()
            .filter(|((_, _, p), _)| *p == phase)
            .fold((0, 0.0), |(n, sum), (_, h)| {
                (n + h.count, sum + h.sum_seconds * 1e3)
            })
    }

    #[test]
    fn a_phase_later_spans_could_change_counts_once_its_trace_settled() {
        let full = container_trace(TraceId([1; 16]), "c");
        let end = Trace::group(full.clone()).remove(0).end();
        let settle = SETTLED_AFTER.as_nanos() as u64;
        // Before the exit event arrives, to-exit would end at `Wait` (90 ms instead of 80).
        let mut before_exit = full.clone();
        for span in &mut before_exit {
            span.events.clear();
        }
        let mut cache = PhaseCache::default();
        let soon = end + 1_000_000_000;
        cache.observe(&Trace::group(before_exit), soon);
        assert_eq!(observed(&cache, Phase::Create).0, 1);
        assert_eq!(observed(&cache, Phase::ToExit).0, 0);
        assert_eq!(observed(&cache, Phase::Teardown).0, 0);
        assert_eq!(cache.next_settle, Some(end + settle));

        cache.observe(&Trace::group(full.clone()), soon);
        let (count, sum_ms) = observed(&cache, Phase::ToExit);
        assert_eq!(count, 1);
        assert!(
            (sum_ms - 80.0).abs() < 1e-6,
            "to-exit as the event says: {sum_ms} ms"
        );
        assert_eq!(observed(&cache, Phase::Create).0, 1, "observed once");
        assert_eq!(observed(&cache, Phase::Teardown).0, 0);

        // Nothing new for a minute: teardown is as it stands, and counts once.
        cache.at_seq = Some(7);
        assert!(!cache.stale(7, end + settle - 1));
        assert!(cache.stale(7, end + settle));
        for _ in 0..2 {
            cache.observe(&Trace::group(full.clone()), end + settle);
        }
        let (count, sum_ms) = observed(&cache, Phase::Teardown);
        assert_eq!(count, 1);
        assert!((sum_ms - 10.0).abs() < 1e-6, "{sum_ms} ms");
        assert_eq!(observed(&cache, Phase::ToExit).0, 1);
        assert_eq!(cache.next_settle, None);
        assert!(!cache.stale(7, u64::MAX));
    }

    #[test]
    fn a_pods_startup_counts_once_a_minute_after_its_last_container_ran() {
        let profile = &crate::synth::default_profiles()[0];
        let start = 1_767_225_600_000_000_000;
        let (spans, _) = crate::synth::pod_spans(0, 0, profile, 2, start, 1);
        let traces = Trace::group(spans);
        let running = crate::pod::Pod::group(&traces)[0]
            .all_running_at()
            .expect("the pod started");
        let settle = SETTLED_AFTER.as_nanos() as u64;
        let pod_counts = |cache: &PhaseCache| {
            cache
                .pods
                .iter()
                .map(|((_, _, part), h)| (*part, h.count))
                .collect::<Vec<_>>()
        };
        let mut cache = PhaseCache::default();
        cache.observe(&traces, running + settle - 1);
        assert_eq!(pod_counts(&cache), []);
        assert!(cache.next_settle.is_some_and(|at| at <= running + settle));
        for _ in 0..2 {
            cache.observe(&traces, running + settle);
        }
        assert_eq!(
            pod_counts(&cache),
            [("containers", 1), ("sandbox", 1), ("total", 1)]
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
        let text = MetricsRenderer::new(db, Arc::new(Counters::default()))
            .render()
            .unwrap();
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
