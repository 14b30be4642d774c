//! Plays containerd 2.3's side of the shim bootstrap: `start` with a protobuf `BootstrapParams` on stdin,
//! a `BootstrapResult` read back from the combined stdout+stderr, then ttrpc `containerd.task.v3.Task`.
//!
//! No containerd 2.3 is packaged yet, so this stands in for it. It also serves containerd's ttrpc
//! `Events` endpoint (the address in `TTRPC_ADDRESS` and `BootstrapParams.containerd_ttrpc_address`)
//! and records every forwarded envelope, because shims built on `containerd-shim` connect there at
//! start-up and publish events there.
//!
//! ```no_run
//! use shimtrace_testkit::containerd::bootstrap::{BootstrapStart, Containerd23Peer};
//! let peer = Containerd23Peer::new()?;
//! let mut shim = peer.start_shim("/path/to/containerd-shim-bootstrap-v2".as_ref(), &BootstrapStart::new("ns", "id1"))?;
//! let connected = shim.connect()?;
//! shim.shutdown()?;
//! # Ok::<(), shimtrace_testkit::containerd::bootstrap::PeerError>(())
//! ```

use std::ffi::OsString;
use std::fs;
use std::io::Read;
use std::os::fd::OwnedFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use containerd_shim_protos::api::{
    ConnectRequest, ConnectResponse, CreateTaskRequest, CreateTaskResponse, Empty, ShutdownRequest,
    StateRequest, StateResponse,
};
use containerd_shim_protos::bootstrap_api::{
    BootstrapParams, BootstrapResult, Extension, LogLevel,
};
use containerd_shim_protos::events::task::TaskCreate;
use containerd_shim_protos::protobuf::well_known_types::any::Any;
use containerd_shim_protos::protobuf::{Enum, EnumOrUnknown, Message, MessageFull};
use containerd_shim_protos::shim::event::Envelope;
use containerd_shim_protos::shim::events::ForwardRequest;
use containerd_shim_protos::shim_async::{create_events, Client, Events, TaskClient};
use containerd_shim_protos::ttrpc;
use containerd_shim_protos::ttrpc::r#async::TtrpcContext;
use tempfile::TempDir;

use super::{
    is_zombie, kill_and_reap, kill_with_descendants, owned_processes, shim_socket_path, Ownership,
    INSTANCE_MARKER_ENV,
};

/// The containerd version string the peer claims in `BootstrapParams`.
pub const PEER_CONTAINERD_VERSION: &str = "2.3.0";
/// Limit for one `start` and one ttrpc call.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// What can go wrong while playing containerd 2.3.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    #[error("{action}: {source}")]
    Io {
        action: String,
        #[source]
        source: std::io::Error,
    },
    #[error("`{shim} start` did not exit within {timeout:?}; it was killed")]
    StartTimeout { shim: PathBuf, timeout: Duration },
    #[error("`{shim} start` failed with {status}; output: {output:?}")]
    StartFailed {
        shim: PathBuf,
        status: ExitStatus,
        output: String,
    },
    #[error("`start` output is not a protobuf BootstrapResult with an address (containerd 2.3 would fall back to JSON/plain): {output:?}")]
    NotBootstrapResult { output: String },
    #[error("ttrpc {method} to {address}: {source}")]
    Ttrpc {
        method: &'static str,
        address: String,
        #[source]
        source: ttrpc::Error,
    },
    #[error("shim server pid {pid} still alive {timeout:?} after Shutdown")]
    StillAlive { pid: u32, timeout: Duration },
    #[error("protobuf: {0}")]
    Protobuf(#[from] containerd_shim_protos::protobuf::Error),
}

fn io_err(action: impl Into<String>) -> impl FnOnce(std::io::Error) -> PeerError {
    let action = action.into();
    move |source| PeerError::Io { action, source }
}

