//! A containerd of our own beside any other: one directory holds its config, root, state, gRPC and
//! ttrpc sockets and log; it is started with the caller's environment and `PATH`, awaited until its
//! socket answers, stopped by pid (SIGTERM, then SIGKILL), and stopped when dropped.
//!
//! ```no_run
//! use shimtrace_containerd::private::{PrivateConfig, PrivateContainerd};
//! let mut config = PrivateConfig::new("/tmp/my-containerd");
//! config.path_prepend.push("/opt/shims".into());
//! let containerd = PrivateContainerd::start(config)?;
//! println!("containerd {} at {}", containerd.binary().version(), containerd.address().display());
//! # Ok::<(), shimtrace_containerd::private::PrivateError>(())
//! ```
//!
//! Which config schema a containerd wants follows from its major version (`containerd --version`):
//! 2 for 1.x, 3 for 2.x ([`ContainerdBinary`], [`config_version_for_major`]).
//!
//! By default the CRI plugins are disabled (no CNI or images needed). [`ConfigSource::Cri`] turns
//! them on for pods without a cluster: the sandbox image is a local one, `restrict_oom_score_adj`
//! is set (runc cannot lower `oom_score_adj` in some VMs), and CNI configs and the NRI socket are
//! the instance's own. [`ConfigSource::Existing`] starts containerd on a file the caller wrote —
//! e.g. one that `shimtrace install --write` merged its runtimes into — without touching it.
//! With the `cri` feature, [`await_cri_ready`] and [`import_cri_image`] make such an instance ready
//! for pods (local images imported into CRI's namespace and listed by CRI).

use std::ffi::OsString;
use std::fs;
use std::io;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;
#[cfg(feature = "cri")]
use std::time::Instant;

use shimtrace_span::naming::find_in_path;

use crate::daemon::{await_ready, last_lines, spawn_logged, terminate, SpawnError, Startup};
use crate::image::STANDARD_PATH;

const POLL_INTERVAL: Duration = Duration::from_millis(20);

/// What can go wrong starting, probing or stopping a private containerd.
#[derive(Debug, thiserror::Error)]
pub enum PrivateError {
    #[error(
        "containerd binary {0} not found (install containerd, or name the path of its binary)"
    )]
    NotFound(PathBuf),
    #[error("cannot run `{path} --version`: {source} (is it a containerd binary?)")]
    Run {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("`{path} --version` printed {output:?}, which names no containerd version (is it a containerd binary?)")]
    UnknownVersion { path: PathBuf, output: String },
    #[error("{action}: {source}")]
    Io {
        action: String,
        #[source]
        source: io::Error,
    },
    #[error("containerd {version} did not answer on {address} within {timeout:?} (see its log {log}: {last_lines})")]
    NotReady {
        version: String,
        address: PathBuf,
        timeout: Duration,
        log: PathBuf,
        last_lines: String,
    },
    #[error("containerd {version} exited during startup with {status} (see its log {log}: {last_lines})")]
    ExitedEarly {
        version: String,
        status: ExitStatus,
        log: PathBuf,
        last_lines: String,
    },
}

impl PrivateError {
    fn io(action: impl Into<String>) -> impl FnOnce(io::Error) -> PrivateError {
        let action = action.into();
        move |source| PrivateError::Io { action, source }
    }

    /// The containerd log that explains a failed start, if this is one.
    pub fn log(&self) -> Option<&Path> {
        match self {
            PrivateError::NotReady { log, .. } | PrivateError::ExitedEarly { log, .. } => Some(log),
            _ => None,
        }
    }
}

/// A containerd executable and the version it reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerdBinary {
    path: PathBuf,
    version: String,
}

