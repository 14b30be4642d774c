//! Private containerd instances for end-to-end tests: any installed version, own config/root/state/sockets, cleaned up by pid.
//!
//! ```no_run
//! use shimtrace_testkit::containerd::{ContainerdVersion, TestContainerd, Options};
//! let version = ContainerdVersion::find("2.1.9")?;
//! let containerd = TestContainerd::start(&version, Options::default())?;
//! let out = containerd.run_rm("echo-1", &[], &["/bin/echo", "hi"])?;
//! assert!(out.success() && out.stdout == "hi\n");
//! # Ok::<(), shimtrace_testkit::containerd::HarnessError>(())
//! ```
//!
//! Starting, configuring and stopping containerd is [`shimtrace_containerd::private`]'s; this
//! module adds what only tests need: the version matrix, `ctr`, a busybox rootfs per instance, and
//! the accounting of every process an instance leaves behind.
//!
//! The versions come from `scripts/install-containerd-matrix.sh`: 1.6.20 is bookworm's
//! `/usr/bin/containerd`; the others live in `/opt/shimtrace/containerd/<version>/usr/bin/`
//! (`SHIMTRACE_CONTAINERD_PREFIX` overrides that prefix). Each instance prepends its own version's
//! bin dir to `PATH`, so containerd finds the matching `containerd-shim-runc-v2`; `Options::extra_path`
//! goes in front of that (for wrapper symlinks).
//!
//! Every instance has its own containerd namespace ([`TestContainerd::namespace`], passed to
//! `ctr` as `CONTAINERD_NAMESPACE`): runc keeps its state in `/run/containerd/runc/<namespace>/<id>`
//! whatever containerd's state dir, so two instances using the same namespace and container id at
//! once would collide there.
//!
//! Cleanup never goes by process name: the Drop guard deletes this instance's tasks through `ctr`,
//! SIGTERMs containerd by pid, then SIGKILLs by pid any process whose argv carries this instance's
//! unique `-address <socket>` or an argument inside its unique temp dir, or whose environment
//! carries this instance's unique `SHIMTRACE_TEST_INSTANCE` (set on containerd, inherited by every
//! shim and proxy) or its `SHIMTRACE_SPOOL_DIR`, together with all their descendants (the
//! containers), and finally runs `runc delete --force` for every bundle left in its state dir.

use std::collections::HashMap;
use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use sha2::{Digest, Sha256};
use tempfile::TempDir;

use shimtrace_containerd::command::{run_with_timeout, CommandOutput, RunError};
use shimtrace_containerd::private::{
    ConfigSource, ContainerdBinary, PrivateConfig, PrivateContainerd, PrivateError,
};
use shimtrace_containerd::rootfs::build_busybox_rootfs;

pub use crate::error::{Engine, HarnessError};
use crate::tmpfs::TmpfsMount;

pub mod bootstrap;

/// The containerd versions the e2e suite runs against, oldest first.
pub const MATRIX: [&str; 3] = ["1.6.20", "1.7.24", "2.1.9"];

/// Environment variable set on every private containerd (value: its unique temp dir); every shim and
/// proxy inherits it, which is how leftovers are found.
pub const INSTANCE_MARKER_ENV: &str = "SHIMTRACE_TEST_INSTANCE";

/// The static busybox every instance's rootfs is built from (package busybox-static).
pub const BUSYBOX: &str = "/bin/busybox";

const SYSTEM_VERSION: &str = "1.6.20";
const DEFAULT_PREFIX: &str = "/opt/shimtrace/containerd";
const READY_TIMEOUT: Duration = Duration::from_secs(20);
const STOP_TIMEOUT: Duration = Duration::from_secs(15);
/// Upper bound for one `ctr` command; a hung ctr fails the test instead of hanging CI.
pub const CTR_TIMEOUT: Duration = Duration::from_secs(120);
const POLL_INTERVAL: Duration = Duration::from_millis(20);

/// One installed containerd version: where its `containerd`, `ctr` and runc shim are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerdVersion {
    binary: ContainerdBinary,
    bin_dir: PathBuf,
}

