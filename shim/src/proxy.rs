//! The proxy daemon: one per inner shim address, serving containerd on its own socket and forwarding
//! each connection 1:1 to the inner shim, frame for frame, with a tap on both directions.
//!
//! Lifetime: the wrapper's `start` binds the socket and hands the listener to a detached proxy
//! (an inherited descriptor named by `--listen-fd`) together with a connection to the inner shim
//! (`--monitor-fd`), and the proxy reports readiness on a pipe (`--ready-fd`) once its accept
//! threads run (they accept as soon as its tap is made; a proxy that cannot start them exits
//! unready, and containerd is given the inner shim's own address).
//! The events listener the inner shim publishes to (see [`crate::events`]) arrives as
//! `--events-fd`; if the call socket cannot be set up, the proxy still forwards events (the inner
//! shim was already told to publish there), and containerd talks to the inner shim directly (if no
//! proxy starts at all, the wrapper links the events socket to containerd's). The
//! monitor connection stays idle: when it ends, the inner shim is gone, so the proxy removes its
//! socket (if it is still its own) and exits. A socket file alone never decides: Kata leaves its
//! socket behind after failing.
//!
//! The proxy must not be what kills a container, so it is as hard to kill as the shim it fronts:
//! its memory is bounded whatever the requests (see [`crate::tap`] and [`crate::trace_ctx`]; at
//! most [`MAX_CALL_CONNECTIONS`] connections are served at once, two threads each), its OOM score
//! adjustment is never above the inner shim's, a panic in the tap costs spans, never frames, and
//! running out of descriptors makes it wait and retry (with back-off and one warning a minute): a
//! connection it cannot accept yet waits in the listener's backlog, and one it cannot connect on
//! to the inner shim is retried for [`UPSTREAM_PATIENCE`] before it is closed. A connection is
//! closed, never served one way only, when no thread can be made for it. If it dies anyway,
//! containerd ends the containers it served (their connection closed) and runs the wrapper's
//! `delete`, which then shuts the inner shim down and
//! removes what the proxy left (see [`clean_up_after_proxy`]). On a normal exit the proxy
//! removes its socket, the inner shim's (once nothing listens there) and its run-dir files.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use ttrpc::proto::{MESSAGE_TYPE_REQUEST, MESSAGE_TYPE_RESPONSE};

use crate::events::EventTap;
use crate::frame::{self, pump, pump_rewriting};
use crate::identity::IdentityRegistry;
use crate::spool::{SpanSink, SpoolConfig};
use crate::tap::{ConnectionTap, ShimLabels, TapContext};
use crate::trace_ctx::TraceRegistry;
use shimtrace_span::clock;
use shimtrace_span::env::{PROPAGATE as PROPAGATE_ENV, RUN_DIR as RUN_DIR_ENV};
use shimtrace_span::naming::WRAPPER_BINARY;

/// Directory for proxy locks and logs (override with `SHIMTRACE_RUN_DIR`).
pub const DEFAULT_RUN_DIR: &str = "/run/shimtrace";
/// The subcommand under which the wrapper binary runs as a proxy.
pub const PROXY_SUBCOMMAND: &str = "proxy";
/// Longest unix socket path Linux accepts (containerd's `socketPathLimit`).
const SOCKET_PATH_LIMIT: usize = 106;
const READY_TIMEOUT: Duration = Duration::from_secs(3);
const THREAD_STACK: usize = 256 * 1024;
/// Most containerd connections served at once. containerd opens one per container of the shim
/// (grouped containers share it) and a few for tools; each costs two threads. Further connections
/// wait in the listener's backlog until one ends.
pub const MAX_CALL_CONNECTIONS: usize = 128;
/// Most event-publishing connections from the inner shim served at once (it keeps one).
pub const MAX_EVENT_CONNECTIONS: usize = 16;
/// Retries for want of descriptors or memory pause this long at first, doubling up to
/// [`BACKOFF_MAX`].
const BACKOFF_FIRST: Duration = Duration::from_millis(10);
const BACKOFF_MAX: Duration = Duration::from_secs(1);
/// A connection to the inner shim that fails for want of resources is retried this long before
/// containerd's connection is closed.
const UPSTREAM_PATIENCE: Duration = Duration::from_secs(10);
/// One warning per this period for a failure that repeats (the others are counted in the next).
const WARN_EVERY: Duration = Duration::from_secs(60);
/// How long the proxy waits at exit for the inner shim's listener to close, before leaving its
/// socket file to whoever serves there now.
const INNER_EXIT_GRACE: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("cannot use the run directory: {0} (shimtrace writes only where no other user can; or set {RUN_DIR_ENV} to another directory)")]
    RunDir(#[source] crate::safe_fs::SafeFsError),
    #[error("cannot lock {path}: {source} (check that the run directory is writable by containerd's user, or set {RUN_DIR_ENV} in containerd's environment to one that is)")]
    Lock { path: PathBuf, source: io::Error },
    #[error("cannot bind the proxy socket {path}: {source} (check that its directory, beside containerd's shim sockets or in the run directory, is writable by containerd's user)")]
    Bind { path: PathBuf, source: io::Error },
    #[error("cannot start the proxy process from {exe}: {source} (check the limits on processes and open files of containerd's service)")]
    Spawn { exe: PathBuf, source: io::Error },
    #[error("the proxy process (pid {pid}) did not become ready: {reason} (see its log {})", log.display())]
    NotReady {
        pid: u32,
        reason: String,
        log: PathBuf,
    },
    #[error("cannot reach the inner shim at {path}: {source} (check that it still runs: it may have exited right after its start, see containerd's log)")]
    Upstream { path: PathBuf, source: io::Error },
    #[error("cannot start the proxy's threads: {0} (the system is short of threads or memory: check the process limits of containerd's service, its cgroup's pids.max and kernel.threads-max)")]
    Threads(#[source] io::Error),
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

pub(crate) fn run_dir() -> PathBuf {
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
    /// The OCI runtime the wrapper's config makes the inner shim run as `runc`: the runtime of
    /// the containers whose `Create` names no `BinaryName`.
    pub oci_runtime: Option<String>,
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
        if let Some(oci_runtime) = &self.oci_runtime {
            args.push("--oci-runtime".into());
            args.push(oci_runtime.clone());
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
            oci_runtime: get("--oci-runtime"),
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
    match ensure_run_dir() {
        Ok(dir) => ensure_proxy_in(&dir, plan, exe, events),
        Err(e) => events_only(plan, exe, events, e),
    }
}

/// [`ensure_proxy`] with its lock in the run directory `dir`. Whatever stops the call socket from
/// being served still leaves the events forwarded (see [`events_only`]), under the lock when it
/// could be taken.
fn ensure_proxy_in(
    dir: &Path,
    plan: &ProxyPlan,
    exe: &Path,
    events: Option<&UnixListener>,
) -> Result<Ensured, ProxyError> {
    let lock_path = dir.join(run_file_names(&plan.socket).0);
    let (lock, served) = match lock_run_file(&lock_path) {
        Ok(lock) => (Some(lock), serve_calls(plan, exe, events)),
        Err(source) => (
            None,
            Err(ProxyError::Lock {
                path: lock_path,
                source,
            }),
        ),
    };
    let ensured = served.or_else(|cause| events_only(plan, exe, events, cause));
    drop(lock);
    ensured
}

/// Makes sure a live proxy serves `plan.socket` (and `events`), starting one if needed; the
/// caller holds the lock.
fn serve_calls(
    plan: &ProxyPlan,
    exe: &Path,
    events: Option<&UnixListener>,
) -> Result<Ensured, ProxyError> {
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
    let listener = bind_private(&plan.socket)?;
    let identity = file_identity(&plan.socket);
    spawn_detached(plan, exe, Some(&listener), events)
        .map(|pid| Ensured::Spawned { pid })
        .inspect_err(|_| remove_if_same(&plan.socket, identity))
}

/// The names of the lock file and the log of the proxy serving `socket`, in the run dir.
fn run_file_names(socket: &Path) -> (String, String) {
    let name = socket
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "proxy".into());
    (format!("{name}.lock"), format!("proxy-{name}.log"))
}

type RunLock = nix::fcntl::Flock<File>;

/// Takes the exclusive lock on the file at `path`, creating it. The file is removed when its proxy
/// exits (under this lock), so a lock taken on a file that is no longer at `path` is let go and
/// taken again on the file there now.
fn lock_run_file(path: &Path) -> io::Result<RunLock> {
    loop {
        // Never through a link or into a FIFO someone planted in the run dir.
        let file = crate::safe_fs::open_private_file(path, crate::safe_fs::Access::Shared)
            .map_err(io::Error::other)?;
        let lock = nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive)
            .map_err(|(_, errno)| io::Error::from(errno))?;
        if still_at(&lock, path) {
            return Ok(lock);
        }
    }
}

/// Whether `path` still names the open `file`.
fn still_at(file: &File, path: &Path) -> bool {
    let open = file.metadata().map(|m| (m.dev(), m.ino())).ok();
    open.is_some() && file_identity(path) == open
}

/// Removes the proxy's lock file and log for `socket` from the run dir, unless another proxy for
/// the same inner shim serves there now or a wrapper is starting one (it holds the lock). The log
/// stays if it recorded a warning or an error: what the operator may need to know.
fn remove_run_files(socket: &Path) {
    remove_run_files_in(&run_dir(), socket)
}

fn remove_run_files_in(dir: &Path, socket: &Path) {
    let (lock_name, log_name) = run_file_names(socket);
    let lock_path = dir.join(lock_name);
    if !lock_path.exists() {
        return;
    }
    let Ok(file) = crate::safe_fs::open_private_file(&lock_path, crate::safe_fs::Access::Shared)
    else {
        return;
    };
    let Ok(lock) = nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock)
    else {
        return;
    };
    if !still_at(&lock, &lock_path) || UnixStream::connect(socket).is_ok() {
        return;
    }
    let log = dir.join(log_name);
    if !recorded_a_warning(&log) {
        let _ = std::fs::remove_file(&log);
    }
    // Removed while locked: a wrapper waiting for this lock then finds the file gone and locks a
    // new one (see `lock_run_file`).
    let _ = std::fs::remove_file(&lock_path);
}

