//! What a private containerd and a private Docker Engine do alike: the daemon runs as our child
//! with its output appended to a log file, is awaited until it answers (or exits, or the time is
//! up), is stopped by its pid (SIGTERM, then SIGKILL), and an error quotes the end of its log.
//! Both also live in an unpacked release, `<prefix>/<version>/usr/…`, of which the newest is found
//! here.

use std::fs;
use std::io;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// Why a daemon could not be spawned.
#[derive(Debug)]
pub(crate) enum SpawnError {
    /// Its log file could not be opened.
    Log(io::Error),
    /// The executable could not be started.
    Start(io::Error),
}

/// Starts `command` with stdin empty and stdout and stderr appended to `log` (created if missing).
pub(crate) fn spawn_logged(mut command: Command, log: &Path) -> Result<Child, SpawnError> {
    let out = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(SpawnError::Log)?;
    let err = out.try_clone().map_err(SpawnError::Log)?;
    // A process group of its own: a Ctrl-C at the terminal reaches the tool, which removes the
    // daemon's containers and then stops it, and not the daemon, whose containers it would orphan.
    command
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .map_err(SpawnError::Start)
}

/// How waiting for a daemon to answer ended.
#[derive(Debug)]
pub(crate) enum Startup {
    Ready,
    /// It exited first, with this status (it is reaped).
    Exited(ExitStatus),
    /// It still runs but did not answer within the time given.
    TimedOut,
}

/// Polls every `poll` until `answers()` says the daemon serves, the child exits, or `timeout` has
/// passed.
pub(crate) fn await_ready(
    child: &mut Child,
    timeout: Duration,
    poll: Duration,
    mut answers: impl FnMut() -> bool,
) -> Startup {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Startup::Exited(status);
        }
        if answers() {
            return Startup::Ready;
        }
        if Instant::now() >= deadline {
            return Startup::TimedOut;
        }
        thread::sleep(poll);
    }
}

/// SIGTERM by pid, polling every `poll` for up to `timeout`, then SIGKILL and reap.
pub(crate) fn terminate(child: &mut Child, timeout: Duration, poll: Duration) -> io::Result<()> {
    if child.try_wait()?.is_some() {
        return Ok(());
    }
    if let Ok(raw) = i32::try_from(child.id()) {
        let _ = kill(Pid::from_raw(raw), Signal::SIGTERM);
    }
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if child.try_wait()?.is_some() {
            return Ok(());
        }
        thread::sleep(poll);
    }
    child.kill()?;
    child.wait().map(|_| ())
}

/// The last `n` lines of `text` (a daemon's log, for an error message).
pub fn last_lines(text: &str, n: usize) -> Vec<&str> {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].to_vec()
}

/// The newest release unpacked under `prefix` as `<prefix>/<version>/<binary>`: that binary, by
/// the version its directory is named after (dot-separated numbers, at least two; anything else
/// is not a release).
pub(crate) fn newest_unpacked(prefix: &Path, binary: &str) -> Option<PathBuf> {
    let mut found: Vec<(Vec<u64>, PathBuf)> = fs::read_dir(prefix)
        .ok()?
        .flatten()
        .filter_map(|entry| {
            let version = release_version(entry.file_name().to_str()?)?;
            let path = entry.path().join(binary);
            path.is_file().then_some((version, path))
        })
        .collect();
    found.sort();
    found.pop().map(|(_, path)| path)
}

/// A release directory's name as numbers (`"1.10.2"` → `[1, 10, 2]`).
fn release_version(name: &str) -> Option<Vec<u64>> {
    let parts: Vec<u64> = name
        .split('.')
        .map(|p| {
            // `parse` alone would take a leading `+`.
            p.bytes()
                .all(|b| b.is_ascii_digit())
                .then(|| p.parse().ok())
                .flatten()
        })
        .collect::<Option<_>>()?;
    (parts.len() >= 2).then_some(parts)
}

#[cfg(test)]
mod tests {
    use std::os::unix::process::ExitStatusExt;

    use super::*;