impl ContainerdVersion {
    /// Finds an installed version ("1.6.20", "1.7.24", "2.1.9") and checks that it is what it claims.
    pub fn find(version: &str) -> Result<Self, HarnessError> {
        let bin_dir = if version == SYSTEM_VERSION {
            PathBuf::from("/usr/bin")
        } else {
            let prefix = std::env::var_os("SHIMTRACE_CONTAINERD_PREFIX")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from(DEFAULT_PREFIX));
            prefix.join(version).join("usr/bin")
        };
        let containerd = bin_dir.join("containerd");
        if !containerd.is_file() {
            return Err(HarnessError::NotInstalled {
                engine: Engine::Containerd,
                version: version.to_owned(),
                path: containerd,
            });
        }
        let reported = match ContainerdBinary::probe(&containerd) {
            Ok(binary) if binary.version() == version => {
                return Ok(ContainerdVersion { binary, bin_dir })
            }
            Ok(binary) => binary.version().to_owned(),
            Err(PrivateError::UnknownVersion { output, .. }) => output,
            Err(e) => return Err(e.into()),
        };
        Err(HarnessError::WrongVersion {
            engine: Engine::Containerd,
            version: version.to_owned(),
            path: containerd,
            reported,
        })
    }

    /// Every version of [`MATRIX`]; fails on the first one that is missing.
    pub fn matrix() -> Result<Vec<Self>, HarnessError> {
        MATRIX.iter().map(|v| Self::find(v)).collect()
    }

    /// The version string, e.g. "2.1.9".
    pub fn version(&self) -> &str {
        self.binary.version()
    }

    /// Its `containerd`, with what follows from the version (major, config schema).
    pub fn binary(&self) -> &ContainerdBinary {
        &self.binary
    }

    /// Directory holding `containerd`, `ctr` and `containerd-shim-runc-v2` of this version.
    pub fn bin_dir(&self) -> &Path {
        &self.bin_dir
    }

    pub fn containerd(&self) -> PathBuf {
        self.bin_dir.join("containerd")
    }

    pub fn ctr(&self) -> PathBuf {
        self.bin_dir.join("ctr")
    }

    /// This version's own runc shim (what a wrapper should wrap under this containerd).
    pub fn runc_shim(&self) -> PathBuf {
        self.bin_dir.join("containerd-shim-runc-v2")
    }
}

/// How to start a [`TestContainerd`].
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Directories put in front of `PATH` (before the version's own bin dir), e.g. one holding a
    /// `containerd-shim-<name>-v2` wrapper symlink.
    pub extra_path: Vec<PathBuf>,
    /// Extra environment for containerd, inherited by every shim it starts
    /// (e.g. `SHIMTRACE_SPOOL_DIR`, `OTEL_EXPORTER_OTLP_ENDPOINT`).
    pub env: Vec<(OsString, OsString)>,
    /// `--log-level` for containerd; "debug" also makes it pass `-debug` to shims.
    pub log_level: Option<String>,
    /// TOML appended verbatim to the generated config; start it with its own `[table]` header.
    pub extra_config: String,
    /// Puts the state dir (bundles, shim state) on a tmpfs of its own, as `/run/containerd` is on
    /// real nodes; the root dir stays on disk.
    pub tmpfs_state: bool,
    /// How containerd's config comes about (default: generated with CRI off; see
    /// [`TestContainerd::start_prepared`] for a config the test writes itself).
    pub source: ConfigSource,
}

impl Options {
    /// Adds one environment variable (builder style).
    pub fn env(mut self, key: impl Into<OsString>, value: impl Into<OsString>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// Turns on containerd 2.x's OTLP trace export to `endpoint` (see [`otlp::otlp_env`]); with it,
    /// containerd also sends `traceparent` in the ttrpc metadata of its shim calls.
    pub fn otlp(mut self, endpoint: &str) -> Self {
        self.env.extend(
            crate::otlp::otlp_env(endpoint)
                .into_iter()
                .map(|(k, v)| (k.into(), v.into())),
        );
        self
    }

    /// Adds one directory in front of `PATH` (builder style).
    pub fn path_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.extra_path.push(dir.into());
        self
    }
}

/// Result of one `ctr` command.
pub type CtrOutput = CommandOutput;

/// How `ctr run` treats the container it starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunMode {
    /// `--rm`: waits for the task to exit, then removes the container.
    Remove,
    /// `-d`: returns once the task runs; the container stays.
    Detach,
}

