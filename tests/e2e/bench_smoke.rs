//! The quick bench, end to end: it runs against a real containerd, produces every figure and writes
//! JSON that parses. The figures' targets are not checked here (noise must not fail CI). And the
//! collector's own `shimtrace bench` on a small synthetic spool.

use std::process::Command;

use shimtrace_bench::figures::{Figure, FIGURE_KEYS};

#[test]
fn quick_bench_produces_every_figure() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("bench.json");
    let run = Command::new(shimtrace_testkit::traced::built_binary("shimtrace-bench"))
        .arg("--quick")
        .arg("--out")
        .arg(&out)
        .env(
            "SHIMTRACE_WRAPPER_BIN",
            shimtrace_testkit::traced::wrapper_binary(),
        )
        .output()
        .expect("running shimtrace-bench");
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success(),
        "shimtrace-bench --quick failed: {}\n{stdout}\n{}",
        run.status,
        String::from_utf8_lossy(&run.stderr)
    );

    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&out).expect("the JSON file")).expect("valid JSON");
    let figures: Vec<Figure> =
        serde_json::from_value(json["figures"].clone()).expect("figures parse");
    let keys: Vec<&str> = figures.iter().map(|f| f.key.as_str()).collect();
    assert_eq!(keys, FIGURE_KEYS, "every figure, in order");
    for figure in &figures {
        assert!(
            figure.value.is_finite(),
            "{} is {}",
            figure.key,
            figure.value
        );
        assert_eq!(
            figure.met.is_some(),
            figure.target.is_some(),
            "{}: a verdict exactly when there is a target",
            figure.key
        );
        assert!(
            stdout.contains(&figure.label),
            "table row for {}:\n{stdout}",
            figure.key
        );
    }
    // Every phase ran, in order, and its time is in the report.
    let phases: Vec<&str> = json["phase_seconds"]
        .as_array()
        .expect("phase_seconds")
        .iter()
        .map(|p| p[0].as_str().expect("a phase's name"))
        .collect();
    assert_eq!(
        phases,
        [
            "setup",
            "latency",
            "grouped containers",
            "cold starts (ctr)",
            "cold starts (API)",
            "parallel",
            "cleanup",
            "collector"
        ]
    );
    // The sizes asked for were the sizes measured.
    assert_eq!(json["latency"][0]["direct_us"]["n"], 500);
    assert_eq!(json["latency"][1]["proxy_us"]["n"], 500);
    assert_eq!(json["cold_ctr"]["pairs"], 3);
    assert_eq!(json["proxy_memory"]["containers"], 10);
    assert_eq!(json["collector"]["generated"]["containers"], 1000);
    // The proxy really traced the calls it forwarded (State + Connect, beyond the anchor's own).
    assert!(
        json["spool"]["anchor_call_spans"].as_u64().unwrap() >= 1000,
        "{}",
        json["spool"]
    );
    let rss = &json["proxy_memory"]["after_containers"]["vm_rss_kib"];
    assert!(rss.as_u64().unwrap() > 0, "{rss}");
}

/// `shimtrace bench` (the collector's own, hidden): a small synthetic spool written, ingested and
/// reported, the timings in JSON.
#[test]
fn collector_bench_ingests_and_reports_a_synthetic_spool() {
    let dir = tempfile::tempdir().unwrap();
    let run = shimtrace_testkit::cli::output_ok(
        shimtrace_testkit::cli::shimtrace()
            .args([
                "bench",
                "--containers",
                "20",
                "--containers-per-writer",
                "5",
            ])
            .arg("--dir")
            .arg(dir.path()),
    );
    let json: serde_json::Value = serde_json::from_slice(&run.stdout).expect("JSON on stdout");
    assert_eq!(json["generated"]["containers"], 20, "{json}");
    let spans = json["generated"]["spans"].as_u64().unwrap();
    assert!(spans >= 20, "{json}");
    for timing in ["ingest_seconds", "report_seconds", "render_html_seconds"] {
        assert!(
            json[timing].as_f64().is_some_and(|s| s > 0.0),
            "{timing}: {json}"
        );
    }
    assert!(json["html_bytes"].as_u64().is_some_and(|n| n > 0), "{json}");
}
