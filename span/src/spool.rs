//! The spool as readers see it: where it is, how its files are named, and how to read their lines.
//!
//! Layout and contract (writers keep it, the collector relies on it):
//! - each writing process owns its files, named `<writer>-<pid>-<start-nanos>-<seq>.jsonl`, mode 0600;
//!   nobody else appends to them;
//! - a file only ever grows, by whole lines; a line without its final `\n` is still being written;
//! - a writer holds an exclusive `flock` on each file it may still write, from before the file
//!   has its name (it is created under [`PENDING_SUFFIX`] and renamed once locked) until the
//!   writer exits ([`hold_for_writing`], [`writer_holds`]). A lock is seen from any pid namespace
//!   that shares the directory, where a writer's pid may mean nothing (a collector in a pod). A
//!   writer killed between creating and renaming leaves an empty `*.jsonl.new`, which readers skip;
//! - a writer rotates to `seq + 1` once a file passes [`ROTATE_BYTES`]; so a file is finished once a
//!   later `seq` of the same writer exists, or no writer holds it and its writer pid is gone, and
//!   may then be removed after ingest;
//! - the directory is bounded by `SHIMTRACE_SPOOL_MAX_BYTES`: over it, spans are dropped and counted,
//!   and the count is written as a `dropped` line as soon as the spool can take it (or at exit).
//!
//! Readers take nothing on trust that a damaged or tampered spool could hold: only regular files
//! are read (a link is not followed, a FIFO not waited on), a line longer than [`MAX_LINE_BYTES`]
//! is skipped without being held in memory, and an entry that cannot be read is reported and
//! skipped while the rest of the spool is read.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Seek, SeekFrom};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::{SpanRecord, SpoolEntry};

/// Default spool directory; containerd passes `SHIMTRACE_SPOOL_DIR` through to shims.
pub const DEFAULT_SPOOL_DIR: &str = "/var/lib/shimtrace/spool";
/// Default bound on the whole spool directory.
pub const DEFAULT_MAX_BYTES: u64 = 256 * 1024 * 1024;
/// A writer starts a new file past this size so finished files can be compacted.
pub const ROTATE_BYTES: u64 = 8 * 1024 * 1024;
/// Appended to a spool file's name while its writer creates and locks it; readers skip such names.
pub const PENDING_SUFFIX: &str = ".new";

/// Takes the writer's lock on a spool file it has just created (see the module docs); held until
/// the file is closed, which a process's exit does however it ends.
pub fn hold_for_writing(file: &File) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: flock(2) on a descriptor `file` owns and keeps open; no memory is passed.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Whether a writer holds the spool file at `path` ([`hold_for_writing`]): `None` when that cannot
/// be told (the file cannot be opened), which a caller about to remove the file must take as "held".
pub fn writer_holds(path: &Path) -> Option<bool> {
    use std::os::fd::AsRawFd;
    let file = open_spool_file(path).ok()?;
    // A shared lock is refused while the writer holds its exclusive one; taken, it goes with `file`.
    // Where locks do not work (ENOLCK on some network filesystems) no writer holds one either:
    // `false`, and the caller asks the pid.
    // SAFETY: flock(2) on a descriptor `file` owns and keeps open; no memory is passed.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_SH | libc::LOCK_NB) } == 0 {
        return Some(false);
    }
    Some(io::Error::last_os_error().raw_os_error() == Some(libc::EWOULDBLOCK))
}
/// Longest spool line a reader accepts; a span line is a few KiB. Longer lines are skipped (and
/// reported) without being read into memory.
pub const MAX_LINE_BYTES: usize = 4 * 1024 * 1024;

/// A spool directory or file that could not be read.
#[derive(Debug, thiserror::Error)]
#[error("cannot read spool {path}: {source}")]
pub struct ReadError {
    pub path: PathBuf,
    #[source]
    pub source: io::Error,
}

impl ReadError {
    /// Nothing is there (yet): a spool directory no writer has made.
    pub fn is_not_found(&self) -> bool {
        self.source.kind() == io::ErrorKind::NotFound
    }
}

