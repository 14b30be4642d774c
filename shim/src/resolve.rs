//! Which real shim a wrapper stands for: naming, the optional config file, and containerd's lookup
//! order (absolute path, then `PATH`, then beside containerd); and, when the config names one, the
//! OCI runtime the inner shim is to run as `runc` (see [`resolve_oci_runtime`]).

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use shimtrace_span::env::{CONFIG as CONFIG_ENV, DEFAULT_CONFIG};
use shimtrace_span::naming::{is_executable_file, WrapperName, WRAPPER_PREFIX};

/// A config maps a few runtimes to paths; nothing longer is read.
const MAX_CONFIG_BYTES: u64 = 1024 * 1024;

/// What to do about a config that cannot be read: containerd shows it in the error of every
/// container that fails for it. `must_exist`: named by `SHIMTRACE_CONFIG`.
fn read_remedy(must_exist: bool, missing: bool) -> String {
    match (must_exist, missing) {
        (true, true) => format!(
            "create it, or fix or unset {CONFIG_ENV} in containerd's environment (its service unit)"
        ),
        (true, false) => format!(
            "make it a file this process can read, or fix or unset {CONFIG_ENV} in containerd's environment (its service unit)"
        ),
        (false, _) => "make it a file this process can read, or remove it if no runtime needs mapping to its shim".into(),
    }
}

/// Why a config file must not be trusted, if it must not: it chooses binaries this process runs
/// (as root, under a root containerd), so it must be a regular file that nobody but root or this
/// process's user can write.
fn check_config_file(meta: &std::fs::Metadata) -> Result<(), String> {
    use std::os::unix::fs::MetadataExt;
    let euid = nix::unistd::geteuid().as_raw();
    if !meta.is_file() {
        return Err("is not a regular file".into());
    }
    if meta.uid() != euid && meta.uid() != 0 {
        return Err(format!(
            "is owned by uid {}, neither root nor this process's user (uid {euid})",
            meta.uid()
        ));
    }
    if meta.mode() & 0o022 != 0 {
        return Err(format!(
            "is writable by group or others (mode {:04o})",
            meta.mode() & 0o7777
        ));
    }
    Ok(())
}

#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    #[error("{name:?} is not a wrapper name: invoke this binary as {WRAPPER_PREFIX}<inner>-<version> (e.g. a symlink {WRAPPER_PREFIX}runc-v2), or run `shimtrace install`")]
    NotAWrapperName { name: String },
    #[error("cannot find the inner shim {binary:?} for runtime {runtime}: not on PATH ({path}) nor beside containerd; install it or map the runtime to an absolute path in {config}")]
    InnerNotFound {
        binary: String,
        runtime: String,
        path: String,
        config: String,
    },
    #[error("the inner shim for runtime {runtime} resolves to this wrapper itself ({path}); map the runtime to the real shim in {config}")]
    SelfReference {
        runtime: String,
        path: PathBuf,
        config: String,
    },
    #[error("cannot read shimtrace config {path}: {source}; {remedy}")]
    ConfigRead {
        path: PathBuf,
        source: std::io::Error,
        /// What to do, which depends on how the file was named.
        remedy: String,
    },
    #[error("shimtrace config {path} is larger than {max} bytes, far more than a config mapping runtimes to shims needs: {remedy}")]
    ConfigTooLarge {
        path: PathBuf,
        max: u64,
        remedy: String,
    },
    #[error("shimtrace config {path} {problem}; it names the binaries run as inner shims, so only root (or this process's user) may write it: fix its owner and mode")]
    ConfigUnsafe { path: PathBuf, problem: String },
    #[error("invalid shimtrace config {path}{at}: {message}; fix it (the wrapper does not guess which shim to run while its config is broken)")]
    ConfigParse {
        path: PathBuf,
        /// `, line L, column C` when the parser knows where.
        at: String,
        message: String,
    },
    #[error("config {config} maps runtime {runtime} to {inner:?}, which is not an absolute path to an executable file")]
    BadOverride {
        config: String,
        runtime: String,
        inner: PathBuf,
    },
    #[error("config {config} gives runtime {runtime} the OCI runtime {oci_runtime:?}, which is not an absolute path to an executable file; fix oci_runtime there")]
    BadOciRuntime {
        config: String,
        runtime: String,
        oci_runtime: PathBuf,
    },
}

