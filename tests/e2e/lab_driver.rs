//! The containerd driver against a real, private containerd 1.6: runc and gVisor (runc shim with
//! `BinaryName`), run to exit, exit codes, output, detached tasks with exec and kill.

use std::path::Path;
use std::time::Duration;

use shimtrace_containerd::rootfs;
use shimtrace_containerd::{Containerd, RunSpec};
use shimtrace_lab::profiles::{write_runsc_wrapper, Network};
use shimtrace_lab::write_probe;
use shimtrace_testkit::containerd::{ContainerdVersion, Options, TestContainerd};

/// Fields drop in declaration order: the client's connection, then containerd (which removes every
/// task and container, stops containerd and kills by pid the shims and containers it left), then
/// the directory that holds the containers' rootfs.
struct Fixture {
    client: Containerd,
    _containerd: TestContainerd,
    rootfs: std::path::PathBuf,
    io: std::path::PathBuf,
    work: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

async fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    let probe = work.join("probe");
    write_probe(&probe).unwrap();
    let rootfs_dir = dir.path().join("rootfs");
    rootfs::build_rootfs(&rootfs_dir, Path::new("/bin/busybox"), &probe).unwrap();
    let containerd = tokio::task::spawn_blocking(|| {
        TestContainerd::start(
            &ContainerdVersion::find("1.6.20").unwrap(),
            Options::default(),
        )
    })
    .await
    .unwrap()
    .unwrap();
    let client = Containerd::connect(containerd.address())
        .await
        .unwrap()
        .with_namespace(containerd.namespace().to_string());
    Fixture {
        client,
        _containerd: containerd,
        io: dir.path().join("io"),
        rootfs: rootfs_dir,
        work,
        _dir: dir,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runc_and_runsc_run_to_exit_with_output_and_exit_codes() {
    let f = fixture().await;
    assert!(
        f.client.version().await.unwrap().starts_with("1.")
            || f.client.version().await.unwrap().starts_with("v1.")
    );

    let spec = RunSpec::new(
        unique("echo"),
        &f.rootfs,
        ["/bin/sh", "-c", "echo hello; uname -r"],
        &f.io,
    );
    let outcome = f.client.run_to_exit(&spec).await.unwrap();
    assert_eq!(outcome.exit_code, 0);
    let host_release = nix::sys::utsname::uname()
        .unwrap()
        .release()
        .to_string_lossy()
        .into_owned();
    assert_eq!(outcome.output, format!("hello\n{host_release}\n"));
    assert!(outcome.total >= outcome.phases.create_task + outcome.phases.start_task);
    assert!(outcome.phases.create_task > Duration::ZERO);

    let spec = RunSpec::new(
        unique("exit3"),
        &f.rootfs,
        ["/bin/sh", "-c", "exit 3"],
        &f.io,
    );
    assert_eq!(f.client.run_to_exit(&spec).await.unwrap().exit_code, 3);

    // gVisor: the runc shim runs a runsc wrapper instead of runc.
    let mut spec = RunSpec::new(unique("gvisor"), &f.rootfs, ["/bin/shimtrace-probe"], &f.io);
    spec.runtime_options = Some(shimtrace_containerd::RuncOptions {
        binary_name: Some(
            write_runsc_wrapper(&f.work, Path::new("/usr/bin/runsc"), Network::None)
                .unwrap()
                .display()
                .to_string(),
        ),
        ..Default::default()
    });
    let outcome = f.client.run_to_exit(&spec).await.unwrap();
    assert_eq!(outcome.exit_code, 0, "output: {}", outcome.output);
    let probe: serde_json::Value = serde_json::from_str(outcome.output.trim()).unwrap();
    let release = probe["kernel"]["release"].as_str().unwrap();
    assert_ne!(release, host_release, "gVisor reports its own kernel");
    let first = probe["first_timestamp_unix_nanos"].as_u64().unwrap();
    assert!(
        first > outcome.client_start_unix_nanos,
        "workload ran after the client started"
    );

    // Nothing is left behind.
    assert!(f.client.our_containers().await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn detached_task_execs_and_is_killed() {
    let f = fixture().await;
    let spec = RunSpec::new(unique("sleeper"), &f.rootfs, ["/bin/sleep", "600"], &f.io);
    let running = f.client.start_detached(&spec).await.unwrap();
    assert!(running.pid > 0);
    let exec = f
        .client
        .exec_to_exit(
            &spec,
            "e1",
            &["/bin/sh".into(), "-c".into(), "echo in; exit 7".into()],
        )
        .await
        .unwrap();
    assert_eq!(exec.exit_code, 7);
    assert_eq!(exec.output, "in\n");
    f.client
        .kill(&spec.id, libc_sigkill(), false)
        .await
        .unwrap();
    let code = tokio::time::timeout(Duration::from_secs(10), f.client.wait(&spec.id, ""))
        .await
        .expect("task exits after SIGKILL")
        .unwrap();
    assert_eq!(code, 128 + libc_sigkill());
    f.client.delete(&spec.id).await.unwrap();
    // Deleting again is not an error, and a missing task gives NotFound.
    f.client.delete(&spec.id).await.unwrap();
    assert!(f
        .client
        .kill(&spec.id, 9, false)
        .await
        .unwrap_err()
        .is_not_found());

    // A container that is still running is killed and removed by the cleanup.
    let spec = RunSpec::new(
        unique("left-running"),
        &f.rootfs,
        ["/bin/sleep", "600"],
        &f.io,
    );
    f.client.start_detached(&spec).await.unwrap();
    assert_eq!(f.client.cleanup().await.unwrap(), 1);
    assert!(f.client.our_containers().await.unwrap().is_empty());
}

/// Container ids are unique per test process: runc's state directory is shared by every containerd
/// on the machine.
fn unique(name: &str) -> String {
    format!("{name}-{}", std::process::id())
}

fn libc_sigkill() -> u32 {
    nix::sys::signal::Signal::SIGKILL as u32
}
