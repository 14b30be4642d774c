//! The wrapper shim in front of the real runc shim, under real containerd (every matrix version):
//! run and exit codes, task operations, grouping, containerd restart, inner shim death, fail-open,
//! an upgrade during a start; and, playing containerd itself, where events go when no proxy can
//! start.

use std::time::Duration;

use shimtrace_span::{attr, names, SpanRecord};
use shimtrace_testkit::containerd::TestContainerd;
use shimtrace_testkit::traced::{
    alive, assert_runtime, has_method, is_method, pids_with_cmdline, runc_shim, wait_for,
    wrapper_binary, wrapper_config_for, write_executable, Spooled, Traced, TracedOptions,
    TRACED_RUNC,
};

const SPANS: Duration = Duration::from_secs(10);

fn span<'a>(spans: &'a [SpanRecord], method: &str) -> &'a SpanRecord {
    spans
        .iter()
        .find(|s| is_method(s, method))
        .unwrap_or_else(|| panic!("no {method} span"))
}

/// Container `id`'s spans once they hold a `method` call and the wrapper's `start`, and that
/// `start` span.
fn spans_with_start(traced: &Traced, id: &str, method: &str) -> (Vec<SpanRecord>, SpanRecord) {
    let spans = traced.await_spans(id, SPANS, |s| {
        has_method(s, method) && s.iter().any(|x| x.name == names::WRAPPER_START)
    });
    let start = spans
        .iter()
        .find(|s| s.name == names::WRAPPER_START)
        .unwrap()
        .clone();
    (spans, start)
}

/// The attributes every proxied call carries.
fn assert_call_attributes(traced: &Traced, span: &SpanRecord, id: &str) {
    assert_eq!(span.attr_str(attr::RPC_SYSTEM), Some("ttrpc"), "{span:?}");
    assert!(span
        .attr_str(attr::RPC_SERVICE)
        .is_some_and(|s| s.starts_with("containerd.task.v")));
    assert!(span.attr_str(attr::RPC_METHOD).is_some());
    assert_eq!(
        span.attr_i64(attr::RPC_TTRPC_STATUS_CODE),
        Some(0),
        "{span:?}"
    );
    assert_eq!(
        span.attr_str(attr::CONTAINERD_NAMESPACE),
        Some(traced.containerd.namespace())
    );
    assert_eq!(span.container_id(), Some(id));
    assert!(span
        .attr_str(attr::INNER)
        .is_some_and(|s| s.ends_with("containerd-shim-runc-v2")));
    assert!(span.attr_str(attr::PROTOCOL).is_some());
    assert!(span.end_time_unix_nano >= span.start_time_unix_nano);
}

fn run_exit_codes(version: &str) {
    let traced = Traced::start(version).expect("traced containerd");
    traced.run_echo("hello", "hello");
    let out = traced
        .containerd
        .run_rm(
            "three",
            &traced.runtime_flags(),
            &["/bin/sh", "-c", "exit 3"],
        )
        .unwrap();
    assert_eq!(out.code(), Some(3), "{out:?}");

    let (spans, start) = spans_with_start(&traced, "three", "Delete");
    assert!(
        spans.iter().all(|s| s.trace_id == start.trace_id),
        "one trace"
    );
    for method in ["Create", "Start", "Wait", "Delete"] {
        let call = span(&spans, method);
        assert_call_attributes(&traced, call, "three");
        assert_eq!(call.parent_span_id, Some(start.span_id));
    }
    assert_eq!(
        span(&spans, "Wait").attr_i64(attr::PROCESS_EXIT_CODE),
        Some(3)
    );
    // Who ran it, on every span (the wrapper's, the calls, the events): runc, by the shim's name
    // (ctr sent no BinaryName), and no pod.
    for s in &spans {
        assert_runtime(s, "runc", "shim");
        assert_eq!(s.attr_str(attr::K8S_POD_NAME), None, "{s:?}");
    }
    assert!(span(&spans, "Create").attr_i64(attr::PROCESS_PID).unwrap() > 0);
    let protocol = start.attr_str(attr::PROTOCOL).unwrap();
    let service = span(&spans, "Create").attr_str(attr::RPC_SERVICE).unwrap();
    // The wrapper echoes the inner shim's protocol version and containerd follows it.
    assert!(
        (protocol.ends_with("/v2") && service == "containerd.task.v2.Task")
            || (protocol.ends_with("/v3") && service == "containerd.task.v3.Task"),
        "{protocol} vs {service}"
    );
}

