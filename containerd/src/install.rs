//! `shimtrace install`: registers the wrapper shim for the runtimes present. It symlinks
//! `containerd-shim-traced-<inner>-<ver>` to the wrapper for each real shim on PATH, prints (or with
//! `--write` merges into containerd's config, after a timestamped backup) the CRI runtime entries —
//! `runtime_type` = the real runtime so its options keep their type, `runtime_path` = the wrapper —
//! and a Kubernetes RuntimeClass per traced runtime.

use std::fmt::Write as _;
use std::fs;
use std::io;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};

use toml_edit::{value, DocumentMut, Item, Table};

use shimtrace_span::naming::{find_in_path, which, ShimName, WRAPPER_BINARY};

use crate::private::config_version_of;

/// `shimtrace install` options.
#[derive(Debug, Clone, clap::Args)]
pub struct InstallArgs {
    /// The wrapper binary (default: containerd-shim-traced-v2 beside shimtrace, else on PATH).
    #[arg(long)]
    pub wrapper: Option<PathBuf>,
    /// Where to create the containerd-shim-traced-* symlinks (default: the wrapper's directory).
    #[arg(long)]
    pub bin_dir: Option<PathBuf>,
    /// containerd's config file to merge into with --write.
    #[arg(long, default_value = "/etc/containerd/config.toml")]
    pub config: PathBuf,
    /// Merge the runtime entries into --config (a timestamped backup is written first).
    #[arg(long)]
    pub write: bool,
    /// Config schema: 2 for containerd 1.x, 3 for 2.x (default: from `containerd --version`).
    #[arg(long, value_parser = clap::value_parser!(u32).range(2..=3))]
    pub config_version: Option<u32>,
    /// The containerd binary whose version picks the config schema.
    #[arg(long, default_value = "containerd")]
    pub containerd: PathBuf,
}

/// What can go wrong installing.
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error("wrapper binary {WRAPPER_BINARY} not found beside shimtrace or on PATH: build it (cargo build -p shimtrace-shim) or pass --wrapper")]
    NoWrapper,
    #[error("wrapper {0} does not exist (check --wrapper)")]
    WrapperMissing(PathBuf),
    #[error("no containerd shims (containerd-shim-<name>-<version>) found on PATH: install containerd's runc shim (apt-get install containerd)")]
    NoShims,
    #[error("{path} exists and is not a symlink; refusing to replace it (move it away or pick --bin-dir)")]
    NotSymlink { path: PathBuf },
    #[error("{path} is not valid TOML: {message} (fix it, or merge the printed snippet by hand)")]
    BadConfig { path: PathBuf, message: String },
    #[error("{path} uses config version {found}; this containerd needs version {expected} (run `containerd config migrate` first)")]
    ConfigVersion {
        path: PathBuf,
        found: i64,
        expected: u32,
    },
    #[error("{context} {path}: {source}")]
    Io {
        context: &'static str,
        path: PathBuf,
        source: io::Error,
    },
}

fn io_err(context: &'static str, path: &Path) -> impl FnOnce(io::Error) -> InstallError {
    let path = path.to_path_buf();
    move |source| InstallError::Io {
        context,
        path,
        source,
    }
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
            format!("traced-{}", self.name.inner)
        } else {
            format!("traced-{}-{}", self.name.inner, self.name.version)
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
    pub runtime_type: String,
    pub runtime_path: PathBuf,
    /// `BinaryName` for the runc shim (gVisor through runc), when set.
    pub binary_name: Option<String>,
}

/// The CRI plugin's runtimes table path for a config schema version.
pub fn cri_runtimes_path(config_version: u32) -> [&'static str; 4] {
    if config_version >= 3 {
        [
            "plugins",
            "io.containerd.cri.v1.runtime",
            "containerd",
            "runtimes",
        ]
    } else {
        [
            "plugins",
            "io.containerd.grpc.v1.cri",
            "containerd",
            "runtimes",
        ]
    }
}

fn table_at<'a>(doc: &'a mut Table, path: &[&str]) -> &'a mut Table {
    let mut table = doc;
    for key in path {
        let item = table.entry(key).or_insert_with(|| {
            let mut t = Table::new();
            t.set_implicit(true);
            Item::Table(t)
        });
        if !item.is_table() {
            *item = Item::Table(Table::new());
        }
        table = item.as_table_mut().expect("just made a table");
    }
    table
}

