//! Private Docker Engines for end-to-end tests: an unpacked `dockerd` with its own data-root,
//! exec-root, unix socket and pidfile, registered with the traced runtimes by the real
//! `shimtrace install --docker`, cleaned up by pid.
//!
//! ```no_run
//! use shimtrace_testkit::docker::{DockerOptions, TestDocker};
//! let docker = TestDocker::start_traced("26.1.5", DockerOptions::default())?;
//! let out = docker.docker(&["run", "--rm", "--network", "none", "--runtime", "traced-runc",
//!     shimtrace_containerd::image::WORKLOAD_TAG, "echo", "hi"])?;
//! assert_eq!(out.stdout, "hi\n");
//! # Ok::<(), shimtrace_testkit::HarnessError>(())
//! ```
//!
//! The engines come from `scripts/install-docker.sh`: `/opt/shimtrace/docker/<version>/usr/{sbin,bin}/`
//! (`SHIMTRACE_DOCKER_PREFIX` overrides the prefix). dockerd starts its own containerd from the first
//! `containerd` on its `PATH`: [`DockerOptions::containerd`] picks which (the system's 1.6.20 by
//! default). Its config keeps it off the host's networking (`"iptables": false, "bridge": "none"`,
//! no userland proxy), and its containers under a cgroup parent of its own.
//!
//! Cleanup never goes by process name: the Drop guard removes every container through the docker
//! CLI, SIGTERMs dockerd by pid (it stops its containerd), then SIGKILLs by pid every process whose
//! environment carries this instance's [`INSTANCE_MARKER_ENV`] (set on dockerd, inherited by its
//! containerd, every shim and proxy) or whose argv names a path inside its temp dir, with their
//! descendants (the containers, gVisor's sandbox and gofer); then force-deletes leftover runc and
//! runsc containers and detaches any mount left inside the temp dir.

use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use serde_json::{json, Map, Value};
use tempfile::TempDir;

use shimtrace_containerd::docker::{CliOutput, DockerCli, DOCKER_NAMESPACE};
use shimtrace_containerd::dockerd::{
    detach_mounts_under, remove_cgroup_parent, DockerdConfig, PrivateDockerd,
};
use shimtrace_containerd::image::{write_docker_archive, WORKLOAD_TAG};
use shimtrace_containerd::rootfs::build_busybox_rootfs;

use crate::containerd::{
    force_delete_bundles, is_zombie, kill_with_descendants, owned_processes, with_descendants,
    ContainerdVersion, Ownership, BUSYBOX, INSTANCE_MARKER_ENV,
};
use crate::error::{Engine, HarnessError};
use crate::traced::{built_binary, wrapper_binary, Spooled};

/// The Docker Engine the tests run (trixie's docker.io).
pub const DOCKER_VERSION: &str = "26.1.5";
/// The newer engine (sid's docker.io), which can run a containerd 2.x.
pub const DOCKER_NEXT_VERSION: &str = "28.5.2";

/// Upper bound for one docker CLI command.
pub const CLI_TIMEOUT: Duration = Duration::from_secs(120);

/// One unpacked Docker Engine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DockerVersion {
    version: String,
    root: PathBuf,
}

impl DockerVersion {
    /// Finds an unpacked engine ("26.1.5", "28.5.2") and checks that it is what it claims.
    pub fn find(version: &str) -> Result<Self, HarnessError> {
        let prefix = std::env::var_os("SHIMTRACE_DOCKER_PREFIX")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(shimtrace_containerd::dockerd::UNPACKED_PREFIX));
        let found = DockerVersion {
            version: version.to_owned(),
            root: prefix.join(version),
        };
        let dockerd = found.dockerd();
        if !dockerd.is_file() || !found.cli().is_file() {
            return Err(HarnessError::NotInstalled {
                engine: Engine::Docker,
                version: version.to_owned(),
                path: dockerd,
            });
        }
        let output = Command::new(&dockerd)
            .arg("--version")
            .output()
            .map_err(|e| HarnessError::io(format!("running {} --version", dockerd.display()), e))?;
        let reported = String::from_utf8_lossy(&output.stdout).trim().to_string();
        // "Docker version 26.1.5+dfsg1, build 411e817"
        if !reported.contains(&format!("version {version}")) {
            return Err(HarnessError::WrongVersion {
                engine: Engine::Docker,
                version: version.to_owned(),
                path: dockerd,
                reported,
            });
        }
        Ok(found)
    }

    pub fn version(&self) -> &str {
        &self.version
    }

    /// The daemon.
    pub fn dockerd(&self) -> PathBuf {
        self.root.join("usr/sbin/dockerd")
    }

    /// The docker CLI of the same version.
    pub fn cli(&self) -> PathBuf {
        self.root.join("usr/bin/docker")
    }

    /// Directories dockerd's own helpers live in (`docker-proxy`, `docker-init`).
    pub fn bin_dirs(&self) -> [PathBuf; 2] {
        [self.root.join("usr/sbin"), self.root.join("usr/bin")]
    }
}