/// Whether the log at `path` holds a line at level WARN or ERROR.
fn recorded_a_warning(path: &Path) -> bool {
    use std::io::BufRead;
    let Ok(file) = crate::safe_fs::open_private_file(path, crate::safe_fs::Access::Read) else {
        return false;
    };
    io::BufReader::new(file)
        .lines()
        .map_while(Result::ok)
        .any(|line| matches!(line.split_whitespace().nth(1), Some("WARN" | "ERROR")))
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
    // The wrapper passes /proc/self/exe (see its `own_program`): name the process for `ps`.
    command
        .arg0(WRAPPER_BINARY)
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
            Ok(_) => Err("it exited before it was ready".to_string()),
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
            Err(ProxyError::NotReady {
                pid,
                reason,
                log: plan.log_path(),
            })
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

/// Starts one of the proxy's threads, on a small stack.
fn spawn_thread<T: Send + 'static>(
    name: &str,
    work: impl FnOnce() -> T + Send + 'static,
) -> io::Result<std::thread::JoinHandle<T>> {
    #[cfg(test)]
    if FAIL_SPAWNS.with(std::cell::Cell::get) {
        return Err(io::Error::from_raw_os_error(libc::EAGAIN));
    }
    std::thread::Builder::new()
        .name(name.into())
        .stack_size(THREAD_STACK)
        .spawn(work)
}

