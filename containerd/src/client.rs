//! A containerd driver over its gRPC API: runs containers from a local rootfs directory (no registry,
//! no snapshotter) or from an image already in containerd (an overlayfs snapshot of its unpacked
//! layers), under any runtime name or shim path, with runtime options, and times each phase.
//!
//! ```no_run
//! # async fn demo() -> Result<(), shimtrace_containerd::ContainerdError> {
//! use shimtrace_containerd::{Containerd, RunSpec};
//! let containerd = Containerd::connect("/run/containerd/containerd.sock").await?;
//! let spec = RunSpec::new("hello", "/tmp/rootfs", ["/bin/echo", "hi"], "/tmp/io");
//! let outcome = containerd.run_to_exit(&spec).await?;
//! assert_eq!(outcome.exit_code, 0);
//! # Ok(()) }
//! ```
//!
//! Stdout and stderr of a task go to one file (the runc shim's `file://` stdio), read back after the
//! task is deleted, when the shim has finished copying.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use containerd_client::services::v1::snapshots::{
    snapshots_client::SnapshotsClient, PrepareSnapshotRequest, RemoveSnapshotRequest,
    StatSnapshotRequest,
};
use containerd_client::services::v1::{
    container::Runtime, containers_client::ContainersClient, content_client::ContentClient,
    images_client::ImagesClient, tasks_client::TasksClient, Container, CreateContainerRequest,
    CreateTaskRequest, DeleteContainerRequest, DeleteTaskRequest, ExecProcessRequest,
    GetImageRequest, KillRequest, ListContainersRequest, ReadContentRequest, StartRequest,
    WaitRequest,
};
use containerd_client::tonic::{self, transport::Channel, Code, Request};
use prost_types::Any;
use serde::{Deserialize, Serialize};

/// The gRPC metadata key containerd reads the namespace from.
pub const NAMESPACE_HEADER: &str = "containerd-namespace";
/// Namespace used unless the caller picks another.
pub const DEFAULT_NAMESPACE: &str = "shimtrace";
/// containerd's type URL for an OCI runtime spec carried as JSON in a `google.protobuf.Any`.
pub const SPEC_TYPE_URL: &str = "types.containerd.io/opencontainers/runtime-spec/1/Spec";
/// containerd's type URL for an OCI process spec (exec).
pub const PROCESS_TYPE_URL: &str = "types.containerd.io/opencontainers/runtime-spec/1/Process";
pub use crate::install::RUNC_RUNTIME;
/// The snapshotter image rootfs snapshots are prepared with (the one `ctr images import` unpacks
/// into by default).
pub const SNAPSHOTTER: &str = "overlayfs";
pub use crate::image::DEFAULT_PATH_ENV;

/// What went wrong talking to containerd.
#[derive(Debug, thiserror::Error)]
pub enum ContainerdError {
    /// The socket could not be connected to or did not answer.
    #[error("containerd is not reachable at {address}: {reason} (start containerd, or pass the socket of a running one)")]
    Unreachable { address: PathBuf, reason: String },
    /// A containerd call returned an error status.
    #[error("containerd {op} for {id:?} failed: {message} ({code:?})")]
    Rpc {
        op: &'static str,
        id: String,
        code: Code,
        message: String,
    },
    /// A task did not exit in time; it was killed.
    #[error("{op} for {id:?} did not finish within {timeout:?}")]
    Timeout {
        op: &'static str,
        id: String,
        timeout: Duration,
    },
    /// A local file operation failed.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
    /// `--image` names an image this containerd namespace does not hold.
    #[error("image {reference:?} is not in containerd namespace {namespace:?}: pull or import it first: ctr -n {namespace} images import IMAGE.tar (or ctr -n {namespace} images pull {reference})")]
    ImageNotFound {
        reference: String,
        namespace: String,
    },
    /// The image's layers have no overlayfs snapshot (imported or pulled without unpacking).
    #[error("image {reference:?} is not unpacked for the {SNAPSHOTTER} snapshotter (no snapshot {chain_id}): import or pull it again without --no-unpack: ctr -n {namespace} images import IMAGE.tar")]
    ImageNotUnpacked {
        reference: String,
        namespace: String,
        chain_id: String,
    },
    /// The image's manifest or config is not what an OCI/Docker image has.
    #[error("image {reference:?} cannot be used: {reason} (use a linux/{arch} OCI or Docker image)", arch = oci_arch())]
    BadImage { reference: String, reason: String },
}

/// Result of this module's operations.
pub type Result<T, E = ContainerdError> = std::result::Result<T, E>;

fn rpc_error(op: &'static str, id: &str, status: tonic::Status) -> ContainerdError {
    ContainerdError::Rpc {
        op,
        id: id.to_string(),
        code: status.code(),
        message: status.message().to_string(),
    }
}

fn io_error(context: impl Into<String>) -> impl FnOnce(io::Error) -> ContainerdError {
    let context = context.into();
    move |source| ContainerdError::Io { context, source }
}

