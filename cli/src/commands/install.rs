//! `shimtrace install`: registers the wrapper shim for the runtimes present, with containerd's CRI
//! or, with `--docker`, with Docker Engine.

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
        let outcome = install::install(&args)?;
        return print(&outcome.report);
    }
    let config = if config_given {
        args.config
    } else {
        PathBuf::from(DEFAULT_DAEMON_JSON)
    };
    if docker.uninstall {
        return print(&uninstall_docker(&config)?.report);
    }
    if docker.check {
        let mut check = DockerCheck::new(&config);
        check.cli = DockerCli::new(&docker.docker_cli);
        if let Some(spool) = docker.spool {
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
        runsc: docker.runsc,
        shim_path: std::env::var_os("PATH").unwrap_or_default(),
    })?;
    print(&outcome.report)
}
