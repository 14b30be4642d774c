//! Kubernetes through containerd's real CRI plugin (1.6.20, 1.7.24, 2.1.9), registered the way
//! `shimtrace install --write` writes it: pods of a sandbox and two containers under `traced-runc`
//! and gVisor, exit codes, every part's spans, one proxy per pod; on 2.1.9 a client `traceparent`
//! as the trace of Create/Start; `install --check` on handlers that trace and one that does not;
//! `install --write` on Debian's stock config and `containerd config default`, and in the drop-in
//! form of containerd 2.2 and later (also over what an install for 2.1 wrote, which it moves
//! there); and no proxy, socket or process left after pod deletion, a containerd restart or a
//! killed inner shim.

use std::path::Path;
use std::time::Duration;

use shimtrace_containerd::check::{check, CheckOptions, Verdict};
use shimtrace_containerd::cri::{ContainerSpec, ContainerState, PodSpec};
use shimtrace_containerd::install::{configured_handlers, install, uninstall, Form, InstallArgs};
use shimtrace_lab::profiles::write_runsc_cri_wrapper;
use shimtrace_span::{attr, SpanRecord, TraceContext};
use shimtrace_testkit::cli::parse_args;
use shimtrace_testkit::containerd::Options;
use shimtrace_testkit::cri::{
    workload_image, BaseConfig, CriNode, CriOptions, DEBIAN_STOCK_CONFIG,
};
use shimtrace_testkit::traced::{
    alive, assert_runtime, built_binary, has_method, is_method, pids_with_cmdline, wait_for,
    wait_until, Spooled,
};

const SPANS: Duration = Duration::from_secs(15);
const EXIT: Duration = Duration::from_secs(60);
/// A container that runs until CRI stops it, then exits 7; it logs `ready` once its trap is set.
const WAITS: [&str; 3] = [
    "/bin/sh",
    "-c",
    "trap 'exit 7' TERM; echo ready; while :; do sleep 1; done",
];

fn container(name: &str, command: &[&str]) -> ContainerSpec {
    ContainerSpec::new(name, workload_image(), command.iter().copied())
}

/// The [`WAITS`] container, logging to `waits.log` in its pod's log directory.
fn waits() -> ContainerSpec {
    let mut spec = container("waits", &WAITS);
    spec.log_path = Some("waits.log".into());
    spec
}

/// A pod whose containers log into `logs`.
fn logged_pod(name: &str, version: &str, handler: &str, logs: &Path) -> PodSpec {
    let mut spec = pod(name, version, handler);
    spec.log_directory = Some(logs.to_path_buf());
    spec
}

/// Waits until [`waits`] has set its trap (a TERM before that would end it with 143, not 7).
fn await_ready(logs: &Path) {
    let ready = wait_for(EXIT, || {
        std::fs::read_to_string(logs.join("waits.log"))
            .ok()
            .filter(|log| log.contains(" ready"))
    });
    assert!(ready.is_some(), "the waiting container never logged ready");
}

/// A pod whose name is unique on the machine (runsc names its state after the container id alone,
/// CRI derives ids at random, but pod names show up in logs).
fn pod(name: &str, version: &str, handler: &str) -> PodSpec {
    PodSpec::new(format!("{name}-{}", version.replace('.', "")), handler)
}

fn span<'a>(spans: &'a [SpanRecord], method: &str) -> &'a SpanRecord {
    spans
        .iter()
        .find(|s| is_method(s, method))
        .unwrap_or_else(|| panic!("no {method} span in {:?}", names(spans)))
}

fn names(spans: &[SpanRecord]) -> Vec<&str> {
    spans.iter().map(|s| s.name.as_str()).collect()
}

/// The form install must have chosen for a version.
fn expected_form(version: &str) -> Form {
    if version.starts_with("1.6.") {
        Form::Name
    } else {
        Form::Path
    }
}

/// gVisor for host-network pods in this VM: the lab's runsc wrapper for the runc shim under CRI
/// (`write_runsc_cri_wrapper`: `--network=host --ignore-cgroups`, a gVisor sandbox per container,
/// `kill` of an exited sandbox succeeding) around Debian's runsc.
fn runsc_script(dir: &Path) -> String {
    write_runsc_cri_wrapper(dir, Path::new("/usr/bin/runsc"))
        .unwrap()
        .display()
        .to_string()
}