impl ContainerdBinary {
    /// Runs `<path> --version` (a bare name is looked up on `PATH`) and reads the version from it.
    pub fn probe(path: &Path) -> Result<ContainerdBinary, PrivateError> {
        let output = Command::new(path)
            .arg("--version")
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .output()
            .map_err(|source| PrivateError::Run {
                path: path.to_path_buf(),
                source,
            })?;
        let text = String::from_utf8_lossy(&output.stdout);
        let version = parse_version(&text).ok_or_else(|| PrivateError::UnknownVersion {
            path: path.to_path_buf(),
            output: text.trim().to_owned(),
        })?;
        Ok(ContainerdBinary {
            path: path.to_path_buf(),
            version: version.to_owned(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The version, e.g. "1.6.20" or "2.1.9" (no packaging suffix).
    pub fn version(&self) -> &str {
        &self.version
    }

    /// The major version (1 or 2).
    pub fn major(&self) -> u32 {
        major_of(&self.version)
    }

    /// The config schema this containerd reads: 2 for 1.x, 3 for 2.x.
    pub fn config_version(&self) -> u32 {
        config_version_for_major(self.major())
    }
}

/// A key on a table path that holds something other than a table (`runtimes = "runc"`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{key}` is a TOML {found}, not a table")]
pub(crate) struct NotATable {
    /// The key's dotted path from the top of the document.
    pub key: String,
    /// What the key holds (`string`, `array`, …).
    pub found: &'static str,
}

/// Makes `item` a table where that loses nothing: nothing becomes an empty implicit table (only
/// its leaves print), an inline table a table with the same content; else returns what it is.
fn make_table(item: &mut toml_edit::Item) -> Result<(), &'static str> {
    use toml_edit::{Item, Table, Value};
    match item {
        Item::Table(_) => Ok(()),
        Item::None => {
            let mut table = Table::new();
            table.set_implicit(true);
            *item = Item::Table(table);
            Ok(())
        }
        Item::Value(Value::InlineTable(inline)) => {
            let table = std::mem::take(inline).into_table();
            *item = Item::Table(table);
            Ok(())
        }
        other => Err(other.type_name()),
    }
}

/// A table path as TOML writes it: `plugins."io.containerd.grpc.v1.cri".containerd`.
fn dotted(path: &[&str]) -> String {
    path.iter()
        .map(|key| toml_edit::Key::new(*key).display_repr().into_owned())
        .collect::<Vec<_>>()
        .join(".")
}

/// The table at `path` below `doc` (`["plugins", "…cri…"]`), made where missing. An inline table
/// on the way (`runtimes = { runc = { … } }`, as users write) becomes a table keeping its content;
/// anything else there (a string, an array) is left alone and named in the error.
pub(crate) fn try_table_at<'a>(
    doc: &'a mut toml_edit::Table,
    path: &[&str],
) -> Result<&'a mut toml_edit::Table, NotATable> {
    let mut table = doc;
    for (depth, key) in path.iter().enumerate() {
        let item = table.entry(key).or_insert(toml_edit::Item::None);
        make_table(item).map_err(|found| NotATable {
            key: dotted(&path[..=depth]),
            found,
        })?;
        table = item.as_table_mut().expect("made a table");
    }
    Ok(table)
}

/// [`try_table_at`] for a config rewritten to run a private containerd (a copy of the caller's
/// own): there, whatever else is in the way is replaced by an empty table.
pub(crate) fn table_at<'a>(
    doc: &'a mut toml_edit::Table,
    path: &[&str],
) -> &'a mut toml_edit::Table {
    let mut table = doc;
    for key in path {
        let item = table.entry(key).or_insert(toml_edit::Item::None);
        if make_table(item).is_err() {
            *item = toml_edit::Item::Table(toml_edit::Table::new());
        }
        table = item.as_table_mut().expect("made a table");
    }
    table
}

/// A containerd version as numbers (`"1.7.24"` → `(1, 7, 24)`); missing parts are 0.
pub fn version_triple(version: &str) -> (u32, u32, u32) {
    let mut parts = version
        .split('.')
        .map(|p| p.parse::<u32>().unwrap_or(0))
        .chain(std::iter::repeat(0));
    (
        parts.next().unwrap_or(0),
        parts.next().unwrap_or(0),
        parts.next().unwrap_or(0),
    )
}

/// The version in `containerd --version` output: `containerd github.com/containerd/containerd
/// 1.6.20~ds1 1.6.20~ds1-1+deb12u3` → "1.6.20"; `containerd github.com/containerd/containerd/v2
/// v2.1.9 <revision>` or `… 2.1.9+unknown` → "2.1.9".
pub fn parse_version(output: &str) -> Option<&str> {
    output.split_whitespace().find_map(version_number)
}

/// A containerd release number as `containerd --version` prints it, or as a user copies it from
/// there: `X.Y` or `X.Y.Z`, with an optional leading `v` and packaging suffix (`~ds1`, `+unknown`,
/// `-rc.1`) → the bare number (`"v2.1.9"` → "2.1.9", `"1.6.20~ds1"` → "1.6.20"). `None` for
/// anything else; every version install or check reads goes through here.
pub fn version_number(word: &str) -> Option<&str> {
    let word = word.strip_prefix('v').unwrap_or(word);
    let version = word.split(['~', '+', '-']).next()?;
    let parts: Vec<&str> = version.split('.').collect();
    // At most 9 digits a part: each is read as a u32, where a longer one would overflow.
    let numeric = (2..=3).contains(&parts.len())
        && parts
            .iter()
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) && p.len() <= 9);
    (numeric && major_of(version) >= 1).then_some(version)
}

/// The major of a version string ("2.1.9" → 2); 0 if it has none.
pub fn major_of(version: &str) -> u32 {
    version
        .split('.')
        .next()
        .and_then(|m| m.parse().ok())
        .unwrap_or(0)
}

/// The config schema a containerd of major version `major` reads: 2 for 1.x, 3 for 2.x.
pub fn config_version_for_major(major: u32) -> u32 {
    if major >= 2 {
        3
    } else {
        2
    }
}

