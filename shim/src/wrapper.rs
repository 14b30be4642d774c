//! The wrapper's process-level protocol: `start` and `delete` run the inner shim's own `start` and
//! `delete` with the same argv, environment, working directory and stdin, and relay their output;
//! `start` additionally puts a proxy in front of the inner shim's address.
//!
//! When the config gives the runtime an OCI runtime (`oci_runtime`, see
//! [`resolve::RuntimeConfig`]), every run of the inner shim gets a `PATH` whose first directory
//! holds a `runc` link to it: the runc shim runs `runc` from its `PATH` when no `BinaryName`
//! arrives, and its daemon keeps the environment of `start`. This is how gVisor runs through the
//! runc shim where `BinaryName` cannot be passed (CRI's runtime-name form on containerd 1.6).
//!
//! Fail open: whenever something of shimtrace's own fails, the inner shim's reply goes back to
//! containerd unchanged and the reason goes to the shim log.

use std::ffi::OsString;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::Duration;

use containerd_shim_protos::api::DeleteResponse;
use protobuf::Message;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::args::ShimArgs;
use crate::bootstrap;
use crate::identity::{self, Identity};
use crate::proxy::{self, Ensured, EventsRoute, ProxyPlan, PROXY_SUBCOMMAND};
use crate::reply::StartReply;
use crate::resolve::{self, Config};
use crate::safe_fs::{ensure_private_dir, SafeFsError};
use crate::spool::SpoolConfig;
use crate::trace_ctx;
use shimtrace_span::clock;
use shimtrace_span::env::{RUN_DIR as RUN_DIR_ENV, SPOOL_DIR as SPOOL_DIR_ENV};
use shimtrace_span::naming::{WrapperName, WRAPPER_BINARY as OWN_NAME, WRAPPER_PREFIX};
use shimtrace_span::spool::DEFAULT_SPOOL_DIR;
use shimtrace_span::{
    attr, names, AttributeValue, Attributes, SpanId, SpanKind, SpanRecord, SpanStatus,
    TraceContext, TraceId,
};

const VERSION: &str = env!("CARGO_PKG_VERSION");
/// File in the bundle naming the proxy in front of the container's inner shim: written by
/// `start`, read by `delete` to clean up after a proxy that died.
pub const PROXY_RECORD: &str = "shimtrace-proxy.json";
/// How long the wrapper's `delete` (its child, after the reply) waits for an inner shim it told to
/// shut down to exit, before leaving its socket to whoever serves there.
const INNER_SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// The run directory's subdirectory holding, per configured OCI runtime, a directory whose one
/// entry is a `runc` link to it (named by a digest of the runtime's path).
const OCI_LINKS: &str = "oci";

/// The inner shim to run, and the OCI runtime the config makes it run as `runc`.
struct Inner {
    shim: PathBuf,
    oci_runtime: Option<PathBuf>,
    /// The inner shim's `PATH`, when it must differ from ours: the `runc` link's directory first.
    path: Option<OsString>,
}

impl Inner {
    fn display(&self) -> std::path::Display<'_> {
        self.shim.display()
    }

    /// A command running the inner shim with `args`.
    fn command(&self, args: &[String]) -> Command {
        let mut command = Command::new(&self.shim);
        command.args(args);
        if let Some(path) = &self.path {
            command.env("PATH", path);
        }
        command
    }
}

