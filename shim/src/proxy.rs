//! The proxy daemon: one per inner shim address, serving containerd on its own socket and forwarding
//! each connection 1:1 to the inner shim, frame for frame, with a tap on both directions.
//!
//! Lifetime: the wrapper's `start` binds the socket and hands the listener to a detached proxy
//! (an inherited descriptor named by `--listen-fd`) together with a connection to the inner shim
//! (`--monitor-fd`), and the proxy reports readiness on a pipe (`--ready-fd`) as soon as it runs.
//! The events listener the inner shim publishes to (see [`crate::events`]) arrives as
//! `--events-fd`; if the call socket cannot be set up, the proxy still forwards events (the inner
//! shim was already told to publish there), and containerd talks to the inner shim directly. The
//! monitor connection stays idle: when it ends, the inner shim is gone, so the proxy removes its
//! socket (if it is still its own) and exits. A socket file alone never decides: Kata leaves its
//! socket behind after failing.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use ttrpc::proto::{MESSAGE_TYPE_REQUEST, MESSAGE_TYPE_RESPONSE};

use crate::events::EventTap;
use crate::frame::{pump, pump_rewriting};
use crate::spool::{SpanSink, SpoolConfig};
use crate::tap::{ConnectionTap, ShimLabels, TapContext};
use crate::trace_ctx::TraceRegistry;
use shimtrace_span::clock;
use shimtrace_span::env::{PROPAGATE as PROPAGATE_ENV, RUN_DIR as RUN_DIR_ENV};

/// Directory for proxy locks and logs (override with `SHIMTRACE_RUN_DIR`).
pub const DEFAULT_RUN_DIR: &str = "/run/shimtrace";
/// The subcommand under which the wrapper binary runs as a proxy.
pub const PROXY_SUBCOMMAND: &str = "proxy";
/// Longest unix socket path Linux accepts (containerd's `socketPathLimit`).
const SOCKET_PATH_LIMIT: usize = 106;
const READY_TIMEOUT: Duration = Duration::from_secs(3);
const THREAD_STACK: usize = 256 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("cannot use the run directory: {0} (shimtrace writes only where no other user can; or set {RUN_DIR_ENV} to another directory)")]
    RunDir(#[source] crate::safe_fs::SafeFsError),
    #[error("cannot lock {path}: {source}")]
    Lock { path: PathBuf, source: io::Error },
    #[error("cannot bind the proxy socket {path}: {source}")]
    Bind { path: PathBuf, source: io::Error },
    #[error("cannot start the proxy process {exe}: {source}")]
    Spawn { exe: PathBuf, source: io::Error },
    #[error("the proxy process (pid {pid}) did not become ready: {reason}")]
    NotReady { pid: u32, reason: String },
    #[error("cannot reach the inner shim at {path}: {source}")]
    Upstream { path: PathBuf, source: io::Error },
    #[error("the proxy was started without a listener (--listen-fd / --events-fd) or its monitor connection (--monitor-fd); it is started by the wrapper's start, not by hand")]
    NoListener,
    #[error("the inner shim does not speak ttrpc")]
    NotTtrpc,
}

/// The proxy address for an inner shim address: deterministic, so pod grouping (several containers
/// on one inner shim) lands on one proxy; beside containerd's shim sockets.
pub fn proxy_socket_for(inner_socket: &Path, inner_address: &str) -> PathBuf {
    let digest = hex::encode(Sha256::digest(format!("shimtrace-proxy:{inner_address}")));
    let dir = inner_socket
        .parent()
        .unwrap_or(Path::new("/run/containerd/s"));
    let path = dir.join(&digest);
    if path.as_os_str().len() <= SOCKET_PATH_LIMIT {
        path
    } else {
        Path::new(DEFAULT_RUN_DIR).join("s").join(&digest[..32])
    }
}

fn run_dir() -> PathBuf {
    std::env::var_os(RUN_DIR_ENV)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_RUN_DIR))
}

/// What a proxy serves.
#[derive(Debug, Clone)]
pub struct ProxyPlan {
    pub socket: PathBuf,
    pub upstream: PathBuf,
    pub inner: String,
    pub protocol: String,
    pub namespace: String,
    pub task_root: Option<PathBuf>,
    /// The events socket handed to the inner shim as `TTRPC_ADDRESS`, and containerd's real one.
    pub events: Option<EventsRoute>,
}