/// Asserts that a removed pod left nothing: no proxy on its socket, the socket gone, no process of
/// the instance but containerd, no runc state for `ids`.
fn assert_nothing_left(node: &CriNode, proxy_socket: &str, ids: &[&str]) {
    let gone = wait_for(SPANS, || {
        (node.proxies_on(proxy_socket).is_empty() && !Path::new(proxy_socket).exists())
            .then_some(())
    });
    assert!(
        gone.is_some(),
        "the pod's proxy exits and removes its socket {proxy_socket}"
    );
    let left = node.await_no_processes(SPANS);
    assert!(left.is_empty(), "processes left after the pod: {left:?}");
    for id in ids {
        let state = Path::new("/run/containerd/runc/k8s.io").join(id);
        assert!(!state.exists(), "runc state left: {}", state.display());
    }
}

/// The pids of the runc shims (behind the proxy) serving pod `pod_id` for the node's containerd.
fn inner_runc_shims(node: &CriNode, pod_id: &str) -> Vec<u32> {
    let containerd_address = node.traced.containerd.address();
    pids_with_cmdline(&[
        "containerd-shim-runc-v2",
        "-id",
        pod_id,
        "-address",
        containerd_address.to_str().unwrap(),
    ])
}

/// The proxy socket a pod's shim address names (`unix:///run/containerd/s/…` → the path).
fn socket_of(address: &str) -> String {
    address.trim_start_matches("unix://").to_string()
}

fn traced_pod(version: &str) {
    let node = CriNode::start(version, CriOptions::default()).expect("CRI node");
    let install = node.install.as_ref().unwrap();
    assert_eq!(install.form, expected_form(version), "{}", install.report);
    let handler = configured_handlers(&node.config_text)
        .into_iter()
        .find(|(name, ..)| name == "traced-runc")
        .expect("install registered traced-runc");
    match expected_form(version) {
        Form::Name => assert_eq!(
            (handler.1.as_str(), handler.2.as_str()),
            ("io.containerd.traced-runc.v2", "")
        ),
        Form::Path => {
            assert_eq!(handler.1, "io.containerd.runc.v2");
            assert!(handler.2.ends_with("/containerd-shim-traced-runc-v2"));
        }
    }

    let logs = tempfile::tempdir().unwrap();
    let two = logged_pod("two", version, "traced-runc", logs.path());
    let run = node
        .run_pod(
            &two,
            &[container("quits", &["/bin/sh", "-c", "exit 3"]), waits()],
        )
        .expect("the pod runs under traced-runc");
    let (quits, waits) = (run.containers[0].clone(), run.containers[1].clone());
    let cri = node.cri();
    let exited = node.block_on(cri.wait_exited(&quits, EXIT)).unwrap();
    assert_eq!(exited.exit_code, 3, "{exited:?}");

    // One proxy for the pod: the sandbox and its running container share one shim address, and
    // one proxy serves it, in front of one inner shim.
    let address = node
        .shim_address(run.id())
        .expect("the sandbox's shim address");
    assert_eq!(node.shim_address(&waits).as_deref(), Some(address.as_str()));
    let socket = socket_of(&address);
    assert_eq!(node.proxies_on(&socket).len(), 1, "one proxy for the pod");
    let inner = inner_runc_shims(&node, run.id());
    assert_eq!(inner.len(), 1, "one inner shim for the pod: {inner:?}");

    await_ready(logs.path());
    node.block_on(cri.stop_container(&waits, 10)).unwrap();
    let stopped = node.block_on(cri.wait_exited(&waits, EXIT)).unwrap();
    assert_eq!(stopped.exit_code, 7, "{stopped:?}");

    let sandbox = node.await_spans(run.id(), SPANS, |s| {
        has_method(s, "Create") && has_method(s, "Start")
    });
    assert_eq!(
        span(&sandbox, "Create").attr_str(attr::CONTAINERD_NAMESPACE),
        Some("k8s.io")
    );
    let quits_spans = node.await_spans(&quits, SPANS, |s| {
        ["Create", "Start", "Wait"].iter().all(|m| has_method(s, m))
    });
    assert_eq!(
        span(&quits_spans, "Wait").attr_i64(attr::PROCESS_EXIT_CODE),
        Some(3)
    );
    let waits_spans = node.await_spans(&waits, SPANS, |s| {
        ["Create", "Start", "Kill", "Wait"]
            .iter()
            .all(|m| has_method(s, m))
    });
    assert_eq!(span(&waits_spans, "Kill").attr_i64(attr::SIGNAL), Some(15));
    assert_eq!(
        span(&waits_spans, "Wait").attr_i64(attr::PROCESS_EXIT_CODE),
        Some(7)
    );
    // Every span names the pod as Kubernetes knows it, and which of its parts the call was for.
    for (spans, role, container) in [
        (&sandbox, "sandbox", None),
        (&quits_spans, "container", Some("quits")),
        (&waits_spans, "container", Some("waits")),
    ] {
        for s in spans {
            for (key, value) in [
                (attr::K8S_POD_NAME, &two.name),
                (attr::K8S_NAMESPACE_NAME, &two.namespace),
                (attr::K8S_POD_UID, &two.uid),
            ] {
                assert_eq!(s.attr_str(key), Some(value.as_str()), "{key}: {s:?}");
            }
            assert_eq!(s.attr_str(attr::K8S_ROLE), Some(role), "{s:?}");
            assert_eq!(s.attr_str(attr::K8S_SANDBOX_ID), Some(run.id()), "{s:?}");
            assert_eq!(s.attr_str(attr::K8S_CONTAINER_NAME), container, "{s:?}");
        }
    }

    // The collector's /metrics counts the pod's sandbox apart from its containers (serve on this
    // node's spool, last: it compacts what the exited wrappers wrote).
    let db = tempfile::tempdir().unwrap();
    let (serve, metrics) =
        crate::otlp_export::start_serve(&node.spool_dir(), &db.path().join("store.db"), "");
    let roles = wait_until("both roles on /metrics", SPANS, || {
        let text = crate::otlp_export::scrape(metrics)?;
        let roles: std::collections::BTreeSet<String> = crate::otlp_export::parse_exposition(&text)
            .into_iter()
            .filter(|(name, _, _)| name == "shimtrace_cold_start_phase_seconds_count")
            .map(|(_, labels, _)| labels["role"].clone())
            .collect();
        (roles.len() == 2).then_some(roles)
    });
    assert_eq!(
        roles.into_iter().collect::<Vec<_>>(),
        [attr::K8S_ROLE_CONTAINER, attr::K8S_ROLE_SANDBOX]
    );
    drop(serve);

    // Pod deletion leaves nothing behind.
    node.remove_pod(run.id()).unwrap();
    assert_nothing_left(&node, &socket, &[run.id(), &quits, &waits]);
}

