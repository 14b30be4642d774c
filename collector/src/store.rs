//! The embedded store: an SQLite database of ingested spans, per-file ingest offsets, drop counts
//! and export cursors.
//!
//! A span's key is (trace_id, span_id), so ingesting a line twice stores it once; a file's offset
//! is written in the same transaction as the spans read before it, so a crash never loses or
//! duplicates. `seq` numbers spans in ingest order, which is what export cursors follow: spans are
//! never deleted, so a new span's `seq` (the largest so far plus one) is always above every cursor.
//!
//! The layout is versioned in SQLite's `user_version` ([`SCHEMA_VERSION`]); opening a store of the
//! first layout upgrades it in one transaction.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::types::Type;
use rusqlite::{params, Connection, OpenFlags, OptionalExtension, TransactionBehavior};
use shimtrace_span::{DroppedSpans, SpanId, SpanRecord, TraceId};

/// Default database path.
pub const DEFAULT_DB: &str = "/var/lib/shimtrace/shimtrace.db";
/// Environment variable overriding [`DEFAULT_DB`].
pub use shimtrace_span::env::DB as DB_ENV;

/// `meta` key of the continuous exporter's cursor: the last exported ingest sequence number.
pub const EXPORT_CURSOR_KEY: &str = "otlp_export_cursor";
/// `meta` key of the total spans exported over OTLP.
pub const EXPORTED_KEY: &str = "otlp_exported_total";

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
    #[error("store query failed: {0} (if another process holds the store, retry when it is done; if the store is damaged, {DAMAGED})")]
    Sql(#[from] rusqlite::Error),
    #[error("store {path} has layout version {found}, newer than this shimtrace knows ({SCHEMA_VERSION}): use the shimtrace that wrote it, or pass --db PATH (or set {DB_ENV}) to start a new store")]
    NewerSchema { path: PathBuf, found: i64 },
    #[error("cannot upgrade store {path} to layout version {SCHEMA_VERSION}: {source} (the store is unchanged and the shimtrace that wrote it still reads it; if it is damaged, {DAMAGED})")]
    Upgrade {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error("store {path} holds a span that does not parse (seq {seq}, {trace_id}/{span_id}): {source} (copy the file, then remove that row: sqlite3 {path} 'DELETE FROM spans WHERE seq = {seq}')")]
    Corrupt {
        path: PathBuf,
        seq: u64,
        trace_id: String,
        span_id: String,
        #[source]
        source: serde_json::Error,
    },
}

/// What to do about a damaged store. Re-ingesting is no cure: with compaction (the default) the
/// spool no longer holds what was ingested, and a new store exports everything over OTLP again.
const DAMAGED: &str = "keep the file, and try `sqlite3 DB .recover | sqlite3 NEW.db` to save what it holds; \
a new store (--db PATH) can be filled only with what the spool still holds (ingested spool files are removed \
unless serve runs with --no-compact), and exports all of it over OTLP again";

pub type Result<T> = std::result::Result<T, StoreError>;

/// Where ingest of one spool file stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FileOffset {
    /// Bytes ingested from the start of the file (always at a line boundary).
    pub offset: u64,
    /// Line number of the line at `offset` (1-based).
    pub next_line: u64,
}

/// An open store.
pub struct Store {
    conn: Connection,
    path: PathBuf,
}

/// The store's layout version, kept in `PRAGMA user_version`. Version 1 (which left it 0) had hex
/// text ids, an AUTOINCREMENT key and indexes no query used.
pub const SCHEMA_VERSION: i64 = 2;

/// Ids are stored as their bytes: the (trace_id, span_id) index is the one every insert updates at a
/// random place. `record` is the span's JSON (as `shimtrace traces --json` prints it).
const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS spans (
    seq INTEGER PRIMARY KEY,
    trace_id BLOB NOT NULL,
    span_id BLOB NOT NULL,
    container_id TEXT,
    start_ns INTEGER NOT NULL,
    record TEXT NOT NULL,
    UNIQUE (trace_id, span_id)
);
CREATE INDEX IF NOT EXISTS spans_container ON spans (container_id);
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

