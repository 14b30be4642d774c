//! The lab's results and their three renderings: `report.json` (everything, raw runs included),
//! and `report.md` and a self-contained `report.html` with inline SVG charts, both rendered from
//! one document ([`LabReport::to_document`]). The trade-offs and the recommendation are derived
//! from the measured numbers.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use shimtrace_collector::stats::Summary;
use shimtrace_render::{BarRow, Bars, Cell, Column, Document, Figure, ListItem, Marker, Table};
use shimtrace_render::{Text, Tone, Waterfall, WaterfallRow};

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
    /// With `--engine docker`: the Docker Engine the profiles ran through.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub docker: Option<DockerSetup>,
    /// With `--engine cri`: the CRI-enabled containerd the pods ran in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cri: Option<CriSetup>,
}

/// The containerd CRI of a `--engine cri` run.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CriSetup {
    /// The containerd binary the lab started (its version is `Setup::containerd_version`).
    pub containerd: String,
    /// How `shimtrace install` registered the handlers (`runtime_path form`).
    pub form: String,
    /// The RuntimeClass handler each profile ran under.
    pub handlers: BTreeMap<String, String>,
    /// What the pods share with the host and why, and what install said.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

/// The Docker Engine of a `--engine docker` run.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DockerSetup {
    pub version: String,
    /// Where the docker CLI reached it (`unix://…`).
    pub host: String,
    /// The lab started its own dockerd because none answered.
    pub private: bool,
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
    /// `ok` (measured; its runs say which failed) or `skipped` (not run, see `reason`).
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
    /// With `--engine cri`: the pod sandbox the container ran in (its spans are named
    /// `sandbox <span>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox_id: Option<String>,
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

/// A number of milliseconds as the report writes it: three significant digits or so.
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

/// A number of milliseconds with its unit, for the charts.
fn f_ms(v: f64) -> String {
    format!("{} ms", f(v))
}

fn ratio(r: Option<f64>) -> String {
    r.map(|r| format!("{r:.2}×"))
        .unwrap_or_else(|| "n/a".into())
}

/// A summary's p50, p90, p99 and max as the tables write them (`n/a` when not measured).
fn quantiles(s: Option<&Summary>) -> [String; 4] {
    [
        s.map(|s| s.p50),
        s.map(|s| s.p90),
        s.map(|s| s.p99),
        s.map(|s| s.max),
    ]
    .map(opt)
}

/// A bar chart of two figures per profile in ms, `series` titled "`what`: a and b"; nothing when
/// no profile has them.
fn push_bars(doc: &mut Document, what: &str, series: [&str; 2], rows: Vec<BarRow>) {
    if rows.is_empty() {
        return;
    }
    let [a, b] = series;
    doc.push(Figure::drawn_only(
        Bars {
            title: format!("{what}: {a} and {b}"),
            series: series.map(String::from).to_vec(),
            rows,
            format: f_ms,
        },
        format!("{what} (ms): {a} and {b}"),
    ));
}

fn wall_p50(p: &ProfileResult) -> Option<f64> {
    p.cold_start.as_ref()?.wall.as_ref().map(|s| s.p50)
}

fn http_latency(p: &ProfileResult) -> Option<&Summary> {
    p.http.as_ref()?.latency.as_ref()
}

/// The share of HTTP requests that failed, when any did.
fn http_failure_percent(p: &ProfileResult) -> Option<f64> {
    let h = p.http.as_ref().filter(|h| h.errors > 0 && h.requests > 0)?;
    Some(h.errors as f64 * 100.0 / h.requests as f64)
}

/// Client-side phases, in the order a cold start goes through them.
const PHASES: [&str; 6] = [
    "create_container",
    "create_task",
    "start_task",
    "wait_exit",
    "delete_task",
    "delete_container",
];

/// CRI calls of a pod start, in the order the kubelet makes them; `await_running` is the polling
/// of ContainerStatus until the container runs.
const CRI_PHASES: [&str; 4] = [
    "run_pod_sandbox",
    "create_container",
    "start_container",
    "await_running",
];

