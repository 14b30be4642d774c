//! Opening files in directories that other local users might try to tamper with: the spool, the
//! run directory and a container's bundle.
//!
//! The shim runs as containerd's user (root on most nodes). A directory it writes in is used only
//! if it is *private*: not a symbolic link, owned by this process's user or by root, and writable
//! by nobody else (no group or world write bit; the sticky bit does not make a shared directory
//! acceptable, since others could still create names in it before we do). The directory is opened
//! once and checked on that descriptor, and files are opened relative to it, so swapping a path
//! component after the check gains nothing. Files are opened with `O_NOFOLLOW` and `O_NONBLOCK` and
//! must then be regular files: a planted link is refused instead of written through, and a FIFO
//! cannot make a writer wait in `open` forever. New files are created mode 0600, with `O_EXCL`
//! where the name is meant to be new.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::{FileStat, Mode, SFlag};

/// Why a directory or file was not used.
#[derive(Debug, thiserror::Error)]
pub enum SafeFsError {
    #[error(
        "{path} is a symbolic link, which shimtrace does not follow here: name the real directory"
    )]
    Symlink { path: PathBuf },
    #[error("{path} is {kind}, not a directory")]
    NotADirectory { path: PathBuf, kind: &'static str },
    #[error("{path} is owned by uid {owner}, neither this process's user (uid {euid}) nor root: chown it")]
    Owner {
        path: PathBuf,
        owner: u32,
        euid: u32,
    },
    #[error("{path} is writable by group or others (mode {mode:04o}): chmod go-w it")]
    Writable { path: PathBuf, mode: u32 },
    #[error("{path} is {kind}, not a regular file; remove it")]
    NotAFile { path: PathBuf, kind: &'static str },
    #[error("{path} is not a plain file name")]
    BadName { path: PathBuf },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// How [`PrivateDir::open`] opens a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Read an existing file.
    Read,
    /// Read and write in place, creating it (0600) if missing: a file several processes share.
    Shared,
    /// Append, creating it (0600) if missing.
    Append,
    /// Write a file that must not exist yet (0600).
    CreateNew,
}

/// A directory checked to be private, held open so that later opens resolve inside it.
#[derive(Debug)]
pub struct PrivateDir {
    fd: OwnedFd,
    path: PathBuf,
}

/// Creates `dir` (and missing parents) mode 0700 unless it exists, then opens and checks it.
pub fn ensure_private_dir(dir: &Path) -> Result<PrivateDir, SafeFsError> {
    // A link is refused before anything is created through it.
    if std::fs::symlink_metadata(dir).is_ok_and(|m| m.file_type().is_symlink()) {
        return Err(SafeFsError::Symlink {
            path: dir.to_path_buf(),
        });
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|source| SafeFsError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
    PrivateDir::open(dir)
}

/// Checks that `dir` exists and is private.
#[cfg(test)]
fn check_private_dir(dir: &Path) -> Result<(), SafeFsError> {
    PrivateDir::open(dir).map(drop)
}

/// Opens the file at `path`, whose directory must be private (see [`PrivateDir::open_file`]).
pub fn open_private_file(path: &Path, access: Access) -> Result<File, SafeFsError> {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return Err(SafeFsError::BadName {
            path: path.to_path_buf(),
        });
    };
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    PrivateDir::open(dir)?.open_file(Path::new(name), access)
}

impl PrivateDir {
    /// Opens the existing directory `dir` and checks it is private.
    pub fn open(dir: &Path) -> Result<PrivateDir, SafeFsError> {
        let path = dir.to_path_buf();
        let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        let fd = match nix::fcntl::open(dir, flags, Mode::empty()) {
            // SAFETY: `open` just returned this descriptor, which nothing else owns.
            Ok(fd) => unsafe { OwnedFd::from_raw_fd(fd) },
            Err(errno) => {
                return Err(match std::fs::symlink_metadata(dir) {
                    Ok(m) if m.file_type().is_symlink() => SafeFsError::Symlink { path },
                    Ok(m) if !m.is_dir() => SafeFsError::NotADirectory {
                        path,
                        kind: kind_of(SFlag::from_bits_truncate(
                            std::os::unix::fs::MetadataExt::mode(&m),
                        )),
                    },
                    _ => SafeFsError::Io {
                        path,
                        source: errno.into(),
                    },
                })
            }
        };
        let stat = nix::sys::stat::fstat(fd.as_raw_fd()).map_err(|e| SafeFsError::Io {
            path: path.clone(),
            source: e.into(),
        })?;
        check_owner(&path, &stat)?;
        let mode = stat.st_mode & 0o7777;
        if mode & 0o022 != 0 {
            return Err(SafeFsError::Writable { path, mode });
        }
        Ok(PrivateDir { fd, path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Opens `name` (a single file name) in this directory, never through a link and never
    /// waiting on a FIFO; the result is a regular file owned by this process's user or root.
    pub fn open_file(&self, name: &Path, access: Access) -> Result<File, SafeFsError> {
        let path = self.path.join(name);
        if !is_plain_name(name) {
            return Err(SafeFsError::BadName { path });
        }
        let base = OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC;
        let flags = base
            | match access {
                Access::Read => OFlag::O_RDONLY,
                Access::Shared => OFlag::O_RDWR | OFlag::O_CREAT,
                Access::Append => OFlag::O_WRONLY | OFlag::O_APPEND | OFlag::O_CREAT,
                Access::CreateNew => OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL,
            };
        let opened = nix::fcntl::openat(
            Some(self.fd.as_raw_fd()),
            name,
            flags,
            Mode::from_bits_truncate(0o600),
        );
        let file = match opened {
            // SAFETY: `openat` just returned this descriptor, which nothing else owns.
            Ok(fd) => unsafe { File::from_raw_fd(fd) },
            Err(errno) => return Err(self.explain(name, errno)),
        };
        let stat = nix::sys::stat::fstat(file.as_raw_fd()).map_err(|e| SafeFsError::Io {
            path: path.clone(),
            source: e.into(),
        })?;
        let kind = SFlag::from_bits_truncate(stat.st_mode) & SFlag::S_IFMT;
        if kind != SFlag::S_IFREG {
            return Err(SafeFsError::NotAFile {
                path,
                kind: kind_of(kind),
            });
        }
        check_owner(&path, &stat)?;
        // Only there to make opening a FIFO fail fast; regular file I/O ignores it, but the
        // descriptor is handed on, so leave it as a plain open would.
        let _ = nix::fcntl::fcntl(
            file.as_raw_fd(),
            nix::fcntl::FcntlArg::F_SETFL(flags & (OFlag::O_APPEND)),
        );
        Ok(file)
    }

    /// Renames `from` to `to`, both names in this directory (a link at `to` is replaced, not
    /// followed).
    pub fn rename(&self, from: &Path, to: &Path) -> Result<(), SafeFsError> {
        for name in [from, to] {
            if !is_plain_name(name) {
                return Err(SafeFsError::BadName {
                    path: self.path.join(name),
                });
            }
        }
        let fd = Some(self.fd.as_raw_fd());
        nix::fcntl::renameat(fd, from, fd, to).map_err(|e| SafeFsError::Io {
            path: self.path.join(to),
            source: e.into(),
        })
    }

    /// Removes the file `name` in this directory (a link is removed, not followed).
    pub fn remove(&self, name: &Path) -> Result<(), SafeFsError> {
        if !is_plain_name(name) {
            return Err(SafeFsError::BadName {
                path: self.path.join(name),
            });
        }
        nix::unistd::unlinkat(
            Some(self.fd.as_raw_fd()),
            name,
            nix::unistd::UnlinkatFlags::NoRemoveDir,
        )
        .map_err(|e| SafeFsError::Io {
            path: self.path.join(name),
            source: e.into(),
        })
    }

    /// Makes `name` in this directory a symbolic link to `target`, unless it is one already; an
    /// entry of another kind or target is replaced atomically (a new link renamed over it), so
    /// that a concurrent reader finds the old entry or the new link, never none.
    pub fn ensure_symlink(&self, name: &Path, target: &Path) -> Result<(), SafeFsError> {
        if !is_plain_name(name) {
            return Err(SafeFsError::BadName {
                path: self.path.join(name),
            });
        }
        let fd = self.fd.as_raw_fd();
        if nix::fcntl::readlinkat(Some(fd), name).is_ok_and(|t| Path::new(&t) == target) {
            return Ok(());
        }
        let mut tmp = name.as_os_str().to_owned();
        tmp.push(format!(".tmp-{}", std::process::id()));
        let tmp = Path::new(&tmp);
        let io = |path: &Path, e: Errno| SafeFsError::Io {
            path: self.path.join(path),
            source: e.into(),
        };
        // A leftover of this pid's earlier life (pids are reused) would fail the link.
        let _ = self.remove(tmp);
        nix::unistd::symlinkat(target, Some(fd), tmp).map_err(|e| io(tmp, e))?;
        self.rename(tmp, name).inspect_err(|_| {
            let _ = self.remove(tmp);
        })
    }

    /// The error for a failed open of `name`: a link or a special file, named as such.
    fn explain(&self, name: &Path, errno: Errno) -> SafeFsError {
        let path = self.path.join(name);
        match nix::sys::stat::fstatat(
            Some(self.fd.as_raw_fd()),
            name,
            AtFlags::AT_SYMLINK_NOFOLLOW,
        ) {
            Ok(stat) => {
                let kind = SFlag::from_bits_truncate(stat.st_mode) & SFlag::S_IFMT;
                if kind == SFlag::S_IFLNK {
                    SafeFsError::Symlink { path }
                } else if kind != SFlag::S_IFREG {
                    SafeFsError::NotAFile {
                        path,
                        kind: kind_of(kind),
                    }
                } else {
                    SafeFsError::Io {
                        path,
                        source: errno.into(),
                    }
                }
            }
            Err(_) => SafeFsError::Io {
                path,
                source: errno.into(),
            },
        }
    }
}

/// One normal path component: no separator, not `.` or `..`, not empty.
pub fn is_plain_name(name: &Path) -> bool {
    let mut components = name.components();
    matches!(
        (components.next(), components.next()),
        (Some(std::path::Component::Normal(_)), None)
    ) && !name.as_os_str().as_encoded_bytes().contains(&b'/')
}

fn check_owner(path: &Path, stat: &FileStat) -> Result<(), SafeFsError> {
    let euid = nix::unistd::geteuid().as_raw();
    if stat.st_uid != euid && stat.st_uid != 0 {
        return Err(SafeFsError::Owner {
            path: path.to_path_buf(),
            owner: stat.st_uid,
            euid,
        });
    }
    Ok(())
}

/// "a FIFO", "a directory", … for messages.
fn kind_of(kind: SFlag) -> &'static str {
    match kind & SFlag::S_IFMT {
        SFlag::S_IFIFO => "a FIFO",
        SFlag::S_IFDIR => "a directory",
        SFlag::S_IFLNK => "a symbolic link",
        SFlag::S_IFSOCK => "a socket",
        SFlag::S_IFCHR => "a character device",
        SFlag::S_IFBLK => "a block device",
        SFlag::S_IFREG => "a regular file",
        _ => "not a regular file",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::unix::fs::{symlink, PermissionsExt};

    fn private(path: &Path) {
        std::fs::DirBuilder::new().mode(0o700).create(path).unwrap();
    }

    /// A private directory `d` in a fresh temp dir, opened: the temp dir, its path, and it.
    fn open_private_dir() -> (tempfile::TempDir, PathBuf, PrivateDir) {
        let tmp = tempfile::tempdir().unwrap();
        let dir_path = tmp.path().join("d");
        private(&dir_path);
        let dir = PrivateDir::open(&dir_path).unwrap();
        (tmp, dir_path, dir)
    }

    #[test]
    fn a_symlink_is_made_kept_and_replaced_atomically() {
        use std::os::unix::fs::MetadataExt;
        let tmp = tempfile::tempdir().unwrap();
        let dir = ensure_private_dir(&tmp.path().join("links")).unwrap();
        let link = dir.path().join("runc");
        dir.ensure_symlink(Path::new("runc"), Path::new("/usr/bin/runsc"))
            .unwrap();
        assert_eq!(
            std::fs::read_link(&link).unwrap(),
            Path::new("/usr/bin/runsc")
        );
        let before = std::fs::symlink_metadata(&link).unwrap().ino();
        // Already right: left as it is.
        dir.ensure_symlink(Path::new("runc"), Path::new("/usr/bin/runsc"))
            .unwrap();
        assert_eq!(std::fs::symlink_metadata(&link).unwrap().ino(), before);
        // Another target, or a planted file: replaced by the link.
        dir.ensure_symlink(Path::new("runc"), Path::new("/opt/runsc"))
            .unwrap();
        assert_eq!(std::fs::read_link(&link).unwrap(), Path::new("/opt/runsc"));
        std::fs::remove_file(&link).unwrap();
        std::fs::write(&link, "planted").unwrap();
        dir.ensure_symlink(Path::new("runc"), Path::new("/opt/runsc"))
            .unwrap();
        assert_eq!(std::fs::read_link(&link).unwrap(), Path::new("/opt/runsc"));
        // A temporary link left by an earlier process with this pid is not in the way.
        let leftover = dir.path().join(format!("runc.tmp-{}", std::process::id()));
        std::fs::write(&leftover, "stale").unwrap();
        dir.ensure_symlink(Path::new("runc"), Path::new("/usr/bin/runsc"))
            .unwrap();
        assert_eq!(
            std::fs::read_link(&link).unwrap(),
            Path::new("/usr/bin/runsc")
        );
        // Nothing else is left in the directory; a path is no name.
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["runc"]);
        assert!(matches!(
            dir.ensure_symlink(Path::new("../runc"), Path::new("/x")),
            Err(SafeFsError::BadName { .. })
        ));
    }

    #[test]
    fn private_dirs_are_created_0700_and_existing_ones_checked() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("a").join("b");
        ensure_private_dir(&dir).unwrap();
        let mode = std::fs::metadata(&dir).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode, 0o700);
        // Group read is fine: others may read what the shim writes only if the operator says so.
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o750)).unwrap();
        check_private_dir(&dir).unwrap();
        for (mode, ok) in [
            (0o1777, false),
            (0o1770, false),
            (0o720, false),
            (0o711, true),
        ] {
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(mode)).unwrap();
            assert_eq!(check_private_dir(&dir).is_ok(), ok, "{mode:o}");
        }
        let file = tmp.path().join("file");
        std::fs::write(&file, "").unwrap();
        let err = ensure_private_dir(&file).unwrap_err().to_string();
        assert!(
            err.contains("not a directory") || err.contains("File exists"),
            "{err}"
        );
        // A dangling link is refused as a link, not created through.
        let dangling = tmp.path().join("dangling");
        symlink(tmp.path().join("nowhere"), &dangling).unwrap();
        let err = ensure_private_dir(&dangling).unwrap_err().to_string();
        assert!(err.contains("symbolic link"), "{err}");
        assert!(!tmp.path().join("nowhere").exists());
    }

    #[test]
    fn files_open_only_as_regular_files_of_the_directory_itself() {
        let (tmp, dir_path, dir) = open_private_dir();

        let mut new = dir.open_file(Path::new("new"), Access::CreateNew).unwrap();
        new.write_all(b"one").unwrap();
        let mode = std::fs::metadata(dir_path.join("new"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(dir.open_file(Path::new("new"), Access::CreateNew).is_err());
        let mut appended = dir.open_file(Path::new("new"), Access::Append).unwrap();
        appended.write_all(b" two").unwrap();
        let mut text = String::new();
        dir.open_file(Path::new("new"), Access::Read)
            .unwrap()
            .read_to_string(&mut text)
            .unwrap();
        assert_eq!(text, "one two");

        let victim = tmp.path().join("victim");
        std::fs::write(&victim, "untouched").unwrap();
        symlink(&victim, dir_path.join("link")).unwrap();
        for access in [
            Access::Read,
            Access::Shared,
            Access::Append,
            Access::CreateNew,
        ] {
            let err = dir
                .open_file(Path::new("link"), access)
                .unwrap_err()
                .to_string();
            assert!(err.contains("symbolic link"), "{access:?}: {err}");
        }
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "untouched");

        nix::unistd::mkfifo(&dir_path.join("fifo"), Mode::from_bits_truncate(0o600)).unwrap();
        for access in [Access::Read, Access::Shared, Access::Append] {
            let err = dir
                .open_file(Path::new("fifo"), access)
                .unwrap_err()
                .to_string();
            assert!(err.contains("a FIFO"), "{access:?}: {err}");
        }
        std::fs::create_dir(dir_path.join("sub")).unwrap();
        let err = dir.open_file(Path::new("sub"), Access::Read).unwrap_err();
        assert!(err.to_string().contains("a directory"), "{err}");

        for name in ["../victim", "/etc/passwd", "..", ".", ""] {
            assert!(
                matches!(
                    dir.open_file(Path::new(name), Access::Read),
                    Err(SafeFsError::BadName { .. })
                ),
                "{name}"
            );
        }
    }

    #[test]
    fn rename_replaces_a_link_instead_of_writing_through_it() {
        let (tmp, dir_path, dir) = open_private_dir();
        let victim = tmp.path().join("victim");
        std::fs::write(&victim, "untouched").unwrap();
        symlink(&victim, dir_path.join("target")).unwrap();
        dir.open_file(Path::new("tmp"), Access::CreateNew)
            .unwrap()
            .write_all(b"new")
            .unwrap();
        dir.rename(Path::new("tmp"), Path::new("target")).unwrap();
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "untouched");
        assert_eq!(
            std::fs::read_to_string(dir_path.join("target")).unwrap(),
            "new"
        );
        dir.remove(Path::new("target")).unwrap();
        assert!(!dir_path.join("target").exists());
    }

    #[test]
    fn open_private_file_checks_the_directory_it_is_in() {
        let tmp = tempfile::tempdir().unwrap();
        let shared = tmp.path().join("shared");
        private(&shared);
        std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o1777)).unwrap();
        let err = open_private_file(&shared.join("log"), Access::Append).unwrap_err();
        assert!(err.to_string().contains("writable by"), "{err}");
        assert!(!shared.join("log").exists());
        let own = tmp.path().join("own");
        private(&own);
        open_private_file(&own.join("log"), Access::Append).unwrap();
        assert!(own.join("log").is_file());
    }
}