/// What the peer sends in one `start`; [`BootstrapStart::new`] fills in containerd 2.3's defaults.
#[derive(Debug, Clone)]
pub struct BootstrapStart {
    /// `-namespace` and `BootstrapParams.namespace`.
    pub namespace: String,
    /// `-id` and `BootstrapParams.instance_id`.
    pub id: String,
    /// `BootstrapParams.log_level`; DEBUG or TRACE also adds `-debug` to argv, as containerd does.
    pub log_level: LogLevel,
    /// `BootstrapParams.socket_dir`, if set explicitly.
    pub socket_dir: Option<PathBuf>,
    /// With no explicit `socket_dir`: send the peer's private `<dir>/s` (true, the default) or
    /// nothing, so that the shim uses `/run/containerd/s` (false).
    pub private_socket_dir: bool,
    /// `BootstrapParams.extensions` (runtime options travel here).
    pub extensions: Vec<Any>,
    /// Extra environment for the shim process (on top of what containerd 2.3 sets).
    pub env: Vec<(OsString, OsString)>,
    /// Written to `<bundle>/config.json` before `start` when set; runc shims read it there for
    /// their grouping annotations (see [`MINIMAL_OCI_SPEC`]).
    pub config_json: Option<String>,
}

/// An OCI spec just complete enough for a runc shim's `start` (no container is created).
pub const MINIMAL_OCI_SPEC: &str = r#"{"ociVersion":"1.0.2","process":{"user":{"uid":0,"gid":0},"args":["/bin/true"],"cwd":"/"},"root":{"path":"rootfs"}}"#;

impl BootstrapStart {
    pub fn new(namespace: &str, id: &str) -> Self {
        BootstrapStart {
            namespace: namespace.to_owned(),
            id: id.to_owned(),
            log_level: LogLevel::LOG_LEVEL_INFO,
            socket_dir: None,
            private_socket_dir: true,
            extensions: Vec::new(),
            env: Vec::new(),
            config_json: None,
        }
    }
}

/// Records every `Events/Forward` envelope, like containerd's ttrpc events endpoint.
#[derive(Default, Clone)]
struct EventRecorder {
    envelopes: Arc<Mutex<Vec<Envelope>>>,
}

#[async_trait]
impl Events for EventRecorder {
    async fn forward(&self, _ctx: &TtrpcContext, req: ForwardRequest) -> ttrpc::Result<Empty> {
        if let Ok(mut envelopes) = self.envelopes.lock() {
            envelopes.push(req.envelope.unwrap_or_default());
        }
        Ok(Empty::default())
    }
}

/// containerd 2.3's side of the shim protocol, in a private temp dir:
/// `<dir>/c.sock` (`-address`, nobody listens), `<dir>/c.sock.ttrpc` (Events, recorded),
/// `<dir>/bundles/<ns>/<id>` (the shim's working directory), `<dir>/s` (socket dir).
/// Dropping it kills by pid every process that carries its marker environment or `-address`.
pub struct Containerd23Peer {
    runtime: Arc<tokio::runtime::Runtime>,
    dir: TempDir,
    events_server: Option<ttrpc::r#async::Server>,
    events: EventRecorder,
    /// `(namespace, id)` of every `start`, to remove default-dir sockets of killed shims.
    started: Mutex<Vec<(String, String)>>,
    stop_drains: Arc<AtomicBool>,
    drains: Mutex<Vec<thread::JoinHandle<()>>>,
}

impl Containerd23Peer {
    /// Creates the temp dir and starts the recorded ttrpc Events endpoint.
    pub fn new() -> Result<Self, PeerError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .map_err(io_err("building a tokio runtime"))?;
        let dir = tempfile::Builder::new()
            .prefix("c23-")
            .tempdir_in("/tmp")
            .map_err(io_err("creating the peer temp dir in /tmp"))?;
        fs::create_dir_all(dir.path().join("s")).map_err(io_err("creating the socket dir"))?;
        let events = EventRecorder::default();
        let ttrpc_address = format!("unix://{}", dir.path().join("c.sock.ttrpc").display());
        let service = create_events(Arc::new(events.clone()));
        let server = runtime.block_on(async {
            let mut server = ttrpc::r#async::Server::new()
                .bind(&ttrpc_address)?
                .register_service(service);
            server.start().await?;
            Ok::<_, ttrpc::Error>(server)
        });
        let server = server.map_err(|source| PeerError::Ttrpc {
            method: "Events server bind",
            address: ttrpc_address.clone(),
            source,
        })?;
        Ok(Containerd23Peer {
            runtime: Arc::new(runtime),
            dir,
            events_server: Some(server),
            events,
            started: Mutex::new(Vec::new()),
            stop_drains: Arc::new(AtomicBool::new(false)),
            drains: Mutex::new(Vec::new()),
        })
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// `-address` / `GRPC_ADDRESS` / `BootstrapParams.containerd_grpc_address` (nothing listens).
    pub fn grpc_address(&self) -> PathBuf {
        self.dir().join("c.sock")
    }