#[cfg(test)]
thread_local! {
    /// Makes [`spawn_thread`] fail on this thread, as it does when the system is out of threads.
    static FAIL_SPAWNS: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Places for connections, by role: at most [`Role::limit`] of each at once (an accept loop takes
/// one before it accepts), and the exit path lets those being served finish their spans.
#[derive(Default)]
struct ActiveConnections {
    count: Mutex<Counts>,
    changed: Condvar,
}

#[derive(Debug, Default, PartialEq, Eq)]
struct Counts {
    /// Places taken: calls, events.
    taken: [usize; 2],
    /// Of them, connections accepted and being served.
    serving: usize,
}

/// A place for one connection; dropping it (also when its thread panics) frees it.
struct ConnectionSlot {
    active: Arc<ActiveConnections>,
    role: Role,
    serving: bool,
}

impl ActiveConnections {
    /// Waits for a free place for a connection of `role` and takes it.
    fn enter(self: &Arc<Self>, role: Role) -> ConnectionSlot {
        if let Ok(count) = self.count.lock() {
            let limit = role.limit();
            if let Ok(mut count) = self
                .changed
                .wait_while(count, |count| count.taken[role as usize] >= limit)
            {
                count.taken[role as usize] += 1;
            }
        }
        ConnectionSlot {
            active: self.clone(),
            role,
            serving: false,
        }
    }

    fn wait_idle(&self, timeout: Duration) {
        if let Ok(count) = self.count.lock() {
            let _ = self
                .changed
                .wait_timeout_while(count, timeout, |count| count.serving > 0);
        }
    }
}

impl ConnectionSlot {
    /// A connection was accepted into this place.
    fn serve(&mut self) {
        if let Ok(mut count) = self.active.count.lock() {
            count.serving += 1;
            self.serving = true;
        }
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        if let Ok(mut count) = self.active.count.lock() {
            let taken = &mut count.taken[self.role as usize];
            *taken = taken.saturating_sub(1);
            if self.serving {
                count.serving = count.serving.saturating_sub(1);
            }
            self.active.changed.notify_all();
        }
    }
}

/// Pauses between retries of something failing for want of resources: [`BACKOFF_FIRST`],
/// doubling up to [`BACKOFF_MAX`].
struct Backoff {
    next: Duration,
}

impl Backoff {
    fn new() -> Backoff {
        Backoff {
            next: BACKOFF_FIRST,
        }
    }

    fn pause(&mut self) -> Duration {
        let pause = self.next;
        self.next = (self.next * 2).min(BACKOFF_MAX);
        pause
    }
}

/// A warning that may repeat quickly (every failed `accept`, every connection that cannot reach the
/// inner shim): logged at most once per [`WARN_EVERY`], with the count of those not logged.
struct RareWarning {
    /// Milliseconds since the proxy's clock origin of the last one logged, plus one (0: never).
    last: AtomicU64,
    unlogged: AtomicU64,
}

impl RareWarning {
    const fn new() -> RareWarning {
        RareWarning {
            last: AtomicU64::new(0),
            unlogged: AtomicU64::new(0),
        }
    }

    /// Whether to log now (`now_ms` on a monotonic clock); `Some(n)`: log, mentioning the `n` not
    /// logged since the last one.
    fn due(&self, now_ms: u64) -> Option<u64> {
        let last = self.last.load(Ordering::Relaxed);
        let due = last == 0 || now_ms + 1 >= last + WARN_EVERY.as_millis() as u64;
        if due
            && self
                .last
                .compare_exchange(last, now_ms + 1, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            return Some(self.unlogged.swap(0, Ordering::Relaxed));
        }
        self.unlogged.fetch_add(1, Ordering::Relaxed);
        None
    }

    fn warn(&self, what: std::fmt::Arguments<'_>) {
        if let Some(unlogged) = self.due(monotonic_ms()) {
            if unlogged > 0 {
                tracing::warn!("{what} ({unlogged} more since the last such warning)");
            } else {
                tracing::warn!("{what}");
            }
        }
    }
}

fn monotonic_ms() -> u64 {
    static ORIGIN: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    ORIGIN.get_or_init(Instant::now).elapsed().as_millis() as u64
}

static ACCEPT_FAILED: RareWarning = RareWarning::new();
static UPSTREAM_SHORT: RareWarning = RareWarning::new();
static UPSTREAM_GONE: RareWarning = RareWarning::new();
static TAP_FAILED: RareWarning = RareWarning::new();
static NO_THREAD: RareWarning = RareWarning::new();

/// Warns (rarely) that a connection got no thread and is closed.
fn no_thread_for_connection(e: &io::Error) {
    NO_THREAD.warn(format_args!(
        "cannot start a thread for a connection: {e}; closing it"
    ));
}

/// Whether an error means "not now" (descriptors, memory, a full backlog) rather than "never".
fn for_want_of_resources(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM | libc::EAGAIN)
    )
}

