//! `shimtrace install`: registers the wrapper shim for the runtimes present, in the form the
//! installed containerd honours, and removes exactly that again (`--uninstall`).
//!
//! It symlinks `containerd-shim-traced-<inner>-<ver>` to the wrapper for each real shim on `PATH`
//! and prints (or with `--write` merges into containerd's config, after a timestamped backup) one
//! CRI runtime entry per traced handler, plus a Kubernetes RuntimeClass for each. Two forms exist:
//!
//! - **path form** (containerd ≥ 1.7.1): `runtime_type` = the real runtime, `runtime_path` = the
//!   wrapper link. containerd sends the real runtime's options (runc's `SystemdCgroup`,
//!   `BinaryName` for gVisor through the runc shim) exactly as for the real runtime.
//! - **name form** (containerd 1.6.x and 1.7.0, whose CRI sets `runtime_path` where `NewTask`
//!   never reads it): `runtime_type = "io.containerd.traced-runc.v2"`, which containerd resolves
//!   to `containerd-shim-traced-runc-v2` on its own `PATH`. CRI then sends options only in its
//!   generic form, which the runc shim cannot read: runc's options cannot be passed. gVisor
//!   through the runc shim is registered as its own runtime name instead,
//!   `io.containerd.traced-runsc.v2` (a `containerd-shim-traced-runsc-v2` link): an entry in the
//!   wrapper's config (`--wrapper-config`, what containerd's `SHIMTRACE_CONFIG` names) maps it to
//!   the runc shim with `oci_runtime` = runsc, which the wrapper makes the runc shim's `runc`.
//!   gVisor's own shim, `containerd-shim-runsc-v1`, takes generic options and is wrapped like any
//!   other, in preference to that.
//!
//! A config whose CRI plugin defines runtimes must also define the default one (`runc`), or
//! containerd 1.6 refuses to load CRI; when it is missing, install adds it. For containerd 2.2
//! and later, whose default config imports `/etc/containerd/conf.d/*.toml`, the entries go into a
//! drop-in of their own (`conf.d/shimtrace.toml` beside the config), with the real runtime's
//! settings taken from the main file, which changes at most by one `imports` entry, and by losing
//! the traced tables an install for an older containerd added to it (still marked as install's):
//! an install after an upgrade to 2.2 moves them to the drop-in, so that containerd does not read
//! install's handlers from both files. The `runc` entry such an install added stays, with
//! whatever options the admin gave it: the drop-in's handlers take theirs from it. Every table
//! install adds (to containerd's config or the wrapper's) carries a marker comment, and a state
//! file beside the config (`shimtrace-install.json`), written before anything else changes, lists
//! what was added, so `--uninstall` removes exactly that, whatever else was edited meanwhile,
//! from both files whichever form the last install wrote (in the file the state does not name,
//! only listed tables that still carry the marker: never one written by hand).

use std::collections::BTreeSet;
use std::ffi::{OsStr, OsString};
use std::fmt::Write as _;
use std::fs;
use std::io;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use toml_edit::{value, Array, DocumentMut, Item, Table, TableLike, Value};

use shimtrace_span::naming::{
    find_in_path, traced_handler, traced_runtime_of, which, ShimName, WRAPPER_BINARY,
};

use crate::files::{io_err, replace_file, FileError};
use crate::private::{
    config_version_for_major, table_at, try_table_at, version_number, version_triple,
    ContainerdBinary, NotATable,
};

/// The comment above every table install adds.
pub const MARKER: &str =
    "# Added by `shimtrace install`; `shimtrace install --uninstall` removes it.";
/// The state file install keeps beside containerd's config.
pub const STATE_FILE: &str = "shimtrace-install.json";
/// The drop-in install writes for containerd 2.2 and later, under `conf.d/` beside the config.
pub const DROP_IN_FILE: &str = "shimtrace.toml";
/// The first containerd whose CRI honours `runtime_path` (containerd PR 8453).
pub const RUNTIME_PATH_SINCE: (u32, u32, u32) = (1, 7, 1);
/// The first containerd whose default config imports `/etc/containerd/conf.d/*.toml`.
pub const DROP_IN_SINCE: (u32, u32, u32) = (2, 2, 0);
/// The real runtime that CRI sends typed runc options to.
pub const RUNC_RUNTIME: &str = "io.containerd.runc.v2";
/// The wrapper's config file unless `SHIMTRACE_CONFIG` names another
/// ([`shimtrace_span::env::DEFAULT_CONFIG`]).
pub const DEFAULT_WRAPPER_CONFIG: &str = shimtrace_span::env::DEFAULT_CONFIG;

/// How the wrapper is put in front of a real runtime in CRI's config.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Form {
    /// `runtime_type = "io.containerd.traced-<inner>.<ver>"`: containerd finds the wrapper link
    /// by name on its `PATH`; works on every containerd, but runc's options cannot be passed.
    Name,
    /// `runtime_type` = the real runtime, `runtime_path` = the wrapper link: options pass as for
    /// the real runtime; containerd ≥ 1.7.1 only (older ones silently run the real shim).
    Path,
}

impl Form {
    /// The form a containerd version honours: path from 1.7.1 on, name before.
    pub fn for_version(version: &str) -> Form {
        if version_triple(version) >= RUNTIME_PATH_SINCE {
            Form::Path
        } else {
            Form::Name
        }
    }

    pub fn describe(self) -> &'static str {
        match self {
            Form::Name => "runtime-name form",
            Form::Path => "runtime_path form",
        }
    }
}

/// `shimtrace install` options.
#[derive(Debug, Clone, clap::Args)]
pub struct InstallArgs {
    /// The wrapper binary (default: containerd-shim-traced-v2 beside shimtrace, else on PATH).
    #[arg(long)]
    pub wrapper: Option<PathBuf>,
    /// Where to create the containerd-shim-traced-* symlinks (default: the wrapper's directory).
    /// In the runtime-name form containerd must find them on its PATH.
    #[arg(long)]
    pub bin_dir: Option<PathBuf>,
    /// containerd's config file to merge into with --write (and to remove from with --uninstall).
    #[arg(long, default_value = "/etc/containerd/config.toml")]
    pub config: PathBuf,
    /// Merge the runtime entries into --config (a timestamped backup is written first); for
    /// containerd 2.2+ write a drop-in under conf.d/ beside it instead (replaced while it is as
    /// install wrote it; once edited, merged into, a copy kept first), moving there the entries an
    /// install for an older containerd wrote into --config.
    #[arg(long, conflicts_with_all = ["uninstall", "check"])]
    pub write: bool,
    /// Remove exactly what earlier `--write` runs added: the entries in --config and the drop-in
    /// alike (with any edit inside them), the imports entry, the drop-in (whole while it is as
    /// written, else only install's tables), the links still pointing at the wrapper; with
    /// --docker: daemon.json entries, links and scripts, each only while it is still as written.
    #[arg(long, conflicts_with = "check")]
    pub uninstall: bool,
    /// Run a short-lived pod through every traced-* handler of the running containerd (--socket)
    /// and report, per handler, whether its spans reach the spool and why not (with --docker: a
    /// container through every traced runtime of the running dockerd, found as the docker CLI
    /// finds it).
    #[arg(long)]
    pub check: bool,
    /// How to register: `path` (runtime_path; containerd >= 1.7.1) or `name` (runtime_type names
    /// the wrapper; every version) [default: by containerd's version].
    #[arg(long, value_enum)]
    pub form: Option<Form>,
    /// The OCI runtime binary of the gVisor handler `traced-runsc` (the runc shim's `BinaryName`
    /// in the path form, `oci_runtime` in --wrapper-config in the name form; with --docker, the
    /// runsc of `traced-runsc`, default the path of a `runsc` runtime in daemon.json): a path
    /// (written absolute), or a name looked up in --shim-path [default: runsc in --shim-path,
    /// else on PATH].
    #[arg(long, value_name = "PATH")]
    pub runsc: Option<PathBuf>,
    /// The wrapper's config file, as containerd's environment names it (SHIMTRACE_CONFIG): with
    /// --write, the entry of the runtime-name form's gVisor handler (traced-runsc) goes there.
    #[arg(long, value_name = "PATH", default_value = DEFAULT_WRAPPER_CONFIG)]
    pub wrapper_config: PathBuf,
    /// Config schema: 2 for containerd 1.x, 3 for 2.x (default: from the containerd version); a
    /// drop-in for containerd 2.2+ takes the main config's.
    #[arg(long, value_parser = clap::value_parser!(u32).range(2..=3))]
    pub config_version: Option<u32>,
    /// The containerd binary whose version picks the form and the schema.
    #[arg(long, default_value = "containerd")]
    pub containerd: PathBuf,
    /// The containerd version to write for, instead of asking --containerd (e.g. from an
    /// installer container that cannot run the node's containerd): X.Y.Z or X.Y, a leading `v`
    /// allowed (`containerd --version` prints v2.1.9 or 1.6.20~ds1; either is taken as it is).
    #[arg(long, value_name = "X.Y.Z", value_parser = parse_containerd_version)]
    pub containerd_version: Option<String>,
    /// Where to look for real shims (a PATH-style list) [default: $PATH].
    #[arg(long, value_name = "DIRS")]
    pub shim_path: Option<OsString>,
    /// containerd's socket (--check).
    #[arg(long, default_value = "/run/containerd/containerd.sock")]
    pub socket: PathBuf,
    /// The spool the wrapper writes under containerd or dockerd (--check) [default:
    /// $SHIMTRACE_SPOOL_DIR, else /var/lib/shimtrace/spool].
    #[arg(long, value_name = "DIR")]
    pub spool: Option<PathBuf>,
    /// The ctr binary --check uses to import its test image when containerd lacks it.
    #[arg(long, default_value = "ctr")]
    pub ctr: PathBuf,
}

/// What can go wrong installing.
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error("wrapper binary {WRAPPER_BINARY} not found beside shimtrace or on PATH: build it (cargo build -p shimtrace-shim) or pass --wrapper")]
    NoWrapper,
    #[error("wrapper {0} does not exist (check --wrapper)")]
    WrapperMissing(PathBuf),
    #[error("no containerd shims (containerd-shim-<name>-<version>) found {}", no_shims_advice(.shim_path.as_deref()))]
    NoShims {
        /// The `--shim-path` list searched; `None` when it was `PATH`.
        shim_path: Option<String>,
    },
    #[error("--containerd-version {given:?} is not a containerd version: expected X.Y.Z (or X.Y), as `containerd --version` prints it, e.g. 2.1.9 or v2.1.9")]
    BadContainerdVersion { given: String },
    #[error("--runsc {path}: {}", runsc_problem(.path))]
    NoRunsc { path: PathBuf },
    #[error("cannot create the containerd-shim-traced-* links in {dir}: it does not exist (create it or pick another --bin-dir)")]
    NoBinDir { dir: PathBuf },
    #[error("{path} exists and is not a symlink; refusing to replace it (move it away or pick --bin-dir)")]
    NotSymlink { path: PathBuf },
    #[error("{path} is not valid TOML: {message} (fix it, or merge the printed snippet by hand)")]
    BadConfig { path: PathBuf, message: String },
    #[error("{path} uses config version {found}; install writes version {expected} for this containerd ({})", version_advice(.path, *.found, *.expected))]
    ConfigVersion {
        path: PathBuf,
        found: i64,
        expected: u32,
    },
    #[error("{path}: {key} is a TOML {found}, where install adds tables under it: make it a table (or remove it), or merge the printed snippet by hand")]
    NotATable {
        path: PathBuf,
        key: String,
        found: &'static str,
    },
    #[error("cannot read {path}: {source} ({what_to_do})")]
    Unreadable {
        path: PathBuf,
        #[source]
        source: io::Error,
        what_to_do: &'static str,
    },
    #[error("{path}: {message} (fix it by hand or run `shimtrace install --write` again)")]
    BadState { path: PathBuf, message: String },
    #[error("nothing to uninstall: {path} does not exist (no `shimtrace install --write` was run for {config})")]
    NoState { path: PathBuf, config: PathBuf },
    #[error("{drop_in} uses config version {found} and {config} version {main}: containerd merges the files before it migrates them, so it would misread one of them; the drop-in is not as install wrote it (or not install's): move what you keep of it into {config} (or a drop-in of version {main}) and remove it, then run install again")]
    DropInVersion {
        drop_in: PathBuf,
        found: i64,
        config: PathBuf,
        main: u32,
    },
    #[error(transparent)]
    Io(#[from] FileError),
}

/// Where the shims were looked for and what to do.
fn no_shims_advice(shim_path: Option<&str>) -> String {
    match shim_path {
        Some(list) => format!(
            "in --shim-path {list:?}: name the directories that hold them (e.g. --shim-path /usr/bin), or leave --shim-path out to search PATH"
        ),
        None => "on PATH: install containerd's runc shim (apt-get install containerd), or name the directories that hold the shims with --shim-path".into(),
    }
}

impl InstallError {
    /// No real shim in `shim_path` (the `--shim-path` list given), or in `PATH` without one.
    pub(crate) fn no_shims(shim_path: Option<&OsStr>) -> InstallError {
        InstallError::NoShims {
            shim_path: shim_path.map(|list| list.to_string_lossy().into_owned()),
        }
    }
}

/// Why a `--runsc` path cannot be gVisor's binary, and what to do.
fn runsc_problem(path: &Path) -> &'static str {
    if is_a_name(path) {
        "not found in the --shim-path list (else PATH): pass the path of gVisor's runsc (an executable file), or leave --runsc out to use the runsc found there"
    } else if fs::metadata(path).is_err() {
        "no such file: pass the path of gVisor's runsc (an executable file), or leave --runsc out to use the runsc in --shim-path (else PATH)"
    } else {
        "not an executable file: pass the path of gVisor's runsc binary (chmod +x it if that is the one), or leave --runsc out to use the runsc in --shim-path (else PATH)"
    }
}

/// Whether `path` is a bare name (`runsc`), which is looked up as a shell would.
fn is_a_name(path: &Path) -> bool {
    !path.as_os_str().is_empty() && !path.as_os_str().as_encoded_bytes().contains(&b'/')
}

/// The runsc that `--runsc` names, as install writes it: a bare name looked up in `path_var` (a
/// `PATH`-style list), and the path made absolute (the shim runs it from a directory of its
/// own); refused unless it is an executable file.
pub fn resolve_runsc(given: &Path, path_var: &OsStr) -> Result<PathBuf, InstallError> {
    let found = if is_a_name(given) {
        shimtrace_span::naming::find_in_path(&given.to_string_lossy(), path_var)
    } else {
        Some(given.to_path_buf())
    };
    found
        .and_then(|p| std::path::absolute(p).ok())
        .filter(|p| shimtrace_span::naming::is_executable_file(p))
        .ok_or_else(|| InstallError::NoRunsc {
            path: given.to_path_buf(),
        })
}

/// `--containerd-version`'s value as install writes for it (`v2.1.9` → "2.1.9"), or what was
/// expected instead.
pub fn parse_containerd_version(given: &str) -> Result<String, InstallError> {
    version_number(given)
        .map(str::to_string)
        .ok_or_else(|| InstallError::BadContainerdVersion {
            given: given.to_string(),
        })
}

/// What to do about a config in schema `found` where install writes `expected` (2 for containerd
/// 1.x, 3 for 2.x).
fn version_advice(path: &Path, found: i64, expected: u32) -> String {
    if found > 3 {
        "no containerd reads that version: fix `version` at its top".into()
    } else if found > i64::from(expected) {
        "containerd 1.x reads only versions 1 and 2: if a containerd 2.x reads this file, say so with --containerd (its binary), --containerd-version or --config-version 3".into()
    } else if expected >= 3 {
        format!(
            "run `containerd --config {} config migrate > new.toml`, check new.toml and put it in its place first; if `shimtrace install` wrote a drop-in beside it, run `shimtrace install --uninstall` before that (migrate copies imported files into its output) and install again after",
            path.display()
        )
    } else {
        "containerd 1.x has no `config migrate`: add `version = 2` at the top and name each plugin by its full id (`[plugins.cri]` becomes `[plugins.\"io.containerd.grpc.v1.cri\"]`; `containerd config default` shows the layout), or merge the printed snippet by hand".into()
    }
}

/// The list real shims (and runsc) are looked up in: `--shim-path`, else `PATH`.
pub(crate) fn search_path(shim_path: Option<&OsStr>) -> OsString {
    shim_path
        .map(OsStr::to_os_string)
        .or_else(|| std::env::var_os("PATH"))
        .unwrap_or_default()
}

/// A real shim found on PATH, e.g. `containerd-shim-runc-v2` → inner `runc`, version `v2`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RealShim {
    pub name: ShimName,
    pub path: PathBuf,
}

impl RealShim {
    /// The CRI handler / RuntimeClass name: `traced-runc` for the newest version of a shim,
    /// `traced-runc-v1` for older ones found beside it.
    pub fn handler(&self, all: &[RealShim]) -> String {
        let newest = all
            .iter()
            .filter(|s| s.name.inner == self.name.inner)
            .map(|s| s.name.version_number())
            .max()
            .unwrap_or(0);
        if self.name.version_number() >= newest {
            traced_handler(&self.name.inner)
        } else {
            traced_handler(&format!("{}-{}", self.name.inner, self.name.version))
        }
    }
}

/// The real shims on PATH, first occurrence of each name wins (as containerd's lookup does).
pub fn find_real_shims(path_var: &std::ffi::OsStr) -> Vec<RealShim> {
    let mut shims: Vec<RealShim> = Vec::new();
    for dir in std::env::split_paths(path_var) {
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        let mut names: Vec<String> = entries
            .filter_map(Result::ok)
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        for binary in names {
            let Some(name) = ShimName::parse_binary(&binary) else {
                continue;
            };
            if shims.iter().any(|s| s.name == name) {
                continue;
            }
            // The executable containerd would run for this name: the first on PATH.
            if let Some(path) = find_in_path(&binary, path_var) {
                shims.push(RealShim { name, path });
            }
        }
    }
    shims
}

/// One CRI runtime entry to register.
#[derive(Debug, Clone, PartialEq)]
pub struct TracedRuntime {
    pub handler: String,
    /// The entry's `runtime_type`: the real runtime (path form) or the traced one (name form).
    pub runtime_type: String,
    /// The wrapper link (path form); none in the name form.
    pub runtime_path: Option<PathBuf>,
    /// The real runtime this handler stands for (`io.containerd.runc.v2`): its entry's settings
    /// are carried over.
    pub real_runtime: String,
    /// Whether the real runtime's `options` are carried over; false for runc in the name form,
    /// where CRI would send them in a form the runc shim cannot read.
    pub carry_options: bool,
    /// `BinaryName` for the runc shim (gVisor through runc), when set.
    pub binary_name: Option<String>,
    /// The entry the wrapper's config needs for this handler (gVisor through the runc shim in
    /// the name form), with the link containerd runs for it.
    pub wrapper_entry: Option<WrapperEntry>,
}

/// A runtime's entry in the wrapper's config (`[runtimes."<runtime>"]`), for a handler whose
/// runtime name names no real shim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WrapperEntry {
    /// The traced runtime name (`io.containerd.traced-runsc.v2`).
    pub runtime: String,
    /// The link containerd finds by that name (`containerd-shim-traced-runsc-v2`).
    pub link: PathBuf,
    /// The real shim it runs (`inner`).
    pub inner: PathBuf,
    /// The OCI runtime that shim runs as `runc` (`oci_runtime`).
    pub oci_runtime: PathBuf,
}

impl TracedRuntime {
    /// The entry for a real shim in `form`, with the wrapper link `link`.
    pub fn for_shim(handler: String, shim: &ShimName, link: &Path, form: Form) -> TracedRuntime {
        let real_runtime = shim.runtime();
        match form {
            Form::Path => TracedRuntime {
                handler,
                runtime_type: real_runtime.clone(),
                runtime_path: Some(link.to_path_buf()),
                real_runtime,
                carry_options: true,
                binary_name: None,
                wrapper_entry: None,
            },
            Form::Name => TracedRuntime {
                handler,
                runtime_type: shim.traced_runtime(),
                runtime_path: None,
                carry_options: !is_runc_type(&real_runtime),
                real_runtime,
                binary_name: None,
                wrapper_entry: None,
            },
        }
    }

