//! `shimtrace lab`: the runtime comparison (built with the default `lab` feature).

use anyhow::Result;

pub fn run(args: shimtrace_lab::LabArgs) -> Result<()> {
    shimtrace_lab::run_interruptible(args)?;
    Ok(())
}