impl ContainerdError {
    /// Whether the error says the object does not exist (already gone).
    pub fn is_not_found(&self) -> bool {
        matches!(
            self,
            ContainerdError::Rpc {
                code: Code::NotFound,
                ..
            }
        )
    }
}

/// `containerd.runc.v1.Options`, the options the runc shim reads (only the fields we set are named
/// the way runc's proto names them; the others keep their field numbers).
#[derive(Clone, PartialEq, prost::Message)]
pub struct RuncOptionsProto {
    #[prost(bool, tag = "1")]
    pub no_pivot_root: bool,
    #[prost(bool, tag = "2")]
    pub no_new_keyring: bool,
    #[prost(string, tag = "3")]
    pub shim_cgroup: String,
    #[prost(uint32, tag = "4")]
    pub io_uid: u32,
    #[prost(uint32, tag = "5")]
    pub io_gid: u32,
    #[prost(string, tag = "6")]
    pub binary_name: String,
    #[prost(string, tag = "7")]
    pub root: String,
    #[prost(bool, tag = "9")]
    pub systemd_cgroup: bool,
}

/// The type URL containerd registers `containerd.runc.v1.Options` under.
pub const RUNC_OPTIONS_TYPE_URL: &str = "containerd.runc.v1.Options";

/// Runtime options for the runc shim (and shims that read the same message, like the wrapper).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuncOptions {
    /// The OCI runtime binary the shim runs instead of `runc` (e.g. a runsc wrapper script).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub binary_name: Option<String>,
    /// runc's state root.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root: Option<String>,
    #[serde(default)]
    pub systemd_cgroup: bool,
}

impl RuncOptions {
    /// Packs the options as containerd sends them: a `google.protobuf.Any`.
    pub fn to_any(&self) -> Any {
        let message = RuncOptionsProto {
            binary_name: self.binary_name.clone().unwrap_or_default(),
            root: self.root.clone().unwrap_or_default(),
            systemd_cgroup: self.systemd_cgroup,
            ..Default::default()
        };
        Any {
            type_url: RUNC_OPTIONS_TYPE_URL.into(),
            value: prost::Message::encode_to_vec(&message),
        }
    }
}

/// One container to run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunSpec {
    /// Container id (unique in the namespace).
    pub id: String,
    /// The root filesystem directory (used in place, no snapshot); ignored when `image` is set.
    pub rootfs: PathBuf,
    /// An image already in containerd (e.g. `docker.io/library/alpine:3`, as `ctr images ls` names
    /// it) whose unpacked layers become the rootfs: an overlayfs snapshot keyed by the container id,
    /// removed with the container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    pub args: Vec<String>,
    /// `KEY=VALUE` pairs; a PATH is added when missing.
    #[serde(default)]
    pub env: Vec<String>,
    #[serde(default = "default_cwd")]
    pub cwd: String,
    /// Runtime name (`io.containerd.runc.v2`) or absolute path of a shim binary.
    pub runtime: String,
    /// Shim binary containerd should exec instead of deriving it from `runtime` (CRI's `runtime_path`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime_path: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime_options: Option<RuncOptions>,
    /// Share the host's network namespace instead of getting an empty one.
    #[serde(default)]
    pub host_network: bool,
    /// OCI annotations (e.g. `io.containerd.runc.v2.group`).
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    /// Directory the task's output file is written into (`<io_dir>/<id>.out`).
    pub io_dir: PathBuf,
    /// How long a run may take before it is killed.
    #[serde(default = "default_timeout")]
    pub timeout: Duration,
}

fn default_cwd() -> String {
    "/".into()
}

fn default_timeout() -> Duration {
    Duration::from_secs(60)
}

impl RunSpec {
    /// A spec for the plain runc runtime with an empty network namespace.
    pub fn new<S: Into<String>>(
        id: impl Into<String>,
        rootfs: impl Into<PathBuf>,
        args: impl IntoIterator<Item = S>,
        io_dir: impl Into<PathBuf>,
    ) -> RunSpec {
        RunSpec {
            id: id.into(),
            rootfs: rootfs.into(),
            image: None,
            args: args.into_iter().map(Into::into).collect(),
            env: Vec::new(),
            cwd: default_cwd(),
            runtime: RUNC_RUNTIME.into(),
            runtime_path: None,
            runtime_options: None,
            host_network: false,
            annotations: BTreeMap::new(),
            io_dir: io_dir.into(),
            timeout: default_timeout(),
        }
    }

    /// Where the task's stdout and stderr land.
    pub fn output_path(&self) -> PathBuf {
        self.io_dir.join(format!("{}.out", self.id))
    }

