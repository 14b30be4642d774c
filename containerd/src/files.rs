//! Files install and the lab write: the error that names what was done to which path, and
//! replacing a file atomically (whoever reads it sees the old content or the new, never a part).

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// A file or directory that could not be read, written or removed, with what was being done.
#[derive(Debug, thiserror::Error)]
#[error("{context} {path}: {source}")]
pub struct FileError {
    /// What was being done ("cannot write", "cannot remove", …).
    pub context: &'static str,
    pub path: PathBuf,
    #[source]
    pub source: io::Error,
}

/// The [`FileError`] of `context` on `path`, for `map_err`.
pub fn io_err(context: &'static str, path: &Path) -> impl FnOnce(io::Error) -> FileError {
    let path = path.to_path_buf();
    move |source| FileError {
        context,
        path,
        source,
    }
}

/// Appended to the target's path to name the temporary file written beside it (in the same
/// directory, so that the rename stays on one file system).
const TMP_SUFFIX: &str = ".shimtrace-tmp";

/// The temporary file [`replace_file`] writes before renaming it over `path`.
fn tmp_path(path: &Path) -> PathBuf {
    let mut tmp = path.as_os_str().to_os_string();
    tmp.push(TMP_SUFFIX);
    PathBuf::from(tmp)
}

/// Replaces `path` with a regular file holding `content`, of mode `mode` if given, else of the mode
/// of the regular file it replaces (a config kept private stays private), else the default the
/// umask leaves. The content goes to [`tmp_path`] first and is synced to disk; that
/// file is then renamed over `path`, so a symlink at `path` is itself replaced rather than written
/// through. If a step fails the temporary file is removed, and the error names the step and the
/// path: "cannot write <tmp>", "cannot set the mode of <tmp>" or "cannot replace <path>".
pub fn replace_file(
    path: &Path,
    content: impl AsRef<[u8]>,
    mode: Option<u32>,
) -> Result<(), FileError> {
    let tmp = tmp_path(path);
    let mode = mode.or_else(|| {
        fs::symlink_metadata(path)
            .ok()
            .filter(|m| m.is_file())
            .map(|m| m.permissions().mode() & 0o7777)
    });
    let result = write_tmp(&tmp, content.as_ref(), mode)
        .and_then(|()| fs::rename(&tmp, path).map_err(io_err("cannot replace", path)));
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

fn write_tmp(tmp: &Path, content: &[u8], mode: Option<u32>) -> Result<(), FileError> {
    // A leftover of an interrupted run goes first, so that the file is created afresh: never a
    // symlink planted at this name written through, nor an old file's mode or owner kept.
    match fs::remove_file(tmp) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => {
            return Err(io_err("cannot write", tmp)(e))
        }
        _ => {}
    }
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode.unwrap_or(0o666))
        .open(tmp)
        .map_err(io_err("cannot write", tmp))?;
    file.write_all(content)
        .and_then(|()| file.sync_all())
        .map_err(io_err("cannot write", tmp))?;
    if let Some(mode) = mode {
        // Creating the file applied the umask; the caller asked for exactly this mode.
        file.set_permissions(fs::Permissions::from_mode(mode))
            .map_err(io_err("cannot set the mode of", tmp))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn mode_of(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o7777
    }

    /// Makes `link` a symlink to a file in `dir` holding "untouched\n", and returns that file.
    fn link_to_a_bystander(dir: &Path, link: &Path) -> PathBuf {
        let bystander = dir.join("elsewhere");
        fs::write(&bystander, "untouched\n").unwrap();
        symlink(&bystander, link).unwrap();
        bystander
    }

    #[test]
    fn replaces_the_content_and_sets_the_mode() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.toml");
        fs::write(&path, "old content that is longer than the new\n").unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();

        // No mode asked for: the file keeps its own.
        replace_file(&path, "kept private\n", None).unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), "kept private\n");
        assert_eq!(mode_of(&path), 0o600);

        replace_file(&path, "new\n", Some(0o755)).unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), "new\n");
        assert_eq!(mode_of(&path), 0o755);

        replace_file(&path, b"again\n", Some(0o644)).unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), "again\n");
        assert_eq!(mode_of(&path), 0o644);
        assert!(!tmp_path(&path).exists());
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["config.toml"]);
    }

    #[test]
    fn creates_a_missing_file_with_the_default_mode() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        replace_file(&path, "{}\n", None).unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), "{}\n");
        // Whatever the umask, nobody gets execute permission a file was not asked to have.
        assert_eq!(mode_of(&path) & 0o111, 0);
    }

    #[test]
    fn a_symlink_at_the_path_is_replaced_not_written_through() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config");
        let elsewhere = link_to_a_bystander(dir.path(), &path);
        fs::set_permissions(&elsewhere, fs::Permissions::from_mode(0o751)).unwrap();
        // The link lends no mode: the file is made with the default one.
        replace_file(&path, "{}\n", None).unwrap();
        assert_eq!(mode_of(&path) & 0o111, 0);
        assert_eq!(fs::read_to_string(&elsewhere).unwrap(), "untouched\n");
        fs::remove_file(&path).unwrap();
        symlink(&elsewhere, &path).unwrap();

        replace_file(&path, "#!/bin/sh\n", Some(0o755)).unwrap();
        assert!(fs::symlink_metadata(&path).unwrap().is_file());
        assert_eq!(fs::read_to_string(&path).unwrap(), "#!/bin/sh\n");
        assert_eq!(fs::read_to_string(&elsewhere).unwrap(), "untouched\n");
    }

    #[test]
    fn a_symlink_at_the_temporary_name_is_not_written_through() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("daemon.json");
        let elsewhere = link_to_a_bystander(dir.path(), &tmp_path(&path));

        replace_file(&path, "{}\n", None).unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), "{}\n");
        assert_eq!(fs::read_to_string(&elsewhere).unwrap(), "untouched\n");
        assert!(fs::symlink_metadata(tmp_path(&path)).is_err());
    }

    #[test]
    fn a_failed_rename_says_so_and_leaves_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("taken");
        fs::create_dir(&path).unwrap();
        fs::write(path.join("inside"), "kept\n").unwrap();

        let err = replace_file(&path, "content\n", Some(0o644)).unwrap_err();
        assert_eq!(err.context, "cannot replace");
        assert_eq!(err.path, path);
        assert!(
            err.to_string()
                .starts_with(&format!("cannot replace {}: ", path.display())),
            "{err}"
        );
        assert!(fs::symlink_metadata(tmp_path(&path)).is_err());
        assert_eq!(fs::read_to_string(path.join("inside")).unwrap(), "kept\n");
    }

    #[test]
    fn a_failed_write_names_the_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("missing-dir").join("config.toml");
        let err = replace_file(&path, "content\n", None).unwrap_err();
        assert_eq!(err.context, "cannot write");
        assert_eq!(err.path, tmp_path(&path));
        assert_eq!(err.source.kind(), io::ErrorKind::NotFound);
        assert!(!path.exists());
    }

    #[test]
    fn the_temporary_name_is_beside_the_target() {
        assert_eq!(
            tmp_path(Path::new("/etc/containerd/config.toml")),
            Path::new("/etc/containerd/config.toml.shimtrace-tmp")
        );
    }
}
