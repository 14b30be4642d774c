//! The workload root filesystem, built locally without a registry: busybox-static with its applets
//! and a page for the HTTP workload ([`build_busybox_rootfs`], what the tests run), plus our probe
//! binary for the lab ([`build_rootfs`]).

use std::fs;
use std::io;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::files::{replace_file, FileError};

/// Busybox applets linked in the rootfs: what the lab's workloads and the tests run.
pub const APPLETS: &[&str] = &[
    "sh", "echo", "true", "false", "sleep", "cat", "uname", "ls", "wc", "date", "httpd", "dmesg",
    "ip", "ps", "mount", "id", "env", "head", "grep", "kill",
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
    #[error("{0} is not a 64-bit little-endian ELF executable; the rootfs needs a static busybox (apt-get install busybox-static, then --busybox /bin/busybox)")]
    NotElf(PathBuf),
    #[error("probe binary not found at {0} (build it: cargo build -p shimtrace-probe)")]
    NoProbe(PathBuf),
    #[error("cannot build rootfs at {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("cannot build rootfs: {0}")]
    File(#[from] FileError),
}

fn at(path: &Path) -> impl FnOnce(io::Error) -> RootfsError + '_ {
    move |source| RootfsError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// How an executable is linked, as far as a rootfs cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Linkage {
    /// A 64-bit little-endian ELF file without a program interpreter.
    Static,
    /// An ELF file that names a program interpreter (`PT_INTERP`).
    Dynamic,
    /// Not a 64-bit little-endian ELF file (a script, a 32-bit or big-endian binary, anything else).
    NotElf,
}

/// How the file at `path` is linked. A program header table that runs past the file's end ends
/// the search: what was read of it decides.
pub fn linkage(path: &Path) -> io::Result<Linkage> {
    const PT_INTERP: u32 = 3;
    let bytes = fs::read(path)?;
    // ELFCLASS64 (4) and ELFDATA2LSB (5).
    if bytes.len() < 64 || &bytes[..4] != b"\x7fELF" || bytes[4] != 2 || bytes[5] != 1 {
        return Ok(Linkage::NotElf);
    }
    let u16_at = |o: usize| u16::from_le_bytes([bytes[o], bytes[o + 1]]) as usize;
    let phoff = u64::from_le_bytes(bytes[32..40].try_into().unwrap_or_default());
    let (phentsize, phnum) = (u16_at(54), u16_at(56));
    for i in 0..phnum {
        let entry = usize::try_from(phoff)
            .ok()
            .and_then(|phoff| phoff.checked_add(i.checked_mul(phentsize)?));
        let Some(p_type) = entry.and_then(|at| bytes.get(at..at.checked_add(4)?)) else {
            break;
        };
        if u32::from_le_bytes(p_type.try_into().unwrap_or_default()) == PT_INTERP {
            return Ok(Linkage::Dynamic);
        }
    }
    Ok(Linkage::Static)
}

/// Builds (or refreshes) a rootfs at `root` from `busybox` and `probe`: the busybox rootfs of
/// [`build_busybox_rootfs`] with the probe at [`PROBE_IN_ROOTFS`].
pub fn build_rootfs(root: &Path, busybox: &Path, probe: &Path) -> Result<(), RootfsError> {
    check_busybox(busybox)?;
    if !probe.exists() {
        return Err(RootfsError::NoProbe(probe.to_path_buf()));
    }
    build_busybox_rootfs(root, busybox)?;
    copy_executable(probe, &root.join(PROBE_IN_ROOTFS.trim_start_matches('/')))
}

/// Builds (or refreshes) a rootfs at `root` from a static `busybox`: `/bin/busybox` with its
/// [`APPLETS`], `proc sys dev tmp etc www run`, a root user and `/www/index.html`. Usable with
/// `ctr run --rootfs` and as an OCI bundle's root.
pub fn build_busybox_rootfs(root: &Path, busybox: &Path) -> Result<(), RootfsError> {
    check_busybox(busybox)?;
    for dir in ["bin", "proc", "sys", "dev", "tmp", "etc", "www", "run"] {
        let path = root.join(dir);
        fs::create_dir_all(&path).map_err(at(&path))?;
    }
    let tmp = root.join("tmp");
    fs::set_permissions(&tmp, fs::Permissions::from_mode(0o1777)).map_err(at(&tmp))?;
    copy_executable(busybox, &root.join("bin/busybox"))?;
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

fn check_busybox(busybox: &Path) -> Result<(), RootfsError> {
    if !busybox.exists() {
        return Err(RootfsError::NoBusybox(busybox.to_path_buf()));
    }
    match linkage(busybox).map_err(at(busybox))? {
        Linkage::Static => Ok(()),
        Linkage::Dynamic => Err(RootfsError::DynamicBusybox(busybox.to_path_buf())),
        Linkage::NotElf => Err(RootfsError::NotElf(busybox.to_path_buf())),
    }
}

fn copy_executable(from: &Path, to: &Path) -> Result<(), RootfsError> {
    // Replaced, not written over: a running container may still execute the old file.
    let content = fs::read(from).map_err(at(from))?;
    Ok(replace_file(to, content, Some(0o755))?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_static_and_dynamic_elf() {
        assert_eq!(linkage(Path::new("/bin/ls")).unwrap(), Linkage::Dynamic);
        let file = tempfile::NamedTempFile::new().unwrap();
        fs::write(file.path(), b"#!/bin/sh\n").unwrap();
        assert_eq!(linkage(file.path()).unwrap(), Linkage::NotElf);
        let err = check_busybox(file.path()).unwrap_err();
        assert!(matches!(err, RootfsError::NotElf(_)), "{err}");
        // A 64-bit ELF header whose program headers lie far past the end (or past usize).
        let mut header = fs::read("/bin/ls").unwrap()[..64].to_vec();
        for phoff in [u64::MAX, u64::MAX - 40, 1 << 40] {
            header[32..40].copy_from_slice(&phoff.to_le_bytes());
            header[54..56].copy_from_slice(&u16::MAX.to_le_bytes());
            header[56..58].copy_from_slice(&u16::MAX.to_le_bytes());
            fs::write(file.path(), &header).unwrap();
            assert_eq!(linkage(file.path()).unwrap(), Linkage::Static, "{phoff}");
        }
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

    #[test]
    fn rootfs_has_busybox_and_applets() {
        let dir = tempfile::tempdir().unwrap();
        build_busybox_rootfs(dir.path(), Path::new("/bin/busybox")).unwrap();
        // Building twice must not fail (idempotent).
        build_busybox_rootfs(dir.path(), Path::new("/bin/busybox")).unwrap();
        assert!(dir.path().join("bin/busybox").is_file());
        assert_eq!(
            fs::read_link(dir.path().join("bin/sh")).unwrap(),
            Path::new("busybox")
        );
        for sub in ["proc", "sys", "dev", "tmp", "etc"] {
            assert!(dir.path().join(sub).is_dir(), "{sub}");
        }
        assert!(!dir
            .path()
            .join(PROBE_IN_ROOTFS.trim_start_matches('/'))
            .exists());
    }

    #[test]
    fn missing_probe_is_a_clear_error_before_anything_is_built() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("rootfs");
        let err = build_rootfs(
            &root,
            Path::new("/bin/busybox"),
            Path::new("/nonexistent/probe"),
        )
        .unwrap_err();
        assert!(matches!(err, RootfsError::NoProbe(_)), "{err}");
        assert!(!root.exists());
    }
}
