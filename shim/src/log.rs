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

/// Logs to an append-only file, mode 0600.
pub fn init_file(path: &Path) {
    if let Ok(file) = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
    {
        install(file);
    }
}
