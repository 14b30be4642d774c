//! Who ran what: the OCI runtime that really ran a container (gVisor's `runsc` behind the runc
//! shim, say) and, under Kubernetes, the pod it belongs to, on every span of that container.
//!
//! The runtime, most specific source first:
//! - the runc shim's `BinaryName` option (`containerd.runc.v1.Options`, field 6): in the `Create`
//!   request (the proxy), on `start`'s stdin (the wrapper: containerd sends the same options there),
//!   or in the `options.json` the runc shim writes into the bundle at `Create`;
//! - else the OCI runtime the wrapper's config gives the runtime (`oci_runtime`, which the wrapper
//!   makes the inner shim run as `runc` where `BinaryName` cannot be passed: CRI's runtime-name
//!   form on containerd 1.6);
//! - else the inner shim's own name: `containerd-shim-runsc-v1` → `runsc`, `containerd-shim-runc-v2`
//!   → `runc`.
//!
//! A binary or shim name becomes a runtime name by [`runtime_name`]: its base name when that is a
//! known runtime, else the part before its first `-` when that is one (a `runsc-nonet` wrapper script
//! → `runsc`, `kata-qemu` → `kata`), else the base name unchanged.
//!
//! The pod, from the annotations containerd's CRI writes into the bundle's `config.json` (checked in
//! containerd's source at v1.6.20, v1.7.24 and v2.1.9):
//! - every version, sandbox and containers: `io.kubernetes.cri.container-type` (`sandbox` or
//!   `container`), `io.kubernetes.cri.sandbox-id`, `…sandbox-name`, `…sandbox-namespace`,
//!   `…sandbox-uid`; containers only: `…container-name`, `…image-name`; sandboxes only:
//!   `…sandbox-log-directory`; 2.1 sandboxes also `io.kubernetes.cri.podsandbox.image-name`.
//! - The runtime handler is in no version's spec. containerd 1.7+ reads a pod annotation
//!   `io.containerd.cri.runtime-handler` (for image pulls); it reaches the spec only when the
//!   handler's `pod_annotations` lets it through, and only then is the handler on the spans.
//!
//! Docker (moby) writes only the user's `docker run --annotation`s into `config.json`, never the
//! container's name; [`Workload::from_annotations`] is where a Docker name would be read if moby
//! ever adds one. Docker containers still carry their runtime identity.
//!
//! The proxy learns a container's identity at `Create`: it reads the bundle's spec before
//! forwarding the call (the bundle of a container that exits at once may be gone a few
//! milliseconds later) and records the rest on the spool's writer thread, in a bounded map and
//! beside the bundle ([`SIDECAR`]), where the wrapper's `delete` and a proxy started after a
//! containerd restart find it again.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use protobuf::well_known_types::any::Any;
use protobuf::Message;
use serde::{Deserialize, Serialize};

use crate::generations::Generations;
use crate::safe_fs::SafeFsError;
use crate::spool::{DeferredSpan, SpanSink};
use shimtrace_span::naming::{ShimName, WrapperName};
use shimtrace_span::{attr, Attributes, SpanRecord};

/// File in the bundle holding the container's identity as the proxy learned it at `Create`.
pub const SIDECAR: &str = "shimtrace-identity.json";
/// The runc shim's record of its options in the bundle (JSON of `containerd.runc.v1.Options`).
pub const RUNC_OPTIONS_FILE: &str = "options.json";
/// Runtimes recognised by name (see [`runtime_name`]).
pub const KNOWN_RUNTIMES: [&str; 6] = ["runc", "runsc", "crun", "youki", "kata", "krun"];
/// `CreateTaskRequest` field numbers (containerd's `runtime/task/v{2,3}/shim.proto`).
const CREATE_BUNDLE: u32 = 2;
const CREATE_OPTIONS: u32 = 10;
/// Runtime options larger than this are not copied: runc's are a few dozen bytes, and a queued
/// `Create` must stay small however many a peer sends.
const MAX_OPTIONS_COPY: usize = 4096;
/// Most of a bundle's `config.json` read (CRI's specs are tens of KiB).
const SPEC_MAX_BYTES: u64 = 4 * 1024 * 1024;
/// Most of a small JSON file (an identity, the runc shim's options) read.
const SMALL_FILE_MAX_BYTES: u64 = 64 * 1024;

/// CRI's annotation keys (containerd's `pkg/cri/annotations`, `internal/cri/annotations` in 2.x).
pub mod cri {
    pub const CONTAINER_TYPE: &str = "io.kubernetes.cri.container-type";
    pub const SANDBOX_ID: &str = "io.kubernetes.cri.sandbox-id";
    pub const SANDBOX_NAME: &str = "io.kubernetes.cri.sandbox-name";
    pub const SANDBOX_NAMESPACE: &str = "io.kubernetes.cri.sandbox-namespace";
    pub const SANDBOX_UID: &str = "io.kubernetes.cri.sandbox-uid";
    pub const CONTAINER_NAME: &str = "io.kubernetes.cri.container-name";
    pub const IMAGE_NAME: &str = "io.kubernetes.cri.image-name";
    /// 2.1+: the sandbox (pause) image, on sandboxes.
    pub const SANDBOX_IMAGE_NAME: &str = "io.kubernetes.cri.podsandbox.image-name";
    /// A pod annotation (1.7+), in the spec only when the handler's `pod_annotations` allow it.
    pub const RUNTIME_HANDLER: &str = "io.containerd.cri.runtime-handler";
}

/// The runtime's name for a binary or shim name (a path is reduced to its base name): a known
/// runtime's name, the known runtime before the first `-`, else the base name itself.
pub fn runtime_name(binary: &str) -> String {
    let base = binary.rsplit('/').next().unwrap_or(binary);
    if KNOWN_RUNTIMES.contains(&base) {
        return base.to_string();
    }
    match base.split_once('-') {
        Some((prefix, _)) if KNOWN_RUNTIMES.contains(&prefix) => prefix.to_string(),
        _ => base.to_string(),
    }
}

/// Where a runtime name was read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RuntimeSource {
    /// The runc shim's `BinaryName` option.
    BinaryName,
    /// The `oci_runtime` of the runtime's entry in the wrapper's config.
    Config,
    /// The inner shim's name.
    Shim,
}

impl RuntimeSource {
    pub fn as_str(self) -> &'static str {
        match self {
            RuntimeSource::BinaryName => "binary_name",
            RuntimeSource::Config => "config",
            RuntimeSource::Shim => "shim",
        }
    }
}

/// The OCI runtime that ran a container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Runtime {
    /// `container.runtime.name`.
    pub name: String,
    pub source: RuntimeSource,
    /// The binary as given, when the source names one (`BinaryName`, the config's `oci_runtime`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub binary: Option<String>,
}

impl Runtime {
    /// The runtime a `BinaryName` names.
    pub fn from_binary(binary: &str) -> Runtime {
        Runtime {
            name: runtime_name(binary),
            source: RuntimeSource::BinaryName,
            binary: Some(binary.to_string()),
        }
    }