/// The config file of a private containerd whose files all live under `dir` (root, state, gRPC
/// socket `c.sock`, ttrpc socket `c.sock.ttrpc`), in schema `config_version`; the CRI plugins are
/// disabled so that no CNI or image setup is needed. `extra` is appended verbatim (start it with
/// its own `[table]` header).
pub fn config_toml(dir: &Path, config_version: u32, extra: &str) -> String {
    let disabled = if config_version >= 3 {
        r#"["io.containerd.grpc.v1.cri", "io.containerd.cri.v1.images", "io.containerd.cri.v1.runtime"]"#
    } else {
        r#"["io.containerd.grpc.v1.cri"]"#
    };
    let quoted = |path: PathBuf| toml::Value::String(path.display().to_string()).to_string();
    let mut config = format!(
        "version = {config_version}\nroot = {root}\nstate = {state}\ndisabled_plugins = {disabled}\n\
         [grpc]\n  address = {grpc}\n[ttrpc]\n  address = {ttrpc}\n",
        root = quoted(root_dir(dir)),
        state = quoted(state_dir(dir)),
        grpc = quoted(address(dir)),
        ttrpc = quoted(ttrpc_address(dir)),
    );
    if !extra.is_empty() {
        config.push_str(extra);
        config.push('\n');
    }
    config
}

/// What a private containerd's CRI plugin needs to run pods on a machine without a registry or CNI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CriSettings {
    /// The pod sandbox ("pause") image: a reference in the `k8s.io` namespace (imported before
    /// the first pod runs), e.g. `docker.io/local/sandbox:1`.
    pub sandbox_image: String,
}

/// How a private containerd's config file comes about.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum ConfigSource {
    /// Generated with the CRI plugins disabled ([`config_toml`]).
    #[default]
    Generated,
    /// Generated with the CRI plugin on ([`cri_config_toml`]).
    Cri(CriSettings),
    /// The file already at `<dir>/config.toml`, used as it is (the caller made it private, e.g.
    /// with [`make_private`], and may have had `shimtrace install --write` merge into it).
    Existing,
}

/// The config of a private containerd under `dir` with its CRI plugin on (see the module docs);
/// `extra` is appended verbatim.
pub fn cri_config_toml(dir: &Path, config_version: u32, cri: &CriSettings, extra: &str) -> String {
    let base = format!("version = {config_version}\n");
    let mut config = make_private(&base, dir, config_version, Some(cri))
        .expect("a generated config is valid TOML");
    if !extra.is_empty() {
        config.push_str(extra);
        config.push('\n');
    }
    config
}

/// Rewrites an existing containerd config (Debian's stock file, `containerd config default`, a
/// node's own) so that it runs as a private instance under `dir`: its root, state, sockets, CNI
/// config dir, NRI socket and `opt` dir move under `dir`; with `cri`, the CRI plugin is enabled,
/// with that sandbox image and `restrict_oom_score_adj = true`. Everything else (comments, runtimes,
/// options) stays. The config's own `version` picks the table names (`config_version` when it has
/// none).
pub fn make_private(
    existing: &str,
    dir: &Path,
    config_version: u32,
    cri: Option<&CriSettings>,
) -> Result<String, PrivateError> {
    use toml_edit::{value, Array, DocumentMut, Item};
    let mut doc: DocumentMut = existing.parse().map_err(|e: toml_edit::TomlError| {
        PrivateError::io("parsing the containerd config to make private")(io::Error::new(
            io::ErrorKind::InvalidData,
            e.to_string(),
        ))
    })?;
    let schema = doc
        .get("version")
        .and_then(Item::as_integer)
        .and_then(|v| u32::try_from(v).ok())
        .unwrap_or(config_version);
    if doc.get("version").is_none() {
        doc.insert("version", value(i64::from(schema)));
    }
    let path_value = |p: PathBuf| value(p.display().to_string());
    doc.insert("root", path_value(root_dir(dir)));
    doc.insert("state", path_value(state_dir(dir)));
    let root = doc.as_table_mut();
    table_at(root, &["grpc"]).insert("address", path_value(address(dir)));
    table_at(root, &["ttrpc"]).insert("address", path_value(ttrpc_address(dir)));
    if let Some(opt) = root
        .get_mut("plugins")
        .and_then(Item::as_table_like_mut)
        .and_then(|p| p.get_mut("io.containerd.internal.v1.opt"))
        .and_then(Item::as_table_like_mut)
    {
        opt.insert("path", path_value(dir.join("opt")));
    }
    let Some(cri) = cri else {
        return Ok(doc.to_string());
    };
    // The CRI plugin must not be disabled.
    if let Some(disabled) = root
        .get_mut("disabled_plugins")
        .and_then(Item::as_array_mut)
    {
        let kept: Array = disabled
            .iter()
            .filter(|v| {
                !v.as_str().is_some_and(|name| {
                    matches!(
                        name,
                        "io.containerd.grpc.v1.cri"
                            | "io.containerd.cri.v1.images"
                            | "io.containerd.cri.v1.runtime"
                    )
                })
            })
            .cloned()
            .collect();
        *disabled = kept;
    }
    let cni_dir = path_value(dir.join("cni"));
    if schema >= 3 {
        table_at(
            root,
            &["plugins", "io.containerd.cri.v1.images", "pinned_images"],
        )
        .insert("sandbox", value(&cri.sandbox_image));
        let runtime = table_at(root, &["plugins", "io.containerd.cri.v1.runtime"]);
        runtime.insert("restrict_oom_score_adj", value(true));
        table_at(root, &["plugins", "io.containerd.cri.v1.runtime", "cni"])
            .insert("conf_dir", cni_dir);
        // Enabled by default on 2.x; every instance listening on /var/run/nri/nri.sock would take
        // it from the others.
        table_at(root, &["plugins", "io.containerd.nri.v1.nri"])
            .insert("socket_path", path_value(dir.join("nri.sock")));
    } else {
        let plugin = table_at(root, &["plugins", "io.containerd.grpc.v1.cri"]);
        plugin.insert("sandbox_image", value(&cri.sandbox_image));
        plugin.insert("restrict_oom_score_adj", value(true));
        table_at(root, &["plugins", "io.containerd.grpc.v1.cri", "cni"])
            .insert("conf_dir", cni_dir);
    }
    Ok(doc.to_string())
}