/// A runtime's entry in the config file.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RuntimeConfig {
    /// Absolute path of the real shim binary.
    pub inner: Option<PathBuf>,
    /// Absolute path of the OCI runtime binary the inner shim runs as `runc` (gVisor's `runsc`
    /// behind the runc shim), for runtimes registered where the runc shim's `BinaryName` option
    /// cannot be passed (CRI's runtime-name form on containerd 1.6). The wrapper puts a `runc`
    /// link to it first on the inner shim's `PATH`; a `BinaryName` that does arrive still wins.
    pub oci_runtime: Option<PathBuf>,
}

/// `/etc/shimtrace/config.toml`:
///
/// ```toml
/// [runtimes."io.containerd.traced-runc.v2"]
/// inner = "/usr/local/bin/containerd-shim-runc-v2"
///
/// [runtimes."io.containerd.traced-runsc.v2"]
/// inner = "/usr/bin/containerd-shim-runc-v2"
/// oci_runtime = "/usr/local/bin/runsc"
/// ```
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub runtimes: BTreeMap<String, RuntimeConfig>,
    #[serde(skip)]
    pub source: Option<PathBuf>,
}

impl Config {
    /// Loads `$SHIMTRACE_CONFIG`, else the default path; a missing default file is an empty config,
    /// a missing explicitly named one is an error.
    ///
    /// A config that exists but cannot be read or parsed (a syntax error, an unknown key) is an
    /// error too, never an empty config: looking the inner shim up on `PATH` instead could run a
    /// different shim than the one configured, which is worse than a container that fails to start
    /// with an error naming the file and line.
    pub fn load() -> Result<Config, ResolveError> {
        match std::env::var_os(CONFIG_ENV).filter(|v| !v.is_empty()) {
            Some(path) => Config::load_from(Path::new(&path), true),
            None => Config::load_from(Path::new(DEFAULT_CONFIG), false),
        }
    }

    pub fn load_from(path: &Path, must_exist: bool) -> Result<Config, ResolveError> {
        let read_err = |source: std::io::Error| ResolveError::ConfigRead {
            path: path.to_path_buf(),
            remedy: read_remedy(must_exist, source.kind() == std::io::ErrorKind::NotFound),
            source,
        };
        let file = match std::fs::File::open(path) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !must_exist => {
                return Ok(Config::default())
            }
            Err(source) => return Err(read_err(source)),
        };
        // Checked on the open file, so the checked file is the one read.
        let meta = file.metadata().map_err(read_err)?;
        check_config_file(&meta).map_err(|problem| ResolveError::ConfigUnsafe {
            path: path.to_path_buf(),
            problem,
        })?;
        // One byte more than allowed tells a file that is too large from one that just fits.
        let mut bytes = Vec::new();
        file.take(MAX_CONFIG_BYTES + 1)
            .read_to_end(&mut bytes)
            .map_err(read_err)?;
        if bytes.len() as u64 > MAX_CONFIG_BYTES {
            return Err(ResolveError::ConfigTooLarge {
                path: path.to_path_buf(),
                max: MAX_CONFIG_BYTES,
                remedy: if must_exist {
                    format!("is {CONFIG_ENV} in containerd's environment naming the wrong file? fix or unset it")
                } else {
                    "replace it with the runtime mappings it is for, or remove it".to_string()
                },
            });
        }
        let text = String::from_utf8(bytes).map_err(|e| {
            read_err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                e.utf8_error(),
            ))
        })?;
        Config::parse(&text, path)
    }

    /// Reads the TOML `text` of the config file at `path` (named in errors and in [`Config::source`]).
    pub fn parse(text: &str, path: &Path) -> Result<Config, ResolveError> {
        let mut config: Config = toml::from_str(text).map_err(|e| ResolveError::ConfigParse {
            path: path.to_path_buf(),
            at: e
                .span()
                .map(|span| {
                    let before = &text.as_bytes()[..span.start.min(text.len())];
                    let line = before.iter().filter(|b| **b == b'\n').count() + 1;
                    let column = before.iter().rev().take_while(|b| **b != b'\n').count() + 1;
                    format!(", line {line}, column {column}")
                })
                .unwrap_or_default(),
            message: e.message().trim().replace('\n', "; "),
        })?;
        config.source = Some(path.to_path_buf());
        Ok(config)
    }

    fn describe(&self) -> String {
        self.source
            .as_deref()
            .unwrap_or(Path::new(DEFAULT_CONFIG))
            .display()
            .to_string()
    }
}

