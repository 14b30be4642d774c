//! Docker as a front end: a private dockerd whose daemon.json the real `shimtrace install --docker
//! --write` wrote runs containers through the wrapper (`docker run --runtime traced-runc`) — output
//! and exit codes, exec, stop, `rm -f`, a dockerd restart with a running container, gVisor as
//! `traced-runsc` — each with its spans under containerd namespace `moby` and nothing left behind;
//! `install --docker --check` and `--uninstall` against the same dockerd; and, with Docker 28 on
//! containerd 2.1.9 exporting OpenTelemetry, one trace from the Docker API call to the shim calls.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::element_where;
use serde_json::Value;
use shimtrace_containerd::docker::{
    CliOutput, RunRm, CLI_TIMEOUT, DOCKER_NAMESPACE, GVISOR_RUNTIME,
};
use shimtrace_containerd::dockerd::mount_points_under;
use shimtrace_containerd::image::WORKLOAD_TAG;
use shimtrace_span::{attr, names, SpanRecord};
use shimtrace_testkit::containerd::ContainerdVersion;
use shimtrace_testkit::docker::{
    DockerOptions, DockerVersion, ShimLookup, TestDocker, DOCKER_NEXT_VERSION, DOCKER_VERSION,
};
use shimtrace_testkit::lab::{LabRun, LAB_DEADLINE};
use shimtrace_testkit::traced::{has_method, is_method, wait_for, Spooled};

const SPANS: Duration = Duration::from_secs(15);
/// How long processes and sockets may take to go once Docker says a container is gone.
const CLEANUP: Duration = Duration::from_secs(20);

fn start() -> TestDocker {
    TestDocker::start_traced(DOCKER_VERSION, DockerOptions::default()).expect("traced dockerd")
}

fn span<'a>(spans: &'a [SpanRecord], method: &str) -> &'a SpanRecord {
    spans
        .iter()
        .find(|s| is_method(s, method) && s.attr_str(attr::CONTAINERD_EXEC_ID).is_none())
        .unwrap_or_else(|| panic!("no {method} span"))
}

/// Every span of a Docker container names namespace `moby` and the container's full id; every call
/// of its lifecycle succeeded through the wrapper in front of `inner`.
fn assert_docker_spans(spans: &[SpanRecord], id: &str, inner: &str, methods: &[&str]) {
    assert!(
        spans.iter().any(|s| s.name == names::WRAPPER_START),
        "the wrapper started: {:?}",
        names_of(spans)
    );
    for s in spans {
        assert_eq!(
            s.attr_str(attr::CONTAINERD_NAMESPACE),
            Some(DOCKER_NAMESPACE),
            "{s:?}"
        );
        assert_eq!(s.container_id(), Some(id));
    }
    for method in methods {
        let call = span(spans, method);
        assert_eq!(
            call.attr_i64(attr::RPC_TTRPC_STATUS_CODE),
            Some(0),
            "{call:?}"
        );
        assert!(
            call.attr_str(attr::INNER)
                .is_some_and(|s| s.ends_with(inner)),
            "{call:?}"
        );
    }
}

fn names_of(spans: &[SpanRecord]) -> Vec<&str> {
    spans.iter().map(|s| s.name.as_str()).collect()
}

/// The sockets the wrapper's proxies served the container on, one per start: from the
/// `proxy.ensure` span in each of the container's own traces (it names no container).
fn proxy_sockets(docker: &TestDocker, spans: &[SpanRecord]) -> Vec<PathBuf> {
    let traces: Vec<_> = spans
        .iter()
        .filter(|s| s.name == names::WRAPPER_START)
        .map(|s| s.trace_id)
        .collect();
    assert!(
        !traces.is_empty(),
        "no shim.start span: {:?}",
        names_of(spans)
    );
    let sockets: Vec<PathBuf> = docker
        .spans()
        .iter()
        .filter(|s| traces.contains(&s.trace_id))
        .filter_map(|s| s.attr_str(attr::PROXY_SOCKET))
        .map(PathBuf::from)
        .collect();
    assert_eq!(
        sockets.len(),
        traces.len(),
        "one proxy.ensure per shim.start"
    );
    sockets
}

