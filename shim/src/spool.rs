//! The spool writer: appends spans to the durable spool without ever blocking the caller, keeping
//! the layout and bounds described in [`shimtrace_span::spool`].

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::Serialize;

use shimtrace_span::clock;
use shimtrace_span::env::{SPOOL_DIR as SPOOL_DIR_ENV, SPOOL_MAX_BYTES as SPOOL_MAX_BYTES_ENV};
use shimtrace_span::spool::{
    self, DEFAULT_MAX_BYTES, DEFAULT_SPOOL_DIR, PENDING_SUFFIX, ROTATE_BYTES,
};
use shimtrace_span::{DroppedSpans, SpanRecord, SpoolEntry};

use crate::safe_fs::{self, Access, PrivateDir, SafeFsError};

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
    #[error("cannot use the spool directory: {0} (shimtrace writes only where no other user can; or set {SPOOL_DIR_ENV} to another directory)")]
    Dir(#[source] SafeFsError),
    #[error("cannot open a spool file: {0} (check that {SPOOL_DIR_ENV} is writable)")]
    OpenFile(#[source] SafeFsError),
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
    /// From `SHIMTRACE_SPOOL_DIR` and `SHIMTRACE_SPOOL_MAX_BYTES`, else the defaults. A size bound
    /// that is not a number of bytes is logged (WARN) and replaced by the default: the spool stays
    /// bounded, and the log says why it is not bounded as configured.
    pub fn from_env() -> SpoolConfig {
        let dir = std::env::var_os(SPOOL_DIR_ENV)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_SPOOL_DIR));
        let max_bytes = match std::env::var_os(SPOOL_MAX_BYTES_ENV).filter(|v| !v.is_empty()) {
            None => DEFAULT_MAX_BYTES,
            Some(value) => match value.to_str().and_then(|v| v.trim().parse().ok()) {
                Some(bytes) => bytes,
                None => {
                    tracing::warn!(
                        "{SPOOL_MAX_BYTES_ENV}={value:?} is not a number of bytes; \
                         bounding the spool at the default, {DEFAULT_MAX_BYTES} bytes"
                    );
                    DEFAULT_MAX_BYTES
                }
            },
        };
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
    dropped: DropCounts,
}

/// Why spans were dropped; each reason reaches the spool as its own `dropped` line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DropReason {
    /// The queue was full, the sink closed, or the spool over its size bound.
    Full,
    /// The spool's filesystem has no space left (`ENOSPC`).
    NoSpace,
    /// The spool's filesystem quota is exhausted (`EDQUOT`).
    Quota,
    /// Any other write error.
    WriteFailed,
}

impl DropReason {
    const ALL: [DropReason; 4] = [
        DropReason::Full,
        DropReason::NoSpace,
        DropReason::Quota,
        DropReason::WriteFailed,
    ];

    fn of_write_error(error: &io::Error) -> DropReason {
        match error.raw_os_error() {
            Some(libc::ENOSPC) => DropReason::NoSpace,
            Some(libc::EDQUOT) => DropReason::Quota,
            _ => DropReason::WriteFailed,
        }
    }

    fn text(self) -> &'static str {
        match self {
            DropReason::Full => "span buffer full or spool over its size bound",
            DropReason::NoSpace => "no space left on the spool's filesystem (ENOSPC)",
            DropReason::Quota => "disk quota exceeded on the spool's filesystem (EDQUOT)",
            DropReason::WriteFailed => "writing the spool file failed",
        }
    }
}

/// Spans dropped and not yet recorded in the spool, by reason.
#[derive(Debug, Default)]
struct DropCounts([AtomicU64; 4]);

impl DropCounts {
    fn add(&self, reason: DropReason, spans: u64) {
        self.0[reason as usize].fetch_add(spans, Ordering::Relaxed);
    }

    fn take(&self, reason: DropReason) -> u64 {
        self.0[reason as usize].swap(0, Ordering::Relaxed)
    }

