//! `shimtrace lab --cri --runs 2` end to end, on the newest unpacked containerd (the
//! `runtime_path` form) and on the system's 1.6.20 (the runtime-name form, gVisor through the
//! lab's own wrapper config): runc and gVisor as RuntimeClass handlers registered by
//! `shimtrace install` in the lab's private CRI containerd; the report has a pod-startup row per
//! handler (sandbox and container parts), every run's sandbox and container spans, the isolation
//! and served-latency sections; and once the lab has returned, nothing of its containerd is left
//! (processes, proxies, shim sockets, its directory), and the machine's wrapper config is as it was.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use crate::element_where;
use crate::lab_report::{number, table_row};
use serde_json::Value;
use shimtrace_containerd::check::{proxies_for, shim_socket};
use shimtrace_containerd::install::{Form, DEFAULT_WRAPPER_CONFIG};
use shimtrace_containerd::private::ContainerdBinary;
use shimtrace_testkit::cli::shimtrace;
use shimtrace_testkit::lab::{LabRun, LAB_DEADLINE};
use shimtrace_testkit::traced::wait_for;

const GONE: Duration = Duration::from_secs(20);
/// Served-latency requests per profile.
const REQUESTS: usize = 20;

/// One lab at a time. Under CPU load gVisor's busybox httpd breaks some connections (seen: 5-10%
/// of 500 requests with one lab on a busy 2-core machine, on 1.6.20 and 2.1.9 alike, none under
/// runc), which the report counts as failed requests; two labs at once, two gVisor sandboxes
/// serving, made that far likelier.
pub(crate) static ONE_LAB: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Live processes whose command line mentions `needle` or whose environment holds `env`.
fn processes_with(needle: &str, env: &str) -> Vec<(u32, String)> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|p| p.parse().ok()) else {
            continue;
        };
        let cmdline = std::fs::read(entry.path().join("cmdline"))
            .map(|raw| String::from_utf8_lossy(&raw).replace('\0', " "))
            .unwrap_or_default();
        let environ = std::fs::read(entry.path().join("environ")).unwrap_or_default();
        let in_env = environ.split(|b| *b == 0).any(|var| var == env.as_bytes());
        if cmdline.contains(needle) || in_env {
            found.push((pid, cmdline));
        }
    }
    found
}

#[test]
fn lab_runs_runc_and_gvisor_as_runtime_class_handlers() {
    let version = lab_cri_runs_runc_and_gvisor(None);
    let (major, minor) = {
        let mut parts = version.split('.').map(|p| p.parse::<u32>().unwrap());
        (parts.next().unwrap(), parts.next().unwrap())
    };
    assert!((major, minor) >= (1, 7), "CRI lab on containerd {version}");
}

/// Debian bookworm's containerd (1.6.20), whose CRI ignores `runtime_path`: the lab registers the
/// handlers by runtime name, gVisor through its own wrapper config.
#[test]
fn lab_runs_runc_and_gvisor_on_the_system_containerd() {
    let system = Path::new("/usr/bin/containerd");
    let binary = ContainerdBinary::probe(system).expect("the system containerd (Debian's 1.6.20)");
    let version = lab_cri_runs_runc_and_gvisor(Some(system));
    assert_eq!(version, binary.version());
}

