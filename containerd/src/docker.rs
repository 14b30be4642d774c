//! `shimtrace install --docker`: registers the traced runtimes with Docker Engine (≥ 23), removes
//! exactly that again (`--uninstall`), and runs a container through each to confirm its spans
//! arrive (`--check`).
//!
//! dockerd takes containerd shims in `daemon.json`'s `runtimes`, each `{"runtimeType": "<abs path
//! of a shim>"}`; `docker run --runtime <name>` then runs that shim under dockerd's own containerd
//! (namespace `moby`). Install symlinks `containerd-shim-traced-<inner>-<ver>` to the wrapper for
//! each real shim on `PATH` and adds `traced-<inner>` runtimes pointing at those links.
//!
//! gVisor cannot be passed the way CRI passes it (the runc shim with `BinaryName` = runsc in its
//! options): dockerd types a runtime's `options` as runc's only when `runtimeType` is literally
//! `io.containerd.runc.v2`; for any other shim it sends them as `runtimeoptions.v1.Options`, which
//! the runc shim rejects ("type with url runtimeoptions.v1.Options: not found"). So `traced-runsc`
//! wraps a small inner shim of its own, `containerd-shim-runsc-docker-v2`: containerd's runc shim started
//! with a `PATH` on which `runc` is a script running runsc (with the `runtimeArgs` of an existing
//! `runsc` runtime in daemon.json, e.g. `--network=none`). The runc shim runs its OCI runtime by
//! that name when no `BinaryName` is set, so the container runs on gVisor, every call traced.
//!
//! A state file beside daemon.json ([`STATE_FILE`]) lists every entry, link and script install
//! added, with its content; `--uninstall` removes each one only while it is still as written.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fmt::Write as _;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use shimtrace_span::naming::{ShimName, WRAPPER_PREFIX};
use shimtrace_span::spool::{read_spool_if_made, DEFAULT_SPOOL_DIR};
use shimtrace_span::SpanRecord;

use crate::command::{run_with_timeout, CommandOutput, RunError};
use crate::files::{io_err, replace_file, FileError};
use crate::image::{write_docker_archive, ImageError, WORKLOAD_TAG};
use crate::install::{
    ensure_symlink, find_real_shims, find_wrapper, write_config_with_backup, InstallError, RealShim,
};
use crate::rootfs::{build_busybox_rootfs, RootfsError};

/// dockerd's config file.
pub const DEFAULT_DAEMON_JSON: &str = "/etc/docker/daemon.json";
/// The state file install keeps beside daemon.json.
pub const STATE_FILE: &str = "shimtrace-docker.json";
/// The containerd namespace dockerd runs its containers in.
pub const DOCKER_NAMESPACE: &str = "moby";
/// The Docker runtime of gVisor through the wrapper.
pub const GVISOR_RUNTIME: &str = "traced-runsc";
/// Inner name of the gVisor runtime's shim: `containerd-shim-runsc-docker-v2`, wrapped by
/// `containerd-shim-traced-runsc-docker-v2`. It starts with `runsc-` so that a span's inner shim
/// names the runtime that really runs (as `kata-qemu` names Kata).
pub const GVISOR_INNER: &str = "runsc-docker";
/// First line of every script install writes (after `#!/bin/sh`).
pub const MARKER: &str =
    "# Added by `shimtrace install --docker`; `shimtrace install --docker --uninstall` removes it.";
/// The static busybox `--check` builds its image from (package busybox-static).
pub const BUSYBOX: &str = "/bin/busybox";
/// How long `--check` waits for one `docker` command (gVisor's first start is the slowest).
pub const CLI_TIMEOUT: Duration = Duration::from_secs(120);
/// How long `--check` waits for a container's spans after it exited.
pub const SPAN_TIMEOUT: Duration = Duration::from_secs(10);

/// The `--docker` flags of `shimtrace install`.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct DockerArgs {
    /// Register the traced runtimes with Docker Engine (daemon.json `runtimes`) instead of
    /// containerd's CRI; --config then defaults to /etc/docker/daemon.json.
    #[arg(long)]
    pub docker: bool,
    /// The docker CLI --check drives.
    #[arg(long, default_value = "docker", value_name = "PATH")]
    pub docker_cli: PathBuf,
}

