//! Whole container runs, wrapped and direct: cold starts through `ctr run --rm` and through
//! containerd's API, and bursts of containers started in parallel.

use std::cell::RefCell;
use std::path::Path;
use std::process::Stdio;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde::Serialize;
use shimtrace_collector::stats::{ms, percentile, Summary};
use shimtrace_containerd::{Containerd, PhaseTimes, RunSpec, RUNC_RUNTIME};
use shimtrace_testkit::containerd::{ctr_run_args, RunMode, TestContainerd, CTR_TIMEOUT};
use shimtrace_testkit::traced::TRACED_RUNC;

use crate::BenchError;

/// Through the wrapper (and its proxy) or straight to the runc shim.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Variant {
    Wrapped,
    Direct,
}

impl Variant {
    pub fn runtime(self) -> &'static str {
        match self {
            Variant::Wrapped => TRACED_RUNC.as_str(),
            Variant::Direct => RUNC_RUNTIME,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Variant::Wrapped => "wrapped",
            Variant::Direct => "direct",
        }
    }

    /// Order of the two variants in round `round`: alternating, so that a linear drift and any
    /// "second in the pair" effect fall on both alike.
    pub fn order(round: usize) -> [Variant; 2] {
        if round % 2 == 0 {
            [Variant::Wrapped, Variant::Direct]
        } else {
            [Variant::Direct, Variant::Wrapped]
        }
    }
}

/// `ctr run --rm [--runtime R] EXTRA… --rootfs <rootfs> ID /bin/true` against `containerd`; its
/// wall time. The harness's `ctr` polls for exit every few milliseconds, which would blur
/// millisecond differences, so this waits for the exit directly (still killed after
/// [`CTR_TIMEOUT`]).
pub fn ctr_run_true(
    containerd: &TestContainerd,
    id: &str,
    variant: Variant,
    extra: &[&str],
) -> Result<Duration, BenchError> {
    let mut flags = vec!["--runtime", variant.runtime()];
    flags.extend_from_slice(extra);
    let mut command = containerd.ctr_command();
    command
        .args(ctr_run_args(
            RunMode::Remove,
            &flags,
            &containerd.rootfs(),
            id,
            &["/bin/true"],
        )?)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let describe = || {
        format!(
            "ctr run --rm --runtime {} {id} /bin/true",
            variant.runtime()
        )
    };
    let start = Instant::now();
    let child = command.spawn().map_err(|e| BenchError::Ctr {
        command: describe(),
        problem: format!("cannot start ctr: {e}"),
    })?;
    let pid = child.id();
    let (done, finished) = mpsc::channel();
    std::thread::spawn(move || {
        let output = child.wait_with_output();
        let _ = done.send((output, start.elapsed()));
    });
    match finished.recv_timeout(CTR_TIMEOUT) {
        Ok((Ok(output), elapsed)) if output.status.success() => Ok(elapsed),
        Ok((Ok(output), _)) => Err(BenchError::Ctr {
            command: describe(),
            problem: format!(
                "{}: {}",
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            ),
        }),
        Ok((Err(e), _)) => Err(BenchError::Ctr {
            command: describe(),
            problem: format!("waiting for ctr: {e}"),
        }),
        Err(_) => {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
            Err(BenchError::Ctr {
                command: describe(),
                problem: format!("did not finish within {CTR_TIMEOUT:?}; killed"),
            })
        }
    }
}

/// Runs containers to exit through containerd's gRPC API (the collector's driver).
pub struct ApiRunner {
    runtime: tokio::runtime::Runtime,
    client: Containerd,
    rootfs: std::path::PathBuf,
    io_dir: std::path::PathBuf,
    /// Each run's client-side phases, in run order.
    phases: RefCell<Vec<(Variant, PhaseTimes)>>,
}

