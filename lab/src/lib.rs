//! The runtime lab (`shimtrace lab`): runs the same workloads under several runtimes through containerd and reports
//! cold start, isolation and served latency side by side (`report.md`, `report.json`, `report.html`).
//!
//! Order of work: host probe → containerd (the one at `--address`, else a private one) → profile
//! preflight (one probe run each; its output is the isolation column; a failure skips the profile
//! with the reason) → N cold-start rounds interleaved across profiles → shim spans from the spool →
//! HTTP latency per profile → reports. A failure part-way still writes what was measured.

mod cri;
mod docker;
pub mod http;
pub mod isolation;
pub mod profiles;
pub mod report;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;

use profiles::{Network, Profile};
use report::{ColdStart, HttpResult, LabReport, ProfileResult, RunRecord, Setup};
use shimtrace_collector::stats::{ms, Summary};
use shimtrace_containerd::private::{PrivateConfig, PrivateContainerd};
use shimtrace_containerd::rootfs;
use shimtrace_containerd::{Containerd, RunSpec};
use shimtrace_span::naming::which;

/// The static probe binary (built from `probe/` by this crate's build script).
pub const PROBE_BINARY: &[u8] = include_bytes!(env!("SHIMTRACE_PROBE_PATH"));

/// Writes the embedded probe to `path` (mode 0755).
pub fn write_probe(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, PROBE_BINARY)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))
}

/// What the lab drives containers through.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Engine {
    /// containerd's API (`--address`), as a kubelet's CRI or ctr does.
    #[default]
    Containerd,
    /// The docker CLI (`docker run --runtime …`), as a user compares runtimes by hand.
    Docker,
    /// containerd's CRI, as the kubelet drives it: each profile a RuntimeClass handler registered
    /// by `shimtrace install` in a private containerd with its CRI plugin on.
    Cri,
}

/// `shimtrace lab` options.
#[derive(Debug, Clone, clap::Args)]
pub struct LabArgs {
    /// Drive containers through containerd's API, through Docker Engine (found as the docker
    /// CLI finds it: DOCKER_HOST, its context, /var/run/docker.sock; else a private dockerd), or
    /// as pods through containerd's CRI (always a private CRI-enabled containerd, --address
    /// unused; each profile a RuntimeClass handler).
    #[arg(long, value_enum, default_value_t = Engine::Containerd)]
    pub engine: Engine,
    /// Shorthand for `--engine cri`: the profiles as RuntimeClass handlers, pod startup as
    /// Kubernetes sees it.
    #[arg(long, conflicts_with = "engine")]
    pub cri: bool,
    /// The docker CLI (`--engine docker`).
    #[arg(long, default_value = "docker", value_name = "PATH")]
    pub docker_cli: PathBuf,
    /// The dockerd to start when no Docker answers (`--engine docker`) [default: the newest
    /// under /opt/shimtrace/docker (scripts/install-docker.sh), else dockerd on PATH].
    #[arg(long, value_name = "PATH")]
    pub dockerd: Option<PathBuf>,
    /// containerd's gRPC socket; when nothing answers there, the lab starts a private containerd.
    #[arg(long, default_value = "/run/containerd/containerd.sock")]
    pub address: PathBuf,
    /// containerd namespace for the lab's containers.
    #[arg(long, default_value = "shimtrace-lab")]
    pub namespace: String,
    /// Cold-start runs per profile.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..))]
    pub runs: u32,
    /// HTTP requests per profile for the served-latency test (0 skips it).
    #[arg(long, default_value_t = 200)]
    pub requests: u32,
    /// Directory for report.md, report.json, report.html and the work files.
    #[arg(long, default_value = "shimtrace-lab")]
    pub out: PathBuf,
    /// TOML file of `[[profile]]` tables (name, runtime, runtime_path, binary_name, runsc, requires,
    /// vm) replacing the built-in runc, runsc, crun and kata profiles.
    #[arg(long)]
    pub profiles: Option<PathBuf>,
    /// Run only these profiles (comma-separated names).
    #[arg(long, value_delimiter = ',')]
    pub only: Vec<String>,
    /// First loopback port for the HTTP servers (profile i uses port + i); default: free ports.
    #[arg(long)]
    pub port: Option<u16>,
    /// Run every profile from this image, already in containerd's namespace (`ctr images ls`),
    /// instead of the built busybox rootfs. The probe cannot go into an image: isolation is limited
    /// to what the image's own `uname` shows, to-workload time and served latency are not measured.
    #[arg(long)]
    pub image: Option<String>,
    /// A static busybox to build the workload rootfs from.
    #[arg(long, default_value = "/bin/busybox")]
    pub busybox: PathBuf,
    /// The containerd binary for a private instance [default: containerd on PATH; with
    /// `--engine cri`, the newest under /opt/shimtrace/containerd (scripts/install-containerd-matrix.sh),
    /// else containerd on PATH].
    #[arg(long, value_name = "PATH")]
    pub containerd: Option<PathBuf>,
    /// Where the wrapper spools spans (for a containerd the lab did not start).
    #[arg(long, env = "SHIMTRACE_SPOOL_DIR")]
    pub spool_dir: Option<PathBuf>,
    /// The wrapper shim binary (default: containerd-shim-traced-v2 beside shimtrace, else on PATH).
    #[arg(long)]
    pub wrapper: Option<PathBuf>,
    /// Use the plain runtimes even when the shimtrace wrapper is installed.
    #[arg(long, conflicts_with = "wrapper")]
    pub untraced: bool,
    /// Also send the shim spans of the lab's containers to this OTLP endpoint (base URL, as
    /// OTEL_EXPORTER_OTLP_ENDPOINT; e.g. http://localhost:4318).
    #[arg(long)]
    pub otlp: Option<String>,
    /// OTLP protocol: http/protobuf or grpc.
    #[arg(long, default_value = "http/protobuf")]
    pub otlp_protocol: String,
    /// Per-run timeout in seconds.
    #[arg(long, default_value_t = 60)]
    pub timeout: u64,
}

impl LabArgs {
    /// The engine asked for (`--cri` is `--engine cri`).
    pub fn engine(&self) -> Engine {
        if self.cri {
            Engine::Cri
        } else {
            self.engine
        }
    }
}

