//! OTLP export against real receivers built from the official protobuf definitions
//! (`opentelemetry-proto`'s generated tonic `TraceServiceServer` for gRPC, and an HTTP endpoint
//! decoding the same `ExportTraceServiceRequest` from `POST /v1/traces`): the spans received keep
//! the store's ids, parents, names and timestamps; `serve` retries an endpoint that appears late,
//! across a restart; Jaeger JSON keeps parent links; `/metrics` parses as Prometheus text.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use nix::sys::signal::Signal;
use shimtrace_collector::store::{Store, EXPORT_CURSOR_KEY};
use shimtrace_collector::synth::{generate_spool, SynthConfig};
use shimtrace_span::SpanRecord;
use shimtrace_testkit::cli::{self, output_ok, Daemon};
use shimtrace_testkit::otlp::{OtlpReceiver, Received, ReceivedSpan};
use shimtrace_testkit::traced;

type Got = ReceivedSpan;

async fn start_grpc_receiver(listener: tokio::net::TcpListener, received: &mut Received) {
    *received = OtlpReceiver::grpc(listener).unwrap().received;
}

async fn start_http_receiver(listener: tokio::net::TcpListener, received: &mut Received) {
    *received = OtlpReceiver::http(listener).unwrap().received;
}

fn shimtrace() -> Command {
    let mut cmd = cli::shimtrace();
    cmd.env("RUST_LOG", "warn");
    cmd
}

fn run(cmd: &mut Command) -> String {
    String::from_utf8_lossy(&output_ok(cmd).stdout).into_owned()
}

/// A store filled from a synthetic spool of `containers` runs over three runtimes.
fn filled_store(dir: &Path, containers: usize) -> (PathBuf, PathBuf) {
    let spool = dir.join("spool");
    let db = dir.join("shimtrace.db");
    let config = SynthConfig {
        containers,
        containers_per_writer: 4,
        ..SynthConfig::default()
    };
    generate_spool(&spool, &config, |_| {}).unwrap();
    (spool, db)
}

fn runtime_of(span: &SpanRecord, spans: &[SpanRecord]) -> String {
    let root = spans
        .iter()
        .find(|s| s.trace_id == span.trace_id && s.name == "shim.start")
        .unwrap();
    let inner = root.attr_str("shimtrace.inner").unwrap();
    match root.attr_str("shimtrace.runtime.options") {
        Some(o) => format!("{inner} ({o})"),
        None => inner.to_string(),
    }
}

