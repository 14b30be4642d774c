//! `shimtrace lab --engine cri` (or `--cri`): the same profiles as Kubernetes RuntimeClass
//! handlers, driven through containerd's CRI the way the kubelet drives it.
//!
//! The lab starts a private containerd with its CRI plugin on (the newest under
//! `/opt/shimtrace/containerd`, else `containerd` on `PATH`, or `--containerd`) and registers the
//! handlers with `shimtrace install --write` itself, in the form that containerd honours:
//! `traced-runc`, `traced-runsc` (gVisor through the runc shim, with a generated runsc wrapper for
//! host-network pods) and, when crun is installed, `traced-crun` (crun through the runc shim,
//! merged the way install merges its own). From 1.7.1 on that is the `runtime_path` form, where
//! runc's `BinaryName` names the OCI runtime; on 1.6.x and 1.7.0, the runtime-name form, where
//! runc's options cannot pass, so gVisor and crun get runtime names of their own that the lab's
//! own wrapper config (`SHIMTRACE_CONFIG` of its containerd, never the machine's
//! `/etc/shimtrace/config.toml`) maps to the runc shim with that OCI runtime.
//! The workload and sandbox images are built from the lab's rootfs and imported into CRI's
//! namespace. Pods run on the host network, which needs no CNI plugin.
//!
//! A cold start is one pod as the kubelet starts it: RunPodSandbox, CreateContainer,
//! StartContainer, then ContainerStatus until the container runs — pod startup, split into the
//! sandbox's part and the container's. The probe's output comes from the container's CRI log.
//! Served latency is busybox httpd in a host-network pod. Every pod is stopped and removed after
//! its run, and containerd is stopped before the lab returns.

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use shimtrace_collector::stats::ms;
use shimtrace_containerd::cri::{ContainerSpec, ContainerState, Cri, CriError, Pod, PodSpec};
use shimtrace_containerd::image::{containerd_reference, SANDBOX_COMMAND, SANDBOX_TAG};
use shimtrace_containerd::install::{
    ensure_symlink, find_real_shims, find_wrapper, install, merge_config, merge_wrapper_config,
    write_wrapper_config, Form, InstallArgs, InstallOutcome, RealShim, TracedRuntime,
};
use shimtrace_containerd::private::{
    await_cri_ready, ctr_beside, import_cri_image, make_private, newest_unpacked, path_with,
    ConfigSource, ContainerdBinary, CriSettings, PrivateConfig, PrivateContainerd, UNPACKED_PREFIX,
};
use shimtrace_containerd::rootfs;
use shimtrace_span::naming::{traced_handler, which};

use crate::profiles::{self, Profile};
use crate::report::{CriSetup, ProfileResult, RunRecord};
use crate::{
    log, one_line, parse_probe, spans_serving_export, to_workload_ms, Active, Findings, HttpEngine,
    Lab, LabError, Started,
};

/// The lab's workload image in CRI (busybox, the probe and the served page).
const WORKLOAD_TAG: &str = "local/shimtrace-lab:1";
/// The Kubernetes namespace of the lab's pods.
const POD_NAMESPACE: &str = "shimtrace-lab";
/// How often ContainerStatus is asked while a container starts: the resolution of pod startup.
const STATUS_POLL: Duration = Duration::from_millis(2);
/// The lab's own wrapper config, in its work dir: its containerd's `SHIMTRACE_CONFIG`.
const WRAPPER_CONFIG_FILE: &str = "shimtrace-config.toml";

/// Where the lab's pods run: a private CRI containerd, its handlers, images and spool.
struct CriTarget {
    cri: Cri,
    /// Stopped in `close` (or when dropped), before `_dir` goes.
    private: Option<PrivateContainerd>,
    _dir: tempfile::TempDir,
    image: String,
    /// Each profile's handler: name, runtime type, runtime path, OCI binary.
    handlers: BTreeMap<String, TracedRuntime>,
    /// Pod log directories (`<out>/work/pods/<pod>/workload.log`).
    logs: PathBuf,
    spool_dir: PathBuf,
    spool_start: u64,
    timeout: Duration,
}

fn cri_error(what: &str) -> impl FnOnce(&dyn std::fmt::Display) -> LabError + '_ {
    move |e| LabError::Cri(format!("{what}: {e}"))
}

/// Runs the CRI stages after the host probe: containerd, handlers and images, preflight, cold
/// starts, shim spans, served latency, OTLP export; then removes every pod and stops containerd.
/// The caller writes the report.
pub(crate) async fn measure(lab: &Lab<'_>, found: &mut Findings) -> Result<(), LabError> {
    let target = connect(lab, found).await.map_err(|e| found.fatal(e))?;
    let mut active = preflight(lab, &target, found).await;
    cold_starts(lab, &target, &mut active).await;
    let spool = (target.spool_dir.as_path(), target.spool_start);
    spans_serving_export(lab, &target, spool, active, found).await;
    target.close(found).await;
    Ok(())
}

