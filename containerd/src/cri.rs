//! A CRI driver: what the kubelet does to containerd, done over the CRI v1 gRPC API on containerd's
//! socket — run a pod sandbox under a runtime handler, create, start, stop and remove its
//! containers, read their status — with the pod's metadata and annotations, and optionally a W3C
//! `traceparent` on every call (as the kubelet sends since Kubernetes' tracing went GA).
//!
//! Pods run on the host network by default (`NamespaceMode::Node`), which needs no CNI plugin.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use hyper_util::rt::TokioIo;
use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use k8s_cri::v1::{
    ContainerConfig, ContainerMetadata, ContainerStatusRequest, CreateContainerRequest, ImageSpec,
    ImageStatusRequest, LinuxPodSandboxConfig, LinuxSandboxSecurityContext, ListPodSandboxRequest,
    NamespaceMode, NamespaceOption, PodSandboxConfig, PodSandboxMetadata, RemoveContainerRequest,
    RemovePodSandboxRequest, RunPodSandboxRequest, StartContainerRequest, StatusRequest,
    StopContainerRequest, StopPodSandboxRequest, VersionRequest,
};
use tonic::metadata::MetadataValue;

/// A container's state as CRI reports it (created, running, exited, unknown).
pub use k8s_cri::v1::ContainerState;
use tonic::transport::{Channel, Endpoint, Uri};

/// Why a CRI call failed.
#[derive(Debug, thiserror::Error)]
pub enum CriError {
    #[error("cannot connect to containerd's CRI at {socket}: {source} (is containerd running with its CRI plugin enabled?)")]
    Connect {
        socket: PathBuf,
        source: tonic::transport::Error,
    },
    #[error("CRI {call} failed: {status} (check containerd's log; the runtime handler must be configured under the CRI plugin's runtimes)")]
    Call {
        call: &'static str,
        status: tonic::Status,
    },
    #[error("traceparent {0:?} is not valid ASCII metadata")]
    TraceParent(String),
    #[error("container {id} did not exit within {timeout:?}")]
    ExitTimeout { id: String, timeout: Duration },
}

pub type Result<T, E = CriError> = std::result::Result<T, E>;

/// Makes CRI call `$name`: `$method` of `$self.$service` with `$message` (with the client's
/// timeout and traceparent); its reply's message, or a [`CriError::Call`].
macro_rules! cri_call {
    ($self:ident.$service:ident.$method:ident($message:expr), $name:literal) => {
        answer(
            $name,
            $self
                .$service
                .clone()
                .$method($self.request($message))
                .await,
        )
    };
}

/// The reply of CRI call `call`, or its error.
fn answer<R>(call: &'static str, reply: Result<tonic::Response<R>, tonic::Status>) -> Result<R> {
    reply
        .map(tonic::Response::into_inner)
        .map_err(|status| CriError::Call { call, status })
}

/// A pod to run: its Kubernetes identity and how its sandbox is set up.
#[derive(Debug, Clone)]
pub struct PodSpec {
    pub name: String,
    pub namespace: String,
    pub uid: String,
    /// The RuntimeClass handler (`runtime_handler`); empty for containerd's default runtime.
    pub handler: String,
    pub annotations: HashMap<String, String>,
    pub labels: HashMap<String, String>,
    /// On the host network (no CNI needed); otherwise the pod gets its own network namespace.
    pub host_network: bool,
    /// Directory for container logs (CRI writes `<log_directory>/<container log_path>`).
    pub log_directory: Option<PathBuf>,
}

impl PodSpec {
    pub fn new(name: impl Into<String>, handler: impl Into<String>) -> PodSpec {
        let name = name.into();
        PodSpec {
            uid: format!("uid-{name}"),
            name,
            namespace: "default".into(),
            handler: handler.into(),
            annotations: HashMap::new(),
            labels: HashMap::new(),
            host_network: true,
            log_directory: None,
        }
    }