fn gvisor_pod(version: &str) {
    let scripts = tempfile::tempdir().unwrap();
    let runsc = runsc_script(scripts.path());
    let node = CriNode::start(
        version,
        CriOptions {
            install_args: vec!["--runsc".into(), runsc.clone()],
            ..Default::default()
        },
    )
    .expect("CRI node");
    let install = node.install.as_ref().unwrap();
    let handlers = configured_handlers(&node.config_text);
    let gvisor = handlers.iter().find(|(name, ..)| name == "traced-runsc");
    assert!(gvisor.is_some(), "{}", install.report);
    let source = match expected_form(version) {
        // The runtime-name form cannot pass runc's BinaryName: gVisor is a runtime name of its
        // own, which the wrapper's config maps to the runc shim running runsc as `runc`.
        Form::Name => {
            let (_, runtime_type, runtime_path) = gvisor.unwrap();
            assert_eq!(
                (runtime_type.as_str(), runtime_path.as_str()),
                ("io.containerd.traced-runsc.v2", "")
            );
            assert!(!node.config_text.contains("BinaryName"));
            assert!(
                install
                    .report
                    .contains(&format!("oci_runtime = \"{runsc}\"")),
                "{}",
                install.report
            );
            "config"
        }
        Form::Path => {
            assert!(node
                .config_text
                .contains(&format!("BinaryName = \"{runsc}\"")));
            "binary_name"
        }
    };

    let logs = tempfile::tempdir().unwrap();
    let mut spec = pod("gvisor", version, "traced-runsc");
    spec.log_directory = Some(logs.path().to_path_buf());
    let mut uname = container("uname", &["/bin/uname", "-r"]);
    uname.log_path = Some("uname.log".into());
    let run = node
        .run_pod(
            &spec,
            &[uname, container("quits", &["/bin/sh", "-c", "exit 3"])],
        )
        .expect("the pod runs under traced-runsc");
    let cri = node.cri();
    let uname_done = node
        .block_on(cri.wait_exited(&run.containers[0], EXIT))
        .unwrap();
    assert_eq!(uname_done.exit_code, 0, "{uname_done:?}");
    let quits = node
        .block_on(cri.wait_exited(&run.containers[1], EXIT))
        .unwrap();
    assert_eq!(quits.exit_code, 3, "{quits:?}");
    // CRI's log lines: `<time> stdout F <text>`.
    let log = std::fs::read_to_string(logs.path().join("uname.log")).unwrap_or_default();
    let release = log
        .lines()
        .find_map(|l| l.splitn(4, ' ').nth(3))
        .unwrap_or_default()
        .trim()
        .to_string();
    let host_release = nix::sys::utsname::uname()
        .unwrap()
        .release()
        .to_string_lossy()
        .into_owned();
    assert!(!release.is_empty(), "uname's log: {log:?}");
    assert_ne!(release, host_release, "the pod saw gVisor's kernel");

    let address = node
        .shim_address(run.id())
        .expect("the sandbox's shim address");
    let socket = socket_of(&address);
    assert_eq!(node.proxies_on(&socket).len(), 1, "one proxy for the pod");
    for id in [run.id(), &run.containers[0], &run.containers[1]] {
        let spans = node.await_spans(id, SPANS, |s| {
            has_method(s, "Create") && has_method(s, "Start")
        });
        for method in ["Create", "Start"] {
            assert_eq!(
                span(&spans, method).attr_i64(attr::RPC_TTRPC_STATUS_CODE),
                Some(0)
            );
            assert_runtime(span(&spans, method), "runsc", source);
        }
    }
    let quits_spans = node.await_spans(&run.containers[1], SPANS, |s| has_method(s, "Wait"));
    assert_eq!(
        span(&quits_spans, "Wait").attr_i64(attr::PROCESS_EXIT_CODE),
        Some(3)
    );
    node.remove_pod(run.id()).unwrap();
    assert_nothing_left(&node, &socket, &[]);
}

