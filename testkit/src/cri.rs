//! Kubernetes without a cluster: a private containerd with its real CRI plugin on, registered for
//! tracing by `shimtrace install --write` itself, driven the way the kubelet drives it.
//!
//! A [`CriNode`] starts from a base containerd config (a minimal one, a given text such as
//! Debian's stock `/etc/containerd/config.toml`, or this version's `containerd config default`),
//! makes it private ([`make_private`]: own root, state, sockets, CNI dir; CRI on with a local
//! sandbox image and `restrict_oom_score_adj`), lets [`shimtrace_containerd::install::install`]
//! write its registration into that file — wrapper links in a directory on containerd's `PATH`,
//! entries the wrapper needs in the wrapper's config that containerd's `SHIMTRACE_CONFIG` names —
//! and starts containerd on exactly the files install left. The sandbox image (and, unless asked
//! not to, the busybox workload image) is built from the instance's busybox rootfs and imported
//! into `k8s.io` with `ctr images import`. Pods run on the host network (no CNI).
//!
//! Everything the node starts is cleaned up as for any [`Traced`] instance; pods still known to
//! CRI are stopped and removed first, so that their mounts go with them.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use shimtrace_containerd::cri::{ContainerSpec, Cri, CriError, Pod, PodSpec};
use shimtrace_containerd::image::{
    containerd_reference, CRI_NAMESPACE, SANDBOX_COMMAND, SANDBOX_TAG, WORKLOAD_TAG,
};
use shimtrace_containerd::install::{install, InstallArgs, InstallOutcome};
use shimtrace_containerd::private::{
    await_cri_ready, import_cri_image, make_private, ConfigSource, CriSettings,
};

use crate::cli::parse_args;
use crate::containerd::HarnessError;
use crate::traced::{pids_with_cmdline, wait_for, wrapper_binary, Spooled, Traced, TracedOptions};

/// The busybox image pods run (`docker.io/local/busybox:1`).
pub fn workload_image() -> String {
    containerd_reference(WORKLOAD_TAG)
}

/// The sandbox ("pause") image every node is configured with (`docker.io/local/sandbox:1`).
pub fn sandbox_image() -> String {
    containerd_reference(SANDBOX_TAG)
}

/// Debian bookworm's `/etc/containerd/config.toml` as the `containerd` package (1.6.20~ds1)
/// installs it: CRI on, CNI paths, no runtimes.
pub const DEBIAN_STOCK_CONFIG: &str = r#"version = 2

[plugins]
  [plugins."io.containerd.grpc.v1.cri"]
    [plugins."io.containerd.grpc.v1.cri".cni]
      bin_dir = "/usr/lib/cni"
      conf_dir = "/etc/cni/net.d"
  [plugins."io.containerd.internal.v1.opt"]
    path = "/var/lib/containerd/opt"
"#;

/// The config a node starts from, before it is made private and install merges into it.
#[derive(Debug, Clone, Default)]
pub enum BaseConfig {
    /// Nothing but the schema version.
    #[default]
    Minimal,
    /// This text (e.g. [`DEBIAN_STOCK_CONFIG`]).
    Text(String),
    /// What `containerd config default` prints for the version under test.
    ContainerdDefault,
}

/// How to start a [`CriNode`].
pub struct CriOptions {
    pub base: BaseConfig,
    /// Run `shimtrace install --write` on the config (default: yes).
    pub install: bool,
    /// Extra `shimtrace install` arguments, e.g. `["--form", "path"]` or `["--runsc", "/x"]`.
    pub install_args: Vec<String>,
    /// Import the busybox workload image up front (default: yes; `install --check` imports it
    /// itself when it is missing).
    pub import_workload: bool,
    /// Environment and layout of the traced containerd (spool, OTLP, …).
    pub traced: TracedOptions,
}

impl Default for CriOptions {
    fn default() -> CriOptions {
        CriOptions {
            base: BaseConfig::Minimal,
            install: true,
            install_args: Vec::new(),
            import_workload: true,
            traced: TracedOptions::default(),
        }
    }
}

/// A pod the node runs: its sandbox and its containers' ids, in the order given.
#[derive(Debug, Clone)]
pub struct PodRun {
    pub pod: Pod,
    pub containers: Vec<String>,
}

impl PodRun {
    pub fn id(&self) -> &str {
        &self.pod.id
    }
}

/// A private containerd with CRI on, registered by `shimtrace install --write` (see the module
/// docs). Fields drop in order: the client, its runtime, then the containerd.
pub struct CriNode {
    cri: Cri,
    runtime: tokio::runtime::Runtime,
    pub traced: Traced,
    /// What install did (none when the node was started without it).
    pub install: Option<InstallOutcome>,
    /// The config file containerd started on, as it was then.
    pub config_text: String,
    /// The same file before install merged into it (the base config made private).
    pub config_before_install: String,
    /// The arguments install ran with (none without it): to run it again, as after an upgrade.
    pub install_args: Vec<String>,
}