/// What can go wrong registering with Docker.
#[derive(Debug, thiserror::Error)]
pub enum DockerError {
    #[error(transparent)]
    Install(#[from] InstallError),
    #[error("{path} is not valid JSON: {message} (dockerd would not start with it either: fix it first)")]
    BadJson { path: PathBuf, message: String },
    #[error("{path}: {what} is {found}, not a JSON object (dockerd would not start with it either: fix it first)")]
    NotObject {
        path: PathBuf,
        what: &'static str,
        found: String,
    },
    #[error("{path} already has a runtime {name} that shimtrace did not write ({existing}); rename or remove it, then run install again")]
    Conflict {
        path: PathBuf,
        name: String,
        existing: String,
    },
    #[error("{path} exists and was not written by shimtrace; refusing to replace it (move it away or pick --bin-dir)")]
    NotOurs { path: PathBuf },
    #[error("nothing to uninstall: {state} does not exist (no `shimtrace install --docker --write` was run for {config})")]
    NoState { state: PathBuf, config: PathBuf },
    #[error("{path} is not a state file shimtrace wrote: {message} (remove the traced-* runtimes of {config} by hand)")]
    BadState {
        path: PathBuf,
        config: PathBuf,
        message: String,
    },
    #[error("{config} has no traced runtime (a runtimeType naming a containerd-shim-traced-* link): run `shimtrace install --docker --write` first")]
    NothingToCheck { config: PathBuf },
    #[error("`{command}` failed: {problem}")]
    Cli { command: String, problem: String },
    #[error("private dockerd {problem}{log_tail}")]
    Daemon { problem: String, log_tail: String },
    #[error("the check image: {0}")]
    Rootfs(#[from] RootfsError),
    #[error("the check image: {0}")]
    Image(#[from] ImageError),
    #[error(transparent)]
    Io(#[from] FileError),
}

/// How to install: the library's view of `shimtrace install --docker`.
#[derive(Debug, Clone)]
pub struct DockerInstall {
    /// daemon.json.
    pub config: PathBuf,
    /// The wrapper binary (default: beside shimtrace, else on PATH).
    pub wrapper: Option<PathBuf>,
    /// Where the links and the gVisor inner shim go (default: the wrapper's directory).
    pub bin_dir: Option<PathBuf>,
    /// Write links, scripts and daemon.json; otherwise only say what would be written.
    pub write: bool,
    /// gVisor's binary (default: from daemon.json's `runsc` runtime, else on `shim_path`).
    pub runsc: Option<PathBuf>,
    /// Where real shims and runsc are looked up (a `PATH`-style list) [default: `PATH`].
    pub shim_path: Option<OsString>,
}

impl DockerInstall {
    /// The list real shims and runsc are looked up in: `shim_path`, else `PATH`.
    fn search_path(&self) -> OsString {
        crate::install::search_path(self.shim_path.as_deref())
    }
}

/// gVisor's runsc as `traced-runsc` runs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Runsc {
    pub binary: PathBuf,
    /// Flags put before every runsc command (a daemon.json `runsc` runtime's `runtimeArgs`).
    pub args: Vec<String>,
}

/// One runtime registered with dockerd.
#[derive(Debug, Clone, PartialEq)]
pub struct DockerRuntime {
    /// The name `docker run --runtime` takes (`traced-runc`).
    pub name: String,
    /// The wrapper link daemon.json's `runtimeType` names.
    pub link: PathBuf,
    /// The shim the wrapper runs (a real shim, or the gVisor inner shim).
    pub inner: PathBuf,
    /// For `traced-runsc`: the runsc it runs.
    pub runsc: Option<Runsc>,
}

impl DockerRuntime {
    /// The daemon.json entry.
    pub fn entry(&self) -> Value {
        json!({ "runtimeType": self.link.display().to_string() })
    }
}

/// A file install writes: the path and its exact content (executable scripts).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Script {
    pub path: PathBuf,
    pub content: String,
}

/// Everything install would add.
#[derive(Debug, Clone, PartialEq)]
pub struct DockerPlan {
    pub wrapper: PathBuf,
    pub bin_dir: PathBuf,
    pub runtimes: Vec<DockerRuntime>,
    /// Link → target (the wrapper).
    pub links: Vec<(PathBuf, PathBuf)>,
    pub scripts: Vec<Script>,
    /// Directories created for the scripts, outermost first.
    pub dirs: Vec<PathBuf>,
    /// Problems that do not stop install (e.g. bin_dir not on PATH).
    pub warnings: Vec<String>,
}

/// What install recorded, beside daemon.json.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DockerState {
    /// daemon.json did not exist before install.
    pub created_config: bool,
    /// daemon.json had no `runtimes` before install.
    pub created_runtimes: bool,
    /// Runtime name → the entry written.
    pub runtimes: BTreeMap<String, Value>,
    /// Link → its target.
    pub links: BTreeMap<PathBuf, PathBuf>,
    /// Script → its content.
    pub scripts: BTreeMap<PathBuf, String>,
    /// Directories created, outermost first.
    pub dirs: Vec<PathBuf>,
}

/// The state file of a daemon.json.
pub fn state_path(config: &Path) -> PathBuf {
    config.with_file_name(STATE_FILE)
}

/// Parses daemon.json (empty or missing = `{}`); anything but an object is an error.
pub fn parse_daemon_json(text: &str, path: &Path) -> Result<Map<String, Value>, DockerError> {
    if text.trim().is_empty() {
        return Ok(Map::new());
    }
    let value: Value = serde_json::from_str(text).map_err(|e| DockerError::BadJson {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    match value {
        Value::Object(map) => Ok(map),
        other => Err(DockerError::NotObject {
            path: path.to_path_buf(),
            what: "the file",
            found: kind(&other),
        }),
    }
}

fn kind(value: &Value) -> String {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
    .to_string()
}

fn runtimes_of<'a>(
    doc: &'a Map<String, Value>,
    path: &Path,
) -> Result<Option<&'a Map<String, Value>>, DockerError> {
    match doc.get("runtimes") {
        None => Ok(None),
        Some(Value::Object(map)) => Ok(Some(map)),
        Some(other) => Err(DockerError::NotObject {
            path: path.to_path_buf(),
            what: "`runtimes`",
            found: kind(other),
        }),
    }
}

/// daemon.json as written: pretty JSON, keys in their order, one trailing newline.
pub fn render_daemon_json(doc: &Map<String, Value>) -> String {
    let mut text = serde_json::to_string_pretty(doc).expect("a JSON map serialises");
    text.push('\n');
    text
}

/// Merges `entries` into daemon.json's `runtimes`. An entry may replace one of the same name only
/// when it is one shimtrace wrote (`ours`) or equal to it; the user's other keys stay as they were.
/// Returns the new document and whether `runtimes` had to be created.
pub fn merge_runtimes(
    mut doc: Map<String, Value>,
    entries: &[(String, Value)],
    ours: &BTreeMap<String, Value>,
    path: &Path,
) -> Result<(Map<String, Value>, bool), DockerError> {
    let existing = runtimes_of(&doc, path)?.cloned();
    let created = existing.is_none();
    let mut runtimes = existing.unwrap_or_default();
    for (name, entry) in entries {
        if let Some(current) = runtimes.get(name) {
            if current != entry && ours.get(name) != Some(current) {
                return Err(DockerError::Conflict {
                    path: path.to_path_buf(),
                    name: name.clone(),
                    existing: current.to_string(),
                });
            }
        }
        runtimes.insert(name.clone(), entry.clone());
    }
    doc.insert("runtimes".into(), Value::Object(runtimes));
    Ok((doc, created))
}

/// Removes from daemon.json the runtimes `state` lists, each only while it is as written; drops
/// `runtimes` if install created it and it is now empty. Returns the document and the names kept
/// because they were edited since.
pub fn remove_runtimes(
    mut doc: Map<String, Value>,
    state: &DockerState,
    path: &Path,
) -> Result<(Map<String, Value>, Vec<String>), DockerError> {
    let Some(runtimes) = runtimes_of(&doc, path)? else {
        return Ok((doc, Vec::new()));
    };
    let mut runtimes = runtimes.clone();
    let mut kept = Vec::new();
    for (name, written) in &state.runtimes {
        match runtimes.get(name) {
            Some(current) if current == written => {
                runtimes.remove(name);
            }
            Some(_) => kept.push(name.clone()),
            None => {}
        }
    }
    if runtimes.is_empty() && state.created_runtimes {
        doc.remove("runtimes");
    } else {
        doc.insert("runtimes".into(), Value::Object(runtimes));
    }
    Ok((doc, kept))
}

/// The `runsc` install uses: `explicit`; else the `path` of a daemon.json runtime whose binary is
/// named `runsc` (the one named `runsc` first), with its `runtimeArgs`; else runsc on `shim_path`.
pub fn find_runsc(
    explicit: Option<&Path>,
    doc: &Map<String, Value>,
    shim_path: &std::ffi::OsStr,
) -> Result<Option<Runsc>, DockerError> {
    if let Some(path) = explicit {
        return Ok(Some(Runsc {
            binary: crate::install::resolve_runsc(path, shim_path)?,
            args: Vec::new(),
        }));
    }
    if let Some(Value::Object(runtimes)) = doc.get("runtimes") {
        let mut candidates: Vec<(&String, &Value)> = runtimes
            .iter()
            .filter(|(_, entry)| {
                entry
                    .get("path")
                    .and_then(Value::as_str)
                    .is_some_and(|p| Path::new(p).file_name() == Some("runsc".as_ref()))
            })
            .collect();
        candidates.sort_by_key(|(name, _)| name.as_str() != "runsc");
        if let Some((_, entry)) = candidates.first() {
            let binary = PathBuf::from(entry["path"].as_str().unwrap_or_default());
            let binary = if binary.is_absolute() {
                binary
            } else {
                // dockerd looks a bare runtime path up on its PATH.
                shimtrace_span::naming::find_in_path(&binary.display().to_string(), shim_path)
                    .unwrap_or(binary)
            };
            let args = entry
                .get("runtimeArgs")
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(|v| v.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default();
            return Ok(Some(Runsc { binary, args }));
        }
    }
    Ok(
        shimtrace_span::naming::find_in_path("runsc", shim_path).map(|binary| Runsc {
            binary,
            args: Vec::new(),
        }),
    )
}

/// A word quoted for `sh`.
pub fn shell_quote(word: &str) -> String {
    format!("'{}'", word.replace('\'', r"'\''"))
}

/// The `runc` the gVisor inner shim puts first on its PATH: runsc with its flags.
pub fn runsc_as_runc_script(runsc: &Runsc) -> String {
    let mut line = format!("exec {}", shell_quote(&runsc.binary.display().to_string()));
    for arg in &runsc.args {
        line.push(' ');
        line.push_str(&shell_quote(arg));
    }
    format!(
        "#!/bin/sh\n{MARKER}\n# gVisor's runsc under the name containerd's runc shim runs (containerd-shim-{GVISOR_INNER}-v2).\n{line} \"$@\"\n"
    )
}

/// The gVisor inner shim: containerd's runc shim with `runc_dir` (holding the runsc `runc`) first
/// on its PATH.
pub fn gvisor_shim_script(runc_shim: &Path, runc_dir: &Path) -> String {
    format!(
        "#!/bin/sh\n{MARKER}\n# containerd's runc shim running gVisor: `runc` on this PATH is runsc. dockerd cannot pass the\n# runc shim a BinaryName for a traced runtime, so the runtime binary is chosen here.\nPATH={}:\"$PATH\"\nexport PATH\nexec {} \"$@\"\n",
        shell_quote(&runc_dir.display().to_string()),
        shell_quote(&runc_shim.display().to_string())
    )
}

/// Directory of the runsc `runc` script: `<bin_dir>/../lib/shimtrace/gvisor`.
pub fn gvisor_runc_dir(bin_dir: &Path) -> PathBuf {
    match bin_dir.parent() {
        Some(parent) if parent != Path::new("") => parent.join("lib/shimtrace/gvisor"),
        _ => bin_dir.join("shimtrace-gvisor"),
    }
}

fn gvisor_shim_name() -> ShimName {
    ShimName {
        inner: GVISOR_INNER.into(),
        version: "v2".into(),
    }
}

/// What install would add for this machine and daemon.json.
pub fn plan(opts: &DockerInstall, doc: &Map<String, Value>) -> Result<DockerPlan, DockerError> {
    let wrapper = find_wrapper(opts.wrapper.as_deref())?;
    let bin_dir = match &opts.bin_dir {
        Some(dir) => std::path::absolute(dir).unwrap_or_else(|_| dir.clone()),
        None => wrapper.parent().map(Path::to_path_buf).unwrap_or_default(),
    };
    let gvisor_shim = bin_dir.join(gvisor_shim_name().binary());
    // The gVisor inner shim of an earlier install is not a real shim.
    let search_path = opts.search_path();
    let shims: Vec<RealShim> = find_real_shims(&search_path)
        .into_iter()
        .filter(|s| s.path != gvisor_shim && s.name.inner != GVISOR_INNER)
        .collect();
    if shims.is_empty() {
        return Err(InstallError::no_shims(opts.shim_path.as_deref()).into());
    }
    let mut plan = DockerPlan {
        wrapper: wrapper.clone(),
        bin_dir: bin_dir.clone(),
        runtimes: Vec::new(),
        links: Vec::new(),
        scripts: Vec::new(),
        dirs: Vec::new(),
        warnings: Vec::new(),
    };
    for shim in &shims {
        let link = bin_dir.join(shim.name.traced_binary());
        plan.links.push((link.clone(), wrapper.clone()));
        plan.runtimes.push(DockerRuntime {
            name: shim.handler(&shims),
            link,
            inner: shim.path.clone(),
            runsc: None,
        });
    }
    let runc_v2 = shims
        .iter()
        .find(|s| s.name.inner == "runc" && s.name.version == "v2");
    match (runc_v2, find_runsc(opts.runsc.as_deref(), doc, &search_path)?) {
        (Some(runc), Some(runsc)) => {
            let runc_dir = gvisor_runc_dir(&bin_dir);
            let mut missing = Vec::new();
            let mut dir = runc_dir.as_path();
            while !dir.exists() {
                missing.push(dir.to_path_buf());
                match dir.parent() {
                    Some(parent) => dir = parent,
                    None => break,
                }
            }
            missing.reverse();
            plan.dirs = missing;
            plan.scripts.push(Script {
                path: runc_dir.join("runc"),
                content: runsc_as_runc_script(&runsc),
            });
            plan.scripts.push(Script {
                path: gvisor_shim.clone(),
                content: gvisor_shim_script(&runc.path, &runc_dir),
            });
            let link = bin_dir.join(gvisor_shim_name().traced_binary());
            plan.links.push((link.clone(), wrapper.clone()));
            plan.runtimes.push(DockerRuntime {
                name: GVISOR_RUNTIME.into(),
                link,
                inner: gvisor_shim,
                runsc: Some(runsc),
            });
            let on_path = std::env::split_paths(&search_path).any(|d| d == bin_dir);
            if !on_path {
                plan.warnings.push(format!(
                    "{} is not on PATH here: dockerd must find {} on its PATH for {GVISOR_RUNTIME} (or map io.containerd.traced-{GVISOR_INNER}.v2 to it in /etc/shimtrace/config.toml)",
                    bin_dir.display(),
                    gvisor_shim_name().binary()
                ));
            }
        }
        (None, Some(_)) => plan.warnings.push(format!(
            "runsc found but no containerd-shim-runc-v2 on PATH: {GVISOR_RUNTIME} needs the runc shim"
        )),
        (_, None) => {}
    }
    Ok(plan)
}

/// What `install --docker` did, and the text it prints.
#[derive(Debug, Clone, PartialEq)]
pub struct DockerOutcome {
    pub plan: DockerPlan,
    /// The daemon.json fragment: `{"runtimes": {...}}`.
    pub snippet: String,
    pub backup: Option<PathBuf>,
    pub report: String,
}

fn read_optional(path: &Path) -> Result<Option<String>, DockerError> {
    match fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_err("cannot read", path)(e).into()),
    }
}