/// The parts of a spool file name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpoolFileName {
    pub writer: String,
    pub pid: u32,
    pub start_nanos: u64,
    pub seq: u32,
}

impl SpoolFileName {
    /// Parses `<writer>-<pid>-<start-nanos>-<seq>.jsonl`; `None` for any other file.
    pub fn parse(name: &str) -> Option<SpoolFileName> {
        let stem = name.strip_suffix(".jsonl")?;
        let mut parts = stem.rsplitn(4, '-');
        let seq = parts.next()?.parse().ok()?;
        let start_nanos = parts.next()?.parse().ok()?;
        let pid = parts.next()?.parse().ok()?;
        let writer = parts.next()?.to_string();
        Some(SpoolFileName {
            writer,
            pid,
            start_nanos,
            seq,
        })
    }

    /// The files of one writer process share this key.
    pub fn writer_key(&self) -> (String, u32, u64) {
        (self.writer.clone(), self.pid, self.start_nanos)
    }
}

/// The spool files in `dir`, oldest writer first, then by sequence.
pub fn spool_files(dir: &Path) -> Result<Vec<(PathBuf, SpoolFileName)>, ReadError> {
    let entries = fs::read_dir(dir).map_err(|source| ReadError {
        path: dir.to_path_buf(),
        source,
    })?;
    let mut files: Vec<(PathBuf, SpoolFileName)> = entries
        .filter_map(Result::ok)
        .filter_map(|e| {
            let name = SpoolFileName::parse(e.file_name().to_str()?)?;
            Some((e.path(), name))
        })
        .collect();
    files.sort_by(|a, b| {
        (a.1.start_nanos, a.1.pid, &a.1.writer, a.1.seq).cmp(&(
            b.1.start_nanos,
            b.1.pid,
            &b.1.writer,
            b.1.seq,
        ))
    });
    Ok(files)
}

/// A spool line that could not be understood, or a spool file that could not be read; reported,
/// then skipped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpoolIssue {
    pub file: PathBuf,
    /// The line skipped (1-based); 0 when the whole file was skipped.
    pub line: u64,
    pub error: String,
}

impl SpoolIssue {
    /// The whole of `file` was skipped, because of `error`.
    pub fn file(file: &Path, error: impl std::fmt::Display) -> SpoolIssue {
        SpoolIssue {
            file: file.to_path_buf(),
            line: 0,
            error: error.to_string(),
        }
    }
}

/// Issues are printed on terminals, and a file name or a parser's message may quote what a spool
/// holds: control characters are shown escaped.
impl std::fmt::Display for SpoolIssue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let file = escape_controls(&self.file.to_string_lossy());
        let error = escape_controls(&self.error);
        if self.line == 0 {
            return write!(f, "{file}: skipped spool file: {error}");
        }
        write!(
            f,
            "{file}:{}: skipped malformed spool line: {error}",
            self.line
        )
    }
}

fn escape_controls(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// Opens a spool file for reading if it is a regular file: a link is not followed (whoever could
/// plant one could point it at `/dev/zero` or at a file of fake spans) and a FIFO is not waited on.
/// A refusal is an error of kind `InvalidInput` saying what the entry is.
pub fn open_spool_file(path: &Path) -> io::Result<File> {
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| match e.raw_os_error() {
            Some(libc::ELOOP) => not_regular("a symbolic link (not followed)"),
            _ => e,
        })?;
    let kind = file.metadata()?.file_type();
    if !kind.is_file() {
        let what = if kind.is_fifo() {
            "a FIFO"
        } else if kind.is_dir() {
            "a directory"
        } else if kind.is_socket() {
            "a socket"
        } else if kind.is_char_device() || kind.is_block_device() {
            "a device"
        } else {
            "not a regular file"
        };
        return Err(not_regular(what));
    }
    Ok(file)
}

fn not_regular(what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        format!("{what}, not a regular file"),
    )
}