/// The containerd for `--engine cri`: `--containerd`, else the newest unpacked one, else
/// `containerd` on PATH. Every version runs: install picks the form it honours.
fn choose_containerd(explicit: Option<&Path>) -> Result<ContainerdBinary, LabError> {
    let chosen = explicit
        .map(Path::to_path_buf)
        .or_else(|| newest_unpacked(Path::new(UNPACKED_PREFIX)))
        .unwrap_or_else(|| PathBuf::from("containerd"));
    let resolved = if chosen.components().count() == 1 {
        chosen
            .to_str()
            .and_then(which)
            .unwrap_or_else(|| chosen.clone())
    } else {
        chosen
    };
    ContainerdBinary::probe(&resolved).map_err(|e| cri_error("the containerd for --engine cri")(&e))
}

/// The registration form install wrote, why it suits this containerd and what it costs, in
/// install's own words (its report's form line and `costs:` line).
fn form_summary(outcome: &InstallOutcome) -> String {
    let mut summary = outcome.form.describe().to_string();
    for line in outcome.report.lines() {
        if let Some((_, why)) = line
            .strip_prefix("# containerd ")
            .and_then(|rest| rest.split_once(" — "))
        {
            summary.push_str(&format!(": {why}"));
        } else if let Some(costs) = line.strip_prefix("#   costs: ") {
            summary.push_str(&format!("; costs: {costs}"));
        }
    }
    summary
}

/// The `traced-crun` handler: crun has no shim of its own, so the runc shim runs it as its OCI
/// runtime, registered as install registers gVisor through the runc shim.
fn crun_runtime(form: Form, bin: &Path, runc_shim: &RealShim, crun: &Path) -> TracedRuntime {
    TracedRuntime::through_runc_shim("crun", crun, runc_shim, bin, form)
}

/// `shimtrace install` arguments parsed as the CLI parses them.
fn parse_install_args(argv: Vec<OsString>) -> Result<InstallArgs, LabError> {
    use clap::{Args, FromArgMatches};
    let command = InstallArgs::augment_args(clap::Command::new("shimtrace install"));
    let matches = command
        .try_get_matches_from(std::iter::once(OsString::from("install")).chain(argv))
        .map_err(|e| cri_error("registering the handlers")(&e))?;
    InstallArgs::from_arg_matches(&matches).map_err(|e| cri_error("registering the handlers")(&e))
}

/// Starts the private CRI containerd with the lab's handlers registered and its images imported.
async fn connect(lab: &Lab<'_>, found: &mut Findings) -> Result<CriTarget, LabError> {
    reject_unsupported_flags(lab.args)?;
    let binary = choose_containerd(lab.args.containerd.as_deref())?;
    let cri_settings = CriSettings {
        sandbox_image: containerd_reference(SANDBOX_TAG),
    };
    let layout = CriLayout::prepare(lab, &binary, &cri_settings)?;
    let handlers = register_handlers(lab, &binary, &layout)?;
    let private = start_containerd(&binary, &layout, &handlers).await?;
    let address = private.address();
    let timeout = Duration::from_secs(lab.args.timeout);
    let mut target = CriTarget {
        cri: Cri::connect(&address)
            .await
            .map_err(|e| cri_error("connecting to containerd's CRI")(&e))?
            .with_timeout(timeout),
        private: Some(private),
        _dir: layout.dir,
        image: String::new(),
        handlers: handlers.of_profiles(&lab.profiles),
        logs: layout.logs,
        spool_dir: layout.spool_dir,
        spool_start: shimtrace_containerd::wall_unix_nanos(),
        timeout,
    };
    await_cri_ready(&target.cri, Duration::from_secs(30))
        .await
        .map_err(|e| cri_error("containerd's CRI plugin")(&e))?;
    import_images(lab, &binary, &address, &mut target).await?;

    let setup = &mut found.report.setup;
    setup.containerd_version = binary.version().to_string();
    setup.containerd_address = address.display().to_string();
    setup.private_containerd = true;
    setup.traced = true;
    setup.namespace = shimtrace_containerd::image::CRI_NAMESPACE.into();
    setup.spool_dir = target.spool_dir.display().to_string();
    setup.cri = Some(CriSetup {
        containerd: binary.path().display().to_string(),
        form: form_summary(&handlers.outcome),
        handlers: target
            .handlers
            .iter()
            .map(|(profile, r)| (profile.clone(), r.handler.clone()))
            .collect(),
        notes: setup_notes(&target, &cri_settings, &handlers, &layout.wrapper_config),
    });
    Ok(target)
}

