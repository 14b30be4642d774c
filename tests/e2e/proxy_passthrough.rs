//! The proxy's forwarding against real ttrpc peers (ttrpc-rust's async server and client): the
//! Sandbox API and a bidirectional stream (Data frames, remote-closed flags) pass through
//! untouched, and each call is still one span.

use std::collections::HashMap;
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use containerd_shim_protos::sandbox_api::{PingRequest, PingResponse};
use containerd_shim_protos::sandbox_async::{create_sandbox, Sandbox, SandboxClient};
use shimtrace_shim::proxy::forward_connection;
use shimtrace_shim::spool::{SpanSink, SpoolConfig};
use shimtrace_shim::tap::{ShimLabels, TapContext};
use shimtrace_shim::trace_ctx::TraceRegistry;
use shimtrace_span::attr;
use shimtrace_span::spool::read_spool;
use ttrpc::r#async::{Server, Service, StreamHandler, StreamInner, TtrpcContext};

const STREAMING_SERVICE: &str = "containerd.services.streaming.v1.Streaming";

struct PingingSandbox;

#[async_trait]
impl Sandbox for PingingSandbox {
    async fn ping_sandbox(
        &self,
        _ctx: &TtrpcContext,
        req: PingRequest,
    ) -> ttrpc::Result<PingResponse> {
        assert_eq!(req.sandbox_id, "sb1");
        Ok(PingResponse::new())
    }
}

/// Echoes every message of a stream back, then ends it.
struct Echo;

#[async_trait]
impl StreamHandler for Echo {
    async fn handler(
        &self,
        _ctx: TtrpcContext,
        mut stream: StreamInner,
    ) -> ttrpc::Result<Option<ttrpc::Response>> {
        loop {
            match stream.recv().await {
                Ok(message) => stream.send(message).await?,
                Err(ttrpc::Error::Eof) | Err(ttrpc::Error::RemoteClosed) => break,
                Err(e) => return Err(e),
            }
        }
        Ok(None)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sandbox_calls_and_streams_pass_through_the_proxy() {
    let dir = tempfile::tempdir().unwrap();
    let upstream_path = dir.path().join("inner.sock");
    let proxy_path = dir.path().join("proxy.sock");
    let spool = dir.path().join("spool");

    // The "inner shim": a real ttrpc server with the Sandbox service and a streaming method.
    let mut services = create_sandbox(Arc::new(PingingSandbox));
    let mut streams: HashMap<String, Arc<dyn StreamHandler + Send + Sync>> = HashMap::new();
    streams.insert("Stream".into(), Arc::new(Echo));
    services.insert(
        STREAMING_SERVICE.into(),
        Service {
            methods: HashMap::new(),
            streams,
        },
    );
    let mut server = Server::new()
        .bind(&format!("unix://{}", upstream_path.display()))
        .unwrap()
        .register_service(services);
    server.start().await.unwrap();

    // The proxy: the same forwarding and tap the daemon uses.
    let ctx = Arc::new(TapContext {
        sink: SpanSink::start(
            &SpoolConfig {
                dir: spool.clone(),
                max_bytes: 1 << 20,
            },
            "test",
        )
        .unwrap(),
        traces: TraceRegistry::new(None),
        shim: Arc::new(ShimLabels {
            inner: "ttrpc-rust test server".into(),
            protocol: "json/v3".into(),
            namespace: "ns".into(),
        }),
        propagate: true,
        pending: Default::default(),
    });
    let listener = UnixListener::bind(&proxy_path).unwrap();
    let proxy_ctx = ctx.clone();
    let upstream = upstream_path.clone();
    std::thread::spawn(move || {
        for downstream in listener.incoming().flatten() {
            let up = UnixStream::connect(&upstream).unwrap();
            let ctx = proxy_ctx.clone();
            std::thread::spawn(move || forward_connection(downstream, up, ctx));
        }
    });

    let client = ttrpc::r#async::Client::connect(&format!("unix://{}", proxy_path.display()))
        .await
        .unwrap();
    let sandbox = SandboxClient::new(client.clone());
    let mut ping = PingRequest::new();
    ping.sandbox_id = "sb1".into();
    sandbox
        .ping_sandbox(ttrpc::context::with_timeout(5_000_000_000), &ping)
        .await
        .expect("PingSandbox through the proxy");

    let mut request = ttrpc::Request::new();
    request.service = STREAMING_SERVICE.into();
    request.method = "Stream".into();
    let mut stream = client.new_stream(request, true, true).await.unwrap();
    for message in [b"one".to_vec(), vec![0u8; 70_000], b"three".to_vec()] {
        stream.send(message.clone()).await.unwrap();
        let echoed = tokio::time::timeout(Duration::from_secs(5), stream.recv())
            .await
            .expect("echo within 5 s")
            .unwrap();
        assert_eq!(echoed, message, "Data frames pass byte for byte");
    }
    stream.close_send().await.unwrap();
    let end = tokio::time::timeout(Duration::from_secs(5), stream.recv())
        .await
        .expect("the stream ends");
    assert!(end.is_err(), "the server closed the stream: {end:?}");

    drop(stream);
    drop(sandbox);
    drop(client);
    let _ = server.shutdown().await;
    // Both connections' spans are written once the proxy sees the calls complete.
    let spans = {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let spans = read_spool(&spool).unwrap().spans;
            if spans.len() >= 2 || std::time::Instant::now() > deadline {
                break spans;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    let ping = spans
        .iter()
        .find(|s| s.name == "containerd.runtime.sandbox.v1.Sandbox/PingSandbox")
        .expect("PingSandbox span");
    assert_eq!(ping.attr_i64(attr::RPC_TTRPC_STATUS_CODE), Some(0));
    let streamed = spans
        .iter()
        .find(|s| s.name == format!("{STREAMING_SERVICE}/Stream"))
        .expect("stream span");
    assert!(streamed.end_time_unix_nano >= streamed.start_time_unix_nano);
    ctx.sink.shutdown(Duration::from_secs(2));
}