/// Moves version-1 spans into the version-2 table, keeping every `seq` (export cursors point at
/// them). Runs inside the opening transaction.
const UPGRADE_FROM_V1: &str = "
ALTER TABLE spans RENAME TO spans_v1;
DROP INDEX IF EXISTS spans_container;
DROP INDEX IF EXISTS spans_start;
";
const COPY_FROM_V1: &str = "
INSERT INTO spans (seq, trace_id, span_id, container_id, start_ns, record)
    SELECT seq, unhex(trace_id), unhex(span_id), container_id, start_ns, record
    FROM spans_v1 ORDER BY seq;
DROP TABLE spans_v1;
";

/// Pages SQLite keeps in memory (negative: KiB). Ingest updates indexes at random places; the
/// default 2 MiB makes it re-read pages from the OS.
const CACHE_KIB: i64 = 64 * 1024;

/// Reading many spans parses their records on up to this many threads, each at least
/// [`PARSE_CHUNK_MIN`] records.
const MAX_PARSE_THREADS: usize = 4;
const PARSE_CHUNK_MIN: usize = 4096;

/// Nanosecond timestamps fit i64 until 2262; clamp rather than wrap past that.
fn to_sql_nanos(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// `path` as an SQLite `file:` URI (percent-encoding all but unreserved characters and `/`).
fn file_uri(path: &Path) -> String {
    use std::os::unix::ffi::OsStrExt;
    let mut uri = String::from("file:");
    for &b in path.as_os_str().as_bytes() {
        if b.is_ascii_alphanumeric() || b"/-._~".contains(&b) {
            uri.push(b as char);
        } else {
            uri.push_str(&format!("%{b:02X}"));
        }
    }
    uri
}

/// Creates the tables, or upgrades an older layout, in one transaction.
fn prepare_schema(conn: &mut Connection, path: &Path) -> Result<()> {
    // An up-to-date store needs no write lock (metrics opens the store for every scrape).
    let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    if version == SCHEMA_VERSION {
        return Ok(());
    }
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let version: i64 = tx.pragma_query_value(None, "user_version", |r| r.get(0))?;
    if version == SCHEMA_VERSION {
        return Ok(());
    }
    if version > SCHEMA_VERSION {
        return Err(StoreError::NewerSchema {
            path: path.to_path_buf(),
            found: version,
        });
    }
    let has_v1_spans: bool = tx.query_row(
        "SELECT EXISTS (SELECT 1 FROM sqlite_schema WHERE type = 'table' AND name = 'spans')",
        [],
        |r| r.get(0),
    )?;
    let upgrade = |tx: &rusqlite::Transaction<'_>| -> rusqlite::Result<()> {
        if has_v1_spans {
            tx.execute_batch(UPGRADE_FROM_V1)?;
        }
        tx.execute_batch(SCHEMA)?;
        if has_v1_spans {
            tx.execute_batch(COPY_FROM_V1)?;
        }
        tx.pragma_update(None, "user_version", SCHEMA_VERSION)
    };
    upgrade(&tx).map_err(|source| StoreError::Upgrade {
        path: path.to_path_buf(),
        source,
    })?;
    tx.commit()?;
    Ok(())
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
        let mut conn = Connection::open(path).map_err(open_err)?;
        conn.busy_timeout(Duration::from_secs(30))
            .map_err(open_err)?;
        // WAL lets queries and the exporter read while serve ingests.
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(open_err)?;
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(open_err)?;
        conn.pragma_update(None, "cache_size", -CACHE_KIB)
            .map_err(open_err)?;
        // No checkpoint inside a commit: a large ingest would copy its whole WAL into the
        // database (and fsync twice) before its commit returns. Committed spans are durable and
        // readable in the WAL; [`Store::checkpoint`] folds it in (serve's housekeeping, the
        // bench), and SQLite does it when the last connection closes.
        conn.pragma_update(None, "wal_autocheckpoint", 0)
            .map_err(open_err)?;
        prepare_schema(&mut conn, path)?;
        Ok(Store {
            conn,
            path: path.to_path_buf(),
        })
    }

    /// Copies what the WAL holds into the database file, as far as readers allow (never waits
    /// for them).
    pub fn checkpoint(&self) -> Result<()> {
        self.conn
            .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))
            .map_err(StoreError::from)
    }

    /// Opens an existing store for queries only, without writing to it: a store the user can read
    /// but not write (a root-owned store queried without root, a read-only filesystem) still
    /// answers. A store of an older layout is upgraded first, which needs write access (see
    /// [`Store::open`]).
    ///
    /// SQLite reads a WAL-mode store through its `-shm` file, which it cannot create in a
    /// directory the user cannot write. Then, if there is no `-wal` file either (no writer has the
    /// store open and nothing is left to fold in), the file is read as immutable.
    pub fn open_read_only(path: &Path) -> Result<Store> {
        if !path.exists() {
            return Err(StoreError::Missing {
                path: path.to_path_buf(),
            });
        }
        let open_err = |source| StoreError::Open {
            path: path.to_path_buf(),
            source,
        };
        let read_only = OpenFlags::SQLITE_OPEN_READ_ONLY
            | OpenFlags::SQLITE_OPEN_URI
            | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let version = |conn: &Connection| -> rusqlite::Result<i64> {
            conn.busy_timeout(Duration::from_secs(30))?;
            conn.pragma_query_value(None, "user_version", |r| r.get(0))
        };
        let mut wal = path.as_os_str().to_owned();
        wal.push("-wal");
        let (conn, found) = match Connection::open_with_flags(path, read_only)
            .and_then(|conn| version(&conn).map(|v| (conn, v)))
        {
            Ok(opened) => opened,
            Err(_) if !Path::new(&wal).exists() => {
                let uri = format!("{}?immutable=1", file_uri(path));
                Connection::open_with_flags(uri, read_only)
                    .and_then(|conn| version(&conn).map(|v| (conn, v)))
                    .map_err(open_err)?
            }
            Err(e) => return Err(open_err(e)),
        };
        if found > SCHEMA_VERSION {
            return Err(StoreError::NewerSchema {
                path: path.to_path_buf(),
                found,
            });
        }
        if found < SCHEMA_VERSION {
            drop(conn);
            return Store::open(path);
        }
        conn.pragma_update(None, "cache_size", -CACHE_KIB)
            .map_err(open_err)?;
        Ok(Store {
            conn,
            path: path.to_path_buf(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Where ingest of spool file `name` stands (zero if never seen).
    pub fn file_offset(&self, name: &str) -> Result<FileOffset> {
        file_offset(&self.conn, name)
    }

    /// Starts one write transaction for the chunks of one or more spool files.
    pub fn begin_ingest(&mut self) -> Result<IngestBatch<'_>> {
        // IMMEDIATE: take the write lock now (waiting for it if need be), so offsets read in the
        // batch stay true until it commits.
        self.conn.execute_batch("BEGIN IMMEDIATE")?;
        Ok(IngestBatch {
            conn: &mut self.conn,
            spans: 0,
        })
    }

    /// Stores what was read from spool file `name` and its new offset, atomically, in a batch of its
    /// own (a test helper: ingest batches many files). Returns how many spans were new.
    #[cfg(test)]
    pub(crate) fn ingest_chunk(
        &mut self,
        name: &str,
        spans: &[SpanRecord],
        dropped: &[DroppedSpans],
        to: FileOffset,
    ) -> Result<u64> {
        let spans: Vec<StoredSpan> = spans.iter().map(StoredSpan::new).collect();
        let mut batch = self.begin_ingest()?;
        let inserted = batch.add_chunk(name, &spans, dropped, to)?;
        batch.commit()?;
        Ok(inserted)
    }

    /// Forgets a compacted file's offset (its spans stay).
    pub fn forget_file(&self, name: &str) -> Result<()> {
        self.conn
            .execute("DELETE FROM spool_files WHERE name = ?1", [name])?;
        Ok(())
    }

    pub fn span_count(&self) -> Result<u64> {
        self.number("SELECT COUNT(*) FROM spans")
    }

    /// Spans the shims reported dropped, over everything ingested.
    pub fn dropped_total(&self) -> Result<u64> {
        self.number("SELECT COALESCE(SUM(count), 0) FROM dropped")
    }

    /// The highest ingest sequence number (0 when empty).
    pub fn max_seq(&self) -> Result<u64> {
        self.number("SELECT COALESCE(MAX(seq), 0) FROM spans")
    }

    /// The one number `sql` selects.
    fn number(&self, sql: &str) -> Result<u64> {
        Ok(self.conn.query_row(sql, [], |r| r.get::<_, i64>(0))? as u64)
    }

    /// Runs `sql`, which selects `seq, record`, and parses the records.
    fn collect(&self, sql: &str, params: impl rusqlite::Params) -> Result<Vec<(u64, SpanRecord)>> {
        let mut stmt = self.conn.prepare_cached(sql)?;
        let mut rows = stmt.query(params)?;
        // Every record in one buffer; parsing them, not reading them, is what takes time.
        let mut text = String::new();
        let mut records: Vec<(u64, std::ops::Range<usize>)> = Vec::new();
        while let Some(row) = rows.next()? {
            let seq = row.get::<_, i64>(0)? as u64;
            let record = row.get_ref(1)?.as_str().map_err(|e| {
                rusqlite::Error::FromSqlConversionFailure(1, Type::Text, Box::new(e))
            })?;
            let start = text.len();
            text.push_str(record);
            records.push((seq, start..text.len()));
        }
        drop(rows);
        let parse = |records: &[(u64, std::ops::Range<usize>)]| {
            records
                .iter()
                .map(|(seq, range)| {
                    serde_json::from_str::<SpanRecord>(&text[range.clone()])
                        .map(|span| (*seq, span))
                        .map_err(|e| (*seq, e))
                })
                .collect::<std::result::Result<Vec<_>, _>>()
        };
        let threads = std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .clamp(1, MAX_PARSE_THREADS);
        let parsed = if threads == 1 || records.len() < 2 * PARSE_CHUNK_MIN {
            parse(&records)
        } else {
            let chunk = records.len().div_ceil(threads).max(PARSE_CHUNK_MIN);
            std::thread::scope(|scope| {
                let parts: Vec<_> = records
                    .chunks(chunk)
                    .map(|part| scope.spawn(move || parse(part)))
                    .collect();
                let mut out = Vec::with_capacity(records.len());
                for part in parts {
                    out.extend(part.join().expect("parsing spans does not panic")?);
                }
                Ok(out)
            })
        };
        parsed.map_err(|(seq, source)| self.corrupt(seq, source))
    }

    /// The error for the record at `seq` that does not parse, naming its span.
    fn corrupt(&self, seq: u64, source: serde_json::Error) -> StoreError {
        let ids: Option<(Vec<u8>, Vec<u8>)> = self
            .conn
            .query_row(
                "SELECT trace_id, span_id FROM spans WHERE seq = ?1",
                [seq as i64],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .ok();
        let (trace_id, span_id) = ids.unwrap_or_default();
        StoreError::Corrupt {
            path: self.path.clone(),
            seq,
            trace_id: hex::encode(trace_id),
            span_id: hex::encode(span_id),
            source,
        }
    }

    /// Every stored span.
    pub fn all_spans(&self) -> Result<Vec<SpanRecord>> {
        Ok(self
            .collect("SELECT seq, record FROM spans ORDER BY seq", [])?
            .into_iter()
            .map(|(_, s)| s)
            .collect())
    }

    /// The spans of every trace that has a span of container `id`, or of trace `id`.
    pub fn spans_of_container(&self, id: &str) -> Result<Vec<SpanRecord>> {
        Ok(self
            .collect(
                "SELECT seq, record FROM spans WHERE trace_id IN (
                    SELECT trace_id FROM spans WHERE container_id = ?1
                    UNION SELECT ?2)
                 ORDER BY seq",
                params![id, id.parse::<TraceId>().ok().map(|t| t.0)],
            )?
            .into_iter()
            .map(|(_, s)| s)
            .collect())
    }

    /// Up to `limit` spans ingested after sequence number `after`, with their sequence numbers.
    #[cfg(test)]
    pub fn spans_after(&self, after: u64, limit: usize) -> Result<Vec<(u64, SpanRecord)>> {
        self.spans_between(after, i64::MAX as u64, limit)
    }

    /// Up to `limit` spans stored after `after` and before `before` (both `seq`), in order.
    pub fn spans_between(
        &self,
        after: u64,
        before: u64,
        limit: usize,
    ) -> Result<Vec<(u64, SpanRecord)>> {
        self.collect(
            "SELECT seq, record FROM spans WHERE seq > ?1 AND seq < ?2 ORDER BY seq LIMIT ?3",
            [
                after as i64,
                before.min(i64::MAX as u64) as i64,
                limit as i64,
            ],
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

    /// Records an export of `count` spans up to `seq`: the cursor and the exported total move
    /// together or not at all.
    pub fn record_export(&self, seq: u64, count: u64) -> Result<()> {
        let tx = self.conn.unchecked_transaction()?;
        tx.execute(SET_META, params![EXPORT_CURSOR_KEY, seq as i64])?;
        tx.execute(
            "INSERT INTO meta (key, value) VALUES (?1, ?2)
             ON CONFLICT (key) DO UPDATE SET value = value + excluded.value",
            params![EXPORTED_KEY, count as i64],
        )?;
        tx.commit()?;
        Ok(())
    }

    #[cfg(test)]
    pub fn set_meta(&self, key: &str, value: u64) -> Result<()> {
        self.conn.execute(SET_META, params![key, value as i64])?;
        Ok(())
    }
}

/// Sets meta value `?2` under key `?1`.
const SET_META: &str = "INSERT INTO meta (key, value) VALUES (?1, ?2)
     ON CONFLICT (key) DO UPDATE SET value = excluded.value";

fn file_offset(conn: &Connection, name: &str) -> Result<FileOffset> {
    Ok(conn
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

/// A span as the store keeps it. Made apart from the store, so ingest can serialise spans on one
/// thread while another writes.
#[derive(Debug, Clone)]
pub struct StoredSpan {
    trace_id: TraceId,
    span_id: SpanId,
    container_id: Option<String>,
    start_ns: i64,
    record: String,
}

impl StoredSpan {
    pub fn new(span: &SpanRecord) -> StoredSpan {
        let record = serde_json::to_string(span).expect("a span record always serializes");
        StoredSpan::with_record(span, record)
    }

    /// The span as read from its spool `line`, stored as that line: a span record with the
    /// entry's `"type"` key, which reading a record ignores. Saves serialising it again.
    pub fn with_line(span: &SpanRecord, line: &[u8]) -> StoredSpan {
        match std::str::from_utf8(line) {
            Ok(line) => StoredSpan::with_record(span, line.to_string()),
            Err(_) => StoredSpan::new(span),
        }
    }

    fn with_record(span: &SpanRecord, record: String) -> StoredSpan {
        StoredSpan {
            trace_id: span.trace_id,
            span_id: span.span_id,
            container_id: span.container_id().map(str::to_string),
            start_ns: to_sql_nanos(span.start_time_unix_nano),
            record,
        }
    }
}

/// One write transaction of ingest. Each file's new offset is written with the spans read before
/// it, and all of them commit together or not at all (dropping the batch rolls back what is not
/// committed). Indexes are updated at random places, so one commit for many files writes each
/// index page once.
pub struct IngestBatch<'s> {
    /// In a transaction while the batch lives.
    conn: &'s mut Connection,
    spans: u64,
}

impl Drop for IngestBatch<'_> {
    fn drop(&mut self) {
        if !self.conn.is_autocommit() {
            // Nothing else can be done about a failed rollback here; SQLite undoes an unfinished
            // transaction at the next open anyway.
            let _ = self.conn.execute_batch("ROLLBACK");
        }
    }
}

impl IngestBatch<'_> {
    /// Where ingest of spool file `name` stands, including this batch's chunks.
    pub fn file_offset(&self, name: &str) -> Result<FileOffset> {
        file_offset(self.conn, name)
    }

    /// Span lines added since the batch began or last committed.
    pub fn spans_added(&self) -> u64 {
        self.spans
    }

    /// Adds what was read from spool file `name` and its new offset. Returns how many spans were new.
    pub fn add_chunk(
        &mut self,
        name: &str,
        spans: &[StoredSpan],
        dropped: &[DroppedSpans],
        to: FileOffset,
    ) -> Result<u64> {
        let mut inserted = 0;
        let mut insert = self.conn.prepare_cached(
            "INSERT OR IGNORE INTO spans (trace_id, span_id, container_id, start_ns, record)
             VALUES (?1, ?2, ?3, ?4, ?5)",
        )?;
        for span in spans {
            inserted += insert.execute(params![
                &span.trace_id.0[..],
                &span.span_id.0[..],
                span.container_id,
                span.start_ns,
                span.record,
            ])? as u64;
        }
        self.spans += spans.len() as u64;
        let mut insert_dropped = self.conn.prepare_cached(
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
        self.conn.prepare_cached(
            "INSERT INTO spool_files (name, offset, next_line) VALUES (?1, ?2, ?3)
             ON CONFLICT (name) DO UPDATE SET offset = excluded.offset, next_line = excluded.next_line",
        )?
        .execute(params![name, to.offset as i64, to.next_line as i64])?;
        Ok(inserted)
    }

    pub fn commit(self) -> Result<()> {
        Ok(self.conn.execute_batch("COMMIT")?)
    }

    /// Commits what was added so far and goes on in a new transaction.
    pub fn commit_and_continue(&mut self) -> Result<()> {
        self.conn.execute_batch("COMMIT; BEGIN IMMEDIATE")?;
        self.spans = 0;
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::trace::tests::container_trace;
    use shimtrace_span::TraceId;
    use tempfile::TempDir;

    /// A store at `name` in a new scratch directory, holding `spans` as one chunk of spool file
    /// `f`: the directory (which lives as long as it is held), the store's path and the store.
    pub(crate) fn store_holding(name: &str, spans: &[SpanRecord]) -> (TempDir, PathBuf, Store) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(name);
        let mut store = Store::open(&path).unwrap();
        let at = FileOffset {
            offset: 1,
            next_line: 2,
        };
        store.ingest_chunk("f", spans, &[], at).unwrap();
        (dir, path, store)
    }

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
        let dropped = [DroppedSpans {
            count: 5,
            writer: "proxy/1".into(),
            reason: "full".into(),
            time_unix_nano: 1,
        }];
        assert_eq!(store.ingest_chunk("f", &spans, &dropped, to).unwrap(), 7);
        assert_eq!(store.ingest_chunk("f", &spans, &dropped, to).unwrap(), 0);
        drop(store);
        let store = Store::open(&path).unwrap();
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
    fn a_read_only_store_answers_queries_and_takes_no_writes() {
        let spans = container_trace(TraceId([3; 16]), "c");
        let (dir, path, store) = store_holding("odd name?#%.db", &spans);
        drop(store);
        let reader = Store::open_read_only(&path).unwrap();
        assert_eq!(reader.all_spans().unwrap(), spans);
        assert!(reader.set_meta("cursor", 5).is_err());
        assert!(matches!(
            Store::open_read_only(&dir.path().join("none.db")),
            Err(StoreError::Missing { .. })
        ));
        // Read as immutable (the fallback when SQLite cannot create the `-shm` file).
        let uri = format!("{}?immutable=1", file_uri(&path));
        let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_URI;
        let conn = Connection::open_with_flags(uri, flags).unwrap();
        let count: i64 = conn
            .query_row("SELECT COUNT(*) FROM spans", [], |r| r.get(0))
            .unwrap();
        assert_eq!(count, 7);
    }

    /// The version-1 layout, as earlier releases created it.
    const SCHEMA_V1: &str = "
        CREATE TABLE spans (
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
        CREATE INDEX spans_container ON spans (container_id);
        CREATE INDEX spans_start ON spans (start_ns);
        CREATE TABLE spool_files (name TEXT PRIMARY KEY, offset INTEGER NOT NULL, next_line INTEGER NOT NULL);
        CREATE TABLE dropped (file TEXT NOT NULL, writer TEXT NOT NULL, time_ns INTEGER NOT NULL,
            count INTEGER NOT NULL, reason TEXT NOT NULL, PRIMARY KEY (file, writer, time_ns));
        CREATE TABLE meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
    ";

    /// Writes `spans` into a version-1 store at `path`, with `seq` 10, 20, 30, ...
    fn write_v1(path: &Path, spans: &[SpanRecord]) {
        let conn = Connection::open(path).unwrap();
        conn.execute_batch(SCHEMA_V1).unwrap();
        for (i, span) in spans.iter().enumerate() {
            conn.execute(
                "INSERT INTO spans (seq, trace_id, span_id, parent_span_id, name, start_ns, end_ns,
                    container_id, record) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                params![
                    (i as i64 + 1) * 10,
                    span.trace_id.to_hex(),
                    span.span_id.to_hex(),
                    span.parent_span_id.map(|p| p.to_hex()),
                    span.name,
                    span.start_time_unix_nano as i64,
                    span.end_time_unix_nano as i64,
                    span.container_id(),
                    serde_json::to_string(span).unwrap(),
                ],
            )
            .unwrap();
        }
        conn.execute_batch(
            "INSERT INTO spool_files VALUES ('f', 100, 8);
             INSERT INTO dropped VALUES ('f', 'proxy/1', 1, 5, 'full');
             INSERT INTO meta VALUES ('cursor', 20);",
        )
        .unwrap();
    }

    #[test]
    fn a_version_1_store_is_upgraded_keeping_spans_seqs_offsets_and_cursors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v1.db");
        let spans = container_trace(TraceId([4; 16]), "c");
        write_v1(&path, &spans[..5]);

        let mut store = Store::open(&path).unwrap();
        assert_eq!(store.span_count().unwrap(), 5);
        assert_eq!(store.max_seq().unwrap(), 50);
        assert_eq!(store.meta("cursor").unwrap(), 20);
        assert_eq!(store.dropped_total().unwrap(), 5);
        assert_eq!(store.file_offset("f").unwrap().offset, 100);
        let after: Vec<_> = store.spans_after(20, 100).unwrap();
        let seqs: Vec<u64> = after.iter().map(|(seq, _)| *seq).collect();
        assert_eq!(seqs, [30, 40, 50]);
        assert_eq!(after[0].1, spans[2]);
        assert_eq!(store.all_spans().unwrap(), spans[..5]);
        let by_trace = store
            .spans_of_container(&TraceId([4; 16]).to_hex())
            .unwrap();
        assert_eq!(by_trace.len(), 5);

        // Ingest goes on: a span already stored by version 1 is not stored again, new ones
        // follow the old seqs.
        let to = FileOffset {
            offset: 200,
            next_line: 9,
        };
        assert_eq!(store.ingest_chunk("f", &spans, &[], to).unwrap(), 2);
        assert_eq!(store.max_seq().unwrap(), 52);
        assert_eq!(store.spans_of_container("c").unwrap().len(), 7);
        drop(store);

        let conn = Connection::open(&path).unwrap();
        let version: i64 = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap();
        assert_eq!(version, SCHEMA_VERSION);
        let leftovers: i64 = conn
            .query_row(
                "SELECT COUNT(*) FROM sqlite_schema WHERE name IN ('spans_v1', 'spans_start')",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(leftovers, 0);
        drop(conn);
        // Opening again changes nothing.
        assert_eq!(Store::open(&path).unwrap().span_count().unwrap(), 7);
    }

    #[test]
    fn a_version_1_store_that_cannot_be_upgraded_is_left_unchanged_and_says_what_to_do() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v1.db");
        write_v1(&path, &container_trace(TraceId([4; 16]), "c")[..2]);
        let conn = Connection::open(&path).unwrap();
        conn.execute("UPDATE spans SET trace_id = 'not hex' WHERE seq = 20", [])
            .unwrap();
        drop(conn);
        let err = Store::open(&path).err().unwrap().to_string();
        assert!(err.contains("cannot upgrade store"), "{err}");
        assert!(err.contains("--db PATH"), "{err}");
        let conn = Connection::open(&path).unwrap();
        let rows: i64 = conn
            .query_row("SELECT COUNT(*) FROM spans WHERE name != ''", [], |r| {
                r.get(0)
            })
            .unwrap();
        assert_eq!(rows, 2, "the version-1 table is still there");
    }

    #[test]
    fn a_store_from_a_newer_shimtrace_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("new.db");
        Connection::open(&path)
            .unwrap()
            .pragma_update(None, "user_version", SCHEMA_VERSION + 1)
            .unwrap();
        let err = Store::open(&path).err().unwrap().to_string();
        assert!(err.contains("newer than this shimtrace"), "{err}");
        assert!(err.contains("--db PATH"), "{err}");
    }

    #[test]
    fn a_batch_stores_all_its_files_or_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(&dir.path().join("db")).unwrap();
        let stored = |spans: Vec<SpanRecord>| spans.iter().map(StoredSpan::new).collect::<Vec<_>>();
        let a = stored(container_trace(TraceId([5; 16]), "a"));
        let b = stored(container_trace(TraceId([6; 16]), "b"));
        let at = |offset| FileOffset {
            offset,
            next_line: 2,
        };
        let mut batch = store.begin_ingest().unwrap();
        assert_eq!(batch.add_chunk("a", &a, &[], at(10)).unwrap(), 7);
        assert_eq!(batch.file_offset("a").unwrap(), at(10));
        assert_eq!(batch.add_chunk("b", &b, &[], at(20)).unwrap(), 7);
        assert_eq!(batch.spans_added(), 14);
        drop(batch);
        assert_eq!(store.span_count().unwrap(), 0);
        assert_eq!(
            store.file_offset("a").unwrap(),
            FileOffset {
                offset: 0,
                next_line: 1
            }
        );

        let mut batch = store.begin_ingest().unwrap();
        batch.add_chunk("a", &a, &[], at(10)).unwrap();
        batch.add_chunk("b", &b, &[], at(20)).unwrap();
        batch.commit().unwrap();
        assert_eq!(store.span_count().unwrap(), 14);
        assert_eq!(store.file_offset("b").unwrap(), at(20));
        // Committed parts stay when a later part is dropped.
        let c = stored(container_trace(TraceId([7; 16]), "c"));
        let mut batch = store.begin_ingest().unwrap();
        batch.add_chunk("c", &c[..3], &[], at(30)).unwrap();
        batch.commit_and_continue().unwrap();
        assert_eq!(batch.spans_added(), 0);
        batch.add_chunk("c", &c[3..], &[], at(40)).unwrap();
        drop(batch);
        assert_eq!(store.span_count().unwrap(), 17);
        assert_eq!(store.file_offset("c").unwrap(), at(30));
        let seqs: Vec<u64> = store
            .spans_after(0, 14)
            .unwrap()
            .iter()
            .map(|(s, _)| *s)
            .collect();
        assert_eq!(seqs, (1..=14).collect::<Vec<u64>>());
    }

    #[test]
    fn many_spans_read_back_in_seq_order_and_a_bad_record_names_its_span() {
        // Enough spans to be parsed on several threads.
        let spans: Vec<SpanRecord> = (0..1500u32)
            .flat_map(|i| {
                let mut id = [0u8; 16];
                id[..4].copy_from_slice(&(i + 1).to_be_bytes());
                container_trace(TraceId(id), &format!("c{i}"))
            })
            .collect();
        let (_dir, _, store) = store_holding("db", &spans);
        assert_eq!(store.all_spans().unwrap(), spans);
        let after = store.spans_after(10_000, 5).unwrap();
        assert_eq!(after.len(), 5);
        assert_eq!(after[0], (10_001, spans[10_000].clone()));

        store
            .conn
            .execute("UPDATE spans SET record = '{' WHERE seq = 9000", [])
            .unwrap();
        let err = store.all_spans().err().unwrap().to_string();
        let bad = &spans[8999];
        assert!(err.contains(&bad.trace_id.to_hex()), "{err}");
        assert!(err.contains(&bad.span_id.to_hex()), "{err}");
        assert!(err.contains(&store.path().display().to_string()), "{err}");
        // The cure for one record that does not parse: that row goes, the rest stays.
        assert!(err.contains("DELETE FROM spans WHERE seq = 9000"), "{err}");
    }

    #[test]
    fn missing_store_says_how_to_fill_it() {
        let err = Store::open_read_only(Path::new("/nonexistent/x.db"))
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("shimtrace serve"), "{err}");
    }
}