/// Why the inner shim cannot be run as configured.
#[derive(Debug, thiserror::Error)]
enum InnerError {
    #[error(transparent)]
    Resolve(#[from] resolve::ResolveError),
    #[error("cannot give the inner shim {oci_runtime} as its `runc` (a link first on its PATH, under the run directory): {source}; not starting it, since it would run plain runc instead (fix the run directory or set {RUN_DIR_ENV})")]
    OciLink {
        oci_runtime: PathBuf,
        source: SafeFsError,
    },
}

/// The directory, under `run_dir`, whose `runc` is a link to `oci_runtime`; made (private, see
/// [`crate::safe_fs`]) if missing. One per runtime binary, so concurrent wrappers for different
/// runtimes never touch each other's link.
fn oci_runtime_dir(run_dir: &Path, oci_runtime: &Path) -> Result<PathBuf, SafeFsError> {
    ensure_private_dir(run_dir)?;
    let links = run_dir.join(OCI_LINKS);
    ensure_private_dir(&links)?;
    let digest = hex::encode(Sha256::digest(oci_runtime.as_os_str().as_bytes()));
    let dir = ensure_private_dir(&links.join(&digest[..16]))?;
    dir.ensure_symlink(Path::new("runc"), oci_runtime)?;
    Ok(dir.path().to_path_buf())
}

/// `PATH` with `first` in front of `rest` (this process's `PATH`, if any).
fn path_with_first(first: &Path, rest: Option<&std::ffi::OsStr>) -> Result<OsString, SafeFsError> {
    let rest = rest.map(|r| std::env::split_paths(r).collect::<Vec<_>>());
    std::env::join_paths(std::iter::once(first.to_path_buf()).chain(rest.into_iter().flatten()))
        .map_err(|e| SafeFsError::Io {
            path: first.to_path_buf(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidInput, e),
        })
}

/// Entry point for the wrapper binary; returns the process exit code.
pub fn main_entry(argv: Vec<OsString>) -> i32 {
    clock::init();
    let argv: Vec<String> = argv
        .into_iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let argv0 = argv
        .first()
        .cloned()
        .unwrap_or_else(|| OWN_NAME.to_string());
    let rest = &argv[argv.len().min(1)..];
    if rest.first().map(String::as_str) == Some(PROXY_SUBCOMMAND) {
        return match ProxyPlan::from_args(&rest[1..]) {
            Some(plan) => match proxy::run_proxy(plan, proxy::HandedFds::from_args(&rest[1..])) {
                Ok(()) => 0,
                Err(e) => {
                    tracing::error!("proxy failed: {e}");
                    1
                }
            },
            None => {
                eprintln!("{OWN_NAME}: the proxy is started by the wrapper's start, not by hand");
                2
            }
        };
    }
    let args = ShimArgs::parse(rest);
    let name = match resolve::wrapper_name_from_argv0(&argv0) {
        Ok(name) => name,
        Err(e) => return own_name(&args, &e.to_string()),
    };
    let invocation = Invocation {
        rest: rest.to_vec(),
        args,
        name,
    };
    match invocation.args.action.as_deref() {
        Some("start") => invocation.start(),
        Some("delete") => invocation.delete(),
        // `-v`, `-info` and anything else are the inner shim's to answer.
        _ => invocation.exec_inner(),
    }
}

fn own_name(args: &ShimArgs, problem: &str) -> i32 {
    if args.version {
        println!("{OWN_NAME} {VERSION}");
        return 0;
    }
    let help = format!(
        "{OWN_NAME} {VERSION}: a containerd shim v2 that traces a real shim.\n\n\
         Install it under the name {WRAPPER_PREFIX}<inner>-<version> (a symlink), e.g.\n  \
         ln -s $(command -v {OWN_NAME}) /usr/local/bin/{WRAPPER_PREFIX}runc-v2\n\
         and run containers with the runtime io.containerd.traced-runc.v2; it forwards every call\n\
         to containerd-shim-runc-v2 and records spans in ${SPOOL_DIR_ENV}\n\
         (default {DEFAULT_SPOOL_DIR}). `shimtrace install` does this for every shim found.\n"
    );
    if args.help || args.action.is_none() {
        print!("{help}");
        return 0;
    }
    eprintln!("{OWN_NAME}: {problem}");
    2
}

struct Invocation {
    /// argv without argv[0], passed to the inner shim unchanged.
    rest: Vec<String>,
    args: ShimArgs,
    name: WrapperName,
}

/// The events socket bound for the inner shim (its `TTRPC_ADDRESS`) before it starts.
struct EventsTap {
    route: EventsRoute,
    listener: std::os::unix::net::UnixListener,
}

impl EventsTap {
    /// Binds the socket if containerd gave the shim an events address (environment, or containerd
    /// 2.3's `BootstrapParams`); returns the stdin to give the inner shim, rewritten to name our
    /// socket when it carries `BootstrapParams`.
    fn prepare(id: Option<&str>, stdin: Vec<u8>) -> (Option<EventsTap>, Vec<u8>) {
        let params = bootstrap::events_params(&stdin, id);
        let containerd = params
            .as_ref()
            .map(|p| p.containerd_ttrpc_address.clone())
            .or_else(|| {
                std::env::var("TTRPC_ADDRESS")
                    .ok()
                    .filter(|a| !a.is_empty())
            });
        let Some(containerd) = containerd else {
            return (None, stdin);
        };
        let (socket, listener) = match proxy::bind_events_socket() {
            Ok(bound) => bound,
            Err(e) => {
                tracing::warn!("events will not be traced: {e}");
                return (None, stdin);
            }
        };
        let stdin = match &params {
            Some(p) => {
                bootstrap::with_events_address(p, &socket.display().to_string()).unwrap_or(stdin)
            }
            None => stdin,
        };
        let route = EventsRoute { socket, containerd };
        (Some(EventsTap { route, listener }), stdin)
    }

    /// The inner shim publishes elsewhere (an existing shim was reused, or it failed): nothing
    /// will connect.
    fn discard(self) {
        let _ = std::fs::remove_file(&self.route.socket);
    }

