//! The embedded store: an SQLite database of ingested spans, per-file ingest offsets, drop counts
//! and export cursors.
//!
//! A span's key is (trace_id, span_id), so ingesting a line twice stores it once; a file's offset
//! is written in the same transaction as the spans read before it, so a crash never loses or
//! duplicates. `seq` numbers spans in ingest order, which is what export cursors follow.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{params, Connection, OptionalExtension};
use shimtrace_shim::span::SpanRecord;

/// Default database path.
pub const DEFAULT_DB: &str = "/var/lib/shimtrace/shimtrace.db";
/// Environment variable overriding [`DEFAULT_DB`].
pub const DB_ENV: &str = "SHIMTRACE_DB";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(
        "cannot open store {path}: {source} (pass --db PATH or set {DB_ENV} to a writable file)"
    )]
    Open {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error(
        "cannot create the store's directory {path}: {source} (pass --db PATH or set {DB_ENV})"
    )]
    CreateDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("store {path} does not exist (run `shimtrace serve` to fill it, or read a spool with --spool DIR)")]
    Missing { path: PathBuf },
    #[error("store query failed: {0}")]
    Sql(#[from] rusqlite::Error),
    #[error("store holds a span that does not parse ({trace_id}/{span_id}): {source}")]
    Corrupt {
        trace_id: String,
        span_id: String,
        #[source]
        source: serde_json::Error,
    },
}

pub type Result<T> = std::result::Result<T, StoreError>;

/// Where ingest of one spool file stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FileOffset {
    /// Bytes ingested from the start of the file (always at a line boundary).
    pub offset: u64,
    /// Line number of the line at `offset` (1-based).
    pub next_line: u64,
}

/// A `dropped` spool line; (file, writer, time) identifies it, so re-reading counts it once.
#[derive(Debug, Clone)]
pub struct DroppedLine {
    pub count: u64,
    pub writer: String,
    pub reason: String,
    pub time_unix_nano: u64,
}

/// An open store.
pub struct Store {
    conn: Connection,
    path: PathBuf,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS spans (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    trace_id TEXT NOT NULL,
    span_id TEXT NOT NULL,
    parent_span_id TEXT,
    name TEXT NOT NULL,
    start_ns INTEGER NOT NULL,
    end_ns INTEGER NOT NULL,
    container_id TEXT,
    record TEXT NOT NULL,
    UNIQUE (trace_id, span_id)
);
CREATE INDEX IF NOT EXISTS spans_container ON spans (container_id);
CREATE INDEX IF NOT EXISTS spans_start ON spans (start_ns);
CREATE TABLE IF NOT EXISTS spool_files (
    name TEXT PRIMARY KEY,
    offset INTEGER NOT NULL,
    next_line INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS dropped (
    file TEXT NOT NULL,
    writer TEXT NOT NULL,
    time_ns INTEGER NOT NULL,
    count INTEGER NOT NULL,
    reason TEXT NOT NULL,
    PRIMARY KEY (file, writer, time_ns)
);
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
";

/// Nanosecond timestamps fit i64 until 2262; clamp rather than wrap past that.
fn to_sql_nanos(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

impl Store {
    /// Opens (creating if needed) the store at `path`.
    pub fn open(path: &Path) -> Result<Store> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|source| StoreError::CreateDir {
                path: parent.to_path_buf(),
                source,
            })?;
        }
        let open_err = |source| StoreError::Open {
            path: path.to_path_buf(),
            source,
        };
        let conn = Connection::open(path).map_err(open_err)?;
        conn.busy_timeout(Duration::from_secs(30))
            .map_err(open_err)?;
        // WAL lets queries and the exporter read while serve ingests.
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(open_err)?;
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(open_err)?;
        conn.execute_batch(SCHEMA).map_err(open_err)?;
        Ok(Store {
            conn,
            path: path.to_path_buf(),
        })
    }