impl ApiRunner {
    pub fn connect(containerd: &TestContainerd, io_dir: &Path) -> Result<ApiRunner, BenchError> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| BenchError::Setup(format!("cannot start an async runtime: {e}")))?;
        let client = runtime
            .block_on(Containerd::connect(containerd.address()))?
            .with_namespace(containerd.namespace());
        Ok(ApiRunner {
            runtime,
            client,
            rootfs: containerd.rootfs(),
            io_dir: io_dir.to_path_buf(),
            phases: RefCell::new(Vec::new()),
        })
    }

    /// Creates, starts, waits for and deletes a `/bin/true` container; its wall time.
    pub fn run_true(&self, id: &str, variant: Variant) -> Result<Duration, BenchError> {
        let mut spec = RunSpec::new(id, &self.rootfs, ["/bin/true"], &self.io_dir);
        spec.runtime = variant.runtime().into();
        let start = Instant::now();
        let outcome = self.runtime.block_on(self.client.run_to_exit(&spec))?;
        let elapsed = start.elapsed();
        if outcome.exit_code != 0 {
            return Err(BenchError::Setup(format!(
                "/bin/true in {id} ({}) exited with {}",
                variant.name(),
                outcome.exit_code
            )));
        }
        self.phases.borrow_mut().push((variant, outcome.phases));
        Ok(elapsed)
    }

    /// Where the wrapped runs' extra time goes, phase by phase, skipping the first `warmup` runs
    /// of each variant.
    pub fn phase_breakdown(&self, warmup: usize) -> Vec<PhaseOverhead> {
        phase_breakdown(&self.phases.borrow(), warmup)
    }
}

/// One client-side phase of an API run, wrapped against direct (medians, milliseconds).
#[derive(Debug, Clone, Serialize)]
pub struct PhaseOverhead {
    pub phase: &'static str,
    pub direct_ms: f64,
    pub wrapped_ms: f64,
    pub overhead_ms: f64,
}