/// Merges the runtime entries into `existing` (a containerd config, possibly empty); options of the
/// real runtime's existing entry (e.g. `SystemdCgroup`) are carried over.
pub fn merge_config(
    existing: &str,
    config_version: u32,
    runtimes: &[TracedRuntime],
    path_for_errors: &Path,
) -> Result<String, InstallError> {
    let mut doc: DocumentMut =
        existing
            .parse()
            .map_err(|e: toml_edit::TomlError| InstallError::BadConfig {
                path: path_for_errors.to_path_buf(),
                message: e.to_string(),
            })?;
    let found = doc.get("version").and_then(Item::as_integer);
    match found {
        Some(v) if v != i64::from(config_version) => {
            return Err(InstallError::ConfigVersion {
                path: path_for_errors.to_path_buf(),
                found: v,
                expected: config_version,
            })
        }
        None if !doc.as_table().is_empty() => {
            // containerd reads a config without `version` as version 1.
            return Err(InstallError::ConfigVersion {
                path: path_for_errors.to_path_buf(),
                found: 1,
                expected: config_version,
            });
        }
        None => {
            doc.insert("version", value(i64::from(config_version)));
        }
        _ => {}
    }
    let table_path = cri_runtimes_path(config_version);
    let runtimes_table = table_at(doc.as_table_mut(), &table_path);
    for runtime in runtimes {
        // Options of an existing entry for the real runtime (CRI's default handler name is the
        // shim's inner name, e.g. `runc`).
        let inner_options = runtimes_table
            .iter()
            .find(|(name, item)| {
                !name.starts_with("traced-")
                    && item
                        .get("runtime_type")
                        .and_then(Item::as_str)
                        .is_some_and(|t| t == runtime.runtime_type)
            })
            .and_then(|(_, item)| item.get("options").and_then(Item::as_table).cloned());
        let mut entry = Table::new();
        entry.insert("runtime_type", value(&runtime.runtime_type));
        entry.insert(
            "runtime_path",
            value(runtime.runtime_path.display().to_string()),
        );
        let mut options = inner_options.unwrap_or_default();
        if let Some(binary) = &runtime.binary_name {
            options.insert("BinaryName", value(binary));
        }
        if !options.is_empty() {
            options.set_implicit(false);
            entry.insert("options", Item::Table(options));
        }
        runtimes_table.insert(&runtime.handler, Item::Table(entry));
    }
    Ok(doc.to_string())
}

/// A RuntimeClass manifest for a handler.
pub fn runtime_class_yaml(handler: &str) -> String {
    format!(
        "apiVersion: node.k8s.io/v1\nkind: RuntimeClass\nmetadata:\n  name: {handler}\nhandler: {handler}\n"
    )
}

/// Creates (or refreshes) `link` → `target`; never replaces a regular file.
pub fn ensure_symlink(link: &Path, target: &Path) -> Result<bool, InstallError> {
    match fs::symlink_metadata(link) {
        Ok(meta) if meta.file_type().is_symlink() => {
            if fs::read_link(link).ok().as_deref() == Some(target) {
                return Ok(false);
            }
            fs::remove_file(link).map_err(io_err("cannot replace symlink", link))?;
        }
        Ok(_) => {
            return Err(InstallError::NotSymlink {
                path: link.to_path_buf(),
            })
        }
        Err(_) => {}
    }
    symlink(target, link).map_err(io_err("cannot create symlink", link))?;
    Ok(true)
}

/// Writes `content` to `config`, backing up the current file to `<config>.bak-<unix seconds>`;
/// returns the backup's path if there was a file.
pub fn write_config_with_backup(
    config: &Path,
    content: &str,
) -> Result<Option<PathBuf>, InstallError> {
    let mut backup = None;
    if config.exists() {
        let secs = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let mut path = PathBuf::from(format!("{}.bak-{secs}", config.display()));
        let mut n = 1;
        while path.exists() {
            path = PathBuf::from(format!("{}.bak-{secs}-{n}", config.display()));
            n += 1;
        }
        fs::copy(config, &path).map_err(io_err("cannot back up", config))?;
        backup = Some(path);
    } else if let Some(parent) = config.parent() {
        fs::create_dir_all(parent).map_err(io_err("cannot create", parent))?;
    }
    let tmp = PathBuf::from(format!("{}.shimtrace-tmp", config.display()));
    fs::write(&tmp, content).map_err(io_err("cannot write", &tmp))?;
    fs::rename(&tmp, config).map_err(io_err("cannot replace", config))?;
    Ok(backup)
}