    /// The OCI runtime spec (config.json) for this run, as containerd's defaults would build it.
    pub fn oci_spec(&self, namespace: &str) -> serde_json::Value {
        let env = image_env(&[], &self.env);
        let mut namespaces = vec![
            serde_json::json!({"type": "pid"}),
            serde_json::json!({"type": "ipc"}),
            serde_json::json!({"type": "uts"}),
            serde_json::json!({"type": "mount"}),
        ];
        if !self.host_network {
            namespaces.push(serde_json::json!({"type": "network"}));
        }
        serde_json::json!({
            "ociVersion": "1.0.2-dev",
            "process": {
                "terminal": false,
                "user": {"uid": 0, "gid": 0},
                "args": self.args,
                "env": env,
                "cwd": self.cwd,
                "capabilities": {
                    "bounding": DEFAULT_CAPS,
                    "effective": DEFAULT_CAPS,
                    "permitted": DEFAULT_CAPS,
                },
                "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
                "noNewPrivileges": true,
            },
            // With an image the shim mounts the snapshot at `<bundle>/rootfs`.
            "root": {
                "path": if self.image.is_some() { Path::new("rootfs") } else { self.rootfs.as_path() },
                "readonly": false,
            },
            "hostname": self.id.chars().take(63).collect::<String>(),
            "mounts": [
                {"destination": "/proc", "type": "proc", "source": "proc",
                 "options": ["nosuid", "noexec", "nodev"]},
                {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
                 "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
                {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
                 "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]},
                {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
                 "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
                {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
                 "options": ["nosuid", "noexec", "nodev"]},
                {"destination": "/sys", "type": "sysfs", "source": "sysfs",
                 "options": ["nosuid", "noexec", "nodev", "ro"]},
                {"destination": "/run", "type": "tmpfs", "source": "tmpfs",
                 "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
            ],
            "annotations": self.annotations,
            "linux": {
                "cgroupsPath": format!("/{namespace}/{}", self.id),
                "resources": {"devices": [{"allow": false, "access": "rwm"}]},
                "namespaces": namespaces,
                "maskedPaths": [
                    "/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
                    "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/sys/firmware",
                    "/proc/scsi",
                ],
                "readonlyPaths": [
                    "/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger",
                ],
            },
        })
    }

    fn process_spec(&self, args: &[String]) -> serde_json::Value {
        let mut process = self.oci_spec(DEFAULT_NAMESPACE)["process"].clone();
        process["args"] = serde_json::json!(args);
        process
    }
}

/// containerd's default capability set for containers.
pub const DEFAULT_CAPS: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

/// Client-side duration of each phase of a run.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PhaseTimes {
    pub create_container: Duration,
    /// Preparing the image's rootfs snapshot (runs from an image only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prepare_snapshot: Option<Duration>,
    pub create_task: Duration,
    pub start_task: Duration,
    /// From Start returning to Wait returning (the workload's run time plus exit reporting).
    pub wait_exit: Duration,
    pub delete_task: Duration,
    /// Deleting the container and (from an image) removing its snapshot.
    pub delete_container: Duration,
}

/// What a run to exit produced.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunOutcome {
    pub id: String,
    pub exit_code: u32,
    /// The task's stdout and stderr, in one stream.
    pub output: String,
    pub pid: u32,
    /// Wall clock (unix nanoseconds) just before the first call; the workload's own first timestamp
    /// minus this is the to-workload time.
    pub client_start_unix_nanos: u64,
    /// Wall clock when Start returned.
    pub started_unix_nanos: u64,
    /// Wall clock when Wait returned.
    pub exited_unix_nanos: u64,
    /// From the first call to the container being deleted.
    pub total: Duration,
    /// From the first call to Start returning (what a user waits for before the workload runs).
    pub to_started: Duration,
    pub phases: PhaseTimes,
}

/// A task left running by [`Containerd::start_detached`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunningTask {
    pub id: String,
    pub pid: u32,
    pub output_path: PathBuf,
    pub client_start_unix_nanos: u64,
    pub phases: PhaseTimes,
}

/// What an exec into a running task produced.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExecOutcome {
    pub exit_code: u32,
    pub output: String,
    pub wall: Duration,
}

/// What running an image needs from containerd's content store: the snapshot its unpacked layers
/// end in and the environment its config sets.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageRootfs {
    pub reference: String,
    /// The platform manifest the image resolved to.
    pub manifest_digest: String,
    /// `sha256:<hex>` chain id of the layers: the committed overlayfs snapshot to prepare from.
    pub chain_id: String,
    /// `KEY=VALUE` pairs from the image config (`config.Env`).
    pub env: Vec<String>,
}

pub use crate::image::oci_arch;

/// The chain id of a layer stack (OCI image spec): the first diff id, then
/// `sha256(parent_chain_id + " " + diff_id)` per further layer. `None` without layers.
pub fn chain_id(diff_ids: &[String]) -> Option<String> {
    use sha2::Digest;
    let mut ids = diff_ids.iter();
    let mut chain = ids.next()?.clone();
    for diff_id in ids {
        let digest = sha2::Sha256::digest(format!("{chain} {diff_id}").as_bytes());
        chain = format!("sha256:{}", hex::encode(digest));
    }
    Some(chain)
}

const INDEX_MEDIA_TYPES: &[&str] = &[
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
];