impl CriNode {
    /// A node of `version` (see [`CriOptions`]); returns once CRI answers and the images are in.
    pub fn start(version: &str, options: CriOptions) -> Result<CriNode, HarnessError> {
        let CriOptions {
            base,
            install: run_install,
            install_args,
            import_workload,
            mut traced,
        } = options;
        traced.extra.source = ConfigSource::Existing;
        let mut outcome = None;
        let mut before_install = String::new();
        let mut ran_with = Vec::new();
        let traced = Traced::start_registered(version, traced, |prepared, bin, wrapper_config| {
            let schema = prepared.version.binary().config_version();
            let base_text = match &base {
                BaseConfig::Minimal => format!("version = {schema}\n"),
                BaseConfig::Text(text) => text.clone(),
                BaseConfig::ContainerdDefault => config_default(&prepared.version.containerd())?,
            };
            let cri = CriSettings {
                sandbox_image: sandbox_image(),
            };
            let private = make_private(&base_text, prepared.dir, schema, Some(&cri))?;
            std::fs::write(&prepared.config, &private)
                .map_err(|e| HarnessError::io("writing containerd's config", e))?;
            before_install = private;
            if run_install {
                let path_arg = prepared.path.to_string_lossy().into_owned();
                let mut args: Vec<String> = vec![
                    "--wrapper".into(),
                    path_string(&wrapper_binary()),
                    "--bin-dir".into(),
                    path_string(bin),
                    "--config".into(),
                    path_string(&prepared.config),
                    "--wrapper-config".into(),
                    path_string(wrapper_config),
                    "--containerd".into(),
                    path_string(&prepared.version.containerd()),
                    "--shim-path".into(),
                    path_arg,
                    "--write".into(),
                ];
                args.extend(install_args.iter().cloned());
                let refs: Vec<&str> = args.iter().map(String::as_str).collect();
                let parsed: InstallArgs = parse_args(&refs);
                outcome = Some(install(&parsed)?);
                ran_with = args;
            }
            Ok(())
        })?;
        let config_text = std::fs::read_to_string(traced.containerd.config_path())
            .map_err(|e| HarnessError::io("reading containerd's config", e))?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .map_err(|e| HarnessError::io("starting a tokio runtime", e))?;
        let cri = runtime.block_on(Cri::connect(traced.containerd.address()))?;
        let node = CriNode {
            cri,
            runtime,
            traced,
            install: outcome,
            config_text,
            config_before_install: before_install,
            install_args: ran_with,
        };
        node.await_cri_ready()?;
        node.import_images(import_workload)?;
        Ok(node)
    }

    /// Restarts containerd (its shims and pods keep running) and returns once its CRI plugin has
    /// recovered them and answers again.
    pub fn restart_containerd(&mut self) -> Result<(), HarnessError> {
        self.traced.containerd.restart()?;
        self.cri = self
            .runtime
            .block_on(Cri::connect(self.traced.containerd.address()))?;
        self.await_cri_ready()
    }

    /// Waits until CRI answers ListPodSandbox (it refuses calls until it has loaded its state).
    fn await_cri_ready(&self) -> Result<(), HarnessError> {
        self.block_on(await_cri_ready(&self.cri, Duration::from_secs(30)))
            .map_err(HarnessError::from)
    }

    /// The CRI client (clone it to give it a `traceparent`).
    pub fn cri(&self) -> &Cri {
        &self.cri
    }

    /// Runs a future on the node's runtime.
    pub fn block_on<F: Future>(&self, future: F) -> F::Output {
        self.runtime.block_on(future)
    }

    fn import_images(&self, workload: bool) -> Result<(), HarnessError> {
        let c = &self.traced.containerd;
        let dir = c.dir().join("images");
        std::fs::create_dir_all(&dir).map_err(|e| HarnessError::io("creating the image dir", e))?;
        let mut images = vec![(SANDBOX_TAG, SANDBOX_COMMAND.to_vec())];
        if workload {
            images.push((WORKLOAD_TAG, vec!["/bin/sh"]));
        }
        let ctr = c.version().ctr();
        for (tag, command) in images {
            self.block_on(import_cri_image(
                &self.cri,
                &ctr,
                &c.address(),
                &c.rootfs(),
                tag,
                &command,
                &dir,
            ))?;
        }
        Ok(())
    }

