//! `shimtrace install --check`: proves, against the running containerd, that each traced handler
//! really traces. For every `traced-*` runtime handler its CRI plugin has loaded, it runs a
//! short-lived pod the way the kubelet would (a sandbox and one busybox container that exits),
//! removes it, and looks for the pod's spans in the spool. A handler without spans is named with
//! the reason found: containerd ignoring `runtime_path` (1.6.x, 1.7.0), the pod's shim being the
//! real one rather than the wrapper, the wrapper running but writing elsewhere, or the pod failing.
//!
//! The busybox image (`docker.io/local/busybox:1`) is built from the local static busybox and
//! imported with `ctr` into CRI's `k8s.io` namespace when containerd lacks it; the sandbox image
//! is whatever containerd is configured with (pulled by containerd as for any pod).

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use shimtrace_span::naming::traced_runtime_of;
use shimtrace_span::spool::{read_spool_if_made, ReadError};
use shimtrace_span::SpanRecord;

use crate::cri::{ContainerSpec, Cri, CriError, PodSpec};
use crate::image::{containerd_reference, CRI_NAMESPACE, WORKLOAD_TAG};
use crate::install::{configured_handlers, RUNTIME_PATH_SINCE};
use crate::private::{import_cri_image, parse_version, version_triple, CriSetupError};
use crate::rootfs::{build_busybox_rootfs, RootfsError};

/// Where shims put their sockets, whatever containerd's state dir.
const SHIM_SOCKET_DIR: &str = "/run/containerd/s";
const POLL: Duration = Duration::from_millis(50);

/// How to check.
#[derive(Debug, Clone)]
pub struct CheckOptions {
    /// containerd's gRPC socket (what shims get as `-address`).
    pub socket: PathBuf,
    /// The spool the wrapper writes under this containerd.
    pub spool: PathBuf,
    /// `ctr`, to import the check image when it is missing.
    pub ctr: PathBuf,
    /// The static busybox the check image is built from.
    pub busybox: PathBuf,
    /// containerd's config, read for the handlers when CRI does not report its config.
    pub config: Option<PathBuf>,
    /// How long a pod's spans may take to reach the spool.
    pub span_timeout: Duration,
}

impl CheckOptions {
    pub fn new(socket: impl Into<PathBuf>, spool: impl Into<PathBuf>) -> CheckOptions {
        CheckOptions {
            socket: socket.into(),
            spool: spool.into(),
            ctr: PathBuf::from("ctr"),
            busybox: PathBuf::from("/bin/busybox"),
            config: None,
            span_timeout: Duration::from_secs(15),
        }
    }
}

/// Why the check could not run at all (a handler that does not trace is a verdict, not an error).
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error("{0}")]
    Cri(#[from] CriError),
    #[error("containerd at {socket} has no traced-* runtime handler: run `shimtrace install --write`, restart containerd, and check again")]
    NoHandlers { socket: PathBuf },
    #[error("the check image: {0}")]
    Rootfs(#[from] RootfsError),
    #[error("the check image: {0}")]
    Image(#[from] CriSetupError),
    #[error("cannot make a temporary directory for the check image: {0}")]
    Temp(std::io::Error),
}

/// A runtime handler as containerd's CRI has it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Handler {
    pub name: String,
    pub runtime_type: String,
    pub runtime_path: String,
}

/// Whether a handler traces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The pod's spans reached the spool: how many for the sandbox and the container, and how many
    /// proxies served the pod while it ran.
    Traced {
        sandbox_spans: usize,
        container_spans: usize,
        proxies: usize,
    },
    /// It does not trace, and why.
    NotTraced(String),
}

/// One handler's result.
#[derive(Debug, Clone)]
pub struct HandlerReport {
    pub handler: Handler,
    pub verdict: Verdict,
    pub pod_id: Option<String>,
    pub container_id: Option<String>,
    /// Why the check's pod could not be removed (it is still on the node).
    pub left_behind: Option<String>,
}

/// Every handler's result.
#[derive(Debug, Clone)]
pub struct CheckReport {
    /// containerd's version as its CRI reports it (e.g. "1.6.20").
    pub containerd_version: String,
    pub spool: PathBuf,
    pub handlers: Vec<HandlerReport>,
}

