//! Container images without a registry: a local root filesystem packed as a docker-archive tar
//! (`manifest.json`, one image config, one layer), which `ctr images import` (CRI's `k8s.io`
//! namespace) and `docker load` both take, and the import itself ([`import_with_ctr`]).

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use serde_json::json;
use sha2::{Digest, Sha256};

/// The image the kubelet-style tests and `shimtrace install --check` run (after import it is
/// `docker.io/local/busybox:1` in containerd, `local/busybox:1` in Docker).
pub const WORKLOAD_TAG: &str = "local/busybox:1";
/// The pod sandbox ("pause") image: the same rootfs, whose process waits until it is stopped.
pub const SANDBOX_TAG: &str = "local/sandbox:1";

macro_rules! standard_path {
    () => {
        "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    };
}
/// The conventional Linux `PATH`: a container's when neither its image nor its spec sets one, and
/// the daemons' when this process has none.
pub const STANDARD_PATH: &str = standard_path!();
/// [`STANDARD_PATH`] as a container's environment entry.
pub const DEFAULT_PATH_ENV: &str = concat!("PATH=", standard_path!());
/// The sandbox's process: sleeps until SIGTERM, then exits 0 (what the pause container does).
pub const SANDBOX_COMMAND: [&str; 3] = [
    "/bin/sh",
    "-c",
    "trap 'exit 0' TERM; while :; do sleep 1; done",
];

/// The name containerd gives an imported docker-archive tag (`local/busybox:1` →
/// `docker.io/local/busybox:1`).
pub fn containerd_reference(tag: &str) -> String {
    match tag.split_once('/') {
        Some((host, _)) if host.contains('.') || host.contains(':') => tag.to_string(),
        Some(_) => format!("docker.io/{tag}"),
        None => format!("docker.io/library/{tag}"),
    }
}

/// Why an image could not be written.
#[derive(Debug, thiserror::Error)]
#[error("cannot write image {tag} from {rootfs} to {out}: {source}")]
pub struct ImageError {
    pub tag: String,
    pub rootfs: PathBuf,
    pub out: PathBuf,
    #[source]
    pub source: io::Error,
}

/// CRI's containerd namespace.
pub const CRI_NAMESPACE: &str = "k8s.io";

/// Why `ctr images import` did not import an archive.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("cannot run {ctr}: {source} (install containerd's ctr, or name it)")]
    Run {
        ctr: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("`{ctr} --address {address} -n {namespace} images import {archive}` failed with {status}: {stderr}")]
    Failed {
        ctr: PathBuf,
        address: PathBuf,
        namespace: String,
        archive: PathBuf,
        status: std::process::ExitStatus,
        stderr: String,
    },
}

/// Imports a docker-archive tar into containerd at `address` (gRPC socket), namespace `namespace`,
/// with `ctr images import` (which also unpacks it for the default snapshotter).
pub fn import_with_ctr(
    ctr: &Path,
    address: &Path,
    namespace: &str,
    archive: &Path,
) -> Result<(), ImportError> {
    let output = std::process::Command::new(ctr)
        .arg("--address")
        .arg(address)
        .args(["-n", namespace, "images", "import"])
        .arg(archive)
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|source| ImportError::Run {
            ctr: ctr.to_path_buf(),
            source,
        })?;
    if output.status.success() {
        return Ok(());
    }
    Err(ImportError::Failed {
        ctr: ctr.to_path_buf(),
        address: address.to_path_buf(),
        namespace: namespace.to_string(),
        archive: archive.to_path_buf(),
        status: output.status,
        stderr: String::from_utf8_lossy(&output.stderr).trim().to_string(),
    })
}