/// The lab's options that `--engine cri` cannot honour, refused with the reason.
fn reject_unsupported_flags(args: &crate::LabArgs) -> Result<(), LabError> {
    for (given, flag, why) in [
        (args.image.is_some(), "--image", "the lab imports its own images into CRI (busybox, the probe and a sandbox image)"),
        (args.profiles.is_some(), "--profiles", "each built-in profile is registered as a RuntimeClass handler by `shimtrace install`; choose among them with --only"),
        (args.untraced, "--untraced", "the handlers are the traced ones `shimtrace install` registers"),
    ] {
        if given {
            return Err(LabError::Cri(format!(
                "{flag} is not supported with --engine cri: {why}"
            )));
        }
    }
    Ok(())
}

/// Where the lab's CRI containerd and its shims keep their files.
struct CriLayout {
    /// Short, under /tmp: containerd's sockets live below it.
    dir: tempfile::TempDir,
    /// containerd's root, state, sockets and `config.toml`.
    containerd_dir: PathBuf,
    config_path: PathBuf,
    /// The wrapper links and generated scripts.
    bin: PathBuf,
    /// The lab's own wrapper config (its containerd's `SHIMTRACE_CONFIG`).
    wrapper_config: PathBuf,
    spool_dir: PathBuf,
    logs: PathBuf,
}

impl CriLayout {
    /// Makes the directories, clears an earlier run's spool and pod logs, and writes containerd's
    /// base config (CRI on, the sandbox image) and an empty wrapper config: the machine's
    /// `/etc/shimtrace/config.toml` must neither redirect the lab's wrappers nor get its entries.
    fn prepare(
        lab: &Lab<'_>,
        binary: &ContainerdBinary,
        cri_settings: &CriSettings,
    ) -> Result<CriLayout, LabError> {
        let schema = binary.config_version();
        let dir = tempfile::Builder::new()
            .prefix("shimtrace-lab-cri-")
            .tempdir_in("/tmp")
            .map_err(LabError::out(Path::new("/tmp")))?;
        let containerd_dir = dir.path().join("c");
        let bin = dir.path().join("bin");
        for d in [&containerd_dir, &bin] {
            std::fs::create_dir_all(d).map_err(LabError::out(d))?;
        }
        let spool_dir = lab.out.join("spool");
        // Our own containerd's shims write only this run's spans here.
        let _ = std::fs::remove_dir_all(&spool_dir);
        let logs = lab.work.join("pods");
        let _ = std::fs::remove_dir_all(&logs);
        let wrapper_config = lab.work.join(WRAPPER_CONFIG_FILE);
        write_wrapper_config(&wrapper_config, "")?;
        let config_path = containerd_dir.join("config.toml");
        let base = make_private(
            &format!("version = {schema}\n"),
            &containerd_dir,
            schema,
            Some(cri_settings),
        )
        .map_err(|e| cri_error("writing containerd's config")(&e))?;
        std::fs::write(&config_path, base).map_err(LabError::out(&config_path))?;
        Ok(CriLayout {
            dir,
            containerd_dir,
            config_path,
            bin,
            wrapper_config,
            spool_dir,
            logs,
        })
    }
}

/// The handlers registered in the lab's containerd, and what install said of them.
struct Handlers {
    /// What install registered and said.
    outcome: InstallOutcome,
    /// `traced-crun`, when crun and a runc shim are installed.
    crun: Option<TracedRuntime>,
    /// gVisor's runsc, when installed.
    runsc: Option<PathBuf>,
}

impl Handlers {
    fn form(&self) -> Form {
        self.outcome.form
    }

    /// Install's runtimes, then `traced-crun`.
    fn runtimes(&self) -> impl Iterator<Item = &TracedRuntime> {
        self.outcome.runtimes.iter().chain(&self.crun)
    }

    fn named(&self, handler: &str) -> Option<&TracedRuntime> {
        self.runtimes().find(|r| r.handler == handler)
    }

    /// Each profile's handler (`traced-<profile>`), for the profiles that have one.
    fn of_profiles(&self, profiles: &[Profile]) -> BTreeMap<String, TracedRuntime> {
        profiles
            .iter()
            .filter_map(|p| {
                let entry = self.named(&traced_handler(&p.name))?;
                Some((p.name.clone(), entry.clone()))
            })
            .collect()
    }
}

/// Registers the handlers as a user registers them, with `shimtrace install --write` (gVisor
/// through a runsc wrapper for host-network pods), then `traced-crun` when crun is installed.
fn register_handlers(
    lab: &Lab<'_>,
    binary: &ContainerdBinary,
    layout: &CriLayout,
) -> Result<Handlers, LabError> {
    let shim_path = path_with(binary.path().parent().map(Path::to_path_buf))
        .map_err(|e| cri_error("building the shim PATH")(&e))?;
    let mut argv: Vec<OsString> = vec![
        "--bin-dir".into(),
        layout.bin.clone().into(),
        "--config".into(),
        layout.config_path.clone().into(),
        "--containerd".into(),
        binary.path().into(),
        "--shim-path".into(),
        shim_path.clone(),
        "--wrapper-config".into(),
        layout.wrapper_config.clone().into(),
        "--write".into(),
    ];
    if let Some(wrapper) = &lab.args.wrapper {
        argv.extend(["--wrapper".into(), wrapper.clone().into()]);
    }
    let runsc = which("runsc");
    if let Some(runsc) = &runsc {
        let wrapper = profiles::write_runsc_cri_wrapper(&lab.work, runsc)?;
        argv.extend(["--runsc".into(), wrapper.into()]);
    }
    let install_args = parse_install_args(argv)?;
    let outcome = tokio::task::block_in_place(|| install(&install_args))?;
    let crun = register_crun(lab, binary, layout, outcome.form, &shim_path)?;
    Ok(Handlers {
        outcome,
        crun,
        runsc,
    })
}

