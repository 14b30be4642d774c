//! Runtime and binary names: how a containerd runtime name maps to the shim binary containerd runs,
//! how a traced runtime maps to the real one it wraps, and how executables are found on `PATH`.

use std::ffi::OsStr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// The wrapper shim's own binary; every traced runtime's binary is a symlink to it.
pub const WRAPPER_BINARY: &str = "containerd-shim-traced-v2";
/// Prefix of a traced runtime's binary: `containerd-shim-traced-<inner>-<version>`.
pub const WRAPPER_PREFIX: &str = "containerd-shim-traced-";
/// Prefix containerd puts before every shim binary name.
pub const SHIM_PREFIX: &str = "containerd-shim-";

/// A real shim's name parts: `containerd-shim-runc-v2` is inner `runc`, version `v2`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ShimName {
    pub inner: String,
    pub version: String,
}

impl ShimName {
    /// Parses a real shim's binary name; `None` for anything else, our own traced binaries
    /// included.
    pub fn parse_binary(name: &str) -> Option<ShimName> {
        let shim = ShimName::from_suffix(name.strip_prefix(SHIM_PREFIX)?)?;
        let digits = shim.version.strip_prefix('v')?;
        if shim.inner.starts_with("traced")
            || digits.is_empty()
            || !digits.bytes().all(|b| b.is_ascii_digit())
        {
            return None;
        }
        Some(shim)
    }

    /// Splits what follows a binary name's prefix, `<inner>-<version>` (`kata-qemu-v2`), at its
    /// last dash, as containerd joins a runtime name's last two parts. `None` when either part is
    /// empty.
    fn from_suffix(suffix: &str) -> Option<ShimName> {
        let (inner, version) = suffix.rsplit_once('-')?;
        (!inner.is_empty() && !version.is_empty()).then(|| ShimName {
            inner: inner.to_string(),
            version: version.to_string(),
        })
    }

    /// Parses a runtime name as containerd maps it to a binary: `io.containerd.runc.v2` is inner
    /// `runc`, version `v2` (and `io.containerd.traced-runc.v2` inner `traced-runc`, whose binary
    /// is the wrapper's link). `None` for a name of another form.
    pub fn parse_runtime(name: &str) -> Option<ShimName> {
        let (inner, version) = name.strip_prefix("io.containerd.")?.rsplit_once('.')?;
        (!inner.is_empty() && !version.is_empty()).then(|| ShimName {
            inner: inner.to_string(),
            version: version.to_string(),
        })
    }

    /// containerd's runtime name for the real shim (`io.containerd.runc.v2`).
    pub fn runtime(&self) -> String {
        format!("io.containerd.{}.{}", self.inner, self.version)
    }

    /// The real shim's binary (`containerd-shim-runc-v2`).
    pub fn binary(&self) -> String {
        format!("{SHIM_PREFIX}{}-{}", self.inner, self.version)
    }

    /// The traced runtime's name (`io.containerd.traced-runc.v2`).
    pub fn traced_runtime(&self) -> String {
        format!("io.containerd.traced-{}.{}", self.inner, self.version)
    }

    /// The traced runtime's binary, a symlink to the wrapper (`containerd-shim-traced-runc-v2`).
    pub fn traced_binary(&self) -> String {
        format!("{WRAPPER_PREFIX}{}-{}", self.inner, self.version)
    }

    /// The numeric part of the version (`v2` → 2).
    pub fn version_number(&self) -> u64 {
        self.version
            .strip_prefix('v')
            .and_then(|d| d.parse().ok())
            .unwrap_or(0)
    }
}

/// The name a traced runtime is registered under, as a CRI runtime handler (a RuntimeClass's
/// `handler`) and as a Docker runtime: `traced-<runtime>` (`traced-runc`, `traced-runsc`).
pub fn traced_handler(runtime: &str) -> String {
    format!("{TRACED_HANDLER_PREFIX}{runtime}")
}

/// The runtime a traced handler stands for (`traced-runc` → `runc`); `None` for a handler that
/// is not a traced one.
pub fn traced_runtime_of(handler: &str) -> Option<&str> {
    handler.strip_prefix(TRACED_HANDLER_PREFIX)
}

const TRACED_HANDLER_PREFIX: &str = "traced-";

/// What a wrapper binary name stands for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WrapperName {
    /// `io.containerd.traced-runc.v2`
    pub runtime: String,
    /// `containerd-shim-runc-v2`
    pub inner_binary: String,
}

