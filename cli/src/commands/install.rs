//! `shimtrace install`: registers the wrapper shim for the runtimes present (printed, or merged
//! with `--write`), removes exactly that again (`--uninstall`), or runs a pod through each traced
//! handler of the running containerd to show that it traces (`--check`, feature `cri`).

use anyhow::Result;
use shimtrace_containerd::install::{self, InstallArgs};

use super::print;

pub fn run(args: InstallArgs) -> Result<()> {
    if args.check {
        return check(&args);
    }
    let report = if args.uninstall {
        install::uninstall(&args)?.report
    } else {
        install::install(&args)?.report
    };
    print(&report)
}

#[cfg(feature = "cri")]
fn check(args: &InstallArgs) -> Result<()> {
    use anyhow::{bail, Context};
    use shimtrace_containerd::check::{check, CheckOptions};
    use shimtrace_span::env::SPOOL_DIR;
    use shimtrace_span::spool::DEFAULT_SPOOL_DIR;

    let spool = args
        .spool
        .clone()
        .or_else(|| std::env::var_os(SPOOL_DIR).map(Into::into))
        .unwrap_or_else(|| DEFAULT_SPOOL_DIR.into());
    let mut options = CheckOptions::new(&args.socket, spool);
    options.ctr = args.ctr.clone();
    options.config = Some(args.config.clone());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime for the CRI client")?;
    let report = runtime.block_on(check(&options))?;
    print(&report.render())?;
    let untraced: Vec<&str> = report.untraced().map(|h| h.handler.name.as_str()).collect();
    if !untraced.is_empty() {
        bail!(
            "not traced: {} (the reasons are above; fix the registration, restart containerd, and check again)",
            untraced.join(", ")
        );
    }
    Ok(())
}

#[cfg(not(feature = "cri"))]
fn check(_: &InstallArgs) -> Result<()> {
    anyhow::bail!(
        "this shimtrace was built without CRI support: rebuild it with the `cri` feature (on by default) to use install --check"
    )
}