impl CheckReport {
    pub fn all_traced(&self) -> bool {
        self.handlers
            .iter()
            .all(|h| matches!(h.verdict, Verdict::Traced { .. }))
    }

    /// The handlers that do not trace.
    pub fn untraced(&self) -> impl Iterator<Item = &HandlerReport> {
        self.handlers
            .iter()
            .filter(|h| matches!(h.verdict, Verdict::NotTraced(_)))
    }

    pub fn render(&self) -> String {
        let mut out = format!(
            "containerd {}; spool {}\n",
            self.containerd_version,
            self.spool.display()
        );
        for report in &self.handlers {
            let h = &report.handler;
            let form = if h.runtime_path.is_empty() {
                format!("runtime_type {}", h.runtime_type)
            } else {
                format!(
                    "runtime_type {}, runtime_path {}",
                    h.runtime_type, h.runtime_path
                )
            };
            let _ = match &report.verdict {
                Verdict::Traced {
                    sandbox_spans,
                    container_spans,
                    proxies,
                } => writeln!(
                    out,
                    "{}: traced ({form}): {sandbox_spans} sandbox spans, {container_spans} container spans, {proxies} proxy for the pod",
                    h.name
                ),
                Verdict::NotTraced(why) => {
                    writeln!(out, "{}: NOT traced ({form}): {why}", h.name)
                }
            };
            if let Some(left) = &report.left_behind {
                let _ = writeln!(out, "{}: left behind: {left}", h.name);
            }
        }
        out
    }
}

/// The handlers in containerd's CRI config (its verbose status), else in `config`.
pub async fn handlers(cri: &Cri, config: Option<&Path>) -> Result<Vec<Handler>, CheckError> {
    let info = cri.status_info().await?;
    if let Some(found) = info.get("config").and_then(|c| handlers_from_status(c)) {
        return Ok(found);
    }
    let text = config
        .and_then(|p| std::fs::read_to_string(p).ok())
        .unwrap_or_default();
    Ok(configured_handlers(&text)
        .into_iter()
        .map(|(name, runtime_type, runtime_path)| Handler {
            name,
            runtime_type,
            runtime_path,
        })
        .collect())
}