impl WrapperName {
    /// `containerd-shim-traced-runc-v2` → runtime `io.containerd.traced-runc.v2`, inner
    /// `containerd-shim-runc-v2`. `None` for the wrapper's own name or anything else.
    pub fn from_binary_name(name: &str) -> Option<WrapperName> {
        let shim = ShimName::from_suffix(name.strip_prefix(WRAPPER_PREFIX)?)?;
        Some(WrapperName {
            runtime: shim.traced_runtime(),
            inner_binary: shim.binary(),
        })
    }
}

/// Whether `path` is a regular file someone may execute.
pub fn is_executable_file(path: &Path) -> bool {
    std::fs::metadata(path)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// The first executable `name` in the directories of a `PATH`-style list.
pub fn find_in_path(name: &str, path_var: &OsStr) -> Option<PathBuf> {
    std::env::split_paths(path_var)
        .map(|dir| dir.join(name))
        .find(|p| is_executable_file(p))
}

/// An executable named `name` on this process's `PATH` (or `name` itself if it is a path that
/// exists).
pub fn which(name: &str) -> Option<PathBuf> {
    if name.contains('/') {
        let path = PathBuf::from(name);
        return path.exists().then_some(path);
    }
    find_in_path(name, &std::env::var_os("PATH")?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runtime_names_map_to_the_binaries_containerd_runs() {
        let runc = ShimName::parse_runtime("io.containerd.runc.v2").unwrap();
        assert_eq!(runc.binary(), "containerd-shim-runc-v2");
        assert_eq!(runc.runtime(), "io.containerd.runc.v2");
        let traced = ShimName::parse_runtime("io.containerd.traced-kata-qemu.v2").unwrap();
        assert_eq!(traced.binary(), "containerd-shim-traced-kata-qemu-v2");
        for other in [
            "runc",
            "io.containerd.runc",
            "io.containerd..v2",
            "io.containerd.runc.",
        ] {
            assert_eq!(ShimName::parse_runtime(other), None, "{other}");
        }
    }

    #[test]
    fn traced_handlers_name_their_runtime() {
        assert_eq!(traced_handler("runsc"), "traced-runsc");
        assert_eq!(
            traced_runtime_of(&traced_handler("kata-qemu")),
            Some("kata-qemu")
        );
        assert_eq!(traced_runtime_of("runc"), None);
    }

    #[test]
    fn wrapper_names_map_to_runtime_and_inner_binary() {
        let n = WrapperName::from_binary_name("containerd-shim-traced-runc-v2").unwrap();
        assert_eq!(n.runtime, "io.containerd.traced-runc.v2");
        assert_eq!(n.inner_binary, "containerd-shim-runc-v2");
        let k = WrapperName::from_binary_name("containerd-shim-traced-kata-qemu-v2").unwrap();
        assert_eq!(k.runtime, "io.containerd.traced-kata-qemu.v2");
        assert_eq!(k.inner_binary, "containerd-shim-kata-qemu-v2");
        assert_eq!(WrapperName::from_binary_name(WRAPPER_BINARY), None);
        assert_eq!(
            WrapperName::from_binary_name("containerd-shim-traced--v2"),
            None
        );
        assert_eq!(
            WrapperName::from_binary_name("containerd-shim-traced-runc-"),
            None
        );
    }

    #[test]
    fn real_shim_names_round_trip_and_ours_are_not_real() {
        let s = ShimName::parse_binary("containerd-shim-runc-v2").unwrap();
        assert_eq!(s.runtime(), "io.containerd.runc.v2");
        assert_eq!(s.binary(), "containerd-shim-runc-v2");
        assert_eq!(s.traced_binary(), "containerd-shim-traced-runc-v2");
        let back = WrapperName::from_binary_name(&s.traced_binary()).unwrap();
        assert_eq!(back.runtime, s.traced_runtime());
        assert_eq!(back.inner_binary, s.binary());
        assert_eq!(
            ShimName::parse_binary("containerd-shim-traced-runc-v2"),
            None
        );
        assert_eq!(ShimName::parse_binary("containerd-shim-runc-vx"), None);
        assert_eq!(ShimName::parse_binary("containerd"), None);
    }

    #[test]
    fn find_in_path_takes_the_first_executable() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        std::fs::write(a.path().join("tool"), "").unwrap(); // not executable
        let exe = b.path().join("tool");
        std::fs::write(&exe, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).unwrap();
        let path = std::env::join_paths([a.path(), b.path()]).unwrap();
        assert_eq!(find_in_path("tool", &path), Some(exe));
        assert_eq!(find_in_path("absent", &path), None);
    }
}
