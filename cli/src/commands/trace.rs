//! `shimtrace trace ID`: one container's trace, as a waterfall or JSON.

use anyhow::{bail, Result};
use clap::Args;
use shimtrace_collector::timeline;
use shimtrace_collector::trace::Trace;

use super::{print, SourceArgs};

#[derive(Args)]
pub struct TraceArgs {
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

pub fn run(args: TraceArgs) -> Result<()> {
    let traces = Trace::group(args.source.load(Some(&args.container))?.spans);
    let Some(trace) = traces.iter().find(|t| {
        t.container_id() == Some(args.container.as_str()) || t.trace_id.to_hex() == args.container
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
    print(&text)
}