/// The handlers in the JSON config containerd's CRI reports in its verbose status.
pub fn handlers_from_status(config_json: &str) -> Option<Vec<Handler>> {
    let config: serde_json::Value = serde_json::from_str(config_json).ok()?;
    let runtimes = config.get("containerd")?.get("runtimes")?.as_object()?;
    let field = |v: &serde_json::Value, key: &str| {
        v.get(key)
            .and_then(serde_json::Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    let mut handlers: Vec<Handler> = runtimes
        .iter()
        .map(|(name, runtime)| Handler {
            name: name.clone(),
            runtime_type: field(runtime, "runtimeType"),
            runtime_path: field(runtime, "runtimePath"),
        })
        .collect();
    handlers.sort_by(|a, b| a.name.cmp(&b.name));
    Some(handlers)
}

/// Runs the check (see the module docs).
pub async fn check(options: &CheckOptions) -> Result<CheckReport, CheckError> {
    let cri = Cri::connect(&options.socket).await?;
    let (_, reported) = cri.version().await?;
    let version = parse_version(&reported).unwrap_or(&reported).to_string();
    let traced: Vec<Handler> = handlers(&cri, options.config.as_deref())
        .await?
        .into_iter()
        .filter(|h| traced_runtime_of(&h.name).is_some())
        .collect();
    if traced.is_empty() {
        return Err(CheckError::NoHandlers {
            socket: options.socket.clone(),
        });
    }
    let image = ensure_image(&cri, options).await?;
    let mut reports = Vec::new();
    for handler in traced {
        reports.push(check_handler(&cri, options, &version, handler, &image).await);
    }
    Ok(CheckReport {
        containerd_version: version,
        spool: options.spool.clone(),
        handlers: reports,
    })
}

/// The check image's reference, imported first if containerd lacks it.
pub async fn ensure_image(cri: &Cri, options: &CheckOptions) -> Result<String, CheckError> {
    let image = containerd_reference(WORKLOAD_TAG);
    if cri.has_image(&image).await? {
        return Ok(image);
    }
    let dir = tempfile::Builder::new()
        .prefix("shimtrace-check-")
        .tempdir()
        .map_err(CheckError::Temp)?;
    let rootfs = dir.path().join("rootfs");
    build_busybox_rootfs(&rootfs, &options.busybox)?;
    Ok(import_cri_image(
        cri,
        &options.ctr,
        &options.socket,
        &rootfs,
        WORKLOAD_TAG,
        &["/bin/sh"],
        dir.path(),
    )
    .await?)
}

async fn check_handler(
    cri: &Cri,
    options: &CheckOptions,
    version: &str,
    handler: Handler,
    image: &str,
) -> HandlerReport {
    let nanos = shimtrace_span::clock::now_unix_nanos();
    let mut pod = PodSpec::new(format!("shimtrace-check-{}", handler.name), &handler.name);
    pod.namespace = "shimtrace-check".into();
    pod.uid = format!("shimtrace-check-{}-{nanos}", std::process::id());
    let mut report = HandlerReport {
        handler,
        verdict: Verdict::NotTraced(String::new()),
        pod_id: None,
        container_id: None,
        left_behind: None,
    };
    let sandbox = match cri.run_pod(&pod).await {
        Ok(sandbox) => sandbox,
        Err(e) => {
            report.verdict = Verdict::NotTraced(pod_failed(&report.handler, &e));
            return report;
        }
    };
    report.pod_id = Some(sandbox.id.clone());
    // What runs the pod, looked at while it runs.
    let proxies = proxies_for(&options.socket, &sandbox.id);
    let shim = shim_binary_for(&sandbox.id);
    let container = ContainerSpec::new("check", image, ["/bin/sh", "-c", "exit 0"]);
    let ran = async {
        let id = cri.create_container(&sandbox, &container).await?;
        report.container_id = Some(id.clone());
        cri.start_container(&id).await?;
        cri.wait_exited(&id, Duration::from_secs(60)).await?;
        cri.remove_container(&id).await
    }
    .await;
    // RemovePodSandbox stops what a failed StopPodSandbox left running: only its error matters.
    let _ = cri.stop_pod(&sandbox.id).await;
    if let Err(e) = cri.remove_pod(&sandbox.id).await {
        report.left_behind = Some(format!(
            "pod {} could not be removed: {e} (remove it with `crictl rmp -f {}`)",
            sandbox.id, sandbox.id
        ));
    }
    if let Err(e) = ran {
        report.verdict = Verdict::NotTraced(format!(
            "the pod's sandbox ran, but its container failed: {e}"
        ));
        return report;
    }
    let container_id = report.container_id.clone().unwrap_or_default();
    let spans = await_spans(
        &options.spool,
        &sandbox.id,
        &container_id,
        options.span_timeout,
    )
    .await;
    let spans = match spans {
        Ok(spans) => spans,
        Err(e) => {
            report.verdict = Verdict::NotTraced(format!(
                "{e}: pass --spool where containerd's wrapper spools (its SHIMTRACE_SPOOL_DIR), and check as a user who can read it"
            ));
            return report;
        }
    };
    let count = |id: &str| {
        spans
            .iter()
            .filter(|s| s.container_id() == Some(id))
            .count()
    };
    let (sandbox_spans, container_spans) = (count(&sandbox.id), count(&container_id));
    report.verdict = if sandbox_spans > 0 && container_spans > 0 {
        Verdict::Traced {
            sandbox_spans,
            container_spans,
            proxies: proxies.len(),
        }
    } else {
        Verdict::NotTraced(no_spans_reason(
            &report.handler,
            version,
            &proxies,
            shim.as_deref(),
            &options.spool,
            (sandbox_spans, container_spans),
        ))
    };
    report
}

fn pod_failed(handler: &Handler, error: &CriError) -> String {
    let text = error.to_string();
    let hint = if handler.runtime_path.is_empty()
        && (text.contains("not found") || text.contains("no such file"))
    {
        format!(
            " — containerd cannot find the wrapper link for {}: put it in a directory on containerd's PATH (shimtrace install --write --bin-dir /usr/local/bin)",
            handler.runtime_type
        )
    } else {
        String::new()
    };
    format!("the pod did not start: {text}{hint}")
}

fn no_spans_reason(
    handler: &Handler,
    version: &str,
    proxies: &[u32],
    shim: Option<&Path>,
    spool: &Path,
    (sandbox_spans, container_spans): (usize, usize),
) -> String {
    let ignores_path = version_triple(version) < RUNTIME_PATH_SINCE;
    if !handler.runtime_path.is_empty() && ignores_path {
        return format!(
            "pod ran but no spans: containerd {version} ignores runtime_path; use the runtime-name form: shimtrace install --write"
        );
    }
    if proxies.is_empty() {
        let shim = shim
            .map(|s| format!(" ({})", s.display()))
            .unwrap_or_default();
        return format!(
            "pod ran but no spans: containerd ran the real shim{shim} directly, not the wrapper; re-register with shimtrace install --write and restart containerd"
        );
    }
    format!(
        "the wrapper served the pod but {} (sandbox: {sandbox_spans}, container: {container_spans} spans): containerd's SHIMTRACE_SPOOL_DIR may differ from {} (pass --spool), or the wrapper cannot write there (see its log under SHIMTRACE_RUN_DIR)",
        if sandbox_spans + container_spans == 0 {
            "no spans reached the spool"
        } else {
            "not every part of the pod has spans"
        },
        spool.display()
    )
}

/// Waits until both the sandbox and the container have spans (or the timeout); returns the spans of
/// either, or why the spool could not be read the last time.
async fn await_spans(
    spool: &Path,
    sandbox: &str,
    container: &str,
    timeout: Duration,
) -> Result<Vec<SpanRecord>, ReadError> {
    let deadline = Instant::now() + timeout;
    loop {
        let ours = |s: &SpanRecord| matches!(s.container_id(), Some(id) if id == sandbox || id == container);
        // A read error other than a spool not made yet is returned if it lasts until the deadline.
        let spans =
            read_spool_if_made(spool).map(|c| c.spans.into_iter().filter(ours).collect::<Vec<_>>());
        let has = |id: &str| {
            spans
                .as_ref()
                .is_ok_and(|spans| spans.iter().any(|s| s.container_id() == Some(id)))
        };
        if (has(sandbox) && has(container)) || Instant::now() >= deadline {
            return spans;
        }
        tokio::time::sleep(POLL).await;
    }
}

/// The runc-style shim socket of a pod: `/run/containerd/s/<sha256(address/k8s.io/sandbox)>`.
pub fn shim_socket(address: &Path, sandbox_id: &str) -> PathBuf {
    let digest = Sha256::digest(format!(
        "{}/{CRI_NAMESPACE}/{sandbox_id}",
        address.display()
    ));
    Path::new(SHIM_SOCKET_DIR).join(hex::encode(digest))
}

/// Command lines of live processes, by pid.
fn command_lines() -> HashMap<u32, Vec<String>> {
    let mut found = HashMap::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(raw) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let argv: Vec<String> = raw
            .split(|b| *b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        if !argv.is_empty() {
            found.insert(pid, argv);
        }
    }
    found
}

fn flag<'a>(argv: &'a [String], name: &str) -> Option<&'a str> {
    argv.iter()
        .position(|a| a == name)
        .and_then(|i| argv.get(i + 1))
        .map(String::as_str)
}

