//! The whole pipeline on a real containerd: containers run through the wrapper, `shimtrace serve`
//! ingests their spans as they are spooled and exports them over OTLP/gRPC to a real receiver,
//! and `shimtrace report` shows their cold-start phases.

use std::process::Stdio;
use std::time::Duration;

use crate::element_where;
use shimtrace_testkit::cli::{output_ok, shimtrace, Daemon};
use shimtrace_testkit::otlp::OtlpReceiver;
use shimtrace_testkit::traced::{wait_for, Traced};

#[test]
fn containers_through_the_wrapper_reach_the_report_and_the_otlp_receiver() {
    let traced = Traced::start("1.6.20").expect("traced containerd");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let receiver = runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        OtlpReceiver::grpc(listener).unwrap()
    });
    let work = tempfile::tempdir().unwrap();
    let db = work.path().join("shimtrace.db");
    std::fs::create_dir_all(&traced.spool).unwrap();
    // Killed and reaped by pid when the test ends, passing or not.
    let _serve = Daemon::spawn(
        shimtrace()
            .args(["serve", "--spool"])
            .arg(&traced.spool)
            .arg("--db")
            .arg(&db)
            .args([
                "--otlp-protocol",
                "grpc",
                "--otlp-endpoint",
                &receiver.endpoint(),
            ])
            .env_remove("OTEL_SDK_DISABLED")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit()),
    );

    let ids = ["pipe1", "pipe2", "pipe3"];
    for id in ids {
        traced.run_echo(id, id);
    }

    // The receiver gets every container's Create, Start and Delete, under the container's trace.
    let exported = wait_for(Duration::from_secs(60), || {
        let spans = receiver.received.spans();
        ids.iter()
            .all(|id| {
                ["Create", "Start", "Delete"].iter().all(|m| {
                    spans.iter().any(|s| {
                        s.attributes
                            .get("containerd.container.id")
                            .map(String::as_str)
                            == Some(*id)
                            && s.name.ends_with(&format!(".Task/{m}"))
                    })
                })
            })
            .then_some(spans)
    })
    .expect("the OTLP receiver got every container's calls");
    // The store is the reference: serve compacts spool files once they are ingested.
    let stored = output_ok(shimtrace().args(["traces", "--json", "--db"]).arg(&db));
    let stored: Vec<shimtrace_span::SpanRecord> =
        serde_json::from_slice(&stored.stdout).expect("traces --json is an array of spans");
    for span in exported.iter().filter(|s| s.name.ends_with(".Task/Create")) {
        let original = stored
            .iter()
            .find(|l| l.span_id.to_hex() == span.span_id)
            .expect("exported span is in the store");
        assert_eq!(original.trace_id.to_hex(), span.trace_id);
        assert_eq!(original.start_time_unix_nano, span.start_time_unix_nano);
        assert_eq!(original.end_time_unix_nano, span.end_time_unix_nano);
        assert_eq!(
            original.parent_span_id.map(|p| p.to_hex()),
            span.parent_span_id
        );
    }

    let report = output_ok(
        shimtrace()
            .args(["report", "--format", "json", "--db"])
            .arg(&db),
    );
    let report: serde_json::Value = serde_json::from_slice(&report.stdout).expect("report JSON");
    // Grouped by the runtime that ran the containers (runc), not the shim in front of it.
    let runc = element_where(&report["runtimes"], "runtime", "runc");
    assert!(runc["traces"].as_u64().unwrap() >= 3, "{runc}");
    for phase in ["wrapper_start", "create", "start", "delete"] {
        let stats = element_where(&runc["phases"], "phase", phase);
        assert!(stats["n"].as_u64().unwrap() >= 3, "{phase}: {stats}");
        let p50 = stats["p50_ns"].as_u64().unwrap();
        assert!(
            p50 > 0 && p50 <= stats["max_ns"].as_u64().unwrap(),
            "{phase}: {stats}"
        );
    }
}