fn containerd_restart(version: &str) {
    let mut node = CriNode::start(version, CriOptions::default()).expect("CRI node");
    let logs = tempfile::tempdir().unwrap();
    let run = node
        .run_pod(
            &logged_pod("restart", version, "traced-runc", logs.path()),
            &[waits()],
        )
        .expect("the pod runs");
    await_ready(logs.path());
    let waits = run.containers[0].clone();
    let socket = socket_of(&node.shim_address(run.id()).unwrap());
    node.restart_containerd().expect("containerd restarts");
    let restarted = shimtrace_span::clock::now_unix_nanos();
    let status = node.block_on(node.cri().container_status(&waits)).unwrap();
    assert_eq!(status.state, ContainerState::ContainerRunning, "{status:?}");
    assert_eq!(node.proxies_on(&socket).len(), 1, "the proxy survived");

    node.block_on(node.cri().stop_container(&waits, 10))
        .unwrap();
    let stopped = node.block_on(node.cri().wait_exited(&waits, EXIT)).unwrap();
    assert_eq!(stopped.exit_code, 7, "{stopped:?}");
    // The calls after the restart went through the proxy.
    let spans = node.await_spans(&waits, SPANS, |s| {
        s.iter()
            .any(|x| is_method(x, "Kill") && x.start_time_unix_nano > restarted)
    });
    let kill = spans
        .iter()
        .find(|s| is_method(s, "Kill") && s.start_time_unix_nano > restarted)
        .unwrap();
    assert_eq!(kill.attr_i64(attr::RPC_TTRPC_STATUS_CODE), Some(0));
    node.remove_pod(run.id()).unwrap();
    assert_nothing_left(&node, &socket, &[run.id(), &waits]);
}