    /// `TTRPC_ADDRESS` / `BootstrapParams.containerd_ttrpc_address`: the recorded Events endpoint.
    pub fn ttrpc_address(&self) -> PathBuf {
        self.dir().join("c.sock.ttrpc")
    }

    /// The private socket dir sent as `BootstrapParams.socket_dir` by default.
    pub fn socket_dir(&self) -> PathBuf {
        self.dir().join("s")
    }

    /// The bundle (working directory of `start`) for `ns`/`id`.
    pub fn bundle_dir(&self, ns: &str, id: &str) -> PathBuf {
        self.dir().join("bundles").join(ns).join(id)
    }

    /// Every envelope forwarded to the Events endpoint so far.
    pub fn events(&self) -> Vec<Envelope> {
        self.events
            .envelopes
            .lock()
            .map(|e| e.clone())
            .unwrap_or_default()
    }

    /// Creates `<bundle>/log` as a FIFO and drains it, as containerd does: shims built on
    /// `containerd-shim` open it for their logger and exit if it is missing.
    fn drain_log_fifo(&self, bundle: &Path) -> Result<(), PeerError> {
        let path = bundle.join("log");
        if !path.exists() {
            nix::unistd::mkfifo(&path, nix::sys::stat::Mode::from_bits_truncate(0o600)).map_err(
                |e| PeerError::Io {
                    action: format!("creating the log FIFO {}", path.display()),
                    source: e.into(),
                },
            )?;
        }
        // O_RDWR: opening never blocks and the FIFO never reports EOF while we hold it.
        let mut fifo = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(nix::fcntl::OFlag::O_NONBLOCK.bits())
            .open(&path)
            .map_err(io_err(format!("opening {}", path.display())))?;
        let stop = self.stop_drains.clone();
        // What the shims log is read and dropped: a full FIFO would block them.
        let drain = thread::spawn(move || {
            let mut buffer = [0u8; 8192];
            while !stop.load(Ordering::SeqCst) {
                match fifo.read(&mut buffer) {
                    Ok(n) if n > 0 => {}
                    _ => thread::sleep(Duration::from_millis(20)),
                }
            }
        });
        if let Ok(mut drains) = self.drains.lock() {
            drains.push(drain);
        }
        Ok(())
    }