/// The arguments of `ctr run --rm|-d FLAGS… --rootfs ROOTFS ID COMMAND…` for a container on the
/// directory `rootfs`. `flags` are `ctr run` flags such as `["--runtime", "/abs/wrapper"]`.
pub fn ctr_run_args(
    mode: RunMode,
    flags: &[&str],
    rootfs: &Path,
    id: &str,
    command: &[&str],
) -> Result<Vec<String>, HarnessError> {
    let mut args = vec![
        "run".to_owned(),
        match mode {
            RunMode::Remove => "--rm",
            RunMode::Detach => "-d",
        }
        .to_owned(),
    ];
    // `--rootfs` is a boolean flag and the rootfs the first positional argument; ctr stops
    // parsing flags at the first positional one, so the caller's flags go before it.
    args.extend(flags.iter().map(|f| (*f).to_owned()));
    args.extend([
        "--rootfs".to_owned(),
        path_str(rootfs)?.to_owned(),
        id.to_owned(),
    ]);
    args.extend(command.iter().map(|c| (*c).to_owned()));
    Ok(args)
}

/// A containerd of a given version (a [`PrivateContainerd`]) running in its own temp dir, with
/// its own namespace and a busybox rootfs ready for `ctr run --rootfs`.
/// Dropping it removes its tasks, stops it and kills its leftover shims, all by pid.
pub struct TestContainerd {
    version: ContainerdVersion,
    options: Options,
    namespace: String,
    /// Declared before the mount and `dir`: stopped before they go.
    containerd: PrivateContainerd,
    /// Declared before `dir`: unmounted before the temp dir is removed.
    _state_mount: Option<TmpfsMount>,
    dir: TempDir,
}

/// What [`TestContainerd::start_prepared`]'s hook gets: where the instance lives and the `PATH`
/// containerd (and so every shim) will have.
pub struct Prepared<'a> {
    pub version: &'a ContainerdVersion,
    /// The instance's directory (root, state, sockets, rootfs are made under it).
    pub dir: &'a Path,
    /// containerd's config file (`<dir>/config.toml`).
    pub config: PathBuf,
    /// containerd's `PATH`: the extra dirs, this version's bin dir, then this process's `PATH`.
    pub path: OsString,
}

/// Distinguishes instances started by one test process.
static INSTANCE_COUNTER: AtomicU32 = AtomicU32::new(0);

impl TestContainerd {
    /// Builds the rootfs and starts containerd; returns once it answers.
    pub fn start(version: &ContainerdVersion, options: Options) -> Result<Self, HarnessError> {
        Self::start_prepared(version, options, |_| Ok(()))
    }

