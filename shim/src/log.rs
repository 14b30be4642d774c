//! Logging for the wrapper and the proxy. Never to stdout or stderr: containerd reads `start`'s
//! combined output as the reply. The wrapper writes to the bundle's `log` FIFO, which containerd
//! copies into its own log; the detached proxy writes to a file under the run directory.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::Mutex;

use tracing_subscriber::filter::LevelFilter;

use shimtrace_span::env::LOG_LEVEL as LOG_LEVEL_ENV;

/// The level `SHIMTRACE_LOG` (`value`) names, and what to say in the log when it names none: the
/// shim's log is the only place a containerd operator would read it.
fn level_of(value: Option<&str>) -> (LevelFilter, Option<String>) {
    match value.map(str::trim).filter(|v| !v.is_empty()) {
        None => (LevelFilter::INFO, None),
        Some(v) => match v.parse() {
            Ok(level) => (level, None),
            Err(_) => (
                LevelFilter::INFO,
                Some(format!(
                    "{LOG_LEVEL_ENV}={v:?} is not a level the shim knows (off, error, warn, info, debug, trace); logging at info"
                )),
            ),
        },
    }
}

/// Logs to `file` at `SHIMTRACE_LOG`'s level; with `complain`, says there when that names no
/// level (only in containerd's log: a warning in a proxy's own log would keep that file).
fn install(file: File, complain: bool) {
    let (level, complaint) = level_of(std::env::var(LOG_LEVEL_ENV).ok().as_deref());
    let complaint = complaint.filter(|_| complain);
    let installed = tracing_subscriber::fmt()
        .with_writer(Mutex::new(file))
        .with_ansi(false)
        .with_target(false)
        .with_max_level(level)
        .try_init();
    if let (Ok(()), Some(complaint)) = (installed, complaint) {
        tracing::warn!("{complaint}");
    }
}

/// Logs to the bundle's `log` FIFO if containerd holds it open; otherwise logs nowhere. The FIFO
/// is opened non-blocking so a full pipe drops log lines instead of stalling a container's start.
pub fn init_fifo(path: &Path) {
    if let Ok(file) = OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
    {
        install(file, true);
    }
}

/// Logs to an append-only file, mode 0600, in a private directory (the run directory): never
/// through a link planted at its predictable name, never blocked by a FIFO there. If it cannot be
/// opened so, the proxy logs nowhere (it has no other place to say so).
pub fn init_file(path: &Path) {
    if let Ok(file) = crate::safe_fs::open_private_file(path, crate::safe_fs::Access::Append) {
        install(file, false);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn shimtrace_log_names_a_level_or_is_complained_of() {
        assert_eq!(level_of(None), (LevelFilter::INFO, None));
        assert_eq!(level_of(Some(" ")), (LevelFilter::INFO, None));
        assert_eq!(level_of(Some("debug")), (LevelFilter::DEBUG, None));
        assert_eq!(level_of(Some("WARN")), (LevelFilter::WARN, None));
        let (level, complaint) = level_of(Some("shimtrace=debug"));
        assert_eq!(level, LevelFilter::INFO);
        let complaint = complaint.expect("a directive the shim cannot read is said");
        assert!(
            complaint.contains("SHIMTRACE_LOG=\"shimtrace=debug\"")
                && complaint.contains("logging at info"),
            "{complaint}"
        );
    }

    #[test]
    fn a_planted_link_in_place_of_the_proxy_log_is_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, "root's own file\n").unwrap();
        let link = dir.path().join("proxy-link.log");
        std::os::unix::fs::symlink(&victim, &link).unwrap();
        init_file(&link);
        tracing::info!("this line must not reach the victim");
        assert_eq!(
            std::fs::read_to_string(&victim).unwrap(),
            "root's own file\n"
        );
    }

    #[test]
    fn a_planted_fifo_in_place_of_the_proxy_log_does_not_block() {
        // Opening a FIFO for writing blocks until someone reads it: a proxy stuck forever.
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("proxy-fifo.log");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            init_file(&fifo);
            let _ = tx.send(());
        });
        rx.recv_timeout(Duration::from_secs(10))
            .expect("opening the proxy log blocked on a FIFO");
    }
}
