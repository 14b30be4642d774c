//! Runtime profiles: which runtime (name or shim path) and options each lab column runs under, from a
//! TOML file or the built-in defaults, and whether a profile can run on this machine.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use shimtrace_containerd::docker::shell_quote;
use shimtrace_containerd::files::{io_err, replace_file, FileError};
use shimtrace_containerd::{RunSpec, RuncOptions};
use shimtrace_span::naming::{which, ShimName};

/// The runtime of the default runc-based profiles; the lab names [`TRACED_RUNC_RUNTIME`] instead when
/// it runs them through the wrapper. A profile in a `--profiles` file may name any runtime.
pub const RUNC_RUNTIME: &str = shimtrace_containerd::RUNC_RUNTIME;
/// The traced counterpart of [`RUNC_RUNTIME`], used when the wrapper shim is installed.
pub const TRACED_RUNC_RUNTIME: &str = "io.containerd.traced-runc.v2";

/// containerd's runc shim (`containerd-shim-runc-v2`), which the runc, runsc and crun profiles run
/// through; traced, it is [`TRACED_RUNC_RUNTIME`] with the binary `containerd-shim-traced-runc-v2`.
pub fn runc_shim() -> ShimName {
    ShimName {
        inner: "runc".into(),
        version: "v2".into(),
    }
}

/// Kata's shim (`containerd-shim-kata-v2`); traced, `containerd-shim-traced-kata-v2`.
pub fn kata_shim() -> ShimName {
    ShimName {
        inner: "kata".into(),
        version: "v2".into(),
    }
}

/// Why a profile could not be built or read.
#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    #[error("cannot read profiles file {path}: {source} (pass --profiles a readable TOML file)")]
    Read { path: PathBuf, source: io::Error },
    #[error(
        "profiles file {path} is not valid: {message} (see `shimtrace lab --help` for the format)"
    )]
    Parse { path: PathBuf, message: String },
    #[error("the runsc wrapper {path}: {source} (pass a writable --out directory)")]
    Wrapper { path: PathBuf, source: FileError },
}

/// The network a workload gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Network {
    /// An empty network namespace (gVisor: `--network=none`).
    None,
    /// The host's network namespace (gVisor: `--network=host`).
    Host,
}

/// One runtime configuration to measure.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    pub name: String,
    /// containerd runtime name (`io.containerd.runc.v2`) or absolute path of a shim.
    pub runtime: String,
    /// Shim binary containerd should exec (CRI's `runtime_path`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime_path: Option<PathBuf>,
    /// OCI runtime binary for the runc shim (`containerd.runc.v1.Options.BinaryName`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub binary_name: Option<String>,
    /// Run gVisor: the lab writes wrappers around this runsc binary that add `--network=none|host
    /// --ignore-cgroups` and uses them as `binary_name`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runsc: Option<PathBuf>,
    /// Executables that must be on PATH (or absolute paths that must exist) for the profile to run.
    #[serde(default)]
    pub requires: Vec<String>,
    /// The runtime boots a VM (its guest dmesg gives the in-kernel boot time).
    #[serde(default)]
    pub vm: bool,
}

/// The profiles file: `[[profile]]` tables.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProfilesFile {
    #[serde(rename = "profile")]
    pub profiles: Vec<Profile>,
}

/// The built-in profiles: runc, gVisor through the runc shim, crun, Kata. `runc_runtime` is the
/// runtime the runc-shim-based profiles use (plain or traced); `traced_dir` holds the wrapper's
/// `containerd-shim-traced-*` links, which then serve as each profile's shim.
pub fn default_profiles(runc_runtime: &str, traced_dir: Option<&Path>) -> Vec<Profile> {
    let traced = |binary: &str| {
        traced_dir
            .map(|dir| dir.join(binary))
            .filter(|path| path.exists())
    };
    let runc_path = if runc_runtime == TRACED_RUNC_RUNTIME {
        traced(&runc_shim().traced_binary())
    } else {
        None
    };
    let kata_path = traced(&kata_shim().traced_binary());
    vec![
        Profile {
            name: "runc".into(),
            runtime: runc_runtime.into(),
            runtime_path: runc_path.clone(),
            binary_name: None,
            runsc: None,
            requires: vec!["runc".into()],
            vm: false,
        },
        Profile {
            name: "runsc".into(),
            runtime: runc_runtime.into(),
            runtime_path: runc_path.clone(),
            binary_name: None,
            runsc: Some(which("runsc").unwrap_or_else(|| PathBuf::from("/usr/bin/runsc"))),
            requires: vec!["runsc".into()],
            vm: false,
        },
        Profile {
            name: "crun".into(),
            runtime: runc_runtime.into(),
            runtime_path: runc_path.clone(),
            binary_name: Some(
                which("crun")
                    .unwrap_or_else(|| PathBuf::from("/usr/bin/crun"))
                    .display()
                    .to_string(),
            ),
            runsc: None,
            requires: vec!["crun".into()],
            vm: false,
        },
        Profile {
            name: "kata".into(),
            runtime: if kata_path.is_some() {
                kata_shim().traced_runtime()
            } else {
                kata_shim().runtime()
            },
            runtime_path: kata_path,
            binary_name: None,
            runsc: None,
            requires: vec![kata_shim().binary()],
            vm: true,
        },
    ]
}