fn task_operations(version: &str) {
    let traced = Traced::start(version).expect("traced containerd");
    let c = &traced.containerd;
    traced.run_sleeper("ops", &[]);
    let exec = c
        .ctr_ok(&[
            "task",
            "exec",
            "--exec-id",
            "e1",
            "ops",
            "/bin/echo",
            "from-exec",
        ])
        .unwrap();
    assert_eq!(exec.stdout.trim(), "from-exec");
    let ps = c.ctr_ok(&["task", "ps", "ops"]).unwrap();
    assert!(ps.stdout.lines().count() >= 2, "{ps:?}");
    c.ctr_ok(&["task", "pause", "ops"]).unwrap();
    assert!(c.ctr_ok(&["task", "ls"]).unwrap().stdout.contains("PAUSED"));
    c.ctr_ok(&["task", "resume", "ops"]).unwrap();
    kill_and_delete(c, "ops");

    let spans = traced.await_spans("ops", SPANS, |s| {
        ["Exec", "Pids", "Pause", "Resume", "Kill", "Delete"]
            .iter()
            .all(|m| has_method(s, m))
    });
    for method in ["Exec", "Pids", "Pause", "Resume", "Kill", "Delete"] {
        assert_call_attributes(&traced, span(&spans, method), "ops");
    }
    let exec_span = span(&spans, "Exec");
    assert_eq!(exec_span.attr_str(attr::CONTAINERD_EXEC_ID), Some("e1"));
    assert_eq!(span(&spans, "Kill").attr_i64(attr::SIGNAL), Some(9));
    let exec_wait = spans
        .iter()
        .find(|s| is_method(s, "Wait") && s.attr_str(attr::CONTAINERD_EXEC_ID) == Some("e1"))
        .expect("exec Wait span");
    assert_eq!(exec_wait.attr_i64(attr::PROCESS_EXIT_CODE), Some(0));
    let init_delete = spans
        .iter()
        .find(|s| is_method(s, "Delete") && s.attr_str(attr::CONTAINERD_EXEC_ID).is_none())
        .expect("task Delete span");
    assert_eq!(init_delete.attr_i64(attr::PROCESS_EXIT_CODE), Some(137));
}

/// SIGKILLs task `id`, then deletes it once the kill has landed (ctr refuses to delete a running
/// task).
fn kill_and_delete(c: &TestContainerd, id: &str) {
    c.ctr_ok(&["task", "kill", "-s", "SIGKILL", id]).unwrap();
    let deleted = wait_for(SPANS, || {
        c.ctr(&["task", "delete", id]).ok().filter(|o| o.success())
    });
    assert!(deleted.is_some(), "task {id} deleted after SIGKILL");
}

fn address_of(traced: &Traced, id: &str) -> String {
    std::fs::read_to_string(traced.containerd.bundle_dir(id).join("address"))
        .or_else(|_| {
            // containerd 2.x keeps the shim address in bootstrap.json instead.
            std::fs::read_to_string(traced.containerd.bundle_dir(id).join("bootstrap.json")).map(
                |j| {
                    serde_json::from_str::<serde_json::Value>(&j).unwrap()["address"]
                        .as_str()
                        .unwrap()
                        .to_string()
                },
            )
        })
        .unwrap()
        .trim()
        .to_string()
}

fn grouping(version: &str) {
    let traced = Traced::start(version).expect("traced containerd");
    let c = &traced.containerd;
    for id in ["ga", "gb"] {
        traced.run_sleeper(id, &["--annotation", "io.containerd.runc.v2.group=g1"]);
    }
    let (a, b) = (address_of(&traced, "ga"), address_of(&traced, "gb"));
    assert_eq!(a, b, "both containers reach one proxy");
    let proxy_socket = a.trim_start_matches("unix://").to_string();
    let proxies = pids_with_cmdline(&["proxy", "--socket", &proxy_socket]);
    assert_eq!(proxies.len(), 1, "one proxy: {proxies:?}");
    let inner_shims = pids_with_cmdline(&[
        "containerd-shim-runc-v2",
        "-address",
        c.address().to_str().unwrap(),
    ]);
    assert_eq!(inner_shims.len(), 1, "one inner shim: {inner_shims:?}");
    for id in ["ga", "gb"] {
        let spans = traced.await_spans(id, SPANS, |s| has_method(s, "Start"));
        assert_call_attributes(&traced, span(&spans, "Create"), id);
    }
}

