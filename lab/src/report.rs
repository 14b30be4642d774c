//! The lab's results and their three renderings: `report.json` (everything, raw runs included),
//! `report.md` and a self-contained `report.html` with inline SVG charts. The trade-offs and the
//! recommendation are derived from the measured numbers.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use shimtrace_collector::stats::Summary;

use crate::isolation::{isolation_scores, IsolationRow};

/// Everything one lab run produced.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LabReport {
    pub format_version: u32,
    pub generated_unix_nanos: u64,
    pub setup: Setup,
    pub profiles: Vec<ProfileResult>,
    pub host_probe: Value,
    pub isolation: Vec<IsolationRow>,
    pub tradeoffs: Vec<String>,
    pub recommendation: Vec<String>,
    /// Problems met on the way (a profile that failed, a port in use, …), one line each.
    pub errors: Vec<String>,
}

/// How the lab ran.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Setup {
    pub host_kernel: String,
    pub host_cpu: String,
    pub containerd_version: String,
    pub containerd_address: String,
    /// The lab started its own containerd because none answered at `--address`.
    pub private_containerd: bool,
    /// The runc-shim profiles ran through the shimtrace wrapper.
    pub traced: bool,
    pub spool_dir: String,
    pub runs: usize,
    pub requests: usize,
    pub namespace: String,
    /// The containerd image every profile ran (`--image`), instead of the built busybox rootfs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// What could not be measured in that image, and the cold-start command used.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub image_notes: Vec<String>,
    /// Spans sent to the OTLP endpoint given with `--otlp`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub otlp_exported: Option<usize>,
}

/// One profile's results.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ProfileResult {
    pub name: String,
    pub runtime: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime_path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub binary_name: Option<String>,
    /// `ok`, `skipped` or `failed`.
    pub status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// What the probe saw inside this profile's container.
    #[serde(default)]
    pub probe: Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cold_start: Option<ColdStart>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpResult>,
    /// Every cold-start run, raw.
    #[serde(default)]
    pub runs: Vec<RunRecord>,
}

/// Cold-start statistics of one profile (milliseconds).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ColdStart {
    pub ok_runs: usize,
    pub failed_runs: usize,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wall: Option<Summary>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to_workload: Option<Summary>,
    /// Client-side phases: create_container, create_task, start_task, wait_exit, delete_task,
    /// delete_container.
    pub phases: BTreeMap<String, Summary>,
    /// Shim spans by name (from the spool), when the profile ran through the wrapper.
    pub spans: BTreeMap<String, SpanStats>,
    /// VM runtimes: the guest kernel's last dmesg timestamp (its in-kernel boot time), seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guest_boot_seconds: Option<f64>,
}

/// One cold-start run.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RunRecord {
    pub round: usize,
    pub id: String,
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub client_start_unix_nanos: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wall_ms: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to_workload_ms: Option<f64>,
    pub phases_ms: BTreeMap<String, f64>,
    /// Shim spans of this container by name (a repeated name: first start, summed duration).
    pub spans: BTreeMap<String, SpanTiming>,
}

/// When a shim span started (ms after the client's first call) and how long it took.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct SpanTiming {
    pub start_ms: f64,
    pub duration_ms: f64,
}

/// A span name's start offsets and durations over the runs (ms).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SpanStats {
    pub start: Summary,
    pub duration: Summary,
}

/// Served latency of one profile.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct HttpResult {
    pub port: u16,
    pub requests: usize,
    pub errors: usize,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency: Option<Summary>,
    /// p50 and p99 relative to runc's (1.0 = same).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p50_vs_runc: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p99_vs_runc: Option<f64>,
    /// Time from the client's request to the server answering its first GET.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_ms: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Every measured latency, raw.
    #[serde(default)]
    pub samples_ms: Vec<f64>,
}

