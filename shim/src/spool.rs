//! The spool writer: appends spans to the durable spool without ever blocking the caller, keeping
//! the layout and bounds described in [`shimtrace_span::spool`].

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::Serialize;

use shimtrace_span::clock;
use shimtrace_span::env::{SPOOL_DIR as SPOOL_DIR_ENV, SPOOL_MAX_BYTES as SPOOL_MAX_BYTES_ENV};
use shimtrace_span::spool::{DEFAULT_MAX_BYTES, DEFAULT_SPOOL_DIR, ROTATE_BYTES};
use shimtrace_span::{SpanRecord, SpoolEntry};

/// Spans waiting for the writer thread; beyond it spans are dropped. The queue grows on demand, so an
/// idle proxy holds none of it.
pub const QUEUE_CAPACITY: usize = 8192;
/// The writer wakes early once this many spans wait.
pub const WAKE_AT: usize = 256;
/// The writer writes what waits at least this often.
pub const FLUSH_INTERVAL: Duration = Duration::from_millis(100);
/// File in the spool directory where writers share their last measurement of the spool's size.
/// Measuring means a `stat` of every file, and a wrapper process starts three writers per
/// container; with a few hundred files waiting for the collector that cost milliseconds of CPU
/// in each container's start. Readers of the spool skip it (it is not a spool file name).
pub const USAGE_HINT_FILE: &str = ".usage";
/// A shared measurement younger than this is used instead of measuring again. The bound may so be
/// overshot by what all writers append within this time.
pub const USAGE_HINT_TTL: Duration = Duration::from_secs(5);

/// The spool line of a span, serialised without moving it (same JSON as [`SpoolEntry::Span`]).
#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum SpoolEntryRef<'a> {
    Span(&'a SpanRecord),
}

#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("cannot create spool directory {path}: {source} (set {SPOOL_DIR_ENV} to a writable directory)")]
    CreateDir { path: PathBuf, source: io::Error },
    #[error("cannot open spool file {path}: {source} (check that {SPOOL_DIR_ENV} is writable)")]
    OpenFile { path: PathBuf, source: io::Error },
    #[error("cannot start the spool writer thread: {0}")]
    Thread(io::Error),
}

/// Where and how much to spool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpoolConfig {
    pub dir: PathBuf,
    pub max_bytes: u64,
}

impl SpoolConfig {
    /// From `SHIMTRACE_SPOOL_DIR` and `SHIMTRACE_SPOOL_MAX_BYTES`, else the defaults.
    pub fn from_env() -> SpoolConfig {
        let dir = std::env::var_os(SPOOL_DIR_ENV)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_SPOOL_DIR));
        let max_bytes = std::env::var(SPOOL_MAX_BYTES_ENV)
            .ok()
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(DEFAULT_MAX_BYTES);
        SpoolConfig { dir, max_bytes }
    }
}

/// Sends spans to the spool without ever blocking the caller.
///
/// Spans wait in a queue that the writer thread drains every [`FLUSH_INTERVAL`] or once
/// [`WAKE_AT`] are waiting, in one `write` per batch: a proxied call costs a short lock and a push,
/// not a thread wake-up and a syscall. A full queue or an unwritable spool drops the span and
/// counts it; the count reaches the spool as a `dropped` line.
pub struct SpanSink {
    shared: Arc<SinkShared>,
    writer: Mutex<Option<JoinHandle<()>>>,
    /// Disconnects when the writer thread ends, so `shutdown` can wait for it with a timeout.
    finished: Mutex<Option<Receiver<()>>>,
}

struct SinkShared {
    queue: Mutex<Queue>,
    wake: Condvar,
    dropped: AtomicU64,
}

#[derive(Default)]
struct Queue {
    spans: Vec<Queued>,
    closed: bool,
}

/// A span whose record is assembled by the writer thread: the thread that emits it (one forwarding
/// a call) keeps only the raw facts, so decoding and attribute building stay off its path.
pub trait DeferredSpan: Send {
    /// The finished record; `None` when there is nothing to record after all.
    fn build(self: Box<Self>) -> Option<SpanRecord>;
}

enum Queued {
    Ready(SpanRecord),
    Deferred(Box<dyn DeferredSpan>),
}

