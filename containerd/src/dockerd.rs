//! A Docker Engine of our own beside any other: one directory holds its daemon.json, data-root,
//! exec-root, unix socket, pidfile and log; it runs its own containerd (the first `containerd` on
//! the `PATH` it is given), keeps off the host's networking (no iptables, no bridge, no userland
//! proxy), is awaited until its socket answers, and is stopped by pid (SIGTERM, then SIGKILL) —
//! also when dropped.
//!
//! ```no_run
//! use shimtrace_containerd::dockerd::{DockerdConfig, PrivateDockerd};
//! let config = DockerdConfig::new("/tmp/my-dockerd", "/opt/shimtrace/docker/26.1.5/usr/sbin/dockerd");
//! config.write_daemon_json()?;
//! let dockerd = PrivateDockerd::start(config)?;
//! let out = dockerd.cli().run_ok(&["version"], std::time::Duration::from_secs(30))?;
//! # Ok::<(), shimtrace_containerd::docker::DockerError>(())
//! ```

use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Duration;

use serde_json::{json, Map, Value};

use crate::daemon::{await_ready, last_lines, spawn_logged, terminate, SpawnError, Startup};
use crate::docker::{render_daemon_json, DockerCli, DockerError};
use crate::files::io_err;
use crate::image::STANDARD_PATH;

/// Where `scripts/install-docker.sh` unpacks Docker Engines (`<prefix>/<version>/usr/{sbin,bin}`).
pub const UNPACKED_PREFIX: &str = "/opt/shimtrace/docker";
const POLL_INTERVAL: Duration = Duration::from_millis(50);
/// Lines of dockerd's log shown when it fails to start.
const LOG_TAIL_LINES: usize = 40;

/// How to run a private dockerd.
#[derive(Debug, Clone)]
pub struct DockerdConfig {
    /// Holds everything of this instance; its paths must stay short (unix sockets live below it).
    pub dir: PathBuf,
    pub dockerd: PathBuf,
    /// The docker CLI used to wait for it (default: `docker` beside `dockerd`'s `sbin`, in
    /// `../bin`, else on `PATH`).
    pub cli: PathBuf,
    /// dockerd's whole `PATH` (it starts the first `containerd` on it, and shims by name on it).
    pub path: OsString,
    /// Extra environment, inherited by its containerd and every shim.
    pub env: Vec<(OsString, OsString)>,
    /// Keys put over the private ones in daemon.json (e.g. `runtimes`).
    pub daemon_json: Map<String, Value>,
    pub ready_timeout: Duration,
    /// dockerd stops running containers first (10 s each before SIGKILL, in parallel).
    pub stop_timeout: Duration,
}

impl DockerdConfig {
    /// A config in `dir` for the daemon `dockerd`, with the system `PATH`.
    pub fn new(dir: impl Into<PathBuf>, dockerd: impl Into<PathBuf>) -> Self {
        let dockerd = dockerd.into();
        let beside = dockerd
            .parent()
            .and_then(Path::parent)
            .map(|usr| usr.join("bin/docker"))
            .filter(|p| p.is_file());
        DockerdConfig {
            dir: dir.into(),
            cli: beside.unwrap_or_else(|| PathBuf::from("docker")),
            dockerd,
            path: std::env::var_os("PATH").unwrap_or_else(|| STANDARD_PATH.into()),
            env: Vec::new(),
            daemon_json: Map::new(),
            ready_timeout: Duration::from_secs(90),
            stop_timeout: Duration::from_secs(60),
        }
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.join("daemon.json")
    }

    /// The socket as `-H`/`DOCKER_HOST` takes it.
    pub fn host(&self) -> String {
        format!("unix://{}", self.dir.join("docker.sock").display())
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.join("dockerd.log")
    }

    pub fn exec_root(&self) -> PathBuf {
        self.dir.join("exec")
    }

    pub fn data_root(&self) -> PathBuf {
        self.dir.join("root")
    }

    /// The gRPC socket of the containerd dockerd starts (what its shims get as `-address`).
    pub fn containerd_address(&self) -> PathBuf {
        self.exec_root().join("containerd/containerd.sock")
    }