fn assert_same_as_store(got: &[Got], stored: &[SpanRecord]) {
    assert_eq!(got.len(), stored.len(), "each span exported exactly once");
    let by_id: BTreeMap<&str, &Got> = got.iter().map(|g| (g.span_id.as_str(), g)).collect();
    for s in stored {
        let g = by_id
            .get(s.span_id.to_hex().as_str())
            .expect("span received");
        assert_eq!(g.trace_id, s.trace_id.to_hex());
        assert_eq!(g.parent_span_id, s.parent_span_id.map(|p| p.to_hex()));
        assert_eq!(g.name, s.name);
        assert_eq!(
            (g.start_time_unix_nano, g.end_time_unix_nano),
            (s.start_time_unix_nano, s.end_time_unix_nano)
        );
        assert_eq!(
            g.resource.get("service.name").map(String::as_str),
            Some("shimtrace")
        );
        assert_eq!(
            g.resource.get("containerd.namespace").map(String::as_str),
            Some("default")
        );
        assert!(g.resource.contains_key("host.name"));
        assert_eq!(
            g.resource.get("shimtrace.runtime"),
            Some(&runtime_of(s, stored))
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_over_grpc_and_http_keeps_ids_parents_names_and_times() {
    let dir = tempfile::tempdir().unwrap();
    let (spool, db) = filled_store(dir.path(), 12);
    run(shimtrace()
        .arg("ingest")
        .arg("--spool")
        .arg(&spool)
        .arg("--db")
        .arg(&db));
    let stored = Store::open(&db).unwrap().all_spans().unwrap();
    assert_eq!(stored.len(), 120);

    for protocol in ["grpc", "http/protobuf"] {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut received = Received::default();
        if protocol == "grpc" {
            start_grpc_receiver(listener, &mut received).await;
        } else {
            start_http_receiver(listener, &mut received).await;
        }
        let db = db.clone();
        let out = tokio::task::spawn_blocking(move || {
            shimtrace()
                .args(["export", "--db"])
                .arg(&db)
                .args([
                    "--otlp-endpoint",
                    &format!("http://{addr}"),
                    "--otlp-protocol",
                    protocol,
                ])
                .output()
                .unwrap()
        })
        .await
        .unwrap();
        assert!(
            out.status.success(),
            "{protocol}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_same_as_store(&received.spans(), &stored);
    }

    // A time range exports only the spans that started in it.
    let from = stored.iter().map(|s| s.start_time_unix_nano).min().unwrap();
    let to = from + 1_000_000_000; // the first three containers (one every 400 ms)
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mut received = Received::default();
    start_grpc_receiver(listener, &mut received).await;
    let db2 = db.clone();
    tokio::task::spawn_blocking(move || {
        run(shimtrace()
            .args(["export", "--db"])
            .arg(&db2)
            .args(["--from", &from.to_string(), "--to", &to.to_string()])
            .env("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://{addr}"))
            .env("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"))
    })
    .await
    .unwrap();
    let want = stored
        .iter()
        .filter(|s| s.start_time_unix_nano < to)
        .count();
    assert_eq!(received.distinct(), want);
    assert!(want > 0 && want < stored.len());

    // Jaeger UI JSON: parses, one trace per container, parent links as CHILD_OF references.
    let jaeger = dir.path().join("traces.json");
    run(shimtrace()
        .args(["export", "--db"])
        .arg(&db)
        .arg("--jaeger-json")
        .arg(&jaeger));
    let doc: serde_json::Value = serde_json::from_slice(&std::fs::read(&jaeger).unwrap()).unwrap();
    let traces = doc["data"].as_array().unwrap();
    assert_eq!(traces.len(), 12);
    let mut links = 0;
    for trace in traces {
        let spans = trace["spans"].as_array().unwrap();
        let ids: BTreeSet<&str> = spans
            .iter()
            .map(|s| s["spanID"].as_str().unwrap())
            .collect();
        for span in spans {
            for r in span["references"].as_array().unwrap() {
                assert_eq!(r["refType"], "CHILD_OF");
                assert!(
                    ids.contains(r["spanID"].as_str().unwrap()),
                    "parent in the same trace"
                );
                links += 1;
            }
            assert!(
                trace["processes"][span["processID"].as_str().unwrap()]["serviceName"].is_string()
            );
        }
    }
    assert_eq!(
        links,
        stored.iter().filter(|s| s.parent_span_id.is_some()).count()
    );
}

/// `shimtrace serve` exporting to `endpoint` over gRPC, killed on drop, once its `/metrics`
/// answers; with the address it serves them on. (A free port can be taken by another test before
/// serve binds it: then serve exits saying so, and is started again on another.)
pub(crate) fn start_serve(spool: &Path, db: &Path, endpoint: &str) -> (Daemon, SocketAddr) {
    let log = spool.with_extension("serve.log");
    for _ in 0..10 {
        let metrics = free_port();
        let mut daemon = Daemon::spawn(
            shimtrace()
                .arg("serve")
                .arg("--spool")
                .arg(spool)
                .arg("--db")
                .arg(db)
                .args(["--metrics-addr", &metrics.to_string()])
                .env("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint)
                .env("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
                .stderr(std::fs::File::create(&log).unwrap()),
        );
        let exited = wait_until("serve to answer on /metrics or exit", || {
            match daemon.0.try_wait().unwrap() {
                Some(status) => Some(Some(status)),
                None => scrape(metrics).map(|_| None),
            }
        });
        let Some(status) = exited else {
            return (daemon, metrics);
        };
        let said = std::fs::read_to_string(&log).unwrap_or_default();
        assert!(
            said.contains(&format!("cannot serve metrics on {metrics}")),
            "serve exited with {status}: {said}"
        );
    }
    panic!("serve found no free port for /metrics in 10 tries")
}

/// Stops `serve` with SIGTERM, which it must answer by exiting cleanly.
fn terminate(mut daemon: Daemon) {
    let status = daemon.signal(Signal::SIGTERM);
    assert!(status.success(), "serve exited with {status}");
}

fn free_port() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// `GET /metrics`, or `None` while the server is not up yet.
pub(crate) fn scrape(addr: SocketAddr) -> Option<String> {
    let mut stream = std::net::TcpStream::connect(addr).ok()?;
    // Whatever holds the port, a reply that does not come is no answer.
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .ok()?;
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let (head, body) = response.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.1 200").then(|| body.to_string())
}

fn metric(text: &str, name: &str) -> Option<f64> {
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).ok()?;
    scrape
        .samples
        .iter()
        .find(|s| s.metric == name)
        .map(|s| match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            _ => f64::NAN,
        })
}

/// A strict reader of the Prometheus text format (0.0.4): every line is a `# HELP`/`# TYPE`
/// comment or `name{label="value",...} number`, with quoted values unescaped; anything else fails.
pub(crate) fn parse_exposition(text: &str) -> Vec<(String, BTreeMap<String, String>, f64)> {
    let is_name = |s: &str| {
        !s.is_empty()
            && s.chars().enumerate().all(|(i, c)| {
                c == '_' || c == ':' || c.is_ascii_alphabetic() || (i > 0 && c.is_ascii_digit())
            })
    };
    let mut typed = BTreeSet::new();
    let mut samples = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# ") {
            let mut parts = rest.splitn(3, ' ');
            let kind = parts.next().unwrap();
            let name = parts.next().unwrap_or_default();
            assert!(kind == "HELP" || kind == "TYPE", "bad comment: {line}");
            assert!(is_name(name), "bad metric name: {line}");
            if kind == "TYPE" {
                let t = parts.next().unwrap_or_default();
                assert!(
                    ["counter", "gauge", "histogram", "summary", "untyped"].contains(&t),
                    "{line}"
                );
                typed.insert(name.to_string());
            }
            continue;
        }
        let name_end = line
            .find(['{', ' '])
            .unwrap_or_else(|| panic!("no value: {line}"));
        let name = &line[..name_end];
        assert!(is_name(name), "bad metric name: {line}");
        assert!(
            typed.iter().any(|t| name == t
                || name
                    .strip_prefix(t.as_str())
                    .is_some_and(|s| ["_bucket", "_sum", "_count"].contains(&s))),
            "sample before its TYPE: {line}"
        );
        let mut rest = &line[name_end..];
        let mut labels = BTreeMap::new();
        if let Some(inner) = rest.strip_prefix('{') {
            let mut chars = inner.char_indices().peekable();
            loop {
                let key_start = chars.peek().map(|(i, _)| *i).unwrap();
                let eq = inner[key_start..].find('=').unwrap() + key_start;
                let key = &inner[key_start..eq];
                assert!(is_name(key), "bad label name {key:?}: {line}");
                while chars.peek().map(|(i, _)| *i <= eq) == Some(true) {
                    chars.next();
                }
                assert_eq!(
                    chars.next().map(|(_, c)| c),
                    Some('"'),
                    "label value not quoted: {line}"
                );
                let mut value = String::new();
                loop {
                    match chars
                        .next()
                        .unwrap_or_else(|| panic!("unterminated label: {line}"))
                        .1
                    {
                        '"' => break,
                        '\\' => match chars.next().unwrap().1 {
                            'n' => value.push('\n'),
                            c @ ('\\' | '"') => value.push(c),
                            c => panic!("bad escape \\{c}: {line}"),
                        },
                        c => value.push(c),
                    }
                }
                labels.insert(key.to_string(), value);
                match chars.next() {
                    Some((_, ',')) => continue,
                    Some((i, '}')) => {
                        rest = &inner[i + 1..];
                        break;
                    }
                    other => panic!("bad label list at {other:?}: {line}"),
                }
            }
        }
        let value = rest
            .strip_prefix(' ')
            .unwrap_or_else(|| panic!("no space before value: {line}"));
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v.parse().unwrap_or_else(|_| panic!("bad value: {line}")),
        };
        samples.push((name.to_string(), labels, value));
    }
    samples
}