/// What one read of a spool file produced.
#[derive(Debug, Default)]
pub struct FileChunk {
    pub entries: Vec<SpoolEntry>,
    pub issues: Vec<SpoolIssue>,
    /// Byte offset just past the last complete line read; resume from here.
    pub end_offset: u64,
    /// Line number (1-based) of the next line after `end_offset`.
    pub next_line: u64,
}

/// Reads complete lines of `path` from `offset` (whose line number is `first_line`); a trailing line
/// without `\n` is left for a later read, since its writer may still be writing it.
pub fn read_file_from(path: &Path, offset: u64, first_line: u64) -> Result<FileChunk, ReadError> {
    let mut entries = Vec::new();
    let mut chunk = visit_file_from(path, offset, first_line, |entry, _| entries.push(entry))?;
    chunk.entries = entries;
    Ok(chunk)
}

/// [`read_file_from`], handing each entry to `each` together with its line (without the `\n`)
/// instead of collecting them: a reader that keeps the line need not serialise the entry again.
pub fn visit_file_from(
    path: &Path,
    offset: u64,
    first_line: u64,
    mut each: impl FnMut(SpoolEntry, &[u8]),
) -> Result<FileChunk, ReadError> {
    let read_err = |source| ReadError {
        path: path.to_path_buf(),
        source,
    };
    visit_bounded(path, offset, first_line, MAX_LINE_BYTES, &mut each).map_err(read_err)
}

fn visit_bounded(
    path: &Path,
    offset: u64,
    first_line: u64,
    max_line: usize,
    each: &mut impl FnMut(SpoolEntry, &[u8]),
) -> io::Result<FileChunk> {
    let mut file = open_spool_file(path)?;
    file.seek(SeekFrom::Start(offset))?;
    let mut reader = BufReader::with_capacity(256 * 1024, file);
    let mut chunk = FileChunk {
        end_offset: offset,
        next_line: first_line,
        ..FileChunk::default()
    };
    let mut line = Vec::new();
    loop {
        line.clear();
        let read = read_line_bounded(&mut reader, &mut line, max_line)?;
        if !read.complete {
            break;
        }
        let number = chunk.next_line;
        chunk.end_offset += read.bytes;
        chunk.next_line += 1;
        if read.too_long {
            chunk.issues.push(SpoolIssue {
                file: path.to_path_buf(),
                line: number,
                error: format!("longer than {max_line} bytes"),
            });
            continue;
        }
        let text = &line[..line.len() - 1];
        if text.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        match serde_json::from_slice::<SpoolEntry>(text) {
            Ok(entry) => each(entry, text),
            Err(e) => chunk.issues.push(SpoolIssue {
                file: path.to_path_buf(),
                line: number,
                error: e.to_string(),
            }),
        }
    }
    Ok(chunk)
}

/// How [`read_line_bounded`] ended.
struct LineRead {
    /// Bytes consumed, newline included.
    bytes: u64,
    /// A newline ended the line (else the file ended first: a line still being written).
    complete: bool,
    /// The line was longer than allowed; its bytes were consumed but not kept.
    too_long: bool,
}