    #[test]
    fn release_versions_are_dotted_numbers() {
        assert_eq!(release_version("1.10.2"), Some(vec![1, 10, 2]));
        assert_eq!(release_version("28.5"), Some(vec![28, 5]));
        for name in ["notes", "9", "v2.1.9", "2.1.9~ds1", "2..1", "+2.1"] {
            assert_eq!(release_version(name), None, "{name}");
        }
    }

    #[test]
    fn the_newest_release_with_its_binary_is_found_by_version() {
        type Newest = fn(&Path) -> Option<PathBuf>;
        let engines: [(Newest, &str, [&str; 4], &str); 2] = [
            (
                crate::dockerd::newest_unpacked,
                "usr/sbin/dockerd",
                ["26.1.5", "28.5.2", "9.0.0", "not-a-version"],
                "28.5.2",
            ),
            (
                crate::private::newest_unpacked,
                "usr/bin/containerd",
                ["1.7.24", "1.10.2", "2.1.9", "notes"],
                "2.1.9",
            ),
        ];
        for (newest_unpacked, binary, versions, newest) in engines {
            let dir = tempfile::tempdir().unwrap();
            for version in versions {
                let path = dir.path().join(version).join(binary);
                fs::create_dir_all(path.parent().unwrap()).unwrap();
                fs::write(path, "").unwrap();
            }
            // A newer version without its binary does not count.
            fs::create_dir_all(dir.path().join("99.0.0/usr/bin")).unwrap();
            assert_eq!(
                newest_unpacked(dir.path()),
                Some(dir.path().join(newest).join(binary))
            );
            assert_eq!(newest_unpacked(&dir.path().join("none")), None);
        }
    }

    #[test]
    fn the_log_tail_is_the_last_lines() {
        assert_eq!(last_lines("a\nb\nc\n", 2), ["b", "c"]);
        assert_eq!(last_lines("a", 5), ["a"]);
        assert!(last_lines("", 3).is_empty());
    }

    /// Spawns `sh -c script` logging to `log` and awaits it for `timeout`, until the log holds
    /// `ready` (never, if empty).
    fn spawn_and_await(
        script: &str,
        log: &Path,
        timeout: Duration,
        ready: &str,
    ) -> (Child, Startup) {
        let mut command = Command::new("/bin/sh");
        command.args(["-c", script]);
        let mut child = spawn_logged(command, log).unwrap();
        let ended = await_ready(&mut child, timeout, Duration::from_millis(10), || {
            !ready.is_empty() && fs::read_to_string(log).is_ok_and(|l| l.contains(ready))
        });
        (child, ended)
    }

    /// [`terminate`]s `child` and returns how it ended.
    fn stop(mut child: Child, timeout: Duration) -> ExitStatus {
        terminate(&mut child, timeout, Duration::from_millis(10)).unwrap();
        child.try_wait().unwrap().expect("terminate reaps it")
    }

    #[test]
    fn daemons_are_awaited_until_they_answer_or_exit_and_stopped_by_pid() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("d.log");
        let long = Duration::from_secs(30);
        let (_, ended) = spawn_and_await("echo started; exit 3", &log, long, "");
        assert!(
            matches!(ended, Startup::Exited(s) if s.code() == Some(3)),
            "{ended:?}"
        );
        assert_eq!(fs::read_to_string(&log).unwrap(), "started\n");

        let (child, ended) = spawn_and_await("echo serving; exec sleep 60", &log, long, "serving");
        assert!(matches!(ended, Startup::Ready), "{ended:?}");
        assert_eq!(stop(child, long).signal(), Some(15));

        // A daemon that never answers is waited for until the timeout.
        let short = Duration::from_millis(100);
        let (child, ended) = spawn_and_await("exec sleep 60", &log, short, "");
        assert!(matches!(ended, Startup::TimedOut), "{ended:?}");
        assert_eq!(stop(child, long).signal(), Some(15));

        // Only the SIGKILL after the stop timeout ends a daemon that ignores SIGTERM (once it has
        // said so: before its trap is set, SIGTERM would end it).
        let ignores_term = "trap '' TERM; echo ignoring; while :; do sleep 1; done";
        let (child, ended) = spawn_and_await(ignores_term, &log, long, "ignoring");
        assert!(matches!(ended, Startup::Ready), "{ended:?}");
        assert_eq!(stop(child, short).signal(), Some(9));
    }
}
