//! The workload root filesystem, built locally without a registry: busybox-static with its applets,
//! our probe binary and a page for the HTTP workload.

use std::fs;
use std::io;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};

/// Busybox applets the lab's workloads use.
pub const APPLETS: &[&str] = &[
    "sh", "echo", "true", "false", "sleep", "cat", "uname", "ls", "wc", "date", "httpd", "dmesg",
    "ip", "ps", "mount", "id", "env", "head", "grep",
];

/// Where the probe lands inside the rootfs.
pub const PROBE_IN_ROOTFS: &str = "/bin/shimtrace-probe";

/// Why a rootfs could not be built.
#[derive(Debug, thiserror::Error)]
pub enum RootfsError {
    #[error("busybox not found at {0} (install it: apt-get install busybox-static)")]
    NoBusybox(PathBuf),
    #[error("{0} is dynamically linked; the rootfs needs a static busybox (apt-get install busybox-static)")]
    DynamicBusybox(PathBuf),
    #[error(
        "probe binary not found at {0} (build it: cargo build -p shimtrace-probe, or pass --probe)"
    )]
    NoProbe(PathBuf),
    #[error("cannot build rootfs at {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
}

fn at(path: &Path) -> impl FnOnce(io::Error) -> RootfsError + '_ {
    move |source| RootfsError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Whether an ELF file has no program interpreter (i.e. is statically linked).
pub fn is_static_elf(path: &Path) -> io::Result<bool> {
    let bytes = fs::read(path)?;
    if bytes.len() < 64 || &bytes[..4] != b"\x7fELF" || bytes[4] != 2 {
        return Ok(false);
    }
    let u16_at = |o: usize| u16::from_le_bytes([bytes[o], bytes[o + 1]]) as usize;
    let u64_at = |o: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&bytes[o..o + 8]);
        u64::from_le_bytes(b) as usize
    };
    let (phoff, phentsize, phnum) = (u64_at(32), u16_at(54), u16_at(56));
    for i in 0..phnum {
        let off = phoff + i * phentsize;
        if off + 4 > bytes.len() {
            break;
        }
        // PT_INTERP = 3
        if u32::from_le_bytes([bytes[off], bytes[off + 1], bytes[off + 2], bytes[off + 3]]) == 3 {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Builds (or refreshes) a rootfs at `root` from `busybox` and `probe`.
pub fn build_rootfs(root: &Path, busybox: &Path, probe: &Path) -> Result<(), RootfsError> {
    if !busybox.exists() {
        return Err(RootfsError::NoBusybox(busybox.to_path_buf()));
    }
    if !is_static_elf(busybox).map_err(at(busybox))? {
        return Err(RootfsError::DynamicBusybox(busybox.to_path_buf()));
    }
    if !probe.exists() {
        return Err(RootfsError::NoProbe(probe.to_path_buf()));
    }
    for dir in ["bin", "proc", "sys", "dev", "tmp", "etc", "www", "run"] {
        let path = root.join(dir);
        fs::create_dir_all(&path).map_err(at(&path))?;
    }
    let tmp = root.join("tmp");
    fs::set_permissions(&tmp, fs::Permissions::from_mode(0o1777)).map_err(at(&tmp))?;
    copy_executable(busybox, &root.join("bin/busybox"))?;
    copy_executable(probe, &root.join(PROBE_IN_ROOTFS.trim_start_matches('/')))?;
    for applet in APPLETS {
        let link = root.join("bin").join(applet);
        let _ = fs::remove_file(&link);
        symlink("busybox", &link).map_err(at(&link))?;
    }
    let files = [
        ("etc/passwd", "root:x:0:0:root:/:/bin/sh\n"),
        ("etc/group", "root:x:0:\n"),
        ("etc/hosts", "127.0.0.1 localhost\n"),
        ("www/index.html", "shimtrace lab\n"),
    ];
    for (name, content) in files {
        let path = root.join(name);
        fs::write(&path, content).map_err(at(&path))?;
    }
    Ok(())
}

fn copy_executable(from: &Path, to: &Path) -> Result<(), RootfsError> {
    // Copy to a temporary name then rename: a running container may still execute the old file.
    let tmp = to.with_extension("new");
    fs::copy(from, &tmp).map_err(at(from))?;
    fs::set_permissions(&tmp, fs::Permissions::from_mode(0o755)).map_err(at(&tmp))?;
    fs::rename(&tmp, to).map_err(at(to))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_static_and_dynamic_elf() {
        assert!(!is_static_elf(Path::new("/bin/ls")).unwrap());
        let not_elf = tempfile::NamedTempFile::new().unwrap();
        fs::write(not_elf.path(), b"#!/bin/sh\n").unwrap();
        assert!(!is_static_elf(not_elf.path()).unwrap());
    }

    #[test]
    fn missing_busybox_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let err = build_rootfs(
            dir.path(),
            Path::new("/nonexistent/busybox"),
            Path::new("/x"),
        )
        .unwrap_err();
        assert!(err.to_string().contains("apt-get install busybox-static"));
    }
}