/// What the conclusions are drawn from: the profiles whose cold start was measured, and among them
/// the fastest, the most isolated and the baseline the others are compared with (runc when it was
/// measured).
struct Findings<'a> {
    report: &'a LabReport,
    scores: BTreeMap<String, usize>,
    measured: Vec<(&'a ProfileResult, f64)>,
    fastest: (&'a ProfileResult, f64),
    most_isolated: (&'a ProfileResult, f64),
    baseline: (&'a ProfileResult, f64),
}

impl<'a> Findings<'a> {
    /// `None` when no profile completed a cold start.
    fn of(report: &'a LabReport) -> Option<Findings<'a>> {
        let scores = isolation_scores(&report.isolation);
        let measured: Vec<(&ProfileResult, f64)> = report
            .ok_profiles()
            .filter_map(|p| Some((p, wall_p50(p)?)))
            .collect();
        let fastest = *measured.iter().min_by(|a, b| a.1.total_cmp(&b.1))?;
        let mut findings = Findings {
            report,
            scores,
            measured,
            fastest,
            most_isolated: fastest,
            baseline: report
                .profile("runc")
                .and_then(|p| Some((p, wall_p50(p)?)))
                .unwrap_or(fastest),
        };
        findings.most_isolated = findings.most_isolated();
        Some(findings)
    }

    /// The measured profile hiding the host in most probes, a kernel of its own breaking ties; of
    /// equals, the last (`max_by_key` keeps the last).
    fn most_isolated(&self) -> (&'a ProfileResult, f64) {
        self.measured
            .iter()
            .copied()
            .max_by_key(|(p, _)| {
                (
                    self.score(&p.name),
                    usize::from(self.kernel_differs(&p.name)),
                )
            })
            .unwrap_or(self.fastest)
    }

    /// Isolation probes in which the profile hides the host.
    fn score(&self, name: &str) -> usize {
        self.scores.get(name).copied().unwrap_or(0)
    }

    fn kernel_differs(&self, name: &str) -> bool {
        self.report
            .isolation
            .iter()
            .find(|r| r.key == "kernel_release")
            .and_then(|r| r.hides_host.get(name).copied())
            .unwrap_or(false)
    }

    fn probes(&self) -> usize {
        self.report.isolation.len()
    }

    /// The fastest and the most isolated are different profiles: there is a trade-off to weigh.
    fn isolation_costs_time(&self) -> bool {
        self.most_isolated.0.name != self.fastest.0.name
    }

    fn tradeoffs(&self) -> Vec<String> {
        let mut lines: Vec<String> = self
            .measured
            .iter()
            .map(|(p, wall)| self.profile_tradeoff(p, *wall))
            .collect();
        lines.push(if self.isolation_costs_time() {
            self.isolation_cost()
        } else {
            format!(
                "{} is both the fastest to start and the most isolated of the profiles measured here.",
                self.fastest.0.name
            )
        });
        for p in self.report.profiles.iter().filter(|p| p.status != "ok") {
            lines.push(format!(
                "{} was not measured: {}.",
                p.name,
                p.reason.as_deref().unwrap_or("unknown reason")
            ));
        }
        lines
    }

    /// One profile in one line: cold start against the baseline, served latency, isolation.
    fn profile_tradeoff(&self, p: &ProfileResult, wall: f64) -> String {
        let (baseline, base_wall) = self.baseline;
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
        if let Some(lat) = http_latency(p) {
            let _ = write!(line, "; HTTP p50 {} ms, p99 {} ms", f(lat.p50), f(lat.p99));
            if let Some(r) = p.http.as_ref().and_then(|h| h.p99_vs_runc) {
                if p.name != "runc" {
                    let _ = write!(line, " ({r:.2}× runc at p99)");
                }
            }
        }
        if let Some(failed) = http_failure_percent(p) {
            let _ = write!(line, "; {failed:.1}% of HTTP requests failed");
        }
        let _ = write!(
            line,
            "; hides the host in {} of {} probes, {}.",
            self.score(&p.name),
            self.probes(),
            if self.kernel_differs(&p.name) {
                "with a kernel of its own"
            } else {
                "sharing the host kernel"
            }
        );
        line
    }

    /// What the most isolated profile costs against the fastest, at start-up and when serving.
    fn isolation_cost(&self) -> String {
        let ((iso, iso_wall), (fast, fast_wall)) = (self.most_isolated, self.fastest);
        let (iso_score, fast_score) = (self.score(&iso.name), self.score(&fast.name));
        let rows = self.probes();
        let own_kernel = self.kernel_differs(&iso.name) && !self.kernel_differs(&fast.name);
        let isolation = if iso_score > fast_score {
            format!(
                "{} hides the host in {iso_score} of {rows} probes against {}'s {fast_score}{}",
                iso.name,
                fast.name,
                if own_kernel {
                    ", above all by running on a kernel of its own"
                } else {
                    ""
                }
            )
        } else {
            format!(
                "{} hides the host in as many probes as {} ({iso_score} of {rows}){}",
                iso.name,
                fast.name,
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
        if let (Some(a), Some(b)) = (http_latency(iso), http_latency(fast)) {
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
        line
    }

    fn recommendation(&self) -> Vec<String> {
        let mut lines = if self.isolation_costs_time() {
            self.choose_by_workload()
        } else {
            vec![format!(
                "Use {}: it was fastest and most isolated in this run.",
                self.fastest.0.name
            )]
        };
        if let Some(kata) = self
            .report
            .profiles
            .iter()
            .find(|p| p.name == "kata" && p.status != "ok")
        {
            lines.push(format!(
                "A VM-based runtime (Kata) could not be measured here ({}); run the lab where it is installed to weigh hardware isolation against these numbers.",
                kata.reason.as_deref().unwrap_or("not available")
            ));
        }
        lines
    }

    /// Isolation for untrusted code, speed for trusted code, and what each choice costs.
    fn choose_by_workload(&self) -> Vec<String> {
        let ((iso, iso_wall), (fast, fast_wall)) = (self.most_isolated, self.fastest);
        let mut lines = vec![format!(
            "Untrusted or multi-tenant code: use {}{}; it adds about {:.0} ms per container start on this machine.",
            iso.name,
            if self.kernel_differs(&iso.name) {
                " (its system calls never reach the host kernel directly)"
            } else {
                ""
            },
            iso_wall - fast_wall
        )];
        let serve_cost = match (http_latency(iso), http_latency(fast)) {
            (Some(a), Some(b)) => Some(a.p99 / b.p99),
            _ => None,
        };
        lines.push(format!(
            "Trusted, latency-sensitive or short-lived workloads: use {} ({} ms cold start p50{}).",
            fast.name,
            f(fast_wall),
            match serve_cost {
                Some(r) if r >= 2.0 => format!(
                    "; {} would multiply HTTP p99 latency by {r:.1}",
                    iso.name
                ),
                Some(r) if r >= 1.5 => format!(
                    "; {} would add {:.0}% at HTTP p99",
                    iso.name,
                    (r - 1.0) * 100.0
                ),
                Some(r) => format!(
                    "; for long-running services {} costs only {:.0}% at HTTP p99, so prefer isolation there",
                    iso.name,
                    (r - 1.0).max(0.0) * 100.0
                ),
                None => String::new(),
            }
        ));
        if let Some(failed) = http_failure_percent(iso) {
            let clean = fast.http.as_ref().is_some_and(|h| h.errors == 0);
            lines.push(format!(
                "Before serving with {}, check its networking: {failed:.1}% of requests to busybox httpd failed under it{}.",
                iso.name,
                if clean {
                    format!(" against none under {}", fast.name)
                } else {
                    String::new()
                }
            ));
        }
        if iso_wall / fast_wall >= 2.0 {
            lines.push(format!(
                "Where containers are created per request (functions, CI jobs), {}'s {:.1}× start-up time dominates; keep warm pools or use {} for trusted jobs.",
                iso.name,
                iso_wall / fast_wall,
                fast.name
            ));
        }
        lines
    }
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
        let (tradeoffs, recommendation) = match Findings::of(self) {
            Some(findings) => (findings.tradeoffs(), findings.recommendation()),
            None => (
                vec!["No profile completed a cold start, so there is nothing to compare.".into()],
                vec!["Fix the errors listed above and run the lab again.".into()],
            ),
        };
        self.tradeoffs = tradeoffs;
        self.recommendation = recommendation;
    }

    /// The Markdown report.
    pub fn to_markdown(&self) -> String {
        self.to_document().to_markdown()
    }

    /// The HTML report: the Markdown's content with bar charts and per-profile waterfalls as
    /// inline SVG, no external resources.
    pub fn to_html(&self) -> String {
        self.to_document().to_html()
    }

    /// The report as a document, section by section.
    pub fn to_document(&self) -> Document {
        let mut doc = Document::new("shimtrace lab report");
        self.setup_section(&mut doc);
        self.profiles_section(&mut doc);
        self.cold_start_section(&mut doc);
        self.phases_section(&mut doc);
        self.shim_spans_section(&mut doc);
        self.isolation_section(&mut doc);
        self.served_latency_section(&mut doc);
        self.conclusions_sections(&mut doc);
        self.raw_data_section(&mut doc);
        doc
    }

    fn setup_section(&self, doc: &mut Document) {
        let s = &self.setup;
        let mut items = vec![
            ListItem::keyed("Host kernel", s.host_kernel.as_str()),
            ListItem::keyed("Host CPU", s.host_cpu.as_str()),
            match &s.docker {
                Some(docker) => ListItem::new(
                    Text::new()
                        .plain(format!(
                            "Docker {} (containerd {}) at ",
                            docker.version, s.containerd_version
                        ))
                        .code(&docker.host)
                        .plain(if docker.private {
                            " (private dockerd started by the lab); containers run with "
                        } else {
                            "; containers run with "
                        })
                        .code("docker run --runtime <runtime>"),
                ),
                None if s.cri.is_some() => ListItem::new(
                    Text::new()
                        .plain(format!("containerd CRI: containerd {} at ", s.containerd_version))
                        .code(&s.containerd_address)
                        .plain(" (private instance started by the lab, CRI plugin on); pods run with RuntimeClass handlers registered by ")
                        .code("shimtrace install")
                        .plain(format!(
                            " ({})",
                            s.cri.as_ref().map(|c| c.form.as_str()).unwrap_or("?")
                        )),
                )
                .with_children(s.cri.iter().flat_map(|c| {
                    c.notes
                        .iter()
                        .map(|n| ListItem::new(Text::with_code_spans(n)))
                })),
                None => ListItem::new(
                    Text::new()
                        .plain(format!("containerd {} at ", s.containerd_version))
                        .code(&s.containerd_address)
                        .plain(if s.private_containerd {
                            " (private instance started by the lab)"
                        } else {
                            ""
                        }),
                ),
            },
            ListItem::keyed(
                "Through the shimtrace wrapper",
                if s.traced {
                    Text::new().plain("yes, spool ").code(&s.spool_dir)
                } else {
                    Text::from("no (plain runtimes; no shim spans)")
                },
            ),
        ];
        items.push(match &s.image {
            Some(image) => ListItem::keyed(
                "Workload image",
                Text::new()
                    .code(image)
                    .plain(" (from containerd, ")
                    .code("--image")
                    .plain(")"),
            )
            .with_children(
                s.image_notes
                    .iter()
                    .map(|n| ListItem::new(Text::with_code_spans(n))),
            ),
            None => ListItem::keyed("Workload rootfs", "busybox-static + the shimtrace probe"),
        });
        if let Some(sent) = s.otlp_exported {
            items.push(ListItem::new(format!("{sent} shim spans sent over OTLP")));
        }
        items.push(ListItem::new(format!(
            "{} cold-start runs per profile, interleaved; {} HTTP requests per profile",
            s.runs, s.requests
        )));
        doc.heading(2, "Setup").list(items);
    }

    fn profiles_section(&self, doc: &mut Document) {
        let mut table =
            Table::new(["Profile", "Runtime", "OCI binary", "Status"].map(Column::left));
        for p in &self.profiles {
            let mut runtime = Text::new().code(&p.runtime);
            if let Some(path) = &p.runtime_path {
                runtime = runtime.plain(" via ").code(path);
            }
            let binary = match &p.binary_name {
                Some(b) => Text::new().code(b),
                None => Text::from("default"),
            };
            let status = match &p.reason {
                Some(r) => format!("{}: {}", p.status, r),
                None => p.status.clone(),
            };
            table.row([
                Text::from(&p.name),
                runtime,
                binary,
                Text::with_code_spans(&status),
            ]);
        }
        doc.heading(2, "Profiles").push(table);
    }

    fn cold_start_section(&self, doc: &mut Document) {
        let mut table = Table::keyed(
            "Profile",
            [
                "ok/failed",
                "wall p50",
                "wall p90",
                "wall p99",
                "wall max",
                "to-workload p50",
                "to-workload p90",
            ],
        );
        let mut chart = Vec::new();
        for p in self.ok_profiles() {
            let Some(c) = &p.cold_start else { continue };
            let w = c.wall.as_ref();
            let t = c.to_workload.as_ref();
            let mut row = vec![p.name.clone(), format!("{}/{}", c.ok_runs, c.failed_runs)];
            row.extend(quantiles(w));
            row.extend([opt(t.map(|s| s.p50)), opt(t.map(|s| s.p90))]);
            table.row(row);
            if let Some(w) = w {
                chart.push(BarRow {
                    label: p.name.clone(),
                    values: vec![w.p50, t.map(|s| s.p50).unwrap_or(f64::NAN)],
                });
            }
        }
        let explanation = if self.setup.cri.is_some() {
            "Pod startup as Kubernetes sees it: RunPodSandbox, CreateContainer, StartContainer, then \
             ContainerStatus until the container runs (wall), and to-workload time (the probe's \
             first CLOCK_REALTIME reading minus the client's start), in ms."
        } else if self.setup.docker.is_some() {
            "Wall time of `docker run --rm` as the Docker client sees it (the command's start to its \
             exit, the container removed), and to-workload time (the probe's first CLOCK_REALTIME \
             reading minus the client's start), in ms."
        } else {
            "Client-observed wall time from CreateContainer to the container being deleted, and \
             to-workload time (the probe's first CLOCK_REALTIME reading minus the client's start), in ms."
        };
        doc.heading(2, "Cold start")
            .paragraph(Text::with_code_spans(explanation))
            .push(table);
        push_bars(doc, "Cold start p50", ["wall", "to-workload"], chart);
    }

    fn phases_section(&self, doc: &mut Document) {
        if self.setup.cri.is_some() {
            self.pod_startup_section(doc);
            return;
        }
        if self.setup.docker.is_some() {
            doc.heading(3, "Phases (client side, p50 ms)")
                .paragraph(Text::with_code_spans(
                    "Not measured: the Docker client makes one call per `docker run`; the shim \
                     spans below show where the time goes.",
                ));
            return;
        }
        doc.heading(3, "Phases (client side, p50 ms)")
            .push(self.phases_table(&PHASES));
    }

    /// A row per measured profile: the p50 of each of `phases`, their sum and the wall p50.
    fn phases_table(&self, phases: &[&str]) -> Table {
        let mut table = Table::keyed("Profile", phases.iter().copied().chain(["sum", "wall"]));
        for p in self.ok_profiles() {
            let Some(c) = &p.cold_start else { continue };
            let values: Vec<f64> = phases
                .iter()
                .map(|n| c.phases.get(*n).map(|s| s.p50).unwrap_or(f64::NAN))
                .collect();
            let mut row = vec![p.name.clone()];
            row.extend(values.iter().map(|v| f(*v)));
            row.push(f(values.iter().filter(|v| v.is_finite()).sum()));
            row.push(opt(c.wall.as_ref().map(|s| s.p50)));
            table.row(row);
        }
        table
    }

    /// With `--engine cri`: per handler, the sandbox's share of pod startup (RunPodSandbox) and
    /// the container's (CreateContainer to running), then each CRI call.
    fn pod_startup_section(&self, doc: &mut Document) {
        let handlers = self.setup.cri.as_ref().map(|c| &c.handlers);
        let mut split = Table::new(
            [
                "Profile",
                "Handler",
                "sandbox p50",
                "sandbox p90",
                "container p50",
                "container p90",
                "pod startup p50",
                "pod startup p90",
                "pod startup p99",
            ]
            .into_iter()
            .enumerate()
            .map(|(i, h)| {
                if i < 2 {
                    Column::left(h)
                } else {
                    Column::right(h)
                }
            }),
        );
        for p in self.ok_profiles() {
            let Some(c) = &p.cold_start else { continue };
            let phase = |name: &str| c.phases.get(name);
            let handler = handlers
                .and_then(|h| h.get(&p.name))
                .map(|h| Text::new().code(h))
                .unwrap_or_else(|| Text::from("?"));
            let (sandbox, container, wall) =
                (phase("sandbox"), phase("container"), c.wall.as_ref());
            split.row([
                Text::from(&p.name),
                handler,
                opt(sandbox.map(|s| s.p50)).into(),
                opt(sandbox.map(|s| s.p90)).into(),
                opt(container.map(|s| s.p50)).into(),
                opt(container.map(|s| s.p90)).into(),
                opt(wall.map(|s| s.p50)).into(),
                opt(wall.map(|s| s.p90)).into(),
                opt(wall.map(|s| s.p99)).into(),
            ]);
        }
        doc.heading(3, "Pod startup: sandbox and container (ms)")
            .paragraph(Text::with_code_spans(
                "Sandbox: `RunPodSandbox` (the pod's sandbox container and its shim). Container: \
                 `CreateContainer` to ContainerStatus reporting it running.",
            ))
            .push(split)
            .heading(3, "Phases (CRI calls, p50 ms)")
            .push(self.phases_table(&CRI_PHASES));
    }

    fn shim_spans_section(&self, doc: &mut Document) {
        doc.heading(3, "Shim spans (ms; start is after the client's first call)");
        let mut any_spans = false;
        for p in self.ok_profiles() {
            let Some(c) = p.cold_start.as_ref().filter(|c| !c.spans.is_empty()) else {
                continue;
            };
            any_spans = true;
            // In the order they happen: by median start after the client's first call.
            let mut ordered: Vec<(&String, &SpanStats)> = c.spans.iter().collect();
            ordered.sort_by(|a, b| a.1.start.p50.total_cmp(&b.1.start.p50));
            let mut table = Table::keyed(
                "Span",
                [
                    "n",
                    "starts at p50",
                    "duration p50",
                    "duration p90",
                    "duration max",
                ],
            );
            for (name, stats) in &ordered {
                let d = &stats.duration;
                table.row([
                    Text::new().code(name.as_str()),
                    d.n.to_string().into(),
                    f(stats.start.p50).into(),
                    f(d.p50).into(),
                    f(d.p90).into(),
                    f(d.max).into(),
                ]);
            }
            doc.paragraph(Text::new().strong(&p.name)).push(table);
            doc.push(Figure::drawn_only(
                span_waterfall(&p.name, c, &ordered),
                Text::new().plain(format!(
                    "{} cold start, median timeline (ms after the client's first call)",
                    p.name
                )),
            ));
        }
        if !any_spans {
            doc.note(format!(
                "No shim spans were recorded: the profiles ran {}.",
                if self.setup.traced {
                    "through the wrapper but the spool held no spans for these containers"
                } else {
                    "on plain runtimes (install the shimtrace wrapper to see them)"
                }
            ));
        }
        doc.list(self.ok_profiles().filter_map(|p| {
            let boot = p.cold_start.as_ref()?.guest_boot_seconds?;
            Some(ListItem::keyed(
                p.name.as_str(),
                format!("guest kernel boot (last dmesg timestamp) {boot:.3} s"),
            ))
        }));
    }

    fn isolation_section(&self, doc: &mut Document) {
        let names: Vec<&str> = self.ok_profiles().map(|p| p.name.as_str()).collect();
        let mut table = Table::new(
            ["Property", "host"]
                .into_iter()
                .chain(names.iter().copied())
                .chain(["What a difference means"])
                .map(Column::left),
        );
        for row in &self.isolation {
            let mut cells = vec![Cell::new(&row.label), Cell::new(&row.host)];
            cells.extend(names.iter().map(|n| {
                let v = row.values.get(*n).map(String::as_str).unwrap_or("n/a");
                match row.hides_host.get(*n) {
                    Some(true) => Cell::toned(format!("{v} (differs)"), Tone::Good),
                    Some(false) => Cell::toned(format!("{v} (same as host)"), Tone::Bad),
                    None => Cell::new(v),
                }
            }));
            cells.push(Cell::new(Text::with_code_spans(&row.meaning)));
            table.row(cells);
        }
        let scores = isolation_scores(&self.isolation);
        doc.heading(2, "Isolation").push(table).paragraph(format!(
            "Properties hiding the host, of {}: {}",
            self.isolation.len(),
            names
                .iter()
                .map(|n| format!("{n} {}", scores.get(*n).copied().unwrap_or(0)))
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }

    fn served_latency_section(&self, doc: &mut Document) {
        let mut table = Table::keyed(
            "Profile",
            [
                "ok/errors",
                "p50",
                "p90",
                "p99",
                "max",
                "p50 vs runc",
                "p99 vs runc",
            ],
        );
        let mut chart = Vec::new();
        for p in self.ok_profiles() {
            let Some(h) = &p.http else { continue };
            let latency = h.latency.as_ref();
            let mut row = vec![
                p.name.clone(),
                format!("{}/{}", latency.map_or(0, |l| l.n), h.errors),
            ];
            row.extend(quantiles(latency));
            // The ratios are of a latency: none without one.
            row.extend([h.p50_vs_runc, h.p99_vs_runc].map(|r| ratio(latency.and(r))));
            table.row(row);
            if let Some(l) = latency {
                chart.push(BarRow {
                    label: p.name.clone(),
                    values: vec![l.p50, l.p99],
                });
            }
        }
        doc.heading(2, "Served latency").paragraph(format!(
            "busybox httpd inside each profile's container on the host network, {} sequential GETs \
             (new connection each) from the lab over loopback, in ms. Failed requests are counted, \
             not retried, and not in the percentiles.",
            self.setup.requests
        ));
        doc.push(table);
        push_bars(doc, "HTTP latency", ["p50", "p99"], chart);
    }

    fn conclusions_sections(&self, doc: &mut Document) {
        let lines = |lines: &[String]| -> Vec<ListItem> {
            lines
                .iter()
                .map(|l| ListItem::new(Text::with_code_spans(l)))
                .collect()
        };
        doc.heading(2, "Trade-offs").list(lines(&self.tradeoffs));
        doc.heading(2, "Recommendation")
            .list(lines(&self.recommendation));
        if !self.errors.is_empty() {
            doc.heading(2, "Errors").list(lines(&self.errors));
        }
    }

    fn raw_data_section(&self, doc: &mut Document) {
        let mut text = Text::new()
            .plain(
                "Every run (ids, timestamps, phases, spans), every HTTP latency sample and every \
                 probe output are in ",
            )
            .code("report.json")
            .plain(if self.setup.cri.is_some() {
                "; the pods' CRI logs are under "
            } else {
                "; task outputs are under "
            })
            .code(if self.setup.cri.is_some() {
                "work/pods/"
            } else {
                "work/io/"
            });
        if self.setup.traced {
            text = text
                .plain(", the shims' span spool in ")
                .code(&self.setup.spool_dir);
        }
        doc.heading(2, "Raw data").note(text.plain("."));
    }
}

/// A profile's cold start as a waterfall: each shim span at its median start with its median
/// duration (spans `ordered` by start), and the to-workload and wall medians as markers.
fn span_waterfall(profile: &str, cold: &ColdStart, ordered: &[(&String, &SpanStats)]) -> Waterfall {
    Waterfall {
        title: format!("{profile} cold-start waterfall"),
        rows: ordered
            .iter()
            .map(|(name, s)| WaterfallRow {
                label: name.to_string(),
                depth: 0,
                start: s.start.p50,
                length: s.duration.p50,
            })
            .collect(),
        markers: [
            ("to-workload", cold.to_workload.as_ref()),
            ("wall", cold.wall.as_ref()),
        ]
        .into_iter()
        .filter_map(|(label, s)| {
            Some(Marker {
                label: label.into(),
                at: s?.p50,
            })
        })
        .collect(),
        format: f_ms,
    }
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
    fn a_cri_run_splits_pod_startup_per_handler() {
        let mut r = report();
        r.setup.containerd_version = "2.1.9".into();
        r.setup.cri = Some(CriSetup {
            containerd: "/opt/containerd".into(),
            form: "runtime_path form".into(),
            handlers: [
                ("runc".to_string(), "traced-runc".to_string()),
                ("runsc".to_string(), "traced-runsc".to_string()),
            ]
            .into(),
            notes: vec!["Pods run on the host network".into()],
        });
        for p in &mut r.profiles {
            if let Some(c) = p.cold_start.as_mut() {
                let wall = c.wall.as_ref().unwrap().p50;
                c.phases.insert("sandbox".into(), summary(wall * 0.6));
                c.phases.insert("container".into(), summary(wall * 0.4));
                c.phases
                    .insert("run_pod_sandbox".into(), summary(wall * 0.6));
            }
        }
        r.derive_conclusions();
        let md = r.to_markdown();
        assert!(md.contains("containerd CRI: containerd 2.1.9 at"), "{md}");
        assert!(md.contains("  - Pods run on the host network"), "{md}");
        let section = md
            .split("### Pod startup: sandbox and container (ms)")
            .nth(1)
            .expect("a pod startup section");
        assert!(
            section.contains("| runc | `traced-runc` | 60.0 |"),
            "{section}"
        );
        assert!(
            section.contains("| runsc | `traced-runsc` | 150 |"),
            "{section}"
        );
        assert!(section.contains("### Phases (CRI calls, p50 ms)"));
        assert!(md.contains("`work/pods/`") && !md.contains("`work/io/`"));
        assert!(
            !md.contains("create_task"),
            "no containerd-API phases under CRI"
        );
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

    #[test]
    fn html_charts_and_marks_come_from_the_numbers() {
        let mut r = report();
        let span = SpanStats {
            start: summary(5.0),
            duration: summary(20.0),
        };
        r.profiles[0]
            .cold_start
            .as_mut()
            .unwrap()
            .spans
            .insert("containerd.task.v2.Task/Create".into(), span);
        r.derive_conclusions();
        let html = r.to_html();
        // Cold start and served latency, two bars per measured profile each.
        assert_eq!(html.matches("<svg class=\"bars\"").count(), 2);
        assert_eq!(html.matches("<rect class=\"value\"").count(), 8);
        // One waterfall: only runc has shim spans; its markers are the medians.
        assert_eq!(html.matches("<svg class=\"waterfall\"").count(), 1);
        assert!(html.contains("to-workload 50.0 ms") && html.contains("wall 100 ms"));
        assert!(
            html.contains("<td class=\"good\">4.4.0 (differs)</td>"),
            "{html}"
        );
        assert!(html.contains("<td class=\"bad\">6.1 (same as host)</td>"));
        assert!(html.contains("<td><code>containerd.task.v2.Task/Create</code></td>"));
        let md = r.to_markdown();
        assert!(
            md.contains("| Kernel release | 6.1 | 6.1 (same as host) | 4.4.0 (differs) | m |"),
            "{md}"
        );
        assert!(md.contains("**runc**\n\n| Span |"), "{md}");
    }

    #[test]
    fn nothing_measured_says_so() {
        let mut r = report();
        for p in &mut r.profiles {
            p.cold_start = None;
        }
        r.derive_conclusions();
        assert_eq!(
            r.tradeoffs,
            ["No profile completed a cold start, so there is nothing to compare."]
        );
        assert_eq!(
            r.recommendation,
            ["Fix the errors listed above and run the lab again."]
        );
        let md = r.to_markdown();
        assert!(md.contains("No shim spans were recorded"), "{md}");
        // Served latency was measured, cold start was not: one bar chart.
        assert_eq!(r.to_html().matches("<svg class=\"bars\"").count(), 1);
    }
}