    /// Like [`Self::start`], but `prepare` runs first with the instance's directory and
    /// containerd's `PATH`, e.g. to write `config.toml` there itself (with
    /// [`ConfigSource::Existing`]: containerd then starts on exactly that file).
    pub fn start_prepared(
        version: &ContainerdVersion,
        options: Options,
        prepare: impl FnOnce(&Prepared<'_>) -> Result<(), HarnessError>,
    ) -> Result<Self, HarnessError> {
        // Short path under /tmp: unix socket paths must stay under 108 bytes.
        let dir = tempfile::Builder::new()
            .prefix("ctd-")
            .tempdir_in("/tmp")
            .map_err(|e| HarnessError::io("creating the containerd temp dir in /tmp", e))?;
        let namespace = format!(
            "st{}-{}",
            std::process::id(),
            INSTANCE_COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let state_mount = if options.tmpfs_state {
            Some(TmpfsMount::new(&dir.path().join("state"))?)
        } else {
            None
        };
        build_busybox_rootfs(&dir.path().join("rootfs"), Path::new(BUSYBOX))?;
        let mut config = PrivateConfig::new(dir.path());
        config.binary = version.containerd();
        config.path_prepend = options.extra_path.clone();
        config.path_prepend.push(version.bin_dir().to_owned());
        config.env = options.env.clone();
        config.env.push((
            INSTANCE_MARKER_ENV.into(),
            dir.path().as_os_str().to_owned(),
        ));
        config.log_level = options.log_level.clone();
        config.extra_config = options.extra_config.clone();
        config.source = options.source.clone();
        config.ready_timeout = READY_TIMEOUT;
        config.stop_timeout = STOP_TIMEOUT;
        prepare(&Prepared {
            version,
            dir: dir.path(),
            config: dir.path().join("config.toml"),
            path: config.path_var()?,
        })?;
        let containerd = PrivateContainerd::start(config)?;
        Ok(TestContainerd {
            version: version.clone(),
            options,
            namespace,
            containerd,
            _state_mount: state_mount,
            dir,
        })
    }

    /// The version this instance runs.
    pub fn version(&self) -> &ContainerdVersion {
        &self.version
    }

    /// The containerd namespace `ctr` uses by default for this instance (unique on the machine).
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The running containerd itself.
    pub fn private(&self) -> &PrivateContainerd {
        &self.containerd
    }

    /// The instance's private directory (config, root, state, sockets, log, rootfs).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// containerd's gRPC socket path (what shims get as `-address`).
    pub fn address(&self) -> PathBuf {
        self.containerd.address()
    }

    /// containerd's ttrpc socket path (what shims get as `TTRPC_ADDRESS`).
    pub fn ttrpc_address(&self) -> PathBuf {
        self.containerd.ttrpc_address()
    }

    pub fn config_path(&self) -> PathBuf {
        self.containerd.config_path()
    }

    /// containerd's `state` dir; bundles are at `<state>/io.containerd.runtime.v2.task/<ns>/<id>/`.
    pub fn state_dir(&self) -> PathBuf {
        self.containerd.state_dir()
    }

    pub fn root_dir(&self) -> PathBuf {
        self.containerd.root_dir()
    }

    /// The bundle directory of container `id` in this instance's namespace.
    pub fn bundle_dir(&self, id: &str) -> PathBuf {
        self.bundle_dir_in(&self.namespace, id)
    }

    /// The bundle directory of container `id` in namespace `ns`.
    pub fn bundle_dir_in(&self, ns: &str, id: &str) -> PathBuf {
        self.state_dir()
            .join("io.containerd.runtime.v2.task")
            .join(ns)
            .join(id)
    }

    /// containerd's combined stdout/stderr file (appended across restarts).
    pub fn log_path(&self) -> PathBuf {
        self.containerd.log_path()
    }

    /// The whole containerd log so far (empty if unreadable).
    pub fn log(&self) -> String {
        self.containerd.log()
    }

    /// A busybox rootfs inside the instance dir (see [`build_busybox_rootfs`]).
    pub fn rootfs(&self) -> PathBuf {
        self.dir().join("rootfs")
    }

    /// containerd's pid while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.containerd.pid()
    }

    /// `ctr --address <socket>` of this version in this instance's namespace, stdio untouched:
    /// the start of every `ctr` command line.
    pub fn ctr_command(&self) -> Command {
        let mut command = Command::new(self.version.ctr());
        command
            .env("CONTAINERD_NAMESPACE", &self.namespace)
            .arg("--address")
            .arg(self.address());
        command
    }

    /// Runs this version's `ctr --address <socket> ARGS…` (stdin empty) in this instance's namespace
    /// and returns what it did; a non-zero exit is not an error here. Global flags such as `-n ns`
    /// go first in `args`.
    pub fn ctr<S: AsRef<str>>(&self, args: &[S]) -> Result<CtrOutput, HarnessError> {
        self.ctr_timeout(args, CTR_TIMEOUT)
    }

    /// Like [`Self::ctr`] with an explicit time limit (ctr is killed after it).
    pub fn ctr_timeout<S: AsRef<str>>(
        &self,
        args: &[S],
        timeout: Duration,
    ) -> Result<CtrOutput, HarnessError> {
        let args: Vec<&str> = args.iter().map(AsRef::as_ref).collect();
        let mut command = self.ctr_command();
        command.args(&args);
        run_with_timeout(command, timeout).map_err(|e| match e {
            RunError::Timeout(_) => HarnessError::CtrTimeout {
                args: args.join(" "),
                timeout,
            },
            RunError::Start(e) | RunError::Wait(e) => {
                HarnessError::io(format!("running ctr {}", args.join(" ")), e)
            }
        })
    }

    /// Like [`Self::ctr`] but a non-zero exit is an error carrying ctr's stderr.
    pub fn ctr_ok<S: AsRef<str>>(&self, args: &[S]) -> Result<CtrOutput, HarnessError> {
        let output = self.ctr(args)?;
        if output.success() {
            Ok(output)
        } else {
            Err(HarnessError::CtrFailed {
                args: args.iter().map(AsRef::as_ref).collect::<Vec<_>>().join(" "),
                status: output.status,
                stderr: output.stderr,
            })
        }
    }

    /// `ctr run --rm FLAGS… --rootfs <rootfs> ID COMMAND…` in this instance's namespace (see
    /// [`ctr_run_args`]); a non-zero exit is not an error here.
    pub fn run_rm(
        &self,
        id: &str,
        flags: &[&str],
        command: &[&str],
    ) -> Result<CtrOutput, HarnessError> {
        self.ctr(&self.run_args(RunMode::Remove, id, flags, command)?)
    }

    /// `ctr run -d FLAGS… --rootfs <rootfs> ID COMMAND…` in this instance's namespace (see
    /// [`ctr_run_args`]); a non-zero exit is an error.
    pub fn run_detached(
        &self,
        id: &str,
        flags: &[&str],
        command: &[&str],
    ) -> Result<CtrOutput, HarnessError> {
        self.ctr_ok(&self.run_args(RunMode::Detach, id, flags, command)?)
    }

    /// [`ctr_run_args`] on this instance's rootfs.
    fn run_args(
        &self,
        mode: RunMode,
        id: &str,
        flags: &[&str],
        command: &[&str],
    ) -> Result<Vec<String>, HarnessError> {
        ctr_run_args(mode, flags, &self.rootfs(), id, command)
    }

    /// Stops containerd (SIGTERM by pid, waits; SIGKILL after 15 s). Shims keep running.
    pub fn stop(&mut self) -> Result<(), HarnessError> {
        Ok(self.containerd.stop()?)
    }

    /// Starts containerd again with the same config and environment (after [`Self::stop`]).
    pub fn start_again(&mut self) -> Result<(), HarnessError> {
        Ok(self.containerd.start_again()?)
    }

    /// SIGTERM, wait for exit, start again with the same config; returns once ready.
    /// Shims survive this and containerd reconnects to them.
    pub fn restart(&mut self) -> Result<(), HarnessError> {
        Ok(self.containerd.restart()?)
    }

    /// Pids of live processes that belong to this instance (shims, proxies), containerd excluded.
    pub fn owned_processes(&self) -> Vec<u32> {
        let containerd = self.pid();
        owned_processes(&self.ownership())
            .into_iter()
            .filter(|p| Some(*p) != containerd)
            .collect()
    }

    fn ownership(&self) -> Ownership {
        let spool_dir = self
            .options
            .env
            .iter()
            .find(|(k, _)| k == shimtrace_span::env::SPOOL_DIR)
            .map(|(k, v)| env_entry(k, v));
        Ownership {
            address: self.address().into_os_string().into_encoded_bytes(),
            dir: self.dir().as_os_str().as_encoded_bytes().to_vec(),
            environ: [Some(env_entry(
                &OsString::from(INSTANCE_MARKER_ENV),
                &self.dir().as_os_str().to_owned(),
            ))]
            .into_iter()
            .chain([spool_dir])
            .flatten()
            .collect(),
        }
    }

    /// Kills and deletes every task and container this containerd knows, in every namespace.
    fn delete_all_tasks(&self) {
        let quick = Duration::from_secs(15);
        let Ok(namespaces) = self.ctr_timeout(&["namespaces", "ls", "-q"], quick) else {
            return;
        };
        for ns in namespaces
            .stdout
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
        {
            if let Ok(tasks) = self.ctr_timeout(&["-n", ns, "tasks", "ls", "-q"], quick) {
                for task in tasks
                    .stdout
                    .lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty())
                {
                    let _ = self.ctr_timeout(
                        &["-n", ns, "tasks", "kill", "-a", "-s", "SIGKILL", task],
                        quick,
                    );
                    let _ = self.ctr_timeout(&["-n", ns, "tasks", "delete", "-f", task], quick);
                }
            }
            if let Ok(containers) = self.ctr_timeout(&["-n", ns, "containers", "ls", "-q"], quick) {
                for container in containers
                    .stdout
                    .lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty())
                {
                    let _ = self.ctr_timeout(&["-n", ns, "containers", "rm", container], quick);
                }
            }
        }
    }
}