/// Nothing of the instance's containers is left: no shim, proxy or container process, no proxy
/// socket, no event socket in the run dir.
fn assert_nothing_left(docker: &TestDocker, sockets: &[PathBuf]) {
    let left = wait_for(CLEANUP, || {
        let processes = docker.owned_processes();
        let files: Vec<PathBuf> = sockets
            .iter()
            .filter(|s| s.exists())
            .cloned()
            .chain(
                std::fs::read_dir(docker.run_dir())
                    .into_iter()
                    .flatten()
                    .flatten()
                    .map(|e| e.path())
                    .filter(|p| p.extension().is_some_and(|e| e == "sock")),
            )
            .collect();
        (processes.is_empty() && files.is_empty()).then_some(())
    });
    assert!(
        left.is_some(),
        "left behind: processes {:?}, sockets {:?}",
        process_lines(&docker.owned_processes()),
        sockets.iter().filter(|s| s.exists()).collect::<Vec<_>>()
    );
}

fn process_lines(pids: &[u32]) -> Vec<String> {
    pids.iter()
        .map(|pid| {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            format!(
                "{pid}: {}",
                String::from_utf8_lossy(&cmdline).replace('\0', " ")
            )
        })
        .collect()
}

/// [`DockerCli::run_rm`](shimtrace_containerd::docker::DockerCli::run_rm) of `command` in the
/// workload image: the output and the container's full id.
fn run_rm(docker: &TestDocker, runtime: &str, command: &[&str]) -> (CliOutput, String) {
    let run = RunRm {
        runtime,
        name: None,
        image: WORKLOAD_TAG,
        command,
    };
    let run = docker.cli().run_rm(&run, CLI_TIMEOUT);
    let out = run.output.unwrap();
    let id = run
        .id
        .unwrap_or_else(|| panic!("docker run wrote no container id: {out:?}"));
    (out, id)
}

/// Container `id`'s spans, once they hold a `method` call and the wrapper's `delete`.
fn spans_to_delete(docker: &TestDocker, id: &str, method: &str) -> Vec<SpanRecord> {
    docker.await_spans(id, SPANS, |s| {
        has_method(s, method) && s.iter().any(|x| x.name == names::WRAPPER_DELETE)
    })
}

/// `docker run -d OPTIONS… --network none --runtime RUNTIME` of a sleeping workload; its id.
fn run_sleeping(docker: &TestDocker, runtime: &str, options: &[&str]) -> String {
    let mut args = vec!["run", "-d"];
    args.extend_from_slice(options);
    args.extend_from_slice(&["--network", "none", "--runtime", runtime]);
    args.extend_from_slice(&[WORKLOAD_TAG, "sleep", "600"]);
    docker.docker_ok(&args).unwrap().stdout.trim().to_string()
}

/// A sleeping container named `name` under `traced-runc`; its id.
fn run_detached(docker: &TestDocker, name: &str) -> String {
    run_sleeping(docker, "traced-runc", &["--name", name])
}

