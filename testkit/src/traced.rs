//! A private containerd with the shimtrace wrapper installed: wrapper symlinks on its `PATH`, its own
//! spool and run directories, and helpers to read and await the spans it records.

use std::path::{Path, PathBuf};
use std::sync::LazyLock;
use std::time::{Duration, Instant};

use shimtrace_span::naming::ShimName;
use shimtrace_span::spool::read_spool;
use shimtrace_span::SpanRecord;

use crate::containerd::{ContainerdVersion, HarnessError, Options, Prepared, TestContainerd};
use crate::tmpfs::TmpfsMount;

pub use shimtrace_span::naming::WRAPPER_BINARY;

/// The real shim the tests wrap: containerd's runc shim, `containerd-shim-runc-v2`.
pub fn runc_shim() -> ShimName {
    ShimName {
        inner: "runc".into(),
        version: "v2".into(),
    }
}

/// The runtime name under which tests run containers through the wrapper
/// (`io.containerd.traced-runc.v2`).
pub static TRACED_RUNC: LazyLock<String> = LazyLock::new(|| runc_shim().traced_runtime());

/// The built wrapper binary: `$SHIMTRACE_WRAPPER_BIN`, else beside this test's target directory
/// (`cargo build` builds it; `.ci/run` does so before the tests).
pub fn wrapper_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("SHIMTRACE_WRAPPER_BIN") {
        return PathBuf::from(path);
    }
    built_binary(WRAPPER_BINARY)
}

/// A binary of this workspace as `cargo build --workspace` left it beside the running test's target
/// directory (`shimtrace`, `shimtrace-bench`, the wrapper).
pub fn built_binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test> → target/<profile>/
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test executable in target/<profile>/deps");
    let candidate = profile_dir.join(name);
    assert!(
        candidate.exists(),
        "{} not found: run `cargo build --workspace` first",
        candidate.display()
    );
    candidate
}

/// A harness whose wrappers spool spans: reading and awaiting them (the traced containerd, the
/// private dockerd, the CRI node).
pub trait Spooled {
    /// The spool directory its wrappers write.
    fn spool_dir(&self) -> PathBuf;

    /// Every span in the spool now.
    fn spans(&self) -> Vec<SpanRecord> {
        read_spool(&self.spool_dir())
            .map(|c| c.spans)
            .unwrap_or_default()
    }

    /// Spans of container (or sandbox) `id`, its full id.
    fn spans_of(&self, id: &str) -> Vec<SpanRecord> {
        self.spans()
            .into_iter()
            .filter(|s| s.container_id() == Some(id))
            .collect()
    }

