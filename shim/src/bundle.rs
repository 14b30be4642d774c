//! The files shimtrace keeps in a container's bundle (its trace, its identity, its proxy, the
//! `address` it points at the proxy) and the ones it reads there (`config.json`, the runc shim's
//! `options.json`), all through one careful
//! path: the bundle must be a private directory, no link is followed, no FIFO is waited on, reads
//! are bounded and writes are atomic (a new temp file renamed over the old).
//!
//! The proxy learns container ids and namespaces from requests, so a bundle it derives is
//! `<task root>/<namespace>/<id>` with each a single path component ([`task_bundle`]): a request
//! can never point it at another directory.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::safe_fs::{is_plain_name, Access, PrivateDir, SafeFsError};

/// The bundle containerd made for container `id` in namespace `ns` under `task_root`
/// (`<state>/io.containerd.runtime.v2.task`), if both are single path components.
pub fn task_bundle(task_root: &Path, ns: &str, id: &str) -> Option<PathBuf> {
    (is_plain_name(Path::new(ns)) && is_plain_name(Path::new(id)))
        .then(|| task_root.join(ns).join(id))
}

/// The first `max` bytes of the regular file `name` in `bundle`.
pub fn read(bundle: &Path, name: &str, max: u64) -> Option<Vec<u8>> {
    let mut bytes = Vec::new();
    PrivateDir::open(bundle)
        .ok()?
        .open_file(Path::new(name), Access::Read)
        .ok()?
        .take(max)
        .read_to_end(&mut bytes)
        .ok()?;
    Some(bytes)
}

/// The JSON file `name` in `bundle`, if it is there, at most `max` bytes and parses.
pub fn read_json<T: DeserializeOwned>(bundle: &Path, name: &str, max: u64) -> Option<T> {
    serde_json::from_slice(&read(bundle, name, max)?).ok()
}

/// Writes `value` as the JSON file `name` in `bundle`, atomically.
pub fn write_json<T: Serialize>(bundle: &Path, name: &str, value: &T) -> Result<(), SafeFsError> {
    let json = serde_json::to_vec(value).map_err(|e| SafeFsError::Io {
        path: bundle.join(name),
        source: std::io::Error::other(e),
    })?;
    write(bundle, name, &json)
}

/// Writes `bytes` as the file `name` in `bundle`, atomically (mode 0600).
pub fn write(bundle: &Path, name: &str, bytes: &[u8]) -> Result<(), SafeFsError> {
    let dir = PrivateDir::open(bundle)?;
    let mut suffix = [0u8; 8];
    let _ = getrandom::getrandom(&mut suffix);
    let tmp = PathBuf::from(format!(
        ".{name}.{}.{}",
        std::process::id(),
        hex::encode(suffix)
    ));
    let written = dir
        .open_file(&tmp, Access::CreateNew)
        .and_then(|mut file| {
            file.write_all(bytes).map_err(|source| SafeFsError::Io {
                path: bundle.join(&tmp),
                source,
            })
        })
        .and_then(|()| dir.rename(&tmp, Path::new(name)));
    if written.is_err() {
        let _ = dir.remove(&tmp);
    }
    written
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_bundles_are_single_components_under_the_root() {
        let root = Path::new("/run/containerd/io.containerd.runtime.v2.task");
        assert_eq!(
            task_bundle(root, "default", "c1"),
            Some(root.join("default/c1"))
        );
        for (ns, id) in [
            ("..", "x"),
            ("default", "../x"),
            ("default", "/etc"),
            ("a/b", "c"),
        ] {
            assert_eq!(task_bundle(root, ns, id), None, "{ns}/{id}");
        }
    }

    #[test]
    fn json_round_trips_and_reads_are_bounded() {
        let dir = tempfile::tempdir().unwrap();
        write_json(dir.path(), "x.json", &vec![1, 2, 3]).unwrap();
        assert_eq!(
            read_json::<Vec<u8>>(dir.path(), "x.json", 100),
            Some(vec![1, 2, 3])
        );
        assert_eq!(
            read_json::<Vec<u8>>(dir.path(), "x.json", 3),
            None,
            "cut short"
        );
        assert_eq!(read_json::<Vec<u8>>(dir.path(), "absent.json", 100), None);
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["x.json"], "no temp file left");
    }

    #[test]
    fn links_are_neither_read_nor_written_through() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("precious");
        std::fs::write(&target, "[1]").unwrap();
        let bundle = dir.path().join("bundle");
        std::fs::create_dir(&bundle).unwrap();
        std::os::unix::fs::symlink(&target, bundle.join("x.json")).unwrap();
        assert_eq!(read_json::<Vec<u8>>(&bundle, "x.json", 100), None);
        write_json(&bundle, "x.json", &vec![2]).unwrap();
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "[1]");
    }
}