    /// Polls [`Self::events`] until one has `topic`, or `timeout` passes.
    pub fn wait_for_event(&self, topic: &str, timeout: Duration) -> Option<Envelope> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(found) = self.events().into_iter().find(|e| e.topic == topic) {
                return Some(found);
            }
            if Instant::now() >= deadline {
                return None;
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// The `BootstrapParams` containerd 2.3 would send for `start`.
    pub fn bootstrap_params(&self, start: &BootstrapStart) -> BootstrapParams {
        let socket_dir = start
            .socket_dir
            .clone()
            .or_else(|| start.private_socket_dir.then(|| self.socket_dir()));
        BootstrapParams {
            instance_id: start.id.clone(),
            namespace: start.namespace.clone(),
            log_level: EnumOrUnknown::new(start.log_level),
            containerd_version: PEER_CONTAINERD_VERSION.to_owned(),
            containerd_ttrpc_address: self.ttrpc_address().display().to_string(),
            containerd_grpc_address: self.grpc_address().display().to_string(),
            containerd_binary: "/usr/bin/containerd".to_owned(),
            extensions: start
                .extensions
                .iter()
                .map(|any| Extension {
                    value: Some(any.clone()).into(),
                    ..Default::default()
                })
                .collect(),
            socket_dir: socket_dir.map(|d| d.display().to_string()),
            ..Default::default()
        }
    }

    /// Runs `<shim> -namespace NS -address A -publish-binary B -id ID [-debug] start` in the bundle
    /// dir with containerd 2.3's environment and a protobuf `BootstrapParams` on stdin, parses the
    /// protobuf `BootstrapResult` from the combined stdout+stderr (as containerd reads it) and
    /// connects a ttrpc client to the returned address.
    pub fn start_shim(
        &self,
        shim: &Path,
        start: &BootstrapStart,
    ) -> Result<StartedShim, PeerError> {
        let params = self.bootstrap_params(start);
        let output = self.run_start(shim, start, &params.write_to_bytes()?)?;
        let result = match BootstrapResult::parse_from_bytes(&output) {
            Ok(result) if !result.address.is_empty() => result,
            _ => {
                return Err(PeerError::NotBootstrapResult {
                    output: String::from_utf8_lossy(&output).into_owned(),
                })
            }
        };
        let address = result.address.clone();
        // Like containerd's dialer, retry until the socket exists: some shims (the Rust runc
        // shim) reply before their server has bound it.
        let deadline = Instant::now() + Duration::from_secs(10);
        let client = loop {
            match self.runtime.block_on(Client::connect(&address)) {
                Ok(client) => break client,
                Err(source) if Instant::now() >= deadline => {
                    return Err(PeerError::Ttrpc {
                        method: "connect",
                        address: address.clone(),
                        source,
                    })
                }
                Err(_) => thread::sleep(Duration::from_millis(10)),
            }
        };
        Ok(StartedShim {
            runtime: self.runtime.clone(),
            params,
            result,
            output,
            bundle: self.bundle_dir(&start.namespace, &start.id),
            namespace: start.namespace.clone(),
            id: start.id.clone(),
            client: TaskClient::new(client),
            server_pid: None,
        })
    }

    /// Like containerd ≤ 2.2: runs `start` with an empty stdin and returns the raw combined
    /// output (a shim on `containerd-shim` 0.12 answers JSON `{"version":3,…}`).
    pub fn start_shim_legacy(
        &self,
        shim: &Path,
        start: &BootstrapStart,
    ) -> Result<Vec<u8>, PeerError> {
        self.run_start(shim, start, &[])
    }

    fn run_start(
        &self,
        shim: &Path,
        start: &BootstrapStart,
        stdin_bytes: &[u8],
    ) -> Result<Vec<u8>, PeerError> {
        if let Ok(mut started) = self.started.lock() {
            started.push((start.namespace.clone(), start.id.clone()));
        }
        let bundle = self.bundle_dir(&start.namespace, &start.id);
        fs::create_dir_all(&bundle).map_err(io_err(format!("creating {}", bundle.display())))?;
        self.drain_log_fifo(&bundle)?;
        if let Some(spec) = &start.config_json {
            let path = bundle.join("config.json");
            fs::write(&path, spec).map_err(io_err(format!("writing {}", path.display())))?;
        }
        // containerd reads `start` output with CombinedOutput: one pipe for stdout and stderr.
        let (reader, writer) =
            nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| PeerError::Io {
                action: "creating the output pipe".into(),
                source: e.into(),
            })?;
        let writer_dup: OwnedFd = writer
            .try_clone()
            .map_err(io_err("duplicating the output pipe"))?;
        let mut command = Command::new(shim);
        command
            .args(["-namespace", &start.namespace])
            .arg("-address")
            .arg(self.grpc_address())
            .args(["-publish-binary", "/usr/bin/containerd", "-id", &start.id]);
        if start.log_level.value() <= LogLevel::LOG_LEVEL_DEBUG.value() {
            command.arg("-debug");
        }
        command
            .arg("start")
            .current_dir(&bundle)
            .env("TTRPC_ADDRESS", self.ttrpc_address())
            .env("GRPC_ADDRESS", self.grpc_address())
            .env("NAMESPACE", &start.namespace)
            // containerd 2.1.9 was seen sending 2 here although it accepts version 3 replies.
            .env("MAX_SHIM_VERSION", "2")
            .env("GOMAXPROCS", "2")
            .env(INSTANCE_MARKER_ENV, self.dir())
            .envs(start.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::piped())
            .stdout(Stdio::from(writer))
            .stderr(Stdio::from(writer_dup));
        let mut child = command
            .spawn()
            .map_err(io_err(format!("running {} start", shim.display())))?;
        // Our copies of the write end are gone with `command`; EOF comes when the shim (and any
        // daemon that wrongly inherited the pipe) closes it.
        drop(command);
        let mut stdin = child.stdin.take();
        let payload = stdin_bytes.to_vec();
        let feeder = thread::spawn(move || {
            if let Some(stdin) = stdin.as_mut() {
                let _ = std::io::Write::write_all(stdin, &payload);
            }
            drop(stdin);
        });
        let collector = thread::spawn(move || {
            let mut output = Vec::new();
            let _ = fs::File::from(reader).read_to_end(&mut output);
            output
        });
        let deadline = Instant::now() + CALL_TIMEOUT;
        let status = loop {
            if let Some(status) = child
                .try_wait()
                .map_err(io_err("waiting for the shim's start"))?
            {
                break status;
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(PeerError::StartTimeout {
                    shim: shim.to_owned(),
                    timeout: CALL_TIMEOUT,
                });
            }
            thread::sleep(Duration::from_millis(5));
        };
        let _ = feeder.join();
        // Like CombinedOutput, wait for the pipe to close: a daemon that kept it open hangs containerd.
        let output = wait_thread(collector, deadline).ok_or_else(|| PeerError::StartTimeout {
            shim: shim.to_owned(),
            timeout: CALL_TIMEOUT,
        })?;
        if !status.success() {
            return Err(PeerError::StartFailed {
                shim: shim.to_owned(),
                status,
                output: String::from_utf8_lossy(&output).into_owned(),
            });
        }
        Ok(output)
    }
}

