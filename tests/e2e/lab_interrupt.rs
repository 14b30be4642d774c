//! Ctrl-C during `shimtrace lab`, as a terminal sends it (SIGINT to the whole process group), with
//! each engine: containerd (a private one), CRI (a private CRI containerd) and Docker (a private
//! dockerd). The lab ends after the container in hand, writes the report of what it measured, says
//! it was interrupted, and leaves no daemon, shim, proxy or mount of its run.

use std::io::BufRead;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use shimtrace_containerd::dockerd::mount_points_under;
use shimtrace_testkit::containerd::children_of;
use shimtrace_testkit::docker::{DockerVersion, DOCKER_VERSION};
use shimtrace_testkit::lab::{private_dir_in, LabRun};
use shimtrace_testkit::traced::{alive, pids_with_cmdline, wait_until};

/// Runs `lab` (its `shimtrace lab …` command, with `--only runc`, many rounds and no served
/// latency) in a process group of its own, sends the group SIGINT during the cold starts, and
/// checks what an interrupted run leaves.
fn interrupt(mut lab: Command) {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    // If an assertion fails first, or the lab hangs: the lab, its private daemon (in a process
    // group of its own) and the daemon's shims, proxies and containers are killed by pid, and the
    // daemon's mounts and directory removed, whether or not the lab got as far as "ready".
    let mut lab = LabRun::spawn(
        lab.args(["--only", "runc", "--runs", "500", "--requests", "0"])
            .arg("--wrapper")
            .arg(shimtrace_testkit::traced::wrapper_binary())
            .arg("--out")
            .arg(&out)
            .process_group(0)
            .stdout(Stdio::null())
            .stderr(Stdio::piped()),
    );
    let lab_pid = lab.child().id();
    let (lines_tx, lines) = std::sync::mpsc::channel();
    let stderr = lab.child().stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            let _ = lines_tx.send(line);
        }
    });
    let mut seen = Vec::new();
    wait_until(
        "the runc profile to be ready",
        Duration::from_secs(180),
        || {
            seen.extend(lines.try_iter());
            seen.iter().any(|l| l.contains("runc: ready")).then_some(())
        },
    );
    // The private daemon, and a cold start's shim of it, are running.
    // Known to the guard from now on, also once the lab has ended.
    let private = lab
        .learn()
        .first()
        .cloned()
        .unwrap_or_else(|| panic!("no private daemon under the lab: {seen:?}"));
    let daemons: Vec<u32> = children_of(lab_pid)
        .into_iter()
        .filter(|pid| private_dir_in(*pid).as_ref() == Some(&private))
        .collect();
    assert!(
        !daemons.is_empty(),
        "no private daemon under the lab: {seen:?}"
    );
    let shims = wait_until("a cold start's shim", Duration::from_secs(60), || {
        let shims = pids_with_cmdline(&["containerd-shim", &private]);
        (!shims.is_empty()).then_some(shims)
    });

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(-(lab_pid as i32)),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let status = wait_until("the lab to end", Duration::from_secs(180), || {
        lab.child().try_wait().unwrap()
    });
    reader.join().unwrap();
    seen.extend(lines.try_iter());
    let stderr = seen.join("\n");
    assert!(
        !status.success(),
        "an interrupted run is not a success: {stderr}"
    );
    assert!(stderr.contains("interrupted"), "{stderr}");
    let md = std::fs::read_to_string(out.join("report.md")).expect("report.md written");
    assert!(md.contains("interrupted (Ctrl-C)"), "{md}");
    assert!(md.contains("## Cold start"), "{md}");
    for pid in daemons.iter().chain(&shims) {
        assert!(
            !alive(*pid),
            "process {pid} outlived the interrupted lab: {stderr}"
        );
    }
    assert_eq!(
        pids_with_cmdline(&[&private]),
        Vec::<u32>::new(),
        "processes of {private} left: {stderr}"
    );
    let left = mount_points_under(Path::new(&private));
    assert!(left.is_empty(), "mounts of {private} left: {left:?}");
    drop(lab);
}

fn shimtrace_lab() -> Command {
    let mut lab = shimtrace_testkit::cli::shimtrace();
    lab.arg("lab");
    lab
}

#[test]
fn ctrl_c_ends_a_containerd_lab_cleanly() {
    let mut lab = shimtrace_lab();
    lab.args(["--address", "/nonexistent/shimtrace-test/containerd.sock"]);
    interrupt(lab);
}

#[test]
fn ctrl_c_ends_a_cri_lab_cleanly() {
    // One CRI lab at a time (see lab_cri).
    let _alone = crate::lab_cri::ONE_LAB
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let mut lab = shimtrace_lab();
    lab.arg("--cri");
    interrupt(lab);
}

#[test]
fn ctrl_c_ends_a_docker_lab_cleanly() {
    let version = DockerVersion::find(DOCKER_VERSION).unwrap();
    let mut lab = shimtrace_lab();
    crate::docker::with_private_dockerd(&mut lab, &version);
    interrupt(lab);
}