fn inner_shim_killed(version: &str) {
    let node = CriNode::start(version, CriOptions::default()).expect("CRI node");
    let run = node
        .run_pod(
            &pod("victim", version, "traced-runc"),
            &[container("waits", &WAITS)],
        )
        .expect("the pod runs");
    let socket = socket_of(&node.shim_address(run.id()).unwrap());
    let proxies = node.proxies_on(&socket);
    assert_eq!(proxies.len(), 1);
    let inner = inner_runc_shims(&node, run.id());
    assert_eq!(inner.len(), 1, "inner shim {inner:?}");
    shimtrace_testkit::traced::sigkill(inner[0]).unwrap();
    let gone = wait_for(SPANS, || {
        (!alive(proxies[0]) && !Path::new(&socket).exists()).then_some(())
    });
    assert!(gone.is_some(), "the proxy exits and removes its socket");
    // CRI sees the container gone and can remove the pod.
    let exited = node
        .block_on(node.cri().wait_exited(&run.containers[0], EXIT))
        .unwrap();
    assert_eq!(exited.state, ContainerState::ContainerExited);
    node.remove_pod_retrying(run.id(), EXIT)
        .expect("the pod is removed (the kubelet retries too)");
    // containerd 2.x keeps the runc state of a container whose shim was killed, untraced pods
    // included (the default runtime does the same); the harness removes it.
    let checked = if version.starts_with("1.") {
        vec![run.id(), run.containers[0].as_str()]
    } else {
        vec![run.id()]
    };
    assert_nothing_left(&node, &socket, &checked);
}

/// `install --check` on a node registered by `install --write`: every traced handler traces,
/// and the check imported its busybox image itself.
fn check_passes(version: &str) {
    let scripts = tempfile::tempdir().unwrap();
    let node = CriNode::start(
        version,
        CriOptions {
            import_workload: false,
            install_args: vec!["--runsc".into(), runsc_script(scripts.path())],
            ..Default::default()
        },
    )
    .expect("CRI node");
    assert!(!node
        .block_on(node.cri().has_image(&workload_image()))
        .unwrap());
    let c = &node.traced.containerd;
    let mut options = CheckOptions::new(c.address(), &node.traced.spool);
    options.ctr = c.version().ctr();
    options.config = Some(c.config_path());
    let report = node.block_on(check(&options)).expect("the check runs");
    let text = report.render();
    assert!(report.all_traced(), "{text}");
    let checked: Vec<&str> = report
        .handlers
        .iter()
        .map(|h| h.handler.name.as_str())
        .collect();
    assert!(checked.contains(&"traced-runc"), "{text}");
    // Registered in either form (the name form through the wrapper's config).
    assert!(checked.contains(&"traced-runsc"), "{text}");
    assert!(node
        .block_on(node.cri().has_image(&workload_image()))
        .unwrap());
    for handler in &report.handlers {
        let Verdict::Traced { proxies, .. } = handler.verdict else {
            unreachable!()
        };
        assert_eq!(proxies, 1, "{text}");
    }
    let left = node.await_no_processes(SPANS);
    assert!(left.is_empty(), "the check's pods left processes: {left:?}");
}

/// A config that makes CRI load and trace, written by install over `base`; the default runtime
/// still runs pods, untraced.
fn install_over(version: &str, base: BaseConfig) {
    install_over_with(version, base, Vec::new(), |_| {});
}

/// [`install_over`] with more `install_args`, and `check` of the node once containerd runs on
/// what install wrote.
fn install_over_with(
    version: &str,
    base: BaseConfig,
    install_args: Vec<String>,
    check: impl FnOnce(&CriNode),
) {
    let node = CriNode::start(
        version,
        CriOptions {
            base,
            install_args,
            ..Default::default()
        },
    )
    .expect("containerd starts on the config install wrote");
    check(&node);
    traces_then_uninstalls(node, version);
}