    /// Waits until the spans of container `id` satisfy `done` (spans are written asynchronously by
    /// the proxy); returns them, or panics with what was there after `timeout`.
    fn await_spans(
        &self,
        id: &str,
        timeout: Duration,
        done: impl Fn(&[SpanRecord]) -> bool,
    ) -> Vec<SpanRecord> {
        let deadline = Instant::now() + timeout;
        loop {
            let spans = self.spans_of(id);
            if done(&spans) {
                return spans;
            }
            if Instant::now() > deadline {
                let names: Vec<_> = spans.iter().map(|s| s.name.as_str()).collect();
                panic!("spans of {id} never met the condition; have {names:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Spooled for Traced {
    fn spool_dir(&self) -> PathBuf {
        self.spool.clone()
    }
}

/// A private containerd whose shims can be wrapped, and where the wrapper keeps its spans.
pub struct Traced {
    pub containerd: TestContainerd,
    pub spool: PathBuf,
    pub run_dir: PathBuf,
    /// The directory on containerd's `PATH` that holds the wrapper links.
    pub bin_dir: PathBuf,
    /// The wrapper's config file (containerd's `SHIMTRACE_CONFIG`).
    pub wrapper_config: PathBuf,
    /// With `tmpfs_state`, the run dir is a tmpfs too (it is under `/run` on real nodes);
    /// unmounted after containerd is gone and before the dirs are removed.
    _run_mount: Option<TmpfsMount>,
    _dirs: tempfile::TempDir,
}

/// Directory layout and environment for a traced containerd; `spool` may be overridden (e.g. to
/// an unwritable path).
#[derive(Default)]
pub struct TracedOptions {
    pub spool: Option<PathBuf>,
    pub extra: Options,
}

impl Traced {
    pub fn start(version: &str) -> Result<Traced, HarnessError> {
        Traced::start_with(version, TracedOptions::default())
    }

    pub fn start_with(version: &str, options: TracedOptions) -> Result<Traced, HarnessError> {
        Traced::start_inner(version, options, None)
    }

    /// A traced containerd whose registration `register` makes: it gets the instance (its dir,
    /// containerd's config path and `PATH`), the bin dir on containerd's `PATH` where wrapper
    /// links belong and the wrapper's config file (containerd's `SHIMTRACE_CONFIG`, empty), and
    /// writes containerd's config itself (the options' source should be
    /// [`shimtrace_containerd::private::ConfigSource::Existing`]). No wrapper link is made for it.
    pub fn start_registered(
        version: &str,
        options: TracedOptions,
        register: impl FnOnce(&Prepared<'_>, &Path, &Path) -> Result<(), HarnessError>,
    ) -> Result<Traced, HarnessError> {
        Traced::start_inner(version, options, Some(Box::new(register)))
    }

    #[allow(clippy::type_complexity)]
    fn start_inner(
        version: &str,
        options: TracedOptions,
        register: Option<
            Box<dyn FnOnce(&Prepared<'_>, &Path, &Path) -> Result<(), HarnessError> + '_>,
        >,
    ) -> Result<Traced, HarnessError> {
        let version = ContainerdVersion::find(version)?;
        let dirs = tempfile::Builder::new()
            .prefix("shimtrace-e2e-")
            .tempdir()
            .map_err(|e| HarnessError::io("creating the test dir", e))?;
        let bin = dirs.path().join("bin");
        std::fs::create_dir_all(&bin).map_err(|e| HarnessError::io("creating bin dir", e))?;
        if register.is_none() {
            std::os::unix::fs::symlink(wrapper_binary(), bin.join(runc_shim().traced_binary()))
                .map_err(|e| HarnessError::io("linking the wrapper", e))?;
        }
        let spool = options.spool.unwrap_or_else(|| dirs.path().join("spool"));
        let run_dir = dirs.path().join("run");
        let run_mount = if options.extra.tmpfs_state {
            Some(TmpfsMount::new(&run_dir)?)
        } else {
            None
        };
        let wrapper_config = dirs.path().join("config.toml");
        let extra = options
            .extra
            .path_dir(&bin)
            .env("SHIMTRACE_SPOOL_DIR", &spool)
            .env("SHIMTRACE_RUN_DIR", &run_dir)
            .env("SHIMTRACE_CONFIG", &wrapper_config);
        // An empty config of the test's own, so the machine's /etc/shimtrace/config.toml cannot
        // redirect the wrapper.
        std::fs::write(&wrapper_config, "")
            .map_err(|e| HarnessError::io("writing the config", e))?;
        let containerd = match register {
            Some(register) => TestContainerd::start_prepared(&version, extra, |prepared| {
                register(prepared, &bin, &wrapper_config)
            })?,
            None => TestContainerd::start(&version, extra)?,
        };
        Ok(Traced {
            containerd,
            spool,
            run_dir,
            bin_dir: bin,
            wrapper_config,
            _run_mount: run_mount,
            _dirs: dirs,
        })
    }

    /// Starts `/bin/sleep 600` detached as container `id` through the wrapper; `flags` are extra
    /// `ctr run` flags (e.g. an annotation).
    pub fn run_sleeper(&self, id: &str, flags: &[&str]) {
        let mut all_flags = self.runtime_flags().to_vec();
        all_flags.extend_from_slice(flags);
        self.containerd
            .run_detached(id, &all_flags, &["/bin/sleep", "600"])
            .unwrap_or_else(|e| panic!("ctr run -d {id}: {e}"));
    }

    /// The address containerd keeps for the shim of container `id` in namespace `ns`: the
    /// bundle's `address` file (1.x) or the `address` in its `bootstrap.json` (2.x).
    pub fn shim_address_in(&self, ns: &str, id: &str) -> Option<String> {
        let bundle = self.containerd.bundle_dir_in(ns, id);
        if let Ok(address) = std::fs::read_to_string(bundle.join("address")) {
            return Some(address.trim().to_string());
        }
        let json = std::fs::read_to_string(bundle.join("bootstrap.json")).ok()?;
        let value: serde_json::Value = serde_json::from_str(&json).ok()?;
        Some(value["address"].as_str()?.trim().to_string())
    }

    /// Runs `/bin/echo <text>` to completion as container `id` through the wrapper and checks that
    /// it succeeded and printed `text`.
    pub fn run_echo(&self, id: &str, text: &str) {
        let out = self
            .containerd
            .run_rm(id, &self.runtime_flags(), &["/bin/echo", text])
            .unwrap_or_else(|e| panic!("ctr run {id}: {e}"));
        assert!(out.success(), "{out:?}");
        assert_eq!(out.stdout.trim(), text);
    }

    /// `ctr run` flags selecting the traced runtime.
    pub fn runtime_flags(&self) -> [&'static str; 2] {
        ["--runtime", TRACED_RUNC.as_str()]
    }
}

/// Writes `script` at `path` as an executable (0755): the stand-ins tests put where a shim, runsc
/// or an inner shim's wrapper would be.
pub fn write_executable(path: &Path, script: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, script).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))
        .unwrap_or_else(|e| panic!("making {} executable: {e}", path.display()));
}

/// The wrapper's config table that makes `runtime` (e.g. `io.containerd.traced-runc.v2`) wrap
/// the shim at `inner`.
pub fn wrapper_config_for(runtime: &str, inner: &Path) -> String {
    let quoted = |s: &str| toml::Value::String(s.to_string()).to_string();
    format!(
        "[runtimes.{}]\ninner = {}\n",
        quoted(runtime),
        quoted(&inner.display().to_string())
    )
}

/// Asserts that `span` says the container ran on runtime `name`, as learnt from `source` (`shim`,
/// `binary_name`, …).
pub fn assert_runtime(span: &SpanRecord, name: &str, source: &str) {
    use shimtrace_span::attr;
    assert_eq!(
        span.attr_str(attr::CONTAINER_RUNTIME_NAME),
        Some(name),
        "{span:?}"
    );
    assert_eq!(
        span.attr_str(attr::RUNTIME_SOURCE),
        Some(source),
        "{span:?}"
    );
}

/// Whether spans include one named `<service>/<method>` (any task API version).
pub fn has_method(spans: &[SpanRecord], method: &str) -> bool {
    spans.iter().any(|s| is_method(s, method))
}

pub fn is_method(span: &SpanRecord, method: &str) -> bool {
    span.name.starts_with("containerd.task.v") && span.name.ends_with(&format!(".Task/{method}"))
}

/// Polls `f` until it returns `Some`, for at most `timeout`.
pub fn wait_for<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Polls `f` until it returns `Some`, for at most `timeout`; panics naming `what` if it never does.
pub fn wait_until<T>(what: &str, timeout: Duration, f: impl FnMut() -> Option<T>) -> T {
    wait_for(timeout, f).unwrap_or_else(|| panic!("timed out after {timeout:?} waiting for {what}"))
}

/// Sends SIGKILL to process `pid`.
pub fn sigkill(pid: u32) -> nix::Result<()> {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
}

/// Whether a process is alive (zombies count as gone: this sandbox's pid 1 may not reap orphans).
pub fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            let state = stat
                .rsplit(')')
                .next()?
                .split_whitespace()
                .next()?
                .to_string();
            Some(state != "Z" && state != "X")
        })
        .unwrap_or(false)
}

/// Pids whose command line contains all of `needles`.
pub fn pids_with_cmdline(needles: &[&str]) -> Vec<u32> {
    crate::containerd::proc_pids()
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| {
                    let c = String::from_utf8_lossy(&c).replace('\0', " ");
                    needles.iter().all(|n| c.contains(n))
                })
                .unwrap_or(false)
        })
        .filter(|pid| alive(*pid))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_traced_runtime_wraps_the_runc_shim() {
        assert_eq!(TRACED_RUNC.as_str(), "io.containerd.traced-runc.v2");
        assert_eq!(
            runc_shim().traced_binary(),
            "containerd-shim-traced-runc-v2"
        );
    }
}