/// Adds `traced-crun` to containerd's config (and, in the runtime-name form, to the lab's wrapper
/// config, with its link), merged as install merges its own; `None` without crun or a runc shim.
fn register_crun(
    lab: &Lab<'_>,
    binary: &ContainerdBinary,
    layout: &CriLayout,
    form: Form,
    shim_path: &OsStr,
) -> Result<Option<TracedRuntime>, LabError> {
    let runc_shim = find_real_shims(shim_path)
        .into_iter()
        .find(|s| s.name == profiles::runc_shim());
    let (Some(crun), Some(runc_shim)) = (which("crun"), runc_shim) else {
        return Ok(None);
    };
    let entry = crun_runtime(form, &layout.bin, &runc_shim, &crun);
    let config_path = &layout.config_path;
    let text = std::fs::read_to_string(config_path).map_err(LabError::out(config_path))?;
    let merged = merge_config(
        &text,
        binary.config_version(),
        std::slice::from_ref(&entry),
        config_path,
    )?;
    std::fs::write(config_path, merged.text).map_err(LabError::out(config_path))?;
    if let Some(wrapper_entry) = &entry.wrapper_entry {
        let wrapper = find_wrapper(lab.args.wrapper.as_deref())?;
        ensure_symlink(&wrapper_entry.link, &wrapper)?;
        let wrapper_config = &layout.wrapper_config;
        let text =
            std::fs::read_to_string(wrapper_config).map_err(LabError::out(wrapper_config))?;
        let (text, _, _) = merge_wrapper_config(
            &text,
            std::slice::from_ref(wrapper_entry),
            &[],
            wrapper_config,
        )?;
        write_wrapper_config(wrapper_config, &text)?;
    }
    Ok(Some(entry))
}

/// Starts the lab's containerd on the config the handlers were registered in, its shims spooling
/// to the lab's spool and reading the lab's wrapper config.
async fn start_containerd(
    binary: &ContainerdBinary,
    layout: &CriLayout,
    handlers: &Handlers,
) -> Result<PrivateContainerd, LabError> {
    let mut config = PrivateConfig::new(&layout.containerd_dir);
    config.binary = binary.path().to_path_buf();
    config.source = ConfigSource::Existing;
    config.stop_timeout = Duration::from_secs(10);
    config.env = vec![
        (
            shimtrace_span::env::SPOOL_DIR.into(),
            layout.spool_dir.clone().into_os_string(),
        ),
        (
            shimtrace_span::env::CONFIG.into(),
            layout.wrapper_config.clone().into_os_string(),
        ),
    ];
    // The wrapper links first (containerd finds them there by runtime name in the name form),
    // then the runc shim of this containerd's own version.
    config.path_prepend = std::iter::once(layout.bin.clone())
        .chain(binary.path().parent().map(Path::to_path_buf))
        .collect();
    log(format!(
        "starting containerd {} with CRI ({}), handlers {} ({})",
        binary.version(),
        binary.path().display(),
        handlers
            .runtimes()
            .map(|r| r.handler.as_str())
            .collect::<Vec<_>>()
            .join(", "),
        handlers.form().describe()
    ));
    tokio::task::spawn_blocking(move || PrivateContainerd::start(config))
        .await
        .map_err(|e| cri_error("starting containerd")(&e))?
        .map_err(|e| cri_error("starting containerd")(&e))
}

/// Imports the sandbox and workload images, built from the lab's rootfs, into CRI's namespace;
/// the workload's reference becomes `target.image`.
async fn import_images(
    lab: &Lab<'_>,
    binary: &ContainerdBinary,
    address: &Path,
    target: &mut CriTarget,
) -> Result<(), LabError> {
    let ctr = ctr_beside(binary.path());
    let images = target.logs.join(".images");
    std::fs::create_dir_all(&images).map_err(LabError::out(&images))?;
    for (tag, command) in [
        (SANDBOX_TAG, SANDBOX_COMMAND.as_slice()),
        (WORKLOAD_TAG, ["/bin/sh"].as_slice()),
    ] {
        let reference = import_cri_image(
            &target.cri,
            &ctr,
            address,
            &lab.rootfs_dir,
            tag,
            command,
            &images,
        )
        .await
        .map_err(|e| cri_error("importing the lab's images into CRI")(&e))?;
        if tag == WORKLOAD_TAG {
            target.image = reference;
        }
    }
    let _ = std::fs::remove_dir_all(&images);
    Ok(())
}