    /// The entry for an OCI runtime without a shim of its own (`runsc`, `crun`), run by the runc
    /// shim `runc_shim` in its place, with the wrapper links in `bin_dir`. In the path form the
    /// runc shim's option `BinaryName` names `oci_runtime`. In the name form, where CRI cannot pass
    /// runc's options, the handler gets a runtime name of its own
    /// (`io.containerd.traced-<name>.<version>`), which the wrapper's config maps to the runc shim
    /// with `oci_runtime`; its settings then come from the runc entry, without its options.
    pub fn through_runc_shim(
        name: &str,
        oci_runtime: &Path,
        runc_shim: &RealShim,
        bin_dir: &Path,
        form: Form,
    ) -> TracedRuntime {
        let handler = traced_handler(name);
        let real_runtime = runc_shim.name.runtime();
        match form {
            Form::Path => TracedRuntime {
                handler,
                runtime_type: real_runtime.clone(),
                runtime_path: Some(bin_dir.join(runc_shim.name.traced_binary())),
                real_runtime,
                carry_options: true,
                binary_name: Some(oci_runtime.display().to_string()),
                wrapper_entry: None,
            },
            Form::Name => {
                let own = ShimName {
                    inner: name.into(),
                    version: runc_shim.name.version.clone(),
                };
                let link = bin_dir.join(own.traced_binary());
                let mut entry = TracedRuntime::for_shim(handler, &own, &link, form);
                entry.real_runtime = real_runtime;
                entry.carry_options = false;
                entry.wrapper_entry = Some(WrapperEntry {
                    runtime: own.traced_runtime(),
                    link,
                    inner: runc_shim.path.clone(),
                    oci_runtime: oci_runtime.to_path_buf(),
                });
                entry
            }
        }
    }
}

/// Whether CRI sends typed runc options for a runtime type (containerd's runc shims).
fn is_runc_type(runtime_type: &str) -> bool {
    matches!(
        runtime_type,
        "io.containerd.runc.v1" | "io.containerd.runc.v2" | "io.containerd.runtime.v1.linux"
    )
}

/// The CRI plugin's table in a config schema version.
pub fn cri_plugin(config_version: u32) -> &'static str {
    if config_version >= 3 {
        "io.containerd.cri.v1.runtime"
    } else {
        "io.containerd.grpc.v1.cri"
    }
}

/// The CRI plugin's runtimes table path for a config schema version.
pub fn cri_runtimes_path(config_version: u32) -> [&'static str; 4] {
    [
        "plugins",
        cri_plugin(config_version),
        "containerd",
        "runtimes",
    ]
}

/// The item at `path`, through tables and inline tables alike.
fn get_at<'a>(table: &'a Table, path: &[&str]) -> Option<&'a Item> {
    let (last, parents) = path.split_last()?;
    let mut current: &dyn TableLike = table;
    for key in parents {
        current = current.get(key)?.as_table_like()?;
    }
    current.get(last)
}

/// The table at `path` in the config at `config` (see [`try_table_at`]).
fn table_in<'a>(
    doc: &'a mut DocumentMut,
    path: &[&str],
    config: &Path,
) -> Result<&'a mut Table, InstallError> {
    try_table_at(doc.as_table_mut(), path).map_err(|NotATable { key, found }| {
        InstallError::NotATable {
            path: config.to_path_buf(),
            key,
            found,
        }
    })
}

/// A table-like item (a table or an inline table) as a table.
fn to_table(item: &Item) -> Option<Table> {
    item.clone().into_table().ok()
}

fn parse_doc(text: &str, path: &Path) -> Result<DocumentMut, InstallError> {
    text.parse()
        .map_err(|e: toml_edit::TomlError| InstallError::BadConfig {
            path: path.to_path_buf(),
            message: e.to_string(),
        })
}

/// A config with the traced runtimes merged in, and what was added.
#[derive(Debug, Clone, PartialEq)]
pub struct Merged {
    pub text: String,
    /// Key paths of the tables added (`["plugins", "io.containerd.grpc.v1.cri", "containerd",
    /// "runtimes", "traced-runc"]`), the default runtime's included when it was missing.
    pub added: Vec<Vec<String>>,
    /// Whether `version` was added (the config was empty).
    pub version_added: bool,
    /// The schema the entries were written in (the config's own version, else the expected one).
    pub schema: u32,
    /// Option keys of the real runtimes that the name form could not carry, per handler.
    pub dropped_options: Vec<(String, Vec<String>)>,
}

/// The schema a config is written in: its own `version` if containerd reads it (2 on 1.x; 2 or 3
/// on 2.x, which migrates 2 itself), else an error; `expected` when it is empty.
fn config_schema(doc: &DocumentMut, expected: u32, path: &Path) -> Result<u32, InstallError> {
    match doc.get("version").and_then(Item::as_integer) {
        Some(v) if v >= 2 && v <= i64::from(expected) => Ok(v as u32),
        Some(v) => Err(InstallError::ConfigVersion {
            path: path.to_path_buf(),
            found: v,
            expected,
        }),
        // containerd reads a config without `version` as version 1.
        None if !doc.as_table().is_empty() => Err(InstallError::ConfigVersion {
            path: path.to_path_buf(),
            found: 1,
            expected,
        }),
        None => Ok(expected),
    }
}

/// The name of CRI's default runtime in a config (`runc` unless set).
fn default_runtime_name(doc: &DocumentMut, schema: u32) -> String {
    get_at(
        doc.as_table(),
        &[
            "plugins",
            cri_plugin(schema),
            "containerd",
            "default_runtime_name",
        ],
    )
    .and_then(Item::as_str)
    .filter(|s| !s.is_empty())
    .unwrap_or("runc")
    .to_string()
}

fn marked(mut table: Table) -> Table {
    table.decor_mut().set_prefix(format!("\n{MARKER}\n"));
    table
}

/// The entry of `real_runtime` (`io.containerd.runc.v2`) in a CRI runtimes table, a table or an
/// inline one; the one named after the runtime (`runc`) first.
fn real_entry_in(runtimes: &dyn TableLike, real_runtime: &str) -> Option<Table> {
    runtimes
        .iter()
        .filter(|(name, _)| traced_runtime_of(name).is_none())
        .filter(|(_, item)| item.get("runtime_type").and_then(Item::as_str) == Some(real_runtime))
        .min_by_key(|(name, _)| !real_runtime.contains(&format!(".{name}.")))
        .and_then(|(_, item)| to_table(item))
}

/// Merges the runtime entries into `existing` (a containerd config, possibly empty); settings and
/// options of the real runtime's existing entry (e.g. `SystemdCgroup`) are carried over where the
/// form lets them pass. When the config's CRI plugin lacks an entry for its default runtime
/// (`runc`), one is added, or containerd 1.6 would refuse to load CRI.
pub fn merge_config(
    existing: &str,
    config_version: u32,
    runtimes: &[TracedRuntime],
    path_for_errors: &Path,
) -> Result<Merged, InstallError> {
    merge_config_from(existing, config_version, runtimes, path_for_errors, None)
}

/// The main config beside a drop-in: where the real runtimes' entries are.
struct MainConfig {
    doc: DocumentMut,
    /// Its schema as containerd 2.x reads it (2 or 3).
    schema: u32,
    /// Whether the file exists (a missing one stands for containerd's built-in config).
    exists: bool,
}

impl MainConfig {
    /// Parses the main config at `path` (`None` when it does not exist) for a containerd that
    /// reads up to schema `expected`.
    fn parse(text: Option<&str>, path: &Path, expected: u32) -> Result<MainConfig, InstallError> {
        let doc = parse_doc(text.unwrap_or_default(), path)?;
        // Read as the main-config form reads it: a version-1 file (or one without `version`) has
        // its runtimes where the drop-in would not find them, and is refused the same way.
        let schema = config_schema(&doc, expected, path)?;
        Ok(MainConfig {
            doc,
            schema,
            exists: text.is_some(),
        })
    }

    /// Its CRI runtimes table, if it has one.
    fn runtimes(&self) -> Option<&dyn TableLike> {
        get_at(self.doc.as_table(), &cri_runtimes_path(self.schema)).and_then(Item::as_table_like)
    }

    /// Whether it defines CRI's `runc` runtime, or no runtimes at all (containerd's built-in one
    /// then stands).
    fn has_runc(&self) -> bool {
        self.runtimes()
            .is_none_or(|r| r.is_empty() || r.contains_key("runc"))
    }
}

/// [`merge_config`]; with `main`, `existing` is a drop-in: the real runtimes' entries come from
/// the main config, and the default `runc` is added only when the main config defines runtimes
/// but not it.
fn merge_config_from(
    existing: &str,
    config_version: u32,
    runtimes: &[TracedRuntime],
    path_for_errors: &Path,
    main: Option<&MainConfig>,
) -> Result<Merged, InstallError> {
    let mut doc = parse_doc(existing, path_for_errors)?;
    let schema = config_schema(&doc, config_version, path_for_errors)?;
    let version_added = doc.get("version").is_none();
    if version_added {
        doc.insert("version", value(i64::from(schema)));
    }
    let default_runtime = default_runtime_name(&doc, schema);
    // New tables go after everything else, where a reader sees them together.
    let mut position = max_position(doc.as_table()) + 1;
    let mut next_position = move || {
        position += 1;
        position
    };
    let table_path = cri_runtimes_path(schema);
    let runtimes_table = table_in(&mut doc, &table_path, path_for_errors)?;
    let mut added = Vec::new();
    let path_of = |name: &str| -> Vec<String> {
        table_path
            .iter()
            .map(|s| s.to_string())
            .chain([name.to_string()])
            .collect()
    };
    let add_default = match main {
        Some(main) => !main.has_runc() && !runtimes_table.contains_key("runc"),
        None => default_runtime == "runc" && !runtimes_table.contains_key("runc"),
    };
    if add_default {
        let mut entry = Table::new();
        entry.insert("runtime_type", value(RUNC_RUNTIME));
        entry.set_position(next_position());
        runtimes_table.insert("runc", Item::Table(marked(entry)));
        added.push(path_of("runc"));
    }
    let mut dropped_options = Vec::new();
    for runtime in runtimes {
        // The real runtime's own entry (CRI's default handler is named after the shim's inner
        // name, e.g. `runc`); its settings make the traced handler behave the same.
        let real_entry = match main {
            Some(main) => main
                .runtimes()
                .and_then(|r| real_entry_in(r, &runtime.real_runtime)),
            None => real_entry_in(&*runtimes_table, &runtime.real_runtime),
        };
        let mut entry = Table::new();
        let mut options = Table::new();
        if let Some(real) = real_entry {
            for (key, item) in real.iter() {
                match key {
                    "runtime_type" | "runtime_path" => {}
                    "options" => {
                        if let Some(real_options) = to_table(item) {
                            options = real_options;
                        }
                    }
                    _ => {
                        entry.insert(key, item.clone());
                    }
                }
            }
        }
        entry.insert("runtime_type", value(&runtime.runtime_type));
        if let Some(path) = &runtime.runtime_path {
            entry.insert("runtime_path", value(path.display().to_string()));
        }
        if !runtime.carry_options {
            // Only settings that differ from runc's defaults are lost.
            let lost: Vec<String> = options
                .iter()
                .filter(|(_, item)| !is_default_value(item))
                .map(|(key, item)| {
                    format!(
                        "{key} = {}",
                        item.as_value()
                            .map(|v| v.to_string())
                            .unwrap_or_default()
                            .trim()
                    )
                })
                .collect();
            if !lost.is_empty() {
                dropped_options.push((runtime.handler.clone(), lost));
            }
            options = Table::new();
        }
        if let Some(binary) = &runtime.binary_name {
            options.insert("BinaryName", value(binary));
        }
        // Carried-over keys keep no indentation of their old place.
        entry.fmt();
        options.fmt();
        let mut entry = marked(entry);
        entry.set_position(next_position());
        if !options.is_empty() {
            options.set_implicit(false);
            options.set_position(next_position());
            options.decor_mut().set_prefix("");
            entry.insert("options", Item::Table(options));
        }
        runtimes_table.insert(&runtime.handler, Item::Table(entry));
        added.push(path_of(&runtime.handler));
    }
    Ok(Merged {
        text: doc.to_string(),
        added,
        version_added,
        schema,
        dropped_options,
    })
}

/// The highest position of any table in the document (0 when none has one).
fn max_position(table: &Table) -> usize {
    table
        .iter()
        .filter_map(|(_, item)| item.as_table())
        .map(|t| t.position().unwrap_or(0).max(max_position(t)))
        .max()
        .unwrap_or(0)
}

/// Whether a config value is a default (`""`, `0`, `false`, empty array) that changes nothing.
fn is_default_value(item: &Item) -> bool {
    match item.as_value() {
        Some(Value::String(s)) => s.value().is_empty(),
        Some(Value::Integer(i)) => *i.value() == 0,
        Some(Value::Boolean(b)) => !*b.value(),
        Some(Value::Array(a)) => a.is_empty(),
        _ => false,
    }
}

/// The added tables of `merged` alone, as a config snippet to print.
fn snippet(merged: &Merged, path: &Path) -> Result<String, InstallError> {
    let full = parse_doc(&merged.text, path)?;
    let mut doc = DocumentMut::new();
    doc.insert("version", value(i64::from(merged.schema)));
    for key_path in &merged.added {
        let keys: Vec<&str> = key_path.iter().map(String::as_str).collect();
        let (last, parents) = keys.split_last().expect("a table path has a name");
        if let Some(item) = get_at(full.as_table(), &keys) {
            table_at(doc.as_table_mut(), parents).insert(last, item.clone());
        }
    }
    Ok(doc.to_string())
}

/// Removes the tables at `paths` from `doc` (those still there); returns how many went. Parent
/// tables left empty and implicit vanish from the output on their own.
fn remove_tables(doc: &mut DocumentMut, paths: &[Vec<String>]) -> usize {
    fn remove_in(table: &mut dyn TableLike, keys: &[String]) -> bool {
        match keys {
            [] => false,
            [last] => table.remove(last).is_some(),
            [first, rest @ ..] => table
                .get_mut(first)
                .and_then(Item::as_table_like_mut)
                .is_some_and(|t| remove_in(t, rest)),
        }
    }
    let removed = paths
        .iter()
        .filter(|key_path| remove_in(doc.as_table_mut(), key_path))
        .count();
    prune_empty(doc.as_table_mut());
    removed
}

/// Drops implicit tables left with nothing in them (what merging created around the entries).
fn prune_empty(table: &mut Table) {
    let empty: Vec<String> = table
        .iter_mut()
        .filter_map(|(key, item)| {
            let inner = item.as_table_mut()?;
            prune_empty(inner);
            (inner.is_implicit() && inner.is_empty()).then(|| key.get().to_string())
        })
        .collect();
    for key in empty {
        table.remove(&key);
    }
}

/// A RuntimeClass manifest for a handler.
pub fn runtime_class_yaml(handler: &str) -> String {
    format!(
        "apiVersion: node.k8s.io/v1\nkind: RuntimeClass\nmetadata:\n  name: {handler}\nhandler: {handler}\n"
    )
}

/// Whether `link` must be made to lead to `target`: it is missing or a link elsewhere. Something
/// other than a link there is an error, never replaced.
fn link_needed(link: &Path, target: &Path) -> Result<bool, InstallError> {
    match fs::symlink_metadata(link) {
        Ok(meta) if !meta.file_type().is_symlink() => Err(InstallError::NotSymlink {
            path: link.to_path_buf(),
        }),
        Ok(_) => Ok(fs::read_link(link).ok().as_deref() != Some(target)),
        Err(_) => Ok(true),
    }
}

/// Creates (or refreshes) `link` → `target`; never replaces a regular file.
pub fn ensure_symlink(link: &Path, target: &Path) -> Result<bool, InstallError> {
    if !link_needed(link, target)? {
        return Ok(false);
    }
    if fs::symlink_metadata(link).is_ok() {
        fs::remove_file(link).map_err(io_err("cannot replace symlink", link))?;
    }
    match symlink(target, link) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Err(InstallError::NoBinDir {
            dir: link.parent().map(Path::to_path_buf).unwrap_or_default(),
        }),
        Err(e) => Err(io_err("cannot create symlink", link)(e).into()),
    }
}

/// Writes `content` to `config`, backing up the current file to `<config>.bak-<unix seconds>`;
/// returns the backup's path if there was a file.
pub fn write_config_with_backup(
    config: &Path,
    content: &str,
) -> Result<Option<PathBuf>, InstallError> {
    let mut backup = None;
    if config.exists() {
        backup = Some(back_up(config)?);
    } else if let Some(parent) = config.parent() {
        fs::create_dir_all(parent).map_err(io_err("cannot create", parent))?;
    }
    replace_file(config, content, None)?;
    Ok(backup)
}

/// Copies `config` to `<name>.bak-<unix seconds>` and returns that path: beside it, except for
/// the drop-in ([`drop_in_path`]), whose copy goes beside the main config, since containerd may
/// import the whole `conf.d` (`conf.d/*`) and would load a copy left there.
fn back_up(config: &Path) -> Result<PathBuf, InstallError> {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let dir = config.parent().unwrap_or_else(|| Path::new("."));
    let in_conf_d = dir.file_name() == Some(std::ffi::OsStr::new("conf.d"))
        && config.file_name() == Some(std::ffi::OsStr::new(DROP_IN_FILE));
    let dir = match dir.parent() {
        Some(main_dir) if in_conf_d => main_dir,
        _ => dir,
    };
    let name = config.file_name().unwrap_or_default().to_string_lossy();
    let mut path = dir.join(format!("{name}.bak-{secs}"));
    let mut n = 1;
    while path.exists() {
        path = dir.join(format!("{name}.bak-{secs}-{n}"));
        n += 1;
    }
    fs::copy(config, &path).map_err(io_err("cannot back up", config))?;
    Ok(path)
}

/// What install added, kept beside containerd's config so that uninstall removes exactly that.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct InstallState {
    /// The file the runtime tables are in: the main config, or the drop-in.
    pub config: PathBuf,
    /// Install created that file (it did not exist).
    pub created_file: bool,
    /// Install added the file's `version` line (it was empty).
    pub version_added: bool,
    /// Key paths of the tables install added.
    pub tables: Vec<Vec<String>>,
    /// The drop-in install wrote (containerd 2.2+).
    pub drop_in: Option<PathBuf>,
    /// The entry install added to the main config's `imports`.
    pub import_added: Option<String>,
    /// The wrapper symlinks install created, and the wrapper they point at.
    pub links: Vec<PathBuf>,
    pub wrapper: Option<PathBuf>,
    pub form: Option<Form>,
    /// The wrapper's config install wrote entries into, whether it created that file, and the
    /// runtimes whose entries it added there.
    #[serde(default)]
    pub wrapper_config: Option<PathBuf>,
    #[serde(default)]
    pub wrapper_config_created: bool,
    #[serde(default)]
    pub wrapper_runtimes: Vec<String>,
}

/// Where the state of installs into `config` is kept.
pub fn state_path(config: &Path) -> PathBuf {
    config
        .parent()
        .unwrap_or_else(|| Path::new("."))
        .join(STATE_FILE)
}

fn read_state(path: &Path) -> Result<Option<InstallState>, InstallError> {
    match fs::read_to_string(path) {
        Ok(text) => serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| InstallError::BadState {
                path: path.to_path_buf(),
                message: format!("not a shimtrace install state: {e}"),
            }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_err("cannot read", path)(e).into()),
    }
}

fn write_state(path: &Path, state: &InstallState) -> Result<(), InstallError> {
    let text = serde_json::to_string_pretty(state).expect("the state serialises");
    // Written first, it may be the first file in a config directory that does not exist yet
    // (containerd runs on its built-in defaults without one).
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).map_err(io_err("cannot create", dir))?;
    }
    replace_file(path, text + "\n", None)?;
    Ok(())
}

/// The drop-in path for a main config (`/etc/containerd/conf.d/shimtrace.toml`).
pub fn drop_in_path(config: &Path) -> PathBuf {
    config
        .parent()
        .unwrap_or_else(|| Path::new("/etc/containerd"))
        .join("conf.d")
        .join(DROP_IN_FILE)
}

/// Whether an `imports` entry loads `file` (the file itself, or a `*`/`*.toml` glob in its dir).
fn import_covers(entry: &str, file: &Path) -> bool {
    let entry = Path::new(entry);
    if entry == file {
        return true;
    }
    let glob = entry.file_name().and_then(|n| n.to_str());
    entry.parent() == file.parent() && matches!(glob, Some("*" | "*.toml"))
}

