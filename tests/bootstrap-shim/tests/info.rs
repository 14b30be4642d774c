//! The built binary answers containerd's `-info` with a protobuf RuntimeInfo naming its runtime.
//!
//! Having an integration test here also makes `cargo test --workspace` build the binary that
//! `shimtrace-tests`' bootstrap tests run.

use std::process::{Command, Stdio};

use containerd_shim_protos::protobuf::Message;
use containerd_shim_protos::types::introspection::RuntimeInfo;

#[test]
fn info_reports_the_runtime_id() {
    let output = Command::new(env!("CARGO_BIN_EXE_containerd-shim-bootstrap-v2"))
        .arg("-info")
        .stdin(Stdio::null())
        .output()
        .expect("run -info");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let info = RuntimeInfo::parse_from_bytes(&output.stdout).expect("RuntimeInfo protobuf");
    assert_eq!(info.name, shimtrace_bootstrap_shim::RUNTIME_ID);
}