/// Reads the state file, if any.
pub fn read_state(config: &Path) -> Result<Option<DockerState>, DockerError> {
    let path = state_path(config);
    let Some(text) = read_optional(&path)? else {
        return Ok(None);
    };
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|e| DockerError::BadState {
            path,
            config: config.to_path_buf(),
            message: e.to_string(),
        })
}

fn write_state(config: &Path, state: &DockerState) -> Result<(), DockerError> {
    let path = state_path(config);
    let mut text = serde_json::to_string_pretty(state).expect("the state serialises");
    text.push('\n');
    replace_file(&path, text, None)?;
    Ok(())
}

/// Whether `script` may be written: nothing is there, or a script of ours. Returns whether it is
/// already as wanted.
fn script_is_ours(script: &Script, state: &DockerState) -> Result<bool, DockerError> {
    match fs::symlink_metadata(&script.path) {
        Ok(meta) => {
            let current = fs::read_to_string(&script.path).unwrap_or_default();
            let ours = meta.is_file()
                && (current == script.content
                    || state.scripts.get(&script.path) == Some(&current)
                    || current.lines().nth(1) == Some(MARKER));
            if ours {
                Ok(current == script.content)
            } else {
                Err(DockerError::NotOurs {
                    path: script.path.clone(),
                })
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(io_err("cannot inspect", &script.path)(e).into()),
    }
}

/// Everything install would replace must be its own, checked before anything is written.
fn preflight(plan: &DockerPlan, state: &DockerState) -> Result<(), DockerError> {
    for script in &plan.scripts {
        script_is_ours(script, state)?;
    }
    for (link, _) in &plan.links {
        if let Ok(meta) = fs::symlink_metadata(link) {
            if !meta.file_type().is_symlink() {
                return Err(InstallError::NotSymlink { path: link.clone() }.into());
            }
        }
    }
    Ok(())
}

/// Writes `script` (executable) unless it is already as wanted.
fn write_script(script: &Script, state: &DockerState) -> Result<(), DockerError> {
    if script_is_ours(script, state)? {
        return Ok(());
    }
    replace_file(&script.path, &script.content, Some(0o755))?;
    Ok(())
}

/// Runs `shimtrace install --docker`: plans, and with `write` creates the links and scripts,
/// merges daemon.json (after a timestamped backup) and records what it added.
pub fn install_docker(opts: &DockerInstall) -> Result<DockerOutcome, DockerError> {
    let existing = read_optional(&opts.config)?;
    let doc = parse_daemon_json(existing.as_deref().unwrap_or(""), &opts.config)?;
    let plan = plan(opts, &doc)?;
    let entries: Vec<(String, Value)> = plan
        .runtimes
        .iter()
        .map(|r| (r.name.clone(), r.entry()))
        .collect();
    let mut state = read_state(&opts.config)?.unwrap_or_default();
    // Fails on a conflicting entry before anything is written.
    let (merged, created_runtimes) =
        merge_runtimes(doc.clone(), &entries, &state.runtimes, &opts.config)?;
    let snippet = {
        let mut fragment = Map::new();
        fragment.insert(
            "runtimes".into(),
            Value::Object(entries.iter().cloned().collect()),
        );
        render_daemon_json(&fragment)
    };

    let mut backup = None;
    if opts.write {
        if !plan.bin_dir.is_dir() {
            return Err(InstallError::NoBinDir {
                dir: plan.bin_dir.clone(),
            }
            .into());
        }
        preflight(&plan, &state)?;
        if state.runtimes.is_empty() && state.links.is_empty() {
            state.created_config = existing.is_none();
            state.created_runtimes = created_runtimes;
        }
        for dir in &plan.dirs {
            fs::create_dir_all(dir).map_err(io_err("cannot create", dir))?;
            if !state.dirs.contains(dir) {
                state.dirs.push(dir.clone());
            }
        }
        for script in &plan.scripts {
            write_script(script, &state)?;
            state
                .scripts
                .insert(script.path.clone(), script.content.clone());
        }
        for (link, target) in &plan.links {
            ensure_symlink(link, target)?;
            state.links.insert(link.clone(), target.clone());
        }
        for (name, entry) in &entries {
            state.runtimes.insert(name.clone(), entry.clone());
        }
        // The state goes first: an interrupted install can still be undone.
        write_state(&opts.config, &state)?;
        backup = write_config_with_backup(&opts.config, &render_daemon_json(&merged))?;
    }

    let mut report = String::new();
    let _ = writeln!(report, "# wrapper: {}", plan.wrapper.display());
    for runtime in &plan.runtimes {
        let _ = write!(
            report,
            "# {}: {} -> wrapper, wrapping {}",
            runtime.name,
            runtime.link.display(),
            runtime.inner.display()
        );
        if let Some(runsc) = &runtime.runsc {
            let _ = write!(
                report,
                " (the runc shim running {}{}{})",
                runsc.binary.display(),
                if runsc.args.is_empty() { "" } else { " " },
                runsc.args.join(" ")
            );
        }
        report.push('\n');
    }
    for warning in &plan.warnings {
        let _ = writeln!(report, "# warning: {warning}");
    }
    let _ = writeln!(report, "\n# daemon.json runtimes:");
    report.push_str(&snippet);
    if opts.write {
        let _ = writeln!(
            report,
            "\n# merged into {}{}; recorded in {}",
            opts.config.display(),
            backup
                .as_ref()
                .map(|b| format!(" (backup: {})", b.display()))
                .unwrap_or_default(),
            state_path(&opts.config).display()
        );
        let _ = writeln!(
            report,
            "# restart dockerd to load it (e.g. `systemctl restart docker`; without live-restore this stops running containers),\n# then: docker run --rm --runtime {} <image> <command>; `shimtrace install --docker --check` confirms spans arrive",
            plan.runtimes.first().map(|r| r.name.as_str()).unwrap_or("traced-runc")
        );
    } else {
        let _ = writeln!(
            report,
            "\n# not written: pass --write to create the links{} and merge this into {} (a backup is kept)",
            if plan.scripts.is_empty() {
                ""
            } else {
                " and the gVisor scripts"
            },
            opts.config.display()
        );
    }
    Ok(DockerOutcome {
        plan,
        snippet,
        backup,
        report,
    })
}

/// What `install --docker --uninstall` did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct UninstallOutcome {
    pub removed_runtimes: Vec<String>,
    /// Entries, links or scripts left because they changed since install.
    pub kept: Vec<String>,
    pub removed_files: Vec<PathBuf>,
    pub backup: Option<PathBuf>,
    /// daemon.json itself was removed (install created it and nothing else is in it).
    pub removed_config: bool,
    pub report: String,
}

/// Removes exactly what `install --docker --write` recorded for `config`.
pub fn uninstall_docker(config: &Path) -> Result<UninstallOutcome, DockerError> {
    let state = read_state(config)?.ok_or_else(|| DockerError::NoState {
        state: state_path(config),
        config: config.to_path_buf(),
    })?;
    let mut outcome = UninstallOutcome::default();
    if let Some(text) = read_optional(config)? {
        let doc = parse_daemon_json(&text, config)?;
        let before = runtimes_of(&doc, config)?.cloned().unwrap_or_default();
        let (doc, kept) = remove_runtimes(doc, &state, config)?;
        outcome.removed_runtimes = state
            .runtimes
            .keys()
            .filter(|name| before.contains_key(*name) && !kept.contains(name))
            .cloned()
            .collect();
        outcome.kept.extend(
            kept.iter()
                .map(|name| format!("runtime {name} in {} (edited since)", config.display())),
        );
        if doc.is_empty() && state.created_config {
            // Backed up like any other change, then gone as before install.
            outcome.backup = write_config_with_backup(config, &render_daemon_json(&doc))?;
            fs::remove_file(config).map_err(io_err("cannot remove", config))?;
            outcome.removed_config = true;
        } else if !outcome.removed_runtimes.is_empty() {
            outcome.backup = write_config_with_backup(config, &render_daemon_json(&doc))?;
        }
    }
    for (link, target) in &state.links {
        if fs::read_link(link).ok().as_deref() == Some(target.as_path()) {
            fs::remove_file(link).map_err(io_err("cannot remove", link))?;
            outcome.removed_files.push(link.clone());
        } else if fs::symlink_metadata(link).is_ok() {
            outcome.kept.push(format!(
                "{} (no longer the link install made)",
                link.display()
            ));
        }
    }
    for (script, content) in &state.scripts {
        match fs::read_to_string(script) {
            Ok(current) if &current == content => {
                fs::remove_file(script).map_err(io_err("cannot remove", script))?;
                outcome.removed_files.push(script.clone());
            }
            Ok(_) => outcome
                .kept
                .push(format!("{} (edited since)", script.display())),
            Err(_) => {}
        }
    }
    for dir in state.dirs.iter().rev() {
        // Only while empty: anything put there since stays, and so does the directory.
        let _ = fs::remove_dir(dir);
    }
    let state_file = state_path(config);
    fs::remove_file(&state_file).map_err(io_err("cannot remove", &state_file))?;

    let mut report = String::new();
    if outcome.removed_runtimes.is_empty() {
        let _ = writeln!(report, "# no runtime removed from {}", config.display());
    } else {
        let _ = writeln!(
            report,
            "# removed runtimes {} from {}{}",
            outcome.removed_runtimes.join(", "),
            config.display(),
            outcome
                .backup
                .as_ref()
                .map(|b| format!(" (backup: {})", b.display()))
                .unwrap_or_default()
        );
    }
    if outcome.removed_config {
        let _ = writeln!(
            report,
            "# removed {} (install created it; nothing else was in it)",
            config.display()
        );
    }
    for file in &outcome.removed_files {
        let _ = writeln!(report, "# removed {}", file.display());
    }
    for kept in &outcome.kept {
        let _ = writeln!(report, "# kept {kept}");
    }
    let _ = writeln!(
        report,
        "# restart dockerd to unload the runtimes (containers still running on them keep their shim until they stop)"
    );
    outcome.report = report;
    Ok(outcome)
}

/// The traced runtimes daemon.json names: every runtime whose `runtimeType` is a path to a
/// `containerd-shim-traced-*` binary, with that path.
pub fn traced_runtimes(doc: &Map<String, Value>) -> Vec<(String, PathBuf)> {
    let Some(Value::Object(runtimes)) = doc.get("runtimes") else {
        return Vec::new();
    };
    runtimes
        .iter()
        .filter_map(|(name, entry)| {
            let path = Path::new(entry.get("runtimeType")?.as_str()?);
            let traced = path.is_absolute()
                && path
                    .file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(WRAPPER_PREFIX));
            traced.then(|| (name.clone(), path.to_path_buf()))
        })
        .collect()
}