/// What every install test checks once containerd runs on what install wrote: CRI loaded, a pod
/// under `traced-runc` traces and one under the default runtime does not, nothing is left after
/// them, and uninstall gives back exactly the config install started from, which CRI loads
/// without the traced handlers.
fn traces_then_uninstalls(node: CriNode, version: &str) {
    let cri_plugin = if version.starts_with("1.") {
        ("io.containerd.grpc.v1", "cri")
    } else {
        ("io.containerd.cri.v1", "runtime")
    };
    assert_eq!(
        node.plugin_status(cri_plugin.0, cri_plugin.1).as_deref(),
        Some("ok"),
        "CRI loaded; config:\n{}",
        node.config_text
    );
    let (name, reported) = node.block_on(node.cri().version()).unwrap();
    assert_eq!(name, "containerd");
    assert!(reported.contains(version), "{reported}");

    let traced = node
        .run_pod(
            &pod("traced", version, "traced-runc"),
            &[container("quits", &["/bin/sh", "-c", "exit 3"])],
        )
        .expect("a pod under traced-runc");
    let plain = node
        .run_pod(
            &pod("plain", version, ""),
            &[container("quits", &["/bin/sh", "-c", "exit 4"])],
        )
        .expect("a pod under the default runtime");
    let cri = node.cri();
    let traced_exit = node
        .block_on(cri.wait_exited(&traced.containers[0], EXIT))
        .unwrap();
    assert_eq!(traced_exit.exit_code, 3);
    let plain_exit = node
        .block_on(cri.wait_exited(&plain.containers[0], EXIT))
        .unwrap();
    assert_eq!(plain_exit.exit_code, 4);
    let plain_socket = socket_of(&node.shim_address(plain.id()).unwrap());
    assert!(
        node.proxies_on(&plain_socket).is_empty(),
        "the default runtime is not wrapped"
    );
    for id in [traced.id(), &traced.containers[0]] {
        node.await_spans(id, SPANS, |s| {
            has_method(s, "Create") && has_method(s, "Start")
        });
    }
    for id in [plain.id(), &plain.containers[0]] {
        assert!(
            node.spans_of(id).is_empty(),
            "no spans for the default runtime's {id}"
        );
    }
    node.remove_pod(traced.id()).unwrap();
    node.remove_pod(plain.id()).unwrap();
    let left = node.await_no_processes(SPANS);
    assert!(left.is_empty(), "processes left: {left:?}");

    let mut node = node;
    let config = node.traced.containerd.config_path();
    let args: InstallArgs = parse_args(&["--uninstall", "--config", config.to_str().unwrap()]);
    uninstall(&args).expect("uninstall");
    assert_eq!(
        std::fs::read_to_string(&config).unwrap(),
        node.config_before_install
    );
    for link in &node.install.as_ref().unwrap().created_links {
        assert!(
            std::fs::symlink_metadata(link).is_err(),
            "{} removed",
            link.display()
        );
    }
    node.restart_containerd()
        .expect("containerd restarts on the uninstalled config");
    assert_eq!(
        node.plugin_status(cri_plugin.0, cri_plugin.1).as_deref(),
        Some("ok")
    );
    let handlers = node
        .block_on(shimtrace_containerd::check::handlers(node.cri(), None))
        .unwrap();
    assert!(
        handlers.iter().all(|h| !h.name.starts_with("traced-")),
        "{handlers:?}"
    );
}

version_matrix! {
    a_pod_of_two_containers_is_traced_through_one_proxy => traced_pod();
    a_gvisor_pod_is_traced_where_registered => gvisor_pod();
    containerd_restart_with_a_running_pod_leaks_nothing => containerd_restart();
    a_killed_inner_shim_leaks_nothing => inner_shim_killed();
    install_check_finds_every_handler_traced => check_passes();
    install_over_debians_stock_config =>
        install_over(BaseConfig::Text(DEBIAN_STOCK_CONFIG.into()));
    install_over_containerd_config_default => install_over(BaseConfig::ContainerdDefault);
}

/// The drop-in form install writes for containerd 2.2 and later (asked for with
/// `--containerd-version 2.2.0` on the newest of the matrix, a 2.x that reads `imports` and schema 3
/// as 2.2 does): containerd
/// loads the drop-in, the traced handlers carry the main config's runc options, pods trace, and
/// uninstall gives the main config back byte for byte.
#[test]
fn the_drop_in_form_loads_and_carries_the_main_configs_runc_options() {
    drop_in_form_over(
        "version = 3\n\
        [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]\n\
        runtime_type = 'io.containerd.runc.v2'\n\
        [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]\n\
        NoNewKeyring = true\n",
    );
}

/// The same over a schema-2 main config (Debian's, kept through containerd upgrades): the
/// drop-in is in its schema, or containerd, which merges the files before migrating them, would
/// leave the main config's CRI section unread (runc's options among it).
#[test]
fn the_drop_in_form_over_a_schema_2_config_keeps_its_cri_settings() {
    drop_in_form_over(
        "version = 2\n\
        [plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.runc]\n\
        runtime_type = \"io.containerd.runc.v2\"\n\
        [plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.runc.options]\n\
        NoNewKeyring = true\n",
    );
}