/// The wrapper proxies in front of a pod's shim (`… proxy --upstream <the pod's shim socket>`).
pub fn proxies_for(address: &Path, sandbox_id: &str) -> Vec<u32> {
    let upstream = shim_socket(address, sandbox_id);
    let mut pids: Vec<u32> = command_lines()
        .into_iter()
        .filter(|(_, argv)| {
            argv.iter().any(|a| a == "proxy")
                && flag(argv, "--upstream").is_some_and(|u| Path::new(u) == upstream)
        })
        .map(|(pid, _)| pid)
        .collect();
    pids.sort_unstable();
    pids
}

/// The executable of the shim serving a pod (`… -id <sandbox id> …`, not a proxy).
pub fn shim_binary_for(sandbox_id: &str) -> Option<PathBuf> {
    command_lines()
        .into_iter()
        .filter(|(_, argv)| {
            flag(argv, "-id") == Some(sandbox_id) && !argv.iter().any(|a| a == "proxy")
        })
        .find_map(|(pid, _)| std::fs::read_link(format!("/proc/{pid}/exe")).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_unreadable_spool_is_the_verdict_not_an_empty_one() {
        let dir = tempfile::tempdir().unwrap();
        let not_a_dir = dir.path().join("spool");
        std::fs::write(&not_a_dir, "").unwrap();
        let err = await_spans(&not_a_dir, "pod", "box", Duration::ZERO)
            .await
            .unwrap_err();
        assert_eq!(err.path, not_a_dir);
        // One that no wrapper has made yet is only empty.
        let missing = dir.path().join("not yet");
        let spans = await_spans(&missing, "pod", "box", Duration::ZERO).await;
        assert!(spans.unwrap().is_empty());
    }

    #[test]
    fn handlers_come_from_cris_status_config() {
        let json = r#"{"containerd":{"defaultRuntimeName":"runc","runtimes":{
            "runc":{"runtimeType":"io.containerd.runc.v2","runtimePath":""},
            "traced-runc":{"runtimeType":"io.containerd.traced-runc.v2","runtimePath":""},
            "traced-runsc":{"runtimeType":"io.containerd.runc.v2","runtimePath":"/b/w","options":{"BinaryName":"/usr/bin/runsc"}}}}}"#;
        let handlers = handlers_from_status(json).unwrap();
        let names: Vec<&str> = handlers.iter().map(|h| h.name.as_str()).collect();
        assert_eq!(names, ["runc", "traced-runc", "traced-runsc"]);
        assert_eq!(handlers[2].runtime_path, "/b/w");
        assert!(handlers_from_status("{}").is_none());
        assert!(handlers_from_status("not json").is_none());
    }

    #[test]
    fn a_runtime_path_on_1_6_is_named_as_the_reason() {
        let handler = Handler {
            name: "traced-runc".into(),
            runtime_type: "io.containerd.runc.v2".into(),
            runtime_path: "/usr/local/bin/containerd-shim-traced-runc-v2".into(),
        };
        let why = no_spans_reason(&handler, "1.6.20", &[], None, Path::new("/s"), (0, 0));
        assert_eq!(
            why,
            "pod ran but no spans: containerd 1.6.20 ignores runtime_path; use the runtime-name form: shimtrace install --write"
        );
        let why = no_spans_reason(
            &handler,
            "2.1.9",
            &[],
            Some(Path::new("/usr/bin/containerd-shim-runc-v2")),
            Path::new("/s"),
            (0, 0),
        );
        assert!(why.contains("/usr/bin/containerd-shim-runc-v2"), "{why}");
        let why = no_spans_reason(&handler, "2.1.9", &[42], None, Path::new("/s"), (0, 0));
        assert!(why.contains("SHIMTRACE_SPOOL_DIR"), "{why}");
    }

    #[test]
    fn the_pod_shim_socket_is_containerds_hash() {
        let socket = shim_socket(Path::new("/run/containerd/containerd.sock"), "abc");
        let expected = hex::encode(Sha256::digest(
            b"/run/containerd/containerd.sock/k8s.io/abc",
        ));
        assert_eq!(socket, Path::new("/run/containerd/s").join(expected));
    }

    #[test]
    fn the_report_names_each_handler() {
        let report = CheckReport {
            containerd_version: "1.6.20".into(),
            spool: "/s".into(),
            handlers: vec![
                HandlerReport {
                    handler: Handler {
                        name: "traced-runc".into(),
                        runtime_type: "io.containerd.traced-runc.v2".into(),
                        runtime_path: String::new(),
                    },
                    verdict: Verdict::Traced {
                        sandbox_spans: 9,
                        container_spans: 7,
                        proxies: 1,
                    },
                    pod_id: None,
                    container_id: None,
                    left_behind: None,
                },
                HandlerReport {
                    handler: Handler {
                        name: "traced-runsc".into(),
                        runtime_type: "io.containerd.runc.v2".into(),
                        runtime_path: "/w".into(),
                    },
                    verdict: Verdict::NotTraced("why".into()),
                    pod_id: None,
                    container_id: None,
                    left_behind: None,
                },
            ],
        };
        assert!(!report.all_traced());
        let text = report.render();
        assert!(text.contains("traced-runc: traced"), "{text}");
        assert!(text.contains("traced-runsc: NOT traced"), "{text}");
        assert_eq!(report.untraced().count(), 1);
    }
}