/// Where the inner shim publishes events (our socket) and where they go (containerd's).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventsRoute {
    pub socket: PathBuf,
    pub containerd: String,
}

impl ProxyPlan {
    fn to_args(&self) -> Vec<String> {
        let mut args = vec![
            PROXY_SUBCOMMAND.to_string(),
            "--socket".into(),
            self.socket.display().to_string(),
            "--upstream".into(),
            self.upstream.display().to_string(),
            "--inner".into(),
            self.inner.clone(),
            "--protocol".into(),
            self.protocol.clone(),
            "--namespace".into(),
            self.namespace.clone(),
        ];
        if let Some(root) = &self.task_root {
            args.push("--task-root".into());
            args.push(root.display().to_string());
        }
        if let Some(events) = &self.events {
            args.push("--events-socket".into());
            args.push(events.socket.display().to_string());
            args.push("--events-upstream".into());
            args.push(events.containerd.clone());
        }
        args
    }

    /// Parses the arguments after the `proxy` subcommand.
    pub fn from_args(args: &[String]) -> Option<ProxyPlan> {
        let get = |flag: &str| flag_value(args, flag).cloned();
        Some(ProxyPlan {
            socket: get("--socket")?.into(),
            upstream: get("--upstream")?.into(),
            inner: get("--inner").unwrap_or_default(),
            protocol: get("--protocol").unwrap_or_default(),
            namespace: get("--namespace").unwrap_or_default(),
            task_root: get("--task-root").map(PathBuf::from),
            events: match (get("--events-socket"), get("--events-upstream")) {
                (Some(socket), Some(containerd)) => Some(EventsRoute {
                    socket: socket.into(),
                    containerd,
                }),
                _ => None,
            },
        })
    }

    fn log_path(&self) -> PathBuf {
        let name = self
            .socket
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "proxy".into());
        run_dir().join(format!("proxy-{name}.log"))
    }
}

/// The argument after `flag` in the proxy's arguments.
fn flag_value<'a>(args: &'a [String], flag: &str) -> Option<&'a String> {
    args.iter()
        .position(|a| a == flag)
        .and_then(|i| args.get(i + 1))
}

/// How `ensure_proxy` satisfied the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ensured {
    /// A live proxy already serves this inner shim (grouping).
    Reused,
    Spawned {
        pid: u32,
    },
    /// The call socket could not be served; a proxy forwards the inner shim's events only, and
    /// containerd must be given the inner shim's own address.
    EventsOnly {
        pid: u32,
    },
}

/// Creates the socket the inner shim will publish events to (its `TTRPC_ADDRESS`), before the
/// inner shim starts; `start` hands it to the proxy.
pub fn bind_events_socket() -> Result<(PathBuf, UnixListener), ProxyError> {
    let dir = ensure_run_dir()?;
    let mut suffix = [0u8; 8];
    let _ = getrandom::getrandom(&mut suffix);
    let path = dir.join(format!("ev-{}.sock", hex::encode(suffix)));
    let listener = bind_private(&path)?;
    Ok((path, listener))
}

/// The run directory, created 0700 if missing, and refused unless private (see
/// [`crate::safe_fs`]): proxy logs and locks have predictable names there.
fn ensure_run_dir() -> Result<PathBuf, ProxyError> {
    let dir = run_dir();
    crate::safe_fs::ensure_private_dir(&dir).map_err(ProxyError::RunDir)?;
    Ok(dir)
}

/// Makes sure a live proxy serves `plan.socket`, starting one if needed. Concurrent `start`s for one
/// inner shim are serialised by a lock file, so exactly one proxy is started. `events` is the
/// listener bound by [`bind_events_socket`] for this inner shim, if any: a started proxy serves it;
/// when a live proxy is reused it is not needed (the running inner shim publishes elsewhere).
pub fn ensure_proxy(
    plan: &ProxyPlan,
    exe: &Path,
    events: Option<&UnixListener>,
) -> Result<Ensured, ProxyError> {
    let dir = ensure_run_dir()?;
    let lock_path = dir.join(format!(
        "{}.lock",
        plan.socket
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
    ));
    let lock_file = crate::safe_fs::open_private_file(&lock_path, crate::safe_fs::Access::Shared)
        .map_err(|e| ProxyError::Lock {
        path: lock_path.clone(),
        source: io::Error::other(e),
    })?;
    let _lock = nix::fcntl::Flock::lock(lock_file, nix::fcntl::FlockArg::LockExclusive).map_err(
        |(_, errno)| ProxyError::Lock {
            path: lock_path.clone(),
            source: errno.into(),
        },
    )?;

    if UnixStream::connect(&plan.socket).is_ok() {
        return Ok(Ensured::Reused);
    }
    if let Some(parent) = plan.socket.parent() {
        let _ = std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o711)
            .create(parent);
    }
    let _ = std::fs::remove_file(&plan.socket);
    let listener = match bind_private(&plan.socket) {
        Ok(listener) => listener,
        Err(e) => return events_only(plan, exe, events, e),
    };
    let identity = file_identity(&plan.socket);
    match spawn_detached(plan, exe, Some(&listener), events) {
        Ok(pid) => Ok(Ensured::Spawned { pid }),
        Err(e) => {
            remove_if_same(&plan.socket, identity);
            events_only(plan, exe, events, e)
        }
    }
}