impl Drop for TestContainerd {
    fn drop(&mut self) {
        if self.containerd.is_running() {
            self.delete_all_tasks();
        }
        let _ = self.stop();
        kill_with_descendants(&owned_processes(&self.ownership()));
        // Containers whose shim was already gone, and sockets that killed shims left behind.
        // containerd 2.x logs every shim address it connects to ("connecting to shim"); shims
        // that were killed, or that never remove their socket (the containerd-shim crate only
        // does when a bundle `address` file exists), leave it behind.
        for socket in logged_shim_sockets(&self.log()) {
            let _ = fs::remove_file(socket);
        }
        let mut namespaces = force_delete_bundles(&self.state_dir(), &self.address());
        namespaces.push(self.namespace.clone());
        // CRI's namespace is shared by every instance with CRI on.
        if !namespaces.iter().any(|ns| ns == "k8s.io") {
            namespaces.push("k8s.io".into());
        }
        for ns in namespaces {
            remove_runtime_state(&ns, self.dir());
            remove_namespace_leftovers(&ns);
        }
        // Mounts a failed test left (a container's rootfs, a CRI sandbox's /dev/shm): removing
        // the temp dir must never reach through them.
        unmount_below(self.dir());
        // `_state_mount` is unmounted next: fields drop in order, and it comes before `dir`.
    }
}