/// Lets this process open as many descriptors as its hard limit allows (as Go programs, the inner
/// shims among them, do at start): a proxy serving many connections must not be the first to run
/// out.
fn raise_open_files_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct given.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max
        {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

/// Logs a panic of any of the proxy's threads (its stderr is /dev/null).
fn log_panics() {
    std::panic::set_hook(Box::new(|info| {
        let thread = std::thread::current();
        tracing::error!(
            "a defect: thread {} panicked: {info}",
            thread.name().unwrap_or("?")
        );
    }));
}

/// Runs the proxy daemon (the `proxy` subcommand); returns when the inner shim is gone.
pub fn run_proxy(plan: ProxyPlan, fds: HandedFds) -> Result<(), ProxyError> {
    let log = plan.log_path();
    serve(plan, fds, &log)
}

/// [`run_proxy`], logging to `log`.
fn serve(plan: ProxyPlan, fds: HandedFds, log: &Path) -> Result<(), ProxyError> {
    let listener = fds.listen.and_then(fd_if_open).map(UnixListener::from);
    let events_listener = fds.events.and_then(fd_if_open).map(UnixListener::from);
    let ready = fds.ready.and_then(fd_if_open).map(File::from);
    let failed = |e: ProxyError| {
        crate::log::init_file(log);
        Err(e)
    };
    let monitor = fds.monitor.and_then(fd_if_open).map(UnixStream::from);
    let Some(monitor) = monitor.filter(|_| listener.is_some() || events_listener.is_some()) else {
        return failed(ProxyError::NoListener);
    };
    // The wrapper bound these files an instant ago (holding the lock): they are ours.
    let identity = listener.as_ref().and_then(|_| file_identity(&plan.socket));
    let serves_calls = listener.is_some();
    // The accept threads start before the proxy reports ready: a proxy that cannot accept must
    // not be given to containerd; exiting unready makes the wrapper pass the inner shim's own
    // address on instead. They wait for the tap, which is made once the proxy is ready.
    let active = Arc::new(ActiveConnections::default());
    let mut accepting = Vec::new();
    if let Some(listener) = listener {
        match start_accepting(
            "accept",
            listener,
            plan.upstream.clone(),
            &active,
            Role::Calls,
        ) {
            Ok(tap) => accepting.push(tap),
            Err(e) => return failed(ProxyError::Threads(e)),
        }
    }
    if let (Some(listener), Some(route)) = (events_listener, plan.events.clone()) {
        let containerd = PathBuf::from(
            route
                .containerd
                .strip_prefix("unix://")
                .unwrap_or(&route.containerd),
        );
        match start_accepting("accept-events", listener, containerd, &active, Role::Events) {
            Ok(tap) => accepting.push(tap),
            Err(e) => return failed(ProxyError::Threads(e)),
        }
    }
    // Ready: this process accepts on its listeners and holds a live connection to the inner
    // shim. The wrapper's `start` (and so the container's start) waits for this and nothing
    // more; all below happens while containerd already connects (its connection waits in the
    // backlog until the tap is made).
    if let Some(mut ready) = ready {
        let _ = ready.write_all(b"1");
    }
    // Detach from the wrapper's session (containerd's) and from its working directory.
    let _ = nix::unistd::setsid();
    let _ = std::env::set_current_dir("/");
    crate::log::init_file(log);
    log_panics();
    raise_open_files_limit();
    let events_socket = plan.events.as_ref().map(|e| e.socket.clone());
    let events_identity = events_socket.as_deref().and_then(file_identity);
    // The inner shim's own socket file, as it is now: removed at exit only if still this one.
    let upstream_identity = file_identity(&plan.upstream);
    let sink = match SpanSink::start(&SpoolConfig::from_env(), "proxy") {
        Ok(sink) => sink,
        Err(e) => {
            tracing::warn!("spans will be dropped and counted: {e}");
            SpanSink::disabled()
        }
    };
    let ctx = Arc::new(TapContext {
        sink,
        traces: TraceRegistry::with_identities(
            IdentityRegistry::new(plan.task_root.clone())
                .with_oci_runtime(plan.oci_runtime.clone()),
        ),
        shim: Arc::new(ShimLabels {
            inner: plan.inner.clone(),
            protocol: plan.protocol.clone(),
            namespace: plan.namespace.clone(),
        }),
        propagate: propagate_enabled(),
        pending: Default::default(),
    });
    tracing::info!(
        "proxy {} serving inner shim {} ({})",
        plan.socket.display(),
        plan.upstream.display(),
        plan.inner
    );
    for tap in accepting {
        let _ = tap.send(ctx.clone());
    }

    if serves_calls {
        // A ttrpc inner shim (the only kind whose calls are served) answers Connect with its pid.
        match_inner_oom_score(&plan.upstream, &plan.protocol);
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
    remove_socket_once_dead(&plan.upstream, upstream_identity, INNER_EXIT_GRACE);
    active.wait_idle(Duration::from_secs(2));
    ctx.sink.shutdown(Duration::from_secs(2));
    remove_run_files(&plan.socket);
    Ok(())
}

/// What the wrapper's `delete` found of a proxy that died before its inner shim (see
/// [`clean_up_after_proxy`]).
#[derive(Debug)]
pub struct DeadProxy {
    /// The dead proxy's socket.
    proxy: PathBuf,
    /// The inner shim's socket.
    inner: PathBuf,
    events: Option<PathBuf>,
    /// Whether the inner shim still ran when the proxy was found dead.
    inner_ran: bool,
}

impl DeadProxy {
    /// What happened, for containerd's log.
    pub fn report(&self, id: &str) -> String {
        let (proxy, inner) = (self.proxy.display(), self.inner.display());
        if !self.inner_ran {
            return format!(
                "the shimtrace proxy {proxy} in front of inner shim {inner} had died; removed what it left"
            );
        }
        format!(
            "the shimtrace proxy {proxy} died while inner shim {inner} still ran (was it killed?): \
             containerd ended container {id}, as it does when a shim dies; the inner shim is told \
             to shut down (it does once it holds no other container) and its socket is removed \
             once it exits"
        )
    }

    /// Waits (up to `grace`) for the inner shim to exit and removes its socket, the proxy's socket
    /// and events socket, and the proxy's run-dir files. Runs after `delete` has replied.
    pub fn remove_leftovers(&self, grace: Duration) {
        remove_socket_once_dead(&self.inner, None, grace);
        remove_socket_once_dead(&self.proxy, None, Duration::ZERO);
        if let Some(events) = &self.events {
            remove_socket_once_dead(events, None, Duration::ZERO);
        }
        remove_run_files(&self.proxy);
    }
}

/// For the wrapper's `delete` of container `id`, whose inner shim at `inner` was fronted by the
/// proxy at `proxy`: `None` if that proxy still serves, or ended as it should. Otherwise the proxy
/// died: its socket file is still there but nothing listens (a proxy removes it before it exits,
/// and the runc shim removes it only when it exits itself). containerd saw its connection close
/// and ended the container (the inner shim's `delete` has just removed it); if the inner shim
/// still runs, serving nothing, it is told to forget the container (`Wait`, `Delete`) and to shut
/// down (`Shutdown`, which the runc shim ignores while it holds other containers: the last one's
/// `delete` ends it). Bounded to a few seconds: containerd gives `delete` five.
pub fn clean_up_after_proxy(
    proxy: &Path,
    inner: &Path,
    events: Option<&Path>,
    protocol: &str,
    id: &str,
) -> Option<DeadProxy> {
    use containerd_shim_protos::api::{DeleteRequest, ShutdownRequest, WaitRequest};
    // A socket file that nobody listens on any more. (Gone altogether is the normal end: the
    // proxy removes it, and so does the 1.6/1.7 runc shim on Shutdown, which the `address` file
    // points at the proxy; it may still answer for a moment after that.)
    match UnixStream::connect(proxy) {
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {}
        _ => return None,
    }
    let mut dead = DeadProxy {
        proxy: proxy.to_path_buf(),
        inner: inner.to_path_buf(),
        events: events.map(Path::to_path_buf),
        inner_ran: false,
    };
    let connect = containerd_shim_protos::api::ConnectRequest::new();
    let short = Duration::from_millis(500);
    let conn = UnixStream::connect(inner)
        .ok()
        .filter(|conn| task_call(conn, 1, protocol, "Connect", &connect, short).is_ok());
    let Some(conn) = conn else {
        // The inner shim is gone too: only what the proxy left remains to remove.
        return Some(dead);
    };
    dead.inner_ran = true;
    let mut wait = WaitRequest::new();
    wait.id = id.into();
    let mut delete = DeleteRequest::new();
    delete.id = id.into();
    let mut shutdown = ShutdownRequest::new();
    shutdown.id = id.into();
    // The inner `delete` killed the container; the shim forgets it once it has seen it exit.
    let _ = task_call(
        &conn,
        5,
        protocol,
        "Wait",
        &wait,
        Duration::from_millis(1500),
    );
    let deleted = task_call(
        &conn,
        9,
        protocol,
        "Delete",
        &delete,
        Duration::from_secs(1),
    );
    if let Err(e) = &deleted {
        tracing::debug!("inner shim Delete of {id}: {e}");
    }
    // Answered either way: a shim that still holds other containers stays (their own `delete`
    // ends it), one that holds none exits within seconds.
    let _ = task_call(&conn, 13, protocol, "Shutdown", &shutdown, short);
    Some(dead)
}

/// The task service a shim of `protocol` (`plain/v2`, `json/v3`, …) serves.
fn task_service(protocol: &str) -> &'static str {
    if protocol.ends_with("/v3") {
        "containerd.task.v3.Task"
    } else {
        "containerd.task.v2.Task"
    }
}

/// One task call of the proxy's own to the inner shim at `socket` (stream `sid`), trying the
/// task API version `protocol` names and then the other one if that one is not served.
fn task_call(
    socket: &UnixStream,
    sid: u32,
    protocol: &str,
    method: &str,
    message: &impl protobuf::Message,
    timeout: Duration,
) -> io::Result<Vec<u8>> {
    let payload = message.write_to_bytes().map_err(io::Error::other)?;
    let first = task_service(protocol);
    let second = if first.contains(".v3.") {
        "containerd.task.v2.Task"
    } else {
        "containerd.task.v3.Task"
    };
    let mut request = ttrpc::Request::new();
    request.method = method.into();
    request.payload = payload;
    request.timeout_nano = timeout.as_nanos() as i64;
    for (n, service) in [first, second].into_iter().enumerate() {
        request.service = service.into();
        let response = frame::call(socket, sid + 2 * n as u32, &request, timeout)?;
        let code = response.status.code.value();
        if code == ttrpc::Code::UNIMPLEMENTED as i32 && n == 0 {
            continue;
        }
        if code != 0 {
            return Err(io::Error::other(format!(
                "{service}/{method}: {}",
                response.status.message
            )));
        }
        return Ok(response.payload);
    }
    Err(io::Error::other(format!("{method}: not implemented")))
}

/// The inner shim's pid, from its answer to `Connect`.
fn inner_shim_pid(upstream: &Path, protocol: &str) -> io::Result<u32> {
    use containerd_shim_protos::api::{ConnectRequest, ConnectResponse};
    use protobuf::Message;
    let socket = UnixStream::connect(upstream)?;
    let request = ConnectRequest::new();
    let answer = task_call(
        &socket,
        1,
        protocol,
        "Connect",
        &request,
        Duration::from_secs(2),
    )?;
    let pid = ConnectResponse::parse_from_bytes(&answer)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?
        .shim_pid;
    (pid != 0)
        .then_some(pid)
        .ok_or_else(|| io::Error::other("Connect named no shim pid"))
}

/// Makes the proxy's OOM score adjustment no higher than the inner shim's. It starts as
/// containerd's (inherited), which the runc shim puts one above its own: the proxy is then the
/// less attractive of the two; an inner shim that protects itself more is matched.
fn match_inner_oom_score(upstream: &Path, protocol: &str) {
    let adopted = inner_shim_pid(upstream, protocol).and_then(|pid| {
        adopt_oom_score_adj(
            Path::new(&format!("/proc/{pid}/oom_score_adj")),
            Path::new("/proc/self/oom_score_adj"),
        )
    });
    match adopted {
        Ok(Some(adj)) => tracing::info!("OOM score adjustment lowered to the inner shim's, {adj}"),
        Ok(None) => {}
        // Not a problem worth keeping the log for: containerd's own adjustment stays.
        Err(e) => tracing::info!(
            "cannot match the inner shim's OOM score adjustment ({e}); keeping containerd's"
        ),
    }
}

/// Lowers the OOM score adjustment in `own` to the one in `inner` if that is lower; the value set.
fn adopt_oom_score_adj(inner: &Path, own: &Path) -> io::Result<Option<i32>> {
    let read = |path: &Path| -> io::Result<i32> {
        std::fs::read_to_string(path)?
            .trim()
            .parse()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
    };
    let (inner, mine) = (read(inner)?, read(own)?);
    if inner >= mine {
        return Ok(None);
    }
    std::fs::write(own, inner.to_string())?;
    Ok(Some(inner))
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
/// pointed at the proxy; so the inner shim's own socket file is left behind. Removes it once nothing
/// listens there, if it is still the file `identity` names (`None`: whatever file is there). An
/// exiting shim closes its connections before its listener, so this waits up to `grace` for the
/// listener to go; one still answering then is someone else's (a new shim on that address).
fn remove_socket_once_dead(path: &Path, identity: Option<(u64, u64)>, grace: Duration) -> bool {
    let deadline = Instant::now() + grace;
    let mut pause = Duration::from_millis(1);
    loop {
        match UnixStream::connect(path) {
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                match identity {
                    Some(_) => remove_if_same(path, identity),
                    None => {
                        let _ = std::fs::remove_file(path);
                    }
                }
                return true;
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => return true,
            Err(e) if !for_want_of_resources(&e) => return false,
            _ if Instant::now() >= deadline => return false,
            _ => {}
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(50));
    }
}

/// What a listener's connections carry.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Role {
    /// containerd → inner shim task (and sandbox, streaming) calls.
    Calls = 0,
    /// inner shim → containerd event publishing.
    Events = 1,
}

impl Role {
    fn limit(self) -> usize {
        match self {
            Role::Calls => MAX_CALL_CONNECTIONS,
            Role::Events => MAX_EVENT_CONNECTIONS,
        }
    }
}

/// Starts the thread accepting on `listener`; it waits for the tap context sent on the returned
/// channel (and ends, closing the listener, if none comes).
fn start_accepting(
    name: &str,
    listener: UnixListener,
    upstream: PathBuf,
    active: &Arc<ActiveConnections>,
    role: Role,
) -> io::Result<std::sync::mpsc::Sender<Arc<TapContext>>> {
    let (tap, context) = std::sync::mpsc::channel();
    let active = active.clone();
    spawn_thread(name, move || {
        if let Ok(ctx) = context.recv() {
            accept_loop(listener, &upstream, ctx, active, role);
        }
    })?;
    Ok(tap)
}

fn accept_loop(
    listener: UnixListener,
    upstream: &Path,
    ctx: Arc<TapContext>,
    active: Arc<ActiveConnections>,
    role: Role,
) {
    let mut backoff = Backoff::new();
    loop {
        // A place first: beyond the limit, connections wait in the listener's backlog.
        let mut slot = active.enter(role);
        let downstream = loop {
            match listener.accept() {
                Ok((stream, _)) => break stream,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // Out of descriptors (or memory): the connection waits in the backlog
                    // until there are some again.
                    let pause = backoff.pause();
                    ACCEPT_FAILED.warn(format_args!(
                        "accept failed: {e}; retrying, at most every {BACKOFF_MAX:?}"
                    ));
                    std::thread::sleep(pause);
                }
            }
        };
        backoff = Backoff::new();
        slot.serve();
        let (ctx, upstream) = (ctx.clone(), upstream.to_path_buf());
        let spawned = spawn_thread("conn", move || {
            let _slot = slot;
            let Some(upstream) = connect_upstream(&upstream) else {
                return;
            };
            match role {
                Role::Calls => forward_connection(downstream, upstream, ctx),
                Role::Events => serve_events(downstream, upstream, ctx),
            }
        });
        if let Err(e) = spawned {
            // The connection (moved into the closure) is closed; its peer sees the truth, that it
            // was not served.
            no_thread_for_connection(&e);
            std::thread::sleep(backoff.pause());
        }
    }
}