/// A phase's name and how to read it from a run.
type Phase = (&'static str, fn(&PhaseTimes) -> Duration);

fn phase_breakdown(runs: &[(Variant, PhaseTimes)], warmup: usize) -> Vec<PhaseOverhead> {
    let phases: [Phase; 6] = [
        ("create container", |p| p.create_container),
        ("create task (shim start + Create)", |p| p.create_task),
        ("start task", |p| p.start_task),
        ("wait for exit", |p| p.wait_exit),
        ("delete task (Delete + shim shutdown)", |p| p.delete_task),
        ("delete container", |p| p.delete_container),
    ];
    let median = |variant: Variant, of: fn(&PhaseTimes) -> Duration| {
        let values: Vec<f64> = runs
            .iter()
            .filter(|(v, _)| *v == variant)
            .skip(warmup)
            .map(|(_, p)| ms(of(p)))
            .collect();
        Summary::of(&values).map_or(f64::NAN, |s| s.p50)
    };
    phases
        .into_iter()
        .map(|(phase, of)| {
            let (direct_ms, wrapped_ms) =
                (median(Variant::Direct, of), median(Variant::Wrapped, of));
            PhaseOverhead {
                phase,
                direct_ms,
                wrapped_ms,
                overhead_ms: wrapped_ms - direct_ms,
            }
        })
        .collect()
}

/// Cold starts of one kind, wrapped against direct (milliseconds).
#[derive(Debug, Clone, Serialize)]
pub struct ColdStarts {
    pub pairs: usize,
    pub direct_ms: Summary,
    pub wrapped_ms: Summary,
    /// Median wrapped / median direct.
    pub median_ratio: f64,
    /// 95 % bootstrap interval of `median_ratio` (pairs resampled): how far noise alone moves it.
    pub median_ratio_ci95: [f64; 2],
    /// Median of the per-pair ratios (less sensitive to drift between pairs).
    pub pair_ratio_median: f64,
    /// Median wrapped − median direct.
    pub median_overhead_ms: f64,
}

/// `warmup` untimed pairs, then `pairs` timed ones, each pair in [`Variant::order`]; `run` gets the
/// variant and a container id unique within this call (prefixed with `prefix`).
pub fn cold_pairs(
    prefix: &str,
    pairs: usize,
    warmup: usize,
    mut run: impl FnMut(Variant, &str) -> Result<Duration, BenchError>,
) -> Result<ColdStarts, BenchError> {
    let (mut direct, mut wrapped) = (Vec::new(), Vec::new());
    for round in 0..warmup + pairs {
        for variant in Variant::order(round) {
            let elapsed = run(variant, &format!("{prefix}-{round}-{}", variant.name()))?;
            if round >= warmup {
                match variant {
                    Variant::Direct => direct.push(ms(elapsed)),
                    Variant::Wrapped => wrapped.push(ms(elapsed)),
                }
            }
        }
    }
    let pair_ratios: Vec<f64> = wrapped.iter().zip(&direct).map(|(w, d)| w / d).collect();
    let summary = |v: &[f64]| {
        Summary::of(v).ok_or_else(|| BenchError::Setup("no cold start measured".into()))
    };
    let (direct_ms, wrapped_ms) = (summary(&direct)?, summary(&wrapped)?);
    Ok(ColdStarts {
        pairs,
        median_ratio: wrapped_ms.p50 / direct_ms.p50,
        median_ratio_ci95: bootstrap_median_ratio_ci95(&wrapped, &direct),
        pair_ratio_median: summary(&pair_ratios)?.p50,
        median_overhead_ms: wrapped_ms.p50 - direct_ms.p50,
        direct_ms,
        wrapped_ms,
    })
}

/// Resamples of the pairs for [`bootstrap_median_ratio_ci95`].
const BOOTSTRAP_RESAMPLES: usize = 2000;

/// The 2.5th and 97.5th percentiles of median(wrapped)/median(direct) over resamples of the pairs
/// (drawn with replacement, a pair kept together so drift stays paired). Seeded: the same runs
/// give the same interval.
fn bootstrap_median_ratio_ci95(wrapped: &[f64], direct: &[f64]) -> [f64; 2] {
    use rand::{rngs::StdRng, Rng, SeedableRng};
    let n = wrapped.len().min(direct.len());
    if n == 0 {
        return [f64::NAN, f64::NAN];
    }
    // The same nearest-rank median as the ratio's own (`Summary::p50`).
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        percentile(v, 50.0)
    };
    let mut rng = StdRng::seed_from_u64(0x5eed);
    let (mut w, mut d) = (Vec::with_capacity(n), Vec::with_capacity(n));
    let mut ratios: Vec<f64> = (0..BOOTSTRAP_RESAMPLES)
        .map(|_| {
            w.clear();
            d.clear();
            for _ in 0..n {
                let i = rng.random_range(0..n);
                w.push(wrapped[i]);
                d.push(direct[i]);
            }
            median(&mut w) / median(&mut d)
        })
        .collect();
    ratios.sort_by(f64::total_cmp);
    [percentile(&ratios, 2.5), percentile(&ratios, 97.5)]
}

/// One burst of containers started at once.
#[derive(Debug, Clone, Serialize)]
pub struct ParallelRound {
    pub variant: Variant,
    pub containers: usize,
    pub failures: usize,
    /// From the first `ctr` started to the last one done.
    pub wall_s: f64,
    /// The slowest single container.
    pub slowest_s: f64,
    /// The first few failures, verbatim.
    pub errors: Vec<String>,
}