    /// That containerd's state dir (bundles below `io.containerd.runtime.v2.task/moby/<id>`).
    pub fn containerd_state(&self) -> PathBuf {
        self.exec_root().join("containerd/daemon")
    }

    /// The daemon.json this config describes.
    pub fn daemon_json(&self) -> Map<String, Value> {
        let mut config = json!({
            "data-root": self.data_root(),
            "exec-root": self.exec_root(),
            "hosts": [self.host()],
            "pidfile": self.dir.join("docker.pid"),
            "iptables": false,
            "ip6tables": false,
            "bridge": "none",
            "userland-proxy": false,
        });
        let map = config.as_object_mut().expect("an object");
        for (key, value) in &self.daemon_json {
            map.insert(key.clone(), value.clone());
        }
        map.clone()
    }

    /// Creates the directory and writes daemon.json (before [`PrivateDockerd::start`], which reads
    /// it as it is then: an installer may merge its runtimes in between).
    pub fn write_daemon_json(&self) -> Result<(), DockerError> {
        fs::create_dir_all(&self.dir).map_err(io_err("cannot create", &self.dir))?;
        let config_path = self.config_path();
        fs::write(&config_path, render_daemon_json(&self.daemon_json()))
            .map_err(io_err("cannot write", &config_path))?;
        Ok(())
    }

    /// The docker CLI talking to this dockerd.
    pub fn cli(&self) -> DockerCli {
        DockerCli {
            binary: self.cli.clone(),
            host: Some(self.host()),
        }
    }
}

/// A running private dockerd.
#[derive(Debug)]
pub struct PrivateDockerd {
    config: DockerdConfig,
    child: Option<Child>,
}

impl PrivateDockerd {
    /// Starts dockerd on the daemon.json in `config.dir`; returns once it answers.
    pub fn start(config: DockerdConfig) -> Result<PrivateDockerd, DockerError> {
        let mut dockerd = PrivateDockerd {
            config,
            child: None,
        };
        dockerd.start_again()?;
        Ok(dockerd)
    }

    /// Starts it again after [`Self::stop`], on the same daemon.json.
    pub fn start_again(&mut self) -> Result<(), DockerError> {
        let config = &self.config;
        let log_path = config.log_path();
        let mut command = Command::new(&config.dockerd);
        command
            .arg("--config-file")
            .arg(config.config_path())
            .env("PATH", &config.path)
            .envs(config.env.iter().map(|(k, v)| (k, v)));
        let mut child = spawn_logged(command, &log_path).map_err(|e| match e {
            SpawnError::Log(source) => io_err("cannot open", &log_path)(source),
            SpawnError::Start(source) => io_err("cannot start", &config.dockerd)(source),
        })?;
        let cli = config.cli();
        let timeout = config.ready_timeout;
        let startup = await_ready(&mut child, timeout, POLL_INTERVAL, || {
            cli.run(&["version", "--format", "{{.Server.Version}}"], timeout)
                .is_ok_and(|o| o.success())
        });
        let problem = match startup {
            Startup::Ready => {
                self.child = Some(child);
                return Ok(());
            }
            Startup::Exited(status) => format!("exited at start with {status}"),
            Startup::TimedOut => {
                self.child = Some(child);
                let _ = self.stop();
                format!("did not answer within {timeout:?}")
            }
        };
        Err(DockerError::Daemon {
            problem,
            log_tail: self.log_tail(),
        })
    }