    /// The runtime the wrapper's config makes the inner shim run (its `oci_runtime`).
    pub fn from_config(binary: &str) -> Runtime {
        Runtime {
            name: runtime_name(binary),
            source: RuntimeSource::Config,
            binary: Some(binary.to_string()),
        }
    }

    /// The runtime an inner shim's path names: `containerd-shim-<name>-v<N>` (or a traced
    /// runtime's binary) → `<name>`, anything else by its base name.
    pub fn from_shim(shim: &str) -> Runtime {
        let base = shim.rsplit('/').next().unwrap_or(shim);
        let inner = ShimName::parse_binary(base)
            .map(|n| n.inner)
            .or_else(|| {
                WrapperName::from_binary_name(base)
                    .and_then(|w| ShimName::parse_binary(&w.inner_binary).map(|n| n.inner))
            })
            .unwrap_or_else(|| base.to_string());
        Runtime {
            name: runtime_name(&inner),
            source: RuntimeSource::Shim,
            binary: None,
        }
    }
}

/// The `BinaryName` in an encoded `google.protobuf.Any` holding `containerd.runc.v1.Options` (as
/// containerd sends runtime options on `Create` and on `start`'s stdin); `None` for other option
/// types, an empty `BinaryName` (the shim's default, `runc`) or anything undecodable.
pub fn binary_name_in_options(any: &[u8]) -> Option<String> {
    let any = Any::parse_from_bytes(any).ok()?;
    binary_name_in_any(&any)
}

fn binary_name_in_any(any: &Any) -> Option<String> {
    let type_name = any.type_url.rsplit('/').next().unwrap_or_default();
    if type_name != "containerd.runc.v1.Options" {
        return None;
    }
    crate::wire::string_field(&any.value, 6)
        .filter(|b| !b.is_empty())
        .map(str::to_string)
}

/// The `BinaryName` in the runc shim's `options.json` in `bundle`.
fn binary_name_in_bundle(bundle: &Path) -> Option<String> {
    #[derive(Deserialize)]
    struct RuncOptions {
        #[serde(default)]
        binary_name: String,
    }
    let options: RuncOptions =
        crate::bundle::read_json(bundle, RUNC_OPTIONS_FILE, SMALL_FILE_MAX_BYTES)?;
    Some(options.binary_name).filter(|b| !b.is_empty())
}

/// A pod's sandbox, or one of its containers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Sandbox,
    Container,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Sandbox => attr::K8S_ROLE_SANDBOX,
            Role::Container => attr::K8S_ROLE_CONTAINER,
        }
    }
}

/// What the bundle's spec says about the workload: the pod, under CRI.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Workload {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<Role>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_namespace: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_uid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handler: Option<String>,
    /// The name Docker knows the container by (`docker run --name`, else the one it made up).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub engine_name: Option<String>,
}

impl Workload {
    /// Reads an OCI `config.json`'s annotations; a spec that is not JSON gives nothing.
    pub fn from_spec(config_json: &[u8]) -> Workload {
        #[derive(Deserialize)]
        struct Spec {
            #[serde(default)]
            annotations: HashMap<String, String>,
        }
        serde_json::from_slice::<Spec>(config_json)
            .map(|spec| Workload::from_annotations(&spec.annotations))
            .unwrap_or_default()
    }

    /// The workload CRI's annotations describe (see the module documentation for which
    /// containerd version sets which). Docker sets none of these: its containers have no workload.
    pub fn from_annotations(annotations: &HashMap<String, String>) -> Workload {
        let get = |key: &str| {
            annotations
                .get(key)
                .filter(|v| !v.is_empty())
                .map(String::to_string)
        };
        let role = match annotations.get(cri::CONTAINER_TYPE).map(String::as_str) {
            Some("sandbox") => Some(Role::Sandbox),
            Some("container") => Some(Role::Container),
            _ => None,
        };
        Workload {
            role,
            sandbox_id: get(cri::SANDBOX_ID),
            pod_name: get(cri::SANDBOX_NAME),
            pod_namespace: get(cri::SANDBOX_NAMESPACE),
            pod_uid: get(cri::SANDBOX_UID),
            container_name: get(cri::CONTAINER_NAME),
            image: get(cri::IMAGE_NAME).or_else(|| get(cri::SANDBOX_IMAGE_NAME)),
            handler: get(cri::RUNTIME_HANDLER),
            engine_name: None,
        }
    }

    /// Docker's name and image for container `id`, whose spec is `config_json`. Docker puts
    /// neither in the OCI spec, but it bind-mounts `<data-root>/containers/<id>/hostname` at
    /// `/etc/hostname`, and beside that file keeps the container's `config.v2.json` (`Name`,
    /// `Config.Image`), written before the task is created.
    pub fn docker(config_json: &[u8], id: &str) -> Option<Workload> {
        #[derive(Deserialize)]
        struct Mount {
            #[serde(default)]
            destination: String,
            #[serde(default)]
            source: String,
        }
        #[derive(Deserialize)]
        struct Spec {
            #[serde(default)]
            mounts: Vec<Mount>,
        }
        #[derive(Deserialize)]
        struct DockerConfig {
            #[serde(rename = "Config", default)]
            config: DockerContainerConfig,
            #[serde(rename = "Name", default)]
            name: String,
        }
        #[derive(Deserialize, Default)]
        struct DockerContainerConfig {
            #[serde(rename = "Image", default)]
            image: String,
        }
        let spec: Spec = serde_json::from_slice(config_json).ok()?;
        let hostname = spec
            .mounts
            .iter()
            .find(|m| m.destination == "/etc/hostname")?;
        let dir = Path::new(&hostname.source).parent()?;
        // Only the directory Docker keeps for this very container.
        if Path::new(&hostname.source).file_name()? != "hostname"
            || dir.file_name()? != id
            || dir.parent()?.file_name()? != "containers"
        {
            return None;
        }
        let json = crate::bundle::read(dir, "config.v2.json", SPEC_MAX_BYTES)?;
        let config: DockerConfig = serde_json::from_slice(&json).ok()?;
        let non_empty = |s: String| Some(s).filter(|s| !s.is_empty());
        Some(Workload {
            engine_name: non_empty(config.name.trim_start_matches('/').to_string()),
            image: non_empty(config.config.image),
            ..Workload::default()
        })
    }

    /// The workload of the bundle at `bundle` (its `config.json`).
    pub fn of_bundle(bundle: &Path) -> Workload {
        let Some(json) = crate::bundle::read(bundle, "config.json", SPEC_MAX_BYTES) else {
            return Workload::default();
        };
        let workload = Workload::from_spec(&json);
        if workload != Workload::default() {
            return workload;
        }
        bundle
            .file_name()
            .and_then(|id| id.to_str())
            .and_then(|id| Workload::docker(&json, id))
            .unwrap_or(workload)
    }
}

/// Who ran a container: its runtime and its workload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    pub runtime: Runtime,
    #[serde(default)]
    pub workload: Workload,
}

