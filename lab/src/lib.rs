//! The runtime lab (`shimtrace lab`): runs the same workloads under several runtimes through containerd and reports
//! cold start, isolation and served latency side by side (`report.md`, `report.json`, `report.html`).
//!
//! Order of work: host probe → containerd (the one at `--address`, else a private one) → profile
//! preflight (one probe run each; its output is the isolation column; a failure skips the profile
//! with the reason) → N cold-start rounds interleaved across profiles → shim spans from the spool →
//! HTTP latency per profile → reports. A failure part-way still writes what was measured.

pub mod http;
pub mod isolation;
pub mod profiles;
pub mod report;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;

use profiles::{Network, Profile};
use report::{ColdStart, HttpResult, LabReport, ProfileResult, RunRecord, Setup};
use shimtrace_collector::stats::{ms, Summary};
use shimtrace_containerd::rootfs;
use shimtrace_containerd::{Containerd, PrivateContainerd, PrivateContainerdConfig, RunSpec};

/// The static probe binary (built from `probe/` by this crate's build script).
pub const PROBE_BINARY: &[u8] = include_bytes!(env!("SHIMTRACE_PROBE_PATH"));

/// Writes the embedded probe to `path` (mode 0755).
pub fn write_probe(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, PROBE_BINARY)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))
}

/// `shimtrace lab` options.
#[derive(Debug, Clone, clap::Args)]
pub struct LabArgs {
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
    /// The containerd binary for a private instance.
    #[arg(long, default_value = "containerd")]
    pub containerd: PathBuf,
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

/// Errors that stop the lab or make its result incomplete.
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    #[error(
        "shimtrace lab must run as root (containerd and the runtimes need it): run it with sudo"
    )]
    NotRoot,
    #[error("cannot use output directory {path}: {source} (pass a writable --out)")]
    Out {
        path: PathBuf,
        source: std::io::Error,
    },
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
    #[error("no such profile: {0} (known: {1})")]
    UnknownProfile(String, String),
    #[error("cannot start the async runtime: {0}")]
    Runtime(std::io::Error),
    /// The report was written, but some of what was asked for could not be measured.
    #[error("the lab finished with errors (partial report in {}):\n{}", out.display(), lines.join("\n"))]
    Incomplete { out: PathBuf, lines: Vec<String> },
}

/// Runs the lab (blocking); returns the output directory.
pub fn run(args: LabArgs) -> Result<PathBuf, LabError> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(LabError::Runtime)?;
    runtime.block_on(run_async(args))
}

struct Active {
    profile: Profile,
    result: ProfileResult,
}

fn log(line: impl AsRef<str>) {
    eprintln!("shimtrace lab: {}", line.as_ref());
}

fn unique_suffix() -> String {
    format!(
        "{:x}",
        shimtrace_containerd::wall_unix_nanos() & 0xffff_ffff
    )
}