/// Connects to where a connection is forwarded (the inner shim, or containerd for events). Closing
/// the client's connection tells it its peer is unreachable, which is the truth when the peer is
/// gone (an inner shim retries publishing, as it would against containerd itself); for want of
/// resources it is retried instead, for [`UPSTREAM_PATIENCE`].
fn connect_upstream(upstream: &Path) -> Option<UnixStream> {
    let deadline = Instant::now() + UPSTREAM_PATIENCE;
    let mut backoff = Backoff::new();
    loop {
        match UnixStream::connect(upstream) {
            Ok(stream) => return Some(stream),
            Err(e) if for_want_of_resources(&e) && Instant::now() < deadline => {
                UPSTREAM_SHORT.warn(format_args!(
                    "cannot reach {} yet: {e}; retrying for up to {UPSTREAM_PATIENCE:?}",
                    upstream.display()
                ));
                std::thread::sleep(backoff.pause());
            }
            Err(e) => {
                UPSTREAM_GONE.warn(format_args!("cannot reach {}: {e}", upstream.display()));
                return None;
            }
        }
    }
}

/// Runs tap work so that a defect in it (a panic) costs the connection its spans, never its frames:
/// once the tap of a connection has panicked, it is left alone.
fn isolated<T>(broken: &AtomicBool, work: impl FnOnce() -> Option<T>) -> Option<T> {
    if broken.load(Ordering::Relaxed) {
        return None;
    }
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(work)) {
        Ok(result) => result,
        Err(_) => {
            broken.store(true, Ordering::Relaxed);
            TAP_FAILED.warn(format_args!(
                "the tap failed (see the error above); this connection is forwarded untraced"
            ));
            None
        }
    }
}