fn containerd_restart(version: &str) {
    let mut traced = Traced::start(version).expect("traced containerd");
    for id in ["r1", "r2"] {
        traced.run_sleeper(id, &[]);
    }
    traced.containerd.restart().expect("containerd restarts");
    let restarted = shimtrace_span::clock::now_unix_nanos();
    let c = &traced.containerd;
    let tasks = c.ctr_ok(&["task", "ls"]).unwrap().stdout;
    assert!(tasks.contains("r1") && tasks.contains("r2"), "{tasks}");
    let exec = c
        .ctr_ok(&[
            "task",
            "exec",
            "--exec-id",
            "after",
            "r1",
            "/bin/echo",
            "reconnected",
        ])
        .unwrap();
    assert_eq!(exec.stdout.trim(), "reconnected");
    kill_and_delete(c, "r1");
    let spans = traced.await_spans("r1", SPANS, |s| {
        ["Exec", "Kill", "Delete"].iter().all(|m| {
            s.iter()
                .any(|x| is_method(x, m) && x.start_time_unix_nano > restarted)
        })
    });
    // They went through the proxy, after the restart.
    for method in ["Exec", "Kill", "Delete"] {
        let call = spans
            .iter()
            .find(|s| is_method(s, method) && s.start_time_unix_nano > restarted)
            .unwrap();
        assert_call_attributes(&traced, call, "r1");
        assert_eq!(call.attr_str(attr::CONTAINER_RUNTIME_NAME), Some("runc"));
    }
}

/// A pod as CRI lays it out, made with ctr: a sandbox and two containers carrying the annotations
/// containerd's CRI writes into `config.json` (the runc shim groups them by sandbox id, as under
/// CRI). Every span says which pod and which container; the collector puts the pod together.
fn pod_from_cri_annotations(version: &str) {
    fn as_str(flags: &[String]) -> Vec<&str> {
        flags.iter().map(String::as_str).collect()
    }
    let traced = Traced::start(version).expect("traced containerd");
    let c = &traced.containerd;
    let pod = |kind: &str, name: Option<&str>| {
        let mut flags: Vec<String> = [
            format!("io.kubernetes.cri.container-type={kind}"),
            "io.kubernetes.cri.sandbox-id=podsb".to_string(),
            "io.kubernetes.cri.sandbox-name=web-0".to_string(),
            "io.kubernetes.cri.sandbox-namespace=shop".to_string(),
            "io.kubernetes.cri.sandbox-uid=6d1c2f0e-uid".to_string(),
        ]
        .into_iter()
        .chain(name.map(|n| format!("io.kubernetes.cri.container-name={n}")))
        .flat_map(|a| ["--annotation".to_string(), a])
        .collect();
        flags.extend(traced.runtime_flags().map(str::to_string));
        flags
    };
    c.run_detached(
        "podsb",
        &as_str(&pod("sandbox", None)),
        &["/bin/sleep", "600"],
    )
    .expect("sandbox runs");
    for (id, name) in [("podc1", "app"), ("podc2", "sidecar")] {
        let out = c
            .run_rm(
                id,
                &as_str(&pod("container", Some(name))),
                &["/bin/echo", name],
            )
            .unwrap();
        assert!(out.success(), "{out:?}");
        assert_eq!(out.stdout.trim(), name);
    }
    let mut all = Vec::new();
    for (id, role, container) in [
        ("podsb", "sandbox", None),
        ("podc1", "container", Some("app")),
        ("podc2", "container", Some("sidecar")),
    ] {
        let spans = traced.await_spans(id, SPANS, |s| has_method(s, "Start"));
        for s in &spans {
            assert_eq!(s.attr_str(attr::K8S_POD_NAME), Some("web-0"), "{s:?}");
            assert_eq!(s.attr_str(attr::K8S_NAMESPACE_NAME), Some("shop"), "{s:?}");
            assert_eq!(s.attr_str(attr::K8S_POD_UID), Some("6d1c2f0e-uid"), "{s:?}");
            assert_eq!(s.attr_str(attr::K8S_SANDBOX_ID), Some("podsb"), "{s:?}");
            assert_eq!(s.attr_str(attr::K8S_ROLE), Some(role), "{s:?}");
            assert_eq!(s.attr_str(attr::K8S_CONTAINER_NAME), container, "{s:?}");
            assert_eq!(
                s.attr_str(attr::CONTAINER_RUNTIME_NAME),
                Some("runc"),
                "{s:?}"
            );
        }
        all.extend(spans);
    }
    // One proxy served the pod (the runc shim grouped it by sandbox id).
    let proxies: std::collections::BTreeSet<_> = all
        .iter()
        .filter(|s| is_method(s, "Create"))
        .map(|s| s.attr_i64(attr::RECORDER_PID))
        .collect();
    assert_eq!(proxies.len(), 1, "{proxies:?}");
    let traces = shimtrace_collector::trace::Trace::group(all);
    let pods = shimtrace_collector::pod::Pod::group(&traces);
    assert_eq!(pods.len(), 1);
    assert_eq!(pods[0].display_name(), "shop/web-0");
    let startup = pods[0].startup().expect("sandbox and both containers ran");
    assert_eq!(startup.containers, 2);
    assert!(
        startup.sandbox_ns > 0 && startup.containers_ns > 0,
        "{startup:?}"
    );
    // `shimtrace trace --pod` shows it as one tree: the sandbox, then each container.
    let out = shimtrace_testkit::cli::output_ok(
        shimtrace_testkit::cli::shimtrace()
            .args(["trace", "--pod", "shop/web-0", "--spool"])
            .arg(&traced.spool),
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.starts_with("pod shop/web-0  uid 6d1c2f0e-uid  sandbox podsb  runtime runc"),
        "{text}"
    );
    let at = |needle: &str| {
        text.find(needle)
            .unwrap_or_else(|| panic!("{needle} in {text}"))
    };
    assert!(at("sandbox podsb ") < at("container app (podc1)"));
    assert!(at("container app (podc1)") < at("container sidecar (podc2)"));
    kill_and_delete(c, "podsb");
}