    /// No proxy forwards the inner shim's events (`why`): the socket it was told to publish to
    /// becomes a link to containerd's own. A publisher that dials its address again after a
    /// failure (containerd's Go `shim` package; the async publisher of the Rust `containerd-shim`
    /// crate) then reaches containerd untraced instead of never: without its events containerd
    /// would not learn that a task exited. One that connected once, before this, stays cut off.
    /// No process is left to remove the link: it stays in the run directory (a tmpfs) until reboot.
    fn straight_to_containerd(self, why: &str) {
        let socket = &self.route.socket;
        let containerd = Path::new(
            self.route
                .containerd
                .strip_prefix("unix://")
                .unwrap_or(&self.route.containerd),
        );
        let linked = match (socket.parent(), socket.file_name()) {
            _ if !containerd.is_absolute() => {
                Err(format!("{} is not a socket path", self.route.containerd))
            }
            (Some(dir), Some(name)) => ensure_private_dir(dir)
                .and_then(|dir| dir.ensure_symlink(Path::new(name), containerd))
                .map_err(|e| e.to_string()),
            _ => Err(format!("{} is not a file name", socket.display())),
        };
        match linked {
            Ok(()) => tracing::warn!(
                "the inner shim's events go straight to containerd, untraced: {why}"
            ),
            Err(e) => tracing::error!(
                "the inner shim's events cannot be forwarded ({why}), nor sent straight to containerd: {e}"
            ),
        }
        // Connections already made to the socket end here; their publishers dial again.
        drop(self.listener);
    }
}

/// What the inner shim's `start`/`delete` printed and how it ended.
struct InnerRun {
    status: ExitStatus,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
    started: u64,
    ended: u64,
}

fn exit_code(status: ExitStatus) -> i32 {
    status
        .code()
        .unwrap_or_else(|| 128 + status.signal().unwrap_or(0))
}

impl Invocation {
    fn resolve_inner(&self) -> Result<Inner, InnerError> {
        // A broken config stops here (see `Config::load`): on PATH there may be another shim.
        let config = Config::load()?;
        let exe = std::env::current_exe().unwrap_or_default();
        let search_path = std::env::var_os("PATH");
        let shim = resolve::resolve_inner(
            &self.name,
            &config,
            self.args.publish_binary.as_deref().map(Path::new),
            search_path.clone(),
            &exe,
        )?;
        let oci_runtime = resolve::resolve_oci_runtime(&self.name, &config)?;
        let path = match &oci_runtime {
            Some(oci_runtime) => Some(
                oci_runtime_dir(&proxy::run_dir(), oci_runtime)
                    .and_then(|dir| path_with_first(&dir, search_path.as_deref()))
                    .map_err(|source| InnerError::OciLink {
                        oci_runtime: oci_runtime.clone(),
                        source,
                    })?,
            ),
            None => None,
        };
        Ok(Inner {
            shim,
            oci_runtime,
            path,
        })
    }

    fn exec_inner(&self) -> i32 {
        match self.resolve_inner() {
            Ok(inner) => {
                let err = inner.command(&self.rest).exec();
                eprintln!("{OWN_NAME}: cannot run {}: {err}", inner.display());
                1
            }
            Err(e) => {
                eprintln!("{OWN_NAME}: {e}");
                1
            }
        }
    }

