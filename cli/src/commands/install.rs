//! `shimtrace install`: registers the wrapper shim for the runtimes present with containerd's CRI
//! (printed, or merged with `--write`), removes exactly that again (`--uninstall`), or runs a pod
//! through each traced handler of the running containerd to show that it traces (`--check`,
//! feature `cri`); with `--docker`, the same with Docker Engine's daemon.json.

use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::parser::ValueSource;
use clap::{ArgMatches, Args, FromArgMatches};
use shimtrace_containerd::docker::{
    check_docker, install_docker, uninstall_docker, DockerArgs, DockerCheck, DockerCli,
    DockerInstall, DEFAULT_DAEMON_JSON,
};
use shimtrace_containerd::install::{self, InstallArgs};

use super::print;

/// `shimtrace install`'s arguments: containerd's, and the `--docker` ones.
pub struct InstallCommand {
    pub args: InstallArgs,
    pub docker: DockerArgs,
    /// Whether `--config` was given: its default is containerd's file, not daemon.json.
    config_given: bool,
}

impl FromArgMatches for InstallCommand {
    fn from_arg_matches(matches: &ArgMatches) -> Result<Self, clap::Error> {
        Ok(InstallCommand {
            args: InstallArgs::from_arg_matches(matches)?,
            docker: DockerArgs::from_arg_matches(matches)?,
            config_given: matches.value_source("config") == Some(ValueSource::CommandLine),
        })
    }

    fn update_from_arg_matches(&mut self, matches: &ArgMatches) -> Result<(), clap::Error> {
        *self = InstallCommand::from_arg_matches(matches)?;
        Ok(())
    }
}

impl Args for InstallCommand {
    fn augment_args(cmd: clap::Command) -> clap::Command {
        DockerArgs::augment_args(InstallArgs::augment_args(cmd))
    }

    fn augment_args_for_update(cmd: clap::Command) -> clap::Command {
        DockerArgs::augment_args_for_update(InstallArgs::augment_args_for_update(cmd))
    }
}

pub fn run(command: InstallCommand) -> Result<()> {
    let InstallCommand {
        args,
        docker,
        config_given,
    } = command;
    if !docker.docker {
        return containerd(args);
    }
    let config = if config_given {
        args.config
    } else {
        PathBuf::from(DEFAULT_DAEMON_JSON)
    };
    if args.uninstall {
        return print(&uninstall_docker(&config)?.report);
    }
    if args.check {
        let mut check = DockerCheck::new(&config);
        check.cli = DockerCli::new(&docker.docker_cli);
        if let Some(spool) = args.spool {
            check.spool = spool;
        }
        let outcome = check_docker(&check)?;
        print(&outcome.report)?;
        if !outcome.all_ok() {
            bail!("some traced Docker runtimes do not work; see above");
        }
        return Ok(());
    }
    let outcome = install_docker(&DockerInstall {
        config,
        wrapper: args.wrapper,
        bin_dir: args.bin_dir,
        write: args.write,
        runsc: args.runsc,
        shim_path: std::env::var_os("PATH").unwrap_or_default(),
    })?;
    print(&outcome.report)
}

/// Registration with containerd.
fn containerd(args: InstallArgs) -> Result<()> {
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
