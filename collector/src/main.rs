//! `shimtrace`: the collector CLI.

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "shimtrace",
    version,
    about = "containerd shim tracing: collect, report, compare runtimes"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Compare runtimes (runc, gVisor, crun, Kata): cold start, isolation, served latency.
    Lab(shimtrace_collector::lab::LabArgs),
    /// Register the wrapper shim for the runtimes present (symlinks, containerd config, RuntimeClasses).
    Install(shimtrace_collector::install::InstallArgs),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result: anyhow::Result<()> = match cli.command {
        Command::Lab(args) => shimtrace_collector::lab::run(args)
            .map(|_| ())
            .map_err(Into::into),
        Command::Install(args) => shimtrace_collector::install::install(&args)
            .map(|outcome| print!("{}", outcome.report))
            .map_err(Into::into),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("shimtrace: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