/// Errors that stop the lab or make its result incomplete.
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    #[error(
        "shimtrace lab must run as root (containerd and the runtimes need it): run it with sudo"
    )]
    NotRoot,
    #[error("cannot use {path}: {source} (pass a writable --out; the private containerd and dockerd the lab starts also need a writable /tmp)")]
    Out {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the report: {0} (pass a writable --out)")]
    Report(#[source] shimtrace_containerd::files::FileError),
    #[error(transparent)]
    Rootfs(#[from] rootfs::RootfsError),
    #[error(transparent)]
    Profiles(#[from] profiles::ProfileError),
    #[error(transparent)]
    Wrapper(#[from] shimtrace_containerd::install::InstallError),
    #[error("containerd is not reachable at {address} ({reason}) and a private one could not be started: {private} (install containerd, or pass --address of a running one)")]
    NoContainerd {
        address: PathBuf,
        reason: String,
        private: String,
    },
    #[error("{0}")]
    Docker(String),
    #[error("{0}")]
    Cri(String),
    #[error("no such profile: {0} (pass --only with names among: {1})")]
    UnknownProfile(String, String),
    #[error("cannot start the async runtime: {0} (check the process's limits on threads and open files)")]
    Runtime(std::io::Error),
    /// The report was written, but some of what was asked for could not be measured.
    #[error("the lab finished with errors (partial report in {}):\n{}", out.display(), lines.join("\n"))]
    Incomplete { out: PathBuf, lines: Vec<String> },
}

impl LabError {
    /// The error of a file or directory at `path` the lab could not make, read or write.
    fn out(path: &Path) -> impl FnOnce(std::io::Error) -> LabError {
        let path = path.to_path_buf();
        move |source| LabError::Out { path, source }
    }
}

/// Runs the lab (blocking); returns the output directory.
pub fn run(args: LabArgs) -> Result<PathBuf, LabError> {
    run_on_new_runtime(args, false)
}

/// [`run`] for a process of its own (the CLI): a first Ctrl-C ends the run after the container in
/// hand, the lab removes what it started and writes what it measured; a second one quits at once.
/// (The handler stays for the process's life, so a process that goes on after the lab, a test
/// binary for one, calls [`run`].)
pub fn run_interruptible(args: LabArgs) -> Result<PathBuf, LabError> {
    run_on_new_runtime(args, true)
}

fn run_on_new_runtime(args: LabArgs, on_ctrl_c: bool) -> Result<PathBuf, LabError> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(LabError::Runtime)?;
    if on_ctrl_c {
        runtime.spawn(async {
            if tokio::signal::ctrl_c().await.is_ok() {
                INTERRUPTED.store(true, Ordering::Relaxed);
                log("interrupted: stopping after the current container, then removing what the lab started (Ctrl-C again quits at once, leaving it)");
                if tokio::signal::ctrl_c().await.is_ok() {
                    std::process::exit(130);
                }
            }
        });
    }
    runtime.block_on(run_async(args))
}

/// Set by a Ctrl-C during [`run_interruptible`]: no stage starts another container.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::Relaxed)
}

/// A profile that passed preflight, and what has been measured of it.
struct Active {
    profile: Profile,
    result: ProfileResult,
}

fn log(line: impl AsRef<str>) {
    eprintln!("shimtrace lab: {}", line.as_ref());
}

/// How this run names its containers: `lab-<profile>-<what>-<suffix>`, the suffix unique to the
/// run, so that its containers are told from an earlier run's.
struct RunNames {
    suffix: String,
}

impl RunNames {
    fn new() -> RunNames {
        RunNames {
            suffix: format!(
                "{:x}",
                shimtrace_containerd::wall_unix_nanos() & 0xffff_ffff
            ),
        }
    }

    /// The name of this run's container `what` of profile `profile` (`probe`, a round's number,
    /// `http`).
    fn container(&self, profile: &str, what: impl std::fmt::Display) -> String {
        format!("lab-{profile}-{what}-{}", self.suffix)
    }

    /// Whether `id` has the form of this run's names, `lab-…-<suffix>` (what [`Self::pattern`]
    /// matches, anchored at the start too).
    fn is_ours(&self, id: &str) -> bool {
        id.starts_with("lab-")
            && id
                .strip_suffix(self.suffix.as_str())
                .is_some_and(|rest| rest.ends_with('-'))
    }

    /// A regular expression that matches every name of this run (for `docker ps --filter
    /// name=…`).
    fn pattern(&self) -> String {
        format!("lab-.*-{}$", self.suffix)
    }
}

/// Runs the lab; returns the output directory.
pub async fn run_async(args: LabArgs) -> Result<PathBuf, LabError> {
    let lab = Lab::prepare(&args)?;
    let mut found = Findings::new();
    host_probe(&lab, &mut found).await;
    let result = match args.engine() {
        Engine::Docker => docker::measure(&lab, &mut found).await,
        Engine::Cri => cri::measure(&lab, &mut found).await,
        Engine::Containerd => {
            let target = connect(&lab, &mut found).await?;
            let result = measure(&lab, &target, &mut found).await;
            target.close(&mut found.report).await;
            result
        }
    };
    if interrupted() {
        found.user_error("interrupted (Ctrl-C): the report holds what was measured before".into());
    }
    write_report(&lab, &mut found.report)?;
    result?;
    found.into_result(lab.out)
}

/// What every stage of a run reads: the options, the work directories, the profiles to run and the
/// names that make this run's containers its own.
struct Lab<'a> {
    args: &'a LabArgs,
    out: PathBuf,
    work: PathBuf,
    io_dir: PathBuf,
    rootfs_dir: PathBuf,
    probe_path: PathBuf,
    /// The wrapper's shim links, when the profiles run traced.
    traced_dir: Option<PathBuf>,
    /// In their configured order, after `--only`.
    profiles: Vec<Profile>,
    /// The user named the profiles (`--profiles` or `--only`): one that cannot run is an error.
    explicit: bool,
    names: RunNames,
}

impl<'a> Lab<'a> {
    /// Checks for root, lays out the output directory (probe, rootfs, traced shim links) and
    /// chooses the profiles: the user's file, or the built-ins (whose missing binaries are merely
    /// skipped).
    fn prepare(args: &'a LabArgs) -> Result<Lab<'a>, LabError> {
        if !nix::unistd::geteuid().is_root() {
            return Err(LabError::NotRoot);
        }
        let out = absolute(&args.out);
        let work = out.join("work");
        let io_dir = work.join("io");
        // Task outputs of an earlier lab run in this directory would only mislead.
        let _ = std::fs::remove_dir_all(&io_dir);
        for dir in [&out, &work, &io_dir] {
            std::fs::create_dir_all(dir).map_err(LabError::out(dir))?;
        }
        let probe_path = work.join("shimtrace-probe");
        write_probe(&probe_path).map_err(LabError::out(&probe_path))?;
        let rootfs_dir = work.join("rootfs");
        if args.image.is_none() {
            rootfs::build_rootfs(&rootfs_dir, &args.busybox, &probe_path)?;
        }
        let traced_dir = if args.untraced {
            None
        } else {
            prepare_traced_shims(&work, args.wrapper.as_deref())?
        };
        let (profiles, explicit) = select_profiles(args, traced_dir.as_deref())?;
        Ok(Lab {
            args,
            out,
            work,
            io_dir,
            rootfs_dir,
            probe_path,
            traced_dir,
            profiles,
            explicit,
            names: RunNames::new(),
        })
    }

    /// A run of `argv` in the lab's rootfs (or `--image`) as container `id`, before a profile
    /// applies its runtime.
    fn spec(&self, id: String, argv: &[&str]) -> RunSpec {
        let mut spec = RunSpec::new(id, &self.rootfs_dir, argv.iter().copied(), &self.io_dir);
        spec.timeout = Duration::from_secs(self.args.timeout);
        spec.image = self.args.image.clone();
        spec
    }
}

/// The profiles to run, in their configured order, and whether the user named them.
fn select_profiles(
    args: &LabArgs,
    traced_dir: Option<&Path>,
) -> Result<(Vec<Profile>, bool), LabError> {
    let runc_runtime = if traced_dir.is_some() {
        profiles::TRACED_RUNC_RUNTIME
    } else {
        profiles::RUNC_RUNTIME
    };
    let mut all_profiles = match &args.profiles {
        Some(path) => profiles::load_profiles(path)?,
        None => profiles::default_profiles(runc_runtime, traced_dir),
    };
    if !args.only.is_empty() {
        let known: Vec<String> = all_profiles.iter().map(|p| p.name.clone()).collect();
        for name in &args.only {
            if !known.contains(name) {
                return Err(LabError::UnknownProfile(name.clone(), known.join(", ")));
            }
        }
        all_profiles.retain(|p| args.only.contains(&p.name));
    }
    let explicit = args.profiles.is_some() || !args.only.is_empty();
    Ok((all_profiles, explicit))
}

/// What the lab has found so far: the report, and the errors about what the user asked for by
/// name, which make the run fail once the report is written.
struct Findings {
    report: LabReport,
    user_errors: Vec<String>,
}

impl Findings {
    fn new() -> Findings {
        Findings {
            report: LabReport {
                format_version: 1,
                generated_unix_nanos: shimtrace_containerd::wall_unix_nanos(),
                ..Default::default()
            },
            user_errors: Vec::new(),
        }
    }

    /// Records a profile that cannot run here: logged, in the report with its reason, and a user
    /// error when the user asked for that profile by name.
    fn skip(&mut self, mut result: ProfileResult, reason: String, explicit: bool) {
        log(format!("{}: skipped: {reason}", result.name));
        if explicit {
            self.user_errors
                .push(format!("profile {}: {reason}", result.name));
        }
        result.status = "skipped".into();
        result.reason = Some(reason);
        self.report.profiles.push(result);
    }

    /// An error the user must see: logged, in the report, and failing the run.
    fn user_error(&mut self, line: String) {
        log(&line);
        self.user_errors.push(line.clone());
        self.report.errors.push(line);
    }

    /// An error that ends the run: in the report, and returned to end it.
    fn fatal(&mut self, error: LabError) -> LabError {
        self.report.errors.push(error.to_string());
        error
    }

    /// Puts the measured profiles beside the skipped ones, in their configured order.
    fn place_in_order(&mut self, lab: &Lab<'_>, active: Vec<Active>) {
        let mut by_name: BTreeMap<String, ProfileResult> = active
            .into_iter()
            .map(|a| (a.profile.name.clone(), a.result))
            .collect();
        let skipped = std::mem::take(&mut self.report.profiles);
        for profile in &lab.profiles {
            if let Some(r) = by_name.remove(&profile.name) {
                self.report.profiles.push(r);
            } else if let Some(r) = skipped.iter().find(|r| r.name == profile.name) {
                self.report.profiles.push(r.clone());
            }
        }
    }

    /// `result` as `entry`'s served latency, its error also among the report's.
    fn served(&mut self, entry: &mut Active, result: HttpResult) {
        if let Some(e) = &result.error {
            self.report
                .errors
                .push(format!("{} HTTP: {e}", entry.profile.name));
        }
        entry.result.http = Some(result);
    }

    fn into_result(self, out: PathBuf) -> Result<PathBuf, LabError> {
        if self.user_errors.is_empty() {
            Ok(out)
        } else {
            Err(LabError::Incomplete {
                out,
                lines: self.user_errors,
            })
        }
    }
}

/// Stage 1, the host column: the probe run on the host, and the run's setup.
async fn host_probe(lab: &Lab<'_>, found: &mut Findings) {
    let report = &mut found.report;
    report.host_probe = run_host_probe(&lab.probe_path).await.unwrap_or_else(|e| {
        report.errors.push(format!("host probe: {e}"));
        Value::Null
    });
    report.setup = Setup {
        host_kernel: report.host_probe["kernel"]["release"]
            .as_str()
            .unwrap_or("?")
            .into(),
        host_cpu: report.host_probe["cpu_model"]
            .as_str()
            .unwrap_or("?")
            .into(),
        runs: lab.args.runs as usize,
        requests: lab.args.requests as usize,
        namespace: lab.args.namespace.clone(),
        traced: lab.traced_dir.is_some(),
        image: lab.args.image.clone(),
        ..Default::default()
    };
}

/// Where the lab's containers run and their shims spool.
struct Target {
    client: Containerd,
    /// The containerd the lab started, if it did; stopped when dropped.
    private: Option<PrivateContainerd>,
    /// Holds the private containerd's state; removed after it stops (fields drop in order).
    _private_dir: tempfile::TempDir,
    spool_dir: PathBuf,
    /// Spool spans that started before this are not this run's.
    spool_start: u64,
}

impl Target {
    /// Removes the lab's containers and stops a private containerd.
    async fn close(self, report: &mut LabReport) {
        if let Err(e) = self.client.cleanup().await {
            report.errors.push(format!("cleanup: {e}"));
        }
        drop(self.private);
    }
}

/// Stage 2, containerd: the one at `--address`, else a private one whose shims spool into the
/// output directory. When neither is there, the report is written with the host column and why.
async fn connect(lab: &Lab<'_>, found: &mut Findings) -> Result<Target, LabError> {
    let args = lab.args;
    let private_dir = tempfile::Builder::new()
        .prefix("shimtrace-lab-")
        .tempdir()
        .map_err(LabError::out(&std::env::temp_dir()))?;
    let mut private: Option<PrivateContainerd> = None;
    let spool_dir;
    let client = match Containerd::connect(&args.address).await {
        Ok(client) => {
            spool_dir = args
                .spool_dir
                .clone()
                .unwrap_or_else(|| PathBuf::from(shimtrace_span::spool::DEFAULT_SPOOL_DIR));
            client
        }
        Err(e) => {
            log(format!("{e}; starting a private containerd"));
            spool_dir = lab.out.join("spool");
            // Our own containerd's shims write only this run's spans here.
            let _ = std::fs::remove_dir_all(&spool_dir);
            let mut config = PrivateConfig::new(private_dir.path().join("containerd"));
            config.binary = args
                .containerd
                .clone()
                .unwrap_or_else(|| PathBuf::from("containerd"));
            config.remove_containers_in = vec![args.namespace.clone()];
            config.stop_timeout = std::time::Duration::from_secs(5);
            config.env = vec![(
                shimtrace_span::env::SPOOL_DIR.into(),
                spool_dir.clone().into_os_string(),
            )];
            if let Some(dir) = &lab.traced_dir {
                config.path_prepend.push(dir.clone());
            }
            let no_containerd = |p: &dyn std::fmt::Display| LabError::NoContainerd {
                address: args.address.clone(),
                reason: e.to_string(),
                private: p.to_string(),
            };
            // Starting waits for containerd to answer: off the async workers.
            let connected =
                match tokio::task::spawn_blocking(move || PrivateContainerd::start(config)).await {
                    Ok(Ok(started)) => match Containerd::connect(started.address()).await {
                        Ok(client) => Ok((started, client)),
                        Err(p) => Err(no_containerd(&p)),
                    },
                    Ok(Err(p)) => Err(no_containerd(&p)),
                    Err(p) => Err(no_containerd(&p)),
                };
            let (started, client) = match connected {
                Ok(pair) => pair,
                Err(fatal) => {
                    // Keep what was measured (the host column) next to the reason.
                    let fatal = found.fatal(fatal);
                    found.report.derive_conclusions();
                    write_reports(&lab.out, &found.report)?;
                    return Err(fatal);
                }
            };
            found.report.setup.private_containerd = true;
            private = Some(started);
            client
        }
    };
    let client = client.with_namespace(args.namespace.clone());
    let setup = &mut found.report.setup;
    setup.containerd_version = client.version().await.unwrap_or_else(|_| "?".into());
    setup.containerd_address = client.address().display().to_string();
    setup.spool_dir = spool_dir.display().to_string();
    Ok(Target {
        client,
        private,
        _private_dir: private_dir,
        spool_dir,
        spool_start: shimtrace_containerd::wall_unix_nanos(),
    })
}

/// Stages 3 to 7: preflight, cold starts, their shim spans, served latency and OTLP export. On
/// error, what was measured before stays in the report (the profiles that ran are dropped).
async fn measure(lab: &Lab<'_>, target: &Target, found: &mut Findings) -> Result<(), LabError> {
    let client = &target.client;
    let (mut active, image_command) = preflight(lab, client, found).await?;
    cold_starts(lab, client, &mut active, image_command.as_deref()).await?;
    attach_spans(
        &target.spool_dir,
        target.spool_start,
        &mut active,
        &mut found.report,
    );
    served_latency(lab, client, &mut active, found).await;
    let is_ours = |id: &str| lab.names.is_ours(id);
    export_otlp(lab, &target.spool_dir, target.spool_start, is_ours, found).await;
    found.place_in_order(lab, active);
    Ok(())
}

/// Stage 3, preflight: each profile's requirements, then one probe run whose output is its
/// isolation column; a profile that fails is skipped with the reason. With `--image`, also finds
/// the cold-start command (the image's /bin/true, else `true` via its /bin/sh), returned second.
async fn preflight(
    lab: &Lab<'_>,
    client: &Containerd,
    found: &mut Findings,
) -> Result<(Vec<Active>, Option<Vec<String>>), LabError> {
    let mut image_command: Option<Vec<String>> = None;
    let mut active: Vec<Active> = Vec::new();
    for profile in lab.profiles.iter().take_while(|_| !interrupted()) {
        let mut result = ProfileResult {
            name: profile.name.clone(),
            runtime: profile.runtime.clone(),
            runtime_path: profile
                .runtime_path
                .as_ref()
                .map(|p| p.display().to_string()),
            binary_name: profile
                .runsc
                .as_ref()
                .map(|r| format!("{} (via generated wrapper)", r.display()))
                .or_else(|| profile.binary_name.clone()),
            status: "ok".into(),
            ..Default::default()
        };
        if let Some(reason) = profile.missing_requirement() {
            found.skip(result, reason, lab.explicit);
            continue;
        }
        let probe_id = lab.names.container(&profile.name, "probe");
        // The probe's output and the line that says the profile is ready, or why it is not.
        let outcome = if lab.args.image.is_some() {
            match image_preflight(lab, client, profile, &probe_id).await {
                Ok((command, probe, notes)) => {
                    let setup = &mut found.report.setup;
                    setup
                        .image_notes
                        .extend(notes.into_iter().map(|n| format!("{}: {n}", profile.name)));
                    if image_command.is_none() {
                        setup
                            .image_notes
                            .insert(0, format!("cold-start command: `{}`", command.join(" ")));
                    }
                    image_command.get_or_insert(command);
                    let ready = format!("{}: ready (image {})", profile.name, spec_image(lab.args));
                    Ok((probe, ready))
                }
                Err(reason) => Err(reason),
            }
        } else {
            probe_preflight(lab, client, profile, probe_id)
                .await?
                .map(|probe| (probe, format!("{}: ready", profile.name)))
        };
        match outcome {
            Ok((probe, ready)) => {
                result.probe = probe;
                log(ready);
                active.push(Active {
                    profile: profile.clone(),
                    result,
                });
            }
            Err(reason) => {
                let reason = format!("does not run here: {}", one_line(&reason));
                found.skip(result, reason, lab.explicit);
            }
        }
    }
    Ok((active, image_command))
}

/// One run of the probe under `profile`: its output, or why it did not run.
async fn probe_preflight(
    lab: &Lab<'_>,
    client: &Containerd,
    profile: &Profile,
    id: String,
) -> Result<Result<Value, String>, LabError> {
    let mut spec = lab.spec(id, &[rootfs::PROBE_IN_ROOTFS]);
    profile.apply(&mut spec, Network::None, &lab.work)?;
    Ok(match client.run_to_exit(&spec).await {
        Ok(o) if o.exit_code == 0 => match parse_probe(&o.output) {
            Some(probe) => Ok(probe),
            None => Err(format!("probe printed no JSON: {}", o.output.trim())),
        },
        Ok(o) => Err(format!("probe exited {}: {}", o.exit_code, o.output.trim())),
        Err(e) => Err(e.to_string()),
    })
}

/// Stage 4, cold starts: `--runs` rounds interleaved across the profiles (see [`rotation`]).
async fn cold_starts(
    lab: &Lab<'_>,
    client: &Containerd,
    active: &mut [Active],
    image_command: Option<&[String]>,
) -> Result<(), LabError> {
    let bar = cold_start_bar(lab, active.len(), "cold start");
    for (round, index) in rotation(lab.args.runs, active.len()) {
        let entry = &mut active[index];
        bar.set_message(entry.profile.name.clone());
        let record = cold_start(lab, client, &entry.profile, round, image_command).await?;
        entry.result.runs.push(record);
        bar.inc(1);
    }
    bar.finish_and_clear();
    Ok(())
}

/// One cold start of `profile`: the client's phases and wall time, and with the probe, the time
/// to the workload's first instruction.
async fn cold_start(
    lab: &Lab<'_>,
    client: &Containerd,
    profile: &Profile,
    round: usize,
    image_command: Option<&[String]>,
) -> Result<RunRecord, LabError> {
    let id = lab.names.container(&profile.name, round);
    let argv: Vec<&str> = match image_command {
        Some(command) => command.iter().map(String::as_str).collect(),
        None => vec![rootfs::PROBE_IN_ROOTFS],
    };
    let mut spec = lab.spec(id.clone(), &argv);
    profile.apply(&mut spec, Network::None, &lab.work)?;
    let mut record = RunRecord {
        round,
        id,
        ..Default::default()
    };
    match client.run_to_exit(&spec).await {
        Ok(o) => {
            record.client_start_unix_nanos = o.client_start_unix_nanos;
            record.ok = o.exit_code == 0;
            record.wall_ms = Some(ms(o.total));
            let p = &o.phases;
            for (name, d) in [
                ("create_container", p.create_container),
                ("create_task", p.create_task),
                ("start_task", p.start_task),
                ("wait_exit", p.wait_exit),
                ("delete_task", p.delete_task),
                ("delete_container", p.delete_container),
            ] {
                record.phases_ms.insert(name.into(), ms(d));
            }
            if let Some(d) = p.prepare_snapshot {
                record.phases_ms.insert("prepare_snapshot".into(), ms(d));
            }
            match parse_probe(&o.output) {
                // An image's command prints nothing; it only has to succeed.
                _ if image_command.is_some() => {
                    if !record.ok {
                        record.error =
                            Some(format!("exit {}: {}", o.exit_code, one_line(&o.output)));
                    }
                }
                Some(probe) => {
                    record.to_workload_ms = to_workload_ms(&probe, o.client_start_unix_nanos);
                }
                None => {
                    record.ok = false;
                    record.error = Some(no_probe_output(o.exit_code, &o.output));
                }
            }
        }
        Err(e) => {
            record.client_start_unix_nanos = shimtrace_containerd::wall_unix_nanos();
            record.error = Some(one_line(&e.to_string()));
        }
    }
    Ok(record)
}

/// Stage 4's order under every engine: `--runs` rounds over `profiles` profiles, as (round, profile
/// index) pairs. Each round starts one profile later than the one before, so that no profile always
/// goes first.
fn rotation(runs: u32, profiles: usize) -> impl Iterator<Item = (usize, usize)> {
    (0..runs as usize)
        .flat_map(move |round| (0..profiles).map(move |k| (round, (round + k) % profiles)))
        .take_while(|_| !interrupted())
}

/// The progress bar of `--runs` rounds over `profiles` profiles, labelled `what`.
fn cold_start_bar(lab: &Lab<'_>, profiles: usize, what: &str) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(lab.args.runs as u64 * profiles as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template(&format!(
            "{what} {{bar:40}} {{pos}}/{{len}} {{msg}} [{{elapsed}}]"
        ))
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar
}