/// What `install` did and the text it prints.
#[derive(Debug, Clone, PartialEq)]
pub struct InstallOutcome {
    pub runtimes: Vec<TracedRuntime>,
    pub created_links: Vec<PathBuf>,
    pub config_snippet: String,
    pub backup: Option<PathBuf>,
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

/// Runs `shimtrace install`.
pub fn install(args: &InstallArgs) -> Result<InstallOutcome, InstallError> {
    let wrapper = find_wrapper(args.wrapper.as_deref())?;
    let bin_dir = match &args.bin_dir {
        Some(dir) => dir.clone(),
        None => wrapper.parent().map(Path::to_path_buf).unwrap_or_default(),
    };
    let path_var = std::env::var_os("PATH").unwrap_or_default();
    let shims = find_real_shims(&path_var);
    if shims.is_empty() {
        return Err(InstallError::NoShims);
    }
    let config_version = args
        .config_version
        .unwrap_or_else(|| config_version_of(&args.containerd));
    let mut runtimes = Vec::new();
    let mut created_links = Vec::new();
    for shim in &shims {
        let link = bin_dir.join(shim.name.traced_binary());
        if ensure_symlink(&link, &wrapper)? {
            created_links.push(link.clone());
        }
        let handler = shim.handler(&shims);
        runtimes.push(TracedRuntime {
            handler: handler.clone(),
            runtime_type: shim.name.runtime(),
            runtime_path: link.clone(),
            binary_name: None,
        });
        // gVisor runs through the runc shim with runsc as its OCI binary.
        if handler == "traced-runc" {
            if let Some(runsc) = which("runsc") {
                runtimes.push(TracedRuntime {
                    handler: "traced-runsc".into(),
                    runtime_type: shim.name.runtime(),
                    runtime_path: link,
                    binary_name: Some(runsc.display().to_string()),
                });
            }
        }
    }
    let config_snippet = merge_config("", config_version, &runtimes, Path::new("(snippet)"))?;
    let mut backup = None;
    if args.write {
        let existing = match fs::read_to_string(&args.config) {
            Ok(text) => text,
            Err(e) if e.kind() == io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(io_err("cannot read", &args.config)(e)),
        };
        let merged = merge_config(&existing, config_version, &runtimes, &args.config)?;
        backup = write_config_with_backup(&args.config, &merged)?;
    }

    let mut report = String::new();
    let _ = writeln!(report, "# wrapper: {}", wrapper.display());
    for shim in &shims {
        let _ = writeln!(
            report,
            "# {} -> {} (wraps {})",
            bin_dir.join(shim.name.traced_binary()).display(),
            wrapper.display(),
            shim.path.display()
        );
    }
    let _ = writeln!(report, "\n# containerd config (version {config_version}):");
    report.push_str(&config_snippet);
    if args.write {
        let _ = writeln!(
            report,
            "\n# merged into {}{}; restart containerd to load it",
            args.config.display(),
            backup
                .as_ref()
                .map(|b| format!(" (backup: {})", b.display()))
                .unwrap_or_default()
        );
    } else {
        let _ = writeln!(
            report,
            "\n# not written: pass --write to merge this into {} (a backup is kept)",
            args.config.display()
        );
    }
    let _ = writeln!(report, "\n# Kubernetes RuntimeClasses:");
    for (i, runtime) in runtimes.iter().enumerate() {
        if i > 0 {
            report.push_str("---\n");
        }
        report.push_str(&runtime_class_yaml(&runtime.handler));
    }
    Ok(InstallOutcome {
        runtimes,
        created_links,
        config_snippet,
        backup,
        report,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn runc(path: &str) -> TracedRuntime {
        TracedRuntime {
            handler: "traced-runc".into(),
            runtime_type: "io.containerd.runc.v2".into(),
            runtime_path: path.into(),
            binary_name: None,
        }
    }

    fn parse_name(name: &str) -> Option<(String, String)> {
        ShimName::parse_binary(name).map(|n| (n.inner, n.version))
    }

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

    #[test]
    fn real_shims_are_found_first_on_path_and_never_ours() {
        use std::os::unix::fs::PermissionsExt;
        let first = tempfile::tempdir().unwrap();
        let second = tempfile::tempdir().unwrap();
        let make = |dir: &Path, name: &str| {
            let path = dir.join(name);
            fs::write(&path, "#!/bin/sh\n").unwrap();
            fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
            path
        };
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
    fn snippet_for_v2_and_v3() {
        let v2 = merge_config(
            "",
            2,
            &[runc("/b/containerd-shim-traced-runc-v2")],
            Path::new("x"),
        )
        .unwrap();
        assert!(v2.starts_with("version = 2\n"), "{v2}");
        assert!(
            v2.contains(r#"[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.traced-runc]"#),
            "{v2}"
        );
        assert!(v2.contains(r#"runtime_type = "io.containerd.runc.v2""#));
        assert!(v2.contains(r#"runtime_path = "/b/containerd-shim-traced-runc-v2""#));
        let v3 = merge_config("", 3, &[runc("/b/w")], Path::new("x")).unwrap();
        assert!(
            v3.contains(
                r#"[plugins."io.containerd.cri.v1.runtime".containerd.runtimes.traced-runc]"#
            ),
            "{v3}"
        );
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
        let merged = merge_config(existing, 2, &[runc("/b/w"), gvisor], Path::new("x")).unwrap();
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
        let again = merge_config(&merged, 2, &[runc("/b/w")], Path::new("x")).unwrap();
        assert_eq!(
            toml::from_str::<toml::Value>(&again).unwrap()["plugins"],
            toml::from_str::<toml::Value>(&merged).unwrap()["plugins"]
        );
    }

    #[test]
    fn refuses_wrong_version_and_bad_toml() {
        let err = merge_config("version = 3\n", 2, &[runc("/w")], Path::new("/c")).unwrap_err();
        assert!(err.to_string().contains("config migrate"));
        let err =
            merge_config("[plugins]\nx = 1\n", 2, &[runc("/w")], Path::new("/c")).unwrap_err();
        assert!(matches!(err, InstallError::ConfigVersion { found: 1, .. }));
        let err = merge_config("version = = 2", 2, &[runc("/w")], Path::new("/c")).unwrap_err();
        assert!(matches!(err, InstallError::BadConfig { .. }));
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
}