/// The inner shim already publishes to our events socket: keep forwarding its events even when
/// its calls cannot be proxied, or containerd would never hear of its tasks.
pub fn events_only(
    plan: &ProxyPlan,
    exe: &Path,
    events: Option<&UnixListener>,
    cause: ProxyError,
) -> Result<Ensured, ProxyError> {
    let Some(events) = events else {
        return Err(cause);
    };
    tracing::warn!("calls will bypass the proxy ({cause}); forwarding events only");
    spawn_detached(plan, exe, None, Some(events)).map(|pid| Ensured::EventsOnly { pid })
}

/// Binds a unix socket readable and writable by its owner only (0600 from the start, not after).
fn bind_private(path: &Path) -> Result<UnixListener, ProxyError> {
    let old = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o177));
    let bound = UnixListener::bind(path);
    nix::sys::stat::umask(old);
    bound.map_err(|source| ProxyError::Bind {
        path: path.to_path_buf(),
        source,
    })
}

/// The identity (device, inode) of the file at `path`, to recognise our own socket file later.
fn file_identity(path: &Path) -> Option<(u64, u64)> {
    std::fs::symlink_metadata(path)
        .ok()
        .map(|m| (m.dev(), m.ino()))
}

/// Removes the socket file at `path` only if it is still the one we bound (a new proxy for the same
/// inner address may have replaced it). `fstat` on the socket fd cannot tell: it names the socket
/// inode, not the file.
fn remove_if_same(path: &Path, identity: Option<(u64, u64)>) {
    if identity.is_some() && file_identity(path) == identity {
        let _ = std::fs::remove_file(path);
    }
}

fn spawn_detached(
    plan: &ProxyPlan,
    exe: &Path,
    listener: Option<&UnixListener>,
    events: Option<&UnixListener>,
) -> Result<u32, ProxyError> {
    let (ready_read, ready_write) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| ProxyError::Spawn {
            exe: exe.to_path_buf(),
            source: e.into(),
        })?;
    // Connected here, not in the proxy, so that the proxy is ready as soon as it runs.
    let monitor = UnixStream::connect(&plan.upstream).map_err(|source| ProxyError::Upstream {
        path: plan.upstream.clone(),
        source,
    })?;
    // The child inherits exactly these (close-on-exec cleared) and learns their numbers from its
    // arguments. Without a pre-exec hook, std spawns with posix_spawn (vfork + exec), which
    // spares copying this process's memory; the proxy detaches itself (setsid, chdir) once running.
    let handed = HandedFds {
        listen: listener.map(|l| l.as_raw_fd()),
        ready: Some(ready_write.as_raw_fd()),
        events: events.map(|l| l.as_raw_fd()),
        monitor: Some(monitor.as_raw_fd()),
    }
    .by_flag();
    let mut command = Command::new(exe);
    command
        .args(plan.to_args())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    for (flag, fd) in &handed {
        command.arg(flag).arg(fd.to_string());
        inheritable(*fd, true).map_err(|source| ProxyError::Spawn {
            exe: exe.to_path_buf(),
            source,
        })?;
    }
    let spawned = command.spawn();
    for (_, fd) in &handed {
        let _ = inheritable(*fd, false);
    }
    let child = spawned.map_err(|source| ProxyError::Spawn {
        exe: exe.to_path_buf(),
        source,
    })?;
    drop(ready_write);
    let pid = child.id();
    // The child is reparented once this short-lived process exits; nobody waits for it here.
    drop(child);
    let mut ready = File::from(ready_read);
    let deadline = Instant::now() + READY_TIMEOUT;
    let outcome = wait_readable(&ready, deadline).and_then(|()| {
        let mut byte = [0u8; 1];
        match ready.read(&mut byte) {
            Ok(1) => Ok(()),
            Ok(_) => Err("it exited before it was ready (see its log)".to_string()),
            Err(e) => Err(e.to_string()),
        }
    });
    match outcome {
        Ok(()) => Ok(pid),
        Err(reason) => {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
            let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid as i32), None);
            Err(ProxyError::NotReady { pid, reason })
        }
    }
}

