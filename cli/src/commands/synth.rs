//! `shimtrace synth` (hidden): a synthetic spool for tests and benchmarks.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use shimtrace_collector::synth;

use super::{print, progress};

#[derive(Args)]
pub struct SynthArgs {
    /// Spool directory to write.
    #[arg(long, value_name = "DIR")]
    spool: PathBuf,
    #[arg(long, default_value_t = 100)]
    containers: usize,
    #[arg(long, default_value_t = 100)]
    containers_per_writer: usize,
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Also write the containers' client wall times (JSON lines) here.
    #[arg(long, value_name = "FILE")]
    wall_times: Option<PathBuf>,
}

pub fn run(args: SynthArgs) -> Result<()> {
    let config = synth::SynthConfig {
        containers: args.containers,
        containers_per_writer: args.containers_per_writer,
        seed: args.seed,
        ..Default::default()
    };
    let bar = progress(args.containers, "writing spool");
    let (summary, walls) =
        synth::generate_spool(&args.spool, &config, |n| bar.set_position(n as u64)).with_context(
            || {
                format!(
                    "cannot write a synthetic spool to {} (pass --spool a writable directory)",
                    args.spool.display()
                )
            },
        )?;
    bar.finish_and_clear();
    if let Some(path) = &args.wall_times {
        let lines: Vec<String> = walls
            .iter()
            .map(serde_json::to_string)
            .collect::<Result<_, _>>()?;
        std::fs::write(path, lines.join("\n") + "\n").with_context(|| {
            format!(
                "cannot write wall times to {} (pass --wall-times a writable path)",
                path.display()
            )
        })?;
    }
    print(&serde_json::to_string(&summary)?)
}