impl Identity {
    /// The identity of the container in `bundle`, run by the inner shim `shim`. `binary_name` is
    /// what options at hand say (`start`'s stdin); otherwise what the proxy recorded at `Create`,
    /// then the runc shim's `options.json`, then `oci_runtime` (the wrapper's config), then the
    /// shim's name.
    pub fn resolve(
        bundle: Option<&Path>,
        binary_name: Option<&str>,
        oci_runtime: Option<&str>,
        shim: &str,
    ) -> Identity {
        let recorded = bundle.and_then(read_sidecar);
        let runtime = match (binary_name, &recorded) {
            (Some(binary), _) => Runtime::from_binary(binary),
            (None, Some(recorded)) => recorded.runtime.clone(),
            (None, None) => bundle
                .and_then(binary_name_in_bundle)
                .map(|b| Runtime::from_binary(&b))
                .unwrap_or_else(|| configured_or_shim(oci_runtime, shim)),
        };
        let workload = match recorded {
            Some(recorded) => recorded.workload,
            None => bundle.map(Workload::of_bundle).unwrap_or_default(),
        };
        Identity { runtime, workload }
    }

    /// Adds the identity's attributes to `attributes`.
    pub fn put(&self, attributes: &mut Attributes) {
        let mut put = |key: &str, value: &str| {
            attributes.insert(key.to_string(), value.into());
        };
        put(attr::CONTAINER_RUNTIME_NAME, &self.runtime.name);
        put(attr::RUNTIME_SOURCE, self.runtime.source.as_str());
        if let Some(binary) = &self.runtime.binary {
            put(attr::RUNTIME_BINARY, binary);
        }
        let w = &self.workload;
        let optional = [
            (attr::RUNTIME_HANDLER, &w.handler),
            (attr::K8S_POD_NAME, &w.pod_name),
            (attr::K8S_NAMESPACE_NAME, &w.pod_namespace),
            (attr::K8S_POD_UID, &w.pod_uid),
            (attr::K8S_CONTAINER_NAME, &w.container_name),
            (attr::K8S_SANDBOX_ID, &w.sandbox_id),
            (attr::CONTAINER_IMAGE_NAME, &w.image),
            (attr::CONTAINER_NAME, &w.engine_name),
        ];
        for (key, value) in optional {
            if let Some(value) = value {
                put(key, value);
            }
        }
        if let Some(role) = w.role {
            put(attr::K8S_ROLE, role.as_str());
        }
    }

    /// Adds the identity's attributes to every span of `spans`.
    pub fn put_all(&self, spans: &mut [SpanRecord]) {
        for span in spans {
            self.put(&mut span.attributes);
        }
    }
}

/// The runtime the config names, else the one the shim's name says.
fn configured_or_shim(oci_runtime: Option<&str>, shim: &str) -> Runtime {
    match oci_runtime {
        Some(binary) => Runtime::from_config(binary),
        None => Runtime::from_shim(shim),
    }
}

/// Reads the identity the proxy recorded in `bundle`.
pub fn read_sidecar(bundle: &Path) -> Option<Identity> {
    crate::bundle::read_json(bundle, SIDECAR, SMALL_FILE_MAX_BYTES)
}

/// Writes `identity` into `bundle` atomically.
pub fn write_sidecar(bundle: &Path, identity: &Identity) -> Result<(), SafeFsError> {
    crate::bundle::write_json(bundle, SIDECAR, identity)
}

/// The proxy's view: (namespace, container id) → identity, backed by the bundles. Learned from
/// `Create` ([`Self::create_seen`]) and looked up for bundles ([`Self::bundle_of`]) on the
/// forwarding threads; spans get their identity on the spool's writer thread.
pub struct IdentityRegistry {
    /// `<state>/io.containerd.runtime.v2.task`, whose `<ns>/<id>` are the bundles.
    task_root: Option<PathBuf>,
    /// The OCI runtime the wrapper's config gives this proxy's runtime, if any: every container
    /// whose `Create` names no `BinaryName` runs on it.
    oci_runtime: Option<String>,
    /// The identities remembered (see [`crate::generations`]).
    known: Mutex<Generations<Arc<Identity>>>,
}

impl IdentityRegistry {
    pub fn new(task_root: Option<PathBuf>) -> IdentityRegistry {
        IdentityRegistry {
            task_root,
            oci_runtime: None,
            known: Mutex::new(Generations::default()),
        }
    }

    /// The same registry for a proxy whose inner shim runs `oci_runtime` as `runc` (see
    /// [`crate::resolve::RuntimeConfig::oci_runtime`]).
    pub fn with_oci_runtime(mut self, oci_runtime: Option<String>) -> IdentityRegistry {
        self.oci_runtime = oci_runtime;
        self
    }

    /// `<task root>/<namespace>/<id>`, the bundle containerd made for container `id`, if both are
    /// single path components.
    pub(crate) fn bundle_of(&self, namespace: &str, id: &str) -> Option<PathBuf> {
        crate::bundle::task_bundle(self.task_root.as_ref()?, namespace, id)
    }

    /// A `Create` request (`payload`, the `CreateTaskRequest`) for container `id` is about to be
    /// forwarded: reads the workload from the bundle's spec now, and queues the recording of the
    /// identity on the writer thread, ahead of every span the call causes (the inner shim's
    /// `/tasks/create` event included).
    ///
    /// The spec is read here, on the forwarding thread, because only now is the bundle sure to
    /// exist: the writer drains its queue every [`crate::spool::FLUSH_INTERVAL`], and a container
    /// that exits at once (`echo`) can be deleted, bundle and all, before then. The read is one
    /// bounded file of tens of KiB, against a `Create` that takes tens of milliseconds.
    pub fn create_seen(
        self: &Arc<Self>,
        sink: &SpanSink,
        namespace: &str,
        id: &str,
        payload: &[u8],
        shim: &str,
    ) {
        let options = crate::wire::bytes_field(payload, CREATE_OPTIONS)
            .filter(|o| o.len() <= MAX_OPTIONS_COPY)
            .map(<[u8]>::to_vec);
        let workload = self.workload_of(namespace, id);
        sink.emit_deferred(Box::new(CreateSeen {
            registry: self.clone(),
            namespace: namespace.to_string(),
            id: id.to_string(),
            workload,
            bundle: crate::wire::string_field(payload, CREATE_BUNDLE)
                .filter(|b| !b.is_empty())
                .map(PathBuf::from),
            options,
            shim: shim.to_string(),
        }));
    }

    /// [`Self::record_created`], reading the workload from the bundle itself (for tests).
    #[cfg(test)]
    fn created(
        &self,
        namespace: &str,
        id: &str,
        claimed: Option<&Path>,
        options: Option<&[u8]>,
        shim: &str,
    ) {
        let workload = self.workload_of(namespace, id);
        self.record_created(namespace, id, claimed, options, workload, shim);
    }

    /// What the spec of container `id`'s bundle says (nothing when there is no bundle).
    fn workload_of(&self, namespace: &str, id: &str) -> Workload {
        self.bundle_of(namespace, id)
            .as_deref()
            .map(Workload::of_bundle)
            .unwrap_or_default()
    }