/// Sets or clears close-on-exec on `fd`, so that a spawned child inherits it or not.
fn inheritable(fd: RawFd, inherit: bool) -> io::Result<()> {
    // SAFETY: F_GETFD/F_SETFD only change the flags of an fd this process owns.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFD);
        let wanted = if inherit {
            flags & !libc::FD_CLOEXEC
        } else {
            flags | libc::FD_CLOEXEC
        };
        if flags < 0 || libc::fcntl(fd, libc::F_SETFD, wanted) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

fn wait_readable(file: &File, deadline: Instant) -> Result<(), String> {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    use std::os::fd::AsFd;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(format!("no answer within {READY_TIMEOUT:?}"));
        }
        let mut fds = [PollFd::new(file.as_fd(), PollFlags::POLLIN)];
        let timeout =
            PollTimeout::try_from(left.as_millis().min(60_000) as i32).unwrap_or(PollTimeout::MAX);
        match poll(&mut fds, timeout) {
            Ok(0) => continue,
            Ok(_) => return Ok(()),
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e.to_string()),
        }
    }
}

/// Connections currently being served, so the exit path can let them finish their spans.
struct ActiveConnections {
    count: Mutex<usize>,
    idle: Condvar,
}

impl ActiveConnections {
    fn enter(&self) {
        if let Ok(mut n) = self.count.lock() {
            *n += 1;
        }
    }
    fn leave(&self) {
        if let Ok(mut n) = self.count.lock() {
            *n = n.saturating_sub(1);
            self.idle.notify_all();
        }
    }
    fn wait_idle(&self, timeout: Duration) {
        if let Ok(n) = self.count.lock() {
            let _ = self.idle.wait_timeout_while(n, timeout, |n| *n > 0);
        }
    }
}

/// Runs the proxy daemon (the `proxy` subcommand); returns when the inner shim is gone.
pub fn run_proxy(plan: ProxyPlan, fds: HandedFds) -> Result<(), ProxyError> {
    let listener = fds.listen.and_then(fd_if_open).map(UnixListener::from);
    let events_listener = fds.events.and_then(fd_if_open).map(UnixListener::from);
    let ready = fds.ready.and_then(fd_if_open).map(File::from);
    let failed = |e: ProxyError| {
        crate::log::init_file(&plan.log_path());
        Err(e)
    };
    let monitor = fds.monitor.and_then(fd_if_open).map(UnixStream::from);
    let Some(monitor) = monitor.filter(|_| listener.is_some() || events_listener.is_some()) else {
        return failed(ProxyError::NoListener);
    };
    // Ready: this process holds the bound listener and a live connection to the inner shim. The
    // wrapper's `start` (and so the container's start) waits for this and nothing more; all
    // below happens while containerd already connects (its connection waits in the backlog).
    if let Some(mut ready) = ready {
        let _ = ready.write_all(b"1");
    }
    // Detach from the wrapper's session (containerd's) and from its working directory.
    let _ = nix::unistd::setsid();
    let _ = std::env::set_current_dir("/");
    crate::log::init_file(&plan.log_path());
    // The wrapper bound these files an instant ago (holding the lock): they are ours.
    let identity = listener.as_ref().and_then(|_| file_identity(&plan.socket));
    let events_socket = plan.events.as_ref().map(|e| e.socket.clone());
    let events_identity = events_socket.as_deref().and_then(file_identity);
    let sink = match SpanSink::start(&SpoolConfig::from_env(), "proxy") {
        Ok(sink) => sink,
        Err(e) => {
            tracing::warn!("spans will be dropped and counted: {e}");
            SpanSink::disabled()
        }
    };
    let ctx = Arc::new(TapContext {
        sink,
        traces: TraceRegistry::new(plan.task_root.clone()),
        shim: Arc::new(ShimLabels {
            inner: plan.inner.clone(),
            protocol: plan.protocol.clone(),
            namespace: plan.namespace.clone(),
        }),
        propagate: propagate_enabled(),
    });
    tracing::info!(
        "proxy {} serving inner shim {} ({})",
        plan.socket.display(),
        plan.upstream.display(),
        plan.inner
    );

    let active = Arc::new(ActiveConnections {
        count: Mutex::new(0),
        idle: Condvar::new(),
    });
    if let Some(listener) = listener {
        let (ctx, active, upstream) = (ctx.clone(), active.clone(), plan.upstream.clone());
        let _ = std::thread::Builder::new()
            .name("accept".into())
            .stack_size(THREAD_STACK)
            .spawn(move || accept_loop(listener, &upstream, ctx, active, Role::Calls));
    }
    if let (Some(listener), Some(route)) = (events_listener, plan.events.clone()) {
        let (ctx, active) = (ctx.clone(), active.clone());
        let containerd = PathBuf::from(
            route
                .containerd
                .strip_prefix("unix://")
                .unwrap_or(&route.containerd),
        );
        let _ = std::thread::Builder::new()
            .name("accept-events".into())
            .stack_size(THREAD_STACK)
            .spawn(move || accept_loop(listener, &containerd, ctx, active, Role::Events));
    }

    wait_for_inner_exit(monitor);
    tracing::info!(
        "inner shim {} is gone; proxy exiting",
        plan.upstream.display()
    );
    remove_if_same(&plan.socket, identity);
    if let Some(socket) = &events_socket {
        remove_if_same(socket, events_identity);
    }
    remove_dead_socket(&plan.upstream);
    active.wait_idle(Duration::from_secs(2));
    ctx.sink.shutdown(Duration::from_secs(2));
    Ok(())
}