    /// Opens an existing store for reading; a missing file is an error, not an empty store.
    pub fn open_existing(path: &Path) -> Result<Store> {
        if !path.exists() {
            return Err(StoreError::Missing {
                path: path.to_path_buf(),
            });
        }
        Store::open(path)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Where ingest of spool file `name` stands (zero if never seen).
    pub fn file_offset(&self, name: &str) -> Result<FileOffset> {
        Ok(self
            .conn
            .query_row(
                "SELECT offset, next_line FROM spool_files WHERE name = ?1",
                [name],
                |row| {
                    Ok(FileOffset {
                        offset: row.get::<_, i64>(0)? as u64,
                        next_line: row.get::<_, i64>(1)? as u64,
                    })
                },
            )
            .optional()?
            .unwrap_or(FileOffset {
                offset: 0,
                next_line: 1,
            }))
    }

    /// Stores what was read from spool file `name` and its new offset, atomically.
    /// Returns how many spans were new.
    pub fn ingest_chunk(
        &mut self,
        name: &str,
        spans: &[SpanRecord],
        dropped: &[DroppedLine],
        to: FileOffset,
    ) -> Result<u64> {
        let tx = self.conn.transaction()?;
        let mut inserted = 0;
        {
            let mut insert = tx.prepare_cached(
                "INSERT OR IGNORE INTO spans
                   (trace_id, span_id, parent_span_id, name, start_ns, end_ns, container_id, record)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            )?;
            for span in spans {
                let record = serde_json::to_string(span).expect("a span record always serializes");
                inserted += insert.execute(params![
                    span.trace_id.to_hex(),
                    span.span_id.to_hex(),
                    span.parent_span_id.map(|p| p.to_hex()),
                    span.name,
                    to_sql_nanos(span.start_time_unix_nano),
                    to_sql_nanos(span.end_time_unix_nano),
                    span.container_id(),
                    record,
                ])? as u64;
            }
            let mut insert_dropped = tx.prepare_cached(
                "INSERT OR IGNORE INTO dropped (file, writer, time_ns, count, reason)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
            )?;
            for d in dropped {
                insert_dropped.execute(params![
                    name,
                    d.writer,
                    to_sql_nanos(d.time_unix_nano),
                    to_sql_nanos(d.count),
                    d.reason
                ])?;
            }
            tx.execute(
                "INSERT INTO spool_files (name, offset, next_line) VALUES (?1, ?2, ?3)
                 ON CONFLICT (name) DO UPDATE SET offset = excluded.offset, next_line = excluded.next_line",
                params![name, to.offset as i64, to.next_line as i64],
            )?;
        }
        tx.commit()?;
        Ok(inserted)
    }

    /// Forgets a compacted file's offset (its spans stay).
    pub fn forget_file(&self, name: &str) -> Result<()> {
        self.conn
            .execute("DELETE FROM spool_files WHERE name = ?1", [name])?;
        Ok(())
    }

    pub fn span_count(&self) -> Result<u64> {
        Ok(self
            .conn
            .query_row("SELECT COUNT(*) FROM spans", [], |r| r.get::<_, i64>(0))? as u64)
    }

    /// Spans the shims reported dropped, over everything ingested.
    pub fn dropped_total(&self) -> Result<u64> {
        Ok(self
            .conn
            .query_row("SELECT COALESCE(SUM(count), 0) FROM dropped", [], |r| {
                r.get::<_, i64>(0)
            })? as u64)
    }

    /// The highest ingest sequence number (0 when empty).
    pub fn max_seq(&self) -> Result<u64> {
        Ok(self
            .conn
            .query_row("SELECT COALESCE(MAX(seq), 0) FROM spans", [], |r| {
                r.get::<_, i64>(0)
            })? as u64)
    }

    fn collect(&self, sql: &str, params: impl rusqlite::Params) -> Result<Vec<(u64, SpanRecord)>> {
        let mut stmt = self.conn.prepare_cached(sql)?;
        let rows = stmt.query_map(params, |row| {
            Ok((
                row.get::<_, i64>(0)? as u64,
                row.get::<_, String>(1)?,
                row.get::<_, String>(2)?,
                row.get::<_, String>(3)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (seq, trace_id, span_id, record) = row?;
            let span = serde_json::from_str(&record).map_err(|source| StoreError::Corrupt {
                trace_id,
                span_id,
                source,
            })?;
            out.push((seq, span));
        }
        Ok(out)
    }

    /// Every stored span.
    pub fn all_spans(&self) -> Result<Vec<SpanRecord>> {
        Ok(self
            .collect(
                "SELECT seq, trace_id, span_id, record FROM spans ORDER BY seq",
                [],
            )?
            .into_iter()
            .map(|(_, s)| s)
            .collect())
    }

    /// The spans of every trace that has a span of container `id`, or of trace `id`.
    pub fn spans_of_container(&self, id: &str) -> Result<Vec<SpanRecord>> {
        Ok(self
            .collect(
                "SELECT seq, trace_id, span_id, record FROM spans WHERE trace_id IN (
                    SELECT trace_id FROM spans WHERE container_id = ?1
                    UNION SELECT ?1)
                 ORDER BY seq",
                [id],
            )?
            .into_iter()
            .map(|(_, s)| s)
            .collect())
    }

    /// Spans that started in [from, to) unix nanoseconds.
    pub fn spans_in_range(&self, from: u64, to: u64) -> Result<Vec<SpanRecord>> {
        Ok(self
            .collect(
                "SELECT seq, trace_id, span_id, record FROM spans
                 WHERE start_ns >= ?1 AND start_ns < ?2 ORDER BY seq",
                [to_sql_nanos(from), to_sql_nanos(to)],
            )?
            .into_iter()
            .map(|(_, s)| s)
            .collect())
    }

    /// Up to `limit` spans ingested after sequence number `after`, with their sequence numbers.
    pub fn spans_after(&self, after: u64, limit: usize) -> Result<Vec<(u64, SpanRecord)>> {
        self.collect(
            "SELECT seq, trace_id, span_id, record FROM spans WHERE seq > ?1 ORDER BY seq LIMIT ?2",
            [after as i64, limit as i64],
        )
    }

    /// A persisted counter or cursor (0 if unset).
    pub fn meta(&self, key: &str) -> Result<u64> {
        Ok(self
            .conn
            .query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| {
                r.get::<_, i64>(0)
            })
            .optional()?
            .unwrap_or(0) as u64)
    }

    pub fn set_meta(&self, key: &str, value: u64) -> Result<()> {
        self.conn.execute(
            "INSERT INTO meta (key, value) VALUES (?1, ?2)
             ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            params![key, value as i64],
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trace::tests::container_trace;
    use shimtrace_shim::span::TraceId;

    #[test]
    fn chunks_are_idempotent_and_offsets_persist() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/shimtrace.db");
        let mut store = Store::open(&path).unwrap();
        let spans = container_trace(TraceId([3; 16]), "c");
        let to = FileOffset {
            offset: 100,
            next_line: 8,
        };
        let dropped = [DroppedLine {
            count: 5,
            writer: "proxy/1".into(),
            reason: "full".into(),
            time_unix_nano: 1,
        }];
        assert_eq!(store.ingest_chunk("f", &spans, &dropped, to).unwrap(), 7);
        assert_eq!(store.ingest_chunk("f", &spans, &dropped, to).unwrap(), 0);
        drop(store);
        let store = Store::open_existing(&path).unwrap();
        assert_eq!(store.span_count().unwrap(), 7);
        assert_eq!(store.dropped_total().unwrap(), 5);
        assert_eq!(store.file_offset("f").unwrap(), to);
        assert_eq!(store.file_offset("other").unwrap().next_line, 1);
        let mut got = store.spans_of_container("c").unwrap();
        let mut want = spans.clone();
        got.sort_by_key(|s| s.span_id);
        want.sort_by_key(|s| s.span_id);
        assert_eq!(got, want);
        assert_eq!(store.spans_after(5, 100).unwrap().len(), 2);
        store.set_meta("cursor", 5).unwrap();
        assert_eq!(store.meta("cursor").unwrap(), 5);
    }

    #[test]
    fn missing_store_says_how_to_fill_it() {
        let err = Store::open_existing(Path::new("/nonexistent/x.db"))
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("shimtrace serve"), "{err}");
    }
}
