//! The soak: many wrapped containers through one private containerd, first one after another, then
//! all at once, and an account of what they left behind. Each count a container could leak (its
//! processes, its shim and proxy sockets in `/run/containerd/s`, the wrapper's run-dir files and
//! spool files, containerd's descriptors, tasks, containers and bundles) is read once the
//! warm-up is over and again after the last container; the target is no failed run and every count
//! back to its starting value. The proxies' and containerd's memory is sampled throughout.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::Serialize;
use sha2::{Digest, Sha256};
use shimtrace_collector::ingest::Ingester;
use shimtrace_collector::store::Store;
use shimtrace_shim::proxy::{proxy_socket_for, PROXY_SUBCOMMAND};
use shimtrace_span::spool::{read_spool, SpoolFileName};
use shimtrace_testkit::containerd::{Options, TestContainerd};
use shimtrace_testkit::traced::{is_method, wait_for, Traced, TracedOptions};

use crate::rss::Memory;
use crate::runs::{self, Variant};
use crate::BenchError;

/// Where containerd 1.6 and 1.7 put every shim's socket, whatever their state dir.
pub const SHIM_SOCKET_DIR: &str = "/run/containerd/s";
/// Containers run before the starting counts are read (first use of the snapshotter, the
/// runtime plugin, containerd's caches).
const WARMUP: usize = 3;
const PROBE_ID: &str = "soak-probe";

/// How much to soak.
#[derive(Debug, Clone, Serialize)]
pub struct SoakConfig {
    pub containerd_version: String,
    /// Containers run one after another.
    pub sequential: usize,
    /// Containers started at once, after the sequential ones.
    pub parallel: usize,
    /// How often the memory of the proxies and containerd is read.
    pub sample_interval_ms: u64,
    /// How long the counts may take to come back after the last container (shims exit, and
    /// containerd closes their connections, after `ctr` has returned).
    pub settle_s: u64,
}

impl SoakConfig {
    /// How long the counts may take to come back, as a duration.
    fn settle(&self) -> Duration {
        Duration::from_secs(self.settle_s)
    }
}

impl Default for SoakConfig {
    fn default() -> SoakConfig {
        SoakConfig {
            containerd_version: "1.6.20".into(),
            sequential: 1000,
            parallel: 128,
            sample_interval_ms: 500,
            settle_s: 30,
        }
    }
}

/// `shimtrace-bench soak`: the soak's options.
#[derive(Debug, clap::Args)]
pub struct SoakArgs {
    /// Containers run one after another (`ctr run --rm … /bin/true` through the wrapper).
    #[arg(long, default_value_t = SoakConfig::default().sequential)]
    pub sequential: usize,
    /// Containers started at once, after the sequential ones.
    #[arg(long, default_value_t = SoakConfig::default().parallel)]
    pub parallel: usize,
    /// containerd version to run (an installed one: 1.6.20 is the system's).
    #[arg(long, value_name = "VERSION", default_value_t = SoakConfig::default().containerd_version)]
    pub containerd: String,
    /// Seconds the counts may take to return to their starting values after the last container.
    #[arg(long, value_name = "SECONDS", default_value_t = SoakConfig::default().settle_s)]
    pub settle: u64,
    /// Where to write the JSON results (every count, every memory sample).
    #[arg(long, value_name = "FILE", default_value = "shimtrace-soak.json")]
    pub out: PathBuf,
}

impl SoakArgs {
    pub fn config(&self) -> SoakConfig {
        SoakConfig {
            containerd_version: self.containerd.clone(),
            sequential: self.sequential,
            parallel: self.parallel,
            settle_s: self.settle,
            ..SoakConfig::default()
        }
    }
}

/// One of the soak's runs of containers.
#[derive(Debug, Clone, Serialize)]
pub struct SoakPhase {
    pub phase: &'static str,
    pub containers: usize,
    pub failures: usize,
    pub wall_s: f64,
    /// The first few failures, verbatim.
    pub errors: Vec<String>,
}

/// A count read before and after the soak.
#[derive(Debug, Clone, Serialize)]
pub struct Count {
    pub key: &'static str,
    pub label: &'static str,
    pub start: u64,
    pub end: u64,
    /// `None` for a count shown for context only (it is not this containerd's alone).
    pub met: Option<bool>,
}

impl Count {
    fn checked(key: &'static str, label: &'static str, start: u64, end: u64) -> Count {
        Count {
            key,
            label,
            start,
            end,
            met: Some(end == start),
        }
    }

    fn context(key: &'static str, label: &'static str, start: u64, end: u64) -> Count {
        Count {
            key,
            label,
            start,
            end,
            met: None,
        }
    }
}

/// Entries left behind, for a count that did not come back to its start.
#[derive(Debug, Clone, Serialize)]
pub struct Leftovers {
    pub key: &'static str,
    /// How many in all, and the first few (with what is known about them).
    pub count: usize,
    pub first: Vec<String>,
}

