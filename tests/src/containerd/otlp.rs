//! A minimal OTLP/HTTP trace receiver for tests: accepts `POST /v1/traces` and keeps each raw protobuf body.
//!
//! containerd 2.x exports its spans here when started with [`otlp_env`] (see
//! [`super::Options::otlp`]). Bodies are kept undecoded; [`OtlpHttpSink::contains`] looks for raw
//! bytes such as a 16-byte trace id, which is enough to tie a shim's `traceparent` to containerd's
//! exported spans.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// The environment that makes containerd 2.x export traces to `endpoint` quickly and
/// propagate `traceparent` to shims: OTLP over HTTP/protobuf, every trace sampled, batches
/// flushed every 200 ms (the Go SDK default of 5 s outlives most tests).
pub fn otlp_env(endpoint: &str) -> Vec<(String, String)> {
    [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
        ("OTEL_SERVICE_NAME", "containerd"),
        ("OTEL_TRACES_SAMPLER", "always_on"),
        ("OTEL_BSP_SCHEDULE_DELAY", "200"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect()
}

/// Receives OTLP/HTTP exports on 127.0.0.1 (random port) until dropped.
pub struct OtlpHttpSink {
    address: SocketAddr,
    bodies: Arc<Mutex<Vec<Vec<u8>>>>,
    stop: Arc<AtomicBool>,
    acceptor: Option<thread::JoinHandle<()>>,
}

impl OtlpHttpSink {
    pub fn start() -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let address = listener.local_addr()?;
        let bodies = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let acceptor = {
            let bodies = bodies.clone();
            let stop = stop.clone();
            thread::spawn(move || {
                for stream in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    if let Ok(stream) = stream {
                        let bodies = bodies.clone();
                        thread::spawn(move || serve_connection(stream, &bodies));
                    }
                }
            })
        };
        Ok(OtlpHttpSink {
            address,
            bodies,
            stop,
            acceptor: Some(acceptor),
        })
    }

    /// `http://127.0.0.1:<port>`, the value for `OTEL_EXPORTER_OTLP_ENDPOINT`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.address)
    }

    /// Raw `ExportTraceServiceRequest` bodies received so far.
    pub fn bodies(&self) -> Vec<Vec<u8>> {
        self.bodies.lock().map(|b| b.clone()).unwrap_or_default()
    }

    /// Whether any received body contains `needle` (e.g. a raw trace id).
    pub fn contains(&self, needle: &[u8]) -> bool {
        !needle.is_empty()
            && self
                .bodies()
                .iter()
                .any(|body| body.windows(needle.len()).any(|w| w == needle))
    }

    /// Polls [`Self::contains`] until true or `timeout` passes.
    pub fn wait_for(&self, needle: &[u8], timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while !self.contains(needle) {
            if Instant::now() >= deadline {
                return false;
            }
            thread::sleep(Duration::from_millis(20));
        }
        true
    }
}

impl Drop for OtlpHttpSink {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the blocking accept so the thread sees the flag.
        let _ = TcpStream::connect(self.address);
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
    }
}

/// Serves HTTP/1.1 requests on one (keep-alive) connection: stores POST bodies, answers 200.
fn serve_connection(stream: TcpStream, bodies: &Mutex<Vec<Vec<u8>>>) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
    let Ok(mut writer) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(stream);
    loop {
        let mut request_line = String::new();
        match reader.read_line(&mut request_line) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let mut content_length = 0usize;
        loop {
            let mut header = String::new();
            if reader.read_line(&mut header).unwrap_or(0) == 0 {
                return;
            }
            let header = header.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':') {
                if name.eq_ignore_ascii_case("content-length") {
                    content_length = value.trim().parse().unwrap_or(0);
                }
            }
        }
        let mut body = vec![0; content_length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        if request_line.starts_with("POST") {
            if let Ok(mut bodies) = bodies.lock() {
                bodies.push(body);
            }
        }
        let reply =
            "HTTP/1.1 200 OK\r\nContent-Type: application/x-protobuf\r\nContent-Length: 0\r\n\r\n";
        if writer.write_all(reply.as_bytes()).is_err() {
            return;
        }
    }
}