fn wait_thread<T>(handle: thread::JoinHandle<T>, deadline: Instant) -> Option<T> {
    while !handle.is_finished() {
        if Instant::now() >= deadline {
            return None;
        }
        thread::sleep(Duration::from_millis(5));
    }
    handle.join().ok()
}

impl Drop for Containerd23Peer {
    fn drop(&mut self) {
        if let Some(mut server) = self.events_server.take() {
            let _ = self.runtime.block_on(server.shutdown());
        }
        let ownership = Ownership {
            address: self.grpc_address().into_os_string().into_encoded_bytes(),
            environ: vec![format!("{INSTANCE_MARKER_ENV}={}", self.dir().display()).into_bytes()],
            dir: self.dir().as_os_str().as_encoded_bytes().to_vec(),
        };
        // The shims go with their descendants (a container a test left running), as the
        // containerd and Docker harnesses end theirs.
        kill_with_descendants(&owned_processes(&ownership));
        self.stop_drains.store(true, Ordering::SeqCst);
        if let Ok(mut drains) = self.drains.lock() {
            for drain in drains.drain(..) {
                let _ = drain.join();
            }
        }
        // Shims that got no socket_dir put their socket in /run/containerd/s, named after our address.
        if let Ok(started) = self.started.lock() {
            for (ns, id) in started.iter() {
                let _ = fs::remove_file(shim_socket_path(&self.grpc_address(), ns, id));
            }
        }
    }
}

/// A shim started by [`Containerd23Peer::start_shim`], with a ttrpc client to its address.
pub struct StartedShim {
    runtime: Arc<tokio::runtime::Runtime>,
    /// What was sent on stdin.
    pub params: BootstrapParams,
    /// What the shim replied.
    pub result: BootstrapResult,
    /// The raw combined stdout+stderr of `start`.
    pub output: Vec<u8>,
    /// The bundle dir `start` ran in.
    pub bundle: PathBuf,
    namespace: String,
    id: String,
    client: TaskClient,
    server_pid: Option<u32>,
}

impl StartedShim {
    /// The address from `BootstrapResult`.
    pub fn address(&self) -> &str {
        &self.result.address
    }

    fn context(&self) -> ttrpc::context::Context {
        let mut ctx = ttrpc::context::with_duration(CALL_TIMEOUT);
        // containerd sends its namespace on every shim call.
        ctx.add(
            "containerd-namespace-ttrpc".to_owned(),
            self.namespace.clone(),
        );
        ctx
    }

