//! `shimtrace lab --engine docker`: the same profiles run through Docker Engine, as a user compares
//! runtimes by hand: `docker run --rm --runtime <runtime>` timed by the Docker client (the
//! `time docker run` figure) beside the shim spans, the probe run with `docker run` for the
//! isolation column, and busybox httpd in a detached container (`--network host`) for served
//! latency. The report is the same.
//!
//! Docker is found as the docker CLI finds it (`DOCKER_HOST`, its context, `/var/run/docker.sock`).
//! When nothing answers, the lab starts a private dockerd (`--dockerd`, default the newest one
//! `scripts/install-docker.sh` unpacked) whose daemon.json gets the traced runtimes from
//! `shimtrace install --docker` and a `runsc` runtime with host networking, and whose shims spool
//! into the output directory.
//!
//! Each profile runs under the first runtime dockerd has of: `traced-<name>` (unless
//! `--untraced`), `<name>` (the untraced one, e.g. a `crun` runtime), and for Kata
//! `io.containerd.kata.v2` (a shim by name). A profiles file's `runtime` is taken as the Docker
//! runtime name.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{json, Map, Value};

use shimtrace_collector::stats::ms;
use shimtrace_containerd::docker::{
    install_docker, CliOutput, DockerCli, DockerError, DockerInstall, RunRm, RunRmOutput,
    CLI_TIMEOUT,
};
use shimtrace_containerd::dockerd::{
    newest_unpacked, DockerdConfig, PrivateDockerd, UNPACKED_PREFIX,
};
use shimtrace_containerd::image::write_docker_archive;
use shimtrace_containerd::private::path_with;
use shimtrace_containerd::rootfs;
use shimtrace_span::naming::{traced_handler, traced_runtime_of, which};

use crate::profiles::Profile;
use crate::report::{DockerSetup, ProfileResult, RunRecord};
use crate::{
    log, no_probe_output, one_line, parse_probe, spans_serving_export, to_workload_ms, Active,
    Findings, HttpEngine, Lab, LabError, Started,
};

/// The image tag the lab's rootfs is loaded as (the run's suffix makes it unique).
const IMAGE_REPOSITORY: &str = "shimtrace-lab/workload";

/// Where the lab's containers run under Docker.
struct DockerTarget {
    cli: DockerCli,
    /// The dockerd the lab started, if it did; stopped when dropped (before `_dir` goes).
    private: Option<PrivateDockerd>,
    _dir: Option<tempfile::TempDir>,
    image: String,
    /// Runtimes dockerd has loaded, with their `docker info` entry.
    runtimes: Map<String, Value>,
    spool_dir: PathBuf,
    spool_start: u64,
}

impl DockerTarget {
    /// `docker ARGS…` off the async workers; a non-zero exit is not an error here.
    fn run(&self, args: &[&str]) -> Result<CliOutput, DockerError> {
        tokio::task::block_in_place(|| self.cli.run(args, CLI_TIMEOUT))
    }

    /// Like [`Self::run`]; a non-zero exit is an error carrying stderr.
    fn run_ok(&self, args: &[&str]) -> Result<CliOutput, DockerError> {
        tokio::task::block_in_place(|| self.cli.run_ok(args, CLI_TIMEOUT))
    }

    /// Removes the lab's containers and image, and stops a private dockerd; what could not be
    /// removed goes into the report.
    fn close(self, lab: &Lab<'_>, found: &mut Findings) {
        let filter = format!("name={}", lab.names.pattern());
        match self.run_ok(&["ps", "-aq", "--filter", &filter]) {
            Ok(ids) => {
                for id in ids.stdout.split_whitespace() {
                    if let Err(e) = self.run_ok(&["rm", "-f", id]) {
                        found.report.errors.push(format!("cleanup of {id}: {e}"));
                    }
                }
            }
            Err(e) => found.report.errors.push(format!(
                "cleanup: cannot list the lab's containers (docker ps --filter {filter}): {e}"
            )),
        }
        if let Err(e) = self.run_ok(&["rmi", "-f", &self.image]) {
            found.report.errors.push(format!(
                "cleanup: image {} is left (docker rmi {}): {e}",
                self.image, self.image
            ));
        }
        drop(self.private);
    }
}

