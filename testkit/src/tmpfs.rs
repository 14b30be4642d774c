//! A tmpfs mounted for the life of a value: containerd's state dir and the proxies' run dir live on
//! tmpfs on real nodes (`/run`), and the bench measures them there.

use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};

/// A tmpfs that could not be set up.
#[derive(Debug, thiserror::Error)]
#[error("{action}: {source}")]
pub struct TmpfsError {
    pub action: String,
    #[source]
    pub source: std::io::Error,
}

/// A tmpfs at `path`, detached again when dropped (lazily, so a process still inside cannot keep
/// it from going).
#[derive(Debug)]
pub struct TmpfsMount {
    path: PathBuf,
}

impl TmpfsMount {
    /// Creates `path` if needed and mounts a new tmpfs (mode 0711) on it. Needs root.
    pub fn new(path: &Path) -> Result<TmpfsMount, TmpfsError> {
        std::fs::create_dir_all(path).map_err(|source| TmpfsError {
            action: format!("creating {}", path.display()),
            source,
        })?;
        mount(
            Some("tmpfs"),
            path,
            Some("tmpfs"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            Some("mode=0711"),
        )
        .map_err(|errno| TmpfsError {
            action: format!("mounting a tmpfs on {} (run as root)", path.display()),
            source: errno.into(),
        })?;
        Ok(TmpfsMount {
            path: path.to_path_buf(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TmpfsMount {
    fn drop(&mut self) {
        let _ = umount2(&self.path, MntFlags::MNT_DETACH);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mounts_a_tmpfs_and_detaches_it_on_drop() {
        if !nix::unistd::geteuid().is_root() {
            panic!("this test mounts a tmpfs: run it as root (scripts/test does)");
        }
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("t");
        let is_tmpfs = |p: &Path| {
            nix::sys::statfs::statfs(p).unwrap().filesystem_type() == nix::sys::statfs::TMPFS_MAGIC
        };
        {
            let mounted = TmpfsMount::new(&target).unwrap();
            assert!(is_tmpfs(mounted.path()));
            std::fs::write(target.join("f"), b"x").unwrap();
        }
        assert!(!is_tmpfs(&target));
        assert!(!target.join("f").exists(), "the file lived on the tmpfs");
    }
}
