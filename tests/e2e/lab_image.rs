//! The driver (and `shimtrace lab --image`) running an image already in containerd: a one-layer OCI
//! image built here from a busybox rootfs and imported with `ctr images import` into a private
//! containerd 1.6.20, run under runc (and gVisor in the lab) through an overlayfs snapshot that is removed afterwards.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use shimtrace_containerd::{oci_arch, Containerd, ContainerdError, RunSpec};
use shimtrace_testkit::cli::parse_args;
use shimtrace_testkit::containerd::{ContainerdVersion, Options, TestContainerd};

const IMAGE: &str = "shimtrace/busybox:test";
const IMAGE_ENV: &str = "SHIMTRACE_FROM_IMAGE=yes";

fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// Writes an OCI image layout tarball holding `rootfs` as one gzip'd layer, named `name`; returns
/// the layer's diff id.
fn build_oci_archive(rootfs: &Path, name: &str, archive: &Path) -> String {
    let mut layer = tar::Builder::new(Vec::new());
    layer.follow_symlinks(false);
    layer.append_dir_all(".", rootfs).unwrap();
    let layer = layer.into_inner().unwrap();
    let diff_id = sha256(&layer);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut gz, &layer).unwrap();
    let layer_gz = gz.finish().unwrap();

    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": oci_arch(),
        "os": "linux",
        "config": {"Env": ["PATH=/bin", IMAGE_ENV]},
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
    }))
    .unwrap();
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": sha256(&config), "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                    "digest": sha256(&layer_gz), "size": layer_gz.len()}],
    }))
    .unwrap();
    let index = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": sha256(&manifest),
            "size": manifest.len(),
            "platform": {"os": "linux", "architecture": oci_arch()},
            "annotations": {"io.containerd.image.name": name, "org.opencontainers.image.ref.name": "test"},
        }],
    }))
    .unwrap();

    let mut outer = tar::Builder::new(std::fs::File::create(archive).unwrap());
    let mut add = |path: String, data: &[u8]| {
        let mut header = tar::Header::new_gnu();
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        outer.append_data(&mut header, path, data).unwrap();
    };
    for blob in [&layer_gz, &config, &manifest] {
        let digest = sha256(blob);
        add(
            format!("blobs/sha256/{}", digest.trim_start_matches("sha256:")),
            blob,
        );
    }
    add("index.json".into(), &index);
    add("oci-layout".into(), br#"{"imageLayoutVersion":"1.0.0"}"#);
    outer.finish().unwrap();
    diff_id
}

struct Fixture {
    // Dropped first: the private containerd is stopped before its directory goes.
    containerd: TestContainerd,
    client: Containerd,
    io: PathBuf,
    diff_id: String,
    _dir: tempfile::TempDir,
}

async fn fixture() -> Fixture {
    let containerd = TestContainerd::start(
        &ContainerdVersion::find("1.6.20").unwrap(),
        Options::default(),
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("image.tar");
    let diff_id = build_oci_archive(&containerd.rootfs(), IMAGE, &archive);
    let ns = containerd.namespace().to_string();
    containerd
        .ctr_ok(&["-n", &ns, "images", "import", archive.to_str().unwrap()])
        .unwrap();
    let client = Containerd::connect(containerd.address())
        .await
        .unwrap()
        .with_namespace(ns);
    Fixture {
        io: dir.path().join("io"),
        containerd,
        client,
        diff_id,
        _dir: dir,
    }
}

fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}-{:x}",
        std::process::id(),
        shimtrace_containerd::wall_unix_nanos() & 0xffffff
    )
}