/// One `docker` command's result.
pub type CliOutput = CommandOutput;

/// The docker CLI, found and configured as a user's shell would (`DOCKER_HOST`, its context),
/// unless `host` names a daemon.
#[derive(Debug, Clone)]
pub struct DockerCli {
    pub binary: PathBuf,
    /// `-H <host>` for every command, e.g. `unix:///tmp/x/docker.sock`.
    pub host: Option<String>,
}

impl DockerCli {
    pub fn new(binary: impl Into<PathBuf>) -> Self {
        DockerCli {
            binary: binary.into(),
            host: None,
        }
    }

    /// The start of every command line: the binary and `-H` if set.
    pub fn command(&self) -> Command {
        let mut command = Command::new(&self.binary);
        if let Some(host) = &self.host {
            command.arg("-H").arg(host);
        }
        command
    }

    fn describe(&self, args: &[&str]) -> String {
        format!("{} {}", self.binary.display(), args.join(" "))
    }

    /// Runs `docker ARGS…` with empty stdin; killed after `timeout`. A non-zero exit is not an
    /// error here.
    pub fn run(&self, args: &[&str], timeout: Duration) -> Result<CliOutput, DockerError> {
        let mut command = self.command();
        command.args(args);
        run_with_timeout(command, timeout).map_err(|e| DockerError::Cli {
            command: self.describe(args),
            problem: match e {
                RunError::Start(e) => {
                    format!("cannot start it: {e} (install the docker CLI or pass --docker-cli)")
                }
                other => other.to_string(),
            },
        })
    }