/// Runs the Docker stages after the host probe: connect, preflight, cold starts, shim spans,
/// served latency, OTLP export, and closes; the caller writes the report.
pub(crate) async fn measure(lab: &Lab<'_>, found: &mut Findings) -> Result<(), LabError> {
    if lab.args.image.is_some() {
        return Err(LabError::Docker(
            "--image is not supported with --engine docker: the lab loads its own image (busybox and the probe)".into(),
        ));
    }
    let target = connect(lab, found).await.map_err(|e| found.fatal(e))?;
    let mut active = preflight(lab, &target, found);
    cold_starts(lab, &target, &mut active);
    // Docker names containers by its own ids: the lab's are those its runs recorded.
    let spool = (target.spool_dir.as_path(), target.spool_start);
    spans_serving_export(lab, &target, spool, active, found).await;
    target.close(lab, found);
    Ok(())
}

/// The Docker the CLI finds, else a private dockerd; the lab's image loaded into it.
async fn connect(lab: &Lab<'_>, found: &mut Findings) -> Result<DockerTarget, LabError> {
    let args = lab.args;
    let cli = DockerCli::new(&args.docker_cli);
    let version_args = ["version", "--format", "{{.Server.Version}}"];
    let answered = tokio::task::block_in_place(|| cli.run(&version_args, Duration::from_secs(30)));
    let (cli, private, dir, spool_dir) = match answered {
        Ok(out) if out.success() => {
            let spool_dir = args
                .spool_dir
                .clone()
                .unwrap_or_else(|| PathBuf::from(shimtrace_span::spool::DEFAULT_SPOOL_DIR));
            (cli, None, None, spool_dir)
        }
        other => {
            let reason = match other {
                Ok(out) => one_line(&out.stderr),
                Err(e) => e.to_string(),
            };
            log(format!(
                "no Docker answers ({reason}); starting a private dockerd"
            ));
            let (private, dir, spool_dir) = start_private(lab, &reason)?;
            (private.cli(), Some(private), Some(dir), spool_dir)
        }
    };
    let mut target = DockerTarget {
        cli,
        private,
        _dir: dir,
        image: format!("{IMAGE_REPOSITORY}:{}", lab.names.suffix),
        runtimes: Map::new(),
        spool_dir,
        spool_start: shimtrace_containerd::wall_unix_nanos(),
    };
    let info = target
        .run(&[
            "info",
            "--format",
            "{{json .ServerVersion}} {{json .Runtimes}}",
        ])
        .and_then(|o| {
            if o.success() {
                Ok(o.stdout)
            } else {
                Err(DockerError::Cli {
                    command: "docker info".into(),
                    problem: one_line(&o.stderr),
                })
            }
        })
        .map_err(|e| LabError::Docker(e.to_string()))?;
    let (version, runtimes) = info.trim().split_once(' ').unwrap_or((info.trim(), "{}"));
    target.runtimes = serde_json::from_str(runtimes).unwrap_or_default();
    let containerd = target
        .run(&[
            "version",
            "--format",
            "{{range .Server.Components}}{{if eq .Name \"containerd\"}}{{.Version}}{{end}}{{end}}",
        ])
        .map(|o| o.stdout.trim().to_string())
        .unwrap_or_default();
    let setup = &mut found.report.setup;
    setup.docker = Some(DockerSetup {
        version: version.trim_matches('"').to_string(),
        host: target
            .cli
            .host
            .clone()
            .or_else(|| std::env::var("DOCKER_HOST").ok())
            .unwrap_or_else(|| "the docker CLI's default".into()),
        private: target.private.is_some(),
    });
    setup.containerd_version = if containerd.is_empty() {
        "?".into()
    } else {
        containerd
    };
    setup.containerd_address = "dockerd's".into();
    setup.namespace = shimtrace_containerd::docker::DOCKER_NAMESPACE.into();
    setup.spool_dir = target.spool_dir.display().to_string();
    setup.traced = !args.untraced
        && target
            .runtimes
            .keys()
            .any(|name| traced_runtime_of(name).is_some());
    load_image(lab, &target)?;
    Ok(target)
}

