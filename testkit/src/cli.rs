//! Command lines for tests: parsed the way shimtrace's binaries parse them, for tests that call a
//! subcommand's library entry point (`shimtrace_lab::run`, `install`) with real arguments, and run
//! as processes: the built `shimtrace` with a clean environment, commands that must succeed, and
//! daemons that are stopped when a test ends, passing or not.

use std::process::{Child, Command, ExitStatus, Output, Stdio};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// Parses `args` (without the program and subcommand names) into a subcommand's `clap::Args`
/// struct, e.g. `parse_args::<LabArgs>(&["--runs", "1"])`; panics with clap's message if they do
/// not parse.
pub fn parse_args<A: clap::Args>(args: &[&str]) -> A {
    let command = A::augment_args(clap::Command::new("shimtrace"));
    let matches = command
        .try_get_matches_from(std::iter::once("shimtrace").chain(args.iter().copied()))
        .unwrap_or_else(|e| panic!("`{}` does not parse: {e}", args.join(" ")));
    A::from_arg_matches(&matches)
        .unwrap_or_else(|e| panic!("`{}` does not parse: {e}", args.join(" ")))
}

/// The `shimtrace` binary `cargo build --workspace` built, with the `SHIMTRACE_*` and `OTEL_*`
/// variables of the test's own environment removed, so only the settings a test gives apply.
pub fn shimtrace() -> Command {
    let mut command = Command::new(crate::traced::built_binary("shimtrace"));
    for (name, _) in std::env::vars_os() {
        let clean = name
            .to_str()
            .is_some_and(|n| n.starts_with("SHIMTRACE_") || n.starts_with("OTEL_"));
        if clean {
            command.env_remove(name);
        }
    }
    command
}

/// Runs `command` to completion and returns its output; panics with its stderr unless it succeeded.
pub fn output_ok(command: &mut Command) -> Output {
    let out = command
        .output()
        .unwrap_or_else(|e| panic!("cannot run {command:?} (is it installed?): {e}"));
    assert_succeeded(&format!("{command:?}"), &out);
    out
}

/// Panics, with its exit status, stdout and stderr, unless the run of `what` that gave `out`
/// succeeded.
pub fn assert_succeeded(what: &str, out: &Output) {
    assert!(
        out.status.success(),
        "{what} exited with {}: {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A long-running child (`shimtrace serve`, …) that is killed and reaped on drop if it still
/// runs, so a failing test leaves no daemon behind.
pub struct Daemon(pub Child);

impl Daemon {
    /// Spawns `command` with stdin from `/dev/null`.
    pub fn spawn(command: &mut Command) -> Daemon {
        let child = command
            .stdin(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {command:?}: {e}"));
        Daemon(child)
    }

    /// Sends `signal` (by pid) and waits for the daemon to exit.
    pub fn signal(&mut self, signal: Signal) -> ExitStatus {
        kill(Pid::from_raw(self.0.id() as i32), signal).unwrap();
        self.0.wait().unwrap()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, clap::Args)]
    struct Demo {
        #[arg(long, default_value_t = 3)]
        runs: u32,
        #[arg(long, value_delimiter = ',')]
        only: Vec<String>,
    }

    #[test]
    fn parses_flags_and_defaults() {
        let demo: Demo = parse_args(&["--only", "runc,runsc"]);
        assert_eq!((demo.runs, demo.only.len()), (3, 2));
        let demo: Demo = parse_args(&["--runs", "1"]);
        assert_eq!(demo.runs, 1);
    }

    #[test]
    #[should_panic(expected = "does not parse")]
    fn bad_arguments_panic_with_the_reason() {
        let _: Demo = parse_args(&["--runs", "many"]);
    }
}
