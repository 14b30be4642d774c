//! `shimtrace`: the collector CLI. Parses arguments and wires the library's pieces together.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use shimtrace_collector::{source, timeline, trace::Trace};
use shimtrace_shim::spool::{DEFAULT_SPOOL_DIR, SPOOL_DIR_ENV};

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
    Traces(TracesArgs),
    /// Shows one container's trace as a waterfall.
    Trace(TraceArgs),
}

/// Where query commands read spans from.
#[derive(Args)]
struct SourceArgs {
    /// Read this spool directory directly (default when no store is given).
    #[arg(long, env = SPOOL_DIR_ENV, value_name = "DIR")]
    spool: Option<PathBuf>,
}

impl SourceArgs {
    fn load(&self) -> Result<source::Loaded> {
        let dir = self
            .spool
            .clone()
            .unwrap_or_else(|| PathBuf::from(DEFAULT_SPOOL_DIR));
        let loaded = source::load_spool(&dir)?;
        for issue in &loaded.issues {
            eprintln!("warning: {issue}");
        }
        Ok(loaded)
    }
}

#[derive(Args)]
struct TracesArgs {
    #[command(flatten)]
    source: SourceArgs,
    /// Print a JSON array of spans instead of text (with --summary: an array of trace summaries).
    #[arg(long)]
    json: bool,
    /// One line per trace (runtime, status, phase durations) instead of full timelines.
    #[arg(long)]
    summary: bool,
}

#[derive(Args)]
struct TraceArgs {
    /// The container id (or trace id) to show.
    container: String,
    #[command(flatten)]
    source: SourceArgs,
    /// Print the trace's spans as a JSON array instead of the waterfall.
    #[arg(long)]
    json: bool,
    /// Width of the waterfall's bars in columns.
    #[arg(long, default_value_t = 60)]
    width: usize,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let mut stdout = std::io::stdout().lock();
    match cli.command {
        Command::Traces(args) => {
            let traces = Trace::group(args.source.load()?.spans);
            let text = match (args.json, args.summary) {
                (true, false) => timeline::spans_json(&traces)?,
                (true, true) => serde_json::to_string_pretty(
                    &traces.iter().map(Trace::summary).collect::<Vec<_>>(),
                )?,
                (false, false) => timeline::render_timelines(&traces),
                (false, true) => timeline::render_summary_table(&traces),
            };
            writeln!(stdout, "{}", text.trim_end()).context("writing to stdout")?;
        }
        Command::Trace(args) => {
            let traces = Trace::group(args.source.load()?.spans);
            let Some(trace) = traces.iter().find(|t| {
                t.container_id() == Some(args.container.as_str())
                    || t.trace_id.to_hex() == args.container
            }) else {
                bail!(
                    "no trace for container {:?}; `shimtrace traces --summary` lists the traced containers",
                    args.container
                );
            };
            let text = if args.json {
                timeline::spans_json(std::slice::from_ref(trace))?
            } else {
                timeline::render_waterfall(trace, args.width)
            };
            writeln!(stdout, "{}", text.trim_end()).context("writing to stdout")?;
        }
    }
    Ok(())
}