/// How to start a [`TestDocker`].
#[derive(Debug, Clone, Default)]
pub struct DockerOptions {
    /// The containerd dockerd starts (first on its `PATH`); default: the system's 1.6.20.
    pub containerd: Option<ContainerdVersion>,
    /// Extra environment for dockerd, inherited by its containerd and every shim.
    pub env: Vec<(OsString, OsString)>,
    /// Keys merged over the generated daemon.json before the installer runs.
    pub daemon_json: Map<String, Value>,
    /// Puts `"live-restore": true` in daemon.json.
    pub live_restore: bool,
}

impl DockerOptions {
    /// Adds one environment variable (builder style).
    pub fn env(mut self, key: impl Into<OsString>, value: impl Into<OsString>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }
}

/// The `runsc` runtime the generated daemon.json has, as Docker's gVisor guide sets it up, with the
/// flags this machine kind needs (no network stack of its own, cgroups left to the runc shim); the
/// installer carries its `runtimeArgs` over to `traced-runsc`.
pub fn runsc_runtime() -> Value {
    json!({"path": "/usr/bin/runsc", "runtimeArgs": ["--network=none", "--ignore-cgroups"]})
}

/// A dockerd of a given version in its own temp dir. Dropping it removes its containers, stops it
/// and kills whatever it left, all by pid.
pub struct TestDocker {
    version: DockerVersion,
    containerd: ContainerdVersion,
    config: DockerdConfig,
    cgroup_parent: String,
    install_report: String,
    /// Declared before `dir`: stopped before it goes.
    dockerd: Option<PrivateDockerd>,
    dir: TempDir,
}

static INSTANCE_COUNTER: AtomicU32 = AtomicU32::new(0);

/// Where `shimtrace install --docker` finds the real shims.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShimLookup {
    /// Named with `--shim-path`, `PATH` holding none.
    ShimPath,
    /// On `PATH`, as most installs find them.
    Path,
}

impl TestDocker {
    /// Writes the daemon.json, registers the traced runtimes with the real `shimtrace install
    /// --docker --write`, starts dockerd and loads the busybox image ([`WORKLOAD_TAG`]).
    pub fn start_traced(version: &str, options: DockerOptions) -> Result<TestDocker, HarnessError> {
        let mut docker = TestDocker::prepare(&DockerVersion::find(version)?, options)?;
        docker.install_traced()?;
        docker.start()?;
        docker.load_busybox()?;
        Ok(docker)
    }