/// The wrapper name this process was started as (`argv[0]`'s file name).
pub fn wrapper_name_from_argv0(argv0: &str) -> Result<WrapperName, ResolveError> {
    let base = Path::new(argv0)
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or(argv0);
    WrapperName::from_binary_name(base).ok_or_else(|| ResolveError::NotAWrapperName {
        name: base.to_string(),
    })
}

/// Whether a program the config names (an inner shim, an OCI runtime) can be run as named: an
/// absolute path, since a relative one would depend on the directory containerd starts the shim
/// in, to an executable file.
fn is_runnable_from_config(path: &Path) -> bool {
    path.is_absolute() && is_executable_file(path)
}

/// Finds the real shim for `name`, the way containerd finds shims, unless the config maps it.
pub fn resolve_inner(
    name: &WrapperName,
    config: &Config,
    containerd_binary: Option<&Path>,
    search_path: Option<OsString>,
    this_exe: &Path,
) -> Result<PathBuf, ResolveError> {
    let candidate = if let Some(inner) = config
        .runtimes
        .get(&name.runtime)
        .and_then(|r| r.inner.clone())
    {
        if !is_runnable_from_config(&inner) {
            return Err(ResolveError::BadOverride {
                config: config.describe(),
                runtime: name.runtime.clone(),
                inner,
            });
        }
        inner
    } else {
        let path_dirs: Vec<PathBuf> = search_path
            .as_ref()
            .map(|p| std::env::split_paths(p).collect())
            .unwrap_or_default();
        let beside_containerd = containerd_binary
            .and_then(Path::parent)
            .map(Path::to_path_buf);
        path_dirs
            .iter()
            .chain(beside_containerd.iter())
            .map(|dir| dir.join(&name.inner_binary))
            .find(|p| is_executable_file(p))
            .ok_or_else(|| ResolveError::InnerNotFound {
                binary: name.inner_binary.clone(),
                runtime: name.runtime.clone(),
                path: search_path
                    .as_ref()
                    .map(|p| p.to_string_lossy().into_owned())
                    .unwrap_or_default(),
                config: config.describe(),
            })?
    };
    let same = |a: &Path, b: &Path| match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    };
    if same(&candidate, this_exe) {
        return Err(ResolveError::SelfReference {
            runtime: name.runtime.clone(),
            path: candidate,
            config: config.describe(),
        });
    }
    Ok(candidate)
}

