//! `shimtrace lab` run as a process by a test. The lab's private daemon (containerd, CRI
//! containerd or dockerd) runs in a process group of its own and keeps everything under a
//! directory `/tmp/shimtrace-lab-…/` that its command line names. [`LabRun`] learns that directory
//! from the lab's descendants while the lab runs, and when dropped (a failed assertion, a deadline
//! passed) kills by pid the lab, its descendants and every process naming the directory (shims,
//! proxies) with their descendants (containers), removes the runtime state of containers whose
//! bundle is under it, undoes the mounts under it and removes it.

use std::io::Read;
use std::path::Path;
use std::process::{Child, Command, Output};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use shimtrace_containerd::dockerd::{detach_mounts_under, mount_points_under};

use crate::containerd::{kill_with_descendants, remove_runtime_state, with_descendants};
use crate::traced::pids_with_cmdline;

/// What every private daemon directory of the lab's has in its path: `<tmp>/shimtrace-lab-…`.
const PRIVATE_DIR_MARK: &str = "/shimtrace-lab-";

/// How long a test's short lab (a few runs of a profile or two) may take before it is taken for
/// hung: a few minutes on a loaded 2-core machine, with room to spare.
pub const LAB_DEADLINE: Duration = Duration::from_secs(600);

/// Where runc and runsc keep their state under containerd's runc shim, one directory per namespace.
const RUNC_ROOT: &str = "/run/containerd/runc";

/// How often a running lab is looked at.
const POLL: Duration = Duration::from_millis(100);

/// The private daemon directory the command line of `pid` names (`…/shimtrace-lab-…/`), if any.
pub fn private_dir_in(pid: u32) -> Option<String> {
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    private_dir_of(&String::from_utf8_lossy(&cmdline))
}

/// The first private daemon directory a NUL-separated command line names: in an argument of its
/// own, after an option's `=`, or as a URL's path (`-H unix:///tmp/…/docker.sock`). Only a
/// directory right in `/tmp` or the temp dir, where the lab makes them (a checkout that happens
/// to be named so is not one), cut at the `/` that ends its name within the same argument.
fn private_dir_of(cmdline: &str) -> Option<String> {
    let temp = std::env::temp_dir();
    let temp = temp.to_string_lossy();
    let temp_dirs = ["/tmp", temp.trim_end_matches('/')];
    cmdline.split('\0').find_map(|arg| {
        let at = arg.find(PRIVATE_DIR_MARK)?;
        let start = arg[..at].rfind('=').map_or(0, |i| i + 1);
        let token = &arg[start..];
        let path = token.split_once("://").map_or(token, |(_, path)| path);
        let mark = path.find(PRIVATE_DIR_MARK)?;
        if !temp_dirs.contains(&&path[..mark]) {
            return None;
        }
        let end = mark + 1 + path[mark + 1..].find('/')?;
        Some(format!("{}/", &path[..end]))
    })
}

/// A running `shimtrace lab` and the private daemon directories seen under it; cleans up after
/// the lab when dropped (see the module doc). Drop it only after checking what the lab left.
pub struct LabRun {
    child: Child,
    dirs: Vec<String>,
}

impl LabRun {
    /// Spawns `command` (a `shimtrace lab …` with its stdio set as the test needs).
    pub fn spawn(command: &mut Command) -> LabRun {
        let child = command
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {command:?}: {e}"));
        LabRun {
            child,
            dirs: Vec::new(),
        }
    }

    /// The lab process, e.g. to take its pipes or see whether it ended.
    pub fn child(&mut self) -> &mut Child {
        &mut self.child
    }

    /// The private daemon directories seen so far.
    pub fn private_dirs(&self) -> &[String] {
        &self.dirs
    }