    /// Creates the instance dir and its daemon.json; dockerd is not started yet.
    pub fn prepare(
        version: &DockerVersion,
        options: DockerOptions,
    ) -> Result<TestDocker, HarnessError> {
        // Short path under /tmp: dockerd's and containerd's sockets live below it.
        let dir = tempfile::Builder::new()
            .prefix("dkr-")
            .tempdir_in("/tmp")
            .map_err(|e| HarnessError::io("creating the docker temp dir in /tmp", e))?;
        let containerd = match &options.containerd {
            Some(c) => c.clone(),
            None => ContainerdVersion::find("1.6.20")?,
        };
        let cgroup_parent = format!(
            "shimtrace-docker-{}-{}",
            std::process::id(),
            INSTANCE_COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        for sub in ["bin", "spool", "run"] {
            fs::create_dir_all(dir.path().join(sub)).map_err(|e| {
                HarnessError::io(format!("creating {sub} in the docker temp dir"), e)
            })?;
        }
        // An empty config of the test's own, so the machine's /etc/shimtrace/config.toml cannot
        // redirect the wrapper.
        fs::write(dir.path().join("shimtrace.toml"), "")
            .map_err(|e| HarnessError::io("writing the shimtrace config", e))?;
        let mut config = DockerdConfig::new(dir.path(), version.dockerd());
        config.cli = version.cli();
        config.env = vec![
            (INSTANCE_MARKER_ENV.into(), dir.path().into()),
            (
                shimtrace_span::env::SPOOL_DIR.into(),
                dir.path().join("spool").into(),
            ),
            (
                shimtrace_span::env::RUN_DIR.into(),
                dir.path().join("run").into(),
            ),
            (
                shimtrace_span::env::CONFIG.into(),
                dir.path().join("shimtrace.toml").into(),
            ),
        ];
        config.env.extend(options.env.iter().cloned());
        let extra = json!({
            "cgroup-parent": format!("/{cgroup_parent}"),
            "live-restore": options.live_restore,
            "runtimes": {"runsc": runsc_runtime()},
        });
        config.daemon_json = extra.as_object().cloned().unwrap_or_default();
        for (key, value) in &options.daemon_json {
            config.daemon_json.insert(key.clone(), value.clone());
        }
        let mut docker = TestDocker {
            version: version.clone(),
            containerd,
            config,
            cgroup_parent,
            install_report: String::new(),
            dockerd: None,
            dir,
        };
        docker.config.path = docker.path_var();
        docker.config.write_daemon_json()?;
        Ok(docker)
    }

    /// Runs the built `shimtrace install --docker --write` on this instance's daemon.json, with
    /// the links in [`Self::bin_dir`] and the real shims looked up in dockerd's `PATH`, given as
    /// `--shim-path`; returns its report.
    pub fn install_traced(&mut self) -> Result<String, HarnessError> {
        self.install_traced_by(ShimLookup::ShimPath)
    }

    /// [`Self::install_traced`], finding the real shims as `lookup` says.
    pub fn install_traced_by(&mut self, lookup: ShimLookup) -> Result<String, HarnessError> {
        let mut install = Command::new(built_binary("shimtrace"));
        install
            .args(["install", "--docker", "--write", "--config"])
            .arg(self.config_path())
            .arg("--wrapper")
            .arg(wrapper_binary())
            .arg("--bin-dir")
            .arg(self.bin_dir());
        match lookup {
            // With a PATH that holds none: what a user does whose shims are not on root's PATH.
            ShimLookup::ShimPath => install
                .arg("--shim-path")
                .arg(self.path_var())
                .env("PATH", "/nonexistent/shimtrace-test"),
            ShimLookup::Path => install.env("PATH", self.path_var()),
        };
        let output = install
            .stdin(Stdio::null())
            .output()
            .map_err(|e| HarnessError::io("running shimtrace install --docker", e))?;
        if !output.status.success() {
            return Err(HarnessError::DockerInstall {
                status: output.status.to_string(),
                stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
            });
        }
        self.install_report = String::from_utf8_lossy(&output.stdout).into_owned();
        Ok(self.install_report.clone())
    }

    /// What the installer printed.
    pub fn install_report(&self) -> &str {
        &self.install_report
    }

    /// Starts dockerd on its daemon.json; returns once it answers.
    pub fn start(&mut self) -> Result<(), HarnessError> {
        match &mut self.dockerd {
            Some(dockerd) => dockerd.start_again()?,
            None => self.dockerd = Some(PrivateDockerd::start(self.config.clone())?),
        }
        Ok(())
    }

    /// SIGTERM to dockerd by pid, waiting until it exited (SIGKILL after a minute). Without
    /// live-restore dockerd stops its containers and its containerd first.
    pub fn stop(&mut self) -> Result<(), HarnessError> {
        if let Some(dockerd) = &mut self.dockerd {
            dockerd.stop()?;
        }
        Ok(())
    }

    /// Stops dockerd and starts it again on the same config.
    pub fn restart(&mut self) -> Result<(), HarnessError> {
        self.stop()?;
        self.start()
    }

    /// Builds the busybox rootfs, writes it as a docker-archive and `docker load`s it as
    /// [`WORKLOAD_TAG`] (default command `/bin/sh`).
    pub fn load_busybox(&self) -> Result<(), HarnessError> {
        let rootfs = self.dir.path().join("rootfs");
        build_busybox_rootfs(&rootfs, Path::new(BUSYBOX))?;
        let archive = self.dir.path().join("busybox.tar");
        write_docker_archive(&rootfs, WORKLOAD_TAG, &["/bin/sh"], &archive)?;
        self.docker_ok(&["load", "-q", "-i", &archive.display().to_string()])?;
        Ok(())
    }

    /// The version this instance runs.
    pub fn version(&self) -> &DockerVersion {
        &self.version
    }

    /// The containerd version dockerd runs.
    pub fn containerd_version(&self) -> &ContainerdVersion {
        &self.containerd
    }

    /// The instance's private directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// dockerd's socket as `-H`/`DOCKER_HOST` takes it.
    pub fn host(&self) -> String {
        self.config.host()
    }

    pub fn config_path(&self) -> PathBuf {
        self.config.config_path()
    }

    /// Where the installer put the wrapper links (first on dockerd's `PATH`).
    pub fn bin_dir(&self) -> PathBuf {
        self.dir.path().join("bin")
    }

    /// The spool the wrappers under this dockerd write.
    pub fn spool(&self) -> PathBuf {
        self.dir.path().join("spool")
    }

    /// The wrappers' run dir (proxy locks, event sockets).
    pub fn run_dir(&self) -> PathBuf {
        self.dir.path().join("run")
    }

    pub fn log_path(&self) -> PathBuf {
        self.config.log_path()
    }

    /// dockerd's whole log so far (empty if unreadable).
    pub fn log(&self) -> String {
        fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// dockerd's `PATH`: the wrapper links, the chosen containerd, Docker's helpers, the system.
    pub fn path_var(&self) -> OsString {
        let mut dirs = vec![self.bin_dir(), self.containerd.bin_dir().to_path_buf()];
        dirs.extend(self.version.bin_dirs());
        dirs.extend(
            [
                "/usr/local/sbin",
                "/usr/local/bin",
                "/usr/sbin",
                "/usr/bin",
                "/sbin",
                "/bin",
            ]
            .map(PathBuf::from),
        );
        std::env::join_paths(dirs).expect("no ':' in these paths")
    }

    /// dockerd's pid while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.dockerd.as_ref().and_then(PrivateDockerd::pid)
    }

    /// The exec-root dockerd keeps its containerd under.
    pub fn exec_root(&self) -> PathBuf {
        self.config.exec_root()
    }

    /// The gRPC socket of dockerd's containerd (what shims get as `-address`).
    pub fn containerd_address(&self) -> PathBuf {
        self.config.containerd_address()
    }

    /// The pid of dockerd's containerd, while it runs.
    pub fn containerd_pid(&self) -> Option<u32> {
        fs::read_to_string(self.exec_root().join("containerd/containerd.pid"))
            .ok()?
            .trim()
            .parse()
            .ok()
            .filter(|pid| !is_zombie(*pid))
    }

    /// containerd's state dir (bundles below `io.containerd.runtime.v2.task/moby/<id>`).
    pub fn containerd_state(&self) -> PathBuf {
        self.config.containerd_state()
    }

    /// The bundle of container `id` (its full id).
    pub fn bundle_dir(&self, id: &str) -> PathBuf {
        self.containerd_state()
            .join("io.containerd.runtime.v2.task")
            .join(DOCKER_NAMESPACE)
            .join(id)
    }

    /// The docker CLI of this version, talking to this dockerd.
    pub fn cli(&self) -> DockerCli {
        self.config.cli()
    }

    /// `docker -H <this dockerd> ARGS…`; a non-zero exit is not an error here.
    pub fn docker(&self, args: &[&str]) -> Result<CliOutput, HarnessError> {
        Ok(self.cli().run(args, CLI_TIMEOUT)?)
    }

    /// Like [`Self::docker`]; a non-zero exit is an error carrying stderr.
    pub fn docker_ok(&self, args: &[&str]) -> Result<CliOutput, HarnessError> {
        Ok(self.cli().run_ok(args, CLI_TIMEOUT)?)
    }

    /// Pids of live processes of this instance other than dockerd and its containerd: shims,
    /// proxies, containers.
    pub fn owned_processes(&self) -> Vec<u32> {
        let daemons = [self.pid(), self.containerd_pid()];
        let mut all = with_descendants(&owned_processes(&self.ownership()));
        all.sort_unstable();
        all.dedup();
        all.retain(|pid| !daemons.contains(&Some(*pid)) && !is_zombie(*pid));
        all
    }

    fn ownership(&self) -> Ownership {
        let marker = format!("{INSTANCE_MARKER_ENV}={}", self.dir.path().display());
        let spool = format!(
            "{}={}",
            shimtrace_span::env::SPOOL_DIR,
            self.spool().display()
        );
        Ownership {
            address: self
                .containerd_address()
                .into_os_string()
                .into_encoded_bytes(),
            environ: vec![marker.into_bytes(), spool.into_bytes()],
            dir: self.dir.path().as_os_str().as_encoded_bytes().to_vec(),
        }
    }

    /// Removes every container (`docker rm -f`), quickly; errors are ignored.
    fn remove_all_containers(&self) {
        let quick = Duration::from_secs(30);
        let Ok(ids) = self.cli().run(&["ps", "-aq", "--no-trunc"], quick) else {
            return;
        };
        for id in ids.stdout.lines().map(str::trim).filter(|l| !l.is_empty()) {
            let _ = self.cli().run(&["rm", "-f", id], quick);
        }
    }
}

impl Spooled for TestDocker {
    fn spool_dir(&self) -> PathBuf {
        self.spool()
    }
}

impl Drop for TestDocker {
    fn drop(&mut self) {
        if self
            .dockerd
            .as_mut()
            .is_some_and(PrivateDockerd::is_running)
        {
            self.remove_all_containers();
        }
        let _ = self.stop();
        let owned = owned_processes(&self.ownership());
        // Sockets killed proxies and shims leave in /run/containerd/s: named in the proxies' argv
        // and in the bundles' `address` files; read before anything is killed.
        let mut sockets = shim_sockets_in_argv(&owned);
        sockets.extend(shim_sockets_in_bundles(&self.containerd_state()));
        kill_with_descendants(&owned);
        // Containers whose shim was gone: runc's state, and gVisor's under the same root.
        force_delete_bundles(&self.containerd_state(), &self.containerd_address());
        force_delete_runsc(&self.containerd_state());
        for socket in sockets {
            let _ = fs::remove_file(socket);
        }
        let _ = fs::remove_dir(Path::new("/run/containerd/runc").join(DOCKER_NAMESPACE));
        detach_mounts_under(self.dir.path());
        remove_cgroup_parent(&format!("/{}", self.cgroup_parent));
    }
}

/// Whether `path` is a shim socket: `/run/containerd/s/<64 hex digits>`, nothing else.
fn is_shim_socket(path: &Path) -> bool {
    path.parent() == Some(Path::new("/run/containerd/s"))
        && path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.len() == 64 && n.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// The shim sockets the proxies among `pids` serve and forward to (`--socket`, `--upstream`).
fn shim_sockets_in_argv(pids: &[u32]) -> Vec<PathBuf> {
    let mut sockets = Vec::new();
    for pid in pids {
        let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let argv: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        for pair in argv.windows(2) {
            if pair[0] == b"--socket" || pair[0] == b"--upstream" {
                let path = PathBuf::from(String::from_utf8_lossy(pair[1]).into_owned());
                if is_shim_socket(&path) {
                    sockets.push(path);
                }
            }
        }
    }
    sockets
}

/// The shim addresses (`unix://…`) recorded in the `address` files of the bundles left in `state`.
fn shim_sockets_in_bundles(state: &Path) -> Vec<PathBuf> {
    let bundles = state
        .join("io.containerd.runtime.v2.task")
        .join(DOCKER_NAMESPACE);
    fs::read_dir(bundles)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|bundle| fs::read_to_string(bundle.path().join("address")).ok())
        .map(|address| PathBuf::from(address.trim().trim_start_matches("unix://")))
        .filter(|path| is_shim_socket(path))
        .collect()
}

/// `runsc delete --force` for every bundle left whose sandbox state runsc keeps in runc's root.
fn force_delete_runsc(state: &Path) {
    let root = Path::new("/run/containerd/runc").join(DOCKER_NAMESPACE);
    let bundles = state
        .join("io.containerd.runtime.v2.task")
        .join(DOCKER_NAMESPACE);
    for bundle in fs::read_dir(&bundles).into_iter().flatten().flatten() {
        let id = bundle.file_name().to_string_lossy().into_owned();
        let prefix = format!("{id}_sandbox");
        let has_state = fs::read_dir(&root)
            .into_iter()
            .flatten()
            .flatten()
            .any(|e| e.file_name().to_string_lossy().starts_with(&prefix));
        if has_state {
            let _ = Command::new("runsc")
                .arg("--root")
                .arg(&root)
                .args(["delete", "--force", &id])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_shim_sockets_are_taken() {
        let hash = "d5aae3af8f5bbfcf0845efb070b05ffa9edfc1ee27d0bcb90b80a65980a4fda1";
        assert!(is_shim_socket(&Path::new("/run/containerd/s").join(hash)));
        assert!(!is_shim_socket(Path::new(
            "/run/containerd/s/../../etc/passwd"
        )));
        assert!(!is_shim_socket(&Path::new("/tmp").join(hash)));
        assert!(!is_shim_socket(Path::new("/run/containerd/s/abc")));
    }
}