fn root_dir(dir: &Path) -> PathBuf {
    dir.join("root")
}

fn state_dir(dir: &Path) -> PathBuf {
    dir.join("state")
}

fn address(dir: &Path) -> PathBuf {
    dir.join("c.sock")
}

fn ttrpc_address(dir: &Path) -> PathBuf {
    dir.join("c.sock.ttrpc")
}

/// How to start a [`PrivateContainerd`].
#[derive(Debug, Clone)]
pub struct PrivateConfig {
    /// The containerd executable; a bare name is looked up on the `PATH` containerd gets
    /// (default: `containerd`).
    pub binary: PathBuf,
    /// Directory for config, root, state, sockets and log (created if missing; never removed).
    pub dir: PathBuf,
    /// Extra environment for containerd, inherited by every shim it starts (e.g.
    /// `SHIMTRACE_SPOOL_DIR`).
    pub env: Vec<(OsString, OsString)>,
    /// Directories put in front of this process's `PATH` for containerd (where it finds shims).
    pub path_prepend: Vec<PathBuf>,
    /// `--log-level` for containerd; "debug" also makes it pass `-debug` to shims.
    pub log_level: Option<String>,
    /// TOML appended verbatim to the generated config; start it with its own `[table]` header.
    pub extra_config: String,
    /// Whether the config is generated (with or without CRI) or the caller's file (default:
    /// generated, CRI off).
    pub source: ConfigSource,
    /// How long to wait for the gRPC socket to answer (default 20 s).
    pub ready_timeout: Duration,
    /// How long containerd gets to exit after SIGTERM before it is killed (default 15 s).
    pub stop_timeout: Duration,
    /// Namespaces whose containers made by the gRPC driver ([`crate::Containerd`]) are removed
    /// before containerd is stopped, so that none outlives it.
    #[cfg(feature = "client")]
    pub remove_containers_in: Vec<String>,
}

impl PrivateConfig {
    pub fn new(dir: impl Into<PathBuf>) -> PrivateConfig {
        PrivateConfig {
            binary: PathBuf::from("containerd"),
            dir: dir.into(),
            env: Vec::new(),
            path_prepend: Vec::new(),
            log_level: None,
            extra_config: String::new(),
            source: ConfigSource::Generated,
            ready_timeout: Duration::from_secs(20),
            stop_timeout: Duration::from_secs(15),
            #[cfg(feature = "client")]
            remove_containers_in: Vec::new(),
        }
    }

    /// Adds one environment variable (builder style).
    pub fn env(mut self, key: impl Into<OsString>, value: impl Into<OsString>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// The `PATH` containerd (and so every shim) gets: [`Self::path_prepend`], then this process's
    /// `PATH`.
    pub fn path_var(&self) -> Result<OsString, PrivateError> {
        path_with(self.path_prepend.iter().cloned())
            .map_err(|e| PrivateError::io("building containerd's PATH")(io::Error::other(e)))
    }
}

/// A `PATH` of `first`, then this process's `PATH` (else [`STANDARD_PATH`]): what a daemon the
/// tools start, and the shims it runs, get.
pub fn path_with(
    first: impl IntoIterator<Item = PathBuf>,
) -> Result<OsString, std::env::JoinPathsError> {
    let mut dirs: Vec<PathBuf> = first.into_iter().collect();
    dirs.extend(std::env::split_paths(
        &std::env::var_os("PATH").unwrap_or_else(|| STANDARD_PATH.into()),
    ));
    std::env::join_paths(dirs)
}

/// A running containerd of our own (see the module docs); stopped when dropped.
#[derive(Debug)]
pub struct PrivateContainerd {
    config: PrivateConfig,
    binary: ContainerdBinary,
    path: OsString,
    child: Option<Child>,
}

impl PrivateContainerd {
    /// Finds the binary and its version, writes the config, starts containerd and returns once its
    /// gRPC socket accepts connections.
    pub fn start(config: PrivateConfig) -> Result<PrivateContainerd, PrivateError> {
        let path = config.path_var()?;
        let resolved = if config.binary.components().count() > 1 {
            Some(config.binary.clone()).filter(|p| p.is_file())
        } else {
            config
                .binary
                .to_str()
                .and_then(|name| find_in_path(name, &path))
        };
        let resolved = resolved.ok_or_else(|| PrivateError::NotFound(config.binary.clone()))?;
        let binary = ContainerdBinary::probe(&resolved)?;
        fs::create_dir_all(&config.dir).map_err(PrivateError::io(format!(
            "creating {}",
            config.dir.display()
        )))?;
        let mut private = PrivateContainerd {
            config,
            binary,
            path,
            child: None,
        };
        let config_path = private.config_path();
        let version = private.binary.config_version();
        let extra = &private.config.extra_config;
        let toml = match &private.config.source {
            ConfigSource::Generated => Some(config_toml(private.dir(), version, extra)),
            ConfigSource::Cri(cri) => Some(cri_config_toml(private.dir(), version, cri, extra)),
            ConfigSource::Existing => None,
        };
        match toml {
            Some(toml) => fs::write(&config_path, toml).map_err(PrivateError::io(format!(
                "writing {}",
                config_path.display()
            )))?,
            None if config_path.is_file() => {}
            None => {
                return Err(PrivateError::io(format!(
                    "reading {} (the caller's config for this instance: write it first)",
                    config_path.display()
                ))(io::Error::from(io::ErrorKind::NotFound)))
            }
        }
        private.spawn()?;
        Ok(private)
    }