    /// Adds the private directories the lab's descendants name now (none once the lab ended);
    /// returns every one seen so far.
    pub fn learn(&mut self) -> &[String] {
        // Not reaped yet, so its pid is still its own.
        if let Ok(None) = self.child.try_wait() {
            // The daemon and what runs under it: the lab's own arguments (its --out, a checkout's
            // path) name no daemon directory.
            let lab = self.child.id();
            for pid in with_descendants(&[lab])
                .into_iter()
                .filter(|pid| *pid != lab)
            {
                if let Some(dir) = private_dir_in(pid) {
                    if !self.dirs.contains(&dir) {
                        self.dirs.push(dir);
                    }
                }
            }
        }
        &self.dirs
    }

    /// Waits for the lab to end and returns its output (its stdout and stderr must be piped),
    /// learning its private directories meanwhile; panics if it has not ended within `limit`
    /// (the guard then kills and removes what it left as it drops).
    pub fn wait_within(&mut self, limit: Duration) -> Output {
        let deadline = Instant::now() + limit;
        let (tx, rx) = mpsc::channel();
        for (stream, pipe) in [
            (
                1,
                self.child
                    .stdout
                    .take()
                    .map(|p| Box::new(p) as Box<dyn Read + Send>),
            ),
            (
                2,
                self.child
                    .stderr
                    .take()
                    .map(|p| Box::new(p) as Box<dyn Read + Send>),
            ),
        ] {
            let mut pipe = pipe.expect("the lab's stdout and stderr are piped");
            let tx = tx.clone();
            std::thread::spawn(move || {
                let mut bytes = Vec::new();
                let _ = pipe.read_to_end(&mut bytes);
                let _ = tx.send((stream, bytes));
            });
        }
        let status = loop {
            self.learn();
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            if Instant::now() >= deadline {
                panic!(
                    "the lab (pid {}) still running after {limit:?}; removing what it made in {:?}",
                    self.child.id(),
                    self.dirs
                );
            }
            std::thread::sleep(POLL);
        };
        let mut output = Output {
            status,
            stdout: Vec::new(),
            stderr: Vec::new(),
        };
        for _ in 0..2 {
            // A daemon left running may hold the pipes open: do not wait for it past the limit.
            let left = deadline.saturating_duration_since(Instant::now()).max(POLL);
            let (stream, bytes) = rx
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("the lab ended ({status}) but its output stays open"));
            if stream == 1 {
                output.stdout = bytes;
            } else {
                output.stderr = bytes;
            }
        }
        output
    }
}

impl Drop for LabRun {
    fn drop(&mut self) {
        let running = matches!(self.child.try_wait(), Ok(None));
        self.learn();
        let mut pids = Vec::new();
        if running {
            pids.push(self.child.id());
        }
        for dir in &self.dirs {
            pids.extend(pids_with_cmdline(&[dir]));
        }
        // Descendants first: the daemons (in their own process groups) and their containers die
        // before the lab, instead of being reparented out of reach.
        kill_with_descendants(&pids);
        if running {
            let _ = self.child.wait();
        }
        for dir in &self.dirs {
            // The runc and runsc state of containers killed with their shim, in whatever
            // namespace they ran (k8s.io for CRI): only entries whose bundle is in `dir`.
            let namespaces = std::fs::read_dir(RUNC_ROOT).into_iter().flatten().flatten();
            for ns in namespaces.filter_map(|e| e.file_name().into_string().ok()) {
                remove_runtime_state(&ns, Path::new(dir));
            }
            for (ns, id) in tasks_under(Path::new(dir), TASK_DIR_DEPTH) {
                remove_unfinished_create(&ns, &id);
            }
            detach_mounts_under(Path::new(dir));
            // Never removed through a mount still there: it may be of something else.
            let left = mount_points_under(Path::new(dir));
            if left.is_empty() {
                let _ = std::fs::remove_dir_all(dir);
            } else {
                eprintln!("not removing {dir}: still mounted under it: {left:?}");
            }
        }
    }
}