/// The time from the client's start (`client_start`, unix nanoseconds) to the workload's first
/// instruction, as the probe's output `probe` recorded it.
fn to_workload_ms(probe: &Value, client_start: u64) -> Option<f64> {
    probe["first_timestamp_unix_nanos"]
        .as_u64()
        .map(|t| (t as f64 - client_start as f64) / 1e6)
}

/// Why a cold start without the probe's output failed: its exit `code` and what it `printed`.
fn no_probe_output(code: impl std::fmt::Display, printed: &str) -> String {
    format!("exit {code}; no probe output: {}", one_line(printed))
}

/// Stage 5, the shim spans recorded for the lab's containers (those in `spool_dir` that started
/// after `spool_start`): attached to each run (relative to the client's start), then each
/// profile's cold-start summary.
fn attach_spans(spool_dir: &Path, spool_start: u64, active: &mut [Active], report: &mut LabReport) {
    let spans = read_spans(spool_dir, spool_start).unwrap_or_else(|e| {
        report.errors.push(format!(
            "the runs have no shim spans: {e} (pass --spool-dir where the wrapper spools)"
        ));
        BTreeMap::new()
    });
    for entry in active {
        for record in &mut entry.result.runs {
            let client_start = record.client_start_unix_nanos as f64;
            // A pod's sandbox spans, under names of their own, beside its container's.
            let sandbox = record
                .sandbox_id
                .as_ref()
                .and_then(|id| spans.get(id))
                .into_iter()
                .flatten()
                .map(|(name, timing)| (format!("sandbox {name}"), timing));
            let container = spans
                .get(&record.id)
                .into_iter()
                .flatten()
                .map(|(name, timing)| (name.clone(), timing));
            record.spans = sandbox
                .chain(container)
                .map(|(name, (start, duration_ms))| {
                    let timing = report::SpanTiming {
                        start_ms: (*start as f64 - client_start) / 1e6,
                        duration_ms: *duration_ms,
                    };
                    (name, timing)
                })
                .collect();
        }
        entry.result.cold_start = Some(cold_start_summary(
            &entry.result.runs,
            &entry.profile,
            &entry.result.probe,
        ));
        let failed: Vec<&RunRecord> = entry.result.runs.iter().filter(|r| !r.ok).collect();
        if let Some(first) = failed.first() {
            report.errors.push(format!(
                "{}: {} of {} cold starts failed; first: {}",
                entry.profile.name,
                failed.len(),
                entry.result.runs.len(),
                first.error.as_deref().unwrap_or("?")
            ));
        }
    }
}

