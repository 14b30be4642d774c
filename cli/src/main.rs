//! `shimtrace`: the collector CLI. Parses arguments, sets up logging, and hands each subcommand to
//! its module under `commands/`, which calls into the libraries.

mod commands;
mod errors;
mod logging;

use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};
use tracing_subscriber::filter::LevelFilter;

use commands::{bench, export, ingest, install, report, serve, synth, trace, traces};

#[derive(Parser)]
#[command(
    name = "shimtrace",
    version,
    about = "shimtrace collector: container cold-start traces from shim spools"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Lists the traced containers: per container, a timeline of its spans.
    Traces(traces::TracesArgs),
    /// Shows one container's trace as a waterfall.
    Trace(trace::TraceArgs),
    /// Ingests the spool into the store continuously (inotify), exports and serves metrics.
    Serve(serve::ServeArgs),
    /// Ingests what the spool holds now into the store, once, and exits.
    Ingest(ingest::IngestArgs),
    /// Exports spans once: over OTLP (gRPC or HTTP/protobuf), or as Jaeger UI JSON.
    Export(export::ExportArgs),
    /// Cold-start report per runtime: phase latencies, wall-time comparison, dropped spans.
    Report(report::ReportArgs),
    /// Writes a synthetic spool (for tests and benchmarks).
    #[command(hide = true)]
    Synth(synth::SynthArgs),
    /// Measures ingest throughput and report time on a synthetic spool.
    #[command(hide = true)]
    Bench(bench::BenchArgs),
    /// Compare runtimes (runc, gVisor, crun, Kata): cold start, isolation, served latency.
    #[cfg(feature = "lab")]
    Lab(shimtrace_lab::LabArgs),
    /// Register the wrapper shim for the runtimes present (symlinks, containerd config, RuntimeClasses; --docker: daemon.json).
    Install(install::InstallCommand),
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("Error: {}", errors::error_text(&error));
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    // The daemon says what it is doing; one-shot commands only warn.
    let default_level = match cli.command {
        Command::Serve(_) => LevelFilter::INFO,
        _ => LevelFilter::WARN,
    };
    logging::init(default_level);
    match cli.command {
        Command::Traces(args) => traces::run(args),
        Command::Trace(args) => trace::run(args),
        Command::Serve(args) => serve::run(args),
        Command::Ingest(args) => ingest::run(args),
        Command::Export(args) => export::run(args),
        Command::Report(args) => report::run(args),
        Command::Synth(args) => synth::run(args),
        Command::Bench(args) => bench::run(args),
        #[cfg(feature = "lab")]
        Command::Lab(args) => commands::lab::run(args),
        Command::Install(args) => install::run(args),
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_well_formed() {
        // Conflicting flags, duplicate names, defaults that do not parse: clap's own checks.
        super::Cli::command().debug_assert();
    }
}
