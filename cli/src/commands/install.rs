//! `shimtrace install`: registers the wrapper shim for the runtimes present.

use anyhow::Result;
use shimtrace_containerd::install::{self, InstallArgs};

use super::print;

pub fn run(args: InstallArgs) -> Result<()> {
    let outcome = install::install(&args)?;
    print(&outcome.report)
}