fn drop_in_form_over(base: &str) {
    let matrix = shimtrace_testkit::containerd::MATRIX;
    let version = matrix[matrix.len() - 1];
    assert!(version.starts_with("2."), "{version}");
    install_over_with(
        version,
        BaseConfig::Text(base.into()),
        vec!["--containerd-version".into(), "2.2.0".into()],
        |node| {
            let config = node.traced.containerd.config_path();
            let drop_in = config.parent().unwrap().join("conf.d/shimtrace.toml");
            assert!(
                node.config_text.contains(&drop_in.display().to_string()),
                "the main config imports the drop-in:\n{}",
                node.config_text
            );
            assert!(
                !node.config_text.contains("traced-runc"),
                "the entries are in the drop-in:\n{}",
                node.config_text
            );
            let info = node.block_on(node.cri().status_info()).unwrap();
            let config: serde_json::Value = serde_json::from_str(&info["config"]).unwrap();
            let runtimes = &config["containerd"]["runtimes"];
            for handler in ["traced-runc", "runc"] {
                assert_eq!(
                    runtimes[handler]["options"]["NoNewKeyring"],
                    serde_json::Value::Bool(true),
                    "{handler}: {runtimes}"
                );
            }
        },
    );
}

/// An install for containerd 2.1 (its entries in the main config), then one for 2.2 after an
/// upgrade (asked for with `--containerd-version 2.2.0`, on the newest of the matrix as above):
/// install's tables move out of the main config into the drop-in, containerd restarted on the
/// result loads each traced handler once, as the drop-in defines it, pods trace, and uninstall
/// gives the main config back byte for byte.
#[test]
fn an_upgrade_to_the_drop_in_form_moves_the_entries_out_of_the_main_config() {
    let base = "version = 3\n\
        [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]\n\
        runtime_type = 'io.containerd.runc.v2'\n\
        [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]\n\
        NoNewKeyring = true\n";
    let matrix = shimtrace_testkit::containerd::MATRIX;
    let version = matrix[matrix.len() - 1];
    assert!(version.starts_with("2."), "{version}");
    let mut node = CriNode::start(
        version,
        CriOptions {
            base: BaseConfig::Text(base.into()),
            ..Default::default()
        },
    )
    .expect("containerd starts on the config install wrote");
    let config = node.traced.containerd.config_path();
    let drop_in = config.parent().unwrap().join("conf.d/shimtrace.toml");
    let first = node.install.clone().unwrap();
    assert_eq!(first.written.as_deref(), Some(config.as_path()));
    let mut handlers: Vec<String> = first.runtimes.iter().map(|r| r.handler.clone()).collect();
    handlers.sort();
    assert!(
        handlers.contains(&"traced-runc".to_string()),
        "{handlers:?}"
    );
    let traced_in = |text: &str| -> Vec<String> {
        let mut found: Vec<String> = configured_handlers(text)
            .into_iter()
            .map(|(name, _, _)| name)
            .filter(|name| name.starts_with("traced-"))
            .collect();
        found.sort();
        found
    };
    assert_eq!(
        traced_in(&node.config_text),
        handlers,
        "{}",
        node.config_text
    );

    // containerd is now 2.2: install runs again as it ran, for that version.
    let mut args = node.install_args.clone();
    args.extend(["--containerd-version".to_string(), "2.2.0".to_string()]);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let upgraded = install(&parse_args::<InstallArgs>(&refs)).expect("install after the upgrade");
    let mut moved: Vec<String> = upgraded
        .moved
        .iter()
        .map(|p| p.last().unwrap().clone())
        .collect();
    moved.sort();
    assert_eq!(moved, handlers, "{}", upgraded.report);
    assert!(upgraded.backup.is_some(), "{}", upgraded.report);
    let main = std::fs::read_to_string(&config).unwrap();
    assert!(traced_in(&main).is_empty(), "{main}");
    assert!(
        main.contains(&drop_in.display().to_string()),
        "the main config imports the drop-in:\n{main}"
    );
    assert_eq!(
        traced_in(&std::fs::read_to_string(&drop_in).unwrap()),
        handlers
    );

    node.restart_containerd()
        .expect("containerd restarts on what install wrote after the upgrade");
    node.config_text = main;
    let loaded = node
        .block_on(shimtrace_containerd::check::handlers(node.cri(), None))
        .unwrap();
    let traced: Vec<_> = loaded
        .iter()
        .filter(|h| h.name.starts_with("traced-"))
        .collect();
    assert_eq!(
        traced.iter().map(|h| h.name.clone()).collect::<Vec<_>>(),
        handlers,
        "{loaded:?}"
    );
    for handler in &traced {
        let planned = upgraded
            .runtimes
            .iter()
            .find(|r| r.handler == handler.name)
            .unwrap();
        assert_eq!(
            Some(Path::new(&handler.runtime_path)),
            planned.runtime_path.as_deref(),
            "{handler:?}"
        );
    }
    let info = node.block_on(node.cri().status_info()).unwrap();
    let status: serde_json::Value = serde_json::from_str(&info["config"]).unwrap();
    assert_eq!(
        status["containerd"]["runtimes"]["traced-runc"]["options"]["NoNewKeyring"],
        serde_json::Value::Bool(true),
        "the drop-in carries the main config's runc options: {status}"
    );
    traces_then_uninstalls(node, version);
    assert!(!drop_in.exists());
}

