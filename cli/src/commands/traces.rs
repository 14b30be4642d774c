//! `shimtrace traces`: every traced container, as timelines, a summary table, or JSON.

use anyhow::Result;
use clap::Args;
use shimtrace_collector::timeline;
use shimtrace_collector::trace::Trace;

use super::{print, SourceArgs};

#[derive(Args)]
pub struct TracesArgs {
    #[command(flatten)]
    source: SourceArgs,
    /// Print a JSON array of spans instead of text (with --summary: an array of trace summaries).
    #[arg(long)]
    json: bool,
    /// One line per trace (runtime, status, phase durations) instead of full timelines.
    #[arg(long)]
    summary: bool,
}

pub fn run(args: TracesArgs) -> Result<()> {
    let traces = Trace::group(args.source.load(None)?.spans);
    let text = match (args.json, args.summary) {
        (true, false) => timeline::spans_json(&traces)?,
        (true, true) => {
            serde_json::to_string_pretty(&traces.iter().map(Trace::summary).collect::<Vec<_>>())?
        }
        (false, false) => timeline::render_timelines(&traces),
        (false, true) => timeline::render_summary_table(&traces),
    };
    print(&text)
}