/// How many leftovers a report names per count.
const LEFTOVERS_SHOWN: usize = 8;

impl Leftovers {
    fn of(key: &'static str, names: Vec<String>) -> Option<Leftovers> {
        (!names.is_empty()).then(|| Leftovers {
            key,
            count: names.len(),
            first: names.into_iter().take(LEFTOVERS_SHOWN).collect(),
        })
    }
}

/// What is left in the spool after ingest.
struct SpoolLeft {
    /// Every entry of the spool dir.
    entries: u64,
    /// Spool files the collector keeps only because their writer's pid now belongs to a process
    /// that is not this containerd's (so not their writer: the pid was reused). The collector
    /// removes them once that process is gone; they are no leak of the wrapper's.
    held_by_reused_pid: Vec<String>,
    /// The other spool files, with what their writer pid is now.
    kept: Vec<String>,
}

/// One reading of the memory of the live proxies and of containerd.
#[derive(Debug, Clone, Serialize)]
pub struct Sample {
    pub t_s: f64,
    pub phase: &'static str,
    pub proxies: u32,
    pub proxy_rss_max_kib: u64,
    pub proxy_rss_sum_kib: u64,
    pub containerd_rss_kib: u64,
    pub containerd_fds: u64,
}

/// The memory samples of one phase, summarised.
#[derive(Debug, Clone, Serialize)]
pub struct MemorySummary {
    pub phase: &'static str,
    pub samples: usize,
    /// Most proxies alive at one sample.
    pub proxies_peak: u32,
    /// Median resident memory of a proxy over the first and the last tenth of the phase's samples
    /// (a steady proxy keeps them equal), and the largest seen.
    pub proxy_rss_first_kib: Option<u64>,
    pub proxy_rss_last_kib: Option<u64>,
    pub proxy_rss_max_kib: Option<u64>,
    pub containerd_rss_first_kib: Option<u64>,
    pub containerd_rss_last_kib: Option<u64>,
    pub containerd_fds_max: u64,
}

/// Everything the soak saw.
#[derive(Debug, Clone, Serialize)]
pub struct SoakReport {
    pub config: SoakConfig,
    pub phases: Vec<SoakPhase>,
    pub counts: Vec<Count>,
    pub memory: Vec<MemorySummary>,
    pub samples: Vec<Sample>,
    /// Spans recorded, and the wrapped containers that ran without a `Create` span.
    pub spans: usize,
    pub untraced: Vec<String>,
    /// What the soak could not tell apart, if anything (e.g. another containerd version names
    /// its shim sockets differently).
    pub notes: Vec<String>,
    /// The first few entries behind each count that did not come back: what was left where.
    pub leftovers: Vec<Leftovers>,
    pub wall_s: f64,
}

impl SoakReport {
    /// The labels of the counts that missed their target.
    pub fn missed(&self) -> Vec<&'static str> {
        self.counts
            .iter()
            .filter(|c| c.met == Some(false))
            .map(|c| c.label)
            .collect()
    }
}

/// What leaks are counted in, at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Snapshot {
    processes: u64,
    shim_sockets: u64,
    all_sockets: u64,
    run_dir: u64,
    containerd_fds: u64,
    tasks: u64,
    containers: u64,
    bundles: u64,
}

impl Snapshot {
    /// The counts that settle: all but the machine-wide socket count.
    fn settled_like(&self, start: &Snapshot) -> bool {
        Snapshot {
            all_sockets: start.all_sockets,
            ..*self
        } == *start
    }
}

/// Which sockets in [`SHIM_SOCKET_DIR`] are this soak's: containerd 1.6/1.7 name a shim's socket
/// after sha256(`<containerd address>/<namespace>/<id>`), and the proxy's follows from it.
struct SocketNames {
    names: BTreeSet<String>,
}