    /// The binary this instance runs, with its version.
    pub fn binary(&self) -> &ContainerdBinary {
        &self.binary
    }

    /// What it was started with.
    pub fn config(&self) -> &PrivateConfig {
        &self.config
    }

    /// The instance's directory (config, root, state, sockets, log).
    pub fn dir(&self) -> &Path {
        &self.config.dir
    }

    /// containerd's gRPC socket (what shims get as `-address`).
    pub fn address(&self) -> PathBuf {
        address(self.dir())
    }

    /// containerd's ttrpc socket (what shims get as `TTRPC_ADDRESS`).
    pub fn ttrpc_address(&self) -> PathBuf {
        ttrpc_address(self.dir())
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir().join("config.toml")
    }

    /// containerd's `state` dir; bundles are at `<state>/io.containerd.runtime.v2.task/<ns>/<id>/`.
    pub fn state_dir(&self) -> PathBuf {
        state_dir(self.dir())
    }

    pub fn root_dir(&self) -> PathBuf {
        root_dir(self.dir())
    }

    /// containerd's combined stdout/stderr (appended across restarts).
    pub fn log_path(&self) -> PathBuf {
        self.dir().join("containerd.log")
    }

    /// The whole containerd log so far (empty if unreadable).
    pub fn log(&self) -> String {
        fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// containerd's pid while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether containerd was started and not stopped since.
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Stops containerd: SIGTERM by pid, then SIGKILL after the stop timeout. Shims keep running
    /// (except that containers in [`PrivateConfig::remove_containers_in`] are removed first).
    pub fn stop(&mut self) -> Result<(), PrivateError> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        #[cfg(feature = "client")]
        if !self.config.remove_containers_in.is_empty() {
            crate::client::remove_driven_containers(
                &self.address(),
                &self.config.remove_containers_in,
            );
        }
        terminate(&mut child, self.config.stop_timeout, POLL_INTERVAL)
            .map_err(PrivateError::io("stopping containerd"))
    }

    /// Starts containerd again with the same config and environment, if it is stopped; returns once
    /// it answers.
    pub fn start_again(&mut self) -> Result<(), PrivateError> {
        if self.child.is_none() {
            self.spawn()?;
        }
        Ok(())
    }

    /// Stops containerd and starts it again with the same config; returns once it answers. Shims
    /// survive this and containerd reconnects to them.
    pub fn restart(&mut self) -> Result<(), PrivateError> {
        self.stop()?;
        self.spawn()
    }

