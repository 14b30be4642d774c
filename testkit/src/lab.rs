//! `shimtrace lab` run as a process by a test. The lab's private daemon (containerd, CRI
//! containerd or dockerd) runs in a process group of its own and keeps everything under a
//! directory `/tmp/shimtrace-lab-…/` that its command line names. [`LabRun`] learns that directory
//! from the lab's descendants while the lab runs, and when dropped (a failed assertion, a deadline
//! passed) kills by pid the lab, its descendants and every process naming the directory (shims,
//! proxies) with their descendants (containers), undoes the mounts under it and removes it.

use std::io::Read;
use std::process::{Child, Command, Output};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::containerd::{kill_with_descendants, with_descendants};
use crate::traced::pids_with_cmdline;

/// What every private daemon directory of the lab's has in its path: `<tmp>/shimtrace-lab-…`.
pub const PRIVATE_DIR_MARK: &str = "/shimtrace-lab-";

/// How long a test's short lab (a few runs of a profile or two) may take before it is taken for
/// hung: a few minutes on a loaded 2-core machine, with room to spare.
pub const LAB_DEADLINE: Duration = Duration::from_secs(900);

/// How often a running lab is looked at.
const POLL: Duration = Duration::from_millis(100);

/// The private daemon directory the command line of `pid` names (`…/shimtrace-lab-…/`), if any.
pub fn private_dir_in(pid: u32) -> Option<String> {
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let cmdline = String::from_utf8_lossy(&cmdline);
    let at = cmdline.find(PRIVATE_DIR_MARK)?;
    let rest = &cmdline[at + 1..];
    let end = rest.find('/')?;
    let start = cmdline[..at].rfind(['\0', ' ', '='])? + 1;
    Some(format!("{}/", &cmdline[start..at + 1 + end]))
}

/// The mount points under `dir`, in mount order.
pub fn mounts_under(dir: &str) -> Vec<String> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .filter(|point| point.starts_with(dir))
        .map(str::to_string)
        .collect()
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
            for pid in with_descendants(&[self.child.id()]) {
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
                    "the lab (pid {}) still running after {limit:?}",
                    self.child.id()
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
            for mount in mounts_under(dir).iter().rev() {
                let _ = nix::mount::umount2(mount.as_str(), nix::mount::MntFlags::MNT_DETACH);
            }
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}