#[test]
fn docker_run_prints_output_and_passes_exit_codes() {
    let docker = start();
    let daemon_json: Value =
        serde_json::from_str(&std::fs::read_to_string(docker.config_path()).unwrap()).unwrap();
    assert_eq!(
        daemon_json["runtimes"]["traced-runc"]["runtimeType"],
        docker
            .bin_dir()
            .join("containerd-shim-traced-runc-v2")
            .display()
            .to_string(),
        "the installer's entry is what dockerd runs: {daemon_json}"
    );

    let (out, hello) = run_rm(&docker, "traced-runc", &["echo", "hello"]);
    assert!(out.success(), "{out:?}");
    assert_eq!(out.stdout, "hello\n");
    let (out, three) = run_rm(&docker, "traced-runc", &["sh", "-c", "exit 3"]);
    assert_eq!(out.status.code(), Some(3), "{out:?}");

    let mut sockets = Vec::new();
    for (id, code) in [(&hello, 0), (&three, 3)] {
        let spans = spans_to_delete(&docker, id, "Delete");
        assert_docker_spans(
            &spans,
            id,
            "containerd-shim-runc-v2",
            &["Create", "Start", "Delete"],
        );
        assert_eq!(
            span(&spans, "Delete").attr_i64(attr::PROCESS_EXIT_CODE),
            Some(code),
            "{:?}",
            span(&spans, "Delete")
        );
        sockets.extend(proxy_sockets(&docker, &spans));
    }
    assert_nothing_left(&docker, &sockets);
}

#[test]
fn docker_exec_stop_and_rm_force_go_through_the_wrapper() {
    let docker = start();
    let id = run_detached(&docker, "ex1");
    let exec = docker
        .docker_ok(&["exec", "ex1", "echo", "from-exec"])
        .unwrap();
    assert_eq!(exec.stdout, "from-exec\n");
    let code = docker
        .docker(&["exec", "ex1", "sh", "-c", "exit 5"])
        .unwrap();
    assert_eq!(code.status.code(), Some(5), "{code:?}");
    // busybox sleep as pid 1 ignores SIGTERM: stop escalates to SIGKILL after the timeout.
    docker.docker_ok(&["stop", "-t", "1", "ex1"]).unwrap();
    let state = docker
        .docker_ok(&["inspect", "-f", "{{.State.ExitCode}}", "ex1"])
        .unwrap();
    assert_eq!(state.stdout.trim(), "137");
    docker.docker_ok(&["rm", "ex1"]).unwrap();
    let spans = docker.await_spans(&id, SPANS, |s| {
        s.iter()
            .filter(|x| is_method(x, "Exec") || is_method(x, "Kill"))
            .count()
            >= 3
            && s.iter().any(|x| x.name == names::WRAPPER_DELETE)
    });
    assert_docker_spans(
        &spans,
        &id,
        "containerd-shim-runc-v2",
        &["Create", "Start", "Kill", "Delete"],
    );
    // What a Docker user knows the container by: its name and image, on the proxy's call spans.
    for call in spans.iter().filter(|s| s.name.contains("Task/")) {
        assert_eq!(call.attr_str(attr::CONTAINER_NAME), Some("ex1"), "{call:?}");
        assert_eq!(
            call.attr_str(attr::CONTAINER_IMAGE_NAME),
            Some(WORKLOAD_TAG),
            "{call:?}"
        );
    }
    let execs: Vec<&SpanRecord> = spans.iter().filter(|s| is_method(s, "Exec")).collect();
    assert_eq!(execs.len(), 2, "{:?}", names_of(&spans));
    assert!(execs
        .iter()
        .all(|s| s.attr_str(attr::CONTAINERD_EXEC_ID).is_some()));
    // Docker's stop: SIGTERM, then SIGKILL.
    let signals: Vec<i64> = spans
        .iter()
        .filter(|s| is_method(s, "Kill"))
        .filter_map(|s| s.attr_i64(attr::SIGNAL))
        .collect();
    assert!(signals.contains(&15) && signals.contains(&9), "{signals:?}");
    let mut sockets = proxy_sockets(&docker, &spans);

    let id = run_detached(&docker, "rmf");
    docker.docker_ok(&["rm", "-f", "rmf"]).unwrap();
    let spans = spans_to_delete(&docker, &id, "Kill");
    assert_docker_spans(
        &spans,
        &id,
        "containerd-shim-runc-v2",
        &["Create", "Start", "Kill", "Delete"],
    );
    sockets.extend(proxy_sockets(&docker, &spans));
    let gone = docker.docker(&["inspect", "rmf"]).unwrap();
    assert!(!gone.success(), "rm -f removed it: {gone:?}");
    assert_nothing_left(&docker, &sockets);
}

