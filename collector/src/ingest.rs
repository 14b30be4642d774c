//! Ingest: moves spool lines into the store, exactly once, and compacts finished spool files.
//!
//! Each file is read from its stored offset; the spans read and the new offset are committed in one
//! transaction, which holds the chunks of many files (up to [`BATCH_SPANS`] span lines): a commit
//! per file would rewrite the same index pages once per file. Reader threads parse the files and
//! serialise their spans for the store while the calling thread writes, in file order. A file is *finished* once a later `seq` of the same writer exists or its writer pid
//! is gone; a finished file whose every line is stored is removed (compaction), which keeps the
//! spool bounded.

use std::collections::BTreeSet;
use std::io;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::sys::signal::kill;
use nix::unistd::Pid;
use shimtrace_span::spool::{self, ReadError, SpoolFileName, SpoolIssue};
use shimtrace_span::{DroppedSpans, SpoolEntry};

use crate::source::{SourceError, UnreadableSpool};
use crate::store::{FileOffset, Store, StoredSpan};

/// A batch is committed once it holds this many span lines (and at the end of a pass).
pub const BATCH_SPANS: u64 = 100_000;

/// Files each reader reads ahead of the store: bounds memory to a few files' spans.
const READ_AHEAD: usize = 2;
/// At most this many reader threads.
const MAX_READERS: usize = 4;

/// What one ingest pass did.
#[derive(Debug, Default, Clone)]
pub struct IngestReport {
    /// Span lines read (including ones already stored).
    pub spans_read: u64,
    /// Spans that were new to the store.
    pub spans_stored: u64,
    /// Spans the shims reported dropped, in the lines read.
    pub dropped: u64,
    /// Malformed lines skipped (and partial lines of dead writers, which can never complete).
    pub issues: Vec<SpoolIssue>,
    /// Spool files removed after full ingest.
    pub compacted: u64,
}

impl IngestReport {
    fn absorb(&mut self, other: IngestReport) {
        self.spans_read += other.spans_read;
        self.spans_stored += other.spans_stored;
        self.dropped += other.dropped;
        self.issues.extend(other.issues);
        self.compacted += other.compacted;
    }
}

/// Reads a spool directory into a store.
pub struct Ingester {
    store: Store,
    spool_dir: PathBuf,
    compact: bool,
}

/// Whether the writer of the spool file at `path` (named with its `pid`) may still write it: it
/// holds the file's lock, or that cannot be told, or its pid is alive. The lock answers across pid
/// namespaces (a collector in a pod sees no shim's pid); the pid answers for a writer that took no
/// lock. Pid reuse errs on "alive", which only delays compaction.
fn writer_alive(path: &Path, pid: u32) -> bool {
    spool::writer_holds(path) != Some(false) || pid_alive(pid)
}

/// Whether `pid` is a live process.
fn pid_alive(pid: u32) -> bool {
    let Ok(raw) = i32::try_from(pid) else {
        return false;
    };
    if raw <= 0 || matches!(kill(Pid::from_raw(raw), None), Err(Errno::ESRCH)) {
        return false;
    }
    // `kill(pid, 0)` also answers for a thread id: a writer's pid reused as a thread of another
    // process (containerd's, on a node) would keep its files forever. A live writer is a process.
    match std::fs::read_to_string(format!("/proc/{pid}/status")) {
        Ok(status) => status
            .lines()
            .find_map(|l| l.strip_prefix("Tgid:"))
            .is_none_or(|tgid| tgid.trim() == pid.to_string()),
        Err(_) => true,
    }
}

