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
        containerd_only(DockerArgs::augment_args(InstallArgs::augment_args(cmd)))
    }

    fn augment_args_for_update(cmd: clap::Command) -> clap::Command {
        containerd_only(DockerArgs::augment_args_for_update(
            InstallArgs::augment_args_for_update(cmd),
        ))
    }
}

/// The flags (by id) that only registration with containerd reads: given with `--docker`, they
/// are an error rather than silently ignored.
const CONTAINERD_ONLY: [&str; 7] = [
    "form",
    "containerd_version",
    "config_version",
    "containerd",
    "wrapper_config",
    "socket",
    "ctr",
];

/// Makes each containerd-only flag conflict with `--docker`, and `--docker-cli` need it.
fn containerd_only(cmd: clap::Command) -> clap::Command {
    CONTAINERD_ONLY
        .iter()
        .fold(cmd, |cmd, id| {
            cmd.mut_arg(id, |arg| arg.conflicts_with("docker"))
        })
        .mut_arg("docker_cli", |arg| arg.requires("docker"))
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
        args.config.clone()
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
    let outcome = install_docker(&docker_install(args, config))?;
    print(&outcome.report)
}

/// `install --docker`'s options.
fn docker_install(args: InstallArgs, config: PathBuf) -> DockerInstall {
    DockerInstall {
        config,
        wrapper: args.wrapper,
        bin_dir: args.bin_dir,
        write: args.write,
        runsc: args.runsc,
        shim_path: args.shim_path,
    }
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

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        install: InstallCommand,
    }

    fn parse(argv: &[&str]) -> Result<InstallCommand, clap::Error> {
        Cli::try_parse_from(std::iter::once("install").chain(argv.iter().copied()))
            .map(|cli| cli.install)
    }

    #[test]
    fn containerd_only_flags_are_refused_with_docker() {
        for (flag, value) in [
            ("--form", "name"),
            ("--containerd-version", "2.1.9"),
            ("--config-version", "3"),
            ("--containerd", "/usr/bin/containerd"),
            ("--wrapper-config", "/etc/shimtrace/config.toml"),
            ("--socket", "/run/containerd/containerd.sock"),
            ("--ctr", "/usr/bin/ctr"),
        ] {
            let err = parse(&["--docker", flag, value]).err();
            let err = err.unwrap_or_else(|| panic!("{flag} was taken with --docker"));
            assert_eq!(
                err.kind(),
                clap::error::ErrorKind::ArgumentConflict,
                "{flag}"
            );
            let text = err.to_string();
            assert!(text.contains(flag) && text.contains("--docker"), "{text}");
            // Without --docker each is still taken.
            assert!(parse(&[flag, value]).is_ok(), "{flag}");
        }
        // Their defaults are no conflict, and the shared flags pass.
        let command = parse(&[
            "--docker",
            "--shim-path",
            "/opt/shims",
            "--runsc",
            "/usr/bin/runsc",
            "--bin-dir",
            "/usr/local/bin",
        ])
        .unwrap();
        assert!(command.docker.docker);
        let err = parse(&["--docker-cli", "/usr/bin/docker"]).err().unwrap();
        assert_eq!(err.kind(), clap::error::ErrorKind::MissingRequiredArgument);
    }

    #[test]
    fn docker_looks_for_shims_in_the_shim_path_given() {
        let command = parse(&["--docker", "--shim-path", "/opt/shims:/opt/more"]).unwrap();
        let install = docker_install(command.args, DEFAULT_DAEMON_JSON.into());
        assert_eq!(
            install.shim_path.as_deref(),
            Some("/opt/shims:/opt/more".as_ref())
        );
        // Without it, the Docker install takes PATH itself.
        let command = parse(&["--docker"]).unwrap();
        let install = docker_install(command.args, DEFAULT_DAEMON_JSON.into());
        assert_eq!(install.shim_path, None);
    }

    #[test]
    fn a_containerd_version_is_checked_and_taken_with_its_v() {
        let command = parse(&["--containerd-version", "v2.1.9"]).unwrap();
        assert_eq!(command.args.containerd_version.as_deref(), Some("2.1.9"));
        let err = parse(&["--containerd-version", "banana"]).err().unwrap();
        assert_eq!(err.kind(), clap::error::ErrorKind::ValueValidation);
        assert!(err.to_string().contains("expected X.Y.Z"), "{err}");
    }
}