/// The `runtime_path` form on 1.6.20 runs pods untraced; `shimtrace install --check` says so and
/// why, and fails.
#[test]
fn install_check_flags_runtime_path_on_1_6() {
    let node = CriNode::start(
        "1.6.20",
        CriOptions {
            install_args: vec!["--form".into(), "path".into()],
            ..Default::default()
        },
    )
    .expect("CRI node");
    let install = node.install.as_ref().unwrap();
    assert!(
        install.report.contains("ignores runtime_path"),
        "install warns: {}",
        install.report
    );
    let c = &node.traced.containerd;
    let output = std::process::Command::new(built_binary("shimtrace"))
        .args(["install", "--check", "--socket"])
        .arg(c.address())
        .arg("--spool")
        .arg(&node.traced.spool)
        .arg("--ctr")
        .arg(c.version().ctr())
        .arg("--config")
        .arg(c.config_path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success(),
        "the check fails: {stdout}{stderr}"
    );
    assert!(
        stdout.contains("traced-runc: NOT traced")
            && stdout.contains(
                "pod ran but no spans: containerd 1.6.20 ignores runtime_path; use the runtime-name form: shimtrace install --write"
            ),
        "{stdout}{stderr}"
    );
    assert!(
        stderr.contains("traced-runc"),
        "the error names the handler: {stderr}"
    );
}

/// On 2.1.9 the kubelet's `traceparent` on its CRI calls is the trace of the shim calls each one
/// makes: RunPodSandbox's Create/Start of the sandbox, StartContainer's Create/Start of the
/// container (CreateContainer only records the container; the task is made when it starts).
#[test]
fn a_client_traceparent_is_the_trace_of_create_and_start_v2_1() {
    use shimtrace_testkit::otlp::otlp_http_receiver;
    let (_otlp, receiver) = otlp_http_receiver();
    let mut options = CriOptions::default();
    options.traced.extra = Options::default().otlp(&receiver.endpoint());
    let node = CriNode::start("2.1.9", options).expect("CRI node with OTLP");
    let cri = node.cri();
    let run_tp = "00-5b8aa5a2d2c872e8321cf37308d69df2-051581bf3cb55c13-01";
    let create_tp = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let start_tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let with = |tp: &str| cri.clone().with_traceparent(tp).unwrap();
    let sandbox = node
        .block_on(with(run_tp).run_pod(&pod("tp", "2.1.9", "traced-runc")))
        .unwrap();
    let id = node
        .block_on(with(create_tp).create_container(&sandbox, &container("quits", &["/bin/true"])))
        .unwrap();
    node.block_on(with(start_tp).start_container(&id)).unwrap();
    let done = node.block_on(cri.wait_exited(&id, EXIT)).unwrap();
    assert_eq!(done.exit_code, 0);
    let trace_of = |tp: &str| TraceContext::from_traceparent(tp).unwrap().trace_id;
    let sandbox_spans = node.await_spans(&sandbox.id, SPANS, |s| {
        has_method(s, "Create") && has_method(s, "Start")
    });
    let spans = node.await_spans(&id, SPANS, |s| {
        has_method(s, "Create") && has_method(s, "Start")
    });
    for method in ["Create", "Start"] {
        assert_eq!(
            span(&sandbox_spans, method).trace_id,
            trace_of(run_tp),
            "sandbox {method}"
        );
        assert_eq!(
            span(&spans, method).trace_id,
            trace_of(start_tp),
            "container {method}"
        );
    }
    assert!(
        !spans
            .iter()
            .chain(&sandbox_spans)
            .any(|s| s.trace_id == trace_of(create_tp)),
        "CreateContainer calls no shim"
    );
    node.remove_pod(&sandbox.id).unwrap();
}