fn inner_shim_killed(version: &str) {
    let traced = Traced::start(version).expect("traced containerd");
    let c = &traced.containerd;
    traced.run_sleeper("victim", &[]);
    let proxy_socket = address_of(&traced, "victim")
        .trim_start_matches("unix://")
        .to_string();
    let proxy = pids_with_cmdline(&["proxy", "--socket", &proxy_socket]);
    assert_eq!(proxy.len(), 1);
    let inner = pids_with_cmdline(&[
        "containerd-shim-runc-v2",
        "-id",
        "victim",
        "-address",
        c.address().to_str().unwrap(),
    ]);
    assert_eq!(inner.len(), 1, "inner shim {inner:?}");
    shimtrace_testkit::traced::sigkill(inner[0]).unwrap();
    let gone = wait_for(SPANS, || {
        (!alive(proxy[0]) && !std::path::Path::new(&proxy_socket).exists()).then_some(())
    });
    assert!(gone.is_some(), "proxy exits and removes its socket");
    let strays = wait_for(SPANS, || {
        pids_with_cmdline(&["proxy", "--socket", &proxy_socket])
            .is_empty()
            .then_some(())
    });
    assert!(strays.is_some(), "no stray proxy");
}

fn fail_open_unwritable_spool(version: &str) {
    let blocker = tempfile::NamedTempFile::new().unwrap();
    let traced = Traced::start_with(
        version,
        TracedOptions {
            spool: Some(blocker.path().join("spool")),
            ..Default::default()
        },
    )
    .expect("traced containerd");
    traced.run_echo("open", "still runs");
}