fn wait_until<T>(what: &str, check: impl FnMut() -> Option<T>) -> T {
    traced::wait_until(what, Duration::from_secs(60), check)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_retries_a_late_receiver_and_keeps_pending_spans_across_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (spool, db) = filled_store(dir.path(), 10);
    let otlp = free_port();
    let endpoint = format!("http://{otlp}");

    // Nothing listens on the OTLP port: spans are ingested, export fails and is retried.
    let (s, d, e) = (spool.clone(), db.clone(), endpoint.clone());
    let text = tokio::task::spawn_blocking(move || {
        let (daemon, metrics) = start_serve(&s, &d, &e);
        // Delete and teardown count once the traces have stayed as they are for a while.
        let text = wait_until("ingest, a failed export and every phase counted", || {
            let text = scrape(metrics)?;
            let teardowns: f64 = parse_exposition(&text)
                .iter()
                .filter(|(name, labels, _)| {
                    name == "shimtrace_cold_start_phase_seconds_count"
                        && labels["phase"] == "teardown"
                })
                .map(|(_, _, count)| count)
                .sum();
            (metric(&text, "shimtrace_spans_ingested_total")? == 100.0
                && metric(&text, "shimtrace_export_failures_total")? >= 1.0
                && teardowns == 10.0)
                .then_some(text)
        });
        terminate(daemon);
        text
    })
    .await
    .unwrap();
    assert_eq!(metric(&text, "shimtrace_spans_exported_total"), Some(0.0));
    // The whole exposition parses strictly, with a consistent histogram per series (runtime,
    // role, phase).
    let samples = parse_exposition(&text);
    let series_of = |l: &BTreeMap<String, String>| {
        (l["runtime"].clone(), l["role"].clone(), l["phase"].clone())
    };
    let histograms: BTreeSet<(String, String, String)> = samples
        .iter()
        .filter(|(name, _, _)| name == "shimtrace_cold_start_phase_seconds_count")
        .map(|(_, labels, _)| series_of(labels))
        .collect();
    for key in &histograms {
        let series: Vec<f64> = samples
            .iter()
            .filter(|(name, l, _)| {
                name == "shimtrace_cold_start_phase_seconds_bucket" && &series_of(l) == key
            })
            .map(|(_, _, v)| *v)
            .collect();
        assert!(
            series.windows(2).all(|w| w[0] <= w[1]),
            "buckets are cumulative: {series:?}"
        );
        let count = samples
            .iter()
            .find(|(name, l, _)| {
                name == "shimtrace_cold_start_phase_seconds_count" && &series_of(l) == key
            })
            .unwrap()
            .2;
        assert_eq!(series.last(), Some(&count), "+Inf bucket equals _count");
        assert!(count >= 3.0, "each runtime ran 3 or 4 of the 10 containers");
    }
    assert_eq!(histograms.len(), 3 * 6, "{histograms:?}");
    assert_eq!(
        Store::open(&db).unwrap().meta(EXPORT_CURSOR_KEY).unwrap(),
        0,
        "nothing was exported"
    );
    // The synthetic writers are gone, so their files were compacted after ingest.
    assert_eq!(std::fs::read_dir(&spool).unwrap().count(), 0);

    // Restarted collector, receiver appears late: every pending span arrives.
    let (s, d, e) = (spool.clone(), db.clone(), endpoint.clone());
    let (daemon, metrics) = tokio::task::spawn_blocking(move || {
        let (daemon, metrics) = start_serve(&s, &d, &e);
        wait_until("the restarted collector to fail an export", || {
            (metric(&scrape(metrics)?, "shimtrace_export_failures_total")? >= 1.0).then_some(())
        });
        (daemon, metrics)
    })
    .await
    .unwrap();
    let mut received = Received::default();
    let listener = wait_until("the OTLP port to be free", || {
        std::net::TcpListener::bind(otlp).ok()
    });
    listener.set_nonblocking(true).unwrap();
    start_grpc_receiver(
        tokio::net::TcpListener::from_std(listener).unwrap(),
        &mut received,
    )
    .await;
    let r = received.clone();
    tokio::task::spawn_blocking(move || {
        wait_until("all spans at the receiver", || {
            (r.distinct() == 100).then_some(())
        })
    })
    .await
    .unwrap();
    let stored = Store::open(&db).unwrap().all_spans().unwrap();
    let mut got = received.spans();
    got.sort_by(|a, b| a.span_id.cmp(&b.span_id));
    got.dedup_by(|a, b| a.span_id == b.span_id);
    assert_same_as_store(&got, &stored);
    let db2 = db.clone();
    tokio::task::spawn_blocking(move || {
        wait_until("the export cursor to reach the end", || {
            let store = Store::open(&db2).ok()?;
            (store.meta(EXPORT_CURSOR_KEY).ok()? == store.max_seq().ok()?).then_some(())
        });
        wait_until("exported_total to reach 100", || {
            (metric(&scrape(metrics)?, "shimtrace_spans_exported_total")? == 100.0).then_some(())
        });
        terminate(daemon);
    })
    .await
    .unwrap();
}