    /// Runs the inner shim with our argv and `stdin`; `combined` merges stderr into stdout the way
    /// containerd reads `start` (CombinedOutput).
    fn run_inner(
        &self,
        inner: &Inner,
        stdin: Vec<u8>,
        combined: bool,
        events: Option<&EventsTap>,
    ) -> std::io::Result<InnerRun> {
        let started = clock::now_unix_nanos();
        let mut command = inner.command(&self.rest);
        command.stdin(Stdio::piped());
        if let Some(events) = events {
            command.env("TTRPC_ADDRESS", &events.route.socket);
        }
        let mut reader = None;
        if combined {
            let (read, write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
            command
                .stdout(Stdio::from(write.try_clone()?))
                .stderr(Stdio::from(write));
            reader = Some(std::fs::File::from(read));
        } else {
            command.stdout(Stdio::piped()).stderr(Stdio::piped());
        }
        let mut child = command.spawn()?;
        // Dropping the command releases our copies of the pipe's write end, so EOF comes when the
        // inner shim (and whatever it leaves holding the pipe) is done with it.
        drop(command);
        let feeder = child.stdin.take().map(|mut input| {
            std::thread::spawn(move || {
                let _ = input.write_all(&stdin);
            })
        });
        let (stdout, stderr, status) = if let Some(mut reader) = reader {
            let mut out = Vec::new();
            reader.read_to_end(&mut out)?;
            (out, Vec::new(), child.wait()?)
        } else {
            let output = child.wait_with_output()?;
            (output.stdout, output.stderr, output.status)
        };
        // Done once the inner shim exited or took it all; one that is not (a daemon holding a
        // full pipe) is left behind, and `after_reply` then sees a second thread.
        if let Some(feeder) = feeder.filter(|f| f.is_finished()) {
            let _ = feeder.join();
        }
        Ok(InnerRun {
            status,
            stdout,
            stderr,
            started,
            ended: clock::now_unix_nanos(),
        })
    }

    fn bundle(&self) -> PathBuf {
        self.args
            .bundle
            .clone()
            .map(PathBuf::from)
            .or_else(|| std::env::current_dir().ok())
            .unwrap_or_default()
    }

    fn base_attributes(&self, inner: &Inner) -> Attributes {
        let mut attributes = Attributes::new();
        let mut put = |key: &str, value: AttributeValue| {
            attributes.insert(key.into(), value);
        };
        if let Some(ns) = &self.args.namespace {
            put(attr::CONTAINERD_NAMESPACE, ns.as_str().into());
        }
        if let Some(id) = &self.args.id {
            put(attr::CONTAINERD_CONTAINER_ID, id.as_str().into());
        }
        put(attr::INNER, inner.display().to_string().into());
        put(attr::RECORDER_PID, std::process::id().into());
        put(attr::PROCESS_PID, std::process::id().into());
        attributes
    }

    fn start(&self) -> i32 {
        let process_start = clock::now_unix_nanos();
        let bundle = self.bundle();
        crate::log::init_fifo(&bundle.join("log"));
        let stdin = read_stdin();
        let root = SpanId::random();
        let trace = trace_ctx::new_root(root);
        if let Err(e) = trace_ctx::write_sidecar(&bundle, &trace) {
            tracing::warn!("cannot write {} in the bundle: {e}", trace_ctx::SIDECAR);
        }

        let inner = match self.resolve_inner() {
            Ok(inner) => inner,
            Err(e) => {
                // containerd shows start's output in its error: make it say what to do.
                print!("{OWN_NAME}: {e}");
                let _ = std::io::stdout().flush();
                return 1;
            }
        };
        // containerd passes the runtime options on start's stdin, as it does on Create.
        let binary_name = identity::binary_name_in_options(&stdin);
        // Found before the inner shim is told to publish its events to us: without it no proxy
        // can be started to forward them, and containerd would never hear of its tasks.
        let exe = own_program();
        let (events, stdin) = match exe {
            Some(_) => EventsTap::prepare(self.args.id.as_deref(), stdin),
            None => (None, stdin),
        };
        let run = match self.run_inner(&inner, stdin, true, events.as_ref()) {
            Ok(run) => run,
            Err(e) => {
                if let Some(events) = events {
                    events.discard();
                }
                print!("{OWN_NAME}: cannot run {}: {e}", inner.display());
                let _ = std::io::stdout().flush();
                return 1;
            }
        };
        let mut spans = Vec::new();
        let mut attributes = self.base_attributes(&inner);
        attributes.insert(attr::PROCESS_EXIT_CODE.into(), exit_code(run.status).into());
        spans.push(child_span(
            &trace,
            names::INNER_START,
            run.started,
            run.ended,
            attributes.clone(),
        ));

        let mut address_change = None;
        let (reply_bytes, status) = if !run.status.success() {
            if let Some(events) = events {
                events.discard();
            }
            (
                run.stdout.clone(),
                SpanStatus::Error("inner start failed".into()),
            )
        } else {
            match self.proxy_reply(
                &run.stdout,
                &inner,
                exe.as_deref(),
                &bundle,
                &trace,
                &mut spans,
                &mut attributes,
                events,
            ) {
                Ok((bytes, change)) => {
                    address_change = Some(change);
                    (bytes, SpanStatus::Ok)
                }
                Err(reason) => {
                    tracing::warn!("not tracing this shim, passing its reply through: {reason}");
                    attributes.insert(attr::OUTCOME.into(), "proxy_unavailable".into());
                    (run.stdout.clone(), SpanStatus::Error(reason))
                }
            }
        };
        let mut stdout = std::io::stdout().lock();
        let _ = stdout.write_all(&reply_bytes);
        let _ = stdout.flush();
        drop(stdout);

        spans.push(own_span(
            trace.trace_id,
            root,
            None,
            names::WRAPPER_START,
            process_start,
            attributes,
            status,
        ));
        after_reply(move || {
            if let Some(change) = address_change {
                rewrite_address_file(&bundle, &change.inner, &change.proxy);
                write_proxy_record(&bundle, &change.record);
            }
            let shim = inner.display().to_string();
            let oci_runtime = inner.oci_runtime.as_ref().map(|p| p.display().to_string());
            Identity::resolve(
                Some(&bundle),
                binary_name.as_deref(),
                oci_runtime.as_deref(),
                &shim,
            )
            .put_all(&mut spans);
            spool(spans);
        });
        exit_code(run.status)
    }

    /// Ensures the proxy for the inner reply and returns the reply to print, address swapped.
    #[allow(clippy::too_many_arguments)]
    fn proxy_reply(
        &self,
        output: &[u8],
        inner: &Inner,
        exe: Option<&Path>,
        bundle: &Path,
        trace: &TraceContext,
        spans: &mut Vec<SpanRecord>,
        attributes: &mut Attributes,
        events: Option<EventsTap>,
    ) -> Result<(Vec<u8>, AddressChange), String> {
        // Whatever stops the proxy here, the inner shim's events must still reach containerd.
        let unforwarded = |events: Option<EventsTap>, why: String| {
            if let Some(events) = events {
                events.straight_to_containerd(&why);
            }
            why
        };
        let reply = match StartReply::parse(output) {
            Ok(reply) => reply,
            Err(e) => return Err(unforwarded(events, e.to_string())),
        };
        attributes.insert(attr::PROTOCOL.into(), reply.protocol_label().into());
        let Some(inner_socket) = crate::reply::socket_path_of(&reply.address) else {
            let why = format!("{} is not a unix socket", reply.address);
            return Err(unforwarded(events, why));
        };
        let plan = ProxyPlan {
            socket: proxy::proxy_socket_for(&inner_socket, &reply.address),
            upstream: inner_socket,
            inner: inner.display().to_string(),
            protocol: reply.protocol_label(),
            namespace: self.args.namespace.clone().unwrap_or_default(),
            task_root: bundle
                .parent()
                .and_then(Path::parent)
                .map(Path::to_path_buf),
            events: events.as_ref().map(|e| e.route.clone()),
            oci_runtime: inner.oci_runtime.as_ref().map(|p| p.display().to_string()),
        };
        // No events tap is prepared without it.
        let Some(exe) = exe else {
            return Err(unforwarded(events, "cannot find own binary".into()));
        };
        let ensure_start = clock::now_unix_nanos();
        if let Err(e) = reply.socket_path() {
            // Not ttrpc (a gRPC shim): its calls pass untouched, its events are still forwarded.
            if let Some(tap) = &events {
                let forwarder = proxy::events_only(
                    &plan,
                    exe,
                    Some(&tap.listener),
                    proxy::ProxyError::NotTtrpc,
                );
                if let Err(cause) = forwarder {
                    return Err(unforwarded(events, format!("{e}; {cause}")));
                }
            }
            return Err(e.to_string());
        }
        let ensured = match proxy::ensure_proxy(&plan, exe, events.as_ref().map(|e| &e.listener)) {
            Ok(ensured) => ensured,
            Err(e) => return Err(unforwarded(events, e.to_string())),
        };
        let record = ProxyRecord {
            proxy: plan.socket.clone(),
            inner: plan.upstream.clone(),
            // A reused proxy keeps the events socket of the start that spawned it.
            events: (ensured != Ensured::Reused)
                .then(|| plan.events.as_ref().map(|e| e.socket.clone()))
                .flatten(),
            protocol: plan.protocol.clone(),
        };
        match ensured {
            Ensured::Reused => {
                if let Some(events) = events {
                    events.discard();
                }
            }
            Ensured::EventsOnly { .. } => {
                return Err("the proxy cannot serve calls; it forwards events only".into())
            }
            Ensured::Spawned { .. } => {}
        }
        let mut ensure_attrs = Attributes::new();
        ensure_attrs.insert(
            attr::PROXY_REUSED.into(),
            (ensured == Ensured::Reused).into(),
        );
        if let Ensured::Spawned { pid } = ensured {
            ensure_attrs.insert(attr::PROXY_PID.into(), pid.into());
        }
        ensure_attrs.insert(
            attr::PROXY_SOCKET.into(),
            plan.socket.display().to_string().into(),
        );
        spans.push(child_span(
            trace,
            names::PROXY_ENSURE,
            ensure_start,
            clock::now_unix_nanos(),
            ensure_attrs,
        ));
        let proxy_address = format!("unix://{}", plan.socket.display());
        let reply_bytes = reply.with_address(&proxy_address);
        Ok((
            reply_bytes,
            AddressChange {
                inner: reply.address,
                proxy: proxy_address,
                record,
            },
        ))
    }

    fn delete(&self) -> i32 {
        let process_start = clock::now_unix_nanos();
        let bundle = self.bundle();
        let stdin = read_stdin();
        let inner = match self.resolve_inner() {
            Ok(inner) => inner,
            Err(e) => {
                eprintln!("{OWN_NAME}: {e}");
                return 1;
            }
        };
        let run = match self.run_inner(&inner, stdin, false, None) {
            Ok(run) => run,
            Err(e) => {
                eprintln!("{OWN_NAME}: cannot run {}: {e}", inner.display());
                return 1;
            }
        };
        let _ = std::io::stdout().write_all(&run.stdout);
        let _ = std::io::stdout().flush();
        let _ = std::io::stderr().write_all(&run.stderr);
        let dead_proxy = self.clean_up_after_proxy(&bundle);

        let trace = trace_ctx::read_sidecar(&bundle).unwrap_or(TraceContext {
            trace_id: TraceId::random(),
            parent_span_id: None,
        });
        let mut attributes = self.base_attributes(&inner);
        let oci_runtime = inner.oci_runtime.as_ref().map(|p| p.display().to_string());
        Identity::resolve(
            Some(&bundle),
            None,
            oci_runtime.as_deref(),
            &inner.display().to_string(),
        )
        .put(&mut attributes);
        if let Ok(response) = DeleteResponse::parse_from_bytes(&run.stdout) {
            if run.status.success() {
                attributes.insert(attr::TASK_PID.into(), response.pid.into());
                attributes.insert(attr::TASK_EXIT_CODE.into(), response.exit_status.into());
            }
        }
        attributes.insert(attr::PROCESS_EXIT_CODE.into(), exit_code(run.status).into());
        let status = if run.status.success() {
            SpanStatus::Ok
        } else {
            SpanStatus::Error(String::from_utf8_lossy(&run.stderr).trim().to_string())
        };
        let root = SpanId::random();
        let mut inner_span = child_span(
            &TraceContext {
                trace_id: trace.trace_id,
                parent_span_id: Some(root),
            },
            names::INNER_DELETE,
            run.started,
            run.ended,
            attributes.clone(),
        );
        inner_span.status = status.clone();
        let own = own_span(
            trace.trace_id,
            root,
            trace.parent_span_id,
            names::WRAPPER_DELETE,
            process_start,
            attributes,
            status,
        );
        after_reply(move || {
            spool(vec![inner_span, own]);
            if let Some(dead) = dead_proxy {
                dead.remove_leftovers(INNER_SHUTDOWN_GRACE);
            }
        });
        exit_code(run.status)
    }

    /// After the inner `delete`: if the container's proxy died before its inner shim, shuts the
    /// inner shim down and says so in containerd's log (the bundle's log FIFO, which containerd
    /// still reads while it runs `delete`). What is left to remove is removed after the reply.
    fn clean_up_after_proxy(&self, bundle: &Path) -> Option<proxy::DeadProxy> {
        let record = read_proxy_record(bundle)?;
        let id = self.args.id.as_deref().unwrap_or_default();
        let dead = proxy::clean_up_after_proxy(
            &record.proxy,
            &record.inner,
            record.events.as_deref(),
            &record.protocol,
            id,
        )?;
        crate::log::init_fifo(&bundle.join("log"));
        tracing::warn!("{}", dead.report(id));
        Some(dead)
    }
}

/// The program a proxy is started from: this process's own binary, through `/proc/self/exe`. That
/// name still reaches it after an upgrade replaced the file it was started from (its path then
/// reads "… (deleted)"), so a container starting during an upgrade gets a proxy of the version
/// that wrapped it, which the flags and descriptors it is handed are made for: neither the new
/// version's nor none.
fn own_program() -> Option<PathBuf> {
    let program = Path::new("/proc/self/exe");
    match std::fs::metadata(program) {
        Ok(_) => Some(program.to_path_buf()),
        Err(e) => {
            tracing::warn!(
                "cannot find own binary at {} ({e}; is /proc mounted where containerd runs?); not tracing this shim",
                program.display()
            );
            None
        }
    }
}

/// What `start` knew of the proxy it put in front of the inner shim (see [`PROXY_RECORD`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct ProxyRecord {
    proxy: PathBuf,
    inner: PathBuf,
    events: Option<PathBuf>,
    protocol: String,
}

fn write_proxy_record(bundle: &Path, record: &ProxyRecord) {
    if let Err(e) = crate::bundle::write_json(bundle, PROXY_RECORD, record) {
        tracing::warn!(
            "cannot write {} in the bundle ({e}); if the proxy dies, its inner shim is not shut down",
            PROXY_RECORD
        );
    }
}

fn read_proxy_record(bundle: &Path) -> Option<ProxyRecord> {
    crate::bundle::read_json(bundle, PROXY_RECORD, 64 * 1024)
}

/// The span of this wrapper process itself, from `process_start` until now.
fn own_span(
    trace_id: TraceId,
    span_id: SpanId,
    parent_span_id: Option<SpanId>,
    name: &str,
    process_start: u64,
    attributes: Attributes,
    status: SpanStatus,
) -> SpanRecord {
    SpanRecord {
        trace_id,
        span_id,
        parent_span_id,
        name: name.into(),
        kind: SpanKind::Internal,
        start_time_unix_nano: process_start,
        end_time_unix_nano: clock::now_unix_nanos(),
        attributes,
        events: Vec::new(),
        status,
    }
}

fn child_span(
    trace: &TraceContext,
    name: &str,
    start: u64,
    end: u64,
    attributes: Attributes,
) -> SpanRecord {
    SpanRecord {
        trace_id: trace.trace_id,
        span_id: SpanId::random(),
        parent_span_id: trace.parent_span_id,
        name: name.into(),
        kind: SpanKind::Internal,
        start_time_unix_nano: start,
        end_time_unix_nano: end.max(start),
        attributes,
        events: Vec::new(),
        status: SpanStatus::Ok,
    }
}

fn read_stdin() -> Vec<u8> {
    let mut bytes = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut bytes);
    bytes
}

