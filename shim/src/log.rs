//! Logging for the wrapper and the proxy. Never to stdout or stderr: containerd reads `start`'s
//! combined output as the reply. The wrapper writes to the bundle's `log` FIFO, which containerd
//! copies into its own log; the detached proxy writes to a file under the run directory.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::Mutex;

use tracing_subscriber::filter::LevelFilter;

use shimtrace_span::env::LOG_LEVEL as LOG_LEVEL_ENV;

fn level() -> LevelFilter {
    std::env::var(LOG_LEVEL_ENV)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(LevelFilter::INFO)
}

fn install(file: File) {
    let _ = tracing_subscriber::fmt()
        .with_writer(Mutex::new(file))
        .with_ansi(false)
        .with_target(false)
        .with_max_level(level())
        .try_init();
}

/// Logs to the bundle's `log` FIFO if containerd holds it open; otherwise logs nowhere. The FIFO
/// is opened non-blocking so a full pipe drops log lines instead of stalling a container's start.
pub fn init_fifo(path: &Path) {
    if let Ok(file) = OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
    {
        install(file);
    }
}

/// Logs to an append-only file, mode 0600, in a private directory (the run directory): never
/// through a link planted at its predictable name, never blocked by a FIFO there. If it cannot be
/// opened so, the proxy logs nowhere (it has no other place to say so).
pub fn init_file(path: &Path) {
    if let Ok(file) = crate::safe_fs::open_private_file(path, crate::safe_fs::Access::Append) {
        install(file);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

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
