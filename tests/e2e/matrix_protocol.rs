//! What each containerd of the matrix hands a shim's `start` and expects back, pinned with a logging wrapper around its own runc shim.
//!
//! These are the facts the wrapper relies on (PROTOCOL.md §1); if a new Debian containerd changes
//! one, this test says which.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use shimtrace_testkit::containerd::{ContainerdVersion, Options, TestContainerd};

/// Logs argv, environment and stdin of each call, runs the real shim with the same stdin and
/// relays its stdout (start's reply) after recording it.
const LOGGING_WRAPPER: &str = r#"#!/bin/bash
n="$MX_LOG_DIR/$(date +%s%N).$$"
printf '%s\n' "$@" > "$n.argv"
env > "$n.env"
cat > "$n.stdin"
"$MX_REAL_SHIM" "$@" < "$n.stdin" > "$n.stdout"; rc=$?
cat "$n.stdout"
exit $rc
"#;

struct Call {
    argv: Vec<String>,
    env: Vec<(String, String)>,
    stdin: Vec<u8>,
    stdout: String,
}

impl Call {
    fn env(&self, key: &str) -> Option<&str> {
        self.env
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

fn calls(dir: &Path, action: &str) -> Vec<Call> {
    let mut stems: Vec<_> = fs::read_dir(dir)
        .unwrap()
        .flatten()
        .filter_map(|e| {
            e.file_name()
                .to_str()?
                .strip_suffix(".argv")
                .map(str::to_owned)
        })
        .collect();
    stems.sort();
    stems
        .into_iter()
        .map(|stem| {
            let read = |ext: &str| fs::read(dir.join(format!("{stem}.{ext}"))).unwrap_or_default();
            let text = |ext: &str| String::from_utf8_lossy(&read(ext)).into_owned();
            Call {
                argv: text("argv").lines().map(str::to_owned).collect(),
                env: text("env")
                    .lines()
                    .filter_map(|l| l.split_once('='))
                    .map(|(k, v)| (k.to_owned(), v.to_owned()))
                    .collect(),
                stdin: read("stdin"),
                stdout: text("stdout"),
            }
        })
        .filter(|call| call.argv.last().map(String::as_str) == Some(action))
        .collect()
}

fn pin_protocol(version: &str) {
    let version = ContainerdVersion::find(version).expect("containerd version installed");
    let work = tempfile::tempdir().unwrap();
    let wrapper = work.path().join("logging-shim");
    fs::write(&wrapper, LOGGING_WRAPPER).unwrap();
    fs::set_permissions(&wrapper, fs::Permissions::from_mode(0o755)).unwrap();
    let log_dir = work.path().join("calls");
    fs::create_dir(&log_dir).unwrap();
    let options = Options::default()
        .env("MX_LOG_DIR", &log_dir)
        .env("MX_REAL_SHIM", version.runc_shim());
    let containerd = TestContainerd::start(&version, options).expect("containerd starts");
    containerd
        .run_detached(
            "proto",
            &["--runtime", wrapper.to_str().unwrap()],
            &["/bin/sleep", "60"],
        )
        .expect("ctr run -d through the logging wrapper");

    let starts = calls(&log_dir, "start");
    assert_eq!(starts.len(), 1, "one start");
    let start = &starts[0];
    let address = containerd.address().display().to_string();
    let expected_argv = [
        "-namespace",
        containerd.namespace(),
        "-address",
        &address,
        "-publish-binary",
        &version.containerd().display().to_string(),
        "-id",
        "proto",
        "start",
    ];
    assert_eq!(
        start.argv,
        expected_argv,
        "start argv on {}",
        version.version()
    );
    assert_eq!(
        start.env("TTRPC_ADDRESS"),
        Some(containerd.ttrpc_address().to_str().unwrap())
    );
    assert_eq!(start.env("GOMAXPROCS"), Some("2"));
    assert!(
        start.stdin.is_empty(),
        "no runtime options without --runc-binary etc."
    );
    if version.version() == "1.6.20" {
        assert_eq!(start.env("GRPC_ADDRESS"), None);
        assert_eq!(start.env("NAMESPACE"), None);
        assert_eq!(start.env("MAX_SHIM_VERSION"), None);
    } else {
        assert_eq!(start.env("GRPC_ADDRESS"), Some(address.as_str()));
        assert_eq!(start.env("NAMESPACE"), Some(containerd.namespace()));
        // 2.1.9 still says 2, yet its own runc shim answers version 3.
        assert_eq!(start.env("MAX_SHIM_VERSION"), Some("2"));
    }

    let bundle = containerd.bundle_dir("proto");
    let reply = start.stdout.trim();
    assert_eq!(
        fs::read_to_string(bundle.join("shim-binary-path")).unwrap(),
        wrapper.display().to_string()
    );
    if version.binary().major() == 1 {
        assert!(
            reply.starts_with("unix:///run/containerd/s/"),
            "1.x runc shim replies a plain address: {reply}"
        );
        assert_eq!(fs::read_to_string(bundle.join("address")).unwrap(), reply);
        assert!(!bundle.join("bootstrap.json").exists());
    } else {
        let json: serde_json::Value = serde_json::from_str(reply).expect("2.x reply is JSON");
        assert_eq!(json["version"], 3);
        assert_eq!(json["protocol"], "ttrpc");
        let bootstrap: serde_json::Value =
            serde_json::from_str(&fs::read_to_string(bundle.join("bootstrap.json")).unwrap())
                .expect("containerd wrote bootstrap.json");
        assert_eq!(bootstrap, json, "bootstrap.json is the start reply");
        assert!(
            !bundle.join("address").exists(),
            "2.x runc shim writes no address file"
        );
    }

    containerd
        .ctr_ok(&["tasks", "kill", "-s", "SIGKILL", "proto"])
        .expect("kill");
    // `tasks delete` waits for the exit; then containerd runs the wrapper's `delete`.
    let _ = containerd.ctr(&["tasks", "delete", "proto"]);
    // After a normal exit containerd usually also runs the binary's `delete` (cleanup after the
    // shim's connection closed), but not always: on 1.7.24 it was seen missing about one run in
    // five, so only its argv is pinned, when it came.
    for delete in calls(&log_dir, "delete") {
        let bundle_arg = bundle.display().to_string();
        assert_eq!(
            delete.argv[delete.argv.len() - 5..],
            ["-id", "proto", "-bundle", bundle_arg.as_str(), "delete"]
        );
    }
}

#[test]
fn protocol_1_6_20() {
    pin_protocol("1.6.20");
}

#[test]
fn protocol_1_7_24() {
    pin_protocol("1.7.24");
}

#[test]
fn protocol_2_1_9() {
    pin_protocol("2.1.9");
}