    /// Like [`Self::run`]; a non-zero exit is an error carrying stderr.
    pub fn run_ok(&self, args: &[&str], timeout: Duration) -> Result<CliOutput, DockerError> {
        let output = self.run(args, timeout)?;
        if output.success() {
            Ok(output)
        } else {
            Err(DockerError::Cli {
                command: self.describe(args),
                problem: format!("{}: {}", output.status, output.stderr.trim()),
            })
        }
    }

    /// `docker run --rm --network none --runtime RUNTIME [--name NAME] --cidfile … IMAGE COMMAND…`:
    /// a throwaway container without a network. A non-zero exit is not an error here.
    pub fn run_rm(&self, run: &RunRm<'_>, timeout: Duration) -> RunRmOutput {
        let dir = match tempfile_dir() {
            Ok(dir) => dir,
            Err(e) => {
                return RunRmOutput {
                    output: Err(e),
                    id: None,
                }
            }
        };
        let cidfile = dir.join("cid");
        let cid_arg = cidfile.display().to_string();
        let mut args = vec!["run", "--rm", "--network", "none", "--runtime", run.runtime];
        if let Some(name) = run.name {
            args.extend(["--name", name]);
        }
        args.extend(["--cidfile", &cid_arg, run.image]);
        args.extend_from_slice(run.command);
        let output = self.run(&args, timeout);
        let id = fs::read_to_string(&cidfile)
            .ok()
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty());
        let _ = fs::remove_dir_all(&dir);
        RunRmOutput { output, id }
    }

    /// Makes sure `tag` exists: if not, builds it from a static busybox and `docker load`s it.
    pub fn ensure_busybox_image(&self, tag: &str, busybox: &Path) -> Result<(), DockerError> {
        if self
            .run(
                &["image", "inspect", "--format", "{{.Id}}", tag],
                CLI_TIMEOUT,
            )?
            .success()
        {
            return Ok(());
        }
        let dir = tempfile_dir()?;
        let rootfs = dir.join("rootfs");
        let archive = dir.join("image.tar");
        let result = (|| {
            build_busybox_rootfs(&rootfs, busybox)?;
            write_docker_archive(&rootfs, tag, &["/bin/sh"], &archive)?;
            let archive = archive.display().to_string();
            self.run_ok(&["load", "-q", "-i", &archive], CLI_TIMEOUT)?;
            Ok(())
        })();
        let _ = fs::remove_dir_all(&dir);
        result
    }
}

/// What [`DockerCli::run_rm`] runs.
#[derive(Debug, Clone, Copy)]
pub struct RunRm<'a> {
    /// The Docker runtime (`runc`, `traced-runc`, …).
    pub runtime: &'a str,
    /// The container's name; docker picks one if `None`.
    pub name: Option<&'a str>,
    pub image: &'a str,
    pub command: &'a [&'a str],
}

/// A `docker run --rm`'s output and the container's full id (what its spans carry). Docker writes
/// the id once it has created the container, so a run that failed or timed out may still have one.
#[derive(Debug)]
pub struct RunRmOutput {
    pub output: Result<CliOutput, DockerError>,
    pub id: Option<String>,
}

fn tempfile_dir() -> Result<PathBuf, DockerError> {
    let base = std::env::temp_dir();
    for n in 0..1000u32 {
        let dir = base.join(format!("shimtrace-docker-{}-{n}", std::process::id()));
        match fs::create_dir(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(io_err("cannot create", &dir)(e).into()),
        }
    }
    let taken = io::Error::from(io::ErrorKind::AlreadyExists);
    Err(io_err("cannot create a temp dir in", &base)(taken).into())
}

/// How to run `install --docker --check`.
#[derive(Debug, Clone)]
pub struct DockerCheck {
    pub config: PathBuf,
    pub cli: DockerCli,
    pub spool: PathBuf,
    /// The image every runtime runs `/bin/true` from; built from [`BUSYBOX`] when missing.
    pub image: String,
    pub span_timeout: Duration,
}