impl SocketNames {
    fn new<'a>(address: &Path, namespace: &str, ids: impl Iterator<Item = &'a str>) -> SocketNames {
        let mut names = BTreeSet::new();
        for id in ids {
            let inner = shim_socket_name(address, namespace, id);
            let inner_path = Path::new(SHIM_SOCKET_DIR).join(&inner);
            let proxy = proxy_socket_for(&inner_path, &format!("unix://{}", inner_path.display()));
            if let Some(name) = proxy.file_name().and_then(|n| n.to_str()) {
                names.insert(name.to_string());
            }
            names.insert(inner);
        }
        SocketNames { names }
    }

    /// Entries of the socket dir that are this soak's (a suffix such as `.debug` included).
    fn ours(&self) -> Vec<PathBuf> {
        dir_names(Path::new(SHIM_SOCKET_DIR))
            .into_iter()
            .filter(|name| {
                let hash = name.get(..64).unwrap_or(name);
                self.names.contains(hash)
            })
            .map(|name| Path::new(SHIM_SOCKET_DIR).join(name))
            .collect()
    }

    fn count(&self) -> u64 {
        self.ours().len() as u64
    }

    fn remove_leftovers(&self) {
        for path in self.ours() {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// The name containerd 1.6 and 1.7 give the socket of shim `id` (`SocketAddress` in their
/// `runtime/v2/shim`).
pub fn shim_socket_name(address: &Path, namespace: &str, id: &str) -> String {
    let path = format!("{}/{namespace}/{id}", address.display());
    hex::encode(Sha256::digest(path.as_bytes()))
}

fn dir_names(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

fn fds(pid: Option<u32>) -> u64 {
    pid.map_or(0, |pid| {
        dir_names(Path::new(&format!("/proc/{pid}/fd"))).len() as u64
    })
}

fn ctr_lines(containerd: &TestContainerd, args: &[&str]) -> u64 {
    containerd
        .ctr(args)
        .map(|out| out.stdout.lines().filter(|l| !l.trim().is_empty()).count() as u64)
        .unwrap_or(u64::MAX)
}

struct Soak<'a> {
    traced: &'a Traced,
    sockets: SocketNames,
}

impl Soak<'_> {
    fn containerd(&self) -> &TestContainerd {
        &self.traced.containerd
    }

    fn snapshot(&self) -> Snapshot {
        let containerd = self.containerd();
        Snapshot {
            processes: containerd.owned_processes().len() as u64,
            shim_sockets: self.sockets.count(),
            all_sockets: dir_names(Path::new(SHIM_SOCKET_DIR)).len() as u64,
            run_dir: dir_names(&self.traced.run_dir).len() as u64,
            containerd_fds: fds(containerd.pid()),
            tasks: ctr_lines(containerd, &["tasks", "ls", "-q"]),
            containers: ctr_lines(containerd, &["containers", "ls", "-q"]),
            bundles: dir_names(
                &containerd
                    .state_dir()
                    .join("io.containerd.runtime.v2.task")
                    .join(containerd.namespace()),
            )
            .len() as u64,
        }
    }

    /// Waits (up to `limit`) for the counts to come back to `start`, then reads them once more.
    fn settle(&self, start: &Snapshot, limit: Duration) -> Snapshot {
        wait_for(limit, || {
            let now = self.snapshot();
            now.settled_like(start).then_some(now)
        })
        .unwrap_or_else(|| self.snapshot())
    }

    /// Waits (up to `limit`) until no process of this containerd's is left and the counts hold
    /// still for a second: the starting point.
    fn quiesce(&self, limit: Duration) -> Snapshot {
        let mut last = self.snapshot();
        let deadline = Instant::now() + limit;
        loop {
            std::thread::sleep(Duration::from_secs(1));
            let now = self.snapshot();
            if (now == last && now.processes == 0) || Instant::now() > deadline {
                return now;
            }
            last = now;
        }
    }

    /// Runs a sleeper and checks that the sockets computed for it are there, so that the socket
    /// count really counts this containerd's; stops it again.
    fn probe_socket_names(&self) -> Result<bool, BenchError> {
        let containerd = self.containerd();
        let probe = SocketNames::new(
            &containerd.address(),
            containerd.namespace(),
            [PROBE_ID].into_iter(),
        );
        self.traced.run_sleeper(PROBE_ID, &[]);
        // Shim and proxy socket: both exist once `ctr run -d` has returned.
        let found = wait_for(Duration::from_secs(10), || {
            (probe.count() >= 2).then_some(())
        })
        .is_some();
        let _ = containerd.ctr(&["tasks", "kill", "-s", "SIGKILL", PROBE_ID]);
        let deleted = wait_for(Duration::from_secs(30), || {
            containerd
                .ctr(&["tasks", "delete", PROBE_ID])
                .ok()
                .filter(|out| out.success() || out.stderr.contains("not found"))
        });
        if deleted.is_none() {
            return Err(BenchError::Setup(format!(
                "the probe container {PROBE_ID} could not be deleted after SIGKILL"
            )));
        }
        containerd.ctr_ok(&["containers", "rm", PROBE_ID])?;
        Ok(found)
    }
}

/// Reads the memory of this containerd's proxies and of containerd itself until told to stop.
struct Sampler {
    started: Instant,
    phase: Mutex<&'static str>,
    samples: Mutex<Vec<Sample>>,
    /// Every proxy RSS reading, by phase, for the per-phase medians.
    proxy_rss: Mutex<Vec<(&'static str, f64, u64)>>,
}

fn is_proxy(pid: u32) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|c| c.split(|b| *b == 0).nth(1) == Some(PROXY_SUBCOMMAND.as_bytes()))
        .unwrap_or(false)
}

impl Sampler {
    /// A sampler whose times count from `started`, in the sequential phase.
    fn new(started: Instant) -> Sampler {
        Sampler {
            started,
            phase: Mutex::new("sequential"),
            samples: Mutex::new(Vec::new()),
            proxy_rss: Mutex::new(Vec::new()),
        }
    }