/// From an index, the manifest for this machine's platform (or the only one there is).
fn pick_platform_manifest(index: &serde_json::Value) -> Option<(String, String)> {
    let manifests = index["manifests"].as_array()?;
    let entry = |m: &serde_json::Value| {
        Some((
            m["digest"].as_str()?.to_string(),
            m["mediaType"].as_str().unwrap_or_default().to_string(),
        ))
    };
    manifests
        .iter()
        .find(|m| m["platform"]["os"] == "linux" && m["platform"]["architecture"] == oci_arch())
        .or_else(|| (manifests.len() == 1).then(|| &manifests[0]))
        .and_then(entry)
}

/// A connection to one containerd, bound to one namespace.
#[derive(Clone)]
pub struct Containerd {
    channel: Channel,
    namespace: String,
    address: PathBuf,
}

/// Wall clock in unix nanoseconds (the clock the workload's probe reads too).
pub fn wall_unix_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

impl Containerd {
    /// Connects to containerd's gRPC socket and checks that it answers.
    pub async fn connect(socket: impl AsRef<Path>) -> Result<Containerd> {
        let address = socket.as_ref().to_path_buf();
        let unreachable = |reason: String| ContainerdError::Unreachable {
            address: address.clone(),
            reason,
        };
        if !address.exists() {
            return Err(unreachable("no such socket".into()));
        }
        let channel =
            tokio::time::timeout(Duration::from_secs(5), containerd_client::connect(&address))
                .await
                .map_err(|_| unreachable("connect timed out".into()))?
                .map_err(|e| unreachable(format!("{e}")))?;
        let containerd = Containerd {
            channel,
            namespace: DEFAULT_NAMESPACE.into(),
            address: address.clone(),
        };
        containerd
            .version()
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        Ok(containerd)
    }

    /// The same connection, using namespace `namespace`.
    pub fn with_namespace(mut self, namespace: impl Into<String>) -> Containerd {
        self.namespace = namespace.into();
        self
    }

    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    pub fn address(&self) -> &Path {
        &self.address
    }

    fn request<T>(&self, message: T) -> Request<T> {
        let mut request = Request::new(message);
        if let Ok(value) = self.namespace.parse() {
            request.metadata_mut().insert(NAMESPACE_HEADER, value);
        }
        request
    }

    fn containers(&self) -> ContainersClient<Channel> {
        ContainersClient::new(self.channel.clone())
    }

    fn tasks(&self) -> TasksClient<Channel> {
        TasksClient::new(self.channel.clone())
    }

    fn snapshots(&self) -> SnapshotsClient<Channel> {
        SnapshotsClient::new(self.channel.clone())
    }

    /// The whole blob `digest` from the content store.
    async fn read_content(&self, reference: &str, digest: &str) -> Result<Vec<u8>> {
        let mut stream = ContentClient::new(self.channel.clone())
            .read(self.request(ReadContentRequest {
                digest: digest.into(),
                offset: 0,
                size: 0,
            }))
            .await
            .map_err(|s| rpc_error("read content", digest, s))?
            .into_inner();
        let mut data = Vec::new();
        while let Some(chunk) = stream
            .message()
            .await
            .map_err(|s| rpc_error("read content", digest, s))?
        {
            data.extend_from_slice(&chunk.data);
        }
        if data.is_empty() {
            return Err(ContainerdError::BadImage {
                reference: reference.into(),
                reason: format!("blob {digest} is empty or missing from the content store"),
            });
        }
        Ok(data)
    }