/// How deep under a private directory the runc shim's task directory may be
/// (`c/state/io.containerd.runtime.v2.task` for the CRI lab's containerd).
const TASK_DIR_DEPTH: usize = 4;

/// The `(namespace, container id)` of every bundle in a runc shim task directory
/// (`…/io.containerd.runtime.v2.task/<ns>/<id>`) at most `depth` levels under `dir`.
fn tasks_under(dir: &Path, depth: usize) -> Vec<(String, String)> {
    let mut tasks = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        // Not through links, nor into anything but directories.
        if !entry.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        if entry.file_name() == "io.containerd.runtime.v2.task" {
            let names = |d: &Path| -> Vec<String> {
                std::fs::read_dir(d)
                    .into_iter()
                    .flatten()
                    .flatten()
                    .filter_map(|e| e.file_name().into_string().ok())
                    .collect()
            };
            for ns in names(&entry.path()) {
                for id in names(&entry.path().join(&ns)) {
                    tasks.push((ns.clone(), id));
                }
            }
        } else if depth > 1 {
            tasks.extend(tasks_under(&entry.path(), depth - 1));
        }
    }
    tasks
}

/// What a `runc create` or `runsc create` killed before it wrote its state leaves of container
/// `id`: runc's state directory without `state.json`, runsc's lock without its state file, and
/// the container's empty cgroups.
fn remove_unfinished_create(ns: &str, id: &str) {
    let root = Path::new(RUNC_ROOT).join(ns);
    let runc = root.join(id);
    if runc.is_dir() && !runc.join("state.json").exists() {
        let _ = std::fs::remove_dir_all(&runc);
    }
    let runsc = format!("{id}_sandbox:");
    for entry in std::fs::read_dir(&root).into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(stem) = name.strip_suffix(".lock") {
            let state = root.join(format!("{stem}.state"));
            if (stem.starts_with(&runsc) || stem.ends_with(&format!(":{id}"))) && !state.exists() {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }
    for hierarchy in std::fs::read_dir("/sys/fs/cgroup")
        .into_iter()
        .flatten()
        .flatten()
    {
        // `rmdir` removes only an empty cgroup: nothing still running is touched.
        let _ = std::fs::remove_dir(hierarchy.path().join(ns).join(id));
    }
    // The unified hierarchy (cgroup v2) has no controller directories.
    let _ = std::fs::remove_dir(Path::new("/sys/fs/cgroup").join(ns).join(id));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_private_directory_is_read_from_a_path_an_option_or_a_url() {
        let dir = Some("/tmp/shimtrace-lab-dkr-ab12/".to_string());
        for cmdline in [
            "dockerd\0--config-file\0/tmp/shimtrace-lab-dkr-ab12/daemon.json\0",
            "containerd\0--config=/tmp/shimtrace-lab-dkr-ab12/c/config.toml\0",
            "docker\0-H\0unix:///tmp/shimtrace-lab-dkr-ab12/docker.sock\0ps\0",
        ] {
            assert_eq!(private_dir_of(cmdline), dir, "{cmdline:?}");
        }
        assert_eq!(private_dir_of("containerd\0--config\0/etc/c.toml\0"), None);
        // Not a directory of the lab's: relative, or a name without a path under it; and the
        // directory of a later argument is found when an earlier one holds none.
        for cmdline in [
            "x\0./shimtrace-lab-x/y\0",
            "x\0/tmp/shimtrace-lab-x\0/etc/y\0",
            "/home/u/shimtrace-lab-x/target/debug/shimtrace\0lab\0",
            "x\0--out=/srv/shimtrace-lab-out/r\0",
        ] {
            assert_eq!(private_dir_of(cmdline), None, "{cmdline:?}");
        }
        assert_eq!(
            private_dir_of("x\0--name=shimtrace-lab-x\0/tmp/shimtrace-lab-dkr-ab12/s\0"),
            dir
        );
    }
}