fn f(v: f64) -> String {
    if v.is_nan() {
        "n/a".into()
    } else if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

fn opt(v: Option<f64>) -> String {
    v.map(f).unwrap_or_else(|| "n/a".into())
}

fn md_cell(text: &str) -> String {
    text.replace('|', "\\|").replace('\n', " ")
}

impl LabReport {
    fn ok_profiles(&self) -> impl Iterator<Item = &ProfileResult> {
        self.profiles.iter().filter(|p| p.status == "ok")
    }

    fn profile(&self, name: &str) -> Option<&ProfileResult> {
        self.profiles.iter().find(|p| p.name == name)
    }

    /// Fills `tradeoffs` and `recommendation` from the measured numbers.
    pub fn derive_conclusions(&mut self) {
        let scores = isolation_scores(&self.isolation);
        let wall_p50 = |p: &ProfileResult| p.cold_start.as_ref()?.wall.as_ref().map(|s| s.p50);
        let http = |p: &ProfileResult| p.http.as_ref()?.latency.clone();
        let kernel_differs = |name: &str| {
            self.isolation
                .iter()
                .find(|r| r.key == "kernel_release")
                .and_then(|r| r.hides_host.get(name).copied())
                .unwrap_or(false)
        };
        let measured: Vec<&ProfileResult> = self
            .ok_profiles()
            .filter(|p| wall_p50(p).is_some())
            .collect();
        let mut tradeoffs = Vec::new();
        let mut recommendation = Vec::new();
        if measured.is_empty() {
            tradeoffs
                .push("No profile completed a cold start, so there is nothing to compare.".into());
            recommendation.push("Fix the errors listed above and run the lab again.".into());
            self.tradeoffs = tradeoffs;
            self.recommendation = recommendation;
            return;
        }
        let fastest = measured
            .iter()
            .min_by(|a, b| wall_p50(a).unwrap().total_cmp(&wall_p50(b).unwrap()))
            .copied()
            .unwrap();
        let most_isolated = measured
            .iter()
            .max_by_key(|p| {
                (
                    scores.get(&p.name).copied().unwrap_or(0),
                    usize::from(kernel_differs(&p.name)),
                )
            })
            .copied()
            .unwrap();
        let baseline = self
            .profile("runc")
            .filter(|p| wall_p50(p).is_some())
            .unwrap_or(fastest);
        let base_wall = wall_p50(baseline).unwrap();
        let rows = self.isolation.len();
        for p in &measured {
            let wall = wall_p50(p).unwrap();
            let score = scores.get(&p.name).copied().unwrap_or(0);
            let mut line = format!("{}: cold start p50 {} ms", p.name, f(wall));
            if p.name != baseline.name {
                let _ = write!(
                    line,
                    " ({:+.0} ms, {:.2}× {})",
                    wall - base_wall,
                    wall / base_wall,
                    baseline.name
                );
            }
            if let Some(tw) = p.cold_start.as_ref().and_then(|c| c.to_workload.as_ref()) {
                let _ = write!(
                    line,
                    "; workload's first instruction after {} ms",
                    f(tw.p50)
                );
            }
            if let Some(lat) = http(p) {
                let _ = write!(line, "; HTTP p50 {} ms, p99 {} ms", f(lat.p50), f(lat.p99));
                if let Some(r) = p.http.as_ref().and_then(|h| h.p99_vs_runc) {
                    if p.name != "runc" {
                        let _ = write!(line, " ({r:.2}× runc at p99)");
                    }
                }
            }
            if let Some(h) = p.http.as_ref().filter(|h| h.errors > 0 && h.requests > 0) {
                let _ = write!(
                    line,
                    "; {:.1}% of HTTP requests failed",
                    h.errors as f64 * 100.0 / h.requests as f64
                );
            }
            let _ = write!(
                line,
                "; hides the host in {score} of {rows} probes, {}.",
                if kernel_differs(&p.name) {
                    "with a kernel of its own"
                } else {
                    "sharing the host kernel"
                }
            );
            tradeoffs.push(line);
        }
        if most_isolated.name != fastest.name {
            let iso_wall = wall_p50(most_isolated).unwrap();
            let fast_wall = wall_p50(fastest).unwrap();
            let (iso_score, fast_score) = (
                scores.get(&most_isolated.name).copied().unwrap_or(0),
                scores.get(&fastest.name).copied().unwrap_or(0),
            );
            let own_kernel = kernel_differs(&most_isolated.name) && !kernel_differs(&fastest.name);
            let isolation = if iso_score > fast_score {
                format!(
                    "{} hides the host in {iso_score} of {rows} probes against {}'s {fast_score}{}",
                    most_isolated.name,
                    fastest.name,
                    if own_kernel {
                        ", above all by running on a kernel of its own"
                    } else {
                        ""
                    }
                )
            } else {
                format!(
                    "{} hides the host in as many probes as {} ({iso_score} of {rows}){}",
                    most_isolated.name,
                    fastest.name,
                    if own_kernel {
                        " but runs on a kernel of its own, the one boundary a shared-kernel runtime cannot offer"
                    } else {
                        ""
                    }
                )
            };
            let mut line = format!(
                "Isolation costs start-up time here: {isolation}, and starts {:.1}× slower ({} vs {} ms p50)",
                iso_wall / fast_wall,
                f(iso_wall),
                f(fast_wall),
            );
            if let (Some(a), Some(b)) = (http(most_isolated), http(fastest)) {
                let p50 = a.p50 / b.p50;
                let p99 = a.p99 / b.p99;
                let _ = write!(
                    line,
                    "; once running it serves HTTP at {p50:.2}× the p50 and {p99:.2}× the p99 latency"
                );
                if p50 < 1.5 {
                    line.push_str(", so the steady-state cost is small next to the start-up cost");
                } else {
                    line.push_str(", so the cost persists after start-up: every request pays it");
                }
            }
            line.push('.');
            tradeoffs.push(line);
        } else {
            tradeoffs.push(format!(
                "{} is both the fastest to start and the most isolated of the profiles measured here.",
                fastest.name
            ));
        }
        for p in self.profiles.iter().filter(|p| p.status != "ok") {
            tradeoffs.push(format!(
                "{} was not measured: {}.",
                p.name,
                p.reason.as_deref().unwrap_or("unknown reason")
            ));
        }

        if most_isolated.name != fastest.name {
            let iso_wall = wall_p50(most_isolated).unwrap();
            let fast_wall = wall_p50(fastest).unwrap();
            recommendation.push(format!(
                "Untrusted or multi-tenant code: use {}{}; it adds about {:.0} ms per container start on this machine.",
                most_isolated.name,
                if kernel_differs(&most_isolated.name) {
                    " (its system calls never reach the host kernel directly)"
                } else {
                    ""
                },
                iso_wall - fast_wall
            ));
            let serve_cost = match (http(most_isolated), http(fastest)) {
                (Some(a), Some(b)) => Some(a.p99 / b.p99),
                _ => None,
            };
            recommendation.push(format!(
                "Trusted, latency-sensitive or short-lived workloads: use {} ({} ms cold start p50{}).",
                fastest.name,
                f(fast_wall),
                match serve_cost {
                    Some(r) if r >= 2.0 => format!(
                        "; {} would multiply HTTP p99 latency by {r:.1}",
                        most_isolated.name
                    ),
                    Some(r) if r >= 1.5 => format!(
                        "; {} would add {:.0}% at HTTP p99",
                        most_isolated.name,
                        (r - 1.0) * 100.0
                    ),
                    Some(r) => format!(
                        "; for long-running services {} costs only {:.0}% at HTTP p99, so prefer isolation there",
                        most_isolated.name,
                        (r - 1.0).max(0.0) * 100.0
                    ),
                    None => String::new(),
                }
            ));
            if let Some(h) = most_isolated
                .http
                .as_ref()
                .filter(|h| h.errors > 0 && h.requests > 0)
            {
                let clean = fastest.http.as_ref().is_some_and(|h| h.errors == 0);
                recommendation.push(format!(
                    "Before serving with {}, check its networking: {:.1}% of requests to busybox httpd failed under it{}.",
                    most_isolated.name,
                    h.errors as f64 * 100.0 / h.requests as f64,
                    if clean {
                        format!(" against none under {}", fastest.name)
                    } else {
                        String::new()
                    }
                ));
            }
            if iso_wall / fast_wall >= 2.0 {
                recommendation.push(format!(
                    "Where containers are created per request (functions, CI jobs), {}'s {:.1}× start-up time dominates; keep warm pools or use {} for trusted jobs.",
                    most_isolated.name,
                    iso_wall / fast_wall,
                    fastest.name
                ));
            }
        } else {
            recommendation.push(format!(
                "Use {}: it was fastest and most isolated in this run.",
                fastest.name
            ));
        }
        if let Some(kata) = self
            .profiles
            .iter()
            .find(|p| p.name == "kata" && p.status != "ok")
        {
            recommendation.push(format!(
                "A VM-based runtime (Kata) could not be measured here ({}); run the lab where it is installed to weigh hardware isolation against these numbers.",
                kata.reason.as_deref().unwrap_or("not available")
            ));
        }
        self.tradeoffs = tradeoffs;
        self.recommendation = recommendation;
    }

    /// The Markdown report.
    pub fn to_markdown(&self) -> String {
        let mut md = String::new();
        let s = &self.setup;
        let _ = writeln!(md, "# shimtrace lab report\n");
        let _ = writeln!(md, "## Setup\n");
        let _ = writeln!(md, "- Host kernel: {}", s.host_kernel);
        let _ = writeln!(md, "- Host CPU: {}", s.host_cpu);
        let _ = writeln!(
            md,
            "- containerd {} at `{}`{}",
            s.containerd_version,
            s.containerd_address,
            if s.private_containerd {
                " (private instance started by the lab)"
            } else {
                ""
            }
        );
        let _ = writeln!(
            md,
            "- Through the shimtrace wrapper: {}{}",
            if s.traced {
                "yes"
            } else {
                "no (plain runtimes; no shim spans)"
            },
            if s.traced {
                format!(", spool `{}`", s.spool_dir)
            } else {
                String::new()
            }
        );
        match &s.image {
            Some(image) => {
                let _ = writeln!(
                    md,
                    "- Workload image: `{image}` (from containerd, `--image`)"
                );
                for note in &s.image_notes {
                    let _ = writeln!(md, "  - {note}");
                }
            }
            None => {
                let _ = writeln!(
                    md,
                    "- Workload rootfs: busybox-static + the shimtrace probe"
                );
            }
        }
        if let Some(sent) = s.otlp_exported {
            let _ = writeln!(md, "- {sent} shim spans sent over OTLP");
        }
        let _ = writeln!(
            md,
            "- {} cold-start runs per profile, interleaved; {} HTTP requests per profile\n",
            s.runs, s.requests
        );

        let _ = writeln!(md, "## Profiles\n");
        let _ = writeln!(
            md,
            "| Profile | Runtime | OCI binary | Status |\n|---|---|---|---|"
        );
        for p in &self.profiles {
            let status = match &p.reason {
                Some(r) => format!("{}: {}", p.status, r),
                None => p.status.clone(),
            };
            let _ = writeln!(
                md,
                "| {} | `{}`{} | {} | {} |",
                p.name,
                p.runtime,
                p.runtime_path
                    .as_deref()
                    .map(|r| format!(" via `{r}`"))
                    .unwrap_or_default(),
                p.binary_name
                    .as_deref()
                    .map(|b| format!("`{b}`"))
                    .unwrap_or_else(|| "default".into()),
                md_cell(&status)
            );
        }

        let _ = writeln!(md, "\n## Cold start\n");
        let _ = writeln!(
            md,
            "Client-observed wall time from CreateContainer to the container being deleted, and \
             to-workload time (the probe's first CLOCK_REALTIME reading minus the client's start), in ms.\n"
        );
        let _ = writeln!(
            md,
            "| Profile | ok/failed | wall p50 | wall p90 | wall p99 | wall max | to-workload p50 | to-workload p90 |\n|---|---|---|---|---|---|---|---|"
        );
        for p in self.ok_profiles() {
            let Some(c) = &p.cold_start else { continue };
            let w = c.wall.as_ref();
            let t = c.to_workload.as_ref();
            let _ = writeln!(
                md,
                "| {} | {}/{} | {} | {} | {} | {} | {} | {} |",
                p.name,
                c.ok_runs,
                c.failed_runs,
                opt(w.map(|s| s.p50)),
                opt(w.map(|s| s.p90)),
                opt(w.map(|s| s.p99)),
                opt(w.map(|s| s.max)),
                opt(t.map(|s| s.p50)),
                opt(t.map(|s| s.p90)),
            );
        }
        let _ = writeln!(md, "\n### Phases (client side, p50 ms)\n");
        let phase_names = [
            "create_container",
            "create_task",
            "start_task",
            "wait_exit",
            "delete_task",
            "delete_container",
        ];
        let _ = writeln!(
            md,
            "| Profile | {} | sum | wall |\n|---|{}---|---|",
            phase_names.join(" | "),
            "---|".repeat(phase_names.len())
        );
        for p in self.ok_profiles() {
            let Some(c) = &p.cold_start else { continue };
            let values: Vec<f64> = phase_names
                .iter()
                .map(|n| c.phases.get(*n).map(|s| s.p50).unwrap_or(f64::NAN))
                .collect();
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} |",
                p.name,
                values.iter().map(|v| f(*v)).collect::<Vec<_>>().join(" | "),
                f(values.iter().filter(|v| v.is_finite()).sum()),
                opt(c.wall.as_ref().map(|s| s.p50))
            );
        }
        let _ = writeln!(
            md,
            "\n### Shim spans (ms; start is after the client's first call)\n"
        );
        let mut any_spans = false;
        for p in self.ok_profiles() {
            let Some(c) = &p.cold_start else { continue };
            if c.spans.is_empty() {
                continue;
            }
            any_spans = true;
            let _ = writeln!(
                md,
                "**{}**\n\n| Span | n | starts at p50 | duration p50 | duration p90 | duration max |\n|---|---|---|---|---|---|",
                p.name
            );
            // In the order they happen: by median start after the client's first call.
            let mut ordered: Vec<(&String, &SpanStats)> = c.spans.iter().collect();
            ordered.sort_by(|a, b| a.1.start.p50.total_cmp(&b.1.start.p50));
            for (name, stats) in ordered {
                let d = &stats.duration;
                let _ = writeln!(
                    md,
                    "| `{}` | {} | {} | {} | {} | {} |",
                    name,
                    d.n,
                    f(stats.start.p50),
                    f(d.p50),
                    f(d.p90),
                    f(d.max)
                );
            }
            let _ = writeln!(md);
        }
        if !any_spans {
            let _ = writeln!(
                md,
                "No shim spans were recorded: the profiles ran {}.\n",
                if s.traced {
                    "through the wrapper but the spool held no spans for these containers"
                } else {
                    "on plain runtimes (install the shimtrace wrapper to see them)"
                }
            );
        }
        for p in self.ok_profiles() {
            if let Some(boot) = p.cold_start.as_ref().and_then(|c| c.guest_boot_seconds) {
                let _ = writeln!(
                    md,
                    "- {}: guest kernel boot (last dmesg timestamp) {:.3} s",
                    p.name, boot
                );
            }
        }

        let _ = writeln!(md, "\n## Isolation\n");
        let names: Vec<&str> = self.ok_profiles().map(|p| p.name.as_str()).collect();
        let _ = writeln!(
            md,
            "| Property | host | {} | What a difference means |\n|---|---|{}---|",
            names.join(" | "),
            "---|".repeat(names.len())
        );
        for row in &self.isolation {
            let cells: Vec<String> = names
                .iter()
                .map(|n| {
                    let v = row.values.get(*n).cloned().unwrap_or_else(|| "n/a".into());
                    let mark = match row.hides_host.get(*n) {
                        Some(true) => " (differs)",
                        Some(false) => " (same as host)",
                        None => "",
                    };
                    md_cell(&format!("{v}{mark}"))
                })
                .collect();
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} |",
                row.label,
                md_cell(&row.host),
                cells.join(" | "),
                md_cell(&row.meaning)
            );
        }
        let scores = isolation_scores(&self.isolation);
        let _ = writeln!(
            md,
            "\nProperties hiding the host, of {}: {}",
            self.isolation.len(),
            names
                .iter()
                .map(|n| format!("{n} {}", scores.get(*n).copied().unwrap_or(0)))
                .collect::<Vec<_>>()
                .join(", ")
        );

        let _ = writeln!(md, "\n## Served latency\n");
        let _ = writeln!(
            md,
            "busybox httpd inside each profile's container on the host network, {} sequential GETs \
             (new connection each) from the lab over loopback, in ms. Failed requests are counted, \
             not retried, and not in the percentiles.\n",
            s.requests
        );
        let _ = writeln!(
            md,
            "| Profile | ok/errors | p50 | p90 | p99 | max | p50 vs runc | p99 vs runc |\n|---|---|---|---|---|---|---|---|"
        );
        for p in self.ok_profiles() {
            let Some(h) = &p.http else { continue };
            match &h.latency {
                Some(l) => {
                    let _ = writeln!(
                        md,
                        "| {} | {}/{} | {} | {} | {} | {} | {} | {} |",
                        p.name,
                        l.n,
                        h.errors,
                        f(l.p50),
                        f(l.p90),
                        f(l.p99),
                        f(l.max),
                        h.p50_vs_runc
                            .map(|r| format!("{r:.2}×"))
                            .unwrap_or_else(|| "n/a".into()),
                        h.p99_vs_runc
                            .map(|r| format!("{r:.2}×"))
                            .unwrap_or_else(|| "n/a".into()),
                    );
                }
                None => {
                    let _ = writeln!(
                        md,
                        "| {} | 0/{} | n/a | n/a | n/a | n/a | n/a | n/a |",
                        p.name, h.errors
                    );
                }
            }
        }

        let _ = writeln!(md, "\n## Trade-offs\n");
        for line in &self.tradeoffs {
            let _ = writeln!(md, "- {line}");
        }
        let _ = writeln!(md, "\n## Recommendation\n");
        for line in &self.recommendation {
            let _ = writeln!(md, "- {line}");
        }
        if !self.errors.is_empty() {
            let _ = writeln!(md, "\n## Errors\n");
            for line in &self.errors {
                let _ = writeln!(md, "- {}", md_cell(line));
            }
        }
        let _ = writeln!(
            md,
            "\n## Raw data\n\nEvery run (ids, timestamps, phases, spans), every HTTP latency sample and \
             every probe output are in `report.json`; task outputs are under `work/io/`{}.",
            if s.traced {
                format!(", the shims' span spool in `{}`", s.spool_dir)
            } else {
                String::new()
            }
        );
        md
    }

    /// The HTML report: the Markdown's content as tables plus SVG bar charts, no external resources.
    pub fn to_html(&self) -> String {
        let mut html = String::new();
        html.push_str(
            "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>shimtrace lab report</title>\n<style>\
             body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1100px;color:#222}\
             table{border-collapse:collapse;margin:1em 0;font-size:14px}td,th{border:1px solid #ccc;padding:4px 8px;vertical-align:top}\
             th{background:#f3f3f3}code{background:#f6f6f6}.same{color:#a33}.diff{color:#272}svg text{font-size:12px}\
             </style></head><body>\n",
        );
        let md = self.to_markdown();
        // Charts first, then the tables rendered from the Markdown.
        let cold: Vec<(String, f64, f64)> = self
            .ok_profiles()
            .filter_map(|p| {
                let c = p.cold_start.as_ref()?;
                Some((
                    p.name.clone(),
                    c.wall.as_ref()?.p50,
                    c.to_workload.as_ref().map(|t| t.p50).unwrap_or(f64::NAN),
                ))
            })
            .collect();
        let http: Vec<(String, f64, f64)> = self
            .ok_profiles()
            .filter_map(|p| {
                let l = p.http.as_ref()?.latency.as_ref()?;
                Some((p.name.clone(), l.p50, l.p99))
            })
            .collect();
        let mut in_table = false;
        let mut in_list = false;
        let mut header_done = false;
        for line in md.lines() {
            if line.starts_with('|') {
                let cells: Vec<String> = split_md_row(line);
                if cells.iter().all(|c| c.chars().all(|ch| ch == '-')) {
                    header_done = true;
                    continue;
                }
                if !in_table {
                    html.push_str("<table>\n");
                    in_table = true;
                    header_done = false;
                }
                let tag = if header_done { "td" } else { "th" };
                html.push_str("<tr>");
                for c in cells {
                    let class = if c.ends_with("(same as host)") {
                        " class=\"same\""
                    } else if c.ends_with("(differs)") {
                        " class=\"diff\""
                    } else {
                        ""
                    };
                    let _ = write!(html, "<{tag}{class}>{}</{tag}>", inline(&c));
                }
                html.push_str("</tr>\n");
                continue;
            }
            if in_table {
                html.push_str("</table>\n");
                in_table = false;
            }
            let is_item = line.starts_with("- ");
            if is_item && !in_list {
                html.push_str("<ul>\n");
                in_list = true;
            } else if !is_item && in_list {
                html.push_str("</ul>\n");
                in_list = false;
            }
            if let Some(h) = line.strip_prefix("### ") {
                let _ = writeln!(html, "<h3>{}</h3>", esc(h));
                if h.starts_with("Shim spans") {
                    for p in self.ok_profiles() {
                        if let Some(c) = p.cold_start.as_ref().filter(|c| !c.spans.is_empty()) {
                            html.push_str(&waterfall(&p.name, c));
                        }
                    }
                }
            } else if let Some(h) = line.strip_prefix("## ") {
                let _ = writeln!(html, "<h2>{}</h2>", esc(h));
                if h == "Cold start" && !cold.is_empty() {
                    html.push_str(&bar_chart(
                        "Cold start p50 (ms): wall and to-workload",
                        &cold,
                        ("wall", "to-workload"),
                    ));
                }
                if h == "Served latency" && !http.is_empty() {
                    html.push_str(&bar_chart(
                        "HTTP latency (ms): p50 and p99",
                        &http,
                        ("p50", "p99"),
                    ));
                }
            } else if let Some(h) = line.strip_prefix("# ") {
                let _ = writeln!(html, "<h1>{}</h1>", esc(h));
            } else if let Some(item) = line.strip_prefix("- ") {
                let _ = writeln!(html, "<li>{}</li>", inline(item));
            } else if !line.trim().is_empty() {
                let _ = writeln!(html, "<p>{}</p>", inline(line));
            }
        }
        if in_table {
            html.push_str("</table>\n");
        }
        if in_list {
            html.push_str("</ul>\n");
        }
        html.push_str("</body></html>\n");
        html
    }
}