/// Runs the lab; returns the output directory.
pub async fn run_async(args: LabArgs) -> Result<PathBuf, LabError> {
    if !nix::unistd::geteuid().is_root() {
        return Err(LabError::NotRoot);
    }
    let out = absolute(&args.out);
    let work = out.join("work");
    let io_dir = work.join("io");
    // Task outputs of an earlier lab run in this directory would only mislead.
    let _ = std::fs::remove_dir_all(&io_dir);
    for dir in [&out, &work, &io_dir] {
        std::fs::create_dir_all(dir).map_err(|source| LabError::Out {
            path: dir.clone(),
            source,
        })?;
    }
    let probe_path = work.join("shimtrace-probe");
    write_probe(&probe_path).map_err(|source| LabError::Out {
        path: probe_path.clone(),
        source,
    })?;
    let rootfs_dir = work.join("rootfs");
    if args.image.is_none() {
        rootfs::build_rootfs(&rootfs_dir, &args.busybox, &probe_path)?;
    }

    // Profiles: the user's file, or the built-ins (whose missing binaries are merely skipped).
    let traced_dir = if args.untraced {
        None
    } else {
        prepare_traced_shims(&work, args.wrapper.as_deref())?
    };
    let runc_runtime = if traced_dir.is_some() {
        profiles::TRACED_RUNC_RUNTIME
    } else {
        profiles::RUNC_RUNTIME
    };
    let user_profiles = args.profiles.is_some();
    let mut all_profiles = match &args.profiles {
        Some(path) => profiles::load_profiles(path)?,
        None => profiles::default_profiles(runc_runtime, traced_dir.as_deref()),
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
    let explicit = user_profiles || !args.only.is_empty();

    let mut report = LabReport {
        format_version: 1,
        generated_unix_nanos: shimtrace_containerd::wall_unix_nanos(),
        ..Default::default()
    };
    let mut user_errors: Vec<String> = Vec::new();

    // The host column.
    report.host_probe = run_host_probe(&probe_path).await.unwrap_or_else(|e| {
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
        runs: args.runs as usize,
        requests: args.requests as usize,
        namespace: args.namespace.clone(),
        traced: traced_dir.is_some(),
        image: args.image.clone(),
        ..Default::default()
    };

    // containerd: the running one, else our own.
    let private_dir = tempfile::Builder::new()
        .prefix("shimtrace-lab-")
        .tempdir()
        .map_err(|source| LabError::Out {
            path: std::env::temp_dir(),
            source,
        })?;
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
            spool_dir = out.join("spool");
            // Our own containerd's shims write only this run's spans here.
            let _ = std::fs::remove_dir_all(&spool_dir);
            let mut config = PrivateContainerdConfig::new(private_dir.path().join("containerd"));
            config.binary = args.containerd.clone();
            config.namespaces = vec![args.namespace.clone()];
            config.env = vec![(
                shimtrace_span::env::SPOOL_DIR.into(),
                spool_dir.display().to_string(),
            )];
            if let Some(dir) = &traced_dir {
                config.path_prepend.push(dir.clone());
            }
            let no_containerd = |p: shimtrace_containerd::ContainerdError| LabError::NoContainerd {
                address: args.address.clone(),
                reason: e.to_string(),
                private: p.to_string(),
            };
            let connected = match PrivateContainerd::start(config).await {
                Ok(started) => match Containerd::connect(started.socket()).await {
                    Ok(client) => Ok((started, client)),
                    Err(p) => Err(no_containerd(p)),
                },
                Err(p) => Err(no_containerd(p)),
            };
            let (started, client) = match connected {
                Ok(pair) => pair,
                Err(fatal) => {
                    // Keep what was measured (the host column) next to the reason.
                    report.errors.push(fatal.to_string());
                    report.derive_conclusions();
                    write_reports(&out, &report)?;
                    return Err(fatal);
                }
            };
            report.setup.private_containerd = true;
            private = Some(started);
            client
        }
    };
    let client = client.with_namespace(args.namespace.clone());
    report.setup.containerd_version = client.version().await.unwrap_or_else(|_| "?".into());
    report.setup.containerd_address = client.address().display().to_string();
    report.setup.spool_dir = spool_dir.display().to_string();
    let spool_start = shimtrace_containerd::wall_unix_nanos();

    let result = measure(
        &args,
        &client,
        &all_profiles,
        explicit,
        &rootfs_dir,
        &work,
        &io_dir,
        &spool_dir,
        spool_start,
        &mut report,
        &mut user_errors,
    )
    .await;
    if let Err(e) = client.cleanup().await {
        report.errors.push(format!("cleanup: {e}"));
    }
    drop(private);

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
    write_reports(&out, &report)?;
    log(format!(
        "report written to {}",
        out.join("report.md").display()
    ));
    result?;
    if !user_errors.is_empty() {
        return Err(LabError::Incomplete {
            out,
            lines: user_errors,
        });
    }
    Ok(out)
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
            .or_else(|| std::fs::canonicalize(profiles::which(profiles::TRACED_RUNC_SHIM)?).ok())
        {
            Some(found) => found,
            None => return Ok(None),
        },
    };
    let dir = work.join("bin");
    std::fs::create_dir_all(&dir).map_err(|source| LabError::Out {
        path: dir.clone(),
        source,
    })?;
    for (real, traced) in [
        ("containerd-shim-runc-v2", profiles::TRACED_RUNC_SHIM),
        ("containerd-shim-kata-v2", profiles::TRACED_KATA_SHIM),
    ] {
        if profiles::which(real).is_some() {
            shimtrace_containerd::install::ensure_symlink(&dir.join(traced), &wrapper)?;
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

#[allow(clippy::too_many_arguments)]
async fn measure(
    args: &LabArgs,
    client: &Containerd,
    all_profiles: &[Profile],
    explicit: bool,
    rootfs_dir: &Path,
    work: &Path,
    io_dir: &Path,
    spool_dir: &Path,
    spool_start: u64,
    report: &mut LabReport,
    user_errors: &mut Vec<String>,
) -> Result<(), LabError> {
    let suffix = unique_suffix();
    let timeout = Duration::from_secs(args.timeout);
    let base_spec = |id: String, argv: &[&str]| {
        let mut spec = RunSpec::new(id, rootfs_dir, argv.iter().copied(), io_dir);
        spec.timeout = timeout;
        spec.image = args.image.clone();
        spec
    };
    // With --image: the cold-start command, found in preflight (the image's /bin/true, else `true`
    // via its /bin/sh).
    let mut image_command: Option<Vec<String>> = None;

    // Preflight: requirements, then one probe run (the isolation column).
    let mut active: Vec<Active> = Vec::new();
    for profile in all_profiles {
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
            skip_profile(report, result, reason, explicit, user_errors);
            continue;
        }
        if args.image.is_some() {
            let probe_id = format!("lab-{}-probe-{suffix}", profile.name);
            match image_preflight(client, profile, &base_spec, &probe_id, work).await {
                Ok((command, probe, notes)) => {
                    result.probe = probe;
                    report
                        .setup
                        .image_notes
                        .extend(notes.into_iter().map(|n| format!("{}: {n}", profile.name)));
                    if image_command.is_none() {
                        report
                            .setup
                            .image_notes
                            .insert(0, format!("cold-start command: `{}`", command.join(" ")));
                    }
                    image_command.get_or_insert(command);
                    log(format!(
                        "{}: ready (image {})",
                        profile.name,
                        spec_image(args)
                    ));
                    active.push(Active {
                        profile: profile.clone(),
                        result,
                    });
                }
                Err(reason) => {
                    let reason = format!("does not run here: {}", one_line(&reason));
                    skip_profile(report, result, reason, explicit, user_errors);
                }
            }
            continue;
        }
        let mut spec = base_spec(
            format!("lab-{}-probe-{suffix}", profile.name),
            &[rootfs::PROBE_IN_ROOTFS],
        );
        profile.apply(&mut spec, Network::None, work)?;
        let outcome = client.run_to_exit(&spec).await;
        let failure = match &outcome {
            Ok(o) if o.exit_code == 0 => match parse_probe(&o.output) {
                Some(probe) => {
                    result.probe = probe;
                    None
                }
                None => Some(format!("probe printed no JSON: {}", o.output.trim())),
            },
            Ok(o) => Some(format!("probe exited {}: {}", o.exit_code, o.output.trim())),
            Err(e) => Some(e.to_string()),
        };
        if let Some(reason) = failure {
            let reason = format!("does not run here: {}", one_line(&reason));
            skip_profile(report, result, reason, explicit, user_errors);
            continue;
        }
        log(format!("{}: ready", profile.name));
        active.push(Active {
            profile: profile.clone(),
            result,
        });
    }

    // Cold starts, interleaved; the order rotates every round so no profile always goes first.
    let total = args.runs as u64 * active.len() as u64;
    let bar = indicatif::ProgressBar::new(total);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "cold start {bar:40} {pos}/{len} {msg} [{elapsed}]",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    for round in 0..args.runs as usize {
        for k in 0..active.len() {
            let index = (round + k) % active.len();
            let entry = &mut active[index];
            bar.set_message(entry.profile.name.clone());
            let id = format!("lab-{}-{round}-{suffix}", entry.profile.name);
            let argv: Vec<&str> = match &image_command {
                Some(command) => command.iter().map(String::as_str).collect(),
                None => vec![rootfs::PROBE_IN_ROOTFS],
            };
            let mut spec = base_spec(id.clone(), &argv);
            entry.profile.apply(&mut spec, Network::None, work)?;
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
                            record.to_workload_ms = probe["first_timestamp_unix_nanos"]
                                .as_u64()
                                .map(|t| (t as f64 - o.client_start_unix_nanos as f64) / 1e6);
                        }
                        None => {
                            record.ok = false;
                            record.error = Some(format!(
                                "exit {}; no probe output: {}",
                                o.exit_code,
                                one_line(&o.output)
                            ));
                        }
                    }
                }
                Err(e) => {
                    record.client_start_unix_nanos = shimtrace_containerd::wall_unix_nanos();
                    record.error = Some(one_line(&e.to_string()));
                }
            }
            entry.result.runs.push(record);
            bar.inc(1);
        }
    }
    bar.finish_and_clear();

    // Shim spans recorded for our containers.
    let spans = read_spans(spool_dir, spool_start);
    for entry in &mut active {
        for record in &mut entry.result.runs {
            if let Some(by_name) = spans.get(&record.id) {
                let client_start = record.client_start_unix_nanos as f64;
                record.spans = by_name
                    .iter()
                    .map(|(name, (start, duration_ms))| {
                        let timing = report::SpanTiming {
                            start_ms: (*start as f64 - client_start) / 1e6,
                            duration_ms: *duration_ms,
                        };
                        (name.clone(), timing)
                    })
                    .collect();
            }
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

    // Served latency.
    if args.requests > 0 && args.image.is_some() {
        report.setup.image_notes.push(
            "served latency: not measured (it needs busybox httpd and the page of the built rootfs)"
                .into(),
        );
    } else if args.requests > 0 {
        for (i, entry) in active.iter_mut().enumerate() {
            let port = match args.port {
                Some(base) => {
                    let port = base.saturating_add(i as u16);
                    if http::port_in_use(port) {
                        let line = format!(
                            "profile {}: port {port} on 127.0.0.1 is in use (choose another --port)",
                            entry.profile.name
                        );
                        log(&line);
                        user_errors.push(line.clone());
                        entry.result.http = Some(HttpResult {
                            port,
                            error: Some(line),
                            ..Default::default()
                        });
                        continue;
                    }
                    port
                }
                None => match http::free_port() {
                    Ok(port) => port,
                    Err(e) => {
                        report.errors.push(format!("no free loopback port: {e}"));
                        continue;
                    }
                },
            };
            log(format!(
                "{}: serving HTTP on 127.0.0.1:{port}",
                entry.profile.name
            ));
            let result = serve_and_measure(
                client,
                entry,
                port,
                args.requests as usize,
                &base_spec(
                    format!("lab-http-{}-{suffix}", entry.profile.name),
                    &[
                        "/bin/httpd",
                        "-f",
                        "-p",
                        &format!("127.0.0.1:{port}"),
                        "-h",
                        "/www",
                    ],
                ),
                work,
            )
            .await;
            if let Some(e) = &result.error {
                report
                    .errors
                    .push(format!("{} HTTP: {e}", entry.profile.name));
            }
            entry.result.http = Some(result);
        }
        let runc = active
            .iter()
            .find(|a| a.profile.name == "runc")
            .and_then(|a| a.result.http.as_ref()?.latency.clone());
        if let Some(base) = runc {
            for entry in &mut active {
                if let Some(h) = entry.result.http.as_mut() {
                    if let Some(l) = &h.latency {
                        h.p50_vs_runc = Some(l.p50 / base.p50);
                        h.p99_vs_runc = Some(l.p99 / base.p99);
                    }
                }
            }
        }
    }
    if let Some(endpoint) = &args.otlp {
        let ours: Vec<shimtrace_span::SpanRecord> = shimtrace_span::spool::read_spool(spool_dir)
            .map(|c| c.spans)
            .unwrap_or_default()
            .into_iter()
            .filter(|s| {
                s.start_time_unix_nano >= spool_start
                    && s.container_id()
                        .is_some_and(|id| id.starts_with("lab-") && id.ends_with(&suffix))
            })
            .collect();
        match export_spans(endpoint, &args.otlp_protocol, &ours).await {
            Ok(sent) => {
                log(format!("sent {sent} spans to {endpoint}"));
                report.setup.otlp_exported = Some(sent);
            }
            Err(e) => {
                let line = format!("OTLP export to {endpoint} failed: {e}");
                log(&line);
                user_errors.push(line.clone());
                report.errors.push(line);
            }
        }
    }
    // Keep the profiles in their configured order.
    let mut by_name: BTreeMap<String, ProfileResult> = active
        .into_iter()
        .map(|a| (a.profile.name.clone(), a.result))
        .collect();
    let skipped = std::mem::take(&mut report.profiles);
    for profile in all_profiles {
        if let Some(r) = by_name.remove(&profile.name) {
            report.profiles.push(r);
        } else if let Some(r) = skipped.iter().find(|r| r.name == profile.name) {
            report.profiles.push(r.clone());
        }
    }
    Ok(())
}

fn spec_image(args: &LabArgs) -> &str {
    args.image.as_deref().unwrap_or("-")
}

/// With `--image`: finds a cold-start command the image can run (its `/bin/true`, else `true` via
/// its `/bin/sh`) and what isolation it can show without our probe (`uname -r`). Returns the
/// command, a partial probe (or null) and notes on what is unavailable; `Err` when nothing runs.
async fn image_preflight(
    client: &Containerd,
    profile: &Profile,
    base_spec: &dyn Fn(String, &[&str]) -> RunSpec,
    id: &str,
    work: &Path,
) -> Result<(Vec<String>, Value, Vec<String>), String> {
    let run = |n: usize, argv: &[&str]| {
        let mut spec = base_spec(format!("{id}-{n}"), argv);
        async move {
            profile
                .apply(&mut spec, Network::None, work)
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

/// Records a profile that cannot run here: logged, in the report with its reason, and a user error
/// when the user asked for that profile by name.
fn skip_profile(
    report: &mut LabReport,
    mut result: ProfileResult,
    reason: String,
    explicit: bool,
    user_errors: &mut Vec<String>,
) {
    log(format!("{}: skipped: {reason}", result.name));
    if explicit {
        user_errors.push(format!("profile {}: {reason}", result.name));
    }
    result.status = "skipped".into();
    result.reason = Some(reason);
    report.profiles.push(result);
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

/// Spool spans by container id and name (first start in unix nanoseconds, summed duration in ms),
/// for spans that started after `since`.
fn read_spans(spool_dir: &Path, since: u64) -> BTreeMap<String, BTreeMap<String, (u64, f64)>> {
    let mut by_container: BTreeMap<String, BTreeMap<String, (u64, f64)>> = BTreeMap::new();
    let Ok(contents) = shimtrace_span::spool::read_spool(spool_dir) else {
        return by_container;
    };
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
    by_container
}

async fn serve_and_measure(
    client: &Containerd,
    entry: &Active,
    port: u16,
    requests: usize,
    base: &RunSpec,
    work: &Path,
) -> HttpResult {
    let mut result = HttpResult {
        port,
        requests,
        ..Default::default()
    };
    let mut spec = base.clone();
    if let Err(e) = entry.profile.apply(&mut spec, Network::Host, work) {
        result.error = Some(e.to_string());
        return result;
    }
    let started = Instant::now();
    if let Err(e) = client.start_detached(&spec).await {
        result.error = Some(one_line(&e.to_string()));
        return result;
    }
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    match http::wait_ready(addr, "/index.html", Duration::from_secs(20)).await {
        Ok(()) => {
            result.ready_ms = Some(ms(started.elapsed()));
            // A few unmeasured requests so both sides have warmed up.
            for _ in 0..5 {
                let _ = http::get(addr, "/index.html", Duration::from_secs(5)).await;
            }
            let mut first_error = None;
            for _ in 0..requests {
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
        Err(e) => {
            let output = std::fs::read_to_string(spec.output_path()).unwrap_or_default();
            result.error = Some(one_line(&format!(
                "server never answered: {e}; container output: {output}"
            )));
        }
    }
    if let Err(e) = client.delete(&spec.id).await {
        result.error.get_or_insert_with(|| one_line(&e.to_string()));
    }
    result
}

fn write_reports(out: &Path, report: &LabReport) -> Result<(), LabError> {
    let write = |name: &str, content: String| {
        let path = out.join(name);
        let tmp = out.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, content)
            .and_then(|()| std::fs::rename(&tmp, &path))
            .map_err(|source| LabError::Out { path, source })
    };
    let json =
        serde_json::to_string_pretty(report).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"));
    write("report.json", json)?;
    write("report.md", report.to_markdown())?;
    write("report.html", report.to_html())
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
    fn embedded_probe_is_static() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("probe");
        write_probe(&path).unwrap();
        assert!(rootfs::is_static_elf(&path).unwrap());
    }
}