#[test]
fn dockerd_restart_stops_a_running_container_and_leaves_nothing() {
    let mut docker = start();
    let id = run_detached(&docker, "survivor");
    let spans = docker.await_spans(&id, SPANS, |s| has_method(s, "Start"));
    let sockets = proxy_sockets(&docker, &spans);
    assert!(sockets[0].exists());
    let before = docker.owned_processes();
    assert!(
        before.len() >= 3,
        "shim, proxy and container run: {:?}",
        process_lines(&before)
    );
    let stopping = shimtrace_span::clock::now_unix_nanos();
    docker.restart().expect("dockerd restarts");
    // Without live-restore dockerd stopped the container on its way down.
    let running = docker
        .docker_ok(&["inspect", "-f", "{{.State.Running}}", "survivor"])
        .unwrap();
    assert_eq!(running.stdout.trim(), "false");
    let spans = docker.await_spans(&id, SPANS, |s| {
        s.iter()
            .any(|x| is_method(x, "Delete") && x.start_time_unix_nano > stopping)
    });
    assert!(
        spans
            .iter()
            .any(|s| is_method(s, "Kill") && s.start_time_unix_nano > stopping),
        "the stop went through the wrapper: {:?}",
        names_of(&spans)
    );
    assert_nothing_left(&docker, &sockets);

    // The restarted dockerd runs it again, through the wrapper.
    docker.docker_ok(&["start", "survivor"]).unwrap();
    let restarted = shimtrace_span::clock::now_unix_nanos();
    docker.docker_ok(&["rm", "-f", "survivor"]).unwrap();
    let spans = docker.await_spans(&id, SPANS, |s| {
        s.iter().filter(|x| is_method(x, "Create")).count() == 2
            && s.iter()
                .any(|x| is_method(x, "Delete") && x.start_time_unix_nano > restarted)
    });
    let sockets = proxy_sockets(&docker, &spans);
    assert_eq!(sockets.len(), 2, "one proxy per start");
    assert_nothing_left(&docker, &sockets);
}

#[test]
fn gvisor_runs_through_docker_as_traced_runsc() {
    let docker = start();
    assert!(
        docker.install_report().contains(GVISOR_RUNTIME),
        "{}",
        docker.install_report()
    );
    let host_release = nix::sys::utsname::uname()
        .unwrap()
        .release()
        .to_string_lossy()
        .into_owned();
    let (out, id) = run_rm(&docker, GVISOR_RUNTIME, &["uname", "-r"]);
    assert!(out.success(), "{out:?}\n{}", docker.log());
    let release = out.stdout.trim();
    assert!(!release.is_empty());
    assert_ne!(
        release, host_release,
        "the container saw gVisor's kernel, not the host's"
    );
    let spans = spans_to_delete(&docker, &id, "Delete");
    assert_docker_spans(
        &spans,
        &id,
        "containerd-shim-runsc-docker-v2",
        &["Create", "Start", "Delete"],
    );
    assert_nothing_left(&docker, &proxy_sockets(&docker, &spans));
    let left = std::fs::read_dir(Path::new("/run/containerd/runc").join(DOCKER_NAMESPACE))
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(&id))
        .count();
    assert_eq!(left, 0, "runsc's state of {id} is gone");
}

fn shimtrace(docker: &TestDocker, args: &[&str]) -> std::process::Output {
    shimtrace_testkit::cli::shimtrace()
        .arg("install")
        .args(args)
        .arg("--config")
        .arg(docker.config_path())
        .env("DOCKER_HOST", docker.host())
        .env("PATH", docker.path_var())
        .output()
        .unwrap()
}