impl SpanSink {
    /// Opens this process's spool file and starts the writer thread.
    pub fn start(config: &SpoolConfig, writer: &str) -> Result<SpanSink, SpoolError> {
        let mut file = SpoolFile::create(config, writer)?;
        let shared = Arc::new(SinkShared {
            queue: Mutex::new(Queue::default()),
            wake: Condvar::new(),
            dropped: AtomicU64::new(0),
        });
        let (finished_tx, finished_rx) = mpsc::channel::<()>();
        let thread_shared = shared.clone();
        let handle = std::thread::Builder::new()
            .name("spool-writer".into())
            .spawn(move || {
                file.run(&thread_shared);
                drop(finished_tx);
            })
            .map_err(SpoolError::Thread)?;
        Ok(SpanSink {
            shared,
            writer: Mutex::new(Some(handle)),
            finished: Mutex::new(Some(finished_rx)),
        })
    }

    /// A sink that writes nothing and counts every span as dropped (used when the spool is unusable).
    pub fn disabled() -> SpanSink {
        SpanSink {
            shared: Arc::new(SinkShared {
                queue: Mutex::new(Queue {
                    spans: Vec::new(),
                    closed: true,
                }),
                wake: Condvar::new(),
                dropped: AtomicU64::new(0),
            }),
            writer: Mutex::new(None),
            finished: Mutex::new(None),
        }
    }

    /// Queues a span; never blocks on I/O.
    pub fn emit(&self, span: SpanRecord) {
        self.enqueue(Queued::Ready(span));
    }

    /// Queues a span that the writer thread assembles; never blocks on I/O.
    pub fn emit_deferred(&self, span: Box<dyn DeferredSpan>) {
        self.enqueue(Queued::Deferred(span));
    }

    fn enqueue(&self, span: Queued) {
        let queued = match self.shared.queue.lock() {
            Ok(mut queue) if !queue.closed && queue.spans.len() < QUEUE_CAPACITY => {
                queue.spans.push(span);
                if queue.spans.len() == WAKE_AT {
                    self.shared.wake.notify_one();
                }
                true
            }
            _ => false,
        };
        if !queued {
            self.shared.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Spans dropped so far and not yet recorded in the spool.
    pub fn dropped(&self) -> u64 {
        self.shared.dropped.load(Ordering::Relaxed)
    }

    /// Flushes what is queued and stops the writer, waiting at most `timeout`; later spans are
    /// counted as dropped.
    pub fn shutdown(&self, timeout: Duration) {
        if let Ok(mut queue) = self.shared.queue.lock() {
            queue.closed = true;
        }
        self.shared.wake.notify_one();
        let finished = self.finished.lock().ok().and_then(|mut f| f.take());
        if let Some(finished) = finished {
            // Disconnected (the writer is done) or timed out: either way stop waiting.
            let _ = finished.recv_timeout(timeout);
        }
        let handle = self.writer.lock().ok().and_then(|mut w| w.take());
        if let Some(handle) = handle.filter(|h| h.is_finished()) {
            let _ = handle.join();
        }
    }
}

/// Writes `spans` now, on this thread, in one write: for short-lived writers (the wrapper's
/// `start` and `delete` processes), which a writer thread would only slow down. Same file naming,
/// bound and drop accounting as a [`SpanSink`].
pub fn write_now(
    config: &SpoolConfig,
    writer: &str,
    spans: &[SpanRecord],
) -> Result<(), SpoolError> {
    let mut file = SpoolFile::create(config, writer)?;
    let mut batch = Vec::with_capacity(1024 * spans.len());
    for span in spans {
        push_line(&mut batch, span);
    }
    let dropped = AtomicU64::new(0);
    file.append_bounded(&batch, spans.len() as u64, &dropped);
    file.record_drops(&dropped);
    Ok(())
}

/// Appends `span`'s spool line, newline included, to `batch`.
fn push_line(batch: &mut Vec<u8>, span: &SpanRecord) {
    let _ = serde_json::to_writer(&mut *batch, &SpoolEntryRef::Span(span));
    batch.push(b'\n');
}

/// The file a writer appends to, with the bookkeeping for rotation and the size bound.
struct SpoolFile {
    dir: PathBuf,
    max_bytes: u64,
    stem: String,
    seq: u32,
    file: File,
    file_bytes: u64,
    /// Bytes in the spool directory as of the last measurement plus what this writer added since;
    /// `None` until the first append (measured then, off the caller's thread).
    spool_bytes: Option<u64>,
    last_measured: Instant,
    writer: String,
}

impl SpoolFile {
    fn create(config: &SpoolConfig, writer: &str) -> Result<SpoolFile, SpoolError> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&config.dir)
            .map_err(|source| SpoolError::CreateDir {
                path: config.dir.clone(),
                source,
            })?;
        let stem = format!(
            "{writer}-{}-{}",
            std::process::id(),
            clock::now_unix_nanos()
        );
        let file = open_spool_file(&config.dir, &stem, 0)?;
        Ok(SpoolFile {
            dir: config.dir.clone(),
            max_bytes: config.max_bytes,
            stem,
            seq: 0,
            file,
            file_bytes: 0,
            spool_bytes: None,
            last_measured: Instant::now(),
            writer: format!("{writer}/{}", std::process::id()),
        })
    }