/// Stage 6, served latency: per profile, busybox httpd on a loopback port answering `--requests`
/// GETs; p50 and p99 relative to runc's.
async fn served_latency(
    lab: &Lab<'_>,
    client: &Containerd,
    active: &mut [Active],
    found: &mut Findings,
) {
    let args = lab.args;
    if args.requests > 0 && args.image.is_some() {
        found.report.setup.image_notes.push(
            "served latency: not measured (it needs busybox httpd and the page of the built rootfs)"
                .into(),
        );
        return;
    }
    served_latency_by(lab, &ContainerdHttp { lab, client }, active, found).await;
}

/// Served latency on any engine, unless `--requests 0`: per profile, its server on a loopback
/// port, started by `engine` and measured with `--requests` GETs; then p50 and p99 relative to
/// runc's.
async fn served_latency_by(
    lab: &Lab<'_>,
    engine: &impl HttpEngine,
    active: &mut [Active],
    found: &mut Findings,
) {
    let requests = lab.args.requests as usize;
    if requests == 0 {
        return;
    }
    for (i, entry) in active.iter_mut().enumerate() {
        if interrupted() {
            break;
        }
        let Some(port) = http_port(lab.args.port, i, entry, found) else {
            continue;
        };
        log(format!(
            "{}: serving HTTP on 127.0.0.1:{port}{}",
            entry.profile.name,
            engine.how(entry)
        ));
        let result = serve_and_measure(lab, engine, entry, port, requests).await;
        found.served(entry, result);
    }
    relate_to_runc(active);
}

