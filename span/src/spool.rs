//! The spool as readers see it: where it is, how its files are named, and how to read their lines.
//!
//! Layout and contract (writers keep it, the collector relies on it):
//! - each writing process owns its files, named `<writer>-<pid>-<start-nanos>-<seq>.jsonl`, mode 0600;
//!   nobody else appends to them;
//! - a file only ever grows, by whole lines; a line without its final `\n` is still being written;
//! - a writer rotates to `seq + 1` once a file passes [`ROTATE_BYTES`]; so a file is finished once a
//!   later `seq` of the same writer exists, or its writer pid is gone, and may then be removed after
//!   ingest;
//! - the directory is bounded by `SHIMTRACE_SPOOL_MAX_BYTES`: over it, spans are dropped and counted,
//!   and the count is written as a `dropped` line as soon as the spool can take it (or at exit).

use std::fs::{self, File};
use std::io::{self, BufRead, BufReader, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use crate::{SpanRecord, SpoolEntry};

/// Default spool directory; containerd passes `SHIMTRACE_SPOOL_DIR` through to shims.
pub const DEFAULT_SPOOL_DIR: &str = "/var/lib/shimtrace/spool";
/// Default bound on the whole spool directory.
pub const DEFAULT_MAX_BYTES: u64 = 256 * 1024 * 1024;
/// A writer starts a new file past this size so finished files can be compacted.
pub const ROTATE_BYTES: u64 = 8 * 1024 * 1024;

/// A spool directory or file that could not be read.
#[derive(Debug, thiserror::Error)]
#[error("cannot read spool {path}: {source}")]
pub struct ReadError {
    pub path: PathBuf,
    #[source]
    pub source: io::Error,
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

/// A spool line that could not be understood; reported, then skipped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpoolIssue {
    pub file: PathBuf,
    pub line: u64,
    pub error: String,
}

impl std::fmt::Display for SpoolIssue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}:{}: skipped malformed spool line: {}",
            self.file.display(),
            self.line,
            self.error
        )
    }
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
    let mut file = File::open(path).map_err(read_err)?;
    file.seek(SeekFrom::Start(offset)).map_err(read_err)?;
    let mut reader = BufReader::with_capacity(256 * 1024, file);
    let mut chunk = FileChunk {
        end_offset: offset,
        next_line: first_line,
        ..FileChunk::default()
    };
    let mut line = Vec::new();
    loop {
        line.clear();
        let n = reader.read_until(b'\n', &mut line).map_err(read_err)?;
        if n == 0 || line.last() != Some(&b'\n') {
            break;
        }
        let number = chunk.next_line;
        chunk.end_offset += n as u64;
        chunk.next_line += 1;
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

/// Everything in a spool directory.
#[derive(Debug, Default)]
pub struct SpoolContents {
    pub spans: Vec<SpanRecord>,
    pub dropped: u64,
    pub issues: Vec<SpoolIssue>,
}

/// Reads every complete line of every spool file in `dir`.
pub fn read_spool(dir: &Path) -> Result<SpoolContents, ReadError> {
    let mut contents = SpoolContents::default();
    for (path, _) in spool_files(dir)? {
        let chunk = match read_file_from(&path, 0, 1) {
            Ok(chunk) => chunk,
            // A file compacted away between listing and reading is not an error.
            Err(ReadError { source, .. }) if source.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        contents.issues.extend(chunk.issues);
        for entry in chunk.entries {
            match entry {
                SpoolEntry::Span(span) => contents.spans.push(span),
                SpoolEntry::Dropped { count, .. } => contents.dropped += count,
            }
        }
    }
    Ok(contents)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{SpanId, TraceId};

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

    #[test]
    fn file_names_parse_with_dashes_in_the_writer() {
        let name = SpoolFileName::parse("traced-proxy-12-345-6.jsonl").unwrap();
        assert_eq!(name.writer, "traced-proxy");
        assert_eq!((name.pid, name.start_nanos, name.seq), (12, 345, 6));
        assert!(SpoolFileName::parse("notes.txt").is_none());
    }
}