/// Writes `rootfs` as a one-layer docker-archive tar at `out`, tagged `tag`, whose default command
/// is `command`.
pub fn write_docker_archive(
    rootfs: &Path,
    tag: &str,
    command: &[&str],
    out: &Path,
) -> Result<(), ImageError> {
    let err = |source| ImageError {
        tag: tag.to_string(),
        rootfs: rootfs.to_path_buf(),
        out: out.to_path_buf(),
        source,
    };
    let layer = layer_tar(rootfs).map_err(err)?;
    let layer_digest = hex::encode(Sha256::digest(&layer));
    let config = serde_json::to_vec(&json!({
        "architecture": oci_arch(),
        "os": "linux",
        "config": {
            "Cmd": command,
            "Env": [DEFAULT_PATH_ENV],
            "WorkingDir": "/",
        },
        "rootfs": {"type": "layers", "diff_ids": [format!("sha256:{layer_digest}")]},
    }))
    .expect("a JSON value serialises");
    let config_name = format!("{}.json", hex::encode(Sha256::digest(&config)));
    let layer_name = format!("{layer_digest}/layer.tar");
    let manifest = serde_json::to_vec(&json!([{
        "Config": config_name,
        "RepoTags": [tag],
        "Layers": [layer_name],
    }]))
    .expect("a JSON value serialises");

    let tmp = out.with_extension("tmp");
    let file = fs::File::create(&tmp).map_err(err)?;
    let mut archive = tar::Builder::new(file);
    append_bytes(&mut archive, &config_name, &config).map_err(err)?;
    append_bytes(&mut archive, &layer_name, &layer).map_err(err)?;
    append_bytes(&mut archive, "manifest.json", &manifest).map_err(err)?;
    archive
        .into_inner()
        .and_then(|f| f.sync_all())
        .map_err(err)?;
    fs::rename(&tmp, out).map_err(err)
}

/// The rootfs as an uncompressed tar, symlinks kept as links (busybox's applets are links).
fn layer_tar(rootfs: &Path) -> io::Result<Vec<u8>> {
    let mut layer = tar::Builder::new(Vec::new());
    layer.follow_symlinks(false);
    layer.mode(tar::HeaderMode::Deterministic);
    layer.append_dir_all(".", rootfs)?;
    layer.into_inner()
}

fn append_bytes<W: io::Write>(
    archive: &mut tar::Builder<W>,
    name: &str,
    bytes: &[u8],
) -> io::Result<()> {
    let mut header = tar::Header::new_gnu();
    header.set_size(bytes.len() as u64);
    header.set_mode(0o644);
    header.set_mtime(0);
    header.set_cksum();
    archive.append_data(&mut header, name, bytes)
}

/// The OCI (Go) architecture name of this machine (`amd64`, `arm64`, ...): what an image's config
/// and an index's platforms say.
pub fn oci_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn archive_names_its_config_and_layer_by_digest() {
        let dir = tempfile::tempdir().unwrap();
        let rootfs = dir.path().join("rootfs");
        fs::create_dir_all(rootfs.join("bin")).unwrap();
        fs::write(rootfs.join("bin/busybox"), b"binary").unwrap();
        std::os::unix::fs::symlink("busybox", rootfs.join("bin/sh")).unwrap();
        let out = dir.path().join("image.tar");
        write_docker_archive(&rootfs, WORKLOAD_TAG, &["/bin/sh"], &out).unwrap();

        let mut entries = std::collections::BTreeMap::new();
        let mut archive = tar::Archive::new(fs::File::open(&out).unwrap());
        for entry in archive.entries().unwrap() {
            let mut entry = entry.unwrap();
            let name = entry.path().unwrap().display().to_string();
            let mut bytes = Vec::new();
            entry.read_to_end(&mut bytes).unwrap();
            entries.insert(name, bytes);
        }
        let manifest: serde_json::Value =
            serde_json::from_slice(&entries["manifest.json"]).unwrap();
        assert_eq!(manifest[0]["RepoTags"][0], WORKLOAD_TAG);
        let config_name = manifest[0]["Config"].as_str().unwrap();
        let layer_name = manifest[0]["Layers"][0].as_str().unwrap();
        let layer = &entries[layer_name];
        let config: serde_json::Value = serde_json::from_slice(&entries[config_name]).unwrap();
        assert_eq!(
            config["rootfs"]["diff_ids"][0],
            format!("sha256:{}", hex::encode(Sha256::digest(layer)))
        );
        let mut names = Vec::new();
        let mut links = Vec::new();
        for entry in tar::Archive::new(&layer[..]).entries().unwrap() {
            let entry = entry.unwrap();
            let path = entry.path().unwrap().display().to_string();
            if entry.header().entry_type().is_symlink() {
                links.push(path.clone());
            }
            names.push(path);
        }
        assert!(
            names.iter().any(|n| n.ends_with("bin/busybox")),
            "{names:?}"
        );
        assert!(links.iter().any(|n| n.ends_with("bin/sh")), "{links:?}");
    }

    #[test]
    fn references_follow_dockers_normalisation() {
        assert_eq!(
            containerd_reference("local/busybox:1"),
            "docker.io/local/busybox:1"
        );
        assert_eq!(
            containerd_reference("busybox:1"),
            "docker.io/library/busybox:1"
        );
        assert_eq!(
            containerd_reference("registry.local:5000/x:1"),
            "registry.local:5000/x:1"
        );
    }
}
