//! `shimtrace bench`: generates a synthetic spool and measures ingest throughput and report time.

use std::path::Path;
use std::time::Instant;

use serde::Serialize;

use crate::ingest::{IngestError, Ingester};
use crate::report::{build_report, render, Format};
use crate::store::{Store, StoreError};
use crate::synth::{generate_spool, SynthConfig, SynthSummary};

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("cannot write the synthetic spool in {path}: {source}")]
    Generate {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Ingest(#[from] IngestError),
}

/// Measured numbers.
#[derive(Debug, Clone, Serialize)]
pub struct BenchResult {
    pub generated: SynthSummary,
    pub generate_seconds: f64,
    pub ingest_seconds: f64,
    pub ingest_spans_per_second: f64,
    /// Copying the ingest's WAL into the database file afterwards (not part of ingest).
    pub checkpoint_seconds: f64,
    /// Loading every span from the store and building the report.
    pub report_seconds: f64,
    pub render_md_seconds: f64,
    pub render_html_seconds: f64,
    pub html_bytes: usize,
}

/// Generates `config` into `work/spool`, ingests it into `work/bench.db` and times a report.
pub fn run(
    work: &Path,
    config: &SynthConfig,
    on_container: impl FnMut(usize),
) -> Result<BenchResult, BenchError> {
    let spool = work.join("spool");
    let db = work.join("bench.db");
    let _ = std::fs::remove_file(&db);
    let t = Instant::now();
    let (generated, walls) =
        generate_spool(&spool, config, on_container).map_err(|source| BenchError::Generate {
            path: spool.clone(),
            source,
        })?;
    let generate_seconds = t.elapsed().as_secs_f64();

    let t = Instant::now();
    let mut ingester = Ingester::new(Store::open(&db)?, &spool, false);
    let report = ingester.ingest_all()?;
    let ingest_seconds = t.elapsed().as_secs_f64();
    // Folding the WAL into the database is storage upkeep (serve does it in its housekeeping);
    // timed on its own.
    let t = Instant::now();
    ingester.store().checkpoint()?;
    let checkpoint_seconds = t.elapsed().as_secs_f64();

    let t = Instant::now();
    let store = ingester.store();
    let built = build_report(store.all_spans()?, store.dropped_total()?, &walls, vec![]);
    let report_seconds = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let _md = render(&built, Format::Md);
    let render_md_seconds = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let html = render(&built, Format::Html);
    let render_html_seconds = t.elapsed().as_secs_f64();
    Ok(BenchResult {
        ingest_spans_per_second: report.spans_stored as f64 / ingest_seconds.max(1e-9),
        generated,
        generate_seconds,
        ingest_seconds,
        checkpoint_seconds,
        report_seconds,
        render_md_seconds,
        render_html_seconds,
        html_bytes: html.len(),
    })
}