/// Reads a profiles file.
pub fn load_profiles(path: &Path) -> Result<Vec<Profile>, ProfileError> {
    let text = fs::read_to_string(path).map_err(|source| ProfileError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse_profiles(&text).map_err(|message| ProfileError::Parse {
        path: path.to_path_buf(),
        message,
    })
}

/// Parses the text of a profiles file.
pub fn parse_profiles(text: &str) -> Result<Vec<Profile>, String> {
    let file: ProfilesFile = toml::from_str(text).map_err(|e| e.to_string())?;
    let mut seen = std::collections::BTreeSet::new();
    for profile in &file.profiles {
        if profile.name.is_empty()
            || !profile
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(format!(
                "profile name {:?} must be non-empty letters, digits, '-' or '_'",
                profile.name
            ));
        }
        if !seen.insert(profile.name.clone()) {
            return Err(format!("profile {:?} is defined twice", profile.name));
        }
    }
    Ok(file.profiles)
}

impl Profile {
    /// Why this profile cannot run here, if a required executable is missing.
    pub fn missing_requirement(&self) -> Option<String> {
        self.requires
            .iter()
            .find(|r| which(r).is_none())
            .map(|r| format!("not installed ({r} not found on PATH)"))
    }

    /// Fills the runtime fields of `spec` for this profile; `work_dir` holds generated runsc
    /// wrappers.
    pub fn apply(
        &self,
        spec: &mut RunSpec,
        network: Network,
        work_dir: &Path,
    ) -> Result<(), ProfileError> {
        spec.runtime = self.runtime.clone();
        spec.runtime_path = self.runtime_path.clone();
        spec.host_network = network == Network::Host;
        let binary_name = match &self.runsc {
            Some(runsc) => Some(
                write_runsc_wrapper(work_dir, runsc, network)?
                    .display()
                    .to_string(),
            ),
            None => self.binary_name.clone(),
        };
        spec.runtime_options = binary_name.map(|b| RuncOptions {
            binary_name: Some(b),
            ..Default::default()
        });
        Ok(())
    }
}

/// Writes (once) a script that runs `runsc` with the given network and no cgroup setup, for use as
/// the runc shim's `BinaryName`; returns its path.
pub fn write_runsc_wrapper(
    dir: &Path,
    runsc: &Path,
    network: Network,
) -> Result<PathBuf, ProfileError> {
    let (suffix, flag) = match network {
        Network::None => ("nonet", "--network=none"),
        Network::Host => ("hostnet", "--network=host"),
    };
    let script = format!(
        "#!/bin/sh\n# Generated by shimtrace lab: gVisor for containerd's runc shim.\nexec {} {flag} --ignore-cgroups \"$@\"\n",
        shell_quote(&runsc.display().to_string())
    );
    write_script(&dir.join(format!("runsc-{suffix}")), &script)
}

/// Writes (once) the runc shim's `BinaryName` for gVisor pods under CRI (`shimtrace lab --engine
/// cri`); returns its path. On top of host networking and no cgroup setup, it adapts runsc to the
/// runc shim in a pod:
/// - every container gets a gVisor sandbox of its own: runsc would run a pod's containers inside
///   the pod's sandbox (named by CRI's annotations in the bundle), and the runc shim never learns
///   when such a container exits (gVisor's pod mode needs gVisor's own shim,
///   `containerd-shim-runsc-v1`), so the wrapper renames those annotations at `create`;
/// - `kill` of a sandbox that has already exited succeeds, as `runc kill --all` does: CRI kills
///   what is left of an exited container before removing it, and fails otherwise.
pub fn write_runsc_cri_wrapper(dir: &Path, runsc: &Path) -> Result<PathBuf, ProfileError> {
    let script = format!(
        r#"#!/bin/sh
# Generated by shimtrace lab: gVisor for containerd's runc shim in CRI pods.
runsc={runsc}
prev=
for arg in "$@"; do
  if [ "$prev" = --bundle ] && [ -f "$arg/config.json" ]; then
    sed -i -e 's/"io\.kubernetes\.cri\.container-type"/"shimtrace.lab.container-type"/' \
      -e 's/"io\.kubernetes\.cri\.sandbox-id"/"shimtrace.lab.sandbox-id"/' "$arg/config.json"
  fi
  if [ "$arg" = kill ]; then
    out=$("$runsc" --network=host --ignore-cgroups "$@" 2>&1) && exit 0
    case "$out" in *"is not running"*) exit 0 ;; esac
    printf '%s\n' "$out" >&2
    exit 1
  fi
  prev=$arg
done
exec "$runsc" --network=host --ignore-cgroups "$@"
"#,
        runsc = shell_quote(&runsc.display().to_string())
    );
    write_script(&dir.join("runsc-cri"), &script)
}