impl DockerCheck {
    /// The defaults for `config`: `docker` on PATH, the spool of `$SHIMTRACE_SPOOL_DIR` or the
    /// default, the workload image.
    pub fn new(config: &Path) -> Self {
        DockerCheck {
            config: config.to_path_buf(),
            cli: DockerCli::new("docker"),
            spool: std::env::var_os(shimtrace_span::env::SPOOL_DIR)
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from(DEFAULT_SPOOL_DIR)),
            image: WORKLOAD_TAG.to_string(),
            span_timeout: SPAN_TIMEOUT,
        }
    }
}

/// One runtime's check.
#[derive(Debug, Clone, PartialEq)]
pub struct RuntimeCheck {
    pub runtime: String,
    /// The container id, once `docker run` made one.
    pub container: Option<String>,
    /// What worked, or why not.
    pub result: Result<String, String>,
}

/// Every runtime's check, and the text `--check` prints.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckOutcome {
    pub runtimes: Vec<RuntimeCheck>,
    pub report: String,
}

impl CheckOutcome {
    pub fn all_ok(&self) -> bool {
        self.runtimes.iter().all(|r| r.result.is_ok())
    }
}

fn is_task_call(span: &SpanRecord, method: &str) -> bool {
    span.name.starts_with("containerd.task.v") && span.name.ends_with(&format!(".Task/{method}"))
}

/// Runs `/bin/true` through every traced runtime of daemon.json on the running dockerd and
/// waits for each container's Create and Delete spans in the spool.
pub fn check_docker(check: &DockerCheck) -> Result<CheckOutcome, DockerError> {
    let text = read_optional(&check.config)?.unwrap_or_default();
    let doc = parse_daemon_json(&text, &check.config)?;
    let traced = traced_runtimes(&doc);
    if traced.is_empty() {
        return Err(DockerError::NothingToCheck {
            config: check.config.clone(),
        });
    }
    let loaded = check
        .cli
        .run_ok(&["info", "--format", "{{json .Runtimes}}"], CLI_TIMEOUT)?;
    let loaded: Map<String, Value> = serde_json::from_str(loaded.stdout.trim()).unwrap_or_default();
    check
        .cli
        .ensure_busybox_image(&check.image, Path::new(BUSYBOX))?;
    let mut runtimes = Vec::new();
    for (name, link) in traced {
        runtimes.push(check_one(check, &name, &link, &loaded));
    }
    let mut report = String::new();
    let _ = writeln!(
        report,
        "# docker run --rm --network none --runtime <runtime> {} /bin/true; spans read from {}",
        check.image,
        check.spool.display()
    );
    for runtime in &runtimes {
        match &runtime.result {
            Ok(what) => {
                let _ = writeln!(report, "{}: ok: {what}", runtime.runtime);
            }
            Err(why) => {
                let _ = writeln!(report, "{}: FAILED: {why}", runtime.runtime);
            }
        }
    }
    Ok(CheckOutcome { runtimes, report })
}