pub(crate) struct Ownership {
    /// containerd's gRPC address as passed in `-address`.
    pub(crate) address: Vec<u8>,
    /// `KEY=VALUE` entries unique to this instance.
    pub(crate) environ: Vec<Vec<u8>>,
    /// The instance's unique directory: a process with an argument inside it (`--task-root
    /// <dir>/state/…`, `-socket <dir>/s/…`) is ours even if it cleared its environment.
    pub(crate) dir: Vec<u8>,
}

fn env_entry(key: &OsString, value: &OsString) -> Vec<u8> {
    let mut entry = key.as_encoded_bytes().to_vec();
    entry.push(b'=');
    entry.extend_from_slice(value.as_encoded_bytes());
    entry
}

/// The pids of the processes now in /proc (none if it cannot be read).
pub fn proc_pids() -> impl Iterator<Item = u32> {
    fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse().ok())
}

/// Scans /proc for processes with `-address <our socket>` in argv or our marker in their environment.
pub(crate) fn owned_processes(ownership: &Ownership) -> Vec<u32> {
    let me = std::process::id();
    let mut pids = Vec::new();
    for pid in proc_pids() {
        if pid == me || is_zombie(pid) {
            continue;
        }
        let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let argv: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        let by_address = argv.windows(2).any(|w| {
            (w[0] == b"-address" || w[0] == b"--address") && w[1] == ownership.address.as_slice()
        });
        // ctr processes the harness itself runs use --address too; they are ours as well.
        let environ = fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
        let by_env = environ
            .split(|b| *b == 0)
            .any(|var| ownership.environ.iter().any(|e| e.as_slice() == var));
        let mut dir_prefix = ownership.dir.clone();
        dir_prefix.push(b'/');
        let by_dir =
            !ownership.dir.is_empty() && argv.iter().any(|arg| arg.starts_with(&dir_prefix));
        if by_address || by_env || by_dir {
            pids.push(pid);
        }
    }
    pids
}

pub(crate) fn is_zombie(pid: u32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            stat.rsplit_once(')')
                .map(|(_, rest)| rest.trim_start().starts_with('Z'))
        })
        .unwrap_or(true)
}

pub(crate) fn kill_and_reap(pid: u32) {
    let Ok(raw) = i32::try_from(pid) else { return };
    let _ = kill(Pid::from_raw(raw), Signal::SIGKILL);
    // Not our child (shims daemonize), so wait by watching /proc until it is gone or a zombie.
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline && !is_zombie(pid) {
        thread::sleep(POLL_INTERVAL);
    }
}

/// Parent pid → child pids of every live process.
fn children_by_parent() -> HashMap<u32, Vec<u32>> {
    let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
    for pid in proc_pids() {
        let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // "pid (comm) state ppid ...": comm may hold spaces and parentheses, so split after the last ')'.
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok());
        if let Some(ppid) = ppid {
            children.entry(ppid).or_default().push(pid);
        }
    }
    children
}

/// The live children of `pid`.
pub fn children_of(pid: u32) -> Vec<u32> {
    children_by_parent().remove(&pid).unwrap_or_default()
}

/// Every descendant of `pids` (deepest first), then `pids` themselves.
pub(crate) fn with_descendants(pids: &[u32]) -> Vec<u32> {
    let children = children_by_parent();
    let mut all = Vec::new();
    for pid in pids {
        collect_descendants(*pid, &children, &mut all);
    }
    all.extend_from_slice(pids);
    all
}

/// SIGKILLs `pids` and their descendants by pid, waiting for each. Descendants go first, so that
/// containers die with their shim instead of being reparented.
pub(crate) fn kill_with_descendants(pids: &[u32]) {
    for pid in with_descendants(pids) {
        kill_and_reap(pid);
    }
}

/// Appends every descendant of `pid` (deepest first) to `out`.
fn collect_descendants(pid: u32, children: &HashMap<u32, Vec<u32>>, out: &mut Vec<u32>) {
    for child in children.get(&pid).into_iter().flatten() {
        collect_descendants(*child, children, out);
        if !out.contains(child) {
            out.push(*child);
        }
    }
}

