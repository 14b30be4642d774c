//! shimtrace's overhead benchmarks: in one run against a private containerd with the wrapper
//! installed, ttrpc latency direct vs through the proxy, cold starts wrapped vs direct (ctr and
//! API), the proxy's memory, parallel starts, and the collector's ingest and report speed.

pub mod breakdown;
pub mod calls;
pub mod figures;
pub mod rss;
pub mod runs;
pub mod soak;

use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::Serialize;
use shimtrace_collector::synth::SynthConfig;
use shimtrace_collector::throughput::BenchResult;
use shimtrace_span::spool::{read_spool, SpoolContents};
use shimtrace_testkit::containerd::{HarnessError, Options, TestContainerd};
use shimtrace_testkit::traced::{alive, pids_with_cmdline, Traced, TracedOptions, TRACED_RUNC};

use calls::{BareForwarder, Endpoints, MethodLatency, TaskClient};
use figures::{Figure, Target};
use rss::Memory;
use runs::{ApiRunner, ColdStarts, ParallelRound, Variant};

/// The annotation that puts containers on one inner shim (and so one proxy).
pub const GROUP_ANNOTATION: &str = "io.containerd.runc.v2.group";
/// The running container whose shim the latency and memory figures are taken from.
pub const ANCHOR_ID: &str = "bench-anchor";
/// Where `--no-spool` points the spool: under /proc nothing can be created.
const UNWRITABLE_SPOOL: &str = "/proc/shimtrace-bench-no-spool";

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("{0}")]
    Harness(#[from] HarnessError),
    #[error("{what}: {source}")]
    Ttrpc {
        what: String,
        #[source]
        source: ttrpc::Error,
    },
    #[error("`{command}` failed: {problem}")]
    Ctr { command: String, problem: String },
    #[error(transparent)]
    Containerd(#[from] shimtrace_containerd::ContainerdError),
    #[error("collector bench: {0}")]
    Collector(#[from] shimtrace_collector::throughput::BenchError),
    #[error("{0}")]
    Setup(String),
}

/// How much to measure.
#[derive(Debug, Clone, Serialize)]
pub struct BenchConfig {
    pub containerd_version: String,
    /// Timed calls per method per path.
    pub calls: usize,
    /// Untimed rounds before them.
    pub call_warmup: usize,
    /// Proxy calls (timed, both methods) after which the proxy's memory is read.
    pub rss_checkpoint_calls: usize,
    /// Containers run one after another through the anchor's group (one inner shim, one proxy).
    pub group_containers: usize,
    pub cold_pairs: usize,
    pub cold_warmup: usize,
    pub parallel: usize,
    /// Rounds of (wrapped, direct) bursts, alternating which goes first.
    pub parallel_rounds: usize,
    /// Synthetic container traces for the collector bench.
    pub traces: usize,
    /// Experiment: give the wrapper an unwritable spool, so it records nothing and the figures
    /// show the proxy without span writing (no spool figures then).
    pub no_spool: bool,
    /// containerd's state dir and the proxies' run dir on tmpfs, as `/run` is on real nodes.
    pub state_on_tmpfs: bool,
}

impl BenchConfig {
    /// The full bench, as the issue asks for it.
    pub fn full() -> BenchConfig {
        BenchConfig {
            containerd_version: "1.6.20".into(),
            calls: 10_000,
            call_warmup: 200,
            rss_checkpoint_calls: 1_000,
            group_containers: 100,
            cold_pairs: 60,
            cold_warmup: 2,
            parallel: 64,
            parallel_rounds: 2,
            traces: 10_000,
            no_spool: false,
            state_on_tmpfs: true,
        }
    }

    /// Small numbers for the smoke test: every figure, none of them meaningful.
    pub fn quick() -> BenchConfig {
        BenchConfig {
            calls: 500,
            call_warmup: 20,
            rss_checkpoint_calls: 1_000,
            group_containers: 10,
            cold_pairs: 3,
            cold_warmup: 1,
            parallel: 8,
            parallel_rounds: 1,
            traces: 1_000,
            ..BenchConfig::full()
        }
    }
}

/// The proxy's memory over the bench.
#[derive(Debug, Clone, Serialize)]
pub struct ProxyMemory {
    pub proxy_pid: u32,
    pub at_start: Memory,
    pub after_checkpoint_calls: Memory,
    pub checkpoint_calls: usize,
    pub after_all_calls: Memory,
    pub all_calls: usize,
    /// After the first half of the grouped containers (allocator and code pages warm).
    pub after_warm_containers: Memory,
    pub warm_containers: usize,
    pub after_containers: Memory,
    pub containers: usize,
    /// The inner runc shim, for comparison.
    pub inner_shim_pid: Option<u32>,
    pub inner_shim: Option<Memory>,
}

/// What the spool holds after the run: the proxy really recorded what it forwarded.
#[derive(Debug, Clone, Serialize)]
pub struct SpoolCheck {
    pub anchor_call_spans: usize,
    pub dropped: u64,
}

/// The wrapper's share of the wrapped cold starts, from its own spans.
#[derive(Debug, Clone, Serialize)]
pub struct ColdBreakdown {
    pub ctr: breakdown::StartBreakdown,
    pub api: breakdown::StartBreakdown,
    /// The API runs seen from the client, phase by phase: where the extra time goes.
    pub api_phases: Vec<runs::PhaseOverhead>,
}

/// Everything measured, with the headline figures first.
#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    pub figures: Vec<Figure>,
    pub config: BenchConfig,
    pub wrapper: PathBuf,
    pub endpoints: Endpoints,
    pub latency: Vec<MethodLatency>,
    pub proxy_memory: ProxyMemory,
    pub group_failures: Vec<String>,
    pub cold_ctr: ColdStarts,
    pub cold_api: ColdStarts,
    pub parallel: Vec<ParallelRound>,
    pub collector: BenchResult,
    pub spool: SpoolCheck,
    pub cold_breakdown: ColdBreakdown,
    /// Seconds per phase, in order.
    pub phase_seconds: Vec<(String, f64)>,
    pub wall_seconds: f64,
}

fn memory(pid: u32, when: &str) -> Result<Memory, BenchError> {
    Memory::of(pid).ok_or_else(|| {
        BenchError::Setup(format!(
            "the proxy (pid {pid}) is gone {when}; see its log in the run dir"
        ))
    })
}

struct Phases {
    started: Instant,
    last: Instant,
    done: Vec<(String, f64)>,
}

impl Phases {
    fn start() -> Phases {
        let now = Instant::now();
        Phases {
            started: now,
            last: now,
            done: Vec::new(),
        }
    }

    fn end(&mut self, name: &str) {
        let now = Instant::now();
        self.done
            .push((name.into(), (now - self.last).as_secs_f64()));
        self.last = now;
    }
}

/// Runs the whole bench; `progress` hears what starts next.
pub fn run(config: &BenchConfig, progress: &dyn Fn(&str)) -> Result<BenchReport, BenchError> {
    let mut phases = Phases::start();
    let wrapper = shimtrace_testkit::traced::wrapper_binary();
    let (traced, endpoints) = start_anchor(config, &wrapper, progress)?;
    let containerd = &traced.containerd;
    phases.end("setup");
    let (latency, calls_memory) = measure_latency(config, &endpoints, progress)?;
    phases.end("latency");
    let (proxy_memory, group_failures) =
        run_grouped_containers(config, containerd, &endpoints, calls_memory, progress)?;
    phases.end("grouped containers");
    let cold_ctr = cold_starts_ctr(config, containerd, progress)?;
    phases.end("cold starts (ctr)");
    let (cold_api, cold_api_phases) = cold_starts_api(config, containerd, progress)?;
    phases.end("cold starts (API)");
    let parallel = parallel_starts(config, containerd, progress);
    phases.end("parallel");
    let (spool, cold_breakdown) = check_spool(config, &traced, cold_api_phases)?;
    stop_containerd(traced, endpoints.proxy_pid, progress)?;
    phases.end("cleanup");
    let collector = collector_speed(config, progress)?;
    phases.end("collector");

    let mut report = BenchReport {
        figures: Vec::new(),
        config: config.clone(),
        wrapper,
        endpoints,
        latency,
        proxy_memory,
        group_failures,
        cold_ctr,
        cold_api,
        parallel,
        collector,
        spool,
        cold_breakdown,
        wall_seconds: phases.started.elapsed().as_secs_f64(),
        phase_seconds: phases.done,
    };
    report.figures = figures_of(&report);
    Ok(report)
}

/// The annotation (`key=value`) that puts a container in the anchor's group.
fn group_annotation() -> String {
    format!("{GROUP_ANNOTATION}=shimtrace-bench")
}

/// Setup: a private containerd with the wrapper, and the long-running anchor container whose
/// shim and proxy the latency and memory figures are taken from.
fn start_anchor(
    config: &BenchConfig,
    wrapper: &Path,
    progress: &dyn Fn(&str),
) -> Result<(Traced, Endpoints), BenchError> {
    progress(&format!(
        "starting containerd {} with the wrapper {}",
        config.containerd_version,
        wrapper.display()
    ));
    let traced = Traced::start_with(
        &config.containerd_version,
        TracedOptions {
            spool: config.no_spool.then(|| PathBuf::from(UNWRITABLE_SPOOL)),
            extra: Options {
                tmpfs_state: config.state_on_tmpfs,
                ..Options::default()
            },
        },
    )?;
    let containerd = &traced.containerd;
    containerd.run_detached(
        ANCHOR_ID,
        &[
            "--runtime",
            &TRACED_RUNC,
            "--annotation",
            &group_annotation(),
        ],
        &["/bin/sleep", "3600"],
    )?;
    let endpoints = Endpoints::of_bundle(&containerd.bundle_dir(ANCHOR_ID))?;
    Ok((traced, endpoints))
}

/// The proxy's memory around the latency calls, the start of [`ProxyMemory`].
struct CallsMemory {
    inner_shim_pid: Option<u32>,
    at_start: Memory,
    after_checkpoint_calls: Memory,
    checkpoint_calls: usize,
    after_all_calls: Memory,
}

/// ttrpc latency of the anchor's task: its inner shim direct, through the proxy, and through a
/// bare forwarder (the floor of any proxy, so the extra hop is told from the tracing); with the
/// proxy's memory before, during and after the calls.
fn measure_latency(
    config: &BenchConfig,
    endpoints: &Endpoints,
    progress: &dyn Fn(&str),
) -> Result<(Vec<MethodLatency>, CallsMemory), BenchError> {
    progress(&format!(
        "ttrpc latency: {} State + {} Connect calls per path, direct {} vs proxy {}",
        config.calls,
        config.calls,
        endpoints.inner_socket.display(),
        endpoints.proxy_socket.display()
    ));
    let proxy_pid = endpoints.proxy_pid;
    let direct = TaskClient::connect(&endpoints.inner_socket, ANCHOR_ID)?;
    let proxy = TaskClient::connect(&endpoints.proxy_socket, ANCHOR_ID)?;
    let forwarder = BareForwarder::start(&endpoints.inner_socket)?;
    let bare = TaskClient::connect(forwarder.socket(), ANCHOR_ID)?;
    let (direct_id, proxy_id) = (direct.identity()?, proxy.identity()?);
    if direct_id != proxy_id {
        return Err(BenchError::Setup(format!(
            "the proxy answers for another task than the inner shim: (task pid, shim pid) {proxy_id:?} vs {direct_id:?}"
        )));
    }
    let inner_shim_pid = Some(direct_id.1).filter(|p| *p != 0);
    let at_start = memory(proxy_pid, "before the calls")?;
    let checkpoint = config.rss_checkpoint_calls.min(2 * config.calls);
    let mut after_checkpoint = None;
    let latency = calls::measure(
        [&direct, &proxy, &bare],
        config.calls,
        config.call_warmup,
        |n| {
            if n == checkpoint {
                after_checkpoint = Memory::of(proxy_pid);
            }
        },
    )?;
    drop((direct, proxy, bare, forwarder));
    let after_all_calls = memory(proxy_pid, "after the calls")?;
    let after_checkpoint_calls =
        after_checkpoint.ok_or_else(|| BenchError::Setup("the proxy vanished mid-run".into()))?;
    Ok((
        latency,
        CallsMemory {
            inner_shim_pid,
            at_start,
            after_checkpoint_calls,
            checkpoint_calls: checkpoint,
            after_all_calls,
        },
    ))
}

/// The proxy's memory growth as containers run one after another through the anchor's group,
/// all on its one proxy (which must stay the only one serving its socket).
fn run_grouped_containers(
    config: &BenchConfig,
    containerd: &TestContainerd,
    endpoints: &Endpoints,
    calls: CallsMemory,
    progress: &dyn Fn(&str),
) -> Result<(ProxyMemory, Vec<String>), BenchError> {
    let proxy_pid = endpoints.proxy_pid;
    progress(&format!(
        "{} containers one after another through the anchor's proxy (pid {proxy_pid})",
        config.group_containers
    ));
    let group = group_annotation();
    // Growth is judged over the second half: the first containers warm the allocator's arenas
    // and touch code pages once (measured: flat from ~20 to 400 containers).
    let warm_containers = (config.group_containers / 2).max(1);
    let mut after_warm_containers = calls.after_all_calls;
    let mut group_failures = Vec::new();
    for i in 0..config.group_containers {
        if let Err(e) = runs::ctr_run_true(
            containerd,
            &format!("grp-{i}"),
            Variant::Wrapped,
            &["--annotation", &group],
        ) {
            group_failures.push(e.to_string());
        }
        if i + 1 == warm_containers {
            after_warm_containers = memory(proxy_pid, "during the grouped containers")?;
        }
    }
    let after_containers = memory(proxy_pid, "after the grouped containers")?;
    let socket_arg = endpoints.proxy_socket.display().to_string();
    let serving = pids_with_cmdline(&["proxy", "--socket", &socket_arg]);
    if serving != [proxy_pid] {
        return Err(BenchError::Setup(format!(
            "grouped containers were to share proxy {proxy_pid}, but {serving:?} serve its socket"
        )));
    }
    let proxy_memory = ProxyMemory {
        proxy_pid,
        at_start: calls.at_start,
        after_checkpoint_calls: calls.after_checkpoint_calls,
        checkpoint_calls: calls.checkpoint_calls,
        after_all_calls: calls.after_all_calls,
        all_calls: 2 * config.calls,
        after_warm_containers,
        warm_containers,
        after_containers,
        containers: config.group_containers,
        inner_shim: calls.inner_shim_pid.and_then(Memory::of),
        inner_shim_pid: calls.inner_shim_pid,
    };
    Ok((proxy_memory, group_failures))
}

/// Cold starts as a user sees them: `ctr run --rm … /bin/true`, wrapped vs direct, in pairs.
fn cold_starts_ctr(
    config: &BenchConfig,
    containerd: &TestContainerd,
    progress: &dyn Fn(&str),
) -> Result<ColdStarts, BenchError> {
    progress(&format!(
        "cold starts: {} pairs of `ctr run --rm … /bin/true`, wrapped and direct",
        config.cold_pairs
    ));
    runs::cold_pairs(
        "cold-ctr",
        config.cold_pairs,
        config.cold_warmup,
        |v, id| runs::ctr_run_true(containerd, id, v, &[]),
    )
}

/// Cold starts as an orchestrator sees them, through containerd's API (without `ctr`'s own
/// cost), wrapped vs direct, with where the extra time goes phase by phase.
fn cold_starts_api(
    config: &BenchConfig,
    containerd: &TestContainerd,
    progress: &dyn Fn(&str),
) -> Result<(ColdStarts, Vec<runs::PhaseOverhead>), BenchError> {
    progress(&format!(
        "cold starts: {} pairs through containerd's API",
        config.cold_pairs
    ));
    let io_dir = tempfile::Builder::new()
        .prefix("shimtrace-bench-io-")
        .tempdir()
        .map_err(|e| BenchError::Setup(format!("cannot create a temp dir for task output: {e}")))?;
    let api = ApiRunner::connect(containerd, io_dir.path())?;
    let cold_api = runs::cold_pairs(
        "cold-api",
        config.cold_pairs,
        config.cold_warmup,
        |v, id| api.run_true(id, v),
    )?;
    Ok((cold_api, api.phase_breakdown(config.cold_warmup)))
}

/// Bursts of containers started at once, wrapped and direct in turn: whether the wrapper fails
/// or slows down under load.
fn parallel_starts(
    config: &BenchConfig,
    containerd: &TestContainerd,
    progress: &dyn Fn(&str),
) -> Vec<ParallelRound> {
    let mut parallel = Vec::new();
    for round in 0..config.parallel_rounds {
        for variant in Variant::order(round) {
            progress(&format!(
                "{} containers in parallel, {} (round {})",
                config.parallel,
                variant.name(),
                round + 1
            ));
            parallel.push(runs::parallel_round(
                containerd,
                variant,
                config.parallel,
                &format!("par-{round}-{}", variant.name()),
            ));
        }
    }
    parallel
}

/// What the wrapper recorded: the anchor's call spans (the proxy really traced what it
/// forwarded) and, from the wrapped cold starts' spans, the wrapper's share of their time.
fn check_spool(
    config: &BenchConfig,
    traced: &Traced,
    cold_api_phases: Vec<runs::PhaseOverhead>,
) -> Result<(SpoolCheck, ColdBreakdown), BenchError> {
    let spool = if config.no_spool {
        SpoolContents::default()
    } else {
        read_spool(&traced.spool).map_err(|e| BenchError::Setup(e.to_string()))?
    };
    let cold_breakdown = ColdBreakdown {
        ctr: breakdown::of_containers(&spool.spans, "cold-ctr-", "-wrapped"),
        api: breakdown::of_containers(&spool.spans, "cold-api-", "-wrapped"),
        api_phases: cold_api_phases,
    };
    let spool = SpoolCheck {
        anchor_call_spans: spool
            .spans
            .iter()
            .filter(|s| s.container_id() == Some(ANCHOR_ID))
            .count(),
        dropped: spool.dropped,
    };
    Ok((spool, cold_breakdown))
}

/// Stops containerd, once sure the anchor's proxy lived through the whole bench.
fn stop_containerd(
    traced: Traced,
    proxy_pid: u32,
    progress: &dyn Fn(&str),
) -> Result<(), BenchError> {
    if !alive(proxy_pid) {
        return Err(BenchError::Setup(format!(
            "the anchor's proxy (pid {proxy_pid}) died during the bench"
        )));
    }
    progress("stopping containerd");
    drop(traced);
    Ok(())
}

/// The collector's ingest and report speed over synthetic container traces (no containerd).
fn collector_speed(
    config: &BenchConfig,
    progress: &dyn Fn(&str),
) -> Result<BenchResult, BenchError> {
    progress(&format!(
        "collector: ingest and report of {} synthetic container traces",
        config.traces
    ));
    let work = tempfile::Builder::new()
        .prefix("shimtrace-bench-collector-")
        .tempdir()
        .map_err(|e| BenchError::Setup(format!("cannot create a temp dir: {e}")))?;
    Ok(shimtrace_collector::throughput::run(
        work.path(),
        &SynthConfig {
            containers: config.traces,
            containers_per_writer: 100,
            ..SynthConfig::default()
        },
        |_| {},
    )?)
}

/// Mean wall time of the bursts of one variant.
fn mean_wall(rounds: &[ParallelRound], variant: Variant) -> f64 {
    let walls: Vec<f64> = rounds
        .iter()
        .filter(|r| r.variant == variant)
        .map(|r| r.wall_s)
        .collect();
    walls.iter().sum::<f64>() / walls.len() as f64
}

/// The headline figures, in [`figures::FIGURE_KEYS`] order.
pub fn figures_of(report: &BenchReport) -> Vec<Figure> {
    let mut out = Vec::new();
    for latency in &report.latency {
        let m = latency.method.name();
        let k = m.to_lowercase();
        out.extend([
            Figure::new(
                &format!("{k}_p50_direct_us"),
                &format!("{m} p50 direct"),
                latency.direct_us.p50,
                "µs",
                None,
            ),
            Figure::new(
                &format!("{k}_p50_proxy_us"),
                &format!("{m} p50 via proxy"),
                latency.proxy_us.p50,
                "µs",
                None,
            ),
            Figure::new(
                &format!("{k}_p50_ratio"),
                &format!("{m} p50 proxy/direct"),
                latency.p50_ratio,
                "×",
                Some(Target::AtMost(1.5)),
            ),
            Figure::new(
                &format!("{k}_p50_bare_ratio"),
                &format!("{m} p50 bare forwarder/direct"),
                latency.bare_p50_ratio,
                "×",
                None,
            ),
            Figure::new(
                &format!("{k}_p90_ratio"),
                &format!("{m} p90 proxy/direct"),
                latency.p90_ratio,
                "×",
                None,
            ),
            Figure::new(
                &format!("{k}_p99_direct_us"),
                &format!("{m} p99 direct"),
                latency.direct_us.p99,
                "µs",
                None,
            ),
            Figure::new(
                &format!("{k}_p99_proxy_us"),
                &format!("{m} p99 via proxy"),
                latency.proxy_us.p99,
                "µs",
                None,
            ),
            Figure::new(
                &format!("{k}_p99_ratio"),
                &format!("{m} p99 proxy/direct"),
                latency.p99_ratio,
                "×",
                Some(Target::AtMost(2.0)),
            ),
            Figure::new(
                &format!("{k}_p99_bare_ratio"),
                &format!("{m} p99 bare forwarder/direct"),
                latency.bare_p99_ratio,
                "×",
                None,
            ),
        ]);
    }
    for (key, label, cold) in [
        ("ctr", "ctr run --rm", &report.cold_ctr),
        ("api", "API run", &report.cold_api),
    ] {
        out.extend([
            Figure::new(
                &format!("cold_{key}_median_direct_ms"),
                &format!("cold start {label} median direct"),
                cold.direct_ms.p50,
                "ms",
                None,
            ),
            Figure::new(
                &format!("cold_{key}_median_wrapped_ms"),
                &format!("cold start {label} median wrapped"),
                cold.wrapped_ms.p50,
                "ms",
                None,
            ),
            Figure::new(
                &format!("cold_{key}_ratio"),
                &format!("cold start {label} wrapped/direct"),
                cold.median_ratio,
                "×",
                Some(Target::AtMost(1.03)),
            ),
            Figure::new(
                &format!("cold_{key}_ratio_ci95_low"),
                &format!("cold start {label} ratio, 95% interval from"),
                cold.median_ratio_ci95[0],
                "×",
                None,
            ),
            Figure::new(
                &format!("cold_{key}_ratio_ci95_high"),
                &format!("cold start {label} ratio, 95% interval to"),
                cold.median_ratio_ci95[1],
                "×",
                None,
            ),
        ]);
    }
    let memory = &report.proxy_memory;
    // The proxy's resident memory at a checkpoint, held to 3 MiB.
    let rss = |key: &str, after: String, at: &Memory| {
        Figure::new(
            key,
            &format!("proxy RSS after {after}"),
            at.vm_rss_kib as f64,
            "KiB",
            Some(Target::AtMost(3.0 * 1024.0)),
        )
    };
    out.extend([
        rss(
            "proxy_rss_after_calls_kib",
            format!("{} calls", memory.checkpoint_calls),
            &memory.after_checkpoint_calls,
        ),
        rss(
            "proxy_rss_after_containers_kib",
            format!("{} containers", memory.containers),
            &memory.after_containers,
        ),
        Figure::new(
            "proxy_rss_growth_kib",
            &format!(
                "proxy RSS growth, containers {}→{}",
                memory.warm_containers, memory.containers
            ),
            memory.after_containers.vm_rss_kib as f64
                - memory.after_warm_containers.vm_rss_kib as f64,
            "KiB",
            None,
        ),
        Figure::new(
            "group_failures",
            "grouped container failures",
            report.group_failures.len() as f64,
            "",
            Some(Target::Equals(0.0)),
        ),
        Figure::new(
            "ingest_spans_per_s",
            &format!(
                "collector ingest ({} traces)",
                report.collector.generated.containers
            ),
            report.collector.ingest_spans_per_second,
            "spans/s",
            Some(Target::AtLeast(100_000.0)),
        ),
        Figure::new(
            "report_s",
            &format!(
                "collector report ({} traces, build + md + html)",
                report.collector.generated.containers
            ),
            report.collector.report_seconds
                + report.collector.render_md_seconds
                + report.collector.render_html_seconds,
            "s",
            Some(Target::AtMost(1.0)),
        ),
    ]);
    let wrapped_failures: usize = report
        .parallel
        .iter()
        .filter(|r| r.variant == Variant::Wrapped)
        .map(|r| r.failures)
        .sum();
    let parallel_n = report.config.parallel;
    let (direct_wall, wrapped_wall) = (
        mean_wall(&report.parallel, Variant::Direct),
        mean_wall(&report.parallel, Variant::Wrapped),
    );
    out.extend([
        Figure::new(
            "parallel_failures",
            &format!("{parallel_n} parallel wrapped: failures"),
            wrapped_failures as f64,
            "",
            Some(Target::Equals(0.0)),
        ),
        Figure::new(
            "parallel_wall_direct_s",
            &format!("{parallel_n} parallel direct: wall"),
            direct_wall,
            "s",
            None,
        ),
        Figure::new(
            "parallel_wall_wrapped_s",
            &format!("{parallel_n} parallel wrapped: wall"),
            wrapped_wall,
            "s",
            None,
        ),
        Figure::new(
            "parallel_ratio",
            &format!("{parallel_n} parallel wrapped/direct"),
            wrapped_wall / direct_wall,
            "×",
            None,
        ),
    ]);
    out
}

/// The API cold starts phase by phase, for the printed output.
pub fn describe_cold_phases(report: &BenchReport) -> String {
    let mut out =
        String::from("API cold start by phase (median ms): direct / wrapped / overhead\n");
    for p in &report.cold_breakdown.api_phases {
        out.push_str(&format!(
            "  {:<40} {:>8.2} {:>8.2} {:>+8.2}\n",
            p.phase, p.direct_ms, p.wrapped_ms, p.overhead_ms
        ));
    }
    out
}

/// How long phases took, for the progress output.
pub fn describe_phases(report: &BenchReport) -> String {
    let parts: Vec<String> = report
        .phase_seconds
        .iter()
        .map(|(name, s)| format!("{name} {s:.1}s"))
        .collect();
    format!(
        "wall time {:.1}s ({})",
        report.wall_seconds,
        parts.join(", ")
    )
}