/// Starts `containers` `ctr run --rm … /bin/true` at once, one thread each, and waits for all.
pub fn parallel_round(
    containerd: &TestContainerd,
    variant: Variant,
    containers: usize,
    prefix: &str,
) -> ParallelRound {
    let start = Instant::now();
    let results: Vec<Result<Duration, BenchError>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..containers)
            .map(|i| {
                let id = format!("{prefix}-{i}");
                scope.spawn(move || ctr_run_true(containerd, &id, variant, &[]))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(BenchError::Setup("a run thread panicked".into())))
            })
            .collect()
    });
    let wall = start.elapsed();
    let errors: Vec<String> = results
        .iter()
        .filter_map(|r| r.as_ref().err().map(ToString::to_string))
        .collect();
    ParallelRound {
        variant,
        containers,
        failures: errors.len(),
        wall_s: wall.as_secs_f64(),
        slowest_s: results
            .iter()
            .filter_map(|r| r.as_ref().ok())
            .max()
            .map(Duration::as_secs_f64)
            .unwrap_or(f64::NAN),
        errors: errors.into_iter().take(5).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_alternate_order_and_skip_warmup() {
        let mut seen = Vec::new();
        let result = cold_pairs("c", 4, 1, |variant, id| {
            seen.push((variant, id.to_string()));
            Ok(Duration::from_millis(match variant {
                Variant::Direct => 100,
                Variant::Wrapped => 110,
            }))
        })
        .unwrap();
        assert_eq!(seen.len(), 10);
        assert_eq!(seen[0], (Variant::Wrapped, "c-0-wrapped".to_string()));
        assert_eq!(seen[2].0, Variant::Direct);
        assert_eq!(seen[3].0, Variant::Wrapped);
        assert_eq!(result.direct_ms.n, 4);
        assert!((result.median_ratio - 1.1).abs() < 1e-9);
        assert!((result.pair_ratio_median - 1.1).abs() < 1e-9);
        assert!((result.median_overhead_ms - 10.0).abs() < 1e-9);
    }

    #[test]
    fn phase_breakdown_compares_medians_after_the_warmup() {
        let run = |variant, create_task_ms| {
            let phases = PhaseTimes {
                create_task: Duration::from_millis(create_task_ms),
                ..PhaseTimes::default()
            };
            (variant, phases)
        };
        let runs = [
            run(Variant::Wrapped, 500),
            run(Variant::Direct, 400),
            run(Variant::Wrapped, 12),
            run(Variant::Direct, 10),
            run(Variant::Direct, 10),
            run(Variant::Wrapped, 12),
        ];
        let breakdown = phase_breakdown(&runs, 1);
        let create_task = breakdown
            .iter()
            .find(|p| p.phase.starts_with("create task"))
            .unwrap();
        assert_eq!(
            (create_task.direct_ms, create_task.wrapped_ms),
            (10.0, 12.0)
        );
        assert!((create_task.overhead_ms - 2.0).abs() < 1e-9);
        assert_eq!(breakdown.len(), 6);
    }

    #[test]
    fn the_bootstrap_interval_brackets_the_ratio_and_narrows_with_less_noise() {
        let direct: Vec<f64> = (0..40).map(|i| 100.0 + (i % 7) as f64 * 3.0).collect();
        let noisy: Vec<f64> = direct
            .iter()
            .enumerate()
            .map(|(i, d)| d * 1.05 + (i % 5) as f64 * 4.0 - 8.0)
            .collect();
        let steady: Vec<f64> = direct.iter().map(|d| d * 1.05).collect();
        let [lo, hi] = bootstrap_median_ratio_ci95(&noisy, &direct);
        let ratio = Summary::of(&noisy).unwrap().p50 / Summary::of(&direct).unwrap().p50;
        assert!(lo <= ratio && ratio <= hi, "{lo} {ratio} {hi}");
        let [slo, shi] = bootstrap_median_ratio_ci95(&steady, &direct);
        assert!(
            (slo - 1.05).abs() < 1e-9 && (shi - 1.05).abs() < 1e-9,
            "{slo} {shi}"
        );
        assert!(hi - lo > shi - slo);
        assert_eq!(bootstrap_median_ratio_ci95(&noisy, &direct), [lo, hi]);
        assert!(bootstrap_median_ratio_ci95(&[], &[])[0].is_nan());
    }

    #[test]
    fn a_failed_run_ends_the_pairs_with_its_error() {
        let err = cold_pairs("c", 3, 0, |_, id| {
            Err(BenchError::Setup(format!("{id} failed")))
        })
        .unwrap_err();
        assert!(err.to_string().contains("c-0-wrapped failed"));
    }
}