    fn run(&mut self, shared: &SinkShared) {
        let mut batch = Vec::with_capacity(64 * 1024);
        let mut trim_after_burst = false;
        loop {
            let (spans, closed) = {
                let Ok(queue) = shared.queue.lock() else {
                    return;
                };
                let Ok((mut queue, _)) =
                    shared.wake.wait_timeout_while(queue, FLUSH_INTERVAL, |q| {
                        !q.closed && q.spans.len() < WAKE_AT
                    })
                else {
                    return;
                };
                (std::mem::take(&mut queue.spans), queue.closed)
            };
            batch.clear();
            let mut lines = 0;
            let burst = spans.len() >= WAKE_AT;
            for queued in spans {
                let span = match queued {
                    Queued::Ready(span) => span,
                    Queued::Deferred(deferred) => match deferred.build() {
                        Some(span) => span,
                        None => continue,
                    },
                };
                push_line(&mut batch, &span);
                lines += 1;
            }
            if lines > 0 {
                self.append_bounded(&batch, lines, &shared.dropped);
            }
            if burst {
                trim_after_burst = true;
            } else if trim_after_burst {
                // Once a burst is over, hand the freed span memory back: glibc keeps it otherwise,
                // and a proxy lives beside every container for as long as it runs. Not during the
                // burst: trimming holds the allocator's lock that the forwarding threads need.
                trim_after_burst = false;
                batch.shrink_to(64 * 1024);
                // SAFETY: malloc_trim only releases free heap pages.
                unsafe {
                    libc::malloc_trim(0);
                }
            }
            self.record_drops(&shared.dropped);
            if closed {
                return;
            }
        }
    }

    /// Appends whole lines in one write, or drops them if the spool is over its bound.
    fn append_bounded(&mut self, bytes: &[u8], spans: u64, dropped: &AtomicU64) {
        let mut spool_bytes = *self
            .spool_bytes
            .get_or_insert_with(|| shared_spool_bytes(&self.dir));
        if spool_bytes + bytes.len() as u64 > self.max_bytes
            && self.last_measured.elapsed() > Duration::from_millis(500)
        {
            // The collector may have compacted since we last looked.
            spool_bytes = measure_spool_bytes(&self.dir);
            self.spool_bytes = Some(spool_bytes);
            self.last_measured = Instant::now();
        }
        if spool_bytes + bytes.len() as u64 > self.max_bytes {
            dropped.fetch_add(spans, Ordering::Relaxed);
            return;
        }
        if self.append(bytes).is_err() {
            dropped.fetch_add(spans, Ordering::Relaxed);
        }
    }

    fn append(&mut self, bytes: &[u8]) -> io::Result<()> {
        if self.file_bytes >= ROTATE_BYTES {
            if let Ok(next) = open_spool_file(&self.dir, &self.stem, self.seq + 1) {
                self.seq += 1;
                self.file = next;
                self.file_bytes = 0;
            }
        }
        self.file.write_all(bytes)?;
        self.file_bytes += bytes.len() as u64;
        if let Some(spool_bytes) = &mut self.spool_bytes {
            *spool_bytes += bytes.len() as u64;
        }
        Ok(())
    }

    /// Writes the drop count as a line; a count line may exceed the bound, being tiny and the only
    /// way the loss becomes visible.
    fn record_drops(&mut self, dropped: &AtomicU64) {
        let count = dropped.swap(0, Ordering::Relaxed);
        if count == 0 {
            return;
        }
        let entry = SpoolEntry::Dropped {
            count,
            writer: self.writer.clone(),
            reason: "span buffer full or spool over its size bound".into(),
            time_unix_nano: clock::now_unix_nanos(),
        };
        let mut line = serde_json::to_vec(&entry).unwrap_or_default();
        line.push(b'\n');
        if self.append(&line).is_err() {
            dropped.fetch_add(count, Ordering::Relaxed);
        }
    }
}

