//! ttrpc call latency: the same client calls a running container's inner shim directly and through
//! its proxy, interleaved call by call, so the only difference between the two samples is the proxy.

use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use containerd_shim_protos::api::{ConnectRequest, ConnectResponse, StateRequest, StateResponse};
use protobuf::Message;
use serde::Serialize;
use shimtrace_collector::stats::Summary;
use shimtrace_testkit::traced::pids_with_cmdline;

use crate::BenchError;

/// The shim task API containerd 1.6's runc shim serves.
pub const TASK_SERVICE: &str = "containerd.task.v2.Task";
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// Where a running container's calls go: the proxy containerd talks to and the inner shim behind it.
#[derive(Debug, Clone, Serialize)]
pub struct Endpoints {
    pub proxy_socket: PathBuf,
    pub proxy_pid: u32,
    pub inner_socket: PathBuf,
}

impl Endpoints {
    /// Finds them from a bundle: its `address` file names the proxy (the wrapper rewrote it), and
    /// the proxy's `--upstream` argument names the inner shim.
    pub fn of_bundle(bundle: &Path) -> Result<Endpoints, BenchError> {
        let address_file = bundle.join("address");
        let address = std::fs::read_to_string(&address_file).map_err(|e| {
            BenchError::Setup(format!(
                "cannot read {}: {e} (was the container started through the wrapper?)",
                address_file.display()
            ))
        })?;
        let proxy_socket = PathBuf::from(address.trim().trim_start_matches("unix://"));
        let socket_arg = proxy_socket.display().to_string();
        let pids = pids_with_cmdline(&["proxy", "--socket", &socket_arg]);
        let [proxy_pid] = pids[..] else {
            return Err(BenchError::Setup(format!(
                "expected one proxy serving {socket_arg}, found pids {pids:?}: the bundle's address \
                 does not name a live shimtrace proxy"
            )));
        };
        let cmdline = std::fs::read(format!("/proc/{proxy_pid}/cmdline")).map_err(|e| {
            BenchError::Setup(format!("cannot read proxy {proxy_pid}'s cmdline: {e}"))
        })?;
        let argv: Vec<String> = cmdline
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        let inner_socket = argv
            .iter()
            .position(|a| a == "--upstream")
            .and_then(|i| argv.get(i + 1))
            .map(PathBuf::from)
            .ok_or_else(|| {
                BenchError::Setup(format!("proxy {proxy_pid} has no --upstream argument"))
            })?;
        Ok(Endpoints {
            proxy_socket,
            proxy_pid,
            inner_socket,
        })
    }
}

/// The two unary calls measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Method {
    State,
    Connect,
}

impl Method {
    pub const ALL: [Method; 2] = [Method::State, Method::Connect];

    pub fn name(self) -> &'static str {
        match self {
            Method::State => "State",
            Method::Connect => "Connect",
        }
    }
}

/// A ttrpc client of one shim socket that sends real task requests for one container.
pub struct TaskClient {
    client: ttrpc::Client,
    state: ttrpc::Request,
    connect: ttrpc::Request,
}

fn request(method: &str, payload: Vec<u8>) -> ttrpc::Request {
    let mut request = ttrpc::Request::new();
    request.service = TASK_SERVICE.into();
    request.method = method.into();
    request.payload = payload;
    request.timeout_nano = CALL_TIMEOUT.as_nanos() as i64;
    request
}

fn encode(message: &impl Message, what: &str) -> Result<Vec<u8>, BenchError> {
    message
        .write_to_bytes()
        .map_err(|e| BenchError::Setup(format!("cannot encode {what}: {e}")))
}

impl TaskClient {
    pub fn connect(socket: &Path, container_id: &str) -> Result<TaskClient, BenchError> {
        let address = format!("unix://{}", socket.display());
        let client = ttrpc::Client::connect(&address).map_err(|source| BenchError::Ttrpc {
            what: format!("connecting to {address}"),
            source,
        })?;
        let mut state = StateRequest::new();
        state.id = container_id.into();
        let mut connect = ConnectRequest::new();
        connect.id = container_id.into();
        Ok(TaskClient {
            client,
            state: request("State", encode(&state, "StateRequest")?),
            connect: request("Connect", encode(&connect, "ConnectRequest")?),
        })
    }

    /// One call; the response payload (already checked to carry an OK status).
    pub fn call(&self, method: Method) -> Result<Vec<u8>, BenchError> {
        let request = match method {
            Method::State => self.state.clone(),
            Method::Connect => self.connect.clone(),
        };
        self.client
            .request(request)
            .map(|r| r.payload)
            .map_err(|source| BenchError::Ttrpc {
                what: format!("{TASK_SERVICE}/{}", method.name()),
                source,
            })
    }

    /// One call, timed from before the request is encoded to after the response is decoded.
    pub fn timed(&self, method: Method) -> Result<Duration, BenchError> {
        let start = Instant::now();
        self.call(method)?;
        Ok(start.elapsed())
    }

    /// The container's pid and the shim's pid as this endpoint reports them (State, Connect).
    pub fn identity(&self) -> Result<(u32, u32), BenchError> {
        let decode = |e: protobuf::Error| BenchError::Setup(format!("undecodable response: {e}"));
        let state = StateResponse::parse_from_bytes(&self.call(Method::State)?).map_err(decode)?;
        let connect =
            ConnectResponse::parse_from_bytes(&self.call(Method::Connect)?).map_err(decode)?;
        Ok((state.pid, connect.shim_pid))
    }
}