    /// Finds image `reference` in this namespace and the overlayfs snapshot of its layers; a clear
    /// error when it is not there or not unpacked.
    pub async fn resolve_image(&self, reference: &str) -> Result<ImageRootfs> {
        let bad = |reason: String| ContainerdError::BadImage {
            reference: reference.into(),
            reason,
        };
        let image = match ImagesClient::new(self.channel.clone())
            .get(self.request(GetImageRequest {
                name: reference.into(),
            }))
            .await
        {
            Ok(reply) => reply.into_inner().image,
            Err(s) if s.code() == Code::NotFound => None,
            Err(s) => return Err(rpc_error("get image", reference, s)),
        };
        let target =
            image
                .and_then(|i| i.target)
                .ok_or_else(|| ContainerdError::ImageNotFound {
                    reference: reference.into(),
                    namespace: self.namespace.clone(),
                })?;
        let (mut digest, mut media_type) = (target.digest, target.media_type);
        // An index may point at further indexes (an OCI layout's index.json does); a few levels.
        let mut manifest = None;
        for _ in 0..4 {
            let blob = self.read_content(reference, &digest).await?;
            let parsed: serde_json::Value = serde_json::from_slice(&blob)
                .map_err(|e| bad(format!("{digest} is not JSON: {e}")))?;
            let is_index = INDEX_MEDIA_TYPES.contains(&media_type.as_str())
                || INDEX_MEDIA_TYPES.contains(&parsed["mediaType"].as_str().unwrap_or_default())
                || (parsed["manifests"].is_array() && parsed["config"].is_null());
            if !is_index {
                manifest = Some(parsed);
                break;
            }
            (digest, media_type) = pick_platform_manifest(&parsed)
                .ok_or_else(|| bad(format!("its index has no linux/{} manifest", oci_arch())))?;
        }
        let manifest = manifest.ok_or_else(|| bad("indexes nest too deeply".into()))?;
        let config_digest = manifest["config"]["digest"]
            .as_str()
            .ok_or_else(|| bad(format!("manifest {digest} names no config")))?;
        let config: serde_json::Value =
            serde_json::from_slice(&self.read_content(reference, config_digest).await?)
                .map_err(|e| bad(format!("config {config_digest} is not JSON: {e}")))?;
        let diff_ids: Vec<String> = config["rootfs"]["diff_ids"]
            .as_array()
            .map(|ids| {
                ids.iter()
                    .filter_map(|d| d.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default();
        let chain_id =
            chain_id(&diff_ids).ok_or_else(|| bad("its config lists no layers".into()))?;
        let env = config["config"]["Env"]
            .as_array()
            .map(|e| {
                e.iter()
                    .filter_map(|v| v.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default();
        if !self.snapshot_exists(&chain_id).await? {
            return Err(ContainerdError::ImageNotUnpacked {
                reference: reference.into(),
                namespace: self.namespace.clone(),
                chain_id,
            });
        }
        Ok(ImageRootfs {
            reference: reference.into(),
            manifest_digest: digest,
            chain_id,
            env,
        })
    }

    /// Whether snapshot `key` exists in the image snapshotter.
    pub async fn snapshot_exists(&self, key: &str) -> Result<bool> {
        match self
            .snapshots()
            .stat(self.request(StatSnapshotRequest {
                snapshotter: SNAPSHOTTER.into(),
                key: key.into(),
            }))
            .await
        {
            Ok(_) => Ok(true),
            Err(s) if s.code() == Code::NotFound => Ok(false),
            Err(s) => Err(rpc_error("stat snapshot", key, s)),
        }
    }

    /// Removes the container's rootfs snapshot (keyed by the container id); absent is fine.
    async fn remove_snapshot(&self, id: &str) -> Result<()> {
        match self
            .snapshots()
            .remove(self.request(RemoveSnapshotRequest {
                snapshotter: SNAPSHOTTER.into(),
                key: id.into(),
            }))
            .await
        {
            Ok(_) => Ok(()),
            // InvalidArgument: no overlayfs snapshotter here, so no image snapshot to remove.
            Err(s) if matches!(s.code(), Code::NotFound | Code::InvalidArgument) => Ok(()),
            Err(s) => Err(rpc_error("remove snapshot", id, s)),
        }
    }

    /// containerd's version string.
    pub async fn version(&self) -> Result<String> {
        let reply = containerd_client::services::v1::version_client::VersionClient::new(
            self.channel.clone(),
        )
        .version(Request::new(()))
        .await
        .map_err(|s| rpc_error("version", "", s))?;
        Ok(reply.into_inner().version)
    }

    /// Creates the container and its task, starts it, waits for it to exit, deletes both and returns
    /// the exit code, output and timings. On any failure the task and container are removed.
    pub async fn run_to_exit(&self, spec: &RunSpec) -> Result<RunOutcome> {
        let running = self.start_detached(spec).await?;
        let started_unix_nanos = wall_unix_nanos();
        let wait_started = Instant::now();
        let waited = tokio::time::timeout(spec.timeout, self.wait(&spec.id, "")).await;
        let exit_code = match waited {
            Ok(Ok(code)) => code,
            Ok(Err(e)) => {
                let _ = self.delete(&spec.id).await;
                return Err(e);
            }
            Err(_) => {
                let _ = self.delete(&spec.id).await;
                return Err(ContainerdError::Timeout {
                    op: "run",
                    id: spec.id.clone(),
                    timeout: spec.timeout,
                });
            }
        };
        let exited_unix_nanos = wall_unix_nanos();
        let mut phases = running.phases;
        phases.wait_exit = wait_started.elapsed();
        let (delete_task, delete_container) = self.delete_timed(&spec.id).await?;
        phases.delete_task = delete_task;
        phases.delete_container = delete_container;
        let output = fs::read(&running.output_path)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default();
        // Wall clock on both ends (the spans' clock): a step back gives 0, not an underflow.
        let total =
            Duration::from_nanos(wall_unix_nanos().saturating_sub(running.client_start_unix_nanos));
        Ok(RunOutcome {
            id: spec.id.clone(),
            exit_code,
            output,
            pid: running.pid,
            client_start_unix_nanos: running.client_start_unix_nanos,
            started_unix_nanos,
            exited_unix_nanos,
            total,
            to_started: Duration::from_nanos(
                started_unix_nanos.saturating_sub(running.client_start_unix_nanos),
            ),
            phases,
        })
    }

    /// Creates the container and its task and starts it; the task keeps running until [`kill`]ed.
    /// On failure whatever was created is removed.
    ///
    /// [`kill`]: Containerd::kill
    pub async fn start_detached(&self, spec: &RunSpec) -> Result<RunningTask> {
        fs::create_dir_all(&spec.io_dir)
            .map_err(io_error(format!("create {}", spec.io_dir.display())))?;
        let output_path = spec.output_path();
        // The shim appends; a leftover file from an earlier run with this id would mix outputs.
        let _ = fs::remove_file(&output_path);
        // Resolving the image reads a few small blobs; it is not part of the timed start (a
        // client that runs an image repeatedly resolves it once).
        let image = match &spec.image {
            Some(reference) => Some(self.resolve_image(reference).await?),
            None => None,
        };
        let mut oci_spec = spec.oci_spec(&self.namespace);
        if let Some(image) = &image {
            oci_spec["process"]["env"] = serde_json::json!(image_env(&image.env, &spec.env));
        }
        let spec_json = serde_json::to_vec(&oci_spec)
            .map_err(|e| io_error("encode OCI spec")(io::Error::other(e)))?;
        let runtime_options = spec.runtime_options.as_ref().map(RuncOptions::to_any);
        let container = Container {
            image: spec.image.clone().unwrap_or_default(),
            snapshotter: if image.is_some() {
                SNAPSHOTTER.into()
            } else {
                String::new()
            },
            snapshot_key: if image.is_some() {
                spec.id.clone()
            } else {
                String::new()
            },
            id: spec.id.clone(),
            runtime: Some(Runtime {
                name: spec.runtime.clone(),
                options: runtime_options.clone(),
            }),
            spec: Some(Any {
                type_url: SPEC_TYPE_URL.into(),
                value: spec_json,
            }),
            labels: [("shimtrace".to_string(), "lab".to_string())].into(),
            ..Default::default()
        };
        let client_start_unix_nanos = wall_unix_nanos();
        let mut phases = PhaseTimes::default();

        let t = Instant::now();
        self.containers()
            .create(self.request(CreateContainerRequest {
                container: Some(container),
            }))
            .await
            .map_err(|s| rpc_error("create container", &spec.id, s))?;
        phases.create_container = t.elapsed();

        // The snapshot is prepared after the container exists, so the container's reference keeps
        // containerd's garbage collector off it from the start.
        let mut rootfs = Vec::new();
        if let Some(image) = &image {
            let t = Instant::now();
            match self
                .snapshots()
                .prepare(self.request(PrepareSnapshotRequest {
                    snapshotter: SNAPSHOTTER.into(),
                    key: spec.id.clone(),
                    parent: image.chain_id.clone(),
                    labels: Default::default(),
                }))
                .await
            {
                Ok(reply) => rootfs = reply.into_inner().mounts,
                Err(status) => {
                    let _ = self.delete(&spec.id).await;
                    return Err(rpc_error("prepare snapshot", &spec.id, status));
                }
            }
            phases.prepare_snapshot = Some(t.elapsed());
        }

        let stdio = format!("file://{}", output_path.display());
        let t = Instant::now();
        let created = self
            .tasks()
            .create(
                self.request(CreateTaskRequest {
                    container_id: spec.id.clone(),
                    stdout: stdio.clone(),
                    stderr: stdio,
                    rootfs,
                    options: runtime_options,
                    runtime_path: spec
                        .runtime_path
                        .as_ref()
                        .map(|p| p.display().to_string())
                        .unwrap_or_default(),
                    ..Default::default()
                }),
            )
            .await;
        let pid = match created {
            Ok(reply) => reply.into_inner().pid,
            Err(status) => {
                let _ = self.delete(&spec.id).await;
                return Err(rpc_error("create task", &spec.id, status));
            }
        };
        phases.create_task = t.elapsed();

        let t = Instant::now();
        if let Err(status) = self
            .tasks()
            .start(self.request(StartRequest {
                container_id: spec.id.clone(),
                exec_id: String::new(),
            }))
            .await
        {
            let _ = self.delete(&spec.id).await;
            return Err(rpc_error("start task", &spec.id, status));
        }
        phases.start_task = t.elapsed();
        Ok(RunningTask {
            id: spec.id.clone(),
            pid,
            output_path,
            client_start_unix_nanos,
            phases,
        })
    }

    /// Waits for a process of task `id` (`exec_id` empty for the init process) to exit; its code.
    pub async fn wait(&self, id: &str, exec_id: &str) -> Result<u32> {
        let reply = self
            .tasks()
            .wait(self.request(WaitRequest {
                container_id: id.into(),
                exec_id: exec_id.into(),
            }))
            .await
            .map_err(|s| rpc_error("wait", id, s))?;
        Ok(reply.into_inner().exit_status)
    }

    /// Sends `signal` to the init process of task `id` (and all its processes with `all`).
    pub async fn kill(&self, id: &str, signal: u32, all: bool) -> Result<()> {
        self.tasks()
            .kill(self.request(KillRequest {
                container_id: id.into(),
                exec_id: String::new(),
                signal,
                all,
            }))
            .await
            .map_err(|s| rpc_error("kill", id, s))?;
        Ok(())
    }

    /// Runs `args` inside running task `id` and waits for it to exit.
    pub async fn exec_to_exit(
        &self,
        spec: &RunSpec,
        exec_id: &str,
        args: &[String],
    ) -> Result<ExecOutcome> {
        let output_path = spec.io_dir.join(format!("{}-{exec_id}.out", spec.id));
        let _ = fs::remove_file(&output_path);
        let stdio = format!("file://{}", output_path.display());
        let process = serde_json::to_vec(&spec.process_spec(args))
            .map_err(|e| io_error("encode process spec")(io::Error::other(e)))?;
        let t = Instant::now();
        self.tasks()
            .exec(self.request(ExecProcessRequest {
                container_id: spec.id.clone(),
                exec_id: exec_id.into(),
                stdout: stdio.clone(),
                stderr: stdio,
                spec: Some(Any {
                    type_url: PROCESS_TYPE_URL.into(),
                    value: process,
                }),
                ..Default::default()
            }))
            .await
            .map_err(|s| rpc_error("exec", &spec.id, s))?;
        let run = async {
            self.tasks()
                .start(self.request(StartRequest {
                    container_id: spec.id.clone(),
                    exec_id: exec_id.into(),
                }))
                .await
                .map_err(|s| rpc_error("start exec", &spec.id, s))?;
            self.wait(&spec.id, exec_id).await
        };
        let exit_code = match tokio::time::timeout(spec.timeout, run).await {
            Ok(result) => result,
            Err(_) => Err(ContainerdError::Timeout {
                op: "exec",
                id: spec.id.clone(),
                timeout: spec.timeout,
            }),
        };
        // Deleting the exec process makes the shim finish copying its output.
        let _ = self
            .tasks()
            .delete_process(
                self.request(containerd_client::services::v1::DeleteProcessRequest {
                    container_id: spec.id.clone(),
                    exec_id: exec_id.into(),
                }),
            )
            .await;
        let exit_code = exit_code?;
        let output = fs::read(&output_path)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default();
        Ok(ExecOutcome {
            exit_code,
            output,
            wall: t.elapsed(),
        })
    }

    /// Removes task `id` (killing it if it still runs) and its container; what is already gone is
    /// not an error.
    pub async fn delete(&self, id: &str) -> Result<()> {
        self.delete_timed(id).await.map(|_| ())
    }

    async fn delete_timed(&self, id: &str) -> Result<(Duration, Duration)> {
        let t = Instant::now();
        let deleted = self
            .tasks()
            .delete(self.request(DeleteTaskRequest {
                container_id: id.into(),
            }))
            .await;
        match deleted {
            Ok(_) => {}
            Err(s) if s.code() == Code::NotFound => {}
            Err(_) => {
                // Still running (containerd says FailedPrecondition or, from the shim, Unknown
                // "cannot delete a running process"): kill everything, wait for the exit, retry.
                let _ = self.kill(id, libc::SIGKILL as u32, true).await;
                let _ = tokio::time::timeout(Duration::from_secs(10), self.wait(id, "")).await;
                match self
                    .tasks()
                    .delete(self.request(DeleteTaskRequest {
                        container_id: id.into(),
                    }))
                    .await
                {
                    Ok(_) => {}
                    Err(s) if s.code() == Code::NotFound => {}
                    Err(s) => return Err(rpc_error("delete task", id, s)),
                }
            }
        }
        let delete_task = t.elapsed();
        let t = Instant::now();
        match self
            .containers()
            .delete(self.request(DeleteContainerRequest { id: id.into() }))
            .await
        {
            Ok(_) => {}
            Err(s) if s.code() == Code::NotFound => {}
            Err(s) => return Err(rpc_error("delete container", id, s)),
        }
        // containerd leaves a deleted container's snapshot behind; its key is the container id.
        self.remove_snapshot(id).await?;
        Ok((delete_task, t.elapsed()))
    }

    /// Ids of the containers in this namespace that carry our label.
    pub async fn our_containers(&self) -> Result<Vec<String>> {
        let reply = self
            .containers()
            .list(self.request(ListContainersRequest {
                filters: vec!["labels.shimtrace".into()],
            }))
            .await
            .map_err(|s| rpc_error("list containers", "", s))?;
        Ok(reply
            .into_inner()
            .containers
            .into_iter()
            .map(|c| c.id)
            .collect())
    }

    /// Kills and deletes every container this driver created in the namespace; one that cannot be
    /// deleted does not keep the others: the first error is returned once all were tried.
    pub async fn cleanup(&self) -> Result<usize> {
        let ids = self.our_containers().await?;
        let mut first_error = None;
        for id in &ids {
            if let Err(e) = self.delete(id).await {
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(ids.len()), Err)
    }
}

/// Removes the containers this driver made (those with its label) in `namespaces` of the containerd
/// at `socket`, giving up after a few seconds per namespace. Callable from synchronous code and from
/// inside an async runtime alike (it runs on a thread with a runtime of its own): a private
/// containerd's stop calls it so that no container outlives its containerd.
pub fn remove_driven_containers(socket: &Path, namespaces: &[String]) {
    let socket = socket.to_path_buf();
    let namespaces = namespaces.to_vec();
    let cleanup = std::thread::spawn(move || {
        let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        else {
            return;
        };
        runtime.block_on(async {
            let Ok(Ok(client)) =
                tokio::time::timeout(Duration::from_secs(5), Containerd::connect(&socket)).await
            else {
                return;
            };
            for namespace in namespaces {
                let client = client.clone().with_namespace(namespace);
                let _ = tokio::time::timeout(Duration::from_secs(30), client.cleanup()).await;
            }
        });
    });
    let _ = cleanup.join();
}

/// A container's environment from an image: the image's `KEY=VALUE` pairs whose key `ours` does not
/// set, then `ours`; a PATH first when neither sets one.
fn image_env(image: &[String], ours: &[String]) -> Vec<String> {
    let key = |e: &String| e.split('=').next().unwrap_or_default().to_string();
    let our_keys: Vec<String> = ours.iter().map(key).collect();
    let mut env: Vec<String> = image
        .iter()
        .filter(|e| !our_keys.contains(&key(e)))
        .cloned()
        .collect();
    env.extend(ours.iter().cloned());
    if !env.iter().any(|e| e.starts_with("PATH=")) {
        env.insert(0, DEFAULT_PATH_ENV.into());
    }
    env
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_env_gives_way_to_ours_and_gets_a_path() {
        let owned = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let image = owned(&["PATH=/image/bin", "LANG=C", "HOME=/root"]);
        assert_eq!(
            image_env(&image, &owned(&["HOME=/home/x", "DEBUG=1"])),
            owned(&["PATH=/image/bin", "LANG=C", "HOME=/home/x", "DEBUG=1"])
        );
        assert_eq!(
            image_env(&owned(&["LANG=C"]), &[]),
            owned(&[DEFAULT_PATH_ENV, "LANG=C"])
        );
        assert_eq!(
            image_env(&image, &owned(&["PATH=/ours"])),
            owned(&["LANG=C", "HOME=/root", "PATH=/ours"])
        );
    }

    #[test]
    fn runc_options_encode_binary_name_as_field_6() {
        let any = RuncOptions {
            binary_name: Some("/x/runsc".into()),
            ..Default::default()
        }
        .to_any();
        assert_eq!(any.type_url, "containerd.runc.v1.Options");
        // field 6, wire type 2 (length-delimited) = 0x32, then length 8.
        assert_eq!(any.value[..2], [0x32, 8]);
        assert_eq!(&any.value[2..], b"/x/runsc");
    }

    #[test]
    fn spec_has_network_namespace_only_without_host_network() {
        let mut spec = RunSpec::new("a", "/r", ["/bin/true"], "/io");
        let types = |v: &serde_json::Value| {
            v["linux"]["namespaces"]
                .as_array()
                .unwrap()
                .iter()
                .map(|n| n["type"].as_str().unwrap().to_string())
                .collect::<Vec<_>>()
        };
        let isolated = spec.oci_spec("ns");
        assert!(types(&isolated).contains(&"network".to_string()));
        assert_eq!(isolated["root"]["path"], "/r");
        assert_eq!(isolated["process"]["noNewPrivileges"], true);
        assert_eq!(isolated["linux"]["cgroupsPath"], "/ns/a");
        assert!(isolated["process"]["env"][0]
            .as_str()
            .unwrap()
            .starts_with("PATH="));
        spec.host_network = true;
        assert!(!types(&spec.oci_spec("ns")).contains(&"network".to_string()));
    }

    #[test]
    fn chain_id_follows_the_oci_rule() {
        assert_eq!(chain_id(&[]), None);
        let a = "sha256:aaaa".to_string();
        assert_eq!(
            chain_id(std::slice::from_ref(&a)).as_deref(),
            Some("sha256:aaaa")
        );
        let b = "sha256:bbbb".to_string();
        use sha2::Digest;
        let expected = format!(
            "sha256:{}",
            hex::encode(sha2::Sha256::digest(b"sha256:aaaa sha256:bbbb"))
        );
        assert_eq!(chain_id(&[a, b]), Some(expected));
    }

    #[test]
    fn index_resolves_to_this_platform_or_the_only_manifest() {
        let index = serde_json::json!({"manifests": [
            {"digest": "sha256:other", "mediaType": "m", "platform": {"os": "linux", "architecture": "s390x"}},
            {"digest": "sha256:ours", "mediaType": "m", "platform": {"os": "linux", "architecture": oci_arch()}},
        ]});
        assert_eq!(pick_platform_manifest(&index).unwrap().0, "sha256:ours");
        let single = serde_json::json!({"manifests": [{"digest": "sha256:only"}]});
        assert_eq!(pick_platform_manifest(&single).unwrap().0, "sha256:only");
        let foreign = serde_json::json!({"manifests": [
            {"digest": "sha256:x", "platform": {"os": "windows", "architecture": "amd64"}},
            {"digest": "sha256:y", "platform": {"os": "linux", "architecture": "s390x"}},
        ]});
        assert!(pick_platform_manifest(&foreign).is_none());
    }

    #[test]
    fn image_spec_roots_in_the_bundle_rootfs() {
        let mut spec = RunSpec::new("a", "/r", ["/bin/true"], "/io");
        spec.image = Some("shimtrace/busybox:test".into());
        assert_eq!(spec.oci_spec("ns")["root"]["path"], "rootfs");
    }
}