/// Whether a config's `imports` name `file`.
fn imports_cover(doc: &DocumentMut, file: &Path) -> bool {
    doc.get("imports")
        .and_then(Item::as_array)
        .is_some_and(|a| {
            a.iter()
                .any(|v| v.as_str().is_some_and(|e| import_covers(e, file)))
        })
}

/// What adding the drop-in to a main config's `imports` changes.
#[derive(Default)]
struct Import {
    /// The main config's new text (`None`: unchanged).
    text: Option<String>,
    /// The entry added.
    entry: Option<String>,
    /// `version` was added with it: a main config without one (an empty file) would be read as
    /// version 1.
    version_added: bool,
}

/// Adds `file` to a main config's `imports` unless an entry covers it, with `version = schema`
/// when the main config has no version. A missing main config is left missing: containerd 2.2's
/// built-in default imports `conf.d`.
fn ensure_import(
    main: &str,
    main_path: &Path,
    file: &Path,
    schema: u32,
) -> Result<Import, InstallError> {
    let mut doc = parse_doc(main, main_path)?;
    if imports_cover(&doc, file) {
        return Ok(Import::default());
    }
    let version_added = doc.get("version").is_none();
    if version_added {
        doc.insert("version", value(i64::from(schema)));
    }
    let entry = file.display().to_string();
    match doc.get_mut("imports").and_then(Item::as_array_mut) {
        Some(imports) => imports.push(entry.as_str()),
        None => {
            let mut imports = Array::new();
            imports.push(entry.as_str());
            // `imports` is a top-level key: before the first table.
            doc.insert("imports", value(imports));
        }
    }
    Ok(Import {
        text: Some(doc.to_string()),
        entry: Some(entry),
        version_added,
    })
}

/// Removes `entry` from a main config's `imports` (and the key, if that leaves it empty and it
/// held only ours).
fn remove_import(main: &str, main_path: &Path, entry: &str) -> Result<String, InstallError> {
    let mut doc = parse_doc(main, main_path)?;
    let mut now_empty = false;
    if let Some(imports) = doc.get_mut("imports").and_then(Item::as_array_mut) {
        imports.retain(|v| v.as_str() != Some(entry));
        now_empty = imports.is_empty();
    }
    if now_empty {
        doc.remove("imports");
    }
    Ok(doc.to_string())
}

/// What `install` did and the text it prints.
#[derive(Debug, Clone, PartialEq)]
pub struct InstallOutcome {
    pub runtimes: Vec<TracedRuntime>,
    pub created_links: Vec<PathBuf>,
    pub config_snippet: String,
    pub backup: Option<PathBuf>,
    /// The form written, and the containerd version it was chosen for (if known).
    pub form: Form,
    pub containerd_version: Option<String>,
    /// The file the entries went into with --write (the config or the drop-in).
    pub written: Option<PathBuf>,
    /// Key paths of install's tables taken out of the main config (with --write; without, those
    /// it would take out): those of an earlier install for a containerd before 2.2, whose
    /// runtimes the drop-in carries now.
    pub moved: Vec<Vec<String>>,
    pub report: String,
}

/// The wrapper binary: `explicit`, else beside this executable, else on PATH.
pub fn find_wrapper(explicit: Option<&Path>) -> Result<PathBuf, InstallError> {
    if let Some(path) = explicit {
        return if path.exists() {
            Ok(std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf()))
        } else {
            Err(InstallError::WrapperMissing(path.to_path_buf()))
        };
    }
    std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.join(WRAPPER_BINARY)))
        .filter(|p| p.exists())
        .or_else(|| which(WRAPPER_BINARY))
        .ok_or(InstallError::NoWrapper)
}

/// The containerd version install writes for: `--containerd-version` (which must be one), else
/// `--containerd --version`; `None` when neither says.
pub fn target_version(args: &InstallArgs) -> Result<Option<String>, InstallError> {
    if let Some(given) = &args.containerd_version {
        return parse_containerd_version(given).map(Some);
    }
    Ok(ContainerdBinary::probe(&args.containerd)
        .ok()
        .map(|b| b.version().to_string()))
}

/// The traced handlers for the real shims found, in `form`. `runsc` is the gVisor OCI binary for
/// a `traced-runsc` handler through the runc shim (only when gVisor's own shim is not among
/// `shims`): the runc shim's `BinaryName` in the path form, an entry for the wrapper's config in
/// the name form. Returns the handlers and notes for the report.
pub fn plan_runtimes(
    shims: &[RealShim],
    bin_dir: &Path,
    form: Form,
    runsc: Option<&Path>,
) -> (Vec<TracedRuntime>, Vec<String>) {
    let mut runtimes = Vec::new();
    let mut notes = Vec::new();
    for shim in shims {
        let link = bin_dir.join(shim.name.traced_binary());
        let handler = shim.handler(shims);
        runtimes.push(TracedRuntime::for_shim(
            handler.clone(),
            &shim.name,
            &link,
            form,
        ));
        if handler != traced_handler("runc") || shim.name.runtime() != RUNC_RUNTIME {
            continue;
        }
        // gVisor through the runc shim with runsc as its OCI binary.
        let Some(runsc) = runsc else { continue };
        if runtimes
            .iter()
            .any(|r| r.handler == traced_handler("runsc"))
            || shims.iter().any(|s| s.name.inner == "runsc")
        {
            notes.push(
                "gVisor: its own shim (containerd-shim-runsc-*) is wrapped as traced-runsc; no runc-shim gVisor handler is added".into(),
            );
            continue;
        }
        let gvisor = TracedRuntime::through_runc_shim("runsc", runsc, shim, bin_dir, form);
        if let Some(entry) = &gvisor.wrapper_entry {
            notes.push(format!(
                "gVisor: traced-runsc is runtime {} (link {}), which the wrapper's config maps to the runc shim {} with oci_runtime = {}: the runc option BinaryName cannot pass in this form, so the wrapper puts a `runc` link to runsc first on the runc shim's PATH. Costs: the OCI runtime is set per runtime name in the wrapper's config, not per handler in containerd's (one more file to keep, read at each shim start); the traced handler gets none of the runc entry's options (as traced-runc)",
                entry.runtime,
                entry.link.file_name().unwrap_or_default().to_string_lossy(),
                shim.path.display(),
                runsc.display()
            ));
        }
        runtimes.push(gvisor);
        notes.push(GVISOR_POD_NOTE.into());
    }
    (runtimes, notes)
}

/// What gVisor through the runc shim cannot do, in either form.
const GVISOR_POD_NOTE: &str = "gVisor: traced-runsc is runsc through the runc shim, made for single containers: in a pod, runsc runs every container in the pod's gVisor sandbox, and the runc shim does not report those containers' exits (seen with Debian's runsc 20221219); for gVisor pods install gVisor's own shim (containerd-shim-runsc-v1), which install then wraps as traced-runsc instead";

/// The wrapper's config with `entries` merged in: each runtime's table is added (marked) unless
/// the config has one; install owns the tables named in `owned` (added by an earlier run) and
/// rewrites those. Returns the text, the runtimes added now and those left as the config had them.
pub fn merge_wrapper_config(
    existing: &str,
    entries: &[WrapperEntry],
    owned: &[String],
    path: &Path,
) -> Result<(String, Vec<String>, Vec<String>), InstallError> {
    let mut doc = parse_doc(existing, path)?;
    let mut position = max_position(doc.as_table()) + 1;
    let runtimes = table_in(&mut doc, &["runtimes"], path)?;
    let mut added = Vec::new();
    let mut kept = Vec::new();
    for entry in entries {
        if runtimes.contains_key(&entry.runtime) && !owned.contains(&entry.runtime) {
            kept.push(entry.runtime.clone());
            continue;
        }
        let mut table = Table::new();
        table.insert("inner", value(entry.inner.display().to_string()));
        table.insert(
            "oci_runtime",
            value(entry.oci_runtime.display().to_string()),
        );
        let mut table = marked(table);
        position += 1;
        table.set_position(position);
        runtimes.insert(&entry.runtime, Item::Table(table));
        added.push(entry.runtime.clone());
    }
    Ok((doc.to_string(), added, kept))
}

/// Writes the wrapper's config: replaced atomically, mode 0644, since the wrapper refuses a config
/// anyone but root can write (it names the binaries the wrapper runs).
pub fn write_wrapper_config(path: &Path, content: &str) -> Result<(), InstallError> {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).map_err(io_err("cannot create", parent))?;
    }
    replace_file(path, content, Some(0o644))?;
    Ok(())
}

/// Runs `shimtrace install` (print, or `--write`).
pub fn install(args: &InstallArgs) -> Result<InstallOutcome, InstallError> {
    let plan = Plan::new(args)?;
    // --write makes the links only once the state lists them, so that uninstall finds them.
    let printed_links = if args.write {
        Vec::new()
    } else {
        link_wrappers(&plan)?
    };
    let state = if args.write {
        read_state(&state_path(&args.config))?.unwrap_or_default()
    } else {
        // Printing only says what --write would do: a state it cannot read is refused there.
        read_state(&state_path(&args.config))
            .ok()
            .flatten()
            .unwrap_or_default()
    };
    let main = plan
        .drop_in
        .then(|| {
            let handlers: Vec<String> = plan.runtimes.iter().map(|r| r.handler.clone()).collect();
            read_main(&args.config, &state, &handlers, plan.schema)
        })
        .transpose()?;
    let (target, existing) = read_target(args, plan.drop_in)?;
    // Back on a containerd before 2.2: the drop-in an install for 2.2 wrote is still imported.
    let stale_drop_in = state
        .drop_in
        .clone()
        .filter(|drop_in| !plan.drop_in && drop_in.exists());
    let (merged, drop_in_edited) = merge_entries(
        args,
        &plan,
        &target,
        existing.as_deref(),
        main.as_ref().map(|main| &main.config),
        existing
            .as_deref()
            .is_some_and(|text| drop_in_is_ours(text, &target, &state)),
    )?;
    let config_snippet = snippet(&merged, &target)?;
    let wrapper_entries = plan.wrapper_entries();
    let wrapper_snippet = (!wrapper_entries.is_empty())
        .then(|| merge_wrapper_config("", &wrapper_entries, &[], &args.wrapper_config))
        .transpose()?
        .map(|(text, _, _)| text);
    let mut written = if args.write {
        write_install(
            args,
            &plan,
            &Target {
                path: &target,
                existing: existing.as_deref(),
                drop_in_edited,
                main_text: main.as_ref().and_then(MainRead::text_now),
                main_moved: main.as_ref().is_some_and(|m| !m.moved.is_empty()),
            },
            &merged,
            state,
        )?
    } else {
        Written::default()
    };
    let created_links = if args.write {
        std::mem::take(&mut written.created_links)
    } else {
        printed_links
    };
    let mut report = render_report(&ReportInput {
        args,
        plan: &plan,
        created_links: &created_links,
        merged: &merged,
        snippet: &config_snippet,
        target: &target,
        backup: written.backup.as_deref(),
        drop_in_backup: written.drop_in_backup.as_deref(),
        wrapper_snippet: wrapper_snippet.as_deref(),
        kept_wrapper_entries: &written.kept_wrapper_entries,
        main: main.as_ref(),
    });
    if let Some(drop_in) = stale_drop_in {
        let imported = fs::read_to_string(&args.config)
            .ok()
            .and_then(|text| text.parse::<DocumentMut>().ok())
            .is_some_and(|doc| imports_cover(&doc, &drop_in));
        let _ = writeln!(
            report,
            "# {} (an install for containerd 2.2 or later) is still there, {} {}: {}",
            drop_in.display(),
            if imported {
                "imported by"
            } else {
                "not imported by"
            },
            args.config.display(),
            if imported {
                "containerd merges its entries with this config's key by key (the drop-in's keys win); `shimtrace install --uninstall` takes install's tables out of both, then run this install again"
            } else {
                "containerd does not read it; `shimtrace install --uninstall` removes it with the rest"
            }
        );
    }
    Ok(InstallOutcome {
        runtimes: plan.runtimes,
        created_links,
        config_snippet,
        backup: written.backup,
        form: plan.form,
        containerd_version: plan.version,
        written: written.config,
        moved: main.map(|m| m.moved).unwrap_or_default(),
        report,
    })
}

/// What install registers and where, decided before anything is written.
struct Plan {
    wrapper: PathBuf,
    /// Where the traced links go.
    bin_dir: PathBuf,
    /// Where real shims were looked up.
    path_var: OsString,
    shims: Vec<RealShim>,
    /// The containerd version written for, when known.
    version: Option<String>,
    form: Form,
    /// The config schema for the main config.
    schema: u32,
    /// The entries go into a drop-in that the main config imports (containerd 2.2 and later).
    drop_in: bool,
    runtimes: Vec<TracedRuntime>,
    notes: Vec<String>,
}

impl Plan {
    /// Finds the wrapper and the real shims, and picks the form and schema from the containerd
    /// version (given, or asked of `--containerd`).
    fn new(args: &InstallArgs) -> Result<Plan, InstallError> {
        let wrapper = find_wrapper(args.wrapper.as_deref())?;
        let bin_dir = match &args.bin_dir {
            Some(dir) => std::path::absolute(dir).unwrap_or_else(|_| dir.clone()),
            None => wrapper.parent().map(Path::to_path_buf).unwrap_or_default(),
        };
        // Checked first: the links are made with or without --write.
        if !bin_dir.is_dir() {
            return Err(InstallError::NoBinDir { dir: bin_dir });
        }
        let path_var = search_path(args.shim_path.as_deref());
        let shims = find_real_shims(&path_var);
        if shims.is_empty() {
            return Err(InstallError::no_shims(args.shim_path.as_deref()));
        }
        let version = target_version(args)?;
        let form = args.form.unwrap_or_else(|| {
            version
                .as_deref()
                .map(Form::for_version)
                .unwrap_or(Form::Name)
        });
        let schema = args.config_version.unwrap_or_else(|| {
            config_version_for_major(
                version
                    .as_deref()
                    .map(crate::private::major_of)
                    .unwrap_or(1),
            )
        });
        let drop_in = version
            .as_deref()
            .is_some_and(|v| version_triple(v) >= DROP_IN_SINCE);
        let runsc = match &args.runsc {
            Some(given) => Some(resolve_runsc(given, &path_var)?),
            None => resolve_runsc(Path::new("runsc"), &path_var).ok(),
        };
        let (runtimes, notes) = plan_runtimes(&shims, &bin_dir, form, runsc.as_deref());
        Ok(Plan {
            wrapper,
            bin_dir,
            path_var,
            shims,
            version,
            form,
            schema,
            drop_in,
            runtimes,
            notes,
        })
    }

    /// The wrapper config entries the runtimes need (in the runtime-name form).
    fn wrapper_entries(&self) -> Vec<WrapperEntry> {
        self.runtimes
            .iter()
            .filter_map(|r| r.wrapper_entry.clone())
            .collect()
    }
}

/// Every traced binary: one per real shim, and the wrapper entries' own.
fn planned_links(plan: &Plan) -> Vec<PathBuf> {
    plan.shims
        .iter()
        .map(|shim| plan.bin_dir.join(shim.name.traced_binary()))
        .chain(plan.wrapper_entries().into_iter().map(|e| e.link))
        .collect()
}

/// Links every traced binary to the wrapper; returns the links it created.
fn link_wrappers(plan: &Plan) -> Result<Vec<PathBuf>, InstallError> {
    let links = links_to_make(plan)?;
    for link in &links {
        ensure_symlink(link, &plan.wrapper)?;
    }
    Ok(links)
}

/// The traced links that do not yet point at the wrapper, after checking that none is in the
/// place of a file that is not a symlink (which install never replaces).
fn links_to_make(plan: &Plan) -> Result<Vec<PathBuf>, InstallError> {
    let mut missing = Vec::new();
    for link in planned_links(plan) {
        if link_needed(&link, &plan.wrapper)? {
            missing.push(link);
        }
    }
    Ok(missing)
}

/// The file the entries go into (the main config, or the drop-in), and its text now (`None`
/// when it does not exist).
fn read_target(
    args: &InstallArgs,
    drop_in: bool,
) -> Result<(PathBuf, Option<String>), InstallError> {
    let target = if drop_in {
        drop_in_path(&args.config)
    } else {
        args.config.clone()
    };
    let existing = match fs::read_to_string(&target) {
        Ok(text) => Some(text),
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => return Err(io_err("cannot read", &target)(e).into()),
    };
    Ok((target, existing))
}

/// The main config beside a drop-in, as the drop-in install leaves it: without the traced tables
/// an earlier install for an older containerd wrote into it and that still carry install's marker
/// (they move to the drop-in; the `runc` entry it added stays).
struct MainRead {
    /// Its text now (`None` when it does not exist: containerd 2.2's built-in default imports
    /// `conf.d` then).
    text: Option<String>,
    /// Its text without install's tables, when it had any.
    without_ours: Option<String>,
    /// What it says without install's tables.
    config: MainConfig,
    /// Key paths of install's tables taken out.
    moved: Vec<Vec<String>>,
    /// What the report says about tables left in it (install's `runc` while others need it,
    /// marked tables the state does not list).
    notes: String,
}

impl MainRead {
    /// The text the drop-in install writes back (with its `imports` entry added).
    fn text_now(&self) -> Option<&str> {
        self.without_ours.as_deref().or(self.text.as_deref())
    }
}

/// The main config beside a drop-in (see [`MainRead`]): the traced tables `state` lists move when
/// they still carry install's marker.
fn read_main(
    config: &Path,
    state: &InstallState,
    handlers: &[String],
    schema: u32,
) -> Result<MainRead, InstallError> {
    let text = match fs::read_to_string(config) {
        Ok(text) => Some(text),
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(source) => {
            return Err(InstallError::Unreadable {
                path: config.to_path_buf(),
                source,
                what_to_do: "the drop-in takes the real runtimes' settings from it: make it readable (run as root), or name containerd's config with --config",
            })
        }
    };
    let original = text.as_deref().unwrap_or_default();
    // Refuses a config the drop-in cannot go with before looking inside it.
    let config_now = MainConfig::parse(text.as_deref(), config, schema)?;
    // Only install's traced tables move, and only while they still carry its marker (an admin
    // who took the marker off made the table theirs). The default runtime install added stays:
    // the drop-in's handlers take their options from it, and it may hold the admin's edits.
    let movable = InstallState {
        tables: state
            .tables
            .iter()
            .filter(|p| p.last().map(String::as_str) != Some("runc"))
            .cloned()
            .collect(),
        ..state.clone()
    };
    let ours = Ours::ListedAndMarked;
    let (doc, moved) = remove_installed(original, config, &movable, ours, &mut String::new())?;
    let mut notes = String::new();
    for key_path in state.tables.iter().filter(|p| holds_ours(&doc, p, ours)) {
        let _ = writeln!(
            notes,
            "# {} keeps {}, which install added there: the drop-in's handlers take its options (uninstall takes it out once no other runtime is defined beside it)",
            config.display(),
            table_name(key_path)
        );
    }
    for (name, link) in unmarked_runtimes(&doc, config_now.schema, state, handlers) {
        let clash = handlers.contains(&name);
        let _ = write!(
            notes,
            "# {} has runtimes.{name} without install's comment",
            config.display()
        );
        if clash {
            let _ = write!(notes, ": containerd merges it with the drop-in's {name} key by key (the drop-in's keys win, keys only it sets still apply)");
        }
        if let Some(link) = link {
            let _ = write!(notes, "; it names install's link {}, which --uninstall removes: remove it then, or point it elsewhere", link.display());
        }
        notes.push('\n');
    }
    for key_path in stray_marked_tables(&doc, state) {
        let _ = writeln!(
            notes,
            "# {} has {} marked as install's, but the install state ({}) does not list it: left as it is; if install wrote it, remove it by hand (the drop-in's entry of the same name is merged over it)",
            config.display(),
            table_name(&key_path),
            state_path(config).display()
        );
    }
    if moved.is_empty() {
        return Ok(MainRead {
            text,
            without_ours: None,
            config: config_now,
            moved,
            notes,
        });
    }
    let without_ours = doc.to_string();
    Ok(MainRead {
        config: MainConfig::parse(Some(&without_ours), config, schema)?,
        text,
        without_ours: Some(without_ours),
        moved,
        notes,
    })
}