/// What the report's setup says of the CRI run: pods on the host network, the images, and how
/// gVisor and crun reach the runc shim.
fn setup_notes(
    target: &CriTarget,
    cri_settings: &CriSettings,
    handlers: &Handlers,
    wrapper_config: &Path,
) -> Vec<String> {
    let mut notes = vec![
        format!(
            "Pods run on the host network (no CNI plugin needed), in Kubernetes namespace `{POD_NAMESPACE}`: \
             the network row of the isolation table is the host's for every profile."
        ),
        format!(
            "Images `{}` (busybox and the probe) and sandbox `{}`, built from the lab's rootfs.",
            target.image, cri_settings.sandbox_image
        ),
    ];
    let form = handlers.form();
    let gvisor = handlers.named(&traced_handler("runsc"));
    if let Some(gvisor) = gvisor.filter(|_| handlers.runsc.is_some()) {
        let through = match form {
            Form::Path => "`BinaryName`".to_string(),
            Form::Name => format!(
                "runtime `{}`, which the lab's wrapper config `{}` maps to the runc shim with \
                 runsc as its `oci_runtime`",
                gvisor.runtime_type,
                wrapper_config.display()
            ),
        };
        notes.push(format!(
            "gVisor (`traced-runsc`): runsc through the runc shim ({through}; a generated \
             wrapper adding `--network=host --ignore-cgroups`); every container gets a gVisor \
             sandbox of its own, since gVisor's pod mode needs its own shim \
             (`containerd-shim-runsc-v1`)."
        ));
    }
    if let (Form::Name, Some(crun)) = (form, handlers.named(&traced_handler("crun"))) {
        notes.push(format!(
            "crun (`traced-crun`): crun through the runc shim, as runtime `{}` in the lab's \
             wrapper config.",
            crun.runtime_type
        ));
    }
    notes
}

impl CriTarget {
    /// Stops and removes every pod CRI still knows, then stops containerd.
    async fn close(mut self, found: &mut Findings) {
        let pods = self.cri.list_pods().await.unwrap_or_else(|e| {
            found.report.errors.push(format!(
                "cleanup: cannot list the pods to remove them: {}",
                one_line(&e.to_string())
            ));
            Vec::new()
        });
        for id in pods {
            let removed = async {
                self.cri.stop_pod(&id).await?;
                self.cri.remove_pod(&id).await
            };
            if let Err(e) = removed.await {
                found
                    .report
                    .errors
                    .push(format!("cleanup of pod {id}: {}", one_line(&e.to_string())));
            }
        }
        if let Some(mut private) = self.private.take() {
            if let Err(e) = tokio::task::block_in_place(|| private.stop()) {
                found
                    .report
                    .errors
                    .push(format!("stopping containerd: {e}"));
            }
        }
    }

    /// Starts pod `name` under `handler` with one container running `command`, as the kubelet
    /// does, timing each call; returns once the container runs (or has already exited), or at
    /// the first failure.
    async fn start_pod(&self, handler: &str, name: &str, command: &[&str]) -> PodRun {
        let log_dir = self.logs.join(name);
        let mut run = PodRun {
            log: log_dir.join("workload.log"),
            client_start: shimtrace_containerd::wall_unix_nanos(),
            ..Default::default()
        };
        if let Err(e) = std::fs::create_dir_all(&log_dir) {
            run.error = Some(format!("cannot create {}: {e}", log_dir.display()));
            return run;
        }
        let mut pod = PodSpec::new(name, handler);
        pod.namespace = POD_NAMESPACE.into();
        pod.log_directory = Some(log_dir);
        let mut container = ContainerSpec::new("workload", &self.image, command.iter().copied());
        container.log_path = Some("workload.log".into());

        let started = Instant::now();
        let mut lap = Instant::now();
        let mut phase = |run: &mut PodRun, name: &str| {
            run.phases.insert(name.into(), ms(lap.elapsed()));
            lap = Instant::now();
        };
        match self.cri.run_pod(&pod).await {
            Ok(sandbox) => run.sandbox = Some(sandbox),
            Err(e) => return run.failed("RunPodSandbox", e),
        }
        phase(&mut run, "run_pod_sandbox");
        let id = match self
            .cri
            .create_container(run.sandbox.as_ref().unwrap(), &container)
            .await
        {
            Ok(id) => id,
            Err(e) => return run.failed("CreateContainer", e),
        };
        run.container = Some(id.clone());
        phase(&mut run, "create_container");
        if let Err(e) = self.cri.start_container(&id).await {
            return run.failed("StartContainer", e);
        }
        phase(&mut run, "start_container");
        let deadline = Instant::now() + self.timeout;
        loop {
            match self.cri.container_status(&id).await {
                Ok(info) if info.state != ContainerState::ContainerCreated => break,
                Ok(_) if Instant::now() > deadline => {
                    run.error = Some(format!(
                        "container {id} was not running within {:?}",
                        self.timeout
                    ));
                    return run;
                }
                Ok(_) => tokio::time::sleep(STATUS_POLL).await,
                Err(e) => return run.failed("ContainerStatus", e),
            }
        }
        phase(&mut run, "await_running");
        let sandbox = run.phases["run_pod_sandbox"];
        run.phases.insert("sandbox".into(), sandbox);
        run.phases
            .insert("container".into(), ms(started.elapsed()) - sandbox);
        run.startup_ms = Some(ms(started.elapsed()));
        run
    }

