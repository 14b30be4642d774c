//! `shimtrace serve` ingest, run as a daemon: spans written while it is down are all stored once
//! when it starts, spans written while it runs arrive through inotify, a SIGKILL mid-ingest loses
//! and duplicates nothing, and re-ingesting the same lines is a no-op.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use shimtrace_collector::ingest::BATCH_SPANS;
use shimtrace_collector::store::Store;
use shimtrace_shim::spool::{SpanSink, SpoolConfig};
use shimtrace_span::{SpanId, SpanRecord, TraceId};
use shimtrace_testkit::cli::{self, output_ok, Daemon};

/// `shimtrace serve` as a daemon, killed on drop so a failing test leaves no daemon behind.
fn start_serve(spool: &Path, db: &Path) -> Daemon {
    Daemon::spawn(
        cli::shimtrace()
            .args(["serve", "--spool"])
            .arg(spool)
            .arg("--db")
            .arg(db)
            .env("RUST_LOG", "warn"),
    )
}

/// Stops `serve` with `signal`; SIGTERM it must answer by exiting cleanly.
fn stop(daemon: &mut Daemon, signal: Signal) {
    let status = daemon.signal(signal);
    if signal == Signal::SIGTERM {
        assert!(status.success(), "serve exited with {status} on SIGTERM");
    }
}

fn span(n: u64) -> SpanRecord {
    let start = 1_700_000_000_000_000_000 + n * 1000;
    SpanRecord::new(
        TraceId([(n / 10 % 251 + 1) as u8; 16]),
        SpanId((n + 1).to_be_bytes()),
        format!("containerd.task.v2.Task/Op{}", n % 7),
        start,
        start + 500,
    )
}

/// Writes spans `range` through the shim's own spool writer, 1,000 per writer so none are dropped.
fn write_spans(spool: &Path, range: std::ops::Range<u64>) {
    let config = SpoolConfig {
        dir: spool.to_path_buf(),
        max_bytes: u64::MAX,
    };
    let mut n = range.start;
    while n < range.end {
        let sink = SpanSink::start(&config, "proxy").unwrap();
        let end = (n + 1000).min(range.end);
        for i in n..end {
            sink.emit(span(i));
        }
        assert_eq!(sink.dropped(), 0);
        sink.shutdown(Duration::from_secs(30));
        n = end;
    }
}

fn stored(db: &Path) -> u64 {
    if !db.exists() {
        return 0;
    }
    Store::open(db)
        .map(|s| s.span_count().unwrap_or(0))
        .unwrap_or(0)
}

fn wait_for_count(db: &Path, want: u64) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let got = stored(db);
        if got == want {
            return;
        }
        assert!(
            got <= want,
            "stored {got} spans, more than the {want} written"
        );
        assert!(
            Instant::now() < deadline,
            "stored {got} of {want} spans after 60 s"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn collector_down_then_up_stores_every_span_once() {
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("spool");
    let db = dir.path().join("store/shimtrace.db");

    let mut daemon = start_serve(&spool, &db);
    write_spans(&spool, 0..100);
    wait_for_count(&db, 100);
    stop(&mut daemon, Signal::SIGTERM);

    // Collector down: 10,000 spans pile up in the spool.
    write_spans(&spool, 100..10_100);
    let _daemon = start_serve(&spool, &db);
    wait_for_count(&db, 10_100);

    // Live: new lines arrive through inotify.
    write_spans(&spool, 10_100..10_150);
    wait_for_count(&db, 10_150);
    drop(_daemon);

    let store = Store::open(&db).unwrap();
    let ids: BTreeSet<SpanId> = store
        .all_spans()
        .unwrap()
        .iter()
        .map(|s| s.span_id)
        .collect();
    assert_eq!(ids.len(), 10_150);
    assert_eq!(ids, (0..10_150).map(|n| span(n).span_id).collect());
    drop(store);

    // Re-ingest: the same lines under new file names (offsets start at 0) store nothing new.
    for entry in std::fs::read_dir(&spool).unwrap() {
        let path = entry.unwrap().path();
        let name = path
            .file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .replacen("proxy-", "proxy-copy-", 1);
        std::fs::copy(&path, spool.join(name)).unwrap();
    }
    let out = output_ok(
        cli::shimtrace()
            .args(["ingest", "--no-compact", "--spool"])
            .arg(&spool)
            .arg("--db")
            .arg(&db),
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("read 10150 spans, stored 0 new"), "{text}");
    assert_eq!(stored(&db), 10_150);
}

#[test]
fn sigkill_mid_ingest_neither_loses_nor_duplicates() {
    // One batch and a half: serve commits the first batch, then is killed while it reads the
    // rest, which it has not committed yet (a batch is one transaction).
    const TOTAL: u64 = BATCH_SPANS * 3 / 2;
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("spool");
    let db = dir.path().join("shimtrace.db");
    // The store's schema first: the polls below then only read the store (one opening a store
    // without its schema would wait for the write lock, which serve hands back only for a moment
    // between batches, and could miss every batch but the last).
    drop(Store::open(&db).unwrap());
    write_spans(&spool, 0..TOTAL);
    let mut daemon = start_serve(&spool, &db);
    let deadline = Instant::now() + Duration::from_secs(120);
    while stored(&db) == 0 {
        assert!(Instant::now() < deadline, "serve stored nothing in 120 s");
        std::thread::sleep(Duration::from_millis(5));
    }
    stop(&mut daemon, Signal::SIGKILL);
    // The kill landed mid-ingest: some spans were stored, not all.
    let at_kill = stored(&db);
    assert!(
        0 < at_kill && at_kill < TOTAL,
        "stored {at_kill} of {TOTAL} spans when serve was killed"
    );
    let _daemon = start_serve(&spool, &db);
    wait_for_count(&db, TOTAL);
}