    /// Labels the samples from now on with `phase`.
    fn enter(&self, phase: &'static str) {
        *self.phase.lock().unwrap() = phase;
    }

    fn sample(&self, containerd: &TestContainerd) {
        let phase = *self.phase.lock().unwrap();
        let t_s = self.started.elapsed().as_secs_f64();
        let rss: Vec<u64> = containerd
            .owned_processes()
            .into_iter()
            .filter(|pid| is_proxy(*pid))
            .filter_map(|pid| Memory::of(pid).map(|m| m.vm_rss_kib))
            .collect();
        let pid = containerd.pid();
        self.proxy_rss
            .lock()
            .unwrap()
            .extend(rss.iter().map(|r| (phase, t_s, *r)));
        self.samples.lock().unwrap().push(Sample {
            t_s,
            phase,
            proxies: rss.len() as u32,
            proxy_rss_max_kib: rss.iter().copied().max().unwrap_or(0),
            proxy_rss_sum_kib: rss.iter().sum(),
            containerd_rss_kib: pid.and_then(Memory::of).map_or(0, |m| m.vm_rss_kib),
            containerd_fds: fds(pid),
        });
    }

    /// Each phase's summary, and every sample.
    fn finish(self) -> (Vec<MemorySummary>, Vec<Sample>) {
        let memory = ["sequential", "parallel", "settle"]
            .into_iter()
            .map(|phase| self.summary(phase))
            .collect();
        (memory, self.samples.into_inner().unwrap())
    }

    fn summary(&self, phase: &'static str) -> MemorySummary {
        let samples: Vec<Sample> = self
            .samples
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s.phase == phase)
            .cloned()
            .collect();
        let rss: Vec<u64> = self
            .proxy_rss
            .lock()
            .unwrap()
            .iter()
            .filter(|(p, _, _)| *p == phase)
            .map(|(_, _, r)| *r)
            .collect();
        let tenth = (rss.len() / 10).max(1);
        let median = |values: &[u64]| {
            let mut v = values.to_vec();
            v.sort_unstable();
            v.get(v.len().saturating_sub(1) / 2).copied()
        };
        let containerd: Vec<u64> = samples.iter().map(|s| s.containerd_rss_kib).collect();
        MemorySummary {
            phase,
            samples: samples.len(),
            proxies_peak: samples.iter().map(|s| s.proxies).max().unwrap_or(0),
            proxy_rss_first_kib: median(&rss[..tenth.min(rss.len())]),
            proxy_rss_last_kib: median(&rss[rss.len().saturating_sub(tenth)..]),
            proxy_rss_max_kib: rss.iter().copied().max(),
            containerd_rss_first_kib: containerd.first().copied(),
            containerd_rss_last_kib: containerd.last().copied(),
            containerd_fds_max: samples.iter().map(|s| s.containerd_fds).max().unwrap_or(0),
        }
    }
}

fn phase_of(
    name: &'static str,
    started: Instant,
    results: &[Result<Duration, BenchError>],
) -> SoakPhase {
    let errors: Vec<String> = results
        .iter()
        .filter_map(|r| r.as_ref().err().map(ToString::to_string))
        .collect();
    SoakPhase {
        phase: name,
        containers: results.len(),
        failures: errors.len(),
        wall_s: started.elapsed().as_secs_f64(),
        errors: errors.into_iter().take(5).collect(),
    }
}

/// Runs the soak against a private containerd with the wrapper installed.
pub fn run(config: &SoakConfig, progress: &dyn Fn(&str)) -> Result<SoakReport, BenchError> {
    let started = Instant::now();
    let traced = start_containerd(config, progress)?;
    let ids = SoakIds::new(config);
    let soak = Soak {
        traced: &traced,
        sockets: ids.socket_names(&traced.containerd),
    };
    let notes = warm_up(config, &soak, &ids.warm, progress)?;
    let start = read_baseline(&soak, config.settle())?;
    let sampler = Sampler::new(started);
    let (phases, end) = run_containers(config, &soak, &sampler, &ids.seq, &start.counts, progress);
    let failed: usize = phases.iter().map(|p| p.failures).sum();
    let (spans, spool_end) = read_and_ingest_spool(config, &soak, &ids, failed, progress)?;
    let leftovers = leftovers(&soak, &start.run_dir, &spool_end);
    let counts = counts(failed, &spans, &start, &end, &spool_end);
    let (memory, samples) = sampler.finish();
    let Soak { sockets, .. } = soak;
    stop_containerd(traced, sockets, progress);
    Ok(SoakReport {
        config: config.clone(),
        phases,
        counts,
        memory,
        samples,
        spans: spans.recorded,
        untraced: spans.untraced,
        notes,
        leftovers,
        wall_s: started.elapsed().as_secs_f64(),
    })
}