    fn total(&self) -> u64 {
        self.0.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }
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
            dropped: DropCounts::default(),
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
                dropped: DropCounts::default(),
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
            self.shared.dropped.add(DropReason::Full, 1);
        }
    }

    /// Spans dropped so far and not yet recorded in the spool.
    pub fn dropped(&self) -> u64 {
        self.shared.dropped.total()
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
    let dropped = DropCounts::default();
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
    dir: PrivateDir,
    max_bytes: u64,
    stem: String,
    seq: u32,
    file: File,
    file_bytes: u64,
    /// A failed write may have left part of a line: the next write starts a new line first, so
    /// the fragment reads as one malformed line instead of corrupting the next.
    mid_line: bool,
    /// Bytes in the spool directory as of the last measurement plus what this writer added since;
    /// `None` until the first append (measured then, off the caller's thread).
    spool_bytes: Option<u64>,
    last_measured: Instant,
    writer: String,
}

impl SpoolFile {
    fn create(config: &SpoolConfig, writer: &str) -> Result<SpoolFile, SpoolError> {
        let dir = safe_fs::ensure_private_dir(&config.dir).map_err(SpoolError::Dir)?;
        let stem = format!(
            "{writer}-{}-{}",
            std::process::id(),
            clock::now_unix_nanos()
        );
        let file = open_spool_file(&dir, &stem, 0)?;
        Ok(SpoolFile {
            dir,
            max_bytes: config.max_bytes,
            stem,
            seq: 0,
            file,
            file_bytes: 0,
            mid_line: false,
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

    /// Appends whole lines in one write, or drops them if the spool is over its bound or the
    /// write fails (counted by reason).
    fn append_bounded(&mut self, bytes: &[u8], spans: u64, dropped: &DropCounts) {
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
            dropped.add(DropReason::Full, spans);
            return;
        }
        if let Err((e, written)) = self.append(bytes) {
            // Lines that reached the file before the failure are in the spool, not lost.
            let landed = bytes[..written].iter().filter(|b| **b == b'\n').count() as u64;
            dropped.add(DropReason::of_write_error(&e), spans.saturating_sub(landed));
        }
    }

    /// Appends `bytes`; on failure, the error and how many of `bytes` reached the file.
    fn append(&mut self, bytes: &[u8]) -> Result<(), (io::Error, usize)> {
        if self.file_bytes >= ROTATE_BYTES {
            if let Ok(next) = open_spool_file(&self.dir, &self.stem, self.seq + 1) {
                self.seq += 1;
                self.file = next;
                self.file_bytes = 0;
                self.mid_line = false;
            }
        }
        if self.mid_line {
            self.write_counted(b"\n").map_err(|(e, _)| (e, 0))?;
        }
        self.write_counted(bytes)
    }

    /// Writes all of `bytes`, keeping count of what reached the file even when a write fails
    /// part way (returned with the error).
    fn write_counted(&mut self, bytes: &[u8]) -> Result<(), (io::Error, usize)> {
        let mut written = 0;
        while written < bytes.len() {
            match self.file.write(&bytes[written..]) {
                Ok(0) => return Err((io::ErrorKind::WriteZero.into(), written)),
                Ok(n) => {
                    written += n;
                    self.file_bytes += n as u64;
                    if let Some(spool_bytes) = &mut self.spool_bytes {
                        *spool_bytes += n as u64;
                    }
                    self.mid_line = bytes[..written].last() != Some(&b'\n');
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err((e, written)),
            }
        }
        Ok(())
    }

    /// Writes the drop counts as lines, one per reason; a count line may exceed the bound, being
    /// tiny and the only way the loss becomes visible. A count that cannot be written (a full
    /// disk) waits for the next try.
    fn record_drops(&mut self, dropped: &DropCounts) {
        for reason in DropReason::ALL {
            let count = dropped.take(reason);
            if count == 0 {
                continue;
            }
            let entry = SpoolEntry::Dropped(DroppedSpans {
                count,
                writer: self.writer.clone(),
                reason: reason.text().into(),
                time_unix_nano: clock::now_unix_nanos(),
            });
            let mut line = serde_json::to_vec(&entry).unwrap_or_default();
            line.push(b'\n');
            if self.append(&line).is_err() {
                dropped.add(reason, count);
            }
        }
    }
}

/// Creates a writer's file, holding the writer's lock before the file has its name (see
/// [`shimtrace_span::spool`]). Names are the writer's own (pid and start time): the pending name is
/// created new, so a second writer of that name is refused before the rename could replace a file.
fn open_spool_file(dir: &PrivateDir, stem: &str, seq: u32) -> Result<File, SpoolError> {
    let name = format!("{stem}-{seq}.jsonl");
    let pending = format!("{name}{PENDING_SUFFIX}");
    let file = dir
        .open_file(Path::new(&pending), Access::CreateNew)
        .map_err(SpoolError::OpenFile)?;
    if let Err(e) = spool::hold_for_writing(&file) {
        // Readers then judge the file by its writer's pid alone, as for a writer without locks.
        tracing::debug!("spool file {name} is not locked: {e}");
    }
    if let Err(e) = dir.rename(Path::new(&pending), Path::new(&name)) {
        let _ = dir.remove(Path::new(&pending));
        return Err(SpoolError::OpenFile(e));
    }
    Ok(file)
}

/// The spool's size as another writer measured it less than [`USAGE_HINT_TTL`] ago, or as
/// measured now (and shared).
fn shared_spool_bytes(dir: &PrivateDir) -> u64 {
    read_usage_hint(dir, clock::now_unix_nanos()).unwrap_or_else(|| measure_spool_bytes(dir))
}

/// Measures the spool's size and shares it in [`USAGE_HINT_FILE`].
fn measure_spool_bytes(dir: &PrivateDir) -> u64 {
    let bytes = dir_bytes(dir.path());
    write_usage_hint(dir, bytes, clock::now_unix_nanos());
    bytes
}

/// The hint's byte count if it was measured within [`USAGE_HINT_TTL`] before `now_nanos`.
fn read_usage_hint(dir: &PrivateDir, now_nanos: u64) -> Option<u64> {
    // The hint is one short line; whatever else sits under its name is read no further.
    let mut text = String::new();
    dir.open_file(Path::new(USAGE_HINT_FILE), Access::Read)
        .ok()?
        .take(64)
        .read_to_string(&mut text)
        .ok()?;
    let (bytes, measured) = text.trim().split_once(' ')?;
    let (bytes, measured): (u64, u64) = (bytes.parse().ok()?, measured.parse().ok()?);
    let age = now_nanos.checked_sub(measured)?;
    (age < USAGE_HINT_TTL.as_nanos() as u64).then_some(bytes)
}

/// Writes the hint in place, fixed width: a reader racing a writer sees the old text, the new one
/// or one that does not parse (and then measures), never a wrong number of bytes with a fresh age.
fn write_usage_hint(dir: &PrivateDir, bytes: u64, now_nanos: u64) {
    use std::os::unix::fs::FileExt;
    let line = format!("{bytes:020} {now_nanos:020}\n");
    if let Ok(file) = dir.open_file(Path::new(USAGE_HINT_FILE), Access::Shared) {
        let _ = file.write_all_at(line.as_bytes(), 0);
    }
}

/// Total size of the regular files in `dir` (0 if unreadable).
fn dir_bytes(dir: &Path) -> u64 {
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
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};

    fn private(dir: &Path) -> PrivateDir {
        PrivateDir::open(dir).unwrap()
    }

    /// A spool in `dir` bounded to `max_bytes`.
    fn spool_config(dir: &Path, max_bytes: u64) -> SpoolConfig {
        SpoolConfig {
            dir: dir.to_path_buf(),
            max_bytes,
        }
    }

    fn span(name: &str) -> SpanRecord {
        SpanRecord::new(TraceId::random(), SpanId::random(), name, 10, 20)
    }

    #[test]
    fn sink_writes_mode_0600_lines_that_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let config = spool_config(&dir.path().join("spool"), DEFAULT_MAX_BYTES);
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
        let config = spool_config(dir.path(), 300);
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
        let config = spool_config(dir.path(), 1_000_000);
        // Another writer found the spool full a moment ago: this one believes it, without a scan.
        write_usage_hint(&private(dir.path()), 1_000_000, clock::now_unix_nanos());
        let sink = SpanSink::start(&config, "test").unwrap();
        sink.emit(span("believed-full"));
        sink.shutdown(Duration::from_secs(5));
        let contents = read_spool(&config.dir).unwrap();
        assert!(contents.spans.is_empty());
        assert_eq!(contents.dropped, 1);

        // The same claim, older than the TTL: measured again, found nearly empty, written.
        let stale = clock::now_unix_nanos() - USAGE_HINT_TTL.as_nanos() as u64 - 1;
        write_usage_hint(&private(dir.path()), 1_000_000, stale);
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
        let measured = read_usage_hint(&private(dir.path()), clock::now_unix_nanos()).unwrap();
        assert!(measured < 1_000, "the rescan shared {measured} bytes");
    }

    #[test]
    fn usage_hints_that_do_not_parse_or_come_from_the_future_are_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let now = 10_000_000_000;
        assert_eq!(read_usage_hint(&private(dir.path()), now), None);
        fs::write(dir.path().join(USAGE_HINT_FILE), "12 x\n").unwrap();
        assert_eq!(read_usage_hint(&private(dir.path()), now), None);
        write_usage_hint(&private(dir.path()), 42, now + 1);
        assert_eq!(read_usage_hint(&private(dir.path()), now), None);
        write_usage_hint(&private(dir.path()), 42, now - 1);
        assert_eq!(read_usage_hint(&private(dir.path()), now), Some(42));
        // A shorter number written over a longer one leaves no digits behind.
        write_usage_hint(&private(dir.path()), 7, now - 1);
        assert_eq!(read_usage_hint(&private(dir.path()), now), Some(7));
    }