/// `SHIMTRACE_PROPAGATE=0` (or `false`) stops the proxy from adding its `traceparent` to requests.
fn propagate_enabled() -> bool {
    !matches!(
        std::env::var(PROPAGATE_ENV).as_deref(),
        Ok("0") | Ok("false") | Ok("no")
    )
}

/// The descriptors `start` hands a proxy it spawns, by number (`--listen-fd`, `--ready-fd`,
/// `--events-fd`, `--monitor-fd`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HandedFds {
    pub listen: Option<RawFd>,
    pub ready: Option<RawFd>,
    pub events: Option<RawFd>,
    /// A connection to the inner shim, made by the wrapper: it ends when the inner shim exits.
    pub monitor: Option<RawFd>,
}

impl HandedFds {
    const FLAGS: [&'static str; 4] = ["--listen-fd", "--ready-fd", "--events-fd", "--monitor-fd"];

    /// Parses the arguments after the `proxy` subcommand; only descriptors above stdio count.
    pub fn from_args(args: &[String]) -> HandedFds {
        let [listen, ready, events, monitor] = HandedFds::FLAGS.map(|flag| {
            flag_value(args, flag)
                .and_then(|v| v.parse::<RawFd>().ok())
                .filter(|fd| *fd > 2)
        });
        HandedFds {
            listen,
            ready,
            events,
            monitor,
        }
    }

    /// Each descriptor present with the flag that names it, as `from_args` reads them.
    fn by_flag(&self) -> Vec<(&'static str, RawFd)> {
        let fds = [self.listen, self.ready, self.events, self.monitor];
        HandedFds::FLAGS
            .into_iter()
            .zip(fds)
            .filter_map(|(flag, fd)| Some((flag, fd?)))
            .collect()
    }
}

fn fd_if_open(fd: RawFd) -> Option<OwnedFd> {
    // SAFETY: F_GETFD only queries; ownership is taken only of an fd that exists and that nothing
    // else in this freshly exec'd process uses (the wrapper named it in our arguments).
    unsafe { (libc::fcntl(fd, libc::F_GETFD) >= 0).then(|| OwnedFd::from_raw_fd(fd)) }
}

/// Blocks until the monitor connection ends: the inner shim exited (or closed on us).
fn wait_for_inner_exit(mut monitor: UnixStream) {
    let mut byte = [0u8; 64];
    loop {
        match monitor.read(&mut byte) {
            Ok(0) => return,
            Ok(_) => continue,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => return,
        }
    }
}

/// The runc shim removes the socket named in the bundle's `address` file at exit, which the wrapper
/// pointed at the proxy; so the inner shim's own socket file is left behind. Remove it once nothing
/// answers there.
fn remove_dead_socket(path: &Path) {
    if let Err(e) = UnixStream::connect(path) {
        if e.kind() == io::ErrorKind::ConnectionRefused {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// What a listener's connections carry.
#[derive(Clone, Copy)]
enum Role {
    /// containerd → inner shim task (and sandbox, streaming) calls.
    Calls,
    /// inner shim → containerd event publishing.
    Events,
}

fn accept_loop(
    listener: UnixListener,
    upstream: &Path,
    ctx: Arc<TapContext>,
    active: Arc<ActiveConnections>,
    role: Role,
) {
    for downstream in listener.incoming() {
        let downstream = match downstream {
            Ok(s) => s,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                tracing::warn!("accept failed: {e}");
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
        };
        let upstream_conn = match UnixStream::connect(upstream) {
            Ok(s) => s,
            Err(e) => {
                // Closing tells the client its peer is unreachable, which is the truth; an inner
                // shim retries publishing, as it would against containerd itself.
                tracing::warn!("cannot reach {}: {e}", upstream.display());
                continue;
            }
        };
        active.enter();
        let (ctx, active) = (ctx.clone(), active.clone());
        let spawned = std::thread::Builder::new()
            .name("conn".into())
            .stack_size(THREAD_STACK)
            .spawn({
                let active = active.clone();
                move || {
                    match role {
                        Role::Calls => forward_connection(downstream, upstream_conn, ctx),
                        Role::Events => serve_events(downstream, upstream_conn, ctx),
                    }
                    active.leave();
                }
            });
        if spawned.is_err() {
            active.leave();
        }
    }
}

/// Forwards one containerd connection to its own inner-shim connection until either side ends.
/// (Public so the forwarding can be tested against real ttrpc peers without a daemon.)
pub fn forward_connection(downstream: UnixStream, upstream: UnixStream, ctx: Arc<TapContext>) {
    let tap = Arc::new(ConnectionTap::new(ctx));
    let (Ok(down_read), Ok(up_write)) = (downstream.try_clone(), upstream.try_clone()) else {
        return;
    };
    let request_tap = tap.clone();
    let requests = std::thread::Builder::new()
        .name("conn-req".into())
        .stack_size(THREAD_STACK)
        .spawn(move || {
            let _ = pump_rewriting(
                &down_read,
                &up_write,
                clock::now_unix_nanos,
                |frame, seen| {
                    (frame.header.type_ == MESSAGE_TYPE_REQUEST)
                        .then(|| request_tap.on_request(&frame.header, frame.payload, seen))
                        .flatten()
                },
                |_, _| {},
            );
            // containerd hung up (or the inner shim did): end both sides.
            let _ = down_read.shutdown(std::net::Shutdown::Both);
            let _ = up_write.shutdown(std::net::Shutdown::Both);
        });
    let _ = pump(
        &upstream,
        &downstream,
        clock::now_unix_nanos,
        |frame, seen| {
            if frame.header.type_ == MESSAGE_TYPE_RESPONSE {
                tap.on_response(frame.header.stream_id, frame.payload, seen);
            }
        },
    );
    let _ = downstream.shutdown(std::net::Shutdown::Both);
    let _ = upstream.shutdown(std::net::Shutdown::Both);
    if let Ok(handle) = requests {
        let _ = handle.join();
    }
    tap.on_close(clock::now_unix_nanos());
}

/// Forwards one inner-shim publishing connection to containerd, recording each envelope.
fn serve_events(shim: UnixStream, containerd: UnixStream, ctx: Arc<TapContext>) {
    let tap = EventTap::new(ctx);
    let (Ok(containerd_read), Ok(shim_write)) = (containerd.try_clone(), shim.try_clone()) else {
        return;
    };
    let replies = std::thread::Builder::new()
        .name("events-reply".into())
        .stack_size(THREAD_STACK)
        .spawn(move || {
            let _ = pump(
                &containerd_read,
                &shim_write,
                clock::now_unix_nanos,
                |_, _| {},
            );
            let _ = containerd_read.shutdown(std::net::Shutdown::Both);
            let _ = shim_write.shutdown(std::net::Shutdown::Both);
        });
    let _ = pump(&shim, &containerd, clock::now_unix_nanos, |frame, seen| {
        if frame.header.type_ == MESSAGE_TYPE_REQUEST {
            tap.on_request(frame.payload, seen);
        }
    });
    let _ = shim.shutdown(std::net::Shutdown::Both);
    let _ = containerd.shutdown(std::net::Shutdown::Both);
    if let Ok(handle) = replies {
        let _ = handle.join();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn proxy_socket_is_deterministic_beside_the_inner_one_and_short() {
        let inner = Path::new("/run/containerd/s/abcd");
        let a = proxy_socket_for(inner, "unix:///run/containerd/s/abcd");
        assert_eq!(a, proxy_socket_for(inner, "unix:///run/containerd/s/abcd"));
        assert_eq!(a.parent(), Some(Path::new("/run/containerd/s")));
        assert_ne!(a, proxy_socket_for(inner, "unix:///run/containerd/s/other"));
        let deep = PathBuf::from(format!("/{}/sock", "d".repeat(100)));
        assert!(proxy_socket_for(&deep, "unix:///x").as_os_str().len() <= SOCKET_PATH_LIMIT);
    }

    #[test]
    fn handed_fds_come_from_the_arguments_and_never_name_stdio() {
        let args: Vec<String> = [
            "--socket",
            "/s",
            "--listen-fd",
            "7",
            "--ready-fd",
            "1",
            "--monitor-fd",
            "9",
        ]
        .iter()
        .map(|a| a.to_string())
        .collect();
        assert_eq!(
            HandedFds::from_args(&args),
            HandedFds {
                listen: Some(7),
                ready: None,
                events: None,
                monitor: Some(9),
            }
        );
    }

    #[test]
    fn handed_fds_round_trip_through_their_flags() {
        let fds = HandedFds {
            listen: Some(7),
            ready: Some(8),
            events: None,
            monitor: Some(9),
        };
        let args: Vec<String> = fds
            .by_flag()
            .into_iter()
            .flat_map(|(flag, fd)| [flag.to_string(), fd.to_string()])
            .collect();
        assert_eq!(HandedFds::from_args(&args), fds);
    }

    #[test]
    fn a_run_dir_that_is_a_link_or_shared_or_foreign_is_refused() {
        // The only test that sets this variable.
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("real");
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&real)
            .unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        let shared = dir.path().join("shared");
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&shared)
            .unwrap();
        std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o1777)).unwrap();
        let mut refused = vec![(link, "symbolic link"), (shared, "writable by")];
        if nix::unistd::geteuid().is_root() {
            let foreign = dir.path().join("foreign");
            std::fs::DirBuilder::new()
                .mode(0o700)
                .create(&foreign)
                .unwrap();
            std::os::unix::fs::chown(&foreign, Some(65534), Some(65534)).unwrap();
            refused.push((foreign, "owned by"));
        }
        for (path, why) in refused {
            std::env::set_var(RUN_DIR_ENV, &path);
            let err = ensure_run_dir().unwrap_err().to_string();
            assert!(err.contains(why), "{}: {err}", path.display());
            assert!(bind_events_socket().is_err(), "{}", path.display());
        }
        let fresh = dir.path().join("fresh");
        std::env::set_var(RUN_DIR_ENV, &fresh);
        assert_eq!(ensure_run_dir().unwrap(), fresh);
        std::env::remove_var(RUN_DIR_ENV);
        assert_eq!(std::fs::read_dir(&real).unwrap().count(), 0);
        let mode = std::fs::metadata(&fresh).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode, 0o700);
    }

    #[test]
    fn plan_round_trips_through_args() {
        let plan = ProxyPlan {
            socket: "/run/containerd/s/p".into(),
            upstream: "/run/containerd/s/i".into(),
            inner: "/usr/bin/containerd-shim-runc-v2".into(),
            protocol: "plain/v2".into(),
            namespace: "k8s.io".into(),
            task_root: Some("/run/containerd/io.containerd.runtime.v2.task".into()),
            events: Some(EventsRoute {
                socket: "/run/shimtrace/ev-1.sock".into(),
                containerd: "/run/containerd/containerd.sock.ttrpc".into(),
            }),
        };
        let args = plan.to_args();
        assert_eq!(args[0], PROXY_SUBCOMMAND);
        let back = ProxyPlan::from_args(&args[1..]).unwrap();
        assert_eq!(back.socket, plan.socket);
        assert_eq!(back.task_root, plan.task_root);
        assert_eq!(back.protocol, plan.protocol);
        assert_eq!(back.namespace, plan.namespace);
        assert_eq!(back.events, plan.events);
    }
}