/// A forwarder of the proxy's shape (one thread per direction, whole frames through the shim's own
/// [`shimtrace_shim::frame::pump`]) without tap or spool, in this process: the floor that any proxy
/// of that shape pays, so the proxy's figures split into "the extra hop" and "the tracing".
pub struct BareForwarder {
    socket: PathBuf,
    stop: Arc<AtomicBool>,
    _dir: tempfile::TempDir,
}

impl BareForwarder {
    pub fn start(upstream: &Path) -> Result<BareForwarder, BenchError> {
        let dir = tempfile::Builder::new()
            .prefix("shimtrace-bench-fwd-")
            .tempdir()
            .map_err(|e| BenchError::Setup(format!("cannot create a temp dir: {e}")))?;
        let socket = dir.path().join("fwd.sock");
        let listener = UnixListener::bind(&socket)
            .map_err(|e| BenchError::Setup(format!("cannot bind {}: {e}", socket.display())))?;
        let stop = Arc::new(AtomicBool::new(false));
        let (upstream, stopping) = (upstream.to_path_buf(), stop.clone());
        std::thread::spawn(move || {
            for downstream in listener.incoming() {
                if stopping.load(Ordering::Relaxed) {
                    return;
                }
                let (Ok(downstream), Ok(upstream)) = (downstream, UnixStream::connect(&upstream))
                else {
                    continue;
                };
                forward(downstream, upstream);
            }
        });
        Ok(BareForwarder {
            socket,
            stop,
            _dir: dir,
        })
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }
}

impl Drop for BareForwarder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wakes the accept loop so it sees the flag and ends.
        let _ = UnixStream::connect(&self.socket);
    }
}

fn forward(downstream: UnixStream, upstream: UnixStream) {
    let (Ok(down_read), Ok(up_write)) = (downstream.try_clone(), upstream.try_clone()) else {
        return;
    };
    std::thread::spawn(move || {
        let _ = shimtrace_shim::frame::pump(&down_read, &up_write, || 0, |_, _| {});
        let _ = down_read.shutdown(std::net::Shutdown::Both);
        let _ = up_write.shutdown(std::net::Shutdown::Both);
    });
    std::thread::spawn(move || {
        let _ = shimtrace_shim::frame::pump(&upstream, &downstream, || 0, |_, _| {});
        let _ = upstream.shutdown(std::net::Shutdown::Both);
        let _ = downstream.shutdown(std::net::Shutdown::Both);
    });
}

/// Latency percentiles of one method, direct, through the proxy and through the bare forwarder
/// (microseconds).
#[derive(Debug, Clone, Serialize)]
pub struct MethodLatency {
    pub method: Method,
    pub direct_us: Summary,
    pub proxy_us: Summary,
    pub bare_forwarder_us: Summary,
    pub p50_ratio: f64,
    pub p90_ratio: f64,
    pub p99_ratio: f64,
    pub bare_p50_ratio: f64,
    pub bare_p99_ratio: f64,
}

impl MethodLatency {
    fn of(method: Method, samples: &[Vec<f64>; 3]) -> Result<MethodLatency, BenchError> {
        let summary = |v: &[f64]| {
            Summary::of(v).ok_or_else(|| BenchError::Setup("no calls were measured".into()))
        };
        let (direct_us, proxy_us, bare_forwarder_us) = (
            summary(&samples[0])?,
            summary(&samples[1])?,
            summary(&samples[2])?,
        );
        Ok(MethodLatency {
            method,
            p50_ratio: proxy_us.p50 / direct_us.p50,
            p90_ratio: proxy_us.p90 / direct_us.p90,
            p99_ratio: proxy_us.p99 / direct_us.p99,
            bare_p50_ratio: bare_forwarder_us.p50 / direct_us.p50,
            bare_p99_ratio: bare_forwarder_us.p99 / direct_us.p99,
            direct_us,
            proxy_us,
            bare_forwarder_us,
        })
    }
}

/// The paths measured, as `[direct, proxy, bare forwarder]` clients of the same inner shim.
pub type Paths<'a> = [&'a TaskClient; 3];

/// Runs `calls` calls of each method on each path after `warmup` untimed ones. Each call of a
/// method goes to the three paths back to back, in an order that rotates from call to call, so
/// drift and any first-call effect fall on every path alike. `after_proxy_call` sees the running
/// count of proxy calls.
pub fn measure(
    paths: Paths<'_>,
    calls: usize,
    warmup: usize,
    mut after_proxy_call: impl FnMut(usize),
) -> Result<Vec<MethodLatency>, BenchError> {
    for _ in 0..warmup {
        for method in Method::ALL {
            for path in paths {
                path.call(method)?;
            }
        }
    }
    let mut samples: Vec<[Vec<f64>; 3]> = Method::ALL
        .iter()
        .map(|_| std::array::from_fn(|_| Vec::with_capacity(calls)))
        .collect();
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    let mut proxy_calls = 0;
    for round in 0..calls {
        for (i, method) in Method::ALL.into_iter().enumerate() {
            for k in 0..3 {
                let path = (round + i + k) % 3;
                let elapsed = paths[path].timed(method)?;
                samples[i][path].push(us(elapsed));
            }
            proxy_calls += 1;
            after_proxy_call(proxy_calls);
        }
    }
    Method::ALL
        .into_iter()
        .zip(samples)
        .map(|(method, s)| MethodLatency::of(method, &s))
        .collect()
}
