//! Process-lifetime counters: ingest and export add to them, `/metrics` reads them.

use std::sync::atomic::AtomicU64;

/// What this process did since it started (the store keeps the all-time totals).
#[derive(Debug, Default)]
pub struct Counters {
    /// Spans newly stored.
    pub ingested: AtomicU64,
    /// Spans accepted by the OTLP endpoint.
    pub exported: AtomicU64,
    /// Spans the shims reported dropped.
    pub dropped: AtomicU64,
    /// Malformed spool lines skipped.
    pub spool_issues: AtomicU64,
    /// Failed export attempts.
    pub export_failures: AtomicU64,
}
