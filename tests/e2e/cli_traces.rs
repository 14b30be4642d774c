//! The `shimtrace traces` / `trace` commands, run as a user runs them, on a hand-made spool.

/// A spool line: a server span of container `box` in namespace `default`, under runc's shim.
pub(crate) fn spool_line(
    trace: &str,
    span: &str,
    parent: Option<&str>,
    name: &str,
    start: u64,
    end: u64,
) -> String {
    serde_json::json!({
        "type": "span", "trace_id": trace, "span_id": span, "parent_span_id": parent, "name": name,
        "kind": "server", "start_time_unix_nano": start, "end_time_unix_nano": end,
        "attributes": {"containerd.container.id": "box", "containerd.namespace": "default",
                       "shimtrace.inner": "/usr/bin/containerd-shim-runc-v2"},
        "status": {"code": "ok"}
    })
    .to_string()
}

fn shimtrace(args: &[&str]) -> std::process::Output {
    shimtrace_testkit::cli::shimtrace()
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn traces_json_and_text_from_a_spool_with_a_bad_line() {
    let dir = tempfile::tempdir().unwrap();
    let t = "0af7651916cd43dd8448eb211c80319c";
    let base = 1_700_000_000_000_000_000u64;
    let lines = [
        spool_line(
            t,
            "00000000000000a1",
            None,
            "shim.start",
            base,
            base + 20_000_000,
        ),
        "garbage line".to_string(),
        spool_line(
            t,
            "00000000000000a2",
            Some("00000000000000a1"),
            "containerd.task.v3.Task/Create",
            base + 30_000_000,
            base + 80_000_000,
        ),
    ];
    std::fs::write(
        dir.path().join("proxy-42-1-0.jsonl"),
        lines.join("\n") + "\n",
    )
    .unwrap();
    let spool = dir.path().to_str().unwrap();

    let out = shimtrace(&["traces", "--spool", spool, "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let spans: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let spans = spans.as_array().unwrap();
    assert_eq!(spans.len(), 2);
    for key in [
        "trace_id",
        "span_id",
        "parent_span_id",
        "name",
        "start_time_unix_nano",
        "end_time_unix_nano",
        "attributes",
    ] {
        assert!(spans.iter().all(|s| s.get(key).is_some()), "missing {key}");
    }
    assert_eq!(spans[1]["parent_span_id"], "00000000000000a1");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("proxy-42-1-0.jsonl:2"), "{stderr}");

    let out = shimtrace(&["traces", "--spool", spool]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(text.contains("container box"), "{text}");
    assert!(
        text.contains("+30.000 ms     50.000 ms    containerd.task.v3.Task/Create"),
        "{text}"
    );

    let out = shimtrace(&["trace", "box", "--spool", spool]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("█"));

    let out = shimtrace(&["trace", "nope", "--spool", spool]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no trace for container"));
}

#[test]
fn an_empty_spool_says_where_it_looked_and_a_closed_pipe_is_no_error() {
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().to_str().unwrap();
    let out = shimtrace(&["traces", "--spool", spool]);
    assert!(out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("no spans in the spool {spool}"))
            && stderr.contains("--spool DIR"),
        "{stderr}"
    );

    // `shimtrace traces | head -1`: the reader goes before the output is written.
    for i in 0..20 {
        let line = spool_line(
            &format!("{:032x}", i + 1),
            &format!("{:016x}", i + 1),
            None,
            "x",
            1,
            2,
        );
        std::fs::write(dir.path().join(format!("proxy-{i}-1-0.jsonl")), line + "\n").unwrap();
    }
    let mut child = shimtrace_testkit::cli::shimtrace()
        .args(["traces", "--spool", spool])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(!stderr.contains("Broken pipe"), "{stderr}");
}

#[test]
fn missing_spool_is_a_clear_error() {
    let out = shimtrace(&["traces", "--spool", "/nonexistent/spool"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read spool directory"));
}

#[test]
fn queries_and_report_read_the_store_as_they_read_the_spool() {
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("spool");
    let db = dir.path().join("shimtrace.db");
    let walls = dir.path().join("walls.jsonl");
    let (s, d, w) = (
        spool.to_str().unwrap(),
        db.to_str().unwrap(),
        walls.to_str().unwrap(),
    );
    let ok = |args: &[&str]| {
        let out = shimtrace_testkit::cli::output_ok(shimtrace_testkit::cli::shimtrace().args(args));
        String::from_utf8(out.stdout).unwrap()
    };
    ok(&[
        "synth",
        "--spool",
        s,
        "--containers",
        "6",
        "--wall-times",
        w,
    ]);
    let from_spool = ok(&["traces", "--spool", s, "--json"]);
    ok(&["ingest", "--spool", s, "--db", d]);
    assert_eq!(
        std::fs::read_dir(&spool).unwrap().count(),
        0,
        "finished files are compacted"
    );
    let from_store = ok(&["traces", "--db", d, "--json"]);
    let a: serde_json::Value = serde_json::from_str(&from_spool).unwrap();
    let b: serde_json::Value = serde_json::from_str(&from_store).unwrap();
    assert_eq!(a, b);
    assert_eq!(a.as_array().unwrap().len(), 60);

    let summary: serde_json::Value =
        serde_json::from_str(&ok(&["traces", "--db", d, "--summary", "--json"])).unwrap();
    let rows = summary.as_array().unwrap();
    assert_eq!(rows.len(), 6);
    assert!(rows
        .iter()
        .all(|r| r["status"] == "exited" && r["phases"]["create"].as_u64().unwrap() > 0));
    let table = ok(&["traces", "--db", d, "--summary"]);
    assert!(
        table.lines().next().unwrap().contains("WRAPPER_START"),
        "{table}"
    );
    assert_eq!(table.lines().count(), 7);

    let waterfall = ok(&["trace", "synth-000004", "--db", d]);
    assert!(
        waterfall.starts_with("container synth-000004"),
        "{waterfall}"
    );
    assert_eq!(waterfall.matches('|').count(), 20, "{waterfall}");
    let one: serde_json::Value =
        serde_json::from_str(&ok(&["trace", "synth-000004", "--db", d, "--json"])).unwrap();
    assert_eq!(one.as_array().unwrap().len(), 10);

    let report: serde_json::Value = serde_json::from_str(&ok(&[
        "report",
        "--db",
        d,
        "--format",
        "json",
        "--wall-times",
        w,
    ]))
    .unwrap();
    assert_eq!(report["traces"], 6);
    assert_eq!(report["runtimes"].as_array().unwrap().len(), 3);
    assert_eq!(report["runtimes"][0]["wall"]["n"], 2);

    let bad = dir.path().join("bad.jsonl");
    std::fs::write(&bad, "{\"container_id\": 5}\n").unwrap();
    let out = shimtrace(&["report", "--db", d, "--wall-times", bad.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("line 1"));
    let out = shimtrace(&[
        "report",
        "--db",
        dir.path().join("none.db").to_str().unwrap(),
    ]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("shimtrace serve"));
}