/// A server an [`HttpEngine`] started and the instant its start began, or why it did not start.
type Started<S> = Result<(S, Instant), String>;

/// How an engine runs the served-latency server that [`serve_and_measure`] names and invokes:
/// it starts the server, reads what it printed and removes it.
trait HttpEngine {
    /// A server this engine started.
    type Server;

    /// What the log line adds after the server's address: how this engine runs it.
    fn how(&self, entry: &Active) -> String;

    /// Starts workload `name` running `argv` under `entry`'s profile on the host network; returns
    /// it and the instant its start began (readiness is timed from there, after any preparation
    /// that is not part of starting it), or the error for the report.
    async fn start(&self, entry: &Active, name: &str, argv: &[&str]) -> Started<Self::Server>;

    /// What the server printed, for the error when it never answers.
    async fn output(&self, server: &Self::Server) -> String;

    /// Removes the server; the error for the report when that fails.
    async fn remove(&self, server: Self::Server) -> Result<(), String>;
}

/// The containerd API engine's server: a detached task in the lab's rootfs.
struct ContainerdHttp<'a> {
    lab: &'a Lab<'a>,
    client: &'a Containerd,
}

impl HttpEngine for ContainerdHttp<'_> {
    type Server = RunSpec;

    fn how(&self, _: &Active) -> String {
        String::new()
    }

    async fn start(&self, entry: &Active, name: &str, argv: &[&str]) -> Started<RunSpec> {
        let mut spec = self.lab.spec(name.to_string(), argv);
        entry
            .profile
            .apply(&mut spec, Network::Host, &self.lab.work)
            .map_err(|e| e.to_string())?;
        let started = Instant::now();
        self.client
            .start_detached(&spec)
            .await
            .map_err(|e| one_line(&e.to_string()))?;
        Ok((spec, started))
    }

    async fn output(&self, spec: &RunSpec) -> String {
        std::fs::read_to_string(spec.output_path()).unwrap_or_default()
    }

    async fn remove(&self, spec: RunSpec) -> Result<(), String> {
        self.client
            .delete(&spec.id)
            .await
            .map_err(|e| one_line(&e.to_string()))
    }
}