/// Socket paths under `/run/containerd/s/` that a containerd log names as shim addresses.
fn logged_shim_sockets(log: &str) -> Vec<PathBuf> {
    const PREFIX: &str = "address=\"unix:///run/containerd/s/";
    let mut sockets = Vec::new();
    for (start, _) in log.match_indices(PREFIX) {
        let name: String = log[start + PREFIX.len()..]
            .chars()
            .take_while(char::is_ascii_hexdigit)
            .collect();
        // Only sha256-named sockets: never a directory or anything else under /run/containerd/s.
        if name.len() == 64 {
            let path = Path::new("/run/containerd/s").join(name);
            if !sockets.contains(&path) {
                sockets.push(path);
            }
        }
    }
    sockets
}

/// The runc shim's socket: `/run/containerd/s/<sha256(address/ns/group)>`.
pub(crate) fn shim_socket_path(address: &Path, ns: &str, group: &str) -> PathBuf {
    let digest = Sha256::digest(format!("{}/{ns}/{group}", address.display()).as_bytes());
    PathBuf::from("/run/containerd/s").join(hex::encode(digest))
}

/// For every bundle left in `state`: `runc delete --force` (kills the container's processes, removes
/// its runc state and cgroup) and removes the shim socket named after it. Returns the namespaces seen.
pub(crate) fn force_delete_bundles(state: &Path, address: &Path) -> Vec<String> {
    let mut namespaces = Vec::new();
    let Ok(entries) = fs::read_dir(state.join("io.containerd.runtime.v2.task")) else {
        return namespaces;
    };
    for ns in entries.flatten() {
        let ns_name = ns.file_name().to_string_lossy().into_owned();
        namespaces.push(ns_name.clone());
        for bundle in fs::read_dir(ns.path()).into_iter().flatten().flatten() {
            let id = bundle.file_name().to_string_lossy().into_owned();
            let runc_root = Path::new("/run/containerd/runc").join(&ns_name);
            if runc_root.join(&id).exists() {
                let mut command = Command::new("runc");
                command
                    .arg("--root")
                    .arg(&runc_root)
                    .args(["delete", "--force", &id]);
                let _ = run_with_timeout(command, Duration::from_secs(15));
            }
            let _ = fs::remove_file(shim_socket_path(address, &ns_name, &id));
        }
    }
    namespaces
}

/// Deletes the runc and runsc state this instance left in `/run/containerd/runc/<ns>` after its
/// bundles were gone (containerd 2.x keeps a container's runc state when its shim was killed, as
/// does an interrupted runsc `create`): only entries whose bundle lies inside `dir`.
pub(crate) fn remove_runtime_state(ns: &str, dir: &Path) {
    let root = Path::new("/run/containerd/runc").join(ns);
    let ours = |json: &str| -> bool {
        let Ok(value) = serde_json::from_str::<serde_json::Value>(json) else {
            return false;
        };
        let runc_bundle = value["config"]["labels"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|l| l.as_str()?.strip_prefix("bundle="))
            .next()
            .map(str::to_owned);
        let runsc_bundle = value["bundleDir"].as_str().map(str::to_owned);
        runc_bundle
            .or(runsc_bundle)
            .is_some_and(|b| Path::new(&b).starts_with(dir))
    };
    for entry in fs::read_dir(&root).into_iter().flatten().flatten() {
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        let (runtime, id, state) = if path.is_dir() {
            ("runc", name.clone(), path.join("state.json"))
        } else if let Some(stem) = name.strip_suffix(".state") {
            // runsc: `<container id>_sandbox:<sandbox id>.state`
            let id = stem.split("_sandbox:").next().unwrap_or(stem).to_string();
            ("runsc", id, path.clone())
        } else {
            continue;
        };
        if !fs::read_to_string(&state).is_ok_and(|json| ours(&json)) {
            continue;
        }
        let mut command = Command::new(runtime);
        command
            .arg("--root")
            .arg(&root)
            .args(["delete", "--force", &id]);
        let _ = run_with_timeout(command, Duration::from_secs(15));
        if runtime == "runc" {
            let _ = fs::remove_dir_all(&path);
        } else {
            let _ = fs::remove_file(&path);
            let _ = fs::remove_file(root.join(name.replace(".state", ".lock")));
        }
    }
}

/// Detaches every mount below `dir` (deepest first). The instance's own state tmpfs, if any, is
/// `dir/state` itself and is left to its guard.
fn unmount_below(dir: &Path) {
    let Ok(mounts) = fs::read_to_string("/proc/self/mounts") else {
        return;
    };
    let state = dir.join("state");
    let mut points: Vec<PathBuf> = mounts
        .lines()
        .filter_map(|line| line.split_whitespace().nth(1))
        // /proc/mounts escapes spaces and the like as octal; paths here have none.
        .map(PathBuf::from)
        .filter(|p| p.starts_with(dir) && p != dir && *p != state)
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    for point in points {
        let _ = nix::mount::umount2(&point, nix::mount::MntFlags::MNT_DETACH);
    }
}

