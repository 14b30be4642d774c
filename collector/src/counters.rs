//! Process-lifetime counters the store does not keep: serve's ingest and export add to them,
//! `/metrics` reads them (the all-time totals of spans stored, exported and dropped come from the
//! store).

use std::sync::atomic::AtomicU64;

/// What this process met since it started.
#[derive(Debug, Default)]
pub struct Counters {
    /// Spool problems ingest skipped: malformed lines, the unterminated last line of a writer
    /// that exited, and files it could not read (once per attempt: such a file is tried again).
    pub spool_issues: AtomicU64,
    /// Failed export attempts: the endpoint failed or did not answer, or the store could not be
    /// read or updated.
    pub export_failures: AtomicU64,
}
