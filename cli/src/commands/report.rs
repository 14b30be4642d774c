//! `shimtrace report`: the cold-start report per runtime, optionally against client wall times.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use shimtrace_collector::report;

use super::{print, SourceArgs};

#[derive(Args)]
pub struct ReportArgs {
    #[command(flatten)]
    source: SourceArgs,
    #[arg(long, value_enum, default_value = "md")]
    format: report::Format,
    /// Client-observed wall times: a JSON array or JSON lines of {"container_id", "wall_time_ns"}.
    #[arg(long, value_name = "FILE")]
    wall_times: Option<PathBuf>,
    /// Write the report here instead of stdout.
    #[arg(long, short, value_name = "FILE")]
    output: Option<PathBuf>,
}

pub fn run(args: ReportArgs) -> Result<()> {
    let loaded = args.source.load(None)?;
    let walls = match &args.wall_times {
        Some(path) => {
            let text = std::fs::read_to_string(path).with_context(|| {
                format!(
                    "cannot read wall times from {} (pass --wall-times a readable file)",
                    path.display()
                )
            })?;
            report::parse_wall_times(&text).with_context(|| format!("in {}", path.display()))?
        }
        None => Vec::new(),
    };
    let built = report::build_report(loaded.spans, loaded.dropped, &walls, Vec::new());
    let text = report::render(&built, args.format);
    match &args.output {
        Some(path) => std::fs::write(path, text).with_context(|| {
            format!(
                "cannot write the report to {} (pass --output a writable path)",
                path.display()
            )
        }),
        None => print(&text),
    }
}
