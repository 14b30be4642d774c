//! `shimtrace install` against the real containerd binary: the merged config is one containerd
//! accepts, with the traced runtime's `runtime_type`, `runtime_path` and kept options.

use std::process::Command;

use shimtrace_containerd::install::{install, InstallArgs};
use shimtrace_testkit::cli::{output_ok, parse_args};

#[test]
fn install_writes_a_config_containerd_loads() {
    let dir = tempfile::tempdir().unwrap();
    let wrapper = dir.path().join("containerd-shim-traced-v2");
    std::fs::copy("/bin/true", &wrapper).unwrap();
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.runc]\n  runtime_type = \"io.containerd.runc.v2\"\n  [plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.runc.options]\n    NoPivotRoot = true\n",
    )
    .unwrap();
    let args: InstallArgs = parse_args(&[
        "--wrapper",
        wrapper.to_str().unwrap(),
        "--config",
        config.to_str().unwrap(),
        "--write",
        // The runtime_path form whatever the system containerd (1.6 would get the name form).
        "--form",
        "path",
    ]);
    let outcome = install(&args).unwrap();
    let link = dir.path().join("containerd-shim-traced-runc-v2");
    assert_eq!(std::fs::read_link(&link).unwrap(), wrapper);
    assert!(outcome.backup.as_ref().unwrap().exists());
    assert!(
        outcome.report.contains("kind: RuntimeClass")
            && outcome.report.contains("handler: traced-runc")
    );

    let dump = output_ok(
        Command::new("containerd")
            .arg("--config")
            .arg(&config)
            .args(["config", "dump"]),
    );
    let dumped: toml::Value = toml::from_str(&String::from_utf8_lossy(&dump.stdout)).unwrap();
    let runtimes = &dumped["plugins"]["io.containerd.grpc.v1.cri"]["containerd"]["runtimes"];
    let traced = &runtimes["traced-runc"];
    assert_eq!(
        traced["runtime_type"].as_str(),
        Some("io.containerd.runc.v2")
    );
    assert_eq!(
        traced["runtime_path"].as_str(),
        Some(link.to_str().unwrap())
    );
    assert_eq!(
        traced["options"]["NoPivotRoot"].as_bool(),
        Some(true),
        "options of runc are kept"
    );

    // Installing again keeps one entry and one more backup.
    let again = install(&args).unwrap();
    assert!(again.created_links.is_empty());
    assert_ne!(again.backup, outcome.backup);
}
