//! containerd 2.3's stdin bootstrap with a real peer: the `containerd-shim` 0.12 test shim, driven DIRECT (no wrapper).
//!
//! Needs `cargo build -p shimtrace-bootstrap-shim` first (`cargo test --workspace` does it).

use std::path::PathBuf;
use std::time::Duration;

use shimtrace_testkit::containerd::bootstrap::{
    bootstrap_shim_binary, decode_task_create, BootstrapStart, Containerd23Peer,
};

fn shim() -> PathBuf {
    bootstrap_shim_binary().expect("bootstrap shim built")
}

#[test]
fn bootstrap_params_on_stdin_get_a_protobuf_result_and_task_v3_answers() {
    let peer = Containerd23Peer::new().expect("peer");
    let start = BootstrapStart::new("bsns", "bs-direct");
    let mut started = peer
        .start_shim(&shim(), &start)
        .expect("start with BootstrapParams");

    assert_eq!(started.result.version, 3, "task API v3");
    assert_eq!(started.result.protocol, "ttrpc");
    let socket_dir = format!("unix://{}/", peer.socket_dir().display());
    assert!(
        started.address().starts_with(&socket_dir),
        "BootstrapParams.socket_dir is honoured: {}",
        started.address()
    );

    let connected = started.connect().expect("Task/Connect");
    assert_eq!(connected.version, shimtrace_bootstrap_shim_version());
    let server_pid = connected.shim_pid;
    assert!(server_pid > 0 && server_pid != std::process::id());
    assert!(std::path::Path::new(&format!("/proc/{server_pid}")).exists());

    let state = started.state().expect("Task/State");
    assert_eq!(state.id, "bs-direct");

    // The shim publishes through BootstrapParams' containerd_ttrpc_address, which the peer records.
    started.create().expect("Task/Create");
    let envelope = peer
        .wait_for_event("/tasks/create", Duration::from_secs(10))
        .expect("a /tasks/create event reached the peer's ttrpc address");
    assert_eq!(envelope.namespace, "bsns");
    let create = decode_task_create(&envelope).expect("TaskCreate payload");
    assert_eq!(create.container_id, "bs-direct");

    started.shutdown().expect("Task/Shutdown ends the server");
    assert!(started.server_pid().is_none());
}

#[test]
fn empty_stdin_gets_the_legacy_json_v3_reply() {
    let peer = Containerd23Peer::new().expect("peer");
    let start = BootstrapStart::new("bsns", "bs-legacy");
    let output = peer
        .start_shim_legacy(&shim(), &start)
        .expect("legacy start");
    let reply: serde_json::Value = serde_json::from_slice(&output).expect("JSON reply");
    assert_eq!(reply["version"], 3);
    assert_eq!(reply["protocol"], "ttrpc");
    // The legacy protocol carries no socket_dir: the socket is in the default place.
    let address = reply["address"].as_str().expect("address");
    assert!(
        address.starts_with("unix:///run/containerd/s/"),
        "{address}"
    );
    // Peer Drop kills the daemon (found by this peer's marker environment).
}

fn shimtrace_bootstrap_shim_version() -> &'static str {
    "shimtrace-bootstrap-shim"
}