    fn spawn(&mut self) -> Result<(), PrivateError> {
        let log_path = self.log_path();
        let mut command = Command::new(self.binary.path());
        command
            .arg("--config")
            .arg(self.config_path())
            .env("PATH", &self.path)
            .envs(self.config.env.iter().map(|(k, v)| (k, v)));
        if let Some(level) = &self.config.log_level {
            command.arg("--log-level").arg(level);
        }
        let mut child = spawn_logged(command, &log_path).map_err(|e| match e {
            SpawnError::Log(e) => PrivateError::io(format!("opening {}", log_path.display()))(e),
            SpawnError::Start(e) => {
                PrivateError::io(format!("starting {}", self.binary.path().display()))(e)
            }
        })?;
        let address = self.address();
        // containerd listens on its gRPC socket only once every plugin is loaded and its ttrpc
        // socket is up, so a connection means it serves.
        let startup = await_ready(&mut child, self.config.ready_timeout, POLL_INTERVAL, || {
            UnixStream::connect(&address).is_ok()
        });
        let log_end = || last_lines(&self.log(), 3).join(" | ");
        match startup {
            Startup::Ready => {
                self.child = Some(child);
                Ok(())
            }
            Startup::Exited(status) => Err(PrivateError::ExitedEarly {
                version: self.binary.version.clone(),
                status,
                log: log_path,
                last_lines: log_end(),
            }),
            // Left running, as it is: `stop` (or Drop) ends it.
            Startup::TimedOut => {
                let error = PrivateError::NotReady {
                    version: self.binary.version.clone(),
                    address,
                    timeout: self.config.ready_timeout,
                    log: log_path,
                    last_lines: log_end(),
                };
                self.child = Some(child);
                Err(error)
            }
        }
    }
}

impl Drop for PrivateContainerd {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

/// Where `scripts/install-containerd-matrix.sh` unpacks containerd versions
/// (`<prefix>/<version>/usr/bin/containerd`).
pub const UNPACKED_PREFIX: &str = "/opt/shimtrace/containerd";

/// The newest containerd unpacked under `prefix` (see [`UNPACKED_PREFIX`]): its `containerd`
/// binary, by the version its directory is named after.
pub fn newest_unpacked(prefix: &Path) -> Option<PathBuf> {
    crate::daemon::newest_unpacked(prefix, "usr/bin/containerd")
}

/// The `ctr` that belongs to a containerd binary: the one beside it, else `ctr` on `PATH`.
pub fn ctr_beside(containerd: &Path) -> PathBuf {
    containerd
        .parent()
        .map(|dir| dir.join("ctr"))
        .filter(|ctr| ctr.is_file())
        .unwrap_or_else(|| PathBuf::from("ctr"))
}

/// Why a CRI-enabled private containerd could not be made ready for pods.
#[cfg(feature = "cri")]
#[derive(Debug, thiserror::Error)]
pub enum CriSetupError {
    #[error(transparent)]
    Image(#[from] crate::image::ImageError),
    #[error(transparent)]
    Import(Box<crate::image::ImportError>),
    #[error(transparent)]
    Cri(Box<crate::cri::CriError>),
    #[error("{what} within {waited:?} (see containerd's log)")]
    Timeout { what: String, waited: Duration },
}

#[cfg(feature = "cri")]
impl From<crate::cri::CriError> for CriSetupError {
    fn from(error: crate::cri::CriError) -> Self {
        CriSetupError::Cri(Box::new(error))
    }
}

/// Waits until CRI answers ListPodSandbox: after a (re)start it refuses calls until it has loaded
/// its state. The last error after `waited`.
#[cfg(feature = "cri")]
pub async fn await_cri_ready(cri: &crate::cri::Cri, waited: Duration) -> Result<(), CriSetupError> {
    let deadline = Instant::now() + waited;
    loop {
        match cri.list_pods().await {
            Ok(_) => return Ok(()),
            Err(e) if Instant::now() > deadline => {
                return Err(CriSetupError::Timeout {
                    what: format!("CRI answering (last: {e})"),
                    waited,
                })
            }
            Err(_) => tokio::time::sleep(POLL_INTERVAL).await,
        }
    }
}

/// Makes `rootfs` the image `tag` in CRI's namespace of the containerd at `address`: writes it as
/// a docker-archive in `work_dir` (default command `command`), imports it with `ctr`, and waits
/// until CRI lists it (CRI learns of imports from containerd's events). Returns the reference pods
/// name it by (`local/busybox:1` → `docker.io/local/busybox:1`).
#[cfg(feature = "cri")]
pub async fn import_cri_image(
    cri: &crate::cri::Cri,
    ctr: &Path,
    address: &Path,
    rootfs: &Path,
    tag: &str,
    command: &[&str],
    work_dir: &Path,
) -> Result<String, CriSetupError> {
    use crate::image::{containerd_reference, import_with_ctr, write_docker_archive};
    let archive = work_dir.join(format!("{}.tar", tag.replace(['/', ':'], "_")));
    write_docker_archive(rootfs, tag, command, &archive)?;
    let imported = import_with_ctr(ctr, address, crate::image::CRI_NAMESPACE, &archive);
    let _ = fs::remove_file(&archive);
    imported.map_err(|e| CriSetupError::Import(Box::new(e)))?;
    let reference = containerd_reference(tag);
    let waited = Duration::from_secs(20);
    let deadline = Instant::now() + waited;
    while !cri.has_image(&reference).await? {
        if Instant::now() > deadline {
            return Err(CriSetupError::Timeout {
                what: format!("CRI listing the imported image {reference}"),
                waited,
            });
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
    Ok(reference)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_read_from_every_packaging() {
        let cases = [
            (
                "containerd github.com/containerd/containerd 1.6.20~ds1 1.6.20~ds1-1+deb12u3\n",
                "1.6.20",
            ),
            (
                "containerd github.com/containerd/containerd 1.7.24~ds1 1.7.24~ds1-6+deb13u1\n",
                "1.7.24",
            ),
            (
                "containerd github.com/containerd/containerd/v2 2.1.9+unknown \n",
                "2.1.9",
            ),
            (
                "containerd containerd.io v2.0.4 1a43cb6a1035441f9aca8f5666a9b3ef9e70ab20\n",
                "2.0.4",
            ),
        ];
        for (output, version) in cases {
            assert_eq!(parse_version(output), Some(version), "{output}");
        }
        assert_eq!(parse_version("containerd: command not found"), None);
        assert_eq!(parse_version(""), None);
    }

    #[test]
    fn a_version_is_x_y_or_x_y_z_with_an_optional_v() {
        for (given, number) in [
            ("2.1.9", "2.1.9"),
            ("v2.1.9", "2.1.9"),
            ("1.7", "1.7"),
            ("1.6.20~ds1", "1.6.20"),
            ("2.1.9+unknown", "2.1.9"),
            ("2.0.0-rc.1", "2.0.0"),
        ] {
            assert_eq!(version_number(given), Some(number), "{given}");
        }
        for bad in [
            "banana",
            "",
            "v",
            "2",
            "v2",
            "vv2.1.9",
            "2.1.9.1",
            "2..9",
            "2.1.x",
            "+2.1",
            "0.9",
            "2.1.99999999999",
            "V2.1.9",
            " 2.1.9",
        ] {
            assert_eq!(version_number(bad), None, "{bad}");
        }
    }

    #[test]
    fn config_version_follows_the_major() {
        assert_eq!(config_version_for_major(major_of("1.6.20")), 2);
        assert_eq!(config_version_for_major(major_of("1.7.24")), 2);
        assert_eq!(config_version_for_major(major_of("2.1.9")), 3);
    }

    #[test]
    fn private_config_disables_cri_for_both_versions() {
        let v2 = config_toml(Path::new("/d"), 2, "");
        assert!(v2.starts_with("version = 2\n"));
        assert!(v2.contains(r#"address = "/d/c.sock""#), "{v2}");
        assert!(!v2.contains("io.containerd.cri.v1.runtime"));
        let v3 = config_toml(Path::new("/d"), 3, "[debug]\n  level = \"debug\"");
        assert!(v3.contains("io.containerd.cri.v1.runtime"));
        let parsed: toml::Value = toml::from_str(&v3).unwrap();
        assert_eq!(parsed["ttrpc"]["address"].as_str(), Some("/d/c.sock.ttrpc"));
        assert_eq!(parsed["root"].as_str(), Some("/d/root"));
        assert_eq!(parsed["state"].as_str(), Some("/d/state"));
        assert_eq!(parsed["debug"]["level"].as_str(), Some("debug"));
    }

    fn cri() -> CriSettings {
        CriSettings {
            sandbox_image: "docker.io/local/sandbox:1".into(),
        }
    }

    #[test]
    fn cri_config_enables_cri_with_a_local_sandbox_per_schema() {
        let v2: toml::Value =
            toml::from_str(&cri_config_toml(Path::new("/d"), 2, &cri(), "")).unwrap();
        assert!(v2.get("disabled_plugins").is_none());
        let plugin = &v2["plugins"]["io.containerd.grpc.v1.cri"];
        assert_eq!(
            plugin["sandbox_image"].as_str(),
            Some("docker.io/local/sandbox:1")
        );
        assert_eq!(plugin["restrict_oom_score_adj"].as_bool(), Some(true));
        assert_eq!(plugin["cni"]["conf_dir"].as_str(), Some("/d/cni"));
        assert_eq!(v2["grpc"]["address"].as_str(), Some("/d/c.sock"));

        let v3: toml::Value =
            toml::from_str(&cri_config_toml(Path::new("/d"), 3, &cri(), "")).unwrap();
        let plugins = &v3["plugins"];
        assert_eq!(
            plugins["io.containerd.cri.v1.images"]["pinned_images"]["sandbox"].as_str(),
            Some("docker.io/local/sandbox:1")
        );
        let runtime = &plugins["io.containerd.cri.v1.runtime"];
        assert_eq!(runtime["restrict_oom_score_adj"].as_bool(), Some(true));
        assert_eq!(runtime["cni"]["conf_dir"].as_str(), Some("/d/cni"));
        assert_eq!(
            plugins["io.containerd.nri.v1.nri"]["socket_path"].as_str(),
            Some("/d/nri.sock")
        );
    }

    #[test]
    fn an_existing_config_is_made_private_and_keeps_the_rest() {
        // Debian bookworm's /etc/containerd/config.toml, plus a disabled CRI and a comment.
        let stock = "# node settings\nversion = 2\ndisabled_plugins = [\"io.containerd.grpc.v1.cri\", \"x\"]\n\n[plugins]\n  [plugins.\"io.containerd.grpc.v1.cri\"]\n    [plugins.\"io.containerd.grpc.v1.cri\".cni]\n      bin_dir = \"/usr/lib/cni\"\n      conf_dir = \"/etc/cni/net.d\"\n  [plugins.\"io.containerd.internal.v1.opt\"]\n    path = \"/var/lib/containerd/opt\"\n";
        let private = make_private(stock, Path::new("/d"), 3, Some(&cri())).unwrap();
        assert!(private.starts_with("# node settings\n"), "{private}");
        let parsed: toml::Value = toml::from_str(&private).unwrap();
        assert_eq!(
            parsed["version"].as_integer(),
            Some(2),
            "the file's schema wins"
        );
        assert_eq!(parsed["disabled_plugins"].as_array().unwrap().len(), 1);
        assert_eq!(parsed["root"].as_str(), Some("/d/root"));
        assert_eq!(parsed["state"].as_str(), Some("/d/state"));
        assert_eq!(parsed["ttrpc"]["address"].as_str(), Some("/d/c.sock.ttrpc"));
        let plugin = &parsed["plugins"]["io.containerd.grpc.v1.cri"];
        assert_eq!(plugin["cni"]["bin_dir"].as_str(), Some("/usr/lib/cni"));
        assert_eq!(plugin["cni"]["conf_dir"].as_str(), Some("/d/cni"));
        assert_eq!(
            plugin["sandbox_image"].as_str(),
            Some("docker.io/local/sandbox:1")
        );
        assert_eq!(
            parsed["plugins"]["io.containerd.internal.v1.opt"]["path"].as_str(),
            Some("/d/opt")
        );
        assert!(make_private("version = = 2", Path::new("/d"), 2, None).is_err());
    }

    #[test]
    fn ctr_is_the_one_beside_containerd_else_on_path() {
        let dir = tempfile::tempdir().unwrap();
        let containerd = dir.path().join("containerd");
        assert_eq!(ctr_beside(&containerd), PathBuf::from("ctr"));
        fs::write(dir.path().join("ctr"), "").unwrap();
        assert_eq!(ctr_beside(&containerd), dir.path().join("ctr"));
    }

    #[test]
    fn versions_compare_as_numbers() {
        assert_eq!(version_triple("1.6.20"), (1, 6, 20));
        assert_eq!(version_triple("2.1"), (2, 1, 0));
        assert!(version_triple("1.7.1") > version_triple("1.6.38"));
        assert_eq!(version_triple("x"), (0, 0, 0));
    }

    #[test]
    fn an_existing_source_needs_the_file() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        // A stand-in containerd: it tells its version, and leaves a mark if it is ever started.
        let bin = tempfile::tempdir().unwrap();
        let binary = bin.path().join("containerd");
        let started = bin.path().join("started");
        fs::write(
            &binary,
            format!(
                "#!/bin/sh\n[ \"$1\" = --version ] && {{ echo 'containerd github.com/containerd/containerd v1.7.24 abc'; exit 0; }}\ntouch {}\nexit 1\n",
                started.display()
            ),
        )
        .unwrap();
        fs::set_permissions(&binary, fs::Permissions::from_mode(0o755)).unwrap();
        let mut config = PrivateConfig::new(dir.path().join("instance"));
        config.binary = binary;
        config.source = ConfigSource::Existing;
        let err = PrivateContainerd::start(config).unwrap_err();
        assert!(err.to_string().contains("write it first"), "{err}");
        assert!(
            !started.exists(),
            "containerd was started without its config"
        );
    }

    #[test]
    fn a_missing_binary_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = PrivateConfig::new(dir.path());
        config.binary = "/nonexistent/containerd".into();
        let err = PrivateContainerd::start(config).unwrap_err();
        assert!(matches!(err, PrivateError::NotFound(_)), "{err}");
        assert!(!err.to_string().contains('\n'));
        let mut config = PrivateConfig::new(dir.path());
        config.binary = "shimtrace-no-such-containerd".into();
        assert!(matches!(
            PrivateContainerd::start(config),
            Err(PrivateError::NotFound(_))
        ));
    }

    #[test]
    fn an_inline_table_on_the_path_keeps_its_content() {
        let mut doc: toml_edit::DocumentMut =
            "[a]\nb = { runc = { runtime_type = \"x\" }, kept = 1 }\n"
                .parse()
                .unwrap();
        try_table_at(doc.as_table_mut(), &["a", "b", "new"])
            .unwrap()
            .insert("k", toml_edit::value(2));
        let parsed: toml::Value = toml::from_str(&doc.to_string()).unwrap();
        assert_eq!(parsed["a"]["b"]["runc"]["runtime_type"].as_str(), Some("x"));
        assert_eq!(parsed["a"]["b"]["kept"].as_integer(), Some(1));
        assert_eq!(parsed["a"]["b"]["new"]["k"].as_integer(), Some(2));
        // The infallible form converts the same way.
        let mut doc: toml_edit::DocumentMut = "a = { b = 1 }\n".parse().unwrap();
        table_at(doc.as_table_mut(), &["a"]).insert("c", toml_edit::value(3));
        let parsed: toml::Value = toml::from_str(&doc.to_string()).unwrap();
        assert_eq!(parsed["a"]["b"].as_integer(), Some(1));
        assert_eq!(parsed["a"]["c"].as_integer(), Some(3));
    }

    #[test]
    fn anything_else_on_the_path_is_named_and_left_alone() {
        let text = "[plugins.\"io.containerd.grpc.v1.cri\".containerd]\nruntimes = \"runc\"\n";
        let mut doc: toml_edit::DocumentMut = text.parse().unwrap();
        let err = try_table_at(
            doc.as_table_mut(),
            &[
                "plugins",
                "io.containerd.grpc.v1.cri",
                "containerd",
                "runtimes",
                "x",
            ],
        )
        .unwrap_err();
        assert_eq!(
            err,
            NotATable {
                key: "plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes".into(),
                found: "string",
            }
        );
        assert_eq!(doc.to_string(), text);
        let mut doc: toml_edit::DocumentMut = "a = [1]\n".parse().unwrap();
        let err = try_table_at(doc.as_table_mut(), &["a"]).unwrap_err();
        assert_eq!(err.to_string(), "`a` is a TOML array, not a table");
    }
}