impl Ingester {
    /// `compact`: remove finished, fully ingested spool files.
    pub fn new(store: Store, spool_dir: &Path, compact: bool) -> Ingester {
        Ingester {
            store,
            spool_dir: spool_dir.to_path_buf(),
            compact,
        }
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn spool_dir(&self) -> &Path {
        &self.spool_dir
    }

    /// Ingests every spool file, then compacts what is finished.
    pub fn ingest_all(&mut self) -> Result<IngestReport, SourceError> {
        let files = spool::spool_files(&self.spool_dir).map_err(UnreadableSpool::from)?;
        let mut report = self.ingest_files(files.iter().map(|(path, _)| path.as_path()))?;
        if self.compact {
            report.absorb(self.compact_files(&files)?);
        }
        Ok(report)
    }

    /// Ingests the new complete lines of the spool files among `paths` (others are ignored), then
    /// compacts the spool.
    pub fn ingest_paths(&mut self, paths: &BTreeSet<PathBuf>) -> Result<IngestReport, SourceError> {
        let spool_dir = self.spool_dir.clone();
        let spool_files = paths.iter().filter(|path| {
            path.parent() == Some(spool_dir.as_path())
                && path
                    .file_name()
                    .and_then(|n| n.to_str())
                    .and_then(SpoolFileName::parse)
                    .is_some()
        });
        let mut report = self.ingest_files(spool_files.map(PathBuf::as_path))?;
        if self.compact {
            let files = spool::spool_files(&self.spool_dir).map_err(UnreadableSpool::from)?;
            report.absorb(self.compact_files(&files)?);
        }
        Ok(report)
    }

    /// Ingests the new complete lines of `paths`, in batches. A file that cannot be read becomes an
    /// issue instead of stopping ingest of the others; store errors stop it (the open batch rolls
    /// back, so every stored offset still matches the stored spans).
    fn ingest_files<'p>(
        &mut self,
        paths: impl IntoIterator<Item = &'p Path>,
    ) -> Result<IngestReport, SourceError> {
        let mut batch = self.store.begin_ingest()?;
        // Read once, up front: the batch holds the store's write lock, and a pass names each file
        // once, so only this pass moves these offsets.
        let mut files = Vec::new();
        for path in paths {
            if let Some(name) = path.file_name().and_then(|n| n.to_str()) {
                files.push((path, batch.file_offset(name)?));
            }
        }
        let files = &files;
        // Reader `r` reads files r, r + readers, ...; the writer takes them in turn, so spans are
        // stored in file order whatever the number of readers.
        let readers = std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .clamp(1, MAX_READERS)
            .min(files.len().max(1));
        let mut report = IngestReport::default();
        std::thread::scope(|scope| -> Result<(), SourceError> {
            let receivers: Vec<_> = (0..readers)
                .map(|r| {
                    let (tx, rx) = std::sync::mpsc::sync_channel(READ_AHEAD);
                    scope.spawn(move || {
                        for (path, from) in files.iter().skip(r).step_by(readers) {
                            // The receiver is gone once the writer stopped on an error.
                            if tx.send(read_new_lines(path, *from)).is_err() {
                                return;
                            }
                        }
                    });
                    rx
                })
                .collect();
            let in_file_order = (0..files.len()).map_while(|i| receivers[i % readers].recv().ok());
            for mut read in in_file_order {
                if let Some(chunk) = read.chunk.take() {
                    read.report.spans_stored =
                        batch.add_chunk(read.name, &chunk.spans, &chunk.dropped, chunk.to)?;
                }
                report.absorb(read.report);
                if batch.spans_added() >= BATCH_SPANS {
                    batch.commit_and_continue()?;
                }
            }
            Ok(())
        })?;
        batch.commit()?;
        Ok(report)
    }

    /// Removes finished spool files whose lines are all stored.
    fn compact_files(
        &mut self,
        files: &[(PathBuf, SpoolFileName)],
    ) -> Result<IngestReport, SourceError> {
        let mut report = IngestReport::default();
        for (path, name) in files {
            let later_exists = files
                .iter()
                .any(|(_, other)| other.writer_key() == name.writer_key() && other.seq > name.seq);
            let writer_gone = !later_exists && !writer_alive(path, name.pid);
            if !later_exists && !writer_gone {
                continue;
            }
            let Some(file_name) = path.file_name().and_then(|n| n.to_str()) else {
                continue;
            };
            // Only regular files are spool files; anything else is left alone (and reported by
            // ingest).
            let Some(size) = std::fs::symlink_metadata(path)
                .ok()
                .filter(|m| m.is_file())
                .map(|m| m.len())
            else {
                continue;
            };
            let at = self.store.file_offset(file_name)?;
            if at.offset < size {
                // Read what may have arrived since the last event before judging.
                report.absorb(self.ingest_files([path.as_path()])?);
            }
            let at = self.store.file_offset(file_name)?;
            if at.offset < size {
                // Only a dead writer's unterminated last line is given up: a tail that could not be
                // read, or that holds whole lines, waits for a later pass.
                if !writer_gone || !unterminated_tail(path, at.offset) {
                    continue;
                }
                // A dead writer's unterminated last line can never complete.
                report.issues.push(SpoolIssue {
                    file: path.clone(),
                    line: at.next_line,
                    error: format!(
                        "writer exited mid-line; {} trailing bytes discarded",
                        size - at.offset
                    ),
                });
            }
            // Remove first: if we crash before forgetting the offset, nothing is re-read.
            match std::fs::remove_file(path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => {
                    tracing::warn!(file = %path.display(), error = %e, "cannot remove ingested spool file; it stays until it can be");
                    continue;
                }
            }
            self.store.forget_file(file_name)?;
            report.compacted += 1;
        }
        Ok(report)
    }
}