/// A private containerd with the wrapper installed, spooling to its own spool dir.
fn start_containerd(config: &SoakConfig, progress: &dyn Fn(&str)) -> Result<Traced, BenchError> {
    progress(&format!(
        "starting containerd {} with the wrapper {}",
        config.containerd_version,
        shimtrace_testkit::traced::wrapper_binary().display()
    ));
    Ok(Traced::start_with(
        &config.containerd_version,
        TracedOptions {
            spool: None,
            // State and run dir on tmpfs, as `/run` is on real nodes.
            extra: Options {
                tmpfs_state: true,
                ..Options::default()
            },
        },
    )?)
}

/// The ids of the soak's containers, known up front so that their socket names are too.
struct SoakIds {
    seq: Vec<String>,
    par: Vec<String>,
    warm: Vec<String>,
}

impl SoakIds {
    fn new(config: &SoakConfig) -> SoakIds {
        SoakIds {
            seq: (0..config.sequential)
                .map(|i| format!("soak-seq-{i}"))
                .collect(),
            par: (0..config.parallel)
                .map(|i| format!("soak-par-{i}"))
                .collect(),
            warm: (0..WARMUP).map(|i| format!("soak-warm-{i}")).collect(),
        }
    }

    /// The shim and proxy sockets of every container the soak runs, the probe's included.
    fn socket_names(&self, containerd: &TestContainerd) -> SocketNames {
        SocketNames::new(
            &containerd.address(),
            containerd.namespace(),
            self.seq
                .iter()
                .chain(&self.par)
                .chain(&self.warm)
                .map(String::as_str)
                .chain([PROBE_ID]),
        )
    }
}

/// Warm-up: checks that the socket count sees this containerd's shim sockets (a note for the
/// report if not), then runs a few containers so that first-use costs are not taken for leaks.
fn warm_up(
    config: &SoakConfig,
    soak: &Soak,
    warm_ids: &[String],
    progress: &dyn Fn(&str),
) -> Result<Vec<String>, BenchError> {
    let mut notes = Vec::new();
    progress("warming up: a sleeper (to check the socket names), then a few containers");
    if !soak.probe_socket_names()? {
        notes.push(format!(
            "the shim sockets of containerd {} are not where 1.6/1.7 put them; the socket count \
             covers none of them",
            config.containerd_version
        ));
    }
    for id in warm_ids {
        runs::ctr_run_true(soak.containerd(), id, Variant::Wrapped, &[])?;
    }
    Ok(notes)
}

/// The starting counts, read once the warm-up has quiesced.
struct Baseline {
    counts: Snapshot,
    spool: SpoolLeft,
    run_dir: BTreeSet<String>,
}

/// What every count must come back to: the counts once the warm-up's processes are gone, the
/// spool once ingested, and the run dir's entries (to name what the soak adds to it).
fn read_baseline(soak: &Soak, settle: Duration) -> Result<Baseline, BenchError> {
    let counts = soak.quiesce(settle);
    let spool = drain_spool(&soak.traced.spool, soak.containerd(), settle)?;
    let run_dir = dir_names(&soak.traced.run_dir).into_iter().collect();
    Ok(Baseline {
        counts,
        spool,
        run_dir,
    })
}

/// The soak proper, with the memory sampled throughout: containers one after another, then all
/// at once, then the wait for the counts to settle; the phases and the counts at the end.
fn run_containers(
    config: &SoakConfig,
    soak: &Soak,
    sampler: &Sampler,
    seq_ids: &[String],
    start: &Snapshot,
    progress: &dyn Fn(&str),
) -> (Vec<SoakPhase>, Snapshot) {
    let containerd = soak.containerd();
    let interval = Duration::from_millis(config.sample_interval_ms.max(10));
    let (stop, stopped) = mpsc::channel::<()>();
    std::thread::scope(|scope| {
        scope.spawn(move || loop {
            sampler.sample(containerd);
            match stopped.recv_timeout(interval) {
                Err(mpsc::RecvTimeoutError::Timeout) => continue,
                _ => break,
            }
        });
        let sequential = run_sequential(config, containerd, seq_ids, progress);
        sampler.enter("parallel");
        let parallel = run_parallel(config, containerd, progress);
        sampler.enter("settle");
        progress(&format!(
            "waiting up to {}s for the counts to settle",
            config.settle_s
        ));
        let end = soak.settle(start, config.settle());
        drop(stop);
        (vec![sequential, parallel], end)
    })
}

/// Containers one after another: the steady churn that leaks add up over.
fn run_sequential(
    config: &SoakConfig,
    containerd: &TestContainerd,
    seq_ids: &[String],
    progress: &dyn Fn(&str),
) -> SoakPhase {
    progress(&format!(
        "{} containers one after another",
        config.sequential
    ));
    let phase_started = Instant::now();
    let mut results = Vec::with_capacity(seq_ids.len());
    for (i, id) in seq_ids.iter().enumerate() {
        results.push(runs::ctr_run_true(containerd, id, Variant::Wrapped, &[]));
        if (i + 1) % 100 == 0 {
            let failed = results.iter().filter(|r| r.is_err()).count();
            progress(&format!("  {} done, {failed} failed", i + 1));
        }
    }
    phase_of("sequential", phase_started, &results)
}