/// CRI runtime tables in `doc` (either schema) that carry install's marker although `state`
/// does not list them.
fn stray_marked_tables(doc: &DocumentMut, state: &InstallState) -> Vec<Vec<String>> {
    let mut found = Vec::new();
    for schema in [2, 3] {
        let path = cri_runtimes_path(schema);
        let Some(runtimes) = get_at(doc.as_table(), &path).and_then(Item::as_table_like) else {
            continue;
        };
        for (name, item) in runtimes.iter() {
            let key_path: Vec<String> = path
                .iter()
                .map(|s| s.to_string())
                .chain([name.to_string()])
                .collect();
            if item.as_table().is_some_and(has_marker) && !state.tables.contains(&key_path) {
                found.push(key_path);
            }
        }
    }
    found
}

/// The CRI runtime tables of `doc` (in its `schema`, the ones containerd reads) without install's
/// marker that the drop-in clashes with (a name in `handlers`) or that name one of the links
/// install made (`state.links`, by `runtime_path` or, in the runtime-name form, `runtime_type`):
/// an admin's copy of install's entry (one that took the marker off, or `containerd config
/// migrate` copying the drop-in into its output), with the link it names.
fn unmarked_runtimes(
    doc: &DocumentMut,
    schema: u32,
    state: &InstallState,
    handlers: &[String],
) -> Vec<(String, Option<PathBuf>)> {
    let link_named = |table: &Table| -> Option<PathBuf> {
        let by_path = table
            .get("runtime_path")
            .and_then(Item::as_str)
            .map(PathBuf::from);
        let by_type = table
            .get("runtime_type")
            .and_then(Item::as_str)
            .and_then(ShimName::parse_runtime)
            .map(|shim| shim.binary());
        state
            .links
            .iter()
            .find(|link| {
                by_path.as_deref() == Some(link.as_path())
                    || by_type
                        .as_deref()
                        .is_some_and(|binary| link.file_name().is_some_and(|name| name == binary))
            })
            .cloned()
    };
    let Some(runtimes) =
        get_at(doc.as_table(), &cri_runtimes_path(schema)).and_then(Item::as_table_like)
    else {
        return Vec::new();
    };
    runtimes
        .iter()
        .filter_map(|(name, item)| {
            let table = item.as_table().filter(|t| !has_marker(t))?;
            let link = link_named(table);
            (link.is_some() || handlers.iter().any(|h| h == name)).then(|| (name.to_string(), link))
        })
        .collect()
}

/// How the report names a runtime table (`runtimes.traced-runc`).
fn table_name(key_path: &[String]) -> String {
    match key_path {
        [.., parent, name] => format!("{parent}.{name}"),
        _ => key_path.join("."),
    }
}

/// The target's text with the plan's runtimes merged in, and whether that target is a drop-in
/// holding more than install's tables. `ours` says the existing drop-in holds nothing else (see
/// [`drop_in_is_ours`]): then it is made afresh; otherwise, with --write, the entries are merged
/// into it, keeping the rest. A drop-in's real runtimes' settings come from the main config, and
/// it holds CRI's default `runc` only when the main config defines runtimes but not `runc`.
fn merge_entries(
    args: &InstallArgs,
    plan: &Plan,
    target: &Path,
    existing: Option<&str>,
    main: Option<&MainConfig>,
    ours: bool,
) -> Result<(Merged, bool), InstallError> {
    let Some(main) = main else {
        let merged = merge_config(
            existing.unwrap_or_default(),
            plan.schema,
            &plan.runtimes,
            target,
        )?;
        return Ok((merged, false));
    };
    // The drop-in in the main config's schema: containerd merges the files before migrating, and
    // a schema-3 drop-in over a schema-2 main config makes it skip the migration, so that the
    // main config's CRI section (CNI, runc's options) would go unread.
    let fresh = merge_config_from("", main.schema, &plan.runtimes, target, Some(main))?;
    let edited = existing.is_some_and(|text| text != fresh.text && !ours);
    // A missing main config is containerd's built-in one: no file to clash with.
    if edited && main.exists {
        let found = existing
            .and_then(|text| text.parse::<DocumentMut>().ok())
            .and_then(|doc| doc.get("version").and_then(Item::as_integer));
        if let Some(found) = found.filter(|v| *v != i64::from(main.schema)) {
            return Err(InstallError::DropInVersion {
                drop_in: target.to_path_buf(),
                found,
                config: args.config.clone(),
                main: main.schema,
            });
        }
    }
    if !(edited && args.write) {
        return Ok((fresh, false));
    }
    let merged = merge_config_from(
        existing.unwrap_or_default(),
        main.schema,
        &plan.runtimes,
        target,
        Some(main),
    )?;
    Ok((merged, true))
}

/// The file `--write` puts the entries into, as it was found.
struct Target<'a> {
    path: &'a Path,
    /// Its text (`None` when it does not exist).
    existing: Option<&'a str>,
    /// It is a drop-in that was edited since install wrote it: a copy is kept before it changes.
    drop_in_edited: bool,
    /// The main config's text beside a drop-in (`None` if there is none), without install's
    /// tables from an install into it.
    main_text: Option<&'a str>,
    /// Install's tables were taken out of that text: the main config is written even when its
    /// `imports` already covers the drop-in.
    main_moved: bool,
}

/// What `--write` wrote.
#[derive(Default)]
struct Written {
    /// The file the entries went into.
    config: Option<PathBuf>,
    /// The copy of the config made before it changed.
    backup: Option<PathBuf>,
    /// The copy of an edited drop-in made before it changed.
    drop_in_backup: Option<PathBuf>,
    /// The links created.
    created_links: Vec<PathBuf>,
    /// Runtimes whose entry the wrapper's config already had (not install's): left as they were.
    kept_wrapper_entries: Vec<String>,
}

/// `--write`: records in the state what it is about to add, then makes the links and writes the
/// merged entries (and, for a drop-in, the main config's import of it) and the wrapper config's
/// entries. With the state first, an install stopped half-way is still taken back by
/// `--uninstall`, and a second run finishes it without mistaking its own additions (the default
/// `runc`) for the user's.
fn write_install(
    args: &InstallArgs,
    plan: &Plan,
    target: &Target<'_>,
    merged: &Merged,
    mut state: InstallState,
) -> Result<Written, InstallError> {
    // Everything that can refuse does so before anything changes.
    let links = links_to_make(plan)?;
    let import = match target.main_text {
        Some(main) if plan.drop_in => {
            ensure_import(main, &args.config, target.path, merged.schema)?
        }
        _ => Import::default(),
    };
    let wrapper_entries = plan.wrapper_entries();
    let wrapper = (!wrapper_entries.is_empty())
        .then(|| plan_wrapper_entries(&args.wrapper_config, &wrapper_entries, &mut state))
        .transpose()?;

    if plan.drop_in {
        state.drop_in = Some(target.path.to_path_buf());
        if let Some(entry) = &import.entry {
            state.import_added = Some(entry.clone());
        }
        state.version_added |= import.version_added;
    } else {
        // Also after an install that wrote only a drop-in: what this one creates goes with uninstall.
        state.created_file |= target.existing.is_none();
        state.version_added |= merged.version_added;
    }
    state.config = target.path.to_path_buf();
    for path in &merged.added {
        if !state.tables.contains(path) {
            state.tables.push(path.clone());
        }
    }
    for link in &links {
        if !state.links.contains(link) {
            state.links.push(link.clone());
        }
    }
    state.wrapper = Some(plan.wrapper.clone());
    state.form = Some(plan.form);
    write_state(&state_path(&args.config), &state)?;

    let mut written = Written::default();
    for link in links {
        if ensure_symlink(&link, &plan.wrapper)? {
            written.created_links.push(link);
        }
    }
    if plan.drop_in {
        if let Some(parent) = target.path.parent() {
            fs::create_dir_all(parent).map_err(io_err("cannot create", parent))?;
        }
        if target.drop_in_edited {
            if target.existing != Some(merged.text.as_str()) {
                written.drop_in_backup = write_config_with_backup(target.path, &merged.text)?;
            }
        } else {
            replace_file(target.path, &merged.text, None)?;
        }
        // The drop-in carries the runtimes before the main config loses its old tables.
        let main_text = import.text.or_else(|| {
            target
                .main_moved
                .then(|| target.main_text.map(str::to_string))?
        });
        if let Some(text) = main_text {
            written.backup = write_config_with_backup(&args.config, &text)?;
        }
    } else {
        written.backup = write_config_with_backup(target.path, &merged.text)?;
    }
    if let Some(wrapper) = wrapper {
        if wrapper.existing.as_deref() != Some(wrapper.text.as_str()) {
            write_wrapper_config(&args.wrapper_config, &wrapper.text)?;
        }
        written.kept_wrapper_entries = wrapper.kept;
    }
    written.config = Some(target.path.to_path_buf());
    Ok(written)
}

/// The wrapper config with install's entries merged in, as it is to be written.
struct WrapperWrite {
    /// Its text now (`None` when it does not exist).
    existing: Option<String>,
    text: String,
    /// Runtimes whose entry was already there (not install's), left as they were.
    kept: Vec<String>,
}

/// Merges `entries` into the wrapper config at `path`, noting in `state` the runtimes install
/// adds; writes nothing.
fn plan_wrapper_entries(
    path: &Path,
    entries: &[WrapperEntry],
    state: &mut InstallState,
) -> Result<WrapperWrite, InstallError> {
    let existing = match fs::read_to_string(path) {
        Ok(text) => Some(text),
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => return Err(io_err("cannot read", path)(e).into()),
    };
    if state.wrapper_config.as_deref() != Some(path) {
        state.wrapper_config = Some(path.to_path_buf());
        state.wrapper_config_created = existing.is_none();
        state.wrapper_runtimes.clear();
    }
    let (text, added, kept) = merge_wrapper_config(
        existing.as_deref().unwrap_or_default(),
        entries,
        &state.wrapper_runtimes,
        path,
    )?;
    for runtime in added {
        if !state.wrapper_runtimes.contains(&runtime) {
            state.wrapper_runtimes.push(runtime);
        }
    }
    Ok(WrapperWrite {
        existing,
        text,
        kept,
    })
}

struct ReportInput<'a> {
    args: &'a InstallArgs,
    plan: &'a Plan,
    /// The links this run made (with or without --write).
    created_links: &'a [PathBuf],
    merged: &'a Merged,
    snippet: &'a str,
    target: &'a Path,
    backup: Option<&'a Path>,
    /// The copy of the drop-in kept because it had been edited.
    drop_in_backup: Option<&'a Path>,
    /// The wrapper config entries the handlers need, as TOML.
    wrapper_snippet: Option<&'a str>,
    /// Runtimes whose entry the wrapper's config already had (not install's): left as they were.
    kept_wrapper_entries: &'a [String],
    /// The main config beside a drop-in.
    main: Option<&'a MainRead>,
}

fn render_report(input: &ReportInput<'_>) -> String {
    let mut report = String::new();
    report_links(&mut report, input);
    report_form(&mut report, input);
    report_config(&mut report, input);
    report_moved(&mut report, input);
    report_wrapper_config(&mut report, input);
    let _ = writeln!(report, "\n# Kubernetes RuntimeClasses:");
    for (i, runtime) in input.plan.runtimes.iter().enumerate() {
        if i > 0 {
            report.push_str("---\n");
        }
        report.push_str(&runtime_class_yaml(&runtime.handler));
    }
    report
}

/// Whether a link was made by this run or was there already, as the report says it.
fn link_done(input: &ReportInput<'_>, link: &Path) -> &'static str {
    if input.created_links.iter().any(|l| l == link) {
        "created"
    } else {
        "already in place"
    }
}

/// The report's first lines: each traced link, whether this run made it, and what it wraps.
fn report_links(r: &mut String, input: &ReportInput<'_>) {
    let _ = writeln!(r, "# wrapper: {}", input.plan.wrapper.display());
    for shim in &input.plan.shims {
        let link = input.plan.bin_dir.join(shim.name.traced_binary());
        let _ = writeln!(
            r,
            "# link {} ({}) -> {} (wraps {})",
            link.display(),
            link_done(input, &link),
            input.plan.wrapper.display(),
            shim.path.display()
        );
    }
    for entry in input
        .plan
        .runtimes
        .iter()
        .filter_map(|r| r.wrapper_entry.as_ref())
    {
        let _ = writeln!(
            r,
            "# link {} ({}) -> {} (wraps {} running {} as runc, by the wrapper config below)",
            entry.link.display(),
            link_done(input, &entry.link),
            input.plan.wrapper.display(),
            entry.inner.display(),
            entry.oci_runtime.display()
        );
    }
}

/// The form written, why it suits this containerd and what it costs, the plan's notes, and whether
/// install adds CRI's default `runc`.
fn report_form(r: &mut String, input: &ReportInput<'_>) {
    let version = input.plan.version.as_deref().unwrap_or("(version unknown)");
    let why = match (input.plan.form, input.plan.version.as_deref(), input.args.form) {
        (_, _, Some(_)) => "as asked (--form)".to_string(),
        (Form::Path, Some(_), None) => "it honours runtime_path (since 1.7.1)".to_string(),
        (Form::Name, Some(_), None) => {
            "its CRI ignores runtime_path (containerd 1.6.x and 1.7.0 never pass it to the task)"
                .to_string()
        }
        (_, None, None) => format!(
            "its version could not be read from `{} --version` (pass --containerd or --containerd-version); the runtime-name form works on every version",
            input.args.containerd.display()
        ),
    };
    let _ = writeln!(
        r,
        "\n# containerd {version}: {} — {why}",
        input.plan.form.describe()
    );
    match input.plan.form {
        Form::Name => {
            let _ = writeln!(
                r,
                "#   runtime_type = \"io.containerd.traced-<inner>.<ver>\": containerd finds containerd-shim-traced-<inner>-<ver> by name on its own PATH"
            );
            let on_path =
                std::env::split_paths(&input.plan.path_var).any(|d| d == input.plan.bin_dir);
            let _ = writeln!(
                r,
                "#   requires: {} on containerd's PATH{}",
                input.plan.bin_dir.display(),
                if on_path {
                    ""
                } else {
                    " — it is not on the PATH searched here: check containerd's (systemctl show containerd -p Environment), or pick --bin-dir /usr/local/bin"
                }
            );
            let _ = writeln!(
                r,
                "#   costs: CRI sends runc's typed options only to runtime_type io.containerd.runc.v2, so under a traced runc handler runc runs with its defaults: no SystemdCgroup, BinaryName, NoPivotRoot, Root…; other shims' options (kata, runsc-v1) pass as before"
            );
            for (handler, lost) in &input.merged.dropped_options {
                let _ = writeln!(
                    r,
                    "#   NOT passed to {handler} (set on your runc entry): {}{}",
                    lost.join(", "),
                    if lost.iter().any(|l| l.starts_with("SystemdCgroup")) {
                        " — with the kubelet's systemd cgroup driver, use containerd >= 1.7.1 (runtime_path form) instead"
                    } else {
                        ""
                    }
                );
            }
        }
        Form::Path => {
            let _ = writeln!(
                r,
                "#   runtime_type = the real runtime, runtime_path = the wrapper link: containerd sends the real runtime's options unchanged (SystemdCgroup, BinaryName for gVisor)"
            );
            if input
                .plan
                .version
                .as_deref()
                .is_some_and(|v| version_triple(v) < RUNTIME_PATH_SINCE)
            {
                let _ = writeln!(
                    r,
                    "#   WARNING: containerd {version} ignores runtime_path: pods under these handlers run the real shim, untraced (`shimtrace install --check` shows it); drop --form to get the runtime-name form"
                );
            }
        }
    }
    for note in &input.plan.notes {
        let _ = writeln!(r, "#   {note}");
    }
    if input
        .merged
        .added
        .iter()
        .any(|p| p.last().map(String::as_str) == Some("runc"))
    {
        let _ = writeln!(
            r,
            "#   adds the default runtime entry runtimes.runc (runtime_type = \"{RUNC_RUNTIME}\"): a config that defines runtimes without it makes containerd 1.6 refuse to load CRI"
        );
    }
}

/// The merged containerd config, and whether and where it was written.
fn report_config(r: &mut String, input: &ReportInput<'_>) {
    let _ = writeln!(
        r,
        "\n# containerd config ({}, version {}):",
        if input.plan.drop_in {
            "drop-in"
        } else {
            "CRI runtimes"
        },
        input.merged.schema
    );
    r.push_str(input.snippet);
    if input.args.write {
        let _ = writeln!(
            r,
            "\n# written to {}{}; restart containerd to load it (systemctl restart containerd), then: shimtrace install --check",
            input.target.display(),
            input
                .backup
                .map(|b| format!(" (backup of {}: {})", input.args.config.display(), b.display()))
                .unwrap_or_default()
        );
        if let Some(backup) = input.drop_in_backup {
            let _ = writeln!(
                r,
                "# {} was edited since install wrote it: the entries were merged into it, your other edits kept (its copy from before: {})",
                input.target.display(),
                backup.display()
            );
        }
        let _ = writeln!(
            r,
            "# undo: shimtrace install --uninstall --config {} (removes exactly these entries; state in {})",
            input.args.config.display(),
            state_path(&input.args.config).display()
        );
    } else {
        let created = input.created_links.len();
        let _ = writeln!(
            r,
            "\n# only the links were made{}; this config was NOT written: pass --write to merge it into {} (a backup is kept)",
            match created {
                0 => " (all were already in place)".to_string(),
                n => format!(" ({n} created, marked above)"),
            },
            input.target.display()
        );
    }
}

/// install's tables taken out of the main config for the drop-in (or, printing, that would be),
/// and what stays in it.
fn report_moved(r: &mut String, input: &ReportInput<'_>) {
    let Some(main) = input.main else {
        return;
    };
    let config = input.args.config.display();
    if !main.moved.is_empty() {
        let names: Vec<String> = main.moved.iter().map(|p| table_name(p)).collect();
        let names = names.join(", ");
        if input.args.write {
            let _ = writeln!(
                r,
                "# moved out of {config}: {names} (install's, from an install for a containerd before 2.2, which wrote into the main config); the drop-in {} carries the traced runtimes now",
                input.target.display()
            );
        } else {
            let _ = writeln!(
                r,
                "# would move out of {config}: {names} (install's, from an install for a containerd before 2.2, which wrote into the main config): --write takes them out of it (a backup is kept) and writes the drop-in {} instead",
                input.target.display()
            );
        }
    }
    r.push_str(&main.notes);
}

/// The wrapper config's entries (runtime-name form's gVisor), and whether they were written.
fn report_wrapper_config(r: &mut String, input: &ReportInput<'_>) {
    let Some(wrapper_snippet) = input.wrapper_snippet else {
        return;
    };
    let config = input.args.wrapper_config.display();
    let _ = writeln!(
        r,
        "\n# wrapper config ({config}; containerd's SHIMTRACE_CONFIG must name it if it is not {DEFAULT_WRAPPER_CONFIG}):"
    );
    r.push_str(wrapper_snippet);
    if input.args.write {
        for runtime in input.kept_wrapper_entries {
            let _ = writeln!(
                r,
                "# NOT written: {config} already has an entry for {runtime}, not install's; left as it is (it must say the above for that handler to run gVisor)"
            );
        }
        if input.kept_wrapper_entries.is_empty() {
            let _ = writeln!(r, "# written to {config}");
        }
    } else {
        let _ = writeln!(r, "# not written: pass --write to merge this into {config}");
    }
}

/// What `--uninstall` removed.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct UninstallOutcome {
    pub removed_tables: usize,
    pub removed_links: Vec<PathBuf>,
    pub removed_files: Vec<PathBuf>,
    /// The copy of containerd's config made before it changed.
    pub backup: Option<PathBuf>,
    /// The copy of a drop-in edited since install wrote it, made before it changed.
    pub drop_in_backup: Option<PathBuf>,
    pub report: String,
}

/// A change uninstall makes to a file, decided once every file has been read.
enum Step {
    /// Replaces containerd's config (or the drop-in) with `text`, a copy kept first.
    Rewrite { path: PathBuf, text: String },
    /// Replaces the wrapper's config with `text`.
    RewriteWrapper { path: PathBuf, text: String },
    /// Removes the file.
    Remove { path: PathBuf },
}

/// Reads a file uninstall may change: `None` when it is gone; any other failure stops uninstall
/// before it changes anything.
fn read_for_uninstall(path: &Path) -> Result<Option<String>, InstallError> {
    match fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(InstallError::Unreadable {
            path: path.to_path_buf(),
            source,
            what_to_do:
                "uninstall changed nothing: make it readable (run as root) and run it again",
        }),
    }
}

/// Whether a table carries install's marker comment above its header.
fn has_marker(table: &Table) -> bool {
    table
        .decor()
        .prefix()
        .and_then(|p| p.as_str())
        .is_some_and(|p| p.contains(MARKER))
}