/// Forwards one containerd connection to its own inner-shim connection until either side ends.
/// (Public so the forwarding can be tested against real ttrpc peers without a daemon.)
pub fn forward_connection(downstream: UnixStream, upstream: UnixStream, ctx: Arc<TapContext>) {
    let tap = Arc::new(ConnectionTap::new(ctx));
    let broken = Arc::new(AtomicBool::new(false));
    let (request_tap, request_broken) = (tap.clone(), broken.clone());
    let carried = carry_both_ways(
        "conn-req",
        &downstream,
        &upstream,
        move |down_read, up_write| {
            let _ = pump_rewriting(
                down_read,
                up_write,
                clock::now_unix_nanos,
                |frame, seen| {
                    if frame.header.type_ != MESSAGE_TYPE_REQUEST {
                        return None;
                    }
                    isolated(&request_broken, || {
                        request_tap.on_request(&frame.header, frame.payload, seen)
                    })
                },
                |_, _| {},
            );
        },
        || {
            let _ = pump(
                &upstream,
                &downstream,
                clock::now_unix_nanos,
                |frame, seen| {
                    if frame.header.type_ == MESSAGE_TYPE_RESPONSE {
                        isolated(&broken, || {
                            tap.on_response(frame.header.stream_id, frame.payload, seen);
                            Some(())
                        });
                    }
                },
            );
        },
    );
    if carried {
        isolated(&broken, || {
            tap.on_close(clock::now_unix_nanos());
            Some(())
        });
    }
}

/// Carries a connection between `a` and `b` both ways: `a_to_b` on a thread of its own (named
/// `name`), `b_to_a` on this one. Once either direction ends (a peer hung up), both sockets are shut
/// down so that the other ends too. A connection whose second direction cannot be given a thread
/// would carry one way only and its calls would wait forever: it is closed instead, both sides, so
/// that its peers see it end (`false`).
fn carry_both_ways(
    name: &str,
    a: &UnixStream,
    b: &UnixStream,
    a_to_b: impl FnOnce(&UnixStream, &UnixStream) + Send + 'static,
    b_to_a: impl FnOnce(),
) -> bool {
    let shut_both = |one: &UnixStream, other: &UnixStream| {
        let _ = one.shutdown(std::net::Shutdown::Both);
        let _ = other.shutdown(std::net::Shutdown::Both);
    };
    let (Ok(a_read), Ok(b_write)) = (a.try_clone(), b.try_clone()) else {
        return false;
    };
    let background = spawn_thread(name, move || {
        a_to_b(&a_read, &b_write);
        shut_both(&a_read, &b_write);
    });
    let background = match background {
        Ok(handle) => handle,
        Err(e) => {
            no_thread_for_connection(&e);
            shut_both(a, b);
            return false;
        }
    };
    b_to_a();
    shut_both(a, b);
    let _ = background.join();
    true
}