    /// Records what a `Create` request says, with `workload` already read from the bundle: its
    /// options (an encoded `google.protobuf.Any`) name the runtime for this container whatever was
    /// guessed before. Only the bundle containerd made for the id is read or written: a `claimed`
    /// bundle naming another directory is ignored (see [`crate::bundle`]).
    fn record_created(
        &self,
        namespace: &str,
        id: &str,
        claimed: Option<&Path>,
        options: Option<&[u8]>,
        workload: Workload,
        shim: &str,
    ) {
        let bundle = self.bundle_of(namespace, id);
        if let Some(claimed) = claimed.filter(|c| Some(*c) != bundle.as_deref()) {
            tracing::debug!(
                "Create for {namespace}/{id} names bundle {}, not the one under the task root; ignored",
                claimed.display()
            );
        }
        let runtime = options
            .and_then(binary_name_in_options)
            .map(|b| Runtime::from_binary(&b))
            .unwrap_or_else(|| configured_or_shim(self.oci_runtime.as_deref(), shim));
        let identity = Identity { runtime, workload };
        if let Some(dir) = bundle.as_deref().filter(|d| d.is_dir()) {
            if let Err(e) = write_sidecar(dir, &identity) {
                tracing::debug!("cannot write {SIDECAR} in {}: {e}", dir.display());
            }
        }
        if let Ok(mut known) = self.known.lock() {
            known.insert(namespace, id, Arc::new(identity));
        }
    }

    /// The identity of container `id`: remembered, else read from its bundle.
    pub fn lookup(&self, namespace: &str, id: &str, shim: &str) -> Arc<Identity> {
        if let Some(found) = self
            .known
            .lock()
            .ok()
            .and_then(|mut k| k.get(namespace, id))
        {
            return found;
        }
        let bundle = self.bundle_of(namespace, id);
        let identity = Arc::new(Identity::resolve(
            bundle.as_deref(),
            None,
            self.oci_runtime.as_deref(),
            shim,
        ));
        if let Ok(mut known) = self.known.lock() {
            known.insert(namespace, id, identity.clone());
        }
        identity
    }

    /// Adds its container's identity to a span naming a container (by its namespace, container
    /// id and inner shim attributes); a span naming none is left as it is.
    pub fn annotate(&self, span: &mut SpanRecord) {
        let (Some(namespace), Some(id)) = (
            span.attr_str(attr::CONTAINERD_NAMESPACE),
            span.attr_str(attr::CONTAINERD_CONTAINER_ID),
        ) else {
            return;
        };
        let shim = span.attr_str(attr::INNER).unwrap_or_default();
        let identity = self.lookup(namespace, id, shim);
        // The shim is going away: its container goes at the next generation turn, not at once,
        // since the runc shim may still publish `/tasks/delete` after this (and the bundle, the
        // other place the identity is kept, is deleted meanwhile).
        if span.name.ends_with(".Task/Shutdown") {
            if let Ok(mut known) = self.known.lock() {
                known.retire(namespace, id);
            }
        }
        identity.put(&mut span.attributes);
    }

    /// `span`, to be assembled by the writer thread and then given its container's identity.
    pub fn annotating<S: DeferredSpan + 'static>(
        self: &Arc<Self>,
        span: S,
    ) -> Box<dyn DeferredSpan> {
        Box::new(Annotated {
            registry: self.clone(),
            span,
        })
    }

    /// Identities remembered now.
    #[cfg(test)]
    fn remembered(&self) -> usize {
        self.known.lock().map(|k| k.len()).unwrap_or(0)
    }
}

/// A finished span, as a deferred one (for [`IdentityRegistry::annotating`]).
pub struct Ready(pub SpanRecord);

impl DeferredSpan for Ready {
    fn build(self: Box<Self>) -> Option<SpanRecord> {
        Some(self.0)
    }
}

struct Annotated<S> {
    registry: Arc<IdentityRegistry>,
    span: S,
}

impl<S: DeferredSpan> DeferredSpan for Annotated<S> {
    fn build(self: Box<Self>) -> Option<SpanRecord> {
        let Annotated { registry, span } = *self;
        let mut span = Box::new(span).build()?;
        registry.annotate(&mut span);
        Some(span)
    }
}

/// The recording of a `Create`'s identity, queued like a span so that it runs on the writer
/// thread in order with the spans; it records no span itself.
struct CreateSeen {
    registry: Arc<IdentityRegistry>,
    namespace: String,
    id: String,
    workload: Workload,
    bundle: Option<PathBuf>,
    options: Option<Vec<u8>>,
    shim: String,
}