/// The OCI runtime the config gives `name`'s runtime (see [`RuntimeConfig::oci_runtime`]), checked
/// like an inner shim: an absolute path to an executable file.
pub fn resolve_oci_runtime(
    name: &WrapperName,
    config: &Config,
) -> Result<Option<PathBuf>, ResolveError> {
    let Some(oci_runtime) = config
        .runtimes
        .get(&name.runtime)
        .and_then(|r| r.oci_runtime.clone())
    else {
        return Ok(None);
    };
    if !is_runnable_from_config(&oci_runtime) {
        return Err(ResolveError::BadOciRuntime {
            config: config.describe(),
            runtime: name.runtime.clone(),
            oci_runtime,
        });
    }
    Ok(Some(oci_runtime))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{symlink, PermissionsExt};

    fn exe(path: &Path) {
        std::fs::write(path, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    #[test]
    fn argv0_names_the_wrapper_by_its_file_name() {
        let n = wrapper_name_from_argv0("/usr/local/bin/containerd-shim-traced-runc-v2").unwrap();
        assert_eq!(n.runtime, "io.containerd.traced-runc.v2");
        assert!(wrapper_name_from_argv0("/usr/bin/containerd-shim-runc-v2").is_err());
    }

    #[test]
    fn path_first_then_beside_containerd() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        std::fs::create_dir_all(&a).unwrap();
        std::fs::create_dir_all(&b).unwrap();
        exe(&b.join("containerd-shim-runc-v2"));
        let name = WrapperName::from_binary_name("containerd-shim-traced-runc-v2").unwrap();
        let me = dir.path().join("me");
        exe(&me);
        // PATH is `a`; containerd lives in `b`.
        let resolve = || {
            resolve_inner(
                &name,
                &Config::default(),
                Some(&b.join("containerd")),
                Some(a.clone().into_os_string()),
                &me,
            )
        };
        let found = resolve().unwrap();
        assert_eq!(found, b.join("containerd-shim-runc-v2"));
        exe(&a.join("containerd-shim-runc-v2"));
        let found = resolve().unwrap();
        assert_eq!(found, a.join("containerd-shim-runc-v2"));
        let missing = resolve_inner(&name, &Config::default(), None, None, &me).unwrap_err();
        assert!(missing.to_string().contains("containerd-shim-runc-v2"));
    }

    #[test]
    fn refuses_to_wrap_itself() {
        let dir = tempfile::tempdir().unwrap();
        let me = dir.path().join("containerd-shim-traced-v2");
        exe(&me);
        // A PATH dir where the "inner" name is a symlink back to the wrapper.
        symlink(&me, dir.path().join("containerd-shim-runc-v2")).unwrap();
        let name = WrapperName::from_binary_name("containerd-shim-traced-runc-v2").unwrap();
        let err = resolve_inner(
            &name,
            &Config::default(),
            None,
            Some(dir.path().as_os_str().to_owned()),
            &me,
        )
        .unwrap_err();
        assert!(matches!(err, ResolveError::SelfReference { .. }), "{err}");
    }

    #[test]
    fn config_override_and_errors() {
        let dir = tempfile::tempdir().unwrap();
        let inner = dir.path().join("real-shim");
        exe(&inner);
        let cfg_path = dir.path().join("config.toml");
        std::fs::write(
            &cfg_path,
            format!(
                "[runtimes.\"io.containerd.traced-runc.v2\"]\ninner = \"{}\"\n",
                inner.display()
            ),
        )
        .unwrap();
        let config = Config::load_from(&cfg_path, true).unwrap();
        let name = WrapperName::from_binary_name("containerd-shim-traced-runc-v2").unwrap();
        let me = dir.path().join("me");
        exe(&me);
        assert_eq!(
            resolve_inner(&name, &config, None, None, &me).unwrap(),
            inner
        );

        // A config others may write could make this process run any binary: refused.
        std::fs::set_permissions(&cfg_path, std::fs::Permissions::from_mode(0o666)).unwrap();
        let err = Config::load_from(&cfg_path, true).unwrap_err().to_string();
        assert!(err.contains("writable by group or others"), "{err}");
        std::fs::set_permissions(&cfg_path, std::fs::Permissions::from_mode(0o644)).unwrap();
        if nix::unistd::geteuid().is_root() {
            std::os::unix::fs::chown(&cfg_path, Some(65534), None).unwrap();
            let err = Config::load_from(&cfg_path, true).unwrap_err().to_string();
            assert!(err.contains("owned by uid 65534"), "{err}");
            std::os::unix::fs::chown(&cfg_path, Some(0), None).unwrap();
        }
        assert!(Config::load_from(&cfg_path, true).is_ok());

        std::fs::write(&cfg_path, "[runtimes.x]\nbogus = 1\n").unwrap();
        let err = Config::load_from(&cfg_path, true).unwrap_err().to_string();
        assert!(err.contains("invalid shimtrace config"), "{err}");
        assert!(
            err.contains(cfg_path.to_str().unwrap()) && err.contains("line 2, column 1"),
            "{err}"
        );
        assert!(err.contains("bogus") && !err.contains('\n'), "{err}");
        std::fs::write(&cfg_path, "[runtimes.x]\ninner = \"/x\"\n[[oops\n").unwrap();
        let err = Config::load_from(&cfg_path, true).unwrap_err().to_string();
        assert!(err.contains("line 3") && !err.contains('\n'), "{err}");
        assert!(Config::load_from(&dir.path().join("none.toml"), false).is_ok());
        // Named by SHIMTRACE_CONFIG but missing: containerd shows what to do about it.
        let err = Config::load_from(&dir.path().join("none.toml"), true)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("none.toml") && err.contains("create it") && err.contains(CONFIG_ENV),
            "{err}"
        );
        // There but not a file: creating it is not the answer.
        let err = Config::load_from(dir.path(), true).unwrap_err().to_string();
        assert!(!err.contains("create it"), "{err}");
    }

    #[test]
    fn a_config_larger_than_the_limit_is_refused_not_cut() {
        let dir = tempfile::tempdir().unwrap();
        let cfg_path = dir.path().join("config.toml");
        // Valid TOML up to the limit, with a table that only the bytes beyond it would close.
        let mut text = "#".repeat(MAX_CONFIG_BYTES as usize - 1);
        text.push('\n');
        std::fs::write(&cfg_path, &text).unwrap();
        assert_eq!(
            Config::load_from(&cfg_path, true).unwrap().runtimes.len(),
            0,
            "exactly the limit is read"
        );
        text.push_str("[runtimes.x]\ninner = \"/x\"\n");
        std::fs::write(&cfg_path, &text).unwrap();
        let err = Config::load_from(&cfg_path, true).unwrap_err().to_string();
        assert!(
            err.contains("larger than 1048576 bytes") && err.contains(cfg_path.to_str().unwrap()),
            "{err}"
        );
        // The limit falling inside a character (or bytes that are no UTF-8 at all) is no excuse.
        let mut bytes = vec![b'#'; MAX_CONFIG_BYTES as usize];
        bytes.extend("é\n".as_bytes());
        std::fs::write(&cfg_path, &bytes).unwrap();
        let err = Config::load_from(&cfg_path, true).unwrap_err().to_string();
        assert!(err.contains("larger than 1048576 bytes"), "{err}");
    }

    #[test]
    fn an_oci_runtime_is_read_and_checked_like_the_inner_shim() {
        let dir = tempfile::tempdir().unwrap();
        let (inner, runsc) = (dir.path().join("shim"), dir.path().join("runsc"));
        exe(&inner);
        exe(&runsc);
        let cfg_path = dir.path().join("config.toml");
        let runtime = "io.containerd.traced-runsc.v2";
        let config_with = |oci: &str| {
            let text = format!(
                "[runtimes.\"{runtime}\"]\ninner = \"{}\"\noci_runtime = \"{oci}\"\n",
                inner.display()
            );
            Config::parse(&text, &cfg_path).unwrap()
        };
        let name = WrapperName::from_binary_name("containerd-shim-traced-runsc-v2").unwrap();
        let config = config_with(runsc.to_str().unwrap());
        assert_eq!(
            resolve_oci_runtime(&name, &config).unwrap(),
            Some(runsc.clone())
        );
        let me = dir.path().join("me");
        exe(&me);
        assert_eq!(
            resolve_inner(&name, &config, None, None, &me).unwrap(),
            inner
        );
        // Another runtime's entry, and none at all: no OCI runtime.
        let runc = WrapperName::from_binary_name("containerd-shim-traced-runc-v2").unwrap();
        assert_eq!(resolve_oci_runtime(&runc, &config).unwrap(), None);
        assert_eq!(
            resolve_oci_runtime(&name, &Config::default()).unwrap(),
            None
        );
        // Relative, missing or not executable: refused, naming the file and the key.
        std::fs::write(dir.path().join("plain"), "").unwrap();
        for bad in [
            "runsc".to_string(),
            dir.path().join("none").display().to_string(),
            dir.path().join("plain").display().to_string(),
        ] {
            let err = resolve_oci_runtime(&name, &config_with(&bad)).unwrap_err();
            assert!(matches!(err, ResolveError::BadOciRuntime { .. }), "{err}");
            let text = err.to_string();
            assert!(
                text.contains(cfg_path.to_str().unwrap()) && text.contains("oci_runtime"),
                "{text}"
            );
        }
    }
}