fn split_md_row(line: &str) -> Vec<String> {
    let inner = line.trim().trim_start_matches('|').trim_end_matches('|');
    let mut cells = Vec::new();
    let mut cell = String::new();
    let mut chars = inner.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' if chars.peek() == Some(&'|') => {
                cell.push('|');
                chars.next();
            }
            '|' => cells.push(std::mem::take(&mut cell).trim().to_string()),
            other => cell.push(other),
        }
    }
    cells.push(cell.trim().to_string());
    cells
}

fn esc(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Escapes text and renders `code` and **bold** spans.
fn inline(text: &str) -> String {
    let mut out = String::new();
    for (i, part) in esc(text).split('`').enumerate() {
        if i % 2 == 1 {
            let _ = write!(out, "<code>{part}</code>");
        } else {
            let mut bold = false;
            for (j, piece) in part.split("**").enumerate() {
                if j > 0 {
                    out.push_str(if bold { "</b>" } else { "<b>" });
                    bold = !bold;
                }
                out.push_str(piece);
            }
            if bold {
                out.push_str("</b>");
            }
        }
    }
    out
}

/// A cold-start waterfall: each shim span at its median start offset with its median duration, with
/// the to-workload and wall medians as markers.
fn waterfall(profile: &str, cold: &ColdStart) -> String {
    let mut spans: Vec<(&String, &SpanStats)> = cold.spans.iter().collect();
    spans.sort_by(|a, b| a.1.start.p50.total_cmp(&b.1.start.p50));
    let wall = cold.wall.as_ref().map(|w| w.p50).unwrap_or(0.0);
    let to_workload = cold.to_workload.as_ref().map(|t| t.p50);
    let end = spans
        .iter()
        .map(|(_, s)| s.start.p50 + s.duration.p50)
        .fold(wall, f64::max)
        .max(1e-9);
    let (left, width, row_h) = (260.0, 560.0, 16.0);
    let height = 46.0 + spans.len() as f64 * row_h;
    let x = |ms: f64| left + ms.max(0.0) / end * width;
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{}\" height=\"{height}\" role=\"img\" aria-label=\"{} cold-start waterfall\">\
         <text x=\"0\" y=\"14\" font-weight=\"bold\">{} cold start, median timeline (ms after the client's first call; total {})</text>",
        left + width + 60.0,
        esc(profile),
        esc(profile),
        f(end)
    );
    for (i, (name, stats)) in spans.iter().enumerate() {
        let y = 26.0 + i as f64 * row_h;
        let (x0, x1) = (x(stats.start.p50), x(stats.start.p50 + stats.duration.p50));
        let _ = write!(
            svg,
            "<text x=\"0\" y=\"{}\">{}</text><rect x=\"{x0:.1}\" y=\"{y}\" width=\"{:.1}\" height=\"12\" fill=\"#4a7bd0\"/>\
             <text x=\"{:.1}\" y=\"{}\">{}</text>",
            y + 10.0,
            esc(name),
            (x1 - x0).max(1.0),
            x1 + 3.0,
            y + 10.0,
            f(stats.duration.p50)
        );
    }
    let bottom = 26.0 + spans.len() as f64 * row_h;
    for (label, at, color) in [
        ("to-workload", to_workload, "#e0a030"),
        ("wall", Some(wall), "#a33"),
    ] {
        if let Some(at) = at {
            let _ = write!(
                svg,
                "<line x1=\"{0:.1}\" x2=\"{0:.1}\" y1=\"20\" y2=\"{bottom}\" stroke=\"{color}\" stroke-dasharray=\"4 2\"/>\
                 <text x=\"{0:.1}\" y=\"{1}\" fill=\"{color}\">{label} {2}</text>",
                x(at),
                bottom + 14.0,
                f(at)
            );
        }
    }
    svg.push_str("</svg>\n");
    svg
}