fn image_spec(f: &Fixture, id: &str, args: &[&str]) -> RunSpec {
    let mut spec = RunSpec::new(id, "/nonexistent-rootfs", args.iter().copied(), &f.io);
    spec.image = Some(IMAGE.into());
    spec
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn image_runs_through_a_snapshot_that_is_removed_afterwards() {
    let f = fixture().await;
    let resolved = f.client.resolve_image(IMAGE).await.unwrap();
    // One layer: the chain id is its diff id.
    assert_eq!(resolved.chain_id, f.diff_id);
    assert!(resolved.env.iter().any(|e| e == IMAGE_ENV));

    let id = unique("img-echo");
    let outcome = f
        .client
        .run_to_exit(&image_spec(&f, &id, &["/bin/echo", "hi"]))
        .await
        .unwrap();
    assert_eq!((outcome.exit_code, outcome.output.as_str()), (0, "hi\n"));
    assert!(outcome.phases.prepare_snapshot.is_some());
    assert!(!f.client.snapshot_exists(&id).await.unwrap());
    assert!(f.client.our_containers().await.unwrap().is_empty());

    // The image config's environment reaches the process; the exit code comes back.
    let id = unique("img-exit");
    let outcome = f
        .client
        .run_to_exit(&image_spec(
            &f,
            &id,
            &["/bin/sh", "-c", "echo $SHIMTRACE_FROM_IMAGE; exit 3"],
        ))
        .await
        .unwrap();
    assert_eq!((outcome.exit_code, outcome.output.as_str()), (3, "yes\n"));
    assert!(!f.client.snapshot_exists(&id).await.unwrap());

    // A detached task's snapshot goes with `delete` too.
    let id = unique("img-sleep");
    let spec = image_spec(&f, &id, &["/bin/sleep", "30"]);
    f.client.start_detached(&spec).await.unwrap();
    assert!(f.client.snapshot_exists(&id).await.unwrap());
    f.client.delete(&id).await.unwrap();
    assert!(!f.client.snapshot_exists(&id).await.unwrap());
    drop(f.containerd);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_or_packed_images_give_one_clear_line() {
    let f = fixture().await;
    let id = unique("img-missing");
    let mut spec = image_spec(&f, &id, &["/bin/true"]);
    spec.image = Some("shimtrace/not-here:1".into());
    let err = f.client.run_to_exit(&spec).await.unwrap_err();
    assert!(
        matches!(err, ContainerdError::ImageNotFound { .. }),
        "{err}"
    );
    let line = err.to_string();
    assert!(!line.contains('\n'));
    assert!(
        line.contains(&format!("ctr -n {} images import", f.client.namespace())),
        "{line}"
    );
    // Nothing was created.
    assert!(f.client.our_containers().await.unwrap().is_empty());

    // Imported without unpacking: no snapshot of the layers.
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("packed.tar");
    build_oci_archive(&f.containerd.rootfs(), "shimtrace/packed:1", &archive);
    let ns = f.client.namespace().to_string();
    // A different layer would be needed for a distinct chain id; the same rootfs gives the same
    // one, which the first import already unpacked, so remove that snapshot's image first.
    f.containerd
        .ctr_ok(&["-n", &ns, "images", "rm", "--sync", IMAGE])
        .unwrap();
    f.containerd
        .ctr_ok(&[
            "-n",
            &ns,
            "images",
            "import",
            "--no-unpack",
            archive.to_str().unwrap(),
        ])
        .unwrap();
    spec.image = Some("shimtrace/packed:1".into());
    let err = f.client.run_to_exit(&spec).await.unwrap_err();
    assert!(
        matches!(err, ContainerdError::ImageNotUnpacked { .. }),
        "{err}"
    );
    assert!(err.to_string().contains("overlayfs"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lab_runs_every_profile_from_the_image_and_says_so() {
    let f = fixture().await;
    let out = tempfile::tempdir().unwrap();
    let address = f.containerd.address();
    let args: shimtrace_lab::LabArgs = parse_args(&[
        "--address",
        address.to_str().unwrap(),
        "--namespace",
        f.client.namespace(),
        "--image",
        IMAGE,
        "--runs",
        "1",
        "--requests",
        "5",
        "--only",
        "runc,runsc",
        "--untraced",
        "--out",
        out.path().to_str().unwrap(),
    ]);
    shimtrace_lab::run_async(args).await.unwrap();

    let md = std::fs::read_to_string(out.path().join("report.md")).unwrap();
    assert!(md.contains(&format!("Workload image: `{IMAGE}`")), "{md}");
    assert!(md.contains("cold-start command: `/bin/true`"), "{md}");
    assert!(md.contains("served latency: not measured"), "{md}");
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.path().join("report.json")).unwrap()).unwrap();
    assert_eq!(json["setup"]["image"], IMAGE);
    let runc = &json["profiles"][0];
    assert_eq!(
        (runc["name"].as_str(), runc["status"].as_str()),
        (Some("runc"), Some("ok"))
    );
    assert_eq!(runc["cold_start"]["ok_runs"], 1);
    // runc shares the host kernel; the image's uname shows it.
    let host = nix::sys::utsname::uname().unwrap();
    assert_eq!(
        runc["probe"]["kernel"]["release"].as_str(),
        host.release().to_str()
    );
    // gVisor runs the image too, and its own kernel answers.
    let runsc = &json["profiles"][1];
    assert_eq!(
        (runsc["name"].as_str(), runsc["status"].as_str()),
        (Some("runsc"), Some("ok")),
        "{runsc}"
    );
    assert_eq!(runsc["cold_start"]["ok_runs"], 1);
    assert_ne!(
        runsc["probe"]["kernel"]["release"].as_str(),
        host.release().to_str()
    );
    assert!(f.client.our_containers().await.unwrap().is_empty());
}