/// Writes this process's spans to the spool, in one write on this thread.
fn spool(spans: Vec<SpanRecord>) {
    if let Err(e) = crate::spool::write_now(&SpoolConfig::from_env(), "wrapper", &spans) {
        tracing::warn!("spans of this shim process are lost: {e}");
    }
}

/// Runs `work`, the bookkeeping that containerd need not wait for (spooling spans, the bundle's
/// `address` file), after this process's reply is out: in a forked child, so that this process
/// exits at once and containerd, which waits for that exit, goes on. In this process instead when
/// a fork is not safe (another thread is running) or fails. A crash of the child loses the spans,
/// never the container.
fn after_reply(work: impl FnOnce()) {
    // containerd reads this process's stdout and stderr to their end: let go of them now, not
    // in the child, or containerd waits until the child is first scheduled.
    detach_stdio();
    let single_threaded = std::fs::read_dir("/proc/self/task")
        .map(|tasks| tasks.count() == 1)
        .unwrap_or(false);
    if !single_threaded {
        return work();
    }
    // SAFETY: this process has a single thread (checked above), so the child inherits no lock
    // held by another thread and may allocate and do I/O like any process.
    match unsafe { nix::unistd::fork() } {
        Ok(nix::unistd::ForkResult::Child) => {
            // A panic must end this child here, not unwind into the parent's remaining code.
            let finished = std::panic::catch_unwind(std::panic::AssertUnwindSafe(work));
            // SAFETY: ends the child without running the parent's exit handlers a second time.
            unsafe { libc::_exit(if finished.is_ok() { 0 } else { 1 }) }
        }
        Ok(nix::unistd::ForkResult::Parent { .. }) => {}
        Err(e) => {
            tracing::debug!("cannot fork to finish after exiting ({e}); finishing first");
            work();
        }
    }
}