    /// SIGTERM by pid, waiting until it exited (SIGKILL after `stop_timeout`). Without live-restore
    /// dockerd stops its containers and its containerd first.
    pub fn stop(&mut self) -> Result<(), DockerError> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        // Whatever became of it, what it leaves behind is removed below.
        let _ = terminate(&mut child, self.config.stop_timeout, POLL_INTERVAL);
        // dockerd leaves its default network namespace mounted in its exec-root, and its cgroup
        // parent behind, even on a clean stop.
        detach_mounts_under(&self.config.dir);
        if let Some(parent) = self
            .config
            .daemon_json
            .get("cgroup-parent")
            .and_then(Value::as_str)
        {
            remove_cgroup_parent(parent);
        }
        Ok(())
    }

    /// Stops it and starts it again on the same daemon.json.
    pub fn restart(&mut self) -> Result<(), DockerError> {
        self.stop()?;
        self.start_again()
    }

    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// dockerd's pid while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn config(&self) -> &DockerdConfig {
        &self.config
    }

    /// The docker CLI talking to this dockerd.
    pub fn cli(&self) -> DockerCli {
        self.config.cli()
    }

    /// Its whole log so far (empty if unreadable).
    pub fn log(&self) -> String {
        fs::read_to_string(self.config.log_path()).unwrap_or_default()
    }

    fn log_tail(&self) -> String {
        format!(
            "\nlast lines of its log ({}):\n{}",
            self.config.log_path().display(),
            last_lines(&self.log(), LOG_TAIL_LINES).join("\n")
        )
    }
}

impl Drop for PrivateDockerd {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

/// The newest Docker Engine `scripts/install-docker.sh` unpacked under `prefix`: its `dockerd`.
pub fn newest_unpacked(prefix: &Path) -> Option<PathBuf> {
    crate::daemon::newest_unpacked(prefix, "usr/sbin/dockerd")
}

/// Lazily unmounts every mount point at or below `dir`, deepest first (overlay rootfs, shm and
/// netns mounts a killed dockerd leaves).
pub fn detach_mounts_under(dir: &Path) {
    let mut points = mount_points_under(dir);
    points.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    points.dedup();
    for point in points {
        let _ = nix::mount::umount2(&point, nix::mount::MntFlags::MNT_DETACH);
    }
}

/// The mount points at or below `dir` in this mount namespace, in mount order.
pub fn mount_points_under(dir: &Path) -> Vec<PathBuf> {
    fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(unescape_mount_path)
        .filter(|p| p.starts_with(dir))
        .collect()
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape_mount_path(field: &str) -> PathBuf {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 3 < bytes.len()
            && bytes[i + 1..i + 4].iter().all(u8::is_ascii_digit)
        {
            let octal = std::str::from_utf8(&bytes[i + 1..i + 4]).unwrap_or("0");
            out.push(u8::from_str_radix(octal, 8).unwrap_or(b'?'));
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    PathBuf::from(std::ffi::OsString::from(
        String::from_utf8_lossy(&out).into_owned(),
    ))
}

/// Removes a cgroup parent (`/name`, as daemon.json's `cgroup-parent`) and the container cgroups
/// under it in every hierarchy; `rmdir` only removes empty cgroups, so anything still running
/// keeps its own.
pub fn remove_cgroup_parent(parent: &str) {
    let Ok(hierarchies) = fs::read_dir("/sys/fs/cgroup") else {
        return;
    };
    for hierarchy in hierarchies.flatten() {
        let cgroup = hierarchy.path().join(parent.trim_start_matches('/'));
        for child in fs::read_dir(&cgroup).into_iter().flatten().flatten() {
            if child.path().is_dir() {
                let _ = fs::remove_dir(child.path());
            }
        }
        let _ = fs::remove_dir(&cgroup);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_paths_are_unescaped() {
        assert_eq!(
            unescape_mount_path(r"/tmp/a\040b/c\134d"),
            PathBuf::from("/tmp/a b/c\\d")
        );
        assert_eq!(unescape_mount_path("/plain"), PathBuf::from("/plain"));
    }

    #[test]
    fn daemon_json_keeps_the_instance_private_and_takes_extra_keys() {
        let mut config = DockerdConfig::new("/tmp/d", "/opt/x/usr/sbin/dockerd");
        config
            .daemon_json
            .insert("live-restore".into(), Value::Bool(true));
        let json = config.daemon_json();
        assert_eq!(json["hosts"][0], "unix:///tmp/d/docker.sock");
        assert_eq!(json["exec-root"], "/tmp/d/exec");
        assert_eq!(json["iptables"], false);
        assert_eq!(json["bridge"], "none");
        assert_eq!(json["live-restore"], true);
        assert_eq!(
            config.containerd_address(),
            Path::new("/tmp/d/exec/containerd/containerd.sock")
        );
    }
}