/// A horizontal grouped bar chart: two bars per row.
fn bar_chart(title: &str, rows: &[(String, f64, f64)], labels: (&str, &str)) -> String {
    let max = rows
        .iter()
        .flat_map(|(_, a, b)| [*a, *b])
        .filter(|v| v.is_finite())
        .fold(0.0f64, f64::max)
        .max(1e-9);
    let (left, width, row_h) = (90.0, 520.0, 44.0);
    let height = 40.0 + rows.len() as f64 * row_h;
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{}\" height=\"{height}\" role=\"img\" aria-label=\"{}\">\
         <text x=\"0\" y=\"14\" font-weight=\"bold\">{}</text>\
         <rect x=\"{left}\" y=\"22\" width=\"10\" height=\"8\" fill=\"#4a7bd0\"/><text x=\"{}\" y=\"30\">{}</text>\
         <rect x=\"{}\" y=\"22\" width=\"10\" height=\"8\" fill=\"#e0a030\"/><text x=\"{}\" y=\"30\">{}</text>",
        left + width + 80.0,
        esc(title),
        esc(title),
        left + 14.0,
        labels.0,
        left + 110.0,
        left + 124.0,
        labels.1
    );
    for (i, (name, a, b)) in rows.iter().enumerate() {
        let y = 40.0 + i as f64 * row_h;
        let _ = write!(svg, "<text x=\"0\" y=\"{}\">{}</text>", y + 18.0, esc(name));
        for (j, (v, color)) in [(*a, "#4a7bd0"), (*b, "#e0a030")].into_iter().enumerate() {
            let w = if v.is_finite() { v / max * width } else { 0.0 };
            let yy = y + j as f64 * 16.0;
            let _ = write!(
                svg,
                "<rect x=\"{left}\" y=\"{yy}\" width=\"{w:.1}\" height=\"14\" fill=\"{color}\"/>\
                 <text x=\"{:.1}\" y=\"{}\">{}</text>",
                left + w + 4.0,
                yy + 11.0,
                f(v)
            );
        }
    }
    svg.push_str("</svg>\n");
    svg
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary(p50: f64) -> Summary {
        Summary {
            n: 3,
            mean: p50,
            min: p50,
            p50,
            p90: p50,
            p99: p50 * 1.5,
            max: p50 * 2.0,
        }
    }

    fn profile(name: &str, wall: f64, http_p50: f64) -> ProfileResult {
        ProfileResult {
            name: name.into(),
            runtime: "io.containerd.runc.v2".into(),
            status: "ok".into(),
            cold_start: Some(ColdStart {
                ok_runs: 3,
                wall: Some(summary(wall)),
                to_workload: Some(summary(wall / 2.0)),
                ..Default::default()
            }),
            http: Some(HttpResult {
                latency: Some(summary(http_p50)),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn report() -> LabReport {
        let mut hides = BTreeMap::new();
        hides.insert("runc".to_string(), false);
        hides.insert("runsc".to_string(), true);
        LabReport {
            profiles: vec![
                profile("runc", 100.0, 0.2),
                profile("runsc", 250.0, 0.5),
                ProfileResult {
                    name: "kata".into(),
                    status: "skipped".into(),
                    reason: Some("not installed".into()),
                    ..Default::default()
                },
            ],
            isolation: vec![IsolationRow {
                key: "kernel_release".into(),
                label: "Kernel release".into(),
                host: "6.1".into(),
                values: [
                    ("runc".to_string(), "6.1".to_string()),
                    ("runsc".to_string(), "4.4.0".to_string()),
                ]
                .into(),
                hides_host: hides,
                meaning: "m".into(),
            }],
            ..Default::default()
        }
    }

    #[test]
    fn conclusions_follow_the_numbers() {
        let mut r = report();
        r.derive_conclusions();
        let all = r.tradeoffs.join("\n");
        assert!(
            all.contains("runsc: cold start p50 250 ms (+150 ms, 2.50× runc)"),
            "{all}"
        );
        assert!(all.contains("kata was not measured: not installed."));
        let rec = r.recommendation.join("\n");
        assert!(
            rec.contains("Untrusted or multi-tenant code: use runsc"),
            "{rec}"
        );
        assert!(rec.contains("adds about 150 ms"));
        // Flip the numbers: the conclusions flip with them.
        let mut r = report();
        r.profiles[1] = profile("runsc", 90.0, 0.1);
        r.derive_conclusions();
        assert!(r.recommendation[0].contains("Use runsc: it was fastest and most isolated"));
    }

    #[test]
    fn renders_every_section() {
        let mut r = report();
        r.derive_conclusions();
        let md = r.to_markdown();
        for section in [
            "## Setup",
            "## Profiles",
            "## Cold start",
            "## Isolation",
            "## Served latency",
            "## Trade-offs",
            "## Recommendation",
            "## Raw data",
        ] {
            assert!(md.contains(section), "missing {section}");
        }
        let html = r.to_html();
        assert!(html.contains("<svg") && html.contains("<h2>Isolation</h2>"));
        assert!(!html.contains("<script"));
    }
}