fn open_spool_file(dir: &Path, stem: &str, seq: u32) -> Result<File, SpoolError> {
    let path = dir.join(format!("{stem}-{seq}.jsonl"));
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(&path)
        .map_err(|source| SpoolError::OpenFile { path, source })
}

/// The spool's size as another writer measured it less than [`USAGE_HINT_TTL`] ago, or as
/// measured now (and shared).
fn shared_spool_bytes(dir: &Path) -> u64 {
    read_usage_hint(dir, clock::now_unix_nanos()).unwrap_or_else(|| measure_spool_bytes(dir))
}

/// Measures the spool's size and shares it in [`USAGE_HINT_FILE`].
fn measure_spool_bytes(dir: &Path) -> u64 {
    let bytes = dir_bytes(dir);
    write_usage_hint(dir, bytes, clock::now_unix_nanos());
    bytes
}

/// The hint's byte count if it was measured within [`USAGE_HINT_TTL`] before `now_nanos`.
fn read_usage_hint(dir: &Path, now_nanos: u64) -> Option<u64> {
    let text = fs::read_to_string(dir.join(USAGE_HINT_FILE)).ok()?;
    let (bytes, measured) = text.trim().split_once(' ')?;
    let (bytes, measured): (u64, u64) = (bytes.parse().ok()?, measured.parse().ok()?);
    let age = now_nanos.checked_sub(measured)?;
    (age < USAGE_HINT_TTL.as_nanos() as u64).then_some(bytes)
}

/// Writes the hint in place, fixed width: a reader racing a writer sees the old text, the new one
/// or one that does not parse (and then measures), never a wrong number of bytes with a fresh age.
fn write_usage_hint(dir: &Path, bytes: u64, now_nanos: u64) {
    use std::os::unix::fs::FileExt;
    let line = format!("{bytes:020} {now_nanos:020}\n");
    if let Ok(file) = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(dir.join(USAGE_HINT_FILE))
    {
        let _ = file.write_all_at(line.as_bytes(), 0);
    }
}

