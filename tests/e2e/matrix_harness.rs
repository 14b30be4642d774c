//! The harness itself on every containerd version: own runc shim, reconnect after restart, Drop leaves no shim behind.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use shimtrace_testkit::containerd::{ContainerdVersion, Options, TestContainerd};

fn exe_of(pid: u32) -> Option<PathBuf> {
    std::fs::read_link(format!("/proc/{pid}/exe")).ok()
}

/// `(pid, status)` of task `id` from `ctr tasks ls` ("TASK PID STATUS").
fn task(containerd: &TestContainerd, id: &str) -> Option<(u32, String)> {
    let tasks = containerd.ctr_ok(&["tasks", "ls"]).expect("ctr tasks ls");
    let line = tasks
        .stdout
        .lines()
        .find(|line| line.split_whitespace().next() == Some(id))?;
    let mut fields = line.split_whitespace().skip(1);
    Some((fields.next()?.parse().ok()?, fields.next()?.to_owned()))
}

fn task_status(containerd: &TestContainerd, id: &str) -> Option<String> {
    task(containerd, id).map(|(_, status)| status)
}

fn wait_gone(pid: u32) -> bool {
    let deadline = Instant::now() + Duration::from_secs(5);
    while exe_of(pid).is_some() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    exe_of(pid).is_none()
}

fn restart_and_drop(version: &str) {
    let version = ContainerdVersion::find(version).expect("containerd version installed");
    let mut containerd =
        TestContainerd::start(&version, Options::default()).expect("containerd starts");
    containerd
        .run_detached("sleeper", &[], &["/bin/sleep", "600"])
        .expect("ctr run -d sleep");
    let (container_pid, status) = task(&containerd, "sleeper").expect("task listed");
    assert_eq!(status, "RUNNING");
    let runc_state = std::path::Path::new("/run/containerd/runc")
        .join(containerd.namespace())
        .join("sleeper");
    assert!(
        runc_state.exists(),
        "runc state at {}",
        runc_state.display()
    );

    let shims = containerd.owned_processes();
    assert_eq!(shims.len(), 1, "one runc shim expected, found {shims:?}");
    let shim = shims[0];
    assert_eq!(
        exe_of(shim),
        Some(version.runc_shim()),
        "containerd {} must use its own runc shim",
        version.version()
    );

    containerd.restart().expect("containerd restarts");
    assert_eq!(
        task_status(&containerd, "sleeper").as_deref(),
        Some("RUNNING"),
        "after a restart containerd {} reconnects to the running task; log:\n{}",
        version.version(),
        containerd.log()
    );
    assert_eq!(
        containerd.owned_processes(),
        vec![shim],
        "the same shim survives the restart"
    );

    // Stop containerd so Drop has to find the shim by itself (no ctr to delete the task with).
    containerd.stop().expect("containerd stops");
    assert!(exe_of(shim).is_some(), "shim outlives a stopped containerd");
    drop(containerd);
    assert!(wait_gone(shim), "Drop killed the leftover shim {shim}");
    assert!(
        wait_gone(container_pid),
        "Drop killed the orphaned container process {container_pid}"
    );
    assert!(
        !runc_state.exists(),
        "Drop removed the runc state {}",
        runc_state.display()
    );
}

#[test]
fn harness_1_6_20() {
    restart_and_drop("1.6.20");
}

#[test]
fn harness_1_7_24() {
    restart_and_drop("1.7.24");
}

#[test]
fn harness_2_1_9() {
    restart_and_drop("2.1.9");
}
