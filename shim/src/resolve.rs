//! Which real shim a wrapper stands for: naming, the optional config file, and containerd's lookup
//! order (absolute path, then `PATH`, then beside containerd).

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use shimtrace_span::env::CONFIG as CONFIG_ENV;
use shimtrace_span::naming::{is_executable_file, WrapperName};

pub const DEFAULT_CONFIG_PATH: &str = "/etc/shimtrace/config.toml";

#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    #[error("{name:?} is not a wrapper name: invoke this binary as containerd-shim-traced-<inner>-<version> (e.g. a symlink containerd-shim-traced-runc-v2), or run `shimtrace install`")]
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
    #[error("cannot read shimtrace config {path}: {source}")]
    ConfigRead {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid shimtrace config {path}: {message}")]
    ConfigParse { path: PathBuf, message: String },
    #[error("config {config} maps runtime {runtime} to {inner:?}, which is not an absolute path to an executable file")]
    BadOverride {
        config: String,
        runtime: String,
        inner: PathBuf,
    },
}

/// A runtime's entry in the config file.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RuntimeConfig {
    /// Absolute path of the real shim binary.
    pub inner: Option<PathBuf>,
}

/// `/etc/shimtrace/config.toml`:
///
/// ```toml
/// [runtimes."io.containerd.traced-runc.v2"]
/// inner = "/usr/local/bin/containerd-shim-runc-v2"
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
    pub fn load() -> Result<Config, ResolveError> {
        match std::env::var_os(CONFIG_ENV).filter(|v| !v.is_empty()) {
            Some(path) => Config::load_from(Path::new(&path), true),
            None => Config::load_from(Path::new(DEFAULT_CONFIG_PATH), false),
        }
    }

    pub fn load_from(path: &Path, must_exist: bool) -> Result<Config, ResolveError> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !must_exist => {
                return Ok(Config::default())
            }
            Err(source) => {
                return Err(ResolveError::ConfigRead {
                    path: path.to_path_buf(),
                    source,
                })
            }
        };
        Config::parse(&text, path)
    }

    /// Reads the TOML `text` of the config file at `path` (named in errors and in [`Config::source`]).
    pub fn parse(text: &str, path: &Path) -> Result<Config, ResolveError> {
        let mut config: Config = toml::from_str(text).map_err(|e| ResolveError::ConfigParse {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        config.source = Some(path.to_path_buf());
        Ok(config)
    }

    fn describe(&self) -> String {
        self.source
            .as_deref()
            .unwrap_or(Path::new(DEFAULT_CONFIG_PATH))
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
        if !inner.is_absolute() || !is_executable_file(&inner) {
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
        let found = resolve_inner(
            &name,
            &Config::default(),
            Some(&b.join("containerd")),
            Some(a.clone().into_os_string()),
            &me,
        )
        .unwrap();
        assert_eq!(found, b.join("containerd-shim-runc-v2"));
        exe(&a.join("containerd-shim-runc-v2"));
        let found = resolve_inner(
            &name,
            &Config::default(),
            Some(&b.join("containerd")),
            Some(a.clone().into_os_string()),
            &me,
        )
        .unwrap();
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

        std::fs::write(&cfg_path, "[runtimes.x]\nbogus = 1\n").unwrap();
        let err = Config::load_from(&cfg_path, true).unwrap_err().to_string();
        assert!(err.contains("invalid shimtrace config"), "{err}");
        assert!(Config::load_from(&dir.path().join("none.toml"), false).is_ok());
        assert!(Config::load_from(&dir.path().join("none.toml"), true).is_err());
    }
}