/// Removes the per-namespace directories runc leaves once a namespace has no container:
/// `/run/containerd/runc/<ns>` and the empty `<ns>` cgroup in every hierarchy. `rmdir` only removes
/// empty directories, so nothing still in use (or belonging to a shared namespace) is touched.
fn remove_namespace_leftovers(ns: &str) {
    if ns == "default" {
        return;
    }
    let _ = fs::remove_dir(Path::new("/run/containerd/runc").join(ns));
    let Ok(hierarchies) = fs::read_dir("/sys/fs/cgroup") else {
        return;
    };
    for hierarchy in hierarchies.flatten() {
        let ns_cgroup = hierarchy.path().join(ns);
        // Container cgroups (`<ns>/<id>`) first; runc removes them itself on a clean delete.
        for child in fs::read_dir(&ns_cgroup).into_iter().flatten().flatten() {
            if child.path().is_dir() {
                let _ = fs::remove_dir(child.path());
            }
        }
        let _ = fs::remove_dir(&ns_cgroup);
    }
}

fn path_str(path: &Path) -> Result<&str, HarnessError> {
    path.to_str().ok_or_else(|| {
        HarnessError::io(
            format!("path {} is not UTF-8", path.display()),
            std::io::Error::from(std::io::ErrorKind::InvalidInput),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shim_socket_matches_the_lab_verified_hash() {
        // PROTOCOL.md §2: sha256("/run/containerd/containerd.sock/default/t2") named the live socket.
        let path = shim_socket_path(
            Path::new("/run/containerd/containerd.sock"),
            "default",
            "t2",
        );
        let expected = hex::encode(Sha256::digest(
            b"/run/containerd/containerd.sock/default/t2",
        ));
        assert_eq!(path, Path::new("/run/containerd/s").join(expected));
    }

    #[test]
    fn shim_sockets_are_read_from_a_containerd_2_log() {
        let hash = "d5aae3af8f5bbfcf0845efb070b05ffa9edfc1ee27d0bcb90b80a65980a4fda1";
        let log = format!(
            "level=info msg=\"connecting to shim exp1\" address=\"unix:///run/containerd/s/{hash}\" namespace=n\n\
             level=info msg=\"other\" address=\"unix:///run/containerd/s/../../etc\"\n\
             level=info msg=\"connecting to shim exp1\" address=\"unix:///run/containerd/s/{hash}\"\n"
        );
        assert_eq!(
            logged_shim_sockets(&log),
            vec![Path::new("/run/containerd/s").join(hash)]
        );
    }

    #[test]
    fn ctr_run_puts_flags_before_the_rootfs() {
        let args = ctr_run_args(
            RunMode::Detach,
            &["--runtime", "io.containerd.traced-runc.v2"],
            Path::new("/r"),
            "c1",
            &["/bin/sleep", "600"],
        )
        .unwrap();
        assert_eq!(
            args,
            [
                "run",
                "-d",
                "--runtime",
                "io.containerd.traced-runc.v2",
                "--rootfs",
                "/r",
                "c1",
                "/bin/sleep",
                "600"
            ]
        );
        let args = ctr_run_args(RunMode::Remove, &[], Path::new("/r"), "c2", &["/bin/true"]);
        assert_eq!(
            args.unwrap(),
            ["run", "--rm", "--rootfs", "/r", "c2", "/bin/true"]
        );
    }

    #[test]
    fn process_scan_finds_a_child_by_its_marker_env() {
        let marker = format!(
            "{INSTANCE_MARKER_ENV}=/tmp/unit-test-{}",
            std::process::id()
        );
        let (key, value) = marker.split_once('=').unwrap();
        let mut child = Command::new("/bin/sleep")
            .arg("30")
            .env(key, value)
            .spawn()
            .unwrap();
        let ownership = Ownership {
            address: b"/nonexistent/c.sock".to_vec(),
            environ: vec![marker.clone().into_bytes()],
            dir: Vec::new(),
        };
        // Under load the new process can take a moment to show its environment in /proc.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let found = loop {
            let found = owned_processes(&ownership);
            if !found.is_empty() || std::time::Instant::now() > deadline {
                break found;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        };
        child.kill().unwrap();
        child.wait().unwrap();
        assert_eq!(found, vec![child.id()]);
    }
}
