//! `shimtrace export`: the spans of a time range, once, over OTLP or to a Jaeger UI JSON file.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use shimtrace_collector::export;
use shimtrace_collector::oneshot::{Oneshot, OneshotRequest};

use super::{env_var, OtlpArgs, SourceArgs};

#[derive(Args)]
pub struct ExportArgs {
    #[command(flatten)]
    source: SourceArgs,
    #[command(flatten)]
    otlp: OtlpArgs,
    /// Only spans that started at or after this time (RFC 3339, or unix nanoseconds).
    #[arg(long, value_name = "TIME")]
    from: Option<String>,
    /// Only spans that started before this time (RFC 3339, or unix nanoseconds).
    #[arg(long, value_name = "TIME")]
    to: Option<String>,
    /// Only spans that started within this long before now (e.g. `1h`, `30m`).
    #[arg(long, value_name = "DURATION", conflicts_with = "from")]
    since: Option<String>,
    /// Write Jaeger UI "Upload JSON" here instead of sending OTLP (unless an endpoint is given too).
    #[arg(long, value_name = "FILE")]
    jaeger_json: Option<PathBuf>,
    /// Attempts after the first failed OTLP request, with exponential backoff.
    #[arg(long, default_value_t = 5)]
    retries: u32,
}

pub fn run(args: ExportArgs) -> Result<()> {
    let range = export::time_range(
        args.from.as_deref(),
        args.to.as_deref(),
        args.since.as_deref(),
        shimtrace_span::clock::now_unix_nanos(),
    )?;
    let spans = args.source.load(None)?.spans;
    let request = OneshotRequest {
        overrides: args.otlp.overrides(),
        jaeger_json: args.jaeger_json,
        retries: args.retries,
    };
    let pass = Oneshot::plan(spans, range, &request, env_var)?;
    if let Some(path) = pass.write_jaeger()? {
        eprintln!("wrote {} spans to {}", pass.spans().len(), path.display());
    }
    if let Some((endpoint, sent)) = pass.send_otlp()? {
        eprintln!("exported {sent} spans to {endpoint}");
    }
    Ok(())
}
