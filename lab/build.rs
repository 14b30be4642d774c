//! Builds the workload probe (`probe/`) as a static executable and hands its path to the lab, which
//! embeds it: `shimtrace lab` then needs no second binary, and the probe runs in any rootfs.
//!
//! Cargo cannot link one package of a workspace statically with a plain `cargo build`, so this runs
//! `cargo rustc ... -C target-feature=+crt-static` into our OUT_DIR.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    let manifest_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets it"));
    let probe_dir = manifest_dir.join("../probe");
    let out_dir = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets it"));
    let target_dir = out_dir.join("probe-target");
    println!("cargo:rerun-if-changed={}", probe_dir.join("src").display());
    println!(
        "cargo:rerun-if-changed={}",
        probe_dir.join("Cargo.toml").display()
    );
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let target = std::env::var("TARGET").expect("cargo sets it");
    let status = Command::new(cargo)
        .args([
            "rustc",
            "--release",
            "--offline",
            "--bin",
            "shimtrace-probe",
            "--manifest-path",
        ])
        .arg(probe_dir.join("Cargo.toml"))
        .arg("--target")
        .arg(&target)
        .arg("--target-dir")
        .arg(&target_dir)
        .args(["--", "-C", "target-feature=+crt-static"])
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("CARGO_BUILD_RUSTFLAGS")
        // Under `cargo clippy` this points at clippy-driver; the probe only needs compiling.
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .status()
        .expect("cannot run cargo to build the probe");
    assert!(status.success(), "building the static probe failed");
    let probe = target_dir.join(&target).join("release/shimtrace-probe");
    println!("cargo:rustc-env=SHIMTRACE_PROBE_PATH={}", probe.display());
}