/// Writes `script` to `path` (mode 0755) unless it already holds exactly that.
fn write_script(path: &Path, script: &str) -> Result<PathBuf, ProfileError> {
    let wrapper_err = |source| ProfileError::Wrapper {
        path: path.to_path_buf(),
        source,
    };
    if fs::read_to_string(path).ok().as_deref() != Some(script) {
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir)
                .map_err(io_err("cannot create", dir))
                .map_err(wrapper_err)?;
        }
        replace_file(path, script, Some(0o755)).map_err(wrapper_err)?;
    }
    Ok(path.to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn parses_profiles_and_rejects_duplicates() {
        let text = r#"
            [[profile]]
            name = "runc"
            runtime = "io.containerd.runc.v2"

            [[profile]]
            name = "gvisor"
            runtime = "io.containerd.traced-runc.v2"
            runsc = "/usr/bin/runsc"
        "#;
        let profiles = parse_profiles(text).unwrap();
        assert_eq!(profiles.len(), 2);
        assert_eq!(
            profiles[1].runsc.as_deref(),
            Some(Path::new("/usr/bin/runsc"))
        );
        let dup = format!("{text}\n[[profile]]\nname = \"runc\"\nruntime = \"x\"\n");
        assert!(parse_profiles(&dup).unwrap_err().contains("defined twice"));
        assert!(parse_profiles("[[profile]]\nname = \"a\"\nruntime = \"x\"\nbogus = 1\n").is_err());
    }

    #[test]
    fn runsc_wrapper_sets_network_and_binary_name() {
        let dir = tempfile::tempdir().unwrap();
        let profile = Profile {
            runsc: Some("/usr/bin/runsc".into()),
            ..default_profiles(RUNC_RUNTIME, None)[0].clone()
        };
        let mut spec = RunSpec::new("x", "/r", ["/bin/true"], "/io");
        profile.apply(&mut spec, Network::Host, dir.path()).unwrap();
        let wrapper = spec.runtime_options.unwrap().binary_name.unwrap();
        let script = fs::read_to_string(&wrapper).unwrap();
        assert!(script.contains("exec '/usr/bin/runsc' --network=host --ignore-cgroups \"$@\""));
        assert!(spec.host_network);
    }

    #[test]
    fn the_cri_runsc_wrapper_gives_each_container_its_own_sandbox() {
        let dir = tempfile::tempdir().unwrap();
        let path = write_runsc_cri_wrapper(dir.path(), Path::new("/opt/it's/runsc")).unwrap();
        let script = fs::read_to_string(&path).unwrap();
        assert!(script.starts_with("#!/bin/sh\n"));
        assert!(script.contains("runsc='/opt/it'\\''s/runsc'"), "{script}");
        assert!(script.contains("exec \"$runsc\" --network=host --ignore-cgroups \"$@\""));
        assert!(
            script.contains("io\\.kubernetes\\.cri\\.sandbox-id"),
            "{script}"
        );
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o755
        );
        // Written once: the same content leaves the file alone.
        let again = write_runsc_cri_wrapper(dir.path(), Path::new("/opt/it's/runsc")).unwrap();
        assert_eq!(again, path);
    }

    #[test]
    fn runtime_and_binary_names_follow_the_shims() {
        assert_eq!(runc_shim().traced_runtime(), TRACED_RUNC_RUNTIME);
        assert_eq!(runc_shim().runtime(), RUNC_RUNTIME);
        assert_eq!(
            runc_shim().traced_binary(),
            "containerd-shim-traced-runc-v2"
        );
        assert_eq!(
            kata_shim().traced_binary(),
            "containerd-shim-traced-kata-v2"
        );
        let kata = default_profiles(RUNC_RUNTIME, None).pop().unwrap();
        assert_eq!(kata.runtime, "io.containerd.kata.v2");
        assert_eq!(kata.requires, ["containerd-shim-kata-v2"]);
    }

    #[test]
    fn missing_requirement_names_the_binary() {
        let mut profile = default_profiles(RUNC_RUNTIME, None).pop().unwrap();
        profile.requires = vec!["definitely-not-installed-shim".into()];
        assert!(profile
            .missing_requirement()
            .unwrap()
            .contains("definitely-not-installed-shim"));
    }
}
