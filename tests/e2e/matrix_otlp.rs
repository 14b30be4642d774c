//! containerd 2.1.9 with OTLP tracing on sends W3C `traceparent` in the ttrpc metadata of its shim calls, and exports the same trace.
//!
//! The inner shim is the `containerd-shim` 0.12 test shim (`cargo build -p shimtrace-bootstrap-shim`),
//! which logs the metadata of each call it answers. It implements no `Start`, so `ctr run` fails
//! after `Create`; that is all this test needs.

use std::path::Path;
use std::time::Duration;

use shimtrace_bootstrap_shim::REQUEST_LOG_ENV;
use shimtrace_testkit::containerd::bootstrap::bootstrap_shim_binary;
use shimtrace_testkit::containerd::{ContainerdVersion, Options, TestContainerd};
use shimtrace_testkit::otlp::otlp_http_receiver;

/// `traceparent` values of each logged call, by method.
fn traceparents(log: &Path, method: &str) -> Vec<Option<String>> {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    text.lines()
        .map(|line| serde_json::from_str::<serde_json::Value>(line).expect("JSON line"))
        .filter(|entry| entry["method"] == method)
        .map(|entry| {
            entry["metadata"]["traceparent"][0]
                .as_str()
                .map(str::to_owned)
        })
        .collect()
}

fn run_create(options: Options, log: &Path) -> TestContainerd {
    let version = ContainerdVersion::find("2.1.9").expect("containerd 2.1.9 installed");
    let containerd = TestContainerd::start(&version, options.env(REQUEST_LOG_ENV, log))
        .expect("containerd 2.1.9 starts");
    let shim = bootstrap_shim_binary().expect("bootstrap shim built");
    let out = containerd
        .run_rm(
            "otlp-1",
            &["--runtime", shim.to_str().unwrap()],
            &["/bin/true"],
        )
        .expect("ctr run");
    assert!(
        out.stderr.contains("Start is not supported"),
        "the test shim answered Create and refused Start: {}",
        out.stderr
    );
    containerd
}

#[test]
fn traceparent_reaches_the_shim_and_matches_the_exported_trace() {
    let (_runtime, receiver) = otlp_http_receiver();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("requests.jsonl");
    let _containerd = run_create(Options::default().otlp(&receiver.endpoint()), &log);

    let creates = traceparents(&log, "Create");
    assert_eq!(creates.len(), 1, "one Create logged");
    let traceparent = creates[0].clone().expect("Create carried traceparent");
    let parts: Vec<&str> = traceparent.split('-').collect();
    assert_eq!(parts.len(), 4, "W3C traceparent: {traceparent}");
    assert_eq!((parts[0], parts[3]), ("00", "01"), "version 00, sampled");
    let (trace_id, parent_span_id) = (parts[1], parts[2]);
    assert_eq!((trace_id.len(), parent_span_id.len()), (32, 16), "hex ids");

    let received = &receiver.received;
    assert!(
        received.wait_for_span(Duration::from_secs(15), |s| s.trace_id == trace_id),
        "containerd exported the trace {trace_id} that it propagated"
    );
    assert!(
        received.wait_for_span(Duration::from_secs(15), |s| s.span_id == parent_span_id),
        "the parent span {parent_span_id} (containerd's ttrpc client span) was exported"
    );
}

#[test]
fn without_otlp_no_traceparent_is_sent() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("requests.jsonl");
    let _containerd = run_create(Options::default(), &log);
    assert_eq!(traceparents(&log, "Create"), vec![None]);
}
