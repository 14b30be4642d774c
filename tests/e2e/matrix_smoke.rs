//! Smoke test of the containerd matrix: every installed version runs a busybox container through its own runc shim.

use std::time::{Duration, Instant};

use shimtrace_testkit::traced::{wait_for, wait_until};

use shimtrace_testkit::containerd::{ContainerdVersion, Options, TestContainerd};

fn smoke(version: &str) {
    let started = Instant::now();
    let version = ContainerdVersion::find(version).expect("containerd version installed");
    let containerd =
        TestContainerd::start(&version, Options::default()).expect("containerd starts");
    let ready = started.elapsed();

    let echo = containerd
        .run_rm("smoke-echo", &[], &["/bin/echo", "hi"])
        .expect("ctr run echo");
    assert!(
        echo.success(),
        "ctr run echo failed on {}: {}\n{}",
        version.version(),
        echo.stderr,
        containerd.log()
    );
    assert_eq!(echo.stdout, "hi\n");

    let exit3 = containerd
        .run_rm("smoke-exit3", &[], &["/bin/sh", "-c", "exit 3"])
        .expect("ctr run exit 3");
    assert_eq!(
        exit3.code(),
        Some(3),
        "exit code must propagate on {}: {}",
        version.version(),
        exit3.stderr
    );

    // --rm deleted both containers, so containerd knows none.
    let left = containerd
        .ctr_ok(&["containers", "ls", "-q"])
        .expect("ctr containers ls");
    assert_eq!(left.stdout.trim(), "");

    // The runc shim that serves this version's containers is its own (not another version's on
    // PATH): seen while one runs.
    containerd
        .run_detached("smoke-shim", &[], &["/bin/sleep", "600"])
        .expect("ctr run -d sleep");
    // (The shims of the removed containers may still be on their way out.)
    let shims = wait_for(Duration::from_secs(10), || {
        let shims = containerd.owned_processes();
        (shims.len() <= 1).then_some(shims)
    })
    .unwrap_or_else(|| containerd.owned_processes());
    let exes: Vec<_> = shims
        .iter()
        .map(|pid| std::fs::read_link(format!("/proc/{pid}/exe")).ok())
        .collect();
    assert_eq!(
        exes,
        vec![Some(version.runc_shim())],
        "containerd {} must run one runc shim, its own (shims {shims:?})",
        version.version()
    );
    containerd
        .ctr_ok(&["tasks", "kill", "-s", "SIGKILL", "smoke-shim"])
        .expect("ctr tasks kill");
    wait_until(
        "the killed task to be deleted",
        Duration::from_secs(30),
        || {
            containerd
                .ctr(&["tasks", "delete", "smoke-shim"])
                .is_ok_and(|o| o.success())
                .then_some(())
        },
    );
    containerd
        .ctr_ok(&["containers", "delete", "smoke-shim"])
        .expect("ctr containers delete");

    eprintln!(
        "containerd {}: ready in {:?}, total {:?}",
        version.version(),
        ready,
        started.elapsed()
    );
}

#[test]
fn matrix_smoke_1_6_20() {
    smoke("1.6.20");
}

#[test]
fn matrix_smoke_1_7_24() {
    smoke("1.7.24");
}

#[test]
fn matrix_smoke_2_1_9() {
    smoke("2.1.9");
}