    /// Stops and removes the pod of `run` (timed; not part of pod startup).
    async fn remove_pod(&self, run: &mut PodRun) {
        let Some(id) = run.sandbox.as_ref().map(|p| p.id.clone()) else {
            return;
        };
        let lap = Instant::now();
        let stopped = self.cri.stop_pod(&id).await;
        if run.timed("StopPodSandbox", "stop_pod_sandbox", lap, stopped) {
            let lap = Instant::now();
            let removed = self.cri.remove_pod(&id).await;
            run.timed("RemovePodSandbox", "remove_pod_sandbox", lap, removed);
        }
    }

    /// A pod running the probe to its exit: the run, and the probe's exit code and output.
    async fn probe_pod(
        &self,
        handler: &str,
        name: &str,
    ) -> (PodRun, Result<(i32, String), String>) {
        let mut run = self
            .start_pod(handler, name, &[rootfs::PROBE_IN_ROOTFS])
            .await;
        let outcome = match (&run.error, &run.container) {
            (Some(e), _) => Err(e.clone()),
            (None, Some(id)) => match self.cri.wait_exited(id, self.timeout).await {
                Ok(info) => Ok((info.exit_code, read_cri_log(&run.log))),
                Err(e) => Err(one_line(&e.to_string())),
            },
            (None, None) => Err("no container was created".into()),
        };
        self.remove_pod(&mut run).await;
        (run, outcome)
    }
}

/// One pod as the lab ran it.
#[derive(Debug, Default)]
struct PodRun {
    sandbox: Option<Pod>,
    container: Option<String>,
    /// Wall clock before RunPodSandbox, in unix nanoseconds.
    client_start: u64,
    /// CRI calls in ms, plus `sandbox` and `container`, the two parts of pod startup.
    phases: BTreeMap<String, f64>,
    /// RunPodSandbox to the container running, in ms.
    startup_ms: Option<f64>,
    /// The container's CRI log.
    log: PathBuf,
    error: Option<String>,
}

impl PodRun {
    fn failed(mut self, call: &str, error: CriError) -> PodRun {
        self.error = Some(call_error(call, &error));
        self
    }

    /// Records CRI `call`, begun at `lap`: its time as `phase` when it succeeded, else its error
    /// (unless an earlier one stands). Returns whether it succeeded.
    fn timed(
        &mut self,
        call: &str,
        phase: &str,
        lap: Instant,
        outcome: Result<(), CriError>,
    ) -> bool {
        let elapsed = ms(lap.elapsed());
        match outcome {
            Ok(()) => {
                self.phases.insert(phase.into(), elapsed);
                true
            }
            Err(e) => {
                self.error.get_or_insert_with(|| call_error(call, &e));
                false
            }
        }
    }
}

/// A failed CRI `call` as the report says it.
fn call_error(call: &str, error: &CriError) -> String {
    format!("{call}: {}", one_line(&error.to_string()))
}

