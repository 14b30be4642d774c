//! `shimtrace trace ID`: one container's trace (or with `--pod`, a pod's), as a waterfall or JSON.

use anyhow::{bail, Result};
use clap::Args;
use shimtrace_collector::timeline;
use shimtrace_collector::trace::Trace;

use super::{print, SourceArgs};

#[derive(Args)]
pub struct TraceArgs {
    /// The container id (or trace id) to show; with --pod, the pod.
    container: String,
    /// Show a Kubernetes pod (by name, namespace/name, uid or sandbox id) as one tree: its
    /// sandbox, then each container, on one time axis.
    #[arg(long)]
    pod: bool,
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
    if args.pod {
        let traces = Trace::group(args.source.load(None)?.spans);
        return print(&shimtrace_collector::pod::show(
            &traces,
            &args.container,
            args.json,
            args.width,
        )?);
    }
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