    fn config(&self) -> PodSandboxConfig {
        let network = if self.host_network {
            NamespaceMode::Node
        } else {
            NamespaceMode::Pod
        };
        PodSandboxConfig {
            metadata: Some(PodSandboxMetadata {
                name: self.name.clone(),
                uid: self.uid.clone(),
                namespace: self.namespace.clone(),
                attempt: 0,
            }),
            // A host-network pod shares the host's UTS namespace: runc refuses to set a hostname.
            hostname: String::new(),
            log_directory: self
                .log_directory
                .as_ref()
                .map(|d| d.display().to_string())
                .unwrap_or_default(),
            labels: self.labels.clone(),
            annotations: self.annotations.clone(),
            linux: Some(LinuxPodSandboxConfig {
                security_context: Some(LinuxSandboxSecurityContext {
                    namespace_options: Some(NamespaceOption {
                        network: network as i32,
                        pid: NamespaceMode::Container as i32,
                        ipc: NamespaceMode::Pod as i32,
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }
}

/// A container of a pod.
#[derive(Debug, Clone)]
pub struct ContainerSpec {
    pub name: String,
    /// An image already in containerd's `k8s.io` namespace.
    pub image: String,
    pub command: Vec<String>,
    pub annotations: HashMap<String, String>,
    /// Relative to the pod's log directory.
    pub log_path: Option<String>,
}

impl ContainerSpec {
    pub fn new<S: Into<String>>(
        name: impl Into<String>,
        image: impl Into<String>,
        command: impl IntoIterator<Item = S>,
    ) -> ContainerSpec {
        ContainerSpec {
            name: name.into(),
            image: image.into(),
            command: command.into_iter().map(Into::into).collect(),
            annotations: HashMap::new(),
            log_path: None,
        }
    }
}

/// A running pod sandbox: its id and the config its containers are created against.
#[derive(Debug, Clone)]
pub struct Pod {
    pub id: String,
    config: PodSandboxConfig,
}

/// A container's state as CRI reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerInfo {
    pub id: String,
    pub state: ContainerState,
    pub exit_code: i32,
    pub reason: String,
}

/// How long one CRI call may take by default: the kubelet's `--runtime-request-timeout` default.
pub const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_secs(120);

/// A CRI client on containerd's socket.
#[derive(Clone)]
pub struct Cri {
    runtime: RuntimeServiceClient<Channel>,
    images: ImageServiceClient<Channel>,
    traceparent: Option<MetadataValue<tonic::metadata::Ascii>>,
    timeout: Duration,
}

impl Cri {
    /// Connects over the unix socket `socket` (containerd's gRPC address).
    pub async fn connect(socket: impl AsRef<Path>) -> Result<Cri> {
        let socket = socket.as_ref().to_path_buf();
        let path = socket.clone();
        let channel = Endpoint::try_from("http://[::]:0")
            .expect("a static URI parses")
            .connect_with_connector(tower::service_fn(move |_: Uri| {
                let path = path.clone();
                async move {
                    Ok::<_, std::io::Error>(TokioIo::new(
                        tokio::net::UnixStream::connect(path).await?,
                    ))
                }
            }))
            .await
            .map_err(|source| CriError::Connect { socket, source })?;
        Ok(Cri {
            runtime: RuntimeServiceClient::new(channel.clone()),
            images: ImageServiceClient::new(channel),
            traceparent: None,
            timeout: DEFAULT_CALL_TIMEOUT,
        })
    }

    /// Gives every later call at most `timeout` (default [`DEFAULT_CALL_TIMEOUT`]); a call that
    /// takes longer fails with `DeadlineExceeded`.
    pub fn with_timeout(mut self, timeout: Duration) -> Cri {
        self.timeout = timeout;
        self
    }

    /// Sends `traceparent` (W3C trace context) as gRPC metadata on every later call.
    pub fn with_traceparent(mut self, traceparent: &str) -> Result<Cri> {
        let value = traceparent
            .parse()
            .map_err(|_| CriError::TraceParent(traceparent.to_string()))?;
        self.traceparent = Some(value);
        Ok(self)
    }

    fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        request.set_timeout(self.timeout);
        if let Some(tp) = &self.traceparent {
            request.metadata_mut().insert("traceparent", tp.clone());
        }
        request
    }

    /// The runtime's name and version (`containerd`, `v1.6.20`).
    pub async fn version(&self) -> Result<(String, String)> {
        let reply = cri_call!(self.runtime.version(VersionRequest::default()), "Version")?;
        Ok((reply.runtime_name, reply.runtime_version))
    }

    /// The runtime's verbose status info (containerd: `config` holds its CRI config as JSON, with
    /// every runtime handler under `containerd.runtimes`).
    pub async fn status_info(&self) -> Result<HashMap<String, String>> {
        let reply = cri_call!(
            self.runtime.status(StatusRequest { verbose: true }),
            "Status"
        )?;
        Ok(reply.info)
    }

    /// Whether containerd's CRI knows `image`.
    pub async fn has_image(&self, image: &str) -> Result<bool> {
        let reply = cri_call!(
            self.images.image_status(ImageStatusRequest {
                image: Some(ImageSpec {
                    image: image.to_string(),
                    ..Default::default()
                }),
                verbose: false,
            }),
            "ImageStatus"
        )?;
        Ok(reply.image.is_some())
    }

    /// RunPodSandbox under the pod's handler.
    pub async fn run_pod(&self, pod: &PodSpec) -> Result<Pod> {
        let config = pod.config();
        let reply = cri_call!(
            self.runtime.run_pod_sandbox(RunPodSandboxRequest {
                config: Some(config.clone()),
                runtime_handler: pod.handler.clone(),
            }),
            "RunPodSandbox"
        )?;
        Ok(Pod {
            id: reply.pod_sandbox_id,
            config,
        })
    }

    /// CreateContainer in `pod`; returns the container id.
    pub async fn create_container(&self, pod: &Pod, spec: &ContainerSpec) -> Result<String> {
        let config = ContainerConfig {
            metadata: Some(ContainerMetadata {
                name: spec.name.clone(),
                attempt: 0,
            }),
            image: Some(ImageSpec {
                image: spec.image.clone(),
                ..Default::default()
            }),
            command: spec.command.clone(),
            annotations: spec.annotations.clone(),
            log_path: spec.log_path.clone().unwrap_or_default(),
            ..Default::default()
        };
        let reply = cri_call!(
            self.runtime.create_container(CreateContainerRequest {
                pod_sandbox_id: pod.id.clone(),
                config: Some(config),
                sandbox_config: Some(pod.config.clone()),
            }),
            "CreateContainer"
        )?;
        Ok(reply.container_id)
    }

    pub async fn start_container(&self, id: &str) -> Result<()> {
        cri_call!(
            self.runtime.start_container(StartContainerRequest {
                container_id: id.to_string(),
            }),
            "StartContainer"
        )?;
        Ok(())
    }

    /// StopContainer with a grace period in seconds (SIGTERM, then SIGKILL).
    pub async fn stop_container(&self, id: &str, timeout_secs: i64) -> Result<()> {
        cri_call!(
            self.runtime.stop_container(StopContainerRequest {
                container_id: id.to_string(),
                timeout: timeout_secs,
            }),
            "StopContainer"
        )?;
        Ok(())
    }

    pub async fn remove_container(&self, id: &str) -> Result<()> {
        cri_call!(
            self.runtime.remove_container(RemoveContainerRequest {
                container_id: id.to_string(),
            }),
            "RemoveContainer"
        )?;
        Ok(())
    }

    pub async fn container_status(&self, id: &str) -> Result<ContainerInfo> {
        let reply = cri_call!(
            self.runtime.container_status(ContainerStatusRequest {
                container_id: id.to_string(),
                verbose: false,
            }),
            "ContainerStatus"
        )?;
        let status = reply.status.unwrap_or_default();
        Ok(ContainerInfo {
            id: status.id,
            state: ContainerState::try_from(status.state)
                .unwrap_or(ContainerState::ContainerUnknown),
            exit_code: status.exit_code,
            reason: status.reason,
        })
    }

    /// Polls ContainerStatus until the container has exited (CRI has no wait call).
    pub async fn wait_exited(&self, id: &str, timeout: Duration) -> Result<ContainerInfo> {
        let deadline = Instant::now() + timeout;
        loop {
            let info = self.container_status(id).await?;
            if info.state == ContainerState::ContainerExited {
                return Ok(info);
            }
            if Instant::now() > deadline {
                return Err(CriError::ExitTimeout {
                    id: id.to_string(),
                    timeout,
                });
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The ids of every pod sandbox CRI knows, ready or not.
    pub async fn list_pods(&self) -> Result<Vec<String>> {
        let reply = cri_call!(
            self.runtime
                .list_pod_sandbox(ListPodSandboxRequest { filter: None }),
            "ListPodSandbox"
        )?;
        Ok(reply.items.into_iter().map(|p| p.id).collect())
    }

    pub async fn stop_pod(&self, pod_id: &str) -> Result<()> {
        cri_call!(
            self.runtime.stop_pod_sandbox(StopPodSandboxRequest {
                pod_sandbox_id: pod_id.to_string(),
            }),
            "StopPodSandbox"
        )?;
        Ok(())
    }

    pub async fn remove_pod(&self, pod_id: &str) -> Result<()> {
        cri_call!(
            self.runtime.remove_pod_sandbox(RemovePodSandboxRequest {
                pod_sandbox_id: pod_id.to_string(),
            }),
            "RemovePodSandbox"
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The pod's namespace options, which every pod config this module makes has.
    fn namespace_options(config: PodSandboxConfig) -> NamespaceOption {
        config
            .linux
            .and_then(|linux| linux.security_context)
            .and_then(|context| context.namespace_options)
            .expect("a pod config with namespace options")
    }

    #[test]
    fn host_network_pods_share_the_node_network_and_set_no_hostname() {
        let pod = PodSpec::new("web", "traced-runc");
        let config = pod.config();
        assert_eq!(config.hostname, "");
        assert_eq!(
            namespace_options(config).network,
            NamespaceMode::Node as i32
        );
        let meta = pod.config().metadata.unwrap();
        assert_eq!(
            (meta.name.as_str(), meta.namespace.as_str()),
            ("web", "default")
        );
    }

    #[test]
    fn pods_off_the_host_network_get_their_own() {
        let mut pod = PodSpec::new("web", "");
        pod.host_network = false;
        assert_eq!(
            namespace_options(pod.config()).network,
            NamespaceMode::Pod as i32
        );
    }
}