impl DeferredSpan for CreateSeen {
    fn build(self: Box<Self>) -> Option<SpanRecord> {
        let CreateSeen {
            registry,
            namespace,
            id,
            workload,
            bundle,
            options,
            shim,
        } = *self;
        registry.record_created(
            &namespace,
            &id,
            bundle.as_deref(),
            options.as_deref(),
            workload,
            &shim,
        );
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::generations::REMEMBERED;
    use containerd_shim_protos::api::CreateTaskRequest;
    use shimtrace_span::spool::read_spool;
    use shimtrace_span::{SpanId, SpanKind, SpanStatus, TraceId};
    use std::time::Duration;

    const RUNC_SHIM: &str = "/usr/bin/containerd-shim-runc-v2";

    /// `containerd.runc.v1.Options` with `BinaryName` set, packed as containerd sends it.
    fn runc_options(binary: &str) -> Any {
        let mut value = Vec::new();
        {
            let mut out = protobuf::CodedOutputStream::vec(&mut value);
            out.write_bool(9, true).unwrap(); // SystemdCgroup, to be skipped
            out.write_string(6, binary).unwrap();
            out.flush().unwrap();
        }
        let mut any = Any::new();
        any.type_url = "containerd.runc.v1.Options".into();
        any.value = value;
        any
    }

    /// A `config.json` as containerd 1.7/2.x's CRI writes it for a pod's container (trimmed to
    /// the parts that matter here, with the real nesting).
    fn cri_container_spec() -> serde_json::Value {
        serde_json::json!({
            "ociVersion": "1.1.0",
            "process": {"user": {"uid": 0, "gid": 0}, "args": ["/bin/sh", "-c", "sleep 1"],
                        "env": ["PATH=/usr/bin"], "cwd": "/"},
            "root": {"path": "rootfs"},
            "mounts": [{"destination": "/proc", "type": "proc", "source": "proc"}],
            "annotations": {
                "io.kubernetes.cri.container-name": "web",
                "io.kubernetes.cri.container-type": "container",
                "io.kubernetes.cri.image-name": "docker.io/local/busybox:1",
                "io.kubernetes.cri.sandbox-id": "5f1c0e9b2d",
                "io.kubernetes.cri.sandbox-name": "shop-7d9f",
                "io.kubernetes.cri.sandbox-namespace": "prod",
                "io.kubernetes.cri.sandbox-uid": "0b0f6c1e-2a4f-4c4e-9a57-5a4e0d1f7a11"
            },
            "linux": {"namespaces": [{"type": "pid"}, {"type": "network", "path": "/proc/1/ns/net"}]}
        })
    }

    /// The same pod's sandbox spec (1.6.20 shape: no image name on sandboxes).
    fn cri_sandbox_spec() -> serde_json::Value {
        serde_json::json!({
            "ociVersion": "1.0.2-dev",
            "process": {"args": ["/pause"]},
            "annotations": {
                "io.kubernetes.cri.container-type": "sandbox",
                "io.kubernetes.cri.sandbox-id": "5f1c0e9b2d",
                "io.kubernetes.cri.sandbox-log-directory": "/var/log/pods/prod_shop-7d9f_0b0f",
                "io.kubernetes.cri.sandbox-name": "shop-7d9f",
                "io.kubernetes.cri.sandbox-namespace": "prod",
                "io.kubernetes.cri.sandbox-uid": "0b0f6c1e-2a4f-4c4e-9a57-5a4e0d1f7a11",
                "io.containerd.cri.runtime-handler": "traced-runsc"
            }
        })
    }

    #[test]
    fn runtime_names_from_binaries_and_shims() {
        for (binary, name) in [
            ("/usr/bin/runsc", "runsc"),
            ("/usr/local/bin/runsc-nonet", "runsc"),
            ("runsc-host", "runsc"),
            ("/usr/sbin/runc", "runc"),
            ("crun", "crun"),
            ("/opt/kata/bin/kata-runtime", "kata"),
            ("/usr/bin/sysbox-runc", "sysbox-runc"),
            ("/opt/x/my-runtime", "my-runtime"),
        ] {
            assert_eq!(runtime_name(binary), name, "{binary}");
        }
        for (shim, name) in [
            (RUNC_SHIM, "runc"),
            ("/usr/local/bin/containerd-shim-runsc-v1", "runsc"),
            ("containerd-shim-kata-qemu-v2", "kata"),
            ("/usr/local/bin/containerd-shim-traced-runc-v2", "runc"),
            ("/opt/shims/odd-shim", "odd-shim"),
        ] {
            let runtime = Runtime::from_shim(shim);
            assert_eq!(runtime.name, name, "{shim}");
            assert_eq!(runtime.source, RuntimeSource::Shim);
            assert_eq!(runtime.binary, None);
        }
    }

    #[test]
    fn binary_name_only_from_runc_options() {
        let any = runc_options("/usr/local/bin/runsc-nonet");
        let bytes = any.write_to_bytes().unwrap();
        assert_eq!(
            binary_name_in_options(&bytes).as_deref(),
            Some("/usr/local/bin/runsc-nonet")
        );
        // 2.x may prefix the type URL.
        let mut prefixed = any.clone();
        prefixed.type_url = "type.googleapis.com/containerd.runc.v1.Options".into();
        assert!(binary_name_in_any(&prefixed).is_some());
        // CRI's generic options for a non-runc runtime type: not the runc shim's, not read.
        let mut generic = any.clone();
        generic.type_url = "runtimeoptions.v1.Options".into();
        assert_eq!(binary_name_in_any(&generic), None);
        // The runc shim's default, and noise (start's stdin on 2.3 carries BootstrapParams).
        assert_eq!(
            binary_name_in_options(&runc_options("").write_to_bytes().unwrap()),
            None
        );
        assert_eq!(binary_name_in_options(b"\x0a\x03abc\xff"), None);
        assert_eq!(binary_name_in_options(b""), None);
    }

    #[test]
    fn cri_annotations_make_the_workload() {
        let container = Workload::from_spec(cri_container_spec().to_string().as_bytes());
        assert_eq!(
            container,
            Workload {
                role: Some(Role::Container),
                sandbox_id: Some("5f1c0e9b2d".into()),
                pod_name: Some("shop-7d9f".into()),
                pod_namespace: Some("prod".into()),
                pod_uid: Some("0b0f6c1e-2a4f-4c4e-9a57-5a4e0d1f7a11".into()),
                container_name: Some("web".into()),
                image: Some("docker.io/local/busybox:1".into()),
                handler: None,
                engine_name: None,
            }
        );
        let sandbox = Workload::from_spec(cri_sandbox_spec().to_string().as_bytes());
        assert_eq!(sandbox.role, Some(Role::Sandbox));
        assert_eq!(sandbox.container_name, None);
        assert_eq!(sandbox.handler.as_deref(), Some("traced-runsc"));
        // Docker's and ctr's specs carry no CRI annotations; a broken spec is no workload.
        let docker = serde_json::json!({"ociVersion": "1.0.2", "annotations": {"a": "b"}});
        assert_eq!(
            Workload::from_spec(docker.to_string().as_bytes()),
            Workload::default()
        );
        assert_eq!(Workload::from_spec(b"{not json"), Workload::default());
    }

    #[test]
    fn identity_attributes() {
        let identity = Identity {
            runtime: Runtime::from_binary("/usr/local/bin/runsc-nonet"),
            workload: Workload::from_spec(cri_container_spec().to_string().as_bytes()),
        };
        let mut attributes = Attributes::new();
        identity.put(&mut attributes);
        let get = |k: &str| attributes.get(k).and_then(|v| v.as_str());
        assert_eq!(get(attr::CONTAINER_RUNTIME_NAME), Some("runsc"));
        assert_eq!(get(attr::RUNTIME_SOURCE), Some("binary_name"));
        assert_eq!(
            get(attr::RUNTIME_BINARY),
            Some("/usr/local/bin/runsc-nonet")
        );
        assert_eq!(get(attr::K8S_POD_NAME), Some("shop-7d9f"));
        assert_eq!(get(attr::K8S_NAMESPACE_NAME), Some("prod"));
        assert_eq!(
            get(attr::K8S_POD_UID),
            Some("0b0f6c1e-2a4f-4c4e-9a57-5a4e0d1f7a11")
        );
        assert_eq!(get(attr::K8S_CONTAINER_NAME), Some("web"));
        assert_eq!(get(attr::K8S_ROLE), Some("container"));
        assert_eq!(get(attr::K8S_SANDBOX_ID), Some("5f1c0e9b2d"));
        assert_eq!(get(attr::RUNTIME_HANDLER), None);
        // Outside Kubernetes, only the runtime.
        let mut plain = Attributes::new();
        Identity {
            runtime: Runtime::from_shim(RUNC_SHIM),
            workload: Workload::default(),
        }
        .put(&mut plain);
        let keys: Vec<&str> = plain.keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            [attr::CONTAINER_RUNTIME_NAME, attr::RUNTIME_SOURCE],
            "{plain:?}"
        );
    }