/// Served latency of `entry`'s profile: busybox httpd serving the rootfs's page on
/// 127.0.0.1:`port`, started by `engine`, measured with `requests` GETs, then removed. Of the
/// errors on the way, the first is kept.
async fn serve_and_measure<E: HttpEngine>(
    lab: &Lab<'_>,
    engine: &E,
    entry: &Active,
    port: u16,
    requests: usize,
) -> HttpResult {
    let mut result = HttpResult {
        port,
        requests,
        ..Default::default()
    };
    let name = lab.names.container(&entry.profile.name, "http");
    let listen = format!("127.0.0.1:{port}");
    let argv = ["/bin/httpd", "-f", "-p", &listen, "-h", "/www"];
    let (server, started) = match engine.start(entry, &name, &argv).await {
        Ok(started) => started,
        Err(e) => {
            result.error = Some(e);
            return result;
        }
    };
    await_and_measure(port, started, requests, &mut result, || {
        engine.output(&server)
    })
    .await;
    if let Err(e) = engine.remove(server).await {
        result.error.get_or_insert(e);
    }
    result
}

/// Each profile's served latency p50 and p99 relative to runc's.
fn relate_to_runc(active: &mut [Active]) {
    let runc = active
        .iter()
        .find(|a| a.profile.name == "runc")
        .and_then(|a| a.result.http.as_ref()?.latency.clone());
    if let Some(base) = runc {
        for entry in active {
            if let Some(h) = entry.result.http.as_mut() {
                if let Some(l) = &h.latency {
                    h.p50_vs_runc = Some(l.p50 / base.p50);
                    h.p99_vs_runc = Some(l.p99 / base.p99);
                }
            }
        }
    }
}

/// The loopback port of the `i`th profile's server: `--port` + i, else a free one. `None` (with
/// the reason recorded) when there is none to use.
fn http_port(base: Option<u16>, i: usize, entry: &mut Active, found: &mut Findings) -> Option<u16> {
    match base {
        Some(base) => {
            let port = base.saturating_add(i as u16);
            if http::port_in_use(port) {
                let line = format!(
                    "profile {}: port {port} on 127.0.0.1 is in use (choose another --port)",
                    entry.profile.name
                );
                log(&line);
                found.user_errors.push(line.clone());
                entry.result.http = Some(HttpResult {
                    port,
                    error: Some(line),
                    ..Default::default()
                });
                return None;
            }
            Some(port)
        }
        None => match http::free_port() {
            Ok(port) => Some(port),
            Err(e) => {
                found
                    .report
                    .errors
                    .push(format!("no free loopback port: {e}"));
                None
            }
        },
    }
}

/// Stages 5 to 7 on an engine that gives the containers their ids (Docker, CRI): the cold starts'
/// shim spans (in `spool_dir`, started after `spool_start`), served latency, and the OTLP export
/// of the spans of the runs' containers and pod sandboxes; then the profiles in their order.
async fn spans_serving_export(
    lab: &Lab<'_>,
    engine: &impl HttpEngine,
    (spool_dir, spool_start): (&Path, u64),
    mut active: Vec<Active>,
    found: &mut Findings,
) {
    attach_spans(spool_dir, spool_start, &mut active, &mut found.report);
    served_latency_by(lab, engine, &mut active, found).await;
    let ids: BTreeSet<String> = active
        .iter()
        .flat_map(|a| a.result.runs.iter())
        .flat_map(|r| std::iter::once(r.id.clone()).chain(r.sandbox_id.clone()))
        .collect();
    let is_ours = |id: &str| ids.contains(id);
    export_otlp(lab, spool_dir, spool_start, is_ours, found).await;
    found.place_in_order(lab, active);
}

