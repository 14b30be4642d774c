//! A second, independent inner shim for the 2.x paths: `containerd-shim-runc-v2-rs` (crates.io `containerd-runc-shim` 0.2.0, on `containerd-shim` 0.12).
//!
//! Installed by `scripts/install-containerd-matrix.sh --with-rust-runc-shim` into
//! `/opt/shimtrace/rust-runc-shim/bin/`.

use std::path::PathBuf;

use shimtrace_testkit::containerd::bootstrap::{
    BootstrapStart, Containerd23Peer, MINIMAL_OCI_SPEC,
};
use shimtrace_testkit::containerd::{ContainerdVersion, Options, TestContainerd};

fn rust_runc_shim() -> PathBuf {
    let path = PathBuf::from("/opt/shimtrace/rust-runc-shim/bin/containerd-shim-runc-v2-rs");
    assert!(
        path.is_file(),
        "{} is missing: run `scripts/install-containerd-matrix.sh --with-rust-runc-shim`",
        path.display()
    );
    path
}

#[test]
fn runs_containers_under_containerd_2_1_9() {
    let shim = rust_runc_shim();
    let version = ContainerdVersion::find("2.1.9").expect("containerd 2.1.9 installed");
    let containerd = TestContainerd::start(&version, Options::default()).expect("containerd");
    let runtime = ["--runtime", shim.to_str().unwrap()];

    let echo = containerd
        .run_rm("rs-echo", &runtime, &["/bin/echo", "hi"])
        .expect("ctr run");
    assert!(echo.success(), "{}\n{}", echo.stderr, containerd.log());
    assert_eq!(echo.stdout, "hi\n");

    let exit3 = containerd
        .run_rm("rs-exit3", &runtime, &["/bin/sh", "-c", "exit 3"])
        .expect("ctr run");
    assert_eq!(exit3.code(), Some(3), "{}", exit3.stderr);
    assert!(
        containerd.log().contains("protocol=ttrpc version=3"),
        "containerd connected to it as a task v3 shim"
    );
}

#[test]
fn answers_containerd_2_3_bootstrap_params() {
    let shim = rust_runc_shim();
    let peer = Containerd23Peer::new().expect("peer");
    let start = BootstrapStart {
        config_json: Some(MINIMAL_OCI_SPEC.to_owned()),
        ..BootstrapStart::new("rsns", "rs-boot")
    };
    let mut started = peer
        .start_shim(&shim, &start)
        .expect("start with BootstrapParams");
    assert_eq!(started.result.version, 3);
    assert_eq!(started.result.protocol, "ttrpc");
    // Unlike containerd 2.x's Go runc shim, this one still writes the bundle's `address` file.
    let address_file =
        std::fs::read_to_string(started.bundle.join("address")).expect("address file");
    assert_eq!(address_file, started.address());
    let connected = started.connect().expect("Task/Connect");
    assert!(connected.shim_pid > 0);
    started.shutdown().expect("Task/Shutdown");
}
