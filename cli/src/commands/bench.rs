//! `shimtrace bench` (hidden): ingest throughput and report time on a synthetic spool.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use shimtrace_collector::{synth, throughput};

use super::{print, progress};

#[derive(Args)]
pub struct BenchArgs {
    /// Working directory (spool and store are created inside).
    #[arg(long, value_name = "DIR")]
    dir: PathBuf,
    #[arg(long, default_value_t = 10_000)]
    containers: usize,
    #[arg(long, default_value_t = 100)]
    containers_per_writer: usize,
}

pub fn run(args: BenchArgs) -> Result<()> {
    let config = synth::SynthConfig {
        containers: args.containers,
        containers_per_writer: args.containers_per_writer,
        ..Default::default()
    };
    let bar = progress(args.containers, "writing spool");
    let result = throughput::run(&args.dir, &config, |n| bar.set_position(n as u64))?;
    bar.finish_and_clear();
    print(&serde_json::to_string_pretty(&result)?)
}