/// Which of install's tables a file holds: all that `state.tables` lists (`Listed`), or only
/// those that also carry the marker (`ListedAndMarked`: a file the state does not say the tables
/// went into, or a move), so that a table written there by hand is never taken for install's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ours {
    Listed,
    ListedAndMarked,
}

/// Whether `doc` holds install's table at `key_path` (one the state lists), as [`Ours`] says.
fn holds_ours(doc: &DocumentMut, key_path: &[String], ours_are: Ours) -> bool {
    let keys: Vec<&str> = key_path.iter().map(String::as_str).collect();
    match get_at(doc.as_table(), &keys) {
        None => false,
        Some(_) if ours_are == Ours::Listed => true,
        Some(item) => item.as_table().is_some_and(has_marker),
    }
}

/// `text` without the tables install added (`state.tables`, see [`Ours`]), and the key paths of
/// those that went. The default runtime entry install added stays while other runtimes still
/// need it.
fn remove_installed(
    text: &str,
    path: &Path,
    state: &InstallState,
    ours_are: Ours,
    report: &mut String,
) -> Result<(DocumentMut, Vec<Vec<String>>), InstallError> {
    let mut doc = parse_doc(text, path)?;
    let (runc, ours): (Vec<Vec<String>>, Vec<Vec<String>>) = state
        .tables
        .iter()
        .filter(|p| holds_ours(&doc, p, ours_are))
        .cloned()
        .partition(|p| p.last().map(String::as_str) == Some("runc"));
    remove_tables(&mut doc, &ours);
    let mut removed = ours;
    for runc_path in &runc {
        let parent: Vec<&str> = runc_path[..runc_path.len() - 1]
            .iter()
            .map(String::as_str)
            .collect();
        let others = get_at(doc.as_table(), &parent)
            .and_then(Item::as_table_like)
            .map(|t| t.iter().filter(|(name, _)| *name != "runc").count())
            .unwrap_or(0);
        if others == 0 {
            remove_tables(&mut doc, std::slice::from_ref(runc_path));
            removed.push(runc_path.clone());
        } else {
            let _ = writeln!(
                report,
                "# kept runtimes.runc (added by install): other runtimes are defined now, and containerd 1.6 needs it beside them"
            );
        }
    }
    Ok((doc, removed))
}

/// Whether the drop-in at `path`, reading `text`, holds nothing but what install added to it (as
/// `state` lists): then install may replace or remove it whole. Edits inside install's own tables
/// go with them, as in the main config.
fn drop_in_is_ours(text: &str, path: &Path, state: &InstallState) -> bool {
    state.drop_in.as_deref() == Some(path)
        && remove_installed(text, path, state, Ours::Listed, &mut String::new())
            .is_ok_and(|(doc, _)| only_version(&doc))
}

/// Whether a config holds nothing but (at most) its `version`.
fn only_version(doc: &DocumentMut) -> bool {
    doc.as_table().iter().all(|(key, _)| key == "version")
}

/// Runs `shimtrace install --uninstall`: removes the tables, imports entry, drop-in and links the
/// state beside `args.config` lists, and the state file; everything else stays as it is now.
/// Every file is read before any changes: one that cannot be read stops it with nothing removed.
pub fn uninstall(args: &InstallArgs) -> Result<UninstallOutcome, InstallError> {
    let state_file = state_path(&args.config);
    let state = read_state(&state_file)?.ok_or_else(|| InstallError::NoState {
        path: state_file.clone(),
        config: args.config.clone(),
    })?;
    let mut outcome = UninstallOutcome::default();
    let mut report = String::new();
    let mut steps = Vec::new();
    // The main config first: it stops importing the drop-in before the drop-in goes, so that a
    // failure between the two leaves an unused file, not an import of a missing one.
    let (main, ours) = main_config_of(&state, &args.config);
    if let Some(step) = uninstall_main(&main, ours, &state, &mut outcome, &mut report)? {
        steps.push(step);
    }
    if let Some(drop_in) = &state.drop_in {
        uninstall_drop_in(drop_in, &state, &mut steps, &mut outcome, &mut report)?;
    }
    if let Some(path) = &state.wrapper_config {
        if let Some(step) = uninstall_wrapper_entries(path, &state, &mut report)? {
            steps.push(step);
        }
    }

    for step in steps {
        match step {
            Step::Rewrite { path, text } => {
                let backup = write_config_with_backup(&path, &text)?;
                if state.drop_in.as_ref() == Some(&path) {
                    outcome.drop_in_backup = backup;
                } else {
                    outcome.backup = backup;
                }
            }
            Step::RewriteWrapper { path, text } => write_wrapper_config(&path, &text)?,
            Step::Remove { path } => {
                fs::remove_file(&path).map_err(io_err("cannot remove", &path))?;
                outcome.removed_files.push(path);
            }
        }
    }
    // The links install recorded, and any other wrapper link beside them (a run without --write
    // makes them too).
    let mut links = state.links.clone();
    let dirs: BTreeSet<PathBuf> = state
        .links
        .iter()
        .filter_map(|l| l.parent().map(Path::to_path_buf))
        .collect();
    for dir in dirs {
        for entry in fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = entry.path();
            let traced = entry
                .file_name()
                .to_str()
                .is_some_and(|n| n.starts_with(shimtrace_span::naming::WRAPPER_PREFIX));
            if traced && !links.contains(&path) {
                links.push(path);
            }
        }
    }
    for link in &links {
        let ours = fs::symlink_metadata(link).is_ok_and(|m| m.file_type().is_symlink())
            && state
                .wrapper
                .as_ref()
                .is_none_or(|w| fs::read_link(link).ok().as_deref() == Some(w.as_path()));
        if ours {
            fs::remove_file(link).map_err(io_err("cannot remove", link))?;
            outcome.removed_links.push(link.clone());
        }
    }
    for file in &outcome.removed_files {
        let _ = writeln!(report, "# removed {}", file.display());
    }
    for link in &outcome.removed_links {
        let _ = writeln!(report, "# removed {}", link.display());
    }
    if let Some(backup) = &outcome.backup {
        let _ = writeln!(
            report,
            "# backup of the previous config: {}",
            backup.display()
        );
    }
    if let Some(backup) = &outcome.drop_in_backup {
        let _ = writeln!(
            report,
            "# copy of the edited drop-in from before: {}",
            backup.display()
        );
    }
    fs::remove_file(&state_file).map_err(io_err("cannot remove", &state_file))?;
    let _ = writeln!(
        report,
        "# restart containerd to unload the traced handlers (systemctl restart containerd); delete their RuntimeClasses"
    );
    outcome.report = report;
    Ok(outcome)
}

/// The main config of an install whose state is beside `config`, and how install's tables are
/// recognised in it (see [`Ours`]): the file the state's tables went into, as the state lists
/// them, while it never wrote a drop-in; else `config` itself, with only listed tables that still
/// carry the marker (an install for containerd 2.2 or later, perhaps after one for an older
/// containerd that wrote into the main config).
fn main_config_of(state: &InstallState, config: &Path) -> (PathBuf, Ours) {
    if state.drop_in.is_none() && !state.config.as_os_str().is_empty() {
        (state.config.clone(), Ours::Listed)
    } else {
        (config.to_path_buf(), Ours::ListedAndMarked)
    }
}

/// Plans taking install's additions out of the main config at `main`: its `imports` entry of the
/// drop-in, and install's tables whatever form the state is in (an install for containerd 2.1
/// followed by one for 2.2 leaves the state naming the drop-in); the file itself goes if install
/// created it and nothing else is in it now.
fn uninstall_main(
    main: &Path,
    ours: Ours,
    state: &InstallState,
    outcome: &mut UninstallOutcome,
    report: &mut String,
) -> Result<Option<Step>, InstallError> {
    let Some(text) = read_for_uninstall(main)? else {
        return Ok(None);
    };
    let mut new_text = text.clone();
    if let (Some(_), Some(entry)) = (&state.drop_in, &state.import_added) {
        new_text = remove_import(&new_text, main, entry)?;
        if new_text != text {
            let _ = writeln!(
                report,
                "# removed imports entry {entry:?} from {}",
                main.display()
            );
        }
    }
    let (mut doc, removed) = remove_installed(&new_text, main, state, ours, report)?;
    outcome.removed_tables += removed.len();
    if ours == Ours::Listed || !removed.is_empty() {
        let _ = writeln!(
            report,
            "# removed {} table(s) from {}",
            removed.len(),
            main.display()
        );
    }
    if !removed.is_empty() {
        new_text = doc.to_string();
    }
    if state.version_added && only_version(&doc) {
        doc.remove("version");
        new_text = doc.to_string();
    }
    Ok(file_step(
        main,
        &text,
        new_text,
        state.created_file,
        |path, text| Step::Rewrite { path, text },
    ))
}

/// The step that takes the file at `path` from `text` to `new_text`: removed when install created
/// it and nothing is left in it, rewritten (the step `rewrite` makes) when it changed.
fn file_step(
    path: &Path,
    text: &str,
    new_text: String,
    created: bool,
    rewrite: impl FnOnce(PathBuf, String) -> Step,
) -> Option<Step> {
    if created && new_text.trim().is_empty() {
        Some(Step::Remove {
            path: path.to_path_buf(),
        })
    } else if new_text != text {
        Some(rewrite(path.to_path_buf(), new_text))
    } else {
        None
    }
}

/// Plans taking the drop-in back: removed whole while it holds nothing but install's tables
/// ([`drop_in_is_ours`]); otherwise only those go, a copy of it kept first.
fn uninstall_drop_in(
    drop_in: &Path,
    state: &InstallState,
    steps: &mut Vec<Step>,
    outcome: &mut UninstallOutcome,
    report: &mut String,
) -> Result<(), InstallError> {
    let Some(text) = read_for_uninstall(drop_in)? else {
        return Ok(());
    };
    // (`drop_in` is the state's own, so this is `drop_in_is_ours`, without parsing twice.)
    let (doc, removed) = remove_installed(&text, drop_in, state, Ours::Listed, report)?;
    if only_version(&doc) {
        steps.push(Step::Remove {
            path: drop_in.to_path_buf(),
        });
        return Ok(());
    }
    let removed = removed.len();
    outcome.removed_tables += removed;
    let _ = writeln!(
        report,
        "# {} was edited since install wrote it: removed install's {removed} table(s) from it, kept the rest",
        drop_in.display()
    );
    steps.push(Step::Rewrite {
        path: drop_in.to_path_buf(),
        text: doc.to_string(),
    });
    Ok(())
}

/// Plans taking out the runtimes install added to the wrapper's config at `path`, and the file
/// itself if install created it and nothing else is in it now.
fn uninstall_wrapper_entries(
    path: &Path,
    state: &InstallState,
    report: &mut String,
) -> Result<Option<Step>, InstallError> {
    let Some(text) = read_for_uninstall(path)? else {
        return Ok(None);
    };
    let mut doc = parse_doc(&text, path)?;
    let tables: Vec<Vec<String>> = state
        .wrapper_runtimes
        .iter()
        .map(|runtime| vec!["runtimes".to_string(), runtime.clone()])
        .collect();
    let removed = remove_tables(&mut doc, &tables);
    let new_text = doc.to_string();
    let _ = writeln!(
        report,
        "# removed {removed} runtime entr{} from {}",
        if removed == 1 { "y" } else { "ies" },
        path.display()
    );
    Ok(file_step(
        path,
        &text,
        new_text,
        state.wrapper_config_created,
        |path, text| Step::RewriteWrapper { path, text },
    ))
}