    #[test]
    fn resolve_prefers_given_options_then_the_record_then_the_runc_shims_file() {
        let dir = tempfile::tempdir().unwrap();
        let bundle = dir.path();
        std::fs::write(bundle.join("config.json"), cri_sandbox_spec().to_string()).unwrap();
        // Nothing recorded: the shim's name, the spec's pod.
        let first = Identity::resolve(Some(bundle), None, None, RUNC_SHIM);
        assert_eq!(first.runtime.name, "runc");
        assert_eq!(first.workload.pod_name.as_deref(), Some("shop-7d9f"));
        // The runc shim's options.json (written at Create, read again by its `delete`).
        std::fs::write(
            bundle.join(RUNC_OPTIONS_FILE),
            r#"{"binary_name":"/usr/bin/runsc","systemd_cgroup":true}"#,
        )
        .unwrap();
        let runtime = Identity::resolve(Some(bundle), None, None, RUNC_SHIM).runtime;
        assert_eq!(runtime, Runtime::from_binary("/usr/bin/runsc"));
        // What the proxy recorded wins over that file, options at hand over both.
        let recorded = Identity {
            runtime: Runtime::from_binary("/usr/local/bin/crun"),
            workload: Workload::default(),
        };
        write_sidecar(bundle, &recorded).unwrap();
        assert_eq!(read_sidecar(bundle), Some(recorded.clone()));
        assert_eq!(
            Identity::resolve(Some(bundle), None, None, RUNC_SHIM),
            recorded
        );
        let given = Identity::resolve(Some(bundle), Some("runsc-nonet"), None, RUNC_SHIM);
        assert_eq!(given.runtime.name, "runsc");
        // No bundle at all: the shim.
        assert_eq!(
            Identity::resolve(None, None, None, "containerd-shim-kata-v2")
                .runtime
                .name,
            "kata"
        );
    }

    fn span_of(namespace: &str, id: &str, name: &str) -> SpanRecord {
        let mut attributes = Attributes::new();
        attributes.insert(attr::CONTAINERD_NAMESPACE.into(), namespace.into());
        attributes.insert(attr::CONTAINERD_CONTAINER_ID.into(), id.into());
        attributes.insert(attr::INNER.into(), RUNC_SHIM.into());
        SpanRecord {
            trace_id: TraceId::random(),
            span_id: SpanId::random(),
            parent_span_id: None,
            name: name.into(),
            kind: SpanKind::Server,
            start_time_unix_nano: 1,
            end_time_unix_nano: 2,
            attributes,
            events: vec![],
            status: SpanStatus::Ok,
        }
    }

    /// A spool in a new directory, its sink, and a registry whose task root is `task_root`.
    fn spooled_registry(task_root: &Path) -> (tempfile::TempDir, SpanSink, Arc<IdentityRegistry>) {
        let spool = tempfile::tempdir().unwrap();
        let config = crate::spool::SpoolConfig {
            dir: spool.path().to_path_buf(),
            max_bytes: 1 << 20,
        };
        let sink = SpanSink::start(&config, "test").unwrap();
        let registry = Arc::new(IdentityRegistry::new(Some(task_root.to_path_buf())));
        (spool, sink, registry)
    }

    /// The bundle containerd makes for `namespace/id` under `task_root`, holding `spec`.
    fn bundle_with_spec(
        task_root: &Path,
        namespace: &str,
        id: &str,
        spec: &serde_json::Value,
    ) -> PathBuf {
        let bundle = task_root.join(namespace).join(id);
        std::fs::create_dir_all(&bundle).unwrap();
        std::fs::write(bundle.join("config.json"), spec.to_string()).unwrap();
        bundle
    }

    /// A CRI container `k8s.io/id` whose `Create` (with `options`) the registry has seen, and the
    /// spool its spans go to.
    fn cri_container_created(
        task_root: &Path,
        id: &str,
        options: Option<Any>,
    ) -> (PathBuf, tempfile::TempDir, SpanSink, Arc<IdentityRegistry>) {
        let bundle = bundle_with_spec(task_root, "k8s.io", id, &cri_container_spec());
        let (spool, sink, registry) = spooled_registry(task_root);
        let request = create_request(id, &bundle, options);
        registry.create_seen(&sink, "k8s.io", id, &request, RUNC_SHIM);
        (bundle, spool, sink, registry)
    }

    /// Shuts `sink` down and reads back its spool: `count` spans, every one naming pod shop-7d9f.
    fn spans_naming_the_pod(sink: &SpanSink, spool: &Path, count: usize) -> Vec<SpanRecord> {
        sink.shutdown(Duration::from_secs(5));
        let spans = read_spool(spool).unwrap().spans;
        assert_eq!(spans.len(), count);
        for span in &spans {
            assert_eq!(
                span.attr_str(attr::K8S_POD_NAME),
                Some("shop-7d9f"),
                "{span:?}"
            );
        }
        spans
    }

    fn create_request(id: &str, bundle: &Path, options: Option<Any>) -> Vec<u8> {
        let mut create = CreateTaskRequest::new();
        create.id = id.into();
        create.bundle = bundle.display().to_string();
        create.options = options.into();
        create.write_to_bytes().unwrap()
    }

    #[test]
    fn create_is_recorded_before_the_spans_it_causes_and_every_later_span_carries_it() {
        let root = tempfile::tempdir().unwrap();
        let (bundle, spool, sink, registry) = cri_container_created(
            root.path(),
            "c1",
            Some(runc_options("/opt/bin/runsc-nonet")),
        );
        // The inner shim's `/tasks/create` event, queued before Create's own span.
        sink.emit_deferred(registry.annotating(Ready(span_of(
            "k8s.io",
            "c1",
            "event /tasks/create",
        ))));
        for method in ["Create", "Start", "Shutdown"] {
            let name = format!("containerd.task.v3.Task/{method}");
            sink.emit_deferred(registry.annotating(Ready(span_of("k8s.io", "c1", &name))));
        }
        // A span of no container is left alone.
        let mut bare = span_of("k8s.io", "x", "bare");
        bare.attributes.remove(attr::CONTAINERD_CONTAINER_ID);
        sink.emit_deferred(registry.annotating(Ready(bare)));
        sink.shutdown(Duration::from_secs(5));
        let spans = read_spool(spool.path()).unwrap().spans;
        assert_eq!(spans.len(), 5, "the recording itself is no span");
        for span in &spans[..4] {
            assert_eq!(
                span.attr_str(attr::CONTAINER_RUNTIME_NAME),
                Some("runsc"),
                "{span:?}"
            );
            assert_eq!(span.attr_str(attr::K8S_POD_NAME), Some("shop-7d9f"));
            assert_eq!(span.attr_str(attr::K8S_CONTAINER_NAME), Some("web"));
            assert_eq!(span.attr_str(attr::K8S_ROLE), Some("container"));
        }
        assert_eq!(spans[4].attr_str(attr::CONTAINER_RUNTIME_NAME), None);
        // Shutdown retired it (it goes at the next generation turn); the bundle keeps it for the
        // wrapper's delete.
        assert_eq!(registry.remembered(), 1);
        let recorded = read_sidecar(&bundle).expect("identity beside the bundle");
        assert_eq!(recorded.runtime.name, "runsc");
        assert_eq!(
            Identity::resolve(Some(&bundle), None, None, RUNC_SHIM),
            recorded
        );
    }

