//! containerd 2.x's OTLP trace export in tests: the environment that turns it on, and a receiver
//! for it built from the official OTLP definitions (`shimtrace_collector::testing`).

use shimtrace_collector::testing::OtlpReceiver;

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

/// An OTLP/HTTP receiver on 127.0.0.1 (random port); it serves on the returned runtime's workers
/// until that runtime is dropped.
pub fn otlp_http_receiver() -> (tokio::runtime::Runtime, OtlpReceiver) {
    let runtime = tokio::runtime::Runtime::new().expect("a tokio runtime for the OTLP receiver");
    let receiver = runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a loopback port for the OTLP receiver");
        OtlpReceiver::http(listener).expect("the OTLP receiver")
    });
    (runtime, receiver)
}