#[test]
fn install_check_confirms_spans_and_uninstall_restores_daemon_json() {
    // As on a machine where dockerd already runs: install, check (restart needed), restart, check.
    let mut docker = TestDocker::prepare(
        &DockerVersion::find(DOCKER_VERSION).unwrap(),
        DockerOptions::default(),
    )
    .unwrap();
    docker.start().expect("dockerd starts");
    docker.load_busybox().unwrap();
    let before = std::fs::read_to_string(docker.config_path()).unwrap();
    // The shims found on PATH, as most installs find them (the other tests name them with
    // --shim-path).
    docker
        .install_traced_by(ShimLookup::Path)
        .expect("install --docker --write");
    let spool = docker.spool().display().to_string();
    let cli = docker.version().cli().display().to_string();
    let check = [
        "--docker",
        "--check",
        "--spool",
        &spool,
        "--docker-cli",
        &cli,
    ];
    let out = shimtrace(&docker, &check);
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{report}");
    assert!(
        report.contains("traced-runc: FAILED: dockerd has not loaded it: restart dockerd"),
        "{report}"
    );
    docker.restart().expect("dockerd restarts");

    let out = shimtrace(&docker, &check);
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{report}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for runtime in ["traced-runc", GVISOR_RUNTIME] {
        assert!(
            report
                .lines()
                .any(|l| l.starts_with(&format!("{runtime}: ok: ")) && l.contains("spans")),
            "{report}"
        );
    }

    // Looking at the wrong spool, the check says where the spans were not and fails.
    let empty = tempfile::tempdir().unwrap();
    let out = shimtrace(
        &docker,
        &[
            "--docker",
            "--check",
            "--spool",
            empty.path().to_str().unwrap(),
            "--docker-cli",
            &cli,
        ],
    );
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success());
    assert!(
        report.contains("traced-runc: FAILED: container")
            && report.contains("no span of it reached"),
        "{report}"
    );

    let out = shimtrace(&docker, &["--docker", "--uninstall"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let daemon_json: Value =
        serde_json::from_str(&std::fs::read_to_string(docker.config_path()).unwrap()).unwrap();
    let runtimes: Vec<&String> = daemon_json["runtimes"]
        .as_object()
        .unwrap()
        .keys()
        .collect();
    assert_eq!(runtimes, ["runsc"], "only the user's runtime is left");
    assert_eq!(
        daemon_json,
        serde_json::from_str::<Value>(&before).unwrap(),
        "daemon.json is as before install"
    );
    assert_eq!(
        std::fs::read_dir(docker.bin_dir()).unwrap().count(),
        0,
        "links and scripts are gone"
    );
    assert!(!docker.dir().join("lib").exists());
}

#[test]
fn a_dropped_instance_leaves_nothing_even_after_dockerd_died() {
    let docker = start();
    let runc = run_detached(&docker, "left-runc");
    let gvisor = run_sleeping(&docker, GVISOR_RUNTIME, &[]);
    let mut sockets = Vec::new();
    for id in [&runc, &gvisor] {
        let spans = docker.await_spans(id, SPANS, |s| has_method(s, "Start"));
        sockets.extend(proxy_sockets(&docker, &spans));
    }
    let mut pids = docker.owned_processes();
    pids.extend(docker.pid());
    pids.extend(docker.containerd_pid());
    assert!(pids.len() >= 8, "{:?}", process_lines(&pids));
    let dir = docker.dir().to_path_buf();
    // A crashed dockerd: the Drop guard can no longer ask it to remove anything.
    shimtrace_testkit::traced::sigkill(docker.pid().unwrap()).unwrap();
    drop(docker);
    let alive: Vec<u32> = pids
        .iter()
        .copied()
        .filter(|p| shimtrace_testkit::traced::alive(*p))
        .collect();
    assert!(
        alive.is_empty(),
        "still running: {:?}",
        process_lines(&alive)
    );
    assert!(!dir.exists(), "{} removed", dir.display());
    let sockets_left: Vec<&PathBuf> = sockets.iter().filter(|s| s.exists()).collect();
    assert!(
        sockets_left.is_empty(),
        "proxy sockets left: {sockets_left:?}"
    );
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mounts.contains(dir.to_str().unwrap()),
        "nothing mounted below {}",
        dir.display()
    );
    let runc_root = Path::new("/run/containerd/runc").join(DOCKER_NAMESPACE);
    let states: Vec<String> = std::fs::read_dir(&runc_root)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(&runc) || n.starts_with(&gvisor))
        .collect();
    assert!(states.is_empty(), "runc/runsc state left: {states:?}");
}