    #[test]
    fn a_container_deleted_before_the_writer_runs_keeps_its_pod() {
        let root = tempfile::tempdir().unwrap();
        let (bundle, spool, sink, registry) = cri_container_created(root.path(), "quick", None);
        // An `echo` container: run, exited and deleted (its bundle with it) within the writer's
        // flush interval, before the Create's span is assembled.
        std::fs::remove_dir_all(&bundle).unwrap();
        for method in ["Create", "Start", "Delete"] {
            let name = format!("containerd.task.v3.Task/{method}");
            sink.emit_deferred(registry.annotating(Ready(span_of("k8s.io", "quick", &name))));
        }
        for span in spans_naming_the_pod(&sink, spool.path(), 3) {
            assert_eq!(span.attr_str(attr::K8S_CONTAINER_NAME), Some("web"));
        }
    }

    #[test]
    fn an_event_published_after_shutdown_keeps_its_pod() {
        let root = tempfile::tempdir().unwrap();
        let (bundle, spool, sink, registry) = cri_container_created(root.path(), "late", None);
        for method in ["Create", "Delete", "Shutdown"] {
            let name = format!("containerd.task.v2.Task/{method}");
            sink.emit_deferred(registry.annotating(Ready(span_of("k8s.io", "late", &name))));
        }
        // containerd deletes the bundle once Shutdown returns; the runc shim of a grouped
        // container publishes `/tasks/delete` about then, sometimes after.
        std::fs::remove_dir_all(&bundle).unwrap();
        sink.emit_deferred(registry.annotating(Ready(span_of(
            "k8s.io",
            "late",
            "event /tasks/delete",
        ))));
        spans_naming_the_pod(&sink, spool.path(), 4);
    }

    #[test]
    fn create_options_override_a_guess_and_without_options_the_shim_names_it() {
        let root = tempfile::tempdir().unwrap();
        let bundle = root.path().join("default").join("c2");
        std::fs::create_dir_all(&bundle).unwrap();
        let registry = IdentityRegistry::new(Some(root.path().to_path_buf()));
        // Asked before Create (containerd 2.x connects first): a guess from the shim.
        assert_eq!(
            registry.lookup("default", "c2", RUNC_SHIM).runtime.name,
            "runc"
        );
        let options = runc_options("runsc").write_to_bytes().unwrap();
        registry.created("default", "c2", Some(&bundle), Some(&options), RUNC_SHIM);
        assert_eq!(
            registry.lookup("default", "c2", RUNC_SHIM).runtime.name,
            "runsc"
        );
        // A plain runc Create; another shim's.
        registry.created("default", "c3", Some(&bundle), None, RUNC_SHIM);
        let c3 = registry.lookup("default", "c3", RUNC_SHIM);
        assert_eq!(c3.runtime, Runtime::from_shim(RUNC_SHIM));
        registry.created(
            "default",
            "c4",
            None,
            None,
            "/usr/bin/containerd-shim-runsc-v1",
        );
        assert_eq!(
            registry.lookup("default", "c4", RUNC_SHIM).runtime.name,
            "runsc"
        );
    }

    /// Where `BinaryName` cannot be passed (CRI's runtime-name form on containerd 1.6), the
    /// wrapper's config names the OCI runtime: it stands in for `BinaryName`, never over it.
    #[test]
    fn the_configured_oci_runtime_names_containers_without_a_binary_name() {
        const RUNSC: &str = "/usr/local/bin/runsc-host";
        let root = tempfile::tempdir().unwrap();
        let bundle = bundle_with_spec(root.path(), "k8s.io", "s1", &cri_sandbox_spec());
        let registry = IdentityRegistry::new(Some(root.path().to_path_buf()))
            .with_oci_runtime(Some(RUNSC.into()));
        // Before Create: the config, not the runc shim's name.
        let guessed = registry.lookup("k8s.io", "s1", RUNC_SHIM);
        assert_eq!(guessed.runtime, Runtime::from_config(RUNSC));
        assert_eq!(guessed.runtime.name, "runsc");
        // CRI's generic options carry no BinaryName: still the config, recorded for delete.
        let mut generic = runc_options("/usr/bin/crun");
        generic.type_url = "runtimeoptions.v1.Options".into();
        let generic = generic.write_to_bytes().unwrap();
        registry.created("k8s.io", "s1", Some(&bundle), Some(&generic), RUNC_SHIM);
        let created = registry.lookup("k8s.io", "s1", RUNC_SHIM);
        assert_eq!(created.runtime.source, RuntimeSource::Config);
        assert_eq!(created.workload.pod_name.as_deref(), Some("shop-7d9f"));
        assert_eq!(read_sidecar(&bundle).unwrap().runtime, created.runtime);
        let mut attributes = Attributes::new();
        created.put(&mut attributes);
        let get = |k: &str| attributes.get(k).and_then(|v| v.as_str());
        assert_eq!(get(attr::CONTAINER_RUNTIME_NAME), Some("runsc"));
        assert_eq!(get(attr::RUNTIME_SOURCE), Some("config"));
        assert_eq!(get(attr::RUNTIME_BINARY), Some(RUNSC));
        // A BinaryName that does arrive wins.
        let crun = runc_options("/usr/bin/crun").write_to_bytes().unwrap();
        registry.created("k8s.io", "c2", None, Some(&crun), RUNC_SHIM);
        let c2 = registry.lookup("k8s.io", "c2", RUNC_SHIM);
        assert_eq!(c2.runtime, Runtime::from_binary("/usr/bin/crun"));

        // The wrapper's own resolution: the config after every record, before the shim's name.
        let plain = tempfile::tempdir().unwrap();
        let resolved = Identity::resolve(Some(plain.path()), None, Some(RUNSC), RUNC_SHIM);
        assert_eq!(resolved.runtime, Runtime::from_config(RUNSC));
        std::fs::write(
            plain.path().join(RUNC_OPTIONS_FILE),
            r#"{"binary_name":"/usr/bin/crun"}"#,
        )
        .unwrap();
        let from_file = Identity::resolve(Some(plain.path()), None, Some(RUNSC), RUNC_SHIM);
        assert_eq!(from_file.runtime, Runtime::from_binary("/usr/bin/crun"));
        let given = Identity::resolve(None, Some("/usr/bin/runc"), Some(RUNSC), RUNC_SHIM);
        assert_eq!(given.runtime.name, "runc");
        assert_eq!(
            Identity::resolve(None, None, Some(RUNSC), RUNC_SHIM)
                .runtime
                .source,
            RuntimeSource::Config
        );
    }