/// A private dockerd in a temp dir, with the traced runtimes (unless `--untraced`); returns it,
/// the dir, and the spool its shims write.
fn start_private(
    lab: &Lab<'_>,
    reason: &str,
) -> Result<(PrivateDockerd, tempfile::TempDir, PathBuf), LabError> {
    let args = lab.args;
    let no_docker = |problem: String| {
        LabError::Docker(format!(
            "Docker is not reachable ({reason}) and a private dockerd could not be started: {problem} (install Docker Engine >= 23 — `scripts/install-docker.sh` unpacks one — or set DOCKER_HOST)"
        ))
    };
    let dockerd = args
        .dockerd
        .clone()
        .or_else(|| newest_unpacked(Path::new(UNPACKED_PREFIX)))
        .or_else(|| which("dockerd"))
        .ok_or_else(|| no_docker(format!("no dockerd under {UNPACKED_PREFIX} nor on PATH")))?;
    // Short path under /tmp: dockerd's and containerd's sockets live below it.
    let dir = tempfile::Builder::new()
        .prefix("shimtrace-lab-dkr-")
        .tempdir_in("/tmp")
        .map_err(LabError::out(Path::new("/tmp")))?;
    let spool_dir = lab.out.join("spool");
    // Our own dockerd's shims write only this run's spans here.
    let _ = std::fs::remove_dir_all(&spool_dir);
    let bin = dir.path().join("bin");
    std::fs::create_dir_all(&bin).map_err(LabError::out(&bin))?;
    let mut config = DockerdConfig::new(dir.path(), &dockerd);
    let first = std::iter::once(bin.clone()).chain(dockerd.parent().map(Path::to_path_buf));
    config.path = path_with(first).map_err(|e| no_docker(e.to_string()))?;
    config.env = vec![(
        shimtrace_span::env::SPOOL_DIR.into(),
        spool_dir.clone().into_os_string(),
    )];
    config.stop_timeout = Duration::from_secs(20);
    let mut runtimes = Map::new();
    // gVisor with host networking serves HTTP on `--network host` and sees an empty namespace on
    // `--network none`; cgroups stay the runc shim's.
    if let Some(runsc) = which("runsc") {
        runtimes.insert(
            "runsc".into(),
            json!({"path": runsc, "runtimeArgs": ["--network=host", "--ignore-cgroups"]}),
        );
    }
    if let Some(crun) = which("crun") {
        runtimes.insert("crun".into(), json!({"path": crun}));
    }
    config
        .daemon_json
        .insert("runtimes".into(), Value::Object(runtimes));
    // Its containers' cgroups under a parent of their own, removed when it stops.
    config.daemon_json.insert(
        "cgroup-parent".into(),
        Value::String(format!("/shimtrace-lab-{}", lab.names.suffix)),
    );
    config
        .write_daemon_json()
        .map_err(|e| no_docker(e.to_string()))?;
    if !args.untraced {
        install_docker(&DockerInstall {
            config: config.config_path(),
            wrapper: args.wrapper.clone(),
            bin_dir: Some(bin),
            write: true,
            runsc: None,
            shim_path: Some(config.path.clone()),
        })
        .map_err(|e| no_docker(format!("registering the traced runtimes: {e}")))?;
    }
    let private = tokio::task::block_in_place(|| PrivateDockerd::start(config))
        .map_err(|e| no_docker(e.to_string()))?;
    Ok((private, dir, spool_dir))
}

/// The lab's rootfs (busybox, the probe, /www) as a one-layer image.
fn load_image(lab: &Lab<'_>, target: &DockerTarget) -> Result<(), LabError> {
    let archive = lab.work.join("workload.tar");
    write_docker_archive(&lab.rootfs_dir, &target.image, &["/bin/sh"], &archive)
        .map_err(|e| LabError::Docker(e.to_string()))?;
    let archive_arg = archive.display().to_string();
    let out = target
        .run(&["load", "-q", "-i", &archive_arg])
        .map_err(|e| LabError::Docker(e.to_string()))?;
    let _ = std::fs::remove_file(&archive);
    if out.success() {
        Ok(())
    } else {
        Err(LabError::Docker(format!(
            "docker load of the lab's image failed: {}",
            one_line(&out.stderr)
        )))
    }
}