/// dockerd ≥ 26 and containerd 2.x export OpenTelemetry traces when `OTEL_EXPORTER_OTLP_*` is
/// set, dockerd's containerd client and containerd's gRPC server carry the context, and containerd
/// 2.x sends `traceparent` to the shim: the wrapper's Create and Start spans hang under the trace of
/// the Docker API call that started the container (`POST /containers/{name}/start`).
#[test]
fn the_docker_api_call_and_the_shim_calls_are_one_trace() {
    let (_runtime, receiver) = shimtrace_testkit::otlp::otlp_http_receiver();
    let mut options = DockerOptions {
        containerd: Some(ContainerdVersion::find("2.1.9").expect("containerd 2.1.9 installed")),
        ..Default::default()
    };
    // No OTEL_SERVICE_NAME: dockerd and containerd name themselves.
    for (key, value) in [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint()),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf".into()),
        ("OTEL_TRACES_SAMPLER", "always_on".into()),
        ("OTEL_BSP_SCHEDULE_DELAY", "200".into()),
    ] {
        options = options.env(key, value);
    }
    let docker = TestDocker::start_traced(DOCKER_NEXT_VERSION, options).expect("dockerd 28");
    let (out, id) = run_rm(&docker, "traced-runc", &["true"]);
    assert!(out.success(), "{out:?}");
    let spans = docker.await_spans(&id, SPANS, |s| {
        has_method(s, "Start") && has_method(s, "Delete")
    });
    let create = span(&spans, "Create");
    let start = span(&spans, "Start");
    assert_eq!(
        start.trace_id, create.trace_id,
        "Create and Start: one API call"
    );
    // The wrapper's own trace of the container (shim.start) stays linked.
    let own = spans
        .iter()
        .find(|s| s.name == names::WRAPPER_START)
        .expect("shim.start");
    assert_ne!(own.trace_id, create.trace_id);
    assert_eq!(
        create.attr_str(attr::CONTAINER_TRACE_ID),
        Some(own.trace_id.to_hex().as_str())
    );
    let parent = create
        .parent_span_id
        .expect("containerd sent traceparent with Create")
        .to_hex();
    let trace = create.trace_id.to_hex();
    // Batches arrive as each exporter flushes: wait until the chain reaches a root.
    let chain = wait_for(SPANS, || {
        let chain = ancestors(&receiver.received.spans(), &trace, &parent);
        chain
            .last()
            .is_some_and(|(_, _, parent)| parent.is_none())
            .then_some(chain)
    })
    .unwrap_or_else(|| {
        panic!(
            "no root above {parent}: {:?}",
            ancestors(&receiver.received.spans(), &trace, &parent)
        )
    });
    let has = |service: &str, name: &str| chain.iter().any(|(s, n, _)| s == service && n == name);
    for (service, name) in [
        ("containerd", "containerd.task.v3.Task/Create"),
        ("containerd", "containerd.services.tasks.v1.Tasks/Create"),
        ("dockerd", "containerd.services.tasks.v1.Tasks/Create"),
    ] {
        assert!(has(service, name), "{service} {name} in {chain:?}");
    }
    let (service, root, _) = chain.last().unwrap();
    assert_eq!(service, "dockerd", "{chain:?}");
    assert!(
        root.starts_with("POST /containers/") && root.ends_with("/start"),
        "the root is the Docker API call: {chain:?}"
    );
}