/// Runs `shimtrace lab --cri` (on `containerd`, else the lab's choice), checks its report and that
/// nothing is left; returns the containerd version it ran on.
fn lab_cri_runs_runc_and_gvisor(containerd: Option<&Path>) -> String {
    // A failed run's panic poisons the lock; the next run still owns the machine alone.
    let _alone = ONE_LAB
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let machine_config = || std::fs::read(DEFAULT_WRAPPER_CONFIG).ok();
    let machine_config_before = machine_config();
    let mut lab = shimtrace();
    lab.args([
        "lab",
        "--cri",
        "--only",
        "runc,runsc",
        "--runs",
        "2",
        "--requests",
        &REQUESTS.to_string(),
        "--out",
        out.to_str().unwrap(),
    ]);
    if let Some(containerd) = containerd {
        lab.arg("--containerd").arg(containerd);
    }
    // Killed with its containerd, shims and containers, and its mounts undone, if it hangs or an
    // assertion fails.
    let mut lab = LabRun::spawn(
        lab.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
    );
    let run = lab.wait_within(LAB_DEADLINE);
    shimtrace_testkit::cli::assert_succeeded("shimtrace lab --cri", &run);

    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    for section in [
        "## Setup",
        "containerd CRI: containerd ",
        "## Cold start",
        "### Pod startup: sandbox and container",
        "### Phases (CRI calls",
        "### Shim spans",
        "## Isolation",
        "## Served latency",
        "## Recommendation",
    ] {
        assert!(md.contains(section), "report.md lacks {section}:\n{md}");
    }
    let json: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
    let setup = &json["setup"];
    let version = setup["containerd_version"].as_str().unwrap();
    if let Some(containerd) = containerd {
        assert_eq!(setup["cri"]["containerd"], containerd.display().to_string());
    }
    assert!(md.contains(&format!("containerd CRI: containerd {version} at")));
    let handlers = &setup["cri"]["handlers"];
    assert_eq!(handlers["runc"], "traced-runc", "{setup}");
    assert_eq!(handlers["runsc"], "traced-runsc", "{setup}");
    // The setup line says which form install wrote and, for the name form, what it costs; gVisor
    // then runs through the lab's own wrapper config.
    let form = setup["cri"]["form"].as_str().unwrap();
    let wrapper_config = out.join("work/shimtrace-config.toml");
    let wrapper_entries = std::fs::read_to_string(&wrapper_config).unwrap();
    match Form::for_version(version) {
        Form::Name => {
            assert!(form.starts_with("runtime-name form: "), "{form}");
            assert!(form.contains("costs: "), "{form}");
            assert!(
                wrapper_entries.contains("[runtimes.\"io.containerd.traced-runsc.v2\"]"),
                "{wrapper_entries}"
            );
            let runsc = profile_runtime(&json, "runsc");
            assert_eq!(runsc, "io.containerd.traced-runsc.v2", "{json}");
        }
        Form::Path => {
            assert!(form.starts_with("runtime_path form: "), "{form}");
            assert_eq!(wrapper_entries.trim(), "", "{}", wrapper_config.display());
        }
    }
    assert!(md.contains(&format!("shimtrace install` ({form})")), "{md}");

    // One pod-startup row per handler: runc and gVisor apart, the sandbox and container parts
    // adding up to no more than the whole.
    for (profile, handler) in [("runc", "traced-runc"), ("runsc", "traced-runsc")] {
        let row = table_row(&md, "### Pod startup: sandbox and container", profile);
        assert_eq!(row[1], format!("`{handler}`"), "{row:?}");
        let (sandbox, container, startup) = (number(&row[2]), number(&row[4]), number(&row[6]));
        assert!(sandbox > 0.0 && container > 0.0, "{row:?}");
        assert!(
            sandbox + container <= startup * 1.01 + 0.1,
            "parts {sandbox} + {container} exceed pod startup {startup}: {row:?}"
        );
        let cold = table_row(&md, "## Cold start", profile);
        assert_eq!(cold[1], "2/0", "{profile} pod starts: {cold:?}");
    }

    let profile = |name: &str| element_where(&json["profiles"], "name", name);
    let mut sandboxes = Vec::new();
    for name in ["runc", "runsc"] {
        let p = profile(name);
        assert_eq!(p["status"], "ok", "{p}");
        for run in p["runs"].as_array().unwrap() {
            assert_eq!(run["ok"], true, "{run}");
            let sandbox = run["sandbox_id"]
                .as_str()
                .expect("a sandbox id")
                .to_string();
            assert_ne!(run["id"].as_str(), Some(sandbox.as_str()));
            let spans: Vec<&String> = run["spans"].as_object().unwrap().keys().collect();
            for wanted in ["sandbox ", ""] {
                assert!(
                    spans.iter().any(|s| s.starts_with(wanted)
                        && s.ends_with("Task/Create")
                        && (!wanted.is_empty() || !s.starts_with("sandbox "))),
                    "{name}: no {wanted:?}Create span in {spans:?}"
                );
            }
            for phase in ["run_pod_sandbox", "create_container", "start_container"] {
                assert!(run["phases_ms"][phase].as_f64().unwrap() > 0.0, "{run}");
            }
            sandboxes.push(sandbox);
        }
        // Every request is either timed or counted as failed, as with the other engines; runc's
        // server never breaks one, gVisor's busybox httpd breaks a few (see ONE_LAB).
        let http = &p["http"];
        let served = http["samples_ms"].as_array().unwrap().len();
        let failed = http["errors"].as_u64().unwrap() as usize;
        assert_eq!(served + failed, REQUESTS, "{name} HTTP: {http}");
        if name == "runc" {
            assert_eq!(failed, 0, "{name} HTTP: {http}");
        }
        assert!(failed < served, "{name} HTTP: {http}");
        assert!(http["latency"]["p50"].as_f64().unwrap() > 0.0, "{http}");
    }

    // Isolation: gVisor's own kernel, runc the host's.
    let host_release = json["host_probe"]["kernel"]["release"].as_str().unwrap();
    let release = |name: &str| {
        profile(name)["probe"]["kernel"]["release"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert_eq!(release("runc"), host_release);
    assert_ne!(release("runsc"), host_release);
    let kernel_row = table_row(&md, "## Isolation", "Kernel release (uname -r)");
    assert!(kernel_row[3].contains("(differs)"), "{kernel_row:?}");

    // Nothing is left: no process of the lab's containerd (it, its shims, the proxies and the
    // containers all carry its spool in their environment or its directory in their arguments),
    // no proxy or socket of any pod, and its directory is gone.
    let address = PathBuf::from(setup["containerd_address"].as_str().unwrap());
    let containerd_dir = address.parent().and_then(Path::parent).unwrap();
    let spool_env = format!("SHIMTRACE_SPOOL_DIR={}", out.join("spool").display());
    let left = wait_for(GONE, || {
        let left = processes_with(&containerd_dir.display().to_string(), &spool_env);
        left.is_empty().then_some(())
    });
    assert!(
        left.is_some(),
        "processes left by the lab: {:?}",
        processes_with(&containerd_dir.display().to_string(), &spool_env)
    );
    for sandbox in &sandboxes {
        assert!(
            proxies_for(&address, sandbox).is_empty(),
            "proxy of {sandbox} left"
        );
        let socket = shim_socket(&address, sandbox);
        assert!(!socket.exists(), "shim socket left: {}", socket.display());
    }
    assert!(
        !containerd_dir.exists(),
        "the lab's containerd directory is left: {}",
        containerd_dir.display()
    );
    assert_eq!(
        machine_config(),
        machine_config_before,
        "the lab changed {DEFAULT_WRAPPER_CONFIG}"
    );
    version.to_string()
}

/// What the report's profiles table shows as `runtime_path` of profile `name`.
fn profile_runtime(json: &Value, name: &str) -> String {
    element_where(&json["profiles"], "name", name)["runtime_path"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

#[test]
fn lab_cri_refuses_what_it_cannot_do() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let image = LabRun::spawn(
        shimtrace()
            .args([
                "lab",
                "--cri",
                "--image",
                "x",
                "--out",
                out.to_str().unwrap(),
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
    )
    .wait_within(LAB_DEADLINE);
    let stderr = String::from_utf8_lossy(&image.stderr);
    assert!(!image.status.success());
    assert!(
        stderr.contains("--image is not supported with --engine cri"),
        "{stderr}"
    );
}