/// The Docker runtime `profile` runs under here, or why none.
fn runtime_for(lab: &Lab<'_>, target: &DockerTarget, profile: &Profile) -> Result<String, String> {
    let mut candidates = Vec::new();
    if lab.args.profiles.is_some() {
        candidates.push(profile.runtime.clone());
    } else {
        if !lab.args.untraced {
            candidates.push(traced_handler(&profile.name));
        }
        candidates.push(profile.name.clone());
    }
    if let Some(found) = candidates
        .iter()
        .find(|c| target.runtimes.contains_key(c.as_str()))
    {
        return Ok(found.clone());
    }
    // A shim by containerd runtime name needs no daemon.json entry (Kata, or a profiles file's).
    let by_name = if lab.args.profiles.is_some() {
        Some(profile.runtime.clone()).filter(|r| r.starts_with("io.containerd."))
    } else if profile.vm {
        Some(crate::profiles::kata_shim().runtime())
    } else {
        None
    };
    by_name.ok_or_else(|| {
        format!(
            "dockerd has no runtime {} (run `shimtrace install --docker --write` and restart dockerd, or add one to daemon.json)",
            candidates.join(" or ")
        )
    })
}

/// Stage 3 under Docker: each profile's runtime, then one probe run whose output is its
/// isolation column; a profile that cannot run is skipped with the reason.
fn preflight(lab: &Lab<'_>, target: &DockerTarget, found: &mut Findings) -> Vec<Active> {
    let mut active = Vec::new();
    for profile in lab.profiles.iter().take_while(|_| !crate::interrupted()) {
        let mut result = ProfileResult {
            name: profile.name.clone(),
            runtime: profile.name.clone(),
            status: "ok".into(),
            ..Default::default()
        };
        if let Some(reason) = profile.missing_requirement() {
            found.skip(result, reason, lab.explicit);
            continue;
        }
        let runtime = match runtime_for(lab, target, profile) {
            Ok(runtime) => runtime,
            Err(reason) => {
                found.skip(result, reason, lab.explicit);
                continue;
            }
        };
        let entry = target.runtimes.get(&runtime);
        result.runtime = runtime.clone();
        result.runtime_path = entry
            .and_then(|e| e.get("runtimeType").or_else(|| e.get("path")))
            .and_then(Value::as_str)
            .map(str::to_string);
        // The OCI binary: the entry's own `path`, or for `traced-<name>` that of `<name>` (the
        // gVisor runtime's inner shim runs the `runsc` runtime's binary with its flags).
        let oci = entry
            .filter(|e| e.get("path").is_some())
            .or_else(|| traced_runtime_of(&runtime).and_then(|plain| target.runtimes.get(plain)));
        result.binary_name = oci.and_then(|e| {
            let path = e.get("path")?.as_str()?;
            let flags = e
                .get("runtimeArgs")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(Value::as_str);
            Some(
                std::iter::once(path)
                    .chain(flags)
                    .collect::<Vec<_>>()
                    .join(" "),
            )
        });
        let name = lab.names.container(&profile.name, "probe");
        let probe = run_rm(target, &runtime, &name, &[rootfs::PROBE_IN_ROOTFS]);
        let outcome = match probe.map(|run| run.output) {
            Ok(out) if out.success() => match parse_probe(&out.stdout) {
                Some(probe) => Ok(probe),
                None => Err(format!("probe printed no JSON: {}", one_line(&out.stdout))),
            },
            Ok(out) => Err(format!(
                "probe exited {}: {}",
                out.status.code().unwrap_or(-1),
                one_line(&format!("{}{}", out.stdout, out.stderr))
            )),
            Err(e) => Err(e.to_string()),
        };
        match outcome {
            Ok(probe) => {
                result.probe = probe;
                log(format!(
                    "{}: ready (docker runtime {runtime})",
                    profile.name
                ));
                let mut profile = profile.clone();
                profile.runtime = runtime;
                active.push(Active { profile, result });
            }
            Err(reason) => {
                let reason = format!("does not run here: {}", one_line(&reason));
                found.skip(result, reason, lab.explicit);
            }
        }
    }
    active
}

/// One `docker run --rm` as the client saw it.
struct DockerRun {
    output: CliOutput,
    /// The container's full id (what its spans carry), from `--cidfile`.
    id: Option<String>,
    /// Wall clock when the client started, in unix nanoseconds.
    client_start: u64,
    elapsed: Duration,
}