    fn ttrpc_err(&self, method: &'static str) -> impl FnOnce(ttrpc::Error) -> PeerError {
        let address = self.result.address.clone();
        move |source| PeerError::Ttrpc {
            method,
            address,
            source,
        }
    }

    /// `containerd.task.v3.Task/Connect`; remembers the reported `shim_pid` for cleanup.
    pub fn connect(&mut self) -> Result<ConnectResponse, PeerError> {
        let req = ConnectRequest {
            id: self.id.clone(),
            ..Default::default()
        };
        let response = self
            .runtime
            .block_on(self.client.connect(self.context(), &req))
            .map_err(self.ttrpc_err("containerd.task.v3.Task/Connect"))?;
        if response.shim_pid != 0 {
            self.server_pid = Some(response.shim_pid);
        }
        Ok(response)
    }

    /// `containerd.task.v3.Task/State` for this shim's id.
    pub fn state(&self) -> Result<StateResponse, PeerError> {
        let req = StateRequest {
            id: self.id.clone(),
            ..Default::default()
        };
        self.runtime
            .block_on(self.client.state(self.context(), &req))
            .map_err(self.ttrpc_err("containerd.task.v3.Task/State"))
    }

    /// `containerd.task.v3.Task/Create` for this shim's id with the bundle dir (no rootfs).
    pub fn create(&self) -> Result<CreateTaskResponse, PeerError> {
        let req = CreateTaskRequest {
            id: self.id.clone(),
            bundle: self.bundle.display().to_string(),
            ..Default::default()
        };
        self.runtime
            .block_on(self.client.create(self.context(), &req))
            .map_err(self.ttrpc_err("containerd.task.v3.Task/Create"))
    }

    /// `containerd.task.v3.Task/Shutdown`, then waits until the server pid learned from
    /// [`Self::connect`] has exited (if it was learned).
    pub fn shutdown(&mut self) -> Result<(), PeerError> {
        let req = ShutdownRequest {
            id: self.id.clone(),
            now: true,
            ..Default::default()
        };
        // The server may close the connection before its reply arrives; both mean it is going.
        let _ = self
            .runtime
            .block_on(self.client.shutdown(self.context(), &req));
        if let Some(pid) = self.server_pid {
            let timeout = Duration::from_secs(10);
            let deadline = Instant::now() + timeout;
            while !is_zombie(pid) {
                if Instant::now() >= deadline {
                    return Err(PeerError::StillAlive { pid, timeout });
                }
                thread::sleep(Duration::from_millis(10));
            }
            self.server_pid = None;
        }
        Ok(())
    }

    /// The server pid reported by `Connect`, while it is believed alive.
    pub fn server_pid(&self) -> Option<u32> {
        self.server_pid
    }
}

impl Drop for StartedShim {
    fn drop(&mut self) {
        if let Some(pid) = self.server_pid.take() {
            kill_and_reap(pid);
        }
    }
}

/// Decodes the `TaskCreate` inside an envelope, if that is what it carries.
pub fn decode_task_create(envelope: &Envelope) -> Option<TaskCreate> {
    let any = envelope.event.as_ref()?;
    let name = any.type_url.rsplit('/').next()?;
    (name == TaskCreate::descriptor().full_name())
        .then(|| TaskCreate::parse_from_bytes(&any.value).ok())
        .flatten()
}

/// Path of the `containerd-shim-bootstrap-v2` binary of package `shimtrace-bootstrap-shim`, in the
/// same target dir as the running test (`target/<profile>/`). Build it first with
/// `cargo build -p shimtrace-bootstrap-shim` (or run the tests with `--workspace`).
pub fn bootstrap_shim_binary() -> Result<PathBuf, PeerError> {
    let exe = std::env::current_exe().map_err(io_err("locating the test executable"))?;
    // Test executables live in target/<profile>/deps/.
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let binary = profile_dir.join("containerd-shim-bootstrap-v2");
    if binary.is_file() {
        Ok(binary)
    } else {
        Err(PeerError::Io {
            action: format!(
                "{} is missing: run `cargo build -p shimtrace-bootstrap-shim` with the same target dir and profile",
                binary.display()
            ),
            source: std::io::ErrorKind::NotFound.into(),
        })
    }
}