/// Stage 7, with `--otlp`: sends this run's shim spans from the spool (those that started after
/// `spool_start`, of containers `is_ours` accepts) to the endpoint.
async fn export_otlp(
    lab: &Lab<'_>,
    spool_dir: &Path,
    spool_start: u64,
    is_ours: impl Fn(&str) -> bool,
    found: &mut Findings,
) {
    let Some(endpoint) = &lab.args.otlp else {
        return;
    };
    let spans = match shimtrace_span::spool::read_spool_if_made(spool_dir) {
        Ok(contents) => contents.spans,
        Err(e) => {
            found.user_error(format!("nothing sent to {endpoint}: {e}"));
            return;
        }
    };
    let ours: Vec<shimtrace_span::SpanRecord> = spans
        .into_iter()
        .filter(|s| s.start_time_unix_nano >= spool_start && s.container_id().is_some_and(&is_ours))
        .collect();
    match export_spans(endpoint, &lab.args.otlp_protocol, &ours).await {
        Ok(sent) => {
            log(format!("sent {sent} spans to {endpoint}"));
            found.report.setup.otlp_exported = Some(sent);
        }
        Err(e) => found.user_error(format!("OTLP export to {endpoint} failed: {e}")),
    }
}

/// Stage 8, the reports: the isolation comparison and the conclusions, written as report.md,
/// report.json and report.html.
fn write_report(lab: &Lab<'_>, report: &mut LabReport) -> Result<(), LabError> {
    report.isolation = isolation::compare(
        &report.host_probe,
        &report
            .profiles
            .iter()
            .filter(|p| p.status == "ok" && !p.probe.is_null())
            .map(|p| (p.name.clone(), p.probe.clone()))
            .collect(),
    );
    report.derive_conclusions();
    write_reports(&lab.out, report)?;
    log(format!(
        "report written to {}",
        lab.out.join("report.md").display()
    ));
    Ok(())
}

fn absolute(path: &Path) -> PathBuf {
    if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir()
            .map(|d| d.join(path))
            .unwrap_or_else(|_| path.to_path_buf())
    }
}

/// Links `containerd-shim-traced-runc-v2` (and `-kata-v2` when Kata is installed) to the wrapper
/// shim in `<work>/bin`, so the profiles run through it without touching system directories.
/// Returns that directory, or `None` when no wrapper is installed (and none was named).
pub fn prepare_traced_shims(
    work: &Path,
    wrapper: Option<&Path>,
) -> Result<Option<PathBuf>, LabError> {
    let wrapper = match wrapper {
        Some(path) => shimtrace_containerd::install::find_wrapper(Some(path))?,
        None => match shimtrace_containerd::install::find_wrapper(None)
            .ok()
            .or_else(|| std::fs::canonicalize(which(&profiles::runc_shim().traced_binary())?).ok())
        {
            Some(found) => found,
            None => return Ok(None),
        },
    };
    let dir = work.join("bin");
    std::fs::create_dir_all(&dir).map_err(LabError::out(&dir))?;
    for shim in [profiles::runc_shim(), profiles::kata_shim()] {
        if which(&shim.binary()).is_some() {
            shimtrace_containerd::install::ensure_symlink(
                &dir.join(shim.traced_binary()),
                &wrapper,
            )?;
        }
    }
    Ok(Some(dir))
}

async fn run_host_probe(probe: &Path) -> Result<Value, String> {
    let output = tokio::process::Command::new(probe)
        .output()
        .await
        .map_err(|e| format!("cannot run {}: {e}", probe.display()))?;
    serde_json::from_slice(&output.stdout).map_err(|e| format!("probe output is not JSON: {e}"))
}

fn parse_probe(output: &str) -> Option<Value> {
    output.lines().rev().find_map(|l| {
        serde_json::from_str::<Value>(l.trim())
            .ok()
            .filter(Value::is_object)
    })
}

fn spec_image(args: &LabArgs) -> &str {
    args.image.as_deref().unwrap_or("-")
}

/// With `--image`: finds a cold-start command the image can run (its `/bin/true`, else `true` via
/// its `/bin/sh`) and what isolation it can show without our probe (`uname -r`). Returns the
/// command, a partial probe (or null) and notes on what is unavailable; `Err` when nothing runs.
async fn image_preflight(
    lab: &Lab<'_>,
    client: &Containerd,
    profile: &Profile,
    id: &str,
) -> Result<(Vec<String>, Value, Vec<String>), String> {
    let run = |n: usize, argv: &[&str]| {
        let mut spec = lab.spec(format!("{id}-{n}"), argv);
        async move {
            profile
                .apply(&mut spec, Network::None, &lab.work)
                .map_err(|e| e.to_string())?;
            client.run_to_exit(&spec).await.map_err(|e| e.to_string())
        }
    };
    let mut notes = Vec::new();
    let mut failures = Vec::new();
    let mut command = None;
    for (n, argv) in [vec!["/bin/true"], vec!["/bin/sh", "-c", "true"]]
        .into_iter()
        .enumerate()
    {
        match run(n, &argv).await {
            Ok(o) if o.exit_code == 0 => {
                command = Some(argv.iter().map(|a| a.to_string()).collect::<Vec<_>>());
                break;
            }
            Ok(o) => failures.push(format!(
                "`{}` exited {}: {}",
                argv.join(" "),
                o.exit_code,
                one_line(&o.output)
            )),
            Err(e) => {
                // The image itself is unusable (missing, not unpacked): no point trying more.
                if e.contains("is not in containerd") || e.contains("is not unpacked") {
                    return Err(e);
                }
                failures.push(format!("`{}`: {e}", argv.join(" ")))
            }
        }
    }
    let Some(command) = command else {
        return Err(format!(
            "the image runs neither /bin/true nor /bin/sh -c true: {}",
            failures.join("; ")
        ));
    };
    notes.push("to-workload time: not measured (the probe is not in the image)".into());
    let probe = match run(2, &["uname", "-r"]).await {
        Ok(o) if o.exit_code == 0 && !o.output.trim().is_empty() => {
            notes.push(
                "isolation: only the kernel release (`uname -r` in the image); the other probes \
                 need the shimtrace probe"
                    .into(),
            );
            serde_json::json!({"kernel": {"release": o.output.trim()}})
        }
        Ok(o) => {
            notes.push(format!(
                "isolation: not measured (`uname -r` exited {}: {})",
                o.exit_code,
                one_line(&o.output)
            ));
            Value::Null
        }
        Err(e) => {
            notes.push(format!(
                "isolation: not measured (`uname -r` did not run: {})",
                one_line(&e)
            ));
            Value::Null
        }
    };
    Ok((command, probe, notes))
}

async fn export_spans(
    endpoint: &str,
    protocol: &str,
    spans: &[shimtrace_span::SpanRecord],
) -> Result<usize, shimtrace_collector::export::ExportError> {
    let overrides = shimtrace_collector::export::ExportOverrides {
        endpoint: Some(endpoint.to_string()),
        protocol: Some(protocol.to_string()),
        service_name: Some("shimtrace-lab".into()),
    };
    // The flags name everything; the environment only matters for OTEL_SDK_DISABLED.
    let Some(config) = shimtrace_collector::export::ExportConfig::resolve(
        &overrides,
        |k| std::env::var(k).ok(),
        false,
    )?
    else {
        return Ok(0);
    };
    shimtrace_collector::export::export_once(config, spans, 2).await
}