/// Reads one line (with its `\n`) into `line`, keeping at most `max` bytes of it in memory.
fn read_line_bounded(
    reader: &mut impl BufRead,
    line: &mut Vec<u8>,
    max: usize,
) -> io::Result<LineRead> {
    let mut read = LineRead {
        bytes: 0,
        complete: false,
        too_long: false,
    };
    loop {
        let buf = match reader.fill_buf() {
            Ok(buf) => buf,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if buf.is_empty() {
            return Ok(read);
        }
        let (take, complete) = match buf.iter().position(|b| *b == b'\n') {
            Some(i) => (i + 1, true),
            None => (buf.len(), false),
        };
        if !read.too_long && line.len() + take <= max + 1 {
            line.extend_from_slice(&buf[..take]);
        } else {
            read.too_long = true;
            line.clear();
        }
        reader.consume(take);
        read.bytes += take as u64;
        if complete {
            read.complete = true;
            return Ok(read);
        }
    }
}

/// Everything in a spool directory.
#[derive(Debug, Default)]
pub struct SpoolContents {
    pub spans: Vec<SpanRecord>,
    pub dropped: u64,
    pub issues: Vec<SpoolIssue>,
}

/// Reads every complete line of every spool file in `dir`. Only a directory that cannot be listed
/// is an error; a file that cannot be read is an issue, and the others are still read.
pub fn read_spool(dir: &Path) -> Result<SpoolContents, ReadError> {
    let mut contents = SpoolContents::default();
    for (path, _) in spool_files(dir)? {
        let chunk = match read_file_from(&path, 0, 1) {
            Ok(chunk) => chunk,
            // A file compacted away between listing and reading is not an error.
            Err(ReadError { source, .. }) if source.kind() == io::ErrorKind::NotFound => continue,
            Err(ReadError { source, .. }) => {
                contents.issues.push(SpoolIssue::file(&path, source));
                continue;
            }
        };
        contents.issues.extend(chunk.issues);
        for entry in chunk.entries {
            match entry {
                SpoolEntry::Span(span) => contents.spans.push(span),
                SpoolEntry::Dropped(dropped) => contents.dropped += dropped.count,
            }
        }
    }
    Ok(contents)
}

/// [`read_spool`] of a spool that may not be there yet: a directory no writer has made holds no
/// spans. Any other read error is still an error.
pub fn read_spool_if_made(dir: &Path) -> Result<SpoolContents, ReadError> {
    match read_spool(dir) {
        Err(e) if e.is_not_found() => Ok(SpoolContents::default()),
        read => read,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{SpanId, TraceId};

    fn span(name: &str) -> SpanRecord {
        SpanRecord::new(TraceId::random(), SpanId::random(), name, 10, 20)
    }

    #[test]
    fn malformed_and_partial_lines_are_reported_or_left_not_fatal() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("proxy-1-2-0.jsonl");
        let good = serde_json::to_string(&SpoolEntry::Span(span("ok"))).unwrap();
        fs::write(&path, format!("{good}\nnot json\n{good}\n{{\"type\":\"sp")).unwrap();
        let chunk = read_file_from(&path, 0, 1).unwrap();
        assert_eq!(chunk.entries.len(), 2);
        assert_eq!(chunk.issues.len(), 1);
        assert_eq!(chunk.issues[0].line, 2);
        assert_eq!(chunk.next_line, 4);
        let total = fs::metadata(&path).unwrap().len();
        assert_eq!(chunk.end_offset, total - "{\"type\":\"sp".len() as u64);
        let rest = read_file_from(&path, chunk.end_offset, chunk.next_line).unwrap();
        assert!(rest.entries.is_empty() && rest.issues.is_empty());
    }

    /// `read_spool(dir)` on a thread, failing the test if it is still blocked after a while.
    fn read_spool_within_a_while(dir: &Path) -> Result<SpoolContents, ReadError> {
        let dir = dir.to_path_buf();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(read_spool(&dir));
        });
        rx.recv_timeout(std::time::Duration::from_secs(10))
            .expect("reading the spool blocked")
    }

    fn good_file(dir: &Path) {
        let good = serde_json::to_string(&SpoolEntry::Span(span("ok"))).unwrap();
        fs::write(dir.join("proxy-1-1-0.jsonl"), format!("{good}\n")).unwrap();
    }

    #[test]
    fn a_fifo_named_like_a_spool_file_is_skipped_not_waited_on() {
        let dir = tempfile::tempdir().unwrap();
        good_file(dir.path());
        let fifo = dir.path().join("proxy-2-2-0.jsonl");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let contents = read_spool_within_a_while(dir.path()).unwrap();
        assert_eq!(contents.spans.len(), 1);
        assert_eq!(contents.issues.len(), 1, "{:?}", contents.issues);
        assert_eq!(contents.issues[0].file, fifo);
        let said = contents.issues[0].to_string();
        assert!(
            said.contains("FIFO") && !said.contains("malformed"),
            "{said}"
        );
    }

    #[test]
    fn directories_and_links_named_like_spool_files_are_skipped_with_an_issue() {
        let dir = tempfile::tempdir().unwrap();
        good_file(dir.path());
        fs::create_dir(dir.path().join("proxy-3-3-0.jsonl")).unwrap();
        // A link to a file of good spans: still not followed, whoever planted it.
        let elsewhere = tempfile::tempdir().unwrap();
        good_file(elsewhere.path());
        std::os::unix::fs::symlink(
            elsewhere.path().join("proxy-1-1-0.jsonl"),
            dir.path().join("proxy-4-4-0.jsonl"),
        )
        .unwrap();
        let contents = read_spool_within_a_while(dir.path()).unwrap();
        assert_eq!(contents.spans.len(), 1);
        let said: Vec<String> = contents.issues.iter().map(|i| i.to_string()).collect();
        assert_eq!(said.len(), 2, "{said:?}");
        assert!(said[0].contains("proxy-3-3-0.jsonl") && said[0].contains("directory"));
        assert!(said[1].contains("proxy-4-4-0.jsonl") && said[1].contains("symbolic link"));
    }

    #[test]
    fn a_link_to_an_endless_device_is_not_read() {
        let dir = tempfile::tempdir().unwrap();
        good_file(dir.path());
        std::os::unix::fs::symlink("/dev/zero", dir.path().join("proxy-5-5-0.jsonl")).unwrap();
        let contents = read_spool_within_a_while(dir.path()).unwrap();
        assert_eq!(contents.spans.len(), 1);
        assert_eq!(contents.issues.len(), 1);
    }

    #[test]
    fn a_line_over_the_bound_is_skipped_and_reported_and_the_next_one_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("proxy-1-2-0.jsonl");
        let good = serde_json::to_string(&SpoolEntry::Span(span("ok"))).unwrap();
        let max = good.len() + 10;
        let long = "x".repeat(max + 1);
        let partial = "y".repeat(3 * max);
        fs::write(
            &path,
            format!("{long}\n{good}\n{long}{long}\n{good}\n{partial}"),
        )
        .unwrap();
        let mut names = Vec::new();
        let chunk = visit_bounded(&path, 0, 1, max, &mut |e, _| {
            if let SpoolEntry::Span(s) = e {
                names.push(s.name)
            }
        })
        .unwrap();
        assert_eq!(names, ["ok", "ok"]);
        let lines: Vec<u64> = chunk.issues.iter().map(|i| i.line).collect();
        assert_eq!(lines, [1, 3]);
        assert!(chunk.issues[0].error.contains("longer than"));
        // The unfinished last line is left for later, however long.
        assert_eq!(chunk.next_line, 5);
        let total = fs::metadata(&path).unwrap().len();
        assert_eq!(chunk.end_offset, total - partial.len() as u64);
        // A line of exactly the bound is read.
        let exact = format!("{good}{}", " ".repeat(max - good.len()));
        fs::write(&path, format!("{exact}\n")).unwrap();
        let chunk = visit_bounded(&path, 0, 1, max, &mut |_, _| {}).unwrap();
        assert!(chunk.issues.is_empty(), "{:?}", chunk.issues);
    }

    #[test]
    fn issues_show_control_characters_escaped() {
        let issue = SpoolIssue {
            file: PathBuf::from("/spool/\u{1b}[2J-1-2-0.jsonl"),
            line: 3,
            error: "unknown variant `\u{9b}31m`".into(),
        };
        assert_eq!(
            issue.to_string(),
            "/spool/\\u{1b}[2J-1-2-0.jsonl:3: skipped malformed spool line: unknown variant `\\u{9b}31m`"
        );
    }

    #[test]
    fn file_names_parse_with_dashes_in_the_writer() {
        let name = SpoolFileName::parse("traced-proxy-12-345-6.jsonl").unwrap();
        assert_eq!(name.writer, "traced-proxy");
        assert_eq!((name.pid, name.start_nanos, name.seq), (12, 345, 6));
        assert!(SpoolFileName::parse("notes.txt").is_none());
    }
}