/// `ctr events` running in the background, collecting its lines.
struct EventWatch {
    child: std::process::Child,
    lines: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl EventWatch {
    fn start(traced: &Traced) -> EventWatch {
        use std::io::BufRead;
        let c = &traced.containerd;
        let mut child = std::process::Command::new(c.version().ctr())
            .args(["--address", c.address().to_str().unwrap(), "events"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let stdout = child.stdout.take().unwrap();
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                sink.lock().unwrap().push(line);
            }
        });
        let watch = EventWatch { child, lines };
        // The subscription is live once it reports an event we cause.
        let marker = format!("probe-{}", std::process::id());
        let seen = wait_for(SPANS, || {
            let _ = c.ctr(&["namespaces", "create", &marker]);
            let _ = c.ctr(&["namespaces", "remove", &marker]);
            watch
                .lines()
                .iter()
                .any(|l| l.contains(&marker))
                .then_some(())
        });
        assert!(seen.is_some(), "ctr events never subscribed");
        watch
    }

    fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }

    /// How many `topic` events name container `id`.
    fn count(&self, topic: &str, id: &str) -> usize {
        let needle = format!("\"container_id\":\"{id}\"");
        self.lines()
            .iter()
            .filter(|l| l.split_whitespace().any(|w| w == topic) && l.contains(&needle))
            .count()
    }
}