/// [`DockerCli::run_rm`] of `command` in the lab's image, as container `name`, timed.
fn run_rm(
    target: &DockerTarget,
    runtime: &str,
    name: &str,
    command: &[&str],
) -> Result<DockerRun, DockerError> {
    let run = RunRm {
        runtime,
        name: Some(name),
        image: &target.image,
        command,
    };
    let client_start = shimtrace_containerd::wall_unix_nanos();
    let started = Instant::now();
    let run = tokio::task::block_in_place(|| target.cli.run_rm(&run, CLI_TIMEOUT));
    let elapsed = started.elapsed();
    let RunRmOutput { output, id } = run;
    let output = output?;
    Ok(DockerRun {
        output,
        id,
        client_start,
        elapsed,
    })
}

/// Stage 4 under Docker: `--runs` rounds interleaved across the profiles, each a timed
/// `docker run --rm` of the probe.
fn cold_starts(lab: &Lab<'_>, target: &DockerTarget, active: &mut [Active]) {
    let bar = crate::cold_start_bar(lab, active.len(), "cold start (docker run)");
    for (round, index) in crate::rotation(lab.args.runs, active.len()) {
        let entry = &mut active[index];
        bar.set_message(entry.profile.name.clone());
        let name = lab.names.container(&entry.profile.name, round);
        let record = cold_start(target, &entry.profile.runtime, &name, round);
        entry.result.runs.push(record);
        bar.inc(1);
    }
    bar.finish_and_clear();
}

/// One cold start: the Docker client's wall time for `docker run --rm` and, from the probe, the
/// time to the workload's first instruction. Its spans are found by the container's full id.
fn cold_start(target: &DockerTarget, runtime: &str, name: &str, round: usize) -> RunRecord {
    let mut record = RunRecord {
        round,
        id: name.to_string(),
        ..Default::default()
    };
    match run_rm(target, runtime, name, &[rootfs::PROBE_IN_ROOTFS]) {
        Ok(DockerRun {
            output: out,
            id,
            client_start,
            elapsed,
        }) => {
            record.client_start_unix_nanos = client_start;
            record.wall_ms = Some(ms(elapsed));
            if let Some(id) = id {
                record.id = id;
            }
            record.ok = out.success();
            match parse_probe(&out.stdout) {
                Some(probe) if record.ok => {
                    record.to_workload_ms = to_workload_ms(&probe, client_start);
                }
                _ => {
                    record.ok = false;
                    record.error = Some(no_probe_output(
                        out.status.code().unwrap_or(-1),
                        &format!("{}{}", out.stdout, out.stderr),
                    ));
                }
            }
        }
        Err(e) => {
            record.client_start_unix_nanos = shimtrace_containerd::wall_unix_nanos();
            record.error = Some(one_line(&e.to_string()));
        }
    }
    record
}

/// Stage 6 under Docker: busybox httpd in a detached container on the host network.
impl HttpEngine for DockerTarget {
    /// The container's name.
    type Server = String;

    fn how(&self, _: &Active) -> String {
        " (docker run -d --network host)".to_string()
    }

    async fn start(&self, entry: &Active, name: &str, argv: &[&str]) -> Started<String> {
        let started = Instant::now();
        let mut args = vec![
            "run",
            "-d",
            "--network",
            "host",
            "--runtime",
            &entry.profile.runtime,
            "--name",
            name,
            &self.image,
        ];
        args.extend_from_slice(argv);
        match self.run(&args) {
            Ok(out) if out.success() => Ok((name.to_string(), started)),
            Ok(out) => Err(format!("docker run -d failed: {}", one_line(&out.stderr))),
            Err(e) => Err(one_line(&e.to_string())),
        }
    }

    async fn output(&self, name: &String) -> String {
        self.run(&["logs", name])
            .map(|o| format!("{}{}", o.stdout, o.stderr))
            .unwrap_or_default()
    }

    async fn remove(&self, name: String) -> Result<(), String> {
        match self.run(&["rm", "-f", &name]) {
            Ok(out) if out.success() => Ok(()),
            Ok(out) => Err(format!("docker rm -f: {}", one_line(&out.stderr))),
            Err(e) => Err(one_line(&e.to_string())),
        }
    }
}