    #[test]
    fn written_now_reads_back_and_over_the_bound_is_counted() {
        let dir = tempfile::tempdir().unwrap();
        let config = spool_config(&dir.path().join("spool"), DEFAULT_MAX_BYTES);
        write_now(&config, "wrapper", &[span("a"), span("b")]).unwrap();
        let contents = read_spool(&config.dir).unwrap();
        let names: Vec<_> = contents.spans.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["a", "b"]);
        assert_eq!(spool_files(&config.dir).unwrap()[0].1.writer, "wrapper");

        let full = spool_config(&config.dir, 10);
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

    /// Runs `work` on a thread and fails the test if it has not finished within `limit` (a
    /// writer stuck in `open` on a FIFO never would).
    fn finishes_within<T: Send + 'static>(
        limit: Duration,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> T {
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(work());
        });
        rx.recv_timeout(limit)
            .expect("still blocked: a FIFO or a link was followed")
    }

    fn private_dir(path: &Path) {
        fs::DirBuilder::new().mode(0o700).create(path).unwrap();
    }

    #[test]
    fn a_symlinked_spool_dir_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("real");
        private_dir(&real);
        std::os::unix::fs::symlink(&real, dir.path().join("spool")).unwrap();
        let config = spool_config(&dir.path().join("spool"), DEFAULT_MAX_BYTES);
        let err = write_now(&config, "wrapper", &[span("a")]).unwrap_err();
        assert!(err.to_string().contains("symbolic link"), "{err}");
        assert!(SpanSink::start(&config, "proxy").is_err());
        assert_eq!(fs::read_dir(&real).unwrap().count(), 0);
    }

    #[test]
    fn a_spool_dir_others_can_write_is_refused() {
        for mode in [0o1777, 0o777, 0o770, 0o702] {
            let dir = tempfile::tempdir().unwrap();
            let spool = dir.path().join("spool");
            private_dir(&spool);
            fs::set_permissions(&spool, fs::Permissions::from_mode(mode)).unwrap();
            let config = spool_config(&spool, DEFAULT_MAX_BYTES);
            let err = write_now(&config, "wrapper", &[span("a")]).unwrap_err();
            assert!(err.to_string().contains("writable by"), "{mode:o}: {err}");
            assert_eq!(fs::read_dir(&spool).unwrap().count(), 0, "{mode:o}");
        }
    }

    #[test]
    fn a_spool_dir_of_another_user_is_refused() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipping: giving a directory to another user needs root");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let spool = dir.path().join("spool");
        private_dir(&spool);
        std::os::unix::fs::chown(&spool, Some(65534), Some(65534)).unwrap();
        let config = spool_config(&spool, DEFAULT_MAX_BYTES);
        let err = write_now(&config, "wrapper", &[span("a")]).unwrap_err();
        assert!(err.to_string().contains("owned by"), "{err}");
        assert_eq!(fs::read_dir(&spool).unwrap().count(), 0);
    }

    #[test]
    fn a_link_in_place_of_the_usage_hint_is_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let spool = dir.path().join("spool");
        private_dir(&spool);
        let victim = dir.path().join("victim");
        fs::write(&victim, "precious contents, not a usage hint at all\n").unwrap();
        std::os::unix::fs::symlink(&victim, spool.join(USAGE_HINT_FILE)).unwrap();
        let config = spool_config(&spool, DEFAULT_MAX_BYTES);
        write_now(&config, "wrapper", &[span("a")]).unwrap();
        assert_eq!(
            fs::read_to_string(&victim).unwrap(),
            "precious contents, not a usage hint at all\n"
        );
        assert_eq!(read_spool(&spool).unwrap().spans.len(), 1);
    }

    #[test]
    fn a_fifo_in_place_of_the_usage_hint_does_not_block_a_writer() {
        let dir = tempfile::tempdir().unwrap();
        let spool = dir.path().join("spool");
        private_dir(&spool);
        nix::unistd::mkfifo(
            &spool.join(USAGE_HINT_FILE),
            nix::sys::stat::Mode::from_bits_truncate(0o600),
        )
        .unwrap();
        let config = spool_config(&spool, DEFAULT_MAX_BYTES);
        finishes_within(Duration::from_secs(10), move || {
            write_now(&config, "wrapper", &[span("a")]).unwrap();
        });
        assert_eq!(read_spool(&spool).unwrap().spans.len(), 1);
    }

    #[test]
    fn a_writer_holds_each_file_until_it_closes_or_rotates() {
        let dir = tempfile::tempdir().unwrap();
        let config = spool_config(&dir.path().join("spool"), DEFAULT_MAX_BYTES);
        let mut file = SpoolFile::create(&config, "proxy").unwrap();
        let first = spool_files(&config.dir).unwrap()[0].0.clone();
        assert_eq!(spool::writer_holds(&first), Some(true));
        // Rotated: the next file is held too (the writer keeps only its newest file open).
        file.file_bytes = ROTATE_BYTES;
        let mut batch = Vec::new();
        push_line(&mut batch, &span("a"));
        file.append_bounded(&batch, 1, &DropCounts::default());
        let files = spool_files(&config.dir).unwrap();
        assert_eq!(files.len(), 2);
        assert_eq!(spool::writer_holds(&files[1].0), Some(true));
        assert_eq!(spool::writer_holds(&first), Some(false));
        let names: Vec<_> = fs::read_dir(&config.dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert!(
            !names.iter().any(|n| n.ends_with(PENDING_SUFFIX)),
            "{names:?}"
        );
        drop(file);
        assert_eq!(spool::writer_holds(&files[1].0), Some(false));
    }

    #[test]
    fn a_full_filesystem_is_recorded_as_its_own_drop_reason() {
        let dir = tempfile::tempdir().unwrap();
        let config = spool_config(&dir.path().join("spool"), DEFAULT_MAX_BYTES);
        let mut file = SpoolFile::create(&config, "proxy").unwrap();
        let real = std::mem::replace(
            &mut file.file,
            fs::OpenOptions::new()
                .write(true)
                .open("/dev/full")
                .unwrap(),
        );
        let dropped = DropCounts::default();
        let mut batch = Vec::new();
        push_line(&mut batch, &span("lost"));
        file.append_bounded(&batch, 1, &dropped);
        // The drop count cannot be written to a full disk either: it waits for space.
        file.record_drops(&dropped);
        file.file = real;
        file.record_drops(&dropped);
        let text = fs::read_to_string(&spool_files(&config.dir).unwrap()[0].0).unwrap();
        let entry: SpoolEntry = serde_json::from_str(text.trim()).unwrap();
        let SpoolEntry::Dropped(dropped) = entry else {
            panic!("not a drop line: {text}");
        };
        assert_eq!(dropped.count, 1);
        assert!(dropped.reason.contains("ENOSPC"), "{}", dropped.reason);
    }

    #[test]
    fn a_write_cut_short_leaves_one_bad_line_not_two() {
        let dir = tempfile::tempdir().unwrap();
        let config = spool_config(&dir.path().join("spool"), DEFAULT_MAX_BYTES);
        let mut file = SpoolFile::create(&config, "proxy").unwrap();
        // A non-blocking pipe of one page that nobody reads: a longer write stops part way, as a
        // write to a filling disk can.
        let (read_end, write_end) = nix::unistd::pipe().unwrap();
        let flags = nix::fcntl::OFlag::O_NONBLOCK;
        nix::fcntl::fcntl(write_end.as_raw_fd(), nix::fcntl::F_SETFL(flags)).unwrap();
        nix::fcntl::fcntl(write_end.as_raw_fd(), nix::fcntl::F_SETPIPE_SZ(4096)).unwrap();
        let real = std::mem::replace(&mut file.file, File::from(write_end));
        let dropped = DropCounts::default();
        let mut batch = Vec::new();
        while batch.len() < 8192 {
            push_line(&mut batch, &span("cut"));
        }
        let lines = batch.iter().filter(|b| **b == b'\n').count() as u64;
        file.append_bounded(&batch, lines, &dropped);
        assert!(file.mid_line);
        let mut cut = vec![0u8; 8192];
        let n = nix::unistd::read(read_end.as_raw_fd(), &mut cut).unwrap();
        // What reached the file before the write failed, then the next append.
        file.file = real;
        file.file.write_all(&cut[..n]).unwrap();
        let mut next = Vec::new();
        push_line(&mut next, &span("after"));
        file.append_bounded(&next, 1, &dropped);
        let contents = read_spool(&config.dir).unwrap();
        let names: Vec<&str> = contents.spans.iter().map(|s| s.name.as_str()).collect();
        assert!(names.ends_with(&["after"]), "{names:?}");
        assert_eq!(contents.issues.len(), 1, "{:?}", contents.issues);
        // Each line of the cut batch is either in the spool or counted as dropped, never both.
        let landed = names.iter().filter(|n| **n == "cut").count() as u64;
        assert!(landed > 0 && landed < lines, "{landed} of {lines}");
        assert_eq!(landed + dropped.total(), lines);
    }

    /// Captures what the code under test logs at WARN and above.
    fn warnings_of(work: impl FnOnce()) -> String {
        #[derive(Clone, Default)]
        struct Buffer(Arc<Mutex<Vec<u8>>>);
        impl Write for Buffer {
            fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(bytes);
                Ok(bytes.len())
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let buffer = Buffer::default();
        let writer = buffer.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .with_max_level(tracing::Level::WARN)
            .finish();
        tracing::subscriber::with_default(subscriber, work);
        let bytes = buffer.0.lock().unwrap().clone();
        String::from_utf8(bytes).unwrap()
    }

    #[test]
    fn a_size_bound_that_does_not_parse_is_warned_about_then_defaulted() {
        // The only test that sets this variable; the others build their configs by hand.
        for bad in ["garbage", "-1", "12 MiB"] {
            std::env::set_var(SPOOL_MAX_BYTES_ENV, bad);
            let mut config = None;
            let warned = warnings_of(|| config = Some(SpoolConfig::from_env()));
            assert_eq!(config.unwrap().max_bytes, DEFAULT_MAX_BYTES);
            assert!(
                warned.contains(SPOOL_MAX_BYTES_ENV) && warned.contains(bad),
                "{bad}: {warned:?}"
            );
        }
        std::env::set_var(SPOOL_MAX_BYTES_ENV, "4096");
        let mut config = None;
        let warned = warnings_of(|| config = Some(SpoolConfig::from_env()));
        std::env::remove_var(SPOOL_MAX_BYTES_ENV);
        assert_eq!(config.unwrap().max_bytes, 4096);
        assert_eq!(warned, "");
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