/// Forwards one inner-shim publishing connection to containerd, recording each envelope.
fn serve_events(shim: UnixStream, containerd: UnixStream, ctx: Arc<TapContext>) {
    let tap = EventTap::new(ctx);
    let broken = AtomicBool::new(false);
    carry_both_ways(
        "events-reply",
        &containerd,
        &shim,
        |containerd_read, shim_write| {
            let _ = pump(
                containerd_read,
                shim_write,
                clock::now_unix_nanos,
                |_, _| {},
            );
        },
        || {
            let _ = pump(&shim, &containerd, clock::now_unix_nanos, |frame, seen| {
                if frame.header.type_ == MESSAGE_TYPE_REQUEST {
                    isolated(&broken, || {
                        tap.on_request(frame.payload, seen);
                        Some(())
                    });
                }
            });
        },
    );
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

    /// A whole frame as written: header and payload.
    fn frame(sid: u32, type_: u8, payload: &[u8]) -> Vec<u8> {
        let mut out = (payload.len() as u32).to_be_bytes().to_vec();
        out.extend_from_slice(&sid.to_be_bytes());
        out.extend_from_slice(&[type_, 0]);
        out.extend_from_slice(payload);
        out
    }

    /// Reads one frame: (stream id, type, payload).
    fn read_frame(mut from: &UnixStream) -> (u32, u8, Vec<u8>) {
        let mut header = [0u8; 10];
        from.read_exact(&mut header).expect("a frame in time");
        let len = u32::from_be_bytes(header[..4].try_into().unwrap()) as usize;
        let mut payload = vec![0; len];
        from.read_exact(&mut payload).expect("its payload");
        let sid = u32::from_be_bytes(header[4..8].try_into().unwrap());
        (sid, header[8], payload)
    }

    #[test]
    fn a_panicking_tap_loses_spans_never_frames() {
        use crate::tap::{test_request, PANIC_FOR_TEST};
        let dir = tempfile::tempdir().unwrap();
        let ctx = crate::tap::test_context(dir.path());
        let (containerd, proxy_down) = UnixStream::pair().unwrap();
        let (proxy_up, inner) = UnixStream::pair().unwrap();
        for end in [&containerd, &inner] {
            end.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        }
        let forwarding = std::thread::spawn(move || forward_connection(proxy_down, proxy_up, ctx));
        let (req, resp) = (MESSAGE_TYPE_REQUEST, MESSAGE_TYPE_RESPONSE);
        // Stream 1's request makes the tap panic on the way in, stream 3's response on the way
        // back; stream 5 comes after both.
        let calls = [
            (1, PANIC_FOR_TEST, b"one".to_vec()),
            (3, "Fine", PANIC_FOR_TEST.as_bytes().to_vec()),
            (5, "Fine", b"five".to_vec()),
        ];
        for (sid, method, answer) in calls {
            let request = test_request("containerd.task.v2.Task", method, vec![], &[]);
            (&containerd).write_all(&frame(sid, req, &request)).unwrap();
            let (got_sid, got_type, got) = read_frame(&inner);
            assert_eq!((got_sid, got_type), (sid, req));
            assert!(
                got.starts_with(&request),
                "stream {sid}: the request forwarded"
            );
            (&inner).write_all(&frame(sid, resp, &answer)).unwrap();
            assert_eq!(read_frame(&containerd), (sid, resp, answer), "stream {sid}");
        }
        drop((containerd, inner));
        forwarding
            .join()
            .expect("forwarding ends when both sides do");
    }

    /// A proxy thread that cannot be started, on a thread where none can.
    fn without_threads<T: Send + 'static>(
        work: impl FnOnce() -> T + Send + 'static,
    ) -> std::thread::JoinHandle<T> {
        std::thread::spawn(move || {
            FAIL_SPAWNS.with(|fail| fail.set(true));
            work()
        })
    }

    /// Waits (up to five seconds) for `end` to be closed by its peer, reading what comes first.
    fn closed_by_peer(mut end: &UnixStream) -> bool {
        end.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut buf = [0u8; 64];
        loop {
            match end.read(&mut buf) {
                Ok(0) => return true,
                Ok(_) => continue,
                Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return true,
                Err(_) => return false,
            }
        }
    }

    #[test]
    fn a_connection_without_its_second_thread_is_closed_not_left_hanging() {
        type Serve = fn(UnixStream, UnixStream, Arc<TapContext>);
        // Calls (containerd → inner shim) and events (inner shim → containerd) alike.
        for (what, serve) in [
            ("calls", forward_connection as Serve),
            ("events", serve_events),
        ] {
            let dir = tempfile::tempdir().unwrap();
            let ctx = crate::tap::test_context(dir.path());
            let (caller, proxy_down) = UnixStream::pair().unwrap();
            let (proxy_up, callee) = UnixStream::pair().unwrap();
            let serving = without_threads(move || serve(proxy_down, proxy_up, ctx));
            let request = crate::tap::test_request("containerd.task.v2.Task", "State", vec![], &[]);
            // (The proxy may have closed the connection already.)
            let _ = (&caller).write_all(&frame(1, MESSAGE_TYPE_REQUEST, &request));
            // Nothing would carry an answer: the caller must see the connection end (and
            // reconnect or fail the call), not wait forever.
            assert!(
                closed_by_peer(&caller),
                "{what}: the caller's side left open"
            );
            assert!(closed_by_peer(&callee), "{what}: the other side left open");
            serving.join().unwrap();
        }
    }

    /// A plan for a proxy at `dir/proxy.sock` in front of an inner shim whose socket
    /// (`dir/inner.sock`) the returned listener holds.
    fn plan_in(dir: &Path) -> (ProxyPlan, UnixListener) {
        let upstream = dir.join("inner.sock");
        let inner = UnixListener::bind(&upstream).unwrap();
        let plan = ProxyPlan {
            socket: dir.join("proxy.sock"),
            upstream,
            inner: "inner".into(),
            protocol: "plain/v2".into(),
            namespace: "default".into(),
            task_root: None,
            events: None,
            oci_runtime: None,
        };
        (plan, inner)
    }

    #[test]
    fn a_proxy_that_cannot_start_its_accept_threads_never_reports_ready() {
        use std::os::fd::IntoRawFd;
        let dir = tempfile::tempdir().unwrap();
        let (plan, _inner) = plan_in(dir.path());
        let socket = plan.socket.clone();
        let listener = UnixListener::bind(&socket).unwrap();
        let monitor = UnixStream::connect(&plan.upstream).unwrap();
        let (ready_read, ready_write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
        let fds = HandedFds {
            listen: Some(listener.into_raw_fd()),
            ready: Some(ready_write.into_raw_fd()),
            events: None,
            monitor: Some(monitor.into_raw_fd()),
        };
        let log = dir.path().join("proxy.log");
        let proxy = without_threads(move || serve(plan, fds, &log));
        // The wrapper reads the ready pipe: it must end without a byte, so that the wrapper
        // falls back to the inner shim's own address instead of handing containerd a socket
        // nobody accepts on.
        let mut ready = File::from(ready_read);
        let mut got = Vec::new();
        ready.read_to_end(&mut got).unwrap();
        assert_eq!(got, b"", "reported ready without accepting");
        let err = proxy.join().unwrap().unwrap_err().to_string();
        assert!(err.contains("thread"), "{err}");
        assert!(UnixStream::connect(&socket).is_err(), "still listening");
    }

    #[test]
    fn events_are_still_forwarded_when_the_proxy_lock_cannot_be_taken() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let run = dir.path().join("run");
        std::fs::DirBuilder::new().mode(0o700).create(&run).unwrap();
        let (mut plan, _inner) = plan_in(dir.path());
        let socket = plan.socket.clone();
        // A link where the lock file goes: never opened through.
        std::os::unix::fs::symlink(
            dir.path().join("elsewhere"),
            run.join(run_file_names(&socket).0),
        )
        .unwrap();
        let events = UnixListener::bind(dir.path().join("ev.sock")).unwrap();
        // Stands in for the proxy: reports ready and records how it was started. (Through /proc:
        // sh redirects only descriptors 0 to 9.)
        let args = dir.path().join("args");
        let exe = dir.path().join("proxy");
        std::fs::write(
            &exe,
            format!(
                "#!/bin/sh\necho \"$@\" > {}\nwhile [ $# -gt 0 ]; do [ \"$1\" = --ready-fd ] && fd=$2; shift; done\nprintf 1 > /proc/self/fd/$fd\n",
                args.display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).unwrap();
        plan.events = Some(EventsRoute {
            socket: dir.path().join("ev.sock"),
            containerd: "/run/containerd/containerd.sock.ttrpc".into(),
        });
        let ensured = ensure_proxy_in(&run, &plan, &exe, Some(&events)).unwrap();
        let Ensured::EventsOnly { pid } = ensured else {
            panic!("{ensured:?}");
        };
        let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid as i32), None);
        let args = std::fs::read_to_string(&args).unwrap();
        assert!(args.contains("--events-fd"), "{args}");
        assert!(!args.contains("--listen-fd"), "{args}");
        // Without an events listener there is nothing to keep: the lock error itself.
        let err = ensure_proxy_in(&run, &plan, &exe, None).unwrap_err();
        assert!(matches!(err, ProxyError::Lock { .. }), "{err}");
        assert!(!socket.exists());
    }

    #[test]
    fn a_proxy_that_exits_unready_is_reported_with_its_log() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let (plan, _inner) = plan_in(dir.path());
        let exe = dir.path().join("proxy");
        std::fs::write(&exe, "#!/bin/sh\nexit 1\n").unwrap();
        std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).unwrap();
        let err = spawn_detached(&plan, &exe, None, None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("exited before it was ready"), "{err}");
        let log = plan.log_path();
        assert!(err.contains(log.to_str().unwrap()), "{err}");
    }

    #[test]
    fn accept_failures_back_off_and_warn_once_a_minute() {
        // Every accept failing (EMFILE) for ten minutes, as the loop would meet it.
        let warning = RareWarning::new();
        let mut backoff = Backoff::new();
        let (mut now, mut tries, mut warned) = (Duration::ZERO, 0, Vec::new());
        while now < Duration::from_secs(600) {
            tries += 1;
            if let Some(unlogged) = warning.due(now.as_millis() as u64) {
                warned.push(unlogged);
            }
            now += backoff.pause();
        }
        assert!(tries < 620, "{tries} tries in 10 minutes");
        assert_eq!(warned.len(), 10, "one warning a minute: {warned:?}");
        assert_eq!(warned[0], 0);
        assert!(
            warned[1..].iter().all(|n| (55..=70).contains(n)),
            "{warned:?}"
        );
        assert_eq!(Backoff::new().pause(), BACKOFF_FIRST);
    }

    #[test]
    fn connections_beyond_the_limit_wait_for_a_place() {
        let active = Arc::new(ActiveConnections::default());
        let mut held: Vec<ConnectionSlot> = (0..MAX_EVENT_CONNECTIONS)
            .map(|_| {
                let mut slot = active.enter(Role::Events);
                slot.serve();
                slot
            })
            .collect();
        // Calls have their own places.
        drop(active.enter(Role::Calls));
        let (tx, rx) = std::sync::mpsc::channel();
        let waiting = active.clone();
        std::thread::spawn(move || {
            let mut slot = waiting.enter(Role::Events);
            slot.serve();
            let _ = tx.send(());
            drop(slot);
        });
        assert!(rx.recv_timeout(Duration::from_millis(200)).is_err());
        held.pop();
        rx.recv_timeout(Duration::from_secs(5))
            .expect("a place once one is free");
        drop(held);
        // A place an accept loop holds for its next connection is no connection to wait for.
        let reserved = active.enter(Role::Calls);
        let started = Instant::now();
        active.wait_idle(Duration::from_secs(5));
        assert!(started.elapsed() < Duration::from_secs(1));
        drop(reserved);
        assert_eq!(*active.count.lock().unwrap(), Counts::default());
    }

    #[test]
    fn oom_score_adjustment_is_lowered_to_the_inner_shims_only() {
        let dir = tempfile::tempdir().unwrap();
        let (inner, own) = (dir.path().join("inner"), dir.path().join("own"));
        std::fs::write(&own, "0\n").unwrap();
        std::fs::write(&inner, "1\n").unwrap();
        assert_eq!(adopt_oom_score_adj(&inner, &own).unwrap(), None);
        assert_eq!(std::fs::read_to_string(&own).unwrap(), "0\n");
        std::fs::write(&inner, "-998\n").unwrap();
        assert_eq!(adopt_oom_score_adj(&inner, &own).unwrap(), Some(-998));
        assert_eq!(std::fs::read_to_string(&own).unwrap().trim(), "-998");
        assert!(adopt_oom_score_adj(&dir.path().join("gone"), &own).is_err());
    }

    #[test]
    fn a_dead_inner_socket_is_removed_once_its_listener_closes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("inner");
        let listener = UnixListener::bind(&path).unwrap();
        let identity = file_identity(&path);
        // Closing a little later, as an exiting shim does after its connections.
        let closing = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            drop(listener);
        });
        assert!(remove_socket_once_dead(
            &path,
            identity,
            Duration::from_secs(5)
        ));
        assert!(!path.exists());
        closing.join().unwrap();
        // One that keeps listening is someone's: left alone.
        let _live = UnixListener::bind(&path).unwrap();
        assert!(!remove_socket_once_dead(
            &path,
            None,
            Duration::from_millis(50)
        ));
        assert!(path.exists());
        // Another file at the path than the one known (a new shim's, dead too): left alone.
        drop(_live);
        let other = dir.path().join("other");
        let known = UnixListener::bind(&other).unwrap();
        let known_identity = file_identity(&other);
        assert!(remove_socket_once_dead(
            &path,
            known_identity,
            Duration::ZERO
        ));
        assert!(path.exists(), "not the file the proxy knew");
        drop(known);
    }

    #[test]
    fn run_files_go_with_their_proxy_but_not_under_a_starting_wrapper() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("sock");
        let (lock_name, log_name) = run_file_names(&socket);
        let (lock, log) = (dir.path().join(lock_name), dir.path().join(log_name));
        let files = || (lock.exists(), log.exists());
        std::fs::write(&log, "2026-01-01T00:00:00Z  INFO serving\n").unwrap();
        // A wrapper starting a proxy holds the lock: everything stays.
        let held = lock_run_file(&lock).unwrap();
        remove_run_files_in(dir.path(), &socket);
        assert_eq!(files(), (true, true));
        drop(held);
        // A proxy serving the socket now: everything stays.
        let serving = UnixListener::bind(&socket).unwrap();
        remove_run_files_in(dir.path(), &socket);
        assert_eq!(files(), (true, true));
        drop(serving);
        std::fs::remove_file(&socket).unwrap();
        remove_run_files_in(dir.path(), &socket);
        assert_eq!(files(), (false, false));
        // A log that recorded a warning is kept for the operator.
        std::fs::write(&log, "2026-01-01T00:00:00Z  WARN cannot reach x\n").unwrap();
        lock_run_file(&lock).map(drop).unwrap();
        remove_run_files_in(dir.path(), &socket);
        assert_eq!(files(), (false, true));
    }

    #[test]
    fn a_lock_taken_on_a_removed_file_is_taken_again_on_the_new_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.lock");
        let first = lock_run_file(&path).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let waiter_path = path.clone();
        let waiter = std::thread::spawn(move || {
            let lock = lock_run_file(&waiter_path).unwrap();
            let _ = tx.send(());
            still_at(&lock, &waiter_path)
        });
        assert!(rx.recv_timeout(Duration::from_millis(200)).is_err());
        // The proxy exits: removes the file while holding the lock, then lets go.
        std::fs::remove_file(&path).unwrap();
        drop(first);
        rx.recv_timeout(Duration::from_secs(5)).unwrap();
        assert!(
            waiter.join().unwrap(),
            "the waiter holds the file at the path"
        );
        assert!(path.exists());
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
            oci_runtime: Some("/usr/local/bin/runsc".into()),
        };
        let args = plan.to_args();
        assert_eq!(args[0], PROXY_SUBCOMMAND);
        let back = ProxyPlan::from_args(&args[1..]).unwrap();
        assert_eq!(back.socket, plan.socket);
        assert_eq!(back.task_root, plan.task_root);
        assert_eq!(back.protocol, plan.protocol);
        assert_eq!(back.namespace, plan.namespace);
        assert_eq!(back.events, plan.events);
        assert_eq!(back.oci_runtime, plan.oci_runtime);
        let plain = ProxyPlan {
            oci_runtime: None,
            ..plan
        };
        let back = ProxyPlan::from_args(&plain.to_args()[1..]).unwrap();
        assert_eq!(back.oci_runtime, None);
    }
}