fn detach_stdio() {
    if let Ok(null) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
    {
        for fd in 0..=2 {
            let _ = nix::unistd::dup2(null.as_raw_fd(), fd);
        }
    }
}

/// The bundle file in which the 1.6/1.7 runc shim leaves its address for containerd.
const ADDRESS_FILE: &str = "address";
/// An address file longer than this is not one the runc shim wrote: left alone.
const MAX_ADDRESS_FILE: u64 = 4096;

/// The bundle's `address` file names the inner shim; it must name the proxy.
struct AddressChange {
    inner: String,
    proxy: String,
    record: ProxyRecord,
}

/// containerd 1.6/1.7 reconnect through the bundle's `address` file after a restart, so it must
/// name the proxy; rewritten only if it names the inner shim (2.x shims do not write it).
fn rewrite_address_file(bundle: &Path, inner_address: &str, proxy_address: &str) {
    let Some(current) = crate::bundle::read(bundle, ADDRESS_FILE, MAX_ADDRESS_FILE) else {
        return;
    };
    let current = String::from_utf8_lossy(&current);
    if current.trim() != inner_address {
        return;
    }
    let updated = current.replacen(inner_address, proxy_address, 1);
    if let Err(e) = crate::bundle::write(bundle, ADDRESS_FILE, updated.as_bytes()) {
        tracing::warn!(
            "cannot point {} at the proxy ({e}); after a containerd restart calls bypass the proxy",
            bundle.join(ADDRESS_FILE).display()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_proxy_record_round_trips_through_the_bundle() {
        let bundle = tempfile::tempdir().unwrap();
        assert_eq!(read_proxy_record(bundle.path()), None);
        let record = ProxyRecord {
            proxy: "/run/containerd/s/p".into(),
            inner: "/run/containerd/s/i".into(),
            events: Some("/run/shimtrace/ev-1.sock".into()),
            protocol: "json/v3".into(),
        };
        write_proxy_record(bundle.path(), &record);
        assert_eq!(read_proxy_record(bundle.path()), Some(record));
        // Only the record itself is left, no temporary file.
        let names: Vec<_> = std::fs::read_dir(bundle.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, [PROXY_RECORD]);
    }

    /// With no proxy to forward them, the inner shim's events reach containerd through the
    /// socket it was told to publish to, which now leads to containerd's own; a publisher that
    /// connected before that is cut off, so that it dials again.
    #[test]
    fn unforwarded_events_go_straight_to_containerd() {
        use std::os::unix::net::{UnixListener, UnixStream};
        let dir = tempfile::tempdir().unwrap();
        let containerd_socket = dir.path().join("containerd.sock.ttrpc");
        let containerd = UnixListener::bind(&containerd_socket).unwrap();
        let run = ensure_private_dir(&dir.path().join("run")).unwrap();
        let socket = run.path().join("ev-1.sock");
        let listener = UnixListener::bind(&socket).unwrap();
        let mut early = UnixStream::connect(&socket).unwrap();
        early
            .set_read_timeout(Some(std::time::Duration::from_secs(10)))
            .unwrap();
        let tap = EventsTap {
            route: EventsRoute {
                socket: socket.clone(),
                containerd: format!("unix://{}", containerd_socket.display()),
            },
            listener,
        };
        tap.straight_to_containerd("no proxy (test)");

        let mut byte = [0u8; 1];
        match early.read(&mut byte) {
            Ok(0) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
            other => panic!("the early connection is not cut off: {other:?}"),
        }
        let mut publisher = UnixStream::connect(&socket).expect("the events address still answers");
        publisher.write_all(b"e").unwrap();
        let (mut received, _) = containerd.accept().unwrap();
        received.read_exact(&mut byte).unwrap();
        assert_eq!(&byte, b"e");
        assert_eq!(std::fs::read_link(&socket).unwrap(), containerd_socket);
        // Nothing else is left in the run directory (no temporary link).
        let names: Vec<_> = std::fs::read_dir(run.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["ev-1.sock"]);
    }

    /// A containerd address that is no socket path cannot be linked to: the events socket is
    /// left as it was, and nothing panics.
    #[test]
    fn events_to_an_address_that_is_no_path_are_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let run = ensure_private_dir(&dir.path().join("run")).unwrap();
        let socket = run.path().join("ev-2.sock");
        let listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
        let tap = EventsTap {
            route: EventsRoute {
                socket: socket.clone(),
                containerd: "vsock://3:1024".into(),
            },
            listener,
        };
        tap.straight_to_containerd("no proxy (test)");
        use std::os::unix::fs::FileTypeExt;
        assert!(std::fs::symlink_metadata(&socket)
            .unwrap()
            .file_type()
            .is_socket());
    }

    /// The inner shim of a runtime with an `oci_runtime` finds that runtime first on its `PATH`
    /// as `runc`, through a link in a private directory of the run directory.
    #[test]
    fn the_configured_oci_runtime_is_the_inner_shims_runc() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap();
        let run_dir = tmp.path().join("run");
        let runsc = tmp.path().join("runsc-host");
        std::fs::write(&runsc, "#!/bin/sh\necho \"gvisor $*\"\n").unwrap();
        std::fs::set_permissions(&runsc, std::fs::Permissions::from_mode(0o755)).unwrap();
        let dir = oci_runtime_dir(&run_dir, &runsc).unwrap();
        assert!(
            dir.starts_with(run_dir.join(OCI_LINKS)),
            "{}",
            dir.display()
        );
        assert_eq!(std::fs::read_link(dir.join("runc")).unwrap(), runsc);
        for private in [&run_dir, &run_dir.join(OCI_LINKS), &dir] {
            let mode = std::fs::metadata(private).unwrap().permissions().mode() & 0o7777;
            assert_eq!(mode, 0o700, "{}", private.display());
        }
        // Again (every start and delete): the same directory; another runtime: its own.
        assert_eq!(oci_runtime_dir(&run_dir, &runsc).unwrap(), dir);
        let other = oci_runtime_dir(&run_dir, Path::new("/usr/bin/crun")).unwrap();
        assert_ne!(other, dir);
        assert_eq!(std::fs::read_link(dir.join("runc")).unwrap(), runsc);

        let path = path_with_first(&dir, Some(std::ffi::OsStr::new("/usr/bin:/bin"))).unwrap();
        let dirs: Vec<PathBuf> = std::env::split_paths(&path).collect();
        assert_eq!(dirs, [dir.clone(), "/usr/bin".into(), "/bin".into()]);
        assert_eq!(path_with_first(&dir, None).unwrap(), dir.as_os_str());
        // What the runc shim does with it: `runc` by name runs the configured runtime.
        let inner = Inner {
            shim: "/bin/sh".into(),
            oci_runtime: Some(runsc.clone()),
            path: Some(path),
        };
        let out = inner
            .command(&["-c".into(), "runc create x".into()])
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout), "gvisor create x\n");
        // A run directory others may write is refused, naming it.
        let shared = tmp.path().join("shared");
        std::fs::create_dir(&shared).unwrap();
        std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o777)).unwrap();
        let err = oci_runtime_dir(&shared, &runsc).unwrap_err().to_string();
        assert!(err.contains("writable by group or others"), "{err}");
    }

    #[test]
    fn address_file_is_rewritten_only_when_it_names_the_inner_shim() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("address");
        std::fs::write(&path, "unix:///run/containerd/s/inner").unwrap();
        rewrite_address_file(dir.path(), "unix:///run/containerd/s/inner", "unix:///p");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "unix:///p");
        rewrite_address_file(dir.path(), "unix:///run/containerd/s/other", "unix:///q");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "unix:///p");
        let empty = tempfile::tempdir().unwrap();
        rewrite_address_file(empty.path(), "a", "b");
        assert!(!empty.path().join("address").exists());
    }

    #[test]
    fn the_address_file_is_rewritten_through_no_link() {
        let dir = tempfile::tempdir().unwrap();
        let bundle = dir.path().join("bundle");
        std::fs::create_dir(&bundle).unwrap();
        let victim = dir.path().join("victim");
        let inner = "unix:///run/containerd/s/inner";
        std::fs::write(&victim, inner).unwrap();
        std::fs::write(bundle.join("address"), inner).unwrap();
        rewrite_address_file(&bundle, inner, "unix:///p");
        assert_eq!(
            std::fs::read_to_string(bundle.join("address")).unwrap(),
            "unix:///p"
        );
        // A link in place of `address`: neither followed nor replaced.
        std::fs::remove_file(bundle.join("address")).unwrap();
        std::os::unix::fs::symlink(&victim, bundle.join("address")).unwrap();
        rewrite_address_file(&bundle, inner, "unix:///p");
        assert!(std::fs::symlink_metadata(bundle.join("address"))
            .unwrap()
            .file_type()
            .is_symlink());
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), inner);
    }
}