fn check_one(
    check: &DockerCheck,
    name: &str,
    link: &Path,
    loaded: &Map<String, Value>,
) -> RuntimeCheck {
    let mut result = RuntimeCheck {
        runtime: name.to_string(),
        container: None,
        result: Err(String::new()),
    };
    if !loaded.is_empty() && !loaded.contains_key(name) {
        result.result = Err(format!(
            "dockerd has not loaded it: restart dockerd (e.g. `systemctl restart docker`) after changing {}",
            check.config.display()
        ));
        return result;
    }
    if !link.exists() {
        result.result = Err(format!(
            "{} does not exist (or its target is gone): run `shimtrace install --docker --write` again",
            link.display()
        ));
        return result;
    }
    let run = check.cli.run_rm(
        &RunRm {
            runtime: name,
            name: None,
            image: &check.image,
            command: &["/bin/true"],
        },
        CLI_TIMEOUT,
    );
    result.container = run.id;
    match run.output {
        Err(e) => {
            // A client that timed out leaves its container running: `--rm` acts only on exit.
            let removal = match &result.container {
                Some(id) => match check.cli.run_ok(&["rm", "-f", id], CLI_TIMEOUT) {
                    Ok(_) => format!("; container {id} removed"),
                    Err(e) => format!("; container {id} is left: {e}"),
                },
                None => String::new(),
            };
            result.result = Err(format!("{e}{removal}"));
            return result;
        }
        Ok(out) if !out.success() => {
            result.result = Err(format!(
                "docker run exited with {}: {}",
                out.status,
                out.stderr.trim()
            ));
            return result;
        }
        Ok(_) => {}
    }
    let Some(id) = result.container.clone() else {
        result.result = Err("docker run wrote no container id".into());
        return result;
    };
    let deadline = Instant::now() + check.span_timeout;
    loop {
        let read = read_spool_if_made(&check.spool);
        let unreadable = read
            .as_ref()
            .err()
            .map(|e| format!(" ({e})"))
            .unwrap_or_default();
        let spans: Vec<SpanRecord> = read
            .map(|c| c.spans)
            .unwrap_or_default()
            .into_iter()
            .filter(|s| s.container_id() == Some(id.as_str()))
            .collect();
        let created = spans.iter().any(|s| is_task_call(s, "Create"));
        let deleted = spans.iter().any(|s| is_task_call(s, "Delete"));
        if created && deleted {
            let inner = spans
                .iter()
                .find_map(|s| s.attr_str(shimtrace_span::attr::INNER))
                .unwrap_or("?");
            result.result = Ok(format!(
                "container {} ran; {} spans (Create to Delete) through {inner}",
                &id[..id.len().min(12)],
                spans.len()
            ));
            return result;
        }
        if Instant::now() > deadline {
            result.result = Err(if spans.is_empty() {
                format!(
                    "container {} ran, but no span of it reached {}{unreadable} within {:?}: the wrapper writes to dockerd's SHIMTRACE_SPOOL_DIR (default {DEFAULT_SPOOL_DIR}); pass --spool if dockerd's environment sets another",
                    &id[..id.len().min(12)],
                    check.spool.display(),
                    check.span_timeout
                )
            } else {
                format!(
                    "container {} ran, but its spans lack {} ({} spans)",
                    &id[..id.len().min(12)],
                    if created { "Delete" } else { "Create" },
                    spans.len()
                )
            });
            return result;
        }
        thread::sleep(Duration::from_millis(50));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn path() -> &'static Path {
        Path::new("/etc/docker/daemon.json")
    }

    fn entry(link: &str) -> Value {
        json!({ "runtimeType": link })
    }

    #[test]
    fn gvisors_docker_runtime_is_named_as_every_traced_runtime() {
        assert_eq!(
            GVISOR_RUNTIME,
            shimtrace_span::naming::traced_handler("runsc")
        );
    }

    #[test]
    fn merge_keeps_the_users_keys_in_order_and_adds_runtimes() {
        let doc = parse_daemon_json(
            r#"{"log-driver": "journald", "runtimes": {"runsc": {"path": "/usr/bin/runsc"}}, "debug": true}"#,
            path(),
        )
        .unwrap();
        let (merged, created) = merge_runtimes(
            doc,
            &[(
                "traced-runc".into(),
                entry("/b/containerd-shim-traced-runc-v2"),
            )],
            &BTreeMap::new(),
            path(),
        )
        .unwrap();
        assert!(!created);
        let keys: Vec<&str> = merged.keys().map(String::as_str).collect();
        assert_eq!(keys, ["log-driver", "runtimes", "debug"]);
        assert_eq!(merged["runtimes"]["runsc"]["path"], "/usr/bin/runsc");
        assert_eq!(
            merged["runtimes"]["traced-runc"]["runtimeType"],
            "/b/containerd-shim-traced-runc-v2"
        );
        let text = render_daemon_json(&merged);
        assert!(text.ends_with("}\n"));
        assert_eq!(parse_daemon_json(&text, path()).unwrap(), merged);
    }

    #[test]
    fn merge_refuses_a_foreign_runtime_of_the_same_name_but_replaces_its_own() {
        let doc = parse_daemon_json(
            r#"{"runtimes": {"traced-runc": {"path": "/opt/other"}}}"#,
            path(),
        )
        .unwrap();
        let ours = [("traced-runc".to_string(), entry("/b/w"))];
        let err = merge_runtimes(doc.clone(), &ours, &BTreeMap::new(), path()).unwrap_err();
        assert!(matches!(err, DockerError::Conflict { ref name, .. } if name == "traced-runc"));
        assert!(err.to_string().contains("/opt/other"), "{err}");
        // An entry an earlier install wrote is updated.
        let recorded: BTreeMap<String, Value> =
            [("traced-runc".to_string(), json!({"path": "/opt/other"}))].into();
        let (merged, _) = merge_runtimes(doc, &ours, &recorded, path()).unwrap();
        assert_eq!(merged["runtimes"]["traced-runc"], entry("/b/w"));
    }

    #[test]
    fn bad_daemon_json_is_an_error_that_names_the_file() {
        let err = parse_daemon_json("{\"a\": ", path()).unwrap_err();
        assert!(
            matches!(err, DockerError::BadJson { .. }) && err.to_string().contains("daemon.json")
        );
        let err = parse_daemon_json("[1]", path()).unwrap_err();
        assert!(err.to_string().contains("an array"), "{err}");
        let doc = parse_daemon_json(r#"{"runtimes": 3}"#, path()).unwrap();
        let err = merge_runtimes(doc, &[], &BTreeMap::new(), path()).unwrap_err();
        assert!(err.to_string().contains("`runtimes` is a number"), "{err}");
        assert!(parse_daemon_json(" \n", path()).unwrap().is_empty());
    }

    #[test]
    fn remove_takes_exactly_what_was_written() {
        let original = r#"{"debug": true, "runtimes": {"runsc": {"path": "/usr/bin/runsc"}}}"#;
        let doc = parse_daemon_json(original, path()).unwrap();
        let entries = [
            ("traced-runc".to_string(), entry("/b/r")),
            ("traced-runsc".to_string(), entry("/b/g")),
        ];
        let (merged, created) =
            merge_runtimes(doc.clone(), &entries, &BTreeMap::new(), path()).unwrap();
        let state = DockerState {
            created_runtimes: created,
            runtimes: entries.iter().cloned().collect(),
            ..Default::default()
        };
        let (back, kept) = remove_runtimes(merged.clone(), &state, path()).unwrap();
        assert!(kept.is_empty());
        assert_eq!(back, doc);

        // An entry edited since is kept, and said to be.
        let mut edited = merged;
        edited["runtimes"]["traced-runc"] = entry("/elsewhere");
        let (back, kept) = remove_runtimes(edited, &state, path()).unwrap();
        assert_eq!(kept, ["traced-runc"]);
        assert_eq!(back["runtimes"]["traced-runc"], entry("/elsewhere"));
        assert!(back["runtimes"].get("traced-runsc").is_none());
    }

    #[test]
    fn runtimes_created_by_install_go_with_it() {
        let doc = parse_daemon_json(r#"{"debug": true}"#, path()).unwrap();
        let entries = [("traced-runc".to_string(), entry("/b/r"))];
        let (merged, created) =
            merge_runtimes(doc.clone(), &entries, &BTreeMap::new(), path()).unwrap();
        assert!(created);
        let state = DockerState {
            created_runtimes: true,
            runtimes: entries.iter().cloned().collect(),
            ..Default::default()
        };
        assert_eq!(remove_runtimes(merged, &state, path()).unwrap().0, doc);
    }

    #[test]
    fn runsc_comes_from_an_existing_runtime_with_its_args() {
        let doc = parse_daemon_json(
            r#"{"runtimes": {"gvisor-alt": {"path": "/opt/a/runsc"}, "runsc": {"path": "/usr/bin/runsc", "runtimeArgs": ["--network=none", "--debug"]}}}"#,
            path(),
        )
        .unwrap();
        let found = find_runsc(None, &doc, "".as_ref()).unwrap().unwrap();
        assert_eq!(
            found,
            Runsc {
                binary: "/usr/bin/runsc".into(),
                args: vec!["--network=none".into(), "--debug".into()]
            }
        );
        let err = find_runsc(Some(Path::new("/nonexistent/runsc")), &doc, "".as_ref());
        assert!(matches!(
            err,
            Err(DockerError::Install(InstallError::NoRunsc { .. }))
        ));
    }

    #[test]
    fn scripts_quote_what_they_run() {
        let runc = runsc_as_runc_script(&Runsc {
            binary: "/opt/g visor/runsc".into(),
            args: vec!["--network=none".into(), "it's".into()],
        });
        assert!(runc.starts_with(&format!("#!/bin/sh\n{MARKER}\n")));
        assert!(
            runc.ends_with("exec '/opt/g visor/runsc' '--network=none' 'it'\\''s' \"$@\"\n"),
            "{runc}"
        );
        let shim = gvisor_shim_script(
            Path::new("/usr/bin/containerd-shim-runc-v2"),
            Path::new("/usr/local/lib/shimtrace/gvisor"),
        );
        assert!(shim.contains("PATH='/usr/local/lib/shimtrace/gvisor':\"$PATH\"\nexport PATH\n"));
        assert!(shim.ends_with("exec '/usr/bin/containerd-shim-runc-v2' \"$@\"\n"));
        assert_eq!(
            gvisor_runc_dir(Path::new("/usr/local/bin")),
            Path::new("/usr/local/lib/shimtrace/gvisor")
        );
    }

    #[test]
    fn traced_runtimes_are_those_naming_a_wrapper_link() {
        let doc = parse_daemon_json(
            r#"{"runtimes": {"runsc": {"path": "/usr/bin/runsc"},
                "traced-runc": {"runtimeType": "/b/containerd-shim-traced-runc-v2"},
                "by-name": {"runtimeType": "io.containerd.traced-runc.v2"},
                "kata": {"runtimeType": "/b/containerd-shim-kata-v2"}}}"#,
            path(),
        )
        .unwrap();
        assert_eq!(
            traced_runtimes(&doc),
            [(
                "traced-runc".to_string(),
                PathBuf::from("/b/containerd-shim-traced-runc-v2")
            )]
        );
    }

    /// [`fake_shims`] and an empty wrapper binary beside them.
    fn fake_shims_and_wrapper(dir: &Path) -> (OsString, PathBuf) {
        let wrapper = dir.join("containerd-shim-traced-v2");
        fs::write(&wrapper, "").unwrap();
        (fake_shims(dir), wrapper)
    }

    fn fake_shims(dir: &Path) -> OsString {
        let bin = dir.join("sys");
        fs::create_dir_all(&bin).unwrap();
        for name in ["containerd-shim-runc-v2", "runsc"] {
            let path = bin.join(name);
            fs::write(&path, "#!/bin/sh\n").unwrap();
            fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
        }
        bin.into_os_string()
    }

    /// An install of [`fake_shims_and_wrapper`] in `dir` into the directory `bin` below it (created)
    /// for the daemon.json `config` below it.
    fn fake_install(dir: &Path, bin: &str, config: &str, write: bool) -> DockerInstall {
        let (shim_path, wrapper) = fake_shims_and_wrapper(dir);
        let bin = dir.join(bin);
        fs::create_dir_all(&bin).unwrap();
        DockerInstall {
            config: dir.join(config),
            wrapper: Some(wrapper),
            bin_dir: Some(bin),
            write,
            runsc: None,
            shim_path: Some(shim_path),
        }
    }

    /// The shims come from the list given (the CLI's --shim-path), which a failure names; a
    /// missing --bin-dir says what to do.
    #[test]
    fn shims_come_from_the_shim_path_and_failures_say_what_to_do() {
        let dir = tempfile::tempdir().unwrap();
        let mut opts = fake_install(dir.path(), "bin", "daemon.json", false);
        let outcome = install_docker(&opts).unwrap();
        let shim = dir.path().join("sys/containerd-shim-runc-v2");
        assert_eq!(outcome.plan.runtimes[0].inner, shim);

        let empty = dir.path().join("empty");
        fs::create_dir_all(&empty).unwrap();
        opts.shim_path = Some(empty.clone().into_os_string());
        let text = install_docker(&opts).unwrap_err().to_string();
        assert!(
            text.contains(&format!("in --shim-path {:?}", empty.display().to_string()))
                && !text.contains("apt-get"),
            "{text}"
        );

        let mut opts = fake_install(dir.path(), "bin", "daemon.json", true);
        let missing = dir.path().join("nonexistent/bin");
        opts.bin_dir = Some(missing.clone());
        let text = install_docker(&opts).unwrap_err().to_string();
        assert!(
            text.contains(&missing.display().to_string())
                && text.contains("create it or pick another --bin-dir"),
            "{text}"
        );
    }

    #[test]
    fn install_then_uninstall_leaves_everything_as_it_was() {
        let dir = tempfile::tempdir().unwrap();
        let opts = fake_install(dir.path(), "local/bin", "docker/daemon.json", true);
        let (config, bin) = (opts.config.clone(), opts.bin_dir.clone().unwrap());
        fs::create_dir_all(config.parent().unwrap()).unwrap();
        let original = "{\n\t\"debug\": true,\n\t\"runtimes\": {\"runsc\": {\"path\": \"runsc\", \"runtimeArgs\": [\"--network=none\"]}}\n}\n";
        fs::write(&config, original).unwrap();
        let outcome = install_docker(&opts).unwrap();
        let names: Vec<&str> = outcome
            .plan
            .runtimes
            .iter()
            .map(|r| r.name.as_str())
            .collect();
        assert_eq!(names, ["traced-runc", GVISOR_RUNTIME]);
        let doc = parse_daemon_json(&fs::read_to_string(&config).unwrap(), &config).unwrap();
        assert_eq!(doc["debug"], true);
        assert_eq!(
            doc["runtimes"]["traced-runc"]["runtimeType"],
            bin.join("containerd-shim-traced-runc-v2")
                .display()
                .to_string()
        );
        assert_eq!(
            doc["runtimes"][GVISOR_RUNTIME]["runtimeType"],
            bin.join("containerd-shim-traced-runsc-docker-v2")
                .display()
                .to_string()
        );
        assert_eq!(
            fs::read_link(bin.join("containerd-shim-traced-runsc-docker-v2")).unwrap(),
            opts.wrapper.clone().unwrap()
        );
        // runsc is looked up on PATH as dockerd would, and keeps its runtimeArgs.
        let runc = fs::read_to_string(dir.path().join("local/lib/shimtrace/gvisor/runc")).unwrap();
        let runsc = Path::new(opts.shim_path.as_deref().unwrap()).join("runsc");
        assert!(
            runc.contains(&format!(
                "exec '{}' '--network=none' \"$@\"",
                runsc.display()
            )),
            "{runc}"
        );
        assert_eq!(
            fs::read_to_string(outcome.backup.as_ref().unwrap()).unwrap(),
            original
        );
        assert!(outcome.report.contains("restart dockerd"));

        // A second install changes nothing and is still undone by one uninstall.
        install_docker(&opts).unwrap();
        let undone = uninstall_docker(&config).unwrap();
        assert_eq!(undone.removed_runtimes, ["traced-runc", GVISOR_RUNTIME]);
        assert!(undone.kept.is_empty(), "{:?}", undone.kept);
        let back = parse_daemon_json(&fs::read_to_string(&config).unwrap(), &config).unwrap();
        assert_eq!(back, parse_daemon_json(original, &config).unwrap());
        let mut left: Vec<String> = walk(dir.path());
        left.retain(|p| !p.contains(".bak-"));
        left.sort();
        assert_eq!(
            left,
            [
                "containerd-shim-traced-v2",
                "docker",
                "docker/daemon.json",
                "local",
                "local/bin",
                "sys",
                "sys/containerd-shim-runc-v2",
                "sys/runsc"
            ]
        );
        assert!(matches!(
            uninstall_docker(&config),
            Err(DockerError::NoState { .. })
        ));
    }

    #[test]
    fn a_daemon_json_install_created_is_removed_by_uninstall() {
        let dir = tempfile::tempdir().unwrap();
        let opts = fake_install(dir.path(), "bin", "daemon.json", true);
        let config = opts.config.clone();
        install_docker(&opts).unwrap();
        assert!(config.exists());
        let undone = uninstall_docker(&config).unwrap();
        assert!(undone.removed_config);
        assert!(!config.exists());
        assert!(!state_path(&config).exists());
    }

    #[test]
    fn without_write_nothing_is_touched_and_a_foreign_script_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut opts = fake_install(dir.path(), "bin", "daemon.json", false);
        let (config, bin) = (opts.config.clone(), opts.bin_dir.clone().unwrap());
        let outcome = install_docker(&opts).unwrap();
        assert!(outcome.snippet.contains("traced-runc"));
        assert!(outcome.report.contains("pass --write"));
        assert!(!config.exists() && fs::read_dir(&bin).unwrap().next().is_none());

        fs::write(
            bin.join("containerd-shim-runsc-docker-v2"),
            "#!/bin/sh\n# mine\n",
        )
        .unwrap();
        opts.write = true;
        let err = install_docker(&opts).unwrap_err();
        assert!(matches!(err, DockerError::NotOurs { .. }), "{err}");
        assert!(!config.exists(), "nothing merged after a refusal");
        let mut left: Vec<String> = walk(dir.path());
        left.sort();
        assert!(
            !left
                .iter()
                .any(|p| p.starts_with("lib") || p.starts_with("bin/containerd-shim-traced")),
            "nothing written after a refusal: {left:?}"
        );
    }

    fn walk(root: &Path) -> Vec<String> {
        let mut out = Vec::new();
        let mut stack = vec![root.to_path_buf()];
        while let Some(dir) = stack.pop() {
            for entry in fs::read_dir(&dir).unwrap().flatten() {
                let path = entry.path();
                out.push(path.strip_prefix(root).unwrap().display().to_string());
                if entry.file_type().unwrap().is_dir() {
                    stack.push(path);
                }
            }
        }
        out
    }
}