/// Whether the file at `path` past `offset` could be read and holds no line end: a line its writer
/// never finished.
fn unterminated_tail(path: &Path, offset: u64) -> bool {
    use std::io::{Read, Seek, SeekFrom};
    let Ok(mut file) = spool::open_spool_file(path) else {
        return false;
    };
    if file.seek(SeekFrom::Start(offset)).is_err() {
        return false;
    }
    let mut buf = [0u8; 64 * 1024];
    loop {
        match file.read(&mut buf) {
            Ok(0) => return true,
            Ok(n) if buf[..n].contains(&b'\n') => return false,
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return false,
        }
    }
}

/// What a spool file holds past its stored offset, ready for the store.
struct FileRead<'p> {
    name: &'p str,
    report: IngestReport,
    chunk: Option<StoreChunk>,
}

struct StoreChunk {
    spans: Vec<StoredSpan>,
    dropped: Vec<DroppedSpans>,
    to: FileOffset,
}

/// Reads the complete lines of `path` past `from`. A file that cannot be read becomes an issue;
/// one that is gone (compacted since the event) or has nothing new becomes nothing.
fn read_new_lines(path: &Path, from: FileOffset) -> FileRead<'_> {
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default();
    let mut read = FileRead {
        name,
        report: IngestReport::default(),
        chunk: None,
    };
    let unreadable = |source: io::Error| IngestReport {
        issues: vec![SpoolIssue::file(
            path,
            format_args!("cannot read spool file, skipped for now: {source}"),
        )],
        ..IngestReport::default()
    };
    // Not followed if it is a link: only a regular file is a spool file.
    let size = match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_file() => m.len(),
        Ok(_) => {
            read.report = unreadable(match spool::open_spool_file(path) {
                Err(e) => e,
                Ok(_) => io::Error::other("not a regular file"),
            });
            return read;
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => return read,
        Err(source) => {
            read.report = unreadable(source);
            return read;
        }
    };
    let from = if size < from.offset {
        // Spool files only grow: a shorter file is a new file under an old name.
        FileOffset {
            offset: 0,
            next_line: 1,
        }
    } else {
        from
    };
    if size == from.offset {
        return read;
    }
    let mut spans = Vec::new();
    let mut dropped = Vec::new();
    let visited =
        spool::visit_file_from(
            path,
            from.offset,
            from.next_line,
            |entry, line| match entry {
                SpoolEntry::Span(span) => spans.push(StoredSpan::with_line(&span, line)),
                SpoolEntry::Dropped(d) => dropped.push(d),
            },
        );
    let chunk = match visited {
        Ok(chunk) => chunk,
        Err(e) if e.is_not_found() => return read,
        Err(ReadError { source, .. }) => {
            read.report = unreadable(source);
            return read;
        }
    };
    if chunk.end_offset == from.offset && chunk.issues.is_empty() {
        return read;
    }
    read.report.dropped = dropped.iter().map(|d| d.count).sum();
    read.report.spans_read = spans.len() as u64;
    read.report.issues = chunk.issues;
    read.chunk = Some(StoreChunk {
        spans,
        dropped,
        to: FileOffset {
            offset: chunk.end_offset,
            next_line: chunk.next_line,
        },
    });
    read
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_thread_is_no_live_writer_but_a_process_is() {
        assert!(pid_alive(std::process::id()));
        let (tx, rx) = std::sync::mpsc::channel();
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::spawn(move || {
            tx.send(nix::unistd::gettid().as_raw() as u32).unwrap();
            let _ = done_rx.recv();
        });
        let tid = rx.recv().unwrap();
        assert!(!pid_alive(tid), "thread {tid} taken for a writer");
        drop(done_tx);
        thread.join().unwrap();
    }
    use crate::trace::tests::container_trace;
    use shimtrace_span::{SpanRecord, TraceId};
    use std::io::Write;

    fn line(span: &SpanRecord) -> String {
        serde_json::to_string(&SpoolEntry::Span(span.clone())).unwrap() + "\n"
    }

    /// A fresh spool directory under `dir`.
    fn spool_in(dir: &Path) -> PathBuf {
        let spool = dir.join("spool");
        std::fs::create_dir(&spool).unwrap();
        spool
    }

    /// An ingester over `spool` with its store under `dir`.
    fn ingester(dir: &Path, spool: &Path, compact: bool) -> Ingester {
        Ingester::new(Store::open(&dir.join("db")).unwrap(), spool, compact)
    }

    /// A spool whose first file of this process is a directory (listing and stat work, reading
    /// fails), with the name of its second file and a trace to write there.
    fn spool_with_a_directory_first(dir: &Path) -> (PathBuf, PathBuf, Vec<SpanRecord>) {
        let spool = spool_in(dir);
        let me = std::process::id();
        std::fs::create_dir(spool.join(format!("proxy-{me}-1-0.jsonl"))).unwrap();
        let second = spool.join(format!("proxy-{me}-2-0.jsonl"));
        (spool, second, container_trace(TraceId([9; 16]), "c"))
    }

    #[test]
    fn growing_file_is_ingested_once_line_by_line() {
        let dir = tempfile::tempdir().unwrap();
        let spool = spool_in(dir.path());
        let me = std::process::id();
        let path = spool.join(format!("proxy-{me}-1-0.jsonl"));
        let spans = container_trace(TraceId([9; 16]), "c");
        let mut file = std::fs::File::create(&path).unwrap();
        file.write_all(line(&spans[0]).as_bytes()).unwrap();
        let partial = line(&spans[1]);
        file.write_all(&partial.as_bytes()[..10]).unwrap();

        let mut ingester = ingester(dir.path(), &spool, true);
        let r = ingester.ingest_all().unwrap();
        assert_eq!((r.spans_read, r.spans_stored, r.compacted), (1, 1, 0));

        file.write_all(&partial.as_bytes()[10..]).unwrap();
        file.write_all(b"broken\n").unwrap();
        for s in &spans[2..] {
            file.write_all(line(s).as_bytes()).unwrap();
        }
        let r = ingester.ingest_all().unwrap();
        assert_eq!(r.spans_stored, 6);
        assert_eq!(r.issues.len(), 1);
        // Our own pid is alive and there is no later seq: the file stays.
        assert!(path.exists());
        assert_eq!(ingester.ingest_all().unwrap().spans_read, 0);
        assert_eq!(ingester.store().span_count().unwrap(), 7);

        // Rotation finishes the file: it is compacted once fully stored.
        std::fs::write(spool.join(format!("proxy-{me}-1-1.jsonl")), "").unwrap();
        let r = ingester.ingest_all().unwrap();
        assert_eq!(r.compacted, 1);
        assert!(!path.exists());
        assert_eq!(ingester.store().span_count().unwrap(), 7);
    }

    #[test]
    fn many_files_are_stored_in_file_order() {
        let dir = tempfile::tempdir().unwrap();
        let spool = spool_in(dir.path());
        let mut want = Vec::new();
        for i in 0..9u8 {
            let spans = container_trace(TraceId([i + 1; 16]), &format!("c{i}"));
            let lines: String = spans.iter().map(line).collect();
            std::fs::write(spool.join(format!("proxy-99999999-{i}-0.jsonl")), lines).unwrap();
            want.extend(spans);
        }
        let mut ingester = ingester(dir.path(), &spool, false);
        let r = ingester.ingest_all().unwrap();
        assert_eq!((r.spans_read, r.spans_stored), (63, 63));
        assert_eq!(ingester.store().all_spans().unwrap(), want);
        assert_eq!(ingester.ingest_all().unwrap().spans_read, 0);
    }

    #[test]
    fn an_unreadable_file_is_reported_and_the_others_still_ingested() {
        let dir = tempfile::tempdir().unwrap();
        let (spool, second, spans) = spool_with_a_directory_first(dir.path());
        std::fs::write(second, line(&spans[0])).unwrap();
        let mut ingester = ingester(dir.path(), &spool, true);
        let r = ingester.ingest_all().unwrap();
        assert_eq!(r.spans_stored, 1);
        assert_eq!(r.issues.len(), 1);
        assert!(
            r.issues[0].error.contains("cannot read spool file"),
            "{}",
            r.issues[0]
        );
    }

    #[test]
    fn a_skipped_file_is_not_called_a_malformed_line_and_links_are_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let (spool, second, spans) = spool_with_a_directory_first(dir.path());
        let elsewhere = dir.path().join("elsewhere.jsonl");
        std::fs::write(&elsewhere, line(&spans[0])).unwrap();
        std::os::unix::fs::symlink(&elsewhere, second).unwrap();
        let mut ingester = ingester(dir.path(), &spool, true);
        let r = ingester.ingest_all().unwrap();
        assert_eq!(r.spans_stored, 0, "a link was followed");
        assert_eq!(r.issues.len(), 2, "{:?}", r.issues);
        for issue in &r.issues {
            let said = issue.to_string();
            assert!(!said.contains("malformed spool line"), "{said}");
            assert!(!said.contains(":0:"), "{said}");
        }
        assert!(elsewhere.exists());
    }

    #[test]
    fn dead_writer_files_are_compacted_with_the_partial_line_reported() {
        let dir = tempfile::tempdir().unwrap();
        let spool = spool_in(dir.path());
        // pid_max is at most 2^22, so this pid cannot exist.
        let path = spool.join("wrapper-99999999-1-0.jsonl");
        let spans = container_trace(TraceId([9; 16]), "c");
        std::fs::write(&path, line(&spans[0]) + "{\"type\":\"sp").unwrap();
        let mut ingester = ingester(dir.path(), &spool, true);
        let r = ingester.ingest_all().unwrap();
        assert_eq!((r.spans_stored, r.compacted, r.issues.len()), (1, 1, 1));
        assert!(r.issues[0].error.contains("mid-line"));
        assert!(!path.exists());
    }

    #[test]
    fn a_file_its_writer_holds_is_kept_whatever_its_pid_says() {
        let dir = tempfile::tempdir().unwrap();
        let spool = spool_in(dir.path());
        // A writer in another pid namespace: its pid means nothing here, its lock does.
        let path = spool.join("proxy-99999999-1-0.jsonl");
        let spans = container_trace(TraceId([9; 16]), "c");
        let mut writer = std::fs::File::create(&path).unwrap();
        spool::hold_for_writing(&writer).unwrap();
        writer.write_all(line(&spans[0]).as_bytes()).unwrap();
        let mut ingester = ingester(dir.path(), &spool, true);
        let r = ingester.ingest_all().unwrap();
        assert_eq!((r.spans_stored, r.compacted), (1, 0));
        assert!(path.exists());
        writer.write_all(line(&spans[1]).as_bytes()).unwrap();
        drop(writer);
        let r = ingester.ingest_all().unwrap();
        assert_eq!((r.spans_stored, r.compacted), (1, 1));
        assert!(!path.exists());
    }

    #[test]
    fn only_an_unterminated_tail_that_could_be_read_is_given_up() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, "a\nb").unwrap();
        assert!(unterminated_tail(&path, 2));
        assert!(!unterminated_tail(&path, 0), "a whole line is not given up");
        assert!(!unterminated_tail(&dir.path().join("gone"), 0));
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&path, &link).unwrap();
        assert!(!unterminated_tail(&link, 2), "a link is not read");
    }
}
