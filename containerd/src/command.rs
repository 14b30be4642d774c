//! Running a helper command (the docker CLI, `ctr`) with a time limit: empty stdin, its output
//! collected, and killed when it overruns.

use std::io::{self, Read};
use std::process::{Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

/// What a command did: its exit status and its output (as lossy UTF-8).
#[derive(Debug, Clone)]
pub struct CommandOutput {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl CommandOutput {
    pub fn success(&self) -> bool {
        self.status.success()
    }

    /// The exit code, or `None` if the command died from a signal.
    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }
}

/// Why a command did not finish.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("cannot start it: {0}")]
    Start(io::Error),
    #[error("cannot wait for it: {0}")]
    Wait(io::Error),
    #[error("no answer within {0:?}; it was killed")]
    Timeout(Duration),
}

/// Runs `command` with empty stdin, collecting stdout and stderr; kills it after `timeout`. A
/// non-zero exit is not an error here.
pub fn run_with_timeout(
    mut command: Command,
    timeout: Duration,
) -> Result<CommandOutput, RunError> {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(RunError::Start)?;
    let stdout = drain(child.stdout.take());
    let stderr = drain(child.stderr.take());
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().map_err(RunError::Wait)? {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(RunError::Timeout(timeout));
        }
        thread::sleep(Duration::from_millis(5));
    };
    Ok(CommandOutput {
        status,
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
    })
}

/// Reads `pipe` to its end on a thread of its own, so that neither pipe can fill and stall the
/// command.
fn drain(pipe: Option<impl Read + Send + 'static>) -> thread::JoinHandle<String> {
    thread::spawn(move || {
        let mut bytes = Vec::new();
        if let Some(mut pipe) = pipe {
            let _ = pipe.read_to_end(&mut bytes);
        }
        String::from_utf8_lossy(&bytes).into_owned()
    })
}