/// Total size of the regular files in `dir` (0 if unreadable).
pub fn dir_bytes(dir: &Path) -> u64 {
    fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter_map(|e| e.metadata().ok())
                .filter(|m| m.is_file())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use shimtrace_span::spool::{read_spool, spool_files};
    use shimtrace_span::{SpanId, TraceId};
    use std::os::unix::fs::PermissionsExt;

    fn span(name: &str) -> SpanRecord {
        SpanRecord {
            trace_id: TraceId::random(),
            span_id: SpanId::random(),
            parent_span_id: None,
            name: name.into(),
            kind: Default::default(),
            start_time_unix_nano: 10,
            end_time_unix_nano: 20,
            attributes: Default::default(),
            events: vec![],
            status: Default::default(),
        }
    }

    #[test]
    fn sink_writes_mode_0600_lines_that_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let config = SpoolConfig {
            dir: dir.path().join("spool"),
            max_bytes: DEFAULT_MAX_BYTES,
        };
        let sink = SpanSink::start(&config, "test").unwrap();
        sink.emit(span("a"));
        sink.emit(span("b"));
        sink.shutdown(Duration::from_secs(5));
        let files = spool_files(&config.dir).unwrap();
        assert_eq!(files.len(), 1);
        assert_eq!(files[0].1.writer, "test");
        let mode = fs::metadata(&files[0].0).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let contents = read_spool(&config.dir).unwrap();
        let names: Vec<_> = contents.spans.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["a", "b"]);
        assert_eq!(contents.dropped, 0);
    }

    #[test]
    fn over_the_bound_spans_are_dropped_and_counted_in_the_spool() {
        let dir = tempfile::tempdir().unwrap();
        let config = SpoolConfig {
            dir: dir.path().to_path_buf(),
            max_bytes: 300,
        };
        let sink = SpanSink::start(&config, "test").unwrap();
        for i in 0..20 {
            sink.emit(span(&format!("s{i}")));
        }
        sink.shutdown(Duration::from_secs(5));
        let contents = read_spool(&config.dir).unwrap();
        assert!(contents.spans.len() < 20);
        assert_eq!(contents.spans.len() as u64 + contents.dropped, 20);
    }

    #[test]
    fn a_fresh_shared_measurement_is_used_and_a_stale_one_is_measured_again() {
        let dir = tempfile::tempdir().unwrap();
        let config = SpoolConfig {
            dir: dir.path().to_path_buf(),
            max_bytes: 1_000_000,
        };
        // Another writer found the spool full a moment ago: this one believes it, without a scan.
        write_usage_hint(dir.path(), 1_000_000, clock::now_unix_nanos());
        let sink = SpanSink::start(&config, "test").unwrap();
        sink.emit(span("believed-full"));
        sink.shutdown(Duration::from_secs(5));
        let contents = read_spool(&config.dir).unwrap();
        assert!(contents.spans.is_empty());
        assert_eq!(contents.dropped, 1);

        // The same claim, older than the TTL: measured again, found nearly empty, written.
        let stale = clock::now_unix_nanos() - USAGE_HINT_TTL.as_nanos() as u64 - 1;
        write_usage_hint(dir.path(), 1_000_000, stale);
        let sink = SpanSink::start(&config, "test").unwrap();
        sink.emit(span("written"));
        sink.shutdown(Duration::from_secs(5));
        let names: Vec<_> = read_spool(&config.dir)
            .unwrap()
            .spans
            .into_iter()
            .map(|s| s.name)
            .collect();
        assert_eq!(names, ["written"]);
        let measured = read_usage_hint(dir.path(), clock::now_unix_nanos()).unwrap();
        assert!(measured < 1_000, "the rescan shared {measured} bytes");
    }

    #[test]
    fn usage_hints_that_do_not_parse_or_come_from_the_future_are_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let now = 10_000_000_000;
        assert_eq!(read_usage_hint(dir.path(), now), None);
        fs::write(dir.path().join(USAGE_HINT_FILE), "12 x\n").unwrap();
        assert_eq!(read_usage_hint(dir.path(), now), None);
        write_usage_hint(dir.path(), 42, now + 1);
        assert_eq!(read_usage_hint(dir.path(), now), None);
        write_usage_hint(dir.path(), 42, now - 1);
        assert_eq!(read_usage_hint(dir.path(), now), Some(42));
        // A shorter number written over a longer one leaves no digits behind.
        write_usage_hint(dir.path(), 7, now - 1);
        assert_eq!(read_usage_hint(dir.path(), now), Some(7));
    }

    #[test]
    fn written_now_reads_back_and_over_the_bound_is_counted() {
        let dir = tempfile::tempdir().unwrap();
        let config = SpoolConfig {
            dir: dir.path().join("spool"),
            max_bytes: DEFAULT_MAX_BYTES,
        };
        write_now(&config, "wrapper", &[span("a"), span("b")]).unwrap();
        let contents = read_spool(&config.dir).unwrap();
        let names: Vec<_> = contents.spans.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["a", "b"]);
        assert_eq!(spool_files(&config.dir).unwrap()[0].1.writer, "wrapper");

        let full = SpoolConfig {
            dir: config.dir.clone(),
            max_bytes: 10,
        };
        write_now(&full, "wrapper", &[span("c")]).unwrap();
        let contents = read_spool(&config.dir).unwrap();
        assert_eq!(contents.spans.len(), 2);
        assert_eq!(contents.dropped, 1);
    }

    #[test]
    fn borrowed_span_lines_equal_owned_ones() {
        let record = span("same");
        assert_eq!(
            serde_json::to_string(&SpoolEntryRef::Span(&record)).unwrap(),
            serde_json::to_string(&SpoolEntry::Span(record)).unwrap()
        );
    }

    #[test]
    fn disabled_sink_counts_drops() {
        let sink = SpanSink::disabled();
        sink.emit(span("x"));
        assert_eq!(sink.dropped(), 1);
    }

    #[test]
    fn unwritable_spool_is_an_error_naming_the_variable() {
        let dir = tempfile::tempdir().unwrap();
        let blocker = dir.path().join("file");
        fs::write(&blocker, b"").unwrap();
        let config = SpoolConfig {
            dir: blocker.join("spool"),
            max_bytes: 1,
        };
        let err = SpanSink::start(&config, "t").err().unwrap().to_string();
        assert!(err.contains(SPOOL_DIR_ENV), "{err}");
    }
}