/// What a container printed, from its CRI log (`<time> <stream> <P|F> <text>` lines; `P` marks a
/// line the runtime split, continued on the next).
fn read_cri_log(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut output = String::new();
    for line in text.lines() {
        let mut fields = line.splitn(4, ' ');
        let (Some(_time), Some(_stream), Some(tag)) = (fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        output.push_str(fields.next().unwrap_or(""));
        if tag != "P" {
            output.push('\n');
        }
    }
    output
}

/// Preflight under CRI: each profile's handler, then one probe pod whose output is its isolation
/// column; a profile that cannot run is skipped with the reason.
async fn preflight(lab: &Lab<'_>, target: &CriTarget, found: &mut Findings) -> Vec<Active> {
    let mut active = Vec::new();
    for profile in lab.profiles.iter().take_while(|_| !crate::interrupted()) {
        let mut result = ProfileResult {
            name: profile.name.clone(),
            runtime: traced_handler(&profile.name),
            status: "ok".into(),
            ..Default::default()
        };
        if let Some(reason) = profile.missing_requirement() {
            found.skip(result, reason, lab.explicit);
            continue;
        }
        let Some(handler) = target.handlers.get(&profile.name) else {
            let reason = format!(
                "no RuntimeClass handler {} was registered (see `shimtrace install` for this containerd)",
                result.runtime
            );
            found.skip(result, reason, lab.explicit);
            continue;
        };
        // The path form names the wrapper link; the name form only the runtime, whose OCI binary
        // (gVisor's, crun's) is in the wrapper config.
        result.runtime_path = Some(match &handler.runtime_path {
            Some(p) => format!("{} ({})", p.display(), handler.runtime_type),
            None => handler.runtime_type.clone(),
        });
        result.binary_name = handler.binary_name.clone().or_else(|| {
            handler
                .wrapper_entry
                .as_ref()
                .map(|e| e.oci_runtime.display().to_string())
        });
        let name = lab.names.container(&profile.name, "probe");
        let (_, outcome) = target.probe_pod(&handler.handler, &name).await;
        let probe = match outcome {
            Ok((0, output)) => parse_probe(&output)
                .ok_or_else(|| format!("probe printed no JSON: {}", one_line(&output))),
            Ok((code, output)) => Err(format!("probe exited {code}: {}", one_line(&output))),
            Err(e) => Err(e),
        };
        match probe {
            Ok(probe) => {
                result.probe = probe;
                log(format!(
                    "{}: ready (handler {})",
                    profile.name, handler.handler
                ));
                let mut profile: Profile = profile.clone();
                profile.runtime = handler.handler.clone();
                active.push(Active { profile, result });
            }
            Err(reason) => {
                let mut reason = format!("does not run here: {}", one_line(&reason));
                if reason.contains("unknown version specified") {
                    // Older crun releases take only OCI runtime spec 1.0.x; containerd 1.7 and
                    // later write a newer one.
                    let version = &found.report.setup.containerd_version;
                    reason.push_str(&format!(
                        " ({} rejected the OCI runtime spec version that containerd {version} \
                         writes: install a newer {})",
                        profile.name, profile.name
                    ));
                } else if reason.contains("cgroups in hybrid mode not supported") {
                    reason.push_str(&format!(
                        " ({} does not run on this host's hybrid cgroup v1/v2 layout)",
                        profile.name
                    ));
                }
                found.skip(result, reason, lab.explicit);
            }
        }
    }
    active
}

/// `--runs` rounds interleaved across the profiles, each one pod of the probe.
async fn cold_starts(lab: &Lab<'_>, target: &CriTarget, active: &mut [Active]) {
    let bar = crate::cold_start_bar(lab, active.len(), "pod startup (CRI)");
    for (round, index) in crate::rotation(lab.args.runs, active.len()) {
        let entry = &mut active[index];
        bar.set_message(entry.profile.name.clone());
        let name = lab.names.container(&entry.profile.name, round);
        let (run, outcome) = target.probe_pod(&entry.profile.runtime, &name).await;
        entry.result.runs.push(record(round, name, run, outcome));
        bar.inc(1);
    }
    bar.finish_and_clear();
}

/// One cold start's record: pod startup and its parts, and from the probe, the time to the
/// workload's first instruction. Its spans are found by the container's and the sandbox's ids.
fn record(
    round: usize,
    name: String,
    run: PodRun,
    outcome: Result<(i32, String), String>,
) -> RunRecord {
    let mut record = RunRecord {
        round,
        id: run.container.clone().unwrap_or(name),
        sandbox_id: run.sandbox.as_ref().map(|p| p.id.clone()),
        client_start_unix_nanos: run.client_start,
        wall_ms: run.startup_ms,
        phases_ms: run.phases,
        ..Default::default()
    };
    match outcome {
        Ok((0, output)) => match parse_probe(&output) {
            Some(probe) => {
                record.ok = run.error.is_none();
                record.error = run.error;
                record.to_workload_ms = to_workload_ms(&probe, run.client_start);
            }
            None => record.error = Some(format!("no probe output: {}", one_line(&output))),
        },
        Ok((code, output)) => {
            record.error = Some(format!("exit {code}: {}", one_line(&output)));
        }
        Err(e) => record.error = Some(e),
    }
    record
}

/// Served latency under CRI: busybox httpd in a host-network pod.
impl HttpEngine for CriTarget {
    type Server = PodRun;

    fn how(&self, entry: &Active) -> String {
        format!(" (pod under {})", entry.profile.runtime)
    }

    async fn start(&self, entry: &Active, name: &str, argv: &[&str]) -> Started<PodRun> {
        let started = Instant::now();
        let mut run = self.start_pod(&entry.profile.runtime, name, argv).await;
        match run.error.clone() {
            None => Ok((run, started)),
            Some(e) => {
                // Whatever of the pod was created goes; the start's error is the one to report.
                self.remove_pod(&mut run).await;
                Err(e)
            }
        }
    }

    async fn output(&self, run: &PodRun) -> String {
        read_cri_log(&run.log)
    }

    async fn remove(&self, mut run: PodRun) -> Result<(), String> {
        self.remove_pod(&mut run).await;
        run.error.map_or(Ok(()), Err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shimtrace_containerd::install::RUNC_RUNTIME;

    #[test]
    fn cri_logs_are_joined_back_into_the_output() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("workload.log");
        std::fs::write(
            &path,
            "2026-01-01T00:00:00.1Z stdout P {\"kernel\":\n\
             2026-01-01T00:00:00.2Z stdout F {\"release\":\"4.4.0\"}}\n\
             2026-01-01T00:00:00.3Z stderr F warning: x y\n",
        )
        .unwrap();
        let output = read_cri_log(&path);
        assert_eq!(
            output,
            "{\"kernel\":{\"release\":\"4.4.0\"}}\nwarning: x y\n"
        );
        assert_eq!(parse_probe(&output).unwrap()["kernel"]["release"], "4.4.0");
        assert_eq!(read_cri_log(&dir.path().join("missing.log")), "");
    }

    fn fake_containerd(dir: &Path, version: &str) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let fake = dir.join("containerd");
        std::fs::write(
            &fake,
            format!("#!/bin/sh\necho 'containerd github.com/containerd/containerd {version} {version}'\n"),
        )
        .unwrap();
        std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
        fake
    }

    #[test]
    fn every_containerd_version_is_taken_and_a_missing_one_says_so() {
        let dir = tempfile::tempdir().unwrap();
        let fake = fake_containerd(dir.path(), "1.6.20~ds1");
        let chosen = choose_containerd(Some(&fake)).unwrap();
        assert_eq!(chosen.path(), fake);
        assert!(
            chosen.version().starts_with("1.6.20"),
            "{}",
            chosen.version()
        );
        let missing = choose_containerd(Some(&dir.path().join("none")))
            .unwrap_err()
            .to_string();
        assert!(missing.contains("--engine cri"), "{missing}");
    }

    /// The setup line's form and cost, from what install really reports for each form.
    #[test]
    fn the_form_summary_says_why_and_what_it_costs() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let shims = dir.path().join("shims");
        let bin = dir.path().join("bin");
        for d in [&shims, &bin] {
            std::fs::create_dir_all(d).unwrap();
        }
        let runc_shim = shims.join("containerd-shim-runc-v2");
        // A stand-in runsc: install only needs an executable file there.
        let runsc = shims.join("runsc");
        for executable in [&runc_shim, &runsc] {
            std::fs::write(executable, "#!/bin/sh\n").unwrap();
            std::fs::set_permissions(executable, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        let summary = |version: &str| {
            let args = parse_install_args(
                [
                    "--wrapper",
                    runc_shim.to_str().unwrap(),
                    "--bin-dir",
                    bin.to_str().unwrap(),
                    "--shim-path",
                    shims.to_str().unwrap(),
                    "--containerd-version",
                    version,
                    "--runsc",
                    runsc.to_str().unwrap(),
                    "--wrapper-config",
                    dir.path().join("w.toml").to_str().unwrap(),
                ]
                .map(OsString::from)
                .to_vec(),
            )
            .unwrap();
            form_summary(&install(&args).unwrap())
        };
        let name = summary("1.6.20");
        assert!(
            name.starts_with("runtime-name form: its CRI ignores runtime_path"),
            "{name}"
        );
        assert!(
            name.contains("; costs: ") && name.contains("SystemdCgroup"),
            "{name}"
        );
        let path = summary("2.1.9");
        assert!(
            path.starts_with("runtime_path form: it honours runtime_path"),
            "{path}"
        );
        assert!(!path.contains("costs"), "{path}");
    }

    #[test]
    fn crun_goes_through_the_wrapper_config_in_the_name_form_only() {
        let bin = Path::new("/b");
        let (runc_shim, crun) = (
            RealShim {
                name: profiles::runc_shim(),
                path: "/usr/bin/containerd-shim-runc-v2".into(),
            },
            Path::new("/usr/bin/crun"),
        );
        let path = crun_runtime(Form::Path, bin, &runc_shim, crun);
        assert_eq!(path.runtime_type, RUNC_RUNTIME);
        assert_eq!(
            path.runtime_path.as_deref(),
            Some(bin.join("containerd-shim-traced-runc-v2").as_path())
        );
        assert_eq!(path.binary_name.as_deref(), Some("/usr/bin/crun"));
        assert!(path.wrapper_entry.is_none());
        let name = crun_runtime(Form::Name, bin, &runc_shim, crun);
        assert_eq!(name.runtime_type, "io.containerd.traced-crun.v2");
        assert_eq!(name.runtime_path, None);
        assert!(!name.carry_options);
        let entry = name.wrapper_entry.unwrap();
        assert_eq!(entry.link, bin.join("containerd-shim-traced-crun-v2"));
        assert_eq!(
            (entry.inner.as_path(), entry.oci_runtime.as_path()),
            (runc_shim.path.as_path(), crun)
        );
    }
}