/// Containers started all at once: many proxies alive together and containerd under load.
fn run_parallel(
    config: &SoakConfig,
    containerd: &TestContainerd,
    progress: &dyn Fn(&str),
) -> SoakPhase {
    progress(&format!("{} containers at once", config.parallel));
    let round = runs::parallel_round(containerd, Variant::Wrapped, config.parallel, "soak-par");
    SoakPhase {
        phase: "parallel",
        containers: round.containers,
        failures: round.failures,
        wall_s: round.wall_s,
        errors: round.errors,
    }
}

/// The spans the soak's containers left in the spool.
struct SpansSeen {
    recorded: usize,
    dropped: u64,
    /// Containers that ran without a `Create` span.
    untraced: Vec<String>,
}

/// Whether every container that ran was traced and no span was dropped; then the spool ingested
/// as the collector would, and what it still holds.
fn read_and_ingest_spool(
    config: &SoakConfig,
    soak: &Soak,
    ids: &SoakIds,
    failed: usize,
    progress: &dyn Fn(&str),
) -> Result<(SpansSeen, SpoolLeft), BenchError> {
    progress("reading the spool and ingesting it");
    let spool = read_spool(&soak.traced.spool)
        .map_err(|e| BenchError::Setup(format!("reading the soak's spool: {e}")))?;
    let traced_ids: BTreeSet<&str> = spool
        .spans
        .iter()
        .filter(|s| is_method(s, "Create"))
        .filter_map(|s| s.container_id())
        .collect();
    // Only the containers that ran are expected to have spans; which ones failed is not known
    // for the parallel burst, so with failures the check is skipped there.
    let untraced: Vec<String> = ids
        .seq
        .iter()
        .chain(if failed == 0 { &ids.par[..] } else { &[][..] })
        .filter(|id| !traced_ids.contains(id.as_str()))
        .cloned()
        .collect();
    let spool_end = drain_spool(&soak.traced.spool, soak.containerd(), config.settle())?;
    let spans = SpansSeen {
        recorded: spool.spans.len(),
        dropped: spool.dropped,
        untraced,
    };
    Ok((spans, spool_end))
}

/// The first entries behind each count that can miss its start: what was left where.
fn leftovers(
    soak: &Soak,
    run_dir_start: &BTreeSet<String>,
    spool_end: &SpoolLeft,
) -> Vec<Leftovers> {
    [
        Leftovers::of(
            "shim_sockets",
            soak.sockets
                .ours()
                .iter()
                .map(|p| p.display().to_string())
                .collect(),
        ),
        Leftovers::of(
            "run_dir",
            dir_names(&soak.traced.run_dir)
                .into_iter()
                .filter(|n| !run_dir_start.contains(n))
                .collect(),
        ),
        Leftovers::of("spool_files", spool_end.kept.clone()),
        Leftovers::of("spool_files_held", spool_end.held_by_reused_pid.clone()),
        Leftovers::of(
            "processes",
            soak.containerd()
                .owned_processes()
                .iter()
                .map(|pid| format!("{pid} {}", process_name(*pid).unwrap_or_default()))
                .collect(),
        ),
    ]
    .into_iter()
    .flatten()
    .collect()
}

/// The verdict: no failed run, no untraced container, no dropped span, and every count that a
/// container could leak in back at its start.
fn counts(
    failed: usize,
    spans: &SpansSeen,
    baseline: &Baseline,
    end: &Snapshot,
    spool_end: &SpoolLeft,
) -> Vec<Count> {
    let held = |left: &SpoolLeft| left.held_by_reused_pid.len() as u64;
    let (spool_start, start) = (&baseline.spool, &baseline.counts);
    vec![
        Count::checked("failures", "failed runs", 0, failed as u64),
        Count::checked(
            "untraced",
            "containers run without a Create span",
            0,
            spans.untraced.len() as u64,
        ),
        Count::checked("dropped", "spans dropped", 0, spans.dropped),
        Count::checked(
            "processes",
            "processes of this containerd (shims, proxies)",
            start.processes,
            end.processes,
        ),
        Count::checked(
            "shim_sockets",
            "shim and proxy sockets in /run/containerd/s",
            start.shim_sockets,
            end.shim_sockets,
        ),
        Count::checked(
            "run_dir",
            "files in the wrapper's run dir",
            start.run_dir,
            end.run_dir,
        ),
        Count::checked(
            "spool_files",
            "spool files (after ingest)",
            spool_start.entries - held(spool_start),
            spool_end.entries - held(spool_end),
        ),
        Count::context(
            "spool_files_held",
            "spool files kept for a writer pid now reused (context)",
            held(spool_start),
            held(spool_end),
        ),
        Count::checked(
            "containerd_fds",
            "containerd's open descriptors",
            start.containerd_fds,
            end.containerd_fds,
        ),
        Count::checked("tasks", "tasks", start.tasks, end.tasks),
        Count::checked("containers", "containers", start.containers, end.containers),
        Count::checked("bundles", "bundle dirs", start.bundles, end.bundles),
        Count::context(
            "all_sockets",
            "all sockets in /run/containerd/s (machine-wide, context)",
            start.all_sockets,
            end.all_sockets,
        ),
    ]
}