    /// Runs a pod sandbox and then creates and starts each container in it, in order.
    pub fn run_pod(&self, pod: &PodSpec, containers: &[ContainerSpec]) -> Result<PodRun, CriError> {
        self.block_on(run_pod_with(&self.cri, pod, containers))
    }

    /// Stops and removes a pod (and its containers).
    pub fn remove_pod(&self, pod_id: &str) -> Result<(), CriError> {
        self.block_on(async {
            self.cri.stop_pod(pod_id).await?;
            self.cri.remove_pod(pod_id).await
        })
    }

    /// Stops and removes a pod, calling again after a failure as the kubelet does (e.g. while
    /// containerd is still cleaning up after a dead shim); the last error after `timeout`.
    pub fn remove_pod_retrying(&self, pod_id: &str, timeout: Duration) -> Result<(), CriError> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.remove_pod(pod_id) {
                Ok(()) => return Ok(()),
                Err(e) if Instant::now() > deadline => return Err(e),
                Err(_) => std::thread::sleep(Duration::from_millis(200)),
            }
        }
    }

    /// The status of `(type, id)` in `ctr plugins ls` (e.g. `("io.containerd.grpc.v1", "cri")` →
    /// "ok").
    pub fn plugin_status(&self, plugin_type: &str, id: &str) -> Option<String> {
        let out = self.traced.containerd.ctr(&["plugins", "ls"]).ok()?;
        out.stdout.lines().find_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            (fields.len() >= 3 && fields[0] == plugin_type && fields[1] == id)
                .then(|| fields[fields.len() - 1].to_string())
        })
    }

    /// The address containerd keeps for the shim of `id` in CRI's namespace: the bundle's
    /// `address` file (1.x) or `bootstrap.json` (2.x).
    pub fn shim_address(&self, id: &str) -> Option<String> {
        self.traced.shim_address_in(CRI_NAMESPACE, id)
    }

    /// Live wrapper proxies serving `socket` (`… proxy --socket <socket> …`).
    pub fn proxies_on(&self, socket: &str) -> Vec<u32> {
        pids_with_cmdline(&["proxy", "--socket", socket])
    }

    /// Waits until no process of this instance but containerd is left (shims, proxies,
    /// containers); returns what is still there after `timeout`.
    pub fn await_no_processes(&self, timeout: Duration) -> Vec<u32> {
        let gone = wait_for(timeout, || {
            self.traced
                .containerd
                .owned_processes()
                .is_empty()
                .then_some(())
        });
        match gone {
            Some(()) => Vec::new(),
            None => self.traced.containerd.owned_processes(),
        }
    }
}

impl Spooled for CriNode {
    fn spool_dir(&self) -> PathBuf {
        self.traced.spool.clone()
    }
}

impl Drop for CriNode {
    fn drop(&mut self) {
        // Pods CRI still knows go first: their mounts (the sandbox's /dev/shm) live in the
        // instance's state dir.
        let cri = self.cri.clone();
        let _ = self.runtime.block_on(async {
            tokio::time::timeout(Duration::from_secs(60), async {
                for id in cri.list_pods().await.unwrap_or_default() {
                    let _ = cri.stop_pod(&id).await;
                    let _ = cri.remove_pod(&id).await;
                }
            })
            .await
        });
    }
}

/// Runs a pod sandbox, then creates and starts each container in it, in order.
pub async fn run_pod_with(
    cri: &Cri,
    pod: &PodSpec,
    containers: &[ContainerSpec],
) -> Result<PodRun, CriError> {
    let sandbox = cri.run_pod(pod).await?;
    let mut ids = Vec::new();
    for container in containers {
        let id = cri.create_container(&sandbox, container).await?;
        cri.start_container(&id).await?;
        ids.push(id);
    }
    Ok(PodRun {
        pod: sandbox,
        containers: ids,
    })
}

/// `containerd config default` of the binary `containerd`.
pub fn config_default(containerd: &Path) -> Result<String, HarnessError> {
    let output = Command::new(containerd)
        .args(["config", "default"])
        .output()
        .map_err(|e| {
            HarnessError::io(
                format!("running {} config default", containerd.display()),
                e,
            )
        })?;
    if !output.status.success() {
        return Err(HarnessError::io(
            format!(
                "{} config default failed: {}",
                containerd.display(),
                String::from_utf8_lossy(&output.stderr)
            ),
            std::io::Error::other("non-zero exit"),
        ));
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

fn path_string(path: &Path) -> String {
    path.display().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn images_are_the_local_ones() {
        assert_eq!(workload_image(), "docker.io/local/busybox:1");
        assert_eq!(sandbox_image(), "docker.io/local/sandbox:1");
        assert!(DEBIAN_STOCK_CONFIG.starts_with("version = 2\n"));
    }
}