impl Drop for EventWatch {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const TASK_TOPICS: [&str; 4] = [
    "/tasks/create",
    "/tasks/start",
    "/tasks/exit",
    "/tasks/delete",
];

fn events_once_and_traced(version: &str) {
    let traced = Traced::start(version).expect("traced containerd");
    let watch = EventWatch::start(&traced);
    let out = traced
        .containerd
        .run_rm("evt", &traced.runtime_flags(), &["/bin/sh", "-c", "exit 4"])
        .unwrap();
    assert_eq!(out.code(), Some(4), "{out:?}");
    // Every event the inner shim published is in the spool once its proxy has exited.
    let shutdown = traced.await_spans("evt", SPANS, |s| s.iter().any(|x| is_method(x, "Shutdown")));
    let proxy = shutdown
        .iter()
        .find(|s| is_method(s, "Shutdown"))
        .and_then(|s| s.attr_i64(attr::RECORDER_PID))
        .expect("the proxy's Shutdown span names the proxy");
    assert!(
        wait_for(SPANS, || (!alive(proxy as u32)).then_some(())).is_some(),
        "the proxy {proxy} outlived its inner shim"
    );
    let spans = traced.spans_of("evt");
    let published = |topic: &str| {
        spans
            .iter()
            .any(|s| s.events.iter().any(|e| e.name == topic))
    };
    // The runc shim publishes `/tasks/delete` while containerd already shuts it down, and on
    // containerd 2.1.9 it exits before publishing in about one `ctr run --rm` in five, with or
    // without shimtrace (the plain io.containerd.runc.v2 runtime does the same).
    // What the proxy owes is that every event the inner shim did publish reaches containerd once.
    for topic in TASK_TOPICS {
        if topic != "/tasks/delete" {
            assert!(published(topic), "{topic} was published: {spans:?}");
        }
        if !published(topic) {
            assert_eq!(watch.count(topic, "evt"), 0, "{:?}", watch.lines());
            continue;
        }
        let delivered = wait_for(SPANS, || (watch.count(topic, "evt") > 0).then_some(()));
        assert!(
            delivered.is_some(),
            "{topic} never reached containerd: {:?}",
            watch.lines()
        );
        assert_eq!(
            watch.count(topic, "evt"),
            1,
            "{topic} exactly once: {:?}",
            watch.lines()
        );
    }
    let root = spans
        .iter()
        .find(|s| s.name == names::WRAPPER_START)
        .expect("shim.start");
    for topic in TASK_TOPICS.into_iter().filter(|t| published(t)) {
        let event_span = spans
            .iter()
            .find(|s| s.events.iter().any(|e| e.name == topic))
            .unwrap();
        assert_eq!(
            event_span.trace_id, root.trace_id,
            "{topic} in the container's trace"
        );
        assert_eq!(event_span.parent_span_id, Some(root.span_id));
        assert!(event_span.events[0].time_unix_nano > 0);
    }
    let exit = spans
        .iter()
        .find(|s| s.events.iter().any(|e| e.name == "/tasks/exit"))
        .unwrap();
    assert_eq!(exit.attr_i64(attr::PROCESS_EXIT_CODE), Some(4));
}

/// shimtrace upgraded while a container starts, the way a package manager does it (a new file
/// renamed over the old one): the proxy in front of the container is the binary that wrapped it
/// (it takes that wrapper's flags and descriptors), its calls are traced and its events reach
/// containerd once.
fn wrapper_replaced_while_it_starts(version: &str) {
    use std::os::unix::fs::MetadataExt;
    let traced = Traced::start(version).expect("traced containerd");
    let c = &traced.containerd;
    // A file of the test's own to replace, not the link to the build's binary.
    let wrapper = traced.bin_dir.join(runc_shim().traced_binary());
    std::fs::remove_file(&wrapper).unwrap();
    std::fs::copy(wrapper_binary(), &wrapper).unwrap();
    let installed = std::fs::metadata(&wrapper).unwrap().ino();
    // The inner shim's `start` runs while the wrapper waits for it: the upgrade lands then.
    let inner = c.dir().join("upgrade-then-runc-shim");
    write_executable(
        &inner,
        &format!(
            "#!/bin/sh\n\
             case \" $* \" in *\" start \"*) cp {w} {w}.new && mv -f {w}.new {w} ;; esac\n\
             exec {runc} \"$@\"\n",
            w = wrapper.display(),
            runc = c.version().runc_shim().display()
        ),
    );
    std::fs::write(
        &traced.wrapper_config,
        wrapper_config_for(&TRACED_RUNC, &inner),
    )
    .unwrap();
    let watch = EventWatch::start(&traced);
    traced.run_sleeper("upgraded", &[]);
    assert_ne!(
        std::fs::metadata(&wrapper).unwrap().ino(),
        installed,
        "the wrapper's file was replaced during the start"
    );
    let proxy_socket = address_of(&traced, "upgraded")
        .trim_start_matches("unix://")
        .to_string();
    let proxy = pids_with_cmdline(&["proxy", "--socket", &proxy_socket]);
    assert_eq!(proxy.len(), 1, "one proxy serves {proxy_socket}: {proxy:?}");
    let proxy_binary = std::fs::metadata(format!("/proc/{}/exe", proxy[0])).unwrap();
    assert_eq!(
        proxy_binary.ino(),
        installed,
        "the proxy runs the binary that was installed when the container started"
    );
    kill_and_delete(c, "upgraded");
    let (spans, start) = spans_with_start(&traced, "upgraded", "Create");
    assert_eq!(start.status, shimtrace_span::SpanStatus::Ok, "{start:?}");
    assert!(has_method(&spans, "Start"), "{spans:?}");
    for topic in ["/tasks/create", "/tasks/start", "/tasks/exit"] {
        let delivered = wait_for(SPANS, || (watch.count(topic, "upgraded") > 0).then_some(()));
        assert!(delivered.is_some(), "{topic}: {:?}", watch.lines());
        assert_eq!(
            watch.count(topic, "upgraded"),
            1,
            "{topic}: {:?}",
            watch.lines()
        );
    }
}

version_matrix! {
    run_and_exit_codes => run_exit_codes();
    upgrade_during_a_start_keeps_the_proxy_of_the_wrappers_version => wrapper_replaced_while_it_starts();
    task_operations_are_traced => task_operations();
    grouped_containers_share_one_proxy => grouping();
    containerd_restart_reconnects_through_the_proxy => containerd_restart();
    inner_shim_killed_ends_the_proxy => inner_shim_killed();
    unwritable_spool_fails_open => fail_open_unwritable_spool();
    events_reach_containerd_once_and_the_trace => events_once_and_traced();
    pod_annotations_name_the_pod_on_every_span => pod_from_cri_annotations();
}

/// Runs the wrapper's `start` exactly as containerd does and checks that stdout carries nothing but
/// the protocol reply, in the inner shim's format, naming the proxy.
fn start_reply_is_exact(version: &str) {
    let traced = Traced::start(version).expect("traced containerd");
    let c = &traced.containerd;
    let bundle = tempfile::tempdir().unwrap();
    let id = format!("exact{}", version.replace('.', ""));
    let id = id.as_str();
    // The runc shim's start reads only the grouping annotations from the spec.
    std::fs::write(
        bundle.path().join("config.json"),
        r#"{"ociVersion":"1.0.2","annotations":{}}"#,
    )
    .unwrap();
    // Like containerd: the shim logs into a `log` FIFO in the bundle that containerd holds open.
    let fifo = bundle.path().join("log");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let _log_reader = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&fifo)
        .unwrap();
    let wrapper = c.dir().join("wrapper-bin");
    std::fs::create_dir_all(&wrapper).unwrap();
    let link = wrapper.join("containerd-shim-traced-runc-v2");
    std::os::unix::fs::symlink(wrapper_binary(), &link).unwrap();
    let path = format!(
        "{}:{}",
        c.version().bin_dir().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let output = std::process::Command::new(&link)
        .args([
            "-namespace",
            c.namespace(),
            "-address",
            c.address().to_str().unwrap(),
            "-publish-binary",
            c.version().containerd().to_str().unwrap(),
            "-id",
            id,
            "start",
        ])
        .current_dir(bundle.path())
        .env("PATH", path)
        .env("TTRPC_ADDRESS", c.ttrpc_address())
        .env(shimtrace_span::env::SPOOL_DIR, &traced.spool)
        .env(shimtrace_span::env::RUN_DIR, &traced.run_dir)
        // The harness's config, as containerd passes it: never the machine's.
        .env(shimtrace_span::env::CONFIG, &traced.wrapper_config)
        .env(shimtrace_testkit::containerd::INSTANCE_MARKER_ENV, c.dir())
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let inner = pids_with_cmdline(&[
        "containerd-shim-runc-v2",
        "-id",
        id,
        "-address",
        c.address().to_str().unwrap(),
    ]);
    // Kill the inner shim whatever happens below; its proxy follows it.
    let _cleanup = KillOnDrop(inner.clone());
    assert!(output.status.success(), "{output:?}");
    assert!(
        output.stderr.is_empty(),
        "stderr must stay empty: {output:?}"
    );
    let stdout = String::from_utf8(output.stdout).unwrap();
    let address = if version.starts_with("1.") {
        stdout.clone()
    } else {
        let reply: serde_json::Value = serde_json::from_str(&stdout).expect("JSON reply");
        assert_eq!(reply["version"], 3, "{stdout}");
        assert_eq!(reply["protocol"], "ttrpc", "{stdout}");
        assert_eq!(reply.as_object().unwrap().len(), 3, "{stdout}");
        reply["address"].as_str().unwrap().to_string()
    };
    let socket = address
        .strip_prefix("unix://")
        .unwrap_or_else(|| panic!("reply is exactly an address: {stdout:?}"));
    let name = std::path::Path::new(socket)
        .file_name()
        .unwrap()
        .to_str()
        .unwrap();
    assert!(
        name.len() == 64 && name.bytes().all(|b| b.is_ascii_hexdigit()),
        "{stdout:?}"
    );
    let proxies = pids_with_cmdline(&["proxy", "--socket", socket]);
    assert_eq!(proxies.len(), 1, "the reply names a live proxy");
    // containerd reads the bundle's address only after a restart, so the wrapper updates it after
    // exiting (off the start path): it must name the proxy shortly after.
    let address_file = bundle.path().join("address");
    // The 1.x runc shim writes it; 2.x shims do not (containerd keeps bootstrap.json instead).
    assert_eq!(
        address_file.exists(),
        version.starts_with("1."),
        "{version}: an address file in the bundle"
    );
    if address_file.exists() {
        let named = wait_for(Duration::from_secs(5), || {
            let file = std::fs::read_to_string(&address_file).ok()?;
            (file == address).then_some(())
        });
        assert!(
            named.is_some(),
            "the bundle's address names the proxy: {:?}",
            std::fs::read_to_string(&address_file)
        );
    }
}

struct KillOnDrop(Vec<u32>);
impl Drop for KillOnDrop {
    fn drop(&mut self) {
        for pid in &self.0 {
            let _ = shimtrace_testkit::traced::sigkill(*pid);
        }
    }
}

#[test]
fn start_reply_is_exact_v1_6() {
    start_reply_is_exact("1.6.20")
}
#[test]
fn start_reply_is_exact_v1_7() {
    start_reply_is_exact("1.7.24")
}
#[test]
fn start_reply_is_exact_v2_1() {
    start_reply_is_exact("2.1.9")
}

/// containerd 2.1.9 with OTLP tracing on: the wrapper's spans of containerd's calls join
/// containerd's trace (its `traceparent`), while still naming the container's own trace.
#[test]
fn shim_spans_join_containerds_trace_v2_1() {
    use shimtrace_testkit::containerd::Options;
    use shimtrace_testkit::otlp::otlp_http_receiver;
    let (_runtime, receiver) = otlp_http_receiver();
    let traced = Traced::start_with(
        "2.1.9",
        TracedOptions {
            extra: Options::default().otlp(&receiver.endpoint()),
            ..Default::default()
        },
    )
    .expect("traced containerd 2.1.9 with OTLP");
    let out = traced
        .containerd
        .run_rm("joined", &traced.runtime_flags(), &["/bin/true"])
        .unwrap();
    assert!(out.success(), "{out:?}");
    let (spans, root) = spans_with_start(&traced, "joined", "Create");
    let create = span(&spans, "Create");
    assert_ne!(
        create.trace_id, root.trace_id,
        "Create joined containerd's trace"
    );
    assert_eq!(
        create.attr_str(attr::CONTAINER_TRACE_ID),
        Some(root.trace_id.to_hex().as_str()),
        "and still names the container's trace"
    );
    let parent = create
        .parent_span_id
        .expect("containerd's client span is the parent");
    let (trace_id, parent_id) = (create.trace_id.to_hex(), parent.to_hex());
    assert!(
        receiver
            .received
            .wait_for_span(Duration::from_secs(15), |s| s.trace_id == trace_id),
        "containerd exported the trace {trace_id} that the shim span is in"
    );
    assert!(
        receiver
            .received
            .wait_for_span(Duration::from_secs(15), |s| s.span_id == parent_id),
        "containerd exported the parent span {parent_id}"
    );
}

/// When no proxy can be started for an inner shim (here its reply names a socket nothing serves),
/// the wrapper passes the reply on unchanged, and the events address the inner shim was given
/// leads to containerd's ttrpc socket: a publisher connecting there reaches containerd.
#[test]
fn events_reach_containerd_when_no_proxy_can_start() {
    use std::io::{Read, Write};
    use std::os::unix::net::{UnixListener, UnixStream};
    let dir = tempfile::tempdir().unwrap();
    // The test plays containerd: its ttrpc socket is where events belong.
    let containerd = dir.path().join("containerd.sock.ttrpc");
    let containerd_listener = UnixListener::bind(&containerd).unwrap();
    let given = dir.path().join("events-address");
    let unserved = format!("unix://{}", dir.path().join("gone.sock").display());
    let inner = dir.path().join("inner-shim");
    write_executable(
        &inner,
        &format!(
            "#!/bin/sh\nprintf %s \"$TTRPC_ADDRESS\" > {}\nprintf %s {unserved}\n",
            given.display()
        ),
    );
    let config = dir.path().join("config.toml");
    std::fs::write(&config, wrapper_config_for(&TRACED_RUNC, &inner)).unwrap();
    let bin = dir.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    let link = bin.join(runc_shim().traced_binary());
    std::os::unix::fs::symlink(wrapper_binary(), &link).unwrap();
    let bundle = dir.path().join("bundle");
    std::fs::create_dir(&bundle).unwrap();
    let run_dir = dir.path().join("run");
    let out = std::process::Command::new(&link)
        .args(["-namespace", "default", "-id", "unproxied", "start"])
        .current_dir(&bundle)
        .env("TTRPC_ADDRESS", &containerd)
        .env(shimtrace_span::env::CONFIG, &config)
        .env(shimtrace_span::env::SPOOL_DIR, dir.path().join("spool"))
        .env(shimtrace_span::env::RUN_DIR, &run_dir)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        unserved,
        "the inner shim's reply, unchanged"
    );

    let events_address = std::fs::read_to_string(&given).unwrap();
    assert!(
        events_address.starts_with(run_dir.to_str().unwrap()),
        "the inner shim was told to publish to the wrapper's socket: {events_address}"
    );
    assert_eq!(
        std::fs::read_link(&events_address).ok(),
        Some(containerd.clone()),
        "the events address is a link to containerd's socket"
    );
    let mut publisher = UnixStream::connect(&events_address)
        .unwrap_or_else(|e| panic!("the events address {events_address} leads nowhere: {e}"));
    publisher.write_all(b"event").unwrap();
    let (mut received, _) = containerd_listener.accept().unwrap();
    let mut bytes = [0u8; 5];
    received.read_exact(&mut bytes).unwrap();
    assert_eq!(&bytes, b"event");
}