/// Stops containerd, then removes what the soak's shims left in the machine-wide socket dir.
fn stop_containerd(traced: Traced, sockets: SocketNames, progress: &dyn Fn(&str)) {
    progress("stopping containerd");
    drop(traced);
    // Counted above; what the soak's shims left in the machine-wide socket dir goes now (nothing
    // can be listening: their containerd and every process of it are gone).
    sockets.remove_leftovers();
}

/// Ingests the spool into a throwaway store, removing what is finished (as the collector does),
/// until no spool file is left but those held by a reused pid, or `limit` has passed (a file is
/// finished once its writer is gone, and an exited writer may not have been reaped yet).
fn drain_spool(
    spool: &Path,
    containerd: &TestContainerd,
    limit: Duration,
) -> Result<SpoolLeft, BenchError> {
    let work = tempfile::tempdir()
        .map_err(|e| BenchError::Setup(format!("cannot create a temp dir for the store: {e}")))?;
    let store = Store::open(&work.path().join("soak.db"))
        .map_err(|e| BenchError::Setup(format!("opening the soak's store: {e}")))?;
    let mut ingester = Ingester::new(store, spool, true);
    let deadline = Instant::now() + limit;
    loop {
        ingester
            .ingest_all()
            .map_err(|e| BenchError::Setup(format!("ingesting the soak's spool: {e}")))?;
        let names = dir_names(spool);
        // Every writer of this private spool is a process of this containerd's.
        let ours: BTreeSet<u32> = containerd
            .owned_processes()
            .into_iter()
            .chain(containerd.pid())
            .collect();
        let mut left = SpoolLeft {
            entries: names.len() as u64,
            held_by_reused_pid: Vec::new(),
            kept: Vec::new(),
        };
        for name in names {
            let Some(file) = SpoolFileName::parse(&name) else {
                continue;
            };
            match PidNow::of(file.pid) {
                None => left.kept.push(format!("{name} (writer gone)")),
                Some(now) if now.tgid == file.pid && ours.contains(&file.pid) => left
                    .kept
                    .push(format!("{name} (writer {} still running)", now.name)),
                Some(now) => left.held_by_reused_pid.push(format!(
                    "{name} (pid {} is now {})",
                    file.pid,
                    now.describe()
                )),
            }
        }
        if left.kept.is_empty() || Instant::now() > deadline {
            return Ok(left);
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// The command name of a live process.
fn process_name(pid: u32) -> Option<String> {
    PidNow::of(pid).map(|now| now.name)
}

/// What a pid names now: a process, or a thread of one. `/proc/<tid>` exists for threads too, and
/// `kill(tid, 0)` succeeds, so a writer's pid reused as a thread id still looks alive.
struct PidNow {
    pid: u32,
    name: String,
    /// The process the pid belongs to (itself, unless it is a thread).
    tgid: u32,
}

impl PidNow {
    fn of(pid: u32) -> Option<PidNow> {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let field = |key: &str| {
            status.lines().find_map(|line| {
                line.strip_prefix(key)?
                    .strip_prefix(':')
                    .map(|v| v.trim().to_string())
            })
        };
        Some(PidNow {
            pid,
            name: field("Name")?,
            tgid: field("Tgid")?.parse().ok()?,
        })
    }

    fn describe(&self) -> String {
        if self.tgid == self.pid {
            format!("process {}", self.name)
        } else {
            let process = process_name(self.tgid).unwrap_or_else(|| "?".into());
            format!("a thread of {process} (pid {})", self.tgid)
        }
    }
}

/// The counts and the memory, as a table.
pub fn table(report: &SoakReport) -> String {
    let mut out = String::new();
    for phase in &report.phases {
        out += &format!(
            "{:<10} {:>5} containers in {:>7.1}s, {} failed\n",
            phase.phase, phase.containers, phase.wall_s, phase.failures
        );
        for error in &phase.errors {
            out += &format!("    {error}\n");
        }
    }
    out += &format!(
        "\n{:<58} {:>8} {:>8}  {}\n",
        "count", "start", "end", "target: back to start"
    );
    for count in &report.counts {
        let verdict = match count.met {
            Some(true) => "met",
            Some(false) => "MISSED",
            None => "(context)",
        };
        out += &format!(
            "{:<58} {:>8} {:>8}  {verdict}\n",
            count.label, count.start, count.end
        );
    }
    let kib = |v: Option<u64>| v.map_or("-".to_string(), |v| v.to_string());
    out += &format!(
        "\n{:<10} {:>7} {:>8} {:>11} {:>11} {:>11} {:>13} {:>13} {:>8}\n",
        "memory",
        "samples",
        "proxies",
        "proxy KiB",
        "proxy KiB",
        "proxy KiB",
        "containerd",
        "containerd",
        "ctrd fds"
    );
    out += &format!(
        "{:<10} {:>7} {:>8} {:>11} {:>11} {:>11} {:>13} {:>13} {:>8}\n",
        "", "", "peak", "first 10%", "last 10%", "max", "KiB first", "KiB last", "max"
    );
    for m in &report.memory {
        out += &format!(
            "{:<10} {:>7} {:>8} {:>11} {:>11} {:>11} {:>13} {:>13} {:>8}\n",
            m.phase,
            m.samples,
            m.proxies_peak,
            kib(m.proxy_rss_first_kib),
            kib(m.proxy_rss_last_kib),
            kib(m.proxy_rss_max_kib),
            kib(m.containerd_rss_first_kib),
            kib(m.containerd_rss_last_kib),
            m.containerd_fds_max
        );
    }
    if !report.untraced.is_empty() {
        let some: Vec<&str> = report.untraced.iter().take(5).map(String::as_str).collect();
        out += &format!("\nuntraced containers (first few): {}\n", some.join(", "));
    }
    for left in &report.leftovers {
        out += &format!("\nleft behind ({}, {} in all):\n", left.key, left.count);
        for name in &left.first {
            out += &format!("    {name}\n");
        }
    }
    for note in &report.notes {
        out += &format!("\nnote: {note}\n");
    }
    out += &format!(
        "\n{} spans recorded; {:.0}s in all\n",
        report.spans, report.wall_s
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_names_are_the_ones_containerd_1_6_and_the_wrapper_used() {
        // Recorded from containerd 1.6.20 with gRPC address /tmp/fz-cap/c.sock running container
        // fz1 in namespace fz through the wrapper: the runc shim's start printed the first
        // address, the wrapper's start the second.
        let inner = "6af959cdb02a079aedb8f94673960eb41bc4c5a0115a954d57ccff65fd6b3516";
        let proxy = "6d2994fcb3cc62b9a7bb900b9ec958787b86b12443f2a96d973e33959e65d5b1";
        assert_eq!(
            shim_socket_name(Path::new("/tmp/fz-cap/c.sock"), "fz", "fz1"),
            inner
        );
        let names = SocketNames::new(Path::new("/tmp/fz-cap/c.sock"), "fz", ["fz1"].into_iter());
        assert_eq!(
            names.names,
            BTreeSet::from([inner.to_string(), proxy.to_string()])
        );
    }

    #[test]
    fn a_thread_id_is_told_from_a_process() {
        let me = std::process::id();
        let process = PidNow::of(me).unwrap();
        assert_eq!(process.tgid, me);
        assert!(
            process.describe().starts_with("process "),
            "{}",
            process.describe()
        );
        // A thread that stays alive until told, and reports its id.
        let (tx, rx) = mpsc::channel();
        let (done_tx, done_rx) = mpsc::channel::<()>();
        let worker = std::thread::spawn(move || {
            tx.send(nix::unistd::gettid().as_raw() as u32).unwrap();
            let _ = done_rx.recv();
        });
        let live = rx.recv().unwrap();
        let thread = PidNow::of(live).unwrap();
        assert_eq!(thread.tgid, me);
        assert!(
            thread
                .describe()
                .contains(&format!("a thread of {} (pid {me})", process.name)),
            "{}",
            thread.describe()
        );
        drop(done_tx);
        worker.join().unwrap();
    }

    #[test]
    fn only_the_machine_wide_socket_count_may_differ_when_settled() {
        let start = Snapshot {
            processes: 0,
            shim_sockets: 2,
            all_sockets: 9,
            run_dir: 4,
            containerd_fds: 40,
            tasks: 0,
            containers: 0,
            bundles: 0,
        };
        assert!(Snapshot {
            all_sockets: 30,
            ..start
        }
        .settled_like(&start));
        assert!(!Snapshot {
            shim_sockets: 3,
            ..start
        }
        .settled_like(&start));
        assert!(!Snapshot {
            containerd_fds: 41,
            ..start
        }
        .settled_like(&start));
    }

    #[test]
    fn missed_lists_only_checked_counts_off_their_start() {
        let report = SoakReport {
            config: SoakConfig::default(),
            phases: vec![],
            counts: vec![
                Count::checked("a", "a", 1, 1),
                Count::checked("b", "b", 1, 2),
                Count::context("c", "c", 1, 5),
            ],
            memory: vec![],
            samples: vec![],
            spans: 0,
            untraced: vec![],
            notes: vec![],
            leftovers: vec![],
            wall_s: 0.0,
        };
        assert_eq!(report.missed(), ["b"]);
        let table = table(&report);
        assert!(
            table.contains("MISSED") && table.contains("(context)"),
            "{table}"
        );
    }
}