/// The handlers a config file registers (name, runtime_type, runtime_path), for every schema.
pub fn configured_handlers(text: &str) -> Vec<(String, String, String)> {
    let Ok(doc) = text.parse::<DocumentMut>() else {
        return Vec::new();
    };
    let mut found = Vec::new();
    let mut seen = BTreeSet::new();
    for schema in [2, 3] {
        let Some(runtimes) =
            get_at(doc.as_table(), &cri_runtimes_path(schema)).and_then(Item::as_table_like)
        else {
            continue;
        };
        for (name, item) in runtimes.iter() {
            if !seen.insert(name.to_string()) {
                continue;
            }
            let field = |key: &str| {
                item.get(key)
                    .and_then(Item::as_str)
                    .unwrap_or_default()
                    .to_string()
            };
            found.push((
                name.to_string(),
                field("runtime_type"),
                field("runtime_path"),
            ));
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn runc(path: &str) -> TracedRuntime {
        TracedRuntime {
            handler: "traced-runc".into(),
            runtime_type: "io.containerd.runc.v2".into(),
            runtime_path: Some(path.into()),
            real_runtime: "io.containerd.runc.v2".into(),
            carry_options: true,
            binary_name: None,
            wrapper_entry: None,
        }
    }

    fn runc_by_name() -> TracedRuntime {
        TracedRuntime::for_shim(
            "traced-runc".into(),
            &ShimName {
                inner: "runc".into(),
                version: "v2".into(),
            },
            Path::new("/b/containerd-shim-traced-runc-v2"),
            Form::Name,
        )
    }

    fn parse_name(name: &str) -> Option<(String, String)> {
        ShimName::parse_binary(name).map(|n| (n.inner, n.version))
    }

    /// Debian bookworm's /etc/containerd/config.toml (package containerd 1.6.20~ds1-1+deb12u3).
    const DEBIAN_STOCK: &str = "version = 2\n\n[plugins]\n  [plugins.\"io.containerd.grpc.v1.cri\"]\n    [plugins.\"io.containerd.grpc.v1.cri\".cni]\n      bin_dir = \"/usr/lib/cni\"\n      conf_dir = \"/etc/cni/net.d\"\n  [plugins.\"io.containerd.internal.v1.opt\"]\n    path = \"/var/lib/containerd/opt\"\n";

    #[test]
    fn parses_shim_names() {
        assert_eq!(
            parse_name("containerd-shim-runc-v2"),
            Some(("runc".into(), "v2".into()))
        );
        assert_eq!(
            parse_name("containerd-shim-kata-qemu-v2"),
            Some(("kata-qemu".into(), "v2".into()))
        );
        assert_eq!(parse_name("containerd-shim-traced-runc-v2"), None);
        assert_eq!(parse_name("containerd-shim-runc-v2-rs"), None);
        assert_eq!(parse_name("containerd"), None);
    }

    /// An executable script at `path` that does nothing: a stand-in shim or runsc.
    fn executable(path: &Path) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        fs::write(path, "#!/bin/sh\n").unwrap();
        fs::set_permissions(path, fs::Permissions::from_mode(0o755)).unwrap();
        path.to_path_buf()
    }

    #[test]
    fn real_shims_are_found_first_on_path_and_never_ours() {
        let first = tempfile::tempdir().unwrap();
        let second = tempfile::tempdir().unwrap();
        let make = |dir: &Path, name: &str| executable(&dir.join(name));
        let runc = make(first.path(), "containerd-shim-runc-v2");
        make(first.path(), "containerd-shim-traced-runc-v2");
        make(second.path(), "containerd-shim-runc-v2");
        let kata = make(second.path(), "containerd-shim-kata-qemu-v2");
        make(second.path(), "containerd");
        let path = std::env::join_paths([first.path(), second.path()]).unwrap();
        let found: Vec<(String, PathBuf)> = find_real_shims(&path)
            .into_iter()
            .map(|s| (s.name.binary(), s.path))
            .collect();
        assert_eq!(
            found,
            [
                ("containerd-shim-runc-v2".to_string(), runc),
                ("containerd-shim-kata-qemu-v2".to_string(), kata),
            ]
        );
    }

    #[test]
    fn the_form_follows_the_version() {
        assert_eq!(Form::for_version("1.6.20"), Form::Name);
        assert_eq!(Form::for_version("1.6.38"), Form::Name);
        assert_eq!(Form::for_version("1.7.0"), Form::Name);
        assert_eq!(Form::for_version("1.7.1"), Form::Path);
        assert_eq!(Form::for_version("1.7.24"), Form::Path);
        assert_eq!(Form::for_version("2.1.9"), Form::Path);
    }

    #[test]
    fn snippet_for_v2_and_v3() {
        let v2 = merge_config(
            "",
            2,
            &[runc("/b/containerd-shim-traced-runc-v2")],
            Path::new("x"),
        )
        .unwrap()
        .text;
        assert!(v2.starts_with("version = 2\n"), "{v2}");
        assert!(
            v2.contains(r#"[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.traced-runc]"#),
            "{v2}"
        );
        assert!(v2.contains(r#"runtime_type = "io.containerd.runc.v2""#));
        assert!(v2.contains(r#"runtime_path = "/b/containerd-shim-traced-runc-v2""#));
        let v3 = merge_config("", 3, &[runc("/b/w")], Path::new("x"))
            .unwrap()
            .text;
        assert!(
            v3.contains(
                r#"[plugins."io.containerd.cri.v1.runtime".containerd.runtimes.traced-runc]"#
            ),
            "{v3}"
        );
    }

    #[test]
    fn the_name_form_names_the_wrapper_and_drops_runc_options() {
        let existing = "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.runc]\n  runtime_type = \"io.containerd.runc.v2\"\n  [plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.runc.options]\n    SystemdCgroup = true\n    BinaryName = \"\"\n";
        let merged = merge_config(existing, 2, &[runc_by_name()], Path::new("x")).unwrap();
        let parsed: toml::Value = toml::from_str(&merged.text).unwrap();
        let traced = &parsed["plugins"]["io.containerd.grpc.v1.cri"]["containerd"]["runtimes"]
            ["traced-runc"];
        assert_eq!(
            traced["runtime_type"].as_str(),
            Some("io.containerd.traced-runc.v2")
        );
        assert!(traced.get("runtime_path").is_none());
        assert!(traced.get("options").is_none(), "{}", merged.text);
        assert_eq!(
            merged.dropped_options,
            [(
                "traced-runc".to_string(),
                vec!["SystemdCgroup = true".to_string()]
            )]
        );
        // Other shims' options are generic either way: they pass.
        let kata = TracedRuntime::for_shim(
            "traced-kata".into(),
            &ShimName {
                inner: "kata".into(),
                version: "v2".into(),
            },
            Path::new("/b/containerd-shim-traced-kata-v2"),
            Form::Name,
        );
        assert!(kata.carry_options);
        assert_eq!(kata.runtime_type, "io.containerd.traced-kata.v2");
    }

    #[test]
    fn merge_keeps_comments_and_carries_the_real_runtimes_options() {
        let existing = r#"# my settings
version = 2
[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"
  [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
    SystemdCgroup = true
"#;
        let mut gvisor = runc("/b/w");
        gvisor.handler = "traced-runsc".into();
        gvisor.binary_name = Some("/usr/bin/runsc".into());
        let merged = merge_config(existing, 2, &[runc("/b/w"), gvisor], Path::new("x"))
            .unwrap()
            .text;
        assert!(merged.starts_with("# my settings\n"));
        let parsed: toml::Value = toml::from_str(&merged).unwrap();
        let runtimes = &parsed["plugins"]["io.containerd.grpc.v1.cri"]["containerd"]["runtimes"];
        assert_eq!(
            runtimes["runc"]["options"]["SystemdCgroup"].as_bool(),
            Some(true)
        );
        assert_eq!(
            runtimes["traced-runc"]["options"]["SystemdCgroup"].as_bool(),
            Some(true)
        );
        assert_eq!(
            runtimes["traced-runc"]["runtime_path"].as_str(),
            Some("/b/w")
        );
        assert_eq!(
            runtimes["traced-runsc"]["options"]["BinaryName"].as_str(),
            Some("/usr/bin/runsc")
        );
        // Merging twice changes nothing more.
        let again = merge_config(&merged, 2, &[runc("/b/w")], Path::new("x"))
            .unwrap()
            .text;
        assert_eq!(
            toml::from_str::<toml::Value>(&again).unwrap()["plugins"],
            toml::from_str::<toml::Value>(&merged).unwrap()["plugins"]
        );
    }

    #[test]
    fn a_config_without_runc_gets_the_default_runtime_too() {
        let merged = merge_config(DEBIAN_STOCK, 2, &[runc_by_name()], Path::new("x")).unwrap();
        let parsed: toml::Value = toml::from_str(&merged.text).unwrap();
        let cri = &parsed["plugins"]["io.containerd.grpc.v1.cri"];
        assert_eq!(
            cri["containerd"]["runtimes"]["runc"]["runtime_type"].as_str(),
            Some("io.containerd.runc.v2")
        );
        assert_eq!(cri["cni"]["bin_dir"].as_str(), Some("/usr/lib/cni"));
        assert_eq!(merged.added.len(), 2, "{:?}", merged.added);
        assert!(merged.text.contains(MARKER));
        // A config that names another default runtime keeps it alone.
        let crun = "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".containerd]\n  default_runtime_name = \"crun\"\n";
        let merged = merge_config(crun, 2, &[runc_by_name()], Path::new("x")).unwrap();
        assert_eq!(merged.added.len(), 1);
        // 2.x reads a version 2 config (and migrates it): the entries follow its schema.
        let merged = merge_config(DEBIAN_STOCK, 3, &[runc("/b/w")], Path::new("x")).unwrap();
        assert_eq!(merged.schema, 2);
        assert!(merged
            .text
            .contains(r#"[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.traced-runc]"#));
    }

    #[test]
    fn refuses_wrong_version_and_bad_toml() {
        let err = merge_config("version = 3\n", 2, &[runc("/w")], Path::new("/c")).unwrap_err();
        assert!(matches!(err, InstallError::ConfigVersion { found: 3, .. }));
        let err =
            merge_config("[plugins]\nx = 1\n", 2, &[runc("/w")], Path::new("/c")).unwrap_err();
        assert!(matches!(err, InstallError::ConfigVersion { found: 1, .. }));
        let err = merge_config("version = = 2", 2, &[runc("/w")], Path::new("/c")).unwrap_err();
        assert!(matches!(err, InstallError::BadConfig { .. }));
    }

    /// The advice fits the case: a newer config than install writes for means install took the
    /// containerd for an older one; containerd 1.x has no `config migrate`.
    #[test]
    fn the_version_advice_fits_the_case() {
        let advice = |text: &str, expected: u32| {
            merge_config(text, expected, &[runc("/w")], Path::new("/c"))
                .unwrap_err()
                .to_string()
        };
        let newer = advice("version = 3\n", 2);
        assert!(
            newer.contains("--containerd-version") && newer.contains("--config-version 3"),
            "{newer}"
        );
        assert!(!newer.contains("migrate"), "{newer}");
        let v1_on_1x = advice("[plugins.cri]\nx = 1\n", 2);
        assert!(
            v1_on_1x.contains("has no `config migrate`") && v1_on_1x.contains("version = 2"),
            "{v1_on_1x}"
        );
        let v1_on_2x = advice("[plugins.cri]\nx = 1\n", 3);
        assert!(
            v1_on_2x.contains("run `containerd --config /c config migrate"),
            "{v1_on_2x}"
        );
        let unknown = advice("version = 4\n", 3);
        assert!(unknown.contains("no containerd reads"), "{unknown}");
    }

    /// Users write entries as inline tables too: their settings are carried like any others.
    #[test]
    fn inline_entries_and_options_are_carried_over() {
        let forms = [
            "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.runc]\n  runtime_type = \"io.containerd.runc.v2\"\n  options = { SystemdCgroup = true, Root = \"/run/r\" }\n",
            "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes]\n  runc = { runtime_type = \"io.containerd.runc.v2\", privileged_without_host_devices = true, options = { SystemdCgroup = true, Root = \"/run/r\" } }\n",
            "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".containerd]\n  runtimes = { runc = { runtime_type = \"io.containerd.runc.v2\", options = { SystemdCgroup = true, Root = \"/run/r\" } } }\n",
        ];
        for existing in forms {
            let merged = merge_config(existing, 2, &[runc("/b/w")], Path::new("x")).unwrap();
            let parsed: toml::Value = toml::from_str(&merged.text).unwrap();
            let runtimes =
                &parsed["plugins"]["io.containerd.grpc.v1.cri"]["containerd"]["runtimes"];
            let traced = &runtimes["traced-runc"];
            assert_eq!(
                traced["options"]["SystemdCgroup"].as_bool(),
                Some(true),
                "{existing}\n{}",
                merged.text
            );
            assert_eq!(traced["options"]["Root"].as_str(), Some("/run/r"));
            assert_eq!(traced["runtime_path"].as_str(), Some("/b/w"));
            // The user's own entry stays as it was, and needs no default runc beside it.
            assert_eq!(
                runtimes["runc"]["options"]["SystemdCgroup"].as_bool(),
                Some(true)
            );
            assert_eq!(merged.added.len(), 1, "{:?}", merged.added);
            // The name form lists them as not passed, instead of dropping them unsaid.
            let merged = merge_config(existing, 2, &[runc_by_name()], Path::new("x")).unwrap();
            assert_eq!(
                merged.dropped_options,
                [(
                    "traced-runc".to_string(),
                    vec![
                        "SystemdCgroup = true".to_string(),
                        "Root = \"/run/r\"".to_string()
                    ]
                )],
                "{existing}"
            );
        }
        let merged = merge_config(forms[1], 2, &[runc("/b/w")], Path::new("x")).unwrap();
        let parsed: toml::Value = toml::from_str(&merged.text).unwrap();
        assert_eq!(
            parsed["plugins"]["io.containerd.grpc.v1.cri"]["containerd"]["runtimes"]["traced-runc"]
                ["privileged_without_host_devices"]
                .as_bool(),
            Some(true)
        );
    }

    /// An inline `runtimes` keeps its entries; anything else where a table must go stops install
    /// naming the key, never overwritten.
    #[test]
    fn a_non_table_where_entries_go_is_named_not_replaced() {
        let inline = "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".containerd]\n  runtimes = { mine = { runtime_type = \"io.containerd.kata.v2\" } }\n";
        let merged = merge_config(inline, 2, &[runc("/b/w")], Path::new("x")).unwrap();
        let parsed: toml::Value = toml::from_str(&merged.text).unwrap();
        let runtimes = &parsed["plugins"]["io.containerd.grpc.v1.cri"]["containerd"]["runtimes"];
        assert_eq!(
            runtimes["mine"]["runtime_type"].as_str(),
            Some("io.containerd.kata.v2")
        );
        assert!(runtimes.get("traced-runc").is_some() && runtimes.get("runc").is_some());
        let stringly = "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".containerd]\n  runtimes = \"runc\"\n";
        let err = merge_config(stringly, 2, &[runc("/b/w")], Path::new("/c")).unwrap_err();
        assert!(
            matches!(&err, InstallError::NotATable { key, found: "string", .. }
                if key == "plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes"),
            "{err}"
        );
        assert!(err.to_string().contains("make it a table"), "{err}");

        let entry = WrapperEntry {
            runtime: "io.containerd.traced-runsc.v2".into(),
            link: "/b/containerd-shim-traced-runsc-v2".into(),
            inner: "/usr/bin/containerd-shim-runc-v2".into(),
            oci_runtime: "/usr/bin/runsc".into(),
        };
        let mine = "runtimes = { \"io.containerd.traced-kata.v2\" = { inner = \"/opt/kata\" } }\n";
        let (text, added, _) =
            merge_wrapper_config(mine, std::slice::from_ref(&entry), &[], Path::new("/w")).unwrap();
        let parsed: toml::Value = toml::from_str(&text).unwrap();
        assert_eq!(
            parsed["runtimes"]["io.containerd.traced-kata.v2"]["inner"].as_str(),
            Some("/opt/kata")
        );
        assert_eq!(added, ["io.containerd.traced-runsc.v2"]);
        let err =
            merge_wrapper_config("runtimes = []\n", &[entry], &[], Path::new("/w")).unwrap_err();
        assert!(
            matches!(&err, InstallError::NotATable { key, found: "array", .. } if key == "runtimes"),
            "{err}"
        );
    }

    #[test]
    fn backup_then_write_and_symlinks_never_clobber_files() {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("config.toml");
        fs::write(&config, "version = 2\n").unwrap();
        let backup = write_config_with_backup(&config, "version = 2\n# new\n")
            .unwrap()
            .unwrap();
        assert_eq!(fs::read_to_string(&backup).unwrap(), "version = 2\n");
        assert_eq!(fs::read_to_string(&config).unwrap(), "version = 2\n# new\n");

        let target = dir.path().join("wrapper");
        fs::write(&target, "").unwrap();
        let link = dir.path().join("containerd-shim-traced-runc-v2");
        assert!(ensure_symlink(&link, &target).unwrap());
        assert!(!ensure_symlink(&link, &target).unwrap());
        let file = dir.path().join("plain");
        fs::write(&file, "").unwrap();
        assert!(matches!(
            ensure_symlink(&file, &target),
            Err(InstallError::NotSymlink { .. })
        ));
    }

    #[test]
    fn older_versions_get_their_own_handler() {
        let shim = |v: &str| RealShim {
            name: ShimName {
                inner: "runc".into(),
                version: v.into(),
            },
            path: format!("/usr/bin/containerd-shim-runc-{v}").into(),
        };
        let all = [shim("v1"), shim("v2")];
        assert_eq!(all[0].handler(&all), "traced-runc-v1");
        assert_eq!(all[1].handler(&all), "traced-runc");
    }

    #[test]
    fn runtime_class_names_the_handler() {
        let yaml = runtime_class_yaml("traced-runc");
        assert!(yaml.contains("kind: RuntimeClass") && yaml.contains("handler: traced-runc"));
    }

    #[test]
    fn gvisor_through_runc_in_either_form() {
        let shims = [RealShim {
            name: ShimName {
                inner: "runc".into(),
                version: "v2".into(),
            },
            path: "/usr/bin/containerd-shim-runc-v2".into(),
        }];
        let runsc = Path::new("/usr/bin/runsc");
        let (path, _) = plan_runtimes(&shims, Path::new("/b"), Form::Path, Some(runsc));
        let handlers: Vec<&str> = path.iter().map(|r| r.handler.as_str()).collect();
        assert_eq!(handlers, ["traced-runc", "traced-runsc"]);
        assert_eq!(path[1].binary_name.as_deref(), Some("/usr/bin/runsc"));
        // The name form cannot pass BinaryName: its own runtime name, mapped by the wrapper's
        // config to the runc shim running runsc as `runc`.
        let (name, notes) = plan_runtimes(&shims, Path::new("/b"), Form::Name, Some(runsc));
        let handlers: Vec<&str> = name.iter().map(|r| r.handler.as_str()).collect();
        assert_eq!(handlers, ["traced-runc", "traced-runsc"]);
        let gvisor = &name[1];
        assert_eq!(gvisor.runtime_type, "io.containerd.traced-runsc.v2");
        assert_eq!(gvisor.runtime_path, None);
        assert_eq!(gvisor.real_runtime, RUNC_RUNTIME);
        assert!(!gvisor.carry_options);
        assert_eq!(gvisor.binary_name, None);
        assert_eq!(
            gvisor.wrapper_entry,
            Some(WrapperEntry {
                runtime: "io.containerd.traced-runsc.v2".into(),
                link: "/b/containerd-shim-traced-runsc-v2".into(),
                inner: "/usr/bin/containerd-shim-runc-v2".into(),
                oci_runtime: runsc.into(),
            })
        );
        assert!(
            notes[0].contains("BinaryName") && notes[0].contains("oci_runtime"),
            "{notes:?}"
        );
        assert!(path.iter().all(|r| r.wrapper_entry.is_none()));
        // Without a runsc, no gVisor handler in either form.
        for form in [Form::Name, Form::Path] {
            assert_eq!(
                plan_runtimes(&shims, Path::new("/b"), form, None).0.len(),
                1
            );
        }
        // gVisor's own shim is wrapped instead of the runc-shim handler.
        let mut with_runsc_shim = shims.to_vec();
        with_runsc_shim.push(RealShim {
            name: ShimName {
                inner: "runsc".into(),
                version: "v1".into(),
            },
            path: "/usr/bin/containerd-shim-runsc-v1".into(),
        });
        let (both, _) = plan_runtimes(&with_runsc_shim, Path::new("/b"), Form::Name, Some(runsc));
        let handlers: Vec<&str> = both.iter().map(|r| r.handler.as_str()).collect();
        assert_eq!(handlers, ["traced-runc", "traced-runsc"]);
        assert_eq!(both[1].runtime_type, "io.containerd.traced-runsc.v1");
    }

    /// A fake shim dir and wrapper for install() runs.
    struct Fixture {
        dir: tempfile::TempDir,
    }

    impl Fixture {
        fn new() -> Fixture {
            let dir = tempfile::tempdir().unwrap();
            let shims = dir.path().join("shims");
            fs::create_dir_all(&shims).unwrap();
            executable(&shims.join("containerd-shim-runc-v2"));
            fs::create_dir_all(dir.path().join("bin")).unwrap();
            fs::write(dir.path().join("bin").join(WRAPPER_BINARY), "").unwrap();
            fs::create_dir_all(dir.path().join("etc")).unwrap();
            // A runsc of its own: --runsc must name an executable file.
            let gvisor = dir.path().join("gvisor");
            fs::create_dir_all(&gvisor).unwrap();
            executable(&gvisor.join("runsc"));
            Fixture { dir }
        }

        fn runsc(&self) -> PathBuf {
            self.dir.path().join("gvisor/runsc")
        }

        fn bin(&self) -> PathBuf {
            self.dir.path().join("bin")
        }

        fn config(&self) -> PathBuf {
            self.dir.path().join("etc/config.toml")
        }

        /// Where install puts its drop-in beside this config (containerd 2.2+).
        fn drop_in(&self) -> PathBuf {
            drop_in_path(&self.config())
        }

        fn wrapper_config(&self) -> PathBuf {
            self.dir.path().join("etc/shimtrace/config.toml")
        }

        fn args(&self, version: &str, extra: &[&str]) -> InstallArgs {
            use clap::Parser;
            #[derive(clap::Parser)]
            struct Cli {
                #[command(flatten)]
                args: InstallArgs,
            }
            let wrapper = self.dir.path().join("bin").join(WRAPPER_BINARY);
            let shims = self.dir.path().join("shims");
            let config = self.config();
            let wrapper_config = self.wrapper_config();
            let runsc = self.runsc();
            let mut argv = vec![
                "install",
                "--wrapper",
                wrapper.to_str().unwrap(),
                "--config",
                config.to_str().unwrap(),
                "--containerd-version",
                version,
                "--shim-path",
                shims.to_str().unwrap(),
                "--runsc",
                runsc.to_str().unwrap(),
                "--wrapper-config",
                wrapper_config.to_str().unwrap(),
            ];
            argv.extend_from_slice(extra);
            Cli::parse_from(argv).args
        }
    }

    #[test]
    fn uninstall_removes_exactly_what_install_added() {
        let fx = Fixture::new();
        fs::write(fx.config(), DEBIAN_STOCK).unwrap();
        let outcome = install(&fx.args("1.6.20", &["--write"])).unwrap();
        assert_eq!(outcome.form, Form::Name);
        assert!(
            outcome.report.contains("runtime-name form"),
            "{}",
            outcome.report
        );
        let written = fs::read_to_string(fx.config()).unwrap();
        assert!(written.contains("io.containerd.traced-runc.v2"));
        // The user edits the config meanwhile: that edit stays.
        let edited = written.replace(
            "bin_dir = \"/usr/lib/cni\"",
            "bin_dir = \"/usr/lib/cni\"\n      max_conf_num = 2",
        );
        fs::write(fx.config(), &edited).unwrap();
        let link = fx.dir.path().join("bin/containerd-shim-traced-runc-v2");
        assert!(fs::symlink_metadata(&link).is_ok());
        // gVisor in the name form: its link, and its entry in the wrapper's config (made here).
        let gvisor_link = fx.dir.path().join("bin/containerd-shim-traced-runsc-v2");
        assert!(fs::symlink_metadata(&gvisor_link).is_ok());
        assert!(written.contains("io.containerd.traced-runsc.v2"));
        assert!(fx.wrapper_config().exists());

        let removed = uninstall(&fx.args("1.6.20", &["--uninstall"])).unwrap();
        assert_eq!(
            removed.removed_tables, 3,
            "traced-runc, traced-runsc and the default runc"
        );
        assert_eq!(removed.removed_links, [link.clone(), gvisor_link.clone()]);
        assert_eq!(removed.removed_files, [fx.wrapper_config()]);
        assert!(!fx.wrapper_config().exists());
        assert_eq!(
            fs::read_to_string(fx.config()).unwrap(),
            DEBIAN_STOCK.replace(
                "bin_dir = \"/usr/lib/cni\"",
                "bin_dir = \"/usr/lib/cni\"\n      max_conf_num = 2"
            )
        );
        assert!(fs::symlink_metadata(&link).is_err());
        assert!(!state_path(&fx.config()).exists());
        assert!(matches!(
            uninstall(&fx.args("1.6.20", &["--uninstall"])),
            Err(InstallError::NoState { .. })
        ));
    }

    /// The name form's gVisor entry in the wrapper's config: written as the wrapper reads it (a
    /// file only root may write), beside the user's entries, and taken out again exactly.
    #[test]
    fn the_wrapper_config_gets_the_gvisor_entry_and_loses_it_again() {
        use std::os::unix::fs::PermissionsExt;
        let fx = Fixture::new();
        fs::write(fx.config(), DEBIAN_STOCK).unwrap();
        fs::create_dir_all(fx.wrapper_config().parent().unwrap()).unwrap();
        let mine = "# mine\n[runtimes.\"io.containerd.traced-kata.v2\"]\ninner = \"/opt/kata/bin/containerd-shim-kata-v2\"\n";
        fs::write(fx.wrapper_config(), mine).unwrap();
        // Printed, not written, without --write.
        let printed = install(&fx.args("1.6.20", &[])).unwrap();
        assert!(
            printed
                .report
                .contains(&format!("oci_runtime = \"{}\"", fx.runsc().display()))
                && printed
                    .report
                    .contains("not written: pass --write to merge this into"),
            "{}",
            printed.report
        );
        assert_eq!(fs::read_to_string(fx.wrapper_config()).unwrap(), mine);

        let outcome = install(&fx.args("1.6.20", &["--write"])).unwrap();
        let text = fs::read_to_string(fx.wrapper_config()).unwrap();
        assert!(text.starts_with(mine) && text.contains(MARKER), "{text}");
        let parsed: toml::Value = toml::from_str(&text).unwrap();
        let entry = &parsed["runtimes"]["io.containerd.traced-runsc.v2"];
        let shim = fx.dir.path().join("shims/containerd-shim-runc-v2");
        assert_eq!(entry["inner"].as_str(), shim.to_str());
        assert_eq!(entry["oci_runtime"].as_str(), fx.runsc().to_str());
        let mode = fs::metadata(fx.wrapper_config())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o022, 0, "{mode:o}");
        assert!(
            outcome.report.contains("wrapper config"),
            "{}",
            outcome.report
        );
        // Again: nothing doubles.
        install(&fx.args("1.6.20", &["--write"])).unwrap();
        assert_eq!(fs::read_to_string(fx.wrapper_config()).unwrap(), text);

        uninstall(&fx.args("1.6.20", &["--uninstall"])).unwrap();
        assert_eq!(fs::read_to_string(fx.wrapper_config()).unwrap(), mine);

        // An entry of the user's own for the runtime is left as it is, and the report says so.
        let theirs = "[runtimes.\"io.containerd.traced-runsc.v2\"]\ninner = \"/x/shim\"\n";
        fs::write(fx.wrapper_config(), theirs).unwrap();
        let outcome = install(&fx.args("1.6.20", &["--write"])).unwrap();
        assert_eq!(fs::read_to_string(fx.wrapper_config()).unwrap(), theirs);
        assert!(
            outcome.report.contains("NOT written") && outcome.report.contains("left as it is"),
            "{}",
            outcome.report
        );
        uninstall(&fx.args("1.6.20", &["--uninstall"])).unwrap();
        assert_eq!(fs::read_to_string(fx.wrapper_config()).unwrap(), theirs);
    }

    #[test]
    fn the_path_form_leaves_the_wrapper_config_alone() {
        let fx = Fixture::new();
        install(&fx.args("1.7.24", &["--write"])).unwrap();
        assert!(!fx.wrapper_config().exists());
        let state = read_state(&state_path(&fx.config())).unwrap().unwrap();
        assert_eq!(state.wrapper_config, None);
    }

    #[test]
    fn uninstall_keeps_the_default_runtime_while_others_need_it() {
        let fx = Fixture::new();
        fs::write(fx.config(), DEBIAN_STOCK).unwrap();
        install(&fx.args("1.7.24", &["--write"])).unwrap();
        let mut text = fs::read_to_string(fx.config()).unwrap();
        text.push_str("\n[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.mine]\n  runtime_type = \"io.containerd.runc.v2\"\n");
        fs::write(fx.config(), &text).unwrap();
        let removed = uninstall(&fx.args("1.7.24", &["--uninstall"])).unwrap();
        assert_eq!(removed.removed_tables, 2, "traced-runc and traced-runsc");
        let parsed: toml::Value =
            toml::from_str(&fs::read_to_string(fx.config()).unwrap()).unwrap();
        let runtimes = &parsed["plugins"]["io.containerd.grpc.v1.cri"]["containerd"]["runtimes"];
        assert!(runtimes.get("runc").is_some() && runtimes.get("mine").is_some());
        assert!(runtimes.get("traced-runc").is_none());
    }

    #[test]
    fn a_created_config_is_removed_again() {
        let fx = Fixture::new();
        install(&fx.args("2.1.9", &["--write"])).unwrap();
        let text = fs::read_to_string(fx.config()).unwrap();
        assert!(text.starts_with("version = 3\n"), "{text}");
        assert!(text.contains("runtime_path"));
        uninstall(&fx.args("2.1.9", &["--uninstall"])).unwrap();
        assert!(!fx.config().exists());
    }

    #[test]
    fn containerd_2_2_gets_a_drop_in_and_one_imports_entry() {
        let fx = Fixture::new();
        let main = "version = 3\nroot = \"/var/lib/containerd\"\n\n[plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]\n  runtime_type = 'io.containerd.runc.v2'\n  [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]\n    SystemdCgroup = true\n";
        fs::write(fx.config(), main).unwrap();
        let outcome = install(&fx.args("2.2.0", &["--write"])).unwrap();
        // Where the drop-in goes, spelt out once: the other tests take it from `drop_in()`.
        let drop_in = fx.dir.path().join("etc/conf.d/shimtrace.toml");
        assert_eq!(outcome.written.as_deref(), Some(drop_in.as_path()));
        let dropped: toml::Value = toml::from_str(&fs::read_to_string(&drop_in).unwrap()).unwrap();
        assert_eq!(dropped["version"].as_integer(), Some(3));
        let runtimes =
            &dropped["plugins"]["io.containerd.cri.v1.runtime"]["containerd"]["runtimes"];
        assert_eq!(
            runtimes["traced-runc"]["runtime_path"].as_str(),
            Some(
                fx.dir
                    .path()
                    .join("bin/containerd-shim-traced-runc-v2")
                    .to_str()
                    .unwrap()
            )
        );
        assert!(runtimes.get("runc").is_none(), "the main config has runc");
        let main_now: toml::Value =
            toml::from_str(&fs::read_to_string(fx.config()).unwrap()).unwrap();
        assert_eq!(
            main_now["imports"].as_array().unwrap()[0].as_str(),
            Some(drop_in.to_str().unwrap())
        );
        // Installing again adds no second imports entry.
        install(&fx.args("2.2.0", &["--write"])).unwrap();
        let main_again: toml::Value =
            toml::from_str(&fs::read_to_string(fx.config()).unwrap()).unwrap();
        assert_eq!(main_again["imports"].as_array().unwrap().len(), 1);

        uninstall(&fx.args("2.2.0", &["--uninstall"])).unwrap();
        assert!(!drop_in.exists());
        assert_eq!(fs::read_to_string(fx.config()).unwrap(), main);
    }

    #[test]
    fn a_conf_d_glob_already_imports_the_drop_in() {
        let fx = Fixture::new();
        let glob = fx.dir.path().join("etc/conf.d/*.toml");
        let main = format!("version = 3\nimports = [\"{}\"]\n", glob.display());
        fs::write(fx.config(), &main).unwrap();
        install(&fx.args("2.2.1", &["--write"])).unwrap();
        assert_eq!(fs::read_to_string(fx.config()).unwrap(), main);
        let dropped = fs::read_to_string(fx.drop_in()).unwrap();
        assert!(dropped.contains("traced-runc"));
        // No runtimes in the main config: containerd's built-in runc stands.
        assert!(!dropped.contains("runtimes.runc]"), "{dropped}");
    }

    /// The drop-in's traced handlers get the settings of the real runtime's entry in the main
    /// config, as the other forms do. The drop-in is in the main config's schema (version 2
    /// here): containerd merges the files before it migrates them, and would skip the migration of
    /// a version 2 main config beside a version 3 drop-in.
    #[test]
    fn the_drop_in_carries_the_main_configs_runtime_settings() {
        let fx = Fixture::new();
        let main = "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.runc]\n  runtime_type = \"io.containerd.runc.v2\"\n  sandbox_mode = \"podsandbox\"\n  options = { SystemdCgroup = true, Root = \"/run/my-runc\" }\n";
        fs::write(fx.config(), main).unwrap();
        let outcome = install(&fx.args("2.2.0", &["--write"])).unwrap();
        let drop_in = fx.drop_in();
        let dropped: toml::Value = toml::from_str(&fs::read_to_string(&drop_in).unwrap()).unwrap();
        assert_eq!(dropped["version"].as_integer(), Some(2), "{dropped}");
        let runtimes = &dropped["plugins"]["io.containerd.grpc.v1.cri"]["containerd"]["runtimes"];
        for handler in ["traced-runc", "traced-runsc"] {
            let entry = &runtimes[handler];
            assert_eq!(
                entry["options"]["SystemdCgroup"].as_bool(),
                Some(true),
                "{handler}: {dropped}"
            );
            assert_eq!(entry["options"]["Root"].as_str(), Some("/run/my-runc"));
            assert_eq!(entry["sandbox_mode"].as_str(), Some("podsandbox"));
            assert!(entry.get("sandboxer").is_none());
        }
        assert_eq!(
            runtimes["traced-runsc"]["options"]["BinaryName"].as_str(),
            fx.runsc().to_str()
        );
        assert!(runtimes.get("runc").is_none(), "the main config has runc");
        assert!(
            outcome.report.contains("SystemdCgroup = true"),
            "{}",
            outcome.report
        );

        // A version-1 main config keeps its runtimes where the drop-in would not find them.
        let fx = Fixture::new();
        fs::write(
            fx.config(),
            "[plugins.cri.containerd.runtimes.runc]\n  runtime_type = \"io.containerd.runc.v2\"\n",
        )
        .unwrap();
        let err = install(&fx.args("2.2.0", &["--write"])).unwrap_err();
        assert!(
            matches!(err, InstallError::ConfigVersion { found: 1, .. }),
            "{err}"
        );
    }

    /// A main config that exists but cannot be read stops install, saying what to do, rather than
    /// counting as empty.
    #[test]
    fn an_unreadable_main_config_stops_the_drop_in() {
        let fx = Fixture::new();
        fs::create_dir(fx.config()).unwrap();
        let err = install(&fx.args("2.2.0", &[])).unwrap_err();
        assert!(
            matches!(&err, InstallError::Unreadable { path, .. } if *path == fx.config()),
            "{err}"
        );
        assert!(err.to_string().contains("--config"), "{err}");
        // Missing is fine: containerd 2.2's built-in default imports conf.d.
        fs::remove_dir(fx.config()).unwrap();
        install(&fx.args("2.2.0", &[])).unwrap();
    }

    /// Makes the wrapper config's directory a dangling symlink: reading the config finds nothing,
    /// writing it fails, after containerd's config was written.
    fn break_wrapper_config_dir(fx: &Fixture) -> PathBuf {
        let dir = fx.wrapper_config().parent().unwrap().to_path_buf();
        symlink(fx.dir.path().join("nowhere"), &dir).unwrap();
        dir
    }

    /// An install that stops after changing containerd's config is taken back by --uninstall,
    /// and when run again it still knows the default `runc` as its own.
    #[test]
    fn a_half_done_install_is_undone_or_finished() {
        let fx = Fixture::new();
        fs::write(fx.config(), DEBIAN_STOCK).unwrap();
        let broken = break_wrapper_config_dir(&fx);
        install(&fx.args("1.6.20", &["--write"])).unwrap_err();
        assert!(fs::read_to_string(fx.config())
            .unwrap()
            .contains("traced-runc"));
        let removed = uninstall(&fx.args("1.6.20", &["--uninstall"])).unwrap();
        assert_eq!(removed.removed_tables, 3, "{}", removed.report);
        assert_eq!(fs::read_to_string(fx.config()).unwrap(), DEBIAN_STOCK);
        assert!(
            fs::symlink_metadata(fx.dir.path().join("bin/containerd-shim-traced-runc-v2")).is_err()
        );

        install(&fx.args("1.6.20", &["--write"])).unwrap_err();
        fs::remove_file(&broken).unwrap();
        install(&fx.args("1.6.20", &["--write"])).unwrap();
        assert!(fx.wrapper_config().exists());
        uninstall(&fx.args("1.6.20", &["--uninstall"])).unwrap();
        assert_eq!(fs::read_to_string(fx.config()).unwrap(), DEBIAN_STOCK);
        assert!(!fx.wrapper_config().exists());
    }

    /// A file uninstall must change but cannot read stops it before anything is removed.
    #[test]
    fn uninstall_stops_at_an_unreadable_file_with_nothing_removed() {
        let fx = Fixture::new();
        install(&fx.args("2.1.9", &["--write"])).unwrap();
        let link = fx.dir.path().join("bin/containerd-shim-traced-runc-v2");
        let moved = fx.dir.path().join("config.moved");
        fs::rename(fx.config(), &moved).unwrap();
        fs::create_dir(fx.config()).unwrap();
        let err = uninstall(&fx.args("2.1.9", &["--uninstall"])).unwrap_err();
        assert!(
            matches!(&err, InstallError::Unreadable { path, .. } if *path == fx.config()),
            "{err}"
        );
        assert!(err.to_string().contains("changed nothing"), "{err}");
        assert!(state_path(&fx.config()).exists());
        assert!(fs::symlink_metadata(&link).is_ok());

        // The drop-in stays too while the main config's imports entry cannot be taken out.
        let fx = Fixture::new();
        fs::write(fx.config(), "version = 3\n").unwrap();
        install(&fx.args("2.2.0", &["--write"])).unwrap();
        let drop_in = fx.drop_in();
        fs::rename(fx.config(), &moved).unwrap();
        fs::create_dir(fx.config()).unwrap();
        uninstall(&fx.args("2.2.0", &["--uninstall"])).unwrap_err();
        assert!(drop_in.exists() && state_path(&fx.config()).exists());
        fs::remove_dir(fx.config()).unwrap();
        fs::rename(&moved, fx.config()).unwrap();
        uninstall(&fx.args("2.2.0", &["--uninstall"])).unwrap();
        assert!(!drop_in.exists());
        assert_eq!(fs::read_to_string(fx.config()).unwrap(), "version = 3\n");
    }

    /// `--config-version 2` over an empty main config: the main config and the drop-in get the
    /// same version.
    #[test]
    fn the_import_and_the_drop_in_share_one_version() {
        let fx = Fixture::new();
        fs::write(fx.config(), "").unwrap();
        install(&fx.args("2.2.0", &["--write", "--config-version", "2"])).unwrap();
        let main = fs::read_to_string(fx.config()).unwrap();
        let dropped = fs::read_to_string(fx.drop_in()).unwrap();
        assert!(main.starts_with("version = 2\n"), "{main}");
        assert!(dropped.starts_with("version = 2\n"), "{dropped}");
    }

    /// A drop-in the user edited keeps their edits through another --write (merged, a copy kept)
    /// and through --uninstall (only install's tables go); an unedited one is replaced, and
    /// removed whole.
    #[test]
    fn edits_to_the_drop_in_survive_write_and_uninstall() {
        let fx = Fixture::new();
        fs::write(fx.config(), "version = 3\n").unwrap();
        install(&fx.args("2.2.0", &["--write"])).unwrap();
        let drop_in = fx.drop_in();
        let ours = fs::read_to_string(&drop_in).unwrap();
        let mine = "\n[plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.mine]\n  runtime_type = 'io.containerd.kata.v2'\n";
        let edited = format!("{ours}{mine}");
        fs::write(&drop_in, &edited).unwrap();

        let again = install(&fx.args("2.2.0", &["--write"])).unwrap();
        let text = fs::read_to_string(&drop_in).unwrap();
        let parsed: toml::Value = toml::from_str(&text).unwrap();
        let runtimes = &parsed["plugins"]["io.containerd.cri.v1.runtime"]["containerd"]["runtimes"];
        assert_eq!(
            runtimes["mine"]["runtime_type"].as_str(),
            Some("io.containerd.kata.v2")
        );
        assert!(runtimes.get("traced-runc").is_some());
        // Copies go beside the main config: containerd may import all of conf.d (`conf.d/*`).
        let copies = || -> Vec<PathBuf> {
            fs::read_dir(fx.config().parent().unwrap())
                .unwrap()
                .map(|e| e.unwrap().path())
                .filter(|p| {
                    p.file_name()
                        .is_some_and(|n| n.to_string_lossy().starts_with("shimtrace.toml.bak-"))
                })
                .collect()
        };
        assert_eq!(copies().len(), 1);
        assert_eq!(fs::read_to_string(&copies()[0]).unwrap(), edited);
        assert_eq!(fs::read_dir(drop_in.parent().unwrap()).unwrap().count(), 1);
        assert!(
            again.report.contains("was edited since install wrote it"),
            "{}",
            again.report
        );
        // Written again as it is: no further copy.
        install(&fx.args("2.2.0", &["--write"])).unwrap();
        assert_eq!(fs::read_to_string(&drop_in).unwrap(), text);
        assert_eq!(copies().len(), 1);

        let removed = uninstall(&fx.args("2.2.0", &["--uninstall"])).unwrap();
        let parsed: toml::Value = toml::from_str(&fs::read_to_string(&drop_in).unwrap()).unwrap();
        let runtimes = &parsed["plugins"]["io.containerd.cri.v1.runtime"]["containerd"]["runtimes"];
        assert!(runtimes.get("mine").is_some(), "{parsed}");
        assert!(runtimes.get("traced-runc").is_none() && runtimes.get("traced-runsc").is_none());
        assert_eq!(removed.removed_tables, 2, "{}", removed.report);
        assert!(removed.drop_in_backup.is_some());
        assert_eq!(fs::read_to_string(fx.config()).unwrap(), "version = 3\n");
    }

    /// containerd on its built-in defaults has no /etc/containerd: --write makes it, in both
    /// forms, and --uninstall takes back what it wrote.
    #[test]
    fn a_config_directory_that_does_not_exist_is_made() {
        for version in ["1.7.24", "2.2.0"] {
            let fx = Fixture::new();
            fs::remove_dir_all(fx.config().parent().unwrap()).unwrap();
            install(&fx.args(version, &["--write"])).unwrap_or_else(|e| panic!("{version}: {e}"));
            assert!(state_path(&fx.config()).exists(), "{version}");
            uninstall(&fx.args(version, &["--uninstall"])).unwrap();
            assert!(!state_path(&fx.config()).exists(), "{version}");
        }
    }

    /// Files named `<prefix>.bak-*` beside the fixture's config.
    fn backups(fx: &Fixture, prefix: &str) -> Vec<PathBuf> {
        let mut found: Vec<PathBuf> = fs::read_dir(fx.config().parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| {
                p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with(&format!("{prefix}.bak-")))
            })
            .collect();
        found.sort();
        found
    }

    /// The names of the tables an install moved out of the main config.
    fn moved_names(outcome: &InstallOutcome) -> Vec<&str> {
        outcome
            .moved
            .iter()
            .map(|p| p.last().unwrap().as_str())
            .collect()
    }

    /// The CRI runtimes of a config in either schema, by name.
    fn runtimes_in(text: &str) -> toml::Table {
        let parsed: toml::Table = toml::from_str(text).unwrap();
        let plugins = parsed.get("plugins").and_then(toml::Value::as_table);
        ["io.containerd.grpc.v1.cri", "io.containerd.cri.v1.runtime"]
            .iter()
            .filter_map(|plugin| plugins?.get(*plugin)?.get("containerd")?.get("runtimes"))
            .filter_map(|r| r.as_table().cloned())
            .flatten()
            .collect()
    }

    /// An install for containerd 2.1 or older wrote into the main config; the one after an upgrade
    /// to 2.2 moves those tables to the drop-in (printing says it would, first), and uninstall
    /// then gives the main config back byte for byte.
    #[test]
    fn an_upgrade_to_2_2_moves_installs_tables_into_the_drop_in() {
        for older in ["2.1.9", "1.6.20"] {
            let fx = Fixture::new();
            fs::write(fx.config(), DEBIAN_STOCK).unwrap();
            install(&fx.args(older, &["--write"])).unwrap();
            let as_older_wrote = fs::read_to_string(fx.config()).unwrap();
            let in_main = runtimes_in(&as_older_wrote);
            assert!(
                in_main.contains_key("traced-runc") && in_main.contains_key("runc"),
                "{older}: {as_older_wrote}"
            );

            let printed = install(&fx.args("2.2.0", &[])).unwrap();
            let names = moved_names(&printed);
            // The default runtime install added stays: the drop-in's handlers take its options.
            assert_eq!(names, ["traced-runc", "traced-runsc"], "{older}");
            assert!(
                printed.report.contains(&format!(
                    "# would move out of {}: runtimes.traced-runc, runtimes.traced-runsc",
                    fx.config().display()
                )),
                "{older}: {}",
                printed.report
            );
            assert_eq!(fs::read_to_string(fx.config()).unwrap(), as_older_wrote);
            assert!(!fx.drop_in().exists());

            let outcome = install(&fx.args("2.2.0", &["--write"])).unwrap();
            assert_eq!(outcome.moved, printed.moved, "{older}");
            assert!(
                outcome.report.contains(&format!(
                    "# moved out of {}: runtimes.traced-runc, runtimes.traced-runsc",
                    fx.config().display()
                )),
                "{older}: {}",
                outcome.report
            );
            let main = fs::read_to_string(fx.config()).unwrap();
            assert_eq!(
                runtimes_in(&main).keys().collect::<Vec<_>>(),
                ["runc"],
                "{older}: {main}"
            );
            assert!(
                outcome
                    .report
                    .contains("keeps runtimes.runc, which install added there"),
                "{}",
                outcome.report
            );
            assert!(main.contains(&fx.drop_in().display().to_string()), "{main}");
            let dropped = fs::read_to_string(fx.drop_in()).unwrap();
            let in_drop_in = runtimes_in(&dropped);
            assert_eq!(
                in_drop_in.keys().collect::<Vec<_>>(),
                ["traced-runc", "traced-runsc"],
                "{older}: the main config keeps its runc: {dropped}"
            );
            assert_eq!(
                in_drop_in["traced-runc"]["runtime_path"].as_str(),
                fx.bin().join("containerd-shim-traced-runc-v2").to_str()
            );
            // The backup is the main config as the older install left it (beside the one that
            // install made of the original).
            let backup = outcome.backup.clone().expect("a backup of the main config");
            let copies = backups(&fx, "config.toml");
            assert!(copies.len() == 2 && copies.contains(&backup), "{copies:?}");
            assert_eq!(fs::read_to_string(&backup).unwrap(), as_older_wrote);

            // Again: nothing left to move, the main config stays.
            let again = install(&fx.args("2.2.0", &["--write"])).unwrap();
            assert!(
                again.moved.is_empty() && !again.report.contains("moved out of"),
                "{}",
                again.report
            );
            assert_eq!(fs::read_to_string(fx.config()).unwrap(), main);

            let removed = uninstall(&fx.args("2.2.0", &["--uninstall"])).unwrap();
            assert_eq!(
                fs::read_to_string(fx.config()).unwrap(),
                DEBIAN_STOCK,
                "{older}: {}",
                removed.report
            );
            assert!(!fx.drop_in().exists() && !state_path(&fx.config()).exists());
            assert!(!fx.wrapper_config().exists(), "{older}");
            assert!(
                fs::read_dir(fx.bin()).unwrap().count() == 1,
                "{older}: only the wrapper is left in bin"
            );
        }
    }

    /// The move after an upgrade to 2.2 keeps what the admin made of install's tables: options
    /// they added to the default runtime install wrote (the drop-in's handlers take them), and a
    /// traced table whose marker they replaced with their own comment (theirs now).
    #[test]
    fn the_move_keeps_the_admins_edits_in_the_main_config() {
        let fx = Fixture::new();
        fs::write(fx.config(), DEBIAN_STOCK).unwrap();
        install(&fx.args("1.6.20", &["--write"])).unwrap();
        let runtimes = "[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes";
        let written = fs::read_to_string(fx.config()).unwrap();
        assert!(written.contains(&format!("{runtimes}.runc]")), "{written}");
        // The admin: systemd cgroups for runc, and traced-runsc made their own.
        let mut doc: DocumentMut = written.parse().unwrap();
        let cri = &mut doc["plugins"]["io.containerd.grpc.v1.cri"]["containerd"]["runtimes"];
        cri["runc"]["options"]["SystemdCgroup"] = value(true);
        let runsc = cri["traced-runsc"].as_table_mut().unwrap();
        runsc.decor_mut().set_prefix("\n# my own gVisor handler\n");
        runsc.insert(
            "pod_annotations",
            value(toml_edit::Array::from_iter(["dev.*"])),
        );
        fs::write(fx.config(), doc.to_string()).unwrap();

        let outcome = install(&fx.args("2.2.0", &["--write"])).unwrap();
        let names = moved_names(&outcome);
        assert_eq!(names, ["traced-runc"], "{}", outcome.report);
        assert!(
            outcome.report.contains(&format!(
                "{} has runtimes.traced-runsc without install's comment: containerd merges it with the drop-in's traced-runsc key by key (the drop-in's keys win, keys only it sets still apply); it names install's link {}, which --uninstall removes",
                fx.config().display(),
                fx.bin().join("containerd-shim-traced-runsc-v2").display()
            )),
            "{}",
            outcome.report
        );
        let main = runtimes_in(&fs::read_to_string(fx.config()).unwrap());
        assert_eq!(main.keys().collect::<Vec<_>>(), ["runc", "traced-runsc"]);
        assert_eq!(
            main["runc"]["options"]["SystemdCgroup"].as_bool(),
            Some(true)
        );
        assert_eq!(
            main["traced-runsc"]["pod_annotations"]
                .as_array()
                .map(Vec::len),
            Some(1)
        );
        let drop_in = runtimes_in(&fs::read_to_string(fx.drop_in()).unwrap());
        assert_eq!(
            drop_in["traced-runc"]["options"]["SystemdCgroup"].as_bool(),
            Some(true),
            "the drop-in's traced runc takes the main config's runc options"
        );
    }

    /// An empty main config gets `version` with its `imports` entry (without one containerd reads
    /// the file as version 1), and uninstall gives it back empty.
    #[test]
    fn an_empty_main_config_gets_a_version_with_its_import() {
        let fx = Fixture::new();
        fs::write(fx.config(), "").unwrap();
        install(&fx.args("2.2.0", &["--write"])).unwrap();
        let main = fs::read_to_string(fx.config()).unwrap();
        assert_eq!(
            main,
            format!("version = 3\nimports = [\"{}\"]\n", fx.drop_in().display())
        );
        // Read again as install reads it: no "version 1" refusal.
        install(&fx.args("2.2.0", &["--write"])).unwrap();
        uninstall(&fx.args("2.2.0", &["--uninstall"])).unwrap();
        assert_eq!(fs::read_to_string(fx.config()).unwrap(), "");
    }

    /// A drop-in edited since install wrote it, in a schema other than the main config's, is
    /// refused (containerd merges the files before it migrates them), printing and writing alike.
    #[test]
    fn an_edited_drop_in_of_another_schema_is_refused() {
        let fx = Fixture::new();
        fs::write(fx.config(), "version = 3\n").unwrap();
        fs::create_dir_all(fx.drop_in().parent().unwrap()).unwrap();
        fs::write(
            fx.drop_in(),
            "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.mine]\n  runtime_type = \"io.containerd.runc.v2\"\n",
        )
        .unwrap();
        for flags in [&[][..], &["--write"]] {
            let err = install(&fx.args("2.2.0", flags)).unwrap_err();
            assert!(err.to_string().contains("not as install wrote it"), "{err}");
            assert!(matches!(
                err,
                InstallError::DropInVersion {
                    found: 2,
                    main: 3,
                    ..
                }
            ));
            let message = err.to_string();
            assert!(
                message.contains("merges the files before it migrates them")
                    && message.contains("run install again"),
                "{message}"
            );
        }
        assert_eq!(fs::read_to_string(fx.config()).unwrap(), "version = 3\n");

        // No main config: containerd's built-in one stands, nothing clashes; install's tables go
        // into that drop-in in its own schema.
        fs::remove_file(fx.config()).unwrap();
        install(&fx.args("2.2.0", &["--write"])).unwrap();
        let dropped = fs::read_to_string(fx.drop_in()).unwrap();
        assert!(
            dropped.starts_with("version = 2\n")
                && runtimes_in(&dropped).contains_key("traced-runc"),
            "{dropped}"
        );
    }

    /// Back on a containerd before 2.2, install says that the drop-in an install for 2.2 wrote is
    /// still there; uninstall then removes the main config it created as well as the drop-in.
    #[test]
    fn back_on_an_older_containerd_the_drop_in_is_named_and_uninstall_takes_all_back() {
        let fx = Fixture::new();
        install(&fx.args("2.2.0", &["--write"])).unwrap();
        assert!(fx.drop_in().exists() && !fx.config().exists());
        let outcome = install(&fx.args("2.1.9", &["--write"])).unwrap();
        assert!(
            outcome.report.contains(&format!(
                "# {} (an install for containerd 2.2 or later) is still there, not imported by {}: containerd does not read it; `shimtrace install --uninstall` removes it with the rest\n",
                fx.drop_in().display(),
                fx.config().display()
            )),
            "{}",
            outcome.report
        );
        assert!(fx.config().exists());
        // The main config imports it now (as an admin might have it).
        let main = fs::read_to_string(fx.config()).unwrap();
        let imports_line = format!("imports = [\"{}\"]\n", fx.drop_in().display());
        fs::write(fx.config(), format!("{imports_line}{main}")).unwrap();
        let again = install(&fx.args("2.1.9", &["--write"])).unwrap();
        assert!(
            again.report.contains(&format!(
                "# {} (an install for containerd 2.2 or later) is still there, imported by {}: containerd merges its entries with this config's key by key (the drop-in's keys win)",
                fx.drop_in().display(),
                fx.config().display()
            )),
            "{}",
            again.report
        );
        fs::write(fx.config(), main).unwrap();
        uninstall(&fx.args("2.1.9", &["--uninstall"])).unwrap();
        assert!(!fx.config().exists(), "install created it");
        assert!(!fx.drop_in().exists());
    }

    /// A table the admin wrote that looks like install's (a traced handler of their own, one at a
    /// path install's state lists once the state names the drop-in) but lacks install's marker
    /// stays in the main config through the move and through uninstall; a marked one the state
    /// does not list stays too, and the report says what to do about it.
    #[test]
    fn hand_written_traced_tables_stay_in_the_main_config() {
        let fx = Fixture::new();
        let runtimes = "[plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes";
        let original = format!(
            "version = 3\n\n{runtimes}.runc]\n  runtime_type = 'io.containerd.runc.v2'\n  {runtimes}.runc.options]\n    SystemdCgroup = true\n\n{runtimes}.traced-kata]\n  runtime_type = 'io.containerd.kata.v2'\n  runtime_path = '/opt/bin/containerd-shim-traced-kata-v2'\n"
        );
        fs::write(fx.config(), &original).unwrap();
        install(&fx.args("2.1.9", &["--write"])).unwrap();
        let outcome = install(&fx.args("2.2.0", &["--write"])).unwrap();
        let names = moved_names(&outcome);
        assert_eq!(names, ["traced-runc", "traced-runsc"]);
        let main = fs::read_to_string(fx.config()).unwrap();
        let in_main = runtimes_in(&main);
        assert_eq!(in_main.keys().collect::<Vec<_>>(), ["runc", "traced-kata"]);
        assert!(!main.contains(MARKER), "{main}");
        let in_drop_in = runtimes_in(&fs::read_to_string(fx.drop_in()).unwrap());
        assert_eq!(
            in_drop_in["traced-runc"]["options"]["SystemdCgroup"].as_bool(),
            Some(true),
            "the drop-in carries the main config's runc settings"
        );

        // The admin writes a traced-runc of their own into the main config, unmarked, and a
        // marked one that no state lists.
        let mine = format!(
            "\n{runtimes}.traced-runc]\n  runtime_type = 'io.containerd.runc.v2'\n\n{MARKER}\n{runtimes}.traced-crun]\n  runtime_type = 'io.containerd.runc.v2'\n"
        );
        fs::write(fx.config(), format!("{main}{mine}")).unwrap();
        let again = install(&fx.args("2.2.0", &["--write"])).unwrap();
        assert!(again.moved.is_empty(), "{:?}", again.moved);
        // Their traced-runc names no link of install's, but the drop-in has one too.
        assert!(
            again.report.contains(&format!(
                "{} has runtimes.traced-runc without install's comment: containerd merges it with the drop-in's traced-runc key by key (the drop-in's keys win, keys only it sets still apply)\n",
                fx.config().display()
            )),
            "{}",
            again.report
        );
        assert!(
            again.report.contains(&format!(
                "{} has runtimes.traced-crun marked as install's, but the install state",
                fx.config().display()
            )) && again.report.contains("remove it by hand"),
            "{}",
            again.report
        );
        assert!(
            !again.report.contains("traced-runc marked"),
            "{}",
            again.report
        );
        assert_eq!(
            fs::read_to_string(fx.config()).unwrap(),
            format!("{main}{mine}")
        );

        uninstall(&fx.args("2.2.0", &["--uninstall"])).unwrap();
        let imports_line = format!("imports = [\"{}\"]\n", fx.drop_in().display());
        assert!(
            !main.replace(&imports_line, "").contains("imports"),
            "{main}"
        );
        assert_eq!(
            fs::read_to_string(fx.config()).unwrap(),
            format!("{original}{mine}")
        );
    }

    /// Uninstall takes install's marked tables out of both files whatever form the state is in:
    /// after an install for 2.1 left its tables in the main config and one for 2.2 (by a
    /// shimtrace that did not move them) left the state naming the drop-in; and after going back
    /// from 2.2 to an older containerd, where the state names the main config but lists a drop-in.
    #[test]
    fn uninstall_clears_both_files_whatever_form_the_state_names() {
        // Tables left in the main config beside a state naming the drop-in.
        let fx = Fixture::new();
        fs::write(fx.config(), "version = 3\n").unwrap();
        install(&fx.args("2.1.9", &["--write"])).unwrap();
        let as_2_1_wrote = fs::read_to_string(fx.config()).unwrap();
        install(&fx.args("2.2.0", &["--write"])).unwrap();
        let imports_line = format!("imports = [\"{}\"]\n", fx.drop_in().display());
        let left =
            as_2_1_wrote.replacen("version = 3\n", &format!("version = 3\n{imports_line}"), 1);
        fs::write(fx.config(), &left).unwrap();
        let state = read_state(&state_path(&fx.config())).unwrap().unwrap();
        assert_eq!(state.config, fx.drop_in());
        let removed = uninstall(&fx.args("2.2.0", &["--uninstall"])).unwrap();
        assert_eq!(
            fs::read_to_string(fx.config()).unwrap(),
            "version = 3\n",
            "{}",
            removed.report
        );
        assert_eq!(
            removed.removed_tables, 3,
            "traced-runc, traced-runsc and the default runc: {}",
            removed.report
        );
        assert!(!fx.drop_in().exists());

        // 2.2, then an older containerd: install writes into the main config beside the drop-in
        // (which 2.1 imports too); uninstall takes back both.
        let fx = Fixture::new();
        fs::write(fx.config(), "version = 3\n").unwrap();
        install(&fx.args("2.2.0", &["--write"])).unwrap();
        install(&fx.args("2.1.9", &["--write"])).unwrap();
        let main = fs::read_to_string(fx.config()).unwrap();
        assert!(runtimes_in(&main).contains_key("traced-runc"), "{main}");
        assert!(fx.drop_in().exists());
        uninstall(&fx.args("2.1.9", &["--uninstall"])).unwrap();
        assert_eq!(fs::read_to_string(fx.config()).unwrap(), "version = 3\n");
        assert!(!fx.drop_in().exists());

        // A main config install created for 2.1 is removed again after the move.
        let fx = Fixture::new();
        install(&fx.args("2.1.9", &["--write"])).unwrap();
        install(&fx.args("2.2.0", &["--write"])).unwrap();
        assert_eq!(
            runtimes_in(&fs::read_to_string(fx.config()).unwrap())
                .keys()
                .collect::<Vec<_>>(),
            ["runc"]
        );
        uninstall(&fx.args("2.2.0", &["--uninstall"])).unwrap();
        assert!(!fx.config().exists() && !fx.drop_in().exists());
    }

    /// The drop-in is install's whole while it holds only install's tables, whatever else the
    /// state records: replaced without a copy when the main config's runtime settings change.
    #[test]
    fn a_drop_in_holding_only_installs_tables_is_replaced_without_a_copy() {
        let fx = Fixture::new();
        fs::write(fx.config(), "version = 3\n").unwrap();
        install(&fx.args("2.2.0", &["--write"])).unwrap();
        // A state with a field this version does not know, as another version may write.
        let state_file = state_path(&fx.config());
        let mut state: serde_json::Value =
            serde_json::from_str(&fs::read_to_string(&state_file).unwrap()).unwrap();
        state["drop_in_text"] = serde_json::Value::Null;
        fs::write(&state_file, state.to_string()).unwrap();
        fs::write(
            fx.config(),
            "version = 3\n[plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]\n  runtime_type = 'io.containerd.runc.v2'\n  [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]\n    SystemdCgroup = true\n",
        )
        .unwrap();
        let again = install(&fx.args("2.2.0", &["--write"])).unwrap();
        assert!(!again.report.contains("was edited"), "{}", again.report);
        let drop_in = fx.drop_in();
        assert!(fs::read_to_string(&drop_in)
            .unwrap()
            .contains("SystemdCgroup = true"));
        let etc = fs::read_dir(fx.config().parent().unwrap()).unwrap();
        assert!(!etc
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .any(|n| n.starts_with("shimtrace.toml.bak-")));
        uninstall(&fx.args("2.2.0", &["--uninstall"])).unwrap();
        assert!(!drop_in.exists());
    }

    #[test]
    fn configured_handlers_are_read_from_either_schema() {
        let merged = merge_config(DEBIAN_STOCK, 2, &[runc_by_name()], Path::new("x")).unwrap();
        let handlers = configured_handlers(&merged.text);
        assert!(handlers.contains(&(
            "traced-runc".to_string(),
            "io.containerd.traced-runc.v2".to_string(),
            String::new()
        )));
    }

    /// `containerd --version` prints `v2.1.9`: that is 2.1.9 (path form, schema 3), not an
    /// unknown version read as 0.0.0; a word that is no version is refused, saying what is.
    #[test]
    fn the_containerd_version_is_read_as_containerd_prints_it_or_refused() {
        let fx = Fixture::new();
        let outcome = install(&fx.args("v2.1.9", &[])).unwrap();
        assert_eq!(outcome.form, Form::Path, "{}", outcome.report);
        assert_eq!(outcome.containerd_version.as_deref(), Some("2.1.9"));
        assert!(
            outcome.report.contains("version 3)"),
            "schema 3: {}",
            outcome.report
        );
        for bad in ["banana", "2", "2.1.9.1", "vv2.1.9"] {
            // Refused by the flag's parser, and by install for an InstallArgs built by hand.
            let err = parse_containerd_version(bad).unwrap_err();
            assert!(
                err.to_string()
                    .contains("expected X.Y.Z (or X.Y), as `containerd --version` prints it"),
                "{err}"
            );
            let mut args = fx.args("2.1.9", &[]);
            args.containerd_version = Some(bad.into());
            let err = install(&args).unwrap_err();
            assert!(
                matches!(&err, InstallError::BadContainerdVersion { given } if given == bad),
                "{err}"
            );
        }
    }

    /// Without --write the links are still made (containerd could not run the entries otherwise),
    /// and the report says so; only the config is left unwritten.
    #[test]
    fn printing_says_which_links_it_made() {
        let fx = Fixture::new();
        let link = fx.bin().join("containerd-shim-traced-runc-v2");
        let gvisor_link = fx.bin().join("containerd-shim-traced-runsc-v2");
        let printed = install(&fx.args("1.6.20", &[])).unwrap();
        assert_eq!(printed.created_links, [link.clone(), gvisor_link.clone()]);
        assert!(!fx.config().exists());
        for made in [&link, &gvisor_link] {
            assert!(
                printed
                    .report
                    .contains(&format!("# link {} (created) -> ", made.display())),
                "{}",
                printed.report
            );
        }
        assert!(
            printed.report.contains(
                "only the links were made (2 created, marked above); this config was NOT written: pass --write"
            ),
            "{}",
            printed.report
        );
        let again = install(&fx.args("1.6.20", &[])).unwrap();
        assert!(again.created_links.is_empty());
        assert!(
            again
                .report
                .contains(&format!("# link {} (already in place) -> ", link.display()))
                && again
                    .report
                    .contains("only the links were made (all were already in place)"),
            "{}",
            again.report
        );
    }

    #[test]
    fn runsc_by_name_is_looked_up_and_a_relative_path_made_absolute() {
        let dir = tempfile::tempdir().unwrap();
        let runsc = executable(&dir.path().join("runsc"));
        let list = dir.path().as_os_str();
        assert_eq!(resolve_runsc(Path::new("runsc"), list).unwrap(), runsc);
        let err = resolve_runsc(Path::new("runsc"), OsStr::new("/nonexistent")).unwrap_err();
        assert!(
            err.to_string()
                .contains("not found in the --shim-path list"),
            "{err}"
        );
        // The same file through a path relative to this process's directory.
        let cwd = std::env::current_dir().unwrap();
        let up = "../".repeat(cwd.components().count() - 1);
        let relative = PathBuf::from(format!(
            "{up}{}",
            runsc.display().to_string().trim_start_matches('/')
        ));
        assert!(relative.is_relative());
        let resolved = resolve_runsc(&relative, OsStr::new("")).unwrap();
        assert!(resolved.is_absolute(), "{}", resolved.display());
        assert_eq!(
            resolved.canonicalize().unwrap(),
            runsc.canonicalize().unwrap()
        );
    }

    #[test]
    fn a_missing_runsc_is_refused_naming_it() {
        let fx = Fixture::new();
        let missing = fx.dir.path().join("nonexistent/runsc");
        let mut args = fx.args("2.1.9", &[]);
        args.runsc = Some(missing.clone());
        let err = install(&args).unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, InstallError::NoRunsc { .. }), "{text}");
        assert!(
            text.contains(&missing.display().to_string())
                && text.contains("no such file")
                && text.contains("an executable file")
                && text.contains("leave --runsc out"),
            "{text}"
        );
        // Nothing was made on the way: the wrapper is alone in its directory.
        let made: Vec<_> = fs::read_dir(fx.bin())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(made, [WRAPPER_BINARY]);
        // A file that is there but cannot run is no runsc either.
        fs::write(fx.config(), "").unwrap();
        args.runsc = Some(fx.config());
        let text = install(&args).unwrap_err().to_string();
        assert!(text.contains("not an executable file"), "{text}");
    }

    #[test]
    fn a_missing_bin_dir_says_what_to_do() {
        let fx = Fixture::new();
        let gone = fx.dir.path().join("gone");
        let err = ensure_symlink(&gone.join("link"), &fx.runsc()).unwrap_err();
        assert!(
            matches!(&err, InstallError::NoBinDir { dir } if *dir == gone),
            "{err}"
        );
        let bin = fx.dir.path().join("nonexistent/bin");
        let err = install(&fx.args("2.1.9", &["--bin-dir", bin.to_str().unwrap()])).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains(&format!("links in {}: it does not exist", bin.display()))
                && text.contains("create it or pick another --bin-dir"),
            "{text}"
        );
    }

    #[test]
    fn no_shims_in_the_shim_path_names_it() {
        let fx = Fixture::new();
        let empty = fx.dir.path().join("empty");
        fs::create_dir_all(&empty).unwrap();
        let list = format!("{}:/nonexistent", empty.display());
        let mut args = fx.args("2.1.9", &[]);
        args.shim_path = Some(list.clone().into());
        let text = install(&args).unwrap_err().to_string();
        assert!(
            text.contains(&format!("in --shim-path {list:?}")) && !text.contains("apt-get"),
            "{text}"
        );
        let on_path = InstallError::NoShims { shim_path: None }.to_string();
        assert!(
            on_path.contains("on PATH") && on_path.contains("apt-get"),
            "{on_path}"
        );
    }
}
