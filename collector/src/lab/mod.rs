//! `shimtrace lab`: runs the same workloads under several runtimes through containerd and reports
//! cold start, isolation and served latency side by side.

pub mod profiles;
pub mod rootfs;

/// The static probe binary (built from `probe/` by this crate's build script).
pub const PROBE_BINARY: &[u8] = include_bytes!(env!("SHIMTRACE_PROBE_PATH"));

/// Writes the embedded probe to `path` (mode 0755).
pub fn write_probe(path: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, PROBE_BINARY)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))
}