fn one_line(text: &str) -> String {
    let joined = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if joined.chars().count() > 300 {
        format!("{}…", joined.chars().take(300).collect::<String>())
    } else {
        joined
    }
}

fn cold_start_summary(runs: &[RunRecord], profile: &Profile, probe: &Value) -> ColdStart {
    let ok: Vec<&RunRecord> = runs.iter().filter(|r| r.ok).collect();
    let collect = |f: &dyn Fn(&RunRecord) -> Option<f64>| {
        ok.iter().filter_map(|r| f(r)).collect::<Vec<f64>>()
    };
    let mut phases = BTreeMap::new();
    let phase_names: BTreeSet<&String> = ok.iter().flat_map(|r| r.phases_ms.keys()).collect();
    for name in phase_names {
        if let Some(s) = Summary::of(&collect(&|r| r.phases_ms.get(name).copied())) {
            phases.insert(name.clone(), s);
        }
    }
    let mut spans = BTreeMap::new();
    let span_names: BTreeSet<&String> = ok.iter().flat_map(|r| r.spans.keys()).collect();
    for name in span_names {
        let start = Summary::of(&collect(&|r| r.spans.get(name).map(|t| t.start_ms)));
        let duration = Summary::of(&collect(&|r| r.spans.get(name).map(|t| t.duration_ms)));
        if let (Some(start), Some(duration)) = (start, duration) {
            spans.insert(name.clone(), report::SpanStats { start, duration });
        }
    }
    ColdStart {
        ok_runs: ok.len(),
        failed_runs: runs.len() - ok.len(),
        wall: Summary::of(&collect(&|r| r.wall_ms)),
        to_workload: Summary::of(&collect(&|r| r.to_workload_ms)),
        phases,
        spans,
        guest_boot_seconds: if profile.vm {
            probe["dmesg"]["last_timestamp_seconds"].as_f64()
        } else {
            None
        },
    }
}

/// Per container id, per span name: the first start (unix nanoseconds) and the summed duration (ms).
type SpansByContainer = BTreeMap<String, BTreeMap<String, (u64, f64)>>;

/// The spool's spans by container id and name, for spans that started after `since`.
fn read_spans(
    spool_dir: &Path,
    since: u64,
) -> Result<SpansByContainer, shimtrace_span::spool::ReadError> {
    let mut by_container = SpansByContainer::new();
    // A spool no wrapper made is an untraced run's: its rows say so.
    let contents = shimtrace_span::spool::read_spool_if_made(spool_dir)?;
    for span in contents.spans {
        if span.start_time_unix_nano < since {
            continue;
        }
        let Some(id) = span.container_id() else {
            continue;
        };
        let entry = by_container
            .entry(id.to_string())
            .or_default()
            .entry(span.name.clone())
            .or_insert((u64::MAX, 0.0));
        entry.0 = entry.0.min(span.start_time_unix_nano);
        entry.1 += span.duration_nanos() as f64 / 1e6;
    }
    Ok(by_container)
}

fn write_reports(out: &Path, report: &LabReport) -> Result<(), LabError> {
    let write = |name: &str, content: String| {
        shimtrace_containerd::files::replace_file(&out.join(name), content, None)
            .map_err(LabError::Report)
    };
    let json =
        serde_json::to_string_pretty(report).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"));
    write("report.json", json)?;
    write("report.md", report.to_markdown())?;
    write("report.html", report.to_html())
}

/// Served latency of a workload started at `started` to serve on 127.0.0.1:`port`: once it
/// answers, its readiness time and [`measure_requests`]; if it never does, the error with what the
/// workload printed (`output`).
async fn await_and_measure<F, Fut>(
    port: u16,
    started: Instant,
    requests: usize,
    result: &mut HttpResult,
    output: F,
) where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = String>,
{
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    match http::wait_ready(addr, "/index.html", Duration::from_secs(20)).await {
        Ok(()) => {
            result.ready_ms = Some(ms(started.elapsed()));
            measure_requests(addr, requests, result).await;
        }
        Err(e) => {
            let output = output().await;
            result.error = Some(one_line(&format!(
                "server never answered: {e}; container output: {output}"
            )));
        }
    }
}

/// The served-latency measurement against a workload answering at `addr`: a few unmeasured
/// requests so both sides have warmed up, then `requests` timed GETs into `result`.
async fn measure_requests(addr: SocketAddr, requests: usize, result: &mut HttpResult) {
    for _ in 0..5 {
        let _ = http::get(addr, "/index.html", Duration::from_secs(5)).await;
    }
    let mut first_error = None;
    for _ in (0..requests).take_while(|_| !interrupted()) {
        match http::get(addr, "/index.html", Duration::from_secs(5)).await {
            Ok(d) => result.samples_ms.push(ms(d)),
            Err(e) => {
                result.errors += 1;
                first_error.get_or_insert_with(|| e.to_string());
            }
        }
    }
    result.latency = Summary::of(&result.samples_ms);
    if let Some(first) = first_error {
        result.error = Some(format!(
            "{} of {requests} requests failed; first: {first}",
            result.errors
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_output_is_found_among_other_lines() {
        let out = "warning: x\n{\"kernel\":{\"release\":\"4.4.0\"}}\n";
        assert_eq!(parse_probe(out).unwrap()["kernel"]["release"], "4.4.0");
        assert!(parse_probe("no json\n").is_none());
    }

    #[test]
    fn every_round_starts_one_profile_later() {
        let order: Vec<_> = rotation(3, 3).collect();
        assert_eq!(
            order,
            [
                (0, 0),
                (0, 1),
                (0, 2),
                (1, 1),
                (1, 2),
                (1, 0),
                (2, 2),
                (2, 0),
                (2, 1)
            ]
        );
        assert_eq!(rotation(4, 0).count(), 0);
        assert_eq!(rotation(0, 2).count(), 0);
    }

    #[test]
    fn this_runs_container_names_are_its_own() {
        let names = RunNames {
            suffix: "5eed".into(),
        };
        for what in ["probe".to_string(), "3".into(), "http".into()] {
            let name = names.container("runc", &what);
            assert_eq!(name, format!("lab-runc-{what}-5eed"));
            assert!(names.is_ours(&name), "{name}");
        }
        for other in [
            "lab-runc-3-beef",
            "lab-runc-35eed",
            "runc-3-5eed",
            "lab-runc-3-5eed-x",
        ] {
            assert!(!names.is_ours(other), "{other}");
        }
        assert_eq!(names.pattern(), "lab-.*-5eed$");
    }

    #[test]
    fn embedded_probe_is_static() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("probe");
        write_probe(&path).unwrap();
        assert_eq!(rootfs::linkage(&path).unwrap(), rootfs::Linkage::Static);
    }
}