    #[test]
    fn a_queued_create_holds_its_bundle_and_options_only_and_never_much() {
        let root = tempfile::tempdir().unwrap();
        let bundle = root.path().join("ns").join("big");
        std::fs::create_dir_all(&bundle).unwrap();
        let (_spool, sink, registry) = spooled_registry(root.path());
        // Options far larger than any runtime's: not copied, so the shim names the runtime.
        let mut huge = runc_options("runsc");
        {
            // A well-formed field the runc shim does not know, so only the size keeps it out.
            let mut out = protobuf::CodedOutputStream::vec(&mut huge.value);
            out.write_bytes(15, &vec![7u8; 2 * MAX_OPTIONS_COPY])
                .unwrap();
            out.flush().unwrap();
        }
        assert_eq!(
            binary_name_in_any(&huge).as_deref(),
            Some("runsc"),
            "readable if copied"
        );
        let request = create_request("big", &bundle, Some(huge));
        registry.create_seen(&sink, "ns", "big", &request, RUNC_SHIM);
        sink.shutdown(Duration::from_secs(5));
        let recorded = read_sidecar(&bundle).expect("recorded in the bundle the request names");
        assert_eq!(recorded.runtime, Runtime::from_shim(RUNC_SHIM));
    }

    /// Through the proxy's taps: a `Create` with gVisor's `BinaryName`, its event and a later
    /// call all say runsc and name the pod.
    #[test]
    fn the_taps_put_the_identity_on_calls_and_events() {
        use crate::events::EventTap;
        use crate::tap::{test_context_in, test_header as header, test_request, test_response};
        use crate::tap::{ConnectionTap, NAMESPACE_METADATA};
        use containerd_shim_protos::api;

        // The bundle containerd made for k8s.io/c1 under the task root.
        let task_root = tempfile::tempdir().unwrap();
        let bundle = bundle_with_spec(task_root.path(), "k8s.io", "c1", &cri_container_spec());
        let spool = tempfile::tempdir().unwrap();
        let ctx = test_context_in(spool.path(), Some(task_root.path().to_path_buf()));
        let tap = ConnectionTap::new(ctx.clone());
        let ok = || test_response(ttrpc::Code::OK, vec![]);
        let meta = [(NAMESPACE_METADATA, "k8s.io")];
        let create = create_request("c1", &bundle, Some(runc_options("runsc-nonet")));
        let create = test_request("containerd.task.v2.Task", "Create", create, &meta);
        tap.on_request(&header(1), &create, 10);
        let mut event = containerd_shim_protos::events::task::TaskCreate::new();
        event.container_id = "c1".into();
        let mut any = Any::new();
        any.value = event.write_to_bytes().unwrap();
        let mut envelope = containerd_shim_protos::shim::event::Envelope::new();
        envelope.topic = "/tasks/create".into();
        envelope.namespace = "k8s.io".into();
        envelope.event = protobuf::MessageField::some(any);
        let mut forward = containerd_shim_protos::shim::events::ForwardRequest::new();
        forward.envelope = protobuf::MessageField::some(envelope);
        let forward = test_request(
            crate::events::EVENTS_SERVICE,
            "Forward",
            forward.write_to_bytes().unwrap(),
            &[],
        );
        EventTap::new(ctx.clone()).on_request(&forward, 11);
        tap.on_response(1, &ok(), 12);
        let mut start = api::StartRequest::new();
        start.id = "c1".into();
        let start = test_request(
            "containerd.task.v2.Task",
            "Start",
            start.write_to_bytes().unwrap(),
            &meta,
        );
        tap.on_request(&header(3), &start, 13);
        tap.on_response(3, &ok(), 14);
        drop(tap);
        let ctx = Arc::try_unwrap(ctx).ok().unwrap();
        let spans = spans_naming_the_pod(&ctx.sink, spool.path(), 3);
        let names: Vec<&str> = spans.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "event /tasks/create",
                "containerd.task.v2.Task/Create",
                "containerd.task.v2.Task/Start"
            ]
        );
        for span in &spans {
            assert_eq!(
                span.attr_str(attr::CONTAINER_RUNTIME_NAME),
                Some("runsc"),
                "{span:?}"
            );
            assert_eq!(span.attr_str(attr::RUNTIME_BINARY), Some("runsc-nonet"));
        }
    }

    #[test]
    fn docker_containers_are_named_from_their_config_beside_the_hostname_file() {
        let root = tempfile::tempdir().unwrap();
        let id = "0123abcd";
        let container_dir = root.path().join("containers").join(id);
        std::fs::create_dir_all(&container_dir).unwrap();
        std::fs::write(
            container_dir.join("config.v2.json"),
            r#"{"Name":"/web-1","Config":{"Image":"local/busybox:1"},"Image":"sha256:0"}"#,
        )
        .unwrap();
        let hostname = container_dir.join("hostname").display().to_string();
        let spec =
            serde_json::json!({"mounts": [{"destination": "/etc/hostname", "source": hostname}]});
        let bundle = bundle_with_spec(root.path(), "moby", id, &spec);
        let workload = Workload::of_bundle(&bundle);
        assert_eq!(workload.engine_name.as_deref(), Some("web-1"));
        assert_eq!(workload.image.as_deref(), Some("local/busybox:1"));
        // Another container's directory is not read.
        let other = bundle_with_spec(root.path(), "moby", "other", &spec);
        assert_eq!(Workload::of_bundle(&other), Workload::default());
        // CRI's annotations win: a pod's container is described by them.
        let cri = serde_json::json!({
            "annotations": {"io.kubernetes.cri.container-type": "container"},
            "mounts": [{"destination": "/etc/hostname", "source": hostname}],
        });
        std::fs::write(bundle.join("config.json"), cri.to_string()).unwrap();
        assert_eq!(Workload::of_bundle(&bundle).engine_name, None);
    }

    #[test]
    fn registry_stays_bounded_and_keeps_what_is_in_use() {
        let registry = IdentityRegistry::new(None);
        registry.created(
            "ns",
            "kept",
            None,
            None,
            "/usr/bin/containerd-shim-runsc-v1",
        );
        for i in 0..10_000 {
            registry.lookup("ns", &format!("ghost-{i}"), RUNC_SHIM);
            if i % 100 == 0 {
                assert_eq!(
                    registry.lookup("ns", "kept", RUNC_SHIM).runtime.name,
                    "runsc"
                );
            }
        }
        assert!(
            registry.remembered() <= REMEMBERED,
            "{}",
            registry.remembered()
        );
    }

    #[test]
    fn a_shutdown_span_retires_its_identity_and_other_spans_do_not() {
        let registry = IdentityRegistry::new(None);
        for id in ["retired", "in-use"] {
            registry.created("ns", id, None, None, "/usr/bin/containerd-shim-runsc-v1");
        }
        registry.annotate(&mut span_of(
            "ns",
            "retired",
            "containerd.task.v2.Task/Shutdown",
        ));
        registry.annotate(&mut span_of(
            "ns",
            "in-use",
            "containerd.task.v2.Task/State",
        ));
        // Enough new containers for one generation turn.
        for i in 0..REMEMBERED / 2 {
            registry.lookup("ns", &format!("new-{i}"), RUNC_SHIM);
        }
        // Forgotten, and with no bundle left, resolved afresh from the shim; the other one stays.
        let runtime = |id| registry.lookup("ns", id, RUNC_SHIM).runtime.name.clone();
        assert_eq!(runtime("retired"), "runc");
        assert_eq!(runtime("in-use"), "runsc");
    }
}
