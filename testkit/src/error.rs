//! The harness's one error type: what went wrong setting up or driving a private containerd,
//! Docker Engine or CRI node, and what to do about it.

use std::fmt;
use std::fs;
use std::path::PathBuf;
use std::process::ExitStatus;
use std::time::Duration;

use shimtrace_containerd::daemon::last_lines;
use shimtrace_containerd::docker::DockerError;
use shimtrace_containerd::private::PrivateError;
use shimtrace_containerd::rootfs::RootfsError;

/// Lines of a daemon's log shown when it fails to start.
const LOG_TAIL_LINES: usize = 40;

/// An engine the tests run, unpacked by a script of this repository.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    Containerd,
    Docker,
}

impl Engine {
    /// The script that installs it (`scripts/setup --tests` runs both).
    pub fn installer(self) -> &'static str {
        match self {
            Engine::Containerd => "scripts/install-containerd-matrix.sh",
            Engine::Docker => "scripts/install-docker.sh",
        }
    }
}

impl fmt::Display for Engine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Engine::Containerd => "containerd",
            Engine::Docker => "Docker Engine",
        })
    }
}

/// What can go wrong while setting up or driving a private containerd, dockerd or CRI node.
#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    #[error("{engine} {version} is not installed at {path}: run `sudo {installer}` (or `scripts/setup --tests`)", installer = .engine.installer())]
    NotInstalled {
        engine: Engine,
        version: String,
        path: PathBuf,
    },
    #[error("{path} reports `{reported}`, expected {engine} {version}: re-run {installer}", installer = .engine.installer())]
    WrongVersion {
        engine: Engine,
        version: String,
        path: PathBuf,
        reported: String,
    },
    #[error("{action}: {source}")]
    Io {
        action: String,
        #[source]
        source: std::io::Error,
    },
    /// containerd could not be started, did not answer, or could not be stopped; `log_tail` holds
    /// the end of its log when it failed to start.
    #[error("{error}{log_tail}")]
    Containerd {
        error: Box<PrivateError>,
        log_tail: String,
    },
    #[error("`ctr {args}` did not finish within {timeout:?}; it was killed")]
    CtrTimeout { args: String, timeout: Duration },
    #[error("`ctr {args}` failed with {status}: {stderr}")]
    CtrFailed {
        args: String,
        status: ExitStatus,
        stderr: String,
    },
    /// A private dockerd or the docker CLI failed.
    #[error(transparent)]
    Docker(#[from] DockerError),
    #[error("`shimtrace install --docker --write` failed with {status}: {stderr}")]
    DockerInstall { status: String, stderr: String },
    #[error("busybox rootfs: {0} (scripts/install-containerd-matrix.sh installs busybox-static)")]
    Rootfs(#[from] RootfsError),
    #[error("shimtrace install: {0}")]
    Install(#[from] shimtrace_containerd::install::InstallError),
    #[error("{0}")]
    Image(#[from] shimtrace_containerd::image::ImageError),
    #[error("{0}")]
    Cri(Box<shimtrace_containerd::cri::CriError>),
    /// A CRI-enabled private containerd could not be made ready for pods (image import, or CRI
    /// not answering in time).
    #[error(transparent)]
    CriSetup(#[from] shimtrace_containerd::private::CriSetupError),
    #[error(transparent)]
    Tmpfs(#[from] crate::tmpfs::TmpfsError),
}

impl HarnessError {
    /// An I/O failure while doing `action` (said as "creating …", "writing …").
    pub(crate) fn io(action: impl Into<String>, source: std::io::Error) -> Self {
        HarnessError::Io {
            action: action.into(),
            source,
        }
    }
}

impl From<shimtrace_containerd::cri::CriError> for HarnessError {
    fn from(error: shimtrace_containerd::cri::CriError) -> Self {
        HarnessError::Cri(Box::new(error))
    }
}

impl From<PrivateError> for HarnessError {
    fn from(error: PrivateError) -> Self {
        let log_tail = error
            .log()
            .and_then(|log| fs::read_to_string(log).ok())
            .map(|log| {
                let tail = last_lines(&log, LOG_TAIL_LINES).join("\n");
                format!("\nlast lines of its log:\n{tail}")
            })
            .unwrap_or_default();
        HarnessError::Containerd {
            error: Box::new(error),
            log_tail,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_engine_says_which_script_installs_it() {
        let err = HarnessError::NotInstalled {
            engine: Engine::Docker,
            version: "26.1.5".into(),
            path: "/opt/shimtrace/docker/26.1.5/usr/sbin/dockerd".into(),
        };
        assert_eq!(
            err.to_string(),
            "Docker Engine 26.1.5 is not installed at /opt/shimtrace/docker/26.1.5/usr/sbin/dockerd: \
             run `sudo scripts/install-docker.sh` (or `scripts/setup --tests`)"
        );
        let err = HarnessError::WrongVersion {
            engine: Engine::Containerd,
            version: "2.1.9".into(),
            path: "/x/containerd".into(),
            reported: "containerd 1.7.24".into(),
        };
        assert_eq!(
            err.to_string(),
            "/x/containerd reports `containerd 1.7.24`, expected containerd 2.1.9: \
             re-run scripts/install-containerd-matrix.sh"
        );
    }

    #[test]
    fn a_cri_setup_error_keeps_its_own_message() {
        let err = HarnessError::from(shimtrace_containerd::private::CriSetupError::Timeout {
            what: "CRI did not answer ListPodSandbox".into(),
            waited: Duration::from_secs(30),
        });
        assert_eq!(
            err.to_string(),
            "CRI did not answer ListPodSandbox within 30s (see containerd's log)"
        );
    }

    #[test]
    fn a_version_that_is_not_installed_is_a_clear_error() {
        let err = crate::containerd::ContainerdVersion::find("0.0.0").unwrap_err();
        assert!(
            matches!(&err, HarnessError::NotInstalled { engine: Engine::Containerd, version, .. } if version == "0.0.0"),
            "{err}"
        );
        assert!(
            err.to_string()
                .contains("sudo scripts/install-containerd-matrix.sh"),
            "{err}"
        );
        let err = crate::docker::DockerVersion::find("0.0.0").unwrap_err();
        assert!(
            matches!(&err, HarnessError::NotInstalled { engine: Engine::Docker, version, .. } if version == "0.0.0"),
            "{err}"
        );
        assert!(
            err.to_string().contains("sudo scripts/install-docker.sh"),
            "{err}"
        );
    }
}