/// `(service, name, parent)` of span `from` of `trace` and of every span above it that arrived,
/// bottom up.
fn ancestors(
    all: &[shimtrace_testkit::otlp::ReceivedSpan],
    trace: &str,
    from: &str,
) -> Vec<(String, String, Option<String>)> {
    let mut chain = Vec::new();
    let mut next = Some(from.to_string());
    while let Some(span_id) = next {
        let Some(found) = all
            .iter()
            .find(|s| s.span_id == span_id && s.trace_id == trace)
        else {
            break;
        };
        chain.push((
            found
                .resource
                .get("service.name")
                .cloned()
                .unwrap_or_default(),
            found.name.clone(),
            found.parent_span_id.clone(),
        ));
        next = found.parent_span_id.clone();
    }
    chain
}

/// What a Docker container is known by, and where a shim can find it: moby writes no annotation
/// into `config.json` (only `docker run --annotation`s), and the spec's `hostname` is the short id.
/// The name and the image are in `config.v2.json` in `<data-root>/containers/<id>/`, the directory
/// the spec's `/etc/hostname` mount comes from (written before the task is created).
fn name_and_image_are_beside_the_hostname_mount(version: &str) {
    let docker = TestDocker::start_traced(version, DockerOptions::default()).expect("dockerd");
    let id = run_sleeping(
        &docker,
        "traced-runc",
        &[
            "--name",
            "web-1",
            "--label",
            "team=a",
            "--annotation",
            "org.example/by-user=yes",
        ],
    );
    let spec: Value =
        serde_json::from_slice(&std::fs::read(docker.bundle_dir(&id).join("config.json")).unwrap())
            .unwrap();
    assert_eq!(spec["hostname"], id[..12]);
    let annotations = spec["annotations"].as_object().cloned().unwrap_or_default();
    assert_eq!(
        annotations.keys().collect::<Vec<_>>(),
        ["org.example/by-user"],
        "only the user's annotations: {annotations:?}"
    );
    let hostname_mount = element_where(&spec["mounts"], "destination", "/etc/hostname");
    let hostname_source = PathBuf::from(hostname_mount["source"].as_str().expect("its source"));
    let container_dir = hostname_source.parent().unwrap();
    assert_eq!(
        container_dir.file_name().unwrap().to_str(),
        Some(id.as_str())
    );
    let config: Value =
        serde_json::from_slice(&std::fs::read(container_dir.join("config.v2.json")).unwrap())
            .unwrap();
    assert_eq!(config["Name"], "/web-1");
    assert_eq!(config["Config"]["Image"], WORKLOAD_TAG);
    assert_eq!(config["Config"]["Labels"]["team"], "a");
    assert!(config["Image"]
        .as_str()
        .is_some_and(|i| i.starts_with("sha256:")));
    docker.docker_ok(&["rm", "-f", "web-1"]).unwrap();
}

#[test]
fn name_and_image_are_beside_the_hostname_mount_docker_26() {
    name_and_image_are_beside_the_hostname_mount(DOCKER_VERSION)
}

#[test]
fn name_and_image_are_beside_the_hostname_mount_docker_28() {
    name_and_image_are_beside_the_hostname_mount(DOCKER_NEXT_VERSION)
}

/// `lab` (a `shimtrace lab` command) with `--engine docker` where no Docker answers, so that it
/// starts a dockerd of `version` (and its spans go to its own spool).
pub(crate) fn with_private_dockerd<'a>(
    lab: &'a mut Command,
    version: &DockerVersion,
) -> &'a mut Command {
    lab.args(["--engine", "docker"])
        .arg("--docker-cli")
        .arg(version.cli())
        .arg("--dockerd")
        .arg(version.dockerd())
        .env(
            "DOCKER_HOST",
            "unix:///nonexistent/shimtrace-test/docker.sock",
        )
        .env_remove(shimtrace_span::env::SPOOL_DIR)
}