/// Every subcommand logs to stderr, not only `serve`: an export whose endpoint refuses connections
/// warns about its retry there at the default level, and stdout stays clean for scripts;
/// `SHIMTRACE_LOG=error` silences the warning but not the final error.
#[test]
fn export_retries_warn_on_stderr_at_the_level_shimtrace_log_sets() {
    let dir = tempfile::tempdir().unwrap();
    let (spool, _) = filled_store(dir.path(), 2);
    // Nothing listens there once the probing listener is gone: every request is refused.
    let refused = free_port();
    let export = |level: Option<&str>| {
        let mut cmd = shimtrace();
        cmd.env_remove("RUST_LOG")
            .args(["export", "--spool"])
            .arg(&spool)
            .args(["--otlp-endpoint", &format!("http://{refused}")])
            .args(["--retries", "1"]);
        if let Some(level) = level {
            cmd.env(shimtrace_span::env::LOG_LEVEL, level);
        }
        cmd.output().unwrap()
    };

    let out = export(None);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("WARN") && stderr.contains("retrying in"),
        "the retry is logged: {stderr}"
    );
    assert!(stderr.contains("OTLP export to"), "{stderr}");
    assert!(
        out.stdout.is_empty(),
        "stdout: {}",
        String::from_utf8_lossy(&out.stdout)
    );

    let out = export(Some("error"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(!stderr.contains("retrying in"), "{stderr}");
    assert!(stderr.contains("OTLP export to"), "{stderr}");
}