/// `shimtrace lab --engine docker` where no Docker answers: the lab starts its own dockerd with the
/// traced runtimes, runs runc and gVisor through `docker run --runtime`, and writes the same
/// report, leaving nothing behind.
#[test]
fn lab_runs_its_profiles_through_docker() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let version = DockerVersion::find(DOCKER_VERSION).unwrap();
    let mut lab = shimtrace_testkit::cli::shimtrace();
    // Killed with its dockerd, shims and containers, and its mounts undone, if it hangs or an
    // assertion fails.
    let mut lab = LabRun::spawn(
        with_private_dockerd(lab.arg("lab"), &version)
            .args(["--runs", "2", "--requests", "10"])
            .args(["--only", "runc,runsc", "--out"])
            .arg(&out)
            .arg("--wrapper")
            .arg(shimtrace_testkit::traced::wrapper_binary())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
    );
    let run = lab.wait_within(LAB_DEADLINE);
    shimtrace_testkit::cli::assert_succeeded("shimtrace lab --engine docker", &run);
    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
    let docker = &report["setup"]["docker"];
    assert_eq!(docker["private"], true, "{docker}");
    assert!(docker["version"]
        .as_str()
        .unwrap()
        .starts_with(DOCKER_VERSION));
    assert_eq!(report["setup"]["traced"], true);
    let host_release = report["host_probe"]["kernel"]["release"].as_str().unwrap();
    for (name, runtime) in [("runc", "traced-runc"), ("runsc", GVISOR_RUNTIME)] {
        let p = element_where(&report["profiles"], "name", name);
        assert_eq!(p["status"], "ok", "{p}");
        assert_eq!(p["runtime"], runtime);
        let cold = &p["cold_start"];
        assert_eq!(cold["ok_runs"], 2, "{cold}");
        assert!(cold["wall"]["p50"].as_f64().unwrap() > 0.0);
        assert!(cold["to_workload"]["p50"].as_f64().unwrap() > 0.0);
        let create = &cold["spans"]["containerd.task.v2.Task/Create"];
        assert!(create["duration"]["p50"].as_f64().unwrap() > 0.0, "{cold}");
        assert!(cold["spans"]["shim.start"].is_object());
        let release = p["probe"]["kernel"]["release"].as_str().unwrap();
        assert_eq!(release == host_release, name == "runc", "{name}: {release}");
        let http = &p["http"];
        let served = http["samples_ms"].as_array().unwrap().len();
        assert_eq!(served + http["errors"].as_u64().unwrap() as usize, 10);
        assert!(served > 0, "{http}");
    }
    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(md.contains("Wall time of `docker run --rm`"), "{md}");
    assert!(md.contains("(private dockerd started by the lab)"), "{md}");
    // The lab's dockerd, its containerd, shims and containers are gone, and nothing is mounted.
    let spool = format!("SHIMTRACE_SPOOL_DIR={}", out.join("spool").display());
    let left: Vec<u32> = shimtrace_testkit::containerd::proc_pids()
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/environ"))
                .map(|e| e.split(|b| *b == 0).any(|v| v == spool.as_bytes()))
                .unwrap_or(false)
        })
        .filter(|pid| shimtrace_testkit::traced::alive(*pid))
        .collect();
    assert!(left.is_empty(), "left running: {:?}", process_lines(&left));
    // Only this lab's own directory: other tests run labs with private dockerds at the same time.
    let private: Vec<&String> = lab
        .private_dirs()
        .iter()
        .filter(|dir| dir.contains("/shimtrace-lab-dkr-"))
        .collect();
    assert_eq!(private.len(), 1, "the lab's dockerd: {private:?}");
    let mounts = mount_points_under(Path::new(private[0]));
    assert!(
        mounts.is_empty(),
        "mounts of {} left: {mounts:?}",
        private[0]
    );
}
